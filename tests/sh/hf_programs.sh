#!/usr/bin/env bash
# The programs and the Python binding take a Hugging Face model directory where they take a GGUF
# file: the tiny checkpoints of tests/ref/hf_tiny.py (standard library only) through spk-generate
# (one rank, --pp 2 and --tp 2 with a local spk-worker: the worker opens the directory itself,
# converts what its shard reads, and its identity must match; PP gives the same greedy ids;
# llama, qwen3, qwen3moe with FP8 experts, gpt-oss), --chat, spk-plan, spk-bench, and
# sparkinfer.Model(dir) (tokenize, chat template).
# Usage: hf_programs.sh BUILD_DIR SOURCE_DIR
set -u
B=${1:?build dir}
S=${2:?source dir}
G=$B/examples/spk-generate
[ -x "$G" ] || { echo "SKIP: $G not built"; exit 77; }
command -v python3 >/dev/null || { echo "SKIP: python3 not installed"; exit 77; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
fail=0
python3 "$S/tests/ref/hf_tiny.py" "$TMP" qwen3-f32 llama3-hd qwen3moe-fp8-block gptoss-f32 >/dev/null || { echo "FAIL: hf_tiny.py"; exit 1; }
gen() { "$G" --prompt "the cat in the hat" --max-tokens 10 --print-ids --ignore-eos --threads 2 "$@" 2>"$TMP/err" | tail -n 1; }
# the MoE ones: experts stacked, FP8 experts converted on first touch in each worker
for v in qwen3-f32 llama3-hd qwen3moe-fp8-block gptoss-f32; do
    one=$(gen --model "$TMP/$v")
    [ -n "$one" ] || { cat "$TMP/err"; echo "FAIL: spk-generate on $v"; fail=1; continue; }
    # PP is bit-identical to one rank; TP sums in another order (a near-tie may flip): it
    # must run and give as many ids
    two=$(gen --model "$TMP/$v" --pp 2)
    if [ "$one" = "$two" ]; then echo "ok: $v --pp 2: the same ids as one rank"; else
        cat "$TMP/err"; echo "FAIL: $v --pp 2: '$two' vs one rank '$one'"; fail=1; fi
    tp=$(gen --model "$TMP/$v" --tp 2)
    if [ "$(echo $tp | wc -w)" = "$(echo $one | wc -w)" ]; then echo "ok: $v --tp 2 ($( [ "$tp" = "$one" ] && echo same ids || echo ids differ: float order))"; else
        cat "$TMP/err"; echo "FAIL: $v --tp 2: '$tp'"; fail=1; fi
    chat=$(gen --model "$TMP/$v" --chat)
    [ -n "$chat" ] && echo "ok: $v --chat" || { cat "$TMP/err"; echo "FAIL: $v --chat"; fail=1; }
done
# weights without tokenizer.json: spk_model_load refuses, naming what is missing
cp -r "$TMP/qwen3-f32" "$TMP/notok" && rm "$TMP/notok/tokenizer.json"
if "$G" --model "$TMP/notok" --prompt hi --max-tokens 2 >/dev/null 2>"$TMP/err"; then
    echo "FAIL: a directory without tokenizer.json served"; fail=1
elif grep -q "no tokenizer.json" "$TMP/err"; then echo "ok: no tokenizer.json: $(tail -n 1 "$TMP/err")"; else
    cat "$TMP/err"; echo "FAIL: no tokenizer.json: unclear message"; fail=1; fi
if [ -x "$B/examples/spk-plan" ]; then
    "$B/examples/spk-plan" --model "$TMP/qwen3-f32" >"$TMP/plan" 2>&1 && grep -q "model qwen3-f32: 2 layers" "$TMP/plan" \
        && echo "ok: spk-plan" || { cat "$TMP/plan"; echo "FAIL: spk-plan on a directory"; fail=1; }
fi
if [ -x "$B/examples/spk-bench" ]; then
    "$B/examples/spk-bench" --model "$TMP/llama3-hd" --scenarios balanced --scale 0.01 --batch 1 --layouts 1 \
        --threads 2 >"$TMP/bench" 2>&1 && grep -q "balanced .* 1 1 " "$TMP/bench" \
        && echo "ok: spk-bench" || { cat "$TMP/bench"; echo "FAIL: spk-bench on a directory"; fail=1; }
fi
LIB=$B/libsparkinfer.so
if grep -Eq '^(SPK_SANITIZE|SPK_TSAN):BOOL=ON' "$B/CMakeCache.txt" 2>/dev/null; then
    echo "note: sanitizer build: the Python part is left to the plain build (python_bindings.sh skips there too)"
elif [ -f "$LIB" ]; then
    SPARKINFER_LIB=$LIB PYTHONPATH="$S/bindings/python" PYTHONDONTWRITEBYTECODE=1 python3 - "$TMP/qwen3-f32" <<'PY' && echo "ok: Python Model(dir)" || { echo "FAIL: Python binding on a directory"; fail=1; }
import sys, sparkinfer
d = sys.argv[1]
with sparkinfer.Model(d, n_threads=2) as m:
    ids = m.tokenize("the cat in the hat")
    assert ids and all(0 <= i < 300 for i in ids), ids
    text = m.chat([{"role": "user", "content": "hi"}])
    assert text.startswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"), repr(text)
    print("tokens", ids, "chat", repr(text))
PY
fi
exit $fail
