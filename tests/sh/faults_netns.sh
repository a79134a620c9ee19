#!/bin/bash
# The fault matrix's link-down column: the driver (spk-generate) in one network namespace, its
# workers in another, joined by a veth pair; once tokens flow the link goes down. For pp2, tp2 and
# pp2 x tp2 the driver must stop with an error (not hang, not exit 0) and every worker must leave
# on its own, each within its peer timeout plus a margin. SIGKILL and SIGSTOP of a rank are
# covered by test_dist (the same layouts, on loopback).
# Usage: faults_netns.sh BUILD_DIR SOURCE_DIR. Exits 77 (skipped) without namespaces or model.
set -u
BUILD=${1:?build dir}
GEN=$BUILD/examples/spk-generate
WORKER=$BUILD/examples/spk-worker
MODEL=${SPK_TEST_MODEL:-${SPK_CACHE:-$HOME/.cache/sparkinfer}/models/SmolLM2-135M-Instruct.Q4_1.gguf}
[ -x "$GEN" ] && [ -x "$WORKER" ] || { echo "SKIP: examples not built"; exit 77; }
[ -r "$MODEL" ] || { echo "SKIP: default model not found"; exit 77; }
NS0=spk-fl-$$-0
NS1=spk-fl-$$-1
VA=spkf$$a
VB=spkf$$b
TMP=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
    ip netns del "$NS0" 2>/dev/null
    ip netns del "$NS1" 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT
if ! out=$(ip netns add "$NS0" 2>&1); then
    echo "SKIP: cannot create a network namespace here: $out"
    exit 77
fi
ip netns add "$NS1" || exit 1
ip link add "$VA" type veth peer name "$VB" || { echo "SKIP: cannot create a veth pair"; exit 77; }
ip link set "$VA" netns "$NS0" && ip link set "$VB" netns "$NS1" || exit 1
ip -n "$NS0" addr add 10.78.0.1/24 dev "$VA" && ip -n "$NS1" addr add 10.78.0.2/24 dev "$VB" || exit 1
ip -n "$NS0" link set "$VA" up && ip -n "$NS1" link set "$VB" up || exit 1
ip -n "$NS0" link set lo up && ip -n "$NS1" link set lo up

KEY=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
DRIVER_TIMEOUT_S=10   # the driver's default peer timeout
WORKER_TIMEOUT_MS=3000
MARGIN_S=8
fail=0

# wait_gone PID SECONDS: 0 if PID exited within SECONDS
wait_gone() {
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        kill -0 "$1" 2>/dev/null || return 0
        sleep 0.1
    done
    return 1
}

# $1 = pp, $2 = tp
cut_link() {
    local pp=$1 tp=$2 world=$(($1 * $2)) port=$((29500 + RANDOM % 200)) r
    PIDS=()
    for ((r = 1; r < world; r++)); do
        SPK_CLUSTER_KEY=$KEY ip netns exec "$NS1" "$WORKER" --coordinator 10.78.0.1:$port --rank $r --world $world \
            --threads 1 --transport tcp --peer-timeout $WORKER_TIMEOUT_MS >"$TMP/w$r.log" 2>&1 &
        PIDS+=($!)
    done
    # Emptied here, not by the job's own redirection: that runs in the forked child, and a poll
    # before it would see the previous case's text and cut the link before any token flowed.
    : >"$TMP/gen.out"
    SPK_CLUSTER_KEY=$KEY ip netns exec "$NS0" "$GEN" --model "$MODEL" --prompt "Once upon a time" \
        --max-tokens 3000 --ignore-eos --pp "$pp" --tp "$tp" --threads 1 --world $world \
        --coordinator 10.78.0.1:$port --transport tcp >"$TMP/gen.out" 2>"$TMP/gen.err" &
    local gpid=$!
    PIDS+=($gpid)
    for ((r = 0; r < 600; r++)); do   # tokens flowing: some text is out
        [ "$(stat -c %s "$TMP/gen.out")" -gt 40 ] && break
        kill -0 $gpid 2>/dev/null || break
        sleep 0.1
    done
    if [ "$(stat -c %s "$TMP/gen.out")" -le 40 ]; then
        echo "FAIL: pp$pp x tp$tp: no tokens before the cut"; cat "$TMP/gen.err"; fail=1; return
    fi
    ip -n "$NS1" link set "$VB" down
    local t0=$SECONDS
    if ! wait_gone $gpid $((DRIVER_TIMEOUT_S + MARGIN_S)); then
        echo "FAIL: pp$pp x tp$tp: the driver still runs $((SECONDS - t0)) s after the link went down"; fail=1
    else
        wait $gpid
        local rc=$?
        echo "pp$pp x tp$tp: driver exited $rc after $((SECONDS - t0)) s: $(grep -m1 -i -E 'lost|error|fail' "$TMP/gen.err")"
        [ $rc -ne 0 ] || { echo "FAIL: pp$pp x tp$tp: the driver exited 0 after losing its workers"; fail=1; }
    fi
    for ((r = 1; r < world; r++)); do
        local w=${PIDS[$((r - 1))]}
        if ! wait_gone "$w" $((WORKER_TIMEOUT_MS / 1000 + MARGIN_S)); then
            echo "FAIL: pp$pp x tp$tp: worker rank $r still runs after the cut"; fail=1
        else
            wait "$w"
            echo "  worker rank $r exited $?: $(grep -m1 -i -E 'lost|closed|error' "$TMP/w$r.log")"
        fi
    done
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
    PIDS=()
    ip -n "$NS1" link set "$VB" up
}

cut_link 2 1
cut_link 1 2
cut_link 2 2
[ $fail -eq 0 ] || exit 1
echo "ok: link down under pp2, tp2, pp2 x tp2: every driver failed with an error and every worker left"
