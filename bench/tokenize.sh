#!/bin/sh
# bench/tokenize.sh - tokenizer throughput on a large mixed-language text.
#
#   bench/tokenize.sh [QWEN3_BATCH] [MB]
#
# Builds a corpus of about MB megabytes (default 50) from text found on the
# machine - English (vim's help files), many languages incl. CJK (vim's
# tutors, gnupg help, systemd catalogs), C code (/usr/include), numbers,
# emoji, and the multilingual HF reference texts of tests/fixtures/ref -
# repeats it to size, and runs `qwen3-batch tokenize --stats` on it, which
# prints input MB, token count and MB/s of the encode call (one thread).
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-./qwen3-batch}
mb=${2:-50}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/tok"
tar xJf "$here/data/qwen3-tokenizer.tar.xz" -C "$tmp/tok"

# Only files that are valid UTF-8 (iconv checks), so tokenize accepts them.
add() {
    for f in "$@"; do
        [ -f "$f" ] && iconv -f UTF-8 -t UTF-8 "$f" > /dev/null 2>&1 && cat "$f" >> "$tmp/one.txt"
    done
    return 0
}
: > "$tmp/one.txt"
add /usr/share/vim/vim*/doc/*.txt
add /usr/share/vim/vim*/tutor/*utf-8* /usr/share/gnupg/help.*.txt /usr/lib/systemd/catalog/*.catalog
add /usr/include/*.h
add "$here/tests/fixtures/ref/tokenizer.jsonl"
awk 'BEGIN { srand(7); for (i = 0; i < 20000; i++) { s = ""; for (k = 0; k < 12; k++)
        s = s sprintf("%d.%02d%s", int(rand() * 10 ^ int(rand() * 9)), int(rand() * 100),
                      k < 11 ? ", " : "\n"); printf "%s", s } }' >> "$tmp/one.txt"
for i in $(seq 2000); do
    printf '😀 👍🏽 family 👨‍👩‍👧‍👦 flags 🇩🇪🇯🇵 ❤️ 🏳️‍🌈 and 🎉🎉\n'
done >> "$tmp/one.txt"
size=$(wc -c < "$tmp/one.txt")
[ "$size" -gt 0 ] || { echo "no corpus text found" >&2; exit 1; }
want=$((mb * 1000000))
: > "$tmp/corpus.txt"
while [ "$(wc -c < "$tmp/corpus.txt")" -lt "$want" ]; do
    cat "$tmp/one.txt" >> "$tmp/corpus.txt"
done
echo "corpus: $(wc -c < "$tmp/corpus.txt") bytes ($size bytes repeated)" >&2
"$bin" tokenize --tokenizer "$tmp/tok" --stats < "$tmp/corpus.txt" > /dev/null
