/*
 * tests/gpu/w4a16_bench.cu - times cu_w4a16_gemm on the Qwen3-14B shapes (8
 * rotating copies of each weight, so nothing stays in L2) for batches of
 * 1-64 rows, next to kernels that only read the same bytes in the same
 * order (the floor the products are held against). Not part of the build:
 * `tests/gpu/run.sh w4bench` compiles it with nvcc on the GPU machine and
 * runs it; QWEN3_BATCH_W4S_WARPS / QWEN3_BATCH_W4R_WARPS=4 time the
 * narrower blocks, QWEN3_BATCH_W4_SMALL=0 the mma kernel alone, W4B_QUICK=1
 * the products without the read floors. Each shape also compares the
 * wgmma kernel (sm_90a builds) with the rows kernel at 17 and 64 rows.
 */
#include "../../cuda/gemm_w4a16.cu"
#include <stdio.h>
#include <stdlib.h>

// pattern A: warp streams its own tile: (nt, kt0..kt1) as the small kernel
__global__ void rd_tile(const uint4 *qw, int kt_count, int kps, int nt_count, uint32_t *out)
{
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    int nt = warp % nt_count, sp = warp / nt_count;
    int kt0 = sp * kps, kt1 = min(kt0 + kps, kt_count);
    uint32_t acc = 0;
    const uint4 *p = qw + ((size_t)nt * kt_count) * 32 + lane;
    for (int kt = kt0; kt < kt1; kt += 4) {
        uint4 v[4];
#pragma unroll
        for (int u = 0; u < 4; u++) if (kt + u < kt1) v[u] = ld_stream(p + (kt + u) * 32); else v[u] = make_uint4(0,0,0,0);
#pragma unroll
        for (int u = 0; u < 4; u++) acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
    }
    if (acc == 0x12345678) out[0] = acc;
}
// pattern B: flat grid-stride over all uint4
__global__ void rd_flat(const uint4 *qw, size_t n, uint32_t *out)
{
    uint32_t acc = 0;
    size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride * 4) {
        uint4 v[4];
#pragma unroll
        for (int u = 0; u < 4; u++) v[u] = i + u * stride < n ? ld_stream(qw + i + u * stride) : make_uint4(0,0,0,0);
#pragma unroll
        for (int u = 0; u < 4; u++) acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
    }
    if (acc == 0x12345678) out[0] = acc;
}
// pattern C: kt-major: warp nt reads tile (kt, nt) at [kt][nt][lane]
__global__ void rd_ktmajor(const uint4 *qw, int kt_count, int kps, int nt_count, uint32_t *out)
{
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    int nt = warp % nt_count, sp = warp / nt_count;
    int kt0 = sp * kps, kt1 = min(kt0 + kps, kt_count);
    uint32_t acc = 0;
    for (int kt = kt0; kt < kt1; kt += 4) {
        uint4 v[4];
#pragma unroll
        for (int u = 0; u < 4; u++) v[u] = kt + u < kt1 ? ld_stream(qw + ((size_t)(kt + u) * nt_count + nt) * 32 + lane) : make_uint4(0,0,0,0);
#pragma unroll
        for (int u = 0; u < 4; u++) acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
    }
    if (acc == 0x12345678) out[0] = acc;
}

__global__ void fill_x(__half *x, size_t n, uint32_t seed)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        x[i] = __float2half(hash_uniform(seed, i)); /* common.cuh, as the synthetic weights */
}

/* The wgmma kernel against the rows kernel on random x, at 17 and 64 rows:
 * both multiply the same fp16 (q - z) * s in fp32, so they differ in
 * rounding only. Where they do not, says where (for debugging the layout):
 * the first bad element, and which rows mod 16 and columns mod 128 go bad. */
static void check_wg(const void *qw, const void *sz, int K, int N, float *part, size_t pf, int n_sm)
{
    __half *x, *y1, *y2;
    cudaMalloc(&x, 2 * 64 * (size_t)K); cudaMalloc(&y1, 2 * 64 * (size_t)N); cudaMalloc(&y2, 2 * 64 * (size_t)N);
    fill_x<<<256, 256>>>(x, 64 * (size_t)K, 12345u);
    __half *h1 = (__half *)malloc(2 * 64 * (size_t)N), *h2 = (__half *)malloc(2 * 64 * (size_t)N);
    const int Ms[2] = {17, 64};
    for (int i = 0; i < 2; i++) {
        int M = Ms[i];
        cudaMemset(y1, 0xff, 2 * 64 * (size_t)N);
        cudaError_t e1 = launch_wg(x, M, K, (const uint4 *)qw, (const __half2 *)sz, K, N, 128, y1, N, part, pf, n_sm, 0);
        cudaError_t e2 = launch_rows(x, M, K, (const uint4 *)qw, (const __half2 *)sz, K, N, 128, y2, N, part, pf, n_sm, 0);
        cudaError_t e3 = cudaDeviceSynchronize();
        if (e1 || e2 || e3) {
            printf("wg check M=%d: wg %s, rows %s, sync %s\n", M, cudaGetErrorString(e1), cudaGetErrorString(e2), cudaGetErrorString(e3));
            continue;
        }
        cudaMemcpy(h1, y1, 2 * (size_t)M * N, cudaMemcpyDeviceToHost);
        cudaMemcpy(h2, y2, 2 * (size_t)M * N, cudaMemcpyDeviceToHost);
        double mx = 0, md = 0;
        for (size_t j = 0; j < (size_t)M * N; j++) mx = fmax(mx, fabs(__half2float(h2[j])));
        long bad = 0; int fr = -1, fc = -1; unsigned rows = 0; unsigned long long cols[2] = {0, 0};
        for (int r = 0; r < M; r++)
            for (int c = 0; c < N; c++) {
                float a = __half2float(h1[(size_t)r * N + c]), b = __half2float(h2[(size_t)r * N + c]);
                double d = isfinite(a) ? fabs(a - b) : INFINITY;
                md = fmax(md, d);
                if (d > 1e-2 * mx) {
                    if (!bad++) { fr = r; fc = c; }
                    rows |= 1u << (r % 16);
                    cols[(c % 128) / 64] |= 1ull << (c % 64);
                }
            }
        printf("wg check K=%d N=%d M=%d: max diff %.3g of max %.3g; %ld of %ld off by > 1%%", K, N, M, md, mx, bad, (long)M * N);
        if (bad)
            printf(" (first r %d c %d; rows mod 16 mask %04x; cols mod 128 mask %016llx%016llx)", fr, fc, rows, cols[1], cols[0]);
        printf("\n");
    }
    free(h1); free(h2); cudaFree(x); cudaFree(y1); cudaFree(y2);
}

#define T(label, bytes, launch) do { for (int w = 0; w < 3; w++) { launch; } cudaEventRecord(a); \
    for (int r = 0; r < reps; r++) { launch; } cudaEventRecord(b); cudaEventSynchronize(b); float ms; \
    cudaEventElapsedTime(&ms, a, b); ms /= reps; printf("%-34s %8.1f us  %6.2f TB/s\n", label, ms * 1e3, (bytes) / (ms * 1e-3) / 1e12); } while (0)

int main(void)
{
    int n_sm; cudaDeviceGetAttribute(&n_sm, cudaDevAttrMultiProcessorCount, 0);
    int shapes[4][2] = {{5120, 34816}, {17408, 5120}, {5120, 7168}, {5120, 5120}};
    const char *names[4] = {"gate_up", "down", "qkv", "o"};
    cudaEvent_t a, b; cudaEventCreate(&a); cudaEventCreate(&b);
    int reps = 50;
    /* W4B_QUICK=1: the products only, not the read floors */
    const char *qe = getenv("W4B_QUICK");
    const int quick = qe && *qe == '1';
    for (int si = 0; si < 4; si++) {
        int K = shapes[si][0], N = shapes[si][1];
        // 40 copies so that nothing stays in L2 (50 MB)
        int NC = 8;
        void *qw[8], *sz[8];
        for (int c = 0; c < NC; c++) { cudaMalloc(&qw[c], cu_w4_qw_bytes(K, N)); cudaMalloc(&sz[c], cu_w4_sz_bytes(K, N, 128));
            cu_awq_synth(qw[c], sz[c], K, N, 128, 7 + c, 0.01f, 0); }
        void *x, *y; float *part; uint32_t *o;
        cudaMalloc(&x, 2 * 64 * (size_t)K); cudaMemset(x, 0, 2 * 64 * (size_t)K);
        cudaMalloc(&y, 2 * 64 * (size_t)N); cudaMalloc(&o, 4);
        size_t pf = cu_w4a16_part_floats(K, N, n_sm);
        cudaMalloc(&part, pf * 4); cu_w4a16_init_scratch(part, pf, 0);
        double bytes = cu_w4_qw_bytes(K, N) + cu_w4_sz_bytes(K, N, 128);
        printf("== %s K=%d N=%d (%.1f MB)\n", names[si], K, N, bytes / 1e6);
        int c = 0;
        for (int M = 1; M <= 64; M *= 2) {
            char l[64]; snprintf(l, sizeof l, "int4 product M=%d", M);
            T(l, bytes, (cu_w4a16_gemm(x, M, K, qw[c], sz[c], K, N, 128, y, N, part, pf, n_sm, 0), c = (c + 1) % NC));
        }

        check_wg(qw[0], sz[0], K, N, part, pf, n_sm);
        int kt = K / 64, nt = N / 16;
        for (int sp = 1; !quick && sp <= 16; sp *= 2) {
            int kps = (kt + sp - 1) / sp; int warps = nt * sp;
            char l[64]; snprintf(l, sizeof l, "read tile-stream sp=%d", sp);
            T(l, cu_w4_qw_bytes(K, N), (rd_tile<<<(warps + 3) / 4, 128>>>((const uint4 *)qw[c], kt, kps, nt, o), c = (c + 1) % NC));
            snprintf(l, sizeof l, "read kt-major sp=%d", sp);
            T(l, cu_w4_qw_bytes(K, N), (rd_ktmajor<<<(warps + 3) / 4, 128>>>((const uint4 *)qw[c], kt, kps, nt, o), c = (c + 1) % NC));
        }
        size_t n4 = cu_w4_qw_bytes(K, N) / 16;
        if (!quick) T("read flat 4/SM x 1024", cu_w4_qw_bytes(K, N), (rd_flat<<<n_sm * 2, 1024>>>((const uint4 *)qw[c], n4, o), c = (c + 1) % NC));
        if (!quick) T("read flat 16/SM x 128", cu_w4_qw_bytes(K, N), (rd_flat<<<n_sm * 16, 128>>>((const uint4 *)qw[c], n4, o), c = (c + 1) % NC));
        cudaError_t e = cudaDeviceSynchronize();
        if (e) printf("error %s\n", cudaGetErrorString(e));
        for (int c2 = 0; c2 < NC; c2++) { cudaFree(qw[c2]); cudaFree(sz[c2]); }
        cudaFree(x); cudaFree(y); cudaFree(part); cudaFree(o);
    }
    return 0;
}
