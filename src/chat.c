/*
 * chat.c - the Qwen3 chat template (see chat.h).
 *
 * Each branch below mirrors one block of the Jinja template; the string
 * operations follow Python's: split('</think>')[-1] is the text after the
 * last tag, split('</think>')[0] the text before the first, lstrip('\n') /
 * rstrip('\n') / strip('\n') strip newlines only.
 */
#include "chat.h"

#include <string.h>

typedef struct span {
    const char *s;
    size_t n;
} span;

static span lstrip_nl(span x)
{
    while (x.n && x.s[0] == '\n')
        x.s++, x.n--;
    return x;
}

static span rstrip_nl(span x)
{
    while (x.n && x.s[x.n - 1] == '\n')
        x.n--;
    return x;
}

/* Last occurrence of needle in x, or NULL. */
static const char *find_last(span x, const char *needle)
{
    size_t k = strlen(needle);
    const char *last = NULL;
    for (const char *p = x.s; x.n >= k && p <= x.s + x.n - k; p++)
        if (!memcmp(p, needle, k))
            last = p;
    return last;
}

static const char *find_first(span x, const char *needle)
{
    size_t k = strlen(needle);
    for (const char *p = x.s; x.n >= k && p <= x.s + x.n - k; p++)
        if (!memcmp(p, needle, k))
            return p;
    return NULL;
}

static int starts_with(const char *s, const char *prefix)
{
    return !strncmp(s, prefix, strlen(prefix));
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !memcmp(s + n - k, suffix, k);
}

static void add_span(strbuf *out, span x)
{
    sb_add(out, x.s, x.n);
}

static void render_assistant(strbuf *out, const char *text, int after_last_query, int is_last)
{
    span content = {text, strlen(text)};
    span reasoning = {"", 0};
    const char *close = find_first(content, "</think>");
    if (close) {
        const char *last_close = find_last(content, "</think>");
        span whole = content;
        content = lstrip_nl((span){last_close + 8, (size_t)(whole.s + whole.n - last_close - 8)});
        span before = rstrip_nl((span){whole.s, (size_t)(close - whole.s)});
        const char *open = find_last(before, "<think>");
        if (open)
            before = (span){open + 7, (size_t)(before.s + before.n - open - 7)};
        reasoning = lstrip_nl(before);
    }
    sb_adds(out, "<|im_start|>assistant\n");
    if (after_last_query && (is_last || reasoning.n)) {
        sb_adds(out, "<think>\n");
        add_span(out, rstrip_nl(lstrip_nl(reasoning)));
        sb_adds(out, "\n</think>\n\n");
        add_span(out, lstrip_nl(content));
    } else {
        add_span(out, content);
    }
    sb_adds(out, "<|im_end|>\n");
}

int chat_render(strbuf *out, const chat_msg *msgs, int n_msgs, int add_generation_prompt,
                int enable_thinking, errbuf *err)
{
    if (n_msgs <= 0)
        return errorf(err, "no messages to render");
    for (int i = 0; i < n_msgs; i++) {
        const char *r = msgs[i].role;
        if (!r || !msgs[i].content)
            return errorf(err, "message %d: %s is missing", i, !r ? "role" : "content");
        if (strcmp(r, "system") && strcmp(r, "user") && strcmp(r, "assistant") && strcmp(r, "tool"))
            return errorf(err, "message %d: unknown role '%s' (system, user, assistant or tool)",
                          i, r);
    }
    if (!out->buf)
        sb_grow(out, 0);
    if (!strcmp(msgs[0].role, "system")) {
        sb_adds(out, "<|im_start|>system\n");
        sb_adds(out, msgs[0].content);
        sb_adds(out, "<|im_end|>\n");
    }
    /* The last user message that is not a wrapped tool response: reasoning
     * is kept only on assistant turns after it. */
    int last_query = n_msgs - 1;
    for (int i = n_msgs - 1; i >= 0; i--) {
        const char *c = msgs[i].content;
        if (!strcmp(msgs[i].role, "user") &&
            !(starts_with(c, "<tool_response>") && ends_with(c, "</tool_response>"))) {
            last_query = i;
            break;
        }
    }
    for (int i = 0; i < n_msgs; i++) {
        const char *role = msgs[i].role, *c = msgs[i].content;
        if (!strcmp(role, "user") || (!strcmp(role, "system") && i > 0)) {
            sb_addf(out, "<|im_start|>%s\n", role);
            sb_adds(out, c);
            sb_adds(out, "<|im_end|>\n");
        } else if (!strcmp(role, "assistant")) {
            render_assistant(out, c, i > last_query, i == n_msgs - 1);
        } else if (!strcmp(role, "tool")) {
            if (i == 0 || strcmp(msgs[i - 1].role, "tool"))
                sb_adds(out, "<|im_start|>user");
            sb_adds(out, "\n<tool_response>\n");
            sb_adds(out, c);
            sb_adds(out, "\n</tool_response>");
            if (i == n_msgs - 1 || strcmp(msgs[i + 1].role, "tool"))
                sb_adds(out, "<|im_end|>\n");
        }
    }
    if (add_generation_prompt) {
        sb_adds(out, "<|im_start|>assistant\n");
        if (!enable_thinking)
            sb_adds(out, "<think>\n\n</think>\n\n");
    }
    return 0;
}
