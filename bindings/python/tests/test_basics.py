"""Version, build info, the C struct mirror, status codes and exception classes, library loading.
None of these need the model file."""
import ctypes
import os
import re
import shutil
import subprocess
import sys
import tempfile

import pytest

import sparkinfer
from sparkinfer import _lib as C

HERE = os.path.dirname(os.path.abspath(__file__))
PKG_ROOT = os.path.dirname(HERE)
SOURCE = os.environ.get("SPK_SOURCE_DIR") or os.path.dirname(os.path.dirname(PKG_ROOT))
HEADER = os.path.join(SOURCE, "include", "sparkinfer", "sparkinfer.h")


def header_text():
    if not os.path.isfile(HEADER):
        pytest.skip("public header not found at %s (set SPK_SOURCE_DIR)" % HEADER)
    with open(HEADER) as f:
        return f.read()


def test_version_matches_header_and_pyproject():
    text = header_text()
    vs = re.search(r'#define SPK_VERSION_STRING "([^"]+)"', text).group(1)
    assert sparkinfer.version() == vs
    major, minor, patch = (int(x) for x in vs.split("."))
    assert sparkinfer.version_number() == major * 10000 + minor * 100 + patch
    assert sparkinfer.__version__ == vs
    with open(os.path.join(PKG_ROOT, "pyproject.toml")) as f:
        assert re.search(r'^version = "%s"$' % re.escape(vs), f.read(), re.M)


def test_build_info_lists_cpu_backend_and_tcp_transport():
    info = sparkinfer.build_info()
    assert info["version"] == sparkinfer.version()
    assert "cpu" in info["backends"].split(",")
    assert "tcp" in info["transports"].split(",")
    assert "simd" in info


def test_init_functions_fill_the_mirrored_structs_at_the_right_offsets():
    # The library's init writes its own sizeof and its defaults; reading them back through
    # the ctypes mirror proves size and field offsets agree.
    raw = (ctypes.c_char * 4096)()
    for cls, init in ((C.spk_request, "spk_request_init"), (C.spk_model_config, "spk_model_config_init"),
                      (C.spk_cluster_config, "spk_cluster_config_init")):
        ctypes.memset(raw, 0xAB, 4096)
        assert getattr(C.load(), init)(ctypes.cast(raw, ctypes.POINTER(cls))) == 0
        assert ctypes.c_size_t.from_buffer(raw).value == ctypes.sizeof(cls), cls.__name__
    r, st = C.init_struct(sparkinfer._base._lib, C.spk_request, "spk_request_init")
    assert st == 0 and r.struct_size == ctypes.sizeof(C.spk_request)
    assert (r.max_tokens, r.top_k, r.n_prompt, r.n_stop, r.ignore_eos, r.seed) == (128, 40, 0, 0, 0, C.SEED_RANDOM)
    assert (r.repeat_penalty, r.repeat_last_n, r.min_p, r.logprobs, r.private_events) == (1.0, 64, 0.0, 0, 0)
    assert r.temperature == pytest.approx(0.8) and r.top_p == pytest.approx(0.95)
    c, _ = C.init_struct(sparkinfer._base._lib, C.spk_cluster_config, "spk_cluster_config_init")
    assert (c.rank, c.world_size, c.connect_timeout_ms, c.peer_timeout_ms, c.heartbeat_ms) == (-1, 0, 30000, 10000, 1000)
    assert c.transport == b"auto"
    m, _ = C.init_struct(sparkinfer._base._lib, C.spk_model_config, "spk_model_config_init")
    assert (m.pp, m.tp, m.n_ctx, m.max_seqs, m.n_threads, m.queue_capacity, m.kv_cache_bytes) == (0,) * 7
    assert ctypes.sizeof(C.spk_event) == 40


def test_struct_mirror_matches_a_c_compiler():
    """Every field of every mirrored struct has the C compiler's offset and size (catches the
    header growing without the bindings following)."""
    text = header_text()
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        pytest.skip("no C compiler to compare the ctypes layout with")
    structs = [C.spk_cluster_config, C.spk_model_config, C.spk_model_info, C.spk_rank_stats,
               C.spk_model_stats, C.spk_chat_message, C.spk_chat_options, C.spk_request, C.spk_event,
               C.spk_token_logprob,
               C.spk_output]
    lines = ["#include <stddef.h>", "#include <stdio.h>", "#include <sparkinfer/sparkinfer.h>",
             "int main(void) {"]
    expect = []
    for s in structs:
        lines.append('printf("%%s %%zu\\n", "%s", sizeof(%s));' % (s.__name__, s.__name__))
        expect.append("%s %d" % (s.__name__, ctypes.sizeof(s)))
        for name, _t in s._fields_:
            lines.append('printf("%%s.%%s %%zu %%zu\\n", "%s", "%s", offsetof(%s, %s), sizeof(((%s *)0)->%s));'
                         % (s.__name__, name, s.__name__, name, s.__name__, name))
            f = getattr(s, name)
            expect.append("%s.%s %d %d" % (s.__name__, name, f.offset, f.size))
    # Every struct of the header is mirrored.
    declared = set(re.findall(r"typedef struct (spk_\w+) \{", text))
    assert declared <= {s.__name__ for s in structs}, declared - {s.__name__ for s in structs}
    lines.append("return 0; }")
    with tempfile.TemporaryDirectory() as d:
        src, exe = os.path.join(d, "layout.c"), os.path.join(d, "layout")
        with open(src, "w") as f:
            f.write("\n".join(lines))
        subprocess.run([cc, "-std=c11", "-I", os.path.join(SOURCE, "include"), src, "-o", exe], check=True)
        got = subprocess.run([exe], check=True, capture_output=True, text=True).stdout.split("\n")
    assert [g for g in got if g] == expect


def test_every_header_function_has_a_prototype():
    text = header_text()
    funcs = set(re.findall(r"SPK_API [^;(]*?\b(spk_\w+)\s*\(", text))
    assert funcs and funcs <= set(C._PROTOTYPES), funcs - set(C._PROTOTYPES)


def test_status_codes_and_names_match_the_library():
    text = header_text()
    codes = dict((m.group(1), int(m.group(2))) for m in re.finditer(r"SPK_ERR_(\w+) = (\d+)", text))
    for name, num in codes.items():
        assert sparkinfer.Status[name] == num
    assert len(sparkinfer.Status) == len(codes) + 1
    assert sparkinfer.status_str(sparkinfer.Status.INVALID_ARG) == "invalid argument"


@pytest.mark.parametrize("status,cls,builtin", [
    (sparkinfer.Status.INVALID_ARG, sparkinfer.InvalidArgument, ValueError),
    (sparkinfer.Status.BUSY, sparkinfer.Busy, None),
    (sparkinfer.Status.PEER_LOST, sparkinfer.PeerLost, None),
    (sparkinfer.Status.UNSUPPORTED, sparkinfer.Unsupported, None),
    (sparkinfer.Status.NOT_FOUND, sparkinfer.NotFound, LookupError),
    (sparkinfer.Status.TOO_LONG, sparkinfer.TooLong, None),
    (sparkinfer.Status.IO, sparkinfer.IOFailure, None),
    (sparkinfer.Status.NOMEM, sparkinfer.NoMemory, MemoryError),
])
def test_each_status_has_its_exception_class(status, cls, builtin):
    assert sparkinfer.error_class(status) is cls
    e = sparkinfer.errors.make_error(status, "detail", "name", "spk_x")
    assert isinstance(e, cls) and isinstance(e, sparkinfer.SparkinferError)
    if builtin:
        assert isinstance(e, builtin)
    assert e.status == status and e.message == "detail" and "detail" in str(e) and "spk_x" in str(e)
    assert sparkinfer.error_class(999) is sparkinfer.SparkinferError


def test_errors_from_the_library_carry_status_name_and_detail():
    with pytest.raises(sparkinfer.InvalidArgument) as ei:
        sparkinfer.Cluster(rank=5, world_size=2, connect_timeout_ms=100)   # rank >= world size
    e = ei.value
    assert e.status == sparkinfer.Status.INVALID_ARG
    assert e.status_str == "invalid argument"
    assert e.message   # spk_last_error's detail
    assert e.function == "spk_cluster_open"


def test_serve_on_rank_zero_is_a_state_error():
    with sparkinfer.Cluster() as cl:
        assert (cl.rank, cl.world_size) == (0, 1)
        with pytest.raises(sparkinfer.StateError):
            cl.serve()
    assert cl.closed
    with pytest.raises(sparkinfer.StateError):
        cl.serve()
    cl.close()   # idempotent


def test_values_ctypes_would_truncate_are_refused():
    with pytest.raises(sparkinfer.InvalidArgument, match="n_threads"):
        sparkinfer.Cluster(n_threads=1 << 40)


def _import_with(env_lib):
    env = dict(os.environ, SPARKINFER_LIB=env_lib, PYTHONPATH=PKG_ROOT)
    return subprocess.run([sys.executable, "-c", "import sparkinfer"], env=env, capture_output=True, text=True)


def test_import_error_names_what_it_tried():
    r = _import_with("/nonexistent/libsparkinfer.so.0")
    assert r.returncode != 0
    assert "ImportError" in r.stderr and "SPARKINFER_LIB=/nonexistent/libsparkinfer.so.0" in r.stderr
