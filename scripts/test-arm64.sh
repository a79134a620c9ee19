#!/usr/bin/env bash
# test-arm64.sh BUILD_DIR JOBS "TESTS" "ASAN_TESTS": cross-build the library and the named unit
# tests for aarch64 (cmake/aarch64-linux-gnu.cmake) and run them under qemu-user with `-cpu max`
# (NEON, dotprod, i8mm, SVE2); then build ASAN_TESTS again with ASan+UBSan (BUILD_DIR-asan) and
# run those. SPK_TEST_MODEL is passed through. On an aarch64 host there is nothing to emulate:
# the native build's tests already run the NEON paths, so this exits 0 with a note.
set -euo pipefail
build=$1 jobs=$2 tests=$3 asan_tests=${4:-}
case "$(uname -m)" in
x86_64) ;;
*)
    echo "test-arm64: host is $(uname -m), not x86_64: no cross build (the native tests cover it)"
    exit 0
    ;;
esac
src=$(cd "$(dirname "$0")/.." && pwd)
bash "$src/scripts/deps-arm64.sh"

# run DIR "TESTS" CMAKE_ARGS...: configure, build only those targets, run them with ctest.
run() {
    local dir=$1 list=$2
    shift 2
    cmake -S "$src" -B "$dir" -DCMAKE_TOOLCHAIN_FILE="$src/cmake/aarch64-linux-gnu.cmake" \
        -DSPK_BUILD_EXAMPLES=OFF "$@" >/dev/null
    # shellcheck disable=SC2086 # a list of target names
    cmake --build "$dir" -j"$jobs" --target $list
    local regex
    regex="^($(echo $list | tr ' ' '|'))\$"
    # test_matmul fails, rather than testing less, if the emulated CPU lost the i8mm level.
    (cd "$dir" && SPK_TEST_REQUIRE_ISA=neon-i8mm ctest --output-on-failure --no-tests=error -j1 -R "$regex")
}

run "$build" "$tests" -DCMAKE_BUILD_TYPE=Release
if [ -n "$asan_tests" ]; then
    # LeakSanitizer cannot stop the world under qemu-user (it fails as "under ptrace"): leaks
    # are left to the host's ASan run of the same code; everything else ASan/UBSan checks runs.
    ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1 \
        run "$build-asan" "$asan_tests" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSPK_SANITIZE=ON
fi
