/*
 * Submit fairness under a full queue (with the default model): spk_submit_wait callers are served
 * in arrival order, a plain spk_submit does not overtake them, a timed-out waiter leaves the line
 * without blocking the others, and many concurrent submitters all get in without a single retry.
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "sparkinfer/sparkinfer.h"
#include "testutil.h"

static spk_cluster *cl;
static spk_model *model;
static const int32_t prompt[3] = {1, 504, 3458};

static void setup(void) { model = spk_test_open_model(&cl, 1, 2048, 2); }

static void teardown(void)
{
    spk_model_free(model);
    spk_cluster_close(cl);
}

static void make_req(spk_request *r, int max_tokens)
{
    spk_request_init(r);
    r->prompt = prompt;
    r->n_prompt = 3;
    r->max_tokens = max_tokens;
    r->temperature = 0.0f;
    r->ignore_eos = 1;
}

static spk_model_stats stats(void)
{
    spk_model_stats s;
    memset(&s, 0, sizeof s);
    s.struct_size = sizeof s;
    ck_assert_int_eq(spk_model_get_stats(model, &s), SPK_OK);
    return s;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Wait (bounded) until `field` of the stats reaches `want`; fails the test otherwise. */
#define WAIT_STAT(field, want)                                                                    \
    do {                                                                                          \
        int waited_ = 0;                                                                          \
        while (stats().field != (want) && waited_ < 20000) {                                      \
            sleep_ms(2);                                                                          \
            waited_ += 2;                                                                         \
        }                                                                                         \
        ck_assert_int_eq(stats().field, (want));                                                  \
    } while (0)

typedef struct waiter_arg {
    int n;
    int timeout_ms;
    spk_status st;
    uint64_t ids[4];
} waiter_arg;

static void *waiter_main(void *p)
{
    waiter_arg *a = p;
    spk_request r[4];
    for (int i = 0; i < a->n; i++)
        make_req(&r[i], 2);
    a->st = spk_submit_wait(model, r, (size_t)a->n, a->ids, a->timeout_ms);
    return NULL;
}

/* Poll until every id in ids[0..n) has its final event. */
static void drain(const uint64_t *ids, int n)
{
    int done = 0, spins = 0;
    while (done < n && spins++ < 20000) {
        spk_event ev[64];
        size_t k = 0;
        ck_assert_int_eq(spk_poll(model, ev, 64, &k, 10), SPK_OK);
        for (size_t i = 0; i < k; i++) {
            if (ev[i].finish == SPK_FINISH_NONE)
                continue;
            for (int j = 0; j < n; j++)
                if (ids[j] == ev[i].request_id)
                    done++;
        }
    }
    ck_assert_int_eq(done, n);
}

START_TEST(waiters_are_served_in_arrival_order_and_plain_submit_does_not_overtake)
{
    uint64_t all[16];
    int n_all = 0;
    /* A long request holds the only sequence slot until it is cancelled. */
    spk_request r;
    make_req(&r, 2000);
    ck_assert_int_eq(spk_submit(model, &r, 1, &all[n_all++]), SPK_OK);
    const uint64_t blocker = all[0];
    WAIT_STAT(n_running, 1);
    make_req(&r, 2);
    ck_assert_int_eq(spk_submit(model, &r, 1, &all[n_all++]), SPK_OK); /* queue: 1 of 2 */

    /* A wants 2 places and only 1 is free: it waits. B arrives after A. */
    waiter_arg a = {.n = 2, .timeout_ms = -1}, b = {.n = 1, .timeout_ms = -1};
    pthread_t ta, tb;
    pthread_create(&ta, NULL, waiter_main, &a);
    WAIT_STAT(n_submit_waiting, 1);
    pthread_create(&tb, NULL, waiter_main, &b);
    WAIT_STAT(n_submit_waiting, 2);
    /* There is room for one request, but A and B are waiting first: a plain submit gets BUSY,
     * and a waiting submit that times out leaves the line without taking anyone's place. */
    ck_assert_int_eq(stats().n_queued, 1);
    uint64_t id;
    ck_assert_int_eq(spk_submit(model, &r, 1, &id), SPK_ERR_BUSY);
    ck_assert_ptr_nonnull(strstr(spk_last_error(), "2 submitter(s) waiting first"));
    ck_assert_int_eq(spk_submit_wait(model, &r, 1, &id, 50), SPK_ERR_BUSY);
    ck_assert_int_eq(stats().n_submit_waiting, 2);
    ck_assert_int_eq(stats().n_queued, 1);
    /* More than the queue can ever hold: BUSY at once, not a wait forever. */
    spk_request three[3];
    uint64_t ids3[3];
    for (int i = 0; i < 3; i++)
        make_req(&three[i], 2);
    ck_assert_int_eq(spk_submit_wait(model, three, 3, ids3, -1), SPK_ERR_BUSY);

    /* Free the slot: the queue drains, A gets in first, then B. */
    ck_assert_int_eq(spk_cancel(model, blocker), SPK_OK);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    ck_assert_int_eq(a.st, SPK_OK);
    ck_assert_int_eq(b.st, SPK_OK);
    ck_assert_uint_lt(a.ids[1], b.ids[0]);
    ck_assert_uint_lt(a.ids[0], a.ids[1]);
    all[n_all++] = a.ids[0];
    all[n_all++] = a.ids[1];
    all[n_all++] = b.ids[0];
    drain(all, n_all);
    ck_assert_int_eq(stats().n_submit_waiting, 0);
}
END_TEST

enum { N_THREADS = 4, PER_THREAD = 6 };

typedef struct submitter {
    int busy;            /* BUSY results seen (retries a caller would have needed) */
    int failed;
    uint64_t ids[PER_THREAD];
} submitter;

static void *submitter_main(void *p)
{
    submitter *s = p;
    for (int i = 0; i < PER_THREAD; i++) {
        spk_request r;
        make_req(&r, 3);
        spk_status st = spk_submit_wait(model, &r, 1, &s->ids[i], 60000);
        if (st == SPK_ERR_BUSY)
            s->busy++;
        else if (st != SPK_OK)
            s->failed++;
    }
    return NULL;
}

START_TEST(concurrent_waiting_submitters_all_get_in_without_retries)
{
    submitter s[N_THREADS];
    pthread_t t[N_THREADS];
    memset(s, 0, sizeof s);
    for (int i = 0; i < N_THREADS; i++)
        pthread_create(&t[i], NULL, submitter_main, &s[i]);
    /* Poll while they submit (each waits for room the engine makes by finishing requests). */
    uint64_t all[N_THREADS * PER_THREAD];
    for (int i = 0; i < N_THREADS; i++)
        pthread_join(t[i], NULL);
    for (int i = 0; i < N_THREADS; i++) {
        ck_assert_int_eq(s[i].busy, 0);
        ck_assert_int_eq(s[i].failed, 0);
        for (int j = 0; j < PER_THREAD; j++)
            all[i * PER_THREAD + j] = s[i].ids[j];
    }
    drain(all, N_THREADS * PER_THREAD);
    printf("%d submitters x %d requests through a queue of 2: 0 BUSY, 0 retries\n", N_THREADS,
           PER_THREAD);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("submit");
    if (!spk_test_model_path()) {
        printf("SKIP: default model not found (SPK_TEST_MODEL)\n");
        return SPK_TEST_SKIP;
    }
    TCase *tm = tcase_create("fairness");
    tcase_add_checked_fixture(tm, setup, teardown);
    tcase_set_timeout(tm, 300);
    tcase_add_test(tm, waiters_are_served_in_arrival_order_and_plain_submit_does_not_overtake);
    tcase_add_test(tm, concurrent_waiting_submitters_all_get_in_without_retries);
    suite_add_tcase(s, tm);
    return spk_test_run(s);
}
