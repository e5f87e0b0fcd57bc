/*
 * test_sample.c - the sampler's properties: greedy is the argmax (lowest id
 * on ties), top-k 1 is greedy, top-p and min-p drop exactly the tail they
 * should, the presence penalty counts each token once, draws are
 * reproducible from (seed, counter), frequencies over many counters match
 * the softmax probabilities, and the fast path (sorted prefix, radix sort)
 * picks the same token as a plain full sort would.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "sample.h"

static sample_scratch scratch;

static int32_t draw(const sample_params *sp, const float *logits, int n, const int32_t *gen,
                    int n_gen, uint64_t counter)
{
    float *copy = malloc(sizeof *copy * (size_t)n);
    memcpy(copy, logits, sizeof *copy * (size_t)n);
    int32_t t = sample_token(sp, copy, n, gen, n_gen, counter, &scratch);
    free(copy);
    return t;
}

/* Logits whose softmax at temperature 1 is exactly probs. */
static void logits_of(const double *probs, int n, float *logits)
{
    for (int i = 0; i < n; i++)
        logits[i] = (float)log(probs[i]);
}

/* Deterministic pseudo-random numbers for test data (not the sampler's). */
static uint64_t rng_state = 12345;
static double rng_unit(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(rng_state >> 11) / 9007199254740992.0;
}
static float rng_normal(void)
{
    double u = rng_unit() + 1e-300, v = rng_unit();
    return (float)(sqrt(-2 * log(u)) * cos(6.283185307179586 * v));
}

static void test_uniform(void)
{
    double sum = 0;
    int in_range = 1;
    for (uint64_t c = 0; c < 100000; c++) {
        double u = sample_uniform(7, c);
        in_range &= u >= 0 && u < 1;
        sum += u;
    }
    CHECK(in_range);
    CHECK_MSG(fabs(sum / 100000 - 0.5) < 0.005, "mean %g", sum / 100000);
    CHECK(sample_uniform(7, 3) == sample_uniform(7, 3));
    CHECK(sample_uniform(7, 3) != sample_uniform(8, 3));
    CHECK(sample_uniform(7, 3) != sample_uniform(7, 4));
}

static void test_greedy(void)
{
    sample_params sp;
    sample_params_greedy(&sp);
    CHECK(sp.temperature == 0 && sp.top_k == 0 && sp.top_p == 1 && sp.min_p == 0 &&
          sp.presence_penalty == 0);
    enum { N = 1000 };
    float logits[N];
    for (int trial = 0; trial < 20; trial++) {
        int best = 0;
        for (int i = 0; i < N; i++) {
            logits[i] = rng_normal();
            if (logits[i] > logits[best])
                best = i;
        }
        CHECK_INT_EQ(draw(&sp, logits, N, NULL, 0, (uint64_t)trial), best);
    }
    /* Ties go to the lowest id. */
    for (int i = 0; i < N; i++)
        logits[i] = 0;
    logits[700] = logits[300] = logits[301] = 5;
    CHECK_INT_EQ(draw(&sp, logits, N, NULL, 0, 0), 300);
    /* Only ids below n_vocab are candidates. */
    logits[5] = 1;
    CHECK_INT_EQ(draw(&sp, logits, 200, NULL, 0, 0), 5);
}

static void test_top_k_one_is_greedy(void)
{
    enum { N = 5000 };
    float logits[N];
    sample_params sp = {.temperature = 1.5f, .top_k = 1, .top_p = 1, .seed = 3};
    int same = 1;
    for (int trial = 0; trial < 50; trial++) {
        int best = 0;
        for (int i = 0; i < N; i++) {
            logits[i] = rng_normal();
            if (logits[i] > logits[best])
                best = i;
        }
        same &= draw(&sp, logits, N, NULL, 0, (uint64_t)trial) == best;
    }
    CHECK_MSG(same, "top-k 1 picked something other than the argmax");
}

/* Frequencies of each id over `draws` counters. */
static void histogram(const sample_params *sp, const float *logits, int n, int draws, int *count)
{
    memset(count, 0, sizeof *count * (size_t)n);
    for (int c = 0; c < draws; c++) {
        int32_t t = draw(sp, logits, n, NULL, 0, (uint64_t)c);
        if (t >= 0 && t < n)
            count[t]++;
    }
}

/* |frequency - p| within 5 standard deviations for every id. */
static void check_frequencies(const char *what, const int *count, const double *p, int n, int draws)
{
    for (int i = 0; i < n; i++) {
        double f = (double)count[i] / draws;
        double sd = sqrt(p[i] * (1 - p[i]) / draws);
        CHECK_MSG(fabs(f - p[i]) <= 5 * sd + 1e-12, "%s: id %d drawn %.4f of the time, p %.4f",
                  what, i, f, p[i]);
    }
}

static void test_top_p_min_p(void)
{
    double probs[6] = {0.40, 0.25, 0.15, 0.10, 0.06, 0.04};
    float logits[6];
    logits_of(probs, 6, logits);
    int count[6];
    enum { DRAWS = 20000 };

    /* top-p 0.75: {0.40, 0.25} = 0.65 < 0.75, adding 0.15 reaches it: the
     * nucleus is the first three, renormalized. */
    sample_params sp = {.temperature = 1, .top_p = 0.75f, .seed = 11};
    histogram(&sp, logits, 6, DRAWS, count);
    double nucleus[6] = {0.40 / 0.8, 0.25 / 0.8, 0.15 / 0.8, 0, 0, 0};
    check_frequencies("top-p 0.75", count, nucleus, 6, DRAWS);
    CHECK(count[3] == 0 && count[4] == 0 && count[5] == 0);

    /* min-p 0.3: keep p >= 0.12, i.e. the first three. */
    sp = (sample_params){.temperature = 1, .top_p = 1, .min_p = 0.3f, .seed = 12};
    histogram(&sp, logits, 6, DRAWS, count);
    check_frequencies("min-p 0.3", count, nucleus, 6, DRAWS);

    /* top-k 4 then top-p over the survivors: renormalized {.4,.25,.15,.1}/.9
     * = {.444,.278,.167,.111}; top-p 0.7 keeps the first two (0.722). */
    sp = (sample_params){.temperature = 1, .top_k = 4, .top_p = 0.7f, .seed = 13};
    histogram(&sp, logits, 6, DRAWS, count);
    double kp[6] = {0.40 / 0.65, 0.25 / 0.65, 0, 0, 0, 0};
    check_frequencies("top-k 4, top-p 0.7", count, kp, 6, DRAWS);

    /* top-p tiny: always the best token. */
    sp = (sample_params){.temperature = 1, .top_p = 0.01f, .seed = 14};
    histogram(&sp, logits, 6, 2000, count);
    CHECK_INT_EQ(count[0], 2000);
}

static void test_softmax_distribution(void)
{
    enum { N = 8, DRAWS = 40000 };
    float logits[N] = {1.0f, 0.2f, -0.5f, 2.0f, 0.0f, 1.5f, -2.0f, 0.7f};
    int count[N];
    for (int ti = 0; ti < 2; ti++) {
        float temp = ti ? 1.7f : 0.6f;
        double p[N], z = 0;
        for (int i = 0; i < N; i++)
            z += p[i] = exp(logits[i] / temp);
        for (int i = 0; i < N; i++)
            p[i] /= z;
        sample_params sp = {.temperature = temp, .top_p = 1, .seed = 99};
        histogram(&sp, logits, N, DRAWS, count);
        check_frequencies(ti ? "temperature 1.7" : "temperature 0.6", count, p, N, DRAWS);
        /* The same with top-k = all: the same distribution. */
        sp.top_k = N;
        histogram(&sp, logits, N, DRAWS, count);
        check_frequencies("top-k = vocab", count, p, N, DRAWS);
    }
}

static void test_presence_penalty(void)
{
    float logits[5] = {2.0f, 1.9f, 0.5f, 0.1f, -1.0f};
    sample_params sp;
    sample_params_greedy(&sp);
    CHECK_INT_EQ(draw(&sp, logits, 5, NULL, 0, 0), 0);
    int32_t gen[3] = {0, 0, 0};
    sp.presence_penalty = 0.5f;
    CHECK_INT_EQ(draw(&sp, logits, 5, gen, 1, 0), 1);
    /* Once per distinct token: 0.05 three times would make 0 lose (1.85). */
    sp.presence_penalty = 0.05f;
    CHECK_INT_EQ(draw(&sp, logits, 5, gen, 3, 0), 0);
    /* Negative penalties favour repeats. */
    int32_t g2[1] = {2};
    sp.presence_penalty = -2.0f;
    CHECK_INT_EQ(draw(&sp, logits, 5, g2, 1, 0), 2);
    /* The penalty edits the logits in place, before temperature. */
    float copy[5];
    memcpy(copy, logits, sizeof copy);
    sp = (sample_params){.temperature = 0, .top_p = 1, .presence_penalty = 1.0f};
    sample_token(&sp, copy, 5, gen, 3, 0, &scratch);
    CHECK(copy[0] == 1.0f && copy[1] == 1.9f);
}

static void test_reproducible(void)
{
    enum { N = 3000 };
    float logits[N];
    for (int i = 0; i < N; i++)
        logits[i] = rng_normal();
    sample_params sp = {.temperature = 0.9f, .top_k = 50, .top_p = 0.9f, .seed = 5};
    int32_t a[64], b[64], c[64];
    for (int i = 0; i < 64; i++) {
        a[i] = draw(&sp, logits, N, NULL, 0, (uint64_t)i);
        b[i] = draw(&sp, logits, N, NULL, 0, (uint64_t)i);
    }
    sp.seed = 6;
    for (int i = 0; i < 64; i++)
        c[i] = draw(&sp, logits, N, NULL, 0, (uint64_t)i);
    CHECK(!memcmp(a, b, sizeof a));
    CHECK_MSG(memcmp(a, c, sizeof a) != 0, "seeds 5 and 6 drew the same 64 tokens");
    int distinct = 0;
    for (int i = 1; i < 64; i++)
        distinct += a[i] != a[0];
    CHECK_MSG(distinct > 0, "64 counters drew the same token");
}

/* The definition, written plainly: sort everything with qsort, normalize
 * over the candidates, filter, walk. The sampler must agree exactly. */
static const float *ref_logits;
static int ref_cmp(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    if (ref_logits[x] != ref_logits[y])
        return ref_logits[x] > ref_logits[y] ? -1 : 1;
    return x < y ? -1 : 1;
}

/* All ids by logit, descending, ties by id: the order the draw walks. */
static void reference_order(const float *logits, int n_vocab, int32_t *idx)
{
    for (int i = 0; i < n_vocab; i++)
        idx[i] = i;
    ref_logits = logits;
    qsort(idx, (size_t)n_vocab, sizeof *idx, ref_cmp);
}

static int32_t reference_sample(const sample_params *sp, const float *logits, const int32_t *idx,
                                int n_vocab, uint64_t counter)
{
    float *p = malloc(sizeof *p * (size_t)n_vocab);
    int topk = sp->top_k > 0 && sp->top_k < n_vocab;
    int n = topk ? sp->top_k : n_vocab;
    float best = logits[idx[0]];
    double z = 0;
    for (int i = 0; i < n; i++) /* summed in the sampler's order */
        z += expf((logits[topk ? idx[i] : i] - best) / sp->temperature);
    for (int i = 0; i < n; i++)
        p[i] = (float)(expf((logits[idx[i]] - best) / sp->temperature) / z);
    int survivors = n, cut = 0;
    if (sp->top_p > 0 && sp->top_p < 1) {
        double cum = 0;
        int keep = 0;
        while (keep < n && cum < sp->top_p)
            cum += p[keep++];
        survivors = keep;
        cut = 1;
    }
    if (sp->min_p > 0) {
        int keep = 1;
        while (keep < survivors && p[keep] >= sp->min_p * p[0])
            keep++;
        survivors = keep;
        cut = 1;
    }
    double total = 1;
    if (cut) {
        total = 0;
        for (int i = 0; i < survivors; i++)
            total += p[i];
    }
    double target = sample_uniform(sp->seed, counter) * total, cum = 0;
    int32_t tok = idx[survivors - 1];
    for (int i = 0; i < survivors; i++) {
        cum += p[i];
        if (target < cum) {
            tok = idx[i];
            break;
        }
    }
    free(p);
    return tok;
}

static void test_matches_full_sort(void)
{
    /* Qwen3's vocabulary size, flat and peaked distributions, ties. */
    enum { V = 151936 };
    float *logits = malloc(sizeof *logits * V);
    int32_t *order = malloc(sizeof *order * V);
    const sample_params cases[] = {
        {.temperature = 0.7f, .top_p = 1, .seed = 1},
        {.temperature = 1.0f, .top_p = 0.9f, .seed = 2},
        {.temperature = 0.6f, .top_k = 20, .top_p = 0.95f, .seed = 3},
        {.temperature = 1.2f, .top_p = 1, .min_p = 0.05f, .seed = 4},
        {.temperature = 0.8f, .top_k = 3000, .top_p = 0.8f, .seed = 5},
        {.temperature = 1.0f, .top_p = 0.5f, .min_p = 0.5f, .seed = 6},
    };
    int mismatches = 0, checked = 0;
    for (int shape = 0; shape < 4; shape++) {
        for (int i = 0; i < V; i++) {
            float g = rng_normal();
            /* flat; peaked (a few ids far ahead); coarse (many exact ties);
             * ~300 tied leaders, so nuclei outgrow the first sorted prefix */
            logits[i] = shape == 0   ? g
                        : shape == 1 ? g * 3
                        : shape == 2 ? roundf(g * 2) / 2
                                     : (i % 509 < 1 ? 12.0f : 0.0f) + (g > 2.5f ? 0.5f : 0.0f);
        }
        if (shape == 1)
            for (int i = 0; i < 40; i++)
                logits[(i * 7919) % V] += 14.0f - 0.2f * i;
        reference_order(logits, V, order);
        for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
            for (uint64_t counter = 0; counter < 8; counter++) {
                int32_t want = reference_sample(&cases[c], logits, order, V, counter);
                int32_t got = draw(&cases[c], logits, V, NULL, 0, counter);
                checked++;
                if (got != want) {
                    mismatches++;
                    fprintf(stderr, "shape %d case %zu counter %llu: sampled %d, full sort %d\n",
                            shape, c, (unsigned long long)counter, got, want);
                }
            }
    }
    CHECK_MSG(mismatches == 0, "%d of %d draws differ from the full-sort definition", mismatches,
              checked);
    free(logits);
    free(order);
}

int main(void)
{
    CHECK(sample_scratch_init(&scratch, 151936) == 0);
    test_uniform();
    test_greedy();
    test_top_k_one_is_greedy();
    test_top_p_min_p();
    test_softmax_distribution();
    test_presence_penalty();
    test_reproducible();
    test_matches_full_sort();
    sample_scratch_free(&scratch);
    return check_exit("test_sample");
}
