/*
 * Cluster across two network namespaces joined by a veth pair (created here, removed at exit):
 * the driver in namespace A (10.250.0.1), workers in B (10.250.0.2) and A. Proves the bootstrap,
 * commands, control-plane collectives and the transport work over a real non-loopback link, that
 * an open (keyless) cluster needs allow_open_cluster there, and that cutting the link turns into
 * PEER_LOST on both sides within the peer timeout. Needs root and `ip netns`; skips otherwise.
 */
#include <fcntl.h>
#include <stdarg.h>
#include <sched.h>
#include <sys/stat.h>

#include "test_cluster_util.h"

#define ADDR_A "10.250.0.1"
#define ADDR_B "10.250.0.2"

static char ns_a[32], ns_b[32], veth_a[16], veth_b[16];
static pid_t setup_pid;

static int sh(const char *fmt, ...) SPK_CLUSTER_PRINTF(1, 2);
static int sh(const char *fmt, ...)
{
    char cmd[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    int rc = system(cmd);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

static void cleanup(void)
{
    if (getpid() != setup_pid)
        return;
    sh("ip netns del %s 2>/dev/null", ns_a); /* deleting a namespace removes its veth end */
    sh("ip netns del %s 2>/dev/null", ns_b);
}

static void on_signal(int sig)
{
    cleanup();
    signal(sig, SIG_DFL);
    raise(sig);
}

/* Remove namespaces left by earlier runs that were killed (their pid is gone). */
static void remove_stale(void)
{
    FILE *p = popen("ip netns list 2>/dev/null", "r");
    char line[256];
    while (p && fgets(line, sizeof line, p)) {
        int pid = 0;
        char side = 0;
        if (sscanf(line, "spkc%d%c", &pid, &side) == 2 && pid > 0 && kill(pid, 0) != 0 &&
            errno == ESRCH)
            sh("ip netns del spkc%d%c 2>/dev/null", pid, side);
    }
    if (p)
        pclose(p);
}

static void setup(void)
{
    if (geteuid() != 0)
        spk_test_skip("network namespaces need root");
    if (sh("command -v ip >/dev/null 2>&1") != 0)
        spk_test_skip("the ip tool (iproute2) is not installed");
    remove_stale();
    setup_pid = getpid();
    snprintf(ns_a, sizeof ns_a, "spkc%da", (int)setup_pid);
    snprintf(ns_b, sizeof ns_b, "spkc%db", (int)setup_pid);
    snprintf(veth_a, sizeof veth_a, "spkva%d", (int)(setup_pid % 100000));
    snprintf(veth_b, sizeof veth_b, "spkvb%d", (int)(setup_pid % 100000));
    atexit(cleanup);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    if (sh("ip netns add %s 2>/dev/null", ns_a) != 0 || sh("ip netns add %s", ns_b) != 0)
        spk_test_skip("ip netns add is not permitted here");
    if (sh("ip link add %s type veth peer name %s", veth_a, veth_b) != 0 ||
        sh("ip link set %s netns %s && ip link set %s netns %s", veth_a, ns_a, veth_b, ns_b) != 0 ||
        sh("ip -n %s addr add " ADDR_A "/24 dev %s && ip -n %s link set %s up && "
           "ip -n %s link set lo up", ns_a, veth_a, ns_a, veth_a, ns_a) != 0 ||
        sh("ip -n %s addr add " ADDR_B "/24 dev %s && ip -n %s link set %s up && "
           "ip -n %s link set lo up", ns_b, veth_b, ns_b, veth_b, ns_b) != 0)
        spk_test_skip("cannot create or configure a veth pair between network namespaces");
    if (sh("ip netns exec %s ping -c 1 -W 2 " ADDR_B " >/dev/null 2>&1", ns_a) != 0 &&
        sh("command -v ping >/dev/null 2>&1") == 0)
        spk_test_skip("the veth link between the namespaces does not pass traffic");
}

/* Move the calling (single-threaded) process into namespace `ns`. */
static int enter_ns(const char *ns)
{
    char path[128];
    snprintf(path, sizeof path, "/var/run/netns/%s", ns);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = setns(fd, CLONE_NEWNET);
    close(fd);
    return rc;
}

static pid_t spawn_in(const char *ns, const char *coord, int rank, int world, const char *key)
{
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        if (enter_ns(ns) != 0)
            _exit(98);
        t_worker_opts o = {.key = key};
        _exit(t_worker_main(coord, rank, world, &o));
    }
    return pid;
}

static char coord[64];

static spk_cluster *driver_in_a(int world, const char *key, int allow_open)
{
    ck_assert_int_eq(enter_ns(ns_a), 0);
    spk_cluster_config cfg;
    t_config(&cfg, coord, 0, world, key);
    cfg.allow_open_cluster = allow_open;
    spk_cluster *c = NULL;
    int64_t t0 = t_now_ms();
    spk_status st = spk_cluster_open(&cfg, &c);
    ck_assert_msg(st == SPK_OK, "driver open in %s: %s", ns_a, spk_last_error());
    printf("netns world %d: cluster formed in %lld ms\n", world, (long long)(t_now_ms() - t0));
    return c;
}

static void check_commands_and_collectives(spk_cluster *c)
{
    int world = spk_cluster_world_size(c);
    uint32_t ids[8], g[8];
    for (int r = 1; r < world; r++) {
        uint32_t x = 5, y = 0;
        void *rep = NULL;
        size_t n = 0;
        ck_assert_int_eq(spk_cluster_call(c, r, CMD_ADD, &x, sizeof x, &rep, &n, 5000), SPK_OK);
        ck_assert_uint_eq(n, sizeof y);
        memcpy(&y, rep, sizeof y);
        free(rep);
        ck_assert_uint_eq(y, 5u + 1000u * (uint32_t)r);
    }
    for (int r = 1; r < world; r++)
        ck_assert_int_eq(spk_cluster_command_send(c, r, CMD_COLL, NULL, 0, 1, &ids[r]), SPK_OK);
    ck_assert_int_eq(t_collectives(c, g), 0);
    for (int r = 1; r < world; r++) {
        void *rep = NULL;
        size_t n = 0;
        spk_status st = spk_cluster_command_wait(c, r, ids[r], 10000, &rep, &n);
        ck_assert_msg(st == SPK_OK, "rank %d collectives: %s", r, spk_last_error());
        ck_assert_mem_eq(rep, g, n);
        free(rep);
    }
}

START_TEST(world_2_across_namespaces)
{
    snprintf(coord, sizeof coord, ADDR_A ":%d", 20000 + (int)(getpid() % 20000));
    pid_t w = spawn_in(ns_b, coord, 1, 2, "netns-test-cluster-key-01234567");
    spk_cluster *c = driver_in_a(2, "netns-test-cluster-key-01234567", 0);
    check_commands_and_collectives(c);
    ck_assert_int_eq(spk_cluster_close(c), SPK_OK);
    ck_assert_int_eq(t_wait_exit(w, 5000), 0);
}
END_TEST

START_TEST(world_3_workers_in_both_namespaces)
{
    snprintf(coord, sizeof coord, ADDR_A ":%d", 20000 + (int)(getpid() % 20000));
    pid_t w1 = spawn_in(ns_b, coord, 1, 3, "netns-test-cluster-key-01234567");
    pid_t w2 = spawn_in(ns_a, coord, 2, 3, "netns-test-cluster-key-01234567");
    spk_cluster *c = driver_in_a(3, "netns-test-cluster-key-01234567", 0);
    check_commands_and_collectives(c);
    ck_assert_int_eq(spk_cluster_close(c), SPK_OK);
    ck_assert_int_eq(t_wait_exit(w1, 5000), 0);
    ck_assert_int_eq(t_wait_exit(w2, 5000), 0);
}
END_TEST

START_TEST(keyless_needs_allow_open_cluster_off_loopback)
{
    snprintf(coord, sizeof coord, ADDR_A ":%d", 20000 + (int)(getpid() % 20000));
    ck_assert_int_eq(enter_ns(ns_a), 0);
    spk_cluster_config cfg;
    t_config(&cfg, coord, 0, 2, NULL);
    spk_cluster *c = NULL;
    ck_assert_int_eq(spk_cluster_open(&cfg, &c), SPK_ERR_AUTH);
    ck_assert_ptr_nonnull(strstr(spk_last_error(), "allow_open_cluster"));
    /* Explicitly allowed: the worker must allow it too (spawned with its own config). */
    fflush(stdout);
    pid_t w = fork();
    if (w == 0) {
        if (enter_ns(ns_b) != 0)
            _exit(98);
        spk_cluster_config wc;
        t_config(&wc, coord, 1, 2, NULL);
        wc.allow_open_cluster = 1;
        spk_cluster *wcl = NULL;
        spk_status st = spk_cluster_open(&wc, &wcl);
        if (st == SPK_OK) {
            st = spk_cluster_serve(wcl);
            spk_cluster_close(wcl);
        }
        _exit((int)st);
    }
    cfg.allow_open_cluster = 1;
    spk_status st = spk_cluster_open(&cfg, &c);
    ck_assert_msg(st == SPK_OK, "open cluster: %s", spk_last_error());
    ck_assert_int_eq(spk_cluster_call(c, 1, SPK_CLUSTER_CMD_PING, "hi", 2, NULL, NULL, 5000),
                     SPK_OK);
    spk_cluster_close(c);
    ck_assert_int_eq(t_wait_exit(w, 5000), 0);
}
END_TEST

START_TEST(cut_link_gives_peer_lost_on_both_sides)
{
    snprintf(coord, sizeof coord, ADDR_A ":%d", 20000 + (int)(getpid() % 20000));
    pid_t w = spawn_in(ns_b, coord, 1, 2, "netns-test-cluster-key-01234567");
    spk_set_log_callback(NULL, NULL, SPK_LOG_NONE);
    spk_cluster *c = driver_in_a(2, "netns-test-cluster-key-01234567", 0);
    t_sleep_ms(300);
    ck_assert_int_eq(spk_cluster_health(c), SPK_OK);
    int64_t t0 = t_now_ms();
    ck_assert_int_eq(sh("ip -n %s link set %s down", ns_b, veth_b), 0);
    spk_status st = spk_cluster_wait_failure(c, 3 * T_PEER_MS);
    int64_t dt = t_now_ms() - t0;
    printf("link cut: driver got %s after %lld ms (peer_timeout_ms %d): %s\n",
           spk_status_str(st), (long long)dt, T_PEER_MS, spk_last_error());
    ck_assert_int_eq(st, SPK_ERR_PEER_LOST);
    ck_assert_ptr_nonnull(strstr(spk_last_error(), "rank 1 (" ADDR_B ":"));
    int code = t_wait_exit(w, 3 * T_PEER_MS);
    int64_t dtw = t_now_ms() - t0;
    printf("link cut: worker serve returned %d after %lld ms\n", code, (long long)dtw);
    int64_t tc = t_now_ms();
    ck_assert_int_eq(spk_cluster_close(c), SPK_OK);
    ck_assert_int_lt(t_now_ms() - tc, T_PEER_MS + 100);
    sh("ip -n %s link set %s up", ns_b, veth_b);
    ck_assert_int_eq(code, SPK_ERR_PEER_LOST);
    ck_assert_int_le(dt, T_PEER_MS + 300);
    ck_assert_int_le(dtw, T_PEER_MS + 300);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("cluster_netns");
    TCase *t = tcase_create("netns");
    tcase_set_timeout(t, 60);
    tcase_add_test(t, world_2_across_namespaces);
    tcase_add_test(t, world_3_workers_in_both_namespaces);
    tcase_add_test(t, keyless_needs_allow_open_cluster_off_loopback);
    tcase_add_test(t, cut_link_gives_peer_lost_on_both_sides);
    suite_add_tcase(s, t);
    return s;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    setup();
    return spk_test_run(suite());
}
