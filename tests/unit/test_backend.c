/*
 * Backend conformance: every op of the backend table (backend/backend.h), run through the
 * backend's own dispatch (run + barriers, several threads), against float64 references on random
 * inputs of model-like shapes. Every backend the build has runs this suite; today that is the CPU
 * backend (1 and 3 threads). Tolerances: float rows 1e-5 relative; matmul against 8-bit quantized
 * activations 1.5% of sum |w x| (the activation rounding), float weights 1e-4; attention over the
 * f16 cache 1e-4 with the reference reading the same f16-rounded K and V.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "cpu/ops.h"
#include "tools/synth.h"
#include "testutil.h"

enum { E = 128, HD = 32, NH = 4, NKV = 2, ROT = 32, BS = 4, CTX = 16 };

static const int k_threads[] = {1, 3};
static int g_threads;

static spk_backend *make(void)
{
    spk_backend *be = NULL;
    ck_assert_int_eq(spk_backend_cpu_create(g_threads, CTX, HD, &be), SPK_OK);
    return be;
}

/* ---- one op per run: the closure a test hands to ops->run ---- */
typedef struct job {
    spk_backend *be;
    int op;
    float *out, *a, *b;
    const float *w;
    const int *rows;
    int n_tok, n;
    const spk_wmat *mat;
    void *act;
    const int32_t *token;
    int v0;
    float *q, *k, *v;
    const float *freqs;
    const spk_kv_cache *kv;
    int layer;
    const spk_step *step;
    int neox, n_heads;
    const float *sinks; /* gpt-oss attention: sinks and window */
    int window;
} job;

enum { OP_EMBED, OP_COPY, OP_RMSNORM, OP_HEAD_NORM, OP_MATMUL, OP_ROPE_ATTN, OP_SWIGLU, OP_ADD };

static void run_job(void *arg, int ith, int nth)
{
    job *j = arg;
    spk_backend *be = j->be;
    const spk_backend_ops *o = be->ops;
    switch (j->op) {
    case OP_EMBED: o->embed(be, j->out, j->mat, j->token, j->n_tok, j->v0, j->n, ith, nth); break;
    case OP_COPY: o->copy_rows(be, j->out, j->a, j->n_tok, j->n, ith, nth); break;
    case OP_RMSNORM: o->rmsnorm(be, j->out, j->a, j->rows, j->w, j->n_tok, j->n, 1e-5f, ith, nth); break;
    case OP_HEAD_NORM: o->head_rmsnorm(be, j->a, j->w, j->n_tok, j->n_heads, j->n, 1e-6f, ith, nth); break;
    case OP_MATMUL:
        o->quantize(be, j->act, j->mat, j->a, j->n_tok, ith, nth);
        o->barrier(be);
        o->matmul(be, j->out, j->mat, j->act, j->n_tok, ith, nth);
        break;
    case OP_ROPE_ATTN:
        o->rope_store(be, j->q, j->k, j->v, NH, ROT, j->neox, j->freqs, j->kv, j->layer, j->step, ith, nth);
        o->barrier(be);
        o->attention(be, j->out, j->q, NH, 1.0f / sqrtf((float)HD), j->sinks, j->window, j->kv, j->layer, j->step,
                     ith, nth);
        break;
    case OP_SWIGLU: o->swiglu(be, j->out, j->a, j->b, j->n_tok, j->n, ith, nth); break;
    case OP_ADD: o->add(be, j->out, j->a, j->b, j->n_tok, j->n, ith, nth); break;
    }
}

static void close_to(double got, double want, double tol, const char *what, int i)
{
    ck_assert_msg(fabs(got - want) <= tol, "%s [%d]: got %.9g, want %.9g (tol %.3g), %d threads", what, i, got,
                  want, tol, g_threads);
}

START_TEST(rows_ops_match_reference)
{
    g_threads = k_threads[_i];
    spk_backend *be = make();
    const int T = 7;
    float *x = malloc(sizeof(float) * T * E), *y = malloc(sizeof(float) * T * E), *w = malloc(sizeof(float) * E);
    float *out = malloc(sizeof(float) * T * E);
    spk_test_fill(x, (size_t)T * E, 1, -2, 2);
    spk_test_fill(y, (size_t)T * E, 2, -2, 2);
    spk_test_fill(w, E, 3, 0.5f, 1.5f);
    /* rmsnorm of gathered rows */
    static const int rows[] = {6, 0, 3};
    job j = {.be = be, .op = OP_RMSNORM, .out = out, .a = x, .w = w, .rows = rows, .n_tok = 3, .n = E};
    be->ops->run(be, run_job, &j);
    for (int r = 0; r < 3; r++) {
        double ss = 0;
        for (int i = 0; i < E; i++)
            ss += (double)x[rows[r] * E + i] * x[rows[r] * E + i];
        double inv = 1.0 / sqrt(ss / E + 1e-5);
        for (int i = 0; i < E; i++) {
            double want = x[rows[r] * E + i] * inv * w[i];
            close_to(out[r * E + i], want, 1e-5 * (1 + fabs(want)), "rmsnorm", r * E + i);
        }
    }
    /* per-head rmsnorm in place: T rows of NH heads of HD, one weight vector of HD */
    float *hx = malloc(sizeof(float) * T * NH * HD), *hw = malloc(sizeof(float) * HD);
    spk_test_fill(hx, (size_t)T * NH * HD, 4, -3, 3);
    spk_test_fill(hw, HD, 5, 0.5f, 1.5f);
    double *href = malloc(sizeof(double) * T * NH * HD);
    for (int r = 0; r < T * NH; r++) {
        double ss = 0;
        for (int i = 0; i < HD; i++)
            ss += (double)hx[r * HD + i] * hx[r * HD + i];
        double inv = 1.0 / sqrt(ss / HD + 1e-6);
        for (int i = 0; i < HD; i++)
            href[r * HD + i] = hx[r * HD + i] * inv * hw[i];
    }
    j = (job){.be = be, .op = OP_HEAD_NORM, .a = hx, .w = hw, .n_tok = T, .n_heads = NH, .n = HD};
    be->ops->run(be, run_job, &j);
    for (int i = 0; i < T * NH * HD; i++)
        close_to(hx[i], href[i], 1e-5 * (1 + fabs(href[i])), "head_rmsnorm", i);
    free(hx), free(hw), free(href);
    /* swiglu, add, copy */
    j = (job){.be = be, .op = OP_SWIGLU, .out = out, .a = x, .b = y, .n_tok = T, .n = E};
    be->ops->run(be, run_job, &j);
    for (int i = 0; i < T * E; i++) {
        double g = x[i], want = g / (1 + exp(-g)) * y[i];
        close_to(out[i], want, 1e-5 * (1 + fabs(want)), "swiglu", i);
    }
    j = (job){.be = be, .op = OP_ADD, .out = out, .a = x, .b = y, .n_tok = T, .n = E};
    be->ops->run(be, run_job, &j);
    for (int i = 0; i < T * E; i++)
        ck_assert_float_eq(out[i], x[i] + y[i]);
    j = (job){.be = be, .op = OP_COPY, .out = out, .a = y, .n_tok = T, .n = E};
    be->ops->run(be, run_job, &j);
    ck_assert(memcmp(out, y, sizeof(float) * T * E) == 0);
    free(x), free(y), free(w), free(out);
    spk_backend_destroy(be);
}
END_TEST

/* Embedding rows of a vocabulary slice [v0, v0 + rows): rows outside are zeros. */
START_TEST(embed_matches_dequantized_rows)
{
    g_threads = k_threads[_i];
    spk_backend *be = make();
    const int V = 9, v0 = 5;
    const size_t rb = spk_dtype_row_size(SPK_DT_Q8_0, E);
    uint8_t *tab = malloc(rb * V);
    float *row = malloc(sizeof(float) * E);
    for (int r = 0; r < V; r++) {
        spk_test_fill(row, E, 10 + (uint64_t)r, -1, 1);
        ck_assert_uint_eq(spk_synth_quantize_row(tab + rb * (size_t)r, row, SPK_DT_Q8_0, E), rb);
    }
    spk_wmat m = {tab, SPK_DT_Q8_0, E, V, 0};
    static const int32_t tok[] = {5, 13, 4, 9, 0, 14};
    float *out = malloc(sizeof(float) * 6 * E);
    job j = {.be = be, .op = OP_EMBED, .out = out, .mat = &m, .token = tok, .n_tok = 6, .v0 = v0, .n = E};
    be->ops->run(be, run_job, &j);
    for (int t = 0; t < 6; t++) {
        int r = tok[t] - v0;
        if (r >= 0 && r < V)
            spk_dequantize_row(row, tab + rb * (size_t)r, SPK_DT_Q8_0, E);
        else
            memset(row, 0, sizeof(float) * E);
        ck_assert(memcmp(out + (size_t)t * E, row, sizeof(float) * E) == 0);
    }
    free(tab), free(row), free(out);
    spk_backend_destroy(be);
}
END_TEST

static const spk_dtype k_types[] = {SPK_DT_F32, SPK_DT_F16, SPK_DT_BF16, SPK_DT_Q8_0, SPK_DT_Q4_0, SPK_DT_Q4_1};
enum { N_TYPES = sizeof k_types / sizeof k_types[0] };

/* quantize + matmul, every weight type the writer makes, shapes with a tail of output rows. */
START_TEST(matmul_matches_float64_every_type)
{
    for (int ti = 0; ti < 2; ti++) {
        g_threads = k_threads[ti];
        spk_backend *be = make();
        const spk_dtype t = k_types[_i];
        const int n_in = 256, n_out = 37, T = 5;
        const size_t rb = spk_dtype_row_size(t, n_in);
        uint8_t *wq = malloc(rb * n_out);
        float *wf = malloc(sizeof(float) * n_in * n_out), *x = malloc(sizeof(float) * T * n_in);
        float *out = malloc(sizeof(float) * T * n_out);
        for (int r = 0; r < n_out; r++) {
            spk_test_fill(wf + (size_t)r * n_in, n_in, 100 + (uint64_t)r, -0.5f, 0.5f);
            ck_assert_uint_eq(spk_synth_quantize_row(wq + rb * (size_t)r, wf + (size_t)r * n_in, t, n_in), rb);
            spk_dequantize_row(wf + (size_t)r * n_in, wq + rb * (size_t)r, t, n_in); /* the weights as stored */
        }
        spk_test_fill(x, (size_t)T * n_in, 7, -1, 1);
        spk_wmat m = {wq, t, n_in, n_out, 0};
        void *act = be->ops->alloc(be, be->ops->act_size(be, &m, T));
        job j = {.be = be, .op = OP_MATMUL, .out = out, .a = x, .mat = &m, .act = act, .n_tok = T};
        be->ops->run(be, run_job, &j);
        const int quant = t != SPK_DT_F32 && t != SPK_DT_F16 && t != SPK_DT_BF16;
        for (int tk = 0; tk < T; tk++)
            for (int r = 0; r < n_out; r++) {
                double want = 0, mag = 0;
                for (int i = 0; i < n_in; i++) {
                    double p = (double)wf[(size_t)r * n_in + i] * x[(size_t)tk * n_in + i];
                    want += p;
                    mag += fabs(p);
                }
                /* BF16 weights multiply rounded activations too (bf16 x bf16 on some paths) */
                double tol = quant ? 0.015 * mag + 1e-4 : (t == SPK_DT_BF16 ? 0.01 * mag : 1e-4 * mag) + 1e-5;
                close_to(out[(size_t)tk * n_out + r], want, tol, spk_dtype_get(t)->name, tk * n_out + r);
            }
        be->ops->free(be, act);
        free(wq), free(wf), free(x), free(out);
        spk_backend_destroy(be);
    }
}
END_TEST

/* Reference RoPE in double: pairs (2i, 2i+1) ("normal" mode) or (i, i + ROT/2) (NEOX). */
static void rope_ref(double *x, int pos, const float *freqs, int neox)
{
    for (int i = 0; i < ROT / 2; i++) {
        double a = pos * (double)freqs[i], c = cos(a), s = sin(a);
        const int i0 = neox ? i : 2 * i, i1 = neox ? i + ROT / 2 : 2 * i + 1;
        double x0 = x[i0], x1 = x[i1];
        x[i0] = x0 * c - x1 * s;
        x[i1] = x0 * s + x1 * c;
    }
}

static double f16r(double v) { return spk_f16_to_f32(spk_f32_to_f16((float)v)); }

/*
 * Paged KV: two sequences whose blocks are scattered (and one contiguous), a 6-token prefill
 * each, then one decode token each; every query head attends to its GQA KV head over positions
 * 0..pos of its own sequence. Reference in double over the f16-rounded keys and values.
 * Both RoPE modes (llama's normal pairs, Qwen3's NEOX halves) with 1 and 3 threads, and with
 * gpt-oss's learned sinks (one logit per head in the denominator) and a sliding window of 3.
 */
START_TEST(paged_attention_matches_reference)
{
    g_threads = k_threads[_i % 2];
    const int neox = _i / 2 % 2, oss = _i / 4; /* oss: gpt-oss's sinks per head and a window of 3 */
    float sinks[NH];
    for (int h = 0; h < NH; h++)
        sinks[h] = 0.7f * (float)h - 2.0f;
    const int window = oss ? 3 : 0;
    spk_backend *be = make();
    const int L = 2, layer = 1, n_blocks = 12, QD = NH * HD, KVD = NKV * HD;
    spk_kv_cache kv = {.rows = (size_t)n_blocks * BS, .kv_dim = KVD, .n_kv_heads = NKV, .head_dim = HD,
                       .block_size = BS, .n_ctx = CTX};
    kv.k = be->ops->alloc(be, sizeof(spk_f16) * (size_t)L * kv.rows * KVD);
    kv.v = be->ops->alloc(be, sizeof(spk_f16) * (size_t)L * kv.rows * KVD);
    float freqs[ROT / 2];
    spk_rope_freqs(freqs, ROT, 10000.0f, NULL);
    /* sequence 0: blocks 7, 2 (scattered); sequence 1: blocks 4, 5 (consecutive) */
    static const int32_t table[] = {7, 2, 4, 5}, table_off[] = {0, 2};
    static const uint8_t contig[] = {0, 1};
    /* all K/V/Q rows the reference will need: [seq][pos] */
    enum { P = 7 };
    double kref[2][P][KVD], vref[2][P][KVD];
    int32_t pos[12], seq[12], tokv[12] = {0};
    for (int phase = 0; phase < 2; phase++) {
        const int T = phase == 0 ? 12 : 2;
        for (int t = 0; t < T; t++) {
            seq[t] = phase == 0 ? t / 6 : t;
            pos[t] = phase == 0 ? t % 6 : 6;
        }
        float *q = malloc(sizeof(float) * T * QD), *k = malloc(sizeof(float) * T * KVD),
              *v = malloc(sizeof(float) * T * KVD), *out = malloc(sizeof(float) * T * QD);
        double *qref = malloc(sizeof(double) * T * QD);
        spk_test_fill(q, (size_t)T * QD, 20 + (uint64_t)phase, -1, 1);
        spk_test_fill(k, (size_t)T * KVD, 30 + (uint64_t)phase, -1, 1);
        spk_test_fill(v, (size_t)T * KVD, 40 + (uint64_t)phase, -1, 1);
        for (int t = 0; t < T; t++) {
            double kk[KVD];
            for (int i = 0; i < QD; i++)
                qref[t * QD + i] = q[t * QD + i];
            for (int h = 0; h < NH; h++)
                rope_ref(qref + t * QD + h * HD, pos[t], freqs, neox);
            for (int i = 0; i < KVD; i++)
                kk[i] = k[t * KVD + i];
            for (int h = 0; h < NKV; h++)
                rope_ref(kk + h * HD, pos[t], freqs, neox);
            for (int i = 0; i < KVD; i++) {
                kref[seq[t]][pos[t]][i] = f16r(kk[i]);
                vref[seq[t]][pos[t]][i] = f16r(v[t * KVD + i]);
            }
        }
        spk_step s = {.n_tok = T, .token = tokv, .pos = pos, .seq = seq, .table_off = table_off, .block_table = table,
                      .contig = contig};
        job j = {.be = be, .op = OP_ROPE_ATTN, .out = out, .q = q, .k = k, .v = v, .freqs = freqs, .kv = &kv,
                 .layer = layer, .step = &s, .neox = neox, .sinks = oss ? sinks : NULL, .window = window};
        be->ops->run(be, run_job, &j);
        for (int t = 0; t < T; t++)
            for (int h = 0; h < NH; h++) {
                const int kvh = h / (NH / NKV), n = pos[t] + 1, p0 = window && n > window ? n - window : 0;
                double sc[P], mx = -1e300, sum = 0;
                for (int p = p0; p < n; p++) {
                    double d = 0;
                    for (int i = 0; i < HD; i++)
                        d += qref[t * QD + h * HD + i] * kref[seq[t]][p][kvh * HD + i];
                    sc[p] = d / sqrt((double)HD);
                    mx = sc[p] > mx ? sc[p] : mx;
                }
                for (int p = p0; p < n; p++)
                    sum += (sc[p] = exp(sc[p] - mx));
                if (oss) /* the sink: in the denominator, no value */
                    sum += exp((double)sinks[h] - mx);
                for (int i = 0; i < HD; i++) {
                    double want = 0;
                    for (int p = p0; p < n; p++)
                        want += sc[p] / sum * vref[seq[t]][p][kvh * HD + i];
                    close_to(out[t * QD + h * HD + i], want, 1e-4, "attention", (t * NH + h) * HD + i);
                }
            }
        free(q), free(k), free(v), free(out), free(qref);
    }
    /* layer 0 of the cache was never written */
    for (size_t i = 0; i < kv.rows * KVD; i++)
        ck_assert_uint_eq(kv.k[i], 0);
    be->ops->free(be, kv.k);
    be->ops->free(be, kv.v);
    spk_backend_destroy(be);
}
END_TEST

START_TEST(bad_arguments_are_refused)
{
    spk_backend *be = NULL;
    ck_assert_int_eq(spk_backend_cpu_create(0, CTX, HD, &be), SPK_ERR_INVALID_ARG);
    ck_assert_ptr_null(be);
    ck_assert_int_eq(spk_backend_cpu_create(2, 0, HD, &be), SPK_ERR_INVALID_ARG);
    ck_assert_int_eq(spk_backend_cpu_create(2, CTX, HD, &be), SPK_OK);
    ck_assert_str_eq(be->ops->name, "cpu");
    ck_assert_int_eq(be->ops->mem, SPK_MEM_HOST);
    ck_assert_int_eq(spk_backend_cpu_threads(be), 2);
    ck_assert_uint_gt(be->ops->held_bytes(be), 0);
    spk_backend_destroy(be);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("backend");
    TCase *tc = tcase_create("cpu");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, rows_ops_match_reference, 0, 2);
    tcase_add_loop_test(tc, embed_matches_dequantized_rows, 0, 2);
    tcase_add_loop_test(tc, matmul_matches_float64_every_type, 0, N_TYPES);
    tcase_add_loop_test(tc, paged_attention_matches_reference, 0, 8);
    tcase_add_test(tc, bad_arguments_are_refused);
    suite_add_tcase(s, tc);
    return spk_test_run(s);
}
