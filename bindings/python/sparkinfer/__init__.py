"""sparkinfer: Python bindings (ctypes) for libsparkinfer.

    import sparkinfer
    with sparkinfer.Model("SmolLM2-135M-Instruct.Q4_1.gguf") as m:
        prompt = m.chat([{"role": "user", "content": "Hello!"}])
        for piece in m.generate(prompt, max_tokens=64, temperature=0):
            print(piece, end="", flush=True)

The library is loaded from $SPARKINFER_LIB, else ctypes.util.find_library("sparkinfer"), else
libsparkinfer.so.0 on the loader path. Every failing call raises a SparkinferError subclass
carrying the status code, the library's name for it and its detail message. Thread rules are
in the docstring of sparkinfer.model.
"""

from ._lib import HEADER_VERSION_STRING
from .cluster import Cluster
from .library import build_info, set_log_callback, status_str, version, version_number
from .model import Model
from .stream import Detokenizer, Generation
from .types import Event, Finish, LogLevel, ModelInfo, ModelStats, Output, RankStats, Request
from .errors import (AuthError, Busy, Cancelled, FormatError, InternalError, InvalidArgument, IOFailure,
                     NoMemory, NotFound, PeerLost, SparkinferError, StateError, Status, Timeout, TooLong,
                     TransportError, Unsupported, VersionMismatch, error_class)

__version__ = HEADER_VERSION_STRING

__all__ = [
    "Cluster", "Detokenizer", "Event", "Finish", "Generation", "LogLevel", "Model", "ModelInfo", "ModelStats", "Output", "RankStats",
    "Request", "build_info", "set_log_callback", "status_str", "version", "version_number",
    "AuthError", "Busy", "Cancelled", "FormatError", "InternalError", "InvalidArgument", "IOFailure",
    "NoMemory", "NotFound", "PeerLost", "SparkinferError", "StateError", "Status", "Timeout", "TooLong",
    "TransportError", "Unsupported", "VersionMismatch", "error_class",
]
