"""A two-rank pipeline-parallel cluster driven from Python: one spk-worker subprocess on a free
loopback port, the driver in this process."""
import os
import secrets
import subprocess
import time

import pytest

import sparkinfer
from conftest import pick_free_port


def start_pp2(model_path, worker_exe, **cluster_kw):
    """(worker process, cluster, model) of a two-rank PP cluster on loopback."""
    key = secrets.token_hex(32)
    for attempt in range(3):   # the port is free when picked; retry if someone takes it meanwhile
        port = pick_free_port()
        env = dict(os.environ, SPK_CLUSTER_KEY=key)
        for v in ("SPK_RANK", "SPK_WORLD_SIZE", "SPK_COORDINATOR"):
            env.pop(v, None)
        worker = subprocess.Popen([worker_exe, "--coordinator", "127.0.0.1:%d" % port, "--rank", "1",
                                   "--world", "2", "--threads", "1"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            cl = sparkinfer.Cluster(rank=0, world_size=2, coordinator="127.0.0.1:%d" % port, cluster_key=key,
                                    n_threads=1, connect_timeout_ms=20000, **cluster_kw)
            break
        except sparkinfer.IOFailure:
            worker.kill()
            worker.wait()
            worker.stderr.close()
            if attempt == 2:
                raise
    try:
        m = sparkinfer.Model(cl, model_path, pp=2, n_ctx=256, max_seqs=8)
    except BaseException:
        cl.close()
        worker.kill()
        worker.wait()
        worker.stderr.close()
        raise
    return worker, cl, m


@pytest.fixture
def pp2_model(model_path, worker_exe):
    worker, cl, m = start_pp2(model_path, worker_exe)
    try:
        with cl:
            with m:
                yield m
        rc = worker.wait(timeout=20)   # the worker leaves when the driver closes the cluster
        err = worker.stderr.read().decode(errors="replace")
        assert rc == 0, "spk-worker exited with %d: %s" % (rc, err)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        worker.stderr.close()


def test_pp2_cluster_generates_the_greedy_tokens_of_one_rank(model, pp2_model):
    m = pp2_model
    assert m.cluster.world_size == 2 and m.cluster.rank == 0
    s0, s1 = m.rank_stats(0), m.rank_stats(1)
    assert (s0.stage, s1.stage) == (0, 1)
    assert s0.layer_begin == 0 and s0.layer_end == s1.layer_begin and s1.layer_end == 30
    prompts = ["The capital of France is",
               model.chat([{"role": "user", "content": "Name three colours."}]),
               "def fibonacci(n):"]
    kw = dict(max_tokens=12, temperature=0, ignore_eos=True)
    one = [o.tokens for o in model.generate_many(prompts, **kw)]
    # Streaming one request, and several at once through the pipeline.
    g = m.generate(prompts[0], **kw)
    text = "".join(g)
    assert g.tokens == one[0] and text == m.detokenize(g.tokens, skip_special=True)
    many = m.generate_many(prompts, **kw)
    assert [o.tokens for o in many] == one
    # Cancel through the pipeline.
    g = m.generate([1, 2, 3], max_tokens=200, temperature=0, ignore_eos=True)
    next(g)
    g.close()
    assert g.finish == sparkinfer.Finish.CANCELLED


def test_a_lost_worker_raises_peer_lost_and_close_still_returns(model_path, worker_exe):
    worker, cl, m = start_pp2(model_path, worker_exe, peer_timeout_ms=2000, heartbeat_ms=200)
    try:
        g = m.generate([1, 2, 3], max_tokens=10000, temperature=0, ignore_eos=True)
        next(g)
        worker.kill()
        t = time.monotonic()
        with pytest.raises(sparkinfer.PeerLost):
            for _ in g:
                pass
        assert time.monotonic() - t < 15
        t = time.monotonic()
        m.close()
        cl.close()
        assert time.monotonic() - t < 15
    finally:
        worker.kill()
        worker.wait()
        worker.stderr.close()
        cl.close()
