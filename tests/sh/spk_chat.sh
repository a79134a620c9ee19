#!/usr/bin/env bash
# spk-chat answers two turns from stdin (multi-turn history through the chat template) and exits
# on EOF; the second answer is generated with the first exchange in its prompt.
set -euo pipefail
BUILD=$1
MODEL=${SPK_TEST_MODEL:-${SPK_CACHE:-$HOME/.cache/sparkinfer}/models/SmolLM2-135M-Instruct.Q4_1.gguf}
[ -r "$MODEL" ] || { echo "SKIP: default model not found"; exit 77; }
out=$(printf 'Hello! Reply with one short sentence.\nAnd now another one.\n' |
      timeout 300 "$BUILD/examples/spk-chat" --model "$MODEL" --temperature 0 --max-tokens 24 --threads 2)
echo "$out"
answers=$(printf '%s\n' "$out" | grep -c '^> [^ ]' || true)
[ "$answers" -ge 2 ] || { echo "FAIL: expected two answers, got $answers"; exit 1; }
echo "ok: two streamed answers"
