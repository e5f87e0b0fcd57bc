/* test_progress.c - the run's progress lines and the ETA model that they
 * share with `status` (progress_eta). */
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "progress.h"

static int near(double a, double b)
{
    return a > b - 1e-9 && a < b + 1e-9;
}

/* The JSON line progress_update writes for c. */
static void json_line(const progress_counts *c, char *buf, size_t n)
{
    FILE *f = tmpfile();
    progress p;
    progress_init(&p, PROGRESS_JSON, f, 10.0);
    progress_update(&p, c, 1);
    rewind(f);
    if (!fgets(buf, (int)n, f))
        buf[0] = 0;
    fclose(f);
}

int main(void)
{
    /* No pace yet; nothing pending. */
    CHECK(progress_eta(0, 0, 0, 0, 5, 100, 0) < 0);
    CHECK(progress_eta(10, 100, 0, 0, 5, 100, 0) < 0);
    CHECK(progress_eta(10, 100, 2, 20, 0, 0, 0) == 0);
    /* 10 s for 100 tokens (0.1 s each); 2 documents done with 20 completion
     * tokens (10 each); 3 pending with 200 prompt tokens, 30 completion
     * tokens still to come, 5 of them generated already: 225 tokens. */
    CHECK_MSG(near(progress_eta(10, 100, 2, 20, 3, 200, 5), 22.5), "%g",
              progress_eta(10, 100, 2, 20, 3, 200, 5));
    /* Without token figures: per document. */
    CHECK(near(progress_eta(10, 0, 2, 0, 3, 0, 0), 15.0));
    /* Nothing can be negative: more in flight than expected, prompts over-counted. */
    CHECK(near(progress_eta(10, 100, 2, 20, 1, -50, 40), 0.0));

    /* A length-sorted run near its end: 1,878 short documents took 458 s;
     * 122 long ones remain with 1.8 M prompt tokens. A per-document pace
     * says 30 s; the token pace says what the prompts cost. */
    progress_counts c = {.docs_total = 2000,
                         .docs_done = 1878,
                         .prompt_tokens = 4611534,
                         .generated_tokens = 480768,
                         .elapsed = 458.0,
                         .prompt_tokens_total = 6448430,
                         .prompt_tokens_started = 4611534 + 39438,
                         .completion_tokens_done = 480768};
    double want = 458.0 / (4611534.0 + 480768.0) * ((6448430.0 - 4611534 - 39438) + 256.0 * 122);
    char line[512];
    json_line(&c, line, sizeof line);
    char expect[64];
    snprintf(expect, sizeof expect, "\"eta_s\":%.0f,", want);
    CHECK_MSG(strstr(line, expect) != NULL, "%s lacks %s", line, expect);
    CHECK(want > 160 && want < 170);

    /* Without the token totals (an older caller): the per-document pace. */
    c.prompt_tokens_total = 0;
    json_line(&c, line, sizeof line);
    snprintf(expect, sizeof expect, "\"eta_s\":%.0f,", 458.0 / 1878 * 122);
    CHECK_MSG(strstr(line, expect) != NULL, "%s lacks %s", line, expect);

    /* Failed documents do not count towards the mean completion. */
    c.prompt_tokens_total = 6448430;
    c.docs_failed = 878; /* 1,000 succeeded with all 480,768 completion tokens */
    json_line(&c, line, sizeof line);
    want = 458.0 / (4611534.0 + 480768.0) * ((6448430.0 - 4611534 - 39438) + 480768.0 / 1000 * 122);
    snprintf(expect, sizeof expect, "\"eta_s\":%.0f,", want);
    CHECK_MSG(strstr(line, expect) != NULL, "%s lacks %s", line, expect);
    return check_exit("test_progress");
}
