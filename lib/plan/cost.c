/*
 * Cost model: roofline time per stage (weight + KV bytes against bandwidth, flops against peak),
 * TP all-reduces, PP transfers and the pipeline's micro-batch schedule. docs/PLANNER.md.
 */
#include "plan/cost.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "common/error.h"

void spk_hw_init(spk_hw *hw)
{
    if (!hw)
        return;
    memset(hw, 0, sizeof *hw);
    hw->mem_bw_GBps = 273;
    hw->tflops = 100;
    hw->link_Gbps = 200;
    hw->link_latency_us = 5;
    hw->allreduce_latency_us = 30;
    hw->allreduce_busbw_GBps = 0;
    hw->step_overhead_us = 0;
    hw->act_bytes = 2;
    hw->prefill_chunk = 2048;
}

void spk_hw_dgx_spark(spk_hw *hw)
{
    spk_hw_init(hw);
    if (hw)
        hw->allreduce_busbw_GBps = SPK_DGX_SPARK_AR_BUSBW;
}

void spk_hw_cpu(spk_hw *hw)
{
    spk_hw_init(hw);
    if (!hw)
        return;
    hw->mem_bw_GBps = 18;
    hw->tflops = 0.1;
    hw->link_Gbps = 15;
    hw->link_latency_us = 15;
    hw->allreduce_latency_us = 55;
}

static spk_status check_hw(const spk_hw *hw)
{
    if (!hw)
        return spk_err(SPK_ERR_INVALID_ARG, "cost: hardware figures are NULL");
    if (!(hw->mem_bw_GBps > 0) || !(hw->tflops > 0) || !(hw->link_Gbps > 0) || !(hw->link_latency_us >= 0) ||
        !(hw->allreduce_latency_us >= 0) || !(hw->allreduce_busbw_GBps >= 0) || !(hw->step_overhead_us >= 0) ||
        !(hw->act_bytes >= 0) || hw->prefill_chunk < 0 || !isfinite(hw->mem_bw_GBps) || !isfinite(hw->tflops) ||
        !isfinite(hw->link_Gbps))
        return spk_err(SPK_ERR_INVALID_ARG,
                       "cost: hardware figures must be positive and finite (mem %g GB/s, %g TFLOP/s, link %g "
                       "Gb/s, latency %g us, all-reduce %g us / %g GB/s, overhead %g us)",
                       hw->mem_bw_GBps, hw->tflops, hw->link_Gbps, hw->link_latency_us,
                       hw->allreduce_latency_us, hw->allreduce_busbw_GBps, hw->step_overhead_us);
    return SPK_OK;
}

static double act_bytes(const spk_hw *hw) { return hw->act_bytes > 0 ? hw->act_bytes : 2.0; }

double spk_moe_distinct_experts(int n_expert, int k, double b)
{
    if (n_expert <= 0 || k <= 0 || !(b > 0))
        return 0;
    if (k >= n_expert)
        return n_expert;
    return n_expert * -expm1(b * log1p(-(double)k / n_expert)); /* n(1 - (1 - k/n)^b), accurate at small k/n */
}

double spk_moe_max_distinct_per_rank(int n_expert, int k, int ep, double b)
{
    if (n_expert <= 0 || k <= 0 || ep < 1 || !(b > 0))
        return 0;
    if (ep == 1)
        return spk_moe_distinct_experts(n_expert, k, b);
    const int M = n_expert / ep; /* experts per rank */
    if (M < 1)
        return 0;
    const double p = k >= n_expert ? 1.0 : -expm1(b * log1p(-(double)k / n_expert)); /* P(an expert is hit) */
    if (p >= 1.0)
        return M;
    /* E[max of ep iid Binomial(M, p)] = sum_{x=0}^{M-1} (1 - F(x)^ep) */
    double F = 0, sum = 0, lp = log(p), lq = log1p(-p);
    for (int x = 0; x < M; x++) {
        F += exp(lgamma(M + 1.0) - lgamma(x + 1.0) - lgamma(M - x + 1.0) + x * lp + (M - x) * lq);
        if (F >= 1.0)
            break;
        sum += 1.0 - pow(F, ep);
    }
    return sum;
}

/* All-reduce of `bytes` over a group of tp ranks: latency + NCCL bus-bandwidth term. */
static double allreduce_s(const spk_hw *hw, int tp, double bytes)
{
    if (tp <= 1)
        return 0;
    double bw = (hw->allreduce_busbw_GBps > 0 ? hw->allreduce_busbw_GBps : hw->link_Gbps / 8.0) * 1e9;
    return hw->allreduce_latency_us * 1e-6 + 2.0 * (tp - 1) / tp * bytes / bw;
}

static double transfer_s(const spk_hw *hw, double bytes)
{
    return hw->link_latency_us * 1e-6 + bytes / (hw->link_Gbps / 8.0 * 1e9);
}

/* One pass of `b` tokens from `seqs` sequences over stage `st`, on TP part 0 (the largest).
 * `ctx` is the mean attention context of a token. Each sequence's cache is read once per pass
 * (decode: one token per sequence; prefill: a chunk's tokens of one sequence share the read).
 * Expert parallelism (p->ep > 1) changes only the experts: attention, vocabulary and the
 * all-reduces are TP's, but the rank reads whole experts (every column) of the ones hit in its
 * n_experts/ep slice, the busiest rank's count (spk_moe_max_distinct_per_rank), where TP reads
 * its column slice of every hit expert. Fills the breakdown if bd; returns seconds. */
static double stage_time(const spk_plan *p, int st, double b, double seqs, double ctx, const spk_hw *hw,
                         spk_cost *bd)
{
    const spk_shape *s = &p->shape;
    const spk_plan_tpart *t = &p->part[0];
    const double E = s->n_embd, hd = s->head_dim;
    const double q = (double)(t->q1 - t->q0) * hd, kv = (double)(t->kv1 - t->kv0) * hd;
    const double f = t->f1 - t->f0, fe = t->fe1 - t->fe0;
    const int n = p->stage[st].l1 - p->stage[st].l0;

    /* parameters of one layer's slice: read, and used per token */
    double attn_p = E * (q + 2 * kv) + q * E;
    double dense_p = 3.0 * f * E;
    double router_p = s->n_experts > 0 ? E * s->n_experts : 0;
    double expert_p = 3.0 * fe * E; /* one expert's slice (EP: the whole expert) */
    const int ep = p->ep > 1 ? p->ep : 1;
    double read = (attn_p + dense_p + router_p) * s->bytes_per_weight;
    double flops = 2.0 * b * (attn_p + dense_p + router_p) * n;
    if (s->n_experts > 0) {
        /* TP: the distinct experts the micro-batch touches, each one's column slice; EP: the
         * busiest rank's distinct experts of its slice, whole. Flops: the mean rank's share */
        read += spk_moe_max_distinct_per_rank(s->n_experts, s->n_experts_used, ep, b) * expert_p * spk_shape_bpe(s);
        flops += 2.0 * b * s->n_experts_used / ep * expert_p * n;
    }
    double w_bytes = read * n;

    /* attention over the cache: sliding layers are spread evenly over the stages */
    double frac_swa = (double)s->n_sliding_layers / s->n_layers;
    double ctx_swa = s->sliding_window > 0 && ctx > s->sliding_window ? s->sliding_window : ctx;
    double ctx_eff = (1.0 - frac_swa) * ctx + frac_swa * ctx_swa;
    double kv_bytes = seqs * ctx_eff * 2.0 * kv * spk_shape_bkv(s) * n;
    flops += 4.0 * b * ctx_eff * q * n;

    double ar = 2.0 * n * allreduce_s(hw, p->tp, b * E * act_bytes(hw));
    if (st == 0)
        w_bytes += b * E * spk_shape_bph(s); /* embedding rows */
    if (st == p->pp - 1) {
        double v = t->v1 - t->v0;
        w_bytes += v * E * spk_shape_bph(s);
        flops += 2.0 * b * v * E;
        ar += allreduce_s(hw, p->tp, b * 64.0); /* sharded sampling: exchange of top candidates */
    }
    double bw = hw->mem_bw_GBps * 1e9;
    double t_w = w_bytes / bw, t_kv = kv_bytes / bw, t_c = flops / (hw->tflops * 1e12);
    double total = fmax(t_w + t_kv, t_c) + ar + hw->step_overhead_us * 1e-6;
    if (bd) {
        bd->weight_s = t_w;
        bd->kv_s = t_kv;
        bd->compute_s = t_c;
        bd->allreduce_s = ar;
        bd->overhead_s = hw->step_overhead_us * 1e-6;
        bd->weight_bytes = w_bytes;
        bd->stage_s = total;
    }
    return total;
}

typedef struct balance_at {
    spk_plan p; /* a scratch copy: stage st is given n layers to time it */
    const spk_hw *hw;
    double b, ctx;
} balance_at;

static double stage_time_at(void *ctx, int st, int n)
{
    balance_at *x = ctx;
    x->p.stage[st].l0 = 0;
    x->p.stage[st].l1 = n;
    return stage_time(&x->p, st, x->b, x->b, x->ctx, x->hw, NULL);
}

/* Rebalance p's layers for the time of one decode micro-batch of b tokens at context ctx. */
static spk_status rebalance(spk_plan *p, const spk_hw *hw, double b, double ctx)
{
    balance_at x = {*p, hw, b, ctx};
    return spk_plan_rebalance(p, stage_time_at, &x);
}

spk_status spk_plan_make_ep_at(const spk_shape *s, int pp, int tp, int ep, const spk_hw *hw, double batch,
                               double context, spk_plan *out)
{
    spk_status st = check_hw(hw);
    if (st)
        return st;
    if (!(batch >= 1) || !isfinite(batch) || !(context >= 0) || !isfinite(context))
        return spk_err(SPK_ERR_INVALID_ARG, "plan: balancing batch %g (>= 1) or context %g (>= 0) invalid", batch,
                       context);
    if ((st = spk_plan_make_ep(s, pp, tp, ep, out)) != SPK_OK)
        return st;
    return rebalance(out, hw, batch, context);
}

/* The plan a layout's stages use, its layers balanced for the time of one decode micro-batch of
 * batch/pp sequences at mean context ctx, as the executor balances them. */
static spk_status prepare(const spk_shape *s, int pp, int tp, int ep, const spk_hw *hw, int batch, double ctx,
                          spk_plan *p)
{
    return spk_plan_make_ep_at(s, pp, tp, ep, hw, ceil((double)batch / (pp > 0 ? pp : 1)), ctx, p);
}

/* Decode step with an already made plan. */
static void decode_with(const spk_plan *p, int batch, double ctx, const spk_hw *hw, spk_cost *out)
{
    memset(out, 0, sizeof *out);
    out->pp = p->pp;
    out->tp = p->tp;
    out->ep = p->ep;
    out->executable = 1;
    const double E = p->shape.n_embd;
    int mmax = batch < p->pp ? batch : p->pp;
    double best = INFINITY;
    for (int m = 1; m <= mmax; m++) {
        int b = (batch + m - 1) / m;
        double sum = 0, worst = 0;
        int worst_st = 0;
        for (int st = 0; st < p->pp; st++) {
            double t = stage_time(p, st, b, b, ctx, hw, NULL);
            sum += t;
            if (t > worst) {
                worst = t;
                worst_st = st;
            }
        }
        double xfer = p->pp > 1 ? transfer_s(hw, b * E * act_bytes(hw)) : 0;
        /* sampled token ids go back to stage 0: one small message */
        double ring = sum + (p->pp - 1) * xfer + (p->pp > 1 ? transfer_s(hw, b * 4.0) : 0);
        double step = fmax(m * worst, ring);
        if (step < best * (1 - 1e-12)) {
            best = step;
            stage_time(p, worst_st, b, b, ctx, hw, out);
            out->micro_batches = m;
            out->micro_batch = b;
            out->transfer_s = xfer;
        }
    }
    out->step_s = best;
    out->tok_s = batch / best;
}

spk_status spk_cost_decode_ep(const spk_shape *s, int pp, int tp, int ep, int batch, int context, const spk_hw *hw,
                              spk_cost *out)
{
    if (!out)
        return spk_err(SPK_ERR_INVALID_ARG, "cost_decode: out is NULL");
    if (batch < 1 || context < 0)
        return spk_err(SPK_ERR_INVALID_ARG, "cost_decode: batch %d must be >= 1 and context %d >= 0", batch,
                       context);
    spk_plan p;
    spk_status st = prepare(s, pp, tp, ep, hw, batch, context, &p);
    if (st)
        return st;
    decode_with(&p, batch, context, hw, out);
    return SPK_OK;
}

spk_status spk_cost_decode(const spk_shape *s, int pp, int tp, int batch, int context, const spk_hw *hw,
                           spk_cost *out)
{
    return spk_cost_decode_ep(s, pp, tp, 1, batch, context, hw, out);
}

static void prefill_with(const spk_plan *p, int n_seq, int prompt_len, const spk_hw *hw, spk_cost *out)
{
    memset(out, 0, sizeof *out);
    out->pp = p->pp;
    out->tp = p->tp;
    out->ep = p->ep;
    out->executable = 1;
    double total_tok = (double)n_seq * prompt_len;
    int chunk = hw->prefill_chunk > 0 ? hw->prefill_chunk : 2048;
    double c = total_tok < chunk ? total_tok : chunk;
    double n_chunks = ceil(total_tok / c);
    double ctx = prompt_len / 2.0; /* mean context a prompt token attends to */
    double seqs = fmax(1.0, c / prompt_len); /* sequences whose cache a chunk reads */
    double sum = 0, worst = 0;
    int worst_st = 0;
    for (int st = 0; st < p->pp; st++) {
        double t = stage_time(p, st, c, seqs, ctx, hw, NULL);
        sum += t;
        if (t > worst) {
            worst = t;
            worst_st = st;
        }
    }
    double xfer = p->pp > 1 ? transfer_s(hw, c * p->shape.n_embd * act_bytes(hw)) : 0;
    /* chunks stream through the pipeline: the busiest stage sets the pace once it is full */
    double total = (n_chunks - 1) * fmax(worst, xfer) + sum + (p->pp - 1) * xfer;
    stage_time(p, worst_st, c, seqs, ctx, hw, out);
    out->micro_batches = (int)fmin(n_chunks, 1e9);
    out->micro_batch = (int)c;
    out->transfer_s = xfer;
    out->step_s = total;
    out->tok_s = total_tok / total;
}

spk_status spk_cost_prefill(const spk_shape *s, int pp, int tp, int n_seq, int prompt_len, const spk_hw *hw,
                            spk_cost *out)
{
    if (!out)
        return spk_err(SPK_ERR_INVALID_ARG, "cost_prefill: out is NULL");
    if (n_seq < 1 || prompt_len < 1)
        return spk_err(SPK_ERR_INVALID_ARG, "cost_prefill: n_seq %d and prompt_len %d must be >= 1", n_seq,
                       prompt_len);
    spk_plan p;
    spk_status st = prepare(s, pp, tp, 1, hw, n_seq, prompt_len / 2.0, &p);
    if (st)
        return st;
    prefill_with(&p, n_seq, prompt_len, hw, out);
    return SPK_OK;
}

static void scenario_with(const spk_plan *p, int batch, int isl, int osl, const spk_hw *hw, spk_cost *out)
{
    spk_cost pre, dec;
    prefill_with(p, batch, isl, hw, &pre);
    /* decode: the context grows from isl to isl + osl; midpoint rule over up to 16 segments */
    int seg = osl < 16 ? osl : 16;
    double dec_s = 0;
    for (int i = 0; i < seg; i++) {
        double a = (double)osl * i / seg, e = (double)osl * (i + 1) / seg;
        decode_with(p, batch, isl + (a + e) / 2.0, hw, &dec);
        dec_s += dec.step_s * (e - a);
    }
    decode_with(p, batch, isl + osl / 2.0, hw, out);
    out->prefill_s = pre.step_s;
    out->decode_s = dec_s;
    out->step_s = pre.step_s + dec_s;
    out->tok_s = (double)batch * osl / out->step_s;
}

spk_status spk_cost_scenario(const spk_shape *s, int pp, int tp, int batch, int isl, int osl,
                             const spk_hw *hw, spk_cost *out)
{
    return spk_cost_scenario_ep(s, pp, tp, 1, batch, isl, osl, hw, out);
}

spk_status spk_cost_scenario_ep(const spk_shape *s, int pp, int tp, int ep, int batch, int isl, int osl,
                                const spk_hw *hw, spk_cost *out)
{
    if (!out)
        return spk_err(SPK_ERR_INVALID_ARG, "cost_scenario: out is NULL");
    if (batch < 1 || isl < 1 || osl < 1)
        return spk_err(SPK_ERR_INVALID_ARG, "cost_scenario: batch %d, isl %d, osl %d must all be >= 1", batch,
                       isl, osl);
    spk_plan p;
    spk_status st = prepare(s, pp, tp, ep, hw, batch, isl + osl / 2.0, &p);
    if (st)
        return st;
    scenario_with(&p, batch, isl, osl, hw, out);
    return SPK_OK;
}

/* Insert c into out[0..cap) sorted best (highest tok/s) first; n is how many were inserted. */
static void insert_sorted(spk_cost *out, int cap, int n, const spk_cost *c)
{
    int pos = n < cap ? n : cap;
    while (pos > 0 && out[pos - 1].tok_s < c->tok_s) {
        if (pos < cap)
            out[pos] = out[pos - 1];
        pos--;
    }
    if (pos < cap)
        out[pos] = *c;
}

spk_status spk_plan_rank_layouts_ex(const spk_shape *s, int world, int batch, int isl, int osl, const spk_hw *hw,
                                    unsigned flags, spk_cost *out, int cap, int *n_out)
{
    if (!out || !n_out || cap < 0)
        return spk_err(SPK_ERR_INVALID_ARG, "rank_layouts: out or n_out is NULL");
    *n_out = 0;
    if (world < 1 || world > SPK_PLAN_MAX_WORLD || batch < 1 || isl < 0 || osl < 0 || (osl > 0 && isl < 1))
        return spk_err(SPK_ERR_INVALID_ARG, "rank_layouts: world %d (1..%d), batch %d, isl %d, osl %d invalid",
                       world, SPK_PLAN_MAX_WORLD, batch, isl, osl);
    if (flags & ~(unsigned)SPK_PLAN_NO_EP)
        return spk_err(SPK_ERR_INVALID_ARG, "rank_layouts: unknown flags 0x%x", flags);
    spk_status st = check_hw(hw);
    if (st)
        return st;
    st = spk_shape_check(s);
    if (st)
        return st;
    int n = 0;
    spk_status first_err = SPK_OK;
    char first_msg[256] = "";
    /* every pp x tp, and for a MoE shape each tp > 1 again with its experts split whole (ep = tp);
     * a layout inserted later goes after an equal one, so a tie keeps TP */
    for (int tp = 1; tp <= world && tp <= SPK_PLAN_MAX_TP; tp++) {
        if (world % tp)
            continue;
        const int eps = tp > 1 && s->n_experts > 0 && !(flags & SPK_PLAN_NO_EP) ? 2 : 1;
        for (int e = 0; e < eps; e++) {
            const int ep = e ? tp : 1;
            spk_plan p;
            st = prepare(s, world / tp, tp, ep, hw, batch, osl > 0 ? isl + osl / 2.0 : isl, &p);
            if (st) {
                if (!first_err) {
                    first_err = st;
                    snprintf(first_msg, sizeof first_msg, "%s", spk_err_msg());
                }
                continue;
            }
            spk_cost c;
            if (osl > 0)
                scenario_with(&p, batch, isl, osl, hw, &c);
            else
                decode_with(&p, batch, isl, hw, &c);
            insert_sorted(out, cap, n, &c);
            n++;
        }
    }
    *n_out = n;
    if (n == 0)
        return spk_err(first_err ? first_err : SPK_ERR_UNSUPPORTED, "no valid layout for world %d: %s", world,
                       first_msg);
    return SPK_OK;
}

spk_status spk_plan_rank_layouts(const spk_shape *s, int world, int batch, int isl, int osl, const spk_hw *hw,
                                 spk_cost *out, int cap, int *n_out)
{
    return spk_plan_rank_layouts_ex(s, world, batch, isl, osl, hw, 0, out, cap, n_out);
}

spk_status spk_plan_choose(const spk_shape *s, int world, int batch, const spk_hw *hw, int *best_pp,
                           int *best_tp, int *best_ep)
{
    if (!best_pp || !best_tp)
        return spk_err(SPK_ERR_INVALID_ARG, "plan_choose: best_pp or best_tp is NULL");
    spk_cost best;
    int n;
    spk_status st = spk_plan_rank_layouts_ex(s, world, batch, SPK_COST_DEFAULT_ISL, SPK_COST_DEFAULT_OSL, hw,
                                             best_ep ? 0u : SPK_PLAN_NO_EP, &best, 1, &n);
    if (st)
        return st;
    *best_pp = best.pp;
    *best_tp = best.tp;
    if (best_ep)
        *best_ep = best.ep;
    return SPK_OK;
}
