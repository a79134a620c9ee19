#!/usr/bin/env bash
# Weight repacking at load (BENCHMARKS.md 9d, 9j, 9k, 9m, 9n): the Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, MXFP4, Q2_K, Q3_K, Q4_K, Q5_K and Q6_K kernels on the file
# layout against the packed layout (bench/repack_kernel.c; 512 x 1536 stays in cache, 512 x 98304
# streams from memory as a vocabulary head does), then spk-bench-single's resident memory on a Q4_0 file
# with SPK_NO_REPACK=1 and with packing (VmRSS sampled from /proc while it runs: the sample at 3/4
# of the run, while decoding, and VmHWM, the peak). Speed against llama.cpp: bench/vs-llamacpp-types.sh with and without
# SPK_NO_REPACK=1.
# Usage: bench/repack.sh [--build-dir build] [--model Q4_0.gguf] [--reps 7] [--prompt-tokens 64]
#                        [--gen-tokens 32] [--types "q4_0 q5_0 ..."] [--no-rss]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
build=$ROOT/build
model=${SPK_CACHE:-$HOME/.cache/sparkinfer}/synth/types-L8/Q4_0.gguf
reps=7
pt=64
gt=32
types="q4_0 q4_1 q5_0 q5_1 q8_0 mxfp4 q2_k q3_k q4_k q5_k q6_k"
rss_part=1
while [ $# -gt 0 ]; do
    case $1 in
        --build-dir) build=$2; shift 2 ;;
        --model) model=$2; shift 2 ;;
        --reps) reps=$2; shift 2 ;;
        --prompt-tokens) pt=$2; shift 2 ;;
        --gen-tokens) gt=$2; shift 2 ;;
        --types) types=$2; shift 2 ;;
        --no-rss) rss_part=0; shift ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
cc -O2 -std=c11 -D_GNU_SOURCE -I"$ROOT/include" -I"$ROOT/lib" "$ROOT/bench/repack_kernel.c" \
    "$build/libsparkinfer.a" $(pkg-config --libs libsodium libpcre2-8 libcjson) -lm -lpthread -ldl -o "$out/k"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
for t in $types; do
    "$out/k" 512 1536 "$reps" "$t"
    "$out/k" 512 98304 "$reps" "$t"
done
[ "$rss_part" = 1 ] || exit 0
[ -f "$model" ] || { echo "no $model: RSS part skipped (bench/vs-llamacpp-types.sh --types Q4_0 makes it)"; exit 0; }
rss() { # $1: SPK_NO_REPACK value; prints VmRSS at 3/4 of the run (decoding) and VmHWM, in MiB
    SPK_NO_REPACK=$1 "$build/examples/spk-bench-single" --model "$model" --threads 1 --prompt-tokens "$pt" \
        --gen-tokens "$gt" --reps 1 >"$out/b.$1" 2>&1 &
    local pid=$! hwm=0
    : >"$out/s.$1"
    while [ -r /proc/$pid/status ]; do
        l=$(awk '/^VmRSS/{print $2}' /proc/$pid/status 2>/dev/null || true)
        h=$(awk '/^VmHWM/{print $2}' /proc/$pid/status 2>/dev/null || true)
        [ -n "$l" ] && echo "$l" >>"$out/s.$1"
        [ -n "$h" ] && hwm=$h
        sleep 0.05
    done
    wait $pid || true
    local n at
    n=$(wc -l <"$out/s.$1")
    at=$(sed -n "$((n * 3 / 4 > 0 ? n * 3 / 4 : 1))p" "$out/s.$1")
    printf '%d MiB at 3/4 of the run, %d MiB peak (%s)\n' $((${at:-0} / 1024)) $((hwm / 1024)) \
        "$(tr '\n' ' ' <"$out/b.$1" | grep -o 'decode_tok_s=[0-9.]*' || true)"
}
echo "spk-bench-single on $(basename "$model") ($(($(stat -c %s "$model") / 1048576)) MiB), RSS:"
echo "  SPK_NO_REPACK=1: $(rss 1)"
echo "  packed:          $(rss 0)"
