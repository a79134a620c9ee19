#!/usr/bin/env bash
# gptoss-reference.sh: regenerate tests/data/ref_gptoss.json (the transformers reference of the tiny
# synthetic gpt-oss model; see gptoss-reference.py for what it holds and why).
#   1. writes the model with this repo's writer: build/examples/spk-synth --preset gpt-oss-tiny --seed 2
#      (the same bytes tests/unit/test_gptoss.c writes; the JSON records their FNV-1a hash)
#   2. the virtualenv $SPK_CACHE/hfref-venv with torch + transformers that qwen3moe-reference.sh makes
#   3. the llama.cpp sources and python binding from tests/ref/build-llamacpp.sh
#      (SPK_GPTOSS_REF_NO_LLAMACPP=1 skips them): converter check and llama.cpp's log-probs
# Rerun: tests/ref/gptoss-reference.sh [BUILD_DIR]     ($SPK_CACHE defaults to $HOME/.cache/sparkinfer)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${1:-$root/build}
CACHE=${SPK_CACHE:-$HOME/.cache/sparkinfer}
VENV=$CACHE/hfref-venv
work=$(mktemp -d /tmp/spk-gptoss-ref.XXXXXX)
trap 'rm -rf "$work"' EXIT

[ -x "$build/examples/spk-synth" ] || { echo "gptoss-reference: build $build/examples/spk-synth first" >&2; exit 1; }
"$build/examples/spk-synth" --preset gpt-oss-tiny --seed 2 -o "$work/gpt-oss-tiny.gguf" >&2
if [ ! -f "$VENV/.spk-ready" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check torch transformers numpy sentencepiece diskcache \
        safetensors protobuf >&2
    touch "$VENV/.spk-ready"
fi
args=()
if [ "${SPK_GPTOSS_REF_NO_LLAMACPP:-0}" != 1 ]; then   # llama.cpp's converter and log-probs (best effort)
    eval "$("$here/build-llamacpp.sh")"
    args=(--llamacpp-src "$LLAMACPP_SRC")
    export PYTHONPATH="$(dirname "$(dirname "$LLAMACPP_SRC")")${PYTHONPATH:+:$PYTHONPATH}"
    export LLAMA_CPP_LIB_PATH="$LLAMACPP_LIB"
fi
"$VENV/bin/python" "$here/gptoss-reference.py" --seed 2 --gguf "$work/gpt-oss-tiny.gguf" \
    --out "$root/tests/data/ref_gptoss.json" --work "$work" "${args[@]}"
