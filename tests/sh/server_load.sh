#!/usr/bin/env bash
# A bounded load test of spk-server (tests/sh/server_load.py): 64 concurrent streaming clients,
# 320 short greedy requests (64 in a sanitizer build, which is ~10x slower), each complete,
# well-formed SSE, equal to the same request run alone, and /metrics counters adding up; then a
# clean SIGTERM shutdown (exit 0: under ASan, no leak). Python standard library only.
# Usage: server_load.sh BUILD_DIR SOURCE_DIR
set -u
S=$(cd "${2:?source dir}" && pwd)
. "$S/tests/sh/server_lib.bash"
server_setup "$1"
PER_CLIENT=5
if grep -Eq '^(SPK_SANITIZE|SPK_TSAN):BOOL=ON' "$B/CMakeCache.txt" 2>/dev/null; then
    PER_CLIENT=1
fi
server_start --ctx 256 --max-seqs 16 --queue 128 --max-connections 256 || exit 1
fail=0
SPK_URL=$URL N_CLIENTS=64 PER_CLIENT=$PER_CLIENT timeout 900 python3 "$S/tests/sh/server_load.py" || fail=1
server_stop || fail=1
[ $fail -eq 0 ] || { echo "--- server stderr (tail)"; tail -30 "$TMP/server.err"; exit 1; }
echo "load test passed"
