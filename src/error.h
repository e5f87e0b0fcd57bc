/*
 * error.h - error reports carried back to the caller.
 *
 * Functions that can fail take an `errbuf *` and return an int: 0 on success,
 * negative on failure, with a sentence in errbuf.msg that a user understands
 * and that names the file, line, field or entry at fault. Only main() and the
 * CLI layer print it. errorf() returns -1 so that a failure reads
 *     return errorf(err, "%s: line %d: ...", path, line);
 * The errbuf pointer may be NULL when the caller does not want the text.
 */
#ifndef Q3_ERROR_H
#define Q3_ERROR_H

#include <stdarg.h>

typedef struct errbuf {
    char msg[1024];
} errbuf;

/* Sets the message; returns -1. */
int errorf(errbuf *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int verrorf(errbuf *err, const char *fmt, va_list ap);

/* Prepends "context: " to the message already in err; returns -1. Used to
 * add the outer context (a file name) to an error reported deeper down. */
int error_prefix(errbuf *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* 0 when dir is an existing folder; otherwise -1 with "DIR: no such folder
 * (WHAT)" or "DIR: not a folder (WHAT)", so that a mistyped model path is
 * reported as the folder, not as the first file looked for inside it. */
int error_check_folder(errbuf *err, const char *dir, const char *what);

/* Clears the message. */
void error_clear(errbuf *err);

#endif
