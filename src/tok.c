/*
 * tok.c - byte-level BPE (see tok.h).
 *
 * Tables built once at open: the id of every vocabulary string (a hash
 * table), every merge as (left id, right id) -> (rank, merged id), the raw
 * bytes of every id for decoding, and the token of each single byte. BPE on
 * a piece runs over token ids with a binary heap of candidate pairs, so a
 * pathological piece (a megabyte without a space) costs n log n, not n^2.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "tok.h"

#include <jansson.h>
#include <pcre2.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

struct added {
    const char *content; /* borrowed from strs */
    size_t len;
    int32_t id;
};

struct tok {
    int n_ids;        /* highest id + 1 */
    char **strs;      /* [n_ids] the token as written in the file, or NULL */
    char **bytes;     /* [n_ids] what it decodes to */
    uint32_t *n_bytes;
    /* vocabulary string -> id, open addressing on strs */
    int32_t *vocab_slots;
    size_t vocab_mask;
    /* merges: key (left << 32 | right) -> value (rank << 32 | merged) */
    uint64_t *merge_keys, *merge_vals;
    size_t merge_mask;
    int32_t byte_token[256];
    struct added *added; /* sorted by length, longest first */
    int n_added;
    unsigned char added_first[256]; /* bytes that start some added token */
    pcre2_code *split;
};

/* ---- the GPT-2 byte alphabet ---- */

static int byte_is_printable(int b)
{
    return (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
}

/* Code point standing for byte b. */
static uint32_t byte_to_cp(int b)
{
    if (byte_is_printable(b))
        return (uint32_t)b;
    int n = 0;
    for (int i = 0; i < b; i++)
        n += !byte_is_printable(i);
    return 256u + (uint32_t)n;
}

/* ---- hashing ---- */

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

static uint64_t hash_u64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return x;
}

static size_t pow2_at_least(size_t n)
{
    size_t p = 16;
    while (p < n)
        p <<= 1;
    return p;
}

static int32_t vocab_find(const tok *t, const char *s, size_t n)
{
    size_t i = hash_bytes(s, n) & t->vocab_mask;
    for (;; i = (i + 1) & t->vocab_mask) {
        int32_t id = t->vocab_slots[i];
        if (id < 0)
            return -1;
        const char *v = t->strs[id];
        if (v && strlen(v) == n && !memcmp(v, s, n))
            return id;
    }
}

static void vocab_insert(tok *t, int32_t id)
{
    const char *s = t->strs[id];
    size_t i = hash_bytes(s, strlen(s)) & t->vocab_mask;
    while (t->vocab_slots[i] >= 0)
        i = (i + 1) & t->vocab_mask;
    t->vocab_slots[i] = id;
}

static int merge_find(const tok *t, int32_t a, int32_t b, uint32_t *rank, int32_t *merged)
{
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    for (size_t i = hash_u64(key) & t->merge_mask;; i = (i + 1) & t->merge_mask) {
        if (t->merge_keys[i] == UINT64_MAX)
            return 0;
        if (t->merge_keys[i] == key) {
            *rank = (uint32_t)(t->merge_vals[i] >> 32);
            *merged = (int32_t)(uint32_t)t->merge_vals[i];
            return 1;
        }
    }
}

/* Decodes one UTF-8 sequence; returns its length or -1. */
static int utf8_next(const unsigned char *s, size_t n, uint32_t *cp)
{
    utf8proc_int32_t c;
    utf8proc_ssize_t k = utf8proc_iterate(s, (utf8proc_ssize_t)n, &c);
    if (k <= 0)
        return -1;
    *cp = (uint32_t)c;
    return (int)k;
}

/* ---- loading ---- */

static int set_token(tok *t, int64_t id, const char *s, const char *path, errbuf *err)
{
    if (id < 0 || id >= t->n_ids)
        return errorf(err, "%s: token id %lld out of range", path, (long long)id);
    if (t->strs[id])
        return errorf(err, "%s: token id %lld appears twice", path, (long long)id);
    t->strs[id] = strdup(s);
    return t->strs[id] ? 0 : errorf(err, "out of memory");
}

/* The bytes a vocabulary string stands for (its characters are the byte
 * alphabet); an added token stands for its own text. */
static int token_bytes(tok *t, int32_t id, int is_added, const int32_t *cp_to_byte,
                       const char *path, errbuf *err)
{
    const char *s = t->strs[id];
    size_t n = strlen(s);
    char *out = malloc(n + 1);
    if (!out)
        return errorf(err, "out of memory");
    size_t k = 0;
    if (is_added) {
        memcpy(out, s, n);
        k = n;
    } else {
        for (size_t i = 0; i < n;) {
            uint32_t cp;
            int len = utf8_next((const unsigned char *)s + i, n - i, &cp);
            if (len < 0 || cp >= 512 || cp_to_byte[cp] < 0) {
                free(out);
                return errorf(err, "%s: vocabulary entry %d ('%s') is not in the byte alphabet",
                              path, id, s);
            }
            out[k++] = (char)cp_to_byte[cp];
            i += (size_t)len;
        }
    }
    out[k] = 0;
    t->bytes[id] = out;
    t->n_bytes[id] = (uint32_t)k;
    return 0;
}

static int cmp_added(const void *a, const void *b)
{
    const struct added *x = a, *y = b;
    return x->len < y->len ? 1 : x->len > y->len ? -1 : 0;
}

static int load(tok *t, json_t *root, const char *path, errbuf *err)
{
    json_t *model = json_object_get(root, "model");
    json_t *vocab = json_object_get(model, "vocab");
    json_t *merges = json_object_get(model, "merges");
    json_t *added = json_object_get(root, "added_tokens");
    const char *type = json_string_value(json_object_get(model, "type"));
    if (!json_is_object(model) || !type || strcmp(type, "BPE"))
        return errorf(err, "%s: model.type must be \"BPE\"", path);
    if (!json_is_object(vocab) || !json_is_array(merges))
        return errorf(err, "%s: model.vocab must be an object and model.merges an array", path);
    if (added && !json_is_array(added))
        return errorf(err, "%s: added_tokens must be an array", path);
    json_t *byte_fallback = json_object_get(model, "byte_fallback");
    if (json_is_true(byte_fallback))
        return errorf(err, "%s: byte_fallback BPE is not supported (not a byte-level tokenizer)",
                      path);

    /* Size the id space. */
    int64_t max_id = -1;
    const char *key;
    json_t *val;
    json_object_foreach(vocab, key, val)
    {
        if (!json_is_integer(val))
            return errorf(err, "%s: model.vocab['%s'] is not an integer", path, key);
        if (json_integer_value(val) > max_id)
            max_id = json_integer_value(val);
    }
    size_t i;
    json_t *a;
    json_array_foreach(added, i, a)
    {
        json_t *id = json_object_get(a, "id");
        if (!json_is_integer(id) || !json_is_string(json_object_get(a, "content")))
            return errorf(err, "%s: added_tokens[%zu] needs an integer id and a string content",
                          path, i);
        if (json_integer_value(id) > max_id)
            max_id = json_integer_value(id);
    }
    if (max_id < 0 || max_id > 10000000)
        return errorf(err, "%s: bad vocabulary size", path);
    t->n_ids = (int)max_id + 1;
    t->strs = calloc((size_t)t->n_ids, sizeof *t->strs);
    t->bytes = calloc((size_t)t->n_ids, sizeof *t->bytes);
    t->n_bytes = calloc((size_t)t->n_ids, sizeof *t->n_bytes);
    if (!t->strs || !t->bytes || !t->n_bytes)
        return errorf(err, "out of memory");
    json_object_foreach(vocab, key, val)
    {
        if (set_token(t, json_integer_value(val), key, path, err))
            return -1;
    }
    t->vocab_mask = pow2_at_least((size_t)t->n_ids * 2) - 1;
    t->vocab_slots = malloc(sizeof *t->vocab_slots * (t->vocab_mask + 1));
    if (!t->vocab_slots)
        return errorf(err, "out of memory");
    memset(t->vocab_slots, 0xff, sizeof *t->vocab_slots * (t->vocab_mask + 1));
    for (int32_t id = 0; id < t->n_ids; id++)
        if (t->strs[id])
            vocab_insert(t, id);

    /* The byte alphabet: every byte must have its own token. */
    int32_t cp_to_byte[512];
    for (int c = 0; c < 512; c++)
        cp_to_byte[c] = -1;
    for (int b = 0; b < 256; b++) {
        uint32_t cp = byte_to_cp(b);
        cp_to_byte[cp] = b;
        char s[4];
        int n = (int)utf8proc_encode_char((utf8proc_int32_t)cp, (utf8proc_uint8_t *)s);
        t->byte_token[b] = vocab_find(t, s, (size_t)n);
        if (t->byte_token[b] < 0)
            return errorf(err, "%s: the vocabulary lacks the token for byte 0x%02x", path, b);
    }
    for (int32_t id = 0; id < t->n_ids; id++)
        if (t->strs[id] && token_bytes(t, id, 0, cp_to_byte, path, err))
            return -1;

    /* Added tokens: matched whole before BPE. */
    t->added = calloc(json_array_size(added) + 1, sizeof *t->added);
    if (!t->added)
        return errorf(err, "out of memory");
    json_array_foreach(added, i, a)
    {
        int64_t id = json_integer_value(json_object_get(a, "id"));
        const char *content = json_string_value(json_object_get(a, "content"));
        if (json_is_true(json_object_get(a, "lstrip")) || json_is_true(json_object_get(a, "rstrip")) ||
            json_is_true(json_object_get(a, "single_word")) ||
            json_is_true(json_object_get(a, "normalized")))
            return errorf(err,
                          "%s: added token '%s' uses lstrip/rstrip/single_word/normalized, which "
                          "this tokenizer does not implement",
                          path, content);
        if (!*content)
            return errorf(err, "%s: added_tokens[%zu] has empty content", path, i);
        if (t->strs[id]) { /* also in the vocabulary: must agree */
            if (strcmp(t->strs[id], content))
                return errorf(err, "%s: added token id %lld differs from the vocabulary", path,
                              (long long)id);
            free(t->bytes[id]);
            t->bytes[id] = NULL;
        } else if (set_token(t, id, content, path, err)) {
            return -1;
        }
        if (token_bytes(t, (int32_t)id, 1, cp_to_byte, path, err))
            return -1;
        t->added[t->n_added++] = (struct added){t->strs[id], strlen(content), (int32_t)id};
        t->added_first[(unsigned char)content[0]] = 1;
    }
    qsort(t->added, (size_t)t->n_added, sizeof *t->added, cmp_added);

    /* Merges, by rank. */
    size_t n_merges = json_array_size(merges);
    t->merge_mask = pow2_at_least(n_merges * 2 + 1) - 1;
    t->merge_keys = malloc(sizeof(uint64_t) * (t->merge_mask + 1));
    t->merge_vals = malloc(sizeof(uint64_t) * (t->merge_mask + 1));
    if (!t->merge_keys || !t->merge_vals)
        return errorf(err, "out of memory");
    memset(t->merge_keys, 0xff, sizeof(uint64_t) * (t->merge_mask + 1));
    strbuf joined = STRBUF_INIT;
    json_array_foreach(merges, i, a)
    {
        const char *l = NULL, *r = NULL, *sp = NULL;
        size_t ln = 0;
        if (json_is_string(a)) { /* older files: "left right" */
            l = json_string_value(a);
            sp = strchr(l, ' ');
            if (sp) {
                ln = (size_t)(sp - l);
                r = sp + 1;
            }
        } else if (json_is_array(a) && json_array_size(a) == 2) {
            l = json_string_value(json_array_get(a, 0));
            r = json_string_value(json_array_get(a, 1));
            ln = l ? strlen(l) : 0;
        }
        if (!l || !r) {
            sb_release(&joined);
            return errorf(err, "%s: model.merges[%zu] is not a pair of tokens", path, i);
        }
        int32_t li = vocab_find(t, l, ln), ri = vocab_find(t, r, strlen(r));
        sb_reset(&joined);
        sb_add(&joined, l, ln);
        sb_adds(&joined, r);
        int32_t mi = vocab_find(t, joined.buf, joined.len);
        if (li < 0 || ri < 0 || mi < 0) {
            sb_release(&joined);
            return errorf(err, "%s: model.merges[%zu] names a token not in the vocabulary", path,
                          i);
        }
        uint64_t k = (uint64_t)(uint32_t)li << 32 | (uint32_t)ri;
        size_t s = hash_u64(k) & t->merge_mask;
        while (t->merge_keys[s] != UINT64_MAX && t->merge_keys[s] != k)
            s = (s + 1) & t->merge_mask;
        if (t->merge_keys[s] == k)
            continue; /* a repeated merge keeps its first (lowest) rank */
        t->merge_keys[s] = k;
        t->merge_vals[s] = (uint64_t)i << 32 | (uint32_t)mi;
    }
    sb_release(&joined);

    /* Normalizer and pre-tokenizer: exactly what Qwen's file has. */
    json_t *norm = json_object_get(root, "normalizer");
    const char *nt = json_string_value(json_object_get(norm, "type"));
    if (!json_is_null(norm) && norm && (!nt || strcmp(nt, "NFC")))
        return errorf(err, "%s: normalizer '%s' is not supported (only NFC)", path,
                      nt ? nt : "?");
    json_t *pre = json_object_get(root, "pre_tokenizer");
    json_t *steps = json_object_get(pre, "pretokenizers");
    const char *pattern = NULL;
    json_t *st;
    json_array_foreach(steps, i, st)
    {
        const char *ty = json_string_value(json_object_get(st, "type"));
        if (ty && !strcmp(ty, "Split")) {
            pattern = json_string_value(json_object_get(json_object_get(st, "pattern"), "Regex"));
            const char *beh = json_string_value(json_object_get(st, "behavior"));
            if (!pattern || !beh || strcmp(beh, "Isolated") ||
                json_is_true(json_object_get(st, "invert")))
                return errorf(err, "%s: pre_tokenizer Split must be an Isolated regex split",
                              path);
        } else if (ty && !strcmp(ty, "ByteLevel")) {
            if (json_is_true(json_object_get(st, "add_prefix_space")) ||
                json_is_true(json_object_get(st, "use_regex")))
                return errorf(err, "%s: ByteLevel with add_prefix_space/use_regex is not supported",
                              path);
        } else {
            return errorf(err, "%s: pre_tokenizer step '%s' is not supported", path,
                          ty ? ty : "?");
        }
    }
    if (!pattern)
        return errorf(err, "%s: pre_tokenizer has no Split regex", path);
    int ec;
    PCRE2_SIZE eo;
    t->split = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP,
                             &ec, &eo, NULL);
    if (!t->split) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(ec, msg, sizeof msg);
        return errorf(err, "%s: pre_tokenizer regex: %s at offset %zu", path, (char *)msg,
                      (size_t)eo);
    }
    pcre2_jit_compile(t->split, PCRE2_JIT_COMPLETE); /* optional: falls back to the interpreter */
    return 0;
}

int tok_open(tok **out, const char *dir, errbuf *err)
{
    *out = NULL;
    strbuf path = STRBUF_INIT;
    sb_addf(&path, "%s/tokenizer.json", dir);
    json_error_t je;
    json_t *root = json_load_file(path.buf, 0, &je);
    if (!root) {
        errorf(err, "%s:%d:%d: %s", path.buf, je.line, je.column, je.text);
        sb_release(&path);
        return -1;
    }
    tok *t = calloc(1, sizeof *t);
    int rc = t ? load(t, root, path.buf, err) : errorf(err, "out of memory");
    json_decref(root);
    sb_release(&path);
    if (rc) {
        tok_close(t);
        return -1;
    }
    *out = t;
    return 0;
}

void tok_close(tok *t)
{
    if (!t)
        return;
    for (int i = 0; i < t->n_ids; i++) {
        if (t->strs)
            free(t->strs[i]);
        if (t->bytes)
            free(t->bytes[i]);
    }
    free(t->strs);
    free(t->bytes);
    free(t->n_bytes);
    free(t->vocab_slots);
    free(t->merge_keys);
    free(t->merge_vals);
    free(t->added);
    if (t->split)
        pcre2_code_free(t->split);
    free(t);
}

int tok_vocab_size(const tok *t) { return t->n_ids; }

int32_t tok_token_id(const tok *t, const char *token)
{
    for (int i = 0; i < t->n_added; i++)
        if (!strcmp(t->added[i].content, token))
            return t->added[i].id;
    return vocab_find(t, token, strlen(token));
}

/* ---- encoding ---- */

/* Output ids and per-call scratch (one encode call; no shared state). */
struct enc {
    int32_t *ids;
    size_t n, cap;
    /* BPE scratch over one piece */
    int32_t *sym, *prev, *next;
    uint64_t *heap; /* (rank << 32 | position) */
    size_t scratch_cap, heap_cap, heap_n;
    pcre2_match_data *md;
};

static int push_id(struct enc *e, int32_t id)
{
    if (e->n == e->cap) {
        size_t cap = e->cap ? e->cap * 2 : 256;
        int32_t *p = realloc(e->ids, cap * sizeof *p);
        if (!p)
            return -1;
        e->ids = p;
        e->cap = cap;
    }
    e->ids[e->n++] = id;
    return 0;
}

static int heap_push(struct enc *e, uint64_t v)
{
    if (e->heap_n == e->heap_cap) {
        size_t cap = e->heap_cap ? e->heap_cap * 2 : 256;
        uint64_t *p = realloc(e->heap, cap * sizeof *p);
        if (!p)
            return -1;
        e->heap = p;
        e->heap_cap = cap;
    }
    size_t i = e->heap_n++;
    while (i > 0 && e->heap[(i - 1) / 2] > v) {
        e->heap[i] = e->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    e->heap[i] = v;
    return 0;
}

static uint64_t heap_pop(struct enc *e)
{
    uint64_t top = e->heap[0], last = e->heap[--e->heap_n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= e->heap_n)
            break;
        if (c + 1 < e->heap_n && e->heap[c + 1] < e->heap[c])
            c++;
        if (e->heap[c] >= last)
            break;
        e->heap[i] = e->heap[c];
        i = c;
    }
    if (e->heap_n)
        e->heap[i] = last;
    return top;
}

static int push_pair(const tok *t, struct enc *e, int32_t pos)
{
    int32_t nx = e->next[pos];
    uint32_t rank;
    int32_t merged;
    if (nx < 0 || !merge_find(t, e->sym[pos], e->sym[nx], &rank, &merged))
        return 0;
    return heap_push(e, (uint64_t)rank << 32 | (uint32_t)pos);
}

/* BPE over one pre-tokenized piece (raw bytes). */
static int bpe_piece(const tok *t, struct enc *e, const unsigned char *s, size_t n)
{
    if (n == 1)
        return push_id(e, t->byte_token[s[0]]);
    if (n > e->scratch_cap) {
        size_t cap = n * 2;
        int32_t *a = realloc(e->sym, cap * sizeof *a), *b, *c;
        if (!a)
            return -1;
        e->sym = a;
        if (!(b = realloc(e->prev, cap * sizeof *b)))
            return -1;
        e->prev = b;
        if (!(c = realloc(e->next, cap * sizeof *c)))
            return -1;
        e->next = c;
        e->scratch_cap = cap;
    }
    for (size_t i = 0; i < n; i++) {
        e->sym[i] = t->byte_token[s[i]];
        e->prev[i] = (int32_t)i - 1;
        e->next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
    }
    e->heap_n = 0;
    for (size_t i = 0; i + 1 < n; i++)
        if (push_pair(t, e, (int32_t)i))
            return -1;
    while (e->heap_n) {
        uint64_t top = heap_pop(e);
        uint32_t rank = (uint32_t)(top >> 32);
        int32_t pos = (int32_t)(uint32_t)top;
        int32_t nx = e->next[pos];
        if (e->sym[pos] < 0 || nx < 0)
            continue; /* stale: the symbol was merged away */
        uint32_t r2;
        int32_t merged;
        if (!merge_find(t, e->sym[pos], e->sym[nx], &r2, &merged) || r2 != rank)
            continue; /* stale: a neighbour changed */
        e->sym[pos] = merged;
        e->sym[nx] = -1;
        e->next[pos] = e->next[nx];
        if (e->next[nx] >= 0)
            e->prev[e->next[nx]] = pos;
        if (e->prev[pos] >= 0 && push_pair(t, e, e->prev[pos]))
            return -1;
        if (push_pair(t, e, pos))
            return -1;
    }
    for (int32_t i = 0; i >= 0; i = e->next[i])
        if (push_id(e, e->sym[i]))
            return -1;
    return 0;
}

/* Normalises and splits one stretch of text without added tokens. */
static int encode_plain(const tok *t, struct enc *e, const char *s, size_t n, errbuf *err)
{
    if (!n)
        return 0;
    unsigned char *norm = NULL;
    int ascii = 1;
    for (size_t i = 0; i < n && ascii; i++)
        ascii = (unsigned char)s[i] < 0x80;
    if (!ascii) { /* NFC; ASCII is already normal */
        utf8proc_ssize_t k = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &norm,
                                          UTF8PROC_STABLE | UTF8PROC_COMPOSE);
        if (k < 0)
            return errorf(err, "text normalisation failed: %s", utf8proc_errmsg(k));
        s = (const char *)norm;
        n = (size_t)k;
    }
    PCRE2_SIZE at = 0;
    int rc = 0;
    while (at < n) {
        int m = pcre2_match(t->split, (PCRE2_SPTR)s, n, at, PCRE2_NO_UTF_CHECK, e->md, NULL);
        size_t ms = n, me = n;
        if (m >= 0) {
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(e->md);
            ms = ov[0];
            me = ov[1];
        } else if (m != PCRE2_ERROR_NOMATCH) {
            rc = errorf(err, "pre-tokenizer regex failed (pcre2 error %d)", m);
            break;
        }
        if (ms > at && (rc = bpe_piece(t, e, (const unsigned char *)s + at, ms - at)))
            break; /* the gap before a match is a piece of its own */
        if (me == ms) { /* an empty match: step over one character */
            if (ms >= n)
                break;
            uint32_t cp;
            int k = utf8_next((const unsigned char *)s + ms, n - ms, &cp);
            me = ms + (size_t)(k > 0 ? k : 1);
            if ((rc = bpe_piece(t, e, (const unsigned char *)s + ms, me - ms)))
                break;
        } else if ((rc = bpe_piece(t, e, (const unsigned char *)s + ms, me - ms))) {
            break;
        }
        at = me;
    }
    free(norm);
    if (rc > 0 || (rc < 0 && !err))
        return -1;
    return rc;
}

static const struct added *added_at(const tok *t, const char *s, size_t n)
{
    if (!t->added_first[(unsigned char)*s])
        return NULL;
    for (int i = 0; i < t->n_added; i++) /* longest first */
        if (t->added[i].len <= n && !memcmp(s, t->added[i].content, t->added[i].len))
            return &t->added[i];
    return NULL;
}

int tok_encode(const tok *t, const char *text, size_t len, int32_t **ids, size_t *n_ids,
               errbuf *err)
{
    *ids = NULL;
    *n_ids = 0;
    utf8proc_int32_t cp;
    for (size_t i = 0; i < len;) {
        if ((unsigned char)text[i] < 0x80) {
            i++;
            continue;
        }
        utf8proc_ssize_t k =
            utf8proc_iterate((const utf8proc_uint8_t *)text + i, (utf8proc_ssize_t)(len - i), &cp);
        if (k <= 0)
            return errorf(err, "invalid UTF-8 at byte offset %zu", i);
        i += (size_t)k;
    }
    struct enc e = {0};
    e.md = pcre2_match_data_create_from_pattern(t->split, NULL);
    int rc = e.md ? 0 : errorf(err, "out of memory");
    size_t start = 0;
    for (size_t i = 0; i < len && !rc;) {
        const struct added *a = added_at(t, text + i, len - i);
        if (!a) {
            i++;
            continue;
        }
        rc = encode_plain(t, &e, text + start, i - start, err);
        if (!rc && push_id(&e, a->id))
            rc = errorf(err, "out of memory");
        i += a->len;
        start = i;
    }
    if (!rc)
        rc = encode_plain(t, &e, text + start, len - start, err);
    if (rc < 0 && err && !err->msg[0])
        errorf(err, "out of memory");
    free(e.sym);
    free(e.prev);
    free(e.next);
    free(e.heap);
    if (e.md)
        pcre2_match_data_free(e.md);
    if (rc) {
        free(e.ids);
        return -1;
    }
    *ids = e.ids ? e.ids : malloc(sizeof(int32_t));
    *n_ids = e.n;
    return 0;
}

/* ---- decoding ---- */

/* Appends s as UTF-8, each maximal invalid subpart replaced by U+FFFD
 * (what Rust's from_utf8_lossy, and so tokenizers, does). */
static void add_lossy(strbuf *out, const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        size_t need = c < 0x80 ? 1 : (c >= 0xc2 && c <= 0xdf) ? 2 : (c >= 0xe0 && c <= 0xef) ? 3
                                    : (c >= 0xf0 && c <= 0xf4) ? 4 : 0;
        size_t k = 1;
        if (need > 1) {
            /* Second byte ranges per Unicode Table 3-7. */
            unsigned char lo = 0x80, hi = 0xbf;
            if (c == 0xe0) lo = 0xa0;
            if (c == 0xed) hi = 0x9f;
            if (c == 0xf0) lo = 0x90;
            if (c == 0xf4) hi = 0x8f;
            if (i + 1 < n && s[i + 1] >= lo && s[i + 1] <= hi) {
                k = 2;
                while (k < need && i + k < n && s[i + k] >= 0x80 && s[i + k] <= 0xbf)
                    k++;
            }
        }
        if (need && k == need) {
            sb_add(out, s + i, k);
        } else {
            sb_adds(out, "\xef\xbf\xbd");
        }
        i += need && k == need ? k : k;
    }
}

int tok_decode(const tok *t, const int32_t *ids, size_t n, strbuf *out, errbuf *err)
{
    strbuf raw = STRBUF_INIT;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= t->n_ids || !t->bytes[ids[i]]) {
            sb_release(&raw);
            return errorf(err, "token id %d is not in the vocabulary", ids[i]);
        }
        sb_add(&raw, t->bytes[ids[i]], t->n_bytes[ids[i]]);
    }
    add_lossy(out, (const unsigned char *)(raw.buf ? raw.buf : ""), raw.len);
    sb_release(&raw);
    return 0;
}
