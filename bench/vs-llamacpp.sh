#!/usr/bin/env bash
# vs-llamacpp.sh: single-node speed against llama.cpp (docs: /work/shared/BENCHMARKS.md section 2).
#
# Same GGUF file, same machine, same thread count: prefill tok/s for a 512-token prompt and decode
# tok/s for 128 tokens at batch 1, ours and llama.cpp's, and the ratio ours/llama.cpp.
#   llama.cpp: llama-bench -m MODEL -t THREADS -p 512 -n 128 -r 3 -o jsonl   (built outside the repo
#              by tests/ref/build-llamacpp.sh, called here when needed; one warm-up run, then REPS).
#   ours:      BUILD_DIR/examples/spk-bench-single --model MODEL --threads THREADS \
#                  --prompt-tokens 512 --gen-tokens 128 --reps 3
#              which prints `prefill_tok_s=<float>` and `decode_tok_s=<float>` (medians) on stdout.
# Both figures are medians over the REPS runs (llama-bench prints a mean; its per-run samples_ts
# give the median; the mean +- stddev is shown too). The runs alternate, one llama-bench -r 1 and
# one spk-bench-single --reps 1 at a time, so a burst of load from elsewhere on a shared machine
# falls on both sides rather than on whichever ran then.
#
# Usage: bench/vs-llamacpp.sh [--model PATH] [--threads N] [--build-dir DIR]
#                             [--prompt-tokens N] [--gen-tokens N] [--reps N] [--llamacpp-only]
#   --model         GGUF file (default: the default model, via scripts/fetch-model.sh)
#   --threads       threads for both programs (default 2)
#   --build-dir     our cmake build directory (default: build)
#   --llamacpp-only run only llama.cpp (otherwise a missing spk-bench-single is an error)
# Environment: SPK_CACHE (default $HOME/.cache/sparkinfer) locates the llama.cpp build.
# Rerun: just run it again; the llama.cpp build and the model download are cached.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)

model=""
threads=2
build_dir=$root/build
prompt_tokens=512
gen_tokens=128
reps=3
llamacpp_only=0

die() { printf 'vs-llamacpp: %s\n' "$*" >&2; exit 1; }
need_arg() { [ "$#" -ge 2 ] || die "option $1 needs a value"; }

while [ "$#" -gt 0 ]; do
    case $1 in
        --model)         need_arg "$@"; model=$2; shift 2 ;;
        --threads)       need_arg "$@"; threads=$2; shift 2 ;;
        --build-dir)     need_arg "$@"; build_dir=$2; shift 2 ;;
        --prompt-tokens) need_arg "$@"; prompt_tokens=$2; shift 2 ;;
        --gen-tokens)    need_arg "$@"; gen_tokens=$2; shift 2 ;;
        --reps)          need_arg "$@"; reps=$2; shift 2 ;;
        --llamacpp-only) llamacpp_only=1; shift ;;
        -h|--help)       sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *)               die "unknown option: $1 (see --help)" ;;
    esac
done
for v in "$threads" "$prompt_tokens" "$gen_tokens" "$reps"; do
    case $v in ''|*[!0-9]*) die "not a positive integer: '$v'" ;; esac
done

if [ -z "$model" ]; then
    model=$("$root/scripts/fetch-model.sh" | tail -n1)
fi
[ -f "$model" ] || die "model not found: $model"

ours_bin=$build_dir/examples/spk-bench-single
if [ "$llamacpp_only" -eq 0 ] && [ ! -x "$ours_bin" ]; then
    die "$ours_bin not found (build the project first, or pass --llamacpp-only)"
fi

# llama.cpp (build if needed; the build script is idempotent and quick when already built)
env_lines=$("$root/tests/ref/build-llamacpp.sh")
llama_bench=$(printf '%s\n' "$env_lines" | sed -n 's/^LLAMA_BENCH=//p')
[ -x "$llama_bench" ] || die "llama-bench not available"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "running llama.cpp llama-bench and $ours_bin alternately (threads=$threads, p=$prompt_tokens," \
    "n=$gen_tokens, $reps runs each) ..." >&2
: >"$tmp/llama.jsonl"
: >"$tmp/ours.out"
for ((i = 0; i < reps; i++)); do
    "$llama_bench" -m "$model" -t "$threads" -p "$prompt_tokens" -n "$gen_tokens" -r 1 \
        -o jsonl >>"$tmp/llama.jsonl" 2>"$tmp/llama.err" \
        || { cat "$tmp/llama.err" >&2; die "llama-bench failed"; }
    if [ "$llamacpp_only" -eq 0 ]; then
        "$ours_bin" --model "$model" --threads "$threads" --prompt-tokens "$prompt_tokens" \
            --gen-tokens "$gen_tokens" --reps 1 >>"$tmp/ours.out" \
            || die "spk-bench-single failed"
    fi
done

python3 - "$tmp/llama.jsonl" "$tmp/ours.out" "$model" "$threads" "$prompt_tokens" "$gen_tokens" \
    "$reps" <<'EOF'
import json, os, statistics, sys

llama_path, ours_path, model, threads, p, n, reps = sys.argv[1:]
p, n = int(p), int(n)

lc = {}
with open(llama_path) as f:
    for line in f:
        line = line.strip()
        if not line.startswith("{"):
            continue
        r = json.loads(line)
        if r["n_prompt"] == p and r["n_gen"] == 0:
            key = "prefill"
        elif r["n_prompt"] == 0 and r["n_gen"] == n:
            key = "decode"
        else:
            continue
        if key in lc:  # one record per llama-bench run: gather the runs' samples
            lc[key]["samples_ts"] = lc[key]["samples_ts"] + r["samples_ts"]
        else:
            lc[key] = r
for key in ("prefill", "decode"):
    if key not in lc:
        sys.exit("vs-llamacpp: llama-bench output lacks the %s test" % key)
    ts = lc[key]["samples_ts"]
    lc[key]["avg_ts"] = statistics.mean(ts)
    lc[key]["stddev_ts"] = statistics.stdev(ts) if len(ts) > 1 else 0.0

runs = {}
with open(ours_path) as f:
    for line in f:
        k, sep, v = line.strip().partition("=")
        if sep and k in ("prefill_tok_s", "decode_tok_s"):
            runs.setdefault(k.split("_")[0], []).append(float(v))
ours = {k: statistics.median(v) for k, v in runs.items()}
have_ours = os.path.getsize(ours_path) > 0
if have_ours and set(ours) != {"prefill", "decode"}:
    sys.exit("vs-llamacpp: spk-bench-single did not print prefill_tok_s= and decode_tok_s=")

r0 = lc["prefill"]
print("model:    %s (%s, %s)" % (os.path.basename(model), r0.get("model_type", "?"),
                                 r0.get("cpu_info", "?")))
print("threads:  %s   prompt: %d tokens   decode: %d tokens (batch 1)   reps: %s" %
      (threads, p, n, reps))
print("llama.cpp: build %s (%s), backend %s" % (r0.get("build_number", "?"),
                                               r0.get("build_commit", "?"),
                                               r0.get("backends", "?")))
print()
print("%-16s %14s %14s %10s   %s" % ("metric", "ours", "llama.cpp", "ratio", "llama.cpp mean +- sd"))
for key, label, tag in (("prefill", "prefill tok/s", "pp%d" % p), ("decode", "decode tok/s", "tg%d" % n)):
    r = lc[key]
    med = statistics.median(r["samples_ts"])
    o = ours.get(key)
    print("%-16s %14s %14.2f %10s   %s: %.2f +- %.2f" % (
        label,
        "%.2f" % o if o is not None else "n/a",
        med,
        "%.3f" % (o / med) if o is not None and med > 0 else "n/a",
        tag, r["avg_ts"], r["stddev_ts"]))
EOF
