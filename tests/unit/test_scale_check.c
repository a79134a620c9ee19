/* A model whose quantization scales (or float weights) are NaN/Inf is refused at load with a
 * message naming the tensor and block, instead of running and printing garbage. */
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/dtype.h"
#include "model/gguf.h"
#include "model/llama.h"
#include "tools/synth.h"
#include "testutil.h"

#define F16_NAN 0x7e00u
#define F16_INF 0x7c00u
#define F16_ONE 0x3c00u

static char g_dir[256];

/* ---- the scanner on hand-made blocks of every type ---- */

static void put16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }

START_TEST(scanner_finds_first_bad_scale_of_every_type)
{
    struct {
        spk_dtype t;
        size_t off, off2; /* byte offsets of the scales in a block; off2 0: none */
        const char *f1, *f2;
    } cases[] = {
        {SPK_DT_Q4_0, offsetof(spk_block_q4_0, d), 0, "d", NULL},
        {SPK_DT_Q4_1, offsetof(spk_block_q4_1, d), offsetof(spk_block_q4_1, m), "d", "m"},
        {SPK_DT_Q8_0, offsetof(spk_block_q8_0, d), 0, "d", NULL},
        {SPK_DT_Q4_K, offsetof(spk_block_q4_K, d), offsetof(spk_block_q4_K, dmin), "d", "dmin"},
        {SPK_DT_Q6_K, offsetof(spk_block_q6_K, d), 0, "d", NULL},
        {SPK_DT_F16, 0, 0, "value", NULL},
    };
    enum { NB = 9 };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const spk_dtype_info *ti = spk_dtype_get(cases[c].t);
        ck_assert_ptr_nonnull(ti);
        uint8_t *buf = calloc(NB, ti->type_size);
        ck_assert_ptr_nonnull(buf);
        /* Finite extremes pass: 1.0, the largest half (65504), a subnormal, -0. */
        const uint16_t ok[4] = {F16_ONE, 0x7bffu, 0x0001u, 0x8000u};
        for (size_t b = 0; b < NB; b++) {
            put16(buf + b * ti->type_size + cases[c].off, ok[b % 4]);
            if (cases[c].off2)
                put16(buf + b * ti->type_size + cases[c].off2, ok[(b + 1) % 4]);
        }
        const char *field = "?";
        float v = 0;
        ck_assert_uint_eq(spk_dtype_find_nonfinite(cases[c].t, buf, NB, &field, &v), NB);
        put16(buf + 6 * ti->type_size + cases[c].off, F16_INF | 0x8000u); /* -Inf */
        ck_assert_uint_eq(spk_dtype_find_nonfinite(cases[c].t, buf, NB, &field, &v), 6);
        ck_assert_str_eq(field, cases[c].f1);
        ck_assert(isinf(v) && v < 0);
        ck_assert_uint_eq(spk_dtype_find_nonfinite(cases[c].t, buf, 6, NULL, NULL), 6);
        if (cases[c].off2) { /* the second scale of an earlier block is found first */
            put16(buf + 4 * ti->type_size + cases[c].off2, F16_NAN);
            ck_assert_uint_eq(spk_dtype_find_nonfinite(cases[c].t, buf, NB, &field, &v), 4);
            ck_assert_str_eq(field, cases[c].f2);
            ck_assert(isnan(v));
        }
        free(buf);
    }
    /* F32 and BF16 elements. */
    float f[5] = {1, -2, 3.4e38f, 1e-45f, 0};
    ck_assert_uint_eq(spk_dtype_find_nonfinite(SPK_DT_F32, f, 5, NULL, NULL), 5);
    f[3] = NAN;
    const char *field = "?";
    float v = 0;
    ck_assert_uint_eq(spk_dtype_find_nonfinite(SPK_DT_F32, f, 5, &field, &v), 3);
    ck_assert_str_eq(field, "value");
    ck_assert(isnan(v));
    uint16_t bf[4] = {0x3f80u, 0x7f7fu, 0xff80u /* -Inf */, 0x7fc0u};
    ck_assert_uint_eq(spk_dtype_find_nonfinite(SPK_DT_BF16, bf, 2, NULL, NULL), 2);
    ck_assert_uint_eq(spk_dtype_find_nonfinite(SPK_DT_BF16, bf, 4, &field, &v), 2);
    ck_assert(isinf(v));
}
END_TEST

/* ---- whole files: synthetic model, one poisoned scale, loaded through the public API ---- */

static void synth_params(spk_synth_params *p, spk_dtype wtype)
{
    spk_synth_params_init(p);
    p->n_layers = 2;
    p->n_embd = 64;
    p->n_heads = 4;
    p->n_kv_heads = 2;
    p->n_ff = 128;
    p->n_vocab = 300;
    p->n_ctx_train = 256;
    p->wtype = wtype;
    p->embd_type = SPK_DT_Q8_0;
    p->tied = true;
    p->seed = 7;
}

/* Overwrite the `width`-byte scale at byte `scale_off` of block `block` of tensor `name`. */
static void poison(const char *path, const char *name, uint64_t block, size_t scale_off,
                   const void *bits, size_t width)
{
    spk_gguf_file *f = NULL;
    ck_assert_msg(spk_gguf_open(path, &f) == SPK_OK, "%s", spk_last_error());
    const spk_gguf_tensor *t = spk_gguf_find_tensor(f, name);
    ck_assert_ptr_nonnull(t);
    const spk_dtype_info *ti = spk_dtype_get(t->type);
    ck_assert_uint_lt(block, t->n_elements / ti->block);
    off_t at = (off_t)(f->data_offset + t->offset + block * ti->type_size + scale_off);
    spk_gguf_close(f);
    int fd = open(path, O_WRONLY);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(pwrite(fd, bits, width, at), (ssize_t)width);
    close(fd);
}

static char g_msg[1024]; /* the load's error message, kept across the cluster close */

static spk_status load(const char *path)
{
    spk_cluster_config cc;
    spk_cluster_config_init(&cc);
    cc.world_size = 1;
    cc.rank = 0;
    cc.n_threads = 1;
    spk_cluster *cl = NULL;
    ck_assert_int_eq(spk_cluster_open(&cc, &cl), SPK_OK);
    spk_model_config mc;
    spk_model_config_init(&mc);
    mc.path = path;
    mc.n_ctx = 64;
    mc.max_seqs = 1;
    spk_model *m = NULL;
    spk_status st = spk_model_load(cl, &mc, &m);
    snprintf(g_msg, sizeof g_msg, "%s", spk_last_error());
    if (st == SPK_OK)
        spk_model_free(m);
    spk_cluster_close(cl);
    return st;
}

static void expect_refused(const char *path, const char *needle1, const char *needle2,
                           const char *needle3)
{
    ck_assert_int_eq(load(path), SPK_ERR_FORMAT);
    ck_assert_msg(strstr(g_msg, needle1) && strstr(g_msg, needle2) && strstr(g_msg, needle3),
                  "message \"%s\" lacks \"%s\", \"%s\" or \"%s\"", g_msg, needle1, needle2,
                  needle3);
}

START_TEST(poisoned_file_is_refused_per_type)
{
    static const spk_dtype types[] = {SPK_DT_Q4_0, SPK_DT_Q4_1, SPK_DT_Q8_0,
                                      SPK_DT_F16,  SPK_DT_BF16, SPK_DT_F32};
    const spk_dtype t = types[_i];
    const spk_dtype_info *ti = spk_dtype_get(t);
    spk_synth_params p;
    synth_params(&p, t);
    char path[400];
    snprintf(path, sizeof path, "%s/%s.gguf", g_dir, ti->name);
    ck_assert_msg(spk_synth_write(path, &p) == SPK_OK, "%s", spk_last_error());
    ck_assert_msg(load(path) == SPK_OK, "clean %s file: %s", ti->name, g_msg);

    /* Block 37 of blk.1.ffn_up.weight: [128 rows][64 columns]; its row and first column. */
    const uint64_t block = 37;
    const uint64_t per_row = 64 / ti->block;
    char want_block[96];
    snprintf(want_block, sizeof want_block, "block %llu (row %llu, columns %llu..",
             (unsigned long long)block, (unsigned long long)(block / per_row),
             (unsigned long long)(block % per_row * ti->block));
    const uint32_t f32_nan = 0x7fc00000u;
    const uint16_t bf16_inf = 0x7f80u, h_nan = F16_NAN;
    if (t == SPK_DT_F32)
        poison(path, "blk.1.ffn_up.weight", block, 0, &f32_nan, 4);
    else if (t == SPK_DT_BF16)
        poison(path, "blk.1.ffn_up.weight", block, 0, &bf16_inf, 2);
    else
        poison(path, "blk.1.ffn_up.weight", block, 0, &h_nan, 2); /* d is first in these blocks */
    expect_refused(path, "'blk.1.ffn_up.weight'", want_block, t == SPK_DT_BF16 ? "inf" : "nan");
    ck_assert_ptr_nonnull(strstr(g_msg, path));
    unlink(path);
}
END_TEST

START_TEST(q4_1_min_and_embedding_and_norm_are_checked)
{
    spk_synth_params p;
    synth_params(&p, SPK_DT_Q4_1);
    char path[400];
    snprintf(path, sizeof path, "%s/q41m.gguf", g_dir);
    const uint16_t h_inf = F16_INF;
    ck_assert_int_eq(spk_synth_write(path, &p), SPK_OK);
    poison(path, "blk.0.attn_output.weight", 5, offsetof(spk_block_q4_1, m), &h_inf, 2);
    expect_refused(path, "'blk.0.attn_output.weight'", "block 5 ", "scale m = inf");

    ck_assert_int_eq(spk_synth_write(path, &p), SPK_OK);
    poison(path, "token_embd.weight", 299 * 2 + 1, offsetof(spk_block_q8_0, d), &h_inf, 2);
    expect_refused(path, "'token_embd.weight'", "block 599 (row 299, columns 32..63)", "inf");

    ck_assert_int_eq(spk_synth_write(path, &p), SPK_OK);
    const uint32_t f32_inf = 0x7f800000u;
    poison(path, "blk.1.ffn_norm.weight", 63, 0, &f32_inf, 4);
    expect_refused(path, "'blk.1.ffn_norm.weight'", "block 63", "inf");
    unlink(path);
}
END_TEST

/* A rank checks what it reads: a shard without the poisoned layer loads; with it, it does not. */
START_TEST(only_the_shard_a_rank_reads_is_checked)
{
    spk_synth_params p;
    synth_params(&p, SPK_DT_Q8_0);
    char path[400];
    snprintf(path, sizeof path, "%s/shard.gguf", g_dir);
    const uint16_t h_nan = F16_NAN;
    ck_assert_int_eq(spk_synth_write(path, &p), SPK_OK);
    poison(path, "blk.1.attn_q.weight", 3, 0, &h_nan, 2);
    spk_gguf_file *f = NULL;
    ck_assert_int_eq(spk_gguf_open(path, &f), SPK_OK);
    spk_hparams hp;
    spk_weights full, w;
    ck_assert_int_eq(spk_llama_load(f, &hp, &full), SPK_OK); /* no weight page read yet */
    spk_shard sh;
    spk_shard_full(&hp, &sh);
    sh.l1 = 1; /* stage 0 of PP 2: layer 0 */
    sh.last = false;
    ck_assert_msg(spk_llama_shard(&hp, &full, &sh, &w) == SPK_OK, "%s", spk_last_error());
    spk_llama_weights_free(&w);
    spk_shard_full(&hp, &sh);
    sh.l0 = 1; /* stage 1: layer 1 */
    sh.first = false;
    ck_assert_int_eq(spk_llama_shard(&hp, &full, &sh, &w), SPK_ERR_FORMAT);
    ck_assert_msg(strstr(spk_last_error(), "'blk.1.attn_q.weight'") &&
                      strstr(spk_last_error(), "block 3 "), "%s", spk_last_error());
    ck_assert_ptr_null(w.layers);
    spk_llama_weights_free(&full);
    spk_gguf_close(f);
    unlink(path);
}
END_TEST

int main(void)
{
    snprintf(g_dir, sizeof g_dir, "/tmp/spk_scale_XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    Suite *s = suite_create("scale_check");
    TCase *tc = tcase_create("scale_check");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, scanner_finds_first_bad_scale_of_every_type);
    tcase_add_loop_test(tc, poisoned_file_is_refused_per_type, 0, 6);
    tcase_add_test(tc, q4_1_min_and_embedding_and_norm_are_checked);
    tcase_add_test(tc, only_the_shard_a_rank_reads_is_checked);
    suite_add_tcase(s, tc);
    int rc = spk_test_run(s);
    rmdir(g_dir);
    return rc;
}
