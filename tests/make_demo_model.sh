#!/bin/sh
# make-demo-model writes a folder the loader reads back (the command opens it
# with model_open before it reports success), deterministically, and refuses
# bad command lines with exit code 2.
set -u
bin=${QWEN3_BATCH:?}
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

"$bin" make-demo-model --help | grep -q 'usage: qwen3-batch make-demo-model' || fail "--help"
"$bin" help | grep -q make-demo-model || fail "not listed in help"

out=$("$bin" make-demo-model "$tmp/a" --seed 11) || fail "tiny bf16: exit $?"
echo "$out" | grep -q 'vocab 151936' || fail "summary: $out"
for f in config.json model.safetensors tokenizer.json tokenizer_config.json; do
    [ -s "$tmp/a/$f" ] || fail "missing $f"
done
grep -q '"model_type": "qwen3"' "$tmp/a/config.json" || fail "config.json"
"$bin" make-demo-model "$tmp/b" --seed 11 >/dev/null || fail "second write"
cmp -s "$tmp/a/model.safetensors" "$tmp/b/model.safetensors" || fail "same seed, different bytes"
"$bin" make-demo-model "$tmp/b" --seed 12 >/dev/null || fail "rewrite"
cmp -s "$tmp/a/model.safetensors" "$tmp/b/model.safetensors" && fail "seed ignored"
rm -rf "$tmp/a" "$tmp/b"

out=$("$bin" make-demo-model "$tmp/awq" --awq) || fail "awq: exit $?"
echo "$out" | grep -q 'AWQ' || fail "awq summary: $out"
grep -q '"quant_method": "awq"' "$tmp/awq/config.json" || fail "awq config"
rm -rf "$tmp/awq"

"$bin" make-demo-model "$tmp/x" --size huge 2>/dev/null; [ $? -eq 2 ] || fail "--size huge"
"$bin" make-demo-model "$tmp/x" --seed -3 2>/dev/null; [ $? -eq 2 ] || fail "--seed -3"
"$bin" make-demo-model 2>/dev/null; [ $? -eq 2 ] || fail "no DIR"
"$bin" make-demo-model "$tmp/x" --bogus 2>/dev/null; [ $? -eq 2 ] || fail "--bogus"
"$bin" make-demo-model "$tmp/no/such/dir" 2>/dev/null; [ $? -eq 1 ] || fail "unwritable DIR"
echo "make_demo_model.sh: ok"
exit 0
