/*
 * cmd_status.c - `qwen3-batch status JOB.yaml [--json]`: where a job stands,
 * read from its ledger: documents per state, tokens, the last run and its
 * throughput, the throughput over all runs of the configuration, and an
 * ETA for what is pending at the last run's pace.
 *
 * Read-only and lock-free (WAL readers see a consistent snapshot), so it
 * works from another terminal or a monitoring script while a run goes on.
 */
#include "config.h"

#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "cmd_util.h"
#include "job.h"
#include "ledger.h"
#include "progress.h"

#define FAILED_SHOWN 10

/* The ETA in seconds for the pending documents at the pace of the run that
 * finished the latest document (usually the last run), or -1 without one:
 * progress_eta, the same model as the run's own progress lines. */
static double eta_seconds(const ledger_counts_t *c)
{
    const ledger_run_info *p = &c->pace;
    if (!c->has_pace)
        return c->pending ? -1 : 0;
    return progress_eta(p->seconds, p->prompt_tokens + p->completion_tokens, p->docs_done,
                        p->completion_tokens, c->pending, c->pending_prompt_tokens, 0);
}

static void fmt_duration(double s, char *buf, size_t n)
{
    if (s < 0) {
        snprintf(buf, n, "unknown");
        return;
    }
    long t = (long)(s + 0.5);
    if (t < 60)
        snprintf(buf, n, "%lds", t);
    else if (t < 3600)
        snprintf(buf, n, "%ldm%02lds", t / 60, t % 60);
    else if (t < 86400)
        snprintf(buf, n, "%ldh%02ldm", t / 3600, t / 60 % 60);
    else
        snprintf(buf, n, "%ldd%02ldh", t / 86400, t / 3600 % 24);
}

static void fmt_time(int64_t unix_s, char *buf, size_t n)
{
    time_t t = (time_t)unix_s;
    struct tm tm;
    localtime_r(&t, &tm);
    strftime(buf, n, "%Y-%m-%d %H:%M:%S", &tm);
}

static int usage(FILE *f, int code)
{
    fprintf(f, "usage: qwen3-batch status JOB.yaml [--json]\n\n"
               "Shows where a job stands, from its ledger: documents pending, done and\n"
               "failed (with the first failures' reasons), prompt and completion tokens,\n"
               "the last run (when, where, whether it is still going, its throughput),\n"
               "the throughput over all runs of the job's configuration (a job resumed\n"
               "or spread over several nights), and an ETA for the pending documents\n"
               "at the last run's pace.\n"
               "Safe to run while a run is going. Says so when no run has written the\n"
               "ledger yet.\n\n"
               "  --json   one JSON object instead of text (for scripts)\n");
    return code;
}

int cmd_status(int argc, char **argv)
{
    static const struct option opts[] = {
        {"json", no_argument, 0, 'j'}, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    int as_json = 0, c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'j':
            as_json = 1;
            break;
        case 'h':
            return usage(stdout, EXIT_OK);
        default:
            return usage(stderr, EXIT_USAGE);
        }
    }
    if (optind != argc - 1)
        return usage(stderr, EXIT_USAGE);
    errbuf err = {{0}};
    job j;
    if (job_load(&j, argv[optind], &err) < 0)
        return cli_fail("status", EXIT_USAGE, "%s", err.msg);

    ledger *l = NULL;
    int rc = ledger_open_existing(&l, j.ledger_path, &err);
    if (rc == LEDGER_MISSING) {
        if (as_json) {
            json_t *o =
                json_pack("{s:s, s:n, s:s}", "job", j.path, "ledger", "message", "no run yet");
            rc = cmdu_print_json(o, JSON_COMPACT | JSON_PRESERVE_ORDER, &err);
        } else {
            printf("%s: no run yet (no ledger at %s)\n", j.path, j.ledger_path);
            rc = 0;
        }
        job_free(&j);
        return rc ? cli_fail("status", EXIT_FAILURE_, "%s", err.msg) : EXIT_OK;
    }
    ledger_counts_t cnt;
    if (rc < 0 || ledger_counts(l, &cnt, &err) < 0) {
        ledger_close(l);
        job_free(&j);
        return cli_fail("status", EXIT_FAILURE_, "%s", err.msg);
    }
    char holder[300];
    int running = ledger_lock_holder(j.ledger_path, holder, sizeof holder) == 1;
    double eta = eta_seconds(&cnt);
    double secs = cnt.run_doc_seconds;
    double docs_per_s = secs > 0 ? cnt.run_docs_done / secs : 0;
    double prompt_tok_s = secs > 0 ? cnt.run_prompt_tokens / secs : 0;
    double completion_tok_s = secs > 0 ? cnt.run_completion_tokens / secs : 0;
    /* The job's throughput over all its runs (resumes, nightly windows). */
    double all_secs = cnt.config_run_seconds;
    double all_docs_per_h = all_secs > 0 ? cnt.done / all_secs * 3600 : 0;
    double all_prompt_tok_s = all_secs > 0 ? cnt.done_prompt_tokens / all_secs : 0;
    double all_completion_tok_s = all_secs > 0 ? cnt.done_completion_tokens / all_secs : 0;

    int code = EXIT_OK;
    if (as_json) {
        json_t *o =
            json_pack("{s:s, s:s, s:b, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "job", j.path, "ledger",
                      j.ledger_path, "running", running, "pending", (json_int_t)cnt.pending, "done",
                      (json_int_t)cnt.done, "failed", (json_int_t)cnt.failed, "total",
                      (json_int_t)(cnt.pending + cnt.done + cnt.failed), "done_prompt_tokens",
                      (json_int_t)cnt.done_prompt_tokens, "done_completion_tokens",
                      (json_int_t)cnt.done_completion_tokens, "pending_prompt_tokens",
                      (json_int_t)cnt.pending_prompt_tokens);
        if (running)
            json_object_set_new(o, "holder", json_string(holder));
        json_object_set_new(o, "other_configs", json_integer(cnt.other_configs));
        if (cnt.has_run) {
            json_t *r = json_pack(
                "{s:I, s:I, s:s, s:I, s:s, s:s, s:I, s:I, s:I, s:I, s:f, s:f, s:f, s:f}", "id",
                (json_int_t)cnt.run_id, "started", (json_int_t)cnt.run_started, "host",
                cnt.run_host, "pid", (json_int_t)cnt.run_pid, "backend", cnt.run_backend, "version",
                cnt.run_version, "docs_done", (json_int_t)cnt.run_docs_done, "docs_failed",
                (json_int_t)cnt.run_docs_failed, "prompt_tokens", (json_int_t)cnt.run_prompt_tokens,
                "completion_tokens", (json_int_t)cnt.run_completion_tokens, "seconds", secs,
                "docs_per_s", docs_per_s, "prompt_tok_s", prompt_tok_s, "completion_tok_s",
                completion_tok_s);
            json_object_set_new(r, "ended",
                                cnt.run_ended ? json_integer(cnt.run_ended) : json_null());
            json_object_set_new(r, "exit_status",
                                cnt.run_ended ? json_integer(cnt.run_exit_status) : json_null());
            json_object_set_new(o, "last_run", r);
        } else {
            json_object_set_new(o, "last_run", json_null());
        }
        json_object_set_new(
            o, "all_runs",
            cnt.config_runs > 0
                ? json_pack("{s:I, s:f, s:f, s:f, s:f}", "runs", (json_int_t)cnt.config_runs,
                            "seconds", all_secs, "docs_per_hour", all_docs_per_h, "prompt_tok_s",
                            all_prompt_tok_s, "completion_tok_s", all_completion_tok_s)
                : json_null());
        json_object_set_new(o, "eta_s", eta >= 0 ? json_real(eta) : json_null());
        json_object_set_new(o, "eta_pace_run",
                            cnt.has_pace ? json_integer(cnt.pace.id) : json_null());
        if (cmdu_print_json(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6), &err))
            code = cli_fail("status", EXIT_FAILURE_, "%s", err.msg);
    } else {
        int64_t total = cnt.pending + cnt.done + cnt.failed;
        printf("job:       %s\nledger:    %s%s%s%s\n", j.path, j.ledger_path,
               running ? "  (a run is going: " : "", running ? holder : "", running ? ")" : "");
        printf("documents: %lld: %lld done, %lld pending, %lld failed\n", (long long)total,
               (long long)cnt.done, (long long)cnt.pending, (long long)cnt.failed);
        if (cnt.other_configs > 0)
            printf(
                "           (and %lld documents of earlier configurations of the job: kept in the\n"
                "           ledger, not counted, run or exported)\n",
                (long long)cnt.other_configs);
        printf("tokens:    done %lld prompt + %lld completion; pending %lld prompt\n",
               (long long)cnt.done_prompt_tokens, (long long)cnt.done_completion_tokens,
               (long long)cnt.pending_prompt_tokens);
        if (cnt.has_run) {
            char started[64], took[32];
            fmt_time(cnt.run_started, started, sizeof started);
            fmt_duration(secs, took, sizeof took);
            printf("last run:  #%lld started %s on %s (pid %lld), %s backend, version %s\n",
                   (long long)cnt.run_id, started, cnt.run_host, (long long)cnt.run_pid,
                   cnt.run_backend[0] ? cnt.run_backend : "?",
                   cnt.run_version[0] ? cnt.run_version : "?");
            if (cnt.run_ended) {
                char ended[64];
                fmt_time(cnt.run_ended, ended, sizeof ended);
                printf("           ended %s, exit status %d\n", ended, cnt.run_exit_status);
            } else {
                printf("           %s\n",
                       running ? "still running" : "did not end cleanly (killed or crashed)");
            }
            printf("           %lld done, %lld failed", (long long)cnt.run_docs_done,
                   (long long)cnt.run_docs_failed);
            if (secs > 0)
                printf(" in %s: %.3g docs/s, %.4g prompt tok/s, %.4g completion tok/s", took,
                       docs_per_s, prompt_tok_s, completion_tok_s);
            printf("\n");
        } else {
            printf("last run:  none recorded\n");
        }
        if (cnt.config_runs > 1) {
            char took[32];
            fmt_duration(all_secs, took, sizeof took);
            printf("all runs:  %lld runs of this configuration, %s in all",
                   (long long)cnt.config_runs, took);
            if (all_secs > 0)
                printf(": %.0f docs/hour, %.4g prompt tok/s, %.4g completion tok/s", all_docs_per_h,
                       all_prompt_tok_s, all_completion_tok_s);
            printf("\n");
        }
        if (cnt.pending > 0) {
            char eta_s[32];
            char pace[64];
            if (cnt.has_pace && cnt.pace.id != cnt.run_id)
                snprintf(pace, sizeof pace, " at the pace of run #%lld", (long long)cnt.pace.id);
            else
                snprintf(pace, sizeof pace, " at the last run's pace");
            fmt_duration(eta, eta_s, sizeof eta_s);
            printf("eta:       %s for %lld pending documents%s\n", eta_s, (long long)cnt.pending,
                   eta >= 0 ? pace : " (no run has finished a document yet)");
        }
        if (cnt.failed > 0) {
            ledger_docs_iter *it;
            ledger_doc d;
            if (ledger_docs_open(l, LEDGER_FAILED, &it, &err) == 0) {
                printf("failed:\n");
                int shown = 0;
                while (shown < FAILED_SHOWN && ledger_docs_next(it, &d, &err) == 1) {
                    printf("  %s (%s): %s\n", d.doc_id ? d.doc_id : "?", d.source ? d.source : "?",
                           d.error ? d.error : "?");
                    shown++;
                }
                if (cnt.failed > shown)
                    printf("  ... and %lld more\n", (long long)(cnt.failed - shown));
                printf("  (`qwen3-batch retry-failed %s` queues them again)\n", j.path);
                ledger_docs_close(it);
            }
        }
    }
    ledger_close(l);
    job_free(&j);
    return code;
}
