/* test_error.c - errbuf and strbuf. */
#include "check.h"
#include "error.h"
#include "strbuf.h"

#include <stdlib.h>

int main(void)
{
    errbuf err;
    CHECK(errorf(&err, "%s: line %d", "a.yaml", 3) == -1);
    CHECK_STR_EQ(err.msg, "a.yaml: line 3");
    CHECK(error_prefix(&err, "job %s", "x") == -1);
    CHECK_STR_EQ(err.msg, "job x: a.yaml: line 3");
    CHECK(errorf(NULL, "ignored") == -1);

    strbuf sb = STRBUF_INIT;
    for (int i = 0; i < 1000; i++)
        sb_addf(&sb, "%d,", i);
    CHECK(sb.len == 3890);
    CHECK(strncmp(sb.buf, "0,1,2,", 6) == 0);
    sb_add(&sb, "\0x", 2);
    CHECK(sb.len == 3892 && sb.buf[3890] == '\0' && sb.buf[3891] == 'x');
    size_t n;
    char *p = sb_detach(&sb, &n);
    CHECK(n == 3892 && sb.buf == NULL && sb.len == 0);
    free(p);
    return check_exit("test_error");
}
