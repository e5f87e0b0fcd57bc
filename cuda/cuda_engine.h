/*
 * cuda_engine.h - the CUDA backend of engine.h (the only header of cuda/ that
 * src/ includes).
 *
 * cuda_engine_open() uploads the model once (AWQ layers repacked for the
 * int4 kernels, dense bf16/f16/f32 layers converted to fp16, norms in fp32),
 * plans GPU memory up front from opts->gpu_memory_budget (weights,
 * activations for opts->max_step_tokens, workspace, then KV pages with what
 * is left, or exactly opts->max_kv_tokens) and fails with a message that
 * says what to lower when the plan does not fit. Nothing is allocated later.
 *
 * Differences from the CPU engine a caller may notice: activations and
 * weights are fp16 (logits agree to fp16 tolerance, greedy tokens agree
 * except on near ties); the sampler keeps at most the 1024 most likely
 * tokens when top_k is 0 or larger; eng_kv_free_tokens counts whole free
 * pages (16 positions each).
 *
 * The engine borrows the model, which must outlive it; untied models keep
 * the embedding table in host memory (the model's mapping) and copy only the
 * rows a step needs.
 */
#ifndef Q3_CUDA_ENGINE_H
#define Q3_CUDA_ENGINE_H

#include <stdint.h>

#include "engine.h"

#ifdef __cplusplus
extern "C" {
#endif

/* 1 when a CUDA device is present and usable, else 0 (never fails). */
int cuda_engine_available(void);

int cuda_engine_open(eng **out, const model *m, const eng_options *opts, errbuf *err);

/* An engine over random AWQ int4 weights in the shapes of cfg (which must
 * outlive the engine; cfg->is_awq is ignored: it is always AWQ), built on the
 * GPU from seed without files: for benchmarks. */
int cuda_engine_open_synthetic(eng **out, const model_config *cfg, const eng_options *opts,
                               uint64_t seed, errbuf *err);

/* Memory plan of an open CUDA engine, in bytes (for bench and logs). */
typedef struct cuda_engine_info {
    char device[128];
    int sm_major, sm_minor, n_sm;
    size_t budget, weights, activations, kv_cache, workspace;
    int64_t kv_tokens;
    int page_size, max_step_tokens, embed_on_host;
} cuda_engine_info;

/* Fills info when e is a CUDA engine; returns -1 otherwise. */
int cuda_engine_get_info(const eng *e, cuda_engine_info *info);

/* Profiling: with on, each pass records CUDA events between its kernels
 * (slower: for measurement only) and accumulates the time per operation,
 * separately for decode-only passes (<= 64 tokens) and the rest; turning it
 * on again resets the sums. The report is text, one line per operation. */
int cuda_engine_set_profiling(eng *e, int on);
int cuda_engine_profile_report(const eng *e, char *buf, size_t cap);

#ifdef __cplusplus
}
#endif

#endif
