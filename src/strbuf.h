/*
 * strbuf.h - a growable byte buffer, always NUL-terminated (after git's).
 *
 * strbuf sb = STRBUF_INIT; sb_addf(&sb, "%d", n); use sb.buf / sb.len;
 * sb_release(&sb). Allocation failure aborts: a batch tool that cannot
 * grow a string buffer has nothing sensible left to do, and every caller
 * checking would bury the logic. sb.buf may hold NUL bytes (len is the truth).
 */
#ifndef Q3_STRBUF_H
#define Q3_STRBUF_H

#include <stdarg.h>
#include <stddef.h>

typedef struct strbuf {
    char *buf;
    size_t len;
    size_t alloc;
} strbuf;

#define STRBUF_INIT {NULL, 0, 0}

void sb_init(strbuf *sb);
void sb_release(strbuf *sb);
void sb_reset(strbuf *sb);                 /* len = 0, keeps the memory */
void sb_grow(strbuf *sb, size_t extra);    /* room for extra more bytes */
void sb_add(strbuf *sb, const void *data, size_t n);
void sb_adds(strbuf *sb, const char *s);
void sb_addc(strbuf *sb, char c);
void sb_addf(strbuf *sb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void sb_vaddf(strbuf *sb, const char *fmt, va_list ap);
/* Hands the buffer to the caller (who frees it) and resets sb. */
char *sb_detach(strbuf *sb, size_t *len);

/* Reads a whole file; returns 0 or -1 with errno set. */
int sb_read_file(strbuf *sb, const char *path);

#endif
