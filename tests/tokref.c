/*
 * tokref.c - checks tok and chat against the Hugging Face reference data
 * (tests/fixtures/ref, written by tests/gen_tokenizer_ref.py), line by line;
 * driven by tests/tokenizer.sh.
 *
 *   tokref check TOKDIR REFDIR    every tokenizer.jsonl line: encode(text) ==
 *                                 ids, decode(ids) == decoded; every chat.jsonl
 *                                 line: render == text, encode(render) == ids;
 *                                 then all texts again from 4 threads at once
 *   tokref field FILE N NAME      prints field NAME of line N (0-based): a
 *                                 string raw, anything else as compact JSON
 *   tokref jsoneq A B             exit 0 when files A and B hold equal JSON
 */
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat.h"
#include "check.h"
#include "tok.h"

typedef struct ref_text {
    char *text;
    size_t len;
    int32_t *ids;
    size_t n_ids;
} ref_text;

static int32_t *json_ids(json_t *arr, size_t *n)
{
    *n = json_array_size(arr);
    int32_t *ids = malloc((*n + 1) * sizeof *ids);
    for (size_t i = 0; i < *n; i++)
        ids[i] = (int32_t)json_integer_value(json_array_get(arr, i));
    return ids;
}

/* Index of the first difference, for a readable failure. */
static size_t first_diff(const int32_t *a, size_t na, const int32_t *b, size_t nb)
{
    size_t i = 0;
    while (i < na && i < nb && a[i] == b[i])
        i++;
    return i;
}

static int same_ids(const int32_t *a, size_t na, const int32_t *b, size_t nb)
{
    return na == nb && (na == 0 || !memcmp(a, b, na * sizeof *a));
}

static json_t **read_jsonl(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "%s: cannot open\n", path);
        exit(1);
    }
    json_t **lines = NULL;
    *n = 0;
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    while ((len = getline(&line, &cap, f)) > 0) {
        json_error_t jerr;
        json_t *j = json_loadb(line, (size_t)len, 0, &jerr);
        if (!j) {
            fprintf(stderr, "%s:%zu: %s\n", path, *n + 1, jerr.text);
            exit(1);
        }
        lines = realloc(lines, (*n + 1) * sizeof *lines);
        lines[(*n)++] = j;
    }
    free(line);
    fclose(f);
    return lines;
}

typedef struct worker {
    const tok *t;
    const ref_text *refs;
    size_t n_refs, start;
    int failures;
} worker;

static void *work(void *arg)
{
    worker *w = arg;
    for (size_t k = 0; k < w->n_refs; k++) {
        const ref_text *r = &w->refs[(w->start + k * 7) % w->n_refs];
        int32_t *ids;
        size_t n;
        errbuf err;
        if (tok_encode(w->t, r->text, r->len, &ids, &n, &err) || !same_ids(ids, n, r->ids, r->n_ids))
            w->failures++;
        free(ids);
    }
    return NULL;
}

static int check_all(const char *tokdir, const char *refdir)
{
    tok *t;
    errbuf err;
    if (tok_open(&t, tokdir, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.jsonl", refdir);
    size_t n_lines;
    json_t **lines = read_jsonl(path, &n_lines);
    CHECK_MSG(n_lines >= 300, "only %zu reference texts", n_lines);
    ref_text *refs = calloc(n_lines, sizeof *refs);
    for (size_t i = 0; i < n_lines; i++) {
        json_t *text = json_object_get(lines[i], "text");
        ref_text *r = &refs[i];
        r->len = json_string_length(text);
        r->text = malloc(r->len + 1);
        memcpy(r->text, json_string_value(text), r->len + 1);
        r->ids = json_ids(json_object_get(lines[i], "ids"), &r->n_ids);
        int32_t *ids;
        size_t n;
        if (tok_encode(t, r->text, r->len, &ids, &n, &err)) {
            CHECK_MSG(0, "tokenizer.jsonl line %zu: %s", i + 1, err.msg);
            continue;
        }
        size_t d = first_diff(ids, n, r->ids, r->n_ids);
        CHECK_MSG(same_ids(ids, n, r->ids, r->n_ids),
                  "tokenizer.jsonl line %zu: %zu ids, expected %zu; first difference at %zu: %d "
                  "vs %d", i + 1, n, r->n_ids, d, d < n ? ids[d] : -1,
                  d < r->n_ids ? r->ids[d] : -1);
        free(ids);
        strbuf dec = STRBUF_INIT;
        json_t *want = json_object_get(lines[i], "decoded");
        CHECK(tok_decode(t, r->ids, r->n_ids, &dec, &err) == 0);
        CHECK_MSG(dec.len == json_string_length(want) &&
                      !memcmp(dec.buf, json_string_value(want), dec.len),
                  "tokenizer.jsonl line %zu: decode differs", i + 1);
        sb_release(&dec);
    }

    /* Concurrency: four threads encode every text at once, in different
     * orders, so their word caches fill differently. */
    worker w[4];
    pthread_t th[4];
    for (int k = 0; k < 4; k++) {
        w[k] = (worker){t, refs, n_lines, (size_t)k * 37, 0};
        pthread_create(&th[k], NULL, work, &w[k]);
    }
    for (int k = 0; k < 4; k++) {
        pthread_join(th[k], NULL);
        CHECK_MSG(w[k].failures == 0, "thread %d: %d texts encoded wrongly", k, w[k].failures);
    }

    snprintf(path, sizeof path, "%s/chat.jsonl", refdir);
    size_t n_chats;
    json_t **chats = read_jsonl(path, &n_chats);
    CHECK_MSG(n_chats >= 10, "only %zu reference chats", n_chats);
    for (size_t i = 0; i < n_chats; i++) {
        json_t *msgs = json_object_get(chats[i], "messages");
        size_t n_msgs = json_array_size(msgs);
        chat_msg *m = calloc(n_msgs + 1, sizeof *m);
        for (size_t k = 0; k < n_msgs; k++) {
            json_t *o = json_array_get(msgs, k);
            m[k].role = json_string_value(json_object_get(o, "role"));
            m[k].content = json_string_value(json_object_get(o, "content"));
        }
        strbuf out = STRBUF_INIT;
        int think = json_is_true(json_object_get(chats[i], "enable_thinking"));
        int gen = json_is_true(json_object_get(chats[i], "add_generation_prompt"));
        CHECK(chat_render(&out, m, (int)n_msgs, gen, think, &err) == 0);
        json_t *want = json_object_get(chats[i], "text");
        CHECK_MSG(out.len == json_string_length(want) && !memcmp(out.buf, json_string_value(want), out.len),
                  "chat.jsonl line %zu: rendered\n%s\nexpected\n%s", i + 1, out.buf,
                  json_string_value(want));
        size_t n_want, n;
        int32_t *want_ids = json_ids(json_object_get(chats[i], "ids"), &n_want), *ids = NULL;
        CHECK(tok_encode(t, out.buf, out.len, &ids, &n, &err) == 0);
        CHECK_MSG(same_ids(ids, n, want_ids, n_want), "chat.jsonl line %zu: ids differ", i + 1);
        free(ids);
        free(want_ids);
        free(m);
        sb_release(&out);
        json_decref(chats[i]);
    }
    free(chats);
    for (size_t i = 0; i < n_lines; i++) {
        free(refs[i].text);
        free(refs[i].ids);
        json_decref(lines[i]);
    }
    free(refs);
    free(lines);
    tok_close(t);
    return check_exit("tokref");
}

static int print_field(const char *path, long line_no, const char *name)
{
    size_t n;
    json_t **lines = read_jsonl(path, &n);
    if (line_no < 0 || (size_t)line_no >= n) {
        fprintf(stderr, "%s: no line %ld\n", path, line_no);
        return 1;
    }
    json_t *v = json_object_get(lines[line_no], name);
    if (!v) {
        fprintf(stderr, "%s: line %ld has no field %s\n", path, line_no, name);
        return 1;
    }
    if (json_is_string(v)) {
        fwrite(json_string_value(v), 1, json_string_length(v), stdout);
    } else {
        char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        fputs(s, stdout);
        free(s);
    }
    return 0;
}

static int json_files_equal(const char *a, const char *b)
{
    json_error_t jerr;
    json_t *ja = json_load_file(a, JSON_DECODE_ANY, &jerr);
    json_t *jb = ja ? json_load_file(b, JSON_DECODE_ANY, &jerr) : NULL;
    if (!ja || !jb) {
        fprintf(stderr, "%s\n", jerr.text);
        return 1;
    }
    return json_equal(ja, jb) ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc == 4 && !strcmp(argv[1], "check"))
        return check_all(argv[2], argv[3]);
    if (argc == 5 && !strcmp(argv[1], "field"))
        return print_field(argv[2], atol(argv[3]), argv[4]);
    if (argc == 4 && !strcmp(argv[1], "jsoneq"))
        return json_files_equal(argv[2], argv[3]);
    fprintf(stderr, "usage: tokref check TOKDIR REFDIR | field FILE N NAME | jsoneq A B\n");
    return 2;
}
