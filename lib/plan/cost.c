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

/* All-reduce of `bytes` over a group of tp ranks: latency + NCCL bus-bandwidth term. */
static double allreduce_s(const spk_hw *hw, int tp, double bytes)
{
    if (tp <= 1)
        return 0;
    double bw = (hw->allreduce_busbw_GBps > 0 ? hw->allreduce_busbw_GBps : hw->link_Gbps / 8.0) * 1e9;
    return hw->allreduce_latency_us * 1e-6 + 2.0 * (tp - 1) / tp * bytes / bw;
}

/* All-to-all over ep ranks where each rank sends `bytes` in all (its share for itself included):
 * the (ep-1)/ep that leaves the rank at the collective bandwidth (NCCL's all-to-all bus bandwidth
 * is algbw * (ep-1)/ep), after the collective latency. */
static double alltoall_s(const spk_hw *hw, int ep, double bytes)
{
    if (ep <= 1)
        return 0;
    double bw = (hw->allreduce_busbw_GBps > 0 ? hw->allreduce_busbw_GBps : hw->link_Gbps / 8.0) * 1e9;
    return hw->allreduce_latency_us * 1e-6 + (double)(ep - 1) / ep * bytes / bw;
}

static double transfer_s(const spk_hw *hw, double bytes)
{
    return hw->link_latency_us * 1e-6 + bytes / (hw->link_Gbps / 8.0 * 1e9);
}

/* One pass of `b` tokens from `seqs` sequences over stage `st`, on TP part 0 (the largest).
 * `ctx` is the mean attention context of a token. Each sequence's cache is read once per pass
 * (decode: one token per sequence; prefill: a chunk's tokens of one sequence share the read).
 * ep > 1 (expert parallelism, the plan then has tp 1): the stage is ep ranks, each holding the
 * attention, router and head whole and n_experts/ep experts; each takes ceil(b/ep) of the tokens
 * (ceil(seqs/ep) of the sequences) through attention, sends their routed copies to the experts'
 * owners and gets the results back (two all-to-alls per layer), and runs the tokens routed to
 * its own experts. Fills the breakdown if bd; returns seconds. */
static double stage_time(const spk_plan *p, int ep, int st, double b, double seqs, double ctx, const spk_hw *hw,
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
    double expert_p = 3.0 * fe * E; /* one expert's slice */
    const double bl = ep > 1 ? ceil(b / ep) : b, sl = ep > 1 ? ceil(seqs / ep) : seqs; /* this rank's */
    double read = (attn_p + dense_p + router_p) * s->bytes_per_weight;
    double flops = 2.0 * bl * (attn_p + dense_p + router_p) * n;
    if (s->n_experts > 0) {
        /* the distinct experts the whole micro-batch touches; with EP, this rank's share of them */
        read += spk_moe_distinct_experts(s->n_experts, s->n_experts_used, b) / ep * expert_p * spk_shape_bpe(s);
        flops += 2.0 * b * s->n_experts_used / ep * expert_p * n;
    }
    double w_bytes = read * n;

    /* attention over the cache: sliding layers are spread evenly over the stages */
    double frac_swa = (double)s->n_sliding_layers / s->n_layers;
    double ctx_swa = s->sliding_window > 0 && ctx > s->sliding_window ? s->sliding_window : ctx;
    double ctx_eff = (1.0 - frac_swa) * ctx + frac_swa * ctx_swa;
    double kv_bytes = sl * ctx_eff * 2.0 * kv * spk_shape_bkv(s) * n;
    flops += 4.0 * bl * ctx_eff * q * n;

    double ar = ep > 1 ? 2.0 * n * alltoall_s(hw, ep, bl * s->n_experts_used * E * act_bytes(hw))
                       : 2.0 * n * allreduce_s(hw, p->tp, b * E * act_bytes(hw));
    if (st == 0)
        w_bytes += bl * E * spk_shape_bph(s); /* embedding rows */
    if (st == p->pp - 1) {
        double v = t->v1 - t->v0;
        w_bytes += v * E * spk_shape_bph(s);
        flops += 2.0 * bl * v * E;
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
    int ep;
    double b, ctx;
} balance_at;

static double stage_time_at(void *ctx, int st, int n)
{
    balance_at *x = ctx;
    x->p.stage[st].l0 = 0;
    x->p.stage[st].l1 = n;
    return stage_time(&x->p, x->ep, st, x->b, x->b, x->ctx, x->hw, NULL);
}

/* Rebalance p's layers for the time of one decode micro-batch of b tokens at context ctx. */
static spk_status rebalance(spk_plan *p, int ep, const spk_hw *hw, double b, double ctx)
{
    balance_at x = {*p, hw, ep, b, ctx};
    return spk_plan_rebalance(p, stage_time_at, &x);
}

spk_status spk_plan_make_at(const spk_shape *s, int pp, int tp, const spk_hw *hw, double batch, double context,
                            spk_plan *out)
{
    spk_status st = check_hw(hw);
    if (st)
        return st;
    if (!(batch >= 1) || !isfinite(batch) || !(context >= 0) || !isfinite(context))
        return spk_err(SPK_ERR_INVALID_ARG, "plan: balancing batch %g (>= 1) or context %g (>= 0) invalid", batch,
                       context);
    if ((st = spk_plan_make(s, pp, tp, out)) != SPK_OK)
        return st;
    return rebalance(out, 1, hw, batch, context);
}

spk_status spk_plan_check_ep(const spk_shape *s, int pp, int tp, int ep)
{
    spk_status st = spk_shape_check(s);
    if (st)
        return st;
    const char *nm = s->name[0] ? s->name : "model";
    if (ep < 1)
        return spk_err(SPK_ERR_INVALID_ARG, "%s: ep %d must be >= 1", nm, ep);
    if (ep == 1)
        return SPK_OK;
    if (s->n_experts == 0)
        return spk_err(SPK_ERR_UNSUPPORTED, "%s: ep %d: a dense model has no experts to split", nm, ep);
    if (tp != 1)
        return spk_err(SPK_ERR_UNSUPPORTED, "%s: ep %d with tp %d: expert parallelism is modelled with tp 1 only", nm,
                       ep, tp);
    if (s->n_experts % ep != 0)
        return spk_err(SPK_ERR_UNSUPPORTED, "%s: ep %d does not divide the %d experts (every rank holds as many)", nm,
                       ep, s->n_experts);
    if (pp < 1 || (long long)pp * ep > SPK_PLAN_MAX_WORLD)
        return spk_err(SPK_ERR_INVALID_ARG, "%s: pp %d x ep %d: world must be 1..%d", nm, pp, ep, SPK_PLAN_MAX_WORLD);
    return SPK_OK;
}

/* The plan a layout's stages use (EP stages are made as tp 1, every rank of a stage holding 1/ep
 * of each layer's experts), its layers balanced for the time of one decode micro-batch of
 * batch/pp sequences at mean context ctx, as the executor balances them (spk_plan_make_at). */
static spk_status prepare(const spk_shape *s, int pp, int tp, int ep, const spk_hw *hw, int batch, double ctx,
                          spk_plan *p)
{
    spk_status st = check_hw(hw);
    if (st)
        return st;
    if ((st = spk_plan_check_ep(s, pp, tp, ep)) != SPK_OK)
        return st;
    if ((st = spk_plan_make(s, pp, tp, p)) != SPK_OK)
        return st;
    return rebalance(p, ep, hw, ceil((double)batch / pp), ctx);
}

/* Decode step with an already made plan. */
static void decode_with(const spk_plan *p, int ep, int batch, double ctx, const spk_hw *hw, spk_cost *out)
{
    memset(out, 0, sizeof *out);
    out->pp = p->pp;
    out->tp = p->tp;
    out->ep = ep;
    out->executable = ep == 1;
    const double E = p->shape.n_embd;
    int mmax = batch < p->pp ? batch : p->pp;
    double best = INFINITY;
    for (int m = 1; m <= mmax; m++) {
        int b = (batch + m - 1) / m;
        double sum = 0, worst = 0;
        int worst_st = 0;
        for (int st = 0; st < p->pp; st++) {
            double t = stage_time(p, ep, st, b, b, ctx, hw, NULL);
            sum += t;
            if (t > worst) {
                worst = t;
                worst_st = st;
            }
        }
        /* with EP each rank passes its own share of the tokens to its peer in the next stage */
        double bl = ep > 1 ? ceil((double)b / ep) : b;
        double xfer = p->pp > 1 ? transfer_s(hw, bl * E * act_bytes(hw)) : 0;
        /* sampled token ids go back to stage 0: one small message */
        double ring = sum + (p->pp - 1) * xfer + (p->pp > 1 ? transfer_s(hw, bl * 4.0) : 0);
        double step = fmax(m * worst, ring);
        if (step < best * (1 - 1e-12)) {
            best = step;
            stage_time(p, ep, worst_st, b, b, ctx, hw, out);
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
    decode_with(&p, ep, batch, context, hw, out);
    return SPK_OK;
}

spk_status spk_cost_decode(const spk_shape *s, int pp, int tp, int batch, int context, const spk_hw *hw,
                           spk_cost *out)
{
    return spk_cost_decode_ep(s, pp, tp, 1, batch, context, hw, out);
}

static void prefill_with(const spk_plan *p, int ep, int n_seq, int prompt_len, const spk_hw *hw, spk_cost *out)
{
    memset(out, 0, sizeof *out);
    out->pp = p->pp;
    out->tp = p->tp;
    out->ep = ep;
    out->executable = ep == 1;
    double total_tok = (double)n_seq * prompt_len;
    int chunk = hw->prefill_chunk > 0 ? hw->prefill_chunk : 2048;
    double c = total_tok < chunk ? total_tok : chunk;
    double n_chunks = ceil(total_tok / c);
    double ctx = prompt_len / 2.0; /* mean context a prompt token attends to */
    double seqs = fmax(1.0, c / prompt_len); /* sequences whose cache a chunk reads */
    double sum = 0, worst = 0;
    int worst_st = 0;
    for (int st = 0; st < p->pp; st++) {
        double t = stage_time(p, ep, st, c, seqs, ctx, hw, NULL);
        sum += t;
        if (t > worst) {
            worst = t;
            worst_st = st;
        }
    }
    double xfer = p->pp > 1 ? transfer_s(hw, ceil(c / ep) * p->shape.n_embd * act_bytes(hw)) : 0;
    /* chunks stream through the pipeline: the busiest stage sets the pace once it is full */
    double total = (n_chunks - 1) * fmax(worst, xfer) + sum + (p->pp - 1) * xfer;
    stage_time(p, ep, worst_st, c, seqs, ctx, hw, out);
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
    prefill_with(&p, 1, n_seq, prompt_len, hw, out);
    return SPK_OK;
}

static void scenario_with(const spk_plan *p, int ep, int batch, int isl, int osl, const spk_hw *hw, spk_cost *out)
{
    spk_cost pre, dec;
    prefill_with(p, ep, batch, isl, hw, &pre);
    /* decode: the context grows from isl to isl + osl; midpoint rule over up to 16 segments */
    int seg = osl < 16 ? osl : 16;
    double dec_s = 0;
    for (int i = 0; i < seg; i++) {
        double a = (double)osl * i / seg, e = (double)osl * (i + 1) / seg;
        decode_with(p, ep, batch, isl + (a + e) / 2.0, hw, &dec);
        dec_s += dec.step_s * (e - a);
    }
    decode_with(p, ep, batch, isl + osl / 2.0, hw, out);
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
    scenario_with(&p, ep, batch, isl, osl, hw, out);
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
    if (flags & ~(unsigned)SPK_PLAN_WITH_MODELLED)
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
    /* executable layouts pp x tp, then (if asked, MoE only) the modelled pp x ep ones */
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1 && (!(flags & SPK_PLAN_WITH_MODELLED) || s->n_experts == 0))
            break;
        for (int k = pass == 0 ? 1 : 2; k <= world; k++) {
            if (world % k || (pass == 0 && k > SPK_PLAN_MAX_TP))
                continue;
            const int tp = pass == 0 ? k : 1, ep = pass == 0 ? 1 : k;
            spk_plan p;
            st = prepare(s, world / k, tp, ep, hw, batch, osl > 0 ? isl + osl / 2.0 : isl, &p);
            if (st) {
                if (!first_err && pass == 0) {
                    first_err = st;
                    snprintf(first_msg, sizeof first_msg, "%s", spk_err_msg());
                }
                continue;
            }
            spk_cost c;
            if (osl > 0)
                scenario_with(&p, ep, batch, isl, osl, hw, &c);
            else
                decode_with(&p, ep, batch, isl, hw, &c);
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
                           int *best_tp)
{
    if (!best_pp || !best_tp)
        return spk_err(SPK_ERR_INVALID_ARG, "plan_choose: best_pp or best_tp is NULL");
    spk_cost best;
    int n;
    spk_status st =
        spk_plan_rank_layouts(s, world, batch, SPK_COST_DEFAULT_ISL, SPK_COST_DEFAULT_OSL, hw, &best, 1, &n);
    if (st)
        return st;
    *best_pp = best.pp;
    *best_tp = best.tp;
    return SPK_OK;
}
