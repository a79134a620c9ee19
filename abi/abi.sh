#!/usr/bin/env bash
# abi/abi.sh dump LIB OUT.abi      write the ABI of LIB (which needs debug info) to OUT.abi
# abi/abi.sh check LIB [BASELINE]  compare LIB with the baseline (abi/libsparkinfer.abi):
#   fails on anything but additions (new functions, fields appended to size-prefixed structs,
#   new enumerators before *_COUNT). See docs/ABI.md.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
SUPP="$HERE/suppressions.abignore"
dump() {
    abidw --no-corpus-path --no-comp-dir-path --no-show-locs --drop-private-types \
        --headers-dir "$ROOT/include/sparkinfer" --out-file "$2" "$1"
}
case "${1:-}" in
dump)
    dump "$2" "$3" ;;
check)
    LIB=$2
    BASE=${3:-$HERE/libsparkinfer.abi}
    TMP=$(mktemp -d)
    trap 'rm -rf "$TMP"' EXIT
    dump "$LIB" "$TMP/current.abi"
    rc=0
    abidiff --no-added-syms --suppressions "$SUPP" "$BASE" "$TMP/current.abi" > "$TMP/report" || rc=$?
    if [ "$rc" -ne 0 ]; then
        cat "$TMP/report"
        echo "FAIL: abidiff exit $rc (1 error, 2 usage, 4 ABI change, 8 incompatible change) against $BASE"
        exit 1
    fi
    # The suppression hides every change of the size-prefixed structs: check those separately.
    structs=$(sed -n 's/^ *name_regexp = ^spk_(\(.*\))\$$/\1/p' "$SUPP" | tr '|' '\n' | sed 's/^/spk_/')
    # shellcheck disable=SC2086
    python3 "$HERE/struct_tails.py" "$BASE" "$TMP/current.abi" $structs
    echo "ok: ABI of $LIB is compatible with $BASE (only additions)" ;;
*)
    sed -n '2,5p' "$0" >&2
    exit 2 ;;
esac
