/* error.c - see error.h. */
#include "error.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

int verrorf(errbuf *err, const char *fmt, va_list ap)
{
    if (err)
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    return -1;
}

int errorf(errbuf *err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    verrorf(err, fmt, ap);
    va_end(ap);
    return -1;
}

int error_prefix(errbuf *err, const char *fmt, ...)
{
    if (!err)
        return -1;
    char prefix[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    char old[sizeof err->msg];
    memcpy(old, err->msg, sizeof old);
    /* Truncation is fine here: the message is for a person. */
    size_t n = strlen(prefix);
    if (n > sizeof err->msg - 3)
        n = sizeof err->msg - 3;
    memcpy(err->msg, prefix, n);
    memcpy(err->msg + n, ": ", 2);
    size_t rest = sizeof err->msg - n - 3;
    size_t m = strnlen(old, rest);
    memcpy(err->msg + n + 2, old, m);
    err->msg[n + 2 + m] = '\0';
    return -1;
}

void error_clear(errbuf *err)
{
    if (err)
        err->msg[0] = '\0';
}

int error_check_folder(errbuf *err, const char *dir, const char *what)
{
    struct stat st;
    if (stat(dir, &st) != 0)
        return errorf(err, "%s: %s (%s)", dir, errno == ENOENT ? "no such folder" : strerror(errno),
                      what);
    if (!S_ISDIR(st.st_mode))
        return errorf(err, "%s: not a folder (%s)", dir, what);
    return 0;
}
