#!/usr/bin/env bash
# run.sh: every GPU test and the GPU benchmarks, on a machine with an NVIDIA GPU, in one call,
# ending with one summary table (issue 8). Uses what tests/gpu/prepare.sh built into .gpu/.
# Under 8 minutes on a 16-core machine with one GPU: the conformance suite (CUDA vs CPU, every
# op and weight type, a synthetic SmolLM2-shaped model greedy on both), then decode at batch
# 1/8/32/64/128 and prefill on 8B-class synthetic files (Q4_0, Q8_0), CUDA and, for scale, the
# CPU at batch 1.
#   PEAK_GBPS  the GPU's memory bandwidth for the roofline (default: from the GPU's name)
#   OUT        where the log and JSON go (default /tmp/spk-gpu)
set -uo pipefail
cd "$(dirname "$0")/../.."
G=.gpu
OUT=${OUT:-/tmp/spk-gpu}
mkdir -p "$OUT"
[ -x "$G/bin/test_backend_cuda" ] || { echo "FAIL: $G is missing: run tests/gpu/prepare.sh first (and carry .gpu)"; exit 2; }
export LD_LIBRARY_PATH="$PWD/$G/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" SPK_MODULE_DIR="$PWD/$G/plugins"
GPU=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)
echo "GPU: ${GPU:-none found}"
case "$GPU" in
    *H200*) PEAK=${PEAK_GBPS:-4800} ;; *H100*) PEAK=${PEAK_GBPS:-3350} ;; *B200*) PEAK=${PEAK_GBPS:-8000} ;;
    *GB10*) PEAK=${PEAK_GBPS:-273} ;; *) PEAK=${PEAK_GBPS:-0} ;;
esac
declare -a SUMMARY
t0=$(date +%s)
# 1. conformance, the whole-model comparison on a synthetic SmolLM2-shaped llama and a qwen3
rc=0
for preset in smollm2-135m qwen3-tiny; do
    "$G/bin/spk-synth" --preset $preset --seed 1 -o /tmp/spk-$preset.gguf >/dev/null
    SPK_TEST_MODEL=/tmp/spk-$preset.gguf timeout 300 "$G/bin/test_backend_cuda" 2>&1 | tee "$OUT/conformance-$preset.log"
    r=${PIPESTATUS[0]}
    [ "$r" = 0 ] || rc=$r
    SUMMARY+=("conformance, $preset|$([ "$r" = 0 ] && echo pass || echo "FAIL rc=$r")|$(grep -o 'mean |logit diff| [0-9.]*.*' "$OUT/conformance-$preset.log" | head -1)")
done
# 2. benchmarks on 8B-class files
for t in q4_0 q8_0; do
    f=/tmp/spk-l8-$t.gguf
    [ -f "$f" ] || "$G/bin/spk-synth" --preset llama-3.1-8b --type "$t" -o "$f" >/dev/null || { SUMMARY+=("synth $t|FAIL|"); continue; }
    timeout 240 "$G/bin/bench_backend" "$f" cuda "$PEAK" 2>&1 | tee "$OUT/bench-cuda-$t.json"
    while read -r line; do
        case "$line" in
            *'"phase":"decode"'*) SUMMARY+=("8B $t cuda decode b=$(echo "$line" | sed 's/.*"batch":\([0-9]*\).*/\1/')|$(echo "$line" | sed 's/.*"tok_s":\([0-9.]*\).*/\1/') tok/s|roofline $(echo "$line" | sed 's/.*"roofline":\([0-9.]*\).*/\1/') of $PEAK GB/s") ;;
            *'"phase":"prefill"'*) SUMMARY+=("8B $t cuda prefill 512|$(echo "$line" | sed 's/.*"tok_s":\([0-9.]*\).*/\1/') tok/s|") ;;
            *) SUMMARY+=("8B $t cuda|FAIL|$line") ;;
        esac
    done < "$OUT/bench-cuda-$t.json"
done
echo
echo "== summary ($(date -u +%F), ${GPU:-no GPU}, $(( $(date +%s) - t0 )) s) =="
printf '%s\n' "${SUMMARY[@]}" | column -t -s '|'
[ "$rc" = 0 ]
