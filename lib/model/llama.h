/*
 * The llama architecture family (Llama 2/3, SmolLM2, Mistral-like), dense Qwen3 (the same
 * layer with per-head Q/K norms and NEOX RoPE) and Qwen3-MoE (qwen3 with a mixture-of-experts
 * MLP): hyperparameters and weights taken from a
 * validated GGUF file, and the forward pass over a batch of tokens.
 */
#ifndef SPK_MODEL_LLAMA_H
#define SPK_MODEL_LLAMA_H

#include <stdbool.h>
#include <stdint.h>

#include "backend/backend.h"
#include "common/dtype.h"
#include "cpu/ops.h"
#include "cpu/pool.h"
#include "model/gguf.h"

typedef struct spk_hparams {
    char arch[32];                   /* general.architecture (any: spk_hparams_read; see spk_llama_load) */
    int n_layers, n_embd, n_heads, n_kv_heads, head_dim, rot_dim, n_ff, n_vocab, n_ctx_train;
    float eps, rope_theta;
    spk_rope_scaling scaling;
    bool qk_norm;                    /* qwen3: per-head RMSNorm of Q and K before RoPE */
    bool rope_neox;                  /* qwen3: RoPE pairs (i, i + rot_dim/2), not (2i, 2i+1) */
    /* qwen3moe: every layer's MLP is n_expert experts of n_ff (expert_feed_forward_length)
     * columns, n_expert_used of them per token; 0 experts: dense */
    int n_expert, n_expert_used;
    /* gpt-oss: biases on Q/K/V/O, router and experts; learned attention sinks; sliding-window
     * attention of swa_window positions on the even layers (0, 2, ...: llama.cpp's pattern 2 and
     * transformers' layer_types); YaRN RoPE (yarn: the frequencies of transformers'
     * _compute_yarn_parameters with truncate false, attn_factor on cos/sin, i.e. on Q.K squared) */
    bool attn_sinks, biases;
    int swa_window;
    bool yarn;
    float yarn_beta_fast, yarn_beta_slow, yarn_attn_factor;
    /* What the planner's shape needs beyond the forward pass: an always-active shared-expert MLP
     * beside the routed experts (qwen2moe: expert_shared_feed_forward_length x
     * expert_shared_count; 0 otherwise), the layers that slide (swa_window set), and the stored
     * weights' bytes per element (attention and dense MLP, experts, output head) and quant block */
    int n_ff_shared, n_swa_layers, quant_block;
    bool tied;                       /* no output.weight: the head is token_embd */
    double bytes_per_weight, bytes_per_expert, bytes_per_head;
} spk_hparams;


typedef struct spk_layer {
    const float *attn_norm;          /* [n_embd] */
    const float *ffn_norm;           /* [n_embd] */
    const float *q_norm, *k_norm;    /* [head_dim] (qwen3; NULL for llama) */
    spk_wmat wq;                     /* [n_heads*head_dim][n_embd] */
    spk_wmat wk, wv;                 /* [n_kv_heads*head_dim][n_embd] */
    spk_wmat wo;                     /* [n_embd][n_heads*head_dim] */
    spk_wmat w_gate, w_up;           /* [n_ff][n_embd] */
    spk_wmat w_down;                 /* [n_embd][n_ff] */
    spk_moe moe;                     /* MoE layers (moe.n_expert > 0): the MLP instead of w_gate/up/down */
    /* gpt-oss (NULL otherwise): biases of this rank's Q/K/V rows, of the output projection (on
     * every rank: added after the TP sum), the sinks of this rank's query heads */
    const float *bq, *bk, *bv, *bo, *sinks;
    int swa;                         /* sliding window of this layer (0: full attention) */
} spk_layer;

typedef struct spk_weights {
    spk_wmat tok_embd;               /* [n_vocab][n_embd] */
    const float *out_norm;           /* [n_embd] */
    spk_wmat output;                 /* [n_vocab][n_embd]; tok_embd when tied */
    spk_layer *layers;               /* [n_layers] */
    const float *rope_factors;       /* [rot_dim/2] frequency divisors, or NULL */
    void **owned;                    /* buffers of copied slices (shards only) */
    int n_owned;
    uint64_t n_params, n_bytes;
    const char *path;                /* the file's, for messages (lives as long as the file) */
} spk_weights;

/* gpt-oss's YaRN inverse frequencies (transformers' _compute_yarn_parameters, truncate false):
 * freqs [rot_dim/2]; returns the attention factor (0.1 ln(factor) + 1 unless given). */
float spk_yarn_freqs(float *freqs, int rot_dim, float theta, float factor, int orig_ctx, float beta_fast,
                     float beta_slow, float attn_factor);

/* The one reader of a model's hyperparameters: the <arch>.* keys of a validated GGUF file (any
 * architecture: block_count, embedding_length, attention.head_count(_kv), key_length,
 * value_length, feed_forward_length or expert_count / expert_used_count /
 * expert_feed_forward_length / expert_shared_*, context_length, rms epsilon, rope base,
 * dimension count and scaling, sliding_window(_pattern)), the vocabulary from token_embd.weight,
 * and the byte rates of the stored blk.0 / head tensors. Flags of the forward pass (qk_norm,
 * rope_neox, sinks, biases) are set for the architectures spk_llama_load runs. FORMAT naming the
 * key or tensor when one is missing or out of range (blk.0's router / expert tensors must agree
 * with the expert keys); UNSUPPORTED for a value_length unlike key_length or a rope scaling type
 * other than none, linear (and yarn for gpt-oss). hp->arch is set as soon as
 * general.architecture is read, even when a later key fails. Touches no weight page. */
spk_status spk_hparams_read(const spk_gguf_file *f, spk_hparams *hp);

/* spk_hparams_read, UNSUPPORTED unless the architecture is one this forward pass runs (llama,
 * qwen3, qwen3moe, gpt-oss; experts only in the last two), then locate/validate every weight
 * (shape, type, layer count). Only
 * pointers into the mapping are taken: no weight page is touched. */
spk_status spk_llama_load(const spk_gguf_file *f, spk_hparams *hp, spk_weights *w);
void spk_llama_weights_free(spk_weights *w);

/*
 * What one rank computes (pipeline stage x tensor-parallel slice): layers [l0, l1); query heads
 * [h0, h1) = KV heads [kv0, kv1) times the group size; MLP intermediate columns [f0, f1) (of
 * every expert in a MoE model; the router is replicated); output
 * vocabulary rows [v0, v1). The first stage embeds, the last applies the final norm and head.
 */
typedef struct spk_shard {
    int l0, l1, h0, h1, kv0, kv1, f0, f1, v0, v1;
    bool first, last;
    /* MoE layers: the experts this rank runs, [e0, e1) (expert parallelism: the TP group's
     * all-reduce sums the ranks' partial outputs); e1 == 0: all of them */
    int e0, e1;
    /* Sum `n` floats in place across the tensor-parallel group; NULL when the group is 1. */
    spk_status (*allreduce)(void *ctx, float *buf, size_t n);
    void *ar_ctx;
} spk_shard;

/* A first-stage shard of a TP group holds only rows [v0, v1) of the embedding table: it looks up
 * the tokens it has, zeros for the others, and the group's all-reduce sums the rows (exact:
 * every element is one row's value plus zeros). */
bool spk_llama_embd_split(const spk_hparams *hp, const spk_shard *sh);

/* The whole model on one rank. */
void spk_shard_full(const spk_hparams *hp, spk_shard *sh);

/* INVALID_ARG (naming the ranges) unless `sh` fits the model. */
spk_status spk_shard_check(const spk_hparams *hp, const spk_shard *sh);

/* This shard's weights from the full set: row slices are views into the mapping; column slices
 * of the row-parallel matrices (attention output, MLP down) are copied (whole quant blocks) and
 * the mapping's pages they came from are released. Every scale of the shard's weights (f16 d/m
 * of quant blocks, F32/F16/BF16 elements, norm vectors) is checked to be finite: this is the
 * first pass that reads the weight pages, and only this rank's slices are read. FORMAT naming
 * the file, tensor, block and value otherwise. Free with spk_llama_weights_free. */
spk_status spk_llama_shard(const spk_hparams *hp, const spk_weights *full, const spk_shard *sh,
                           spk_weights *out);

/* Run state: activations and the KV cache of this shard, allocated once. */
typedef struct spk_llama spk_llama;

/* n_seq sequences of up to n_ctx tokens each, each with its own slot of the KV cache (batches
 * carry no block tables; seq[i] is the slot); up to max_tok tokens per forward call.
 * `w` comes from spk_llama_shard(sh) (sh NULL: the whole model; w may be the full weights). The
 * column slices a shard owns (w->owned) become this model's: a host backend packs them in place
 * for its kernels, so a shard serves one model and is read after that only to free it. */
spk_status spk_llama_create(const spk_hparams *hp, const spk_weights *w, const spk_shard *sh,
                            int n_ctx, int n_seq, int max_tok, int n_threads, spk_llama **out);

/* A paged KV cache of n_blocks blocks of block_size positions (per layer of this shard);
 * every batch carries the block tables of its sequences. */
/* The forward pass runs on `backend` (spk_backend_create: n_threads for the CPU, device for a
 * GPU); a device backend gets its own copy of the weights (or reads them in place, see
 * docs/BACKENDS.md), while hidden states and logits stay host arrays for the caller. */
spk_status spk_llama_create_paged(const spk_hparams *hp, const spk_weights *w, const spk_shard *sh,
                                  int n_ctx, int n_blocks, int block_size, int max_tok,
                                  int n_threads, spk_backend_type backend, int device, spk_llama **out);
void spk_llama_free(spk_llama *m);

/* One batch: token i of sequence seq[i] at position pos[i] (positions of a sequence must be
 * contiguous with what its cache already holds). */
typedef struct spk_batch {
    int n_tok;
    const int32_t *token;
    const int32_t *pos;
    const int32_t *seq;              /* slot (no block tables) or index into the tables below */
    const uint8_t *want_logits;
    /* paged KV (NULL block_table: slots): sequence s's blocks are
     * block_table[table_off[s] ...], covering every position up to its largest in the batch */
    int n_seqs;
    const int32_t *table_off;
    const int32_t *block_table;
    int n_table;
} spk_batch;

/*
 * Run this shard on a batch. A non-first stage reads hidden_in [n_tok][n_embd]. A non-last stage
 * writes its output hidden states [n_tok][n_embd] to `out`; the last stage writes, for each i with
 * want_logits[i] (in order), a row of (v1 - v0) logits to `out`. INVALID_ARG on bad ids/positions;
 * a failed TP all-reduce returns its status.
 */
spk_status spk_llama_forward(spk_llama *m, const spk_batch *b, const float *hidden_in, float *out);

int spk_llama_n_ctx(const spk_llama *m);
int spk_llama_block_size(const spk_llama *m);
int spk_llama_n_blocks(const spk_llama *m);
int spk_llama_max_tok(const spk_llama *m);
int spk_llama_n_out(const spk_llama *m);   /* logits per row: v1 - v0 */
uint64_t spk_llama_kv_bytes(const spk_llama *m);    /* bytes of the KV cache */
uint64_t spk_llama_alloc_bytes(const spk_llama *m); /* bytes of the run state, KV cache included */
/* Bytes of weight matrices the CPU backend repacked at load (not in alloc_bytes: each packed copy
 * takes the place of the same bytes of the mapping, whose pages are dropped; SPK_NO_REPACK=1: 0). */
uint64_t spk_llama_packed_bytes(const spk_llama *m);
const spk_backend *spk_llama_backend(const spk_llama *m); /* what it computes on (memory kind, name) */

#endif
