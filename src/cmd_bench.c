/*
 * cmd_bench.c - `bench`: prompt and generation throughput, like llama.cpp's
 * batched-bench, so the numbers compare one to one.
 *
 * For each prompt length PP, generated length TG and number of parallel
 * sequences B: one step prefills all B prompts (the engine splits it into
 * passes of max_step_tokens), then TG steps decode one token for each of the
 * B sequences. Columns: PP, TG, B, N_KV = B (PP + TG), T_PP and S_PP = B PP /
 * T_PP, T_TG and S_TG = B TG / T_TG, T = T_PP + T_TG and S = N_KV / T.
 *
 * --synthetic qwen3-14b needs no files: the CUDA engine builds random AWQ
 * int4 weights of Qwen3-14B's shapes on the GPU. --model DIR benchmarks a
 * real model on any backend.
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "cli.h"
#include "engine.h"
#include "model.h"
#ifdef HAVE_CUDA
#include "cuda_engine.h"
#endif

#define BENCH_MAX_LIST 16

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int parse_list(const char *s, int *out, int *n)
{
    *n = 0;
    while (*s) {
        char *end;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (end == s || errno || v < 1 || v > 1 << 24 || *n == BENCH_MAX_LIST)
            return -1;
        out[(*n)++] = (int)v;
        s = end;
        if (*s == ',')
            s++;
        else if (*s)
            return -1;
    }
    return *n ? 0 : -1;
}

/* "22GiB", "22G", "500MiB", "1073741824" -> bytes. */
static int parse_size(const char *s, size_t *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || errno || v <= 0)
        return -1;
    double mult = 1;
    if (!strcasecmp(end, "gib") || !strcasecmp(end, "g") || !strcasecmp(end, "gb"))
        mult = 1024.0 * 1024 * 1024;
    else if (!strcasecmp(end, "mib") || !strcasecmp(end, "m") || !strcasecmp(end, "mb"))
        mult = 1024.0 * 1024;
    else if (*end)
        return -1;
    *out = (size_t)(v * mult);
    return 0;
}

static void usage(void)
{
    printf("usage: qwen3-batch bench (--synthetic qwen3-14b | --model DIR)\n"
           "         [--npp 512,4096] [--ntg 128] [--npl 1,16,64] [--gpu-memory 22GiB]\n"
           "         [--kv-cache f16|int8] [--max-step-tokens N] [--max-kv-tokens N]\n"
           "         [--backend cuda|cpu|auto] [--seed N] [--profile]\n\n"
           "Measures prompt (PP) and generation (TG) throughput for B parallel sequences,\n"
           "like llama.cpp's batched-bench: all B prompts are prefilled, then TG decode\n"
           "steps run for all B. Prints a table: PP, TG, B, N_KV, T_PP s, S_PP t/s,\n"
           "T_TG s, S_TG t/s, T s, S t/s. --synthetic builds random AWQ int4 weights of\n"
           "the named shapes on the GPU (no files; CUDA only). Greedy decoding.\n"
           "--profile (CUDA) times every operation with events (slower) and prints\n"
           "where the GPU time goes after each row.\n");
}

static uint64_t mix(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* One (pp, tg, B) run; times in seconds. */
static int run_one(eng *e, int pp, int tg, int B, int vocab, uint64_t seed, double *t_pp,
                   double *t_tg, errbuf *err)
{
    int rc = -1;
    int *seqs = calloc((size_t)B, sizeof *seqs);
    int32_t *prompt = malloc(sizeof *prompt * (size_t)B * pp);
    int32_t *next = malloc(sizeof *next * (size_t)B);
    eng_item *items = calloc((size_t)B, sizeof *items);
    int n_added = 0;
    if (!seqs || !prompt || !next || !items) {
        errorf(err, "out of memory");
        goto out;
    }
    int lim = vocab < 151000 ? vocab : 151000;
    for (int64_t i = 0; i < (int64_t)B * pp; i++)
        prompt[i] = (int32_t)(mix(seed + (uint64_t)i) % (uint64_t)lim);
    sample_params sp;
    sample_params_greedy(&sp);
    for (int b = 0; b < B; b++, n_added++)
        if (eng_seq_add(e, &sp, &seqs[b], err))
            goto out;
    for (int b = 0; b < B; b++)
        items[b] = (eng_item){.seq = seqs[b], .tokens = prompt + (size_t)b * pp, .n_tokens = pp,
                              .sample = 1};
    double t0 = now();
    if (eng_step(e, items, B, NULL, next, err))
        goto out;
    double t1 = now();
    for (int s = 0; s < tg; s++) {
        for (int b = 0; b < B; b++)
            items[b] = (eng_item){.seq = seqs[b], .tokens = &next[b], .n_tokens = 1, .sample = 1};
        if (eng_step(e, items, B, NULL, next, err))
            goto out;
    }
    double t2 = now();
    *t_pp = t1 - t0;
    *t_tg = t2 - t1;
    rc = 0;
out:
    for (int b = 0; b < n_added; b++)
        eng_seq_release(e, seqs[b]);
    free(seqs);
    free(prompt);
    free(next);
    free(items);
    return rc;
}

int cmd_bench(int argc, char **argv)
{
    static const struct option opts[] = {{"synthetic", required_argument, 0, 's'},
                                         {"model", required_argument, 0, 'm'},
                                         {"npp", required_argument, 0, 'p'},
                                         {"ntg", required_argument, 0, 'g'},
                                         {"npl", required_argument, 0, 'l'},
                                         {"gpu-memory", required_argument, 0, 'M'},
                                         {"kv-cache", required_argument, 0, 'k'},
                                         {"max-step-tokens", required_argument, 0, 'T'},
                                         {"max-kv-tokens", required_argument, 0, 'K'},
                                         {"backend", required_argument, 0, 'b'},
                                         {"seed", required_argument, 0, 'S'},
                                         {"profile", no_argument, 0, 'P'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *synth = NULL, *dir = NULL;
    int npp[BENCH_MAX_LIST] = {512}, ntg[BENCH_MAX_LIST] = {128}, npl[BENCH_MAX_LIST] = {1};
    int n_pp = 1, n_tg = 1, n_pl = 1, c;
    uint64_t seed = 1;
    int profile = 0;
    eng_options eo = {.backend = ENG_BACKEND_AUTO};
    optind = 0;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 's': synth = optarg; break;
        case 'm': dir = optarg; break;
        case 'p':
            if (parse_list(optarg, npp, &n_pp))
                return cli_fail("bench", EXIT_USAGE, "--npp: expected a list like 512,4096");
            break;
        case 'g':
            if (parse_list(optarg, ntg, &n_tg))
                return cli_fail("bench", EXIT_USAGE, "--ntg: expected a list like 128");
            break;
        case 'l':
            if (parse_list(optarg, npl, &n_pl))
                return cli_fail("bench", EXIT_USAGE, "--npl: expected a list like 1,16,64");
            break;
        case 'M':
            if (parse_size(optarg, &eo.gpu_memory_budget))
                return cli_fail("bench", EXIT_USAGE, "--gpu-memory: expected a size like 22GiB");
            break;
        case 'k':
            if (!strcmp(optarg, "f16"))
                eo.kv_type = ENG_KV_F16;
            else if (!strcmp(optarg, "int8"))
                eo.kv_type = ENG_KV_INT8;
            else
                return cli_fail("bench", EXIT_USAGE, "--kv-cache must be f16 or int8");
            break;
        case 'T': eo.max_step_tokens = atoi(optarg); break;
        case 'K': eo.max_kv_tokens = atoll(optarg); break;
        case 'b':
            if (!strcmp(optarg, "cuda"))
                eo.backend = ENG_BACKEND_CUDA;
            else if (!strcmp(optarg, "cpu"))
                eo.backend = ENG_BACKEND_CPU;
            else if (!strcmp(optarg, "auto"))
                eo.backend = ENG_BACKEND_AUTO;
            else
                return cli_fail("bench", EXIT_USAGE, "--backend must be cuda, cpu or auto");
            break;
        case 'S': seed = strtoull(optarg, NULL, 10); break;
        case 'P': profile = 1; break;
        case 'h': usage(); return EXIT_OK;
        default: return EXIT_USAGE;
        }
    }
    (void)profile; /* used by the CUDA build only */
    if (!synth == !dir)
        return cli_fail("bench", EXIT_USAGE, "give exactly one of --synthetic NAME or --model DIR");
    int max_b = 1;
    for (int i = 0; i < n_pl; i++)
        if (npl[i] > max_b)
            max_b = npl[i];
    eo.max_seqs = max_b;

    errbuf err = {{0}};
    model m;
    model_config cfg;
    int have_model = 0;
    eng *e = NULL;
    if (synth) {
        if (strcmp(synth, "qwen3-14b"))
            return cli_fail("bench", EXIT_USAGE, "--synthetic: only qwen3-14b is known");
        if (eo.backend == ENG_BACKEND_CPU)
            return cli_fail("bench", EXIT_USAGE, "--synthetic runs on the CUDA backend only");
#ifdef HAVE_CUDA
        model_config_qwen3_14b(&cfg);
        if (cuda_engine_open_synthetic(&e, &cfg, &eo, seed, &err))
            return cli_fail("bench", EXIT_FAILURE_, "%s", err.msg);
#else
        return cli_fail("bench", EXIT_FAILURE_,
                        "--synthetic needs the CUDA backend; this qwen3-batch was built without "
                        "CUDA");
#endif
    } else {
        if (model_open(&m, dir, &err))
            return cli_fail("bench", EXIT_FAILURE_, "%s", err.msg);
        have_model = 1;
        cfg = m.cfg;
        if (eng_open(&e, &m, &eo, &err)) {
            model_close(&m);
            return cli_fail("bench", EXIT_FAILURE_, "%s", err.msg);
        }
    }

    printf("backend %s, model %s, kv cache %s\n", e->backend_name, synth ? synth : dir,
           e->opts.kv_type == ENG_KV_INT8 ? "int8" : "f16");
#ifdef HAVE_CUDA
    cuda_engine_info info;
    if (cuda_engine_get_info(e, &info) == 0)
        printf("device %s (sm_%d%d, %d SMs); budget %.2f GiB: weights %.2f, activations %.2f, "
               "workspace %.2f, KV cache %.2f GiB = %lld tokens; max_step_tokens %d; embedding "
               "on %s\n",
               info.device, info.sm_major, info.sm_minor, info.n_sm, info.budget / 1073741824.0,
               info.weights / 1073741824.0, info.activations / 1073741824.0,
               info.workspace / 1073741824.0, info.kv_cache / 1073741824.0,
               (long long)info.kv_tokens, info.max_step_tokens, info.embed_on_host ? "host" : "GPU");
#endif
    fflush(stdout);

    int rc = EXIT_OK;
    double tp, tt;
    /* Warm-up, untimed: each prompt length once (cuBLAS loads its kernels
     * lazily, per shape) and each batch size once (decode graphs). */
    for (int a = 0; a < n_pp && rc == EXIT_OK; a++)
        if (run_one(e, npp[a], 2, 1, cfg.vocab_size, seed, &tp, &tt, &err))
            rc = cli_fail("bench", EXIT_FAILURE_, "%s", err.msg);
    for (int l = 0; l < n_pl && rc == EXIT_OK; l++)
        if (run_one(e, 16, 3, npl[l], cfg.vocab_size, seed, &tp, &tt, &err))
            rc = cli_fail("bench", EXIT_FAILURE_, "%s", err.msg);
    if (rc != EXIT_OK)
        goto out;
    printf("\n|    PP |     TG |    B |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |      T s "
           "|    S t/s |\n"
           "|-------|--------|------|--------|----------|----------|----------|----------|--------"
           "--|----------|\n");
    for (int a = 0; a < n_pp; a++)
        for (int b = 0; b < n_tg; b++)
            for (int l = 0; l < n_pl; l++) {
                int pp = npp[a], tg = ntg[b], B = npl[l];
                long long n_kv = (long long)B * (pp + tg);
                /* KV is allocated in pages of 16 positions per sequence. */
                long long need = (long long)B * ((pp + tg + 15) / 16 * 16);
                if (need > eng_kv_free_tokens(e)) {
                    printf("| %5d | %6d | %4d | %6lld | skipped: needs %lld KV tokens, %lld free |\n",
                           pp, tg, B, n_kv, need, (long long)eng_kv_free_tokens(e));
                    continue;
                }
#ifdef HAVE_CUDA
                if (profile)
                    cuda_engine_set_profiling(e, 1);
#endif
                if (run_one(e, pp, tg, B, cfg.vocab_size, seed + (uint64_t)a * 1000 + l, &tp, &tt,
                            &err)) {
                    rc = cli_fail("bench", EXIT_FAILURE_, "%s", err.msg);
                    goto out;
                }
                double T = tp + tt;
                printf("| %5d | %6d | %4d | %6lld | %8.3f | %8.2f | %8.3f | %8.2f | %8.3f | %8.2f |\n",
                       pp, tg, B, n_kv, tp, (double)B * pp / tp, tt,
                       tg ? (double)B * tg / tt : 0.0, T, (double)n_kv / T);
#ifdef HAVE_CUDA
                static char report[8192];
                if (profile && cuda_engine_profile_report(e, report, sizeof report) == 0)
                    printf("%s", report);
#endif
                fflush(stdout);
            }
out:
    eng_close(e);
    if (have_model)
        model_close(&m);
    return rc;
}
