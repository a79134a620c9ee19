/*
 * Multi-process cluster tests on loopback: real processes (fork), real sockets. Bootstrap in any
 * start order for world sizes 2..4, commands and collectives, trust (wrong key, no key, garbage),
 * version mismatch, and health (SIGKILL, SIGSTOP, driver death) with measured detection times.
 */
#include "test_cluster_util.h"

#include "cluster/proto.h"

static char coord[64];

static void new_coord(void) { snprintf(coord, sizeof coord, "127.0.0.1:%d", t_free_port()); }

/* Driver-side checks of a healthy cluster: ping, handler, failing handler, unknown command,
 * broadcast, and the collectives (control plane and transport) run with every worker. */
static void exercise(spk_cluster *c)
{
    int world = spk_cluster_world_size(c);
    for (int r = 1; r < world; r++) {
        const char ping[] = "ping payload";
        void *rep = NULL;
        size_t n = 0;
        ck_assert_int_eq(spk_cluster_call(c, r, SPK_CLUSTER_CMD_PING, ping, sizeof ping, &rep, &n,
                                          5000), SPK_OK);
        ck_assert_uint_eq(n, sizeof ping);
        ck_assert_mem_eq(rep, ping, n);
        free(rep);
        uint32_t x = 7, y = 0;
        rep = NULL;
        ck_assert_int_eq(spk_cluster_call(c, r, CMD_ADD, &x, sizeof x, &rep, &n, 5000), SPK_OK);
        ck_assert_uint_eq(n, sizeof y);
        memcpy(&y, rep, sizeof y);
        free(rep);
        ck_assert_uint_eq(y, 7u + 1000u * (uint32_t)r);
        /* A failing handler reports its status and message, and the worker keeps serving. */
        ck_assert_int_eq(spk_cluster_call(c, r, CMD_FAIL, NULL, 0, NULL, NULL, 5000), SPK_ERR_IO);
        ck_assert_ptr_nonnull(strstr(spk_last_error(), "handler failed on purpose"));
        char want[32];
        snprintf(want, sizeof want, "rank %d", r);
        ck_assert_ptr_nonnull(strstr(spk_last_error(), want));
        ck_assert_int_eq(spk_cluster_call(c, r, 4242, NULL, 0, NULL, NULL, 5000),
                         SPK_ERR_UNSUPPORTED);
    }
    uint32_t x = 1;
    ck_assert_int_eq(spk_cluster_broadcast(c, CMD_ADD, &x, sizeof x, 5000), SPK_OK);
    ck_assert_int_eq(spk_cluster_broadcast(c, CMD_FAIL, NULL, 0, 5000), SPK_ERR_IO);
    ck_assert_ptr_nonnull(strstr(spk_last_error(), "rank 1"));
    /* Collectives: every worker runs them inside a handler while the driver runs them here. */
    uint32_t ids[8];
    for (int r = 1; r < world; r++)
        ck_assert_int_eq(spk_cluster_command_send(c, r, CMD_COLL, NULL, 0, 1, &ids[r]), SPK_OK);
    uint32_t g[8];
    ck_assert_int_eq(t_collectives(c, g), 0);
    for (int r = 1; r < world; r++) {
        void *rep = NULL;
        size_t n = 0;
        ck_assert_int_eq(spk_cluster_command_wait(c, r, ids[r], 10000, &rep, &n), SPK_OK);
        ck_assert_uint_eq(n, sizeof(uint32_t) * (size_t)world);
        ck_assert_mem_eq(rep, g, n);
        free(rep);
    }
    ck_assert_int_eq(spk_cluster_health(c), SPK_OK);
}

/* Run a whole cluster of `world` ranks; worker r starts after delay[r] ms, the driver after
 * delay[0] ms. Every worker's serve must return OK when the driver closes. */
static void run_cluster(int world, const int *delay, int env_rank)
{
    new_coord();
    pid_t pid[8];
    for (int r = 1; r < world; r++) {
        t_worker_opts o = {.key = T_KEY, .delay_ms = delay[r], .use_env = r == env_rank};
        pid[r] = t_spawn_worker(coord, r, world, &o);
    }
    t_sleep_ms(delay[0]);
    spk_cluster_config cfg;
    t_config(&cfg, coord, 0, world, T_KEY);
    spk_cluster *c = NULL;
    int64_t t0 = t_now_ms();
    spk_status st = spk_cluster_open(&cfg, &c);
    ck_assert_msg(st == SPK_OK, "driver open: %s", spk_last_error());
    printf("world %d: cluster formed in %lld ms after the driver started\n", world,
           (long long)(t_now_ms() - t0));
    ck_assert_int_eq(spk_cluster_rank(c), 0);
    ck_assert_int_eq(spk_cluster_world_size(c), world);
    ck_assert_int_eq(spk_cluster_serve(c), SPK_ERR_STATE);
    exercise(c);
    int64_t tc = t_now_ms();
    ck_assert_int_eq(spk_cluster_close(c), SPK_OK);
    ck_assert_int_lt(t_now_ms() - tc, T_PEER_MS);
    for (int r = 1; r < world; r++)
        ck_assert_int_eq(t_wait_exit(pid[r], 5000), 0);
}

START_TEST(world_2_driver_first)
{
    const int d[] = {0, 400};
    run_cluster(2, d, 0);
}
END_TEST

START_TEST(world_3_workers_first_config_from_env)
{
    const int d[] = {500, 0, 100};
    run_cluster(3, d, 2);
}
END_TEST

START_TEST(world_4_mixed_order)
{
    const int d[] = {200, 600, 0, 350};
    run_cluster(4, d, 0);
}
END_TEST

START_TEST(single_rank_opens_no_socket)
{
    spk_cluster_config cfg;
    spk_cluster_config_init(&cfg);
    cfg.world_size = 1;
    cfg.coordinator = "203.0.113.1:1"; /* would be refused without a key if it were used */
    spk_cluster *c = NULL;
    ck_assert_int_eq(spk_cluster_open(&cfg, &c), SPK_OK);
    ck_assert_int_eq(spk_cluster_world_size(c), 1);
    ck_assert_ptr_null(spk_cluster_transport(c, NULL));
    uint32_t a = 5, b = 0;
    ck_assert_int_eq(spk_cluster_allgather(c, &a, &b, sizeof a, -1), SPK_OK);
    ck_assert_uint_eq(b, 5);
    ck_assert_int_eq(spk_cluster_barrier(c, -1), SPK_OK);
    ck_assert_int_eq(spk_cluster_close(c), SPK_OK);
}
END_TEST

START_TEST(bad_config_is_refused_at_open)
{
    spk_cluster_config cfg;
    spk_cluster *c = (spk_cluster *)&cfg;
    /* No key on a non-loopback address: refused on both roles unless explicitly allowed. */
    t_config(&cfg, "203.0.113.7:29999", 0, 2, NULL);
    ck_assert_int_eq(spk_cluster_open(&cfg, &c), SPK_ERR_AUTH);
    ck_assert_ptr_null(c);
    ck_assert_ptr_nonnull(strstr(spk_last_error(), "203.0.113.7:29999"));
    cfg.rank = 1;
    ck_assert_int_eq(spk_cluster_open(&cfg, &c), SPK_ERR_AUTH);
    t_config(&cfg, "127.0.0.1:29999", 2, 2, NULL);
    ck_assert_int_eq(spk_cluster_open(&cfg, &c), SPK_ERR_INVALID_ARG);
    t_config(&cfg, "127.0.0.1", 1, 2, NULL);
    ck_assert_int_eq(spk_cluster_open(&cfg, &c), SPK_ERR_INVALID_ARG);
    t_config(&cfg, "127.0.0.1:99999", 1, 2, NULL);
    ck_assert_int_eq(spk_cluster_open(&cfg, &c), SPK_ERR_INVALID_ARG);
    t_config(&cfg, "127.0.0.1:2000", 1, 2, NULL);
    cfg.heartbeat_ms = cfg.peer_timeout_ms;
    ck_assert_int_eq(spk_cluster_open(&cfg, &c), SPK_ERR_INVALID_ARG);
    /* A short key is refused with its length and how to make a good one; 16 bytes pass. */
    t_config(&cfg, "127.0.0.1:2000", 0, 1, "fifteen-bytes!!");
    ck_assert_int_eq(spk_cluster_open(&cfg, &c), SPK_ERR_INVALID_ARG);
    ck_assert_ptr_null(c);
    ck_assert_ptr_nonnull(strstr(spk_last_error(), "too short (15 bytes, at least 16)"));
    ck_assert_ptr_nonnull(strstr(spk_last_error(), "/dev/urandom"));
    setenv("SPK_CLUSTER_KEY", "k3y", 1);
    t_config(&cfg, "127.0.0.1:2000", 0, 1, NULL);
    ck_assert_int_eq(spk_cluster_open(&cfg, &c), SPK_ERR_INVALID_ARG);
    unsetenv("SPK_CLUSTER_KEY");
    t_config(&cfg, "127.0.0.1:2000", 0, 1, "sixteen-bytes!!!");
    ck_assert_int_eq(spk_cluster_open(&cfg, &c), SPK_OK);
    spk_cluster_close(c);
    /* The environment fills what the struct leaves unset; the struct wins when set. */
    setenv("SPK_WORLD_SIZE", "abc", 1);
    t_config(&cfg, "127.0.0.1:2000", 0, 0, NULL);
    ck_assert_int_eq(spk_cluster_open(&cfg, &c), SPK_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(spk_last_error(), "SPK_WORLD_SIZE"));
    cfg.world_size = 1;
    ck_assert_int_eq(spk_cluster_open(&cfg, &c), SPK_OK);
    ck_assert_int_eq(spk_cluster_world_size(c), 1);
    spk_cluster_close(c);
    unsetenv("SPK_WORLD_SIZE");
}
END_TEST

START_TEST(missing_rank_times_out_with_names)
{
    new_coord();
    t_worker_opts o = {.key = T_KEY};
    pid_t w = t_spawn_worker(coord, 1, 3, &o);
    spk_cluster_config cfg;
    t_config(&cfg, coord, 0, 3, T_KEY);
    cfg.connect_timeout_ms = 1500;
    spk_cluster *c = NULL;
    int64_t t0 = t_now_ms();
    ck_assert_int_eq(spk_cluster_open(&cfg, &c), SPK_ERR_TIMEOUT);
    int64_t dt = t_now_ms() - t0;
    ck_assert_int_ge(dt, 1400);
    ck_assert_int_lt(dt, 3000);
    ck_assert_ptr_nonnull(strstr(spk_last_error(), "rank(s) 2 "));
    /* The rank that did join is told at once instead of waiting for its own deadline. */
    ck_assert_int_eq(t_wait_exit(w, 2000), SPK_ERR_TIMEOUT);
}
END_TEST

/* Orchestrator child: intruders first (wrong key, no key, garbage, an HTTP request), check each
 * was refused, then the legitimate ranks. Exit 0 if everything went as expected. */
static int orchestrate(int world)
{
    t_worker_opts wrong = {.key = "not-the-cluster-key-0123456789ab"}, none = {.key = NULL};
    pid_t a = t_spawn_worker(coord, 1, world, &wrong);
    pid_t b = t_spawn_worker(coord, 2, world, &none);
    int garbage_closed = 0;
    const char *junk[] = {"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                          "\x53\x50\x4b\x43\x01\x00\x02\x00\xff\xff\xff\xff"
                          "\xff\xff\xff\xff\x01\x00\x00\x00\x00\x00\x00\x00"};
    for (int j = 0; j < 2; j++) {
        int port = atoi(strrchr(coord, ':') + 1);
        struct sockaddr_in sa = {0};
        sa.sin_family = AF_INET;
        sa.sin_port = htons((uint16_t)port);
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        int fd = -1;
        for (int tries = 0; tries < 200; tries++) {
            fd = socket(AF_INET, SOCK_STREAM, 0);
            if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0)
                break;
            close(fd);
            fd = -1;
            t_sleep_ms(20);
        }
        if (fd < 0)
            return 10;
        ssize_t w = send(fd, junk[j], strlen(junk[j]) + (j == 1 ? 24 - strlen(junk[j]) : 0),
                         MSG_NOSIGNAL);
        (void)w;
        struct timeval tv = {3, 0};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        char buf[512];
        ssize_t k;
        while ((k = recv(fd, buf, sizeof buf, 0)) > 0) {
        }
        if (k == 0 || (k < 0 && errno == ECONNRESET))
            garbage_closed++;
        close(fd);
    }
    int ea = t_wait_exit(a, 5000), eb = t_wait_exit(b, 5000);
    if (ea != SPK_ERR_AUTH || eb != SPK_ERR_AUTH || garbage_closed != 2) {
        fprintf(stderr, "orchestrate: wrong key exit %d, no key exit %d, garbage closed %d\n", ea,
                eb, garbage_closed);
        return 11;
    }
    pid_t legit[8];
    for (int r = 1; r < world; r++) {
        t_worker_opts o = {.key = T_KEY};
        legit[r] = t_spawn_worker(coord, r, world, &o);
    }
    for (int r = 1; r < world; r++)
        if (t_wait_exit(legit[r], 20000) != 0)
            return 12;
    return 0;
}

START_TEST(intruders_are_refused_and_the_driver_keeps_serving)
{
    new_coord();
    const int world = 3;
    fflush(stdout);
    pid_t orch = fork();
    if (orch == 0)
        _exit(orchestrate(world));
    memset(t_log, 0, sizeof t_log);
    spk_set_log_callback(t_log_fn, NULL, SPK_LOG_WARN);
    spk_cluster_config cfg;
    t_config(&cfg, coord, 0, world, T_KEY);
    cfg.connect_timeout_ms = 15000;
    spk_cluster *c = NULL;
    spk_status st = spk_cluster_open(&cfg, &c);
    ck_assert_msg(st == SPK_OK, "driver open: %s", spk_last_error());
    exercise(c);
    ck_assert_int_eq(spk_cluster_close(c), SPK_OK);
    spk_set_log_callback(NULL, NULL, SPK_LOG_WARN);
    ck_assert_int_eq(t_wait_exit(orch, 20000), 0);
    printf("driver log:\n%s", t_log);
    ck_assert_int_ge(t_log_count("refused connection from 127.0.0.1:"), 4);
    ck_assert_int_ge(t_log_count("failed the cluster key check (wrong key)"), 1);
    ck_assert_int_ge(t_log_count("failed the cluster key check (it has no cluster key)"), 1);
    ck_assert_int_ge(t_log_count("not a sparkinfer peer"), 2);
}
END_TEST

START_TEST(version_mismatch_is_reported_on_both_sides)
{
    new_coord();
    const uint32_t fake = SPK_VERSION_NUMBER + 1;
    t_worker_opts o = {.key = T_KEY, .fake_lib = fake, .check_msg_has_versions = 1};
    pid_t w = t_spawn_worker(coord, 1, 2, &o);
    spk_cluster_config cfg;
    t_config(&cfg, coord, 0, 2, T_KEY);
    spk_cluster *c = NULL;
    spk_set_log_callback(NULL, NULL, SPK_LOG_NONE);
    int64_t t0 = t_now_ms();
    ck_assert_int_eq(spk_cluster_open(&cfg, &c), SPK_ERR_VERSION);
    ck_assert_int_lt(t_now_ms() - t0, 3000); /* at once, not at the connect deadline */
    char want[32];
    printf("driver: %s\n", spk_last_error());
    snprintf(want, sizeof want, "(%u)", (unsigned)SPK_VERSION_NUMBER);
    ck_assert_ptr_nonnull(strstr(spk_last_error(), want));
    snprintf(want, sizeof want, "(%u)", (unsigned)fake);
    ck_assert_ptr_nonnull(strstr(spk_last_error(), want));
    ck_assert_ptr_nonnull(strstr(spk_last_error(), "rank 1"));
    ck_assert_int_eq(t_wait_exit(w, 3000), SPK_ERR_VERSION);
}
END_TEST

START_TEST(protocol_version_mismatch_via_environment)
{
    new_coord();
    setenv("SPK_TEST_FAKE_VERSION", "0:9", 1); /* both ranks claim protocol 9 */
    t_worker_opts o = {.key = T_KEY};
    pid_t w = t_spawn_worker(coord, 1, 2, &o);
    spk_cluster_config cfg;
    t_config(&cfg, coord, 0, 2, T_KEY);
    spk_cluster *c = NULL;
    spk_set_log_callback(NULL, NULL, SPK_LOG_NONE);
    /* Both claim protocol 9: they agree, so the cluster forms (the hook is symmetric). */
    ck_assert_int_eq(spk_cluster_open(&cfg, &c), SPK_OK);
    spk_cluster_close(c);
    ck_assert_int_eq(t_wait_exit(w, 3000), 0);
    /* Now only the driver claims protocol 9. */
    unsetenv("SPK_TEST_FAKE_VERSION");
    new_coord();
    cfg.coordinator = coord;
    w = t_spawn_worker(coord, 1, 2, &o);
    setenv("SPK_TEST_FAKE_VERSION", "0:9", 1);
    ck_assert_int_eq(spk_cluster_open(&cfg, &c), SPK_ERR_VERSION);
    ck_assert_ptr_nonnull(strstr(spk_last_error(), "protocol 9"));
    char real[32];
    snprintf(real, sizeof real, "protocol %u", SPK_PROTO_VERSION);
    ck_assert_ptr_nonnull(strstr(spk_last_error(), real));
    unsetenv("SPK_TEST_FAKE_VERSION");
    ck_assert_int_eq(t_wait_exit(w, 3000), SPK_ERR_VERSION);
}
END_TEST

/* Start a world-`world` cluster with this process as the driver; pids of workers in pid[]. */
static spk_cluster *start(int world, pid_t *pid)
{
    new_coord();
    for (int r = 1; r < world; r++) {
        t_worker_opts o = {.key = T_KEY};
        pid[r] = t_spawn_worker(coord, r, world, &o);
    }
    spk_cluster_config cfg;
    t_config(&cfg, coord, 0, world, T_KEY);
    spk_cluster *c = NULL;
    spk_status st = spk_cluster_open(&cfg, &c);
    ck_assert_msg(st == SPK_OK, "driver open: %s", spk_last_error());
    return c;
}

static void survivors_see_peer_lost(int sig, const char *what)
{
    const int world = 4, victim = 2;
    pid_t pid[4];
    spk_set_log_callback(NULL, NULL, SPK_LOG_NONE);
    spk_cluster *c = start(world, pid);
    t_sleep_ms(300); /* idle with heartbeats flowing */
    ck_assert_int_eq(spk_cluster_health(c), SPK_OK);
    int64_t t0 = t_now_ms();
    kill(pid[victim], sig);
    spk_status st = spk_cluster_wait_failure(c, 3 * T_PEER_MS);
    int64_t dt_driver = t_now_ms() - t0;
    ck_assert_int_eq(st, SPK_ERR_PEER_LOST);
    printf("%s: driver got PEER_LOST after %lld ms (peer_timeout_ms %d): %s\n", what,
           (long long)dt_driver, T_PEER_MS, spk_last_error());
    ck_assert_ptr_nonnull(strstr(spk_last_error(), "rank 2 (127.0.0.1:"));
    /* Blocked and later calls fail with the same status. */
    ck_assert_int_eq(spk_cluster_call(c, 1, SPK_CLUSTER_CMD_PING, "x", 1, NULL, NULL, 1000),
                     SPK_ERR_PEER_LOST);
    ck_assert_int_eq(spk_cluster_barrier(c, 1000), SPK_ERR_PEER_LOST);
    for (int r = 1; r < world; r++) {
        if (r == victim)
            continue;
        int code = t_wait_exit(pid[r], 3 * T_PEER_MS);
        printf("%s: rank %d serve returned %d after %lld ms\n", what, r, code,
               (long long)(t_now_ms() - t0));
        ck_assert_int_eq(code, SPK_ERR_PEER_LOST);
    }
    int64_t dt_all = t_now_ms() - t0;
    int64_t tc = t_now_ms();
    ck_assert_int_eq(spk_cluster_close(c), SPK_OK);
    ck_assert_int_lt(t_now_ms() - tc, T_PEER_MS);
    if (sig == SIGSTOP)
        kill(pid[victim], SIGKILL);
    t_wait_exit(pid[victim], 2000);
    /* Detection: a kill shows as a closed connection at once; a stop after the silence. */
    ck_assert_int_le(dt_driver, T_PEER_MS + 300);
    ck_assert_int_le(dt_all, T_PEER_MS + 600);
    if (sig == SIGSTOP)
        ck_assert_int_ge(dt_driver, T_PEER_MS - T_HB_MS - 150);
}

START_TEST(sigkill_idle_worker_every_survivor_gets_peer_lost)
{
    survivors_see_peer_lost(SIGKILL, "SIGKILL");
}
END_TEST

START_TEST(sigstop_worker_every_survivor_gets_peer_lost)
{
    survivors_see_peer_lost(SIGSTOP, "SIGSTOP");
}
END_TEST

START_TEST(killed_driver_workers_get_peer_lost)
{
    new_coord();
    const int world = 3;
    int pfd[2];
    ck_assert_int_eq(pipe(pfd), 0);
    fflush(stdout);
    pid_t drv = fork();
    if (drv == 0) {
        close(pfd[0]);
        spk_set_log_callback(NULL, NULL, SPK_LOG_NONE);
        spk_cluster_config cfg;
        t_config(&cfg, coord, 0, world, T_KEY);
        spk_cluster *c = NULL;
        spk_status st = spk_cluster_open(&cfg, &c);
        char ok = st == SPK_OK ? 'y' : 'n';
        ssize_t w = write(pfd[1], &ok, 1);
        (void)w;
        for (;;)
            pause();
    }
    close(pfd[1]);
    pid_t pid[3];
    for (int r = 1; r < world; r++) {
        t_worker_opts o = {.key = T_KEY};
        pid[r] = t_spawn_worker(coord, r, world, &o);
    }
    char ok = 0;
    ck_assert_int_eq(read(pfd[0], &ok, 1), 1);
    close(pfd[0]);
    ck_assert_int_eq(ok, 'y');
    t_sleep_ms(300);
    int64_t t0 = t_now_ms();
    kill(drv, SIGKILL);
    for (int r = 1; r < world; r++) {
        int code = t_wait_exit(pid[r], 3 * T_PEER_MS);
        int64_t dt = t_now_ms() - t0;
        printf("driver SIGKILL: rank %d serve returned %d after %lld ms\n", r, code, (long long)dt);
        ck_assert_int_eq(code, SPK_ERR_PEER_LOST);
        ck_assert_int_le(dt, T_PEER_MS + 300);
    }
    t_wait_exit(drv, 1000);
}
END_TEST

START_TEST(stopped_driver_workers_get_peer_lost)
{
    new_coord();
    int pfd[2];
    ck_assert_int_eq(pipe(pfd), 0);
    fflush(stdout);
    pid_t drv = fork();
    if (drv == 0) {
        close(pfd[0]);
        spk_set_log_callback(NULL, NULL, SPK_LOG_NONE);
        spk_cluster_config cfg;
        t_config(&cfg, coord, 0, 2, T_KEY);
        spk_cluster *c = NULL;
        char ok = spk_cluster_open(&cfg, &c) == SPK_OK ? 'y' : 'n';
        ssize_t w = write(pfd[1], &ok, 1);
        (void)w;
        for (;;)
            pause();
    }
    close(pfd[1]);
    t_worker_opts o = {.key = T_KEY};
    pid_t w = t_spawn_worker(coord, 1, 2, &o);
    char ok = 0;
    ck_assert_int_eq(read(pfd[0], &ok, 1), 1);
    close(pfd[0]);
    ck_assert_int_eq(ok, 'y');
    t_sleep_ms(300);
    int64_t t0 = t_now_ms();
    kill(drv, SIGSTOP);
    int code = t_wait_exit(w, 3 * T_PEER_MS);
    int64_t dt = t_now_ms() - t0;
    printf("driver SIGSTOP: rank 1 serve returned %d after %lld ms\n", code, (long long)dt);
    kill(drv, SIGKILL);
    t_wait_exit(drv, 1000);
    ck_assert_int_eq(code, SPK_ERR_PEER_LOST);
    ck_assert_int_le(dt, T_PEER_MS + 300);
}
END_TEST

START_TEST(sigpipe_never_kills)
{
    /* SIGPIPE left at its default action: a send to a dead peer must not kill the driver. */
    signal(SIGPIPE, SIG_DFL);
    pid_t pid[2];
    spk_set_log_callback(NULL, NULL, SPK_LOG_NONE);
    spk_cluster *c = start(2, pid);
    kill(pid[1], SIGKILL);
    char big[65536] = {0};
    spk_status st = SPK_OK;
    /* Keep sending into the dying connection until the loss shows (EPIPE/ECONNRESET inside). */
    int64_t dl = t_now_ms() + 3000;
    while (st == SPK_OK && t_now_ms() < dl) {
        st = spk_cluster_command_send(c, 1, CMD_ADD, big, sizeof big, 0, NULL);
        t_sleep_ms(1);
    }
    ck_assert_int_eq(st, SPK_ERR_PEER_LOST);
    ck_assert_int_eq(spk_cluster_close(c), SPK_OK);
    t_wait_exit(pid[1], 2000);
}
END_TEST

/* Fork a child that sends `sig` to `pid` after `ms` milliseconds. */
static pid_t signal_later(pid_t pid, int sig, int ms)
{
    fflush(stdout);
    pid_t k = fork();
    if (k == 0) {
        t_sleep_ms(ms);
        kill(pid, sig);
        _exit(0);
    }
    return k;
}

START_TEST(blocked_barrier_is_released_by_a_killed_worker)
{
    pid_t pid[3];
    spk_set_log_callback(NULL, NULL, SPK_LOG_NONE);
    spk_cluster *c = start(3, pid);
    pid_t k = signal_later(pid[2], SIGKILL, 300);
    int64_t t0 = t_now_ms();
    /* The workers never enter this barrier: only the lost peer can end it before 20 s. */
    ck_assert_int_eq(spk_cluster_barrier(c, 20000), SPK_ERR_PEER_LOST);
    int64_t dt = t_now_ms() - t0;
    printf("barrier released by SIGKILL after %lld ms: %s\n", (long long)dt, spk_last_error());
    ck_assert_ptr_nonnull(strstr(spk_last_error(), "rank 2"));
    ck_assert_int_lt(dt, 300 + T_PEER_MS);
    ck_assert_int_eq(t_wait_exit(pid[1], 3 * T_PEER_MS), SPK_ERR_PEER_LOST);
    spk_cluster_close(c);
    t_wait_exit(pid[2], 2000);
    t_wait_exit(k, 2000);
}
END_TEST

START_TEST(stopped_worker_aborts_a_blocked_transport_call)
{
    pid_t pid[2];
    spk_set_log_callback(NULL, NULL, SPK_LOG_NONE);
    spk_cluster *c = start(2, pid);
    const spk_transport *vt = NULL;
    spk_transport_comm *comm = spk_cluster_transport(c, &vt);
    ck_assert_ptr_nonnull(comm);
    pid_t k = signal_later(pid[1], SIGSTOP, 300);
    float x[256] = {1.0f};
    int64_t t0 = t_now_ms();
    /* The worker never joins: its transport connection stays up, so only the control plane's
     * heartbeat timeout (and the abort it triggers) can end this call before its 20 s. */
    spk_status st = vt->allreduce(comm, x, 256, SPK_TRANSPORT_F32, SPK_TRANSPORT_MEM_HOST, 20000);
    int64_t dt = t_now_ms() - t0;
    printf("transport all-reduce ended with %s after %lld ms (worker stopped at 300 ms)\n",
           spk_status_str(st), (long long)dt);
    ck_assert(st == SPK_ERR_CANCELLED || st == SPK_ERR_PEER_LOST);
    ck_assert_int_lt(dt, 300 + T_PEER_MS + 500);
    ck_assert_int_eq(spk_cluster_health(c), SPK_ERR_PEER_LOST);
    spk_cluster_close(c);
    kill(pid[1], SIGKILL);
    t_wait_exit(pid[1], 2000);
    t_wait_exit(k, 2000);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("cluster");
    TCase *t = tcase_create("cluster");
    tcase_set_timeout(t, 60);
    tcase_add_test(t, world_2_driver_first);
    tcase_add_test(t, world_3_workers_first_config_from_env);
    tcase_add_test(t, world_4_mixed_order);
    tcase_add_test(t, single_rank_opens_no_socket);
    tcase_add_test(t, bad_config_is_refused_at_open);
    tcase_add_test(t, missing_rank_times_out_with_names);
    tcase_add_test(t, intruders_are_refused_and_the_driver_keeps_serving);
    tcase_add_test(t, version_mismatch_is_reported_on_both_sides);
    tcase_add_test(t, protocol_version_mismatch_via_environment);
    tcase_add_test(t, sigkill_idle_worker_every_survivor_gets_peer_lost);
    tcase_add_test(t, sigstop_worker_every_survivor_gets_peer_lost);
    tcase_add_test(t, killed_driver_workers_get_peer_lost);
    tcase_add_test(t, stopped_driver_workers_get_peer_lost);
    tcase_add_test(t, sigpipe_never_kills);
    tcase_add_test(t, blocked_barrier_is_released_by_a_killed_worker);
    tcase_add_test(t, stopped_worker_aborts_a_blocked_transport_call);
    suite_add_tcase(s, t);
    return s;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    return spk_test_run(suite());
}
