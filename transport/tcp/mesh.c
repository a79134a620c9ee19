/* TCP data mesh setup: listener, bootstrap exchange of ports, authenticated hellos. */
#include "transport/tcp/mesh.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

void spk_tcp_hello_encode(const spk_tcp_hello *h, uint8_t *out)
{
    put32(out, h->magic);
    put32(out + 4, h->proto);
    put32(out + 8, h->from);
    put32(out + 12, h->to);
    put32(out + 16, h->world);
    memcpy(out + 20, h->comm_id, SPK_TCP_COMM_ID_LEN);
}

int spk_tcp_hello_decode(const uint8_t *in, size_t len, spk_tcp_hello *h)
{
    if (len < SPK_TCP_HELLO_BODY)
        return -1;
    h->magic = get32(in);
    h->proto = get32(in + 4);
    h->from = get32(in + 8);
    h->to = get32(in + 12);
    h->world = get32(in + 16);
    memcpy(h->comm_id, in + 20, SPK_TCP_COMM_ID_LEN);
    return 0;
}

void spk_tcp_info_encode(const spk_tcp_info *i, uint8_t out[SPK_TCP_INFO_LEN])
{
    memset(out, 0, SPK_TCP_INFO_LEN);
    memcpy(out, i->host, strnlen(i->host, sizeof i->host - 1));
    out[64] = (uint8_t)i->port;
    out[65] = (uint8_t)(i->port >> 8);
    memcpy(out + 66, i->comm_id, SPK_TCP_COMM_ID_LEN);
    out[66 + SPK_TCP_COMM_ID_LEN] = i->flags;
}

int spk_tcp_info_decode(const uint8_t in[SPK_TCP_INFO_LEN], spk_tcp_info *i)
{
    if (memchr(in, 0, 64) == NULL)
        return -1;
    memcpy(i->host, in, 64);
    i->port = (uint16_t)(in[64] | in[65] << 8);
    memcpy(i->comm_id, in + 66, SPK_TCP_COMM_ID_LEN);
    i->flags = in[66 + SPK_TCP_COMM_ID_LEN];
    return 0;
}

/* ---------------------------------------------------------------------------------------- */

typedef struct mesh {
    const spk_tcp_mesh_cfg *cfg;
    int rank, world;
    int64_t deadline;
    uint8_t comm_id[SPK_TCP_COMM_ID_LEN];
} mesh;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static spk_status merr(const mesh *m, spk_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static spk_status merr(const mesh *m, spk_status st, const char *fmt, ...)
{
    char msg[512];
    int k = snprintf(msg, sizeof msg, "tcp transport rank %d: ", m->rank);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg + k, sizeof msg - (size_t)k, fmt, ap);
    va_end(ap);
    return m->cfg->set_error(st, msg);
}

static void mlog(const mesh *m, spk_log_level lv, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void mlog(const mesh *m, spk_log_level lv, const char *fmt, ...)
{
    char msg[512];
    int k = snprintf(msg, sizeof msg, "tcp transport rank %d: ", m->rank);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg + k, sizeof msg - (size_t)k, fmt, ap);
    va_end(ap);
    m->cfg->log(lv, msg);
}

static void sockopts(int fd, int sockbuf)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (sockbuf > 0) {
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sockbuf, sizeof sockbuf);
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sockbuf, sizeof sockbuf);
    }
}

static int nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL, 0);
    return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static void tag_of(const mesh *m, const uint8_t *body, uint8_t out[SPK_TCP_TAG_LEN])
{
    crypto_auth_hmacsha256_state st;
    crypto_auth_hmacsha256_init(&st, m->cfg->key, m->cfg->key_len);
    crypto_auth_hmacsha256_update(&st, body, SPK_TCP_HELLO_BODY);
    crypto_auth_hmacsha256_final(&st, out);
    sodium_memzero(&st, sizeof st);
}

static void make_hello(const mesh *m, uint32_t magic, int to, uint8_t out[SPK_TCP_HELLO_LEN])
{
    spk_tcp_hello h = {magic, SPK_TCP_PROTO, (uint32_t)m->rank, (uint32_t)to, (uint32_t)m->world,
                       {0}};
    memcpy(h.comm_id, m->comm_id, SPK_TCP_COMM_ID_LEN);
    spk_tcp_hello_encode(&h, out);
    tag_of(m, out, out + SPK_TCP_HELLO_BODY);
}

/* NULL if `in` is a valid hello/ack of kind `magic` addressed to us; else the reason. */
static const char *check_hello(const mesh *m, const uint8_t *in, uint32_t magic, int *from)
{
    spk_tcp_hello h;
    spk_tcp_hello_decode(in, SPK_TCP_HELLO_LEN, &h);
    if (h.magic != magic)
        return "bad magic (not a sparkinfer tcp transport peer)";
    if (h.proto != SPK_TCP_PROTO)
        return "transport protocol version mismatch";
    uint8_t tag[SPK_TCP_TAG_LEN];
    tag_of(m, in, tag);
    if (sodium_memcmp(tag, in + SPK_TCP_HELLO_BODY, SPK_TCP_TAG_LEN) != 0)
        return "authentication tag mismatch (not of this cluster)";
    if (memcmp(h.comm_id, m->comm_id, SPK_TCP_COMM_ID_LEN) != 0)
        return "communicator id mismatch (stale connection)";
    if (h.world != (uint32_t)m->world || h.to != (uint32_t)m->rank || h.from >= (uint32_t)m->world)
        return "rank/world mismatch";
    *from = (int)h.from;
    return NULL;
}

/* Move exactly len bytes on a nonblocking socket before the deadline: 0 ok, -1 error or EOF
 * (errno set; 0 for EOF), -2 timeout. */
static int io_full(int fd, void *buf, size_t len, int is_send, int64_t deadline)
{
    uint8_t *p = buf;
    size_t done = 0;
    while (done < len) {
        ssize_t r = is_send ? send(fd, p + done, len - done, MSG_NOSIGNAL | MSG_DONTWAIT)
                            : recv(fd, p + done, len - done, MSG_DONTWAIT);
        if (r > 0) {
            done += (size_t)r;
            continue;
        }
        if (r == 0) {
            errno = 0;
            return -1;
        }
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return -1;
        int64_t left = deadline - now_ms();
        if (left <= 0)
            return -2;
        struct pollfd pf = {fd, is_send ? POLLOUT : POLLIN, 0};
        poll(&pf, 1, left > 1000 ? 1000 : (int)left);
    }
    return 0;
}

static int open_listener(const mesh *m, const char *host, uint16_t *port)
{
    struct addrinfo hints = {0}, *ai = NULL;
    hints.ai_flags = AI_NUMERICHOST | AI_PASSIVE;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(host, "0", &hints, &ai) != 0 || !ai)
        return -1;
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0) {
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        sockopts(fd, m->cfg->sockbuf);
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 128) != 0 || nonblock(fd) != 0 ||
            getsockname(fd, (struct sockaddr *)&ss, &sl) != 0) {
            close(fd);
            fd = -1;
        } else {
            *port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                   : ((struct sockaddr_in *)&ss)->sin_port);
        }
    }
    freeaddrinfo(ai);
    return fd;
}

static spk_status connect_peer(const mesh *m, int p, const spk_tcp_info *info, int *out)
{
    char port[8];
    snprintf(port, sizeof port, "%u", info->port);
    struct addrinfo hints = {0}, *ai = NULL;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(info->host, port, &hints, &ai) != 0 || !ai)
        return merr(m, SPK_ERR_INVALID_ARG, "rank %d advertised a bad address \"%s\"", p, info->host);
    int backoff = 20, fd = -1, err = 0;
    while (fd < 0) {
        fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0) {
            err = errno;
            break;
        }
        sockopts(fd, m->cfg->sockbuf);
        int rc = connect(fd, ai->ai_addr, ai->ai_addrlen);
        if (rc != 0 && errno == EINPROGRESS) {
            int64_t left = m->deadline - now_ms();
            struct pollfd pf = {fd, POLLOUT, 0};
            rc = -1;
            if (left > 0 && poll(&pf, 1, (int)left) == 1) {
                socklen_t sl = sizeof err;
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &sl);
                rc = err == 0 ? 0 : -1;
            } else {
                err = ETIMEDOUT;
            }
        } else if (rc != 0) {
            err = errno;
        }
        if (rc == 0)
            break;
        close(fd);
        fd = -1;
        int64_t left = m->deadline - now_ms();
        if (left <= 0)
            break;
        struct timespec ts = {0, (long)(backoff < left ? backoff : left) * 1000000L};
        nanosleep(&ts, NULL);
        backoff = backoff < 500 ? backoff * 2 : 500;
    }
    freeaddrinfo(ai);
    if (fd < 0)
        return merr(m, now_ms() >= m->deadline ? SPK_ERR_TIMEOUT : SPK_ERR_IO,
                    "cannot connect data socket to rank %d (%s:%u): %s", p, info->host, info->port,
                    strerror(err));
    uint8_t hello[SPK_TCP_HELLO_LEN], ack[SPK_TCP_HELLO_LEN];
    make_hello(m, SPK_TCP_MAGIC_HELLO, p, hello);
    int rc = io_full(fd, hello, sizeof hello, 1, m->deadline);
    if (rc == 0)
        rc = io_full(fd, ack, sizeof ack, 0, m->deadline);
    if (rc != 0) {
        int e = errno;
        close(fd);
        if (rc == -2)
            return merr(m, SPK_ERR_TIMEOUT, "rank %d (%s:%u) did not answer the data hello", p,
                        info->host, info->port);
        return merr(m, SPK_ERR_PEER_LOST, "rank %d (%s:%u) closed the data connection during the "
                    "hello (%s; wrong cluster?)", p, info->host, info->port, e ? strerror(e) : "EOF");
    }
    int from = -1;
    const char *why = check_hello(m, ack, SPK_TCP_MAGIC_ACK, &from);
    if (!why && from != p)
        why = "ack from the wrong rank";
    if (why) {
        close(fd);
        return merr(m, SPK_ERR_AUTH, "data connection to rank %d (%s:%u) refused: %s", p, info->host,
                    info->port, why);
    }
    *out = fd;
    return SPK_OK;
}

typedef spk_tcp_pending pending;

/* The source of "host:port": its length without the port. */
static size_t source_len(const char *addr)
{
    const char *colon = strrchr(addr, ':');
    return colon ? (size_t)(colon - addr) : strlen(addr);
}

static int same_source(const char *a, const char *b)
{
    size_t la = source_len(a);
    return la == source_len(b) && memcmp(a, b, la) == 0;
}

int spk_tcp_pending_victim(const spk_tcp_pending *pend, int n, const char *new_addr)
{
    int victim = -1, best = 0;
    for (int i = 0; i < n; i++) {
        int count = same_source(pend[i].addr, new_addr); /* the newcomer counts for its source */
        for (int j = 0; j < n; j++)
            count += same_source(pend[j].addr, pend[i].addr);
        if (count > best || (count == best && pend[i].seq < pend[victim].seq)) {
            best = count;
            victim = i;
        }
    }
    return victim;
}

static void addr_str(const struct sockaddr_storage *ss, char *out, size_t cap)
{
    char h[64] = "?";
    unsigned port = 0;
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &a->sin_addr, h, sizeof h);
        port = ntohs(a->sin_port);
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &a->sin6_addr, h, sizeof h);
        port = ntohs(a->sin6_port);
    }
    snprintf(out, cap, "%s:%u", h, port);
}

/* Accept until every higher rank has connected and proved itself. */
static spk_status accept_peers(const mesh *m, int lfd, int *fds, char (*addrs)[SPK_TCP_ADDR_LEN])
{
    enum { MAXP = 32 };
    pending pend[MAXP];
    uint64_t accept_seq = 0;
    int np = 0, need = m->world - 1 - m->rank;
    spk_status st = SPK_OK;
    while (need > 0) {
        int64_t left = m->deadline - now_ms();
        if (left <= 0) {
            int missing = -1;
            for (int p = m->rank + 1; p < m->world && missing < 0; p++)
                if (fds[p] < 0)
                    missing = p;
            st = merr(m, SPK_ERR_TIMEOUT, "rank %d never opened its data connection", missing);
            break;
        }
        struct pollfd pf[MAXP + 1];
        pf[0] = (struct pollfd){lfd, POLLIN, 0};
        for (int i = 0; i < np; i++)
            pf[i + 1] = (struct pollfd){pend[i].fd, POLLIN, 0};
        if (poll(pf, (nfds_t)np + 1, left > 1000 ? 1000 : (int)left) <= 0)
            continue;
        for (int i = np - 1; i >= 0; i--) {
            if (!pf[i + 1].revents)
                continue;
            pending *q = &pend[i];
            ssize_t r = recv(q->fd, q->buf + q->got, sizeof q->buf - q->got, MSG_DONTWAIT);
            const char *why = NULL;
            int from = -1;
            if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR && errno != EWOULDBLOCK))
                why = "closed before completing the hello";
            else if (r > 0 && (q->got += (size_t)r) == sizeof q->buf) {
                why = check_hello(m, q->buf, SPK_TCP_MAGIC_HELLO, &from);
                if (!why && (from <= m->rank || fds[from] >= 0))
                    why = "unexpected or duplicate rank";
                if (!why) {
                    uint8_t ack[SPK_TCP_HELLO_LEN];
                    make_hello(m, SPK_TCP_MAGIC_ACK, from, ack);
                    if (io_full(q->fd, ack, sizeof ack, 1, m->deadline) != 0)
                        why = "could not send the ack";
                }
                if (!why) {
                    fds[from] = q->fd;
                    snprintf(addrs[from], SPK_TCP_ADDR_LEN, "%s", q->addr);
                    need--;
                    pend[i] = pend[--np];
                    continue;
                }
            }
            if (why) {
                mlog(m, SPK_LOG_WARN, "rejected data connection from %s: %s", q->addr, why);
                close(q->fd);
                pend[i] = pend[--np];
            }
        }
        if (pf[0].revents & POLLIN) {
            struct sockaddr_storage ss;
            socklen_t sl = sizeof ss;
            int fd = accept4(lfd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd >= 0) {
                char addr[SPK_TCP_ADDR_LEN];
                addr_str(&ss, addr, sizeof addr);
                if (np == MAXP) { /* a flood of strays: drop the oldest of the busiest source */
                    int v = spk_tcp_pending_victim(pend, np, addr);
                    mlog(m, SPK_LOG_WARN, "dropping unauthenticated connection from %s (%d pending)",
                         pend[v].addr, np);
                    close(pend[v].fd);
                    pend[v] = pend[--np];
                }
                sockopts(fd, m->cfg->sockbuf);
                pend[np] = (pending){.fd = fd, .got = 0, .seq = ++accept_seq};
                memcpy(pend[np].addr, addr, sizeof addr);
                np++;
            }
        }
    }
    for (int i = 0; i < np; i++)
        close(pend[i].fd);
    return st;
}

spk_status spk_tcp_mesh_connect(const spk_tcp_mesh_cfg *cfg, int *fds, char (*addrs)[SPK_TCP_ADDR_LEN])
{
    const spk_transport_bootstrap *bs = cfg->bs;
    mesh m = {cfg, bs->rank, bs->world_size, now_ms() + cfg->timeout_ms, {0}};
    for (int p = 0; p < m.world; p++) {
        fds[p] = -1;
        addrs[p][0] = '\0';
    }
    if (m.world == 1)
        return SPK_OK;
    if (sodium_init() < 0)
        return merr(&m, SPK_ERR_INTERNAL, "libsodium failed to initialize");
    const char *host = cfg->bind_addr && *cfg->bind_addr ? cfg->bind_addr : "127.0.0.1";
    spk_tcp_info me = {{0}, 0, {0}, cfg->data_auth ? SPK_TCP_INFO_DATA_AUTH : 0};
    if (strlen(host) >= sizeof me.host)
        return merr(&m, SPK_ERR_INVALID_ARG, "bind address \"%s\" too long", host);
    snprintf(me.host, sizeof me.host, "%s", host);
    int lfd = open_listener(&m, host, &me.port);
    if (lfd < 0)
        return merr(&m, SPK_ERR_IO, "cannot listen for data connections on %s: %s", host,
                    strerror(errno));
    randombytes_buf(me.comm_id, sizeof me.comm_id);
    uint8_t *all = malloc((size_t)m.world * SPK_TCP_INFO_LEN);
    spk_tcp_info *infos = calloc((size_t)m.world, sizeof *infos);
    uint8_t mine[SPK_TCP_INFO_LEN];
    spk_status st = SPK_OK;
    if (!all || !infos) {
        st = merr(&m, SPK_ERR_NOMEM, "out of memory for %d peer infos", m.world);
        goto out;
    }
    spk_tcp_info_encode(&me, mine);
    st = bs->allgather(bs->ctx, mine, all, SPK_TCP_INFO_LEN, cfg->timeout_ms);
    if (st != SPK_OK)
        goto out;
    for (int p = 0; p < m.world; p++)
        if (spk_tcp_info_decode(all + (size_t)p * SPK_TCP_INFO_LEN, &infos[p]) != 0) {
            st = merr(&m, SPK_ERR_FORMAT, "rank %d sent malformed data-connection info", p);
            goto out;
        }
    for (int p = 0; p < m.world; p++) /* one mode for all: the byte streams differ */
        if ((infos[p].flags & SPK_TCP_INFO_DATA_AUTH) != (me.flags & SPK_TCP_INFO_DATA_AUTH)) {
            st = merr(&m, SPK_ERR_INVALID_ARG,
                      "data-plane authentication is %s on rank %d but %s here: set SPK_DATA_AUTH "
                      "(or the cluster config's unauthenticated_data) the same on every rank",
                      me.flags ? "off" : "on", p, me.flags ? "on" : "off");
            goto out;
        }
    memcpy(m.comm_id, infos[0].comm_id, SPK_TCP_COMM_ID_LEN);
    if (cfg->comm_id_out)
        memcpy(cfg->comm_id_out, m.comm_id, SPK_TCP_COMM_ID_LEN);
    for (int p = 0; p < m.rank && st == SPK_OK; p++) {
        st = connect_peer(&m, p, &infos[p], &fds[p]);
        snprintf(addrs[p], SPK_TCP_ADDR_LEN, "%s:%u", infos[p].host, infos[p].port);
    }
    if (st == SPK_OK)
        st = accept_peers(&m, lfd, fds, addrs);
    for (int p = 0; p < m.world && st == SPK_OK; p++) /* name peers by their listen address */
        snprintf(addrs[p], SPK_TCP_ADDR_LEN, "%s:%u", infos[p].host, infos[p].port);
out:
    close(lfd);
    free(all);
    free(infos);
    if (st != SPK_OK)
        for (int p = 0; p < m.world; p++)
            if (fds[p] >= 0) {
                close(fds[p]);
                fds[p] = -1;
            }
    return st;
}
