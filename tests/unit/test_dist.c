/*
 * The model split over real processes (spk-worker ranks on loopback, TCP transport): greedy
 * generations of several prompts, submitted together, equal one rank's for every layout
 * (PP token for token; TP up to the first near-tie of one rank's logits, see test_shard for
 * why TP cannot be bit-exact); each rank holds only its share; killing a rank mid-generation
 * ends the requests with an error event within the peer timeout and leaves no process behind.
 */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

#include "../../examples/launch.h"
#include "engine/exec.h"
#include "model/gguf.h"
#include "model/llama.h"
#include "tools/synth.h"
#include "testutil.h"

#define WORKER SPK_TEST_BIN_DIR "/examples/spk-worker"
enum { N_PROMPTS = 3, GEN = 64, MAX_PROMPT = 32 };

static const char *prompts[N_PROMPTS] = {
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "Once upon a time, in a small village,",
};
static int32_t ptok[N_PROMPTS][MAX_PROMPT];
static size_t plen[N_PROMPTS];
static int32_t ref[N_PROMPTS][GEN];
static int ref_clear[N_PROMPTS];       /* generated tokens before one rank's first near-tie */
static spk_rank_stats ref_stats;
static int ref_n_embd;
static const char *model_path;         /* the default model, or a synthetic one */

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static spk_model *load(spk_cluster *cl, int pp, int tp)
{
    spk_model_config mc;
    spk_model_config_init(&mc);
    mc.path = model_path;
    mc.pp = pp;
    mc.tp = tp;
    mc.n_ctx = 128;
    mc.max_seqs = N_PROMPTS;
    spk_model *m = NULL;
    ck_assert_msg(spk_model_load(cl, &mc, &m) == SPK_OK, "load pp %d tp %d: %s", pp, tp, spk_last_error());
    return m;
}

/* Submit every prompt at once; collect GEN greedy tokens each. */
static void generate(spk_model *m, int32_t out[N_PROMPTS][GEN])
{
    spk_request r[N_PROMPTS];
    uint64_t ids[N_PROMPTS];
    for (int i = 0; i < N_PROMPTS; i++) {
        spk_request_init(&r[i]);
        r[i].prompt = ptok[i];
        r[i].n_prompt = plen[i];
        r[i].max_tokens = GEN;
        r[i].temperature = 0;
        r[i].ignore_eos = 1;
    }
    ck_assert_int_eq(spk_submit(m, r, N_PROMPTS, ids), SPK_OK);
    int n[N_PROMPTS] = {0}, done = 0;
    while (done < N_PROMPTS) {
        spk_event ev[64];
        size_t ne;
        ck_assert_int_eq(spk_poll(m, ev, 64, &ne, 60000), SPK_OK);
        ck_assert_uint_gt(ne, 0);
        for (size_t k = 0; k < ne; k++) {
            int i = (int)(ev[k].request_id - ids[0]);
            ck_assert(i >= 0 && i < N_PROMPTS);
            ck_assert_int_ne(ev[k].finish, SPK_FINISH_ERROR);
            if (ev[k].token >= 0)
                out[i][n[i]++] = ev[k].token;
            done += ev[k].finish != SPK_FINISH_NONE;
        }
    }
    for (int i = 0; i < N_PROMPTS; i++)
        ck_assert_int_eq(n[i], GEN);
}

/* One rank's logits along its own greedy path: where is the first near-tie (top-2 < 0.5)? */
static void find_near_ties(void)
{
    spk_gguf_file *f;
    spk_hparams hp;
    spk_weights w;
    spk_llama *m;
    ck_assert_int_eq(spk_gguf_open(model_path, &f), SPK_OK);
    ck_assert_int_eq(spk_llama_load(f, &hp, &w), SPK_OK);
    ref_n_embd = hp.n_embd;
    ck_assert_int_eq(spk_llama_create(&hp, &w, NULL, 128, 1, MAX_PROMPT + GEN, 2, &m), SPK_OK);
    float *lg = malloc(sizeof(float) * (MAX_PROMPT + GEN) * (size_t)hp.n_vocab);
    for (int i = 0; i < N_PROMPTS; i++) {
        int32_t tok[MAX_PROMPT + GEN], pos[MAX_PROMPT + GEN], seq[MAX_PROMPT + GEN];
        uint8_t want[MAX_PROMPT + GEN];
        int n = 0;
        for (size_t k = 0; k < plen[i]; k++)
            tok[n++] = ptok[i][k];
        for (int k = 0; k < GEN - 1; k++)
            tok[n++] = ref[i][k];
        for (int k = 0; k < n; k++) {
            pos[k] = k;
            seq[k] = 0;
            want[k] = k >= (int)plen[i] - 1;
        }
        spk_batch b = {.n_tok = n, .token = tok, .pos = pos, .seq = seq, .want_logits = want};
        ck_assert_int_eq(spk_llama_forward(m, &b, NULL, lg), SPK_OK);
        ref_clear[i] = GEN;
        for (int g = 0; g < GEN; g++) {
            const float *x = lg + (size_t)g * (size_t)hp.n_vocab;
            float a = -INFINITY, b2 = -INFINITY;
            for (int v = 0; v < hp.n_vocab; v++) {
                if (x[v] > a) {
                    b2 = a;
                    a = x[v];
                } else if (x[v] > b2) {
                    b2 = x[v];
                }
            }
            if (a - b2 < 0.5f) {
                ref_clear[i] = g;
                break;
            }
        }
    }
    free(lg);
    spk_llama_free(m);
    spk_llama_weights_free(&w);
    spk_gguf_close(f);
}

/* One rank's greedy outputs (and near-ties) for model_path. */
static void make_reference(void)
{
    spk_cluster_config cc;
    spk_cluster_config_init(&cc);
    cc.rank = 0;
    cc.world_size = 1;
    cc.n_threads = 1;
    spk_cluster *cl;
    ck_assert_int_eq(spk_cluster_open(&cc, &cl), SPK_OK);
    spk_model *m = load(cl, 1, 1);
    for (int i = 0; i < N_PROMPTS; i++)
        ck_assert_int_eq(spk_tokenize(m, prompts[i], strlen(prompts[i]), 1, 0, ptok[i], MAX_PROMPT, &plen[i]),
                         SPK_OK);
    generate(m, ref);
    ref_stats.struct_size = sizeof ref_stats;
    ck_assert_int_eq(spk_model_get_rank_stats(m, 0, &ref_stats), SPK_OK);
    spk_model_free(m);
    spk_cluster_close(cl);
    find_near_ties();
    printf("%s, one rank: weights %.1f MiB, resident %.1f MiB; clear greedy prefix %d/%d/%d of %d\n",
           model_path, ref_stats.weight_bytes / 1048576.0, ref_stats.resident_bytes / 1048576.0, ref_clear[0],
           ref_clear[1], ref_clear[2], GEN);
}

static void setup(void)
{
    model_path = spk_test_model_path();
    make_reference();
}

static void check_layout(int pp, int tp)
{
    double t0 = now();
    spk_cluster *cl = ex_launch_with(WORKER, pp * tp, 1, "tcp", 0);
    ck_assert_ptr_nonnull(cl);
    spk_model *m = load(cl, pp, tp);
    int32_t out[N_PROMPTS][GEN];
    generate(m, out);
    for (int i = 0; i < N_PROMPTS; i++) {
        int same = 0;
        while (same < GEN && out[i][same] == ref[i][same])
            same++;
        printf("pp %d x tp %d, prompt %d: %d/%d tokens equal to one rank\n", pp, tp, i, same, GEN);
        if (tp == 1)
            ck_assert_int_eq(same, GEN);
        else
            ck_assert_int_ge(same, ref_clear[i]);
    }
    /* Each rank holds its share: asserted on what the library maps and allocates (weights, KV,
     * step buffers), never on RSS, which counts whatever file pages the page cache lends. */
    uint64_t kv_sum = 0, w_sum = 0;
    for (int r = 0; r < pp * tp; r++) {
        spk_rank_stats st = {.struct_size = sizeof st};
        ck_assert_int_eq(spk_model_get_rank_stats(m, r, &st), SPK_OK);
        ck_assert_int_eq(st.rank, r);
        printf("  rank %d (stage %d, tp %d, layers %d-%d): weights %.1f MiB, KV %.1f MiB, owned %.1f MiB "
               "(1/%d of one rank's: %.1f MiB), resident %.1f MiB\n", r, st.stage, st.tp_rank, st.layer_begin,
               st.layer_end - 1, st.weight_bytes / 1048576.0, st.kv_cache_bytes / 1048576.0,
               st.owned_bytes / 1048576.0, pp * tp, ref_stats.owned_bytes / (1048576.0 * pp * tp),
               st.resident_bytes / 1048576.0);
        ck_assert_uint_lt(st.weight_bytes, ref_stats.weight_bytes * 9 / 10);
        ck_assert_uint_lt(st.owned_bytes, ref_stats.owned_bytes * 9 / 10);
        ck_assert_uint_ge(st.owned_bytes, st.weight_bytes + st.kv_cache_bytes);
        kv_sum += st.kv_cache_bytes;
        w_sum += st.weight_bytes;
    }
    /* the KV cache is split by layers (PP) and KV heads (TP), nothing held twice */
    ck_assert_uint_eq(kv_sum, ref_stats.kv_cache_bytes);
    /* a TP group holds one model between its ranks, embedding table included (vocabulary-parallel
     * rows); only the small norm vectors are on every rank */
    if (pp == 1)
        ck_assert_uint_eq(w_sum, ref_stats.weight_bytes + (uint64_t)(tp - 1) * (2 * (uint64_t)ref_stats.layer_end + 1) *
                                                          (uint64_t)ref_n_embd * sizeof(float));
    spk_rank_stats bad = {.struct_size = sizeof bad};
    ck_assert_int_eq(spk_model_get_rank_stats(m, pp * tp, &bad), SPK_ERR_INVALID_ARG);
    spk_model_free(m);
    spk_cluster_close(cl);
    ex_reap_workers(5000);
    printf("pp %d x tp %d: %.1f s\n", pp, tp, now() - t0);
}

START_TEST(pp2) { check_layout(2, 1); }
END_TEST
START_TEST(pp3) { check_layout(3, 1); }
END_TEST
START_TEST(tp2) { check_layout(1, 2); }
END_TEST
START_TEST(tp3) { check_layout(1, 3); }
END_TEST
START_TEST(pp2_tp2) { check_layout(2, 2); }
END_TEST

/* A synthetic model whose 8 query / 4 KV heads divide by 4: TP4 and PP2 x TP2 x ... */
START_TEST(tp4_synthetic)
{
    static char path[] = "/tmp/spk-test-synth-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    close(fd);
    spk_synth_params sp;
    ck_assert_int_eq(spk_synth_preset("tiny-tp4", &sp), SPK_OK);
    sp.seed = 7;
    ck_assert_msg(spk_synth_write(path, &sp) == SPK_OK, "%s", spk_last_error());
    model_path = path;
    make_reference();
    check_layout(1, 4);
    check_layout(4, 1);
    check_layout(2, 2);
    unlink(path);
    model_path = spk_test_model_path();
    make_reference();
}
END_TEST

/* Sampling across vocabulary shards: with top-k off every id of each shard is a candidate, with
 * top-k each shard offers its best k; either way the same seed gives the same tokens. */
START_TEST(tp2_seeded_sampling_is_reproducible)
{
    spk_cluster *cl = ex_launch_with(WORKER, 2, 1, "tcp", 0);
    ck_assert_ptr_nonnull(cl);
    spk_model *m = load(cl, 1, 2);
    int32_t out[2][2][24];
    for (int round = 0; round < 2; round++) {
        spk_request r[2];
        uint64_t ids[2];
        for (int i = 0; i < 2; i++) {
            spk_request_init(&r[i]);
            r[i].prompt = ptok[i];
            r[i].n_prompt = plen[i];
            r[i].max_tokens = 24;
            r[i].temperature = 0.9f;
            r[i].top_k = i == 0 ? 0 : 20;
            r[i].top_p = i == 0 ? 1.0f : 0.9f;
            r[i].seed = 77 + (uint64_t)i;
            r[i].ignore_eos = 1;
        }
        ck_assert_int_eq(spk_submit(m, r, 2, ids), SPK_OK);
        int n[2] = {0, 0}, done = 0;
        while (done < 2) {
            spk_event ev[64];
            size_t ne;
            ck_assert_int_eq(spk_poll(m, ev, 64, &ne, 60000), SPK_OK);
            for (size_t k = 0; k < ne; k++) {
                int i = (int)(ev[k].request_id - ids[0]);
                ck_assert_int_ne(ev[k].finish, SPK_FINISH_ERROR);
                if (ev[k].token >= 0) {
                    ck_assert(ev[k].token < 49152);
                    out[round][i][n[i]++] = ev[k].token;
                }
                done += ev[k].finish != SPK_FINISH_NONE;
            }
        }
    }
    ck_assert(memcmp(out[0], out[1], sizeof out[0]) == 0);
    spk_model_free(m);
    spk_cluster_close(cl);
    ex_reap_workers(5000);
}
END_TEST

/* A worker that finds another file under the model's path refuses the load with a clear error
 * (the driver's LOAD carries its file's identity), instead of serving with mixed weights. The
 * worker is started in another directory and the path is relative, so one name means two files. */
START_TEST(different_file_is_refused)
{
    char dir_a[] = "/tmp/spk-test-a-XXXXXX", dir_b[] = "/tmp/spk-test-b-XXXXXX", cwd[4096];
    ck_assert_ptr_nonnull(mkdtemp(dir_a));
    ck_assert_ptr_nonnull(mkdtemp(dir_b));
    ck_assert_ptr_nonnull(getcwd(cwd, sizeof cwd));
    spk_synth_params sp;
    ck_assert_int_eq(spk_synth_preset("tiny-tp4", &sp), SPK_OK);
    char pa[128], pb[128];
    snprintf(pa, sizeof pa, "%s/m.gguf", dir_a);
    snprintf(pb, sizeof pb, "%s/m.gguf", dir_b);
    sp.seed = 1;
    ck_assert_int_eq(spk_synth_write(pa, &sp), SPK_OK);
    sp.seed = 2; /* same shape, other weights */
    ck_assert_int_eq(spk_synth_write(pb, &sp), SPK_OK);
    ck_assert_int_eq(chdir(dir_b), 0);
    spk_cluster *cl = ex_launch_with(WORKER, 2, 1, "tcp", 0);
    ck_assert_ptr_nonnull(cl);
    ck_assert_int_eq(chdir(dir_a), 0);
    spk_model_config mc;
    spk_model_config_init(&mc);
    mc.path = "m.gguf";
    mc.pp = 2;
    mc.n_ctx = 64;
    spk_model *m = NULL;
    spk_status st = spk_model_load(cl, &mc, &m);
    printf("different file on rank 1: %s: %s\n", spk_status_str(st), spk_last_error());
    ck_assert_int_ne(st, SPK_OK);
    ck_assert_ptr_null(m);
    ck_assert_ptr_nonnull(strstr(spk_last_error(), "not the driver's"));
    /* the same file on both sides loads */
    ck_assert_int_eq(chdir(dir_b), 0);
    ck_assert_msg(spk_model_load(cl, &mc, &m) == SPK_OK, "%s", spk_last_error());
    spk_model_free(m);
    spk_cluster_close(cl);
    ex_reap_workers(5000);
    ck_assert_int_eq(chdir(cwd), 0);
    unlink(pa);
    unlink(pb);
    rmdir(dir_a);
    rmdir(dir_b);
}
END_TEST

/* LOAD sizes come from a peer: a keyed driver asking for a KV cache larger than the machine gets
 * a clear refusal naming the sizes, not an allocation of whatever it asked for. */
START_TEST(oversized_load_is_refused)
{
    spk_cluster *cl = ex_launch_with(WORKER, 2, 1, "tcp", 0);
    ck_assert_ptr_nonnull(cl);
    spk_gguf_file *f;
    ck_assert_int_eq(spk_gguf_open(model_path, &f), SPK_OK);
    uint8_t id[SPK_GGUF_ID_BYTES];
    spk_gguf_identity(f, id);
    spk_gguf_close(f);
    const char *path = model_path;
    /* 2^26 blocks of 16 positions: 2^30 KV rows per layer, terabytes for any model */
    uint32_t v[SPK_EXEC_LOAD_WORDS] = {SPK_EXEC_LOAD_VERSION, 2, 1, 128, 1u << 26, 16, 64, (uint32_t)strlen(path), 8};
    uint8_t msg[sizeof v + sizeof id + 4096];
    memcpy(msg, v, sizeof v);
    memcpy(msg + sizeof v, id, sizeof id);
    memcpy(msg + sizeof v + sizeof id, path, strlen(path));
    void *rep = NULL;
    size_t rl = 0;
    spk_status st = spk_cluster_call(cl, 1, SPK_EXEC_CMD_LOAD, msg, sizeof v + sizeof id + strlen(path), &rep,
                                     &rl, 60000);
    printf("oversized LOAD: %s: %s\n", spk_status_str(st), spk_last_error());
    ck_assert_int_eq(st, SPK_ERR_NOMEM);
    ck_assert_ptr_nonnull(strstr(spk_last_error(), "this machine has"));
    free(rep);
    /* out-of-range sizes are malformed; an old LOAD version is a version error */
    v[4] = 0x7fffffff;
    memcpy(msg, v, sizeof v);
    st = spk_cluster_call(cl, 1, SPK_EXEC_CMD_LOAD, msg, sizeof v + sizeof id + strlen(path), &rep, &rl, 60000);
    ck_assert_int_eq(st, SPK_ERR_FORMAT);
    v[0] = 1;
    memcpy(msg, v, sizeof v);
    st = spk_cluster_call(cl, 1, SPK_EXEC_CMD_LOAD, msg, sizeof v + sizeof id + strlen(path), &rep, &rl, 60000);
    ck_assert_int_eq(st, SPK_ERR_VERSION);
    /* the worker is still there and serves a proper load */
    spk_model *m = load(cl, 2, 1);
    spk_model_free(m);
    spk_cluster_close(cl);
    ex_reap_workers(5000);
}
END_TEST

/* Signal `victim` (SIGKILL: it dies; SIGSTOP: it hangs, silent) once tokens flow; the driver's
 * requests must end with an error event within the peer timeout, and no process may be left:
 * the survivors leave on their own, and a stopped victim, resumed, finds its cluster gone and
 * leaves too. */
static void fault_during_generation(int pp, int tp, int victim, int sig)
{
    const int timeout_ms = 2000;
    spk_cluster *cl = ex_launch_with(WORKER, pp * tp, 1, "tcp", timeout_ms);
    ck_assert_ptr_nonnull(cl);
    spk_model *m = load(cl, pp, tp);
    spk_request r;
    spk_request_init(&r);
    r.prompt = ptok[0];
    r.n_prompt = plen[0];
    r.max_tokens = 100; /* n_ctx 128 */
    r.ignore_eos = 1;
    uint64_t id;
    ck_assert_int_eq(spk_submit(m, &r, 1, &id), SPK_OK);
    int got = 0, finished = 0;
    double t_kill = 0, t_err = 0;
    spk_event ev[16];
    size_t ne;
    while (!finished) {
        spk_status st = spk_poll(m, ev, 16, &ne, 30000);
        ck_assert_msg(st == SPK_OK || st == SPK_ERR_PEER_LOST, "poll: %s", spk_status_str(st));
        ck_assert(ne > 0 || st != SPK_OK);
        for (size_t k = 0; k < ne; k++) {
            if (ev[k].token >= 0 && ++got == 3) {
                kill(ex_workers[victim - 1], sig);
                t_kill = now();
            }
            if (ev[k].finish != SPK_FINISH_NONE) {
                ck_assert_int_eq(ev[k].finish, SPK_FINISH_ERROR);
                ck_assert_int_eq(ev[k].status, SPK_ERR_PEER_LOST);
                t_err = now();
                finished = 1;
            }
        }
    }
    ck_assert(t_kill > 0);
    printf("pp %d x tp %d: rank %d %s; error event after %.0f ms (peer timeout %d ms)\n", pp, tp, victim,
           sig == SIGKILL ? "killed" : "stopped", (t_err - t_kill) * 1e3, timeout_ms);
    ck_assert_double_lt(t_err - t_kill, timeout_ms / 1e3 + 1.0);
    ck_assert_int_ne(spk_submit(m, &r, 1, &id), SPK_OK); /* the engine stays failed */
    double t_close = now();
    spk_model_free(m);
    spk_cluster_close(cl);
    ck_assert_double_lt(now() - t_close, timeout_ms / 1e3 + 2.0);
    if (sig == SIGSTOP)
        kill(ex_workers[victim - 1], SIGCONT);
    ex_reap_workers(timeout_ms + 2000);
    for (int i = 0; i < pp * tp - 1; i++) /* nobody left behind */
        ck_assert_int_eq(ex_workers[i], 0);
}

START_TEST(kill_middle_stage) { fault_during_generation(3, 1, 1, SIGKILL); }
END_TEST
START_TEST(kill_last_stage) { fault_during_generation(2, 1, 1, SIGKILL); }
END_TEST
START_TEST(kill_tp_peer) { fault_during_generation(1, 2, 1, SIGKILL); }
END_TEST
START_TEST(kill_in_pp2_tp2) { fault_during_generation(2, 2, 3, SIGKILL); }
END_TEST
START_TEST(stop_last_stage) { fault_during_generation(2, 1, 1, SIGSTOP); }
END_TEST
START_TEST(stop_tp_peer) { fault_during_generation(1, 2, 1, SIGSTOP); }
END_TEST
START_TEST(stop_in_pp2_tp2) { fault_during_generation(2, 2, 2, SIGSTOP); }
END_TEST

int main(void)
{
    if (!spk_test_model_path())
        spk_test_skip("default model not found (run scripts/fetch-model.sh or set SPK_TEST_MODEL)");
    if (access(WORKER, X_OK) != 0)
        spk_test_skip("spk-worker not built (examples disabled)");
    Suite *s = suite_create("dist");
    TCase *tc = tcase_create("layouts");
    tcase_add_unchecked_fixture(tc, setup, NULL);
    tcase_set_timeout(tc, 900);
    tcase_add_test(tc, pp2);
    tcase_add_test(tc, pp3);
    tcase_add_test(tc, tp2);
    tcase_add_test(tc, tp3);
    tcase_add_test(tc, pp2_tp2);
    tcase_add_test(tc, tp4_synthetic);
    tcase_add_test(tc, tp2_seeded_sampling_is_reproducible);
    tcase_add_test(tc, different_file_is_refused);
    tcase_add_test(tc, oversized_load_is_refused);
    tcase_add_test(tc, kill_middle_stage);
    tcase_add_test(tc, kill_last_stage);
    tcase_add_test(tc, kill_tp_peer);
    tcase_add_test(tc, kill_in_pp2_tp2);
    tcase_add_test(tc, stop_last_stage);
    tcase_add_test(tc, stop_tp_peer);
    tcase_add_test(tc, stop_in_pp2_tp2);
    suite_add_tcase(s, tc);
    return spk_test_run(s);
}
