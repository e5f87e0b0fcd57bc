/* stwrite.c - see stwrite.h. */
#include "stwrite.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strbuf.h"

void stw_init(stwriter *w)
{
    memset(w, 0, sizeof *w);
}

void stw_free(stwriter *w)
{
    for (int i = 0; i < w->n_tensors; i++) {
        free(w->tensors[i].name);
        free(w->tensors[i].data);
    }
    free(w->tensors);
    memset(w, 0, sizeof *w);
}

size_t stw_dtype_size(enum model_dtype dtype)
{
    return dtype == MODEL_F16 || dtype == MODEL_BF16 ? 2 : 4;
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        fputs("stwrite: out of memory\n", stderr);
        abort();
    }
    return p;
}

void stw_add(stwriter *w, const char *name, enum model_dtype dtype, int n_dims,
             const int64_t *shape, const void *data)
{
    size_t numel = 1;
    for (int i = 0; i < n_dims; i++)
        numel *= (size_t)shape[i];
    size_t n_bytes = numel * stw_dtype_size(dtype);
    void *copy = xmalloc(n_bytes);
    memcpy(copy, data, n_bytes);
    stw_add_owned(w, name, dtype, n_dims, shape, copy);
}

void stw_add_owned(stwriter *w, const char *name, enum model_dtype dtype, int n_dims,
                   const int64_t *shape, void *data)
{
    if (w->n_tensors == w->alloc) {
        w->alloc = w->alloc ? 2 * w->alloc : 16;
        stw_tensor *t = realloc(w->tensors, (size_t)w->alloc * sizeof *t);
        if (!t) {
            fputs("stwrite: out of memory\n", stderr);
            abort();
        }
        w->tensors = t;
    }
    stw_tensor *t = &w->tensors[w->n_tensors++];
    memset(t, 0, sizeof *t);
    t->name = strdup(name);
    t->dtype = dtype;
    t->n_dims = n_dims;
    size_t numel = 1;
    for (int i = 0; i < n_dims; i++) {
        t->shape[i] = shape[i];
        numel *= (size_t)shape[i];
    }
    t->n_bytes = numel * stw_dtype_size(dtype);
    t->data = data;
}

int stw_write(const stwriter *w, const char *path, errbuf *err)
{
    json_t *header = json_object();
    size_t offset = 0;
    for (int i = 0; i < w->n_tensors; i++) {
        const stw_tensor *t = &w->tensors[i];
        json_t *shape = json_array();
        for (int d = 0; d < t->n_dims; d++)
            json_array_append_new(shape, json_integer(t->shape[d]));
        json_t *entry =
            json_pack("{s:s, s:o, s:[I, I]}", "dtype", model_dtype_name(t->dtype), "shape", shape,
                      "data_offsets", (json_int_t)offset, (json_int_t)(offset + t->n_bytes));
        json_object_set_new(header, t->name, entry);
        offset += t->n_bytes;
    }
    json_object_set_new(header, "__metadata__", json_pack("{s:s}", "format", "pt"));
    char *text = json_dumps(header, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(header);
    if (!text)
        return errorf(err, "%s: could not build the header", path);
    strbuf hb = STRBUF_INIT;
    sb_adds(&hb, text);
    free(text);
    /* pad so the data section, and with it every tensor, starts 8-aligned */
    while ((8 + hb.len) % 8)
        sb_addc(&hb, ' ');
    unsigned char len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (unsigned char)((uint64_t)hb.len >> (8 * i));

    FILE *f = fopen(path, "wb");
    if (!f) {
        sb_release(&hb);
        return errorf(err, "%s: %s", path, strerror(errno));
    }
    int ok = fwrite(len8, 1, 8, f) == 8 && fwrite(hb.buf, 1, hb.len, f) == hb.len;
    for (int i = 0; ok && i < w->n_tensors; i++)
        ok = fwrite(w->tensors[i].data, 1, w->tensors[i].n_bytes, f) == w->tensors[i].n_bytes;
    int e = errno;
    sb_release(&hb);
    if (fclose(f) != 0 && ok) {
        e = errno;
        ok = 0;
    }
    if (!ok)
        return errorf(err, "%s: write failed: %s", path, strerror(e));
    return 0;
}
