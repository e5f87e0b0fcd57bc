/*
 * chat.c - see chat.h. Follows the Jinja template statement by statement;
 * the helpers mirror the Python string methods it uses.
 */
#include "chat.h"

#include <string.h>

static int starts_with(const char *s, const char *p) { return !strncmp(s, p, strlen(p)); }

static int ends_with(const char *s, const char *p)
{
    size_t n = strlen(s), k = strlen(p);
    return n >= k && !memcmp(s + n - k, p, k);
}

/* Appends s[0..n) with leading (lead) and/or trailing (trail) '\n' removed. */
static void add_strip_nl(strbuf *out, const char *s, size_t n, int lead, int trail)
{
    while (lead && n && *s == '\n')
        s++, n--;
    while (trail && n && s[n - 1] == '\n')
        n--;
    sb_add(out, s, n);
}

static const char *find_last(const char *s, const char *end, const char *needle)
{
    size_t k = strlen(needle);
    const char *best = NULL;
    for (const char *p = s; p + k <= end; p++)
        if (!memcmp(p, needle, k))
            best = p;
    return best;
}

int chat_render(strbuf *out, const chat_msg *m, int n, int add_generation_prompt,
                int enable_thinking, errbuf *err)
{
    for (int i = 0; i < n; i++) {
        const char *r = m[i].role;
        if (!r || !m[i].content)
            return errorf(err, "message %d: role and content are required", i);
        if (strcmp(r, "system") && strcmp(r, "user") && strcmp(r, "assistant") &&
            strcmp(r, "tool"))
            return errorf(err, "message %d: unknown role '%s'", i, r);
    }
    if (n > 0 && !strcmp(m[0].role, "system")) {
        sb_adds(out, "<|im_start|>system\n");
        sb_adds(out, m[0].content);
        sb_adds(out, "<|im_end|>\n");
    }
    /* The last user turn that is not a tool response. */
    int last_query = n - 1;
    for (int i = n - 1; i >= 0; i--) {
        const char *c = m[i].content;
        if (!strcmp(m[i].role, "user") &&
            !(starts_with(c, "<tool_response>") && ends_with(c, "</tool_response>"))) {
            last_query = i;
            break;
        }
    }
    for (int i = 0; i < n; i++) {
        const char *role = m[i].role, *c = m[i].content;
        if (!strcmp(role, "user") || (!strcmp(role, "system") && i > 0)) {
            sb_addf(out, "<|im_start|>%s\n", role);
            sb_adds(out, c);
            sb_adds(out, "<|im_end|>\n");
        } else if (!strcmp(role, "assistant")) {
            const char *content = c, *content_end = c + strlen(c);
            const char *reason = "", *reason_end = reason;
            const char *close = strstr(c, "</think>");
            if (close) {
                /* content = split('</think>')[-1].lstrip('\n') */
                content = find_last(c, content_end, "</think>") + strlen("</think>");
                while (*content == '\n')
                    content++;
                /* reasoning = split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') */
                reason_end = close;
                while (reason_end > c && reason_end[-1] == '\n')
                    reason_end--;
                const char *open = find_last(c, reason_end, "<think>");
                reason = open ? open + strlen("<think>") : c;
                if (reason > reason_end)
                    reason = reason_end;
                while (reason < reason_end && *reason == '\n')
                    reason++;
            }
            sb_adds(out, "<|im_start|>assistant\n");
            if (i > last_query && (i == n - 1 || reason_end > reason)) {
                sb_adds(out, "<think>\n");
                add_strip_nl(out, reason, (size_t)(reason_end - reason), 1, 1);
                sb_adds(out, "\n</think>\n\n");
                add_strip_nl(out, content, (size_t)(content_end - content), 1, 0);
            } else {
                sb_add(out, content, (size_t)(content_end - content));
            }
            sb_adds(out, "<|im_end|>\n");
        } else if (!strcmp(role, "tool")) {
            if (i == 0 || strcmp(m[i - 1].role, "tool"))
                sb_adds(out, "<|im_start|>user");
            sb_adds(out, "\n<tool_response>\n");
            sb_adds(out, c);
            sb_adds(out, "\n</tool_response>");
            if (i == n - 1 || strcmp(m[i + 1].role, "tool"))
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
