/* test_job.c - the job file: every kind of error with its exact place,
 * defaults per mode, paths, sizes and durations, the user template, and the
 * configuration hash (stable for equal jobs, sensitive to what matters). */
#include "check.h"
#include "job.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>
#include <utime.h>

/* A minimal valid job; tests append sections. */
#define BASE "model: ../m\ninputs: [docs/]\nprompt:\n  user: \"Summarize: {{text}}\"\n"

static int load(job *j, const char *text, errbuf *err)
{
    error_clear(err);
    return job_load_text(j, text, strlen(text), "t/job.yaml", err);
}

/* The job must fail with exactly this message (or, when want ends in '*',
 * a message starting with the part before it). */
static void check_error_at(int line, const char *text, const char *want)
{
    job j;
    errbuf err;
    int rc = load(&j, text, &err);
    size_t n = strlen(want);
    int ok;
    if (n && want[n - 1] == '*')
        ok = rc == -1 && !strncmp(err.msg, want, n - 1);
    else
        ok = rc == -1 && !strcmp(err.msg, want);
    check_count++;
    if (!ok) {
        check_failures++;
        fprintf(stderr, "%s:%d: job error: rc %d, got '%s', want '%s'\n", __FILE__, line, rc,
                rc ? err.msg : "(no error)", want);
    }
    job_free(&j);
}
#define CHECK_ERROR(text, want) check_error_at(__LINE__, text, want)

static void test_errors(void)
{
    /* Unknown keys, at the key. */
    CHECK_ERROR(BASE "promt: x\n", "t/job.yaml:5:1: unknown key 'promt' (expected one of: "
                                   "model, tokenizer, inputs, prompt, sampling, batching, "
                                   "output, runtime)");
    CHECK_ERROR(BASE "sampling:\n  temprature: 0.5\n",
                "t/job.yaml:6:3: unknown key 'sampling.temprature' (expected one of: "
                "temperature, top_p, top_k, min_p, presence_penalty, seed, max_new_tokens)");
    CHECK_ERROR("model: m\ninputs:\n  - path: a\n    fromat: jsonl\nprompt: {user: '{{text}}'}\n",
                "t/job.yaml:4:5: unknown key 'inputs[0].fromat'*");
    CHECK_ERROR(BASE "sampling: {top_k: 3, top_k: 4}\n",
                "t/job.yaml:5:22: duplicate key 'sampling.top_k' (first value at line 5)");

    /* Missing required fields: at the mapping that lacks them. */
    CHECK_ERROR("inputs: [a]\nprompt: {user: '{{text}}'}\n",
                "t/job.yaml:1:1: missing required key 'model'");
    CHECK_ERROR("model: m\nprompt: {user: '{{text}}'}\n",
                "t/job.yaml:1:1: missing required key 'inputs'");
    CHECK_ERROR("model: m\ninputs: [a]\nprompt:\n  mode: thinking\n",
                "t/job.yaml:4:3: missing required key 'prompt.user'");
    CHECK_ERROR("model:\ninputs: [a]\nprompt: {user: '{{text}}'}\n",
                "t/job.yaml:1:7: model: a value is required");
    CHECK_ERROR("model: m\ninputs:\n  - format: jsonl\nprompt: {user: '{{text}}'}\n",
                "t/job.yaml:3:5: missing required key 'inputs[0].path'");
    CHECK_ERROR("model: m\ninputs: []\nprompt: {user: '{{text}}'}\n",
                "t/job.yaml:2:9: inputs: the list is empty; give at least one path");

    /* Wrong types, at the value. */
    CHECK_ERROR(BASE "sampling:\n  temperature: hot\n",
                "t/job.yaml:6:16: sampling.temperature: expected a number, got 'hot'");
    CHECK_ERROR(BASE "sampling:\n  temperature: \"0.5\"\n",
                "t/job.yaml:6:16: sampling.temperature: expected a number, got the quoted "
                "string \"0.5\"");
    CHECK_ERROR(BASE "sampling:\n  top_k: [1, 2]\n",
                "t/job.yaml:6:10: sampling.top_k: expected an integer, got a list");
    CHECK_ERROR(BASE "sampling:\n  top_k: 2.5\n",
                "t/job.yaml:6:10: sampling.top_k: expected an integer, got '2.5'");
    CHECK_ERROR(BASE "sampling: 5\n",
                "t/job.yaml:5:11: sampling: expected a mapping (key: value lines), got a scalar");
    CHECK_ERROR(BASE "output:\n  include_reasoning: maybe\n",
                "t/job.yaml:6:22: output.include_reasoning: expected true or false, got 'maybe'");
    CHECK_ERROR("model: {dir: m}\ninputs: [a]\nprompt: {user: '{{text}}'}\n",
                "t/job.yaml:1:8: model: expected a string, got a mapping");
    CHECK_ERROR("- model: m\n", "t/job.yaml:1:1: the job: expected a mapping (key: value "
                                "lines), got a list");
    CHECK_ERROR("model: m\ninputs:\n  - [a]\nprompt: {user: '{{text}}'}\n",
                "t/job.yaml:3:5: inputs[0]: expected a path or a mapping with 'path', got a list");

    /* Bad enum values. */
    CHECK_ERROR("model: m\ninputs: [a]\nprompt:\n  user: '{{text}}'\n  mode: thinkin\n",
                "t/job.yaml:5:9: prompt.mode: 'thinkin' is not one of: non-thinking, thinking");
    CHECK_ERROR(BASE "runtime:\n  backend: gpu\n",
                "t/job.yaml:6:12: runtime.backend: 'gpu' is not one of: auto, cpu, cuda");
    CHECK_ERROR(BASE "batching: {too_long: cut}\n",
                "t/job.yaml:5:22: batching.too_long: 'cut' is not one of: truncate, skip, fail");
    CHECK_ERROR("model: m\ninputs:\n  - {path: a, format: csv}\nprompt: {user: '{{text}}'}\n",
                "t/job.yaml:3:23: inputs[0].format: 'csv' is not one of: auto, jsonl, "
                "openai-batch, archive, folder, text");
    CHECK_ERROR(BASE "runtime: {kv_cache: fp8}\n",
                "t/job.yaml:5:21: runtime.kv_cache: 'fp8' is not one of: f16, int8");

    /* Out-of-range numbers. */
    CHECK_ERROR(BASE "sampling: {temperature: 2.5}\n",
                "t/job.yaml:5:25: sampling.temperature: 2.5 is out of range (0 to 2)");
    CHECK_ERROR(BASE "sampling: {top_p: 0}\n",
                "t/job.yaml:5:19: sampling.top_p: 0 is out of range (more than 0 to 1)");
    CHECK_ERROR(BASE "sampling: {presence_penalty: -1}\n",
                "t/job.yaml:5:30: sampling.presence_penalty: -1 is out of range (0 to 2)");
    CHECK_ERROR(BASE "sampling: {max_new_tokens: 0}\n",
                "t/job.yaml:5:28: sampling.max_new_tokens: 0 is out of range (1 to 1048576)");
    CHECK_ERROR(BASE "sampling: {seed: -3}\n",
                "t/job.yaml:5:18: sampling.seed: -3 is out of range (0 to 9223372036854775807)");
    CHECK_ERROR(BASE "batching: {max_context: 99999999999999999999}\n",
                "t/job.yaml:5:25: batching.max_context: 99999999999999999999 is out of range "
                "(64 to 1048576)");
    CHECK_ERROR(BASE "runtime: {threads: -1}\n",
                "t/job.yaml:5:20: runtime.threads: -1 is out of range (0 to 4096)");

    /* Sizes and durations. */
    CHECK_ERROR(BASE "runtime: {gpu_memory: lots}\n",
                "t/job.yaml:5:23: runtime.gpu_memory: 'lots' is not a size (like 22GiB, "
                "20000MiB or 1048576)");
    CHECK_ERROR(BASE "runtime: {gpu_memory: 22GB5}\n",
                "t/job.yaml:5:23: runtime.gpu_memory: '22GB5' has an unknown size unit (use B, "
                "KB, MB, GB, TB, KiB, MiB, GiB, TiB)");
    CHECK_ERROR(BASE "runtime: {gpu_memory: 1MiB}\n",
                "t/job.yaml:5:23: runtime.gpu_memory: 1MiB is too small (at least 256MiB, or 0 "
                "for all free memory)");
    CHECK_ERROR(BASE "runtime: {max_run_time: 6 hours}\n",
                "t/job.yaml:5:25: runtime.max_run_time: '6 hours' is not a duration (like 6h, "
                "90m, 1h30m or 3600s)");
    CHECK_ERROR(BASE "runtime: {max_run_time: 1h30}\n",
                "t/job.yaml:5:25: runtime.max_run_time: '1h30' is not a duration*");

    /* Settings that do not fit together. */
    CHECK_ERROR("model: m\ninputs: [a]\nprompt:\n  user: '{{text}}'\n  thinking_budget: 100\n",
                "t/job.yaml:5:20: prompt.thinking_budget: only used with mode: thinking");
    CHECK_ERROR("model: m\ninputs: [a]\nprompt:\n  user: '{{text}}'\n  mode: thinking\n"
                "  thinking_budget: 5000\n",
                "t/job.yaml:6:20: prompt.thinking_budget: 5000 leaves no room for the answer "
                "within sampling.max_new_tokens (4096); make it smaller");
    CHECK_ERROR(BASE "batching:\n  max_context: 1000\n",
                "t/job.yaml:6:16: sampling.max_new_tokens (1024) must be less than "
                "batching.max_context (1000), which also holds the prompt");
    CHECK_ERROR(BASE "output: {ledger: x.db, jsonl: x.db}\n",
                "t/job.yaml:5:9: output: ledger and jsonl are the same file 't/x.db'");

    /* The template. */
    CHECK_ERROR("model: m\ninputs: [a]\nprompt:\n  user: 'Summarize {{text'\n",
                "t/job.yaml:4:9: prompt.user: '{{' at character 11 of the template is never "
                "closed with '}}'");
    CHECK_ERROR("model: m\ninputs: [a]\nprompt:\n  user: 'A {{ bad name }} B'\n",
                "t/job.yaml:4:9: prompt.user: '{{ bad name }}' at character 3 of the template "
                "is not a placeholder (use {{text}}, {{id}}, {{source}} or {{field_name}})");
    CHECK_ERROR("model: m\ninputs: [a]\nprompt:\n  user: Summarize this.\n",
                "t/job.yaml:4:9: prompt.user: the template has no placeholder*");

    /* YAML itself. */
    CHECK_ERROR("model: m\ninputs: [a\nprompt: x\n", "t/job.yaml:3:7: YAML syntax error: "
                                                     "did not find expected ',' or ']' (while "
                                                     "parsing a flow sequence at line 2)");
    CHECK_ERROR("model: m\n  inputs: a\n", "t/job.yaml:2:9: YAML syntax error: mapping values "
                                           "are not allowed in this context");
    CHECK_ERROR("", "t/job.yaml:1:1: the job file is empty (it needs at least model, inputs and "
                    "prompt)");
    CHECK_ERROR("# only a comment\n", "t/job.yaml:1:1: the job file is empty*");
    CHECK_ERROR(BASE "---\nmodel: other\n",
                "t/job.yaml:6:1: the job file holds more than one YAML document");
    CHECK_ERROR("model: m\ninputs:\n  - {path: a, include: []}\nprompt: {user: '{{text}}'}\n",
                "t/job.yaml:3:24: inputs[0].include: the list is empty, so nothing would be "
                "read");

    /* A missing file is an error naming it. */
    job j;
    errbuf err;
    CHECK(job_load(&j, "/nonexistent/job.yaml", &err) == -1);
    CHECK_STR_EQ(err.msg, "/nonexistent/job.yaml: cannot read the job file: No such file or "
                          "directory");
}

static void test_defaults(void)
{
    job j;
    errbuf err;
    CHECK_MSG(load(&j, BASE, &err) == 0, "%s", err.msg);
    CHECK_STR_EQ(j.name, "job");
    CHECK_STR_EQ(j.dir, "t");
    CHECK_STR_EQ(j.model_dir, "t/../m");
    CHECK_STR_EQ(j.tokenizer_dir, "t/../m");
    CHECK_INT_EQ(j.n_inputs, 1);
    CHECK_STR_EQ(j.inputs[0].spec, "docs/");
    CHECK_STR_EQ(j.inputs[0].path, "t/docs/");
    CHECK_INT_EQ(j.inputs[0].format, JOB_FORMAT_AUTO);
    CHECK_STR_EQ(j.inputs[0].text_field, "text");
    CHECK(j.inputs[0].id_field == NULL);
    CHECK(j.inputs[0].n_include >= 2 && !strcmp(j.inputs[0].include[0], "*.txt"));
    CHECK_INT_EQ(j.inputs[0].max_doc_bytes, 8 << 20);
    CHECK(j.system == NULL);
    CHECK_INT_EQ(j.mode, JOB_NON_THINKING);
    CHECK(j.sampling.temperature == 0.7 && j.sampling.top_p == 0.8 && j.sampling.top_k == 20);
    CHECK(j.sampling.min_p == 0 && j.sampling.presence_penalty == 0 && j.sampling.seed == 0);
    CHECK_INT_EQ(j.sampling.max_new_tokens, 1024);
    CHECK_INT_EQ(j.thinking_budget, 0);
    CHECK_INT_EQ(j.max_batch_tokens, 131072);
    CHECK_INT_EQ(j.max_context, 32768);
    CHECK_INT_EQ(j.too_long, JOB_TOO_LONG_TRUNCATE);
    CHECK_STR_EQ(j.ledger_path, "t/job.ledger.sqlite");
    CHECK_STR_EQ(j.jsonl_path, "t/job.jsonl");
    CHECK_INT_EQ(j.output_format, JOB_OUTPUT_JSONL);
    CHECK_INT_EQ(j.include_reasoning, 0);
    CHECK_INT_EQ(j.backend, ENG_BACKEND_AUTO);
    CHECK_INT_EQ(j.kv_cache, ENG_KV_F16);
    CHECK_INT_EQ(j.gpu_memory, 0);
    CHECK(j.max_run_time == 0);
    CHECK_INT_EQ(j.progress, JOB_PROGRESS_AUTO);
    sample_params sp;
    job_sample_params(&j.sampling, &sp);
    CHECK(sp.temperature == 0.7f && sp.top_p == 0.8f && sp.top_k == 20 && sp.seed == 0);
    job_free(&j);

    /* Thinking mode: Qwen3's thinking defaults; explicit values stay. */
    CHECK_MSG(load(&j,
                   "model: /abs/m\ntokenizer: tok\ninputs: [a]\nprompt:\n  user: '{{text}}'\n"
                   "  mode: thinking\n  thinking_budget: 1000\nsampling: {top_k: 40}\n",
                   &err) == 0,
              "%s", err.msg);
    CHECK_STR_EQ(j.model_dir, "/abs/m");
    CHECK_STR_EQ(j.tokenizer_dir, "t/tok");
    CHECK_INT_EQ(j.mode, JOB_THINKING);
    CHECK(j.sampling.temperature == 0.6 && j.sampling.top_p == 0.95 && j.sampling.top_k == 40);
    CHECK_INT_EQ(j.sampling.max_new_tokens, 4096);
    CHECK_INT_EQ(j.thinking_budget, 1000);
    job_free(&j);

    /* Everything set explicitly. */
    const char *full =
        "model: m\n"
        "inputs:\n"
        "  - path: data/*.jsonl\n"
        "    format: jsonl\n"
        "    id_field: doc_id\n"
        "    text_field: body\n"
        "    include: '*.txt'\n"
        "    max_doc_bytes: 1MiB\n"
        "  - /abs/corpus.tar.gz\n"
        "prompt:\n"
        "  system: You are terse.\n"
        "  user: |\n"
        "    Title: {{ title }}\n"
        "    {{text}}\n"
        "  mode: non-thinking\n"
        "sampling: {temperature: 0, top_p: 1, top_k: 0, min_p: 0.05, presence_penalty: 1.5,\n"
        "           seed: 42, max_new_tokens: 300}\n"
        "batching: {max_batch_tokens: 65536, max_context: 8192, too_long: skip, max_seqs: 64}\n"
        "output: {ledger: /var/q/l.sqlite, jsonl: out/x.jsonl, format: openai-batch,\n"
        "         include_reasoning: yes}\n"
        "runtime: {backend: cuda, gpu_memory: 22GiB, kv_cache: int8, threads: 8,\n"
        "          max_run_time: 1h30m, progress: json}\n";
    CHECK_MSG(load(&j, full, &err) == 0, "%s", err.msg);
    CHECK_INT_EQ(j.n_inputs, 2);
    CHECK(j.inputs[0].is_glob && !j.inputs[1].is_glob);
    CHECK_STR_EQ(j.inputs[0].path, "t/data/*.jsonl");
    CHECK_STR_EQ(j.inputs[1].path, "/abs/corpus.tar.gz");
    CHECK_INT_EQ(j.inputs[1].line, 9);
    CHECK_INT_EQ(j.inputs[1].column, 5);
    CHECK_INT_EQ(j.inputs[0].line, 3);
    CHECK_INT_EQ(j.inputs[0].column, 11);
    CHECK_INT_EQ(j.inputs[0].format, JOB_FORMAT_JSONL);
    CHECK_STR_EQ(j.inputs[0].id_field, "doc_id");
    CHECK_STR_EQ(j.inputs[0].text_field, "body");
    CHECK_INT_EQ(j.inputs[0].n_include, 1);
    CHECK_STR_EQ(j.inputs[0].include[0], "*.txt");
    CHECK_INT_EQ(j.inputs[0].max_doc_bytes, 1 << 20);
    CHECK_STR_EQ(j.system, "You are terse.");
    CHECK_STR_EQ(j.user, "Title: {{ title }}\n{{text}}\n");
    CHECK(j.sampling.temperature == 0 && j.sampling.top_p == 1 && j.sampling.top_k == 0);
    CHECK(j.sampling.min_p == 0.05 && j.sampling.presence_penalty == 1.5);
    CHECK(j.sampling.seed == 42 && j.sampling.max_new_tokens == 300);
    CHECK(j.max_batch_tokens == 65536 && j.max_context == 8192 && j.max_seqs == 64);
    CHECK_INT_EQ(j.too_long, JOB_TOO_LONG_SKIP);
    CHECK_STR_EQ(j.ledger_path, "/var/q/l.sqlite");
    CHECK_STR_EQ(j.jsonl_path, "t/out/x.jsonl");
    CHECK_INT_EQ(j.output_format, JOB_OUTPUT_OPENAI_BATCH);
    CHECK_INT_EQ(j.include_reasoning, 1);
    CHECK_INT_EQ(j.backend, ENG_BACKEND_CUDA);
    CHECK_INT_EQ(j.gpu_memory, (size_t)22 << 30);
    CHECK_INT_EQ(j.kv_cache, ENG_KV_INT8);
    CHECK_INT_EQ(j.threads, 8);
    CHECK(j.max_run_time == 5400);
    CHECK_INT_EQ(j.progress, JOB_PROGRESS_JSON);
    job_free(&j);

    /* Nulls leave defaults; a job file named .yml; a job in the current folder. */
    const char *nulls = BASE "sampling:\nbatching: ~\nruntime: {gpu_memory: null}\n";
    CHECK_MSG(job_load_text(&j, nulls, strlen(nulls), "night.yml", &err) == 0,
              "%s", err.msg);
    CHECK_STR_EQ(j.name, "night");
    CHECK_STR_EQ(j.dir, ".");
    CHECK_STR_EQ(j.ledger_path, "night.ledger.sqlite");
    CHECK_STR_EQ(j.inputs[0].path, "docs/");
    CHECK_INT_EQ(j.sampling.max_new_tokens, 1024);
    job_free(&j);
}

static void test_sizes_durations(void)
{
    size_t b;
    double s;
    errbuf err;
    CHECK(job_parse_size("20000MiB", &b, &err) == 0 && b == (size_t)20000 << 20);
    CHECK(job_parse_size("22gib", &b, &err) == 0 && b == (size_t)22 << 30);
    CHECK(job_parse_size("1.5GiB", &b, &err) == 0 && b == (size_t)3 << 29);
    CHECK(job_parse_size("22GB", &b, &err) == 0 && b == 22000000000ull);
    CHECK(job_parse_size("4096", &b, &err) == 0 && b == 4096);
    CHECK(job_parse_size("8M", &b, &err) == 0 && b == 8 << 20);
    CHECK(job_parse_size("-1GiB", &b, &err) == -1);
    CHECK(job_parse_size("0.5B", &b, &err) == -1);
    CHECK(job_parse_size("99999999TiB", &b, &err) == -1);
    CHECK(job_parse_duration("6h", &s, &err) == 0 && s == 21600);
    CHECK(job_parse_duration("90m", &s, &err) == 0 && s == 5400);
    CHECK(job_parse_duration("3600s", &s, &err) == 0 && s == 3600);
    CHECK(job_parse_duration("1d2h3m4s", &s, &err) == 0 && s == 93784);
    CHECK(job_parse_duration("1.5h", &s, &err) == 0 && s == 5400);
    CHECK(job_parse_duration("120", &s, &err) == 0 && s == 120);
    CHECK(job_parse_duration("0", &s, &err) == 0 && s == 0);
    CHECK(job_parse_duration("", &s, &err) == -1);
    CHECK(job_parse_duration("h", &s, &err) == -1);
    CHECK(job_parse_duration("-5m", &s, &err) == -1);
    CHECK(job_parse_duration("5w", &s, &err) == -1);
}

static void test_template(void)
{
    job j;
    errbuf err;
    const char *text = "model: m\ninputs: [a]\nprompt:\n"
                       "  user: 'Doc {{id}} from {{ source }} ({{meta.lang}}, {{n}}, {{flag}}, "
                       "{{nothing}}, {{tags}}, {{title}}): {{text}} End.'\n";
    CHECK_MSG(load(&j, text, &err) == 0, "%s", err.msg);
    CHECK_INT_EQ(job_user_prefix_len(&j), 4);
    json_t *fields = json_loads("{\"title\":\"T\\u00e9\",\"n\":3,\"flag\":true,\"nothing\":null,"
                                "\"meta\":{\"lang\":\"fr\"},\"tags\":[\"a\",1]}",
                                0, NULL);
    strbuf out = STRBUF_INIT;
    CHECK_MSG(job_render_user(&j, "Body", 4, "id7", "x.jsonl:3", fields, &out, &err) == 0, "%s",
              err.msg);
    CHECK_STR_EQ(out.buf, "Doc id7 from x.jsonl:3 (fr, 3, true, , [\"a\",1], T\xc3\xa9): Body End.");

    /* A field the document lacks is a per-document error naming it. */
    sb_reset(&out);
    json_object_del(fields, "title");
    CHECK(job_render_user(&j, "Body", 4, "id7", "x.jsonl:3", fields, &out, &err) == -1);
    CHECK_STR_EQ(err.msg, "the prompt template uses {{title}} but the document has no field "
                          "'title'");
    sb_reset(&out);
    CHECK(job_render_user(&j, "Body", 4, "id7", "a.txt", NULL, &out, &err) == -1);
    CHECK_STR_EQ(err.msg, "the prompt template uses {{meta.lang}} but the document has no field "
                          "'meta.lang'");
    json_decref(fields);
    job_free(&j);

    /* Text may hold NUL-free bytes of any kind; braces in the text are not
     * template syntax; single braces in the template are literal. */
    CHECK_MSG(load(&j, "model: m\ninputs: [a]\nprompt:\n  user: '{{text}} {json} }}'\n", &err) == 0,
              "%s", err.msg);
    CHECK_INT_EQ(job_user_prefix_len(&j), 0);
    sb_reset(&out);
    CHECK(job_render_user(&j, "a {{id}} b", 10, "X", "s", NULL, &out, &err) == 0);
    CHECK_STR_EQ(out.buf, "a {{id}} b {json} }}");
    job_free(&j);
    sb_release(&out);
}

static void write_file(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    CHECK_MSG(f != NULL, "cannot write %s", path);
    if (!f)
        return;
    fwrite(data, 1, n, f);
    fclose(f);
}

static void hash_of(const char *job_text, const char *job_path, char hex[SHA256_HEX_SIZE])
{
    job j;
    errbuf err;
    hex[0] = '\0';
    if (job_load_text(&j, job_text, strlen(job_text), job_path, &err)) {
        CHECK_MSG(0, "%s", err.msg);
        return;
    }
    CHECK_MSG(job_config_hash(&j, hex, &err) == 0, "%s", err.msg);
    job_free(&j);
}

static void test_hash(void)
{
    char dir[] = "/tmp/test_job.XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char path[512], job_path[512];
    snprintf(path, sizeof path, "%s/model", dir);
    mkdir(path, 0755);
    snprintf(path, sizeof path, "%s/model/config.json", dir);
    write_file(path, "{\"hidden_size\": 64}", 19);
    /* 3 MiB of weights so that the sampled windows matter. */
    size_t n_weights = 3 << 20;
    unsigned char *w = malloc(n_weights);
    for (size_t i = 0; i < n_weights; i++)
        w[i] = (unsigned char)(i * 2654435761u >> 13);
    char wpath[512];
    snprintf(wpath, sizeof wpath, "%s/model/model.safetensors", dir);
    write_file(wpath, w, n_weights);
    snprintf(job_path, sizeof job_path, "%s/nightly.yaml", dir);

    const char *base = "model: model\ninputs: [docs]\nprompt:\n  system: Be brief.\n"
                       "  user: 'Summarize: {{text}}'\nsampling: {seed: 1}\n";
    char h0[SHA256_HEX_SIZE], h[SHA256_HEX_SIZE];
    hash_of(base, job_path, h0);
    CHECK_INT_EQ(strlen(h0), 64);
    hash_of(base, job_path, h);
    CHECK_STR_EQ(h, h0);

    /* Same settings written differently, or changes that do not alter outputs. */
    hash_of("# a comment\nprompt: {user: 'Summarize: {{text}}', system: Be brief., "
            "mode: non-thinking}\nmodel: ./model\ninputs: [other/*.jsonl]\n"
            "sampling: {seed: 1, temperature: 0.70, top_k: 20}\n",
            job_path, h);
    CHECK_STR_EQ(h, h0);
    strbuf sb = STRBUF_INIT;
    sb_addf(&sb, "%sbatching: {max_batch_tokens: 4096, max_seqs: 8}\noutput: {jsonl: o.jsonl}\n"
                 "runtime: {backend: cpu, threads: 2, max_run_time: 1h}\n",
            base);
    hash_of(sb.buf, job_path, h);
    CHECK_STR_EQ(h, h0);

    /* Anything that changes what the model writes changes the hash. */
    static const char *const changes[] = {
        "sampling: {seed: 2}\n",
        "sampling: {seed: 1, temperature: 0.71}\n",
        "sampling: {seed: 1, top_p: 0.9}\n",
        "sampling: {seed: 1, top_k: 21}\n",
        "sampling: {seed: 1, min_p: 0.01}\n",
        "sampling: {seed: 1, presence_penalty: 0.5}\n",
        "sampling: {seed: 1, max_new_tokens: 1000}\n",
        "batching: {max_context: 16384}\n",
        "batching: {too_long: skip}\n",
    };
    char seen[16][SHA256_HEX_SIZE];
    int n_seen = 0;
    for (size_t i = 0; i < sizeof changes / sizeof changes[0]; i++) {
        sb_reset(&sb);
        const char *s = changes[i];
        if (!strncmp(s, "sampling", 8))
            sb_addf(&sb, "model: model\ninputs: [docs]\nprompt:\n  system: Be brief.\n"
                         "  user: 'Summarize: {{text}}'\n%s",
                    s);
        else
            sb_addf(&sb, "%s%s", base, s);
        hash_of(sb.buf, job_path, seen[n_seen]);
        CHECK_MSG(strcmp(seen[n_seen], h0) != 0, "change %zu kept the hash", i);
        for (int k = 0; k < n_seen; k++)
            CHECK(strcmp(seen[k], seen[n_seen]) != 0);
        n_seen++;
    }
    hash_of("model: model\ninputs: [docs]\nprompt:\n  system: Be brief!\n"
            "  user: 'Summarize: {{text}}'\nsampling: {seed: 1}\n",
            job_path, h);
    CHECK(strcmp(h, h0) != 0);
    hash_of("model: model\ninputs: [docs]\nprompt:\n"
            "  user: 'Summarize: {{text}}'\nsampling: {seed: 1}\n",
            job_path, h);
    CHECK(strcmp(h, h0) != 0);
    hash_of("model: model\ninputs: [docs]\nprompt:\n  system: Be brief.\n"
            "  user: 'Summarize:  {{text}}'\nsampling: {seed: 1}\n",
            job_path, h);
    CHECK(strcmp(h, h0) != 0);
    /* Mode, with the same explicit sampling values. */
    const char *samp = "sampling: {seed: 1, temperature: 0.6, top_p: 0.95, max_new_tokens: 900}\n";
    char hm1[SHA256_HEX_SIZE], hm2[SHA256_HEX_SIZE];
    sb_reset(&sb);
    sb_addf(&sb, "model: model\ninputs: [d]\nprompt: {user: '{{text}}', mode: thinking}\n%s", samp);
    hash_of(sb.buf, job_path, hm1);
    sb_reset(&sb);
    sb_addf(&sb, "model: model\ninputs: [d]\nprompt: {user: '{{text}}', mode: non-thinking}\n%s",
            samp);
    hash_of(sb.buf, job_path, hm2);
    CHECK(strcmp(hm1, hm2) != 0);
    sb_reset(&sb);
    sb_addf(&sb, "model: model\ninputs: [d]\nprompt: {user: '{{text}}', mode: thinking, "
                 "thinking_budget: 500}\n%s",
            samp);
    hash_of(sb.buf, job_path, hm2);
    CHECK(strcmp(hm1, hm2) != 0);

    /* The model: config.json, weight content, a tokenizer file; not mtimes. */
    write_file(path, "{\"hidden_size\": 65}", 19);
    hash_of(base, job_path, h);
    CHECK(strcmp(h, h0) != 0);
    write_file(path, "{\"hidden_size\": 64}", 19);
    hash_of(base, job_path, h);
    CHECK_STR_EQ(h, h0);
    utime(wpath, NULL); /* a copied model has new mtimes */
    hash_of(base, job_path, h);
    CHECK_STR_EQ(h, h0);
    size_t flips[] = {100, (n_weights - (64 << 10)) * 7 / 15 + 5, n_weights - 1};
    for (int f = 0; f < 3; f++) {
        w[flips[f]] ^= 1;
        write_file(wpath, w, n_weights);
        hash_of(base, job_path, h);
        CHECK_MSG(strcmp(h, h0) != 0, "flip at %zu not seen", flips[f]);
        w[flips[f]] ^= 1;
    }
    write_file(wpath, w, n_weights - 1); /* a shorter file */
    hash_of(base, job_path, h);
    CHECK(strcmp(h, h0) != 0);
    write_file(wpath, w, n_weights);
    hash_of(base, job_path, h);
    CHECK_STR_EQ(h, h0);
    char tpath[512];
    snprintf(tpath, sizeof tpath, "%s/model/tokenizer.json", dir);
    write_file(tpath, "{}", 2);
    hash_of(base, job_path, h);
    CHECK(strcmp(h, h0) != 0);
    unlink(tpath);

    /* The settings text shows what the hash covers. */
    job j;
    errbuf err;
    CHECK(job_load_text(&j, base, strlen(base), job_path, &err) == 0);
    sb_reset(&sb);
    job_settings_text(&j, &sb);
    CHECK(strstr(sb.buf, "system=9:Be brief.\n") != NULL);
    CHECK(strstr(sb.buf, "mode=non-thinking\n") != NULL);
    CHECK(strstr(sb.buf, "seed=1\n") != NULL);
    CHECK(strstr(sb.buf, "max_new_tokens=1024\n") != NULL);
    /* A missing model folder is an error. */
    free(j.model_dir);
    j.model_dir = strdup("/nonexistent/model");
    CHECK(job_config_hash(&j, h, &err) == -1);
    CHECK_STR_EQ(err.msg, "model: /nonexistent/model/config.json: cannot read: No such file or "
                          "directory");
    job_free(&j);

    sb_release(&sb);
    free(w);
    snprintf(path, sizeof path, "rm -rf '%s'", dir);
    CHECK(system(path) == 0);
}

int main(void)
{
    test_errors();
    test_defaults();
    test_sizes_durations();
    test_template();
    test_hash();
    return check_exit("test_job");
}
