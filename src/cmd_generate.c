/*
 * cmd_generate.c - `score` and `generate`: one prompt through the engine,
 * for checking numerics against references and for trying a model by hand.
 */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "chat.h"
#include "cli.h"
#include "engine.h"
#include "model.h"
#include "tok.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* "1,2,3" -> ids (malloc'ed). */
static int parse_ids(const char *s, int32_t **ids, int *n)
{
    int cap = 16;
    *ids = malloc(sizeof **ids * (size_t)cap);
    *n = 0;
    while (*s) {
        char *end;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (end == s || errno || v < 0 || v > INT32_MAX)
            return -1;
        if (*n == cap)
            *ids = realloc(*ids, sizeof **ids * (size_t)(cap *= 2));
        (*ids)[(*n)++] = (int32_t)v;
        s = end;
        if (*s == ',')
            s++;
        else if (*s)
            return -1;
    }
    return *n > 0 ? 0 : -1;
}

static int parse_backend(const char *s, enum eng_backend *b)
{
    if (!strcmp(s, "cpu"))
        *b = ENG_BACKEND_CPU;
    else if (!strcmp(s, "cuda"))
        *b = ENG_BACKEND_CUDA;
    else if (!strcmp(s, "auto"))
        *b = ENG_BACKEND_AUTO;
    else
        return -1;
    return 0;
}

int cmd_score(int argc, char **argv)
{
    static const struct option opts[] = {{"model", required_argument, 0, 'm'},
                                         {"ids", required_argument, 0, 'i'},
                                         {"logits-out", required_argument, 0, 'o'},
                                         {"backend", required_argument, 0, 'b'},
                                         {"threads", required_argument, 0, 't'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *dir = NULL, *ids_s = NULL, *out_path = NULL;
    eng_options eo = {.backend = ENG_BACKEND_CPU};
    int c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': dir = optarg; break;
        case 'i': ids_s = optarg; break;
        case 'o': out_path = optarg; break;
        case 't': eo.n_threads = atoi(optarg); break;
        case 'b':
            if (parse_backend(optarg, &eo.backend))
                return cli_fail("score", EXIT_USAGE, "--backend must be cpu, cuda or auto");
            break;
        case 'h':
            printf("usage: qwen3-batch score --model DIR --ids 1,2,3 --logits-out FILE\n"
                   "                         [--backend cpu|cuda|auto] [--threads N]\n\n"
                   "Runs the ids through the model and writes the logits of every position\n"
                   "(float32 little endian, vocab_size per row) to FILE; prints a JSON summary.\n");
            return EXIT_OK;
        default:
            return EXIT_USAGE;
        }
    }
    if (!dir || !ids_s || !out_path)
        return cli_fail("score", EXIT_USAGE, "--model, --ids and --logits-out are required");
    int32_t *ids;
    int n;
    if (parse_ids(ids_s, &ids, &n))
        return cli_fail("score", EXIT_USAGE, "--ids: expected a comma-separated list of ids");
    errbuf err = {{0}};
    model m;
    if (model_open(&m, dir, &err)) {
        free(ids);
        return cli_fail("score", EXIT_FAILURE_, "%s", err.msg);
    }
    eo.max_step_tokens = n;
    eo.max_kv_tokens = n + 16;
    eng *e;
    int rc = EXIT_FAILURE_;
    float *logits = NULL;
    if (eng_open(&e, &m, &eo, &err))
        goto out;
    int V = m.cfg.vocab_size, seq;
    logits = malloc(sizeof *logits * (size_t)n * V);
    sample_params sp;
    sample_params_greedy(&sp);
    double t0 = now();
    eng_item it = {.tokens = ids, .n_tokens = n, .logits = ENG_LOGITS_ALL};
    if (!logits || eng_seq_add(e, &sp, &seq, &err))
        goto close;
    it.seq = seq;
    if (eng_step(e, &it, 1, logits, NULL, &err))
        goto close;
    double secs = now() - t0;
    FILE *f = fopen(out_path, "wb");
    if (!f || fwrite(logits, sizeof(float) * V, (size_t)n, f) != (size_t)n || fclose(f)) {
        errorf(&err, "%s: cannot write: %s", out_path, strerror(errno));
        goto close;
    }
    printf("{\"n_positions\": %d, \"vocab\": %d, \"backend\": \"%s\", \"seconds\": %.4f, "
           "\"argmax\": [",
           n, V, e->backend_name, secs);
    for (int p = 0; p < n; p++) {
        int best = 0;
        for (int v = 1; v < V; v++)
            if (logits[(size_t)p * V + v] > logits[(size_t)p * V + best])
                best = v;
        printf("%s%d", p ? ", " : "", best);
    }
    printf("]}\n");
    rc = EXIT_OK;
close:
    eng_close(e);
out:
    if (rc)
        cli_fail("score", rc, "%s", err.msg);
    free(logits);
    free(ids);
    model_close(&m);
    return rc;
}

int cmd_generate(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},      {"ids", required_argument, 0, 'i'},
        {"prompt", required_argument, 0, 'p'},     {"chat", no_argument, 0, 'c'},
        {"no-thinking", no_argument, 0, 'n'},      {"max-new-tokens", required_argument, 0, 'N'},
        {"temperature", required_argument, 0, 'T'}, {"top-k", required_argument, 0, 'k'},
        {"top-p", required_argument, 0, 'P'},      {"min-p", required_argument, 0, 'M'},
        {"presence-penalty", required_argument, 0, 'r'}, {"seed", required_argument, 0, 's'},
        {"ignore-eos", no_argument, 0, 'e'},       {"backend", required_argument, 0, 'b'},
        {"threads", required_argument, 0, 't'},    {"tokenizer", required_argument, 0, 'z'},
        {"help", no_argument, 0, 'h'},             {0, 0, 0, 0}};
    const char *dir = NULL, *ids_s = NULL, *prompt = NULL, *tok_dir = NULL;
    int chat = 0, thinking = 1, max_new = 64, ignore_eos = 0, c;
    sample_params sp;
    sample_params_greedy(&sp);
    eng_options eo = {.backend = ENG_BACKEND_AUTO};
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': dir = optarg; break;
        case 'i': ids_s = optarg; break;
        case 'p': prompt = optarg; break;
        case 'c': chat = 1; break;
        case 'n': thinking = 0; break;
        case 'N': max_new = atoi(optarg); break;
        case 'T': sp.temperature = strtof(optarg, NULL); break;
        case 'k': sp.top_k = atoi(optarg); break;
        case 'P': sp.top_p = strtof(optarg, NULL); break;
        case 'M': sp.min_p = strtof(optarg, NULL); break;
        case 'r': sp.presence_penalty = strtof(optarg, NULL); break;
        case 's': sp.seed = strtoull(optarg, NULL, 10); break;
        case 'e': ignore_eos = 1; break;
        case 't': eo.n_threads = atoi(optarg); break;
        case 'z': tok_dir = optarg; break;
        case 'b':
            if (parse_backend(optarg, &eo.backend))
                return cli_fail("generate", EXIT_USAGE, "--backend must be cpu, cuda or auto");
            break;
        case 'h':
            printf("usage: qwen3-batch generate --model DIR (--ids LIST | --prompt TEXT [--chat "
                   "[--no-thinking]])\n"
                   "         [--max-new-tokens N] [--temperature T] [--top-k K] [--top-p P]\n"
                   "         [--min-p M] [--presence-penalty X] [--seed S] [--ignore-eos]\n"
                   "         [--backend cpu|cuda|auto] [--threads N] [--tokenizer DIR]\n\n"
                   "Generates from one prompt and prints JSON: ids, text, finish_reason,\n"
                   "prompt_tokens, completion_tokens, seconds. Greedy unless --temperature > 0.\n"
                   "--prompt is tokenized as is; --chat wraps it as a user message in the\n"
                   "Qwen3 chat template. --tokenizer defaults to the model folder.\n");
            return EXIT_OK;
        default:
            return EXIT_USAGE;
        }
    }
    if (!dir || (!ids_s == !prompt))
        return cli_fail("generate", EXIT_USAGE, "--model and one of --ids or --prompt are required");
    if (max_new < 1)
        return cli_fail("generate", EXIT_USAGE, "--max-new-tokens must be at least 1");
    errbuf err = {{0}};
    tok *t = NULL;
    if (tok_open(&t, tok_dir ? tok_dir : dir, &err) && (prompt || !ids_s))
        return cli_fail("generate", EXIT_FAILURE_, "%s", err.msg);
    int32_t *ids = NULL;
    int n = 0;
    if (ids_s) {
        if (parse_ids(ids_s, &ids, &n))
            return cli_fail("generate", EXIT_USAGE, "--ids: expected a comma-separated list");
    } else {
        strbuf text = STRBUF_INIT;
        if (chat) {
            chat_msg msg = {"user", prompt};
            chat_render(&text, &msg, 1, 1, thinking, &err);
        } else {
            sb_adds(&text, prompt);
        }
        size_t nn;
        int rc = tok_encode(t, text.buf, text.len, &ids, &nn, &err);
        sb_release(&text);
        if (rc)
            return cli_fail("generate", EXIT_USAGE, "--prompt: %s", err.msg);
        n = (int)nn;
    }
    model m;
    if (model_open(&m, dir, &err)) {
        tok_close(t);
        free(ids);
        return cli_fail("generate", EXIT_FAILURE_, "%s", err.msg);
    }
    eo.max_kv_tokens = n + max_new + 16;
    eo.max_seqs = 1;
    eo.n_valid_vocab = t ? tok_vocab_size(t) : 0;
    int32_t *out = malloc(sizeof *out * (size_t)max_new);
    int n_out = 0, rc = EXIT_FAILURE_, seq;
    const char *finish = "length";
    eng *e = NULL;
    double t0 = now();
    if (eng_open(&e, &m, &eo, &err) || eng_seq_add(e, &sp, &seq, &err))
        goto out;
    eng_item it = {.seq = seq, .tokens = ids, .n_tokens = n, .sample = 1};
    int32_t next;
    while (n_out < max_new) {
        if (eng_step(e, &it, 1, NULL, &next, &err))
            goto out;
        int eos = 0;
        for (int i = 0; i < m.cfg.n_eos; i++)
            eos |= next == m.cfg.eos_ids[i];
        if (eos && !ignore_eos) {
            finish = "stop";
            break;
        }
        out[n_out++] = next;
        it.tokens = &out[n_out - 1];
        it.n_tokens = 1;
    }
    double secs = now() - t0;
    json_t *res = json_object(), *arr = json_array();
    for (int i = 0; i < n_out; i++)
        json_array_append_new(arr, json_integer(out[i]));
    json_object_set_new(res, "ids", arr);
    if (t) {
        strbuf text = STRBUF_INIT;
        if (tok_decode(t, out, (size_t)n_out, &text, &err) == 0)
            json_object_set_new(res, "text", json_stringn(text.buf ? text.buf : "", text.len));
        sb_release(&text);
    }
    json_object_set_new(res, "finish_reason", json_string(finish));
    json_object_set_new(res, "prompt_tokens", json_integer(n));
    json_object_set_new(res, "completion_tokens", json_integer(n_out));
    json_object_set_new(res, "seconds", json_real(secs));
    json_object_set_new(res, "backend", json_string(e->backend_name));
    char *s = json_dumps(res, JSON_COMPACT);
    puts(s);
    free(s);
    json_decref(res);
    rc = EXIT_OK;
out:
    if (rc)
        cli_fail("generate", rc, "%s", err.msg);
    eng_close(e);
    model_close(&m);
    tok_close(t);
    free(ids);
    free(out);
    return rc;
}
