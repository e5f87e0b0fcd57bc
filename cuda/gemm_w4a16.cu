/*
 * gemm_w4a16.cu - int4 (AWQ) weights times fp16 activations.
 *
 * Decode is bound by reading the weights: at batch 1 a 14B model reads ~7 GB
 * of int4 per token. So the weights are repacked at load (cu_awq_repack) into
 * the order in which a warp consumes them as mma.m16n8k16 B fragments: each
 * lane streams 16 contiguous bytes per 64x16 tile, a warp 512 contiguous
 * bytes, and dequantizes in registers with the 0x6400 trick (fp16 1024 + q,
 * exact), (q - z) * s like the reference. The same loop serves batches up to
 * 64 rows per pass on tensor cores, so batch 64 costs little more than batch
 * 1. Blocks split K when N alone gives too few warps to keep enough loads in
 * flight; partial sums go to a scratch buffer and a second kernel adds them
 * in a fixed order (no atomics, so results are reproducible).
 *
 * Decode steps of up to 16 rows use w4a16_small_kernel instead (weights as
 * the A operand, straight to registers; see there), and products of 17 to
 * dequant_min_m rows w4a16_rows_kernel, 64 rows at a time (the same layout
 * with x streamed through shared memory); the mma kernel remains for
 * shapes those two do not take. Prefill (large M)
 * dequantizes to fp16 (cu_w4a16_dequant) and lets cuBLAS run the product;
 * that choice is made in cuda_engine.c.
 */
#include "common.cuh"

#include <stdio.h>
#include <stdlib.h>

/* Split-K scratch ends with one arrival counter per column block (zeroed
 * once by cu_w4a16_init_scratch, re-armed by the kernels). */
#define W4_COUNTERS 4096
#define W4_KC 256            /* k per shared-memory chunk of x */
#define W4_LDS (W4_KC + 8)   /* padded row (halves): conflict-free ldmatrix */
#define W4_WARPS 8
#define W4_NPW 2             /* 16-column tiles per warp */
#define W4_BLOCK_N (W4_WARPS * W4_NPW * 16)

extern "C" size_t cu_w4_qw_bytes(int K, int N) { return (size_t)K * (size_t)N / 2; }

extern "C" size_t cu_w4_sz_bytes(int K, int N, int group)
{
    return (size_t)(K / group) * (size_t)N * 4;
}

/* ---- repacking ---- */

__global__ void awq_repack_kernel(const int32_t *__restrict__ qweight, int K, int n_src,
                                  int n_offset, int N, uint4 *__restrict__ qw)
{
    const int order_inv[8] = {0, 4, 1, 5, 2, 6, 3, 7}; /* column c sits in nibble order_inv[c] */
    int kt_count = K / 64, nt_src_count = n_src / 16;
    int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (int64_t)nt_src_count * kt_count * 32)
        return;
    int lane = (int)(idx & 31);
    int64_t tile = idx >> 5;
    int kt = (int)(tile % kt_count), nt_src = (int)(tile / kt_count);
    int g = lane >> 2, tq = lane & 3;
    uint32_t words[4];
    for (int ks = 0; ks < 4; ks++) {
        uint32_t w = 0;
        for (int j = 0; j < 4; j++) {
            int t = j >> 1, r = j & 1;
            int k = kt * 64 + ks * 16 + r * 8 + 2 * tq;
            int n = nt_src * 16 + t * 8 + g;
            int sh = 4 * order_inv[n & 7];
            uint32_t q0 = ((uint32_t)qweight[(int64_t)k * (n_src / 8) + n / 8] >> sh) & 15u;
            uint32_t q1 = ((uint32_t)qweight[(int64_t)(k + 1) * (n_src / 8) + n / 8] >> sh) & 15u;
            w |= q0 << (4 * j);
            w |= q1 << (4 * (j + 4));
        }
        words[ks] = w;
    }
    int nt = n_offset / 16 + nt_src;
    qw[((int64_t)nt * kt_count + kt) * 32 + lane] = make_uint4(words[0], words[1], words[2], words[3]);
    (void)N;
}

__global__ void awq_repack_sz_kernel(const int32_t *__restrict__ qzeros,
                                     const __half *__restrict__ scales, int n_groups, int n_src,
                                     int n_offset, int N, __half2 *__restrict__ sz)
{
    const int order_inv[8] = {0, 4, 1, 5, 2, 6, 3, 7};
    int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (int64_t)n_groups * n_src)
        return;
    int grp = (int)(idx / n_src), n = (int)(idx % n_src);
    uint32_t z = ((uint32_t)qzeros[(int64_t)grp * (n_src / 8) + n / 8] >> (4 * order_inv[n & 7])) & 15u;
    sz[(int64_t)grp * N + n_offset + n] = __halves2half2(scales[idx], __float2half(1024.0f + (float)z));
}

extern "C" cudaError_t cu_awq_repack(const int32_t *qweight, const int32_t *qzeros,
                                     const void *scales, int K, int n_src, int group, int n_offset,
                                     int N, void *qw, void *sz, cudaStream_t s)
{
    if (K % 64 || n_src % 16 || n_offset % 16 || group % 16 || K % group || n_offset + n_src > N)
        return cudaErrorInvalidValue;
    int64_t n_threads = (int64_t)(n_src / 16) * (K / 64) * 32;
    awq_repack_kernel<<<(unsigned)((n_threads + 255) / 256), 256, 0, s>>>(qweight, K, n_src,
                                                                         n_offset, N, (uint4 *)qw);
    int64_t n_sz = (int64_t)(K / group) * n_src;
    awq_repack_sz_kernel<<<(unsigned)((n_sz + 255) / 256), 256, 0, s>>>(
        qzeros, (const __half *)scales, K / group, n_src, n_offset, N, (__half2 *)sz);
    return cudaGetLastError();
}

__global__ void awq_synth_kernel(uint4 *__restrict__ qw, int64_t n_words, uint64_t seed)
{
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_words)
        return;
    uint64_t a = mix64(seed + 2 * (uint64_t)i), b = mix64(seed + 2 * (uint64_t)i + 1);
    qw[i] = make_uint4((uint32_t)a, (uint32_t)(a >> 32), (uint32_t)b, (uint32_t)(b >> 32));
}

__global__ void awq_synth_sz_kernel(__half2 *__restrict__ sz, int64_t n, uint64_t seed, float scale)
{
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n)
        return;
    float s = scale * (1.0f + 0.25f * hash_uniform(seed, (uint64_t)i));
    sz[i] = __halves2half2(__float2half(s), __float2half(1024.0f + 8.0f));
}

extern "C" cudaError_t cu_awq_synth(void *qw, void *sz, int K, int N, int group, uint64_t seed,
                                    float scale, cudaStream_t s)
{
    if (K % 64 || N % 16 || group % 16 || K % group)
        return cudaErrorInvalidValue;
    int64_t n_words = (int64_t)K * N / 32;
    awq_synth_kernel<<<(unsigned)((n_words + 255) / 256), 256, 0, s>>>((uint4 *)qw, n_words, seed);
    int64_t n_sz = (int64_t)(K / group) * N;
    awq_synth_sz_kernel<<<(unsigned)((n_sz + 255) / 256), 256, 0, s>>>((__half2 *)sz, n_sz,
                                                                       seed ^ 0x5ca1e5ull, scale);
    return cudaGetLastError();
}

/* ---- the product ---- */

/* Two fp16 weights (k, k+1 of one column) from nibbles j and j + 4 of w. */
static __device__ __forceinline__ uint32_t dequant_pair(uint32_t w, int j, __half2 s2, __half2 z2)
{
    uint32_t q = ((w >> (4 * j)) & 0x000f000fu) | 0x64006400u;
    __half2 h = *reinterpret_cast<__half2 *>(&q);
    h = __hmul2(__hsub2(h, z2), s2);
    return *reinterpret_cast<uint32_t *>(&h);
}

/* Shared memory of one pipeline stage: the block's weights for one 256-deep
 * chunk (16 column tiles x 4 k-tiles x 32 lanes x 16 bytes), the rows of x,
 * and the scale/zero pairs of the 4 k-tiles (when group % 64 == 0). */
template <int MT, int WARPS>
struct w4_stage {
    static constexpr int BN = WARPS * W4_NPW * 16;     /* columns per block */
    static constexpr int W = WARPS * W4_NPW * 4 * 32; /* uint4 */
    static constexpr int X = MT * 16 * W4_LDS;        /* halves */
    static constexpr int S = 4 * BN;                  /* half2 */
    static constexpr size_t BYTES = (size_t)W * 16 + (size_t)X * 2 + (size_t)S * 4;
};

template <int MT, int WARPS, int STAGES>
static __host__ __device__ constexpr size_t w4_smem_bytes()
{
    return w4_stage<MT, WARPS>::BYTES * STAGES;
}

/*
 * Block: 8 warps x 32 columns = 256 columns, all MT*16 rows, k chunks
 * [c_begin, c_end) of 256. grid (N / 256, splits). A cp.async pipeline keeps
 * STAGES - 1 chunks of weights, activations and scales in flight while the
 * warps multiply the oldest one: the loads of a chunk never wait for the
 * arithmetic of the previous one, which is what lets a single batch row run
 * at memory speed.
 */
template <int MT, int WARPS, int STAGES>
__global__ void __launch_bounds__(WARPS * 32, 1)
    w4a16_mma_kernel(const __half *__restrict__ x, int M, int ldx, const uint4 *__restrict__ qw,
                     const __half2 *__restrict__ sz, int K, int N, int group, int chunks_per_split,
                     __half *__restrict__ y, int ldy, float *__restrict__ part,
                     size_t part_counters_off)
{
    typedef w4_stage<MT, WARPS> SG;
    constexpr int BN = SG::BN;
    extern __shared__ __align__(16) unsigned char w4_smem[];
    uint4 *sw = reinterpret_cast<uint4 *>(w4_smem);
    __half *sx = reinterpret_cast<__half *>(sw + STAGES * SG::W);
    __half2 *ss = reinterpret_cast<__half2 *>(sx + STAGES * SG::X);

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int g = lane >> 2, tq = lane & 3;
    const int kt_count = K / 64, nt_count = N / 16;
    const int rows = min(M, MT * 16);
    const int ntb = blockIdx.x * WARPS * W4_NPW; /* first column tile of the block */
    const int nt0 = ntb + warp * W4_NPW;
    const int n_chunks = (K + W4_KC - 1) / W4_KC;
    const int c_begin = blockIdx.y * chunks_per_split;
    const int c_end = min(c_begin + chunks_per_split, n_chunks);
    const bool group64 = group % 64 == 0;

    /* Each warp fetches the weights it will multiply: per chunk 4 k-tiles of
     * its W4_NPW column tiles, 16 bytes per lane, from pointers set up once. */
    const uint4 *wsrc[W4_NPW];
#pragma unroll
    for (int j = 0; j < W4_NPW; j++)
        wsrc[j] = qw + (int64_t)(nt0 + j) * kt_count * 32 + lane;
    auto issue = [&](int c, int st) {
        const int kt0 = c * 4, n_kt = min(4, kt_count - kt0);
        uint4 *dw = sw + st * SG::W + warp * W4_NPW * 4 * 32 + lane;
#pragma unroll
        for (int j = 0; j < W4_NPW; j++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const bool ok = i < n_kt && nt0 + j < nt_count;
                cp_async16(dw + (j * 4 + i) * 32, ok ? wsrc[j] + (kt0 + i) * 32 : qw, ok ? 16 : 0);
            }
        __half *dx = sx + st * SG::X;
        /* Rows past M were zeroed once at the start and are never copied. */
        for (int idx = tid; idx < rows * (W4_KC / 8); idx += WARPS * 32) {
            const int r = idx / (W4_KC / 8), cc = idx % (W4_KC / 8);
            const int k = c * W4_KC + cc * 8;
            const bool ok = k < K;
            cp_async16(dx + r * W4_LDS + cc * 8, ok ? x + (int64_t)r * ldx + k : x, ok ? 16 : 0);
        }
        if (group64) {
            __half2 *ds = ss + st * SG::S;
            for (int idx = tid; idx < SG::S / 4; idx += WARPS * 32) {
                const int i = idx / (BN / 4), cc = idx % (BN / 4);
                const int n = ntb * 16 + cc * 4;
                const bool ok = i < n_kt && n < N;
                const int grp = ok ? (kt0 + i) * 64 / group : 0;
                cp_async16(ds + i * BN + cc * 4, ok ? sz + (int64_t)grp * N + n : sz,
                           ok ? 16 : 0);
            }
        }
    };

    float acc[MT][W4_NPW * 2][4];
#pragma unroll
    for (int a = 0; a < MT; a++)
#pragma unroll
        for (int b = 0; b < W4_NPW * 2; b++)
#pragma unroll
            for (int c = 0; c < 4; c++)
                acc[a][b][c] = 0.0f;

    if (rows < MT * 16) {
        for (int idx = tid; idx < STAGES * (MT * 16 - rows) * (W4_LDS / 8); idx += WARPS * 32) {
            const int per = (MT * 16 - rows) * (W4_LDS / 8);
            const int stg = idx / per, rem = idx % per;
            const int r = rows + rem / (W4_LDS / 8), cc = rem % (W4_LDS / 8);
            *reinterpret_cast<uint4 *>(sx + stg * SG::X + r * W4_LDS + cc * 8) = make_uint4(0, 0, 0, 0);
        }
    }
#pragma unroll
    for (int st = 0; st < STAGES - 1; st++) {
        if (c_begin + st < c_end)
            issue(c_begin + st, st);
        cp_async_commit();
    }
    int st = 0;
    for (int c = c_begin; c < c_end; c++) {
        cp_async_wait_pending<STAGES - 2>();
        __syncthreads();
        {
            const int cn = c + STAGES - 1;
            if (cn < c_end)
                issue(cn, (st + STAGES - 1) % STAGES);
            cp_async_commit();
        }
        const int kt0 = c * 4, n_kt = min(4, kt_count - kt0);
        const uint4 *cw = sw + st * SG::W;
        const __half *cx = sx + st * SG::X;
        const __half2 *cs = ss + st * SG::S;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            if (i >= n_kt)
                break;
            uint4 wv[W4_NPW];
#pragma unroll
            for (int j = 0; j < W4_NPW; j++)
                wv[j] = cw[((warp * W4_NPW + j) * 4 + i) * 32 + lane];
            __half2 s2[W4_NPW][2], z2[W4_NPW][2];
#pragma unroll
            for (int ks = 0; ks < 4; ks++) {
                if (ks == 0 || !group64) {
                    const int grp = ((kt0 + i) * 64 + ks * 16) / group;
#pragma unroll
                    for (int j = 0; j < W4_NPW; j++)
#pragma unroll
                        for (int t = 0; t < 2; t++) {
                            const int col = (warp * W4_NPW + j) * 16 + t * 8 + g; /* in block */
                            __half2 v;
                            if (nt0 + j >= nt_count)
                                v = __floats2half2_rn(0.f, 0.f);
                            else if (group64)
                                v = cs[i * BN + col];
                            else
                                v = sz[(int64_t)grp * N + ntb * 16 + col];
                            s2[j][t] = __low2half2(v);
                            z2[j][t] = __high2half2(v);
                        }
                }
                uint32_t afrag[MT][4];
#pragma unroll
                for (int mt = 0; mt < MT; mt++)
                    ldmatrix_x4(afrag[mt], cx + (mt * 16 + (lane & 15)) * W4_LDS + i * 64 + ks * 16 +
                                               (lane >> 4) * 8);
#pragma unroll
                for (int j = 0; j < W4_NPW; j++) {
                    const uint32_t w = ks == 0 ? wv[j].x : ks == 1 ? wv[j].y : ks == 2 ? wv[j].z : wv[j].w;
#pragma unroll
                    for (int t = 0; t < 2; t++) {
                        const uint32_t b0 = dequant_pair(w, 2 * t, s2[j][t], z2[j][t]);
                        const uint32_t b1 = dequant_pair(w, 2 * t + 1, s2[j][t], z2[j][t]);
#pragma unroll
                        for (int mt = 0; mt < MT; mt++)
                            mma_16816(acc[mt][j * 2 + t], afrag[mt], b0, b1);
                    }
                }
            }
        }
        st = (st + 1) % STAGES;
    }
    cp_async_wait_pending<0>();

    /* Epilogue: rows mt*16 + g (+8), columns n, n+1. */
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int j = 0; j < W4_NPW; j++) {
            if (nt0 + j >= nt_count)
                continue;
#pragma unroll
            for (int t = 0; t < 2; t++) {
                const int n = (nt0 + j) * 16 + t * 8 + 2 * tq;
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    const int r = mt * 16 + g + h * 8;
                    if (r >= rows)
                        continue;
                    const float v0 = acc[mt][j * 2 + t][2 * h], v1 = acc[mt][j * 2 + t][2 * h + 1];
                    if (part)
                        *reinterpret_cast<float2 *>(part + ((int64_t)blockIdx.y * M + r) * N + n) =
                            make_float2(v0, v1);
                    else
                        *reinterpret_cast<__half2 *>(y + (int64_t)r * ldy + n) = __floats2half2_rn(v0, v1);
                }
            }
        }
    if (!part)
        return;
    /* Split K: the last block of this column range to finish adds the
     * partial sums in split order (deterministic) and writes y, which saves
     * a launch per product; it then re-arms the counter for the next one. */
    int *counters = reinterpret_cast<int *>(part) + part_counters_off;
    /* release by thread 0 after the barrier, acquire before it (as in
     * attn_combine_last): one fence, not one per thread */
    __shared__ int s_last;
    __syncthreads();
    if (tid == 0) {
        fence_acq_rel_gpu();
        s_last = atomicAdd(&counters[blockIdx.x], 1) == (int)gridDim.y - 1;
        if (s_last)
            fence_acq_rel_gpu();
    }
    __syncthreads();
    if (!s_last)
        return;
    const int c0 = ntb * 16, width = min(BN, N - c0);
    for (int idx = tid; idx < rows * (width / 2); idx += WARPS * 32) {
        const int r = idx / (width / 2), c = c0 + (idx % (width / 2)) * 2;
        float a = 0.0f, b = 0.0f;
        for (int sp = 0; sp < (int)gridDim.y; sp++) {
            const float2 v = __ldcg(reinterpret_cast<const float2 *>(part + ((int64_t)sp * M + r) * N + c));
            a += v.x;
            b += v.y;
        }
        *reinterpret_cast<__half2 *>(y + (int64_t)r * ldy + c) = __floats2half2_rn(a, b);
    }
    if (tid == 0)
        counters[blockIdx.x] = 0;
}

/*
 * Small batches (M <= 8, every decode step of up to 8 sequences). The mma
 * kernel above puts the batch rows in the A operand, so at M = 1 fifteen of
 * the sixteen rows it multiplies are zero and every 512 bytes of weights
 * cost 8 mma, a shared-memory round trip and a block barrier; measured at
 * 0.7-1.5 TB/s. Here the weights are the A operand instead (16 output
 * columns x 16 k per mma, the repacked words are already A fragments:
 * nibble pairs j = 0, 2, 1, 3 are a0..a3) and the batch rows are the n = 8
 * columns of B, so 512 bytes cost 4 mma whatever M <= 8 is. Each lane loads
 * its 16 bytes per 64 x 16 tile straight into registers, U tiles ahead, and
 * no barrier is taken after x is staged.
 *
 * (q - z) is exact in fp16 and the product with x exact in the fp32
 * accumulator; the scale is applied once per 64-deep tile in fp32 (needs
 * group % 64 == 0, as AWQ's 128). The split of K depends on K, N, the GPU
 * and whether M is 1-8 or 9-16 (w4s_splits), so a row gets the same sums in
 * any batch of 1-8 rows and in any of 9-16.
 */
#define W4S_MAX_ROWS 16
#ifndef W4S_BPS2
#define W4S_BPS2 6 /* 4-warp blocks per SM the 9-16 row variant asks for (-D for experiments) */
#endif
/* 64 x 16 tiles in flight per lane, for 1-8 and 9-16 rows (-D for
 * experiments). w4a16_bench, H100, call BK, a layer's four products at 1 /
 * 8 / 16 rows: ring 4 86.7 / 92.4 / 105.6 us, ring 2 85.0 / 90.4 / 105.8,
 * ring 6 slower everywhere; bench (call BL) B=1 202.3 -> 207.1 tok/s, B=8
 * int8 1,499 -> 1,522, B=16 int8 2,510 -> 2,500: 9-16 rows keep 4. */
#ifndef W4S_U1
#define W4S_U1 2
#endif
#ifndef W4S_U2
#define W4S_U2 4
#endif
#define W4S_MAX_SLICE_KT 24     /* tiles per split: x slice (M + 1) x 1536 halves */
#define W4S_MAX_SLICE_KT1 28    /* the 1-8 row variant's cap where it saves a wave (w4s_splits1) */
#define W4S_MAX_SLICE_KT2 32    /* the same for 9-16 rows where three blocks fit (w4s_splits) */

/* Shared memory of the small kernel: rows 0..M (row M zero) of the slice. */
static size_t w4s_smem_bytes(int M, int kps) { return (size_t)(M + 1) * (kps * 64 + 8) * 2; }

/* tiles_shift: log2(group / 64); the group of tile kt is kt >> tiles_shift
 * (a division here was most of the loop's instructions). */
/* The A fragment (q - z) of one packed word, exact in fp16: nibble pair j
 * (= 2t + r: column t, k-half r) masked in place gives 1024 + q for j = 0, 2
 * and 1024 + 16q for j = 1, 3, so one shift serves four pairs and each is
 * one sub or one fma. z: 1024 + zero; zs: -(64 + zero). A wants r-major
 * order: a[0] = j0, a[1] = j2, a[2] = j1, a[3] = j3. */
static __device__ __forceinline__ void w4_pairs(uint32_t w, __half2 z0, __half2 z1, __half2 zs0,
                                                __half2 zs1, __half2 h16th, __half2 a[4])
{
    const uint32_t w8 = w >> 8;
    a[0] = __hsub2(u32_as_h2(lop3_and_or(w, 0x000f000fu, 0x64006400u)), z0);
    a[2] = __hfma2(u32_as_h2(lop3_and_or(w, 0x00f000f0u, 0x64006400u)), h16th, zs0);
    a[1] = __hsub2(u32_as_h2(lop3_and_or(w8, 0x000f000fu, 0x64006400u)), z1);
    a[3] = __hfma2(u32_as_h2(lop3_and_or(w8, 0x00f000f0u, 0x64006400u)), h16th, zs1);
}

/* Split K, per warp of 16 columns (tile nt): the last split to finish adds
 * the partial sums part[split][M][N] in split order (deterministic) and
 * writes y, then re-arms the tile's counter. Counted per warp, so warps of
 * dead tiles, which return early, are never waited for.
 *
 * The sums are a chain of L2 round trips at the end of a block that holds
 * its SM slot meanwhile, so they go wide: lane = 4 columns (float4) of row
 * lane / 4, R rows 8 apart per pass, the loads of J splits of all R rows
 * issued before their adds (R x J float4 in registers: the small kernel,
 * capped at 64 and 80 registers, takes 2 x 4). The first version (one
 * float per lane and load) cost a 64-row gate_up product in 4 splits ~95
 * of its 188 us (the wgmma kernel without its end: 93; w4a16 probe, H100,
 * 2026-12-06). Sums keep split order, so results are unchanged. */
template <int R, int J>
static __device__ void w4_reduce_last_split(float *part, size_t counters_off, int M, int N, int nt,
                                            int lane, __half *y, int ldy)
{
    /* __syncwarp orders the warp's writes before lane 0's release fence,
     * and lane 0's acquire before the lanes' reads (the one after the
     * shuffle): a fence per warp, not one per lane (attn_combine_last) */
    int *counters = reinterpret_cast<int *>(part) + counters_off;
    __syncwarp();
    int last = 0;
    if (lane == 0) {
        fence_acq_rel_gpu();
        last = atomicAdd(&counters[nt], 1) == (int)gridDim.y - 1;
        if (last)
            fence_acq_rel_gpu();
    }
    last = __shfl_sync(0xffffffffu, last, 0);
    __syncwarp();
    if (!last)
        return;
    const int n_sp = (int)gridDim.y, col = nt * 16 + (lane & 3) * 4;
    const int64_t sp_stride = (int64_t)M * N;
    for (int r0 = lane >> 2; r0 < M; r0 += 8 * R) {
        float4 a[R];
        const float *p[R];
#pragma unroll
        for (int i = 0; i < R; i++) {
            a[i] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            /* rows past M read row r0 (in bounds) and are not stored */
            p[i] = part + (int64_t)(r0 + 8 * i < M ? r0 + 8 * i : r0) * N + col;
        }
        for (int sp = 0; sp < n_sp; sp += J) {
            /* a short last batch is predicated, not a chain of single loads */
            float4 v[J][R];
#pragma unroll
            for (int j = 0; j < J; j++)
#pragma unroll
                for (int i = 0; i < R; i++)
                    if (sp + j < n_sp)
                        v[j][i] = __ldcg(reinterpret_cast<const float4 *>(p[i] + (sp + j) * sp_stride));
#pragma unroll
            for (int j = 0; j < J; j++)
#pragma unroll
                for (int i = 0; i < R; i++)
                    if (sp + j < n_sp) {
                        a[i].x += v[j][i].x;
                        a[i].y += v[j][i].y;
                        a[i].z += v[j][i].z;
                        a[i].w += v[j][i].w;
                    }
        }
#pragma unroll
        for (int i = 0; i < R; i++) {
            const int r = r0 + 8 * i;
            if (r < M) {
                __half2 *o = reinterpret_cast<__half2 *>(y + (int64_t)r * ldy + col);
                o[0] = __floats2half2_rn(a[i].x, a[i].y);
                o[1] = __floats2half2_rn(a[i].z, a[i].w);
            }
        }
    }
    if (lane == 0)
        counters[nt] = 0;
}

/* The end of the small and rows kernels: acc[nb] holds (column col0, rows
 * 8nb + 2tq, + 1) and (col0 + 8, same rows). Without splits the sums go to
 * y; with them to part[split], and the last split adds them up. */
template <int NB>
static __device__ __forceinline__ void w4_store(const float (*acc)[4], int M, int N, int col0,
                                                int tq, int nt, int lane, __half *y, int ldy,
                                                float *part, size_t counters_off)
{
    const int col1 = col0 + 8;
#pragma unroll
    for (int nb = 0; nb < NB; nb++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int r = nb * 8 + 2 * tq + h;
            if (r >= M)
                continue;
            if (part) {
                part[((int64_t)blockIdx.y * M + r) * N + col0] = acc[nb][h];
                part[((int64_t)blockIdx.y * M + r) * N + col1] = acc[nb][2 + h];
            } else {
                y[(int64_t)r * ldy + col0] = __float2half_rn(acc[nb][h]);
                y[(int64_t)r * ldy + col1] = __float2half_rn(acc[nb][2 + h]);
            }
        }
    if (part)
        w4_reduce_last_split<NB <= 2 ? NB : 4, NB <= 2 ? 4 : 2>(part, counters_off, M, N, nt, lane, y,
                                                               ldy);
}

/* NB: groups of 8 batch rows (1: M <= 8, 2: M <= 16), each one more mma
 * per A fragment, so the dequantization is shared by all rows. NB = 1 keeps
 * 32 warps per SM: 64 registers, which a ring of 4 (and of 2) fits. NB = 2
 * keeps 24 warps (85 registers) and gets splits for that (w4s_splits): at
 * 32 warps (64 registers, 88 bytes spilled) gate_up at 16 rows took 72.9
 * us instead of 59.1 (both with x staged by cp.async; w4a16_bench, H100,
 * 2026-12-06). */
template <int NB, int WARPS>
__global__ void __launch_bounds__(WARPS * 32, (NB == 1 ? 8 : W4S_BPS2) * 4 / WARPS)
    w4a16_small_kernel(const __half *__restrict__ x, int M, int ldx, const uint4 *__restrict__ qw,
                       const __half2 *__restrict__ sz, int K, int N, int tiles_shift,
                       int kt_per_split, __half *__restrict__ y, int ldy, float *__restrict__ part,
                       size_t part_counters_off)
{
    constexpr int U = NB == 1 ? W4S_U1 : W4S_U2;
    pdl_trigger(); /* the kernel after waits for all of this one anyway */
    extern __shared__ __align__(16) unsigned char w4s_smem[];
    __half *sx = reinterpret_cast<__half *>(w4s_smem);
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int g = lane >> 2, tq = lane & 3;
    const int kt_count = K / 64, nt_count = N / 16;
    const int nt = blockIdx.x * WARPS + warp;
    const bool live = nt < nt_count;
    const int kt0 = blockIdx.y * kt_per_split;
    const int kt1 = min(kt0 + kt_per_split, kt_count);
    const int n_kt = kt1 - kt0;
    const int lds = n_kt * 64 + 8; /* padded row: conflict-free ldmatrix */

    /* A ring of U tiles (weights and their scale/zero pairs) in
     * registers: each tile's slot is refilled with the tile U ahead as
     * soon as it is consumed, so about U x 512 bytes per warp are always
     * in flight. The scales are loaded with the weights: fetched at use, a
     * cold group costs a whole memory round trip per tile (measured: half
     * the bandwidth). The first tiles are requested before x is staged. */
    const int col0 = (live ? nt : 0) * 16 + g;
    /* held in registers, not recomputed per tile (B=1 195.2 -> 200.5 tok/s
     * with the wgmma kernel's change, H100, call BF) */
    const uint4 *src = reg_keep(qw + ((int64_t)(live ? nt : 0) * kt_count + kt0) * 32 + lane);
    const __half2 *szc = reg_keep(sz + col0);
    uint4 buf[U];
    __half2 sv0[U], sv1[U];
#pragma unroll
    for (int u = 0; u < U; u++)
        if (live && u < n_kt) {
            const __half2 *p = szc + ((kt0 + u) >> tiles_shift) * N;
            buf[u] = ld_stream(src + u * 32);
            sv0[u] = __ldg(p);
            sv1[u] = __ldg(p + 8);
        }

    pdl_wait(); /* x comes from the kernel before */
    /* Rows >= M read row M, all zeros, so that every lane's address moves
     * the same way (the compiler folds the steps into the instruction).
     * Plain loads and stores: staging with cp.async instead measured slower
     * at 16 rows (gate_up 55.0 -> 59.1 us, down 40.4 -> 43.2; H100,
     * w4a16_bench, 2026-12-06). */
    for (int idx = tid; idx < (M + 1) * (n_kt * 8); idx += WARPS * 32) {
        const int r = idx / (n_kt * 8), c = idx % (n_kt * 8);
        *reinterpret_cast<uint4 *>(sx + r * lds + c * 8) =
            r < M ? *reinterpret_cast<const uint4 *>(x + (int64_t)r * ldx + kt0 * 64 + c * 8)
                  : make_uint4(0, 0, 0, 0);
    }
    __syncthreads();
    if (!live)
        return; /* no barrier below; the reduction counts warps, not blocks */

    /* ldmatrix.x4: lanes 8i..8i+7 address row (lane & 7) of matrix i, which
     * holds k 8i..8i+7 of a 32-deep step: b0, b1 of two mma k-steps. */
    uint32_t xa[NB];
#pragma unroll
    for (int nb = 0; nb < NB; nb++)
        xa[nb] = (uint32_t)__cvta_generic_to_shared(sx + min(nb * 8 + (lane & 7), M) * lds +
                                                    (lane >> 3) * 8);
    const __half2 h960 = __float2half2_rn(960.0f), h16th = __float2half2_rn(0.0625f);

    float acc[NB][4] = {};
    for (int base = 0; base < n_kt; base += U) {
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int kt = base + u;
            if (kt >= n_kt)
                break;
            const uint32_t words[4] = {buf[u].x, buf[u].y, buf[u].z, buf[u].w};
            /* z: 1024 + zero; zs: -(64 + zero), for the nibbles that land 16x */
            const __half2 z0 = __high2half2(sv0[u]), z1 = __high2half2(sv1[u]);
            const __half2 zs0 = __hsub2(h960, z0), zs1 = __hsub2(h960, z1);
            const float s0 = __low2float(sv0[u]), s1 = __low2float(sv1[u]);
            if (kt + U < n_kt) {
                const __half2 *p = szc + ((kt0 + kt + U) >> tiles_shift) * N;
                buf[u] = ld_stream(src + (kt + U) * 32);
                sv0[u] = __ldg(p);
                sv1[u] = __ldg(p + 8);
            }
            uint32_t b[NB][2][4];
#pragma unroll
            for (int nb = 0; nb < NB; nb++) {
                ldmatrix_x4_at(b[nb][0], xa[nb] + kt * 128);
                ldmatrix_x4_at(b[nb][1], xa[nb] + kt * 128 + 64);
            }
            float c[NB][4] = {};
#pragma unroll
            for (int ks = 0; ks < 4; ks++) {
                __half2 a2[4];
                w4_pairs(words[ks], z0, z1, zs0, zs1, h16th, a2);
                const uint32_t a[4] = {h2_as_u32(a2[0]), h2_as_u32(a2[1]), h2_as_u32(a2[2]),
                                       h2_as_u32(a2[3])};
#pragma unroll
                for (int nb = 0; nb < NB; nb++)
                    mma_16816(c[nb], a, b[nb][ks >> 1][(ks & 1) * 2], b[nb][ks >> 1][(ks & 1) * 2 + 1]);
            }
#pragma unroll
            for (int nb = 0; nb < NB; nb++) {
                acc[nb][0] = fmaf(c[nb][0], s0, acc[nb][0]);
                acc[nb][1] = fmaf(c[nb][1], s0, acc[nb][1]);
                acc[nb][2] = fmaf(c[nb][2], s1, acc[nb][2]);
                acc[nb][3] = fmaf(c[nb][3], s1, acc[nb][3]);
            }
        }
    }

    w4_store<NB>(acc, M, N, col0, tq, nt, lane, y, ldy, part, part_counters_off);
}

/* The small and rows kernels' signature. */
typedef void (*w4_kernel_fn)(const __half *, int, int, const uint4 *, const __half2 *, int, int,
                             int, int, __half *, int, float *, size_t);

/* Lets each of the n kernels take up to bytes of dynamic shared memory. */
static void w4_set_max_smem(const w4_kernel_fn *k, int n, size_t bytes)
{
    for (int i = 0; i < n; i++)
        cudaFuncSetAttribute(k[i], cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
}

/* Column tiles (warps) per block: 8, or 4 with QWEN3_BATCH_W4S_WARPS=4 (for
 * measurements). Every block stages its own copy of x from L2, so wider
 * blocks halve that traffic, which at 16 rows is as large as the weights:
 * measured on the H100 (bench/w4a16.cu), 16 rows, per layer 154.2 -> 141.9
 * us (gate_up 67.2 -> 56.8), equal at 1-8 rows. */
static int w4s_warps(void)
{
    static int w = 0;
    if (!w)
        w = q3_env_int("QWEN3_BATCH_W4S_WARPS", 4, 4, 8);
    return w;
}

/* Blocks across N: one column tile of 16 per warp. */
static int w4s_col_blocks(int N) { return (N / 16 + w4s_warps() - 1) / w4s_warps(); }

/* Lets the small kernels take their largest x slices (the 9-16 row ones
 * with the whole SM's shared memory preferred, for three blocks of 68 KB);
 * returns the most shared memory a block may have. */
static int w4s_init(void)
{
    static int optin = -1;
    if (optin < 0) {
        optin = q3_dev_attr(cudaDevAttrMaxSharedMemoryPerBlockOptin, 48 * 1024);
        const int most1 = (int)w4s_smem_bytes(8, W4S_MAX_SLICE_KT1);
        const int most2 = (int)w4s_smem_bytes(W4S_MAX_ROWS, W4S_MAX_SLICE_KT2);
        const w4_kernel_fn k1[] = {w4a16_small_kernel<1, 4>, w4a16_small_kernel<1, 8>};
        const w4_kernel_fn k2[] = {w4a16_small_kernel<2, 4>, w4a16_small_kernel<2, 8>};
        w4_set_max_smem(k1, 2, most1 < optin ? most1 : optin);
        w4_set_max_smem(k2, 2, most2 < optin ? most2 : optin);
        for (int i = 0; i < 2; i++)
            cudaFuncSetAttribute(k2[i], cudaFuncAttributePreferredSharedMemoryCarveout,
                                 cudaSharedmemCarveoutMaxShared);
        cudaGetLastError();
    }
    return optin;
}

/* Resident blocks per SM of the variant for NB groups of 8 rows, whose x
 * slice takes smem bytes per block. */
static int w4s_blocks_per_sm(int nb, size_t smem)
{
    const bool w8 = w4s_warps() == 8;
    w4_kernel_fn k = nb == 1 ? (w8 ? w4a16_small_kernel<1, 8> : w4a16_small_kernel<1, 4>)
                             : (w8 ? w4a16_small_kernel<2, 8> : w4a16_small_kernel<2, 4>);
    int n = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, k, w4s_warps() * 32, smem) != cudaSuccess)
        n = 0;
    cudaGetLastError();
    return n;
}

/* Splits of K for the small kernel: as many as keep every block resident
 * at once (a second, partial wave costs as much as a full one), at least 4
 * tiles each, and at most max_slice tiles each: measured on the H100 at M =
 * 1, gate_up (K 5120) takes 53 us in one split of 80 tiles and 49 us in
 * four of 20, and the x slice of 8 rows then leaves the 1-8 row variant
 * its 32 warps per SM. */
static int w4s_splits_for(int K, int N, int n_sm, int blocks_per_sm, int max_slice)
{
    const int kt = K / 64, col_blocks = w4s_col_blocks(N);
    int sp = n_sm * blocks_per_sm / col_blocks;
    if (sp > kt / 4)
        sp = kt / 4;
    if (sp < 1)
        sp = 1;
    while ((kt + sp - 1) / sp > max_slice)
        sp++;
    const int kps = (kt + sp - 1) / sp;
    return (kt + kps - 1) / kps;
}

/*
 * The splits for nb groups of 8 rows; they depend on K, N, nb and the GPU,
 * never on M, so a row gets the same sums in any batch of 1-8 rows, and in
 * any batch of 9-16 (but not the same in both). The 9-16 row variant holds
 * 24 warps per SM where the 1-8 row one holds 32 (85 registers against
 * 64), so a grid sized for the latter ran a second, partial wave at 16
 * rows: down, qkv and o took ~1.5x their 8-row time (w4a16_bench, H100,
 * 2026-12-06). It gets splits of its own where three blocks of its largest
 * slice (W4S_MAX_SLICE_KT2 tiles) fit an SM's shared memory and the grid
 * is then one wave, and the 1-8 row variant's splits of at most
 * W4S_MAX_SLICE_KT tiles elsewhere (a 3090, or gate_up).
 *
 * The 1-8 row variant keeps w4s_splits_for's splits unless another count
 * with slices of 4 to W4S_MAX_SLICE_KT1 tiles needs fewer waves (slots: 4
 * blocks of 8 warps per SM, fewer where an 8-row slice limits them); then
 * it takes the most splits among the fewest waves. gate_up (80 tiles, 272
 * column blocks) on an H100 gets 3 splits of 27 (816 blocks, 2 waves of
 * 528) instead of 4 of 20 (1,088, 3 waves): 47.2 -> 43.6 us at 1 row, 50.8
 * -> 48.9 at 8 (w4a16_bench, H100, 2026-12-06); a 3090 keeps its splits
 * for the 14B shapes. QWEN3_BATCH_W4S_SHARED_SPLITS=1 gives the splits
 * from before both (every variant as the 1-8 row one, at most
 * W4S_MAX_SLICE_KT tiles), for measurements.
 */
static int w4s_splits1(int K, int N, int n_sm, int bps1, int col_blocks)
{
    static int per_sm[W4S_MAX_SLICE_KT1 + 1]; /* blocks per SM by slice, 0: not asked yet */
    const int kt = K / 64;
    auto waves = [&](int sp) {
        const int kps = (kt + sp - 1) / sp;
        if (!per_sm[kps]) {
            const int n = w4s_blocks_per_sm(1, w4s_smem_bytes(8, kps));
            per_sm[kps] = n < 1 ? 1 : n;
        }
        const long slots = (long)n_sm * per_sm[kps];
        return ((long)sp * col_blocks + slots - 1) / slots;
    };
    const int base = w4s_splits_for(K, N, n_sm, bps1, W4S_MAX_SLICE_KT);
    if ((kt + base - 1) / base > W4S_MAX_SLICE_KT1)
        return base;
    int best = base;
    long best_waves = waves(base);
    for (int sp = 1; sp <= kt / 4; sp++) {
        const int kps = (kt + sp - 1) / sp;
        if (kps > W4S_MAX_SLICE_KT1 || (kt + kps - 1) / kps != sp)
            continue;
        const long w = waves(sp);
        if (w < best_waves || (w == best_waves && best != base && sp > best)) {
            best_waves = w;
            best = sp;
        }
    }
    return best;
}

static int w4s_splits(int K, int N, int n_sm, int nb)
{
    static int bps1 = -1, bps2 = -1, old = 0;
    if (bps1 < 0) {
        w4s_init();
        old = q3_env_int("QWEN3_BATCH_W4S_SHARED_SPLITS", 1, 1, 0);
        bps1 = w4s_blocks_per_sm(1, 4096);
        if (bps1 < 1)
            bps1 = 1;
        bps2 = old ? 0 : w4s_blocks_per_sm(2, w4s_smem_bytes(W4S_MAX_ROWS, W4S_MAX_SLICE_KT2));
    }
    const int col_blocks = w4s_col_blocks(N);
    if (nb == 1 && !old)
        return w4s_splits1(K, N, n_sm, bps1, col_blocks);
    if (nb == 2 && bps2 >= 3) {
        /* Only where that grid is one wave: gate_up's 272 column blocks
         * need 3 splits of at most 32 tiles, 816 blocks for 396 slots on an
         * H100/H200, 2.06 waves; there the 1-8 row splits (1,088 blocks,
         * 2.75 waves) measured faster at 16 rows: 52.8 against 60.4 us
         * (w4a16_bench, H200, 2026-12-06). */
        const int sp = w4s_splits_for(K, N, n_sm, bps2, W4S_MAX_SLICE_KT2);
        if (sp * col_blocks <= n_sm * bps2)
            return sp;
    }
    return w4s_splits_for(K, N, n_sm, bps1, W4S_MAX_SLICE_KT);
}

static int w4s_enabled(void)
{
    static int on = -1;
    if (on < 0)
        on = q3_env_int("QWEN3_BATCH_W4_SMALL", 0, 0, 1);
    return on;
}

/* Returns cudaErrorNotSupported, having launched nothing, where the
 * shape is not for this kernel (the caller then uses the mma kernel). */
static cudaError_t launch_small(const __half *x, int M, int ldx, const uint4 *qw,
                                const __half2 *sz, int K, int N, int group, __half *y, int ldy,
                                float *part, size_t part_floats, int n_sm, cudaStream_t s)
{
    const int optin = w4s_init();
    const int tiles_per_group = group / 64;
    if (M > W4S_MAX_ROWS || group % 64 || (tiles_per_group & (tiles_per_group - 1)) ||
        N / 16 > W4_COUNTERS)
        return cudaErrorNotSupported;
    const int kt = K / 64, sp = w4s_splits(K, N, n_sm, M <= 8 ? 1 : 2);
    const int kps = (kt + sp - 1) / sp;
    const int wp = w4s_warps(), bx = w4s_col_blocks(N);
    const size_t smem = w4s_smem_bytes(M, kps);
    if (smem > (size_t)optin)
        return cudaErrorNotSupported;
    if (sp > 1 && (size_t)sp * M * N > part_floats - W4_COUNTERS)
        return cudaErrorInvalidValue; /* the caller sizes part with cu_w4a16_part_floats */
    dim3 grid(bx, sp);
    const int sh = __builtin_ctz((unsigned)tiles_per_group);
    float *p = sp > 1 ? part : NULL;
    w4_kernel_fn k = wp == 8 ? (M <= 8 ? w4a16_small_kernel<1, 8> : w4a16_small_kernel<2, 8>)
                             : (M <= 8 ? w4a16_small_kernel<1, 4> : w4a16_small_kernel<2, 4>);
    /* q3_launch: on sm_90 the blocks start as the kernel before drains and
     * fetch their first weight tiles meanwhile (pdl_wait guards x). */
    return q3_launch(k, grid, dim3(wp * 32), smem, s, x, M, ldx, qw, sz, K, N, sh, kps, y, ldy, p,
                     part_floats - W4_COUNTERS);
}

/*
 * Batches of 17-64 rows (decode at batch 17-64, and each 64-row chunk of a
 * larger product below the cuBLAS threshold). The small kernel's layout:
 * weights are the A operand, dequantized once per fragment and multiplied
 * with all NB groups of 8 rows, straight from a register ring. x cannot be
 * staged whole here (64 rows x a K slice is too much shared memory), so it
 * streams through two stages of W4R_CK tiles with cp.async, one barrier per
 * chunk; the ring depth equals the chunk so that a tile's slot is its index
 * in the chunk. The scale is applied to the fragment in fp16, as the mma
 * kernel and the dequantization for cuBLAS do: one multiply per pair serves
 * all the rows. Splits of K depend on K, N and the GPU only.
 */
#define W4R_CK 4 /* tiles per x chunk = the register ring's depth */

template <int NB>
static __host__ __device__ constexpr size_t w4r_smem_bytes()
{
    return (size_t)2 * (NB * 8) * (W4R_CK * 64 + 8) * 2;
}

/*
 * Addresses are set up once and then moved by constants: rows M.. of both
 * stages are zero and never written, so row r of x is always at a fixed
 * offset from one base (no clamp to row M), and each thread copies the same
 * 16 bytes of every chunk (lane = 16-byte column of the chunk, rows warp +
 * i * WARPS). Nsight Compute had shown 290 instructions per 64 x 16 tile
 * for 32 mma, many of them those addresses recomputed per tile; without
 * them, per layer at 64 rows 312.8 -> 308.9 us and at 32 rows 201.5 ->
 * 200.2 (w4a16_bench, H100, 2026-12-06). So issue is not what bounds this
 * kernel: its warps wait on fixed-latency dependencies (1.66 cycles per
 * issued instruction) and memory (1.62) with 4 warps per scheduler, and the
 * tensor pipe is 24% busy.
 */
template <int NB, int WARPS>
__global__ void __launch_bounds__(WARPS * 32, WARPS == 8 ? 2 : 1)
    w4a16_rows_kernel(const __half *__restrict__ x, int M, int ldx, const uint4 *__restrict__ qw,
                      const __half2 *__restrict__ sz, int K, int N, int tiles_shift,
                      int kt_per_split, __half *__restrict__ y, int ldy, float *__restrict__ part,
                      size_t part_counters_off)
{
    pdl_trigger();
    constexpr int ROWS = NB * 8, LDS = W4R_CK * 64 + 8, STAGE = ROWS * LDS, U = W4R_CK;
    static_assert(U * 8 == 32, "one 16-byte column of a chunk per lane");
    static_assert(ROWS % WARPS == 0, "rows per warp");
    extern __shared__ __align__(16) unsigned char w4r_smem[];
    __half *sx = reinterpret_cast<__half *>(w4r_smem);
    const uint32_t sx_u32 = (uint32_t)__cvta_generic_to_shared(sx);
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int g = lane >> 2, tq = lane & 3;
    const int kt_count = K / 64, nt_count = N / 16;
    const int nt = blockIdx.x * WARPS + warp;
    const bool live = nt < nt_count;
    const int kt0 = blockIdx.y * kt_per_split;
    const int n_kt = min(kt0 + kt_per_split, kt_count) - kt0;
    const int n_chunks = (n_kt + U - 1) / U;

    const int col0 = (live ? nt : 0) * 16 + g;
    const uint4 *src = reg_keep(qw + ((int64_t)(live ? nt : 0) * kt_count + kt0) * 32 + lane);
    const __half2 *szc = reg_keep(sz + col0);
    uint4 buf[U];
    __half2 sv0[U], sv1[U];
#pragma unroll
    for (int u = 0; u < U; u++)
        if (live && u < n_kt) {
            const __half2 *p = szc + (size_t)((kt0 + u) >> tiles_shift) * N;
            buf[u] = ld_stream(src + u * 32);
            sv0[u] = __ldg(p);
            sv1[u] = __ldg(p + 8);
        }
    src += U * 32; /* from here on: the next chunk's first tile */

    pdl_wait(); /* x comes from the kernel before */
    /* Rows M.. of both stages stay zero (copies write rows < M only). */
    for (int idx = tid; idx < 2 * (ROWS - M) * (LDS / 8); idx += WARPS * 32) {
        const int st = idx / ((ROWS - M) * (LDS / 8)), rem = idx % ((ROWS - M) * (LDS / 8));
        *reinterpret_cast<uint4 *>(sx + st * STAGE + (M + rem / (LDS / 8)) * LDS +
                                   (rem % (LDS / 8)) * 8) = make_uint4(0, 0, 0, 0);
    }
    const __half *xg = x + (int64_t)warp * ldx + (int64_t)kt0 * 64 + lane * 8;
    const int64_t xstep = (int64_t)WARPS * ldx;
    const uint32_t sdst = sx_u32 + (uint32_t)(warp * LDS + lane * 8) * 2;
    auto stage_x = [&](int c, int st) {
        const bool ok = c * U + (lane >> 3) < n_kt; /* past the slice: zeros */
        const __half *p = ok ? xg + c * (U * 64) : x;
#pragma unroll
        for (int i = 0; i < ROWS / WARPS; i++)
            if (warp + i * WARPS < M)
                cp_async16_at(sdst + (uint32_t)((st * STAGE + i * WARPS * LDS) * 2),
                              ok ? p + i * xstep : x, ok ? 16 : 0);
        cp_async_commit();
    };
    stage_x(0, 0);

    /* ldmatrix.x4: lanes 8i..8i+7 address row (lane & 7) of matrix i; row
     * group nb is 8 * nb * LDS halves further. */
    const uint32_t xa = sx_u32 + (uint32_t)((lane & 7) * LDS + (lane >> 3) * 8) * 2;
    const __half2 h960 = __float2half2_rn(960.0f), h16th = __float2half2_rn(0.0625f);
    float acc[NB][4] = {};

    for (int c = 0; c < n_chunks; c++) {
        /* The stage filled here was read in iteration c - 1, which ended
         * with a barrier. */
        if (c + 1 < n_chunks) {
            stage_x(c + 1, (c + 1) & 1);
            cp_async_wait_pending<1>();
        } else {
            cp_async_wait_pending<0>();
        }
        __syncthreads();
        const uint32_t xc = xa + (uint32_t)((c & 1) * STAGE * 2);
        if (live) {
#pragma unroll
            for (int t = 0; t < U; t++) {
                const int kt = c * U + t;
                if (kt >= n_kt)
                    break;
                const uint32_t words[4] = {buf[t].x, buf[t].y, buf[t].z, buf[t].w};
                const __half2 z0 = __high2half2(sv0[t]), z1 = __high2half2(sv1[t]);
                const __half2 zs0 = __hsub2(h960, z0), zs1 = __hsub2(h960, z1);
                const __half2 s0 = __low2half2(sv0[t]), s1 = __low2half2(sv1[t]);
                if (kt + U < n_kt) {
                    const __half2 *p = szc + (size_t)((kt0 + kt + U) >> tiles_shift) * N;
                    buf[t] = ld_stream(src + t * 32);
                    sv0[t] = __ldg(p);
                    sv1[t] = __ldg(p + 8);
                }
#pragma unroll
                for (int kp = 0; kp < 2; kp++) {
                    uint32_t a[2][4];
#pragma unroll
                    for (int h = 0; h < 2; h++) {
                        /* as in the small kernel, then w = (q - z) * s in fp16 */
                        __half2 a2[4];
                        w4_pairs(words[kp * 2 + h], z0, z1, zs0, zs1, h16th, a2);
                        /* a[0], a[2]: column col0; a[1], a[3]: col1 */
                        a[h][0] = h2_as_u32(__hmul2(a2[0], s0));
                        a[h][1] = h2_as_u32(__hmul2(a2[1], s1));
                        a[h][2] = h2_as_u32(__hmul2(a2[2], s0));
                        a[h][3] = h2_as_u32(__hmul2(a2[3], s1));
                    }
#pragma unroll
                    for (int nb = 0; nb < NB; nb++) {
                        uint32_t b[4];
                        ldmatrix_x4_at(b, xc + (uint32_t)((nb * 8 * LDS + t * 64 + kp * 32) * 2));
                        mma_16816(acc[nb], a[0], b[0], b[1]);
                        mma_16816(acc[nb], a[1], b[2], b[3]);
                    }
                }
            }
            src += U * 32;
        }
        __syncthreads();
    }
    if (!live)
        return;

    w4_store<NB>(acc, M, N, col0, tq, nt, lane, y, ldy, part, part_counters_off);
}

#define W4G_MAX_SPLITS 8 /* splits of K of the 17-64 row kernels at most */

/* Splits of K for the rows kernel: about three blocks per SM, at least 8
 * tiles each (the partial sums of 64 rows cost 2 x 256 bytes per column
 * per split). Depends on K, N and the GPU only. */
/* As w4s_warps, for the rows kernel (QWEN3_BATCH_W4R_WARPS=4): per layer
 * at 64 rows 382.5 -> 317.3 us, at 32 rows 231.7 -> 203.3 us. */
static int w4r_warps(void)
{
    static int w = 0;
    if (!w)
        w = q3_env_int("QWEN3_BATCH_W4R_WARPS", 4, 4, 8);
    return w;
}

/* QWEN3_BATCH_W4R_SPLITS=1..8 forces the splits of the 17-64 row kernels
 * (rows and wgmma), for measurements; 0 where unset. */
static int w4r_forced_splits(void)
{
    static int forced = -1;
    if (forced < 0)
        forced = q3_env_int("QWEN3_BATCH_W4R_SPLITS", 1, W4G_MAX_SPLITS, 0);
    return forced;
}

static int w4r_splits(int K, int N, int n_sm)
{
    /* Resident blocks per SM: 3 of 4 warps, 2 of 8 (registers and x stages). */
    const int wp = w4r_warps(), kt = K / 64, col_blocks = (N / 16 + wp - 1) / wp;
    const long slots = (long)n_sm * (wp == 8 ? 2 : 3);
    const int forced = w4r_forced_splits();
    if (forced)
        return forced < kt ? forced : kt;
    /* time ~ waves x (tiles per block + ~4 to fill the ring and stage x) */
    int best = 1;
    long best_cost = -1;
    for (int sp = 1; sp <= 4 && sp <= kt / 8; sp++) {
        const int kps = (kt + sp - 1) / sp;
        if ((kt + kps - 1) / kps != sp)
            continue;
        const long waves = ((long)col_blocks * sp + slots - 1) / slots;
        const long cost = waves * (kps + 4);
        if (best_cost < 0 || cost < best_cost) {
            best_cost = cost;
            best = sp;
        }
    }
    return best;
}

/* Launches rows [0, M) (M <= 64) of the product through the rows kernel;
 * cudaErrorNotSupported, having launched nothing, where it does not apply
 * (group not a power-of-two multiple of 64, or too little shared memory
 * for two blocks per SM). */
static cudaError_t launch_rows(const __half *x, int M, int ldx, const uint4 *qw,
                               const __half2 *sz, int K, int N, int group, __half *y, int ldy,
                               float *part, size_t part_floats, int n_sm, cudaStream_t s)
{
    static int per_sm = -1;
    if (per_sm < 0) {
        per_sm = q3_dev_attr(cudaDevAttrMaxSharedMemoryPerMultiprocessor, 0);
        const w4_kernel_fn k4[] = {w4a16_rows_kernel<4, 4>, w4a16_rows_kernel<4, 8>};
        const w4_kernel_fn k8[] = {w4a16_rows_kernel<8, 4>, w4a16_rows_kernel<8, 8>};
        w4_set_max_smem(k4, 2, w4r_smem_bytes<4>());
        w4_set_max_smem(k8, 2, w4r_smem_bytes<8>());
        cudaGetLastError();
    }
    const int tiles_per_group = group / 64;
    const size_t smem = M <= 32 ? w4r_smem_bytes<4>() : w4r_smem_bytes<8>();
    if (M > 64 || group % 64 || (tiles_per_group & (tiles_per_group - 1)) ||
        N / 16 > W4_COUNTERS || (size_t)per_sm < 2 * smem)
        return cudaErrorNotSupported;
    const int kt = K / 64, sp = w4r_splits(K, N, n_sm), kps = (kt + sp - 1) / sp;
    if (sp > 1 && (size_t)sp * M * N > part_floats - W4_COUNTERS)
        return cudaErrorInvalidValue; /* the caller sizes part with cu_w4a16_part_floats */
    const int wp = w4r_warps();
    dim3 grid((N / 16 + wp - 1) / wp, sp);
    const int sh = __builtin_ctz((unsigned)tiles_per_group);
    float *p = sp > 1 ? part : NULL;
    w4_kernel_fn k = wp == 8 ? (M <= 32 ? w4a16_rows_kernel<4, 8> : w4a16_rows_kernel<8, 8>)
                             : (M <= 32 ? w4a16_rows_kernel<4, 4> : w4a16_rows_kernel<8, 4>);
    return q3_launch(k, grid, dim3(wp * 32), smem, s, x, M, ldx, qw, sz, K, N, sh, kps, y, ldy, p,
                     part_floats - W4_COUNTERS);
}

/*
 * sm_90a: 17-64 rows through wgmma (built where configure's arch list holds
 * 90a, which defines Q3_SM90A). The rows kernel above issues mma.sync from
 * 16 warps per SM and waits on each (Nsight Compute: tensor pipe 24% busy,
 * warps stalled on fixed-latency dependencies and memory). This one keeps
 * its layout - 8 warps per block, warp = one 16-column tile, weights
 * dequantized in registers from a ring W4G_U tiles deep, (q - z) * s in
 * fp16 - but multiplies with wgmma, asynchronously, weights as the
 * register operand A (m64: the 64 columns of a warpgroup, each warp's
 * fragment exactly the mma.sync A fragment the rows kernel builds) and x as
 * B from shared memory (n = 32 or 64 batch rows, K-major, 128-byte
 * swizzle); the accumulators are the rows kernel's (w4_store). A warp
 * waits for its tile's wgmma at the top of the next tile (wait_group 0),
 * so dequantization and the tensor cores overlap across the four
 * warpgroups of an SM, not within one.
 *   x: W4G_XS = 4 stages of n rows x 64 k, cp.async, 2 tiles ahead; a
 *   stage is rewritten 2 tiles after its readers, which one barrier per
 *   tile covers: every warp waited for tile kt - 2's wgmma at the top of
 *   tile kt - 1, before that tile's barrier.
 * The loop's addresses (x copy offsets and pointers, weight and scale
 * pointers, wgmma descriptors as a base plus a stage offset) are computed
 * once; the compiler had recomputed them from threadIdx in every tile, ~200
 * instructions per warp and tile of which ~55 dequantize (SASS between two
 * barriers: 197 -> 125 instructions). w4a16_bench, H100, call BF, us at 64 rows:
 * gate_up 92.1 -> 81.2, down 43.8 -> 37.6, qkv 22.8 -> 20.8, o 19.9 ->
 * 19.1; B=64 int8 decode 5,707 -> 6,224 tok/s. At 32 rows held addresses
 * measured slower (keep_if below), so there only the stage and descriptor
 * arithmetic changed.
 *
 * A tile's dequantization under the previous tile's wgmma (the wait moved
 * after it, A registers fresh per tile) does not compile to that: ptxas
 * serializes the wgmmas (C7513, "non wgmma instructions defining input
 * registers of a wgmma between start and end of the pipeline stage"),
 * whatever the commit groups and waits around it (session 10).
 *
 * Measured and dropped (w4a16_bench, H100, 2026-12-06; us at 32 / 64 rows,
 * against this kernel's):
 * - one tile left in flight (wait_group 1): ptxas serializes the wgmma
 *   anyway (C7513: registers that a wgmma reads defined while one runs):
 *   gate_up 70.6 / 121.5 against 66.6 / 95.5;
 * - a commit group per k16 step, step kk + 1 dequantized under step kk and
 *   wait_group(3) (no C7513): down 47.5 / 46.8 against 32.7 / 43.8, qkv
 *   23.7 / 23.8 against 17.1 / 22.9;
 * - one warpgroup per block, weights dequantized into shared memory as B,
 *   x as A padded to 64 rows (m64n128k16): gate_up 94.5 at 32 rows against
 *   the rows kernel's 83.9, 4-15% ahead of it at 64.
 */
#ifndef W4G_XS
#define W4G_XS 4 /* x stages (a power of two; -D for experiments) */
#endif
#ifndef W4G_U
#define W4G_U 4 /* weight tiles in flight per thread (the ring; -D for experiments) */
#endif
#ifndef W4G_BLOCKS
#define W4G_BLOCKS 2 /* blocks per SM the launch bounds ask for (-D for experiments) */
#endif

template <int NB>
static __host__ __device__ constexpr size_t w4g_smem_bytes()
{
    return (size_t)W4G_XS * NB * 8 * 128 + 1024; /* + 1 KB to align to 1024 */
}

#if defined(Q3_SM90A) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
/* A wgmma shared-memory matrix descriptor: K-major rows of 128 bytes with
 * the 128-byte swizzle, 8-row groups 1024 bytes apart (stride byte offset);
 * the leading byte offset is unused for this layout (1 by convention). */
static __device__ __forceinline__ uint64_t wg_desc(uint32_t saddr)
{
    return (uint64_t)((saddr & 0x3ffffu) >> 4) | ((uint64_t)1 << 16) | ((uint64_t)(1024 >> 4) << 32) |
           ((uint64_t)1 << 62);
}

/* The same in two halves: the low word of a stage's descriptor plus
 * (offset >> 4) is the descriptor at that offset (the 14-bit address field
 * cannot carry: shared memory ends below 256 KB). */
static __device__ __forceinline__ uint32_t wg_desc_lo(uint32_t saddr)
{
    return (uint32_t)wg_desc(saddr);
}

static __device__ __forceinline__ uint64_t wg_desc_from(uint32_t lo)
{
    return ((uint64_t)((1024 >> 4) | (1u << 30)) << 32) | lo;
}

static __device__ __forceinline__ void wg_fence(void)
{
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}

static __device__ __forceinline__ void wg_commit(void)
{
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}

template <int N>
static __device__ __forceinline__ void wg_wait(void)
{
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

/* Generic-proxy writes to shared memory (st.shared, cp.async) become
 * visible to wgmma, which reads through the async proxy. */
static __device__ __forceinline__ void fence_proxy_async(void)
{
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

/* Keeps registers that an asynchronous wgmma reads or writes where they are
 * (the compiler sees the asm as done when issued). */
template <int N>
static __device__ __forceinline__ void wg_hold(float *d)
{
#pragma unroll
    for (int i = 0; i < N; i++)
        asm volatile("" : "+f"(d[i])::"memory");
}

/* D[64 x n] += A[64 x 16] B[16 x n]: A from registers (warp w of the group:
 * rows 16w.., the m16n8k16 A fragment), B from shared memory (K-major,
 * 128-byte swizzle); fp32 accumulators d[4j .. 4j + 3] = rows 16w + g (j0,
 * j1) and + 8 (j2, j3), columns 8j + 2tq and + 1. */
static __device__ __forceinline__ void wg_mma_rs_n32(float *d, const uint32_t *a, uint64_t db)
{
    asm volatile("{\n"
                 ".reg .pred p;\n"
                 "setp.ne.b32 p, %21, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n32k16.f32.f16.f16 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, "
                 "{%16, %17, %18, %19}, %20, p, 1, 1, 0;\n"
                 "}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]),
                   "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
                   "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),
                   "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
}

static __device__ __forceinline__ void wg_mma_rs_n64(float *d, const uint32_t *a, uint64_t db)
{
    asm volatile("{\n"
                 ".reg .pred p;\n"
                 "setp.ne.b32 p, %37, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
                 "{%32, %33, %34, %35}, %36, p, 1, 1, 0;\n"
                 "}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]),
                   "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
                   "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),
                   "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
                   "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]),
                   "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
                   "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),
                   "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
}

template <int NB>
static __device__ __forceinline__ void wg_mma_rs(float *d, const uint32_t *a, uint64_t db)
{
    if (NB == 4)
        wg_mma_rs_n32(d, a, db);
    else
        wg_mma_rs_n64(d, a, db);
}
#endif

/* reg_keep where ON: the 64-row kernel holds its addresses in registers
 * (gate_up 91.5 -> 80.3 us, down 43.9 -> 37.0 at 64 rows); at 32 rows
 * that measured slower (gate_up 64.3 -> 70.2 us, with 90 registers against
 * 87), so there the compiler recomputes them as before (w4a16_bench, H100,
 * 2026-12-06, calls BF and BG). */
template <bool ON, typename T> static __device__ __forceinline__ T keep_if(T v)
{
    return ON ? reg_keep(v) : v;
}

template <int NB>
__global__ void __launch_bounds__(256, W4G_BLOCKS)
    w4a16_wg_kernel(const __half *__restrict__ x, int M, int ldx, const uint4 *__restrict__ qw,
                    const __half2 *__restrict__ sz, int K, int N, int tiles_shift, int kt_per_split,
                    __half *__restrict__ y, int ldy, float *__restrict__ part,
                    size_t part_counters_off)
{
#if defined(Q3_SM90A) && defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
    static_assert(NB == 4 || NB == 8, "n = 32 or 64 rows");
    static_assert((W4G_XS & (W4G_XS - 1)) == 0 && W4G_XS >= 4, "x stages: a power of two, >= 4");
    constexpr int ROWS = NB * 8, STAGE = ROWS * 128, U = W4G_U;
    pdl_trigger();
    extern __shared__ __align__(16) unsigned char w4g_raw[];
    const uint32_t raw = (uint32_t)__cvta_generic_to_shared(w4g_raw);
    const uint32_t sx0 = (raw + 1023u) & ~1023u; /* the swizzle repeats every 1024 bytes */
    unsigned char *gx0 = w4g_raw + (sx0 - raw);
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int g = lane >> 2;
    const int kt_count = K / 64;
    const int kt0 = blockIdx.y * kt_per_split;
    const int n_kt = min(kt0 + kt_per_split, kt_count) - kt0;

    /* As the rows kernel: warp = 16-column tile nt, columns col0 and + 8. */
    const int nt = blockIdx.x * 8 + warp, col0 = nt * 16 + g;
    /* reg_keep: computed once and held in a register; without it the
     * compiler recomputed these addresses from threadIdx in every tile */
    const uint4 *src = keep_if<NB == 8>(qw + ((int64_t)nt * kt_count + kt0) * 32 + lane);
    const __half2 *szc = keep_if<NB == 8>(sz + col0);
    uint4 buf[U];
    __half2 sv0[U], sv1[U];
#pragma unroll
    for (int u = 0; u < U; u++)
        if (u < n_kt) {
            const __half2 *p = szc + (size_t)((kt0 + u) >> tiles_shift) * N;
            buf[u] = ld_stream(src + u * 32);
            sv0[u] = __ldg(p);
            sv1[u] = __ldg(p + 8);
        }

    pdl_wait(); /* x comes from the kernel before */
    /* Rows M.. of every stage stay zero (the copies write rows < M); they
     * only reach accumulators of rows that are not stored. */
    for (int idx = tid; idx < W4G_XS * (ROWS - M) * 8; idx += 256) {
        const int st = idx / ((ROWS - M) * 8), rem = idx % ((ROWS - M) * 8);
        *reinterpret_cast<uint4 *>(gx0 + st * STAGE + (M + (rem >> 3)) * 128 + (rem & 7) * 16) =
            make_uint4(0, 0, 0, 0);
    }
    /* x: thread tid copies 16-byte chunk tid & 7 of rows tid / 8 + 32i; the
     * rows 32 apart share the swizzle (r & 7), so one shared-memory offset
     * and one global pointer serve them all, plus constants. Everything a
     * tile computes is a stage base and a k offset: the per-tile address
     * arithmetic was most of this kernel's instructions. */
    const int xr = tid >> 3, xc = tid & 7;
    const uint32_t xs_off = keep_if<NB == 8>((uint32_t)xr * 128 + ((xc ^ (xr & 7)) << 4));
    const char *xg = keep_if<NB == 8>(
        reinterpret_cast<const char *>(x + (int64_t)xr * ldx + (int64_t)kt0 * 64 + xc * 8));
    const int64_t xrow32 = keep_if<NB == 8>((int64_t)64 * ldx); /* bytes from row r to r + 32 */
    auto stage_x = [&](int kt) {
        if (kt < n_kt) {
            const uint32_t st = sx0 + (uint32_t)(kt & (W4G_XS - 1)) * STAGE + xs_off;
            const char *gp = xg + (int64_t)kt * 128;
#pragma unroll
            for (int i = 0; i < ROWS / 32; i++)
                if (xr + 32 * i < M)
                    cp_async16_at(st + i * 4096, gp + i * xrow32, 16);
        }
        cp_async_commit(); /* one group per tile, empty past the slice */
    };
    stage_x(0);
    stage_x(1);

    const __half2 h960 = __float2half2_rn(960.0f), h16th = __float2half2_rn(0.0625f);
    const uint32_t dlo = wg_desc_lo(sx0);
    float d[NB * 4];
#pragma unroll
    for (int i = 0; i < NB * 4; i++)
        d[i] = 0.0f;
    for (int base_kt = 0; base_kt < n_kt; base_kt += U) {
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int kt = base_kt + u;
            if (kt >= n_kt)
                break;
            wg_wait<0>(); /* the tile before is done: its registers and x stage are free */
            /* Its stage was last read by tile kt - 2, done everywhere: every
             * warp waited for that tile at the top of tile kt - 1, before
             * tile kt - 1's barrier, which this warp has passed. */
            stage_x(kt + 2);

            const uint32_t words[4] = {buf[u].x, buf[u].y, buf[u].z, buf[u].w};
            const __half2 z0 = __high2half2(sv0[u]), z1 = __high2half2(sv1[u]);
            const __half2 zs0 = __hsub2(h960, z0), zs1 = __hsub2(h960, z1);
            const __half2 s0 = __low2half2(sv0[u]), s1 = __low2half2(sv1[u]);
            if (kt + U < n_kt) {
                const __half2 *p = szc + (size_t)((kt0 + kt + U) >> tiles_shift) * N;
                buf[u] = ld_stream(src + (kt + U) * 32);
                sv0[u] = __ldg(p);
                sv1[u] = __ldg(p + 8);
            }
            /* The A fragments, [k16 step][fragment]: a[0], a[2] column col0,
             * a[1], a[3] col0 + 8. One set, fresh per tile: the wait at the
             * top of the tile retired the wgmma that read the last one. */
            uint32_t a[4][4];
#pragma unroll
            for (int kk = 0; kk < 4; kk++) {
                __half2 a2[4];
                w4_pairs(words[kk], z0, z1, zs0, zs1, h16th, a2);
                a[kk][0] = h2_as_u32(__hmul2(a2[0], s0));
                a[kk][1] = h2_as_u32(__hmul2(a2[1], s1));
                a[kk][2] = h2_as_u32(__hmul2(a2[2], s0));
                a[kk][3] = h2_as_u32(__hmul2(a2[3], s1));
            }

            cp_async_wait_pending<2>(); /* x of tile kt (two younger groups may fly) */
            fence_proxy_async();
            __syncthreads();

            /* the four descriptors computed (and pinned by the empty asm)
             * before the first wgmma, so the four issue back to back */
            const uint32_t xlo = dlo + (uint32_t)(kt & (W4G_XS - 1)) * (STAGE >> 4);
            uint64_t xd[4];
#pragma unroll
            for (int kk = 0; kk < 4; kk++) {
                xd[kk] = wg_desc_from(xlo + kk * 2);
                asm volatile("" : "+l"(xd[kk])::"memory");
            }
            wg_fence();
#pragma unroll
            for (int kk = 0; kk < 4; kk++)
                wg_mma_rs<NB>(d, a[kk], xd[kk]);
            wg_commit();
            wg_hold<NB * 4>(d);
        }
    }
    wg_wait<0>();
    wg_hold<NB * 4>(d);
    w4_store<NB>(reinterpret_cast<const float(*)[4]>(d), M, N, col0, lane & 3, nt, lane, y, ldy,
                 part, part_counters_off);
#endif
}

/* Whether this build has the wgmma kernel and the GPU runs it: sm_90a code
 * runs on compute capability 9.0 only. QWEN3_BATCH_W4_WG=0 turns it off
 * (for measurements). */
static int w4g_enabled(void)
{
    static int on = -1;
    if (on < 0) {
#if defined(Q3_SM90A)
        on = q3_env_int("QWEN3_BATCH_W4_WG", 0, 0, 1) &&
             q3_dev_attr(cudaDevAttrComputeCapabilityMajor, 0) == 9 &&
             q3_dev_attr(cudaDevAttrComputeCapabilityMinor, 0) == 0;
        if (on && (cudaFuncSetAttribute(w4a16_wg_kernel<4>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        (int)w4g_smem_bytes<4>()) != cudaSuccess ||
                   cudaFuncSetAttribute(w4a16_wg_kernel<8>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        (int)w4g_smem_bytes<8>()) != cudaSuccess))
            on = 0;
        cudaGetLastError();
#else
        on = 0;
#endif
    }
    return on;
}

/* Splits of K for the wgmma kernel (W4G_BLOCKS = 2 blocks of 8 warps per SM,
 * as the rows kernel): a block's time ~ its tiles + ~4 to fill the ring and
 * stage x, the grid's ~ that times its waves, and each split adds partial
 * sums of 64 x N floats (costed at 64 rows whatever M is, so that the
 * splits, and a row's sums, depend on K, N and the GPU only), written and
 * read back through L2, ~1/4 of their bytes' worth of weight tiles. Fitted
 * to a sweep of 1-8 splits (w4a16_bench, H100, 2026-12-06; us at 32 / 64
 * rows): down takes 6 (33.0 / 44.2 against 44.1 / 59.2 at the rows
 * kernel's 4; 8 make two waves: 39.0 / 52.6), o 6 (14.5 / 20.1 against 16.9
 * / 22.6), qkv 4 (17.2 / 23.0; 5 make two waves: 22.2 / 29.9), gate_up,
 * already 4-5 waves, 3 (64.8 / 91.5; 4: 66.2 / 94.9, 1: 77.8 / 104.9, 8:
 * 80.1 / 122.5).
 */
static int w4g_splits(int K, int N, int n_sm)
{
    const int kt = K / 64, col_blocks = N / 128, forced = w4r_forced_splits();
    if (forced)
        return forced < kt ? forced : kt;
    const double slots = (double)W4G_BLOCKS * n_sm;
    const double per_split = 64.0 * col_blocks / (16.0 * slots);
    int best = 1;
    double best_cost = -1.0;
    for (int sp = 1; sp <= W4G_MAX_SPLITS && sp <= kt / 8; sp++) {
        const int kps = (kt + sp - 1) / sp;
        if ((kt + kps - 1) / kps != sp)
            continue;
        const double waves = (double)(((long)col_blocks * sp + (long)slots - 1) / (long)slots);
        const double cost = waves * (kps + 4) + sp * per_split;
        if (best_cost < 0 || cost < best_cost - 1e-9) {
            best_cost = cost;
            best = sp;
        }
    }
    return best;
}

/* Rows [0, M) (M <= 64; a chunk of a product of more than 16 rows, or of
 * any product where the small kernel is off) through the wgmma kernel,
 * with the rows kernel's column blocks and splits of its own (n = 32 for
 * up to 32 rows: for 1-16 rows n = 8 and 16 were slower than the small
 * kernel, docs/PERF-cuda.md); cudaErrorNotSupported, having launched
 * nothing, where it does not apply. */
static cudaError_t launch_wg(const __half *x, int M, int ldx, const uint4 *qw, const __half2 *sz,
                             int K, int N, int group, __half *y, int ldy, float *part,
                             size_t part_floats, int n_sm, cudaStream_t s)
{
    const int tiles_per_group = group / 64;
    if (!w4g_enabled() || M > 64 || N % 128 || w4r_warps() != 8 || group % 64 ||
        (tiles_per_group & (tiles_per_group - 1)) || N / 16 > W4_COUNTERS)
        return cudaErrorNotSupported;
    const int kt = K / 64, sp = w4g_splits(K, N, n_sm), kps = (kt + sp - 1) / sp;
    if (sp > 1 && (size_t)sp * M * N > part_floats - W4_COUNTERS)
        return cudaErrorInvalidValue; /* the caller sizes part with cu_w4a16_part_floats */
    const int sh = __builtin_ctz((unsigned)tiles_per_group);
    float *p = sp > 1 ? part : NULL;
    if (M <= 32)
        return q3_launch(w4a16_wg_kernel<4>, dim3(N / 128, sp), dim3(256), w4g_smem_bytes<4>(), s, x,
                         M, ldx, qw, sz, K, N, sh, kps, y, ldy, p, part_floats - W4_COUNTERS);
    return q3_launch(w4a16_wg_kernel<8>, dim3(N / 128, sp), dim3(256), w4g_smem_bytes<8>(), s, x, M,
                     ldx, qw, sz, K, N, sh, kps, y, ldy, p, part_floats - W4_COUNTERS);
}

template <int MT, int WARPS, int STAGES>
static void launch_mma(dim3 grid, const __half *x, int M, int ldx, const uint4 *qw,
                       const __half2 *sz, int K, int N, int group, int cps, __half *y, int ldy,
                       float *part, size_t ctr_off, cudaStream_t s)
{
    constexpr size_t smem = w4_smem_bytes<MT, WARPS, STAGES>();
    static bool attr_set = false;
    if (!attr_set) {
        cudaFuncSetAttribute(w4a16_mma_kernel<MT, WARPS, STAGES>,
                             cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
        attr_set = true;
    }
    w4a16_mma_kernel<MT, WARPS, STAGES><<<grid, WARPS * 32, smem, s>>>(x, M, ldx, qw, sz, K, N, group,
                                                                      cps, y, ldy, part, ctr_off);
}

template <int MT, int WARPS, int STAGES>
static int occupancy(void)
{
    constexpr size_t smem = w4_smem_bytes<MT, WARPS, STAGES>();
    cudaFuncSetAttribute(w4a16_mma_kernel<MT, WARPS, STAGES>,
                         cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    int n = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, w4a16_mma_kernel<MT, WARPS, STAGES>,
                                                      WARPS * 32, smem) != cudaSuccess)
        n = 1;
    cudaGetLastError();
    return n > 0 ? n : 1;
}

/*
 * Kernel shapes. H100-class parts (227 KB of shared memory per block) run
 * 64-row launches; smaller ones (the 3090's 99 KB) 32-row launches with
 * 128-column blocks and 2 stages. The shape for one row tile (decode) can be
 * chosen with QWEN3_BATCH_W4_DECODE=warps,stages (for measurements).
 */
struct w4_cfg {
    int big, rows;
    int dec_warps, dec_stages; /* MT == 1 */
    int slots_per_sm;          /* resident blocks per SM of the MT == 1 shape */
};

static const w4_cfg *w4_config(void)
{
    static w4_cfg cfg;
    static int done = 0;
    if (done)
        return &cfg;
    cfg.big = q3_dev_attr(cudaDevAttrMaxSharedMemoryPerBlockOptin, 0) >= 220 * 1024;
    cfg.rows = cfg.big ? 64 : 32;
    /* Measured on the H100 (qwen3-14b decode, batch 1): 4 warps x 2 stages
     * (4 blocks, 16 warps per SM) 159 tok/s; 8x2 152; 4x4 130; 8x4 126:
     * resident warps matter more than pipeline depth. */
    cfg.dec_warps = 4;
    cfg.dec_stages = 2;
    const char *env = getenv("QWEN3_BATCH_W4_DECODE");
    int w = 0, st = 0;
    if (cfg.big && env && sscanf(env, "%d,%d", &w, &st) == 2 && (w == 4 || w == 8) &&
        (st == 2 || st == 4)) {
        cfg.dec_warps = w;
        cfg.dec_stages = st;
    }
    int code = cfg.dec_warps * 10 + cfg.dec_stages;
    cfg.slots_per_sm = code == 84 ? occupancy<1, 8, 4>() : code == 82 ? occupancy<1, 8, 2>()
                     : code == 44 ? occupancy<1, 4, 4>() : occupancy<1, 4, 2>();
    done = 1;
    return &cfg;
}

static int w4_rows(void) { return w4_config()->rows; }

/*
 * Splits of the mma kernel (the fallback). They depend on N, K and the GPU
 * only, never on M, and rows are done in launches of at most 64: a row's
 * sums run in the same order whatever else shares a batch of more than 16
 * rows (batches of up to 16 use the small kernel, larger ones the rows
 * kernel, and each keeps the same promise among its own batches).
 */
extern "C" int cu_w4a16_splits(int K, int N, int n_sm)
{
    /* Time ~ waves x (chunks per block + 1 for filling the pipeline), for the
     * decode shape: pick the split that minimizes it, so that a 136-block
     * wave on 132 SMs does not cost two and every SM has blocks enough. */
    const w4_cfg *cf = w4_config();
    int bn = cf->dec_warps * W4_NPW * 16;
    int n_blocks = (N + bn - 1) / bn;
    int n_chunks = (K + W4_KC - 1) / W4_KC;
    long slots = (long)n_sm * cf->slots_per_sm;
    int best = 1;
    long best_cost = -1;
    for (int sp = 1; sp <= n_chunks && sp <= 64; sp++) {
        int cps = (n_chunks + sp - 1) / sp;
        int real = (n_chunks + cps - 1) / cps;
        if (real != sp)
            continue;
        /* waves x chunks per block, stretched when too few blocks are
         * resident to keep the memory system busy. */
        long blocks = (long)n_blocks * sp;
        long waves = (blocks + slots - 1) / slots;
        long cost = waves * (cps + 1) * 1000 * slots / (blocks < slots ? blocks : slots);
        if (best_cost < 0 || cost < best_cost) {
            best_cost = cost;
            best = sp;
        }
    }
    return best;
}

extern "C" cudaError_t cu_w4a16_gemm(const void *x, int M, int ldx, const void *qw, const void *sz,
                                     int K, int N, int group, void *y, int ldy, float *part,
                                     size_t part_floats, int n_sm, cudaStream_t s)
{
    if (M <= 0)
        return cudaSuccess;
    if (K % 64 || N % 16 || group % 16 || K % group || ldx % 8 || ldy % 2)
        return cudaErrorInvalidValue;
    const w4_cfg *cf = w4_config();
    int n_chunks = (K + W4_KC - 1) / W4_KC;
    int splits = cu_w4a16_splits(K, N, n_sm);
    int cps = (n_chunks + splits - 1) / splits;
    int step = cf->rows;
    if (splits > 1 && (size_t)splits * step * N + W4_COUNTERS > part_floats)
        return cudaErrorInvalidValue; /* the caller sizes part with cu_w4a16_part_floats */
    const size_t ctr_off = part_floats - W4_COUNTERS;
    if (w4s_enabled()) {
        cudaError_t e = launch_small((const __half *)x, M, ldx, (const uint4 *)qw,
                                     (const __half2 *)sz, K, N, group, (__half *)y, ldy, part,
                                     part_floats, n_sm, s);
        if (e != cudaErrorNotSupported)
            return e;
        /* More than 16 rows: 64-row chunks through the wgmma kernel (sm_90a)
         * or the rows kernel (a short last chunk too, so a row's sums do not
         * depend on where it sits). */
        e = cudaSuccess;
        for (int m0 = 0; m0 < M && e == cudaSuccess; m0 += 64) {
            const int mc = M - m0 < 64 ? M - m0 : 64;
            const __half *xc = (const __half *)x + (int64_t)m0 * ldx;
            __half *yc = (__half *)y + (int64_t)m0 * ldy;
            e = launch_wg(xc, mc, ldx, (const uint4 *)qw, (const __half2 *)sz, K, N, group, yc,
                          ldy, part, part_floats, n_sm, s);
            if (e == cudaErrorNotSupported)
                e = launch_rows(xc, mc, ldx, (const uint4 *)qw, (const __half2 *)sz, K, N, group,
                                yc, ldy, part, part_floats, n_sm, s);
        }
        if (e != cudaErrorNotSupported)
            return e;
    }
    for (int m0 = 0; m0 < M; m0 += step) {
        int rows = M - m0 < step ? M - m0 : step;
        int mt = (rows + 15) / 16;
        int warps = mt == 1 ? cf->dec_warps : cf->big ? 8 : 4;
        int bn = warps * W4_NPW * 16;
        dim3 grid((N + bn - 1) / bn, splits);
        float *p = splits > 1 ? part : NULL;
        const __half *xh = (const __half *)x + (int64_t)m0 * ldx;
        __half *yh = (__half *)y + (int64_t)m0 * ldy;
        const uint4 *q4 = (const uint4 *)qw;
        const __half2 *s2 = (const __half2 *)sz;
        if (mt == 1) {
            switch (cf->dec_warps * 10 + cf->dec_stages) {
            case 84: launch_mma<1, 8, 4>(grid, xh, rows, ldx, q4, s2, K, N, group, cps, yh, ldy, p, ctr_off, s); break;
            case 82: launch_mma<1, 8, 2>(grid, xh, rows, ldx, q4, s2, K, N, group, cps, yh, ldy, p, ctr_off, s); break;
            case 44: launch_mma<1, 4, 4>(grid, xh, rows, ldx, q4, s2, K, N, group, cps, yh, ldy, p, ctr_off, s); break;
            default: launch_mma<1, 4, 2>(grid, xh, rows, ldx, q4, s2, K, N, group, cps, yh, ldy, p, ctr_off, s); break;
            }
        } else if (cf->big) {
            switch (mt) {
            case 2: launch_mma<2, 8, 4>(grid, xh, rows, ldx, q4, s2, K, N, group, cps, yh, ldy, p, ctr_off, s); break;
            case 3: launch_mma<3, 8, 3>(grid, xh, rows, ldx, q4, s2, K, N, group, cps, yh, ldy, p, ctr_off, s); break;
            default: launch_mma<4, 8, 3>(grid, xh, rows, ldx, q4, s2, K, N, group, cps, yh, ldy, p, ctr_off, s); break;
            }
        } else {
            launch_mma<2, 4, 2>(grid, xh, rows, ldx, q4, s2, K, N, group, cps, yh, ldy, p, ctr_off, s);
        }
    }
    return cudaGetLastError();
}


extern "C" size_t cu_w4a16_part_floats(int K, int N, int n_sm)
{
    size_t mma = (size_t)cu_w4a16_splits(K, N, n_sm) * w4_rows() * N;
    const int sp1 = w4s_splits(K, N, n_sm, 1), sp2 = w4s_splits(K, N, n_sm, 2);
    size_t small = (size_t)(sp1 > sp2 ? sp1 : sp2) * W4S_MAX_ROWS * N;
    const int sp_rows = w4r_splits(K, N, n_sm), sp_wg = w4g_enabled() ? w4g_splits(K, N, n_sm) : 0;
    size_t rows = (size_t)(sp_rows > sp_wg ? sp_rows : sp_wg) * 64 * N;
    size_t most = mma > small ? mma : small;
    return (most > rows ? most : rows) + W4_COUNTERS;
}

extern "C" cudaError_t cu_w4a16_init_scratch(float *part, size_t part_floats, cudaStream_t s)
{
    (void)part_floats;
    return cudaMemsetAsync(part, 0, part_floats * sizeof(float), s);
}

/* ---- dequantization for cuBLAS ---- */

/* One thread per packed word: writes 8 weights as 4 half2 (k, k+1) pairs. */
__global__ void w4a16_dequant_kernel(const uint4 *__restrict__ qw, const __half2 *__restrict__ sz,
                                     int K, int N, int group, int nt_begin, int nt_count,
                                     __half *__restrict__ w)
{
    int kt_count = K / 64;
    int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; /* (tile, lane, ks) */
    if (idx >= (int64_t)nt_count * kt_count * 128)
        return;
    int ks = (int)(idx & 3);
    int lane = (int)((idx >> 2) & 31);
    int64_t tile = idx >> 7;
    int kt = (int)(tile % kt_count), ntl = (int)(tile / kt_count);
    int nt = nt_begin + ntl;
    const uint32_t *words = reinterpret_cast<const uint32_t *>(qw + ((int64_t)nt * kt_count + kt) * 32 + lane);
    uint32_t word = words[ks];
    int g = lane >> 2, tq = lane & 3;
    int grp = (kt * 64 + ks * 16) / group;
#pragma unroll
    for (int t = 0; t < 2; t++) {
        int n = nt * 16 + t * 8 + g;
        __half2 v = sz[(int64_t)grp * N + n];
        __half2 s2 = __low2half2(v), z2 = __high2half2(v);
#pragma unroll
        for (int r = 0; r < 2; r++) {
            uint32_t p = dequant_pair(word, 2 * t + r, s2, z2);
            int k = kt * 64 + ks * 16 + r * 8 + 2 * tq;
            *reinterpret_cast<uint32_t *>(w + (int64_t)(n - nt_begin * 16) * K + k) = p;
        }
    }
}

extern "C" cudaError_t cu_w4a16_dequant(const void *qw, const void *sz, int K, int N, int group,
                                        int n_begin, int n_count, void *w, cudaStream_t s)
{
    if (K % 64 || N % 16 || n_begin % 16 || n_count % 16 || n_begin + n_count > N)
        return cudaErrorInvalidValue;
    int64_t n_threads = (int64_t)(n_count / 16) * (K / 64) * 128;
    w4a16_dequant_kernel<<<(unsigned)((n_threads + 255) / 256), 256, 0, s>>>(
        (const uint4 *)qw, (const __half2 *)sz, K, N, group, n_begin / 16, n_count / 16,
        (__half *)w);
    return cudaGetLastError();
}
