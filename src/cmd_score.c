/*
 * cmd_score.c - `qwen3-batch score`: the logits of every position of a token
 * list, for checking an engine's numerics against a reference (HF, or the
 * CPU engine against the CUDA one).
 */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "cmd_util.h"
#include "engine.h"
#include "model.h"

static void score_usage(void)
{
    printf("usage: qwen3-batch score --model DIR --ids 1,2,3 --logits-out FILE\n"
           "                         [--backend cpu|cuda|auto] [--threads N]\n\n"
           "Runs the token ids through the model in one sequence and writes the logits of\n"
           "every position to FILE: float32 little endian, one row of vocab_size floats\n"
           "per input position. Prints a JSON summary on stdout:\n"
           "  {\"n_positions\", \"vocab\", \"backend\", \"argmax\": [per position], \"seconds\"}\n"
           "(seconds: time in the engine, without loading the model).\n\n"
           "  --backend B   cpu (default), cuda, or auto (cuda when built in and a GPU\n"
           "                is present)\n"
           "  --threads N   CPU worker threads (default: all cores)\n\n"
           "exit codes: 0 ok, 1 error (model, I/O), 2 bad command line.\n");
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
    errbuf err = {{0}};
    long long v;
    int c;
    optind = 0;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'm':
            dir = optarg;
            break;
        case 'i':
            ids_s = optarg;
            break;
        case 'o':
            out_path = optarg;
            break;
        case 't':
            if (cmdu_parse_int("--threads", optarg, 1, 256, &v, &err))
                return cli_fail("score", EXIT_USAGE, "%s", err.msg);
            eo.n_threads = (int)v;
            break;
        case 'b':
            if (cmdu_parse_backend("--backend", optarg, &eo.backend, &err))
                return cli_fail("score", EXIT_USAGE, "%s", err.msg);
            break;
        case 'h':
            score_usage();
            return EXIT_OK;
        default:
            return EXIT_USAGE;
        }
    }
    if (optind < argc)
        return cli_fail("score", EXIT_USAGE, "unexpected argument '%s'", argv[optind]);
    if (!dir || !ids_s || !out_path)
        return cli_fail("score", EXIT_USAGE, "--model, --ids and --logits-out are required");
    int32_t *ids;
    int n;
    if (cmdu_parse_ids("--ids", ids_s, &ids, &n, &err))
        return cli_fail("score", EXIT_USAGE, "%s", err.msg);
    model m;
    if (model_open(&m, dir, &err)) {
        free(ids);
        return cli_fail("score", EXIT_FAILURE_, "%s", err.msg);
    }
    int V = m.cfg.vocab_size, rc = EXIT_FAILURE_;
    for (int i = 0; i < n; i++)
        if (ids[i] >= V) {
            rc = cli_fail("score", EXIT_USAGE,
                          "--ids: entry %d: id %d is not below the model's vocab_size %d", i + 1,
                          (int)ids[i], V);
            free(ids);
            model_close(&m);
            return rc;
        }
    eo.max_seqs = 1;
    eo.max_kv_tokens = n;
    eng *e = NULL;
    float *logits = malloc(sizeof *logits * (size_t)n * (size_t)V);
    double seconds = 0;
    if (!logits) {
        errorf(&err, "out of memory for %d rows of %d logits", n, V);
        goto out;
    }
    if (eng_open(&e, &m, &eo, &err))
        goto out;
    sample_params sp;
    sample_params_greedy(&sp);
    int seq;
    if (eng_seq_add(e, &sp, &seq, &err))
        goto out;
    /* In chunks the engine is sized for; each chunk returns all its rows. */
    int chunk = e->opts.max_step_tokens > 0 ? e->opts.max_step_tokens : n;
    double t0 = cmdu_now();
    for (int at = 0; at < n; at += chunk) {
        int len = n - at < chunk ? n - at : chunk;
        eng_item it = {.seq = seq, .tokens = ids + at, .n_tokens = len, .logits = ENG_LOGITS_ALL};
        if (eng_step(e, &it, 1, logits + (size_t)at * V, NULL, &err))
            goto out;
    }
    seconds = cmdu_now() - t0;
    if (cmdu_write_f32(out_path, logits, (size_t)n * V, &err))
        goto out;

    json_t *res = json_object(), *argmax = json_array();
    for (int p = 0; p < n; p++) {
        const float *row = logits + (size_t)p * V;
        int best = 0;
        for (int t = 1; t < V; t++)
            if (row[t] > row[best])
                best = t;
        json_array_append_new(argmax, json_integer(best));
    }
    json_object_set_new(res, "n_positions", json_integer(n));
    json_object_set_new(res, "vocab", json_integer(V));
    json_object_set_new(res, "backend", json_string(e->backend_name));
    json_object_set_new(res, "argmax", argmax);
    json_object_set_new(res, "seconds", json_real(seconds));
    /* flags 0: one line, ", " and ": " separators */
    if (cmdu_print_json(res, 0, &err) == 0)
        rc = EXIT_OK;
out:
    if (rc)
        cli_fail("score", rc, "%s", err.msg);
    eng_close(e);
    free(logits);
    free(ids);
    model_close(&m);
    return rc;
}
