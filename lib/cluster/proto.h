/*
 * Control-plane wire protocol (lib/cluster/): frame header, message payloads, explicit
 * little-endian encode/decode. Pure functions on byte buffers: no sockets, no allocation.
 *
 * Frame = 24-byte header + payload, all integers little-endian:
 *   off  0  u32 magic      SPK_PROTO_MAGIC ("SPKC" in memory order)
 *   off  4  u16 version    wire-protocol version of the sender
 *   off  6  u16 type       one of spk_proto_type (allow-list)
 *   off  8  u32 flags      per-type allowed bits only
 *   off 12  u32 length     payload bytes, within the type's [min, max] and <= SPK_PROTO_MAX_PAYLOAD
 *   off 16  u64 seq        per-connection, per-direction frame counter starting at 1
 * The header layout and the CHALLENGE/HELLO/RESPONSE/VERSION payloads are frozen across protocol
 * versions so that two different versions can still tell each other what they are.
 *
 * Sealed frames (flag SPK_PROTO_F_SEALED, protocol 2): every frame after the handshake's
 * CHALLENGE/HELLO/RESPONSE ends with a SPK_PROTO_TAG_BYTES tag, counted in `length`:
 *   tag = BLAKE2b-128(key = the sender's per-direction session key, header || payload)
 * The header covers the type, flags, length and the sequence number, so a flipped bit, a replayed,
 * reordered, dropped or spliced frame is refused by the receiver (which also checks seq).
 */
#ifndef SPK_CLUSTER_PROTO_H
#define SPK_CLUSTER_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include "sparkinfer/sparkinfer.h"

#define SPK_PROTO_MAGIC 0x434B5053u /* bytes 'S' 'P' 'K' 'C' */
#define SPK_PROTO_VERSION 2u
#define SPK_PROTO_HEADER_SIZE 24u
/* Largest payload of any frame. Bulk data goes through a transport, not the control plane. */
#define SPK_PROTO_MAX_PAYLOAD (16u << 20)
#define SPK_PROTO_NONCE_BYTES 32u
#define SPK_PROTO_MAC_BYTES 32u
#define SPK_PROTO_TAG_BYTES 16u /* tag at the end of a sealed frame */
#define SPK_PROTO_KEY_BYTES 32u /* per-direction session key */
/* Longest error/reply message text carried on the wire. */
#define SPK_PROTO_MAX_MSG 1024u
/* Largest world size the protocol accepts. */
#define SPK_PROTO_MAX_RANKS 4096u

typedef enum spk_proto_type {
    SPK_MSG_CHALLENGE = 1,  /* driver -> joiner: nonces, first frame on a connection */
    SPK_MSG_HELLO = 2,      /* joiner -> driver: rank, world size, nonce, proof of key */
    SPK_MSG_RESPONSE = 3,   /* driver -> joiner: driver's proof of key */
    SPK_MSG_VERSION = 4,    /* both ways: library and protocol versions */
    SPK_MSG_HEARTBEAT = 5,  /* both ways: liveness */
    SPK_MSG_SHUTDOWN = 6,   /* driver -> worker: cluster closes; worker -> driver: leaving */
    SPK_MSG_ERROR = 7,      /* both ways: status, rank concerned, message */
    SPK_MSG_ALLGATHER = 8,  /* bootstrap all-gather for transports (TRANSPORT_ALLGATHER) */
    SPK_MSG_BARRIER = 9,    /* control-plane barrier */
    SPK_MSG_COMMAND = 10,   /* driver -> worker: command id, request id, payload */
    SPK_MSG_REPLY = 11,     /* worker -> driver: request id, status, message, payload */
    SPK_MSG_TYPE_END        /* one past the last type; not a type */
} spk_proto_type;

/* Flag bits. */
#define SPK_PROTO_F_KEYED 0x1u   /* CHALLENGE/HELLO: the sender has a cluster key configured */
#define SPK_PROTO_F_NOREPLY 0x1u /* COMMAND: the driver does not want a REPLY */
/* Every type after RESPONSE: the payload ends with a session-key tag (see above). */
#define SPK_PROTO_F_SEALED 0x80000000u

typedef struct spk_proto_header {
    uint32_t magic;
    uint16_t version;
    uint16_t type;
    uint32_t flags;
    uint32_t length;
    uint64_t seq;
} spk_proto_header;

/* A decoded message. Pointer fields point into the decoded buffer (no copies). */
typedef struct spk_proto_msg {
    spk_proto_header h;
    union {
        struct {
            uint8_t nonce[SPK_PROTO_NONCE_BYTES];   /* fresh per connection */
            uint8_t session[SPK_PROTO_NONCE_BYTES]; /* fresh per cluster open */
        } challenge;
        struct {
            uint32_t rank, world_size;
            uint8_t nonce[SPK_PROTO_NONCE_BYTES];
            uint8_t mac[SPK_PROTO_MAC_BYTES];
        } hello;
        struct {
            uint8_t mac[SPK_PROTO_MAC_BYTES];
        } response;
        struct {
            uint32_t lib_version, proto_version;
        } version;
        struct {
            uint64_t time_ns;
        } heartbeat;
        struct {
            uint32_t status; /* 1 .. SPK_STATUS_COUNT-1 */
            uint32_t rank;   /* rank concerned; SPK_PROTO_NO_RANK if none */
            const char *msg; /* not NUL-terminated */
            uint32_t msg_len;
        } error;
        struct {
            uint32_t round, item_len, n_items;
            const uint8_t *data; /* item_len * n_items bytes */
        } allgather;
        struct {
            uint32_t round;
        } barrier;
        struct {
            uint32_t cmd_id, req_id;
            const uint8_t *data;
            uint32_t len;
        } command;
        struct {
            uint32_t req_id, status; /* status 0 .. SPK_STATUS_COUNT-1 */
            const char *msg;
            uint32_t msg_len;
            const uint8_t *data;
            uint32_t len;
        } reply;
    } u;
} spk_proto_msg;

#define SPK_PROTO_NO_RANK 0xFFFFFFFFu

/* Explicit little-endian stores/loads. */
void spk_le_put16(uint8_t *p, uint16_t v);
void spk_le_put32(uint8_t *p, uint32_t v);
void spk_le_put64(uint8_t *p, uint64_t v);
uint16_t spk_le_get16(const uint8_t *p);
uint32_t spk_le_get32(const uint8_t *p);
uint64_t spk_le_get64(const uint8_t *p);

/* Name of a message type ("HEARTBEAT"), "?" if unknown. */
const char *spk_proto_type_name(uint32_t type);

/*
 * Decode and validate a header from `n` >= SPK_PROTO_HEADER_SIZE bytes: magic, type in the
 * allow-list, only allowed flag bits, length within the type's bounds. The version is returned
 * as sent (checked by the connection layer, so that a peer of another version can still be told
 * apart from garbage). FORMAT with a message naming the bad field and value.
 */
spk_status spk_proto_decode_header(const uint8_t *buf, size_t n, spk_proto_header *h);

/* Write a header (magic and version are written as given). */
void spk_proto_encode_header(uint8_t out[SPK_PROTO_HEADER_SIZE], const spk_proto_header *h);

/*
 * Decode the payload of a frame whose header `h` has been validated; `payload` holds exactly
 * h->length bytes. Every field is bounds-checked. On success m->h = *h.
 */
spk_status spk_proto_decode_payload(const spk_proto_header *h, const uint8_t *payload,
                                    spk_proto_msg *m);

/*
 * Decode one frame from the start of `buf` (n bytes; any bytes at all). SPK_OK with *m filled
 * and *used = frame size; SPK_OK with *used = 0 if the bytes so far are a valid but incomplete
 * frame (read more); FORMAT if malformed (never reads outside buf[0..n)).
 */
spk_status spk_proto_decode(const uint8_t *buf, size_t n, spk_proto_msg *m, size_t *used);

/*
 * Sealing. spk_proto_encode of a message with SPK_PROTO_F_SEALED in h.flags leaves a zero tag at
 * the end of the frame; spk_proto_seal fills it. spk_proto_verify checks the tag of a whole
 * sealed frame (`n` bytes, header included): 0 if authentic, -1 otherwise (not sealed, too
 * short, or tag mismatch; constant time in the tag comparison).
 */
void spk_proto_seal(uint8_t *frame, size_t n, const uint8_t key[SPK_PROTO_KEY_BYTES]);
int spk_proto_verify(const uint8_t *frame, size_t n, const uint8_t key[SPK_PROTO_KEY_BYTES]);

/*
 * Copy peer-provided text for a log line or an error message: at most `n` bytes of `in`, every
 * byte outside printable ASCII replaced by '?', truncated to fit `cap` (NUL-terminated).
 */
void spk_proto_sanitize(char *out, size_t cap, const char *in, size_t n);

/*
 * Encode header + payload of `m` into `out` (capacity `cap`). The header's length is computed;
 * magic is SPK_PROTO_MAGIC; version is m->h.version (0 means SPK_PROTO_VERSION). Checks the same
 * bounds the decoder checks. *n = bytes written. Errors: INVALID_ARG (fields out of bounds),
 * TOO_LONG (cap too small or payload above the maximum).
 */
spk_status spk_proto_encode(const spk_proto_msg *m, uint8_t *out, size_t cap, size_t *n);

#endif
