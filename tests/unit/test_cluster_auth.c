/*
 * Attacks on the cluster's links, reproduced on loopback and shown refused: a man-in-the-middle
 * relay between a real worker process and the driver that flips a byte of a REPLY, replays an old
 * frame, reorders two frames or tampers with the transport ALLGATHER; and a fake driver whose
 * ERROR text must not reach the log before it proved the cluster key.
 */
#include <poll.h>
#include <stdatomic.h>

#include "test_cluster_util.h"

#include "cluster/proto.h"

typedef enum { MITM_NONE, MITM_FLIP_REPLY, MITM_REPLAY_REPLY, MITM_SWAP_REPLIES,
               MITM_FLIP_ALLGATHER } mitm_mode;

typedef struct relay {
    int lfd, port, driver_port;
    mitm_mode mode;
    atomic_int stop;
    atomic_int tampered; /* how many times the relay did its trick */
    pthread_t th;
} relay;

static int connect_port(int port)
{
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (int tries = 0; tries < 400; tries++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0)
            return fd;
        close(fd);
        t_sleep_ms(10);
    }
    return -1;
}

static int listen_any(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 4) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0)
        return -1;
    *port = ntohs(a.sin_port);
    return fd;
}

static int send_all(int fd, const uint8_t *p, size_t n)
{
    while (n) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k <= 0)
            return -1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* Worker -> driver: whole frames, where the trick is played. */
static int relay_frame(relay *r, int to, uint8_t *f, size_t n, uint8_t **held, size_t *held_n,
                       int *n_reply)
{
    uint16_t type = spk_le_get16(f + 6);
    if (type == SPK_MSG_REPLY)
        (*n_reply)++;
    switch (r->mode) {
    case MITM_FLIP_REPLY:
        if (type == SPK_MSG_REPLY && *n_reply == 2) { /* the second reply: CMD_ADD's value */
            f[n - SPK_PROTO_TAG_BYTES - 1] ^= 0x01;
            atomic_fetch_add(&r->tampered, 1);
        }
        break;
    case MITM_FLIP_ALLGATHER:
        if (type == SPK_MSG_ALLGATHER && !atomic_load(&r->tampered)) {
            f[SPK_PROTO_HEADER_SIZE + 12] ^= 0x20; /* first byte of the transport name */
            atomic_fetch_add(&r->tampered, 1);
        }
        break;
    case MITM_REPLAY_REPLY:
        if (type == SPK_MSG_REPLY && *n_reply == 1) {
            /* counted before the frames go out: the driver may act on them (and the test read
             * the count) before this thread runs again */
            atomic_fetch_add(&r->tampered, 1);
            if (send_all(to, f, n) != 0)
                return -1; /* and the copy goes out below */
        }
        break;
    case MITM_SWAP_REPLIES:
        if (type == SPK_MSG_REPLY && *n_reply == 1) {
            *held = malloc(n);
            memcpy(*held, f, n);
            *held_n = n;
            return 0;
        }
        if (type == SPK_MSG_REPLY && *n_reply == 2 && *held) {
            atomic_fetch_add(&r->tampered, 1); /* before the swapped frames go out, as above */
            int rc = send_all(to, f, n);
            if (rc == 0)
                rc = send_all(to, *held, *held_n);
            free(*held);
            *held = NULL;
            return rc;
        }
        break;
    case MITM_NONE:
        break;
    }
    return send_all(to, f, n);
}

static void *relay_main(void *arg)
{
    relay *r = arg;
    int w = -1, d = -1;
    uint8_t *buf = malloc(1 << 22), *held = NULL;
    size_t len = 0, held_n = 0;
    int n_reply = 0;
    while (!atomic_load(&r->stop) && w < 0) {
        struct pollfd pf = {r->lfd, POLLIN, 0};
        if (poll(&pf, 1, 50) == 1)
            w = accept(r->lfd, NULL, NULL);
    }
    if (w >= 0)
        d = connect_port(r->driver_port);
    while (w >= 0 && d >= 0 && !atomic_load(&r->stop)) {
        struct pollfd pf[2] = {{w, POLLIN, 0}, {d, POLLIN, 0}};
        if (poll(pf, 2, 50) <= 0)
            continue;
        uint8_t tmp[65536];
        if (pf[1].revents) { /* driver -> worker: as is */
            ssize_t k = recv(d, tmp, sizeof tmp, 0);
            if (k <= 0 || send_all(w, tmp, (size_t)k) != 0)
                break;
        }
        if (pf[0].revents) {
            ssize_t k = recv(w, buf + len, (1 << 22) - len, 0);
            if (k <= 0)
                break;
            len += (size_t)k;
            size_t off = 0;
            while (len - off >= SPK_PROTO_HEADER_SIZE) {
                size_t n = SPK_PROTO_HEADER_SIZE + spk_le_get32(buf + off + 12);
                if (len - off < n)
                    break;
                if (relay_frame(r, d, buf + off, n, &held, &held_n, &n_reply) != 0)
                    goto out;
                off += n;
            }
            memmove(buf, buf + off, len - off);
            len -= off;
        }
    }
out:
    if (w >= 0)
        close(w);
    if (d >= 0)
        close(d);
    free(held);
    free(buf);
    return NULL;
}

static void relay_start(relay *r, mitm_mode mode)
{
    memset(r, 0, sizeof *r);
    r->mode = mode;
    r->lfd = listen_any(&r->port);
    ck_assert_int_ge(r->lfd, 0);
    r->driver_port = t_free_port();
}

static void relay_stop(relay *r)
{
    atomic_store(&r->stop, 1);
    pthread_join(r->th, NULL);
    close(r->lfd);
}

/* Driver of a 2-rank cluster whose worker reaches it only through the relay. */
static spk_status open_through(relay *r, pid_t *worker, spk_cluster **c)
{
    char wcoord[64], dcoord[64];
    snprintf(wcoord, sizeof wcoord, "127.0.0.1:%d", r->port);
    snprintf(dcoord, sizeof dcoord, "127.0.0.1:%d", r->driver_port);
    t_worker_opts o = {.key = T_KEY};
    *worker = t_spawn_worker(wcoord, 1, 2, &o);
    /* The relay thread starts after the fork (a forked child gets only the forking thread). */
    ck_assert_int_eq(pthread_create(&r->th, NULL, relay_main, r), 0);
    spk_cluster_config cfg;
    t_config(&cfg, dcoord, 0, 2, T_KEY);
    memset(t_log, 0, sizeof t_log);
    spk_set_log_callback(t_log_fn, NULL, SPK_LOG_WARN);
    *c = NULL;
    return spk_cluster_open(&cfg, c);
}

static void finish(relay *r, spk_cluster *c, pid_t worker)
{
    spk_cluster_close(c);
    spk_set_log_callback(NULL, NULL, SPK_LOG_WARN);
    relay_stop(r);
    int ec = t_wait_exit(worker, 5000);
    ck_assert_int_ne(ec, -1); /* it ended by itself (a failed cluster, not a hang) */
    printf("driver log:\n%s", t_log);
}

/* With an honest relay everything works: the failures below are the attacks' doing. */
START_TEST(honest_relay_works)
{
    relay r;
    relay_start(&r, MITM_NONE);
    pid_t w;
    spk_cluster *c;
    spk_status st = open_through(&r, &w, &c);
    ck_assert_msg(st == SPK_OK, "open: %s", spk_last_error());
    for (uint32_t x = 1; x <= 3; x++) {
        void *rep = NULL;
        size_t n = 0;
        uint32_t y = 0;
        ck_assert_int_eq(spk_cluster_call(c, 1, CMD_ADD, &x, sizeof x, &rep, &n, 5000), SPK_OK);
        memcpy(&y, rep, sizeof y);
        free(rep);
        ck_assert_uint_eq(y, x + 1000);
    }
    finish(&r, c, w);
    ck_assert_int_eq(t_log_count("session-key"), 0);
}
END_TEST

/* One flipped bit in a REPLY: the driver fails the worker, and the forged value never arrives. */
START_TEST(flipped_reply_is_refused)
{
    relay r;
    relay_start(&r, MITM_FLIP_REPLY);
    pid_t w;
    spk_cluster *c;
    spk_status st = open_through(&r, &w, &c);
    ck_assert_msg(st == SPK_OK, "open: %s", spk_last_error());
    const char ping[] = "ping";
    ck_assert_int_eq(spk_cluster_call(c, 1, SPK_CLUSTER_CMD_PING, ping, sizeof ping, NULL, NULL,
                                      5000), SPK_OK);
    uint32_t x = 7;
    void *rep = NULL;
    size_t n = 0;
    st = spk_cluster_call(c, 1, CMD_ADD, &x, sizeof x, &rep, &n, 5000);
    printf("call through a bit-flipping relay: %s: %s\n", spk_status_str(st), spk_last_error());
    ck_assert_int_eq(st, SPK_ERR_PEER_LOST);
    ck_assert_ptr_null(rep);
    ck_assert_ptr_nonnull(strstr(spk_last_error(), "failed its session-key check"));
    ck_assert_int_eq(atomic_load(&r.tampered), 1);
    ck_assert_int_eq(spk_cluster_health(c), SPK_ERR_PEER_LOST);
    finish(&r, c, w);
    ck_assert_int_ge(t_log_count("REPLY frame"), 1);
}
END_TEST

/* A REPLY sent twice (replay): refused by its sequence number, which its tag covers. */
START_TEST(replayed_frame_is_refused)
{
    relay r;
    relay_start(&r, MITM_REPLAY_REPLY);
    pid_t w;
    spk_cluster *c;
    spk_status st = open_through(&r, &w, &c);
    ck_assert_msg(st == SPK_OK, "open: %s", spk_last_error());
    uint32_t x = 7;
    void *rep = NULL;
    size_t n = 0;
    /* The first reply arrives (the copy after it is what gets refused). */
    st = spk_cluster_call(c, 1, CMD_ADD, &x, sizeof x, &rep, &n, 5000);
    free(rep);
    rep = NULL;
    ck_assert_int_eq(spk_cluster_wait_failure(c, 5000), SPK_ERR_PEER_LOST);
    printf("after a replayed frame: %s\n", spk_last_error());
    ck_assert_ptr_nonnull(strstr(spk_last_error(), "frame sequence"));
    st = spk_cluster_call(c, 1, CMD_ADD, &x, sizeof x, &rep, &n, 5000);
    ck_assert_int_eq(st, SPK_ERR_PEER_LOST);
    ck_assert_ptr_null(rep);
    ck_assert_int_eq(atomic_load(&r.tampered), 1);
    finish(&r, c, w);
}
END_TEST

/* Two REPLYs delivered in the wrong order: neither is acted on. */
START_TEST(reordered_frames_are_refused)
{
    relay r;
    relay_start(&r, MITM_SWAP_REPLIES);
    pid_t w;
    spk_cluster *c;
    spk_status st = open_through(&r, &w, &c);
    ck_assert_msg(st == SPK_OK, "open: %s", spk_last_error());
    uint32_t a = 1, b = 2, ida = 0, idb = 0;
    ck_assert_int_eq(spk_cluster_command_send(c, 1, CMD_ADD, &a, sizeof a, 1, &ida), SPK_OK);
    ck_assert_int_eq(spk_cluster_command_send(c, 1, CMD_ADD, &b, sizeof b, 1, &idb), SPK_OK);
    void *rep = NULL;
    size_t n = 0;
    st = spk_cluster_command_wait(c, 1, idb, 5000, &rep, &n);
    printf("second reply delivered first: %s: %s\n", spk_status_str(st), spk_last_error());
    ck_assert_int_eq(st, SPK_ERR_PEER_LOST);
    ck_assert_ptr_null(rep);
    ck_assert_ptr_nonnull(strstr(spk_last_error(), "frame sequence"));
    ck_assert_int_eq(spk_cluster_command_wait(c, 1, ida, 5000, &rep, &n), SPK_ERR_PEER_LOST);
    ck_assert_ptr_null(rep);
    ck_assert_int_eq(atomic_load(&r.tampered), 1);
    finish(&r, c, w);
}
END_TEST

/* The ALLGATHER that carries the transport's names and data addresses, tampered: open fails. */
START_TEST(tampered_allgather_is_refused)
{
    relay r;
    relay_start(&r, MITM_FLIP_ALLGATHER);
    pid_t w;
    spk_cluster *c;
    spk_status st = open_through(&r, &w, &c);
    printf("open through an ALLGATHER-tampering relay: %s: %s\n", spk_status_str(st),
           spk_last_error());
    ck_assert_int_ne(st, SPK_OK);
    ck_assert_ptr_null(c);
    ck_assert_int_eq(atomic_load(&r.tampered), 1);
    finish(&r, NULL, w);
    ck_assert_int_ge(t_log_count("TRANSPORT_ALLGATHER frame"), 1);
    ck_assert_int_ge(t_log_count("failed its session-key check"), 1);
}
END_TEST

/* A fake driver (no key) refuses the joiner with a crafted ERROR: none of its text may reach the
 * log or the error message, since it never proved the key. */
static void *fake_driver(void *arg)
{
    int lfd = *(int *)arg;
    int fd = accept(lfd, NULL, NULL);
    if (fd < 0)
        return NULL;
    uint8_t buf[2048];
    size_t n = 0;
    spk_proto_msg m = {0};
    m.h.type = SPK_MSG_CHALLENGE;
    m.h.flags = SPK_PROTO_F_KEYED;
    m.h.seq = 1;
    if (spk_proto_encode(&m, buf, sizeof buf, &n) == SPK_OK)
        send_all(fd, buf, n);
    uint8_t hello[SPK_PROTO_HEADER_SIZE + 8 + 64];
    ssize_t got = 0, k;
    while (got < (ssize_t)sizeof hello && (k = recv(fd, hello + got, sizeof hello - (size_t)got,
                                                   0)) > 0)
        got += k;
    const char evil[] = "EVIL-TEXT\n[4] cluster: rank 0: all good, ignore earlier errors\x1b[2J";
    memset(&m, 0, sizeof m);
    m.h.type = SPK_MSG_ERROR;
    m.h.seq = 2;
    m.u.error.status = SPK_ERR_AUTH;
    m.u.error.rank = 1;
    m.u.error.msg = evil;
    m.u.error.msg_len = sizeof evil - 1;
    if (spk_proto_encode(&m, buf, sizeof buf, &n) == SPK_OK)
        send_all(fd, buf, n);
    t_sleep_ms(200);
    close(fd);
    return NULL;
}

START_TEST(fake_driver_error_text_is_not_logged)
{
    int port = 0;
    int lfd = listen_any(&port);
    ck_assert_int_ge(lfd, 0);
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, fake_driver, &lfd), 0);
    char coord[64];
    snprintf(coord, sizeof coord, "127.0.0.1:%d", port);
    memset(t_log, 0, sizeof t_log);
    spk_set_log_callback(t_log_fn, NULL, SPK_LOG_DEBUG);
    spk_cluster_config cfg;
    t_config(&cfg, coord, 1, 2, T_KEY);
    cfg.connect_timeout_ms = 3000;
    spk_cluster *c = NULL;
    spk_status st = spk_cluster_open(&cfg, &c);
    char err[1024];
    snprintf(err, sizeof err, "%s", spk_last_error());
    spk_set_log_callback(NULL, NULL, SPK_LOG_WARN);
    pthread_join(th, NULL);
    close(lfd);
    printf("worker against a fake driver: %s: %s\nlog:\n%s", spk_status_str(st), err, t_log);
    ck_assert_int_eq(st, SPK_ERR_AUTH);
    ck_assert_ptr_null(c);
    ck_assert_ptr_nonnull(strstr(err, "authentication failed"));
    ck_assert_ptr_null(strstr(err, "EVIL"));
    ck_assert_ptr_null(strstr(err, "all good"));
    ck_assert_int_eq(t_log_count("EVIL"), 0);
    ck_assert_int_eq(t_log_count("all good"), 0);
}
END_TEST

/* The switch for trusted links: the config field on one rank and SPK_DATA_AUTH=0 on the other
 * agree, and the transport works; a rank left at the default is refused with a clear error. */
static spk_status open_data_auth(int worker_env_off, pid_t *w, spk_cluster **c)
{
    char coord[64];
    snprintf(coord, sizeof coord, "127.0.0.1:%d", t_free_port());
    if (worker_env_off)
        setenv("SPK_DATA_AUTH", "0", 1);
    t_worker_opts o = {.key = T_KEY};
    *w = t_spawn_worker(coord, 1, 2, &o);
    unsetenv("SPK_DATA_AUTH");
    spk_cluster_config cfg;
    t_config(&cfg, coord, 0, 2, T_KEY);
    cfg.transport = "tcp";
    cfg.unauthenticated_data = 1;
    *c = NULL;
    return spk_cluster_open(&cfg, c);
}

START_TEST(data_auth_switch_must_agree)
{
    pid_t w;
    spk_cluster *c;
    spk_set_log_callback(NULL, NULL, SPK_LOG_NONE);
    spk_status st = open_data_auth(1, &w, &c);
    ck_assert_msg(st == SPK_OK, "open: %s", spk_last_error());
    uint32_t id = 0, g[2];
    ck_assert_int_eq(spk_cluster_command_send(c, 1, CMD_COLL, NULL, 0, 1, &id), SPK_OK);
    ck_assert_int_eq(t_collectives(c, g), 0);
    ck_assert_int_eq(spk_cluster_command_wait(c, 1, id, 10000, NULL, NULL), SPK_OK);
    spk_cluster_close(c);
    ck_assert_int_eq(t_wait_exit(w, 5000), 0);

    st = open_data_auth(0, &w, &c);
    printf("driver without data auth, worker with: %s: %s\n", spk_status_str(st),
           spk_last_error());
    ck_assert_int_ne(st, SPK_OK);
    ck_assert_ptr_nonnull(strstr(spk_last_error(), "SPK_DATA_AUTH"));
    ck_assert_int_ne(t_wait_exit(w, 5000), 0);
}
END_TEST

/* A joiner that proved the key but has another world size is told why, over the sealed channel
 * (its exit status is the driver's INVALID_ARG, not an authentication failure). */
START_TEST(proven_joiner_of_another_world_size_is_told_why)
{
    char coord[64];
    snprintf(coord, sizeof coord, "127.0.0.1:%d", t_free_port());
    t_worker_opts o = {.key = T_KEY};
    pid_t w = t_spawn_worker(coord, 1, 3, &o);
    memset(t_log, 0, sizeof t_log);
    spk_set_log_callback(t_log_fn, NULL, SPK_LOG_WARN);
    spk_cluster_config cfg;
    t_config(&cfg, coord, 0, 2, T_KEY);
    cfg.connect_timeout_ms = 1500;
    spk_cluster *c = NULL;
    ck_assert_int_eq(spk_cluster_open(&cfg, &c), SPK_ERR_TIMEOUT);
    spk_set_log_callback(NULL, NULL, SPK_LOG_WARN);
    printf("driver log:\n%s", t_log);
    ck_assert_int_eq(t_wait_exit(w, 3000), SPK_ERR_INVALID_ARG);
    ck_assert_int_ge(t_log_count("rank 1 has world size 3, the driver has 2"), 1);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("cluster_auth");
    TCase *t = tcase_create("cluster_auth");
    tcase_set_timeout(t, 60);
    tcase_add_test(t, honest_relay_works);
    tcase_add_test(t, flipped_reply_is_refused);
    tcase_add_test(t, replayed_frame_is_refused);
    tcase_add_test(t, reordered_frames_are_refused);
    tcase_add_test(t, tampered_allgather_is_refused);
    tcase_add_test(t, fake_driver_error_text_is_not_logged);
    tcase_add_test(t, data_auth_switch_must_agree);
    tcase_add_test(t, proven_joiner_of_another_world_size_is_told_why);
    suite_add_tcase(s, t);
    return s;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    return spk_test_run(suite());
}
