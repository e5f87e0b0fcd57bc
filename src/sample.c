/*
 * sample.c - see sample.h. The steps run in the order vLLM and HF apply
 * them: presence penalty on the raw logits, temperature, top-k, top-p over
 * the top-k survivors, min-p, then one draw walking the survivors from the
 * most likely down (ties: lower id first).
 *
 * The filters and the draw only ever look at a prefix of the candidates
 * sorted by logit, so instead of sorting 150k logits for every token we sort
 * the best few and widen the prefix only when a walk runs off its end. The
 * answer is the same as with a full sort: the prefix is exactly the first m
 * entries of the full order, and every quantity is computed the same way
 * whatever m is.
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
    memset(s, 0, sizeof *s);
    s->vocab = vocab;
    s->probs = malloc(sizeof *s->probs * (size_t)vocab);
    s->idx = malloc(sizeof *s->idx * (size_t)vocab);
    s->idx_tmp = malloc(sizeof *s->idx_tmp * (size_t)vocab);
    s->keys = malloc(sizeof *s->keys * (size_t)vocab);
    s->keys_tmp = malloc(sizeof *s->keys_tmp * (size_t)vocab);
    if (!s->probs || !s->idx || !s->idx_tmp || !s->keys || !s->keys_tmp) {
        sample_scratch_free(s);
        return -1;
    }
    return 0;
}

void sample_scratch_free(sample_scratch *s)
{
    free(s->probs);
    free(s->idx);
    free(s->idx_tmp);
    free(s->keys);
    free(s->keys_tmp);
    s->probs = NULL;
    s->idx = NULL;
    s->idx_tmp = NULL;
    s->keys = NULL;
    s->keys_tmp = NULL;
}

/* The first index of the largest value (the running maximum kept in a
 * variable: reloading x[best] would chain every step through memory). */
static int32_t argmax(const float *x, int n)
{
    int32_t best = 0;
    float best_value = x[0];
    for (int i = 1; i < n; i++)
        if (x[i] > best_value) {
            best_value = x[i];
            best = i;
        }
    return best;
}

/* A key whose ascending order is the logits' descending order: the float's
 * bits made monotonic (negatives flipped whole, positives get the sign bit),
 * then inverted. */
static uint32_t desc_key(float f)
{
    uint32_t b;
    if (f == 0)
        f = 0; /* -0 ties with +0, as in the float comparisons elsewhere */
    memcpy(&b, &f, sizeof b);
    b = (b & 0x80000000u) ? ~b : b | 0x80000000u;
    return ~b;
}

/* All n ids into s->idx sorted by logit descending, ties by lower id: an LSD
 * radix sort (stable, so ids that start ascending stay so among equals),
 * four passes of 8 bits. Exact like a comparison sort, and ~20x faster than
 * qsort over a 150k vocabulary, which matters for flat distributions. */
static void sort_all(const float *logits, int n, sample_scratch *s)
{
    uint32_t *key = s->keys, *key_tmp = s->keys_tmp;
    int32_t *idx = s->idx, *idx_tmp = s->idx_tmp;
    for (int i = 0; i < n; i++) {
        idx[i] = i;
        key[i] = desc_key(logits[i]);
    }
    for (int shift = 0; shift < 32; shift += 8) {
        int count[257] = {0};
        for (int i = 0; i < n; i++)
            count[((key[i] >> shift) & 0xff) + 1]++;
        for (int d = 0; d < 256; d++)
            count[d + 1] += count[d];
        for (int i = 0; i < n; i++) {
            int at = count[(key[i] >> shift) & 0xff]++;
            key_tmp[at] = key[i];
            idx_tmp[at] = idx[i];
        }
        uint32_t *kt = key;
        key = key_tmp;
        key_tmp = kt;
        int32_t *it = idx;
        idx = idx_tmp;
        idx_tmp = it;
    }
    /* Four passes: the sorted data is back in s->keys / s->idx. */
}

/* The k best ids into s->idx[0..k), best first; returns min(k, n). Small k:
 * one pass keeping a sorted buffer (insertion); otherwise sort everything. */
static int top_candidates(const float *logits, int n, int k, sample_scratch *s)
{
    if (k <= 0 || k >= n || k > 1024) {
        sort_all(logits, n, s);
        return k > 0 && k < n ? k : n;
    }
    int32_t *idx = s->idx;
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

enum { NEED_MORE = -1 };

/*
 * Filters and draws over the first m of the n candidates (sorted in idx).
 * z: the softmax normalizer over all n candidates (relative to the best
 * logit, at temperature). Returns the token, or NEED_MORE when the answer
 * depends on candidates beyond m (only possible while m < n).
 */
static int32_t pick(const sample_params *sp, const float *logits, const int32_t *idx, int m, int n,
                    double z, double u, float *p)
{
    float best = logits[idx[0]];
    for (int i = 0; i < m; i++)
        p[i] = (float)(expf((logits[idx[i]] - best) / sp->temperature) / z);

    int survivors = n, cut = 0;
    if (sp->top_p > 0 && sp->top_p < 1) {
        /* The smallest prefix whose mass reaches top_p (at least one). */
        double cum = 0;
        int keep = 0;
        while (keep < m && cum < sp->top_p)
            cum += p[keep++];
        if (cum < sp->top_p && m < n)
            return NEED_MORE;
        survivors = cum < sp->top_p ? n : keep; /* m == n: rounding left it short */
        cut = 1;
    }
    if (sp->min_p > 0) {
        float floor_p = sp->min_p * p[0];
        int keep = 1;
        while (keep < survivors && keep < m && p[keep] >= floor_p)
            keep++;
        if (keep == m && m < survivors)
            return NEED_MORE;
        survivors = keep;
        cut = 1;
    }
    /* The draw over the survivors' mass (all of it when nothing was cut). */
    double total = 1.0;
    if (cut) {
        total = 0;
        for (int i = 0; i < survivors; i++)
            total += p[i];
    }
    double target = u * total, cum = 0;
    int walk = survivors < m ? survivors : m;
    for (int i = 0; i < walk; i++) {
        cum += p[i];
        if (target < cum)
            return idx[i];
    }
    if (survivors <= m)
        return idx[survivors - 1]; /* rounding left the target past the end */
    return NEED_MORE;
}

int32_t sample_token(const sample_params *sp, float *logits, int n_vocab, const int32_t *generated,
                     int n_generated, uint64_t counter, sample_scratch *s)
{
    if (sp->presence_penalty != 0) {
        /* Once per distinct token, however often it was generated: probs
         * serves as the "already penalized" mark. */
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

    double u = sample_uniform(sp->seed, counter);
    if (sp->top_k > 0 && sp->top_k < n_vocab) {
        int n = top_candidates(logits, n_vocab, sp->top_k, s);
        float best = logits[s->idx[0]];
        double z = 0;
        for (int i = 0; i < n; i++)
            z += expf((logits[s->idx[i]] - best) / sp->temperature);
        return pick(sp, logits, s->idx, n, n, z, u, s->probs);
    }
    /* No top-k: every id is a candidate; the normalizer needs one pass. */
    float best = logits[argmax(logits, n_vocab)];
    double z = 0;
    for (int i = 0; i < n_vocab; i++)
        z += expf((logits[i] - best) / sp->temperature);
    for (int m = 64;; m = n_vocab) {
        m = top_candidates(logits, n_vocab, m, s);
        int32_t tok = pick(sp, logits, s->idx, m, n_vocab, z, u, s->probs);
        if (tok != NEED_MORE)
            return tok;
    }
}
