#!/usr/bin/env bash
# pool-oversub.sh: the thread pool under oversubscription (issue 13). Decode tok/s of one process
# with 1 and 2 threads at batch 1 and 8, on the machine as it is ("idle") and with a background
# CPU load this script starts itself (one busy-loop process per online CPU, killed at the end),
# for one or two builds (e.g. before/after a pool change), all runs interleaved; prints the median
# of --reps runs per cell and the 1-minute load average read just before each run (median too).
#
#   bench/pool-oversub.sh [--build-dir build] [--base-dir DIR] [--model PATH] [--reps 3]
#                         [--batches "1 8"] [--threads "1 2"] [--gen 64] [--prompt 16] [--load N]
#                         [--fixed]
#
# --base-dir: a second build tree (or a copy of its examples/ and lib/) measured side by side as
# "base"; --fixed: also run the build with SPK_POOL_ADAPTIVE=0 (every dispatch on every thread,
# only the adaptive spin) as "fixed"; --load N: busy-loop processes in the loaded runs (default:
# online CPUs).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODEL=${SPK_CACHE:-$HOME/.cache/sparkinfer}/models/SmolLM2-135M-Instruct.Q4_1.gguf
BUILD=$ROOT/build
BASE=
REPS=3
BATCHES="1 8"
THREADS="1 2"
GEN=64
PROMPT=16
LOAD=$(getconf _NPROCESSORS_ONLN)
FIXED=0
while [ $# -gt 0 ]; do
    case $1 in
        --model) MODEL=$2; shift 2 ;;
        --build-dir) BUILD=$2; shift 2 ;;
        --base-dir) BASE=$2; shift 2 ;;
        --reps) REPS=$2; shift 2 ;;
        --batches) BATCHES=$2; shift 2 ;;
        --threads) THREADS=$2; shift 2 ;;
        --gen) GEN=$2; shift 2 ;;
        --prompt) PROMPT=$2; shift 2 ;;
        --load) LOAD=$2; shift 2 ;;
        --fixed) FIXED=1; shift ;;
        *) echo "pool-oversub.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
[ -f "$MODEL" ] || { echo "pool-oversub.sh: model $MODEL not found (make model)" >&2; exit 2; }
BUILDS="new"
[ -n "$BASE" ] && BUILDS="base $BUILDS"
[ "$FIXED" = 1 ] && BUILDS="$BUILDS fixed"
bin() { if [ "$1" = base ]; then echo "$BASE/examples/spk-bench-single"; else echo "$BUILD/examples/spk-bench-single"; fi; }
for b in $BUILDS; do [ -x "$(bin "$b")" ] || { echo "pool-oversub.sh: $(bin "$b") missing" >&2; exit 2; }; done

LOADPIDS=()
stop_load() {
    for p in "${LOADPIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${LOADPIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    LOADPIDS=()
}
start_load() {
    for _ in $(seq "$LOAD"); do
        ( while :; do :; done ) &
        LOADPIDS+=($!)
    done
    sleep 0.5
}
trap stop_load EXIT INT TERM

OUT=$(mktemp)
for r in $(seq "$REPS"); do
    for cond in idle loaded; do
        [ "$cond" = loaded ] && start_load
        for bt in $BATCHES; do
            for t in $THREADS; do
                for b in $BUILDS; do
                    la=$(cut -d' ' -f1 /proc/loadavg)
                    adapt=1
                    [ "$b" = fixed ] && adapt=0
                    v=$(SPK_POOL_ADAPTIVE=$adapt "$(bin "$b")" --model "$MODEL" --threads "$t" --batch "$bt" --prompt-tokens "$PROMPT" \
                        --gen-tokens "$GEN" --reps 1 2>/dev/null | sed -n 's/^decode_tok_s=//p')
                    echo "$cond $bt $t $b ${v:-nan} $la" >>"$OUT"
                done
            done
        done
        [ "$cond" = loaded ] && stop_load
    done
done

median() { sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print a[(NR + 1) / 2]; else printf "%.2f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
printf "%-7s %5s %7s %-5s %10s %8s   (median of %s; load = 1-min load average before each run)\n" \
    cond batch threads build "tok/s" load "$REPS"
for cond in idle loaded; do
    for bt in $BATCHES; do
        for t in $THREADS; do
            for b in $BUILDS; do
                v=$(awk -v c=$cond -v bt="$bt" -v t="$t" -v b="$b" '$1==c && $2==bt && $3==t && $4==b {print $5}' "$OUT" | median)
                la=$(awk -v c=$cond -v bt="$bt" -v t="$t" -v b="$b" '$1==c && $2==bt && $3==t && $4==b {print $6}' "$OUT" | median)
                printf "%-7s %5s %7s %-5s %10s %8s\n" "$cond" "$bt" "$t" "$b" "$v" "$la"
            done
        done
    done
done
rm -f "$OUT"
