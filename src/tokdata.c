/* tokdata.c - unpacks the embedded tokenizer archive with libarchive. */
#include "tokdata.h"

#include <archive.h>
#include <archive_entry.h>
#include <stdio.h>
#include <string.h>

extern const unsigned char tokdata_blob[];
extern const unsigned char tokdata_blob_end[];

int tokdata_extract(const char *dir, errbuf *err)
{
    struct archive *a = archive_read_new();
    archive_read_support_filter_xz(a);
    archive_read_support_format_tar(a);
    size_t size = (size_t)(tokdata_blob_end - tokdata_blob);
    if (archive_read_open_memory(a, tokdata_blob, size) != ARCHIVE_OK) {
        errorf(err, "embedded tokenizer: %s", archive_error_string(a));
        archive_read_free(a);
        return -1;
    }
    struct archive_entry *entry;
    int n_written = 0, rc = 0;
    while (rc == 0 && archive_read_next_header(a, &entry) == ARCHIVE_OK) {
        const char *name = archive_entry_pathname(entry);
        if (strcmp(name, "tokenizer.json") && strcmp(name, "tokenizer_config.json"))
            continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, name);
        FILE *f = fopen(path, "wb");
        if (!f) {
            rc = errorf(err, "%s: cannot create", path);
            break;
        }
        char buf[65536];
        la_ssize_t n;
        while ((n = archive_read_data(a, buf, sizeof buf)) > 0)
            if (fwrite(buf, 1, (size_t)n, f) != (size_t)n) {
                n = -1;
                break;
            }
        if (fclose(f) != 0 || n < 0)
            rc = errorf(err, "%s: write failed", path);
        else
            n_written++;
    }
    archive_read_free(a);
    if (rc == 0 && n_written != 2)
        rc = errorf(err, "embedded tokenizer archive is incomplete");
    return rc;
}
