/*
 * verbs transport: the device-independent parts (connection-record encoding, chunk schedule,
 * wr_id packing, ring collectives over a sendrecv) always; the runtime conformance suite only
 * where an RDMA device exists (skips with the reason elsewhere).
 */
#include <check.h>

#include "testutil.h"
#include "test_transport_harness.h"
#include "transport/reduce.h"
#include "transport/registry.h"
#include "transport/ring.h"
#include "transport/verbs/wire.h"

START_TEST(conn_record_roundtrips_little_endian)
{
    spk_verbs_conn c = {0x123456, 0xabcdef, 0x0102, {0xfe, 0x80, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14},
                        3, 0xdeadbeef, 0x0011223344556677ull}, d;
    uint8_t b[SPK_VERBS_CONN_LEN];
    spk_verbs_conn_encode(&c, b);
    ck_assert_uint_eq(b[0], SPK_VERBS_WIRE_VERSION);
    ck_assert_uint_eq(b[4], 0x56); /* qpn low byte first */
    ck_assert_uint_eq(b[6], 0x12);
    ck_assert_uint_eq(b[16], 0x77); /* addr low byte first */
    ck_assert_uint_eq(b[23], 0x00);
    ck_assert_int_eq(spk_verbs_conn_decode(b, &d), 0);
    ck_assert_uint_eq(d.qpn, c.qpn);
    ck_assert_uint_eq(d.psn, c.psn);
    ck_assert_uint_eq(d.lid, c.lid);
    ck_assert_uint_eq(d.mtu, c.mtu);
    ck_assert_uint_eq(d.rkey, c.rkey);
    ck_assert(d.addr == c.addr);
    ck_assert_int_eq(memcmp(d.gid, c.gid, 16), 0);
    b[0] = 2; /* other wire version */
    ck_assert_int_eq(spk_verbs_conn_decode(b, &d), -1);
    spk_verbs_conn_encode(&c, b);
    b[7] = 1; /* qpn over 24 bits */
    ck_assert_int_eq(spk_verbs_conn_decode(b, &d), -1);
    spk_verbs_conn_encode(&c, b);
    b[1] = 9; /* no such MTU */
    ck_assert_int_eq(spk_verbs_conn_decode(b, &d), -1);
}
END_TEST

START_TEST(chunk_schedule_covers_every_byte_once)
{
    const size_t chunk = 256 << 10;
    const size_t sizes[] = {0, 1, chunk - 1, chunk, chunk + 1, 5 * chunk + 17};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t n = spk_verbs_chunks(sizes[i], chunk), next = 0;
        ck_assert_uint_eq(n, (sizes[i] + chunk - 1) / chunk);
        for (size_t k = 0; k < n; k++) {
            size_t off, len;
            spk_verbs_chunk_at(sizes[i], chunk, k, &off, &len);
            ck_assert_uint_eq(off, next);
            ck_assert(len > 0 && len <= chunk);
            next += len;
        }
        ck_assert_uint_eq(next, sizes[i]);
        size_t off, len;
        spk_verbs_chunk_at(sizes[i], chunk, n, &off, &len); /* past the end: empty */
        ck_assert_uint_eq(len, 0);
    }
    int p, r, s;
    spk_verbs_wr_parse(spk_verbs_wr_id(13, 1, 3), &p, &r, &s);
    ck_assert_int_eq(p, 13);
    ck_assert_int_eq(r, 1);
    ck_assert_int_eq(s, 3);
    spk_verbs_wr_parse(spk_verbs_wr_id(0, 0, 0), &p, &r, &s);
    ck_assert_int_eq(p + r + s, 0);
}
END_TEST

/* ---- ring collectives over socketpairs between threads ---- */
#define RW 3
static int ring_fd[RW][RW]; /* ring_fd[a][b]: a's end of the a<->b socketpair */

typedef struct rank_ctx {
    int rank;
    float *buf;
    size_t count;
    uint8_t *all;
    spk_status st;
} rank_ctx;

static spk_status thr_sr(void *ctx, int sp, const void *sbuf, size_t sb, int rp, void *rbuf,
                         size_t rb)
{
    rank_ctx *rc = ctx;
    size_t sd = 0, rd = 0;
    while (sd < sb || rd < rb) {
        struct pollfd pf[2] = {{ring_fd[rc->rank][sp], sd < sb ? POLLOUT : 0, 0},
                               {ring_fd[rc->rank][rp], rd < rb ? POLLIN : 0, 0}};
        if (poll(pf, 2, 5000) <= 0)
            return SPK_ERR_TIMEOUT;
        if (pf[0].revents & POLLOUT) {
            ssize_t n = send(pf[0].fd, (const uint8_t *)sbuf + sd, sb - sd, MSG_DONTWAIT);
            if (n > 0)
                sd += (size_t)n;
        }
        if (pf[1].revents & POLLIN) {
            ssize_t n = recv(pf[1].fd, (uint8_t *)rbuf + rd, rb - rd, MSG_DONTWAIT);
            if (n > 0)
                rd += (size_t)n;
        }
    }
    return SPK_OK;
}

static void *ring_rank(void *arg)
{
    rank_ctx *rc = arg;
    float *scratch = malloc((rc->count / RW + 1) * sizeof(float));
    rc->st = spk_ring_allreduce(rc, thr_sr, rc->rank, RW, rc->buf, rc->count, SPK_TRANSPORT_F32,
                                scratch);
    if (rc->st == SPK_OK)
        rc->st = spk_ring_allgather(rc, thr_sr, rc->rank, RW, rc->all, 5);
    free(scratch);
    return NULL;
}

START_TEST(ring_collectives_are_exact_for_odd_counts)
{
    for (int a = 0; a < RW; a++)
        for (int b = a + 1; b < RW; b++) {
            int sv[2];
            ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
            ring_fd[a][b] = sv[0];
            ring_fd[b][a] = sv[1];
        }
    const size_t counts[] = {1, 2, 3, 4, 1001, 65537};
    for (size_t k = 0; k < sizeof counts / sizeof counts[0]; k++) {
        size_t n = counts[k];
        rank_ctx rc[RW];
        pthread_t t[RW];
        for (int r = 0; r < RW; r++) {
            rc[r] = (rank_ctx){r, malloc(n * sizeof(float)), n, calloc(RW, 5), SPK_OK};
            for (size_t i = 0; i < n; i++)
                rc[r].buf[i] = (float)th_exact_val(r, i, SPK_TRANSPORT_F32);
            memset(rc[r].all + r * 5, 'a' + r, 5);
            pthread_create(&t[r], NULL, ring_rank, &rc[r]);
        }
        for (int r = 0; r < RW; r++)
            pthread_join(t[r], NULL);
        for (int r = 0; r < RW; r++) {
            ck_assert_int_eq(rc[r].st, SPK_OK);
            for (size_t i = 0; i < n; i++) {
                double s = 0;
                for (int q = 0; q < RW; q++)
                    s += th_exact_val(q, i, SPK_TRANSPORT_F32);
                ck_assert_msg(rc[r].buf[i] == (float)s, "count %zu rank %d element %zu", n, r, i);
            }
            for (int q = 0; q < RW; q++)
                ck_assert_uint_eq(rc[r].all[q * 5 + 4], 'a' + q);
            free(rc[r].buf);
            free(rc[r].all);
        }
    }
    for (int a = 0; a < RW; a++)
        for (int b = 0; b < RW; b++)
            if (a != b)
                close(ring_fd[a][b]);
}
END_TEST

/* ---- runtime: needs an RDMA device ---- */
static int rank_conformance(const spk_transport *vt, th_boot *b, int rfd, void *arg)
{
    spk_transport_init_params p;
    th_params(&p, b, 30000);
    spk_transport_comm *c = NULL;
    spk_status st = vt->init(&p, &c);
    if (st != SPK_OK)
        TH_FAIL("verbs init: status %d", st);
    int rc = th_conformance(vt, c, 0);
    vt->finalize(c);
    return rc;
}

START_TEST(verbs_passes_conformance_world2)
{
    const spk_transport *vt = spk_transport_verbs();
    char why[256];
    if (!vt || vt->probe(why, sizeof why) != SPK_OK) {
        printf("SKIP (runtime part): %s\n", vt ? why : "verbs transport not compiled in");
        return;
    }
    ck_assert_int_eq(th_run_world(vt, 2, rank_conformance, NULL, 0, -1, NULL, 0, NULL), 0);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("transport_verbs");
    TCase *tc = tcase_create("wire");
    tcase_add_test(tc, conn_record_roundtrips_little_endian);
    tcase_add_test(tc, chunk_schedule_covers_every_byte_once);
    tcase_add_test(tc, ring_collectives_are_exact_for_odd_counts);
    suite_add_tcase(s, tc);
    TCase *rt = tcase_create("runtime");
    tcase_set_timeout(rt, 120);
    tcase_add_test(rt, verbs_passes_conformance_world2);
    suite_add_tcase(s, rt);
    return spk_test_run(s);
}
