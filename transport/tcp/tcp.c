/*
 * TCP transport: a full mesh of data sockets (separate from the control plane) set up through the
 * bootstrap, a poll()-driven full-duplex progress engine, ring collectives for N ranks and direct
 * exchange for small messages or two ranks.
 *
 * Data authentication (on unless SPK_DATA_AUTH=0 or the option "data_auth=0", the same on every
 * rank): each transfer is cut into records of at most TCP_AUTH_REC bytes, each followed on the
 * wire by a 16-byte Poly1305 tag under a one-time key BLAKE2b(direction key, record number). The
 * direction keys come from the cluster's session secret (bootstrap cluster_nonce), the
 * communicator id and both ranks, so every connection and direction has its own, and the record
 * numbers run per direction: a changed, replayed, reordered, dropped or misplaced record fails
 * the communicator with SPK_ERR_AUTH. Received bytes are folded into a reduction only after their
 * record checked out.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "transport/reduce.h"
#include "transport/registry.h"
#include "transport/util.h"
#include "transport/tcp/mesh.h"

#define SPK_TCP_FMT(a, b) __attribute__((format(printf, a, b)))
#define TCP_DEFAULT_SOCKBUF (4 << 20)
#define TCP_DIRECT_MAX_BYTES (64 << 10) /* all-reduce: all-to-all below this, ring above */
#define TCP_IO_SLICE (1 << 20)          /* bytes moved per syscall before looking elsewhere */
#define TCP_AUTH_REC (256 << 10)        /* bytes per authenticated record */
#define TCP_TAG_LEN 16                  /* crypto_onetimeauth_BYTES */
#define TCP_MAC_PIECE (64 << 10)        /* a sender MACs and sends a record in pieces of this */
#define TCP_KEY_LEN 32

typedef struct tcp_peer {
    int fd;
    int gone; /* hung up outside any operation with us (finished or dead): no longer watched */
    char addr[80]; /* "host:port" for messages */
    uint64_t tx_rec, rx_rec;       /* authenticated records sent / received so far */
    uint8_t tx_key[TCP_KEY_LEN];   /* data authentication keys of this connection */
    uint8_t rx_key[TCP_KEY_LEN];
    crypto_onetimeauth_state tx_mac, rx_mac; /* the record in progress each way (one op each) */
} tcp_peer;

struct spk_transport_comm {
    int rank, world;
    int timeout_ms;
    tcp_peer *peers;
    int abort_pipe[2];
    atomic_int aborted;
    spk_status broken; /* sticky failure; SPK_OK while healthy */
    int fail_code;     /* urgent byte sent to peers on failure: 1 + lost rank, or 255 */
    spk_status (*set_error)(spk_status, const char *);
    void (*log)(spk_log_level, const char *);
    uint8_t nonce[64];
    size_t nonce_len;
    char local_addr[64];
    int sockbuf;
    int auth;          /* data authentication on (see the top of this file) */
    uint8_t *scratch;
    size_t scratch_cap;
    pthread_mutex_t kids_mu;
    struct spk_transport_comm **kids;
    int n_kids, cap_kids;
    struct spk_transport_comm *parent;
};

typedef spk_transport_comm tcp_comm;

/* ---------------------------------------------------------------------------------------- */
/* small helpers                                                                            */
/* ---------------------------------------------------------------------------------------- */

static void logf_(void (*log)(spk_log_level, const char *), spk_log_level lv, const char *fmt, ...)
    SPK_TCP_FMT(3, 4);
static void logf_(void (*log)(spk_log_level, const char *), spk_log_level lv, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    log(lv, msg);
}

static int timeout_of(const tcp_comm *c, int timeout_ms)
{
    return timeout_ms > 0 ? timeout_ms : c->timeout_ms;
}

/*
 * Tell every peer that this comm failed and close the streams (without closing the descriptors,
 * which another thread may be polling): one TCP urgent byte (1 + the rank we lost, or 255) then
 * shutdown. Peers watch for urgent data during collectives, so a failure spreads to ranks that
 * are not talking to the dead one right now, while a peer that simply finished and closed its
 * comm (plain FIN) is not mistaken for a failure. Safe from any thread.
 */
static void signal_failure(tcp_comm *c, int code)
{
    uint8_t b = (uint8_t)code;
    for (int p = 0; p < c->world; p++)
        if (c->peers[p].fd >= 0) {
            ssize_t r = send(c->peers[p].fd, &b, 1, MSG_OOB | MSG_NOSIGNAL | MSG_DONTWAIT);
            (void)r;
            shutdown(c->peers[p].fd, SHUT_RDWR);
        }
}

/* Mark the comm broken with `st` (first failure wins) and tell the peers by closing the streams. */
static spk_status fail(tcp_comm *c, spk_status st, const char *fmt, ...) SPK_TCP_FMT(3, 4);
static spk_status fail(tcp_comm *c, spk_status st, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (c->broken == SPK_OK) {
        c->broken = st;
        signal_failure(c, c->fail_code ? c->fail_code : 255);
    }
    logf_(c->log, SPK_LOG_WARN, "%s", msg);
    return c->set_error(st, msg);
}

static spk_status check_usable(tcp_comm *c, const char *what)
{
    if (c->broken != SPK_OK)
        return spk_tr_errf(c->set_error, c->broken, "tcp rank %d: %s on a broken communicator (%s earlier)",
                    c->rank, what, c->broken == SPK_ERR_PEER_LOST ? "peer lost" : "failure");
    if (atomic_load(&c->aborted)) {
        c->broken = SPK_ERR_CANCELLED;
        return spk_tr_errf(c->set_error, SPK_ERR_CANCELLED, "tcp rank %d: %s: communicator aborted",
                    c->rank, what);
    }
    return SPK_OK;
}

static uint8_t *scratch(tcp_comm *c, size_t bytes)
{
    if (bytes > c->scratch_cap) {
        uint8_t *p = realloc(c->scratch, bytes);
        if (!p)
            return NULL;
        c->scratch = p;
        c->scratch_cap = bytes;
    }
    return c->scratch;
}

/* ---------------------------------------------------------------------------------------- */
/* progress engine                                                                          */
/* ---------------------------------------------------------------------------------------- */

/* One direction of a transfer with one peer. A receive may fold its bytes into `acc` as they
 * arrive (acc += received, element-wise), but never past what `gate` (a send of the same
 * region) has already sent. */
typedef struct tcp_op {
    int peer;
    int is_recv;
    uint8_t *buf;
    size_t len, done;
    uint8_t *acc;
    const struct tcp_op *gate;
    spk_transport_dtype dt;
    size_t esz, reduced; /* bytes already folded into acc */
    size_t ok;           /* received bytes that passed authentication (all of done without) */
    size_t rec_start, rec_end; /* authenticated record in progress: its data */
    size_t mac_pos;      /* the record's data up to here is in `mac` */
    int in_rec;          /* a record is in progress (its data or its tag still moving) */
    unsigned tag_pos;    /* bytes of the record's tag moved */
    uint8_t tag[TCP_TAG_LEN];
} tcp_op;

static int op_busy(const tcp_op *o)
{
    return o->done < o->len || o->in_rec;
}

/* Start the tag of one record: Poly1305 under the one-time key BLAKE2b(key, record number). It
 * is fed as the data moves (mac_to), so the MAC overlaps the transfer instead of following it. */
static void rec_begin(tcp_op *o, crypto_onetimeauth_state *st, const uint8_t key[TCP_KEY_LEN],
                      uint64_t rec)
{
    uint8_t k[crypto_onetimeauth_KEYBYTES], s[8];
    for (int i = 0; i < 8; i++)
        s[i] = (uint8_t)(rec >> (8 * i));
    crypto_generichash(k, sizeof k, s, sizeof s, key, TCP_KEY_LEN);
    crypto_onetimeauth_init(st, k);
    sodium_memzero(k, sizeof k);
    o->mac_pos = o->rec_start;
}

static void mac_to(tcp_op *o, crypto_onetimeauth_state *st, size_t upto)
{
    if (upto > o->mac_pos) {
        crypto_onetimeauth_update(st, o->buf + o->mac_pos, upto - o->mac_pos);
        o->mac_pos = upto;
    }
}

static void op_send(tcp_op *o, int peer, const void *buf, size_t len)
{
    memset(o, 0, sizeof *o);
    o->peer = peer;
    o->buf = (uint8_t *)(uintptr_t)buf;
    o->len = len;
}

static void op_recv(tcp_op *o, int peer, void *buf, size_t len)
{
    memset(o, 0, sizeof *o);
    o->peer = peer;
    o->is_recv = 1;
    o->buf = buf;
    o->len = len;
}

static void fold(tcp_op *o)
{
    if (!o->acc)
        return;
    size_t upto = o->ok;
    if (o->gate && o->gate->done < upto)
        upto = o->gate->done;
    upto -= upto % o->esz;
    if (upto > o->reduced) {
        spk_tr_sum_into(o->acc + o->reduced, o->buf + o->reduced, (upto - o->reduced) / o->esz,
                        o->dt);
        o->reduced = upto;
    }
}

static spk_status peer_lost(tcp_comm *c, int p, const char *what, const char *why)
{
    if (!c->fail_code)
        c->fail_code = p < 254 ? p + 1 : 255;
    return fail(c, SPK_ERR_PEER_LOST, "tcp rank %d: %s: lost peer rank %d (%s): %s", c->rank, what,
                p, c->peers[p].addr, why);
}

/* Peer p sent the urgent failure byte: it lost a rank (named in the byte) or failed itself. */
static spk_status peer_failed(tcp_comm *c, int p, const char *what)
{
    uint8_t b = 255;
    if (recv(c->peers[p].fd, &b, 1, MSG_OOB | MSG_DONTWAIT) != 1)
        b = 255;
    int lost = b >= 1 && b < 255 ? b - 1 : -1;
    if (lost >= 0 && lost < c->world && lost != c->rank) {
        c->fail_code = b;
        return fail(c, SPK_ERR_PEER_LOST,
                    "tcp rank %d: %s: lost peer rank %d (%s): reported by rank %d (%s)", c->rank,
                    what, lost, c->peers[lost].addr, p, c->peers[p].addr);
    }
    return peer_lost(c, p, what, "it failed or aborted its communicator");
}

/* Move bytes for one op as far as the socket allows. Returns OK, or a failure. With data
 * authentication each record's data is followed by its tag; a received record counts (o->ok) only
 * once its tag checked out. */
static spk_status pump(tcp_comm *c, tcp_op *o, const char *what)
{
    tcp_peer *pe = &c->peers[o->peer];
    crypto_onetimeauth_state *mac = o->is_recv ? &pe->rx_mac : &pe->tx_mac;
    int fd = pe->fd;
    size_t budget = 4 * (size_t)TCP_IO_SLICE;
    while (op_busy(o) && budget > 0) {
        if (c->auth && !o->in_rec) {
            size_t n = o->len - o->done;
            o->rec_start = o->done;
            o->rec_end = o->done + (n > TCP_AUTH_REC ? TCP_AUTH_REC : n);
            o->tag_pos = 0;
            o->in_rec = 1;
            rec_begin(o, mac, o->is_recv ? pe->rx_key : pe->tx_key,
                      o->is_recv ? pe->rx_rec++ : pe->tx_rec++);
        }
        /* One syscall moves data and, once all of the record's data goes, its tag too (no
         * separate 16-byte segment per record). A sender MACs each piece just before sending it
         * (a fold only ever changes bytes already sent), in TCP_MAC_PIECE steps so that the MAC
         * of one piece overlaps the transfer of the previous one; a receiver MACs what arrived. */
        struct iovec iov[2];
        int niov = 0;
        size_t data_n = (c->auth ? o->rec_end : o->len) - o->done;
        if (data_n > TCP_IO_SLICE)
            data_n = TCP_IO_SLICE;
        if (c->auth && !o->is_recv && data_n > TCP_MAC_PIECE && o->mac_pos < o->rec_end)
            data_n = o->mac_pos > o->done + TCP_MAC_PIECE ? o->mac_pos - o->done : TCP_MAC_PIECE;
        if (c->auth && !o->is_recv && o->mac_pos < o->done + data_n) {
            mac_to(o, mac, o->done + data_n);
            if (o->mac_pos == o->rec_end)
                crypto_onetimeauth_final(mac, o->tag);
        }
        if (data_n)
            iov[niov++] = (struct iovec){o->buf + o->done, data_n};
        if (c->auth && o->done + data_n == o->rec_end)
            iov[niov++] = (struct iovec){o->tag + o->tag_pos, TCP_TAG_LEN - o->tag_pos};
        struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)niov};
        ssize_t r = o->is_recv ? recvmsg(fd, &mh, MSG_DONTWAIT)
                               : sendmsg(fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (r > 0) {
            budget = budget > (size_t)r ? budget - (size_t)r : 0;
            size_t d = (size_t)r < data_n ? (size_t)r : data_n;
            o->done += d;
            if (!c->auth) {
                o->ok = o->done;
                continue;
            }
            if (o->is_recv)
                mac_to(o, mac, o->done);
            o->tag_pos += (unsigned)((size_t)r - d);
            if (o->tag_pos < TCP_TAG_LEN)
                continue;
            o->in_rec = 0;
            if (o->is_recv) {
                uint8_t want[TCP_TAG_LEN];
                crypto_onetimeauth_final(mac, want);
                if (sodium_memcmp(want, o->tag, TCP_TAG_LEN) != 0)
                    return fail(c, SPK_ERR_AUTH,
                                "tcp rank %d: %s: data from rank %d (%s) failed authentication "
                                "(record %llu, %zu bytes): changed, forged, replayed or out of "
                                "order; the communicator is failed", c->rank, what, o->peer,
                                pe->addr, (unsigned long long)(pe->rx_rec - 1),
                                o->rec_end - o->rec_start);
                o->ok = o->rec_end;
            }
            continue;
        }
        if (r == 0 && o->is_recv)
            return peer_lost(c, o->peer, what, "connection closed (EOF)");
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            break;
        if (errno == ECONNRESET || errno == EPIPE || errno == ENOTCONN || errno == ETIMEDOUT ||
            errno == EHOSTUNREACH || errno == ENETUNREACH)
            return peer_lost(c, o->peer, what, strerror(errno));
        return fail(c, SPK_ERR_TRANSPORT, "tcp rank %d: %s: %s to rank %d (%s) failed: %s", c->rank,
                    what, o->is_recv ? "recv" : "send", o->peer, c->peers[o->peer].addr,
                    strerror(errno));
    }
    fold(o);
    return SPK_OK;
}

/*
 * Run `ops` until all are done, the deadline passes, a peer is lost or the comm is aborted.
 * `watch_all`: also treat a hang-up from any peer not involved in the ops as a lost peer (used by
 * collectives, where every rank takes part).
 */
static spk_status run_ops(tcp_comm *c, tcp_op *ops, int n, int timeout_ms, int watch_all,
                          const char *what)
{
    int64_t start = spk_tr_now_ms(), deadline = start + timeout_ms;
    struct pollfd pfd[c->world + 1];
    int who[c->world + 1];
    for (;;) {
        int pending = 0;
        for (int i = 0; i < n; i++) {
            fold(&ops[i]);
            if (op_busy(&ops[i]) || (ops[i].acc && ops[i].reduced < ops[i].len))
                pending = 1;
        }
        if (!pending)
            return SPK_OK;
        if (atomic_load(&c->aborted)) {
            if (c->broken == SPK_OK)
                c->broken = SPK_ERR_CANCELLED;
            return spk_tr_errf(c->set_error, SPK_ERR_CANCELLED, "tcp rank %d: %s: aborted", c->rank, what);
        }
        int np = 0;
        for (int p = 0; p < c->world; p++) {
            if (p == c->rank || c->peers[p].fd < 0 || c->peers[p].gone)
                continue;
            short ev = 0;
            for (int i = 0; i < n; i++)
                if (ops[i].peer == p && op_busy(&ops[i]))
                    ev |= ops[i].is_recv ? POLLIN : POLLOUT;
            if (!ev && !watch_all)
                continue;
            pfd[np] = (struct pollfd){.fd = c->peers[p].fd, .events = (short)(ev | POLLPRI)};
            who[np++] = p;
        }
        pfd[np] = (struct pollfd){.fd = c->abort_pipe[0], .events = POLLIN};
        who[np] = -1;
        int64_t left = deadline - spk_tr_now_ms();
        if (left <= 0) {
            int p = -1;
            size_t got = 0, want = 0;
            for (int i = 0; i < n; i++)
                if (op_busy(&ops[i])) {
                    p = ops[i].peer;
                    got = ops[i].done;
                    want = ops[i].len;
                    break;
                }
            return fail(c, SPK_ERR_TIMEOUT,
                        "tcp rank %d: %s timed out after %d ms waiting for rank %d (%s): %zu of "
                        "%zu bytes moved",
                        c->rank, what, timeout_ms, p, p >= 0 ? c->peers[p].addr : "?", got, want);
        }
        int r = poll(pfd, (nfds_t)np + 1, left > 1000 ? 1000 : (int)left);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return fail(c, SPK_ERR_TRANSPORT, "tcp rank %d: %s: poll: %s", c->rank, what,
                        strerror(errno));
        }
        if (pfd[np].revents || atomic_load(&c->aborted))
            continue; /* abort (which also makes peers answer with failure bytes): see the top */
        for (int k = 0; k < np; k++) {
            short re = pfd[k].revents;
            int p = who[k];
            if (!re)
                continue;
            if (re & POLLPRI)
                return peer_failed(c, p, what);
            int involved = 0;
            for (int i = 0; i < n; i++) {
                if (ops[i].peer != p || !op_busy(&ops[i]))
                    continue;
                involved = 1;
                spk_status st = pump(c, &ops[i], what);
                if (st != SPK_OK)
                    return st;
            }
            if (!involved && (re & (POLLHUP | POLLERR)))
                c->peers[p].gone = 1; /* finished and closed, or dead: its neighbours will tell */
            else if (involved && (re & POLLERR))
                return peer_lost(c, p, what, "socket error");
        }
    }
}

/* ---------------------------------------------------------------------------------------- */
/* point-to-point                                                                           */
/* ---------------------------------------------------------------------------------------- */

static spk_status check_peer(tcp_comm *c, int peer, const char *what)
{
    if (peer < 0 || peer >= c->world || peer == c->rank)
        return spk_tr_errf(c->set_error, SPK_ERR_INVALID_ARG,
                    "tcp rank %d: %s: peer %d out of range (world %d, not self)", c->rank, what,
                    peer, c->world);
    return SPK_OK;
}

static spk_status check_mem(tcp_comm *c, unsigned mem, const char *what)
{
    if (mem != SPK_TRANSPORT_MEM_HOST && mem != 0)
        return spk_tr_errf(c->set_error, SPK_ERR_UNSUPPORTED,
                    "tcp: %s: memory kind 0x%x not accepted (host memory only)", what, mem);
    return SPK_OK;
}

static spk_status p2p(tcp_comm *c, int sp, const void *sbuf, size_t sbytes, int rp, void *rbuf,
                      size_t rbytes, unsigned mem, int timeout_ms, const char *what)
{
    spk_status st = check_mem(c, mem, what);
    if (st == SPK_OK && sbytes)
        st = check_peer(c, sp, what);
    if (st == SPK_OK && rbytes)
        st = check_peer(c, rp, what);
    if (st == SPK_OK && ((sbytes && !sbuf) || (rbytes && !rbuf)))
        st = spk_tr_errf(c->set_error, SPK_ERR_INVALID_ARG, "tcp: %s: NULL buffer", what);
    if (st == SPK_OK)
        st = check_usable(c, what);
    if (st != SPK_OK)
        return st;
    tcp_op ops[2];
    int n = 0;
    if (sbytes)
        op_send(&ops[n++], sp, sbuf, sbytes);
    if (rbytes)
        op_recv(&ops[n++], rp, rbuf, rbytes);
    return run_ops(c, ops, n, timeout_of(c, timeout_ms), 0, what);
}

static spk_status tcp_sendrecv(tcp_comm *c, int sp, const void *sbuf, size_t sbytes, int rp,
                               void *rbuf, size_t rbytes, unsigned mem, int timeout_ms)
{
    return p2p(c, sp, sbuf, sbytes, rp, rbuf, rbytes, mem, timeout_ms, "sendrecv");
}

static spk_status tcp_send(tcp_comm *c, int peer, const void *buf, size_t bytes, unsigned mem,
                           int timeout_ms)
{
    return p2p(c, peer, buf, bytes, -1, NULL, 0, mem, timeout_ms, "send");
}

static spk_status tcp_recv(tcp_comm *c, int peer, void *buf, size_t bytes, unsigned mem,
                           int timeout_ms)
{
    return p2p(c, -1, NULL, 0, peer, buf, bytes, mem, timeout_ms, "recv");
}

/* ---------------------------------------------------------------------------------------- */
/* collectives                                                                              */
/* ---------------------------------------------------------------------------------------- */

/* Every rank sends `bytes` of `mine` to every other rank; rank p's bytes land at all + p*bytes. */
static spk_status all_to_all(tcp_comm *c, const void *mine, uint8_t *all, size_t bytes, int tmo,
                             const char *what)
{
    int w = c->world;
    tcp_op ops[2 * w];
    int n = 0;
    for (int p = 0; p < w; p++) {
        if (p == c->rank)
            continue;
        op_send(&ops[n++], p, mine, bytes);
        op_recv(&ops[n++], p, all + (size_t)p * bytes, bytes);
    }
    return run_ops(c, ops, n, tmo, 1, what);
}

static spk_status tcp_allreduce(tcp_comm *c, void *buf, size_t count, spk_transport_dtype dt,
                                unsigned mem, int timeout_ms)
{
    size_t esz = spk_tr_dtype_size(dt);
    spk_status st = check_mem(c, mem, "allreduce");
    if (st == SPK_OK && esz == 0)
        st = spk_tr_errf(c->set_error, SPK_ERR_UNSUPPORTED, "tcp: allreduce: dtype %d not supported",
                  (int)dt);
    if (st == SPK_OK && count && !buf)
        st = spk_tr_errf(c->set_error, SPK_ERR_INVALID_ARG, "tcp: allreduce: NULL buffer");
    if (st == SPK_OK && count > SIZE_MAX / esz / (size_t)c->world)
        st = spk_tr_errf(c->set_error, SPK_ERR_INVALID_ARG, "tcp: allreduce: count %zu too large", count);
    if (st == SPK_OK)
        st = check_usable(c, "allreduce");
    if (st != SPK_OK || c->world == 1 || count == 0)
        return st;
    int w = c->world, r = c->rank, tmo = timeout_of(c, timeout_ms);
    size_t bytes = count * esz;
    uint8_t *b = buf;
    if (w == 2) {
        /* direct exchange, folded as it arrives, never past what we have already sent */
        uint8_t *tmp = scratch(c, bytes);
        if (!tmp)
            return spk_tr_errf(c->set_error, SPK_ERR_NOMEM, "tcp: allreduce: %zu bytes scratch", bytes);
        tcp_op ops[2];
        op_send(&ops[0], 1 - r, b, bytes);
        op_recv(&ops[1], 1 - r, tmp, bytes);
        ops[1].acc = b;
        ops[1].gate = &ops[0];
        ops[1].dt = dt;
        ops[1].esz = esz;
        return run_ops(c, ops, 2, tmo, 1, "allreduce");
    }
    if (bytes * (size_t)w <= TCP_DIRECT_MAX_BYTES) {
        uint8_t *all = scratch(c, bytes * (size_t)w);
        if (!all)
            return spk_tr_errf(c->set_error, SPK_ERR_NOMEM, "tcp: allreduce: scratch");
        memcpy(all + (size_t)r * bytes, b, bytes);
        st = all_to_all(c, b, all, bytes, tmo, "allreduce");
        if (st != SPK_OK)
            return st;
        const void *ins[w];
        for (int p = 0; p < w; p++)
            ins[p] = all + (size_t)p * bytes;
        spk_tr_sum_ordered(b, ins, w, count, dt);
        return SPK_OK;
    }
    /* ring: reduce-scatter then all-gather; chunk k ends fully reduced on rank k-1 */
    int right = (r + 1) % w, left = (r + w - 1) % w;
    size_t max_chunk = (count / (size_t)w + 1) * esz;
    uint8_t *tmp = scratch(c, max_chunk);
    if (!tmp)
        return spk_tr_errf(c->set_error, SPK_ERR_NOMEM, "tcp: allreduce: scratch");
    for (int s = 0; s < w - 1; s++) {
        size_t so, sl, ro, rl;
        spk_tr_chunk(count, w, ((r - s) % w + w) % w, &so, &sl);
        spk_tr_chunk(count, w, ((r - s - 1) % w + w) % w, &ro, &rl);
        tcp_op ops[2];
        int n = 0;
        if (sl)
            op_send(&ops[n++], right, b + so * esz, sl * esz);
        if (rl) {
            tcp_op *o = &ops[n++];
            op_recv(o, left, tmp, rl * esz);
            o->acc = b + ro * esz;
            o->dt = dt;
            o->esz = esz;
        }
        if ((st = run_ops(c, ops, n, tmo, 1, "allreduce")) != SPK_OK)
            return st;
    }
    for (int s = 0; s < w - 1; s++) {
        size_t so, sl, ro, rl;
        spk_tr_chunk(count, w, ((r + 1 - s) % w + w) % w, &so, &sl);
        spk_tr_chunk(count, w, ((r - s) % w + w) % w, &ro, &rl);
        tcp_op ops[2];
        int n = 0;
        if (sl)
            op_send(&ops[n++], right, b + so * esz, sl * esz);
        if (rl)
            op_recv(&ops[n++], left, b + ro * esz, rl * esz);
        if ((st = run_ops(c, ops, n, tmo, 1, "allreduce")) != SPK_OK)
            return st;
    }
    return SPK_OK;
}

static spk_status tcp_allgather(tcp_comm *c, const void *mine, void *all, size_t bpr, unsigned mem,
                                int timeout_ms)
{
    spk_status st = check_mem(c, mem, "allgather");
    if (st == SPK_OK && bpr && (!mine || !all))
        st = spk_tr_errf(c->set_error, SPK_ERR_INVALID_ARG, "tcp: allgather: NULL buffer");
    if (st == SPK_OK && bpr > SIZE_MAX / (size_t)c->world)
        st = spk_tr_errf(c->set_error, SPK_ERR_INVALID_ARG, "tcp: allgather: %zu bytes too large", bpr);
    if (st == SPK_OK)
        st = check_usable(c, "allgather");
    if (st != SPK_OK || bpr == 0)
        return st;
    int w = c->world, r = c->rank, tmo = timeout_of(c, timeout_ms);
    uint8_t *a = all;
    if (a + (size_t)r * bpr != (const uint8_t *)mine)
        memmove(a + (size_t)r * bpr, mine, bpr);
    if (w == 1)
        return SPK_OK;
    if (w == 2 || bpr * (size_t)w <= TCP_DIRECT_MAX_BYTES)
        return all_to_all(c, a + (size_t)r * bpr, a, bpr, tmo, "allgather");
    int right = (r + 1) % w, left = (r + w - 1) % w;
    for (int s = 0; s < w - 1; s++) {
        int sb = ((r - s) % w + w) % w, rb = ((r - s - 1) % w + w) % w;
        tcp_op ops[2];
        op_send(&ops[0], right, a + (size_t)sb * bpr, bpr);
        op_recv(&ops[1], left, a + (size_t)rb * bpr, bpr);
        if ((st = run_ops(c, ops, 2, tmo, 1, "allgather")) != SPK_OK)
            return st;
    }
    return SPK_OK;
}

static spk_status tcp_barrier(tcp_comm *c, int timeout_ms)
{
    spk_status st = check_usable(c, "barrier");
    if (st != SPK_OK || c->world == 1)
        return st;
    uint8_t one = 1, all[c->world];
    return all_to_all(c, &one, all, 1, timeout_of(c, timeout_ms), "barrier");
}

/* ---------------------------------------------------------------------------------------- */
/* setup, split, abort, finalize (mesh.c beside it opens the sockets)                       */
/* ---------------------------------------------------------------------------------------- */

static int tcp_rank(const tcp_comm *c)
{
    return c ? c->rank : -1;
}

static int tcp_world(const tcp_comm *c)
{
    return c ? c->world : -1;
}

static spk_status tcp_probe(char *why, size_t cap)
{
    if (why && cap)
        why[0] = '\0';
    return SPK_OK;
}

static void tcp_abort(tcp_comm *c)
{
    if (!c)
        return;
    atomic_store(&c->aborted, 1);
    signal_failure(c, 255);
    uint8_t x = 1;
    ssize_t rc = write(c->abort_pipe[1], &x, 1); /* pipe full means already signalled */
    (void)rc;
    pthread_mutex_lock(&c->kids_mu);
    for (int i = 0; i < c->n_kids; i++)
        tcp_abort(c->kids[i]);
    pthread_mutex_unlock(&c->kids_mu);
}

static void free_comm(tcp_comm *c)
{
    if (!c)
        return;
    if (c->peers)
        for (int p = 0; p < c->world; p++)
            if (c->peers[p].fd >= 0)
                close(c->peers[p].fd);
    if (c->abort_pipe[0] >= 0)
        close(c->abort_pipe[0]);
    if (c->abort_pipe[1] >= 0)
        close(c->abort_pipe[1]);
    pthread_mutex_destroy(&c->kids_mu);
    free(c->kids);
    if (c->peers)
        sodium_memzero(c->peers, (size_t)c->world * sizeof *c->peers);
    free(c->peers);
    free(c->scratch);
    sodium_memzero(c->nonce, sizeof c->nonce);
    free(c);
}

static spk_status tcp_finalize(tcp_comm *c)
{
    if (!c)
        return SPK_OK;
    if (c->parent) {
        tcp_comm *pa = c->parent;
        pthread_mutex_lock(&pa->kids_mu);
        for (int i = 0; i < pa->n_kids; i++)
            if (pa->kids[i] == c) {
                pa->kids[i] = pa->kids[--pa->n_kids];
                break;
            }
        pthread_mutex_unlock(&pa->kids_mu);
    }
    free_comm(c);
    return SPK_OK;
}

typedef struct sub_bs {
    tcp_comm *parent;
    int *members; /* parent ranks, in new-rank order */
    int n, me;
    int timeout_ms;
} sub_bs;

/* Bootstrap of a split group: a direct exchange among the members over the parent's sockets. */
static spk_status sub_allgather(void *ctx, const void *mine, void *all, size_t bpr, int timeout_ms)
{
    sub_bs *s = ctx;
    uint8_t *a = all;
    memmove(a + (size_t)s->me * bpr, mine, bpr);
    tcp_op ops[2 * s->n];
    int n = 0;
    for (int i = 0; i < s->n; i++) {
        if (i == s->me)
            continue;
        op_send(&ops[n++], s->members[i], a + (size_t)s->me * bpr, bpr);
        op_recv(&ops[n++], s->members[i], a + (size_t)i * bpr, bpr);
    }
    return run_ops(s->parent, ops, n, timeout_ms > 0 ? timeout_ms : s->timeout_ms, 0, "split");
}

static spk_status sub_barrier(void *ctx, int timeout_ms)
{
    sub_bs *s = ctx;
    uint8_t one = 1, all[s->n];
    return sub_allgather(ctx, &one, all, 1, timeout_ms);
}

/* Direction keys of every connection: BLAKE2b(key = H(session secret), label | comm id | from |
 * to). Both ends compute the same pair; a rank's tx key is its peer's rx key. */
static void data_keys(tcp_comm *c, const uint8_t comm_id[SPK_TCP_COMM_ID_LEN])
{
    static const char label[] = "spk-tcp-data-1";
    uint8_t k0[TCP_KEY_LEN];
    crypto_generichash(k0, sizeof k0, c->nonce, c->nonce_len, NULL, 0);
    for (int p = 0; p < c->world; p++) {
        if (p == c->rank)
            continue;
        for (int dir = 0; dir < 2; dir++) {
            uint32_t from = (uint32_t)(dir ? p : c->rank), to = (uint32_t)(dir ? c->rank : p);
            uint8_t ft[8];
            for (int i = 0; i < 4; i++) {
                ft[i] = (uint8_t)(from >> (8 * i));
                ft[4 + i] = (uint8_t)(to >> (8 * i));
            }
            crypto_generichash_state h;
            crypto_generichash_init(&h, k0, sizeof k0, TCP_KEY_LEN);
            crypto_generichash_update(&h, (const uint8_t *)label, sizeof label);
            crypto_generichash_update(&h, comm_id, SPK_TCP_COMM_ID_LEN);
            crypto_generichash_update(&h, ft, sizeof ft);
            crypto_generichash_final(&h, dir ? c->peers[p].rx_key : c->peers[p].tx_key,
                                     TCP_KEY_LEN);
            sodium_memzero(&h, sizeof h);
        }
    }
    sodium_memzero(k0, sizeof k0);
}

static spk_status comm_create(const spk_transport_init_params *p, const spk_transport_bootstrap *bs,
                              const char *options, tcp_comm *parent, tcp_comm **out)
{
    uint8_t comm_id[SPK_TCP_COMM_ID_LEN] = {0};
    tcp_comm *c = calloc(1, sizeof *c);
    if (!c)
        return spk_tr_errf(p->set_error, SPK_ERR_NOMEM, "tcp: out of memory");
    c->abort_pipe[0] = c->abort_pipe[1] = -1;
    pthread_mutex_init(&c->kids_mu, NULL);
    c->rank = bs->rank;
    c->world = bs->world_size;
    c->timeout_ms = p->timeout_ms;
    c->set_error = p->set_error;
    c->log = p->log;
    c->parent = parent;
    c->sockbuf = TCP_DEFAULT_SOCKBUF;
    const char *sb = options ? strstr(options, "sockbuf=") : NULL;
    if (sb)
        c->sockbuf = atoi(sb + 8);
    /* Data authentication: on unless turned off (for trusted point-to-point links). */
    const char *da = options ? strstr(options, "data_auth=") : NULL;
    const char *env = getenv("SPK_DATA_AUTH");
    c->auth = parent ? parent->auth
              : da    ? atoi(da + 10) != 0
              : env && *env ? strcmp(env, "0") != 0
                            : 1;
    if (bs->cluster_nonce_len > sizeof c->nonce) {
        crypto_generichash(c->nonce, 32, bs->cluster_nonce, bs->cluster_nonce_len, NULL, 0);
        c->nonce_len = 32;
    } else if (bs->cluster_nonce_len) {
        memcpy(c->nonce, bs->cluster_nonce, bs->cluster_nonce_len);
        c->nonce_len = bs->cluster_nonce_len;
    }
    snprintf(c->local_addr, sizeof c->local_addr, "%s",
             bs->local_addr && *bs->local_addr ? bs->local_addr : "127.0.0.1");
    c->peers = calloc((size_t)c->world, sizeof *c->peers);
    int *fds = calloc((size_t)c->world, sizeof *fds);
    char(*addrs)[SPK_TCP_ADDR_LEN] = calloc((size_t)c->world, sizeof *addrs);
    spk_status st = SPK_OK;
    if (!c->peers || !fds || !addrs)
        st = spk_tr_errf(p->set_error, SPK_ERR_NOMEM, "tcp: out of memory for %d peers", c->world);
    else if (pipe2(c->abort_pipe, O_NONBLOCK | O_CLOEXEC) != 0)
        st = spk_tr_errf(p->set_error, SPK_ERR_IO, "tcp: pipe: %s", strerror(errno));
    if (st == SPK_OK) {
        for (int i = 0; i < c->world; i++)
            c->peers[i].fd = -1;
        spk_tcp_mesh_cfg mc = {bs, c->nonce, c->nonce_len, c->local_addr, c->sockbuf,
                               p->timeout_ms, p->set_error, p->log, c->auth, comm_id};
        st = spk_tcp_mesh_connect(&mc, fds, addrs);
    }
    if (st == SPK_OK)
        data_keys(c, comm_id);
    if (st == SPK_OK)
        for (int i = 0; i < c->world; i++) {
            c->peers[i].fd = fds[i];
            memcpy(c->peers[i].addr, addrs[i], sizeof c->peers[i].addr);
        }
    free(fds);
    free(addrs);
    if (st == SPK_OK && parent) {
        pthread_mutex_lock(&parent->kids_mu);
        if (parent->n_kids == parent->cap_kids) {
            int cap = parent->cap_kids ? 2 * parent->cap_kids : 4;
            tcp_comm **k = realloc(parent->kids, (size_t)cap * sizeof *k);
            if (k) {
                parent->kids = k;
                parent->cap_kids = cap;
            }
        }
        if (parent->n_kids < parent->cap_kids)
            parent->kids[parent->n_kids++] = c;
        else
            st = spk_tr_errf(p->set_error, SPK_ERR_NOMEM, "tcp: out of memory");
        pthread_mutex_unlock(&parent->kids_mu);
    }
    if (st != SPK_OK) {
        c->parent = NULL;
        free_comm(c);
        return st;
    }
    logf_(c->log, SPK_LOG_DEBUG, "tcp transport rank %d/%d: data mesh up on %s (data %s)", c->rank,
          c->world, c->local_addr, c->auth ? "authenticated" : "NOT authenticated: SPK_DATA_AUTH=0");
    *out = c;
    return SPK_OK;
}

static spk_status tcp_init(const spk_transport_init_params *params, spk_transport_comm **out)
{
    if (out)
        *out = NULL;
    if (!params || !out || params->struct_size < offsetof(spk_transport_init_params, log) +
                                                     sizeof params->log)
        return params && params->set_error
                   ? params->set_error(SPK_ERR_INVALID_ARG, "tcp: init: bad arguments")
                   : SPK_ERR_INVALID_ARG;
    spk_transport_init_params p;
    memset(&p, 0, sizeof p);
    memcpy(&p, params, params->struct_size < sizeof p ? params->struct_size : sizeof p);
    if (!p.set_error || !p.log)
        return p.set_error ? p.set_error(SPK_ERR_INVALID_ARG, "tcp: init: log callback is NULL")
                           : SPK_ERR_INVALID_ARG;
    const spk_transport_bootstrap *b = p.bootstrap;
    if (!b || b->struct_size < offsetof(spk_transport_bootstrap, local_addr) + sizeof b->local_addr)
        return spk_tr_errf(p.set_error, SPK_ERR_INVALID_ARG, "tcp: init: bootstrap missing or too old");
    spk_transport_bootstrap bs;
    memset(&bs, 0, sizeof bs);
    memcpy(&bs, b, b->struct_size < sizeof bs ? b->struct_size : sizeof bs);
    if (bs.world_size < 1 || bs.world_size > 4096 || bs.rank < 0 || bs.rank >= bs.world_size ||
        !bs.allgather || !bs.barrier || (bs.cluster_nonce_len && !bs.cluster_nonce))
        return spk_tr_errf(p.set_error, SPK_ERR_INVALID_ARG,
                    "tcp: init: bad bootstrap (rank %d, world %d, allgather %s)", bs.rank,
                    bs.world_size, bs.allgather ? "set" : "NULL");
    if (p.timeout_ms <= 0)
        return spk_tr_errf(p.set_error, SPK_ERR_INVALID_ARG, "tcp: init: timeout_ms %d must be > 0",
                    p.timeout_ms);
    return comm_create(&p, &bs, p.options, NULL, out);
}

static spk_status tcp_split(tcp_comm *c, int color, int key, tcp_comm **out, int timeout_ms)
{
    if (out)
        *out = NULL;
    if (!c || !out)
        return c ? spk_tr_errf(c->set_error, SPK_ERR_INVALID_ARG, "tcp: split: out is NULL")
                 : SPK_ERR_INVALID_ARG;
    int w = c->world, tmo = timeout_of(c, timeout_ms);
    uint8_t mine[8], *all = malloc((size_t)w * 8);
    int *members = malloc((size_t)w * sizeof *members);
    spk_status st = SPK_OK;
    if (!all || !members) {
        st = spk_tr_errf(c->set_error, SPK_ERR_NOMEM, "tcp: split: out of memory");
        goto done;
    }
    for (int i = 0; i < 4; i++) {
        mine[i] = (uint8_t)((uint32_t)color >> (8 * i));
        mine[4 + i] = (uint8_t)((uint32_t)key >> (8 * i));
    }
    if ((st = tcp_allgather(c, mine, all, 8, SPK_TRANSPORT_MEM_HOST, tmo)) != SPK_OK || color < 0)
        goto done;
    int n = 0, me = -1;
    for (int r = 0; r < w; r++) {
        const uint8_t *q = all + (size_t)r * 8;
        int32_t rc = (int32_t)((uint32_t)q[0] | (uint32_t)q[1] << 8 | (uint32_t)q[2] << 16 |
                               (uint32_t)q[3] << 24);
        if (rc == color)
            members[n++] = r;
    }
    /* stable insertion sort by key (ties keep parent-rank order) */
    for (int i = 1; i < n; i++) {
        int m = members[i], j = i;
        const uint8_t *qm = all + (size_t)m * 8 + 4;
        int32_t km = (int32_t)((uint32_t)qm[0] | (uint32_t)qm[1] << 8 | (uint32_t)qm[2] << 16 |
                               (uint32_t)qm[3] << 24);
        while (j > 0) {
            const uint8_t *qj = all + (size_t)members[j - 1] * 8 + 4;
            int32_t kj = (int32_t)((uint32_t)qj[0] | (uint32_t)qj[1] << 8 |
                                   (uint32_t)qj[2] << 16 | (uint32_t)qj[3] << 24);
            if (kj <= km)
                break;
            members[j] = members[j - 1];
            j--;
        }
        members[j] = m;
    }
    for (int i = 0; i < n; i++)
        if (members[i] == c->rank)
            me = i;
    sub_bs sb = {c, members, n, me, tmo};
    spk_transport_bootstrap bs = {sizeof bs, me, n, &sb, sub_allgather, sub_barrier,
                                  c->nonce, c->nonce_len, c->local_addr};
    spk_transport_init_params p;
    memset(&p, 0, sizeof p);
    p.struct_size = sizeof p;
    p.bootstrap = &bs;
    p.timeout_ms = c->timeout_ms;
    p.cuda_device = -1;
    p.set_error = c->set_error;
    p.log = c->log;
    char opt[32];
    snprintf(opt, sizeof opt, "sockbuf=%d", c->sockbuf);
    st = comm_create(&p, &bs, opt, c, out);
done:
    free(all);
    free(members);
    return st;
}


const spk_transport *spk_transport_tcp(void)
{
    static const spk_transport vt = {
        .name = "tcp",
        .abi_version = SPK_TRANSPORT_ABI_VERSION,
        .mem_flags = SPK_TRANSPORT_MEM_HOST,
        .probe = tcp_probe,
        .init = tcp_init,
        .rank = tcp_rank,
        .world_size = tcp_world,
        .send = tcp_send,
        .recv = tcp_recv,
        .sendrecv = tcp_sendrecv,
        .allreduce = tcp_allreduce,
        .allgather = tcp_allgather,
        .barrier = tcp_barrier,
        .split = tcp_split,
        .abort = tcp_abort,
        .finalize = tcp_finalize,
    };
    return &vt;
}
