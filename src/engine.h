/*
 * engine.h - the inference engine API that the CPU and CUDA backends share.
 *
 * An engine holds a model's weights and a KV cache for many sequences at once.
 * The job runner drives it in steps: each step is a list of items, one per
 * sequence, each appending tokens to that sequence (a prefill chunk of any
 * length, or one decode token) and asking for logits and/or a sampled token
 * at its last position. Prefill chunks of several sequences and decode tokens
 * of others may share one step (continuous batching).
 *
 *   eng *e; eng_open(&e, &model, &opts, &err);
 *   int s; eng_seq_add(e, &sampling, &s, &err);
 *   eng_item it = {.seq = s, .tokens = prompt, .n_tokens = n, .sample = 1};
 *   eng_step(e, &it, 1, NULL, &next, &err);     // prefill + first token
 *   it.tokens = &next; it.n_tokens = 1;          // then decode, one by one
 *   ...; eng_seq_release(e, s);
 *
 * Sampled tokens are NOT appended automatically: the caller feeds them back
 * as the next item (so it may substitute forced tokens, e.g. to close a
 * thought when the thinking budget runs out).
 *
 * Ownership: the engine borrows the model (which must outlive it) and owns
 * everything else. Positions are implicit: each sequence's tokens are
 * numbered 0, 1, 2, ... in the order appended.
 */
#ifndef Q3_ENGINE_H
#define Q3_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "model.h"
#include "sample.h"

enum eng_backend { ENG_BACKEND_AUTO = 0, ENG_BACKEND_CPU, ENG_BACKEND_CUDA };
enum eng_kv_type { ENG_KV_F16 = 0, ENG_KV_INT8 };
enum eng_logits { ENG_LOGITS_NONE = 0, ENG_LOGITS_LAST, ENG_LOGITS_ALL };

typedef struct eng_options {
    enum eng_backend backend;
    int n_threads;            /* CPU: worker threads (0 = all cores) */
    size_t gpu_memory_budget; /* CUDA: bytes the engine may use (0 = all free memory) */
    enum eng_kv_type kv_type; /* CUDA: KV cache element type; the CPU keeps fp32 */
    int max_seqs;             /* sequences alive at once */
    int64_t max_kv_tokens;    /* KV cache capacity in tokens over all sequences (0 = from budget) */
    int max_step_tokens;      /* most tokens in one eng_step (prefill chunk budget) */
    int n_valid_vocab;        /* sampling never picks ids >= this (tokenizer size; 0 = vocab) */
} eng_options;

typedef struct eng_item {
    int seq;               /* from eng_seq_add */
    const int32_t *tokens; /* borrowed for the call */
    int n_tokens;          /* >= 1 */
    enum eng_logits logits; /* rows written to the logits buffer of eng_step */
    int sample;            /* 1: sample a token after the last position */
} eng_item;

typedef struct eng eng;

/* Backend interface; callers use the eng_* wrappers below. */
struct eng_vtable {
    int (*seq_add)(eng *e, const sample_params *sp, int *seq, errbuf *err);
    int (*seq_fork)(eng *e, int src, int n_prefix, const sample_params *sp, int *seq,
                    errbuf *err);
    void (*seq_release)(eng *e, int seq);
    int (*step)(eng *e, const eng_item *items, int n_items, float *logits, int32_t *sampled,
                errbuf *err);
    int64_t (*kv_free_tokens)(const eng *e);
    void (*close)(eng *e);
};

struct eng {
    const struct eng_vtable *vt;
    const model_config *cfg;  /* borrowed */
    eng_options opts;         /* as resolved by the backend */
    const char *backend_name; /* "cpu" or "cuda" */
};

/* Opens the backend named in opts (AUTO: CUDA when built in and a GPU is
 * present, else CPU). */
int eng_open(eng **out, const model *m, const eng_options *opts, errbuf *err);
void eng_close(eng *e);

/* Starts a sequence with these sampling settings; *seq gets its slot. Fails
 * when max_seqs are alive. */
int eng_seq_add(eng *e, const sample_params *sp, int *seq, errbuf *err);

/*
 * Starts a sequence whose first n_prefix positions are those of sequence src
 * (which must hold at least n_prefix tokens): a shared prompt prefix (system
 * prompt, instructions before the document) is computed once and reused. The
 * backend shares the KV pages (CUDA) or copies the rows (CPU); src may be
 * released afterwards without affecting the fork. The fork continues at
 * position n_prefix.
 */
int eng_seq_fork(eng *e, int src, int n_prefix, const sample_params *sp, int *seq, errbuf *err);

/* Frees the sequence's KV pages and slot. */
void eng_seq_release(eng *e, int seq);

/*
 * Runs one step. logits: for each item in order, 0, 1 or n_tokens rows of
 * cfg->vocab_size floats as the item asks (may be NULL if none asks).
 * sampled: one id per item with sample=1, in item order (may be NULL if none).
 * An item's sequence may appear once per step. Fails (without corrupting
 * other sequences) when the KV cache has no room; the caller releases or
 * waits.
 */
int eng_step(eng *e, const eng_item *items, int n_items, float *logits, int32_t *sampled,
             errbuf *err);

/* KV positions still free over all sequences (for admission decisions). */
int64_t eng_kv_free_tokens(const eng *e);

/* Backend constructors (eng_open dispatches). */
int cpu_engine_open(eng **out, const model *m, const eng_options *opts, errbuf *err);
#ifdef HAVE_CUDA
/* In cuda/cuda_engine.h: cuda_engine_open(), cuda_engine_available(). */
#endif

#endif
