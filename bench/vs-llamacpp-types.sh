#!/usr/bin/env bash
# vs-llamacpp-types.sh: per weight type, our speed against llama.cpp's on the same file.
#
# spk-synth writes one F32 model (default: issue 13's shape, D512 L30 H8/4 FF1536 V49152); for
# each type llama.cpp's llama-quantize makes a GGUF of it (the ftype names users download:
# Q5_K_M and Q3_K_M mix in Q6_K/Q4_K tensors as llama.cpp chooses; MXFP4 is MXFP4_MOE with
# --pure and token_embd in Q8_0, since on a dense model plain MXFP4_MOE leaves every tensor
# Q8_0 - it quantizes only experts to MXFP4), then
# bench/vs-llamacpp.sh runs llama-bench and spk-bench-single on that file (same threads,
# pp PROMPT / tg GEN, medians of REPS) and the ratios are collected into one table.
#
# With --archs "qwen3 qwen3moe gpt-oss" (BENCHMARKS.md section 13) the F32 file is instead one per
# architecture, at a width where weights dominate (D512, 8 heads of 64 over 4 KV heads, vocab 49152,
# --layers layers): qwen3 FF1536; qwen3moe 32 experts of FF256, 4 per token; gpt-oss 32 experts of
# FF512, 4 per token, window 128 (its sinks, biases, YaRN) - each quantized to that family's usual
# types (--types is ignored): qwen3 and qwen3moe Q8_0 Q4_K_M, gpt-oss MXFP4_MOE (MXFP4 experts,
# Q8_0 elsewhere, as the published files) and Q8_0.
#
# With --batched "8 32 64" each file also runs bench/vs-llamacpp-batched.sh (llama-batched-bench's
# generation tok/s against ours at those batch sizes, same threads) and the table gains one ratio
# column per batch size.
#
# Usage: bench/vs-llamacpp-types.sh [--threads N] [--types "Q5_0 Q5_1 ..."] [--layers N]
#                                   [--prompt-tokens N] [--gen-tokens N] [--reps N] [--build-dir DIR]
#                                   [--archs "qwen3 qwen3moe gpt-oss"] [--batched "8 32 64"]
# Defaults: 1 thread, types Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K_M Q4_K_M Q5_K_M Q6_K MXFP4, 30 layers, pp512, tg128, 3 reps.
# Files go to $SPK_CACHE/synth/types-L<layers>/ (types-<arch>-L<layers>/) and are reused when present.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
threads=1 layers=30 p=512 n=128 reps=3 build=$root/build archs="" batched=""
types="Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K_M Q4_K_M Q5_K_M Q6_K MXFP4"
die() { printf 'vs-llamacpp-types: %s\n' "$*" >&2; exit 1; }
while [ "$#" -gt 0 ]; do
    case $1 in
        --threads) threads=$2; shift 2 ;;
        --types) types=$2; shift 2 ;;
        --layers) layers=$2; shift 2 ;;
        --prompt-tokens) p=$2; shift 2 ;;
        --gen-tokens) n=$2; shift 2 ;;
        --reps) reps=$2; shift 2 ;;
        --build-dir) build=$2; shift 2 ;;
        --archs) archs=$2; shift 2 ;;
        --batched) batched=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option: $1 (see --help)" ;;
    esac
done
env_lines=$("$root/tests/ref/build-llamacpp.sh")
quantize=$(printf '%s\n' "$env_lines" | sed -n 's/^LLAMA_QUANTIZE=//p')
[ -x "$quantize" ] || die "llama-quantize not available"
[ -x "$build/examples/spk-synth" ] || die "$build/examples/spk-synth not found (build first)"
cache=${SPK_CACHE:-$HOME/.cache/sparkinfer}/synth
table=$(mktemp)
trap 'rm -f "$table"' EXIT
common=(--layers "$layers" --embd 512 --heads 8 --kv-heads 4 --head-dim 64 --vocab 49152 --type f32 --embd-type f32
        --out-type f32)
# one family: its F32 file ($2, written by the spk-synth arguments after $3 when absent), the types $3
run_family() {
    local label=$1 f32=$2 tlist=$3
    shift 3
    local dir
    dir=$(dirname "$f32")
    mkdir -p "$dir"
    if [ ! -f "$f32" ]; then
        "$build/examples/spk-synth" "$@" -o "$f32.tmp" >&2
        mv "$f32.tmp" "$f32"
    fi
    for t in $tlist; do
        q=$dir/$t.gguf
        if [ ! -f "$q" ]; then
            args=("$t")
            if [ "$t" = MXFP4 ]; then args=(MXFP4_MOE); flags=(--pure --token-embedding-type q8_0); else flags=(); fi
            "$quantize" "${flags[@]}" "$f32" "$q.tmp" "${args[@]}" >/dev/null 2>"$dir/$t.quantize.log" \
                || { tail -5 "$dir/$t.quantize.log" >&2; die "llama-quantize $t failed"; }
            mv "$q.tmp" "$q"
        fi
        echo "== $label $t ==" >&2
        out=$(bash "$here/vs-llamacpp.sh" --model "$q" --threads "$threads" --build-dir "$build" \
            --prompt-tokens "$p" --gen-tokens "$n" --reps "$reps")
        printf '%s\n' "$out" >&2
        pre=$(printf '%s\n' "$out" | awk '/^prefill tok\/s/ {print $3, $4, $5}')
        dec=$(printf '%s\n' "$out" | awk '/^decode tok\/s/ {print $3, $4, $5}')
        bat=""
        if [ -n "$batched" ]; then
            bout=$(bash "$here/vs-llamacpp-batched.sh" --model "$q" --threads "$threads" --build-dir "$build" \
                --batches "$batched" --gen 32 --reps "$reps")
            printf '%s\n' "$bout" >&2
            for b in $batched; do
                bat="$bat $(printf '%s\n' "$bout" | awk -v b="$b" '$1 == b { print $4; f = 1 } END { if (!f) print "-" }')"
            done
        fi
        printf '%s %s %s%s\n' "$label${label:+/}$t" "$pre" "$dec" "$bat" >>"$table"
    done
}
if [ -z "$archs" ]; then
    run_family "" "$cache/types-L$layers/f32.gguf" "$types" --preset smollm2-135m --layers "$layers" --embd 512 \
        --heads 8 --kv-heads 4 --ff 1536 --vocab 49152 --type f32 --embd-type f32
fi
for a in $archs; do
    case $a in
        qwen3) run_family qwen3 "$cache/types-qwen3-L$layers/f32.gguf" "Q8_0 Q4_K_M" --preset qwen3-tiny \
                   "${common[@]}" --ff 1536 ;;
        qwen3moe) run_family qwen3moe "$cache/types-qwen3moe-L$layers/f32.gguf" "Q8_0 Q4_K_M" --preset qwen3moe-tiny \
                   "${common[@]}" --ff 256 --experts 32 --experts-used 4 ;;
        gpt-oss) run_family gpt-oss "$cache/types-gpt-oss-L$layers/f32.gguf" "MXFP4_MOE Q8_0" --preset gpt-oss-tiny \
                   "${common[@]}" --ff 512 --experts 32 --experts-used 4 --window 128 ;;
        *) die "unknown architecture '$a' (qwen3, qwen3moe, gpt-oss)" ;;
    esac
done
echo
echo "threads $threads, pp$p / tg$n, medians of $reps; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
hdr=""
for b in $batched; do hdr="$hdr | $(printf '%7s' "b$b")"; done
printf '%-18s | %28s | %28s%s\n' type "prefill ours / llama.cpp" "decode ours / llama.cpp" "$hdr"
while read -r t po pl pr do_ dl dr rest; do
    cols=""
    for r in $rest; do cols="$cols | $(printf '%6sx' "$r")"; done
    printf '%-18s | %9s / %8s = %5sx | %9s / %8s = %5sx%s\n' "$t" "$po" "$pl" "$pr" "$do_" "$dl" "$dr" "$cols"
done <"$table"
