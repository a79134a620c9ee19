/*
 * GGUF reader on the real default model (SmolLM2-135M-Instruct Q4_1): the header, metadata,
 * tokenizer arrays and tensor table read back as the file's producer wrote them.
 * Skips when the model file is absent.
 */
#include <check.h>
#include <stdio.h>
#include <string.h>

#include "common/error.h"
#include "model/gguf.h"
#include "testutil.h"

static spk_gguf_file *open_model(void)
{
    spk_gguf_file *f = NULL;
    spk_status st = spk_gguf_open(spk_test_model_path(), &f);
    ck_assert_msg(st == SPK_OK, "spk_gguf_open: %s", spk_err_msg());
    return f;
}

START_TEST(header_and_hyperparameters)
{
    spk_gguf_file *f = open_model();
    ck_assert_uint_eq(f->version, 3);
    ck_assert_uint_eq(f->n_tensors, 272);
    ck_assert_uint_eq(f->alignment, 32);
    ck_assert_uint_eq(f->data_offset, 1785664);
    spk_gguf_str s;
    ck_assert_int_eq(spk_gguf_get_str(f, "general.architecture", &s), SPK_OK);
    ck_assert(spk_gguf_str_eq(s, "llama"));
    ck_assert_int_eq(spk_gguf_get_str(f, "tokenizer.ggml.model", &s), SPK_OK);
    ck_assert(spk_gguf_str_eq(s, "gpt2"));
    ck_assert_int_eq(spk_gguf_get_str(f, "tokenizer.ggml.pre", &s), SPK_OK);
    ck_assert(spk_gguf_str_eq(s, "smollm"));
    static const struct { const char *key; uint32_t want; } u[] = {
        {"llama.block_count", 30},           {"llama.embedding_length", 576},
        {"llama.attention.head_count", 9},   {"llama.attention.head_count_kv", 3},
        {"llama.feed_forward_length", 1536}, {"llama.vocab_size", 49152},
        {"llama.context_length", 8192},      {"tokenizer.ggml.bos_token_id", 1},
        {"tokenizer.ggml.eos_token_id", 2},
    };
    for (size_t i = 0; i < sizeof u / sizeof u[0]; i++) {
        uint32_t v = 0;
        ck_assert_msg(spk_gguf_get_u32(f, u[i].key, &v) == SPK_OK, "%s: %s", u[i].key, spk_err_msg());
        ck_assert_msg(v == u[i].want, "%s = %u, want %u", u[i].key, v, u[i].want);
    }
    float x;
    ck_assert_int_eq(spk_gguf_get_f32(f, "llama.rope.freq_base", &x), SPK_OK);
    ck_assert(x == 100000.0f);
    ck_assert_int_eq(spk_gguf_get_f32(f, "llama.attention.layer_norm_rms_epsilon", &x), SPK_OK);
    ck_assert(x > 0.99e-5f && x < 1.01e-5f);
    bool b;
    ck_assert_int_eq(spk_gguf_get_bool(f, "tokenizer.ggml.add_bos_token", &b), SPK_OK);
    spk_gguf_close(f);
}
END_TEST

START_TEST(tokenizer_arrays_walk_to_their_counts)
{
    spk_gguf_file *f = open_model();
    const spk_gguf_kv *tok;
    ck_assert_int_eq(spk_gguf_get_arr(f, "tokenizer.ggml.tokens", GGUF_STRING, &tok), SPK_OK);
    ck_assert_uint_eq(tok->v.arr.count, 49152);
    uint64_t pos = 0, n = 0;
    spk_gguf_str s, first = {0}, last = {0};
    while ((s = spk_gguf_arr_str_next(tok, &pos)).ptr) {
        ck_assert((const uint8_t *)s.ptr + s.len <= f->base + f->size);
        if (n == 0)
            first = s;
        last = s;
        n++;
    }
    ck_assert_uint_eq(n, 49152);
    ck_assert_uint_eq(pos, tok->v.arr.nbytes);
    ck_assert(spk_gguf_str_eq(first, "<|endoftext|>"));
    ck_assert(spk_gguf_str_eq(last, "ectable"));

    const spk_gguf_kv *tt;
    ck_assert_int_eq(spk_gguf_get_arr(f, "tokenizer.ggml.token_type", GGUF_INT32, &tt), SPK_OK);
    ck_assert_uint_eq(tt->v.arr.count, 49152);
    int64_t t0;
    ck_assert(spk_gguf_arr_int(tt, 0, &t0));

    const spk_gguf_kv *mg;
    ck_assert_int_eq(spk_gguf_get_arr(f, "tokenizer.ggml.merges", GGUF_STRING, &mg), SPK_OK);
    ck_assert_uint_eq(mg->v.arr.count, 48900);
    pos = 0;
    s = spk_gguf_arr_str_next(mg, &pos);
    ck_assert(spk_gguf_str_eq(s, "\xc4\xa0 t")); /* "Ġ t" */
    spk_gguf_close(f);
}
END_TEST

START_TEST(tensor_table_matches_the_model_shape)
{
    spk_gguf_file *f = open_model();
    int n_f32 = 0, n_q4_1 = 0, n_q8_0 = 0;
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const spk_gguf_tensor *t = &f->tensors[i];
        n_f32 += t->type == SPK_DT_F32;
        n_q4_1 += t->type == SPK_DT_Q4_1;
        n_q8_0 += t->type == SPK_DT_Q8_0;
        ck_assert((const uint8_t *)t->data + t->nbytes <= f->base + f->size);
        ck_assert_uint_eq(((uintptr_t)t->data) % 32, 0);
    }
    ck_assert_int_eq(n_f32, 61);
    ck_assert_int_eq(n_q4_1, 210);
    ck_assert_int_eq(n_q8_0, 1);

    const spk_gguf_tensor *t = spk_gguf_find_tensor(f, "token_embd.weight");
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(t->type, SPK_DT_Q8_0);
    ck_assert_uint_eq(t->n_dims, 2);
    ck_assert_uint_eq(t->ne[0], 576);
    ck_assert_uint_eq(t->ne[1], 49152);
    ck_assert_uint_eq(t->offset, 0);
    ck_assert_uint_eq(t->nbytes, 30081024);

    t = spk_gguf_find_tensor(f, "blk.0.attn_q.weight");
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(t->type, SPK_DT_Q4_1);
    ck_assert_uint_eq(t->ne[0], 576);
    ck_assert_uint_eq(t->ne[1], 576);
    ck_assert_uint_eq(t->nbytes, 207360);
    ck_assert_uint_eq(f->data_offset + t->offset, 33806656);

    t = spk_gguf_find_tensor(f, "output_norm.weight");
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(t->type, SPK_DT_F32);
    ck_assert_uint_eq(t->n_dims, 1);
    ck_assert_uint_eq(f->data_offset + t->offset + t->nbytes, f->size);

    static const char *const per_layer[] = {"attn_norm", "attn_q", "attn_k", "attn_v",
                                            "attn_output", "ffn_norm", "ffn_gate", "ffn_up",
                                            "ffn_down"};
    for (int l = 0; l < 30; l++)
        for (size_t k = 0; k < sizeof per_layer / sizeof per_layer[0]; k++) {
            char name[64];
            snprintf(name, sizeof name, "blk.%d.%s.weight", l, per_layer[k]);
            ck_assert_msg(spk_gguf_find_tensor(f, name) != NULL, "%s missing", name);
        }
    ck_assert_ptr_null(spk_gguf_find_tensor(f, "blk.30.attn_q.weight"));
    spk_gguf_close(f);
}
END_TEST

int main(void)
{
    if (!spk_test_model_path())
        spk_test_skip("default model not found (set SPK_TEST_MODEL)");
    Suite *s = suite_create("gguf_model");
    TCase *tc = tcase_create("smollm2");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, header_and_hyperparameters);
    tcase_add_test(tc, tokenizer_arrays_walk_to_their_counts);
    tcase_add_test(tc, tensor_table_matches_the_model_shape);
    suite_add_tcase(s, tc);
    return spk_test_run(s);
}
