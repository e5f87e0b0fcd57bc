#!/bin/sh
# examples/quickstart.sh - the README's first command: installs the Debian
# packages the build needs, builds qwen3-batch in ./build, makes the small
# demo model (random weights, the real Qwen3 tokenizer) in ./demo-model, and
# runs the example job (examples/demo.yaml) on it: on the GPU when there is
# one, else on the CPU. Results: examples/demo.jsonl; `build/qwen3-batch
# status examples/demo.yaml` shows the ledger.
set -e
top=$(cd "$(dirname "$0")/.." && pwd)
"$top/build-aux/deps.sh"
cd "$top"
q=build/qwen3-batch
[ -f demo-model/config.json ] || $q make-demo-model demo-model
set +e
$q run examples/demo.yaml
rc=$?
set -e
$q status examples/demo.yaml
echo "results: examples/demo.jsonl (exit code $rc)"
exit $rc
