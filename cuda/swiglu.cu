/*
 * swiglu.cu - the MLP activation silu(gate) * up, in fp32, over the fused
 * gate|up product [T][2I].
 */
#include "common.cuh"

__global__ void swiglu_kernel(const __half2 *__restrict__ gu, int T, int I2, __half2 *__restrict__ act)
{
    /* I2 = I / 2 pairs per row */
    pdl_trigger();
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (int64_t)T * I2)
        return;
    int64_t t = i / I2, c = i % I2;
    float2 g = __half22float2(gu[t * 2 * I2 + c]);
    float2 u = __half22float2(gu[t * 2 * I2 + I2 + c]);
    float a = g.x / (1.0f + __expf(-g.x)) * u.x;
    float b = g.y / (1.0f + __expf(-g.y)) * u.y;
    act[t * I2 + c] = __floats2half2_rn(a, b);
}

extern "C" cudaError_t cu_swiglu(const void *gu, int T, int I, void *act, cudaStream_t s)
{
    if (T <= 0)
        return cudaSuccess;
    if (I % 2)
        return cudaErrorInvalidValue;
    int64_t n = (int64_t)T * (I / 2);
    swiglu_kernel<<<(unsigned)((n + 255) / 256), 256, 0, s>>>((const __half2 *)gu, T, I / 2,
                                                              (__half2 *)act);
    return cudaGetLastError();
}
