/*
 * cli.h - the subcommands of qwen3-batch and the exit codes they return.
 *
 * Each subcommand lives in its own src/cmd_*.c (after git's builtin/), takes
 * argc/argv with argv[0] the subcommand name, prints its own --help, and
 * returns one of the exit codes below. Only this layer prints errors.
 */
#ifndef Q3_CLI_H
#define Q3_CLI_H

/* Exit codes: cron scripts act on these (documented in --help and README). */
enum {
    EXIT_OK = 0,          /* all done */
    EXIT_FAILURE_ = 1,    /* an error stopped the command (I/O, model, ...) */
    EXIT_USAGE = 2,       /* bad command line or configuration (job file) */
    EXIT_DOCS_FAILED = 3, /* run finished, some documents failed */
    EXIT_TIME_LIMIT = 4,  /* stopped by the time limit with work left */
    EXIT_LOCKED = 5,      /* another run holds the ledger */
    EXIT_INTERRUPTED = 6, /* stopped by SIGINT/SIGTERM with work left */
};

typedef int (*cli_fn)(int argc, char **argv);

struct cli_command {
    const char *name;
    cli_fn fn;
    const char *summary;
};

/* Prints "qwen3-batch NAME: msg" to stderr; returns code. */
int cli_fail(const char *name, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

int cmd_tokenize(int argc, char **argv);
int cmd_detokenize(int argc, char **argv);
int cmd_render(int argc, char **argv);
int cmd_score(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_make_demo_model(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_status(int argc, char **argv);
int cmd_export(int argc, char **argv);
int cmd_retry_failed(int argc, char **argv);
int cmd_bench(int argc, char **argv);

#endif
