/*
 * model.c - config.json, safetensors through mmap, AWQ (see model.h).
 *
 * Every tensor the engines will read is looked up by name, and its dtype,
 * shape and byte range are checked against the header, the file size and
 * the config before a view is handed out: the engines never see a pointer
 * that could run past a mapping.
 */
#include "model.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "strbuf.h"

const int model_awq_order[8] = {0, 2, 4, 6, 1, 3, 5, 7};

struct model_file {
    char *path;
    void *map;
    size_t size;
    json_t *header;
    size_t data_start; /* 8 + header length */
};

/* ---- number conversions ---- */

float model_bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t model_f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffff) > 0x7f800000)
        return (uint16_t)((u >> 16) | 0x40); /* NaN stays NaN */
    u += 0x7fff + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

float model_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal: normalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) {
                man <<= 1;
                exp--;
            }
            u = sign | exp << 23 | (man & 0x3ff) << 13;
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000 | man << 13;
    } else {
        u = sign | (exp + 127 - 15) << 23 | man << 13;
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t model_f32_to_f16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000;
    int32_t exp = (int32_t)((u >> 23) & 0xff) - 127 + 15;
    uint32_t man = u & 0x7fffff;
    if (((u >> 23) & 0xff) == 0xff)
        return (uint16_t)(sign | 0x7c00 | (man ? 0x200 : 0));
    if (exp >= 31)
        return (uint16_t)(sign | 0x7c00);
    if (exp <= 0) {
        if (exp < -10)
            return (uint16_t)sign;
        man |= 0x800000;
        uint32_t shift = (uint32_t)(14 - exp);
        uint32_t half = man >> shift, rem = man & ((1u << shift) - 1), mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1)))
            half++;
        return (uint16_t)(sign | half);
    }
    uint32_t h = sign | (uint32_t)exp << 10 | man >> 13, rem = man & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1)))
        h++; /* may carry into the exponent: still correct */
    return (uint16_t)h;
}

static size_t dtype_size(enum model_dtype d) { return d == MODEL_F32 || d == MODEL_I32 ? 4 : 2; }

/* ---- config.json ---- */

static int get_int(json_t *o, const char *key, int required, int def, int *out, const char *path,
                   errbuf *err)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) {
        if (required)
            return errorf(err, "%s: missing field '%s'", path, key);
        *out = def;
        return 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 100000000)
        return errorf(err, "%s: field '%s' must be a non-negative integer", path, key);
    *out = (int)json_integer_value(v);
    return 0;
}

static int get_num(json_t *o, const char *key, double def, double *out, const char *path,
                   errbuf *err)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return 0;
    }
    if (!json_is_number(v))
        return errorf(err, "%s: field '%s' must be a number", path, key);
    *out = json_number_value(v);
    return 0;
}

static int parse_dtype_name(const char *s, enum model_dtype *d)
{
    if (!strcmp(s, "bfloat16"))
        *d = MODEL_BF16;
    else if (!strcmp(s, "float16") || !strcmp(s, "half"))
        *d = MODEL_F16;
    else if (!strcmp(s, "float32") || !strcmp(s, "float"))
        *d = MODEL_F32;
    else
        return -1;
    return 0;
}

int model_config_parse(model_config *cfg, const char *text, const char *path, errbuf *err)
{
    memset(cfg, 0, sizeof *cfg);
    json_error_t je;
    json_t *o = json_loads(text, 0, &je);
    if (!o)
        return errorf(err, "%s:%d:%d: %s", path, je.line, je.column, je.text);
    int rc = -1;
    if (!json_is_object(o)) {
        errorf(err, "%s: not a JSON object", path);
        goto out;
    }
    const char *mt = json_string_value(json_object_get(o, "model_type"));
    if (mt && strcmp(mt, "qwen3")) {
        errorf(err, "%s: model_type '%s' is not supported (only dense Qwen3, 'qwen3')", path, mt);
        goto out;
    }
    if (get_int(o, "vocab_size", 1, 0, &cfg->vocab_size, path, err) ||
        get_int(o, "hidden_size", 1, 0, &cfg->hidden_size, path, err) ||
        get_int(o, "num_hidden_layers", 1, 0, &cfg->n_layers, path, err) ||
        get_int(o, "num_attention_heads", 1, 0, &cfg->n_heads, path, err) ||
        get_int(o, "intermediate_size", 1, 0, &cfg->intermediate_size, path, err) ||
        get_int(o, "num_key_value_heads", 0, cfg->n_heads, &cfg->n_kv_heads, path, err) ||
        get_int(o, "max_position_embeddings", 0, 40960, &cfg->max_position_embeddings, path, err))
        goto out;
    if (cfg->n_heads <= 0 || cfg->hidden_size <= 0 || cfg->vocab_size <= 0 || cfg->n_layers <= 0 ||
        cfg->intermediate_size <= 0) {
        errorf(err, "%s: sizes must be positive", path);
        goto out;
    }
    if (get_int(o, "head_dim", 0, cfg->hidden_size / cfg->n_heads, &cfg->head_dim, path, err))
        goto out;
    if (cfg->n_kv_heads <= 0 || cfg->n_heads % cfg->n_kv_heads) {
        errorf(err, "%s: num_attention_heads %d is not a multiple of num_key_value_heads %d", path,
               cfg->n_heads, cfg->n_kv_heads);
        goto out;
    }
    if (cfg->head_dim <= 0 || cfg->head_dim % 2) {
        errorf(err, "%s: head_dim must be even and positive", path);
        goto out;
    }
    double eps;
    if (get_num(o, "rms_norm_eps", 1e-6, &eps, path, err))
        goto out;
    cfg->rms_norm_eps = (float)eps;
    json_t *tie = json_object_get(o, "tie_word_embeddings");
    cfg->tie_word_embeddings = json_is_true(tie);

    /* RoPE: rope_theta + rope_scaling (Qwen3 checkpoints), or transformers 5's
     * rope_parameters holding both. */
    json_t *rp = json_object_get(o, "rope_parameters");
    json_t *rs = json_object_get(o, "rope_scaling");
    if (get_num(o, "rope_theta", 1000000.0, &cfg->rope_theta, path, err))
        goto out;
    if (json_is_object(rp)) {
        if (get_num(rp, "rope_theta", cfg->rope_theta, &cfg->rope_theta, path, err))
            goto out;
        if (!rs || json_is_null(rs))
            rs = rp;
    }
    if (rs && !json_is_null(rs)) {
        const char *type = json_string_value(json_object_get(rs, "rope_type"));
        if (!type)
            type = json_string_value(json_object_get(rs, "type"));
        if (!type) {
            errorf(err, "%s: rope_scaling needs a rope_type", path);
            goto out;
        }
        if (!strcmp(type, "yarn")) {
            cfg->rope_yarn = 1;
            if (get_num(rs, "factor", 1.0, &cfg->yarn_factor, path, err) ||
                get_num(rs, "beta_fast", 32, &cfg->yarn_beta_fast, path, err) ||
                get_num(rs, "beta_slow", 1, &cfg->yarn_beta_slow, path, err) ||
                get_int(rs, "original_max_position_embeddings", 0, 0,
                        &cfg->yarn_original_max_position, path, err))
                goto out;
            if (cfg->yarn_factor < 1.0) {
                errorf(err, "%s: rope_scaling.factor must be >= 1", path);
                goto out;
            }
        } else if (strcmp(type, "default")) {
            errorf(err, "%s: rope_scaling type '%s' is not supported (default or yarn)", path,
                   type);
            goto out;
        }
    }

    const char *dt = json_string_value(json_object_get(o, "torch_dtype"));
    if (!dt)
        dt = json_string_value(json_object_get(o, "dtype"));
    cfg->dtype = MODEL_BF16;
    if (dt && parse_dtype_name(dt, &cfg->dtype)) {
        errorf(err, "%s: torch_dtype '%s' is not supported (bfloat16, float16, float32)", path,
               dt);
        goto out;
    }

    json_t *q = json_object_get(o, "quantization_config");
    if (q && !json_is_null(q)) {
        const char *qm = json_string_value(json_object_get(q, "quant_method"));
        if (!qm || strcmp(qm, "awq")) {
            errorf(err, "%s: quantization_config.quant_method '%s' is not supported (only awq)",
                   path, qm ? qm : "?");
            goto out;
        }
        int bits, gs;
        if (get_int(q, "bits", 0, 4, &bits, path, err) ||
            get_int(q, "group_size", 0, 128, &gs, path, err))
            goto out;
        const char *ver = json_string_value(json_object_get(q, "version"));
        json_t *zp = json_object_get(q, "zero_point");
        if (bits != 4 || (ver && strcasecmp(ver, "gemm")) || (zp && !json_is_true(zp)) || gs <= 0) {
            errorf(err,
                   "%s: AWQ must be bits 4, version gemm, zero_point true (got bits %d, version "
                   "%s)",
                   path, bits, ver ? ver : "?");
            goto out;
        }
        cfg->is_awq = 1;
        cfg->awq_group_size = gs;
    }

    /* EOS: the config's ids plus Qwen3's two end tokens. */
    json_t *eos = json_object_get(o, "eos_token_id");
    int ids[8], n = 0;
    if (json_is_integer(eos))
        ids[n++] = (int)json_integer_value(eos);
    else if (json_is_array(eos)) {
        size_t i;
        json_t *v;
        json_array_foreach(eos, i, v) if (json_is_integer(v) && n < 4) ids[n++] = (int)json_integer_value(v);
    }
    ids[n++] = 151645;
    ids[n++] = 151643;
    for (int i = 0; i < n && cfg->n_eos < 4; i++) {
        int dup = 0;
        for (int k = 0; k < cfg->n_eos; k++)
            dup |= cfg->eos_ids[k] == ids[i];
        if (!dup)
            cfg->eos_ids[cfg->n_eos++] = ids[i];
    }
    rc = 0;
out:
    json_decref(o);
    return rc;
}

void model_config_qwen3_14b(model_config *c)
{
    memset(c, 0, sizeof *c);
    c->vocab_size = 151936;
    c->hidden_size = 5120;
    c->n_layers = 40;
    c->n_heads = 40;
    c->n_kv_heads = 8;
    c->head_dim = 128;
    c->intermediate_size = 17408;
    c->rms_norm_eps = 1e-6f;
    c->rope_theta = 1000000.0;
    c->max_position_embeddings = 40960;
    c->tie_word_embeddings = 0;
    c->dtype = MODEL_F16;
    c->is_awq = 1;
    c->awq_group_size = 128;
    c->eos_ids[0] = 151645;
    c->eos_ids[1] = 151643;
    c->n_eos = 2;
}

/* transformers' _compute_default_rope_parameters / _compute_yarn_parameters. */
void model_rope_inv_freq(const model_config *cfg, float *inv_freq, float *attn_factor)
{
    int dim = cfg->head_dim, half = dim / 2;
    double base = cfg->rope_theta;
    *attn_factor = 1.0f;
    for (int i = 0; i < half; i++)
        inv_freq[i] = (float)(1.0 / pow(base, (double)(2 * i) / dim));
    if (!cfg->rope_yarn)
        return;
    double factor = cfg->yarn_factor;
    int orig = cfg->max_position_embeddings;
    if (cfg->yarn_original_max_position > 0) {
        /* HF: with original_max_position_embeddings given, the factor is
         * the ratio of the context lengths. */
        orig = cfg->yarn_original_max_position;
        factor = (double)cfg->max_position_embeddings / orig;
    }
    *attn_factor = factor > 1.0 ? (float)(0.1 * log(factor) + 1.0) : 1.0f;
    double lo = dim * log(orig / (cfg->yarn_beta_fast * 2 * M_PI)) / (2 * log(base));
    double hi = dim * log(orig / (cfg->yarn_beta_slow * 2 * M_PI)) / (2 * log(base));
    lo = floor(lo);
    hi = ceil(hi);
    if (lo < 0)
        lo = 0;
    if (hi > dim - 1)
        hi = dim - 1;
    if (lo == hi)
        hi += 0.001;
    for (int i = 0; i < half; i++) {
        double ramp = (i - lo) / (hi - lo);
        ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
        double extra = 1.0 - ramp; /* inv_freq_extrapolation_factor */
        float pos = (float)pow(base, (double)(2 * i) / dim);
        float f_extra = 1.0f / pos, f_inter = 1.0f / ((float)factor * pos);
        inv_freq[i] = (float)(f_inter * (1 - extra) + f_extra * extra);
    }
}

/* ---- safetensors ---- */

static int map_file(struct model_file *f, const char *path, errbuf *err)
{
    memset(f, 0, sizeof *f);
    f->path = strdup(path);
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return errorf(err, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) || st.st_size < 8) {
        close(fd);
        return errorf(err, "%s: too short to be a safetensors file", path);
    }
    f->size = (size_t)st.st_size;
    f->map = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (f->map == MAP_FAILED) {
        f->map = NULL;
        return errorf(err, "%s: mmap: %s", path, strerror(errno));
    }
    uint64_t hlen;
    memcpy(&hlen, f->map, 8); /* little endian, as the format says */
    if (hlen > f->size - 8 || hlen > ((uint64_t)100 << 20))
        return errorf(err, "%s: header length %llu runs past the end of the file (%zu bytes)",
                      path, (unsigned long long)hlen, f->size);
    json_error_t je;
    f->header = json_loadb((const char *)f->map + 8, (size_t)hlen, 0, &je);
    if (!f->header || !json_is_object(f->header))
        return errorf(err, "%s: bad safetensors header: %s", path, f->header ? "not an object" : je.text);
    f->data_start = 8 + (size_t)hlen;
    return 0;
}

/* Finds tensor name in the files and checks it. shape: expected dims
 * (n_dims of them; -1 = any). Returns 0 found, 1 absent, -1 error. */
static int find_tensor(model *m, const char *name, enum model_dtype want_dtype, int n_dims,
                       const int64_t *shape, model_tensor *t, errbuf *err)
{
    memset(t, 0, sizeof *t);
    for (int i = 0; i < m->n_files; i++) {
        struct model_file *f = &m->files[i];
        json_t *e = json_object_get(f->header, name);
        if (!e)
            continue;
        const char *dt = json_string_value(json_object_get(e, "dtype"));
        json_t *sh = json_object_get(e, "shape"), *off = json_object_get(e, "data_offsets");
        if (!dt || !json_is_array(sh) || !json_is_array(off) || json_array_size(off) != 2)
            return errorf(err, "%s: tensor %s: header entry needs dtype, shape, data_offsets",
                          f->path, name);
        enum model_dtype d;
        if (!strcmp(dt, "F32"))
            d = MODEL_F32;
        else if (!strcmp(dt, "F16"))
            d = MODEL_F16;
        else if (!strcmp(dt, "BF16"))
            d = MODEL_BF16;
        else if (!strcmp(dt, "I32"))
            d = MODEL_I32;
        else
            return errorf(err, "%s: tensor %s: dtype %s is not supported", f->path, name, dt);
        int is_float = d != MODEL_I32;
        if ((int)want_dtype == -1 ? !is_float : want_dtype != d)
            return errorf(err, "%s: tensor %s has dtype %s, expected %s", f->path, name, dt,
                          (int)want_dtype == -1 ? "F32, F16 or BF16"
                          : want_dtype == MODEL_I32 ? "I32"
                          : want_dtype == MODEL_F16 ? "F16" : "float");
        if ((int)json_array_size(sh) != n_dims)
            return errorf(err, "%s: tensor %s has %zu dimensions, expected %d", f->path, name,
                          json_array_size(sh), n_dims);
        uint64_t count = 1;
        for (int k = 0; k < n_dims; k++) {
            json_t *v = json_array_get(sh, (size_t)k);
            if (!json_is_integer(v) || json_integer_value(v) < 0)
                return errorf(err, "%s: tensor %s: bad shape", f->path, name);
            t->shape[k] = json_integer_value(v);
            if (shape[k] >= 0 && t->shape[k] != shape[k])
                return errorf(err, "%s: tensor %s has shape[%d] = %lld, the config implies %lld",
                              f->path, name, k, (long long)t->shape[k], (long long)shape[k]);
            count *= (uint64_t)t->shape[k];
        }
        json_t *b = json_array_get(off, 0), *en = json_array_get(off, 1);
        if (!json_is_integer(b) || !json_is_integer(en))
            return errorf(err, "%s: tensor %s: bad data_offsets", f->path, name);
        uint64_t begin = (uint64_t)json_integer_value(b), end = (uint64_t)json_integer_value(en);
        if (end < begin || end > f->size - f->data_start)
            return errorf(err,
                          "%s: tensor %s: bytes %llu..%llu run past the end of the file (%zu data "
                          "bytes; truncated file?)",
                          f->path, name, (unsigned long long)begin, (unsigned long long)end,
                          f->size - f->data_start);
        if (end - begin != count * dtype_size(d))
            return errorf(err, "%s: tensor %s: %llu bytes for %llu elements of %s", f->path, name,
                          (unsigned long long)(end - begin), (unsigned long long)count, dt);
        t->dtype = d;
        t->n_dims = n_dims;
        t->data = (const char *)f->map + f->data_start + begin;
        t->n_bytes = (size_t)(end - begin);
        t->name = json_object_iter_key(json_object_iter_at(f->header, name));
        return 0;
    }
    return 1;
}

static int need_tensor(model *m, const char *name, enum model_dtype d, int n_dims,
                       const int64_t *shape, model_tensor *t, errbuf *err)
{
    int rc = find_tensor(m, name, d, n_dims, shape, t, err);
    if (rc == 1)
        return errorf(err, "%s: tensor %s is missing", m->dir, name);
    return rc;
}

static int load_linear(model *m, const char *prefix, int64_t out, int64_t in, model_linear *l,
                       errbuf *err)
{
    char name[256];
    memset(l, 0, sizeof *l);
    l->in_features = in;
    l->out_features = out;
    snprintf(name, sizeof name, "%s.qweight", prefix);
    if (m->cfg.is_awq) {
        int g = m->cfg.awq_group_size;
        if (in % g || out % 8)
            return errorf(err, "%s: %s: in %lld must be a multiple of the group %d, out of 8",
                          m->dir, prefix, (long long)in, g);
        int64_t qs[2] = {in, out / 8}, zs[2] = {in / g, out / 8}, ss[2] = {in / g, out};
        int rc = find_tensor(m, name, MODEL_I32, 2, qs, &l->qweight, err);
        if (rc < 0)
            return -1;
        if (rc == 0) {
            l->is_awq = 1;
            l->group_size = g;
            snprintf(name, sizeof name, "%s.qzeros", prefix);
            if (need_tensor(m, name, MODEL_I32, 2, zs, &l->qzeros, err))
                return -1;
            snprintf(name, sizeof name, "%s.scales", prefix);
            if (need_tensor(m, name, MODEL_F16, 2, ss, &l->scales, err))
                return -1;
            return 0;
        }
        /* Not quantized (modules_to_not_convert): a dense weight. */
    }
    int64_t ws[2] = {out, in};
    snprintf(name, sizeof name, "%s.weight", prefix);
    return need_tensor(m, name, (enum model_dtype)-1, 2, ws, &l->weight, err);
}

static int load_files(model *m, errbuf *err)
{
    strbuf p = STRBUF_INIT;
    sb_addf(&p, "%s/model.safetensors.index.json", m->dir);
    json_error_t je;
    json_t *idx = NULL;
    if (access(p.buf, F_OK) == 0) {
        idx = json_load_file(p.buf, 0, &je);
        if (!idx) {
            errorf(err, "%s:%d:%d: %s", p.buf, je.line, je.column, je.text);
            sb_release(&p);
            return -1;
        }
    }
    const char **names = NULL;
    int n = 0;
    if (idx) {
        json_t *wm = json_object_get(idx, "weight_map");
        if (!json_is_object(wm)) {
            errorf(err, "%s: no weight_map", p.buf);
            goto fail;
        }
        names = calloc(json_object_size(wm) + 1, sizeof *names);
        const char *k;
        json_t *v;
        json_object_foreach(wm, k, v)
        {
            const char *fn = json_string_value(v);
            if (!fn || strchr(fn, '/')) {
                errorf(err, "%s: weight_map[%s] is not a file name", p.buf, k);
                goto fail;
            }
            int seen = 0;
            for (int i = 0; i < n; i++)
                seen |= !strcmp(names[i], fn);
            if (!seen)
                names[n++] = fn;
        }
    } else {
        names = calloc(1, sizeof *names);
        names[n++] = "model.safetensors";
    }
    m->files = calloc((size_t)n, sizeof *m->files);
    for (int i = 0; i < n; i++) {
        sb_reset(&p);
        sb_addf(&p, "%s/%s", m->dir, names[i]);
        m->n_files++;
        if (map_file(&m->files[i], p.buf, err))
            goto fail;
    }
    free(names);
    json_decref(idx);
    sb_release(&p);
    return 0;
fail:
    free(names);
    json_decref(idx);
    sb_release(&p);
    return -1;
}

int model_open(model *m, const char *dir, errbuf *err)
{
    memset(m, 0, sizeof *m);
    m->dir = strdup(dir);
    strbuf p = STRBUF_INIT, text = STRBUF_INIT;
    sb_addf(&p, "%s/config.json", dir);
    if (sb_read_file(&text, p.buf)) {
        errorf(err, "%s: %s", p.buf, strerror(errno));
        goto fail;
    }
    if (model_config_parse(&m->cfg, text.buf, p.buf, err) || load_files(m, err))
        goto fail;
    const model_config *c = &m->cfg;
    int64_t H = c->hidden_size, D = c->head_dim, V = c->vocab_size, I = c->intermediate_size;
    int64_t emb[2] = {V, H}, vec[1] = {H}, hd[1] = {D};
    enum model_dtype anyf = (enum model_dtype)-1;
    if (need_tensor(m, "model.embed_tokens.weight", anyf, 2, emb, &m->embed, err) ||
        need_tensor(m, "model.norm.weight", anyf, 1, vec, &m->final_norm, err))
        goto fail;
    if (c->tie_word_embeddings) {
        m->lm_head = m->embed;
    } else if (need_tensor(m, "lm_head.weight", anyf, 2, emb, &m->lm_head, err)) {
        goto fail;
    }
    m->layers = calloc((size_t)c->n_layers, sizeof *m->layers);
    for (int l = 0; l < c->n_layers; l++) {
        model_layer *L = &m->layers[l];
        char n[256], pre[128];
        snprintf(pre, sizeof pre, "model.layers.%d", l);
#define NORM(field, sub, shp)                                                                      \
    snprintf(n, sizeof n, "%s.%s.weight", pre, sub);                                               \
    if (need_tensor(m, n, anyf, 1, shp, &L->field, err))                                           \
        goto fail;
        NORM(attn_norm, "input_layernorm", vec);
        NORM(mlp_norm, "post_attention_layernorm", vec);
        NORM(q_norm, "self_attn.q_norm", hd);
        NORM(k_norm, "self_attn.k_norm", hd);
#undef NORM
#define LIN(field, sub, out, in)                                                                   \
    snprintf(n, sizeof n, "%s.%s", pre, sub);                                                      \
    if (load_linear(m, n, out, in, &L->field, err))                                                \
        goto fail;
        LIN(q, "self_attn.q_proj", c->n_heads * D, H);
        LIN(k, "self_attn.k_proj", c->n_kv_heads * D, H);
        LIN(v, "self_attn.v_proj", c->n_kv_heads * D, H);
        LIN(o, "self_attn.o_proj", H, c->n_heads * D);
        LIN(gate, "mlp.gate_proj", I, H);
        LIN(up, "mlp.up_proj", I, H);
        LIN(down, "mlp.down_proj", H, I);
#undef LIN
    }
    sb_release(&p);
    sb_release(&text);
    return 0;
fail:
    sb_release(&p);
    sb_release(&text);
    model_close(m);
    return -1;
}

void model_close(model *m)
{
    for (int i = 0; i < m->n_files; i++) {
        struct model_file *f = &m->files[i];
        if (f->map)
            munmap(f->map, f->size);
        json_decref(f->header);
        free(f->path);
    }
    free(m->files);
    free(m->layers);
    free(m->dir);
    memset(m, 0, sizeof *m);
}

/* ---- conversions for the CPU engine ---- */

void model_tensor_to_f32(const model_tensor *t, int64_t first, int64_t n, float *out)
{
    switch (t->dtype) {
    case MODEL_F32:
        memcpy(out, (const float *)t->data + first, sizeof(float) * (size_t)n);
        break;
    case MODEL_F16: {
        const uint16_t *s = (const uint16_t *)t->data + first;
        for (int64_t i = 0; i < n; i++)
            out[i] = model_f16_to_f32(s[i]);
        break;
    }
    case MODEL_BF16: {
        const uint16_t *s = (const uint16_t *)t->data + first;
        for (int64_t i = 0; i < n; i++)
            out[i] = model_bf16_to_f32(s[i]);
        break;
    }
    case MODEL_I32:
        for (int64_t i = 0; i < n; i++)
            out[i] = (float)((const int32_t *)t->data)[first + i];
        break;
    }
}

void model_linear_to_f32(const model_linear *l, float *out)
{
    int64_t in = l->in_features, outf = l->out_features;
    if (!l->is_awq) {
        model_tensor_to_f32(&l->weight, 0, in * outf, out);
        return;
    }
    const int32_t *qw = l->qweight.data, *qz = l->qzeros.data;
    const uint16_t *sc = l->scales.data;
    int64_t words = outf / 8;
    for (int64_t k = 0; k < in; k++) {
        int64_t g = k / l->group_size;
        for (int64_t c = 0; c < words; c++) {
            uint32_t w = (uint32_t)qw[k * words + c], z = (uint32_t)qz[g * words + c];
            for (int i = 0; i < 8; i++) {
                int64_t col = 8 * c + model_awq_order[i];
                int q = (int)((w >> (4 * i)) & 15), zp = (int)((z >> (4 * i)) & 15);
                out[col * in + k] = (float)(q - zp) * model_f16_to_f32(sc[g * outf + col]);
            }
        }
    }
}
