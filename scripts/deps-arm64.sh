#!/usr/bin/env bash
# deps-arm64.sh: what `make test-arm64` needs on an x86-64 Debian 12 host: the aarch64 cross
# compiler, qemu-user to run the results, and the arm64 -dev packages the build links against
# (multiarch, so pkg-config and the loader find them under /usr/lib/aarch64-linux-gnu).
# Idempotent: adds the arm64 architecture and installs only what is missing. Skips (exit 0,
# with a note) on hosts where cross-building does not apply (already aarch64, or not Debian).
set -euo pipefail

host=$(dpkg --print-architecture 2>/dev/null || echo unknown)
if [ "$host" != amd64 ]; then
    echo "deps-arm64.sh: host architecture is $host, not amd64: nothing to do" >&2
    exit 0
fi

# libasan8/libubsan1:arm64: the sanitizer runtimes in the multiarch path, next to the arm64 libc
# (the copies under /usr/aarch64-linux-gnu would pull in that tree's own libc, and mixing the two
# crashes in fork).
PKGS=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user
      libc6:arm64 libsodium-dev:arm64 libpcre2-dev:arm64 check:arm64 libcjson-dev:arm64
      libasan8:arm64 libubsan1:arm64)

SUDO=
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
export DEBIAN_FRONTEND=noninteractive

if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    echo "deps-arm64.sh: adding the arm64 architecture" >&2
    $SUDO dpkg --add-architecture arm64
fi

missing=()
for p in "${PKGS[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
echo "deps-arm64.sh: installing ${missing[*]}" >&2
# After adding an architecture the package lists must be fetched again, or apt knows no :arm64.
$SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
$SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >&2
