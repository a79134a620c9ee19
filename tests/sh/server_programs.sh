#!/usr/bin/env bash
# The example programs' command lines (issue 11): --help works everywhere (exit 0, usage on
# stdout, nothing started); numbers are parsed strictly (--max-tokens abc, --temperature 0.5abc
# are usage errors naming the option); spk-chat keeps going when the conversation outgrows
# --ctx (drops the oldest turns and says so); spk-bench-single runs with --prompt-tokens < 16.
# Usage: server_programs.sh BUILD_DIR SOURCE_DIR
set -u
B=${1:?build dir}
E="$B/examples"
MODEL=${SPK_TEST_MODEL:-${SPK_CACHE:-$HOME/.cache/sparkinfer}/models/SmolLM2-135M-Instruct.Q4_1.gguf}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
fail=0
check() {
    local what=$1
    shift
    if "$@"; then echo "ok: $what"; else echo "FAIL: $what"; fail=1; fi
}

help_ok() { # program: --help exits 0 at once with a usage line on stdout
    timeout 10 "$E/$1" --help >"$TMP/out" 2>"$TMP/err" && grep -q "usage: $1" "$TMP/out"
}
for p in spk-chat spk-generate spk-bench-single spk-bench-net spk-bench spk-plan spk-synth spk-worker spk-server; do
    [ -x "$E/$p" ] || { echo "FAIL: $E/$p not built"; fail=1; continue; }
    check "$p --help" help_ok "$p"
done

usage_err() { # substring program args...: exit 2, the message names the bad value
    local want=$1
    shift
    timeout 10 "$E/$@" </dev/null >"$TMP/out" 2>"$TMP/err"
    local rc=$?
    [ $rc -eq 2 ] && grep -q -- "$want" "$TMP/err" || { echo "  rc=$rc for '$*':"; cat "$TMP/err"; return 1; }
}
check "spk-generate --max-tokens abc" usage_err "'abc'" spk-generate --prompt hi --max-tokens abc
check "spk-generate --temperature 0.5abc" usage_err "'0.5abc'" spk-generate --prompt hi --temperature 0.5abc
check "spk-generate --seed -1" usage_err "'-1'" spk-generate --prompt hi --seed -1
check "spk-chat --max-tokens 12x" usage_err "'12x'" spk-chat --max-tokens 12x
check "spk-chat --temperature nan" usage_err "'nan'" spk-chat --temperature nan
check "spk-chat --ctx abc" usage_err "--ctx" spk-chat --ctx abc
check "spk-generate --backend gpu" usage_err "'gpu'" spk-generate --prompt hi --backend gpu
check "spk-bench --backend gpu" usage_err "'gpu'" spk-bench --backend gpu
check "spk-server --device x" usage_err "'x'" spk-server --device x
# --backend cuda where no GPU can run it: a clear error naming what is missing, exit 1
cuda_refused() {
    timeout 60 "$E/spk-generate" --model "$MODEL" --prompt hi --max-tokens 1 --backend cuda >"$TMP/out" 2>"$TMP/err"
    local rc=$?
    [ $rc -eq 1 ] && grep -q "cuda backend" "$TMP/err" || { echo "  rc=$rc:"; cat "$TMP/err"; return 1; }
}
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    echo "SKIP (one check): a GPU is present, --backend cuda may run here"
elif [ -f "$MODEL" ]; then
    check "spk-generate --backend cuda without a GPU" cuda_refused
fi
check "spk-bench-single --prompt-tokens 1e3" usage_err "'1e3'" spk-bench-single --prompt-tokens 1e3
check "spk-bench-net --local two" usage_err "'two'" spk-bench-net --local two
check "spk-plan --world 2x" usage_err "'2x'" spk-plan --preset tiny --world 2x
check "spk-server --port 99999" usage_err "'99999'" spk-server --port 99999
check "spk-server --max-seqs 0" usage_err "--max-seqs" spk-server --max-seqs 0

if [ ! -r "$MODEL" ]; then
    echo "SKIP: default model not found (the model checks)"
    [ $fail -eq 0 ] || exit 1
    exit 77
fi

chat_drops() { # a 128-token context with 40-token answers: the third question drops turns
    printf 'Tell me about the sea.\nAnd about mountains?\nAnd rivers?\nAnd deserts?\n' |
        timeout 300 "$E/spk-chat" --model "$MODEL" --temperature 0 --max-tokens 40 --ctx 128 --threads 2 \
            >"$TMP/out" 2>"$TMP/err"
    local rc=$?
    cat "$TMP/err"
    [ $rc -eq 0 ] && grep -q "outgrew the 128-token context: dropped" "$TMP/err" &&
        [ "$(grep -c '^> [^ ]' "$TMP/out")" -ge 4 ]
}
check "spk-chat drops the oldest turns when the context fills and answers all 4" chat_drops
too_long_msg() { # one message longer than the context: refused with a note, the chat goes on
    { head -c 2000 /dev/zero | tr '\0' 'a'; printf '\nHi\n'; } |
        timeout 300 "$E/spk-chat" --model "$MODEL" --temperature 0 --max-tokens 16 --ctx 64 --threads 2 \
            >"$TMP/out" 2>"$TMP/err"
    local rc=$?
    [ $rc -eq 0 ] && grep -q "does not fit the 64-token context" "$TMP/err" && grep -q '^> [^ ]' "$TMP/out"
}
check "spk-chat refuses a message longer than the context and goes on" too_long_msg
bench_short() {
    timeout 300 "$E/spk-bench-single" --model "$MODEL" --prompt-tokens 8 --gen-tokens 8 --reps 1 --threads 2 \
        >"$TMP/out" 2>"$TMP/err"
    local rc=$?
    cat "$TMP/err"
    [ $rc -eq 0 ] && grep -q "^decode_tok_s=" "$TMP/out"
}
check "spk-bench-single --prompt-tokens 8 (warm-up within the prompt)" bench_short
[ $fail -eq 0 ] || exit 1
echo "all program checks passed"
