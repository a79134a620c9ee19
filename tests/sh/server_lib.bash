# Helpers for the spk-server tests (tests/sh/server_*.sh source this; not a test itself).
#   server_setup BUILD_DIR    sets B, SERVER, MODEL, TMP (removed at exit), skips (77) without a model
#   server_start ARGS...      starts spk-server on a port it picks (--port 0), waits for its
#                             startup line, sets SPID, PORT, URL; the log is $TMP/server.{out,err}
#   server_stop               SIGTERM, waits; fails (returns 1) unless it exits 0 (an ASan build
#                             reports leaks at exit with a non-zero status)
#   server_venv               a venv under $SPK_CACHE with the official openai client; sets PY
export NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost # never through a proxy

server_setup() {
    B=$(cd "${1:?build dir}" && pwd)
    SERVER="$B/examples/spk-server"
    MODEL=${SPK_TEST_MODEL:-${SPK_CACHE:-$HOME/.cache/sparkinfer}/models/SmolLM2-135M-Instruct.Q4_1.gguf}
    [ -x "$SERVER" ] || { echo "FAIL: $SERVER not built"; exit 1; }
    [ -r "$MODEL" ] || { echo "SKIP: default model not found ($MODEL)"; exit 77; }
    command -v curl >/dev/null || { echo "FAIL: curl not installed (scripts/deps.sh)"; exit 1; }
    TMP=$(mktemp -d)
    SPID=
    trap 'server_kill; rm -rf "$TMP"' EXIT
}

server_kill() {
    if [ -n "${SPID:-}" ] && kill -0 "$SPID" 2>/dev/null; then
        kill -KILL "$SPID" 2>/dev/null
        wait "$SPID" 2>/dev/null
    fi
    SPID=
}

server_start() {
    "$SERVER" --model "$MODEL" --port 0 --threads 2 "$@" >"$TMP/server.out" 2>"$TMP/server.err" &
    SPID=$!
    local line=
    for _ in $(seq 1 1200); do # loading under ASan takes a while: up to 120 s
        line=$(grep -m1 'listening on http://' "$TMP/server.out" 2>/dev/null || true)
        [ -n "$line" ] && break
        kill -0 "$SPID" 2>/dev/null || break
        sleep 0.1
    done
    if [ -z "$line" ]; then
        echo "FAIL: spk-server did not start"
        cat "$TMP/server.out" "$TMP/server.err"
        return 1
    fi
    echo "server: $line"
    PORT=$(printf '%s\n' "$line" | sed -E 's|.*listening on http://[^ ]*:([0-9]+),.*|\1|')
    URL="http://127.0.0.1:$PORT"
}

server_stop() {
    [ -n "${SPID:-}" ] || return 0
    kill -TERM "$SPID"
    local rc=0
    wait "$SPID" || rc=$?
    SPID=
    if [ $rc -ne 0 ]; then
        echo "FAIL: spk-server exited with $rc after SIGTERM"
        tail -40 "$TMP/server.err"
        return 1
    fi
    grep -q "stopping" "$TMP/server.err" || { echo "FAIL: no shutdown line"; return 1; }
    return 0
}

server_venv() {
    local cache=${SPK_CACHE:-$HOME/.cache/sparkinfer}
    local venv="$cache/venv-openai"
    PY="$venv/bin/python"
    if ! "$PY" -c 'import openai' 2>/dev/null; then
        echo "server tests: installing the openai client into $venv" >&2
        mkdir -p "$cache"
        python3 -m venv "$venv" && "$venv/bin/pip" install -q 'openai>=1.30' >"$TMP/pip.log" 2>&1
        if ! "$PY" -c 'import openai' 2>/dev/null; then
            cat "$TMP/pip.log" >&2
            echo "FAIL: could not install the openai client (python3-venv from scripts/deps.sh, PyPI reachable?)"
            exit 1
        fi
    fi
}

# A metric's value from /metrics (0 if absent): metric NAME_WITH_LABELS
metric() {
    curl -s --noproxy '*' "$URL/metrics" | awk -v k="$1" '$1 == k { v = $2 } END { print v + 0 }'
}
