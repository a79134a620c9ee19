#!/usr/bin/env bash
# test-arm64.sh BUILD_DIR JOBS TEST... : cross-build the library and the named unit tests for
# aarch64 (cmake/aarch64-linux-gnu.cmake) and run them under qemu-user with `-cpu max` (NEON,
# dotprod, i8mm, SVE2). SPK_TEST_MODEL is passed through. On an aarch64 host there is nothing
# to emulate: the native build's tests already run the NEON paths, so this exits 0 with a note.
set -euo pipefail
build=$1 jobs=$2
shift 2
case "$(uname -m)" in
x86_64) ;;
*)
    echo "test-arm64: host is $(uname -m), not x86_64: no cross build (the native tests cover it)"
    exit 0
    ;;
esac
src=$(cd "$(dirname "$0")/.." && pwd)
bash "$src/scripts/deps-arm64.sh"
cmake -S "$src" -B "$build" -DCMAKE_TOOLCHAIN_FILE="$src/cmake/aarch64-linux-gnu.cmake" \
    -DCMAKE_BUILD_TYPE=Release -DSPK_BUILD_EXAMPLES=OFF >/dev/null
cmake --build "$build" -j"$jobs" --target "$@"
regex="^($(IFS='|'; echo "$*"))\$"
# The matmul test fails, rather than testing less, if the emulated CPU lost the i8mm level.
cd "$build" && SPK_TEST_REQUIRE_ISA=neon-i8mm ctest --output-on-failure --no-tests=error -j1 -R "$regex"
