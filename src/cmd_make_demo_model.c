/*
 * cmd_make_demo_model.c - `qwen3-batch make-demo-model DIR`: writes a small
 * random-weight Qwen3 model folder (see demo_model.h), then opens it with
 * the model loader so that a folder this command reports as written is one
 * the rest of the program accepts.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "demo_model.h"
#include "model.h"

static const char *NAME = "make-demo-model";

static void usage(FILE *f)
{
    fprintf(f, "usage: qwen3-batch make-demo-model DIR [--seed N] [--awq] [--size tiny|small]\n"
               "\n"
               "Writes a small Qwen3 model with random weights into DIR (created if\n"
               "missing): config.json, model.safetensors and the real Qwen3 tokenizer\n"
               "(tokenizer.json, tokenizer_config.json). It produces gibberish, quickly:\n"
               "for trying jobs and tests without downloading a real model.\n"
               "\n"
               "  --seed N     weights from seed N (default 1); a seed always gives the\n"
               "               same files\n"
               "  --awq        AWQ 4-bit weights (group 128, as Qwen3-*-AWQ) instead of bf16\n"
               "  --size S     tiny (default: hidden 128, 2 layers, tied embeddings) or\n"
               "               small (hidden 256, 4 layers, untied lm_head)\n"
               "\n"
               "exit codes: 0 written; 1 could not write; 2 bad command line.\n");
}

int cmd_make_demo_model(int argc, char **argv)
{
    demo_model_opts opts = {.seed = 1, .awq = 0, .size = DEMO_TINY};
    const char *dir = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return EXIT_OK;
        } else if (!strcmp(a, "--awq")) {
            opts.awq = 1;
        } else if (!strcmp(a, "--seed") || !strcmp(a, "--size")) {
            if (i + 1 >= argc)
                return cli_fail(NAME, EXIT_USAGE, "%s needs a value", a);
            const char *v = argv[++i];
            if (!strcmp(a, "--seed")) {
                char *end;
                errno = 0;
                unsigned long long s = strtoull(v, &end, 10);
                if (errno || end == v || *end || v[0] == '-')
                    return cli_fail(NAME, EXIT_USAGE, "--seed '%s': not a non-negative integer", v);
                opts.seed = s;
            } else if (!strcmp(v, "tiny")) {
                opts.size = DEMO_TINY;
            } else if (!strcmp(v, "small")) {
                opts.size = DEMO_SMALL;
            } else {
                return cli_fail(NAME, EXIT_USAGE, "--size '%s': expected tiny or small", v);
            }
        } else if (a[0] == '-' && a[1]) {
            return cli_fail(NAME, EXIT_USAGE, "unknown option '%s' (see --help)", a);
        } else if (dir) {
            return cli_fail(NAME, EXIT_USAGE, "one DIR only ('%s' and '%s')", dir, a);
        } else {
            dir = a;
        }
    }
    if (!dir) {
        usage(stderr);
        return EXIT_USAGE;
    }
    errbuf err;
    if (demo_model_write(dir, &opts, &err))
        return cli_fail(NAME, EXIT_FAILURE_, "%s", err.msg);
    model m;
    if (model_open(&m, dir, &err))
        return cli_fail(NAME, EXIT_FAILURE_, "wrote %s but cannot read it back: %s", dir, err.msg);
    const model_config *c = &m.cfg;
    printf("wrote %s: Qwen3 demo (%s, seed %llu), %s, vocab %d, hidden %d, %d layers, "
           "%d/%d heads of %d, intermediate %d, %s embeddings\n",
           dir, opts.size == DEMO_SMALL ? "small" : "tiny", (unsigned long long)opts.seed,
           c->is_awq ? "AWQ int4 group 128" : "bf16", c->vocab_size, c->hidden_size, c->n_layers,
           c->n_heads, c->n_kv_heads, c->head_dim, c->intermediate_size,
           c->tie_word_embeddings ? "tied" : "untied");
    model_close(&m);
    return EXIT_OK;
}
