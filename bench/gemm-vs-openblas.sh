#!/usr/bin/env bash
# gemm-vs-openblas.sh: is a float GEMM (OpenBLAS) faster than our int8 kernels for prefill?
# Builds bench/gemm_vs_openblas.c against the static library (needs libopenblas-dev) and runs it.
#   bench/gemm-vs-openblas.sh [--build-dir build] [--model PATH]
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
dpkg-query -W libopenblas-dev >/dev/null 2>&1 || apt-get install -y -qq libopenblas-dev >/dev/null
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
cc -O2 -std=c11 -D_GNU_SOURCE -I"$ROOT/include" -I"$ROOT/lib" "$ROOT/bench/gemm_vs_openblas.c" \
    "$BUILD/libsparkinfer.a" -lopenblas $(pkg-config --libs libsodium libpcre2-8 libcjson) -lm -lpthread -o "$OUT/g"
OPENBLAS_NUM_THREADS=1 "$OUT/g" "$MODEL"
