# tests/e2e_lib.sh - shared setup for the end-to-end scripts (sourced).
# Makes a scratch folder and, once per build tree, the demo model.
set -e
: "${QWEN3_BATCH:?run through make check}"
Q=$QWEN3_BATCH
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/q3e2e.XXXXXX")
trap 'rm -rf "$SCRATCH"' EXIT
DEMO=$top_builddir/tests/demo-model
if [ ! -f "$DEMO/config.json" ]; then
    # Several scripts may race to make it: build aside, then rename.
    tmp=$(mktemp -d "$top_builddir/tests/demo-model.XXXXXX")
    "$Q" make-demo-model "$tmp" >/dev/null
    mv -T "$tmp" "$DEMO" 2>/dev/null || rm -rf "$tmp"
fi
fail() { echo "FAIL: $*" >&2; exit 1; }

# write_job FILE INPUT_LINE...: a small non-thinking job on the demo model,
# CPU backend, short outputs so the tests stay fast. Each INPUT_LINE is a
# YAML list entry under inputs:, e.g. "  - path: docs.jsonl".
write_job() {
    f=$1; shift
    {
        echo "model: $DEMO"
        echo "inputs:"
        for l in "$@"; do echo "$l"; done
        echo "prompt:"
        echo "  system: You summarize documents."
        echo "  user: \"Summarize:\\n\\n{{text}}\""
        echo "  mode: non-thinking"
        echo "sampling:"
        echo "  max_new_tokens: 12"
        echo "  seed: 7"
        echo "runtime:"
        echo "  backend: cpu"
        echo "  threads: 2"
        echo "  progress: json"
    } >"$f"
}

# json_ids FILE: the "id" of each line.
json_ids() { sed -n 's/^{"id": *"\([^"]*\)".*/\1/p' "$1"; }

# summary_num FILE KEY: a number of the run's summary line.
summary_num() { sed -n 's/^{"event":"summary".*"'"$2"'":\([-0-9.e+]*\)[,}].*/\1/p' "$1"; }
