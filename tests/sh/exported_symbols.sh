#!/usr/bin/env bash
# Only the public API is exported: every dynamic symbol the library defines starts with spk_,
# and the SONAME is libsparkinfer.so.0.
set -euo pipefail
BUILD=$1
LIB=$(ls "$BUILD"/libsparkinfer.so.0.* | head -n1)
bad=$(nm -D --defined-only "$LIB" | awk '{sub(/@.*/, "", $3); print $3}' | grep -v '^spk_' | grep -v '^SPARKINFER_' || true)
if [ -n "$bad" ]; then
    echo "FAIL: exported symbols without the spk_ prefix:"; echo "$bad"; exit 1
fi
n=$(nm -D --defined-only "$LIB" | awk '{sub(/@.*/, "", $3); print $3}' | grep -c '^spk_')
for sym in spk_version_number spk_cluster_open spk_model_load spk_submit spk_poll spk_cancel spk_tokenize; do
    nm -D --defined-only "$LIB" | awk '{sub(/@.*/, "", $3); print $3}' | grep -qx "$sym" || { echo "FAIL: $sym not exported"; exit 1; }
done
soname=$(objdump -p "$LIB" | awk '/SONAME/{print $2}')
[ "$soname" = libsparkinfer.so.0 ] || { echo "FAIL: SONAME is '$soname'"; exit 1; }
# Every exported function is declared in the public headers.
ROOT=$2
for s in $(nm -D --defined-only "$LIB" | awk '$2=="T"{sub(/@.*/, "", $3); print $3}'); do
    grep -q "\b$s\b" "$ROOT"/include/sparkinfer/*.h || { echo "FAIL: $s exported but not in a public header"; exit 1; }
done
# The static library leaks its internals into the caller's namespace: every global it defines
# is spk_-prefixed too (an unprefixed gguf_open would clash with ggml's).
A="$BUILD"/libsparkinfer.a
# (ASan's one-definition-rule marker of a global, __odr_asan.NAME, is judged by NAME)
bad=$(nm --defined-only "$A" 2>/dev/null | awk 'NF==3 && $2 ~ /[TDBRCGSV]/ {print $3}' | sed 's/^__odr_asan\.//' |
      grep -v '^spk_' | sort -u || true)
if [ -n "$bad" ]; then
    echo "FAIL: global symbols of libsparkinfer.a without the spk_ prefix:"; echo "$bad"; exit 1
fi
# GPU and RDMA code lives in modules loaded at run time: the core loads on a machine without them.
needed=$(objdump -p "$LIB" | awk '/NEEDED/{print $2}')
if echo "$needed" | grep -E -q 'libcuda|libnccl|libibverbs|libcublas'; then
    echo "FAIL: $LIB NEEDs GPU/RDMA libraries:"; echo "$needed"; exit 1
fi
echo "ok: $n exported symbols, all spk_-prefixed and declared; SONAME $soname"
