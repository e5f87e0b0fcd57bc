/*
 * cpu_engine.c - the fp32 reference engine (see engine.h).
 *
 * Plain C in the llama2.c manner: weights converted to fp32 once, one
 * function per operation, the forward pass readable top to bottom. All rows
 * of a step (prompt chunks and decode tokens of many sequences) go through
 * each layer together, so the weights are read once per step; attention then
 * looks up each row's own sequence in its KV cache.
 *
 * Every number is summed in one fixed order whatever the batch, the prefill
 * chunking or the thread count (linear layers: over the input in order, one
 * accumulator per output; attention: per row and head over the positions),
 * so a sequence gets bit-identical logits alone or in any batch: the
 * scheduler's batching can never change a document's text.
 *
 * Threads: a small persistent pool runs each operation as a parallel-for
 * (linear layers split over output panels, attention over (row, head)
 * pairs); the calling thread is worker 0. Memory: weights in fp32 panels
 * (see matmul), each sequence's K and V in fp32 rows that grow by doubling,
 * activations grown to the largest step; nothing is allocated per layer.
 */
#include "engine.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct cpu_layer {
    float *attn_norm, *q_norm, *k_norm, *mlp_norm;
    float *wq, *wk, *wv, *wo, *wgate, *wup, *wdown; /* in matmul panels */
};

struct cpu_seq {
    int used;
    int n;        /* tokens in the cache */
    int cap;      /* rows allocated */
    float *k, *v; /* [layer][cap][kv_dim] */
    sample_params sp;
    int32_t *sampled; /* tokens sampled so far (presence penalty) */
    int n_sampled, sampled_cap;
};

/* A parallel-for over [0, n) on a persistent pool. */
struct pool;
/* fn runs [begin, end) of the range on worker `worker` (0 = the caller). */
typedef void (*pool_fn)(void *ctx, int worker, int64_t begin, int64_t end);

struct pool_worker {
    struct pool *p;
    int index;
    pthread_t thread;
};

struct pool {
    int n_threads;
    struct pool_worker *workers;
    pthread_mutex_t mu;
    pthread_cond_t start, done;
    uint64_t generation;
    int pending, quit;
    pool_fn fn;
    void *ctx;
    int64_t n;
};

typedef struct cpu_engine {
    eng base;
    const model *m;
    model_config c;
    float *embed;     /* [vocab][hidden], for lookups */
    float *lm_head_p; /* the lm_head (or the tied embedding) in matmul panels */
    float *final_norm;
    struct cpu_layer *layers;
    float *inv_freq;
    float attn_factor;
    struct cpu_seq *seqs;
    int max_seqs;
    int64_t kv_used, kv_cap;
    struct pool pool;
    sample_scratch scratch;
    /* activations, grown to the largest step */
    int rows_cap;
    float *x, *h, *q, *k, *v, *att, *gate, *up;
    int *row_seq, *row_pos;
    float *scores; /* attention scores, [n_threads][scores_per_worker] */
    int64_t scores_per_worker;
    /* logits: which rows need them and where each goes */
    int *lm_rows;
    float **lm_dest;
    float *lm_scratch; /* rows only sampled, not returned: [lm_scratch_rows][vocab] */
    int lm_scratch_rows;
    float *sample_row; /* a copy to sample from (sampling edits logits) */
} cpu_engine;

/* ---- thread pool ---- */

static void pool_run_share(struct pool *p, int index)
{
    int64_t per = (p->n + p->n_threads - 1) / p->n_threads;
    int64_t b = per * index, e = b + per < p->n ? b + per : p->n;
    if (b < e)
        p->fn(p->ctx, index, b, e);
}

static void *pool_main(void *arg)
{
    struct pool_worker *w = arg;
    struct pool *p = w->p;
    uint64_t seen = 0;
    for (;;) {
        pthread_mutex_lock(&p->mu);
        while (p->generation == seen && !p->quit)
            pthread_cond_wait(&p->start, &p->mu);
        if (p->quit) {
            pthread_mutex_unlock(&p->mu);
            return NULL;
        }
        seen = p->generation;
        pthread_mutex_unlock(&p->mu);
        pool_run_share(p, w->index);
        pthread_mutex_lock(&p->mu);
        if (--p->pending == 0)
            pthread_cond_signal(&p->done);
        pthread_mutex_unlock(&p->mu);
    }
}

static int pool_init(struct pool *p, int n_threads)
{
    memset(p, 0, sizeof *p);
    p->n_threads = n_threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->start, NULL);
    pthread_cond_init(&p->done, NULL);
    p->workers = calloc((size_t)n_threads, sizeof *p->workers);
    if (!p->workers)
        return -1;
    for (int i = 1; i < n_threads; i++) { /* the caller is worker 0 */
        p->workers[i] = (struct pool_worker){p, i, 0};
        if (pthread_create(&p->workers[i].thread, NULL, pool_main, &p->workers[i])) {
            p->n_threads = i;
            return -1;
        }
    }
    return 0;
}

static void pool_for(struct pool *p, int64_t n, pool_fn fn, void *ctx)
{
    if (p->n_threads <= 1 || n < 2) {
        fn(ctx, 0, 0, n);
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->ctx = ctx;
    p->n = n;
    p->pending = p->n_threads - 1;
    p->generation++;
    pthread_cond_broadcast(&p->start);
    pthread_mutex_unlock(&p->mu);
    pool_run_share(p, 0);
    pthread_mutex_lock(&p->mu);
    while (p->pending)
        pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}

static void pool_free(struct pool *p)
{
    if (!p->workers)
        return;
    pthread_mutex_lock(&p->mu);
    p->quit = 1;
    pthread_cond_broadcast(&p->start);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n_threads; i++)
        pthread_join(p->workers[i].thread, NULL);
    free(p->workers);
    p->workers = NULL;
    pthread_cond_destroy(&p->start);
    pthread_cond_destroy(&p->done);
    pthread_mutex_destroy(&p->mu);
}

/* ---- operations ---- */

/* Dot product in a fixed order (8 partial sums), so results do not depend on
 * which rows share a step. */
static float dot(const float *a, const float *b, int n)
{
    float s[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++)
            s[k] += a[i + k] * b[i + k];
    float r = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
    for (; i < n; i++)
        r += a[i] * b[i];
    return r;
}

/* y += a * x; y (activations) and x (the KV cache) never overlap. Blocks of
 * a fixed 8 so that GCC -O2 vectorizes (it skips loops of unknown length). */
static void axpy(float *restrict y, float a, const float *restrict x, int n)
{
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++)
            y[i + k] += a * x[i + k];
    for (; i < n; i++)
        y[i] += a * x[i];
}

static void rmsnorm(float *out, const float *x, const float *w, int n, float eps)
{
    double ss = 0;
    for (int i = 0; i < n; i++)
        ss += (double)x[i] * x[i];
    float scale = (float)(1.0 / sqrt(ss / n + eps));
    for (int i = 0; i < n; i++)
        out[i] = x[i] * scale * w[i];
}

/*
 * Linear layers keep W in panels of TILE outputs: panel t holds outputs
 * t*TILE .. t*TILE+TILE-1 as wp[t][k][j] = W[t*TILE + j][k] (zero padded
 * past the last output), so a panel is one contiguous stream. The inner loop
 * runs along a panel's outputs:
 *     acc[j] += x[r][k] * wp[t][k][j]   for k = 0, 1, ..., in-1
 * so each output element is summed over k in ascending order with a single
 * accumulator, whatever the rows, panel or thread: a sequence's numbers
 * never depend on what shares its step. The compiler vectorizes across the
 * panel without horizontal sums, and a panel stays in cache while all rows
 * of the step go past it.
 */
enum { TILE = 16 };

struct matmul_ctx {
    float *y;             /* [rows][out] ... */
    float *const *y_rows; /* ... or, when set, row r at y_rows[r] */
    const float *x;       /* [rows][in] */
    const float *wp;      /* panels, see above */
    int rows, in, out;
    int accumulate; /* y += instead of y = */
};

static void matmul_part(void *arg, int worker, int64_t panel_begin, int64_t panel_end)
{
    (void)worker;
    const struct matmul_ctx *m = arg;
    for (int64_t t = panel_begin; t < panel_end; t++) {
        const float *panel = m->wp + t * m->in * TILE;
        int64_t o0 = t * TILE;
        int width = m->out - o0 < TILE ? (int)(m->out - o0) : TILE;
        for (int r = 0; r < m->rows; r++) {
            const float *x = m->x + (int64_t)r * m->in;
            float acc[TILE] = {0};
            for (int k = 0; k < m->in; k++) {
                const float *w = panel + (int64_t)k * TILE;
                float xk = x[k];
                /* Unrolled, acc lives in vector registers (else GCC -O2
                 * keeps it on the stack: half the speed). */
#pragma GCC unroll 16
                for (int j = 0; j < TILE; j++)
                    acc[j] += xk * w[j];
            }
            float *y = (m->y_rows ? m->y_rows[r] : m->y + (int64_t)r * m->out) + o0;
            for (int j = 0; j < width; j++)
                y[j] = m->accumulate ? y[j] + acc[j] : acc[j];
        }
    }
}

static int64_t n_panels(int64_t out)
{
    return (out + TILE - 1) / TILE;
}

/* y[rows][out] (+)= x[rows][in] W^T with W in panels, split over panels. */
static void matmul(cpu_engine *e, float *y, const float *x, const float *wp, int rows, int in,
                   int out, int accumulate)
{
    struct matmul_ctx m = {y, NULL, x, wp, rows, in, out, accumulate};
    pool_for(&e->pool, n_panels(out), matmul_part, &m);
}

/* Rotate-half RoPE on one head vector at position pos. */
static void rope(const cpu_engine *e, float *v, int pos)
{
    int half = e->c.head_dim / 2;
    for (int i = 0; i < half; i++) {
        float ang = (float)pos * e->inv_freq[i];
        float c = cosf(ang) * e->attn_factor, s = sinf(ang) * e->attn_factor;
        float a = v[i], b = v[i + half];
        v[i] = a * c - b * s;
        v[i + half] = b * c + a * s;
    }
}

struct attn_ctx {
    cpu_engine *e;
    int layer;
};

/* One (row, head) pair per index: causal attention over the row's sequence.
 * Each worker has its own scores buffer (e->scores, sized in cpu_step to the
 * longest context of the step), so nothing is allocated here. */
static void attn_part(void *arg, int worker, int64_t begin, int64_t end)
{
    struct attn_ctx *a = arg;
    cpu_engine *e = a->e;
    const model_config *c = &e->c;
    int D = c->head_dim, nh = c->n_heads, group = c->n_heads / c->n_kv_heads;
    int kv_dim = c->n_kv_heads * D;
    float scale = 1.0f / sqrtf((float)D);
    float *scores = e->scores + (int64_t)worker * e->scores_per_worker;
    for (int64_t idx = begin; idx < end; idx++) {
        int r = (int)(idx / nh), h = (int)(idx % nh), kvh = h / group;
        struct cpu_seq *s = &e->seqs[e->row_seq[r]];
        int pos = e->row_pos[r], n = pos + 1; /* causal: positions 0..pos */
        const float *q = e->q + (int64_t)r * nh * D + h * D;
        const float *K = s->k + (int64_t)a->layer * s->cap * kv_dim + kvh * D;
        const float *V = s->v + (int64_t)a->layer * s->cap * kv_dim + kvh * D;
        float max = -INFINITY;
        for (int t = 0; t < n; t++) {
            scores[t] = dot(q, K + (int64_t)t * kv_dim, D) * scale;
            if (scores[t] > max)
                max = scores[t];
        }
        double sum = 0;
        for (int t = 0; t < n; t++) {
            scores[t] = expf(scores[t] - max);
            sum += scores[t];
        }
        float *out = e->att + (int64_t)r * nh * D + h * D;
        memset(out, 0, sizeof *out * (size_t)D);
        for (int t = 0; t < n; t++)
            axpy(out, (float)(scores[t] / sum), V + (int64_t)t * kv_dim, D);
    }
}

/* ---- memory ---- */

static float *to_f32(const model_tensor *t, int64_t n)
{
    float *p = malloc(sizeof *p * (size_t)n);
    if (p)
        model_tensor_to_f32(t, 0, n, p);
    return p;
}

/* W [out][in] (row-major) into the panels matmul reads. */
static float *to_panels(const float *w, int64_t out, int64_t in)
{
    float *wp = calloc((size_t)(n_panels(out) * TILE * in), sizeof *wp);
    if (wp)
        for (int64_t o = 0; o < out; o++)
            for (int64_t k = 0; k < in; k++)
                wp[((o / TILE) * in + k) * TILE + o % TILE] = w[o * in + k];
    return wp;
}

/* A linear layer in fp32 panels. */
static float *linear_panels(const model_linear *l)
{
    float *w = malloc(sizeof *w * (size_t)(l->in_features * l->out_features));
    if (!w)
        return NULL;
    model_linear_to_f32(l, w);
    float *wp = to_panels(w, l->out_features, l->in_features);
    free(w);
    return wp;
}

static int grow_rows(cpu_engine *e, int rows)
{
    if (rows <= e->rows_cap)
        return 0;
    const model_config *c = &e->c;
    int cap = rows < 64 ? 64 : rows;
    size_t H = (size_t)c->hidden_size, Q = (size_t)c->n_heads * c->head_dim,
           KV = (size_t)c->n_kv_heads * c->head_dim, I = (size_t)c->intermediate_size;
    float **bufs[] = {&e->x, &e->h, &e->q, &e->k, &e->v, &e->att, &e->gate, &e->up};
    size_t widths[] = {H, H > Q ? H : Q, Q, KV, KV, Q, I, I};
    for (int i = 0; i < 8; i++) {
        float *p = realloc(*bufs[i], sizeof(float) * widths[i] * (size_t)cap);
        if (!p)
            return -1;
        *bufs[i] = p;
    }
    int *a = realloc(e->row_seq, sizeof *a * (size_t)cap), *b;
    if (!a)
        return -1;
    e->row_seq = a;
    if (!(b = realloc(e->row_pos, sizeof *b * (size_t)cap)))
        return -1;
    e->row_pos = b;
    if (!(b = realloc(e->lm_rows, sizeof *b * (size_t)cap)))
        return -1;
    e->lm_rows = b;
    float **d = realloc(e->lm_dest, sizeof *d * (size_t)cap);
    if (!d)
        return -1;
    e->lm_dest = d;
    e->rows_cap = cap;
    return 0;
}

/* Room for attention scores over contexts of up to n_ctx positions. */
static int grow_scores(cpu_engine *e, int64_t n_ctx)
{
    if (n_ctx <= e->scores_per_worker)
        return 0;
    int64_t per = n_ctx < 256 ? 256 : n_ctx * 2;
    float *p = realloc(e->scores, sizeof *p * (size_t)(per * e->pool.n_threads));
    if (!p)
        return -1;
    e->scores = p;
    e->scores_per_worker = per;
    return 0;
}

/* Room for n rows of logits that are sampled but not returned. */
static int grow_lm_scratch(cpu_engine *e, int n)
{
    if (n <= e->lm_scratch_rows)
        return 0;
    float *p = realloc(e->lm_scratch, sizeof *p * (size_t)n * (size_t)e->c.vocab_size);
    if (!p)
        return -1;
    e->lm_scratch = p;
    e->lm_scratch_rows = n;
    return 0;
}

/* Makes room for `more` tokens in sequence s (layer-major layout, so growing
 * copies each layer's rows to their new place). */
static int seq_reserve(cpu_engine *e, struct cpu_seq *s, int more, errbuf *err)
{
    int need = s->n + more;
    if (e->kv_used + more > e->kv_cap)
        return errorf(err,
                      "KV cache full: %lld of %lld tokens in use, %d more asked (raise "
                      "max_kv_tokens or run fewer sequences at once)",
                      (long long)e->kv_used, (long long)e->kv_cap, more);
    if (need <= s->cap)
        return 0;
    int64_t cap = s->cap ? s->cap : 64;
    while (cap < need)
        cap *= 2;
    if (cap > e->kv_cap)
        cap = need > e->kv_cap ? need : e->kv_cap; /* no sequence outgrows the cache */
    size_t kv_dim = (size_t)e->c.n_kv_heads * e->c.head_dim, L = (size_t)e->c.n_layers;
    float *k = malloc(sizeof *k * L * (size_t)cap * kv_dim);
    float *v = malloc(sizeof *v * L * (size_t)cap * kv_dim);
    if (!k || !v) {
        free(k);
        free(v);
        return errorf(err, "out of memory for the KV cache");
    }
    for (size_t l = 0; l < L && s->n; l++) {
        memcpy(k + l * cap * kv_dim, s->k + l * s->cap * kv_dim, sizeof *k * s->n * kv_dim);
        memcpy(v + l * cap * kv_dim, s->v + l * s->cap * kv_dim, sizeof *v * s->n * kv_dim);
    }
    free(s->k);
    free(s->v);
    s->k = k;
    s->v = v;
    s->cap = (int)cap;
    return 0;
}

/* ---- the engine API ---- */

static int cpu_seq_add(eng *base, const sample_params *sp, int *seq, errbuf *err)
{
    cpu_engine *e = (cpu_engine *)base;
    for (int i = 0; i < e->max_seqs; i++) {
        struct cpu_seq *s = &e->seqs[i];
        if (s->used)
            continue;
        free(s->k);
        free(s->v);
        free(s->sampled);
        memset(s, 0, sizeof *s);
        s->used = 1;
        s->sp = *sp;
        *seq = i;
        return 0;
    }
    return errorf(err, "all %d sequence slots are in use", e->max_seqs);
}

static void cpu_seq_release(eng *base, int seq)
{
    cpu_engine *e = (cpu_engine *)base;
    if (seq < 0 || seq >= e->max_seqs || !e->seqs[seq].used)
        return;
    struct cpu_seq *s = &e->seqs[seq];
    e->kv_used -= s->n;
    free(s->k);
    free(s->v);
    free(s->sampled);
    memset(s, 0, sizeof *s);
}

static int cpu_seq_fork(eng *base, int src, int n_prefix, const sample_params *sp, int *seq,
                        errbuf *err)
{
    cpu_engine *e = (cpu_engine *)base;
    if (src < 0 || src >= e->max_seqs || !e->seqs[src].used || n_prefix > e->seqs[src].n ||
        n_prefix < 0)
        return errorf(err, "fork: sequence %d does not hold %d tokens", src, n_prefix);
    if (cpu_seq_add(base, sp, seq, err))
        return -1;
    struct cpu_seq *s = &e->seqs[*seq], *from = &e->seqs[src];
    if (seq_reserve(e, s, n_prefix, err)) {
        cpu_seq_release(base, *seq);
        return -1;
    }
    size_t kv_dim = (size_t)e->c.n_kv_heads * e->c.head_dim;
    for (size_t l = 0; n_prefix > 0 && l < (size_t)e->c.n_layers; l++) {
        memcpy(s->k + l * s->cap * kv_dim, from->k + l * from->cap * kv_dim,
               sizeof(float) * n_prefix * kv_dim);
        memcpy(s->v + l * s->cap * kv_dim, from->v + l * from->cap * kv_dim,
               sizeof(float) * n_prefix * kv_dim);
    }
    s->n = n_prefix;
    e->kv_used += n_prefix;
    return 0;
}

/* Whether row t of an item goes back to the caller as logits. */
static int returns_row(const eng_item *it, int t)
{
    return it->logits == ENG_LOGITS_ALL || (t == it->n_tokens - 1 && it->logits == ENG_LOGITS_LAST);
}

static int append_sampled(struct cpu_seq *s, int32_t tok)
{
    if (s->n_sampled == s->sampled_cap) {
        int cap = s->sampled_cap ? s->sampled_cap * 2 : 64;
        int32_t *p = realloc(s->sampled, sizeof *p * (size_t)cap);
        if (!p)
            return -1;
        s->sampled = p;
        s->sampled_cap = cap;
    }
    s->sampled[s->n_sampled++] = tok;
    return 0;
}

/* The decoder layers over all rows of the step; K and V of every row are
 * written to its sequence's cache before attention, so a prefill chunk
 * attends to its own earlier rows. */
static void forward_layers(cpu_engine *e, int rows)
{
    const model_config *c = &e->c;
    int H = c->hidden_size, D = c->head_dim, nh = c->n_heads, nkv = c->n_kv_heads;
    int Q = nh * D, KV = nkv * D, I = c->intermediate_size;
    for (int l = 0; l < c->n_layers; l++) {
        struct cpu_layer *L = &e->layers[l];
        for (int i = 0; i < rows; i++)
            rmsnorm(e->h + (int64_t)i * H, e->x + (int64_t)i * H, L->attn_norm, H, c->rms_norm_eps);
        matmul(e, e->q, e->h, L->wq, rows, H, Q, 0);
        matmul(e, e->k, e->h, L->wk, rows, H, KV, 0);
        matmul(e, e->v, e->h, L->wv, rows, H, KV, 0);
        for (int i = 0; i < rows; i++) {
            for (int h = 0; h < nh; h++) {
                float *q = e->q + (int64_t)i * Q + h * D;
                rmsnorm(q, q, L->q_norm, D, c->rms_norm_eps);
                rope(e, q, e->row_pos[i]);
            }
            for (int h = 0; h < nkv; h++) {
                float *k = e->k + (int64_t)i * KV + h * D;
                rmsnorm(k, k, L->k_norm, D, c->rms_norm_eps);
                rope(e, k, e->row_pos[i]);
            }
            struct cpu_seq *s = &e->seqs[e->row_seq[i]];
            int64_t at = ((int64_t)l * s->cap + e->row_pos[i]) * KV;
            memcpy(s->k + at, e->k + (int64_t)i * KV, sizeof(float) * KV);
            memcpy(s->v + at, e->v + (int64_t)i * KV, sizeof(float) * KV);
        }
        struct attn_ctx actx = {e, l};
        pool_for(&e->pool, (int64_t)rows * nh, attn_part, &actx);
        matmul(e, e->x, e->att, L->wo, rows, Q, H, 1);

        for (int i = 0; i < rows; i++)
            rmsnorm(e->h + (int64_t)i * H, e->x + (int64_t)i * H, L->mlp_norm, H, c->rms_norm_eps);
        matmul(e, e->gate, e->h, L->wgate, rows, H, I, 0);
        matmul(e, e->up, e->h, L->wup, rows, H, I, 0);
        for (int64_t i = 0; i < (int64_t)rows * I; i++) {
            float g = e->gate[i];
            e->gate[i] = g / (1.0f + expf(-g)) * e->up[i]; /* silu(gate) * up */
        }
        matmul(e, e->x, e->gate, L->wdown, rows, I, H, 1);
    }
}

static int cpu_step(eng *base, const eng_item *items, int n_items, float *logits_out,
                    int32_t *sampled, errbuf *err)
{
    cpu_engine *e = (cpu_engine *)base;
    const model_config *c = &e->c;
    int H = c->hidden_size, V = c->vocab_size;

    /* Validate everything before touching any state, so a refused step
     * leaves every sequence as it was. */
    int rows = 0, n_returned = 0, n_sample_only = 0;
    int64_t longest = 0;
    for (int i = 0; i < n_items; i++) {
        const eng_item *it = &items[i];
        if (it->seq < 0 || it->seq >= e->max_seqs || !e->seqs[it->seq].used)
            return errorf(err, "step: item %d names sequence %d, which is not alive", i, it->seq);
        if (it->n_tokens < 1 || !it->tokens)
            return errorf(err, "step: item %d (sequence %d) has no tokens", i, it->seq);
        for (int k = 0; k < i; k++)
            if (items[k].seq == it->seq)
                return errorf(err, "step: sequence %d appears twice (items %d and %d)", it->seq, k,
                              i);
        for (int t = 0; t < it->n_tokens; t++)
            if (it->tokens[t] < 0 || it->tokens[t] >= V)
                return errorf(err, "step: item %d token %d: id %d out of range (vocab %d)", i, t,
                              (int)it->tokens[t], V);
        if (rows > INT32_MAX - it->n_tokens)
            return errorf(err, "step: too many tokens in one step");
        rows += it->n_tokens;
        n_returned += it->logits == ENG_LOGITS_ALL ? it->n_tokens : it->logits == ENG_LOGITS_LAST;
        n_sample_only += it->sample && !returns_row(it, it->n_tokens - 1);
        int64_t ctx = (int64_t)e->seqs[it->seq].n + it->n_tokens;
        if (ctx > longest)
            longest = ctx;
    }
    if (n_returned && !logits_out)
        return errorf(err, "step: logits asked for but no logits buffer given");
    if (e->kv_used + rows > e->kv_cap)
        return errorf(err,
                      "KV cache full: %lld of %lld tokens in use, %d more asked (raise "
                      "max_kv_tokens or run fewer sequences at once)",
                      (long long)e->kv_used, (long long)e->kv_cap, rows);
    if (grow_rows(e, rows) || grow_scores(e, longest) || grow_lm_scratch(e, n_sample_only))
        return errorf(err, "out of memory for the activations of a %d-token step", rows);
    for (int i = 0; i < n_items; i++)
        if (seq_reserve(e, &e->seqs[items[i].seq], items[i].n_tokens, err))
            return -1;

    /* Rows: embeddings and where each goes. */
    int r = 0;
    for (int i = 0; i < n_items; i++) {
        struct cpu_seq *s = &e->seqs[items[i].seq];
        for (int t = 0; t < items[i].n_tokens; t++, r++) {
            memcpy(e->x + (int64_t)r * H, e->embed + (int64_t)items[i].tokens[t] * H,
                   sizeof(float) * H);
            e->row_seq[r] = items[i].seq;
            e->row_pos[r] = s->n + t;
        }
    }
    forward_layers(e, rows);
    for (int i = 0; i < n_items; i++) {
        e->seqs[items[i].seq].n += items[i].n_tokens;
        e->kv_used += items[i].n_tokens;
    }

    /* Logits only for the rows that need them: those returned go straight
     * into the caller's buffer, those only sampled into scratch. */
    int n_lm = 0, n_out = 0, n_scratch = 0;
    r = 0;
    for (int i = 0; i < n_items; i++) {
        const eng_item *it = &items[i];
        for (int t = 0; t < it->n_tokens; t++, r++) {
            int last = t == it->n_tokens - 1;
            if (returns_row(it, t))
                e->lm_dest[n_lm] = logits_out + (int64_t)n_out++ * V;
            else if (last && it->sample)
                e->lm_dest[n_lm] = e->lm_scratch + (int64_t)n_scratch++ * V;
            else
                continue;
            e->lm_rows[n_lm++] = r;
            rmsnorm(e->h + (int64_t)r * H, e->x + (int64_t)r * H, e->final_norm, H,
                    c->rms_norm_eps);
        }
    }
    if (n_lm) {
        /* Pack the normalized rows to the front of h (lm_rows ascend, so
         * no source is overwritten before it is read), then one matmul
         * over the vocabulary writes each row where it belongs. */
        for (int i = 0; i < n_lm; i++)
            memmove(e->h + (int64_t)i * H, e->h + (int64_t)e->lm_rows[i] * H, sizeof(float) * H);
        struct matmul_ctx m = {NULL, e->lm_dest, e->h, e->lm_head_p, n_lm, H, V, 0};
        pool_for(&e->pool, n_panels(V), matmul_part, &m);
    }

    /* Sample in item order; each item's last logits row is the last one
     * assigned to it above, which is lm_dest[k - 1] after its rows. */
    int k = 0, n_samp = 0;
    int n_valid = e->base.opts.n_valid_vocab;
    for (int i = 0; i < n_items; i++) {
        const eng_item *it = &items[i];
        for (int t = 0; t < it->n_tokens; t++)
            k += returns_row(it, t) || (t == it->n_tokens - 1 && it->sample);
        if (!it->sample)
            continue;
        struct cpu_seq *s = &e->seqs[it->seq];
        float *row = e->lm_dest[k - 1];
        if (returns_row(it, it->n_tokens - 1)) {
            /* The caller keeps the raw logits; the sampler edits its copy. */
            memcpy(e->sample_row, row, sizeof(float) * V);
            row = e->sample_row;
        }
        int32_t tok = sample_token(&s->sp, row, n_valid, s->sampled, s->n_sampled,
                                   (uint64_t)s->n_sampled, &e->scratch);
        if (append_sampled(s, tok))
            return errorf(err, "out of memory for the sampled history of sequence %d", it->seq);
        if (sampled)
            sampled[n_samp] = tok;
        n_samp++;
    }
    return 0;
}

static int64_t cpu_kv_free(const eng *base)
{
    const cpu_engine *e = (const cpu_engine *)base;
    return e->kv_cap - e->kv_used;
}

static void cpu_close(eng *base)
{
    cpu_engine *e = (cpu_engine *)base;
    pool_free(&e->pool);
    if (e->layers)
        for (int l = 0; l < e->c.n_layers; l++) {
            struct cpu_layer *L = &e->layers[l];
            float *ps[] = {L->attn_norm, L->q_norm, L->k_norm, L->mlp_norm, L->wq,   L->wk,
                           L->wv,        L->wo,     L->wgate,  L->wup,      L->wdown};
            for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++)
                free(ps[i]);
        }
    free(e->layers);
    free(e->lm_head_p);
    free(e->embed);
    free(e->final_norm);
    free(e->inv_freq);
    if (e->seqs)
        for (int i = 0; i < e->max_seqs; i++) {
            free(e->seqs[i].k);
            free(e->seqs[i].v);
            free(e->seqs[i].sampled);
        }
    free(e->seqs);
    sample_scratch_free(&e->scratch);
    float *bufs[] = {e->x, e->h, e->q, e->k, e->v, e->att, e->gate, e->up};
    for (int i = 0; i < 8; i++)
        free(bufs[i]);
    free(e->row_seq);
    free(e->row_pos);
    free(e->scores);
    free(e->lm_rows);
    free(e->lm_dest);
    free(e->lm_scratch);
    free(e->sample_row);
    free(e);
}

static const struct eng_vtable cpu_vtable = {
    .seq_add = cpu_seq_add,
    .seq_fork = cpu_seq_fork,
    .seq_release = cpu_seq_release,
    .step = cpu_step,
    .kv_free_tokens = cpu_kv_free,
    .close = cpu_close,
};

int cpu_engine_open(eng **out, const model *m, const eng_options *opts, errbuf *err)
{
    *out = NULL;
    cpu_engine *e = calloc(1, sizeof *e);
    if (!e)
        return errorf(err, "out of memory");
    e->base.vt = &cpu_vtable;
    e->base.cfg = &m->cfg;
    e->base.opts = *opts;
    e->base.backend_name = "cpu";
    e->m = m;
    e->c = m->cfg;
    const model_config *c = &e->c;
    if (c->n_kv_heads < 1 || c->n_heads % c->n_kv_heads || c->head_dim < 2 || c->head_dim % 2) {
        errorf(err,
               "%s: the CPU engine needs heads divisible by KV heads and an even "
               "head_dim (have %d heads, %d KV heads, head_dim %d)",
               m->dir ? m->dir : "model", c->n_heads, c->n_kv_heads, c->head_dim);
        free(e);
        return -1;
    }
    int n_threads = opts->n_threads > 0 ? opts->n_threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (n_threads < 1)
        n_threads = 1;
    if (n_threads > 256)
        n_threads = 256;
    e->max_seqs = opts->max_seqs > 0 ? opts->max_seqs : 64;
    /* Default cache: 131072 tokens (a full prefill batch) or 4 GiB of fp32
     * K and V, whichever is smaller. */
    int64_t per_token = (int64_t)c->n_layers * c->n_kv_heads * c->head_dim * 2 * sizeof(float);
    int64_t by_memory = ((int64_t)4 << 30) / per_token;
    e->kv_cap = opts->max_kv_tokens > 0 ? opts->max_kv_tokens
                : by_memory < 131072    ? by_memory
                                        : 131072;
    e->base.opts.backend = ENG_BACKEND_CPU;
    e->base.opts.n_threads = n_threads;
    e->base.opts.max_seqs = e->max_seqs;
    e->base.opts.max_kv_tokens = e->kv_cap;
    if (e->base.opts.max_step_tokens <= 0)
        e->base.opts.max_step_tokens = 2048; /* advice to callers: bounds activation memory */
    if (e->base.opts.n_valid_vocab <= 0 || e->base.opts.n_valid_vocab > c->vocab_size)
        e->base.opts.n_valid_vocab = c->vocab_size;
    e->seqs = calloc((size_t)e->max_seqs, sizeof *e->seqs);
    e->layers = calloc((size_t)c->n_layers, sizeof *e->layers);
    e->inv_freq = malloc(sizeof(float) * (size_t)(c->head_dim / 2));
    int64_t H = c->hidden_size, D = c->head_dim;
    e->embed = to_f32(&m->embed, (int64_t)c->vocab_size * H);
    if (c->tie_word_embeddings) {
        if (e->embed)
            e->lm_head_p = to_panels(e->embed, c->vocab_size, H);
    } else {
        float *lm_head = to_f32(&m->lm_head, (int64_t)c->vocab_size * H);
        if (lm_head)
            e->lm_head_p = to_panels(lm_head, c->vocab_size, H);
        free(lm_head);
    }
    e->final_norm = to_f32(&m->final_norm, H);
    e->sample_row = malloc(sizeof(float) * (size_t)c->vocab_size);
    int ok = e->sample_row && e->seqs && e->layers && e->inv_freq && e->embed && e->lm_head_p &&
             e->final_norm;
    for (int l = 0; ok && l < c->n_layers; l++) {
        const model_layer *ml = &m->layers[l];
        struct cpu_layer *L = &e->layers[l];
        L->attn_norm = to_f32(&ml->attn_norm, H);
        L->mlp_norm = to_f32(&ml->mlp_norm, H);
        L->q_norm = to_f32(&ml->q_norm, D);
        L->k_norm = to_f32(&ml->k_norm, D);
        L->wq = linear_panels(&ml->q);
        L->wk = linear_panels(&ml->k);
        L->wv = linear_panels(&ml->v);
        L->wo = linear_panels(&ml->o);
        L->wgate = linear_panels(&ml->gate);
        L->wup = linear_panels(&ml->up);
        L->wdown = linear_panels(&ml->down);
        ok = L->attn_norm && L->mlp_norm && L->q_norm && L->k_norm && L->wq && L->wk && L->wv &&
             L->wo && L->wgate && L->wup && L->wdown;
    }
    if (!ok || sample_scratch_init(&e->scratch, c->vocab_size) || pool_init(&e->pool, n_threads)) {
        cpu_close(&e->base);
        return errorf(err, "out of memory loading the model for the CPU engine");
    }
    model_rope_inv_freq(c, e->inv_freq, &e->attn_factor);
    *out = &e->base;
    return 0;
}
