/*
 * test_output.c - the results file against the ledger: the append+commit
 * protocol, recovery from simulated crashes (torn tail, line written but not
 * committed, missing, shortened or edited file, changed format), the record
 * formats, and a kill test: a child process finishes documents and is
 * SIGKILLed at random moments ~30 times, resumed each time; at the end every
 * document is done exactly once and the file equals the export.
 */
#include "config.h"

#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "ledger.h"
#include "output.h"
#include "strbuf.h"

static char tmpdir[] = "/tmp/test_output.XXXXXX";

static char *tmp_path(const char *name)
{
    static char buf[4][512];
    static int k;
    char *p = buf[k++ & 3];
    snprintf(p, 512, "%s/%s", tmpdir, name);
    return p;
}

static void read_file(const char *path, strbuf *sb)
{
    sb_reset(sb);
    if (sb_read_file(sb, path) < 0)
        sb_reset(sb);
}

static void export_to(ledger *l, enum out_format format, int include_reasoning, strbuf *sb)
{
    errbuf err;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    CHECK_MSG(out_export(l, f, format, include_reasoning, NULL, &err) == 0, "%s", err.msg);
    fclose(f);
    sb_reset(sb);
    sb_add(sb, buf, len);
    free(buf);
}

/* The file at path equals the ledger's export, and the ledger's committed
 * end is the file's size. */
static int file_equals_export(ledger *l, const char *path, enum out_format format,
                              int include_reasoning)
{
    strbuf have = STRBUF_INIT, want = STRBUF_INIT;
    read_file(path, &have);
    export_to(l, format, include_reasoning, &want);
    int ok = have.len == want.len && !memcmp(have.buf, want.buf, have.len) &&
             ledger_jsonl_end(l) == (int64_t)have.len;
    if (!ok)
        fprintf(stderr, "file (%zu bytes):\n%s\nexport (%zu bytes):\n%s\njsonl_end %lld\n",
                have.len, have.buf ? have.buf : "", want.len, want.buf ? want.buf : "",
                (long long)ledger_jsonl_end(l));
    sb_release(&have);
    sb_release(&want);
    return ok;
}

static int count_lines(const char *path)
{
    strbuf sb = STRBUF_INIT;
    read_file(path, &sb);
    int n = 0;
    for (size_t i = 0; i < sb.len; i++)
        n += sb.buf[i] == '\n';
    sb_release(&sb);
    return n;
}

static void add_docs(ledger *l, int n)
{
    errbuf err;
    int32_t ids[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    for (int i = 0; i < n; i++) {
        char key[32], id[32], src[32];
        snprintf(key, sizeof key, "key%03d", i);
        snprintf(id, sizeof id, "doc-%d", i);
        snprintf(src, sizeof src, "in.jsonl:%d", i + 1);
        CHECK(ledger_add_pending(l, key, id, src, ids, 1 + i % 8, &err) == 0);
    }
}

static ledger_output output_for(const char *key, int n_ids)
{
    ledger_output r = {0};
    static char content[256], reasoning[64];
    snprintf(content, sizeof content, "Summary of %s: \"quoted\", tab\t, ünïcödé ✓\nline 2", key);
    snprintf(reasoning, sizeof reasoning, "thinking about %s", key);
    r.content = content;
    r.reasoning = reasoning;
    r.finish_reason = key[strlen(key) - 1] == '7' ? "length" : "stop";
    r.prompt_tokens = n_ids;
    r.completion_tokens = 10 + (int)strlen(key);
    r.seconds = 1.25;
    r.thinking_truncated = key[strlen(key) - 1] == '3';
    return r;
}

/* Finishes up to max pending documents through o. */
static int finish_some(ledger *l, out *o, int max)
{
    errbuf err;
    ledger_pending_iter *it;
    ledger_pending_doc d;
    int n = 0;
    CHECK(ledger_pending_open(l, &it, &err) == 0);
    while (n < max && ledger_pending_next(it, &d, &err) == 1) {
        ledger_output r = output_for(d.key, d.n_ids);
        int rc = out_finish_doc(o, d.key, d.doc_id, d.source, &r, &err);
        CHECK_MSG(rc == 0, "%s", err.msg);
        n++;
    }
    ledger_pending_close(it);
    return n;
}

static void test_protocol(void)
{
    errbuf err;
    char *lpath = tmp_path("p.sqlite"), *jpath = tmp_path("p.jsonl");
    ledger *l;
    out *o;
    int regen = -1;
    CHECK(ledger_open(&l, lpath, &err) == 0);
    CHECK(ledger_lock(l, &err) == 0);
    add_docs(l, 10);
    CHECK_MSG(out_open(&o, jpath, l, OUT_JSONL, 0, &regen, &err) == 0, "%s", err.msg);
    CHECK_INT_EQ(regen, 0);
    CHECK_INT_EQ(out_end(o), 0);
    CHECK_INT_EQ(finish_some(l, o, 4), 4);
    CHECK(file_equals_export(l, jpath, OUT_JSONL, 0));
    CHECK_INT_EQ(count_lines(jpath), 4);
    CHECK_INT_EQ(out_end(o), ledger_jsonl_end(l));

    /* Records: keys in order, values as given. */
    strbuf sb = STRBUF_INIT;
    read_file(jpath, &sb);
    json_error_t jerr;
    json_t *first = json_loadb(sb.buf, strchr(sb.buf, '\n') - sb.buf, 0, &jerr);
    CHECK_MSG(first != NULL, "%s", jerr.text);
    if (first) {
        const char *keys[] = {"id",
                              "source",
                              "content",
                              "finish_reason",
                              "thinking_truncated",
                              "prompt_tokens",
                              "completion_tokens",
                              "seconds"};
        CHECK_INT_EQ(json_object_size(first), 8);
        const char *pos = sb.buf;
        for (int i = 0; i < 8; i++) {
            char quoted[40];
            snprintf(quoted, sizeof quoted, "\"%s\":", keys[i]);
            const char *at = strstr(sb.buf, quoted);
            CHECK_MSG(at && at >= pos, "key %s out of order", keys[i]);
            if (at)
                pos = at;
        }
        CHECK_STR_EQ(json_string_value(json_object_get(first, "id")), "doc-0");
        CHECK_STR_EQ(json_string_value(json_object_get(first, "source")), "in.jsonl:1");
        CHECK(strstr(json_string_value(json_object_get(first, "content")), "ünïcödé ✓\nline") !=
              NULL);
        CHECK_INT_EQ(json_integer_value(json_object_get(first, "prompt_tokens")), 1);
        CHECK(json_real_value(json_object_get(first, "seconds")) == 1.25);
        CHECK(json_is_false(json_object_get(first, "thinking_truncated")));
        json_decref(first);
    }
    CHECK(strstr(sb.buf, "\"seconds\":1.25}") != NULL);

    /* An error finish is in the ledger only. */
    ledger_output e = {0};
    e.finish_reason = "error";
    e.error = "engine: out of memory";
    int64_t before = out_end(o);
    CHECK(out_finish_doc(o, "key004", "doc-4", "in.jsonl:5", &e, &err) == 0);
    CHECK_INT_EQ(out_end(o), before);
    CHECK(file_equals_export(l, jpath, OUT_JSONL, 0));

    /* A ledger commit that fails (document not pending) leaves no line. */
    ledger_output r = output_for("key000", 1);
    CHECK(out_finish_doc(o, "key000", "doc-0", "in.jsonl:1", &r, &err) == -1);
    CHECK(out_finish_doc(o, "nokey", "x", "y", &r, &err) == -1);
    CHECK(file_equals_export(l, jpath, OUT_JSONL, 0));

    /* Crash between write and commit: the line is on disk, the ledger does
     * not have it. Reopening drops it; the document is still pending. */
    ledger_doc d = {.key = "key005",
                    .doc_id = "doc-5",
                    .source = "in.jsonl:6",
                    .content = "uncommitted",
                    .finish_reason = "stop",
                    .prompt_tokens = 6};
    int64_t end;
    CHECK(out_write_doc(o, &d, &end, &err) == 0);
    CHECK(end > out_end(o));
    out_close(o);
    struct stat st;
    CHECK(stat(jpath, &st) == 0 && st.st_size == end);
    CHECK_MSG(out_open(&o, jpath, l, OUT_JSONL, 0, &regen, &err) == 0, "%s", err.msg);
    CHECK_INT_EQ(regen, 0);
    CHECK(file_equals_export(l, jpath, OUT_JSONL, 0));
    read_file(jpath, &sb);
    CHECK(strstr(sb.buf, "uncommitted") == NULL);

    /* The same within a run: an uncommitted line is overwritten by the next
     * one, even when it was longer. */
    d.content = "a much longer uncommitted line that the next, shorter, line must not leave behind";
    CHECK(out_write_doc(o, &d, &end, &err) == 0);
    CHECK_INT_EQ(finish_some(l, o, 1), 1);
    CHECK(file_equals_export(l, jpath, OUT_JSONL, 0));

    /* Torn tail: half a line after the committed end. */
    out_close(o);
    FILE *f = fopen(jpath, "a");
    fputs("{\"id\":\"doc-9\",\"source\":\"in.js", f);
    fclose(f);
    CHECK(out_open(&o, jpath, l, OUT_JSONL, 0, &regen, &err) == 0);
    CHECK_INT_EQ(regen, 0);
    CHECK(file_equals_export(l, jpath, OUT_JSONL, 0));
    CHECK_INT_EQ(finish_some(l, o, 2), 2);
    CHECK(file_equals_export(l, jpath, OUT_JSONL, 0));
    int n_done = count_lines(jpath);
    CHECK_INT_EQ(n_done, 7);

    /* Missing file: rebuilt from the ledger, offsets recorded anew. */
    out_close(o);
    unlink(jpath);
    CHECK(out_open(&o, jpath, l, OUT_JSONL, 0, &regen, &err) == 0);
    CHECK_INT_EQ(regen, 1);
    CHECK(file_equals_export(l, jpath, OUT_JSONL, 0));
    CHECK_INT_EQ(count_lines(jpath), n_done);
    out_close(o);
    CHECK(out_open(&o, jpath, l, OUT_JSONL, 0, &regen, &err) == 0);
    CHECK_INT_EQ(regen, 0); /* the recorded offsets now fit */

    /* Shortened file (lost lines): rebuilt. */
    out_close(o);
    CHECK(truncate(jpath, 50) == 0);
    CHECK(out_open(&o, jpath, l, OUT_JSONL, 0, &regen, &err) == 0);
    CHECK_INT_EQ(regen, 1);
    CHECK(file_equals_export(l, jpath, OUT_JSONL, 0));

    /* The last line edited in place (same length): rebuilt. */
    out_close(o);
    read_file(jpath, &sb);
    char *lastq = strstr(sb.buf + sb.len - 200, "Summary");
    CHECK(lastq != NULL);
    if (lastq) {
        int fd = open(jpath, O_WRONLY);
        CHECK(pwrite(fd, "S", 1, lastq - sb.buf + 1) == 1); /* "SSmmary" */
        close(fd);
    }
    CHECK(out_open(&o, jpath, l, OUT_JSONL, 0, &regen, &err) == 0);
    CHECK_INT_EQ(regen, 1);
    CHECK(file_equals_export(l, jpath, OUT_JSONL, 0));

    /* A changed format or reasoning setting: rebuilt in the new form. */
    out_close(o);
    CHECK(out_open(&o, jpath, l, OUT_JSONL, 1, &regen, &err) == 0);
    CHECK_INT_EQ(regen, 1);
    CHECK(file_equals_export(l, jpath, OUT_JSONL, 1));
    read_file(jpath, &sb);
    CHECK(strstr(sb.buf, "\"reasoning_content\":\"thinking about key000\"") != NULL);
    out_close(o);
    CHECK(ledger_meta_set(l, "model", "Qwen3-14B-AWQ", &err) == 0);
    CHECK(out_open(&o, jpath, l, OUT_OPENAI_BATCH, 1, &regen, &err) == 0);
    CHECK_INT_EQ(regen, 1);
    CHECK_INT_EQ(finish_some(l, o, 1), 1);
    CHECK(file_equals_export(l, jpath, OUT_OPENAI_BATCH, 1));
    read_file(jpath, &sb);
    json_t *rec = json_loadb(sb.buf, strchr(sb.buf, '\n') - sb.buf, 0, &jerr);
    CHECK_MSG(rec != NULL, "%s", jerr.text);
    if (rec) {
        int status = 0;
        const char *custom_id = NULL, *request_id = NULL, *object = NULL, *model = NULL,
                   *role = NULL, *content = NULL, *reasoning = NULL, *finish = NULL;
        json_int_t pt = 0, ct = 0, tt = 0;
        json_t *error = NULL;
        int rc = json_unpack_ex(
            rec, &jerr, 0,
            "{s:s, s:{s:i, s:s, s:{s:s, s:s, s:[{s:{s:s, s:s, s:s}, s:s}], s:{s:I, s:I, s:I}}},"
            " s:o}",
            "custom_id", &custom_id, "response", "status_code", &status, "request_id", &request_id,
            "body", "object", &object, "model", &model, "choices", "message", "role", &role,
            "content", &content, "reasoning_content", &reasoning, "finish_reason", &finish, "usage",
            "prompt_tokens", &pt, "completion_tokens", &ct, "total_tokens", &tt, "error", &error);
        CHECK_MSG(rc == 0, "%s", jerr.text);
        if (rc == 0) {
            CHECK_STR_EQ(custom_id, "doc-0");
            CHECK_STR_EQ(request_id, "key000");
            CHECK_INT_EQ(status, 200);
            CHECK_STR_EQ(object, "chat.completion");
            CHECK_STR_EQ(model, "Qwen3-14B-AWQ");
            CHECK_STR_EQ(role, "assistant");
            CHECK_STR_EQ(reasoning, "thinking about key000");
            CHECK_STR_EQ(finish, "stop");
            CHECK_INT_EQ(tt, pt + ct);
            CHECK(json_is_null(error));
        }
        json_decref(rec);
    }
    sb_release(&sb);
    out_close(o);
    ledger_close(l);
}

/* A run with a new configuration: the results file holds only its
 * documents, whether the switch comes before out_open or after it. */
static void test_config_change(void)
{
    errbuf err;
    char *lpath = tmp_path("c.sqlite"), *jpath = tmp_path("c.jsonl");
    ledger *l;
    out *o;
    int64_t run;
    int regen;
    CHECK(ledger_open(&l, lpath, &err) == 0);
    CHECK(ledger_run_begin(l, "A", "cpu", "1", &run, &err) == 0);
    add_docs(l, 3);
    CHECK(out_open(&o, jpath, l, OUT_JSONL, 0, &regen, &err) == 0);
    CHECK_INT_EQ(finish_some(l, o, 3), 3);
    CHECK_INT_EQ(count_lines(jpath), 3);

    /* Switch after out_open (cmd_run's order): the next write rebuilds. */
    CHECK(ledger_run_begin(l, "B", "cpu", "1", &run, &err) == 0);
    int32_t ids[] = {7, 7};
    CHECK(ledger_add_pending(l, "b-key0", "doc-b0", "b.jsonl:1", ids, 2, &err) == 0);
    CHECK_INT_EQ(finish_some(l, o, 1), 1);
    CHECK_INT_EQ(count_lines(jpath), 1);
    CHECK(file_equals_export(l, jpath, OUT_JSONL, 0));
    out_close(o);
    CHECK(out_open(&o, jpath, l, OUT_JSONL, 0, &regen, &err) == 0);
    CHECK_INT_EQ(regen, 0);
    out_close(o);

    /* Switch back before out_open: rebuilt with A's three lines. */
    CHECK(ledger_run_begin(l, "A", "cpu", "1", &run, &err) == 0);
    CHECK(out_open(&o, jpath, l, OUT_JSONL, 0, &regen, &err) == 0);
    CHECK_INT_EQ(regen, 1);
    CHECK_INT_EQ(count_lines(jpath), 3);
    CHECK(file_equals_export(l, jpath, OUT_JSONL, 0));
    out_close(o);

    /* Switch after out_open with nothing written: out_close rebuilds. */
    CHECK(out_open(&o, jpath, l, OUT_JSONL, 0, &regen, &err) == 0);
    CHECK_INT_EQ(regen, 0);
    CHECK(ledger_run_begin(l, "B", "cpu", "1", &run, &err) == 0);
    out_close(o);
    CHECK_INT_EQ(count_lines(jpath), 1);
    CHECK(file_equals_export(l, jpath, OUT_JSONL, 0));

    /* A configuration without any done document: an empty file. */
    CHECK(ledger_run_begin(l, "C", "cpu", "1", &run, &err) == 0);
    CHECK(out_open(&o, jpath, l, OUT_JSONL, 0, &regen, &err) == 0);
    CHECK_INT_EQ(count_lines(jpath), 0);
    CHECK(file_equals_export(l, jpath, OUT_JSONL, 0));
    out_close(o);
    ledger_close(l);
}

/* ---- the kill test --------------------------------------------------------- */

enum { KILL_DOCS = 300, KILL_ROUNDS = 30 };

/* What the runner does: ingest (idempotent), then finish pending documents
 * one by one; never returns. After recovery and after each document it
 * writes a byte to progress_fd (-1: none), so that the parent can kill it
 * at a chosen point of the queue however slow the machine is. */
static void child_run(const char *lpath, const char *jpath, int progress_fd)
{
    errbuf err;
    ledger *l;
    out *o;
    int64_t run_id;
    /* The order of cmd_run: recover the results file, begin the run (which
     * sets the configuration new documents belong to), ingest, generate. */
    if (ledger_open(&l, lpath, &err) < 0 || ledger_lock(l, &err) < 0 ||
        out_open(&o, jpath, l, OUT_JSONL, 1, NULL, &err) < 0 ||
        ledger_run_begin(l, "cfg", "cpu", "test", &run_id, &err) < 0)
        goto fail;
    if (ledger_begin(l, &err) < 0)
        goto fail;
    int32_t ids[64];
    for (int i = 0; i < 64; i++)
        ids[i] = i * 7;
    for (int i = 0; i < KILL_DOCS; i++) {
        char key[32], id[32];
        snprintf(key, sizeof key, "k%05d", i);
        snprintf(id, sizeof id, "d%d", i);
        if (ledger_add_pending(l, key, id, "corpus.tar!x", ids, 1 + (i * 13) % 64, &err) < 0)
            goto fail;
    }
    if (ledger_commit(l, &err) < 0)
        goto fail;
    ledger_pending_iter *it;
    ledger_pending_doc d;
    if (ledger_pending_open(l, &it, &err) < 0)
        goto fail;
    if (progress_fd >= 0 && write(progress_fd, "r", 1) != 1)
        goto fail;
    int rc;
    strbuf content = STRBUF_INIT;
    while ((rc = ledger_pending_next(it, &d, &err)) == 1) {
        /* Deterministic output of varying length (up to ~6 KB), so that
         * kills land inside writes as well as between them. */
        unsigned h = 0;
        for (const char *p = d.key; *p; p++)
            h = h * 31 + (unsigned char)*p;
        sb_reset(&content);
        for (unsigned i = 0; i < h % 300; i++)
            sb_addf(&content, "%s-%u ", d.key, i);
        ledger_output r = {0};
        r.content = content.buf ? content.buf : "";
        r.reasoning = d.key;
        r.finish_reason = "stop";
        r.prompt_tokens = d.n_ids;
        r.completion_tokens = (int)(h % 300);
        r.seconds = (h % 1000) / 100.0;
        r.finished_at = 1700000000 + h % 1000;
        r.run_id = run_id;
        if (out_finish_doc(o, d.key, d.doc_id, d.source, &r, &err) < 0)
            goto fail;
        if (progress_fd >= 0 && write(progress_fd, "d", 1) != 1)
            goto fail;
    }
    if (rc < 0)
        goto fail;
    _exit(0);
fail:
    fprintf(stderr, "child: %s\n", err.msg);
    _exit(1);
}

static void test_kill(void)
{
    char *lpath = tmp_path("kill.sqlite"), *jpath = tmp_path("kill.jsonl");
    unsigned seed = 12345;
    int killed = 0, finished_early = 0, mid_queue = 0, torn_tails = 0;
    int64_t last_done = 0;
    for (int round = 0; round < KILL_ROUNDS; round++) {
        int progress[2];
        CHECK(pipe(progress) == 0);
        pid_t pid = fork();
        if (pid == 0) {
            close(progress[0]);
            child_run(lpath, jpath, progress[1]);
        }
        close(progress[1]);
        /* Wait for 0..20 progress bytes (recovery, then documents; about
         * KILL_DOCS in all over the rounds), then 0..2 ms more, so that
         * kills land anywhere: in ingest, in recovery, between documents,
         * inside a line's write or the commit after it. */
        int wait_for = rand_r(&seed) % 21;
        char byte;
        for (int i = 0; i < wait_for && read(progress[0], &byte, 1) == 1; i++)
            ;
        struct timespec ts = {0, (long)(rand_r(&seed) % 2000) * 1000L};
        nanosleep(&ts, NULL);
        kill(pid, SIGKILL);
        int status;
        waitpid(pid, &status, 0);
        close(progress[0]);
        if (WIFSIGNALED(status))
            killed++;
        else {
            CHECK_MSG(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child failed in round %d",
                      round);
            finished_early++;
        }
        /* After each kill: the file holds the committed lines exactly, plus
         * at most an uncommitted tail that the next run cuts off. */
        ledger *lr;
        errbuf rerr;
        if (ledger_open_existing(&lr, lpath, &rerr) == 0) {
            ledger_counts_t rc;
            if (ledger_counts(lr, &rc, &rerr) == 0) {
                if (rc.done > 0 && rc.done < KILL_DOCS)
                    mid_queue++;
                CHECK_MSG(rc.done >= last_done, "round %d: done went from %lld to %lld", round,
                          (long long)last_done, (long long)rc.done);
                last_done = rc.done;
            }
            strbuf have = STRBUF_INIT, want = STRBUF_INIT;
            read_file(jpath, &have);
            export_to(lr, OUT_JSONL, 1, &want);
            int64_t end = ledger_jsonl_end(lr);
            CHECK_MSG(end == (int64_t)want.len && have.len >= want.len &&
                          !memcmp(have.buf, want.buf, want.len),
                      "round %d: file (%zu bytes) does not start with the export (%zu bytes)",
                      round, have.len, want.len);
            if (have.len > want.len)
                torn_tails++;
            sb_release(&have);
            sb_release(&want);
            ledger_close(lr);
        }
    }
    /* A last, uninterrupted run. */
    pid_t pid = fork();
    if (pid == 0)
        child_run(lpath, jpath, -1);
    int status;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    printf("kill test: %d kills (%d in the middle of the queue, %d left an uncommitted tail), "
           "%d runs finished before their kill\n",
           killed, mid_queue, torn_tails, finished_early);
    CHECK(mid_queue >= KILL_ROUNDS / 3);
    CHECK(killed >= KILL_ROUNDS / 2);

    errbuf err;
    ledger *l;
    CHECK(ledger_open_existing(&l, lpath, &err) == 0);
    ledger_counts_t c;
    CHECK(ledger_counts(l, &c, &err) == 0);
    CHECK_INT_EQ(c.done, KILL_DOCS);
    CHECK_INT_EQ(c.pending, 0);
    CHECK_INT_EQ(c.failed, 0);
    CHECK(file_equals_export(l, jpath, OUT_JSONL, 1));
    CHECK_INT_EQ(count_lines(jpath), KILL_DOCS);

    /* Each document exactly once in the file, each with its own output, and
     * finished once (attempts 1, done_seq 1..N without gaps). */
    static char seen[KILL_DOCS];
    memset(seen, 0, sizeof seen);
    strbuf sb = STRBUF_INIT;
    read_file(jpath, &sb);
    int bad_lines = 0;
    for (char *line = sb.buf; line && line < sb.buf + sb.len;) {
        char *nl = strchr(line, '\n');
        json_error_t jerr;
        json_t *rec = json_loadb(line, nl - line, 0, &jerr);
        const char *id = rec ? json_string_value(json_object_get(rec, "id")) : NULL;
        const char *reasoning =
            rec ? json_string_value(json_object_get(rec, "reasoning_content")) : NULL;
        int i = id ? atoi(id + 1) : -1;
        if (!id || i < 0 || i >= KILL_DOCS || seen[i] || !reasoning || atoi(reasoning + 1) != i)
            bad_lines++;
        else
            seen[i] = 1;
        json_decref(rec);
        line = nl + 1;
    }
    CHECK_INT_EQ(bad_lines, 0);
    int missing = 0;
    for (int i = 0; i < KILL_DOCS; i++)
        missing += !seen[i];
    CHECK_INT_EQ(missing, 0);
    ledger_docs_iter *it;
    ledger_doc d;
    CHECK(ledger_docs_open(l, LEDGER_DONE, &it, &err) == 0);
    int64_t expect_seq = 1;
    int attempts_ok = 1, seq_ok = 1;
    while (ledger_docs_next(it, &d, &err) == 1) {
        attempts_ok &= d.attempts == 1;
        seq_ok &= d.done_seq == expect_seq++;
    }
    ledger_docs_close(it);
    CHECK(attempts_ok);
    CHECK(seq_ok);
    sb_release(&sb);
    ledger_close(l);
}

int main(void)
{
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    test_protocol();
    test_config_change();
    test_kill();
    return check_exit_clean("test_output", tmpdir);
}
