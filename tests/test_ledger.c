/*
 * test_ledger.c - the SQLite ledger: schema, idempotent inserts, per-document
 * finishing, the pending queue's order and robustness to writes, retry-failed,
 * counts, and the writer's lock (also after the holder is SIGKILLed).
 */
#include "config.h"

#include <signal.h>
#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "ledger.h"
#include "strbuf.h"

static char tmpdir[] = "/tmp/test_ledger.XXXXXX";

static char *tmp_path(const char *name)
{
    static char buf[4][512];
    static int k;
    char *p = buf[k++ & 3];
    snprintf(p, 512, "%s/%s", tmpdir, name);
    return p;
}

static ledger *open_new(const char *name)
{
    errbuf err;
    ledger *l = NULL;
    char *path = tmp_path(name);
    unlink(path);
    int rc = ledger_open(&l, path, &err);
    CHECK_MSG(rc == 0, "%s", err.msg);
    return l;
}

static int64_t sql_int(const char *path, const char *sql)
{
    sqlite3 *db;
    sqlite3_stmt *s;
    int64_t v = -12345;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK)
        return v;
    if (sqlite3_prepare_v2(db, sql, -1, &s, NULL) == SQLITE_OK) {
        if (sqlite3_step(s) == SQLITE_ROW)
            v = sqlite3_column_int64(s, 0);
        sqlite3_finalize(s);
    }
    sqlite3_close(db);
    return v;
}

static ledger_output done_output(const char *content, int completion_tokens)
{
    ledger_output o = {0};
    o.content = content;
    o.finish_reason = "stop";
    o.completion_tokens = completion_tokens;
    o.seconds = 0.5;
    return o;
}

static void test_schema(void)
{
    ledger *l = open_new("schema.sqlite");
    char *path = tmp_path("schema.sqlite");
    CHECK_INT_EQ(sql_int(path, "PRAGMA user_version"), LEDGER_SCHEMA_VERSION);
    CHECK_INT_EQ(sql_int(path, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND"
                               " name IN ('documents', 'runs', 'meta')"),
                 3);
    sqlite3 *db;
    sqlite3_open(path, &db);
    sqlite3_stmt *s;
    sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &s, NULL);
    CHECK(sqlite3_step(s) == SQLITE_ROW);
    CHECK_STR_EQ((const char *)sqlite3_column_text(s, 0), "wal");
    sqlite3_finalize(s);
    sqlite3_close(db);
    ledger_close(l);

    /* Reopening keeps it; open_existing reads it. */
    errbuf err;
    CHECK_MSG(ledger_open(&l, path, &err) == 0, "%s", err.msg);
    ledger_close(l);
    CHECK_MSG(ledger_open_existing(&l, path, &err) == 0, "%s", err.msg);
    ledger_close(l);

    /* A missing ledger, a foreign database, a non-database, a newer schema. */
    CHECK_INT_EQ(ledger_open_existing(&l, tmp_path("nope.sqlite"), &err), LEDGER_MISSING);
    CHECK(l == NULL);
    CHECK(strstr(err.msg, "nope.sqlite") != NULL);
    CHECK(access(tmp_path("nope.sqlite"), F_OK) != 0); /* not created */

    sqlite3_open(tmp_path("foreign.sqlite"), &db);
    sqlite3_exec(db, "CREATE TABLE t (x)", NULL, NULL, NULL);
    sqlite3_close(db);
    CHECK(ledger_open(&l, tmp_path("foreign.sqlite"), &err) == -1);
    CHECK_MSG(strstr(err.msg, "not a qwen3-batch ledger") != NULL, "%s", err.msg);

    FILE *f = fopen(tmp_path("garbage.sqlite"), "w");
    fputs("this is not a database, not even close, but long enough to be read......", f);
    fclose(f);
    CHECK(ledger_open(&l, tmp_path("garbage.sqlite"), &err) == -1);
    CHECK_MSG(strstr(err.msg, "garbage.sqlite") != NULL, "%s", err.msg);

    sqlite3_open(path, &db);
    sqlite3_exec(db, "PRAGMA user_version = 99", NULL, NULL, NULL);
    sqlite3_close(db);
    CHECK(ledger_open(&l, path, &err) == -1);
    CHECK_MSG(strstr(err.msg, "newer") != NULL, "%s", err.msg);
}

static void test_pending_idempotent(void)
{
    errbuf err;
    ledger *l = open_new("idem.sqlite");
    int32_t ids1[] = {1, -2, 0x7fffffff, (int32_t)0x80000000, 151643};
    int32_t ids2[] = {9, 9};
    CHECK(ledger_add_pending(l, "k1", "doc1", "a.jsonl:1", ids1, 5, &err) == 0);
    CHECK(ledger_add_pending(l, "k1", "docX", "b.jsonl:1", ids2, 2, &err) == 0); /* ignored */
    int found = -1;
    CHECK(ledger_has_key(l, "k1", &found, &err) == 0 && found == 1);
    CHECK(ledger_has_key(l, "k2", &found, &err) == 0 && found == 0);

    ledger_pending_iter *it;
    ledger_pending_doc d;
    CHECK(ledger_pending_open(l, &it, &err) == 0);
    CHECK_INT_EQ(ledger_pending_next(it, &d, &err), 1);
    CHECK_STR_EQ(d.key, "k1");
    CHECK_STR_EQ(d.doc_id, "doc1");
    CHECK_STR_EQ(d.source, "a.jsonl:1");
    CHECK(d.params == NULL);
    CHECK_INT_EQ(d.attempts, 0);
    CHECK_INT_EQ(d.n_ids, 5);
    CHECK(d.n_ids == 5 && !memcmp(d.ids, ids1, sizeof ids1));
    CHECK_INT_EQ(ledger_pending_next(it, &d, &err), 0);
    ledger_pending_close(it);

    /* Stored little-endian, whatever the host. */
    char *path = tmp_path("idem.sqlite");
    CHECK_INT_EQ(sql_int(path, "SELECT hex(prompt_ids) = '01000000FEFFFFFFFFFFFF7F000000805B500200'"
                               " FROM documents WHERE key = 'k1'"),
                 1);

    /* Done stays done: a later add_pending of the same key changes nothing. */
    ledger_output o = done_output("answer", 3);
    CHECK_MSG(ledger_finish_doc(l, "k1", &o, &err) == 0, "%s", err.msg);
    CHECK(ledger_add_pending(l, "k1", "doc1", "a.jsonl:1", ids1, 5, &err) == 0);
    CHECK(ledger_add_failed(l, "k1", "doc1", "a.jsonl:1", "bad", &err) == 0);
    CHECK_INT_EQ(sql_int(path, "SELECT count(*) FROM documents WHERE state = 'done'"), 1);
    CHECK_INT_EQ(sql_int(path, "SELECT count(*) FROM documents"), 1);
    CHECK_INT_EQ(sql_int(path, "SELECT prompt_ids IS NULL FROM documents WHERE key = 'k1'"), 1);
    CHECK(ledger_pending_open(l, &it, &err) == 0);
    CHECK_INT_EQ(ledger_pending_next(it, &d, &err), 0);
    ledger_pending_close(it);

    /* Params round-trip. */
    CHECK(ledger_add_pending_params(l, "k2", "doc2", "b", ids2, 2, "{\"max_tokens\":5}", &err) ==
          0);
    CHECK(ledger_pending_open(l, &it, &err) == 0);
    CHECK_INT_EQ(ledger_pending_next(it, &d, &err), 1);
    CHECK(d.params && !strcmp(d.params, "{\"max_tokens\":5}"));
    ledger_pending_close(it);
    ledger_close(l);
}

static void test_finish(void)
{
    errbuf err;
    ledger *l = open_new("finish.sqlite");
    char *path = tmp_path("finish.sqlite");
    int32_t ids[] = {5, 6, 7};
    int64_t run_id = 0;
    CHECK(ledger_run_begin(l, "cfg", "cpu", "0.1", &run_id, &err) == 0 && run_id > 0);
    CHECK(ledger_add_pending(l, "a", "A", "s", ids, 3, &err) == 0);
    CHECK(ledger_add_pending(l, "b", "B", "s", ids, 3, &err) == 0);
    CHECK(ledger_add_pending(l, "c", "C", "s", ids, 2, &err) == 0);

    /* Bad outputs change nothing. */
    ledger_output o = done_output("x", 1);
    o.finish_reason = "eos";
    CHECK(ledger_finish_doc(l, "a", &o, &err) == -1);
    o = done_output(NULL, 1);
    CHECK(ledger_finish_doc(l, "a", &o, &err) == -1);
    CHECK_INT_EQ(sql_int(path, "SELECT count(*) FROM documents WHERE state = 'pending'"), 3);

    o = done_output("answer A", 4);
    o.reasoning = "thought";
    o.thinking_truncated = 1;
    o.run_id = run_id;
    o.jsonl_end = 100;
    o.prompt_tokens = 2; /* truncated prompt */
    o.finished_at = 1700000000;
    CHECK_MSG(ledger_finish_doc(l, "a", &o, &err) == 0, "%s", err.msg);
    /* Twice: refused, and the row is unchanged. */
    ledger_output o2 = done_output("other", 9);
    o2.jsonl_end = 200;
    CHECK(ledger_finish_doc(l, "a", &o2, &err) == -1);
    CHECK_MSG(strstr(err.msg, "not pending") != NULL, "%s", err.msg);
    CHECK(ledger_finish_doc(l, "zzz", &o2, &err) == -1);
    CHECK_MSG(strstr(err.msg, "not in the ledger") != NULL, "%s", err.msg);
    CHECK_INT_EQ(ledger_jsonl_end(l), 100);

    o = done_output("answer C", 2);
    o.jsonl_end = 150;
    o.run_id = run_id;
    CHECK(ledger_finish_doc(l, "c", &o, &err) == 0);
    CHECK_INT_EQ(ledger_jsonl_end(l), 150);

    ledger_output e = {0};
    e.finish_reason = "error";
    e.error = "engine failed";
    e.run_id = run_id;
    e.jsonl_end = 999; /* ignored for errors */
    CHECK(ledger_finish_doc(l, "b", &e, &err) == 0);
    CHECK_INT_EQ(ledger_jsonl_end(l), 150);
    CHECK_INT_EQ(sql_int(path, "SELECT prompt_ids IS NOT NULL FROM documents WHERE key = 'b'"), 1);

    /* Done documents in finish order, with every field. */
    ledger_docs_iter *it;
    ledger_doc d;
    CHECK(ledger_docs_open(l, LEDGER_DONE, &it, &err) == 0);
    CHECK_INT_EQ(ledger_docs_next(it, &d, &err), 1);
    CHECK_STR_EQ(d.key, "a");
    CHECK_STR_EQ(d.doc_id, "A");
    CHECK_STR_EQ(d.content, "answer A");
    CHECK_STR_EQ(d.reasoning, "thought");
    CHECK_STR_EQ(d.finish_reason, "stop");
    CHECK_INT_EQ(d.thinking_truncated, 1);
    CHECK_INT_EQ(d.prompt_tokens, 2);
    CHECK_INT_EQ(d.completion_tokens, 4);
    CHECK(d.seconds == 0.5);
    CHECK_INT_EQ(d.finished_at, 1700000000);
    CHECK_INT_EQ(d.attempts, 1);
    CHECK_INT_EQ(d.run_id, run_id);
    CHECK_INT_EQ(d.jsonl_end, 100);
    CHECK_INT_EQ(d.done_seq, 1);
    CHECK(d.state == LEDGER_DONE);
    CHECK_INT_EQ(ledger_docs_next(it, &d, &err), 1);
    CHECK_STR_EQ(d.key, "c");
    CHECK(d.reasoning == NULL);
    CHECK_INT_EQ(d.prompt_tokens, 2);
    CHECK_INT_EQ(d.done_seq, 2);
    CHECK_INT_EQ(ledger_docs_next(it, &d, &err), 0);
    ledger_docs_close(it);
    CHECK(ledger_docs_open(l, LEDGER_FAILED, &it, &err) == 0);
    CHECK_INT_EQ(ledger_docs_next(it, &d, &err), 1);
    CHECK_STR_EQ(d.key, "b");
    CHECK_STR_EQ(d.error, "engine failed");
    CHECK(d.state == LEDGER_FAILED);
    CHECK_INT_EQ(ledger_docs_next(it, &d, &err), 0);
    ledger_docs_close(it);

    CHECK_INT_EQ(ledger_last_done(l, &d, &err), 1);
    CHECK_STR_EQ(d.key, "c");
    CHECK_INT_EQ(d.jsonl_end, 150);

    /* Inside a batch that is rolled back, a finish is undone too. */
    CHECK(ledger_add_pending(l, "d", "D", "s", ids, 1, &err) == 0);
    CHECK(ledger_begin(l, &err) == 0);
    o = done_output("answer D", 1);
    CHECK(ledger_finish_doc(l, "d", &o, &err) == 0);
    CHECK(ledger_rollback(l, &err) == 0);
    CHECK_INT_EQ(sql_int(path, "SELECT state = 'pending' FROM documents WHERE key = 'd'"), 1);

    /* Meta. */
    char *v = (char *)"x";
    CHECK(ledger_meta_get(l, "model", &v, &err) == 0 && v == NULL);
    CHECK(ledger_meta_set(l, "model", "Qwen3-14B-AWQ", &err) == 0);
    CHECK(ledger_meta_set(l, "model", "Qwen3-8B", &err) == 0);
    CHECK(ledger_meta_get(l, "model", &v, &err) == 0 && v && !strcmp(v, "Qwen3-8B"));
    free(v);
    ledger_close(l);
}

static void test_pending_order_and_interleaving(void)
{
    errbuf err;
    ledger *l = open_new("order.sqlite");
    int32_t ids[64];
    for (int i = 0; i < 64; i++)
        ids[i] = i;
    /* Lengths 5, 3, 3, 7: shortest first, ties in insertion order. */
    CHECK(ledger_add_pending(l, "p", "P", "s", ids, 5, &err) == 0);
    CHECK(ledger_add_pending(l, "q", "Q", "s", ids, 3, &err) == 0);
    CHECK(ledger_add_pending(l, "r", "R", "s", ids, 3, &err) == 0);
    CHECK(ledger_add_pending(l, "s", "S", "s", ids, 7, &err) == 0);
    const char *want[] = {"q", "r", "p", "s"};
    ledger_pending_iter *it;
    ledger_pending_doc d;
    CHECK(ledger_pending_open(l, &it, &err) == 0);
    for (int i = 0; i < 4; i++) {
        CHECK_INT_EQ(ledger_pending_next(it, &d, &err), 1);
        CHECK_STR_EQ(d.key, want[i]);
    }
    CHECK_INT_EQ(ledger_pending_next(it, &d, &err), 0);
    ledger_pending_close(it);
    ledger_close(l);

    /* Many documents (several pages), finished while iterating, with
     * documents added behind and ahead of the iterator's position. */
    l = open_new("many.sqlite");
    enum { N = 700 };
    CHECK(ledger_begin(l, &err) == 0);
    for (int i = 0; i < N; i++) {
        char key[32];
        snprintf(key, sizeof key, "key%04d", i);
        CHECK(ledger_add_pending(l, key, key, "src", ids, 1 + (i * 37) % 50, &err) == 0);
    }
    CHECK(ledger_commit(l, &err) == 0);
    CHECK(ledger_pending_open(l, &it, &err) == 0);
    int n = 0, last_len = 0, order_ok = 1, rc;
    while ((rc = ledger_pending_next(it, &d, &err)) == 1) {
        if (d.n_ids < last_len)
            order_ok = 0;
        last_len = d.n_ids;
        for (int i = 0; i < d.n_ids; i++)
            if (d.ids[i] != i)
                order_ok = 0;
        ledger_output o = done_output("ok", 1);
        if (ledger_finish_doc(l, d.key, &o, &err) < 0)
            break;
        n++;
        if (n == 100) {
            /* One shorter than the position (not seen this pass) and one
             * longer (seen). */
            CHECK(ledger_add_pending(l, "late-short", "x", "s", ids, 1, &err) == 0);
            CHECK(ledger_add_pending(l, "late-long", "y", "s", ids, 60, &err) == 0);
        }
    }
    CHECK_INT_EQ(rc, 0);
    CHECK(order_ok);
    CHECK_INT_EQ(n, N + 1);
    ledger_pending_close(it);
    ledger_counts_t c;
    CHECK(ledger_counts(l, &c, &err) == 0);
    CHECK_INT_EQ(c.done, N + 1);
    CHECK_INT_EQ(c.pending, 1);
    CHECK_INT_EQ(c.pending_prompt_tokens, 1);
    ledger_close(l);
}

static void test_retry_and_counts(void)
{
    errbuf err;
    ledger *l = open_new("retry.sqlite");
    char *path = tmp_path("retry.sqlite");
    int32_t ids[10] = {0};
    int64_t run1, run2;
    ledger_counts_t c;
    CHECK(ledger_counts(l, &c, &err) == 0);
    CHECK_INT_EQ(c.has_run, 0);
    CHECK_INT_EQ(c.has_pace, 0);
    CHECK_INT_EQ(c.pending + c.done + c.failed, 0);

    CHECK(ledger_run_begin(l, "cfg", "cpu", "0.1", &run1, &err) == 0);
    CHECK(ledger_add_pending(l, "a", "A", "s", ids, 10, &err) == 0);
    CHECK(ledger_add_pending(l, "b", "B", "s", ids, 4, &err) == 0);
    CHECK(ledger_add_pending(l, "c", "C", "s", ids, 6, &err) == 0);
    CHECK(ledger_add_failed(l, "bad", "f.jsonl:3", "f.jsonl:3", "f.jsonl:3: malformed JSON",
                            &err) == 0);
    ledger_output o = done_output("A!", 20);
    o.run_id = run1;
    CHECK(ledger_finish_doc(l, "a", &o, &err) == 0);
    ledger_output e = {0};
    e.finish_reason = "error";
    e.error = "boom";
    e.run_id = run1;
    CHECK(ledger_finish_doc(l, "b", &e, &err) == 0);
    ledger_run_totals t = {1, 2, 10, 20, 4.0};
    CHECK(ledger_run_end(l, run1, &t, 3, &err) == 0);
    CHECK(ledger_run_end(l, 424242, &t, 3, &err) == -1);

    CHECK(ledger_counts(l, &c, &err) == 0);
    CHECK_INT_EQ(c.pending, 1);
    CHECK_INT_EQ(c.done, 1);
    CHECK_INT_EQ(c.failed, 2);
    CHECK_INT_EQ(c.done_prompt_tokens, 10);
    CHECK_INT_EQ(c.done_completion_tokens, 20);
    CHECK_INT_EQ(c.pending_prompt_tokens, 6);
    CHECK_INT_EQ(c.has_run, 1);
    CHECK_INT_EQ(c.run_id, run1);
    CHECK_INT_EQ(c.run_exit_status, 3);
    CHECK_INT_EQ(c.run_docs_done, 1);
    CHECK_INT_EQ(c.run_docs_failed, 2);
    CHECK_INT_EQ(c.run_prompt_tokens, 10);
    CHECK_INT_EQ(c.run_completion_tokens, 20);
    CHECK(c.run_doc_seconds == 4.0);
    CHECK_INT_EQ(c.config_runs, 1);
    CHECK(c.config_run_seconds == 4.0);
    CHECK_STR_EQ(c.run_backend, "cpu");
    CHECK_STR_EQ(c.run_version, "0.1");
    CHECK_INT_EQ(c.run_pid, getpid());
    CHECK(c.run_host[0] != '\0');

    /* A second run that is not ended: exit status unknown, its own figures. */
    CHECK(ledger_run_begin(l, "cfg", "cuda", "0.2", &run2, &err) == 0);
    CHECK(run2 > run1);
    CHECK(ledger_counts(l, &c, &err) == 0);
    CHECK_INT_EQ(c.run_id, run2);
    CHECK_INT_EQ(c.run_exit_status, -1);
    CHECK_INT_EQ(c.run_docs_done, 0);
    CHECK_STR_EQ(c.run_backend, "cuda");
    CHECK_INT_EQ(c.has_pace, 1); /* the pace comes from the run that finished documents */
    CHECK_INT_EQ(c.pace.id, run1);
    CHECK_INT_EQ(c.pace.docs_done, 1);
    CHECK(c.pace.seconds == 4.0);
    /* All runs of "cfg": the ended one (4 s) and the open one, which has
     * finished nothing yet (0 s). */
    CHECK_INT_EQ(c.config_runs, 2);
    CHECK(c.config_run_seconds == 4.0);

    /* retry-failed: the engine failure is queued again with its ids, the
     * ingest failure is deleted so that ingest meets it anew. */
    int64_t n;
    CHECK(ledger_retry_failed(l, &n, &err) == 0);
    CHECK_INT_EQ(n, 2);
    CHECK_INT_EQ(sql_int(path, "SELECT count(*) FROM documents WHERE key = 'bad'"), 0);
    CHECK_INT_EQ(sql_int(path, "SELECT state = 'pending' AND error IS NULL AND attempts = 1"
                               " FROM documents WHERE key = 'b'"),
                 1);
    int found;
    CHECK(ledger_has_key(l, "bad", &found, &err) == 0 && found == 0);
    CHECK(ledger_counts(l, &c, &err) == 0);
    CHECK_INT_EQ(c.failed, 0);
    CHECK_INT_EQ(c.pending, 2);
    CHECK_INT_EQ(c.pending_prompt_tokens, 10);
    ledger_pending_iter *it;
    ledger_pending_doc d;
    CHECK(ledger_pending_open(l, &it, &err) == 0);
    CHECK_INT_EQ(ledger_pending_next(it, &d, &err), 1);
    CHECK_STR_EQ(d.key, "b");
    CHECK_INT_EQ(d.n_ids, 4);
    CHECK_INT_EQ(d.attempts, 1);
    ledger_pending_close(it);
    CHECK(ledger_retry_failed(l, &n, &err) == 0);
    CHECK_INT_EQ(n, 0);
    ledger_close(l);
}

/* Documents belong to the configuration of the run that added them; the
 * ledger shows the current one's. */
static void test_configs(void)
{
    errbuf err;
    ledger *l = open_new("cfg.sqlite");
    char *path = tmp_path("cfg.sqlite");
    int32_t ids[] = {1, 2, 3};
    int64_t run;
    CHECK(ledger_config_hash(l) == NULL);
    CHECK(ledger_run_begin(l, "A", "cpu", "1", &run, &err) == 0);
    CHECK_STR_EQ(ledger_config_hash(l), "A");
    int gen_a = ledger_config_gen(l);
    CHECK(ledger_add_pending(l, "a1", "1", "s", ids, 3, &err) == 0);
    CHECK(ledger_add_pending(l, "a2", "2", "s", ids, 2, &err) == 0);
    CHECK(ledger_add_failed(l, "a3", "3", "s", "bad", &err) == 0);
    ledger_output o = done_output("A's answer", 5);
    o.jsonl_end = 42;
    CHECK(ledger_finish_doc(l, "a1", &o, &err) == 0);
    CHECK(ledger_run_begin(l, "A", "cpu", "1", &run, &err) == 0);
    CHECK_INT_EQ(ledger_config_gen(l), gen_a); /* same configuration */

    CHECK(ledger_run_begin(l, "B", "cpu", "1", &run, &err) == 0);
    CHECK(ledger_config_gen(l) != gen_a);
    ledger_counts_t c;
    CHECK(ledger_counts(l, &c, &err) == 0);
    CHECK_INT_EQ(c.pending + c.done + c.failed, 0);
    CHECK_INT_EQ(c.other_configs, 3);
    CHECK_INT_EQ(c.config_runs, 1); /* A's two runs are not B's */
    CHECK_INT_EQ(ledger_jsonl_end(l), 0);
    ledger_doc d;
    CHECK_INT_EQ(ledger_last_done(l, &d, &err), 0);
    ledger_pending_iter *it;
    ledger_pending_doc p;
    CHECK(ledger_pending_open(l, &it, &err) == 0);
    CHECK_INT_EQ(ledger_pending_next(it, &p, &err), 0);
    ledger_pending_close(it);
    int64_t n;
    CHECK(ledger_retry_failed(l, &n, &err) == 0);
    CHECK_INT_EQ(n, 0);
    int found;
    CHECK(ledger_has_key(l, "a1", &found, &err) == 0 && found == 1);
    CHECK(ledger_add_pending(l, "b1", "1", "s", ids, 1, &err) == 0);
    CHECK_INT_EQ(sql_int(path, "SELECT count(*) FROM documents WHERE config_hash = 'B'"), 1);
    CHECK(ledger_pending_open(l, &it, &err) == 0);
    CHECK_INT_EQ(ledger_pending_next(it, &p, &err), 1);
    CHECK_STR_EQ(p.key, "b1");
    CHECK_INT_EQ(ledger_pending_next(it, &p, &err), 0);
    ledger_pending_close(it);

    /* A reader takes the current configuration from the ledger. */
    ledger *r;
    CHECK(ledger_open_existing(&r, path, &err) == 0);
    CHECK_STR_EQ(ledger_config_hash(r), "B");
    CHECK(ledger_counts(r, &c, &err) == 0);
    CHECK_INT_EQ(c.pending, 1);
    CHECK_INT_EQ(c.other_configs, 3);
    ledger_close(r);

    /* Back to A: its documents are there again. */
    CHECK(ledger_run_begin(l, "A", "cpu", "1", &run, &err) == 0);
    CHECK(ledger_counts(l, &c, &err) == 0);
    CHECK_INT_EQ(c.done, 1);
    CHECK_INT_EQ(c.pending, 1);
    CHECK_INT_EQ(c.failed, 1);
    CHECK_INT_EQ(c.other_configs, 1);
    CHECK_INT_EQ(c.config_runs, 3);
    CHECK_INT_EQ(ledger_jsonl_end(l), 42);
    CHECK(ledger_retry_failed(l, &n, &err) == 0);
    CHECK_INT_EQ(n, 1);
    ledger_close(l);
}

/* A run that did not end (killed) is timed from its start to its last done
 * document, for its own figures and for the total over all runs. */
static void test_unended_run_time(void)
{
    errbuf err;
    ledger *l = open_new("unended.sqlite");
    int32_t ids[] = {1, 2, 3};
    int64_t run1, run2;
    CHECK(ledger_run_begin(l, "cfg", "cpu", "1", &run1, &err) == 0);
    ledger_run_totals t = {0, 0, 0, 0, 5.0};
    CHECK(ledger_run_end(l, run1, &t, 4, &err) == 0);
    CHECK(ledger_run_begin(l, "cfg", "cpu", "1", &run2, &err) == 0);
    CHECK(ledger_add_pending(l, "a", "A", "s", ids, 3, &err) == 0);
    CHECK(ledger_add_pending(l, "b", "B", "s", ids, 2, &err) == 0);
    ledger_output o = done_output("A!", 4);
    o.run_id = run2;
    o.finished_at = (int64_t)time(NULL) + 7; /* 7 s after the run began, give or take 1 */
    CHECK(ledger_finish_doc(l, "a", &o, &err) == 0);
    ledger_output f = {0};
    f.finish_reason = "error";
    f.error = "boom";
    f.run_id = run2;
    f.finished_at = (int64_t)time(NULL) + 100; /* failed documents do not time a run */
    CHECK(ledger_finish_doc(l, "b", &f, &err) == 0);
    ledger_counts_t c;
    CHECK(ledger_counts(l, &c, &err) == 0);
    CHECK_INT_EQ(c.run_id, run2);
    CHECK_INT_EQ(c.run_exit_status, -1);
    CHECK_MSG(c.run_doc_seconds > 5.9 && c.run_doc_seconds <= 7.0, "%g", c.run_doc_seconds);
    CHECK_INT_EQ(c.config_runs, 2);
    CHECK_MSG(c.config_run_seconds > 10.9 && c.config_run_seconds <= 12.0, "%g",
              c.config_run_seconds);
    ledger_close(l);
}

static void test_lock(void)
{
    errbuf err;
    ledger *l1 = open_new("lock.sqlite"), *l2 = NULL;
    char *path = tmp_path("lock.sqlite");
    CHECK(ledger_open(&l2, path, &err) == 0);
    CHECK_MSG(ledger_lock(l1, &err) == 0, "%s", err.msg);
    CHECK(ledger_lock(l1, &err) == 0); /* held already */
    CHECK_INT_EQ(ledger_lock(l2, &err), LEDGER_LOCKED);
    char host[256] = "";
    gethostname(host, sizeof host - 1);
    char want[300];
    snprintf(want, sizeof want, "(host %s, pid %d)", host, (int)getpid());
    CHECK_MSG(strstr(err.msg, want) != NULL, "'%s' lacks '%s'", err.msg, want);
    CHECK_MSG(strstr(err.msg, "lock.sqlite is locked") != NULL, "%s", err.msg);
    ledger_close(l1);
    CHECK_MSG(ledger_lock(l2, &err) == 0, "%s", err.msg);
    ledger_close(l2);

    /* A holder killed with SIGKILL frees the lock. */
    int ready[2];
    CHECK(pipe(ready) == 0);
    pid_t pid = fork();
    if (pid == 0) {
        ledger *lc;
        errbuf e2;
        char ok = ledger_open(&lc, path, &e2) == 0 && ledger_lock(lc, &e2) == 0 ? 'y' : 'n';
        if (write(ready[1], &ok, 1) != 1)
            _exit(2);
        for (;;)
            pause();
    }
    char ok = 0;
    CHECK(read(ready[0], &ok, 1) == 1 && ok == 'y');
    CHECK(ledger_open(&l2, path, &err) == 0);
    CHECK_INT_EQ(ledger_lock(l2, &err), LEDGER_LOCKED);
    snprintf(want, sizeof want, "pid %d)", (int)pid);
    CHECK_MSG(strstr(err.msg, want) != NULL, "'%s' lacks '%s'", err.msg, want);
    char holder[300];
    CHECK_INT_EQ(ledger_lock_holder(path, holder, sizeof holder), 1);
    char want_holder[300];
    snprintf(want_holder, sizeof want_holder, "host %s, pid %d", host, (int)pid);
    CHECK_STR_EQ(holder, want_holder);
    kill(pid, SIGKILL);
    int status;
    waitpid(pid, &status, 0);
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    CHECK_INT_EQ(ledger_lock_holder(path, holder, sizeof holder), 0);
    CHECK_INT_EQ(ledger_lock_holder(tmp_path("never-locked.sqlite"), holder, sizeof holder), 0);
    CHECK_MSG(ledger_lock(l2, &err) == 0, "%s", err.msg);
    ledger_close(l2);
    close(ready[0]);
    close(ready[1]);
}

/* A reader (status, export) sees committed documents while a writer holds
 * the lock and has a batch open. */
static void test_reader_while_writing(void)
{
    errbuf err;
    ledger *w = open_new("rw.sqlite"), *r = NULL;
    int32_t ids[] = {1};
    CHECK(ledger_lock(w, &err) == 0);
    CHECK(ledger_add_pending(w, "a", "A", "s", ids, 1, &err) == 0);
    CHECK(ledger_begin(w, &err) == 0);
    CHECK(ledger_add_pending(w, "b", "B", "s", ids, 1, &err) == 0);
    CHECK_MSG(ledger_open_existing(&r, tmp_path("rw.sqlite"), &err) == 0, "%s", err.msg);
    ledger_counts_t c;
    CHECK_MSG(ledger_counts(r, &c, &err) == 0, "%s", err.msg);
    CHECK_INT_EQ(c.pending, 1);
    CHECK(ledger_commit(w, &err) == 0);
    CHECK(ledger_counts(r, &c, &err) == 0);
    CHECK_INT_EQ(c.pending, 2);
    ledger_close(r);
    ledger_close(w);
}

int main(void)
{
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    test_schema();
    test_pending_idempotent();
    test_finish();
    test_pending_order_and_interleaving();
    test_retry_and_counts();
    test_configs();
    test_unended_run_time();
    test_lock();
    test_reader_while_writing();
    return check_exit_clean("test_ledger", tmpdir);
}
