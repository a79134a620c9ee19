/*
 * Device-independent parts of the verbs transport (lib/transport/): the connection record each
 * rank publishes per queue pair (explicit little-endian encoding) and the chunk/slot schedule.
 */
#ifndef SPK_TRANSPORT_VERBS_WIRE_H
#define SPK_TRANSPORT_VERBS_WIRE_H

#include <stddef.h>
#include <stdint.h>

#define SPK_VERBS_WIRE_VERSION 1
#define SPK_VERBS_CONN_LEN 48

/* What a peer needs to connect an RC queue pair to ours and write into our memory. */
typedef struct spk_verbs_conn {
    uint32_t qpn;       /* queue pair number (24 bits) */
    uint32_t psn;       /* initial packet sequence number (24 bits) */
    uint16_t lid;       /* InfiniBand LID; 0 on RoCE */
    uint8_t gid[16];    /* GID (RoCE / global routing) */
    uint8_t mtu;        /* enum ibv_mtu value of the port */
    uint32_t rkey;      /* remote key of the receive region */
    uint64_t addr;      /* address of the receive region */
} spk_verbs_conn;

/* Encode into exactly SPK_VERBS_CONN_LEN bytes (version byte first). */
void spk_verbs_conn_encode(const spk_verbs_conn *c, uint8_t out[SPK_VERBS_CONN_LEN]);
/* Decode; -1 on a wrong version, a qpn/psn over 24 bits or a bad mtu (accepts 1..5). */
int spk_verbs_conn_decode(const uint8_t in[SPK_VERBS_CONN_LEN], spk_verbs_conn *c);

/* Message k of a transfer of `bytes` in chunks of `chunk`: offset and length. Returns the number
 * of chunks (0 for bytes == 0; a 1-chunk transfer for bytes <= chunk). */
size_t spk_verbs_chunks(size_t bytes, size_t chunk);
void spk_verbs_chunk_at(size_t bytes, size_t chunk, size_t k, size_t *off, size_t *len);

/* wr_id layout of a work request: peer, direction, slot. */
uint64_t spk_verbs_wr_id(int peer, int is_recv, int slot);
void spk_verbs_wr_parse(uint64_t id, int *peer, int *is_recv, int *slot);

#endif
