#!/usr/bin/env bash
# hf-twin-reference.sh: regenerate tests/data/ref_hf_twin.json, the metadata keys (type, value
# digest) and tensors (name, type, shape, sha256) that llama.cpp's convert_hf_to_gguf.py writes for
# the tiny checkpoints of tests/ref/hf_tiny.py (see hf-twin-reference.py). Uses the virtualenv
# $SPK_CACHE/hfref-venv of hf-reference.sh (torch for the converter) and the llama.cpp sources of
# build-llamacpp.sh / `make refsrc`. `make test` does not need either: test_hf checks the directories
# hf_tiny.py writes against the committed digests.
#
# Rerun: tests/ref/hf-twin-reference.sh       ($SPK_CACHE defaults to $HOME/.cache/sparkinfer)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
CACHE=${SPK_CACHE:-$HOME/.cache/sparkinfer}
VENV=$CACHE/hfref-venv
SRC=$CACHE/llamacpp/src/llama_cpp_python-0.3.36/vendor/llama.cpp
[ -f "$SRC/convert_hf_to_gguf.py" ] || { echo "no llama.cpp sources in $SRC (make refsrc)" >&2; exit 1; }
if [ ! -f "$VENV/.spk-ready" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check torch transformers numpy sentencepiece diskcache \
        safetensors protobuf >&2
    touch "$VENV/.spk-ready"
fi
work=$(mktemp -d /tmp/spk-hf-twin-ref.XXXXXX)
trap 'rm -rf "$work"' EXIT
"$VENV/bin/python" "$here/hf-twin-reference.py" --src "$SRC" --out "$root/tests/data/ref_hf_twin.json" --work "$work"
