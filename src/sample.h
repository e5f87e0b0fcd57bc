/*
 * sample.h - choosing the next token from logits.
 *
 * Greedy (temperature 0), temperature, top-k, top-p, min-p and a presence
 * penalty, in vLLM/HF order: penalty on raw logits, then temperature, then
 * top-k, top-p (nucleus over the top-k survivors), min-p, then one draw.
 *
 * Randomness is counter based: the draw for the n-th sampled token of a
 * sequence uses sample_uniform(seed, n), so a sequence's text depends only on
 * its seed and its own logits, not on what else shares the batch or on where
 * a resumed run restarted. The CUDA sampler uses the same function.
 */
#ifndef Q3_SAMPLE_H
#define Q3_SAMPLE_H

#include <stddef.h>
#include <stdint.h>

typedef struct sample_params {
    float temperature;      /* 0 = greedy */
    int top_k;              /* 0 = off */
    float top_p;            /* 1 = off */
    float min_p;            /* 0 = off */
    float presence_penalty; /* 0 = off; subtracted once from every token already generated */
    uint64_t seed;
} sample_params;

/* Greedy defaults (temperature 0, everything off). */
void sample_params_greedy(sample_params *sp);

/* A uniform draw in [0, 1) from (seed, counter): splitmix64 of both. */
double sample_uniform(uint64_t seed, uint64_t counter);

/* Scratch memory for one call, sized for vocab; reused across calls. Owned:
 * sample_scratch_init allocates, sample_scratch_free frees. */
typedef struct sample_scratch {
    float *probs;
    int32_t *idx;
    int vocab;
    /* private: the radix sort of the candidates */
    uint32_t *keys, *keys_tmp;
    int32_t *idx_tmp;
} sample_scratch;

int sample_scratch_init(sample_scratch *s, int vocab);
void sample_scratch_free(sample_scratch *s);

/*
 * Picks a token from logits[0..n_vocab) (modified in place).
 * generated/n_generated: the tokens this sequence has sampled so far (for the
 * presence penalty; may repeat). counter: how many tokens this sequence has
 * sampled before (the draw index). Ties in greedy go to the lowest id.
 */
int32_t sample_token(const sample_params *sp, float *logits, int n_vocab, const int32_t *generated,
                     int n_generated, uint64_t counter, sample_scratch *scratch);

#endif
