/*
 * TCP data mesh (lib/transport/): every rank listens on an ephemeral port, ports travel through
 * the bootstrap, and each pair gets one socket after a mutual HMAC hello keyed by the cluster nonce.
 */
#ifndef SPK_TRANSPORT_TCP_MESH_H
#define SPK_TRANSPORT_TCP_MESH_H

#include <stddef.h>
#include <stdint.h>

#include "sparkinfer/transport.h"

#define SPK_TCP_MAGIC_HELLO 0x4c484b53u /* "SKHL" little-endian */
#define SPK_TCP_MAGIC_ACK 0x4b414b53u   /* "SKAK" */
#define SPK_TCP_PROTO 1u
#define SPK_TCP_COMM_ID_LEN 16
#define SPK_TCP_TAG_LEN 32
#define SPK_TCP_HELLO_BODY (5 * 4 + SPK_TCP_COMM_ID_LEN)
#define SPK_TCP_HELLO_LEN (SPK_TCP_HELLO_BODY + SPK_TCP_TAG_LEN)
#define SPK_TCP_ADDR_LEN 80

/* The fixed part of a hello or ack (the tag follows it on the wire). Little-endian. */
typedef struct spk_tcp_hello {
    uint32_t magic, proto, from, to, world;
    uint8_t comm_id[SPK_TCP_COMM_ID_LEN];
} spk_tcp_hello;

/* Encode the body (SPK_TCP_HELLO_BODY bytes) of `h` into `out`. */
void spk_tcp_hello_encode(const spk_tcp_hello *h, uint8_t *out);
/* Decode a body; -1 if `len` < SPK_TCP_HELLO_BODY. */
int spk_tcp_hello_decode(const uint8_t *in, size_t len, spk_tcp_hello *h);

/* Connection info each rank contributes to the bootstrap allgather. */
typedef struct spk_tcp_info {
    char host[64];          /* numeric address, NUL-terminated */
    uint16_t port;
    uint8_t comm_id[SPK_TCP_COMM_ID_LEN]; /* random; rank 0's names the communicator */
    uint8_t flags;          /* SPK_TCP_INFO_DATA_AUTH: this rank authenticates its data */
} spk_tcp_info;
#define SPK_TCP_INFO_LEN (64 + 2 + SPK_TCP_COMM_ID_LEN + 1)
#define SPK_TCP_INFO_DATA_AUTH 0x1u
void spk_tcp_info_encode(const spk_tcp_info *i, uint8_t out[SPK_TCP_INFO_LEN]);
/* -1 if the host is not NUL-terminated within its field. */
int spk_tcp_info_decode(const uint8_t in[SPK_TCP_INFO_LEN], spk_tcp_info *i);

typedef struct spk_tcp_mesh_cfg {
    const spk_transport_bootstrap *bs;
    const uint8_t *key;         /* cluster nonce (HMAC key), may be NULL with key_len 0 */
    size_t key_len;
    const char *bind_addr;      /* numeric; NULL: 127.0.0.1 */
    int sockbuf;                /* SO_SNDBUF/SO_RCVBUF; <= 0: kernel autotuning */
    int timeout_ms;
    spk_status (*set_error)(spk_status, const char *);
    void (*log)(spk_log_level, const char *);
    int data_auth;              /* 1: this rank authenticates data; every rank must agree */
    uint8_t *comm_id_out;       /* receives the communicator id (SPK_TCP_COMM_ID_LEN), or NULL */
} spk_tcp_mesh_cfg;

/* A data connection accepted but not yet authenticated (all that ever waits for its hello). */
typedef struct spk_tcp_pending {
    int fd;
    size_t got;
    uint64_t seq;                 /* accept order: lower is older */
    uint8_t buf[SPK_TCP_HELLO_LEN];
    char addr[SPK_TCP_ADDR_LEN];  /* "host:port" */
} spk_tcp_pending;

/*
 * Eviction policy when the pending table is full and a connection from `new_addr` arrives: the
 * index of the oldest (lowest seq) pending connection of the source address (host, port ignored)
 * with the most pending connections, the newcomer counted for its own source. Pending entries are
 * unauthenticated by construction: a connection leaves the table the moment its hello checks out.
 * -1 if n is 0.
 */
int spk_tcp_pending_victim(const spk_tcp_pending *pend, int n, const char *new_addr);

/*
 * Build the mesh (collective over cfg->bs). On success fds[p] is a connected, nonblocking socket
 * to rank p (fds[rank] = -1) and addrs[p] names it ("host:port"). Stray or foreign connections to
 * the listener are logged and dropped. Errors: TIMEOUT, PEER_LOST, IO, AUTH, INVALID_ARG.
 * On error no descriptor is left open.
 */
spk_status spk_tcp_mesh_connect(const spk_tcp_mesh_cfg *cfg, int *fds, char (*addrs)[SPK_TCP_ADDR_LEN]);

#endif
