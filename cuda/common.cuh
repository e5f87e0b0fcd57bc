/*
 * common.cuh - device helpers shared by the kernels: warp reductions, the
 * mma.sync / ldmatrix wrappers (sm_80 and later: the 3090's sm_86 and the
 * H100's sm_90 run the same code), fp16 packing and a counter-based hash.
 */
#ifndef Q3_COMMON_CUH
#define Q3_COMMON_CUH

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdlib.h>

#include "cuda_ops.h"

#define Q3_FULL_MASK 0xffffffffu

/* Programmatic dependent launch (sm_90; no-ops before): a kernel calls
 * pdl_trigger() to let the next kernel in the stream, if that one was
 * launched with the programmatic-serialization attribute, start on SMs as
 * they free up; that kernel may only read what this one writes after its
 * pdl_wait(), which returns once this grid has finished and its writes are
 * visible. The int4 products use it to fetch their first weight tiles
 * while the kernel before them drains. */
static __device__ __forceinline__ void pdl_trigger(void)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

static __device__ __forceinline__ void pdl_wait(void)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

/* An attribute of the current device, or fallback where it cannot be read. */
static int q3_dev_attr(enum cudaDeviceAttr a, int fallback)
{
    int dev = 0, v = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&v, a, dev) != cudaSuccess)
        return fallback;
    return v;
}

/* A measurement switch (docs/PERF-cuda.md): the environment variable's
 * value if it is a whole number within [lo, hi], else dflt. Callers keep
 * the result in a static: switches are read once per process. */
static int q3_env_int(const char *name, int lo, int hi, int dflt)
{
    const char *e = getenv(name);
    char *end;
    const long v = e && *e ? strtol(e, &end, 10) : 0;
    return e && *e && !*end && v >= lo && v <= hi ? (int)v : dflt;
}

/* Whether q3_launch uses programmatic dependent launch: sm_90 and later,
 * unless QWEN3_BATCH_NO_PDL=1 (for measurements). */
static int q3_pdl_on(void)
{
    static int on = -1;
    if (on < 0)
        on = q3_dev_attr(cudaDevAttrComputeCapabilityMajor, 0) >= 9 &&
             !q3_env_int("QWEN3_BATCH_NO_PDL", 1, 1, 0);
    return on;
}

/* Launches kernel k on s, with the programmatic-serialization attribute
 * where q3_pdl_on(): k may start while the kernel before it drains (that
 * one's pdl_trigger), so it must call pdl_wait() before it reads anything
 * the kernels before it write, or writes anything they read. A decode step
 * is ~400 small kernels; each launch gap hidden is a few microseconds. */
template <typename... P, typename... A>
static cudaError_t q3_launch(void (*k)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t s,
                             A... args)
{
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = s;
    cfg.attrs = attr;
    cfg.numAttrs = q3_pdl_on() ? 1 : 0;
    return cudaLaunchKernelEx(&cfg, k, args...);
}

static __device__ __forceinline__ float warp_sum(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(Q3_FULL_MASK, v, o);
    return v;
}

static __device__ __forceinline__ float warp_max(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(Q3_FULL_MASK, v, o));
    return v;
}

/* Sum over a block of blockDim.x threads (a multiple of 32, at most 1024). */
static __device__ __forceinline__ float block_sum(float v, float *scratch32)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0)
        scratch32[warp] = v;
    __syncthreads();
    v = lane < n_warps ? scratch32[lane] : 0.0f;
    return warp_sum(v);
}

/* 2^x as the bare MUFU.EX2 (results below 2^-126 flush to zero): exp2f
 * adds a range check and two multiplies around it for subnormal results,
 * which softmax weights never need. */
static __device__ __forceinline__ float exp2_ftz(float x)
{
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

static __device__ __forceinline__ uint32_t pack_half2(float lo, float hi)
{
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&h);
}

/* D += A * B for one m16n8k16 tile: fp16 inputs, fp32 accumulators. */
static __device__ __forceinline__ void mma_16816(float c[4], const uint32_t a[4], uint32_t b0,
                                                 uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

static __device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void *smem)
{
    uint32_t addr = (uint32_t)__cvta_generic_to_shared(smem);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

/* The same from a shared-space address (lets callers step it with adds). */
static __device__ __forceinline__ void ldmatrix_x4_at(uint32_t r[4], uint32_t addr)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

/* (a & b) | c in one instruction (the compiler emits two). */
static __device__ __forceinline__ uint32_t lop3_and_or(uint32_t a, uint32_t b, uint32_t c)
{
    uint32_t d;
    asm("lop3.b32 %0, %1, %2, %3, 0xea;\n" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}

static __device__ __forceinline__ __half2 u32_as_h2(uint32_t v)
{
    return *reinterpret_cast<__half2 *>(&v);
}

static __device__ __forceinline__ uint32_t h2_as_u32(__half2 v)
{
    return *reinterpret_cast<uint32_t *>(&v);
}

static __device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void *smem)
{
    uint32_t addr = (uint32_t)__cvta_generic_to_shared(smem);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

/* fence.acq_rel at GPU scope: with a relaxed atomic after it, a release
 * (before it, an acquire) of the writes ordered before it. */
static __device__ __forceinline__ void fence_acq_rel_gpu(void)
{
    asm volatile("fence.acq_rel.gpu;\n" ::: "memory");
}

/* The transpose of an 8x8 fp16 matrix held as an mma fragment (thread t:
 * row t / 4, columns 2 (t % 4) and + 1), in registers (sm_75+). */
static __device__ __forceinline__ uint32_t movmatrix_trans(uint32_t a)
{
    uint32_t d;
    asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(d) : "r"(a));
    return d;
}

/* The value, opaque to the compiler: it is kept in a register as computed
 * instead of being rematerialized (the address arithmetic of a loop redone
 * from threadIdx in every iteration). */
static __device__ __forceinline__ uint32_t reg_keep(uint32_t v)
{
    asm volatile("" : "+r"(v));
    return v;
}

static __device__ __forceinline__ int64_t reg_keep(int64_t v)
{
    asm volatile("" : "+l"(v));
    return v;
}

template <typename T> static __device__ __forceinline__ T *reg_keep(T *p)
{
    uint64_t v = (uint64_t)p;
    asm volatile("" : "+l"(v));
    return (T *)v;
}

/* A 16-byte load that bypasses L1 allocation: streamed weights are read once. */
static __device__ __forceinline__ uint4 ld_stream(const uint4 *p)
{
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

/* Asynchronous 16-byte copy global -> shared (sm_80+); bytes beyond
 * src_bytes (0 or 16) are zero-filled, so masked rows cost no branch. */
static __device__ __forceinline__ void cp_async16_at(uint32_t smem, const void *gmem, int src_bytes)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem), "l"(gmem), "r"(src_bytes));
}

/* The same to a generic pointer into shared memory. */
static __device__ __forceinline__ void cp_async16(void *smem, const void *gmem, int src_bytes)
{
    cp_async16_at((uint32_t)__cvta_generic_to_shared(smem), gmem, src_bytes);
}

static __device__ __forceinline__ void cp_async8(void *smem, const void *gmem, int src_bytes)
{
    uint32_t s = (uint32_t)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n" ::"r"(s), "l"(gmem), "r"(src_bytes));
}

static __device__ __forceinline__ void cp_async_commit(void)
{
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}

/* Waits until at most N_PENDING committed groups are still in flight. */
template <int N_PENDING>
static __device__ __forceinline__ void cp_async_wait_pending(void)
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N_PENDING) : "memory");
}

static __device__ __forceinline__ void cp_async_wait_all(void)
{
    asm volatile("cp.async.wait_all;\n" ::: "memory");
}

/* splitmix64 finalizer: the synthetic weights and embeddings. */
static __device__ __forceinline__ uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in [-1, 1) from (seed, index). */
static __device__ __forceinline__ float hash_uniform(uint64_t seed, uint64_t index)
{
    uint64_t z = mix64(seed * 0x9e3779b97f4a7c15ull + index + 0x632be59bd9b4e019ull);
    return (float)(z >> 40) * (2.0f / 16777216.0f) - 1.0f;
}

#endif
