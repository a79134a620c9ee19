#!/usr/bin/env bash
# spk-server at the HTTP level with curl: the raw SSE framing of a stream (text/event-stream,
# every event "data: JSON" and a blank line, the last "data: [DONE]"), the GET endpoints, and a
# table of bad requests (truncated JSON, 10 MB body, wrong content type, wrong types, negative
# max_tokens, NaN temperature, 1000 stop strings, invalid UTF-8, ...): each gets its 4xx with an
# OpenAI-shaped JSON error, and the server keeps serving; /metrics counts them by status. Then a
# server with one slot and one queue place: 429 + Retry-After, cancellation of a non-streamed
# request whose client left, and a slow client (unfinished headers) disconnected by --timeout.
# Usage: server_http.sh BUILD_DIR SOURCE_DIR
set -u
S=$(cd "${2:?source dir}" && pwd)
. "$S/tests/sh/server_lib.bash"
server_setup "$1"
server_start --ctx 512 --max-body 1048576 || exit 1
fail=0
check() {
    local what=$1
    shift
    if "$@"; then echo "ok: $what"; else echo "FAIL: $what"; fail=1; fi
}
C=(curl -s --noproxy '*' --max-time 120)
CHAT="$URL/v1/chat/completions"

# ---- SSE framing ----
sse_ok() {
    "${C[@]}" -N -D "$TMP/h" -H 'Content-Type: application/json' "$CHAT" -o "$TMP/sse" \
        -d '{"messages":[{"role":"user","content":"Say hello."}],"max_tokens":12,"temperature":0,"stream":true,
             "stream_options":{"include_usage":true}}' || return 1
    grep -qi '^content-type: text/event-stream' "$TMP/h" || { cat "$TMP/h"; return 1; }
    python3 - "$TMP/sse" <<'PY'
import json, sys
raw = open(sys.argv[1], "rb").read().decode()
assert raw.endswith("data: [DONE]\n\n"), repr(raw[-80:])
events = raw.split("\n\n")[:-1]
assert len(events) >= 4, events
for e in events:
    assert e.startswith("data: ") and "\n" not in e, repr(e)
objs = [json.loads(e[6:]) for e in events[:-1]]
assert all(o["object"] == "chat.completion.chunk" for o in objs)
assert objs[0]["choices"][0]["delta"]["role"] == "assistant"
assert objs[-1]["choices"] == [] and objs[-1]["usage"]["completion_tokens"] > 0, objs[-1]
assert objs[-2]["choices"][0]["finish_reason"] in ("stop", "length"), objs[-2]
assert len({o["id"] for o in objs}) == 1
PY
}
check "SSE framing: data: lines, blank-line separated, usage chunk, data: [DONE]" sse_ok
get_ok() { # path content-type-substring
    "${C[@]}" -D "$TMP/h" -o "$TMP/b" "$URL$1" && head -1 "$TMP/h" | grep -q ' 200' && grep -qi "content-type: .*$2" "$TMP/h"
}
check "GET /health" get_ok /health json
check "GET /v1/models" get_ok /v1/models json
check "GET /metrics (Prometheus text)" get_ok /metrics text/plain
check "/metrics has the TTFT histogram" grep -q '^spk_server_time_to_first_token_seconds_bucket{le="+Inf"} 1$' "$TMP/b"

# ---- bad requests: status and an OpenAI error body ----
bad() { # what expected-status curl-args...
    local what=$1 want=$2
    shift 2
    local got
    got=$("${C[@]}" -o "$TMP/err.json" -w '%{http_code}' "$@")
    if [ "$got" != "$want" ]; then
        echo "FAIL: $what: HTTP $got, expected $want"; head -c 300 "$TMP/err.json"; echo; fail=1; return
    fi
    if ! python3 -c 'import json,sys; e=json.load(open(sys.argv[1]))["error"]; assert e["message"] and e["type"]' \
        "$TMP/err.json" 2>/dev/null; then
        echo "FAIL: $what: not an OpenAI error body: $(head -c 200 "$TMP/err.json")"; fail=1; return
    fi
    echo "ok: $what -> $got $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["error"]["message"][:90])' "$TMP/err.json")"
}
J=(-H 'Content-Type: application/json')
M='"messages":[{"role":"user","content":"hi"}]'
bad "truncated JSON" 400 "${J[@]}" "$CHAT" -d '{"messages":[{"role":"user","content":"hi"'
bad "not an object" 400 "${J[@]}" "$CHAT" -d '[1,2]'
bad "empty body" 400 "${J[@]}" "$CHAT" -d ''
head -c 10485760 /dev/zero | tr '\0' ' ' >"$TMP/big"
bad "10 MB body" 413 "${J[@]}" "$CHAT" --data-binary @"$TMP/big"
bad "wrong content type" 415 -H 'Content-Type: text/plain' "$CHAT" -d "{$M}"
bad "form content type" 415 "$CHAT" -d "{$M}"
bad "negative max_tokens" 400 "${J[@]}" "$CHAT" -d "{$M,\"max_tokens\":-5}"
bad "max_tokens a string" 400 "${J[@]}" "$CHAT" -d "{$M,\"max_tokens\":\"10\"}"
bad "max_tokens 2.5" 400 "${J[@]}" "$CHAT" -d "{$M,\"max_tokens\":2.5}"
bad "NaN temperature" 400 "${J[@]}" "$CHAT" -d "{$M,\"temperature\":NaN}"
bad "temperature 1e999" 400 "${J[@]}" "$CHAT" -d "{$M,\"temperature\":1e999}"
bad "top_p 0" 400 "${J[@]}" "$CHAT" -d "{$M,\"top_p\":0}"
bad "presence_penalty 3" 400 "${J[@]}" "$CHAT" -d "{$M,\"presence_penalty\":3}"
bad "top_logprobs 21" 400 "${J[@]}" "$CHAT" -d "{$M,\"logprobs\":true,\"top_logprobs\":21}"
stops=$(python3 -c 'import json; print(json.dumps(["s%d" % i for i in range(1000)]))')
bad "1000 stop strings" 400 "${J[@]}" "$CHAT" -d "{$M,\"stop\":$stops}"
bad "a 300-byte stop string" 400 "${J[@]}" "$CHAT" -d "{$M,\"stop\":\"$(printf 'x%.0s' $(seq 300))\"}"
printf '{"messages":[{"role":"user","content":"h\xff\xfei"}]}' >"$TMP/badutf8"
bad "invalid UTF-8" 400 "${J[@]}" "$CHAT" --data-binary @"$TMP/badutf8"
printf '{"messages":[{"role":"user","content":"\xed\xa0\x80"}]}' >"$TMP/surrogate"
bad "UTF-8 surrogate" 400 "${J[@]}" "$CHAT" --data-binary @"$TMP/surrogate"
bad "messages not an array" 400 "${J[@]}" "$CHAT" -d '{"messages":"hi"}'
bad "no messages" 400 "${J[@]}" "$CHAT" -d '{"max_tokens":4}'
bad "unknown role" 400 "${J[@]}" "$CHAT" -d '{"messages":[{"role":"wizard","content":"hi"}]}'
bad "n = 3" 400 "${J[@]}" "$CHAT" -d "{$M,\"n\":3}"
bad "unknown model" 404 "${J[@]}" "$CHAT" -d "{$M,\"model\":\"nope\"}"
bad "stream_options without stream" 400 "${J[@]}" "$CHAT" -d "{$M,\"stream_options\":{\"include_usage\":true}}"
bad "completion token id out of range" 400 "${J[@]}" "$URL/v1/completions" -d '{"prompt":[1,2,99999999]}'
bad "context overflow" 400 "${J[@]}" "$URL/v1/completions" -d "{\"prompt\":\"$(printf 'word %.0s' $(seq 1500))\"}"
bad "unknown endpoint" 404 "$URL/v1/embeddings"
bad "GET on a POST endpoint" 405 "$CHAT"

# ---- still serving; the metrics counted the refusals ----
alive() {
    "${C[@]}" "${J[@]}" "$CHAT" -d "{$M,\"max_tokens\":4,\"temperature\":0}" |
        python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["choices"][0]["message"]["content"] is not None'
}
check "the server still answers after the bad requests" alive
n400=$(metric 'spk_server_requests_total{status="400"}')
check "metrics count the 400s ($n400)" [ "$n400" -ge 20 ]
check "metrics count the 413 and 415s" [ "$(metric 'spk_server_requests_total{status="413"}')" -eq 1 ] &&
    [ "$(metric 'spk_server_requests_total{status="415"}')" -eq 2 ]
check "clean shutdown on SIGTERM" server_stop

# ---- a full queue: 429 with Retry-After; a client that leaves a non-streamed request ----
server_start --ctx 256 --max-seqs 1 --queue 1 --timeout 3 || exit 1
LONG='{"prompt":"Once upon a time","max_tokens":64,"ignore_eos":true,"temperature":0}'
pids=()
for i in 1 2 3 4 5; do
    "${C[@]}" -D "$TMP/h$i" -o /dev/null -w '%{http_code}' "${J[@]}" "$URL/v1/completions" -d "$LONG" >"$TMP/code$i" &
    pids+=($!)
done
wait "${pids[@]}" # (a bare wait would wait for the server too)
codes=$(cat "$TMP"/code? | tr -d '\n' | fold -w3 | sort | uniq -c | tr -s ' ' | tr '\n' ',')
busy_ok() { # 1 slot + 1 queue place for 5 requests at once: the rest are refused with Retry-After
    local n429=0 n200=0
    for i in 1 2 3 4 5; do
        case $(cat "$TMP/code$i") in
        429) n429=$((n429 + 1)); grep -qi '^retry-after: 1' "$TMP/h$i" || return 1 ;;
        200) n200=$((n200 + 1)) ;;
        *) return 1 ;;
        esac
    done
    [ $n429 -ge 2 ] && [ $n200 -ge 2 ] && [ "$(metric spk_server_rejected_busy_total)" -eq $n429 ]
}
check "a full queue answers 429 with Retry-After (codes:$codes)" busy_ok
left_cancelled() { # the client gives up after 1 s on a 2000-token request: it is cancelled
    "${C[@]}" --max-time 1 -o /dev/null "${J[@]}" "$URL/v1/completions" \
        -d '{"prompt":"Once upon a time","max_tokens":2000,"ignore_eos":true}'
    for _ in $(seq 1 300); do
        [ "$(metric 'spk_server_generations_total{finish="cancelled"}')" -eq 1 ] &&
            [ "$(metric spk_server_requests_in_flight)" -eq 0 ] && return 0
        sleep 0.1
    done
    return 1
}
check "a client leaving a non-streamed request gets it cancelled" left_cancelled
slow_client_closed() { # headers that never end: the connection is closed after --timeout 3
    python3 - "$PORT" <<'PY'
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n")
s.settimeout(60)
sys.exit(0 if s.recv(100) == b"" else 1)  # b"": closed by the server (a timeout raises)
PY
}
check "a client that stops sending its headers is disconnected (--timeout)" slow_client_closed
check "clean shutdown on SIGTERM (second server)" server_stop
[ $fail -eq 0 ] || { echo "--- server stderr (tail)"; tail -30 "$TMP/server.err"; exit 1; }
echo "all HTTP checks passed"
