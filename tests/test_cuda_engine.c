/*
 * test_cuda_engine.c - the CUDA engine against the CPU reference engine.
 *
 * Small random models built in memory (no files) in three flavours: AWQ
 * int4 untied with head_dim 128; dense bf16, tied, YaRN, head_dim 64; AWQ
 * with shapes the int4 kernels refuse (dense fallback) and group 32. For
 * each: logits of a prompt against the fp32 CPU engine, greedy generation
 * checked position by position against the CPU's logits, ragged batches
 * (sequences joining and leaving mid-decode) against each sequence alone,
 * a fork at a partial page against a fresh prefill, GPU sampling against
 * sample_token() on the same logits, and the error paths (KV full, budget).
 * The int4 product is also checked op by op for many batch sizes.
 * Skips (77) without CUDA or without a GPU.
 */
#include "config.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "engine.h"
#include "model.h"
#include "sample.h"

#ifdef HAVE_CUDA
#include <cuda_runtime_api.h>

#include "cuda_engine.h"
#include "cuda_ops.h"

static uint64_t rng = 88172645463325252ull;

static uint64_t next_u64(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static float frand(void) { return (float)((next_u64() >> 40) * (2.0 / 16777216.0) - 1.0); }

/* Every buffer a test model owns. */
struct tiny {
    model m;
    void *bufs[256];
    int n_bufs;
};

static void *track(struct tiny *t, size_t bytes)
{
    void *p = calloc(1, bytes ? bytes : 1);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    t->bufs[t->n_bufs++] = p;
    return p;
}

static model_tensor mk_tensor(struct tiny *t, enum model_dtype dt, int64_t rows, int64_t cols,
                              float scale, float offset)
{
    model_tensor x = {0};
    int64_t n = rows * (cols ? cols : 1);
    x.dtype = dt;
    x.n_dims = cols ? 2 : 1;
    x.shape[0] = rows;
    x.shape[1] = cols;
    size_t elt = dt == MODEL_F32 ? 4 : 2;
    x.n_bytes = (size_t)n * elt;
    void *d = track(t, x.n_bytes);
    for (int64_t i = 0; i < n; i++) {
        float v = offset + scale * frand();
        if (dt == MODEL_F32)
            ((float *)d)[i] = v;
        else if (dt == MODEL_F16)
            ((uint16_t *)d)[i] = model_f32_to_f16(v);
        else
            ((uint16_t *)d)[i] = model_f32_to_bf16(v);
    }
    x.data = d;
    x.name = "test";
    return x;
}

static model_linear mk_linear(struct tiny *t, int awq, int group, enum model_dtype dt, int64_t in,
                              int64_t out)
{
    model_linear l = {0};
    l.in_features = in;
    l.out_features = out;
    if (!awq) {
        l.weight = mk_tensor(t, dt, out, in, 1.7f / sqrtf((float)in), 0.0f);
        return l;
    }
    l.is_awq = 1;
    l.group_size = group;
    model_tensor q = {0}, z = {0};
    q.dtype = z.dtype = MODEL_I32;
    q.n_dims = z.n_dims = 2;
    q.shape[0] = in;
    q.shape[1] = out / 8;
    z.shape[0] = in / group;
    z.shape[1] = out / 8;
    q.n_bytes = (size_t)in * (out / 8) * 4;
    z.n_bytes = (size_t)(in / group) * (out / 8) * 4;
    uint32_t *qd = track(t, q.n_bytes), *zd = track(t, z.n_bytes);
    for (size_t i = 0; i < q.n_bytes / 4; i++)
        qd[i] = (uint32_t)next_u64();
    for (size_t i = 0; i < z.n_bytes / 4; i++)
        zd[i] = (uint32_t)next_u64();
    q.data = qd;
    z.data = zd;
    q.name = "qweight";
    z.name = "qzeros";
    l.qweight = q;
    l.qzeros = z;
    /* zeros 0..15 and q 0..15: (q - z) has variance ~42; keep outputs ~unit. */
    l.scales = mk_tensor(t, MODEL_F16, in / group, out, 0.25f / sqrtf(42.0f * (float)in),
                         1.0f / sqrtf(42.0f * (float)in));
    return l;
}

static void tiny_build(struct tiny *t, const model_config *cfg, int awq, enum model_dtype dt)
{
    memset(t, 0, sizeof *t);
    t->m.cfg = *cfg;
    const model_config *c = &t->m.cfg;
    int64_t H = c->hidden_size, D = c->head_dim, Q = (int64_t)c->n_heads * D,
            KV = (int64_t)c->n_kv_heads * D, I = c->intermediate_size;
    enum model_dtype wdt = awq ? MODEL_F16 : dt;
    t->m.embed = mk_tensor(t, wdt, c->vocab_size, H, 1.0f, 0.0f);
    t->m.final_norm = mk_tensor(t, wdt, H, 0, 0.2f, 1.0f);
    t->m.lm_head = c->tie_word_embeddings ? t->m.embed : mk_tensor(t, wdt, c->vocab_size, H,
                                                                  1.7f / sqrtf((float)H), 0.0f);
    t->m.layers = track(t, sizeof *t->m.layers * (size_t)c->n_layers);
    int g = c->awq_group_size;
    for (int l = 0; l < c->n_layers; l++) {
        model_layer *L = &t->m.layers[l];
        L->attn_norm = mk_tensor(t, wdt, H, 0, 0.2f, 1.0f);
        L->mlp_norm = mk_tensor(t, wdt, H, 0, 0.2f, 1.0f);
        L->q_norm = mk_tensor(t, wdt, D, 0, 0.2f, 1.0f);
        L->k_norm = mk_tensor(t, wdt, D, 0, 0.2f, 1.0f);
        L->q = mk_linear(t, awq, g, dt, H, Q);
        L->k = mk_linear(t, awq, g, dt, H, KV);
        L->v = mk_linear(t, awq, g, dt, H, KV);
        L->o = mk_linear(t, awq, g, dt, Q, H);
        L->gate = mk_linear(t, awq, g, dt, H, I);
        L->up = mk_linear(t, awq, g, dt, H, I);
        L->down = mk_linear(t, awq, g, dt, I, H);
    }
}

static void tiny_free(struct tiny *t)
{
    for (int i = 0; i < t->n_bufs; i++)
        free(t->bufs[i]);
}

static void base_cfg(model_config *c)
{
    memset(c, 0, sizeof *c);
    c->rms_norm_eps = 1e-6f;
    c->rope_theta = 1000000.0;
    c->max_position_embeddings = 4096;
    c->eos_ids[0] = 1;
    c->n_eos = 1;
}

/* ---- helpers ---- */

static int argmax(const float *x, int n)
{
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b])
            b = i;
    return b;
}

static float max_abs(const float *x, size_t n)
{
    float m = 0;
    for (size_t i = 0; i < n; i++)
        if (fabsf(x[i]) > m)
            m = fabsf(x[i]);
    return m;
}

/* Logits of every position of toks through engine e (one fresh sequence). */
static int score(eng *e, const int32_t *toks, int n, float *out)
{
    errbuf err;
    sample_params sp;
    sample_params_greedy(&sp);
    int s;
    if (eng_seq_add(e, &sp, &s, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    eng_item it = {.seq = s, .tokens = toks, .n_tokens = n, .logits = ENG_LOGITS_ALL};
    int rc = eng_step(e, &it, 1, out, NULL, &err);
    if (rc)
        fprintf(stderr, "score: %s\n", err.msg);
    eng_seq_release(e, s);
    return rc;
}

/* Greedy generation of n_new tokens after a prompt, on one sequence; with
 * margin, also each step's gap between the two largest logits over the
 * largest magnitude (how near the choice was to a tie). */
static int generate_m(eng *e, int V, const int32_t *prompt, int n_prompt, int n_new, int32_t *out,
                      float *margin)
{
    errbuf err;
    sample_params sp;
    sample_params_greedy(&sp);
    int s;
    if (eng_seq_add(e, &sp, &s, &err))
        return -1;
    eng_item it = {.seq = s, .tokens = prompt, .n_tokens = n_prompt, .sample = 1,
                   .logits = margin ? ENG_LOGITS_LAST : ENG_LOGITS_NONE};
    float *lg = margin ? malloc(sizeof *lg * (size_t)V) : NULL;
    int rc = 0;
    for (int k = 0; k < n_new && !rc; k++) {
        rc = eng_step(e, &it, 1, lg, &out[k], &err);
        if (margin && !rc) {
            float a = -INFINITY, b = -INFINITY, mag = 0;
            for (int v = 0; v < V; v++) {
                mag = fmaxf(mag, fabsf(lg[v]));
                if (lg[v] > a) {
                    b = a;
                    a = lg[v];
                } else if (lg[v] > b) {
                    b = lg[v];
                }
            }
            margin[k] = (a - b) / (mag > 0 ? mag : 1);
        }
        it.tokens = &out[k];
        it.n_tokens = 1;
    }
    free(lg);
    if (rc)
        fprintf(stderr, "generate: %s\n", err.msg);
    eng_seq_release(e, s);
    return rc;
}

static int generate(eng *e, const int32_t *prompt, int n_prompt, int n_new, int32_t *out)
{
    return generate_m(e, 0, prompt, n_prompt, n_new, out, NULL);
}

/* ---- the MLP activation, both paths (16-byte rows, and any even I) ---- */

static void test_swiglu_op(int T, int I)
{
    size_t n_in = (size_t)T * 2 * I, n_out = (size_t)T * I;
    uint16_t *gu = malloc(2 * n_in), *act = malloc(2 * n_out);
    for (size_t i = 0; i < n_in; i++)
        gu[i] = model_f32_to_f16(6.0f * frand());
    void *dg, *da;
    CHECK(cudaMalloc(&dg, 2 * n_in) == cudaSuccess);
    CHECK(cudaMalloc(&da, 2 * n_out) == cudaSuccess);
    cudaMemcpy(dg, gu, 2 * n_in, cudaMemcpyHostToDevice);
    cudaMemset(da, 0xff, 2 * n_out); /* NaN poison */
    CHECK(cu_swiglu(dg, T, I, da, 0) == cudaSuccess);
    CHECK(cudaDeviceSynchronize() == cudaSuccess);
    cudaMemcpy(act, da, 2 * n_out, cudaMemcpyDeviceToHost);
    double worst = 0;
    for (int t = 0; t < T; t++)
        for (int c = 0; c < I; c++) {
            double g = model_f16_to_f32(gu[(size_t)t * 2 * I + c]);
            double u = model_f16_to_f32(gu[(size_t)t * 2 * I + I + c]);
            double ref = g / (1.0 + exp(-g)) * u;
            double got = model_f16_to_f32(act[(size_t)t * I + c]);
            double e = isfinite(got) ? fabs(got - ref) / (1.0 + fabs(ref)) : INFINITY;
            if (e > worst)
                worst = e;
        }
    CHECK_MSG(worst < 2e-3, "swiglu T=%d I=%d: worst error %.3g", T, I, worst);
    cudaFree(dg);
    cudaFree(da);
    free(gu);
    free(act);
}

/* ---- the int4 product, op by op ---- */

/* Row counts whose int4 products share one order of sums per row: the
 * small kernel's 1-8 and 9-16 row variants, and the rows kernel's 64-row
 * launches (a larger M runs as chunks of 64, each row the same way). */
static int gemm_variant(int M) { return M <= 8 ? 0 : M <= 16 ? 1 : 2; }

/* The int4 product at each of the n_ms row counts Ms (ascending) against a
 * double-precision reference, and the rows a batch shares with a smaller
 * one of the same variant bit for bit: the splits of K must not depend on
 * M within a variant. */
static void test_gemm_ops_at(int K, int N, int group, const int *Ms, int n_ms)
{
    struct tiny t = {0};
    model_linear l = mk_linear(&t, 1, group, MODEL_F16, K, N);
    float *w = malloc(sizeof *w * (size_t)K * N); /* [N][K] */
    model_linear_to_f32(&l, w);
    int maxM = Ms[n_ms - 1];
    uint16_t *xh = malloc(2 * (size_t)maxM * K), *yh = malloc(2 * (size_t)maxM * N);
    float *xf = malloc(sizeof *xf * (size_t)maxM * K);
    for (int i = 0; i < maxM * K; i++) {
        xh[i] = model_f32_to_f16(frand());
        xf[i] = model_f16_to_f32(xh[i]);
    }
    void *dq, *dz, *ds, *qw, *sz, *dx, *dy, *dw;
    float *part;
    int n_sm = 0;
    cudaDeviceGetAttribute(&n_sm, cudaDevAttrMultiProcessorCount, 0);
    size_t pf = cu_w4a16_part_floats(K, N, n_sm);
    CHECK(cudaMalloc(&dq, l.qweight.n_bytes) == cudaSuccess);
    CHECK(cudaMalloc(&dz, l.qzeros.n_bytes) == cudaSuccess);
    CHECK(cudaMalloc(&ds, l.scales.n_bytes) == cudaSuccess);
    CHECK(cudaMalloc(&qw, cu_w4_qw_bytes(K, N)) == cudaSuccess);
    CHECK(cudaMalloc(&sz, cu_w4_sz_bytes(K, N, group)) == cudaSuccess);
    CHECK(cudaMalloc(&dx, 2 * (size_t)maxM * K) == cudaSuccess);
    CHECK(cudaMalloc(&dy, 2 * (size_t)maxM * N) == cudaSuccess);
    CHECK(cudaMalloc(&dw, 2 * (size_t)K * N) == cudaSuccess);
    CHECK(cudaMalloc((void **)&part, pf * 4) == cudaSuccess);
    CHECK(cu_w4a16_init_scratch(part, pf, 0) == cudaSuccess);
    cudaMemcpy(dq, l.qweight.data, l.qweight.n_bytes, cudaMemcpyHostToDevice);
    cudaMemcpy(dz, l.qzeros.data, l.qzeros.n_bytes, cudaMemcpyHostToDevice);
    cudaMemcpy(ds, l.scales.data, l.scales.n_bytes, cudaMemcpyHostToDevice);
    cudaMemcpy(dx, xh, 2 * (size_t)maxM * K, cudaMemcpyHostToDevice);
    CHECK(cu_awq_repack(dq, dz, ds, K, N, group, 0, N, qw, sz, 0) == cudaSuccess);
    double worst = 0;
    uint16_t *prev = malloc(2 * (size_t)maxM * N);
    int prev_m = 0;
    for (int mi = 0; mi < n_ms; mi++) {
        int M = Ms[mi];
        cudaMemset(dy, 0xff, 2 * (size_t)maxM * N); /* NaN poison: every output must be written */
        CHECK(cu_w4a16_gemm(dx, M, K, qw, sz, K, N, group, dy, N, part, pf, n_sm, 0) == cudaSuccess);
        CHECK(cudaDeviceSynchronize() == cudaSuccess);
        cudaMemcpy(yh, dy, 2 * (size_t)M * N, cudaMemcpyDeviceToHost);
        if (prev_m > 0 && gemm_variant(M) == gemm_variant(prev_m))
            CHECK_MSG(!memcmp(prev, yh, 2 * (size_t)prev_m * N),
                      "int4 gemm K=%d N=%d: the first %d rows differ between M=%d and M=%d", K, N,
                      prev_m, prev_m, M);
        memcpy(prev, yh, 2 * (size_t)M * N);
        prev_m = M;
        double num = 0, den = 0;
        int bad = 0;
        for (int m = 0; m < M; m++)
            for (int n = 0; n < N; n++) {
                double ref = 0;
                for (int k = 0; k < K; k++)
                    ref += (double)xf[(size_t)m * K + k] * w[(size_t)n * K + k];
                float got = model_f16_to_f32(yh[(size_t)m * N + n]);
                if (!isfinite(got))
                    bad++;
                num = fmax(num, fabs(got - ref));
                den = fmax(den, fabs(ref));
            }
        CHECK_MSG(bad == 0, "int4 gemm K=%d N=%d M=%d: %d outputs not written", K, N, M, bad);
        CHECK_MSG(num / den < 4e-3, "int4 gemm K=%d N=%d M=%d: max error %.3g of %.3g", K, N, M,
                  num, den);
        if (num / den > worst)
            worst = num / den;
    }
    /* Dequantized fp16 weights for the cuBLAS path, in column blocks. */
    uint16_t *wh = malloc(2 * (size_t)K * N);
    int half = N / 32 * 16;
    CHECK(cu_w4a16_dequant(qw, sz, K, N, group, 0, half, dw, 0) == cudaSuccess);
    CHECK(cu_w4a16_dequant(qw, sz, K, N, group, half, N - half, (char *)dw + (size_t)half * K * 2,
                           0) == cudaSuccess);
    cudaMemcpy(wh, dw, 2 * (size_t)K * N, cudaMemcpyDeviceToHost);
    double dmax = 0;
    for (size_t i = 0; i < (size_t)K * N; i++)
        dmax = fmax(dmax, fabs(model_f16_to_f32(wh[i]) - w[i]) / (fabs(w[i]) + 1e-3));
    CHECK_MSG(dmax < 2e-3, "dequant K=%d N=%d: relative error %.3g", K, N, dmax);
    printf("int4 gemm K=%d N=%d group=%d: worst relative error %.2e; dequant %.2e\n", K, N, group,
           worst, dmax);
    free(prev);
    cudaFree(dq), cudaFree(dz), cudaFree(ds), cudaFree(qw), cudaFree(sz), cudaFree(dx);
    cudaFree(dy), cudaFree(dw), cudaFree(part);
    free(w), free(xh), free(yh), free(xf), free(wh);
    tiny_free(&t);
}

static void test_gemm_ops(int K, int N, int group)
{
    const int Ms[] = {1, 3, 8, 9, 16, 17, 40, 64, 65, 130};
    test_gemm_ops_at(K, N, group, Ms, (int)(sizeof Ms / sizeof Ms[0]));
}

/* ---- an independent reference: the whole forward pass in double ---- */

static void ref_rmsnorm(const double *x, const float *w, int n, float eps, double *out)
{
    double ss = 0;
    for (int i = 0; i < n; i++)
        ss += x[i] * x[i];
    double inv = 1.0 / sqrt(ss / n + eps);
    for (int i = 0; i < n; i++)
        out[i] = x[i] * inv * w[i];
}

static float *ref_vec(const model_tensor *t, int64_t n)
{
    float *v = malloc(sizeof *v * (size_t)n);
    model_tensor_to_f32(t, 0, n, v);
    return v;
}

static float *ref_mat(const model_linear *l)
{
    float *w = malloc(sizeof *w * (size_t)(l->in_features * l->out_features));
    model_linear_to_f32(l, w);
    return w;
}

/* y[o] = sum_i x[i] W[o][i] */
static void ref_matvec(const float *W, const double *x, int in, int out, double *y)
{
    for (int o = 0; o < out; o++) {
        double a = 0;
        for (int i = 0; i < in; i++)
            a += x[i] * W[(size_t)o * in + i];
        y[o] = a;
    }
}

/* Logits of every position of toks, computed independently of both engines. */
static void ref_forward(const model *m, const int32_t *toks, int n, float *logits)
{
    const model_config *c = &m->cfg;
    int H = c->hidden_size, D = c->head_dim, nh = c->n_heads, nkv = c->n_kv_heads, G = nh / nkv;
    int Q = nh * D, KV = nkv * D, I = c->intermediate_size, V = c->vocab_size;
    double *x = calloc((size_t)n * H, sizeof *x), *h = malloc(sizeof *h * (size_t)H);
    double *q = malloc(sizeof *q * (size_t)n * Q), *k = malloc(sizeof *k * (size_t)n * KV),
           *v = malloc(sizeof *v * (size_t)n * KV), *att = malloc(sizeof *att * (size_t)Q),
           *tmp = malloc(sizeof *tmp * (size_t)(I > H ? 2 * I : 2 * H)), *sc = malloc(sizeof *sc * (size_t)n);
    float *inv = malloc(sizeof *inv * (size_t)D), af;
    model_rope_inv_freq(c, inv, &af);
    float *emb = ref_vec(&m->embed, (int64_t)V * H);
    for (int t = 0; t < n; t++)
        for (int i = 0; i < H; i++)
            x[(size_t)t * H + i] = emb[(size_t)toks[t] * H + i];
    for (int l = 0; l < c->n_layers; l++) {
        const model_layer *L = &m->layers[l];
        float *an = ref_vec(&L->attn_norm, H), *mn = ref_vec(&L->mlp_norm, H),
              *qn = ref_vec(&L->q_norm, D), *kn = ref_vec(&L->k_norm, D);
        float *wq = ref_mat(&L->q), *wk = ref_mat(&L->k), *wv = ref_mat(&L->v), *wo = ref_mat(&L->o),
              *wg = ref_mat(&L->gate), *wu = ref_mat(&L->up), *wd = ref_mat(&L->down);
        for (int t = 0; t < n; t++) {
            ref_rmsnorm(x + (size_t)t * H, an, H, c->rms_norm_eps, h);
            ref_matvec(wq, h, H, Q, q + (size_t)t * Q);
            ref_matvec(wk, h, H, KV, k + (size_t)t * KV);
            ref_matvec(wv, h, H, KV, v + (size_t)t * KV);
            for (int hd = 0; hd < nh + nkv; hd++) {
                double *p = hd < nh ? q + (size_t)t * Q + hd * D : k + (size_t)t * KV + (hd - nh) * D;
                ref_rmsnorm(p, hd < nh ? qn : kn, D, c->rms_norm_eps, tmp);
                for (int i = 0; i < D / 2; i++) {
                    double ang = (double)(float)((float)t * inv[i]);
                    double cs = cos(ang) * af, sn = sin(ang) * af;
                    p[i] = tmp[i] * cs - tmp[i + D / 2] * sn;
                    p[i + D / 2] = tmp[i + D / 2] * cs + tmp[i] * sn;
                }
            }
        }
        for (int t = 0; t < n; t++) {
            for (int hd = 0; hd < nh; hd++) {
                const double *qq = q + (size_t)t * Q + hd * D;
                int kh = hd / G;
                double mx = -1e300, sum = 0;
                for (int j = 0; j <= t; j++) {
                    double d = 0;
                    for (int i = 0; i < D; i++)
                        d += qq[i] * k[(size_t)j * KV + kh * D + i];
                    sc[j] = d / sqrt((double)D);
                    if (sc[j] > mx)
                        mx = sc[j];
                }
                for (int j = 0; j <= t; j++)
                    sum += (sc[j] = exp(sc[j] - mx));
                for (int i = 0; i < D; i++) {
                    double a = 0;
                    for (int j = 0; j <= t; j++)
                        a += sc[j] * v[(size_t)j * KV + kh * D + i];
                    att[hd * D + i] = a / sum;
                }
            }
            ref_matvec(wo, att, Q, H, tmp);
            for (int i = 0; i < H; i++)
                x[(size_t)t * H + i] += tmp[i];
            ref_rmsnorm(x + (size_t)t * H, mn, H, c->rms_norm_eps, h);
            double *g = tmp, *u = tmp + I;
            ref_matvec(wg, h, H, I, g);
            ref_matvec(wu, h, H, I, u);
            for (int i = 0; i < I; i++)
                g[i] = g[i] / (1 + exp(-g[i])) * u[i];
            double *dn = malloc(sizeof *dn * (size_t)H);
            ref_matvec(wd, g, I, H, dn);
            for (int i = 0; i < H; i++)
                x[(size_t)t * H + i] += dn[i];
            free(dn);
        }
        free(an), free(mn), free(qn), free(kn), free(wq), free(wk), free(wv), free(wo), free(wg);
        free(wu), free(wd);
    }
    float *fn = ref_vec(&m->final_norm, H);
    float *lm = ref_vec(&m->lm_head, (int64_t)V * H);
    for (int t = 0; t < n; t++) {
        ref_rmsnorm(x + (size_t)t * H, fn, H, c->rms_norm_eps, h);
        for (int o = 0; o < V; o++) {
            double a = 0;
            for (int i = 0; i < H; i++)
                a += h[i] * lm[(size_t)o * H + i];
            logits[(size_t)t * V + o] = (float)a;
        }
    }
    free(fn), free(lm), free(emb), free(x), free(h), free(q), free(k), free(v), free(att);
    free(tmp), free(sc), free(inv);
}

/* ---- engine against the CPU engine ---- */

/* The CUDA engine and the CPU engine on model m, with the same sequence
 * and KV limits; -1 (a failed check) when the CUDA one does not open. */
static int open_pair(const char *name, const model *m, enum eng_kv_type kv, int max_seqs,
                     int max_kv, int max_step, eng **g, eng **cpu)
{
    errbuf err;
    eng_options go = {.backend = ENG_BACKEND_CUDA, .kv_type = kv, .max_seqs = max_seqs,
                      .max_kv_tokens = max_kv, .max_step_tokens = max_step,
                      .gpu_memory_budget = (size_t)1 << 30};
    eng_options co = {.backend = ENG_BACKEND_CPU, .n_threads = 2, .max_seqs = max_seqs,
                      .max_kv_tokens = max_kv};
    if (cuda_engine_open(g, m, &go, &err)) {
        CHECK_MSG(0, "%s: cuda_engine_open: %s", name, err.msg);
        return -1;
    }
    CHECK(cpu_engine_open(cpu, m, &co, &err) == 0);
    return 0;
}

static void test_vs_cpu(const char *name, const model *m, enum eng_kv_type kv, double tol)
{
    const model_config *c = &m->cfg;
    int V = c->vocab_size, n = 45;
    eng *g = NULL, *cpu = NULL;
    if (open_pair(name, m, kv, 8, 2048, 256, &g, &cpu))
        return;
    int32_t prompt[64];
    for (int i = 0; i < 64; i++)
        prompt[i] = (int32_t)(next_u64() % (uint64_t)V);
    float *lg = malloc(sizeof *lg * (size_t)(n + 16) * V), *lc = malloc(sizeof *lc * (size_t)(n + 16) * V);
    CHECK(score(g, prompt, n, lg) == 0);
    CHECK(score(cpu, prompt, n, lc) == 0);
    double err_max = 0, ref_max = max_abs(lc, (size_t)n * V);
    int clear = 0, agree = 0;
    for (int p = 0; p < n; p++) {
        const float *a = lg + (size_t)p * V, *b = lc + (size_t)p * V;
        for (int v = 0; v < V; v++)
            err_max = fmax(err_max, fabs(a[v] - b[v]));
        int bc = argmax(b, V), ba = argmax(a, V);
        float second = -INFINITY;
        for (int v = 0; v < V; v++)
            if (v != bc && b[v] > second)
                second = b[v];
        if (b[bc] - second > 4 * tol * ref_max) {
            clear++;
            agree += ba == bc;
        }
    }
    /* Both engines against the independent double-precision reference. */
    float *lr = malloc(sizeof *lr * (size_t)n * V);
    ref_forward(m, prompt, n, lr);
    double ec = 0, eg = 0, rm = max_abs(lr, (size_t)n * V);
    for (size_t i = 0; i < (size_t)n * V; i++) {
        ec = fmax(ec, fabs(lc[i] - lr[i]));
        eg = fmax(eg, fabs(lg[i] - lr[i]));
    }
    printf("%s: vs a double reference: cpu %.2e, cuda %.2e relative\n", name, ec / rm, eg / rm);
    CHECK_MSG(ec / rm < 1e-3, "%s: the CPU engine differs from the reference by %.3g", name, ec / rm);
    CHECK_MSG(eg / rm < tol, "%s: the CUDA engine differs from the reference by %.3g", name, eg / rm);
    free(lr);
    printf("%s (kv %s): logits max error %.3e of max %.3f (%.2e relative); argmax agrees on "
           "%d of %d clear positions\n",
           name, kv == ENG_KV_INT8 ? "int8" : "f16", err_max, ref_max, err_max / ref_max, agree,
           clear);
    CHECK_MSG(err_max / ref_max < tol, "%s: logits differ from the CPU engine by %.3g (max %.3g)",
              name, err_max, ref_max);
    CHECK(agree == clear);

    /* Greedy generation: each GPU choice is the CPU's argmax or within tolerance of it. */
    int32_t gen[16], seq[64];
    CHECK(generate(g, prompt, 20, 16, gen) == 0);
    memcpy(seq, prompt, 20 * sizeof *seq);
    memcpy(seq + 20, gen, 16 * sizeof *seq);
    CHECK(score(cpu, seq, 36, lc) == 0);
    int ok = 0;
    for (int k = 0; k < 16; k++) {
        const float *b = lc + (size_t)(19 + k) * V;
        ok += b[argmax(b, V)] - b[gen[k]] <= 2 * tol * ref_max;
    }
    CHECK_MSG(ok == 16, "%s: %d of 16 greedy tokens are not the CPU's choice", name, 16 - ok);
    free(lg);
    free(lc);
    eng_close(g);
    eng_close(cpu);
}

/* Decode steps whose keys are split over several blocks (flash-decoding,
 * at least split_keys keys a split: QWEN3_BATCH_ATT_SPLIT_KEYS, 64 by
 * default; a sequence alone takes as many splits as that allows, up to 16:
 * 297-340 keys take 5-6 splits of 64, 3 of 128 or 2 of 256) and
 * merged: each step's logits against the CPU engine's for the same
 * position. The prompt is prefilled (large tiles), then each step takes
 * chunk tokens (small tiles while chunk x G <= 16: one token is a decode
 * step; 9-16 rows take the decode kernel's two-tile variant, and a tile's
 * rows then sit at different positions, so the causal mask is exercised),
 * with the warps' merge and the last block's merge of the splits. */
static void test_decode_splits(const char *name, const model *m, enum eng_kv_type kv, double tol,
                               const char *split_keys, int chunk)
{
    enum { N = 340, P = 296 };
    const int V = m->cfg.vocab_size;
    errbuf err;
    eng *g = NULL, *cpu = NULL;
    if (split_keys)
        setenv("QWEN3_BATCH_ATT_SPLIT_KEYS", split_keys, 1); /* read when the engine opens */
    int rc = open_pair(name, m, kv, 4, 1024, 512, &g, &cpu);
    unsetenv("QWEN3_BATCH_ATT_SPLIT_KEYS");
    if (rc)
        return;
    int32_t toks[N];
    for (int i = 0; i < N; i++)
        toks[i] = (int32_t)(next_u64() % (uint64_t)V);
    float *lc = malloc(sizeof *lc * (size_t)N * V), *lg = malloc(sizeof *lg * (size_t)chunk * V);
    CHECK(score(cpu, toks, N, lc) == 0);
    const double ref_max = max_abs(lc + (size_t)P * V, (size_t)(N - P) * V);

    sample_params sp;
    sample_params_greedy(&sp);
    int s = -1;
    CHECK(eng_seq_add(g, &sp, &s, &err) == 0);
    eng_item it = {.seq = s, .tokens = toks, .n_tokens = P};
    rc = eng_step(g, &it, 1, NULL, NULL, &err);
    CHECK_MSG(rc == 0, "%s: prefill: %s", name, err.msg);
    double err_max = 0;
    int agree = 0;
    for (int k = P; k < N && !rc; k += chunk) {
        const int n = chunk < N - k ? chunk : N - k;
        it = (eng_item){.seq = s, .tokens = &toks[k], .n_tokens = n, .logits = ENG_LOGITS_ALL};
        rc = eng_step(g, &it, 1, lg, NULL, &err);
        CHECK_MSG(rc == 0, "%s: decode at %d: %s", name, k, err.msg);
        for (int j = 0; j < n && !rc; j++) {
            const float *a = lg + (size_t)j * V, *b = lc + (size_t)(k + j) * V;
            for (int v = 0; v < V; v++)
                err_max = fmax(err_max, fabs(a[v] - b[v]));
            agree += argmax(a, V) == argmax(b, V);
        }
    }
    printf("%s (kv %s, split keys %s, %d a step): decode over split keys at %d..%d keys: logits "
           "max error %.3e of max %.3f (%.2e relative); argmax agrees %d of %d\n",
           name, kv == ENG_KV_INT8 ? "int8" : "f16", split_keys ? split_keys : "default", chunk,
           P + 1, N, err_max, ref_max, err_max / ref_max, agree, N - P);
    CHECK_MSG(!rc && err_max / ref_max < tol, "%s: decode logits differ from the CPU engine by %.3g",
              name, err_max / ref_max);
    eng_seq_release(g, s);
    free(lc), free(lg);
    eng_close(g);
    eng_close(cpu);
}

/* Sequences of different lengths joining and leaving mid-decode give the
 * tokens each gives alone, up to a near tie: a row's sums depend on which
 * product kernel its step's row count picks (a decode row that shares a
 * step with a prefill takes another than alone) and on its decode
 * attention's splits (fewer where the batch fills the GPU), and int8 KV
 * can turn those last-bit differences into another quantized value, so a
 * token may differ where the alone run's two best logits are within tol of
 * the largest logit magnitude; the sequence is compared no further then
 * (its continuation differs). A token that differs at a clear choice fails, and
 * so do near ties in more than one sequence, so that a fault cannot hide
 * behind them. */
static void test_ragged(const char *name, const model *m, enum eng_kv_type kv, float tol)
{
    int V = m->cfg.vocab_size;
    errbuf err;
    eng_options go = {.backend = ENG_BACKEND_CUDA, .kv_type = kv, .max_seqs = 8,
                      .max_kv_tokens = 4096, .max_step_tokens = 256,
                      .gpu_memory_budget = (size_t)1 << 30};
    eng *g;
    if (cuda_engine_open(&g, m, &go, &err)) {
        CHECK_MSG(0, "%s: %s", name, err.msg);
        return;
    }
    enum { NS = 4, STEPS = 14 };
    int lens[NS] = {37, 5, 70, 300}, join[NS] = {0, 0, 4, 6}, leave[NS] = {STEPS, 8, STEPS, 11};
    int32_t *prompts[NS], alone[NS][STEPS], batch[NS][STEPS];
    float margin[NS][STEPS];
    for (int s = 0; s < NS; s++) {
        prompts[s] = malloc(sizeof(int32_t) * (size_t)lens[s]);
        for (int i = 0; i < lens[s]; i++)
            prompts[s][i] = (int32_t)(next_u64() % (uint64_t)V);
        CHECK(generate_m(g, V, prompts[s], lens[s], leave[s] - join[s], alone[s], margin[s]) == 0);
    }
    sample_params sp;
    sample_params_greedy(&sp);
    int seqs[NS], n_done[NS] = {0};
    for (int step = 0; step < STEPS; step++) {
        eng_item items[NS];
        int idx[NS], n_items = 0;
        for (int s = 0; s < NS; s++) {
            if (step < join[s] || step >= leave[s])
                continue;
            if (step == join[s]) {
                CHECK(eng_seq_add(g, &sp, &seqs[s], &err) == 0);
                items[n_items] = (eng_item){.seq = seqs[s], .tokens = prompts[s],
                                            .n_tokens = lens[s], .sample = 1};
            } else {
                items[n_items] = (eng_item){.seq = seqs[s], .tokens = &batch[s][n_done[s] - 1],
                                            .n_tokens = 1, .sample = 1};
            }
            idx[n_items++] = s;
        }
        int32_t out[NS];
        if (eng_step(g, items, n_items, NULL, out, &err)) {
            CHECK_MSG(0, "%s ragged step %d: %s", name, step, err.msg);
            break;
        }
        for (int k = 0; k < n_items; k++)
            batch[idx[k]][n_done[idx[k]]++] = out[k];
        for (int s = 0; s < NS; s++)
            if (step + 1 == leave[s])
                eng_seq_release(g, seqs[s]);
    }
    int same = 1, ties = 0, compared = 0;
    for (int s = 0; s < NS; s++)
        for (int k = 0; k < leave[s] - join[s]; k++) {
            compared++;
            if (alone[s][k] == batch[s][k])
                continue;
            if (margin[s][k] < tol)
                ties++;
            else
                same = 0;
            break;
        }
    printf("%s (kv %s): ragged batch %s the sequences run alone (%d tokens compared, %d "
           "sequences stopped at a near tie)\n",
           name, kv == ENG_KV_INT8 ? "int8" : "f16", same ? "matches" : "DIFFERS from", compared,
           ties);
    CHECK(same);
    CHECK_MSG(ties <= 1, "%s: %d sequences stopped at near ties", name, ties); /* rare when right */
    CHECK(eng_kv_free_tokens(g) == 4096);
    for (int s = 0; s < NS; s++)
        free(prompts[s]);
    eng_close(g);
}

/* A fork at a partial page continues like a fresh sequence with the same
 * tokens; releasing the source does not disturb it; pages come back. */
static void test_fork(const model *m)
{
    int V = m->cfg.vocab_size;
    errbuf err;
    eng_options go = {.backend = ENG_BACKEND_CUDA, .max_seqs = 4, .max_kv_tokens = 1024,
                      .max_step_tokens = 256, .gpu_memory_budget = (size_t)1 << 30};
    eng *g;
    if (cuda_engine_open(&g, m, &go, &err)) {
        CHECK_MSG(0, "fork: %s", err.msg);
        return;
    }
    int32_t toks[60];
    for (int i = 0; i < 60; i++)
        toks[i] = (int32_t)(next_u64() % (uint64_t)V);
    float *ref = malloc(sizeof *ref * 60 * (size_t)V), *got = malloc(sizeof *got * 23 * (size_t)V);
    CHECK(score(g, toks, 60, ref) == 0);
    sample_params sp;
    sample_params_greedy(&sp);
    int src, fk;
    CHECK(eng_seq_add(g, &sp, &src, &err) == 0);
    int32_t other[40];
    memcpy(other, toks, 37 * sizeof *other);
    for (int i = 37; i < 40; i++)
        other[i] = (toks[i] + 1) % V;
    eng_item it = {.seq = src, .tokens = other, .n_tokens = 40};
    CHECK(eng_step(g, &it, 1, NULL, NULL, &err) == 0);
    CHECK(eng_seq_fork(g, src, 37, &sp, &fk, &err) == 0);
    eng_seq_release(g, src);
    it = (eng_item){.seq = fk, .tokens = toks + 37, .n_tokens = 23, .logits = ENG_LOGITS_ALL};
    CHECK(eng_step(g, &it, 1, got, NULL, &err) == 0);
    double e = 0;
    for (size_t i = 0; i < 23 * (size_t)V; i++)
        e = fmax(e, fabs(got[i] - ref[37 * (size_t)V + i]));
    double mx = max_abs(ref, 60 * (size_t)V);
    printf("fork at a partial page: max difference %.3e (max %.3f)\n", e, mx);
    CHECK_MSG(e <= 1e-3 * mx, "fork continues differently from a fresh sequence: %.3g", e);
    eng_seq_release(g, fk);
    CHECK(eng_kv_free_tokens(g) == 1024);
    CHECK(eng_seq_fork(g, 3, 1, &sp, &fk, &err) != 0);
    free(ref);
    free(got);
    eng_close(g);
}

/* GPU sampling = sample_token() on the same logits with the same history. */
static void test_sampling(const model *m)
{
    int V = m->cfg.vocab_size;
    errbuf err;
    eng_options go = {.backend = ENG_BACKEND_CUDA, .max_seqs = 2, .max_kv_tokens = 512,
                      .max_step_tokens = 128, .gpu_memory_budget = (size_t)1 << 30};
    eng *g;
    if (cuda_engine_open(&g, m, &go, &err)) {
        CHECK_MSG(0, "sampling: %s", err.msg);
        return;
    }
    const sample_params cases[] = {
        {.temperature = 0.8f, .top_k = 20, .top_p = 0.9f, .min_p = 0.02f, .presence_penalty = 0.5f, .seed = 7},
        {.temperature = 1.3f, .top_k = 0, .top_p = 1.0f, .seed = 11},
        {.temperature = 0.6f, .top_k = 50, .top_p = 0.95f, .presence_penalty = 1.5f, .seed = 3},
    };
    sample_scratch sc;
    CHECK(sample_scratch_init(&sc, V) == 0);
    float *lg = malloc(sizeof *lg * (size_t)V);
    int total = 0, match = 0;
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        int s;
        CHECK(eng_seq_add(g, &cases[ci], &s, &err) == 0);
        int32_t prompt[8], hist[32], tok;
        for (int i = 0; i < 8; i++)
            prompt[i] = (int32_t)(next_u64() % (uint64_t)V);
        eng_item it = {.seq = s, .tokens = prompt, .n_tokens = 8, .logits = ENG_LOGITS_LAST, .sample = 1};
        for (int k = 0; k < 24; k++) {
            if (eng_step(g, &it, 1, lg, &tok, &err)) {
                CHECK_MSG(0, "sampling step: %s", err.msg);
                break;
            }
            int32_t want = sample_token(&cases[ci], lg, V, hist, k, (uint64_t)k, &sc);
            total++;
            match += want == tok;
            hist[k] = tok;
            it = (eng_item){.seq = s, .tokens = &hist[k], .n_tokens = 1, .logits = ENG_LOGITS_LAST, .sample = 1};
        }
        eng_seq_release(g, s);
    }
    printf("GPU sampling equals sample_token() on %d of %d draws\n", match, total);
    CHECK(match >= total - 1);
    sample_scratch_free(&sc);
    free(lg);
    eng_close(g);
}

static void test_errors(const model *m)
{
    errbuf err;
    eng *g;
    eng_options tiny_budget = {.backend = ENG_BACKEND_CUDA, .gpu_memory_budget = 1 << 20};
    CHECK(cuda_engine_open(&g, m, &tiny_budget, &err) != 0);
    CHECK_MSG(strstr(err.msg, "GPU memory budget") != NULL, "%s", err.msg);
    eng_options small_kv = {.backend = ENG_BACKEND_CUDA, .max_seqs = 2, .max_kv_tokens = 64,
                            .max_step_tokens = 64, .gpu_memory_budget = (size_t)1 << 30};
    if (cuda_engine_open(&g, m, &small_kv, &err)) {
        CHECK_MSG(0, "%s", err.msg);
        return;
    }
    sample_params sp;
    sample_params_greedy(&sp);
    int a, b, c;
    int32_t toks[80] = {0};
    CHECK(eng_seq_add(g, &sp, &a, &err) == 0);
    CHECK(eng_seq_add(g, &sp, &b, &err) == 0);
    CHECK(eng_seq_add(g, &sp, &c, &err) != 0);
    eng_item it = {.seq = a, .tokens = toks, .n_tokens = 80};
    CHECK(eng_step(g, &it, 1, NULL, NULL, &err) != 0);
    CHECK_MSG(strstr(err.msg, "KV cache full") != NULL, "%s", err.msg);
    it.n_tokens = 40;
    CHECK(eng_step(g, &it, 1, NULL, NULL, &err) == 0);
    it.seq = b;
    CHECK(eng_step(g, &it, 1, NULL, NULL, &err) != 0); /* 40 + 40 > 64 */
    it.n_tokens = 16;
    CHECK(eng_step(g, &it, 1, NULL, NULL, &err) == 0);
    CHECK(eng_kv_free_tokens(g) == 0);
    toks[0] = m->cfg.vocab_size;
    CHECK(eng_step(g, &it, 1, NULL, NULL, &err) != 0);
    eng_close(g);
}

int main(int argc, char **argv)
{
    /* "quick": a subset small enough for compute-sanitizer; "odd": only the
     * odd-shaped model. */
    int quick = argc > 1 && !strcmp(argv[1], "quick");
    int odd = argc > 1 && !strcmp(argv[1], "odd");
    if (!cuda_engine_available()) {
        printf("SKIP: no CUDA device\n");
        return 77;
    }
    test_gemm_ops(256, 48, 32);
    test_swiglu_op(5, 2056); /* vectorized: I % 8 == 0, rows of 257 vectors */
    test_swiglu_op(3, 1030); /* any even I */
    if (!quick) {
        test_gemm_ops(512, 768, 128);
        test_gemm_ops(1024, 272, 64);
        /* Qwen3-14B's down (K 17408, N 5120): enough column blocks that
         * the 9-16 row variant's splits differ from the 1-8 row ones. */
        const int Ms[] = {1, 8, 9, 16};
        test_gemm_ops_at(17408, 5120, 128, Ms, 4);
    }

    model_config ca, cb, cc;
    base_cfg(&ca);
    ca.vocab_size = 1000;
    ca.hidden_size = 512;
    ca.n_layers = 2;
    ca.n_heads = 8;
    ca.n_kv_heads = 2;
    ca.head_dim = 128;
    ca.intermediate_size = 1024;
    ca.dtype = MODEL_F16;
    ca.is_awq = 1;
    ca.awq_group_size = 128;
    struct tiny A;
    tiny_build(&A, &ca, 1, MODEL_F16);

    base_cfg(&cb);
    cb.vocab_size = 777;
    cb.hidden_size = 384;
    cb.n_layers = 3;
    cb.n_heads = 6;
    cb.n_kv_heads = 2;
    cb.head_dim = 64;
    cb.intermediate_size = 640;
    cb.tie_word_embeddings = 1;
    cb.dtype = MODEL_BF16;
    cb.rope_theta = 10000.0;
    cb.rope_yarn = 1;
    cb.yarn_factor = 4;
    cb.max_position_embeddings = 1024;
    cb.yarn_original_max_position = 256;
    cb.yarn_beta_fast = 32;
    cb.yarn_beta_slow = 1;
    struct tiny B;
    tiny_build(&B, &cb, 0, MODEL_BF16);

    base_cfg(&cc);
    cc.vocab_size = 500;
    cc.hidden_size = 288;
    cc.n_layers = 2;
    cc.n_heads = 4;
    cc.n_kv_heads = 4;
    cc.head_dim = 64;
    cc.intermediate_size = 544;
    cc.dtype = MODEL_F16;
    cc.is_awq = 1;
    cc.awq_group_size = 32;
    struct tiny C;
    tiny_build(&C, &cc, 1, MODEL_F16);

    if (odd) {
        test_vs_cpu("awq-odd-shapes-g32", &C.m, ENG_KV_F16, 1e-2);
        tiny_free(&A), tiny_free(&B), tiny_free(&C);
        return check_exit("test_cuda_engine odd");
    }
    test_vs_cpu("awq-d128-untied", &A.m, ENG_KV_F16, 1e-2);
    test_vs_cpu("awq-d128-untied", &A.m, ENG_KV_INT8, 3e-2);
    test_fork(&A.m);
    test_sampling(&A.m);
    test_decode_splits("awq-d128-untied", &A.m, ENG_KV_F16, 1e-2, "64", 1);
    if (!quick) {
        test_decode_splits("awq-d128-untied", &A.m, ENG_KV_F16, 1e-2, "256", 1);
        test_decode_splits("awq-d128-untied", &A.m, ENG_KV_INT8, 3e-2, "64", 1);
        test_decode_splits("bf16-d64-tied-yarn", &B.m, ENG_KV_F16, 1e-2, "128", 1);
        test_vs_cpu("bf16-d64-tied-yarn", &B.m, ENG_KV_F16, 1e-2);
        test_vs_cpu("awq-odd-shapes-g32", &C.m, ENG_KV_F16, 1e-2);
        setenv("QWEN3_BATCH_NO_INT4", "1", 1);
        test_vs_cpu("awq-odd-shapes-g32-as-fp16", &C.m, ENG_KV_F16, 1e-2);
        unsetenv("QWEN3_BATCH_NO_INT4");
        struct tiny C2, C3;
        model_config c2 = cc, c3 = cc;
        c2.n_kv_heads = 2;
        tiny_build(&C2, &c2, 1, MODEL_F16);
        test_vs_cpu("awq-odd-shapes-g32-gqa2", &C2.m, ENG_KV_F16, 1e-2);
        c3.hidden_size = 320;
        c3.intermediate_size = 576;
        tiny_build(&C3, &c3, 1, MODEL_F16);
        test_vs_cpu("awq-g32-all-int4", &C3.m, ENG_KV_F16, 1e-2);
        tiny_free(&C2);
        tiny_free(&C3);
        test_ragged("awq-d128-untied", &A.m, ENG_KV_F16, 2e-3f);
        test_ragged("awq-d128-untied", &A.m, ENG_KV_INT8, 5e-3f);
        /* after test_ragged, whose tokens follow the random stream so far:
         * G = 4: 2 tokens a step are 8 rows, 3 and 4 are 12 and 16; G = 3: 5 are 15 */
        test_decode_splits("awq-d128-untied", &A.m, ENG_KV_F16, 1e-2, "64", 2);
        test_decode_splits("awq-d128-untied", &A.m, ENG_KV_F16, 1e-2, "64", 3);
        test_decode_splits("awq-d128-untied", &A.m, ENG_KV_INT8, 3e-2, "256", 4);
        test_decode_splits("bf16-d64-tied-yarn", &B.m, ENG_KV_INT8, 3e-2, "128", 5);
        test_errors(&A.m);
        /* gate_up (K 5120, N 34816): on an H100 the 1-8 row variant takes
         * 3 splits of 27 tiles here, the 9-16 row one 4 of 20. Then the
         * down shape at 17 and 64 rows: split K through the 17-64 row
         * kernel (wgmma on an H100). Last, so that the models above keep
         * their random weights (test_ragged's exact tokens depend on them;
         * docs/PERF-cuda.md, session 7). */
        const int Mg[] = {1, 8, 9, 16};
        test_gemm_ops_at(5120, 34816, 128, Mg, 4);
        const int Ms2[] = {17, 64};
        test_gemm_ops_at(17408, 5120, 128, Ms2, 2);
    }
    tiny_free(&A);
    tiny_free(&B);
    tiny_free(&C);
    return check_exit("test_cuda_engine");
}

#else

int main(void)
{
    printf("SKIP: built without CUDA\n");
    return 77;
}

#endif
