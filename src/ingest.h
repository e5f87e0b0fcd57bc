/*
 * ingest.h - documents out of a job's inputs, one at a time.
 *
 * ingest_run() walks the job's inputs in order and hands each document to a
 * callback, so a corpus of millions of documents never sits in memory: at
 * any moment only the current document (one JSONL line, one file, one
 * archive entry, at most max_doc_bytes) is held.
 *
 * What becomes a document (format: auto picks by file type and name):
 *   folder       every regular file whose path below the folder matches an
 *                include pattern, recursively, in byte-wise sorted order; each
 *                file is then read as auto would (so a folder may hold JSONL
 *                files and archives too when the patterns let them in).
 *                Names starting with '.' and symlinks to folders are skipped.
 *   archive      .tar .tgz .tar.gz .tar.bz2 .tar.xz .tar.zst .tar.lz4 .zip .7z
 *                .cpio .iso .rar (any format libarchive detects): each regular
 *                entry matching an include pattern is one document, named
 *                "archive.tar.gz!dir/entry.txt". Entries with a path component
 *                starting with '.' (macOS' __MACOSX/._x) are skipped.
 *   jsonl        .jsonl .ndjson, also compressed (.jsonl.gz, .jsonl.zst, ...):
 *                one document per line; text from text_field, id from id_field
 *                (string or integer) or else the SHA-256 of the text; the whole
 *                object is the document's fields for the template. Blank lines
 *                are skipped; a trailing CR is dropped. In auto format a file
 *                whose first line is an object with "custom_id" and "body" is
 *                read as openai-batch.
 *   openai-batch OpenAI Batch API request lines {"custom_id", "method": "POST",
 *                "url": "/v1/chat/completions", "body": {"messages": [...], ...}}:
 *                the document is the message list (text is NULL), the id is
 *                custom_id, and body's max_completion_tokens / max_tokens,
 *                temperature, top_p, top_k, min_p, presence_penalty, seed and
 *                chat_template_kwargs.enable_thinking override the job.
 *   text         anything else (also single compressed files, .txt.gz): the
 *                whole file is one document, id the SHA-256 of its text.
 *
 * Include patterns are fnmatch(3) patterns without FNM_PATHNAME, matched
 * against the path inside the folder or archive, so "*.txt" matches
 * "a/b/c.txt" as well.
 *
 * Bad input never stops ingest: an unreadable file, a malformed JSON line, a
 * missing or non-string field, invalid UTF-8, a NUL byte, an empty document,
 * a corrupt or truncated archive or entry, a document over max_doc_bytes
 * (read up to the limit, never allocated at a claimed size) each become a
 * failed document (doc->error set) delivered to the same callback. A text
 * starting with a UTF-8 byte order mark loses the mark.
 */
#ifndef Q3_INGEST_H
#define Q3_INGEST_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "job.h"

enum ingest_kind { INGEST_TEXT = 0, INGEST_JSONL, INGEST_OPENAI_BATCH };

/* Per-document settings from an OpenAI batch request; `set` says which. */
enum {
    INGEST_SET_MAX_NEW_TOKENS = 1 << 0,
    INGEST_SET_TEMPERATURE = 1 << 1,
    INGEST_SET_TOP_P = 1 << 2,
    INGEST_SET_TOP_K = 1 << 3,
    INGEST_SET_MIN_P = 1 << 4,
    INGEST_SET_PRESENCE_PENALTY = 1 << 5,
    INGEST_SET_SEED = 1 << 6,
    INGEST_SET_MODE = 1 << 7,
};

typedef struct ingest_overrides {
    unsigned set;
    int max_new_tokens;
    double temperature, top_p;
    int top_k;
    double min_p, presence_penalty; /* presence_penalty may be -2..2 here, as in OpenAI's API */
    uint64_t seed;
    enum job_mode mode;
} ingest_overrides;

/* One document. Every pointer is borrowed and valid only during the call. */
typedef struct ingest_doc {
    enum ingest_kind kind;
    int input;          /* index into job->inputs */
    const char *source; /* "docs/a.txt", "data.jsonl:17", "c.tar.gz!x/y.md"; paths
                           relative to the job folder when the job gave them so */
    const char *id;     /* id field, custom_id or SHA-256 hex of the text; for a
                           failed document whose id is unknown: the source */
    const char *text;   /* UTF-8, NUL-terminated, text_len bytes; NULL for batch */
    size_t text_len;
    const json_t *messages; /* openai-batch: [{"role", "content": string}], roles
                               system/user/assistant; else NULL */
    const json_t *fields;   /* JSONL and batch: the line's object; else NULL */
    ingest_overrides overrides;
    const char *error; /* NULL, or why this document failed (names file:line
                          or archive!entry) */
} ingest_doc;

/* Returns 0 to go on; anything else stops ingest_run, which returns it. */
typedef int (*ingest_fn)(const ingest_doc *doc, void *ctx);

/*
 * Checks that every input exists (a glob must match something) and that an
 * explicit format fits (folder vs file). A missing input is a configuration
 * error naming the job file's line and column: -1 with err, before anything
 * is read. ingest_run calls it first.
 */
int ingest_check(const job *j, errbuf *err);

/*
 * Delivers every document of every input, in a deterministic order, to fn.
 * Returns 0 when all inputs were read (failed documents included), -1 on a
 * configuration error (see ingest_check), or fn's nonzero value.
 */
int ingest_run(const job *j, ingest_fn fn, void *ctx, errbuf *err);

/*
 * The chat messages for a good document, as a new JSON array the caller
 * owns: [{"role":"system",...} when the job has a system prompt,
 * {"role":"user","content": rendered template}]; for an openai-batch
 * document a copy of its own messages (the job's prompt does not apply: a
 * request is self-contained). -1 with err when the template names a field
 * the document lacks.
 */
int ingest_doc_messages(const job *j, const ingest_doc *doc, json_t **messages, errbuf *err);

/* The job's sampling and mode with the document's overrides applied. */
void ingest_doc_settings(const job *j, const ingest_doc *doc, job_sampling *sampling,
                         enum job_mode *mode);

/*
 * The document's ledger key: SHA-256 hex over the job's configuration hash
 * (job_config_hash), the document id, its effective mode and sampling
 * (overrides applied) and its final chat messages (compact JSON, keys
 * sorted). Equal keys mean equal outputs, so a rerun skips them; a changed
 * prompt, setting, model or text gives a new key. Documents with the same
 * id and content collapse into one key.
 *
 * Returns 0 for a good document; then *messages (when messages is not NULL)
 * receives the rendered messages, owned by the caller. Returns 1 for a
 * failed document (doc->error, or a template field it lacks, as in
 * ingest_doc_messages), with the reason in err and a key over the
 * configuration hash and the source only, so that the same failure is
 * recorded once however often it is seen.
 */
int ingest_doc_key(const job *j, const char *config_hash, const ingest_doc *doc,
                   char key[SHA256_HEX_SIZE], json_t **messages, errbuf *err);

/* Byte offset of the first invalid UTF-8 sequence in s[0..n), or n when it is
 * all valid (no overlongs, surrogates or code points above U+10FFFF). */
size_t ingest_utf8_check(const char *s, size_t n);

#endif
