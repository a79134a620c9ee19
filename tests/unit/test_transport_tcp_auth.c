/*
 * TCP transport data authentication, attacked on loopback: two ranks (threads) whose data
 * connection runs through an in-test relay (the bootstrap hands rank 1 the relay's port in place
 * of rank 0's, as an attacker on the path would sit). The relay flips one byte of the data, or
 * replays a whole record: with authentication the receiver fails with SPK_ERR_AUTH and the
 * all-reduce never returns forged sums; with SPK_DATA_AUTH off the same flip goes through
 * unnoticed (so the attack is real), and mismatched settings are refused at init.
 */
#include <check.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "testutil.h"
#include "transport/registry.h"
#include "transport/tcp/mesh.h"

#define TMO 5000
#define N_FLOATS (300 * 1024) /* 1.2 MB: several 256 KiB records */

typedef enum { R_NONE, R_FLIP, R_REPLAY } relay_mode;

/* In-process bootstrap for two threads; rank 1 sees rank 0's data port replaced by the relay. */
typedef struct boot boot;
typedef struct who {
    boot *b;
    int rank;
} who;

struct boot {
    who who[2];
    atomic_int stop;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint8_t slot[2][256];
    int gen, arrived;
    int relay_port, real_port0;
    spk_transport_bootstrap bs[2];
    uint8_t nonce[32];
    const char *opt[2];
    relay_mode mode;
    int lfd;
    atomic_int tampered;
};

typedef struct rank_ctx {
    boot *b;
    int rank;
    spk_status init_st, op_st;
    char err[512];
    float *x;
    int forged; /* rank 0: elements that are neither its own value nor the true sum */
} rank_ctx;

static _Thread_local char last_err[512];
static spk_status set_err(spk_status st, const char *msg)
{
    snprintf(last_err, sizeof last_err, "%s", msg);
    return st;
}
static void logf_cb(spk_log_level lv, const char *msg)
{
    if (lv >= SPK_LOG_WARN)
        fprintf(stderr, "[transport log %d] %s\n", (int)lv, msg);
}

static spk_status ag(void *ctx, const void *mine, void *all, size_t n, int tmo)
{
    (void)tmo;
    boot *b = ((who *)ctx)->b;
    int rank = ((who *)ctx)->rank;
    if (n > sizeof b->slot[0])
        return SPK_ERR_INVALID_ARG;
    pthread_mutex_lock(&b->mu);
    int gen = b->gen;
    memcpy(b->slot[rank], mine, n);
    if (++b->arrived == 2) {
        b->arrived = 0;
        b->gen++;
        pthread_cond_broadcast(&b->cv);
    } else {
        while (b->gen == gen)
            pthread_cond_wait(&b->cv, &b->mu);
    }
    memcpy(all, b->slot[0], n);
    memcpy((uint8_t *)all + n, b->slot[1], n);
    pthread_mutex_unlock(&b->mu);
    if (n == SPK_TCP_INFO_LEN && rank == 1 && b->relay_port) { /* the attacker's detour */
        uint8_t *p0 = all;
        b->real_port0 = p0[64] | p0[65] << 8;
        p0[64] = (uint8_t)b->relay_port;
        p0[65] = (uint8_t)(b->relay_port >> 8);
    }
    return SPK_OK;
}

static spk_status bar(void *ctx, int tmo)
{
    uint8_t one = 1, all[2];
    return ag(ctx, &one, all, 1, tmo);
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

/* Relay rank 1 -> rank 0 (the direction that carries rank 1's half of the all-reduce). */
static void *relay_main(void *arg)
{
    boot *b = arg;
    struct pollfd pf = {b->lfd, POLLIN, 0};
    while (!atomic_load(&b->stop) && poll(&pf, 1, 20) != 1) {
    }
    if (atomic_load(&b->stop))
        return NULL;
    int w = accept(b->lfd, NULL, NULL);
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)b->real_port0);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int d = socket(AF_INET, SOCK_STREAM, 0);
    if (w < 0 || connect(d, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(w);
        close(d);
        return NULL;
    }
    /* Stream offsets of rank 1's bytes: hello, then records of 256 KiB + 16-byte tags. */
    const size_t first_rec = SPK_TCP_HELLO_LEN, rec = (256u << 10) + 16u;
    size_t off = 0;
    uint8_t *saved = malloc(rec);
    size_t saved_n = 0;
    uint8_t buf[65536];
    for (;;) {
        struct pollfd p2[2] = {{w, POLLIN, 0}, {d, POLLIN, 0}};
        if (poll(p2, 2, TMO) <= 0)
            break;
        if (p2[1].revents) {
            ssize_t k = recv(d, buf, sizeof buf, 0);
            if (k <= 0 || send_all(w, buf, (size_t)k) != 0)
                break;
        }
        if (p2[0].revents) {
            ssize_t k = recv(w, buf, sizeof buf, 0);
            if (k <= 0)
                break;
            for (ssize_t i = 0; i < k; i++, off++) {
                if (b->mode == R_FLIP && off == first_rec + 1000) {
                    buf[i] ^= 0x40;
                    atomic_fetch_add(&b->tampered, 1);
                }
                if (b->mode == R_REPLAY && off >= first_rec && off < first_rec + rec)
                    saved[saved_n++] = buf[i];
            }
            if (send_all(d, buf, (size_t)k) != 0)
                break;
            if (b->mode == R_REPLAY && saved_n == rec) { /* the first record, once more */
                if (send_all(d, saved, rec) != 0)
                    break;
                saved_n = 0;
                b->mode = R_NONE;
                atomic_fetch_add(&b->tampered, 1);
            }
        }
    }
    free(saved);
    close(w);
    close(d);
    return NULL;
}

static void *rank_main(void *arg)
{
    rank_ctx *r = arg;
    boot *b = r->b;
    spk_transport_init_params p;
    memset(&p, 0, sizeof p);
    p.struct_size = sizeof p;
    p.bootstrap = &b->bs[r->rank];
    p.timeout_ms = TMO;
    p.cuda_device = -1;
    p.options = b->opt[r->rank];
    p.set_error = set_err;
    p.log = logf_cb;
    const spk_transport *vt = spk_transport_tcp();
    spk_transport_comm *c = NULL;
    r->init_st = vt->init(&p, &c);
    if (r->init_st != SPK_OK) {
        snprintf(r->err, sizeof r->err, "%s", last_err);
        return NULL;
    }
    for (int i = 0; i < N_FLOATS; i++)
        r->x[i] = (float)(r->rank + 1) * (float)(i % 5);
    r->op_st = vt->allreduce(c, r->x, N_FLOATS, SPK_TRANSPORT_F32, SPK_TRANSPORT_MEM_HOST, TMO);
    if (r->op_st != SPK_OK)
        snprintf(r->err, sizeof r->err, "%s", last_err);
    vt->finalize(c);
    return NULL;
}

/* Run two ranks through the relay; returns how many of rank 0's sums are wrong. */
static int run_pair(relay_mode mode, const char *opt0, const char *opt1, rank_ctx *r)
{
    boot *b = calloc(1, sizeof *b);
    pthread_mutex_init(&b->mu, NULL);
    pthread_cond_init(&b->cv, NULL);
    b->mode = mode;
    b->opt[0] = opt0;
    b->opt[1] = opt1;
    for (int i = 0; i < 32; i++)
        b->nonce[i] = (uint8_t)(i * 13 + 5);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    b->lfd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_eq(bind(b->lfd, (struct sockaddr *)&a, sizeof a), 0);
    ck_assert_int_eq(listen(b->lfd, 2), 0);
    getsockname(b->lfd, (struct sockaddr *)&a, &len);
    b->relay_port = ntohs(a.sin_port);
    for (int k = 0; k < 2; k++) {
        b->who[k] = (who){b, k};
        b->bs[k] = (spk_transport_bootstrap){sizeof b->bs[k], k, 2, &b->who[k], ag, bar, b->nonce,
                                             sizeof b->nonce, "127.0.0.1"};
    }
    pthread_t th[3];
    pthread_create(&th[2], NULL, relay_main, b);
    for (int k = 0; k < 2; k++) {
        memset(&r[k], 0, sizeof r[k]);
        r[k].b = b;
        r[k].rank = k;
        r[k].x = calloc(N_FLOATS, sizeof(float));
        pthread_create(&th[k], NULL, rank_main, &r[k]);
    }
    for (int k = 0; k < 2; k++)
        pthread_join(th[k], NULL);
    atomic_store(&b->stop, 1); /* ends the relay's wait if nobody came */
    pthread_join(th[2], NULL);
    close(b->lfd);
    int wrong = 0;
    for (int i = 0; i < N_FLOATS; i++) {
        float v = (float)(i % 5);
        if (r[0].x[i] != 3.0f * v)
            wrong++;
        if (r[0].x[i] != 3.0f * v && r[0].x[i] != v)
            r[0].forged++; /* something other than "not added yet" or "added": forged bytes */
    }
    int tampered = atomic_load(&b->tampered);
    printf("relay mode %d (options %s / %s): init %d/%d, allreduce %d/%d, tampered %d, %d wrong "
           "(%d forged) sums on rank 0; rank 0: %s; rank 1: %s\n", (int)mode,
           opt0 ? opt0 : "-", opt1 ? opt1 : "-", r[0].init_st, r[1].init_st, r[0].op_st,
           r[1].op_st, tampered, wrong, r[0].forged, r[0].err, r[1].err);
    for (int k = 0; k < 2; k++)
        free(r[k].x);
    pthread_mutex_destroy(&b->mu);
    pthread_cond_destroy(&b->cv);
    free(b);
    ck_assert_int_eq(tampered, mode == R_NONE ? 0 : 1);
    return wrong;
}

START_TEST(honest_relay_passes)
{
    rank_ctx r[2];
    ck_assert_int_eq(run_pair(R_NONE, NULL, NULL, r), 0);
    ck_assert_int_eq(r[0].op_st, SPK_OK);
    ck_assert_int_eq(r[1].op_st, SPK_OK);
}
END_TEST

START_TEST(flipped_data_byte_is_refused)
{
    rank_ctx r[2];
    int wrong = run_pair(R_FLIP, NULL, NULL, r);
    ck_assert_int_eq(r[0].init_st, SPK_OK);
    ck_assert_int_eq(r[0].op_st, SPK_ERR_AUTH);
    ck_assert_ptr_nonnull(strstr(r[0].err, "failed authentication (record 0"));
    ck_assert_ptr_nonnull(strstr(r[0].err, "rank 1"));
    /* Nothing of the failed record was folded into the sums: no value from forged bytes. */
    ck_assert_int_eq(r[0].forged, 0);
    (void)wrong;
}
END_TEST

START_TEST(replayed_record_is_refused)
{
    rank_ctx r[2];
    run_pair(R_REPLAY, NULL, NULL, r);
    ck_assert_int_eq(r[0].op_st, SPK_ERR_AUTH);
    ck_assert_ptr_nonnull(strstr(r[0].err, "failed authentication (record 1"));
    ck_assert_int_eq(r[0].forged, 0);
}
END_TEST

/* The switch for trusted links: the same flip now corrupts the sums without a word, which is
 * what authentication is there to stop. */
START_TEST(without_data_auth_the_flip_goes_through)
{
    rank_ctx r[2];
    int wrong = run_pair(R_FLIP, "data_auth=0", "data_auth=0", r);
    ck_assert_int_eq(r[0].op_st, SPK_OK);
    ck_assert_int_eq(wrong, 1);
    ck_assert_int_eq(r[0].forged, 1); /* the forged sum reached the caller */
}
END_TEST

START_TEST(mismatched_data_auth_is_refused_at_init)
{
    rank_ctx r[2];
    run_pair(R_NONE, NULL, "data_auth=0", r);
    ck_assert_int_eq(r[0].init_st, SPK_ERR_INVALID_ARG);
    ck_assert_int_eq(r[1].init_st, SPK_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(r[1].err, "SPK_DATA_AUTH"));
}
END_TEST

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    Suite *s = suite_create("transport_tcp_auth");
    TCase *t = tcase_create("data_auth");
    tcase_set_timeout(t, 60);
    tcase_add_test(t, honest_relay_passes);
    tcase_add_test(t, flipped_data_byte_is_refused);
    tcase_add_test(t, replayed_record_is_refused);
    tcase_add_test(t, without_data_auth_the_flip_goes_through);
    tcase_add_test(t, mismatched_data_auth_is_refused_at_init);
    suite_add_tcase(s, t);
    return spk_test_run(s);
}
