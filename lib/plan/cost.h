/*
 * Cost model: predicted decode / prefill / whole-run throughput of a pp x tp layout from the
 * model shape, the batch and a few hardware figures; and the layout choice it implies.
 * Every term and its formula is explained in docs/PLANNER.md.
 */
#ifndef SPK_PLAN_COST_H
#define SPK_PLAN_COST_H

#include "plan/plan.h"

/* Hardware figures, per rank (one rank = one GPU or one CPU socket) and per link between ranks. */
typedef struct spk_hw {
    double mem_bw_GBps;          /* weight/KV read bandwidth of one rank, GB/s (1e9 B/s) */
    double tflops;               /* dense matmul throughput of one rank, TFLOP/s */
    double link_Gbps;            /* point-to-point link rate between ranks, Gbit/s */
    double link_latency_us;      /* one-way latency of a small point-to-point message */
    double allreduce_latency_us; /* all-reduce of a small (8-16 KiB) message */
    double allreduce_busbw_GBps; /* all-reduce bus bandwidth (NCCL's definition) for the message
                                    sizes of TP decode; 0: link_Gbps / 8 */
    double step_overhead_us;     /* fixed cost per micro-batch per stage (launches, scheduling) */
    double act_bytes;            /* bytes per activation element on the wire; 0: 2 (BF16) */
    int prefill_chunk;           /* prompt tokens per prefill chunk; 0: 2048 */
} spk_hw;

/* Generic figures: DGX Spark hardware (273 GB/s, 100 TFLOP/s, 200 Gb/s, 5 us link latency,
 * 30 us small all-reduce) with the all-reduce running at link rate. */
void spk_hw_init(spk_hw *hw);

/* All-reduce bus bandwidth (GB/s) observed on two DGX Sparks for TP-decode message sizes. */
#define SPK_DGX_SPARK_AR_BUSBW 0.65

/* DGX Spark as observed by inference stacks: spk_hw_init's figures plus the all-reduce bus
 * bandwidth measured in practice for 10 KiB - 1 MiB messages (see docs/PLANNER.md). */
void spk_hw_dgx_spark(spk_hw *hw);

/* One CPU rank, as measured for one thread of this project's 2-core AMD EPYC VM (bench/layouts.sh):
 * 18 GB/s, 0.1 TFLOP/s, 15 Gb/s loopback, 15 us latency, 55 us all-reduce. Coarse; what matters
 * for balancing a pipeline is their ratio (flops per byte where a step turns compute-bound). */
void spk_hw_cpu(spk_hw *hw);

/*
 * spk_plan_make_ep (ep 1, or ep == tp: experts split whole), its layers balanced by the cost
 * model's time of one decode micro-batch of `batch` tokens at mean context `context` on `hw` (stage_time: weight and KV bytes over
 * bandwidth against flops over peak; stage 0 also embeds, the last stage runs the output head for
 * every token). At batch 1 on a GPU this is close to the byte balance; on a CPU at batch 32 the
 * output head weighs by its flops, so the last stage gets more layers than bytes would give it.
 * Errors: those of spk_plan_make_ep, and INVALID_ARG for bad hw figures, batch < 1 or context < 0.
 */
spk_status spk_plan_make_ep_at(const spk_shape *shape, int pp, int tp, int ep, const spk_hw *hw, double batch,
                               double context, spk_plan *out);

/* A prediction for one layout. Times in seconds. The breakdown is for one micro-batch on the
 * busiest stage (decode) or one chunk (prefill). */
typedef struct spk_cost {
    int pp, tp;
    int micro_batches;           /* decode: micro-batches in flight */
    int micro_batch;             /* decode: sequences per micro-batch */
    double tok_s;                /* decode: batch / step_s; prefill: prompt tokens/s;
                                    scenario: output tokens / total time */
    double step_s;               /* decode: one step (every sequence advances one token);
                                    prefill / scenario: total time */
    double stage_s;              /* one micro-batch (chunk) on the busiest stage, all terms */
    double weight_s;             /* weight bytes / bandwidth */
    double kv_s;                 /* KV-cache bytes / bandwidth */
    double compute_s;            /* flops / peak */
    double allreduce_s;          /* TP all-reduces */
    double transfer_s;           /* one stage-to-stage activation transfer */
    double overhead_s;           /* step_overhead_us */
    double weight_bytes;         /* weight bytes the busiest stage reads per micro-batch */
    double prefill_s, decode_s;  /* scenario: the two phases */
    int ep;                      /* 1: experts split by columns (TP); == tp: whole experts split
                                    over the TP group (expert parallelism) */
    int executable;              /* 1: the executor runs this layout (every layout costed today) */
} spk_cost;

/* Expected number of distinct experts that b tokens touch when each is routed to k of n_expert
 * experts uniformly at random: n(1 - (1 - k/n)^b). b = 1 gives k, it grows with b and tends to
 * n; 0 for n_expert <= 0, k <= 0 or b <= 0; n for k >= n. Decode reads exactly these experts'
 * weights, so a MoE model's weight traffic per step grows with the batch until every expert is
 * touched (docs/PLANNER.md). */
double spk_moe_distinct_experts(int n_expert, int k, double b);

/* Expected distinct experts of its own n_expert/ep slice that the busiest of ep ranks sees when
 * b tokens are each routed to k of n_expert experts uniformly at random: E[max over ranks], each
 * rank's count taken as an independent Binomial(n_expert/ep, 1 - (1 - k/n)^b) (within 3% of a
 * Monte Carlo of the real, slightly anti-correlated counts for 128 experts, top-4/8, ep 2/4, batch
 * 1-64; docs/PLANNER.md). ep 1: spk_moe_distinct_experts. Always >= its mean D(b)/ep: at batch 1
 * one rank gets more than k/ep (Qwen3-30B-A3B, ep 2: 5.1 of the 8). 0 for bad arguments. */
double spk_moe_max_distinct_per_rank(int n_expert, int k, int ep, double b);

/* Decode: `batch` sequences, each with `context` tokens already in its KV cache, each
 * producing one token per step. INVALID_ARG on a bad layout/shape/figure, with the plan's
 * message for layouts the plan rejects (UNSUPPORTED). */
spk_status spk_cost_decode(const spk_shape *s, int pp, int tp, int batch, int context, const spk_hw *hw,
                           spk_cost *out);

/* spk_cost_decode for a layout whose experts are split whole over the tp ranks of each group
 * (ep == tp > 1, spk_plan_make_ep), or ep 1: spk_cost_decode. The plan's errors otherwise. */
spk_status spk_cost_decode_ep(const spk_shape *s, int pp, int tp, int ep, int batch, int context, const spk_hw *hw,
                              spk_cost *out);

/* Prefill: `n_seq` prompts of `prompt_len` tokens, in chunks of hw->prefill_chunk tokens
 * pipelined over the stages. tok_s is prompt tokens per second. */
spk_status spk_cost_prefill(const spk_shape *s, int pp, int tp, int n_seq, int prompt_len, const spk_hw *hw,
                            spk_cost *out);

/* A whole run as the published study measures it: `batch` requests of `isl` prompt tokens and
 * `osl` output tokens each, prefill then decode (the context growing from isl to isl+osl).
 * tok_s is output tokens / total time; step_s the total time. */
spk_status spk_cost_scenario(const spk_shape *s, int pp, int tp, int batch, int isl, int osl,
                             const spk_hw *hw, spk_cost *out);

/* spk_cost_scenario for a layout with expert parallelism (ep == tp, or 1). */
spk_status spk_cost_scenario_ep(const spk_shape *s, int pp, int tp, int ep, int batch, int isl, int osl,
                                const spk_hw *hw, spk_cost *out);

/* The workload spk_plan_choose optimizes: a balanced serving run (the study's "balanced"). */
#define SPK_COST_DEFAULT_CONTEXT 1024
#define SPK_COST_DEFAULT_ISL 1024
#define SPK_COST_DEFAULT_OSL 1024

/* Predict every valid layout pp x tp == world, and for a MoE shape every tp > 1 once more with
 * ep = tp (layouts the plan rejects are skipped), best (highest tok_s; on a tie the one without
 * EP) first, into out[0..cap); *n_out is how many were valid (may exceed cap).
 * With osl > 0 the figure is spk_cost_scenario(batch, isl, osl); with osl == 0 it is
 * spk_cost_decode(batch, context = isl). INVALID_ARG on bad arguments; if no layout is valid,
 * the plan's error for the first one tried (pp = world, tp = 1). */
spk_status spk_plan_rank_layouts(const spk_shape *s, int world, int batch, int isl, int osl, const spk_hw *hw,
                                 spk_cost *out, int cap, int *n_out);

/* spk_plan_rank_layouts with flags: SPK_PLAN_NO_EP leaves the expert-parallel layouts out. */
#define SPK_PLAN_NO_EP 2u
spk_status spk_plan_rank_layouts_ex(const spk_shape *s, int world, int batch, int isl, int osl, const spk_hw *hw,
                                    unsigned flags, spk_cost *out, int cap, int *n_out);

/* The best layout for `world` ranks serving `batch` concurrent requests: the balanced scenario
 * SPK_COST_DEFAULT_ISL / SPK_COST_DEFAULT_OSL (prefill and decode both count, as in service).
 * best_ep NULL: pp x tp only; else EP layouts compete too and *best_ep is 1 or tp. */
spk_status spk_plan_choose(const spk_shape *s, int world, int batch, const spk_hw *hw, int *best_pp,
                           int *best_tp, int *best_ep);

#endif
