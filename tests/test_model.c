/*
 * test_model.c - the model loader against Hugging Face's own checkpoints and
 * against files that lie.
 *
 * tests/fixtures/ref/models/ holds tiny Qwen3 checkpoints written by
 * tests/gen_model_ref.py with transformers (bf16 untied, tied, YaRN, AWQ,
 * sharded) and rope_probes.json, transformers' RoPE tables for several
 * configs. The error cases are built here, in a temporary folder: a small
 * valid model, then one defect at a time, each of which must be refused
 * with a message naming the file and the tensor or field.
 */
#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "demo_model.h"
#include "model.h"
#include "strbuf.h"
#include "stwrite.h"

static const char *srcdir(void)
{
    const char *s = getenv("top_srcdir");
    return s && *s ? s : ".";
}

static json_t *load_json(const char *path)
{
    json_error_t jerr;
    json_t *j = json_load_file(path, 0, &jerr);
    if (!j)
        fprintf(stderr, "%s: %s\n", path, jerr.text);
    return j;
}

static long file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

static void rm_rf(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        char p[4096];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        struct stat st;
        if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode))
            rm_rf(p);
        else
            unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

static int rel_close(double a, double b, double tol)
{
    return fabs(a - b) <= tol * fmax(fabs(a), fabs(b)) + 1e-30;
}

/* ---- fp16 / bf16 ---------------------------------------------------------------- */

static void test_half_conversions(void)
{
    CHECK(model_f16_to_f32(0x3c00) == 1.0f);
    CHECK(model_f16_to_f32(0xc000) == -2.0f);
    CHECK(model_f16_to_f32(0x7bff) == 65504.0f);
    CHECK(model_f16_to_f32(0x0001) == 0x1p-24f);
    CHECK(model_f16_to_f32(0x0400) == 0x1p-14f);
    CHECK(isinf(model_f16_to_f32(0x7c00)));
    CHECK(isnan(model_f16_to_f32(0x7e00)));
    CHECK(model_bf16_to_f32(0x3f80) == 1.0f);
    CHECK(model_bf16_to_f32(0xc040) == -3.0f);
    /* every finite half survives the round trip through fp32 */
    int bad16 = 0, badbf = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = model_f16_to_f32((uint16_t)h);
        if (!isnan(f) && model_f32_to_f16(f) != h)
            bad16++;
        float g = model_bf16_to_f32((uint16_t)h);
        if (!isnan(g) && model_f32_to_bf16(g) != h)
            badbf++;
        if (isnan(f) && !isnan(model_f16_to_f32(model_f32_to_f16(f))))
            bad16++;
    }
    CHECK_INT_EQ(bad16, 0);
    CHECK_INT_EQ(badbf, 0);
    /* round to nearest, ties to even */
    CHECK_INT_EQ(model_f32_to_f16(1.0f + 0x1p-11f), 0x3c00);     /* tie, down to even */
    CHECK_INT_EQ(model_f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3c02); /* tie, up to even */
    CHECK_INT_EQ(model_f32_to_f16(1.0f + 0x1p-11f + 0x1p-20f), 0x3c01);
    CHECK_INT_EQ(model_f32_to_f16(65519.0f), 0x7bff);
    CHECK_INT_EQ(model_f32_to_f16(65520.0f), 0x7c00);     /* overflows to inf */
    CHECK_INT_EQ(model_f32_to_f16(0x1p-25f), 0x0000);     /* tie to even zero */
    CHECK_INT_EQ(model_f32_to_f16(0x1p-25f * 3), 0x0002); /* 1.5 ulp: up to even */
    CHECK_INT_EQ(model_f32_to_f16(-0x1p-24f), 0x8001);
    CHECK_INT_EQ(model_f32_to_f16(0x1p-14f - 0x1p-25f), 0x0400); /* rounds up to normal */
    CHECK_INT_EQ(model_f32_to_bf16(1.0f + 0x1p-8f), 0x3f80);     /* tie, to even */
    CHECK_INT_EQ(model_f32_to_bf16(1.0f + 3 * 0x1p-8f), 0x3f82);
    CHECK(isnan(model_bf16_to_f32(model_f32_to_bf16(NAN))));
}

/* ---- Qwen3-14B -------------------------------------------------------------------- */

/* Qwen/Qwen3-14B-AWQ's config.json as published. */
static const char *QWEN3_14B_AWQ_CONFIG =
    "{\"architectures\": [\"Qwen3ForCausalLM\"], \"attention_bias\": false,"
    " \"attention_dropout\": 0.0, \"bos_token_id\": 151643, \"eos_token_id\": 151645,"
    " \"head_dim\": 128, \"hidden_act\": \"silu\", \"hidden_size\": 5120,"
    " \"initializer_range\": 0.02, \"intermediate_size\": 17408,"
    " \"max_position_embeddings\": 40960, \"max_window_layers\": 40, \"model_type\": \"qwen3\","
    " \"num_attention_heads\": 40, \"num_hidden_layers\": 40, \"num_key_value_heads\": 8,"
    " \"quantization_config\": {\"bits\": 4, \"group_size\": 128, \"modules_to_not_convert\":"
    " null, \"quant_method\": \"awq\", \"version\": \"gemm\", \"zero_point\": true},"
    " \"rms_norm_eps\": 1e-06, \"rope_scaling\": null, \"rope_theta\": 1000000,"
    " \"sliding_window\": null, \"tie_word_embeddings\": false, \"torch_dtype\": \"float16\","
    " \"transformers_version\": \"4.51.0\", \"use_cache\": true, \"use_sliding_window\": false,"
    " \"vocab_size\": 151936}";

static void test_qwen3_14b(void)
{
    model_config a, b;
    model_config_qwen3_14b(&a);
    CHECK_INT_EQ(a.hidden_size, 5120);
    CHECK_INT_EQ(a.n_layers, 40);
    CHECK_INT_EQ(a.n_heads, 40);
    CHECK_INT_EQ(a.n_kv_heads, 8);
    CHECK_INT_EQ(a.head_dim, 128);
    CHECK_INT_EQ(a.intermediate_size, 17408);
    CHECK_INT_EQ(a.vocab_size, 151936);
    errbuf err = {""};
    int rc = model_config_parse(&b, QWEN3_14B_AWQ_CONFIG, "Qwen3-14B-AWQ/config.json", &err);
    CHECK_MSG(rc == 0, "%s", err.msg);
    /* the synthetic config is exactly what the real checkpoint's config says */
    CHECK_INT_EQ(a.vocab_size, b.vocab_size);
    CHECK_INT_EQ(a.hidden_size, b.hidden_size);
    CHECK_INT_EQ(a.n_layers, b.n_layers);
    CHECK_INT_EQ(a.n_heads, b.n_heads);
    CHECK_INT_EQ(a.n_kv_heads, b.n_kv_heads);
    CHECK_INT_EQ(a.head_dim, b.head_dim);
    CHECK_INT_EQ(a.intermediate_size, b.intermediate_size);
    CHECK(a.rms_norm_eps == b.rms_norm_eps);
    CHECK(a.rope_theta == b.rope_theta);
    CHECK_INT_EQ(a.max_position_embeddings, b.max_position_embeddings);
    CHECK_INT_EQ(a.tie_word_embeddings, b.tie_word_embeddings);
    CHECK_INT_EQ(a.rope_yarn, b.rope_yarn);
    CHECK_INT_EQ(a.dtype, b.dtype);
    CHECK_INT_EQ(a.is_awq, b.is_awq);
    CHECK_INT_EQ(a.awq_group_size, b.awq_group_size);
    CHECK_INT_EQ(a.n_eos, b.n_eos);
    for (int i = 0; i < a.n_eos && i < b.n_eos; i++)
        CHECK_INT_EQ(a.eos_ids[i], b.eos_ids[i]);
    CHECK(memcmp(&a, &b, sizeof a) == 0);
}

/* ---- RoPE against transformers -------------------------------------------------- */

static int check_inv_freq(const char *what, const model_config *cfg, const json_t *want_freq,
                          double want_attn)
{
    int half = cfg->head_dim / 2, bad = 0;
    float *got = calloc((size_t)half, sizeof *got);
    float attn = 0;
    model_rope_inv_freq(cfg, got, &attn);
    CHECK_MSG((int)json_array_size(want_freq) == half, "%s: %zu frequencies, want %d", what,
              json_array_size(want_freq), half);
    double worst = 0;
    for (int i = 0; i < half && i < (int)json_array_size(want_freq); i++) {
        double w = json_number_value(json_array_get(want_freq, i));
        double rel = fabs(got[i] - w) / fabs(w);
        worst = rel > worst ? rel : worst;
        if (rel > 2e-6) {
            bad++;
            fprintf(stderr, "%s: inv_freq[%d] = %.9g, transformers %.9g\n", what, i, got[i], w);
        }
    }
    CHECK_MSG(bad == 0, "%s: %d of %d frequencies differ (worst relative %.2g)", what, bad, half,
              worst);
    CHECK_MSG(rel_close(attn, want_attn, 1e-6), "%s: attention factor %.9g, transformers %.9g",
              what, attn, want_attn);
    free(got);
    return bad;
}

static void test_rope_probes(void)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/fixtures/ref/models/rope_probes.json", srcdir());
    json_t *root = load_json(path);
    CHECK(root != NULL);
    if (!root)
        return;
    json_t *probes = json_object_get(root, "probes");
    CHECK(json_array_size(probes) >= 5);
    size_t i;
    json_t *p;
    int n_yarn = 0;
    json_array_foreach(probes, i, p)
    {
        const char *name = json_string_value(json_object_get(p, "name"));
        if (json_object_get(p, "error"))
            continue;
        char *text = json_dumps(json_object_get(p, "config"), 0);
        model_config cfg;
        errbuf err = {""};
        int rc = model_config_parse(&cfg, text, name, &err);
        free(text);
        CHECK_MSG(rc == 0, "%s", err.msg);
        if (rc)
            continue;
        n_yarn += cfg.rope_yarn;
        check_inv_freq(name, &cfg, json_object_get(p, "inv_freq"),
                       json_number_value(json_object_get(p, "attention_scaling")));
    }
    CHECK(n_yarn >= 4);
    json_decref(root);
}

/* ---- the reference checkpoints ------------------------------------------------------ */

static int64_t cfg_int(const json_t *c, const char *key)
{
    return json_integer_value(json_object_get(c, key));
}

static void check_linear(const char *what, const model_linear *l, int64_t out_f, int64_t in_f,
                         int awq, int group)
{
    CHECK_MSG(l->out_features == out_f && l->in_features == in_f, "%s: [%lld, %lld]", what,
              (long long)l->out_features, (long long)l->in_features);
    CHECK_MSG(l->is_awq == awq, "%s: is_awq %d", what, l->is_awq);
    if (!awq) {
        CHECK(l->weight.data != NULL && l->weight.dtype == MODEL_BF16);
        CHECK(l->weight.shape[0] == out_f && l->weight.shape[1] == in_f);
        return;
    }
    CHECK_INT_EQ(l->group_size, group);
    CHECK(l->qweight.dtype == MODEL_I32 && l->qweight.shape[0] == in_f &&
          l->qweight.shape[1] == out_f / 8);
    CHECK(l->qzeros.dtype == MODEL_I32 && l->qzeros.shape[0] == in_f / group &&
          l->qzeros.shape[1] == out_f / 8);
    CHECK(l->scales.dtype == MODEL_F16 && l->scales.shape[0] == in_f / group &&
          l->scales.shape[1] == out_f);
}

/* AutoAWQ's unpacking (shift every nibble out, then undo the interleave with
 * the reverse order), written apart from model.c's packing loop. */
static float awq_element_direct(const model_linear *l, int64_t n, int64_t k)
{
    static const int reverse[8] = {0, 4, 1, 5, 2, 6, 3, 7};
    int64_t words = l->out_features / 8, g = k / l->group_size;
    const int32_t *qw = l->qweight.data, *qz = l->qzeros.data;
    const uint16_t *sc = l->scales.data;
    int shift = 4 * reverse[n % 8];
    int q = (int)(((uint32_t)qw[k * words + n / 8] >> shift) & 15);
    int z = (int)(((uint32_t)qz[g * words + n / 8] >> shift) & 15);
    return (float)(q - z) * model_f16_to_f32(sc[g * l->out_features + n]);
}

static void check_awq_dequant(const char *what, const model_linear *l)
{
    int64_t out_f = l->out_features, in_f = l->in_features;
    float *w = malloc((size_t)(out_f * in_f) * sizeof *w);
    model_linear_to_f32(l, w);
    int bad = 0;
    double sum2 = 0;
    for (int64_t i = 0; i < out_f * in_f; i++)
        sum2 += (double)w[i] * w[i];
    /* a spread of points, including the last column of every word */
    for (int64_t t = 0; t < 97; t++) {
        int64_t n = (t * 37 + (t % 8)) % out_f, k = (t * 53 + 11) % in_f;
        float want = awq_element_direct(l, n, k);
        if (w[n * in_f + k] != want) {
            bad++;
            fprintf(stderr, "%s: w[%lld][%lld] = %g, direct unpacking gives %g\n", what,
                    (long long)n, (long long)k, w[n * in_f + k], want);
        }
    }
    CHECK_MSG(bad == 0, "%s: %d dequantized elements differ", what, bad);
    /* the generator drew weights with std 0.1; 4 bits keep that */
    double rms = sqrt(sum2 / (double)(out_f * in_f));
    CHECK_MSG(rms > 0.07 && rms < 0.13, "%s: rms %g", what, rms);
    free(w);
}

static void test_reference_model(const char *name)
{
    char dir[4096], path[4200];
    snprintf(dir, sizeof dir, "%s/tests/fixtures/ref/models/%s", srcdir(), name);
    model m;
    errbuf err = {""};
    int rc = model_open(&m, dir, &err);
    CHECK_MSG(rc == 0, "%s: %s", name, err.msg);
    if (rc)
        return;
    snprintf(path, sizeof path, "%s/config.json", dir);
    json_t *c = load_json(path);
    snprintf(path, sizeof path, "%s/reference.json", dir);
    json_t *ref = load_json(path);
    CHECK(c && ref);
    if (!c || !ref) {
        model_close(&m);
        return;
    }
    const model_config *cfg = &m.cfg;
    CHECK_INT_EQ(cfg->vocab_size, cfg_int(c, "vocab_size"));
    CHECK_INT_EQ(cfg->hidden_size, cfg_int(c, "hidden_size"));
    CHECK_INT_EQ(cfg->n_layers, cfg_int(c, "num_hidden_layers"));
    CHECK_INT_EQ(cfg->n_heads, cfg_int(c, "num_attention_heads"));
    CHECK_INT_EQ(cfg->n_kv_heads, cfg_int(c, "num_key_value_heads"));
    CHECK_INT_EQ(cfg->head_dim, cfg_int(c, "head_dim"));
    CHECK_INT_EQ(cfg->intermediate_size, cfg_int(c, "intermediate_size"));
    CHECK_INT_EQ(cfg->max_position_embeddings, cfg_int(c, "max_position_embeddings"));
    CHECK(cfg->head_dim * cfg->n_heads != cfg->hidden_size); /* the case that matters */
    CHECK(cfg->rms_norm_eps == 1e-6f);
    CHECK_INT_EQ(cfg->tie_word_embeddings, json_is_true(json_object_get(c, "tie_word_embeddings")));
    json_t *rp = json_object_get(c, "rope_parameters");
    double theta = json_number_value(json_object_get(rp ? rp : c, "rope_theta"));
    CHECK(cfg->rope_theta == theta);
    int awq = json_object_get(c, "quantization_config") != NULL;
    CHECK_INT_EQ(cfg->is_awq, awq);
    CHECK_INT_EQ(cfg->dtype, awq ? MODEL_F16 : MODEL_BF16);
    CHECK_INT_EQ(cfg->n_eos, 2);
    CHECK(cfg->eos_ids[0] == 151645 && cfg->eos_ids[1] == 151643);

    /* shapes */
    int64_t H = cfg->hidden_size, D = cfg->head_dim, I = cfg->intermediate_size;
    CHECK(m.embed.n_dims == 2 && m.embed.shape[0] == cfg->vocab_size && m.embed.shape[1] == H);
    CHECK(m.lm_head.n_dims == 2 && m.lm_head.shape[0] == cfg->vocab_size &&
          m.lm_head.shape[1] == H);
    CHECK(m.final_norm.n_dims == 1 && m.final_norm.shape[0] == H);
    if (cfg->tie_word_embeddings)
        CHECK(m.lm_head.data == m.embed.data);
    else
        CHECK(m.lm_head.data != m.embed.data && !strcmp(m.lm_head.name, "lm_head.weight"));
    for (int l = 0; l < cfg->n_layers; l++) {
        const model_layer *L = &m.layers[l];
        char what[64];
        snprintf(what, sizeof what, "%s layer %d", name, l);
        CHECK(L->attn_norm.shape[0] == H && L->mlp_norm.shape[0] == H);
        CHECK(L->q_norm.shape[0] == D && L->k_norm.shape[0] == D);
        int g = cfg->awq_group_size;
        check_linear(what, &L->q, cfg->n_heads * D, H, awq, g);
        check_linear(what, &L->k, cfg->n_kv_heads * D, H, awq, g);
        check_linear(what, &L->v, cfg->n_kv_heads * D, H, awq, g);
        check_linear(what, &L->o, H, cfg->n_heads * D, awq, g);
        check_linear(what, &L->gate, I, H, awq, g);
        check_linear(what, &L->up, I, H, awq, g);
        check_linear(what, &L->down, H, I, awq, g);
    }
    char want_name[96];
    snprintf(want_name, sizeof want_name, "model.layers.%d.post_attention_layernorm.weight",
             cfg->n_layers - 1);
    CHECK_STR_EQ(m.layers[cfg->n_layers - 1].mlp_norm.name, want_name);

    /* values: the generator drew norm weights 1 + 0.2 N(0,1) and the rest
     * N(0, 0.1^2); reading the wrong bytes would not look like that */
    float *v = malloc((size_t)H * sizeof *v);
    model_tensor_to_f32(&m.final_norm, 0, H, v);
    double mean = 0;
    for (int64_t i = 0; i < H; i++)
        mean += v[i] / H;
    CHECK_MSG(mean > 0.85 && mean < 1.15, "%s: final norm mean %g", name, mean);
    float *row = malloc((size_t)H * sizeof *row);
    double sum2 = 0;
    for (int r = 0; r < 8; r++) {
        model_tensor_to_f32(&m.embed, (int64_t)(r * 61 % cfg->vocab_size) * H, H, row);
        for (int64_t i = 0; i < H; i++)
            sum2 += (double)row[i] * row[i];
    }
    double rms = sqrt(sum2 / (8.0 * H));
    CHECK_MSG(rms > 0.07 && rms < 0.13, "%s: embedding rms %g", name, rms);
    free(row);
    free(v);

    if (awq) {
        check_awq_dequant("awq q_proj", &m.layers[0].q);
        check_awq_dequant("awq down_proj", &m.layers[1].down);
        check_awq_dequant("awq k_proj", &m.layers[1].k);
    } else {
        /* dense rows convert exactly: bf16 is the top half of fp32 */
        const model_linear *q = &m.layers[0].q;
        float *w = malloc((size_t)(q->out_features * q->in_features) * sizeof *w);
        model_linear_to_f32(q, w);
        const uint16_t *raw = q->weight.data;
        int64_t last = q->out_features * q->in_features - 1;
        CHECK(w[0] == model_bf16_to_f32(raw[0]) && w[last] == model_bf16_to_f32(raw[last]));
        free(w);
    }

    /* reference.json: the format the CPU engine's tests read */
    CHECK_INT_EQ(cfg_int(ref, "vocab"), cfg->vocab_size);
    json_t *cases = json_object_get(ref, "cases");
    CHECK(json_array_size(cases) >= 1);
    size_t i;
    json_t *cs;
    json_array_foreach(cases, i, cs)
    {
        json_t *ids = json_object_get(cs, "ids");
        snprintf(path, sizeof path, "%s/%s", dir,
                 json_string_value(json_object_get(cs, "logits_file")));
        CHECK_MSG(file_size(path) == (long)(json_array_size(ids) * cfg->vocab_size * 4),
                  "%s: %ld bytes", path, file_size(path));
        CHECK_INT_EQ(json_array_size(json_object_get(cs, "greedy")), 8);
        CHECK(json_number_value(json_object_get(cs, "max_abs_logit")) > 1.0);
        if (!strcmp(name, "yarn"))
            CHECK(json_array_size(ids) > 32); /* past original_max_position_embeddings */
    }
    check_inv_freq(name, cfg, json_object_get(ref, "inv_freq"),
                   json_number_value(json_object_get(ref, "attention_scaling")));
    if (!strcmp(name, "yarn")) {
        CHECK(cfg->rope_yarn && cfg->yarn_factor == 4.0 && cfg->yarn_original_max_position == 32);
        CHECK(json_number_value(json_object_get(ref, "attention_scaling")) > 1.1);
    }
    json_decref(c);
    json_decref(ref);
    model_close(&m);
}

/* ---- a synthetic model to break ------------------------------------------------------ */

/* vocab 16, hidden 16, 1 layer, 2 heads of 12 (24 != 16), 2 kv heads,
 * intermediate 32: every in_features divides by the AWQ group 8 and every
 * out_features by 8, so the same shapes serve dense and AWQ. */
enum { V = 16, H = 16, NH = 2, NKV = 2, HD = 12, FF = 32, GROUP = 8 };

struct variant {
    const char *skip;    /* leave this tensor out */
    const char *reshape; /* give this tensor new_shape (and matching bytes) */
    int64_t new_shape[2];
    const char *retype; /* store this tensor as new_dtype */
    enum model_dtype new_dtype;
    int awq; /* q/k/v/o/gate/up/down as AWQ */
    int tied;
};

static float synth_value(uint32_t *state)
{
    *state = *state * 1664525u + 1013904223u;
    return ((float)(*state >> 8) / 16777216.0f - 0.5f) * 0.5f;
}

static void add_synth(stwriter *w, const struct variant *var, const char *name, int n_dims,
                      int64_t d0, int64_t d1, enum model_dtype dt, uint32_t *state)
{
    if (var->skip && !strcmp(var->skip, name))
        return;
    int64_t shape[2] = {d0, d1};
    if (var->reshape && !strcmp(var->reshape, name)) {
        shape[0] = var->new_shape[0];
        shape[1] = var->new_shape[1];
    }
    if (var->retype && !strcmp(var->retype, name))
        dt = var->new_dtype;
    size_t n = (size_t)(shape[0] * (n_dims > 1 ? shape[1] : 1));
    void *data = calloc(n, 4);
    for (size_t i = 0; i < n; i++) {
        float x = synth_value(state);
        if (dt == MODEL_BF16)
            ((uint16_t *)data)[i] = model_f32_to_bf16(x);
        else if (dt == MODEL_F16)
            ((uint16_t *)data)[i] = model_f32_to_f16(x);
        else if (dt == MODEL_F32)
            ((float *)data)[i] = x;
        else
            ((int32_t *)data)[i] = (int32_t)(*state);
    }
    stw_add_owned(w, name, dt, n_dims, shape, data);
}

static void add_synth_linear(stwriter *w, const struct variant *var, const char *prefix,
                             int64_t out_f, int64_t in_f, uint32_t *state)
{
    char name[256];
    if (!var->awq) {
        snprintf(name, sizeof name, "%s.weight", prefix);
        add_synth(w, var, name, 2, out_f, in_f, MODEL_BF16, state);
        return;
    }
    snprintf(name, sizeof name, "%s.qweight", prefix);
    add_synth(w, var, name, 2, in_f, out_f / 8, MODEL_I32, state);
    snprintf(name, sizeof name, "%s.qzeros", prefix);
    add_synth(w, var, name, 2, in_f / GROUP, out_f / 8, MODEL_I32, state);
    snprintf(name, sizeof name, "%s.scales", prefix);
    add_synth(w, var, name, 2, in_f / GROUP, out_f, MODEL_F16, state);
}

static void synth_tensors(stwriter *w, const struct variant *var)
{
    uint32_t state = 12345;
    add_synth(w, var, "model.embed_tokens.weight", 2, V, H, MODEL_BF16, &state);
    const char *p = "model.layers.0";
    char name[128];
#define N(suffix, n)                                                                               \
    snprintf(name, sizeof name, "%s.%s", p, suffix);                                               \
    add_synth(w, var, name, 1, n, 0, MODEL_BF16, &state);
#define L(suffix, o, i)                                                                            \
    snprintf(name, sizeof name, "%s.%s", p, suffix);                                               \
    add_synth_linear(w, var, name, o, i, &state);
    N("input_layernorm.weight", H)
    N("post_attention_layernorm.weight", H)
    N("self_attn.q_norm.weight", HD)
    N("self_attn.k_norm.weight", HD)
    L("self_attn.q_proj", NH * HD, H)
    L("self_attn.k_proj", NKV * HD, H)
    L("self_attn.v_proj", NKV * HD, H)
    L("self_attn.o_proj", H, NH * HD)
    L("mlp.gate_proj", FF, H)
    L("mlp.up_proj", FF, H)
    L("mlp.down_proj", H, FF)
#undef N
#undef L
    add_synth(w, var, "model.norm.weight", 1, H, 0, MODEL_BF16, &state);
    if (!var->tied)
        add_synth(w, var, "lm_head.weight", 2, V, H, MODEL_BF16, &state);
}

static const char *BASE_CONFIG =
    "{\"model_type\": \"qwen3\", \"vocab_size\": 16, \"hidden_size\": 16,"
    " \"num_hidden_layers\": 1, \"num_attention_heads\": 2, \"num_key_value_heads\": 2,"
    " \"head_dim\": 12, \"intermediate_size\": 32, \"rms_norm_eps\": 1e-6,"
    " \"rope_theta\": 10000.0, \"rope_scaling\": null, \"max_position_embeddings\": 64,"
    " \"tie_word_embeddings\": false, \"torch_dtype\": \"bfloat16\", \"eos_token_id\": 151645}";

static const char *AWQ_QUANT =
    "{\"quantization_config\": {\"quant_method\": \"awq\", \"bits\": 4, \"group_size\": 8,"
    " \"version\": \"gemm\", \"zero_point\": true}, \"torch_dtype\": \"float16\"}";

static char tmp_root[256];
static int n_cases;

/* A fresh folder with config.json = BASE_CONFIG updated with merge (a JSON
 * object; a null value deletes the key) and model.safetensors per var. */
static void make_model(char *dir, size_t dir_size, const char *merge, const struct variant *var)
{
    snprintf(dir, dir_size, "%s/m%d", tmp_root, n_cases++);
    mkdir(dir, 0777);
    json_t *cfg = json_loads(BASE_CONFIG, 0, NULL);
    if (merge) {
        json_t *m = json_loads(merge, 0, NULL);
        if (!m)
            fprintf(stderr, "bad merge json: %s\n", merge);
        const char *key;
        json_t *v;
        json_object_foreach(m, key, v)
        {
            if (json_is_null(v) && strcmp(key, "rope_scaling") && strcmp(key, "head_dim"))
                json_object_del(cfg, key);
            else
                json_object_set(cfg, key, v);
        }
        json_decref(m);
    }
    char path[512];
    snprintf(path, sizeof path, "%s/config.json", dir);
    json_dump_file(cfg, path, JSON_INDENT(1));
    json_decref(cfg);
    if (!var)
        return;
    stwriter w;
    stw_init(&w);
    synth_tensors(&w, var);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    errbuf err;
    if (stw_write(&w, path, &err))
        fprintf(stderr, "%s\n", err.msg);
    stw_free(&w);
}

#define EXPECT_OPEN_FAIL(dir, ...)                                                                 \
    expect_open_fail(__LINE__, dir, (const char *[]){__VA_ARGS__, NULL})

static void expect_open_fail(int line, const char *dir, const char **needles)
{
    model m;
    errbuf err = {""};
    int rc = model_open(&m, dir, &err);
    CHECK_MSG(rc != 0, "line %d: %s opened, but should not", line, dir);
    if (rc == 0) {
        model_close(&m);
        return;
    }
    CHECK_MSG(m.layers == NULL && m.files == NULL && m.dir == NULL, "line %d: not closed", line);
    for (const char **n = needles; *n; n++)
        CHECK_MSG(strstr(err.msg, *n) != NULL, "line %d: error '%s' lacks '%s'", line, err.msg, *n);
}

static void write_raw_st(const char *path, const char *header, size_t n_data)
{
    FILE *f = fopen(path, "wb");
    uint64_t len = strlen(header);
    unsigned char len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (unsigned char)(len >> (8 * i));
    fwrite(len8, 1, 8, f);
    fwrite(header, 1, len, f);
    for (size_t i = 0; i < n_data; i++)
        fputc(0x3f, f);
    fclose(f);
}

static void test_valid_synthetic(void)
{
    char dir[512];
    struct variant dense = {0};
    make_model(dir, sizeof dir, NULL, &dense);
    model m;
    errbuf err = {""};
    int rc = model_open(&m, dir, &err);
    CHECK_MSG(rc == 0, "%s", err.msg);
    if (rc == 0) {
        /* the values written are the values read */
        uint32_t state = 12345;
        float want0 = model_bf16_to_f32(model_f32_to_bf16(synth_value(&state)));
        float got0;
        model_tensor_to_f32(&m.embed, 0, 1, &got0);
        CHECK(got0 == want0);
        CHECK(m.cfg.rope_yarn == 0 && m.cfg.n_layers == 1);
        model_close(&m);
    }

    /* AWQ with known nibbles: w = (q - z) * s for every element */
    struct variant awq = {.awq = 1};
    make_model(dir, sizeof dir, AWQ_QUANT, &awq);
    rc = model_open(&m, dir, &err);
    CHECK_MSG(rc == 0, "%s", err.msg);
    if (rc == 0) {
        CHECK(m.cfg.is_awq && m.cfg.awq_group_size == GROUP && m.cfg.dtype == MODEL_F16);
        const model_linear *l = &m.layers[0].o; /* out 16, in 24: 3 groups */
        CHECK(l->is_awq && l->in_features == NH * HD && l->out_features == H);
        float *w = malloc((size_t)(H * NH * HD) * sizeof *w);
        model_linear_to_f32(l, w);
        int bad = 0;
        for (int64_t n = 0; n < H; n++)
            for (int64_t k = 0; k < NH * HD; k++)
                if (w[n * NH * HD + k] != awq_element_direct(l, n, k))
                    bad++;
        CHECK_INT_EQ(bad, 0);
        free(w);
        model_close(&m);
    }

    /* tied: lm_head.weight absent, the embedding serves */
    struct variant tied = {.tied = 1};
    make_model(dir, sizeof dir, "{\"tie_word_embeddings\": true}", &tied);
    rc = model_open(&m, dir, &err);
    CHECK_MSG(rc == 0, "%s", err.msg);
    if (rc == 0) {
        CHECK(m.lm_head.data == m.embed.data);
        model_close(&m);
    }

    /* no dtype in config.json: taken from the embedding */
    make_model(dir, sizeof dir, "{\"torch_dtype\": null}", &dense);
    rc = model_open(&m, dir, &err);
    CHECK_MSG(rc == 0, "%s", err.msg);
    if (rc == 0) {
        CHECK_INT_EQ(m.cfg.dtype, MODEL_BF16);
        model_close(&m);
    }
}

static void test_broken_files(void)
{
    char dir[512], path[600];
    struct variant dense = {0};
    const char *last = "lm_head.weight"; /* the last tensor synth_tensors writes */

    /* truncated data: the last tensor runs past the end */
    make_model(dir, sizeof dir, NULL, &dense);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    CHECK(truncate(path, file_size(path) - 3) == 0);
    EXPECT_OPEN_FAIL(dir, "model.safetensors", last, "truncated");

    /* truncated inside the header */
    make_model(dir, sizeof dir, NULL, &dense);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    CHECK(truncate(path, 40) == 0);
    EXPECT_OPEN_FAIL(dir, "model.safetensors", "header length");

    make_model(dir, sizeof dir, NULL, &dense);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    CHECK(truncate(path, 5) == 0);
    EXPECT_OPEN_FAIL(dir, "model.safetensors", "too short");

    /* headers that lie */
    make_model(dir, sizeof dir, NULL, NULL);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    write_raw_st(path,
                 "{\"model.embed_tokens.weight\": {\"dtype\": \"BF16\", \"shape\": [16, 16],"
                 " \"data_offsets\": [0, 999999]}}",
                 512);
    EXPECT_OPEN_FAIL(dir, "model.safetensors", "model.embed_tokens.weight", "past the end");

    write_raw_st(path,
                 "{\"model.embed_tokens.weight\": {\"dtype\": \"BF16\", \"shape\": [16, 17],"
                 " \"data_offsets\": [0, 512]}}",
                 512);
    EXPECT_OPEN_FAIL(dir, "model.safetensors", "model.embed_tokens.weight", "need 544");

    write_raw_st(path,
                 "{\"model.embed_tokens.weight\": {\"dtype\": \"Q4_K\", \"shape\": [16, 16],"
                 " \"data_offsets\": [0, 512]}}",
                 512);
    EXPECT_OPEN_FAIL(dir, "model.embed_tokens.weight", "unknown dtype 'Q4_K'");

    write_raw_st(path,
                 "{\"model.embed_tokens.weight\": {\"dtype\": \"BF16\", \"shape\": [16, 16],"
                 " \"data_offsets\": [400, 200]}}",
                 512);
    EXPECT_OPEN_FAIL(dir, "model.embed_tokens.weight", "data_offsets");

    write_raw_st(path,
                 "{\"model.embed_tokens.weight\": {\"dtype\": \"BF16\", \"shape\": [16, -16],"
                 " \"data_offsets\": [0, 512]}}",
                 512);
    EXPECT_OPEN_FAIL(dir, "model.embed_tokens.weight", "shape[1]");

    write_raw_st(path, "{\"model.embed_tokens.weight\": {\"dtype\": \"BF16\"", 512);
    EXPECT_OPEN_FAIL(dir, "model.safetensors", "header");

    write_raw_st(path,
                 "{\"model.embed_tokens.weight\": {\"dtype\": \"I8\", \"shape\": [16, 16],"
                 " \"data_offsets\": [0, 256]}}",
                 512);
    EXPECT_OPEN_FAIL(dir, "model.embed_tokens.weight", "I8 is not supported");

    /* well-formed file, but shapes or dtypes that do not fit the config */
    struct variant v = {.reshape = "model.layers.0.self_attn.k_proj.weight",
                        .new_shape = {NKV * HD + 2, H}};
    make_model(dir, sizeof dir, NULL, &v);
    EXPECT_OPEN_FAIL(dir, "model.layers.0.self_attn.k_proj.weight", "[26, 16]", "[24, 16]");

    v = (struct variant){.reshape = "model.embed_tokens.weight", .new_shape = {V + 1, H}};
    make_model(dir, sizeof dir, NULL, &v);
    EXPECT_OPEN_FAIL(dir, "model.embed_tokens.weight", "config.json implies");

    v = (struct variant){.retype = "model.layers.0.self_attn.q_norm.weight",
                         .new_dtype = MODEL_I32};
    make_model(dir, sizeof dir, NULL, &v);
    EXPECT_OPEN_FAIL(dir, "model.layers.0.self_attn.q_norm.weight", "dtype I32");

    v = (struct variant){.skip = "model.layers.0.mlp.up_proj.weight"};
    make_model(dir, sizeof dir, NULL, &v);
    EXPECT_OPEN_FAIL(dir, "missing tensor 'model.layers.0.mlp.up_proj.weight'");

    v = (struct variant){.skip = "model.layers.0.self_attn.k_norm.weight"};
    make_model(dir, sizeof dir, NULL, &v);
    EXPECT_OPEN_FAIL(dir, "missing tensor 'model.layers.0.self_attn.k_norm.weight'");

    /* untied config without lm_head.weight */
    v = (struct variant){.tied = 1};
    make_model(dir, sizeof dir, NULL, &v);
    EXPECT_OPEN_FAIL(dir, "missing tensor 'lm_head.weight'");

    /* AWQ tensors that do not match */
    v = (struct variant){
        .awq = 1, .retype = "model.layers.0.mlp.down_proj.scales", .new_dtype = MODEL_BF16};
    make_model(dir, sizeof dir, AWQ_QUANT, &v);
    EXPECT_OPEN_FAIL(dir, "model.layers.0.mlp.down_proj.scales", "expected F16");

    v = (struct variant){.awq = 1,
                         .reshape = "model.layers.0.self_attn.v_proj.qzeros",
                         .new_shape = {H / GROUP, NKV * HD}};
    make_model(dir, sizeof dir, AWQ_QUANT, &v);
    EXPECT_OPEN_FAIL(dir, "model.layers.0.self_attn.v_proj.qzeros", "config.json implies");

    v = (struct variant){.awq = 1, .skip = "model.layers.0.mlp.gate_proj.qzeros"};
    make_model(dir, sizeof dir, AWQ_QUANT, &v);
    EXPECT_OPEN_FAIL(dir, "missing tensor 'model.layers.0.mlp.gate_proj.qzeros'");

    v = (struct variant){.awq = 1};
    make_model(dir, sizeof dir, NULL, &v);
    EXPECT_OPEN_FAIL(dir, "model.layers.0.self_attn.q_proj.qweight", "quantization_config");

    /* group 32 does not divide q_proj's 16 inputs */
    make_model(dir, sizeof dir,
               "{\"quantization_config\": {\"quant_method\": \"awq\", \"bits\": 4,"
               " \"group_size\": 32, \"version\": \"gemm\", \"zero_point\": true}}",
               &v);
    EXPECT_OPEN_FAIL(dir, "self_attn.q_proj", "group_size 32");

    /* no weights, no config */
    make_model(dir, sizeof dir, NULL, NULL);
    EXPECT_OPEN_FAIL(dir, "no model.safetensors");
    snprintf(path, sizeof path, "%s/config.json", dir);
    unlink(path);
    EXPECT_OPEN_FAIL(dir, "config.json");
}

static void test_sharded_errors(void)
{
    char dir[512], path[600];
    struct variant dense = {0};
    make_model(dir, sizeof dir, NULL, &dense);
    char src[600];
    snprintf(src, sizeof src, "%s/model.safetensors", dir);
    snprintf(path, sizeof path, "%s/model-00001-of-00001.safetensors", dir);
    CHECK(rename(src, path) == 0);
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    FILE *f;

    /* an index that names a file outside the folder */
    f = fopen(path, "w");
    fputs("{\"weight_map\": {\"model.embed_tokens.weight\": \"../model.safetensors\"}}", f);
    fclose(f);
    EXPECT_OPEN_FAIL(dir, "model.safetensors.index.json", "bad file name");

    /* a shard that does not exist */
    f = fopen(path, "w");
    fputs("{\"weight_map\": {\"model.embed_tokens.weight\": \"model-00002-of-00002.safetensors\"}}",
          f);
    fclose(f);
    EXPECT_OPEN_FAIL(dir, "model-00002-of-00002.safetensors", "No such file");

    /* a tensor the index does not list */
    f = fopen(path, "w");
    fputs("{\"weight_map\": {\"model.embed_tokens.weight\": \"model-00001-of-00001.safetensors\"}}",
          f);
    fclose(f);
    EXPECT_OPEN_FAIL(dir, "model.safetensors.index.json", "missing tensor 'model.norm.weight'");

    /* a full index (an extra, unused name is fine) */
    f = fopen(path, "w");
    fputs("{\"weight_map\": {\"model.embed_tokens.weight\": \"model-00001-of-00001.safetensors\","
          " \"model.norm.weight\": \"model-00001-of-00001.safetensors\","
          " \"model.layers.0.input_layernorm.weight\": \"model-00001-of-00001.safetensors\","
          " \"model.layers.0.post_attention_layernorm.weight\":"
          " \"model-00001-of-00001.safetensors\", \"lm_head.weight\": "
          "\"model-00001-of-00001.safetensors\","
          " \"model.layers.0.self_attn.q_norm.weight\": \"model-00001-of-00001.safetensors\","
          " \"model.layers.0.self_attn.k_norm.weight\": \"model-00001-of-00001.safetensors\","
          " \"model.layers.0.self_attn.q_proj.weight\": \"model-00001-of-00001.safetensors\","
          " \"model.layers.0.self_attn.k_proj.weight\": \"model-00001-of-00001.safetensors\","
          " \"model.layers.0.self_attn.v_proj.weight\": \"model-00001-of-00001.safetensors\","
          " \"model.layers.0.self_attn.o_proj.weight\": \"model-00001-of-00001.safetensors\","
          " \"model.layers.0.mlp.gate_proj.weight\": \"model-00001-of-00001.safetensors\","
          " \"model.layers.0.mlp.up_proj.weight\": \"model-00001-of-00001.safetensors\","
          " \"model.layers.0.mlp.down_proj.weight\": \"model-00001-of-00001.safetensors\","
          " \"model.layers.0.mlp.extra.weight\": \"model-00001-of-00001.safetensors\"}}",
          f);
    fclose(f);
    model m;
    errbuf err = {""};
    int rc = model_open(&m, dir, &err);
    CHECK_MSG(rc == 0, "full index: %s", err.msg); /* extra names are fine when unused */
    if (rc == 0)
        model_close(&m);

    /* the same index over a shard that lacks model.norm.weight */
    char other[512];
    struct variant no_norm = {.skip = "model.norm.weight"};
    make_model(other, sizeof other, NULL, &no_norm);
    snprintf(src, sizeof src, "%s/model.safetensors", other);
    char shard[600];
    snprintf(shard, sizeof shard, "%s/model-00001-of-00001.safetensors", dir);
    CHECK(rename(src, shard) == 0);
    EXPECT_OPEN_FAIL(dir, "model-00001-of-00001.safetensors", "missing tensor 'model.norm.weight'",
                     "index.json puts it in this file");

    f = fopen(path, "w");
    fputs("{\"weight_map\": {}}", f);
    fclose(f);
    EXPECT_OPEN_FAIL(dir, "model.safetensors.index.json", "weight_map");

    f = fopen(path, "w");
    fputs("{\"weight_map\": {\"a\": 1", f);
    fclose(f);
    EXPECT_OPEN_FAIL(dir, "model.safetensors.index.json", "line 1");
}

/* Each bad config field is refused, naming the field. */
static void test_bad_configs(void)
{
    static const struct {
        const char *merge;
        const char *needle1, *needle2;
    } cases[] = {
        {"{\"num_attention_heads\": \"x\"}", "'num_attention_heads'", "integer"},
        {"{\"num_attention_heads\": 0}", "'num_attention_heads'", "outside"},
        {"{\"num_key_value_heads\": 3}", "'num_key_value_heads'", "divide"},
        {"{\"hidden_size\": null}", "missing field 'hidden_size'", "config.json"},
        {"{\"vocab_size\": null}", "missing field 'vocab_size'", "config.json"},
        {"{\"head_dim\": 5}", "'head_dim'", "even"},
        {"{\"torch_dtype\": \"int8\"}", "'torch_dtype'", "'int8'"},
        {"{\"torch_dtype\": null, \"dtype\": \"float64\"}", "'dtype'", "'float64'"},
        {"{\"rms_norm_eps\": -1}", "'rms_norm_eps'", "config.json"},
        {"{\"rope_theta\": \"big\"}", "'rope_theta'", "number"},
        {"{\"tie_word_embeddings\": 1}", "'tie_word_embeddings'", "true or false"},
        {"{\"model_type\": \"llama\"}", "'model_type'", "'llama'"},
        {"{\"eos_token_id\": \"x\"}", "'eos_token_id'", "config.json"},
        {"{\"eos_token_id\": [151645, -1]}", "'eos_token_id[1]'", "config.json"},
        {"{\"rope_scaling\": {\"rope_type\": \"linear\", \"factor\": 2.0}}",
         "'rope_scaling.rope_type'", "'linear'"},
        {"{\"rope_scaling\": {\"type\": \"dynamic\", \"factor\": 2.0}}", "'rope_scaling.type'",
         "'dynamic'"},
        {"{\"rope_scaling\": {\"rope_type\": \"yarn\"}}", "'rope_scaling.factor'", "missing"},
        {"{\"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": -2}}", "'rope_scaling.factor'",
         "positive"},
        {"{\"rope_scaling\": \"yarn\"}", "'rope_scaling'", "object"},
        {"{\"rope_parameters\": {\"rope_type\": \"llama3\", \"rope_theta\": 10000.0}}",
         "'rope_parameters.rope_type'", "'llama3'"},
        {"{\"quantization_config\": {\"quant_method\": \"gptq\", \"bits\": 4, \"group_size\": "
         "128}}",
         "'quantization_config.quant_method'", "'gptq'"},
        {"{\"quantization_config\": {\"quant_method\": \"awq\", \"bits\": 8, \"group_size\": "
         "128}}",
         "'quantization_config.bits'", "only 4-bit"},
        {"{\"quantization_config\": {\"quant_method\": \"awq\", \"bits\": 4, \"group_size\": -1}}",
         "'quantization_config.group_size'", "-1"},
        {"{\"quantization_config\": {\"quant_method\": \"awq\", \"bits\": 4}}",
         "missing field 'quantization_config.group_size'", "config.json"},
        {"{\"quantization_config\": {\"quant_method\": \"awq\", \"bits\": 4, \"group_size\": 128,"
         " \"version\": \"gemv\"}}",
         "'quantization_config.version'", "'gemv'"},
        {"{\"quantization_config\": {\"quant_method\": \"awq\", \"bits\": 4, \"group_size\": 128,"
         " \"zero_point\": false}}",
         "'quantization_config.zero_point'", "false"},
        {"{\"quantization_config\": {\"quant_method\": \"bitsandbytes\"}}",
         "'quantization_config.quant_method'", "'bitsandbytes'"},
    };
    struct variant dense = {0};
    char dir[512];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        make_model(dir, sizeof dir, cases[i].merge, &dense);
        EXPECT_OPEN_FAIL(dir, "config.json", cases[i].needle1, cases[i].needle2);
    }

    /* not JSON at all: line and column */
    model_config cfg;
    errbuf err = {""};
    CHECK(model_config_parse(&cfg, "{\n  \"hidden_size\": 12,,\n}", "x/config.json", &err) < 0);
    CHECK_MSG(strstr(err.msg, "x/config.json: line 2") != NULL, "%s", err.msg);

    /* accepted forms: integral reals, a defaulted head_dim, eos lists, rope_parameters */
    int rc =
        model_config_parse(&cfg,
                           "{\"vocab_size\": 16, \"hidden_size\": 64.0, \"num_hidden_layers\": 2,"
                           " \"num_attention_heads\": 4, \"intermediate_size\": 32,"
                           " \"head_dim\": null, \"eos_token_id\": [7, 151643, 7],"
                           " \"rope_parameters\": {\"rope_type\": \"default\","
                           " \"rope_theta\": 500000.0}}",
                           "ok/config.json", &err);
    CHECK_MSG(rc == 0, "%s", err.msg);
    CHECK_INT_EQ(cfg.head_dim, 16);
    CHECK_INT_EQ(cfg.n_kv_heads, 4);
    CHECK(cfg.rope_theta == 500000.0 && !cfg.rope_yarn);
    CHECK_INT_EQ(cfg.n_eos, 3);
    CHECK(cfg.eos_ids[0] == 7 && cfg.eos_ids[1] == 151643 && cfg.eos_ids[2] == 151645);
    /* no head_dim at all: Qwen3Config's default, 128 (not hidden / heads) */
    rc = model_config_parse(&cfg,
                            "{\"vocab_size\": 16, \"hidden_size\": 64, \"num_hidden_layers\": 2,"
                            " \"num_attention_heads\": 4, \"intermediate_size\": 32}",
                            "nohd/config.json", &err);
    CHECK_MSG(rc == 0, "%s", err.msg);
    CHECK_INT_EQ(cfg.head_dim, 128);

    /* YaRN details: betas, truncate, attention_factor, legacy "type" */
    rc = model_config_parse(&cfg,
                            "{\"vocab_size\": 16, \"hidden_size\": 64, \"num_hidden_layers\": 2,"
                            " \"num_attention_heads\": 4, \"intermediate_size\": 32,"
                            " \"max_position_embeddings\": 4096, \"rope_scaling\": {\"type\":"
                            " \"yarn\", \"factor\": 2, \"beta_fast\": 16, \"truncate\": false,"
                            " \"attention_factor\": 1.25}}",
                            "yarn/config.json", &err);
    CHECK_MSG(rc == 0, "%s", err.msg);
    CHECK(cfg.rope_yarn && cfg.yarn_factor == 2.0 && cfg.yarn_beta_fast == 16 &&
          cfg.yarn_beta_slow == 1 && cfg.yarn_no_truncate && cfg.yarn_attention_factor == 1.25);
    CHECK_INT_EQ(cfg.yarn_original_max_position, 4096);
    float inv[8], attn;
    model_rope_inv_freq(&cfg, inv, &attn);
    CHECK(attn == 1.25f);
    CHECK(inv[0] == 1.0f); /* dimension 0 extrapolates: untouched */
}

/* ---- the demo model ------------------------------------------------------------------------ */

static int same_file(const char *a, const char *b)
{
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    int same = fa && fb;
    while (same) {
        int ca = fgetc(fa), cb = fgetc(fb);
        if (ca != cb)
            same = 0;
        if (ca == EOF || cb == EOF)
            break;
    }
    if (fa)
        fclose(fa);
    if (fb)
        fclose(fb);
    return same;
}

static void test_demo_model(void)
{
    char d1[512], d2[512], d3[512], p1[600], p2[600];
    snprintf(d1, sizeof d1, "%s/demo1", tmp_root);
    snprintf(d2, sizeof d2, "%s/demo2", tmp_root);
    snprintf(d3, sizeof d3, "%s/demo3", tmp_root);
    demo_model_opts o = {.seed = 3, .awq = 0, .size = DEMO_TINY};
    errbuf err = {""};
    int rc = demo_model_write(d1, &o, &err);
    CHECK_MSG(rc == 0, "%s", err.msg);
    model m;
    rc = model_open(&m, d1, &err);
    CHECK_MSG(rc == 0, "demo: %s", err.msg);
    if (rc == 0) {
        model_config want;
        demo_model_config(&want, &o);
        CHECK_INT_EQ(m.cfg.vocab_size, 151936);
        CHECK(memcmp(&m.cfg, &want, sizeof want) == 0);
        CHECK(m.cfg.head_dim * m.cfg.n_heads != m.cfg.hidden_size);
        CHECK(m.cfg.n_kv_heads < m.cfg.n_heads);
        /* logits of a normalized embedding row through the tied lm_head are
         * spread out, not flat */
        int64_t Hd = m.cfg.hidden_size;
        float *x = malloc((size_t)Hd * sizeof *x), *w = malloc((size_t)Hd * sizeof *w);
        model_tensor_to_f32(&m.embed, 9707 * Hd, Hd, x);
        double ss = 0;
        for (int64_t i = 0; i < Hd; i++)
            ss += (double)x[i] * x[i];
        double scale = 1.0 / sqrt(ss / Hd + 1e-6), sum = 0, sum2 = 0, top = -1e30;
        for (int64_t r = 0; r < m.cfg.vocab_size; r++) {
            model_tensor_to_f32(&m.lm_head, r * Hd, Hd, w);
            double dot = 0;
            for (int64_t i = 0; i < Hd; i++)
                dot += x[i] * scale * w[i];
            sum += dot;
            sum2 += dot * dot;
            top = dot > top ? dot : top;
        }
        double mean = sum / m.cfg.vocab_size;
        double sd = sqrt(sum2 / m.cfg.vocab_size - mean * mean);
        CHECK_MSG(sd > 1.5 && top - mean > 5 * sd, "logit sd %g, top %g above the mean", sd,
                  top - mean);
        free(x);
        free(w);
        model_close(&m);
    }
    snprintf(p1, sizeof p1, "%s/tokenizer.json", d1);
    CHECK(file_size(p1) > 1000000);
    snprintf(p1, sizeof p1, "%s/tokenizer_config.json", d1);
    CHECK(file_size(p1) > 100);

    /* the same seed gives the same bytes; another seed other bytes */
    rc = demo_model_write(d2, &o, &err);
    CHECK_MSG(rc == 0, "%s", err.msg);
    snprintf(p1, sizeof p1, "%s/model.safetensors", d1);
    snprintf(p2, sizeof p2, "%s/model.safetensors", d2);
    CHECK(same_file(p1, p2));
    o.seed = 4;
    rc = demo_model_write(d2, &o, &err);
    CHECK_MSG(rc == 0, "%s", err.msg);
    CHECK(!same_file(p1, p2));
    CHECK(file_size(p1) == file_size(p2));
    rm_rf(d1);
    rm_rf(d2);

    /* AWQ: every linear layer packed; dequantized weights keep their scale */
    o = (demo_model_opts){.seed = 5, .awq = 1, .size = DEMO_TINY};
    rc = demo_model_write(d3, &o, &err);
    CHECK_MSG(rc == 0, "%s", err.msg);
    rc = model_open(&m, d3, &err);
    CHECK_MSG(rc == 0, "demo awq: %s", err.msg);
    if (rc == 0) {
        CHECK(m.cfg.is_awq && m.cfg.awq_group_size == 128 && m.embed.dtype == MODEL_F16);
        for (int l = 0; l < m.cfg.n_layers; l++) {
            const model_layer *L = &m.layers[l];
            const model_linear *all[7] = {&L->q, &L->k, &L->v, &L->o, &L->gate, &L->up, &L->down};
            for (int j = 0; j < 7; j++) {
                const model_linear *lin = all[j];
                CHECK(lin->is_awq);
                size_t n = (size_t)(lin->in_features * lin->out_features);
                float *w = malloc(n * sizeof *w);
                model_linear_to_f32(lin, w);
                double s2 = 0;
                for (size_t i = 0; i < n; i++)
                    s2 += (double)w[i] * w[i];
                double want = 1.0 / sqrt((double)lin->in_features), got = sqrt(s2 / n);
                CHECK_MSG(got > 0.85 * want && got < 1.15 * want,
                          "layer %d linear %d: rms %g, want %g", l, j, got, want);
                free(w);
            }
        }
        model_close(&m);
    }
    rm_rf(d3);
}

int main(void)
{
    snprintf(tmp_root, sizeof tmp_root, "/tmp/test_model.XXXXXX");
    if (!mkdtemp(tmp_root)) {
        perror("mkdtemp");
        return 1;
    }
    test_half_conversions();
    test_qwen3_14b();
    test_rope_probes();
    static const char *refs[] = {"bf16_untied_gqa", "bf16_tied_gqa8", "yarn", "awq_g128",
                                 "sharded"};
    for (size_t i = 0; i < sizeof refs / sizeof refs[0]; i++)
        test_reference_model(refs[i]);
    test_valid_synthetic();
    test_broken_files();
    test_sharded_errors();
    test_bad_configs();
    test_demo_model();
    rm_rf(tmp_root);
    return check_exit("test_model");
}
