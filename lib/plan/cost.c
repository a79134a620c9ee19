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

/* Expected distinct experts hit by b tokens each routed to k of n (uniform routing). */
static double distinct_experts(int n, int k, double b)
{
    if (n <= 0)
        return 0;
    return n * (1.0 - pow(1.0 - (double)k / n, b));
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
 * Fills the breakdown if bd; returns seconds. */
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
    double expert_p = 3.0 * fe * E; /* one expert's slice */
    double read = (attn_p + dense_p + router_p) * s->bytes_per_weight;
    double active = attn_p + dense_p + router_p;
    if (s->n_experts > 0) {
        read += distinct_experts(s->n_experts, s->n_experts_used, b) * expert_p * spk_shape_bpe(s);
        active += s->n_experts_used * expert_p;
    }
    double w_bytes = read * n;
    double flops = 2.0 * b * active * n;

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

static spk_status prepare(const spk_shape *s, int pp, int tp, const spk_hw *hw, spk_plan *p)
{
    spk_status st = check_hw(hw);
    if (st)
        return st;
    return spk_plan_make(s, pp, tp, p);
}

/* Decode step with an already made plan. */
static void decode_with(const spk_plan *p, int batch, double ctx, const spk_hw *hw, spk_cost *out)
{
    memset(out, 0, sizeof *out);
    out->pp = p->pp;
    out->tp = p->tp;
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

spk_status spk_cost_decode(const spk_shape *s, int pp, int tp, int batch, int context, const spk_hw *hw,
                           spk_cost *out)
{
    if (!out)
        return spk_err(SPK_ERR_INVALID_ARG, "cost_decode: out is NULL");
    if (batch < 1 || context < 0)
        return spk_err(SPK_ERR_INVALID_ARG, "cost_decode: batch %d must be >= 1 and context %d >= 0", batch,
                       context);
    spk_plan p;
    spk_status st = prepare(s, pp, tp, hw, &p);
    if (st)
        return st;
    decode_with(&p, batch, context, hw, out);
    return SPK_OK;
}

static void prefill_with(const spk_plan *p, int n_seq, int prompt_len, const spk_hw *hw, spk_cost *out)
{
    memset(out, 0, sizeof *out);
    out->pp = p->pp;
    out->tp = p->tp;
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
    spk_status st = prepare(s, pp, tp, hw, &p);
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
    if (!out)
        return spk_err(SPK_ERR_INVALID_ARG, "cost_scenario: out is NULL");
    if (batch < 1 || isl < 1 || osl < 1)
        return spk_err(SPK_ERR_INVALID_ARG, "cost_scenario: batch %d, isl %d, osl %d must all be >= 1", batch,
                       isl, osl);
    spk_plan p;
    spk_status st = prepare(s, pp, tp, hw, &p);
    if (st)
        return st;
    scenario_with(&p, batch, isl, osl, hw, out);
    return SPK_OK;
}

spk_status spk_plan_rank_layouts(const spk_shape *s, int world, int batch, int isl, int osl, const spk_hw *hw,
                                 spk_cost *out, int cap, int *n_out)
{
    if (!out || !n_out || cap < 0)
        return spk_err(SPK_ERR_INVALID_ARG, "rank_layouts: out or n_out is NULL");
    *n_out = 0;
    if (world < 1 || world > SPK_PLAN_MAX_WORLD || batch < 1 || isl < 0 || osl < 0 || (osl > 0 && isl < 1))
        return spk_err(SPK_ERR_INVALID_ARG, "rank_layouts: world %d (1..%d), batch %d, isl %d, osl %d invalid",
                       world, SPK_PLAN_MAX_WORLD, batch, isl, osl);
    spk_status st = check_hw(hw);
    if (st)
        return st;
    st = spk_shape_check(s);
    if (st)
        return st;
    int n = 0;
    spk_status first_err = SPK_OK;
    char first_msg[256] = "";
    for (int tp = 1; tp <= world && tp <= SPK_PLAN_MAX_TP; tp++) {
        if (world % tp)
            continue;
        spk_plan p;
        st = spk_plan_make(s, world / tp, tp, &p);
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
        /* insert sorted, best (highest tok/s) first */
        int pos = n < cap ? n : cap;
        while (pos > 0 && out[pos - 1].tok_s < c.tok_s) {
            if (pos < cap)
                out[pos] = out[pos - 1];
            pos--;
        }
        if (pos < cap)
            out[pos] = c;
        n++;
    }
    *n_out = n;
    if (n == 0)
        return spk_err(first_err ? first_err : SPK_ERR_UNSUPPORTED, "no valid layout for world %d: %s", world,
                       first_msg);
    return SPK_OK;
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
