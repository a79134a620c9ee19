#!/usr/bin/env bash
# Memory per rank: what each rank owns (its weights, mapped slices and copies, plus its KV cache
# and run buffers; spk_rank_stats.owned_bytes) next to 1/N of the model, for the layouts 1, pp2,
# tp2 and pp2 x tp2 on an 8B-class synthetic file (spk-synth llama-3.1-8b, Q4_0 by default).
# The aim (hardening issue): owned - KV within 5% of model/N. Every rank runs on this machine
# (local spk-workers over TCP); the figures do not depend on the page cache.
#   bench/memory-per-rank.sh [--build-dir build] [--type q4_0] [--model FILE]
set -euo pipefail
BUILD=build
TYPE=q4_0
MODEL=
while [ $# -gt 0 ]; do
    case "$1" in
        --build-dir) BUILD=$2; shift 2 ;;
        --type) TYPE=$2; shift 2 ;;
        --model) MODEL=$2; shift 2 ;;
        *) echo "usage: $0 [--build-dir DIR] [--type T] [--model FILE]" >&2; exit 2 ;;
    esac
done
CACHE=${SPK_CACHE:-$HOME/.cache/sparkinfer}
if [ -z "$MODEL" ]; then
    MODEL=$CACHE/synth/llama-3.1-8b.$TYPE.gguf
    if [ ! -f "$MODEL" ]; then
        mkdir -p "$CACHE/synth"
        echo "writing $MODEL (once)" >&2
        "$BUILD"/examples/spk-synth --preset llama-3.1-8b --type "$TYPE" -o "$MODEL.tmp"
        mv "$MODEL.tmp" "$MODEL"
    fi
fi
size=$(stat -c %s "$MODEL")
echo "# $(date -u +%F) $(uname -m), model $(basename "$MODEL"): $((size / 1048576)) MiB; n_ctx 4096, 8 sequences"
printf '%-10s %4s %10s %10s %8s %10s %10s %10s\n' layout rank weights model/N "Δ%" KV owned "owned-KV"
for layout in "1 1" "2 1" "1 2" "2 2"; do
    set -- $layout
    pp=$1 tp=$2
    out=$("$BUILD"/examples/spk-generate --model "$MODEL" --prompt "Hi" --max-tokens 1 --threads 1 \
          --pp "$pp" --tp "$tp" 2>&1 >/dev/null) || { echo "$out" >&2; exit 1; }
    name=$([ "$pp$tp" = 11 ] && echo one || echo "pp${pp}tp${tp}")
    echo "$out" | awk -v name="$name" -v n=$((pp * tp)) -v size="$size" '
        /^rank [0-9]+: stage/ {
            for (i = 1; i <= NF; i++) {
                if ($i == "weights") w = $(i + 1); if ($i == "KV") kv = $(i + 1); if ($i == "owned") o = $(i + 1)
            }
            sub(":", "", $2); share = size / n / 1048576
            printf "%-10s %4s %10.1f %10.1f %+7.1f%% %10.1f %10.1f %10.1f\n", name, $2, w, share, (w / share - 1) * 100, kv, o, o - kv
        }'
done
