#!/usr/bin/env bash
# vs-llamacpp-batched.sh: batching on one rank (BENCHMARKS.md section 3, issue 5): output tok/s
# at several batch sizes, ours against llama.cpp's llama-batched-bench, same file and threads.
# Each of B sequences starts from a one-token prompt and generates --gen tokens; llama.cpp's
# figure is its S_TG column (generation only), ours is all generated tokens / wall time.
#
#   bench/vs-llamacpp-batched.sh [--model PATH] [--threads 2] [--build-dir build] [--batches "1 8 32 64"]
#                                [--gen 64]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODEL=${SPK_CACHE:-$HOME/.cache/sparkinfer}/models/SmolLM2-135M-Instruct.Q4_1.gguf
THREADS=2
BUILD=$ROOT/build
BATCHES="1 8 32 64"
GEN=64
while [ $# -gt 0 ]; do
    case $1 in
        --model) MODEL=$2; shift 2 ;;
        --threads) THREADS=$2; shift 2 ;;
        --build-dir) BUILD=$2; shift 2 ;;
        --batches) BATCHES=$2; shift 2 ;;
        --gen) GEN=$2; shift 2 ;;
        *) echo "vs-llamacpp-batched.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
eval "$(bash "$ROOT/tests/ref/build-llamacpp.sh" 2>/dev/null | grep -E '^[A-Z_]+=' )"
LBB=${LLAMA_BATCHED_BENCH:-${SPK_CACHE:-$HOME/.cache/sparkinfer}/llamacpp/build/bin/llama-batched-bench}
[ -x "$LBB" ] || { echo "llama-batched-bench not found at $LBB" >&2; exit 1; }
npl=$(echo "$BATCHES" | tr ' ' ',')
ref=$("$LBB" -m "$MODEL" -t "$THREADS" -npp 1 -ntg "$GEN" -npl "$npl" -c $(( (GEN + 2) * 64 + 64 )) 2>/dev/null)
printf "%-6s %12s %12s %8s\n" batch "ours tok/s" "llama.cpp" ratio
for b in $BATCHES; do
    theirs=$(echo "$ref" | awk -F'|' -v b="$b" '$4+0 == b && $2+0 == 1 { gsub(/ /, "", $9); print $9; exit }')
    ours=$("$BUILD/examples/spk-bench-single" --model "$MODEL" --threads "$THREADS" --batch "$b" --prompt-tokens 16 \
        --gen-tokens "$GEN" --reps 3 2>/dev/null | sed -n 's/^decode_tok_s=//p')
    printf "%-6s %12.1f %12.1f %8.2f\n" "$b" "$ours" "$theirs" "$(echo "$ours / $theirs" | bc -l)"
done
