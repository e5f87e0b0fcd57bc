/*
 * sched.c - see scheduler.h. One loop: admit, build a step, run it, account for
 * every sampled token, retire finished documents. All state is per running
 * sequence in `struct slot`; the loop allocates nothing after setup.
 */
#include "scheduler.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

double sched_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

struct slot {
    int used;
    int seq; /* engine sequence */
    sched_doc doc;
    int fed;    /* prompt tokens in the KV cache (reused prefix included) */
    int reused; /* of which forked from the prefix */
    int32_t *ids; /* completion so far; capacity ids_cap */
    int n_ids, ids_cap;
    int32_t *feed; /* tokens to append next decode step: last sample (+ forced) */
    int n_feed;
    int in_thought, truncated;
    int64_t kv_need; /* tokens this document may occupy in the cache at most */
    double t0;
};

struct sched {
    eng *e;
    const sched_options *o;
    const sched_source *src;
    sched_stats *st;
    struct slot *slots;
    int n_slots;
    int root; /* engine sequence holding the shared prefix, -1 if none */
    eng_item *items;
    struct slot **item_slot;
    int32_t *sampled;
    sched_doc peek; /* the next document, fetched but not admitted */
    int have_peek, source_done;
};

static int min_int(int a, int b) { return a < b ? a : b; }

static int common_prefix(const int32_t *a, int na, const int32_t *b, int nb)
{
    int n = min_int(na, nb), i = 0;
    while (i < n && a[i] == b[i])
        i++;
    return i;
}

static int is_eos(const sched_options *o, int32_t t)
{
    for (int i = 0; i < o->n_eos; i++)
        if (o->eos[i] == t)
            return 1;
    return 0;
}

static void slot_clear(struct sched *s, struct slot *sl)
{
    if (sl->used)
        eng_seq_release(s->e, sl->seq);
    free(sl->ids);
    free(sl->feed);
    memset(sl, 0, sizeof *sl);
}

/* KV tokens the running documents may still claim beyond what they hold. */
static int64_t kv_outstanding(const struct sched *s)
{
    int64_t n = 0;
    for (int i = 0; i < s->n_slots; i++) {
        const struct slot *sl = &s->slots[i];
        if (sl->used)
            n += sl->kv_need - (sl->fed + sl->n_ids);
    }
    return n;
}

static int finish(struct sched *s, struct slot *sl, enum sched_finish why, const char *error,
                  errbuf *err)
{
    sched_result r = {
        .ids = sl->ids,
        .n_ids = sl->n_ids,
        .finish = why,
        .thinking_truncated = sl->truncated,
        .prefix_reused = sl->reused,
        .seconds = sched_now() - sl->t0,
        .error = error,
    };
    s->st->docs_done++;
    /* The result borrows the slot's ids: report first, then free the slot. */
    int rc = s->src->done(s->src->ctx, &sl->doc, &r, err);
    slot_clear(s, sl);
    return rc;
}

static int fetch(struct sched *s, errbuf *err)
{
    if (s->have_peek || s->source_done)
        return 0;
    int rc = s->src->next(s->src->ctx, &s->peek, err);
    if (rc < 0)
        return -1;
    if (rc == 0)
        s->source_done = 1;
    else
        s->have_peek = 1;
    return 0;
}

/* Starts the peeked document in a free slot if the cache can take it.
 * Returns 1 admitted, 0 not now, -1 error. */
static int admit(struct sched *s, struct slot *sl, errbuf *err)
{
    const sched_options *o = s->o;
    sched_doc *d = &s->peek;
    int64_t need = (int64_t)d->n_tokens + d->max_new_tokens + (o->thinking_budget ? o->n_early_stop : 0);
    int64_t free_now = eng_kv_free_tokens(s->e) - kv_outstanding(s);
    int running = 0;
    for (int i = 0; i < s->n_slots; i++)
        running += s->slots[i].used;
    if (need > free_now) {
        if (running)
            return 0; /* wait for others to finish */
        /* Alone and still too big: this document can never run. */
        char msg[256];
        snprintf(msg, sizeof msg,
                 "needs %lld KV cache tokens (prompt %d + max_new_tokens %d) but the cache holds "
                 "%lld; lower batching.max_context or sampling.max_new_tokens, or raise "
                 "runtime.gpu_memory",
                 (long long)need, d->n_tokens, d->max_new_tokens, (long long)free_now);
        memset(sl, 0, sizeof *sl);
        sl->doc = *d;
        sl->t0 = sched_now();
        s->have_peek = 0;
        /* finish() releases only used slots; this one never started. */
        sched_result r = {.finish = SCHED_ERROR, .error = msg};
        s->st->docs_done++;
        int rc = s->src->done(s->src->ctx, d, &r, err);
        memset(sl, 0, sizeof *sl);
        return rc ? -1 : 0;
    }
    memset(sl, 0, sizeof *sl);
    sl->doc = *d;
    int reuse = 0;
    if (s->root >= 0) {
        reuse = common_prefix(d->tokens, d->n_tokens, o->prefix, o->n_prefix);
        if (reuse >= d->n_tokens)
            reuse = d->n_tokens - 1; /* the last prompt token must run to sample */
    }
    int rc = reuse > 0 ? eng_seq_fork(s->e, s->root, reuse, &d->sp, &sl->seq, err)
                       : eng_seq_add(s->e, &d->sp, &sl->seq, err);
    if (rc)
        return -1;
    sl->used = 1;
    sl->fed = reuse;
    sl->reused = reuse;
    sl->ids_cap = d->max_new_tokens + o->n_early_stop + 1;
    sl->ids = malloc(sizeof *sl->ids * (size_t)sl->ids_cap);
    sl->feed = malloc(sizeof *sl->feed * (size_t)(o->n_early_stop + 1));
    if (!sl->ids || !sl->feed) {
        slot_clear(s, sl);
        return errorf(err, "out of memory");
    }
    sl->in_thought = o->thinking_budget > 0;
    sl->kv_need = need;
    sl->t0 = sched_now();
    s->st->reused_tokens += reuse;
    s->have_peek = 0;
    return 1;
}

/* Accounts for the token sampled for sl. Returns -1 on a done() error. */
static int on_sampled(struct sched *s, struct slot *sl, int32_t t, errbuf *err)
{
    const sched_options *o = s->o;
    s->st->generated_tokens++;
    if (is_eos(o, t))
        return finish(s, sl, SCHED_STOP, NULL, err) ? -1 : 0;
    sl->ids[sl->n_ids++] = t;
    if (t == o->think_close)
        sl->in_thought = 0;
    if (sl->n_ids >= sl->doc.max_new_tokens)
        return finish(s, sl, SCHED_LENGTH, NULL, err) ? -1 : 0;
    sl->feed[0] = t;
    sl->n_feed = 1;
    if (sl->in_thought && sl->n_ids >= o->thinking_budget) {
        /* Budget spent: close the thought the way Qwen documents, then let
         * the model answer. The forced tokens are part of the completion. */
        int n = min_int(o->n_early_stop, sl->ids_cap - sl->n_ids);
        memcpy(sl->ids + sl->n_ids, o->early_stop, sizeof *sl->ids * (size_t)n);
        memcpy(sl->feed + 1, o->early_stop, sizeof *sl->feed * (size_t)n);
        sl->n_ids += n;
        sl->n_feed += n;
        sl->in_thought = 0;
        sl->truncated = 1;
        if (sl->n_ids >= sl->doc.max_new_tokens)
            return finish(s, sl, SCHED_LENGTH, NULL, err) ? -1 : 0;
    }
    return 0;
}

/* Adds one engine step of dt seconds to the stats: a step that carries
 * prompt tokens (with n_decode decode rows riding along) or a decode-only
 * step. */
static void count_step(sched_stats *st, double dt, int n_decode, int has_prompt)
{
    st->step_seconds += dt;
    if (has_prompt) {
        st->prefill_steps++;
        st->prefill_step_seconds += dt;
        st->prefill_decode_rows += n_decode;
    } else {
        st->decode_steps++;
        st->decode_step_seconds += dt;
        st->decode_rows += n_decode;
    }
}

static int prefill_root(struct sched *s, int chunk, errbuf *err)
{
    const sched_options *o = s->o;
    sample_params sp;
    sample_params_greedy(&sp);
    if (eng_seq_add(s->e, &sp, &s->root, err))
        return -1;
    for (int at = 0; at < o->n_prefix;) {
        int n = min_int(chunk, o->n_prefix - at);
        eng_item it = {.seq = s->root, .tokens = o->prefix + at, .n_tokens = n};
        double t0 = sched_now();
        if (eng_step(s->e, &it, 1, NULL, NULL, err))
            return error_prefix(err, "shared prefix");
        count_step(s->st, sched_now() - t0, 0, 1);
        s->st->prompt_tokens += n;
        at += n;
    }
    return 0;
}

static void release_all(struct sched *s)
{
    for (int i = 0; i < s->n_slots; i++)
        slot_clear(s, &s->slots[i]);
    if (s->root >= 0)
        eng_seq_release(s->e, s->root);
    s->root = -1;
}

int sched_run(eng *e, const sched_options *o, const sched_source *src, sched_stats *st,
              errbuf *err)
{
    struct sched s = {.e = e, .o = o, .src = src, .st = st, .root = -1};
    memset(st, 0, sizeof *st);
    double t_start = sched_now();
    int max_seqs = o->max_seqs > 0 ? o->max_seqs : e->opts.max_seqs;
    if (max_seqs <= 0)
        max_seqs = 64;
    int batch = o->max_batch_tokens > 0 ? o->max_batch_tokens : 131072;
    if (e->opts.max_step_tokens > 0 && e->opts.max_step_tokens < batch)
        batch = e->opts.max_step_tokens;
    int use_root = o->prefix && o->n_prefix > 1;
    s.n_slots = max_seqs - use_root;
    if (s.n_slots < 1)
        return errorf(err, "max_seqs %d leaves no room for documents", max_seqs);
    s.slots = calloc((size_t)s.n_slots, sizeof *s.slots);
    s.items = calloc((size_t)s.n_slots, sizeof *s.items);
    s.item_slot = calloc((size_t)s.n_slots, sizeof *s.item_slot);
    s.sampled = calloc((size_t)s.n_slots, sizeof *s.sampled);
    int rc = -1;
    if (!s.slots || !s.items || !s.item_slot || !s.sampled) {
        errorf(err, "out of memory");
        goto out;
    }
    if (use_root && prefill_root(&s, batch, err))
        goto out;

    for (;;) {
        if (o->stop && *o->stop) {
            rc = SCHED_STOPPED;
            goto out;
        }
        int past_deadline = o->deadline > 0 && sched_now() > o->deadline;
        /* Admit documents while there is a free slot, cache room and
         * prompt budget left in this step. */
        int prefill_planned = 0;
        for (int i = 0; i < s.n_slots; i++) {
            struct slot *sl = &s.slots[i];
            if (sl->used && sl->fed < sl->doc.n_tokens)
                prefill_planned += sl->doc.n_tokens - sl->fed;
        }
        for (int i = 0; i < s.n_slots && !past_deadline && prefill_planned < batch; i++) {
            if (s.slots[i].used)
                continue;
            if (fetch(&s, err))
                goto out;
            if (!s.have_peek)
                break;
            int a = admit(&s, &s.slots[i], err);
            if (a < 0)
                goto out;
            if (a == 0 && s.have_peek)
                break; /* no room until something finishes */
            if (a == 1)
                prefill_planned += s.slots[i].doc.n_tokens - s.slots[i].fed;
            else
                i--; /* the slot is still free: try the next document in it */
        }

        /* Build the step: decode tokens first, then prompt chunks. */
        int n_items = 0, budget = batch;
        for (int i = 0; i < s.n_slots; i++) {
            struct slot *sl = &s.slots[i];
            if (!sl->used || sl->fed < sl->doc.n_tokens)
                continue;
            s.items[n_items] = (eng_item){.seq = sl->seq, .tokens = sl->feed,
                                          .n_tokens = sl->n_feed, .sample = 1};
            s.item_slot[n_items++] = sl;
        }
        const int n_decode = n_items; /* decode items come first */
        for (int i = 0; i < s.n_slots && budget > 0; i++) {
            struct slot *sl = &s.slots[i];
            if (!sl->used || sl->fed >= sl->doc.n_tokens)
                continue;
            int n = min_int(budget, sl->doc.n_tokens - sl->fed);
            s.items[n_items] = (eng_item){.seq = sl->seq, .tokens = sl->doc.tokens + sl->fed,
                                          .n_tokens = n, .sample = sl->fed + n == sl->doc.n_tokens};
            s.item_slot[n_items++] = sl;
            budget -= n;
        }
        if (n_items == 0) {
            if (fetch(&s, err))
                goto out;
            rc = s.have_peek ? SCHED_DEADLINE : SCHED_DONE;
            goto out;
        }

        double t0 = sched_now();
        if (eng_step(e, s.items, n_items, NULL, s.sampled, err))
            goto out;
        count_step(st, sched_now() - t0, n_decode, n_decode < n_items);
        st->steps++;

        int k = 0;
        for (int i = 0; i < n_items; i++) {
            struct slot *sl = s.item_slot[i];
            const eng_item *it = &s.items[i];
            if (sl->fed < sl->doc.n_tokens) { /* a prompt chunk */
                sl->fed += it->n_tokens;
                st->prompt_tokens += it->n_tokens;
            } else {
                sl->n_feed = 0; /* consumed */
            }
            if (it->sample && on_sampled(&s, sl, s.sampled[k++], err))
                goto out;
        }
        st->active = 0;
        for (int i = 0; i < s.n_slots; i++)
            st->active += s.slots[i].used;
        st->elapsed_seconds = sched_now() - t_start;
        if (src->progress)
            src->progress(src->ctx, st);
    }
out:
    release_all(&s);
    st->elapsed_seconds = sched_now() - t_start;
    free(s.slots);
    free(s.items);
    free(s.item_slot);
    free(s.sampled);
    return rc;
}
