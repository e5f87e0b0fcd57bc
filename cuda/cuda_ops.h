/*
 * cuda_ops.h - the launchers of the CUDA kernels, callable from C.
 *
 * Each .cu file in cuda/ holds the kernels of one concern and the launchers
 * declared here; cuda/cuda_engine.c (plain C) drives them. Launchers check
 * their arguments' shapes where a bad shape would read out of bounds, queue
 * the work on the given stream and return cudaGetLastError(): the caller
 * checks every return (CU_CHECK in cuda_engine.c).
 *
 * Tensors are row-major. "f16" is IEEE half, passed as void * so that C code
 * needs no CUDA half type. All pointers are device pointers unless noted.
 */
#ifndef Q3_CUDA_OPS_H
#define Q3_CUDA_OPS_H

#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * The paged KV cache. A page holds page_size consecutive positions of one
 * sequence; each layer has its own region of n_pages pages, so that a
 * layer's keys are near each other (one step's attention touches few
 * address-translation pages). Element (layer, page, kv (0 = K, 1 = V),
 * head, t, d) lives at
 *   ((((layer * n_pages + page) * 2 + kv) * n_kv_heads + head) * page_size + t) * head_dim + d
 * in fp16, or in int8 with one fp16 scale per (layer, page, kv, head, t) at
 *   (((layer * n_pages + page) * 2 + kv) * n_kv_heads + head) * page_size + t.
 * Copying a page (copy-on-write at a fork) is one strided copy.
 */
typedef struct cu_kv {
    void *data;
    void *scales; /* int8 only */
    int n_layers, n_kv_heads, head_dim, page_size;
    int n_pages; /* pages per layer region */
    int int8;
} cu_kv;

/* One sequence's tokens in a step: tokens [tok0, tok0 + n_tok) of the packed
 * step, at positions pos0.., whose KV pages are pages[page0 ...]. */
typedef struct cu_attn_seg {
    int tok0, n_tok, pos0, page0;
} cu_attn_seg;

/* One thread block of attention: rows [row0, row0 + rows_per_block) of the
 * segment, where row r is token r / G and query head kv_head * G + r % G
 * (G = n_heads / n_kv_heads), against keys [key_begin, key_end). part < 0
 * writes the output; part >= 0 writes a partial result for combine entry
 * comb, and the last of its blocks to finish merges them. */
typedef struct cu_attn_work {
    int seg, kv_head, row0, key_begin, key_end, part, comb;
} cu_attn_work;

/* Merges n_parts partial results (parts part0..) of 16 rows. */
typedef struct cu_attn_combine {
    int seg, kv_head, row0, n_parts, part0;
} cu_attn_combine;

/* One sampled token: logits row `row` of the chunk; the same semantics as
 * sample_token() in src/sample.h. */
typedef struct cu_sample_job {
    int row, out;
    int pen_begin, pen_count; /* distinct tokens to penalize in the penalty list */
    float temperature, top_p, min_p, presence_penalty;
    int top_k, n_valid;
    uint64_t seed, counter;
} cu_sample_job;

/* ---- gemm_w4a16.cu: int4 AWQ weights x fp16 activations ---- */

/*
 * Packed int4 layout ("tiles"): for each 16-column tile nt and 64-row k-tile
 * kt, 32 lanes x 16 bytes at ((nt * (K / 64) + kt) * 32 + lane) * 16. Word ks
 * (0..3) of a lane holds the 8 weights that lane needs as mma.m16n8k16 B
 * fragments for rows kt*64 + ks*16..: nibble j (j = 2 t + r, t = 8-column
 * half, r = fragment register) is W[k][n] with k = ks*16 + r*8 + 2 (lane % 4),
 * n = nt*16 + t*8 + lane / 4, and nibble j + 4 is W[k + 1][n].
 * sz: [K / group][N] pairs of fp16 (scale, 1024 + zero), w = (q - zero) * scale.
 * Needs K % 64 == 0, N % 16 == 0, group % 16 == 0, K % group == 0.
 */
size_t cu_w4_qw_bytes(int K, int N);
size_t cu_w4_sz_bytes(int K, int N, int group);

/* Repacks one AWQ tensor (qweight [K][n_src/8] int32 with AWQ nibble order,
 * qzeros [K/group][n_src/8], scales fp16 [K/group][n_src]) into columns
 * [n_offset, n_offset + n_src) of a packed matrix with N columns. */
cudaError_t cu_awq_repack(const int32_t *qweight, const int32_t *qzeros, const void *scales, int K,
                          int n_src, int group, int n_offset, int N, void *qw, void *sz,
                          cudaStream_t s);

/* Random packed weights (uniform nibbles, zero 8, scales near `scale`). */
cudaError_t cu_awq_synth(void *qw, void *sz, int K, int N, int group, uint64_t seed, float scale,
                         cudaStream_t s);

/*
 * y[M][N] (fp16, row stride ldy) = x[M][K] (fp16, row stride ldx) times the
 * packed weights. Tensor cores, weights dequantized in registers; meant for
 * small M (decode) but correct for any M. part: fp32 scratch of part_floats
 * (at least cu_w4a16_part_floats) for split-K partial sums (deterministic:
 * no atomics). Batches of up to 16 rows and larger ones run different
 * kernels: a row gets the same sums in any batch on the same side of 16
 * (the splits depend on K, N and the GPU only), and sums equal to fp32
 * rounding across it.
 */
cudaError_t cu_w4a16_gemm(const void *x, int M, int ldx, const void *qw, const void *sz, int K,
                          int N, int group, void *y, int ldy, float *part, size_t part_floats,
                          int n_sm, cudaStream_t s);

/* Scratch floats cu_w4a16_gemm needs for this shape; zero the scratch once
 * with cu_w4a16_init_scratch before the first product. */
size_t cu_w4a16_part_floats(int K, int N, int n_sm);
cudaError_t cu_w4a16_init_scratch(float *part, size_t part_floats, cudaStream_t s);
int cu_w4a16_splits(int K, int N, int n_sm);

/* Dequantizes columns [n_begin, n_begin + n_count) to fp16 w[n_count][K]
 * (row n = output feature), for a cuBLAS product at large M. */
cudaError_t cu_w4a16_dequant(const void *qw, const void *sz, int K, int N, int group, int n_begin,
                             int n_count, void *w, cudaStream_t s);

/* ---- convert.cu: dtype conversion, fills, embeddings ---- */

/* dtype: enum model_dtype (MODEL_F32 0, MODEL_F16 1, MODEL_BF16 2). */
cudaError_t cu_to_f16(const void *src, int dtype, size_t n, void *dst, cudaStream_t s);
cudaError_t cu_to_f32(const void *src, int dtype, size_t n, float *dst, cudaStream_t s);
cudaError_t cu_fill_random_f16(void *dst, size_t n, float scale, uint64_t seed, cudaStream_t s);
cudaError_t cu_fill_f32(float *dst, size_t n, float value, cudaStream_t s);
/* x[t][:] = table[tokens[t]][:] (fp16 table on the device). */
cudaError_t cu_embed_gather(const void *table, const int32_t *tokens, int T, int H, float *x,
                            cudaStream_t s);
/* x[t][:] = a hash of (seed, tokens[t], column): the synthetic model's embedding. */
cudaError_t cu_embed_synth(const int32_t *tokens, int T, int H, uint64_t seed, float *x,
                           cudaStream_t s);

/* ---- rmsnorm.cu ---- */

/* For r < n_rows, with src = rows ? rows[r] : r: if y, x[src] += y[src]
 * (fp16); then out[r] = x[src] * rsqrt(mean(x[src]^2) + eps) * w, as fp16. */
cudaError_t cu_rmsnorm(float *x, const void *y, const int32_t *rows, int n_rows, int H,
                       const float *w, float eps, void *out, cudaStream_t s);

/* ---- rope.cu: q/k RMSNorm, RoPE, KV cache store ---- */

/* qkv[T][(n_heads + 2 n_kv) * D] (fp16): q heads, k heads, v heads. Writes
 * q_out[T][n_heads * D] normed and rotated; stores normed, rotated K and
 * plain V of token t at slot[t] (page * page_size + offset) of layer. */
cudaError_t cu_qk_norm_rope_store(const void *qkv, int T, int n_heads, int n_kv, int D,
                                  const float *q_norm, const float *k_norm, float eps,
                                  const int32_t *pos, const int32_t *slot, const float *inv_freq,
                                  float attn_factor, void *q_out, cu_kv kv, int layer,
                                  cudaStream_t s);

/* ---- attention.cu: causal attention over the paged cache ---- */

/* Rows per w_large block on this GPU for this cache: 64, or 128 where the
 * kernel gives each warp two query tiles (enough shared memory for two
 * such blocks per SM). Fixed for the process. */
int cu_attn_prefill_rows(int head_dim, int int8);

/* Blocks of the decode kernel for w_small tiles of up to `rows` rows that
 * the GPU holds at once (one wave). Fixed for the process. */
int cu_attn_dec_slots(int head_dim, int int8, int rows);

/* Row tiles: 16 rows per block for w_small (small_rows: the most rows any
 * of them has, at most 16, which picks the int8 decode kernel's variant),
 * cu_attn_prefill_rows() for w_large. Key ranges start at multiples of 64
 * and pages hold 16 positions (kv.page_size; anything else is
 * cudaErrorInvalidValue). part_o holds [part][16][D] fp32, part_lse
 * [part][16]; comb_counters one int per entry of comb, zero before the
 * first call (each call leaves them zero). */
cudaError_t cu_attention(const void *q, void *out, const cu_attn_seg *segs,
                         const cu_attn_work *w_small, int n_small, int small_rows,
                         const cu_attn_work *w_large, int n_large, const cu_attn_combine *comb,
                         const int32_t *pages, cu_kv kv, int layer, int n_heads, float *part_o,
                         float *part_lse, int *comb_counters, cudaStream_t s);

/* ---- swiglu.cu ---- */

/* act[t][i] = silu(gu[t][i]) * gu[t][I + i] (fp16 in, fp16 out). */
cudaError_t cu_swiglu(const void *gu, int T, int I, void *act, cudaStream_t s);

/* ---- gemm_reduce in gemm_w4a16.cu ---- */

/* ---- sample.cu ---- */

/* Samples one token per job from logits[row][V] (fp32, modified by the
 * presence penalty); writes out_ids[job.out]. */
cudaError_t cu_sample(float *logits, int V, const cu_sample_job *jobs, int n_jobs,
                      const int32_t *pen_tokens, int32_t *out_ids, cudaStream_t s);

/* Most candidates the GPU sampler keeps after top-k (top_k 0 or larger
 * than this keeps this many). */
#define CU_SAMPLE_MAX_CANDIDATES 1024

#ifdef __cplusplus
}
#endif

#endif
