"""Every failure raises the exception class of its status; per-request errors stay per request."""
import time

import pytest

import sparkinfer
from conftest import THREADS


def test_missing_model_file_is_an_io_error(tmp_path):
    path = str(tmp_path / "no-such-model.gguf")
    with pytest.raises(sparkinfer.IOFailure) as ei:
        sparkinfer.Model(path=path)
    assert ei.value.status == sparkinfer.Status.IO
    assert path in ei.value.message
    assert ei.value.function == "spk_model_load"


def test_a_file_that_is_not_gguf_is_a_format_error(tmp_path):
    p = tmp_path / "junk.gguf"
    p.write_bytes(b"this is not a GGUF file" * 100)
    with pytest.raises(sparkinfer.FormatError):
        sparkinfer.Model(path=str(p))


def test_bad_model_config_values(model_path):
    with pytest.raises(sparkinfer.InvalidArgument):
        sparkinfer.Model(path=model_path, max_seqs=-1)
    with pytest.raises(sparkinfer.InvalidArgument):
        sparkinfer.Model(path=model_path, pp=2)          # one rank cannot hold two stages
    with pytest.raises(sparkinfer.InvalidArgument):
        sparkinfer.Model(path=model_path, n_ctx=1 << 40)  # does not fit a C int
    with pytest.raises(sparkinfer.InvalidArgument):
        sparkinfer.Model(path=model_path, backend="gpu")
    with pytest.raises(sparkinfer.InvalidArgument):
        sparkinfer.Model(path=model_path, backend="cpu", device=-1)


def test_backends(model_path):
    """The CPU backend by name; CUDA where no GPU runs it is Unsupported, saying what is missing;
    auto falls back to the CPU."""
    with sparkinfer.Model(path=model_path, backend="cpu", n_threads=THREADS, max_seqs=1) as m:
        assert len(m.generate_many([[1, 2, 3]], max_tokens=2, temperature=0)[0].tokens) == 2
    if "cuda" in sparkinfer.build_info():
        pytest.skip("a GPU runs the CUDA backend here")
    with pytest.raises(sparkinfer.Unsupported) as ei:
        sparkinfer.Model(path=model_path, backend="cuda")
    assert "cuda backend" in ei.value.message
    with sparkinfer.Model(path=model_path, backend="auto", n_threads=THREADS, max_seqs=1) as m:
        assert len(m.generate_many([[1, 2, 3]], max_tokens=2, temperature=0)[0].tokens) == 2


@pytest.mark.parametrize("fields,what", [
    (dict(max_tokens=0), "max_tokens"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_p=0.0), "top_p"),
    (dict(temperature=-1.0), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(top_k=-3), "top_k"),
    (dict(seed=-1), "seed"),
    (dict(max_tokens=1 << 33), "max_tokens"),
    (dict(prompt=[]), "prompt"),
    (dict(prompt=[1, 49152 + 7]), "vocabulary"),
    (dict(prompt=[-5]), "vocabulary"),
    (dict(stop_tokens=[1 << 35]), "stop_tokens"),
])
def test_bad_request_values_are_invalid_arguments(model, fields, what):
    req = dict(prompt=[1, 2, 3], max_tokens=4, temperature=0)
    req.update(fields)
    with pytest.raises(sparkinfer.InvalidArgument) as ei:
        model.submit(sparkinfer.Request(**req))
    assert ei.value.status == sparkinfer.Status.INVALID_ARG
    assert ei.value.message


def test_submit_is_all_or_nothing(model):
    good = sparkinfer.Request([1, 2, 3], max_tokens=2, temperature=0)
    bad = sparkinfer.Request([1, 2, 3], max_tokens=0)
    with pytest.raises(sparkinfer.InvalidArgument) as ei:
        model.submit([good, good, bad])
    assert "request 2" in ei.value.message
    assert model.poll(timeout_ms=300) == []   # the good ones were not queued either


def test_full_queue_is_busy_and_the_engine_keeps_serving(model_path):
    with sparkinfer.Model(path=model_path, n_ctx=128, max_seqs=1, queue_capacity=2, n_threads=THREADS) as m:
        reqs = [sparkinfer.Request([1, 2, 3], max_tokens=2, temperature=0, ignore_eos=True)] * 3
        with pytest.raises(sparkinfer.Busy) as ei:
            m.submit(reqs)
        assert ei.value.status == sparkinfer.Status.BUSY and "queue" in ei.value.message
        ids = m.submit(reqs[:2])
        done = {}
        while len(done) < 2:
            for e in m.poll(timeout_ms=5000):
                if e.finished:
                    done[e.request_id] = e.finish
        assert done == {i: sparkinfer.Finish.LENGTH for i in ids}
        # generate_many submits as room frees up instead of failing.
        outs = m.generate_many([[1, 2, 3]] * 5, max_tokens=2, temperature=0, ignore_eos=True)
        assert [len(o.tokens) for o in outs] == [2] * 5


def test_unknown_or_finished_cancel_is_not_found(model):
    with pytest.raises(sparkinfer.NotFound) as ei:
        model.cancel(987654321)
    assert ei.value.status == sparkinfer.Status.NOT_FOUND
    with pytest.raises(sparkinfer.InvalidArgument):
        model.cancel(-1)
    g = model.generate([1, 2, 3], max_tokens=2, temperature=0, ignore_eos=True)
    g.read()
    with pytest.raises(sparkinfer.NotFound):
        model.cancel(g.request_id)


def test_prompt_longer_than_the_context_is_that_requests_error(model):
    n_ctx = model.info.n_ctx
    long = sparkinfer.Request([1] + [28] * (n_ctx + 10), max_tokens=4, temperature=0)
    short = sparkinfer.Request([1, 2, 3], max_tokens=4, temperature=0, ignore_eos=True)
    outs = model.generate_many([long, short])
    assert outs[0].finish == sparkinfer.Finish.ERROR and outs[0].status == sparkinfer.Status.TOO_LONG
    assert isinstance(outs[0].error(), sparkinfer.TooLong)
    assert outs[1].finish == sparkinfer.Finish.LENGTH and len(outs[1].tokens) == 4
    with pytest.raises(sparkinfer.TooLong):
        model.generate(long).read()


def test_calls_on_a_closed_model_are_state_errors(model_path):
    m = sparkinfer.Model(path=model_path, n_ctx=64, max_seqs=1, n_threads=THREADS)
    m.close()
    assert m.closed
    for call in (lambda: m.tokenize("x"), lambda: m.submit([1, 2]), lambda: m.poll(0),
                 lambda: m.stats(), lambda: m.cancel(1)):
        with pytest.raises(sparkinfer.StateError):
            call()
    m.close()   # idempotent


def test_closing_the_cluster_closes_its_models_first(model_path):
    cl = sparkinfer.Cluster(n_threads=THREADS)
    m = sparkinfer.Model(cl, model_path, n_ctx=64, max_seqs=1)
    d = m.detokenizer()
    cl.close()
    assert m.closed and cl.closed
    with pytest.raises(sparkinfer.StateError):
        m.tokenize("x")
    with pytest.raises(sparkinfer.StateError):
        d.push(5)
    m.close()
    d.close()
    with pytest.raises(sparkinfer.StateError):
        sparkinfer.Model(cl, model_path)


def test_cluster_without_peers_times_out(free_port):
    t = time.monotonic()
    with pytest.raises(sparkinfer.Timeout):
        sparkinfer.Cluster(rank=0, world_size=2, coordinator="127.0.0.1:%d" % free_port,
                           cluster_key="k" * 32, connect_timeout_ms=300)
    assert time.monotonic() - t < 10
