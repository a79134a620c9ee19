#!/usr/bin/env bash
# The library's ABI only grows: abidiff against the committed baseline abi/libsparkinfer.abi
# (abi/abi.sh check; docs/ABI.md says how to update it on purpose). Needs a build with debug
# info: in `make test` that is the ASan build (RelWithDebInfo); a Release build skips.
set -euo pipefail
BUILD=$1
ROOT=$2
LIB=$(ls "$BUILD"/libsparkinfer.so.0.* 2>/dev/null | head -n1 || true)
[ -n "$LIB" ] || { echo "FAIL: no libsparkinfer.so.0.* in $BUILD"; exit 1; }
if ! readelf -S "$LIB" | grep -q '\.debug_info'; then
    echo "SKIP: $LIB has no debug info (Release build); the RelWithDebInfo/ASan build runs this test"
    exit 77
fi
for tool in abidw abidiff python3; do
    command -v "$tool" >/dev/null || { echo "FAIL: $tool not found (scripts/deps.sh installs abigail-tools)"; exit 1; }
done
bash "$ROOT/abi/abi.sh" check "$LIB"
