/*
 * model.h - a Qwen3 model folder: config.json, safetensors weights, AWQ.
 *
 * model_open() reads config.json, maps every safetensors file (single file or
 * shards through model.safetensors.index.json) read-only with mmap, parses
 * each header with jansson and checks every tensor's dtype, shape and byte
 * range against the file before anything reads it: a truncated or lying file
 * is an error that names the tensor, never a crash.
 *
 * Weights stay in their file dtype; model_tensor is a borrowed view into the
 * mapping (valid until model_close). Helpers convert rows to fp32 for the CPU
 * engine; the CUDA engine uploads the raw bytes and converts on the GPU.
 *
 * Supported: BF16, F16, F32 tensors, and AWQ linear layers (quant_method awq,
 * bits 4, group_size 128 (any group dividing in), version gemm, zero_point):
 *   qweight int32 [in, out/8]: nibble i (bits 4i..4i+3) of word c holds
 *     column 8c + AWQ_ORDER[i], AWQ_ORDER = {0,2,4,6,1,3,5,7};
 *   qzeros  int32 [in/group, out/8], packed the same way;
 *   scales  fp16  [in/group, out];  w[k][n] = (q - z) * s.
 * Anything else is a clear error naming the field or tensor.
 */
#ifndef Q3_MODEL_H
#define Q3_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

enum model_dtype { MODEL_F32 = 0, MODEL_F16, MODEL_BF16, MODEL_I32 };

/* The safetensors spelling of a dtype ("BF16", ...). */
const char *model_dtype_name(enum model_dtype d);

typedef struct model_tensor {
    enum model_dtype dtype;
    int n_dims;
    int64_t shape[4];
    const void *data; /* borrowed: into the mmap, or NULL when absent */
    size_t n_bytes;
    const char *name; /* borrowed */
} model_tensor;

/* A linear layer y = x W^T with W [out, in]. Dense: weight [out, in] in
 * F32/F16/BF16. AWQ: qweight/qzeros/scales as described above. */
typedef struct model_linear {
    int64_t in_features, out_features;
    int is_awq;
    int group_size;       /* AWQ only */
    model_tensor weight;  /* dense */
    model_tensor qweight; /* AWQ */
    model_tensor qzeros;
    model_tensor scales;
} model_linear;

typedef struct model_layer {
    model_tensor attn_norm; /* input_layernorm [hidden] */
    model_tensor q_norm;    /* [head_dim] */
    model_tensor k_norm;    /* [head_dim] */
    model_tensor mlp_norm;  /* post_attention_layernorm [hidden] */
    model_linear q, k, v, o;
    model_linear gate, up, down;
} model_layer;

typedef struct model_config {
    int vocab_size; /* embedding rows */
    int hidden_size;
    int n_layers;
    int n_heads;
    int n_kv_heads;
    int head_dim; /* may differ from hidden / heads */
    int intermediate_size;
    float rms_norm_eps;
    double rope_theta;
    int max_position_embeddings;
    int tie_word_embeddings;
    /* rope_scaling (or transformers-5 rope_parameters): yarn or none. The
     * factor is the config's, as transformers 5.17 uses it (it only warns
     * when factor != max_position_embeddings / original); the ratio only
     * stands in when the config gives no factor. */
    int rope_yarn;
    double yarn_factor;
    int yarn_original_max_position;
    double yarn_beta_fast, yarn_beta_slow;
    /* YaRN extras from the config; 0 means HF's default (zero-initialised
     * configs stay valid): attention_factor (default 0.1 * ln(factor) + 1, or
     * mscale/mscale_all_dim when the config gives both), truncate (default
     * true: correction range floored/ceiled). */
    double yarn_attention_factor;
    int yarn_no_truncate;
    enum model_dtype dtype; /* torch_dtype */
    int is_awq;
    int awq_group_size;
    int eos_ids[4]; /* generation stops on these; 151645 and 151643 for Qwen3 */
    int n_eos;
} model_config;

typedef struct model {
    model_config cfg;
    model_tensor embed;      /* [vocab, hidden] */
    model_tensor final_norm; /* [hidden] */
    model_tensor lm_head;    /* [vocab, hidden]; == embed when tied */
    model_layer *layers;     /* [n_layers] */
    char *dir;
    /* private: mappings and parsed headers */
    struct model_file *files;
    int n_files;
    void *priv;
} model;

/* Opens the model folder dir. On error returns -1 with err naming the file
 * and the field or tensor; m is then left closed. */
int model_open(model *m, const char *dir, errbuf *err);
void model_close(model *m);

/* Parses config.json text alone (used by model_open and by synthetic models). */
int model_config_parse(model_config *cfg, const char *json_text, const char *path, errbuf *err);

/* Qwen3-14B shapes, for the synthetic benchmark model (AWQ, untied). */
void model_config_qwen3_14b(model_config *cfg);

/* Converts n elements of a F32/F16/BF16 tensor starting at element `first` to fp32. */
void model_tensor_to_f32(const model_tensor *t, int64_t first, int64_t n, float *out);

/* Dequantizes/converts a whole linear layer to fp32 W [out][in], row-major. */
void model_linear_to_f32(const model_linear *l, float *out);

/* RoPE tables shared by both engines so YaRN is computed in one place:
 * inv_freq[head_dim/2] and the attention scaling applied to cos and sin
 * (1.0 without YaRN; 0.1 * ln(factor) + 1 with it unless the config gives
 * attention_factor). Matches transformers 5.17's _compute_default_rope_parameters
 * and _compute_yarn_parameters (tests/fixtures/ref/models/rope_probes.json). */
void model_rope_inv_freq(const model_config *cfg, float *inv_freq, float *attn_factor);

/* fp16/bf16 <-> fp32, round to nearest even. */
float model_f16_to_f32(uint16_t h);
float model_bf16_to_f32(uint16_t h);
uint16_t model_f32_to_f16(float f);
uint16_t model_f32_to_bf16(float f);

/* The AWQ nibble order: nibble i of a packed word holds column 8c + AWQ_ORDER[i]. */
extern const int model_awq_order[8];

#endif
