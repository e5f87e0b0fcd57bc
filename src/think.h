/*
 * think.h - Qwen3 thinking: splitting reasoning from the answer, and the
 * thinking budget.
 *
 * In thinking mode Qwen3 writes "<think>\n...reasoning...\n</think>\n\n" and
 * then the answer. think_split() separates the two the way transformers'
 * reasoning parsers do (text between the tags is reasoning_content, the rest
 * is content, surrounding newlines trimmed). A generation cut off before
 * "</think>" has reasoning and no content.
 *
 * In non-thinking mode the prompt already holds the empty think block; the
 * model should not think, but a stray "<think>...</think>" (or a lone tag)
 * in its output must not leak into content: think blocks are moved to
 * reasoning and lone tags dropped.
 *
 * The thinking budget: once a sequence has generated `budget` tokens without
 * closing its thought, the scheduler feeds THINK_EARLY_STOP (tokenized) and
 * then lets the model answer, as Qwen documents for budgeted thinking.
 */
#ifndef Q3_THINK_H
#define Q3_THINK_H

#include <stddef.h>

#include "strbuf.h"

/* Qwen's early-stop sentence, closing the thought when the budget runs out. */
#define THINK_EARLY_STOP                                                                           \
    "\n\nConsidering the limited time by the user, I have to give the solution based on the "   \
    "thinking directly now.\n</think>\n\n"

typedef struct think_parts {
    strbuf reasoning; /* owned; empty when the model did not think */
    strbuf content;   /* owned */
    int unclosed;     /* thinking mode: "<think>" never closed (cut off by length) */
} think_parts;

/* Splits a decoded completion. thinking: the job's mode (1 thinking, 0 not).
 * Fills *parts (initialised here; free with think_parts_free). */
void think_split(const char *text, size_t len, int thinking, think_parts *parts);
void think_parts_free(think_parts *parts);

#endif
