/*
 * Private layout of spk_cluster, shared by the files of lib/cluster/ only (cluster.c: config,
 * open, close; join.c: bootstrap and handshake; ctrl.c: I/O thread, heartbeats, messages,
 * commands, collectives; bootstrap.c: the transport bridge). Nothing outside lib/cluster/.
 */
#ifndef SPK_CLUSTER_INTERNAL_H
#define SPK_CLUSTER_INTERNAL_H

#include <pthread.h>
#include <stdint.h>

#include "cluster/cluster.h"
#include "cluster/net.h"
#include "cluster/proto.h"
#include "transport/registry.h"

#define SPK_CLUSTER_KEY_CAP 1024
#define SPK_CLUSTER_KEY_MIN 16 /* shortest cluster key accepted (bytes) */
#define SPK_CLUSTER_FAIL_CAP 768

/* A received frame waiting in the inbox for whoever wants it. */
typedef struct spk_frame {
    struct spk_frame *next;
    int from;          /* rank that sent it */
    spk_proto_msg m;   /* pointer fields point into payload */
    uint8_t *payload;  /* owned */
} spk_frame;

/* The control connection to one peer (driver: one per worker; worker: only the driver). */
typedef struct spk_peer {
    int rank;
    int fd;                 /* -1 if none */
    char addr[SPK_NET_ADDR_CAP];
    pthread_mutex_t send_mu;
    uint64_t tx_seq;        /* last sequence number sent; under send_mu */
    uint64_t rx_seq;        /* last sequence number received; I/O thread (join before) */
    int64_t last_rx_ms;     /* I/O thread */
    uint8_t *rx;            /* partial frame bytes; I/O thread */
    size_t rx_len, rx_cap;
    uint8_t tx_key[SPK_PROTO_KEY_BYTES]; /* session keys from the handshake: seal what we send */
    uint8_t rx_key[SPK_PROTO_KEY_BYTES]; /* and check what the peer sends (proto.h) */
    int alive;              /* connection is up and trusted; under cluster mu */
    int eof;                /* the peer closed its side; under cluster mu */
    size_t inbox_frames;    /* frames from this peer waiting in the inbox; under cluster mu */
    size_t inbox_bytes;     /* their payload bytes; under cluster mu */
} spk_peer;

typedef struct spk_handler_entry {
    uint32_t cmd_id;
    spk_cluster_handler fn;
    void *user;
} spk_handler_entry;

struct spk_cluster {
    spk_cluster_config cfg;          /* strings below are owned copies */
    char coordinator[256];
    char host[256], port[16];
    char key[SPK_CLUSTER_KEY_CAP];
    size_t key_len;
    char transport_name[4096];
    int rank, world;
    uint32_t my_lib_version, my_proto_version; /* what this rank advertises (test hook) */

    spk_peer *peers;                 /* [world]; a worker uses only peers[0] */

    pthread_mutex_t mu;              /* guards everything below and peers[].alive/eof */
    pthread_cond_t cv;               /* signalled on every inbox/state change */
    spk_frame *inbox_head, *inbox_tail;
    spk_cluster_inbox_stats inbox;   /* totals over all peers (frames, bytes, peak, overruns) */
    spk_status fail;                 /* sticky cluster failure (SPK_OK while healthy) */
    char fail_msg[SPK_CLUSTER_FAIL_CAP];
    int shutdown_rx;                 /* worker: the driver closed the cluster */
    int closing;                     /* this rank is closing: EOFs are expected */
    int stop_io;
    uint32_t next_req_id;
    uint32_t barrier_round, ag_round; /* collective counters (serialized by callers) */
    spk_handler_entry *handlers;
    size_t n_handlers, cap_handlers;

    pthread_t io;
    int io_running;
    int wake[2];                     /* pipe that wakes the I/O thread */

    uint8_t session[SPK_PROTO_NONCE_BYTES];       /* per-open, from the driver's CHALLENGE */
    uint8_t cluster_nonce[SPK_PROTO_MAC_BYTES];   /* HMAC(key, session): never on the wire */
    char local_addr[SPK_NET_ADDR_CAP];

    spk_transport_handle th;         /* selected transport (vt NULL if none) */
    spk_transport_comm *comm;        /* connected communicator, or NULL */
    spk_transport_bootstrap bs;
};

/* join.c */
spk_status spk_cluster_join_driver(spk_cluster *c, int64_t deadline_ms);
spk_status spk_cluster_join_worker(spk_cluster *c, int64_t deadline_ms);
/* HMAC-SHA256 over (label, a, b, rank, world) with the cluster key (b may be NULL). */
void spk_cluster_mac(const spk_cluster *c, const char *label, const uint8_t *a, const uint8_t *b,
                     uint32_t rank, uint32_t world, uint8_t out[SPK_PROTO_MAC_BYTES]);

/* ctrl.c */
spk_status spk_cluster_io_start(spk_cluster *c);
void spk_cluster_io_stop(spk_cluster *c);
/* Send one frame to peer p (assigns the sequence number); a failed send loses the peer. */
spk_status spk_cluster_send(spk_cluster *c, spk_peer *p, spk_proto_msg *m);
/* Record a cluster failure (first one wins), wake waiters, and tell the other side(s). */
void spk_cluster_fail(spk_cluster *c, spk_status st, int rank, const char *fmt, ...)
    SPK_CLUSTER_PRINTF(4, 5);
/* Driver close: SHUTDOWN to every live worker and wait (bounded) for them to hang up. */
void spk_cluster_say_goodbye(spk_cluster *c);

/* msg.c */
/* Take the first inbox frame of `type` from rank `from` (with req_id == `req_id` for REPLY), by
 * deadline_ms (-1: none). TIMEOUT names `what`; the cluster's failure wins. */
spk_status spk_cluster_take(spk_cluster *c, int from, uint16_t type, uint32_t req_id,
                            int64_t deadline_ms, const char *what, spk_frame **out);
void spk_cluster_frame_free(spk_frame *f);
void spk_cluster_inbox_free(spk_cluster *c);

/* launch_env.c */
/* Fill what the configuration left unset from the environment. SPK_RANK, SPK_WORLD_SIZE and
 * SPK_COORDINATOR win; then the first launcher whose rank variable is set: Open MPI
 * (OMPI_COMM_WORLD_RANK/SIZE), PMI (PMI_RANK/SIZE), Slurm (SLURM_PROCID, SLURM_STEP_NUM_TASKS or
 * SLURM_NTASKS); the coordinator from MASTER_ADDR[:MASTER_PORT, default 29500]; else rank 0,
 * world 1, 127.0.0.1:29500. INVALID_ARG naming the variable for a non-integer value, a launcher
 * rank without its size, or a too long address. Ranges are checked by the caller. */
typedef struct spk_launch_env {
    int rank;                /* in: < 0 to take it from the environment */
    int world_size;          /* in: <= 0 to take it from the environment */
    char coordinator[256];   /* in: "" to take it from the environment */
    const char *rank_from, *world_from, *coord_from; /* in: "config"; out: variable or "default" */
} spk_launch_env;
spk_status spk_cluster_launch_env(spk_launch_env *e);

/* bootstrap.c */
spk_status spk_cluster_transport_connect(spk_cluster *c);
void spk_cluster_transport_close(spk_cluster *c);

#endif
