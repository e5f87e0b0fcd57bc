/* test_ingest.c - documents out of JSONL (plain, compressed, OpenAI batch),
 * archives (tar, tar.gz/bz2/xz/zst, zip, 7z) written here with libarchive,
 * folders, globs and single files; every kind of bad input becoming a failed
 * document with its reason while the good ones still come through; missing
 * inputs as configuration errors; deterministic order. */
#include "check.h"
#include "ingest.h"

#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmp[64];

/* ---- fixtures ------------------------------------------------------------ */

static void mkdirs_for(const char *path)
{
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + strlen(tmp) + 1; (p = strchr(p, '/')); p++) {
        *p = '\0';
        mkdir(buf, 0755);
        *p = '/';
    }
}

static const char *at(const char *rel)
{
    static char bufs[4][1024];
    static int next;
    char *b = bufs[next++ % 4];
    snprintf(b, 1024, "%s/%s", tmp, rel);
    return b;
}

static void write_file(const char *rel, const void *data, size_t n)
{
    const char *path = at(rel);
    mkdirs_for(path);
    FILE *f = fopen(path, "wb");
    CHECK_MSG(f != NULL, "cannot write %s", path);
    if (!f)
        return;
    fwrite(data, 1, n, f);
    fclose(f);
}

static void write_str(const char *rel, const char *s)
{
    write_file(rel, s, strlen(s));
}

struct entry {
    const char *name;
    const char *data; /* NULL: a folder; "->target": a symlink */
    size_t len;       /* 0: strlen(data) */
};

enum { TAR, ZIP, SEVENZIP };
enum { NONE, GZIP, BZIP2, XZ, ZSTD };

/* Writes an archive with libarchive; returns 0, or -1 when this libarchive
 * cannot write the combination (the test then skips it). */
static int make_archive(const char *rel, int format, int filter, const struct entry *e, int n)
{
    const char *path = at(rel);
    mkdirs_for(path);
    struct archive *a = archive_write_new();
    int rc = format == TAR   ? archive_write_set_format_pax_restricted(a)
             : format == ZIP ? archive_write_set_format_zip(a)
                             : archive_write_set_format_7zip(a);
    if (rc == ARCHIVE_OK && filter == GZIP)
        rc = archive_write_add_filter_gzip(a);
    if (rc == ARCHIVE_OK && filter == BZIP2)
        rc = archive_write_add_filter_bzip2(a);
    if (rc == ARCHIVE_OK && filter == XZ)
        rc = archive_write_add_filter_xz(a);
    if (rc == ARCHIVE_OK && filter == ZSTD)
        rc = archive_write_add_filter_zstd(a);
    if (rc == ARCHIVE_OK && format == ZIP)
        rc = archive_write_set_options(a, "zip:compression=store"); /* data stays findable */
    if (rc != ARCHIVE_OK || archive_write_open_filename(a, path) != ARCHIVE_OK) {
        fprintf(stderr, "skipping %s: %s\n", rel, archive_error_string(a));
        archive_write_free(a);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        struct archive_entry *ae = archive_entry_new();
        archive_entry_set_pathname(ae, e[i].name);
        archive_entry_set_mtime(ae, 1700000000, 0);
        if (!e[i].data) {
            archive_entry_set_filetype(ae, AE_IFDIR);
            archive_entry_set_perm(ae, 0755);
            archive_write_header(a, ae);
        } else if (!strncmp(e[i].data, "->", 2)) {
            archive_entry_set_filetype(ae, AE_IFLNK);
            archive_entry_set_symlink(ae, e[i].data + 2);
            archive_entry_set_perm(ae, 0777);
            archive_write_header(a, ae);
        } else {
            size_t len = e[i].len ? e[i].len : strlen(e[i].data);
            archive_entry_set_filetype(ae, AE_IFREG);
            archive_entry_set_perm(ae, 0644);
            archive_entry_set_size(ae, (la_int64_t)len);
            archive_write_header(a, ae);
            archive_write_data(a, e[i].data, len);
        }
        archive_entry_free(ae);
    }
    archive_write_close(a);
    archive_write_free(a);
    return 0;
}

/* A single compressed file (foo.txt.gz) through libarchive's raw writer. */
static void make_gzip(const char *rel, const void *data, size_t n)
{
    struct archive *a = archive_write_new();
    archive_write_set_format_raw(a);
    archive_write_add_filter_gzip(a);
    CHECK(archive_write_open_filename(a, at(rel)) == ARCHIVE_OK);
    struct archive_entry *ae = archive_entry_new();
    archive_entry_set_pathname(ae, "data");
    archive_entry_set_filetype(ae, AE_IFREG);
    archive_write_header(a, ae);
    archive_write_data(a, data, n);
    archive_entry_free(ae);
    archive_write_close(a);
    archive_write_free(a);
}

/* ---- collecting documents ------------------------------------------------ */

typedef struct rec {
    int kind, input;
    char *source, *id, *text, *error, *fields, *messages;
    size_t text_len;
    ingest_overrides ov;
    job_sampling sampling;
    enum job_mode mode;
    char *rendered; /* ingest_doc_messages as JSON, or its error */
    char key[SHA256_HEX_SIZE];
    int key_rc;
} rec;

typedef struct recs {
    rec *r;
    int n;
    const job *j;
    int stop_after;          /* 0: never */
    const char *config_hash; /* for ingest_doc_key; NULL: "cfg" */
} recs;

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

static int collect(const ingest_doc *d, void *ctx)
{
    recs *rs = ctx;
    rs->r = realloc(rs->r, (size_t)(rs->n + 1) * sizeof *rs->r);
    rec *r = &rs->r[rs->n++];
    memset(r, 0, sizeof *r);
    r->kind = (int)d->kind;
    r->input = d->input;
    r->source = strdup(d->source);
    r->id = strdup(d->id);
    if (d->text) {
        r->text = malloc(d->text_len + 1);
        memcpy(r->text, d->text, d->text_len + 1);
        r->text_len = d->text_len;
        CHECK(d->text[d->text_len] == '\0');
    }
    r->error = dup_or_null(d->error);
    r->fields = d->fields ? json_dumps(d->fields, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    r->messages = d->messages ? json_dumps(d->messages, JSON_COMPACT) : NULL;
    r->ov = d->overrides;
    ingest_doc_settings(rs->j, d, &r->sampling, &r->mode);
    if (!d->error) {
        json_t *m;
        errbuf err;
        if (ingest_doc_messages(rs->j, d, &m, &err) == 0) {
            r->rendered = json_dumps(m, JSON_COMPACT);
            json_decref(m);
        } else {
            r->rendered = strdup(err.msg);
        }
    }
    json_t *m = NULL;
    errbuf err;
    r->key_rc = ingest_doc_key(rs->j, rs->config_hash ? rs->config_hash : "cfg", d, r->key, &m,
                               &err);
    CHECK_INT_EQ(r->key_rc, d->error || !r->rendered || r->rendered[0] != '[' ? 1 : 0);
    if (m) {
        char *json = json_dumps(m, JSON_COMPACT);
        CHECK_STR_EQ(json, r->rendered);
        free(json);
        json_decref(m);
    }
    return rs->stop_after && rs->n == rs->stop_after ? 7 : 0;
}

static void recs_free(recs *rs)
{
    for (int i = 0; i < rs->n; i++) {
        rec *r = &rs->r[i];
        free(r->source);
        free(r->id);
        free(r->text);
        free(r->error);
        free(r->fields);
        free(r->messages);
        free(r->rendered);
    }
    free(rs->r);
    memset(rs, 0, sizeof *rs);
}

/* Writes name.yaml into tmp with the given text and runs ingest over it. */
static void print_recs(const recs *rs);

/* TEST_VERBOSE=1 in the environment lists every document. */
static int run_job(const char *name, const char *yaml, job *j, recs *rs, errbuf *err)
{
    char rel[128];
    snprintf(rel, sizeof rel, "%s.yaml", name);
    write_str(rel, yaml);
    memset(rs, 0, sizeof *rs);
    if (job_load(j, at(rel), err))
        return -2;
    rs->j = j;
    int rc = ingest_run(j, collect, rs, err);
    if (getenv("TEST_VERBOSE")) {
        fprintf(stderr, "%s: rc %d%s%s\n", name, rc, rc ? ": " : "", rc ? err->msg : "");
        print_recs(rs);
    }
    return rc;
}

static const rec *find(const recs *rs, const char *source)
{
    for (int i = 0; i < rs->n; i++)
        if (!strcmp(rs->r[i].source, source))
            return &rs->r[i];
    return NULL;
}

static void check_good_at(int line, const recs *rs, const char *source, const char *text,
                          size_t len)
{
    const rec *r = find(rs, source);
    check_count++;
    if (!r || r->error || !r->text || r->text_len != len || memcmp(r->text, text, len)) {
        check_failures++;
        fprintf(stderr, "%s:%d: document %s: %s (text '%.60s' of %zu bytes, want '%.60s' of %zu)\n",
                __FILE__, line, source, !r ? "missing" : r->error ? r->error : "wrong text",
                r && r->text ? r->text : "", r ? r->text_len : 0, text, len);
    }
}
#define CHECK_GOOD(rs, source, text) check_good_at(__LINE__, rs, source, text, strlen(text))
#define CHECK_GOOD_N(rs, source, text, len) check_good_at(__LINE__, rs, source, text, len)

/* A failed document with exactly this error (or this prefix when want ends in '*'). */
static void check_failed_at(int line, const recs *rs, const char *source, const char *want)
{
    const rec *r = find(rs, source);
    size_t n = strlen(want);
    int ok = r && r->error &&
             (want[n - 1] == '*' ? !strncmp(r->error, want, n - 1) : !strcmp(r->error, want));
    check_count++;
    if (!ok) {
        check_failures++;
        fprintf(stderr, "%s:%d: failed document %s: got '%s', want '%s'\n", __FILE__, line,
                source, !r ? "(missing)" : r->error ? r->error : "(no error)", want);
    }
}
#define CHECK_FAILED(rs, source, want) check_failed_at(__LINE__, rs, source, want)

static void print_recs(const recs *rs)
{
    for (int i = 0; i < rs->n; i++)
        fprintf(stderr, "  [%d] %s id=%s %s\n", i, rs->r[i].source, rs->r[i].id,
                rs->r[i].error ? rs->r[i].error : "ok");
}

static char *sha_hex(const char *s, size_t n)
{
    static char hex[SHA256_HEX_SIZE];
    sha256_hex(s, n, hex);
    return hex;
}

/* ---- tests --------------------------------------------------------------- */

static void test_utf8(void)
{
    struct {
        const char *s;
        size_t want;
    } cases[] = {
        {"plain ascii", 11},
        {"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", 14},
        {"ab\xc0\xaf", 2},          /* overlong '/' */
        {"\xe0\x80\xaf", 0},        /* overlong 3-byte */
        {"x\xed\xa0\x80", 1},       /* UTF-16 surrogate */
        {"\xf4\x90\x80\x80", 0},    /* above U+10FFFF */
        {"ok\xe2\x82", 2},          /* truncated */
        {"\x80", 0},                /* lone continuation */
        {"\xc3\x28", 0},            /* bad continuation */
        {"\xf4\x8f\xbf\xbf", 4},    /* U+10FFFF itself */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        CHECK_MSG(ingest_utf8_check(cases[i].s, strlen(cases[i].s)) == cases[i].want,
                  "case %zu", i);
}

static void test_jsonl(void)
{
    /* 3 MiB of text on one line. */
    size_t long_n = 3 << 20;
    char *long_text = malloc(long_n + 1);
    for (size_t i = 0; i < long_n; i++)
        long_text[i] = "abcdefghij"[i % 10];
    long_text[long_n] = '\0';
    strbuf sb = STRBUF_INIT;
    sb_adds(&sb, "{\"id\":\"a\",\"text\":\"hello\",\"lang\":\"en\"}\r\n"
                 "\r\n"
                 "{\"id\":7,\"text\":\"seven\"}\n"
                 "{not json\n"
                 "{\"id\":\"b\"}\n"
                 "{\"id\":\"c\",\"text\":5}\n"
                 "{\"id\":\"d\",\"text\":\"  \\n \"}\n"
                 "{\"id\":\"e\",\"text\":\"caf\xe9\"}\n"
                 "[1,2]\n");
    sb_addf(&sb, "{\"id\":\"long\",\"text\":\"%s\"}\n", long_text);
    sb_adds(&sb, "{\"id\":true,\"text\":\"t\"}\n"
                 "{\"id\":\"z\",\"text\":\"last\"}");
    write_file("j/docs.jsonl", sb.buf, sb.len);
    sb_reset(&sb);
    sb_adds(&sb, "{\"body\":\"Hello world\"}\n{\"body\":\"");
    for (int i = 0; i < 2000; i++)
        sb_addc(&sb, 'y');
    sb_adds(&sb, "\"}\n{\"body\":\"after\"}\n");
    write_file("j/plain.jsonl", sb.buf, sb.len);
    sb_release(&sb);

    job j;
    recs rs;
    errbuf err;
    int rc = run_job("j/job",
                     "model: m\n"
                     "inputs:\n"
                     "  - {path: docs.jsonl, id_field: id}\n"
                     "  - {path: plain.jsonl, text_field: body, max_doc_bytes: 1KiB}\n"
                     "prompt:\n  system: Be brief.\n  user: '[{{lang}}] {{text}}'\n",
                     &j, &rs, &err);
    CHECK_MSG(rc == 0, "rc %d: %s", rc, err.msg);
    CHECK_INT_EQ(rs.n, 14);
    CHECK_GOOD(&rs, "docs.jsonl:1", "hello");
    const rec *r = find(&rs, "docs.jsonl:1");
    if (r) {
        CHECK_STR_EQ(r->id, "a");
        CHECK_INT_EQ(r->kind, INGEST_JSONL);
        CHECK_STR_EQ(r->fields, "{\"id\":\"a\",\"lang\":\"en\",\"text\":\"hello\"}");
        CHECK_STR_EQ(r->rendered, "[{\"role\":\"system\",\"content\":\"Be brief.\"},"
                                  "{\"role\":\"user\",\"content\":\"[en] hello\"}]");
    }
    CHECK(find(&rs, "docs.jsonl:2") == NULL); /* blank line */
    CHECK_GOOD(&rs, "docs.jsonl:3", "seven");
    r = find(&rs, "docs.jsonl:3");
    if (r) {
        CHECK_STR_EQ(r->id, "7");
        /* The template names a field this line lacks: a per-document error. */
        CHECK_STR_EQ(r->rendered, "docs.jsonl:3: the prompt template uses {{lang}} but the "
                                  "document has no field 'lang'");
        CHECK_INT_EQ(r->key_rc, 1);
    }
    CHECK_FAILED(&rs, "docs.jsonl:4", "docs.jsonl:4: malformed JSON at column 4: string or '}' expected near 'not'");
    CHECK_FAILED(&rs, "docs.jsonl:5", "docs.jsonl:5: no field 'text'");
    CHECK_STR_EQ(find(&rs, "docs.jsonl:5") ? find(&rs, "docs.jsonl:5")->id : "", "b");
    CHECK_FAILED(&rs, "docs.jsonl:6", "docs.jsonl:6: field 'text' is a number, expected a string");
    CHECK_FAILED(&rs, "docs.jsonl:7", "docs.jsonl:7: empty document (field 'text' is blank)");
    CHECK_FAILED(&rs, "docs.jsonl:8", "docs.jsonl:8: invalid UTF-8 at byte 21 of the line");
    CHECK_FAILED(&rs, "docs.jsonl:9", "docs.jsonl:9: expected a JSON object, got an array");
    r = find(&rs, "docs.jsonl:10");
    CHECK(r && !r->error && r->text_len == long_n && !strcmp(r->text, long_text));
    CHECK_FAILED(&rs, "docs.jsonl:11",
                 "docs.jsonl:11: id field 'id' is a boolean, expected a string or an integer");
    CHECK_GOOD(&rs, "docs.jsonl:12", "last");
    /* Failed documents without a known id are keyed by their source. */
    r = find(&rs, "docs.jsonl:4");
    CHECK(r && !strcmp(r->id, "docs.jsonl:4"));

    CHECK_GOOD(&rs, "plain.jsonl:1", "Hello world");
    r = find(&rs, "plain.jsonl:1");
    CHECK(r && !strcmp(r->id, sha_hex("Hello world", 11)) && r->input == 1);
    CHECK_FAILED(&rs, "plain.jsonl:2", "plain.jsonl:2: line longer than max_doc_bytes (1024 bytes)");
    CHECK_GOOD(&rs, "plain.jsonl:3", "after");
    /* Order: as in the files. */
    CHECK(rs.n == 14 && !strcmp(rs.r[0].source, "docs.jsonl:1") &&
          !strcmp(rs.r[10].source, "docs.jsonl:12") && !strcmp(rs.r[13].source, "plain.jsonl:3"));
    recs_free(&rs);
    job_free(&j);
    free(long_text);
}

static void test_openai_batch(void)
{
    write_str("b/batch.jsonl",
              "{\"custom_id\":\"r1\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\",\"body\":"
              "{\"model\":\"qwen3\",\"messages\":[{\"role\":\"system\",\"content\":\"Be short.\"},"
              "{\"role\":\"user\",\"content\":\"Hi\"}],\"max_tokens\":100,\"temperature\":0.2,"
              "\"seed\":5}}\n"
              "{\"custom_id\":\"r2\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\",\"body\":"
              "{\"messages\":[{\"role\":\"developer\",\"content\":\"Sys\"},{\"role\":\"user\","
              "\"content\":[{\"type\":\"text\",\"text\":\"Part one\"},{\"type\":\"text\",\"text\":"
              "\"part two\"}]}],\"max_completion_tokens\":50,\"max_tokens\":999,\"top_k\":-1,"
              "\"chat_template_kwargs\":{\"enable_thinking\":true}}}\n"
              "{\"custom_id\":\"r3\",\"method\":\"POST\",\"url\":\"/v1/embeddings\",\"body\":"
              "{\"input\":\"x\"}}\n"
              "{\"method\":\"POST\",\"body\":{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}}\n"
              "{\"custom_id\":\"r5\",\"body\":{}}\n"
              "{\"custom_id\":\"r6\",\"body\":{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
              "\"temperature\":\"hot\"}}\n"
              "{\"custom_id\":\"r7\",\"body\":{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
              "\"n\":2}}\n"
              "{\"custom_id\":\"r8\",\"body\":{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":"
              "\"image_url\",\"image_url\":{\"url\":\"x\"}}]}]}}\n"
              "{\"custom_id\":\"r9\",\"body\":{\"messages\":[{\"role\":\"assistant\",\"content\":"
              "\"x\"}]}}\n"
              "{\"custom_id\":\"r10\",\"body\":{\"messages\":[{\"role\":\"user\",\"content\":\" \"}]}}\n"
              "{\"custom_id\":\"r11\",\"body\":{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
              "\"temperature\":3}}\n"
              "{\"custom_id\":\"\",\"body\":{}}\n"
              "{\"custom_id\":\"r1\",\"body\":{\"messages\":[{\"role\":\"system\",\"content\":"
              "\"Be short.\"},{\"content\":\"Hi\",\"role\":\"user\"}],\"seed\":5,\"max_tokens\":100,"
              "\"temperature\":0.2}}\n"
              "{\"custom_id\":\"r1\",\"body\":{\"messages\":[{\"role\":\"system\",\"content\":"
              "\"Be short.\"},{\"content\":\"Hi\",\"role\":\"user\"}],\"seed\":5,\"max_tokens\":100,"
              "\"temperature\":0.3}}\n"
              "{\"custom_id\":\"r1b\",\"body\":{\"messages\":[{\"role\":\"system\",\"content\":"
              "\"Be short.\"},{\"content\":\"Hi\",\"role\":\"user\"}],\"seed\":5,\"max_tokens\":100,"
              "\"temperature\":0.2}}\n");
    job j;
    recs rs;
    errbuf err;
    int rc = run_job("b/job",
                     "model: m\ninputs: [batch.jsonl]\n"
                     "prompt: {system: Job system, user: 'X {{text}}'}\n"
                     "sampling: {top_p: 0.7, max_new_tokens: 300}\n",
                     &j, &rs, &err);
    CHECK_MSG(rc == 0, "rc %d: %s", rc, err.msg);
    CHECK_INT_EQ(rs.n, 15);
    /* Keys: the same request written differently is the same key; another
     * temperature or id is not; failed lines have keys too. */
    if (rs.n == 15) {
        CHECK(rs.r[0].key_rc == 0 && rs.r[12].key_rc == 0 && rs.r[13].key_rc == 0);
        CHECK_STR_EQ(rs.r[12].key, rs.r[0].key);
        CHECK(strcmp(rs.r[13].key, rs.r[0].key) != 0);
        CHECK(strcmp(rs.r[14].key, rs.r[0].key) != 0);
        CHECK(strcmp(rs.r[1].key, rs.r[0].key) != 0);
        CHECK(rs.r[2].key_rc == 1 && strlen(rs.r[2].key) == 64);
        CHECK(strcmp(rs.r[2].key, rs.r[3].key) != 0);
    }
    const rec *r = find(&rs, "batch.jsonl:1");
    CHECK(r && !r->error && r->kind == INGEST_OPENAI_BATCH && !strcmp(r->id, "r1") && !r->text);
    if (r && !r->error) {
        CHECK_STR_EQ(r->messages, "[{\"role\":\"system\",\"content\":\"Be short.\"},"
                                  "{\"role\":\"user\",\"content\":\"Hi\"}]");
        /* The request is self-contained: the job's prompt does not apply. */
        CHECK_STR_EQ(r->rendered, r->messages);
        CHECK_INT_EQ(r->ov.set, INGEST_SET_MAX_NEW_TOKENS | INGEST_SET_TEMPERATURE |
                                    INGEST_SET_SEED);
        CHECK(r->sampling.max_new_tokens == 100 && r->sampling.temperature == 0.2 &&
              r->sampling.seed == 5);
        CHECK(r->sampling.top_p == 0.7 && r->sampling.top_k == 20);
        CHECK_INT_EQ(r->mode, JOB_NON_THINKING);
    }
    r = find(&rs, "batch.jsonl:2");
    CHECK(r && !r->error);
    if (r && !r->error) {
        CHECK_STR_EQ(r->messages, "[{\"role\":\"system\",\"content\":\"Sys\"},"
                                  "{\"role\":\"user\",\"content\":\"Part one\\npart two\"}]");
        CHECK_INT_EQ(r->sampling.max_new_tokens, 50);
        CHECK_INT_EQ(r->sampling.top_k, 0);
        CHECK(r->ov.set & INGEST_SET_TOP_K);
        CHECK_INT_EQ(r->mode, JOB_THINKING);
    }
    CHECK_FAILED(&rs, "batch.jsonl:3",
                 "batch.jsonl:3: url /v1/embeddings is not supported (only /v1/chat/completions)");
    CHECK_FAILED(&rs, "batch.jsonl:4", "batch.jsonl:4: no custom_id");
    CHECK_FAILED(&rs, "batch.jsonl:5", "batch.jsonl:5: body.messages is missing");
    CHECK_STR_EQ(find(&rs, "batch.jsonl:5") ? find(&rs, "batch.jsonl:5")->id : "", "r5");
    CHECK_FAILED(&rs, "batch.jsonl:6",
                 "batch.jsonl:6: body.temperature is a string, expected a number");
    CHECK_FAILED(&rs, "batch.jsonl:7",
                 "batch.jsonl:7: body.n: only one choice per request (n = 1) is supported");
    CHECK_FAILED(&rs, "batch.jsonl:8",
                 "batch.jsonl:8: body.messages[0].content[0]: only {\"type\": \"text\", "
                 "\"text\": ...} parts are supported");
    CHECK_FAILED(&rs, "batch.jsonl:9", "batch.jsonl:9: body.messages has no user message");
    CHECK_FAILED(&rs, "batch.jsonl:10",
                 "batch.jsonl:10: empty document (every message is blank)");
    CHECK_FAILED(&rs, "batch.jsonl:11",
                 "batch.jsonl:11: body.temperature = 3 is out of range (0 to 2)");
    CHECK_FAILED(&rs, "batch.jsonl:12",
                 "batch.jsonl:12: custom_id is empty, expected a non-empty string");
    recs_free(&rs);
    job_free(&j);

    /* format: jsonl reads the same file as plain JSONL (no text field). */
    rc = run_job("b/job2",
                 "model: m\ninputs: [{path: batch.jsonl, format: jsonl}]\n"
                 "prompt: {user: '{{text}}'}\n",
                 &j, &rs, &err);
    CHECK(rc == 0 && rs.n == 15);
    CHECK_FAILED(&rs, "batch.jsonl:1", "batch.jsonl:1: no field 'text'");
    recs_free(&rs);
    job_free(&j);
}

static void test_archives(void)
{
    static char big[200 << 10];
    memset(big, 'x', sizeof big);
    const struct entry entries[] = {
        {"./a.txt", "Alpha text", 0},
        {"sub", NULL, 0},
        {"sub/b.md", "# Bee\n", 0},
        {"c.bin", "\0\x01", 2},
        {".hidden.txt", "hidden", 0},
        {"__MACOSX/._a.txt", "junk", 0},
        {"link.txt", "->a.txt", 0},
        {"empty.txt", "", 0},
        {"bad.txt", "\xff\xfe", 0},
        {"nul.txt", "a\0b", 3},
        {"big.txt", big, sizeof big},
        {"z.txt", "Last", 0},
    };
    int n_entries = (int)(sizeof entries / sizeof entries[0]);
    CHECK(make_archive("a/good.tar.gz", TAR, GZIP, entries, n_entries) == 0);
    make_archive("a/good.zip", ZIP, NONE, entries, n_entries);

    /* The same two documents in every format and compression. */
    const struct entry two[] = {{"a.txt", "Alpha text", 0}, {"sub/b.md", "# Bee\n", 0}};
    const char *names[] = {"a/f.tar", "a/f.tar.bz2", "a/f.tar.xz", "a/f.tar.zst", "a/f.7z",
                           "a/f2.zip"};
    int formats[] = {TAR, TAR, TAR, TAR, SEVENZIP, ZIP};
    int filters[] = {NONE, BZIP2, XZ, ZSTD, NONE, NONE};
    int made[6];
    for (int i = 0; i < 6; i++)
        made[i] = make_archive(names[i], formats[i], filters[i], two, 2) == 0;

    /* A truncated tar.gz: three entries of poorly compressible text, cut in
     * the middle of the second. */
    static char r1[100000], r2[100000], r3[100000];
    unsigned x = 12345;
    char *rs_[] = {r1, r2, r3};
    for (int k = 0; k < 3; k++)
        for (size_t i = 0; i < sizeof r1; i++) {
            x = x * 1103515245u + 12345u;
            rs_[k][i] = (char)('a' + (x >> 16) % 26);
        }
    const struct entry three[] = {{"t1.txt", r1, sizeof r1}, {"t2.txt", r2, sizeof r2},
                                  {"t3.txt", r3, sizeof r3}};
    make_archive("a/trunc.tar.gz", TAR, GZIP, three, 3);
    struct stat st;
    CHECK(stat(at("a/trunc.tar.gz"), &st) == 0);
    CHECK(truncate(at("a/trunc.tar.gz"), st.st_size / 2) == 0);

    /* A zip whose stored entry has one byte changed: bad CRC. */
    const struct entry crc[] = {{"ok.txt", "Fine document", 0}, {"flip.txt", "Flipped text", 0},
                                {"after.txt", "After the bad one", 0}};
    make_archive("a/crc.zip", ZIP, NONE, crc, 3);
    {
        strbuf sb = STRBUF_INIT;
        CHECK(sb_read_file(&sb, at("a/crc.zip")) == 0);
        char *p = memmem(sb.buf, sb.len, "Flipped", 7);
        CHECK(p != NULL);
        if (p)
            *p = 'G';
        write_file("a/crc.zip", sb.buf, sb.len);
        sb_release(&sb);
    }

    /* An archive bomb: a 64 MiB entry that compresses to almost nothing. */
    size_t bomb_n = (size_t)64 << 20;
    char *bomb = malloc(bomb_n);
    memset(bomb, 'a', bomb_n);
    const struct entry bombs[] = {{"bomb.txt", bomb, bomb_n}, {"after.txt", "Survived", 0}};
    make_archive("a/bomb.tar.gz", TAR, GZIP, bombs, 2);
    /* A compressed single file whose size is known only by reading it. */
    make_gzip("a/big.txt.gz", bomb, (size_t)9 << 20);
    free(bomb);
    write_str("a/junk.tar.gz", "this is not an archive at all\n");
    write_str("a/next.txt", "Next input");

    job j;
    recs rs;
    errbuf err;
    int rc = run_job("a/job",
                     "model: m\n"
                     "inputs:\n"
                     "  - {path: good.tar.gz, max_doc_bytes: 64KiB}\n"
                     "  - {path: good.zip, max_doc_bytes: 64KiB}\n"
                     "  - trunc.tar.gz\n"
                     "  - {path: crc.zip, format: archive}\n"
                     "  - bomb.tar.gz\n"
                     "  - big.txt.gz\n"
                     "  - junk.tar.gz\n"
                     "  - next.txt\n"
                     "prompt: {user: 'Summarize {{text}}'}\n",
                     &j, &rs, &err);
    CHECK_MSG(rc == 0, "rc %d: %s", rc, err.msg);
    const char *archives[] = {"good.tar.gz", "good.zip"};
    for (int k = 0; k < 2; k++) {
        char src[128];
#define SRC(name) (snprintf(src, sizeof src, "%s!%s", archives[k], name), src)
        CHECK_GOOD(&rs, SRC("a.txt"), "Alpha text");
        const rec *r = find(&rs, src);
        CHECK(r && !strcmp(r->id, sha_hex("Alpha text", 10)) && r->kind == INGEST_TEXT);
        CHECK_GOOD(&rs, SRC("sub/b.md"), "# Bee\n");
        CHECK(find(&rs, SRC("c.bin")) == NULL);
        CHECK(find(&rs, SRC(".hidden.txt")) == NULL);
        CHECK(find(&rs, SRC("__MACOSX/._a.txt")) == NULL);
        CHECK(find(&rs, SRC("link.txt")) == NULL);
        char want[256];
        snprintf(want, sizeof want, "%s!empty.txt: empty document", archives[k]);
        CHECK_FAILED(&rs, SRC("empty.txt"), want);
        snprintf(want, sizeof want, "%s!bad.txt: invalid UTF-8 at byte 0", archives[k]);
        CHECK_FAILED(&rs, SRC("bad.txt"), want);
        snprintf(want, sizeof want, "%s!nul.txt: NUL byte at byte 1 (a binary file?)",
                 archives[k]);
        CHECK_FAILED(&rs, SRC("nul.txt"), want);
        snprintf(want, sizeof want, "%s!big.txt: larger than max_doc_bytes (204800 > 65536 bytes)",
                 archives[k]);
        CHECK_FAILED(&rs, SRC("big.txt"), want);
        CHECK_GOOD(&rs, SRC("z.txt"), "Last");
#undef SRC
    }
    /* Archive order within the archive. */
    CHECK(rs.n > 7 && !strcmp(rs.r[0].source, "good.tar.gz!a.txt") &&
          !strcmp(rs.r[6].source, "good.tar.gz!z.txt") &&
          !strcmp(rs.r[7].source, "good.zip!a.txt"));

    /* Truncated: the first entry survives, then one failure, then the run goes on. */
    CHECK_GOOD_N(&rs, "trunc.tar.gz!t1.txt", r1, sizeof r1);
    int n_trunc_failed = 0;
    for (int i = 0; i < rs.n; i++)
        if (!strncmp(rs.r[i].source, "trunc.tar.gz", 12)) {
            if (rs.r[i].error) {
                n_trunc_failed++;
                CHECK_MSG(!strcmp(rs.r[i].source, "trunc.tar.gz!t2.txt") &&
                              strstr(rs.r[i].error, "trunc.tar.gz!t2.txt: corrupt entry: "),
                          "%s", rs.r[i].error);
            }
        }
    CHECK_INT_EQ(n_trunc_failed, 1);
    CHECK(find(&rs, "trunc.tar.gz!t3.txt") == NULL);

    CHECK_GOOD(&rs, "crc.zip!ok.txt", "Fine document");
    CHECK_FAILED(&rs, "crc.zip!flip.txt", "crc.zip!flip.txt: corrupt entry: *");
    CHECK_GOOD(&rs, "crc.zip!after.txt", "After the bad one");

    CHECK_FAILED(&rs, "bomb.tar.gz!bomb.txt",
                 "bomb.tar.gz!bomb.txt: larger than max_doc_bytes (67108864 > 8388608 bytes)");
    CHECK_GOOD(&rs, "bomb.tar.gz!after.txt", "Survived");
    CHECK_FAILED(&rs, "big.txt.gz", "big.txt.gz: larger than max_doc_bytes (8388608 bytes)");
    CHECK_FAILED(&rs, "junk.tar.gz", "junk.tar.gz: cannot open the archive: Unrecognized archive format");
    CHECK_GOOD(&rs, "next.txt", "Next input");
    recs_free(&rs);
    job_free(&j);

    /* Every format and compression gives the same documents. */
    for (int i = 0; i < 6; i++) {
        if (!made[i])
            continue;
        char yaml[256];
        snprintf(yaml, sizeof yaml, "model: m\ninputs: [%s]\nprompt: {user: '{{text}}'}\n",
                 names[i] + 2);
        rc = run_job("a/each", yaml, &j, &rs, &err);
        CHECK_MSG(rc == 0 && rs.n == 2, "%s: rc %d, %d documents", names[i], rc, rs.n);
        if (rs.n == 2) {
            char src[128];
            snprintf(src, sizeof src, "%s!a.txt", names[i] + 2);
            CHECK_GOOD(&rs, src, "Alpha text");
            snprintf(src, sizeof src, "%s!sub/b.md", names[i] + 2);
            CHECK_GOOD(&rs, src, "# Bee\n");
            CHECK_STR_EQ(rs.r[0].id, sha_hex("Alpha text", 10));
        } else {
            print_recs(&rs);
        }
        recs_free(&rs);
        job_free(&j);
    }

    /* Include patterns reach into archive folders (no FNM_PATHNAME). */
    rc = run_job("a/inc",
                 "model: m\ninputs: [{path: good.tar.gz, include: ['sub/*', '*.bin']}]\n"
                 "prompt: {user: '{{text}}'}\n",
                 &j, &rs, &err);
    CHECK(rc == 0 && rs.n == 2);
    CHECK_GOOD(&rs, "good.tar.gz!sub/b.md", "# Bee\n");
    CHECK_FAILED(&rs, "good.tar.gz!c.bin", "good.tar.gz!c.bin: NUL byte at byte 0*");
    recs_free(&rs);
    job_free(&j);
}

static void test_folders(void)
{
    write_str("f/docs/a.txt", "Alpha");
    write_str("f/docs/b.md", "Bravo");
    write_str("f/docs/bad.txt", "\xc3\x28");
    char big[2000];
    memset(big, 'b', sizeof big);
    write_file("f/docs/big.txt", big, sizeof big);
    write_str("f/docs/bom.txt", "\xef\xbb\xbf" "Bom");
    write_str("f/docs/empty.txt", "");
    write_str("f/docs/notes.bin", "binary");
    write_file("f/docs/nul.txt", "x\0y", 3);
    write_str("f/docs/sub/c.txt", "Charlie");
    write_str("f/docs/sub/deeper/d.txt", "Delta\r\nline two\r\n");
    write_str("f/docs/.hidden.txt", "hidden");
    write_str("f/docs/.git/x.txt", "git");
    CHECK(symlink("sub", at("f/docs/link-dir")) == 0);
    CHECK(symlink("a.txt", at("f/docs/link.txt")) == 0);
    CHECK(symlink("missing.txt", at("f/docs/dangling.txt")) == 0);
    CHECK(mkfifo(at("f/docs/fifo.txt"), 0644) == 0);
    int as_root = geteuid() == 0;
    if (!as_root) {
        write_str("f/docs/unreadable.txt", "secret");
        chmod(at("f/docs/unreadable.txt"), 0);
    }
    CHECK(mkfifo(at("f/pipe.txt"), 0644) == 0);
    write_str("f/single.md", "A single file.");
    make_gzip("f/note.txt.gz", "Gzipped note", 12);
    make_gzip("f/c.jsonl.gz", "{\"text\":\"one\"}\n{\"text\":\"two\"}\n", 30);
    write_str("f/parts/p2.jsonl", "{\"text\":\"P2\"}\n");
    write_str("f/parts/p1.jsonl", "{\"text\":\"P1\"}\n");
    write_str("f/parts/p10.jsonl", "{\"text\":\"P10\"}\n");
    write_str("f/parts/skip.txt", "not matched by the glob");

    job j;
    recs rs;
    errbuf err;
    const char *yaml = "model: m\n"
                       "inputs:\n"
                       "  - {path: docs, max_doc_bytes: 1KiB}\n"
                       "  - single.md\n"
                       "  - note.txt.gz\n"
                       "  - c.jsonl.gz\n"
                       "  - parts/p*.jsonl\n"
                       "  - pipe.txt\n"
                       "prompt: {user: '{{text}}'}\n";
    int rc = run_job("f/job", yaml, &j, &rs, &err);
    CHECK_MSG(rc == 0, "rc %d: %s", rc, err.msg);
    const char *order[] = {"docs/a.txt",     "docs/b.md",         "docs/bad.txt",
                           "docs/big.txt",   "docs/bom.txt",      "docs/empty.txt",
                           "docs/link.txt",  "docs/nul.txt",      "docs/sub/c.txt",
                           "docs/sub/deeper/d.txt", "docs/unreadable.txt", "single.md",
                           "note.txt.gz",    "c.jsonl.gz:1",      "c.jsonl.gz:2",
                           "parts/p1.jsonl:1", "parts/p10.jsonl:1", "parts/p2.jsonl:1",
                           "pipe.txt"};
    int n_order = (int)(sizeof order / sizeof order[0]);
    int k = 0, same = 1;
    for (int i = 0; i < n_order; i++) {
        if (as_root && !strcmp(order[i], "docs/unreadable.txt"))
            continue;
        same &= k < rs.n && !strcmp(rs.r[k].source, order[i]);
        k++;
    }
    CHECK_MSG(same && k == rs.n, "order differs (%d documents)", rs.n);
    if (!same || k != rs.n)
        print_recs(&rs);
    CHECK_GOOD(&rs, "docs/a.txt", "Alpha");
    CHECK_GOOD(&rs, "docs/b.md", "Bravo");
    CHECK_FAILED(&rs, "docs/bad.txt", "docs/bad.txt: invalid UTF-8 at byte 0");
    CHECK_FAILED(&rs, "docs/big.txt", "docs/big.txt: larger than max_doc_bytes (2000 > 1024 bytes)");
    CHECK_GOOD(&rs, "docs/bom.txt", "Bom");
    CHECK_FAILED(&rs, "docs/empty.txt", "docs/empty.txt: empty document");
    CHECK_GOOD(&rs, "docs/link.txt", "Alpha");
    CHECK_FAILED(&rs, "docs/nul.txt", "docs/nul.txt: NUL byte at byte 1 (a binary file?)");
    CHECK_GOOD(&rs, "docs/sub/c.txt", "Charlie");
    CHECK_GOOD(&rs, "docs/sub/deeper/d.txt", "Delta\r\nline two\r\n");
    if (!as_root)
        CHECK_FAILED(&rs, "docs/unreadable.txt", "docs/unreadable.txt: cannot read: Permission "
                                                 "denied");
    CHECK_GOOD(&rs, "single.md", "A single file.");
    const rec *r = find(&rs, "single.md");
    CHECK(r && !strcmp(r->id, sha_hex("A single file.", 14)) && r->input == 1);
    CHECK_GOOD(&rs, "note.txt.gz", "Gzipped note");
    CHECK_GOOD(&rs, "c.jsonl.gz:2", "two");
    CHECK_GOOD(&rs, "parts/p10.jsonl:1", "P10");
    CHECK_FAILED(&rs, "pipe.txt", "pipe.txt: not a regular file");

    /* The same job again: the same documents in the same order. */
    recs again;
    job j2;
    CHECK(run_job("f/job", yaml, &j2, &again, &err) == 0);
    int identical = again.n == rs.n;
    for (int i = 0; identical && i < rs.n; i++)
        identical = !strcmp(rs.r[i].source, again.r[i].source) &&
                    !strcmp(rs.r[i].id, again.r[i].id) && !strcmp(rs.r[i].key, again.r[i].key) &&
                    !rs.r[i].error == !again.r[i].error;
    CHECK(identical);
    recs_free(&again);
    /* Another configuration hash: every key changes. */
    memset(&again, 0, sizeof again);
    again.j = &j2;
    again.config_hash = "other";
    CHECK(job_load(&j2, at("f/job.yaml"), &err) == 0);
    CHECK(ingest_run(&j2, collect, &again, &err) == 0);
    int all_differ = again.n == rs.n;
    for (int i = 0; all_differ && i < rs.n; i++)
        all_differ = strcmp(rs.r[i].key, again.r[i].key) != 0;
    CHECK(all_differ);
    job_free(&j2);
    recs_free(&again);
    job_free(&j2);
    recs_free(&rs);
    job_free(&j);

    /* Include patterns match the path below the folder. */
    rc = run_job("f/inc", "model: m\ninputs: [{path: docs/, include: ['sub/*']}]\n"
                          "prompt: {user: '{{text}}'}\n",
                 &j, &rs, &err);
    CHECK(rc == 0 && rs.n == 2);
    CHECK(rs.n == 2 && !strcmp(rs.r[0].source, "docs/sub/c.txt") &&
          !strcmp(rs.r[1].source, "docs/sub/deeper/d.txt"));
    recs_free(&rs);
    job_free(&j);

    /* A folder holding the job's own outputs never reads them back, and
     * JSONL files and archives in a folder are read as such. */
    write_str("f/out/o.jsonl", "{\"text\":\"an old output\"}\n");
    write_str("f/out/o.ledger.sqlite-wal", "wal");
    write_str("f/out/keep.txt", "Keep me");
    write_str("f/out/more.jsonl", "{\"text\":\"More\"}\n");
    const struct entry one[] = {{"in.txt", "Inside", 0}};
    make_archive("f/out/pack.tar", TAR, NONE, one, 1);
    rc = run_job("f/outjob",
                 "model: m\ninputs: [{path: out, include: ['*']}]\n"
                 "prompt: {user: '{{text}}'}\n"
                 "output: {ledger: out/o.ledger.sqlite, jsonl: out/o.jsonl}\n",
                 &j, &rs, &err);
    CHECK(rc == 0 && rs.n == 3);
    if (rs.n != 3)
        print_recs(&rs);
    CHECK_GOOD(&rs, "out/keep.txt", "Keep me");
    CHECK_GOOD(&rs, "out/more.jsonl:1", "More");
    CHECK_GOOD(&rs, "out/pack.tar!in.txt", "Inside");
    recs_free(&rs);
    job_free(&j);

    /* The callback can stop ingest; its value comes back. */
    memset(&rs, 0, sizeof rs);
    CHECK(job_load(&j, at("f/job.yaml"), &err) == 0);
    rs.j = &j;
    rs.stop_after = 2;
    CHECK_INT_EQ(ingest_run(&j, collect, &rs, &err), 7);
    CHECK_INT_EQ(rs.n, 2);
    recs_free(&rs);
    job_free(&j);
    if (!as_root)
        chmod(at("f/docs/unreadable.txt"), 0644);
}

static void test_config_errors(void)
{
    write_str("c/here.txt", "Here");
    struct {
        const char *inputs, *want;
    } cases[] = {
        {"[here.txt, nope.txt]",
         "%s/c/job.yaml:2:20: inputs[1]: 'nope.txt' (%s/c/nope.txt): No such file or directory"},
        {"\n  - here.txt\n  - zzz/*.txt",
         "%s/c/job.yaml:4:5: inputs[1]: 'zzz/*.txt' matches no files"},
        {"[{path: here.txt, format: folder}]",
         "%s/c/job.yaml:2:17: inputs[0]: 'here.txt' is not a folder (format: folder)"},
        {"[{path: ., format: jsonl}]",
         "%s/c/job.yaml:2:17: inputs[0]: '.' is a folder, but format is jsonl"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char yaml[256], want[512];
        snprintf(yaml, sizeof yaml, "model: m\ninputs: %s\nprompt: {user: '{{text}}'}\n",
                 cases[i].inputs);
        snprintf(want, sizeof want, cases[i].want, tmp, tmp);
        job j;
        recs rs;
        errbuf err;
        int rc = run_job("c/job", yaml, &j, &rs, &err);
        CHECK_INT_EQ(rc, -1);
        CHECK_INT_EQ(rs.n, 0); /* nothing read before the error */
        CHECK_STR_EQ(err.msg, want);
        recs_free(&rs);
        job_free(&j);
    }
}

/* The job files shipped in jobs/ and examples/ load, and the demo job's
 * inputs all come through as good documents. */
static void test_shipped(void)
{
    const char *top = getenv("top_srcdir");
    if (!top) {
        fprintf(stderr, "top_srcdir not set: shipped jobs not checked\n");
        return;
    }
    char path[1024];
    job j;
    errbuf err;
    snprintf(path, sizeof path, "%s/jobs/summarize.yaml", top);
    CHECK_MSG(job_load(&j, path, &err) == 0, "%s", err.msg);
    CHECK(j.mode == JOB_NON_THINKING && j.backend == ENG_BACKEND_CUDA);
    CHECK(j.gpu_memory == (size_t)22 << 30 && j.kv_cache == ENG_KV_INT8 && j.n_inputs == 3);
    CHECK(j.sampling.temperature == 0.7 && j.sampling.top_p == 0.8 && j.max_run_time == 21600);
    job_free(&j);
    snprintf(path, sizeof path, "%s/jobs/translate.yaml", top);
    CHECK_MSG(job_load(&j, path, &err) == 0, "%s", err.msg);
    CHECK(j.mode == JOB_THINKING && j.thinking_budget == 1024 && j.too_long == JOB_TOO_LONG_FAIL);
    CHECK(j.sampling.temperature == 0.6 && j.sampling.top_p == 0.95 && j.backend == ENG_BACKEND_CUDA);
    job_free(&j);

    snprintf(path, sizeof path, "%s/examples/demo.yaml", top);
    CHECK_MSG(job_load(&j, path, &err) == 0, "%s", err.msg);
    recs rs = {.j = &j};
    CHECK_MSG(ingest_run(&j, collect, &rs, &err) == 0, "%s", err.msg);
    const char *want[] = {"docs/history/printing-press.md", "docs/meeting-notes.txt",
                          "docs/sourdough.md", "docs/tides.txt", "docs.jsonl:1",
                          "docs.jsonl:2", "docs.jsonl:3", "docs.jsonl:4"};
    CHECK_INT_EQ(rs.n, 8);
    for (int i = 0; i < rs.n && i < 8; i++) {
        CHECK_STR_EQ(rs.r[i].source, want[i]);
        CHECK_MSG(!rs.r[i].error, "%s", rs.r[i].error);
        const char *prefix = "[{\"role\":\"system\",\"content\":\"You are a concise "
                             "assistant.\"},{\"role\":\"user\",\"content\":\"Summarize in one "
                             "sentence:\\n\\n";
        CHECK_MSG(rs.r[i].rendered && !strncmp(rs.r[i].rendered, prefix, strlen(prefix)), "%s",
                  rs.r[i].rendered);
    }
    CHECK(rs.n == 8 && !strcmp(rs.r[4].id, "faq-001"));
    recs_free(&rs);
    job_free(&j);
}

int main(void)
{
    snprintf(tmp, sizeof tmp, "/tmp/test_ingest.XXXXXX");
    if (!mkdtemp(tmp)) {
        perror("mkdtemp");
        return 1;
    }
    test_utf8();
    test_jsonl();
    test_openai_batch();
    test_archives();
    test_folders();
    test_config_errors();
    test_shipped();
    return check_exit_clean("test_ingest", tmp);
}
