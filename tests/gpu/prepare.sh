#!/usr/bin/env bash
# prepare.sh: build, HERE (a machine with nvcc, no GPU needed), what tests/gpu/run.sh runs on a
# lent GPU machine, into .gpu/ (git-ignored through .git/info/exclude): the test and benchmark
# programs, libsparkinfer, the CUDA backend module and the shared libraries they need that a bare
# GPU image lacks (libsodium, PCRE2, cJSON, Check). The GPU machine cannot fetch anything and its
# tree is copied without build outputs, so everything travels in .gpu (carry it: run's `carry`).
#
#   bash tests/gpu/prepare.sh          then, on the device: bash tests/gpu/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
B=${SPK_GPU_BUILD:-build-gpu}
G=.gpu
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> "$(git rev-parse --git-path info/exclude)"
grep -qx '/build-gpu/' .git/info/exclude 2>/dev/null || echo '/build-gpu/' >> "$(git rev-parse --git-path info/exclude)"
cmake -S . -B "$B" -DCMAKE_BUILD_TYPE=Release -DSPK_WITH_CUDA=ON >/dev/null
cmake --build "$B" -j"${SPK_JOBS:-2}" --target sparkinfer spk_backend_cuda test_backend_cuda bench_backend spk-synth
rm -rf "$G" && mkdir -p "$G/bin" "$G/lib" "$G/plugins"
cp "$B/tests/test_backend_cuda" "$B/tests/bench_backend" "$B/examples/spk-synth" "$G/bin/"
cp "$B/plugins/spk_backend_cuda.so" "$G/plugins/"
cp -P "$B"/libsparkinfer.so* "$G/lib/"
# the non-system libraries of every program (the C/C++ runtime and the driver are the image's)
for f in "$G"/bin/* "$G"/plugins/*.so; do
    ldd "$f" | awk '/=> \//{print $3}'
done | sort -u | grep -v -E '/(libc|libm|libdl|libpthread|librt|libstdc\+\+|libgcc_s|ld-linux[^/]*)\.so' |
    grep -v "$PWD" | while read -r lib; do cp -L "$lib" "$G/lib/"; done
du -sh "$G"
echo "prepared $G: carry it to the device (run: carry [\".gpu\"]), then bash tests/gpu/run.sh"
