/*
 * progress.c - see progress.h.
 */
#include "progress.h"

#include <math.h>
#include <unistd.h>

void progress_init(progress *p, enum progress_mode mode, FILE *out, double interval)
{
    if (mode == PROGRESS_AUTO)
        mode = isatty(fileno(out)) ? PROGRESS_BAR : PROGRESS_JSON;
    p->mode = mode;
    p->out = out;
    p->interval = interval > 0 ? interval : 10.0;
    p->last_emit = -1e9;
    p->drawn = 0;
}

const char *progress_duration(double s, char *buf, size_t size)
{
    if (!(s >= 0) || s > 99 * 86400.0) {
        snprintf(buf, size, "--");
        return buf;
    }
    long t = lround(s);
    if (t >= 3600)
        snprintf(buf, size, "%ldh%02ldm", t / 3600, t / 60 % 60);
    else if (t >= 60)
        snprintf(buf, size, "%ldm%02lds", t / 60, t % 60);
    else
        snprintf(buf, size, "%lds", t);
    return buf;
}

double progress_eta(double seconds, int64_t tokens_done, int64_t docs_done, int64_t completion_done,
                    int64_t docs_pending, int64_t prompt_pending, int64_t gen_in_flight)
{
    if (docs_pending <= 0)
        return 0;
    if (docs_done <= 0 || seconds <= 0)
        return -1;
    if (tokens_done <= 0)
        return seconds / (double)docs_done * (double)docs_pending;
    double gen_left =
        (double)completion_done / (double)docs_done * (double)docs_pending - (double)gen_in_flight;
    double left = (double)(prompt_pending > 0 ? prompt_pending : 0) + (gen_left > 0 ? gen_left : 0);
    return seconds / (double)tokens_done * left;
}

static double eta(const progress_counts *c)
{
    int64_t ok = c->docs_done - c->docs_failed;
    if (c->prompt_tokens_total <= 0 || ok <= 0) /* no token figures: per document */
        return progress_eta(c->elapsed, 0, c->docs_done, 0, c->docs_total - c->docs_done, 0, 0);
    return progress_eta(c->elapsed, c->prompt_tokens + c->generated_tokens, ok,
                        c->completion_tokens_done, c->docs_total - c->docs_done,
                        c->prompt_tokens_total - c->prompt_tokens_started,
                        c->generated_tokens - c->completion_tokens_done);
}

static double rate(int64_t n, double secs) { return secs > 0 ? (double)n / secs : 0; }

void progress_update(progress *p, const progress_counts *c, int force)
{
    if (p->mode == PROGRESS_NONE)
        return;
    double due = p->mode == PROGRESS_BAR ? 0.25 : p->interval;
    if (!force && c->elapsed - p->last_emit < due)
        return;
    p->last_emit = c->elapsed;
    if (p->mode == PROGRESS_JSON) {
        fprintf(p->out,
                "{\"event\":\"progress\",\"docs_done\":%lld,\"docs_total\":%lld,"
                "\"docs_failed\":%lld,\"prompt_tokens\":%lld,\"generated_tokens\":%lld,"
                "\"prompt_tok_s\":%.1f,\"gen_tok_s\":%.1f,\"elapsed_s\":%.1f,\"eta_s\":%.0f,"
                "\"active\":%d}\n",
                (long long)c->docs_done, (long long)c->docs_total, (long long)c->docs_failed,
                (long long)c->prompt_tokens, (long long)c->generated_tokens,
                rate(c->prompt_tokens, c->elapsed), rate(c->generated_tokens, c->elapsed),
                c->elapsed, eta(c), c->active);
        fflush(p->out);
        return;
    }
    enum { WIDTH = 24 };
    double frac = c->docs_total > 0 ? (double)c->docs_done / (double)c->docs_total : 1.0;
    int fill = (int)(frac * WIDTH + 0.5);
    char bar[WIDTH + 1], t1[32], t2[32];
    for (int i = 0; i < WIDTH; i++)
        bar[i] = i < fill ? '#' : '.';
    bar[WIDTH] = 0;
    fprintf(p->out,
            "\r[%s] %lld/%lld docs%s  prompt %.0f tok/s  gen %.0f tok/s  %d running  %s  ETA %s "
            "\033[K",
            bar, (long long)c->docs_done, (long long)c->docs_total,
            c->docs_failed ? " (some failed)" : "", rate(c->prompt_tokens, c->elapsed),
            rate(c->generated_tokens, c->elapsed), c->active,
            progress_duration(c->elapsed, t1, sizeof t1), progress_duration(eta(c), t2, sizeof t2));
    fflush(p->out);
    p->drawn = 1;
}

void progress_end(progress *p)
{
    if (p->mode == PROGRESS_BAR && p->drawn) {
        fputc('\n', p->out);
        p->drawn = 0;
    }
}
