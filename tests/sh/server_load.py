"""A bounded load test of spk-server (run by server_load.sh; Python standard library only).

N_CLIENTS threads each stream PER_CLIENT short greedy requests at once. Every response must be
well-formed SSE ending in [DONE], its text equal to the same request run alone beforehand, and
the /metrics counters must grow by exactly what was served. Environment: SPK_URL, N_CLIENTS,
PER_CLIENT.
"""
import http.client
import json
import os
import sys
import threading
import time
import urllib.parse

URL = urllib.parse.urlparse(os.environ["SPK_URL"])
N_CLIENTS = int(os.environ.get("N_CLIENTS", "64"))
PER_CLIENT = int(os.environ.get("PER_CLIENT", "5"))

TOPICS = ["the sea", "mountains", "a cat", "bread", "the moon", "rain", "trains", "music"]


def body(i, stream):
    """Request i of the 8 kinds: 2 chats (their template adds a system prompt of ~30 tokens) and
    6 completions with short prompts, each kind its own max_tokens (3..10)."""
    kind = i % 8
    b = {"max_tokens": 3 + kind, "temperature": 0, "stream": stream}
    chat = kind in (0, 5)
    if chat:
        b["messages"] = [{"role": "user", "content": "One sentence about %s." % TOPICS[kind]}]
    else:
        b["prompt"] = "A note about %s:" % TOPICS[kind]
    if stream:
        b["stream_options"] = {"include_usage": True}
    return ("/v1/chat/completions" if chat else "/v1/completions"), b


def post(path, b, timeout=600):
    c = http.client.HTTPConnection(URL.hostname, URL.port, timeout=timeout)
    c.request("POST", path, json.dumps(b), {"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, r.getheader("Content-Type", ""), data


def metrics():
    c = http.client.HTTPConnection(URL.hostname, URL.port, timeout=60)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    c.close()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def parse_sse(raw):
    """(text, usage, finish) of a well-formed stream, or raise."""
    s = raw.decode("utf-8")
    assert s.endswith("data: [DONE]\n\n"), "no [DONE] at the end: %r" % s[-100:]
    events = s.split("\n\n")[:-1]
    text, usage, finish = "", None, None
    for e in events[:-1]:
        assert e.startswith("data: ") and "\n" not in e, "bad event %r" % e
        o = json.loads(e[6:])
        assert "error" not in o, o
        if o.get("usage"):
            usage = o["usage"]
        for ch in o["choices"]:
            text += ch["delta"].get("content") or "" if "delta" in ch else ch["text"]
            finish = ch.get("finish_reason") or finish
    assert finish in ("stop", "length"), finish
    assert usage is not None, "no usage chunk"
    return text, usage, finish


def main():
    # The same requests run alone, one at a time.
    ref = {}
    for kind in range(8):
        path, b = body(kind, False)
        st, _, data = post(path, b)
        assert st == 200, (st, data)
        d = json.loads(data)
        ch = d["choices"][0]
        ref[kind] = (ch["message"]["content"] if "message" in ch else ch["text"], d["usage"])
    m0 = metrics()

    errors, results, lock = [], [], threading.Lock()

    def client(ci):
        for j in range(PER_CLIENT):
            i = ci * PER_CLIENT + j
            path, b = body(i, True)
            try:
                st, ctype, data = post(path, b)
                assert st == 200, "HTTP %d: %r" % (st, data[:200])
                assert ctype.startswith("text/event-stream"), ctype
                text, usage, _ = parse_sse(data)
                want, wusage = ref[i % 8]
                assert text == want, "request %d: %r differs from alone %r" % (i, text, want)
                assert usage == wusage, "request %d: usage %r vs alone %r" % (i, usage, wusage)
                with lock:
                    results.append(usage)
            except Exception as e:  # noqa: BLE001 - every failure is reported
                with lock:
                    errors.append("request %d: %s" % (i, e))

    t0 = time.time()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(N_CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dt = time.time() - t0
    n = N_CLIENTS * PER_CLIENT
    for e in errors[:10]:
        print("FAIL:", e)
    ok = not errors
    print("%s: %d streamed requests from %d concurrent clients in %.1f s, %d complete and equal to runs alone"
          % ("ok" if ok else "FAIL", n, N_CLIENTS, dt, len(results)))

    m1 = metrics()

    def d(k):
        return m1.get(k, 0) - m0.get(k, 0)

    gen = sum(u["completion_tokens"] for u in results)
    prm = sum(u["prompt_tokens"] for u in results)
    checks = [
        ("200 responses grew by the requests (+1 for the first /metrics)", d('spk_server_requests_total{status="200"}'), n + 1),
        ("generations ended (stop + length)", d('spk_server_generations_total{finish="stop"}')
         + d('spk_server_generations_total{finish="length"}'), n),
        ("no errors or cancels", d('spk_server_generations_total{finish="error"}')
         + d('spk_server_generations_total{finish="cancelled"}'), 0),
        ("generated tokens = sum of usage.completion_tokens", d("spk_server_generated_tokens_total"), gen),
        ("prompt tokens = sum of usage.prompt_tokens", d("spk_server_prompt_tokens_total"), prm),
        ("TTFT histogram count", d("spk_server_time_to_first_token_seconds_count"), n),
        ("TTFT +Inf bucket = count", d('spk_server_time_to_first_token_seconds_bucket{le="+Inf"}'), n),
        ("duration histogram count", d("spk_server_request_duration_seconds_count"), n),
        ("nothing in flight", m1.get("spk_server_requests_in_flight"), 0),
        ("queue empty", m1.get("spk_queue_depth"), 0),
        ("KV cache all free", m1.get('spk_kv_cache_blocks{state="used"}'), 0),
        ("no 429", d('spk_server_requests_total{status="429"}'), 0),
    ]
    for what, got, want in checks:
        good = got == want
        ok &= good
        print("%s: /metrics %s: %s%s" % ("ok" if good else "FAIL", what, got, "" if good else " (want %s)" % want))
    tpot = d("spk_server_time_per_output_token_seconds_count")
    ok &= 0 < tpot <= n
    print("%s: TPOT histogram has %d of %d requests (those with 2+ tokens)" % ("ok" if 0 < tpot <= n else "FAIL", tpot, n))
    print("throughput: %.1f generated tok/s over the load" % (gen / dt))
    sys.exit(0 if ok else 1)


main()
