/*
 * test_ledger_cmds.c - `status`, `export` and `retry-failed` through the
 * built binary ($QWEN3_BATCH) on a ledger filled through the API: no run
 * yet, counts and failures, the JSON form and its ETA, export equal to the
 * results file and in OpenAI batch form, and behaviour while a process holds
 * the ledger's lock (status and export work, retry-failed exits 5).
 */
#include "config.h"

#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "cli.h"
#include "ledger.h"
#include "output.h"
#include "strbuf.h"

static char tmpdir[] = "/tmp/test_ledger_cmds.XXXXXX";
static const char *binary;

/* Runs "qwen3-batch ARGS" in tmpdir; stdout into out; returns the exit code. */
static int run_cmd(const char *args, strbuf *out)
{
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "cd '%s' && '%s' %s 2>&1", tmpdir, binary, args);
    FILE *p = popen(cmd, "r");
    if (!p)
        return -1;
    sb_reset(out);
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, p)) > 0)
        sb_add(out, buf, n);
    if (!out->buf)
        sb_adds(out, "");
    int status = pclose(p);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static char *tmp_path(const char *name)
{
    static char buf[4][512];
    static int k;
    char *p = buf[k++ & 3];
    snprintf(p, 512, "%s/%s", tmpdir, name);
    return p;
}

#define CHECK_HAS(sb, needle)                                                                      \
    CHECK_MSG(strstr((sb).buf, needle) != NULL, "no '%s' in:\n%s", needle, (sb).buf)

static void fill_ledger(void)
{
    errbuf err;
    ledger *l;
    out *o;
    int64_t run_id;
    CHECK_MSG(ledger_open(&l, tmp_path("job.ledger.sqlite"), &err) == 0, "%s", err.msg);
    CHECK(ledger_lock(l, &err) == 0);
    CHECK(ledger_run_begin(l, "cfg", "cpu", "9.9", &run_id, &err) == 0);
    int32_t ids[100] = {0};
    const char *keys[] = {"ka", "kb", "kc", "kd", "ke"};
    const int lens[] = {10, 20, 30, 40, 50};
    for (int i = 0; i < 5; i++) {
        char id[16];
        snprintf(id, sizeof id, "doc%d", i);
        CHECK(ledger_add_pending(l, keys[i], id, "docs.jsonl", ids, lens[i], &err) == 0);
    }
    CHECK(ledger_add_failed(l, "kbad", "docs.jsonl:7", "docs.jsonl:7",
                            "docs.jsonl:7: malformed JSON", &err) == 0);
    CHECK_MSG(out_open(&o, tmp_path("job.jsonl"), l, OUT_JSONL, 1, NULL, &err) == 0, "%s", err.msg);
    for (int i = 0; i < 3; i++) {
        char id[16];
        snprintf(id, sizeof id, "doc%d", i);
        ledger_output r = {0};
        r.content = "An answer.";
        r.reasoning = "Some thought.";
        r.finish_reason = "stop";
        r.prompt_tokens = lens[i];
        r.completion_tokens = 100;
        r.seconds = 2;
        r.run_id = run_id;
        CHECK_MSG(out_finish_doc(o, keys[i], id, "docs.jsonl", &r, &err) == 0, "%s", err.msg);
    }
    ledger_output e = {0};
    e.finish_reason = "error";
    e.error = "engine: sequence too long";
    e.run_id = run_id;
    CHECK(out_finish_doc(o, "kd", "doc3", "docs.jsonl", &e, &err) == 0);
    ledger_run_totals t = {3, 2, 60, 300, 36.0};
    CHECK(ledger_run_end(l, run_id, &t, EXIT_DOCS_FAILED, &err) == 0);
    /* A second run of the same configuration that finished nothing in 9 s
     * (a resume cut short): the last run, and 45 s over all runs. */
    ledger_run_totals t2 = {0, 0, 0, 0, 9.0};
    CHECK(ledger_run_begin(l, "cfg", "cpu", "9.9", &run_id, &err) == 0);
    CHECK(ledger_run_end(l, run_id, &t2, EXIT_TIME_LIMIT, &err) == 0);
    out_close(o);
    ledger_close(l);
}

int main(void)
{
    binary = getenv("QWEN3_BATCH");
    if (!binary) {
        fprintf(stderr, "QWEN3_BATCH not set (run through make check)\n");
        return 77;
    }
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    FILE *f = fopen(tmp_path("job.yaml"), "w");
    fputs("model: model\ninputs: [docs.jsonl]\nprompt:\n  user: \"Summarize: {{text}}\"\n"
          "output:\n  include_reasoning: true\n",
          f);
    fclose(f);
    strbuf out = STRBUF_INIT, want = STRBUF_INIT;

    CHECK_INT_EQ(run_cmd("status job.yaml", &out), EXIT_OK);
    CHECK_HAS(out, "no run yet");
    CHECK_INT_EQ(run_cmd("retry-failed job.yaml", &out), EXIT_OK);
    CHECK_HAS(out, "no run yet");
    CHECK(run_cmd("export job.yaml", &out) == EXIT_FAILURE_);
    CHECK_INT_EQ(run_cmd("status", &out), EXIT_USAGE);
    CHECK_INT_EQ(run_cmd("status --help", &out), EXIT_OK);
    CHECK_HAS(out, "usage: qwen3-batch status");
    CHECK_INT_EQ(run_cmd("export --help", &out), EXIT_OK);
    CHECK_INT_EQ(run_cmd("retry-failed --help", &out), EXIT_OK);
    CHECK_INT_EQ(run_cmd("status nosuch.yaml", &out), EXIT_USAGE);
    CHECK_HAS(out, "nosuch.yaml");

    fill_ledger();
    CHECK_INT_EQ(run_cmd("status job.yaml", &out), EXIT_OK);
    CHECK_HAS(out, "documents: 6: 3 done, 1 pending, 2 failed");
    CHECK_HAS(out, "done 60 prompt + 300 completion; pending 50 prompt");
    CHECK_HAS(out, "exit status 4");
    CHECK_HAS(out, "all runs:  2 runs of this configuration, 45s in all: 240 docs/hour, 1.333 "
                   "prompt tok/s, 6.667 completion tok/s");
    CHECK_HAS(out, "docs.jsonl:7: malformed JSON");
    CHECK_HAS(out, "engine: sequence too long");
    CHECK_HAS(out, "version 9.9");
    CHECK_HAS(out, "eta:");

    CHECK_INT_EQ(run_cmd("status job.yaml --json", &out), EXIT_OK);
    json_error_t jerr;
    json_t *st = json_loads(out.buf, 0, &jerr);
    CHECK_MSG(st != NULL, "%s: %s", jerr.text, out.buf);
    if (st) {
        CHECK_INT_EQ(json_integer_value(json_object_get(st, "done")), 3);
        CHECK_INT_EQ(json_integer_value(json_object_get(st, "pending")), 1);
        CHECK_INT_EQ(json_integer_value(json_object_get(st, "failed")), 2);
        CHECK(json_is_false(json_object_get(st, "running")));
        json_t *run = json_object_get(st, "last_run");
        CHECK_INT_EQ(json_integer_value(json_object_get(run, "exit_status")), 4);
        CHECK(json_real_value(json_object_get(run, "seconds")) == 9.0);
        json_t *all = json_object_get(st, "all_runs");
        CHECK_INT_EQ(json_integer_value(json_object_get(all, "runs")), 2);
        CHECK(json_real_value(json_object_get(all, "seconds")) == 45.0);
        CHECK(json_real_value(json_object_get(all, "docs_per_hour")) == 240.0);
        /* The pace is run 1's, the last to finish a document: 36 s for 360
         * tokens; pending: 50 prompt + 100 (mean completion). */
        double eta = json_real_value(json_object_get(st, "eta_s"));
        CHECK_MSG(eta > 14.999 && eta < 15.001, "eta %g", eta);
        json_decref(st);
    }

    /* export reproduces the results file; other formats on request. */
    CHECK_INT_EQ(run_cmd("export job.yaml", &out), EXIT_OK);
    sb_read_file(&want, tmp_path("job.jsonl"));
    CHECK_INT_EQ(out.len, want.len);
    CHECK(out.len == want.len && !memcmp(out.buf, want.buf, out.len));
    CHECK_INT_EQ(
        run_cmd("export job.yaml --format openai-batch --no-reasoning -o batch.jsonl", &out),
        EXIT_OK);
    sb_reset(&want);
    sb_read_file(&want, tmp_path("batch.jsonl"));
    int lines = 0;
    for (size_t i = 0; i < want.len; i++)
        lines += want.buf[i] == '\n';
    CHECK_INT_EQ(lines, 3);
    CHECK_HAS(want, "\"custom_id\":\"doc0\"");
    CHECK(strstr(want.buf, "reasoning_content") == NULL);
    CHECK(access(tmp_path("batch.jsonl.tmp"), F_OK) != 0);
    CHECK_INT_EQ(run_cmd("export job.yaml -o job.jsonl", &out), EXIT_USAGE);
    CHECK_HAS(out, "results file");
    CHECK_INT_EQ(run_cmd("export job.yaml --format csv", &out), EXIT_USAGE);

    /* A process holds the lock: status and export still work, retry-failed
     * refuses with the lock's exit code. */
    int ready[2];
    CHECK(pipe(ready) == 0);
    pid_t pid = fork();
    if (pid == 0) {
        errbuf err;
        ledger *l;
        int64_t run_id;
        char ok = ledger_open(&l, tmp_path("job.ledger.sqlite"), &err) == 0 &&
                          ledger_lock(l, &err) == 0 &&
                          ledger_run_begin(l, "cfg", "cpu", "9.9", &run_id, &err) == 0
                      ? 'y'
                      : 'n';
        if (write(ready[1], &ok, 1) != 1)
            _exit(2);
        for (;;)
            pause();
    }
    char ok = 0;
    CHECK(read(ready[0], &ok, 1) == 1 && ok == 'y');
    CHECK_INT_EQ(run_cmd("status job.yaml", &out), EXIT_OK);
    CHECK_HAS(out, "a run is going");
    CHECK_HAS(out, "3 done");
    CHECK_HAS(out, "still running");
    CHECK_INT_EQ(run_cmd("export job.yaml", &out), EXIT_OK);
    CHECK(out.len == 0 || out.buf[out.len - 1] == '\n');
    CHECK_INT_EQ(run_cmd("retry-failed job.yaml", &out), EXIT_LOCKED);
    CHECK_HAS(out, "locked by another run");
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    close(ready[0]);
    close(ready[1]);

    CHECK_INT_EQ(run_cmd("retry-failed job.yaml", &out), EXIT_OK);
    CHECK_HAS(out, "2 failed documents queued");
    CHECK_INT_EQ(run_cmd("status job.yaml", &out), EXIT_OK);
    CHECK_HAS(out, "documents: 5: 3 done, 2 pending, 0 failed");
    CHECK_HAS(out, "did not end cleanly");
    CHECK_HAS(out, "at the pace of run #1");
    CHECK_HAS(out, "did not end cleanly");
    sb_release(&out);
    sb_release(&want);
    return check_exit_clean("test_ledger_cmds", tmpdir);
}
