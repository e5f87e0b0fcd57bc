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

extern "C" cudaError_t cu_rmsnorm(float *x, const void *y, const int32_t *rows, int n_rows, int H,
                                  const float *w, float eps, void *out, cudaStream_t s)
{
    if (n_rows <= 0)
        return cudaSuccess;
    int threads = H >= 4096 ? 512 : H >= 1024 ? 256 : 128;
    rmsnorm_kernel<<<n_rows, threads, 0, s>>>(x, (const __half *)y, rows, H, w, eps, (__half *)out);
    return cudaGetLastError();
}
