/*
 * job.h - a batch job: the YAML file a user writes, parsed and validated.
 *
 * One file says everything about a job. job_load() reads it with libyaml,
 * checks every key, type, enum value and range, fills in the defaults, and
 * resolves paths against the job file's folder. Every error names the place
 * in the file as "path:line:column: ..." (1-based, column in characters), so
 * a cron mail points straight at the typo. Schema (jobs/summarize.yaml is
 * the commented example):
 *
 *   model: FOLDER                      required; safetensors + config.json
 *   tokenizer: FOLDER                  default: the model folder
 *   inputs:                            required, one or more
 *     - path: PATH                     file, folder, or glob (* ? [...])
 *       format: auto                   auto|jsonl|openai-batch|archive|folder|text
 *       id_field: NAME                 JSONL; default: SHA-256 of the text
 *       text_field: text               JSONL field holding the document
 *       include: ["*.txt", "*.md"]     archive entries / folder files (fnmatch)
 *       max_doc_bytes: 8MiB            larger documents fail (archive bombs)
 *     - other/path                     a bare string is {path: ...}
 *   prompt:                            required
 *     system: TEXT                     optional system message
 *     user: "... {{text}} ..."         required template, see job_render_user
 *     mode: non-thinking               thinking|non-thinking
 *     thinking_budget: 0               thinking tokens before the thought is
 *                                      closed (0 = only max_new_tokens)
 *   sampling:                          defaults follow Qwen3's advice per mode
 *     temperature: 0.7                 0..2 (0 = greedy); thinking 0.6
 *     top_p: 0.8                       (0, 1]; thinking 0.95
 *     top_k: 20                        0..1000000 (0 = off; the CUDA backend
 *                                      keeps at most the 1,024 likeliest)
 *     min_p: 0                         0..1
 *     presence_penalty: 0              0..2
 *     seed: 0                          0..2^63-1; same seed, same document,
 *                                      same output
 *     max_new_tokens: 1024             1..1048576; thinking 4096
 *   batching:
 *     max_batch_tokens: 131072         prompt tokens per prefill batch (16..2^24)
 *     max_context: 32768               prompt + output tokens per document
 *                                      (64..2^20; the runner also caps it at the
 *                                      model's max_position_embeddings)
 *     too_long: truncate               truncate|skip|fail the longer prompts
 *     max_seqs: 0                      sequences decoded at once (0 = auto)
 *   output:
 *     ledger: NAME.ledger.sqlite       default next to the job file
 *     jsonl: NAME.jsonl                default next to the job file
 *     format: jsonl                    jsonl|openai-batch
 *     include_reasoning: false         thinking text in the output records
 *   runtime:
 *     backend: auto                    auto|cpu|cuda
 *     gpu_memory: 0                    bytes or "22GiB", "20000MiB" (0 = all free)
 *     kv_cache: f16                    f16|int8 (CUDA)
 *     threads: 0                       CPU threads (0 = all cores)
 *     max_run_time: 0                  "6h", "90m", "1h30m", "3600s" (0 = none)
 *     progress: auto                   auto|bar|json|none
 *
 * NAME is the job file's name without .yaml/.yml. Sizes take B, KB, MB, GB,
 * TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024), or a plain
 * integer of bytes. Numbers and booleans must be plain (unquoted) scalars;
 * `null`, `~` or an empty value leaves an optional key at its default.
 *
 * Ownership: job_load fills a caller-provided struct whose strings it owns;
 * job_free releases them. A job is read-only after loading.
 */
#ifndef Q3_JOB_H
#define Q3_JOB_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "engine.h"
#include "error.h"
#include "sha256.h"
#include "strbuf.h"

enum job_mode { JOB_NON_THINKING = 0, JOB_THINKING };
enum job_input_format {
    JOB_FORMAT_AUTO = 0, /* by file type: folder, archive extension, .jsonl, else text */
    JOB_FORMAT_JSONL,    /* plain JSONL documents, never sniffed as batch requests */
    JOB_FORMAT_OPENAI_BATCH,
    JOB_FORMAT_ARCHIVE,
    JOB_FORMAT_FOLDER,
    JOB_FORMAT_TEXT, /* the whole file is one document */
};
enum job_too_long { JOB_TOO_LONG_TRUNCATE = 0, JOB_TOO_LONG_SKIP, JOB_TOO_LONG_FAIL };
enum job_output_format { JOB_OUTPUT_JSONL = 0, JOB_OUTPUT_OPENAI_BATCH };
enum job_progress { JOB_PROGRESS_AUTO = 0, JOB_PROGRESS_BAR, JOB_PROGRESS_JSON, JOB_PROGRESS_NONE };

#define JOB_DEFAULT_MAX_DOC_BYTES ((size_t)8 << 20)

typedef struct job_input {
    char *spec;  /* the path as written in the job file */
    char *path;  /* resolved against the job folder (absolute when spec is) */
    int is_glob; /* spec holds * ? or [ */
    enum job_input_format format;
    char *id_field;   /* NULL: the SHA-256 of the text */
    char *text_field; /* "text" by default */
    char **include;   /* fnmatch patterns for folder files and archive entries */
    int n_include;
    size_t max_doc_bytes;
    int line, column; /* where its path is in the job file (1-based), for messages */
} job_input;

/* Everything about sampling one document. */
typedef struct job_sampling {
    double temperature;
    double top_p;
    int top_k;
    double min_p;
    double presence_penalty;
    uint64_t seed;
    int max_new_tokens;
} job_sampling;

typedef struct job {
    char *path; /* the job file as given */
    char *dir;  /* its folder: relative paths inside the job start here */
    char *name; /* file name without .yaml/.yml */

    char *model_dir;
    char *tokenizer_dir; /* == model_dir's value (separate copy) unless set */

    job_input *inputs;
    int n_inputs;

    char *system; /* NULL: no system message */
    char *user;   /* template */
    enum job_mode mode;
    int thinking_budget; /* 0: none */

    job_sampling sampling;

    int64_t max_batch_tokens;
    int max_context;
    enum job_too_long too_long;
    int max_seqs; /* 0: the runner decides */

    char *ledger_path;
    char *jsonl_path;
    enum job_output_format output_format;
    int include_reasoning;

    enum eng_backend backend;
    size_t gpu_memory; /* bytes; 0: all free memory */
    enum eng_kv_type kv_cache;
    int threads;         /* 0: all cores */
    double max_run_time; /* seconds; 0: no limit */
    enum job_progress progress;

    /* private: the parsed template, see job_render_user */
    struct job_template_part *tmpl;
    int n_tmpl;
} job;

/* Loads and validates the job file at path. On error returns -1 with err
 * "path:line:col: what is wrong" and leaves j freed (job_free is harmless). */
int job_load(job *j, const char *path, errbuf *err);

/* Same, from text in memory; path names the file in messages and anchors
 * relative paths. For tests and for `run --job-text`. */
int job_load_text(job *j, const char *text, size_t len, const char *path, errbuf *err);

void job_free(job *j);

/*
 * Renders the user template for one document, appending to out.
 *   {{text}}   the document text        {{id}}      the document id
 *   {{source}} where it came from       {{name}}    field `name` of the JSONL
 *   {{a.b}}    nested field b of a      object (strings verbatim, numbers and
 *                                       booleans as JSON, null as empty)
 * Spaces inside the braces are allowed ({{ text }}). fields may be NULL
 * (documents from files and archives). A name that the document does not
 * have is an error naming the field; out then holds a partial rendering.
 */
int job_render_user(const job *j, const char *text, size_t text_len, const char *id,
                    const char *source, const json_t *fields, strbuf *out, errbuf *err);

/* Length of the template's literal text before its first placeholder: that
 * part of every rendered prompt is identical, so its KV cache can be shared. */
size_t job_user_prefix_len(const job *j);

/*
 * The configuration hash: SHA-256 (hex) over everything that changes what
 * the model writes for a given document: system prompt, user template, mode,
 * thinking budget, sampling and max_new_tokens, max_context and too_long
 * (which decide truncation), and the model's identity (see
 * job_model_identity). Not in it: inputs, batching sizes, output paths and
 * runtime settings, which change how fast or where, not what. The ledger
 * keys documents by this hash and their content, so a changed prompt
 * processes everything again while a faster batch size does not.
 * Reads the model folder; fails when config.json cannot be read.
 */
int job_config_hash(const job *j, char hex[SHA256_HEX_SIZE], errbuf *err);

/* The canonical text that job_config_hash hashes after the model identity
 * (one "key: value" line per setting; strings length-prefixed). Kept in the
 * ledger's run record so that a changed hash can be explained. */
void job_settings_text(const job *j, strbuf *out);

/*
 * The model's identity, SHA-256 hex over: config.json (whole), the
 * tokenizer files that exist (tokenizer.json, tokenizer_config.json,
 * vocab.json, merges.txt; whole), and for each *.safetensors file in name
 * order its name, size, and samples of its content (the first MiB, which
 * holds the tensor index, and 64 KiB at 16 evenly spaced offsets).
 * Sampling the weights costs ~2 MiB of reads per file instead of hashing
 * gigabytes on every run, and unlike mtimes it survives copying the model
 * to another disk while still catching a re-quantized or different model.
 */
int job_model_identity(const char *model_dir, const char *tokenizer_dir,
                       char hex[SHA256_HEX_SIZE], errbuf *err);

/* The sampler settings for this job's sampling values. */
void job_sample_params(const job_sampling *s, sample_params *sp);

/* Parsing helpers shared with the CLI (flags like --max-run-time 2h).
 * Return 0, or -1 with a message that does not name a place. */
int job_parse_size(const char *s, size_t *bytes, errbuf *err);
int job_parse_duration(const char *s, double *seconds, errbuf *err);

/* Names of enum values as written in the job file. */
const char *job_mode_name(enum job_mode m);
const char *job_format_name(enum job_input_format f);
const char *job_too_long_name(enum job_too_long t);

#endif
