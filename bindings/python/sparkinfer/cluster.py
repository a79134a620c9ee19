"""Cluster membership (spk_cluster_*)."""

import ctypes
from typing import Optional, Union

from . import _lib as _c
from ._base import _check, _cstr, _c_int, _error, _Handle, _lib, _live_clusters
from .errors import Status, make_error


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
                 peer_timeout_ms: Optional[int] = None, heartbeat_ms: Optional[int] = None,
                 unauthenticated_data: Optional[bool] = None):
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
        if unauthenticated_data is not None:  # trusted links only; every rank must agree
            cfg.unauthenticated_data = 1 if unauthenticated_data else 0
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
