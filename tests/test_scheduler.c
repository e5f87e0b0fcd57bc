/*
 * test_scheduler.c - the scheduler on the CPU engine with an HF reference
 * checkpoint: batching choices never change a document's tokens, the
 * shared prefix is reused, the thinking budget forces the early stop, a
 * document too big for the cache fails alone, and a stop request returns at
 * once.
 */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "engine.h"
#include "model.h"
#include "scheduler.h"

enum { N_DOCS = 10, MAX_NEW = 12 };

struct fixture {
    int32_t prompts[N_DOCS][80];
    int lens[N_DOCS];
    int32_t out[N_DOCS][MAX_NEW + 8];
    int n_out[N_DOCS];
    int finish[N_DOCS], truncated[N_DOCS], reused[N_DOCS];
    int next, n_done, stop_after;
    volatile sig_atomic_t stop;
    int max_step_seen;
};

static int next_doc(void *ctx, sched_doc *d, errbuf *err)
{
    (void)err;
    struct fixture *f = ctx;
    if (f->next >= N_DOCS)
        return 0;
    int i = f->next++;
    memset(d, 0, sizeof *d);
    d->handle = i;
    d->tokens = f->prompts[i];
    d->n_tokens = f->lens[i];
    sample_params_greedy(&d->sp);
    if (i % 2) { /* half of them sampled, seeded */
        d->sp.temperature = 0.8f;
        d->sp.top_k = 20;
        d->sp.top_p = 0.9f;
        d->sp.seed = 1000 + (uint64_t)i;
    }
    d->max_new_tokens = MAX_NEW;
    return 1;
}

static int done(void *ctx, const sched_doc *d, const sched_result *r, errbuf *err)
{
    (void)err;
    struct fixture *f = ctx;
    int i = (int)d->handle;
    memcpy(f->out[i], r->ids, sizeof(int32_t) * (size_t)r->n_ids);
    f->n_out[i] = r->n_ids;
    f->finish[i] = r->finish;
    f->truncated[i] = r->thinking_truncated;
    f->reused[i] = r->prefix_reused;
    if (++f->n_done == f->stop_after)
        f->stop = 1;
    return 0;
}

static void setup(struct fixture *f)
{
    memset(f, 0, sizeof *f);
    for (int i = 0; i < N_DOCS; i++) {
        f->lens[i] = 3 + (i * 23) % 70;
        for (int t = 0; t < f->lens[i]; t++)
            f->prompts[i][t] = (int32_t)(t < 10 ? 40 + t : (i * 97 + t * 31) % 500);
    }
}

static int run(const model *m, struct fixture *f, int max_seqs, int batch, int kv,
               const int32_t *prefix, int n_prefix, int budget, const int32_t *early, int n_early,
               int *rc_out)
{
    eng_options o = {.backend = ENG_BACKEND_CPU, .n_threads = 2, .max_seqs = max_seqs + 1,
                     .max_kv_tokens = kv};
    eng *e;
    errbuf err = {{0}};
    if (eng_open(&e, m, &o, &err)) {
        CHECK_MSG(0, "%s", err.msg);
        return -1;
    }
    int32_t eos[1] = {511};
    sched_options so = {.max_batch_tokens = batch, .max_seqs = max_seqs + (prefix ? 1 : 0),
                        .prefix = prefix, .n_prefix = n_prefix, .eos = eos, .n_eos = 0,
                        .thinking_budget = budget, .think_close = -1, .early_stop = early,
                        .n_early_stop = n_early, .stop = &f->stop};
    sched_source src = {.ctx = f, .next = next_doc, .done = done};
    sched_stats st;
    int rc = sched_run(e, &so, &src, &st, &err);
    CHECK_MSG(rc >= 0, "%s", err.msg);
    *rc_out = rc;
    eng_close(e);
    return (int)st.steps;
}

int main(void)
{
    const char *top = getenv("top_srcdir") ? getenv("top_srcdir") : ".";
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tests/fixtures/ref/models/bf16_untied_gqa", top);
    model m;
    errbuf err = {{0}};
    if (model_open(&m, dir, &err)) {
        CHECK_MSG(0, "%s", err.msg);
        return check_exit("test_scheduler");
    }
    static struct fixture a, b, c, d, e;
    int rc;

    /* A: 2 at a time, 16 prompt tokens per step (long prompts in chunks). */
    setup(&a);
    int steps_a = run(&m, &a, 2, 16, 4096, NULL, 0, 0, NULL, 0, &rc);
    CHECK_INT_EQ(rc, SCHED_DONE);
    for (int i = 0; i < N_DOCS; i++) {
        CHECK_INT_EQ(a.n_out[i], MAX_NEW);
        CHECK_INT_EQ(a.finish[i], SCHED_LENGTH);
    }
    /* B: all at once, big batches, forking from a 10-token shared prefix. */
    setup(&b);
    int32_t prefix[10];
    for (int t = 0; t < 10; t++)
        prefix[t] = 40 + t;
    int steps_b = run(&m, &b, 16, 4096, 8192, prefix, 10, 0, NULL, 0, &rc);
    CHECK_INT_EQ(rc, SCHED_DONE);
    CHECK_MSG(steps_b < steps_a, "bigger batches took %d steps vs %d", steps_b, steps_a);
    for (int i = 0; i < N_DOCS; i++) {
        CHECK_MSG(b.n_out[i] == a.n_out[i] &&
                      !memcmp(b.out[i], a.out[i], sizeof(int32_t) * (size_t)a.n_out[i]),
                  "document %d: tokens depend on batching or prefix sharing", i);
        int want = a.lens[i] > 10 ? 10 : a.lens[i] - 1;
        CHECK_MSG(b.reused[i] == want, "document %d reused %d prefix tokens, want %d", i,
                  b.reused[i], want);
    }
    /* C: thinking budget 4: the early-stop tokens follow the 4th token. */
    setup(&c);
    int32_t early[3] = {7, 8, 9};
    run(&m, &c, 4, 256, 4096, NULL, 0, 4, early, 3, &rc);
    for (int i = 0; i < N_DOCS; i++) {
        CHECK(c.truncated[i] == 1);
        CHECK(c.n_out[i] == MAX_NEW && c.out[i][4] == 7 && c.out[i][5] == 8 && c.out[i][6] == 9);
        CHECK_MSG(!memcmp(c.out[i], a.out[i], sizeof(int32_t) * 4), "doc %d: budget changed the thought", i);
    }
    /* D: a cache of 60 tokens: documents that cannot fit fail alone. */
    setup(&d);
    run(&m, &d, 4, 256, 60, NULL, 0, 0, NULL, 0, &rc);
    CHECK_INT_EQ(rc, SCHED_DONE);
    for (int i = 0; i < N_DOCS; i++) {
        int fits = d.lens[i] + MAX_NEW <= 60;
        CHECK_MSG(d.finish[i] == (fits ? SCHED_LENGTH : SCHED_ERROR), "doc %d (len %d): finish %d",
                  i, d.lens[i], d.finish[i]);
        if (fits)
            CHECK(!memcmp(d.out[i], a.out[i], sizeof(int32_t) * MAX_NEW));
    }
    /* E: stop after 3 documents: returns STOPPED with the rest unfinished. */
    setup(&e);
    e.stop_after = 3;
    run(&m, &e, 2, 64, 4096, NULL, 0, 0, NULL, 0, &rc);
    CHECK_INT_EQ(rc, SCHED_STOPPED);
    CHECK(e.n_done < N_DOCS);
    model_close(&m);
    return check_exit("test_scheduler");
}
