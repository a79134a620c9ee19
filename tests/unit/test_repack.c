/*
 * Weight repacking at load (CPU backend, lib/model/llama.c pack_weights): on synthetic Q4_0
 * models (tied Q4_0 embedding read packed by embed, and an untied head; vocabularies off the
 * 8-row grid), the logits of a batched prefill and of incremental greedy decode are the same bit
 * for bit with packing and with SPK_NO_REPACK=1, at 1 and 2 threads; the packed model reports
 * its packed bytes (at most the weights' size) and the same owned run-state bytes as the
 * unpacked one (a packed copy takes the place of the mapping's pages, it adds nothing).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cpu/matmul.h"
#include "cpu/quant.h"
#include "model/gguf.h"
#include "model/llama.h"
#include "testutil.h"
#include "tools/synth.h"

static char g_dir[64];

enum { PROMPT = 7, GEN = 6, N = PROMPT + GEN };

typedef struct run_out {
    float *logits; /* [N][n_vocab]: prefill rows, then one per decode step */
    int toks[N];
    uint64_t packed, alloc, weights;
} run_out;

static void run(const char *path, int no_repack, int threads, run_out *r)
{
    if (no_repack)
        setenv("SPK_NO_REPACK", "1", 1);
    else
        unsetenv("SPK_NO_REPACK");
    spk_gguf_file *gf;
    spk_hparams hp;
    spk_weights W;
    ck_assert_msg(spk_gguf_open(path, &gf) == SPK_OK, "%s", spk_last_error());
    ck_assert_msg(spk_llama_load(gf, &hp, &W) == SPK_OK, "%s", spk_last_error());
    spk_llama *m;
    ck_assert_msg(spk_llama_create(&hp, &W, NULL, 64, 1, N, threads, &m) == SPK_OK, "%s", spk_last_error());
    const int V = hp.n_vocab;
    r->logits = malloc(sizeof(float) * (size_t)V * N);
    ck_assert_ptr_nonnull(r->logits);
    int32_t tok[N], pos[N], seq[N];
    uint8_t want[N];
    for (int i = 0; i < PROMPT; i++) {
        tok[i] = r->toks[i] = 40 + 13 * i;
        pos[i] = i;
        seq[i] = 0;
        want[i] = 1;
    }
    spk_batch b = {.n_tok = PROMPT, .token = tok, .pos = pos, .seq = seq, .want_logits = want};
    ck_assert_msg(spk_llama_forward(m, &b, NULL, r->logits) == SPK_OK, "%s", spk_last_error());
    for (int g = 0; g < GEN; g++) { /* greedy, one token at a time through the KV cache */
        const float *last = r->logits + (size_t)(PROMPT + g - 1) * V;
        int best = 0;
        for (int v = 1; v < V; v++)
            best = last[v] > last[best] ? v : best;
        int32_t t1 = best, p1 = PROMPT + g, s1 = 0;
        uint8_t w1 = 1;
        r->toks[PROMPT + g] = best;
        spk_batch b1 = {.n_tok = 1, .token = &t1, .pos = &p1, .seq = &s1, .want_logits = &w1};
        ck_assert_msg(spk_llama_forward(m, &b1, NULL, r->logits + (size_t)(PROMPT + g) * V) == SPK_OK, "%s",
                      spk_last_error());
    }
    r->packed = spk_llama_packed_bytes(m);
    r->alloc = spk_llama_alloc_bytes(m);
    r->weights = W.n_bytes;
    spk_llama_free(m);
    spk_llama_weights_free(&W);
    spk_gguf_close(gf);
    unsetenv("SPK_NO_REPACK");
}

static void write_model(const char *name, int tied, int n_vocab, char *path, size_t cap)
{
    snprintf(path, cap, "%s/%s", g_dir, name);
    spk_synth_params p;
    spk_synth_params_init(&p);
    p.n_layers = 2;
    p.n_embd = 128;
    p.n_heads = 4;
    p.n_kv_heads = 2;
    p.n_ff = 224; /* 28 groups of 8 rows */
    p.n_vocab = n_vocab;
    p.n_ctx_train = 256;
    p.wtype = SPK_DT_Q4_0;
    p.embd_type = SPK_DT_Q4_0;
    p.out_type = SPK_DT_Q4_0;
    p.tied = tied;
    p.seed = 11;
    ck_assert_msg(spk_synth_write(path, &p) == SPK_OK, "%s", spk_last_error());
}

START_TEST(packed_model_matches_unpacked)
{
    static const struct { const char *name; int tied, vocab; } cases[] = {
        {"tied.gguf", 1, 1021}, /* 127 groups + 5 leftover rows of the head and embedding */
        {"untied.gguf", 0, 1000},
    };
    char path[128];
    write_model(cases[_i].name, cases[_i].tied, cases[_i].vocab, path, sizeof path);
    const int packs = spk_matmul_pack_layout(SPK_DT_Q4_0, 128) != SPK_MM_LAYOUT_ROWS;
    if (!packs)
        printf("note: no packed Q4_0 kernel at this ISA (%s): comparing two unpacked runs\n", spk_matmul_isa_name());
    for (int threads = 1; threads <= 2; threads++) {
        run_out a, b;
        run(path, 1, threads, &a);
        run(path, 0, threads, &b);
        const size_t V = (size_t)cases[_i].vocab;
        for (size_t i = 0; i < V * N; i++)
            ck_assert_msg(memcmp(&a.logits[i], &b.logits[i], sizeof(float)) == 0,
                          "%s, %d threads: row %zu token %zu: unpacked %.9g, packed %.9g", cases[_i].name, threads,
                          i / V, i % V, a.logits[i], b.logits[i]);
        ck_assert(memcmp(a.toks, b.toks, sizeof a.toks) == 0);
        printf("%s, %d threads: %llu of %llu weight bytes packed, run state %llu bytes either way\n", cases[_i].name,
               threads, (unsigned long long)b.packed, (unsigned long long)b.weights, (unsigned long long)b.alloc);
        /* owned bytes: the packed copies replace mapped pages, they add nothing to the run state */
        ck_assert_uint_eq(a.packed, 0);
        ck_assert_uint_eq(a.alloc, b.alloc);
        if (packs) {
            ck_assert_uint_gt(b.packed, 0);
            ck_assert_uint_le(b.packed, b.weights);
        } else {
            ck_assert_uint_eq(b.packed, 0);
        }
        free(a.logits);
        free(b.logits);
    }
    unlink(path);
}
END_TEST

int main(void)
{
    snprintf(g_dir, sizeof g_dir, "/tmp/spk_repack_XXXXXX");
    if (!mkdtemp(g_dir))
        return 1;
    Suite *s = suite_create("repack");
    TCase *tc = tcase_create("repack");
    tcase_set_timeout(tc, 300);
    tcase_add_loop_test(tc, packed_model_matches_unpacked, 0, 2);
    suite_add_tcase(s, tc);
    const int rc = spk_test_run(s);
    rmdir(g_dir);
    return rc;
}
