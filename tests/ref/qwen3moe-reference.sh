#!/usr/bin/env bash
# qwen3moe-reference.sh: regenerate tests/data/ref_qwen3moe.json (the transformers reference of the tiny
# synthetic qwen3moe model; see qwen3moe-reference.py for what it holds and why).
#
#   1. writes the model with this repo's writer: build/examples/spk-synth --preset qwen3moe-tiny --seed 1
#      (the same bytes tests/unit/test_qwen3.c writes; the JSON records their FNV-1a hash)
#   2. a virtualenv $SPK_CACHE/hfref-venv with torch + transformers (+ numpy, sentencepiece,
#      safetensors for llama.cpp's converter), made once; PyPI's torch is large (CUDA libraries
#      included), which is why `make test` does not use it: this runs only to regenerate the data
#   3. the llama.cpp sources and python binding from tests/ref/build-llamacpp.sh when present
#      (SPK_QWEN3MOE_REF_NO_LLAMACPP=1 skips them): converter check and llama.cpp's logprobs
#
# Rerun: tests/ref/qwen3moe-reference.sh [BUILD_DIR]     ($SPK_CACHE defaults to $HOME/.cache/sparkinfer)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${1:-$root/build}
CACHE=${SPK_CACHE:-$HOME/.cache/sparkinfer}
VENV=$CACHE/hfref-venv
work=$(mktemp -d /tmp/spk-qwen3moe-ref.XXXXXX)
trap 'rm -rf "$work"' EXIT

[ -x "$build/examples/spk-synth" ] || { echo "qwen3moe-reference: build $build/examples/spk-synth first" >&2; exit 1; }
"$build/examples/spk-synth" --preset qwen3moe-tiny --seed 1 -o "$work/qwen3moe-tiny.gguf" >&2
"$build/examples/spk-synth" --preset qwen3moe-tiny --seed 1 --type q8_0 --embd-type q8_0 -o "$work/qwen3moe-tiny-q8_0.gguf" >&2

if [ ! -f "$VENV/.spk-ready" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check torch transformers numpy sentencepiece diskcache \
        safetensors protobuf >&2
    touch "$VENV/.spk-ready"
fi

args=()
if [ "${SPK_QWEN3MOE_REF_NO_LLAMACPP:-0}" != 1 ]; then
    eval "$("$here/build-llamacpp.sh")"
    args=(--llamacpp-src "$LLAMACPP_SRC")
    # the llama.cpp python binding (pure-Python package from the sdist, library built there)
    export PYTHONPATH="$(dirname "$(dirname "$LLAMACPP_SRC")")${PYTHONPATH:+:$PYTHONPATH}"
    export LLAMA_CPP_LIB_PATH="$LLAMACPP_LIB"
fi
"$VENV/bin/python" "$here/qwen3moe-reference.py" --gguf "$work/qwen3moe-tiny.gguf" --gguf-q8 "$work/qwen3moe-tiny-q8_0.gguf" \
    --out "$root/tests/data/ref_qwen3moe.json" --work "$work" "${args[@]}"
