/*
 * chat.h - the Qwen3 chat template, in C.
 *
 * Renders messages the way transformers' apply_chat_template renders the
 * Jinja template shipped in Qwen3's tokenizer_config.json (without tools),
 * byte for byte: an optional leading system message, user and assistant
 * turns (and "tool" results, wrapped in <tool_response>), the reasoning of
 * assistant turns before the last user query stripped, the generation
 * prompt, and with enable_thinking false the empty "<think>\n\n</think>\n\n"
 * block after it.
 */
#ifndef Q3_CHAT_H
#define Q3_CHAT_H

#include "error.h"
#include "strbuf.h"

/* role: "system", "user", "assistant" or "tool"; both strings borrowed. */
typedef struct chat_msg {
    const char *role;
    const char *content;
} chat_msg;

/* Appends the rendered prompt to out. Returns 0, or -1 with err naming the
 * message (by index) whose role is unknown or whose content is NULL, or
 * when there are no messages. */
int chat_render(strbuf *out, const chat_msg *msgs, int n_msgs, int add_generation_prompt,
                int enable_thinking, errbuf *err);

#endif
