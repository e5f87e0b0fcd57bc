/*
 * cmd_tokenize.c - `tokenize`, `detokenize` and `render`: the tokenizer and
 * the chat template on stdin/stdout, for checking them against HF and for
 * scripts.
 */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "chat.h"
#include "cli.h"
#include "tok.h"

static int read_stdin(strbuf *sb)
{
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, stdin)) > 0)
        sb_add(sb, buf, n);
    return ferror(stdin) ? -1 : 0;
}

/* Common options: --tokenizer DIR (required), --no-thinking, --stats. */
static int parse(const char *name, int argc, char **argv, const char **dir, int *flag,
                 const char *help)
{
    static const struct option opts[] = {{"tokenizer", required_argument, 0, 't'},
                                         {"no-thinking", no_argument, 0, 'n'},
                                         {"stats", no_argument, 0, 's'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 't': *dir = optarg; break;
        case 'n':
        case 's': *flag = 1; break;
        case 'h': fputs(help, stdout); return 1;
        default: return -1;
        }
    }
    if (!*dir) {
        cli_fail(name, EXIT_USAGE, "--tokenizer DIR is required (a folder with tokenizer.json)");
        return -1;
    }
    return 0;
}

int cmd_tokenize(int argc, char **argv)
{
    const char *dir = NULL;
    int stats = 0;
    int p = parse("tokenize", argc, argv, &dir, &stats,
                  "usage: qwen3-batch tokenize --tokenizer DIR [--stats]\n\n"
                  "Reads UTF-8 text on stdin and prints its token ids as a JSON array.\n"
                  "--stats: input size, token count and encode speed (MB/s) on stderr.\n");
    if (p)
        return p > 0 ? EXIT_OK : EXIT_USAGE;
    errbuf err = {{0}};
    tok *t;
    if (tok_open(&t, dir, &err))
        return cli_fail("tokenize", EXIT_FAILURE_, "%s", err.msg);
    strbuf in = STRBUF_INIT;
    if (read_stdin(&in)) {
        tok_close(t);
        return cli_fail("tokenize", EXIT_FAILURE_, "reading stdin failed");
    }
    int32_t *ids;
    size_t n;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    int rc = tok_encode(t, in.buf ? in.buf : "", in.len, &ids, &n, &err);
    clock_gettime(CLOCK_MONOTONIC, &b);
    if (rc) {
        sb_release(&in);
        tok_close(t);
        return cli_fail("tokenize", EXIT_FAILURE_, "stdin: %s", err.msg);
    }
    double secs = (double)(b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) * 1e-9;
    strbuf out = STRBUF_INIT;
    sb_addc(&out, '[');
    for (size_t i = 0; i < n; i++)
        sb_addf(&out, i ? ", %d" : "%d", ids[i]);
    sb_adds(&out, "]\n");
    fwrite(out.buf, 1, out.len, stdout);
    if (stats)
        fprintf(stderr, "{\"bytes\": %zu, \"tokens\": %zu, \"seconds\": %.4f, \"mb_per_s\": %.2f}\n",
                in.len, n, secs, secs > 0 ? in.len / 1e6 / secs : 0);
    sb_release(&out);
    sb_release(&in);
    free(ids);
    tok_close(t);
    return EXIT_OK;
}

int cmd_detokenize(int argc, char **argv)
{
    const char *dir = NULL;
    int unused = 0;
    int p = parse("detokenize", argc, argv, &dir, &unused,
                  "usage: qwen3-batch detokenize --tokenizer DIR\n\n"
                  "Reads a JSON array of token ids on stdin and prints their text.\n");
    if (p)
        return p > 0 ? EXIT_OK : EXIT_USAGE;
    errbuf err = {{0}};
    json_error_t je;
    json_t *arr = json_loadf(stdin, 0, &je);
    if (!json_is_array(arr)) {
        json_decref(arr);
        return cli_fail("detokenize", EXIT_USAGE, "stdin:%d:%d: expected a JSON array of ids%s%s",
                        je.line, je.column, arr ? "" : ": ", arr ? "" : je.text);
    }
    size_t n = json_array_size(arr);
    int32_t *ids = malloc(sizeof *ids * (n ? n : 1));
    for (size_t i = 0; i < n; i++) {
        json_t *v = json_array_get(arr, i);
        if (!json_is_integer(v)) {
            free(ids);
            json_decref(arr);
            return cli_fail("detokenize", EXIT_USAGE, "stdin: element %zu is not an integer", i);
        }
        ids[i] = (int32_t)json_integer_value(v);
    }
    json_decref(arr);
    tok *t;
    if (tok_open(&t, dir, &err)) {
        free(ids);
        return cli_fail("detokenize", EXIT_FAILURE_, "%s", err.msg);
    }
    strbuf out = STRBUF_INIT;
    int rc = tok_decode(t, ids, n, &out, &err);
    if (!rc)
        fwrite(out.buf ? out.buf : "", 1, out.len, stdout);
    sb_release(&out);
    free(ids);
    tok_close(t);
    return rc ? cli_fail("detokenize", EXIT_USAGE, "%s", err.msg) : EXIT_OK;
}

int cmd_render(int argc, char **argv)
{
    const char *dir = NULL;
    int no_thinking = 0;
    int p = parse("render", argc, argv, &dir, &no_thinking,
                  "usage: qwen3-batch render --tokenizer DIR [--no-thinking]\n\n"
                  "Reads a JSON array of {\"role\", \"content\"} messages on stdin and prints\n"
                  "the Qwen3 chat prompt with the generation prompt, exactly as transformers'\n"
                  "apply_chat_template renders it (--no-thinking: enable_thinking=False).\n");
    if (p)
        return p > 0 ? EXIT_OK : EXIT_USAGE;
    errbuf err = {{0}};
    json_error_t je;
    json_t *arr = json_loadf(stdin, 0, &je);
    if (!json_is_array(arr)) {
        json_decref(arr);
        return cli_fail("render", EXIT_USAGE, "stdin:%d:%d: expected a JSON array of messages",
                        je.line, je.column);
    }
    size_t n = json_array_size(arr);
    chat_msg *m = calloc(n ? n : 1, sizeof *m);
    for (size_t i = 0; i < n; i++) {
        json_t *o = json_array_get(arr, i);
        m[i].role = json_string_value(json_object_get(o, "role"));
        m[i].content = json_string_value(json_object_get(o, "content"));
        if (!m[i].role || !m[i].content) {
            free(m);
            json_decref(arr);
            return cli_fail("render", EXIT_USAGE,
                            "stdin: message %zu needs string \"role\" and \"content\"", i);
        }
    }
    strbuf out = STRBUF_INIT;
    int rc = chat_render(&out, m, (int)n, 1, !no_thinking, &err);
    if (!rc)
        fwrite(out.buf ? out.buf : "", 1, out.len, stdout);
    sb_release(&out);
    free(m);
    json_decref(arr);
    (void)dir; /* the template is Qwen3's; the folder is checked for the tokenizer below */
    return rc ? cli_fail("render", EXIT_USAGE, "%s", err.msg) : EXIT_OK;
}
