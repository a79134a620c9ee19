/*
 * The serving engine on one rank: many concurrent requests of mixed lengths all complete with
 * the right number of tokens and, greedy or seeded, each equals the same request run alone;
 * cancel frees the request's KV blocks at once; with fewer KV blocks than the requests need,
 * sequences are preempted and recomputed and the outputs do not change.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sparkinfer/sparkinfer.h"
#include "testutil.h"
#include "tools/synth.h"

enum { N_MAX = 64, MAX_GEN = 24, MAX_PROMPT = 40 };

/* 64 requests on the default model. SPK_TEST_SMALL (set for the TSan run, where a forward pass of
 * the real model is slow and the races under test are the engine's and the pool's, not the
 * model's) runs 12 requests with prompts of up to 16 tokens on the synthetic "tiny" llama
 * (tools/synth.c: 4 layers, width 256, vocab 1024) written to a temporary directory. */
static int N_REQ = N_MAX, max_prompt = MAX_PROMPT, n_vocab = 49152;
static const char *model_path;
/* bytes of one KV block: layers x (K, V) x 16 positions x KV heads x head dim x f16 */
static uint64_t per_block = 30ull * 2 * 16 * 3 * 64 * 2;

static spk_cluster *cl;
static int32_t prompts[N_MAX][MAX_PROMPT];
static int plen[N_MAX], glen[N_MAX];
static float temps[N_MAX];

static spk_model *load(int max_seqs, uint64_t kv_bytes)
{
    spk_model_config mc;
    spk_model_config_init(&mc);
    mc.path = model_path;
    mc.max_seqs = max_seqs;
    mc.n_ctx = 128;
    mc.kv_cache_bytes = kv_bytes;
    spk_model *m = NULL;
    ck_assert_msg(spk_model_load(cl, &mc, &m) == SPK_OK, "%s", spk_last_error());
    return m;
}

static void setup(void)
{
    spk_cluster_config cc;
    spk_cluster_config_init(&cc);
    cc.rank = 0;
    cc.world_size = 1;
    cc.n_threads = 2;
    ck_assert_int_eq(spk_cluster_open(&cc, &cl), SPK_OK);
    uint64_t s = 99;
    for (int i = 0; i < N_REQ; i++) {
        plen[i] = 1 + (int)(spk_test_rand(&s) % (uint64_t)max_prompt);
        glen[i] = 1 + (int)(spk_test_rand(&s) % MAX_GEN);
        temps[i] = i % 2 ? 0.0f : 0.9f; /* half greedy, half seeded sampling */
        for (int k = 0; k < plen[i]; k++)
            prompts[i][k] = 100 + (int)(spk_test_rand(&s) % (uint64_t)(n_vocab - 100));
    }
}

static void teardown(void) { spk_cluster_close(cl); }

/* Wait for at least one event. A step can take long in a sanitizer build on a slow CPU (TSan
 * on the scalar kernels: tens of seconds for a batch of prompts), so an empty poll is not a
 * failure by itself; a hang still is, after ten of them (and ctest's timeout above that). */
static void poll_some(spk_model *m, spk_event *ev, size_t cap, size_t *ne)
{
    for (int tries = 0; tries < 10; tries++) {
        ck_assert_int_eq(spk_poll(m, ev, cap, ne, 60000), SPK_OK);
        if (*ne > 0)
            return;
    }
    ck_abort_msg("no event from the engine in 10 minutes");
}

static void make_req(spk_request *r, int i)
{
    spk_request_init(r);
    r->prompt = prompts[i];
    r->n_prompt = (size_t)plen[i];
    r->max_tokens = glen[i];
    r->temperature = temps[i];
    r->seed = 1000 + (uint64_t)i;
    r->ignore_eos = 1;
}

/* Submit requests [first, first+n) at once and collect their tokens. */
static void run(spk_model *m, int first, int n, int32_t out[][MAX_GEN], int *n_out)
{
    spk_request r[N_MAX] = {{0}};
    uint64_t ids[N_MAX];
    for (int i = 0; i < n; i++)
        make_req(&r[i], first + i);
    ck_assert_int_eq(spk_submit(m, r, (size_t)n, ids), SPK_OK);
    for (int i = 0; i < n; i++)
        n_out[first + i] = 0;
    int done = 0;
    while (done < n) {
        spk_event ev[128];
        size_t ne;
        poll_some(m, ev, 128, &ne);
        for (size_t k = 0; k < ne; k++) {
            int i = first + (int)(ev[k].request_id - ids[0]);
            ck_assert(i >= first && i < first + n);
            ck_assert_int_ne(ev[k].finish, SPK_FINISH_ERROR);
            if (ev[k].token >= 0) {
                ck_assert_int_lt(n_out[i], MAX_GEN);
                ck_assert_int_eq(ev[k].position, plen[i] + n_out[i]);
                out[i][n_out[i]++] = ev[k].token;
            }
            if (ev[k].finish != SPK_FINISH_NONE) {
                ck_assert_int_eq(ev[k].finish, SPK_FINISH_LENGTH);
                done++;
            }
        }
    }
}

static int32_t alone[N_MAX][MAX_GEN];
static int n_alone[N_MAX];

/* Each request alone, once for the whole test case: an unchecked fixture runs in the parent
 * before the tests are forked, so every test compares against the same runs. */
static void run_alone(void)
{
    setup();
    spk_model *m = load(1, 0);
    for (int i = 0; i < N_REQ; i++)
        run(m, i, 1, alone, n_alone);
    spk_model_free(m);
    teardown();
}

START_TEST(concurrent_requests_equal_runs_alone)
{
    spk_model *m = load(N_REQ, 0);
    static int32_t got[N_MAX][MAX_GEN];
    int n_got[N_MAX];
    run(m, 0, N_REQ, got, n_got);
    for (int i = 0; i < N_REQ; i++) {
        ck_assert_int_eq(n_got[i], glen[i]);
        ck_assert_msg(memcmp(got[i], alone[i], sizeof(int32_t) * (size_t)glen[i]) == 0,
                      "request %d (temperature %.1f) differs when batched", i, temps[i]);
    }
    spk_model_stats st = {.struct_size = sizeof st};
    ck_assert_int_eq(spk_model_get_stats(m, &st), SPK_OK);
    ck_assert_int_eq(st.kv_blocks_free, st.kv_blocks_total); /* every block came back */
    ck_assert_int_eq(st.n_running, 0);
    spk_model_free(m);
}
END_TEST

START_TEST(kv_pressure_preempts_and_recomputes)
{
    /* 24 (8 for the small run) blocks of 16 positions for sequences of up to 64 tokens each:
     * far too few for all at once */
    const int blocks = N_REQ == N_MAX ? 24 : 8;
    spk_model *m = load(16, (uint64_t)blocks * per_block);
    static int32_t got[N_MAX][MAX_GEN];
    int n_got[N_MAX];
    run(m, 0, N_REQ, got, n_got);
    for (int i = 0; i < N_REQ; i++) {
        ck_assert_int_eq(n_got[i], glen[i]);
        ck_assert_msg(memcmp(got[i], alone[i], sizeof(int32_t) * (size_t)glen[i]) == 0,
                      "request %d differs after preemption", i);
    }
    spk_model_stats st = {.struct_size = sizeof st};
    ck_assert_int_eq(spk_model_get_stats(m, &st), SPK_OK);
    printf("KV pressure: %d blocks, %llu preemptions, %llu tokens\n", st.kv_blocks_total,
           (unsigned long long)st.n_preempted, (unsigned long long)st.n_generated);
    ck_assert_int_eq(st.kv_blocks_total, blocks);
    ck_assert_uint_gt(st.n_preempted, 0);
    ck_assert_int_eq(st.kv_blocks_free, blocks);
    spk_model_free(m);
}
END_TEST

START_TEST(cancel_frees_blocks_at_once)
{
    spk_model *m = load(4, 0);
    spk_model_stats st = {.struct_size = sizeof st};
    spk_request r;
    make_req(&r, 0);
    r.max_tokens = 100;
    uint64_t id;
    ck_assert_int_eq(spk_submit(m, &r, 1, &id), SPK_OK);
    int got = 0, fin = 0;
    while (!fin) {
        spk_event ev[16];
        size_t ne;
        poll_some(m, ev, 16, &ne);
        for (size_t k = 0; k < ne; k++) {
            if (ev[k].token >= 0 && ++got == 5) {
                ck_assert_int_eq(spk_model_get_stats(m, &st), SPK_OK);
                ck_assert_int_lt(st.kv_blocks_free, st.kv_blocks_total); /* it holds blocks */
                ck_assert_int_eq(spk_cancel(m, id), SPK_OK);
            }
            if (ev[k].finish != SPK_FINISH_NONE) {
                ck_assert_int_eq(ev[k].finish, SPK_FINISH_CANCELLED);
                fin = 1;
            }
        }
    }
    ck_assert_int_lt(got, 100);
    ck_assert_int_eq(spk_model_get_stats(m, &st), SPK_OK);
    ck_assert_int_eq(st.kv_blocks_free, st.kv_blocks_total);
    ck_assert_int_eq(st.n_running, 0);
    st.struct_size = 1;
    ck_assert_int_eq(spk_model_get_stats(m, &st), SPK_ERR_INVALID_ARG);
    spk_model_free(m);
}
END_TEST

START_TEST(kv_cache_smaller_than_one_sequence)
{
    /* 2 blocks = 32 positions: a 40-token prompt can never fit; a short one can, until it grows */
    spk_model *m = load(2, 2 * per_block);
    spk_request r;
    make_req(&r, 0);
    int32_t longp[40];
    for (int i = 0; i < 40; i++)
        longp[i] = 300 + i;
    r.prompt = longp;
    r.n_prompt = 40;
    uint64_t id;
    ck_assert_int_eq(spk_submit(m, &r, 1, &id), SPK_OK);
    spk_event ev[64];
    size_t ne;
    poll_some(m, ev, 64, &ne);
    ck_assert_uint_eq(ne, 1);
    ck_assert_int_eq(ev[0].finish, SPK_FINISH_ERROR);
    ck_assert_int_eq(ev[0].status, SPK_ERR_TOO_LONG);
    r.n_prompt = 20;
    r.max_tokens = 30; /* grows past 32 positions */
    ck_assert_int_eq(spk_submit(m, &r, 1, &id), SPK_OK);
    int got = 0;
    for (;;) {
        poll_some(m, ev, 64, &ne);
        size_t k;
        for (k = 0; k < ne && ev[k].finish == SPK_FINISH_NONE; k++)
            got++;
        if (k < ne) {
            ck_assert_int_eq(ev[k].finish, SPK_FINISH_ERROR);
            ck_assert_int_eq(ev[k].status, SPK_ERR_TOO_LONG);
            break;
        }
    }
    ck_assert_int_eq(got, 32 - 20 + 1); /* positions 20..31 filled the cache; the last token needs no KV */
    spk_model_free(m);
}
END_TEST

int main(void)
{
    char dir[] = "/tmp/spk-test-engine.XXXXXX", path[64] = "";
    model_path = spk_test_model_path();
    if (getenv("SPK_TEST_SMALL")) {
        N_REQ = 12;
        max_prompt = 16;
        spk_synth_params sp;
        if (spk_synth_preset("tiny", &sp) != SPK_OK || !mkdtemp(dir)) {
            fprintf(stderr, "test_engine: cannot make the synthetic model's directory\n");
            return 1;
        }
        snprintf(path, sizeof path, "%s/tiny.gguf", dir);
        if (spk_synth_write(path, &sp) != SPK_OK) {
            fprintf(stderr, "test_engine: %s\n", spk_last_error());
            return 1;
        }
        model_path = path;
        n_vocab = sp.n_vocab;
        per_block = (uint64_t)sp.n_layers * 2 * 16 * (uint64_t)sp.n_kv_heads * (uint64_t)sp.head_dim * 2;
    }
    if (!model_path)
        spk_test_skip("default model not found (run scripts/fetch-model.sh or set SPK_TEST_MODEL)");
    Suite *s = suite_create("engine");
    TCase *tc = tcase_create("engine");
    tcase_add_unchecked_fixture(tc, run_alone, NULL);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 900);
    tcase_add_test(tc, concurrent_requests_equal_runs_alone);
    tcase_add_test(tc, kv_pressure_preempts_and_recomputes);
    tcase_add_test(tc, cancel_frees_blocks_at_once);
    tcase_add_test(tc, kv_cache_smaller_than_one_sequence);
    suite_add_tcase(s, tc);
    const int rc = spk_test_run(s);
    if (path[0]) {
        unlink(path);
        rmdir(dir);
    }
    return rc;
}
