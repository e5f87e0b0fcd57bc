#!/bin/sh
# run_e2e.sh - `qwen3-batch run` end to end on the demo model (CPU): inputs
# of every kind and bad input of every kind, re-runs that do no work, grown
# inputs, a changed prompt, the lock, a bad job file, thinking mode.
top_builddir=${top_builddir:-.}
. "$top_srcdir/tests/e2e_lib.sh"
cd "$SCRATCH"

# --- inputs: JSONL with bad lines, a folder, archives (one corrupt) ---
mkdir -p in/folder/sub
cat >in/docs.jsonl <<'J'
{"id": "a1", "text": "The river rose overnight and the town moved its market to the hill."}
{"id": "a2", "text": "Bees communicate the direction of flowers with a waggle dance."}
{"id": "a3", "text": "not closed
{"id": "a4", "body": "no text field here"}
{"id": "a5", "text": ""}
{"id": "a6", "text": "Tea was first drunk as medicine, later as a daily habit."}
J
printf '{"id": "a7", "text": "bad \377 byte"}\n' >>in/docs.jsonl
echo "Glaciers carve valleys over thousands of years." >in/folder/g.txt
echo "A short note about the harbour lights." >in/folder/sub/h.md
: >in/folder/empty.txt
echo "binary-ish but ignored by include" >in/folder/skip.bin
mkdir -p arc && echo "Archived document one." >arc/one.txt && echo "Archived document two." >arc/two.txt
tar czf in/docs.tar.gz -C arc one.txt two.txt
head -c 100 in/docs.tar.gz >in/broken.tar.gz

write_job job.yaml "  - path: in/docs.jsonl" "    id_field: id" \
    "  - path: in/folder" "  - path: in/docs.tar.gz" "  - path: in/broken.tar.gz"

set +e
"$Q" run job.yaml >out1.json 2>err1.txt; rc=$?
set -e
cat err1.txt >&2
[ $rc -eq 3 ] || fail "first run: exit $rc, want 3 (some documents failed)"
good=$(wc -l <job.jsonl)
# a1 a2 a6, g.txt h.md, one.txt two.txt = 7 good documents
[ "$good" -eq 7 ] || fail "job.jsonl has $good lines, want 7"
[ "$(sed -n 's/^{"id":"\([^"]*\)".*/\1/p' job.jsonl | sort -u | wc -l)" -eq 7 ] || fail "duplicate ids in job.jsonl"
grep -q '"event":"summary"' out1.json || fail "no summary line"
grep -q '"failed_at_ingest":[1-9]' out1.json || fail "bad inputs not recorded as failed"
grep -q '"finish_reason":"\(stop\|length\)"' job.jsonl || fail "no finish_reason"
if grep -q '<think>' job.jsonl; then fail "think tags leaked into the output"; fi
"$Q" status job.yaml >status.txt || true
cat status.txt >&2

# --- a re-run over the same inputs does no work ---
cp job.jsonl before.jsonl
set +e; "$Q" run job.yaml >out2.json 2>/dev/null; rc=$?; set -e
[ $rc -eq 3 ] || fail "second run: exit $rc, want 3 (the failed documents are still failed)"
grep -q '"docs_new":0,"docs_finished":0' out2.json || fail "re-run did work: $(cat out2.json)"
cmp -s before.jsonl job.jsonl || fail "re-run changed the results file"

# --- grown inputs: only the new document is processed ---
echo '{"id": "a8", "text": "Lighthouses once burned whale oil."}' >>in/docs.jsonl
set +e; "$Q" run job.yaml >out3.json 2>/dev/null; set -e
grep -q '"docs_new":1,"docs_finished":1' out3.json || fail "grown input: $(cat out3.json)"
[ "$(wc -l <job.jsonl)" -eq 8 ] || fail "grown input: want 8 lines"
head -n 7 job.jsonl | cmp -s - before.jsonl || fail "grown input rewrote earlier lines"

# --- the lock: a second run while one holds the ledger exits 5 ---
flock -n job.ledger.sqlite.lock -c "sleep 3" &
sleep 0.5
set +e; "$Q" run job.yaml >/dev/null 2>lock.txt; rc=$?; set -e
wait
[ $rc -eq 5 ] || fail "locked ledger: exit $rc, want 5"
grep -q "locked" lock.txt || fail "locked ledger: message does not say so: $(cat lock.txt)"

# --- a changed prompt processes everything again ---
sed -i 's/You summarize documents./You summarize documents in one line./' job.yaml
set +e; "$Q" run job.yaml >out4.json 2>/dev/null; set -e
grep -q '"docs_new":8,"docs_finished":8' out4.json || fail "changed prompt: $(cat out4.json)"
# The engine time split by kind of step adds up, and every sampled token is
# either a prompt's first (one per document) or a decode row.
eng=$(summary_num out4.json engine_seconds) pre=$(summary_num out4.json prefill_step_seconds)
dec=$(summary_num out4.json decode_step_seconds) gen=$(summary_num out4.json generated_tokens)
prows=$(summary_num out4.json prefill_decode_rows) drows=$(summary_num out4.json decode_rows)
dsteps=$(summary_num out4.json decode_steps) psteps=$(summary_num out4.json prefill_steps)
awk -v e="$eng" -v p="$pre" -v d="$dec" 'BEGIN { x = e - p - d; exit !(x < 0.0025 && x > -0.0025) }' ||
    fail "engine_seconds $eng != prefill $pre + decode $dec"
[ "$psteps" -ge 1 ] && [ "$dsteps" -ge 1 ] && [ "$drows" -ge "$dsteps" ] ||
    fail "step counts: prefill $psteps, decode $dsteps with $drows rows"
[ "$gen" -eq $((8 + prows + drows)) ] ||
    fail "generated $gen != 8 documents + $prows + $drows decode rows"

# --- a bad job file names file:line:column and exits 2 ---
printf 'model: %s\ninputs: [in/docs.jsonl]\nprompt:\n  user: "{{text}}"\n  modee: thinking\n' "$DEMO" >bad.yaml
set +e; "$Q" run bad.yaml 2>bad.txt; rc=$?; set -e
[ $rc -eq 2 ] || fail "bad job: exit $rc, want 2"
grep -q "bad.yaml:5:3" bad.txt || fail "bad job: no file:line:col: $(cat bad.txt)"

# --- thinking mode with a budget: thought closed, output split ---
mkdir -p in/think && cp in/folder/g.txt in/folder/sub/h.md in/think/
write_job think.yaml "  - in/think"
sed -i 's/mode: non-thinking/mode: thinking\n  thinking_budget: 6/; s/max_new_tokens: 12/max_new_tokens: 64/' think.yaml
set +e; "$Q" run think.yaml >out5.json 2>err5.txt; rc=$?; set -e
[ $rc -eq 0 ] || { cat err5.txt >&2; fail "thinking run: exit $rc"; }
grep -q '"thinking_truncated":true' think.jsonl || fail "thinking budget never triggered"
if grep -q '<think>\|</think>' think.jsonl; then fail "think tags in thinking output"; fi
echo "run_e2e: all checks passed"
