#!/usr/bin/env bash
# test-x86-emu.sh BUILD_DIR "TESTS": run the named x86 kernel tests of an existing build under
# `qemu-x86_64 -cpu max`, which emulates AVX2+FMA+F16C (not AVX-512: qemu 7.2 lacks it), so the
# AVX2 kernels run against the scalar reference on a host without AVX2. SPK_TEST_REQUIRE_ISA=avx2
# makes test_matmul fail, rather than test less, if the dispatch does not offer the AVX2 level.
# Installs qemu-user (Debian) when missing; on a non-x86_64 host there is nothing to do (exit 0).
set -euo pipefail
build=$1 tests=$2
if [ "$(uname -m)" != x86_64 ]; then
    echo "test-x86-emu: host is $(uname -m), not x86_64: nothing to emulate"
    exit 0
fi
if ! command -v qemu-x86_64 >/dev/null 2>&1; then
    SUDO=
    if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
    echo "test-x86-emu: installing qemu-user" >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q qemu-user >&2
fi
fail=0
for t in $tests; do
    bin=$build/tests/$t
    [ -x "$bin" ] || { echo "test-x86-emu: $bin is missing (build first)" >&2; exit 1; }
    start=$(date +%s)
    if SPK_TEST_REQUIRE_ISA=avx2 qemu-x86_64 -cpu max "$bin"; then
        echo "test-x86-emu: $t passed under qemu-x86_64 -cpu max ($(( $(date +%s) - start )) s)"
    else
        echo "test-x86-emu: $t FAILED under qemu-x86_64 -cpu max" >&2
        fail=1
    fi
done
exit $fail
