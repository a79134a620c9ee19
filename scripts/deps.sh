#!/usr/bin/env bash
# deps.sh: install the Debian packages the build and the tests need, only those missing.
# Idempotent; needs root (or sudo) only when something is missing.
set -euo pipefail

PKGS=(build-essential cmake pkg-config clang python3 python3-pip unzip iproute2 procps
      check libsodium-dev libcjson-dev libpcre2-dev libibverbs-dev rdma-core)

PKGS+=(libmicrohttpd-dev curl python3-venv) # spk-server and its tests (tests/sh/server_*.sh)
PKGS+=(abigail-tools) # abidw/abidiff: tests/sh/abi_check.sh (docs/ABI.md)
missing=()
for p in "${PKGS[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
echo "deps.sh: installing ${missing[*]}" >&2
SUDO=
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
