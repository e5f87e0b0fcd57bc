/*
 * chat.h - the Qwen3 chat template, in C.
 *
 * Renders exactly what transformers' apply_chat_template renders with the
 * Jinja template shipped in Qwen3's tokenizer_config.json (without tools):
 * an optional leading system message, user/assistant/tool turns, past
 * assistant turns with their reasoning dropped (kept only after the last
 * user query, as the template does), the generation prompt, and with
 * enable_thinking false the empty think block "<think>\n\n</think>\n\n".
 * A template interpreter would buy nothing: every Qwen3 model ships this
 * one template, and byte equality with it is tested (tests/test_chat_ref.c).
 */
#ifndef Q3_CHAT_H
#define Q3_CHAT_H

#include "error.h"
#include "strbuf.h"

typedef struct chat_msg {
    const char *role;    /* "system", "user", "assistant" or "tool"; borrowed */
    const char *content; /* borrowed */
} chat_msg;

/* Appends the rendered prompt to out. An unknown role is an error. */
int chat_render(strbuf *out, const chat_msg *msgs, int n_msgs, int add_generation_prompt,
                int enable_thinking, errbuf *err);

#endif
