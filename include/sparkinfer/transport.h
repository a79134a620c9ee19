/*
 * libsparkinfer — transport plugin ABI.
 *
 * A transport moves bytes between the ranks of a cluster: point-to-point send/recv, all-reduce
 * (sum) and all-gather, barrier, abort. The built-in transports (tcp, nccl, verbs) implement
 * exactly this vtable; a third-party transport is a shared object exporting, for each ABI version
 * N it implements,
 *
 *     const spk_transport *spk_transport_plugin_vN(void);   (today: spk_transport_plugin_v1)
 *
 * returning a vtable whose abi_version is N (NCCL's net plugins export ncclNetPlugin_vN the same
 * way). The library takes the newest version it knows that the plugin exports, so an old plugin
 * keeps loading in newer libraries, and a new one in older libraries if it also exports the older
 * symbols.
 *
 * which the library dlopen()s when the cluster config names it: either an absolute path
 * (transport = "/path/plugin.so") or a bare "NAME.so" installed in the library's plugin directory
 * (<libdir>/sparkinfer/plugins of the install prefix). Relative paths are refused
 * (SPK_ERR_INVALID_ARG); nothing is loaded through the current directory or LD_LIBRARY_PATH.
 * NCCL's net plugins are the model.
 *
 * Versioning (the ABI promise for plugins):
 *  - `name` and `abi_version` are the first two fields and never move.
 *  - New methods are only ever appended; a method added in version N is read by the library only
 *    when the plugin's abi_version >= N. The library accepts every version from 1 up to
 *    SPK_TRANSPORT_ABI_VERSION and refuses newer ones with SPK_ERR_VERSION.
 *  - Structs the library passes in (spk_transport_init_params, spk_transport_bootstrap) start with
 *    `struct_size`; a plugin must read only min(struct_size, sizeof what it was built with) bytes.
 *
 * Lifecycle: the library calls init() once per communicator with a bootstrap through which the
 * ranks exchange connection info (TCP data ports, NCCL unique id, verbs QP numbers and GIDs) over
 * the cluster's authenticated control plane. Every rank of the bootstrap calls init() collectively.
 * The comm is used for data calls, then finalize() frees it.
 *
 * Errors: every method returns an spk_status. Lost peers are SPK_ERR_PEER_LOST (message names the
 * rank and address), deadlines are SPK_ERR_TIMEOUT, abort() makes calls return SPK_ERR_CANCELLED
 * (or SPK_ERR_PEER_LOST if a peer was lost first), other network failures SPK_ERR_TRANSPORT.
 * A plugin reports the detail through params->set_error (which records the calling thread's
 * message and returns the status). After an error other than INVALID_ARG/UNSUPPORTED a comm is
 * broken: every later data call fails fast with the same status; only abort() and finalize()
 * remain useful.
 *
 * Threads: data calls (send, recv, sendrecv, allreduce, allgather, barrier, split, the
 * nonblocking calls) on one comm must not run concurrently with each other; distinct comms
 * (including ones made by split()) may be used concurrently from different threads. abort() is
 * safe from any thread at any time before finalize(). finalize() must not race with any call.
 */
#ifndef SPARKINFER_TRANSPORT_H
#define SPARKINFER_TRANSPORT_H

#include <stddef.h>
#include <stdint.h>

#include "sparkinfer/sparkinfer.h"

#ifdef __cplusplus
extern "C" {
#endif

/** ABI version of this header. Version 1 is the method set below. */
#define SPK_TRANSPORT_ABI_VERSION 1

/** Name of the function a plugin .so exports for this header's version (returns its static
 *  vtable): SPK_TRANSPORT_PLUGIN_SYMBOL_PREFIX followed by the version number in decimal. */
#define SPK_TRANSPORT_PLUGIN_SYMBOL "spk_transport_plugin_v1"
#define SPK_TRANSPORT_PLUGIN_SYMBOL_PREFIX "spk_transport_plugin_v"

/** Memory kinds; `mem_flags` of a transport is the OR of those it accepts in data calls. */
#define SPK_TRANSPORT_MEM_HOST 1u   /**< ordinary host memory (malloc, mmap, pinned) */
#define SPK_TRANSPORT_MEM_CUDA 2u   /**< CUDA device memory (cudaMalloc) */

/** Element types for all-reduce; numbers equal the library's tensor type ids. */
typedef enum spk_transport_dtype {
    SPK_TRANSPORT_F32 = 0,          /**< IEEE binary32 */
    SPK_TRANSPORT_F16 = 1,          /**< IEEE binary16 (raw uint16 bits) */
    SPK_TRANSPORT_BF16 = 30         /**< bfloat16 (raw uint16 bits) */
} spk_transport_dtype;

/**
 * How the ranks of a communicator talk before the transport has its own connections. Provided by
 * the library (backed by the authenticated control plane) or, in tests, by a test harness.
 * Collective: every rank of the group calls allgather/barrier in the same order.
 */
typedef struct spk_transport_bootstrap {
    size_t struct_size;     /**< sizeof(spk_transport_bootstrap) of the provider */
    int rank;               /**< this rank in [0, world_size) */
    int world_size;         /**< ranks in the group, >= 1 */
    void *ctx;              /**< passed back to the functions below */
    /**
     * Gather `bytes_per_rank` bytes from every rank: on return all[r*bytes_per_rank ...] holds
     * rank r's `mine` (including this rank's own). Every rank passes the same bytes_per_rank.
     * Errors: TIMEOUT after timeout_ms (-1: the provider's default), PEER_LOST, INVALID_ARG.
     */
    spk_status (*allgather)(void *ctx, const void *mine, void *all, size_t bytes_per_rank,
                            int timeout_ms);
    /** Return when every rank has entered. Errors as allgather. */
    spk_status (*barrier)(void *ctx, int timeout_ms);
    /**
     * Per-cluster secret nonce (same bytes on every rank, fresh per cluster open, never sent in
     * clear by the library). A transport that opens its own connections puts proof of it in its
     * hello so stray or foreign connections are rejected. May be NULL with length 0.
     */
    const uint8_t *cluster_nonce;
    size_t cluster_nonce_len;
    /**
     * Numeric local address ("10.0.0.2", "::1") this rank's control connection uses; a transport
     * binds its data listeners there. NULL: any address (the transport decides).
     */
    const char *local_addr;
} spk_transport_bootstrap;

/** Parameters of init(). Always set struct_size = sizeof(spk_transport_init_params). */
typedef struct spk_transport_init_params {
    size_t struct_size;
    const spk_transport_bootstrap *bootstrap;  /**< valid only during init() */
    int timeout_ms;         /**< default deadline of every blocking call (> 0) */
    int cuda_device;        /**< CUDA device ordinal for device memory; -1: none */
    const char *options;    /**< transport-specific "key=value;key=value", or NULL */
    /**
     * Record `msg` as the calling thread's error detail and return `st` (always non-NULL; the
     * library's spk_last_error() shows it). Callable from any thread.
     */
    spk_status (*set_error)(spk_status st, const char *msg);
    /** Log a line (no trailing newline) through the library's sink. Non-NULL; any thread. */
    void (*log)(spk_log_level level, const char *msg);
} spk_transport_init_params;

/** A connected communicator of one transport. Opaque, owned by the transport. */
typedef struct spk_transport_comm spk_transport_comm;

/** An in-flight nonblocking operation. Opaque. */
typedef struct spk_transport_request spk_transport_request;

/**
 * The vtable. Methods not marked optional are mandatory at the version they were added.
 * `timeout_ms` arguments: > 0 a deadline for this call, -1 the comm's default (init params).
 * `mem` arguments: one SPK_TRANSPORT_MEM_* value naming where `buf` lives; a kind not in
 * mem_flags is SPK_ERR_UNSUPPORTED.
 */
typedef struct spk_transport {
    /* ---- version 1 ---- */
    const char *name;       /**< "tcp", "nccl", "verbs", or the plugin's name */
    uint32_t abi_version;   /**< SPK_TRANSPORT_ABI_VERSION the plugin was built with */
    uint32_t mem_flags;     /**< SPK_TRANSPORT_MEM_* accepted by data calls */

    /**
     * Can this transport run on this machine (driver, device, library present)? Not collective,
     * cheap, thread-safe. SPK_OK, or SPK_ERR_UNSUPPORTED with the reason written to `why`
     * (NUL-terminated, at most why_cap bytes; `why` may be NULL). "auto" selection uses it.
     */
    spk_status (*probe)(char *why, size_t why_cap);

    /**
     * Connect this rank to the others (collective over params->bootstrap). On success *out is a
     * usable comm. Errors: INVALID_ARG, UNSUPPORTED (no device), TIMEOUT, PEER_LOST, AUTH (a peer
     * proved a different cluster nonce), TRANSPORT, NOMEM. On error *out is NULL and nothing is
     * left open; the other ranks' init fails too (by timeout at the latest).
     */
    spk_status (*init)(const spk_transport_init_params *params, spk_transport_comm **out);

    /** This rank's index and the group size of `comm`. Thread-safe. */
    int (*rank)(const spk_transport_comm *comm);
    int (*world_size)(const spk_transport_comm *comm);

    /**
     * Send `bytes` from `buf` to rank `peer`; returns when `buf` may be reused. The receiver
     * calls recv with the same byte count; messages between one pair arrive in order.
     * bytes == 0 is a no-op. Errors: INVALID_ARG (peer out of range or self), TIMEOUT,
     * PEER_LOST, CANCELLED (abort), TRANSPORT.
     */
    spk_status (*send)(spk_transport_comm *comm, int peer, const void *buf, size_t bytes,
                       unsigned mem, int timeout_ms);

    /** Receive exactly `bytes` from rank `peer` into `buf`. Errors as send. */
    spk_status (*recv)(spk_transport_comm *comm, int peer, void *buf, size_t bytes,
                       unsigned mem, int timeout_ms);

    /**
     * Send to `send_peer` and receive from `recv_peer` at the same time (full duplex, no
     * deadlock when both sides call it toward each other). Either side may be skipped with
     * bytes == 0. Errors as send.
     */
    spk_status (*sendrecv)(spk_transport_comm *comm, int send_peer, const void *sbuf,
                           size_t sbytes, int recv_peer, void *rbuf, size_t rbytes, unsigned mem,
                           int timeout_ms);

    /**
     * In-place sum over all ranks of `count` elements of `dtype` in `buf`; every rank ends with
     * the same bits. f16/bf16 are summed in float precision per element and rounded once per
     * reduction step. Collective. Errors as send, plus UNSUPPORTED for a dtype.
     */
    spk_status (*allreduce)(spk_transport_comm *comm, void *buf, size_t count,
                            spk_transport_dtype dtype, unsigned mem, int timeout_ms);

    /**
     * Gather `bytes_per_rank` from every rank: all[r*bytes_per_rank ...] = rank r's `mine`.
     * `mine` may point into `all` at this rank's slot. Collective. Errors as send.
     */
    spk_status (*allgather)(spk_transport_comm *comm, const void *mine, void *all,
                            size_t bytes_per_rank, unsigned mem, int timeout_ms);

    /** Return when every rank has entered. Collective. Errors as send. */
    spk_status (*barrier)(spk_transport_comm *comm, int timeout_ms);

    /**
     * Make a sub-communicator (MPI_Comm_split semantics): collective over all ranks of `comm`;
     * ranks with the same `color` (>= 0) form a group ordered by (`key`, old rank); color < 0
     * gives *out = NULL. The new comm is independent: it may be used concurrently with `comm`
     * from another thread. Optional (may be NULL): then the library uses a transport only for
     * the whole cluster.
     */
    spk_status (*split)(spk_transport_comm *comm, int color, int key,
                        spk_transport_comm **out, int timeout_ms);

    /**
     * Nonblocking send/recv: start the operation and return at once with *req. `buf` must stay
     * valid until test() reports completion. Optional (both NULL or both set, with test).
     */
    spk_status (*isend)(spk_transport_comm *comm, int peer, const void *buf, size_t bytes,
                        unsigned mem, spk_transport_request **req);
    spk_status (*irecv)(spk_transport_comm *comm, int peer, void *buf, size_t bytes,
                        unsigned mem, spk_transport_request **req);
    /**
     * Progress `req`; *done = 1 when complete (the request is then freed and must not be used
     * again). With timeout_ms 0 it only polls; otherwise waits at most timeout_ms. An error
     * frees the request too. Optional (with isend/irecv).
     */
    spk_status (*test)(spk_transport_comm *comm, spk_transport_request *req, int *done,
                       int timeout_ms);

    /**
     * Make every blocked and future data call on `comm` (and comms split from it) return
     * promptly with SPK_ERR_CANCELLED (PEER_LOST if a peer was already lost). Thread-safe,
     * callable at any time before finalize(), idempotent, never blocks for long.
     */
    void (*abort)(spk_transport_comm *comm);

    /**
     * Close connections and free `comm` (NULL is a no-op). Always returns, even with dead
     * peers; not collective (it does not wait for the others). Must not race with any other
     * call on `comm`; comms split from it must be finalized first.
     */
    spk_status (*finalize)(spk_transport_comm *comm);

    /* ---- version 2 and later: append here, read only if abi_version >= 2 ---- */
} spk_transport;

/** Signature of the function a plugin exports under SPK_TRANSPORT_PLUGIN_SYMBOL. */
typedef const spk_transport *(*spk_transport_plugin_fn)(void);

#ifdef __cplusplus
}
#endif

#endif /* SPARKINFER_TRANSPORT_H */
