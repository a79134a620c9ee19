#!/usr/bin/env bash
# fetch-llamacpp-src.sh: the llama.cpp sources only (no build), from the llama-cpp-python sdist that
# tests/ref/build-llamacpp.sh pins, into $SPK_CACHE/llamacpp/src/llama_cpp_python-0.3.36.
# About 30 s and 75 MB once; reruns are free. What uses them without a build: the vocab-only GGUF
# files models/ggml-vocab-*.gguf that tests/unit/test_tokenizer_vocabs.c reads (it skips, saying
# so, when they are absent), the chat templates and converter of the reference scripts.
# Prints LLAMACPP_SRC=<dir> on stdout; progress on stderr.
set -euo pipefail
VER=0.3.36
SDIST_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
CACHE=${SPK_CACHE:-$HOME/.cache/sparkinfer}
BASE=$CACHE/llamacpp
DL=$BASE/dl
SDIST=$DL/llama_cpp_python-$VER.tar.gz
SRC=$BASE/src/llama_cpp_python-$VER
PYTHON=${PYTHON:-python3}
mkdir -p "$DL" "$BASE/src"
if [ ! -f "$SDIST" ]; then
    echo "[fetch-llamacpp-src] downloading llama-cpp-python==$VER sdist" >&2
    tmpd=$(mktemp -d "$DL/tmp.XXXXXX")
    # --no-binary only for this package: its build requirements come as wheels (building them
    # from source too, as ':all:' asks, takes many minutes)
    "$PYTHON" -m pip download --quiet --no-deps --no-binary llama-cpp-python "llama-cpp-python==$VER" -d "$tmpd" >&2
    mv "$tmpd/llama_cpp_python-$VER.tar.gz" "$SDIST"
    rm -rf "$tmpd"
fi
got=$(sha256sum "$SDIST" | cut -d' ' -f1)
if [ "$got" != "$SDIST_SHA256" ]; then
    echo "[fetch-llamacpp-src] ERROR: sha256 mismatch for $SDIST: got $got, want $SDIST_SHA256 (delete it to refetch)" >&2
    exit 1
fi
if [ ! -f "$SRC/.spk-extracted" ]; then
    echo "[fetch-llamacpp-src] extracting to $SRC" >&2
    rm -rf "$SRC"
    tar -xzf "$SDIST" -C "$BASE/src"
    touch "$SRC/.spk-extracted"
fi
echo "LLAMACPP_SRC=$SRC/vendor/llama.cpp"
