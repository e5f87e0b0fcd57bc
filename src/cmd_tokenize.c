/*
 * cmd_tokenize.c - `tokenize`, `detokenize` and `render`: the tokenizer and
 * the chat template on the command line, for checks against HF and for the
 * tokenizer benchmark.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "chat.h"
#include "cli.h"
#include "tok.h"

typedef struct tok_opts {
    const char *dir;
    int stats, no_thinking, no_generation_prompt;
} tok_opts;

/* Parses --tokenizer DIR (or =DIR) and the flags a command allows.
 * Returns -1 when --help was printed, an exit code > 0 on error, 0 ok. */
static int parse_opts(int argc, char **argv, const char *usage, int allow_stats, int allow_render,
                      tok_opts *o)
{
    memset(o, 0, sizeof *o);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage, stdout);
            return -1;
        } else if (!strcmp(a, "--tokenizer")) {
            if (++i >= argc)
                return cli_fail(argv[0], EXIT_USAGE, "--tokenizer needs a directory");
            o->dir = argv[i];
        } else if (!strncmp(a, "--tokenizer=", 12)) {
            o->dir = a + 12;
        } else if (allow_stats && !strcmp(a, "--stats")) {
            o->stats = 1;
        } else if (allow_render && !strcmp(a, "--no-thinking")) {
            o->no_thinking = 1;
        } else if (allow_render && !strcmp(a, "--no-generation-prompt")) {
            o->no_generation_prompt = 1;
        } else {
            return cli_fail(argv[0], EXIT_USAGE, "unknown option '%s' (see --help)", a);
        }
    }
    if (!o->dir)
        return cli_fail(argv[0], EXIT_USAGE, "--tokenizer DIR is required (see --help)");
    return 0;
}

static int read_stdin(const char *name, strbuf *in)
{
    char buf[1 << 16];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, stdin)) > 0)
        sb_add(in, buf, n);
    if (ferror(stdin))
        return cli_fail(name, EXIT_FAILURE_, "error reading standard input");
    if (!in->buf)
        sb_grow(in, 0);
    return 0;
}

/* Reads standard input as one JSON array (of `what`, for the message) into
 * *arr (new reference). Returns 0 or the exit code after printing why. */
static int read_stdin_array(const char *name, const char *what, json_t **arr)
{
    strbuf in = STRBUF_INIT;
    int rc = read_stdin(name, &in);
    if (rc)
        return rc;
    json_error_t jerr;
    *arr = json_loadb(in.buf, in.len, 0, &jerr);
    sb_release(&in);
    if (!*arr)
        return cli_fail(name, EXIT_FAILURE_, "standard input:%d:%d: %s", jerr.line, jerr.column,
                        jerr.text);
    if (!json_is_array(*arr)) {
        json_decref(*arr);
        return cli_fail(name, EXIT_FAILURE_, "standard input: expected a JSON array of %s", what);
    }
    return 0;
}

static int open_tok(const char *name, const char *dir, tok **t)
{
    errbuf err;
    if (tok_open(t, dir, &err))
        return cli_fail(name, EXIT_FAILURE_, "%s", err.msg);
    return 0;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int print_ids(const int32_t *ids, size_t n)
{
    strbuf line = STRBUF_INIT;
    sb_addc(&line, '[');
    for (size_t i = 0; i < n; i++)
        sb_addf(&line, i ? ", %d" : "%d", ids[i]);
    sb_adds(&line, "]\n");
    size_t w = fwrite(line.buf, 1, line.len, stdout);
    int ok = w == line.len;
    sb_release(&line);
    return ok;
}

int cmd_tokenize(int argc, char **argv)
{
    static const char usage[] =
        "usage: qwen3-batch tokenize --tokenizer DIR [--stats] < text\n\n"
        "Encodes UTF-8 text from standard input with DIR/tokenizer.json and prints\n"
        "the token ids as one JSON array. Added tokens such as <|im_end|> in the\n"
        "text are matched whole; nothing is added around the text.\n\n"
        "  --tokenizer DIR  directory holding tokenizer.json (required)\n"
        "  --stats          print input MB, token count and MB/s of encoding to stderr\n\n"
        "exit codes: 0 ok; 1 error (unreadable tokenizer, invalid UTF-8); 2 usage.\n";
    tok_opts o;
    int rc = parse_opts(argc, argv, usage, 1, 0, &o);
    if (rc)
        return rc < 0 ? EXIT_OK : rc;
    tok *t;
    if ((rc = open_tok(argv[0], o.dir, &t)))
        return rc;
    strbuf in = STRBUF_INIT;
    if ((rc = read_stdin(argv[0], &in))) {
        tok_close(t);
        return rc;
    }
    int32_t *ids;
    size_t n_ids;
    errbuf err;
    double t0 = now_s();
    int erc = tok_encode(t, in.buf, in.len, &ids, &n_ids, &err);
    double dt = now_s() - t0;
    if (erc) {
        rc = cli_fail(argv[0], EXIT_FAILURE_, "standard input: %s", err.msg);
    } else {
        if (o.stats) {
            double mb = (double)in.len / 1e6;
            fprintf(stderr, "input %.3f MB, %zu tokens, encode %.3f s, %.1f MB/s, %.2f bytes/token\n",
                    mb, n_ids, dt, dt > 0 ? mb / dt : 0.0,
                    n_ids ? (double)in.len / (double)n_ids : 0.0);
        }
        if (!print_ids(ids, n_ids) || fflush(stdout))
            rc = cli_fail(argv[0], EXIT_FAILURE_, "error writing standard output");
    }
    free(ids);
    sb_release(&in);
    tok_close(t);
    return rc;
}

int cmd_detokenize(int argc, char **argv)
{
    static const char usage[] =
        "usage: qwen3-batch detokenize --tokenizer DIR < ids.json\n\n"
        "Reads a JSON array of token ids from standard input and prints their text\n"
        "(raw bytes, no newline added). Added tokens print as their text; ids that\n"
        "name no token are skipped, as Hugging Face does.\n\n"
        "  --tokenizer DIR  directory holding tokenizer.json (required)\n\n"
        "exit codes: 0 ok; 1 error (unreadable tokenizer, bad JSON); 2 usage.\n";
    tok_opts o;
    int rc = parse_opts(argc, argv, usage, 0, 0, &o);
    if (rc)
        return rc < 0 ? EXIT_OK : rc;
    json_t *arr;
    if ((rc = read_stdin_array(argv[0], "ids", &arr)))
        return rc;
    size_t n = json_array_size(arr);
    int32_t *ids = malloc((n ? n : 1) * sizeof *ids);
    for (size_t i = 0; i < n && !rc; i++) {
        json_t *v = json_array_get(arr, i);
        if (!json_is_integer(v) || json_integer_value(v) < INT32_MIN ||
            json_integer_value(v) > INT32_MAX)
            rc = cli_fail(argv[0], EXIT_FAILURE_, "standard input: entry %zu is not a token id", i);
        else
            ids[i] = (int32_t)json_integer_value(v);
    }
    json_decref(arr);
    tok *t = NULL;
    if (!rc)
        rc = open_tok(argv[0], o.dir, &t);
    if (!rc) {
        strbuf text = STRBUF_INIT;
        errbuf err;
        if (tok_decode(t, ids, n, &text, &err))
            rc = cli_fail(argv[0], EXIT_FAILURE_, "%s", err.msg);
        else if (fwrite(text.buf, 1, text.len, stdout) != text.len || fflush(stdout))
            rc = cli_fail(argv[0], EXIT_FAILURE_, "error writing standard output");
        sb_release(&text);
    }
    free(ids);
    tok_close(t);
    return rc;
}

int cmd_render(int argc, char **argv)
{
    static const char usage[] =
        "usage: qwen3-batch render --tokenizer DIR [--no-thinking] < messages.json\n\n"
        "Reads a JSON array of {\"role\", \"content\"} messages from standard input and\n"
        "prints the prompt the Qwen3 chat template makes of them, exactly (no newline\n"
        "added), ending with the generation prompt.\n\n"
        "  --tokenizer DIR           tokenizer directory (required; checked to load)\n"
        "  --no-thinking             enable_thinking=false: append the empty think block\n"
        "  --no-generation-prompt    leave out \"<|im_start|>assistant\\n\"\n\n"
        "exit codes: 0 ok; 1 error (bad JSON, unknown role); 2 usage.\n";
    tok_opts o;
    int rc = parse_opts(argc, argv, usage, 0, 1, &o);
    if (rc)
        return rc < 0 ? EXIT_OK : rc;
    /* The template is built in, but the command promises a usable tokenizer
     * directory, so a wrong --tokenizer is caught here too. */
    tok *t;
    if ((rc = open_tok(argv[0], o.dir, &t)))
        return rc;
    tok_close(t);
    json_t *arr;
    if ((rc = read_stdin_array(argv[0], "{\"role\", \"content\"} messages", &arr)))
        return rc;
    size_t n = json_array_size(arr);
    chat_msg *msgs = calloc(n ? n : 1, sizeof *msgs);
    for (size_t i = 0; i < n && !rc; i++) {
        json_t *m = json_array_get(arr, i);
        json_t *role = json_object_get(m, "role"), *content = json_object_get(m, "content");
        if (!json_is_string(role) || !json_is_string(content))
            rc = cli_fail(argv[0], EXIT_FAILURE_,
                          "standard input: message %zu needs string \"role\" and \"content\"", i);
        else
            msgs[i] = (chat_msg){json_string_value(role), json_string_value(content)};
    }
    if (!rc) {
        strbuf out = STRBUF_INIT;
        errbuf err;
        if (chat_render(&out, msgs, (int)n, !o.no_generation_prompt, !o.no_thinking, &err))
            rc = cli_fail(argv[0], EXIT_FAILURE_, "standard input: %s", err.msg);
        else if (fwrite(out.buf, 1, out.len, stdout) != out.len || fflush(stdout))
            rc = cli_fail(argv[0], EXIT_FAILURE_, "error writing standard output");
        sb_release(&out);
    }
    free(msgs);
    json_decref(arr);
    return rc;
}
