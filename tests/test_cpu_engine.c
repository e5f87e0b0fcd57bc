/*
 * test_cpu_engine.c - the CPU engine under continuous batching, and its
 * error contract.
 *
 * Each of several sequences (different prompt lengths and sampling
 * settings: greedy, temperature, top-k/top-p, min-p, presence penalty) is
 * first run alone: prompt, then decode, recording the logits and the token
 * of every step. Then all run together as a batch runner would drive them:
 * sequences join at different steps, prompts arrive in chunks of varying
 * sizes next to other sequences' decode tokens, items come in varying
 * order, sequences leave when done while others go on, one sequence is a
 * fork of another's prompt prefix, and the thread count differs. Every
 * logits row must match the lone run within 1e-5 and every token be equal.
 *
 * Then the errors: bad items, a full KV cache (refused without harm to the
 * sequences), slots, forks, KV accounting, n_valid_vocab, backend choice.
 */
#include "config.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "engine.h"
#include "model.h"

static const char *srcdir(void)
{
    return getenv("top_srcdir") ? getenv("top_srcdir") : ".";
}

enum { N_SEQ = 6, MAX_PROMPT = 48, MAX_GEN = 12 };

struct plan {
    int prompt_len;
    int n_gen;      /* tokens to generate */
    int join_step;  /* first step it appears in (batched run) */
    int fork_of;    /* -1, or the sequence whose prompt prefix it forks */
    int fork_len;   /* shared prefix length */
    int all_logits; /* prompt chunks ask for ENG_LOGITS_ALL */
    sample_params sp;
};

static struct plan plans[N_SEQ];
static int32_t prompts[N_SEQ][MAX_PROMPT];

/* What a lone run produced. */
struct trace {
    float *prompt_logits; /* [prompt_len][V] when all_logits */
    float *logits;        /* [n_gen][V]: before each generated token */
    int32_t tokens[MAX_GEN];
};

static void make_plans(int V)
{
    const struct plan p[N_SEQ] = {
        {1, 9, 0, -1, 0, 0, {.temperature = 0, .top_p = 1}},
        {23, 5, 0, -1, 0, 1, {.temperature = 0.8f, .top_p = 1, .seed = 11}},
        {40,
         12,
         1,
         -1,
         0,
         0,
         {.temperature = 1.0f, .top_k = 50, .top_p = 0.9f, .presence_penalty = 0.7f, .seed = 12}},
        {7, 8, 3, -1, 0, 0, {.temperature = 0.7f, .top_p = 1, .min_p = 0.1f, .seed = 13}},
        {31, 10, 5, 2, 17, 0, {.temperature = 0, .top_p = 1, .presence_penalty = 1.5f}},
        {12, 6, 9, -1, 0, 1, {.temperature = 1.3f, .top_k = 5, .top_p = 1, .seed = 14}},
    };
    memcpy(plans, p, sizeof plans);
    for (int i = 0; i < N_SEQ; i++)
        for (int t = 0; t < MAX_PROMPT; t++)
            prompts[i][t] = (int32_t)((i * 211 + t * 37 + (t * t) % 13 + 5) % V);
    /* The fork shares its source's prompt prefix. */
    for (int i = 0; i < N_SEQ; i++)
        if (plans[i].fork_of >= 0)
            memcpy(prompts[i], prompts[plans[i].fork_of], sizeof(int32_t) * plans[i].fork_len);
}

static eng *open_engine(const model *m, int threads, int64_t kv, errbuf *err)
{
    eng_options o = {
        .backend = ENG_BACKEND_CPU, .n_threads = threads, .max_seqs = 8, .max_kv_tokens = kv};
    eng *e = NULL;
    if (eng_open(&e, m, &o, err))
        return NULL;
    return e;
}

static void run_alone(const model *m, int i, struct trace *tr)
{
    int V = m->cfg.vocab_size;
    const struct plan *p = &plans[i];
    errbuf err = {{0}};
    eng *e = open_engine(m, 1, 4096, &err);
    CHECK_MSG(e != NULL, "%s", err.msg);
    if (!e)
        return;
    int seq;
    CHECK(eng_seq_add(e, &p->sp, &seq, &err) == 0);
    tr->logits = calloc((size_t)p->n_gen * V, sizeof(float));
    tr->prompt_logits = p->all_logits ? calloc((size_t)p->prompt_len * V, sizeof(float)) : NULL;
    /* The whole prompt in one step: logits of every position, or the last. */
    eng_item it = {.seq = seq,
                   .tokens = prompts[i],
                   .n_tokens = p->prompt_len,
                   .logits = p->all_logits ? ENG_LOGITS_ALL : ENG_LOGITS_LAST,
                   .sample = 1};
    float *dst = p->all_logits ? tr->prompt_logits : tr->logits;
    CHECK_MSG(eng_step(e, &it, 1, dst, &tr->tokens[0], &err) == 0, "%s", err.msg);
    if (p->all_logits)
        memcpy(tr->logits, tr->prompt_logits + (size_t)(p->prompt_len - 1) * V, sizeof(float) * V);
    for (int g = 1; g < p->n_gen; g++) {
        it = (eng_item){.seq = seq,
                        .tokens = &tr->tokens[g - 1],
                        .n_tokens = 1,
                        .logits = ENG_LOGITS_LAST,
                        .sample = 1};
        CHECK(eng_step(e, &it, 1, tr->logits + (size_t)g * V, &tr->tokens[g], &err) == 0);
    }
    eng_close(e);

    /* The engine's draws are sample_token over the raw logits it returned,
     * with the sequence's own history and the count of draws before. */
    sample_scratch sc;
    float *row = malloc(sizeof *row * (size_t)V);
    CHECK(sample_scratch_init(&sc, V) == 0);
    for (int g = 0; g < p->n_gen; g++) {
        memcpy(row, tr->logits + (size_t)g * V, sizeof *row * (size_t)V);
        int32_t want = sample_token(&p->sp, row, V, tr->tokens, g, (uint64_t)g, &sc);
        CHECK_MSG(tr->tokens[g] == want, "sequence %d draw %d: engine %d, sample_token %d", i, g,
                  tr->tokens[g], want);
    }
    sample_scratch_free(&sc);
    free(row);
}

static double max_diff(const float *a, const float *b, size_t n)
{
    double d = 0;
    for (size_t i = 0; i < n; i++)
        d = fmax(d, fabs((double)a[i] - b[i]));
    return d;
}

/* The batched run's view of one sequence. */
struct live {
    int seq;    /* engine slot, -1 before joining */
    int fed;    /* prompt tokens fed */
    int n_done; /* tokens generated */
    int done;
    int32_t tokens[MAX_GEN];
};

static void check_batched(const model *m, struct trace *alone)
{
    int V = m->cfg.vocab_size;
    errbuf err = {{0}};
    eng *e = open_engine(m, 3, 4096, &err);
    CHECK_MSG(e != NULL, "%s", err.msg);
    if (!e)
        return;
    struct live lv[N_SEQ];
    for (int i = 0; i < N_SEQ; i++)
        lv[i] = (struct live){.seq = -1};
    float *logits = malloc(sizeof(float) * (size_t)V * (N_SEQ * MAX_PROMPT + N_SEQ));
    double worst = 0;
    int token_mismatch = 0, joined_mid_decode = 0, left_while_others_run = 0, mixed_steps = 0;
    for (int step = 0; step < 200; step++) {
        eng_item items[N_SEQ];
        int who[N_SEQ], n_items = 0, n_prefill = 0, n_decode = 0;
        /* Joins: a new sequence, or a fork of a running one's prefix. */
        for (int i = 0; i < N_SEQ; i++) {
            const struct plan *p = &plans[i];
            if (lv[i].seq >= 0 || lv[i].done || step < p->join_step)
                continue;
            if (p->fork_of >= 0) {
                struct live *src = &lv[p->fork_of];
                if (src->seq < 0 || src->done || src->fed < p->fork_len)
                    continue; /* wait until the prefix is in the source's cache */
                CHECK_MSG(eng_seq_fork(e, src->seq, p->fork_len, &p->sp, &lv[i].seq, &err) == 0,
                          "%s", err.msg);
                lv[i].fed = p->fork_len;
            } else {
                CHECK_MSG(eng_seq_add(e, &p->sp, &lv[i].seq, &err) == 0, "%s", err.msg);
            }
            for (int k = 0; k < N_SEQ; k++)
                joined_mid_decode += k != i && lv[k].seq >= 0 && lv[k].n_done > 0;
        }
        /* Items, in an order that changes from step to step. */
        for (int j = 0; j < N_SEQ; j++) {
            int i = step % 2 ? N_SEQ - 1 - j : (j + step) % N_SEQ;
            struct live *l = &lv[i];
            const struct plan *p = &plans[i];
            if (l->seq < 0 || l->done)
                continue;
            eng_item *it = &items[n_items];
            if (l->fed < p->prompt_len) {
                int chunk = 1 + (step * 7 + i * 3) % 9;
                if (chunk > p->prompt_len - l->fed)
                    chunk = p->prompt_len - l->fed;
                int last = l->fed + chunk == p->prompt_len;
                *it = (eng_item){.seq = l->seq,
                                 .tokens = prompts[i] + l->fed,
                                 .n_tokens = chunk,
                                 .logits = p->all_logits ? ENG_LOGITS_ALL
                                           : last        ? ENG_LOGITS_LAST
                                                         : ENG_LOGITS_NONE,
                                 .sample = last};
                n_prefill++;
            } else {
                *it = (eng_item){.seq = l->seq,
                                 .tokens = &l->tokens[l->n_done - 1],
                                 .n_tokens = 1,
                                 .logits = ENG_LOGITS_LAST,
                                 .sample = 1};
                n_decode++;
            }
            who[n_items++] = i;
        }
        if (!n_items) {
            int all_done = 1;
            for (int i = 0; i < N_SEQ; i++)
                all_done &= lv[i].done;
            if (all_done)
                break;
            continue;
        }
        mixed_steps += n_prefill && n_decode;
        int32_t sampled[N_SEQ];
        CHECK_MSG(eng_step(e, items, n_items, logits, sampled, &err) == 0, "step %d: %s", step,
                  err.msg);
        /* Check each item's rows and token against the lone run. */
        size_t row = 0;
        int k = 0;
        for (int j = 0; j < n_items; j++) {
            int i = who[j];
            struct live *l = &lv[i];
            const struct plan *p = &plans[i];
            const eng_item *it = &items[j];
            const float *last_row = NULL;
            if (it->logits == ENG_LOGITS_ALL) {
                worst = fmax(worst,
                             max_diff(logits + row * V, alone[i].prompt_logits + (size_t)l->fed * V,
                                      (size_t)it->n_tokens * V));
                row += (size_t)it->n_tokens;
                last_row = logits + (row - 1) * V;
            } else if (it->logits == ENG_LOGITS_LAST) {
                last_row = logits + row++ * V;
            }
            if (l->fed < p->prompt_len)
                l->fed += it->n_tokens;
            if (!it->sample)
                continue;
            if (last_row)
                worst = fmax(
                    worst, max_diff(last_row, alone[i].logits + (size_t)l->n_done * V, (size_t)V));
            int32_t tok = sampled[k++];
            if (tok != alone[i].tokens[l->n_done]) {
                token_mismatch++;
                fprintf(stderr, "sequence %d token %d: %d batched, %d alone\n", i, l->n_done, tok,
                        alone[i].tokens[l->n_done]);
            }
            l->tokens[l->n_done++] = tok;
            if (l->n_done == p->n_gen) {
                eng_seq_release(e, l->seq);
                l->done = 1;
                for (int o = 0; o < N_SEQ; o++)
                    left_while_others_run += o != i && lv[o].seq >= 0 && !lv[o].done;
            }
        }
    }
    for (int i = 0; i < N_SEQ; i++)
        CHECK_MSG(lv[i].done, "sequence %d did not finish", i);
    printf("batched vs alone: max logit difference %.3g, %d token mismatches\n", worst,
           token_mismatch);
    CHECK_MSG(worst <= 1e-5, "batched logits differ from the lone run by %g", worst);
    CHECK_INT_EQ(token_mismatch, 0);
    /* The schedule really exercised what it claims to. */
    CHECK(joined_mid_decode > 0);
    CHECK(left_while_others_run > 0);
    CHECK(mixed_steps > 0);
    CHECK_INT_EQ(eng_kv_free_tokens(e), 4096); /* everything released */
    free(logits);
    eng_close(e);
}

/* Non-greedy sequences really sampled (else the test would prove little). */
static void check_plans_sample(struct trace *alone)
{
    int varied = 0;
    for (int i = 0; i < N_SEQ; i++)
        for (int g = 1; g < plans[i].n_gen; g++)
            varied += alone[i].tokens[g] != alone[i].tokens[0];
    CHECK(varied > 0);
}

static void check_errors(const model *m)
{
    int V = m->cfg.vocab_size;
    errbuf err = {{0}};
    eng *e = open_engine(m, 2, 64, &err);
    CHECK_MSG(e != NULL, "%s", err.msg);
    if (!e)
        return;
    CHECK_STR_EQ(e->backend_name, "cpu");
    CHECK_INT_EQ(eng_kv_free_tokens(e), 64);
    sample_params sp;
    sample_params_greedy(&sp);
    int a, b, f;
    CHECK(eng_seq_add(e, &sp, &a, &err) == 0);
    CHECK(eng_seq_add(e, &sp, &b, &err) == 0);
    CHECK(a != b);
    int32_t toks[40];
    for (int i = 0; i < 40; i++)
        toks[i] = (int32_t)((i * 31 + 3) % V);
    float *row = malloc(sizeof(float) * (size_t)V * 2), *again = malloc(sizeof(float) * V);

    eng_item it = {.seq = a, .tokens = toks, .n_tokens = 20, .logits = ENG_LOGITS_LAST};
    CHECK(eng_step(e, &it, 1, row, NULL, &err) == 0);
    CHECK_INT_EQ(eng_kv_free_tokens(e), 44);

    /* Bad items are refused and change nothing. */
    eng_item dup[2] = {{.seq = b, .tokens = toks, .n_tokens = 1},
                       {.seq = b, .tokens = toks, .n_tokens = 1}};
    CHECK(eng_step(e, dup, 2, NULL, NULL, &err) < 0);
    CHECK_MSG(strstr(err.msg, "twice") != NULL, "%s", err.msg);
    int32_t bad_id = V;
    eng_item bad = {.seq = b, .tokens = &bad_id, .n_tokens = 1};
    CHECK(eng_step(e, &bad, 1, NULL, NULL, &err) < 0);
    CHECK_MSG(strstr(err.msg, "out of range") != NULL, "%s", err.msg);
    bad = (eng_item){.seq = 7, .tokens = toks, .n_tokens = 1};
    CHECK(eng_step(e, &bad, 1, NULL, NULL, &err) < 0);
    bad = (eng_item){.seq = b, .tokens = toks, .n_tokens = 0};
    CHECK(eng_step(e, &bad, 1, NULL, NULL, &err) < 0);
    bad = (eng_item){.seq = b, .tokens = toks, .n_tokens = 1, .logits = ENG_LOGITS_LAST};
    CHECK(eng_step(e, &bad, 1, NULL, NULL, &err) < 0);
    CHECK_MSG(strstr(err.msg, "logits") != NULL, "%s", err.msg);

    /* A full cache: 45 more tokens do not fit in 44; refused whole, even the
     * item that would fit, and the sequences go on as if it never came. */
    eng_item full[2] = {{.seq = b, .tokens = toks, .n_tokens = 5},
                        {.seq = a, .tokens = toks, .n_tokens = 40}};
    CHECK(eng_step(e, full, 2, NULL, NULL, &err) < 0);
    CHECK_MSG(strstr(err.msg, "KV cache full") != NULL, "%s", err.msg);
    CHECK_INT_EQ(eng_kv_free_tokens(e), 44);
    it = (eng_item){.seq = a, .tokens = toks + 20, .n_tokens = 1, .logits = ENG_LOGITS_LAST};
    CHECK(eng_step(e, &it, 1, row, NULL, &err) == 0);

    /* Forks: the prefix is copied; the source may go; bad requests fail. */
    CHECK(eng_seq_fork(e, a, 22, &sp, &f, &err) < 0); /* a holds 21 */
    CHECK(eng_seq_fork(e, b, 1, &sp, &f, &err) < 0);  /* b holds none */
    CHECK(eng_seq_fork(e, a, 20, &sp, &f, &err) == 0);
    CHECK_INT_EQ(eng_kv_free_tokens(e), 64 - 21 - 20);
    eng_seq_release(e, a);
    CHECK_INT_EQ(eng_kv_free_tokens(e), 64 - 20);
    it = (eng_item){.seq = f, .tokens = toks + 20, .n_tokens = 1, .logits = ENG_LOGITS_LAST};
    CHECK(eng_step(e, &it, 1, again, NULL, &err) == 0);
    CHECK_MSG(!memcmp(row, again, sizeof(float) * V), "the fork's logits differ from its source's");
    eng_seq_release(e, f);
    eng_seq_release(e, f); /* twice is harmless */
    eng_seq_release(e, b);
    CHECK_INT_EQ(eng_kv_free_tokens(e), 64);

    /* Returned logits are raw: a presence penalty only affects the draw. */
    sample_params pen = {.temperature = 0, .top_p = 1, .presence_penalty = 50};
    CHECK(eng_seq_add(e, &pen, &a, &err) == 0);
    CHECK(eng_seq_add(e, &sp, &b, &err) == 0);
    int32_t drawn[2], history[6];
    int penalized = 0;
    for (int g = 0; g < 6; g++) {
        /* The same input token each step, so the raw favourite repeats. */
        eng_item two[2] = {
            {.seq = a, .tokens = toks, .n_tokens = 1, .logits = ENG_LOGITS_LAST, .sample = 1},
            {.seq = b, .tokens = toks, .n_tokens = 1, .logits = ENG_LOGITS_LAST, .sample = 1}};
        CHECK(eng_step(e, two, 2, row, drawn, &err) == 0);
        CHECK_MSG(!memcmp(row, row + V, sizeof(float) * V),
                  "step %d: the penalized sequence's returned logits are not raw", g);
        int seen = 0;
        for (int h = 0; h < g; h++)
            seen |= history[h] == drawn[1];
        if (seen) {
            CHECK_MSG(drawn[0] != drawn[1], "step %d: a penalty of 50 did not avoid token %d", g,
                      drawn[1]);
            penalized++;
        }
        history[g] = drawn[0];
    }
    CHECK_MSG(penalized > 0, "the penalty never came into play");
    eng_seq_release(e, a);
    eng_seq_release(e, b);

    /* Slots: max_seqs alive at once. */
    int s[8], extra;
    for (int i = 0; i < 8; i++)
        CHECK(eng_seq_add(e, &sp, &s[i], &err) == 0);
    CHECK(eng_seq_add(e, &sp, &extra, &err) < 0);
    CHECK_MSG(strstr(err.msg, "in use") != NULL, "%s", err.msg);
    for (int i = 0; i < 8; i++)
        eng_seq_release(e, s[i]);
    eng_close(e);

    /* n_valid_vocab: hot sampling never picks an id at or above it. */
    eng_options o = {.backend = ENG_BACKEND_CPU,
                     .n_threads = 1,
                     .max_seqs = 1,
                     .max_kv_tokens = 64,
                     .n_valid_vocab = 100};
    CHECK(eng_open(&e, m, &o, &err) == 0);
    sample_params hot = {.temperature = 20, .top_p = 1, .seed = 3};
    CHECK(eng_seq_add(e, &hot, &a, &err) == 0);
    int32_t next = 0, max_id = 0;
    for (int g = 0; g < 40; g++) {
        it = (eng_item){.seq = a, .tokens = g ? &next : toks, .n_tokens = 1, .sample = 1};
        CHECK(eng_step(e, &it, 1, NULL, &next, &err) == 0);
        if (next > max_id)
            max_id = next;
    }
    CHECK_MSG(max_id < 100, "sampled id %d with n_valid_vocab 100", max_id);
    CHECK_MSG(max_id > 10, "temperature 20 stayed below id 10 (max %d)", max_id);
    eng_close(e);

    /* Backend choice. */
    o.backend = ENG_BACKEND_AUTO;
    CHECK(eng_open(&e, m, &o, &err) == 0);
    CHECK(e && (!strcmp(e->backend_name, "cpu") || !strcmp(e->backend_name, "cuda")));
    eng_close(e);
#ifndef HAVE_CUDA
    o.backend = ENG_BACKEND_CUDA;
    eng sentinel;
    e = &sentinel; /* eng_open must leave NULL on failure */
    CHECK(eng_open(&e, m, &o, &err) < 0);
    CHECK(e == NULL);
    CHECK_MSG(strstr(err.msg, "CUDA") != NULL, "%s", err.msg);
#endif
    free(row);
    free(again);
}

int main(void)
{
    const char *names[] = {"bf16_untied_gqa", "bf16_tied_gqa8"};
    for (size_t mi = 0; mi < sizeof names / sizeof names[0]; mi++) {
        char dir[4096];
        snprintf(dir, sizeof dir, "%s/tests/fixtures/ref/models/%s", srcdir(), names[mi]);
        errbuf err = {{0}};
        model m;
        if (model_open(&m, dir, &err)) {
            CHECK_MSG(0, "%s", err.msg);
            continue;
        }
        printf("%s\n", dir);
        make_plans(m.cfg.vocab_size);
        struct trace alone[N_SEQ];
        memset(alone, 0, sizeof alone);
        for (int i = 0; i < N_SEQ; i++)
            run_alone(&m, i, &alone[i]);
        check_plans_sample(alone);
        check_batched(&m, alone);
        for (int i = 0; i < N_SEQ; i++) {
            free(alone[i].logits);
            free(alone[i].prompt_logits);
        }
        if (mi == 0)
            check_errors(&m);
        model_close(&m);
    }
    return check_exit("test_cpu_engine");
}
