#!/usr/bin/env bash
# layouts.sh: BENCHMARKS.md section 4 on one machine: PP2 and TP2 (two processes, one thread
# each, TCP over loopback) against one process with two threads, decode tok/s at several batch
# sizes, with the planner's prediction beside each measured figure. --ep adds TP2 + EP2 (a MoE
# model's experts split whole over the two ranks); --one-threads 1 gives the one-process row one
# thread, like each rank of the others.
#
#   bench/layouts.sh [--model PATH] [--build-dir build] [--batches "1 8 32"] [--gen 64] [--reps 3]
#                    [--mem-bw 18] [--tflops 0.1] [--link-gbps 15] [--link-us 15] [--allreduce-us 55]
#                    [--ep] [--one-threads 2]
#
# The hardware figures given to the planner are per rank (one thread here) and default to what
# was measured on the dev machine (BENCHMARKS.md): override them for yours.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODEL=${SPK_CACHE:-$HOME/.cache/sparkinfer}/models/SmolLM2-135M-Instruct.Q4_1.gguf
BUILD=$ROOT/build
BATCHES="1 8 32"
GEN=64
REPS=3
MEMBW=18
TFLOPS=0.1
LINK=15
LINKUS=15
ARUS=55
EP=0
ONE_THREADS=2
while [ $# -gt 0 ]; do
    case $1 in
        --model) MODEL=$2; shift 2 ;;
        --build-dir) BUILD=$2; shift 2 ;;
        --batches) BATCHES=$2; shift 2 ;;
        --gen) GEN=$2; shift 2 ;;
        --reps) REPS=$2; shift 2 ;;
        --mem-bw) MEMBW=$2; shift 2 ;;
        --tflops) TFLOPS=$2; shift 2 ;;
        --link-gbps) LINK=$2; shift 2 ;;
        --link-us) LINKUS=$2; shift 2 ;;
        --allreduce-us) ARUS=$2; shift 2 ;;
        --ep) EP=1; shift ;;
        --one-threads) ONE_THREADS=$2; shift 2 ;;
        *) echo "layouts.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
BENCH=$BUILD/examples/spk-bench-single
PLAN=$BUILD/examples/spk-plan
measure() { # pp tp threads batch [ep] -> decode tok/s
    "$BENCH" --model "$MODEL" --pp "$1" --tp "$2" --ep "${5:-1}" --threads "$3" --batch "$4" --prompt-tokens 64 \
        --gen-tokens "$GEN" --reps "$REPS" 2>/dev/null | sed -n 's/^decode_tok_s=//p'
}
predict() { # pp tp batch [ep] -> predicted decode tok/s for world 2 (world 1 for 1x1)
    local world=$(( $1 * $2 )) label="pp$1 tp$2"
    [ "${4:-1}" -gt 1 ] && label="pp$1 ep$4"
    "$PLAN" --model "$MODEL" --world "$world" --batch "$3" --context 64 --mem-bw "$MEMBW" --tflops "$TFLOPS" \
        --link-gbps "$LINK" --link-latency-us "$LINKUS" --allreduce-us "$ARUS" --act-bytes 4 2>/dev/null |
        awk -v l="$label" '{ if ($1" "$2 == l) { print $3; exit } }'
}
printf "%-6s %-10s %12s %8s %12s %8s\n" batch layout "tok/s" "x 1rank" "predicted" "x pred"
for b in $BATCHES; do
    one=$(measure 1 1 "$ONE_THREADS" "$b")
    # the planner's one-rank figure: one rank with ONE_THREADS threads' worth of bandwidth and compute
    p1=$("$PLAN" --model "$MODEL" --world 1 --batch "$b" --context 64 --mem-bw "$(echo "$MEMBW*$ONE_THREADS" | bc)" \
        --tflops "$(echo "$TFLOPS*$ONE_THREADS" | bc)" 2>/dev/null | awk '$1=="pp1" && $2=="tp1" {print $3; exit}')
    printf "%-6s %-10s %12.1f %8s %12.1f %8s\n" "$b" "1 rank" "$one" "1.00" "$p1" "1.00"
    lays="2:1:1 1:2:1"
    [ "$EP" = 1 ] && lays="$lays 1:2:2"
    for l in $lays; do
        IFS=: read -r pp tp ep <<<"$l"
        got=$(measure "$pp" "$tp" 1 "$b" "$ep")
        pred=$(predict "$pp" "$tp" "$b" "$ep")
        name="pp${pp}tp${tp}"
        [ "$ep" -gt 1 ] && name="$name+ep$ep"
        printf "%-6s %-10s %12.1f %8.2f %12.1f %8.2f\n" "$b" "$name" "$got" "$(echo "$got/$one" | bc -l)" \
            "$pred" "$(echo "$pred/$p1" | bc -l)"
    done
done
