"""Status codes and the exceptions that carry them."""

import enum


class Status(enum.IntEnum):
    """spk_status; the numbers are fixed forever by the C header."""
    OK = 0
    INVALID_ARG = 1
    NOMEM = 2
    IO = 3
    FORMAT = 4
    UNSUPPORTED = 5
    TIMEOUT = 6
    PEER_LOST = 7
    AUTH = 8
    VERSION = 9
    BUSY = 10
    NOT_FOUND = 11
    STATE = 12
    CANCELLED = 13
    INTERNAL = 14
    TRANSPORT = 15
    TOO_LONG = 16


class SparkinferError(Exception):
    """A libsparkinfer call failed.

    Attributes:
        status: the :class:`Status` (an int for a code newer than these bindings).
        status_str: the library's name for it (``spk_status_str``).
        message: the library's detail message (``spk_last_error`` on the failing thread), or a
            message from the bindings when the error was found before calling the library.
        function: the C function (or Python operation) that failed, if known.
    """

    def __init__(self, status, message="", status_str=None, function=None):
        try:
            status = Status(status)
        except ValueError:
            status = int(status)
        self.status = status
        self.status_str = status_str if status_str is not None else _default_name(status)
        self.message = message or ""
        self.function = function
        super().__init__(status, self.message)

    def __str__(self):
        head = "%s: " % self.function if self.function else ""
        detail = ": " + self.message if self.message else ""
        return "%s%s (status %d)%s" % (head, self.status_str, int(self.status), detail)

    def __repr__(self):
        return "%s(status=%d, message=%r)" % (type(self).__name__, int(self.status), self.message)

    def __reduce__(self):
        return (self.__class__, (int(self.status), self.message, self.status_str, self.function))


def _default_name(status):
    try:
        return Status(status).name.lower().replace("_", " ")
    except ValueError:
        return "status %d" % int(status)


class InvalidArgument(SparkinferError, ValueError):
    """SPK_ERR_INVALID_ARG: NULL pointer, bad size, value out of range."""


class NoMemory(SparkinferError, MemoryError):
    """SPK_ERR_NOMEM."""


class IOFailure(SparkinferError):
    """SPK_ERR_IO: a file or socket operation failed (e.g. the model file does not exist)."""


class FormatError(SparkinferError):
    """SPK_ERR_FORMAT: malformed model file or network message."""


class Unsupported(SparkinferError):
    """SPK_ERR_UNSUPPORTED: feature, type or layout not supported."""


class Timeout(SparkinferError):
    """SPK_ERR_TIMEOUT: a deadline passed."""


class PeerLost(SparkinferError):
    """SPK_ERR_PEER_LOST: a cluster peer died or stopped answering."""


class AuthError(SparkinferError):
    """SPK_ERR_AUTH: cluster key check failed."""


class VersionMismatch(SparkinferError):
    """SPK_ERR_VERSION: library or protocol version mismatch between ranks."""


class Busy(SparkinferError):
    """SPK_ERR_BUSY: the request queue is full; retry later."""


class NotFound(SparkinferError, LookupError):
    """SPK_ERR_NOT_FOUND: unknown id, key or name."""


class StateError(SparkinferError):
    """SPK_ERR_STATE: call not valid in the handle's current state (e.g. serve() on rank 0)."""


class Cancelled(SparkinferError):
    """SPK_ERR_CANCELLED."""


class InternalError(SparkinferError):
    """SPK_ERR_INTERNAL: a bug in the library."""


class TransportError(SparkinferError):
    """SPK_ERR_TRANSPORT: transport failure other than a lost peer."""


class TooLong(SparkinferError):
    """SPK_ERR_TOO_LONG: input longer than a limit (e.g. a prompt longer than the context)."""


_BY_STATUS = {
    Status.INVALID_ARG: InvalidArgument,
    Status.NOMEM: NoMemory,
    Status.IO: IOFailure,
    Status.FORMAT: FormatError,
    Status.UNSUPPORTED: Unsupported,
    Status.TIMEOUT: Timeout,
    Status.PEER_LOST: PeerLost,
    Status.AUTH: AuthError,
    Status.VERSION: VersionMismatch,
    Status.BUSY: Busy,
    Status.NOT_FOUND: NotFound,
    Status.STATE: StateError,
    Status.CANCELLED: Cancelled,
    Status.INTERNAL: InternalError,
    Status.TRANSPORT: TransportError,
    Status.TOO_LONG: TooLong,
}


def error_class(status):
    """The exception class for a status code (SparkinferError for unknown codes)."""
    try:
        return _BY_STATUS.get(Status(status), SparkinferError)
    except ValueError:
        return SparkinferError


def make_error(status, message="", status_str=None, function=None):
    return error_class(status)(status, message, status_str, function)
