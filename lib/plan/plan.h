/*
 * Partition plan: how a model of a given shape is split over world = pp x tp ranks.
 * Pure arithmetic on the shape (no I/O, no allocation); the loader and the forward pass read
 * their rank's slice from it. Formulas and rules: docs/PLANNER.md.
 */
#ifndef SPK_PLAN_PLAN_H
#define SPK_PLAN_PLAN_H

#include <stdbool.h>

#include "sparkinfer/sparkinfer.h"

/* Limits of a plan (fixed arrays, so a plan is a plain value that can be copied and sent). */
#define SPK_PLAN_MAX_PP 256
#define SPK_PLAN_MAX_TP 64
#define SPK_PLAN_MAX_WORLD 1024

/*
 * The shape of a decoder-only model: what the plan and the cost model need to know.
 * Byte rates are bytes per weight element as stored (Q4_0 18/32 = 0.5625, Q4_1 20/32 = 0.625,
 * Q8_0 34/32 = 1.0625, MXFP4 17/32 = 0.53125, BF16/F16 2, F32 4).
 */
typedef struct spk_shape {
    char name[48];              /* for messages ("llama-3.1-8b", a file name) */
    int n_layers;
    int n_embd;
    int n_heads;                /* query heads */
    int n_kv_heads;             /* must divide n_heads */
    int head_dim;
    int n_ff;                   /* dense MLP intermediate size. With n_experts > 0 it is the
                                   always-active shared-expert MLP of every MoE layer (total
                                   width of the shared experts; 0: none, as in gpt-oss and
                                   Qwen3-MoE) */
    int n_vocab;
    int n_experts;              /* MoE: experts per layer; 0 for a dense model */
    int n_experts_used;         /* MoE: experts each token is routed to (top-k) */
    int n_ff_expert;            /* MoE: intermediate size of one expert */
    int quant_block;            /* elements per quant block along a row (32; 256 for K-quants;
                                   1 for BF16/F32); row-parallel slices are whole blocks. 0: 32 */
    int sliding_window;         /* tokens a sliding-window layer attends to; 0: none */
    int n_sliding_layers;       /* how many layers use the sliding window */
    int tied_embeddings;        /* 1: the output head is the token embedding matrix */
    double bytes_per_weight;    /* attention and dense-MLP matrices */
    double bytes_per_expert;    /* MoE expert matrices; 0: bytes_per_weight */
    double bytes_per_head;      /* output head (and embedding table); 0: bytes_per_weight */
    double bytes_per_kv;        /* one K or V cache element; 0: 2 (F16/BF16) */
} spk_shape;

/* Fill *out with a named preset shape: "llama-3.1-8b", "mistral-small-24b", "gpt-oss-20b",
 * "gpt-oss-120b", "qwen3-30b-a3b", "smollm2-135m", "tiny", "tiny-moe". NOT_FOUND (naming the known presets)
 * for another name. The figures and their sources are in docs/PLANNER.md. */
spk_status spk_shape_preset(const char *name, spk_shape *out);

/* NULL-terminated list of the preset names (static). */
const char *const *spk_shape_preset_names(void);

/* Check a shape for consistency (positive sizes, n_heads % n_kv_heads == 0, MoE fields
 * together, byte rates > 0). INVALID_ARG naming the field and its value. */
spk_status spk_shape_check(const spk_shape *s);

/* One pipeline stage: layers [l0, l1). Stage 0 also embeds; the last stage also applies the
 * final norm and the output head. */
typedef struct spk_plan_stage {
    int l0, l1;
    double cost;                /* the stage's balancing cost: weight bytes (spk_plan_make), or
                                   what spk_plan_rebalance's cost function says */
} spk_plan_stage;

/* One tensor-parallel part (the same for every stage). */
typedef struct spk_plan_tpart {
    int kv0, kv1;               /* KV heads [kv0, kv1) */
    int q0, q1;                 /* query heads [q0, q1) = [kv0*g, kv1*g), g = n_heads/n_kv_heads */
    int f0, f1;                 /* dense MLP intermediate [f0, f1), whole quant blocks */
    int fe0, fe1;               /* expert MLP intermediate [fe0, fe1), whole quant blocks */
    int v0, v1;                 /* output-head vocabulary rows [v0, v1) */
    int x0, x1;                 /* MoE: experts [x0, x1) this part runs (expert parallelism, ep > 1:
                                   n_experts/ep whole experts each, fe = every column; ep 1: all) */
} spk_plan_tpart;

typedef struct spk_plan {
    int pp, tp, world;
    int ep;                     /* 1: experts split by columns like a dense MLP (TP); == tp: each
                                   rank of a TP group holds n_experts/tp whole experts (EP) */
    int group;                  /* query heads per KV head */
    spk_shape shape;
    spk_plan_stage stage[SPK_PLAN_MAX_PP];
    spk_plan_tpart part[SPK_PLAN_MAX_TP];
} spk_plan;

/*
 * Make the plan for `pp` stages of `tp` ranks each. Rank r is stage r / tp, tp rank r % tp
 * (a TP group is consecutive ranks, meant to share a node). Layers are split into contiguous
 * ranges minimizing the largest stage cost, every stage >= 1 layer. The cost here is weight bytes
 * (the last stage also pays the output head): right while a step is memory-bound. Where compute
 * counts (batched decode on a CPU), spk_plan_make_ep_at (plan/cost.h) rebalances by predicted time. Heads are split at KV-group granularity, the MLP and expert
 * intermediate dimensions in whole quant blocks, the vocabulary by rows; each as evenly as
 * possible, larger parts first.
 * Errors (message names the constraint and the numbers; *out unspecified):
 *   INVALID_ARG: NULL, pp or tp < 1, world > SPK_PLAN_MAX_WORLD, pp > SPK_PLAN_MAX_PP,
 *                tp > SPK_PLAN_MAX_TP, a shape that fails spk_shape_check;
 *   UNSUPPORTED: pp > n_layers, tp > n_kv_heads, an MLP (or expert) intermediate size that is
 *                not a whole number of quant blocks or has fewer blocks than tp, an
 *                attention-output slice (q heads * head_dim) not starting on a quant block,
 *                tp > n_vocab.
 */
spk_status spk_plan_make(const spk_shape *shape, int pp, int tp, spk_plan *out);

/*
 * spk_plan_make with expert parallelism: ep 1 is spk_plan_make; ep > 1 keeps the TP split of
 * attention, dense MLP and vocabulary, but each rank of a TP group holds n_experts/ep whole
 * experts (every intermediate column) instead of a column slice of every expert, and the group's
 * all-reduce sums the partial MoE outputs. ep > 1 needs a MoE shape (UNSUPPORTED "a dense model
 * has no experts"), ep == tp (UNSUPPORTED: experts are split over the ranks of a TP group) and ep
 * dividing n_experts (UNSUPPORTED); ep < 1 or > SPK_PLAN_MAX_TP is INVALID_ARG. The expert
 * intermediate size is then not split, so its quant-block rule does not apply.
 */
spk_status spk_plan_make_ep(const spk_shape *shape, int pp, int tp, int ep, spk_plan *out);

/* Stage st's cost when it holds n layers (stage 0 embeds, stage pp-1 has the head); must not
 * decrease with n and must be the same for every middle stage. */
typedef double (*spk_stage_cost_fn)(void *ctx, int st, int n_layers);

/* Split the plan's layers again, minimizing the largest cost(ctx, st, n) over its stages.
 * INVALID_ARG: NULL, or a cost that is negative, not finite or shrinks with more layers. */
spk_status spk_plan_rebalance(spk_plan *p, spk_stage_cost_fn cost, void *ctx);

/* What one rank holds and does. */
typedef struct spk_rank_slice {
    int rank, stage, tp_rank;
    int l0, l1;                 /* layers [l0, l1) */
    int kv0, kv1, q0, q1;       /* heads */
    int f0, f1, fe0, fe1;       /* MLP / expert intermediate columns */
    int v0, v1;                 /* output-head rows; v0 == v1 == 0 unless has_head */
    bool embeds;                /* stage 0: looks up token embeddings */
    bool has_head;              /* last stage: final norm, output head, sampling */
    int prev_rank, next_rank;   /* same tp rank in the previous / next stage; -1 at the ends */
    int x0, x1;                 /* MoE experts [x0, x1) the rank runs (all unless ep > 1) */
} spk_rank_slice;

/* The slice of `rank`. INVALID_ARG if rank is outside [0, world). */
spk_status spk_plan_rank(const spk_plan *p, int rank, spk_rank_slice *out);

/* Rank of (stage, tp_rank), or -1 if out of range. */
int spk_plan_rank_of(const spk_plan *p, int stage, int tp_rank);

/* Stage holding `layer`, or -1 if out of range. */
int spk_plan_stage_of_layer(const spk_plan *p, int layer);

/* Bytes of weights `rank` holds (its layers' slices, plus embedding table and head slice where
 * it has them). 0 for a rank out of range. */
double spk_plan_rank_bytes(const spk_plan *p, int rank);

/* A one-line description ("pp 2 x tp 1: stage 0 layers 0-18, stage 1 layers 19-29 + head;
 * tp parts kv 2+1"), truncated to cap. Returns buf. */
char *spk_plan_describe(const spk_plan *p, char *buf, int cap);

/* Weight bytes of one whole layer, the output head, and the embedding table (helpers shared
 * with the cost model). */
double spk_shape_layer_bytes(const spk_shape *s);
double spk_shape_head_bytes(const spk_shape *s);
double spk_shape_embd_bytes(const spk_shape *s);

/* Parameter counts (elements, not bytes; norms and biases left out): every weight of the model
 * (embedding table counted once more when untied), and those one token uses (attention, dense or
 * shared MLP, router, n_experts_used experts per layer, output head; the embedding row is not
 * counted). gpt-oss-120b: 116.8e9 / 5.1e9; qwen3-30b-a3b: 30.5e9 / 3.0e9 (docs/PLANNER.md). */
double spk_shape_total_params(const spk_shape *s);
double spk_shape_active_params(const spk_shape *s);

/* Effective values of the defaulted shape fields. */
int spk_shape_block(const spk_shape *s);
double spk_shape_bpe(const spk_shape *s);   /* bytes per expert weight */
double spk_shape_bph(const spk_shape *s);   /* bytes per head weight */
double spk_shape_bkv(const spk_shape *s);   /* bytes per KV element */

/* ---- adapters for the llama forward pass (lib/model/llama.h; defined in plan/shard.c) ------ */
struct spk_hparams;
struct spk_shard;

/* A model's shape from its hyperparameters (spk_hparams_read in lib/model reads them, with the
 * stored weights' byte rates, from the file once; the planner never reads a file): named after
 * path's last component (the architecture when NULL); KV elements count 2 bytes (fp16 cache).
 * INVALID_ARG if the result fails spk_shape_check. docs/PLANNER.md section 1. */
spk_status spk_shape_from_hparams(const struct spk_hparams *hp, const char *path, spk_shape *out);

/* Fill the forward pass's shard description for `rank` (layers, query/KV heads, MLP columns,
 * vocabulary rows of its TP part, first/last stage; with ep > 1 its experts [e0, e1) and every
 * expert column); the all-reduce hook is left NULL.
 * INVALID_ARG if rank is outside [0, world). */
spk_status spk_plan_shard(const spk_plan *p, int rank, struct spk_shard *out);

#endif
