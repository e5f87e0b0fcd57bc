/*
 * model.c - a Qwen3 model folder: config.json, safetensors through mmap, AWQ.
 *
 * The loader trusts nothing it reads. A safetensors file is an 8-byte header
 * length, a JSON header {name: {dtype, shape, data_offsets}}, then the data.
 * Every entry of every header is checked when the file is mapped (known
 * dtype, shape product times element size equals the byte range, the range
 * lies inside the file), and every tensor the model uses is checked again
 * against the shape the config implies. Only then does a model_tensor point
 * into the mapping, so the engines can read it without bounds checks.
 *
 * Tensors are looked up by name through jansson's hash of the parsed header
 * (and the index's weight_map for sharded checkpoints); nothing is copied.
 */
#include "model.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "strbuf.h"

const int model_awq_order[8] = {0, 2, 4, 6, 1, 3, 5, 7};

/* One mapped safetensors file. */
struct model_file {
    char *path;
    char *name; /* file name inside the folder, as the index names it */
    void *map;
    size_t size;
    const unsigned char *data; /* start of the data section */
    size_t data_size;
    json_t *header;
};

struct model_priv {
    json_t *weight_map; /* from model.safetensors.index.json, or NULL */
};

/* ---- fp16 / bf16 ---------------------------------------------------------- */

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

float model_bf16_to_f32(uint16_t h)
{
    return bits_f32((uint32_t)h << 16);
}

uint16_t model_f32_to_bf16(float f)
{
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN: keep it a quiet NaN */
        return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1); /* round to nearest even */
    return (uint16_t)(u >> 16);
}

float model_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    if (exp == 0x1f) /* inf or NaN */
        return bits_f32(sign | 0x7f800000u | (mant << 13));
    if (exp == 0) {
        /* zero or subnormal: mant * 2^-24, exact in fp32 */
        float v = (float)mant * 0x1p-24f;
        return sign ? -v : v;
    }
    return bits_f32(sign | ((exp + 112) << 23) | (mant << 13));
}

uint16_t model_f32_to_f16(float f)
{
    uint32_t u = f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) /* NaN */
        return sign | 0x7e00 | (uint16_t)((a >> 13) & 0x3ff);
    if (a >= 0x477ff000u) /* rounds to or beyond 65520: inf */
        return sign | 0x7c00;
    if (a < 0x38800000u) {
        /* result is subnormal (or zero): round a * 2^24 to an integer, ties to even */
        if (a < 0x33000000u) /* below half the smallest subnormal */
            return sign;
        uint32_t mant = (a & 0x7fffff) | 0x800000;
        int shift = 126 - (int)(a >> 23); /* 14..24 */
        uint32_t q = mant >> shift;
        uint32_t rem = mant & ((1u << shift) - 1);
        uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1)))
            q++;
        return sign | (uint16_t)q;
    }
    /* normal: rebias and round the 13 dropped bits to nearest even */
    uint32_t r = a - 0x38000000u;
    r += 0xfffu + ((r >> 13) & 1);
    return sign | (uint16_t)(r >> 13);
}

/* ---- config.json ---------------------------------------------------------- */

static const char *json_type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
        return "an integer";
    case JSON_REAL:
        return "a number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    default:
        return "null";
    }
}

/* Reads obj[key] as an integer; absent or null gives def (or an error when
 * required). A real with an integral value is accepted: some exporters
 * write 128.0. */
static int cfg_int(const json_t *obj, const char *key, int required, long long def, long long lo,
                   long long hi, long long *out, const char *path, const char *where, errbuf *err)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) {
        if (required)
            return errorf(err, "%s: missing field '%s%s'", path, where, key);
        *out = def;
        return 0;
    }
    long long x;
    if (json_is_integer(v)) {
        x = json_integer_value(v);
    } else if (json_is_real(v) && json_real_value(v) == floor(json_real_value(v)) &&
               fabs(json_real_value(v)) < 9e15) {
        x = (long long)json_real_value(v);
    } else {
        return errorf(err, "%s: field '%s%s' must be an integer, not %s", path, where, key,
                      json_type_name(v));
    }
    if (x < lo || x > hi)
        return errorf(err, "%s: field '%s%s' is %lld, outside [%lld, %lld]", path, where, key, x,
                      lo, hi);
    *out = x;
    return 0;
}

static int cfg_num(const json_t *obj, const char *key, int required, double def, double *out,
                   const char *path, const char *where, errbuf *err)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) {
        if (required)
            return errorf(err, "%s: missing field '%s%s'", path, where, key);
        *out = def;
        return 0;
    }
    if (!json_is_number(v))
        return errorf(err, "%s: field '%s%s' must be a number, not %s", path, where, key,
                      json_type_name(v));
    *out = json_number_value(v);
    if (!isfinite(*out))
        return errorf(err, "%s: field '%s%s' is not finite", path, where, key);
    return 0;
}

static int cfg_bool(const json_t *obj, const char *key, int def, int *out, const char *path,
                    const char *where, errbuf *err)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return 0;
    }
    if (!json_is_boolean(v))
        return errorf(err, "%s: field '%s%s' must be true or false, not %s", path, where, key,
                      json_type_name(v));
    *out = json_is_true(v);
    return 0;
}

/* torch dtype names as config.json spells them. */
static int parse_torch_dtype(const char *s, enum model_dtype *out)
{
    if (!strcmp(s, "bfloat16") || !strcmp(s, "torch.bfloat16"))
        *out = MODEL_BF16;
    else if (!strcmp(s, "float16") || !strcmp(s, "torch.float16") || !strcmp(s, "half"))
        *out = MODEL_F16;
    else if (!strcmp(s, "float32") || !strcmp(s, "torch.float32") || !strcmp(s, "float"))
        *out = MODEL_F32;
    else
        return -1;
    return 0;
}

/* rope_scaling (transformers 4) or rope_parameters (transformers 5): none,
 * "default", or YaRN. Everything else changes the frequencies in ways we do
 * not implement, so it is refused rather than silently ignored. */
static int parse_rope(model_config *cfg, const json_t *rope, const char *field, const char *path,
                      errbuf *err)
{
    char where[64];
    snprintf(where, sizeof where, "%s.", field);
    if (!json_is_object(rope))
        return errorf(err, "%s: field '%s' must be an object or null, not %s", path, field,
                      json_type_name(rope));
    if (json_object_get(rope, "rope_theta")) {
        if (cfg_num(rope, "rope_theta", 1, 0, &cfg->rope_theta, path, where, err))
            return -1;
        if (!(cfg->rope_theta > 1))
            return errorf(err, "%s: field '%srope_theta' must be greater than 1", path, where);
    }
    json_t *type = json_object_get(rope, "rope_type");
    const char *tkey = "rope_type";
    if (!type || json_is_null(type)) {
        type = json_object_get(rope, "type");
        tkey = "type";
    }
    const char *t = "default";
    if (type && !json_is_null(type)) {
        if (!json_is_string(type))
            return errorf(err, "%s: field '%s%s' must be a string", path, where, tkey);
        t = json_string_value(type);
    }
    if (!strcmp(t, "default"))
        return 0;
    if (strcmp(t, "yarn"))
        return errorf(err, "%s: field '%s%s' is '%s': unsupported RoPE scaling (only yarn or none)",
                      path, where, tkey, t);
    cfg->rope_yarn = 1;
    long long orig;
    if (cfg_int(rope, "original_max_position_embeddings", 0, cfg->max_position_embeddings, 1,
                1LL << 30, &orig, path, where, err))
        return -1;
    cfg->yarn_original_max_position = (int)orig;
    /* transformers 5.17 uses the factor as given (and only warns when it
     * differs from max_position_embeddings / original); without a factor it
     * falls back to that ratio. */
    double factor = 0;
    if (cfg_num(rope, "factor", 0, 0, &factor, path, where, err))
        return -1;
    if (factor == 0 && json_object_get(rope, "original_max_position_embeddings"))
        factor = (double)cfg->max_position_embeddings / (double)orig;
    else if (factor == 0)
        return errorf(err, "%s: missing field '%sfactor'", path, where);
    if (!(factor > 0))
        return errorf(err, "%s: field '%sfactor' must be positive", path, where);
    cfg->yarn_factor = factor;
    /* HF reads these with `or`: 0 and null both mean the default. */
    if (cfg_num(rope, "beta_fast", 0, 0, &cfg->yarn_beta_fast, path, where, err) ||
        cfg_num(rope, "beta_slow", 0, 0, &cfg->yarn_beta_slow, path, where, err))
        return -1;
    if (cfg->yarn_beta_fast == 0)
        cfg->yarn_beta_fast = 32;
    if (cfg->yarn_beta_slow == 0)
        cfg->yarn_beta_slow = 1;
    if (cfg->yarn_beta_fast < 0 || cfg->yarn_beta_slow < 0)
        return errorf(err, "%s: field '%sbeta_fast'/'beta_slow' must be positive", path, where);
    double attn = 0, mscale = 0, mscale_all = 0;
    if (cfg_num(rope, "attention_factor", 0, 0, &attn, path, where, err) ||
        cfg_num(rope, "mscale", 0, 0, &mscale, path, where, err) ||
        cfg_num(rope, "mscale_all_dim", 0, 0, &mscale_all, path, where, err))
        return -1;
    if (attn < 0)
        return errorf(err, "%s: field '%sattention_factor' must be positive", path, where);
    if (attn == 0 && mscale != 0 && mscale_all != 0) {
        /* DeepSeek-style: get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim) */
        double num = factor <= 1 ? 1.0 : 0.1 * mscale * log(factor) + 1.0;
        double den = factor <= 1 ? 1.0 : 0.1 * mscale_all * log(factor) + 1.0;
        attn = num / den;
    }
    cfg->yarn_attention_factor = attn;
    int truncate = 1;
    if (cfg_bool(rope, "truncate", 1, &truncate, path, where, err))
        return -1;
    cfg->yarn_no_truncate = !truncate;
    return 0;
}

static int parse_quant(model_config *cfg, const json_t *q, const char *path, errbuf *err)
{
    const char *w = "quantization_config.";
    if (!json_is_object(q))
        return errorf(err, "%s: field 'quantization_config' must be an object, not %s", path,
                      json_type_name(q));
    json_t *method = json_object_get(q, "quant_method");
    if (!json_is_string(method))
        return errorf(err, "%s: field '%squant_method' must be a string", path, w);
    if (strcasecmp(json_string_value(method), "awq"))
        return errorf(err,
                      "%s: field '%squant_method' is '%s': unsupported quantization (only awq)",
                      path, w, json_string_value(method));
    /* AutoAWQ has written both spellings over time. */
    const char *bits_key =
        json_object_get(q, "w_bit") && !json_object_get(q, "bits") ? "w_bit" : "bits";
    long long bits, group;
    if (cfg_int(q, bits_key, 1, 0, -(1LL << 30), 1LL << 30, &bits, path, w, err))
        return -1;
    if (bits != 4)
        return errorf(err, "%s: field '%s%s' is %lld: only 4-bit AWQ is supported", path, w,
                      bits_key, bits);
    const char *group_key = json_object_get(q, "q_group_size") && !json_object_get(q, "group_size")
                                ? "q_group_size"
                                : "group_size";
    if (cfg_int(q, group_key, 1, 0, -(1LL << 30), 1LL << 30, &group, path, w, err))
        return -1;
    if (group < 8 || group % 8)
        return errorf(err,
                      "%s: field '%s%s' is %lld: must be a positive multiple of 8 (per-channel "
                      "AWQ, group -1, is not supported)",
                      path, w, group_key, group);
    json_t *version = json_object_get(q, "version");
    if (version && !json_is_null(version) &&
        (!json_is_string(version) || strcasecmp(json_string_value(version), "gemm")))
        return errorf(err, "%s: field '%sversion' is %s%s%s: only the GEMM packing is supported",
                      path, w, json_is_string(version) ? "'" : "",
                      json_is_string(version) ? json_string_value(version)
                                              : json_type_name(version),
                      json_is_string(version) ? "'" : "");
    int zero_point = 1;
    if (cfg_bool(q, "zero_point", 1, &zero_point, path, w, err))
        return -1;
    if (!zero_point)
        return errorf(err,
                      "%s: field '%szero_point' is false: only AWQ with zero points is "
                      "supported",
                      path, w);
    cfg->is_awq = 1;
    cfg->awq_group_size = (int)group;
    return 0;
}

static void add_eos(model_config *cfg, long long id)
{
    for (int i = 0; i < cfg->n_eos; i++)
        if (cfg->eos_ids[i] == id)
            return;
    if (cfg->n_eos < (int)(sizeof cfg->eos_ids / sizeof cfg->eos_ids[0]))
        cfg->eos_ids[cfg->n_eos++] = (int)id;
}

/* Parses a config object; *dtype_given tells whether it named a dtype. */
static int config_from_json(model_config *cfg, const json_t *root, const char *path,
                            int *dtype_given, errbuf *err)
{
    memset(cfg, 0, sizeof *cfg);
    if (!json_is_object(root))
        return errorf(err, "%s: expected a JSON object", path);
    json_t *mt = json_object_get(root, "model_type");
    if (mt && !json_is_null(mt) && (!json_is_string(mt) || strcmp(json_string_value(mt), "qwen3")))
        return errorf(err, "%s: field 'model_type' is %s%s%s: only qwen3 models are supported",
                      path, json_is_string(mt) ? "'" : "",
                      json_is_string(mt) ? json_string_value(mt) : json_type_name(mt),
                      json_is_string(mt) ? "'" : "");

    const long long big = 1LL << 24;
    long long vocab, hidden, layers, heads, kv, head_dim, inter, maxpos;
    if (cfg_int(root, "vocab_size", 1, 0, 1, 1LL << 28, &vocab, path, "", err) ||
        cfg_int(root, "hidden_size", 1, 0, 1, big, &hidden, path, "", err) ||
        cfg_int(root, "num_hidden_layers", 1, 0, 1, 4096, &layers, path, "", err) ||
        cfg_int(root, "num_attention_heads", 1, 0, 1, 4096, &heads, path, "", err) ||
        cfg_int(root, "num_key_value_heads", 0, heads, 1, 4096, &kv, path, "", err) ||
        cfg_int(root, "intermediate_size", 1, 0, 1, big, &inter, path, "", err) ||
        cfg_int(root, "max_position_embeddings", 0, 32768, 1, 1LL << 30, &maxpos, path, "", err))
        return -1;
    /* As transformers reads a Qwen3 config: a missing head_dim is
     * Qwen3Config's default, 128; an explicit null falls back to
     * hidden / heads in the attention layer. */
    if (cfg_int(root, "head_dim", 0, json_object_get(root, "head_dim") ? hidden / heads : 128, 1,
                65536, &head_dim, path, "", err))
        return -1;
    if (heads % kv)
        return errorf(err,
                      "%s: field 'num_key_value_heads' is %lld: must divide "
                      "num_attention_heads (%lld)",
                      path, kv, heads);
    if (head_dim % 2)
        return errorf(err, "%s: field 'head_dim' is %lld: RoPE needs an even head size", path,
                      head_dim);
    cfg->vocab_size = (int)vocab;
    cfg->hidden_size = (int)hidden;
    cfg->n_layers = (int)layers;
    cfg->n_heads = (int)heads;
    cfg->n_kv_heads = (int)kv;
    cfg->head_dim = (int)head_dim;
    cfg->intermediate_size = (int)inter;
    cfg->max_position_embeddings = (int)maxpos;

    double eps;
    if (cfg_num(root, "rms_norm_eps", 0, 1e-6, &eps, path, "", err))
        return -1;
    if (!(eps > 0 && eps < 1))
        return errorf(err, "%s: field 'rms_norm_eps' is %g: must be in (0, 1)", path, eps);
    cfg->rms_norm_eps = (float)eps;
    if (cfg_num(root, "rope_theta", 0, 10000.0, &cfg->rope_theta, path, "", err))
        return -1;
    if (!(cfg->rope_theta > 1))
        return errorf(err, "%s: field 'rope_theta' is %g: must be greater than 1", path,
                      cfg->rope_theta);
    if (cfg_bool(root, "tie_word_embeddings", 0, &cfg->tie_word_embeddings, path, "", err))
        return -1;

    /* transformers 5 writes rope_parameters (with rope_theta inside); 4
     * writes rope_theta beside rope_scaling. */
    json_t *rp = json_object_get(root, "rope_parameters");
    json_t *rs = json_object_get(root, "rope_scaling");
    if (rp && !json_is_null(rp)) {
        if (parse_rope(cfg, rp, "rope_parameters", path, err))
            return -1;
    } else if (rs && !json_is_null(rs)) {
        if (parse_rope(cfg, rs, "rope_scaling", path, err))
            return -1;
    }

    const char *dkey = "torch_dtype";
    json_t *dt = json_object_get(root, dkey);
    if (!dt || json_is_null(dt)) {
        dkey = "dtype";
        dt = json_object_get(root, dkey);
    }
    *dtype_given = 0;
    cfg->dtype = MODEL_BF16;
    if (dt && !json_is_null(dt)) {
        if (!json_is_string(dt) || parse_torch_dtype(json_string_value(dt), &cfg->dtype))
            return errorf(err, "%s: field '%s' is %s%s%s: supported are bfloat16, float16, float32",
                          path, dkey, json_is_string(dt) ? "'" : "",
                          json_is_string(dt) ? json_string_value(dt) : json_type_name(dt),
                          json_is_string(dt) ? "'" : "");
        *dtype_given = 1;
    }

    json_t *q = json_object_get(root, "quantization_config");
    if (q && !json_is_null(q) && parse_quant(cfg, q, path, err))
        return -1;

    json_t *eos = json_object_get(root, "eos_token_id");
    if (json_is_integer(eos)) {
        if (json_integer_value(eos) < 0 || json_integer_value(eos) > INT32_MAX)
            return errorf(err, "%s: field 'eos_token_id' must be a token id", path);
        add_eos(cfg, json_integer_value(eos));
    } else if (json_is_array(eos)) {
        size_t i;
        json_t *e;
        json_array_foreach(eos, i, e)
        {
            if (!json_is_integer(e) || json_integer_value(e) < 0 ||
                json_integer_value(e) > INT32_MAX)
                return errorf(err, "%s: field 'eos_token_id[%zu]' must be a token id", path, i);
            add_eos(cfg, json_integer_value(e));
        }
    } else if (eos && !json_is_null(eos)) {
        return errorf(err, "%s: field 'eos_token_id' must be an integer or a list of them", path);
    }
    /* Qwen3 chat models end turns with <|im_end|> and documents with
     * <|endoftext|>, whatever the config lists. */
    add_eos(cfg, 151645);
    add_eos(cfg, 151643);
    return 0;
}

int model_config_parse(model_config *cfg, const char *json_text, const char *path, errbuf *err)
{
    json_error_t jerr;
    json_t *root = json_loads(json_text, 0, &jerr);
    if (!root)
        return errorf(err, "%s: line %d, column %d: %s", path, jerr.line, jerr.column, jerr.text);
    int dtype_given;
    int rc = config_from_json(cfg, root, path, &dtype_given, err);
    json_decref(root);
    return rc;
}

void model_config_qwen3_14b(model_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->vocab_size = 151936;
    cfg->hidden_size = 5120;
    cfg->n_layers = 40;
    cfg->n_heads = 40;
    cfg->n_kv_heads = 8;
    cfg->head_dim = 128;
    cfg->intermediate_size = 17408;
    cfg->rms_norm_eps = 1e-6f;
    cfg->rope_theta = 1000000.0;
    cfg->max_position_embeddings = 40960;
    cfg->tie_word_embeddings = 0;
    cfg->rope_yarn = 0;
    cfg->dtype = MODEL_F16; /* Qwen3-14B-AWQ's torch_dtype */
    cfg->is_awq = 1;
    cfg->awq_group_size = 128;
    cfg->eos_ids[0] = 151645;
    cfg->eos_ids[1] = 151643;
    cfg->n_eos = 2;
}

/* ---- RoPE ------------------------------------------------------------------ */

/* transformers' _compute_default_rope_parameters and _compute_yarn_parameters,
 * in double and rounded once (torch works in fp32; the two agree to an ulp or
 * two, far inside what any forward pass notices). */
void model_rope_inv_freq(const model_config *cfg, float *inv_freq, float *attn_factor)
{
    int dim = cfg->head_dim, half = dim / 2;
    double base = cfg->rope_theta;
    if (!cfg->rope_yarn) {
        for (int i = 0; i < half; i++)
            inv_freq[i] = (float)(1.0 / pow(base, (double)(2 * i) / dim));
        *attn_factor = 1.0f;
        return;
    }
    double factor = cfg->yarn_factor;
    double attn = cfg->yarn_attention_factor;
    if (attn <= 0)
        attn = factor <= 1 ? 1.0 : 0.1 * log(factor) + 1.0;
    double beta_fast = cfg->yarn_beta_fast > 0 ? cfg->yarn_beta_fast : 32;
    double beta_slow = cfg->yarn_beta_slow > 0 ? cfg->yarn_beta_slow : 1;
    double orig = cfg->yarn_original_max_position > 0 ? cfg->yarn_original_max_position
                                                      : cfg->max_position_embeddings;
    /* find_correction_dim: the dimension whose wavelength makes num_rotations
     * turns over the original context */
    double low = dim * log(orig / (beta_fast * 2 * M_PI)) / (2 * log(base));
    double high = dim * log(orig / (beta_slow * 2 * M_PI)) / (2 * log(base));
    if (!cfg->yarn_no_truncate) {
        low = floor(low);
        high = ceil(high);
    }
    if (low < 0)
        low = 0;
    if (high > dim - 1)
        high = dim - 1;
    if (low == high)
        high += 0.001; /* HF's guard against a zero-width ramp */
    for (int i = 0; i < half; i++) {
        double pos_freq = pow(base, (double)(2 * i) / dim);
        double extrapolation = 1.0 / pos_freq;
        double interpolation = 1.0 / (factor * pos_freq);
        double ramp = ((double)i - low) / (high - low);
        ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
        double extrapolation_factor = 1 - ramp;
        inv_freq[i] = (float)(interpolation * (1 - extrapolation_factor) +
                              extrapolation * extrapolation_factor);
    }
    *attn_factor = (float)attn;
}

/* ---- safetensors ----------------------------------------------------------- */

/* Element sizes of every safetensors dtype, so that headers holding tensors we
 * never use can still be checked; only four of them map to a model_dtype. */
static int st_dtype(const char *s, int *elem_size, int *model_dt)
{
    static const struct {
        const char *name;
        int size, model_dt;
    } table[] = {
        {"F32", 4, MODEL_F32}, {"F16", 2, MODEL_F16}, {"BF16", 2, MODEL_BF16},
        {"I32", 4, MODEL_I32}, {"F64", 8, -1},        {"I64", 8, -1},
        {"U64", 8, -1},        {"U32", 4, -1},        {"I16", 2, -1},
        {"U16", 2, -1},        {"I8", 1, -1},         {"U8", 1, -1},
        {"BOOL", 1, -1},       {"F8_E4M3", 1, -1},    {"F8_E5M2", 1, -1},
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (!strcmp(s, table[i].name)) {
            *elem_size = table[i].size;
            *model_dt = table[i].model_dt;
            return 0;
        }
    return -1;
}

const char *model_dtype_name(enum model_dtype d)
{
    switch (d) {
    case MODEL_F32:
        return "F32";
    case MODEL_F16:
        return "F16";
    case MODEL_BF16:
        return "BF16";
    case MODEL_I32:
        return "I32";
    }
    return "?";
}

/* Checks one header entry against the file and, when out is given, fills a
 * view of it. Every way the header can lie ends here with the tensor named. */
static int st_entry(const struct model_file *f, const char *name, const json_t *v,
                    model_tensor *out, errbuf *err)
{
    if (!json_is_object(v))
        return errorf(err, "%s: tensor '%s': header entry is not an object", f->path, name);
    json_t *dt = json_object_get(v, "dtype");
    json_t *shape = json_object_get(v, "shape");
    json_t *offs = json_object_get(v, "data_offsets");
    if (!json_is_string(dt))
        return errorf(err, "%s: tensor '%s': missing or non-string 'dtype'", f->path, name);
    int elem, model_dt;
    if (st_dtype(json_string_value(dt), &elem, &model_dt))
        return errorf(err, "%s: tensor '%s': unknown dtype '%s'", f->path, name,
                      json_string_value(dt));
    if (!json_is_array(shape))
        return errorf(err, "%s: tensor '%s': missing or non-array 'shape'", f->path, name);
    size_t n_dims = json_array_size(shape);
    if (n_dims > 8)
        return errorf(err, "%s: tensor '%s': %zu dimensions", f->path, name, n_dims);
    uint64_t numel = 1;
    int64_t dims[8];
    for (size_t i = 0; i < n_dims; i++) {
        json_t *d = json_array_get(shape, i);
        if (!json_is_integer(d) || json_integer_value(d) < 0 || json_integer_value(d) > (1LL << 40))
            return errorf(err, "%s: tensor '%s': shape[%zu] is not a valid size", f->path, name, i);
        dims[i] = json_integer_value(d);
        if (dims[i] && numel > (UINT64_MAX >> 8) / (uint64_t)dims[i])
            return errorf(err, "%s: tensor '%s': shape is too large", f->path, name);
        numel *= (uint64_t)dims[i];
    }
    if (!json_is_array(offs) || json_array_size(offs) != 2 ||
        !json_is_integer(json_array_get(offs, 0)) || !json_is_integer(json_array_get(offs, 1)))
        return errorf(err, "%s: tensor '%s': 'data_offsets' must be [begin, end]", f->path, name);
    json_int_t begin = json_integer_value(json_array_get(offs, 0));
    json_int_t end = json_integer_value(json_array_get(offs, 1));
    if (begin < 0 || end < begin)
        return errorf(err, "%s: tensor '%s': bad data_offsets [%lld, %lld]", f->path, name,
                      (long long)begin, (long long)end);
    if ((uint64_t)end > f->data_size)
        return errorf(err,
                      "%s: tensor '%s': data_offsets [%lld, %lld] run past the end of the data "
                      "(%zu bytes; truncated file?)",
                      f->path, name, (long long)begin, (long long)end, f->data_size);
    uint64_t n_bytes = numel * (uint64_t)elem;
    if ((uint64_t)(end - begin) != n_bytes)
        return errorf(err,
                      "%s: tensor '%s': data_offsets give %lld bytes but dtype %s and the shape "
                      "need %llu",
                      f->path, name, (long long)(end - begin), json_string_value(dt),
                      (unsigned long long)n_bytes);
    if (!out)
        return 0;
    if (model_dt < 0)
        return errorf(err, "%s: tensor '%s': dtype %s is not supported", f->path, name,
                      json_string_value(dt));
    if (n_dims > 4)
        return errorf(err, "%s: tensor '%s': %zu dimensions", f->path, name, n_dims);
    memset(out, 0, sizeof *out);
    out->dtype = (enum model_dtype)model_dt;
    out->n_dims = (int)n_dims;
    for (size_t i = 0; i < n_dims; i++)
        out->shape[i] = dims[i];
    out->data = f->data + begin;
    out->n_bytes = (size_t)n_bytes;
    out->name = json_object_iter_key(json_object_iter_at((json_t *)f->header, name));
    return 0;
}

static void file_unmap(struct model_file *f)
{
    if (f->map)
        munmap(f->map, f->size);
    json_decref(f->header);
    free(f->path);
    free(f->name);
    memset(f, 0, sizeof *f);
}

static int file_map(struct model_file *f, const char *dir, const char *name, errbuf *err)
{
    memset(f, 0, sizeof *f);
    strbuf sb = STRBUF_INIT;
    sb_addf(&sb, "%s/%s", dir, name);
    f->path = sb_detach(&sb, NULL);
    f->name = strdup(name);
    int fd = open(f->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errorf(err, "%s: %s", f->path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st)) {
        int e = errno;
        close(fd);
        return errorf(err, "%s: %s", f->path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return errorf(err, "%s: not a regular file", f->path);
    }
    f->size = (size_t)st.st_size;
    if (f->size < 8) {
        close(fd);
        return errorf(err, "%s: %zu bytes: too short for a safetensors file", f->path, f->size);
    }
    f->map = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (f->map == MAP_FAILED) {
        f->map = NULL;
        return errorf(err, "%s: mmap: %s", f->path, strerror(e));
    }
    const unsigned char *p = f->map;
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; i--)
        header_len = header_len << 8 | p[i];
    if (header_len > f->size - 8)
        return errorf(err,
                      "%s: header length %llu runs past the end of the file (%zu bytes; "
                      "truncated or not a safetensors file?)",
                      f->path, (unsigned long long)header_len, f->size);
    json_error_t jerr;
    f->header = json_loadb((const char *)p + 8, (size_t)header_len, 0, &jerr);
    if (!f->header)
        return errorf(err, "%s: header: column %d: %s", f->path, jerr.column, jerr.text);
    if (!json_is_object(f->header))
        return errorf(err, "%s: header is not a JSON object", f->path);
    f->data = p + 8 + header_len;
    f->data_size = f->size - 8 - (size_t)header_len;
    const char *key;
    json_t *v;
    json_object_foreach(f->header, key, v)
    {
        if (!strcmp(key, "__metadata__"))
            continue;
        if (st_entry(f, key, v, NULL, err))
            return -1;
    }
    return 0;
}

/* ---- model ----------------------------------------------------------------- */

static int find_tensor(model *m, const char *name, model_tensor *out, errbuf *err)
{
    struct model_priv *priv = m->priv;
    if (priv->weight_map) {
        json_t *fname = json_object_get(priv->weight_map, name);
        if (!json_is_string(fname))
            return errorf(err, "%s/model.safetensors.index.json: missing tensor '%s'", m->dir,
                          name);
        for (int i = 0; i < m->n_files; i++)
            if (!strcmp(m->files[i].name, json_string_value(fname))) {
                json_t *v = json_object_get(m->files[i].header, name);
                if (!v)
                    return errorf(err,
                                  "%s: missing tensor '%s' (model.safetensors.index.json puts "
                                  "it in this file)",
                                  m->files[i].path, name);
                return st_entry(&m->files[i], name, v, out, err);
            }
        return errorf(err, "%s/model.safetensors.index.json: tensor '%s': file '%s' not mapped",
                      m->dir, name, json_string_value(fname));
    }
    for (int i = 0; i < m->n_files; i++) {
        json_t *v = json_object_get(m->files[i].header, name);
        if (v)
            return st_entry(&m->files[i], name, v, out, err);
    }
    return errorf(err, "%s: missing tensor '%s'", m->n_files ? m->files[0].path : m->dir, name);
}

static int has_tensor(model *m, const char *name)
{
    struct model_priv *priv = m->priv;
    if (priv->weight_map)
        return json_object_get(priv->weight_map, name) != NULL;
    for (int i = 0; i < m->n_files; i++)
        if (json_object_get(m->files[i].header, name))
            return 1;
    return 0;
}

static const char *tensor_file(model *m, const model_tensor *t)
{
    for (int i = 0; i < m->n_files; i++) {
        const unsigned char *p = t->data;
        if (p >= m->files[i].data && p <= m->files[i].data + m->files[i].data_size)
            return m->files[i].path;
    }
    return m->dir;
}

static int expect_shape(model *m, const model_tensor *t, int n_dims, int64_t d0, int64_t d1,
                        errbuf *err)
{
    int ok = t->n_dims == n_dims && t->shape[0] == d0 && (n_dims < 2 || t->shape[1] == d1);
    if (ok)
        return 0;
    char got[96] = "", want[64];
    size_t len = 0;
    for (int i = 0; i < t->n_dims && len < sizeof got - 24; i++)
        len += (size_t)snprintf(got + len, sizeof got - len, "%s%lld", i ? ", " : "",
                                (long long)t->shape[i]);
    if (n_dims == 1)
        snprintf(want, sizeof want, "%lld", (long long)d0);
    else
        snprintf(want, sizeof want, "%lld, %lld", (long long)d0, (long long)d1);
    return errorf(err, "%s: tensor '%s': shape [%s], but config.json implies [%s]",
                  tensor_file(m, t), t->name, got, want);
}

static int expect_float(model *m, const model_tensor *t, errbuf *err)
{
    if (t->dtype == MODEL_F32 || t->dtype == MODEL_F16 || t->dtype == MODEL_BF16)
        return 0;
    return errorf(err, "%s: tensor '%s': dtype %s, expected F32, F16 or BF16", tensor_file(m, t),
                  t->name, model_dtype_name(t->dtype));
}

static int load_vector(model *m, const char *name, int64_t n, model_tensor *out, errbuf *err)
{
    if (find_tensor(m, name, out, err) || expect_float(m, out, err) ||
        expect_shape(m, out, 1, n, 0, err))
        return -1;
    return 0;
}

static int load_linear(model *m, const char *prefix, int64_t out_f, int64_t in_f, model_linear *l,
                       errbuf *err)
{
    char name[256];
    memset(l, 0, sizeof *l);
    l->in_features = in_f;
    l->out_features = out_f;
    snprintf(name, sizeof name, "%s.qweight", prefix);
    if (!has_tensor(m, name)) {
        snprintf(name, sizeof name, "%s.weight", prefix);
        if (find_tensor(m, name, &l->weight, err) || expect_float(m, &l->weight, err) ||
            expect_shape(m, &l->weight, 2, out_f, in_f, err))
            return -1;
        return 0;
    }
    if (!m->cfg.is_awq)
        return errorf(err,
                      "%s: tensor '%s' is quantized, but config.json has no quantization_config",
                      m->dir, name);
    int g = m->cfg.awq_group_size;
    if (in_f % g || out_f % 8)
        return errorf(err,
                      "%s/config.json: layer '%s': AWQ needs in_features (%lld) divisible by "
                      "group_size %d and out_features (%lld) by 8",
                      m->dir, prefix, (long long)in_f, g, (long long)out_f);
    l->is_awq = 1;
    l->group_size = g;
    if (find_tensor(m, name, &l->qweight, err))
        return -1;
    if (l->qweight.dtype != MODEL_I32)
        return errorf(err, "%s: tensor '%s': dtype %s, expected I32", tensor_file(m, &l->qweight),
                      name, model_dtype_name(l->qweight.dtype));
    if (expect_shape(m, &l->qweight, 2, in_f, out_f / 8, err))
        return -1;
    snprintf(name, sizeof name, "%s.qzeros", prefix);
    if (find_tensor(m, name, &l->qzeros, err))
        return -1;
    if (l->qzeros.dtype != MODEL_I32)
        return errorf(err, "%s: tensor '%s': dtype %s, expected I32", tensor_file(m, &l->qzeros),
                      name, model_dtype_name(l->qzeros.dtype));
    if (expect_shape(m, &l->qzeros, 2, in_f / g, out_f / 8, err))
        return -1;
    snprintf(name, sizeof name, "%s.scales", prefix);
    if (find_tensor(m, name, &l->scales, err))
        return -1;
    if (l->scales.dtype != MODEL_F16)
        return errorf(err, "%s: tensor '%s': dtype %s, expected F16", tensor_file(m, &l->scales),
                      name, model_dtype_name(l->scales.dtype));
    if (expect_shape(m, &l->scales, 2, in_f / g, out_f, err))
        return -1;
    return 0;
}

static int load_weights(model *m, errbuf *err)
{
    const model_config *c = &m->cfg;
    int64_t q_out = (int64_t)c->n_heads * c->head_dim;
    int64_t kv_out = (int64_t)c->n_kv_heads * c->head_dim;
    if (find_tensor(m, "model.embed_tokens.weight", &m->embed, err) ||
        expect_float(m, &m->embed, err) ||
        expect_shape(m, &m->embed, 2, c->vocab_size, c->hidden_size, err))
        return -1;
    if (load_vector(m, "model.norm.weight", c->hidden_size, &m->final_norm, err))
        return -1;
    if (c->tie_word_embeddings) {
        m->lm_head = m->embed;
    } else if (find_tensor(m, "lm_head.weight", &m->lm_head, err) ||
               expect_float(m, &m->lm_head, err) ||
               expect_shape(m, &m->lm_head, 2, c->vocab_size, c->hidden_size, err)) {
        return -1;
    }
    m->layers = calloc((size_t)c->n_layers, sizeof *m->layers);
    if (!m->layers)
        return errorf(err, "out of memory");
    for (int i = 0; i < c->n_layers; i++) {
        model_layer *L = &m->layers[i];
        char p[128], name[192];
        snprintf(p, sizeof p, "model.layers.%d", i);
#define VEC(field, suffix, n)                                                                      \
    snprintf(name, sizeof name, "%s.%s", p, suffix);                                               \
    if (load_vector(m, name, n, &L->field, err))                                                   \
        return -1;
#define LIN(field, suffix, out_f, in_f)                                                            \
    snprintf(name, sizeof name, "%s.%s", p, suffix);                                               \
    if (load_linear(m, name, out_f, in_f, &L->field, err))                                         \
        return -1;
        VEC(attn_norm, "input_layernorm.weight", c->hidden_size)
        VEC(mlp_norm, "post_attention_layernorm.weight", c->hidden_size)
        VEC(q_norm, "self_attn.q_norm.weight", c->head_dim)
        VEC(k_norm, "self_attn.k_norm.weight", c->head_dim)
        LIN(q, "self_attn.q_proj", q_out, c->hidden_size)
        LIN(k, "self_attn.k_proj", kv_out, c->hidden_size)
        LIN(v, "self_attn.v_proj", kv_out, c->hidden_size)
        LIN(o, "self_attn.o_proj", c->hidden_size, q_out)
        LIN(gate, "mlp.gate_proj", c->intermediate_size, c->hidden_size)
        LIN(up, "mlp.up_proj", c->intermediate_size, c->hidden_size)
        LIN(down, "mlp.down_proj", c->hidden_size, c->intermediate_size)
#undef VEC
#undef LIN
    }
    return 0;
}

/* Maps the shards named by the index, each once, in the order they appear. */
static int map_sharded(model *m, const char *index_path, errbuf *err)
{
    struct model_priv *priv = m->priv;
    json_error_t jerr;
    json_t *index = json_load_file(index_path, 0, &jerr);
    if (!index)
        return errorf(err, "%s: line %d, column %d: %s", index_path, jerr.line, jerr.column,
                      jerr.text);
    json_t *wm = json_object_get(index, "weight_map");
    if (!json_is_object(wm) || json_object_size(wm) == 0) {
        json_decref(index);
        return errorf(err, "%s: missing or empty 'weight_map'", index_path);
    }
    priv->weight_map = json_incref(wm);
    json_decref(index);
    const char *key;
    json_t *v;
    json_object_foreach(wm, key, v)
    {
        if (!json_is_string(v))
            return errorf(err, "%s: weight_map['%s'] is not a file name", index_path, key);
        const char *fname = json_string_value(v);
        /* the index must not reach outside the folder */
        if (!*fname || strchr(fname, '/') || !strcmp(fname, ".") || !strcmp(fname, ".."))
            return errorf(err, "%s: weight_map['%s']: bad file name '%s'", index_path, key, fname);
        int seen = 0;
        for (int i = 0; i < m->n_files && !seen; i++)
            seen = !strcmp(m->files[i].name, fname);
        if (seen)
            continue;
        struct model_file *files = realloc(m->files, (size_t)(m->n_files + 1) * sizeof *files);
        if (!files)
            return errorf(err, "out of memory");
        m->files = files;
        if (file_map(&m->files[m->n_files++], m->dir, fname, err))
            return -1;
    }
    return 0;
}

int model_open(model *m, const char *dir, errbuf *err)
{
    memset(m, 0, sizeof *m);
    if (error_check_folder(err, dir, "expected a Hugging Face model folder with config.json"))
        return -1;
    m->dir = strdup(dir);
    m->priv = calloc(1, sizeof(struct model_priv));
    if (!m->dir || !m->priv) {
        model_close(m);
        return errorf(err, "out of memory");
    }
    strbuf path = STRBUF_INIT;
    int rc = -1;

    sb_addf(&path, "%s/config.json", dir);
    json_error_t jerr;
    json_t *root = json_load_file(path.buf, 0, &jerr);
    if (!root) {
        if (jerr.line < 1)
            errorf(err, "%s: %s", path.buf, jerr.text);
        else
            errorf(err, "%s: line %d, column %d: %s", path.buf, jerr.line, jerr.column, jerr.text);
        goto out;
    }
    int dtype_given;
    rc = config_from_json(&m->cfg, root, path.buf, &dtype_given, err);
    json_decref(root);
    if (rc)
        goto out;
    rc = -1;

    struct stat st;
    sb_reset(&path);
    sb_addf(&path, "%s/model.safetensors.index.json", dir);
    if (stat(path.buf, &st) == 0) {
        if (map_sharded(m, path.buf, err))
            goto out;
    } else {
        sb_reset(&path);
        sb_addf(&path, "%s/model.safetensors", dir);
        if (stat(path.buf, &st) != 0) {
            errorf(err, "%s: no model.safetensors or model.safetensors.index.json", dir);
            goto out;
        }
        m->files = calloc(1, sizeof *m->files);
        if (!m->files) {
            errorf(err, "out of memory");
            goto out;
        }
        m->n_files = 1;
        if (file_map(&m->files[0], dir, "model.safetensors", err))
            goto out;
    }
    if (load_weights(m, err))
        goto out;
    if (!dtype_given)
        m->cfg.dtype = m->embed.dtype;
    rc = 0;
out:
    sb_release(&path);
    if (rc)
        model_close(m);
    return rc;
}

void model_close(model *m)
{
    for (int i = 0; i < m->n_files; i++)
        file_unmap(&m->files[i]);
    free(m->files);
    free(m->layers);
    free(m->dir);
    struct model_priv *priv = m->priv;
    if (priv) {
        json_decref(priv->weight_map);
        free(priv);
    }
    memset(m, 0, sizeof *m);
}

/* ---- conversion ------------------------------------------------------------ */

void model_tensor_to_f32(const model_tensor *t, int64_t first, int64_t n, float *out)
{
    const unsigned char *p = t->data;
    /* memcpy per element: safetensors does not promise aligned offsets */
    switch (t->dtype) {
    case MODEL_F32:
        memcpy(out, p + first * 4, (size_t)n * 4);
        break;
    case MODEL_F16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + (first + i) * 2, 2);
            out[i] = model_f16_to_f32(h);
        }
        break;
    case MODEL_BF16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + (first + i) * 2, 2);
            out[i] = model_bf16_to_f32(h);
        }
        break;
    case MODEL_I32:
        for (int64_t i = 0; i < n; i++) {
            int32_t v;
            memcpy(&v, p + (first + i) * 4, 4);
            out[i] = (float)v;
        }
        break;
    }
}

static uint32_t load_u32(const unsigned char *p, int64_t index)
{
    uint32_t v;
    memcpy(&v, p + index * 4, 4);
    return v;
}

void model_linear_to_f32(const model_linear *l, float *out)
{
    int64_t in_f = l->in_features, out_f = l->out_features;
    if (!l->is_awq) {
        model_tensor_to_f32(&l->weight, 0, in_f * out_f, out);
        return;
    }
    const unsigned char *qw = l->qweight.data, *qz = l->qzeros.data, *sc = l->scales.data;
    int64_t words = out_f / 8;
    for (int64_t k = 0; k < in_f; k++) {
        int64_t g = k / l->group_size;
        for (int64_t c = 0; c < words; c++) {
            uint32_t wq = load_u32(qw, k * words + c);
            uint32_t wz = load_u32(qz, g * words + c);
            for (int i = 0; i < 8; i++) {
                int64_t n = 8 * c + model_awq_order[i];
                int q = (int)(wq >> (4 * i)) & 15;
                int z = (int)(wz >> (4 * i)) & 15;
                uint16_t s;
                memcpy(&s, sc + (g * out_f + n) * 2, 2);
                out[n * in_f + k] = (float)(q - z) * model_f16_to_f32(s);
            }
        }
    }
}
