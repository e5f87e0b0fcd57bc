/*
 * progress.h - what a running job shows: a one-line bar on a terminal,
 * periodic JSON lines otherwise (for cron logs and scripts), and the summary.
 *
 * The bar is redrawn at most 4 times a second with "\r"; JSON lines go out
 * every `interval` seconds (10 by default) as
 *   {"event":"progress","docs_done":N,"docs_total":N,"docs_failed":N,
 *    "prompt_tokens":N,"generated_tokens":N,"prompt_tok_s":X,"gen_tok_s":X,
 *    "elapsed_s":X,"eta_s":X,"active":N}
 * Rates are over the whole run so far; the ETA is progress_eta's, at the
 * run's pace per token.
 */
#ifndef Q3_PROGRESS_H
#define Q3_PROGRESS_H

#include <stdint.h>
#include <stdio.h>

enum progress_mode { PROGRESS_AUTO = 0, PROGRESS_BAR, PROGRESS_JSON, PROGRESS_NONE };

typedef struct progress_counts {
    int64_t docs_total; /* documents this run will process */
    int64_t docs_done;  /* finished this run (any outcome) */
    int64_t docs_failed;
    int64_t prompt_tokens, generated_tokens; /* computed: prefilled, sampled */
    int active;
    double elapsed; /* seconds since the run began */
    /* For the ETA (0 where unknown): prompt tokens of the docs_total
     * documents, those of them prefilled or served by a shared prefix so
     * far, and the completion tokens of the documents finished. */
    int64_t prompt_tokens_total, prompt_tokens_started, completion_tokens_done;
} progress_counts;

/* Seconds left, at the pace of work done: `seconds` spent on tokens_done
 * tokens (prompt + completion computed), so seconds per token, applied to
 * the pending prompt tokens plus the completions still to come (the mean
 * completion of the docs_done successful documents, for each of the
 * docs_pending, less gen_in_flight already generated for them). Prompts are
 * known exactly, and a length-sorted run ends with its longest documents,
 * which a per-document pace underrates. Attention grows with context, so
 * where it dominates (long documents; small models) a token pace still
 * runs short (a CPU demo run: 54 s predicted of 149 s left, where the
 * document pace said 12). Without token figures, per document. -1 when
 * there is no pace yet. */
double progress_eta(double seconds, int64_t tokens_done, int64_t docs_done, int64_t completion_done,
                    int64_t docs_pending, int64_t prompt_pending, int64_t gen_in_flight);

typedef struct progress {
    enum progress_mode mode; /* resolved: never AUTO */
    FILE *out;               /* borrowed */
    double interval;
    double last_emit; /* elapsed at the last line or redraw */
    int drawn;        /* a bar is on screen (needs a newline before other output) */
} progress;

/* AUTO picks BAR when out is a terminal, JSON otherwise. */
void progress_init(progress *p, enum progress_mode mode, FILE *out, double interval);

/* Called often (every scheduler step); emits only when due, or always when force. */
void progress_update(progress *p, const progress_counts *c, int force);

/* Ends the bar line (if any) so that the summary starts on its own line. */
void progress_end(progress *p);

/* "1h02m", "3m05s", "12s" into buf. */
const char *progress_duration(double seconds, char *buf, size_t size);

#endif
