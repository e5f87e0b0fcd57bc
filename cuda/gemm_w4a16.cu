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

/*
 * Block: 8 warps x 32 columns = 256 columns, all MT*16 rows, k chunks
 * [c_begin, c_end) of 256. grid (N / 256, splits, M / (MT*16)).
 */
template <int MT>
__global__ void __launch_bounds__(W4_WARPS * 32, 2)
    w4a16_mma_kernel(const __half *__restrict__ x, int M, int ldx, const uint4 *__restrict__ qw,
                     const __half2 *__restrict__ sz, int K, int N, int group, int chunks_per_split,
                     __half *__restrict__ y, int ldy, float *__restrict__ part)
{
    __shared__ __align__(16) __half sx[MT * 16 * W4_LDS];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, tq = lane & 3;
    const int kt_count = K / 64, nt_count = N / 16;
    const int m0 = blockIdx.z * MT * 16;
    const int rows = min(M - m0, MT * 16);
    const int nt0 = (blockIdx.x * W4_WARPS + warp) * W4_NPW;
    const int n_chunks = (K + W4_KC - 1) / W4_KC;
    const int c_begin = blockIdx.y * chunks_per_split;
    const int c_end = min(c_begin + chunks_per_split, n_chunks);
    const bool group64 = group % 64 == 0;

    float acc[MT][W4_NPW * 2][4];
#pragma unroll
    for (int a = 0; a < MT; a++)
#pragma unroll
        for (int b = 0; b < W4_NPW * 2; b++)
#pragma unroll
            for (int c = 0; c < 4; c++)
                acc[a][b][c] = 0.0f;

    for (int c = c_begin; c < c_end; c++) {
        const int kt0 = c * 4;
        const int n_kt = min(4, kt_count - kt0);
        /* Issue this chunk's weight loads before waiting on x. */
        uint4 wv[4][W4_NPW];
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
            for (int j = 0; j < W4_NPW; j++)
                wv[i][j] = (i < n_kt && nt0 + j < nt_count)
                               ? ld_stream(qw + ((int64_t)(nt0 + j) * kt_count + kt0 + i) * 32 + lane)
                               : make_uint4(0, 0, 0, 0);
        __syncthreads();
        for (int idx = threadIdx.x; idx < MT * 16 * (W4_KC / 8); idx += W4_WARPS * 32) {
            int r = idx / (W4_KC / 8), cc = idx % (W4_KC / 8);
            int k = c * W4_KC + cc * 8;
            bool ok = r < rows && k < K;
            cp_async16(sx + r * W4_LDS + cc * 8, ok ? x + (int64_t)(m0 + r) * ldx + k : x, ok ? 16 : 0);
        }
        cp_async_wait_all();
        __syncthreads();
#pragma unroll
        for (int i = 0; i < 4; i++) {
            if (i >= n_kt)
                break;
            __half2 s2[W4_NPW][2], z2[W4_NPW][2];
            const int kt = kt0 + i;
#pragma unroll
            for (int ks = 0; ks < 4; ks++) {
                if (ks == 0 || !group64) {
                    int grp = (kt * 64 + ks * 16) / group;
#pragma unroll
                    for (int j = 0; j < W4_NPW; j++)
#pragma unroll
                        for (int t = 0; t < 2; t++) {
                            int n = (nt0 + j) * 16 + t * 8 + g;
                            __half2 v = (nt0 + j < nt_count) ? sz[(int64_t)grp * N + n]
                                                             : __floats2half2_rn(0.f, 0.f);
                            s2[j][t] = __low2half2(v);
                            z2[j][t] = __high2half2(v);
                        }
                }
                uint32_t afrag[MT][4];
#pragma unroll
                for (int mt = 0; mt < MT; mt++)
                    ldmatrix_x4(afrag[mt], sx + (mt * 16 + (lane & 15)) * W4_LDS + i * 64 + ks * 16 +
                                               (lane >> 4) * 8);
#pragma unroll
                for (int j = 0; j < W4_NPW; j++) {
                    uint32_t w = ks == 0 ? wv[i][j].x : ks == 1 ? wv[i][j].y : ks == 2 ? wv[i][j].z : wv[i][j].w;
#pragma unroll
                    for (int t = 0; t < 2; t++) {
                        uint32_t b0 = dequant_pair(w, 2 * t, s2[j][t], z2[j][t]);
                        uint32_t b1 = dequant_pair(w, 2 * t + 1, s2[j][t], z2[j][t]);
#pragma unroll
                        for (int mt = 0; mt < MT; mt++)
                            mma_16816(acc[mt][j * 2 + t], afrag[mt], b0, b1);
                    }
                }
            }
        }
    }

    /* Epilogue: rows mt*16 + g (+8), columns n, n+1. */
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int j = 0; j < W4_NPW; j++) {
            if (nt0 + j >= nt_count)
                continue;
#pragma unroll
            for (int t = 0; t < 2; t++) {
                int n = (nt0 + j) * 16 + t * 8 + 2 * tq;
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    int r = mt * 16 + g + h * 8;
                    if (r >= rows)
                        continue;
                    float v0 = acc[mt][j * 2 + t][2 * h], v1 = acc[mt][j * 2 + t][2 * h + 1];
                    if (part) {
                        float2 *p = reinterpret_cast<float2 *>(
                            part + ((int64_t)blockIdx.y * M + m0 + r) * N + n);
                        *p = make_float2(v0, v1);
                    } else {
                        *reinterpret_cast<__half2 *>(y + (int64_t)(m0 + r) * ldy + n) =
                            __floats2half2_rn(v0, v1);
                    }
                }
            }
        }
}

/* y = sum over splits of part[split][M][N], in split order. */
__global__ void w4a16_reduce_kernel(const float *__restrict__ part, int splits, int M, int N,
                                    __half *__restrict__ y, int ldy)
{
    int64_t i = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * 2;
    int64_t total = (int64_t)M * N;
    if (i >= total)
        return;
    float a = 0, b = 0;
    for (int sp = 0; sp < splits; sp++) {
        float2 v = *reinterpret_cast<const float2 *>(part + sp * total + i);
        a += v.x;
        b += v.y;
    }
    int64_t m = i / N, n = i % N;
    *reinterpret_cast<__half2 *>(y + m * ldy + n) = __floats2half2_rn(a, b);
}

template <int MT>
static void launch_mma(dim3 grid, const __half *x, int M, int ldx, const uint4 *qw,
                       const __half2 *sz, int K, int N, int group, int cps, __half *y, int ldy,
                       float *part, cudaStream_t s)
{
    w4a16_mma_kernel<MT><<<grid, W4_WARPS * 32, 0, s>>>(x, M, ldx, qw, sz, K, N, group, cps, y, ldy,
                                                         part);
}

/*
 * The split of K depends on N, K and the GPU only, never on M, and rows are
 * done in launches of at most 64: a row's sums then run in the same order
 * whatever else shares the batch, so a sequence gets the same logits alone
 * or in a ragged batch (batch invariance).
 */
extern "C" int cu_w4a16_splits(int K, int N, int n_sm)
{
    int n_blocks = (N + W4_BLOCK_N - 1) / W4_BLOCK_N;
    int n_chunks = (K + W4_KC - 1) / W4_KC;
    /* Several blocks per SM even for wide N: one 136-block wave on 132 SMs
     * would leave most SMs idle for half the time. */
    int want = 4 * n_sm / n_blocks;
    int splits = want < 1 ? 1 : want > n_chunks ? n_chunks : want;
    int cps = (n_chunks + splits - 1) / splits;
    return (n_chunks + cps - 1) / cps;
}

extern "C" cudaError_t cu_w4a16_gemm(const void *x, int M, int ldx, const void *qw, const void *sz,
                                     int K, int N, int group, void *y, int ldy, float *part,
                                     size_t part_floats, int n_sm, cudaStream_t s)
{
    if (M <= 0)
        return cudaSuccess;
    if (K % 64 || N % 16 || group % 16 || K % group || ldx % 8 || ldy % 2)
        return cudaErrorInvalidValue;
    int n_blocks = (N + W4_BLOCK_N - 1) / W4_BLOCK_N;
    int n_chunks = (K + W4_KC - 1) / W4_KC;
    int splits = cu_w4a16_splits(K, N, n_sm);
    int cps = (n_chunks + splits - 1) / splits;
    if (splits > 1 && (size_t)splits * 64 * N > part_floats)
        return cudaErrorInvalidValue; /* the caller sizes part with cu_w4a16_part_floats */
    for (int m0 = 0; m0 < M; m0 += 64) {
        int rows = M - m0 < 64 ? M - m0 : 64;
        int mt = (rows + 15) / 16;
        dim3 grid(n_blocks, splits, 1);
        float *p = splits > 1 ? part : NULL;
        const __half *xh = (const __half *)x + (int64_t)m0 * ldx;
        __half *yh = (__half *)y + (int64_t)m0 * ldy;
        const uint4 *q4 = (const uint4 *)qw;
        const __half2 *s2 = (const __half2 *)sz;
        switch (mt) {
        case 1: launch_mma<1>(grid, xh, rows, ldx, q4, s2, K, N, group, cps, yh, ldy, p, s); break;
        case 2: launch_mma<2>(grid, xh, rows, ldx, q4, s2, K, N, group, cps, yh, ldy, p, s); break;
        case 3: launch_mma<3>(grid, xh, rows, ldx, q4, s2, K, N, group, cps, yh, ldy, p, s); break;
        default: launch_mma<4>(grid, xh, rows, ldx, q4, s2, K, N, group, cps, yh, ldy, p, s); break;
        }
        if (splits > 1) {
            int64_t pairs = (int64_t)rows * N / 2;
            w4a16_reduce_kernel<<<(unsigned)((pairs + 255) / 256), 256, 0, s>>>(part, splits, rows,
                                                                                N, yh, ldy);
        }
    }
    return cudaGetLastError();
}

extern "C" size_t cu_w4a16_part_floats(int K, int N, int n_sm)
{
    int splits = cu_w4a16_splits(K, N, n_sm);
    return splits > 1 ? (size_t)splits * 64 * N : 0;
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
