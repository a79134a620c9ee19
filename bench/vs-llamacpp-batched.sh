#!/usr/bin/env bash
# vs-llamacpp-batched.sh: batching on one rank (BENCHMARKS.md section 3, issue 5): output tok/s
# at several batch sizes, ours against llama.cpp's llama-batched-bench, same file and threads.
# Each of B sequences starts from a one-token prompt and generates --gen tokens; llama.cpp's
# figure is its S_TG column (generation only), ours is all generated tokens / wall time. The two
# alternate run by run (--reps runs of each per batch size, one llama.cpp run then one of ours), so
# a burst of load on the host falls on both; the table shows the medians.
#
#   bench/vs-llamacpp-batched.sh [--model PATH] [--threads 2] [--build-dir build] [--batches "1 8 32 64"]
#                                [--gen 64] [--reps 3]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODEL=${SPK_CACHE:-$HOME/.cache/sparkinfer}/models/SmolLM2-135M-Instruct.Q4_1.gguf
THREADS=2
BUILD=$ROOT/build
BATCHES="1 8 32 64"
GEN=64
REPS=3
while [ $# -gt 0 ]; do
    case $1 in
        --model) MODEL=$2; shift 2 ;;
        --threads) THREADS=$2; shift 2 ;;
        --build-dir) BUILD=$2; shift 2 ;;
        --batches) BATCHES=$2; shift 2 ;;
        --gen) GEN=$2; shift 2 ;;
        --reps) REPS=$2; shift 2 ;;
        *) echo "vs-llamacpp-batched.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
eval "$(bash "$ROOT/tests/ref/build-llamacpp.sh" 2>/dev/null | grep -E '^[A-Z_]+=' )"
LBB=${LLAMA_BATCHED_BENCH:-${SPK_CACHE:-$HOME/.cache/sparkinfer}/llamacpp/build/bin/llama-batched-bench}
[ -x "$LBB" ] || { echo "llama-batched-bench not found at $LBB" >&2; exit 1; }
maxb=$(echo "$BATCHES" | tr ' ' '\n' | sort -n | tail -1)
ctx=$(( (GEN + 2) * maxb + 64 ))
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
printf "%-6s %12s %12s %8s\n" batch "ours tok/s" "llama.cpp" ratio
for b in $BATCHES; do
    th=() ou=()
    for _ in $(seq "$REPS"); do
        th+=("$("$LBB" -m "$MODEL" -t "$THREADS" -npp 1 -ntg "$GEN" -npl "$b" -c "$ctx" 2>/dev/null |
            awk -F'|' -v b="$b" '$4+0 == b && $2+0 == 1 { gsub(/ /, "", $9); print $9; exit }')")
        ou+=("$("$BUILD/examples/spk-bench-single" --model "$MODEL" --threads "$THREADS" --batch "$b" \
            --prompt-tokens 16 --gen-tokens "$GEN" --reps 1 2>/dev/null | sed -n 's/^decode_tok_s=//p')")
    done
    theirs=$(median "${th[@]}") ours=$(median "${ou[@]}")
    printf "%-6s %12.1f %12.1f %8.2f\n" "$b" "$ours" "$theirs" "$(echo "$ours / $theirs" | bc -l)"
done
