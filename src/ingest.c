/*
 * ingest.c - documents out of files, folders, JSONL and archives; see ingest.h.
 *
 * Every reader turns what it finds into calls of deliver() (a good document)
 * or fail() (a failed one with its reason); nothing here stops on bad input.
 * Files are read through a small buffered reader that works over a plain
 * file or a libarchive stream (compressed single files, archive entries),
 * and that never holds more than max_doc_bytes of one document: an entry
 * that claims or turns out to be larger is cut off at the limit and failed,
 * so an archive bomb costs at most the limit in memory.
 *
 * Functions return nonzero only when the callback asked to stop; that value
 * travels up unchanged.
 */
#include "ingest.h"

#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <errno.h>
#include <fnmatch.h>
#include <glob.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sha256.h"

enum { READ_CHUNK = 64 << 10 };

typedef struct ictx {
    const job *j;
    const job_input *in;
    int input;
    ingest_fn fn;
    void *fn_ctx;
    /* where the job's own outputs live, so a folder input never reads them */
    char *out_dir_real[2];
    const char *out_name[2]; /* ledger base name (prefix, for -wal/-shm), jsonl base name */
    strbuf reason, text, line;
    char *chunk; /* READ_CHUNK bytes */
} ictx;

/* ---- UTF-8 --------------------------------------------------------------- */

size_t ingest_utf8_check(const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len;
        unsigned cp, min;
        if (c >= 0xc2 && c <= 0xdf)
            len = 2, cp = c & 0x1f, min = 0x80;
        else if (c >= 0xe0 && c <= 0xef)
            len = 3, cp = c & 0x0f, min = 0x800;
        else if (c >= 0xf0 && c <= 0xf4)
            len = 4, cp = c & 0x07, min = 0x10000;
        else
            return i;
        if (n - i < len)
            return i;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return i;
            cp = cp << 6 | (s[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return i;
        i += len;
    }
    return n;
}

static int is_blank(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!strchr(" \t\r\n\f\v", s[i]))
            return 0;
    return 1;
}

/* ---- delivering documents ------------------------------------------------ */

static int deliver(ictx *c, ingest_doc *d)
{
    d->input = c->input;
    return c->fn(d, c->fn_ctx);
}

/* A failed document: error is "source: reason". id may be NULL (then the
 * source stands in, so the ledger can still key it). */
__attribute__((format(printf, 4, 5))) static int fail(ictx *c, const char *source,
                                                      const char *id, const char *fmt, ...)
{
    sb_reset(&c->reason);
    sb_addf(&c->reason, "%s: ", source);
    va_list ap;
    va_start(ap, fmt);
    sb_vaddf(&c->reason, fmt, ap);
    va_end(ap);
    ingest_doc d = {.kind = INGEST_TEXT, .source = source, .id = id ? id : source,
                    .error = c->reason.buf};
    return deliver(c, &d);
}

/* Checks and delivers one text document (a file or an archive entry). */
static int deliver_text(ictx *c, const char *source, strbuf *text)
{
    const char *s = text->buf ? text->buf : "";
    size_t n = text->len;
    if (n >= 3 && !memcmp(s, "\xef\xbb\xbf", 3))
        s += 3, n -= 3;
    size_t bad = ingest_utf8_check(s, n);
    if (bad < n)
        return fail(c, source, NULL, "invalid UTF-8 at byte %zu", bad);
    const char *nul = memchr(s, '\0', n);
    if (nul)
        return fail(c, source, NULL, "NUL byte at byte %zu (a binary file?)", (size_t)(nul - s));
    if (is_blank(s, n))
        return fail(c, source, NULL, "empty document");
    char id[SHA256_HEX_SIZE];
    sha256_hex(s, n, id);
    ingest_doc d = {.kind = INGEST_TEXT, .source = source, .id = id, .text = s, .text_len = n};
    return deliver(c, &d);
}

/* ---- a buffered byte source: a file, or a libarchive stream -------------- */

typedef struct reader {
    FILE *f;
    struct archive *a; /* reading entry data (an archive entry or a raw stream) */
    char *buf;
    size_t pos, end;
    int eof;
    char error[300]; /* set when a read failed */
    int fatal;       /* libarchive: the archive cannot go on */
} reader;

/* Refills the buffer; returns bytes now available, 0 at the end, -1 on error. */
static long reader_fill(reader *r)
{
    if (r->eof)
        return 0;
    r->pos = r->end = 0;
    if (r->f) {
        size_t got = fread(r->buf, 1, READ_CHUNK, r->f);
        if (!got) {
            r->eof = 1;
            if (ferror(r->f)) {
                snprintf(r->error, sizeof r->error, "read error: %s", strerror(errno));
                return -1;
            }
            return 0;
        }
        r->end = got;
        return (long)got;
    }
    for (int retries = 0;; retries++) {
        la_ssize_t got = archive_read_data(r->a, r->buf, READ_CHUNK);
        if (got == ARCHIVE_RETRY && retries < 3)
            continue;
        if (got < 0) { /* ARCHIVE_WARN here means damaged data (a bad CRC) */
            r->eof = 1;
            r->fatal = got == ARCHIVE_FATAL;
            snprintf(r->error, sizeof r->error, "%s",
                     archive_error_string(r->a) ? archive_error_string(r->a) : "read error");
            return -1;
        }
        if (got == 0)
            r->eof = 1;
        r->end = (size_t)got;
        return (long)got;
    }
}

/*
 * Reads one line (without its '\n') into line. Lines longer than cap are
 * consumed but not kept: *too_long is set and line holds the first cap
 * bytes. Returns 1 for a line, 0 at the end, -1 on a read error.
 */
static int reader_line(reader *r, strbuf *line, size_t cap, int *too_long)
{
    sb_reset(line);
    *too_long = 0;
    int any = 0;
    for (;;) {
        if (r->pos == r->end) {
            long got = reader_fill(r);
            if (got < 0)
                return -1;
            if (got == 0)
                return any ? 1 : 0;
        }
        any = 1;
        char *start = r->buf + r->pos;
        size_t avail = r->end - r->pos;
        char *nl = memchr(start, '\n', avail);
        size_t take = nl ? (size_t)(nl - start) : avail;
        if (!*too_long) {
            if (line->len + take > cap) {
                *too_long = 1;
                sb_add(line, start, cap - line->len);
            } else {
                sb_add(line, start, take);
            }
        }
        r->pos += nl ? take + 1 : take;
        if (nl)
            return 1;
    }
}

/* Reads everything, keeping at most cap bytes; *too_long when there was
 * more. Stops reading at cap + 1 bytes (the rest is never decompressed). */
static int reader_all(reader *r, strbuf *out, size_t cap, int *too_long)
{
    sb_reset(out);
    *too_long = 0;
    for (;;) {
        if (r->pos == r->end) {
            long got = reader_fill(r);
            if (got < 0)
                return -1;
            if (got == 0)
                return 0;
        }
        size_t avail = r->end - r->pos;
        if (out->len + avail > cap) {
            *too_long = 1;
            sb_add(out, r->buf + r->pos, cap - out->len);
            return 0;
        }
        sb_add(out, r->buf + r->pos, avail);
        r->pos = r->end;
    }
}

/* Opens path for reading; compressed files go through libarchive's filters
 * in raw mode. Returns 0, or -1 with r->error. */
static int reader_open(reader *r, ictx *c, const char *path, int compressed)
{
    memset(r, 0, sizeof *r);
    r->buf = c->chunk;
    if (!compressed) {
        r->f = fopen(path, "rb");
        if (!r->f) {
            snprintf(r->error, sizeof r->error, "cannot read: %s", strerror(errno));
            return -1;
        }
        return 0;
    }
    r->a = archive_read_new();
    archive_read_support_filter_all(r->a);
    archive_read_support_format_raw(r->a);
    archive_read_support_format_empty(r->a);
    struct archive_entry *e;
    if (archive_read_open_filename(r->a, path, READ_CHUNK) != ARCHIVE_OK ||
        archive_read_next_header(r->a, &e) < ARCHIVE_WARN) {
        snprintf(r->error, sizeof r->error, "cannot read: %s",
                 archive_error_string(r->a) ? archive_error_string(r->a) : "unknown error");
        archive_read_free(r->a);
        r->a = NULL;
        return -1;
    }
    return 0;
}

static void reader_close(reader *r)
{
    if (r->f)
        fclose(r->f);
    if (r->a)
        archive_read_free(r->a);
    r->f = NULL;
    r->a = NULL;
}

/* ---- file kinds by name -------------------------------------------------- */

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcasecmp(s + n - m, suffix);
}

/* Length of a compression suffix (".gz", ...) at the end of name, or 0. */
static size_t compression_suffix(const char *name)
{
    static const char *const sfx[] = {".gz", ".bz2", ".xz", ".zst", ".lz4", ".lzma", ".lz"};
    for (size_t i = 0; i < sizeof sfx / sizeof sfx[0]; i++)
        if (ends_with(name, sfx[i]))
            return strlen(sfx[i]);
    return 0;
}

static int is_archive_name(const char *name)
{
    static const char *const sfx[] = {".tar",    ".tgz",     ".tar.gz", ".tar.bz2", ".tbz",
                                      ".tbz2",   ".tar.xz",  ".txz",    ".tar.zst", ".tzst",
                                      ".tar.lz4", ".tar.lzma", ".tlz",  ".zip",     ".7z",
                                      ".cpio",   ".iso",     ".rar"};
    for (size_t i = 0; i < sizeof sfx / sizeof sfx[0]; i++)
        if (ends_with(name, sfx[i]))
            return 1;
    return 0;
}

static int is_jsonl_name(const char *name)
{
    size_t n = strlen(name) - compression_suffix(name);
    return (n >= 6 && !strncasecmp(name + n - 6, ".jsonl", 6)) ||
           (n >= 7 && !strncasecmp(name + n - 7, ".ndjson", 7));
}

/* ---- JSON documents ------------------------------------------------------ */

static const char *json_kind(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER:
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

/* A plain JSONL document. */
static int jsonl_doc(ictx *c, json_t *obj, const char *source)
{
    const job_input *in = c->in;
    const char *id = NULL;
    char id_num[32];
    if (in->id_field) {
        json_t *v = json_object_get(obj, in->id_field);
        if (json_is_string(v) && json_string_length(v) && !memchr(json_string_value(v), 0, json_string_length(v)))
            id = json_string_value(v);
        else if (json_is_integer(v))
            snprintf(id_num, sizeof id_num, "%" JSON_INTEGER_FORMAT, json_integer_value(v)),
                id = id_num;
        else if (!v)
            return fail(c, source, NULL, "no id field '%s'", in->id_field);
        else
            return fail(c, source, NULL, "id field '%s' is %s, expected a string or an integer",
                        in->id_field, json_is_string(v) ? "an empty string" : json_kind(v));
    }
    json_t *t = json_object_get(obj, in->text_field);
    if (!t)
        return fail(c, source, id, "no field '%s'", in->text_field);
    if (!json_is_string(t))
        return fail(c, source, id, "field '%s' is %s, expected a string", in->text_field,
                    json_kind(t));
    const char *text = json_string_value(t);
    size_t len = json_string_length(t);
    if (is_blank(text, len))
        return fail(c, source, id, "empty document (field '%s' is blank)", in->text_field);
    char hash[SHA256_HEX_SIZE];
    if (!id) {
        sha256_hex(text, len, hash);
        id = hash;
    }
    ingest_doc d = {.kind = INGEST_JSONL, .source = source, .id = id, .text = text,
                    .text_len = len, .fields = obj};
    return deliver(c, &d);
}

/* Reads a number field of an OpenAI request body into *out; 1 when set, 0
 * when absent, -1 (with c->line holding the reason) when wrong. */
static int body_number(ictx *c, json_t *body, const char *key, double lo, double hi,
                       double *out)
{
    json_t *v = json_object_get(body, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_number(v)) {
        sb_reset(&c->line);
        sb_addf(&c->line, "body.%s is %s, expected a number", key, json_kind(v));
        return -1;
    }
    double x = json_number_value(v);
    if (x < lo || x > hi) {
        sb_reset(&c->line);
        sb_addf(&c->line, "body.%s = %g is out of range (%g to %g)", key, x, lo, hi);
        return -1;
    }
    *out = x;
    return 1;
}

static int body_integer(ictx *c, json_t *body, const char *key, json_int_t lo, json_int_t hi,
                        json_int_t *out)
{
    json_t *v = json_object_get(body, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_integer(v)) {
        sb_reset(&c->line);
        sb_addf(&c->line, "body.%s is %s, expected an integer", key, json_kind(v));
        return -1;
    }
    json_int_t x = json_integer_value(v);
    if (x < lo || x > hi) {
        sb_reset(&c->line);
        sb_addf(&c->line,
                "body.%s = %" JSON_INTEGER_FORMAT " is out of range (%" JSON_INTEGER_FORMAT
                " to %" JSON_INTEGER_FORMAT ")",
                key, x, lo, hi);
        return -1;
    }
    *out = x;
    return 1;
}

/* Per-request sampling settings. 0, or -1 with the reason in c->line. */
static int batch_overrides(ictx *c, json_t *body, ingest_overrides *ov)
{
    json_int_t i;
    double x;
    int rc;
    if ((rc = body_integer(c, body, "max_completion_tokens", 1, 1 << 20, &i)) < 0)
        return -1;
    if (!rc && (rc = body_integer(c, body, "max_tokens", 1, 1 << 20, &i)) < 0)
        return -1;
    if (rc)
        ov->set |= INGEST_SET_MAX_NEW_TOKENS, ov->max_new_tokens = (int)i;
    if ((rc = body_number(c, body, "temperature", 0, 2, &x)) < 0)
        return -1;
    if (rc)
        ov->set |= INGEST_SET_TEMPERATURE, ov->temperature = x;
    if ((rc = body_number(c, body, "top_p", 0, 1, &x)) < 0)
        return -1;
    if (rc && x == 0) {
        sb_reset(&c->line);
        sb_adds(&c->line, "body.top_p must be more than 0");
        return -1;
    }
    if (rc)
        ov->set |= INGEST_SET_TOP_P, ov->top_p = x;
    if ((rc = body_integer(c, body, "top_k", -1, 1000000, &i)) < 0) /* vLLM: -1 is off */
        return -1;
    if (rc)
        ov->set |= INGEST_SET_TOP_K, ov->top_k = i < 0 ? 0 : (int)i;
    if ((rc = body_number(c, body, "min_p", 0, 1, &x)) < 0)
        return -1;
    if (rc)
        ov->set |= INGEST_SET_MIN_P, ov->min_p = x;
    if ((rc = body_number(c, body, "presence_penalty", -2, 2, &x)) < 0)
        return -1;
    if (rc)
        ov->set |= INGEST_SET_PRESENCE_PENALTY, ov->presence_penalty = x;
    if ((rc = body_integer(c, body, "seed", INT64_MIN, INT64_MAX, &i)) < 0)
        return -1;
    if (rc)
        ov->set |= INGEST_SET_SEED, ov->seed = (uint64_t)i;
    if ((rc = body_integer(c, body, "n", 1, 1, &i)) < 0) {
        sb_reset(&c->line);
        sb_adds(&c->line, "body.n: only one choice per request (n = 1) is supported");
        return -1;
    }
    json_t *kw = json_object_get(body, "chat_template_kwargs");
    if (kw && !json_is_null(kw)) {
        json_t *think = json_is_object(kw) ? json_object_get(kw, "enable_thinking") : NULL;
        if (!json_is_object(kw) || (think && !json_is_boolean(think))) {
            sb_reset(&c->line);
            sb_adds(&c->line, json_is_object(kw)
                                  ? "body.chat_template_kwargs.enable_thinking must be true or false"
                                  : "body.chat_template_kwargs must be an object");
            return -1;
        }
        if (think)
            ov->set |= INGEST_SET_MODE,
                ov->mode = json_is_true(think) ? JOB_THINKING : JOB_NON_THINKING;
    }
    return 0;
}

/* Normalizes body.messages into [{role, content: string}]; NULL with the
 * reason in c->line when something is wrong. */
static json_t *batch_messages(ictx *c, json_t *body)
{
    json_t *msgs = json_object_get(body, "messages");
    sb_reset(&c->line);
    if (!json_is_array(msgs) || !json_array_size(msgs)) {
        sb_adds(&c->line, msgs ? "body.messages must be a non-empty array"
                               : "body.messages is missing");
        return NULL;
    }
    json_t *out = json_array();
    int n_user = 0, any_text = 0;
    for (size_t i = 0; i < json_array_size(msgs); i++) {
        json_t *m = json_array_get(msgs, i);
        json_t *role = json_object_get(m, "role");
        json_t *content = json_object_get(m, "content");
        const char *r = json_string_value(role);
        if (!json_is_object(m) || !r) {
            sb_addf(&c->line, "body.messages[%zu] needs a string 'role'", i);
            goto bad;
        }
        if (!strcmp(r, "developer"))
            r = "system"; /* OpenAI's newer name for it */
        if (strcmp(r, "system") && strcmp(r, "user") && strcmp(r, "assistant")) {
            sb_addf(&c->line, "body.messages[%zu]: role '%s' is not supported (system, user, "
                              "assistant)",
                    i, r);
            goto bad;
        }
        n_user += !strcmp(r, "user");
        strbuf text = STRBUF_INIT;
        if (json_is_string(content)) {
            sb_add(&text, json_string_value(content), json_string_length(content));
        } else if (json_is_array(content)) {
            for (size_t k = 0; k < json_array_size(content); k++) {
                json_t *part = json_array_get(content, k);
                const char *type = json_string_value(json_object_get(part, "type"));
                json_t *t = json_object_get(part, "text");
                if (!type || strcmp(type, "text") || !json_is_string(t)) {
                    sb_addf(&c->line,
                            "body.messages[%zu].content[%zu]: only {\"type\": \"text\", "
                            "\"text\": ...} parts are supported",
                            i, k);
                    sb_release(&text);
                    goto bad;
                }
                if (k)
                    sb_addc(&text, '\n'); /* as vLLM joins text parts */
                sb_add(&text, json_string_value(t), json_string_length(t));
            }
        } else if (!(json_is_null(content) && !strcmp(r, "assistant"))) {
            sb_addf(&c->line, "body.messages[%zu].content is %s, expected a string", i,
                    content ? json_kind(content) : "missing");
            goto bad;
        }
        any_text |= !is_blank(text.buf ? text.buf : "", text.len);
        json_array_append_new(out, json_pack("{s:s, s:s%}", "role", r, "content",
                                             text.buf ? text.buf : "", text.len));
        sb_release(&text);
    }
    if (!n_user) {
        sb_adds(&c->line, "body.messages has no user message");
        goto bad;
    }
    if (!any_text) {
        sb_adds(&c->line, "empty document (every message is blank)");
        goto bad;
    }
    return out;
bad:
    json_decref(out);
    return NULL;
}

/* An OpenAI Batch API request line. */
static int batch_doc(ictx *c, json_t *obj, const char *source)
{
    json_t *cid = json_object_get(obj, "custom_id");
    const char *id = json_string_value(cid);
    if (!cid)
        return fail(c, source, NULL, "no custom_id");
    if (!id || !*id)
        return fail(c, source, NULL, "custom_id is %s, expected a non-empty string",
                    id ? "empty" : json_kind(cid));
    json_t *method = json_object_get(obj, "method");
    if (method && (!json_is_string(method) || strcmp(json_string_value(method), "POST")))
        return fail(c, source, id, "method must be \"POST\"");
    json_t *url = json_object_get(obj, "url");
    if (url && (!json_is_string(url) || strcmp(json_string_value(url), "/v1/chat/completions")))
        return fail(c, source, id, "url %s is not supported (only /v1/chat/completions)",
                    json_is_string(url) ? json_string_value(url) : "(not a string)");
    json_t *body = json_object_get(obj, "body");
    if (!json_is_object(body))
        return fail(c, source, id, "body is %s, expected an object",
                    body ? json_kind(body) : "missing");
    ingest_overrides ov = {0};
    if (batch_overrides(c, body, &ov))
        return fail(c, source, id, "%s", c->line.buf);
    json_t *msgs = batch_messages(c, body);
    if (!msgs)
        return fail(c, source, id, "%s", c->line.buf);
    ingest_doc d = {.kind = INGEST_OPENAI_BATCH, .source = source, .id = id, .messages = msgs,
                    .fields = obj, .overrides = ov};
    int rc = deliver(c, &d);
    json_decref(msgs);
    return rc;
}

static int looks_like_batch(const json_t *obj)
{
    return json_is_object(obj) && json_object_get(obj, "custom_id") &&
           json_object_get(obj, "body");
}

/* A JSONL file (plain or OpenAI batch; fmt AUTO sniffs the first line). */
static int read_jsonl(ictx *c, const char *path, const char *display,
                      enum job_input_format fmt)
{
    reader r;
    if (reader_open(&r, c, path, compression_suffix(path) > 0))
        return fail(c, display, NULL, "%s", r.error);
    strbuf source = STRBUF_INIT;
    long lineno = 0;
    int rc = 0, too_long, got;
    size_t cap = c->in->max_doc_bytes;
    while (!rc && (got = reader_line(&r, &c->text, cap, &too_long)) != 0) {
        lineno++;
        sb_reset(&source);
        sb_addf(&source, "%s:%ld", display, lineno);
        if (got < 0) {
            rc = fail(c, source.buf, NULL, "%s", r.error);
            break;
        }
        if (too_long) {
            rc = fail(c, source.buf, NULL, "line longer than max_doc_bytes (%zu bytes)", cap);
            continue;
        }
        size_t len = c->text.len;
        if (len && c->text.buf[len - 1] == '\r')
            c->text.buf[--len] = '\0';
        if (is_blank(c->text.buf, len))
            continue;
        size_t bad = ingest_utf8_check(c->text.buf, len);
        if (bad < len) {
            rc = fail(c, source.buf, NULL, "invalid UTF-8 at byte %zu of the line", bad);
            continue;
        }
        json_error_t jerr;
        json_t *obj = json_loadb(c->text.buf, len, 0, &jerr);
        if (fmt == JOB_FORMAT_AUTO)
            fmt = looks_like_batch(obj) ? JOB_FORMAT_OPENAI_BATCH : JOB_FORMAT_JSONL;
        if (!obj)
            rc = fail(c, source.buf, NULL, "malformed JSON at column %d: %s", jerr.column,
                      jerr.text);
        else if (!json_is_object(obj))
            rc = fail(c, source.buf, NULL, "expected a JSON object, got %s", json_kind(obj));
        else if (fmt == JOB_FORMAT_OPENAI_BATCH)
            rc = batch_doc(c, obj, source.buf);
        else
            rc = jsonl_doc(c, obj, source.buf);
        json_decref(obj);
    }
    reader_close(&r);
    sb_release(&source);
    return rc;
}

/* A whole file as one document. */
static int read_text(ictx *c, const char *path, const char *display)
{
    size_t cap = c->in->max_doc_bytes;
    int compressed = compression_suffix(path) > 0;
    struct stat st;
    if (!compressed && !stat(path, &st) && (size_t)st.st_size > cap)
        return fail(c, display, NULL, "larger than max_doc_bytes (%lld > %zu bytes)",
                    (long long)st.st_size, cap);
    reader r;
    if (reader_open(&r, c, path, compressed))
        return fail(c, display, NULL, "%s", r.error);
    int too_long;
    int got = reader_all(&r, &c->text, cap, &too_long);
    reader_close(&r);
    if (got < 0)
        return fail(c, display, NULL, "%s", r.error);
    if (too_long)
        return fail(c, display, NULL, "larger than max_doc_bytes (%zu bytes)", cap);
    return deliver_text(c, display, &c->text);
}

/* ---- archives ------------------------------------------------------------ */

static int included(const job_input *in, const char *rel)
{
    for (int i = 0; i < in->n_include; i++)
        if (!fnmatch(in->include[i], rel, 0))
            return 1;
    return 0;
}

static int has_hidden_component(const char *p)
{
    for (const char *s = p; s; s = strchr(s, '/')) {
        if (*s == '/')
            s++;
        if (*s == '.')
            return 1;
    }
    return 0;
}

static int read_archive(ictx *c, const char *path, const char *display)
{
    const size_t cap = c->in->max_doc_bytes;
    struct archive *a = archive_read_new();
    archive_read_support_filter_all(a);
    archive_read_support_format_all(a);
    strbuf source = STRBUF_INIT, last = STRBUF_INIT;
    int rc = 0;
    if (archive_read_open_filename(a, path, READ_CHUNK) != ARCHIVE_OK) {
        rc = fail(c, display, NULL, "cannot open the archive: %s", archive_error_string(a));
        goto done;
    }
    int n_failed_headers = 0;
    for (long index = 0; !rc; index++) {
        struct archive_entry *e;
        int h = archive_read_next_header(a, &e);
        if (h == ARCHIVE_EOF)
            break;
        if (h < ARCHIVE_WARN) {
            const char *msg = archive_error_string(a) ? archive_error_string(a) : "unreadable";
            if (last.len)
                rc = fail(c, display, NULL, "corrupt archive after entry '%s': %s", last.buf, msg);
            else
                rc = fail(c, display, NULL, "corrupt or unrecognized archive: %s", msg);
            /* FAILED skips one entry; FATAL (and a run of failures) ends it. */
            if (h == ARCHIVE_FATAL || ++n_failed_headers > 100)
                break;
            continue;
        }
        const char *name = archive_entry_pathname_utf8(e);
        if (!name)
            name = archive_entry_pathname(e);
        sb_reset(&source);
        sb_adds(&source, display);
        sb_addc(&source, '!');
        if (!name) {
            sb_addf(&source, "#%ld", index);
            rc = fail(c, source.buf, NULL, "the entry's name cannot be decoded");
            continue;
        }
        while (name[0] == '/' || (name[0] == '.' && name[1] == '/'))
            name += name[0] == '/' ? 1 : 2;
        sb_reset(&last);
        sb_adds(&last, name);
        if (archive_entry_filetype(e) != AE_IFREG || !*name || has_hidden_component(name) ||
            !included(c->in, name))
            continue;
        sb_adds(&source, name);
        if (archive_entry_size_is_set(e) && archive_entry_size(e) > (la_int64_t)cap) {
            rc = fail(c, source.buf, NULL, "larger than max_doc_bytes (%lld > %zu bytes)",
                      (long long)archive_entry_size(e), cap);
            continue;
        }
        reader r = {.a = a, .buf = c->chunk};
        int too_long;
        if (reader_all(&r, &c->text, cap, &too_long) < 0) {
            rc = fail(c, source.buf, NULL, "corrupt entry: %s", r.error);
            if (r.fatal)
                break;
            continue;
        }
        if (too_long)
            rc = fail(c, source.buf, NULL, "larger than max_doc_bytes (%zu bytes)", cap);
        else
            rc = deliver_text(c, source.buf, &c->text);
    }
done:
    archive_read_free(a);
    sb_release(&source);
    sb_release(&last);
    return rc;
}

/* ---- folders and dispatch ------------------------------------------------ */

static int read_path(ictx *c, const char *path, const char *display, enum job_input_format fmt);

static int cmp_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Is dir/name one of the job's own output files? */
static int is_job_output(ictx *c, const char *dir_real, const char *name)
{
    if (!dir_real)
        return 0;
    if (c->out_dir_real[0] && !strcmp(dir_real, c->out_dir_real[0]) &&
        !strncmp(name, c->out_name[0], strlen(c->out_name[0])))
        return 1;
    return c->out_dir_real[1] && !strcmp(dir_real, c->out_dir_real[1]) &&
           !strncmp(name, c->out_name[1], strlen(c->out_name[1]));
}

/* rel: the folder's path below the input folder ("" at the top). */
static int walk_folder(ictx *c, const char *dir, const char *display, const char *rel)
{
    DIR *d = opendir(dir);
    if (!d)
        return fail(c, display, NULL, "cannot read the folder: %s", strerror(errno));
    char **names = NULL;
    size_t n_names = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        names = realloc(names, (n_names + 1) * sizeof *names);
        if (!names)
            abort();
        strbuf sb = STRBUF_INIT;
        sb_adds(&sb, de->d_name);
        names[n_names++] = sb_detach(&sb, NULL);
    }
    closedir(d);
    if (n_names)
        qsort(names, n_names, sizeof *names, cmp_name);
    char *dir_real = realpath(dir, NULL);
    int rc = 0;
    strbuf full = STRBUF_INIT, disp = STRBUF_INIT, sub = STRBUF_INIT;
    for (size_t i = 0; i < n_names; i++) {
        if (rc || is_job_output(c, dir_real, names[i]))
            continue;
        sb_reset(&full);
        sb_reset(&disp);
        sb_reset(&sub);
        sb_addf(&full, "%s/%s", dir, names[i]);
        sb_addf(&disp, "%s%s%s", display,
                display[0] && display[strlen(display) - 1] == '/' ? "" : "/", names[i]);
        sb_addf(&sub, "%s%s%s", rel, *rel ? "/" : "", names[i]);
        struct stat lst, st;
        if (lstat(full.buf, &lst)) {
            rc = fail(c, disp.buf, NULL, "cannot read: %s", strerror(errno));
            continue;
        }
        int is_link = S_ISLNK(lst.st_mode);
        if (is_link && stat(full.buf, &st))
            continue; /* a dangling symlink is no document */
        if (!is_link)
            st = lst;
        if (S_ISDIR(st.st_mode)) {
            if (!is_link) /* symlinked folders could loop */
                rc = walk_folder(c, full.buf, disp.buf, sub.buf);
        } else if (S_ISREG(st.st_mode) && included(c->in, sub.buf)) {
            rc = read_path(c, full.buf, disp.buf, JOB_FORMAT_AUTO);
        }
    }
    for (size_t i = 0; i < n_names; i++)
        free(names[i]);
    free(names);
    free(dir_real);
    sb_release(&full);
    sb_release(&disp);
    sb_release(&sub);
    return rc;
}

static int read_path(ictx *c, const char *path, const char *display, enum job_input_format fmt)
{
    struct stat st;
    if (stat(path, &st))
        return fail(c, display, NULL, "cannot read: %s", strerror(errno));
    if (S_ISDIR(st.st_mode)) {
        if (fmt != JOB_FORMAT_AUTO && fmt != JOB_FORMAT_FOLDER)
            return fail(c, display, NULL, "is a folder, but the input's format is %s",
                        job_format_name(fmt));
        return walk_folder(c, path, display, "");
    }
    if (!S_ISREG(st.st_mode))
        return fail(c, display, NULL, "not a regular file");
    if (fmt == JOB_FORMAT_AUTO || fmt == JOB_FORMAT_FOLDER) {
        if (is_archive_name(path))
            fmt = JOB_FORMAT_ARCHIVE;
        else if (is_jsonl_name(path))
            fmt = JOB_FORMAT_AUTO; /* read_jsonl sniffs for batch requests */
        else
            fmt = JOB_FORMAT_TEXT;
        if (fmt == JOB_FORMAT_AUTO)
            return read_jsonl(c, path, display, JOB_FORMAT_AUTO);
    }
    switch (fmt) {
    case JOB_FORMAT_ARCHIVE: return read_archive(c, path, display);
    case JOB_FORMAT_JSONL:
    case JOB_FORMAT_OPENAI_BATCH: return read_jsonl(c, path, display, fmt);
    default: return read_text(c, path, display);
    }
}

/* ---- inputs -------------------------------------------------------------- */

/* Expands a glob into sorted paths (byte order, independent of the locale). */
static int expand_glob(const char *pattern, glob_t *g)
{
    int rc = glob(pattern, GLOB_NOSORT, NULL, g);
    if (rc == 0 && g->gl_pathc > 1)
        qsort(g->gl_pathv, g->gl_pathc, sizeof *g->gl_pathv, cmp_name);
    return rc;
}

/* The name a path has in messages: relative to the job folder when the job
 * gave it so. */
static const char *display_of(const job *j, const job_input *in, const char *path)
{
    size_t n = strlen(j->dir);
    if (in->spec[0] != '/' && strcmp(j->dir, ".") && !strncmp(path, j->dir, n) && path[n] == '/')
        return path + n + 1;
    return path;
}

int ingest_check(const job *j, errbuf *err)
{
    for (int i = 0; i < j->n_inputs; i++) {
        const job_input *in = &j->inputs[i];
        if (in->is_glob) {
            glob_t g;
            int rc = expand_glob(in->path, &g);
            if (rc == 0)
                globfree(&g);
            if (rc == GLOB_NOMATCH)
                return errorf(err, "%s:%d:%d: inputs[%d]: '%s' matches no files", j->path,
                              in->line, in->column, i, in->spec);
            if (rc)
                return errorf(err, "%s:%d:%d: inputs[%d]: cannot expand '%s'", j->path,
                              in->line, in->column, i, in->spec);
            continue;
        }
        struct stat st;
        if (stat(in->path, &st)) {
            if (strcmp(in->path, in->spec))
                return errorf(err, "%s:%d:%d: inputs[%d]: '%s' (%s): %s", j->path, in->line,
                              in->column, i, in->spec, in->path, strerror(errno));
            return errorf(err, "%s:%d:%d: inputs[%d]: '%s': %s", j->path, in->line, in->column,
                          i, in->spec, strerror(errno));
        }
        int is_dir = S_ISDIR(st.st_mode);
        if (in->format == JOB_FORMAT_FOLDER && !is_dir)
            return errorf(err, "%s:%d:%d: inputs[%d]: '%s' is not a folder (format: folder)",
                          j->path, in->line, in->column, i, in->spec);
        if (is_dir && in->format != JOB_FORMAT_FOLDER && in->format != JOB_FORMAT_AUTO)
            return errorf(err, "%s:%d:%d: inputs[%d]: '%s' is a folder, but format is %s",
                          j->path, in->line, in->column, i, in->spec,
                          job_format_name(in->format));
    }
    return 0;
}

/* The real folder of an output path and its base name, for is_job_output. */
static void note_output(ictx *c, int k, const char *path)
{
    const char *slash = strrchr(path, '/');
    c->out_name[k] = slash ? slash + 1 : path;
    strbuf dir = STRBUF_INIT;
    if (slash)
        sb_add(&dir, path, (size_t)(slash - path) ? (size_t)(slash - path) : 1);
    else
        sb_adds(&dir, ".");
    c->out_dir_real[k] = realpath(dir.buf, NULL);
    sb_release(&dir);
}

int ingest_run(const job *j, ingest_fn fn, void *ctx, errbuf *err)
{
    if (ingest_check(j, err))
        return -1;
    ictx c = {.j = j, .fn = fn, .fn_ctx = ctx};
    c.chunk = malloc(READ_CHUNK);
    if (!c.chunk)
        abort();
    note_output(&c, 0, j->ledger_path);
    note_output(&c, 1, j->jsonl_path);
    int rc = 0;
    for (int i = 0; i < j->n_inputs && !rc; i++) {
        const job_input *in = &j->inputs[i];
        c.in = in;
        c.input = i;
        if (!in->is_glob) {
            rc = read_path(&c, in->path, in->spec, in->format);
            continue;
        }
        glob_t g;
        if (expand_glob(in->path, &g))
            continue; /* vanished since ingest_check: nothing to read */
        for (size_t k = 0; k < g.gl_pathc && !rc; k++)
            rc = read_path(&c, g.gl_pathv[k], display_of(j, in, g.gl_pathv[k]), in->format);
        globfree(&g);
    }
    free(c.chunk);
    free(c.out_dir_real[0]);
    free(c.out_dir_real[1]);
    sb_release(&c.reason);
    sb_release(&c.text);
    sb_release(&c.line);
    return rc;
}

/* ---- what the runner needs from a document ------------------------------- */

int ingest_doc_messages(const job *j, const ingest_doc *doc, json_t **messages, errbuf *err)
{
    *messages = NULL;
    if (doc->error)
        return errorf(err, "%s", doc->error);
    if (doc->kind == INGEST_OPENAI_BATCH) {
        *messages = json_deep_copy(doc->messages);
        return 0;
    }
    strbuf user = STRBUF_INIT;
    if (job_render_user(j, doc->text, doc->text_len, doc->id, doc->source, doc->fields, &user,
                        err)) {
        sb_release(&user);
        return error_prefix(err, "%s", doc->source);
    }
    json_t *out = json_array();
    if (j->system)
        json_array_append_new(out, json_pack("{s:s, s:s}", "role", "system", "content", j->system));
    json_array_append_new(out, json_pack("{s:s, s:s%}", "role", "user", "content",
                                         user.buf ? user.buf : "", user.len));
    sb_release(&user);
    *messages = out;
    return 0;
}

void ingest_doc_settings(const job *j, const ingest_doc *doc, job_sampling *s,
                         enum job_mode *mode)
{
    const ingest_overrides *ov = &doc->overrides;
    *s = j->sampling;
    *mode = j->mode;
    if (ov->set & INGEST_SET_MAX_NEW_TOKENS)
        s->max_new_tokens = ov->max_new_tokens;
    if (ov->set & INGEST_SET_TEMPERATURE)
        s->temperature = ov->temperature;
    if (ov->set & INGEST_SET_TOP_P)
        s->top_p = ov->top_p;
    if (ov->set & INGEST_SET_TOP_K)
        s->top_k = ov->top_k;
    if (ov->set & INGEST_SET_MIN_P)
        s->min_p = ov->min_p;
    if (ov->set & INGEST_SET_PRESENCE_PENALTY)
        s->presence_penalty = ov->presence_penalty;
    if (ov->set & INGEST_SET_SEED)
        s->seed = ov->seed;
    if (ov->set & INGEST_SET_MODE)
        *mode = ov->mode;
}

int ingest_doc_key(const job *j, const char *config_hash, const ingest_doc *doc,
                   char key[SHA256_HEX_SIZE], json_t **messages, errbuf *err)
{
    if (messages)
        *messages = NULL;
    json_t *msgs = NULL;
    strbuf sb = STRBUF_INIT;
    sb_addf(&sb, "qwen3-batch document key v1\nconfig=%s\n", config_hash);
    if (ingest_doc_messages(j, doc, &msgs, err)) {
        sb_addf(&sb, "failed\nsource=%zu:%s\n", strlen(doc->source), doc->source);
        sha256_hex(sb.buf, sb.len, key);
        sb_release(&sb);
        return 1;
    }
    job_sampling s;
    enum job_mode mode;
    ingest_doc_settings(j, doc, &s, &mode);
    sb_addf(&sb, "id=%zu:%s\nmode=%s\n", strlen(doc->id), doc->id, job_mode_name(mode));
    sb_addf(&sb, "temperature=%.17g\ntop_p=%.17g\ntop_k=%d\nmin_p=%.17g\n", s.temperature,
            s.top_p, s.top_k, s.min_p);
    sb_addf(&sb, "presence_penalty=%.17g\nseed=%llu\nmax_new_tokens=%d\nmessages=",
            s.presence_penalty, (unsigned long long)s.seed, s.max_new_tokens);
    char *json = json_dumps(msgs, JSON_COMPACT | JSON_SORT_KEYS);
    if (!json)
        abort(); /* only on allocation failure */
    sb_adds(&sb, json);
    free(json);
    sha256_hex(sb.buf, sb.len, key);
    sb_release(&sb);
    if (messages)
        *messages = msgs;
    else
        json_decref(msgs);
    return 0;
}
