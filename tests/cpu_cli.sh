#!/bin/sh
# tests/cpu_cli.sh - `score` and `generate` end to end on the CPU backend:
# logits files against the HF reference, greedy ids against HF's, stopping
# at an end-of-sequence id, seeds, chat prompts, and bad command lines.
. "$top_srcdir/tests/e2e_lib.sh"
REF=$top_srcdir/tests/fixtures/ref/models

# first_list FILE KEY: the first JSON array of integers under KEY, as 1,2,3
first_list() { tr -d ' \n' <"$1" | grep -o "\"$2\":\[[^]]*\]" | head -n 1 | sed 's/.*\[//; s/\]//'; }
json_value() { tr -d ' \n' <"$1" | grep -o "\"$2\":[^,}]*" | head -n 1 | sed 's/^[^:]*://'; }

$Q score --help | grep -q 'usage: qwen3-batch score' || fail "score --help"
$Q generate --help | grep -q 'usage: qwen3-batch generate' || fail "generate --help"

for name in bf16_untied_gqa bf16_tied_gqa8 awq_g128 yarn; do
    dir=$REF/$name
    ids=$(first_list "$dir/reference.json" ids)
    greedy=$(first_list "$dir/reference.json" greedy)
    n=$(echo "$ids" | tr ',' '\n' | wc -l)
    vocab=$(json_value "$dir/reference.json" vocab)

    # score: one row of vocab floats per position, close to HF's.
    $Q score --model "$dir" --ids "$ids" --logits-out "$SCRATCH/$name.f32" --backend cpu \
        >"$SCRATCH/score.json" || fail "$name: score failed"
    [ "$(wc -c <"$SCRATCH/$name.f32")" -eq $((n * vocab * 4)) ] || fail "$name: logits file size"
    grep -q "\"n_positions\": *$n[,}]" "$SCRATCH/score.json" || fail "$name: n_positions"
    grep -q "\"vocab\": *$vocab[,}]" "$SCRATCH/score.json" || fail "$name: vocab"
    grep -q '"backend": *"cpu"' "$SCRATCH/score.json" || fail "$name: backend"
    [ "$(first_list "$SCRATCH/score.json" argmax | tr ',' '\n' | wc -l)" -eq "$n" ] ||
        fail "$name: argmax per position"
    od -An -v -f "$SCRATCH/$name.f32" | tr -s ' ' '\n' | grep . >"$SCRATCH/got"
    od -An -v -f "$dir/logits_0.f32" | tr -s ' ' '\n' | grep . >"$SCRATCH/want"
    paste "$SCRATCH/got" "$SCRATCH/want" | awk '
        { d = $1 - $2; if (d < 0) d = -d; if (d > err) err = d
          a = $2 < 0 ? -$2 : $2; if (a > big) big = a }
        END { printf "max error %g, max |logit| %g\n", err, big; exit !(NR > 0 && err < 1e-3 * big) }' ||
        fail "$name: score logits differ from HF"

    # Thread count does not change a bit.
    $Q score --model "$dir" --ids "$ids" --logits-out "$SCRATCH/t1.f32" --threads 1 >/dev/null &&
        $Q score --model "$dir" --ids "$ids" --logits-out "$SCRATCH/t3.f32" --threads 3 >/dev/null ||
        fail "$name: score with threads"
    cmp -s "$SCRATCH/t1.f32" "$SCRATCH/t3.f32" || fail "$name: logits depend on the thread count"

    # generate: HF's greedy continuation (no tokenizer here: text is null).
    k=$(echo "$greedy" | tr ',' '\n' | wc -l)
    $Q generate --model "$dir" --ids "$ids" --max-new-tokens "$k" --ignore-eos --backend cpu \
        >"$SCRATCH/gen.json" || fail "$name: generate failed"
    [ "$(first_list "$SCRATCH/gen.json" ids)" = "$greedy" ] || fail "$name: greedy ids differ from HF"
    grep -q '"text": *null' "$SCRATCH/gen.json" || fail "$name: text without a tokenizer"
    grep -q '"finish_reason": *"length"' "$SCRATCH/gen.json" || fail "$name: finish_reason"
    grep -q "\"prompt_tokens\": *$n[,}]" "$SCRATCH/gen.json" || fail "$name: prompt_tokens"
    grep -q "\"completion_tokens\": *$k[,}]" "$SCRATCH/gen.json" || fail "$name: completion_tokens"
done

# Stopping: the same model with its second greedy token made the end of
# sequence stops after one token, unless --ignore-eos.
dir=$REF/bf16_untied_gqa
ids=$(first_list "$dir/reference.json" ids)
greedy=$(first_list "$dir/reference.json" greedy)
eos_id=$(echo "$greedy" | cut -d, -f2)
before_eos=$(echo "$greedy" | cut -d, -f1)
[ "$eos_id" != "$before_eos" ] || fail "the fixture's first two greedy tokens are equal"
mkdir "$SCRATCH/eos"
cp "$dir"/* "$SCRATCH/eos/"
sed "s/\"eos_token_id\": *[0-9]*/\"eos_token_id\": $eos_id/" "$dir/config.json" >"$SCRATCH/eos/config.json"
grep -q "\"eos_token_id\": $eos_id" "$SCRATCH/eos/config.json" || fail "could not set eos_token_id"
$Q generate --model "$SCRATCH/eos" --ids "$ids" --max-new-tokens 20 >"$SCRATCH/gen.json" ||
    fail "generate with eos"
[ "$(first_list "$SCRATCH/gen.json" ids)" = "$before_eos" ] || fail "did not stop at the eos id"
grep -q '"finish_reason": *"stop"' "$SCRATCH/gen.json" || fail "finish_reason stop"
$Q generate --model "$SCRATCH/eos" --ids "$ids" --max-new-tokens 5 --ignore-eos >"$SCRATCH/gen.json" ||
    fail "generate --ignore-eos"
[ "$(first_list "$SCRATCH/gen.json" ids)" = "$(echo "$greedy" | cut -d, -f1-5)" ] ||
    fail "--ignore-eos stopped"

# The demo model with its tokenizer: text, chat template, seeds.
gen() { $Q generate --model "$DEMO" --backend cpu --threads 2 "$@"; }
gen --prompt "Hello there" --max-new-tokens 6 --ignore-eos >"$SCRATCH/raw.json" || fail "--prompt"
grep -q '"text": *"' "$SCRATCH/raw.json" || fail "no text"
grep -q '"prompt_tokens": *2[,}]' "$SCRATCH/raw.json" || fail "'Hello there' is not 2 tokens"
gen --prompt "Hello there" --chat --max-new-tokens 6 --ignore-eos >"$SCRATCH/chat.json" || fail "--chat"
# <|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n
grep -q '"prompt_tokens": *10[,}]' "$SCRATCH/chat.json" || fail "chat prompt length"
gen --prompt "Hello there" --chat --no-thinking --max-new-tokens 2 >"$SCRATCH/nt.json" ||
    fail "--no-thinking"
grep -q '"prompt_tokens": *14[,}]' "$SCRATCH/nt.json" || fail "no-thinking prompt length"
sampled() { gen --ids 9707,1879 --max-new-tokens 12 --ignore-eos --temperature 1 --top-p 0.95 "$@" |
    grep -o '"ids": *\[[^]]*\]'; }
a=$(sampled --seed 1) && b=$(sampled --seed 1) && c=$(sampled --seed 2) || fail "sampled generate"
[ "$a" = "$b" ] || fail "the same seed gave different tokens"
[ "$a" != "$c" ] || fail "seeds 1 and 2 gave the same 12 tokens"
# A prompt longer than one engine step (2048 tokens) is prefilled in chunks.
long=$(seq -s, 1000 3499)
gen --ids "$long" --max-new-tokens 2 --ignore-eos | grep -q '"prompt_tokens": *2500[,}]' ||
    fail "long prompt"

# Bad command lines: exit 2 with a message; a missing model: exit 1.
expect() {
    want=$1; shift
    set +e
    "$@" >/dev/null 2>"$SCRATCH/err"
    rc=$?
    set -e
    [ "$rc" -eq "$want" ] || fail "exit $rc (want $want): $*"
    [ -s "$SCRATCH/err" ] || fail "no message: $*"
}
expect 2 $Q score --model "$dir" --ids 1,,2 --logits-out "$SCRATCH/x"
vocab=$(json_value "$dir/reference.json" vocab)
expect 2 $Q score --model "$dir" --ids "1,$vocab" --logits-out "$SCRATCH/x"
expect 2 $Q generate --model "$dir" --ids "$vocab"
expect 2 $Q score --model "$dir" --ids 1,2
expect 2 $Q score --model "$dir" --ids 1,2 --logits-out "$SCRATCH/x" --backend tpu
expect 2 $Q generate --model "$dir" --ids 1,2 --temperature warm
expect 2 $Q generate --model "$dir" --ids 1,2 --top-p 1.5
expect 2 $Q generate --model "$dir" --ids 1,2 --max-new-tokens 0
expect 2 $Q generate --model "$dir" --ids 1,2 --prompt hi
expect 2 $Q generate --model "$dir"
expect 1 $Q generate --model "$SCRATCH/nothing-here" --ids 1,2
grep -q "nothing-here: no such folder (expected a Hugging Face model folder" "$SCRATCH/err" ||
    fail "a missing model folder is not named as a folder: $(cat "$SCRATCH/err")"
expect 1 $Q generate --model "$dir/config.json" --ids 1,2
grep -q "config.json: not a folder" "$SCRATCH/err" || fail "a file given as the model folder"
echo '[{"role":"user","content":"hi"}]' >"$SCRATCH/msgs.json"
expect 1 sh -c "$Q render --tokenizer '$SCRATCH/nothing-here' <'$SCRATCH/msgs.json'"
grep -q "nothing-here: no such folder (expected a folder with tokenizer.json)" "$SCRATCH/err" ||
    fail "a missing tokenizer folder: $(cat "$SCRATCH/err")"
expect 1 $Q generate --model "$dir" --prompt hi # no tokenizer in the folder
expect 1 $Q score --model "$dir" --ids 1,2 --logits-out "$SCRATCH/no/such/dir/x"
if $Q --help | grep -q 'CPU-only build'; then
    expect 1 $Q score --model "$dir" --ids 1,2 --logits-out "$SCRATCH/x" --backend cuda
    grep -q CUDA "$SCRATCH/err" || fail "the CUDA error does not say CUDA"
fi
exit 0
