/*
 * demo_model.h - a small random-weight Qwen3 model folder for demos and tests.
 *
 * The folder has everything a real Hugging Face Qwen3 folder has that we
 * read: config.json, model.safetensors (bf16, or AWQ-packed int4 with fp16
 * scales, embeddings and norms) and the real Qwen3 tokenizer (vocab 151936 so
 * every tokenizer id has an embedding row). Shapes are Qwen3's in miniature:
 * GQA, head_dim different from hidden / heads, q/k norms. Weights come from a
 * seeded generator, so a seed always gives the same bytes; their scales make
 * the logits peaked rather than flat, so sampling behaves like a model's.
 */
#ifndef Q3_DEMO_MODEL_H
#define Q3_DEMO_MODEL_H

#include <stdint.h>

#include "error.h"
#include "model.h"

enum demo_size {
    DEMO_TINY,  /* hidden 128, 2 layers, 4 heads (2 kv) of 128, tied embeddings */
    DEMO_SMALL, /* hidden 256, 4 layers, 8 heads (2 kv) of 128, untied lm_head */
};

typedef struct demo_model_opts {
    uint64_t seed;
    int awq; /* AWQ 4-bit, group 128, instead of bf16 */
    enum demo_size size;
} demo_model_opts;

/* The config a demo model of these options has (what model_open reads back). */
void demo_model_config(model_config *cfg, const demo_model_opts *opts);

/* Writes config.json, model.safetensors, tokenizer.json and
 * tokenizer_config.json into dir, creating dir if it is missing (its parent
 * must exist). Existing files of those names are replaced. */
int demo_model_write(const char *dir, const demo_model_opts *opts, errbuf *err);

#endif
