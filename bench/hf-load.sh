#!/usr/bin/env bash
# hf-load.sh: open + load + first-token time and resident memory of one synthetic Llama-3.2-1B-
# shaped BF16 model (16 layers, embd 2048, 32/8 heads, ff 8192, vocab 128256, tied; ~2.5 GB),
# as a GGUF file (spk-synth) and as a Hugging Face directory with the same bytes (bench/
# gguf-to-hf.py: 2 GB safetensors shards, Q/K rows un-permuted; rope_freqs not carried over),
# through bench/hf_load.c (spk_gguf_open + spk_llama_load + one token, which reads every page).
# Runs interleaved, REPS each (default 3), warm page cache; prints every run and the medians.
# --split: instead, an 8B-class checkpoint scaled down for this box's disk (Llama-3.1-8B's layer
# shape: embd 4096, 32/8 heads, ff 14336, vocab 128256, untied; 4 layers instead of 32: 3.85 GB
# BF16), as GGUF and as HF directory, loaded as one rank of each layout (one, pp2 ranks 0/1, tp2
# ranks 0/1: spk_llama_load + spk_llama_shard, which reads the rank's pages): load time, the
# rank's weights, bytes converted, RSS; and decode tok/s of the whole model on 1 thread (NTOK
# tokens after one warm-up token).
#   bench/hf-load.sh [--build-dir build] [--reps N] [--keep DIR] [--split] [--ntok N]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$ROOT/build
REPS=3
KEEP=
SPLIT=
NTOK=4
while [ $# -gt 0 ]; do
    case $1 in
        --build-dir) BUILD=$2; shift 2 ;;
        --reps) REPS=$2; shift 2 ;;
        --keep) KEEP=$2; shift 2 ;;
        --split) SPLIT=1; shift ;;
        --ntok) NTOK=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
W=${KEEP:-$(mktemp -d /tmp/spk-hf-load.XXXXXX)}
[ -n "$KEEP" ] || trap 'rm -rf "$W"' EXIT
mkdir -p "$W"
cc -O2 -std=c11 -D_GNU_SOURCE -I"$ROOT/include" -I"$ROOT/lib" "$ROOT/bench/hf_load.c" "$BUILD/libsparkinfer.a" \
    $(pkg-config --libs libsodium libpcre2-8 libcjson) -ldl -lm -lpthread -o "$W/hf_load"
med() { sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
if [ -n "$SPLIT" ]; then
    if [ ! -f "$W/m8.gguf" ]; then
        "$BUILD/examples/spk-synth" --preset llama-3.1-8b --layers 4 --type bf16 --embd-type bf16 --out-type bf16 \
            --untied -o "$W/m8.gguf" >&2
    fi
    [ -f "$W/hf8/config.json" ] || python3 "$ROOT/bench/gguf-to-hf.py" "$W/m8.gguf" "$W/hf8" 2
    cat "$W/m8.gguf" "$W"/hf8/*.safetensors >/dev/null
    echo "# $(date -u +%FT%TZ) $(uname -m), load average $(cut -d' ' -f1-3 /proc/loadavg)"
    for r in $(seq "$REPS"); do
        for lr in "one 0 $NTOK" "pp2 0" "pp2 1" "tp2 0" "tp2 1"; do
            for what in gguf hf; do
                p=$W/m8.gguf
                [ $what = hf ] && p=$W/hf8
                set -- $lr
                echo "$what $1/$2 $("$W/hf_load" "$p" $lr)"
            done
        done
    done | tee "$W/runs8"
    printf '%-5s %-6s %8s %8s %12s %14s %8s %10s\n' src rank open_ms load_ms weights_mib converted_mib rss_mib decode_tok_s
    for lr in one/0 pp2/0 pp2/1 tp2/0 tp2/1; do
        for what in gguf hf; do
            printf '%-5s %-6s' $what $lr
            for k in open_ms load_ms weights_mib converted_mib rss_mib decode_tok_s; do
                v=$(awk -v w=$what -v l=$lr -v k=$k '$1==w && $2==l {for(i=3;i<NF;i++) if($i==k) print $(i+1)}' "$W/runs8" | med)
                printf ' %8s' "${v:--}"
            done
            echo
        done
    done
    echo "# load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
    exit 0
fi
if [ ! -f "$W/m.gguf" ]; then
    "$BUILD/examples/spk-synth" --preset llama-3.1-8b --layers 16 --embd 2048 --heads 32 --kv-heads 8 --ff 8192 \
        --vocab 128256 --type bf16 --embd-type bf16 --tied -o "$W/m.gguf" >&2
fi
[ -f "$W/hf/config.json" ] || python3 "$ROOT/bench/gguf-to-hf.py" "$W/m.gguf" "$W/hf" 2
cat "$W/m.gguf" "$W"/hf/*.safetensors >/dev/null # warm both
echo "# $(date -u +%FT%TZ) $(uname -m), load average $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$REPS"); do
    for what in gguf hf; do
        p=$W/m.gguf
        [ $what = hf ] && p=$W/hf
        echo "$what $("$W/hf_load" "$p")"
    done
done | tee "$W/runs"
for what in gguf hf; do
    for k in open_ms load_ms first_token_ms rss_mib; do
        v=$(awk -v w=$what -v k=$k '$1==w{for(i=2;i<NF;i++) if($i==k) print $(i+1)}' "$W/runs" | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}')
        printf "%s %s %s  " "$what" "$k" "$v"
    done
    echo
done
echo "# load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
