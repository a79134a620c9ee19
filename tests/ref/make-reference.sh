#!/usr/bin/env bash
# make-reference.sh: regenerate the committed llama.cpp reference data in tests/data/.
#
# Builds (or reuses) llama.cpp via tests/ref/build-llamacpp.sh, fetches (or reuses) the default
# model via scripts/fetch-model.sh, then runs tests/ref/gen-reference.py in the reference virtualenv,
# which writes tests/data/ref_tokens.json, ref_logprobs.json and ref_chat.json (see its docstring).
# Deterministic: greedy, fixed thread count (--threads N, default 2). Extra arguments are passed to
# gen-reference.py (e.g. --out-dir DIR to write elsewhere and diff).
#
# Rerun: tests/ref/make-reference.sh        ($SPK_CACHE defaults to $HOME/.cache/sparkinfer)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)

py=$("$here/build-llamacpp.sh" | sed -n 's/^LLAMACPP_VENV_PYTHON=//p')
[ -x "$py" ] || { echo "make-reference: no reference python from build-llamacpp.sh" >&2; exit 1; }
model=$("$root/scripts/fetch-model.sh" | tail -n1)

exec "$py" "$here/gen-reference.py" --model "$model" --out-dir "$root/tests/data" "$@"
