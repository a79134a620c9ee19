#!/bin/bash
# TCP transport across two network namespaces joined by a veth pair: one rank per namespace runs
# the conformance suite (up to 64 MiB) over real routed sockets. Usage: transport_netns.sh BUILD_DIR
# [--bench]. Exits 77 (skipped) when network namespaces cannot be created here.
set -u
BUILD=${1:?build dir}
MODE=${2:-}
BIN=$(find "$BUILD" -name test_transport_tcp -type f -perm -u+x | head -1)
[ -n "$BIN" ] || { echo "SKIP: test_transport_tcp not built"; exit 77; }
NS0=spk-tr-$$-0
NS1=spk-tr-$$-1
VA=spkv$$a
VB=spkv$$b
cleanup() {
    ip netns del "$NS0" 2>/dev/null
    ip netns del "$NS1" 2>/dev/null
}
trap cleanup EXIT
if ! out=$(ip netns add "$NS0" 2>&1); then
    echo "SKIP: cannot create a network namespace here: $out"
    exit 77
fi
ip netns add "$NS1" || exit 1
# the veth pair lives only inside the two test namespaces
ip link add "$VA" type veth peer name "$VB" || { echo "SKIP: cannot create a veth pair"; exit 77; }
ip link set "$VA" netns "$NS0" && ip link set "$VB" netns "$NS1" || exit 1
ip -n "$NS0" addr add 10.77.0.1/24 dev "$VA" && ip -n "$NS1" addr add 10.77.0.2/24 dev "$VB" || exit 1
ip -n "$NS0" link set "$VA" up && ip -n "$NS1" link set "$VB" up || exit 1
ip -n "$NS0" link set lo up && ip -n "$NS1" link set lo up
ARGS=""
[ "$MODE" = "--bench" ] && ARGS="--bench"
ip netns exec "$NS0" "$BIN" --rank 0 --world 2 --bootstrap 10.77.0.1:29517 --addr 10.77.0.1 $ARGS &
P0=$!
ip netns exec "$NS1" "$BIN" --rank 1 --world 2 --bootstrap 10.77.0.1:29517 --addr 10.77.0.2 $ARGS &
P1=$!
wait $P0; R0=$?
wait $P1; R1=$?
echo "rank 0 exit $R0, rank 1 exit $R1"
[ $R0 -eq 0 ] && [ $R1 -eq 0 ]
