#!/usr/bin/env bash
# Qwen3's thinking switch in the programs: a synthetic qwen3-tiny carrying Qwen3's real chat template
# (from tests/data/ref_chat_families.json); the rendered chat prompt grows by the empty
# "<think>\n\n</think>\n\n" block with spk-generate --chat --no-think, with spk-server --no-think,
# and with a request's chat_template_kwargs {"enable_thinking": false}; {"enable_thinking": true}
# overrides the server's --no-think. Observed as prompt token counts (spk-generate's "prefill: N
# tokens", the server's usage.prompt_tokens): the same growth everywhere, and more than zero.
set -euo pipefail
BUILD=$(cd "${1:?build dir}" && pwd)
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
python3 - "$here/../data/ref_chat_families.json" "$W/qwen3.jinja" <<'PY'
import json, sys
t = [x for x in json.load(open(sys.argv[1]))['templates'] if x['family'] == 'qwen3'][0]
open(sys.argv[2], 'w').write(t['template'])
PY
"$BUILD/examples/spk-synth" --preset qwen3-tiny --seed 1 --chat-template "$W/qwen3.jinja" -o "$W/q3.gguf"
prefill() { # spk-generate's prompt tokens
    "$BUILD/examples/spk-generate" --model "$W/q3.gguf" --prompt "Hi there" --max-tokens 1 --threads 1 "$@" 2>&1 |
        sed -nE 's/^prefill: ([0-9]+) tokens.*/\1/p'
}
think=$(prefill --chat)
nothink=$(prefill --chat --no-think)
echo "spk-generate --chat: $think prompt tokens; --no-think: $nothink"
[ -n "$think" ] && [ -n "$nothink" ] && [ "$nothink" -gt "$think" ] || { echo "FAIL: --no-think did not add the think block"; exit 1; }
grow=$((nothink - think))
if "$BUILD/examples/spk-generate" --model "$W/q3.gguf" --prompt x --no-think > "$W/e" 2>&1; then
    echo "FAIL: --no-think without --chat accepted"; exit 1
fi
grep -q -- "--no-think applies to --chat only" "$W/e" || { cat "$W/e"; echo "FAIL: no message"; exit 1; }

export SPK_TEST_MODEL=$W/q3.gguf
. "$here/server_lib.bash"
server_setup "$BUILD"
trap 'server_kill; rm -rf "$TMP" "$W"' EXIT
tokens() { # usage.prompt_tokens of a chat request with the extra JSON fields $1
    curl -sS "$URL/v1/chat/completions" -H 'Content-Type: application/json' \
        -d "{\"messages\":[{\"role\":\"user\",\"content\":\"Hi there\"}],\"max_tokens\":1$1}" |
        python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["usage"]["prompt_tokens"] if "usage" in d else d)'
}
server_start
a=$(tokens '')
b=$(tokens ',"chat_template_kwargs":{"enable_thinking":false}')
bad=$(curl -sS "$URL/v1/chat/completions" -H 'Content-Type: application/json' \
    -d '{"messages":[{"role":"user","content":"x"}],"chat_template_kwargs":{"enable_thinking":"no"}}')
server_stop
server_start --no-think
c=$(tokens '')
d=$(tokens ',"chat_template_kwargs":{"enable_thinking":true}')
server_stop
echo "spk-server: default $a, enable_thinking false $b; --no-think $c, enable_thinking true $d"
[ "$a" = "$think" ] && [ "$b" = "$nothink" ] && [ "$c" = "$nothink" ] && [ "$d" = "$think" ] ||
    { echo "FAIL: prompt tokens differ from spk-generate's ($think / $nothink)"; exit 1; }
printf '%s\n' "$bad" | grep -q "enable_thinking' must be a boolean" || { echo "FAIL: bad kwargs: $bad"; exit 1; }
echo "ok: the think block adds $grow prompt tokens in spk-generate and spk-server alike"
