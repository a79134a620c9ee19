/* Connection-record encoding and chunk schedule of the verbs transport (no device needed). */
#include "transport/verbs/wire.h"

#include <string.h>

static void put(uint8_t *p, uint64_t v, int n)
{
    for (int i = 0; i < n; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* layout: 0 version, 1 mtu, 2-3 lid, 4-7 qpn, 8-11 psn, 12-15 rkey, 16-23 addr, 24-39 gid,
 * 40-47 zero */
void spk_verbs_conn_encode(const spk_verbs_conn *c, uint8_t out[SPK_VERBS_CONN_LEN])
{
    memset(out, 0, SPK_VERBS_CONN_LEN);
    out[0] = SPK_VERBS_WIRE_VERSION;
    out[1] = c->mtu;
    put(out + 2, c->lid, 2);
    put(out + 4, c->qpn, 4);
    put(out + 8, c->psn, 4);
    put(out + 12, c->rkey, 4);
    put(out + 16, c->addr, 8);
    memcpy(out + 24, c->gid, 16);
}

int spk_verbs_conn_decode(const uint8_t in[SPK_VERBS_CONN_LEN], spk_verbs_conn *c)
{
    if (in[0] != SPK_VERBS_WIRE_VERSION || in[1] < 1 || in[1] > 5)
        return -1;
    memset(c, 0, sizeof *c);
    c->mtu = in[1];
    c->lid = (uint16_t)get(in + 2, 2);
    c->qpn = (uint32_t)get(in + 4, 4);
    c->psn = (uint32_t)get(in + 8, 4);
    c->rkey = (uint32_t)get(in + 12, 4);
    c->addr = get(in + 16, 8);
    memcpy(c->gid, in + 24, 16);
    if (c->qpn > 0xffffffu || c->psn > 0xffffffu)
        return -1;
    return 0;
}

size_t spk_verbs_chunks(size_t bytes, size_t chunk)
{
    return chunk == 0 ? 0 : (bytes + chunk - 1) / chunk;
}

void spk_verbs_chunk_at(size_t bytes, size_t chunk, size_t k, size_t *off, size_t *len)
{
    size_t o = k * chunk;
    *off = o < bytes ? o : bytes;
    *len = o < bytes ? (bytes - o < chunk ? bytes - o : chunk) : 0;
}

uint64_t spk_verbs_wr_id(int peer, int is_recv, int slot)
{
    return (uint64_t)(uint32_t)peer << 32 | (uint64_t)(is_recv ? 1u : 0u) << 31 |
           (uint64_t)(uint32_t)slot;
}

void spk_verbs_wr_parse(uint64_t id, int *peer, int *is_recv, int *slot)
{
    *peer = (int)(id >> 32);
    *is_recv = (int)((id >> 31) & 1);
    *slot = (int)(id & 0x7fffffffu);
}
