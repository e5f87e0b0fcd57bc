/*
 * progress.h - what a running job shows: a one-line bar on a terminal,
 * periodic JSON lines otherwise (for cron logs and scripts), and the summary.
 *
 * The bar is redrawn at most 4 times a second with "\r"; JSON lines go out
 * every `interval` seconds (10 by default) as
 *   {"event":"progress","docs_done":N,"docs_total":N,"docs_failed":N,
 *    "prompt_tokens":N,"generated_tokens":N,"prompt_tok_s":X,"gen_tok_s":X,
 *    "elapsed_s":X,"eta_s":X,"active":N}
 * Rates are over the whole run so far; ETA assumes the remaining documents
 * go at the run's document rate.
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
    int64_t prompt_tokens, generated_tokens;
    int active;
    double elapsed; /* seconds since the run began */
} progress_counts;

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
