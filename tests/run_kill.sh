#!/bin/sh
# run_kill.sh - kill -9 at random moments, resume, and prove that every
# document is done exactly once and that the outputs equal an uninterrupted
# run's (sampling is seeded per document, so text must match exactly).
top_builddir=${top_builddir:-.}
. "$top_srcdir/tests/e2e_lib.sh"
cd "$SCRATCH"
N=48
i=0
while [ $i -lt $N ]; do
    words=$(( (i * 37) % 90 + 5 ))
    text=$(yes "word$i and some filler text" | head -n $words | tr '\n' ' ')
    printf '{"id": "d%02d", "text": "%s"}\n' $i "$text"
    i=$((i + 1))
done >docs.jsonl
mkdir ref kill
for d in ref kill; do
    write_job $d/job.yaml "  - path: ../docs.jsonl" "    id_field: id"
    sed -i 's/max_new_tokens: 12/max_new_tokens: 80/' $d/job.yaml
    sed -i 's/progress: json/progress: none/' $d/job.yaml
    # A few documents at a time, so that admission spans the whole run and
    # the 2 s time limit below leaves work however fast the engine is.
    printf 'batching:\n  max_seqs: 4\n' >>$d/job.yaml
done
"$Q" run ref/job.yaml >/dev/null 2>&1 || fail "uninterrupted run failed"
[ "$(wc -l <ref/job.jsonl)" -eq $N ] || fail "reference run: want $N lines"

# The time limit stops admitting documents and exits 4 with work left; a
# SIGTERM stops at once and exits 6. Both leave a resumable ledger.
set +e
"$Q" run kill/job.yaml --max-run-time 2s >/dev/null 2>&1; rc=$?
set -e
[ $rc -eq 4 ] || fail "--max-run-time 2s: exit $rc, want 4"
n1=$(wc -l <kill/job.jsonl)
[ "$n1" -lt $N ] || fail "time limit: all $n1 documents done, want some left"
"$Q" run kill/job.yaml >/dev/null 2>&1 &
pid=$!
sleep 1.2
kill -TERM $pid
set +e; wait $pid; rc=$?; set -e
[ $rc -eq 6 ] || [ $rc -eq 0 ] || fail "SIGTERM: exit $rc, want 6"

kills=0 tries=0
while [ $tries -lt 40 ]; do
    tries=$((tries + 1))
    "$Q" run kill/job.yaml >/dev/null 2>&1 &
    pid=$!
    # 0.2 .. 2.2 s: startup, ingest, mid-generation and commit all get hit.
    sleep "$(awk -v s=$tries 'BEGIN { srand(s * 7919); printf "%.2f", 0.2 + rand() * 2 }')"
    if kill -9 $pid 2>/dev/null; then
        kills=$((kills + 1))
    fi
    wait $pid 2>/dev/null && break || true
    [ -f kill/job.jsonl ] && n=$(wc -l <kill/job.jsonl) && [ "$n" -ge $N ] && break
done
"$Q" run kill/job.yaml >/dev/null 2>&1 || fail "final resume failed"
echo "killed $kills times in $tries runs"
[ $kills -ge 5 ] || fail "only $kills kills landed; the test did not test"
strip() { sed 's/,"seconds":[^,}]*//' "$1" | sort; }
[ "$(wc -l <kill/job.jsonl)" -eq $N ] || fail "killed run: $(wc -l <kill/job.jsonl) lines, want $N"
[ "$(sed -n 's/^{"id":"\([^"]*\)".*/\1/p' kill/job.jsonl | sort -u | wc -l)" -eq $N ] || fail "duplicate or missing documents"
strip ref/job.jsonl >ref.txt
strip kill/job.jsonl >kill.txt
diff ref.txt kill.txt >&2 || fail "outputs differ from the uninterrupted run"
"$Q" export kill/job.yaml -o export.jsonl
strip export.jsonl | diff - kill.txt >&2 || fail "JSONL differs from the ledger's export"
echo "run_kill: $N documents exactly once after $kills kills; outputs equal"
