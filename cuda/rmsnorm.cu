/*
 * rmsnorm.cu - RMSNorm of the fp32 residual stream into fp16 activations,
 * fused with adding the previous block's output (one pass over the row
 * instead of two) and, for the final norm, with gathering only the rows that
 * need logits.
 */
#include "common.cuh"

__global__ void rmsnorm_kernel(float *__restrict__ x, const __half *__restrict__ y,
                               const int32_t *__restrict__ rows, int H, const float *__restrict__ w,
                               float eps, __half *__restrict__ out)
{
    __shared__ float scratch[32];
    pdl_trigger();
    pdl_wait(); /* x and y come from the kernels before */
    int r = blockIdx.x;
    int64_t src = rows ? rows[r] : r;
    float *xr = x + src * H;
    float ss = 0.0f;
    if (y) {
        const __half *yr = y + src * H;
        for (int i = threadIdx.x; i < H; i += blockDim.x) {
            float v = xr[i] + __half2float(yr[i]);
            xr[i] = v;
            ss += v * v;
        }
    } else {
        for (int i = threadIdx.x; i < H; i += blockDim.x) {
            float v = xr[i];
            ss += v * v;
        }
    }
    ss = block_sum(ss, scratch);
    float inv = rsqrtf(ss / (float)H + eps);
    __half *o = out + (int64_t)r * H;
    for (int i = threadIdx.x; i < H; i += blockDim.x)
        o[i] = __float2half(xr[i] * inv * w[i]);
}

/* The row stays in registers between the sum of squares and the output:
 * one read of x (and y), one write of x and out, 16-byte accesses. */
template <int NPT>
__global__ void rmsnorm_vec_kernel(float *__restrict__ x, const __half *__restrict__ y,
                                   const int32_t *__restrict__ rows, int H,
                                   const float *__restrict__ w, float eps, __half *__restrict__ out)
{
    __shared__ float scratch[32];
    pdl_trigger();
    pdl_wait(); /* x and y come from the kernels before */
    const int r = blockIdx.x, H4 = H / 4;
    const int64_t src = rows ? rows[r] : r;
    float4 *xr = reinterpret_cast<float4 *>(x + src * H);
    float4 v[NPT];
    float ss = 0.0f;
#pragma unroll
    for (int i = 0; i < NPT; i++) {
        const int c = threadIdx.x + i * blockDim.x;
        if (c < H4) {
            v[i] = xr[c];
            if (y) {
                const uint2 yy = reinterpret_cast<const uint2 *>(y + src * H)[c];
                const float2 a = __half22float2(*reinterpret_cast<const __half2 *>(&yy.x));
                const float2 b = __half22float2(*reinterpret_cast<const __half2 *>(&yy.y));
                v[i].x += a.x;
                v[i].y += a.y;
                v[i].z += b.x;
                v[i].w += b.y;
                xr[c] = v[i];
            }
            ss += v[i].x * v[i].x + v[i].y * v[i].y + v[i].z * v[i].z + v[i].w * v[i].w;
        }
    }
    ss = block_sum(ss, scratch);
    const float inv = rsqrtf(ss / (float)H + eps);
    const float4 *w4 = reinterpret_cast<const float4 *>(w);
    uint2 *o = reinterpret_cast<uint2 *>(out + (int64_t)r * H);
#pragma unroll
    for (int i = 0; i < NPT; i++) {
        const int c = threadIdx.x + i * blockDim.x;
        if (c < H4) {
            const float4 ww = w4[c];
            uint2 pk;
            pk.x = pack_half2(v[i].x * inv * ww.x, v[i].y * inv * ww.y);
            pk.y = pack_half2(v[i].z * inv * ww.z, v[i].w * inv * ww.w);
            o[c] = pk;
        }
    }
}

extern "C" cudaError_t cu_rmsnorm(float *x, const void *y, const int32_t *rows, int n_rows, int H,
                                  const float *w, float eps, void *out, cudaStream_t s)
{
    if (n_rows <= 0)
        return cudaSuccess;
    if (H % 4 == 0 && H <= 4 * 256 * 8) {
        const int per = (H / 4 + 255) / 256; /* float4 per thread with 256 threads */
        const __half *yh = (const __half *)y;
        __half *oh = (__half *)out;
        void (*k)(float *, const __half *, const int32_t *, int, const float *, float, __half *) =
            per <= 1   ? rmsnorm_vec_kernel<1>
            : per <= 2 ? rmsnorm_vec_kernel<2>
            : per <= 4 ? rmsnorm_vec_kernel<4>
                       : rmsnorm_vec_kernel<8>;
        return q3_launch(k, dim3(n_rows), dim3(256), 0, s, x, yh, rows, H, w, eps, oh);
    }
    int threads = H >= 4096 ? 512 : H >= 1024 ? 256 : 128;
    return q3_launch(rmsnorm_kernel, dim3(n_rows), dim3(threads), 0, s, x, (const __half *)y, rows,
                     H, w, eps, (__half *)out);
}
