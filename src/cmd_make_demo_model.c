/*
 * cmd_make_demo_model.c - `qwen3-batch make-demo-model DIR`: a small Qwen3
 * with random weights and the real tokenizer, so that everything above the
 * engine (the README's first command, the job runner's tests) runs anywhere
 * without downloading a model. Its text is nonsense; its shapes are Qwen3's
 * (GQA, head_dim != hidden/heads, q/k norms, tied embeddings like the small
 * Qwen3 models) so every code path of the engines is exercised.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "model.h"
#include "stwrite.h"
#include "tokdata.h"

struct rng {
    uint64_t s;
};

static double rng_uniform(struct rng *r)
{
    r->s ^= r->s << 13;
    r->s ^= r->s >> 7;
    r->s ^= r->s << 17;
    return (double)(r->s >> 11) * (1.0 / 9007199254740992.0);
}

static float rng_normal(struct rng *r)
{
    double u = rng_uniform(r), v = rng_uniform(r);
    return (float)(sqrt(-2.0 * log(u + 1e-300)) * cos(2 * M_PI * v));
}

static int add_bf16(st_writer *w, const char *name, int n_dims, const int64_t *shape, float std,
                    float mean, struct rng *r, errbuf *err)
{
    size_t n = 1;
    for (int i = 0; i < n_dims; i++)
        n *= (size_t)shape[i];
    uint16_t *d = malloc(n * 2);
    if (!d)
        return errorf(err, "out of memory");
    for (size_t i = 0; i < n; i++)
        d[i] = model_f32_to_bf16(mean + std * rng_normal(r));
    int rc = st_add(w, name, MODEL_BF16, n_dims, shape, d, n * 2, err);
    free(d);
    return rc;
}

/* An AWQ-packed linear layer [out, in]: random 4-bit codes, zero points
 * around 8 and fp16 scales, laid out as model.h describes. */
static int add_awq(st_writer *w, const char *prefix, int64_t out, int64_t in, int group,
                   float std, struct rng *r, errbuf *err)
{
    int64_t words = out / 8, groups = in / group;
    int32_t *qw = malloc(sizeof *qw * (size_t)(in * words));
    int32_t *qz = malloc(sizeof *qz * (size_t)(groups * words));
    uint16_t *sc = malloc(2 * (size_t)(groups * out));
    if (!qw || !qz || !sc) {
        free(qw), free(qz), free(sc);
        return errorf(err, "out of memory");
    }
    for (int64_t i = 0; i < in * words; i++) {
        uint32_t v = 0;
        for (int k = 0; k < 8; k++)
            v |= (uint32_t)(rng_uniform(r) * 16) << (4 * k);
        qw[i] = (int32_t)v;
    }
    for (int64_t i = 0; i < groups * words; i++) {
        uint32_t v = 0;
        for (int k = 0; k < 8; k++)
            v |= (uint32_t)(7 + rng_uniform(r) * 3) << (4 * k);
        qz[i] = (int32_t)v;
    }
    /* Uniform codes have std ~4.6: scale so the weights have about `std`. */
    for (int64_t i = 0; i < groups * out; i++)
        sc[i] = model_f32_to_f16(std / 4.6f * (0.5f + (float)rng_uniform(r)));
    char name[256];
    int64_t s1[2] = {in, words}, s2[2] = {groups, words}, s3[2] = {groups, out};
    int rc = 0;
    snprintf(name, sizeof name, "%s.qweight", prefix);
    rc = rc ? rc : st_add(w, name, MODEL_I32, 2, s1, qw, sizeof *qw * (size_t)(in * words), err);
    snprintf(name, sizeof name, "%s.qzeros", prefix);
    rc = rc ? rc : st_add(w, name, MODEL_I32, 2, s2, qz, sizeof *qz * (size_t)(groups * words), err);
    snprintf(name, sizeof name, "%s.scales", prefix);
    rc = rc ? rc : st_add(w, name, MODEL_F16, 2, s3, sc, 2 * (size_t)(groups * out), err);
    free(qw), free(qz), free(sc);
    return rc;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: qwen3-batch make-demo-model DIR [--seed N] [--awq]\n\n"
               "Writes a small Qwen3 model with random weights and the real Qwen3\n"
               "tokenizer into DIR (created if needed): config.json, model.safetensors,\n"
               "tokenizer.json, tokenizer_config.json. Its output is nonsense, but it\n"
               "runs the whole pipeline in seconds on a CPU.\n\n"
               "  --seed N   random seed (default 1); the same seed gives the same files\n"
               "  --awq      AWQ-packed 4-bit linear layers (hidden 128) instead of bf16\n");
}

int cmd_make_demo_model(int argc, char **argv)
{
    static const struct option opts[] = {{"seed", required_argument, 0, 's'},
                                         {"awq", no_argument, 0, 'a'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    uint64_t seed = 1;
    int awq = 0, c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 's':
            seed = strtoull(optarg, NULL, 10);
            break;
        case 'a':
            awq = 1;
            break;
        case 'h':
            usage(stdout);
            return EXIT_OK;
        default:
            usage(stderr);
            return EXIT_USAGE;
        }
    }
    if (optind != argc - 1) {
        usage(stderr);
        return EXIT_USAGE;
    }
    const char *dir = argv[optind];
    if (mkdir(dir, 0755) && errno != EEXIST)
        return cli_fail("make-demo-model", EXIT_FAILURE_, "%s: %s", dir, strerror(errno));

    /* Shapes: Qwen3 in miniature. */
    int H = awq ? 128 : 64, L = 2, NH = 4, NKV = 2, D = awq ? 64 : 32, I = awq ? 384 : 192;
    int V = 151936;
    errbuf err = {{0}};
    struct rng r = {seed * 0x9e3779b97f4a7c15ull + 1};
    st_writer w;
    st_init(&w);
    int64_t emb[2] = {V, H}, vec[1] = {H}, hd[1] = {D};
    int rc = add_bf16(&w, "model.embed_tokens.weight", 2, emb, 0.15f, 0, &r, &err);
    rc = rc ? rc : add_bf16(&w, "model.norm.weight", 1, vec, 0.05f, 1, &r, &err);
    for (int l = 0; !rc && l < L; l++) {
        char n[128];
#define NORM(sub, shp)                                                                             \
    snprintf(n, sizeof n, "model.layers.%d.%s.weight", l, sub);                                    \
    rc = rc ? rc : add_bf16(&w, n, 1, shp, 0.05f, 1, &r, &err);
        NORM("input_layernorm", vec);
        NORM("post_attention_layernorm", vec);
        NORM("self_attn.q_norm", hd);
        NORM("self_attn.k_norm", hd);
#undef NORM
        struct {
            const char *sub;
            int out, in;
        } lin[] = {{"self_attn.q_proj", NH * D, H}, {"self_attn.k_proj", NKV * D, H},
                   {"self_attn.v_proj", NKV * D, H}, {"self_attn.o_proj", H, NH * D},
                   {"mlp.gate_proj", I, H},          {"mlp.up_proj", I, H},
                   {"mlp.down_proj", H, I}};
        for (int k = 0; !rc && k < 7; k++) {
            float std = 1.0f / sqrtf((float)lin[k].in);
            snprintf(n, sizeof n, "model.layers.%d.%s", l, lin[k].sub);
            if (awq) {
                rc = add_awq(&w, n, lin[k].out, lin[k].in, 128, std, &r, &err);
            } else {
                int64_t sh[2] = {lin[k].out, lin[k].in};
                strcat(n, ".weight");
                rc = add_bf16(&w, n, 2, sh, std, 0, &r, &err);
            }
        }
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    rc = rc ? rc : st_write_file(&w, path, &err);
    st_free(&w);
    if (rc)
        return cli_fail("make-demo-model", EXIT_FAILURE_, "%s", err.msg);

    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    if (!f)
        return cli_fail("make-demo-model", EXIT_FAILURE_, "%s: %s", path, strerror(errno));
    fprintf(f,
            "{\n  \"architectures\": [\"Qwen3ForCausalLM\"],\n  \"model_type\": \"qwen3\",\n"
            "  \"vocab_size\": %d,\n  \"hidden_size\": %d,\n  \"intermediate_size\": %d,\n"
            "  \"num_hidden_layers\": %d,\n  \"num_attention_heads\": %d,\n"
            "  \"num_key_value_heads\": %d,\n  \"head_dim\": %d,\n"
            "  \"max_position_embeddings\": 40960,\n  \"rms_norm_eps\": 1e-06,\n"
            "  \"rope_theta\": 1000000,\n  \"rope_scaling\": null,\n"
            "  \"tie_word_embeddings\": true,\n  \"torch_dtype\": \"%s\",\n"
            "  \"bos_token_id\": 151643,\n  \"eos_token_id\": 151645",
            V, H, I, L, NH, NKV, D, awq ? "float16" : "bfloat16");
    if (awq)
        fprintf(f, ",\n  \"quantization_config\": {\"quant_method\": \"awq\", \"bits\": 4, "
                   "\"group_size\": 128, \"version\": \"gemm\", \"zero_point\": true}");
    fprintf(f, "\n}\n");
    if (fclose(f))
        return cli_fail("make-demo-model", EXIT_FAILURE_, "%s: write failed", path);
    if (tokdata_extract(dir, &err))
        return cli_fail("make-demo-model", EXIT_FAILURE_, "%s", err.msg);
    /* Check what we wrote with the loader the engines use. */
    model m;
    if (model_open(&m, dir, &err))
        return cli_fail("make-demo-model", EXIT_FAILURE_, "wrote an unreadable model: %s",
                        err.msg);
    model_close(&m);
    printf("{\"dir\": \"%s\", \"hidden\": %d, \"layers\": %d, \"awq\": %s}\n", dir, H, L,
           awq ? "true" : "false");
    return EXIT_OK;
}
