#!/usr/bin/env bash
# spk-server with the official openai Python client (tests/sh/server_openai.py): models, chat and
# completions streamed and not, usage, stop strings, logprobs, seeds, error types, API key
# refused/accepted, cancellation by closing a stream; then a clean SIGTERM shutdown (exit 0,
# which under ASan also means no leak). The client lives in a venv under $SPK_CACHE.
# Usage: server_openai.sh BUILD_DIR SOURCE_DIR
set -u
S=$(cd "${2:?source dir}" && pwd)
. "$S/tests/sh/server_lib.bash"
server_setup "$1"
server_venv
KEY=test-key-$RANDOM$RANDOM
server_start --api-key "$KEY" --model-name smol --ctx 1024 || exit 1
fail=0
SPK_URL=$URL SPK_KEY=$KEY SPK_MODEL_NAME=smol timeout 600 "$PY" "$S/tests/sh/server_openai.py" || fail=1
server_stop || fail=1
[ $fail -eq 0 ] || { echo "--- server stderr (tail)"; tail -30 "$TMP/server.err"; exit 1; }
echo "all openai client checks passed"
