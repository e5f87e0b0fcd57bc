/*
 * tok.c - byte-level BPE from tokenizer.json, matching HF `tokenizers`.
 *
 * The encode path for one call: validate UTF-8, cut out added tokens,
 * NFC-normalise what is left (only the few spans that can change), split it
 * with the pre-tokenizer regex, and turn each piece into ids through a
 * per-thread word cache that falls back to heap-driven BPE merging. Every
 * table the hot path reads (vocabulary, merges, byte symbols, the NFC
 * "may change" bitmap) is built once in tok_open and never written again,
 * which is what makes concurrent encode calls safe; the only mutable data
 * lives in the calling thread's tok_state.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "tok.h"

#include <errno.h>
#include <jansson.h>
#include <pcre2.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

/* ---- UTF-8 ---------------------------------------------------------- */

/* Decodes one well-formed UTF-8 character at s (n bytes available).
 * Returns its length, or 0 when ill-formed; then *bad is the length of the
 * maximal prefix of a valid sequence (at least 1), the unit that Rust's
 * String::from_utf8_lossy (and so HF decode) replaces with one U+FFFD. */
static size_t utf8_next(const unsigned char *s, size_t n, int32_t *cp, size_t *bad)
{
    unsigned c = s[0];
    *bad = 1;
    if (c < 0x80) {
        *cp = (int32_t)c;
        return 1;
    }
    size_t need;
    unsigned lo = 0x80, hi = 0xBF;
    int32_t v;
    if (c >= 0xC2 && c <= 0xDF) {
        need = 2;
        v = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        need = 3;
        v = c & 0x0F;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F; /* no surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 4;
        v = c & 0x07;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else {
        return 0;
    }
    for (size_t i = 1; i < need; i++) {
        if (i >= n)
            return 0;
        unsigned b = s[i];
        if (b < lo || b > hi)
            return 0;
        lo = 0x80, hi = 0xBF;
        v = (v << 6) | (int32_t)(b & 0x3F);
        *bad = i + 1;
    }
    *cp = v;
    return need;
}

static size_t utf8_encode(int32_t cp, char *out)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Offset of the first ill-formed byte, or n when s is valid UTF-8. */
static size_t utf8_check(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        /* ASCII runs dominate real text: test 8 bytes at a time. */
        while (i + 8 <= n) {
            uint64_t w;
            memcpy(&w, p + i, 8);
            if (w & 0x8080808080808080ull)
                break;
            i += 8;
        }
        if (i >= n)
            break;
        int32_t cp;
        size_t bad, k = utf8_next(p + i, n - i, &cp, &bad);
        if (!k)
            return i;
        i += k;
    }
    return n;
}

/* Rewrites out[start..] so that every ill-formed subsequence becomes one
 * U+FFFD, exactly like String::from_utf8_lossy. */
static void utf8_lossy_fix(strbuf *out, size_t start)
{
    size_t bad_at = start + utf8_check(out->buf + start, out->len - start);
    if (bad_at == out->len)
        return;
    strbuf fixed = STRBUF_INIT;
    const unsigned char *p = (const unsigned char *)out->buf;
    size_t i = bad_at;
    sb_add(&fixed, out->buf + start, bad_at - start);
    while (i < out->len) {
        int32_t cp;
        size_t bad, k = utf8_next(p + i, out->len - i, &cp, &bad);
        if (k) {
            sb_add(&fixed, p + i, k);
            i += k;
        } else {
            sb_add(&fixed, "\xEF\xBF\xBD", 3);
            i += bad;
        }
    }
    out->len = start;
    sb_add(out, fixed.buf, fixed.len);
    sb_release(&fixed);
}

/* ---- hashing ---------------------------------------------------------- */

static uint64_t hash_bytes(const void *data, size_t n)
{
    const unsigned char *s = data;
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xff51afd7ed558ccdull);
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, s, 8);
        h = (h ^ v) * 0xc4ceb9fe1a85ec53ull;
        h ^= h >> 31;
        s += 8;
        n -= 8;
    }
    uint64_t v = 0;
    memcpy(&v, s, n);
    h = (h ^ v) * 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 29;
    return h;
}

static uint64_t hash_pair(uint64_t key)
{
    key *= 0x9E3779B97F4A7C15ull;
    return key ^ (key >> 29);
}

static size_t pow2_at_least(size_t n)
{
    size_t c = 16;
    while (c < n)
        c <<= 1;
    return c;
}

/* ---- the tokenizer ---------------------------------------------------- */

typedef struct added_token {
    char *content; /* as matched: NFC-normalised when normalized is set */
    size_t len;
    int32_t id;
    unsigned char single_word, lstrip, rstrip, normalized, special;
} added_token;

/* One matching pass over added tokens: candidates bucketed by first byte,
 * longest first within a bucket, so the first hit is the longest. */
typedef struct added_set {
    int n;
    int *order;     /* indices into tok.added */
    int first[257]; /* bucket of byte b: order[first[b] .. first[b+1]) */
} added_set;

typedef struct merge_slot {
    uint64_t key; /* left id << 32 | right id; UINT64_MAX when empty */
    uint32_t rank;
    int32_t new_id;
} merge_slot;

typedef struct tok_state tok_state;

struct tok {
    int32_t vocab_size;
    /* id -> spelling in the file (byte-level for model tokens) */
    uint32_t *text_off, *text_len;
    strbuf text;
    /* id -> decoded bytes; text_len UINT32_MAX / bytes_len UINT32_MAX: no token */
    uint32_t *bytes_off, *bytes_len;
    strbuf bytes;
    /* model vocabulary: spelling -> id, open addressing over ids */
    int32_t *vocab_slots;
    size_t vocab_mask;
    merge_slot *merges;
    size_t merge_mask;
    int32_t byte_id[256]; /* id of each single byte symbol, -1 if absent */
    char byte_char[256][3];
    unsigned char byte_char_len[256];
    added_token *added;
    int n_added;
    added_set raw_set, norm_set;
    int nfc;
    int ignore_merges;
    pcre2_code *re;
    int re_jit;
    pcre2_match_context *mctx;
    unsigned char *nfc_unsafe; /* bitmap over code points */
    pthread_key_t key;
    pthread_mutex_t lock;
    tok_state *states; /* every thread's state, for tok_close */
};

/* GPT-2's pre-tokenizer regex: ByteLevel with use_regex applies it. */
static const char gpt2_regex[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/* bytes_to_unicode() of GPT-2: printable Latin-1 bytes stand for
 * themselves, the rest are shifted to U+0100 and up in byte order. */
static int byte_to_cp(int b)
{
    if ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF))
        return b;
    int n = 0;
    for (int x = 0; x < b; x++)
        if (!((x >= 0x21 && x <= 0x7E) || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF)))
            n++;
    return 256 + n;
}

/* Inverse of byte_to_cp: -1 when cp stands for no byte. */
static int cp_to_byte(int32_t cp)
{
    if ((cp >= 0x21 && cp <= 0x7E) || (cp >= 0xA1 && cp <= 0xAC) || (cp >= 0xAE && cp <= 0xFF))
        return (int)cp;
    if (cp < 256 || cp >= 256 + 68)
        return -1;
    int n = 0;
    for (int x = 0; x < 256; x++)
        if (!((x >= 0x21 && x <= 0x7E) || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF))) {
            if (256 + n == cp)
                return x;
            n++;
        }
    return -1;
}

static int32_t vocab_lookup(const tok *t, const char *s, size_t n)
{
    size_t i = hash_bytes(s, n) & t->vocab_mask;
    for (;;) {
        int32_t id = t->vocab_slots[i];
        if (id < 0)
            return -1;
        if (t->text_len[id] == n && !memcmp(t->text.buf + t->text_off[id], s, n))
            return id;
        i = (i + 1) & t->vocab_mask;
    }
}

static const merge_slot *merge_lookup(const tok *t, int32_t left, int32_t right)
{
    uint64_t key = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
    size_t i = hash_pair(key) & t->merge_mask;
    for (;;) {
        const merge_slot *m = &t->merges[i];
        if (m->key == key)
            return m;
        if (m->key == UINT64_MAX)
            return NULL;
        i = (i + 1) & t->merge_mask;
    }
}

static inline int nfc_unsafe(const tok *t, int32_t cp)
{
    return (t->nfc_unsafe[cp >> 3] >> (cp & 7)) & 1;
}

/* Marks the code points that NFC may change or that may combine with the
 * character before them: non-zero combining class, a canonical
 * decomposition, being a non-first part of some canonical decomposition
 * (composition seconds), or a Hangul vowel/trailing jamo. Every other code
 * point is left alone by NFC and blocks composition across it, so the
 * text between two of them can be normalised on its own. */
static void build_nfc_bitmap(unsigned char *map)
{
#define MARK(c) (map[(c) >> 3] |= (unsigned char)(1u << ((c) & 7)))
    for (int32_t cp = 0x300; cp < 0x110000; cp++) {
        if (cp >= 0xD800 && cp <= 0xDFFF)
            continue;
        const utf8proc_property_t *p = utf8proc_get_property(cp);
        if (p->combining_class)
            MARK(cp);
        if (p->decomp_seqindex != UINT16_MAX && p->decomp_type == 0) {
            MARK(cp);
            utf8proc_int32_t parts[8];
            int last = 0;
            utf8proc_ssize_t n = utf8proc_decompose_char(cp, parts, 8, UTF8PROC_DECOMPOSE, &last);
            for (utf8proc_ssize_t i = 1; i < n && i < 8; i++)
                MARK(parts[i]);
        }
    }
    for (int32_t cp = 0x1161; cp <= 0x1175; cp++)
        MARK(cp);
    for (int32_t cp = 0x11A8; cp <= 0x11C2; cp++)
        MARK(cp);
#undef MARK
}

/* ---- per-thread state: word cache and BPE workspace ------------------- */

typedef struct cache_slot {
    uint64_t hash; /* 0: empty */
    uint32_t key_off, ids_off;
    uint16_t key_len, n_ids;
} cache_slot;

/* One generation of the word cache: open addressing over slots, the words
 * and their ids in two arenas. */
typedef struct word_cache {
    cache_slot *slots;
    unsigned n_words;
    strbuf keys;
    int32_t *ids;
    size_t n_ids, cap_ids;
} word_cache;

typedef struct bpe_sym {
    int32_t id;
    int32_t prev, next; /* next == -2: merged into its left neighbour */
} bpe_sym;

typedef struct bpe_cand {
    uint32_t rank;
    int32_t pos, new_id;
} bpe_cand;

/* Two generations of CACHE_MAX_WORDS words each: when the current one is
 * full the older is dropped and the words still in use move into the new
 * one as they are met, so frequent words stay cached in an endless stream
 * of documents (an LRU at the cost of a second lookup on a miss). */
#define CACHE_SLOTS (1u << 17)
#define CACHE_MAX_WORDS (CACHE_SLOTS / 2)
#define CACHE_MAX_WORD 255 /* longer pieces are merged each time */

struct tok_state {
    tok_state *prev, *next;
    tok *owner;
    pcre2_match_data *md;
    word_cache cache[2]; /* cache[cur]: current generation */
    int cur;
    bpe_sym *syms;
    size_t cap_syms;
    bpe_cand *heap;
    size_t cap_heap;
    strbuf norm, scratch;
};

static void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q)
        abort(); /* as strbuf: nothing sensible is left to do */
    return q;
}

static void state_free(tok_state *st)
{
    pcre2_match_data_free(st->md);
    for (int g = 0; g < 2; g++) {
        free(st->cache[g].slots);
        sb_release(&st->cache[g].keys);
        free(st->cache[g].ids);
    }
    free(st->syms);
    free(st->heap);
    sb_release(&st->norm);
    sb_release(&st->scratch);
    free(st);
}

static void state_destroy(void *arg)
{
    tok_state *st = arg;
    tok *t = st->owner;
    pthread_mutex_lock(&t->lock);
    if (st->prev)
        st->prev->next = st->next;
    else
        t->states = st->next;
    if (st->next)
        st->next->prev = st->prev;
    pthread_mutex_unlock(&t->lock);
    state_free(st);
}

static tok_state *state_get(const tok *ct)
{
    tok *t = (tok *)ct; /* only the lock and the list of states change */
    tok_state *st = pthread_getspecific(t->key);
    if (st)
        return st;
    st = calloc(1, sizeof *st);
    if (!st)
        abort();
    st->owner = t;
    st->md = pcre2_match_data_create_from_pattern(t->re, NULL);
    st->cache[0].slots = calloc(CACHE_SLOTS, sizeof(cache_slot));
    st->cache[1].slots = calloc(CACHE_SLOTS, sizeof(cache_slot));
    if (!st->md || !st->cache[0].slots || !st->cache[1].slots)
        abort();
    pthread_mutex_lock(&t->lock);
    st->next = t->states;
    if (t->states)
        t->states->prev = st;
    t->states = st;
    pthread_mutex_unlock(&t->lock);
    pthread_setspecific(t->key, st);
    return st;
}

/* ---- encoding --------------------------------------------------------- */

typedef struct idvec {
    int32_t *v;
    size_t n, cap;
} idvec;

static void ids_push(idvec *ids, const int32_t *src, size_t n)
{
    if (ids->n + n > ids->cap) {
        size_t cap = ids->cap ? ids->cap * 2 : 256;
        while (cap < ids->n + n)
            cap *= 2;
        ids->v = xrealloc(ids->v, cap * sizeof *ids->v);
        ids->cap = cap;
    }
    memcpy(ids->v + ids->n, src, n * sizeof *src);
    ids->n += n;
}

static void heap_push(tok_state *st, size_t *n, bpe_cand c)
{
    if (*n == st->cap_heap) {
        st->cap_heap = st->cap_heap ? st->cap_heap * 2 : 64;
        st->heap = xrealloc(st->heap, st->cap_heap * sizeof *st->heap);
    }
    bpe_cand *h = st->heap;
    size_t i = (*n)++;
    while (i > 0) {
        size_t up = (i - 1) / 2;
        if (h[up].rank < c.rank || (h[up].rank == c.rank && h[up].pos < c.pos))
            break;
        h[i] = h[up];
        i = up;
    }
    h[i] = c;
}

static bpe_cand heap_pop(tok_state *st, size_t *n)
{
    bpe_cand *h = st->heap;
    bpe_cand top = h[0], last = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n)
            break;
        if (c + 1 < *n &&
            (h[c + 1].rank < h[c].rank || (h[c + 1].rank == h[c].rank && h[c + 1].pos < h[c].pos)))
            c++;
        if (last.rank < h[c].rank || (last.rank == h[c].rank && last.pos < h[c].pos))
            break;
        h[i] = h[c];
        i = c;
    }
    h[i] = last;
    return top;
}

static void bpe_push_pair(const tok *t, tok_state *st, size_t *n_heap, int32_t pos)
{
    int32_t next = st->syms[pos].next;
    if (next < 0)
        return;
    const merge_slot *m = merge_lookup(t, st->syms[pos].id, st->syms[next].id);
    if (m)
        heap_push(st, n_heap, (bpe_cand){m->rank, pos, m->new_id});
}

/* Merges one pre-token piece and appends its ids. Like HF's Word::merge_all:
 * always the pair of lowest rank, the leftmost among equal ranks, with
 * stale heap entries skipped; O(n log n) in the piece length. */
static void bpe_piece(const tok *t, tok_state *st, const unsigned char *s, size_t n, idvec *out)
{
    if (t->ignore_merges) {
        st->scratch.len = 0;
        for (size_t i = 0; i < n; i++)
            sb_add(&st->scratch, t->byte_char[s[i]], t->byte_char_len[s[i]]);
        int32_t id = vocab_lookup(t, st->scratch.buf, st->scratch.len);
        if (id >= 0) {
            ids_push(out, &id, 1);
            return;
        }
    }
    if (n > st->cap_syms) {
        st->cap_syms = n * 2;
        st->syms = xrealloc(st->syms, st->cap_syms * sizeof *st->syms);
    }
    bpe_sym *sym = st->syms;
    int32_t n_sym = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = t->byte_id[s[i]];
        if (id < 0)
            continue; /* HF drops characters missing from a vocabulary with no unk */
        sym[n_sym] = (bpe_sym){id, n_sym - 1, n_sym + 1};
        n_sym++;
    }
    if (n_sym == 0)
        return;
    sym[n_sym - 1].next = -1;
    size_t n_heap = 0;
    for (int32_t i = 0; i + 1 < n_sym; i++)
        bpe_push_pair(t, st, &n_heap, i);
    while (n_heap) {
        bpe_cand c = heap_pop(st, &n_heap);
        bpe_sym *left = &sym[c.pos];
        if (left->next < 0)
            continue; /* merged away, or now the last symbol */
        bpe_sym *right = &sym[left->next];
        const merge_slot *m = merge_lookup(t, left->id, right->id);
        if (!m || m->new_id != c.new_id)
            continue; /* stale: a neighbour changed since it was queued */
        left->id = c.new_id;
        int32_t gone = left->next;
        left->next = right->next;
        if (right->next >= 0)
            sym[right->next].prev = c.pos;
        sym[gone].next = -2;
        if (left->prev >= 0)
            bpe_push_pair(t, st, &n_heap, left->prev);
        bpe_push_pair(t, st, &n_heap, c.pos);
    }
    for (int32_t i = 0; i >= 0; i = sym[i].next)
        ids_push(out, &sym[i].id, 1);
}

static const cache_slot *cache_find(const word_cache *c, uint64_t h, const char *s, size_t n,
                                    size_t *free_slot)
{
    size_t i = h & (CACHE_SLOTS - 1);
    for (;;) {
        const cache_slot *e = &c->slots[i];
        if (!e->hash) {
            *free_slot = i;
            return NULL;
        }
        if (e->hash == h && e->key_len == n && !memcmp(c->keys.buf + e->key_off, s, n))
            return e;
        i = (i + 1) & (CACHE_SLOTS - 1);
    }
}

static void cache_put(word_cache *c, size_t slot, uint64_t h, const char *s, size_t n,
                      const int32_t *ids, size_t n_ids)
{
    if (c->n_ids + n_ids > c->cap_ids) {
        c->cap_ids = (c->n_ids + n_ids) * 2;
        c->ids = xrealloc(c->ids, c->cap_ids * sizeof *c->ids);
    }
    memcpy(c->ids + c->n_ids, ids, n_ids * sizeof *ids);
    c->slots[slot] = (cache_slot){h, (uint32_t)c->keys.len, (uint32_t)c->n_ids, (uint16_t)n,
                                  (uint16_t)n_ids};
    sb_add(&c->keys, s, n);
    c->n_ids += n_ids;
    c->n_words++;
}

static void encode_word(const tok *t, tok_state *st, const char *s, size_t n, idvec *out)
{
    if (n > CACHE_MAX_WORD) {
        bpe_piece(t, st, (const unsigned char *)s, n, out);
        return;
    }
    uint64_t h = hash_bytes(s, n) | 1;
    word_cache *cur = &st->cache[st->cur], *old = &st->cache[!st->cur];
    size_t slot, old_slot;
    const cache_slot *e = cache_find(cur, h, s, n, &slot);
    if (e) {
        ids_push(out, cur->ids + e->ids_off, e->n_ids);
        return;
    }
    size_t first = out->n;
    e = old->n_words ? cache_find(old, h, s, n, &old_slot) : NULL;
    if (e)
        ids_push(out, old->ids + e->ids_off, e->n_ids);
    else
        bpe_piece(t, st, (const unsigned char *)s, n, out);
    if (cur->n_words >= CACHE_MAX_WORDS) {
        /* Drop the old generation; the full one becomes old. */
        memset(old->slots, 0, CACHE_SLOTS * sizeof(cache_slot));
        old->n_words = 0;
        old->keys.len = 0;
        old->n_ids = 0;
        st->cur = !st->cur;
        cur = old;
        slot = h & (CACHE_SLOTS - 1);
    }
    cache_put(cur, slot, h, s, n, out->v + first, out->n - first);
}

/* Splits normalised text with the pre-tokenizer regex (behaviour Isolated:
 * matches and the gaps between them are pieces) and encodes each piece. */
static int encode_pretokenized(const tok *t, tok_state *st, const char *s, size_t n, idvec *out,
                               errbuf *err)
{
    PCRE2_SIZE pos = 0, prev = 0;
    while (pos < n) {
        int rc = t->re_jit ? pcre2_jit_match(t->re, (PCRE2_SPTR)s, n, pos, PCRE2_NO_UTF_CHECK,
                                             st->md, t->mctx)
                           : pcre2_match(t->re, (PCRE2_SPTR)s, n, pos, PCRE2_NO_UTF_CHECK, st->md,
                                         t->mctx);
        if (rc == PCRE2_ERROR_NOMATCH)
            break;
        if (rc < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return errorf(err, "pre-tokenizer regex failed at byte %zu: %s", (size_t)pos,
                          (const char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(st->md);
        PCRE2_SIZE ms = ov[0], me = ov[1];
        if (ms > prev)
            encode_word(t, st, s + prev, ms - prev, out);
        if (me > ms) {
            encode_word(t, st, s + ms, me - ms, out);
            prev = pos = me;
        } else {
            /* An empty match: step over one character, which joins the gap. */
            prev = me;
            pos = me + 1;
            while (pos < n && ((unsigned char)s[pos] & 0xC0) == 0x80)
                pos++;
        }
    }
    if (prev < n)
        encode_word(t, st, s + prev, n - prev, out);
    return 0;
}

/* NFC of s into st->norm when some code point may change; returns the text
 * to use (s itself when nothing can change). Only the spans from the
 * character before an unsafe run to the next safe character go through
 * utf8proc. */
static const char *normalize(const tok *t, tok_state *st, const char *s, size_t n, size_t *out_n)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0, prev_start = 0, copied = 0;
    int any = 0;
    while (i < n) {
        if (p[i] < 0xCC) { /* below U+0300: nothing to do */
            prev_start = i;
            i += p[i] < 0x80 ? 1 : 2;
            continue;
        }
        int32_t cp;
        size_t bad, k = utf8_next(p + i, n - i, &cp, &bad);
        if (!nfc_unsafe(t, cp)) {
            prev_start = i;
            i += k;
            continue;
        }
        size_t seg_start = prev_start, seg_end = i + k;
        while (seg_end < n) {
            size_t k2 = utf8_next(p + seg_end, n - seg_end, &cp, &bad);
            if (!nfc_unsafe(t, cp))
                break;
            seg_end += k2;
        }
        if (!any) {
            st->norm.len = 0;
            any = 1;
        }
        sb_add(&st->norm, s + copied, seg_start - copied);
        utf8proc_uint8_t *nf = NULL;
        utf8proc_ssize_t nn = utf8proc_map(p + seg_start, (utf8proc_ssize_t)(seg_end - seg_start),
                                           &nf, UTF8PROC_STABLE | UTF8PROC_COMPOSE);
        if (nn < 0) /* cannot happen on validated UTF-8; keep the text */
            sb_add(&st->norm, s + seg_start, seg_end - seg_start);
        else
            sb_add(&st->norm, nf, (size_t)nn);
        free(nf);
        copied = seg_end;
        prev_start = i = seg_end;
    }
    if (!any) {
        *out_n = n;
        return s;
    }
    sb_add(&st->norm, s + copied, n - copied);
    *out_n = st->norm.len;
    return st->norm.buf;
}

static int is_ws(int32_t c) /* Rust char::is_whitespace */
{
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

static int is_word_char(int32_t c) /* regex \w, as HF's single_word check uses */
{
    if (c < 0x80)
        return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
               c == '_';
    if (c == 0x200C || c == 0x200D)
        return 1;
    switch (utf8proc_category(c)) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO: case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_MC: case UTF8PROC_CATEGORY_ME: case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_PC:
        return 1;
    default:
        return 0;
    }
}

/* Code point ending just before s[at] (at > 0). */
static int32_t cp_before(const char *s, size_t at, size_t *start)
{
    size_t i = at - 1;
    while (i > 0 && ((unsigned char)s[i] & 0xC0) == 0x80)
        i--;
    int32_t cp = 0;
    size_t bad;
    utf8_next((const unsigned char *)s + i, at - i, &cp, &bad);
    *start = i;
    return cp;
}

/* Leftmost-longest match of set in s[from..n): 1 and the span, or 0. */
static int added_find(const tok *t, const added_set *set, const char *s, size_t n, size_t from,
                      size_t *ms, size_t *me, const added_token **which)
{
    for (size_t i = from; i < n; i++) {
        unsigned b = (unsigned char)s[i];
        for (int k = set->first[b]; k < set->first[b + 1]; k++) {
            const added_token *a = &t->added[set->order[k]];
            if (a->len <= n - i && !memcmp(s + i, a->content, a->len)) {
                *ms = i;
                *me = i + a->len;
                *which = a;
                return 1;
            }
        }
    }
    return 0;
}

static int encode_normalized(const tok *t, tok_state *st, const char *s, size_t n, idvec *out,
                             errbuf *err);

/* HF AddedVocabulary::find_matches: cuts the added tokens of set out of s,
 * applying single_word/lstrip/rstrip, and encodes the text between them
 * (normalising it first on the raw pass). */
static int split_added(const tok *t, tok_state *st, const added_set *set, int raw_pass,
                       const char *s, size_t n, idvec *out, errbuf *err)
{
    size_t start_offset = 0, from = 0, ms, me;
    const added_token *a;
    while (set->n && from < n && added_find(t, set, s, n, from, &ms, &me, &a)) {
        from = me;
        size_t start = ms, stop = me, at;
        if (a->single_word) {
            int start_space = start == 0 || !is_word_char(cp_before(s, start, &at));
            int stop_space = 1;
            if (stop < n) {
                int32_t cp = 0;
                size_t bad;
                utf8_next((const unsigned char *)s + stop, n - stop, &cp, &bad);
                stop_space = !is_word_char(cp);
            }
            if (!start_space || !stop_space)
                continue;
        }
        if (a->lstrip) {
            size_t newstart = start;
            while (newstart > 0 && is_ws(cp_before(s, newstart, &at)))
                newstart = at;
            start = newstart > start_offset ? newstart : start_offset;
        }
        if (a->rstrip) {
            while (stop < n) {
                int32_t cp = 0;
                size_t bad, k = utf8_next((const unsigned char *)s + stop, n - stop, &cp, &bad);
                if (!is_ws(cp))
                    break;
                stop += k;
            }
        }
        if (start_offset < start) {
            int rc = raw_pass ? encode_normalized(t, st, s + start_offset, start - start_offset, out,
                                                  err)
                              : encode_pretokenized(t, st, s + start_offset, start - start_offset,
                                                    out, err);
            if (rc)
                return rc;
        }
        ids_push(out, &a->id, 1);
        start_offset = stop;
    }
    if (start_offset < n)
        return raw_pass ? encode_normalized(t, st, s + start_offset, n - start_offset, out, err)
                        : encode_pretokenized(t, st, s + start_offset, n - start_offset, out, err);
    return 0;
}

static int encode_normalized(const tok *t, tok_state *st, const char *s, size_t n, idvec *out,
                             errbuf *err)
{
    size_t nn = n;
    const char *ns = t->nfc ? normalize(t, st, s, n, &nn) : s;
    if (t->norm_set.n) {
        /* st->norm may be reused below: work on a private copy. */
        char *copy = NULL;
        if (ns != s) {
            copy = xrealloc(NULL, nn);
            memcpy(copy, ns, nn);
            ns = copy;
        }
        int rc = split_added(t, st, &t->norm_set, 0, ns, nn, out, err);
        free(copy);
        return rc;
    }
    return encode_pretokenized(t, st, ns, nn, out, err);
}

int tok_encode(const tok *t, const char *text, size_t len, int32_t **ids, size_t *n_ids,
               errbuf *err)
{
    *ids = NULL;
    *n_ids = 0;
    size_t bad = utf8_check(text, len);
    if (bad != len)
        return errorf(err, "invalid UTF-8 at byte offset %zu (byte 0x%02x)", bad,
                      (unsigned char)text[bad]);
    tok_state *st = state_get(t);
    idvec out = {NULL, 0, 0};
    if (split_added(t, st, &t->raw_set, 1, text, len, &out, err)) {
        free(out.v);
        return -1;
    }
    *ids = out.v;
    *n_ids = out.n;
    return 0;
}

/* ---- decoding --------------------------------------------------------- */

const char *tok_token_bytes(const tok *t, int32_t id, size_t *len)
{
    if (id < 0 || id >= t->vocab_size || t->bytes_len[id] == UINT32_MAX) {
        *len = 0;
        return NULL;
    }
    *len = t->bytes_len[id];
    return t->bytes.buf + t->bytes_off[id];
}

int tok_decode(const tok *t, const int32_t *ids, size_t n, strbuf *out, errbuf *err)
{
    (void)err;
    size_t start = out->len;
    for (size_t i = 0; i < n; i++) {
        size_t len;
        const char *b = tok_token_bytes(t, ids[i], &len);
        if (b)
            sb_add(out, b, len);
    }
    if (!out->buf)
        sb_grow(out, 0);
    utf8_lossy_fix(out, start);
    return 0;
}

int tok_vocab_size(const tok *t)
{
    return t->vocab_size;
}

int32_t tok_token_id(const tok *t, const char *token)
{
    size_t n = strlen(token);
    for (int i = 0; i < t->n_added; i++)
        if (t->text_len[t->added[i].id] == n &&
            !memcmp(t->text.buf + t->text_off[t->added[i].id], token, n))
            return t->added[i].id;
    return vocab_lookup(t, token, n);
}

/* ---- loading ---------------------------------------------------------- */

void tok_close(tok *t)
{
    if (!t)
        return;
    pthread_setspecific(t->key, NULL);
    pthread_key_delete(t->key);
    for (tok_state *st = t->states, *next; st; st = next) {
        next = st->next;
        state_free(st);
    }
    pthread_mutex_destroy(&t->lock);
    free(t->text_off);
    free(t->text_len);
    sb_release(&t->text);
    free(t->bytes_off);
    free(t->bytes_len);
    sb_release(&t->bytes);
    free(t->vocab_slots);
    free(t->merges);
    for (int i = 0; i < t->n_added; i++)
        free(t->added[i].content);
    free(t->added);
    free(t->raw_set.order);
    free(t->norm_set.order);
    pcre2_code_free(t->re);
    pcre2_match_context_free(t->mctx);
    free(t->nfc_unsafe);
    free(t);
}

static const char *type_of(json_t *obj)
{
    json_t *ty = json_is_object(obj) ? json_object_get(obj, "type") : NULL;
    return json_is_string(ty) ? json_string_value(ty) : NULL;
}

static int flag(json_t *obj, const char *name)
{
    return json_is_true(json_object_get(obj, name));
}

/* Rewrites \s and \S outside character classes, and \s inside them, to the
 * Unicode White_Space set: Oniguruma (which HF uses) matches exactly that,
 * while PCRE2's UCP \s also takes U+180E. */
static void translate_regex(const char *re, strbuf *out)
{
    static const char ws[] =
        "\\t-\\r\\x{20}\\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}\\x{2028}\\x{2029}\\x{202f}"
        "\\x{205f}\\x{3000}";
    int in_class = 0;
    for (const char *p = re; *p; p++) {
        if (*p == '\\' && p[1]) {
            if (p[1] == 's') {
                if (in_class)
                    sb_adds(out, ws);
                else
                    sb_addf(out, "[%s]", ws);
            } else if (p[1] == 'S' && !in_class) {
                sb_addf(out, "[^%s]", ws);
            } else if (p[1] == 'Q') { /* quoted run: copy through \E untouched */
                const char *e = strstr(p + 2, "\\E");
                size_t n = e ? (size_t)(e + 2 - p) : strlen(p);
                sb_add(out, p, n);
                p += n - 1;
                continue;
            } else {
                sb_add(out, p, 2);
            }
            p++;
            continue;
        }
        if (!in_class && *p == '[') {
            in_class = 1;
            sb_addc(out, *p);
            /* A ']' first in a class (after an optional '^') is literal. */
            if (p[1] == '^') {
                sb_addc(out, *++p);
            }
            if (p[1] == ']')
                sb_addc(out, *++p);
            continue;
        }
        if (in_class && *p == '[' && p[1] == ':') { /* POSIX class [:alpha:] */
            const char *e = strstr(p + 2, ":]");
            if (e) {
                sb_add(out, p, (size_t)(e + 2 - p));
                p = e + 1;
                continue;
            }
        }
        if (in_class && *p == ']')
            in_class = 0;
        sb_addc(out, *p);
    }
}

static int load_pretokenizer(tok *t, json_t *pre, const char *path, errbuf *err)
{
    const char *pattern = NULL;
    int literal = 0;
    json_t *steps = NULL;
    const char *ty = type_of(pre);
    if (json_is_null(pre) || !pre)
        return errorf(err, "%s: pre_tokenizer is missing (a byte-level BPE needs one)", path);
    if (ty && !strcmp(ty, "Sequence")) {
        steps = json_object_get(pre, "pretokenizers");
        if (!json_is_array(steps))
            return errorf(err, "%s: pre_tokenizer: Sequence without a pretokenizers list", path);
    }
    size_t n_steps = steps ? json_array_size(steps) : 1;
    int have_bytelevel = 0;
    for (size_t i = 0; i < n_steps; i++) {
        json_t *step = steps ? json_array_get(steps, i) : pre;
        const char *sty = type_of(step);
        if (!sty)
            return errorf(err, "%s: pre_tokenizer step %zu has no type", path, i);
        if (!strcmp(sty, "Split")) {
            if (pattern)
                return errorf(err, "%s: pre_tokenizer: only one Split step is supported", path);
            json_t *pat = json_object_get(step, "pattern");
            json_t *rx = json_object_get(pat, "Regex"), *lit = json_object_get(pat, "String");
            if (json_is_string(rx))
                pattern = json_string_value(rx);
            else if (json_is_string(lit))
                pattern = json_string_value(lit), literal = 1;
            else
                return errorf(err, "%s: pre_tokenizer Split: pattern needs Regex or String", path);
            json_t *beh = json_object_get(step, "behavior");
            if (!json_is_string(beh) || strcmp(json_string_value(beh), "Isolated"))
                return errorf(err, "%s: pre_tokenizer Split: behavior '%s' is not supported "
                                   "(only Isolated)", path,
                              json_is_string(beh) ? json_string_value(beh) : "?");
            if (flag(step, "invert"))
                return errorf(err, "%s: pre_tokenizer Split: invert is not supported", path);
        } else if (!strcmp(sty, "ByteLevel")) {
            have_bytelevel = 1;
            if (flag(step, "add_prefix_space"))
                return errorf(err, "%s: pre_tokenizer ByteLevel: add_prefix_space is not "
                                   "supported", path);
            json_t *ur = json_object_get(step, "use_regex");
            if (!ur || json_is_true(ur)) {
                if (pattern)
                    return errorf(err, "%s: pre_tokenizer: Split followed by ByteLevel with "
                                       "use_regex is not supported", path);
                pattern = gpt2_regex;
            }
        } else {
            return errorf(err, "%s: pre_tokenizer type '%s' is not supported", path, sty);
        }
    }
    if (!have_bytelevel)
        return errorf(err, "%s: pre_tokenizer has no ByteLevel step (not a byte-level BPE)", path);
    if (!pattern)
        return errorf(err, "%s: pre_tokenizer has no split pattern", path);

    strbuf rx = STRBUF_INIT;
    if (literal)
        sb_adds(&rx, pattern);
    else
        translate_regex(pattern, &rx);
    int ecode;
    PCRE2_SIZE eoff;
    t->re = pcre2_compile((PCRE2_SPTR)rx.buf, rx.len,
                          PCRE2_UTF | PCRE2_UCP | (literal ? PCRE2_LITERAL : 0), &ecode, &eoff,
                          NULL);
    sb_release(&rx);
    if (!t->re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(ecode, msg, sizeof msg);
        return errorf(err, "%s: pre_tokenizer regex: %s (near offset %zu of the pattern)", path,
                      (const char *)msg, (size_t)eoff);
    }
    t->re_jit = pcre2_jit_compile(t->re, PCRE2_JIT_COMPLETE) == 0;
    t->mctx = pcre2_match_context_create(NULL);
    if (!t->mctx)
        abort();
    /* Long runs of whitespace backtrack once per character; let them. */
    pcre2_set_match_limit(t->mctx, UINT32_MAX);
    return 0;
}

static int cmp_added_len(const void *a, const void *b, void *ctx)
{
    const tok *t = ctx;
    const added_token *x = &t->added[*(const int *)a], *y = &t->added[*(const int *)b];
    unsigned char bx = (unsigned char)x->content[0], by = (unsigned char)y->content[0];
    if (bx != by)
        return bx < by ? -1 : 1;
    if (x->len != y->len)
        return x->len > y->len ? -1 : 1;
    return *(const int *)a - *(const int *)b;
}

static void build_added_set(tok *t, added_set *set, int normalized)
{
    set->order = xrealloc(NULL, (size_t)(t->n_added + 1) * sizeof *set->order);
    set->n = 0;
    for (int i = 0; i < t->n_added; i++)
        if (!t->added[i].normalized == !normalized && t->added[i].len)
            set->order[set->n++] = i;
    qsort_r(set->order, (size_t)set->n, sizeof *set->order, cmp_added_len, t);
    int k = 0;
    for (int b = 0; b <= 256; b++) {
        while (k < set->n && (unsigned char)t->added[set->order[k]].content[0] < b)
            k++;
        set->first[b] = k;
    }
    set->first[256] = set->n;
}

/* id -> byte-level decoded bytes, HF's ByteLevel decoder rule: a token
 * whose characters all stand for bytes becomes those bytes, any other
 * token (an added token with a space, say) its UTF-8 text. */
static void decode_spelling(const char *s, size_t n, strbuf *out)
{
    size_t start = out->len, i = 0;
    while (i < n) {
        int32_t cp;
        size_t bad, k = utf8_next((const unsigned char *)s + i, n - i, &cp, &bad);
        int b = k ? cp_to_byte(cp) : -1;
        if (b < 0) {
            out->len = start;
            sb_add(out, s, n);
            return;
        }
        sb_addc(out, (char)b);
        i += k;
    }
}

static int load_tokenizer(tok *t, json_t *root, const char *path, errbuf *err)
{
    json_t *model = json_object_get(root, "model");
    if (!json_is_object(model))
        return errorf(err, "%s: no \"model\" object", path);
    const char *mty = type_of(model);
    if (mty && strcmp(mty, "BPE"))
        return errorf(err, "%s: model type '%s' is not supported (only BPE)", path, mty);
    if (flag(model, "byte_fallback"))
        return errorf(err, "%s: model.byte_fallback is not supported", path);
    json_t *dropout = json_object_get(model, "dropout");
    if (dropout && !json_is_null(dropout))
        return errorf(err, "%s: model.dropout is not supported", path);
    const char *affixes[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int i = 0; i < 2; i++) {
        json_t *v = json_object_get(model, affixes[i]);
        if (json_is_string(v) && json_string_value(v)[0])
            return errorf(err, "%s: model.%s is not supported", path, affixes[i]);
    }
    t->ignore_merges = flag(model, "ignore_merges");

    json_t *norm = json_object_get(root, "normalizer");
    if (norm && !json_is_null(norm)) {
        const char *nty = type_of(norm);
        json_t *list = nty && !strcmp(nty, "Sequence") ? json_object_get(norm, "normalizers") : NULL;
        size_t n = list ? json_array_size(list) : 1;
        for (size_t i = 0; i < n; i++) {
            const char *sty = type_of(list ? json_array_get(list, i) : norm);
            if (!sty || strcmp(sty, "NFC"))
                return errorf(err, "%s: normalizer '%s' is not supported (only NFC)", path,
                              sty ? sty : "?");
            t->nfc = 1;
        }
    }
    json_t *dec = json_object_get(root, "decoder");
    const char *dty = type_of(dec);
    if (!dty || strcmp(dty, "ByteLevel"))
        return errorf(err, "%s: decoder '%s' is not supported (only ByteLevel)", path,
                      dty ? dty : "null");
    if (load_pretokenizer(t, json_object_get(root, "pre_tokenizer"), path, err))
        return -1;

    json_t *vocab = json_object_get(model, "vocab");
    if (!json_is_object(vocab))
        return errorf(err, "%s: model.vocab is not an object", path);
    json_t *added = json_object_get(root, "added_tokens");
    if (added && !json_is_array(added))
        return errorf(err, "%s: added_tokens is not a list", path);

    /* Ids first: the tables are sized by the highest id. */
    int64_t max_id = -1;
    const char *key;
    json_t *val;
    json_object_foreach(vocab, key, val) {
        if (!json_is_integer(val) || json_integer_value(val) < 0 ||
            json_integer_value(val) >= INT32_MAX)
            return errorf(err, "%s: model.vocab[\"%s\"]: id is not a non-negative integer", path,
                          key);
        if (json_integer_value(val) > max_id)
            max_id = json_integer_value(val);
    }
    size_t n_added = json_array_size(added);
    for (size_t i = 0; i < n_added; i++) {
        json_t *a = json_array_get(added, i);
        json_t *id = json_object_get(a, "id"), *content = json_object_get(a, "content");
        if (!json_is_integer(id) || json_integer_value(id) < 0 ||
            json_integer_value(id) >= INT32_MAX || !json_is_string(content))
            return errorf(err, "%s: added_tokens[%zu]: needs an integer id and a string content",
                          path, i);
        if (json_integer_value(id) > max_id)
            max_id = json_integer_value(id);
    }
    t->vocab_size = (int32_t)(max_id + 1);
    size_t vs = (size_t)t->vocab_size;
    t->text_off = xrealloc(NULL, vs * sizeof(uint32_t));
    t->text_len = xrealloc(NULL, vs * sizeof(uint32_t));
    t->bytes_off = xrealloc(NULL, vs * sizeof(uint32_t));
    t->bytes_len = xrealloc(NULL, vs * sizeof(uint32_t));
    memset(t->text_len, 0xFF, vs * sizeof(uint32_t));
    memset(t->bytes_len, 0xFF, vs * sizeof(uint32_t));
        size_t n_vocab = 0;
    json_object_foreach(vocab, key, val) {
        int32_t id = (int32_t)json_integer_value(val);
        size_t n = strlen(key);
        t->text_off[id] = (uint32_t)t->text.len;
        t->text_len[id] = (uint32_t)n;
        sb_add(&t->text, key, n);
        t->bytes_off[id] = (uint32_t)t->bytes.len;
        decode_spelling(key, n, &t->bytes);
        t->bytes_len[id] = (uint32_t)(t->bytes.len - t->bytes_off[id]);
        n_vocab++;
    }
    t->vocab_mask = pow2_at_least(n_vocab * 2) - 1;
    t->vocab_slots = xrealloc(NULL, (t->vocab_mask + 1) * sizeof(int32_t));
    memset(t->vocab_slots, 0xFF, (t->vocab_mask + 1) * sizeof(int32_t));
    json_object_foreach(vocab, key, val) {
        int32_t id = (int32_t)json_integer_value(val);
        size_t i = hash_bytes(key, strlen(key)) & t->vocab_mask;
        while (t->vocab_slots[i] >= 0)
            i = (i + 1) & t->vocab_mask;
        t->vocab_slots[i] = id;
    }

    /* Added tokens: their text is their spelling and (ByteLevel rule) bytes. */
    t->added = calloc(n_added + 1, sizeof *t->added);
    if (!t->added)
        abort();
    for (size_t i = 0; i < n_added; i++) {
        json_t *a = json_array_get(added, i);
        added_token *at = &t->added[t->n_added++];
        const char *content = json_string_value(json_object_get(a, "content"));
        size_t n = json_string_length(json_object_get(a, "content"));
        at->id = (int32_t)json_integer_value(json_object_get(a, "id"));
        at->single_word = (unsigned char)flag(a, "single_word");
        at->lstrip = (unsigned char)flag(a, "lstrip");
        at->rstrip = (unsigned char)flag(a, "rstrip");
        at->normalized = (unsigned char)flag(a, "normalized");
        at->special = (unsigned char)flag(a, "special");
        if (utf8_check(content, n) != n)
            return errorf(err, "%s: added_tokens[%zu]: content is not valid UTF-8", path, i);
        if (at->normalized && t->nfc) {
            utf8proc_uint8_t *nf = NULL;
            utf8proc_ssize_t nn = utf8proc_map((const utf8proc_uint8_t *)content,
                                               (utf8proc_ssize_t)n, &nf,
                                               UTF8PROC_STABLE | UTF8PROC_COMPOSE);
            at->content = nn < 0 ? strndup(content, n) : (char *)nf;
            at->len = nn < 0 ? n : (size_t)nn;
        } else {
            at->content = xrealloc(NULL, n + 1);
            memcpy(at->content, content, n + 1);
            at->len = n;
        }
        if (t->text_len[at->id] == UINT32_MAX) { /* not also a vocabulary entry */
            t->text_off[at->id] = (uint32_t)t->text.len;
            t->text_len[at->id] = (uint32_t)n;
            sb_add(&t->text, content, n);
            t->bytes_off[at->id] = (uint32_t)t->bytes.len;
            decode_spelling(content, n, &t->bytes);
            t->bytes_len[at->id] = (uint32_t)(t->bytes.len - t->bytes_off[at->id]);
        }
    }
    if (!t->bytes.buf)
        sb_grow(&t->bytes, 0);
    build_added_set(t, &t->raw_set, 0);
    build_added_set(t, &t->norm_set, 1);

    for (int b = 0; b < 256; b++) {
        t->byte_char_len[b] = (unsigned char)utf8_encode(byte_to_cp(b), t->byte_char[b]);
        t->byte_id[b] = vocab_lookup(t, t->byte_char[b], t->byte_char_len[b]);
    }

    json_t *merges = json_object_get(model, "merges");
    if (merges && !json_is_array(merges))
        return errorf(err, "%s: model.merges is not a list", path);
    size_t n_merges = json_array_size(merges);
    t->merge_mask = pow2_at_least(n_merges * 2 + 1) - 1;
    t->merges = xrealloc(NULL, (t->merge_mask + 1) * sizeof *t->merges);
    for (size_t i = 0; i <= t->merge_mask; i++)
        t->merges[i].key = UINT64_MAX;
    strbuf pair = STRBUF_INIT;
    int rc = 0;
    for (size_t i = 0; i < n_merges && !rc; i++) {
        json_t *m = json_array_get(merges, i);
        const char *left, *right;
        size_t nl, nr;
        if (json_is_string(m)) { /* older files: "left right" */
            const char *s = json_string_value(m), *sp = strchr(s, ' ');
            if (!sp || strchr(sp + 1, ' ')) {
                rc = errorf(err, "%s: model.merges[%zu]: \"%s\" is not two tokens", path, i, s);
                break;
            }
            left = s, nl = (size_t)(sp - s), right = sp + 1, nr = strlen(sp + 1);
        } else if (json_is_array(m) && json_array_size(m) == 2 &&
                   json_is_string(json_array_get(m, 0)) && json_is_string(json_array_get(m, 1))) {
            left = json_string_value(json_array_get(m, 0));
            right = json_string_value(json_array_get(m, 1));
            nl = strlen(left), nr = strlen(right);
        } else {
            rc = errorf(err, "%s: model.merges[%zu]: not a pair of strings", path, i);
            break;
        }
        int32_t a = vocab_lookup(t, left, nl), b = vocab_lookup(t, right, nr);
        pair.len = 0;
        sb_add(&pair, left, nl);
        sb_add(&pair, right, nr);
        int32_t c = vocab_lookup(t, pair.buf, pair.len);
        if (a < 0 || b < 0 || c < 0) {
            rc = errorf(err, "%s: model.merges[%zu]: '%s' is not in the vocabulary", path, i,
                        a < 0 ? left : b < 0 ? right : pair.buf);
            break;
        }
        uint64_t k = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
        size_t j = hash_pair(k) & t->merge_mask;
        while (t->merges[j].key != UINT64_MAX && t->merges[j].key != k)
            j = (j + 1) & t->merge_mask;
        /* A repeated pair keeps its last rank, as HF's map does. */
        t->merges[j] = (merge_slot){k, (uint32_t)i, c};
    }
    sb_release(&pair);
    if (rc)
        return rc;

    if (t->nfc) {
        t->nfc_unsafe = calloc(0x110000 / 8, 1);
        if (!t->nfc_unsafe)
            abort();
        build_nfc_bitmap(t->nfc_unsafe);
    }
    return 0;
}

int tok_open_file(tok **out, const char *path, errbuf *err)
{
    *out = NULL;
    strbuf data = STRBUF_INIT;
    if (sb_read_file(&data, path) < 0) {
        int e = errno;
        sb_release(&data);
        return errorf(err, "%s: cannot read: %s", path, strerror(e));
    }
    json_error_t jerr;
    json_t *root = json_loadb(data.buf, data.len, 0, &jerr);
    sb_release(&data);
    if (!root) {
        if (jerr.line <= 0)
            return errorf(err, "%s: %s", path, jerr.text);
        return errorf(err, "%s:%d:%d: %s", path, jerr.line, jerr.column, jerr.text);
    }
    if (!json_is_object(root)) {
        json_decref(root);
        return errorf(err, "%s: not a tokenizer.json (the top level is not an object)", path);
    }
    tok *t = calloc(1, sizeof *t);
    if (!t)
        abort();
    pthread_mutex_init(&t->lock, NULL);
    if (pthread_key_create(&t->key, state_destroy)) {
        pthread_mutex_destroy(&t->lock);
        free(t);
        json_decref(root);
        return errorf(err, "%s: out of thread-local keys", path);
    }
    int rc = load_tokenizer(t, root, path, err);
    json_decref(root);
    if (rc) {
        tok_close(t);
        return rc;
    }
    *out = t;
    return 0;
}

int tok_open(tok **out, const char *dir, errbuf *err)
{
    if (error_check_folder(err, dir, "expected a folder with tokenizer.json"))
        return -1;
    strbuf path = STRBUF_INIT;
    sb_addf(&path, "%s/tokenizer.json", dir);
    int rc = tok_open_file(out, path.buf, err);
    sb_release(&path);
    return rc;
}
