#!/usr/bin/env bash
# build-llamacpp.sh: build llama.cpp as an independent *reference* (never vendored into this repo).
#
# What it does (every step is skipped when its result is already there, so rerunning is cheap):
#   1. `pip download --no-deps --no-binary llama-cpp-python llama-cpp-python==0.3.36` into
#      $SPK_CACHE/llamacpp/dl and checks the sdist's sha256 (tests/ref/fetch-llamacpp-src.sh).
#   2. Extracts it to $SPK_CACHE/llamacpp/src/llama_cpp_python-0.3.36 (the same script).
#   3. Configures the vendored llama.cpp with cmake (Release, CPU only, GGML_NATIVE=ON, no OpenSSL,
#      no server/tests/examples) in $SPK_CACHE/llamacpp/build and builds only the targets we
#      use: libllama (shared, with libggml*), llama-bench, llama-batched-bench, llama-tokenize.
#   4. Makes a throwaway virtualenv $SPK_CACHE/llamacpp/venv with the sdist's pure-Python `llama_cpp`
#      package on its path (a .pth file) and LLAMA_CPP_LIB_PATH pointing at the library built in
#      step 3, so nothing is compiled twice. Its python runs tests/ref/gen-reference.py.
#   5. Prints where things are as KEY=VALUE lines (shell-sourceable) on stdout.
#
# $SPK_CACHE defaults to $HOME/.cache/sparkinfer. $SPK_JOBS (default 2) sets the build parallelism.
# Rerun: `tests/ref/build-llamacpp.sh` (idempotent). Start over: `rm -rf "$SPK_CACHE/llamacpp"`.
# Progress goes to stderr; only the KEY=VALUE lines go to stdout.
set -euo pipefail

VER=0.3.36
CACHE=${SPK_CACHE:-$HOME/.cache/sparkinfer}
BASE=$CACHE/llamacpp
DL=$BASE/dl
SDIST=$DL/llama_cpp_python-$VER.tar.gz
SRC=$BASE/src/llama_cpp_python-$VER
LCPP=$SRC/vendor/llama.cpp
BUILD=$BASE/build
VENV=$BASE/venv
JOBS=${SPK_JOBS:-2}
PYTHON=${PYTHON:-python3}
TARGETS=(llama llama-bench llama-batched-bench llama-tokenize llama-quantize)

log() { printf '[build-llamacpp] %s\n' "$*" >&2; }
die() { printf '[build-llamacpp] ERROR: %s\n' "$*" >&2; exit 1; }

mkdir -p "$DL" "$BASE/src"

# 1.-2. sdist (checked) and its extraction: tests/ref/fetch-llamacpp-src.sh
"$(dirname "${BASH_SOURCE[0]}")/fetch-llamacpp-src.sh" > /dev/null

# 3. configure (again when the options below change) + build
cmake_args=(
    -DCMAKE_BUILD_TYPE=Release
    -DBUILD_SHARED_LIBS=ON
    -DGGML_NATIVE=ON -DGGML_CCACHE=OFF
    -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_BLAS=OFF -DGGML_RPC=OFF
    -DLLAMA_OPENSSL=OFF -DLLAMA_LLGUIDANCE=OFF
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF
    -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_BUILD_TOOLS=ON
)
# (this llama.cpp has no LLAMA_CURL option any more; downloads would need OpenSSL, which is off)
if [ ! -f "$BUILD/CMakeCache.txt" ] || [ "$(cat "$BUILD/.spk-cmake-args" 2>/dev/null)" != "${cmake_args[*]}" ]; then
    gen=()
    if [ ! -f "$BUILD/CMakeCache.txt" ] && command -v ninja >/dev/null 2>&1; then gen=(-G Ninja); fi
    log "configuring llama.cpp in $BUILD"
    cmake -S "$LCPP" -B "$BUILD" "${gen[@]}" "${cmake_args[@]}" >&2
    printf '%s' "${cmake_args[*]}" > "$BUILD/.spk-cmake-args"
fi
log "building ${TARGETS[*]} with -j$JOBS"
t0=$(date +%s)
cmake --build "$BUILD" --config Release -j "$JOBS" --target "${TARGETS[@]}" >&2
log "build step took $(( $(date +%s) - t0 )) s"

BIN=$BUILD/bin
LIBDIR=$(dirname "$(find "$BUILD" -name 'libllama.so' -print -quit)")
if [ ! -f "$LIBDIR/libllama.so" ]; then die "libllama.so not found under $BUILD"; fi
for t in llama-bench llama-batched-bench llama-tokenize llama-quantize; do
    [ -x "$BIN/$t" ] || die "$BIN/$t was not built"
done

# 4. virtualenv using the built library
if [ ! -f "$VENV/.spk-ready" ]; then
    log "creating virtualenv $VENV"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        "numpy>=1.20" "typing-extensions>=4.5" "diskcache>=5.6.1" "jinja2>=2.11.3" >&2
    site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    # First line puts the sdist's pure-Python package on sys.path; the second (executed because it
    # starts with "import") tells it where the shared library is, unless the caller overrides it.
    {
        printf '%s\n' "$SRC"
        printf 'import os; os.environ.setdefault("LLAMA_CPP_LIB_PATH", "%s")\n' "$LIBDIR"
    } > "$site/spk-llama-cpp-ref.pth"
    "$VENV/bin/python" -c 'import llama_cpp; print("llama_cpp", llama_cpp.__version__)' >&2
    touch "$VENV/.spk-ready"
fi

# 5. report
cat <<EOF
LLAMACPP_VERSION=$VER
LLAMACPP_SRC=$LCPP
LLAMACPP_BUILD=$BUILD
LLAMACPP_BIN=$BIN
LLAMACPP_LIB=$LIBDIR
LLAMA_BENCH=$BIN/llama-bench
LLAMA_BATCHED_BENCH=$BIN/llama-batched-bench
LLAMA_TOKENIZE=$BIN/llama-tokenize
LLAMA_QUANTIZE=$BIN/llama-quantize
LLAMACPP_VENV_PYTHON=$VENV/bin/python
EOF
