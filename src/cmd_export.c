/*
 * cmd_export.c - `qwen3-batch export JOB.yaml [--format F] [-o FILE]`: every
 * done document from the ledger, in finish order, as results JSONL or as an
 * OpenAI Batch API output file. The same records the run writes (out_render),
 * so exporting the job's own format reproduces its results file byte for byte.
 *
 * Read-only and lock-free: works while a run goes on (it exports the
 * documents committed so far). -o writes "FILE.tmp" and renames it, so FILE
 * is never seen half-written.
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "job.h"
#include "ledger.h"
#include "output.h"
#include "strbuf.h"

static int usage(FILE *f, int code)
{
    fprintf(f,
            "usage: qwen3-batch export JOB.yaml [--format jsonl|openai-batch] [-o FILE]\n"
            "                          [--reasoning | --no-reasoning]\n\n"
            "Writes every finished document of the job, from its ledger, in the order\n"
            "they finished, to FILE (default: standard output). Failed documents are\n"
            "not exported (see `qwen3-batch status`).\n\n"
            "  --format F      jsonl (the results file's records) or openai-batch (OpenAI\n"
            "                  Batch API output lines); default: the job's output.format\n"
            "  -o, --output F  write to F (atomically, through F.tmp)\n"
            "  --reasoning     include the thinking text (reasoning_content); default:\n"
            "  --no-reasoning  the job's output.include_reasoning\n\n"
            "Safe to run while a run is going: it exports what is committed so far.\n");
    return code;
}

int cmd_export(int argc, char **argv)
{
    static const struct option opts[] = {{"format", required_argument, 0, 'f'},
                                         {"output", required_argument, 0, 'o'},
                                         {"reasoning", no_argument, 0, 'r'},
                                         {"no-reasoning", no_argument, 0, 'R'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *format_s = NULL, *out_path = NULL;
    int reasoning = -1, c;
    while ((c = getopt_long(argc, argv, "ho:", opts, NULL)) != -1) {
        switch (c) {
        case 'f': format_s = optarg; break;
        case 'o': out_path = optarg; break;
        case 'r': reasoning = 1; break;
        case 'R': reasoning = 0; break;
        case 'h': return usage(stdout, EXIT_OK);
        default: return usage(stderr, EXIT_USAGE);
        }
    }
    if (optind != argc - 1)
        return usage(stderr, EXIT_USAGE);
    enum out_format format = OUT_JSONL;
    if (format_s && !strcmp(format_s, "jsonl"))
        format = OUT_JSONL;
    else if (format_s && !strcmp(format_s, "openai-batch"))
        format = OUT_OPENAI_BATCH;
    else if (format_s)
        return cli_fail("export", EXIT_USAGE, "--format must be jsonl or openai-batch, not '%s'",
                        format_s);

    errbuf err = {{0}};
    job j;
    if (job_load(&j, argv[optind], &err) < 0)
        return cli_fail("export", EXIT_USAGE, "%s", err.msg);
    if (!format_s)
        format = j.output_format == JOB_OUTPUT_OPENAI_BATCH ? OUT_OPENAI_BATCH : OUT_JSONL;
    if (reasoning < 0)
        reasoning = j.include_reasoning;

    int code = EXIT_FAILURE_;
    ledger *l = NULL;
    FILE *f = stdout;
    strbuf tmp = STRBUF_INIT;
    char *real_out = NULL, *real_results = NULL;
    int rc = ledger_open_existing(&l, j.ledger_path, &err);
    if (rc < 0) {
        cli_fail("export", EXIT_FAILURE_, "%s", err.msg);
        goto done;
    }
    if (out_path) {
        /* The run owns its results file and rebuilds it itself (out_open);
         * writing it from here could race with a run appending to it. */
        real_out = realpath(out_path, NULL);
        real_results = realpath(j.jsonl_path, NULL);
        if (real_out && real_results && !strcmp(real_out, real_results)) {
            cli_fail("export", EXIT_USAGE,
                     "%s is the job's results file, which `run` keeps in step with the ledger "
                     "(and rebuilds when it is missing); export to another file",
                     out_path);
            code = EXIT_USAGE;
            goto done;
        }
        sb_addf(&tmp, "%s.tmp", out_path);
        f = fopen(tmp.buf, "we");
        if (!f) {
            cli_fail("export", EXIT_FAILURE_, "%s: cannot create: %s", tmp.buf, strerror(errno));
            goto done;
        }
    }
    int64_t n_docs = 0;
    rc = out_export(l, f, format, reasoning, &n_docs, &err);
    if (f != stdout) {
        if (fflush(f) != 0 || fsync(fileno(f)) != 0)
            rc = rc < 0 ? rc : errorf(&err, "%s: %s", tmp.buf, strerror(errno));
        if (fclose(f) != 0 && rc == 0)
            rc = errorf(&err, "%s: %s", tmp.buf, strerror(errno));
        f = NULL;
        if (rc == 0 && rename(tmp.buf, out_path) < 0)
            rc = errorf(&err, "%s: cannot rename to %s: %s", tmp.buf, out_path, strerror(errno));
        if (rc < 0)
            unlink(tmp.buf);
    } else if (fflush(stdout) != 0 && rc == 0) {
        rc = errorf(&err, "standard output: %s", strerror(errno));
    }
    if (rc < 0) {
        cli_fail("export", EXIT_FAILURE_, "%s", err.msg);
        goto done;
    }
    if (out_path)
        fprintf(stderr, "qwen3-batch export: %lld documents to %s\n", (long long)n_docs,
                out_path);
    code = EXIT_OK;
done:
    free(real_out);
    free(real_results);
    sb_release(&tmp);
    ledger_close(l);
    job_free(&j);
    return code;
}
