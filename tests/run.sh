#!/bin/sh
# tests/run.sh - the test command: installs what the build needs, builds in
# ./build and runs every test (`make check`). Ends with "N passed, N failed".
set -e
top=$(cd "$(dirname "$0")/.." && pwd)
"$top/build-aux/deps.sh"
cd "$top/build"
status=0
make -s -j"$(nproc)" check >/dev/null 2>&1 || status=$?
for f in $(find . -name '*.trs'); do
    t=${f%.trs}; r=$(sed -n 's/^:test-result: //p' "$f")
    echo "$r: ${t#./}"
    [ "$r" = FAIL ] || [ "$r" = ERROR ] && [ -f "$t.log" ] && tail -n 20 "$t.log" | sed 's/^/    /'
done | sort -k2
pass=$(grep -l '^:test-result: PASS' $(find . -name '*.trs') 2>/dev/null | wc -l)
fail=$(grep -lE '^:test-result: (FAIL|ERROR)' $(find . -name '*.trs') 2>/dev/null | wc -l)
echo "$pass passed, $fail failed"
[ "$fail" = 0 ] && [ "$status" = 0 ]
