#!/bin/sh
# cli.sh - the command-line contract: every command has --help, usage errors
# exit 2, and tokenize/detokenize/render/score/generate work through the
# binary as documented (the fixed interface other tools rely on).
top_builddir=${top_builddir:-.}
. "$top_srcdir/tests/e2e_lib.sh"
cd "$SCRATCH"
for c in run status export retry-failed make-demo-model tokenize detokenize render score generate; do
    "$Q" $c --help >help.txt || fail "$c --help failed"
    grep -q "usage: qwen3-batch $c" help.txt || fail "$c --help has no usage line"
done
"$Q" --help | grep -q "exit codes" || fail "top-level help lacks exit codes"
set +e
"$Q" no-such-command 2>/dev/null; [ $? -eq 2 ] || fail "unknown command: want exit 2"
"$Q" tokenize 2>/dev/null; [ $? -eq 2 ] || fail "tokenize without --tokenizer: want exit 2"
"$Q" score --model "$DEMO" 2>/dev/null; [ $? -eq 2 ] || fail "score without --ids: want exit 2"
set -e

# tokenize / detokenize round trip on text with CJK, emoji and specials.
printf 'Hello, 世界! 👩‍💻 <|im_end|>\r\n  x' >t.txt
"$Q" tokenize --tokenizer "$DEMO" <t.txt >ids.json
grep -q '151645' ids.json || fail "special token not matched whole: $(cat ids.json)"
"$Q" detokenize --tokenizer "$DEMO" <ids.json >back.txt
cmp -s t.txt back.txt || fail "detokenize(tokenize(x)) != x"

# render: the empty think block with --no-thinking.
echo '[{"role":"system","content":"S"},{"role":"user","content":"U"}]' >m.json
"$Q" render --tokenizer "$DEMO" --no-thinking <m.json >r.txt
printf '<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n' >want.txt
cmp -s r.txt want.txt || fail "render --no-thinking differs"

# score writes n_positions x vocab float32; generate prints JSON.
"$Q" score --model "$DEMO" --ids 1,2,3 --logits-out l.f32 --backend cpu >s.json
[ "$(stat -c %s l.f32)" -eq $((3 * 151936 * 4)) ] || fail "score: wrong logits size"
grep -q '"n_positions": 3' s.json || fail "score summary: $(cat s.json)"
"$Q" generate --model "$DEMO" --prompt "Hi" --chat --max-new-tokens 5 --ignore-eos --backend cpu >g.json
grep -q '"completion_tokens":5' g.json || fail "generate: $(cat g.json)"
grep -q '"finish_reason":"length"' g.json || fail "generate finish_reason: $(cat g.json)"
# Same seed, same text; the greedy default is deterministic too.
"$Q" generate --model "$DEMO" --prompt "Hi" --max-new-tokens 8 --temperature 0.9 --seed 5 --backend cpu >a.json
"$Q" generate --model "$DEMO" --prompt "Hi" --max-new-tokens 8 --temperature 0.9 --seed 5 --backend cpu >b.json
[ "$(sed 's/"seconds":[^,]*,//' a.json)" = "$(sed 's/"seconds":[^,]*,//' b.json)" ] || fail "same seed, different output"
echo "cli: all checks passed"
