/*
 * cmd_retry_failed.c - `qwen3-batch retry-failed JOB.yaml`: queue the failed
 * documents again. Those that failed while generating go back to pending
 * with their prompt ids; those that failed at ingest (bad input: no prompt)
 * are removed from the ledger, so the next run reads them again and either
 * records the failure anew or, if the input was fixed, queues them.
 *
 * Takes the ledger's lock: it must not change states under a running job.
 */
#include "config.h"

#include <getopt.h>
#include <stdio.h>

#include "cli.h"
#include "job.h"
#include "ledger.h"

static int usage(FILE *f, int code)
{
    fprintf(f, "usage: qwen3-batch retry-failed JOB.yaml\n\n"
               "Marks the job's failed documents for another attempt by the next run.\n"
               "Documents that failed while generating are queued again as they are;\n"
               "documents that failed at ingest (malformed input) are forgotten, so the\n"
               "next run reads them again from the inputs.\n\n"
               "Exit status 5 when a run holds the ledger.\n");
    return code;
}

int cmd_retry_failed(int argc, char **argv)
{
    static const struct option opts[] = {{"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'h': return usage(stdout, EXIT_OK);
        default: return usage(stderr, EXIT_USAGE);
        }
    }
    if (optind != argc - 1)
        return usage(stderr, EXIT_USAGE);
    errbuf err = {{0}};
    job j;
    if (job_load(&j, argv[optind], &err) < 0)
        return cli_fail("retry-failed", EXIT_USAGE, "%s", err.msg);
    ledger *l = NULL;
    int code = EXIT_FAILURE_;
    int rc = ledger_open_existing(&l, j.ledger_path, &err);
    if (rc == LEDGER_MISSING) {
        printf("%s: no run yet, nothing to retry\n", j.path);
        code = EXIT_OK;
        goto done;
    }
    if (rc < 0) {
        cli_fail("retry-failed", EXIT_FAILURE_, "%s", err.msg);
        goto done;
    }
    rc = ledger_lock(l, &err);
    if (rc == LEDGER_LOCKED) {
        code = cli_fail("retry-failed", EXIT_LOCKED, "%s", err.msg);
        goto done;
    }
    int64_t n = 0;
    if (rc < 0 || ledger_retry_failed(l, &n, &err) < 0) {
        cli_fail("retry-failed", EXIT_FAILURE_, "%s", err.msg);
        goto done;
    }
    printf("%s: %lld failed document%s queued for the next run\n", j.path, (long long)n,
           n == 1 ? "" : "s");
    code = EXIT_OK;
done:
    ledger_close(l);
    job_free(&j);
    return code;
}
