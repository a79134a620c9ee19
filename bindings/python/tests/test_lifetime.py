"""Interpreter exit with objects still open must neither crash nor hang: Model.__del__ and the
atexit hook free what is left while Python is still alive."""
import os
import subprocess
import sys
import textwrap

import pytest

PKG_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(body, model_path):
    code = "import sys; sys.path.insert(0, %r)\nMODEL = %r\n" % (PKG_ROOT, model_path) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("body", [
    # A model, a half-consumed stream, a detokenizer, a log callback, and queued requests left open.
    """
    import sparkinfer
    sparkinfer.set_log_callback(lambda lvl, msg: None, sparkinfer.LogLevel.DEBUG)
    m = sparkinfer.Model(MODEL, n_ctx=256, max_seqs=4, n_threads=2)
    g = m.generate([1, 2, 3], max_tokens=500, temperature=0, ignore_eos=True)
    next(g)
    d = m.detokenizer()
    m.submit([sparkinfer.Request([1, 2, 3], max_tokens=500, ignore_eos=True)] * 6)
    print("ok")
    """,
    # A daemon thread blocked in poll() at exit, and a cycle holding a model.
    """
    import threading, sparkinfer
    cl = sparkinfer.Cluster(n_threads=2)
    m = sparkinfer.Model(cl, MODEL, n_ctx=256, max_seqs=2)
    class Holder: pass
    h = Holder(); h.self = h; h.model = m; h.gen = m.generate("Hello", max_tokens=400, ignore_eos=True)
    def waiter(m=m):
        try:
            m.poll(timeout_ms=-1)
        except sparkinfer.StateError:   # the model was closed at exit under the running poll
            pass
    threading.Thread(target=waiter, daemon=True).start()
    del m, h
    print("ok")
    """,
    # Deleting objects explicitly in an awkward order.
    """
    import gc, sparkinfer
    cl = sparkinfer.Cluster(n_threads=2)
    m = sparkinfer.Model(cl, MODEL, n_ctx=256, max_seqs=2)
    g = m.generate("Hello", max_tokens=400, ignore_eos=True)
    next(g)
    del cl
    del m
    gc.collect()
    print(next(g) is not None and "ok")
    """,
])
def test_exit_with_objects_open_is_clean(model_path, body):
    r = run_script(body, model_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"
    assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr, r.stderr
