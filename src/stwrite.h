/*
 * stwrite.h - writing safetensors files (for make-demo-model and tests).
 *
 * Collect tensors with st_add (the data is copied), then st_write_file
 * writes the 8-byte header length, the JSON header (padded with spaces to a
 * multiple of 8, as the format recommends) and the data in order.
 */
#ifndef Q3_STWRITE_H
#define Q3_STWRITE_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "model.h"

typedef struct st_writer {
    struct st_entry *entries;
    int n, cap;
} st_writer;

void st_init(st_writer *w);
void st_free(st_writer *w);
/* Adds a tensor (data copied; n_bytes must match dtype and shape). */
int st_add(st_writer *w, const char *name, enum model_dtype dtype, int n_dims,
           const int64_t *shape, const void *data, size_t n_bytes, errbuf *err);
int st_write_file(const st_writer *w, const char *path, errbuf *err);

#endif
