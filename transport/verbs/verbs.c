/*
 * ibverbs transport: one RC queue pair per peer, registered host bounce buffers (NSLOTS chunk
 * slots per peer and direction), connection records exchanged over the bootstrap, chunked
 * two-sided SEND/RECV with receives always pre-posted (RNR retry gives flow control), completion
 * polling with deadlines, ring collectives on top (lib/transport/ring.c).
 * Device memory (GPUDirect RDMA) is not wired yet: CUDA buffers are SPK_ERR_UNSUPPORTED.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <infiniband/verbs.h>
#include <sodium.h>

#include "transport/reduce.h"
#include "transport/registry.h"
#include "transport/util.h"
#include "transport/ring.h"
#include "transport/verbs/wire.h"

#define VB_CHUNK (256u << 10)
#define VB_SLOTS 4

typedef struct vb_peer {
    struct ibv_qp *qp;
    uint8_t *sendbuf, *recvbuf;  /* VB_SLOTS * VB_CHUNK each, inside the registered region */
    int send_busy[VB_SLOTS];     /* send slot waits for its completion */
    int arrived[VB_SLOTS];       /* recv slot holds a message not yet consumed: length + 1 */
    int next_recv_slot;          /* messages are consumed in posting order */
    int next_send_slot;
} vb_peer;

struct spk_transport_comm {
    int rank, world, timeout_ms;
    struct ibv_context *ctx;
    struct ibv_pd *pd;
    struct ibv_cq *cq;
    struct ibv_mr *mr;
    uint8_t *region;
    vb_peer *peers;
    uint8_t port;
    atomic_int aborted;
    spk_status broken;
    uint8_t *scratch;
    size_t scratch_cap;
    spk_status (*set_error)(spk_status, const char *);
    void (*log)(spk_log_level, const char *);
};

typedef spk_transport_comm vb_comm;

static spk_status vb_fail(vb_comm *c, spk_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static spk_status vb_fail(vb_comm *c, spk_status st, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (c->broken == SPK_OK) {
        c->broken = st;
        for (int p = 0; p < c->world; p++) /* peers see their next work request fail */
            if (c->peers[p].qp) {
                struct ibv_qp_attr a = {.qp_state = IBV_QPS_ERR};
                ibv_modify_qp(c->peers[p].qp, &a, IBV_QP_STATE);
            }
    }
    c->log(SPK_LOG_WARN, msg);
    return c->set_error(st, msg);
}

static spk_status verbs_probe(char *why, size_t cap)
{
    int n = 0;
    struct ibv_device **l = ibv_get_device_list(&n);
    if (l)
        ibv_free_device_list(l);
    if (!l || n <= 0) {
        if (why && cap)
            snprintf(why, cap, l ? "no RDMA device (ibv_get_device_list returned none)"
                                 : "no RDMA device (ibv_get_device_list failed: %s)",
                     strerror(errno));
        return SPK_ERR_UNSUPPORTED;
    }
    if (why && cap)
        why[0] = '\0';
    return SPK_OK;
}

static int post_recv(vb_comm *c, int p, int slot)
{
    vb_peer *pe = &c->peers[p];
    struct ibv_sge sge = {(uintptr_t)(pe->recvbuf + (size_t)slot * VB_CHUNK), VB_CHUNK, c->mr->lkey};
    struct ibv_recv_wr wr = {.wr_id = spk_verbs_wr_id(p, 1, slot), .sg_list = &sge, .num_sge = 1};
    struct ibv_recv_wr *bad = NULL;
    return ibv_post_recv(pe->qp, &wr, &bad);
}

static int post_send(vb_comm *c, int p, int slot, size_t len)
{
    vb_peer *pe = &c->peers[p];
    struct ibv_sge sge = {(uintptr_t)(pe->sendbuf + (size_t)slot * VB_CHUNK), (uint32_t)len,
                          c->mr->lkey};
    struct ibv_send_wr wr = {.wr_id = spk_verbs_wr_id(p, 0, slot), .sg_list = &sge, .num_sge = 1,
                             .opcode = IBV_WR_SEND, .send_flags = IBV_SEND_SIGNALED};
    struct ibv_send_wr *bad = NULL;
    return ibv_post_send(pe->qp, &wr, &bad);
}

/* Poll the completion queue once; records arrivals and finished sends. */
static spk_status poll_cq(vb_comm *c, const char *what)
{
    struct ibv_wc wc[16];
    int n = ibv_poll_cq(c->cq, 16, wc);
    if (n < 0)
        return vb_fail(c, SPK_ERR_TRANSPORT, "verbs rank %d: %s: ibv_poll_cq failed", c->rank, what);
    for (int i = 0; i < n; i++) {
        int p, is_recv, slot;
        spk_verbs_wr_parse(wc[i].wr_id, &p, &is_recv, &slot);
        if (p < 0 || p >= c->world || slot < 0 || slot >= VB_SLOTS)
            return vb_fail(c, SPK_ERR_INTERNAL, "verbs: completion with bad wr_id");
        if (wc[i].status != IBV_WC_SUCCESS)
            return vb_fail(c, SPK_ERR_PEER_LOST, "verbs rank %d: %s: lost peer rank %d: %s",
                           c->rank, what, p, ibv_wc_status_str(wc[i].status));
        if (is_recv)
            c->peers[p].arrived[slot] = (int)wc[i].byte_len + 1;
        else
            c->peers[p].send_busy[slot] = 0;
    }
    return SPK_OK;
}

typedef struct vb_xfer {
    int peer;
    const uint8_t *sbuf;
    uint8_t *rbuf;
    size_t len, next, done; /* next chunk to post (sends) / bytes delivered */
} vb_xfer;

static spk_status vb_sendrecv_impl(vb_comm *c, int sp, const void *sbuf, size_t sb, int rp,
                                   void *rbuf, size_t rb, int timeout_ms, const char *what)
{
    if (c->broken != SPK_OK)
        return spk_tr_errf(c->set_error, c->broken, "verbs rank %d: %s on a broken communicator",
                    c->rank, what);
    vb_xfer s = {sp, sbuf, NULL, sb, 0, 0}, r = {rp, NULL, rbuf, rb, 0, 0};
    size_t s_chunks = spk_verbs_chunks(sb, VB_CHUNK), s_acked = 0;
    int64_t deadline = spk_tr_now_ms() + (timeout_ms > 0 ? timeout_ms : c->timeout_ms);
    while (s_acked < s_chunks || r.done < r.len) {
        if (atomic_load(&c->aborted))
            return vb_fail(c, SPK_ERR_CANCELLED, "verbs rank %d: %s: aborted", c->rank, what);
        spk_status st = poll_cq(c, what);
        if (st != SPK_OK)
            return st;
        vb_peer *ps = sb ? &c->peers[sp] : NULL;
        /* post sends into free slots, in order */
        while (ps && s.next < s_chunks && !ps->send_busy[ps->next_send_slot]) {
            size_t off, len;
            int slot = ps->next_send_slot;
            spk_verbs_chunk_at(sb, VB_CHUNK, s.next, &off, &len);
            memcpy(ps->sendbuf + (size_t)slot * VB_CHUNK, s.sbuf + off, len);
            if (post_send(c, sp, slot, len) != 0)
                return vb_fail(c, SPK_ERR_TRANSPORT, "verbs rank %d: %s: post_send to rank %d",
                               c->rank, what, sp);
            ps->send_busy[slot] = 1;
            ps->next_send_slot = (slot + 1) % VB_SLOTS;
            s.next++;
        }
        if (ps) { /* chunks whose slot is free again are complete */
            size_t busy = 0;
            for (int k = 0; k < VB_SLOTS; k++)
                busy += (size_t)ps->send_busy[k];
            s_acked = s.next - busy;
        }
        /* consume arrivals in posting order */
        vb_peer *pr = rb ? &c->peers[rp] : NULL;
        while (pr && r.done < r.len && pr->arrived[pr->next_recv_slot]) {
            int slot = pr->next_recv_slot;
            size_t got = (size_t)pr->arrived[slot] - 1, want = r.len - r.done;
            if (want > VB_CHUNK)
                want = VB_CHUNK;
            if (got != want)
                return vb_fail(c, SPK_ERR_FORMAT,
                               "verbs rank %d: %s: rank %d sent a %zu-byte chunk, expected %zu",
                               c->rank, what, rp, got, want);
            memcpy(r.rbuf + r.done, pr->recvbuf + (size_t)slot * VB_CHUNK, got);
            r.done += got;
            pr->arrived[slot] = 0;
            if (post_recv(c, rp, slot) != 0)
                return vb_fail(c, SPK_ERR_TRANSPORT, "verbs: re-post receive failed");
            pr->next_recv_slot = (slot + 1) % VB_SLOTS;
        }
        if (spk_tr_now_ms() > deadline)
            return vb_fail(c, SPK_ERR_TIMEOUT,
                           "verbs rank %d: %s timed out (sent %zu/%zu chunks to %d, received "
                           "%zu/%zu bytes from %d)",
                           c->rank, what, s_acked, s_chunks, sp, r.done, r.len, rp);
    }
    return SPK_OK;
}

static spk_status check_args(vb_comm *c, unsigned mem, const char *what)
{
    if (mem == SPK_TRANSPORT_MEM_CUDA)
        return spk_tr_errf(c->set_error, SPK_ERR_UNSUPPORTED,
                    "verbs: %s: CUDA device memory needs GPUDirect RDMA, not supported yet", what);
    if (mem != SPK_TRANSPORT_MEM_HOST)
        return spk_tr_errf(c->set_error, SPK_ERR_UNSUPPORTED, "verbs: %s: memory kind 0x%x", what, mem);
    return SPK_OK;
}

static spk_status vb_sendrecv(vb_comm *c, int sp, const void *sbuf, size_t sb, int rp, void *rbuf,
                              size_t rb, unsigned mem, int timeout_ms)
{
    spk_status st = check_args(c, mem, "sendrecv");
    if (st == SPK_OK && ((sb && (sp < 0 || sp >= c->world || sp == c->rank || !sbuf)) ||
                         (rb && (rp < 0 || rp >= c->world || rp == c->rank || !rbuf))))
        st = spk_tr_errf(c->set_error, SPK_ERR_INVALID_ARG, "verbs: bad peer (%d/%d, world %d) or buffer",
                  sp, rp, c->world);
    return st != SPK_OK ? st : vb_sendrecv_impl(c, sp, sbuf, sb, rp, rbuf, rb, timeout_ms, "sendrecv");
}

static spk_status vb_send(vb_comm *c, int peer, const void *buf, size_t n, unsigned mem, int t)
{
    return vb_sendrecv(c, peer, buf, n, -1, NULL, 0, mem, t);
}

static spk_status vb_recv(vb_comm *c, int peer, void *buf, size_t n, unsigned mem, int t)
{
    return vb_sendrecv(c, -1, NULL, 0, peer, buf, n, mem, t);
}

static spk_status ring_sr(void *ctx, int sp, const void *sbuf, size_t sb, int rp, void *rbuf,
                          size_t rb)
{
    vb_comm *c = ctx;
    return vb_sendrecv_impl(c, sp, sbuf, sb, rp, rbuf, rb, -1, "collective");
}

static spk_status vb_allreduce(vb_comm *c, void *buf, size_t count, spk_transport_dtype dt,
                               unsigned mem, int timeout_ms)
{
    size_t esz = spk_tr_dtype_size(dt);
    spk_status st = check_args(c, mem, "allreduce");
    if (st == SPK_OK && !esz)
        st = spk_tr_errf(c->set_error, SPK_ERR_UNSUPPORTED, "verbs: allreduce: dtype %d", (int)dt);
    if (st != SPK_OK || c->world == 1 || count == 0)
        return st;
    size_t need = (count / (size_t)c->world + 1) * esz;
    if (need > c->scratch_cap) {
        uint8_t *p = realloc(c->scratch, need);
        if (!p)
            return spk_tr_errf(c->set_error, SPK_ERR_NOMEM, "verbs: allreduce scratch %zu bytes", need);
        c->scratch = p;
        c->scratch_cap = need;
    }
    return spk_ring_allreduce(c, ring_sr, c->rank, c->world, buf, count, dt, c->scratch);
}

static spk_status vb_allgather(vb_comm *c, const void *mine, void *all, size_t bpr, unsigned mem,
                               int timeout_ms)
{
    spk_status st = check_args(c, mem, "allgather");
    if (st != SPK_OK || bpr == 0)
        return st;
    uint8_t *slot = (uint8_t *)all + (size_t)c->rank * bpr;
    if (slot != mine)
        memmove(slot, mine, bpr);
    return spk_ring_allgather(c, ring_sr, c->rank, c->world, all, bpr);
}

static spk_status vb_barrier(vb_comm *c, int timeout_ms)
{
    uint8_t all[c->world], one = 1;
    return vb_allgather(c, &one, all, 1, SPK_TRANSPORT_MEM_HOST, timeout_ms);
}

static int vb_rank(const vb_comm *c)
{
    return c ? c->rank : -1;
}

static int vb_world(const vb_comm *c)
{
    return c ? c->world : -1;
}

static void vb_abort(vb_comm *c)
{
    if (c)
        atomic_store(&c->aborted, 1);
}

static spk_status vb_finalize(vb_comm *c)
{
    if (!c)
        return SPK_OK;
    if (c->peers)
        for (int p = 0; p < c->world; p++)
            if (c->peers[p].qp)
                ibv_destroy_qp(c->peers[p].qp);
    if (c->mr)
        ibv_dereg_mr(c->mr);
    if (c->cq)
        ibv_destroy_cq(c->cq);
    if (c->pd)
        ibv_dealloc_pd(c->pd);
    if (c->ctx)
        ibv_close_device(c->ctx);
    free(c->region);
    free(c->peers);
    free(c->scratch);
    free(c);
    return SPK_OK;
}

/* Bring a QP to RTS against the peer's record. */
static int connect_qp(vb_comm *c, struct ibv_qp *qp, const spk_verbs_conn *me,
                      const spk_verbs_conn *peer)
{
    struct ibv_qp_attr a;
    memset(&a, 0, sizeof a);
    a.qp_state = IBV_QPS_INIT;
    a.port_num = c->port;
    a.qp_access_flags = IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_LOCAL_WRITE;
    if (ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS))
        return -1;
    memset(&a, 0, sizeof a);
    a.qp_state = IBV_QPS_RTR;
    a.path_mtu = (enum ibv_mtu)(peer->mtu < me->mtu ? peer->mtu : me->mtu);
    a.dest_qp_num = peer->qpn;
    a.rq_psn = peer->psn;
    a.max_dest_rd_atomic = 1;
    a.min_rnr_timer = 12;
    a.ah_attr.dlid = peer->lid;
    a.ah_attr.port_num = c->port;
    a.ah_attr.is_global = 1;
    memcpy(a.ah_attr.grh.dgid.raw, peer->gid, 16);
    a.ah_attr.grh.hop_limit = 64;
    a.ah_attr.grh.sgid_index = 0;
    if (ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN |
                                  IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER))
        return -1;
    memset(&a, 0, sizeof a);
    a.qp_state = IBV_QPS_RTS;
    a.timeout = 14;
    a.retry_cnt = 7;
    a.rnr_retry = 7; /* infinite: a full receiver is flow control, the deadline bounds it */
    a.sq_psn = me->psn;
    a.max_rd_atomic = 1;
    return ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT |
                                     IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC);
}

static spk_status verbs_init(const spk_transport_init_params *params, spk_transport_comm **out)
{
    if (out)
        *out = NULL;
    if (!params || !out || !params->set_error || !params->log || !params->bootstrap)
        return params && params->set_error
                   ? params->set_error(SPK_ERR_INVALID_ARG, "verbs: init: bad arguments")
                   : SPK_ERR_INVALID_ARG;
    const spk_transport_bootstrap *bs = params->bootstrap;
    if (bs->world_size < 1 || bs->rank < 0 || bs->rank >= bs->world_size || !bs->allgather ||
        params->timeout_ms <= 0)
        return spk_tr_errf(params->set_error, SPK_ERR_INVALID_ARG, "verbs: init: bad bootstrap");
    char why[256];
    if (verbs_probe(why, sizeof why) != SPK_OK)
        return spk_tr_errf(params->set_error, SPK_ERR_UNSUPPORTED, "verbs: %s", why);
    vb_comm *c = calloc(1, sizeof *c);
    if (!c)
        return spk_tr_errf(params->set_error, SPK_ERR_NOMEM, "verbs: out of memory");
    c->rank = bs->rank;
    c->world = bs->world_size;
    c->timeout_ms = params->timeout_ms;
    c->set_error = params->set_error;
    c->log = params->log;
    c->port = 1;
    int w = c->world, ndev = 0;
    spk_status st = SPK_OK;
    uint8_t *mine = NULL, *all = NULL;
    struct ibv_device **list = ibv_get_device_list(&ndev);
    if (list && ndev > 0)
        c->ctx = ibv_open_device(list[0]);
    if (list)
        ibv_free_device_list(list);
    struct ibv_port_attr pa;
    union ibv_gid gid;
    size_t per = 2 * (size_t)VB_SLOTS * VB_CHUNK, total = per * (size_t)w;
    if (!c->ctx || ibv_query_port(c->ctx, c->port, &pa) || ibv_query_gid(c->ctx, c->port, 0, &gid) ||
        !(c->pd = ibv_alloc_pd(c->ctx)) ||
        !(c->cq = ibv_create_cq(c->ctx, 4 * VB_SLOTS * w + 16, NULL, NULL, 0)) ||
        !(c->peers = calloc((size_t)w, sizeof *c->peers)) ||
        posix_memalign((void **)&c->region, 4096, total) != 0 ||
        !(c->mr = ibv_reg_mr(c->pd, c->region, total,
                             IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE))) {
        st = spk_tr_errf(params->set_error, SPK_ERR_TRANSPORT,
                  "verbs: device setup (open, port %u, PD, CQ, %zu-byte MR) failed: %s", c->port,
                  total, strerror(errno));
        goto out;
    }
    mine = calloc((size_t)w, SPK_VERBS_CONN_LEN);
    all = calloc((size_t)w * (size_t)w, SPK_VERBS_CONN_LEN);
    if (!mine || !all) {
        st = spk_tr_errf(params->set_error, SPK_ERR_NOMEM, "verbs: out of memory");
        goto out;
    }
    for (int p = 0; p < w; p++) {
        vb_peer *pe = &c->peers[p];
        pe->sendbuf = c->region + (size_t)p * per;
        pe->recvbuf = pe->sendbuf + (size_t)VB_SLOTS * VB_CHUNK;
        if (p == c->rank)
            continue;
        struct ibv_qp_init_attr qa = {.send_cq = c->cq, .recv_cq = c->cq, .qp_type = IBV_QPT_RC,
                                      .cap = {VB_SLOTS, VB_SLOTS, 1, 1, 0}};
        if (!(pe->qp = ibv_create_qp(c->pd, &qa))) {
            st = spk_tr_errf(params->set_error, SPK_ERR_TRANSPORT, "verbs: ibv_create_qp for rank %d", p);
            goto out;
        }
        spk_verbs_conn me = {pe->qp->qp_num, randombytes_uniform(0xffffff), pa.lid, {0},
                             (uint8_t)pa.active_mtu, c->mr->rkey, (uint64_t)(uintptr_t)pe->recvbuf};
        memcpy(me.gid, gid.raw, 16);
        spk_verbs_conn_encode(&me, mine + (size_t)p * SPK_VERBS_CONN_LEN);
    }
    /* rank r's record for peer p sits at all[(r*w + p) * LEN] */
    st = bs->allgather(bs->ctx, mine, all, (size_t)w * SPK_VERBS_CONN_LEN, params->timeout_ms);
    for (int p = 0; p < w && st == SPK_OK; p++) {
        if (p == c->rank)
            continue;
        spk_verbs_conn me, peer;
        if (spk_verbs_conn_decode(mine + (size_t)p * SPK_VERBS_CONN_LEN, &me) != 0 ||
            spk_verbs_conn_decode(all + ((size_t)p * (size_t)w + (size_t)c->rank) * SPK_VERBS_CONN_LEN,
                                  &peer) != 0) {
            st = spk_tr_errf(params->set_error, SPK_ERR_FORMAT, "verbs: malformed connection record of rank %d", p);
            break;
        }
        if (connect_qp(c, c->peers[p].qp, &me, &peer) != 0) {
            st = spk_tr_errf(params->set_error, SPK_ERR_TRANSPORT, "verbs: connecting QP to rank %d: %s", p,
                      strerror(errno));
            break;
        }
        for (int s = 0; s < VB_SLOTS && st == SPK_OK; s++)
            if (post_recv(c, p, s) != 0)
                st = spk_tr_errf(params->set_error, SPK_ERR_TRANSPORT, "verbs: pre-posting receives");
    }
    /* no rank may send before every peer has pre-posted its receives */
    if (st == SPK_OK && bs->barrier)
        st = bs->barrier(bs->ctx, params->timeout_ms);
out:
    free(mine);
    free(all);
    if (st != SPK_OK) {
        vb_finalize(c);
        return st;
    }
    *out = c;
    return SPK_OK;
}

const spk_transport *spk_transport_verbs(void)
{
    static const spk_transport vt = {
        .name = "verbs",
        .abi_version = SPK_TRANSPORT_ABI_VERSION,
        .mem_flags = SPK_TRANSPORT_MEM_HOST,
        .probe = verbs_probe,
        .init = verbs_init,
        .rank = vb_rank,
        .world_size = vb_world,
        .send = vb_send,
        .recv = vb_recv,
        .sendrecv = vb_sendrecv,
        .allreduce = vb_allreduce,
        .allgather = vb_allgather,
        .barrier = vb_barrier,
        .abort = vb_abort,
        .finalize = vb_finalize,
    };
    return &vt;
}

#ifdef SPK_TRANSPORT_MODULE
/* The module's entry point, the public plugin ABI (transport.h): the core loads this file as
 * plugins/spk_transport_verbs.so, so only the module NEEDs its libraries. */
__attribute__((visibility("default"))) const spk_transport *spk_transport_plugin_v1(void)
{
    return spk_transport_verbs();
}
#endif
