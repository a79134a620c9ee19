#!/usr/bin/env bash
# No built binary searches the current directory for libraries: every ELF file of the build has
# RUNPATH/RPATH entries that are absolute or start with $ORIGIN (an empty entry, ".", or any other
# relative entry is resolved against the working directory by ld.so). Then the real attack: a
# fake libpcre2-8.so.0 whose constructor leaves a mark, in the working directory of spk-worker
# --help, must not run.
set -euo pipefail
BUILD=$1
n=0
bad=
while IFS= read -r -d '' f; do
    [ "$(head -c4 "$f" | od -An -c | tr -d ' ')" = '177ELF' ] || continue
    n=$((n + 1))
    for tag in RUNPATH RPATH; do
        readelf -d "$f" 2>/dev/null | grep -q "(${tag})" || continue
        val=$(readelf -d "$f" 2>/dev/null | sed -n "s/.*(${tag}).*\[\(.*\)\]/\1/p")
        # a tag whose value is empty is one empty entry: the working directory
        [ -n "$val" ] || { bad+="$f: $tag is present and empty"$'\n'; continue; }
        # Split on ':' keeping empty fields: "a:" -> "a", "" (read drops only the last one,
        # which is the ':' appended here).
        IFS=: read -r -a parts <<< "$val:"
        for p in "${parts[@]}"; do
            case "$p" in
                /*|'$ORIGIN'|'$ORIGIN/'*|'${ORIGIN}'|'${ORIGIN}/'*) ;;
                *) bad+="$f: $tag [$val] has entry '${p}'"$'\n' ;;
            esac
        done
    done
done < <(find "$BUILD" -path "$BUILD/CMakeFiles" -prune -o -type f \( -perm -u+x -o -name '*.so*' \) -print0)
[ "$n" -gt 0 ] || { echo "FAIL: no ELF files found under $BUILD"; exit 1; }
if [ -n "$bad" ]; then
    printf 'FAIL: relative or empty run-time search path entries:\n%s' "$bad"; exit 1
fi

WORKER="$BUILD/examples/spk-worker"
if [ -x "$WORKER" ] && command -v cc >/dev/null; then
    WORK=$(mktemp -d)
    trap 'rm -rf "$WORK"' EXIT
    cat > "$WORK/fake.c" <<'C'
#include <stdio.h>
__attribute__((constructor)) static void mark(void)
{
    FILE *f = fopen("PWNED", "w");
    if (f) fclose(f);
}
C
    cc -shared -fPIC -o "$WORK/libpcre2-8.so.0" "$WORK/fake.c"
    cp "$WORK/libpcre2-8.so.0" "$WORK/libsodium.so.23"
    cp "$WORK/libpcre2-8.so.0" "$WORK/libsparkinfer.so.0"
    (cd "$WORK" && "$WORKER" --help >/dev/null 2>&1 || true)
    if [ -e "$WORK/PWNED" ]; then
        echo "FAIL: spk-worker --help loaded a library from its working directory"; exit 1
    fi
fi
echo "ok: $n ELF files, no empty or relative RUNPATH/RPATH entries; nothing loaded from the working directory"
