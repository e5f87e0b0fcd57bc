/*
 * output.c - the results file, kept in step with the ledger (see output.h).
 *
 * The file is only ever written at its committed end (pwrite at o->end), so
 * a line that the ledger never committed is overwritten by the next one or
 * cut off by out_open; nothing depends on O_APPEND or on the file's size.
 * Recovery checks the last committed line byte for byte against what the
 * ledger's last done document renders to: that catches a truncated or
 * replaced file and a changed format without reading the whole file, and
 * anything it does not trust is rebuilt from the ledger, which is cheap next
 * to the generation it records.
 */
#include "config.h"

#include "output.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <libgen.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct out {
    int fd;
    char *path;
    ledger *l;
    enum out_format format;
    int include_reasoning;
    char *model;  /* meta "model", or NULL */
    int64_t end;  /* committed size */
    int64_t tail; /* physical size (end + an uncommitted line, if any) */
    strbuf line;
};

/* ---- rendering ------------------------------------------------------------- */

static json_t *str_or_null(const char *s)
{
    return s ? json_string(s) : json_null();
}

/* Seconds to the millisecond: more is noise, and short numbers read well. */
static json_t *seconds_value(double s)
{
    return json_real(round(s * 1000.0) / 1000.0);
}

void out_render(const ledger_doc *d, enum out_format format, int include_reasoning,
                const char *model, strbuf *sb)
{
    json_t *rec = json_object();
    if (format == OUT_OPENAI_BATCH) {
        /* OpenAI's ids are opaque strings; derive them from the key so that
         * a regenerated file is identical to the original. */
        char short_key[25];
        snprintf(short_key, sizeof short_key, "%s", d->key ? d->key : "");
        json_t *message = json_object();
        json_object_set_new(message, "role", json_string("assistant"));
        json_object_set_new(message, "content", str_or_null(d->content));
        if (include_reasoning)
            json_object_set_new(message, "reasoning_content", str_or_null(d->reasoning));
        json_t *choice = json_object();
        json_object_set_new(choice, "index", json_integer(0));
        json_object_set_new(choice, "message", message);
        json_object_set_new(choice, "logprobs", json_null());
        json_object_set_new(choice, "finish_reason", str_or_null(d->finish_reason));
        json_t *usage = json_object();
        json_object_set_new(usage, "prompt_tokens", json_integer(d->prompt_tokens));
        json_object_set_new(usage, "completion_tokens", json_integer(d->completion_tokens));
        json_object_set_new(usage, "total_tokens",
                            json_integer((json_int_t)d->prompt_tokens + d->completion_tokens));
        json_t *body = json_object();
        char id[64];
        snprintf(id, sizeof id, "chatcmpl-%s", short_key);
        json_object_set_new(body, "id", json_string(id));
        json_object_set_new(body, "object", json_string("chat.completion"));
        json_object_set_new(body, "created", json_integer(d->finished_at));
        json_object_set_new(body, "model", json_string(model ? model : "qwen3"));
        json_t *choices = json_array();
        json_array_append_new(choices, choice);
        json_object_set_new(body, "choices", choices);
        json_object_set_new(body, "usage", usage);
        json_t *response = json_object();
        json_object_set_new(response, "status_code", json_integer(200));
        json_object_set_new(response, "request_id", str_or_null(d->key));
        json_object_set_new(response, "body", body);
        snprintf(id, sizeof id, "batch_req_%s", short_key);
        json_object_set_new(rec, "id", json_string(id));
        json_object_set_new(rec, "custom_id", str_or_null(d->doc_id));
        json_object_set_new(rec, "response", response);
        json_object_set_new(rec, "error", json_null());
    } else {
        json_object_set_new(rec, "id", str_or_null(d->doc_id));
        json_object_set_new(rec, "source", str_or_null(d->source));
        json_object_set_new(rec, "content", str_or_null(d->content));
        if (include_reasoning)
            json_object_set_new(rec, "reasoning_content", str_or_null(d->reasoning));
        json_object_set_new(rec, "finish_reason", str_or_null(d->finish_reason));
        json_object_set_new(rec, "thinking_truncated", json_boolean(d->thinking_truncated));
        json_object_set_new(rec, "prompt_tokens", json_integer(d->prompt_tokens));
        json_object_set_new(rec, "completion_tokens", json_integer(d->completion_tokens));
        json_object_set_new(rec, "seconds", seconds_value(d->seconds));
    }
    char *text = json_dumps(rec, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(15));
    json_decref(rec);
    if (!text)
        abort(); /* only on out of memory (all strings are valid UTF-8 from the ledger) */
    sb_adds(sb, text);
    free(text);
}

/* ---- file helpers ---------------------------------------------------------- */

static int write_all(int fd, const char *buf, size_t n, int64_t offset)
{
    while (n > 0) {
        ssize_t w = pwrite(fd, buf, n, offset);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        buf += w;
        n -= (size_t)w;
        offset += w;
    }
    return 0;
}

static int read_all(int fd, char *buf, size_t n, int64_t offset)
{
    while (n > 0) {
        ssize_t r = pread(fd, buf, n, offset);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        buf += r;
        n -= (size_t)r;
        offset += r;
    }
    return 0;
}

/* fsync the folder holding path, so that a rename in it is durable. */
static void sync_dir(const char *path)
{
    char *copy = strdup(path);
    if (!copy)
        return;
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    free(copy);
}

/* ---- recovery -------------------------------------------------------------- */

/* Is the committed part of the file what the ledger says? Checks that the
 * file is at least jsonl_end long and that the bytes before jsonl_end are
 * the last done document's line (preceded by a line end or the start). */
static int tail_matches(out *o, int64_t size, const ledger_doc *last)
{
    int64_t end = last->jsonl_end;
    if (end <= 0 || size < end)
        return 0;
    strbuf want = STRBUF_INIT;
    out_render(last, o->format, o->include_reasoning, o->model, &want);
    sb_addc(&want, '\n');
    int ok = 0;
    int64_t start = end - (int64_t)want.len;
    if (start >= 0) {
        char *have = malloc(want.len + 1);
        if (have && read_all(o->fd, have, want.len + (start > 0), start - (start > 0)) == 0) {
            const char *line = have + (start > 0);
            ok = (start == 0 || have[0] == '\n') && !memcmp(line, want.buf, want.len);
        }
        free(have);
    }
    sb_release(&want);
    return ok;
}

/* Rewrites the file from the ledger's done documents and records the new
 * offsets. Crash-safe: the new file replaces the old only when complete, and
 * if the ledger update is lost the next out_open finds the offsets wrong
 * and simply does this again. */
static int regenerate(out *o, errbuf *err)
{
    strbuf tmp = STRBUF_INIT;
    sb_addf(&tmp, "%s.tmp", o->path);
    int64_t *seqs = NULL, *ends = NULL;
    size_t n = 0, cap = 0;
    ledger_docs_iter *it = NULL;
    FILE *f = fopen(tmp.buf, "we");
    if (!f) {
        errorf(err, "%s: cannot create: %s", tmp.buf, strerror(errno));
        goto fail;
    }
    if (ledger_docs_open(o->l, LEDGER_DONE, &it, err) < 0)
        goto fail;
    ledger_doc d;
    int rc;
    int64_t offset = 0;
    while ((rc = ledger_docs_next(it, &d, err)) == 1) {
        sb_reset(&o->line);
        out_render(&d, o->format, o->include_reasoning, o->model, &o->line);
        sb_addc(&o->line, '\n');
        if (fwrite(o->line.buf, 1, o->line.len, f) != o->line.len) {
            errorf(err, "%s: write failed: %s", tmp.buf, strerror(errno));
            goto fail;
        }
        offset += (int64_t)o->line.len;
        if (n == cap) {
            cap = cap ? 2 * cap : 1024;
            int64_t *s2 = realloc(seqs, cap * sizeof *s2);
            if (s2)
                seqs = s2;
            int64_t *e2 = realloc(ends, cap * sizeof *e2);
            if (e2)
                ends = e2;
            if (!s2 || !e2) {
                errorf(err, "%s: out of memory", o->path);
                goto fail;
            }
        }
        seqs[n] = d.done_seq;
        ends[n] = offset;
        n++;
    }
    ledger_docs_close(it);
    it = NULL;
    if (rc < 0)
        goto fail;
    if (fflush(f) != 0 || fsync(fileno(f)) != 0) {
        errorf(err, "%s: write failed: %s", tmp.buf, strerror(errno));
        goto fail;
    }
    int close_rc = fclose(f);
    f = NULL;
    if (close_rc != 0) {
        errorf(err, "%s: write failed: %s", tmp.buf, strerror(errno));
        goto fail;
    }
    if (rename(tmp.buf, o->path) < 0) {
        errorf(err, "%s: cannot replace with %s: %s", o->path, tmp.buf, strerror(errno));
        goto fail;
    }
    sync_dir(o->path);
    if (ledger_begin(o->l, err) < 0)
        goto fail;
    for (size_t i = 0; i < n; i++)
        if (ledger_set_jsonl_end(o->l, seqs[i], ends[i], err) < 0) {
            ledger_rollback(o->l, NULL);
            goto fail;
        }
    if (ledger_commit(o->l, err) < 0)
        goto fail;
    if (o->fd >= 0)
        close(o->fd);
    o->fd = open(o->path, O_RDWR | O_CLOEXEC);
    if (o->fd < 0) {
        errorf(err, "%s: cannot open: %s", o->path, strerror(errno));
        goto fail;
    }
    o->end = o->tail = offset;
    free(seqs);
    free(ends);
    sb_release(&tmp);
    return 0;
fail:
    ledger_docs_close(it);
    if (f) {
        fclose(f);
        unlink(tmp.buf);
    }
    free(seqs);
    free(ends);
    sb_release(&tmp);
    return -1;
}

int out_open(out **op, const char *path, ledger *l, enum out_format format, int include_reasoning,
             int *regenerated, errbuf *err)
{
    *op = NULL;
    if (regenerated)
        *regenerated = 0;
    out *o = calloc(1, sizeof *o);
    if (!o)
        return errorf(err, "%s: out of memory", path);
    o->fd = -1;
    o->l = l;
    o->format = format;
    o->include_reasoning = include_reasoning;
    o->path = strdup(path);
    if (!o->path || ledger_meta_get(l, "model", &o->model, err) < 0)
        goto fail;
    o->fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (o->fd < 0) {
        errorf(err, "%s: cannot open the results file: %s", path, strerror(errno));
        goto fail;
    }
    struct stat st;
    if (fstat(o->fd, &st) < 0) {
        errorf(err, "%s: %s", path, strerror(errno));
        goto fail;
    }
    ledger_doc last;
    int has_last = ledger_last_done(l, &last, err);
    if (has_last < 0)
        goto fail;
    if (!has_last) {
        o->end = 0; /* nothing committed: any content is an uncommitted tail */
    } else if (tail_matches(o, st.st_size, &last)) {
        o->end = last.jsonl_end;
    } else {
        if (regenerate(o, err) < 0)
            goto fail;
        if (regenerated)
            *regenerated = 1;
        *op = o;
        return 0;
    }
    if (st.st_size != o->end) {
        if (ftruncate(o->fd, o->end) < 0 || fdatasync(o->fd) < 0) {
            errorf(err, "%s: cannot cut the uncommitted tail: %s", path, strerror(errno));
            goto fail;
        }
    }
    o->tail = o->end;
    *op = o;
    return 0;
fail:
    out_close(o);
    return -1;
}

void out_close(out *o)
{
    if (!o)
        return;
    if (o->fd >= 0)
        close(o->fd);
    sb_release(&o->line);
    free(o->model);
    free(o->path);
    free(o);
}

int64_t out_end(const out *o)
{
    return o->end;
}

/* ---- writing --------------------------------------------------------------- */

int out_rollback(out *o, errbuf *err)
{
    if (o->tail == o->end)
        return 0;
    if (ftruncate(o->fd, o->end) < 0)
        return errorf(err, "%s: cannot cut an uncommitted line: %s", o->path, strerror(errno));
    o->tail = o->end;
    return 0;
}

int out_write_doc(out *o, const ledger_doc *doc, int64_t *end_offset, errbuf *err)
{
    sb_reset(&o->line);
    out_render(doc, o->format, o->include_reasoning, o->model, &o->line);
    sb_addc(&o->line, '\n');
    int64_t new_end = o->end + (int64_t)o->line.len;
    if (write_all(o->fd, o->line.buf, o->line.len, o->end) < 0) {
        errorf(err, "%s: write failed: %s", o->path, strerror(errno));
        o->tail = new_end > o->tail ? new_end : o->tail;
        out_rollback(o, NULL);
        return -1;
    }
    /* A longer uncommitted line may lie beyond this one. */
    if (o->tail > new_end && ftruncate(o->fd, new_end) < 0) {
        errorf(err, "%s: cannot cut an uncommitted line: %s", o->path, strerror(errno));
        return -1;
    }
    o->tail = new_end;
    if (fdatasync(o->fd) < 0) {
        errorf(err, "%s: fdatasync failed: %s", o->path, strerror(errno));
        out_rollback(o, NULL);
        return -1;
    }
    *end_offset = new_end;
    return 0;
}

void out_committed(out *o, int64_t end_offset)
{
    o->end = end_offset;
    if (o->tail < o->end)
        o->tail = o->end;
}

int out_finish_doc(out *o, const char *key, const char *doc_id, const char *source,
                   const ledger_output *res, errbuf *err)
{
    ledger_output r = *res;
    if (!r.finished_at)
        r.finished_at = (int64_t)time(NULL);
    if (r.finish_reason && !strcmp(r.finish_reason, "error")) {
        r.jsonl_end = 0;
        return ledger_finish_doc(o->l, key, &r, err);
    }
    if (r.prompt_tokens <= 0)
        return errorf(err, "%s: document %s: prompt_tokens not given", o->path, doc_id);
    ledger_doc d = {
        .key = key,
        .doc_id = doc_id,
        .source = source,
        .state = LEDGER_DONE,
        .content = r.content,
        .reasoning = r.reasoning,
        .finish_reason = r.finish_reason,
        .thinking_truncated = r.thinking_truncated ? 1 : 0,
        .prompt_tokens = r.prompt_tokens,
        .completion_tokens = r.completion_tokens,
        .seconds = r.seconds,
        .finished_at = r.finished_at,
    };
    if (out_write_doc(o, &d, &r.jsonl_end, err) < 0)
        return -1;
    if (ledger_finish_doc(o->l, key, &r, err) < 0) {
        out_rollback(o, NULL);
        return -1;
    }
    out_committed(o, r.jsonl_end);
    return 0;
}

/* ---- export ---------------------------------------------------------------- */

int out_export(ledger *l, FILE *f, enum out_format format, int include_reasoning, int64_t *n_docs,
               errbuf *err)
{
    if (n_docs)
        *n_docs = 0;
    char *model = NULL;
    if (ledger_meta_get(l, "model", &model, err) < 0)
        return -1;
    ledger_docs_iter *it;
    if (ledger_docs_open(l, LEDGER_DONE, &it, err) < 0) {
        free(model);
        return -1;
    }
    strbuf sb = STRBUF_INIT;
    ledger_doc d;
    int rc;
    int64_t n = 0;
    while ((rc = ledger_docs_next(it, &d, err)) == 1) {
        sb_reset(&sb);
        out_render(&d, format, include_reasoning, model, &sb);
        sb_addc(&sb, '\n');
        if (fwrite(sb.buf, 1, sb.len, f) != sb.len) {
            rc = errorf(err, "write failed: %s", strerror(errno));
            break;
        }
        n++;
    }
    ledger_docs_close(it);
    sb_release(&sb);
    free(model);
    if (n_docs)
        *n_docs = n;
    return rc < 0 ? -1 : 0;
}
