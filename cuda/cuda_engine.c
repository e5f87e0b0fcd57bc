/*
 * cuda_engine.c - the CUDA backend of engine.h: memory plan, weight upload,
 * paged KV cache, and the step driver that runs the kernels of cuda/.
 *
 * A step packs the tokens of all its items (prefill chunks and decode tokens
 * alike) into one batch of T rows and runs each layer once over them:
 *   x (fp32 residual) -> rmsnorm -> qkv (one fused product) -> q/k norm,
 *   rope, K/V into the pages -> attention per sequence -> o -> add+rmsnorm
 *   -> gate|up (one fused product) -> swiglu -> down -> (added at the next norm)
 * Only rows that need logits go through the final norm and lm_head, in
 * chunks, and sampling runs on the GPU; the host gets token ids (and logits
 * when asked). Steps larger than max_step_tokens run as several passes (a
 * prefix of a sequence is always a valid pass), so activation memory is
 * fixed at open.
 *
 * Memory is planned up front (plan_memory): weights, activations for
 * max_step_tokens, fixed workspaces, then KV pages. Every allocation goes
 * through dev_alloc, which refuses to exceed the budget, so running out is an
 * error naming what to lower rather than a crash later.
 */
#include "config.h"

#include "cuda_engine.h"

#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_ops.h"

#define PAGE_SIZE 16
#define LOGIT_ROWS 64                 /* lm_head rows per pass */
#define ATT_MAX_SPLITS 16             /* flash-decoding: key splits per (sequence, KV head) */
_Static_assert(ATT_MAX_SPLITS <= 32, "attn_combine_last holds a part per lane");
/* Least keys per split, where a wave has room for more splits (small
 * batches; att_split_keys). Measured on the H100 (call BN, 2026-12-06, 14B
 * shapes, tok/s at 64 / 128 / 256): decode B=1 at 640 keys 204.7 / 203.8 /
 * 201.4; B=16 at 1.1k with int8 KV 2,511 at 64, 2,508 at 256. */
#define ATT_MIN_SPLIT_KEYS 64
#define DEQUANT_WS_MAX (256u << 20)   /* fp16 weights for one cuBLAS product at a time */
#define BLAS_WS_BYTES (32u << 20)
#define RESERVE_BYTES (64u << 20)     /* slack for cuBLAS handles and small buffers */
#define GIB (1024.0 * 1024.0 * 1024.0)

#define CU_CHECK(call)                                                                            \
    do {                                                                                          \
        cudaError_t e_ = (call);                                                                  \
        if (e_ != cudaSuccess)                                                                    \
            return errorf(err, "%s:%d: CUDA: %s: %s", __FILE__, __LINE__, #call,                  \
                          cudaGetErrorString(e_));                                                \
    } while (0)

#define BLAS_CHECK(call)                                                                          \
    do {                                                                                          \
        cublasStatus_t s_ = (call);                                                               \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                                          \
            return errorf(err, "%s:%d: cuBLAS: %s: status %d", __FILE__, __LINE__, #call,         \
                          (int)s_);                                                               \
    } while (0)

struct cu_linear {
    int awq; /* 1: packed int4 (qw, sz); 0: fp16 w16 [N][K] */
    int K, N, group;
    void *qw, *sz, *w16;
};

struct cu_layer {
    float *attn_norm, *mlp_norm, *q_norm, *k_norm;
    struct cu_linear qkv, o, gate_up, down;
};

struct cu_seq {
    int used;
    int n; /* positions in the cache */
    int32_t *pages;
    int n_pages, cap_pages;
    sample_params sp;
    int64_t n_sampled;
    int32_t *uniq; /* distinct sampled tokens, for the presence penalty */
    int n_uniq, cap_uniq;
    uint8_t *seen; /* [vocab] bitmap, allocated when the penalty is on */
};

/* Where the time goes (cuda_engine_set_profiling): an event at each mark,
 * the interval to the next mark charged to the mark's category. */
enum prof_cat {
    P_UPLOAD, P_EMBED, P_NORM, P_QKV, P_ROPE, P_ATTN, P_O, P_GATEUP, P_SWIGLU, P_DOWN,
    P_LOGITS, P_SAMPLE, P_END, P_N
};
static const char *const prof_name[P_N] = {"upload", "embed", "rmsnorm", "qkv", "qk-norm+rope+kv",
                                           "attention", "o_proj", "gate_up", "swiglu", "down",
                                           "final norm+lm_head", "sample", "end"};
#define PROF_CAP 1024
#define GRAPH_CAP 8

/* Graphs of decode passes, keyed by everything that shapes their launches. */
struct graph_key {
    int n_segs, T, n_lrows, n_jobs, job_rows_sig, small_rows;
    void *pen_d;
};

/* One piece of an item in one forward pass. */
struct seg {
    int item, t0, count, last;
};

typedef struct cuda_engine {
    eng base;
    model_config c;
    const model *m; /* NULL for synthetic */
    uint64_t synth_seed;
    cuda_engine_info info;

    int dev, n_sm;
    cudaStream_t stream;
    cublasHandle_t blas;
    int blas_ok;
    size_t budget, used;
    void **allocs;
    int n_allocs, cap_allocs;

    struct cu_layer *layers;
    float *final_norm;
    void *lm_head;      /* fp16 [V][H] */
    void *embed_dev;    /* fp16 table on the device (tied models) or NULL */
    int embed_on_host;  /* rows copied from the model's mapping */
    int embed_dtype;
    size_t embed_elt;
    float *inv_freq;
    float attn_factor;

    /* KV cache */
    cu_kv kv;
    int n_pages_total;
    int32_t *free_pages;
    int n_free;
    int *page_ref;
    size_t page_bytes, page_scale_bytes;

    struct cu_seq *seqs;
    int max_seqs, max_T, G;
    int att_rows; /* rows per prefill attention block (cu_attn_prefill_rows) */
    int att_min_split; /* least keys per decode split, a multiple of 64 */
    int att_slots[2];  /* decode attention blocks in one wave: tiles of <= 8 rows, of 9-16 */
    int att_wave;      /* decode splits fill about a wave (else: by a sequence's keys only) */
    int dequant_min_m;
    size_t gemm_part_floats;
    int att_parts_max;

    /* activations */
    float *x;
    void *h, *mid, *qa, *att, *y; /* qa: q before attention, act after */
    void *hl;                     /* final-norm rows for lm_head */
    float *logits;                /* [LOGIT_ROWS][V] */
    float *gemm_part, *att_part_o, *att_part_lse;
    int *att_comb_counters; /* one per combine entry, zero between layers */
    void *dq_ws;
    size_t dq_ws_bytes;
    void *blas_ws;
    void *embed_stage_d, *embed_stage_h;
    int32_t *samp_d, *samp_h;

    /* per-pass metadata: one pinned host buffer copied to one device buffer */
    char *meta_h, *meta_d;
    size_t meta_cap;
    int32_t *pen_h, *pen_d;
    size_t pen_cap;

    /* profiling */
    int prof_on, prof_n;
    cudaEvent_t prof_ev[PROF_CAP];
    unsigned char prof_cat[PROF_CAP];
    double prof_ms[2][P_N];  /* [decode-only pass?][category] */
    long prof_passes[2], prof_tokens[2];

    /* CUDA graphs of decode passes */
    int graphs_on, n_graphs;
    cudaGraphExec_t graphs[GRAPH_CAP];
    struct graph_key graph_keys[GRAPH_CAP];

    /* host scratch */
    struct seg *segs;
    int *out_row, *samp_out;
} cuda_engine;

/* ---- device memory with a budget ---- */

static int dev_alloc(cuda_engine *e, void **p, size_t bytes, const char *what, errbuf *err)
{
    *p = NULL;
    if (bytes == 0)
        bytes = 16;
    bytes = (bytes + 255) & ~(size_t)255;
    if (e->used + bytes > e->budget)
        return errorf(err,
                      "GPU memory budget %.2f GiB exceeded allocating %s (%.2f GiB, %.2f GiB "
                      "already planned): raise gpu_memory or lower max_step_tokens/max_kv_tokens",
                      e->budget / GIB, what, bytes / GIB, e->used / GIB);
    cudaError_t rc = cudaMalloc(p, bytes);
    if (rc != cudaSuccess) {
        *p = NULL;
        return errorf(err, "cudaMalloc of %.2f GiB for %s failed (%s) with %.2f GiB in use: lower "
                           "gpu_memory, max_step_tokens or max_kv_tokens",
                      bytes / GIB, what, cudaGetErrorString(rc), e->used / GIB);
    }
    if (e->n_allocs == e->cap_allocs) {
        int cap = e->cap_allocs ? e->cap_allocs * 2 : 256;
        void **a = realloc(e->allocs, sizeof *a * (size_t)cap);
        if (!a) {
            cudaFree(*p);
            *p = NULL;
            return errorf(err, "out of host memory");
        }
        e->allocs = a;
        e->cap_allocs = cap;
    }
    e->allocs[e->n_allocs++] = *p;
    e->used += bytes;
    return 0;
}

static void dev_free(cuda_engine *e, void *p, size_t bytes)
{
    if (!p)
        return;
    for (int i = 0; i < e->n_allocs; i++)
        if (e->allocs[i] == p) {
            e->allocs[i] = e->allocs[--e->n_allocs];
            break;
        }
    cudaFree(p);
    if (bytes == 0)
        bytes = 16;
    e->used -= (bytes + 255) & ~(size_t)255;
}

/* ---- sizes ---- */

static int awq_fusable(const model_linear *const *parts, int n, int K)
{
    /* Debugging aid: QWEN3_BATCH_NO_INT4=1 runs AWQ layers as fp16 through cuBLAS. */
    const char *no = getenv("QWEN3_BATCH_NO_INT4");
    if (no && *no == '1')
        return 0;
    for (int i = 0; i < n; i++) {
        const model_linear *l = parts[i];
        if (!l->is_awq || l->in_features != K || l->out_features % 16 || l->group_size % 16 ||
            l->group_size != parts[0]->group_size || K % l->group_size)
            return 0;
    }
    return K % 64 == 0;
}

static size_t linear_bytes(int awq, int K, int N, int group)
{
    if (awq)
        return cu_w4_qw_bytes(K, N) + cu_w4_sz_bytes(K, N, group) + 512;
    return (size_t)K * N * 2 + 256;
}

/* ---- loading ---- */

static size_t tensor_elt(enum model_dtype d) { return d == MODEL_F32 || d == MODEL_I32 ? 4 : 2; }

/* Uploads a tensor's raw bytes to tmp and converts n elements to fp16 at dst. */
static int upload_f16(cuda_engine *e, const model_tensor *t, void *tmp, void *dst, size_t n,
                      errbuf *err)
{
    if (t->n_bytes < n * tensor_elt(t->dtype))
        return errorf(err, "%s: tensor has %zu bytes, expected %zu", t->name ? t->name : "tensor",
                      t->n_bytes, n * tensor_elt(t->dtype));
    CU_CHECK(cudaMemcpyAsync(tmp, t->data, n * tensor_elt(t->dtype), cudaMemcpyHostToDevice,
                             e->stream));
    CU_CHECK(cu_to_f16(tmp, (int)t->dtype, n, dst, e->stream));
    CU_CHECK(cudaStreamSynchronize(e->stream));
    return 0;
}

static int upload_f32(cuda_engine *e, const model_tensor *t, int64_t n, float **dst,
                      const char *what, errbuf *err)
{
    float *h = malloc(sizeof *h * (size_t)n);
    if (!h)
        return errorf(err, "out of host memory");
    model_tensor_to_f32(t, 0, n, h);
    int rc = dev_alloc(e, (void **)dst, sizeof *h * (size_t)n, what, err);
    if (!rc) {
        /* Stream-ordered copies only: a plain cudaMemcpy from pageable memory
         * may return before its DMA lands, and our non-blocking stream would
         * not wait for it. */
        cudaError_t ce = cudaMemcpyAsync(*dst, h, sizeof *h * (size_t)n, cudaMemcpyHostToDevice,
                                         e->stream);
        if (ce == cudaSuccess)
            ce = cudaStreamSynchronize(e->stream);
        if (ce != cudaSuccess)
            rc = errorf(err, "uploading %s: %s", what, cudaGetErrorString(ce));
    }
    free(h);
    return rc;
}

/* Fuses parts (same in_features) along the output dimension into one linear. */
static int load_linear(cuda_engine *e, struct cu_linear *L, const model_linear *const *parts,
                       int n_parts, void *tmp, const char *what, errbuf *err)
{
    int K = (int)parts[0]->in_features, N = 0;
    for (int i = 0; i < n_parts; i++)
        N += (int)parts[i]->out_features;
    L->K = K;
    L->N = N;
    L->awq = awq_fusable(parts, n_parts, K);
    if (L->awq) {
        L->group = parts[0]->group_size;
        if (dev_alloc(e, &L->qw, cu_w4_qw_bytes(K, N), what, err) ||
            dev_alloc(e, &L->sz, cu_w4_sz_bytes(K, N, L->group), what, err))
            return -1;
        int n_off = 0;
        for (int i = 0; i < n_parts; i++) {
            const model_linear *l = parts[i];
            int n_src = (int)l->out_features;
            size_t qb = (size_t)K * (n_src / 8) * 4, zb = (size_t)(K / L->group) * (n_src / 8) * 4,
                   sb = (size_t)(K / L->group) * n_src * 2;
            if (l->qweight.n_bytes < qb || l->qzeros.n_bytes < zb || l->scales.n_bytes < sb ||
                l->scales.dtype != MODEL_F16)
                return errorf(err, "%s: AWQ tensors have unexpected sizes or dtypes", what);
            char *t = tmp;
            CU_CHECK(cudaMemcpyAsync(t, l->qweight.data, qb, cudaMemcpyHostToDevice, e->stream));
            CU_CHECK(cudaMemcpyAsync(t + qb, l->qzeros.data, zb, cudaMemcpyHostToDevice, e->stream));
            CU_CHECK(cudaMemcpyAsync(t + qb + zb, l->scales.data, sb, cudaMemcpyHostToDevice,
                                     e->stream));
            CU_CHECK(cu_awq_repack((const int32_t *)t, (const int32_t *)(t + qb), t + qb + zb, K,
                                   n_src, L->group, n_off, N, L->qw, L->sz, e->stream));
            CU_CHECK(cudaStreamSynchronize(e->stream));
            n_off += n_src;
        }
        return 0;
    }
    if (dev_alloc(e, &L->w16, (size_t)K * N * 2, what, err))
        return -1;
    int64_t row = 0;
    for (int i = 0; i < n_parts; i++) {
        const model_linear *l = parts[i];
        int64_t n_src = l->out_features;
        char *dst = (char *)L->w16 + (size_t)row * K * 2;
        if (l->is_awq) {
            /* Shapes the int4 kernels do not take: dequantize on the host. */
            float *w = malloc(sizeof *w * (size_t)n_src * K);
            if (!w)
                return errorf(err, "out of host memory");
            model_linear_to_f32(l, w);
            cudaError_t ce = cudaMemcpyAsync(tmp, w, sizeof *w * (size_t)n_src * K,
                                             cudaMemcpyHostToDevice, e->stream);
            if (ce == cudaSuccess)
                ce = cudaStreamSynchronize(e->stream);
            free(w);
            CU_CHECK(ce);
            CU_CHECK(cu_to_f16(tmp, MODEL_F32, (size_t)n_src * K, dst, e->stream));
            CU_CHECK(cudaStreamSynchronize(e->stream));
        } else if (upload_f16(e, &l->weight, tmp, dst, (size_t)n_src * K, err)) {
            return error_prefix(err, "%s", what);
        }
        row += n_src;
    }
    return 0;
}

/* Largest staging buffer any tensor needs on its way up. */
static size_t max_tmp_bytes(const model *m)
{
    size_t mx = 0;
#define UPD(v)                                                                                    \
    do {                                                                                          \
        size_t v_ = (v);                                                                          \
        if (v_ > mx)                                                                              \
            mx = v_;                                                                              \
    } while (0)
    const model_config *c = &m->cfg;
    UPD((size_t)c->vocab_size * c->hidden_size * tensor_elt(m->lm_head.dtype));
    for (int l = 0; l < c->n_layers; l++) {
        const model_layer *L = &m->layers[l];
        const model_linear *ls[] = {&L->q, &L->k, &L->v, &L->o, &L->gate, &L->up, &L->down};
        for (int i = 0; i < 7; i++) {
            const model_linear *x = ls[i];
            size_t n = (size_t)x->in_features * x->out_features;
            if (x->is_awq)
                UPD(x->qweight.n_bytes + x->qzeros.n_bytes + x->scales.n_bytes + n * 4);
            else
                UPD(n * tensor_elt(x->weight.dtype));
        }
    }
#undef UPD
    return mx;
}

/* ---- memory plan ---- */

struct plan {
    size_t weights, act, work, embed_stage;
};

static size_t act_bytes(const model_config *c, int T)
{
    size_t H = c->hidden_size, Q = (size_t)c->n_heads * c->head_dim,
           KV = (size_t)c->n_kv_heads * c->head_dim, I = c->intermediate_size;
    size_t mid = Q + 2 * KV > 2 * I ? Q + 2 * KV : 2 * I;
    size_t qa = I > Q ? I : Q;
    return (size_t)T * (H * 4 + H * 2 + mid * 2 + qa * 2 + Q * 2 + H * 2) + 6 * 256;
}

/* The decode merge's arrival counters: one per (sequence, KV head). */
static size_t att_counter_bytes(const cuda_engine *e)
{
    return (size_t)e->max_seqs * e->c.n_kv_heads * sizeof(int);
}

static size_t work_bytes(const cuda_engine *e)
{
    const model_config *c = &e->c;
    size_t V = c->vocab_size, H = c->hidden_size, D = c->head_dim;
    return LOGIT_ROWS * (V * 4 + H * 2) + e->gemm_part_floats * 4 +
           (size_t)e->att_parts_max * 16 * (D + 1) * 4 + att_counter_bytes(e) +
           e->dq_ws_bytes + BLAS_WS_BYTES + 8 * 256;
}

/* Split-K scratch for the int4 product: the most any layer shape asks. */
static void plan_gemm_part(cuda_engine *e)
{
    const model_config *c = &e->c;
    int H = c->hidden_size, Q = c->n_heads * c->head_dim, KV = c->n_kv_heads * c->head_dim,
        I = c->intermediate_size;
    int Ks[4] = {H, Q, H, I}, Ns[4] = {Q + 2 * KV, H, 2 * I, H};
    size_t mx = 0;
    for (int i = 0; i < 4; i++)
        if (Ks[i] % 64 == 0 && Ns[i] % 16 == 0) {
            size_t f = cu_w4a16_part_floats(Ks[i], Ns[i], e->n_sm);
            if (f > mx)
                mx = f;
        }
    e->gemm_part_floats = mx > 0 ? mx : cu_w4a16_part_floats(64, 16, e->n_sm);
    e->att_parts_max = e->max_seqs * c->n_kv_heads * ATT_MAX_SPLITS;
}

static size_t meta_bytes(const cuda_engine *e, int64_t kv_tokens)
{
    size_t T = e->max_T, S = e->max_seqs, Hkv = e->c.n_kv_heads;
    size_t pages_per_seq = (size_t)(kv_tokens / PAGE_SIZE) + 2;
    size_t large = Hkv * (T * e->G / 64 + S + 1);
    size_t small = (size_t)e->att_parts_max + S * Hkv;
    return 3 * 4 * T + S * sizeof(cu_attn_seg) + (small + large) * sizeof(cu_attn_work) +
           S * Hkv * sizeof(cu_attn_combine) + S * pages_per_seq * 4 + T * 4 +
           S * sizeof(cu_sample_job) + 16 * 16;
}

static int alloc_activations(cuda_engine *e, errbuf *err)
{
    const model_config *c = &e->c;
    size_t T = e->max_T, H = c->hidden_size, Q = (size_t)c->n_heads * c->head_dim,
           KV = (size_t)c->n_kv_heads * c->head_dim, I = c->intermediate_size, V = c->vocab_size,
           D = c->head_dim;
    size_t mid = Q + 2 * KV > 2 * I ? Q + 2 * KV : 2 * I;
    size_t qa = I > Q ? I : Q;
    if (dev_alloc(e, (void **)&e->x, T * H * 4, "activations", err) ||
        dev_alloc(e, &e->h, T * H * 2, "activations", err) ||
        dev_alloc(e, &e->mid, T * mid * 2, "activations", err) ||
        dev_alloc(e, &e->qa, T * qa * 2, "activations", err) ||
        dev_alloc(e, &e->att, T * Q * 2, "activations", err) ||
        dev_alloc(e, &e->y, T * H * 2, "activations", err) ||
        dev_alloc(e, &e->hl, LOGIT_ROWS * H * 2, "logits", err) ||
        dev_alloc(e, (void **)&e->logits, LOGIT_ROWS * V * 4, "logits", err) ||
        dev_alloc(e, (void **)&e->gemm_part, e->gemm_part_floats * 4, "workspace", err) ||
        dev_alloc(e, (void **)&e->att_part_o, (size_t)e->att_parts_max * 16 * D * 4, "workspace", err) ||
        dev_alloc(e, (void **)&e->att_part_lse, (size_t)e->att_parts_max * 16 * 4, "workspace", err) ||
        dev_alloc(e, (void **)&e->att_comb_counters, att_counter_bytes(e), "workspace", err) ||
        dev_alloc(e, &e->blas_ws, BLAS_WS_BYTES, "workspace", err) ||
        dev_alloc(e, (void **)&e->samp_d, (size_t)e->max_seqs * 4, "workspace", err))
        return -1;
    if (e->dq_ws_bytes && dev_alloc(e, &e->dq_ws, e->dq_ws_bytes, "workspace", err))
        return -1;
    if (e->embed_on_host) {
        size_t b = T * H * e->embed_elt;
        if (dev_alloc(e, &e->embed_stage_d, b, "embedding rows", err))
            return -1;
        CU_CHECK(cudaHostAlloc(&e->embed_stage_h, b, cudaHostAllocDefault));
    }
    CU_CHECK(cudaHostAlloc((void **)&e->samp_h, (size_t)e->max_seqs * 4, cudaHostAllocDefault));
    CU_CHECK(cu_w4a16_init_scratch(e->gemm_part, e->gemm_part_floats, e->stream));
    /* lm_head always multiplies LOGIT_ROWS rows (batch invariance): keep unused rows finite. */
    CU_CHECK(cudaMemsetAsync(e->hl, 0, LOGIT_ROWS * H * 2, e->stream));
    CU_CHECK(cudaMemsetAsync(e->att_comb_counters, 0, att_counter_bytes(e),
                             e->stream));
    BLAS_CHECK(cublasSetWorkspace(e->blas, e->blas_ws, BLAS_WS_BYTES));
    return 0;
}

static size_t largest_awq_layer(const cuda_engine *e)
{
    size_t mx = 0;
    for (int l = 0; l < e->c.n_layers; l++) {
        const struct cu_linear *ls[] = {&e->layers[l].qkv, &e->layers[l].o, &e->layers[l].gate_up,
                                        &e->layers[l].down};
        for (int i = 0; i < 4; i++)
            if (ls[i]->awq && (size_t)ls[i]->K * ls[i]->N * 2 > mx)
                mx = (size_t)ls[i]->K * ls[i]->N * 2;
    }
    return mx;
}

/* KV pages from what the budget leaves (or exactly opts.max_kv_tokens). */
static int alloc_kv(cuda_engine *e, errbuf *err)
{
    const model_config *c = &e->c;
    size_t elt = e->kv.int8 ? 1 : 2;
    e->page_bytes = (size_t)c->n_layers * 2 * c->n_kv_heads * PAGE_SIZE * c->head_dim * elt;
    e->page_scale_bytes = e->kv.int8 ? (size_t)c->n_layers * 2 * c->n_kv_heads * PAGE_SIZE * 2 : 0;
    size_t per_page = e->page_bytes + e->page_scale_bytes;
    int64_t want_pages;
    size_t meta_fixed = meta_bytes(e, 0);
    size_t avail = e->budget > e->used + RESERVE_BYTES + meta_fixed
                       ? e->budget - e->used - RESERVE_BYTES - meta_fixed
                       : 0;
    /* metadata grows with the page count: per page 4 bytes per sequence slot */
    size_t per_page_all = per_page + (size_t)e->max_seqs * 4;
    int64_t fit_pages = (int64_t)(avail / per_page_all);
    if (e->base.opts.max_kv_tokens > 0) {
        want_pages = (e->base.opts.max_kv_tokens + PAGE_SIZE - 1) / PAGE_SIZE;
        if (want_pages > fit_pages)
            return errorf(err,
                          "GPU memory budget %.2f GiB too small for a KV cache of %lld tokens "
                          "(%.2f GiB): weights take %.2f GiB, activations and workspace for "
                          "max_step_tokens %d take %.2f GiB; lower max_kv_tokens or "
                          "max_step_tokens, use kv_cache int8, or raise gpu_memory",
                          e->budget / GIB, (long long)e->base.opts.max_kv_tokens,
                          want_pages * (double)per_page / GIB, e->info.weights / GIB, e->max_T,
                          (e->info.activations + e->info.workspace) / GIB);
    } else {
        want_pages = fit_pages;
        int64_t min_pages = (e->max_T + PAGE_SIZE - 1) / PAGE_SIZE + e->max_seqs;
        if (want_pages < min_pages)
            return errorf(err,
                          "GPU memory budget %.2f GiB leaves room for only %lld KV tokens: "
                          "weights take %.2f GiB, activations and workspace for max_step_tokens "
                          "%d take %.2f GiB; lower max_step_tokens, use kv_cache int8, or raise "
                          "gpu_memory",
                          e->budget / GIB, (long long)(want_pages * PAGE_SIZE),
                          e->info.weights / GIB, e->max_T,
                          (e->info.activations + e->info.workspace) / GIB);
        /* Positions beyond INT32 slots are not addressable; 2^31 tokens is far beyond need. */
        if (want_pages > (1 << 26))
            want_pages = 1 << 26;
    }
    e->n_pages_total = (int)want_pages;
    size_t before = e->used;
    if (dev_alloc(e, &e->kv.data, (size_t)want_pages * e->page_bytes, "the KV cache", err))
        return -1;
    if (e->kv.int8 &&
        dev_alloc(e, &e->kv.scales, (size_t)want_pages * e->page_scale_bytes, "the KV cache", err))
        return -1;
    e->info.kv_cache = e->used - before;
    e->info.kv_tokens = want_pages * PAGE_SIZE;
    e->kv.n_layers = c->n_layers;
    e->kv.n_pages = (int)want_pages;
    e->kv.n_kv_heads = c->n_kv_heads;
    e->kv.head_dim = c->head_dim;
    e->kv.page_size = PAGE_SIZE;
    e->free_pages = malloc(sizeof *e->free_pages * (size_t)want_pages);
    e->page_ref = calloc((size_t)want_pages, sizeof *e->page_ref);
    if (!e->free_pages || !e->page_ref)
        return errorf(err, "out of host memory");
    /* Hand out low page numbers first (stack top = page 0). */
    for (int64_t i = 0; i < want_pages; i++)
        e->free_pages[i] = (int32_t)(want_pages - 1 - i);
    e->n_free = (int)want_pages;

    e->meta_cap = meta_bytes(e, e->info.kv_tokens);
    if (dev_alloc(e, (void **)&e->meta_d, e->meta_cap, "step metadata", err))
        return -1;
    CU_CHECK(cudaHostAlloc((void **)&e->meta_h, e->meta_cap, cudaHostAllocDefault));
    return 0;
}

/* ---- common open ---- */

static void cu_close(eng *base);
static const struct eng_vtable cuda_vtable;

static int engine_begin(cuda_engine **out, const model_config *cfg, const eng_options *opts,
                        errbuf *err)
{
    *out = NULL;
    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev < 1)
        return errorf(err, "no CUDA device found (backend cuda); use backend cpu");
    if (cfg->head_dim != 64 && cfg->head_dim != 128)
        return errorf(err, "the CUDA engine supports head_dim 64 or 128, not %d", cfg->head_dim);
    if (cfg->n_kv_heads < 1 || cfg->n_heads % cfg->n_kv_heads)
        return errorf(err, "n_heads %d is not a multiple of n_kv_heads %d", cfg->n_heads,
                      cfg->n_kv_heads);
    if (cfg->hidden_size % 8 || cfg->intermediate_size % 8)
        return errorf(err, "the CUDA engine needs hidden_size and intermediate_size divisible by 8");
    cuda_engine *e = calloc(1, sizeof *e);
    if (!e)
        return errorf(err, "out of host memory");
    e->base.vt = &cuda_vtable;
    e->c = *cfg;
    e->base.cfg = cfg;
    e->base.opts = *opts;
    e->base.opts.backend = ENG_BACKEND_CUDA;
    e->base.backend_name = "cuda";
    e->kv.int8 = opts->kv_type == ENG_KV_INT8;
    e->max_seqs = opts->max_seqs > 0 ? opts->max_seqs : 64;
    e->max_T = opts->max_step_tokens > 0 ? opts->max_step_tokens : 4096;
    if (e->max_T < 16)
        e->max_T = 16;
    e->G = cfg->n_heads / cfg->n_kv_heads;
    e->att_rows = cu_attn_prefill_rows(cfg->head_dim, e->kv.int8);
    e->att_slots[0] = cu_attn_dec_slots(cfg->head_dim, e->kv.int8, 8);
    e->att_slots[1] = cu_attn_dec_slots(cfg->head_dim, e->kv.int8, 16);
    /* QWEN3_BATCH_ATT_SPLIT_KEYS: least keys per decode split (measurements) */
    const char *sk = getenv("QWEN3_BATCH_ATT_SPLIT_KEYS");
    const int skv = sk ? atoi(sk) : 0;
    e->att_min_split = skv >= 64 && skv <= 8192 ? skv / 64 * 64 : ATT_MIN_SPLIT_KEYS;
    /* QWEN3_BATCH_ATT_SPLITS=keys: the splits by a sequence's own keys
     * (tests, measurements) */
    const char *sm = getenv("QWEN3_BATCH_ATT_SPLITS");
    e->att_wave = !(sm && !strcmp(sm, "keys"));
    const char *dq = getenv("QWEN3_BATCH_DEQUANT_MIN_M");
    e->dequant_min_m = dq && atoi(dq) > 0 ? atoi(dq) : 512;
    const char *ng = getenv("QWEN3_BATCH_NO_GRAPHS");
    e->graphs_on = !(ng && *ng == '1');
    *out = e;

    CU_CHECK(cudaGetDevice(&e->dev));
    struct cudaDeviceProp prop;
    CU_CHECK(cudaGetDeviceProperties(&prop, e->dev));
    if (prop.major < 8)
        return errorf(err, "GPU %s (sm_%d%d) is too old: the CUDA engine needs sm_80 or newer",
                      prop.name, prop.major, prop.minor);
    e->n_sm = prop.multiProcessorCount;
    snprintf(e->info.device, sizeof e->info.device, "%.127s", prop.name);
    e->info.sm_major = prop.major;
    e->info.sm_minor = prop.minor;
    e->info.n_sm = e->n_sm;
    size_t free_b = 0, total_b = 0;
    CU_CHECK(cudaMemGetInfo(&free_b, &total_b));
    if (opts->gpu_memory_budget > 0) {
        e->budget = opts->gpu_memory_budget;
        if (e->budget > free_b)
            return errorf(err, "gpu_memory %.2f GiB is more than the %.2f GiB free on %s",
                          e->budget / GIB, free_b / GIB, prop.name);
    } else {
        e->budget = free_b > (768u << 20) ? free_b - (768u << 20) : free_b / 2;
    }
    e->info.budget = e->budget;
    CU_CHECK(cudaStreamCreateWithFlags(&e->stream, cudaStreamNonBlocking));
    BLAS_CHECK(cublasCreate(&e->blas));
    e->blas_ok = 1;
    BLAS_CHECK(cublasSetStream(e->blas, e->stream));
    BLAS_CHECK(cublasSetMathMode(e->blas, CUBLAS_DEFAULT_MATH));

    e->seqs = calloc((size_t)e->max_seqs, sizeof *e->seqs);
    e->layers = calloc((size_t)cfg->n_layers, sizeof *e->layers);
    e->segs = malloc(sizeof *e->segs * (size_t)(e->max_seqs + 1));
    e->out_row = malloc(sizeof(int) * (size_t)e->max_seqs);
    e->samp_out = malloc(sizeof(int) * (size_t)e->max_seqs);
    if (!e->seqs || !e->layers || !e->segs || !e->out_row || !e->samp_out)
        return errorf(err, "out of host memory");

    float *inv = malloc(sizeof *inv * (size_t)(cfg->head_dim / 2));
    if (!inv)
        return errorf(err, "out of host memory");
    model_rope_inv_freq(cfg, inv, &e->attn_factor);
    int rc = dev_alloc(e, (void **)&e->inv_freq, sizeof *inv * (size_t)(cfg->head_dim / 2),
                       "rope tables", err);
    if (!rc && (cudaMemcpyAsync(e->inv_freq, inv, sizeof *inv * (size_t)(cfg->head_dim / 2),
                                cudaMemcpyHostToDevice, e->stream) != cudaSuccess ||
                cudaStreamSynchronize(e->stream) != cudaSuccess))
        rc = errorf(err, "uploading rope tables failed");
    free(inv);
    return rc;
}

/* Budget check before uploading anything: weights + activations + work. */
static int check_plan(cuda_engine *e, size_t weights, errbuf *err)
{
    e->info.weights = weights;
    e->info.activations = act_bytes(&e->c, e->max_T);
    plan_gemm_part(e);
    e->info.workspace = work_bytes(e) + meta_bytes(e, 0) + RESERVE_BYTES;
    if (e->embed_on_host)
        e->info.activations += (size_t)e->max_T * e->c.hidden_size * e->embed_elt;
    size_t need = weights + e->info.activations + e->info.workspace + e->used;
    if (need > e->budget)
        return errorf(err,
                      "GPU memory budget %.2f GiB is too small: weights need %.2f GiB, "
                      "activations for max_step_tokens %d need %.2f GiB, workspace %.2f GiB, "
                      "before any KV cache; lower max_step_tokens or raise gpu_memory",
                      e->budget / GIB, weights / GIB, e->max_T, e->info.activations / GIB,
                      e->info.workspace / GIB);
    return 0;
}

static size_t dq_ws_for(const cuda_engine *e, size_t largest_layer_f16)
{
    if (e->max_T < e->dequant_min_m || largest_layer_f16 == 0)
        return 0;
    return largest_layer_f16 < DEQUANT_WS_MAX ? largest_layer_f16 : DEQUANT_WS_MAX;
}

static int engine_finish(cuda_engine *e, errbuf *err)
{
    if (alloc_activations(e, err) || alloc_kv(e, err))
        return -1;
    e->info.page_size = PAGE_SIZE;
    e->info.max_step_tokens = e->max_T;
    e->info.embed_on_host = e->embed_on_host;
    e->base.opts.max_seqs = e->max_seqs;
    e->base.opts.max_step_tokens = e->max_T;
    e->base.opts.max_kv_tokens = e->info.kv_tokens;
    e->base.opts.gpu_memory_budget = e->budget;
    CU_CHECK(cudaStreamSynchronize(e->stream));
    return 0;
}

int cuda_engine_open(eng **out, const model *m, const eng_options *opts, errbuf *err)
{
    *out = NULL;
    cuda_engine *e;
    const model_config *c = &m->cfg;
    if (engine_begin(&e, c, opts, err)) {
        if (e)
            cu_close(&e->base);
        return -1;
    }
    e->m = m;
    e->base.cfg = &m->cfg;
    int H = c->hidden_size, Q = c->n_heads * c->head_dim, KV = c->n_kv_heads * c->head_dim,
        I = c->intermediate_size, V = c->vocab_size;

    /* Plan: sizes of every fused linear, before allocating any. */
    size_t weights = (size_t)V * H * 2 + (size_t)H * 4 * (2 * c->n_layers + 1) +
                     (size_t)c->head_dim * 8 * c->n_layers;
    size_t largest_f16 = 0;
    for (int l = 0; l < c->n_layers; l++) {
        const model_layer *L = &m->layers[l];
        const model_linear *qkv[] = {&L->q, &L->k, &L->v}, *o[] = {&L->o},
                           *gu[] = {&L->gate, &L->up}, *dn[] = {&L->down};
        struct {
            const model_linear *const *p;
            int n, K, N;
        } fl[] = {{qkv, 3, H, Q + 2 * KV}, {o, 1, Q, H}, {gu, 2, H, 2 * I}, {dn, 1, I, H}};
        for (int i = 0; i < 4; i++) {
            int awq = awq_fusable(fl[i].p, fl[i].n, fl[i].K);
            weights += linear_bytes(awq, fl[i].K, fl[i].N, awq ? fl[i].p[0]->group_size : 0);
            if (awq && (size_t)fl[i].K * fl[i].N * 2 > largest_f16)
                largest_f16 = (size_t)fl[i].K * fl[i].N * 2;
        }
    }
    e->embed_on_host = !c->tie_word_embeddings;
    e->embed_dtype = (int)m->embed.dtype;
    e->embed_elt = tensor_elt(m->embed.dtype);
    e->dq_ws_bytes = dq_ws_for(e, largest_f16);
    size_t tmp_bytes = max_tmp_bytes(m);
    if (check_plan(e, weights + tmp_bytes, err)) {
        cu_close(&e->base);
        return -1;
    }

    void *tmp = NULL;
    int rc = dev_alloc(e, &tmp, tmp_bytes, "weight staging", err);
    char what[96];
    for (int l = 0; !rc && l < c->n_layers; l++) {
        const model_layer *ml = &m->layers[l];
        struct cu_layer *L = &e->layers[l];
        const model_linear *qkv[] = {&ml->q, &ml->k, &ml->v}, *o[] = {&ml->o},
                           *gu[] = {&ml->gate, &ml->up}, *dn[] = {&ml->down};
        snprintf(what, sizeof what, "layer %d weights", l);
        rc = upload_f32(e, &ml->attn_norm, H, &L->attn_norm, what, err) ||
             upload_f32(e, &ml->mlp_norm, H, &L->mlp_norm, what, err) ||
             upload_f32(e, &ml->q_norm, c->head_dim, &L->q_norm, what, err) ||
             upload_f32(e, &ml->k_norm, c->head_dim, &L->k_norm, what, err) ||
             load_linear(e, &L->qkv, qkv, 3, tmp, what, err) ||
             load_linear(e, &L->o, o, 1, tmp, what, err) ||
             load_linear(e, &L->gate_up, gu, 2, tmp, what, err) ||
             load_linear(e, &L->down, dn, 1, tmp, what, err);
    }
    if (!rc)
        rc = upload_f32(e, &m->final_norm, H, &e->final_norm, "final norm", err);
    if (!rc)
        rc = dev_alloc(e, &e->lm_head, (size_t)V * H * 2, "lm_head", err);
    if (!rc)
        rc = upload_f16(e, &m->lm_head, tmp, e->lm_head, (size_t)V * H, err);
    dev_free(e, tmp, tmp_bytes);
    if (!rc && c->tie_word_embeddings)
        e->embed_dev = e->lm_head;
    if (rc || engine_finish(e, err)) {
        cu_close(&e->base);
        return -1;
    }
    *out = &e->base;
    return 0;
}

int cuda_engine_open_synthetic(eng **out, const model_config *cfg, const eng_options *opts,
                               uint64_t seed, errbuf *err)
{
    *out = NULL;
    cuda_engine *e;
    if (engine_begin(&e, cfg, opts, err)) {
        if (e)
            cu_close(&e->base);
        return -1;
    }
    const model_config *c = cfg;
    e->synth_seed = seed;
    int H = c->hidden_size, Q = c->n_heads * c->head_dim, KV = c->n_kv_heads * c->head_dim,
        I = c->intermediate_size, V = c->vocab_size, D = c->head_dim;
    int group = c->awq_group_size > 0 ? c->awq_group_size : 128;
    if (H % 64 || Q % 64 || I % 64 || (Q + 2 * KV) % 16 || H % group || I % group || Q % group) {
        cu_close(&e->base);
        return errorf(err, "synthetic model: shapes must be multiples of 64 and of the group size");
    }
    int Ks[4] = {H, Q, H, I}, Ns[4] = {Q + 2 * KV, H, 2 * I, H};
    size_t weights = (size_t)V * H * 2 + (size_t)H * 4 * (2 * c->n_layers + 1) +
                     (size_t)D * 8 * c->n_layers;
    size_t largest = 0;
    for (int i = 0; i < 4; i++) {
        weights += c->n_layers * linear_bytes(1, Ks[i], Ns[i], group);
        if ((size_t)Ks[i] * Ns[i] * 2 > largest)
            largest = (size_t)Ks[i] * Ns[i] * 2;
    }
    e->embed_on_host = 0;
    e->dq_ws_bytes = dq_ws_for(e, largest);
    if (check_plan(e, weights, err)) {
        cu_close(&e->base);
        return -1;
    }
    int rc = 0;
    char what[96];
    uint64_t s = seed * 0x100000001b3ull + 1;
    for (int l = 0; !rc && l < c->n_layers; l++) {
        struct cu_layer *L = &e->layers[l];
        struct cu_linear *ls[4] = {&L->qkv, &L->o, &L->gate_up, &L->down};
        snprintf(what, sizeof what, "layer %d weights", l);
        if (dev_alloc(e, (void **)&L->attn_norm, (size_t)H * 4, what, err) ||
            dev_alloc(e, (void **)&L->mlp_norm, (size_t)H * 4, what, err) ||
            dev_alloc(e, (void **)&L->q_norm, (size_t)D * 4, what, err) ||
            dev_alloc(e, (void **)&L->k_norm, (size_t)D * 4, what, err)) {
            rc = -1;
            break;
        }
        if (cu_fill_f32(L->attn_norm, H, 1.0f, e->stream) || cu_fill_f32(L->mlp_norm, H, 1.0f, e->stream) ||
            cu_fill_f32(L->q_norm, D, 1.0f, e->stream) || cu_fill_f32(L->k_norm, D, 1.0f, e->stream)) {
            rc = errorf(err, "synthetic model: fill failed");
            break;
        }
        for (int i = 0; i < 4 && !rc; i++) {
            struct cu_linear *x = ls[i];
            x->awq = 1;
            x->K = Ks[i];
            x->N = Ns[i];
            x->group = group;
            if (dev_alloc(e, &x->qw, cu_w4_qw_bytes(x->K, x->N), what, err) ||
                dev_alloc(e, &x->sz, cu_w4_sz_bytes(x->K, x->N, group), what, err)) {
                rc = -1;
                break;
            }
            /* Scale so that a product keeps unit variance: var(q - 8) ~ 21.25. */
            float scale = 1.0f / sqrtf(21.25f * (float)x->K);
            cudaError_t ce = cu_awq_synth(x->qw, x->sz, x->K, x->N, group, s++, scale, e->stream);
            if (ce != cudaSuccess)
                rc = errorf(err, "synthetic weights: %s", cudaGetErrorString(ce));
        }
    }
    if (!rc)
        rc = dev_alloc(e, (void **)&e->final_norm, (size_t)H * 4, "final norm", err) ||
             dev_alloc(e, &e->lm_head, (size_t)V * H * 2, "lm_head", err);
    if (!rc && (cu_fill_f32(e->final_norm, H, 1.0f, e->stream) != cudaSuccess ||
                cu_fill_random_f16(e->lm_head, (size_t)V * H, 1.0f / sqrtf((float)H) * 1.7f, s++,
                                   e->stream) != cudaSuccess))
        rc = errorf(err, "synthetic model: fill failed");
    if (rc || engine_finish(e, err)) {
        cu_close(&e->base);
        return -1;
    }
    *out = &e->base;
    return 0;
}

int cuda_engine_available(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return n > 0;
}

int cuda_engine_get_info(const eng *base, cuda_engine_info *info)
{
    if (!base || base->vt != &cuda_vtable)
        return -1;
    *info = ((const cuda_engine *)base)->info;
    return 0;
}

/* ---- sequences ---- */

static void seq_clear(cuda_engine *e, struct cu_seq *s)
{
    for (int i = 0; i < s->n_pages; i++) {
        int p = s->pages[i];
        if (--e->page_ref[p] == 0)
            e->free_pages[e->n_free++] = p;
    }
    free(s->pages);
    free(s->uniq);
    free(s->seen);
    memset(s, 0, sizeof *s);
}

static int cu_seq_add(eng *base, const sample_params *sp, int *seq, errbuf *err)
{
    cuda_engine *e = (cuda_engine *)base;
    for (int i = 0; i < e->max_seqs; i++) {
        struct cu_seq *s = &e->seqs[i];
        if (s->used)
            continue;
        memset(s, 0, sizeof *s);
        s->used = 1;
        s->sp = *sp;
        *seq = i;
        return 0;
    }
    return errorf(err, "all %d sequence slots are in use", e->max_seqs);
}

static void cu_seq_release(eng *base, int seq)
{
    cuda_engine *e = (cuda_engine *)base;
    if (seq < 0 || seq >= e->max_seqs || !e->seqs[seq].used)
        return;
    seq_clear(e, &e->seqs[seq]);
}

static int seq_push_page(struct cu_seq *s, int32_t p)
{
    if (s->n_pages == s->cap_pages) {
        int cap = s->cap_pages ? s->cap_pages * 2 : 16;
        int32_t *np = realloc(s->pages, sizeof *np * (size_t)cap);
        if (!np)
            return -1;
        s->pages = np;
        s->cap_pages = cap;
    }
    s->pages[s->n_pages++] = p;
    return 0;
}

static int cu_seq_fork(eng *base, int src, int n_prefix, const sample_params *sp, int *seq,
                       errbuf *err)
{
    cuda_engine *e = (cuda_engine *)base;
    if (src < 0 || src >= e->max_seqs || !e->seqs[src].used || n_prefix < 0 ||
        n_prefix > e->seqs[src].n)
        return errorf(err, "fork: sequence %d does not hold %d tokens", src, n_prefix);
    int full = n_prefix / PAGE_SIZE, partial = n_prefix % PAGE_SIZE != 0;
    if (partial && e->n_free < 1)
        return errorf(err, "KV cache full: no free page for the fork of sequence %d", src);
    if (cu_seq_add(base, sp, seq, err))
        return -1;
    struct cu_seq *s = &e->seqs[*seq], *from = &e->seqs[src];
    for (int i = 0; i < full; i++) {
        if (seq_push_page(s, from->pages[i])) {
            seq_clear(e, s);
            return errorf(err, "out of host memory");
        }
        e->page_ref[from->pages[i]]++;
    }
    if (partial) {
        /* The page holding the prefix's tail is written by both: copy it. */
        int32_t p = e->free_pages[--e->n_free], q = from->pages[full];
        e->page_ref[p] = 1;
        if (seq_push_page(s, p)) {
            e->page_ref[p] = 0;
            e->free_pages[e->n_free++] = p;
            seq_clear(e, s);
            return errorf(err, "out of host memory");
        }
        /* a page is n_layers slabs, one per layer region (cu_kv) */
        const size_t L = (size_t)e->c.n_layers, pb = e->page_bytes / L,
                     sb = e->page_scale_bytes / L;
        const size_t np = (size_t)e->kv.n_pages;
        cudaError_t ce = cudaMemcpy2DAsync((char *)e->kv.data + (size_t)p * pb, np * pb,
                                           (char *)e->kv.data + (size_t)q * pb, np * pb, pb, L,
                                           cudaMemcpyDeviceToDevice, e->stream);
        if (ce == cudaSuccess && e->kv.int8)
            ce = cudaMemcpy2DAsync((char *)e->kv.scales + (size_t)p * sb, np * sb,
                                   (char *)e->kv.scales + (size_t)q * sb, np * sb, sb, L,
                                   cudaMemcpyDeviceToDevice, e->stream);
        if (ce != cudaSuccess) {
            seq_clear(e, s);
            return errorf(err, "fork: copying a KV page: %s", cudaGetErrorString(ce));
        }
    }
    s->n = n_prefix;
    return 0;
}

static int64_t cu_kv_free(const eng *base)
{
    const cuda_engine *e = (const cuda_engine *)base;
    return (int64_t)e->n_free * PAGE_SIZE;
}

/* ---- the forward pass ---- */

static int linear(cuda_engine *e, const struct cu_linear *L, const void *x, int M, void *y,
                  errbuf *err)
{
    const float one = 1.0f, zero = 0.0f;
    if (M <= 0)
        return 0;
    if (L->awq && (M < e->dequant_min_m || !e->dq_ws)) {
        CU_CHECK(cu_w4a16_gemm(x, M, L->K, L->qw, L->sz, L->K, L->N, L->group, y, L->N,
                               e->gemm_part, e->gemm_part_floats, e->n_sm, e->stream));
        return 0;
    }
    if (!L->awq) {
        BLAS_CHECK(cublasGemmEx(e->blas, CUBLAS_OP_T, CUBLAS_OP_N, L->N, M, L->K, &one, L->w16,
                                CUDA_R_16F, L->K, x, CUDA_R_16F, L->K, &zero, y, CUDA_R_16F, L->N,
                                CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        return 0;
    }
    /* Large M: dequantize column blocks to fp16 and let cuBLAS multiply. */
    int chunk = (int)(e->dq_ws_bytes / ((size_t)L->K * 2)) / 16 * 16;
    if (chunk < 16)
        return errorf(err, "dequantization workspace too small");
    for (int n0 = 0; n0 < L->N; n0 += chunk) {
        int nc = L->N - n0 < chunk ? L->N - n0 : chunk;
        CU_CHECK(cu_w4a16_dequant(L->qw, L->sz, L->K, L->N, L->group, n0, nc, e->dq_ws, e->stream));
        BLAS_CHECK(cublasGemmEx(e->blas, CUBLAS_OP_T, CUBLAS_OP_N, nc, M, L->K, &one, e->dq_ws,
                                CUDA_R_16F, L->K, x, CUDA_R_16F, L->K, &zero,
                                (char *)y + (size_t)n0 * 2, CUDA_R_16F, L->N, CUBLAS_COMPUTE_32F,
                                CUBLAS_GEMM_DEFAULT));
    }
    return 0;
}

/* Keys per decode split of a sequence with `keys` keys, in a step whose
 * decode tiles have sum_keys keys over all their sequences and whose decode
 * kernel holds wave_per_head blocks per KV head at once. A decode block
 * takes one (sequence, KV head, split), so splits in proportion to keys
 * give blocks of about equal work that fill about one wave: on the H100,
 * one wave of long blocks was faster than several of short ones, whose
 * start and merge cost as much as several tiles (docs/PERF.md, "Where the
 * time goes"). At least e->att_min_split keys, at most ATT_MAX_SPLITS
 * splits. The splits change a row's sums with the batch, as the int4
 * products' kernels do. */
static int att_split_keys(const cuda_engine *e, int keys, int64_t sum_keys, int wave_per_head)
{
    int sp = ATT_MAX_SPLITS; /* by keys only: the most splits of at least att_min_split */
    if (e->att_wave) {
        const int64_t w = (int64_t)keys * wave_per_head / sum_keys;
        sp = w < 1 ? 1 : w < ATT_MAX_SPLITS ? (int)w : ATT_MAX_SPLITS;
    }
    int per = (keys + sp - 1) / sp;
    per = (per + 63) / 64 * 64;
    return per < e->att_min_split ? e->att_min_split : per;
}

static void prof(cuda_engine *e, int cat)
{
    if (!e->prof_on || e->prof_n >= PROF_CAP)
        return;
    if (cudaEventRecord(e->prof_ev[e->prof_n], e->stream) == cudaSuccess)
        e->prof_cat[e->prof_n++] = (unsigned char)cat;
}

static void prof_flush(cuda_engine *e, int decode, int T)
{
    if (!e->prof_on)
        return;
    if (e->prof_n >= 2 && cudaEventSynchronize(e->prof_ev[e->prof_n - 1]) == cudaSuccess) {
        for (int i = 0; i + 1 < e->prof_n; i++) {
            float ms = 0;
            if (cudaEventElapsedTime(&ms, e->prof_ev[i], e->prof_ev[i + 1]) == cudaSuccess)
                e->prof_ms[decode][e->prof_cat[i]] += ms;
        }
        e->prof_passes[decode]++;
        e->prof_tokens[decode] += T;
    }
    e->prof_n = 0;
}

int cuda_engine_set_profiling(eng *base, int on)
{
    if (!base || base->vt != &cuda_vtable)
        return -1;
    cuda_engine *e = (cuda_engine *)base;
    if (on && !e->prof_on) {
        for (int i = 0; i < PROF_CAP; i++)
            if (cudaEventCreate(&e->prof_ev[i]) != cudaSuccess)
                return -1;
        e->prof_on = 1;
    }
    memset(e->prof_ms, 0, sizeof e->prof_ms);
    memset(e->prof_passes, 0, sizeof e->prof_passes);
    memset(e->prof_tokens, 0, sizeof e->prof_tokens);
    return 0;
}

int cuda_engine_profile_report(const eng *base, char *buf, size_t cap)
{
    if (!base || base->vt != &cuda_vtable || cap == 0)
        return -1;
    const cuda_engine *e = (const cuda_engine *)base;
    size_t off = 0;
    buf[0] = 0;
    for (int d = 0; d < 2; d++) {
        if (!e->prof_passes[d])
            continue;
        double total = 0;
        for (int c = 0; c < P_N; c++)
            total += e->prof_ms[d][c];
        off += (size_t)snprintf(buf + off, off < cap ? cap - off : 0,
                                "%s passes: %ld, tokens %ld, GPU time %.3f ms per pass\n",
                                d ? "decode (T <= 64)" : "prefill/mixed", e->prof_passes[d],
                                e->prof_tokens[d], total / e->prof_passes[d]);
        for (int c = 0; c < P_N; c++)
            if (e->prof_ms[d][c] > 0)
                off += (size_t)snprintf(buf + off, off < cap ? cap - off : 0,
                                        "  %-20s %9.3f ms per pass  %5.1f%%\n", prof_name[c],
                                        e->prof_ms[d][c] / e->prof_passes[d],
                                        100.0 * e->prof_ms[d][c] / total);
    }
    return 0;
}

static int ensure_pen(cuda_engine *e, size_t n, errbuf *err)
{
    if (n <= e->pen_cap)
        return 0;
    size_t cap = e->pen_cap ? e->pen_cap : 4096;
    while (cap < n)
        cap *= 2;
    if (e->pen_d)
        dev_free(e, e->pen_d, e->pen_cap * 4);
    if (e->pen_h)
        cudaFreeHost(e->pen_h);
    e->pen_d = NULL;
    e->pen_h = NULL;
    e->pen_cap = 0;
    /* The penalty lists are small next to everything else; let them past the plan. */
    size_t saved = e->budget;
    e->budget = (size_t)-1;
    int rc = dev_alloc(e, (void **)&e->pen_d, cap * 4, "penalty lists", err);
    e->budget = saved;
    if (rc)
        return -1;
    CU_CHECK(cudaHostAlloc((void **)&e->pen_h, cap * 4, cudaHostAllocDefault));
    e->pen_cap = cap;
    return 0;
}

/*
 * The per-pass metadata sits at fixed offsets (capacities, not counts), so
 * that kernel arguments are the same pointers in every pass and a decode
 * pass can be replayed from a CUDA graph. The page lists come last: their
 * length varies most, and only the used part of each array is copied.
 */
struct pass {
    int T, n_segs;
    int32_t *tok, *pos, *slot, *lrows, *pages;
    cu_attn_seg *as;
    cu_attn_work *ws, *wl;
    cu_attn_combine *cb;
    cu_sample_job *jobs;
    int n_small, n_large, n_comb, n_lrows, n_jobs, n_pages;
    int small_grid; /* launched decode blocks (graphs: padded to capacity) */
    int small_rows; /* the most rows of a small tile (<= 16) */
    size_t pen_n;
    int *dest;     /* [n_lrows] logits row of the caller's buffer, or -1 */
    int *job_lrow; /* [n_jobs] */
};

static void pass_layout(const cuda_engine *e, struct pass *p)
{
    char *h = e->meta_h;
    size_t T = e->max_T, S = e->max_seqs, Hkv = e->c.n_kv_heads, off = 0;
#define TAKE(ptr, n)                                                                              \
    do {                                                                                          \
        off = (off + 15) & ~(size_t)15;                                                           \
        (ptr) = (void *)(h + off);                                                                \
        off += sizeof *(ptr) * (size_t)(n);                                                       \
    } while (0)
    TAKE(p->tok, T);
    TAKE(p->pos, T);
    TAKE(p->slot, T);
    TAKE(p->lrows, T);
    TAKE(p->as, S);
    TAKE(p->jobs, S);
    TAKE(p->cb, S * Hkv);
    TAKE(p->ws, (size_t)e->att_parts_max + S * Hkv);
    TAKE(p->wl, Hkv * (T * e->G / 64 + S + 1));
    TAKE(p->pages, 1);
#undef TAKE
}

#define DEV(e, p) ((void *)((e)->meta_d + ((char *)(p) - (e)->meta_h)))

static int work_longer_first(const void *a, const void *b)
{
    const cu_attn_work *x = a, *y = b;
    int kx = x->key_end - x->key_begin, ky = y->key_end - y->key_begin;
    if (kx != ky)
        return kx > ky ? -1 : 1;
    /* ties in a fixed order: the same pass launches the same grid */
    if (x->seg != y->seg)
        return x->seg < y->seg ? -1 : 1;
    if (x->row0 != y->row0)
        return x->row0 < y->row0 ? -1 : 1;
    return x->kv_head - y->kv_head;
}

/* Host side of a pass: positions, slots, attention work, logits rows, jobs. */
static int pass_build(cuda_engine *e, const eng_item *items, const struct seg *segs, int n_segs,
                      int padded, struct pass *p, errbuf *err)
{
    const model_config *c = &e->c;
    const int Hkv = c->n_kv_heads, G = e->G, V = c->vocab_size;
    pass_layout(e, p);
    p->n_segs = n_segs;
    p->T = 0;
    for (int i = 0; i < n_segs; i++)
        p->T += segs[i].count;
    size_t pages_room = (e->meta_cap - (size_t)((char *)p->pages - e->meta_h)) / 4;
    int pl = 0;
    p->n_small = p->n_large = p->n_comb = p->small_rows = 0;
    for (int i = 0, t = 0; i < n_segs; i++) {
        const struct seg *sg = &segs[i];
        const eng_item *it = &items[sg->item];
        const struct cu_seq *s = &e->seqs[it->seq];
        int pos0 = s->n + sg->t0;
        int np = (pos0 + sg->count + PAGE_SIZE - 1) / PAGE_SIZE;
        if ((size_t)(pl + np) > pages_room)
            return errorf(err, "step metadata overflow (page lists)");
        p->as[i] = (cu_attn_seg){t, sg->count, pos0, pl};
        memcpy(p->pages + pl, s->pages, sizeof *p->pages * (size_t)np);
        pl += np;
        for (int k = 0; k < sg->count; k++, t++) {
            int q = pos0 + k;
            p->tok[t] = it->tokens[sg->t0 + k];
            p->pos[t] = q;
            p->slot[t] = s->pages[q / PAGE_SIZE] * PAGE_SIZE + q % PAGE_SIZE;
        }
    }
    p->n_pages = pl;
    /* Attention: small tiles (<= 16 rows: decode) split their keys
     * (att_split_keys); large tiles (prefill) take e->att_rows rows (64 or
     * 128), later tiles first (they have the most keys). */
    int64_t sum_keys = 0;
    for (int i = 0; i < n_segs; i++)
        if (p->as[i].n_tok * G <= 16) {
            sum_keys += p->as[i].pos0 + p->as[i].n_tok;
            p->small_rows = p->as[i].n_tok * G > p->small_rows ? p->as[i].n_tok * G : p->small_rows;
        }
    const int wave_per_head = e->att_slots[p->small_rows > 8] / Hkv;
    int part = 0;
    for (int i = 0; i < n_segs; i++) {
        const cu_attn_seg *a = &p->as[i];
        int rows = a->n_tok * G;
        if (rows <= 16) {
            const int keys = a->pos0 + a->n_tok;
            const int per = att_split_keys(e, keys, sum_keys, wave_per_head);
            const int sp = (keys + per - 1) / per;
            for (int h = 0; h < Hkv; h++) {
                const int cb = sp > 1 ? p->n_comb++ : -1;
                if (sp > 1)
                    p->cb[cb] = (cu_attn_combine){i, h, 0, sp, part};
                for (int k = 0; k < sp; k++) {
                    int kb = k * per, ke = kb + per < keys ? kb + per : keys;
                    p->ws[p->n_small++] = (cu_attn_work){i, h, 0, kb, ke, sp > 1 ? part++ : -1, cb};
                }
            }
        } else {
            const int R = e->att_rows;
            for (int row0 = (rows - 1) / R * R; row0 >= 0; row0 -= R) {
                int last = (row0 + R - 1) / G < a->n_tok - 1 ? (row0 + R - 1) / G : a->n_tok - 1;
                for (int h = 0; h < Hkv; h++)
                    p->wl[p->n_large++] = (cu_attn_work){i, h, row0, 0, a->pos0 + last + 1, -1, -1};
            }
        }
    }
    /* Longest first over all segments, so that the blocks with the most keys
     * do not start last and leave SMs idle at the end of a mixed pass. */
    if (n_segs > 1)
        qsort(p->wl, (size_t)p->n_large, sizeof *p->wl, work_longer_first);
    p->small_grid = p->n_small;
    if (padded) {
        /* A graph launches fixed grids; the extra blocks find seg -1 and leave. */
        p->small_grid = n_segs * Hkv * ATT_MAX_SPLITS;
        for (int k = p->n_small; k < p->small_grid; k++)
            p->ws[k] = (cu_attn_work){-1, 0, 0, 0, 0, -1, -1};
    }

    /* Rows that need logits, in item order, and the sampling jobs. */
    p->n_lrows = p->n_jobs = 0;
    p->pen_n = 0;
    for (int i = 0; i < n_segs; i++) {
        const eng_item *it = &items[segs[i].item];
        const struct cu_seq *s = &e->seqs[it->seq];
        if (it->sample && segs[i].last && s->sp.temperature > 0 && s->sp.presence_penalty != 0)
            p->pen_n += (size_t)s->n_uniq;
    }
    if (ensure_pen(e, p->pen_n + 1, err))
        return -1;
    p->dest = malloc(sizeof *p->dest * (size_t)(p->T + 1));
    p->job_lrow = malloc(sizeof *p->job_lrow * (size_t)(n_segs + 1));
    if (!p->dest || !p->job_lrow)
        return errorf(err, "out of host memory");
    size_t n_pen = 0;
    for (int i = 0, t0 = 0; i < n_segs; t0 += segs[i].count, i++) {
        const struct seg *sg = &segs[i];
        const eng_item *it = &items[sg->item];
        const struct cu_seq *s = &e->seqs[it->seq];
        if (it->logits == ENG_LOGITS_ALL) {
            for (int k = 0; k < sg->count; k++) {
                p->lrows[p->n_lrows] = t0 + k;
                p->dest[p->n_lrows++] = e->out_row[sg->item] + sg->t0 + k;
            }
        } else if (sg->last && (it->logits == ENG_LOGITS_LAST || it->sample)) {
            p->lrows[p->n_lrows] = t0 + sg->count - 1;
            p->dest[p->n_lrows++] = it->logits == ENG_LOGITS_LAST ? e->out_row[sg->item] : -1;
        }
        if (sg->last && it->sample) {
            cu_sample_job *j = &p->jobs[p->n_jobs];
            p->job_lrow[p->n_jobs++] = p->n_lrows - 1;
            memset(j, 0, sizeof *j);
            j->row = (p->n_lrows - 1) % LOGIT_ROWS;
            j->out = e->samp_out[sg->item];
            j->temperature = s->sp.temperature;
            j->top_k = s->sp.top_k;
            j->top_p = s->sp.top_p;
            j->min_p = s->sp.min_p;
            j->seed = s->sp.seed;
            j->counter = (uint64_t)s->n_sampled;
            int nv = e->base.opts.n_valid_vocab;
            j->n_valid = nv > 0 && nv < V ? nv : V;
            if (s->sp.temperature > 0 && s->sp.presence_penalty != 0) {
                j->presence_penalty = s->sp.presence_penalty;
                j->pen_begin = (int)n_pen;
                j->pen_count = s->n_uniq;
                memcpy(e->pen_h + n_pen, s->uniq, sizeof(int32_t) * (size_t)s->n_uniq);
                n_pen += (size_t)s->n_uniq;
            }
        }
    }
    return 0;
}

static void pass_free(struct pass *p)
{
    free(p->dest);
    free(p->job_lrow);
    p->dest = p->job_lrow = NULL;
}

/* Copies the used part of each metadata array. */
static int pass_upload(cuda_engine *e, const struct pass *p, errbuf *err)
{
    struct {
        const void *h;
        size_t n;
    } parts[] = {{p->tok, 4 * (size_t)p->T},
                 {p->pos, 4 * (size_t)p->T},
                 {p->slot, 4 * (size_t)p->T},
                 {p->lrows, 4 * (size_t)p->n_lrows},
                 {p->as, sizeof *p->as * (size_t)p->n_segs},
                 {p->jobs, sizeof *p->jobs * (size_t)p->n_jobs},
                 {p->cb, sizeof *p->cb * (size_t)p->n_comb},
                 {p->ws, sizeof *p->ws * (size_t)p->small_grid},
                 {p->wl, sizeof *p->wl * (size_t)p->n_large},
                 {p->pages, 4 * (size_t)p->n_pages}};
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++)
        if (parts[i].n)
            CU_CHECK(cudaMemcpyAsync(DEV(e, parts[i].h), parts[i].h, parts[i].n,
                                     cudaMemcpyHostToDevice, e->stream));
    if (p->pen_n)
        CU_CHECK(cudaMemcpyAsync(e->pen_d, e->pen_h, p->pen_n * 4, cudaMemcpyHostToDevice,
                                 e->stream));
    return 0;
}

/* Everything a pass puts on the GPU after its metadata: embeddings, the
 * layers, final norm, lm_head, logits out, sampling. Graph-capturable when
 * no logits go to the caller. */
static int pass_run(cuda_engine *e, const struct pass *p, float *logits_out, errbuf *err)
{
    const model_config *c = &e->c;
    const int H = c->hidden_size, V = c->vocab_size, Hkv = c->n_kv_heads, T = p->T;
    const int32_t *d_tok = DEV(e, p->tok), *d_pos = DEV(e, p->pos), *d_slot = DEV(e, p->slot);

    prof(e, P_EMBED);
    if (e->embed_dev) {
        CU_CHECK(cu_embed_gather(e->embed_dev, d_tok, T, H, e->x, e->stream));
    } else if (e->embed_on_host) {
        size_t row_b = (size_t)H * e->embed_elt;
        CU_CHECK(cudaMemcpyAsync(e->embed_stage_d, e->embed_stage_h, (size_t)T * row_b,
                                 cudaMemcpyHostToDevice, e->stream));
        CU_CHECK(cu_to_f32(e->embed_stage_d, e->embed_dtype, (size_t)T * H, e->x, e->stream));
    } else {
        CU_CHECK(cu_embed_synth(d_tok, T, H, e->synth_seed, e->x, e->stream));
    }

    for (int l = 0; l < c->n_layers; l++) {
        const struct cu_layer *L = &e->layers[l];
        prof(e, P_NORM);
        CU_CHECK(cu_rmsnorm(e->x, l ? e->y : NULL, NULL, T, H, L->attn_norm, c->rms_norm_eps,
                            e->h, e->stream));
        prof(e, P_QKV);
        if (linear(e, &L->qkv, e->h, T, e->mid, err))
            return -1;
        prof(e, P_ROPE);
        CU_CHECK(cu_qk_norm_rope_store(e->mid, T, c->n_heads, Hkv, c->head_dim, L->q_norm,
                                       L->k_norm, c->rms_norm_eps, d_pos, d_slot, e->inv_freq,
                                       e->attn_factor, e->qa, e->kv, l, e->stream));
        prof(e, P_ATTN);
        CU_CHECK(cu_attention(e->qa, e->att, DEV(e, p->as), DEV(e, p->ws), p->small_grid,
                              p->small_rows, DEV(e, p->wl), p->n_large, DEV(e, p->cb),
                              DEV(e, p->pages), e->kv, l, c->n_heads, e->att_part_o,
                              e->att_part_lse, e->att_comb_counters, e->stream));
        prof(e, P_O);
        if (linear(e, &L->o, e->att, T, e->y, err))
            return -1;
        prof(e, P_NORM);
        CU_CHECK(cu_rmsnorm(e->x, e->y, NULL, T, H, L->mlp_norm, c->rms_norm_eps, e->h,
                            e->stream));
        prof(e, P_GATEUP);
        if (linear(e, &L->gate_up, e->h, T, e->mid, err))
            return -1;
        prof(e, P_SWIGLU);
        CU_CHECK(cu_swiglu(e->mid, T, c->intermediate_size, e->qa, e->stream));
        prof(e, P_DOWN);
        if (linear(e, &L->down, e->qa, T, e->y, err))
            return -1;
    }

    /* Final norm, lm_head (always LOGIT_ROWS rows: the same cuBLAS algorithm
     * whatever the batch) and sampling, LOGIT_ROWS rows at a time. */
    const int32_t *d_lrows = DEV(e, p->lrows);
    const cu_sample_job *d_jobs = DEV(e, p->jobs);
    const float one = 1.0f, zero = 0.0f;
    int j0 = 0;
    for (int r0 = 0; r0 < p->n_lrows; r0 += LOGIT_ROWS) {
        int nr = p->n_lrows - r0 < LOGIT_ROWS ? p->n_lrows - r0 : LOGIT_ROWS;
        prof(e, P_LOGITS);
        CU_CHECK(cu_rmsnorm(e->x, e->y, d_lrows + r0, nr, H, e->final_norm, c->rms_norm_eps,
                            e->hl, e->stream));
        BLAS_CHECK(cublasGemmEx(e->blas, CUBLAS_OP_T, CUBLAS_OP_N, V, LOGIT_ROWS, H, &one,
                                e->lm_head, CUDA_R_16F, H, e->hl, CUDA_R_16F, H, &zero, e->logits,
                                CUDA_R_32F, V, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        if (logits_out)
            for (int r = 0; r < nr;) {
                if (p->dest[r0 + r] < 0) {
                    r++;
                    continue;
                }
                int run = 1;
                while (r + run < nr && p->dest[r0 + r + run] == p->dest[r0 + r] + run)
                    run++;
                CU_CHECK(cudaMemcpyAsync(logits_out + (size_t)p->dest[r0 + r] * V,
                                         e->logits + (size_t)r * V, sizeof(float) * V * run,
                                         cudaMemcpyDeviceToHost, e->stream));
                r += run;
            }
        int j1 = j0;
        while (j1 < p->n_jobs && p->job_lrow[j1] < r0 + nr)
            j1++;
        prof(e, P_SAMPLE);
        if (j1 > j0)
            CU_CHECK(cu_sample(e->logits, V, d_jobs + j0, j1 - j0, e->pen_d, e->samp_d,
                               e->stream));
        j0 = j1;
    }
    prof(e, P_END);
    return 0;
}

static int graph_key_eq(const struct graph_key *a, const struct graph_key *b)
{
    return a->n_segs == b->n_segs && a->T == b->T && a->n_lrows == b->n_lrows &&
           a->n_jobs == b->n_jobs && a->job_rows_sig == b->job_rows_sig &&
           a->small_rows == b->small_rows && a->pen_d == b->pen_d;
}

static int run_graph(cuda_engine *e, const struct pass *p, errbuf *err)
{
    struct graph_key k = {p->n_segs, p->T, p->n_lrows, p->n_jobs, 0, p->small_rows, e->pen_d};
    for (int j = 0; j < p->n_jobs; j++)
        k.job_rows_sig = k.job_rows_sig * 31 + p->job_lrow[j];
    int slot = -1;
    for (int i = 0; i < e->n_graphs; i++)
        if (graph_key_eq(&e->graph_keys[i], &k)) {
            slot = i;
            break;
        }
    if (slot < 0) {
        if (e->n_graphs == GRAPH_CAP) {
            cudaGraphExecDestroy(e->graphs[0]);
            memmove(e->graphs, e->graphs + 1, sizeof e->graphs[0] * (GRAPH_CAP - 1));
            memmove(e->graph_keys, e->graph_keys + 1, sizeof e->graph_keys[0] * (GRAPH_CAP - 1));
            e->n_graphs--;
        }
        cudaGraph_t g;
        CU_CHECK(cudaStreamBeginCapture(e->stream, cudaStreamCaptureModeThreadLocal));
        int rc = pass_run(e, p, NULL, err);
        cudaError_t ce = cudaStreamEndCapture(e->stream, &g);
        if (rc)
            return -1;
        CU_CHECK(ce);
        cudaGraphExec_t x;
        ce = cudaGraphInstantiate(&x, g, 0);
        cudaGraphDestroy(g);
        CU_CHECK(ce);
        slot = e->n_graphs++;
        e->graphs[slot] = x;
        e->graph_keys[slot] = k;
    }
    CU_CHECK(cudaGraphLaunch(e->graphs[slot], e->stream));
    return 0;
}

/* One pass over segs[0..n_segs): the layers for their tokens, then logits and
 * samples for the rows that ask. */
static int forward(cuda_engine *e, const eng_item *items, const struct seg *segs, int n_segs,
                   float *logits_out, errbuf *err)
{
    /* Decode passes (one token per sequence, no logits to the caller) replay
     * a CUDA graph: one launch instead of ~500. */
    int decode = 1;
    for (int i = 0; i < n_segs && decode; i++) {
        const eng_item *it = &items[segs[i].item];
        decode = segs[i].count == 1 && it->logits == ENG_LOGITS_NONE;
    }
    int use_graph = decode && e->graphs_on && !e->prof_on && n_segs <= LOGIT_ROWS;
    /* The pinned host buffers (metadata, penalties, embedding rows) of the
     * previous pass may still be in flight to the GPU. */
    CU_CHECK(cudaStreamSynchronize(e->stream));
    struct pass p;
    memset(&p, 0, sizeof p);
    int rc = pass_build(e, items, segs, n_segs, use_graph, &p, err);
    if (!rc && e->embed_on_host) {
        const char *tab = e->m->embed.data;
        size_t row_b = (size_t)e->c.hidden_size * e->embed_elt;
        for (int k = 0; k < p.T; k++)
            memcpy((char *)e->embed_stage_h + (size_t)k * row_b, tab + (size_t)p.tok[k] * row_b,
                   row_b);
    }
    if (!rc) {
        prof(e, P_UPLOAD);
        rc = pass_upload(e, &p, err);
    }
    if (!rc)
        rc = use_graph ? run_graph(e, &p, err) : pass_run(e, &p, logits_out, err);
    if (!rc)
        prof_flush(e, p.T <= 64, p.T);
    pass_free(&p);
    return rc;
}

static int pages_for(int n) { return (n + PAGE_SIZE - 1) / PAGE_SIZE; }

static int note_sampled(struct cu_seq *s, int32_t tok, int vocab)
{
    s->n_sampled++;
    if (s->sp.presence_penalty == 0 || tok < 0 || tok >= vocab)
        return 0;
    if (!s->seen && !(s->seen = calloc((size_t)(vocab + 7) / 8, 1)))
        return -1;
    if (s->seen[tok / 8] & (1u << (tok % 8)))
        return 0;
    s->seen[tok / 8] |= (uint8_t)(1u << (tok % 8));
    if (s->n_uniq == s->cap_uniq) {
        int cap = s->cap_uniq ? s->cap_uniq * 2 : 64;
        int32_t *u = realloc(s->uniq, sizeof *u * (size_t)cap);
        if (!u)
            return -1;
        s->uniq = u;
        s->cap_uniq = cap;
    }
    s->uniq[s->n_uniq++] = tok;
    return 0;
}

static int cu_step(eng *base, const eng_item *items, int n_items, float *logits_out,
                   int32_t *sampled, errbuf *err)
{
    cuda_engine *e = (cuda_engine *)base;
    const int V = e->c.vocab_size;
    if (n_items > e->max_seqs)
        return errorf(err, "step: %d items but max_seqs is %d", n_items, e->max_seqs);
    int64_t need_pages = 0;
    for (int i = 0; i < n_items; i++) {
        const eng_item *it = &items[i];
        if (it->seq < 0 || it->seq >= e->max_seqs || !e->seqs[it->seq].used)
            return errorf(err, "step: item %d names no live sequence", i);
        if (it->n_tokens < 1)
            return errorf(err, "step: item %d has no tokens", i);
        for (int k = 0; k < i; k++)
            if (items[k].seq == it->seq)
                return errorf(err, "step: sequence %d appears twice", it->seq);
        for (int t = 0; t < it->n_tokens; t++)
            if (it->tokens[t] < 0 || it->tokens[t] >= V)
                return errorf(err, "step: token id %d out of range (vocab %d)", it->tokens[t], V);
        const struct cu_seq *s = &e->seqs[it->seq];
        int64_t more = pages_for(s->n + it->n_tokens) - s->n_pages;
        if (more > 0)
            need_pages += more;
    }
    if (need_pages > e->n_free)
        return errorf(err,
                      "KV cache full: %lld pages of %d tokens needed, %d free of %d; release "
                      "sequences or wait",
                      (long long)need_pages, PAGE_SIZE, e->n_free, e->n_pages_total);
    for (int i = 0; i < n_items; i++) {
        struct cu_seq *s = &e->seqs[items[i].seq];
        while (s->n_pages < pages_for(s->n + items[i].n_tokens)) {
            int32_t p = e->free_pages[e->n_free - 1];
            if (seq_push_page(s, p))
                return errorf(err, "out of host memory");
            e->n_free--;
            e->page_ref[p] = 1;
        }
    }
    int rows = 0, samples = 0;
    for (int i = 0; i < n_items; i++) {
        e->out_row[i] = rows;
        e->samp_out[i] = samples;
        rows += items[i].logits == ENG_LOGITS_ALL ? items[i].n_tokens
                : items[i].logits == ENG_LOGITS_LAST ? 1 : 0;
        samples += items[i].sample != 0;
    }

    /* Passes of at most max_T tokens; an item may straddle passes. */
    int i = 0, t = 0;
    while (i < n_items) {
        int n_segs = 0, budget = e->max_T;
        while (i < n_items && budget > 0) {
            int take = items[i].n_tokens - t < budget ? items[i].n_tokens - t : budget;
            struct seg *sg = &e->segs[n_segs++];
            sg->item = i;
            sg->t0 = t;
            sg->count = take;
            sg->last = t + take == items[i].n_tokens;
            budget -= take;
            t += take;
            if (t == items[i].n_tokens) {
                i++;
                t = 0;
            }
        }
        if (forward(e, items, e->segs, n_segs, logits_out, err))
            return -1;
    }
    if (samples)
        CU_CHECK(cudaMemcpyAsync(e->samp_h, e->samp_d, sizeof(int32_t) * (size_t)samples,
                                 cudaMemcpyDeviceToHost, e->stream));
    CU_CHECK(cudaStreamSynchronize(e->stream));
    for (int k = 0; k < n_items; k++) {
        struct cu_seq *s = &e->seqs[items[k].seq];
        s->n += items[k].n_tokens;
        if (items[k].sample) {
            int32_t tok = e->samp_h[e->samp_out[k]];
            if (sampled)
                sampled[e->samp_out[k]] = tok;
            if (note_sampled(s, tok, V))
                return errorf(err, "out of host memory");
        }
    }
    return 0;
}

static void cu_close(eng *base)
{
    cuda_engine *e = (cuda_engine *)base;
    if (!e)
        return;
    if (e->stream)
        cudaStreamSynchronize(e->stream);
    if (e->seqs)
        for (int i = 0; i < e->max_seqs; i++) {
            free(e->seqs[i].pages);
            free(e->seqs[i].uniq);
            free(e->seqs[i].seen);
        }
    free(e->seqs);
    for (int i = 0; i < e->n_allocs; i++)
        cudaFree(e->allocs[i]);
    free(e->allocs);
    if (e->meta_h)
        cudaFreeHost(e->meta_h);
    if (e->pen_h)
        cudaFreeHost(e->pen_h);
    if (e->samp_h)
        cudaFreeHost(e->samp_h);
    if (e->embed_stage_h)
        cudaFreeHost(e->embed_stage_h);
    if (e->blas_ok)
        cublasDestroy(e->blas);
    if (e->prof_on)
        for (int i = 0; i < PROF_CAP; i++)
            cudaEventDestroy(e->prof_ev[i]);
    for (int i = 0; i < e->n_graphs; i++)
        cudaGraphExecDestroy(e->graphs[i]);

    if (e->stream)
        cudaStreamDestroy(e->stream);
    free(e->layers);
    free(e->free_pages);
    free(e->page_ref);
    free(e->segs);
    free(e->out_row);
    free(e->samp_out);
    free(e);
}

static const struct eng_vtable cuda_vtable = {
    .seq_add = cu_seq_add,
    .seq_fork = cu_seq_fork,
    .seq_release = cu_seq_release,
    .step = cu_step,
    .kv_free_tokens = cu_kv_free,
    .close = cu_close,
};
