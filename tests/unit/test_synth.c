/* Synthetic llama GGUF files: presets and checks, the reference quantizers, files that the GGUF
 * reader, the llama loader, the tokenizer and the public API accept, a forward pass with finite
 * non-degenerate logits, and seed determinism. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/dtype.h"
#include "cpu/ops.h"
#include "cpu/quant.h"
#include "model/gguf.h"
#include "model/llama.h"
#include "tools/synth.h"
#include "model/tokenizer.h"
#include "testutil.h"

static char g_dir[256];
static char g_tiny[300], g_tp4[300];

static void path_in(char *out, size_t cap, const char *name)
{
    snprintf(out, cap, "%s/%s", g_dir, name);
}

static uint64_t file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (uint64_t)st.st_size : 0;
}

/* ---- presets and parameter checks ---- */

START_TEST(presets_have_the_documented_shapes)
{
    const char *const *names = spk_synth_preset_names();
    int n = 0;
    while (names[n])
        n++;
    ck_assert_int_eq(n, 12);
    spk_synth_params p;
    for (int i = 0; i < n; i++) {
        ck_assert_int_eq(spk_synth_preset(names[i], &p), SPK_OK);
        ck_assert_msg(spk_synth_check(&p) == SPK_OK, "%s: %s", names[i], spk_last_error());
        ck_assert_str_eq(p.preset, names[i]);
    }
    ck_assert_int_eq(spk_synth_preset("tiny", &p), SPK_OK);
    ck_assert_int_eq(p.n_layers, 4);
    ck_assert_int_eq(p.n_embd, 256);
    ck_assert_int_eq(p.n_heads, 8);
    ck_assert_int_eq(p.n_kv_heads, 4);
    ck_assert_int_eq(p.head_dim, 32);
    ck_assert_int_eq(p.n_ff, 512);
    ck_assert_int_eq(p.n_vocab, 1024);
    ck_assert_int_eq(p.wtype, SPK_DT_Q4_1);
    ck_assert_int_eq(p.embd_type, SPK_DT_Q8_0);
    ck_assert(p.tied);
    ck_assert_int_eq(spk_synth_preset("llama-3.1-8b", &p), SPK_OK);
    ck_assert_int_eq(p.n_layers, 32);
    ck_assert_int_eq(p.n_embd, 4096);
    ck_assert_int_eq(p.n_ff, 14336);
    ck_assert_int_eq(p.n_vocab, 128256);
    ck_assert(!p.tied && p.llama3_rope);
    /* 8B at Q4_1 with Q8_0 embeddings and a Q4_1 head: 5.25 GB, computed without writing */
    uint64_t size = 0;
    ck_assert_int_eq(spk_synth_file_size(&p, &size), SPK_OK);
    ck_assert_uint_gt(size, 5200000000ull);
    ck_assert_uint_lt(size, 5300000000ull);
    ck_assert_int_eq(spk_synth_preset("mistral-small-24b", &p), SPK_OK);
    ck_assert_int_eq(p.n_layers, 40);
    ck_assert_int_eq(p.n_embd, 5120);
    ck_assert_int_eq(p.n_heads * p.head_dim, 4096); /* query width differs from n_embd */
    ck_assert_int_eq(p.arch, SPK_SYNTH_LLAMA);
    ck_assert_int_eq(spk_synth_preset("qwen3-tiny", &p), SPK_OK);
    ck_assert_int_eq(p.arch, SPK_SYNTH_QWEN3);
    ck_assert_int_eq(p.n_heads * p.head_dim, 2 * p.n_embd); /* query width 256, embd 128 */
    ck_assert_int_eq(p.wtype, SPK_DT_F32);
    ck_assert_int_eq(spk_synth_preset("qwen3-30b-a3b", &p), SPK_OK); /* Qwen3-30B-A3B's shape */
    ck_assert_int_eq(p.arch, SPK_SYNTH_QWEN3MOE);
    ck_assert_int_eq(p.n_layers, 48);
    ck_assert_int_eq(p.n_expert, 128);
    ck_assert_int_eq(p.n_expert_used, 8);
    ck_assert_int_eq(p.n_ff, 768);
    p.n_expert_used = 129; /* more than the experts: named */
    ck_assert_int_eq(spk_synth_check(&p), SPK_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(spk_last_error(), "experts used 129"));
    ck_assert_int_eq(spk_synth_preset("gpt-oss-tiny", &p), SPK_OK); /* test_gptoss's model */
    ck_assert_int_eq(p.arch, SPK_SYNTH_GPTOSS);
    ck_assert_int_eq(p.n_expert, 8);
    ck_assert_int_eq(p.n_expert_used, 2);
    ck_assert(!p.tied);
    ck_assert_int_eq(p.expert_type, -1); /* the experts take wtype */
    ck_assert_int_eq(p.sliding_window, 4);
    /* gpt-oss-20b / -120b: the planner's shapes (lib/plan/shape.c), MXFP4 experts and Q8_0 elsewhere
     * (llama-quantize's MXFP4_MOE), window 128 */
    const int oss_layers[2] = {24, 36}, oss_experts[2] = {32, 128};
    const uint64_t oss_gb[2] = {12, 63};
    for (int i = 0; i < 2; i++) {
        ck_assert_int_eq(spk_synth_preset(i ? "gpt-oss-120b" : "gpt-oss-20b", &p), SPK_OK);
        ck_assert_int_eq(p.arch, SPK_SYNTH_GPTOSS);
        ck_assert_int_eq(p.n_layers, oss_layers[i]);
        ck_assert_int_eq(p.n_embd, 2880);
        ck_assert_int_eq(p.n_heads, 64);
        ck_assert_int_eq(p.n_kv_heads, 8);
        ck_assert_int_eq(p.head_dim, 64);
        ck_assert_int_eq(p.n_ff, 2880);
        ck_assert_int_eq(p.n_vocab, 201088);
        ck_assert_int_eq(p.n_expert, oss_experts[i]);
        ck_assert_int_eq(p.n_expert_used, 4);
        ck_assert_int_eq(p.sliding_window, 128);
        ck_assert_int_eq(p.expert_type, SPK_DT_MXFP4);
        ck_assert_int_eq(p.wtype, SPK_DT_Q8_0);
        ck_assert_int_eq(spk_synth_file_size(&p, &size), SPK_OK);
        ck_assert_uint_eq(size / 1000000000ull, oss_gb[i]); /* 12.10 GB, 63.38 GB */
    }
    p.expert_type = SPK_DT_Q8_1; /* an activation type, never a weight: named */
    ck_assert_int_eq(spk_synth_check(&p), SPK_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(spk_last_error(), "expert type 9 (unknown) not supported"));
    ck_assert_int_eq(spk_synth_preset("tiny", &p), SPK_OK);
    p.expert_type = SPK_DT_MXFP4; /* a dense model has no experts */
    ck_assert_int_eq(spk_synth_check(&p), SPK_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(spk_last_error(), "only MoE architectures"));
    ck_assert_int_eq(spk_synth_preset("gpt-oss-tiny", &p), SPK_OK);
    p.sliding_window = p.n_ctx_train + 1;
    ck_assert_int_eq(spk_synth_check(&p), SPK_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(spk_last_error(), "sliding window 131073"));
    ck_assert_int_eq(spk_synth_preset("smollm2-135m", &p), SPK_OK);
    ck_assert_int_eq(p.n_heads, 9);
    ck_assert_int_eq(p.n_kv_heads, 3);
    ck_assert_int_eq(p.n_vocab, 49152);

    ck_assert_int_eq(spk_synth_preset("gpt-5", &p), SPK_ERR_NOT_FOUND);
    ck_assert_ptr_nonnull(strstr(spk_last_error(), "tiny-tp4"));
    ck_assert_int_eq(spk_synth_preset(NULL, &p), SPK_ERR_INVALID_ARG);
}
END_TEST

START_TEST(check_rejects_bad_parameters)
{
    spk_synth_params p;
    spk_synth_params_init(&p);
    ck_assert_int_eq(spk_synth_check(&p), SPK_OK);
    p.n_vocab = SPK_SYNTH_MIN_VOCAB - 1;
    ck_assert_int_eq(spk_synth_check(&p), SPK_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(spk_last_error(), "258"));
    spk_synth_params_init(&p);
    p.n_kv_heads = 3; /* does not divide 8 */
    ck_assert_int_eq(spk_synth_check(&p), SPK_ERR_INVALID_ARG);
    spk_synth_params_init(&p);
    p.n_ff = 500; /* not a whole number of Q4_1 blocks */
    ck_assert_int_eq(spk_synth_check(&p), SPK_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(spk_last_error(), "ff 500"));
    p.wtype = SPK_DT_F32; /* any row length is fine for F32 */
    ck_assert_int_eq(spk_synth_check(&p), SPK_OK);
    spk_synth_params_init(&p);
    p.wtype = SPK_DT_Q8_1;
    ck_assert_int_eq(spk_synth_check(&p), SPK_ERR_UNSUPPORTED);
    spk_synth_params_init(&p);
    p.head_dim = 0;
    p.n_heads = 3; /* 256 / 3 = 85: odd head_dim */
    p.n_kv_heads = 1;
    ck_assert_int_eq(spk_synth_check(&p), SPK_ERR_INVALID_ARG);
    ck_assert_int_eq(spk_synth_check(NULL), SPK_ERR_INVALID_ARG);
    /* a rejected write leaves no file */
    char path[400];
    path_in(path, sizeof path, "rejected.gguf");
    p.n_heads = 8;
    p.n_kv_heads = 4;
    p.rope_theta = 0.5f;
    ck_assert_int_eq(spk_synth_write(path, &p), SPK_ERR_INVALID_ARG);
    ck_assert_int_ne(access(path, F_OK), 0);
}
END_TEST

/* ---- quantizers ---- */

/* Dequantize with the library's own readers (independent of the writer). */
static void dequant(float *out, const void *q, spk_dtype t, int n)
{
    if (t == SPK_DT_F32)
        memcpy(out, q, (size_t)n * 4);
    else if (t == SPK_DT_F16)
        for (int i = 0; i < n; i++)
            out[i] = spk_f16_to_f32(((const uint16_t *)q)[i]);
    else if (t == SPK_DT_BF16)
        for (int i = 0; i < n; i++)
            out[i] = spk_bf16_to_f32(((const uint16_t *)q)[i]);
    else
        spk_dequantize_row(out, q, t, n);
}

START_TEST(quantizers_round_trip_within_half_a_step)
{
    enum { N = 256 };
    const spk_dtype types[] = {SPK_DT_F32, SPK_DT_F16, SPK_DT_BF16, SPK_DT_Q4_0, SPK_DT_Q4_1, SPK_DT_Q8_0};
    float x[N], y[N];
    uint8_t q[N * 4];
    for (size_t ti = 0; ti < sizeof types / sizeof *types; ti++) {
        const spk_dtype t = types[ti];
        for (int rep = 0; rep < 4; rep++) {
            spk_test_fill(x, N, 100 + (uint64_t)rep * 7 + ti, -1.0f, 1.0f);
            for (int i = 0; i < N; i++) /* blocks of different scales and offsets */
                x[i] = x[i] * (float)(1 + (i / 32) % 5) * 0.1f + (rep == 3 ? 0.3f : 0.0f);
            size_t nb = spk_synth_quantize_row(q, x, t, N);
            ck_assert_uint_eq(nb, spk_dtype_row_size(t, N));
            dequant(y, q, t, N);
            for (int b = 0; b < N / 32; b++) {
                double mn = x[b * 32], mx = x[b * 32], amax = 0;
                for (int j = b * 32; j < b * 32 + 32; j++) {
                    mn = x[j] < mn ? x[j] : mn;
                    mx = x[j] > mx ? x[j] : mx;
                    amax = fabs(x[j]) > amax ? fabs(x[j]) : amax;
                }
                double tol; /* half a quantization step, plus the f16 rounding of the scales */
                switch (t) {
                case SPK_DT_F32: tol = 0; break;
                case SPK_DT_F16: tol = amax * 0x1p-11; break;
                case SPK_DT_BF16: tol = amax * 0x1p-8; break;
                case SPK_DT_Q4_0: tol = 0.5 * amax / 8 * 1.01 + amax * 0x1p-10; break;
                case SPK_DT_Q4_1: tol = 0.5 * (mx - mn) / 15 * 1.01 + (fabs(mn) + mx - mn) * 0x1p-10; break;
                default: tol = 0.5 * amax / 127 * 1.01 + amax * 0x1p-10; break;
                }
                for (int j = b * 32; j < b * 32 + 32; j++) {
                    /* Q4_0 maps the signed extreme to -8 steps: the other side ends at +7 steps */
                    double tj = t == SPK_DT_Q4_0 ? fmax(tol, (fabs(x[j]) - 7 * amax / 8) * 1.01 + amax * 0x1p-10) : tol;
                    ck_assert_msg(fabs((double)y[j] - x[j]) <= tj, "%s rep %d elem %d: %g vs %g (tol %g)",
                                  spk_dtype_get(t)->name, rep, j, y[j], x[j], tj);
                }
            }
        }
    }
    /* the Q4_1 layout: d = (max-min)/15, m = min, element j in the low nibble, j+16 in the high */
    for (int j = 0; j < 32; j++)
        x[j] = (float)j;
    spk_synth_quantize_row(q, x, SPK_DT_Q4_1, 32);
    const spk_block_q4_1 *b = (const void *)q;
    ck_assert_float_eq_tol(spk_f16_to_f32(b->d), 31.0f / 15.0f, 1e-3f);
    ck_assert_float_eq(spk_f16_to_f32(b->m), 0.0f);
    ck_assert_int_eq(b->qs[0], 0 | (8 << 4));   /* round(16 * 15/31) = 8 */
    ck_assert_int_eq(b->qs[15], 7 | (15 << 4)); /* round(15 * 15/31) = 7, 31 -> 15 */
    ck_assert_uint_eq(spk_synth_quantize_row(q, x, SPK_DT_Q4_1, 30), 0); /* not a whole block */
    ck_assert_uint_eq(spk_synth_quantize_row(q, x, SPK_DT_Q8_1, 32), 0);
}
END_TEST

/* ---- the files load ---- */

typedef struct loaded {
    spk_gguf_file *f;
    spk_hparams hp;
    spk_weights w;
    spk_tok *tok;
} loaded;

static void load_all(const char *path, loaded *L)
{
    ck_assert_msg(spk_gguf_open(path, &L->f) == SPK_OK, "%s", spk_last_error());
    ck_assert_msg(spk_llama_load(L->f, &L->hp, &L->w) == SPK_OK, "%s", spk_last_error());
    ck_assert_msg(spk_tok_load(L->f, L->hp.n_vocab, &L->tok) == SPK_OK, "%s", spk_last_error());
}

static void unload(loaded *L)
{
    spk_tok_free(L->tok);
    spk_llama_weights_free(&L->w);
    spk_gguf_close(L->f);
}

static void check_tensor(const spk_gguf_file *f, const char *name, spk_dtype type, uint64_t ne0, uint64_t ne1)
{
    const spk_gguf_tensor *t = spk_gguf_find_tensor(f, name);
    ck_assert_msg(t != NULL, "missing %s", name);
    ck_assert_int_eq(t->type, type);
    ck_assert_uint_eq(t->ne[0], ne0);
    ck_assert_uint_eq(t->ne[1], ne1);
}

START_TEST(presets_load_with_reader_loader_and_tokenizer)
{
    const char *paths[2] = {g_tiny, g_tp4};
    const char *names[2] = {"synthetic tiny seed 1", "synthetic tiny-tp4 seed 2"};
    for (int k = 0; k < 2; k++) {
        spk_synth_params p;
        spk_synth_preset(k ? "tiny-tp4" : "tiny", &p);
        p.seed = (uint64_t)k + 1;
        uint64_t expect = 0;
        ck_assert_int_eq(spk_synth_file_size(&p, &expect), SPK_OK);
        ck_assert_uint_eq(file_size(paths[k]), expect);

        loaded L;
        load_all(paths[k], &L);
        ck_assert_uint_eq(L.f->version, 3);
        ck_assert_uint_eq(L.f->alignment, 32);
        ck_assert_uint_eq(L.f->data_offset % 32, 0);
        ck_assert_uint_eq(L.f->n_tensors, 2 + 9 * 4);
        spk_gguf_str s;
        ck_assert_int_eq(spk_gguf_get_str(L.f, "general.name", &s), SPK_OK);
        ck_assert(spk_gguf_str_eq(s, names[k]));
        ck_assert_int_eq(spk_gguf_get_str(L.f, "tokenizer.ggml.pre", &s), SPK_OK);
        ck_assert(spk_gguf_str_eq(s, "smollm"));
        ck_assert_int_eq(L.hp.n_layers, 4);
        ck_assert_int_eq(L.hp.n_embd, 256);
        ck_assert_int_eq(L.hp.n_heads, 8);
        ck_assert_int_eq(L.hp.n_kv_heads, 4);
        ck_assert_int_eq(L.hp.head_dim, 32);
        ck_assert_int_eq(L.hp.n_ff, 512);
        ck_assert_int_eq(L.hp.n_vocab, 1024);
        ck_assert_int_eq(L.hp.n_ctx_train, 2048);
        ck_assert_float_eq(L.hp.rope_theta, 10000.0f);
        check_tensor(L.f, "token_embd.weight", SPK_DT_Q8_0, 256, 1024);
        check_tensor(L.f, "blk.0.attn_q.weight", SPK_DT_Q4_1, 256, 256);
        check_tensor(L.f, "blk.3.attn_k.weight", SPK_DT_Q4_1, 256, 128);
        check_tensor(L.f, "blk.2.ffn_down.weight", SPK_DT_Q4_1, 512, 256);
        check_tensor(L.f, "blk.1.ffn_norm.weight", SPK_DT_F32, 256, 1);
        ck_assert_ptr_null(spk_gguf_find_tensor(L.f, "output.weight"));
        ck_assert_ptr_eq(L.w.output.data, L.w.tok_embd.data); /* tied */
        /* norms are 1 + small noise, not 0 and not all equal */
        const float *nw = L.w.layers[0].attn_norm;
        float mn = nw[0], mx = nw[0];
        for (int i = 0; i < 256; i++) {
            mn = nw[i] < mn ? nw[i] : mn;
            mx = nw[i] > mx ? nw[i] : mx;
        }
        ck_assert(mn > 0.9f && mx < 1.1f && mx > mn);
        /* the vocabulary: bytes, CONTROL specials, merged tokens; ids as documented */
        ck_assert_int_eq(spk_tok_n_vocab(L.tok), 1024);
        ck_assert_int_eq(spk_tok_bos(L.tok), SPK_SYNTH_TOK_IM_START);
        ck_assert_int_eq(spk_tok_eos(L.tok), SPK_SYNTH_TOK_IM_END);
        ck_assert(!spk_tok_add_bos(L.tok));
        ck_assert_int_eq(spk_tok_type(L.tok, SPK_SYNTH_TOK_ENDOFTEXT), SPK_TOKTYPE_CONTROL);
        ck_assert_int_eq(spk_tok_type(L.tok, 'a'), SPK_TOKTYPE_NORMAL);
        ck_assert(spk_tok_is_eog(L.tok, SPK_SYNTH_TOK_IM_END));
        ck_assert(spk_tok_is_eog(L.tok, SPK_SYNTH_TOK_ENDOFTEXT));
        ck_assert_int_eq(spk_tok_find(L.tok, "<|im_start|>", 12), SPK_SYNTH_TOK_IM_START);
        ck_assert_int_eq(spk_tok_find(L.tok, "\xC4\xA0", 2), ' '); /* byte 0x20 in GPT-2 form */
        ck_assert_int_eq(spk_tok_find(L.tok, "\xC4\xA0the", 5) >= SPK_SYNTH_MIN_VOCAB, 1);
        const spk_gguf_kv *merges;
        ck_assert_int_eq(spk_gguf_get_arr(L.f, "tokenizer.ggml.merges", GGUF_STRING, &merges), SPK_OK);
        ck_assert_uint_eq(merges->v.arr.count, 1024 - SPK_SYNTH_MIN_VOCAB);
        unload(&L);
    }
}
END_TEST

/* ---- forward pass ---- */

static void check_logits(const float *lg, int n, const char *what)
{
    double mean = 0, mx = -INFINITY;
    for (int i = 0; i < n; i++) {
        ck_assert_msg(isfinite(lg[i]), "%s: logit %d is %g", what, i, lg[i]);
        mean += lg[i];
        mx = lg[i] > mx ? lg[i] : mx;
    }
    mean /= n;
    double var = 0, z = 0, ent = 0;
    for (int i = 0; i < n; i++) {
        var += (lg[i] - mean) * (lg[i] - mean);
        z += exp(lg[i] - mx);
    }
    for (int i = 0; i < n; i++) {
        double pi = exp(lg[i] - mx) / z;
        if (pi > 0)
            ent -= pi * log(pi);
    }
    double sd = sqrt(var / n);
    /* logits of order one: a softmax that is neither uniform nor one-hot */
    ck_assert_msg(sd > 0.2 && sd < 5.0, "%s: logit std %g", what, sd);
    ck_assert_msg(ent > 0.5 && ent < log((double)n) - 0.05, "%s: entropy %g (uniform %g)", what, ent,
                  log((double)n));
}

START_TEST(other_weight_types_and_an_untied_head_load)
{
    const spk_dtype wt[] = {SPK_DT_Q4_0, SPK_DT_Q8_0, SPK_DT_F16, SPK_DT_BF16, SPK_DT_F32};
    for (size_t i = 0; i < sizeof wt / sizeof *wt; i++) {
        spk_synth_params p;
        spk_synth_preset("tiny", &p);
        p.n_layers = 2;
        p.n_embd = 64;
        p.n_heads = 4;
        p.n_kv_heads = 2;
        p.head_dim = i % 2 ? 32 : 0; /* 0: 64 / 4; 32: query width 128 != n_embd (as Mistral) */
        p.n_ff = 128;
        p.n_vocab = 300;
        p.wtype = wt[i];
        p.embd_type = wt[(i + 1) % 5];
        p.out_type = wt[(i + 2) % 5];
        p.tied = false;
        p.llama3_rope = true;
        p.rope_theta = 500000.0f;
        char path[400];
        path_in(path, sizeof path, "types.gguf");
        ck_assert_msg(spk_synth_write(path, &p) == SPK_OK, "%s", spk_last_error());
        loaded L;
        load_all(path, &L);
        ck_assert_int_eq(L.hp.head_dim, i % 2 ? 32 : 16);
        check_tensor(L.f, "blk.0.attn_output.weight", wt[i], 4 * (uint64_t)L.hp.head_dim, 64);
        ck_assert_int_eq(L.hp.n_vocab, 300);
        check_tensor(L.f, "blk.1.ffn_up.weight", wt[i], 64, 128);
        check_tensor(L.f, "token_embd.weight", wt[(i + 1) % 5], 64, 300);
        check_tensor(L.f, "output.weight", wt[(i + 2) % 5], 64, 300);
        ck_assert_ptr_ne(L.w.output.data, L.w.tok_embd.data);
        /* Llama 3.1 rope scaling: divisors from 1 (high frequencies) to 8 (low ones) */
        ck_assert_ptr_nonnull(L.w.rope_factors);
        ck_assert_float_eq(L.w.rope_factors[0], 1.0f);
        ck_assert_float_eq(L.w.rope_factors[L.hp.rot_dim / 2 - 1], 8.0f);
        /* and the forward pass reads every type */
        spk_llama *m = NULL;
        ck_assert_int_eq(spk_llama_create(&L.hp, &L.w, NULL, 16, 1, 4, 1, &m), SPK_OK);
        int32_t tok[3] = {'a', 300 - 1, SPK_SYNTH_TOK_IM_START}, pos[3] = {0, 1, 2}, seq[3] = {0, 0, 0};
        uint8_t want[3] = {0, 0, 1};
        float lg[300];
        spk_batch b = {.n_tok = 3, .token = tok, .pos = pos, .seq = seq, .want_logits = want};
        ck_assert_msg(spk_llama_forward(m, &b, NULL, lg) == SPK_OK, "%s", spk_last_error());
        check_logits(lg, 300, spk_dtype_get(wt[i])->name);
        spk_llama_free(m);
        unload(&L);
    }
}
END_TEST

START_TEST(forward_gives_finite_nondegenerate_logits)
{
    loaded L;
    load_all(g_tp4, &L);
    spk_llama *m = NULL;
    ck_assert_msg(spk_llama_create(&L.hp, &L.w, NULL, 64, 1, 8, 2, &m) == SPK_OK, "%s", spk_last_error());
    const int V = L.hp.n_vocab;
    int32_t tok[16], pos[16], seq[16];
    uint8_t want[16];
    size_t n = 0;
    const char *text = "hello world, the quick";
    ck_assert_int_eq(spk_tok_encode(L.tok, text, strlen(text), false, false, tok, 8, &n), SPK_OK);
    ck_assert_uint_ge(n, 4);
    for (size_t i = 0; i < n; i++) {
        pos[i] = (int32_t)i;
        seq[i] = 0;
        want[i] = 1;
    }
    float *lg = malloc(sizeof(float) * (size_t)V * 8);
    spk_batch b = {.n_tok = (int)n, .token = tok, .pos = pos, .seq = seq, .want_logits = want};
    ck_assert_msg(spk_llama_forward(m, &b, NULL, lg) == SPK_OK, "%s", spk_last_error());
    for (size_t i = 0; i < n; i++)
        check_logits(lg + i * (size_t)V, V, "prompt");
    /* different positions give different distributions */
    double diff = 0;
    for (int i = 0; i < V; i++)
        diff += fabs(lg[i] - lg[(size_t)V + i]);
    ck_assert(diff / V > 1e-3);
    /* greedy decoding stays finite and follows the context: it neither echoes the last token
     * nor settles on one token (what weights of 0.02 at this width did) */
    int32_t next = 0, p = (int32_t)n;
    const float *last = lg + (n - 1) * (size_t)V;
    int distinct = 0;
    uint8_t seen[1024] = {0};
    for (int s = 0; s < 16; s++) {
        next = 0;
        for (int i = 1; i < V; i++)
            next = last[i] > last[next] ? i : next;
        distinct += !seen[next]++;
        spk_batch d = {.n_tok = 1, .token = &next, .pos = &p, .seq = seq, .want_logits = want};
        ck_assert_int_eq(spk_llama_forward(m, &d, NULL, lg), SPK_OK);
        check_logits(lg, V, "decode");
        last = lg;
        p++;
    }
    ck_assert_int_ge(distinct, 6);
    free(lg);
    spk_llama_free(m);
    unload(&L);
}
END_TEST

START_TEST(tokenizer_round_trips_text)
{
    loaded L;
    load_all(g_tiny, &L);
    int32_t ids[64];
    size_t n = 0, bl = 0;
    char buf[256];
    ck_assert_int_eq(spk_tok_encode(L.tok, "hello world", 11, false, false, ids, 64, &n), SPK_OK);
    /* both words are whole tokens: the merges work as a BPE vocabulary */
    ck_assert_uint_eq(n, 2);
    ck_assert_int_eq(ids[0], spk_tok_find(L.tok, "hello", 5));
    ck_assert_int_eq(ids[1], spk_tok_find(L.tok, "\xC4\xA0world", 7));
    ck_assert_int_eq(spk_tok_decode(L.tok, ids, n, false, buf, sizeof buf, &bl), SPK_OK);
    ck_assert_uint_eq(bl, 11);
    ck_assert(memcmp(buf, "hello world", 11) == 0);
    const char *text = "Naïve café, 12 ünits!\n\t<|im_start|> 🚀";
    ck_assert_int_eq(spk_tok_encode(L.tok, text, strlen(text), false, false, ids, 64, &n), SPK_OK);
    ck_assert_int_eq(spk_tok_decode(L.tok, ids, n, false, buf, sizeof buf, &bl), SPK_OK);
    ck_assert_uint_eq(bl, strlen(text));
    ck_assert(memcmp(buf, text, bl) == 0);
    ck_assert_int_eq(spk_tok_encode(L.tok, "<|im_start|>user", 16, false, true, ids, 64, &n), SPK_OK);
    ck_assert_int_eq(ids[0], SPK_SYNTH_TOK_IM_START);
    unload(&L);
}
END_TEST

/* ---- determinism ---- */

START_TEST(same_seed_same_bytes_other_seed_other_bytes)
{
    char a[400], b[400], c[400];
    path_in(a, sizeof a, "seed5a.gguf");
    path_in(b, sizeof b, "seed5b.gguf");
    path_in(c, sizeof c, "seed6.gguf");
    spk_synth_params p;
    spk_synth_preset("tiny", &p);
    p.n_layers = 2;
    p.seed = 5;
    ck_assert_int_eq(spk_synth_write(a, &p), SPK_OK);
    ck_assert_int_eq(spk_synth_write(b, &p), SPK_OK);
    p.seed = 6;
    ck_assert_int_eq(spk_synth_write(c, &p), SPK_OK);
    size_t la, lb, lc;
    char *da = spk_test_read_file(a, &la), *db = spk_test_read_file(b, &lb), *dc = spk_test_read_file(c, &lc);
    ck_assert(da && db && dc);
    ck_assert_uint_eq(la, lb);
    ck_assert(memcmp(da, db, la) == 0);
    ck_assert_uint_eq(la, lc); /* same shape, same size */
    ck_assert(memcmp(da, dc, la) != 0);
    /* the weights differ, not just the name: compare the last tensor's bytes */
    spk_gguf_file *fa, *fc;
    ck_assert_int_eq(spk_gguf_open_memory(da, la, &fa), SPK_OK);
    ck_assert_int_eq(spk_gguf_open_memory(dc, lc, &fc), SPK_OK);
    const spk_gguf_tensor *ta = spk_gguf_find_tensor(fa, "blk.1.ffn_down.weight");
    const spk_gguf_tensor *tc = spk_gguf_find_tensor(fc, "blk.1.ffn_down.weight");
    ck_assert(memcmp(ta->data, tc->data, ta->nbytes) != 0);
    spk_gguf_close(fa);
    spk_gguf_close(fc);
    free(da);
    free(db);
    free(dc);
    /* no temporary file is left behind */
    char tmp[420];
    snprintf(tmp, sizeof tmp, "%s.tmp", a);
    ck_assert_int_ne(access(tmp, F_OK), 0);
}
END_TEST

START_TEST(write_errors_name_the_file)
{
    spk_synth_params p;
    spk_synth_params_init(&p);
    ck_assert_int_eq(spk_synth_write("/nonexistent-dir-synth/x.gguf", &p), SPK_ERR_IO);
    ck_assert_ptr_nonnull(strstr(spk_last_error(), "/nonexistent-dir-synth/x.gguf"));
    ck_assert_int_eq(spk_synth_write(NULL, &p), SPK_ERR_INVALID_ARG);
    ck_assert_int_eq(spk_synth_write("x", NULL), SPK_ERR_INVALID_ARG);
}
END_TEST

/* ---- the public API ---- */

START_TEST(public_api_loads_and_generates)
{
    spk_cluster_config cc;
    spk_cluster_config_init(&cc);
    cc.world_size = 1;
    cc.rank = 0;
    cc.n_threads = 2;
    spk_cluster *cl = NULL;
    ck_assert_int_eq(spk_cluster_open(&cc, &cl), SPK_OK);
    spk_model_config mc;
    spk_model_config_init(&mc);
    mc.path = g_tp4;
    mc.n_ctx = 128;
    mc.max_seqs = 2;
    spk_model *m = NULL;
    ck_assert_msg(spk_model_load(cl, &mc, &m) == SPK_OK, "%s", spk_last_error());
    spk_model_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    ck_assert_int_eq(spk_model_get_info(m, &info), SPK_OK);
    ck_assert_str_eq(info.name, "synthetic tiny-tp4 seed 2");
    ck_assert_int_eq(info.n_heads, 8);
    ck_assert_int_eq(info.n_kv_heads, 4);
    ck_assert_int_eq(info.eos_token, SPK_SYNTH_TOK_IM_END);

    spk_chat_message msg = {"user", "hello world"};
    char chat[256];
    size_t cl_len;
    ck_assert_int_eq(spk_chat_apply(m, &msg, 1, 1, chat, sizeof chat, &cl_len), SPK_OK);
    ck_assert_str_eq(chat, "<|im_start|>user\nhello world<|im_end|>\n<|im_start|>assistant\n");
    int32_t prompt[64];
    size_t np = 0;
    ck_assert_int_eq(spk_tokenize(m, chat, cl_len, 0, 1, prompt, 64, &np), SPK_OK);
    ck_assert_int_eq(prompt[0], SPK_SYNTH_TOK_IM_START);

    spk_request r;
    spk_request_init(&r);
    r.prompt = prompt;
    r.n_prompt = np;
    r.max_tokens = 8;
    r.temperature = 0.0f;
    r.ignore_eos = 1;
    uint64_t id = 0;
    ck_assert_int_eq(spk_submit(m, &r, 1, &id), SPK_OK);
    int n_tok = 0;
    spk_event fin = {0};
    for (int rounds = 0; rounds < 1000 && fin.finish == SPK_FINISH_NONE; rounds++) {
        spk_event ev[16];
        size_t n = 0;
        ck_assert_int_eq(spk_poll(m, ev, 16, &n, 30000), SPK_OK);
        ck_assert_uint_gt(n, 0);
        for (size_t i = 0; i < n; i++) {
            ck_assert(ev[i].request_id == id);
            if (ev[i].token >= 0) {
                ck_assert_int_lt(ev[i].token, 1024);
                n_tok++;
            }
            if (ev[i].finish != SPK_FINISH_NONE)
                fin = ev[i];
        }
    }
    ck_assert_int_eq(fin.finish, SPK_FINISH_LENGTH);
    ck_assert_int_eq(fin.status, SPK_OK);
    ck_assert_int_eq(n_tok, 8);
    ck_assert_int_eq(spk_model_free(m), SPK_OK);
    ck_assert_int_eq(spk_cluster_close(cl), SPK_OK);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("synth");
    TCase *tc = tcase_create("synth");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, presets_have_the_documented_shapes);
    tcase_add_test(tc, check_rejects_bad_parameters);
    tcase_add_test(tc, quantizers_round_trip_within_half_a_step);
    tcase_add_test(tc, presets_load_with_reader_loader_and_tokenizer);
    tcase_add_test(tc, other_weight_types_and_an_untied_head_load);
    tcase_add_test(tc, forward_gives_finite_nondegenerate_logits);
    tcase_add_test(tc, tokenizer_round_trips_text);
    tcase_add_test(tc, same_seed_same_bytes_other_seed_other_bytes);
    tcase_add_test(tc, write_errors_name_the_file);
    tcase_add_test(tc, public_api_loads_and_generates);
    suite_add_tcase(s, tc);
    return s;
}

static void remove_dir(void)
{
    const char *names[] = {"tiny.gguf", "tiny-tp4.gguf", "types.gguf", "seed5a.gguf", "seed5b.gguf", "seed6.gguf"};
    char p[400];
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        path_in(p, sizeof p, names[i]);
        unlink(p);
    }
    rmdir(g_dir);
}

int main(void)
{
    const char *base = getenv("TMPDIR") && *getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    snprintf(g_dir, sizeof g_dir, "%s/spk-synth-XXXXXX", base);
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    /* The two preset files the tests read (Check forks each test after this). */
    path_in(g_tiny, sizeof g_tiny, "tiny.gguf");
    path_in(g_tp4, sizeof g_tp4, "tiny-tp4.gguf");
    spk_synth_params p;
    spk_synth_preset("tiny", &p);
    p.seed = 1;
    spk_status st = spk_synth_write(g_tiny, &p);
    if (st == SPK_OK) {
        spk_synth_preset("tiny-tp4", &p);
        p.seed = 2;
        st = spk_synth_write(g_tp4, &p);
    }
    if (st != SPK_OK) {
        fprintf(stderr, "spk_synth_write: %s\n", spk_last_error());
        remove_dir();
        return 1;
    }
    int rc = spk_test_run(suite());
    remove_dir();
    return rc;
}
