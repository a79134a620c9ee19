"""spk-server through the official openai client (run by server_openai.sh).

Each check names the behaviour it proves; the first failure raises. Environment: SPK_URL (base
URL), SPK_KEY (the server's API key), SPK_MODEL_NAME (the id the server serves).
"""
import json
import math
import os
import sys
import time
import urllib.request

import openai

URL = os.environ["SPK_URL"]
KEY = os.environ["SPK_KEY"]
NAME = os.environ["SPK_MODEL_NAME"]
client = openai.OpenAI(base_url=URL + "/v1", api_key=KEY, max_retries=0, timeout=120)
MSG = [{"role": "user", "content": "Write three sentences about the sea."}]
PROMPT = "The capital of France is Paris. The capital of Italy is"
failures = 0


def check(what, cond, detail=""):
    """cond: a value, or a function (an exception in it is a failure)."""
    global failures
    if callable(cond):
        try:
            cond = cond()
        except Exception as e:  # noqa: BLE001
            cond, detail = False, "%s: %s %s" % (type(e).__name__, e, detail)
    if cond:
        print("ok:", what)
    else:
        failures += 1
        print("FAIL:", what, detail)


def metric(name):
    body = urllib.request.urlopen(URL + "/metrics", timeout=30).read().decode()
    for line in body.splitlines():
        if line.split(" ")[0] == name:
            return float(line.split(" ")[1])
    return 0.0


# ---- models, chat and completions, streamed and not, usage ----
models = client.models.list()
check("GET /v1/models lists the served model", [m.id for m in models.data] == [NAME], str(models))

chat = client.chat.completions.create(model=NAME, messages=MSG, max_tokens=24, temperature=0)
c0 = chat.choices[0]
check("chat: assistant message with text", c0.message.role == "assistant" and len(c0.message.content) > 0)
check("chat: finish_reason length or stop", c0.finish_reason in ("length", "stop"), c0.finish_reason)
u = chat.usage
check("chat: usage adds up", u.prompt_tokens > 5 and 0 < u.completion_tokens <= 24
      and u.total_tokens == u.prompt_tokens + u.completion_tokens, str(u))
check("chat: object and id", chat.object == "chat.completion" and chat.id.startswith("chatcmpl-"))

text, finish, usage, roles, n_chunks = "", None, None, [], 0
for ch in client.chat.completions.create(model=NAME, messages=MSG, max_tokens=24, temperature=0, stream=True,
                                         stream_options={"include_usage": True}):
    n_chunks += 1
    if ch.usage:
        usage = ch.usage
    for c in ch.choices:
        if c.delta.role:
            roles.append(c.delta.role)
        text += c.delta.content or ""
        finish = c.finish_reason or finish
check("chat stream: same greedy text as non-streamed", text == c0.message.content,
      repr(text) + " vs " + repr(c0.message.content))
check("chat stream: role first, finish_reason last", roles == ["assistant"] and finish == c0.finish_reason)
check("chat stream: include_usage gives the same usage", usage is not None
      and (usage.prompt_tokens, usage.completion_tokens) == (u.prompt_tokens, u.completion_tokens), str(usage))
check("chat stream: several chunks", n_chunks > 3, str(n_chunks))

cmpl = client.completions.create(model=NAME, prompt=PROMPT, max_tokens=16, temperature=0)
full = cmpl.choices[0].text
check("completion: text and usage", len(full) > 0 and cmpl.usage.completion_tokens > 0
      and cmpl.object == "text_completion")
streamed = "".join(c.choices[0].text for c in
                   client.completions.create(model=NAME, prompt=PROMPT, max_tokens=16, temperature=0, stream=True)
                   if c.choices)
check("completion stream: same greedy text", streamed == full, repr(streamed) + " vs " + repr(full))

# ---- stop strings: the text ends before the first match, which is not emitted ----
long = client.completions.create(model=NAME, prompt=PROMPT, max_tokens=40, temperature=0).choices[0].text
k = len(long) // 2
stop = long[k:k + 3]
want = long[:long.find(stop)]
got = client.completions.create(model=NAME, prompt=PROMPT, max_tokens=40, temperature=0, stop=[stop, "qqqzzz"])
check("stop string: text cut before the first match", got.choices[0].text == want,
      f"stop {stop!r}: {got.choices[0].text!r} vs {want!r}")
check("stop string: finish_reason stop", got.choices[0].finish_reason == "stop", got.choices[0].finish_reason)
sgot = "".join(c.choices[0].text for c in client.completions.create(
    model=NAME, prompt=PROMPT, max_tokens=40, temperature=0, stop=stop, stream=True) if c.choices)
check("stop string streamed: the same cut", sgot == want, f"{sgot!r} vs {want!r}")

# ---- logprobs ----
lp = client.chat.completions.create(model=NAME, messages=MSG, max_tokens=8, temperature=0, logprobs=True,
                                    top_logprobs=3)
content = lp.choices[0].logprobs.content
check("logprobs: one entry per generated token", len(content) == lp.usage.completion_tokens,
      f"{len(content)} vs {lp.usage.completion_tokens}")
ok = lambda: len(content) > 0 and all(e.logprob <= 1e-4 and len(e.top_logprobs) == 3 and
         all(a.logprob >= b.logprob - 1e-5 for a, b in zip(e.top_logprobs, e.top_logprobs[1:])) for e in content)
check("logprobs: <= 0, 3 alternatives, most likely first", ok)
check("logprobs: greedy picks the most likely alternative", lambda:
      len(content) > 0 and all(len(e.top_logprobs) > 0 and e.token == e.top_logprobs[0].token and abs(e.logprob - e.top_logprobs[0].logprob) < 1e-3 for e in content))
joined = "".join(e.token for e in content)
check("logprobs: the tokens spell the answer", joined.startswith(lp.choices[0].message.content),
      repr(joined) + " vs " + repr(lp.choices[0].message.content))
clp = client.completions.create(model=NAME, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=2).choices[0].logprobs
check("completion logprobs: tokens, token_logprobs, top_logprobs aligned", lambda:
      len(clp.tokens) == len(clp.token_logprobs) == len(clp.top_logprobs) == 6
      and all(len(t) >= 1 for t in clp.top_logprobs), str(clp))

ech = client.completions.create(model=NAME, prompt=PROMPT, max_tokens=4, temperature=0, logprobs=1, echo=True)
elp = ech.choices[0].logprobs
check("echo + logprobs: the prompt's tokens come first (the first without a log-prob), then the answer",
      lambda: ech.choices[0].text.startswith(PROMPT) and elp.token_logprobs[0] is None
      and len(elp.tokens) == ech.usage.prompt_tokens + ech.usage.completion_tokens
      and all(x is not None and x <= 1e-4 for x in elp.token_logprobs[1:]), str(elp))

# ---- seeds ----
a = client.completions.create(model=NAME, prompt=PROMPT, max_tokens=12, temperature=1.0, seed=7).choices[0].text
b = client.completions.create(model=NAME, prompt=PROMPT, max_tokens=12, temperature=1.0, seed=7).choices[0].text
check("seed: the same seed gives the same sample", a == b, f"{a!r} vs {b!r}")

# ---- errors in OpenAI's shape, through the client's exception types ----
def expect(exc, what, **kw):
    try:
        client.chat.completions.create(**kw)
    except exc as e:
        body = e.body if isinstance(e.body, dict) else {}
        check(what, "message" in body and "type" in body, str(e.body))
        return e
    check(what, False, "no error")
    return None


expect(openai.NotFoundError, "unknown model: 404", model="gpt-9", messages=MSG, max_tokens=4)
expect(openai.BadRequestError, "n=2: 400", model=NAME, messages=MSG, max_tokens=4, n=2)
expect(openai.BadRequestError, "temperature 5: 400", model=NAME, messages=MSG, max_tokens=4, temperature=5)
e = expect(openai.BadRequestError, "context overflow: 400", model=NAME, max_tokens=4,
           messages=[{"role": "user", "content": "word " * 5000}])
check("context overflow: code context_length_exceeded, message with numbers",
      e is not None and e.code == "context_length_exceeded" and any(ch.isdigit() for ch in str(e.message)),
      str(e and e.body))

# ---- API key ----
for key, what in (("wrong-key", "a wrong API key"), ("", "no API key")):
    bad = openai.OpenAI(base_url=URL + "/v1", api_key=key or "x", max_retries=0)
    if not key:
        bad = openai.OpenAI(base_url=URL + "/v1", api_key="x", max_retries=0, default_headers={"Authorization": ""})
    try:
        bad.models.list()
        check(what + " is refused", False, "accepted")
    except openai.AuthenticationError as err:
        check(what + " is refused with 401", err.status_code == 401)
check("/health needs no key", urllib.request.urlopen(URL + "/health", timeout=30).status == 200)

# ---- cancellation: closing the stream cancels the request in the engine ----
before = metric('spk_server_generations_total{finish="cancelled"}')
stream = client.chat.completions.create(model=NAME, messages=MSG, max_tokens=2000, temperature=0, stream=True,
                                        extra_body={"ignore_eos": True})
got = 0
for ch in stream:
    got += 1
    if got == 4:
        break
stream.close()
deadline = time.time() + 60
while time.time() < deadline and metric('spk_server_generations_total{finish="cancelled"}') <= before:
    time.sleep(0.2)
check("closing the stream cancels the request (metrics count it cancelled)",
      metric('spk_server_generations_total{finish="cancelled"}') == before + 1)
while time.time() < deadline and metric("spk_server_requests_in_flight") != 0:
    time.sleep(0.2)
check("nothing left in flight after the cancel", metric("spk_server_requests_in_flight") == 0)
check("the cancelled request stopped early (far fewer than 2000 tokens generated)",
      metric("spk_server_generated_tokens_total") < 1000, str(metric("spk_server_generated_tokens_total")))

sys.exit(1 if failures else 0)
