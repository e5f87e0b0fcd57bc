/*
 * cmd_util.h - option parsing and output shared by the commands.
 *
 * Each parser reads a whole option value strictly (no trailing junk, range
 * checked) and returns 0, or -1 with a sentence for the user in err that
 * names the option.
 */
#ifndef Q3_CMD_UTIL_H
#define Q3_CMD_UTIL_H

#include <jansson.h>
#include <stdint.h>

#include "engine.h"
#include "error.h"

/* "1,2,3" -> *ids (malloc'ed, caller frees), *n >= 1. */
int cmdu_parse_ids(const char *opt, const char *s, int32_t **ids, int *n, errbuf *err);

/* An integer in [lo, hi]. */
int cmdu_parse_int(const char *opt, const char *s, long long lo, long long hi, long long *out,
                   errbuf *err);

/* A finite float in [lo, hi]. */
int cmdu_parse_float(const char *opt, const char *s, double lo, double hi, float *out, errbuf *err);

/* "cpu", "cuda" or "auto". */
int cmdu_parse_backend(const char *opt, const char *s, enum eng_backend *out, errbuf *err);

/* Monotonic seconds, for timings. */
double cmdu_now(void);

/* Prints o as one line on stdout (jansson dump flags) and drops the caller's
 * reference to it; -1 with "out of memory" in err when it cannot be encoded. */
int cmdu_print_json(json_t *o, size_t flags, errbuf *err);

/* Writes n floats to path as float32 little endian. */
int cmdu_write_f32(const char *path, const float *data, size_t n, errbuf *err);

#endif
