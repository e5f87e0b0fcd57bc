/*
 * cmd_util.c - see cmd_util.h.
 */
#include "cmd_util.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int cmdu_parse_ids(const char *opt, const char *s, int32_t **ids, int *n, errbuf *err)
{
    int cap = 16, count = 0, index = 0;
    int32_t *out = malloc(sizeof *out * (size_t)cap);
    if (!out)
        return errorf(err, "out of memory");
    const char *p = s;
    while (*p) {
        char *end;
        errno = 0;
        long long v = strtoll(p, &end, 10);
        if (end == p || errno || v < 0 || v > INT32_MAX || (*end && *end != ',')) {
            free(out);
            return errorf(err,
                          "%s: entry %d of '%s' is not a token id (expected a "
                          "comma-separated list of non-negative integers)",
                          opt, index + 1, s);
        }
        if (count == cap) {
            int32_t *grown = realloc(out, sizeof *out * (size_t)(cap *= 2));
            if (!grown) {
                free(out);
                return errorf(err, "out of memory");
            }
            out = grown;
        }
        out[count++] = (int32_t)v;
        index++;
        p = *end == ',' ? end + 1 : end;
        if (*end == ',' && !*p) {
            free(out);
            return errorf(err, "%s: '%s' ends with a comma", opt, s);
        }
    }
    if (!count) {
        free(out);
        return errorf(err, "%s: no token ids given", opt);
    }
    *ids = out;
    *n = count;
    return 0;
}

int cmdu_parse_int(const char *opt, const char *s, long long lo, long long hi, long long *out,
                   errbuf *err)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (end == s || *end || errno || v < lo || v > hi)
        return errorf(err, "%s: '%s' is not an integer from %lld to %lld", opt, s, lo, hi);
    *out = v;
    return 0;
}

int cmdu_parse_float(const char *opt, const char *s, double lo, double hi, float *out, errbuf *err)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end || errno || !isfinite(v) || v < lo || v > hi)
        return errorf(err, "%s: '%s' is not a number from %g to %g", opt, s, lo, hi);
    *out = (float)v;
    return 0;
}

int cmdu_parse_backend(const char *opt, const char *s, enum eng_backend *out, errbuf *err)
{
    if (!strcmp(s, "cpu"))
        *out = ENG_BACKEND_CPU;
    else if (!strcmp(s, "cuda"))
        *out = ENG_BACKEND_CUDA;
    else if (!strcmp(s, "auto"))
        *out = ENG_BACKEND_AUTO;
    else
        return errorf(err, "%s: '%s' is not a backend (cpu, cuda or auto)", opt, s);
    return 0;
}

double cmdu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int cmdu_write_f32(const char *path, const float *data, size_t n, errbuf *err)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "cmdu_write_f32 writes the host's floats as they are: add a byte swap for big endian"
#endif
    FILE *f = fopen(path, "wb");
    if (!f)
        return errorf(err, "%s: cannot create: %s", path, strerror(errno));
    size_t wrote = fwrite(data, sizeof *data, n, f);
    int write_errno = errno;
    if (fclose(f) || wrote != n)
        return errorf(err, "%s: cannot write: %s", path,
                      strerror(wrote != n ? write_errno : errno));
    return 0;
}

int cmdu_print_json(json_t *o, size_t flags, errbuf *err)
{
    char *text = o ? json_dumps(o, flags) : NULL;
    json_decref(o);
    if (!text)
        return errorf(err, "out of memory");
    puts(text);
    free(text);
    return 0;
}
