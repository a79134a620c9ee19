/*
 * The MoE op of the backend table (backend/backend.h spk_moe, CPU backend) against a float64
 * reference on random inputs: top-k routing (softmax over all logits then renormalised, as
 * qwen3moe; and gpt-oss's softmax over the selected logits with its clamped SwiGLU and biases),
 * tokens routed to the same expert, experts no token picks, k = n_expert, one token, every
 * weight type the dense path multiplies by (one matrix per expert, a view into a stacked tensor),
 * 1 and 3 threads bit-identical, and a TP split of every expert's columns summing to the whole.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "cpu/ops.h"
#include "tools/synth.h"
#include "testutil.h"

static uint64_t g_rng = 0x1234567;
static float frand(void) /* uniform in [-1, 1) */
{
    g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(g_rng >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

/* A stacked tensor of X matrices [n_out][n_in] of `type` from random floats; `deq` gets the
 * values as the kernels see them (dequantized). */
typedef struct stack {
    uint8_t *data;
    float *deq;
    size_t stride;
    spk_wmat m;
} stack;

static void make_stack(stack *s, spk_dtype type, int X, int n_out, int n_in, float scale)
{
    const size_t rb = spk_dtype_row_size(type, (size_t)n_in);
    s->stride = rb * (size_t)n_out;
    s->data = malloc(s->stride * (size_t)X);
    s->deq = malloc(sizeof(float) * (size_t)X * n_out * n_in);
    float *row = malloc(sizeof(float) * (size_t)n_in);
    for (int r = 0; r < X * n_out; r++) {
        for (int i = 0; i < n_in; i++)
            row[i] = scale * frand();
        ck_assert_uint_eq(spk_synth_quantize_row(s->data + (size_t)r * rb, row, type, n_in), rb);
        spk_dequantize_row(s->deq + (size_t)r * n_in, s->data + (size_t)r * rb, type, n_in);
    }
    free(row);
    s->m = (spk_wmat){s->data, type, n_in, n_out, 0};
}

static void free_stack(stack *s)
{
    free(s->data);
    free(s->deq);
}

typedef struct moe_case {
    int X, K, E, F, T;
    stack router, gate, up, down;
    float *rbias, *gbias, *ubias, *dbias;
    spk_moe op;
} moe_case;

static void make_case(moe_case *c, spk_dtype wtype, int X, int K, int E, int F, int T, unsigned flags, int biases)
{
    memset(c, 0, sizeof *c);
    c->X = X, c->K = K, c->E = E, c->F = F, c->T = T;
    make_stack(&c->router, SPK_DT_F32, 1, X, E, 1.0f);
    make_stack(&c->gate, wtype, X, F, E, 2.0f / sqrtf((float)E));
    make_stack(&c->up, wtype, X, F, E, 2.0f / sqrtf((float)E));
    make_stack(&c->down, wtype, X, E, F, 2.0f / sqrtf((float)F));
    c->op = (spk_moe){.router = c->router.m, .gate = c->gate.m, .up = c->up.m, .down = c->down.m,
                      .stride_gate = c->gate.stride, .stride_up = c->up.stride, .stride_down = c->down.stride,
                      .n_expert = X, .n_used = K, .e0 = 0, .e1 = X, .flags = flags, .alpha = 1.702f, .limit = 0.7f};
    if (biases) {
        c->rbias = malloc(sizeof(float) * (size_t)X);
        c->gbias = malloc(sizeof(float) * (size_t)X * F);
        c->ubias = malloc(sizeof(float) * (size_t)X * F);
        c->dbias = malloc(sizeof(float) * (size_t)X * E);
        for (int i = 0; i < X; i++)
            c->rbias[i] = 0.5f * frand();
        for (int i = 0; i < X * F; i++) {
            c->gbias[i] = 0.2f * frand();
            c->ubias[i] = 0.2f * frand();
        }
        for (int i = 0; i < X * E; i++)
            c->dbias[i] = 0.2f * frand();
        c->op.router_bias = c->rbias, c->op.gate_bias = c->gbias, c->op.up_bias = c->ubias, c->op.down_bias = c->dbias;
    }
}

static void free_case(moe_case *c)
{
    free_stack(&c->router), free_stack(&c->gate), free_stack(&c->up), free_stack(&c->down);
    free(c->rbias), free(c->gbias), free(c->ubias), free(c->dbias);
}

/* float64 reference of the layer in c->op (columns [f0, f1) of every expert; the router and
 * down bias in full), per token; `hits` counts tokens per expert. */
static void reference(const moe_case *c, const float *x, double *out, int f0, int f1, int *hits)
{
    const spk_moe *m = &c->op;
    const int X = c->X, K = c->K, E = c->E, F = c->F;
    double *l = malloc(sizeof(double) * (size_t)X), *h = malloc(sizeof(double) * (size_t)F);
    int sel[64] = {0};
    double w[64];
    memset(hits, 0, sizeof(int) * (size_t)X);
    for (int t = 0; t < c->T; t++) {
        const float *xt = x + (size_t)t * E;
        for (int e = 0; e < X; e++) {
            double s = 0;
            for (int i = 0; i < E; i++)
                s += (double)c->router.deq[(size_t)e * E + i] * xt[i];
            l[e] = s + (m->router_bias ? m->router_bias[e] : 0.0);
        }
        for (int j = 0; j < K; j++) { /* top-k, ties to the lower index */
            int best = -1;
            for (int e = 0; e < X; e++) {
                int taken = 0;
                for (int i = 0; i < j; i++)
                    taken |= sel[i] == e;
                if (!taken && (best < 0 || l[e] > l[best]))
                    best = e;
            }
            sel[j] = best;
        }
        double z = 0, zk = 0;
        for (int e = 0; e < X; e++)
            z += exp(l[e] - l[sel[0]]);
        for (int j = 0; j < K; j++)
            zk += exp(l[sel[j]] - l[sel[0]]);
        for (int j = 0; j < K; j++) {
            const double p = exp(l[sel[j]] - l[sel[0]]);
            w[j] = (m->flags & SPK_MOE_SOFTMAX_ALL) && !(m->flags & SPK_MOE_NORM_TOPK) ? p / z : p / zk;
        }
        double *o = out + (size_t)t * E;
        memset(o, 0, sizeof(double) * (size_t)E);
        for (int j = 0; j < K; j++) {
            const int e = sel[j];
            hits[e]++;
            for (int f = f0; f < f1; f++) {
                double g = 0, u = 0;
                for (int i = 0; i < E; i++) {
                    g += (double)c->gate.deq[((size_t)e * F + f) * E + i] * xt[i];
                    u += (double)c->up.deq[((size_t)e * F + f) * E + i] * xt[i];
                }
                g += m->gate_bias ? m->gate_bias[(size_t)e * F + f] : 0.0;
                u += m->up_bias ? m->up_bias[(size_t)e * F + f] : 0.0;
                if (m->flags & SPK_MOE_SWIGLU_OAI) {
                    g = g < m->limit ? g : m->limit;
                    u = u < -m->limit ? -m->limit : u > m->limit ? m->limit : u;
                    h[f] = (u + 1.0) * g / (1.0 + exp(-(double)m->alpha * g));
                } else {
                    h[f] = u * g / (1.0 + exp(-g));
                }
            }
            for (int d = 0; d < E; d++) {
                double y = m->down_bias ? m->down_bias[(size_t)e * E + d] : 0.0;
                for (int f = f0; f < f1; f++)
                    y += (double)c->down.deq[((size_t)e * E + d) * F + f] * h[f];
                o[d] += w[j] * y;
            }
        }
    }
    free(l);
    free(h);
}

typedef struct job {
    spk_backend *be;
    float *out;
    const float *x;
    const spk_moe *m;
    void *scratch;
    int n_tok;
} job;

static void run_job(void *arg, int ith, int nth)
{
    job *j = arg;
    j->be->ops->moe(j->be, j->out, j->x, j->m, j->scratch, j->n_tok, ith, nth);
}

/* The op on `threads` threads: out [T][E]. */
static void run_op(const spk_moe *m, const float *x, float *out, int T, int threads)
{
    spk_backend *be = NULL;
    ck_assert_int_eq(spk_backend_cpu_create(threads, 16, 32, &be), SPK_OK);
    ck_assert_ptr_nonnull(be->ops->moe);
    const size_t sz = be->ops->moe_size(be, m, T);
    void *scratch = be->ops->alloc(be, sz);
    memset(out, 0xff, sizeof(float) * (size_t)T * m->router.n_in); /* NaN: every element must be written */
    job j = {be, out, x, m, scratch, T};
    ck_assert_int_eq(be->ops->run(be, run_job, &j), SPK_OK);
    be->ops->free(be, scratch);
    spk_backend_destroy(be);
}

/* max |ours - ref| / max |ref| */
static double rel_err(const float *a, const double *ref, size_t n)
{
    double md = 0, mr = 0;
    for (size_t i = 0; i < n; i++) {
        ck_assert(isfinite(a[i]));
        md = fmax(md, fabs(a[i] - ref[i]));
        mr = fmax(mr, fabs(ref[i]));
    }
    return md / (mr > 0 ? mr : 1);
}

static double check_case(moe_case *c, const char *what, double tol, int *hits)
{
    const size_t n = (size_t)c->T * c->E;
    float *x = calloc(n, sizeof(float)), *o1 = malloc(sizeof(float) * n), *o3 = malloc(sizeof(float) * n);
    double *ref = malloc(sizeof(double) * n);
    for (size_t i = 0; i < n; i++)
        x[i] = frand();
    if (c->T > 4) /* some tokens repeated: they must route and come out identically */
        memcpy(x + 3 * (size_t)c->E, x, sizeof(float) * (size_t)c->E);
    reference(c, x, ref, 0, c->F, hits);
    run_op(&c->op, x, o1, c->T, 1);
    run_op(&c->op, x, o3, c->T, 3);
    ck_assert_msg(memcmp(o1, o3, sizeof(float) * n) == 0, "%s: 1 and 3 threads differ", what);
    if (c->T > 4)
        ck_assert(memcmp(o1, o1 + 3 * (size_t)c->E, sizeof(float) * (size_t)c->E) == 0);
    const double err = rel_err(o1, ref, n);
    printf("%s: X %d K %d E %d F %d T %d: max rel err %.2e (tol %.0e)\n", what, c->X, c->K, c->E, c->F, c->T, err, tol);
    ck_assert_msg(err < tol, "%s: error %g >= %g", what, err, tol);
    free(x), free(o1), free(o3), free(ref);
    return err;
}

START_TEST(qwen3moe_routing_f32)
{
    moe_case c;
    int hits[64];
    const unsigned q = SPK_MOE_SOFTMAX_ALL | SPK_MOE_NORM_TOPK;
    /* 8 experts, 2 per token, 13 tokens: several tokens share experts */
    make_case(&c, SPK_DT_F32, 8, 2, 64, 32, 13, q, 0);
    check_case(&c, "f32 k=2", 2e-5, hits);
    int shared = 0;
    for (int e = 0; e < 8; e++)
        shared |= hits[e] > 1;
    ck_assert(shared);
    free_case(&c);
    /* k = n_expert: every expert gets every token, weights = the full softmax */
    make_case(&c, SPK_DT_F32, 4, 4, 64, 32, 9, q, 0);
    check_case(&c, "f32 k=n", 2e-5, hits);
    for (int e = 0; e < 4; e++)
        ck_assert_int_eq(hits[e], 9);
    free_case(&c);
    /* one token; more experts than tokens touch: most experts idle */
    make_case(&c, SPK_DT_F32, 16, 3, 64, 32, 1, q, 0);
    check_case(&c, "f32 one token", 2e-5, hits);
    int used = 0;
    for (int e = 0; e < 16; e++)
        used += hits[e] > 0;
    ck_assert_int_eq(used, 3);
    free_case(&c);
    /* softmax over all without renormalisation (Mixtral-style weights do not sum to 1) */
    make_case(&c, SPK_DT_F32, 8, 2, 64, 32, 7, SPK_MOE_SOFTMAX_ALL, 0);
    check_case(&c, "f32 softmax-all, not renormalised", 2e-5, hits);
    free_case(&c);
}
END_TEST

START_TEST(idle_experts)
{
    /* inputs with x[0] = 1 and the router's column 0 at -100 for experts 4..7: those never win */
    moe_case c;
    int hits[64];
    make_case(&c, SPK_DT_F32, 8, 2, 64, 32, 11, SPK_MOE_SOFTMAX_ALL | SPK_MOE_NORM_TOPK, 0);
    float *rw = (float *)c.router.data;
    for (int e = 4; e < 8; e++)
        rw[e * 64] = c.router.deq[e * 64] = -100.0f;
    const size_t n = 11 * 64;
    float *x = calloc(n, sizeof(float)), *o = malloc(sizeof(float) * n);
    double *ref = malloc(sizeof(double) * n);
    for (size_t i = 0; i < n; i++)
        x[i] = (i % 64 == 0) ? 1.0f : frand();
    reference(&c, x, ref, 0, c.F, hits);
    for (int e = 4; e < 8; e++)
        ck_assert_int_eq(hits[e], 0);
    run_op(&c.op, x, o, 11, 3);
    const double err = rel_err(o, ref, n);
    printf("experts 4..7 idle: max rel err %.2e\n", err);
    ck_assert(err < 2e-5);
    free(x), free(o), free(ref);
    free_case(&c);
}
END_TEST

/* gpt-oss's variant as flags of the same op: softmax over the selected logits, clamped SwiGLU
 * with alpha and +1 on up, biases on router and experts. */
START_TEST(gpt_oss_variant)
{
    moe_case c;
    int hits[64];
    make_case(&c, SPK_DT_F32, 8, 4, 64, 32, 10, SPK_MOE_SWIGLU_OAI, 1);
    check_case(&c, "gpt-oss flags f32", 2e-5, hits);
    free_case(&c);
}
END_TEST

/* Every weight type, as one view per expert into the stacked tensor; quantized types against
 * the dequantized weights in float64 (the rest is the 8-bit activation rounding). */
START_TEST(weight_types)
{
    const spk_dtype types[] = {SPK_DT_F16, SPK_DT_BF16, SPK_DT_Q8_0, SPK_DT_Q4_0, SPK_DT_Q4_1,
                               SPK_DT_Q5_0, SPK_DT_Q5_1, SPK_DT_Q2_K, SPK_DT_Q3_K, SPK_DT_Q5_K, SPK_DT_MXFP4};
    for (size_t i = 0; i < sizeof types / sizeof *types; i++) {
        moe_case c;
        int hits[64];
        const spk_dtype_info *in = spk_dtype_get((uint32_t)types[i]);
        make_case(&c, types[i], 8, 2, 256, 256, 9, SPK_MOE_SOFTMAX_ALL | SPK_MOE_NORM_TOPK, 0);
        const int flt = types[i] == SPK_DT_F16 || types[i] == SPK_DT_BF16;
        check_case(&c, in->name, flt ? 1e-4 : 3e-2, hits);
        free_case(&c);
    }
}
END_TEST

/* TP: two slices of every expert's columns (gate/up rows, down columns copied out), summed, are
 * the whole layer. */
START_TEST(tp_slices_sum_to_whole)
{
    moe_case c;
    int hits[64];
    const int E = 64, F = 64, T = 9, X = 8;
    make_case(&c, SPK_DT_F32, X, 2, E, F, T, SPK_MOE_SOFTMAX_ALL | SPK_MOE_NORM_TOPK, 0);
    const size_t n = (size_t)T * E;
    float *x = calloc(n, sizeof(float)), *o = malloc(sizeof(float) * n), *sum = calloc(n, sizeof(float));
    double *ref = malloc(sizeof(double) * n);
    for (size_t i = 0; i < n; i++)
        x[i] = frand();
    reference(&c, x, ref, 0, F, hits);
    const int cut[3] = {0, 32, 64};
    for (int r = 0; r < 2; r++) {
        const int f0 = cut[r], f1 = cut[r + 1], w = f1 - f0;
        spk_moe m = c.op;
        m.gate.data = (const float *)c.gate.data + (size_t)f0 * E;
        m.up.data = (const float *)c.up.data + (size_t)f0 * E;
        m.gate.n_out = m.up.n_out = w;
        float *d = malloc(sizeof(float) * (size_t)X * E * w);
        for (int rr = 0; rr < X * E; rr++)
            memcpy(d + (size_t)rr * w, (const float *)c.down.data + (size_t)rr * F + f0, sizeof(float) * (size_t)w);
        m.down.data = d;
        m.down.n_in = w;
        m.stride_down = sizeof(float) * (size_t)E * w;
        run_op(&m, x, o, T, 2);
        for (size_t i = 0; i < n; i++)
            sum[i] += o[i];
        free(d);
    }
    const double err = rel_err(sum, ref, n);
    printf("TP 2 slices summed: max rel err %.2e\n", err);
    ck_assert(err < 2e-5);
    free(x), free(o), free(sum), free(ref);
    free_case(&c);
}
END_TEST

/* Expert parallelism: ranks running experts [0, 3), [3, 5), [5, 8) (matrices from their first
 * expert's; routing over all 8), summed, are the whole layer; a rank none of a token's experts
 * is on writes zeros for it. */
START_TEST(expert_ranges_sum_to_whole)
{
    moe_case c;
    int hits[64];
    const int E = 64, T = 11, X = 8;
    make_case(&c, SPK_DT_Q8_0, X, 2, E, 64, T, SPK_MOE_SOFTMAX_ALL | SPK_MOE_NORM_TOPK, 0);
    const size_t n = (size_t)T * E;
    float *x = calloc(n, sizeof(float)), *o = malloc(sizeof(float) * n), *sum = calloc(n, sizeof(float));
    float *whole = malloc(sizeof(float) * n);
    double *ref = malloc(sizeof(double) * n);
    for (size_t i = 0; i < n; i++)
        x[i] = frand();
    reference(&c, x, ref, 0, c.F, hits);
    run_op(&c.op, x, whole, T, 2);
    const int cut[4] = {0, 3, 5, 8};
    int zero_rows = 0;
    for (int r = 0; r < 3; r++) {
        spk_moe m = c.op;
        m.e0 = cut[r];
        m.e1 = cut[r + 1];
        m.gate.data = (const uint8_t *)c.gate.data + (size_t)m.e0 * c.gate.stride;
        m.up.data = (const uint8_t *)c.up.data + (size_t)m.e0 * c.up.stride;
        m.down.data = (const uint8_t *)c.down.data + (size_t)m.e0 * c.down.stride;
        run_op(&m, x, o, T, 3);
        for (int t = 0; t < T; t++) {
            int any = 0;
            for (int d = 0; d < E; d++)
                any |= o[(size_t)t * E + d] != 0.0f;
            zero_rows += !any;
        }
        for (size_t i = 0; i < n; i++)
            sum[i] += o[i];
    }
    ck_assert_int_gt(zero_rows, 0); /* 11 tokens x 2 experts over 3 ranks: some rank holds none of a token's */
    double md = 0;
    for (size_t i = 0; i < n; i++)
        md = fmax(md, fabs(sum[i] - whole[i]));
    const double err = rel_err(sum, ref, n);
    printf("EP 3 ranks summed: max |sum - one rank| %.2e, rel err vs float64 %.2e (%d zero rows)\n", md, err, zero_rows);
    ck_assert(md < 1e-5);
    ck_assert(err < 3e-2);
    free(x), free(o), free(sum), free(whole), free(ref);
    free_case(&c);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("moe");
    TCase *tc = tcase_create("moe");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, qwen3moe_routing_f32);
    tcase_add_test(tc, idle_experts);
    tcase_add_test(tc, gpt_oss_variant);
    tcase_add_test(tc, weight_types);
    tcase_add_test(tc, tp_slices_sum_to_whole);
    tcase_add_test(tc, expert_ranges_sum_to_whole);
    suite_add_tcase(s, tc);
    return spk_test_run(s);
}
