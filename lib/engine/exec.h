/*
 * Step executor: runs one batch through the model on this process alone, or across the ranks
 * of a cluster (pipeline stages pass hidden states, tensor-parallel groups all-reduce and sample
 * over vocabulary shards), and returns one sampled token per logits row.
 */
#ifndef SPK_ENGINE_EXEC_H
#define SPK_ENGINE_EXEC_H

#include <stdint.h>

#include "cluster/cluster.h"
#include "engine/sampler.h"
#include "model/gguf.h"
#include "model/llama.h"

typedef struct spk_exec spk_exec;

/* Sampling for one logits row; u is the request's uniform draw for this token. */
typedef struct spk_row {
    spk_sampling sp;
    double u;
    int lp;                       /* -1: no log-probs; else also this many alternatives (<= 20) */
    int32_t target;               /* -1: sample; else a prompt row: the token is this one (the next
                                     prompt token) and only its log-probs are computed (lp >= 0) */
    int n_pen;                    /* penalties on this row's logits before sampling */
    const spk_pen *pen;
} spk_row;

/* Log-probs of a row's sampled token and its top alternatives: the model's log-softmax over the
 * whole vocabulary (raw logits: before penalties and temperature). */
typedef struct spk_row_lp {
    float logprob;
    int32_t n_top;
    spk_token_logprob top[SPK_MAX_TOP_LOGPROBS];
} spk_row_lp;

typedef struct spk_exec_params {
    const char *path;             /* model file (workers open it themselves) */
    int pp, tp;                   /* pp * tp == world size of the cluster */
    int n_ctx;                    /* max tokens per sequence */
    int n_blocks, block_size;     /* paged KV cache (every rank holds its share of each block) */
    int max_tok, n_threads;
    int max_rows;                 /* logits rows per step at most (the engine: one per sequence) */
    int backend, device;          /* spk_backend_type and GPU ordinal, every rank */
    int ep;                       /* 1 (or 0): experts column-split like the MLP; == tp: split whole
                                     over the TP group (expert parallelism, spk_plan_make_ep) */
} spk_exec_params;

/*
 * Driver side: build this rank's shard from an already loaded file and weights (borrowed; they
 * must outlive the executor), and with a cluster of several ranks tell every worker to load its
 * own. cluster may be NULL (one process). Errors name the failing rank.
 */
spk_status spk_exec_open(spk_cluster *cluster, const spk_gguf_file *f, const spk_hparams *hp,
                         const spk_weights *full, const spk_exec_params *p, spk_exec **out);

/* Release this rank's shard and tell the workers to release theirs. */
void spk_exec_close(spk_exec *e);

/*
 * Run one step in two halves, so a pipeline can hold several micro-batches; tokens[i] is the
 * token sampled for the i-th row with want_logits, and lp[i] its log-probs when rows[i].lp >= 0
 * (lp may be NULL when no row asks). begin sends the batch to
 * the workers and runs this rank's stage (returning as soon as its hidden states are handed to
 * the next stage); finish waits for the last stage's tokens. Micro-batches finish in the order
 * they began; at most spk_exec_depth() are worth keeping in flight. `tokens` must stay valid
 * until finish (it is written by begin when this rank is the last stage).
 */
typedef struct spk_exec_ticket {
    uint32_t req;
    int n_rows;
    int done;
    int lp;                       /* some row asked for log-probs: the reply carries them */
} spk_exec_ticket;
int spk_exec_depth(const spk_exec *e);
spk_status spk_exec_begin(spk_exec *e, const spk_batch *b, const spk_row *rows, int n_rows,
                          int32_t *tokens, spk_row_lp *lp, spk_exec_ticket *t);
spk_status spk_exec_finish(spk_exec *e, spk_exec_ticket *t, int32_t *tokens, spk_row_lp *lp);

/* Choose pp x tp (and, when ep is not NULL, whether a MoE model splits its experts whole over
 * each TP group: *ep 1 or tp) for the cluster: measures this machine's memory bandwidth and the
 * control link to rank 1 (latency and bandwidth), then asks the cost model (lib/plan/cost.h) for
 * the best layout at `batch` concurrent sequences. The figures used go to *hw (may be NULL). */
struct spk_hw;
struct spk_shape;
spk_status spk_exec_choose_layout(spk_cluster *c, const struct spk_shape *shape, int batch,
                                  struct spk_hw *hw, int *pp, int *tp, int *ep);

/* What `rank` holds (a round trip to a worker). */
spk_status spk_exec_rank_stats(spk_exec *e, int rank, spk_rank_stats *out);

/* Resident memory of this process in bytes (from /proc/self/statm; 0 if unknown). */
uint64_t spk_rss_bytes(void);

/* The driver's LOAD command to a worker: u32 version (SPK_EXEC_LOAD_VERSION), pp, tp, n_ctx,
 * n_blocks, block_size, max_tok, path length, max_rows, backend, device, ep (version 4; 0 or 1:
 * no expert parallelism, else it must equal tp); the
 * driver's spk_gguf_identity of the file; the path. A worker checks the sizes against what it can hold and refuses a file whose identity
 * differs from the driver's. */
#define SPK_EXEC_CMD_LOAD (SPK_CLUSTER_CMD_USER + 0x100)
#define SPK_EXEC_LOAD_VERSION 4u
#define SPK_EXEC_LOAD_WORDS 12

/* Worker side: handle the driver's model commands while spk_cluster_serve runs. The returned
 * state is freed (with any model it holds) by spk_exec_worker_free after serve returns. */
typedef struct spk_exec_worker spk_exec_worker;
spk_status spk_exec_worker_register(spk_cluster *c, spk_exec_worker **out);
void spk_exec_worker_free(spk_cluster *c, spk_exec_worker *w);

#endif
