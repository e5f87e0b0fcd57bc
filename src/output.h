/*
 * output.h - the results file: one JSON line per finished document, written
 * so that after any crash it holds exactly the documents the ledger has done,
 * each once, with no torn line.
 *
 * Protocol (the ledger is the truth):
 *   1. out_write_doc appends the document's line at the committed end of
 *      the file, fdatasyncs it and returns the new end offset;
 *   2. the caller commits the document in the ledger with that offset
 *      (ledger_output.jsonl_end, ledger_finish_doc), which is what makes the
 *      line count;
 *   3. out_open, on the next run, cuts the file back to the ledger's
 *      jsonl_end: a line that was written but not committed (crash between
 *      1 and 2) or torn (crash during 1) is dropped, and its document, still
 *      pending, is done again. When the file is missing, shorter than the
 *      ledger says, or its last committed line is not what the ledger's last
 *      done document renders to (edited file, changed format), out_open
 *      rewrites it from the ledger (to "<path>.tmp", fsync, rename) and
 *      records the new offsets in the ledger.
 * out_finish_doc does 1 and 2 in one call and, if the ledger commit fails,
 * cuts the line off again, so a caller cannot get them out of step.
 * Failed documents are not written (they are in the ledger and in status).
 *
 * Records (keys in this order, compact, UTF-8, one per line):
 *   jsonl:        {"id", "source", "content", "reasoning_content" (only with
 *                  include_reasoning; null when none), "finish_reason",
 *                  "thinking_truncated", "prompt_tokens", "completion_tokens",
 *                  "seconds"}
 *   openai-batch: the OpenAI Batch API output line: {"id": "batch_req_...",
 *                  "custom_id": id, "response": {"status_code": 200,
 *                  "request_id": key, "body": chat.completion object with
 *                  choices[0].message {role, content, reasoning_content (with
 *                  include_reasoning)}, finish_reason, usage}}, "error": null}
 *
 * The writer needs the ledger's lock (ledger_lock) held by the caller.
 */
#ifndef Q3_OUTPUT_H
#define Q3_OUTPUT_H

#include <stdint.h>
#include <stdio.h>

#include "error.h"
#include "ledger.h"
#include "strbuf.h"

enum out_format { OUT_JSONL = 0, OUT_OPENAI_BATCH }; /* same values as job_output_format */

typedef struct out out;

/* Opens the results file at path for appending, after recovering it as
 * described above. l is borrowed and must outlive o. *o is NULL on failure.
 * *regenerated (may be NULL) is set to 1 when the file was rewritten. */
int out_open(out **o, const char *path, ledger *l, enum out_format format, int include_reasoning,
             int *regenerated, errbuf *err);

/* Closes the file (its content is already durable). NULL is harmless. */
void out_close(out *o);

/* The committed size of the file: where the next line goes. */
int64_t out_end(const out *o);

/*
 * Appends one line for doc (only key, doc_id, source, content, reasoning,
 * finish_reason, thinking_truncated, prompt_tokens, completion_tokens,
 * seconds and finished_at are read) at out_end, fdatasyncs, and sets
 * *end_offset to the end of the new line. The line counts once the caller
 * commits the document with jsonl_end = *end_offset; until then the next
 * out_write_doc or out_rollback overwrites it. On a write error the file is
 * cut back to out_end and -1 returned.
 */
int out_write_doc(out *o, const ledger_doc *doc, int64_t *end_offset, errbuf *err);

/* Marks the line ending at end_offset as committed (the ledger has it). */
void out_committed(out *o, int64_t end_offset);

/* Cuts the file back to out_end (drops an uncommitted line). */
int out_rollback(out *o, errbuf *err);

/*
 * Records a finished document: for finish_reason "stop"/"length" writes its
 * line (out_write_doc) and commits it in the ledger with ledger_finish_doc
 * and the new offset; for "error" only the ledger. res->jsonl_end and a zero
 * res->finished_at are filled in here. On failure nothing counts: the line
 * is cut off again and the document stays pending.
 */
int out_finish_doc(out *o, const char *key, const char *doc_id, const char *source,
                   const ledger_output *res, errbuf *err);

/* Renders one record (no newline) into sb (appended). model names the model
 * in OpenAI-batch records (NULL: "qwen3"). */
void out_render(const ledger_doc *doc, enum out_format format, int include_reasoning,
                const char *model, strbuf *sb);

/* Writes every done document of the ledger, in finish order, to f in the
 * given format (export). *n_docs (may be NULL) receives the count. Works on a
 * ledger opened with ledger_open_existing while a run writes. */
int out_export(ledger *l, FILE *f, enum out_format format, int include_reasoning, int64_t *n_docs,
               errbuf *err);

#endif
