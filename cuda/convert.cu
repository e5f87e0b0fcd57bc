/*
 * convert.cu - dtype conversion at load, fills for the synthetic model, and
 * the embedding lookup (from a device table, or a hash for synthetic runs).
 */
#include "common.cuh"

#include <cuda_bf16.h>

enum { DT_F32 = 0, DT_F16 = 1, DT_BF16 = 2 }; /* enum model_dtype */

static __device__ __forceinline__ float load_as_f32(const void *src, int dtype, int64_t i)
{
    if (dtype == DT_F16)
        return __half2float(((const __half *)src)[i]);
    if (dtype == DT_BF16)
        return __bfloat162float(((const __nv_bfloat16 *)src)[i]);
    return ((const float *)src)[i];
}

__global__ void to_f16_kernel(const void *__restrict__ src, int dtype, int64_t n, __half *dst)
{
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = __float2half(load_as_f32(src, dtype, i));
}

__global__ void to_f32_kernel(const void *__restrict__ src, int dtype, int64_t n, float *dst)
{
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = load_as_f32(src, dtype, i);
}

static unsigned grid_for(size_t n)
{
    size_t b = (n + 255) / 256;
    return (unsigned)(b > 65535 * 4 ? 65535 * 4 : b < 1 ? 1 : b);
}

extern "C" cudaError_t cu_to_f16(const void *src, int dtype, size_t n, void *dst, cudaStream_t s)
{
    if (dtype < DT_F32 || dtype > DT_BF16)
        return cudaErrorInvalidValue;
    to_f16_kernel<<<grid_for(n), 256, 0, s>>>(src, dtype, (int64_t)n, (__half *)dst);
    return cudaGetLastError();
}

extern "C" cudaError_t cu_to_f32(const void *src, int dtype, size_t n, float *dst, cudaStream_t s)
{
    if (dtype < DT_F32 || dtype > DT_BF16)
        return cudaErrorInvalidValue;
    to_f32_kernel<<<grid_for(n), 256, 0, s>>>(src, dtype, (int64_t)n, dst);
    return cudaGetLastError();
}

__global__ void fill_random_f16_kernel(__half *dst, int64_t n, float scale, uint64_t seed)
{
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = __float2half(scale * hash_uniform(seed, (uint64_t)i));
}

extern "C" cudaError_t cu_fill_random_f16(void *dst, size_t n, float scale, uint64_t seed,
                                          cudaStream_t s)
{
    fill_random_f16_kernel<<<grid_for(n), 256, 0, s>>>((__half *)dst, (int64_t)n, scale, seed);
    return cudaGetLastError();
}

__global__ void fill_f32_kernel(float *dst, int64_t n, float v)
{
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = v;
}

extern "C" cudaError_t cu_fill_f32(float *dst, size_t n, float value, cudaStream_t s)
{
    fill_f32_kernel<<<grid_for(n), 256, 0, s>>>(dst, (int64_t)n, value);
    return cudaGetLastError();
}

__global__ void embed_gather_kernel(const __half *__restrict__ table, const int32_t *__restrict__ tokens,
                                    int H, float *__restrict__ x)
{
    int t = blockIdx.x;
    const __half *row = table + (int64_t)tokens[t] * H;
    for (int i = threadIdx.x; i < H; i += blockDim.x)
        x[(int64_t)t * H + i] = __half2float(row[i]);
}

extern "C" cudaError_t cu_embed_gather(const void *table, const int32_t *tokens, int T, int H,
                                       float *x, cudaStream_t s)
{
    if (T <= 0)
        return cudaSuccess;
    embed_gather_kernel<<<T, 256, 0, s>>>((const __half *)table, tokens, H, x);
    return cudaGetLastError();
}

__global__ void embed_synth_kernel(const int32_t *__restrict__ tokens, int H, uint64_t seed,
                                   float *__restrict__ x)
{
    int t = blockIdx.x;
    uint64_t base = (uint64_t)tokens[t] * (uint64_t)H;
    for (int i = threadIdx.x; i < H; i += blockDim.x)
        x[(int64_t)t * H + i] = 0.05f * hash_uniform(seed, base + i);
}

extern "C" cudaError_t cu_embed_synth(const int32_t *tokens, int T, int H, uint64_t seed, float *x,
                                      cudaStream_t s)
{
    if (T <= 0)
        return cudaSuccess;
    embed_synth_kernel<<<T, 256, 0, s>>>(tokens, H, seed, x);
    return cudaGetLastError();
}
