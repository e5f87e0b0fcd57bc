/*
 * attention.cu - causal attention over the paged KV cache, for prefill and
 * decode alike (flash-attention 2 style, mma.sync on fp16, fp32 softmax).
 *
 * A block takes a tile of "rows": row r of a sequence's step is token r / G
 * and query head kv_head * G + r % G, so the G query heads that share one KV
 * head (GQA) are processed together and each K/V tile loaded into shared
 * memory serves all of them. Prefill tiles are 64 or 128 rows (4 warps);
 * decode tiles are 16 rows (the 4 warps split each key tile) and split the
 * keys over several blocks (flash-decoding), the last of which to finish
 * merges their partial results, so a handful of long sequences still fills
 * the GPU. int8 pages are dequantized while staging a tile. The host
 * (cuda_engine.c) builds the work lists once per step; every layer reuses
 * them.
 */
#include "common.cuh"

#include <math.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <type_traits>

#define ATT_KB 64
#define ATT_PAGE 16 /* KV page size the kernels take (cuda_engine.c PAGE_SIZE) */

/* Flash-decoding's merge, done by the last block of a combine entry to
 * finish (no second kernel per layer): each block's partial results are
 * released before it counts itself, the last one reads them all from
 * L2, in part order (the same sums whatever order the blocks ran in), and
 * re-arms the counter for the next layer. 16 rows, D columns, 4 warps. */
template <int D>
static __device__ void attn_combine_last(__half *__restrict__ out, const cu_attn_seg &sg,
                                         const cu_attn_combine c, int *counter, int G,
                                         int n_heads, const float *part_o, const float *part_lse)
{
    /* The barrier orders the block's writes before thread 0's release
     * fence (cumulative), and the last block's acquire before its barrier:
     * CUTLASS's split-K semaphore pattern. A __threadfence in every thread
     * was a MEMBAR.SC in each (Nsight Compute: 0.5-2 cycles of membar stall
     * per issued instruction of the decode kernel). */
    __shared__ int last;
    __syncthreads();
    if (threadIdx.x == 0) {
        fence_acq_rel_gpu();
        last = atomicAdd(counter, 1) == c.n_parts - 1;
        if (last)
            fence_acq_rel_gpu();
    }
    __syncthreads();
    if (!last)
        return;
    /* A warp per row; lane p holds part p's lse (n_parts <= 32), and the
     * parts' rows are read 4 at a time: a loop of dependent L2 reads per
     * part was a tail of microseconds on the last block. */
    const int rows_total = sg.n_tok * G, lane = threadIdx.x & 31;
    for (int rr = threadIdx.x / 32; rr < 16; rr += blockDim.x / 32) {
        const int r = c.row0 + rr;
        if (r >= rows_total)
            continue;
        const float lse =
            lane < c.n_parts ? __ldcg(part_lse + (int64_t)(c.part0 + lane) * 16 + rr) : -INFINITY;
        const float mx = warp_max(lse);
        const float wgt = lse == -INFINITY ? 0.0f : exp2f(lse - mx);
        float acc[D / 32];
#pragma unroll
        for (int i = 0; i < D / 32; i++)
            acc[i] = 0.0f;
        float wsum = 0.0f;
#pragma unroll 4
        for (int p = 0; p < c.n_parts; p++) {
            const float wp = __shfl_sync(Q3_FULL_MASK, wgt, p);
            wsum += wp;
            const float *po = part_o + ((int64_t)(c.part0 + p) * 16 + rr) * D;
#pragma unroll
            for (int i = 0; i < D / 32; i++)
                acc[i] += wp * __ldcg(po + lane + 32 * i);
        }
        const float inv = wsum > 0.0f ? 1.0f / wsum : 0.0f;
        __half *dst = out + ((int64_t)(sg.tok0 + r / G) * n_heads + c.kv_head * G + r % G) * D;
#pragma unroll
        for (int i = 0; i < D / 32; i++)
            dst[lane + 32 * i] = __float2half(acc[i] * inv);
    }
    if (threadIdx.x == 0)
        *counter = 0;
}

/* DEC: a decode tile of 16 rows, whose keys the warps split (warp w takes
 * keys 16w..16w+15 of every 64-key tile, with its own running softmax) and
 * merge at the end; otherwise each warp has 16 * QT rows of its own and all
 * the keys.
 * QT: 16-row query tiles per warp (prefill). With QT = 1 the
 * warp keeps its Q fragments in registers and three blocks fit per SM
 * (Nsight Compute on the H100, 1 x 4096 prefill: latency-bound, 0.4
 * instructions issued per scheduler-cycle; 2 -> 3 blocks per SM was 21%).
 * With QT = 2 (flash-attention 2's 128-row blocks) Q is staged in shared
 * memory and every K/V fragment loaded from shared memory feeds two tiles'
 * products: twice the independent work per instruction stream, two blocks
 * per SM.
 * ST: stages of fp16 K/V tiles, 2 (the copy of tile i + 1 overlaps the
 * multiply of tile i) or 1 (half the shared memory: see attn_prefill_shape). */
/* The weights of W warps' partial softmaxes of one row in a block's merge:
 * m (raw scores) and l at xm[v * stride], xl[v * stride]; M = max m, f[v] =
 * 2^((m_v - M) scale_log2) (0 for a warp that saw no key), and the merged
 * L = sum l_v f[v], returned. */
template <int W>
static __device__ __forceinline__ float warp_merge_weights(const float *xm, const float *xl,
                                                           int stride, float scale_log2, float *f,
                                                           float &M)
{
    M = -INFINITY;
#pragma unroll
    for (int v = 0; v < W; v++)
        M = fmaxf(M, xm[v * stride]);
    float L = 0.0f;
#pragma unroll
    for (int v = 0; v < W; v++) {
        f[v] = xm[v * stride] == -INFINITY ? 0.0f : exp2f((xm[v * stride] - M) * scale_log2);
        L += xl[v * stride] * f[v];
    }
    return L;
}

template <int D, int WARPS, bool I8, bool DEC, int ST = 2, int QT = 1>
__global__ void __launch_bounds__(WARPS * 32, QT == 1 ? 3 : 2)
    attn_kernel(const __half *__restrict__ q, __half *__restrict__ out,
                const cu_attn_seg *__restrict__ segs, const cu_attn_work *__restrict__ works,
                const int32_t *__restrict__ pages, cu_kv kv, int layer, int n_heads,
                float scale_log2, float *__restrict__ part_o, float *__restrict__ part_lse,
                const cu_attn_combine *__restrict__ comb, int *__restrict__ comb_counters)
{
    static_assert(QT == 1 || !DEC, "two query tiles per warp: prefill only");
    constexpr int KB = ATT_KB, LDS = D + 8, NT = WARPS * 32, CH = D / 8;
    /* Dynamic shared memory (attn_smem_bytes), two stages so that the copy
     * of tile i + 1 runs while tile i is multiplied: fp16 pages land in
     * sK/sV[stage]; int8 pages land in sK8/sV8[stage] and become fp16 in a
     * single sK/sV (keeps the int8 kernel within a 3090's 99 KB). With ST =
     * 1, fp16 pages have one stage and the next copy starts after the
     * multiply (PIPE false). With QT > 1, Q's rows follow the fp16 stages
     * (and precede int8 pages' raw stages). */
    constexpr int F16_STAGES = I8 ? 1 : ST;
    constexpr bool PIPE = I8 || ST == 2;
    extern __shared__ __align__(16) unsigned char smem[];
    __half *sK0 = reinterpret_cast<__half *>(smem);
    __half *sV0 = sK0 + F16_STAGES * KB * LDS;
    __half *sQ = sV0 + F16_STAGES * KB * LDS;
    int8_t *sK80 = reinterpret_cast<int8_t *>(sQ + (QT > 1 ? WARPS * 16 * QT * LDS : 0));
    int8_t *sV80 = sK80 + 2 * KB * D;
    __half *sKs0 = reinterpret_cast<__half *>(sV80 + 2 * KB * D); /* int8 scales, as stored */
    __half *sVs0 = sKs0 + 2 * KB;
    pdl_trigger();
    const cu_attn_work w = works[blockIdx.x];
    if (w.seg < 0)
        return; /* padding of a fixed grid (CUDA graphs) */
    const cu_attn_seg sg = segs[w.seg];
    pdl_wait(); /* q and this step's keys come from the kernel before */
    const int G = n_heads / kv.n_kv_heads;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
    const int rows_total = sg.n_tok * G;
    constexpr int NTW = DEC ? KB / 8 / WARPS : KB / 8; /* 8-key column tiles per warp */
    static_assert(NTW % 2 == 0, "P x V takes keys 16 at a time");
    const int nt0 = DEC ? warp * NTW : 0;
    /* Row rw[t][h] of the block's tile: query tile t, h = 0 for the
     * fragment rows g, 1 for g + 8; pos: its token's position, -1 past the
     * end. */
    int rw[QT][2], pos[QT][2];
#pragma unroll
    for (int t = 0; t < QT; t++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            rw[t][h] = w.row0 + (DEC ? 0 : (warp * QT + t) * 16) + g + 8 * h;
            pos[t][h] = rw[t][h] < rows_total ? sg.pos0 + rw[t][h] / G : -1;
        }
    auto q_off = [&](int r) { /* of row r in q and out */
        return ((int64_t)(sg.tok0 + r / G) * n_heads + w.kv_head * G + r % G) * D;
    };
    /* QT = 1: the warp's Q fragments in registers (A operand layout) */
    uint32_t qf[QT == 1 ? D / 16 : 1][4];
    if constexpr (QT == 1) {
        const __half *q0 = rw[0][0] < rows_total ? q + q_off(rw[0][0]) : nullptr;
        const __half *q1 = rw[0][1] < rows_total ? q + q_off(rw[0][1]) : nullptr;
#pragma unroll
        for (int ks = 0; ks < D / 16; ks++) {
            qf[ks][0] = q0 ? *reinterpret_cast<const uint32_t *>(q0 + ks * 16 + 2 * tq) : 0u;
            qf[ks][1] = q1 ? *reinterpret_cast<const uint32_t *>(q1 + ks * 16 + 2 * tq) : 0u;
            qf[ks][2] = q0 ? *reinterpret_cast<const uint32_t *>(q0 + ks * 16 + 8 + 2 * tq) : 0u;
            qf[ks][3] = q1 ? *reinterpret_cast<const uint32_t *>(q1 + ks * 16 + 8 + 2 * tq) : 0u;
        }
    } else {
        /* QT > 1: the block's 64 * QT rows into sQ (rows past the end are
         * zero), a copy group of their own ahead of the first tile's. */
        for (int c = threadIdx.x; c < WARPS * 16 * QT * CH; c += NT) {
            const int row = c / CH, r = w.row0 + row;
            const bool ok = r < rows_total;
            cp_async16(sQ + row * LDS + (c % CH) * 8, ok ? q + q_off(r) + (c % CH) * 8 : q, ok ? 16 : 0);
        }
        cp_async_commit(); /* the oldest group: complete by the first tile's wait */
    }
    float o[QT][D / 8][4];
    float m[QT][2], l[QT][2];
#pragma unroll
    for (int t = 0; t < QT; t++) {
#pragma unroll
        for (int i = 0; i < D / 8; i++)
            o[t][i][0] = o[t][i][1] = o[t][i][2] = o[t][i][3] = 0.0f;
        m[t][0] = m[t][1] = -INFINITY;
        l[t][0] = l[t][1] = 0.0f;
    }

    /* The (key, 8-column chunk) pieces of a tile this thread copies and
     * converts: NCH of them, chunk i at c_first + i * c_step, i.e. key
     * kw + r + i * KSTEP and column chunk dc, where kw is a multiple of 16
     * (the warp's keys in a decode tile, else 0) and r < KSTEP. In a decode
     * tile each warp reads only its own 16 keys, so it copies them itself
     * and a warp barrier orders them: the warps run through the tiles
     * independently, with no block barrier per tile. */
    constexpr int NCH = KB * CH / NT, KSTEP = (DEC ? 32 : NT) / CH;
    static_assert((DEC ? 32 : NT) % CH == 0 && ATT_PAGE % KSTEP == 0 && KB % ATT_PAGE == 0,
                  "a thread's chunks share their column and tile whole pages");
    const int kw = DEC ? warp * (KB / WARPS) : 0;
    const int r = (DEC ? lane : (int)threadIdx.x) / CH, dc = (DEC ? lane : (int)threadIdx.x) % CH;
    auto tile_sync = [] {
        if (DEC)
            __syncwarp();
        else
            __syncthreads();
    };

    /* Element offsets in the cache (cu_kv): K of (layer, page, kv_head, t)
     * at page * page_el + lay_el + t * D; V one head block further. Tiles
     * start at multiples of 64 keys (the host's work lists), so chunk i's
     * page and offset in it are (kw + i * KSTEP) / ATT_PAGE and
     * r + (i * KSTEP) % ATT_PAGE: constants but for kw and r. */
    const int64_t page_el = (int64_t)2 * kv.n_kv_heads * ATT_PAGE * D;
    const int64_t lay_el =
        ((int64_t)layer * kv.n_pages * 2 * kv.n_kv_heads + w.kv_head) * ATT_PAGE * D;
    const int64_t my_el = lay_el + r * D + dc * 8;
    const int64_t v_el = (int64_t)kv.n_kv_heads * ATT_PAGE * D;

    /* Copies one K/V tile into a stage, every copy in flight at once
     * (cp.async); keys past the range are zero-filled so that 0 * V stays 0.
     * The loop has a fixed trip count and no division: address arithmetic
     * was most of the instructions a thread issued per tile. */
    /* In a decode tile a warp's 16 keys are one page, whose index is loaded
     * one tile ahead (dpage): loaded where it is used, its latency stalled
     * the warp before every tile's copies. Only pages of keys in the range
     * are read. */
    static_assert(!DEC || KB / WARPS == ATT_PAGE, "a decode warp's keys are one page");
    int dpage =
        DEC && w.key_begin + kw < w.key_end ? pages[sg.page0 + (w.key_begin + kw) / ATT_PAGE] : 0;
    auto issue = [&](int kb, int st) {
        const int32_t *pg = pages + sg.page0 + (kb + kw) / ATT_PAGE;
        const int n_ok = w.key_end - kb - kw - r; /* chunk i is a key if i * KSTEP < n_ok */
        int page = 0;
        if (DEC) {
            page = dpage;
            const int next = kb + KB + kw;
            dpage = next < w.key_end ? pages[sg.page0 + next / ATT_PAGE] : 0;
        }
#pragma unroll
        for (int i = 0; i < NCH; i++) {
            const int key = kw + r + i * KSTEP;
            const bool ok = i * KSTEP < n_ok;
            const int pi = DEC ? page : (ok ? pg[i * KSTEP / ATT_PAGE] : 0);
            const int64_t el = ok ? pi * page_el + my_el + (i * KSTEP % ATT_PAGE) * D : 0;
            if (!I8) {
                const __half *base = (const __half *)kv.data;
                __half *dK = sK0 + st * KB * LDS, *dV = sV0 + st * KB * LDS;
                cp_async16(dK + key * LDS + dc * 8, base + el, ok ? 16 : 0);
                cp_async16(dV + key * LDS + dc * 8, base + el + v_el, ok ? 16 : 0);
            } else {
                const int8_t *base = (const int8_t *)kv.data;
                int8_t *dK = sK80 + st * KB * D, *dV = sV80 + st * KB * D;
                cp_async8(dK + key * D + dc * 8, base + el, ok ? 8 : 0);
                cp_async8(dV + key * D + dc * 8, base + el + v_el, ok ? 8 : 0);
            }
        }
        if (I8) {
            /* Scales: one fp16 per (page, layer, kv, head, t), el / D, so a
             * page's 16 keys have 32 contiguous bytes for K and as many for
             * V. Copied like the tile, in 16-byte chunks of 8 keys (keys past
             * the range zero-filled): plain loads here stalled the warp for
             * a memory latency at every tile, before it multiplied the one it
             * had. Chunk c: K (c even) or V of keys kw + 8 (c / 2).. */
            constexpr int SC = (DEC ? KB / WARPS : KB) / 8 * 2;
            const int c = DEC ? lane : (int)threadIdx.x;
            if (c < SC) {
                const int k0 = kw + 8 * (c >> 1), isv = c & 1;
                const int n = min(max(w.key_end - kb - k0, 0), 8);
                const __half *sc = (const __half *)kv.scales;
                const __half *src = sc;
                if (n > 0) {
                    const int64_t pel =
                        (int64_t)(DEC ? page : pages[sg.page0 + (kb + k0) / ATT_PAGE]) * page_el +
                        lay_el + (isv ? v_el : 0);
                    src = sc + pel / D + k0 % ATT_PAGE;
                }
                cp_async16((isv ? sVs0 : sKs0) + st * KB + k0, src, 2 * n);
            }
        }
        cp_async_commit();
    };

    int st = 0;
    if (w.key_begin < w.key_end)
        issue(w.key_begin, 0);
    for (int kb = w.key_begin; kb < w.key_end; kb += KB, st ^= 1) {
        /* The stage written here was last read in the previous iteration,
         * which ended with a barrier. */
        if (PIPE && kb + KB < w.key_end) {
            issue(kb + KB, st ^ 1);
            cp_async_wait_pending<1>();
        } else {
            cp_async_wait_pending<0>();
        }
        tile_sync();
        __half *sK = sK0 + (F16_STAGES == 2 ? st : 0) * KB * LDS;
        __half *sV = sV0 + (F16_STAGES == 2 ? st : 0) * KB * LDS;
        const int8_t *sK8 = sK80 + st * KB * D, *sV8 = sV80 + st * KB * D;
        const __half *sKs = sKs0 + st * KB, *sVs = sVs0 + st * KB;
        if (I8) {
            /* int8 -> fp16 (K exact, its scale applied to S below):
             * 0x64XX is 1024 + XX in fp16, so with XX = b ^ 0x80 one byte
             * permute and one subtraction of 1152 give b. */
            const __half2 bias = __floats2half2_rn(1152.0f, 1152.0f);
#pragma unroll
            for (int i = 0; i < NCH; i++) {
                const int key = kw + r + i * KSTEP;
                const uint2 kq = *reinterpret_cast<const uint2 *>(sK8 + key * D + dc * 8);
                const uint2 vq = *reinterpret_cast<const uint2 *>(sV8 + key * D + dc * 8);
                const uint32_t src[4] = {kq.x ^ 0x80808080u, kq.y ^ 0x80808080u,
                                         vq.x ^ 0x80808080u, vq.y ^ 0x80808080u};
                /* V is scaled here (P * scale could underflow fp16); K's scale
                 * goes on S in fp32. */
                const __half2 vsc = __half2half2(sVs[key]);
                uint32_t out[8];
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    uint32_t lo = __byte_perm(src[i], 0x64646464u, 0x4140);
                    uint32_t hi = __byte_perm(src[i], 0x64646464u, 0x4342);
                    __half2 l2 = __hsub2(*reinterpret_cast<__half2 *>(&lo), bias);
                    __half2 h2 = __hsub2(*reinterpret_cast<__half2 *>(&hi), bias);
                    if (i >= 2) {
                        l2 = __hmul2(l2, vsc);
                        h2 = __hmul2(h2, vsc);
                    }
                    out[2 * i] = *reinterpret_cast<uint32_t *>(&l2);
                    out[2 * i + 1] = *reinterpret_cast<uint32_t *>(&h2);
                }
                *reinterpret_cast<uint4 *>(sK + key * LDS + dc * 8) = make_uint4(out[0], out[1], out[2], out[3]);
                *reinterpret_cast<uint4 *>(sV + key * LDS + dc * 8) = make_uint4(out[4], out[5], out[6], out[7]);
            }
            tile_sync();
        }

        float s[QT][NTW][4];
#pragma unroll
        for (int t = 0; t < QT; t++)
#pragma unroll
            for (int nt = 0; nt < NTW; nt++)
                s[t][nt][0] = s[t][nt][1] = s[t][nt][2] = s[t][nt][3] = 0.0f;
#pragma unroll
        for (int ks = 0; ks < D / 16; ks += 2) {
            uint32_t qa[QT][2][4];
#pragma unroll
            for (int t = 0; t < QT; t++)
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    if constexpr (QT == 1) {
#pragma unroll
                        for (int e = 0; e < 4; e++)
                            qa[t][h][e] = qf[ks + h][e];
                    } else {
                        ldmatrix_x4(qa[t][h], sQ + ((warp * QT + t) * 16 + (lane & 15)) * LDS +
                                                  (ks + h) * 16 + (lane >> 4) * 8);
                    }
                }
#pragma unroll
            for (int nt = 0; nt < NTW; nt++) {
                uint32_t b[4];
                ldmatrix_x4(b, sK + ((nt0 + nt) * 8 + (lane & 7)) * LDS + ks * 16 + (lane >> 3) * 8);
#pragma unroll
                for (int t = 0; t < QT; t++) {
                    mma_16816(s[t][nt], qa[t][0], b[0], b[1]);
                    mma_16816(s[t][nt], qa[t][1], b[2], b[3]);
                }
            }
        }

        if (I8) {
#pragma unroll
            for (int nt = 0; nt < NTW; nt++) {
                const float k0 = __half2float(sKs[(nt0 + nt) * 8 + 2 * tq]),
                            k1 = __half2float(sKs[(nt0 + nt) * 8 + 2 * tq + 1]);
#pragma unroll
                for (int t = 0; t < QT; t++) {
                    s[t][nt][0] *= k0;
                    s[t][nt][1] *= k1;
                    s[t][nt][2] *= k0;
                    s[t][nt][3] *= k1;
                }
            }
        }
        uint32_t pa[QT][NTW / 2][4]; /* P as the A operand of P x V, fp16 */
#pragma unroll
        for (int t = 0; t < QT; t++) {
            /* Tiles wholly below the diagonal (most of a long prefill) skip the mask. */
            const bool visible = kb + KB <= w.key_end && kb + KB - 1 <= min(pos[t][0], pos[t][1]);
            if (!visible) {
#pragma unroll
                for (int nt = 0; nt < NTW; nt++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const int key = kb + (nt0 + nt) * 8 + 2 * tq + (e & 1);
                        if (!(key < w.key_end && key <= pos[t][e >> 1]))
                            s[t][nt][e] = -INFINITY;
                    }
            }
            /* The running max is kept on S as it comes (scale_log2 > 0 keeps
             * the order), and the scale goes into the exponent: one fma per
             * score. m and the exponents are in log2 units after scale_log2. */
            float mx[2] = {-INFINITY, -INFINITY}, c[2], bias[2], ls[2] = {0.0f, 0.0f};
#pragma unroll
            for (int nt = 0; nt < NTW; nt++) {
                mx[0] = fmaxf(mx[0], fmaxf(s[t][nt][0], s[t][nt][1]));
                mx[1] = fmaxf(mx[1], fmaxf(s[t][nt][2], s[t][nt][3]));
            }
#pragma unroll
            for (int h = 0; h < 2; h++) {
                mx[h] = fmaxf(mx[h], __shfl_xor_sync(Q3_FULL_MASK, mx[h], 1));
                mx[h] = fmaxf(mx[h], __shfl_xor_sync(Q3_FULL_MASK, mx[h], 2));
                const float mn = fmaxf(m[t][h], mx[h]);
                c[h] = mn == -INFINITY ? 1.0f : exp2_ftz((m[t][h] - mn) * scale_log2);
                bias[h] = mn == -INFINITY ? 0.0f : -mn * scale_log2;
                m[t][h] = mn;
            }
#pragma unroll
            for (int nt = 0; nt < NTW; nt++) {
#pragma unroll
                for (int e = 0; e < 4; e++)
                    s[t][nt][e] = exp2_ftz(fmaf(s[t][nt][e], scale_log2, bias[e >> 1]));
                ls[0] += s[t][nt][0] + s[t][nt][1];
                ls[1] += s[t][nt][2] + s[t][nt][3];
            }
            l[t][0] = l[t][0] * c[0] + ls[0];
            l[t][1] = l[t][1] * c[1] + ls[1];
            /* Once the running max settles (most tiles of a long row), no row
             * of the warp needs its output rescaled. */
            if (!__all_sync(Q3_FULL_MASK, c[0] == 1.0f && c[1] == 1.0f)) {
#pragma unroll
                for (int i = 0; i < D / 8; i++) {
                    o[t][i][0] *= c[0];
                    o[t][i][1] *= c[0];
                    o[t][i][2] *= c[1];
                    o[t][i][3] *= c[1];
                }
            }
#pragma unroll
            for (int j = 0; j < NTW / 2; j++) {
                pa[t][j][0] = pack_half2(s[t][2 * j][0], s[t][2 * j][1]);
                pa[t][j][1] = pack_half2(s[t][2 * j][2], s[t][2 * j][3]);
                pa[t][j][2] = pack_half2(s[t][2 * j + 1][0], s[t][2 * j + 1][1]);
                pa[t][j][3] = pack_half2(s[t][2 * j + 1][2], s[t][2 * j + 1][3]);
            }
        }
#pragma unroll
        for (int j = 0; j < NTW / 2; j++) {
#pragma unroll
            for (int dt = 0; dt < D / 8; dt += 2) {
                uint32_t b[4];
                ldmatrix_x4_trans(b, sV + (nt0 * 8 + j * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LDS +
                                         (dt + (lane >> 4)) * 8);
#pragma unroll
                for (int t = 0; t < QT; t++) {
                    mma_16816(o[t][dt], pa[t][j], b[0], b[1]);
                    mma_16816(o[t][dt + 1], pa[t][j], b[2], b[3]);
                }
            }
        }
        tile_sync(); /* the next iteration refills the other stage */
        if (!PIPE && kb + KB < w.key_end)
            issue(kb + KB, 0); /* the only stage, read by now */
    }
    if constexpr (QT > 1)
        cp_async_wait_pending<0>(); /* Q's copies, when there was no key */

#pragma unroll
    for (int t = 0; t < QT; t++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            l[t][h] += __shfl_xor_sync(Q3_FULL_MASK, l[t][h], 1);
            l[t][h] += __shfl_xor_sync(Q3_FULL_MASK, l[t][h], 2);
        }
    if constexpr (DEC) {
        /* Merge the warps' partial softmaxes (m: raw scores): O = sum_w o_w
         * 2^((m_w - M) scale_log2), L likewise from l_w. Every warp takes
         * D / WARPS of the columns (one warp merging all of them was a
         * serial tail as long as a tile in short splits); the tiles'
         * shared memory is free now. Rows past the tile's rows (a decode
         * step has G of 16, G <= 8 in Qwen3) are neither merged nor
         * written. Rows are D + 8 floats apart: no bank conflicts. */
        constexpr int XLD = D + 8, DW = D / 8 / WARPS;
        const int n_rows = rows_total - w.row0;
        const int nh = n_rows > 8 ? 2 : 1; /* uniform over the block */
        __syncthreads();
        float *xm = reinterpret_cast<float *>(smem), *xl = xm + WARPS * 16, *xo = xl + WARPS * 16;
        if (tq == 0) {
            xm[warp * 16 + g] = m[0][0];
            xm[warp * 16 + g + 8] = m[0][1];
            xl[warp * 16 + g] = l[0][0];
            xl[warp * 16 + g + 8] = l[0][1];
        }
        for (int h = 0; h < nh; h++)
#pragma unroll
            for (int dt = 0; dt < D / 8; dt++)
                *reinterpret_cast<float2 *>(xo + (warp * 16 + g + 8 * h) * XLD + dt * 8 + 2 * tq) =
                    make_float2(o[0][dt][2 * h], o[0][dt][2 * h + 1]);
        __syncthreads();
        for (int h = 0; h < nh; h++) {
            const int row = g + 8 * h;
            float M, f[WARPS];
            const float L = warp_merge_weights<WARPS>(xm + row, xl + row, 16, scale_log2, f, M);
            float2 acc[DW];
#pragma unroll
            for (int i = 0; i < DW; i++) {
                acc[i] = make_float2(0.0f, 0.0f);
#pragma unroll
                for (int v = 0; v < WARPS; v++) {
                    const float2 a = *reinterpret_cast<const float2 *>(xo + (v * 16 + row) * XLD +
                                                                       (warp * DW + i) * 8 + 2 * tq);
                    acc[i].x += a.x * f[v];
                    acc[i].y += a.y * f[v];
                }
            }
            if (row >= n_rows)
                continue;
            const float inv = L > 0.0f ? 1.0f / L : 0.0f;
            if (w.part < 0) {
                __half *d = out + q_off(w.row0 + row);
#pragma unroll
                for (int i = 0; i < DW; i++)
                    *reinterpret_cast<__half2 *>(d + (warp * DW + i) * 8 + 2 * tq) =
                        __floats2half2_rn(acc[i].x * inv, acc[i].y * inv);
            } else {
                /* 16 rows per part; the combine reads only the tile's rows */
                float *pp = part_o + ((int64_t)w.part * 16 + row) * D;
#pragma unroll
                for (int i = 0; i < DW; i++)
                    *reinterpret_cast<float2 *>(pp + (warp * DW + i) * 8 + 2 * tq) =
                        make_float2(acc[i].x * inv, acc[i].y * inv);
                if (warp == 0 && tq == 0)
                    part_lse[(int64_t)w.part * 16 + row] = L > 0.0f ? M * scale_log2 + log2f(L) : -INFINITY;
            }
        }
        if (w.part >= 0)
            attn_combine_last<D>(out, sg, comb[w.comb], &comb_counters[w.comb], G, n_heads, part_o,
                              part_lse);
        return;
    } else {
#pragma unroll
        for (int t = 0; t < QT; t++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                if (rw[t][h] >= rows_total)
                    continue;
                const float inv = l[t][h] > 0.0f ? 1.0f / l[t][h] : 0.0f;
                __half *d = out + q_off(rw[t][h]);
#pragma unroll
                for (int dt = 0; dt < D / 8; dt++)
                    *reinterpret_cast<__half2 *>(d + dt * 8 + 2 * tq) =
                        __floats2half2_rn(o[t][dt][2 * h] * inv, o[t][dt][2 * h + 1] * inv);
            }
    }
}

/* attn_dec_kernel's shared memory: the warps' merge (4 warps x 8 nr rows
 * of m, l and D + 4 floats of o). */
static constexpr size_t attn_dec_smem_bytes(int D, int nr)
{
    return (size_t)4 * 8 * nr * (D + 4 + 2) * 4;
}

/* Decode tiles of int8 pages straight from the cache into mma fragments,
 * with no shared memory staging (attn_kernel's DEC path copies every page
 * into shared memory and writes it back there as fp16 before ldmatrix:
 * ~1,100 instructions per warp and 16-key page and 168 registers, against
 * ~430 and 125 here; fp16 pages keep that path, which measured as fast as
 * this kernel's fp16 variant or faster). The roles of the operands are
 * swapped so that the few rows of a decode tile (G <= 8 query heads of one
 * KV head) take mma's n = 8 side:
 *
 *   S^T = K Q^T    A = 16 keys x 16 dims of K, B = Q^T (16 dims x 8 rows)
 *   O^T = V^T P^T  A = 16 dims x 16 keys of V^T, B = P^T (16 keys x 8 rows)
 *
 * Sums over the head dims do not depend on their order, nor sums over keys
 * on theirs, so both are permuted to make every thread's loads whole 16-byte
 * runs of one key:
 *   - S: thread (g, tq) takes keys 2g (A row g) and 2g + 1 (row g + 8), and
 *     for k-step ks = 4c + s the dims 64c + 16tq + 4s.. + 3: 16 bytes per
 *     key and 64 dims of int8 (Q's B fragments follow the same order);
 *   - P: S^T's accumulators (keys 2g, 2g + 1; rows 2tq, 2tq + 1), packed to
 *     fp16, are two 8 x 8 fragments whose transposes (movmatrix) are P^T's
 *     B fragment with keys 4tq, 4tq + 2 | 4tq + 1, 4tq + 3 at k = 2tq,
 *     2tq + 1 | 2tq + 8, 2tq + 9;
 *   - V: so thread (g, tq) reads keys 4tq.. 4tq + 3, its own D / 8 dims
 *     (D/8) g.. of each (A rows g, g + 8 of m-tile mt are dims (D/8) g + 2mt,
 *     + 1), and pairs two keys' bytes per register with one byte permute;
 *   - O^T: thread (g, tq) ends with rows 2tq, 2tq + 1 of dims (D/8) g.. .
 * int8 bytes become fp16 in registers (0x64XX - 1152, as in attn_kernel);
 * K's scales go on S in fp32, V's on P before it is rounded to fp16, times
 * 64 so that small weights keep their precision (64 x 516, the largest
 * scale an fp16 V can have, is below fp16's maximum); 1/64 goes into 1/L.
 *
 * Work is attn_kernel's decode work list: 4 warps, warp w takes keys
 * 16w.. 16w + 15 (one page) of every 64-key tile with its own running
 * softmax, and the warps merge through shared memory at the end. NR: 8-row
 * tiles of rows (1: up to 8 rows, a decode step; 2: up to 16). Loads go
 * straight into registers, one tile at a time; four blocks per SM (125
 * registers) hide their latency better than deeper pipelines measured on
 * an H100: the next tile in registers (164 registers, three blocks) or a
 * per-thread cp.async ring of 2-3 stages in shared memory were 3-10%
 * slower (docs/PERF-cuda.md, session 9). */
template <int D, int NR>
__global__ void __launch_bounds__(128, NR == 1 ? 4 : 3)
    attn_dec_kernel(const __half *__restrict__ q, __half *__restrict__ out,
                    const cu_attn_seg *__restrict__ segs, const cu_attn_work *__restrict__ works,
                    const int32_t *__restrict__ pages, cu_kv kv, int layer, int n_heads,
                    float scale_log2, float *__restrict__ part_o, float *__restrict__ part_lse,
                    const cu_attn_combine *__restrict__ comb, int *__restrict__ comb_counters)
{
    constexpr int KW = D / 16;  /* words of K per key and thread */
    constexpr int VW = D / 32;  /* words of V per key and thread */
    constexpr int MT = D / 16;  /* m-tiles of O^T */
    constexpr float VF = 64.0f; /* V scales' factor on P */
    static_assert(D == 64 || D == 128, "head_dim 64 or 128");
    extern __shared__ __align__(16) unsigned char smem[];
    pdl_trigger();
    const cu_attn_work w = works[blockIdx.x];
    if (w.seg < 0)
        return; /* padding of a fixed grid (CUDA graphs) */
    const cu_attn_seg sg = segs[w.seg];
    const int G = n_heads / kv.n_kv_heads;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
    const int rows_total = sg.n_tok * G;
    auto q_off = [&](int r) {
        return ((int64_t)(sg.tok0 + r / G) * n_heads + w.kv_head * G + r % G) * D;
    };

    /* The positions of this thread's accumulator rows 8t + 2tq + e (-1:
     * past the end). */
    int pos[NR][2];
#pragma unroll
    for (int t = 0; t < NR; t++) {
#pragma unroll
        for (int e = 0; e < 2; e++) {
            const int rr = w.row0 + 8 * t + 2 * tq + e;
            pos[t][e] = rr < rows_total ? sg.pos0 + rr / G : -1;
        }
    }
    float o[NR][MT][4], m[NR][2], l[NR][2];
#pragma unroll
    for (int t = 0; t < NR; t++) {
#pragma unroll
        for (int i = 0; i < MT; i++)
            o[t][i][0] = o[t][i][1] = o[t][i][2] = o[t][i][3] = 0.0f;
        m[t][0] = m[t][1] = -INFINITY;
        l[t][0] = l[t][1] = 0.0f;
    }
    int posmin = INT_MAX;
#pragma unroll
    for (int t = 0; t < NR; t++)
        posmin = min(posmin,
                     min(pos[t][0] < 0 ? INT_MAX : pos[t][0], pos[t][1] < 0 ? INT_MAX : pos[t][1]));
    posmin = __reduce_min_sync(Q3_FULL_MASK, posmin);

    /* One tile's data for this thread: K of keys 2g, 2g + 1 and V of keys
     * 4tq.. + 3 of the warp's page, and the scales of keys 2g, 2g + 1. */
    struct raw {
        uint32_t k[2][KW], v[4][VW], ks, vs;
    };
    const int kw = 16 * warp;
    const int64_t page_el = (int64_t)2 * kv.n_kv_heads * ATT_PAGE * D;
    const int64_t lay_el =
        ((int64_t)layer * kv.n_pages * 2 * kv.n_kv_heads + w.kv_head) * ATT_PAGE * D;
    const int64_t v_el = (int64_t)kv.n_kv_heads * ATT_PAGE * D;
    /* The warp's tiles: n_t of them; tile i's page index is lane i % 32 of
     * pidx, loaded 32 tiles at a time (the first before pdl_wait: the page
     * lists are the host's, not a kernel's). */
    const int n_keys = w.key_end - w.key_begin - kw;
    const int n_t = n_keys > 0 ? (n_keys + ATT_KB - 1) / ATT_KB : 0;
    const int32_t *wpages = pages + sg.page0 + (w.key_begin + kw) / ATT_PAGE;
    int pidx = lane < n_t ? wpages[4 * lane] : 0;
    pdl_wait(); /* q and this step's keys come from the kernel before */

    /* Tile i: K is 16 bytes of key 2g + h per 64 dims (chunk c), V 16 bytes
     * (8 at D = 64) of key 4tq + j. Keys past the range are not read
     * (zeros), and their V scales are not used. */
    auto load = [&](raw &x, int i) {
        if (i > 0 && (i & 31) == 0)
            pidx = i + lane < n_t ? wpages[4 * (i + lane)] : 0;
        const int page = __shfl_sync(Q3_FULL_MASK, pidx, i & 31), n_ok = n_keys - ATT_KB * i;
        const int8_t *base = (const int8_t *)kv.data + page * page_el + lay_el;
#pragma unroll
        for (int h = 0; h < 2; h++)
#pragma unroll
            for (int c = 0; c < KW / 4; c++) {
                uint4 u = make_uint4(0, 0, 0, 0);
                if (2 * g + h < n_ok)
                    u = ld_stream(
                        reinterpret_cast<const uint4 *>(base + (2 * g + h) * D + 64 * c + 16 * tq));
                x.k[h][4 * c] = u.x;
                x.k[h][4 * c + 1] = u.y;
                x.k[h][4 * c + 2] = u.z;
                x.k[h][4 * c + 3] = u.w;
            }
        const int8_t *vb = base + v_el + (D / 8) * g;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const bool ok = 4 * tq + j < n_ok;
            if constexpr (VW == 4) {
                uint4 u = make_uint4(0, 0, 0, 0);
                if (ok)
                    u = ld_stream(reinterpret_cast<const uint4 *>(vb + (4 * tq + j) * D));
                x.v[j][0] = u.x;
                x.v[j][1] = u.y;
                x.v[j][2] = u.z;
                x.v[j][3] = u.w;
            } else {
                uint2 u = make_uint2(0, 0);
                if (ok)
                    u = __ldg(reinterpret_cast<const uint2 *>(vb + (4 * tq + j) * D));
                x.v[j][0] = u.x, x.v[j][1] = u.y;
            }
        }
        /* one fp16 scale per (layer, page, kv, head, t): el / D */
        const uint32_t *sc =
            (const uint32_t *)((const __half *)kv.scales + (page * page_el + lay_el) / D) + g;
        x.ks = __ldg(sc);
        x.vs = __ldg(sc + v_el / D / 2);
    };
    /* Q^T's B fragments, in the permuted dim order */
    uint32_t qb[NR][D / 16][2];
#pragma unroll
    for (int t = 0; t < NR; t++) {
        const int r = w.row0 + 8 * t + g;
#pragma unroll
        for (int c = 0; c < D / 64; c++) {
            uint4 u0 = make_uint4(0, 0, 0, 0), u1 = u0;
            if (r < rows_total) {
                const uint4 *src = reinterpret_cast<const uint4 *>(q + q_off(r) + 64 * c + 16 * tq);
                u0 = src[0];
                u1 = src[1];
            }
            qb[t][4 * c][0] = u0.x; /* k-steps 4c.. 4c + 3 */
            qb[t][4 * c][1] = u0.y;
            qb[t][4 * c + 1][0] = u0.z;
            qb[t][4 * c + 1][1] = u0.w;
            qb[t][4 * c + 2][0] = u1.x;
            qb[t][4 * c + 2][1] = u1.y;
            qb[t][4 * c + 3][0] = u1.z;
            qb[t][4 * c + 3][1] = u1.w;
        }
    }

    auto tile = [&](const raw &x, int kb) {
        float s[NR][4];
#pragma unroll
        for (int t = 0; t < NR; t++)
            s[t][0] = s[t][1] = s[t][2] = s[t][3] = 0.0f;
#pragma unroll
        for (int ks = 0; ks < D / 16; ks++) {
            /* word ks = 4c + s: bytes 4s.. + 3 of chunk c, the k-step's
             * dims 2tq, 2tq + 1 | 2tq + 8, 2tq + 9 */
            uint32_t a[4];
            const __half2 bias = __floats2half2_rn(1152.0f, 1152.0f);
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const uint32_t b = x.k[h][ks] ^ 0x80808080u;
                a[h] = h2_as_u32(__hsub2(u32_as_h2(__byte_perm(b, 0x64646464u, 0x5140)), bias));
                a[h + 2] = h2_as_u32(__hsub2(u32_as_h2(__byte_perm(b, 0x64646464u, 0x5342)), bias));
            }
#pragma unroll
            for (int t = 0; t < NR; t++)
                mma_16816(s[t], a, qb[t][ks][0], qb[t][ks][1]);
        }
        /* keys 2g (s[.][0..1]) and 2g + 1 (s[.][2..3]) of rows 2tq, 2tq + 1 */
        const int key0 = kb + kw + 2 * g;
        const float2 kf = __half22float2(u32_as_h2(x.ks)), vf = __half22float2(u32_as_h2(x.vs));
        const float ksc0 = kf.x, ksc1 = kf.y;
        /* stale slots past the range may hold any bits: their weight is 0 */
        const float vsc0 = key0 < w.key_end ? vf.x * VF : 0.0f;
        const float vsc1 = key0 + 1 < w.key_end ? vf.y * VF : 0.0f;
        const bool visible = kb + ATT_KB <= w.key_end && kb + ATT_KB - 1 <= posmin;
        uint32_t pb[NR][2];
#pragma unroll
        for (int t = 0; t < NR; t++) {
            s[t][0] *= ksc0, s[t][1] *= ksc0, s[t][2] *= ksc1, s[t][3] *= ksc1;
            if (!visible) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int key = key0 + (e >> 1);
                    if (!(key < w.key_end && key <= pos[t][e & 1]))
                        s[t][e] = -INFINITY;
                }
            }
            float c[2], bias[2];
#pragma unroll
            for (int e = 0; e < 2; e++) {
                float mx = fmaxf(s[t][e], s[t][2 + e]);
                mx = fmaxf(mx, __shfl_xor_sync(Q3_FULL_MASK, mx, 4));
                mx = fmaxf(mx, __shfl_xor_sync(Q3_FULL_MASK, mx, 8));
                mx = fmaxf(mx, __shfl_xor_sync(Q3_FULL_MASK, mx, 16));
                const float mn = fmaxf(m[t][e], mx);
                c[e] = mn == -INFINITY ? 1.0f : exp2_ftz((m[t][e] - mn) * scale_log2);
                bias[e] = mn == -INFINITY ? 0.0f : -mn * scale_log2;
                m[t][e] = mn;
            }
#pragma unroll
            for (int e = 0; e < 4; e++)
                s[t][e] = exp2_ftz(fmaf(s[t][e], scale_log2, bias[e & 1]));
            l[t][0] = l[t][0] * c[0] + s[t][0] + s[t][2];
            l[t][1] = l[t][1] * c[1] + s[t][1] + s[t][3];
            if (!__all_sync(Q3_FULL_MASK, c[0] == 1.0f && c[1] == 1.0f)) {
#pragma unroll
                for (int i = 0; i < MT; i++) {
                    o[t][i][0] *= c[0], o[t][i][2] *= c[0];
                    o[t][i][1] *= c[1], o[t][i][3] *= c[1];
                }
            }
            pb[t][0] = movmatrix_trans(pack_half2(s[t][0] * vsc0, s[t][1] * vsc0));
            pb[t][1] = movmatrix_trans(pack_half2(s[t][2] * vsc1, s[t][3] * vsc1));
        }
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
            /* dims d = (D/8) g + 2mt, d + 1: bytes 2 (mt % 2).. of word mt / 2 */
            uint32_t a[4];
            const uint32_t sel = (mt & 1) ? 0x7362 : 0x5140;
            const uint32_t t02 =
                __byte_perm(x.v[0][mt / 2] ^ 0x80808080u, x.v[2][mt / 2] ^ 0x80808080u, sel);
            const uint32_t t13 =
                __byte_perm(x.v[1][mt / 2] ^ 0x80808080u, x.v[3][mt / 2] ^ 0x80808080u, sel);
            const __half2 bias = __floats2half2_rn(1152.0f, 1152.0f);
            a[0] = h2_as_u32(__hsub2(u32_as_h2(__byte_perm(t02, 0x64646464u, 0x5140)), bias));
            a[1] = h2_as_u32(__hsub2(u32_as_h2(__byte_perm(t02, 0x64646464u, 0x5342)), bias));
            a[2] = h2_as_u32(__hsub2(u32_as_h2(__byte_perm(t13, 0x64646464u, 0x5140)), bias));
            a[3] = h2_as_u32(__hsub2(u32_as_h2(__byte_perm(t13, 0x64646464u, 0x5342)), bias));
#pragma unroll
            for (int t = 0; t < NR; t++)
                mma_16816(o[t][mt], a, pb[t][0], pb[t][1]);
        }
    };

    for (int i = 0; i < n_t; i++) {
        raw x;
        load(x, i);
        tile(x, w.key_begin + ATT_KB * i);
    }

    /* The warps' partial softmaxes merge through shared memory: m (raw
     * scores, uniform over a row's lanes), l (summed over them here) and o,
     * rows 8t + 2tq + e of dims (D/8) g.. . */
    constexpr int XLD = D + 4;
#pragma unroll
    for (int t = 0; t < NR; t++)
#pragma unroll
        for (int e = 0; e < 2; e++) {
            l[t][e] += __shfl_xor_sync(Q3_FULL_MASK, l[t][e], 4);
            l[t][e] += __shfl_xor_sync(Q3_FULL_MASK, l[t][e], 8);
            l[t][e] += __shfl_xor_sync(Q3_FULL_MASK, l[t][e], 16);
        }
    float *xm = reinterpret_cast<float *>(smem), *xl = xm + 4 * 8 * NR, *xo = xl + 4 * 8 * NR;
#pragma unroll
    for (int t = 0; t < NR; t++)
#pragma unroll
        for (int e = 0; e < 2; e++) {
            const int row = 8 * t + 2 * tq + e;
            if (g == 0) {
                xm[warp * 8 * NR + row] = m[t][e];
                xl[warp * 8 * NR + row] = l[t][e];
            }
            float *dst = xo + (warp * 8 * NR + row) * XLD + (D / 8) * g;
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
                *reinterpret_cast<float2 *>(dst + 2 * mt) =
                    make_float2(o[t][mt][e], o[t][mt][2 + e]);
        }
    __syncthreads();
    /* thread: row tid / 16, dims (tid % 16) * D / 16.. */
    constexpr int DPT = D / 16;
    const int n_rows = rows_total - w.row0;
#pragma unroll
    for (int t = 0; t < NR; t++) {
        const int row = 8 * t + threadIdx.x / 16, d0 = (threadIdx.x % 16) * DPT;
        float M, f[4];
        const float L = warp_merge_weights<4>(xm + row, xl + row, 8 * NR, scale_log2, f, M);
        float acc[DPT];
#pragma unroll
        for (int i = 0; i < DPT; i++)
            acc[i] = 0.0f;
#pragma unroll
        for (int v = 0; v < 4; v++)
#pragma unroll
            for (int i = 0; i < DPT; i += 4) {
                const float4 a =
                    *reinterpret_cast<const float4 *>(xo + (v * 8 * NR + row) * XLD + d0 + i);
                acc[i] += a.x * f[v];
                acc[i + 1] += a.y * f[v];
                acc[i + 2] += a.z * f[v];
                acc[i + 3] += a.w * f[v];
            }
        if (row >= n_rows)
            continue;
        const float inv = L > 0.0f ? 1.0f / (L * VF) : 0.0f;
        if (w.part < 0) {
            __half *d = out + q_off(w.row0 + row) + d0;
#pragma unroll
            for (int i = 0; i < DPT; i += 2)
                *reinterpret_cast<__half2 *>(d + i) =
                    __floats2half2_rn(acc[i] * inv, acc[i + 1] * inv);
        } else {
            float *pp = part_o + ((int64_t)w.part * 16 + row) * D + d0;
#pragma unroll
            for (int i = 0; i < DPT; i += 4)
                *reinterpret_cast<float4 *>(pp + i) =
                    make_float4(acc[i] * inv, acc[i + 1] * inv, acc[i + 2] * inv, acc[i + 3] * inv);
            if (threadIdx.x % 16 == 0)
                part_lse[(int64_t)w.part * 16 + row] =
                    L > 0.0f ? M * scale_log2 + log2f(L) : -INFINITY;
        }
    }
    if (w.part >= 0)
        attn_combine_last<D>(out, sg, comb[w.comb], &comb_counters[w.comb], G, n_heads, part_o,
                             part_lse);
}

static constexpr size_t attn_smem_bytes(int D, bool i8, int st, int qt = 1)
{
    /* sK, sV (st stages for fp16 pages, one for int8), for int8 two stages
     * of raw K, V and their scales, and with qt > 1 the block's Q rows */
    return (size_t)ATT_KB * (D + 8) * 2 * 2 * (i8 ? 1 : st) +
           (i8 ? 2 * ((size_t)ATT_KB * D * 2 + ATT_KB * 8) : 0) +
           (qt > 1 ? (size_t)4 * 16 * qt * (D + 8) * 2 : 0);
}

/* The decode merge reuses the tiles' memory: 4 warps x 16 rows of m, l
 * and D + 8 floats of o. */
static constexpr size_t attn_smem_dec_bytes(int D, bool i8, int st)
{
    return attn_smem_bytes(D, i8, st) > (size_t)4 * 16 * (D + 10) * 4
               ? attn_smem_bytes(D, i8, st)
               : (size_t)4 * 16 * (D + 10) * 4;
}

/* The prefill kernel's shape on this GPU: query tiles per warp (qt) and
 * stages of fp16 K/V tiles (st). Two query tiles per warp where two such
 * blocks fit per SM (an H100: 2 x 102 KB at D = 128, 2 x 101 KB for int8
 * pages); otherwise one, with the stage count that keeps more blocks
 * resident (at most 3, the launch bounds), two when both keep as many: a
 * 3090 (100 KB per SM) holds one two-stage block but two one-stage blocks,
 * and no two-tile block. int8 pages keep one fp16 stage (their raw bytes
 * have two: st is 2). Decode tiles take one query tile and st.
 * QWEN3_BATCH_ATTN_QT=1|2 and QWEN3_BATCH_ATTN_STAGES=1|2 (fp16) override
 * (tests and measurements). */
struct attn_shape {
    int qt, st;
};

static attn_shape attn_prefill_shape(int D, bool i8)
{
    static attn_shape memo[2][2]; /* [i8][D = 64, 128] */
    attn_shape *m = &memo[i8][D == 128];
    if (m->qt)
        return *m;
    const int per_sm = q3_dev_attr(cudaDevAttrMaxSharedMemoryPerMultiprocessor, 0);
    const int reserved = q3_dev_attr(cudaDevAttrReservedSharedMemoryPerBlock, 0);
    auto blocks = [&](int st, int qt) {
        const int b = (int)((size_t)per_sm / (attn_smem_bytes(D, i8, st, qt) + (size_t)reserved));
        return b < 3 ? b : 3;
    };
    int qt = q3_env_int("QWEN3_BATCH_ATTN_QT", 1, 2, 0);
    int st = i8 ? 2 : q3_env_int("QWEN3_BATCH_ATTN_STAGES", 1, 2, 0);
    if (!qt)
        qt = blocks(st ? st : 2, 2) >= 2 ? 2 : 1;
    if (!st)
        st = blocks(2, qt) >= blocks(1, qt) ? 2 : 1;
    *m = attn_shape{qt, st};
    return *m;
}

/* QWEN3_BATCH_ATTN_DEC=old: int8 decode tiles through attn_kernel's DEC
 * path, as fp16 ones always go (measurements). */
static bool attn_dec_old(void)
{
    static int v = -1;
    if (v < 0) {
        const char *e = getenv("QWEN3_BATCH_ATTN_DEC");
        v = e && !strcmp(e, "old");
    }
    return v;
}

/* One cu_attention call's arguments, which every launch below passes on. */
struct attn_args {
    const __half *q;
    __half *out;
    const cu_attn_seg *segs;
    const cu_attn_work *w_small, *w_large;
    int n_small, small_rows, n_large;
    const int32_t *pages;
    cu_kv kv;
    int layer, n_heads;
    float *part_o, *part_lse;
    const cu_attn_combine *comb;
    int *comb_counters;
    cudaStream_t s;
};

/* kern (attn_kernel or attn_dec_kernel, same parameters) over n works. */
template <typename K>
static void attn_launch(K kern, const cu_attn_work *works, int n, size_t smem, float scale_log2,
                        const attn_args &a)
{
    q3_launch(kern, dim3(n), dim3(128), smem, a.s, a.q, a.out, a.segs, works, a.pages, a.kv,
              a.layer, a.n_heads, scale_log2, a.part_o, a.part_lse, a.comb, a.comb_counters);
}

/* The kernels' shared memory attributes, once per instantiation (harmless
 * if repeated). */
template <int D, bool I8, int ST, int QT>
static void attn_set_attrs(void)
{
    const size_t smem2 = attn_smem_bytes(D, I8, ST, QT), smemd = attn_smem_dec_bytes(D, I8, ST);
    static bool attr_set = false;
    if (!attr_set) {
        cudaFuncSetAttribute(attn_kernel<D, 4, I8, false, ST, QT>,
                             cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem2);
        cudaFuncSetAttribute(attn_kernel<D, 4, I8, true, ST>,
                             cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smemd);
        /* All of the SM's unified L1/shared memory as shared memory: the
         * default carveout left room for two ~70 KB blocks, not three. */
        cudaFuncSetAttribute(attn_kernel<D, 4, I8, false, ST, QT>,
                             cudaFuncAttributePreferredSharedMemoryCarveout,
                             (int)cudaSharedmemCarveoutMaxShared);
        cudaFuncSetAttribute(attn_kernel<D, 4, I8, true, ST>,
                             cudaFuncAttributePreferredSharedMemoryCarveout,
                             (int)cudaSharedmemCarveoutMaxShared);
        attr_set = true;
    }
}

template <int D, bool I8, int ST, int QT>
static void launch_attn_st(const attn_args &a)
{
    const float scale_log2 = 1.4426950408889634f / sqrtf((float)D);
    const size_t smem2 = attn_smem_bytes(D, I8, ST, QT), smemd = attn_smem_dec_bytes(D, I8, ST);
    attn_set_attrs<D, I8, ST, QT>();
    if (a.n_large > 0)
        attn_launch(attn_kernel<D, 4, I8, false, ST, QT>, a.w_large, a.n_large, smem2,
                    scale_log2, a);
    if (a.n_small <= 0)
        return;
    /* Decode tiles: fp16 pages (and int8 with QWEN3_BATCH_ATTN_DEC=old) in
     * attn_kernel's 16-row tiles, whose four warps split each key tile;
     * int8 pages in attn_dec_kernel, 8 rows a tile where they fit. */
    if (!I8 || attn_dec_old())
        attn_launch(attn_kernel<D, 4, I8, true, ST>, a.w_small, a.n_small, smemd, scale_log2, a);
    else if (a.small_rows > 8)
        attn_launch(attn_dec_kernel<D, 2>, a.w_small, a.n_small, attn_dec_smem_bytes(D, 2),
                    scale_log2, a);
    else
        attn_launch(attn_dec_kernel<D, 1>, a.w_small, a.n_small, attn_dec_smem_bytes(D, 1),
                    scale_log2, a);
}

/* Calls f(st, qt), integral constants, with attn_prefill_shape for this
 * cache on this GPU (int8 pages: st is 2). */
template <int D, bool I8, typename F>
static auto attn_with_shape(F &&f)
{
    using one = std::integral_constant<int, 1>;
    using two = std::integral_constant<int, 2>;
    const attn_shape sh = attn_prefill_shape(D, I8);
    if constexpr (I8) {
        if (sh.qt == 2)
            return f(two{}, two{});
        return f(two{}, one{});
    } else {
        if (sh.qt == 2 && sh.st == 2)
            return f(two{}, two{});
        if (sh.qt == 2)
            return f(one{}, two{});
        if (sh.st == 1)
            return f(one{}, one{});
        return f(two{}, one{});
    }
}

template <int D, bool I8>
static void launch_attn(const attn_args &a)
{
    attn_with_shape<D, I8>([&](auto st, auto qt) {
        launch_attn_st<D, I8, decltype(st)::value, decltype(qt)::value>(a);
    });
}

/* Resident blocks per SM of the kernel that launch_attn_st gives decode
 * tiles of up to `rows` rows. */
template <int D, bool I8, int ST, int QT>
static int attn_dec_per_sm(int rows)
{
    attn_set_attrs<D, I8, ST, QT>();
    int n = 0;
    cudaError_t ce;
    if (!I8 || attn_dec_old())
        ce = cudaOccupancyMaxActiveBlocksPerMultiprocessor(
            &n, attn_kernel<D, 4, I8, true, ST>, 128, attn_smem_dec_bytes(D, I8, ST));
    else if (rows > 8)
        ce = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, attn_dec_kernel<D, 2>, 128,
                                                           attn_dec_smem_bytes(D, 2));
    else
        ce = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, attn_dec_kernel<D, 1>, 128,
                                                           attn_dec_smem_bytes(D, 1));
    return ce == cudaSuccess && n > 0 ? n : 1;
}

template <int D, bool I8>
static int attn_dec_per_sm_d(int rows)
{
    return attn_with_shape<D, I8>([&](auto st, auto qt) {
        return attn_dec_per_sm<D, I8, decltype(st)::value, decltype(qt)::value>(rows);
    });
}

extern "C" int cu_attn_dec_slots(int head_dim, int int8, int rows)
{
    int per_sm = 1;
    switch (head_dim * 2 + (int8 ? 1 : 0)) {
    case 128: per_sm = attn_dec_per_sm_d<64, false>(rows); break;
    case 129: per_sm = attn_dec_per_sm_d<64, true>(rows); break;
    case 256: per_sm = attn_dec_per_sm_d<128, false>(rows); break;
    case 257: per_sm = attn_dec_per_sm_d<128, true>(rows); break;
    default: break;
    }
    return per_sm * q3_dev_attr(cudaDevAttrMultiProcessorCount, 1);
}

extern "C" int cu_attn_prefill_rows(int head_dim, int int8)
{
    if (head_dim != 64 && head_dim != 128)
        return 64;
    return 64 * attn_prefill_shape(head_dim, int8).qt;
}

extern "C" cudaError_t cu_attention(const void *q, void *out, const cu_attn_seg *segs,
                                    const cu_attn_work *w_small, int n_small, int small_rows,
                                    const cu_attn_work *w_large, int n_large,
                                    const cu_attn_combine *comb, const int32_t *pages, cu_kv kv,
                                    int layer, int n_heads, float *part_o, float *part_lse,
                                    int *comb_counters, cudaStream_t s)
{
    if (n_heads % kv.n_kv_heads || kv.page_size != ATT_PAGE)
        return cudaErrorInvalidValue;
    const attn_args a = {(const __half *)q, (__half *)out, segs, w_small, w_large, n_small,
                         small_rows, n_large, pages, kv, layer, n_heads, part_o, part_lse,
                         comb, comb_counters, s};
    switch (kv.head_dim * 2 + (kv.int8 ? 1 : 0)) {
    case 128: launch_attn<64, false>(a); break;
    case 129: launch_attn<64, true>(a); break;
    case 256: launch_attn<128, false>(a); break;
    case 257: launch_attn<128, true>(a); break;
    default: return cudaErrorInvalidValue;
    }
    return cudaGetLastError();
}
