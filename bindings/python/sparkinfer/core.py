"""The Pythonic layer over libsparkinfer: Cluster, Model, Request, Event, Generation.

Thread rules (the C library's, plus what these bindings add):

* A :class:`Model`'s methods may be called from any thread at the same time (the C calls
  tokenize/detokenize/chat/submit/poll/cancel/info/rank_stats are thread-safe). ``close()``
  waits for calls running in other threads to return before it frees the model, so closing
  never frees memory under a running call; calls made after it raise :class:`StateError`.
* Events are routed: the events of a request started by :meth:`Model.generate` or
  :meth:`Model.generate_many` go only to that call; :meth:`Model.poll` returns the events of
  requests started with :meth:`Model.submit`. So streaming in several threads at once is safe.
* A :class:`Generation` (the iterator returned by ``generate``) is consumed by one thread at a
  time.
* :class:`Cluster` methods other than ``close`` may be called from any thread; ``close`` first
  closes the models loaded on it.
* Long waits (``poll``, ``generate``) wait in slices of at most 100 ms, so Ctrl-C works and a
  model closed in another thread ends them with :class:`StateError`.
"""

import atexit
import collections
import ctypes
import dataclasses
import enum
import math
import os
import threading
import time
import weakref
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

from . import _lib as _c
from .errors import SparkinferError, StateError, Status, make_error

_lib = _c.load()

_INT_MIN, _INT_MAX = -(1 << 31), (1 << 31) - 1
_SLICE_MS = 100          # longest single wait inside the library
_EVBUF = 256             # events fetched per spk_poll


class Finish(enum.IntEnum):
    """Why a request ended (spk_finish)."""
    NONE = 0
    LENGTH = 1
    STOP = 2
    CANCELLED = 3
    ERROR = 4


class LogLevel(enum.IntEnum):
    """spk_log_level."""
    DEBUG = 0
    INFO = 1
    WARN = 2
    ERROR = 3
    NONE = 4


# ------------------------------------------------------------------------------------------
# Errors and small helpers
# ------------------------------------------------------------------------------------------

def _error(function, status):
    """The exception for a failed call; reads spk_last_error first (it is per-thread and only
    valid until the next library call on this thread)."""
    detail = _lib.spk_last_error()
    name = _lib.spk_status_str(status)
    return make_error(status, detail.decode("utf-8", "replace") if detail else "",
                      name.decode("utf-8", "replace") if name else None, function)


def _check(function, status):
    if status != 0:
        raise _error(function, status)


def _arg_error(function, message):
    return make_error(Status.INVALID_ARG, message, None, function)


def _c_int(function, name, value, lo=_INT_MIN, hi=_INT_MAX):
    """A Python int checked to fit a C int in [lo, hi] (ctypes would silently truncate)."""
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            value = int(value.__index__())
        except (AttributeError, TypeError):
            raise _arg_error(function, "%s must be an integer, got %r" % (name, value)) from None
    if not lo <= value <= hi:
        raise _arg_error(function, "%s = %d out of range [%d, %d]" % (name, value, lo, hi))
    return value


def _tokens_array(function, name, tokens):
    """A ctypes int32 array of `tokens` (each checked to fit int32)."""
    if isinstance(tokens, (str, bytes)):
        raise _arg_error(function, "%s must be a sequence of token ids, not %s" % (name, type(tokens).__name__))
    vals = list(tokens)
    for i, t in enumerate(vals):
        vals[i] = _c_int(function, "%s[%d]" % (name, i), t)
    arr = (ctypes.c_int32 * max(1, len(vals)))(*vals)
    return arr, len(vals)


def _text_bytes(function, name, text):
    if isinstance(text, str):
        return text.encode("utf-8")
    if isinstance(text, (bytes, bytearray, memoryview)):
        return bytes(text)
    raise _arg_error(function, "%s must be str or bytes, not %s" % (name, type(text).__name__))


def _cstr(function, name, value):
    """Encode an optional string for a `const char *` field; NUL bytes are refused."""
    if value is None:
        return None
    b = os.fsencode(value) if isinstance(value, os.PathLike) else _text_bytes(function, name, value)
    if b"\0" in b:
        raise _arg_error(function, "%s contains a NUL byte" % name)
    return b


# ------------------------------------------------------------------------------------------
# Version, build info, logging
# ------------------------------------------------------------------------------------------

def version() -> str:
    """Version string of the loaded library ("0.1.0"). Thread-safe."""
    return _lib.spk_version_string().decode()


def version_number() -> int:
    """major*10000 + minor*100 + patch of the loaded library. Thread-safe."""
    return int(_lib.spk_version_number())


def build_info() -> Dict[str, str]:
    """The library's build information as a dict, e.g. {"version": "0.1.0", "backends": "cpu",
    "transports": "tcp", "simd": "avx2"} (list-like values stay comma-separated strings)."""
    raw = _lib.spk_build_info().decode("utf-8", "replace")
    out = {}
    for item in raw.split(";"):
        if not item:
            continue
        key, _, value = item.partition("=")
        out[key.strip()] = value.strip()
    return out


def status_str(status: int) -> str:
    """The library's static name of a status code."""
    return _lib.spk_status_str(int(status)).decode("utf-8", "replace")


_log_lock = threading.Lock()
_log_keep = None   # the live C callback object; must outlive its use by the library


def set_log_callback(fn, min_level: int = LogLevel.WARN) -> None:
    """Route library log messages of at least `min_level` to ``fn(level: LogLevel, msg: str)``;
    ``fn=None`` restores the default sink (stderr, WARN and above).

    The callback runs on library threads (the engine thread, cluster threads), so it must be
    thread-safe and quick; exceptions it raises are swallowed. The bindings restore the default
    sink at interpreter exit, before Python is torn down.
    """
    global _log_keep
    level = _c_int("set_log_callback", "min_level", int(min_level), 0, 4)
    with _log_lock:
        if fn is None:
            _lib.spk_set_log_callback(_c.LOG_FN(), None, level)
            _log_keep = None
            return

        def trampoline(lvl, msg, _user):
            try:
                try:
                    lv = LogLevel(lvl)
                except ValueError:
                    lv = lvl
                fn(lv, msg.decode("utf-8", "replace") if msg else "")
            except BaseException:   # never let an exception unwind into C
                pass

        cb = _c.LOG_FN(trampoline)
        _lib.spk_set_log_callback(cb, None, level)
        _log_keep = cb


# ------------------------------------------------------------------------------------------
# Handles: a C pointer with a use count, so close never frees under a running call
# ------------------------------------------------------------------------------------------

class _Handle:
    """A C handle shared by its Python owner and whoever must free it first (a cluster frees
    its models' handles before itself). No __del__: owners decide when it is freed."""

    __slots__ = ("ptr", "what", "_free_fn", "_cv", "_users", "_closing", "children", "__weakref__")

    def __init__(self, ptr, free_fn, what):
        self.ptr = ptr
        self.what = what
        self._free_fn = free_fn
        self._cv = threading.Condition(threading.RLock())
        self._users = 0
        self._closing = False
        self.children = set()   # handles to free before this one

    def acquire(self, function):
        with self._cv:
            if self.ptr is None or self._closing:
                raise make_error(Status.STATE, "%s is closed" % self.what, None, function)
            self._users += 1
            return self.ptr

    def release(self):
        with self._cv:
            self._users -= 1
            if self._users == 0:
                self._cv.notify_all()

    def free(self, wait_s=None):
        """Free children, then this handle, once no call is using it. Returns the free
        function's status (0 if nothing was freed). With `wait_s`, gives up (leaking the handle)
        if calls are still running after that many seconds."""
        with self._cv:
            if self.ptr is None or self._closing:
                return 0
            self._closing = True
            deadline = None if wait_s is None else time.monotonic() + wait_s
            while self._users:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    self._closing = False
                    return 0
                self._cv.wait(left)
            ptr = self.ptr
            kids = list(self.children)
            self.children.clear()
        for k in kids:
            k.free(wait_s)
        st = self._free_fn(ptr)
        with self._cv:
            self.ptr = None
        return st or 0


_live_models = weakref.WeakSet()     # _Handle of every open model
_live_clusters = weakref.WeakSet()   # _Handle of every open cluster


@atexit.register
def _close_all_at_exit():
    # Free what is still open while the interpreter is fully alive (the engine threads are
    # joined here, not during finalization), then restore the default log sink.
    for h in list(_live_models):
        try:
            h.free(wait_s=2.0)
        except BaseException:
            pass
    for h in list(_live_clusters):
        try:
            h.free(wait_s=2.0)
        except BaseException:
            pass
    try:
        set_log_callback(None)
    except BaseException:
        pass


# ------------------------------------------------------------------------------------------
# Cluster
# ------------------------------------------------------------------------------------------

class Cluster:
    """Membership of this process in a sparkinfer cluster (spk_cluster_open).

    Every argument left as None takes the library's default, which falls back to the
    environment: ``rank`` (SPK_RANK, else 0), ``world_size`` (SPK_WORLD_SIZE, else 1),
    ``coordinator`` "host:port" rank 0 listens on (SPK_COORDINATOR, else 127.0.0.1:29500),
    ``cluster_key`` (SPK_CLUSTER_KEY), ``transport`` ("auto", "tcp", "nccl", "verbs" or a plugin
    path), ``n_threads`` (online CPUs), timeouts in milliseconds.

    ``Cluster()`` is a one-rank cluster that opens no socket. Rank 0 loads models on it; other
    ranks call :meth:`serve`. Use it as a context manager, or call :meth:`close`.

    Raises: InvalidArgument, Timeout (peers did not arrive), AuthError, VersionMismatch,
    IOFailure, Unsupported. Methods may be called from any thread; ``close`` waits for running
    calls (a ``serve`` in another thread included) and closes the models loaded on the cluster
    first.
    """

    def __init__(self, rank: Optional[int] = None, world_size: Optional[int] = None,
                 coordinator: Optional[str] = None, cluster_key: Union[str, bytes, None] = None,
                 transport: Optional[str] = None, n_threads: Optional[int] = None, *,
                 allow_open_cluster: Optional[bool] = None, connect_timeout_ms: Optional[int] = None,
                 peer_timeout_ms: Optional[int] = None, heartbeat_ms: Optional[int] = None):
        self._h = None
        fn = "Cluster"
        cfg, st = _c.init_struct(_lib, _c.spk_cluster_config, "spk_cluster_config_init")
        _check("spk_cluster_config_init", st)
        for name, value in (("rank", rank), ("world_size", world_size), ("n_threads", n_threads),
                            ("connect_timeout_ms", connect_timeout_ms),
                            ("peer_timeout_ms", peer_timeout_ms), ("heartbeat_ms", heartbeat_ms)):
            if value is not None:
                setattr(cfg, name, _c_int(fn, name, value))
        if allow_open_cluster is not None:
            cfg.allow_open_cluster = 1 if allow_open_cluster else 0
        # The strings must live until spk_cluster_open returns; keep them with the object.
        self._keep = [_cstr(fn, "coordinator", coordinator), _cstr(fn, "cluster_key", cluster_key),
                      _cstr(fn, "transport", transport)]
        if coordinator is not None:
            cfg.coordinator = self._keep[0]
        if cluster_key is not None:
            cfg.cluster_key = self._keep[1]
        if transport is not None:
            cfg.transport = self._keep[2]
        out = ctypes.c_void_p()
        st = _lib.spk_cluster_open(ctypes.byref(cfg), ctypes.byref(out))
        _check("spk_cluster_open", st)
        self._h = _Handle(out.value, _lib.spk_cluster_close, "cluster")
        _live_clusters.add(self._h)
        self._rank = int(_lib.spk_cluster_rank(out))
        self._world_size = int(_lib.spk_cluster_world_size(out))

    @property
    def rank(self) -> int:
        """This process's rank."""
        return self._rank

    @property
    def world_size(self) -> int:
        """Number of ranks in the cluster."""
        return self._world_size

    @property
    def closed(self) -> bool:
        return self._h is None or self._h.ptr is None

    def serve(self) -> None:
        """Worker loop (rank > 0): execute the driver's commands until the driver closes the
        cluster (returns) or a peer is lost (raises PeerLost). On rank 0: StateError.
        Blocks in C with the GIL released; Ctrl-C is not seen until it returns."""
        ptr = self._h.acquire("spk_cluster_serve") if self._h else None
        if ptr is None:
            raise make_error(Status.STATE, "cluster is closed", None, "spk_cluster_serve")
        try:
            st = _lib.spk_cluster_serve(ptr)
            if st:
                raise _error("spk_cluster_serve", st)
        finally:
            self._h.release()

    def close(self) -> None:
        """Close the models loaded on this cluster, then leave the cluster. Always returns
        (within the peer timeout even with dead peers); idempotent."""
        h = self._h
        if h is None:
            return
        st = h.free()
        if st:
            raise _error("spk_cluster_close", st)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            h = self._h
            if h is not None:
                h.free(wait_s=2.0)
        except BaseException:
            pass

    def __repr__(self):
        state = "closed" if self.closed else "open"
        return "<sparkinfer.Cluster rank %d/%d %s>" % (self._rank, self._world_size, state) \
            if hasattr(self, "_rank") else "<sparkinfer.Cluster (not opened)>"


# ------------------------------------------------------------------------------------------
# Data classes
# ------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """Shape and identity of a loaded model (spk_model_info). Token ids are None if absent."""
    arch: str
    name: str
    n_layers: int
    n_embd: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    n_ff: int
    n_vocab: int
    n_ctx_train: int
    n_ctx: int
    bos_token: Optional[int]
    eos_token: Optional[int]
    n_params: int
    weight_bytes: int


@dataclasses.dataclass(frozen=True)
class RankStats:
    """What one rank of a loaded model holds (spk_rank_stats)."""
    rank: int
    stage: int
    tp_rank: int
    layer_begin: int
    layer_end: int
    weight_bytes: int
    resident_bytes: int


@dataclasses.dataclass(frozen=True)
class ModelStats:
    """Serving counters of a loaded model (spk_model_stats)."""
    n_queued: int
    n_running: int
    kv_blocks_total: int
    kv_blocks_free: int
    kv_block_size: int
    n_preempted: int
    n_generated: int


@dataclasses.dataclass
class Request:
    """A generation request (spk_request).

    ``prompt`` is token ids or text; text is tokenized with ``add_special`` (prepend BOS if the
    model wants it) and ``parse_special`` (turn "<|im_start|>"-style text into special tokens,
    on by default so the output of :meth:`Model.chat` can be passed directly). Sampling fields
    left as None take the library's defaults from spk_request_init (max_tokens 128,
    temperature 0.8, top_k 40, top_p 0.95, seed 0). temperature 0 is greedy. Generation stops
    after any of ``stop_tokens`` or, unless ``ignore_eos``, the model's end-of-generation tokens.
    """
    prompt: Union[str, bytes, Sequence[int]]
    max_tokens: Optional[int] = None
    temperature: Optional[float] = None
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    seed: Optional[int] = None
    stop_tokens: Sequence[int] = ()
    ignore_eos: bool = False
    add_special: bool = True
    parse_special: bool = True


@dataclasses.dataclass(frozen=True)
class Event:
    """A token event, or a final event with the finish reason (spk_event).

    ``token``/``position`` are None on an event without a token (e.g. cancelled, error). The
    last event of a request has ``finish`` != Finish.NONE; ``status`` is Status.OK unless
    ``finish`` is Finish.ERROR.
    """
    request_id: int
    token: Optional[int]
    position: Optional[int]
    finish: Finish
    status: Status

    @property
    def finished(self) -> bool:
        return self.finish != Finish.NONE

    def error(self) -> Optional[SparkinferError]:
        """The request's error as an exception (not raised), or None."""
        if self.finish != Finish.ERROR:
            return None
        return make_error(self.status, "request %d ended with an error" % self.request_id,
                          status_str(self.status), "request")


def _event_from_c(e):
    try:
        fin = Finish(e.finish)
    except ValueError:
        fin = e.finish
    try:
        st = Status(e.status)
    except ValueError:
        st = e.status
    return Event(int(e.request_id), None if e.token < 0 else int(e.token),
                 None if e.position < 0 else int(e.position), fin, st)


@dataclasses.dataclass
class Output:
    """The result of one request of :meth:`Model.generate_many`."""
    request_id: int
    tokens: List[int]
    text: str
    finish: Finish
    status: Status

    def error(self) -> Optional[SparkinferError]:
        """The request's error as an exception (not raised), or None."""
        if self.finish != Finish.ERROR:
            return None
        return make_error(self.status, "request %d ended with an error" % self.request_id,
                          status_str(self.status), "request")


_SAMPLING_KEYS = ("max_tokens", "temperature", "top_k", "top_p", "seed", "stop_tokens", "ignore_eos",
                  "add_special", "parse_special")


# ------------------------------------------------------------------------------------------
# Model
# ------------------------------------------------------------------------------------------

class Model:
    """A model loaded on a cluster, with its serving engine (spk_model_load).

    ``Model(cluster, path, pp=0, tp=0, n_ctx=0, max_seqs=0, n_threads=0, queue_capacity=0,
    kv_cache_bytes=0)``; 0 means the library's default (pp/tp: the planner's choice; n_ctx:
    min(model's, 4096); max_seqs: 8 sequences in flight; n_threads: the cluster's;
    queue_capacity: 1024; kv_cache_bytes: max_seqs full contexts, in blocks of 16 positions;
    when blocks run out the newest sequences are preempted and recomputed).
    ``cluster`` may be None (or omitted: ``Model("file.gguf")``), in which case the model opens
    a private one-rank cluster and closes it with itself. Call on rank 0 only.

    Raises: InvalidArgument, IOFailure (file missing or unreadable), FormatError, Unsupported,
    NoMemory. All methods are safe from any thread; see the module docstring for the rules.
    Use it as a context manager or call :meth:`close`; a model dropped without closing is
    freed by the garbage collector or, at the latest, at interpreter exit.
    """

    def __init__(self, cluster: Union[Cluster, str, os.PathLike, None] = None,
                 path: Union[str, os.PathLike, None] = None, pp: int = 0, tp: int = 0, n_ctx: int = 0,
                 max_seqs: int = 0, n_threads: int = 0, queue_capacity: int = 0, kv_cache_bytes: int = 0):
        self._h = None
        self._own_cluster = None
        fn = "spk_model_load"
        if isinstance(cluster, (str, bytes, os.PathLike)) and path is None:
            cluster, path = None, cluster
        if path is None:
            raise _arg_error(fn, "path is required")
        cfg, st = _c.init_struct(_lib, _c.spk_model_config, "spk_model_config_init")
        _check("spk_model_config_init", st)
        cpath = os.fsencode(path)
        if b"\0" in cpath:
            raise _arg_error(fn, "path contains a NUL byte")
        cfg.path = cpath
        for name, value in (("pp", pp), ("tp", tp), ("n_ctx", n_ctx), ("max_seqs", max_seqs),
                            ("n_threads", n_threads), ("queue_capacity", queue_capacity)):
            setattr(cfg, name, _c_int(fn, name, value))
        cfg.kv_cache_bytes = _c_int(fn, "kv_cache_bytes", kv_cache_bytes, 0, (1 << 64) - 1)
        if cluster is None:
            cluster = self._own_cluster = Cluster()
        elif not isinstance(cluster, Cluster):
            raise _arg_error(fn, "cluster must be a sparkinfer.Cluster, not %s" % type(cluster).__name__)
        self.cluster = cluster
        self.path = os.fsdecode(cpath)
        try:
            cptr = cluster._h.acquire(fn) if cluster._h else None
            if cptr is None:
                raise make_error(Status.STATE, "cluster is closed", None, fn)
            try:
                out = ctypes.c_void_p()
                st = _lib.spk_model_load(cptr, ctypes.byref(cfg), ctypes.byref(out))
                if st:
                    raise _error(fn, st)
                h = _Handle(out.value, _lib.spk_model_free, "model")
                # Registered before the cluster handle is released, so a concurrent
                # Cluster.close() frees this model first.
                with cluster._h._cv:
                    cluster._h.children.add(h)
                self._h = h
                _live_models.add(h)
            finally:
                cluster._h.release()
        except BaseException:
            if self._own_cluster is not None:
                self._own_cluster.close()
            raise
        info = _c.spk_model_info()
        info.struct_size = ctypes.sizeof(info)
        self._call("spk_model_get_info", _lib.spk_model_get_info, ctypes.byref(info))
        self.info = ModelInfo(
            info.arch.decode("utf-8", "replace"), info.name.decode("utf-8", "replace"), info.n_layers,
            info.n_embd, info.n_heads, info.n_kv_heads, info.head_dim, info.n_ff, info.n_vocab,
            info.n_ctx_train, info.n_ctx, None if info.bos_token < 0 else info.bos_token,
            None if info.eos_token < 0 else info.eos_token, info.n_params, info.weight_bytes)
        # Event routing (see the module docstring).
        self._cv = threading.Condition(threading.RLock())
        self._pumping = False
        self._owned = {}                    # request id -> deque of its owner
        self._discard = set()               # ids whose owner left before the final event
        self._unowned = collections.deque()  # events for poll()
        self._evbuf = (_c.spk_event * _EVBUF)()
        tmpl, st = _c.init_struct(_lib, _c.spk_request, "spk_request_init")
        _check("spk_request_init", st)
        self._req_template = tmpl

    # -- plumbing ---------------------------------------------------------------------------

    def _call(self, function, cfn, *args):
        """Call cfn(model, *args) with the handle held; raise on a non-OK status."""
        h = self._h
        if h is None:
            raise make_error(Status.STATE, "model is closed", None, function)
        ptr = h.acquire(function)
        try:
            st = cfn(ptr, *args)
            if st:
                raise _error(function, st)
        finally:
            h.release()

    def _call_status(self, function, cfn, *args):
        """Like _call but returns the status; the error (if any) is built on this thread."""
        h = self._h
        if h is None:
            raise make_error(Status.STATE, "model is closed", None, function)
        ptr = h.acquire(function)
        try:
            st = cfn(ptr, *args)
            return st, (_error(function, st) if st else None)
        finally:
            h.release()

    @property
    def closed(self) -> bool:
        return self._h is None or self._h.ptr is None

    def close(self) -> None:
        """Stop the engine (requests in flight are dropped) and free the model; then close the
        private cluster if the model opened one. Waits for calls running in other threads;
        idempotent."""
        h = self._h
        if h is not None:
            st = h.free()
            cl = self.cluster._h if getattr(self, "cluster", None) is not None else None
            if cl is not None:
                with cl._cv:
                    cl.children.discard(h)
            if st:
                raise _error("spk_model_free", st)
        if self._own_cluster is not None:
            self._own_cluster.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        # Must never raise or crash, also at interpreter exit (the atexit hook has usually
        # freed the handle by then, making this a no-op).
        try:
            h = self._h
            if h is not None:
                h.free(wait_s=2.0)
            oc = self._own_cluster
            if oc is not None and oc._h is not None:
                oc._h.free(wait_s=2.0)
        except BaseException:
            pass

    def __repr__(self):
        return "<sparkinfer.Model %r %s>" % (getattr(self, "path", "?"), "closed" if self.closed else "open")

    # -- info -------------------------------------------------------------------------------

    def rank_stats(self, rank: int) -> RankStats:
        """What rank `rank` holds (a control-plane round trip for a worker). Raises
        InvalidArgument (rank out of range), PeerLost."""
        s = _c.spk_rank_stats()
        s.struct_size = ctypes.sizeof(s)
        rank = _c_int("spk_model_get_rank_stats", "rank", rank)
        self._call("spk_model_get_rank_stats", _lib.spk_model_get_rank_stats, rank, ctypes.byref(s))
        return RankStats(s.rank, s.stage, s.tp_rank, s.layer_begin, s.layer_end, s.weight_bytes,
                         s.resident_bytes)

    def stats(self) -> ModelStats:
        """Serving counters now: queue, running requests, KV blocks total/free, preemptions,
        tokens generated since load."""
        s = _c.spk_model_stats()
        s.struct_size = ctypes.sizeof(s)
        self._call("spk_model_get_stats", _lib.spk_model_get_stats, ctypes.byref(s))
        return ModelStats(s.n_queued, s.n_running, s.kv_blocks_total, s.kv_blocks_free, s.kv_block_size,
                          s.n_preempted, s.n_generated)

    # -- text -------------------------------------------------------------------------------

    def tokenize(self, text: Union[str, bytes], add_special: bool = True,
                 parse_special: bool = False) -> List[int]:
        """Token ids of `text` (UTF-8). `add_special`: prepend BOS if the model asks for it;
        `parse_special`: turn special-token text into its token."""
        fn = "spk_tokenize"
        b = _text_bytes(fn, "text", text)
        cap = len(b) + 16
        for _ in range(3):
            buf = (ctypes.c_int32 * cap)()
            n = ctypes.c_size_t()
            st, err = self._call_status(fn, _lib.spk_tokenize, b, len(b), 1 if add_special else 0,
                                        1 if parse_special else 0, buf, cap, ctypes.byref(n))
            if st == Status.TOO_LONG and n.value > cap:
                cap = n.value
                continue
            if err:
                raise err
            return list(buf[:n.value])
        raise err

    def detokenize_bytes(self, tokens: Sequence[int], skip_special: bool = False) -> bytes:
        """The UTF-8 bytes of `tokens` (may end inside a character)."""
        fn = "spk_detokenize"
        arr, n = _tokens_array(fn, "tokens", tokens)
        cap = 16 * n + 64
        for _ in range(3):
            buf = ctypes.create_string_buffer(cap)
            nout = ctypes.c_size_t()
            st, err = self._call_status(fn, _lib.spk_detokenize, arr, n, 1 if skip_special else 0, buf, cap,
                                        ctypes.byref(nout))
            if st == Status.TOO_LONG and nout.value > cap:
                cap = nout.value
                continue
            if err:
                raise err
            return buf.raw[:nout.value]
        raise err

    def detokenize(self, tokens: Sequence[int], skip_special: bool = False) -> str:
        """Text of `tokens`; special tokens are rendered as their text unless `skip_special`.
        Bytes that do not form valid UTF-8 become U+FFFD."""
        return self.detokenize_bytes(tokens, skip_special).decode("utf-8", "replace")

    def detokenizer(self, skip_special: bool = False) -> "Detokenizer":
        """A streaming :class:`Detokenizer` for this model."""
        return Detokenizer(self, skip_special)

    def chat(self, messages: Iterable[Any], add_assistant: bool = True) -> str:
        """Render `messages` with the model's chat template. Each message is a dict with "role"
        ("system", "user", "assistant") and "content", or a (role, content) pair.
        `add_assistant` appends the opening of the assistant turn. Raises Unsupported if the
        model has no template the library knows."""
        fn = "spk_chat_apply"
        msgs = list(messages)
        arr = (_c.spk_chat_message * max(1, len(msgs)))()
        keep = []
        total = 0
        for i, m in enumerate(msgs):
            if isinstance(m, dict):
                if "role" not in m or "content" not in m:
                    raise _arg_error(fn, "message %d lacks \"role\" or \"content\"" % i)
                role, content = m["role"], m["content"]
            else:
                try:
                    role, content = m
                except (TypeError, ValueError):
                    raise _arg_error(fn, "message %d is neither a dict nor a (role, content) pair" % i) from None
            r = _cstr(fn, "message %d role" % i, role)
            c = _cstr(fn, "message %d content" % i, content)
            if r is None or c is None:
                raise _arg_error(fn, "message %d has a None role or content" % i)
            keep += [r, c]
            arr[i].role, arr[i].content = r, c
            total += len(r) + len(c)
        cap = 2 * total + 64 * len(msgs) + 256
        for _ in range(3):
            buf = ctypes.create_string_buffer(cap)
            nout = ctypes.c_size_t()
            st, err = self._call_status(fn, _lib.spk_chat_apply, arr, len(msgs), 1 if add_assistant else 0,
                                        buf, cap, ctypes.byref(nout))
            if st == Status.TOO_LONG and nout.value + 1 > cap:
                cap = nout.value + 1
                continue
            if err:
                raise err
            return buf.raw[:nout.value].decode("utf-8", "replace")
        raise err

    # -- requests ---------------------------------------------------------------------------

    def _as_request(self, item, defaults):
        if isinstance(item, Request):
            return item
        return Request(item, **defaults)

    def _fill(self, creq, r, keep, i):
        """Fill the C request `creq` from Request `r`; `keep` holds arrays until submit returns."""
        fn = "spk_submit"
        what = "request %d" % i
        prompt = r.prompt
        if isinstance(prompt, (str, bytes, bytearray)):
            prompt = self.tokenize(prompt, r.add_special, r.parse_special)
        parr, n = _tokens_array(fn, what + " prompt", prompt)
        keep.append(parr)
        creq.prompt = ctypes.cast(parr, ctypes.POINTER(ctypes.c_int32)) if n else None
        creq.n_prompt = n
        if r.max_tokens is not None:
            creq.max_tokens = _c_int(fn, what + " max_tokens", r.max_tokens)
        if r.top_k is not None:
            creq.top_k = _c_int(fn, what + " top_k", r.top_k)
        for name in ("temperature", "top_p"):
            v = getattr(r, name)
            if v is None:
                continue
            try:
                v = float(v)
            except (TypeError, ValueError):
                raise _arg_error(fn, "%s %s must be a number, got %r" % (what, name, v)) from None
            if math.isnan(v):
                raise _arg_error(fn, "%s %s is NaN" % (what, name))
            setattr(creq, name, v)
        if r.seed is not None:
            creq.seed = _c_int(fn, what + " seed", r.seed, 0, (1 << 64) - 1)
        stop = list(r.stop_tokens or ())
        if stop:
            sarr, ns = _tokens_array(fn, what + " stop_tokens", stop)
            keep.append(sarr)
            creq.stop_tokens = ctypes.cast(sarr, ctypes.POINTER(ctypes.c_int32))
            creq.n_stop = ns
        creq.ignore_eos = 1 if r.ignore_eos else 0

    def _build(self, reqs):
        """The C request array for Request objects (tokenizing text prompts), plus the arrays
        it points to, which must live until spk_submit returns."""
        n = len(reqs)
        arr = (_c.spk_request * max(1, n))()   # stride sizeof(spk_request) == struct_size
        keep = [arr]
        for i, r in enumerate(reqs):
            ctypes.memmove(ctypes.byref(arr[i]), ctypes.byref(self._req_template), ctypes.sizeof(_c.spk_request))
            self._fill(arr[i], r, keep, i)
        return arr, n, keep

    def _submit_built(self, built):
        arr, n, _keep = built
        if n == 0:
            return []
        ids = (ctypes.c_uint64 * n)()
        self._call("spk_submit", _lib.spk_submit, arr, n, ids)
        return list(ids)

    def submit(self, requests) -> List[int]:
        """Queue requests and return their ids at once. `requests` is a :class:`Request`, a
        prompt (text or token ids), or a list of those. All-or-nothing: InvalidArgument if any
        request is malformed, Busy if the queue cannot take all of them. A prompt too long for
        the context is accepted and ends with an error event (TOO_LONG). Read the events with
        :meth:`poll`."""
        if isinstance(requests, (Request, str, bytes)):
            requests = [requests]
        requests = list(requests)
        if requests and all(isinstance(x, int) and not isinstance(x, bool) for x in requests):
            requests = [requests]   # a single prompt given as token ids
        return self._submit_built(self._build([self._as_request(r, {}) for r in requests]))

    def cancel(self, request_id: int) -> None:
        """Cancel a request: it ends with a Finish.CANCELLED event and frees its resources at
        once. Raises NotFound if the id is unknown or already finished."""
        rid = _c_int("spk_cancel", "request_id", request_id, 0, (1 << 64) - 1)
        self._call("spk_cancel", _lib.spk_cancel, rid)

    # -- events -----------------------------------------------------------------------------

    def _pump_locked(self, timeout_ms):
        """Fetch events from the library and route them. Called with self._cv held and no
        other pumper; releases the lock while waiting in C."""
        self._pumping = True
        self._cv.release()
        err = None
        n = ctypes.c_size_t()
        try:
            st, err = self._call_status("spk_poll", _lib.spk_poll, self._evbuf, _EVBUF, ctypes.byref(n),
                                        int(timeout_ms))
            evs = [_event_from_c(self._evbuf[i]) for i in range(n.value)] if not st else []
        finally:
            self._cv.acquire()
            self._pumping = False
            self._cv.notify_all()
        if err:
            raise err
        for e in evs:
            q = self._owned.get(e.request_id)
            if q is not None:
                q.append(e)
            elif e.request_id in self._discard:
                if e.finish != Finish.NONE:
                    self._discard.discard(e.request_id)
            else:
                self._unowned.append(e)

    def _wait(self, take, timeout_ms):
        """Return take() (evaluated under the lock) once it is truthy, pumping events as
        needed; after `timeout_ms` (-1: forever) return its falsy value."""
        deadline = None if timeout_ms < 0 else time.monotonic() + timeout_ms / 1000.0
        pumped = False
        with self._cv:
            while True:
                r = take()
                if r:
                    return r
                left_ms = None if deadline is None else (deadline - time.monotonic()) * 1000.0
                expired = left_ms is not None and left_ms <= 0
                if expired and pumped:
                    return r
                if not self._pumping:
                    t = _SLICE_MS if left_ms is None else max(0, min(_SLICE_MS, int(math.ceil(left_ms))))
                    self._pump_locked(t)
                    pumped = True
                elif expired:
                    return r
                else:
                    self._cv.wait(_SLICE_MS / 1000.0 if left_ms is None else min(_SLICE_MS, left_ms) / 1000.0)

    def poll(self, timeout_ms: int = -1, max_events: int = 256) -> List[Event]:
        """Wait up to `timeout_ms` (0: do not wait, -1: until there is an event) for events of
        requests started with :meth:`submit`; return at most `max_events` of them (an empty
        list on timeout). Raises the engine's fatal error (e.g. PeerLost). Each event goes to
        exactly one caller."""
        timeout_ms = _c_int("spk_poll", "timeout_ms", timeout_ms, -1)
        max_events = _c_int("spk_poll", "max_events", max_events, 1)

        def take():
            out = []
            while self._unowned and len(out) < max_events:
                out.append(self._unowned.popleft())
            return out

        return self._wait(take, timeout_ms)

    def _submit_owned(self, reqs, queue):
        """Submit and route the requests' events to `queue` (registered before any event of
        theirs can be routed)."""
        built = self._build(reqs)
        with self._cv:
            ids = self._submit_built(built)
            for i in ids:
                self._owned[i] = queue
        return ids

    def _release_owned(self, rid, queue, finished):
        """The owner of `rid` leaves; if its final event has not been routed yet, drop the
        events still to come."""
        with self._cv:
            self._owned.pop(rid, None)
            if not finished and not any(e.request_id == rid and e.finish != Finish.NONE for e in queue):
                self._discard.add(rid)

    # -- generation -------------------------------------------------------------------------

    def generate(self, prompt, *, skip_special: bool = True, timeout_s: Optional[float] = None,
                 **sampling) -> "Generation":
        """Start one request and return a :class:`Generation`, an iterator over decoded text
        pieces (each a valid UTF-8 string; characters split across tokens are held back until
        complete). `prompt` is text, token ids or a :class:`Request`; `sampling` are Request
        fields (max_tokens, temperature, top_k, top_p, seed, stop_tokens, ignore_eos,
        add_special, parse_special). `skip_special` drops special tokens such as "<|im_end|>"
        from the text. Leaving the loop early (break, close()) cancels the request. A request
        that ends with an error raises it (e.g. TooLong) from the iterator."""
        bad = set(sampling) - set(_SAMPLING_KEYS)
        if bad:
            raise TypeError("generate() got unexpected keyword arguments: %s" % ", ".join(sorted(bad)))
        return Generation(self, self._as_request(prompt, sampling), skip_special, timeout_s)

    def generate_many(self, prompts, *, skip_special: bool = True, timeout_s: Optional[float] = None,
                      **sampling) -> List[Output]:
        """Run many requests concurrently (continuous batching in the engine) and return one
        :class:`Output` per prompt, in order. Items are text, token ids or :class:`Request`
        objects; `sampling` applies to the items that are not Requests. When the queue is full
        the rest are submitted as room frees up. A request that fails ends with finish ERROR
        and its status in its Output (not raised); malformed requests raise InvalidArgument.
        Interrupting (Ctrl-C, timeout) cancels the requests still running.

        With Timeout raised after `timeout_s` seconds."""
        bad = set(sampling) - set(_SAMPLING_KEYS)
        if bad:
            raise TypeError("generate_many() got unexpected keyword arguments: %s" % ", ".join(sorted(bad)))
        reqs = [self._as_request(p, sampling) for p in prompts]
        for i, r in enumerate(reqs):   # tokenize once, not at every retry after Busy
            if isinstance(r.prompt, (str, bytes, bytearray)):
                reqs[i] = dataclasses.replace(r, prompt=self.tokenize(r.prompt, r.add_special, r.parse_special))
        results = [None] * len(reqs)
        index = {}                      # id -> position
        tokens = {}
        queue = collections.deque()
        pending = 0                     # next request to submit
        running = set()
        chunk = max(1, len(reqs))
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            while pending < len(reqs) or running:
                if deadline is not None and time.monotonic() >= deadline:
                    raise make_error(Status.TIMEOUT, "%d of %d requests unfinished after %.1f s"
                                     % (len(reqs) - sum(r is not None for r in results), len(reqs), timeout_s),
                                     None, "generate_many")
                if pending < len(reqs):
                    batch = reqs[pending:pending + chunk]
                    try:
                        ids = self._submit_owned(batch, queue)
                    except SparkinferError as e:
                        if e.status != Status.BUSY:
                            raise
                        chunk = max(1, chunk // 2)
                        ids = []
                    for k, rid in enumerate(ids):
                        index[rid] = pending + k
                        tokens[rid] = []
                        running.add(rid)
                    pending += len(ids)
                if not running:
                    time.sleep(0.01)    # the queue is full of other callers' requests
                    continue
                wait_ms = _SLICE_MS if pending < len(reqs) else -1
                if deadline is not None:
                    left = max(0, int((deadline - time.monotonic()) * 1000))
                    wait_ms = left if wait_ms < 0 else min(wait_ms, left)

                def take():
                    out = list(queue)
                    queue.clear()
                    return out

                for e in self._wait(take, wait_ms):
                    if e.token is not None:
                        tokens[e.request_id].append(e.token)
                    if e.finish != Finish.NONE:
                        rid = e.request_id
                        running.discard(rid)
                        with self._cv:
                            self._owned.pop(rid, None)
                        toks = tokens.pop(rid)
                        results[index[rid]] = Output(rid, toks, self.detokenize(toks, skip_special), e.finish,
                                                     e.status)
        finally:
            for rid in list(running):
                try:
                    self.cancel(rid)
                except SparkinferError:
                    pass
                self._release_owned(rid, queue, False)
        return results


class Detokenizer:
    """Streaming detokenizer (spk_detokenizer): :meth:`push` a token, get the text that now
    forms complete UTF-8 characters (bytes of a character split across tokens are held back);
    :meth:`flush` returns what is held back (an incomplete character as U+FFFD). Create with
    :meth:`Model.detokenizer`; use from one thread at a time; freed by :meth:`close`, by the
    garbage collector, or with its model."""

    def __init__(self, model: "Model", skip_special: bool = False):
        self._h = None
        self._model_h = model._h
        self._buf = ctypes.create_string_buffer(256)
        out = ctypes.c_void_p()
        model._call("spk_detokenizer_new", _lib.spk_detokenizer_new, 1 if skip_special else 0, ctypes.byref(out))
        h = _Handle(out.value, _lib.spk_detokenizer_free, "detokenizer")
        with self._model_h._cv:
            self._model_h.children.add(h)   # freed before the model
        self._h = h

    def push(self, token: int) -> str:
        """Feed one token id; returns the text completed by it (possibly ""). InvalidArgument
        for a token outside the vocabulary."""
        return self._push(_c_int("spk_detokenizer_push", "token", token, 0))

    def flush(self) -> str:
        """Return the held-back bytes (an incomplete character becomes U+FFFD) and reset."""
        return self._push(-1)

    def _push(self, token):
        fn = "spk_detokenizer_push"
        h = self._h
        if h is None:
            raise make_error(Status.STATE, "detokenizer is closed", None, fn)
        # The model must stay alive during the call: hold it too.
        self._model_h.acquire(fn)
        try:
            ptr = h.acquire(fn)
            try:
                n = ctypes.c_size_t()
                while True:
                    st = _lib.spk_detokenizer_push(ptr, token, self._buf, len(self._buf), ctypes.byref(n))
                    if st == Status.TOO_LONG and n.value > len(self._buf):
                        self._buf = ctypes.create_string_buffer(n.value)
                        continue
                    if st:
                        raise _error(fn, st)
                    return self._buf.raw[:n.value].decode("utf-8", "replace")
            finally:
                h.release()
        finally:
            self._model_h.release()

    def close(self) -> None:
        h = self._h
        if h is not None:
            self._h = None
            h.free()
            with self._model_h._cv:
                self._model_h.children.discard(h)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except BaseException:
            pass


class Generation:
    """Iterator over the decoded text pieces of one request (see :meth:`Model.generate`).

    Attributes: ``request_id``; ``tokens`` (generated so far); ``text`` (pieces so far);
    ``finish`` (None until the final event) and ``status``. Consume it from one thread at a
    time. ``close()`` (or leaving a ``with`` block / ``for`` loop early) cancels the request.
    """

    def __init__(self, model: Model, request: Request, skip_special: bool, timeout_s: Optional[float]):
        self.model = model
        self.tokens: List[int] = []
        self.finish: Optional[Finish] = None
        self.status: Status = Status.OK
        self._pieces: List[str] = []
        self._queue = collections.deque()
        self._timeout_ms = -1 if timeout_s is None else max(0, int(timeout_s * 1000))
        self._detok = None
        self._done = False
        self._detok = Detokenizer(model, skip_special)
        try:
            self.request_id = model._submit_owned([request], self._queue)[0]
        except BaseException:
            self._free_detok()
            self._done = True
            raise

    @property
    def text(self) -> str:
        return "".join(self._pieces)

    def _free_detok(self):
        d = self._detok
        if d is not None:
            self._detok = None
            d.close()

    def __iter__(self):
        return self

    def __next__(self) -> str:
        while not self._done:
            q = self._queue
            evs = self.model._wait(lambda: q.popleft() if q else None, self._timeout_ms)
            if evs is None:
                self.close()
                raise make_error(Status.TIMEOUT, "request %d: no event within %d ms"
                                 % (self.request_id, self._timeout_ms), None, "generate")
            e = evs
            piece = ""
            if e.token is not None:
                self.tokens.append(e.token)
                piece = self._detok._push(e.token)
            if e.finish != Finish.NONE:
                self.finish = e.finish
                self.status = e.status
                piece += self._detok._push(-1)
                self._done = True
                self.model._release_owned(self.request_id, q, True)
                self._free_detok()
                if piece:
                    self._pieces.append(piece)
                if e.finish == Finish.ERROR:
                    raise e.error()
                if piece:
                    return piece
                break
            if piece:
                self._pieces.append(piece)
                return piece
        raise StopIteration

    def read(self) -> str:
        """Consume the rest and return the whole text (including pieces already yielded)."""
        for _ in self:
            pass
        return self.text

    def close(self, wait: bool = True) -> None:
        """Cancel the request if it is still running and release its resources. With `wait`
        (the default), wait (up to 5 s) for the request's final event, so that on return the
        engine has freed what the request held and ``finish`` says how it ended. Idempotent."""
        if self._done:
            return
        self._done = True
        rid = getattr(self, "request_id", None)
        if rid is not None:
            try:
                self.model.cancel(rid)
            except SparkinferError:
                pass   # finished meanwhile (its final event is on its way) or model closed
            final = None
            if wait:
                q = self._queue

                def take():
                    while q:
                        e = q.popleft()
                        if e.finish != Finish.NONE:
                            return e
                    return None

                try:
                    final = self.model._wait(take, 5000)
                except SparkinferError:
                    final = None
            if final is not None:
                self.finish, self.status = final.finish, final.status
                self.model._release_owned(rid, self._queue, True)
            else:
                self.model._release_owned(rid, self._queue, False)
                if self.finish is None:
                    self.finish = Finish.CANCELLED
        self._free_detok()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        # No waiting here: the collector may run this at any allocation.
        try:
            self.close(wait=False)
        except BaseException:
            pass
