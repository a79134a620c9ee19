/*
 * The CUDA backend against its CPU twin (llm.c's validate_result, llama.cpp's test-backend-ops):
 * the same random inputs through both backends' ops, compared with stated tolerances, every
 * weight type; then the whole default model, prefill and greedy decode, on both. Skips with the
 * reason where the module or a GPU is missing (every machine without a GPU: CI here).
 *
 * Tolerances: element-wise ops and embedding 1e-5 relative; matmul 2e-3 of sum |w x| (the CPU
 * multiplies Q8-quantized activations, the GPU f32 ones: the CPU's activation rounding is the
 * difference) and 1e-4 for float weights; attention 2e-3 absolute (same f16 cache, different
 * summation order and exp); the model: greedy tokens equal wherever the CPU's top-2 logit gap
 * exceeds 0.5, and mean |logit difference| under 0.05 (both printed).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend/backend.h"
#include "cpu/ops.h"
#include "model/gguf.h"
#include "model/llama.h"
#include "tools/synth.h"
#include "testutil.h"
#include "transport/registry.h"

static spk_backend *cpu_be, *gpu_be;

/* One op on a backend, run through its own dispatch. */
typedef struct job {
    int op;
    float *out, *a, *b;
    const float *w;
    const int *rows;
    int n_tok, n, v0;
    const spk_wmat *mat;
    void *act;
    const int32_t *token;
    float *q, *k, *v;
    const float *freqs;
    const spk_kv_cache *kv;
    const spk_step *step;
    int neox;
    const float *sinks;
    int window;
    const spk_moe *moe;
    spk_backend *be;
} job;

enum { OP_EMBED, OP_RMSNORM, OP_MATMUL, OP_ROPE_ATTN, OP_SWIGLU, OP_ADD, OP_HEADNORM, OP_BIAS, OP_MOE };
enum { HD = 64, NH = 8, NKV = 2, ROT = 64, BS = 16, CTX = 256 };

static void run_job(void *arg, int ith, int nth)
{
    job *j = arg;
    spk_backend *be = j->be;
    const spk_backend_ops *o = be->ops;
    switch (j->op) {
    case OP_EMBED: o->embed(be, j->out, j->mat, j->token, j->n_tok, j->v0, j->n, ith, nth); break;
    case OP_RMSNORM: o->rmsnorm(be, j->out, j->a, j->rows, j->w, j->n_tok, j->n, 1e-5f, ith, nth); break;
    case OP_MATMUL:
        o->quantize(be, j->act, j->mat, j->a, j->n_tok, ith, nth);
        o->barrier(be);
        o->matmul(be, j->out, j->mat, j->act, j->n_tok, ith, nth);
        break;
    case OP_ROPE_ATTN:
        o->rope_store(be, j->q, j->k, j->v, NH, ROT, j->neox, j->freqs, j->kv, 0, j->step, ith, nth);
        o->barrier(be);
        o->attention(be, j->out, j->q, NH, 1.0f / sqrtf((float)HD), j->sinks, j->window, j->kv, 0, j->step, ith,
                     nth);
        break;
    case OP_SWIGLU: o->swiglu(be, j->out, j->a, j->b, j->n_tok, j->n, ith, nth); break;
    case OP_ADD: o->add(be, j->out, j->a, j->b, j->n_tok, j->n, ith, nth); break;
    case OP_HEADNORM: o->head_rmsnorm(be, j->out, j->w, j->n_tok, NH, HD, 1e-6f, ith, nth); break;
    case OP_BIAS: o->add_bias(be, j->out, j->w, j->n_tok, j->n, ith, nth); break;
    case OP_MOE: o->moe(be, j->out, j->a, j->moe, j->act, j->n_tok, ith, nth); break;
    }
}

/* Host data into a new device buffer. */
static void *dev_copy(const void *host, size_t bytes)
{
    void *d = gpu_be->ops->alloc(gpu_be, bytes);
    ck_assert_ptr_nonnull(d);
    ck_assert_int_eq(gpu_be->ops->copy(gpu_be, d, host, bytes), SPK_OK);
    return d;
}

static void to_host(void *host, const void *dev, size_t bytes)
{
    ck_assert_int_eq(gpu_be->ops->copy(gpu_be, host, dev, bytes), SPK_OK);
}

static void run_on(spk_backend *be, job *j, const spk_step *s)
{
    j->be = be;
    if (s && be->ops->begin)
        ck_assert_int_eq(be->ops->begin(be, s), SPK_OK);
    spk_status st = be->ops->run(be, run_job, j);
    char why[256] = "";
    ck_assert_msg(st == SPK_OK, "%s: %s", be->ops->name, be->ops->error ? be->ops->error(be, why, sizeof why) : "");
}

static void close_to(double got, double want, double tol, const char *what, int i)
{
    ck_assert_msg(fabs(got - want) <= tol, "%s [%d]: cuda %.9g, cpu %.9g (tol %.3g)", what, i, got, want, tol);
}

/* The module's directory: SPK_MODULE_DIR (a copied build, tests/gpu/run.sh), else the build tree. */
static const char *module_dir(void) { return getenv("SPK_MODULE_DIR") ? getenv("SPK_MODULE_DIR") : SPK_TEST_MODULE_DIR; }

static void setup(void)
{
    spk_transport_test_set_plugin_dir(module_dir());
    ck_assert_int_eq(spk_backend_cpu_create(2, CTX, HD, &cpu_be), SPK_OK);
    ck_assert_int_eq(spk_backend_create(SPK_BACKEND_CUDA, 0, 1, CTX, HD, &gpu_be), SPK_OK);
}

static void teardown(void)
{
    spk_backend_destroy(cpu_be);
    spk_backend_destroy(gpu_be);
}

START_TEST(elementwise_and_rmsnorm_match_cpu)
{
    const int T = 9, E = 576;
    float *x = malloc(sizeof(float) * T * E), *y = malloc(sizeof(float) * T * E), *w = malloc(sizeof(float) * E);
    float *c = malloc(sizeof(float) * T * E), *g = malloc(sizeof(float) * T * E);
    spk_test_fill(x, (size_t)T * E, 1, -3, 3);
    spk_test_fill(y, (size_t)T * E, 2, -3, 3);
    spk_test_fill(w, E, 3, 0.5f, 1.5f);
    float *dx = dev_copy(x, sizeof(float) * T * E), *dy = dev_copy(y, sizeof(float) * T * E),
          *dw = dev_copy(w, sizeof(float) * E), *dout = dev_copy(c, sizeof(float) * T * E);
    static const int rows[] = {8, 0, 3, 5};
    const int ops[] = {OP_RMSNORM, OP_SWIGLU, OP_ADD};
    for (size_t k = 0; k < sizeof ops / sizeof *ops; k++) {
        const int n_tok = ops[k] == OP_RMSNORM ? 4 : T;
        job jc = {.op = ops[k], .out = c, .a = x, .b = y, .w = w, .rows = ops[k] == OP_RMSNORM ? rows : NULL,
                  .n_tok = n_tok, .n = E};
        job jg = {.op = ops[k], .out = dout, .a = dx, .b = dy, .w = dw, .rows = jc.rows, .n_tok = n_tok, .n = E};
        run_on(cpu_be, &jc, NULL);
        run_on(gpu_be, &jg, NULL);
        to_host(g, dout, sizeof(float) * (size_t)n_tok * E);
        for (int i = 0; i < n_tok * E; i++)
            close_to(g[i], c[i], 1e-5 * (1 + fabs(c[i])), ops[k] == OP_RMSNORM ? "rmsnorm" : "swiglu/add", i);
    }
    /* gpt-oss's projection biases, in place */
    memcpy(c, x, sizeof(float) * T * E);
    ck_assert_int_eq(gpu_be->ops->copy(gpu_be, dout, x, sizeof(float) * T * E), SPK_OK);
    job bc = {.op = OP_BIAS, .out = c, .w = w, .n_tok = T, .n = E};
    job bg = {.op = OP_BIAS, .out = dout, .w = dw, .n_tok = T, .n = E};
    run_on(cpu_be, &bc, NULL);
    run_on(gpu_be, &bg, NULL);
    to_host(g, dout, sizeof(float) * T * E);
    for (int i = 0; i < T * E; i++)
        close_to(g[i], c[i], 1e-6 * (1 + fabs(c[i])), "add_bias", i);
    /* per-head RMSNorm in place (qwen3's Q/K norms): T rows of NH heads of HD */
    memcpy(c, x, sizeof(float) * T * NH * HD);
    ck_assert_int_eq(gpu_be->ops->copy(gpu_be, dout, x, sizeof(float) * T * NH * HD), SPK_OK);
    job jc = {.op = OP_HEADNORM, .out = c, .w = w, .n_tok = T};
    job jg = {.op = OP_HEADNORM, .out = dout, .w = dw, .n_tok = T};
    run_on(cpu_be, &jc, NULL);
    run_on(gpu_be, &jg, NULL);
    to_host(g, dout, sizeof(float) * T * NH * HD);
    for (int i = 0; i < T * NH * HD; i++)
        close_to(g[i], c[i], 1e-5 * (1 + fabs(c[i])), "head_rmsnorm", i);
    gpu_be->ops->free(gpu_be, dx), gpu_be->ops->free(gpu_be, dy), gpu_be->ops->free(gpu_be, dw);
    gpu_be->ops->free(gpu_be, dout);
    free(x), free(y), free(w), free(c), free(g);
}
END_TEST

/* Random blocks of a type: quantized by the synthetic writer where it can, else random bytes with
 * sane f16 scales (the K-quants). */
static void make_rows(uint8_t *dst, spk_dtype t, int n_in, int n_out, uint64_t seed)
{
    const size_t rb = spk_dtype_row_size(t, (size_t)n_in);
    float *row = malloc(sizeof(float) * (size_t)n_in);
    for (int r = 0; r < n_out; r++) {
        spk_test_fill(row, (size_t)n_in, seed + (uint64_t)r, -0.5f, 0.5f);
        if (t != SPK_DT_Q4_K && t != SPK_DT_Q6_K) {
            ck_assert_uint_eq(spk_synth_quantize_row(dst + rb * (size_t)r, row, t, n_in), rb);
            continue;
        }
        uint64_t st = seed * 7919 + (uint64_t)r;
        uint8_t *p = dst + rb * (size_t)r;
        for (size_t i = 0; i < rb; i++)
            p[i] = (uint8_t)spk_test_rand(&st);
        const size_t bsz = t == SPK_DT_Q4_K ? sizeof(spk_block_q4_K) : sizeof(spk_block_q6_K);
        for (size_t b = 0; b < rb / bsz; b++) {
            uint8_t *blk = p + b * bsz;
            const spk_f16 d = spk_f32_to_f16(spk_test_randf(&st, 0.001f, 0.01f));
            if (t == SPK_DT_Q4_K) {
                const spk_f16 dmin = spk_f32_to_f16(spk_test_randf(&st, 0.001f, 0.01f));
                memcpy(blk, &d, 2);
                memcpy(blk + 2, &dmin, 2);
            } else {
                memcpy(blk + bsz - 2, &d, 2);
            }
        }
    }
    free(row);
}

static const spk_dtype k_types[] = {SPK_DT_F32,  SPK_DT_F16,  SPK_DT_BF16, SPK_DT_Q8_0, SPK_DT_Q4_0,
                                    SPK_DT_Q4_1, SPK_DT_Q4_K, SPK_DT_Q6_K, SPK_DT_Q5_0, SPK_DT_Q5_1,
                                    SPK_DT_Q5_K, SPK_DT_Q3_K, SPK_DT_Q2_K, SPK_DT_MXFP4};

START_TEST(matmul_and_embed_match_cpu_every_type)
{
    const spk_dtype t = k_types[_i];
    const int n_in = 512, n_out = 67;
    const size_t rb = spk_dtype_row_size(t, n_in);
    uint8_t *wq = malloc(rb * n_out);
    make_rows(wq, t, n_in, n_out, 100);
    float *wf = malloc(sizeof(float) * n_in * n_out);
    for (int r = 0; r < n_out; r++)
        spk_dequantize_row(wf + (size_t)r * n_in, wq + rb * (size_t)r, t, n_in);
    void *dwq = NULL;
    ck_assert_int_eq(gpu_be->ops->upload(gpu_be, wq, rb * n_out, &dwq), SPK_OK);
    spk_wmat mc = {wq, t, n_in, n_out, 0}, mg = {dwq, t, n_in, n_out, 0};
    static const int k_T[] = {1, 5, 17};
    for (size_t ti = 0; ti < 3; ti++) {
        const int T = k_T[ti];
        float *x = malloc(sizeof(float) * T * n_in), *c = malloc(sizeof(float) * T * n_out),
              *g = malloc(sizeof(float) * T * n_out);
        spk_test_fill(x, (size_t)T * n_in, 7 + ti, -1, 1);
        void *ac = cpu_be->ops->alloc(cpu_be, cpu_be->ops->act_size(cpu_be, &mc, T));
        void *ag = gpu_be->ops->alloc(gpu_be, gpu_be->ops->act_size(gpu_be, &mg, T));
        float *dx = dev_copy(x, sizeof(float) * T * n_in), *dout = gpu_be->ops->alloc(gpu_be, sizeof(float) * T * n_out);
        job jc = {.op = OP_MATMUL, .out = c, .a = x, .mat = &mc, .act = ac, .n_tok = T};
        job jg = {.op = OP_MATMUL, .out = dout, .a = dx, .mat = &mg, .act = ag, .n_tok = T};
        run_on(cpu_be, &jc, NULL);
        run_on(gpu_be, &jg, NULL);
        to_host(g, dout, sizeof(float) * T * n_out);
        const int quant = t != SPK_DT_F32 && t != SPK_DT_F16 && t != SPK_DT_BF16;
        for (int tk = 0; tk < T; tk++)
            for (int r = 0; r < n_out; r++) {
                double mag = 0;
                for (int i = 0; i < n_in; i++)
                    mag += fabs((double)wf[(size_t)r * n_in + i] * x[(size_t)tk * n_in + i]);
                const double tol = (quant ? 2e-2 : (t == SPK_DT_BF16 ? 1e-2 : 1e-4)) * mag + 1e-5;
                close_to(g[(size_t)tk * n_out + r], c[(size_t)tk * n_out + r], tol, spk_dtype_get(t)->name,
                         tk * n_out + r);
            }
        cpu_be->ops->free(cpu_be, ac);
        gpu_be->ops->free(gpu_be, ag), gpu_be->ops->free(gpu_be, dx), gpu_be->ops->free(gpu_be, dout);
        free(x), free(c), free(g);
    }
    /* embedding rows of a vocabulary slice [v0, v0 + n_out): outside rows are zeros */
    static const int32_t tok[] = {5, 80, 4, 71, 0, 30};
    const int v0 = 5;
    float *c = malloc(sizeof(float) * 6 * n_in), *g = malloc(sizeof(float) * 6 * n_in);
    float *dout = gpu_be->ops->alloc(gpu_be, sizeof(float) * 6 * n_in);
    spk_step s = {.n_tok = 6, .token = tok, .pos = tok, .seq = (const int32_t[]){0, 0, 0, 0, 0, 0}};
    job jc = {.op = OP_EMBED, .out = c, .mat = &mc, .token = tok, .n_tok = 6, .v0 = v0, .n = n_in};
    job jg = {.op = OP_EMBED, .out = dout, .mat = &mg, .token = tok, .n_tok = 6, .v0 = v0, .n = n_in};
    run_on(cpu_be, &jc, NULL);
    run_on(gpu_be, &jg, &s); /* the GPU reads the batch's tokens that begin() uploaded */
    to_host(g, dout, sizeof(float) * 6 * n_in);
    for (int i = 0; i < 6 * n_in; i++)
        close_to(g[i], c[i], 1e-6 * (1 + fabs(c[i])), "embed", i);
    gpu_be->ops->free(gpu_be, dout);
    gpu_be->ops->release(gpu_be, dwq);
    free(c), free(g), free(wq), free(wf);
}
END_TEST

/* Paged KV over scattered blocks: a prefill of two sequences (40 and 23 tokens) then a decode
 * token each, rope (normal, then NEOX pairs) + store + attention on both backends, outputs and
 * caches compared. */
START_TEST(paged_rope_attention_match_cpu)
{
    /* loops 2 and 3: gpt-oss's learned sinks and a 16-position sliding window (the 40-token
     * sequence slides past it) */
    const int neox = _i & 1, gptoss = _i >= 2;
    float sinks[NH];
    spk_test_fill(sinks, NH, 77, -2, 2);
    float *dsinks = dev_copy(sinks, sizeof sinks);
    const int QD = NH * HD, KVD = NKV * HD, n_blocks = 12;
    spk_kv_cache kc = {.rows = (size_t)n_blocks * BS, .kv_dim = KVD, .n_kv_heads = NKV, .head_dim = HD,
                       .block_size = BS, .n_ctx = CTX};
    spk_kv_cache kg = kc;
    const size_t kv_elems = kc.rows * KVD;
    kc.k = cpu_be->ops->alloc(cpu_be, sizeof(spk_f16) * kv_elems);
    kc.v = cpu_be->ops->alloc(cpu_be, sizeof(spk_f16) * kv_elems);
    kg.k = gpu_be->ops->alloc(gpu_be, sizeof(spk_f16) * kv_elems);
    kg.v = gpu_be->ops->alloc(gpu_be, sizeof(spk_f16) * kv_elems);
    float freqs[ROT / 2];
    spk_rope_freqs(freqs, ROT, 500000.0f, NULL);
    float *dfreqs = dev_copy(freqs, sizeof freqs);
    static const int32_t table[] = {7, 2, 9, 4, 5}, table_off[] = {0, 3};
    static const uint8_t contig[] = {0, 1};
    for (int phase = 0; phase < 2; phase++) {
        const int T = phase == 0 ? 63 : 2;
        int32_t pos[63], seq[63], tokv[63] = {0};
        for (int t = 0; t < T; t++) {
            seq[t] = phase == 0 ? (t < 40 ? 0 : 1) : t;
            pos[t] = phase == 0 ? (t < 40 ? t : t - 40) : (t == 0 ? 40 : 23);
        }
        float *q = malloc(sizeof(float) * T * QD), *k = malloc(sizeof(float) * T * KVD),
              *v = malloc(sizeof(float) * T * KVD), *c = malloc(sizeof(float) * T * QD),
              *g = malloc(sizeof(float) * T * QD);
        spk_test_fill(q, (size_t)T * QD, 20 + (uint64_t)phase, -1, 1);
        spk_test_fill(k, (size_t)T * KVD, 30 + (uint64_t)phase, -1, 1);
        spk_test_fill(v, (size_t)T * KVD, 40 + (uint64_t)phase, -1, 1);
        float *dq = dev_copy(q, sizeof(float) * T * QD), *dk = dev_copy(k, sizeof(float) * T * KVD),
              *dv = dev_copy(v, sizeof(float) * T * KVD), *dout = gpu_be->ops->alloc(gpu_be, sizeof(float) * T * QD);
        spk_step s = {.n_tok = T, .token = tokv, .pos = pos, .seq = seq, .table_off = table_off,
                      .block_table = table, .contig = contig, .n_seqs = 2, .n_table = 5};
        job jc = {.op = OP_ROPE_ATTN, .out = c, .q = q, .k = k, .v = v, .freqs = freqs, .kv = &kc, .step = &s,
                  .neox = neox, .sinks = gptoss ? sinks : NULL, .window = gptoss ? 16 : 0};
        job jg = {.op = OP_ROPE_ATTN, .out = dout, .q = dq, .k = dk, .v = dv, .freqs = dfreqs, .kv = &kg,
                  .step = &s, .neox = neox, .sinks = gptoss ? dsinks : NULL, .window = gptoss ? 16 : 0};
        run_on(cpu_be, &jc, &s);
        run_on(gpu_be, &jg, &s);
        to_host(g, dout, sizeof(float) * T * QD);
        for (int i = 0; i < T * QD; i++)
            close_to(g[i], c[i], 2e-3, "attention", i);
        gpu_be->ops->free(gpu_be, dq), gpu_be->ops->free(gpu_be, dk), gpu_be->ops->free(gpu_be, dv);
        gpu_be->ops->free(gpu_be, dout);
        free(q), free(k), free(v), free(c), free(g);
    }
    /* the caches: the same f16 values (RoPE'd K within one f16 ulp) in the same rows */
    spk_f16 *hk = malloc(sizeof(spk_f16) * kv_elems), *hv = malloc(sizeof(spk_f16) * kv_elems);
    to_host(hk, kg.k, sizeof(spk_f16) * kv_elems);
    to_host(hv, kg.v, sizeof(spk_f16) * kv_elems);
    for (size_t i = 0; i < kv_elems; i++) {
        ck_assert_uint_eq(hv[i], kc.v[i]);
        const float a = spk_f16_to_f32(hk[i]), b = spk_f16_to_f32(kc.k[i]);
        ck_assert_msg(fabsf(a - b) <= 1e-3f * (1 + fabsf(b)), "K cache [%zu]: cuda %g cpu %g", i, a, b);
    }
    free(hk), free(hv);
    cpu_be->ops->free(cpu_be, kc.k), cpu_be->ops->free(cpu_be, kc.v);
    gpu_be->ops->free(gpu_be, kg.k), gpu_be->ops->free(gpu_be, kg.v), gpu_be->ops->free(gpu_be, dfreqs);
    gpu_be->ops->free(gpu_be, dsinks);
}
END_TEST

/* The MoE op on both backends: 8 experts, 2 per token, stacked expert matrices of one type;
 * loop variants: qwen3moe routing (softmax over all, renormalised) on every expert, gpt-oss
 * (softmax over the chosen, clamped SwiGLU, biases), and expert parallelism (experts [2, 6)
 * here, the others add nothing). Tolerance as the matmul's: the CPU multiplies Q8-quantized
 * activations; the router is F32 so both pick the same experts. */
static const spk_dtype k_moe_types[] = {SPK_DT_F32, SPK_DT_Q8_0, SPK_DT_Q4_K, SPK_DT_MXFP4};

START_TEST(moe_matches_cpu)
{
    const spk_dtype t = k_moe_types[_i % 4];
    const int variant = _i / 4; /* 0 qwen3moe, 1 gpt-oss, 2 qwen3moe with EP */
    enum { N = 8, K = 2, E = 256, F = 256 };
    const size_t rb_g = spk_dtype_row_size(t, E), rb_d = spk_dtype_row_size(t, F);
    uint8_t *wg = malloc(rb_g * F * N), *wu = malloc(rb_g * F * N), *wd = malloc(rb_d * E * N);
    make_rows(wg, t, E, F * N, 300);
    make_rows(wu, t, E, F * N, 400);
    make_rows(wd, t, F, E * N, 500);
    float *wr = malloc(sizeof(float) * E * N), *rb = malloc(sizeof(float) * N), *gb = malloc(sizeof(float) * N * F),
          *ub = malloc(sizeof(float) * N * F), *db = malloc(sizeof(float) * N * E);
    spk_test_fill(wr, (size_t)E * N, 600, -0.5f, 0.5f);
    spk_test_fill(rb, N, 601, -0.5f, 0.5f);
    spk_test_fill(gb, (size_t)N * F, 602, -0.5f, 0.5f);
    spk_test_fill(ub, (size_t)N * F, 603, -0.5f, 0.5f);
    spk_test_fill(db, (size_t)N * E, 604, -0.5f, 0.5f);
    const int e0 = variant == 2 ? 2 : 0, e1 = variant == 2 ? 6 : N;
    spk_moe mc = {.router = {wr, SPK_DT_F32, E, N},
                  .gate = {wg + rb_g * F * (size_t)e0, t, E, F},
                  .up = {wu + rb_g * F * (size_t)e0, t, E, F},
                  .down = {wd + rb_d * E * (size_t)e0, t, F, E},
                  .stride_gate = rb_g * F, .stride_up = rb_g * F, .stride_down = rb_d * E,
                  .n_expert = N, .n_used = K, .e0 = e0, .e1 = e1,
                  .flags = variant == 1 ? SPK_MOE_SWIGLU_OAI : SPK_MOE_SOFTMAX_ALL | SPK_MOE_NORM_TOPK,
                  .alpha = 1.702f, .limit = 7.0f};
    if (variant == 1) {
        mc.router_bias = rb;
        mc.gate_bias = gb;
        mc.up_bias = ub;
        mc.down_bias = db;
    }
    spk_moe mg = mc;
    mg.router.data = dev_copy(wr, sizeof(float) * E * N);
    mg.gate.data = dev_copy(mc.gate.data, rb_g * F * (size_t)(e1 - e0));
    mg.up.data = dev_copy(mc.up.data, rb_g * F * (size_t)(e1 - e0));
    mg.down.data = dev_copy(mc.down.data, rb_d * E * (size_t)(e1 - e0));
    if (variant == 1) {
        mg.router_bias = dev_copy(rb, sizeof(float) * N);
        mg.gate_bias = dev_copy(gb, sizeof(float) * N * F);
        mg.up_bias = dev_copy(ub, sizeof(float) * N * F);
        mg.down_bias = dev_copy(db, sizeof(float) * N * E);
    }
    static const int k_T[] = {1, 13};
    for (int ti = 0; ti < 2; ti++) {
        const int T = k_T[ti];
        float *x = malloc(sizeof(float) * T * E), *c = malloc(sizeof(float) * T * E), *g = malloc(sizeof(float) * T * E);
        spk_test_fill(x, (size_t)T * E, 700 + (uint64_t)ti, -1, 1);
        void *sc = cpu_be->ops->alloc(cpu_be, cpu_be->ops->moe_size(cpu_be, &mc, T));
        void *sg = gpu_be->ops->alloc(gpu_be, gpu_be->ops->moe_size(gpu_be, &mg, T));
        float *dx = dev_copy(x, sizeof(float) * T * E), *dout = gpu_be->ops->alloc(gpu_be, sizeof(float) * T * E);
        job jc = {.op = OP_MOE, .out = c, .a = x, .moe = &mc, .act = sc, .n_tok = T};
        job jg = {.op = OP_MOE, .out = dout, .a = dx, .moe = &mg, .act = sg, .n_tok = T};
        run_on(cpu_be, &jc, NULL);
        run_on(gpu_be, &jg, NULL);
        to_host(g, dout, sizeof(float) * T * E);
        double mx = 0, worst = 0;
        for (int i = 0; i < T * E; i++)
            mx = fmax(mx, fabs(c[i]));
        const int quant = t != SPK_DT_F32;
        for (int i = 0; i < T * E; i++) {
            worst = fmax(worst, fabs((double)g[i] - c[i]));
            close_to(g[i], c[i], (quant ? 2e-2 : 1e-4) * (mx + 1), spk_dtype_get(t)->name, i);
        }
        printf("moe %s variant %d T %d: max |cuda - cpu| %.3g (max |out| %.3g)\n", spk_dtype_get(t)->name, variant, T,
               worst, mx);
        cpu_be->ops->free(cpu_be, sc);
        gpu_be->ops->free(gpu_be, sg), gpu_be->ops->free(gpu_be, dx), gpu_be->ops->free(gpu_be, dout);
        free(x), free(c), free(g);
    }
    gpu_be->ops->free(gpu_be, (void *)mg.router.data), gpu_be->ops->free(gpu_be, (void *)mg.gate.data);
    gpu_be->ops->free(gpu_be, (void *)mg.up.data), gpu_be->ops->free(gpu_be, (void *)mg.down.data);
    if (variant == 1) {
        gpu_be->ops->free(gpu_be, (void *)mg.router_bias), gpu_be->ops->free(gpu_be, (void *)mg.gate_bias);
        gpu_be->ops->free(gpu_be, (void *)mg.up_bias), gpu_be->ops->free(gpu_be, (void *)mg.down_bias);
    }
    free(wg), free(wu), free(wd), free(wr), free(rb), free(gb), free(ub), free(db);
}
END_TEST

/* A model on both backends: a prefill of a prompt, then 24 greedy decode steps, each backend
 * feeding its own choices; logits compared at every step. Loop 0: the default model; 1 and 2: the
 * synthetic F32 qwen3moe-tiny and gpt-oss-tiny (MoE, sinks, sliding window, biases, YaRN). */
static const char *const k_synth_models[] = {NULL, "qwen3moe-tiny", "gpt-oss-tiny"};

START_TEST(default_model_greedy_matches_cpu)
{
    char dir[64] = "", synth_path[128] = "";
    const char *path = spk_test_model_path();
    if (_i > 0) {
        snprintf(dir, sizeof dir, "/tmp/spk-test-cuda-model.XXXXXX");
        ck_assert_ptr_nonnull(mkdtemp(dir));
        snprintf(synth_path, sizeof synth_path, "%s/%s.gguf", dir, k_synth_models[_i]);
        spk_synth_params sp;
        ck_assert_int_eq(spk_synth_preset(k_synth_models[_i], &sp), SPK_OK);
        sp.seed = 1;
        ck_assert_msg(spk_synth_write(synth_path, &sp) == SPK_OK, "%s", spk_last_error());
        path = synth_path;
    }
    if (!path) {
        printf("SKIP: default model not found (set SPK_TEST_MODEL)\n");
        return;
    }
    spk_gguf_file *gf;
    spk_hparams hp;
    spk_weights W;
    ck_assert_int_eq(spk_gguf_open(path, &gf), SPK_OK);
    ck_assert_int_eq(spk_llama_load(gf, &hp, &W), SPK_OK);
    spk_llama *mc, *mg;
    ck_assert_int_eq(spk_llama_create_paged(&hp, &W, NULL, 256, 16, 16, 64, 2, SPK_BACKEND_CPU, 0, &mc), SPK_OK);
    ck_assert_msg(spk_llama_create_paged(&hp, &W, NULL, 256, 16, 16, 64, 1, SPK_BACKEND_CUDA, 0, &mg) == SPK_OK,
                  "%s", spk_last_error());
    const int V = hp.n_vocab;
    float *lc = malloc(sizeof(float) * V), *lg = malloc(sizeof(float) * V);
    static const int32_t prompt[] = {1, 504, 3458, 282, 4649, 314, 253, 1345, 28, 378, 5248, 30};
    const int np = sizeof prompt / sizeof *prompt;
    int32_t pos[64], seq[64] = {0}, tok_c = 0, tok_g = 0;
    uint8_t want[64] = {0};
    static const int32_t table[] = {0, 1, 2, 3}, toff[] = {0};
    double sum_diff = 0;
    int n_cmp = 0, same = 0, decided = 0;
    for (int step = 0; step <= 24; step++) {
        const int T = step == 0 ? np : 1;
        int32_t tc[64], tg[64];
        for (int t = 0; t < T; t++) {
            pos[t] = step == 0 ? t : np + step - 1;
            tc[t] = step == 0 ? prompt[t] % hp.n_vocab : tok_c;
            tg[t] = step == 0 ? prompt[t] % hp.n_vocab : tok_g;
            want[t] = t == T - 1;
        }
        spk_batch bc = {.n_tok = T, .token = tc, .pos = pos, .seq = seq, .want_logits = want, .n_seqs = 1,
                        .table_off = toff, .block_table = table, .n_table = 4};
        spk_batch bg = bc;
        bg.token = tg;
        ck_assert_int_eq(spk_llama_forward(mc, &bc, NULL, lc), SPK_OK);
        ck_assert_msg(spk_llama_forward(mg, &bg, NULL, lg) == SPK_OK, "%s", spk_last_error());
        for (int i = 0; i < V; i++)
            sum_diff += fabs((double)lc[i] - lg[i]);
        n_cmp += V;
        tok_c = spk_test_argmax(lc, V);
        tok_g = spk_test_argmax(lg, V);
        float second = -INFINITY;
        for (int i = 0; i < V; i++)
            if (i != tok_c && lc[i] > second)
                second = lc[i];
        if (lc[tok_c] - second > 0.5f) { /* a clear choice: both backends must make it */
            decided++;
            ck_assert_msg(tok_c == tok_g, "step %d: cpu %d (gap %.3f), cuda %d", step, tok_c, lc[tok_c] - second,
                          tok_g);
            same++;
        }
        if (tok_c != tok_g) /* a near tie went the other way: the sequences differ from here */
            break;
    }
    const double mean = sum_diff / n_cmp;
    printf("cuda vs cpu, %s: mean |logit diff| %.4f over %d logits; %d/%d clear choices equal\n",
           _i ? k_synth_models[_i] : "default model", mean, n_cmp, same, decided);
    ck_assert_msg(mean < 0.05, "mean |logit diff| %.4f", mean);
    spk_llama_free(mc);
    spk_llama_free(mg);
    spk_llama_weights_free(&W);
    spk_gguf_close(gf);
    free(lc), free(lg);
    if (_i > 0) {
        unlink(synth_path);
        rmdir(dir);
    }
}
END_TEST

int main(void)
{
    /* Skip, with the reason, where the module or a GPU is missing. */
    spk_transport_test_set_plugin_dir(module_dir());
    spk_backend *probe = NULL;
    if (spk_backend_create(SPK_BACKEND_CUDA, 0, 1, CTX, HD, &probe) != SPK_OK) {
        char why[512];
        snprintf(why, sizeof why, "no CUDA backend here: %s", spk_last_error());
        spk_test_skip(why);
    }
    spk_backend_destroy(probe);
    Suite *s = suite_create("backend_cuda");
    TCase *tc = tcase_create("vs_cpu");
    tcase_set_timeout(tc, 300);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, elementwise_and_rmsnorm_match_cpu);
    tcase_add_loop_test(tc, matmul_and_embed_match_cpu_every_type, 0, (int)(sizeof k_types / sizeof *k_types));
    tcase_add_loop_test(tc, paged_rope_attention_match_cpu, 0, 4);
    tcase_add_loop_test(tc, moe_matches_cpu, 0, 12);
    tcase_add_loop_test(tc, default_model_greedy_matches_cpu, 0, 3);
    suite_add_tcase(s, tc);
    return spk_test_run(s);
}
