"""Internals shared by the modules: the loaded library, argument checks that ctypes would not
do, and _Handle, which keeps a C handle alive while calls use it."""

import atexit
import ctypes
import os
import threading
import time
import weakref

from . import _lib as _c
from .errors import Status, make_error

_lib = _c.load()

_INT_MIN, _INT_MAX = -(1 << 31), (1 << 31) - 1
SLICE_MS = 100          # longest single wait inside the library


def _error(function, status):
    """The exception for a failed call; reads spk_last_error first (it is per-thread and only
    valid until the next library call on this thread)."""
    detail = _lib.spk_last_error()
    name = _lib.spk_status_str(status)
    return make_error(status, detail.decode("utf-8", "replace") if detail else "",
                      name.decode("utf-8", "replace") if name else None, function)


def status_name(status):
    """The library's static name of a status code (spk_status_str)."""
    return _lib.spk_status_str(int(status)).decode("utf-8", "replace")


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


def _free_all(handles):
    for h in list(handles):
        try:
            h.free(wait_s=2.0)
        except BaseException:
            pass


_at_exit = []   # functions run after the handles are freed (library.py adds the log reset)


@atexit.register
def _close_all_at_exit():
    # Free what is still open while the interpreter is fully alive (the engine threads are
    # joined here, not during finalization), then restore the default log sink.
    _free_all(_live_models)
    _free_all(_live_clusters)
    for fn in _at_exit:
        try:
            fn()
        except BaseException:
            pass
