"""Issue 11's request features through Python: text prompts, stop strings, log-probs, the new
samplers, random default seeds and the per-request error message."""
import math

import sparkinfer
from sparkinfer import Finish, Request


def test_stop_string_cuts_the_text(model):
    base = model.generate_many([Request("The capital of France is", max_tokens=12, temperature=0,
                                        ignore_eos=True)])[0]
    assert base.text == model.detokenize(base.tokens, skip_special=True)
    stop = base.text[len(base.text) // 2:len(base.text) // 2 + 3]
    cut = base.text.index(stop)
    out = model.generate_many([Request("The capital of France is", max_tokens=12, temperature=0,
                                       ignore_eos=True, stop=["zzzz never", stop])])[0]
    assert out.finish == Finish.STOP
    assert out.text == base.text[:cut]
    assert out.tokens == base.tokens[:len(out.tokens)] and len(out.tokens) < 12
    g = model.generate("The capital of France is", max_tokens=12, temperature=0, ignore_eos=True, stop=stop)
    assert g.read() == base.text[:cut] and g.finish == Finish.STOP


def test_logprobs_of_greedy_tokens(model):
    out = model.generate_many([Request("The capital of France is", max_tokens=6, temperature=0,
                                       logprobs=True, top_logprobs=3)])[0]
    assert len(out.logprobs) == len(out.tokens) == len(out.top_logprobs) == 6
    for tok, lp, top in zip(out.tokens, out.logprobs, out.top_logprobs):
        assert len(top) == 3 and top[0][0] == tok and top[0][1] == lp and lp <= 0
        assert top[0][1] >= top[1][1] >= top[2][1]
        assert sum(math.exp(x) for _, x in top) <= 1 + 1e-4
    plain = model.generate_many([Request("The capital of France is", max_tokens=2, temperature=0)])[0]
    assert plain.logprobs is None and plain.top_logprobs is None


def test_seeds_and_penalties(model):
    kw = dict(max_tokens=16, temperature=1.0, top_k=0, top_p=1.0, ignore_eos=True)
    a, b = model.generate_many([Request("Once upon a time", **kw), Request("Once upon a time", **kw)])
    assert a.tokens != b.tokens   # random seeds by default
    a, b = model.generate_many([Request("Once upon a time", seed=5, **kw), Request("Once upon a time", seed=5, **kw)])
    assert a.tokens == b.tokens

    def repeats(toks):
        return len(toks) - len(set(toks))

    p = "I like cats. I like dogs. I like cats. I like"
    base = model.generate_many([Request(p, max_tokens=32, temperature=0, ignore_eos=True)])[0]
    pen = model.generate_many([Request(p, max_tokens=32, temperature=0, ignore_eos=True, frequency_penalty=2.0,
                                       min_p=0.05, repeat_penalty=1.1, repeat_last_n=16)])[0]
    assert repeats(pen.tokens) < repeats(base.tokens)
    for bad in (dict(min_p=2.0), dict(frequency_penalty=3.0), dict(top_logprobs=21), dict(stop=["a\0b"]),
                dict(stop=["x"] * 17), dict(repeat_last_n=-2)):
        try:
            model.generate_many([Request(p, max_tokens=2, **bad)])
        except sparkinfer.InvalidArgument:
            continue
        raise AssertionError("accepted %r" % bad)


def test_error_message_reaches_python(model):
    prompt = "a " * 600
    out = model.generate_many([Request(prompt, max_tokens=2)])[0]
    assert out.finish == Finish.ERROR and out.status == sparkinfer.Status.TOO_LONG
    assert "the context holds 512" in out.message and "prompt is" in out.message
    e = out.error()
    assert isinstance(e, sparkinfer.TooLong) and "the context holds 512" in str(e)
    rid = model.submit(Request(prompt, max_tokens=2))[0]
    evs = []
    while not evs or not evs[-1].finished:
        evs += model.poll(timeout_ms=30000)
    assert evs[-1].request_id == rid and "the context holds 512" in evs[-1].message
    assert evs[-1].n_prompt > 512


def test_close_without_wait_from_another_thread_ends_the_consumer(model):
    import threading
    g = model.generate("Count to one thousand:", max_tokens=400, temperature=0, ignore_eos=True)
    got = []
    t = threading.Thread(target=lambda: got.extend(g))
    t.start()
    while not got:
        t.join(0.01)
    g.close(wait=False)
    t.join(10)
    assert not t.is_alive()   # the consuming thread was not left blocked
    assert len(g.tokens) < 400


def test_prompt_logprobs(model):
    ids = model.tokenize("The capital of France is")
    out = model.generate_many([Request(ids, max_tokens=2, temperature=0, prompt_logprobs=True, top_logprobs=2)])[0]
    assert [t for t, _, _ in out.prompt_logprobs] == ids and len(out.tokens) == 2
    assert out.prompt_logprobs[0][1] is None and all(lp <= 0 for _, lp, _ in out.prompt_logprobs[1:])
    alone = model.generate_many([Request(ids[:3], max_tokens=1, temperature=0, top_logprobs=2)])[0]
    assert out.prompt_logprobs[3][2][0][0] == alone.top_logprobs[0][0][0]
    assert abs(out.prompt_logprobs[3][2][0][1] - alone.top_logprobs[0][0][1]) < 1e-3
