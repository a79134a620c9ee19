#!/usr/bin/env bash
# server.sh: serving speed over HTTP, spk-server and llama.cpp's llama-server side by side, on the
# same GGUF file and the same thread count. For each concurrency level (default 1 8 32 64) a
# Python (standard library) client keeps C streaming /v1/completions requests in flight until
# REQUESTS have completed (default max(16, 2C)), each with the same ~PROMPT-word prompt and
# MAX_TOKENS generated tokens (ignore_eos, greedy; each prompt starts with its own number, so
# neither server reuses a previous request's KV), and reports:
#   tok/s       all generated tokens / wall time of the level
#   TTFT p50/p90/p99   time from sending the request to the first streamed text
#   TPOT p50/p90/p99   (time of the last token - time of the first) / (tokens - 1), per request
# Generated tokens are counted from usage (stream_options.include_usage) when the server gives it,
# else from the streamed chunks.
#
# llama-server is built from the llama-cpp-python sdist that tests/ref/build-llamacpp.sh fetches,
# in its own directory ($SPK_CACHE/llamacpp/build-server, the same options plus
# LLAMA_BUILD_SERVER=ON), so the reference harness's default build is left as it is.
#
# Usage: bench/server.sh [--model PATH] [--threads N] [--build-dir DIR] [--levels "1 8 32 64"]
#                        [--requests N] [--prompt-words N] [--max-tokens N] [--ctx N]
#                        [--spk-only | --llama-only]
# Prints one table row per server and level on stdout (and the same as JSON lines in
# $OUT_JSONL if set). Rerun: run it again; builds and downloads are cached.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
model=""
threads=2
build_dir=$root/build
levels="1 8 32 64"
requests=0
prompt_words=48
max_tokens=64
ctx=512
spk_only=0
llama_only=0
die() { printf 'bench/server.sh: %s\n' "$*" >&2; exit 1; }
while [ "$#" -gt 0 ]; do
    case $1 in
    --model) model=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --build-dir) build_dir=$2; shift 2 ;;
    --levels) levels=$2; shift 2 ;;
    --requests) requests=$2; shift 2 ;;
    --prompt-words) prompt_words=$2; shift 2 ;;
    --max-tokens) max_tokens=$2; shift 2 ;;
    --ctx) ctx=$2; shift 2 ;;
    --spk-only) spk_only=1; shift ;;
    --llama-only) llama_only=1; shift ;;
    -h | --help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (--help)" ;;
    esac
done
CACHE=${SPK_CACHE:-$HOME/.cache/sparkinfer}
[ -n "$model" ] || model=$CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf
[ -r "$model" ] || die "model $model not found (scripts/fetch-model.sh)"
SERVER=$build_dir/examples/spk-server
[ -x "$SERVER" ] || die "$SERVER not built"
export NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost
max_level=0
for l in $levels; do [ "$l" -gt "$max_level" ] && max_level=$l; done
TMP=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT

# ---- the load generator ----
cat >"$TMP/load.py" <<'PY'
import http.client, json, sys, threading, time

host, port, label, conc, n_req, words, max_tokens = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
prompt = " ".join(["The quick brown fox jumps over the lazy dog."] * (words // 9 + 1))

def body(i):
    # each request its own prompt: no server reuses a cached prefix beyond the first token
    # (llama-server's cache_prompt: false instead made its decode several times slower)
    return json.dumps({"prompt": "Note %d. %s" % (i, prompt), "max_tokens": max_tokens, "temperature": 0,
                       "stream": True, "ignore_eos": True,
                       "stream_options": {"include_usage": True}})
lock = threading.Lock()
next_req = [0]
res = []

def one(i):
    t0 = time.perf_counter()
    c = http.client.HTTPConnection(host, port, timeout=600)
    c.request("POST", "/v1/completions", body(i), {"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise RuntimeError("HTTP %d %r" % (r.status, r.read()[:200]))
    first = last = None
    chunks = 0
    usage = None
    buf = b""
    while True:
        line = r.readline()
        if not line:
            break
        line = line.strip()
        if not line.startswith(b"data: "):
            continue
        if line == b"data: [DONE]":
            break
        o = json.loads(line[6:])
        if o.get("usage"):
            usage = o["usage"]
        for ch in o.get("choices", []):
            if ch.get("text"):
                now = time.perf_counter()
                first = first or now
                last = now
                chunks += 1
    c.close()
    n = usage["completion_tokens"] if usage else chunks
    return t0, first, last, n

def worker():
    while True:
        with lock:
            if next_req[0] >= n_req:
                return
            next_req[0] += 1
            i = next_req[0]
        t0, first, last, n = one(i)
        with lock:
            res.append((t0, first, last, n))

start = time.perf_counter()
ths = [threading.Thread(target=worker) for _ in range(conc)]
[t.start() for t in ths]
[t.join() for t in ths]
wall = time.perf_counter() - start
tot = sum(r[3] for r in res)
ttft = sorted(r[1] - r[0] for r in res if r[1])
tpot = sorted((r[2] - r[1]) / (r[3] - 1) for r in res if r[1] and r[3] > 1)
def pct(a, p):
    return a[min(len(a) - 1, int(round(p / 100 * (len(a) - 1))))] * 1000 if a else float("nan")
row = {"server": label, "concurrency": conc, "requests": len(res), "tok_s": tot / wall,
       "ttft_ms": [pct(ttft, p) for p in (50, 90, 99)], "tpot_ms": [pct(tpot, p) for p in (50, 90, 99)]}
print("%-13s %4d %5d %9.1f   %7.0f %7.0f %7.0f   %6.1f %6.1f %6.1f" % (label, conc, len(res), row["tok_s"],
      *row["ttft_ms"], *row["tpot_ms"]))
sys.stdout.flush()
print(json.dumps(row), file=sys.stderr)
PY

wait_port() { # log-file regex-for-port pid
    for _ in $(seq 1 1200); do
        if grep -qE "$2" "$1" 2>/dev/null; then return 0; fi
        kill -0 "$3" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

run_levels() { # label port
    for c in $levels; do
        n=$requests
        [ "$n" -gt 0 ] || n=$((2 * c > 16 ? 2 * c : 16))
        python3 "$TMP/load.py" 127.0.0.1 "$2" "$1" "$c" "$n" "$prompt_words" "$max_tokens" 2>>"$TMP/rows.jsonl"
    done
}

echo "# model $(basename "$model"), $threads threads, prompt ~$prompt_words words, $max_tokens tokens generated (greedy, ignore_eos)"
echo "# server       conc  reqs     tok/s   TTFT ms p50     p90     p99   TPOT ms p50    p90    p99"

# ---- spk-server ----
if [ $llama_only -eq 0 ]; then
"$SERVER" --model "$model" --port 0 --threads "$threads" --ctx "$ctx" --max-seqs "$max_level" \
    --queue 1024 >"$TMP/spk.out" 2>"$TMP/spk.err" &
PIDS+=($!)
wait_port "$TMP/spk.out" 'listening on http://' "${PIDS[-1]}" || { cat "$TMP/spk.out" "$TMP/spk.err"; die "spk-server did not start"; }
port=$(sed -nE 's|.*listening on http://[^ ]*:([0-9]+),.*|\1|p' "$TMP/spk.out" | head -1)
run_levels spk-server "$port"
kill -TERM "${PIDS[-1]}"
wait "${PIDS[-1]}" || true
fi

# ---- llama-server ----
if [ $spk_only -eq 0 ]; then
    eval "$(bash "$root/tests/ref/build-llamacpp.sh")"
    LBUILD=$CACHE/llamacpp/build-server
    if [ ! -x "$LBUILD/bin/llama-server" ]; then
        echo "# building llama-server in $LBUILD (once)" >&2
        args=$(cat "$LLAMACPP_BUILD/.spk-cmake-args")
        # shellcheck disable=SC2086 # the reference build's options, word-split on purpose
        cmake -S "$LLAMACPP_SRC" -B "$LBUILD" ${args/-DLLAMA_BUILD_SERVER=OFF/-DLLAMA_BUILD_SERVER=ON} >&2
        cmake --build "$LBUILD" -j "${SPK_JOBS:-2}" --target llama-server >&2
    fi
    # Per level, a fresh llama-server with one slot per concurrent request (-np C), each slot the
    # context spk-server gives a sequence (-c CTX*C): its best configuration for that load (with
    # 64 slots at concurrency 1 it is several times slower).
    for c in $levels; do
        lport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
        "$LBUILD/bin/llama-server" -m "$model" --host 127.0.0.1 --port "$lport" -t "$threads" -tb "$threads" \
            -np "$c" -c $((ctx * c)) --no-webui >"$TMP/llama.out" 2>&1 &
        PIDS+=($!)
        for _ in $(seq 1 600); do
            curl -s --noproxy '*' "http://127.0.0.1:$lport/health" 2>/dev/null | grep -q ok && break
            kill -0 "${PIDS[-1]}" 2>/dev/null || { tail -20 "$TMP/llama.out"; die "llama-server did not start (port $lport taken?)"; }
            sleep 0.2
        done
        levels_save=$levels
        levels=$c
        run_levels llama-server "$lport"
        levels=$levels_save
        kill "${PIDS[-1]}"
        wait "${PIDS[-1]}" 2>/dev/null || true
    done
fi
if [ -n "${OUT_JSONL:-}" ]; then cp "$TMP/rows.jsonl" "$OUT_JSONL"; fi
