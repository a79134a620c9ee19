#!/usr/bin/env bash
# Run every libFuzzer target of a -DSPK_FUZZ=ON build for a bounded time each, starting from the
# committed seed corpus tests/fuzz/corpus/<target>/ (read only; new inputs go to the build dir).
#   tests/fuzz/run.sh BUILD_DIR [SECONDS_PER_TARGET (default 20)]
# Exit 1 on the first target that finds a crash, leak or timeout (the input is kept under
# BUILD_DIR/fuzz-artifacts/ and named in the output).
set -euo pipefail
BUILD=$1
SECS=${2:-20}
SRC=$(cd "$(dirname "$0")" && pwd)
ART="$BUILD/fuzz-artifacts"
mkdir -p "$ART"
n=0
for seeds in "$SRC"/corpus/*/; do
    name=$(basename "$seeds")
    bin="$BUILD/tests/$name"
    [ -x "$bin" ] || { echo "FAIL: $bin not built (cmake --build $BUILD --target $name)"; exit 1; }
    work="$BUILD/fuzz-corpus/$name"
    mkdir -p "$work"
    echo "fuzz: $name for ${SECS}s from $(ls "$seeds" | wc -l) seeds"
    if ! "$bin" -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -max_len=8192 \
            -print_final_stats=1 -artifact_prefix="$ART/$name-" "$work" "$seeds" > "$BUILD/fuzz-$name.log" 2>&1; then
        tail -n 40 "$BUILD/fuzz-$name.log"
        echo "FAIL: $name found a bug; reproduce with: $bin $(ls -t "$ART/$name"-* 2>/dev/null | head -n1)"
        exit 1
    fi
    grep -E '^stat::number_of_executed_units|^stat::new_units_added' "$BUILD/fuzz-$name.log" | sed "s/^/  $name /"
    n=$((n + 1))
done
for src in "$SRC"/fuzz_*.c; do
    name=$(basename "$src" .c)
    [ -d "$SRC/corpus/$name" ] || { echo "FAIL: $name has no seed corpus in tests/fuzz/corpus/$name"; exit 1; }
done
echo "ok: $n fuzz targets ran ${SECS}s each without a finding"
