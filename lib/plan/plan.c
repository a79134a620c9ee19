/*
 * Partition plan: layer ranges balanced by weight bytes, heads split at KV-group granularity,
 * MLP intermediate split in whole quant blocks, vocabulary split by rows.
 */
#include "plan/plan.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"

/* ---- shape helpers ------------------------------------------------------------------------- */

int spk_shape_block(const spk_shape *s) { return s->quant_block > 0 ? s->quant_block : 32; }
double spk_shape_bpe(const spk_shape *s) { return s->bytes_per_expert > 0 ? s->bytes_per_expert : s->bytes_per_weight; }
double spk_shape_bph(const spk_shape *s) { return s->bytes_per_head > 0 ? s->bytes_per_head : s->bytes_per_weight; }
double spk_shape_bkv(const spk_shape *s) { return s->bytes_per_kv > 0 ? s->bytes_per_kv : 2.0; }

double spk_shape_layer_bytes(const spk_shape *s)
{
    const double E = s->n_embd, Q = (double)s->n_heads * s->head_dim,
                 KV = (double)s->n_kv_heads * s->head_dim;
    double b = (E * (Q + 2 * KV) + Q * E) * s->bytes_per_weight; /* wq wk wv, wo */
    b += 3.0 * s->n_ff * E * s->bytes_per_weight;                /* gate, up, down */
    if (s->n_experts > 0) {
        b += (double)s->n_experts * 3.0 * s->n_ff_expert * E * spk_shape_bpe(s);
        b += E * s->n_experts * s->bytes_per_weight; /* router */
    }
    return b + 2 * E * 4; /* two F32 norms */
}

/* Parameters of one layer: attention, dense/shared MLP, router, and one expert. */
static void layer_params(const spk_shape *s, double *attn_mlp, double *expert)
{
    const double E = s->n_embd, Q = (double)s->n_heads * s->head_dim, KV = (double)s->n_kv_heads * s->head_dim;
    *attn_mlp = E * (Q + 2 * KV) + Q * E + 3.0 * s->n_ff * E + (s->n_experts > 0 ? E * s->n_experts : 0);
    *expert = s->n_experts > 0 ? 3.0 * s->n_ff_expert * E : 0;
}

double spk_shape_total_params(const spk_shape *s)
{
    if (!s)
        return 0;
    double a, e;
    layer_params(s, &a, &e);
    double head = (double)s->n_vocab * s->n_embd;
    return s->n_layers * (a + s->n_experts * e) + head + (s->tied_embeddings ? 0 : head);
}

double spk_shape_active_params(const spk_shape *s)
{
    if (!s)
        return 0;
    double a, e;
    layer_params(s, &a, &e);
    return s->n_layers * (a + (s->n_experts > 0 ? s->n_experts_used : 0) * e) + (double)s->n_vocab * s->n_embd;
}

double spk_shape_head_bytes(const spk_shape *s)
{
    return (double)s->n_vocab * s->n_embd * spk_shape_bph(s) + s->n_embd * 4.0;
}

double spk_shape_embd_bytes(const spk_shape *s) { return (double)s->n_vocab * s->n_embd * spk_shape_bph(s); }

spk_status spk_shape_check(const spk_shape *s)
{
    if (!s)
        return spk_err(SPK_ERR_INVALID_ARG, "shape is NULL");
    const char *n = s->name[0] ? s->name : "shape";
#define POS(f, max)                                                                               \
    if (s->f < 1 || s->f > (max))                                                                 \
        return spk_err(SPK_ERR_INVALID_ARG, "%s: " #f " %d out of range [1, %d]", n, s->f, (max));
    POS(n_layers, 4096)
    POS(n_embd, 1 << 20)
    POS(n_heads, 4096)
    POS(n_kv_heads, 4096)
    POS(head_dim, 65536)
    POS(n_vocab, 1 << 24)
#undef POS
    if (s->n_heads % s->n_kv_heads != 0)
        return spk_err(SPK_ERR_INVALID_ARG, "%s: n_heads %d is not a multiple of n_kv_heads %d", n,
                       s->n_heads, s->n_kv_heads);
    if (s->n_ff < 0 || s->n_ff > (1 << 24))
        return spk_err(SPK_ERR_INVALID_ARG, "%s: n_ff %d out of range [0, %d]", n, s->n_ff, 1 << 24);
    if (s->n_experts < 0 || s->n_experts > 65536)
        return spk_err(SPK_ERR_INVALID_ARG, "%s: n_experts %d out of range [0, 65536]", n, s->n_experts);
    if (s->n_experts > 0) {
        if (s->n_experts_used < 1 || s->n_experts_used > s->n_experts)
            return spk_err(SPK_ERR_INVALID_ARG, "%s: n_experts_used %d out of range [1, n_experts %d]",
                           n, s->n_experts_used, s->n_experts);
        if (s->n_ff_expert < 1 || s->n_ff_expert > (1 << 24))
            return spk_err(SPK_ERR_INVALID_ARG, "%s: n_ff_expert %d out of range [1, %d] for a MoE shape",
                           n, s->n_ff_expert, 1 << 24);
    } else if (s->n_ff < 1) {
        return spk_err(SPK_ERR_INVALID_ARG, "%s: a dense shape (n_experts 0) needs n_ff >= 1", n);
    }
    if (s->quant_block < 0 || s->quant_block > 4096)
        return spk_err(SPK_ERR_INVALID_ARG, "%s: quant_block %d out of range [0, 4096]", n, s->quant_block);
    if (s->sliding_window < 0 || s->n_sliding_layers < 0 || s->n_sliding_layers > s->n_layers)
        return spk_err(SPK_ERR_INVALID_ARG, "%s: sliding_window %d / n_sliding_layers %d (of %d layers) invalid",
                       n, s->sliding_window, s->n_sliding_layers, s->n_layers);
    if (!(s->bytes_per_weight > 0 && s->bytes_per_weight <= 8) || !(s->bytes_per_expert >= 0 && s->bytes_per_expert <= 8) ||
        !(s->bytes_per_head >= 0 && s->bytes_per_head <= 8) || !(s->bytes_per_kv >= 0 && s->bytes_per_kv <= 8))
        return spk_err(SPK_ERR_INVALID_ARG,
                       "%s: bytes per element (weight %g, expert %g, head %g, kv %g) must be in (0, 8] "
                       "(0 allowed for the defaulted ones)",
                       n, s->bytes_per_weight, s->bytes_per_expert, s->bytes_per_head, s->bytes_per_kv);
    return SPK_OK;
}

/* ---- splitting ----------------------------------------------------------------------------- */

/* Part i of n items split into `parts` as evenly as possible, larger parts first. */
static void split_even(int n, int parts, int i, int *a, int *b)
{
    int base = n / parts, rem = n % parts;
    *a = i * base + (i < rem ? i : rem);
    *b = *a + base + (i < rem ? 1 : 0);
}

/* Contiguous layer ranges over pp stages minimizing the largest stage cost, where cost(ctx, st, n)
 * is stage st's cost with n layers, non-decreasing in n, and the same for every middle stage.
 * The optimum equals cost(st, n) for some stage class (first, middle, last) and n: candidates are
 * tried in increasing order and the smallest feasible one kept. */
static void balance_layers(int L, int pp, spk_stage_cost_fn cost, void *ctx, int *count)
{
    if (pp == 1) {
        count[0] = L;
        return;
    }
    /* the most layers stage st can hold within T (0 when not even one fits) */
#define CAP(st, T, cap)                                                                              \
    do {                                                                                             \
        int lo_ = 0, hi_ = L;                                                                        \
        while (lo_ < hi_) {                                                                          \
            int mid_ = (lo_ + hi_ + 1) / 2;                                                          \
            if (cost(ctx, (st), mid_) <= (T) * (1 + 1e-12))                                          \
                lo_ = mid_;                                                                          \
            else                                                                                     \
                hi_ = mid_ - 1;                                                                      \
        }                                                                                            \
        (cap) = lo_;                                                                                 \
    } while (0)
    const int cls_stage[3] = {0, 1, pp - 1};
    double best = -1;
    for (int cls = 0; cls < 3; cls++) {
        if (cls == 1 && pp < 3)
            continue;
        for (int nl = 1; nl <= L; nl++) {
            double T = cost(ctx, cls_stage[cls], nl);
            if (best >= 0 && T >= best)
                break;
            long long total = 0;
            int ok = 1;
            for (int st = 0; st < pp && ok; st++) {
                int cap;
                CAP(st, T, cap);
                if (cap < 1)
                    ok = 0;
                total += cap;
            }
            if (ok && total >= L)
                best = T;
        }
    }
    /* Fill to capacity, then give back the excess from the most expensive stages (later
     * stages first on ties) so the ranges come out as even as the optimum allows. */
    long long total = 0;
    for (int st = 0; st < pp; st++) {
        CAP(st, best, count[st]);
        total += count[st];
    }
#undef CAP
    while (total > L) {
        int pick = -1;
        double worst = -1;
        for (int st = 0; st < pp; st++) {
            if (count[st] <= 1)
                continue;
            double c = cost(ctx, st, count[st]);
            if (c >= worst - 1e-9 * (worst > 0 ? worst : 1)) {
                worst = c;
                pick = st;
            }
        }
        count[pick]--;
        total--;
    }
}

/* Stage layers from counts, with each stage's cost. */
static void set_stages(spk_plan *p, const int *count, spk_stage_cost_fn cost, void *ctx)
{
    int l = 0;
    for (int i = 0; i < p->pp; i++) {
        p->stage[i].l0 = l;
        l += count[i];
        p->stage[i].l1 = l;
        p->stage[i].cost = cost(ctx, i, count[i]);
    }
}

/* Weight bytes of stage st with n layers: the layers, stage 0's embedding row, the last stage's
 * output head. */
static double bytes_cost(void *ctx, int st, int n)
{
    const spk_plan *p = ctx;
    const spk_shape *s = &p->shape;
    return n * spk_shape_layer_bytes(s) + (st == 0 ? s->n_embd * spk_shape_bph(s) : 0) +
           (st == p->pp - 1 ? spk_shape_head_bytes(s) : 0);
}

spk_status spk_plan_rebalance(spk_plan *p, spk_stage_cost_fn cost, void *ctx)
{
    if (!p || !cost)
        return spk_err(SPK_ERR_INVALID_ARG, "plan_rebalance: plan or cost is NULL");
    int count[SPK_PLAN_MAX_PP];
    for (int st = 0; st < p->pp; st++) {
        double c1 = cost(ctx, st, 1), cl = cost(ctx, st, p->shape.n_layers);
        if (!(c1 >= 0) || !(cl >= c1) || !isfinite(cl))
            return spk_err(SPK_ERR_INVALID_ARG,
                           "plan_rebalance: stage %d's cost (%g at 1 layer, %g at %d) must be finite, >= 0 and "
                           "grow with its layers", st, c1, cl, p->shape.n_layers);
    }
    balance_layers(p->shape.n_layers, p->pp, cost, ctx, count);
    set_stages(p, count, cost, ctx);
    return SPK_OK;
}

spk_status spk_plan_make(const spk_shape *shape, int pp, int tp, spk_plan *out)
{
    if (!shape || !out)
        return spk_err(SPK_ERR_INVALID_ARG, "plan: shape or out is NULL");
    if (pp < 1 || tp < 1)
        return spk_err(SPK_ERR_INVALID_ARG, "plan: pp %d, tp %d: both must be >= 1", pp, tp);
    long long world = (long long)pp * tp;
    if (world > SPK_PLAN_MAX_WORLD)
        return spk_err(SPK_ERR_INVALID_ARG, "plan: world pp %d x tp %d = %lld ranks > %d supported", pp,
                       tp, world, SPK_PLAN_MAX_WORLD);
    if (pp > SPK_PLAN_MAX_PP)
        return spk_err(SPK_ERR_INVALID_ARG, "plan: pp %d > %d stages supported", pp, SPK_PLAN_MAX_PP);
    if (tp > SPK_PLAN_MAX_TP)
        return spk_err(SPK_ERR_INVALID_ARG, "plan: tp %d > %d ranks per group supported", tp, SPK_PLAN_MAX_TP);
    spk_status st = spk_shape_check(shape);
    if (st)
        return st;
    const spk_shape *s = shape;
    const char *nm = s->name[0] ? s->name : "model";
    if (pp > s->n_layers)
        return spk_err(SPK_ERR_UNSUPPORTED, "%s: pp %d > %d layers: every stage needs at least one layer",
                       nm, pp, s->n_layers);
    if (tp > s->n_kv_heads)
        return spk_err(SPK_ERR_UNSUPPORTED, "%s: tp %d > %d KV heads: heads are split at KV-group granularity",
                       nm, tp, s->n_kv_heads);
    if (tp > s->n_vocab)
        return spk_err(SPK_ERR_UNSUPPORTED, "%s: tp %d > %d vocabulary rows", nm, tp, s->n_vocab);
    const int blk = spk_shape_block(s);
    const int g = s->n_heads / s->n_kv_heads;
    if (tp > 1) {
        const int ffs[2] = {s->n_ff, s->n_experts > 0 ? s->n_ff_expert : 0};
        const char *what[2] = {"n_ff", "n_ff_expert"};
        for (int k = 0; k < 2; k++) {
            if (ffs[k] == 0)
                continue;
            if (ffs[k] % blk != 0)
                return spk_err(SPK_ERR_UNSUPPORTED,
                               "%s: tp %d: %s %d is not a whole number of %d-element quant blocks, so the "
                               "row-parallel down-projection cannot be split",
                               nm, tp, what[k], ffs[k], blk);
            if (ffs[k] / blk < tp)
                return spk_err(SPK_ERR_UNSUPPORTED,
                               "%s: tp %d: %s %d has only %d quant blocks of %d, fewer than tp", nm, tp,
                               what[k], ffs[k], ffs[k] / blk, blk);
        }
        for (int i = 1; i < tp; i++) {
            int kv0, kv1;
            split_even(s->n_kv_heads, tp, i, &kv0, &kv1);
            long long col = (long long)kv0 * g * s->head_dim;
            if (col % blk != 0)
                return spk_err(SPK_ERR_UNSUPPORTED,
                               "%s: tp %d: rank %d's attention-output slice starts at column %lld (query "
                               "head %d x head_dim %d), not on a %d-element quant block",
                               nm, tp, i, col, kv0 * g, s->head_dim, blk);
        }
    }

    memset(out, 0, sizeof *out);
    out->pp = pp;
    out->tp = tp;
    out->world = (int)world;
    out->group = g;
    out->shape = *s;

    int count[SPK_PLAN_MAX_PP];
    balance_layers(s->n_layers, pp, bytes_cost, out, count);
    set_stages(out, count, bytes_cost, out);
    for (int i = 0; i < tp; i++) {
        spk_plan_tpart *t = &out->part[i];
        split_even(s->n_kv_heads, tp, i, &t->kv0, &t->kv1);
        t->q0 = t->kv0 * g;
        t->q1 = t->kv1 * g;
        if (tp == 1) {
            t->f1 = s->n_ff;
            t->fe1 = s->n_experts > 0 ? s->n_ff_expert : 0;
        } else {
            if (s->n_ff > 0) {
                split_even(s->n_ff / blk, tp, i, &t->f0, &t->f1);
                t->f0 *= blk;
                t->f1 *= blk;
            }
            if (s->n_experts > 0) {
                split_even(s->n_ff_expert / blk, tp, i, &t->fe0, &t->fe1);
                t->fe0 *= blk;
                t->fe1 *= blk;
            }
        }
        split_even(s->n_vocab, tp, i, &t->v0, &t->v1);
    }
    return SPK_OK;
}

/* ---- accessors ----------------------------------------------------------------------------- */

spk_status spk_plan_rank(const spk_plan *p, int rank, spk_rank_slice *out)
{
    if (!p || !out)
        return spk_err(SPK_ERR_INVALID_ARG, "plan_rank: plan or out is NULL");
    if (rank < 0 || rank >= p->world)
        return spk_err(SPK_ERR_INVALID_ARG, "plan_rank: rank %d outside [0, %d)", rank, p->world);
    memset(out, 0, sizeof *out);
    out->rank = rank;
    out->stage = rank / p->tp;
    out->tp_rank = rank % p->tp;
    const spk_plan_stage *st = &p->stage[out->stage];
    const spk_plan_tpart *t = &p->part[out->tp_rank];
    out->l0 = st->l0;
    out->l1 = st->l1;
    out->kv0 = t->kv0;
    out->kv1 = t->kv1;
    out->q0 = t->q0;
    out->q1 = t->q1;
    out->f0 = t->f0;
    out->f1 = t->f1;
    out->fe0 = t->fe0;
    out->fe1 = t->fe1;
    out->embeds = out->stage == 0;
    out->has_head = out->stage == p->pp - 1;
    if (out->has_head) {
        out->v0 = t->v0;
        out->v1 = t->v1;
    }
    out->prev_rank = out->stage > 0 ? rank - p->tp : -1;
    out->next_rank = out->stage < p->pp - 1 ? rank + p->tp : -1;
    return SPK_OK;
}

int spk_plan_rank_of(const spk_plan *p, int stage, int tp_rank)
{
    if (!p || stage < 0 || stage >= p->pp || tp_rank < 0 || tp_rank >= p->tp)
        return -1;
    return stage * p->tp + tp_rank;
}

int spk_plan_stage_of_layer(const spk_plan *p, int layer)
{
    if (!p)
        return -1;
    for (int i = 0; i < p->pp; i++)
        if (layer >= p->stage[i].l0 && layer < p->stage[i].l1)
            return i;
    return -1;
}

double spk_plan_rank_bytes(const spk_plan *p, int rank)
{
    spk_rank_slice r;
    if (!p || rank < 0 || rank >= p->world || spk_plan_rank(p, rank, &r) != SPK_OK)
        return 0;
    const spk_shape *s = &p->shape;
    const double E = s->n_embd;
    double q = (double)(r.q1 - r.q0) * s->head_dim, kv = (double)(r.kv1 - r.kv0) * s->head_dim;
    double layer = (E * (q + 2 * kv) + q * E) * s->bytes_per_weight + 3.0 * (r.f1 - r.f0) * E * s->bytes_per_weight +
                   2 * E * 4;
    if (s->n_experts > 0)
        layer += (double)s->n_experts * 3.0 * (r.fe1 - r.fe0) * E * spk_shape_bpe(s) + E * s->n_experts * s->bytes_per_weight;
    double b = layer * (r.l1 - r.l0);
    if (r.embeds)
        b += spk_shape_embd_bytes(s) / p->tp; /* the table may be split by rows too */
    if (r.has_head && !(s->tied_embeddings && r.embeds))
        b += (double)(r.v1 - r.v0) * E * spk_shape_bph(s) + E * 4;
    return b;
}

char *spk_plan_describe(const spk_plan *p, char *buf, int cap)
{
    if (!buf || cap <= 0)
        return buf;
    buf[0] = 0;
    if (!p)
        return buf;
    int n = snprintf(buf, (size_t)cap, "pp %d x tp %d (world %d): layers", p->pp, p->tp, p->world);
#define ADD(...)                                                                                  \
    do {                                                                                          \
        if (n >= 0 && n < cap)                                                                    \
            n += snprintf(buf + n, (size_t)(cap - n), __VA_ARGS__);                               \
    } while (0)
    for (int i = 0; i < p->pp; i++)
        ADD(" %s[%d,%d)", i ? "| " : "", p->stage[i].l0, p->stage[i].l1);
    ADD(" +head");
    if (p->tp > 1) {
        ADD("; kv heads");
        for (int i = 0; i < p->tp; i++)
            ADD("%s%d", i ? "+" : " ", p->part[i].kv1 - p->part[i].kv0);
        if (p->shape.n_ff > 0) {
            ADD(", ffn");
            for (int i = 0; i < p->tp; i++)
                ADD("%s%d", i ? "+" : " ", p->part[i].f1 - p->part[i].f0);
        }
        if (p->shape.n_experts > 0) {
            ADD(", expert ffn");
            for (int i = 0; i < p->tp; i++)
                ADD("%s%d", i ? "+" : " ", p->part[i].fe1 - p->part[i].fe0);
        }
        ADD(", vocab");
        for (int i = 0; i < p->tp; i++)
            ADD("%s%d", i ? "+" : " ", p->part[i].v1 - p->part[i].v0);
    }
#undef ADD
    return buf;
}
