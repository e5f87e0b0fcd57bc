/*
 * main.c - qwen3-batch: offline batch inference for Qwen3 models.
 *
 * Dispatches to the subcommands (src/cmd_*.c). Each subcommand handles its own
 * options and --help; this file only picks one.
 */
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"

static int cmd_help(int argc, char **argv);

static const struct cli_command commands[] = {
    /* CLI_COMMANDS: one line per command, in data-flow order. */
    {"run", cmd_run, "run a job: ingest, generate, write results (resumable)"},
    {"status", cmd_status, "where a job stands: documents, tokens, last run, ETA"},
    {"export", cmd_export, "finished documents from the ledger as JSONL or OpenAI batch output"},
    {"retry-failed", cmd_retry_failed, "queue a job's failed documents again"},
    {"make-demo-model", cmd_make_demo_model, "write a small random-weight Qwen3 (real tokenizer)"},
    {"tokenize", cmd_tokenize, "text on stdin -> JSON token ids"},
    {"detokenize", cmd_detokenize, "JSON token ids on stdin -> text"},
    {"render", cmd_render, "JSON chat messages on stdin -> Qwen3 prompt"},
    {"score", cmd_score, "logits of every position of a token list"},
    {"generate", cmd_generate, "generate from one prompt"},
    {"help", cmd_help, "this list"},
};

int cli_fail(const char *name, int code, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "qwen3-batch %s: ", name);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return code;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: qwen3-batch COMMAND [OPTIONS]   (qwen3-batch COMMAND --help)\n\n"
               "Offline batch inference for Qwen3 models.\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-16s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\nexit codes: 0 all done; 1 error; 2 usage or configuration error;\n"
               "  3 run finished with failed documents; 4 stopped by the time limit with\n"
               "  work left; 5 the ledger is locked by another run; 6 interrupted.\n"
               "\nversion %s%s\n",
            PACKAGE_VERSION,
#ifdef HAVE_CUDA
            " (CUDA backend built in)"
#else
            " (CPU-only build)"
#endif
    );
}

static int cmd_help(int argc, char **argv)
{
    (void)argc, (void)argv;
    usage(stdout);
    return EXIT_OK;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return EXIT_USAGE;
    }
    const char *name = argv[1];
    if (!strcmp(name, "--help") || !strcmp(name, "-h") || !strcmp(name, "help")) {
        usage(stdout);
        return EXIT_OK;
    }
    if (!strcmp(name, "--version")) {
        printf("qwen3-batch %s\n", PACKAGE_VERSION);
        return EXIT_OK;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(commands[i].name, name))
            return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "qwen3-batch: unknown command '%s'\n\n", name);
    usage(stderr);
    return EXIT_USAGE;
}
