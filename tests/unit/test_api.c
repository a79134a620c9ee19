/* The public API: versions, status strings, config init, and every function given NULL, wrong
 * sizes or out-of-range values returns an error code (never crashes). With the default model:
 * load, info, tokenize round trip, submit/poll/cancel behaviour and per-request errors. */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "sparkinfer/sparkinfer.h"
#include "testutil.h"

START_TEST(versions_and_status_strings)
{
    ck_assert_uint_eq(spk_version_number(), SPK_VERSION_NUMBER);
    ck_assert_str_eq(spk_version_string(), SPK_VERSION_STRING);
    ck_assert_ptr_nonnull(strstr(spk_build_info(), "backends=cpu;"));
    ck_assert_ptr_null(strstr(spk_build_info(), "cuda")); /* no CUDA backend exists yet */
    ck_assert_ptr_nonnull(strstr(spk_build_info(), "transports=tcp"));
    for (int i = 0; i < SPK_STATUS_COUNT; i++)
        ck_assert_str_ne(spk_status_str((spk_status)i), "unknown status");
    ck_assert_str_eq(spk_status_str(SPK_STATUS_COUNT), "unknown status");
    ck_assert_str_eq(spk_status_str((spk_status)-5), "unknown status");
    ck_assert_str_eq(spk_status_str(SPK_ERR_PEER_LOST), "peer lost");
}
END_TEST

START_TEST(null_arguments_are_errors)
{
    ck_assert_int_eq(spk_cluster_config_init(NULL), SPK_ERR_INVALID_ARG);
    ck_assert_int_eq(spk_model_config_init(NULL), SPK_ERR_INVALID_ARG);
    ck_assert_int_eq(spk_request_init(NULL), SPK_ERR_INVALID_ARG);
    spk_cluster *c = (spk_cluster *)1;
    ck_assert_int_eq(spk_cluster_open(NULL, &c), SPK_ERR_INVALID_ARG);
    ck_assert_ptr_null(c);
    ck_assert_int_eq(spk_cluster_serve(NULL), SPK_ERR_INVALID_ARG);
    ck_assert_int_eq(spk_cluster_rank(NULL), -1);
    ck_assert_int_eq(spk_cluster_world_size(NULL), -1);
    ck_assert_int_eq(spk_cluster_close(NULL), SPK_OK);
    spk_model *m = (spk_model *)1;
    ck_assert_int_eq(spk_model_load(NULL, NULL, &m), SPK_ERR_INVALID_ARG);
    ck_assert_ptr_null(m);
    ck_assert_int_eq(spk_model_free(NULL), SPK_OK);
    spk_model_info info = {.struct_size = sizeof info};
    ck_assert_int_eq(spk_model_get_info(NULL, &info), SPK_ERR_INVALID_ARG);
    size_t n;
    int32_t t[4];
    ck_assert_int_eq(spk_tokenize(NULL, "a", 1, 0, 0, t, 4, &n), SPK_ERR_INVALID_ARG);
    ck_assert_int_eq(spk_detokenize(NULL, t, 1, 0, NULL, 0, &n), SPK_ERR_INVALID_ARG);
    spk_detokenizer *d = (spk_detokenizer *)1;
    ck_assert_int_eq(spk_detokenizer_new(NULL, 0, &d), SPK_ERR_INVALID_ARG);
    ck_assert_ptr_null(d);
    ck_assert_int_eq(spk_detokenizer_push(NULL, 1, NULL, 0, &n), SPK_ERR_INVALID_ARG);
    spk_detokenizer_free(NULL);
    ck_assert_int_eq(spk_chat_apply(NULL, NULL, 0, 1, NULL, 0, &n), SPK_ERR_INVALID_ARG);
    spk_request r;
    uint64_t id;
    spk_request_init(&r);
    ck_assert_int_eq(spk_submit(NULL, &r, 1, &id), SPK_ERR_INVALID_ARG);
    spk_event ev[1];
    ck_assert_int_eq(spk_poll(NULL, ev, 1, &n, 0), SPK_ERR_INVALID_ARG);
    ck_assert_int_eq(spk_cancel(NULL, 1), SPK_ERR_INVALID_ARG);
    ck_assert_str_ne(spk_last_error(), "");
}
END_TEST

static void *fail_on_other_thread(void *arg)
{
    (void)arg;
    spk_request_init(NULL); /* fails: sets this thread's message only */
    return strstr(spk_last_error(), "spk_request_init") ? (void *)1 : NULL;
}

START_TEST(last_error_semantics)
{
    spk_model_config mc;
    /* a failing call sets the message, naming the function and the thing */
    ck_assert_int_eq(spk_model_config_init(NULL), SPK_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(spk_last_error(), "spk_model_config_init: cfg is NULL"));
    const char *p = spk_last_error();
    /* successful calls leave it as it was */
    ck_assert_int_eq(spk_model_config_init(&mc), SPK_OK);
    ck_assert_uint_ne(spk_version_number(), 0);
    ck_assert_ptr_nonnull(strstr(spk_last_error(), "spk_model_config_init: cfg is NULL"));
    ck_assert_ptr_eq(spk_last_error(), p); /* the same per-thread storage */
    /* another thread's failure does not touch this thread's message */
    pthread_t th;
    void *ok = NULL;
    ck_assert_int_eq(pthread_create(&th, NULL, fail_on_other_thread, NULL), 0);
    pthread_join(th, &ok);
    ck_assert_ptr_nonnull(ok);
    ck_assert_ptr_nonnull(strstr(spk_last_error(), "spk_model_config_init: cfg is NULL"));
    /* the next failure replaces it */
    spk_cluster *c = NULL;
    mc.struct_size = 3;
    spk_cluster_config cc;
    spk_cluster_config_init(&cc);
    cc.n_threads = -2;
    ck_assert_int_eq(spk_cluster_open(&cc, &c), SPK_ERR_INVALID_ARG);
    ck_assert_ptr_null(strstr(spk_last_error(), "spk_model_config_init"));
    ck_assert_str_ne(spk_last_error(), "");
}
END_TEST

START_TEST(init_functions_of_filled_structs)
{
    spk_model_info mi;
    spk_rank_stats rs;
    spk_model_stats ms;
    memset(&mi, 0x5a, sizeof mi);
    memset(&rs, 0x5a, sizeof rs);
    memset(&ms, 0x5a, sizeof ms);
    ck_assert_int_eq(spk_model_info_init(&mi), SPK_OK);
    ck_assert_int_eq(spk_rank_stats_init(&rs), SPK_OK);
    ck_assert_int_eq(spk_model_stats_init(&ms), SPK_OK);
    ck_assert_uint_eq(mi.struct_size, sizeof mi);
    ck_assert_uint_eq(rs.struct_size, sizeof rs);
    ck_assert_uint_eq(ms.struct_size, sizeof ms);
    ck_assert_int_eq(mi.n_vocab, 0);
    ck_assert_uint_eq(rs.owned_bytes, 0);
    ck_assert_int_eq(ms.n_submit_waiting, 0);
    ck_assert_int_eq(spk_model_info_init(NULL), SPK_ERR_INVALID_ARG);
    ck_assert_int_eq(spk_rank_stats_init(NULL), SPK_ERR_INVALID_ARG);
    ck_assert_int_eq(spk_model_stats_init(NULL), SPK_ERR_INVALID_ARG);
}
END_TEST

START_TEST(cluster_config_sizes_and_ranges)
{
    spk_cluster_config cc;
    spk_cluster *c = NULL;
    spk_cluster_config_init(&cc);
    ck_assert_uint_eq(cc.struct_size, sizeof cc);
    cc.struct_size = 3;
    ck_assert_int_eq(spk_cluster_open(&cc, &c), SPK_ERR_INVALID_ARG);
    spk_cluster_config_init(&cc);
    cc.n_threads = -2;
    ck_assert_int_eq(spk_cluster_open(&cc, &c), SPK_ERR_INVALID_ARG);
    ck_assert_ptr_null(c);
    spk_cluster_config_init(&cc);
    cc.world_size = 1;
    cc.rank = 0;
    ck_assert_int_eq(spk_cluster_open(&cc, &c), SPK_OK);
    ck_assert_int_eq(spk_cluster_rank(c), 0);
    ck_assert_int_eq(spk_cluster_world_size(c), 1);
    ck_assert_int_eq(spk_cluster_serve(c), SPK_ERR_STATE); /* rank 0 drives, it does not serve */
    spk_model_config mc;
    spk_model *m = NULL;
    ck_assert_int_eq(spk_model_load(c, NULL, &m), SPK_ERR_INVALID_ARG);
    spk_model_config_init(&mc);
    ck_assert_int_eq(spk_model_load(c, &mc, &m), SPK_ERR_INVALID_ARG); /* no path */
    mc.path = "/nonexistent/model.gguf";
    ck_assert_int_eq(spk_model_load(c, &mc, &m), SPK_ERR_IO);
    ck_assert_ptr_nonnull(strstr(spk_last_error(), "/nonexistent/model.gguf"));
    mc.path = "/proc/self/status"; /* not a GGUF file */
    spk_status st = spk_model_load(c, &mc, &m);
    ck_assert(st == SPK_ERR_FORMAT || st == SPK_ERR_IO);
    mc.struct_size = 1;
    ck_assert_int_eq(spk_model_load(c, &mc, &m), SPK_ERR_INVALID_ARG);
    spk_model_config_init(&mc);
    mc.path = "x.gguf";
    mc.n_threads = -1;
    ck_assert_int_eq(spk_model_load(c, &mc, &m), SPK_ERR_INVALID_ARG);
    ck_assert_ptr_null(m);
    ck_assert_int_eq(spk_cluster_close(c), SPK_OK);
}
END_TEST

/* ---- with the default model ---- */

static spk_cluster *cl;
static spk_model *model;

static void model_setup(void) { model = spk_test_open_model(&cl, 4, 256, 8); }

static void model_teardown(void)
{
    spk_model_free(model);
    spk_cluster_close(cl);
}

START_TEST(model_info_and_bad_layouts)
{
    spk_model_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    ck_assert_int_eq(spk_model_get_info(model, &info), SPK_OK);
    ck_assert_str_eq(info.arch, "llama");
    ck_assert_int_eq(info.n_layers, 30);
    ck_assert_int_eq(info.n_embd, 576);
    ck_assert_int_eq(info.n_heads, 9);
    ck_assert_int_eq(info.n_kv_heads, 3);
    ck_assert_int_eq(info.n_vocab, 49152);
    ck_assert_int_eq(info.n_ctx, 256);
    ck_assert_int_eq(info.eos_token, 2);
    ck_assert_uint_gt(info.n_params, 100000000u);
    info.struct_size = 2;
    ck_assert_int_eq(spk_model_get_info(model, &info), SPK_ERR_INVALID_ARG);
    spk_model_config mc;
    spk_model_config_init(&mc);
    mc.path = spk_test_model_path();
    mc.pp = 2; /* a 1-rank cluster cannot hold two stages */
    spk_model *m2 = NULL;
    ck_assert_int_eq(spk_model_load(cl, &mc, &m2), SPK_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(spk_last_error(), "pp 2"));
    ck_assert_ptr_null(m2);
}
END_TEST

START_TEST(tokenize_capacity_and_round_trip)
{
    const char *text = "Hello, world! 12345 café 🚀";
    size_t n = 0, m = 0;
    ck_assert_int_eq(spk_tokenize(model, text, strlen(text), 0, 0, NULL, 0, &n), SPK_ERR_TOO_LONG);
    ck_assert_uint_gt(n, 5);
    int32_t ids[64];
    ck_assert_int_eq(spk_tokenize(model, text, strlen(text), 0, 0, ids, 64, &m), SPK_OK);
    ck_assert_uint_eq(m, n);
    char buf[128];
    size_t bl;
    ck_assert_int_eq(spk_detokenize(model, ids, m, 0, buf, 3, &bl), SPK_ERR_TOO_LONG);
    ck_assert_int_eq(spk_detokenize(model, ids, m, 0, buf, sizeof buf, &bl), SPK_OK);
    ck_assert_uint_eq(bl, strlen(text));
    ck_assert(memcmp(buf, text, bl) == 0);
    int32_t bad = 49152;
    ck_assert_int_ne(spk_detokenize(model, &bad, 1, 0, buf, sizeof buf, &bl), SPK_OK);
}
END_TEST

/* Collect events of one request until it finishes; returns the finish event. */
static spk_event wait_finish(uint64_t id, int32_t *toks, int *n_tok)
{
    *n_tok = 0;
    uint64_t last_ns = 0, last_tok_ns = 0;
    for (;;) {
        spk_event ev[32];
        size_t n;
        ck_assert_int_eq(spk_poll(model, ev, 32, &n, 30000), SPK_OK);
        ck_assert_uint_gt(n, 0);
        for (size_t i = 0; i < n; i++) {
            ck_assert(ev[i].request_id == id);
            /* the engine stamps each event; a request's events come in time order */
            ck_assert_uint_gt(ev[i].time_ns, 0);
            ck_assert_uint_ge(ev[i].time_ns, last_ns);
            /* each token of a request comes from its own step: a later stamp, strictly */
            if (ev[i].token >= 0)
                ck_assert_uint_gt(ev[i].time_ns, last_tok_ns);
            last_ns = ev[i].time_ns;
            if (ev[i].token >= 0)
                last_tok_ns = ev[i].time_ns;
            ck_assert(ev[i].reserved[0] == 0 && ev[i].reserved[1] == 0);
            if (ev[i].token >= 0)
                toks[(*n_tok)++] = ev[i].token;
            if (ev[i].finish != SPK_FINISH_NONE)
                return ev[i];
        }
    }
}

START_TEST(submit_poll_generates_and_bad_requests_fail)
{
    int32_t prompt[8];
    size_t np;
    ck_assert_int_eq(spk_tokenize(model, "The capital of France is", 24, 0, 0, prompt, 8, &np), SPK_OK);
    spk_request r;
    spk_request_init(&r);
    r.prompt = prompt;
    r.n_prompt = np;
    r.max_tokens = 6;
    r.temperature = 0;
    uint64_t id, id2;
    ck_assert_int_eq(spk_submit(model, &r, 1, &id), SPK_OK);
    int32_t toks[64];
    int nt;
    spk_event fin = wait_finish(id, toks, &nt);
    ck_assert_int_eq(fin.finish, SPK_FINISH_LENGTH);
    ck_assert_int_eq(nt, 6);
    ck_assert_int_eq(fin.position, (int)np + 5);
    /* the same greedy request again gives the same tokens */
    int32_t toks2[64];
    ck_assert_int_eq(spk_submit(model, &r, 1, &id2), SPK_OK);
    ck_assert(id2 != id);
    wait_finish(id2, toks2, &nt);
    ck_assert(memcmp(toks, toks2, sizeof(int32_t) * 6) == 0);
    char text[256];
    size_t tl;
    ck_assert_int_eq(spk_detokenize(model, toks, 6, 1, text, sizeof text, &tl), SPK_OK);
    text[tl] = 0;
    ck_assert_msg(strstr(text, "Paris") != NULL, "greedy continuation was '%s'", text);

    /* malformed requests are rejected at submit, all or nothing */
    spk_request bad[2];
    spk_request_init(&bad[0]);
    spk_request_init(&bad[1]);
    bad[0] = r;
    bad[1] = r;
    bad[1].max_tokens = 0;
    uint64_t ids[2];
    ck_assert_int_eq(spk_submit(model, bad, 2, ids), SPK_ERR_INVALID_ARG);
    bad[1] = r;
    bad[1].top_p = 0;
    ck_assert_int_eq(spk_submit(model, bad, 2, ids), SPK_ERR_INVALID_ARG);
    bad[1] = r;
    bad[1].temperature = -1;
    ck_assert_int_eq(spk_submit(model, bad, 2, ids), SPK_ERR_INVALID_ARG);
    int32_t oov = 49152;
    bad[1] = r;
    bad[1].prompt = &oov;
    bad[1].n_prompt = 1;
    ck_assert_int_eq(spk_submit(model, bad, 2, ids), SPK_ERR_INVALID_ARG);
    bad[1] = r;
    bad[1].n_prompt = 0;
    ck_assert_int_eq(spk_submit(model, bad, 2, ids), SPK_ERR_INVALID_ARG);
    bad[1] = r;
    bad[1].struct_size = 7;
    ck_assert_int_eq(spk_submit(model, bad, 2, ids), SPK_ERR_INVALID_ARG);
    spk_event ev[4];
    size_t n;
    ck_assert_int_eq(spk_poll(model, ev, 4, &n, 50), SPK_OK);
    ck_assert_uint_eq(n, 0); /* nothing was queued */
    ck_assert_int_eq(spk_poll(model, ev, 0, &n, 0), SPK_ERR_INVALID_ARG);
    ck_assert_int_eq(spk_poll(model, ev, 4, &n, -7), SPK_ERR_INVALID_ARG);

    /* a prompt longer than the context is that request's error, not the engine's */
    static int32_t longp[300];
    for (int i = 0; i < 300; i++)
        longp[i] = 100 + i;
    bad[0] = r;
    bad[0].prompt = longp;
    bad[0].n_prompt = 300;
    ck_assert_int_eq(spk_submit(model, bad, 1, ids), SPK_OK);
    fin = wait_finish(ids[0], toks, &nt);
    ck_assert_int_eq(fin.finish, SPK_FINISH_ERROR);
    ck_assert_int_eq(fin.status, SPK_ERR_TOO_LONG);
    ck_assert_int_eq(spk_submit(model, &r, 1, &id), SPK_OK); /* still serving */
    fin = wait_finish(id, toks2, &nt);
    ck_assert_int_eq(fin.finish, SPK_FINISH_LENGTH);
}
END_TEST

START_TEST(cancel_and_queue_full)
{
    int32_t prompt[4] = {504, 3458, 314, 260};
    spk_request r;
    spk_request_init(&r);
    r.prompt = prompt;
    r.n_prompt = 4;
    r.max_tokens = 200;
    r.ignore_eos = 1;
    uint64_t id;
    ck_assert_int_eq(spk_submit(model, &r, 1, &id), SPK_OK);
    ck_assert_int_eq(spk_cancel(model, id), SPK_OK);
    int32_t toks[256];
    int nt;
    spk_event fin = wait_finish(id, toks, &nt);
    ck_assert_int_eq(fin.finish, SPK_FINISH_CANCELLED);
    ck_assert_int_lt(nt, 200);
    ck_assert_int_eq(spk_cancel(model, id), SPK_ERR_NOT_FOUND);
    ck_assert_int_eq(spk_cancel(model, 999999), SPK_ERR_NOT_FOUND);
    /* queue capacity is 8: 9 at once is refused whole */
    spk_request many[9];
    uint64_t ids[9];
    for (int i = 0; i < 9; i++) {
        many[i] = r;
        many[i].max_tokens = 2;
    }
    ck_assert_int_eq(spk_submit(model, many, 9, ids), SPK_ERR_BUSY);
    ck_assert_int_eq(spk_submit(model, many, 8, ids), SPK_OK);
    int done = 0;
    while (done < 8) {
        spk_event ev[32];
        size_t n;
        ck_assert_int_eq(spk_poll(model, ev, 32, &n, 30000), SPK_OK);
        ck_assert_uint_gt(n, 0);
        for (size_t i = 0; i < n; i++)
            done += ev[i].finish == SPK_FINISH_LENGTH;
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("api");
    TCase *tc = tcase_create("no_model");
    tcase_add_test(tc, versions_and_status_strings);
    tcase_add_test(tc, null_arguments_are_errors);
    tcase_add_test(tc, cluster_config_sizes_and_ranges);
    tcase_add_test(tc, last_error_semantics);
    tcase_add_test(tc, init_functions_of_filled_structs);
    suite_add_tcase(s, tc);
    if (spk_test_model_path()) {
        TCase *tm = tcase_create("model");
        tcase_add_checked_fixture(tm, model_setup, model_teardown);
        tcase_set_timeout(tm, 300);
        tcase_add_test(tm, model_info_and_bad_layouts);
        tcase_add_test(tm, tokenize_capacity_and_round_trip);
        tcase_add_test(tm, submit_poll_generates_and_bad_requests_fail);
        tcase_add_test(tm, cancel_and_queue_full);
        suite_add_tcase(s, tm);
    } else {
        printf("SKIP (model cases): default model not found\n");
    }
    return spk_test_run(s);
}
