/*
 * Hugging Face model directories (model/hf.c, model/safetensors.c) loaded through
 * spk_gguf_open(dir) + spk_llama_load, against transformers.
 *
 * The directories come from tests/ref/hf_tiny.py (standard library only, byte-identical on every
 * run; the test checks each variant's FNV-1a hash against tests/data/ref_hf.json first).
 * ref_hf.json holds transformers' float64 log-probs and greedy ids for each variant (made by
 * tests/ref/hf-reference.sh; float variants through from_pretrained, quantized ones on the
 * dequantized weights hf_tiny.py computes). ref_hf_twin.json holds what llama.cpp's
 * convert_hf_to_gguf.py writes for three of them (keys with value digests, tensors with sha256;
 * tests/ref/hf-twin-reference.sh): the virtual GGUF must match it without torch. With
 * SPK_HF_TWIN_DIR set (tests/sh/hf_twin.sh), the same directories converted by the converter
 * must give identical logits. Malformed directories and files must be refused with clear messages.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "model/gguf.h"
#include "model/hf.h"
#include "model/llama.h"
#include "model/safetensors.h"
#include "testutil.h"

static char g_dir[256];
static cJSON *g_ref;
static char *g_ref_txt;

static const char *const variants[] = {"llama-f32",   "llama-bf16",  "llama-fp8-tensor", "llama-fp8-channel",
                                       "llama-fp8-block", "llama-nvfp4", "llama-mxfp4", "llama3-hd",
                                       "qwen3-f32",   "llama-fp8-block128", "llama-nvfp4-ct",
                                       "qwen3moe-f32", "qwen3moe-bf16", "qwen3moe-fp8-block", "gptoss-f32",
                                       "gptoss-bf16", "gptoss-mxfp4"};
#define N_VARIANTS (int)(sizeof variants / sizeof variants[0])

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...)
{
    char cmd[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    return system(cmd);
}

static void setup(void)
{
    if (sh("command -v python3 >/dev/null 2>&1") != 0)
        spk_test_skip("python3 is needed to write the tiny checkpoints (tests/ref/hf_tiny.py)");
    snprintf(g_dir, sizeof g_dir, "/tmp/spk-test-hf.XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(g_dir));
    ck_assert_int_eq(sh("python3 %s/../ref/hf_tiny.py %s > %s/hashes.txt", SPK_TEST_DATA_DIR, g_dir, g_dir), 0);
    size_t len;
    g_ref_txt = spk_test_read_file(SPK_TEST_DATA_DIR "/ref_hf.json", &len);
    ck_assert_msg(g_ref_txt != NULL, "tests/data/ref_hf.json missing");
    g_ref = cJSON_Parse(g_ref_txt);
    ck_assert_ptr_nonnull(g_ref);
}

static void teardown(void)
{
    if (g_dir[0])
        sh("rm -rf %s", g_dir);
    cJSON_Delete(g_ref);
    free(g_ref_txt);
}

typedef struct loaded {
    spk_gguf_file *f;
    spk_hparams hp;
    spk_weights w;
} loaded;

static void load(const char *path, loaded *L)
{
    ck_assert_msg(spk_gguf_open(path, &L->f) == SPK_OK, "%s: %s", path, spk_last_error());
    ck_assert_msg(spk_llama_load(L->f, &L->hp, &L->w) == SPK_OK, "%s: %s", path, spk_last_error());
}

static void unload(loaded *L)
{
    spk_llama_weights_free(&L->w);
    spk_gguf_close(L->f);
}

typedef struct cmp_stats {
    int n_pos, top1_agree, greedy_agree, n_greedy, n_cmp;
    double max_diff, sum_diff;
} cmp_stats;

/* Log-probs of every position of `toks` (n) and a greedy continuation through the KV cache. */
static void run_seq(const loaded *L, const int32_t *toks, int n, int ng, float *lp, int *greedy)
{
    const int V = L->hp.n_vocab;
    spk_llama *m;
    ck_assert_int_eq(spk_llama_create(&L->hp, &L->w, NULL, 128, 1, n, 2, &m), SPK_OK);
    int32_t ps[64], sq[64] = {0};
    uint8_t want[64];
    for (int i = 0; i < n; i++) {
        ps[i] = i;
        want[i] = 1;
    }
    spk_batch b = {.n_tok = n, .token = (int32_t *)toks, .pos = ps, .seq = sq, .want_logits = want};
    ck_assert_int_eq(spk_llama_forward(m, &b, NULL, lp), SPK_OK);
    int next = spk_test_argmax(lp + (size_t)(n - 1) * V, V);
    float *tmp = malloc(sizeof(float) * (size_t)V);
    for (int g = 0; g < ng; g++) {
        greedy[g] = next;
        int32_t t1 = next, p1 = n + g, s1 = 0;
        uint8_t w1 = 1;
        spk_batch b1 = {.n_tok = 1, .token = &t1, .pos = &p1, .seq = &s1, .want_logits = &w1};
        ck_assert_int_eq(spk_llama_forward(m, &b1, NULL, tmp), SPK_OK);
        next = spk_test_argmax(tmp, V);
    }
    free(tmp);
    spk_llama_free(m);
}

/* A and B on n tokens ((i * mul + add) % n_vocab) with greedy continuations of ng: max |logit
 * diff|; *greedy_equal (unless NULL): whether the continuations are the same. */
static double logits_diff(const loaded *A, const loaded *B, int n, int mul, int add, int ng, int *greedy_equal)
{
    const int V = A->hp.n_vocab;
    int32_t tk[64];
    int ga[8], gb[8];
    ck_assert(n <= 64 && ng <= 8);
    for (int i = 0; i < n; i++)
        tk[i] = (i * mul + add) % V;
    float *la = malloc(sizeof(float) * (size_t)n * V), *lb = malloc(sizeof(float) * (size_t)n * V);
    run_seq(A, tk, n, ng, la, ga);
    run_seq(B, tk, n, ng, lb, gb);
    double maxd = 0;
    for (size_t i = 0; i < (size_t)n * V; i++)
        maxd = fmax(maxd, fabs((double)la[i] - lb[i]));
    if (greedy_equal)
        *greedy_equal = !memcmp(ga, gb, sizeof(int) * (size_t)ng);
    free(la);
    free(lb);
    return maxd;
}

static void compare(const loaded *L, cJSON *seqs, cmp_stats *st)
{
    const int V = L->hp.n_vocab;
    memset(st, 0, sizeof *st);
    cJSON *seq;
    cJSON_ArrayForEach(seq, seqs)
    {
        cJSON *toks = cJSON_GetObjectItem(seq, "tokens"), *pos = cJSON_GetObjectItem(seq, "positions");
        cJSON *greedy = cJSON_GetObjectItem(seq, "greedy");
        const int n = cJSON_GetArraySize(toks), ng = cJSON_GetArraySize(greedy);
        ck_assert_int_le(n + ng, 64);
        int32_t tk[64];
        int gr[64];
        for (int i = 0; i < n; i++)
            tk[i] = cJSON_GetArrayItem(toks, i)->valueint;
        float *lg = malloc(sizeof(float) * (size_t)n * (size_t)V);
        run_seq(L, tk, n, ng, lg, gr);
        for (int i = 0; i < n; i++) {
            float *lp = lg + (size_t)i * V;
            spk_test_log_softmax(lp, V);
            cJSON *top = cJSON_GetObjectItem(cJSON_GetArrayItem(pos, i), "top");
            cJSON *t0 = cJSON_GetArrayItem(top, 0), *t1 = cJSON_GetArrayItem(top, 1);
            const double margin = cJSON_GetArrayItem(t0, 1)->valuedouble - cJSON_GetArrayItem(t1, 1)->valuedouble;
            st->n_pos++;
            st->top1_agree += spk_test_argmax(lp, V) == cJSON_GetArrayItem(t0, 0)->valueint || margin < 0.01;
            cJSON *pair;
            cJSON_ArrayForEach(pair, top)
            {
                double d = fabs(lp[cJSON_GetArrayItem(pair, 0)->valueint] - cJSON_GetArrayItem(pair, 1)->valuedouble);
                st->max_diff = d > st->max_diff ? d : st->max_diff;
                st->sum_diff += d;
                st->n_cmp++;
            }
        }
        for (int g = 0; g < ng; g++) {
            st->n_greedy++;
            if (gr[g] != cJSON_GetArrayItem(greedy, g)->valueint)
                break;
            st->greedy_agree++;
        }
        free(lg);
    }
}

static uint64_t dir_fnv(const char *dir)
{
    /* the safetensors files in name order, as hf_tiny.py hashes them */
    const char *names[] = {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors"};
    uint64_t h = 0xCBF29CE484222325ull;
    for (int k = 0; k < 3; k++) {
        char p[1024];
        snprintf(p, sizeof p, "%s/%s", dir, names[k]);
        size_t len;
        char *buf = spk_test_read_file(p, &len);
        if (!buf)
            continue;
        for (size_t i = 0; i < len; i++)
            h = (h ^ (uint8_t)buf[i]) * 0x100000001B3ull;
        free(buf);
    }
    return h;
}

/* Tolerances against transformers in float64 (its weights: exactly the values we load).
 * F32/BF16/FP8/NVFP4 (BF16 after dequantization)/MXFP4: our f16 KV cache and sums in another
 * order; the BF16 matmul also rounds activations. Measured numbers are printed. */
START_TEST(matches_transformers)
{
    const char *v = variants[_i];
    cJSON *ref = cJSON_GetObjectItem(cJSON_GetObjectItem(g_ref, "variants"), v);
    ck_assert_msg(ref != NULL, "ref_hf.json has no variant %s", v);
    char dir[640];
    snprintf(dir, sizeof dir, "%s/%s", g_dir, v);
    char got[32];
    snprintf(got, sizeof got, "%016llx", (unsigned long long)dir_fnv(dir));
    ck_assert_msg(!strcmp(got, cJSON_GetObjectItem(ref, "fnv1a64")->valuestring),
                  "%s: hf_tiny.py wrote other bytes (%s) than the reference was made from (%s): regenerate with "
                  "tests/ref/hf-reference.sh", v, got, cJSON_GetObjectItem(ref, "fnv1a64")->valuestring);
    loaded L;
    load(dir, &L);
    cmp_stats s;
    compare(&L, cJSON_GetObjectItem(ref, "sequences"), &s);
    printf("%-18s vs transformers: top-1 %d/%d, greedy %d/%d, |logprob diff| top-8 mean %.2e max %.2e\n", v,
           s.top1_agree, s.n_pos, s.greedy_agree, s.n_greedy, s.sum_diff / s.n_cmp, s.max_diff);
    ck_assert_int_eq(s.top1_agree, s.n_pos);
    ck_assert_int_ge(s.greedy_agree, s.n_greedy - 2);
    /* MXFP4 matrices take 8-bit quantized activations (as llama.cpp's), the others float */
    const int mx = strstr(v, "mxfp4") != NULL;
    ck_assert_double_lt(s.max_diff, mx ? 0.15 : 0.03);
    ck_assert_double_lt(s.sum_diff / s.n_cmp, mx ? 0.03 : 6e-3);
    unload(&L);
}
END_TEST

static const spk_gguf_tensor *T(const spk_gguf_file *f, const char *name)
{
    const spk_gguf_tensor *t = spk_gguf_find_tensor(f, name);
    ck_assert_msg(t != NULL, "no tensor %s", name);
    return t;
}

/* Bytes of rows [r0, r1) of t as the lazy conversion makes them: whole pages. */
static uint64_t pages_of(const spk_gguf_tensor *t, uint64_t r0, uint64_t r1)
{
    const uint64_t pg = (uint64_t)sysconf(_SC_PAGESIZE), rb = t->nbytes / t->ne[1];
    uint64_t a = r0 * rb / pg * pg, e = (r1 * rb + pg - 1) / pg * pg;
    return (e < t->nbytes ? e : t->nbytes) - a;
}

/* Each rank converts only what it uses: opening and loading convert nothing; a pipeline stage's
 * shard converts its layers' tensors and no other layer's; a tensor-parallel rank converts the
 * pages of its rows of a row-split matrix (half the heads of attn_q, half the FFN rows of
 * ffn_gate) and not the other half. Counted by the converter itself (spk_hf_converted_bytes). */
START_TEST(conversion_follows_the_slice)
{
    char dir[640];
    snprintf(dir, sizeof dir, "%s/llama-fp8-block128", g_dir);
    loaded L;
    load(dir, &L);
    if (!spk_hf_lazy_conversion(L.f)) {
        uint64_t all = 0;
        for (uint64_t i = 0; i < L.f->n_tensors; i++)
            all += spk_hf_converted_bytes(L.f, L.f->tensors[i].name.ptr);
        ck_assert_uint_eq(spk_hf_converted_bytes(L.f, NULL), all);
        ck_assert_uint_gt(all, 0);
        printf("SKIP: userfaultfd is not available here: everything is converted at open (%llu bytes)\n",
               (unsigned long long)all);
        unload(&L);
        return;
    }
    ck_assert_uint_eq(spk_hf_converted_bytes(L.f, NULL), 0); /* open + load: nothing converted yet */
    /* pipeline stage 1 of 2: layer 1 and the head */
    spk_shard sh;
    spk_shard_full(&L.hp, &sh);
    sh.l0 = 1;
    sh.first = false;
    spk_weights w;
    ck_assert_msg(spk_llama_shard(&L.hp, &L.w, &sh, &w) == SPK_OK, "%s", spk_last_error());
    static const char *const mats[] = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"};
    uint64_t l1 = 0;
    for (size_t k = 0; k < sizeof mats / sizeof *mats; k++) {
        char n0[64], n1[64];
        snprintf(n0, sizeof n0, "blk.0.%s.weight", mats[k]);
        snprintf(n1, sizeof n1, "blk.1.%s.weight", mats[k]);
        ck_assert_msg(spk_hf_converted_bytes(L.f, n0) == 0, "stage 1 converted %llu bytes of %s",
                      (unsigned long long)spk_hf_converted_bytes(L.f, n0), n0);
        ck_assert_uint_eq(spk_hf_converted_bytes(L.f, n1), T(L.f, n1)->nbytes);
        l1 += T(L.f, n1)->nbytes;
    }
    /* and nothing of layer 0 at all (its norms neither); what is converted, whole */
    uint64_t other = 0;
    for (uint64_t i = 0; i < L.f->n_tensors; i++) {
        const spk_gguf_tensor *t = &L.f->tensors[i];
        const uint64_t c = spk_hf_converted_bytes(L.f, t->name.ptr);
        if (!strncmp(t->name.ptr, "blk.0.", 6))
            ck_assert_msg(c == 0, "stage 1 converted %llu bytes of %s", (unsigned long long)c, t->name.ptr);
        else if (c)
            ck_assert_uint_eq(c, t->nbytes);
        other += c;
    }
    printf("pp stage 1 of 2: converted %llu bytes (layer 1's matrices %llu, norms %llu), layer 0's none\n",
           (unsigned long long)spk_hf_converted_bytes(L.f, NULL), (unsigned long long)l1,
           (unsigned long long)(other - l1));
    ck_assert_uint_eq(spk_hf_converted_bytes(L.f, NULL), other);
    spk_llama_weights_free(&w);
    unload(&L);

    /* tensor-parallel rank 0 of 2, both layers: heads [0, 2) of 4 (kv head 0), FFN rows [0, 160) of 320 */
    load(dir, &L);
    spk_shard_full(&L.hp, &sh);
    sh.h1 = L.hp.n_heads / 2;
    sh.kv1 = L.hp.n_kv_heads / 2;
    sh.f1 = L.hp.n_ff / 2;
    ck_assert_msg(spk_llama_shard(&L.hp, &L.w, &sh, &w) == SPK_OK, "%s", spk_last_error());
    const spk_gguf_tensor *q = T(L.f, "blk.0.attn_q.weight"), *g = T(L.f, "blk.0.ffn_gate.weight");
    const uint64_t hd = q->ne[1] / (uint64_t)L.hp.n_heads;
    const uint64_t want_q = pages_of(q, 0, (uint64_t)sh.h1 * hd), want_g = pages_of(g, 0, (uint64_t)sh.f1);
    printf("tp rank 0 of 2: attn_q %llu of %llu bytes, ffn_gate %llu of %llu bytes converted\n",
           (unsigned long long)spk_hf_converted_bytes(L.f, "blk.0.attn_q.weight"), (unsigned long long)q->nbytes,
           (unsigned long long)spk_hf_converted_bytes(L.f, "blk.0.ffn_gate.weight"), (unsigned long long)g->nbytes);
    ck_assert_uint_eq(spk_hf_converted_bytes(L.f, "blk.0.attn_q.weight"), want_q);
    ck_assert_uint_eq(spk_hf_converted_bytes(L.f, "blk.0.ffn_gate.weight"), want_g);
    ck_assert_uint_lt(want_g, g->nbytes);
    ck_assert_uint_lt(want_q, q->nbytes);
    spk_llama_weights_free(&w);
    unload(&L);
}
END_TEST

/* The virtual file carries the converter's keys, names, types and shapes. */
START_TEST(virtual_gguf_layout)
{
    char dir[640];
    spk_gguf_file *f;
    uint32_t u;
    float x;
    spk_gguf_str s;
    snprintf(dir, sizeof dir, "%s/llama3-hd", g_dir);
    ck_assert_msg(spk_gguf_open(dir, &f) == SPK_OK, "%s", spk_last_error());
    ck_assert_int_eq(spk_gguf_get_str(f, "general.architecture", &s), SPK_OK);
    ck_assert(spk_gguf_str_eq(s, "llama"));
    ck_assert_int_eq(spk_gguf_get_u32(f, "llama.block_count", &u), SPK_OK);
    ck_assert_uint_eq(u, 2);
    ck_assert_int_eq(spk_gguf_get_u32(f, "llama.attention.key_length", &u), SPK_OK);
    ck_assert_uint_eq(u, 32);
    ck_assert_int_eq(spk_gguf_get_u32(f, "llama.rope.dimension_count", &u), SPK_OK);
    ck_assert_uint_eq(u, 32);
    ck_assert_int_eq(spk_gguf_get_u32(f, "llama.attention.head_count_kv", &u), SPK_OK);
    ck_assert_uint_eq(u, 2);
    ck_assert_int_eq(spk_gguf_get_f32(f, "llama.rope.freq_base", &x), SPK_OK);
    ck_assert_float_eq(x, 500000.0f);
    ck_assert_ptr_null(spk_gguf_find_tensor(f, "output.weight")); /* tied */
    const spk_gguf_tensor *rf = T(f, "rope_freqs.weight");
    ck_assert_int_eq(rf->type, SPK_DT_F32);
    ck_assert_uint_eq(rf->ne[0], 16);
    const float *fac = rf->data;
    ck_assert_float_eq(fac[0], 1.0f);  /* wavelength 6.3 < 32/4 */
    ck_assert_float_eq(fac[15], 8.0f); /* long wavelengths: the factor */
    ck_assert(fac[1] > 1.0f && fac[1] < 8.0f);
    const spk_gguf_tensor *q = T(f, "blk.0.attn_q.weight");
    ck_assert_int_eq(q->type, SPK_DT_BF16);
    ck_assert_uint_eq(q->ne[0], 64);
    ck_assert_uint_eq(q->ne[1], 128);
    ck_assert_int_eq(T(f, "blk.1.attn_norm.weight")->type, SPK_DT_F32); /* norms as F32 */
    /* zero-copy: v_proj points into the mapping, q_proj (permuted) does not */
    spk_gguf_close(f);

    /* llama's Q rows permuted as the converter's permute(): GGUF row h*hd + 2i + j is HF row
     * h*hd + j*hd/2 + i */
    snprintf(dir, sizeof dir, "%s/llama-f32", g_dir);
    ck_assert_int_eq(spk_gguf_open(dir, &f), SPK_OK);
    char p[800];
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    spk_st_file *st;
    ck_assert_msg(spk_st_open(p, &st) == SPK_OK, "%s", spk_last_error());
    const spk_st_tensor *hq = spk_st_find(st, "model.layers.1.self_attn.k_proj.weight");
    ck_assert_ptr_nonnull(hq);
    const spk_gguf_tensor *gk = T(f, "blk.1.attn_k.weight");
    const int hd = 16, E = 64;
    for (int h = 0; h < 2; h++)
        for (int i = 0; i < hd / 2; i++)
            for (int j = 0; j < 2; j++)
                ck_assert(!memcmp((const float *)gk->data + (size_t)(h * hd + 2 * i + j) * E,
                                  (const float *)(const void *)hq->data + (size_t)(h * hd + j * hd / 2 + i) * E,
                                  sizeof(float) * E));
    const spk_st_tensor *hv = spk_st_find(st, "model.layers.1.self_attn.v_proj.weight");
    ck_assert(!memcmp(T(f, "blk.1.attn_v.weight")->data, hv->data, 4u * 64 * 32));
    spk_st_close(st);
    /* identity: stable, and differs between checkpoints */
    uint8_t a[SPK_GGUF_ID_BYTES], b[SPK_GGUF_ID_BYTES];
    spk_gguf_identity(f, a);
    spk_gguf_file *f2;
    ck_assert_int_eq(spk_gguf_open(dir, &f2), SPK_OK);
    spk_gguf_identity(f2, b);
    ck_assert(!memcmp(a, b, sizeof a));
    spk_gguf_close(f2);
    /* a copy elsewhere (another node's download) is the same model */
    ck_assert_int_eq(sh("cp -r %s %s/copy", dir, g_dir), 0);
    snprintf(p, sizeof p, "%s/copy", g_dir);
    ck_assert_int_eq(spk_gguf_open(p, &f2), SPK_OK);
    spk_gguf_identity(f2, b);
    ck_assert(!memcmp(a, b, sizeof a));
    spk_gguf_close(f2);
    sh("rm -rf %s/copy", g_dir);
    snprintf(dir, sizeof dir, "%s/llama-bf16", g_dir);
    ck_assert_int_eq(spk_gguf_open(dir, &f2), SPK_OK);
    spk_gguf_identity(f2, b);
    ck_assert(memcmp(a, b, sizeof a) != 0);
    spk_gguf_close(f2);
    spk_gguf_close(f);

    /* MXFP4: repacked exactly (the first block of blk.0.ffn_down) */
    snprintf(dir, sizeof dir, "%s/llama-mxfp4", g_dir);
    ck_assert_int_eq(spk_gguf_open(dir, &f), SPK_OK);
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    ck_assert_int_eq(spk_st_open(p, &st), SPK_OK);
    const spk_gguf_tensor *gd = T(f, "blk.0.ffn_down.weight");
    ck_assert_int_eq(gd->type, SPK_DT_MXFP4);
    const uint8_t *blk = gd->data, *src = spk_st_find(st, "model.layers.0.mlp.down_proj_blocks")->data;
    ck_assert_uint_eq(blk[0], spk_st_find(st, "model.layers.0.mlp.down_proj_scales")->data[0]);
    for (int j = 0; j < 32; j++) {
        int ours = j < 16 ? blk[1 + j] & 15 : blk[1 + j - 16] >> 4;
        int theirs = j % 2 ? src[j / 2] >> 4 : src[j / 2] & 15;
        ck_assert_int_eq(ours, theirs);
    }
    spk_st_close(st);
    spk_gguf_close(f);
}
END_TEST

/* ---- the converter's output, recorded (tests/data/ref_hf_twin.json) --------------------------- */

/* the variants tests/ref/hf-twin-reference.sh converts (and tests/sh/hf_twin.sh) */
static const char *const twin_variants[] = {"llama-f32",    "qwen3-f32",  "llama3-hd",
                                            "qwen3moe-f32", "gptoss-f32", "gptoss-mxfp4"};
#define N_TWINS (int)(sizeof twin_variants / sizeof twin_variants[0])

/* sha256 of a metadata value in GGUF's little-endian encoding without key and type field (the
 * definition in ref_hf_twin.json's comment, tests/ref/hf-twin-reference.py): a number as its
 * type's bytes (bool 1 byte), a string as uint64 length + bytes, an array as uint32 element type +
 * uint64 count + the elements so encoded (our arrays hold exactly that encoding). */
static void le(crypto_hash_sha256_state *h, uint64_t v, int n)
{
    uint8_t b[8];
    for (int i = 0; i < n; i++)
        b[i] = (uint8_t)(v >> (8 * i));
    crypto_hash_sha256_update(h, b, (unsigned long long)n);
}

static int scalar_bytes(spk_gguf_vtype t)
{
    switch (t) {
    case GGUF_UINT8: case GGUF_INT8: case GGUF_BOOL: return 1;
    case GGUF_UINT16: case GGUF_INT16: return 2;
    case GGUF_UINT32: case GGUF_INT32: case GGUF_FLOAT32: return 4;
    default: return 8;
    }
}

static void kv_digest(const spk_gguf_kv *kv, char hex[65])
{
    crypto_hash_sha256_state h;
    crypto_hash_sha256_init(&h);
    if (kv->type == GGUF_STRING) {
        le(&h, kv->v.s.len, 8);
        crypto_hash_sha256_update(&h, (const unsigned char *)kv->v.s.ptr, kv->v.s.len);
    } else if (kv->type == GGUF_ARRAY) {
        le(&h, (uint64_t)kv->v.arr.type, 4);
        le(&h, kv->v.arr.count, 8);
        crypto_hash_sha256_update(&h, kv->v.arr.data, kv->v.arr.nbytes);
    } else if (kv->type == GGUF_FLOAT32) {
        float x = (float)kv->v.f;
        uint32_t u;
        memcpy(&u, &x, 4);
        le(&h, u, 4);
    } else if (kv->type == GGUF_FLOAT64) {
        uint64_t u;
        memcpy(&u, &kv->v.f, 8);
        le(&h, u, 8);
    } else {
        const int n = scalar_bytes(kv->type);
        const int is_signed = kv->type == GGUF_INT8 || kv->type == GGUF_INT16 || kv->type == GGUF_INT32 ||
                              kv->type == GGUF_INT64;
        le(&h, is_signed ? (uint64_t)kv->v.i : kv->v.u, n);
    }
    uint8_t d[crypto_hash_sha256_BYTES];
    crypto_hash_sha256_final(&h, d);
    sodium_bin2hex(hex, 65, d, sizeof d);
}

/* Keys deliberately not the converter's, with the reason; none is read by the weight loader or
 * the forward pass. Every other key must be the converter's, with its type and value. */
enum { CONV_ONLY, OURS_ONLY, OTHER_VALUE };
static const struct {
    const char *key;
    int kind;
    const char *why;
} k_exceptions[] = {
    /* bookkeeping of the converter's output file */
    {"general.type", CONV_ONLY, "converter bookkeeping ('model')"},
    {"general.size_label", CONV_ONLY, "converter bookkeeping (parameter count label)"},
    {"general.file_type", CONV_ONLY, "the converter's --outtype; our tensors keep the checkpoint's types"},
    {"general.quantization_version", CONV_ONLY, "converter bookkeeping (ggml quantization format version)"},
    /* a display name: the converter's from the directory name in title case ("Llama F32"), ours
     * the directory name as it is */
    {"general.name", OTHER_VALUE, "display name"},
    /* the tiny byte-level vocabulary has no pre-tokenizer hash llama.cpp knows; the twin runs
     * patch get_vocab_base_pre to 'qwen2', ours names the pre-tokenizer from tokenizer.json's
     * regex (model/hf_tok.c); the tokens, merges and token types are the converter's exactly */
    {"tokenizer.ggml.pre", OTHER_VALUE, "pre-tokenizer name (converter patched to 'qwen2')"},
    /* model/hf_tok.h: our tokenizer spec writes add_bos/add_eos (from the post-processor or
     * tokenizer_config.json, 0 by default) and the end-of-generation list (our extension) */
    {"tokenizer.ggml.add_bos_token", OURS_ONLY, "hf_tok.h: add_bos from tokenizer.json / tokenizer_config.json"},
    {"tokenizer.ggml.add_eos_token", OURS_ONLY, "hf_tok.h: add_eos from tokenizer.json / tokenizer_config.json"},
    {"tokenizer.ggml.eog_token_ids", OURS_ONLY, "hf_tok.h: our end-of-generation list extension"},
};

static int key_exception(const char *key)
{
    for (size_t i = 0; i < sizeof k_exceptions / sizeof k_exceptions[0]; i++)
        if (!strcmp(key, k_exceptions[i].key))
            return (int)i;
    return -1;
}

/* spk_gguf_open(dir) gives what llama.cpp's convert_hf_to_gguf.py writes for the same directory
 * (recorded with the converter's settings of tests/sh/hf_twin.sh by tests/ref/hf-twin-reference.sh):
 * the same metadata keys with the same types and values (by digest) and byte-identical tensors
 * with the same names, types and shapes. The forward pass reads nothing else, so this is the
 * same-logits check of hf_twin.sh without torch; it always runs. */
START_TEST(same_keys_and_tensors_as_converter)
{
    const char *v = twin_variants[_i];
    size_t len;
    char *txt = spk_test_read_file(SPK_TEST_DATA_DIR "/ref_hf_twin.json", &len);
    ck_assert_msg(txt != NULL, "tests/data/ref_hf_twin.json missing");
    cJSON *root = cJSON_Parse(txt);
    ck_assert_ptr_nonnull(root);
    cJSON *ref = cJSON_GetObjectItem(cJSON_GetObjectItem(root, "variants"), v);
    ck_assert_msg(ref != NULL, "ref_hf_twin.json has no variant %s", v);
    char dir[640], got[65];
    snprintf(dir, sizeof dir, "%s/%s", g_dir, v);
    snprintf(got, sizeof got, "%016llx", (unsigned long long)dir_fnv(dir));
    ck_assert_msg(!strcmp(got, cJSON_GetObjectItem(ref, "fnv1a64")->valuestring),
                  "%s: hf_tiny.py wrote other bytes (%s) than the converter was run on (%s): regenerate with "
                  "tests/ref/hf-twin-reference.sh", v, got, cJSON_GetObjectItem(ref, "fnv1a64")->valuestring);
    spk_gguf_file *f;
    ck_assert_msg(spk_gguf_open(dir, &f) == SPK_OK, "%s: %s", dir, spk_last_error());

    /* every converter key: present, same type, same value */
    cJSON *keys = cJSON_GetObjectItem(ref, "keys"), *k;
    int n_same = 0, n_exc = 0, bad = 0;
    cJSON_ArrayForEach(k, keys)
    {
        const int ex = key_exception(k->string);
        const spk_gguf_kv *kv = spk_gguf_find(f, k->string);
        ck_assert_msg(ex < 0 || k_exceptions[ex].kind != OURS_ONLY,
                      "%s: the converter now writes '%s' (listed as ours only): update k_exceptions", v, k->string);
        if (ex >= 0 && k_exceptions[ex].kind == CONV_ONLY) {
            ck_assert_msg(kv == NULL, "%s: '%s' is listed as the converter's only, but we write it", v, k->string);
            n_exc++;
            continue;
        }
        if (!kv) {
            printf("%s: the converter writes '%s', the directory has none\n", v, k->string);
            bad++;
            continue;
        }
        const int type = cJSON_GetObjectItem(k, "type")->valueint;
        if ((int)kv->type != type) {
            printf("%s: '%s' has type %s, the converter's %s\n", v, k->string, spk_gguf_vtype_name(kv->type),
                   spk_gguf_vtype_name((uint32_t)type));
            bad++;
            continue;
        }
        if (kv->type == GGUF_ARRAY &&
            ((int)kv->v.arr.type != cJSON_GetObjectItem(k, "elem")->valueint ||
             kv->v.arr.count != (uint64_t)cJSON_GetObjectItem(k, "n")->valuedouble)) {
            printf("%s: '%s' is an array of %llu %s, the converter's of %.0f %s\n", v, k->string,
                   (unsigned long long)kv->v.arr.count, spk_gguf_vtype_name(kv->v.arr.type),
                   cJSON_GetObjectItem(k, "n")->valuedouble,
                   spk_gguf_vtype_name((uint32_t)cJSON_GetObjectItem(k, "elem")->valueint));
            bad++;
            continue;
        }
        kv_digest(kv, got);
        if (ex >= 0) { /* OTHER_VALUE: present with the converter's type; the value may differ */
            cJSON *cv = cJSON_GetObjectItem(k, "value");
            printf("%s: '%s' %s: ours '%.*s', the converter's '%s' (%s)\n", v, k->string,
                   strcmp(got, cJSON_GetObjectItem(k, "sha256")->valuestring) ? "differs" : "equal",
                   kv->type == GGUF_STRING ? (int)kv->v.s.len : 0, kv->type == GGUF_STRING ? kv->v.s.ptr : "",
                   cJSON_IsString(cv) ? cv->valuestring : "?", k_exceptions[ex].why);
            n_exc++;
            continue;
        }
        if (strcmp(got, cJSON_GetObjectItem(k, "sha256")->valuestring)) {
            char *val = cJSON_PrintUnformatted(cJSON_GetObjectItem(k, "value"));
            printf("%s: '%s' has another value than the converter's (%s)\n", v, k->string, val ? val : "digest only");
            free(val);
            bad++;
            continue;
        }
        n_same++;
    }
    /* and no key of ours that the converter does not write */
    for (uint64_t i = 0; i < f->n_kv; i++) {
        char key[160];
        snprintf(key, sizeof key, "%.*s", (int)f->kv[i].key.len, f->kv[i].key.ptr);
        if (cJSON_GetObjectItem(keys, key))
            continue;
        const int ex = key_exception(key);
        if (ex >= 0 && k_exceptions[ex].kind == OURS_ONLY) {
            n_exc++;
            continue;
        }
        printf("%s: we write '%s', the converter does not\n", v, key);
        bad++;
    }
    fflush(stdout);
    ck_assert_msg(bad == 0, "%s: %d metadata keys differ from llama.cpp's converter (listed above)", v, bad);
    ck_assert_int_ge(n_same, 15);

    /* the same tensors, byte for byte */
    cJSON *tens = cJSON_GetObjectItem(ref, "tensors"), *t;
    ck_assert_msg(f->n_tensors == (uint64_t)cJSON_GetArraySize(tens), "%s: %llu tensors, the converter's %d", v,
                  (unsigned long long)f->n_tensors, cJSON_GetArraySize(tens));
    cJSON_ArrayForEach(t, tens)
    {
        const spk_gguf_tensor *g = spk_gguf_find_tensor(f, t->string);
        ck_assert_msg(g != NULL, "%s: the converter writes tensor '%s', the directory has none", v, t->string);
        ck_assert_msg((int)g->type == cJSON_GetObjectItem(t, "type")->valueint, "%s: tensor '%s' is %s, the converter's %s",
                      v, t->string, spk_gguf_type_name(g->type),
                      spk_gguf_type_name((uint32_t)cJSON_GetObjectItem(t, "type")->valueint));
        cJSON *shape = cJSON_GetObjectItem(t, "shape");
        const int nd = cJSON_GetArraySize(shape);
        ck_assert_msg((int)g->n_dims == nd, "%s: tensor '%s' has %u dims, the converter's %d", v, t->string, g->n_dims, nd);
        for (int d = 0; d < nd; d++)
            ck_assert_msg(g->ne[d] == (uint64_t)cJSON_GetArrayItem(shape, d)->valuedouble,
                          "%s: tensor '%s' ne[%d] = %llu, the converter's %.0f", v, t->string, d,
                          (unsigned long long)g->ne[d], cJSON_GetArrayItem(shape, d)->valuedouble);
        uint8_t dg[crypto_hash_sha256_BYTES];
        crypto_hash_sha256(dg, g->data, g->nbytes);
        sodium_bin2hex(got, sizeof got, dg, sizeof dg);
        ck_assert_msg(!strcmp(got, cJSON_GetObjectItem(t, "sha256")->valuestring),
                      "%s: tensor '%s' has other bytes than the converter's", v, t->string);
    }
    printf("%s: as llama.cpp's converter: %d metadata keys (type and value), %llu tensors (byte for byte); "
           "%d keys deliberately different (k_exceptions)\n", v, n_same, (unsigned long long)f->n_tensors, n_exc);
    spk_gguf_close(f);
    cJSON_Delete(root);
    free(txt);
}
END_TEST

/* llama.cpp's converter on the same directories (tests/sh/hf_twin.sh sets SPK_HF_TWIN_DIR to a
 * directory of <variant>.gguf written from this run's checkpoints): identical logits. */
START_TEST(same_logits_as_converted_gguf)
{
    const char *twin = getenv("SPK_HF_TWIN_DIR");
    if (!twin || !*twin) {
        printf("SKIP: SPK_HF_TWIN_DIR not set (tests/sh/hf_twin.sh runs this with llama.cpp's converter)\n");
        return;
    }
    const char *const *tv = twin_variants;
    char dir[640], gg[640];
    snprintf(dir, sizeof dir, "%s/%s", twin, tv[_i]);
    snprintf(gg, sizeof gg, "%s/%s.gguf", twin, tv[_i]);
    loaded A, B;
    load(dir, &A);
    load(gg, &B);
    ck_assert_int_eq(A.hp.n_vocab, B.hp.n_vocab);
    /* every hyperparameter key the converter wrote, with the same value */
    int nk = 0;
    for (uint64_t i = 0; i < B.f->n_kv; i++) {
        const spk_gguf_kv *kb = &B.f->kv[i];
        char key[128];
        snprintf(key, sizeof key, "%.*s", (int)kb->key.len, kb->key.ptr);
        if (strncmp(key, "llama.", 6) && strncmp(key, "qwen3.", 6) && strncmp(key, "qwen3moe.", 9) &&
            strncmp(key, "gpt-oss.", 8))
            continue;
        const spk_gguf_kv *ka = spk_gguf_find(A.f, key);
        ck_assert_msg(ka != NULL, "%s: the converter writes '%s', the directory has none", tv[_i], key);
        ck_assert_msg(ka->type == kb->type, "%s: '%s' has type %d, the converter's %d", tv[_i], key, ka->type, kb->type);
        if (kb->type == GGUF_FLOAT32)
            ck_assert_msg(ka->v.f == kb->v.f, "%s: '%s' = %g, converter %g", tv[_i], key, ka->v.f, kb->v.f);
        else if (kb->type != GGUF_STRING && kb->type != GGUF_ARRAY)
            ck_assert_msg(ka->v.u == kb->v.u, "%s: '%s' = %llu, converter %llu", tv[_i], key,
                          (unsigned long long)ka->v.u, (unsigned long long)kb->v.u);
        nk++;
    }
    ck_assert_int_ge(nk, 8);
    /* the same tensors: names, types, shapes */
    ck_assert_uint_eq(A.f->n_tensors, B.f->n_tensors);
    for (uint64_t i = 0; i < B.f->n_tensors; i++) {
        const spk_gguf_tensor *tb = &B.f->tensors[i];
        char nm[128];
        snprintf(nm, sizeof nm, "%.*s", (int)tb->name.len, tb->name.ptr);
        const spk_gguf_tensor *ta = spk_gguf_find_tensor(A.f, nm);
        ck_assert_msg(ta && ta->type == tb->type && ta->ne[0] == tb->ne[0] && ta->ne[1] == tb->ne[1] &&
                      ta->ne[2] == tb->ne[2] &&
                      !memcmp(ta->data, tb->data, tb->nbytes), "%s: tensor %s differs from the converter's", tv[_i], nm);
    }
    int greedy_equal;
    const double maxd = logits_diff(&A, &B, 24, 7919, 11, 8, &greedy_equal);
    printf("%s: directory vs converted GGUF: max |logit diff| %.3g, greedy %s\n", tv[_i], maxd,
           greedy_equal ? "equal" : "differs");
    ck_assert_msg(maxd == 0.0, "%s: logits differ from the converted GGUF by up to %g", tv[_i], maxd);
    ck_assert(greedy_equal);
    unload(&A);
    unload(&B);
}
END_TEST

/* transformers' save_pretrained of the same weights (written by tests/sh/hf_twin.sh under
 * SPK_HF_TWIN_DIR: F32 and BF16, sharded with an index): the same logits as hf_tiny.py's files. */
START_TEST(save_pretrained_dirs_load)
{
    const char *twin = getenv("SPK_HF_TWIN_DIR");
    if (!twin || !*twin) {
        printf("SKIP: SPK_HF_TWIN_DIR not set (tests/sh/hf_twin.sh writes save_pretrained directories)\n");
        return;
    }
    static const char *const pairs[][2] = {{"llama-f32-saved", "llama-f32"}, {"qwen3-f32-saved", "qwen3-f32"},
                                           {"llama3-hd-saved", "llama3-hd"}, {"llama-bf16-saved", "llama-bf16"},
                                           {"qwen3moe-f32-saved", "qwen3moe-f32"}, {"gptoss-f32-saved", "gptoss-f32"}};
    char a[640], b[640];
    snprintf(a, sizeof a, "%s/%s", twin, pairs[_i][0]);
    snprintf(b, sizeof b, "%s/%s", twin, pairs[_i][1]);
    loaded A, B;
    load(a, &A);
    load(b, &B);
    ck_assert_int_eq(A.hp.n_vocab, B.hp.n_vocab);
    ck_assert_int_eq(A.hp.head_dim, B.hp.head_dim);
    const double maxd = logits_diff(&A, &B, 20, 104729, 5, 6, NULL);
    printf("%s: save_pretrained vs hf_tiny.py: max |logit diff| %g\n", pairs[_i][0], maxd);
    ck_assert_msg(maxd == 0.0, "%s differs from %s by %g", a, b, maxd);
    unload(&A);
    unload(&B);
}
END_TEST

/* ---- malformed inputs ---------------------------------------------------------------------- */

static void write_file(const char *path, const void *data, size_t n)
{
    FILE *fp = fopen(path, "wb");
    ck_assert_ptr_nonnull(fp);
    ck_assert_uint_eq(fwrite(data, 1, n, fp), n);
    fclose(fp);
}

/* A one-file safetensors with the given JSON header and `data` bytes of zeros. */
static void write_st(const char *path, const char *json, size_t data)
{
    size_t hl = strlen(json);
    uint8_t *buf = calloc(1, 8 + hl + data);
    for (int i = 0; i < 8; i++)
        buf[i] = (uint8_t)((uint64_t)hl >> (8 * i));
    memcpy(buf + 8, json, hl);
    write_file(path, buf, 8 + hl + data);
    free(buf);
}

static void expect_st(const char *json, size_t data, spk_status want, const char *needle)
{
    char p[512];
    snprintf(p, sizeof p, "%s/bad.safetensors", g_dir);
    write_st(p, json, data);
    spk_st_file *f = NULL;
    spk_status st = spk_st_open(p, &f);
    ck_assert_msg(st == want && f == NULL && strstr(spk_last_error(), needle),
                  "header %s: status %d, message '%s' (wanted %d and '%s')", json, st, spk_last_error(), want, needle);
}

static void expect_dir(const char *dir, spk_status want, const char *needle)
{
    spk_gguf_file *f = NULL;
    spk_status st = spk_gguf_open(dir, &f);
    ck_assert_msg(st == want && f == NULL && strstr(spk_last_error(), needle),
                  "%s: status %d, message '%s' (wanted %d and '%s')", dir, st, spk_last_error(), want, needle);
    printf("refused as expected: %s\n", spk_last_error());
}

START_TEST(malformed_are_refused)
{
    /* the header parser */
    char p[512];
    snprintf(p, sizeof p, "%s/bad.safetensors", g_dir);
    uint8_t big[16] = {0xff, 0xff, 0, 0, 0, 0, 0, 0, '{', '}'};
    write_file(p, big, 10);
    spk_st_file *sf = NULL;
    ck_assert_int_eq(spk_st_open(p, &sf), SPK_ERR_FORMAT);
    ck_assert_msg(strstr(spk_last_error(), "header length 65535 runs past the end of the file (10 bytes)"), "%s",
                  spk_last_error());
    ck_assert_ptr_null(sf);
    write_file(p, big, 4);
    ck_assert_int_eq(spk_st_open(p, &sf), SPK_ERR_FORMAT);
    ck_assert_msg(strstr(spk_last_error(), "shorter than the 8-byte header length"), "%s", spk_last_error());
    expect_st("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
              "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, SPK_ERR_FORMAT, "overlaps");
    expect_st("{\"a\":{\"dtype\":\"F7\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, SPK_ERR_UNSUPPORTED,
              "unknown dtype 'F7'");
    expect_st("{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, SPK_ERR_FORMAT, "needs 12");
    expect_st("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4, SPK_ERR_FORMAT,
              "outside the data section");
    expect_st("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 12, SPK_ERR_FORMAT,
              "trailing data");
    expect_st("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, SPK_ERR_FORMAT, "unused bytes");
    expect_st("{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,8]}}", 8, SPK_ERR_FORMAT, "shape[0]");
    expect_st("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}, nope", 8, SPK_ERR_FORMAT,
              "not valid JSON");
    expect_st("[1,2]", 0, SPK_ERR_FORMAT, "JSON object");
    expect_st("{\"__metadata__\":{\"k\":1}}", 0, SPK_ERR_FORMAT, "__metadata__");
    expect_st("{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],\"data_offsets\":[0,8]}}", 8,
              SPK_ERR_FORMAT, "overflow");

    /* directories: each a copy of a good one with one thing broken */
    char d[600];
    snprintf(d, sizeof d, "%s/broken", g_dir);
#define FRESH(src) ck_assert_int_eq(sh("rm -rf %s && cp -r %s/%s %s", d, g_dir, src, d), 0)
    FRESH("llama-f32");
    ck_assert_int_eq(sh("truncate -s -100 %s/model.safetensors", d), 0);
    expect_dir(d, SPK_ERR_FORMAT, "model.safetensors");
    FRESH("llama-f32");
    ck_assert_int_eq(sh("printf '{not json' > %s/config.json", d), 0);
    expect_dir(d, SPK_ERR_FORMAT, "config.json: not a JSON object");
    FRESH("llama-f32");
    ck_assert_int_eq(sh("sed -i 's/\"intermediate_size\": 128/\"intermediate_size\": 96/' %s/config.json", d), 0);
    expect_dir(d, SPK_ERR_FORMAT, "has shape [64, 128], config.json implies [64, 96]");
    FRESH("llama-f32");
    ck_assert_int_eq(sh("sed -i 's/\"num_hidden_layers\": 2/\"num_hidden_layers\": 1/' %s/config.json", d), 0);
    expect_dir(d, SPK_ERR_FORMAT, "outside num_hidden_layers 1");
    FRESH("llama-f32");
    ck_assert_int_eq(sh("sed -i 's/LlamaForCausalLM/GPT2LMHeadModel/' %s/config.json", d), 0);
    expect_dir(d, SPK_ERR_UNSUPPORTED, "GPT2LMHeadModel");
    FRESH("llama3-hd");
    ck_assert_int_eq(sh("rm %s/model-00002-of-00002.safetensors", d), 0);
    expect_dir(d, SPK_ERR_IO, "shard 'model-00002-of-00002.safetensors' is missing");
    FRESH("llama3-hd");
    ck_assert_int_eq(sh("sed -i 's/\"model.norm.weight\": \"model-00001/\"model.norm.weight\": \"model-00002/' "
                        "%s/model.safetensors.index.json", d), 0);
    expect_dir(d, SPK_ERR_FORMAT, "the index puts tensor 'model.norm.weight' in model-00002");
    FRESH("llama3-hd");
    ck_assert_int_eq(sh("printf '[]' > %s/model.safetensors.index.json", d), 0);
    expect_dir(d, SPK_ERR_FORMAT, "not a JSON object");
    FRESH("llama-f32");
    ck_assert_int_eq(sh("rm %s/model.safetensors", d), 0);
    expect_dir(d, SPK_ERR_IO, "neither model.safetensors");
    ck_assert_int_eq(sh("rm %s/config.json", d), 0);
    expect_dir(d, SPK_ERR_IO, "a directory without config.json");
    FRESH("llama-fp8-tensor");
    /* an FP8 weight whose scale is missing (renamed in place: the header keeps its length) */
    ck_assert_int_eq(sh("sed -i '0,/q_proj.weight_scale\"/s//q_proj.weight_scalf\"/' %s/model.safetensors", d), 0);
    expect_dir(d, SPK_ERR_FORMAT, "FP8 tensor 'model.layers.0.self_attn.q_proj.weight' has no weight_scale");
    FRESH("llama-f32");
    ck_assert_int_eq(sh("sed -i 's/layers.0.mlp.up_proj.weight\"/layers.0.mlp.up_proj.bias__\"/' %s/model.safetensors", d), 0);
    expect_dir(d, SPK_ERR_UNSUPPORTED, "tensor 'model.layers.0.mlp.up_proj.bias__' is not part of a llama model");
    FRESH("llama-f32");
    ck_assert_int_eq(sh("sed -i 's/\"dtype\":\"F32\"/\"dtype\":\"Q9\" /' %s/model.safetensors", d), 0);
    expect_dir(d, SPK_ERR_UNSUPPORTED, "unknown dtype 'Q9'");
    FRESH("llama-nvfp4-ct");
    /* compressed-tensors NVFP4 without its global scale (renamed in place) */
    ck_assert_int_eq(sh("sed -i '0,/q_proj.weight_global_scale\"/s//q_proj.weight_zlobal_scale\"/' %s/model.safetensors",
                        d), 0);
    expect_dir(d, SPK_ERR_FORMAT, "packed FP4 tensor 'model.layers.0.self_attn.q_proj.weight_packed' needs weight_scale "
               "and weight_global_scale");
    /* MoE: the expert count against the tensors, a fused gate_up of the wrong width, MXFP4
     * blocks cut short or without their scales, configs the graphs do not compute */
    FRESH("qwen3moe-f32");
    ck_assert_int_eq(sh("sed -i 's/\"num_experts\": 8/\"num_experts\": 9/' %s/config.json", d), 0);
    expect_dir(d, SPK_ERR_FORMAT, "layer 0 has no 'model.layers.0.mlp.experts.8.gate_proj.weight' (config.json: 9 "
               "experts");
    FRESH("qwen3moe-f32");
    ck_assert_int_eq(sh("sed -i 's/\"num_experts\": 8/\"num_experts\": 7/' %s/config.json", d), 0);
    expect_dir(d, SPK_ERR_FORMAT, "mlp.experts.7.down_proj.weight' (in");
    ck_assert_msg(strstr(spk_last_error(), "is not one of the 7 experts of config.json"), "%s", spk_last_error());
    FRESH("qwen3moe-f32");
    ck_assert_int_eq(sh("sed -i 's/\"norm_topk_prob\": true/\"norm_topk_prob\": false/' %s/config.json", d), 0);
    expect_dir(d, SPK_ERR_UNSUPPORTED, "norm_topk_prob false");
    FRESH("gptoss-f32");
    ck_assert_int_eq(sh("sed -i 's/\"intermediate_size\": 32/\"intermediate_size\": 16/' %s/config.json", d), 0);
    expect_dir(d, SPK_ERR_FORMAT, "gate_up_proj' (F32) has shape [4, 64, 64], config.json implies [4, 64, 32: "
               "experts, hidden, 2 x intermediate");
    FRESH("gptoss-f32");
    ck_assert_int_eq(sh("sed -i 's/\"truncate\": false/\"truncate\": true/' %s/config.json", d), 0);
    expect_dir(d, SPK_ERR_UNSUPPORTED, "without \"truncate\": false");
    FRESH("gptoss-mxfp4");
    ck_assert_int_eq(sh("truncate -s -100 %s/model.safetensors", d), 0);
    expect_dir(d, SPK_ERR_FORMAT, "outside the data section");
    FRESH("gptoss-mxfp4");
    ck_assert_int_eq(sh("sed -i '0,/down_proj_scales\"/s//down_proj_scalez\"/' %s/model.safetensors", d), 0);
    expect_dir(d, SPK_ERR_FORMAT, "has neither mlp.experts.down_proj nor mlp.experts.down_proj_blocks + _scales");
    ck_assert_int_eq(sh("rm -rf %s && python3 %s/../ref/hf_tiny.py %s gptoss-mxfp4-short >/dev/null && mv %s/gptoss-mxfp4-short %s",
                        d, SPK_TEST_DATA_DIR, g_dir, g_dir, d), 0);
    expect_dir(d, SPK_ERR_FORMAT, "gate_up_proj_blocks' (U8) has shape [4, 64, 1, 16], config.json implies [4, 64, 2, "
               "16: experts");
#undef FRESH
    sh("rm -rf %s %s", d, p);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("hf");
    TCase *tc = tcase_create("hf");
    tcase_add_unchecked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, virtual_gguf_layout);
    tcase_add_loop_test(tc, matches_transformers, 0, N_VARIANTS);
    tcase_add_loop_test(tc, same_keys_and_tensors_as_converter, 0, N_TWINS);
    tcase_add_loop_test(tc, same_logits_as_converted_gguf, 0, N_TWINS);
    tcase_add_loop_test(tc, save_pretrained_dirs_load, 0, 6);
    tcase_add_test(tc, malformed_are_refused);
    tcase_add_test(tc, conversion_follows_the_slice);
    suite_add_tcase(s, tc);
    return spk_test_run(s);
}
