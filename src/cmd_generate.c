/*
 * cmd_generate.c - `qwen3-batch generate`: one prompt through the engine,
 * for trying a model by hand and for end-to-end checks of sampling and
 * decoding (the batch runner drives the same engine through the scheduler).
 */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat.h"
#include "cli.h"
#include "cmd_util.h"
#include "engine.h"
#include "model.h"
#include "tok.h"

static void generate_usage(void)
{
    printf("usage: qwen3-batch generate --model DIR (--ids LIST | --prompt TEXT [--chat\n"
           "                            [--no-thinking]]) [options]\n\n"
           "Generates a continuation of one prompt and prints one line of JSON:\n"
           "  {\"ids\": [...], \"text\": \"...\", \"finish_reason\": \"stop\"|\"length\",\n"
           "   \"prompt_tokens\", \"completion_tokens\", \"seconds\", \"backend\"}\n"
           "ids and text are the completion without the end-of-sequence token; text is\n"
           "null when no tokenizer could be read (--ids with a folder without one).\n"
           "seconds is the time in the engine (prefill and decode, not loading).\n\n"
           "  --ids LIST            prompt token ids, comma separated\n"
           "  --prompt TEXT         prompt text, tokenized as is (no chat template)\n"
           "  --chat                render TEXT as a user message with the Qwen3 chat\n"
           "                        template and the generation prompt\n"
           "  --no-thinking         with --chat: the empty think block (thinking off)\n"
           "  --max-new-tokens N    most tokens to generate (default 64)\n"
           "  --temperature T       0 = greedy (default 0)\n"
           "  --top-k K             0 = off (default)\n"
           "  --top-p P             1 = off (default)\n"
           "  --min-p M             0 = off (default)\n"
           "  --presence-penalty X  subtracted once from each generated token's logit\n"
           "  --seed S              sampling seed (default 0)\n"
           "  --ignore-eos          do not stop at the model's end-of-sequence ids\n"
           "  --backend B           cpu, cuda or auto (default auto)\n"
           "  --threads N           CPU worker threads (default: all cores)\n"
           "  --tokenizer DIR       folder with tokenizer.json (default: the model folder)\n\n"
           "exit codes: 0 ok, 1 error (model, tokenizer, engine), 2 bad command line.\n");
}

/* Opens the tokenizer; required for --prompt or an explicit --tokenizer,
 * optional (text: null) for --ids from the model folder. */
static int open_tokenizer(tok **t, const char *tok_dir, const char *model_dir, int required,
                          errbuf *err)
{
    *t = NULL;
    if (tok_open(t, tok_dir ? tok_dir : model_dir, err) == 0)
        return 0;
    *t = NULL;
    return required ? -1 : 0;
}

static int prompt_ids(const tok *t, const char *prompt, int chat, int thinking, int32_t **ids,
                      int *n, errbuf *err)
{
    strbuf text = STRBUF_INIT;
    if (chat) {
        chat_msg msg = {"user", prompt};
        if (chat_render(&text, &msg, 1, 1, thinking, err)) {
            sb_release(&text);
            return error_prefix(err, "--chat");
        }
    } else {
        sb_adds(&text, prompt);
    }
    size_t n_ids = 0;
    int rc = tok_encode(t, text.buf ? text.buf : "", text.len, ids, &n_ids, err);
    sb_release(&text);
    if (rc)
        return error_prefix(err, "--prompt");
    if (n_ids == 0) {
        free(*ids);
        *ids = NULL;
        return errorf(err, "--prompt: the prompt has no tokens");
    }
    *n = (int)n_ids;
    return 0;
}

static int is_eos(const model_config *cfg, int32_t id)
{
    for (int i = 0; i < cfg->n_eos; i++)
        if (id == cfg->eos_ids[i])
            return 1;
    return 0;
}

int cmd_generate(int argc, char **argv)
{
    static const struct option opts[] = {{"model", required_argument, 0, 'm'},
                                         {"ids", required_argument, 0, 'i'},
                                         {"prompt", required_argument, 0, 'p'},
                                         {"chat", no_argument, 0, 'c'},
                                         {"no-thinking", no_argument, 0, 'n'},
                                         {"max-new-tokens", required_argument, 0, 'N'},
                                         {"temperature", required_argument, 0, 'T'},
                                         {"top-k", required_argument, 0, 'k'},
                                         {"top-p", required_argument, 0, 'P'},
                                         {"min-p", required_argument, 0, 'M'},
                                         {"presence-penalty", required_argument, 0, 'r'},
                                         {"seed", required_argument, 0, 's'},
                                         {"ignore-eos", no_argument, 0, 'e'},
                                         {"backend", required_argument, 0, 'b'},
                                         {"threads", required_argument, 0, 't'},
                                         {"tokenizer", required_argument, 0, 'z'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *dir = NULL, *ids_s = NULL, *prompt = NULL, *tok_dir = NULL;
    int chat = 0, thinking = 1, max_new = 64, ignore_eos = 0, c;
    sample_params sp;
    sample_params_greedy(&sp);
    eng_options eo = {.backend = ENG_BACKEND_AUTO};
    errbuf err = {{0}};
    long long v;
    int bad = 0;
    optind = 0;
    while (!bad && (c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'm':
            dir = optarg;
            break;
        case 'i':
            ids_s = optarg;
            break;
        case 'p':
            prompt = optarg;
            break;
        case 'c':
            chat = 1;
            break;
        case 'n':
            thinking = 0;
            break;
        case 'N':
            bad = cmdu_parse_int("--max-new-tokens", optarg, 1, 1 << 24, &v, &err);
            max_new = (int)v;
            break;
        case 'T':
            bad = cmdu_parse_float("--temperature", optarg, 0, 100, &sp.temperature, &err);
            break;
        case 'k':
            bad = cmdu_parse_int("--top-k", optarg, 0, INT32_MAX, &v, &err);
            sp.top_k = (int)v;
            break;
        case 'P':
            bad = cmdu_parse_float("--top-p", optarg, 0, 1, &sp.top_p, &err);
            break;
        case 'M':
            bad = cmdu_parse_float("--min-p", optarg, 0, 1, &sp.min_p, &err);
            break;
        case 'r':
            bad = cmdu_parse_float("--presence-penalty", optarg, -100, 100, &sp.presence_penalty,
                                   &err);
            break;
        case 's':
            bad = cmdu_parse_int("--seed", optarg, 0, INT64_MAX, &v, &err);
            sp.seed = (uint64_t)v;
            break;
        case 'e':
            ignore_eos = 1;
            break;
        case 't':
            bad = cmdu_parse_int("--threads", optarg, 1, 256, &v, &err);
            eo.n_threads = (int)v;
            break;
        case 'z':
            tok_dir = optarg;
            break;
        case 'b':
            bad = cmdu_parse_backend("--backend", optarg, &eo.backend, &err);
            break;
        case 'h':
            generate_usage();
            return EXIT_OK;
        default:
            return EXIT_USAGE;
        }
    }
    if (bad)
        return cli_fail("generate", EXIT_USAGE, "%s", err.msg);
    if (optind < argc)
        return cli_fail("generate", EXIT_USAGE, "unexpected argument '%s'", argv[optind]);
    if (!dir || (!ids_s == !prompt))
        return cli_fail("generate", EXIT_USAGE,
                        "--model and exactly one of --ids or --prompt are required");
    if (chat && !prompt)
        return cli_fail("generate", EXIT_USAGE, "--chat needs --prompt");
    if (!thinking && !chat)
        return cli_fail("generate", EXIT_USAGE, "--no-thinking needs --chat");

    tok *t;
    if (open_tokenizer(&t, tok_dir, dir, prompt || tok_dir, &err))
        return cli_fail("generate", EXIT_FAILURE_, "%s", err.msg);
    int32_t *ids = NULL;
    int n = 0;
    if (ids_s ? cmdu_parse_ids("--ids", ids_s, &ids, &n, &err)
              : prompt_ids(t, prompt, chat, thinking, &ids, &n, &err)) {
        tok_close(t);
        return cli_fail("generate", EXIT_USAGE, "%s", err.msg);
    }
    model m;
    if (model_open(&m, dir, &err)) {
        tok_close(t);
        free(ids);
        return cli_fail("generate", EXIT_FAILURE_, "%s", err.msg);
    }
    int rc = EXIT_FAILURE_, n_out = 0, seq;
    for (int i = 0; i < n; i++)
        if (ids[i] >= m.cfg.vocab_size) {
            errorf(&err, "--ids: entry %d: id %d is not below the model's vocab_size %d", i + 1,
                   (int)ids[i], m.cfg.vocab_size);
            rc = EXIT_USAGE;
            break;
        }
    eo.max_kv_tokens = (int64_t)n + max_new;
    eo.max_seqs = 1;
    eo.n_valid_vocab = t ? tok_vocab_size(t) : 0;
    int32_t *out = malloc(sizeof *out * (size_t)max_new);
    const char *finish = "length";
    eng *e = NULL;
    double t_prefill = 0, t_decode = 0;
    if (rc == EXIT_USAGE)
        goto out;
    if (!out) {
        errorf(&err, "out of memory");
        goto out;
    }
    if (eng_open(&e, &m, &eo, &err) || eng_seq_add(e, &sp, &seq, &err))
        goto out;

    /* Prefill in chunks the engine is sized for; the last one samples. */
    double t0 = cmdu_now();
    int chunk = e->opts.max_step_tokens > 0 ? e->opts.max_step_tokens : n;
    int32_t next = -1;
    for (int at = 0; at < n; at += chunk) {
        int len = n - at < chunk ? n - at : chunk;
        eng_item it = {.seq = seq, .tokens = ids + at, .n_tokens = len, .sample = at + len == n};
        if (eng_step(e, &it, 1, NULL, &next, &err))
            goto out;
    }
    t_prefill = cmdu_now() - t0;
    t0 = cmdu_now();
    for (;;) {
        if (!ignore_eos && is_eos(&m.cfg, next)) {
            finish = "stop";
            break;
        }
        out[n_out++] = next;
        if (n_out == max_new)
            break;
        eng_item it = {.seq = seq, .tokens = &out[n_out - 1], .n_tokens = 1, .sample = 1};
        if (eng_step(e, &it, 1, NULL, &next, &err))
            goto out;
    }
    t_decode = cmdu_now() - t0;

    json_t *res = json_object(), *arr = json_array();
    for (int i = 0; i < n_out; i++)
        json_array_append_new(arr, json_integer(out[i]));
    json_object_set_new(res, "ids", arr);
    json_t *text = json_null();
    if (t) {
        strbuf sb = STRBUF_INIT;
        int dec = tok_decode(t, out, (size_t)n_out, &sb, &err);
        text = dec ? NULL : json_stringn(sb.buf ? sb.buf : "", sb.len);
        sb_release(&sb);
        if (!text) {
            json_decref(res);
            if (!dec)
                errorf(&err, "the completion is not valid UTF-8 text");
            goto out;
        }
    }
    json_object_set_new(res, "text", text);
    json_object_set_new(res, "finish_reason", json_string(finish));
    json_object_set_new(res, "prompt_tokens", json_integer(n));
    json_object_set_new(res, "completion_tokens", json_integer(n_out));
    json_object_set_new(res, "seconds", json_real(t_prefill + t_decode));
    json_object_set_new(res, "backend", json_string(e->backend_name));
    if (cmdu_print_json(res, JSON_COMPACT, &err) == 0)
        rc = EXIT_OK;
out:
    if (rc)
        cli_fail("generate", rc, "%s", err.msg);
    eng_close(e);
    model_close(&m);
    tok_close(t);
    free(ids);
    free(out);
    return rc;
}
