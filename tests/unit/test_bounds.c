/*
 * Bounded everything: what an unauthenticated flood or a misbehaving keyed peer may cost.
 * Pending-handshake policy (idle flood, junk flood), the rank reservation at HELLO (duplicate
 * rank race, no fd leak), the control inbox bound, the log rate limit and the data mesh's
 * eviction choice.
 */
#include <dirent.h>
#include <poll.h>

#include "cluster/cluster_internal.h"
#include "test_cluster_util.h"
#include "transport/tcp/mesh.h"

static char coord[64];

static void new_coord(void) { snprintf(coord, sizeof coord, "127.0.0.1:%d", t_free_port()); }

static int coord_port(void) { return atoi(strrchr(coord, ':') + 1); }

/* Connect to the coordinator (retrying while the driver is not listening yet); -1 on failure. */
static int flood_connect(int tries)
{
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)coord_port());
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (int t = 0; t < tries; t++) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0)
            return fd;
        if (fd >= 0)
            close(fd);
        t_sleep_ms(20);
    }
    return -1;
}

static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    int n = 0;
    if (!d)
        return -1;
    while (readdir(d))
        n++;
    closedir(d);
    return n;
}

/* Log lines (captured by t_log_fn) that contain `needle` and not "suppressed". */
static int t_log_lines_with(const char *needle)
{
    int n = 0;
    pthread_mutex_lock(&t_log_mu);
    for (const char *line = t_log; *line;) {
        const char *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line) : strlen(line);
        char buf[2048];
        size_t k = len < sizeof buf - 1 ? len : sizeof buf - 1;
        memcpy(buf, line, k);
        buf[k] = '\0';
        if (strstr(buf, needle) && !strstr(buf, "suppressed"))
            n++;
        line += len + (end ? 1 : 0);
    }
    pthread_mutex_unlock(&t_log_mu);
    return n;
}

/* Sum of N over the "N similar message(s) suppressed" lines whose sample contains `needle`. */
static long t_log_suppressed(const char *needle)
{
    long total = 0;
    pthread_mutex_lock(&t_log_mu);
    for (const char *line = t_log; *line;) {
        const char *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line) : strlen(line);
        char buf[2048];
        size_t k = len < sizeof buf - 1 ? len : sizeof buf - 1;
        memcpy(buf, line, k);
        buf[k] = '\0';
        const char *s = strstr(buf, "] ");
        if (s && strstr(buf, "similar message(s) suppressed") && strstr(buf, needle))
            total += strtol(s + 2, NULL, 10);
        line += len + (end ? 1 : 0);
    }
    pthread_mutex_unlock(&t_log_mu);
    return total;
}

/* ---------------------------------------------------------------------------------------- */

/*
 * Orchestrator child: hold `n_idle` idle connections to the driver (they never send a byte), then
 * start the real worker and wait for it. The driver's deadline is shorter than any handshake
 * timeout, so the worker only gets in if the pending policy makes room for it.
 */
static int idle_flood_then_worker(int n_idle, int world)
{
    int *fds = calloc((size_t)n_idle, sizeof *fds);
    int opened = 0;
    for (int i = 0; i < n_idle; i++) {
        fds[i] = flood_connect(i == 0 ? 200 : 5);
        if (fds[i] >= 0)
            opened++;
    }
    if (opened < n_idle) {
        fprintf(stderr, "flood: only %d of %d connections opened\n", opened, n_idle);
        return 10;
    }
    pid_t w[8];
    for (int r = 1; r < world; r++) {
        t_worker_opts o = {.key = T_KEY};
        w[r] = t_spawn_worker(coord, r, world, &o);
    }
    int rc = 0;
    for (int r = 1; r < world; r++) {
        int e = t_wait_exit(w[r], 20000);
        if (e != 0) {
            fprintf(stderr, "flood: worker %d exited %d\n", r, e);
            rc = 20 + r;
        }
    }
    for (int i = 0; i < n_idle; i++)
        close(fds[i]);
    free(fds);
    return rc;
}

START_TEST(idle_flood_does_not_keep_the_real_workers_out)
{
    new_coord();
    const int world = 3, n_idle = 100;
    fflush(stdout);
    pid_t orch = fork();
    if (orch == 0)
        _exit(idle_flood_then_worker(n_idle, world));
    memset(t_log, 0, sizeof t_log);
    spk_set_log_callback(t_log_fn, NULL, SPK_LOG_WARN);
    spk_cluster_config cfg;
    t_config(&cfg, coord, 0, world, T_KEY);
    cfg.connect_timeout_ms = 4000; /* < the 5 s handshake time an idle connection used to hold */
    spk_cluster *c = NULL;
    spk_status st = spk_cluster_open(&cfg, &c);
    spk_set_log_callback(NULL, NULL, SPK_LOG_WARN);
    ck_assert_msg(st == SPK_OK, "driver open under an idle flood of %d: %s", n_idle,
                  spk_last_error());
    for (int r = 1; r < world; r++)
        ck_assert_int_eq(spk_cluster_call(c, r, SPK_CLUSTER_CMD_PING, "x", 1, NULL, NULL, 5000),
                         SPK_OK);
    /* Every reply was taken: the inbox accounting is back to empty. */
    spk_cluster_inbox_stats is;
    spk_cluster_inbox_stats_get(c, &is);
    ck_assert_uint_eq(is.frames, 0);
    ck_assert_uint_eq(is.bytes, 0);
    ck_assert_uint_gt(is.peak_bytes, 0);
    ck_assert_uint_eq(is.overruns, 0);
    ck_assert_int_eq(spk_cluster_close(c), SPK_OK);
    ck_assert_int_eq(t_wait_exit(orch, 30000), 0);
    printf("driver log (idle flood):\n%s", t_log);
    /* The idle connections that were pushed out were logged, within the rate limit. */
    ck_assert_int_ge(t_log_lines_with("evicted unauthenticated connection"), 1);
    ck_assert_int_le(t_log_lines_with("evicted unauthenticated connection"), 20 * 5);
}
END_TEST

/* Flooder child: keep n idle connections open, reopening each one the driver closes, until
 * killed (or 30 s). */
static int churning_flood(int n)
{
    struct pollfd pf[128];
    for (int i = 0; i < n; i++) {
        pf[i] = (struct pollfd){flood_connect(i == 0 ? 200 : 5), POLLIN, 0};
        if (pf[i].fd < 0)
            return 10;
    }
    int64_t end = t_now_ms() + 30000;
    while (t_now_ms() < end) {
        if (poll(pf, (nfds_t)n, 100) <= 0)
            continue;
        for (int i = 0; i < n; i++) {
            char buf[256];
            if (!pf[i].revents || recv(pf[i].fd, buf, sizeof buf, MSG_DONTWAIT) > 0)
                continue; /* nothing, or the challenge: stay idle */
            close(pf[i].fd);
            pf[i].fd = flood_connect(1);
            pf[i].revents = 0;
        }
    }
    return 0;
}

START_TEST(churning_idle_flood_the_worker_joins_while_it_goes_on)
{
    new_coord();
    fflush(stdout);
    pid_t flooder = fork();
    if (flooder == 0)
        _exit(churning_flood(100));
    pid_t w = fork();
    if (w == 0) {
        t_sleep_ms(500); /* into the flood */
        t_worker_opts o = {.key = T_KEY};
        _exit(t_worker_main(coord, 1, 2, &o));
    }
    spk_set_log_callback(NULL, NULL, SPK_LOG_NONE);
    spk_cluster_config cfg;
    t_config(&cfg, coord, 0, 2, T_KEY);
    spk_cluster *c = NULL;
    spk_status st = spk_cluster_open(&cfg, &c);
    spk_set_log_callback(NULL, NULL, SPK_LOG_WARN);
    kill(flooder, SIGKILL);
    t_wait_exit(flooder, 5000);
    ck_assert_msg(st == SPK_OK, "driver open while 100 idle connections churn: %s",
                  spk_last_error());
    ck_assert_int_eq(spk_cluster_call(c, 1, SPK_CLUSTER_CMD_PING, "x", 1, NULL, NULL, 5000),
                     SPK_OK);
    ck_assert_int_eq(spk_cluster_close(c), SPK_OK);
    ck_assert_int_eq(t_wait_exit(w, 10000), 0);
}
END_TEST

/* Orchestrator child: n junk connections one after the other (each refused), then the worker. */
static int junk_flood_then_worker(int n)
{
    const char junk[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    for (int i = 0; i < n; i++) {
        int fd = flood_connect(i == 0 ? 200 : 5);
        if (fd < 0)
            return 10;
        ssize_t k = send(fd, junk, sizeof junk - 1, MSG_NOSIGNAL);
        (void)k;
        struct pollfd pf = {fd, POLLIN, 0};
        char buf[256];
        while (poll(&pf, 1, 3000) == 1 && recv(fd, buf, sizeof buf, 0) > 0) {
        }
        close(fd);
    }
    t_worker_opts o = {.key = T_KEY};
    pid_t w = t_spawn_worker(coord, 1, 2, &o);
    return t_wait_exit(w, 20000) == 0 ? 0 : 11;
}

START_TEST(refused_connection_flood_gives_bounded_log_lines_and_a_suppressed_count)
{
    new_coord();
    const int n = 300, burst = 5;
    spk_log_rate_set(burst, 600000, 1000); /* one window for the whole test: exact counts */
    fflush(stdout);
    pid_t orch = fork();
    if (orch == 0)
        _exit(junk_flood_then_worker(n));
    memset(t_log, 0, sizeof t_log);
    spk_set_log_callback(t_log_fn, NULL, SPK_LOG_WARN);
    spk_cluster_config cfg;
    t_config(&cfg, coord, 0, 2, T_KEY);
    cfg.connect_timeout_ms = 20000;
    spk_cluster *c = NULL;
    spk_status st = spk_cluster_open(&cfg, &c);
    spk_set_log_callback(NULL, NULL, SPK_LOG_WARN);
    spk_log_rate_set(0, 0, 0);
    ck_assert_msg(st == SPK_OK, "driver open after %d junk connections: %s", n, spk_last_error());
    ck_assert_int_eq(spk_cluster_close(c), SPK_OK);
    ck_assert_int_eq(t_wait_exit(orch, 30000), 0);
    printf("driver log (junk flood):\n%s", t_log);
    int lines = t_log_lines_with("not a sparkinfer peer");
    long suppressed = t_log_suppressed("not a sparkinfer peer");
    printf("%d junk connections: %d log lines, %ld reported as suppressed\n", n, lines, suppressed);
    ck_assert_int_eq(lines, burst);
    ck_assert_int_eq(lines + suppressed, n); /* every refusal is a line or is counted */
}
END_TEST

START_TEST(log_rate_limit_counts_what_it_drops_per_kind)
{
    spk_log_rate_set(10, 600000, 1000);
    memset(t_log, 0, sizeof t_log);
    spk_set_log_callback(t_log_fn, NULL, SPK_LOG_DEBUG);
    for (int i = 0; i < 1000; i++)
        spk_log(SPK_LOG_WARN, "peer 10.0.%d.%d said no", i / 256, i % 256);
    for (int i = 0; i < 3; i++)
        spk_log(SPK_LOG_WARN, "another kind of message %d", i);
    spk_log_flush();
    spk_set_log_callback(NULL, NULL, SPK_LOG_WARN);
    spk_log_rate_set(0, 0, 0);
    ck_assert_int_eq(t_log_lines_with("said no"), 10);
    ck_assert_int_eq(t_log_suppressed("said no"), 990);
    ck_assert_int_eq(t_log_lines_with("another kind"), 3); /* its own budget */
    ck_assert_int_eq(t_log_suppressed("another kind"), 0);
}
END_TEST

/* ---------------------------------------------------------------------------------------- */

/* A worker whose VERSION is held back so that a second connection can race it for its rank. */
static pid_t spawn_slow_worker(int rank, int world, int delay_ms, int start_after_ms)
{
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        t_sleep_ms(start_after_ms);
        spk_cluster_test_version_delay(delay_ms);
        t_worker_opts o = {.key = T_KEY};
        _exit(t_worker_main(coord, rank, world, &o));
    }
    return pid;
}

START_TEST(two_connections_racing_for_one_rank_one_is_refused_and_no_fd_leaks)
{
    new_coord();
    const int world = 3;
    int fds0 = count_fds();
    pid_t a = spawn_slow_worker(1, world, 1500, 0);
    pid_t b = spawn_slow_worker(1, world, 1500, 300);
    pid_t r2 = spawn_slow_worker(2, world, 0, 2500);
    spk_set_log_callback(NULL, NULL, SPK_LOG_NONE);
    spk_cluster_config cfg;
    t_config(&cfg, coord, 0, world, T_KEY);
    spk_cluster *c = NULL;
    spk_status st = spk_cluster_open(&cfg, &c);
    spk_set_log_callback(NULL, NULL, SPK_LOG_WARN);
    ck_assert_msg(st == SPK_OK, "driver open: %s", spk_last_error());
    /* Both real ranks answer: rank 1 is whichever connection proved the key first. */
    for (int r = 1; r < world; r++)
        ck_assert_int_eq(spk_cluster_call(c, r, SPK_CLUSTER_CMD_PING, "x", 1, NULL, NULL, 5000),
                         SPK_OK);
    ck_assert_int_eq(spk_cluster_close(c), SPK_OK);
    int ea = t_wait_exit(a, 10000), eb = t_wait_exit(b, 10000);
    ck_assert_int_eq(t_wait_exit(r2, 10000), 0);
    printf("rank race: first worker exited %d, second %d\n", ea, eb);
    ck_assert_msg((ea == 0 && eb == SPK_ERR_STATE) || (ea == SPK_ERR_STATE && eb == 0),
                  "exactly one of the racing rank-1 workers joins, the other is refused with "
                  "STATE: exits %d and %d", ea, eb);
    ck_assert_int_eq(count_fds(), fds0); /* no socket leaked on the driver */
}
END_TEST

/* ---------------------------------------------------------------------------------------- */

/* A keyed worker that joins, then sends frames nobody asked for: big REPLYs with unknown ids. */
static int unsolicited_worker(int n_frames)
{
    spk_set_log_callback(NULL, NULL, SPK_LOG_NONE);
    spk_cluster_config cfg;
    t_config(&cfg, coord, 1, 2, T_KEY);
    cfg.transport = "none";
    cfg.peer_timeout_ms = 10000; /* 16 MiB sends are slow under the sanitizers */
    spk_cluster *c = NULL;
    if (spk_cluster_open(&cfg, &c) != SPK_OK)
        return 10;
    const size_t len = SPK_PROTO_MAX_PAYLOAD - 10u - SPK_PROTO_MAX_MSG;
    uint8_t *big = calloc(1, len);
    int sent = 0;
    for (int i = 0; i < n_frames && big; i++) {
        spk_proto_msg m = {0};
        m.h.type = SPK_MSG_REPLY;
        m.u.reply.req_id = 0xdead0000u + (uint32_t)i;
        m.u.reply.data = big;
        m.u.reply.len = (uint32_t)len;
        if (spk_cluster_send(c, &c->peers[0], &m) != SPK_OK)
            break;
        sent++;
    }
    free(big);
    spk_cluster_wait_failure(c, 10000);
    spk_cluster_close(c);
    return sent > 0 ? 0 : 11;
}

START_TEST(unsolicited_big_frames_hit_the_inbox_bound_and_fail_the_peer)
{
    new_coord();
    fflush(stdout);
    pid_t w = fork();
    if (w == 0)
        _exit(unsolicited_worker(40));
    spk_set_log_callback(NULL, NULL, SPK_LOG_NONE);
    spk_cluster_config cfg;
    t_config(&cfg, coord, 0, 2, T_KEY);
    cfg.transport = "none";
    cfg.peer_timeout_ms = 10000;
    spk_cluster *c = NULL;
    spk_status st = spk_cluster_open(&cfg, &c);
    ck_assert_msg(st == SPK_OK, "driver open: %s", spk_last_error());
    st = spk_cluster_wait_failure(c, 20000);
    printf("driver: %s: %s\n", spk_status_str(st), spk_last_error());
    ck_assert_int_eq(st, SPK_ERR_PEER_LOST);
    ck_assert_ptr_nonnull(strstr(spk_last_error(), "rank 1"));
    ck_assert_ptr_nonnull(strstr(spk_last_error(), "control inbox overrun"));
    spk_cluster_inbox_stats s;
    spk_cluster_inbox_stats_get(c, &s);
    printf("inbox: %zu frames / %zu bytes queued, peak %zu bytes, %llu overrun(s)\n", s.frames,
           s.bytes, s.peak_bytes, (unsigned long long)s.overruns);
    ck_assert_uint_le(s.peak_bytes, SPK_CLUSTER_INBOX_MAX_BYTES);
    ck_assert_uint_ge(s.peak_bytes, SPK_CLUSTER_INBOX_MAX_BYTES / 2); /* it was really filled */
    ck_assert_uint_ge(s.overruns, 1);
    spk_cluster_close(c);
    spk_set_log_callback(NULL, NULL, SPK_LOG_WARN);
    ck_assert_int_eq(t_wait_exit(w, 15000), 0);
}
END_TEST

/* ---------------------------------------------------------------------------------------- */

static spk_tcp_pending pend_at(const char *addr, uint64_t seq)
{
    spk_tcp_pending p = {.fd = -1, .seq = seq};
    snprintf(p.addr, sizeof p.addr, "%s", addr);
    return p;
}

START_TEST(data_mesh_evicts_the_true_oldest_of_the_busiest_source)
{
    /* After swap-removals the table is out of accept order: index 0 is not the oldest, and the
     * entry just before the newest (the old policy's victim) is the real peer's connection. */
    spk_tcp_pending p[6] = {
        pend_at("10.0.0.9:4000", 7),  /* stray */
        pend_at("10.0.0.9:4001", 3),  /* stray: the oldest of the busiest source */
        pend_at("10.0.0.2:5000", 1),  /* real peer from another host: the oldest overall */
        pend_at("10.0.0.9:4002", 5),  /* stray */
        pend_at("10.0.0.9:4003", 8),  /* stray */
        pend_at("10.0.0.2:5001", 9),  /* just accepted */
    };
    ck_assert_int_eq(spk_tcp_pending_victim(p, 6, "10.0.0.9:4010"), 1);
    /* The newcomer counts for its source: with 2 + 1 from .2 against 4 from .9, still .9. */
    ck_assert_int_eq(spk_tcp_pending_victim(p, 6, "10.0.0.2:5002"), 1);
    /* Loopback flood: one source; the victim is the lowest sequence, wherever it sits. */
    spk_tcp_pending q[32];
    for (int i = 0; i < 32; i++) {
        char a[32];
        snprintf(a, sizeof a, "127.0.0.1:%d", 30000 + i);
        q[i] = pend_at(a, (uint64_t)((i * 7) % 32) + 100);
    }
    int v = spk_tcp_pending_victim(q, 32, "127.0.0.1:40000");
    ck_assert_int_ge(v, 0);
    ck_assert_uint_eq(q[v].seq, 100);
    /* Ties in count go to the older entry; IPv6 sources compare without the port. */
    spk_tcp_pending r[4] = {pend_at("[::1]:1", 4), pend_at("[::1]:2", 2), pend_at("10.1.1.1:3", 1),
                            pend_at("10.1.1.1:4", 3)};
    ck_assert_int_eq(spk_tcp_pending_victim(r, 4, "192.168.0.1:9"), 2);
    ck_assert_int_eq(spk_tcp_pending_victim(r, 4, "[::1]:7"), 1);
    ck_assert_int_eq(spk_tcp_pending_victim(r, 0, "[::1]:7"), -1);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("bounds");
    TCase *t = tcase_create("bounds");
    tcase_set_timeout(t, 90);
    tcase_add_test(t, log_rate_limit_counts_what_it_drops_per_kind);
    tcase_add_test(t, data_mesh_evicts_the_true_oldest_of_the_busiest_source);
    tcase_add_test(t, idle_flood_does_not_keep_the_real_workers_out);
    tcase_add_test(t, churning_idle_flood_the_worker_joins_while_it_goes_on);
    tcase_add_test(t, refused_connection_flood_gives_bounded_log_lines_and_a_suppressed_count);
    tcase_add_test(t, two_connections_racing_for_one_rank_one_is_refused_and_no_fd_leaks);
    tcase_add_test(t, unsolicited_big_frames_hit_the_inbox_bound_and_fail_the_peer);
    suite_add_tcase(s, t);
    return s;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    return spk_test_run(suite());
}
