#!/bin/bash
# The model split over two "hosts": network namespaces joined by a veth pair, the driver
# (spk-generate) in one, an spk-worker in the other, TCP between them. PP2 must generate exactly
# what one rank generates; TP2 exactly what TP2 over loopback generates (same reduction order).
# Usage: layouts_netns.sh BUILD_DIR SOURCE_DIR. Exits 77 (skipped) without namespaces or model.
set -u
BUILD=${1:?build dir}
GEN=$BUILD/examples/spk-generate
WORKER=$BUILD/examples/spk-worker
MODEL=${SPK_TEST_MODEL:-${SPK_CACHE:-$HOME/.cache/sparkinfer}/models/SmolLM2-135M-Instruct.Q4_1.gguf}
[ -x "$GEN" ] && [ -x "$WORKER" ] || { echo "SKIP: examples not built"; exit 77; }
[ -r "$MODEL" ] || { echo "SKIP: default model not found"; exit 77; }
NS0=spk-ly-$$-0
NS1=spk-ly-$$-1
VA=spkl$$a
VB=spkl$$b
WPID=
cleanup() {
    [ -n "$WPID" ] && kill -9 "$WPID" 2>/dev/null
    ip netns del "$NS0" 2>/dev/null
    ip netns del "$NS1" 2>/dev/null
}
trap cleanup EXIT
if ! out=$(ip netns add "$NS0" 2>&1); then
    echo "SKIP: cannot create a network namespace here: $out"
    exit 77
fi
ip netns add "$NS1" || exit 1
ip link add "$VA" type veth peer name "$VB" || { echo "SKIP: cannot create a veth pair"; exit 77; }
ip link set "$VA" netns "$NS0" && ip link set "$VB" netns "$NS1" || exit 1
ip -n "$NS0" addr add 10.79.0.1/24 dev "$VA" && ip -n "$NS1" addr add 10.79.0.2/24 dev "$VB" || exit 1
ip -n "$NS0" link set "$VA" up && ip -n "$NS1" link set "$VB" up || exit 1
ip -n "$NS0" link set lo up && ip -n "$NS1" link set lo up

KEY=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
PROMPT="The quick brown fox"
ids() { tail -n 1; }

# $1 = pp, $2 = tp: one worker in NS1, the driver in NS0
across() {
    local port=$((29700 + RANDOM % 200))
    SPK_CLUSTER_KEY=$KEY ip netns exec "$NS1" "$WORKER" --coordinator 10.79.0.1:$port --rank 1 --world 2 \
        --threads 1 --transport tcp --peer-timeout 5000 >/dev/null 2>&1 &
    WPID=$!
    SPK_CLUSTER_KEY=$KEY ip netns exec "$NS0" "$GEN" --model "$MODEL" --prompt "$PROMPT" --max-tokens 32 \
        --ignore-eos --print-ids --pp "$1" --tp "$2" --threads 1 --coordinator 10.79.0.1:$port \
        --transport tcp 2>/dev/null | ids
    wait "$WPID"
    WPID=
}

one=$("$GEN" --model "$MODEL" --prompt "$PROMPT" --max-tokens 32 --ignore-eos --print-ids --threads 1 2>/dev/null | ids)
pp2=$(across 2 1)
tp2_local=$("$GEN" --model "$MODEL" --prompt "$PROMPT" --max-tokens 32 --ignore-eos --print-ids --tp 2 --threads 1 2>/dev/null | ids)
tp2=$(across 1 2)
echo "one rank:         $one"
echo "PP2 across hosts: $pp2"
echo "TP2 loopback:     $tp2_local"
echo "TP2 across hosts: $tp2"
[ -n "$one" ] && [ "$(echo "$one" | wc -w)" -eq 32 ] || { echo "FAIL: one-rank run produced no ids"; exit 1; }
[ "$pp2" = "$one" ] || { echo "FAIL: PP2 across namespaces differs from one rank"; exit 1; }
[ -n "$tp2" ] && [ "$tp2" = "$tp2_local" ] || { echo "FAIL: TP2 across namespaces differs from TP2 on loopback"; exit 1; }
echo "ok: PP2 across namespaces = one rank; TP2 across namespaces = TP2 on loopback"
