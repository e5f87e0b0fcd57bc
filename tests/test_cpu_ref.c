/*
 * test_cpu_ref.c - the CPU engine against Hugging Face, and batching
 * invariance.
 *
 * For every checkpoint under tests/fixtures/ref/models (written with HF's
 * logits by tests/gen_model_ref.py): every position's logits within 1e-3 of
 * the largest logit, the greedy continuation identical, and for each model
 * our RoPE table (default or YaRN) equal to HF's. Then, on one model, the
 * scheduler's freedoms must not change a sequence's numbers: ragged batches,
 * different prefill chunkings, sequences joining and leaving, and forks of
 * a shared prefix all give bit-identical logits to the sequence run alone.
 */
#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "engine.h"
#include "model.h"

static const char *srcdir(void) { return getenv("top_srcdir") ? getenv("top_srcdir") : "."; }

static float *read_f32(const char *path, size_t n)
{
    FILE *f = fopen(path, "rb");
    float *p = malloc(sizeof *p * n);
    if (!f || fread(p, sizeof *p, n, f) != n) {
        free(p);
        p = NULL;
    }
    if (f)
        fclose(f);
    return p;
}

static eng *open_engine(const model *m, int threads)
{
    eng_options o = {.backend = ENG_BACKEND_CPU, .n_threads = threads, .max_seqs = 8,
                     .max_kv_tokens = 4096, .max_step_tokens = 4096};
    eng *e = NULL;
    errbuf err = {{0}};
    CHECK_MSG(eng_open(&e, m, &o, &err) == 0, "%s", err.msg);
    return e;
}

static void check_model(const char *dir, int *n_models)
{
    char path[4096];
    errbuf err = {{0}};
    model m;
    if (model_open(&m, dir, &err)) {
        CHECK_MSG(0, "%s", err.msg);
        return;
    }
    (*n_models)++;
    snprintf(path, sizeof path, "%s/reference.json", dir);
    json_error_t je;
    json_t *ref = json_load_file(path, 0, &je);
    CHECK_MSG(ref != NULL, "%s: %s", path, je.text);
    int V = m.cfg.vocab_size;
    CHECK_INT_EQ(json_integer_value(json_object_get(ref, "vocab")), V);

    /* RoPE table against HF's. */
    float inv[512], af;
    model_rope_inv_freq(&m.cfg, inv, &af);
    json_t *hf_inv = json_object_get(ref, "inv_freq");
    CHECK_INT_EQ(json_array_size(hf_inv), m.cfg.head_dim / 2);
    for (size_t i = 0; i < json_array_size(hf_inv); i++) {
        double want = json_number_value(json_array_get(hf_inv, i));
        CHECK_MSG(fabs(inv[i] - want) <= 1e-6 * fabs(want) + 1e-12, "%s: inv_freq[%zu] %g vs %g",
                  dir, i, inv[i], want);
    }
    CHECK_MSG(fabs(af - json_number_value(json_object_get(ref, "attention_scaling"))) < 1e-6,
              "%s: attention scaling %g", dir, af);

    eng *e = open_engine(&m, 2);
    size_t ci;
    json_t *c;
    json_array_foreach(json_object_get(ref, "cases"), ci, c)
    {
        json_t *jids = json_object_get(c, "ids");
        int n = (int)json_array_size(jids);
        int32_t *ids = malloc(sizeof *ids * (size_t)n);
        for (int i = 0; i < n; i++)
            ids[i] = (int32_t)json_integer_value(json_array_get(jids, (size_t)i));
        snprintf(path, sizeof path, "%s/%s", dir,
                 json_string_value(json_object_get(c, "logits_file")));
        float *want = read_f32(path, (size_t)n * V);
        CHECK_MSG(want != NULL, "cannot read %s", path);
        float *got = malloc(sizeof *got * (size_t)n * V);
        sample_params sp;
        sample_params_greedy(&sp);
        int seq;
        CHECK(eng_seq_add(e, &sp, &seq, &err) == 0);
        eng_item it = {.seq = seq, .tokens = ids, .n_tokens = n, .logits = ENG_LOGITS_ALL};
        CHECK_MSG(eng_step(e, &it, 1, got, NULL, &err) == 0, "%s", err.msg);
        double max_err = 0, max_logit = json_number_value(json_object_get(c, "max_abs_logit"));
        for (size_t i = 0; want && i < (size_t)n * V; i++)
            max_err = fmax(max_err, fabs(got[i] - want[i]));
        printf("%s case %zu: %d positions, max |logit| %.3f, max error %.2e\n", dir, ci, n,
               max_logit, max_err);
        CHECK_MSG(max_err < 1e-3 * max_logit, "%s case %zu: max logit error %g (limit %g)", dir,
                  ci, max_err, 1e-3 * max_logit);
        eng_seq_release(e, seq);

        /* Greedy continuation. */
        json_t *greedy = json_object_get(c, "greedy");
        CHECK(eng_seq_add(e, &sp, &seq, &err) == 0);
        it = (eng_item){.seq = seq, .tokens = ids, .n_tokens = n, .sample = 1};
        int32_t next;
        for (size_t g = 0; g < json_array_size(greedy); g++) {
            CHECK(eng_step(e, &it, 1, NULL, &next, &err) == 0);
            CHECK_MSG(next == json_integer_value(json_array_get(greedy, g)),
                      "%s case %zu: greedy token %zu is %d, HF %lld", dir, ci, g, next,
                      (long long)json_integer_value(json_array_get(greedy, g)));
            ids[0] = next;
            it.tokens = ids;
            it.n_tokens = 1;
        }
        eng_seq_release(e, seq);
        free(ids);
        free(want);
        free(got);
    }
    eng_close(e);
    json_decref(ref);
    model_close(&m);
}

/* Logits of the last position of each prompt, run alone. */
static void run_alone(const model *m, int32_t (*prompts)[40], const int *lens, int n,
                      float *out)
{
    int V = m->cfg.vocab_size;
    eng *e = open_engine(m, 1);
    errbuf err = {{0}};
    sample_params sp;
    sample_params_greedy(&sp);
    for (int i = 0; i < n; i++) {
        int seq;
        CHECK(eng_seq_add(e, &sp, &seq, &err) == 0);
        eng_item it = {.seq = seq, .tokens = prompts[i], .n_tokens = lens[i],
                       .logits = ENG_LOGITS_LAST};
        CHECK(eng_step(e, &it, 1, out + (size_t)i * V, NULL, &err) == 0);
        eng_seq_release(e, seq);
    }
    eng_close(e);
}

static void check_batching(const char *dir)
{
    errbuf err = {{0}};
    model m;
    if (model_open(&m, dir, &err)) {
        CHECK_MSG(0, "%s", err.msg);
        return;
    }
    int V = m.cfg.vocab_size;
    enum { N = 4 };
    int32_t prompts[N][40];
    int lens[N] = {3, 40, 17, 29};
    for (int i = 0; i < N; i++)
        for (int t = 0; t < 40; t++)
            prompts[i][t] = (int32_t)((i * 131 + t * 29 + 7) % V);
    /* Sequence 3 shares its first 12 tokens with sequence 1 (for the fork). */
    memcpy(prompts[3], prompts[1], sizeof(int32_t) * 12);
    float *alone = malloc(sizeof(float) * N * V), *got = malloc(sizeof(float) * N * V);
    run_alone(&m, prompts, lens, N, alone);

    /* Together: ragged chunks over several steps, 2 threads, and sequence 3
     * forked from sequence 1's first 12 positions after sequence 1 started. */
    eng *e = open_engine(&m, 2);
    sample_params sp;
    sample_params_greedy(&sp);
    int s[N];
    for (int i = 0; i < 3; i++)
        CHECK(eng_seq_add(e, &sp, &s[i], &err) == 0);
    /* step 1: seq0 whole (3), seq1 first 12, seq2 first 5 */
    eng_item st1[3] = {{s[0], prompts[0], 3, ENG_LOGITS_LAST, 0},
                       {s[1], prompts[1], 12, ENG_LOGITS_NONE, 0},
                       {s[2], prompts[2], 5, ENG_LOGITS_NONE, 0}};
    float row[3 * 512];
    CHECK_MSG(eng_step(e, st1, 3, row, NULL, &err) == 0, "%s", err.msg);
    memcpy(got, row, sizeof(float) * V);
    eng_seq_release(e, s[0]); /* leaves */
    CHECK_MSG(eng_seq_fork(e, s[1], 12, &sp, &s[3], &err) == 0, "%s", err.msg);
    /* step 2: seq1 next 20, seq2 rest (12), seq3 rest after the fork (17) */
    eng_item st2[3] = {{s[1], prompts[1] + 12, 20, ENG_LOGITS_NONE, 0},
                       {s[2], prompts[2] + 5, 12, ENG_LOGITS_LAST, 0},
                       {s[3], prompts[3] + 12, 17, ENG_LOGITS_LAST, 0}};
    CHECK_MSG(eng_step(e, st2, 3, row, NULL, &err) == 0, "%s", err.msg);
    memcpy(got + 2 * V, row, sizeof(float) * V);
    memcpy(got + 3 * V, row + V, sizeof(float) * V);
    /* step 3: seq1 last 8 tokens, alone */
    eng_item st3 = {s[1], prompts[1] + 32, 8, ENG_LOGITS_LAST, 0};
    CHECK(eng_step(e, &st3, 1, row, NULL, &err) == 0);
    memcpy(got + V, row, sizeof(float) * V);
    for (int i = 0; i < N; i++)
        CHECK_MSG(!memcmp(got + (size_t)i * V, alone + (size_t)i * V, sizeof(float) * V),
                  "sequence %d: batched logits differ from the sequence run alone", i);
    /* A full cache is an error, not a crash, and leaves the others intact. */
    int32_t many[4096] = {0};
    eng_item big = {s[2], many, 4096, ENG_LOGITS_NONE, 0};
    CHECK(eng_step(e, &big, 1, NULL, NULL, &err) < 0);
    CHECK_MSG(strstr(err.msg, "KV cache") != NULL, "%s", err.msg);
    eng_close(e);
    free(alone);
    free(got);
    model_close(&m);
}

int main(void)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tests/fixtures/ref/models", srcdir());
    DIR *d = opendir(dir);
    CHECK_MSG(d != NULL, "cannot open %s", dir);
    int n_models = 0;
    struct dirent *de;
    char names[16][256];
    int n = 0;
    while (d && (de = readdir(d)) && n < 16)
        if (de->d_name[0] != '.' && !strchr(de->d_name, '.')) /* folders, not *.json */
            snprintf(names[n++], 256, "%s", de->d_name);
    if (d)
        closedir(d);
    for (int i = 0; i < n; i++) {
        char p[8192];
        snprintf(p, sizeof p, "%s/%s", dir, names[i]);
        check_model(p, &n_models);
    }
    CHECK_MSG(n_models >= 5, "only %d reference models", n_models);
    snprintf(dir, sizeof dir, "%s/tests/fixtures/ref/models/bf16_untied_gqa", srcdir());
    check_batching(dir);
    return check_exit("test_cpu_ref");
}
