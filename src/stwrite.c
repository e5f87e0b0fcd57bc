/*
 * stwrite.c - see stwrite.h.
 */
#include "stwrite.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strbuf.h"

struct st_entry {
    char *name;
    enum model_dtype dtype;
    int n_dims;
    int64_t shape[4];
    void *data;
    size_t n_bytes;
};

void st_init(st_writer *w) { memset(w, 0, sizeof *w); }

void st_free(st_writer *w)
{
    for (int i = 0; i < w->n; i++) {
        free(w->entries[i].name);
        free(w->entries[i].data);
    }
    free(w->entries);
    memset(w, 0, sizeof *w);
}

int st_add(st_writer *w, const char *name, enum model_dtype dtype, int n_dims,
           const int64_t *shape, const void *data, size_t n_bytes, errbuf *err)
{
    size_t count = 1;
    for (int i = 0; i < n_dims; i++)
        count *= (size_t)shape[i];
    size_t es = dtype == MODEL_F32 || dtype == MODEL_I32 ? 4 : 2;
    if (n_dims > 4 || count * es != n_bytes)
        return errorf(err, "tensor %s: %zu bytes do not match its shape", name, n_bytes);
    if (w->n == w->cap) {
        int cap = w->cap ? w->cap * 2 : 32;
        struct st_entry *p = realloc(w->entries, sizeof *p * (size_t)cap);
        if (!p)
            return errorf(err, "out of memory");
        w->entries = p;
        w->cap = cap;
    }
    struct st_entry *e = &w->entries[w->n];
    e->name = strdup(name);
    e->data = malloc(n_bytes ? n_bytes : 1);
    if (!e->name || !e->data) {
        free(e->name);
        free(e->data);
        return errorf(err, "out of memory");
    }
    memcpy(e->data, data, n_bytes);
    e->dtype = dtype;
    e->n_dims = n_dims;
    memcpy(e->shape, shape, sizeof(int64_t) * (size_t)n_dims);
    e->n_bytes = n_bytes;
    w->n++;
    return 0;
}

int st_write_file(const st_writer *w, const char *path, errbuf *err)
{
    static const char *names[] = {"F32", "F16", "BF16", "I32"};
    strbuf h = STRBUF_INIT;
    sb_addc(&h, '{');
    size_t off = 0;
    for (int i = 0; i < w->n; i++) {
        const struct st_entry *e = &w->entries[i];
        sb_addf(&h, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[", i ? "," : "", e->name,
                names[e->dtype]);
        for (int k = 0; k < e->n_dims; k++)
            sb_addf(&h, "%s%lld", k ? "," : "", (long long)e->shape[k]);
        sb_addf(&h, "],\"data_offsets\":[%zu,%zu]}", off, off + e->n_bytes);
        off += e->n_bytes;
    }
    sb_addc(&h, '}');
    while (h.len % 8)
        sb_addc(&h, ' ');
    FILE *f = fopen(path, "wb");
    if (!f) {
        sb_release(&h);
        return errorf(err, "%s: %s", path, strerror(errno));
    }
    uint64_t n = h.len; /* little endian on every machine we build for */
    int ok = fwrite(&n, 8, 1, f) == 1 && fwrite(h.buf, 1, h.len, f) == h.len;
    for (int i = 0; ok && i < w->n; i++)
        ok = fwrite(w->entries[i].data, 1, w->entries[i].n_bytes, f) == w->entries[i].n_bytes;
    ok = (fclose(f) == 0) && ok;
    sb_release(&h);
    return ok ? 0 : errorf(err, "%s: write failed: %s", path, strerror(errno));
}
