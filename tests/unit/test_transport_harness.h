/*
 * Test harness for transports (header-only, included by tests/unit/test_transport_*.c): a tiny
 * bootstrap hub (socketpairs before fork, or a TCP rendezvous for ranks in other network
 * namespaces), forking N rank processes, and the conformance suite every transport must pass.
 * Rank processes report failures on stderr and through their exit code.
 */
#ifndef SPK_TEST_TRANSPORT_HARNESS_H
#define SPK_TEST_TRANSPORT_HARNESS_H

#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/dtype.h"
#include "sparkinfer/transport.h"

#define TH_MAX_WORLD 16

/* Each test program uses a different part of this header. */
#pragma GCC diagnostic ignored "-Wunused-function"

static double th_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* ---- blocking I/O with a deadline: 0 ok, -1 EOF/error, -2 timeout ---- */
static int th_io(int fd, void *buf, size_t len, int is_send, int timeout_ms)
{
    uint8_t *p = buf;
    size_t done = 0;
    double deadline = th_now_ms() + timeout_ms;
    while (done < len) {
        double left = deadline - th_now_ms();
        if (left <= 0)
            return -2;
        struct pollfd pf = {fd, is_send ? POLLOUT : POLLIN, 0};
        int r = poll(&pf, 1, (int)left + 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            continue;
        ssize_t n = is_send ? send(fd, p + done, len - done, MSG_NOSIGNAL) : recv(fd, p + done, len - done, 0);
        if (n > 0)
            done += (size_t)n;
        else if (n == 0 || (errno != EINTR && errno != EAGAIN))
            return -1;
    }
    return 0;
}

/* ---- bootstrap client ---- */
typedef struct th_boot {
    int fd;
    spk_transport_bootstrap bs;
    uint8_t nonce[32];
    char addr[64];
} th_boot;

static spk_status th_allgather(void *ctx, const void *mine, void *all, size_t bpr, int timeout_ms)
{
    th_boot *b = ctx;
    int tmo = timeout_ms > 0 ? timeout_ms : 30000;
    uint64_t hdr = bpr;
    if (th_io(b->fd, &hdr, 8, 1, tmo) || th_io(b->fd, (void *)(uintptr_t)mine, bpr, 1, tmo))
        return SPK_ERR_PEER_LOST;
    int r = th_io(b->fd, all, bpr * (size_t)b->bs.world_size, 0, tmo);
    return r == 0 ? SPK_OK : r == -2 ? SPK_ERR_TIMEOUT : SPK_ERR_PEER_LOST;
}

static spk_status th_barrier(void *ctx, int timeout_ms)
{
    th_boot *b = ctx;
    uint8_t one = 1, all[TH_MAX_WORLD];
    return th_allgather(ctx, &one, all, 1, timeout_ms);
    (void)b;
}

static void th_boot_init(th_boot *b, int fd, int rank, int world, const uint8_t nonce[32],
                         const char *local_addr)
{
    memset(b, 0, sizeof *b);
    b->fd = fd;
    memcpy(b->nonce, nonce, 32);
    snprintf(b->addr, sizeof b->addr, "%s", local_addr);
    b->bs.struct_size = sizeof b->bs;
    b->bs.rank = rank;
    b->bs.world_size = world;
    b->bs.ctx = b;
    b->bs.allgather = th_allgather;
    b->bs.barrier = th_barrier;
    b->bs.cluster_nonce = b->nonce;
    b->bs.cluster_nonce_len = 32;
    b->bs.local_addr = b->addr;
}

/* ---- hub: serves allgather rounds until a rank closes ---- */
static void th_hub_serve(int *fds, int world, int timeout_ms)
{
    uint8_t *buf = NULL;
    for (;;) {
        uint64_t bpr = 0, h;
        int ok = 1;
        for (int r = 0; r < world && ok; r++) {
            if (th_io(fds[r], &h, 8, 0, timeout_ms) != 0 || h > (1u << 20) || (r && h != bpr)) {
                ok = 0;
                break;
            }
            if (r == 0) {
                bpr = h;
                free(buf);
                buf = malloc(bpr * (size_t)world + 1);
            }
            if (th_io(fds[r], buf + (size_t)r * bpr, bpr, 0, timeout_ms) != 0)
                ok = 0;
        }
        for (int r = 0; r < world && ok; r++)
            if (th_io(fds[r], buf, bpr * (size_t)world, 1, timeout_ms) != 0)
                ok = 0;
        if (!ok)
            break;
    }
    free(buf);
    for (int r = 0; r < world; r++)
        close(fds[r]);
}

/* ---- callbacks for init params ---- */
static _Thread_local char th_last_err[512];
static spk_status th_set_error(spk_status st, const char *msg)
{
    snprintf(th_last_err, sizeof th_last_err, "%s", msg);
    return st;
}
static int th_verbose;
static void th_log(spk_log_level lv, const char *msg)
{
    if (lv >= SPK_LOG_WARN || th_verbose)
        fprintf(stderr, "[transport log %d] %s\n", (int)lv, msg);
}

static void th_params(spk_transport_init_params *p, const th_boot *b, int timeout_ms)
{
    memset(p, 0, sizeof *p);
    p->struct_size = sizeof *p;
    p->bootstrap = &b->bs;
    p->timeout_ms = timeout_ms;
    p->cuda_device = -1;
    p->set_error = th_set_error;
    p->log = th_log;
}

/* ---- reports from rank processes ---- */
typedef struct th_report {
    int rank;
    int status;
    double t_ms;
    double aux_ms;
} th_report;

static void th_report_send(int fd, int rank, int status, double t_ms, double aux_ms)
{
    th_report r = {rank, status, t_ms, aux_ms};
    ssize_t n = write(fd, &r, sizeof r);
    (void)n;
}

#define TH_FAIL(...)                                                                             \
    do {                                                                                         \
        fprintf(stderr, "rank failure at %s:%d: ", __FILE__, __LINE__);                           \
        fprintf(stderr, __VA_ARGS__);                                                            \
        fprintf(stderr, " [last transport error: %s]\n", th_last_err);                          \
        return 1;                                                                                \
    } while (0)

typedef int (*th_rank_fn)(const spk_transport *vt, th_boot *boot, int report_fd, void *arg);

/*
 * Fork `world` rank processes on loopback; the parent serves the bootstrap. `nonce_differs`:
 * rank world-1 gets another cluster nonce. Returns the number of ranks that failed (exit != 0 or
 * killed by a signal, except rank `may_die`).
 */
static int th_run_world(const spk_transport *vt, int world, th_rank_fn fn, void *arg,
                        int nonce_differs, int may_die, th_report *reports, int cap, int *n_reports)
{
    int fds[TH_MAX_WORLD], rp[2];
    pid_t pids[TH_MAX_WORLD];
    uint8_t nonce[32], other[32];
    uint64_t s = (uint64_t)getpid() * 0x9E3779B97F4A7C15ull ^ (uint64_t)th_now_ms();
    for (int i = 0; i < 32; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        nonce[i] = (uint8_t)s;
        other[i] = (uint8_t)(s >> 8);
    }
    if (pipe(rp) != 0)
        return world;
    fflush(stdout);
    fflush(stderr);
    for (int r = 0; r < world; r++) {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0)
            return world;
        pids[r] = fork();
        if (pids[r] == 0) {
            close(sv[0]);
            close(rp[0]);
            for (int q = 0; q < r; q++)
                close(fds[q]);
            th_boot b;
            th_boot_init(&b, sv[1], r, world, (nonce_differs && r == world - 1) ? other : nonce,
                         "127.0.0.1");
            int rc = fn(vt, &b, rp[1], arg);
            fflush(stdout);
            fflush(stderr);
            _exit(rc);
        }
        close(sv[1]);
        fds[r] = sv[0];
    }
    close(rp[1]);
    th_hub_serve(fds, world, 120000);
    int failed = 0;
    for (int r = 0; r < world; r++) {
        int wst = 0;
        waitpid(pids[r], &wst, 0);
        int ok = WIFEXITED(wst) && WEXITSTATUS(wst) == 0;
        if (!ok && r != may_die) {
            fprintf(stderr, "rank %d of %d: %s %d\n", r, world,
                    WIFEXITED(wst) ? "exit status" : "killed by signal",
                    WIFEXITED(wst) ? WEXITSTATUS(wst) : WTERMSIG(wst));
            failed++;
        }
    }
    int n = 0;
    th_report rec;
    while (read(rp[0], &rec, sizeof rec) == (ssize_t)sizeof rec)
        if (reports && n < cap)
            reports[n++] = rec;
    close(rp[0]);
    if (n_reports)
        *n_reports = n;
    return failed;
}

/* ---- deterministic data ---- */
static uint64_t th_mix(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

static void th_fill_bytes(uint8_t *p, size_t n, uint64_t seed)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t v = th_mix(seed + i);
        memcpy(p + i, &v, 8);
    }
    for (; i < n; i++)
        p[i] = (uint8_t)th_mix(seed + i);
}

/* Exactly representable value of element i on rank r whose sums over <= 16 ranks are exact. */
static double th_exact_val(int r, size_t i, spk_transport_dtype dt)
{
    uint64_t h = th_mix(((uint64_t)r << 40) ^ i);
    if (dt == SPK_TRANSPORT_F32)
        return (double)((int64_t)(h % 4001) - 2000) * 0.125;
    return (double)((int64_t)(h % 33) - 16); /* |sum| <= 256: exact in f16 and bf16 */
}

static void th_store(void *buf, size_t i, double v, spk_transport_dtype dt)
{
    if (dt == SPK_TRANSPORT_F32)
        ((float *)buf)[i] = (float)v;
    else if (dt == SPK_TRANSPORT_F16)
        ((uint16_t *)buf)[i] = spk_f32_to_f16((float)v);
    else
        ((uint16_t *)buf)[i] = spk_f32_to_bf16((float)v);
}

static size_t th_esz(spk_transport_dtype dt)
{
    return dt == SPK_TRANSPORT_F32 ? 4 : 2;
}

static const char *th_dtname(spk_transport_dtype dt)
{
    return dt == SPK_TRANSPORT_F32 ? "f32" : dt == SPK_TRANSPORT_F16 ? "f16" : "bf16";
}

static uint64_t th_fnv(const void *p, size_t n)
{
    const uint8_t *b = p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

/* ---- conformance suite ---- */

static int th_check_p2p(const spk_transport *vt, spk_transport_comm *c, size_t bytes)
{
    int r = vt->rank(c), w = vt->world_size(c);
    uint8_t *sb = malloc(bytes + 1), *rb = malloc(bytes + 1), *ex = malloc(bytes + 1);
    if (!sb || !rb || !ex)
        TH_FAIL("malloc %zu", bytes);
    int right = (r + 1) % w, left = (r + w - 1) % w;
    /* ring exchange with sendrecv */
    th_fill_bytes(sb, bytes, (uint64_t)r * 1000003u + bytes);
    th_fill_bytes(ex, bytes, (uint64_t)left * 1000003u + bytes);
    memset(rb, 0xEE, bytes);
    spk_status st = vt->sendrecv(c, right, sb, bytes, left, rb, bytes, SPK_TRANSPORT_MEM_HOST, -1);
    if (st != SPK_OK)
        TH_FAIL("sendrecv %zu bytes: status %d", bytes, st);
    if (memcmp(rb, ex, bytes) != 0)
        TH_FAIL("sendrecv %zu bytes: payload from rank %d differs", bytes, left);
    /* blocking send/recv between ranks 0 and 1, both directions, in order */
    if (r <= 1) {
        int peer = 1 - r;
        for (int dir = 0; dir < 2; dir++) {
            int sender = dir;
            if (r == sender) {
                th_fill_bytes(sb, bytes, 77u + (uint64_t)dir + bytes);
                st = vt->send(c, peer, sb, bytes, SPK_TRANSPORT_MEM_HOST, -1);
            } else {
                th_fill_bytes(ex, bytes, 77u + (uint64_t)dir + bytes);
                memset(rb, 0xEE, bytes);
                st = vt->recv(c, peer, rb, bytes, SPK_TRANSPORT_MEM_HOST, -1);
                if (st == SPK_OK && memcmp(rb, ex, bytes) != 0)
                    TH_FAIL("recv %zu bytes from rank %d: payload differs", bytes, peer);
            }
            if (st != SPK_OK)
                TH_FAIL("send/recv %zu bytes: status %d", bytes, st);
        }
    }
    free(sb);
    free(rb);
    free(ex);
    return 0;
}

static int th_check_allreduce_exact(const spk_transport *vt, spk_transport_comm *c, size_t count,
                                    spk_transport_dtype dt)
{
    int r = vt->rank(c), w = vt->world_size(c);
    size_t esz = th_esz(dt);
    uint8_t *buf = malloc(count * esz + 1), *want = malloc(count * esz + 1);
    if (!buf || !want)
        TH_FAIL("malloc");
    for (size_t i = 0; i < count; i++) {
        double s = 0;
        for (int q = 0; q < w; q++)
            s += th_exact_val(q, i, dt);
        th_store(buf, i, th_exact_val(r, i, dt), dt);
        th_store(want, i, s, dt);
    }
    spk_status st = vt->allreduce(c, buf, count, dt, SPK_TRANSPORT_MEM_HOST, -1);
    if (st != SPK_OK)
        TH_FAIL("allreduce %s count %zu: status %d", th_dtname(dt), count, st);
    if (memcmp(buf, want, count * esz) != 0) {
        size_t i = 0;
        while (memcmp(buf + i * esz, want + i * esz, esz) == 0)
            i++;
        TH_FAIL("allreduce %s count %zu (world %d): element %zu differs from the exact sum",
                th_dtname(dt), count, w, i);
    }
    free(buf);
    free(want);
    return 0;
}

/* Random non-integer inputs: every rank must end with the same bits, close to the float64 sum. */
static int th_check_allreduce_random(const spk_transport *vt, spk_transport_comm *c, size_t count,
                                     spk_transport_dtype dt)
{
    int r = vt->rank(c), w = vt->world_size(c);
    size_t esz = th_esz(dt);
    uint8_t *buf = malloc(count * esz + 1);
    uint64_t *hashes = malloc(sizeof(uint64_t) * (size_t)w);
    if (!buf || !hashes)
        TH_FAIL("malloc");
    for (size_t i = 0; i < count; i++) {
        double v = (double)(th_mix(((uint64_t)r << 40) ^ i ^ 0x5555) >> 11) / 9007199254740992.0;
        th_store(buf, i, v * 2 - 1, dt);
    }
    spk_status st = vt->allreduce(c, buf, count, dt, SPK_TRANSPORT_MEM_HOST, -1);
    if (st != SPK_OK)
        TH_FAIL("allreduce random %s count %zu: status %d", th_dtname(dt), count, st);
    double tol = dt == SPK_TRANSPORT_F32 ? 1e-5 : dt == SPK_TRANSPORT_F16 ? 1e-2 : 8e-2;
    for (size_t i = 0; i < count; i++) {
        double s = 0;
        for (int q = 0; q < w; q++) {
            double v = (double)(th_mix(((uint64_t)q << 40) ^ i ^ 0x5555) >> 11) / 9007199254740992.0;
            uint8_t one[4];
            th_store(one, 0, v * 2 - 1, dt);
            s += dt == SPK_TRANSPORT_F32 ? (double)((float *)one)[0]
                 : dt == SPK_TRANSPORT_F16 ? (double)spk_f16_to_f32(((uint16_t *)one)[0])
                                           : (double)spk_bf16_to_f32(((uint16_t *)one)[0]);
        }
        double got = dt == SPK_TRANSPORT_F32 ? (double)((float *)buf)[i]
                     : dt == SPK_TRANSPORT_F16 ? (double)spk_f16_to_f32(((uint16_t *)buf)[i])
                                               : (double)spk_bf16_to_f32(((uint16_t *)buf)[i]);
        if (fabs(got - s) > tol * (1 + fabs(s)))
            TH_FAIL("allreduce random %s count %zu: element %zu = %g, float64 sum %g",
                    th_dtname(dt), count, i, got, s);
    }
    uint64_t h = th_fnv(buf, count * esz);
    st = vt->allgather(c, &h, hashes, sizeof h, SPK_TRANSPORT_MEM_HOST, -1);
    if (st != SPK_OK)
        TH_FAIL("allgather of result hashes: status %d", st);
    for (int q = 0; q < w; q++)
        if (hashes[q] != h)
            TH_FAIL("allreduce random %s count %zu: rank %d holds different bits than rank %d",
                    th_dtname(dt), count, q, r);
    free(buf);
    free(hashes);
    return 0;
}

static int th_check_allgather(const spk_transport *vt, spk_transport_comm *c, size_t bpr,
                              int in_place)
{
    int r = vt->rank(c), w = vt->world_size(c);
    uint8_t *all = malloc(bpr * (size_t)w + 1), *mine = malloc(bpr + 1), *ex = malloc(bpr + 1);
    if (!all || !mine || !ex)
        TH_FAIL("malloc");
    memset(all, 0xEE, bpr * (size_t)w);
    th_fill_bytes(mine, bpr, 991u * (uint64_t)r + bpr);
    if (in_place)
        memcpy(all + (size_t)r * bpr, mine, bpr);
    spk_status st = vt->allgather(c, in_place ? all + (size_t)r * bpr : mine, all, bpr,
                                  SPK_TRANSPORT_MEM_HOST, -1);
    if (st != SPK_OK)
        TH_FAIL("allgather %zu bytes/rank: status %d", bpr, st);
    for (int q = 0; q < w; q++) {
        th_fill_bytes(ex, bpr, 991u * (uint64_t)q + bpr);
        if (memcmp(all + (size_t)q * bpr, ex, bpr) != 0)
            TH_FAIL("allgather %zu bytes/rank: block of rank %d differs", bpr, q);
    }
    free(all);
    free(mine);
    free(ex);
    return 0;
}

static int th_conformance(const spk_transport *vt, spk_transport_comm *c, int big)
{
    int r = vt->rank(c), w = vt->world_size(c);
    double t0 = th_now_ms();
    static const size_t p2p_sizes[] = {1, 2, 3, 7, 4096, 65537, 1000003};
    for (size_t k = 0; k < sizeof p2p_sizes / sizeof p2p_sizes[0] && w > 1; k++)
        if (th_check_p2p(vt, c, p2p_sizes[k]))
            return 1;
    if (big && w > 1 && th_check_p2p(vt, c, (size_t)64 << 20))
        return 1;
    static const spk_transport_dtype dts[] = {SPK_TRANSPORT_F32, SPK_TRANSPORT_F16,
                                              SPK_TRANSPORT_BF16};
    static const size_t counts[] = {1, 2, 3, 5, 1000, 4097, 16411, 262147};
    for (int d = 0; d < 3; d++) {
        for (size_t k = 0; k < sizeof counts / sizeof counts[0]; k++)
            if (th_check_allreduce_exact(vt, c, counts[k], dts[d]))
                return 1;
        if (th_check_allreduce_random(vt, c, 33333, dts[d]))
            return 1;
    }
    if (big && th_check_allreduce_exact(vt, c, ((size_t)64 << 20) / 4 + 1 - (w == 4 ? (48 << 20) / 4 : 0),
                                        SPK_TRANSPORT_F32))
        return 1;
    if (big && th_check_allreduce_exact(vt, c, ((size_t)4 << 20) + 3, SPK_TRANSPORT_BF16))
        return 1;
    static const size_t ag_sizes[] = {1, 3, 4096, 100003};
    for (size_t k = 0; k < sizeof ag_sizes / sizeof ag_sizes[0]; k++)
        if (th_check_allgather(vt, c, ag_sizes[k], (int)(k & 1)))
            return 1;
    if (big && th_check_allgather(vt, c, ((size_t)16 << 20) + 5, 0))
        return 1;
    for (int i = 0; i < 3; i++)
        if (vt->barrier(c, -1) != SPK_OK)
            TH_FAIL("barrier %d", i);
    if (r == 0)
        printf("conformance %s world %d%s: passed in %.0f ms\n", vt->name, w, big ? " (with 16-64 MiB sizes)" : "",
               th_now_ms() - t0);
    return 0;
}

/* ---- TCP rendezvous for ranks in different hosts/namespaces ---- */
typedef struct th_rv {
    int lfd, world, timeout_ms;
} th_rv;

static void *th_rv_thread(void *arg)
{
    th_rv *rv = arg;
    int fds[TH_MAX_WORLD];
    for (int i = 0; i < rv->world; i++)
        fds[i] = -1;
    for (int got = 0; got < rv->world;) {
        int fd = accept(rv->lfd, NULL, NULL);
        if (fd < 0)
            break;
        uint32_t rank = 0;
        if (th_io(fd, &rank, 4, 0, rv->timeout_ms) != 0 || rank >= (uint32_t)rv->world ||
            fds[rank] >= 0) {
            close(fd);
            continue;
        }
        fds[rank] = fd;
        got++;
    }
    close(rv->lfd);
    th_hub_serve(fds, rv->world, rv->timeout_ms);
    free(rv);
    return NULL;
}

static int th_rendezvous(const char *hostport, int rank, int world, int timeout_ms)
{
    char host[128];
    snprintf(host, sizeof host, "%s", hostport);
    char *colon = strrchr(host, ':');
    if (!colon)
        return -1;
    *colon = '\0';
    const char *port = colon + 1;
    struct addrinfo hints = {0}, *ai = NULL;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(host, port, &hints, &ai) != 0)
        return -1;
    if (rank == 0) {
        int lfd = socket(ai->ai_family, SOCK_STREAM, 0), one = 1;
        setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (lfd < 0 || bind(lfd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(lfd, 16) != 0) {
            perror("rendezvous listen");
            freeaddrinfo(ai);
            return -1;
        }
        th_rv *rv = malloc(sizeof *rv);
        *rv = (th_rv){lfd, world, timeout_ms};
        pthread_t t;
        pthread_create(&t, NULL, th_rv_thread, rv);
        pthread_detach(t);
    }
    int fd = -1;
    double deadline = th_now_ms() + timeout_ms;
    while (th_now_ms() < deadline) {
        fd = socket(ai->ai_family, SOCK_STREAM, 0);
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
            break;
        close(fd);
        fd = -1;
        usleep(50000);
    }
    freeaddrinfo(ai);
    uint32_t r = (uint32_t)rank;
    if (fd >= 0 && th_io(fd, &r, 4, 1, timeout_ms) != 0) {
        close(fd);
        fd = -1;
    }
    return fd;
}

#endif
