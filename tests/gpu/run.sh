#!/bin/sh
# tests/gpu/run.sh - the GPU checks and benchmark, run on the H100 machine.
#
#   tests/gpu/run.sh [check|sanitize|refs|bench|bench-quick|all]...
#
# Needs a GPU; CI never runs this (make check runs test_cuda_engine, which
# skips without a GPU). Binaries come from the environment, so that a bundle
# built elsewhere can be used (the device image lacks some libraries):
#   QWEN3_BATCH  the qwen3-batch binary        (default: ./qwen3-batch)
#   TEST_CUDA    the test_cuda_engine binary   (default: ./tests/test_cuda_engine)
#   REF_MODELS   folder of reference checkpoints with reference.json
#                (default: $top_srcdir/tests/fixtures/ref/models)
#   LOG          folder for full logs (default: a temporary folder)
# check:      the engine against the CPU engine on small random models
# sanitize:   compute-sanitizer memcheck, racecheck and synccheck, quick subset
# refs:       score --backend cuda vs cpu on every reference checkpoint
# bench:      qwen3-batch bench --synthetic qwen3-14b, issue #4/#5 workloads
# profile:    the same with --profile: GPU time per operation
# w4bench:    tests/gpu/w4a16_bench.cu (int4 products alone; needs nvcc)
set -u
here=$(cd "$(dirname "$0")" && pwd)
top=${top_srcdir:-$(cd "$here/../.." && pwd)}
bin=${QWEN3_BATCH:-./qwen3-batch}
test_bin=${TEST_CUDA:-./tests/test_cuda_engine}
refs=${REF_MODELS:-$top/tests/fixtures/ref/models}
log=${LOG:-$(mktemp -d)}
mkdir -p "$log"
status=0

if ! nvidia-smi -L >/dev/null 2>&1; then
    echo "SKIP: no GPU"
    exit 77
fi
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv,noheader

step() { echo "== $*"; }
fail() { echo "FAIL: $*"; status=1; }

do_check() {
    step "test_cuda_engine"
    "$test_bin" >"$log/check.log" 2>&1 || fail "test_cuda_engine (see check.log)"
    cat "$log/check.log"
    # The other shapes of the fp16 prefill attention kernel, forced: the
    # GPU picks one by shared memory per SM (an H100: two query tiles per
    # warp, two stages; a 3090: one query tile, one stage).
    for shape in "1 1" "1 2" "2 1" "2 2"; do
        set -- $shape
        step "test_cuda_engine, QWEN3_BATCH_ATTN_QT=$1 QWEN3_BATCH_ATTN_STAGES=$2"
        QWEN3_BATCH_ATTN_QT=$1 QWEN3_BATCH_ATTN_STAGES=$2 "$test_bin" >"$log/check-qt$1-st$2.log" 2>&1 ||
            fail "test_cuda_engine with QT=$1 STAGES=$2 (see check-qt$1-st$2.log)"
        tail -n 1 "$log/check-qt$1-st$2.log"
    done
}

do_sanitize() {
    # memcheck on both subsets; the slower tools on the odd-shaped model only
    for run in "memcheck quick" "memcheck odd" "initcheck odd" "racecheck odd" "synccheck odd"; do
        set -- $run
        step "compute-sanitizer --tool $1 ($2 subset)"
        if [ $1 = initcheck ]; then
            # Report only: initcheck does not see the stores of cuBLAS's Hopper
            # kernels (TMA), so every read of a cuBLAS result counts as
            # uninitialized (seen 2026-11: all flagged reads were of cuBLAS
            # outputs, while the results matched the double reference).
            timeout 300 compute-sanitizer --tool $1 --print-limit 5 "$test_bin" $2 \
                >"$log/sanitize-$1-$2.log" 2>&1
        else
            timeout 300 compute-sanitizer --tool $1 --error-exitcode 9 "$test_bin" $2 \
                >"$log/sanitize-$1-$2.log" 2>&1 || fail "compute-sanitizer $1 $2 (see sanitize-$1-$2.log)"
        fi
        grep -E "ERROR SUMMARY|RACECHECK SUMMARY|checks, " "$log/sanitize-$1-$2.log" | head -n 3
    done
}

do_refs() {
    # Every reference checkpoint: the CUDA engine's logits against HF's
    # (reference.json, fp32 on the same weights) and against the CPU engine.
    if [ ! -d "$refs" ]; then
        echo "no reference checkpoints in $refs"
        return
    fi
    for d in "$refs"/*/; do
        [ -f "$d/config.json" ] || continue
        name=$(basename "$d")
        hd=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1])).get('head_dim', 128))" "$d/config.json")
        step "reference $name"
        if [ "$hd" != 64 ] && [ "$hd" != 128 ]; then
            echo "SKIP: head_dim $hd (the CUDA kernels take 64 or 128, as Qwen3 models use)"
            continue
        fi
        ncase=$(python3 -c "import json,sys; print(len(json.load(open(sys.argv[1]))['cases']))" "$d/reference.json")
        k=0
        while [ $k -lt "$ncase" ]; do
            ids=$(python3 -c "import json,sys; print(','.join(map(str, json.load(open(sys.argv[1]))['cases'][int(sys.argv[2])]['ids'])))" "$d/reference.json" $k)
            "$bin" score --model "$d" --ids "$ids" --backend cpu --logits-out "$log/$name.$k.cpu.f32" >/dev/null || { fail "$name: cpu score"; break; }
            "$bin" score --model "$d" --ids "$ids" --backend cuda --logits-out "$log/$name.$k.cuda.f32" >/dev/null || { fail "$name: cuda score"; break; }
            python3 - "$d" $k "$log/$name.$k.cpu.f32" "$log/$name.$k.cuda.f32" <<'PY' || fail "$name case $k: logits differ"
import json, sys, array, os
d, k = sys.argv[1], int(sys.argv[2])
ref = json.load(open(os.path.join(d, "reference.json")))
case, V = ref["cases"][k], ref["vocab"]
def load(p):
    a = array.array('f'); a.frombytes(open(p, 'rb').read()); return a
hf, cpu, cuda = load(os.path.join(d, case["logits_file"])), load(sys.argv[3]), load(sys.argv[4])
n = len(hf) // V
mx = max(abs(x) for x in hf)
e_hf = max(abs(x - y) for x, y in zip(hf, cuda)); e_cpu = max(abs(x - y) for x, y in zip(cpu, cuda))
am = lambda v, p: max(range(V), key=lambda i: v[p * V + i])
agree = sum(am(hf, p) == am(cuda, p) for p in range(n))
print(f"case {k}: {n} positions; max |cuda - hf| {e_hf:.4g}, |cuda - cpu| {e_cpu:.4g} of max |logit| {mx:.4g} ({e_hf / mx:.2e} relative); argmax agrees {agree}/{n}")
sys.exit(0 if e_hf / mx < 2e-2 else 1)
PY
            k=$((k + 1))
        done
        # Greedy continuation of case 0 against HF's.
        ids=$(python3 -c "import json,sys; print(','.join(map(str, json.load(open(sys.argv[1]))['cases'][0]['ids'])))" "$d/reference.json")
        want=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['cases'][0]['greedy'])" "$d/reference.json" | tr -d ' ')
        n=$(python3 -c "import json,sys; print(len(json.load(open(sys.argv[1]))['cases'][0]['greedy']))" "$d/reference.json")
        got=$("$bin" generate --model "$d" --ids "$ids" --max-new-tokens "$n" --ignore-eos --backend cuda 2>/dev/null | python3 -c "import json,sys; print(json.load(sys.stdin)['ids'])" | tr -d ' ')
        [ "$got" = "$want" ] && echo "greedy: $got (HF $want) equal" || fail "$name: greedy $got, HF $want"
    done
}

bench() {
    step "bench $*"
    "$bin" bench --synthetic qwen3-14b "$@" 2>&1 | tee -a "$log/bench.log" || fail "bench $*"
}

do_bench() {
    # issue #4: prefill 1x4096, 16x1024; decode B=1, B=16/64 at ~1.1k, B=16 at ~4.2k
    bench --npp 4096 --ntg 1 --npl 1
    bench --npp 1024 --ntg 128 --npl 16,64
    bench --npp 1024 --ntg 128 --npl 16,64 --kv-cache int8
    bench --npp 512 --ntg 128 --npl 1
    bench --npp 4096 --ntg 128 --npl 16 --kv-cache f16
    bench --npp 4096 --ntg 128 --npl 16 --kv-cache int8
    # a 24 GB card: 14B AWQ weights and 131,072 tokens of int8 KV within 22 GiB
    bench --gpu-memory 22GiB --kv-cache int8 --max-kv-tokens 131072 --npp 2016 --ntg 32 --npl 64
}

do_bench_quick() {
    bench --npp 512 --ntg 32 --npl 1,16,64
    bench --npp 4096 --ntg 1 --npl 1
}

do_w4bench() {
    step "w4a16_bench"
    nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -gencode=arch=compute_86,code=sm_86 -DQ3_SM90A=1 \
        -o "$log/w4a16_bench" "$here/w4a16_bench.cu" || { fail "w4a16_bench: build"; return; }
    "$log/w4a16_bench" 2>&1 | tee "$log/w4bench.log" || fail "w4a16_bench"
}

do_profile() {
    bench --npp 512,4096 --ntg 16 --npl 1,64 --profile
}

[ $# -gt 0 ] || set -- all
for what in "$@"; do
    case $what in
    check) do_check ;;
    sanitize) do_sanitize ;;
    refs) do_refs ;;
    bench) do_bench ;;
    bench-quick) do_bench_quick ;;
    profile) do_profile ;;
    w4bench) do_w4bench ;;
    all) do_check; do_sanitize; do_refs; do_bench ;;
    *) echo "unknown: $what"; exit 2 ;;
    esac
done
echo "logs in $log"
[ $status = 0 ] && echo "GPU checks: all passed" || echo "GPU checks: FAILED"
exit $status
