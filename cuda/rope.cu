/*
 * rope.cu - per-head q/k RMSNorm, rotary embedding, and the store of K and V
 * into the paged cache, in one pass over the fused qkv product: one warp per
 * (token, head). RoPE pairs element i with i + D/2 ("rotate half"); the
 * angles come from model_rope_inv_freq() on the host (YaRN included) and the
 * cos/sin scaling (YaRN's attention factor) is applied here, as on the CPU.
 * int8 KV: one fp16 scale per (token, head), absmax / 127.
 */
#include "common.cuh"

template <int E> /* E = D / 64 elements of each half per lane */
__global__ void __launch_bounds__(256)
    qk_norm_rope_store_kernel(const __half *__restrict__ qkv, int n_heads, int n_kv,
                              const float *__restrict__ q_norm, const float *__restrict__ k_norm,
                              float eps, const int32_t *__restrict__ pos,
                              const int32_t *__restrict__ slot, const float *__restrict__ inv_freq,
                              float attn_factor, __half *__restrict__ q_out, cu_kv kv, int layer)
{
    constexpr int D = E * 64, HALF = D / 2;
    pdl_trigger();
    pdl_wait(); /* qkv comes from the kernel before; the cache is read by the ones after */
    const int t = blockIdx.x;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int head = blockIdx.y * 8 + warp;
    const int n_total = n_heads + 2 * n_kv;
    if (head >= n_total)
        return;
    const __half *src = qkv + ((int64_t)t * n_total + head) * D;
    float a[E], b[E];
#pragma unroll
    for (int e = 0; e < E; e++) {
        a[e] = __half2float(src[lane * E + e]);
        b[e] = __half2float(src[lane * E + e + HALF]);
    }
    const bool is_v = head >= n_heads + n_kv;
    if (!is_v) {
        const float *w = head < n_heads ? q_norm : k_norm;
        float ss = 0.0f;
#pragma unroll
        for (int e = 0; e < E; e++)
            ss += a[e] * a[e] + b[e] * b[e];
        float inv = rsqrtf(warp_sum(ss) / (float)D + eps);
        const float p = (float)pos[t];
#pragma unroll
        for (int e = 0; e < E; e++) {
            int i = lane * E + e;
            float x0 = a[e] * inv * w[i], x1 = b[e] * inv * w[i + HALF];
            float sn, cs;
            sincosf(p * inv_freq[i], &sn, &cs);
            cs *= attn_factor;
            sn *= attn_factor;
            a[e] = x0 * cs - x1 * sn;
            b[e] = x1 * cs + x0 * sn;
        }
    }
    if (head < n_heads) {
        __half *dst = q_out + ((int64_t)t * n_heads + head) * D;
#pragma unroll
        for (int e = 0; e < E; e++) {
            dst[lane * E + e] = __float2half(a[e]);
            dst[lane * E + e + HALF] = __float2half(b[e]);
        }
        return;
    }
    const int which = is_v ? 1 : 0;
    const int h = head - n_heads - (is_v ? n_kv : 0);
    const int s = slot[t];
    const int page = s / kv.page_size, off = s % kv.page_size;
    const int64_t row = (((int64_t)layer * kv.n_pages + page) * 2 + which) * kv.n_kv_heads + h;
    const int64_t base = (row * kv.page_size + off) * D;
    if (!kv.int8) {
        __half *dst = (__half *)kv.data + base;
#pragma unroll
        for (int e = 0; e < E; e++) {
            dst[lane * E + e] = __float2half(a[e]);
            dst[lane * E + e + HALF] = __float2half(b[e]);
        }
        return;
    }
    float amax = 0.0f;
#pragma unroll
    for (int e = 0; e < E; e++)
        amax = fmaxf(amax, fmaxf(fabsf(a[e]), fabsf(b[e])));
    amax = warp_max(amax);
    __half sc = __float2half(amax / 127.0f);
    float scf = __half2float(sc);
    float inv = scf > 0.0f ? 1.0f / scf : 0.0f;
    int8_t *dst = (int8_t *)kv.data + base;
#pragma unroll
    for (int e = 0; e < E; e++) {
        dst[lane * E + e] = (int8_t)max(-127, min(127, __float2int_rn(a[e] * inv)));
        dst[lane * E + e + HALF] = (int8_t)max(-127, min(127, __float2int_rn(b[e] * inv)));
    }
    if (lane == 0)
        ((__half *)kv.scales)[row * kv.page_size + off] = sc;
}

extern "C" cudaError_t cu_qk_norm_rope_store(const void *qkv, int T, int n_heads, int n_kv, int D,
                                             const float *q_norm, const float *k_norm, float eps,
                                             const int32_t *pos, const int32_t *slot,
                                             const float *inv_freq, float attn_factor, void *q_out,
                                             cu_kv kv, int layer, cudaStream_t s)
{
    if (T <= 0)
        return cudaSuccess;
    dim3 grid(T, (n_heads + 2 * n_kv + 7) / 8);
    const __half *in = (const __half *)qkv;
    __half *out = (__half *)q_out;
    void (*k)(const __half *, int, int, const float *, const float *, float, const int32_t *,
              const int32_t *, const float *, float, __half *, cu_kv, int);
    switch (D) {
    case 64: k = qk_norm_rope_store_kernel<1>; break;
    case 128: k = qk_norm_rope_store_kernel<2>; break;
    case 256: k = qk_norm_rope_store_kernel<4>; break;
    default: return cudaErrorInvalidValue;
    }
    return q3_launch(k, grid, dim3(256), 0, s, in, n_heads, n_kv, q_norm, k_norm, eps, pos, slot,
                     inv_freq, attn_factor, out, kv, layer);
}
