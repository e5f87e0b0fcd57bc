/*
 * scheduler.h - the scheduler: from a length-sorted queue of prompts to finished
 * completions, driving an engine (src/engine.h) with continuous batching.
 *
 * The caller (cmd_run) supplies documents in the order it wants them run
 * (shortest prompt first, from the ledger) through sched_source.next, and
 * receives each finished one through sched_source.done. In between:
 *
 *  - admission: a document joins when a sequence slot is free and the KV
 *    cache can hold its prompt plus max_new_tokens on top of what the running
 *    sequences may still grow to (so a step never runs out of KV pages);
 *  - packing: each step carries at most max_batch_tokens prompt tokens, split
 *    over the newly admitted documents; a prompt longer than that is
 *    prefilled in chunks over several steps; every running sequence decodes
 *    one token in the same step (prefill and decode share steps);
 *  - shared prefix: when the options give the job's common prefix (system
 *    prompt and instructions before the document text), it is prefilled once
 *    into a root sequence and every document forks from it, reusing as many
 *    leading tokens as its own prompt has in common with the prefix;
 *  - stopping: an EOS id ends a document with "stop", max_new_tokens with
 *    "length"; in thinking mode, a sequence that has generated
 *    thinking_budget tokens without "</think>" is fed the early-stop tokens
 *    (THINK_EARLY_STOP, see think.h) and then answers; it is marked
 *    thinking_truncated.
 *
 * Nothing here touches files: the ledger, tokenizer and writer live behind
 * the callbacks, so the scheduler is tested against the CPU engine alone.
 */
#ifndef Q3_SCHEDULER_H
#define Q3_SCHEDULER_H

#include <signal.h>
#include <stdint.h>

#include "engine.h"
#include "error.h"
#include "sample.h"

enum sched_finish { SCHED_STOP = 0, SCHED_LENGTH, SCHED_ERROR };

typedef struct sched_doc {
    int64_t handle;        /* the caller's id for the document */
    const int32_t *tokens; /* the prompt; borrowed until done() returns */
    int n_tokens;
    sample_params sp;
    int max_new_tokens;
    void *user; /* the caller's, passed back in done() */
} sched_doc;

typedef struct sched_result {
    const int32_t *ids; /* completion ids incl. forced early-stop ids; no EOS; borrowed */
    int n_ids;
    enum sched_finish finish;
    int thinking_truncated;
    int prefix_reused; /* prompt tokens taken from the shared prefix */
    double seconds;    /* from admission to finish */
    const char *error; /* SCHED_ERROR only */
} sched_result;

typedef struct sched_stats {
    int64_t docs_done;
    int64_t prompt_tokens;    /* prefilled (excluding reused prefix tokens) */
    int64_t reused_tokens;    /* prompt tokens served by the shared prefix */
    int64_t generated_tokens; /* sampled */
    int64_t steps;
    int active;             /* sequences running now */
    double step_seconds;    /* time inside eng_step */
    double elapsed_seconds; /* since sched_run began */
    /* step_seconds split by the kind of step: steps that carry prompt tokens
     * (decode rows of the running documents ride along) and decode-only
     * steps, with the decode rows of each (decode_rows / decode_steps is
     * the mean decode batch). */
    int64_t prefill_steps, prefill_decode_rows, decode_steps, decode_rows;
    double prefill_step_seconds, decode_step_seconds;
} sched_stats;

typedef struct sched_source {
    void *ctx;
    /* The next document: 1 and *doc filled, 0 when there are no more, -1 on error. */
    int (*next)(void *ctx, sched_doc *doc, errbuf *err);
    /* A document finished (any finish reason). Nonzero aborts the run with err. */
    int (*done)(void *ctx, const sched_doc *doc, const sched_result *res, errbuf *err);
    /* After every step (may be NULL): progress reporting. */
    void (*progress)(void *ctx, const sched_stats *st);
} sched_source;

typedef struct sched_options {
    int max_batch_tokens; /* prompt tokens per step (default 131072 when 0) */
    int max_seqs;         /* running sequences at most (default: the engine's) */
    const int32_t *prefix; /* the job's shared prefix ids (NULL = none); borrowed */
    int n_prefix;
    const int32_t *eos; /* ids that end a document */
    int n_eos;
    int thinking_budget;       /* 0 = none */
    int32_t think_close;       /* id of "</think>" */
    const int32_t *early_stop; /* THINK_EARLY_STOP tokenized */
    int n_early_stop;
    /* Polled every step. *stop != 0: stop now, abandoning running documents
     * (they stay pending in the ledger). A deadline (monotonic seconds,
     * 0 = none): past it no document is admitted; running ones finish. */
    volatile sig_atomic_t *stop;
    double deadline;
} sched_options;

/* Return values of sched_run besides -1 (error in err). */
enum { SCHED_DONE = 0, SCHED_STOPPED = 1, SCHED_DEADLINE = 2 };

int sched_run(eng *e, const sched_options *opts, const sched_source *src, sched_stats *stats,
              errbuf *err);

/* Monotonic clock in seconds (for deadlines and timings). */
double sched_now(void);

#endif
