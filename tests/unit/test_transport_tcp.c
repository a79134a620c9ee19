/*
 * TCP transport: conformance suite in real processes over real loopback sockets (world sizes
 * 1..4), lost peers (SIGKILL mid-collective and while idle), timeouts, abort, foreign cluster
 * nonce, split groups, and the registry. Extra modes for the netns test and the benchmark:
 *   test_transport_tcp --rank R --world N --bootstrap HOST:PORT [--addr LOCAL_IP] [--bench]
 */
#include <check.h>

#include "testutil.h"
#include "test_transport_harness.h"
#include "transport/reduce.h"
#include "transport/registry.h"
#include "transport/tcp/mesh.h"

#include <sodium.h>

#define TIMEOUT_MS 20000

static const spk_transport *tcp(void)
{
    return spk_transport_tcp();
}

static spk_transport_comm *open_comm(const spk_transport *vt, th_boot *b, int timeout_ms)
{
    spk_transport_init_params p;
    th_params(&p, b, timeout_ms);
    spk_transport_comm *c = NULL;
    spk_status st = vt->init(&p, &c);
    if (st != SPK_OK) {
        fprintf(stderr, "rank %d: init failed: status %d: %s\n", b->bs.rank, st, th_last_err);
        return NULL;
    }
    return c;
}

/* ---- conformance ---- */

static int rank_conformance(const spk_transport *vt, th_boot *b, int rfd, void *arg)
{
    int big = arg != NULL;
    spk_transport_comm *c = open_comm(vt, b, TIMEOUT_MS);
    if (!c)
        return 1;
    int rc = th_conformance(vt, c, big);
    vt->finalize(c);
    return rc;
}

static void run_conformance(int world, int big)
{
    int failed = th_run_world(tcp(), world, rank_conformance, big ? (void *)1 : NULL, 0, -1, NULL,
                              0, NULL);
    ck_assert_msg(failed == 0, "%d of %d ranks failed the tcp conformance suite", failed, world);
}

START_TEST(conformance_world1) { run_conformance(1, 0); }
END_TEST
START_TEST(conformance_world2_up_to_64MiB) { run_conformance(2, 1); }
END_TEST
START_TEST(conformance_world3_up_to_64MiB) { run_conformance(3, 1); }
END_TEST
START_TEST(conformance_world4) { run_conformance(4, 0); }
END_TEST

/* ---- split: two groups (even/odd ranks) reduce independently, concurrently with the parent ---- */

static int rank_split(const spk_transport *vt, th_boot *b, int rfd, void *arg)
{
    spk_transport_comm *c = open_comm(vt, b, TIMEOUT_MS), *g = NULL;
    if (!c)
        return 1;
    int r = b->bs.rank, w = b->bs.world_size;
    spk_status st = vt->split(c, r % 2, -r, &g, -1); /* key -r: reverse order inside the group */
    if (st != SPK_OK || !g)
        TH_FAIL("split: status %d", st);
    int gw = vt->world_size(g), gr = vt->rank(g), expect_w = (w - r % 2 + 1) / 2;
    if (gw != expect_w || gr != (expect_w - 1 - r / 2))
        TH_FAIL("split: rank %d got group rank %d of %d, want %d of %d", r, gr, gw,
                expect_w - 1 - r / 2, expect_w);
    float v[3] = {(float)r, 1.0f, (float)(r * r)};
    if ((st = vt->allreduce(g, v, 3, SPK_TRANSPORT_F32, SPK_TRANSPORT_MEM_HOST, -1)) != SPK_OK)
        TH_FAIL("group allreduce: status %d", st);
    float s0 = 0, s2 = 0;
    for (int q = r % 2; q < w; q += 2)
        s0 += (float)q, s2 += (float)(q * q);
    if (v[0] != s0 || v[1] != (float)gw || v[2] != s2)
        TH_FAIL("group allreduce: got %g %g %g want %g %d %g", v[0], v[1], v[2], s0, gw, s2);
    spk_transport_comm *none = (spk_transport_comm *)1;
    if ((st = vt->split(c, r == 0 ? 7 : -1, 0, &none, -1)) != SPK_OK)
        TH_FAIL("split with color -1: status %d", st);
    if (r != 0 && none != NULL)
        TH_FAIL("color -1 must give a NULL comm");
    if (r == 0 && (!none || vt->world_size(none) != 1))
        TH_FAIL("singleton group must have world 1");
    if (none)
        vt->finalize(none);
    if (th_conformance(vt, c, 0))
        return 1;
    vt->finalize(g);
    vt->finalize(c);
    return 0;
}

START_TEST(split_groups_reduce_independently)
{
    int failed = th_run_world(tcp(), 4, rank_split, NULL, 0, -1, NULL, 0, NULL);
    ck_assert_msg(failed == 0, "%d ranks failed the split test", failed);
}
END_TEST

/* ---- lost peers ---- */

typedef struct kill_arg {
    int victim;
    int mid_collective; /* 1: everyone loops on a ring all-reduce; 0: survivors block in recv */
    int timeout_ms;
} kill_arg;

static void *suicide_thread(void *arg)
{
    int rfd = *(int *)arg;
    usleep(300000);
    th_report_send(rfd, -1, 0, th_now_ms(), 0);
    raise(SIGKILL);
    return NULL;
}

static int rank_kill(const spk_transport *vt, th_boot *b, int rfd, void *arg)
{
    const kill_arg *ka = arg;
    int r = b->bs.rank, w = b->bs.world_size;
    spk_transport_comm *c = open_comm(vt, b, ka->timeout_ms);
    if (!c)
        return 1;
    if (vt->barrier(c, -1) != SPK_OK)
        TH_FAIL("barrier before the kill");
    if (r == ka->victim) {
        static int fd;
        fd = rfd;
        pthread_t t;
        pthread_create(&t, NULL, suicide_thread, &fd);
    }
    size_t count = (size_t)2 << 20; /* 8 MiB of f32: ring path, tens of ms per call */
    float *buf = calloc(count, sizeof *buf);
    spk_status st = SPK_OK;
    if (r == ka->victim && !ka->mid_collective) {
        pause(); /* idle until the suicide thread kills it */
    } else if (ka->mid_collective) {
        for (int it = 0; it < 100000 && st == SPK_OK; it++)
            st = vt->allreduce(c, buf, count, SPK_TRANSPORT_F32, SPK_TRANSPORT_MEM_HOST, -1);
    } else {
        st = vt->recv(c, ka->victim, buf, 16, SPK_TRANSPORT_MEM_HOST, -1);
    }
    double t = th_now_ms();
    th_report_send(rfd, r, st, t, 0);
    if (r == ka->victim)
        pause();
    if (st != SPK_ERR_PEER_LOST)
        TH_FAIL("survivor rank %d of %d got status %d, want PEER_LOST (%d)", r, w, st,
                SPK_ERR_PEER_LOST);
    if (!strstr(th_last_err, "rank"))
        TH_FAIL("PEER_LOST message does not name a rank: %s", th_last_err);
    if (r == 0)
        printf("rank 0 saw: %s\n", th_last_err);
    /* the comm stays broken: later calls fail fast */
    st = vt->barrier(c, -1);
    if (st == SPK_OK)
        TH_FAIL("barrier on a broken comm succeeded");
    free(buf);
    vt->finalize(c);
    return 0;
}

static void run_kill(int world, int victim, int mid)
{
    kill_arg ka = {victim, mid, 5000};
    th_report rep[TH_MAX_WORLD + 1];
    int n = 0;
    int failed = th_run_world(tcp(), world, rank_kill, &ka, 0, victim, rep, TH_MAX_WORLD + 1, &n);
    ck_assert_msg(failed == 0, "%d survivors failed", failed);
    double t_kill = -1, worst = 0;
    int survivors = 0;
    for (int i = 0; i < n; i++)
        if (rep[i].rank == -1)
            t_kill = rep[i].t_ms;
    ck_assert_msg(t_kill > 0, "victim did not report its kill time");
    for (int i = 0; i < n; i++)
        if (rep[i].rank >= 0 && rep[i].rank != victim) {
            survivors++;
            ck_assert_int_eq(rep[i].status, SPK_ERR_PEER_LOST);
            double dt = rep[i].t_ms - t_kill;
            if (dt > worst)
                worst = dt;
        }
    ck_assert_int_eq(survivors, world - 1);
    printf("SIGKILL of rank %d of %d %s: every survivor returned PEER_LOST, slowest after %.1f ms "
           "(timeout %d ms)\n",
           victim, world, mid ? "mid-collective" : "while peers were blocked in recv", worst,
           ka.timeout_ms);
    ck_assert_msg(worst < ka.timeout_ms, "detection took %.1f ms, timeout %d", worst, ka.timeout_ms);
}

START_TEST(sigkill_mid_allreduce_world4_gives_peer_lost) { run_kill(4, 2, 1); }
END_TEST
START_TEST(sigkill_mid_allreduce_world2_gives_peer_lost) { run_kill(2, 1, 1); }
END_TEST
START_TEST(sigkill_while_idle_world3_gives_peer_lost) { run_kill(3, 2, 0); }
END_TEST

/* ---- timeout, abort, foreign nonce ---- */

static int rank_timeout(const spk_transport *vt, th_boot *b, int rfd, void *arg)
{
    spk_transport_comm *c = open_comm(vt, b, TIMEOUT_MS);
    if (!c)
        return 1;
    int r = b->bs.rank;
    if (r == 1) {
        usleep(800000);
        vt->finalize(c);
        return 0;
    }
    uint8_t x[4];
    double t0 = th_now_ms();
    spk_status st = vt->recv(c, 1, x, 4, SPK_TRANSPORT_MEM_HOST, 200);
    double dt = th_now_ms() - t0;
    if (st != SPK_ERR_TIMEOUT)
        TH_FAIL("recv from a silent peer: status %d, want TIMEOUT", st);
    if (dt < 150 || dt > 1000)
        TH_FAIL("recv with a 200 ms deadline returned after %.0f ms", dt);
    vt->finalize(c);
    return 0;
}

START_TEST(recv_from_silent_peer_times_out_at_deadline)
{
    ck_assert_int_eq(th_run_world(tcp(), 2, rank_timeout, NULL, 0, -1, NULL, 0, NULL), 0);
}
END_TEST

typedef struct abort_ctx {
    const spk_transport *vt;
    spk_transport_comm *c;
} abort_ctx;

static void *abort_later(void *arg)
{
    abort_ctx *a = arg;
    usleep(150000);
    a->vt->abort(a->c);
    return NULL;
}

static int rank_abort(const spk_transport *vt, th_boot *b, int rfd, void *arg)
{
    spk_transport_comm *c = open_comm(vt, b, TIMEOUT_MS);
    if (!c)
        return 1;
    uint8_t x[64];
    double t0 = th_now_ms();
    spk_status st;
    if (b->bs.rank == 0) {
        abort_ctx a = {vt, c};
        pthread_t t;
        pthread_create(&t, NULL, abort_later, &a);
        st = vt->recv(c, 1, x, sizeof x, SPK_TRANSPORT_MEM_HOST, -1);
        pthread_join(t, NULL);
        double dt = th_now_ms() - t0;
        if (st != SPK_ERR_CANCELLED)
            TH_FAIL("recv during abort: status %d, want CANCELLED", st);
        if (dt > 2000)
            TH_FAIL("abort took %.0f ms to unblock recv", dt);
        if (vt->send(c, 1, x, 1, SPK_TRANSPORT_MEM_HOST, -1) != SPK_ERR_CANCELLED)
            TH_FAIL("send after abort must fail with CANCELLED");
    } else {
        /* the aborting rank closes its streams: this side learns at once, not at its deadline */
        st = vt->recv(c, 0, x, sizeof x, SPK_TRANSPORT_MEM_HOST, 10000);
        double dt = th_now_ms() - t0;
        if (st != SPK_ERR_PEER_LOST || dt > 5000)
            TH_FAIL("peer of an aborted rank: status %d after %.0f ms, want PEER_LOST fast", st, dt);
    }
    vt->finalize(c);
    return 0;
}

START_TEST(abort_unblocks_recv_and_tells_the_peer)
{
    ck_assert_int_eq(th_run_world(tcp(), 2, rank_abort, NULL, 0, -1, NULL, 0, NULL), 0);
}
END_TEST

static int rank_foreign(const spk_transport *vt, th_boot *b, int rfd, void *arg)
{
    spk_transport_init_params p;
    th_params(&p, b, 1500);
    spk_transport_comm *c = NULL;
    double t0 = th_now_ms();
    spk_status st = vt->init(&p, &c);
    th_report_send(rfd, b->bs.rank, st, th_now_ms() - t0, 0);
    if (st == SPK_OK || c != NULL)
        TH_FAIL("init with a foreign cluster nonce succeeded on rank %d", b->bs.rank);
    return 0;
}

START_TEST(data_connection_with_foreign_nonce_is_refused)
{
    th_report rep[4];
    int n = 0;
    ck_assert_int_eq(th_run_world(tcp(), 2, rank_foreign, NULL, 1, -1, rep, 4, &n), 0);
    ck_assert_int_eq(n, 2);
    for (int i = 0; i < n; i++) {
        ck_assert_msg(rep[i].status != SPK_OK, "rank %d connected", rep[i].rank);
        ck_assert_msg(rep[i].t_ms < 5000, "rank %d took %.0f ms to fail", rep[i].rank, rep[i].t_ms);
    }
}
END_TEST

/* ---- in-process unit tests ---- */

START_TEST(chunks_partition_every_count)
{
    for (int n = 1; n <= 5; n++)
        for (size_t count = 0; count < 40; count++) {
            size_t next = 0;
            for (int i = 0; i < n; i++) {
                size_t off, len;
                spk_tr_chunk(count, n, i, &off, &len);
                ck_assert_uint_eq(off, next);
                ck_assert_uint_le(len, count / (size_t)n + 1);
                next = off + len;
            }
            ck_assert_uint_eq(next, count);
        }
    ck_assert_uint_eq(spk_tr_n_pieces(0, 10), 0);
    ck_assert_uint_eq(spk_tr_n_pieces(10, 10), 1);
    ck_assert_uint_eq(spk_tr_n_pieces(11, 10), 2);
}
END_TEST

START_TEST(half_sums_accumulate_in_float)
{
    uint16_t a[2] = {spk_f32_to_f16(1.5f), spk_f32_to_bf16(2.0f)};
    uint16_t b[2] = {spk_f32_to_f16(-0.25f), spk_f32_to_bf16(0.5f)};
    spk_tr_sum_into(a, b, 1, SPK_TRANSPORT_F16);
    ck_assert_float_eq(spk_f16_to_f32(a[0]), 1.25f);
    spk_tr_sum_into(a + 1, b + 1, 1, SPK_TRANSPORT_BF16);
    ck_assert_float_eq(spk_bf16_to_f32(a[1]), 2.5f);
    ck_assert_uint_eq(spk_tr_dtype_size((spk_transport_dtype)99), 0);
}
END_TEST

START_TEST(hello_and_info_roundtrip_little_endian)
{
    spk_tcp_hello h = {SPK_TCP_MAGIC_HELLO, 1, 2, 3, 4, {9, 8, 7}}, d;
    uint8_t buf[SPK_TCP_HELLO_BODY];
    spk_tcp_hello_encode(&h, buf);
    ck_assert_uint_eq(buf[0], 0x53); /* 'S' first: little-endian magic */
    ck_assert_uint_eq(buf[8], 2);
    ck_assert_int_eq(spk_tcp_hello_decode(buf, sizeof buf, &d), 0);
    ck_assert_int_eq(memcmp(&h, &d, sizeof h), 0);
    ck_assert_int_eq(spk_tcp_hello_decode(buf, sizeof buf - 1, &d), -1);
    spk_tcp_info in = {"10.77.0.2", 40001, {1, 2, 3}, SPK_TCP_INFO_DATA_AUTH}, out;
    uint8_t ib[SPK_TCP_INFO_LEN];
    spk_tcp_info_encode(&in, ib);
    ck_assert_uint_eq(ib[64], 40001 & 0xff);
    ck_assert_int_eq(spk_tcp_info_decode(ib, &out), 0);
    ck_assert_str_eq(out.host, "10.77.0.2");
    ck_assert_uint_eq(out.port, 40001);
    ck_assert_uint_eq(out.flags, SPK_TCP_INFO_DATA_AUTH);
    memset(ib, 'x', 64); /* host without a terminator is rejected */
    ck_assert_int_eq(spk_tcp_info_decode(ib, &out), -1);
}
END_TEST

START_TEST(registry_selects_by_name_and_rejects_bad_plugins)
{
    spk_transport_handle h;
    ck_assert_int_eq(spk_transport_select("tcp", SPK_TRANSPORT_MEM_HOST, &h), SPK_OK);
    ck_assert_str_eq(h.vt->name, "tcp");
    spk_transport_release(&h);
    ck_assert_int_eq(spk_transport_select("auto", SPK_TRANSPORT_MEM_HOST, &h), SPK_OK);
    ck_assert_ptr_nonnull(h.vt); /* verbs only where a device exists; tcp otherwise */
    spk_transport_release(&h);
    ck_assert_int_eq(spk_transport_select("tcp", SPK_TRANSPORT_MEM_CUDA, &h), SPK_ERR_UNSUPPORTED);
    ck_assert_int_eq(spk_transport_select("carrier-pigeon", 0, &h), SPK_ERR_NOT_FOUND);
    ck_assert_ptr_null(h.vt);
    ck_assert_int_eq(spk_transport_select("/nonexistent/plugin.so", 0, &h), SPK_ERR_NOT_FOUND);
    const char *libs[] = {"/lib/x86_64-linux-gnu/libm.so.6", "/usr/lib/x86_64-linux-gnu/libm.so.6",
                          "/lib/aarch64-linux-gnu/libm.so.6", "/lib64/libm.so.6"};
    for (size_t i = 0; i < 4; i++)
        if (access(libs[i], R_OK) == 0) {
            ck_assert_int_eq(spk_transport_select(libs[i], 0, &h), SPK_ERR_NOT_FOUND);
            ck_assert_msg(strstr(spk_last_error(), SPK_TRANSPORT_PLUGIN_SYMBOL) != NULL, "%s",
                          spk_last_error());
            break;
        }
    spk_transport bad = *spk_transport_tcp();
    bad.abi_version = SPK_TRANSPORT_ABI_VERSION + 1;
    ck_assert_int_eq(spk_transport_check_vtable(&bad, "test"), SPK_ERR_VERSION);
    bad.abi_version = 0;
    ck_assert_int_eq(spk_transport_check_vtable(&bad, "test"), SPK_ERR_VERSION);
    bad = *spk_transport_tcp();
    bad.allreduce = NULL;
    ck_assert_int_eq(spk_transport_check_vtable(&bad, "test"), SPK_ERR_INVALID_ARG);
    ck_assert_int_eq(spk_transport_check_vtable(spk_transport_tcp(), "tcp"), SPK_OK);
}
END_TEST

START_TEST(init_rejects_bad_params)
{
    const spk_transport *vt = tcp();
    th_boot b;
    uint8_t nonce[32] = {0};
    th_boot_init(&b, -1, 3, 2, nonce, "127.0.0.1"); /* rank >= world */
    spk_transport_init_params p;
    th_params(&p, &b, 1000);
    spk_transport_comm *c = (spk_transport_comm *)1;
    ck_assert_int_eq(vt->init(&p, &c), SPK_ERR_INVALID_ARG);
    ck_assert_ptr_null(c);
    th_boot_init(&b, -1, 0, 1, nonce, "127.0.0.1");
    p.timeout_ms = 0;
    ck_assert_int_eq(vt->init(&p, &c), SPK_ERR_INVALID_ARG);
    p.timeout_ms = 1000;
    ck_assert_int_eq(vt->init(&p, &c), SPK_OK);
    uint8_t x = 1;
    ck_assert_int_eq(vt->send(c, 0, &x, 1, SPK_TRANSPORT_MEM_HOST, -1), SPK_ERR_INVALID_ARG);
    ck_assert_int_eq(vt->send(c, 5, &x, 1, SPK_TRANSPORT_MEM_HOST, -1), SPK_ERR_INVALID_ARG);
    ck_assert_int_eq(vt->allreduce(c, &x, 1, SPK_TRANSPORT_F32, SPK_TRANSPORT_MEM_CUDA, -1),
                     SPK_ERR_UNSUPPORTED);
    ck_assert_int_eq(vt->allreduce(c, &x, 1, (spk_transport_dtype)7, SPK_TRANSPORT_MEM_HOST, -1),
                     SPK_ERR_UNSUPPORTED);
    ck_assert_int_eq(vt->finalize(c), SPK_OK);
    ck_assert_int_eq(vt->finalize(NULL), SPK_OK);
}
END_TEST

/* ---- command-line modes (netns test, benchmark) ---- */

static inline int bench(const spk_transport *vt, spk_transport_comm *c);
static inline double nb_now_ms(void);

static int rank_bench(const spk_transport *vt, th_boot *b, int rfd, void *arg)
{
    spk_transport_comm *c = open_comm(vt, b, 60000);
    if (!c)
        return 1;
    int rc = bench(vt, c);
    vt->finalize(c);
    return rc;
}

/* Which data-plane mode the bench runs in, and what the data MAC costs alone on one core
 * (Poly1305 over 256 KiB records, as transport/tcp/tcp.c does on each side). */
static void bench_auth_line(void)
{
    const char *e = getenv("SPK_DATA_AUTH");
    int on = !(e && !strcmp(e, "0"));
    size_t n = 256u << 10;
    uint8_t *b = calloc(n, 1), key[crypto_onetimeauth_KEYBYTES] = {1}, tag[16];
    if (!b || sodium_init() < 0) {
        free(b);
        return;
    }
    int it = 400;
    double t0 = nb_now_ms();
    for (int i = 0; i < it; i++)
        crypto_onetimeauth(tag, b, n, key);
    double gbs = (double)n * it / ((nb_now_ms() - t0) * 1e-3) / 1e9;
    printf("# data authentication %s (SPK_DATA_AUTH=%s); Poly1305 alone: %.2f GB/s on one core\n",
           on ? "ON" : "OFF", e ? e : "unset", gbs);
    free(b);
}

static int cli(int argc, char **argv)
{
    int rank = -1, world = 2, do_bench = 0;
    const char *bootstrap = NULL, *addr = "127.0.0.1";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--rank") && i + 1 < argc)
            rank = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--world") && i + 1 < argc)
            world = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--bootstrap") && i + 1 < argc)
            bootstrap = argv[++i];
        else if (!strcmp(argv[i], "--addr") && i + 1 < argc)
            addr = argv[++i];
        else if (!strcmp(argv[i], "--bench"))
            do_bench = 1;
        else {
            fprintf(stderr, "usage: %s --rank R --world N --bootstrap HOST:PORT [--addr IP] [--bench]\n",
                    argv[0]);
            return 2;
        }
    }
    if (do_bench && (!bootstrap || rank == 0))
        bench_auth_line();
    if (do_bench && !bootstrap && world >= 1 && world <= TH_MAX_WORLD) /* all ranks forked here */
        return th_run_world(tcp(), world, rank_bench, NULL, 0, -1, NULL, 0, NULL) ? 1 : 0;
    if (rank < 0 || world < 1 || world > TH_MAX_WORLD || rank >= world || !bootstrap) {
        fprintf(stderr, "need --rank, --world and --bootstrap\n");
        return 2;
    }
    signal(SIGPIPE, SIG_DFL); /* prove the transport never raises it */
    int fd = th_rendezvous(bootstrap, rank, world, 30000);
    if (fd < 0) {
        fprintf(stderr, "rank %d: bootstrap rendezvous at %s failed\n", rank, bootstrap);
        return 1;
    }
    uint8_t nonce[32];
    for (int i = 0; i < 32; i++)
        nonce[i] = (uint8_t)("netns-test-cluster-nonce-0123456"[i]);
    th_boot b;
    th_boot_init(&b, fd, rank, world, nonce, addr);
    spk_transport_comm *c = open_comm(tcp(), &b, 30000);
    if (!c)
        return 1;
    int rc = do_bench ? bench(tcp(), c) : th_conformance(tcp(), c, 1);
    tcp()->barrier(c, -1);
    tcp()->finalize(c);
    if (rank == 0)
        printf("%s rank %d: %s\n", do_bench ? "bench" : "conformance", rank, rc ? "FAILED" : "PASSED");
    return rc;
}

#define NET_BENCH_ERRMSG th_last_err
#include "../../examples/net_bench.h"

int main(int argc, char **argv)
{
    if (argc > 1)
        return cli(argc, argv);
    Suite *s = suite_create("transport_tcp");
    TCase *unit = tcase_create("unit");
    tcase_add_test(unit, chunks_partition_every_count);
    tcase_add_test(unit, half_sums_accumulate_in_float);
    tcase_add_test(unit, hello_and_info_roundtrip_little_endian);
    tcase_add_test(unit, registry_selects_by_name_and_rejects_bad_plugins);
    tcase_add_test(unit, init_rejects_bad_params);
    suite_add_tcase(s, unit);
    TCase *conf = tcase_create("conformance");
    tcase_set_timeout(conf, 300);
    tcase_add_test(conf, conformance_world1);
    tcase_add_test(conf, conformance_world2_up_to_64MiB);
    tcase_add_test(conf, conformance_world3_up_to_64MiB);
    tcase_add_test(conf, conformance_world4);
    tcase_add_test(conf, split_groups_reduce_independently);
    suite_add_tcase(s, conf);
    TCase *fail = tcase_create("failures");
    tcase_set_timeout(fail, 120);
    tcase_add_test(fail, sigkill_mid_allreduce_world4_gives_peer_lost);
    tcase_add_test(fail, sigkill_mid_allreduce_world2_gives_peer_lost);
    tcase_add_test(fail, sigkill_while_idle_world3_gives_peer_lost);
    tcase_add_test(fail, recv_from_silent_peer_times_out_at_deadline);
    tcase_add_test(fail, abort_unblocks_recv_and_tells_the_peer);
    tcase_add_test(fail, data_connection_with_foreign_nonce_is_refused);
    suite_add_tcase(s, fail);
    return spk_test_run(s);
}
