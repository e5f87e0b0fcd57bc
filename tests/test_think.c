/* test_think.c - reasoning/answer splitting in both modes. */
#include <string.h>

#include "check.h"
#include "think.h"

static void split(const char *text, int thinking, const char *want_reasoning,
                  const char *want_content, int want_unclosed)
{
    think_parts p;
    think_split(text, strlen(text), thinking, &p);
    CHECK_STR_EQ(p.reasoning.buf ? p.reasoning.buf : "", want_reasoning);
    CHECK_STR_EQ(p.content.buf ? p.content.buf : "", want_content);
    CHECK_INT_EQ(p.unclosed, want_unclosed);
    think_parts_free(&p);
}

int main(void)
{
    /* Thinking mode: the usual shape. */
    split("<think>\nLet me see.\n</think>\n\nThe answer is 4.", 1, "Let me see.",
          "The answer is 4.", 0);
    /* Cut off while thinking. */
    split("<think>\nStill thinking about", 1, "Still thinking about", "", 1);
    /* Opening tag in the prompt (template variants): only the close appears. */
    split("reasoning only\n</think>\n\nAnswer.", 1, "reasoning only", "Answer.", 0);
    /* No thinking at all. */
    split("Just an answer.", 1, "", "Just an answer.", 0);
    /* Budget stop sentence stays in the reasoning; the answer follows. */
    split("<think>\nhmm" THINK_EARLY_STOP "Final.", 1,
          "hmm\n\nConsidering the limited time by the user, I have to give the solution based "
          "on the thinking directly now.",
          "Final.", 0);
    /* A second block after the answer does not leak. */
    split("<think>a</think>\n\nX <think>b</think> Y", 1, "a\n\nb", "X  Y", 0);
    /* Non-thinking: stray tags never reach content. */
    split("Plain answer.\n", 0, "", "Plain answer.", 0);
    split("<think>\n\n</think>\n\nAnswer.", 0, "", "Answer.", 0);
    split("<think>\nsneaky\n</think>\n\nAnswer.", 0, "sneaky", "Answer.", 0);
    split("Answer.</think>", 0, "", "Answer.", 0);
    split("A <think>unclosed", 0, "unclosed", "A ", 0);
    split("", 0, "", "", 0);
    split("", 1, "", "", 0);
    return check_exit("test_think");
}
