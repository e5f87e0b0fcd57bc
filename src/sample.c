/*
 * sample.c - see sample.h. The steps run in the order vLLM and HF apply
 * them, over a candidate list that shrinks at each filter.
 */
#include "sample.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void sample_params_greedy(sample_params *sp)
{
    memset(sp, 0, sizeof *sp);
    sp->top_p = 1.0f;
}

double sample_uniform(uint64_t seed, uint64_t counter)
{
    /* splitmix64 over a mix of both: cheap, well distributed, and the same
     * formula runs on the GPU. */
    uint64_t z = seed * 0x9e3779b97f4a7c15ull + counter + 0x632be59bd9b4e019ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (double)(z >> 11) * (1.0 / 9007199254740992.0);
}

int sample_scratch_init(sample_scratch *s, int vocab)
{
    s->probs = malloc(sizeof *s->probs * (size_t)vocab);
    s->idx = malloc(sizeof *s->idx * (size_t)vocab);
    s->vocab = vocab;
    if (!s->probs || !s->idx) {
        sample_scratch_free(s);
        return -1;
    }
    return 0;
}

void sample_scratch_free(sample_scratch *s)
{
    free(s->probs);
    free(s->idx);
    s->probs = NULL;
    s->idx = NULL;
}

static int32_t argmax(const float *x, int n)
{
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}

/* Sorting candidates by logit, descending; ties by id so results never
 * depend on qsort's order. */
static int cmp_desc(const void *a, const void *b, void *ctx)
{
    const float *logits = ctx;
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    float lx = logits[x], ly = logits[y];
    if (lx != ly)
        return lx > ly ? -1 : 1;
    return x < y ? -1 : x > y;
}

/* The k best ids into idx[0..k), sorted. A bounded selection keeps top-k
 * sampling over 150k logits cheap: one pass with a small sorted buffer. */
static int top_candidates(const float *logits, int n, int k, int32_t *idx)
{
    if (k <= 0 || k >= n) {
        for (int i = 0; i < n; i++)
            idx[i] = i;
        qsort_r(idx, (size_t)n, sizeof *idx, cmp_desc, (void *)logits);
        return n;
    }
    int m = 0;
    for (int i = 0; i < n; i++) {
        float v = logits[i];
        if (m == k && !(v > logits[idx[m - 1]]))
            continue; /* not better than the worst kept (ties keep the lower id) */
        int j = m < k ? m++ : m - 1;
        while (j > 0 && logits[idx[j - 1]] < v) {
            idx[j] = idx[j - 1];
            j--;
        }
        idx[j] = i;
    }
    return m;
}

int32_t sample_token(const sample_params *sp, float *logits, int n_vocab, const int32_t *generated,
                     int n_generated, uint64_t counter, sample_scratch *s)
{
    if (sp->presence_penalty != 0) {
        /* Once per distinct token: mark with NaN-free sentinel in probs. */
        for (int i = 0; i < n_generated; i++)
            if (generated[i] >= 0 && generated[i] < n_vocab)
                s->probs[generated[i]] = 0;
        for (int i = 0; i < n_generated; i++) {
            int32_t t = generated[i];
            if (t >= 0 && t < n_vocab && s->probs[t] == 0) {
                logits[t] -= sp->presence_penalty;
                s->probs[t] = 1;
            }
        }
    }
    if (sp->temperature <= 0)
        return argmax(logits, n_vocab);

    int n = top_candidates(logits, n_vocab, sp->top_k, s->idx);
    float *p = s->probs;
    double max = logits[s->idx[0]], sum = 0;
    for (int i = 0; i < n; i++) {
        p[i] = (float)exp((logits[s->idx[i]] - max) / sp->temperature);
        sum += p[i];
    }
    for (int i = 0; i < n; i++)
        p[i] = (float)(p[i] / sum);
    if (sp->top_p > 0 && sp->top_p < 1) {
        /* Keep the smallest prefix whose mass reaches top_p (at least one). */
        double cum = 0;
        int keep = 0;
        while (keep < n && cum < sp->top_p)
            cum += p[keep++];
        n = keep;
    }
    if (sp->min_p > 0) {
        float floor_p = sp->min_p * p[0];
        int keep = 1;
        while (keep < n && p[keep] >= floor_p)
            keep++;
        n = keep;
    }
    double total = 0;
    for (int i = 0; i < n; i++)
        total += p[i];
    double u = sample_uniform(sp->seed, counter) * total, cum = 0;
    for (int i = 0; i < n; i++) {
        cum += p[i];
        if (u < cum)
            return s->idx[i];
    }
    return s->idx[n - 1];
}
