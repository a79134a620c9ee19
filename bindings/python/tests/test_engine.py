"""Serving through Python: concurrency, cancellation, streaming, seeds, stop tokens, threads."""
import random
import threading
import time

import pytest

import sparkinfer
from sparkinfer import Finish, Request

WORDS = ("the quick brown fox jumps over a lazy dog while seven wizards quietly box jaguars near "
         "big rivers under the pale winter moon and everyone sings").split()


def make_prompts(n, seed):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 60))) for _ in range(n)]


def wait_finish(model, rid, timeout_s=30):
    """Poll until `rid` finishes; returns (tokens, positions, final event)."""
    toks, pos = [], []
    last_ns = 0
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for e in model.poll(timeout_ms=1000):
            assert e.request_id == rid
            # the engine's time stamp, on Python's monotonic clock, in order and not in the future
            assert last_ns <= e.time_ns <= time.monotonic_ns()
            last_ns = e.time_ns
            if e.token is not None:
                toks.append(e.token)
                pos.append(e.position)
            if e.finished:
                return toks, pos, e
    raise AssertionError("request %d did not finish in %d s" % (rid, timeout_s))


def test_64_concurrent_mixed_requests_match_each_request_run_alone(model):
    """An issue-5 check: 64 requests of mixed prompt lengths (1-60 words) and max_tokens (8-16)
    run at once; each produces exactly max_tokens tokens, and with temperature 0 each equals the
    same request run alone. Sixteen distinct prompts, four requests each with different
    max_tokens: a greedy run alone of 16 tokens gives every shorter request's expected tokens
    (its prefix)."""
    prompts = make_prompts(16, seed=5)
    reqs = [Request(prompts[i % 16], max_tokens=8 + (i * 5) % 9, temperature=0, ignore_eos=True)
            for i in range(64)]
    before = model.stats()
    t = time.monotonic()
    outs = model.generate_many(reqs)
    t_batch = time.monotonic() - t
    assert len(outs) == 64 and len({o.request_id for o in outs}) == 64
    for r, o in zip(reqs, outs):
        assert o.finish == Finish.LENGTH and o.status == sparkinfer.Status.OK
        assert len(o.tokens) == r.max_tokens
        assert o.text == model.detokenize(o.tokens, skip_special=True)
    after = model.stats()
    assert after.n_generated - before.n_generated >= sum(r.max_tokens for r in reqs)
    assert after.kv_blocks_free == after.kv_blocks_total and after.n_running == 0
    t = time.monotonic()
    alone = {}
    for i, p in enumerate(prompts):
        alone[i] = model.generate_many([Request(p, max_tokens=16, temperature=0, ignore_eos=True)])[0].tokens
    t_alone = time.monotonic() - t
    mismatched = [i for i, (r, o) in enumerate(zip(reqs, outs)) if o.tokens != alone[i % 16][:r.max_tokens]]
    assert not mismatched, "batched output differs from the request run alone for %s" % mismatched
    print("64 requests, %d tokens: %.2f s batched; 16 runs alone (%d tokens): %.2f s"
          % (sum(r.max_tokens for r in reqs), t_batch, 16 * 16, t_alone))


def test_submit_and_poll_report_positions_and_the_finish_event(model):
    prompt = model.tokenize("Once upon a time")
    [rid] = model.submit(Request(prompt, max_tokens=6, temperature=0, ignore_eos=True))
    toks, pos, last = wait_finish(model, rid)
    assert len(toks) == 6 and last.finish == Finish.LENGTH and last.token is not None
    assert pos == list(range(len(prompt), len(prompt) + 6))
    g = model.generate(prompt, max_tokens=6, temperature=0, ignore_eos=True)
    g.read()
    assert g.tokens == toks


def test_cancel_in_the_middle_gives_a_cancelled_finish_and_frees_the_blocks(model):
    total = model.stats().kv_blocks_total
    [rid] = model.submit(Request([1, 2, 3, 4], max_tokens=400, temperature=0, ignore_eos=True))
    toks = []
    while len(toks) < 3:
        for e in model.poll(timeout_ms=5000):
            assert not e.finished
            toks.append(e.token)
    assert model.stats().kv_blocks_free < total   # the running request holds blocks
    model.cancel(rid)
    more, _pos, last = wait_finish(model, rid)
    assert last.finish == Finish.CANCELLED and last.status == sparkinfer.Status.OK
    assert model.stats().kv_blocks_free == total  # freed by the time the cancelled event comes
    assert 3 + len(more) < 400
    with pytest.raises(sparkinfer.NotFound):
        model.cancel(rid)


def test_cancelling_a_stream_ends_it_with_cancelled(model):
    g = model.generate([1, 2, 3, 4], max_tokens=400, temperature=0, ignore_eos=True)
    next(g)
    model.cancel(g.request_id)
    rest = list(g)
    assert g.finish == Finish.CANCELLED and len(g.tokens) < 400
    assert "".join(rest) == g.text[len(g.text) - len("".join(rest)):]


def test_generate_streams_text_equal_to_detokenize_of_its_tokens(model):
    prompt = model.chat([{"role": "user", "content": "Write a short poem about the sea, with emoji."}])
    for skip in (True, False):
        g = model.generate(prompt, max_tokens=48, temperature=0, skip_special=skip)
        pieces = list(g)
        assert g.finish in (Finish.LENGTH, Finish.STOP)
        assert len(pieces) > 1 and all(isinstance(p, str) and p for p in pieces)
        assert "".join(pieces) == g.text == model.detokenize(g.tokens, skip_special=skip)
        assert "\ufffd" not in g.text


def test_streaming_detokenizer_holds_back_split_characters(model):
    text = "Emoji 😀👍🏽 and 日本語 and é"
    ids = model.tokenize(text, add_special=False)
    with model.detokenizer() as d:
        pieces = [d.push(t) for t in ids]
        pieces.append(d.flush())
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert any(p == "" for p in pieces)   # some token ended inside a character
    with model.detokenizer() as d:
        with pytest.raises(sparkinfer.InvalidArgument):
            d.push(model.info.n_vocab)


def test_leaving_a_stream_early_cancels_the_request(model):
    total = model.stats().kv_blocks_total
    with model.generate([1, 2, 3], max_tokens=400, temperature=0, ignore_eos=True) as g:
        for i, _piece in enumerate(g):
            if i == 2:
                break
    assert g.finish == Finish.CANCELLED
    assert model.stats().kv_blocks_free == total
    with pytest.raises(sparkinfer.NotFound):
        model.cancel(g.request_id)
    assert model.poll(timeout_ms=200) == []   # its late events were not handed to poll()


def test_same_seed_same_tokens_alone_or_batched(model):
    prompt = "Tell me a story about a dragon"
    kw = dict(max_tokens=12, temperature=0.9, top_k=40, top_p=0.95, ignore_eos=True)
    a = model.generate_many([Request(prompt, seed=1234, **kw)])[0].tokens
    mixed = model.generate_many([Request(p, seed=i, **kw) for i, p in enumerate(make_prompts(7, 3))]
                                + [Request(prompt, seed=1234, **kw), Request(prompt, seed=99, **kw)])
    assert mixed[7].tokens == a
    assert mixed[8].tokens != a   # another seed samples differently (12 tokens at T=0.9)


def test_stop_tokens_end_the_request_with_stop(model):
    prompt = "The capital of France is"
    ref = model.generate_many([Request(prompt, max_tokens=10, temperature=0, ignore_eos=True)])[0].tokens
    k = next(i for i in range(2, 10) if ref[i] not in ref[:i])
    out = model.generate_many([Request(prompt, max_tokens=10, temperature=0, ignore_eos=True,
                                       stop_tokens=[ref[k]])])[0]
    assert out.finish == Finish.STOP and out.tokens == ref[:k + 1]


def test_streams_in_several_threads_get_their_own_tokens(model):
    prompts = make_prompts(6, seed=11)
    expect = [o.tokens for o in model.generate_many(prompts, max_tokens=10, temperature=0, ignore_eos=True)]
    got = [None] * len(prompts)
    errors = []

    def run(i):
        try:
            g = model.generate(prompts[i], max_tokens=10, temperature=0, ignore_eos=True)
            text = "".join(g)
            assert text == model.detokenize(g.tokens, skip_special=True)
            got[i] = g.tokens
        except BaseException as e:   # reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert got == expect


def test_poll_times_out_with_an_empty_list(model):
    t = time.monotonic()
    assert model.poll(timeout_ms=0) == []
    assert model.poll(timeout_ms=150) == []
    assert 0.14 < time.monotonic() - t < 2.0


def test_close_while_another_thread_streams(model_path):
    m = sparkinfer.Model(path=model_path, n_ctx=512, max_seqs=2, n_threads=2)
    g = m.generate([1, 2, 3], max_tokens=400, temperature=0, ignore_eos=True)
    next(g)
    seen = []

    def consume():
        try:
            for _ in g:
                pass
            seen.append("finished")
        except sparkinfer.StateError:
            seen.append("state")

    t = threading.Thread(target=consume)
    t.start()
    time.sleep(0.1)
    m.close()
    t.join(10)
    assert not t.is_alive() and seen == ["state"]
