#!/usr/bin/env bash
# hf-reference.sh: regenerate tests/data/ref_hf.json, transformers' log-probs and greedy ids for
# the tiny Hugging Face checkpoints of tests/ref/hf_tiny.py (see hf-reference.py). Uses the
# virtualenv $SPK_CACHE/hfref-venv with torch + transformers (made once, as qwen3-reference.sh
# does; `make test` does not need it: the test writes the same directories with hf_tiny.py).
#
# Rerun: tests/ref/hf-reference.sh [VARIANT...]   ($SPK_CACHE defaults to $HOME/.cache/sparkinfer;
#        variants named: only those recomputed)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
CACHE=${SPK_CACHE:-$HOME/.cache/sparkinfer}
VENV=$CACHE/hfref-venv
work=$(mktemp -d /tmp/spk-hf-ref.XXXXXX)
trap 'rm -rf "$work"' EXIT
if [ ! -f "$VENV/.spk-ready" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check torch transformers numpy sentencepiece diskcache \
        safetensors protobuf >&2
    touch "$VENV/.spk-ready"
fi
"$VENV/bin/python" "$here/hf-reference.py" --out "$root/tests/data/ref_hf.json" --work "$work" "$@"
