/*
 * think.c - see think.h. Text-level, because the ledger stores decoded text
 * and "<think>" / "</think>" are single added tokens that always decode to
 * exactly these strings.
 */
#include "think.h"

#include <string.h>

static const char OPEN[] = "<think>";
static const char CLOSE[] = "</think>";
#define OPEN_LEN (sizeof OPEN - 1)
#define CLOSE_LEN (sizeof CLOSE - 1)

static const char *find(const char *s, const char *end, const char *needle, size_t n)
{
    if ((size_t)(end - s) < n)
        return NULL;
    return memmem(s, (size_t)(end - s), needle, n);
}

/* Appends s..end to sb without leading and trailing newlines (HF's reasoning
 * parsers strip "\n" around the thought and the answer, nothing else). */
static void add_trimmed(strbuf *sb, const char *s, const char *end)
{
    while (s < end && (*s == '\n' || *s == '\r'))
        s++;
    while (end > s && (end[-1] == '\n' || end[-1] == '\r'))
        end--;
    if (sb->len && end > s)
        sb_adds(sb, "\n\n");
    sb_add(sb, s, (size_t)(end - s));
}

/* Non-thinking: copies s..end into content with think blocks moved out. */
static void strip_blocks(const char *s, const char *end, think_parts *p)
{
    strbuf raw = STRBUF_INIT;
    while (s < end) {
        const char *o = find(s, end, OPEN, OPEN_LEN);
        const char *c = find(s, end, CLOSE, CLOSE_LEN);
        if (!o && !c) {
            sb_add(&raw, s, (size_t)(end - s));
            break;
        }
        if (c && (!o || c < o)) { /* a lone closing tag: drop it */
            sb_add(&raw, s, (size_t)(c - s));
            s = c + CLOSE_LEN;
            continue;
        }
        sb_add(&raw, s, (size_t)(o - s));
        const char *body = o + OPEN_LEN;
        const char *close = find(body, end, CLOSE, CLOSE_LEN);
        const char *body_end = close ? close : end;
        add_trimmed(&p->reasoning, body, body_end);
        s = close ? close + CLOSE_LEN : end;
    }
    add_trimmed(&p->content, raw.buf ? raw.buf : "", raw.buf ? raw.buf + raw.len : "");
    sb_release(&raw);
}

void think_split(const char *text, size_t len, int thinking, think_parts *p)
{
    const char *s = text, *end = text + len;
    sb_init(&p->reasoning);
    sb_init(&p->content);
    p->unclosed = 0;
    if (!thinking) {
        strip_blocks(s, end, p);
        return;
    }
    /* Thinking: the thought runs from an optional leading "<think>" to the
     * first "</think>"; everything after it is the answer (with any further
     * stray blocks removed the non-thinking way). */
    const char *t = s;
    while (t < end && (*t == '\n' || *t == ' '))
        t++;
    if ((size_t)(end - t) >= OPEN_LEN && !memcmp(t, OPEN, OPEN_LEN))
        s = t + OPEN_LEN;
    else if (!find(s, end, CLOSE, CLOSE_LEN)) {
        /* The model answered without thinking at all. */
        strip_blocks(s, end, p);
        return;
    }
    const char *close = find(s, end, CLOSE, CLOSE_LEN);
    if (!close) {
        add_trimmed(&p->reasoning, s, end);
        p->unclosed = 1;
        return;
    }
    add_trimmed(&p->reasoning, s, close);
    strbuf rest_reasoning = p->reasoning;
    sb_init(&p->reasoning);
    strip_blocks(close + CLOSE_LEN, end, p);
    /* Keep the main thought first, then any stray blocks found after it. */
    if (p->reasoning.len) {
        sb_adds(&rest_reasoning, "\n\n");
        sb_add(&rest_reasoning, p->reasoning.buf, p->reasoning.len);
    }
    sb_release(&p->reasoning);
    p->reasoning = rest_reasoning;
}

void think_parts_free(think_parts *p)
{
    sb_release(&p->reasoning);
    sb_release(&p->content);
}
