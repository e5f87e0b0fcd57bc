/*
 * test_tok_ref.c - our tokenizer and chat template against Hugging Face.
 *
 * tests/fixtures/ref/tokenizer.jsonl and chat.jsonl were written by
 * tests/gen_tokenizer_ref.py with HF tokenizers/transformers on the real
 * Qwen3 tokenizer (vendored in data/). Every line must match exactly: the
 * ids of each text, the text of those ids, the rendered chat prompt byte
 * for byte and its ids. The tokenizer files are extracted from the binary's
 * embedded copy, the same copy make-demo-model writes.
 */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "chat.h"
#include "check.h"
#include "tok.h"
#include "tokdata.h"

static int ids_equal(const int32_t *ids, size_t n, json_t *want)
{
    if (json_array_size(want) != n)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (json_integer_value(json_array_get(want, i)) != ids[i])
            return 0;
    return 1;
}

static json_t *load_lines(const char *path)
{
    FILE *f = fopen(path, "r");
    json_t *all = json_array();
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while (f && (n = getline(&line, &cap, f)) > 0) {
        json_error_t je;
        json_t *v = json_loadb(line, (size_t)n, 0, &je);
        CHECK_MSG(v != NULL, "%s:%d: %s", path, je.line, je.text);
        if (v)
            json_array_append_new(all, v);
    }
    free(line);
    if (f)
        fclose(f);
    CHECK_MSG(f != NULL, "cannot open %s", path);
    return all;
}

int main(void)
{
    const char *srcdir = getenv("top_srcdir") ? getenv("top_srcdir") : ".";
    char dir[] = "/tmp/q3tokXXXXXX", path[4096];
    errbuf err = {{0}};
    CHECK(mkdtemp(dir) != NULL);
    CHECK_MSG(tokdata_extract(dir, &err) == 0, "%s", err.msg);
    tok *t = NULL;
    CHECK_MSG(tok_open(&t, dir, &err) == 0, "%s", err.msg);
    if (!t)
        return check_exit("test_tok_ref");
    CHECK_INT_EQ(tok_vocab_size(t), 151669);
    CHECK_INT_EQ(tok_token_id(t, "<|im_end|>"), 151645);
    CHECK_INT_EQ(tok_token_id(t, "</think>"), 151668);

    snprintf(path, sizeof path, "%s/tests/fixtures/ref/tokenizer.jsonl", srcdir);
    json_t *cases = load_lines(path);
    CHECK(json_array_size(cases) >= 300);
    size_t i, bad = 0;
    json_t *c;
    json_array_foreach(cases, i, c)
    {
        const char *text = json_string_value(json_object_get(c, "text"));
        size_t len = json_string_length(json_object_get(c, "text"));
        int32_t *ids;
        size_t n;
        int rc = tok_encode(t, text, len, &ids, &n, &err);
        CHECK_MSG(rc == 0, "case %zu: %s", i, err.msg);
        if (rc)
            continue;
        if (!ids_equal(ids, n, json_object_get(c, "ids")) && bad++ < 5) {
            char *want = json_dumps(json_object_get(c, "ids"), JSON_COMPACT);
            fprintf(stderr, "case %zu: ids differ for %s\n  want %s\n  got ", i,
                    json_dumps(json_object_get(c, "text"), JSON_ENCODE_ANY), want);
            for (size_t k = 0; k < n; k++)
                fprintf(stderr, "%d,", ids[k]);
            fputc('\n', stderr);
            free(want);
        }
        strbuf dec = STRBUF_INIT;
        CHECK(tok_decode(t, ids, n, &dec, &err) == 0);
        const char *want_dec = json_string_value(json_object_get(c, "decoded"));
        CHECK_MSG(dec.len == json_string_length(json_object_get(c, "decoded")) &&
                      !memcmp(dec.buf ? dec.buf : "", want_dec, dec.len),
                  "case %zu: decode differs", i);
        sb_release(&dec);
        free(ids);
    }
    CHECK_MSG(bad == 0, "%zu of %zu texts tokenized differently", bad, json_array_size(cases));
    json_decref(cases);

    snprintf(path, sizeof path, "%s/tests/fixtures/ref/chat.jsonl", srcdir);
    cases = load_lines(path);
    CHECK(json_array_size(cases) >= 10);
    json_array_foreach(cases, i, c)
    {
        json_t *msgs = json_object_get(c, "messages");
        chat_msg m[16];
        size_t k;
        json_t *mj;
        json_array_foreach(msgs, k, mj)
        {
            m[k].role = json_string_value(json_object_get(mj, "role"));
            m[k].content = json_string_value(json_object_get(mj, "content"));
        }
        strbuf out = STRBUF_INIT;
        CHECK(chat_render(&out, m, (int)json_array_size(msgs), 1,
                          json_is_true(json_object_get(c, "enable_thinking")), &err) == 0);
        const char *want = json_string_value(json_object_get(c, "text"));
        CHECK_MSG(out.buf && !strcmp(out.buf, want), "chat case %zu:\n got:  %s\n want: %s", i,
                  out.buf, want);
        int32_t *ids;
        size_t n;
        CHECK(tok_encode(t, out.buf, out.len, &ids, &n, &err) == 0);
        CHECK_MSG(ids_equal(ids, n, json_object_get(c, "ids")), "chat case %zu: ids differ", i);
        free(ids);
        sb_release(&out);
    }
    json_decref(cases);

    /* Errors: invalid UTF-8 names the offset; a missing file names it. */
    int32_t *ids;
    size_t n;
    CHECK(tok_encode(t, "ab\xff", 3, &ids, &n, &err) < 0);
    CHECK_MSG(strstr(err.msg, "offset 2") != NULL, "%s", err.msg);
    tok *t2;
    CHECK(tok_open(&t2, "/nonexistent-dir", &err) < 0);
    CHECK_MSG(strstr(err.msg, "/nonexistent-dir: no such folder") != NULL, "%s", err.msg);
    tok_close(t);
    snprintf(path, sizeof path, "rm -rf %s", dir);
    CHECK(system(path) == 0);
    return check_exit("test_tok_ref");
}
