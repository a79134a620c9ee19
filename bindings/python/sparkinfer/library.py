"""Library-wide calls: version, build information, status names, the log callback."""

import threading
from typing import Dict

from . import _lib as _c
from ._base import _at_exit, _c_int, _lib, status_name
from .types import LogLevel


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
    return status_name(status)


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


_at_exit.append(lambda: set_log_callback(None))
