/*
 * cmd_run.c - `qwen3-batch run JOB.yaml`: the product.
 *
 *   job file -> ingest (every input, streamed) -> ledger (new documents as
 *   pending with their prompt ids; bad ones as failed) -> scheduler (pending
 *   documents, shortest first, through the engine) -> for each finished
 *   document: results line + ledger commit (output.h's protocol).
 *
 * A run may be killed at any moment: the ledger says what is done, the
 * results file is cut back to match it on the next start, and documents in
 * flight are simply pending again. Each document's sampling seed comes from
 * the job's seed and the document's key, so a resumed run writes the same
 * text an uninterrupted one would have.
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "chat.h"
#include "cli.h"
#include "cmd_util.h"
#include "engine.h"
#include "ingest.h"
#include "job.h"
#include "ledger.h"
#include "model.h"
#include "output.h"
#include "progress.h"
#include "scheduler.h"
#include "think.h"
#include "tok.h"
#ifdef HAVE_CUDA
#include "cuda_engine.h"
#endif

static volatile sig_atomic_t stop_flag;

static void on_signal(int sig)
{
    (void)sig;
    stop_flag = 1;
}

struct run {
    const job *j;
    tok *t;
    ledger *l;
    out *o;
    char config_hash[SHA256_HEX_SIZE];
    int64_t run_id;
    int max_context; /* prompt + completion per document */
    /* ingest totals */
    int64_t seen, added, skipped_known, failed_ingest, in_batch;
    /* scheduling */
    ledger_pending_iter *it;
    int64_t docs_total;         /* pending when scheduling began */
    int64_t docs_prompt_tokens; /* their prompt tokens (for the ETA) */
    int64_t docs_done, docs_failed, completion_tokens, prompt_tokens;
    double finish_seconds; /* decoding, splitting, results line + ledger commit */
    progress prog;
    errbuf *err;
};

/* One document's generation settings, stored with it in the ledger so a
 * resumed run needs nothing but the ledger. */
struct doc_settings {
    job_sampling s;
    enum job_mode mode;
};

static char *settings_json(const struct doc_settings *d)
{
    json_t *o = json_pack("{s:s, s:f, s:f, s:i, s:f, s:f, s:I, s:i}", "mode",
                          job_mode_name(d->mode), "temperature", d->s.temperature, "top_p",
                          d->s.top_p, "top_k", d->s.top_k, "min_p", d->s.min_p,
                          "presence_penalty", d->s.presence_penalty, "seed",
                          (json_int_t)d->s.seed, "max_new_tokens", d->s.max_new_tokens);
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return s;
}

static int settings_parse(const char *text, const job *j, struct doc_settings *d)
{
    d->s = j->sampling;
    d->mode = j->mode;
    if (!text)
        return 0;
    json_t *o = json_loads(text, 0, NULL);
    if (!o)
        return -1;
    const char *mode = json_string_value(json_object_get(o, "mode"));
    d->mode = mode && !strcmp(mode, "thinking") ? JOB_THINKING : JOB_NON_THINKING;
    d->s.temperature = json_number_value(json_object_get(o, "temperature"));
    d->s.top_p = json_number_value(json_object_get(o, "top_p"));
    d->s.top_k = (int)json_integer_value(json_object_get(o, "top_k"));
    d->s.min_p = json_number_value(json_object_get(o, "min_p"));
    d->s.presence_penalty = json_number_value(json_object_get(o, "presence_penalty"));
    d->s.seed = (uint64_t)json_integer_value(json_object_get(o, "seed"));
    d->s.max_new_tokens = (int)json_integer_value(json_object_get(o, "max_new_tokens"));
    json_decref(o);
    return 0;
}

/* Renders messages (JSON array) with the chat template and tokenizes. */
static int render_ids(struct run *r, json_t *msgs, int thinking, int32_t **ids, size_t *n,
                      errbuf *err)
{
    size_t k = json_array_size(msgs);
    chat_msg *m = calloc(k ? k : 1, sizeof *m);
    for (size_t i = 0; i < k; i++) {
        json_t *o = json_array_get(msgs, i);
        m[i].role = json_string_value(json_object_get(o, "role"));
        m[i].content = json_string_value(json_object_get(o, "content"));
    }
    strbuf text = STRBUF_INIT;
    int rc = chat_render(&text, m, (int)k, 1, thinking, err);
    if (!rc)
        rc = tok_encode(r->t, text.buf, text.len, ids, n, err);
    sb_release(&text);
    free(m);
    return rc;
}

/* Cuts a document's text until its prompt fits in limit tokens (too_long:
 * truncate). The cut is estimated from the token ratio and refined; it
 * always lands on a UTF-8 character boundary. */
static int truncate_doc(struct run *r, const ingest_doc *doc, int thinking, size_t limit,
                        int32_t **ids, size_t *n, errbuf *err)
{
    size_t len = doc->text_len;
    for (int tries = 0; tries < 12 && *n > limit; tries++) {
        size_t want = (size_t)((double)len * (double)limit / (double)*n * 0.97);
        if (want >= len)
            want = len ? len - 1 : 0;
        while (want > 0 && ((unsigned char)doc->text[want] & 0xc0) == 0x80)
            want--;
        len = want;
        char *cut = strndup(doc->text, len);
        ingest_doc d = *doc;
        d.text = cut;
        d.text_len = len;
        json_t *msgs = NULL;
        int rc = ingest_doc_messages(r->j, &d, &msgs, err);
        free(*ids);
        *ids = NULL;
        if (!rc)
            rc = render_ids(r, msgs, thinking, ids, n, err);
        json_decref(msgs);
        free(cut);
        if (rc)
            return -1;
    }
    return *n > limit ? errorf(err, "could not truncate the prompt to %zu tokens", limit) : 0;
}

static int flush_batch(struct run *r, errbuf *err)
{
    if (!r->in_batch)
        return 0;
    r->in_batch = 0;
    return ledger_commit(r->l, err) ? -1 : ledger_begin(r->l, err);
}

static int on_doc(const ingest_doc *doc, void *ctx)
{
    struct run *r = ctx;
    errbuf derr = {{0}};
    char key[SHA256_HEX_SIZE];
    json_t *msgs = NULL;
    r->seen++;
    int kr = ingest_doc_key(r->j, r->config_hash, doc, key, &msgs, &derr);
    int found = 0;
    if (ledger_has_key(r->l, key, &found, r->err))
        goto fail;
    if (found) { /* done, pending or failed before: nothing new */
        r->skipped_known++;
        json_decref(msgs);
        return 0;
    }
    if (kr == 1) {
        if (ledger_add_failed(r->l, key, doc->id, doc->source, derr.msg, r->err))
            goto fail;
        r->failed_ingest++;
    } else {
        struct doc_settings ds;
        ingest_doc_settings(r->j, doc, &ds.s, &ds.mode);
        int thinking = ds.mode == JOB_THINKING;
        int32_t *ids = NULL;
        size_t n = 0;
        const char *why = NULL;
        if (render_ids(r, msgs, thinking, &ids, &n, &derr))
            why = derr.msg;
        if (ds.s.max_new_tokens >= r->max_context)
            ds.s.max_new_tokens = r->max_context / 2;
        size_t limit = (size_t)(r->max_context - ds.s.max_new_tokens);
        char reason[512];
        if (!why && n > limit) {
            if (r->j->too_long == JOB_TOO_LONG_TRUNCATE && doc->text) {
                if (truncate_doc(r, doc, thinking, limit, &ids, &n, &derr))
                    why = derr.msg;
            } else {
                snprintf(reason, sizeof reason,
                         "%s: prompt has %zu tokens, more than max_context %d minus "
                         "max_new_tokens %d (too_long: %s)",
                         doc->source, n, r->max_context, ds.s.max_new_tokens,
                         r->j->too_long == JOB_TOO_LONG_SKIP ? "skip" : "fail");
                why = reason;
            }
        }
        int rc;
        if (why) {
            rc = ledger_add_failed(r->l, key, doc->id, doc->source, why, r->err);
            r->failed_ingest++;
        } else {
            char *params = settings_json(&ds);
            rc = ledger_add_pending_params(r->l, key, doc->id, doc->source, ids, (int)n, params,
                                           r->err);
            free(params);
            r->added++;
        }
        free(ids);
        if (rc)
            goto fail;
    }
    json_decref(msgs);
    if (++r->in_batch >= 256 && flush_batch(r, r->err))
        return -1;
    return 0;
fail:
    json_decref(msgs);
    return -1;
}

/* ---- scheduling callbacks ---- */

struct pending_user {
    char key[SHA256_HEX_SIZE];
    char *doc_id, *source;
    int32_t *ids;
    int thinking;
};

/* The first 64 bits of a document's key (hex), mixed into its seed. */
static uint64_t key_seed(const char *key)
{
    char head[17];
    snprintf(head, sizeof head, "%s", key);
    return strtoull(head, NULL, 16);
}

static int next_doc(void *ctx, sched_doc *d, errbuf *err)
{
    struct run *r = ctx;
    ledger_pending_doc p;
    int rc = ledger_pending_next(r->it, &p, err);
    if (rc <= 0)
        return rc;
    struct doc_settings ds;
    if (settings_parse(p.params, r->j, &ds))
        return errorf(err, "%s: stored settings are not valid JSON", p.key);
    struct pending_user *u = calloc(1, sizeof *u);
    snprintf(u->key, sizeof u->key, "%s", p.key);
    u->doc_id = strdup(p.doc_id);
    u->source = strdup(p.source);
    u->ids = malloc(sizeof *u->ids * (size_t)(p.n_ids ? p.n_ids : 1));
    memcpy(u->ids, p.ids, sizeof *u->ids * (size_t)p.n_ids);
    u->thinking = ds.mode == JOB_THINKING;
    memset(d, 0, sizeof *d);
    d->tokens = u->ids;
    d->n_tokens = p.n_ids;
    job_sample_params(&ds.s, &d->sp);
    /* Per-document stream: the job's seed mixed with the document's key. */
    d->sp.seed ^= key_seed(p.key);
    d->max_new_tokens = ds.s.max_new_tokens;
    if (d->max_new_tokens > r->max_context - p.n_ids)
        d->max_new_tokens = r->max_context - p.n_ids;
    if (d->max_new_tokens < 1)
        d->max_new_tokens = 1;
    d->user = u;
    return 1;
}

static void free_user(struct pending_user *u)
{
    free(u->doc_id);
    free(u->source);
    free(u->ids);
    free(u);
}

static int doc_done(void *ctx, const sched_doc *d, const sched_result *res, errbuf *err)
{
    struct run *r = ctx;
    struct pending_user *u = d->user;
    double t0 = sched_now();
    strbuf text = STRBUF_INIT;
    ledger_output o = {.run_id = r->run_id, .completion_tokens = res->n_ids, .prompt_tokens = d->n_tokens,
                       .seconds = res->seconds, .thinking_truncated = res->thinking_truncated};
    think_parts parts = {STRBUF_INIT, STRBUF_INIT, 0};
    int rc;
    if (res->finish == SCHED_ERROR) {
        o.finish_reason = "error";
        o.error = res->error;
        o.content = "";
        r->docs_failed++;
    } else {
        if (tok_decode(r->t, res->ids, (size_t)res->n_ids, &text, err)) {
            free_user(u);
            return -1;
        }
        think_split(text.buf ? text.buf : "", text.len, u->thinking, &parts);
        o.content = parts.content.buf ? parts.content.buf : "";
        o.reasoning = parts.reasoning.len ? parts.reasoning.buf : NULL;
        o.finish_reason = res->finish == SCHED_STOP ? "stop" : "length";
        r->completion_tokens += res->n_ids;
    }
    rc = out_finish_doc(r->o, u->key, u->doc_id, u->source, &o, err);
    if (!rc) {
        r->docs_done++;
        r->prompt_tokens += d->n_tokens;
    }
    think_parts_free(&parts);
    sb_release(&text);
    free_user(u);
    r->finish_seconds += sched_now() - t0;
    return rc;
}

static progress_counts run_progress(const struct run *r, const sched_stats *st)
{
    return (progress_counts){.docs_total = r->docs_total,
                             .docs_done = r->docs_done,
                             .docs_failed = r->docs_failed,
                             .prompt_tokens = st->prompt_tokens,
                             .generated_tokens = st->generated_tokens,
                             .active = st->active,
                             .elapsed = st->elapsed_seconds,
                             .prompt_tokens_total = r->docs_prompt_tokens,
                             .prompt_tokens_started = st->prompt_tokens + st->reused_tokens,
                             .completion_tokens_done = r->completion_tokens};
}

static void on_progress(void *ctx, const sched_stats *st)
{
    struct run *r = ctx;
    progress_counts c = run_progress(r, st);
    progress_update(&r->prog, &c, 0);
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: qwen3-batch run JOB.yaml [--backend auto|cpu|cuda] [--threads N]\n"
            "                             [--max-run-time DURATION] [--progress MODE]\n\n"
            "Runs a job: reads its inputs, records new documents in the job's ledger,\n"
            "generates every pending document (shortest first, continuous batching) and\n"
            "appends each result to the job's JSONL as it finishes. A killed run resumes\n"
            "where it stopped; re-running over the same inputs does no work.\n\n"
            "  --backend, --threads, --max-run-time, --progress  override the job's runtime\n"
            "  --synthetic-model qwen3-14b  benchmark only: random AWQ weights in Qwen3-14B\n"
            "                   shapes built on the GPU instead of the job's model (CUDA)\n"
            "\nexit codes: 0 all done; 1 error; 2 configuration error; 3 finished, some\n"
            "documents failed (see `qwen3-batch status`); 4 stopped by the time limit with\n"
            "work left; 5 another run holds the ledger; 6 interrupted (SIGINT/SIGTERM).\n");
}

int cmd_run(int argc, char **argv)
{
    static const struct option opts[] = {{"backend", required_argument, 0, 'b'},
                                         {"threads", required_argument, 0, 't'},
                                         {"max-run-time", required_argument, 0, 'T'},
                                         {"progress", required_argument, 0, 'p'},
                                         {"synthetic-model", required_argument, 0, 'S'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *backend = NULL, *max_time = NULL, *prog_mode = NULL, *synthetic = NULL;
    int threads = -1, c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'b': backend = optarg; break;
        case 't': threads = atoi(optarg); break;
        case 'T': max_time = optarg; break;
        case 'p': prog_mode = optarg; break;
        case 'S': synthetic = optarg; break;
        case 'h': usage(stdout); return EXIT_OK;
        default: usage(stderr); return EXIT_USAGE;
        }
    }
    if (optind != argc - 1) {
        usage(stderr);
        return EXIT_USAGE;
    }
    double t_start = sched_now();
    errbuf err = {{0}};
    job j;
    if (job_load(&j, argv[optind], &err))
        return cli_fail("run", EXIT_USAGE, "%s", err.msg);
    if (backend && cmdu_parse_backend("--backend", backend, &j.backend, &err)) {
        job_free(&j);
        return cli_fail("run", EXIT_USAGE, "%s", err.msg);
    }
    if (threads >= 0)
        j.threads = threads;
    if (max_time && job_parse_duration(max_time, &j.max_run_time, &err)) {
        job_free(&j);
        return cli_fail("run", EXIT_USAGE, "--max-run-time: %s", err.msg);
    }
    enum progress_mode pm = (enum progress_mode)j.progress;
    if (prog_mode) {
        pm = !strcmp(prog_mode, "bar") ? PROGRESS_BAR : !strcmp(prog_mode, "json") ? PROGRESS_JSON
             : !strcmp(prog_mode, "none") ? PROGRESS_NONE : PROGRESS_AUTO;
    }

    struct run r = {.j = &j, .err = &err};
    model m = {0};
    eng *e = NULL;
    int rc = EXIT_FAILURE_, code;
    int32_t *prefix = NULL, *early = NULL;
    size_t n_prefix = 0, n_early = 0;
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);

    if (ledger_open(&r.l, j.ledger_path, &err))
        goto out;
    code = ledger_lock(r.l, &err);
    if (code == LEDGER_LOCKED) {
        rc = EXIT_LOCKED;
        goto out;
    }
    if (code)
        goto out;
    if (ingest_check(&j, &err)) {
        rc = EXIT_USAGE;
        goto out;
    }
    if (tok_open(&r.t, j.tokenizer_dir, &err))
        goto out;
    if (synthetic) {
        /* Benchmark mode: no model files. The ledger key covers the job's
         * settings and the synthetic model's name. */
        if (strcmp(synthetic, "qwen3-14b")) {
            errorf(&err, "--synthetic-model: only qwen3-14b is known");
            rc = EXIT_USAGE;
            goto out;
        }
        model_config_qwen3_14b(&m.cfg);
        strbuf st = STRBUF_INIT;
        job_settings_text(&j, &st);
        sb_adds(&st, "\nmodel: synthetic qwen3-14b\n");
        sha256_hex(st.buf, st.len, r.config_hash);
        sb_release(&st);
    } else if (model_open(&m, j.model_dir, &err) || job_config_hash(&j, r.config_hash, &err)) {
        goto out;
    }
    r.max_context = j.max_context < m.cfg.max_position_embeddings ? j.max_context
                                                                  : m.cfg.max_position_embeddings;
    if (out_open(&r.o, j.jsonl_path, r.l, (enum out_format)j.output_format, j.include_reasoning,
                 NULL, &err))
        goto out;

    /* The engine sizes its KV cache itself: from the GPU memory budget, or
     * on the CPU from a host memory allowance. */
    eng_options eo = {.backend = j.backend, .n_threads = j.threads,
                      .gpu_memory_budget = j.gpu_memory, .kv_type = j.kv_cache,
                      .max_seqs = j.max_seqs > 0 ? j.max_seqs : 64,
                      .n_valid_vocab = tok_vocab_size(r.t)};
    if (synthetic) {
#ifdef HAVE_CUDA
        if (cuda_engine_open_synthetic(&e, &m.cfg, &eo, 1, &err))
            goto out;
#else
        errorf(&err, "--synthetic-model needs the CUDA backend, and this build has none");
        goto out;
#endif
    } else if (eng_open(&e, &m, &eo, &err)) {
        goto out;
    }
    if (ledger_run_begin(r.l, r.config_hash, e->backend_name, PACKAGE_VERSION, &r.run_id, &err))
        goto out;

    /* Ingest: new documents into the ledger, in batches of transactions. */
    if (ledger_begin(r.l, &err))
        goto out;
    r.in_batch = 1;
    int irc = ingest_run(&j, on_doc, &r, &err);
    if (irc == 0 && flush_batch(&r, &err) == 0)
        irc = ledger_commit(r.l, &err);
    else
        ledger_rollback(r.l, NULL);
    if (irc) {
        rc = irc == -1 && !r.seen ? EXIT_USAGE : EXIT_FAILURE_;
        goto out;
    }

    /* The shared prefix: system prompt and the template's text before its
     * first placeholder, rendered as the chat template renders it. */
    {
        /* The template renders the user turn as "...user\n" CONTENT
         * "<|im_end|>\n": render an empty one, drop its end, append the
         * template's literal head. */
        static const char turn_end[] = "<|im_end|>\n";
        chat_msg msgs[2] = {{"system", j.system}, {"user", ""}};
        int first = j.system ? 0 : 1;
        strbuf p = STRBUF_INIT;
        int prc = chat_render(&p, msgs + first, 2 - first, 0, 1, &err);
        if (!prc) {
            p.len -= strlen(turn_end); /* always ends the rendered user turn */
            sb_add(&p, j.user, job_user_prefix_len(&j));
            prc = tok_encode(r.t, p.buf, p.len, &prefix, &n_prefix, &err);
        }
        sb_release(&p);
        if (prc || tok_encode(r.t, THINK_EARLY_STOP, strlen(THINK_EARLY_STOP), &early, &n_early,
                              &err))
            goto out;
    }

    ledger_counts_t counts;
    if (ledger_counts(r.l, &counts, &err) || ledger_pending_open(r.l, &r.it, &err))
        goto out;
    r.docs_total = counts.pending;
    r.docs_prompt_tokens = counts.pending_prompt_tokens;
    progress_init(&r.prog, pm, stderr, 10.0);
    fprintf(stderr,
            "qwen3-batch run: %s: %lld documents read, %lld new, %lld failed at ingest, %lld "
            "pending; backend %s\n",
            j.path, (long long)r.seen, (long long)r.added, (long long)r.failed_ingest,
            (long long)counts.pending, e->backend_name);
    sched_options so = {
        .max_batch_tokens = (int)j.max_batch_tokens,
        .max_seqs = eo.max_seqs,
        .prefix = prefix,
        .n_prefix = counts.pending ? (int)n_prefix : 0, /* nothing to share it with */
        .eos = m.cfg.eos_ids,
        .n_eos = m.cfg.n_eos,
        .thinking_budget = j.mode == JOB_THINKING ? j.thinking_budget : 0,
        .think_close = tok_token_id(r.t, "</think>"),
        .early_stop = early,
        .n_early_stop = (int)n_early,
        .stop = &stop_flag,
        .deadline = j.max_run_time > 0 ? t_start + j.max_run_time : 0,
    };
    sched_source src = {.ctx = &r, .next = next_doc, .done = doc_done, .progress = on_progress};
    sched_stats st;
    double t_sched = sched_now();
    int srs = sched_run(e, &so, &src, &st, &err);
    progress_counts pc = run_progress(&r, &st);
    pc.active = 0;
    progress_update(&r.prog, &pc, 1);
    progress_end(&r.prog);
    if (srs < 0)
        goto out;
    if (ledger_counts(r.l, &counts, &err))
        goto out;
    rc = srs == SCHED_STOPPED ? EXIT_INTERRUPTED
         : srs == SCHED_DEADLINE ? EXIT_TIME_LIMIT
         : counts.failed ? EXIT_DOCS_FAILED : EXIT_OK;
    double wall = sched_now() - t_start;
    ledger_run_totals tot = {r.docs_done - r.docs_failed, r.docs_failed + r.failed_ingest,
                             r.prompt_tokens, r.completion_tokens, wall};
    ledger_run_end(r.l, r.run_id, &tot, rc, NULL);
    fprintf(stderr,
            "qwen3-batch run: %lld documents finished (%lld failed) in %.1f s: prompt %.0f "
            "tok/s, generated %.0f tok/s (engine busy %.0f%%); ledger: %lld done, %lld "
            "failed, %lld pending\n",
            (long long)r.docs_done, (long long)r.docs_failed, wall,
            st.elapsed_seconds > 0 ? st.prompt_tokens / st.elapsed_seconds : 0,
            st.elapsed_seconds > 0 ? st.generated_tokens / st.elapsed_seconds : 0,
            st.elapsed_seconds > 0 ? 100 * st.step_seconds / st.elapsed_seconds : 0,
            (long long)counts.done, (long long)counts.failed, (long long)counts.pending);
    printf("{\"event\":\"summary\",\"exit_code\":%d,\"docs_read\":%lld,\"docs_new\":%lld,"
           "\"docs_finished\":%lld,\"docs_failed\":%lld,\"failed_at_ingest\":%lld,"
           "\"prompt_tokens\":%lld,\"reused_prefix_tokens\":%lld,\"generated_tokens\":%lld,"
           "\"seconds\":%.3f,\"startup_ingest_seconds\":%.3f,\"engine_seconds\":%.3f,"
           "\"finish_seconds\":%.3f,\"prefill_steps\":%lld,\"prefill_step_seconds\":%.3f,"
           "\"prefill_decode_rows\":%lld,\"decode_steps\":%lld,\"decode_step_seconds\":%.3f,"
           "\"decode_rows\":%lld,\"ledger_done\":%lld,"
           "\"ledger_failed\":%lld,\"ledger_pending\":%lld}\n",
           rc, (long long)r.seen, (long long)r.added, (long long)r.docs_done,
           (long long)r.docs_failed, (long long)r.failed_ingest, (long long)st.prompt_tokens,
           (long long)st.reused_tokens, (long long)st.generated_tokens, wall, t_sched - t_start,
           st.step_seconds, r.finish_seconds, (long long)st.prefill_steps,
           st.prefill_step_seconds, (long long)st.prefill_decode_rows, (long long)st.decode_steps,
           st.decode_step_seconds, (long long)st.decode_rows,
           (long long)counts.done, (long long)counts.failed, (long long)counts.pending);
    fflush(stdout);
out:
    if (rc == EXIT_FAILURE_ || rc == EXIT_USAGE || rc == EXIT_LOCKED)
        cli_fail("run", rc, "%s", err.msg);
    if (r.it)
        ledger_pending_close(r.it);
    eng_close(e);
    out_close(r.o);
    ledger_close(r.l);
    model_close(&m);
    tok_close(r.t);
    free(prefix);
    free(early);
    job_free(&j);
    return rc;
}
