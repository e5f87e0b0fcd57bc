/*
 * test_cpu_naive.c - the CPU engine on awkward shapes, against the Qwen3
 * forward pass written out plainly in double precision.
 *
 * The HF fixtures use sizes that are multiples of 16, so the engine's
 * panel padding, odd head sizes and uneven thread splits would go untested
 * there. This test writes tiny float32 checkpoints with odd sizes (vocab 37,
 * head_dim 10, 3 query heads per KV head, intermediate 50; tied and untied;
 * default RoPE and YaRN), runs a prompt through the engine with 1 and 3
 * threads, and compares every position's logits with the loops below.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "engine.h"
#include "model.h"
#include "stwrite.h"

struct shape {
    int vocab, hidden, layers, heads, kv_heads, head_dim, inter, tied, yarn;
};

/* Weights as the reference reads them (float32, as in the file). */
struct weights {
    float *embed, *lm_head, *final_norm;
    float *attn_norm[4], *mlp_norm[4], *q_norm[4], *k_norm[4];
    float *q[4], *k[4], *v[4], *o[4], *gate[4], *up[4], *down[4];
};

static uint64_t rng = 88172645463325252ull;
static float rnd(float scale)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return scale * (float)((double)(rng >> 11) / 9007199254740992.0 * 2 - 1);
}

/* A [rows][cols] matrix of uniform values in [-scale, scale]. */
static float *tensor(stwriter *w, const char *name, int64_t rows, int64_t cols, float scale)
{
    int64_t n = rows * cols;
    float *d = malloc(sizeof *d * (size_t)n);
    for (int64_t i = 0; i < n; i++)
        d[i] = rnd(scale);
    int64_t shape[2] = {rows, cols};
    stw_add(w, name, MODEL_F32, 2, shape, d);
    return d;
}

static float *vec(stwriter *w, const char *name, int64_t n)
{
    float *d = malloc(sizeof *d * (size_t)n);
    for (int64_t i = 0; i < n; i++)
        d[i] = 1 + rnd(0.2f);
    stw_add(w, name, MODEL_F32, 1, &n, d);
    return d;
}

static void write_model(const char *dir, const struct shape *s, struct weights *wt)
{
    char path[512], name[256];
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    fprintf(f,
            "{\"architectures\": [\"Qwen3ForCausalLM\"], \"model_type\": \"qwen3\",\n"
            " \"vocab_size\": %d, \"hidden_size\": %d, \"num_hidden_layers\": %d,\n"
            " \"num_attention_heads\": %d, \"num_key_value_heads\": %d, \"head_dim\": %d,\n"
            " \"intermediate_size\": %d, \"tie_word_embeddings\": %s, \"rms_norm_eps\": 1e-6,\n"
            " \"rope_theta\": 10000.0, \"max_position_embeddings\": %d,\n"
            " \"rope_scaling\": %s, \"torch_dtype\": \"float32\", \"eos_token_id\": 1}\n",
            s->vocab, s->hidden, s->layers, s->heads, s->kv_heads, s->head_dim, s->inter,
            s->tied ? "true" : "false", s->yarn ? 64 : 512,
            s->yarn ? "{\"rope_type\": \"yarn\", \"factor\": 4.0, "
                      "\"original_max_position_embeddings\": 16}"
                    : "null");
    fclose(f);
    stwriter w;
    stw_init(&w);
    int H = s->hidden, D = s->head_dim, Q = s->heads * D, KV = s->kv_heads * D;
    wt->embed = tensor(&w, "model.embed_tokens.weight", s->vocab, H, 1.0f);
    wt->final_norm = vec(&w, "model.norm.weight", H);
    wt->lm_head = s->tied ? wt->embed : tensor(&w, "lm_head.weight", s->vocab, H, 0.5f);
    for (int l = 0; l < s->layers; l++) {
#define NAME(sub) (snprintf(name, sizeof name, "model.layers.%d.%s", l, sub), name)
        wt->attn_norm[l] = vec(&w, NAME("input_layernorm.weight"), H);
        wt->mlp_norm[l] = vec(&w, NAME("post_attention_layernorm.weight"), H);
        wt->q_norm[l] = vec(&w, NAME("self_attn.q_norm.weight"), D);
        wt->k_norm[l] = vec(&w, NAME("self_attn.k_norm.weight"), D);
        wt->q[l] = tensor(&w, NAME("self_attn.q_proj.weight"), Q, H, 0.4f);
        wt->k[l] = tensor(&w, NAME("self_attn.k_proj.weight"), KV, H, 0.4f);
        wt->v[l] = tensor(&w, NAME("self_attn.v_proj.weight"), KV, H, 0.4f);
        wt->o[l] = tensor(&w, NAME("self_attn.o_proj.weight"), H, Q, 0.3f);
        wt->gate[l] = tensor(&w, NAME("mlp.gate_proj.weight"), s->inter, H, 0.4f);
        wt->up[l] = tensor(&w, NAME("mlp.up_proj.weight"), s->inter, H, 0.4f);
        wt->down[l] = tensor(&w, NAME("mlp.down_proj.weight"), H, s->inter, 0.3f);
#undef NAME
    }
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    errbuf err;
    CHECK_MSG(stw_write(&w, path, &err) == 0, "%s", err.msg);
    stw_free(&w);
}

/* ---- the reference, in double ---- */

static void rms(double *x, const float *w, int n)
{
    double ss = 0;
    for (int i = 0; i < n; i++)
        ss += x[i] * x[i];
    double scale = 1 / sqrt(ss / n + 1e-6);
    for (int i = 0; i < n; i++)
        x[i] = x[i] * scale * w[i];
}

/* y[out] = W[out][in] x[in] */
static void lin(double *y, const float *w, const double *x, int out, int in)
{
    for (int o = 0; o < out; o++) {
        double s = 0;
        for (int k = 0; k < in; k++)
            s += (double)w[(size_t)o * in + k] * x[k];
        y[o] = s;
    }
}

static void rope(double *v, int D, int pos, const float *inv_freq, float attn_factor)
{
    for (int i = 0; i < D / 2; i++) {
        double ang = pos * (double)inv_freq[i];
        double c = cos(ang) * attn_factor, s = sin(ang) * attn_factor;
        double a = v[i], b = v[i + D / 2];
        v[i] = a * c - b * s;
        v[i + D / 2] = b * c + a * s;
    }
}

/* Logits [n][vocab] of the whole sequence. */
static void reference(const struct shape *s, const struct weights *wt, const model_config *cfg,
                      const int32_t *ids, int n, double *logits)
{
    int H = s->hidden, D = s->head_dim, nh = s->heads, nkv = s->kv_heads, I = s->inter;
    int Q = nh * D, KV = nkv * D, group = nh / nkv;
    float inv_freq[64], af;
    model_rope_inv_freq(cfg, inv_freq, &af);
    double *x = calloc((size_t)n * H, sizeof *x), *h = malloc(sizeof *h * H);
    double *q = malloc(sizeof *q * (size_t)n * Q), *k = malloc(sizeof *k * (size_t)n * KV);
    double *v = malloc(sizeof *v * (size_t)n * KV), *att = malloc(sizeof *att * Q);
    double *g = malloc(sizeof *g * I), *u = malloc(sizeof *u * I), *y = malloc(sizeof *y * H);
    double *p = malloc(sizeof *p * n);
    for (int t = 0; t < n; t++)
        for (int i = 0; i < H; i++)
            x[t * H + i] = wt->embed[(size_t)ids[t] * H + i];
    for (int l = 0; l < s->layers; l++) {
        for (int t = 0; t < n; t++) {
            memcpy(h, x + t * H, sizeof *h * H);
            rms(h, wt->attn_norm[l], H);
            lin(q + t * Q, wt->q[l], h, Q, H);
            lin(k + t * KV, wt->k[l], h, KV, H);
            lin(v + t * KV, wt->v[l], h, KV, H);
            for (int hd = 0; hd < nh; hd++) {
                rms(q + t * Q + hd * D, wt->q_norm[l], D);
                rope(q + t * Q + hd * D, D, t, inv_freq, af);
            }
            for (int hd = 0; hd < nkv; hd++) {
                rms(k + t * KV + hd * D, wt->k_norm[l], D);
                rope(k + t * KV + hd * D, D, t, inv_freq, af);
            }
        }
        for (int t = 0; t < n; t++) {
            for (int hd = 0; hd < nh; hd++) {
                int kh = hd / group;
                double max = -INFINITY, sum = 0;
                for (int j = 0; j <= t; j++) {
                    double d = 0;
                    for (int e = 0; e < D; e++)
                        d += q[t * Q + hd * D + e] * k[j * KV + kh * D + e];
                    p[j] = d / sqrt((double)D);
                    max = fmax(max, p[j]);
                }
                for (int j = 0; j <= t; j++)
                    sum += p[j] = exp(p[j] - max);
                for (int e = 0; e < D; e++) {
                    double a = 0;
                    for (int j = 0; j <= t; j++)
                        a += p[j] / sum * v[j * KV + kh * D + e];
                    att[hd * D + e] = a;
                }
            }
            lin(y, wt->o[l], att, H, Q);
            for (int i = 0; i < H; i++)
                x[t * H + i] += y[i];
            memcpy(h, x + t * H, sizeof *h * H);
            rms(h, wt->mlp_norm[l], H);
            lin(g, wt->gate[l], h, I, H);
            lin(u, wt->up[l], h, I, H);
            for (int i = 0; i < I; i++)
                g[i] = g[i] / (1 + exp(-g[i])) * u[i];
            lin(y, wt->down[l], g, H, I);
            for (int i = 0; i < H; i++)
                x[t * H + i] += y[i];
        }
    }
    for (int t = 0; t < n; t++) {
        memcpy(h, x + t * H, sizeof *h * H);
        rms(h, wt->final_norm, H);
        lin(logits + (size_t)t * s->vocab, wt->lm_head, h, s->vocab, H);
    }
    free(x), free(h), free(q), free(k), free(v), free(att), free(g), free(u), free(y), free(p);
}

static void free_weights(const struct shape *s, struct weights *wt)
{
    free(wt->embed);
    free(wt->final_norm);
    if (!s->tied)
        free(wt->lm_head);
    for (int l = 0; l < s->layers; l++) {
        float *ps[] = {wt->attn_norm[l], wt->mlp_norm[l], wt->q_norm[l], wt->k_norm[l],
                       wt->q[l],         wt->k[l],        wt->v[l],      wt->o[l],
                       wt->gate[l],      wt->up[l],       wt->down[l]};
        for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++)
            free(ps[i]);
    }
}

static void check_shape(const struct shape *s)
{
    char dir[] = "/tmp/q3naive.XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    struct weights wt;
    write_model(dir, s, &wt);
    errbuf err = {{0}};
    model m;
    if (model_open(&m, dir, &err)) {
        CHECK_MSG(0, "%s", err.msg);
        return;
    }
    enum { N = 40 };
    int32_t ids[N];
    for (int t = 0; t < N; t++)
        ids[t] = (int32_t)((t * 11 + 3) % s->vocab);
    int V = s->vocab;
    double *want = malloc(sizeof *want * N * V);
    reference(s, &wt, &m.cfg, ids, N, want);
    float *got = malloc(sizeof *got * N * V);
    for (int threads = 1; threads <= 3; threads += 2) {
        eng_options o = {
            .backend = ENG_BACKEND_CPU, .n_threads = threads, .max_seqs = 2, .max_kv_tokens = 256};
        eng *e;
        CHECK_MSG(eng_open(&e, &m, &o, &err) == 0, "%s", err.msg);
        sample_params sp;
        sample_params_greedy(&sp);
        int seq;
        CHECK(eng_seq_add(e, &sp, &seq, &err) == 0);
        /* Two chunks, so positions past the first step use the cache. */
        eng_item a = {.seq = seq, .tokens = ids, .n_tokens = 13, .logits = ENG_LOGITS_ALL};
        eng_item b = {.seq = seq, .tokens = ids + 13, .n_tokens = N - 13, .logits = ENG_LOGITS_ALL};
        CHECK_MSG(eng_step(e, &a, 1, got, NULL, &err) == 0, "%s", err.msg);
        CHECK_MSG(eng_step(e, &b, 1, got + 13 * V, NULL, &err) == 0, "%s", err.msg);
        double worst = 0, big = 0;
        for (int i = 0; i < N * V; i++) {
            worst = fmax(worst, fabs(got[i] - want[i]));
            big = fmax(big, fabs(want[i]));
        }
        printf("vocab %d hidden %d heads %d/%d head_dim %d inter %d%s%s, %d threads: max |logit| "
               "%.3f, max error %.2e\n",
               V, s->hidden, s->heads, s->kv_heads, s->head_dim, s->inter, s->tied ? ", tied" : "",
               s->yarn ? ", yarn" : "", threads, big, worst);
        CHECK_MSG(worst < 1e-4 * big, "max logit error %g (max |logit| %g)", worst, big);
        CHECK(big > 0.5); /* the logits are not degenerate */
        eng_close(e);
    }
    free(want);
    free(got);
    model_close(&m);
    free_weights(s, &wt);
    char path[600];
    snprintf(path, sizeof path, "%s/config.json", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    unlink(path);
    rmdir(dir);
}

int main(void)
{
    const struct shape shapes[] = {
        {37, 24, 2, 6, 2, 10, 50, 0, 0},
        {53, 20, 3, 3, 1, 6, 33, 1, 1},
        {17, 16, 1, 4, 4, 14, 17, 0, 1},
    };
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        check_shape(&shapes[i]);
    return check_exit("test_cpu_naive");
}
