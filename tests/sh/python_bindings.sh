#!/usr/bin/env bash
# The Python bindings' pytest suite (bindings/python/tests) against this build's shared library.
# Installs pytest if missing. Skipped (77) in sanitizer builds: the ASan/TSan runtime would have
# to be preloaded into the python interpreter, which reports the interpreter's own leaks and
# races rather than the library's.
# Usage: python_bindings.sh BUILD_DIR SOURCE_DIR
set -u
B=$(cd "${1:?build dir}" && pwd)
S=$(cd "${2:?source dir}" && pwd)

if grep -Eq '^(SPK_SANITIZE|SPK_TSAN):BOOL=ON' "$B/CMakeCache.txt" 2>/dev/null; then
    echo "SKIP: sanitizer build (the sanitizer runtime cannot be preloaded into python sensibly)"
    exit 77
fi
LIB="$B/libsparkinfer.so.0"
[ -e "$LIB" ] || { echo "FAIL: $LIB not built"; exit 1; }
command -v python3 >/dev/null || { echo "FAIL: python3 not installed (scripts/deps.sh installs it)"; exit 1; }

if ! python3 -c 'import pytest' 2>/dev/null; then
    echo "python_bindings: installing pytest" >&2
    log=$(mktemp)
    if ! python3 -m pip install -q pytest >"$log" 2>&1; then
        if grep -q externally-managed-environment "$log"; then   # PEP 668 (Debian 12's python3)
            python3 -m pip install -q --break-system-packages pytest >"$log" 2>&1
        fi
    fi
    if ! python3 -c 'import pytest' 2>/dev/null; then
        cat "$log" >&2
        rm -f "$log"
        echo "FAIL: pytest is not installed and pip could not install it"
        exit 1
    fi
    rm -f "$log"
fi

export SPARKINFER_LIB="$LIB"
export PYTHONPATH="$S/bindings/python${PYTHONPATH:+:$PYTHONPATH}"
export SPK_SOURCE_DIR="$S"
export SPK_WORKER="$B/examples/spk-worker"
export PYTHONDONTWRITEBYTECODE=1   # no __pycache__ in the source tree

cd "$S/bindings/python"
python3 -m pytest -q -p no:cacheprovider -rs --durations=5 tests
rc=$?
if [ $rc -eq 5 ]; then
    echo "FAIL: pytest collected no tests"
    exit 1
fi
exit $rc
