/*
 * ledger.h - the job's ledger: one SQLite database per job that knows every
 * document (key, source, prompt tokens, state, attempts, error, output) and
 * every run (start, end, host, version, config hash, totals).
 *
 * The ledger is the truth. The results file (src/output.h) is derived from
 * it and repaired from it after a crash; a resumed run asks it what is left.
 *
 * States: a document enters as 'pending' (with its prompt token ids, so it is
 * tokenized once) or as 'failed' (bad input found at ingest: no ids). A
 * finished document becomes 'done' (ids dropped, output kept) or 'failed'
 * (finish_reason "error": ids kept, so retry-failed can queue it again).
 *
 * Crash safety: the database is in WAL mode and every finished document is
 * committed in its own transaction (ledger_finish_doc) together with its
 * output and the results file's end offset. kill -9 at any instant therefore
 * loses at most the documents in flight (still 'pending', redone on resume);
 * no document is recorded twice (the update only moves a 'pending' row) or
 * half-written (one transaction). See ledger.c for the synchronous setting.
 *
 * Configurations: every document is stamped with the configuration hash
 * (job_config_hash) of the run that added it, and the ledger's current
 * configuration is that of the last run begun (ledger_run_begin; kept in
 * meta "config_hash"). The pending queue, ledger_docs_*, ledger_last_done,
 * ledger_jsonl_end, ledger_counts and ledger_retry_failed see only the
 * current configuration's documents: after a prompt or model change the
 * job starts over (new keys), the old configuration's pending documents are
 * not run and its outputs leave the results file (out_open rebuilds it),
 * but they stay in the ledger, and a job changed back finds them again
 * (their keys match). ledger_has_key and ledger_finish_doc look at every
 * document, whatever its configuration.
 *
 * Concurrency: one writer per ledger, enforced with ledger_lock (flock on
 * "<path>.lock", freed by the kernel when the holder dies, even by kill -9).
 * Readers (status, export) need no lock: WAL lets them read a consistent
 * snapshot while a run writes.
 *
 * Errors: functions return 0 on success and a negative value with a message
 * in err on failure (-1, or LEDGER_LOCKED / LEDGER_MISSING where said).
 * Strings handed to the ledger are copied; strings handed out are borrowed
 * as each function says. A ledger handle is not thread-safe: use it from one
 * thread (and never across fork: the child opens its own).
 */
#ifndef Q3_LEDGER_H
#define Q3_LEDGER_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

typedef struct ledger ledger;

/* Return codes besides 0 and -1. */
#define LEDGER_LOCKED (-2)  /* ledger_lock: another live process holds the ledger */
#define LEDGER_MISSING (-3) /* ledger_open_existing: no database at that path */

#define LEDGER_SCHEMA_VERSION 1 /* PRAGMA user_version of a current ledger */

/* Opens (creating when missing) the ledger at path and brings its schema up
 * to date. *out is NULL on failure. Close with ledger_close. */
int ledger_open(ledger **out, const char *path, errbuf *err);

/* Opens an existing ledger without creating or migrating it (for status,
 * export): LEDGER_MISSING with a message when the file does not exist, -1
 * when it is not a ledger or was written by a newer version. Reading needs no
 * lock and works while a run writes. */
int ledger_open_existing(ledger **out, const char *path, errbuf *err);

/* Closes the database and releases the lock if held. NULL is harmless. */
void ledger_close(ledger *l);

/* The path given to ledger_open (borrowed, valid until ledger_close). */
const char *ledger_path(const ledger *l);

/*
 * Takes the writer's lock: flock(LOCK_EX|LOCK_NB) on "<path>.lock", into
 * which the holder writes "host pid". Returns 0 (also when this handle holds
 * it already), LEDGER_LOCKED with "PATH is locked by another run (host H,
 * pid P)" when another live process holds it, or -1 on I/O errors. The
 * kernel frees the lock when the holder exits or is killed; the lock file
 * itself stays (removing it would race with a new holder). The lock file's
 * descriptor is close-on-exec.
 */
int ledger_lock(ledger *l, errbuf *err);

/* Whether a live process holds the lock of the ledger at path (for status):
 * 1 with "host H, pid P" in holder, 0 when free (or never taken), -1 on
 * errors. Probes with a shared flock that it drops at once; a run starting
 * in that instant of microseconds would see the ledger locked. */
int ledger_lock_holder(const char *path, char *holder, size_t n);

/* ---- runs ---------------------------------------------------------------- */

/* Records the start of a run (time, host, pid, version, config hash,
 * backend) and returns its id. config_hash becomes the ledger's current
 * configuration (see the top of this file); call it before out_open so the
 * results file is recovered for the right one (out_write_doc also catches a
 * change and rebuilds the file first). */
int ledger_run_begin(ledger *l, const char *config_hash, const char *backend, const char *version,
                     int64_t *run_id, errbuf *err);

typedef struct ledger_run_totals {
    int64_t docs_done, docs_failed;
    int64_t prompt_tokens, completion_tokens;
    double seconds; /* wall time of the run */
} ledger_run_totals;

/* Records the end of a run: time, totals, exit status. A run killed before
 * this keeps ended NULL; status then derives its figures from its documents. */
int ledger_run_end(ledger *l, int64_t run_id, const ledger_run_totals *t, int exit_status,
                   errbuf *err);

/* The current configuration hash (borrowed; NULL before any run), and a
 * counter that changes whenever it does (output.c compares it). */
const char *ledger_config_hash(const ledger *l);
int ledger_config_gen(const ledger *l);

/* ---- meta: small key/value settings ------------------------------------- */

/* Sets meta key to value (copied). The output module reads "model" (the
 * model's name in OpenAI-batch records). */
int ledger_meta_set(ledger *l, const char *key, const char *value, errbuf *err);
/* *value: malloc'ed copy (caller frees) or NULL when the key is not set. */
int ledger_meta_get(ledger *l, const char *key, char **value, errbuf *err);

/* ---- adding documents ---------------------------------------------------- */

/* Batching: wrap many ledger_add_* calls in begin/commit (one fsync instead
 * of one per document). ledger_rollback undoes an open batch. Other calls
 * made inside a batch join it (ledger_finish_doc too, so do not keep a batch
 * open while documents finish if each must be durable on its own). */
int ledger_begin(ledger *l, errbuf *err);
int ledger_commit(ledger *l, errbuf *err);
int ledger_rollback(ledger *l, errbuf *err);

/* *found = 1 when key is in the ledger (any state), else 0. */
int ledger_has_key(ledger *l, const char *key, int *found, errbuf *err);

/* Adds a pending document with its prompt ids (copied, stored as int32
 * little-endian; prompt_tokens = n_ids). It belongs to the current
 * configuration (begin the run first, see ledger_run_begin). INSERT OR
 * IGNORE: a key already in the ledger is left exactly as it is (done stays
 * done). doc_id and source may not be NULL. */
int ledger_add_pending(ledger *l, const char *key, const char *doc_id, const char *source,
                       const int32_t *ids, int n_ids, errbuf *err);

/* The same with per-document settings: params is opaque text for the caller
 * (e.g. JSON of an OpenAI batch request's overrides), returned by the pending
 * iterator; NULL for none. */
int ledger_add_pending_params(ledger *l, const char *key, const char *doc_id, const char *source,
                              const int32_t *ids, int n_ids, const char *params, errbuf *err);

/* Adds a document that failed at ingest (no prompt ids), attempts = 1.
 * INSERT OR IGNORE as above. */
int ledger_add_failed(ledger *l, const char *key, const char *doc_id, const char *source,
                      const char *error, errbuf *err);

/* ---- the pending queue --------------------------------------------------- */

/* One pending document. Strings and ids are owned by the iterator and valid
 * until the next ledger_pending_next or ledger_pending_close. */
typedef struct ledger_pending_doc {
    const char *key;
    const char *doc_id;
    const char *source;
    const char *params; /* NULL when none was given */
    const int32_t *ids;
    int n_ids;
    int attempts; /* finished attempts so far (0 for a fresh document) */
} ledger_pending_doc;

typedef struct ledger_pending_iter ledger_pending_iter;

/*
 * Iterates over the pending documents in the order to run them: prompt
 * tokens ascending, then insertion order. The iterator reads keys in pages
 * (keyset pagination over an index, never holding a statement open between
 * calls), so ledger_finish_doc and ledger_add_* may commit while it is open;
 * a document finished meanwhile is skipped, one added later than the
 * iterator's position is returned. Ids are loaded per document.
 * next: 1 and *doc filled, 0 at the end, -1 on error.
 */
int ledger_pending_open(ledger *l, ledger_pending_iter **it, errbuf *err);
int ledger_pending_next(ledger_pending_iter *it, ledger_pending_doc *doc, errbuf *err);
void ledger_pending_close(ledger_pending_iter *it);

/* ---- finishing documents ------------------------------------------------- */

/* A finished document's output. Strings are borrowed for the call. */
typedef struct ledger_output {
    const char *content;       /* the answer (may be "" but not NULL for stop/length) */
    const char *reasoning;     /* thinking text, NULL when none */
    const char *finish_reason; /* "stop", "length" or "error" */
    const char *error;         /* finish_reason "error": why (required); else NULL */
    int thinking_truncated;
    int prompt_tokens; /* > 0: replaces the stored count (after truncation); 0 keeps it */
    int completion_tokens;
    double seconds;      /* generation time of this document */
    int64_t finished_at; /* unix seconds; 0: now */
    int64_t run_id;      /* from ledger_run_begin (0: none) */
    int64_t jsonl_end;   /* results file's size after this document's line
                            (out_write_doc); ignored for "error" */
} ledger_output;

/*
 * Records a finished document in ONE transaction: state 'done' ('failed'
 * when finish_reason is "error"), the output fields, attempts + 1, run_id,
 * jsonl_end, finish order; a done document's prompt ids are dropped.
 * Only a 'pending' row moves: a key that is missing or not pending is an
 * error (-1) and changes nothing, so no document is ever recorded twice.
 */
int ledger_finish_doc(ledger *l, const char *key, const ledger_output *out, errbuf *err);

/* The results file's committed size: jsonl_end of the last done document
 * (the maximum), 0 when there is none or on error. */
int64_t ledger_jsonl_end(ledger *l);

/* Sets the jsonl_end of the done document with finish order done_seq (used
 * when the results file is regenerated). Call inside ledger_begin/commit. */
int ledger_set_jsonl_end(ledger *l, int64_t done_seq, int64_t jsonl_end, errbuf *err);

/* ---- reading documents (export, status) ------------------------------------ */

enum ledger_state { LEDGER_PENDING = 0, LEDGER_DONE, LEDGER_FAILED };
const char *ledger_state_name(enum ledger_state s);

/* One document as stored. Strings are owned by the iterator and valid until
 * the next call to ledger_docs_next or ledger_docs_close; NULL where unset. */
typedef struct ledger_doc {
    const char *key;
    const char *doc_id;
    const char *source;
    enum ledger_state state;
    int attempts;
    const char *error;
    const char *content;
    const char *reasoning;
    const char *finish_reason;
    int thinking_truncated;
    int prompt_tokens;
    int completion_tokens;
    double seconds;
    int64_t finished_at;
    int64_t run_id;
    int64_t jsonl_end;
    int64_t done_seq; /* finish order of done documents, 1, 2, ...; 0 otherwise */
} ledger_doc;

typedef struct ledger_docs_iter ledger_docs_iter;

/* Iterates over the documents in one state: done ones in finish order
 * (done_seq), the others in insertion order. The iterator holds a read
 * statement (a snapshot) until closed; do not write through the same handle
 * while it is open. next: 1 and *doc filled, 0 at the end, -1 on error. */
int ledger_docs_open(ledger *l, enum ledger_state state, ledger_docs_iter **it, errbuf *err);
int ledger_docs_next(ledger_docs_iter *it, ledger_doc *doc, errbuf *err);
void ledger_docs_close(ledger_docs_iter *it);

/* The last document in finish order (largest done_seq): 1 and *doc filled
 * (strings owned by the ledger, valid until the next call on l), 0 when no
 * document is done. */
int ledger_last_done(ledger *l, ledger_doc *doc, errbuf *err);

/* ---- status and maintenance ---------------------------------------------- */

/* One run's record with figures counted from the documents it finished. */
typedef struct ledger_run_info {
    int64_t id;
    int64_t started, ended; /* unix seconds; ended 0 while unknown */
    int exit_status;        /* -1 when the run did not end cleanly */
    int64_t docs_done, docs_failed;
    int64_t prompt_tokens, completion_tokens;
    double seconds; /* recorded wall time, or from start to its last document */
    char host[256];
    int64_t pid;
    char backend[32];
    char version[64];
} ledger_run_info;

typedef struct ledger_counts_t {
    int64_t pending, done, failed; /* of the current configuration */
    int64_t other_configs;         /* documents of earlier configurations (any state) */
    int64_t done_prompt_tokens, done_completion_tokens;
    int64_t pending_prompt_tokens;
    /* The last run (the highest id; has_run 0 when there is none). Its
     * documents and tokens are counted from the documents it finished, so
     * the figures hold for a run that was killed or is still going. */
    int has_run;
    int64_t run_id;
    int64_t run_started, run_ended; /* unix seconds; ended 0 while unknown */
    int run_exit_status;            /* -1 when the run did not end cleanly */
    int64_t run_docs_done, run_docs_failed;
    int64_t run_prompt_tokens, run_completion_tokens;
    double run_doc_seconds; /* wall time from start to its last finished document
                               (or its recorded end) */
    char run_host[256];
    int64_t run_pid;
    char run_backend[32];
    char run_version[64];
    /* Every run of the current configuration: how many, and their wall
     * times added up (each as ledger_run_info.seconds), so that a job done
     * over several runs (nightly windows, resumes after a kill) has one
     * throughput: done / config_run_seconds. */
    int64_t config_runs;
    double config_run_seconds;
    /* The pace for an ETA: the run that finished the latest done document
     * (the last run may have finished none: killed early, still loading). */
    int has_pace;
    ledger_run_info pace;
} ledger_counts_t;

int ledger_counts(ledger *l, ledger_counts_t *c, errbuf *err);

/* Moves failed documents back to pending (attempts are kept, error and
 * output cleared). Documents that failed at ingest have no prompt ids and
 * cannot be queued: they are deleted instead, so the next run's ingest
 * meets them again as new and either records the failure anew or, if the
 * input was fixed, queues them. *n: the number of documents moved or deleted. */
int ledger_retry_failed(ledger *l, int64_t *n, errbuf *err);

#endif
