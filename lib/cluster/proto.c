/* Control-plane wire protocol: header and payload codecs with explicit bounds checks. */
#include "cluster/proto.h"

#include <sodium.h>
#include <string.h>

#include "common/error.h"

void spk_le_put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

void spk_le_put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

void spk_le_put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

uint16_t spk_le_get16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

uint32_t spk_le_get32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

uint64_t spk_le_get64(const uint8_t *p)
{
    return (uint64_t)spk_le_get32(p) | ((uint64_t)spk_le_get32(p + 4) << 32);
}

/* Allow-list: per type, the allowed flag bits and payload length bounds. */
typedef struct type_rule {
    const char *name;
    uint32_t flags;
    uint32_t min_len, max_len;
} type_rule;

#define ERR_FIXED 10u   /* status u32, rank u32, msg_len u16 */
#define REPLY_FIXED 10u /* req_id u32, status u32, msg_len u16 */
#define AG_FIXED 12u    /* round, item_len, n_items */
#define CMD_FIXED 8u    /* cmd_id, req_id */

static const type_rule rules[SPK_MSG_TYPE_END] = {
    [SPK_MSG_CHALLENGE] = {"CHALLENGE", SPK_PROTO_F_KEYED, 2 * SPK_PROTO_NONCE_BYTES,
                           2 * SPK_PROTO_NONCE_BYTES},
    [SPK_MSG_HELLO] = {"HELLO", SPK_PROTO_F_KEYED, 8 + SPK_PROTO_NONCE_BYTES + SPK_PROTO_MAC_BYTES,
                       8 + SPK_PROTO_NONCE_BYTES + SPK_PROTO_MAC_BYTES},
    [SPK_MSG_RESPONSE] = {"RESPONSE", 0, SPK_PROTO_MAC_BYTES, SPK_PROTO_MAC_BYTES},
    /* VERSION may grow in later protocol versions: extra bytes are ignored. */
    [SPK_MSG_VERSION] = {"VERSION", 0, 8, 256},
    [SPK_MSG_HEARTBEAT] = {"HEARTBEAT", 0, 8, 8},
    [SPK_MSG_SHUTDOWN] = {"SHUTDOWN", 0, 0, 0},
    [SPK_MSG_ERROR] = {"ERROR", 0, ERR_FIXED, ERR_FIXED + SPK_PROTO_MAX_MSG},
    [SPK_MSG_ALLGATHER] = {"TRANSPORT_ALLGATHER", 0, AG_FIXED, SPK_PROTO_MAX_PAYLOAD},
    [SPK_MSG_BARRIER] = {"BARRIER", 0, 4, 4},
    [SPK_MSG_COMMAND] = {"COMMAND", SPK_PROTO_F_NOREPLY, CMD_FIXED, SPK_PROTO_MAX_PAYLOAD},
    [SPK_MSG_REPLY] = {"REPLY", 0, REPLY_FIXED, SPK_PROTO_MAX_PAYLOAD},
};

static const type_rule *rule_of(uint32_t type)
{
    if (type == 0 || type >= SPK_MSG_TYPE_END || !rules[type].name)
        return NULL;
    return &rules[type];
}

/* Flags allowed on `type`: its own, plus SEALED on every type after the handshake's first three. */
static uint32_t allowed_flags(uint32_t type, const type_rule *r)
{
    return r->flags | (type >= SPK_MSG_VERSION ? SPK_PROTO_F_SEALED : 0u);
}

/* Payload bytes before the tag. */
static uint32_t body_len(const spk_proto_header *h)
{
    return (h->flags & SPK_PROTO_F_SEALED) ? h->length - SPK_PROTO_TAG_BYTES : h->length;
}

const char *spk_proto_type_name(uint32_t type)
{
    const type_rule *r = rule_of(type);
    return r ? r->name : "?";
}

spk_status spk_proto_decode_header(const uint8_t *buf, size_t n, spk_proto_header *h)
{
    if (!buf || !h || n < SPK_PROTO_HEADER_SIZE)
        return spk_err(SPK_ERR_FORMAT, "frame header: %zu bytes, need %u", n,
                       SPK_PROTO_HEADER_SIZE);
    h->magic = spk_le_get32(buf);
    h->version = spk_le_get16(buf + 4);
    h->type = spk_le_get16(buf + 6);
    h->flags = spk_le_get32(buf + 8);
    h->length = spk_le_get32(buf + 12);
    h->seq = spk_le_get64(buf + 16);
    if (h->magic != SPK_PROTO_MAGIC)
        return spk_err(SPK_ERR_FORMAT, "frame header: bad magic 0x%08x (expected 0x%08x)", h->magic,
                       SPK_PROTO_MAGIC);
    if (h->version == 0)
        return spk_err(SPK_ERR_FORMAT, "frame header: protocol version 0");
    const type_rule *r = rule_of(h->type);
    if (!r)
        return spk_err(SPK_ERR_FORMAT, "frame header: unknown message type %u", h->type);
    if (h->flags & ~allowed_flags(h->type, r))
        return spk_err(SPK_ERR_FORMAT, "frame header: %s with unknown flags 0x%x", r->name,
                       h->flags & ~allowed_flags(h->type, r));
    if ((h->flags & SPK_PROTO_F_SEALED) && h->length < SPK_PROTO_TAG_BYTES)
        return spk_err(SPK_ERR_FORMAT, "frame header: sealed %s of %u bytes has no room for its "
                       "%u-byte tag", r->name, h->length, SPK_PROTO_TAG_BYTES);
    const uint32_t body = body_len(h);
    if (body < r->min_len || body > r->max_len)
        return spk_err(SPK_ERR_FORMAT, "frame header: %s payload of %u bytes (allowed %u..%u)",
                       r->name, body, r->min_len, r->max_len);
    return SPK_OK;
}

void spk_proto_encode_header(uint8_t out[SPK_PROTO_HEADER_SIZE], const spk_proto_header *h)
{
    spk_le_put32(out, h->magic);
    spk_le_put16(out + 4, h->version);
    spk_le_put16(out + 6, h->type);
    spk_le_put32(out + 8, h->flags);
    spk_le_put32(out + 12, h->length);
    spk_le_put64(out + 16, h->seq);
}

spk_status spk_proto_decode_payload(const spk_proto_header *h, const uint8_t *p, spk_proto_msg *m)
{
    const type_rule *r = rule_of(h->type);
    if (!r || ((h->flags & SPK_PROTO_F_SEALED) && h->length < SPK_PROTO_TAG_BYTES))
        return spk_err(SPK_ERR_FORMAT, "frame payload: header not validated (type %u, %u bytes)",
                       h->type, h->length);
    const uint32_t n = body_len(h);
    if (n < r->min_len || n > r->max_len || (n && !p))
        return spk_err(SPK_ERR_FORMAT, "frame payload: header not validated (type %u, %u bytes)",
                       h->type, n);
    memset(m, 0, sizeof *m);
    m->h = *h;
    switch ((spk_proto_type)h->type) {
    case SPK_MSG_CHALLENGE:
        memcpy(m->u.challenge.nonce, p, SPK_PROTO_NONCE_BYTES);
        memcpy(m->u.challenge.session, p + SPK_PROTO_NONCE_BYTES, SPK_PROTO_NONCE_BYTES);
        break;
    case SPK_MSG_HELLO:
        m->u.hello.rank = spk_le_get32(p);
        m->u.hello.world_size = spk_le_get32(p + 4);
        memcpy(m->u.hello.nonce, p + 8, SPK_PROTO_NONCE_BYTES);
        memcpy(m->u.hello.mac, p + 8 + SPK_PROTO_NONCE_BYTES, SPK_PROTO_MAC_BYTES);
        if (m->u.hello.world_size < 2 || m->u.hello.world_size > SPK_PROTO_MAX_RANKS ||
            m->u.hello.rank == 0 || m->u.hello.rank >= m->u.hello.world_size)
            return spk_err(SPK_ERR_FORMAT, "HELLO: rank %u of world size %u out of range (1..%u)",
                           m->u.hello.rank, m->u.hello.world_size, SPK_PROTO_MAX_RANKS - 1);
        break;
    case SPK_MSG_RESPONSE:
        memcpy(m->u.response.mac, p, SPK_PROTO_MAC_BYTES);
        break;
    case SPK_MSG_VERSION:
        m->u.version.lib_version = spk_le_get32(p);
        m->u.version.proto_version = spk_le_get32(p + 4);
        break;
    case SPK_MSG_HEARTBEAT:
        m->u.heartbeat.time_ns = spk_le_get64(p);
        break;
    case SPK_MSG_SHUTDOWN:
        break;
    case SPK_MSG_ERROR: {
        uint32_t st = spk_le_get32(p), ml = spk_le_get16(p + 8);
        if (st == SPK_OK || st >= SPK_STATUS_COUNT)
            return spk_err(SPK_ERR_FORMAT, "ERROR: status %u out of range (1..%d)", st,
                           SPK_STATUS_COUNT - 1);
        if (ml > SPK_PROTO_MAX_MSG || ERR_FIXED + ml != n)
            return spk_err(SPK_ERR_FORMAT, "ERROR: message of %u bytes in a %u-byte payload", ml, n);
        m->u.error.status = st;
        m->u.error.rank = spk_le_get32(p + 4);
        m->u.error.msg = (const char *)(p + ERR_FIXED);
        m->u.error.msg_len = ml;
        break;
    }
    case SPK_MSG_ALLGATHER: {
        uint32_t il = spk_le_get32(p + 4), ni = spk_le_get32(p + 8);
        if (ni == 0 || ni > SPK_PROTO_MAX_RANKS)
            return spk_err(SPK_ERR_FORMAT, "TRANSPORT_ALLGATHER: %u items (allowed 1..%u)", ni,
                           SPK_PROTO_MAX_RANKS);
        if ((uint64_t)il * ni != (uint64_t)(n - AG_FIXED))
            return spk_err(SPK_ERR_FORMAT,
                           "TRANSPORT_ALLGATHER: %u items of %u bytes do not fill %u bytes", ni, il,
                           n - AG_FIXED);
        m->u.allgather.round = spk_le_get32(p);
        m->u.allgather.item_len = il;
        m->u.allgather.n_items = ni;
        m->u.allgather.data = p + AG_FIXED;
        break;
    }
    case SPK_MSG_BARRIER:
        m->u.barrier.round = spk_le_get32(p);
        break;
    case SPK_MSG_COMMAND:
        m->u.command.cmd_id = spk_le_get32(p);
        m->u.command.req_id = spk_le_get32(p + 4);
        m->u.command.data = p + CMD_FIXED;
        m->u.command.len = n - CMD_FIXED;
        break;
    case SPK_MSG_REPLY: {
        uint32_t st = spk_le_get32(p + 4), ml = spk_le_get16(p + 8);
        if (st >= SPK_STATUS_COUNT)
            return spk_err(SPK_ERR_FORMAT, "REPLY: status %u out of range (0..%d)", st,
                           SPK_STATUS_COUNT - 1);
        if (ml > SPK_PROTO_MAX_MSG || ml > n - REPLY_FIXED)
            return spk_err(SPK_ERR_FORMAT, "REPLY: message of %u bytes in a %u-byte payload", ml, n);
        m->u.reply.req_id = spk_le_get32(p);
        m->u.reply.status = st;
        m->u.reply.msg = (const char *)(p + REPLY_FIXED);
        m->u.reply.msg_len = ml;
        m->u.reply.data = p + REPLY_FIXED + ml;
        m->u.reply.len = n - REPLY_FIXED - ml;
        break;
    }
    case SPK_MSG_TYPE_END:
    default:
        return spk_err(SPK_ERR_FORMAT, "frame payload: unknown message type %u", h->type);
    }
    return SPK_OK;
}

spk_status spk_proto_decode(const uint8_t *buf, size_t n, spk_proto_msg *m, size_t *used)
{
    *used = 0;
    if (n < SPK_PROTO_HEADER_SIZE) {
        /* Reject a wrong magic as soon as its bytes are here, so garbage fails fast. */
        uint8_t magic[4];
        spk_le_put32(magic, SPK_PROTO_MAGIC);
        for (size_t i = 0; i < n && i < 4; i++)
            if (buf[i] != magic[i])
                return spk_err(SPK_ERR_FORMAT, "frame header: bad magic byte 0x%02x at offset %zu",
                               buf[i], i);
        return SPK_OK;
    }
    spk_proto_header h;
    spk_status st = spk_proto_decode_header(buf, n, &h);
    if (st != SPK_OK)
        return st;
    if (n - SPK_PROTO_HEADER_SIZE < h.length)
        return SPK_OK;
    st = spk_proto_decode_payload(&h, buf + SPK_PROTO_HEADER_SIZE, m);
    if (st != SPK_OK)
        return st;
    *used = SPK_PROTO_HEADER_SIZE + (size_t)h.length;
    return SPK_OK;
}

/* Payload size of m, or 0 and *bad set if a field is out of bounds. */
static uint64_t payload_size(const spk_proto_msg *m, const char **bad)
{
    *bad = NULL;
    switch ((spk_proto_type)m->h.type) {
    case SPK_MSG_CHALLENGE:
        return 2 * SPK_PROTO_NONCE_BYTES;
    case SPK_MSG_HELLO:
        if (m->u.hello.world_size < 2 || m->u.hello.world_size > SPK_PROTO_MAX_RANKS ||
            m->u.hello.rank == 0 || m->u.hello.rank >= m->u.hello.world_size)
            *bad = "rank or world size";
        return 8 + SPK_PROTO_NONCE_BYTES + SPK_PROTO_MAC_BYTES;
    case SPK_MSG_RESPONSE:
        return SPK_PROTO_MAC_BYTES;
    case SPK_MSG_VERSION:
    case SPK_MSG_HEARTBEAT:
        return 8;
    case SPK_MSG_SHUTDOWN:
        return 0;
    case SPK_MSG_ERROR:
        if (m->u.error.msg_len > SPK_PROTO_MAX_MSG || (m->u.error.msg_len && !m->u.error.msg))
            *bad = "error message";
        if (m->u.error.status == SPK_OK || m->u.error.status >= SPK_STATUS_COUNT)
            *bad = "error status";
        return ERR_FIXED + (uint64_t)m->u.error.msg_len;
    case SPK_MSG_ALLGATHER:
        if (m->u.allgather.n_items == 0 || m->u.allgather.n_items > SPK_PROTO_MAX_RANKS ||
            (m->u.allgather.item_len && !m->u.allgather.data))
            *bad = "all-gather items";
        return AG_FIXED + (uint64_t)m->u.allgather.item_len * m->u.allgather.n_items;
    case SPK_MSG_BARRIER:
        return 4;
    case SPK_MSG_COMMAND:
        if (m->u.command.len && !m->u.command.data)
            *bad = "command data";
        return CMD_FIXED + (uint64_t)m->u.command.len;
    case SPK_MSG_REPLY:
        if (m->u.reply.msg_len > SPK_PROTO_MAX_MSG || (m->u.reply.msg_len && !m->u.reply.msg) ||
            (m->u.reply.len && !m->u.reply.data))
            *bad = "reply message or data";
        if (m->u.reply.status >= SPK_STATUS_COUNT)
            *bad = "reply status";
        return REPLY_FIXED + (uint64_t)m->u.reply.msg_len + m->u.reply.len;
    case SPK_MSG_TYPE_END:
    default:
        *bad = "message type";
        return 0;
    }
}

spk_status spk_proto_encode(const spk_proto_msg *m, uint8_t *out, size_t cap, size_t *n)
{
    if (n)
        *n = 0;
    if (!m || !out || !n)
        return spk_err(SPK_ERR_INVALID_ARG, "spk_proto_encode: NULL argument");
    const char *bad;
    uint64_t len = payload_size(m, &bad);
    if (bad)
        return spk_err(SPK_ERR_INVALID_ARG, "encode %s: bad %s", spk_proto_type_name(m->h.type),
                       bad);
    if (len > SPK_PROTO_MAX_PAYLOAD)
        return spk_err(SPK_ERR_TOO_LONG, "encode %s: payload of %llu bytes exceeds the maximum %u",
                       spk_proto_type_name(m->h.type), (unsigned long long)len,
                       SPK_PROTO_MAX_PAYLOAD);
    const uint32_t tag = (m->h.flags & SPK_PROTO_F_SEALED) ? SPK_PROTO_TAG_BYTES : 0u;
    if (cap < SPK_PROTO_HEADER_SIZE + len + tag)
        return spk_err(SPK_ERR_TOO_LONG, "encode %s: %llu bytes do not fit in %zu",
                       spk_proto_type_name(m->h.type),
                       (unsigned long long)(SPK_PROTO_HEADER_SIZE + len + tag), cap);
    spk_proto_header h = m->h;
    h.magic = SPK_PROTO_MAGIC;
    if (h.version == 0)
        h.version = SPK_PROTO_VERSION;
    h.length = (uint32_t)len;
    const type_rule *r = rule_of(h.type);
    if (h.flags & ~allowed_flags(h.type, r))
        return spk_err(SPK_ERR_INVALID_ARG, "encode %s: flags 0x%x not allowed", r->name, h.flags);
    if (h.length < r->min_len || h.length > r->max_len)
        return spk_err(SPK_ERR_INVALID_ARG, "encode %s: payload of %u bytes (allowed %u..%u)",
                       r->name, h.length, r->min_len, r->max_len);
    h.length += tag;
    spk_proto_encode_header(out, &h);
    uint8_t *p = out + SPK_PROTO_HEADER_SIZE;
    switch ((spk_proto_type)h.type) {
    case SPK_MSG_CHALLENGE:
        memcpy(p, m->u.challenge.nonce, SPK_PROTO_NONCE_BYTES);
        memcpy(p + SPK_PROTO_NONCE_BYTES, m->u.challenge.session, SPK_PROTO_NONCE_BYTES);
        break;
    case SPK_MSG_HELLO:
        spk_le_put32(p, m->u.hello.rank);
        spk_le_put32(p + 4, m->u.hello.world_size);
        memcpy(p + 8, m->u.hello.nonce, SPK_PROTO_NONCE_BYTES);
        memcpy(p + 8 + SPK_PROTO_NONCE_BYTES, m->u.hello.mac, SPK_PROTO_MAC_BYTES);
        break;
    case SPK_MSG_RESPONSE:
        memcpy(p, m->u.response.mac, SPK_PROTO_MAC_BYTES);
        break;
    case SPK_MSG_VERSION:
        spk_le_put32(p, m->u.version.lib_version);
        spk_le_put32(p + 4, m->u.version.proto_version);
        break;
    case SPK_MSG_HEARTBEAT:
        spk_le_put64(p, m->u.heartbeat.time_ns);
        break;
    case SPK_MSG_SHUTDOWN:
        break;
    case SPK_MSG_ERROR:
        spk_le_put32(p, m->u.error.status);
        spk_le_put32(p + 4, m->u.error.rank);
        spk_le_put16(p + 8, (uint16_t)m->u.error.msg_len);
        if (m->u.error.msg_len)
            memcpy(p + ERR_FIXED, m->u.error.msg, m->u.error.msg_len);
        break;
    case SPK_MSG_ALLGATHER:
        spk_le_put32(p, m->u.allgather.round);
        spk_le_put32(p + 4, m->u.allgather.item_len);
        spk_le_put32(p + 8, m->u.allgather.n_items);
        if (len > AG_FIXED)
            memcpy(p + AG_FIXED, m->u.allgather.data, (size_t)(len - AG_FIXED));
        break;
    case SPK_MSG_BARRIER:
        spk_le_put32(p, m->u.barrier.round);
        break;
    case SPK_MSG_COMMAND:
        spk_le_put32(p, m->u.command.cmd_id);
        spk_le_put32(p + 4, m->u.command.req_id);
        if (m->u.command.len)
            memcpy(p + CMD_FIXED, m->u.command.data, m->u.command.len);
        break;
    case SPK_MSG_REPLY:
        spk_le_put32(p, m->u.reply.req_id);
        spk_le_put32(p + 4, m->u.reply.status);
        spk_le_put16(p + 8, (uint16_t)m->u.reply.msg_len);
        if (m->u.reply.msg_len)
            memcpy(p + REPLY_FIXED, m->u.reply.msg, m->u.reply.msg_len);
        if (m->u.reply.len)
            memcpy(p + REPLY_FIXED + m->u.reply.msg_len, m->u.reply.data, m->u.reply.len);
        break;
    case SPK_MSG_TYPE_END:
    default:
        return spk_err(SPK_ERR_INVALID_ARG, "encode: unknown message type %u", h.type);
    }
    if (tag)
        memset(p + len, 0, tag);
    *n = SPK_PROTO_HEADER_SIZE + (size_t)len + tag;
    return SPK_OK;
}

static void tag_of(const uint8_t *frame, size_t n, const uint8_t key[SPK_PROTO_KEY_BYTES],
                   uint8_t out[SPK_PROTO_TAG_BYTES])
{
    crypto_generichash_state st;
    crypto_generichash_init(&st, key, SPK_PROTO_KEY_BYTES, SPK_PROTO_TAG_BYTES);
    crypto_generichash_update(&st, frame, n - SPK_PROTO_TAG_BYTES);
    crypto_generichash_final(&st, out, SPK_PROTO_TAG_BYTES);
    sodium_memzero(&st, sizeof st);
}

void spk_proto_seal(uint8_t *frame, size_t n, const uint8_t key[SPK_PROTO_KEY_BYTES])
{
    if (n >= SPK_PROTO_HEADER_SIZE + SPK_PROTO_TAG_BYTES)
        tag_of(frame, n, key, frame + n - SPK_PROTO_TAG_BYTES);
}

int spk_proto_verify(const uint8_t *frame, size_t n, const uint8_t key[SPK_PROTO_KEY_BYTES])
{
    if (n < SPK_PROTO_HEADER_SIZE + SPK_PROTO_TAG_BYTES ||
        !(spk_le_get32(frame + 8) & SPK_PROTO_F_SEALED) ||
        (size_t)spk_le_get32(frame + 12) + SPK_PROTO_HEADER_SIZE != n)
        return -1;
    uint8_t t[SPK_PROTO_TAG_BYTES];
    tag_of(frame, n, key, t);
    int ok = sodium_memcmp(t, frame + n - SPK_PROTO_TAG_BYTES, sizeof t) == 0;
    sodium_memzero(t, sizeof t);
    return ok ? 0 : -1;
}

void spk_proto_sanitize(char *out, size_t cap, const char *in, size_t n)
{
    if (!cap)
        return;
    size_t k = 0;
    for (size_t i = 0; i < n && in && k + 1 < cap; i++) {
        unsigned char ch = (unsigned char)in[i];
        out[k++] = ch >= 0x20 && ch < 0x7f ? (char)ch : '?';
    }
    out[k] = '\0';
}
