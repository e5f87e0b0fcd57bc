/*
 * demo_model.c - see demo_model.h.
 *
 * Weight scales: linear layers get std 1/sqrt(in_features), so every block
 * adds an update of about unit size to the residual stream; embeddings get
 * std 0.25, so with the tiny model's tied lm_head (hidden 128) the logits
 * have a spread of about 2.8 and the top of 151936 of them stands well
 * clear of the rest. Norm weights are 1 +- 0.1, not all ones, so an engine
 * that skips them gives different output.
 */
#include "demo_model.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "stwrite.h"
#include "strbuf.h"
#include "tokdata.h"

void demo_model_config(model_config *cfg, const demo_model_opts *opts)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->vocab_size = 151936; /* the real tokenizer's embedding rows */
    /* head_dim is 128 as in every Qwen3 model, so kernels written for the
     * real models run the demo too; heads * head_dim != hidden as in Qwen3. */
    if (opts->size == DEMO_SMALL) {
        cfg->hidden_size = 256;
        cfg->n_layers = 4;
        cfg->n_heads = 8;
        cfg->n_kv_heads = 2;
        cfg->head_dim = 128; /* 8 * 128 = 1024 != 256 */
        cfg->intermediate_size = 768;
        cfg->tie_word_embeddings = 0;
    } else {
        cfg->hidden_size = 128;
        cfg->n_layers = 2;
        cfg->n_heads = 4;
        cfg->n_kv_heads = 2;
        cfg->head_dim = 128; /* 4 * 128 = 512 != 128 */
        cfg->intermediate_size = 384;
        cfg->tie_word_embeddings = 1;
    }
    cfg->rms_norm_eps = 1e-6f;
    cfg->rope_theta = 1000000.0;
    cfg->max_position_embeddings = 40960;
    cfg->dtype = opts->awq ? MODEL_F16 : MODEL_BF16;
    cfg->is_awq = opts->awq;
    cfg->awq_group_size = opts->awq ? 128 : 0;
    cfg->eos_ids[0] = 151645;
    cfg->eos_ids[1] = 151643;
    cfg->n_eos = 2;
}

/* ---- deterministic random numbers (splitmix64, Box-Muller) ---------------- */

typedef struct demo_rng {
    uint64_t state;
} demo_rng;

static uint64_t rng_next(demo_rng *r)
{
    uint64_t z = (r->state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double rng_uniform(demo_rng *r) /* in (0, 1) */
{
    return ((double)(rng_next(r) >> 11) + 0.5) * 0x1p-53;
}

static float rng_normal(demo_rng *r)
{
    double u1 = rng_uniform(r), u2 = rng_uniform(r);
    return (float)(sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2));
}

/* ---- tensors ------------------------------------------------------------------ */

static uint16_t *half_buffer(size_t n)
{
    uint16_t *p = malloc(n * sizeof *p);
    if (!p) {
        fputs("make-demo-model: out of memory\n", stderr);
        abort();
    }
    return p;
}

static uint16_t to_half(float x, enum model_dtype dt)
{
    return dt == MODEL_F16 ? model_f32_to_f16(x) : model_f32_to_bf16(x);
}

/* A [rows, cols] table of mean + std * N(0,1) in the model's 16-bit dtype. */
static void add_random(stwriter *w, demo_rng *r, const char *name, enum model_dtype dt,
                       int64_t rows, int64_t cols, float mean, float std)
{
    size_t n = (size_t)(rows * (cols ? cols : 1));
    uint16_t *p = half_buffer(n);
    for (size_t i = 0; i < n; i++)
        p[i] = to_half(mean + std * rng_normal(r), dt);
    int64_t shape[2] = {rows, cols};
    stw_add_owned(w, name, dt, cols ? 2 : 1, cols ? shape : &shape[0], p);
}

static uint32_t pack8(const int *vals, int64_t stride)
{
    uint32_t word = 0;
    for (int i = 0; i < 8; i++)
        word |= (uint32_t)vals[model_awq_order[i] * stride] << (4 * i);
    return word;
}

/* Quantizes W [out][in] to AWQ (asymmetric 4-bit per group of `group` input
 * rows and output column) and adds prefix.{qweight,qzeros,scales}. */
static void add_awq(stwriter *w, const char *prefix, const float *W, int64_t out_f, int64_t in_f,
                    int group)
{
    int64_t n_groups = in_f / group, words = out_f / 8;
    int *q = malloc((size_t)(in_f * out_f) * sizeof *q);     /* [in][out] */
    int *z = malloc((size_t)(n_groups * out_f) * sizeof *z); /* [group][out] */
    uint16_t *scales = half_buffer((size_t)(n_groups * out_f));
    int32_t *qweight = malloc((size_t)(in_f * words) * sizeof *qweight);
    int32_t *qzeros = malloc((size_t)(n_groups * words) * sizeof *qzeros);
    if (!q || !z || !qweight || !qzeros) {
        fputs("make-demo-model: out of memory\n", stderr);
        abort();
    }
    for (int64_t g = 0; g < n_groups; g++)
        for (int64_t n = 0; n < out_f; n++) {
            float lo = 0, hi = 0;
            for (int64_t k = g * group; k < (g + 1) * group; k++) {
                float v = W[n * in_f + k];
                lo = v < lo ? v : lo;
                hi = v > hi ? v : hi;
            }
            float s_raw = (hi - lo) / 15.0f;
            uint16_t s16 = model_f32_to_f16(s_raw > 1e-5f ? s_raw : 1e-5f);
            float s = model_f16_to_f32(s16);
            int zero = (int)lrintf(-lo / s);
            zero = zero < 0 ? 0 : zero > 15 ? 15 : zero;
            scales[g * out_f + n] = s16;
            z[g * out_f + n] = zero;
            for (int64_t k = g * group; k < (g + 1) * group; k++) {
                int v = (int)lrintf(W[n * in_f + k] / s) + zero;
                q[k * out_f + n] = v < 0 ? 0 : v > 15 ? 15 : v;
            }
        }
    for (int64_t k = 0; k < in_f; k++)
        for (int64_t c = 0; c < words; c++)
            qweight[k * words + c] = (int32_t)pack8(&q[k * out_f + 8 * c], 1);
    for (int64_t g = 0; g < n_groups; g++)
        for (int64_t c = 0; c < words; c++)
            qzeros[g * words + c] = (int32_t)pack8(&z[g * out_f + 8 * c], 1);
    char name[256];
    int64_t shape_q[2] = {in_f, words}, shape_z[2] = {n_groups, words},
            shape_s[2] = {n_groups, out_f};
    snprintf(name, sizeof name, "%s.qweight", prefix);
    stw_add_owned(w, name, MODEL_I32, 2, shape_q, qweight);
    snprintf(name, sizeof name, "%s.qzeros", prefix);
    stw_add_owned(w, name, MODEL_I32, 2, shape_z, qzeros);
    snprintf(name, sizeof name, "%s.scales", prefix);
    stw_add_owned(w, name, MODEL_F16, 2, shape_s, scales);
    free(q);
    free(z);
}

static void add_linear(stwriter *w, demo_rng *r, const model_config *cfg, const char *prefix,
                       int64_t out_f, int64_t in_f)
{
    float std = 1.0f / sqrtf((float)in_f);
    if (!cfg->is_awq) {
        char name[256];
        snprintf(name, sizeof name, "%s.weight", prefix);
        add_random(w, r, name, cfg->dtype, out_f, in_f, 0, std);
        return;
    }
    float *W = malloc((size_t)(out_f * in_f) * sizeof *W);
    if (!W) {
        fputs("make-demo-model: out of memory\n", stderr);
        abort();
    }
    for (int64_t i = 0; i < out_f * in_f; i++)
        W[i] = std * rng_normal(r);
    add_awq(w, prefix, W, out_f, in_f, cfg->awq_group_size);
    free(W);
}

static void build_weights(stwriter *w, const model_config *cfg, uint64_t seed)
{
    demo_rng r = {seed * 0x2545f4914f6cdd1dull + 1};
    enum model_dtype dt = cfg->dtype;
    int64_t H = cfg->hidden_size, D = cfg->head_dim;
    int64_t q_out = (int64_t)cfg->n_heads * D, kv_out = (int64_t)cfg->n_kv_heads * D;
    add_random(w, &r, "model.embed_tokens.weight", dt, cfg->vocab_size, H, 0, 0.25f);
    for (int l = 0; l < cfg->n_layers; l++) {
        char p[128], name[256];
#define NORM(suffix, n)                                                                            \
    snprintf(name, sizeof name, "model.layers.%d.%s", l, suffix);                                  \
    add_random(w, &r, name, dt, n, 0, 1.0f, 0.1f);
#define LINEAR(suffix, out_f, in_f)                                                                \
    snprintf(p, sizeof p, "model.layers.%d.%s", l, suffix);                                        \
    add_linear(w, &r, cfg, p, out_f, in_f);
        NORM("input_layernorm.weight", H)
        LINEAR("self_attn.q_proj", q_out, H)
        LINEAR("self_attn.k_proj", kv_out, H)
        LINEAR("self_attn.v_proj", kv_out, H)
        LINEAR("self_attn.o_proj", H, q_out)
        NORM("self_attn.q_norm.weight", D)
        NORM("self_attn.k_norm.weight", D)
        NORM("post_attention_layernorm.weight", H)
        LINEAR("mlp.gate_proj", cfg->intermediate_size, H)
        LINEAR("mlp.up_proj", cfg->intermediate_size, H)
        LINEAR("mlp.down_proj", H, cfg->intermediate_size)
#undef NORM
#undef LINEAR
    }
    add_random(w, &r, "model.norm.weight", dt, H, 0, 1.0f, 0.1f);
    if (!cfg->tie_word_embeddings)
        add_random(w, &r, "lm_head.weight", dt, cfg->vocab_size, H, 0, 0.25f);
}

/* config.json in the form Qwen's own checkpoints use. */
static json_t *config_json(const model_config *cfg)
{
    json_t *c = json_object();
    json_object_set_new(c, "architectures", json_pack("[s]", "Qwen3ForCausalLM"));
    json_object_set_new(c, "model_type", json_string("qwen3"));
    json_object_set_new(c, "attention_bias", json_false());
    json_object_set_new(c, "attention_dropout", json_real(0.0));
    json_object_set_new(c, "bos_token_id", json_integer(151643));
    json_object_set_new(c, "eos_token_id", json_integer(151645));
    json_object_set_new(c, "head_dim", json_integer(cfg->head_dim));
    json_object_set_new(c, "hidden_act", json_string("silu"));
    json_object_set_new(c, "hidden_size", json_integer(cfg->hidden_size));
    json_object_set_new(c, "initializer_range", json_real(0.02));
    json_object_set_new(c, "intermediate_size", json_integer(cfg->intermediate_size));
    json_object_set_new(c, "max_position_embeddings", json_integer(cfg->max_position_embeddings));
    json_object_set_new(c, "max_window_layers", json_integer(cfg->n_layers));
    json_object_set_new(c, "num_attention_heads", json_integer(cfg->n_heads));
    json_object_set_new(c, "num_hidden_layers", json_integer(cfg->n_layers));
    json_object_set_new(c, "num_key_value_heads", json_integer(cfg->n_kv_heads));
    json_object_set_new(c, "rms_norm_eps", json_real(cfg->rms_norm_eps));
    json_object_set_new(c, "rope_scaling", json_null());
    json_object_set_new(c, "rope_theta", json_real(cfg->rope_theta));
    json_object_set_new(c, "sliding_window", json_null());
    json_object_set_new(c, "tie_word_embeddings", json_boolean(cfg->tie_word_embeddings));
    json_object_set_new(c, "torch_dtype",
                        json_string(cfg->dtype == MODEL_F16 ? "float16" : "bfloat16"));
    json_object_set_new(c, "transformers_version", json_string("4.51.0"));
    json_object_set_new(c, "use_cache", json_true());
    json_object_set_new(c, "use_sliding_window", json_false());
    json_object_set_new(c, "vocab_size", json_integer(cfg->vocab_size));
    if (cfg->is_awq)
        json_object_set_new(c, "quantization_config",
                            json_pack("{s:i, s:i, s:n, s:s, s:s, s:b}", "bits", 4, "group_size",
                                      cfg->awq_group_size, "modules_to_not_convert", "quant_method",
                                      "awq", "version", "gemm", "zero_point", 1));
    return c;
}

int demo_model_write(const char *dir, const demo_model_opts *opts, errbuf *err)
{
    if (mkdir(dir, 0777) != 0 && errno != EEXIST)
        return errorf(err, "%s: %s", dir, strerror(errno));
    model_config cfg;
    demo_model_config(&cfg, opts);

    strbuf path = STRBUF_INIT;
    sb_addf(&path, "%s/config.json", dir);
    json_t *c = config_json(&cfg);
    int rc = json_dump_file(c, path.buf, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(c);
    if (rc) {
        errorf(err, "%s: could not write: %s", path.buf, strerror(errno));
        sb_release(&path);
        return -1;
    }

    stwriter w;
    stw_init(&w);
    build_weights(&w, &cfg, opts->seed);
    sb_reset(&path);
    sb_addf(&path, "%s/model.safetensors", dir);
    rc = stw_write(&w, path.buf, err);
    stw_free(&w);
    sb_release(&path);
    if (rc)
        return -1;
    return tokdata_extract(dir, err);
}
