"""A loaded model and its serving engine (spk_model_*, tokens and text, requests and events).

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

import collections
import ctypes
import dataclasses
import math
import os
import threading
import time
from typing import Any, Iterable, List, Optional, Sequence, Union

from . import _lib as _c
from ._base import (SLICE_MS, _arg_error, _c_int, _check, _cstr, _error, _Handle, _lib, _live_models,
                    _text_bytes, _tokens_array)
from .cluster import Cluster
from .errors import SparkinferError, Status, make_error
from .stream import Detokenizer, Generation
from .types import (Event, Finish, ModelInfo, ModelStats, Output, RankStats, Request, _SAMPLING_KEYS,
                    _output_from_c)

_EVBUF = 256             # events fetched per spk_poll


class Model:
    """A model loaded on a cluster, with its serving engine (spk_model_load).

    ``Model(cluster, path, pp=0, tp=0, n_ctx=0, max_seqs=0, n_threads=0, queue_capacity=0,
    kv_cache_bytes=0, backend="cpu", device=0, ep=0)``; ep splits a MoE model's experts whole over
    the ranks of each TP group (0: the planner may, when it picks pp and tp; 1: off; N: tp N); backend is "cpu", "cuda" or "auto" (the GPU when
    the CUDA backend runs here, else the CPU), device the GPU ordinal; 0 means the library's default (pp/tp: the planner's choice; n_ctx:
    min(model's, 4096); max_seqs: 8 sequences in flight; n_threads: the cluster's;
    queue_capacity: 1024; kv_cache_bytes: max_seqs full contexts, in blocks of 16 positions;
    when blocks run out the newest sequences are preempted and recomputed).
    ``cluster`` may be None (or omitted: ``Model("file.gguf")``), in which case the model opens
    a private one-rank cluster and closes it with itself. Call on rank 0 only. ``path`` is a GGUF
    file or a Hugging Face model directory (config.json, safetensors, tokenizer.json; see
    docs/MODELS.md).

    Raises: InvalidArgument, IOFailure (file missing or unreadable), FormatError, Unsupported,
    NoMemory. All methods are safe from any thread; see the module docstring for the rules.
    Use it as a context manager or call :meth:`close`; a model dropped without closing is
    freed by the garbage collector or, at the latest, at interpreter exit.
    """

    def __init__(self, cluster: Union[Cluster, str, os.PathLike, None] = None,
                 path: Union[str, os.PathLike, None] = None, pp: int = 0, tp: int = 0, n_ctx: int = 0,
                 max_seqs: int = 0, n_threads: int = 0, queue_capacity: int = 0, kv_cache_bytes: int = 0,
                 backend: str = "cpu", device: int = 0, ep: int = 0):
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
                            ("n_threads", n_threads), ("queue_capacity", queue_capacity), ("ep", ep)):
            setattr(cfg, name, _c_int(fn, name, value))
        cfg.kv_cache_bytes = _c_int(fn, "kv_cache_bytes", kv_cache_bytes, 0, (1 << 64) - 1)
        backends = {"auto": 0, "cpu": 1, "cuda": 2}  # spk_backend_type
        if backend not in backends:
            raise _arg_error(fn, "backend must be one of cpu, cuda, auto, not %r" % (backend,))
        cfg.backend = backends[backend]
        cfg.device = _c_int(fn, "device", device, 0, 1023)
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
        self._evbuf = (_c.spk_output * _EVBUF)()
        self._evbuf[0].struct_size = ctypes.sizeof(_c.spk_output)   # the stride
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
                         s.resident_bytes, s.kv_cache_bytes, s.owned_bytes, s.expert_begin, s.expert_end)

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

    def chat(self, messages: Iterable[Any], add_assistant: bool = True, enable_thinking: bool = True) -> str:
        """Render `messages` with the model's chat template. Each message is a dict with "role"
        ("system", "user", "assistant") and "content", or a (role, content) pair.
        `add_assistant` appends the opening of the assistant turn. `enable_thinking=False` is
        Qwen3's switch (as transformers' apply_chat_template takes it): an empty
        "<think>\n\n</think>\n\n" after the assistant opening; other templates ignore it.
        Raises Unsupported if the model has no template the library knows."""
        fn = "spk_chat_apply_opts"
        opts = _c.spk_chat_options()
        _lib.spk_chat_options_init(ctypes.byref(opts))
        opts.add_assistant = 1 if add_assistant else 0
        opts.enable_thinking = 1 if enable_thinking else 0
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
            st, err = self._call_status(fn, _lib.spk_chat_apply_opts, arr, len(msgs), ctypes.byref(opts),
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
        if isinstance(prompt, (str, bytes, bytearray)) and r.add_special and r.parse_special:
            b = _text_bytes(fn, what + " prompt", prompt)   # the library tokenizes it
            keep.append(b)
            creq.text = b
            creq.text_len = len(b)
            creq.prompt = None
            creq.n_prompt = 0
        else:
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
        if r.repeat_last_n is not None:
            creq.repeat_last_n = _c_int(fn, what + " repeat_last_n", r.repeat_last_n, -1)
        for name in ("temperature", "top_p", "min_p", "repeat_penalty", "frequency_penalty", "presence_penalty"):
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
        stops = r.stop
        if isinstance(stops, (str, bytes)):
            stops = [stops]
        stops = [_cstr(fn, what + " stop string", x) for x in (stops or ())]
        if stops:
            sarr = (ctypes.c_char_p * len(stops))(*stops)
            keep.append(stops)
            keep.append(sarr)
            creq.stop_strings = ctypes.cast(sarr, ctypes.POINTER(ctypes.c_char_p))
            creq.n_stop_strings = len(stops)
        creq.logprobs = 1 if r.logprobs or r.top_logprobs else 0
        creq.top_logprobs = _c_int(fn, what + " top_logprobs", r.top_logprobs or 0, 0)
        creq.prompt_logprobs = 1 if r.prompt_logprobs else 0

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
            st, err = self._call_status("spk_poll_outputs", _lib.spk_poll_outputs, self._evbuf, _EVBUF,
                                        ctypes.byref(n), int(timeout_ms))
            evs = [_output_from_c(self._evbuf[i]) for i in range(n.value)] if not st else []
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
                    t = SLICE_MS if left_ms is None else max(0, min(SLICE_MS, int(math.ceil(left_ms))))
                    self._pump_locked(t)
                    pumped = True
                elif expired:
                    return r
                else:
                    self._cv.wait(SLICE_MS / 1000.0 if left_ms is None else min(SLICE_MS, left_ms) / 1000.0)

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
        that ends with an error raises it (e.g. TooLong) from the iterator. With `timeout_s`,
        waiting longer than that for the next event cancels the request and raises Timeout."""
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
        With `timeout_s`, raises Timeout when the requests have not all finished by then.
        Interrupting (Ctrl-C, timeout) cancels the requests still running."""
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
        texts = {}
        lps = {}
        echo = {}
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
                        texts[rid] = []
                        lps[rid] = []
                        running.add(rid)
                    pending += len(ids)
                if not running:
                    time.sleep(0.01)    # the queue is full of other callers' requests
                    continue
                wait_ms = SLICE_MS if pending < len(reqs) else -1
                if deadline is not None:
                    left = max(0, int((deadline - time.monotonic()) * 1000))
                    wait_ms = left if wait_ms < 0 else min(wait_ms, left)

                def take():
                    out = list(queue)
                    queue.clear()
                    return out

                for e in self._wait(take, wait_ms):
                    texts[e.request_id].append(e.text)
                    if e.token is not None and e.position is not None and e.position < e.n_prompt:
                        echo.setdefault(e.request_id, []).append((e.token, e.logprob, e.top_logprobs))
                    elif e.token is not None:
                        tokens[e.request_id].append(e.token)
                        lps[e.request_id].append((e.logprob, e.top_logprobs))
                    if e.finish != Finish.NONE:
                        rid = e.request_id
                        running.discard(rid)
                        with self._cv:
                            self._owned.pop(rid, None)
                        toks = tokens.pop(rid)
                        r = reqs[index[rid]]
                        # the library's text (stop strings cut, special tokens skipped)
                        text = "".join(texts.pop(rid)) if skip_special else self.detokenize(toks, False)
                        lp = lps.pop(rid)
                        want = r.logprobs or r.top_logprobs
                        results[index[rid]] = Output(rid, toks, text, e.finish, e.status, e.message,
                                                     [x[0] for x in lp] if want else None,
                                                     [x[1] for x in lp] if r.top_logprobs else None,
                                                     echo.pop(rid, []) if r.prompt_logprobs else None)
        finally:
            for rid in list(running):
                try:
                    self.cancel(rid)
                except SparkinferError:
                    pass
                self._release_owned(rid, queue, False)
        return results
