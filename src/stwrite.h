/*
 * stwrite.h - writes safetensors files (the inverse of model.c's reader).
 *
 * Collect tensors with stw_add() (the writer copies the data), then write
 * them with stw_write(): an 8-byte little-endian header length, the JSON
 * header {name: {dtype, shape, data_offsets}} padded with spaces to a
 * multiple of 8 so that every tensor starts 8-byte aligned, then the data in
 * the order added. Used by make-demo-model and the tests.
 *
 *     stwriter w; stw_init(&w);
 *     stw_add(&w, "model.norm.weight", MODEL_BF16, 1, (int64_t[]){64}, bits);
 *     if (stw_write(&w, path, err)) ...;
 *     stw_free(&w);
 */
#ifndef Q3_STWRITE_H
#define Q3_STWRITE_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "model.h"

typedef struct stw_tensor {
    char *name;
    enum model_dtype dtype;
    int n_dims;
    int64_t shape[4];
    void *data; /* owned copy */
    size_t n_bytes;
} stw_tensor;

typedef struct stwriter {
    stw_tensor *tensors;
    int n_tensors, alloc;
} stwriter;

void stw_init(stwriter *w);
void stw_free(stwriter *w);

/* Element size of a dtype in bytes. */
size_t stw_dtype_size(enum model_dtype dtype);

/* Adds a tensor of n_dims (1..4) dimensions; copies name and data
 * (prod(shape) * element size bytes). Aborts on allocation failure. */
void stw_add(stwriter *w, const char *name, enum model_dtype dtype, int n_dims,
             const int64_t *shape, const void *data);

/* Same, but takes ownership of data (malloc'd; freed by stw_free) instead of
 * copying it: for the large embedding tables. */
void stw_add_owned(stwriter *w, const char *name, enum model_dtype dtype, int n_dims,
                   const int64_t *shape, void *data);

/* Writes every tensor added so far to path (created or truncated). */
int stw_write(const stwriter *w, const char *path, errbuf *err);

#endif
