/* Control-plane sockets: every operation ends by a deadline, no SIGPIPE. */
#include "cluster/net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/error.h"

int64_t spk_net_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

spk_status spk_net_split_hostport(const char *s, char *host, size_t host_cap, char *port,
                                  size_t port_cap)
{
    if (!s || !*s)
        return spk_err(SPK_ERR_INVALID_ARG, "coordinator address is empty (want HOST:PORT)");
    const char *colon;
    size_t hl;
    const char *h = s;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':')
            return spk_err(SPK_ERR_INVALID_ARG, "coordinator \"%s\": want [IPV6]:PORT", s);
        h = s + 1;
        hl = (size_t)(close - h);
        colon = close + 1;
    } else {
        colon = strrchr(s, ':');
        if (!colon || strchr(s, ':') != colon)
            return spk_err(SPK_ERR_INVALID_ARG, "coordinator \"%s\": want HOST:PORT", s);
        hl = (size_t)(colon - s);
    }
    if (hl == 0 || hl >= host_cap)
        return spk_err(SPK_ERR_INVALID_ARG, "coordinator \"%s\": host empty or too long", s);
    const char *p = colon + 1;
    char *end = NULL;
    errno = 0;
    long v = strtol(p, &end, 10);
    if (!*p || *end || errno || v < 1 || v > 65535 || strlen(p) >= port_cap)
        return spk_err(SPK_ERR_INVALID_ARG, "coordinator \"%s\": port must be 1..65535", s);
    memcpy(host, h, hl);
    host[hl] = '\0';
    snprintf(port, port_cap, "%ld", v);
    return SPK_OK;
}

static int sa_is_loopback(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        if (IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr))
            return 1;
        if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr))
            return in6->sin6_addr.s6_addr[12] == 127;
    }
    return 0;
}

int spk_net_is_loopback(const char *host)
{
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(host, NULL, &hints, &res) != 0 || !res)
        return 0;
    int all = 1;
    for (struct addrinfo *a = res; a; a = a->ai_next)
        if (!sa_is_loopback(a->ai_addr))
            all = 0;
    freeaddrinfo(res);
    return all;
}

void spk_net_addr_str(const struct sockaddr *sa, socklen_t len, char *out, size_t cap)
{
    char h[NI_MAXHOST], p[NI_MAXSERV];
    if (getnameinfo(sa, len, h, sizeof h, p, sizeof p, NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
        snprintf(out, cap, "?");
        return;
    }
    if (sa->sa_family == AF_INET6)
        snprintf(out, cap, "[%s]:%s", h, p);
    else
        snprintf(out, cap, "%s:%s", h, p);
}

void spk_net_local_host(int fd, char *out, size_t cap)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    char h[NI_MAXHOST];
    out[0] = '\0';
    if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0)
        return;
    if (getnameinfo((struct sockaddr *)&ss, len, h, sizeof h, NULL, 0, NI_NUMERICHOST) != 0)
        return;
    snprintf(out, cap, "%s", h);
}

void spk_net_prepare(int fd)
{
    int one = 1;
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0)
        fcntl(fd, F_SETFL, fl | O_NONBLOCK);
    fcntl(fd, F_SETFD, FD_CLOEXEC);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

spk_status spk_net_listen(const char *host, const char *port, int *fd_out)
{
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    *fd_out = -1;
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0)
        return spk_err(SPK_ERR_IO, "cannot resolve %s:%s: %s", host, port, gai_strerror(rc));
    int err = 0;
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
        if (fd < 0) {
            err = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, a->ai_addr, a->ai_addrlen) == 0 && listen(fd, 128) == 0) {
            freeaddrinfo(res);
            *fd_out = fd;
            return SPK_OK;
        }
        err = errno;
        close(fd);
    }
    freeaddrinfo(res);
    return spk_err(SPK_ERR_IO, "cannot listen on %s:%s: %s", host, port, strerror(err));
}

/* Wait for `events` on fd until deadline: 1 ready, 0 timeout, -1 error (errno). */
static int wait_fd(int fd, short events, int64_t deadline_ms)
{
    for (;;) {
        int64_t left = deadline_ms - spk_net_now_ms();
        if (left <= 0)
            return 0;
        struct pollfd p = {.fd = fd, .events = events};
        int rc = poll(&p, 1, left > 1000000 ? 1000000 : (int)left);
        if (rc > 0)
            return 1;
        if (rc < 0 && errno != EINTR)
            return -1;
    }
}

spk_status spk_net_connect(const char *host, const char *port, int64_t deadline_ms, int *fd_out)
{
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_socktype = SOCK_STREAM;
    *fd_out = -1;
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0)
        return spk_err(SPK_ERR_IO, "cannot resolve %s:%s: %s", host, port, gai_strerror(rc));
    int err = ECONNREFUSED;
    spk_status st = SPK_ERR_IO;
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
        if (fd < 0) {
            err = errno;
            continue;
        }
        spk_net_prepare(fd);
        if (connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
            if (errno != EINPROGRESS) {
                err = errno;
                close(fd);
                continue;
            }
            int w = wait_fd(fd, POLLOUT, deadline_ms);
            if (w <= 0) {
                err = w == 0 ? ETIMEDOUT : errno;
                st = w == 0 ? SPK_ERR_TIMEOUT : SPK_ERR_IO;
                close(fd);
                continue;
            }
            int soerr = 0;
            socklen_t sl = sizeof soerr;
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
            if (soerr != 0) {
                err = soerr;
                st = SPK_ERR_IO;
                close(fd);
                continue;
            }
        }
        freeaddrinfo(res);
        *fd_out = fd;
        return SPK_OK;
    }
    freeaddrinfo(res);
    return spk_err(st, "cannot connect to %s:%s: %s", host, port, strerror(err));
}

spk_status spk_net_send_all(int fd, const void *buf, size_t n, int64_t deadline_ms)
{
    const uint8_t *p = buf;
    while (n > 0) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (k > 0) {
            p += k;
            n -= (size_t)k;
            continue;
        }
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            int w = wait_fd(fd, POLLOUT, deadline_ms);
            if (w == 0)
                return spk_err(SPK_ERR_TIMEOUT, "send: peer did not take %zu more bytes in time", n);
            if (w < 0)
                return spk_err(SPK_ERR_IO, "send: poll: %s", strerror(errno));
            continue;
        }
        if (k < 0 && (errno == EPIPE || errno == ECONNRESET || errno == ENOTCONN))
            return spk_err(SPK_ERR_PEER_LOST, "send: connection closed (%s)", strerror(errno));
        return spk_err(SPK_ERR_IO, "send: %s", k < 0 ? strerror(errno) : "no progress");
    }
    return SPK_OK;
}

spk_status spk_net_recv_all(int fd, void *buf, size_t n, int64_t deadline_ms)
{
    uint8_t *p = buf;
    while (n > 0) {
        ssize_t k = recv(fd, p, n, MSG_DONTWAIT);
        if (k > 0) {
            p += k;
            n -= (size_t)k;
            continue;
        }
        if (k == 0)
            return spk_err(SPK_ERR_PEER_LOST, "connection closed by peer");
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            int w = wait_fd(fd, POLLIN, deadline_ms);
            if (w == 0)
                return spk_err(SPK_ERR_TIMEOUT, "receive: nothing arrived in time");
            if (w < 0)
                return spk_err(SPK_ERR_IO, "receive: poll: %s", strerror(errno));
            continue;
        }
        if (errno == ECONNRESET || errno == ENOTCONN || errno == EPIPE)
            return spk_err(SPK_ERR_PEER_LOST, "connection reset by peer");
        return spk_err(SPK_ERR_IO, "receive: %s", strerror(errno));
    }
    return SPK_OK;
}

spk_status spk_net_recv_frame(int fd, int64_t deadline_ms, spk_proto_msg *m, uint8_t **payload)
{
    return spk_net_recv_frame_key(fd, deadline_ms, NULL, m, payload);
}

spk_status spk_net_recv_frame_key(int fd, int64_t deadline_ms, const uint8_t *key,
                                  spk_proto_msg *m, uint8_t **payload)
{
    uint8_t hb[SPK_PROTO_HEADER_SIZE];
    spk_proto_header h;
    *payload = NULL;
    /* Read the magic first so that garbage is recognised without waiting for 24 bytes. */
    spk_status st = spk_net_recv_all(fd, hb, 4, deadline_ms);
    if (st != SPK_OK)
        return st;
    if (spk_le_get32(hb) != SPK_PROTO_MAGIC)
        return spk_err(SPK_ERR_FORMAT, "frame header: bad magic 0x%08x (expected 0x%08x)",
                       spk_le_get32(hb), SPK_PROTO_MAGIC);
    st = spk_net_recv_all(fd, hb + 4, sizeof hb - 4, deadline_ms);
    if (st != SPK_OK)
        return st;
    st = spk_proto_decode_header(hb, sizeof hb, &h);
    if (st != SPK_OK)
        return st;
    if (key && !(h.flags & SPK_PROTO_F_SEALED))
        return spk_err(SPK_ERR_AUTH, "unsealed %s frame after the handshake",
                       spk_proto_type_name(h.type));
    /* Whole frame in one block so that the tag can be checked over header and payload. */
    uint8_t *f = malloc(SPK_PROTO_HEADER_SIZE + (size_t)h.length);
    if (!f)
        return spk_err(SPK_ERR_NOMEM, "receive: %u-byte frame", h.length);
    memcpy(f, hb, sizeof hb);
    st = spk_net_recv_all(fd, f + SPK_PROTO_HEADER_SIZE, h.length, deadline_ms);
    if (st == SPK_OK && key &&
        spk_proto_verify(f, SPK_PROTO_HEADER_SIZE + (size_t)h.length, key) != 0)
        st = spk_err(SPK_ERR_AUTH, "%s frame %llu failed its session-key check (tampered or "
                     "forged)", spk_proto_type_name(h.type), (unsigned long long)h.seq);
    uint8_t *p = NULL;
    if (st == SPK_OK && h.length) {
        p = malloc(h.length);
        if (!p)
            st = spk_err(SPK_ERR_NOMEM, "receive: %u-byte frame", h.length);
        else
            memcpy(p, f + SPK_PROTO_HEADER_SIZE, h.length);
    }
    free(f);
    if (st == SPK_OK)
        st = spk_proto_decode_payload(&h, p, m);
    if (st != SPK_OK) {
        free(p);
        return st;
    }
    *payload = p;
    return SPK_OK;
}

spk_status spk_net_send_msg(int fd, const spk_proto_msg *m, int64_t deadline_ms)
{
    return spk_net_send_msg_key(fd, m, NULL, deadline_ms);
}

spk_status spk_net_send_msg_key(int fd, const spk_proto_msg *m, const uint8_t *key,
                                int64_t deadline_ms)
{
    uint8_t small[512];
    uint8_t *buf = small;
    size_t n = 0;
    spk_proto_msg sm;
    if (key) {
        sm = *m;
        sm.h.flags |= SPK_PROTO_F_SEALED;
        m = &sm;
    }
    spk_status st = spk_proto_encode(m, small, sizeof small, &n);
    if (st == SPK_ERR_TOO_LONG) {
        size_t cap = SPK_PROTO_HEADER_SIZE + SPK_PROTO_MAX_PAYLOAD;
        /* Size the buffer from the fields: encode tells us only whether it fits. */
        switch (m->h.type) {
        case SPK_MSG_COMMAND:
            cap = SPK_PROTO_HEADER_SIZE + 8 + (size_t)m->u.command.len;
            break;
        case SPK_MSG_REPLY:
            cap = SPK_PROTO_HEADER_SIZE + 10 + (size_t)m->u.reply.msg_len + m->u.reply.len;
            break;
        case SPK_MSG_ALLGATHER:
            cap = SPK_PROTO_HEADER_SIZE + 12 +
                  (size_t)m->u.allgather.item_len * m->u.allgather.n_items;
            break;
        default:
            break;
        }
        if (cap > SPK_PROTO_HEADER_SIZE + SPK_PROTO_MAX_PAYLOAD)
            cap = SPK_PROTO_HEADER_SIZE + SPK_PROTO_MAX_PAYLOAD;
        cap += SPK_PROTO_TAG_BYTES;
        buf = malloc(cap);
        if (!buf)
            return spk_err(SPK_ERR_NOMEM, "send: %zu-byte frame", cap);
        st = spk_proto_encode(m, buf, cap, &n);
    }
    if (st == SPK_OK && key)
        spk_proto_seal(buf, n, key);
    if (st == SPK_OK)
        st = spk_net_send_all(fd, buf, n, deadline_ms);
    if (buf != small)
        free(buf);
    return st;
}
