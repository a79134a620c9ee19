/*
 * The qwen3moe architecture (Qwen3-30B-A3B's layout at a tiny size): qwen3's attention and, in
 * every layer, a router over 8 experts of which 2 run per token (softmax over all router logits,
 * top-k, renormalised), the experts stacked in 3D tensors, run by the backend's MoE op.
 *
 * Reference: tests/data/ref_qwen3moe.json, the Hugging Face transformers Qwen3MoeForCausalLM in
 * float64 on exactly the weights of the file this test writes (`spk-synth --preset qwen3moe-tiny
 * --seed 1`; the JSON records the file's FNV-1a hash and the test checks it first), made by
 * tests/ref/qwen3moe-reference.sh. `make test` needs neither torch nor llama.cpp.
 * Also: PP layouts bit-identical to one rank, TP (every expert's columns split) within float
 * rounding, and malformed MoE files refused with messages naming the tensor or key.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model/gguf.h"
#include "model/llama.h"
#include "tools/synth.h"
#include "plan/plan.h"
#include "refcmp.h"
#include "testutil.h"

static char g_dir[256], g_f32[300], g_q8[300];

static void write_model(const char *path, spk_dtype wtype)
{
    spk_synth_params p;
    ck_assert_int_eq(spk_synth_preset("qwen3moe-tiny", &p), SPK_OK);
    p.seed = 1;
    if (wtype != SPK_DT_F32)
        p.wtype = p.embd_type = p.out_type = wtype;
    ck_assert_msg(spk_synth_write(path, &p) == SPK_OK, "%s", spk_last_error());
}

static void setup(void)
{
    snprintf(g_dir, sizeof g_dir, "/tmp/spk-test-qwen3moe.XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(g_dir));
    snprintf(g_f32, sizeof g_f32, "%s/qwen3moe-tiny.gguf", g_dir);
    snprintf(g_q8, sizeof g_q8, "%s/qwen3moe-tiny-q8_0.gguf", g_dir);
    write_model(g_f32, SPK_DT_F32);
    write_model(g_q8, SPK_DT_Q8_0);
}

static void teardown(void)
{
    char p[400];
    const char *names[] = {"qwen3moe-tiny.gguf", "qwen3moe-tiny-q8_0.gguf", "bad.gguf"};
    for (size_t i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s/%s", g_dir, names[i]);
        unlink(p);
    }
    rmdir(g_dir);
}

START_TEST(loads_as_qwen3moe)
{
    spk_test_loaded L;
    spk_test_load(g_f32, &L);
    ck_assert_str_eq(L.hp.arch, "qwen3moe");
    ck_assert(L.hp.qk_norm && L.hp.rope_neox);
    ck_assert_int_eq(L.hp.n_expert, 8);
    ck_assert_int_eq(L.hp.n_expert_used, 2);
    ck_assert_int_eq(L.hp.n_ff, 64); /* expert_feed_forward_length */
    for (int l = 0; l < L.hp.n_layers; l++) {
        const spk_moe *m = &L.w.layers[l].moe;
        ck_assert(L.w.layers[l].q_norm && L.w.layers[l].k_norm);
        ck_assert_int_eq(m->n_expert, 8);
        ck_assert_int_eq(m->n_used, 2);
        ck_assert_uint_eq(m->flags, SPK_MOE_SOFTMAX_ALL | SPK_MOE_NORM_TOPK);
        ck_assert_int_eq(m->router.n_out, 8);
        ck_assert_int_eq(m->router.n_in, 128);
        ck_assert_int_eq(m->gate.n_out, 64);
        ck_assert_int_eq(m->down.n_in, 64);
        ck_assert_int_eq(m->down.n_out, 128);
        ck_assert_uint_eq(m->stride_gate, sizeof(float) * 64 * 128);
        ck_assert_ptr_null(L.w.layers[l].w_gate.data); /* no dense MLP */
    }
    spk_test_unload(&L);
}
END_TEST

static cJSON *load_ref(char **txt)
{
    return spk_test_load_ref("ref_qwen3moe.json", g_f32, "qwen3moe-tiny", "tests/ref/qwen3moe-reference.sh", txt);
}

/* F32 weights: what is left is our f16 KV cache (and float sums in another order); measured
 * (AVX2 x86): top-1 73/73, greedy 36/36, mean 1.2e-3, max 5.3e-3; against llama.cpp on the
 * converter's F32 file of the same model: 73/73, 36/36, mean 1.1e-3, max 6.3e-3. Dropping the
 * renormalisation of the top-k weights gives top-1 34/73. */
START_TEST(f32_matches_transformers)
{
    char *txt;
    cJSON *root = load_ref(&txt);
    spk_test_loaded L;
    spk_test_load(g_f32, &L);
    spk_test_check_f32_reference(root, "ref_qwen3moe.json", &L);
    spk_test_unload(&L);
    cJSON_Delete(root);
    free(txt);
}
END_TEST

/* Q8_0 weights and embeddings (and 8-bit activations): stated tolerance against the float64
 * reference of the unquantized weights. */
START_TEST(q8_0_matches_transformers_within_quantization)
{
    char *txt;
    cJSON *root = load_ref(&txt);
    spk_test_loaded L;
    spk_test_load(g_q8, &L);
    spk_test_cmp_stats s, c;
    spk_test_compare_section(&L.hp, &L.w, cJSON_GetObjectItem(root, "sequences"), &s, NULL);
    printf("Q8_0 vs transformers (F32 weights, float64): top-1 %d/%d, greedy %d/%d, |logprob diff| mean %.3f "
           "max %.3f\n", s.top1_agree, s.n_pos, s.greedy_agree, s.n_greedy, s.sum_diff / s.n_cmp, s.max_diff);
    cJSON *lc = cJSON_GetObjectItem(root, "llamacpp_q8_0"), *h8 = cJSON_GetObjectItem(root, "file_q8_0_fnv1a64");
    ck_assert(cJSON_IsString(h8));
    char got[32];
    snprintf(got, sizeof got, "%016llx", (unsigned long long)spk_test_file_fnv(g_q8));
    ck_assert_msg(strcmp(got, h8->valuestring) == 0, "Q8_0 file hash %s, reference %s: regenerate the reference",
                  got, h8->valuestring);
    spk_test_cmp_stats w;
    spk_test_compare_section(&L.hp, &L.w, cJSON_GetObjectItem(root, "sequences_q8_0_weights"), &w, NULL);
    printf("Q8_0 vs transformers on the Q8_0 weights (float64): top-1 %d/%d, greedy %d/%d, |logprob diff| mean %.3f "
           "max %.3f\n", w.top1_agree, w.n_pos, w.greedy_agree, w.n_greedy, w.sum_diff / w.n_cmp, w.max_diff);
    /* Stated tolerances (measured, AVX2 x86: vs the F32 weights top-1 62/73, mean 0.375, max 7.1;
     * vs transformers on the decoded Q8_0 weights 68/73, mean 0.089, max 1.26; vs llama.cpp's Q8_0
     * run of the converter's byte-identical file 69/73, mean 0.055, max 2.35). The F32 weights
     * are the loosest: 8-bit weights move router logits enough to flip some tokens' second expert
     * (llama.cpp's own Q8_0 run agrees with transformers' F32 top-1 at 63/73 only); on the same
     * (decoded) weights what is left is our 8-bit activations and the expert choices they flip.
     * A wrong block layout, scale or expert stride gives means above 1 and top-1 near chance. */
    ck_assert_int_ge(s.top1_agree, s.n_pos * 75 / 100);
    ck_assert_double_lt(s.sum_diff / s.n_cmp, 0.6);
    ck_assert_int_ge(w.top1_agree, w.n_pos * 85 / 100);
    ck_assert_double_lt(w.sum_diff / w.n_cmp, 0.15);
    ck_assert_double_lt(w.max_diff, 2.5);
    if (lc) {
        spk_test_compare_section(&L.hp, &L.w, lc, &c, NULL);
        printf("Q8_0 vs llama.cpp Q8_0: top-1 %d/%d, greedy %d/%d, |logprob diff| mean %.3f max %.3f\n", c.top1_agree,
               c.n_pos, c.greedy_agree, c.n_greedy, c.sum_diff / c.n_cmp, c.max_diff);
        ck_assert_int_ge(c.top1_agree, c.n_pos * 85 / 100);
        ck_assert_double_lt(c.sum_diff / c.n_cmp, 0.1);
    }
    spk_test_unload(&L);
    cJSON_Delete(root);
    free(txt);
}
END_TEST

/* ---- layouts: PP bit-identical, TP (heads split by KV group, norms replicated) ---- */


enum { NT = 16 };
static spk_test_tokens g_tok;

/* per-rank checks of the shard weights */
static void check_shard(const spk_hparams *hp, const spk_weights *full, const spk_shard *sh, const spk_weights *part,
                        int ep)
{
    ck_assert(part->layers[0].q_norm == full->layers[sh->l0].q_norm); /* replicated, whole */
    ck_assert_int_eq(part->layers[0].wq.n_out, (sh->h1 - sh->h0) * hp->head_dim);
    spk_test_check_moe_shard(hp, full, sh, part, ep);
}

/* max |logit - one rank| of layout pp x tp */
static double run_layout_ep(spk_test_loaded *L, const float *ref, int pp, int tp, int ep)
{
    return spk_test_run_layout(L->f, &L->hp, &L->w, &g_tok.b, ref, pp, tp, ep, check_shard);
}
static double run_layout(spk_test_loaded *L, const float *ref, int pp, int tp)
{
    return run_layout_ep(L, ref, pp, tp, 0);
}

/* g_f32 with `n` bytes at (first occurrence of `find`) + `at` replaced, as dir/bad.gguf */
static const char *patched(const void *find, size_t flen, long at, const void *repl, size_t n)
{
    return spk_test_patched(g_f32, g_dir, find, flen, at, repl, n);
}

/* Q4_K_M against llama.cpp on llama-quantize's own file (tests/data/ref_moe_quant.json, made by
 * tests/ref/gptoss-quant-reference.sh from qwen3moe-tiny --seed 1 --embd 256 --ff 256 so that Q4_K and
 * Q6_K are what it picks; our writer has no K-quantizer, so the file comes from the script's cache
 * and the test skips that check, saying so, without it). */
START_TEST(q4_k_m_matches_llamacpp)
{
    spk_test_cmp_stats s;
    if (!spk_test_check_cached_quant_case("qwen3moe-q4_k_m", "qwen3moe-e256-s1.Q4_K_M.gguf", &s))
        return;
    /* measured (AVX2 x86): top-1 69/73, greedy 34/35, mean 0.084, max 1.41 (Q4_K 11, Q5_K 3, Q6_K 2,
     * Q8_0 6 tensors: 8-bit activations and an expert flip now and then, as for Q8_0 above) */
    ck_assert_int_ge(s.top1_agree, 64);
    ck_assert_double_lt(s.sum_diff / s.n_cmp, 0.15);
    ck_assert_double_lt(s.max_diff, 4.0);
}
END_TEST

START_TEST(layouts_match_one_rank)
{
    spk_test_loaded L;
    spk_test_load(_i ? g_q8 : g_f32, &L);
    const int V = L.hp.n_vocab;
    spk_test_tokens_init(&g_tok, NT, V, 104729, 7);
    float *ref = spk_test_one_rank_logits(&L.hp, &L.w, &g_tok.b);
    ck_assert_double_eq(run_layout(&L, ref, 2, 1), 0.0);
    ck_assert_double_eq(run_layout(&L, ref, 3, 1), 0.0);
    /* TP: heads split by KV group and every expert's 64 columns split (F32: 32+32, 22+21+21,
     * 16 x 4; Q8_0: whole blocks of 32, so 2 ranks); the router is replicated, so every rank
     * routes a token to the same experts and only the order of the float sums of the
     * row-parallel matrices differs (and, for Q8_0, the 8-bit requantization it can flip) */
    const double tol = _i ? 0.05 : 1e-3;
    ck_assert_double_lt(run_layout(&L, ref, 1, 2), tol);
    ck_assert_double_lt(run_layout(&L, ref, 2, 2), tol);
    if (!_i) {
        ck_assert_double_lt(run_layout(&L, ref, 1, 3), tol);
        ck_assert_double_lt(run_layout(&L, ref, 1, 4), tol);
    }
    /* expert parallelism inside the TP group (heads split, experts 4+4 / 3+3+2 / 2 each, every
     * column of a rank's experts): partial sums of whole experts */
    ck_assert_double_lt(run_layout_ep(&L, ref, 1, 2, 1), tol);
    ck_assert_double_lt(run_layout_ep(&L, ref, 2, 2, 1), tol);
    if (!_i) /* (the planner refuses TP 4 of the Q8_0 file's 2 blocks per expert before EP replaces it) */
        ck_assert_double_lt(run_layout_ep(&L, ref, 1, 4, 1), tol);
    free(ref);
    spk_test_unload(&L);
}
END_TEST

/* ---- malformed files ---- */

START_TEST(malformed_qwen3moe_files_are_refused)
{
    /* expert_count 16 while the tensors hold 8 experts: the router's shape is named */
    static const char ec[] = "qwen3moe.expert_count";
    const uint32_t e16 = 16;
    spk_test_expect_load_error(patched(ec, sizeof ec - 1, (long)(sizeof ec - 1) + 4, &e16, 4), SPK_ERR_FORMAT,
                               "blk.0.ffn_gate_inp.weight", "[128, 16]");
    /* expert_used_count above expert_count */
    static const char uc[] = "qwen3moe.expert_used_count";
    const uint32_t u9 = 9;
    spk_test_expect_load_error(patched(uc, sizeof uc - 1, (long)(sizeof uc - 1) + 4, &u9, 4), SPK_ERR_FORMAT,
                               "expert_used_count 9", "expert_count 8");
    /* a router of the wrong shape: [n_dims u32][ne0 u64][ne1 u64] follow the name; ne1 7 */
    static const char gi[] = "blk.1.ffn_gate_inp.weight";
    const uint64_t ne7 = 7;
    spk_test_expect_load_error(patched(gi, sizeof gi - 1, (long)(sizeof gi - 1) + 4 + 8, &ne7, 8), SPK_ERR_FORMAT,
                               "blk.1.ffn_gate_inp.weight", "[128, 7]");
    /* an expert tensor holding fewer experts than expert_count (ne2 = 4) */
    static const char ge[] = "blk.2.ffn_up_exps.weight";
    const uint64_t ne4 = 4;
    spk_test_expect_load_error(patched(ge, sizeof ge - 1, (long)(sizeof ge - 1) + 4 + 16, &ne4, 8), SPK_ERR_FORMAT,
                               "blk.2.ffn_up_exps.weight", "[128, 64, 4]");
    /* an expert tensor missing (renamed) */
    static const char dn[] = "blk.0.ffn_down_exps.weight";
    spk_test_expect_load_error(patched(dn, sizeof dn - 1, 0, "blk.0.ffn_down_expz.weight", sizeof dn - 1),
                               SPK_ERR_FORMAT,
                               "missing tensor 'blk.0.ffn_down_exps.weight'", NULL);
    /* no expert_count at all */
    spk_test_expect_load_error(patched(ec, sizeof ec - 1, 0, "qwen3moe.expert_cOunt", sizeof ec - 1), SPK_ERR_FORMAT,
                               "missing metadata key 'qwen3moe.expert_count'", NULL);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("qwen3moe");
    TCase *tc = tcase_create("qwen3moe");
    tcase_add_unchecked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, loads_as_qwen3moe);
    tcase_add_test(tc, f32_matches_transformers);
    tcase_add_test(tc, q8_0_matches_transformers_within_quantization);
    tcase_add_test(tc, q4_k_m_matches_llamacpp);
    tcase_add_loop_test(tc, layouts_match_one_rank, 0, 2);
    tcase_add_test(tc, malformed_qwen3moe_files_are_refused);
    suite_add_tcase(s, tc);
    return spk_test_run(s);
}
