#!/usr/bin/env bash
# gptoss-quant-reference.sh: regenerate tests/data/ref_moe_quant.json, llama.cpp's log-probs on the weight
# types real gpt-oss / Qwen3-MoE GGUF files use, each file made by llama.cpp's llama-quantize from our
# writer's F32 file (see gptoss-quant-reference.py for the JSON's fields):
#   gptoss-mxfp4   spk-synth --preset gpt-oss-tiny --seed 2, llama-quantize MXFP4_MOE (MXFP4 experts,
#                  Q8_0 elsewhere); our writer's --type q8_0 --embd-type q8_0 --out-type q8_0
#                  --expert-type mxfp4 file is recorded tensor-for-tensor identical
#   gptoss-q8_0    the same, llama-quantize Q8_0 (our writer's file without --expert-type)
#   gptoss-q4_k_m  gpt-oss-tiny --seed 2 --embd 256 --ff 256 (Q4_K needs rows of 256), Q4_K_M:
#                  Q4_K / Q6_K / Q5_0 / ... as llama-quantize picks them (our writer has no K-quantizer)
#   qwen3moe-q4_k_m  qwen3moe-tiny --seed 1 --embd 256 --ff 256, Q4_K_M
# The Q4_K_M files stay in $SPK_CACHE/ref-quant/ where test_gptoss / test_qwen3moe read them (they
# skip that check, saying so, when absent); the JSON records their hashes.
# Rerun: tests/ref/gptoss-quant-reference.sh [BUILD_DIR]   ($SPK_CACHE defaults to $HOME/.cache/sparkinfer)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${1:-$root/build}
CACHE=${SPK_CACHE:-$HOME/.cache/sparkinfer}
out=$CACHE/ref-quant
synth=$build/examples/spk-synth
[ -x "$synth" ] || { echo "gptoss-quant-reference: build $synth first" >&2; exit 1; }
eval "$("$here/build-llamacpp.sh")"
mkdir -p "$out"
quant() { LD_LIBRARY_PATH="$LLAMACPP_LIB" "$LLAMA_QUANTIZE" "$1" "$2" "$3" > "$2.log" 2>&1 ||
          { tail -20 "$2.log" >&2; exit 1; }; }
q8=(--type q8_0 --embd-type q8_0 --out-type q8_0)
"$synth" --preset gpt-oss-tiny --seed 2 -o "$out/gpt-oss-tiny-s2.f32.gguf" >&2
"$synth" --preset gpt-oss-tiny --seed 2 "${q8[@]}" --expert-type mxfp4 -o "$out/gpt-oss-tiny-s2.ours-mxfp4.gguf" >&2
"$synth" --preset gpt-oss-tiny --seed 2 "${q8[@]}" -o "$out/gpt-oss-tiny-s2.ours-q8_0.gguf" >&2
"$synth" --preset gpt-oss-tiny --seed 2 --embd 256 --ff 256 -o "$out/gpt-oss-e256-s2.f32.gguf" >&2
"$synth" --preset qwen3moe-tiny --seed 1 --embd 256 --ff 256 -o "$out/qwen3moe-e256-s1.f32.gguf" >&2
quant "$out/gpt-oss-tiny-s2.f32.gguf" "$out/gpt-oss-tiny-s2.MXFP4_MOE.gguf" MXFP4_MOE
quant "$out/gpt-oss-tiny-s2.f32.gguf" "$out/gpt-oss-tiny-s2.Q8_0.gguf" Q8_0
quant "$out/gpt-oss-e256-s2.f32.gguf" "$out/gpt-oss-e256-s2.Q4_K_M.gguf" Q4_K_M
quant "$out/qwen3moe-e256-s1.f32.gguf" "$out/qwen3moe-e256-s1.Q4_K_M.gguf" Q4_K_M
"$LLAMACPP_VENV_PYTHON" "$here/gptoss-quant-reference.py" --llamacpp-src "$LLAMACPP_SRC" \
    --about "llama.cpp $LLAMACPP_VERSION (llama-cpp-python sdist)" \
    --case gptoss-mxfp4 "$out/gpt-oss-tiny-s2.f32.gguf" "$out/gpt-oss-tiny-s2.MXFP4_MOE.gguf" MXFP4_MOE \
           "$out/gpt-oss-tiny-s2.ours-mxfp4.gguf" \
    --case gptoss-q8_0 "$out/gpt-oss-tiny-s2.f32.gguf" "$out/gpt-oss-tiny-s2.Q8_0.gguf" Q8_0 \
           "$out/gpt-oss-tiny-s2.ours-q8_0.gguf" \
    --case gptoss-q4_k_m "$out/gpt-oss-e256-s2.f32.gguf" "$out/gpt-oss-e256-s2.Q4_K_M.gguf" Q4_K_M \
    --case qwen3moe-q4_k_m "$out/qwen3moe-e256-s1.f32.gguf" "$out/qwen3moe-e256-s1.Q4_K_M.gguf" Q4_K_M \
    --out "$root/tests/data/ref_moe_quant.json"
rm -f "$out"/*.f32.gguf "$out"/*.ours-*.gguf
