/*
 * The running control plane: one I/O thread per rank reads every control connection, sends
 * heartbeats, and declares a peer lost when it closes or stays silent for peer_timeout_ms.
 * Received commands, replies and collective messages wait in an inbox for the thread that wants
 * them. A failure is sticky and spreads: the driver tells every worker, a worker tells the driver.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "cluster/cluster_internal.h"
#include "common/error.h"

static void fail_ex(spk_cluster *c, spk_status st, int rank, int tell, const char *fmt, ...)
    SPK_CLUSTER_PRINTF(5, 6);

/* ---------------------------------------------------------------------------------------- */
/* Failure                                                                                  */
/* ---------------------------------------------------------------------------------------- */

/* Best-effort ERROR to one peer; never blocks on a busy connection. */
static void tell_peer(spk_cluster *c, spk_peer *p, spk_status st, int rank, const char *msg)
{
    if (pthread_mutex_trylock(&p->send_mu) != 0)
        return;
    spk_proto_msg m = {0};
    m.h.type = SPK_MSG_ERROR;
    m.h.seq = ++p->tx_seq;
    m.u.error.status = (uint32_t)st;
    m.u.error.rank = rank < 0 ? SPK_PROTO_NO_RANK : (uint32_t)rank;
    m.u.error.msg = msg;
    size_t n = strlen(msg);
    m.u.error.msg_len = (uint32_t)(n > SPK_PROTO_MAX_MSG ? SPK_PROTO_MAX_MSG : n);
    int64_t budget = c->cfg.peer_timeout_ms < 500 ? c->cfg.peer_timeout_ms : 500;
    spk_net_send_msg_key(p->fd, &m, p->tx_key, spk_net_now_ms() + budget);
    pthread_mutex_unlock(&p->send_mu);
}

static void fail_ex(spk_cluster *c, spk_status st, int rank, int tell, const char *fmt, ...)
{
    char msg[SPK_CLUSTER_FAIL_CAP];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    int first = 0;
    int down[SPK_PROTO_MAX_RANKS];
    int n_down = 0;
    pthread_mutex_lock(&c->mu);
    if (c->fail == SPK_OK) {
        c->fail = st;
        snprintf(c->fail_msg, sizeof c->fail_msg, "%s", msg);
        first = 1;
        /* The cluster is over: every connection goes down after the news is out. */
        for (int r = 0; r < c->world; r++) {
            if (r != c->rank && c->peers[r].alive) {
                c->peers[r].alive = 0;
                down[n_down++] = r;
            }
        }
        /* Blocked transport calls return at once (abort is quick and thread-safe). */
        if (c->comm && c->th.vt)
            c->th.vt->abort(c->comm);
    }
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    if (!first)
        return;
    spk_log(st == SPK_ERR_PEER_LOST ? SPK_LOG_WARN : SPK_LOG_ERROR, "cluster: rank %d: %s",
            c->rank, msg);
    for (int i = 0; i < n_down; i++) {
        spk_peer *p = &c->peers[down[i]];
        if (tell)
            tell_peer(c, p, st, rank, msg);
        shutdown(p->fd, SHUT_RDWR);
    }
}

void spk_cluster_fail(spk_cluster *c, spk_status st, int rank, const char *fmt, ...)
{
    char msg[SPK_CLUSTER_FAIL_CAP];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fail_ex(c, st, rank, 1, "%s", msg);
}

/* Peer p's connection ended or went silent. */
static void peer_lost(spk_cluster *c, spk_peer *p, const char *reason)
{
    pthread_mutex_lock(&c->mu);
    int was = p->alive;
    int expected = c->closing || (c->rank != 0 && c->shutdown_rx);
    if (expected) {
        p->alive = 0;
        p->eof = 1;
        pthread_cond_broadcast(&c->cv);
    }
    pthread_mutex_unlock(&c->mu);
    if (!was)
        return;
    if (expected) {
        shutdown(p->fd, SHUT_RDWR);
        return;
    }
    spk_cluster_fail(c, SPK_ERR_PEER_LOST, p->rank, "rank %d (%s%s) lost: %s", p->rank,
                     p->rank == 0 ? "driver, " : "", p->addr, reason);
}

/* ---------------------------------------------------------------------------------------- */
/* Sending                                                                                  */
/* ---------------------------------------------------------------------------------------- */

static spk_status fail_status(spk_cluster *c)
{
    /* Caller holds c->mu. */
    return spk_err(c->fail, "%s", c->fail_msg);
}

spk_status spk_cluster_send(spk_cluster *c, spk_peer *p, spk_proto_msg *m)
{
    pthread_mutex_lock(&c->mu);
    if (c->fail != SPK_OK) {
        spk_status st = fail_status(c);
        pthread_mutex_unlock(&c->mu);
        return st;
    }
    int alive = p->alive;
    pthread_mutex_unlock(&c->mu);
    if (!alive)
        return spk_err(SPK_ERR_PEER_LOST, "rank %d (%s) is no longer connected", p->rank, p->addr);
    pthread_mutex_lock(&p->send_mu);
    m->h.seq = ++p->tx_seq;
    spk_status st =
        spk_net_send_msg_key(p->fd, m, p->tx_key, spk_net_now_ms() + c->cfg.peer_timeout_ms);
    pthread_mutex_unlock(&p->send_mu);
    if (st == SPK_OK)
        return SPK_OK;
    if (st == SPK_ERR_INVALID_ARG || st == SPK_ERR_TOO_LONG || st == SPK_ERR_NOMEM)
        return st; /* nothing was sent; the connection is intact */
    char why[512];
    snprintf(why, sizeof why, "sending %s: %s", spk_proto_type_name(m->h.type), spk_err_msg());
    peer_lost(c, p, why);
    pthread_mutex_lock(&c->mu);
    st = c->fail != SPK_OK ? fail_status(c)
                           : spk_err(SPK_ERR_PEER_LOST, "rank %d (%s): %s", p->rank, p->addr, why);
    pthread_mutex_unlock(&c->mu);
    return st;
}

/* Heartbeat without ever blocking the I/O thread on a busy or full connection. */
static void heartbeat(spk_cluster *c, spk_peer *p)
{
    if (pthread_mutex_trylock(&p->send_mu) != 0)
        return; /* another thread is sending: those bytes are liveness too */
    uint8_t buf[SPK_PROTO_HEADER_SIZE + 8 + SPK_PROTO_TAG_BYTES];
    spk_proto_msg m = {0};
    size_t n = 0;
    m.h.type = SPK_MSG_HEARTBEAT;
    m.h.flags = SPK_PROTO_F_SEALED;
    m.h.seq = p->tx_seq + 1;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    m.u.heartbeat.time_ns = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    spk_proto_encode(&m, buf, sizeof buf, &n);
    spk_proto_seal(buf, n, p->tx_key);
    ssize_t k = send(p->fd, buf, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    spk_status st = SPK_OK;
    if (k > 0) {
        p->tx_seq++;
        if ((size_t)k < n)
            st = spk_net_send_all(p->fd, buf + k, n - (size_t)k,
                                  spk_net_now_ms() + c->cfg.peer_timeout_ms);
    } else if (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        st = spk_err(SPK_ERR_PEER_LOST, "heartbeat: %s", strerror(errno));
    }
    pthread_mutex_unlock(&p->send_mu);
    if (st != SPK_OK) {
        char why[512];
        snprintf(why, sizeof why, "%s", spk_err_msg());
        peer_lost(c, p, why);
    }
}

/* ---------------------------------------------------------------------------------------- */
/* Receiving                                                                                */
/* ---------------------------------------------------------------------------------------- */

/* Queue one frame for a waiter. Returns 0, or -1 if the peer overran its inbox bound (it is then
 * lost) or memory ran out (the cluster is then failed). */
static int enqueue(spk_cluster *c, spk_peer *p, const spk_proto_msg *m, const uint8_t *payload)
{
    pthread_mutex_lock(&c->mu);
    size_t frames = p->inbox_frames, bytes = p->inbox_bytes;
    int over = frames + 1 > SPK_CLUSTER_INBOX_MAX_FRAMES ||
               bytes + m->h.length > SPK_CLUSTER_INBOX_MAX_BYTES;
    if (over)
        c->inbox.overruns++;
    pthread_mutex_unlock(&c->mu);
    if (over) {
        char why[512];
        snprintf(why, sizeof why, "control inbox overrun: a %u-byte %s on top of %zu unclaimed "
                 "frame(s) of %zu bytes from this rank (limit %u frames, %u bytes)", m->h.length,
                 spk_proto_type_name(m->h.type), frames, bytes, SPK_CLUSTER_INBOX_MAX_FRAMES,
                 SPK_CLUSTER_INBOX_MAX_BYTES);
        peer_lost(c, p, why);
        return -1;
    }
    spk_frame *f = calloc(1, sizeof *f);
    uint8_t *copy = m->h.length ? malloc(m->h.length) : NULL;
    if (!f || (m->h.length && !copy)) {
        free(f);
        free(copy);
        fail_ex(c, SPK_ERR_NOMEM, p->rank, 1, "rank %d: out of memory for a %u-byte %s from rank %d",
                c->rank, m->h.length, spk_proto_type_name(m->h.type), p->rank);
        return -1;
    }
    if (m->h.length)
        memcpy(copy, payload, m->h.length);
    spk_proto_decode_payload(&m->h, copy, &f->m); /* already validated */
    f->payload = copy;
    f->from = p->rank;
    pthread_mutex_lock(&c->mu);
    if (c->inbox_tail)
        c->inbox_tail->next = f;
    else
        c->inbox_head = f;
    c->inbox_tail = f;
    p->inbox_frames++;
    p->inbox_bytes += m->h.length;
    c->inbox.frames++;
    c->inbox.bytes += m->h.length;
    if (c->inbox.bytes > c->inbox.peak_bytes)
        c->inbox.peak_bytes = c->inbox.bytes;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    return 0;
}

/* Act on one frame from p. Returns 0 to go on reading p, -1 to stop. */
static int dispatch(spk_cluster *c, spk_peer *p, const spk_proto_msg *m, const uint8_t *payload)
{
    char why[SPK_CLUSTER_FAIL_CAP];
    const int from_driver = p->rank == 0;
    switch (m->h.type) {
    case SPK_MSG_HEARTBEAT:
        return 0;
    case SPK_MSG_SHUTDOWN:
        if (from_driver) {
            pthread_mutex_lock(&c->mu);
            c->shutdown_rx = 1;
            p->alive = 0;
            pthread_cond_broadcast(&c->cv);
            pthread_mutex_unlock(&c->mu);
            shutdown(p->fd, SHUT_WR); /* lets the driver's close finish at once */
            return -1;
        }
        peer_lost(c, p, "left the cluster (it closed its side)");
        return -1;
    case SPK_MSG_ERROR: {
        char text[SPK_PROTO_MAX_MSG + 1]; /* authenticated, but still the peer's words */
        spk_proto_sanitize(text, sizeof text, m->u.error.msg, m->u.error.msg_len);
        if (from_driver)
            fail_ex(c, (spk_status)m->u.error.status, (int)m->u.error.rank, 0, "%.700s", text);
        else
            fail_ex(c, (spk_status)m->u.error.status, (int)m->u.error.rank, 1,
                    "rank %d (%s): %.400s", p->rank, p->addr, text);
        return -1;
    }
    case SPK_MSG_COMMAND:
    case SPK_MSG_REPLY:
        if ((m->h.type == SPK_MSG_COMMAND) != from_driver)
            break;
        return enqueue(c, p, m, payload);
    case SPK_MSG_BARRIER:
    case SPK_MSG_ALLGATHER:
        return enqueue(c, p, m, payload);
    default:
        break;
    }
    snprintf(why, sizeof why, "protocol error: unexpected %s", spk_proto_type_name(m->h.type));
    peer_lost(c, p, why);
    return -1;
}

/* Read what p has sent and act on every complete frame. */
static void read_peer(spk_cluster *c, spk_peer *p)
{
    for (;;) {
        if (p->rx_cap - p->rx_len < 65536) {
            size_t cap = p->rx_cap ? p->rx_cap * 2 : 131072;
            uint8_t *nb = realloc(p->rx, cap);
            if (!nb) {
                peer_lost(c, p, "out of memory for the receive buffer");
                return;
            }
            p->rx = nb;
            p->rx_cap = cap;
        }
        ssize_t k = recv(p->fd, p->rx + p->rx_len, p->rx_cap - p->rx_len, MSG_DONTWAIT);
        if (k == 0) {
            peer_lost(c, p, "connection closed");
            return;
        }
        if (k < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            char why[256];
            snprintf(why, sizeof why, "receive: %s", strerror(errno));
            peer_lost(c, p, why);
            return;
        }
        p->rx_len += (size_t)k;
        p->last_rx_ms = spk_net_now_ms();
        size_t off = 0;
        for (;;) {
            spk_proto_msg m;
            size_t used = 0;
            spk_status st = spk_proto_decode(p->rx + off, p->rx_len - off, &m, &used);
            /* Nothing is acted on before its tag checks out (bit flips, forgeries); the tag
             * covers the sequence number (replays, reordering, dropped frames). */
            if (st == SPK_OK && used && spk_proto_verify(p->rx + off, used, p->rx_key) != 0)
                st = spk_err(SPK_ERR_AUTH, "%s frame %llu failed its session-key check "
                             "(tampered, forged or not sealed)", spk_proto_type_name(m.h.type),
                             (unsigned long long)m.h.seq);
            if (st == SPK_OK && used && m.h.version != SPK_PROTO_VERSION)
                st = spk_err(SPK_ERR_FORMAT, "frame of protocol version %u, expected %u",
                             m.h.version, SPK_PROTO_VERSION);
            if (st == SPK_OK && used && m.h.seq != p->rx_seq + 1)
                st = spk_err(SPK_ERR_FORMAT, "frame sequence %llu, expected %llu",
                             (unsigned long long)m.h.seq, (unsigned long long)(p->rx_seq + 1));
            if (st != SPK_OK) {
                char why[768];
                snprintf(why, sizeof why, "protocol error: %s", spk_err_msg());
                peer_lost(c, p, why);
                return;
            }
            if (!used)
                break;
            p->rx_seq++;
            int go = dispatch(c, p, &m, p->rx + off + SPK_PROTO_HEADER_SIZE);
            off += used;
            if (go < 0)
                return;
        }
        memmove(p->rx, p->rx + off, p->rx_len - off);
        p->rx_len -= off;
        /* Make room for a large frame whose header is already here. */
        if (p->rx_len >= SPK_PROTO_HEADER_SIZE) {
            size_t need = SPK_PROTO_HEADER_SIZE + (size_t)spk_le_get32(p->rx + 12) + 65536;
            if (need > p->rx_cap) {
                uint8_t *nb = realloc(p->rx, need);
                if (!nb) {
                    peer_lost(c, p, "out of memory for a large frame");
                    return;
                }
                p->rx = nb;
                p->rx_cap = need;
            }
        }
    }
}

static void *io_main(void *arg)
{
    spk_cluster *c = arg;
    const int hb = c->cfg.heartbeat_ms, pt = c->cfg.peer_timeout_ms;
    int64_t next_hb = spk_net_now_ms() + hb;
    struct pollfd *pfd = calloc((size_t)c->world + 1, sizeof *pfd);
    int *who = calloc((size_t)c->world + 1, sizeof *who);
    if (!pfd || !who) {
        free(pfd);
        free(who);
        fail_ex(c, SPK_ERR_NOMEM, -1, 1, "rank %d: out of memory in the I/O thread", c->rank);
        return NULL;
    }
    for (;;) {
        int np = 0;
        int64_t now = spk_net_now_ms();
        int64_t wake_at = next_hb;
        pthread_mutex_lock(&c->mu);
        int stop = c->stop_io;
        pfd[np++] = (struct pollfd){.fd = c->wake[0], .events = POLLIN};
        for (int r = 0; r < c->world; r++) {
            spk_peer *p = &c->peers[r];
            if (r == c->rank || !p->alive)
                continue;
            if (p->last_rx_ms + pt < wake_at)
                wake_at = p->last_rx_ms + pt;
            who[np] = r;
            pfd[np++] = (struct pollfd){.fd = p->fd, .events = POLLIN};
        }
        pthread_mutex_unlock(&c->mu);
        if (stop)
            break;
        int64_t wait = wake_at - now;
        if (wait < 0)
            wait = 0;
        int rc = poll(pfd, (nfds_t)np, (int)wait);
        if (rc < 0 && errno != EINTR)
            break;
        if (rc > 0 && (pfd[0].revents & POLLIN)) {
            char drain[64];
            while (read(c->wake[0], drain, sizeof drain) > 0) {
            }
        }
        for (int i = 1; rc > 0 && i < np; i++)
            if (pfd[i].revents)
                read_peer(c, &c->peers[who[i]]);
        now = spk_net_now_ms();
        int do_hb = now >= next_hb;
        if (do_hb)
            next_hb = now + hb;
        for (int i = 1; i < np; i++) {
            spk_peer *p = &c->peers[who[i]];
            pthread_mutex_lock(&c->mu);
            int alive = p->alive;
            pthread_mutex_unlock(&c->mu);
            if (!alive)
                continue;
            if (now - p->last_rx_ms >= pt) {
                char why[128];
                snprintf(why, sizeof why, "no message for %lld ms (peer_timeout_ms %d)",
                         (long long)(now - p->last_rx_ms), pt);
                peer_lost(c, p, why);
            } else if (do_hb) {
                heartbeat(c, p);
            }
        }
    }
    free(pfd);
    free(who);
    return NULL;
}

spk_status spk_cluster_io_start(spk_cluster *c)
{
    if (pipe2(c->wake, O_CLOEXEC | O_NONBLOCK) != 0)
        return spk_err(SPK_ERR_IO, "cluster: pipe: %s", strerror(errno));
    int64_t now = spk_net_now_ms();
    for (int r = 0; r < c->world; r++)
        c->peers[r].last_rx_ms = now;
    if (pthread_create(&c->io, NULL, io_main, c) != 0) {
        close(c->wake[0]);
        close(c->wake[1]);
        c->wake[0] = c->wake[1] = -1;
        return spk_err(SPK_ERR_NOMEM, "cluster: cannot start the I/O thread");
    }
    c->io_running = 1;
    return SPK_OK;
}

void spk_cluster_io_stop(spk_cluster *c)
{
    if (!c->io_running)
        return;
    pthread_mutex_lock(&c->mu);
    c->stop_io = 1;
    pthread_mutex_unlock(&c->mu);
    ssize_t w = write(c->wake[1], "x", 1);
    (void)w;
    pthread_join(c->io, NULL);
    c->io_running = 0;
    close(c->wake[0]);
    close(c->wake[1]);
    c->wake[0] = c->wake[1] = -1;
}
