#!/bin/sh
# tokenizer.sh - our tokenizer and chat template against Hugging Face.
#
# tests/fixtures/ref holds HF tokenizers/transformers output on the real
# Qwen3 tokenizer (tests/gen_tokenizer_ref.py). tests/tokref checks every
# line through the C API; then the CLI commands (tokenize, detokenize,
# render) are checked on a sample of lines and on every chat.
set -u
: "${top_srcdir:?}" "${top_builddir:?}" "${QWEN3_BATCH:?}"
REF="$top_srcdir/tests/fixtures/ref"
TOKREF="$top_builddir/tests/tokref"
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
fail=0
bad() { echo "FAIL: $*" >&2; fail=1; }

mkdir "$tmp/tok"
tar xJf "$top_srcdir/data/qwen3-tokenizer.tar.xz" -C "$tmp/tok" || exit 1

"$TOKREF" check "$tmp/tok" "$REF" || bad "tokref check"

n_texts=$(wc -l < "$REF/tokenizer.jsonl")
i=0
while [ "$i" -lt "$n_texts" ]; do
    "$TOKREF" field "$REF/tokenizer.jsonl" "$i" text > "$tmp/text" &&
    "$TOKREF" field "$REF/tokenizer.jsonl" "$i" ids > "$tmp/want_ids" &&
    "$TOKREF" field "$REF/tokenizer.jsonl" "$i" decoded > "$tmp/want_dec" || exit 1
    "$QWEN3_BATCH" tokenize --tokenizer "$tmp/tok" < "$tmp/text" > "$tmp/ids" ||
        bad "tokenize line $i exited $?"
    "$TOKREF" jsoneq "$tmp/ids" "$tmp/want_ids" || bad "tokenize line $i: ids differ"
    "$QWEN3_BATCH" detokenize --tokenizer "$tmp/tok" < "$tmp/want_ids" > "$tmp/dec" ||
        bad "detokenize line $i exited $?"
    cmp -s "$tmp/dec" "$tmp/want_dec" || bad "detokenize line $i: text differs"
    i=$((i + 60))
done

n_chats=$(wc -l < "$REF/chat.jsonl")
i=0
while [ "$i" -lt "$n_chats" ]; do
    "$TOKREF" field "$REF/chat.jsonl" "$i" messages > "$tmp/msgs" &&
    "$TOKREF" field "$REF/chat.jsonl" "$i" text > "$tmp/want_text" &&
    "$TOKREF" field "$REF/chat.jsonl" "$i" enable_thinking > "$tmp/think" || exit 1
    flag=
    [ "$(cat "$tmp/think")" = false ] && flag=--no-thinking
    "$QWEN3_BATCH" render --tokenizer "$tmp/tok" $flag < "$tmp/msgs" > "$tmp/text" ||
        bad "render chat $i exited $?"
    cmp -s "$tmp/text" "$tmp/want_text" || bad "render chat $i: text differs"
    i=$((i + 1))
done

# Usage errors and bad input are reported, not crashed on.
"$QWEN3_BATCH" tokenize < /dev/null > /dev/null 2> "$tmp/err"
[ $? -eq 2 ] && grep -q -- --tokenizer "$tmp/err" || bad "tokenize without --tokenizer"
printf 'ok \377 here' | "$QWEN3_BATCH" tokenize --tokenizer "$tmp/tok" > /dev/null 2> "$tmp/err"
[ $? -eq 1 ] && grep -q "byte offset 3" "$tmp/err" || bad "invalid UTF-8 not reported at offset 3"
"$QWEN3_BATCH" tokenize --tokenizer "$tmp/nowhere" < /dev/null > /dev/null 2> "$tmp/err"
[ $? -eq 1 ] && grep -q "nowhere: no such folder" "$tmp/err" || bad "missing tokenizer folder not named"
echo '[1, "x"]' | "$QWEN3_BATCH" detokenize --tokenizer "$tmp/tok" > /dev/null 2> "$tmp/err"
[ $? -eq 1 ] && grep -q "entry 1" "$tmp/err" || bad "bad id not named"
echo '[{"role": "robot", "content": "x"}]' |
    "$QWEN3_BATCH" render --tokenizer "$tmp/tok" > /dev/null 2> "$tmp/err"
[ $? -eq 1 ] && grep -q "robot" "$tmp/err" || bad "unknown role not named"
for cmd in tokenize detokenize render; do
    "$QWEN3_BATCH" $cmd --help | grep -q "usage: qwen3-batch $cmd" || bad "$cmd --help"
done
exit $fail
