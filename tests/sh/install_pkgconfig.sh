#!/usr/bin/env bash
# `cmake --install` puts headers, libraries, sparkinfer.pc and the CMake package in place, and an
# out-of-tree program builds with pkg-config (shared and static) and with find_package.
set -euo pipefail
BUILD=$1
if grep -q '^SPK_SANITIZE:BOOL=ON' "$BUILD/CMakeCache.txt" || grep -q '^SPK_TSAN:BOOL=ON' "$BUILD/CMakeCache.txt"; then
    echo "SKIP: sanitizer build (an out-of-tree program would need the sanitizer runtime); the normal build runs this test"
    exit 77
fi
PREFIX=$(mktemp -d)
WORK=$(mktemp -d)
trap 'rm -rf "$PREFIX" "$WORK"' EXIT
cmake --install "$BUILD" --prefix "$PREFIX" >/dev/null
test -f "$PREFIX/include/sparkinfer/sparkinfer.h"
test -f "$PREFIX/include/sparkinfer/transport.h"
test -f "$PREFIX"/lib*/libsparkinfer.a
LIBDIR=$(dirname "$(ls "$PREFIX"/lib*/libsparkinfer.so.0)")
test -f "$LIBDIR/pkgconfig/sparkinfer.pc"
test -f "$LIBDIR/cmake/sparkinfer/sparkinferConfig.cmake"
cat > "$WORK/app.c" <<'C'
#include <sparkinfer/sparkinfer.h>
#include <stdio.h>
int main(void)
{
    spk_cluster_config c;
    if (spk_cluster_config_init(&c) != SPK_OK) return 1;
    if (spk_version_number() != SPK_VERSION_NUMBER) return 2;
    if (spk_model_load(NULL, NULL, NULL) != SPK_ERR_INVALID_ARG) return 3;
    printf("%s %s\n", spk_version_string(), spk_build_info());
    return 0;
}
C
export PKG_CONFIG_PATH="$LIBDIR/pkgconfig"
# shellcheck disable=SC2046
cc "$WORK/app.c" -o "$WORK/app" $(pkg-config --cflags --libs sparkinfer)
LD_LIBRARY_PATH="$LIBDIR" "$WORK/app"
# Static: exactly what `pkg-config --static --libs` says, with libsparkinfer itself taken from the
# archive (-Bstatic for it alone; its dependencies stay shared). The program must not need
# libsparkinfer.so at run time.
STATIC_LIBS=$(pkg-config --libs --static sparkinfer)
case " $STATIC_LIBS " in *" -lsparkinfer "*) ;; *) echo "FAIL: --static --libs lacks -lsparkinfer: $STATIC_LIBS"; exit 1 ;; esac
# shellcheck disable=SC2046,SC2086
cc "$WORK/app.c" -o "$WORK/app_static" $(pkg-config --cflags sparkinfer) \
    ${STATIC_LIBS/-lsparkinfer/-Wl,-Bstatic -lsparkinfer -Wl,-Bdynamic}
if readelf -d "$WORK/app_static" | grep -q 'NEEDED.*libsparkinfer'; then
    echo "FAIL: the static link still needs libsparkinfer.so"; exit 1
fi
env -u LD_LIBRARY_PATH "$WORK/app_static" >/dev/null
# Installed programs find the installed library through RUNPATH $ORIGIN/../lib, in any prefix,
# without LD_LIBRARY_PATH.
for prog in spk-generate spk-worker; do
    [ -x "$PREFIX/bin/$prog" ] || continue
    env -u LD_LIBRARY_PATH "$PREFIX/bin/$prog" --help >/dev/null 2>&1 ||
        { echo "FAIL: installed $prog --help does not run without LD_LIBRARY_PATH:";
          env -u LD_LIBRARY_PATH ldd "$PREFIX/bin/$prog"; exit 1; }
    got=$(env -u LD_LIBRARY_PATH ldd "$PREFIX/bin/$prog" | awk '$1 ~ /^libsparkinfer/ {print $3}')
    [ "$(readlink -f "$got")" = "$(readlink -f "$LIBDIR/libsparkinfer.so.0")" ] ||
        { echo "FAIL: installed $prog resolves libsparkinfer to '$got', not $LIBDIR"; exit 1; }
done
mkdir -p "$WORK/cm"
cat > "$WORK/cm/CMakeLists.txt" <<'CM'
cmake_minimum_required(VERSION 3.18)
project(app C)
find_package(sparkinfer REQUIRED)
add_executable(app ../app.c)
target_link_libraries(app sparkinfer::sparkinfer)
CM
cmake -S "$WORK/cm" -B "$WORK/cm/build" -DCMAKE_PREFIX_PATH="$PREFIX" >/dev/null
cmake --build "$WORK/cm/build" >/dev/null
LD_LIBRARY_PATH="$LIBDIR" "$WORK/cm/build/app" >/dev/null
echo "ok: installed package builds out of tree with pkg-config (shared, static) and find_package; installed programs run without LD_LIBRARY_PATH"
