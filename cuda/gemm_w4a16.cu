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
 * Prefill (large M) dequantizes to fp16 (cu_w4a16_dequant) and lets cuBLAS
 * run the product; that choice is made in cuda_engine.c.
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

static __device__ __forceinline__ void cp_async_commit(void)
{
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}

template <int N_PENDING>
static __device__ __forceinline__ void cp_async_wait_pending(void)
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N_PENDING) : "memory");
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
    __shared__ int s_last;
    __threadfence();
    __syncthreads();
    if (tid == 0)
        s_last = atomicAdd(&counters[blockIdx.x], 1) == (int)gridDim.y - 1;
    __syncthreads();
    if (!s_last)
        return;
    __threadfence();
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
    int dev = 0, v = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    cfg.big = v >= 220 * 1024;
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
 * The split of K depends on N, K and the GPU only, never on M, and rows are
 * done in launches of at most 64: a row's sums then run in the same order
 * whatever else shares the batch, so a sequence gets the same logits alone
 * or in a ragged batch (batch invariance).
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
    int splits = cu_w4a16_splits(K, N, n_sm);
    return (splits > 1 ? (size_t)splits * w4_rows() * N : 0) + W4_COUNTERS;
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
