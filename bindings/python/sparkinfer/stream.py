"""Streaming: the incremental detokenizer and the iterator over one request's text."""

import collections
import ctypes
from typing import TYPE_CHECKING, List, Optional

from ._base import _c_int, _error, _Handle, _lib
from .errors import SparkinferError, Status, make_error
from .types import Finish, Request

if TYPE_CHECKING:
    from .model import Model


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


_CLOSED = object()   # what a wait returns when close() ran in another thread


class Generation:
    """Iterator over the decoded text pieces of one request (see :meth:`Model.generate`).

    Attributes: ``request_id``; ``tokens`` (generated so far); ``text`` (pieces so far);
    ``finish`` (None until the final event), ``status`` and ``message`` (the error detail);
    ``logprobs``: (logprob, top_logprobs) per token when the request asked for them. With
    ``skip_special`` (the default) the pieces are the library's output text, so stop strings are
    cut from it. Consume it from one thread at a
    time. ``close()`` (or leaving a ``with`` block / ``for`` loop early) cancels the request.
    """

    def __init__(self, model: "Model", request: Request, skip_special: bool, timeout_s: Optional[float]):
        self.model = model
        self.tokens: List[int] = []
        self.finish: Optional[Finish] = None
        self.status: Status = Status.OK
        self._pieces: List[str] = []
        self._queue = collections.deque()
        self._timeout_ms = -1 if timeout_s is None else max(0, int(timeout_s * 1000))
        self._detok = None
        self._done = False
        self.message = ""
        self.logprobs: List = []   # (logprob, top_logprobs) per token, when asked for
        self.prompt_logprobs: List = []   # (token, logprob, top_logprobs) per prompt token (echo)
        self._lib_text = skip_special
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
            # close() from another thread sets _done: the wait ends then (it re-checks in slices)
            evs = self.model._wait(lambda: q.popleft() if q else (_CLOSED if self._done else None),
                                   self._timeout_ms)
            if evs is _CLOSED:
                break
            if evs is None:
                self.close()
                raise make_error(Status.TIMEOUT, "request %d: no event within %d ms"
                                 % (self.request_id, self._timeout_ms), None, "generate")
            e = evs
            piece = ""
            if e.token is not None and e.position is not None and e.position < e.n_prompt:
                self.prompt_logprobs.append((e.token, e.logprob, e.top_logprobs))   # echo
                continue
            if e.token is not None:
                self.tokens.append(e.token)
                if not self._lib_text:
                    piece = self._detok._push(e.token)
            if self._lib_text:
                piece = e.text   # the library's text: stop strings cut, special tokens skipped
            if e.token is not None and (e.logprob is not None or e.top_logprobs):
                self.logprobs.append((e.logprob, e.top_logprobs))
            if e.finish != Finish.NONE:
                self.finish = e.finish
                self.status = e.status
                self.message = e.message
                if not self._lib_text:
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
