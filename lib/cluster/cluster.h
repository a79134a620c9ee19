/*
 * Cluster membership: bootstrap, authenticated control plane, heartbeats (lib/cluster/).
 * This header is what the rest of the library may use of a cluster.
 *
 * Roles: rank 0 (the driver) sends commands; ranks 1..N-1 (workers) run spk_cluster_serve(),
 * which dispatches each command to the handler registered for its id and sends the reply back.
 * The control plane is a star (driver <-> each worker) over TCP, authenticated at join with the
 * cluster key; bulk data goes through the transport (spk_cluster_transport).
 *
 * Failure: once a peer is lost (closed, crashed, stopped answering for peer_timeout_ms) the
 * cluster is failed for good: every blocked and later call returns SPK_ERR_PEER_LOST with a
 * message naming the rank and its address, on every rank.
 */
#ifndef SPK_CLUSTER_CLUSTER_H
#define SPK_CLUSTER_CLUSTER_H

#include <stddef.h>
#include <stdint.h>

#include "sparkinfer/sparkinfer.h"
#include "sparkinfer/transport.h"

#if defined(__GNUC__)
#define SPK_CLUSTER_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define SPK_CLUSTER_PRINTF(a, b)
#endif

/* Compute threads configured for this rank (>= 1). */
int spk_cluster_n_threads(const spk_cluster *c);

/* Command ids below SPK_CLUSTER_CMD_USER are the cluster's own. */
#define SPK_CLUSTER_CMD_PING 0u  /* built in: the worker replies with the same bytes */
#define SPK_CLUSTER_CMD_USER 16u /* first id for other modules (model load, step, ...) */

/* Reply under construction, handed to a command handler. */
typedef struct spk_cluster_reply spk_cluster_reply;

/*
 * A worker's command handler, run on the thread inside spk_cluster_serve(). `data` (len bytes)
 * is valid during the call. The returned status (and, if not SPK_OK, this thread's error detail)
 * goes back to the driver with the reply data set by spk_cluster_reply_set(). A failing handler
 * does not stop serve(). The handler may use the transport and the collectives below.
 */
typedef spk_status (*spk_cluster_handler)(spk_cluster *c, uint32_t cmd_id, const void *data,
                                          size_t len, spk_cluster_reply *reply, void *user);

/* Register (fn non-NULL) or remove (fn NULL) the handler of `cmd_id` (>= SPK_CLUSTER_CMD_USER).
 * Thread-safe. */
spk_status spk_cluster_set_handler(spk_cluster *c, uint32_t cmd_id, spk_cluster_handler fn,
                                   void *user);

/*
 * Worker command loop: dispatch the driver's commands to the registered handlers until the
 * driver closes the cluster (SPK_OK) or the cluster fails (PEER_LOST, ...). STATE on rank 0.
 * The public spk_cluster_serve() registers the model's handlers and then runs this.
 */
spk_status spk_cluster_serve_loop(spk_cluster *c);

/* Set the reply payload (copied; at most SPK_PROTO_MAX_PAYLOAD - 1034 bytes). */
spk_status spk_cluster_reply_set(spk_cluster_reply *r, const void *data, size_t len);

/*
 * Driver: send command `cmd_id` with `len` bytes to worker `rank`. With want_reply, *req_id
 * identifies the reply for spk_cluster_command_wait (which must then be called). Thread-safe.
 * Errors: INVALID_ARG, STATE (not the driver), TOO_LONG, PEER_LOST.
 */
spk_status spk_cluster_command_send(spk_cluster *c, int rank, uint32_t cmd_id, const void *data,
                                    size_t len, int want_reply, uint32_t *req_id);

/*
 * Driver: wait up to timeout_ms (-1: forever, still ended by a lost peer) for the reply to
 * `req_id` from `rank`. Returns the worker's status (its message, prefixed with the rank, as the
 * error detail). On SPK_OK, *reply (malloc'd, caller frees; may be NULL) and *reply_len receive
 * the payload if the pointers are non-NULL. Errors: TIMEOUT, PEER_LOST, the worker's status.
 */
spk_status spk_cluster_command_wait(spk_cluster *c, int rank, uint32_t req_id, int timeout_ms,
                                    void **reply, size_t *reply_len);

/* send + wait. */
spk_status spk_cluster_call(spk_cluster *c, int rank, uint32_t cmd_id, const void *data,
                            size_t len, void **reply, size_t *reply_len, int timeout_ms);

/* Driver: run a command on every worker and wait for all replies; the first failing rank's
 * status and message (lowest rank first). */
spk_status spk_cluster_broadcast(spk_cluster *c, uint32_t cmd_id, const void *data, size_t len,
                                 int timeout_ms);

/*
 * Control-plane collectives: every rank calls them in the same order (workers from a handler or
 * around serve). allgather: all[r*n..] = rank r's `mine` (n bytes, same n everywhere,
 * n * world <= 16 MiB). timeout_ms -1: connect_timeout_ms. Errors: TIMEOUT, PEER_LOST,
 * INVALID_ARG (sizes differ between ranks: the cluster is then failed on every rank).
 */
spk_status spk_cluster_allgather(spk_cluster *c, const void *mine, void *all, size_t n,
                                 int timeout_ms);
spk_status spk_cluster_barrier(spk_cluster *c, int timeout_ms);

/* Sticky health: SPK_OK, or the failure (PEER_LOST ...) with its message as the error detail.
 * Never blocks. Thread-safe. */
spk_status spk_cluster_health(spk_cluster *c);

/* Block until the cluster fails or timeout_ms passes (-1: forever). Returns the failure status
 * (with its message), or SPK_ERR_TIMEOUT. Thread-safe. */
spk_status spk_cluster_wait_failure(spk_cluster *c, int timeout_ms);

/* The connected transport communicator and its vtable (NULL/NULL with world size 1 or with
 * transport "none", which keeps the cluster to its control plane). Owned by the cluster. */
spk_transport_comm *spk_cluster_transport(const spk_cluster *c, const spk_transport **vt);

/* Bootstrap interface over the control plane (valid while the cluster is open), for transports
 * connected by other modules (e.g. split groups). */
const spk_transport_bootstrap *spk_cluster_bootstrap(spk_cluster *c);

/*
 * The control inbox (frames received and not yet taken by a waiter) is bounded per peer: at most
 * SPK_CLUSTER_INBOX_MAX_FRAMES frames and SPK_CLUSTER_INBOX_MAX_BYTES payload bytes from one peer
 * may wait. A peer that sends more (frames nobody asked for) is treated as lost: the cluster fails
 * with PEER_LOST naming the rank and the limit, and the frame is not queued.
 */
#define SPK_CLUSTER_INBOX_MAX_FRAMES 1024u
#define SPK_CLUSTER_INBOX_MAX_BYTES (64u << 20)

typedef struct spk_cluster_inbox_stats {
    size_t frames;      /* frames waiting now, all peers */
    size_t bytes;       /* their payload bytes */
    size_t peak_bytes;  /* the most payload bytes ever waiting at once */
    uint64_t overruns;  /* frames refused because a peer was at its bound */
} spk_cluster_inbox_stats;

/* Snapshot of the inbox counters. Thread-safe. */
void spk_cluster_inbox_stats_get(spk_cluster *c, spk_cluster_inbox_stats *out);

/* Test hook: make this process advertise other versions in its VERSION message (0: real one).
 * The environment variable SPK_TEST_FAKE_VERSION="LIB[:PROTO]" does the same at open. */
void spk_cluster_test_fake_version(uint32_t lib_version, uint32_t proto_version);

/* Test hook: a joining worker of this process waits `ms` after the driver's VERSION before
 * sending its own (so tests can race two connections for one rank). 0: no wait. */
void spk_cluster_test_version_delay(int ms);

#endif
