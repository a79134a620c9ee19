"""Shared fixtures. The library comes from $SPARKINFER_LIB (tests/sh/python_bindings.sh sets it
to the build's libsparkinfer.so.0); the model from $SPK_TEST_MODEL or the default cache path,
and tests needing it skip with the reason when it is absent."""
import os
import shutil
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))   # bindings/python, so `import sparkinfer` works in place

import sparkinfer  # noqa: E402

DEFAULT_MODEL = os.path.join(os.environ.get("SPK_CACHE", os.path.expanduser("~/.cache/sparkinfer")),
                             "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
THREADS = int(os.environ.get("SPK_TEST_THREADS", "2"))


def model_path_or_none():
    p = os.environ.get("SPK_TEST_MODEL") or DEFAULT_MODEL
    return p if os.path.isfile(p) else None


@pytest.fixture(scope="session")
def model_path():
    p = model_path_or_none()
    if p is None:
        pytest.skip("model file absent: set SPK_TEST_MODEL or run `make model` (looked for %s)"
                    % (os.environ.get("SPK_TEST_MODEL") or DEFAULT_MODEL))
    return p


@pytest.fixture(scope="session")
def model(model_path):
    """One model shared by the tests that only read it or run short requests: 64 sequence
    slots so 64 requests really run at once, a small context to keep the KV cache small."""
    m = sparkinfer.Model(path=model_path, n_ctx=512, max_seqs=64, n_threads=THREADS)
    yield m
    m.close()


@pytest.fixture(scope="session")
def build_dir():
    """The build directory: the folder of $SPARKINFER_LIB."""
    lib = os.environ.get("SPARKINFER_LIB")
    if not lib:
        return None
    return os.path.dirname(os.path.abspath(lib))


@pytest.fixture(scope="session")
def worker_exe(build_dir):
    cands = [os.environ.get("SPK_WORKER")]
    if build_dir:
        cands.append(os.path.join(build_dir, "examples", "spk-worker"))
    cands.append(shutil.which("spk-worker"))
    for c in cands:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    pytest.skip("spk-worker not found (set SPK_WORKER or SPARKINFER_LIB to a build's library)")


def pick_free_port():
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def free_port():
    return pick_free_port()
