#!/usr/bin/env bash
# make-quant-reference.sh: regenerate tests/data/quant/ from llama.cpp (test_quant_types' data):
#   *.bin        ggml's own reference quantizer and dequantizer on a fixed input (gen-quant-ref.py)
#   models.json  a small spk-synth model per type as llama.cpp's libggml quantizes it (tensor
#                hashes), and when llama-quantize and libllama are built, llama-quantize --pure's
#                file (same hashes checked) and llama.cpp's next-token log-probs on it
#                (gen-quant-models.py; NO_LOGPROBS=1 skips that part)
# Builds llama.cpp via build-llamacpp.sh and this repo's spk-synth (BUILD, default build/).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${BUILD:-$root/build}
env=$("$here/build-llamacpp.sh")
get() { printf '%s\n' "$env" | sed -n "s/^$1=//p"; }
py=$(get LLAMACPP_VENV_PYTHON)
cmake --build "$build" -j"${SPK_JOBS:-2}" --target spk-synth >/dev/null
"$py" "$here/gen-quant-ref.py" "$(get LLAMACPP_LIB)/libggml-base.so" "$root/tests/data/quant"
extra=()
if [ -z "${NO_LOGPROBS:-}" ]; then
    extra=(--quantize "$(get LLAMA_QUANTIZE)")
fi
"$py" "$here/gen-quant-models.py" --synth "$build/examples/spk-synth" \
    --libggml "$(get LLAMACPP_LIB)/libggml-base.so" "${extra[@]}" \
    --out "$root/tests/data/quant/models.json"
