/*
 * bench_ledger.c - what the ledger and the results file cost per document:
 * ingest (add_pending in batches of 256, as cmd_run does), the pending
 * queue, finishing (one transaction + one fdatasync each), a rebuild of the
 * results file, counts and export. Not a test (built by make check, not run):
 * then `tests/bench_ledger [DIR] [N_DOCS] [PROMPT_TOKENS] [FINISH_DOCS]`.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ledger.h"
#include "output.h"
#include "strbuf.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

#define DIE(...)                                                                                   \
    do {                                                                                           \
        fprintf(stderr, __VA_ARGS__);                                                              \
        exit(1);                                                                                   \
    } while (0)

int main(int argc, char **argv)
{
    const char *dir = argc > 1 ? argv[1] : "/tmp";
    int n_docs = argc > 2 ? atoi(argv[2]) : 20000;
    int n_tokens = argc > 3 ? atoi(argv[3]) : 1000;
    int n_finish = argc > 4 ? atoi(argv[4]) : 2000;
    char lpath[512], jpath[512];
    snprintf(lpath, sizeof lpath, "%s/bench_ledger.%d.sqlite", dir, (int)getpid());
    snprintf(jpath, sizeof jpath, "%s/bench_ledger.%d.jsonl", dir, (int)getpid());
    errbuf err;
    ledger *l;
    out *o;
    int64_t run;
    if (ledger_open(&l, lpath, &err) || ledger_lock(l, &err) ||
        ledger_run_begin(l, "bench", "cpu", "bench", &run, &err))
        DIE("%s\n", err.msg);
    int32_t *ids = malloc(sizeof *ids * (size_t)n_tokens);
    for (int i = 0; i < n_tokens; i++)
        ids[i] = (i * 7919) % 151643;

    double t0 = now();
    if (ledger_begin(l, &err))
        DIE("%s\n", err.msg);
    for (int i = 0; i < n_docs; i++) {
        char key[80], id[32];
        snprintf(key, sizeof key, "%064x", (unsigned)(i * 2654435761u));
        snprintf(id, sizeof id, "doc-%d", i);
        if (ledger_add_pending(l, key, id, "corpus.jsonl", ids, 1 + (n_tokens * (i % 97)) / 97,
                               &err))
            DIE("%s\n", err.msg);
        if (i % 256 == 255 && (ledger_commit(l, &err) || ledger_begin(l, &err)))
            DIE("%s\n", err.msg);
    }
    if (ledger_commit(l, &err))
        DIE("%s\n", err.msg);
    double t_ingest = now() - t0;

    t0 = now();
    ledger_pending_iter *it;
    ledger_pending_doc d;
    int64_t n_seen = 0, sum = 0;
    if (ledger_pending_open(l, &it, &err))
        DIE("%s\n", err.msg);
    while (ledger_pending_next(it, &d, &err) == 1) {
        n_seen++;
        sum += d.n_ids;
    }
    ledger_pending_close(it);
    double t_queue = now() - t0;

    if (out_open(&o, jpath, l, OUT_JSONL, 0, NULL, &err))
        DIE("%s\n", err.msg);
    strbuf content = STRBUF_INIT;
    for (int i = 0; i < 20; i++)
        sb_adds(&content, "A summary sentence of about fifty characters long. ");
    t0 = now();
    int n_done = 0;
    if (ledger_pending_open(l, &it, &err))
        DIE("%s\n", err.msg);
    while (n_done < n_finish && ledger_pending_next(it, &d, &err) == 1) {
        ledger_output r = {.content = content.buf,
                           .finish_reason = "stop",
                           .prompt_tokens = d.n_ids,
                           .completion_tokens = 250,
                           .seconds = 1.5,
                           .run_id = run};
        if (out_finish_doc(o, d.key, d.doc_id, d.source, &r, &err))
            DIE("%s\n", err.msg);
        n_done++;
    }
    ledger_pending_close(it);
    double t_finish = now() - t0;
    out_close(o);

    unlink(jpath);
    t0 = now();
    int regen = 0;
    if (out_open(&o, jpath, l, OUT_JSONL, 0, &regen, &err))
        DIE("%s\n", err.msg);
    double t_regen = now() - t0;
    out_close(o);

    t0 = now();
    ledger_counts_t c;
    if (ledger_counts(l, &c, &err))
        DIE("%s\n", err.msg);
    double t_counts = now() - t0;
    FILE *devnull = fopen("/dev/null", "w");
    t0 = now();
    if (out_export(l, devnull, OUT_OPENAI_BATCH, 0, NULL, &err))
        DIE("%s\n", err.msg);
    double t_export = now() - t0;
    fclose(devnull);

    printf("documents %d, prompts up to %d tokens (%lld in all), %d finished\n", n_docs, n_tokens,
           (long long)sum, n_done);
    printf("ingest (batches of 256):     %8.0f docs/s\n", n_docs / t_ingest);
    printf("pending queue (ids loaded):  %8.0f docs/s\n", n_seen / t_queue);
    printf("finish (line+fdatasync+commit): %5.0f docs/s (%.2f ms each)\n", n_done / t_finish,
           1000 * t_finish / n_done);
    printf("rebuild results file:        %8.3f s for %d lines (regenerated %d)\n", t_regen, n_done,
           regen);
    printf("counts:                      %8.3f s\n", t_counts);
    printf("export (openai-batch):       %8.0f docs/s\n", n_done / t_export);
    ledger_close(l);
    unlink(lpath);
    unlink(jpath);
    char side[600];
    snprintf(side, sizeof side, "%s-wal", lpath);
    unlink(side);
    snprintf(side, sizeof side, "%s-shm", lpath);
    unlink(side);
    snprintf(side, sizeof side, "%s.lock", lpath);
    unlink(side);
    free(ids);
    sb_release(&content);
    return 0;
}
