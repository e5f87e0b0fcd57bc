#!/bin/sh
# tests/gpu/corpus_bench.sh - issue #5's end-to-end figure: `qwen3-batch run`
# over a synthetic corpus of N documents (default 2000) whose lengths are
# log-normal between 200 and 30,000 tokens, 256 new tokens each,
# non-thinking, on random AWQ weights in Qwen3-14B shapes (--synthetic-model).
#   QWEN3_BATCH=... [KV=f16|int8] tests/gpu/corpus_bench.sh [N] [MAX_RUN_TIME] [DIR]
# KV is the job's runtime.kv_cache (default f16, the job file default;
# jobs/summarize.yaml, the main job, uses int8).
# With DIR the corpus, job, ledger and results live there and are kept: a
# second call with the same DIR resumes the run, so the whole corpus can be
# measured over several time-limited calls (the summary line of each call
# counts its own part). The tokenizer, corpus and job are made only where
# DIR lacks them, the same each time (seeded), so a DIR that holds only
# job.ledger.sqlite and job.jsonl from another machine resumes too.
# Prints the run's summary line; documents per hour = docs_finished /
# seconds * 3600; engine_seconds / seconds is the GPU-busy share, split
# into steps carrying prompt tokens (prefill_step_seconds) and decode-only
# steps (decode_step_seconds, mean batch decode_rows / decode_steps); the
# rest is startup + ingest (startup_ingest_seconds), results + ledger
# (finish_seconds) and scheduling gaps. Then the job's status: documents
# done and pending, and over several calls the `all runs` line (documents
# per hour and tokens/s over every run of the job).
set -eu
Q=${QWEN3_BATCH:-./qwen3-batch}
N=${1:-2000}
KV=${KV:-f16}
LIMIT=${2:-0}
dir=${3:-$(mktemp -d)}
mkdir -p "$dir"
[ -d "$dir/tok" ] || "$Q" make-demo-model "$dir/tok" >/dev/null   # for its (real) tokenizer only
[ -f "$dir/corpus.jsonl" ] || python3 - "$dir/corpus.jsonl" "$N" <<'PY'
import json, math, random, sys
path, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(2026)
words = ("time year people way day man thing woman life child world school state family "
         "student group country problem hand part place case week company system program "
         "question work government number night point home water room mother area money "
         "story fact month lot right study book eye job word business issue side kind head "
         "house service friend father power hour game line end member law car city").split()
with open(path, "w") as f:
    for i in range(n):
        t = int(min(30000, max(200, rng.lognormvariate(math.log(2000), 1.0))))
        f.write(json.dumps({"id": "doc%05d" % i, "text": " ".join(rng.choice(words) for _ in range(t))}) + "\n")
PY
[ -f "$dir/job.yaml" ] || cat >"$dir/job.yaml" <<Y
model: tok
tokenizer: tok
inputs:
  - path: corpus.jsonl
    id_field: id
prompt:
  system: You are a concise assistant.
  user: "Summarize the following document.\n\n{{text}}"
  mode: non-thinking
sampling:
  max_new_tokens: 256
batching:
  max_batch_tokens: 131072
  max_context: 32768
runtime:
  backend: cuda
  progress: json
  kv_cache: $KV
Y
set --
[ "$LIMIT" != 0 ] && set -- --max-run-time "$LIMIT"
python3 -c "
import json; L=[len(json.loads(l)['text'].split()) for l in open('$dir/corpus.jsonl')]
print('corpus: %d docs, words min %d median %d mean %d max %d, total %d' % (len(L), min(L), sorted(L)[len(L)//2], sum(L)/len(L), max(L), sum(L)))"
set +e
"$Q" run "$dir/job.yaml" --synthetic-model qwen3-14b "$@" >"$dir/out.log" 2>"$dir/err.log"
rc=$?
tail -n 1 "$dir/out.log"
set -e
grep -v '"event":"progress"' "$dir/err.log" | tail -n 5
echo "exit $rc"
"$Q" status "$dir/job.yaml" | grep -E '^(documents|all runs|eta)' || true
