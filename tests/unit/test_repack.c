/*
 * Weight repacking at load (CPU backend, lib/model/llama.c pack_weights): on synthetic Q4_0, Q8_0,
 * Q4_1, Q5_0, Q5_1, MXFP4, Q2_K, Q3_K, Q4_K, Q5_K and Q6_K models (tied embeddings read packed by embed, and an untied head; vocabularies off the
 * 8-row grid; a gpt-oss model whose stacked MXFP4 experts pack as one matrix), the logits of a
 * batched prefill and of incremental greedy decode are the same bit for bit with packing and
 * with SPK_NO_REPACK=1, at 1 and 2 threads and as a TP 2 group; the packed model reports its
 * packed bytes (at most the weights' size) and the same owned run-state bytes as the unpacked one
 * (a packed copy takes the place of the mapping's pages, it adds nothing).
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
#include "tp_group.h"

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

/* moe: gpt-oss's layout, 8 experts (2 per token) of type `type`, Q8_0 elsewhere */
static void write_model(const char *name, spk_dtype type, int tied, int n_vocab, int moe, char *path, size_t cap)
{
    snprintf(path, cap, "%s/%s", g_dir, name);
    spk_synth_params p;
    spk_synth_params_init(&p);
    p.n_layers = 2;
    p.n_embd = 128;
    p.n_heads = 4;
    p.n_kv_heads = 2;
    p.n_ff = 224; /* 28 groups of 8 rows */
    if (spk_dtype_get((uint32_t)type)->block == 256) { /* rows of whole super-blocks */
        p.n_embd = 256;
        p.n_ff = 512;
        p.head_dim = 64;
    }
    p.n_vocab = n_vocab;
    p.n_ctx_train = 256;
    p.wtype = type;
    p.embd_type = type;
    p.out_type = type;
    p.tied = tied;
    p.seed = 11;
    if (moe) {
        p.arch = SPK_SYNTH_GPTOSS;
        p.n_expert = 8;
        p.n_expert_used = 2;
        p.expert_type = (int)type;
        p.wtype = p.embd_type = p.out_type = SPK_DT_Q8_0;
    }
    ck_assert_msg(spk_synth_write(path, &p) == SPK_OK, "%s", spk_last_error());
}

START_TEST(packed_model_matches_unpacked)
{
    static const struct { const char *name; spk_dtype type; int tied, vocab, moe; } cases[] = {
        {"tied.gguf", SPK_DT_Q4_0, 1, 1021, 0}, /* 127 groups + 5 leftover rows of the head and embedding */
        {"untied.gguf", SPK_DT_Q4_0, 0, 1000, 0},
        {"tied-q8.gguf", SPK_DT_Q8_0, 1, 1021, 0},
        {"tied-mxfp4.gguf", SPK_DT_MXFP4, 1, 1021, 0},
        {"gptoss-mxfp4.gguf", SPK_DT_MXFP4, 1, 1021, 1}, /* experts stacked, packed as one matrix */
        {"tied-q4k.gguf", SPK_DT_Q4_K, 1, 1021, 0},
        {"tied-q6k.gguf", SPK_DT_Q6_K, 1, 1021, 0},
        {"tied-q5k.gguf", SPK_DT_Q5_K, 1, 1021, 0},
        {"tied-q3k.gguf", SPK_DT_Q3_K, 1, 1021, 0},
        {"tied-q5_0.gguf", SPK_DT_Q5_0, 1, 1021, 0},
        {"tied-q5_1.gguf", SPK_DT_Q5_1, 1, 1021, 0},
        {"tied-q4_1.gguf", SPK_DT_Q4_1, 1, 1021, 0},
        {"tied-q2k.gguf", SPK_DT_Q2_K, 1, 1021, 0},
    };
    char path[128];
    write_model(cases[_i].name, cases[_i].type, cases[_i].tied, cases[_i].vocab, cases[_i].moe, path, sizeof path);
    const char *tn = spk_dtype_get((uint32_t)cases[_i].type)->name;
    const int packs = spk_matmul_pack_layout(cases[_i].type, 256) != SPK_MM_LAYOUT_ROWS;
    if (!packs)
        printf("note: no packed %s kernel at this ISA (%s): comparing two unpacked runs\n", tn, spk_matmul_isa_name());
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
            if (cases[_i].moe) /* the experts are most of the weights */
                ck_assert_uint_gt(b.packed, b.weights / 2);
        } else {
            ck_assert_uint_eq(b.packed, 0);
        }
        free(a.logits);
        free(b.logits);
    }
    unlink(path);
}
END_TEST

/* Tensor parallelism, 2 ranks in threads of this process: row slices of the mapping (Q/K/V, gate,
 * up, the vocabulary rows of the tied head and embedding) are packed; the column slices the shard
 * copied (attention output, down) are owned buffers and stay as they are (no MADV_DONTNEED on
 * heap memory). Packed and SPK_NO_REPACK=1 give the same logits bit for bit. */
typedef struct tp_job {
    spk_llama *m;
    const spk_batch *b;
    float *out;
    spk_status st;
} tp_job;

static void *tp_run(void *arg)
{
    tp_job *j = arg;
    j->st = spk_llama_forward(j->m, j->b, NULL, j->out);
    return NULL;
}

/* The bytes of a shard's matrices that a packed kernel can take (matmul weights of 8 rows or
 * more: every layer's 7 and the head): with packing, all of them, the column slices the shard
 * owns (attention output, MLP down) included. */
static uint64_t packable_bytes(const spk_weights *w, const spk_shard *sh)
{
    uint64_t n = 0;
    for (int i = 0; i < sh->l1 - sh->l0; i++) {
        const spk_layer *L = &w->layers[i];
        const spk_wmat *v[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
        for (size_t k = 0; k < sizeof v / sizeof *v; k++)
            if (v[k]->data && v[k]->n_out >= 8 && spk_matmul_pack_layout(v[k]->type, v[k]->n_in) != SPK_MM_LAYOUT_ROWS)
                n += spk_dtype_row_size(v[k]->type, (size_t)v[k]->n_in) * (size_t)v[k]->n_out;
    }
    if (sh->last && spk_matmul_pack_layout(w->output.type, w->output.n_in) != SPK_MM_LAYOUT_ROWS)
        n += spk_dtype_row_size(w->output.type, (size_t)w->output.n_in) * (size_t)w->output.n_out;
    return n;
}

static void run_tp2(const char *path, int no_repack, float *logits, uint64_t *packed, uint64_t *packable)
{
    if (no_repack)
        setenv("SPK_NO_REPACK", "1", 1);
    else
        unsetenv("SPK_NO_REPACK");
    spk_gguf_file *gf;
    spk_hparams hp;
    spk_weights full, w[2];
    ck_assert_msg(spk_gguf_open(path, &gf) == SPK_OK, "%s", spk_last_error());
    ck_assert_msg(spk_llama_load(gf, &hp, &full) == SPK_OK, "%s", spk_last_error());
    const int V = hp.n_vocab, vsplit = 512;
    group g = {.tp = 2};
    g.sum = malloc(sizeof(float) * PROMPT * (size_t)hp.n_embd);
    pthread_barrier_init(&g.bar, NULL, 2);
    member mem[2] = {{&g, 0}, {&g, 1}};
    spk_llama *m[2];
    float *outs[2];
    int32_t tok[PROMPT], pos[PROMPT], seq[PROMPT];
    uint8_t want[PROMPT];
    for (int i = 0; i < PROMPT; i++) {
        tok[i] = (i * 331 + 5) % V;
        pos[i] = i;
        seq[i] = 0;
        want[i] = 1;
    }
    *packed = *packable = 0;
    for (int r = 0; r < 2; r++) {
        spk_shard sh;
        spk_shard_full(&hp, &sh);
        sh.kv0 = r ? hp.n_kv_heads / 2 : 0;
        sh.kv1 = r ? hp.n_kv_heads : hp.n_kv_heads / 2;
        sh.h0 = sh.kv0 * (hp.n_heads / hp.n_kv_heads);
        sh.h1 = sh.kv1 * (hp.n_heads / hp.n_kv_heads);
        sh.f0 = r ? 128 : 0;
        sh.f1 = r ? hp.n_ff : 128;
        sh.v0 = r ? vsplit : 0;
        sh.v1 = r ? V : vsplit;
        sh.allreduce = ar;
        sh.ar_ctx = &mem[r];
        ck_assert_msg(spk_llama_shard(&hp, &full, &sh, &w[r]) == SPK_OK, "%s", spk_last_error());
        ck_assert_msg(spk_llama_create(&hp, &w[r], &sh, 64, 1, PROMPT, 1, &m[r]) == SPK_OK, "%s", spk_last_error());
        *packed += spk_llama_packed_bytes(m[r]);
        *packable += packable_bytes(&w[r], &sh);
        outs[r] = malloc(sizeof(float) * PROMPT * (size_t)V);
    }
    spk_batch b = {.n_tok = PROMPT, .token = tok, .pos = pos, .seq = seq, .want_logits = want};
    pthread_t th[2];
    tp_job j[2];
    for (int r = 0; r < 2; r++) {
        j[r] = (tp_job){m[r], &b, outs[r], SPK_OK};
        pthread_create(&th[r], NULL, tp_run, &j[r]);
    }
    for (int r = 0; r < 2; r++) {
        pthread_join(th[r], NULL);
        ck_assert_msg(j[r].st == SPK_OK, "%s", spk_last_error());
    }
    for (int i = 0; i < PROMPT; i++) {
        memcpy(logits + (size_t)i * V, outs[0] + (size_t)i * vsplit, sizeof(float) * vsplit);
        memcpy(logits + (size_t)i * V + vsplit, outs[1] + (size_t)i * (V - vsplit), sizeof(float) * (size_t)(V - vsplit));
    }
    for (int r = 0; r < 2; r++) {
        spk_llama_free(m[r]);
        spk_llama_weights_free(&w[r]);
        free(outs[r]);
    }
    pthread_barrier_destroy(&g.bar);
    free(g.sum);
    spk_llama_weights_free(&full);
    spk_gguf_close(gf);
    unsetenv("SPK_NO_REPACK");
}

START_TEST(packed_tp2_matches_unpacked)
{
    char path[128];
    write_model("tp.gguf", SPK_DT_Q4_0, 1, 1021, 0, path, sizeof path);
    const size_t V = 1021;
    float *a = malloc(sizeof(float) * PROMPT * V), *b = malloc(sizeof(float) * PROMPT * V);
    ck_assert(a && b);
    uint64_t pa, pb, na, nb;
    run_tp2(path, 1, a, &pa, &na);
    run_tp2(path, 0, b, &pb, &nb);
    ck_assert_uint_eq(pa, 0);
    /* every packable matrix of both ranks packed, their own column slices (in place) too */
    ck_assert_uint_eq(pb, nb);
    if (spk_matmul_pack_layout(SPK_DT_Q4_0, 128) != SPK_MM_LAYOUT_ROWS)
        ck_assert_uint_gt(pb, 0);
    printf("TP 2: %llu bytes packed over both ranks, of %llu packable\n", (unsigned long long)pb,
           (unsigned long long)nb);
    for (size_t i = 0; i < PROMPT * V; i++)
        ck_assert_msg(memcmp(&a[i], &b[i], sizeof(float)) == 0, "TP 2: token %zu logit %zu: unpacked %.9g, packed %.9g",
                      i / V, i % V, a[i], b[i]);
    free(a);
    free(b);
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
    tcase_add_loop_test(tc, packed_model_matches_unpacked, 0, 13);
    tcase_add_test(tc, packed_tp2_matches_unpacked);
    suite_add_tcase(s, tc);
    const int rc = spk_test_run(s);
    rmdir(g_dir);
    return rc;
}
