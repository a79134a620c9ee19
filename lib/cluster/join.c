/*
 * Bootstrap: the driver accepts and authenticates ranks until all have joined; a worker connects
 * (retrying with backoff) and proves itself. Handshake on a fresh connection (protocol 2):
 *   driver -> CHALLENGE {nonce_d, session}
 *   joiner -> HELLO     {rank, world, nonce_w, HS("spk2-hello")}
 *   driver -> RESPONSE  {HS("spk2-response")}
 *   driver -> VERSION (sealed), or a sealed ERROR if the rank cannot join (world size, duplicate)
 *   joiner -> VERSION (sealed)
 *   driver -> BARRIER round 0 (sealed) once every rank has joined.
 * HS(label) = HMAC-SHA256(cluster key, label | nonce_d | session | nonce_w | rank | world): both
 * proofs cover both nonces, the driver's session value and the rank, so neither can be replayed
 * into another connection or session. The per-direction session keys are HS("spk2-key-d2w") and
 * HS("spk2-key-w2d"); every frame after RESPONSE is sealed with them (proto.h), with its sequence
 * number under the tag. Nothing but the fixed-size CHALLENGE/HELLO/RESPONSE is parsed before the
 * peer proved the key, and no text from an unproven peer is logged or put in an error message.
 */
#include <errno.h>
#include <poll.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "cluster/cluster_internal.h"
#include "common/error.h"

#define LABEL_HELLO "spk2-hello"
#define LABEL_RESPONSE "spk2-response"
#define LABEL_KEY_D2W "spk2-key-d2w"
#define LABEL_KEY_W2D "spk2-key-w2d"

void spk_cluster_mac(const spk_cluster *c, const char *label, const uint8_t *a, const uint8_t *b,
                     uint32_t rank, uint32_t world, uint8_t out[SPK_PROTO_MAC_BYTES])
{
    static const uint8_t empty_key[1] = {0};
    crypto_auth_hmacsha256_state st;
    uint8_t rw[8];
    spk_le_put32(rw, rank);
    spk_le_put32(rw + 4, world);
    crypto_auth_hmacsha256_init(&st, c->key_len ? (const uint8_t *)c->key : empty_key, c->key_len);
    crypto_auth_hmacsha256_update(&st, (const uint8_t *)label, strlen(label) + 1);
    crypto_auth_hmacsha256_update(&st, a, SPK_PROTO_NONCE_BYTES);
    if (b)
        crypto_auth_hmacsha256_update(&st, b, SPK_PROTO_NONCE_BYTES);
    crypto_auth_hmacsha256_update(&st, rw, sizeof rw);
    crypto_auth_hmacsha256_final(&st, out);
    sodium_memzero(&st, sizeof st);
}

/* HS(label) of the handshake (see the top of this file); c->session must be set. */
static void hs_mac(const spk_cluster *c, const char *label, const uint8_t *nonce_d,
                   const uint8_t *nonce_w, uint32_t rank, uint32_t world,
                   uint8_t out[SPK_PROTO_MAC_BYTES])
{
    static const uint8_t empty_key[1] = {0};
    crypto_auth_hmacsha256_state st;
    uint8_t rw[8];
    spk_le_put32(rw, rank);
    spk_le_put32(rw + 4, world);
    crypto_auth_hmacsha256_init(&st, c->key_len ? (const uint8_t *)c->key : empty_key, c->key_len);
    crypto_auth_hmacsha256_update(&st, (const uint8_t *)label, strlen(label) + 1);
    crypto_auth_hmacsha256_update(&st, nonce_d, SPK_PROTO_NONCE_BYTES);
    crypto_auth_hmacsha256_update(&st, c->session, SPK_PROTO_NONCE_BYTES);
    crypto_auth_hmacsha256_update(&st, nonce_w, SPK_PROTO_NONCE_BYTES);
    crypto_auth_hmacsha256_update(&st, rw, sizeof rw);
    crypto_auth_hmacsha256_final(&st, out);
    sodium_memzero(&st, sizeof st);
}

/* The two per-direction session keys of one control connection. */
static void session_keys(const spk_cluster *c, const uint8_t *nonce_d, const uint8_t *nonce_w,
                         uint32_t rank, uint32_t world, uint8_t d2w[SPK_PROTO_KEY_BYTES],
                         uint8_t w2d[SPK_PROTO_KEY_BYTES])
{
    hs_mac(c, LABEL_KEY_D2W, nonce_d, nonce_w, rank, world, d2w);
    hs_mac(c, LABEL_KEY_W2D, nonce_d, nonce_w, rank, world, w2d);
}

static void derive_cluster_nonce(spk_cluster *c)
{
    spk_cluster_mac(c, "spk1-cluster-nonce", c->session, NULL, 0, (uint32_t)c->world,
                    c->cluster_nonce);
}

/* Best-effort ERROR; sealed with `key` when the peer proved the cluster key (else NULL). */
static void send_error(int fd, const uint8_t *key, uint64_t seq, spk_status st, uint32_t rank,
                       const char *text)
{
    spk_proto_msg m = {0};
    m.h.type = SPK_MSG_ERROR;
    m.h.seq = seq;
    m.u.error.status = (uint32_t)st;
    m.u.error.rank = rank;
    m.u.error.msg = text;
    size_t n = strlen(text);
    m.u.error.msg_len = (uint32_t)(n > SPK_PROTO_MAX_MSG ? SPK_PROTO_MAX_MSG : n);
    spk_net_send_msg_key(fd, &m, key, spk_net_now_ms() + 500); /* best effort */
}

static void version_text(char *out, size_t cap, uint32_t lib, uint32_t proto)
{
    snprintf(out, cap, "library %u.%u.%u (%u), protocol %u", lib / 10000, lib / 100 % 100,
             lib % 100, lib, proto);
}

/* ---------------------------------------------------------------------------------------- */
/* Driver                                                                                   */
/* ---------------------------------------------------------------------------------------- */

typedef enum { PEND_HELLO, PEND_VERSION } pend_state;

typedef struct pending {
    int fd;
    char addr[SPK_NET_ADDR_CAP];
    char src[SPK_NET_ADDR_CAP]; /* addr without the port: what the per-source cap counts */
    uint64_t seq;               /* accept order: lower is older */
    pend_state state;
    int64_t deadline;
    int64_t accepted_ms;
    uint8_t nonce[SPK_PROTO_NONCE_BYTES];
    uint32_t rank;
    uint64_t rx_seq;
    uint8_t tx_key[SPK_PROTO_KEY_BYTES], rx_key[SPK_PROTO_KEY_BYTES]; /* once HELLO checked out */
    uint8_t buf[SPK_PROTO_HEADER_SIZE + 256];
    size_t len;
} pending;

/*
 * Pending-handshake policy (a flood of idle or junk connections must not keep a real rank out):
 *  - at most MAX_PENDING handshakes at once, at most PER_SOURCE_PENDING unauthenticated ones per
 *    source address;
 *  - the first frame (HELLO) must arrive within PREAUTH_MS of the accept;
 *  - a new connection is never refused for lack of room while some pending connection is still
 *    unauthenticated: the oldest unauthenticated one of the most-represented source (the new
 *    connection's own source when that is at its cap) is closed instead. A connection whose
 *    HELLO proved the key (PEND_VERSION) is never evicted.
 *  - at most ACCEPT_BATCH accepts per loop turn, so pending connections are read between
 *    batches and a real rank's HELLO is seen before a backlog of strays can push it out.
 */
#define MAX_PENDING 64
#define PER_SOURCE_PENDING 8
#define PREAUTH_MS 3000
#define ACCEPT_BATCH 4

/* The source of "host:port" / "[v6]:port": everything before the last ':'. */
static void addr_source(const char *addr, char *out, size_t cap)
{
    const char *colon = strrchr(addr, ':');
    size_t n = colon ? (size_t)(colon - addr) : strlen(addr);
    if (n >= cap)
        n = cap - 1;
    memcpy(out, addr, n);
    out[n] = '\0';
}

/* Which pending slot a new connection from `src` goes into: a free one, else the victim to
 * evict (*evict = 1), else -1 (every pending connection is authenticated). */
static int pending_slot(const pending *pend, const char *src, int *evict)
{
    int free_slot = -1, n_unauth = 0, mine = 0;
    *evict = 0;
    for (int i = 0; i < MAX_PENDING; i++) {
        if (pend[i].fd < 0) {
            if (free_slot < 0)
                free_slot = i;
            continue;
        }
        if (pend[i].state != PEND_HELLO)
            continue;
        n_unauth++;
        if (strcmp(pend[i].src, src) == 0)
            mine++;
    }
    if (free_slot >= 0 && mine < PER_SOURCE_PENDING)
        return free_slot;
    if (n_unauth == 0)
        return free_slot; /* only authenticated handshakes: -1 if full */
    /* The source to evict from: the new connection's own when it is at its cap, else the one
     * with the most unauthenticated pending connections. */
    const char *from = NULL;
    if (mine >= PER_SOURCE_PENDING) {
        from = src;
    } else {
        int best = 0;
        for (int i = 0; i < MAX_PENDING; i++) {
            if (pend[i].fd < 0 || pend[i].state != PEND_HELLO)
                continue;
            int n = 0;
            for (int j = 0; j < MAX_PENDING; j++)
                if (pend[j].fd >= 0 && pend[j].state == PEND_HELLO &&
                    strcmp(pend[j].src, pend[i].src) == 0)
                    n++;
            if (n > best) {
                best = n;
                from = pend[i].src;
            }
        }
    }
    int victim = -1;
    for (int i = 0; i < MAX_PENDING; i++)
        if (pend[i].fd >= 0 && pend[i].state == PEND_HELLO && strcmp(pend[i].src, from) == 0 &&
            (victim < 0 || pend[i].seq < pend[victim].seq))
            victim = i;
    *evict = 1;
    return victim;
}

static void refuse(pending *p, int *n_refused, spk_status st, const char *why_log,
                   const char *why_peer)
{
    spk_log(SPK_LOG_WARN, "cluster: refused connection from %s: %s", p->addr, why_log);
    if (why_peer) /* before the peer proved the key: our CHALLENGE was frame 1 */
        send_error(p->fd, NULL, 2, st, SPK_PROTO_NO_RANK, why_peer);
    close(p->fd);
    p->fd = -1;
    (*n_refused)++;
}

/* Fail the whole join: tell the ranks already joined why, so they do not wait for nothing. */
static void abort_joined(spk_cluster *c, spk_status st, const char *why)
{
    for (int r = 1; r < c->world; r++) {
        spk_peer *pr = &c->peers[r];
        if (pr->fd >= 0) {
            send_error(pr->fd, pr->tx_key, ++pr->tx_seq, st, SPK_PROTO_NO_RANK, why);
            close(pr->fd);
            pr->fd = -1;
        }
    }
}

/* Handle one complete frame of a pending connection. Returns 1 if the rank joined, 0 to
 * continue, -1 if the connection was dropped, or -2 on a fatal version mismatch (c's error
 * detail set, status in *fatal). */
static int pending_frame(spk_cluster *c, pending *pend, pending *p, const spk_proto_msg *m,
                         int *n_refused, int64_t handshake_ms, int64_t deadline_ms,
                         spk_status *fatal)
{
    char why[512];
    if (m->h.seq != ++p->rx_seq) {
        snprintf(why, sizeof why, "frame sequence %llu, expected %llu",
                 (unsigned long long)m->h.seq, (unsigned long long)p->rx_seq);
        refuse(p, n_refused, SPK_ERR_FORMAT, why, NULL);
        return -1;
    }
    if (p->state == PEND_HELLO) {
        if (m->h.type != SPK_MSG_HELLO) {
            snprintf(why, sizeof why, "first message is %s, expected HELLO",
                     spk_proto_type_name(m->h.type));
            refuse(p, n_refused, SPK_ERR_FORMAT, why, NULL);
            return -1;
        }
        if (m->h.version != SPK_PROTO_VERSION) {
            snprintf(why, sizeof why, "it speaks wire protocol %u, this driver %u", m->h.version,
                     SPK_PROTO_VERSION);
            refuse(p, n_refused, SPK_ERR_VERSION, why, why);
            return -1;
        }
        /* The proof covers the world size the joiner claims, so a proven joiner of another
         * world size is told why (sealed) instead of being refused as a wrong key. */
        const uint32_t hw = m->u.hello.world_size;
        uint8_t mac[SPK_PROTO_MAC_BYTES];
        hs_mac(c, LABEL_HELLO, p->nonce, m->u.hello.nonce, m->u.hello.rank, hw, mac);
        if (sodium_memcmp(mac, m->u.hello.mac, sizeof mac) != 0) {
            int peer_keyed = (m->h.flags & SPK_PROTO_F_KEYED) != 0;
            snprintf(why, sizeof why, "claims rank %u but failed the cluster key check (%s)",
                     m->u.hello.rank,
                     !peer_keyed && c->key_len ? "it has no cluster key"
                     : peer_keyed && !c->key_len ? "it has a key, this driver has none"
                                                 : "wrong key");
            refuse(p, n_refused, SPK_ERR_AUTH, why, "authentication failed: cluster key mismatch");
            return -1;
        }
        p->rank = m->u.hello.rank;
        session_keys(c, p->nonce, m->u.hello.nonce, p->rank, hw, p->tx_key, p->rx_key);
        /* Authenticated: the rest of the handshake gets the full handshake time. */
        p->deadline = p->accepted_ms + handshake_ms < deadline_ms ? p->accepted_ms + handshake_ms
                                                                  : deadline_ms;
        spk_proto_msg out = {0};
        out.h.type = SPK_MSG_RESPONSE;
        out.h.seq = 2;
        hs_mac(c, LABEL_RESPONSE, p->nonce, m->u.hello.nonce, p->rank, hw, out.u.response.mac);
        spk_status st = spk_net_send_msg(p->fd, &out, p->deadline);
        spk_status bad = SPK_OK;
        if ((int)hw != c->world) {
            snprintf(why, sizeof why, "rank %u has world size %u, the driver has %d", p->rank, hw,
                     c->world);
            bad = SPK_ERR_INVALID_ARG;
        } else if (c->peers[p->rank].fd >= 0) {
            snprintf(why, sizeof why, "rank %u already joined from %s", p->rank,
                     c->peers[p->rank].addr);
            bad = SPK_ERR_STATE;
        } else {
            /* The rank is reserved by the first connection that proves the key for it (its
             * pending entry in PEND_VERSION): a second one racing for the same rank is refused. */
            for (const pending *q = pend; q < pend + MAX_PENDING; q++) {
                if (q != p && q->fd >= 0 && q->state == PEND_VERSION && q->rank == p->rank) {
                    snprintf(why, sizeof why, "rank %u is already joining from %s", p->rank, q->addr);
                    bad = SPK_ERR_STATE;
                    break;
                }
            }
        }
        if (st == SPK_OK && bad != SPK_OK) {
            send_error(p->fd, p->tx_key, 3, bad, p->rank, why);
            refuse(p, n_refused, bad, why, NULL);
            return -1;
        }
        if (st == SPK_OK) {
            memset(&out, 0, sizeof out);
            out.h.type = SPK_MSG_VERSION;
            out.h.seq = 3;
            out.u.version.lib_version = c->my_lib_version;
            out.u.version.proto_version = c->my_proto_version;
            st = spk_net_send_msg_key(p->fd, &out, p->tx_key, p->deadline);
        }
        if (st != SPK_OK) {
            snprintf(why, sizeof why, "rank %u: %s", p->rank, spk_err_msg());
            refuse(p, n_refused, st, why, NULL);
            return -1;
        }
        p->state = PEND_VERSION;
        return 0;
    }
    /* PEND_VERSION */
    if (m->h.type == SPK_MSG_ERROR) { /* sealed: the rank proved the key; its text is cleaned */
        char text[SPK_PROTO_MAX_MSG + 1];
        spk_proto_sanitize(text, sizeof text, m->u.error.msg, m->u.error.msg_len);
        snprintf(why, sizeof why, "rank %u gave up: %.300s", p->rank, text);
        refuse(p, n_refused, SPK_ERR_STATE, why, NULL);
        if (m->u.error.status == SPK_ERR_VERSION || m->u.error.status == SPK_ERR_AUTH) {
            *fatal = (spk_status)m->u.error.status;
            spk_err(*fatal, "rank %u (%s): %s", p->rank, p->addr, why);
            return -2;
        }
        return -1;
    }
    if (m->h.type != SPK_MSG_VERSION) {
        snprintf(why, sizeof why, "rank %u sent %s, expected VERSION", p->rank,
                 spk_proto_type_name(m->h.type));
        refuse(p, n_refused, SPK_ERR_FORMAT, why, NULL);
        return -1;
    }
    if (m->u.version.lib_version != c->my_lib_version ||
        m->u.version.proto_version != c->my_proto_version) {
        char theirs[128], mine[128], text[1024];
        version_text(theirs, sizeof theirs, m->u.version.lib_version, m->u.version.proto_version);
        version_text(mine, sizeof mine, c->my_lib_version, c->my_proto_version);
        snprintf(text, sizeof text, "version mismatch: rank %u (%s) runs %s; the driver runs %s",
                 p->rank, p->addr, theirs, mine);
        spk_log(SPK_LOG_ERROR, "cluster: %s", text);
        send_error(p->fd, p->tx_key, 4, SPK_ERR_VERSION, p->rank, text);
        close(p->fd);
        p->fd = -1;
        *fatal = SPK_ERR_VERSION;
        spk_err(SPK_ERR_VERSION, "%s", text);
        return -2;
    }
    spk_peer *pr = &c->peers[p->rank];
    if (pr->fd >= 0) { /* cannot happen with the reservation above; never overwrite a socket */
        snprintf(why, sizeof why, "rank %u already joined from %s", p->rank, pr->addr);
        refuse(p, n_refused, SPK_ERR_STATE, why, why);
        return -1;
    }
    pr->fd = p->fd;
    pr->rx_seq = p->rx_seq;
    pr->tx_seq = 3;
    memcpy(pr->tx_key, p->tx_key, sizeof pr->tx_key);
    memcpy(pr->rx_key, p->rx_key, sizeof pr->rx_key);
    snprintf(pr->addr, sizeof pr->addr, "%s", p->addr);
    p->fd = -1;
    spk_log(SPK_LOG_INFO, "cluster: rank %u joined from %s", p->rank, pr->addr);
    return 1;
}

spk_status spk_cluster_join_driver(spk_cluster *c, int64_t deadline_ms)
{
    int lfd = -1;
    spk_status st = spk_net_listen(c->host, c->port, &lfd);
    if (st != SPK_OK)
        return spk_err_prefix(st, "cluster driver");
    randombytes_buf(c->session, sizeof c->session);
    derive_cluster_nonce(c);

    pending pend[MAX_PENDING];
    for (int i = 0; i < MAX_PENDING; i++)
        pend[i].fd = -1;
    int joined = 0, n_refused = 0;
    uint64_t accept_seq = 0;
    spk_status fatal = SPK_OK;
    int handshake_ms = c->cfg.peer_timeout_ms > 5000 ? c->cfg.peer_timeout_ms : 5000;

    while (joined < c->world - 1 && fatal == SPK_OK) {
        int64_t now = spk_net_now_ms();
        if (now >= deadline_ms)
            break;
        struct pollfd pfd[1 + MAX_PENDING + SPK_PROTO_MAX_RANKS];
        int idx_pend[MAX_PENDING] = {0}, np = 0;
        int64_t next = deadline_ms;
        pfd[np++] = (struct pollfd){.fd = lfd, .events = POLLIN};
        for (int i = 0; i < MAX_PENDING; i++) {
            if (pend[i].fd < 0)
                continue;
            if (pend[i].deadline <= now) {
                refuse(&pend[i], &n_refused, SPK_ERR_TIMEOUT,
                       pend[i].state == PEND_HELLO ? "no HELLO in time (pre-auth deadline)"
                                                   : "handshake not finished in time",
                       NULL);
                continue;
            }
            if (pend[i].deadline < next)
                next = pend[i].deadline;
            idx_pend[i] = np;
            pfd[np++] = (struct pollfd){.fd = pend[i].fd, .events = POLLIN};
        }
        int first_joined = np;
        for (int r = 1; r < c->world; r++)
            if (c->peers[r].fd >= 0)
                pfd[np++] = (struct pollfd){.fd = c->peers[r].fd, .events = POLLIN};
        int rc = poll(pfd, (nfds_t)np, (int)(next - now));
        if (rc < 0 && errno != EINTR) {
            st = spk_err(SPK_ERR_IO, "cluster driver: poll: %s", strerror(errno));
            fatal = st;
            break;
        }
        if (rc <= 0)
            continue;
        /* A joined rank that speaks or hangs up before the start left the cluster. */
        for (int k = first_joined; k < np; k++) {
            if (!pfd[k].revents)
                continue;
            for (int r = 1; r < c->world; r++) {
                if (c->peers[r].fd != pfd[k].fd)
                    continue;
                spk_log(SPK_LOG_WARN, "cluster: rank %d (%s) left before all ranks joined", r,
                        c->peers[r].addr);
                close(c->peers[r].fd);
                c->peers[r].fd = -1;
                joined--;
            }
        }
        for (int i = 0; i < MAX_PENDING; i++) {
            pending *p = &pend[i];
            if (p->fd < 0 || !pfd[idx_pend[i]].revents)
                continue;
            ssize_t k = recv(p->fd, p->buf + p->len, sizeof p->buf - p->len, MSG_DONTWAIT);
            if (k == 0 || (k < 0 && errno != EAGAIN && errno != EINTR)) {
                refuse(p, &n_refused, SPK_ERR_PEER_LOST, "closed during the handshake", NULL);
                continue;
            }
            if (k < 0)
                continue;
            p->len += (size_t)k;
            for (;;) {
                spk_proto_msg m;
                size_t used = 0;
                st = spk_proto_decode(p->buf, p->len, &m, &used);
                if (st != SPK_OK) {
                    char why[768];
                    snprintf(why, sizeof why, "not a sparkinfer peer (%s)", spk_err_msg());
                    refuse(p, &n_refused, SPK_ERR_FORMAT, why, NULL);
                    break;
                }
                if (used == 0) {
                    if (p->len == sizeof p->buf) /* valid header, payload too big to be ours */
                        refuse(p, &n_refused, SPK_ERR_FORMAT, "handshake frame too large", NULL);
                    break;
                }
                if (p->state == PEND_VERSION && spk_proto_verify(p->buf, used, p->rx_key) != 0) {
                    refuse(p, &n_refused, SPK_ERR_AUTH,
                           "a frame after the handshake failed its session-key check", NULL);
                    break;
                }
                int res = pending_frame(c, pend, p, &m, &n_refused, handshake_ms, deadline_ms,
                                        &fatal);
                if (res == 1) {
                    joined++; /* the connection now belongs to peers[rank] */
                    break;
                }
                if (res < 0 || p->fd < 0)
                    break;
                memmove(p->buf, p->buf + used, p->len - used);
                p->len -= used;
            }
            if (fatal != SPK_OK)
                break;
        }
        if (fatal != SPK_OK)
            break;
        if (pfd[0].revents & POLLIN) {
            for (int batch = 0; batch < ACCEPT_BATCH; batch++) {
                struct sockaddr_storage ss;
                socklen_t sl = sizeof ss;
                int fd = accept4(lfd, (struct sockaddr *)&ss, &sl, SOCK_CLOEXEC | SOCK_NONBLOCK);
                if (fd < 0)
                    break;
                spk_net_prepare(fd);
                char addr[SPK_NET_ADDR_CAP], src[SPK_NET_ADDR_CAP];
                spk_net_addr_str((struct sockaddr *)&ss, sl, addr, sizeof addr);
                addr_source(addr, src, sizeof src);
                int evict = 0;
                int slot = pending_slot(pend, src, &evict);
                if (slot < 0) {
                    spk_log(SPK_LOG_WARN, "cluster: refused connection from %s: %d authenticated "
                                          "handshakes in progress", addr, MAX_PENDING);
                    close(fd);
                    n_refused++;
                    continue;
                }
                if (evict)
                    refuse(&pend[slot], &n_refused, SPK_ERR_BUSY,
                           "evicted unauthenticated connection (pending handshake limit)", NULL);
                pending *p = &pend[slot];
                memset(p, 0, sizeof *p);
                p->fd = fd;
                snprintf(p->addr, sizeof p->addr, "%s", addr);
                snprintf(p->src, sizeof p->src, "%s", src);
                p->seq = ++accept_seq;
                p->state = PEND_HELLO;
                p->accepted_ms = spk_net_now_ms();
                int64_t dl = p->accepted_ms + PREAUTH_MS;
                p->deadline = dl < deadline_ms ? dl : deadline_ms;
                randombytes_buf(p->nonce, sizeof p->nonce);
                spk_proto_msg m = {0};
                m.h.type = SPK_MSG_CHALLENGE;
                m.h.flags = c->key_len ? SPK_PROTO_F_KEYED : 0;
                m.h.seq = 1;
                memcpy(m.u.challenge.nonce, p->nonce, sizeof p->nonce);
                memcpy(m.u.challenge.session, c->session, sizeof c->session);
                if (spk_net_send_msg(fd, &m, p->deadline) != SPK_OK)
                    refuse(p, &n_refused, SPK_ERR_IO, "could not send the challenge", NULL);
            }
        }
    }
    for (int i = 0; i < MAX_PENDING; i++)
        if (pend[i].fd >= 0)
            close(pend[i].fd);
    sodium_memzero(pend, sizeof pend);
    close(lfd);
    spk_log_flush(); /* report what the rate limit held back during the join */

    if (fatal != SPK_OK) {
        char why[SPK_CLUSTER_FAIL_CAP];
        snprintf(why, sizeof why, "%s", spk_err_msg());
        abort_joined(c, fatal, why);
        return spk_err(fatal, "%s", why);
    }
    if (joined < c->world - 1) {
        char missing[256] = "";
        size_t off = 0;
        for (int r = 1; r < c->world && off + 16 < sizeof missing; r++)
            if (c->peers[r].fd < 0)
                off += (size_t)snprintf(missing + off, sizeof missing - off, "%s%d",
                                        off ? ", " : "", r);
        char why[1024];
        snprintf(why, sizeof why,
                 "cluster driver at %s: rank(s) %s of world size %d did not join within %d ms "
                 "(%d connection(s) refused, see the log)",
                 c->coordinator, missing, c->world, c->cfg.connect_timeout_ms, n_refused);
        abort_joined(c, SPK_ERR_TIMEOUT, why);
        return spk_err(SPK_ERR_TIMEOUT, "%s", why);
    }
    /* Everyone is here: start. */
    for (int r = 1; r < c->world; r++) {
        spk_peer *pr = &c->peers[r];
        spk_proto_msg m = {0};
        m.h.type = SPK_MSG_BARRIER;
        m.h.seq = ++pr->tx_seq;
        m.u.barrier.round = 0;
        st = spk_net_send_msg_key(pr->fd, &m, pr->tx_key, spk_net_now_ms() + c->cfg.peer_timeout_ms);
        if (st != SPK_OK) {
            char why[512];
            snprintf(why, sizeof why, "cluster driver: rank %d (%s) lost at start: %s", r,
                     pr->addr, spk_err_msg());
            abort_joined(c, SPK_ERR_PEER_LOST, why);
            return spk_err(SPK_ERR_PEER_LOST, "%s", why);
        }
        pr->alive = 1;
        pr->last_rx_ms = spk_net_now_ms();
    }
    spk_net_local_host(c->peers[1].fd, c->local_addr, sizeof c->local_addr);
    return SPK_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* Worker                                                                                   */
/* ---------------------------------------------------------------------------------------- */

/* The driver refused us before it proved the cluster key: its text is not trusted, so the
 * message is made here from the status alone (anyone can send such a refusal). */
static spk_status unproven_refusal(spk_cluster *c, spk_status es, int driver_keyed)
{
    if (es == SPK_ERR_AUTH)
        return spk_err(es, "driver at %s refused rank %d: authentication failed (%s)",
                       c->coordinator, c->rank,
                       driver_keyed && !c->key_len ? "the driver requires a key; none is set here"
                       : !driver_keyed && c->key_len ? "the driver has no key; one is set here"
                                                     : "the keys differ");
    return spk_err(es, "driver at %s refused rank %d before proving the cluster key (%s; its "
                       "message is not shown)", c->coordinator, c->rank, spk_status_str(es));
}

/* An ERROR from the driver after it proved the key: its (cleaned) text is reported. */
static spk_status proven_refusal(spk_cluster *c, const spk_proto_msg *m, const char *what)
{
    char text[SPK_PROTO_MAX_MSG + 1];
    spk_proto_sanitize(text, sizeof text, m->u.error.msg, m->u.error.msg_len);
    return spk_err((spk_status)m->u.error.status, "%s: %s", what, text);
}

static int test_version_delay_ms;

void spk_cluster_test_version_delay(int ms) { test_version_delay_ms = ms; }

/* One join attempt on a connected socket. *retry = 1 if trying again may help. */
static spk_status worker_handshake(spk_cluster *c, int fd, int64_t deadline_ms, int *retry)
{
    spk_peer *d = &c->peers[0];
    spk_proto_msg m;
    uint8_t *pl = NULL;
    char what[512];
    *retry = 0;
    spk_status st = spk_net_recv_frame(fd, deadline_ms, &m, &pl);
    if (st == SPK_ERR_PEER_LOST) {
        *retry = 1; /* e.g. the driver refused us because its handshake table was full */
        return spk_err(st, "driver at %s closed the connection before the challenge",
                       c->coordinator);
    }
    if (st == SPK_ERR_FORMAT)
        return spk_err(SPK_ERR_FORMAT, "%s is not a sparkinfer driver: %s", c->coordinator,
                       spk_err_msg());
    if (st != SPK_OK)
        return spk_err_prefix(st, "waiting for the driver's challenge from %s", c->coordinator);
    free(pl);
    if (m.h.type != SPK_MSG_CHALLENGE || m.h.seq != 1)
        return spk_err(SPK_ERR_FORMAT, "driver at %s sent %s first, expected CHALLENGE",
                       c->coordinator, spk_proto_type_name(m.h.type));
    if (m.h.version != SPK_PROTO_VERSION)
        return spk_err(SPK_ERR_VERSION, "version mismatch: driver at %s speaks wire protocol %u; "
                       "rank %d speaks %u", c->coordinator, m.h.version, c->rank,
                       SPK_PROTO_VERSION);
    int driver_keyed = (m.h.flags & SPK_PROTO_F_KEYED) != 0;
    uint8_t nonce_d[SPK_PROTO_NONCE_BYTES], nonce_w[SPK_PROTO_NONCE_BYTES];
    memcpy(nonce_d, m.u.challenge.nonce, sizeof nonce_d);
    memcpy(c->session, m.u.challenge.session, sizeof c->session);
    randombytes_buf(nonce_w, sizeof nonce_w);
    const uint32_t rank = (uint32_t)c->rank, world = (uint32_t)c->world;

    spk_proto_msg out = {0};
    out.h.type = SPK_MSG_HELLO;
    out.h.flags = c->key_len ? SPK_PROTO_F_KEYED : 0;
    out.h.seq = 1;
    out.u.hello.rank = rank;
    out.u.hello.world_size = world;
    memcpy(out.u.hello.nonce, nonce_w, sizeof nonce_w);
    hs_mac(c, LABEL_HELLO, nonce_d, nonce_w, rank, world, out.u.hello.mac);
    st = spk_net_send_msg(fd, &out, deadline_ms);
    if (st != SPK_OK) {
        *retry = st == SPK_ERR_PEER_LOST; /* e.g. evicted by the driver's pending-handshake policy */
        return spk_err_prefix(st, "sending HELLO to %s", c->coordinator);
    }

    st = spk_net_recv_frame(fd, deadline_ms, &m, &pl);
    if (st != SPK_OK) {
        if (st == SPK_ERR_PEER_LOST)
            *retry = 1;
        return spk_err_prefix(st, "waiting for the driver's response from %s", c->coordinator);
    }
    free(pl);
    if (m.h.type == SPK_MSG_ERROR)
        return unproven_refusal(c, (spk_status)m.u.error.status, driver_keyed);
    if (m.h.type != SPK_MSG_RESPONSE || m.h.seq != 2)
        return spk_err(SPK_ERR_FORMAT, "driver at %s sent %s, expected RESPONSE", c->coordinator,
                       spk_proto_type_name(m.h.type));
    uint8_t mac[SPK_PROTO_MAC_BYTES];
    hs_mac(c, LABEL_RESPONSE, nonce_d, nonce_w, rank, world, mac);
    int ok = sodium_memcmp(mac, m.u.response.mac, sizeof mac) == 0;
    if (!ok) {
        spk_log(SPK_LOG_WARN, "cluster: driver at %s failed the cluster key check", c->coordinator);
        return spk_err(SPK_ERR_AUTH, "driver at %s failed to prove the cluster key",
                       c->coordinator);
    }
    session_keys(c, nonce_d, nonce_w, rank, world, d->rx_key, d->tx_key);
    derive_cluster_nonce(c);

    /* Versions: read the driver's, send ours, then compare (so both sides can report). */
    st = spk_net_recv_frame_key(fd, deadline_ms, d->rx_key, &m, &pl);
    if (st != SPK_OK)
        return spk_err_prefix(st, "waiting for the driver's VERSION from %s", c->coordinator);
    if (m.h.type == SPK_MSG_ERROR && m.h.seq == 3) {
        snprintf(what, sizeof what, "driver at %s refused rank %d", c->coordinator, c->rank);
        st = proven_refusal(c, &m, what);
        free(pl);
        return st;
    }
    free(pl);
    if (m.h.type != SPK_MSG_VERSION || m.h.seq != 3)
        return spk_err(SPK_ERR_FORMAT, "driver at %s sent %s, expected VERSION", c->coordinator,
                       spk_proto_type_name(m.h.type));
    uint32_t dlib = m.u.version.lib_version, dproto = m.u.version.proto_version;
    if (test_version_delay_ms > 0) { /* test hook: widen the HELLO..VERSION window */
        struct timespec ts = {test_version_delay_ms / 1000,
                              (long)(test_version_delay_ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
    memset(&out, 0, sizeof out);
    out.h.type = SPK_MSG_VERSION;
    out.h.seq = 2;
    out.u.version.lib_version = c->my_lib_version;
    out.u.version.proto_version = c->my_proto_version;
    st = spk_net_send_msg_key(fd, &out, d->tx_key, deadline_ms);
    if (dlib != c->my_lib_version || dproto != c->my_proto_version) {
        char theirs[128], mine[128];
        version_text(theirs, sizeof theirs, dlib, dproto);
        version_text(mine, sizeof mine, c->my_lib_version, c->my_proto_version);
        spk_log(SPK_LOG_ERROR, "cluster: version mismatch: driver at %s runs %s; rank %d runs %s",
                c->coordinator, theirs, c->rank, mine);
        return spk_err(SPK_ERR_VERSION, "version mismatch: driver at %s runs %s; rank %d runs %s",
                       c->coordinator, theirs, c->rank, mine);
    }
    if (st != SPK_OK)
        return spk_err_prefix(st, "sending VERSION to %s", c->coordinator);

    /* Wait for the start signal: every rank has joined. */
    st = spk_net_recv_frame_key(fd, deadline_ms, d->rx_key, &m, &pl);
    if (st == SPK_ERR_TIMEOUT)
        return spk_err(SPK_ERR_TIMEOUT, "rank %d joined %s but not all %d ranks arrived within "
                                        "%d ms", c->rank, c->coordinator, c->world,
                       c->cfg.connect_timeout_ms);
    if (st != SPK_OK)
        return spk_err_prefix(st == SPK_ERR_PEER_LOST ? SPK_ERR_PEER_LOST : st,
                              "rank 0 (driver, %s) lost while waiting for all ranks",
                              c->coordinator);
    if (m.h.type == SPK_MSG_ERROR && m.h.seq == 4) {
        st = proven_refusal(c, &m, "the driver gave up");
        free(pl);
        return st;
    }
    free(pl);
    if (m.h.type != SPK_MSG_BARRIER || m.h.seq != 4 || m.u.barrier.round != 0)
        return spk_err(SPK_ERR_FORMAT, "driver at %s sent %s, expected the start BARRIER",
                       c->coordinator, spk_proto_type_name(m.h.type));
    d->fd = fd;
    d->tx_seq = 2;
    d->rx_seq = 4;
    d->alive = 1;
    d->last_rx_ms = spk_net_now_ms();
    snprintf(d->addr, sizeof d->addr, "%s", c->coordinator);
    spk_net_local_host(fd, c->local_addr, sizeof c->local_addr);
    return SPK_OK;
}

spk_status spk_cluster_join_worker(spk_cluster *c, int64_t deadline_ms)
{
    int64_t backoff = 50;
    int attempts = 0;
    for (;;) {
        int fd = -1;
        attempts++;
        spk_status st = spk_net_connect(c->host, c->port, deadline_ms, &fd);
        int retry = 1;
        if (st == SPK_OK) {
            st = worker_handshake(c, fd, deadline_ms, &retry);
            if (st == SPK_OK)
                return SPK_OK;
            close(fd);
        }
        if (!retry || st == SPK_ERR_TIMEOUT)
            return spk_err_prefix(st, "rank %d joining %s (attempt %d)", c->rank, c->coordinator,
                                  attempts);
        int64_t now = spk_net_now_ms();
        if (now + backoff >= deadline_ms) {
            char last[512];
            snprintf(last, sizeof last, "%s", spk_err_msg());
            return spk_err(SPK_ERR_TIMEOUT, "rank %d: could not join the driver at %s within %d ms "
                                            "(%d attempts; last: %s)", c->rank, c->coordinator,
                           c->cfg.connect_timeout_ms, attempts, last);
        }
        struct timespec ts = {.tv_sec = backoff / 1000, .tv_nsec = (backoff % 1000) * 1000000};
        nanosleep(&ts, NULL);
        backoff = backoff * 2 > 1000 ? 1000 : backoff * 2;
    }
}
