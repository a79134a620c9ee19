#!/usr/bin/env bash
# reliability.sh: the adversarial-review attacks on loopback (floods, rank race, inbox overrun,
# submit contention) with figures for BENCHMARKS.md's RELIABILITY section. Builds
# bench/reliability.c against the static library of an existing build and runs it.
#   bench/reliability.sh [--build-dir build] [--model PATH]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$ROOT/build
MODEL=${SPK_CACHE:-$HOME/.cache/sparkinfer}/models/SmolLM2-135M-Instruct.Q4_1.gguf
while [ $# -gt 0 ]; do
    case $1 in
        --build-dir) BUILD=$2; shift 2 ;;
        --model) MODEL=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
# The static library carries the optional transports it was built with: link what they need.
EXTRA=()
SYMS=$(nm "$BUILD/libsparkinfer.a" 2>/dev/null | awk '$1=="U"{print $2}' | sort -u)
if grep -q '^nccl' <<<"$SYMS"; then
    CUDA=$(dirname "$(find / -name libnccl.so -path '*lib*' 2>/dev/null | head -n1)")
    EXTRA+=(-L"$CUDA" -Wl,-rpath,"$CUDA" -lnccl -lcudart)
fi
grep -q '^ibv_' <<<"$SYMS" && EXTRA+=(-libverbs)
cc -O2 -std=c11 -D_GNU_SOURCE -I"$ROOT/include" -I"$ROOT/lib" "$ROOT/bench/reliability.c" \
    "$BUILD/libsparkinfer.a" $(pkg-config --libs libsodium libpcre2-8 libcjson) -ldl "${EXTRA[@]}" -lm -lpthread \
    -o "$OUT/r"
if [ -f "$MODEL" ]; then "$OUT/r" "$MODEL"; else "$OUT/r"; fi
