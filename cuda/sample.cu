/*
 * sample.cu - choosing tokens on the GPU so that only ids cross the bus.
 *
 * The semantics are sample_token()'s (src/sample.c): presence penalty on the
 * raw logits, greedy when temperature <= 0 (ties to the lowest id), else
 * top-k, softmax with temperature in double, top-p, min-p and one draw with
 * sample_uniform(seed, counter), the same splitmix64 formula, so a greedy
 * GPU run picks what the CPU picks given the same logits and a sampled run is
 * reproducible. One block per sampled row. The candidates after top-k are
 * found by a 4-pass radix select on order-preserving keys and sorted by
 * (logit desc, id asc) like the CPU; at most CU_SAMPLE_MAX_CANDIDATES are
 * kept (top_k 0 on the CPU keeps all: the tail beyond the 1024 most likely
 * tokens is where the GPU differs).
 */
#include "common.cuh"

#define SAMPLE_THREADS 1024
#define SAMPLE_CAP 2048

static __device__ double sample_uniform_dev(uint64_t seed, uint64_t counter)
{
    uint64_t z = seed * 0x9e3779b97f4a7c15ull + counter + 0x632be59bd9b4e019ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (double)(z >> 11) * (1.0 / 9007199254740992.0);
}

/* Order-preserving map of a float to an unsigned key. */
static __device__ __forceinline__ uint32_t float_key(float f)
{
    uint32_t b = __float_as_uint(f);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__global__ void __launch_bounds__(SAMPLE_THREADS)
    sample_kernel(float *__restrict__ logits, int V, const cu_sample_job *__restrict__ jobs,
                  const int32_t *__restrict__ pen, int32_t *__restrict__ out)
{
    __shared__ unsigned long long cand[SAMPLE_CAP];
    __shared__ float probs[CU_SAMPLE_MAX_CANDIDATES];
    __shared__ int ids[CU_SAMPLE_MAX_CANDIDATES];
    __shared__ uint32_t hist[256];
    __shared__ uint32_t s_prefix, s_krem;
    __shared__ int n_cand;
    __shared__ float best_v[32];
    __shared__ int best_i[32];

    const cu_sample_job j = jobs[blockIdx.x];
    float *row = logits + (int64_t)j.row * V;
    const int n = j.n_valid;
    const int tid = threadIdx.x;

    if (j.presence_penalty != 0.0f) {
        for (int i = tid; i < j.pen_count; i += SAMPLE_THREADS) {
            int t = pen[j.pen_begin + i];
            if (t >= 0 && t < n)
                row[t] -= j.presence_penalty;
        }
        __syncthreads();
    }

    if (j.temperature <= 0.0f) {
        float bv = -INFINITY;
        int bi = n; /* no candidate yet */
        for (int i = tid; i < n; i += SAMPLE_THREADS) {
            float v = row[i];
            if (bi == n || v > bv) {
                bv = v;
                bi = i;
            }
        }
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_xor_sync(Q3_FULL_MASK, bv, o);
            int oi = __shfl_xor_sync(Q3_FULL_MASK, bi, o);
            if (oi < n && (bi == n || ov > bv || (ov == bv && oi < bi))) {
                bv = ov;
                bi = oi;
            }
        }
        if ((tid & 31) == 0) {
            best_v[tid >> 5] = bv;
            best_i[tid >> 5] = bi;
        }
        __syncthreads();
        if (tid == 0) {
            float v = best_v[0];
            int b = best_i[0];
            for (int w = 1; w < SAMPLE_THREADS / 32; w++)
                if (best_i[w] < n && (b == n || best_v[w] > v || (best_v[w] == v && best_i[w] < b))) {
                    v = best_v[w];
                    b = best_i[w];
                }
            out[j.out] = b < n ? b : 0;
        }
        return;
    }

    const int K = (j.top_k > 0 && j.top_k < n) ? j.top_k : n;
    const int Kc = K < CU_SAMPLE_MAX_CANDIDATES ? K : CU_SAMPLE_MAX_CANDIDATES;

    /* The Kc-th largest key, 8 bits at a time from the top. */
    uint32_t prefix = 0, mask = 0;
    uint32_t krem = (uint32_t)Kc;
    for (int pass = 0; pass < 4; pass++) {
        const int shift = 24 - 8 * pass;
        for (int b = tid; b < 256; b += SAMPLE_THREADS)
            hist[b] = 0;
        __syncthreads();
        for (int i = tid; i < n; i += SAMPLE_THREADS) {
            uint32_t k = float_key(row[i]);
            if ((k & mask) == prefix)
                atomicAdd(&hist[(k >> shift) & 255u], 1u);
        }
        __syncthreads();
        if (tid == 0) {
            uint32_t cum = 0;
            int b = 255;
            for (; b > 0; b--) {
                if (cum + hist[b] >= krem)
                    break;
                cum += hist[b];
            }
            s_prefix = prefix | ((uint32_t)b << shift);
            s_krem = krem - cum;
        }
        __syncthreads();
        prefix = s_prefix;
        krem = s_krem;
        mask |= 0xffu << shift;
    }
    const uint32_t thr = prefix;

    if (tid == 0)
        n_cand = 0;
    __syncthreads();
    for (int i = tid; i < n; i += SAMPLE_THREADS) {
        uint32_t k = float_key(row[i]);
        if (k >= thr) {
            int slot = atomicAdd(&n_cand, 1);
            if (slot < SAMPLE_CAP)
                cand[slot] = ((unsigned long long)k << 32) | (0xffffffffu - (uint32_t)i);
        }
    }
    __syncthreads();
    const int nc = n_cand < SAMPLE_CAP ? n_cand : SAMPLE_CAP;
    for (int i = nc + tid; i < SAMPLE_CAP; i += SAMPLE_THREADS)
        cand[i] = 0ull;
    __syncthreads();
    /* Bitonic sort, descending: logit desc, then id asc. */
    for (int k = 2; k <= SAMPLE_CAP; k <<= 1)
        for (int jj = k >> 1; jj > 0; jj >>= 1) {
            for (int idx = tid; idx < SAMPLE_CAP; idx += SAMPLE_THREADS) {
                int ixj = idx ^ jj;
                if (ixj > idx) {
                    unsigned long long a = cand[idx], b = cand[ixj];
                    bool desc = (idx & k) == 0;
                    if (desc ? a < b : a > b) {
                        cand[idx] = b;
                        cand[ixj] = a;
                    }
                }
            }
            __syncthreads();
        }

    const int m = Kc < nc ? Kc : nc;
    for (int i = tid; i < m; i += SAMPLE_THREADS)
        ids[i] = (int)(0xffffffffu - (uint32_t)(cand[i] & 0xffffffffull));
    __syncthreads();
    const double mx = (double)row[ids[0]];
    for (int i = tid; i < m; i += SAMPLE_THREADS)
        probs[i] = (float)exp(((double)row[ids[i]] - mx) / (double)j.temperature);
    __syncthreads();
    if (tid != 0)
        return;
    double sum = 0;
    for (int i = 0; i < m; i++)
        sum += probs[i];
    for (int i = 0; i < m; i++)
        probs[i] = (float)(probs[i] / sum);
    int cnt = m;
    if (j.top_p > 0.0f && j.top_p < 1.0f) {
        double cum = 0;
        int keep = 0;
        while (keep < cnt && cum < j.top_p)
            cum += probs[keep++];
        cnt = keep;
    }
    if (j.min_p > 0.0f) {
        float floor_p = j.min_p * probs[0];
        int keep = 1;
        while (keep < cnt && probs[keep] >= floor_p)
            keep++;
        cnt = keep;
    }
    double total = 0;
    for (int i = 0; i < cnt; i++)
        total += probs[i];
    double u = sample_uniform_dev(j.seed, j.counter) * total, cum = 0;
    int pick = ids[cnt - 1];
    for (int i = 0; i < cnt; i++) {
        cum += probs[i];
        if (u < cum) {
            pick = ids[i];
            break;
        }
    }
    out[j.out] = pick;
}

extern "C" cudaError_t cu_sample(float *logits, int V, const cu_sample_job *jobs, int n_jobs,
                                 const int32_t *pen_tokens, int32_t *out_ids, cudaStream_t s)
{
    if (n_jobs <= 0)
        return cudaSuccess;
    sample_kernel<<<n_jobs, SAMPLE_THREADS, 0, s>>>(logits, V, jobs, pen_tokens, out_ids);
    return cudaGetLastError();
}
