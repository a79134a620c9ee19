/*
 * The compute backend seam: the op set a transformer forward pass needs, over buffers in the
 * backend's memory, so that the layer loop (lib/model/llama.c) is written once for every backend.
 *
 * How a forward runs: spk_backend_run(be, fn, arg) calls fn(arg, ith, nth). The CPU backend calls
 * it on every thread of its pool at once; each op does thread ith's share of the work and
 * spk_backend_barrier() separates ops that depend on each other (one dispatch per forward, no
 * per-op wake-ups). A stream backend (CUDA) calls fn once with (0, 1): each op enqueues its kernel
 * in stream order and the barrier is a no-op. Ops never allocate and never talk to the network;
 * the TP all-reduce is the model's callback, told the memory kind of the buffer it sums.
 *
 * Optional methods say so ("may be NULL"). Internal: this table is not part of the public ABI.
 */
#ifndef SPK_BACKEND_BACKEND_H
#define SPK_BACKEND_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "common/dtype.h"
#include "sparkinfer/sparkinfer.h"

/* Where a buffer lives: what a transport must be told when it moves one. */
typedef enum spk_mem_kind {
    SPK_MEM_HOST = 0,   /* ordinary (or pinned / unified) host memory */
    SPK_MEM_DEVICE = 1, /* device memory of the backend's GPU */
} spk_mem_kind;

/* A weight matrix [n_out][n_in] of `type` rows (quantized or float), in backend memory.
 * `layout` says how the rows are stored: SPK_WLAYOUT_ROWS, the file's row-major layout (what
 * every backend and op takes), or a layout the backend's pack() made for its kernels:
 * SPK_WLAYOUT_R8 (CPU), rows in interleaved groups of 8 (the n_out % 8 leftover rows in the
 * file's layout, at the file's offsets; see cpu/repack.c). Only matmul and embed read it. */
enum { SPK_WLAYOUT_ROWS = 0, SPK_WLAYOUT_R8 = 1 };
/* The modes of spk_backend_ops.pack. */
enum { SPK_PACK_COPY, SPK_PACK_DROP, SPK_PACK_IN_PLACE };

typedef struct spk_wmat {
    const void *data;
    spk_dtype type;
    int n_in, n_out;
    uint8_t layout;
} spk_wmat;

/* The paged KV cache of a shard: per layer, `rows` (= blocks x block_size) rows of kv_dim f16. */
typedef struct spk_kv_cache {
    spk_f16 *k, *v;     /* [layer][rows][kv_dim] */
    size_t rows;
    int kv_dim, n_kv_heads, head_dim, block_size, n_ctx;
} spk_kv_cache;

/* What attention and the KV store need of a batch (host arrays; a device backend copies them in
 * begin()). Token i of the batch belongs to sequence seq[i] at position pos[i]; sequence s's cache
 * blocks are block_table[table_off[s] ...] (NULL block_table: sequence s owns the consecutive
 * blocks s * ceil(n_ctx / block_size) ...). contig[s]: sequence s's blocks are consecutive. */
typedef struct spk_step {
    int n_tok;
    const int32_t *token, *pos, *seq;
    const int32_t *table_off, *block_table;
    const uint8_t *contig;
    int n_seqs, n_table;        /* entries of table_off and block_table (with a block table) */
} spk_step;

/* A mixture-of-experts MLP (one layer, this rank's slice): a router picks k of n_expert experts
 * per token and the output is the weighted sum of the chosen experts' gated MLPs. Expert e's
 * matrices are gate/up/down with data at + (e - e0) * stride_* bytes (views into the stacked 3D GGUF
 * tensors, or a TP rank's slices of them: gate/up rows [f0, f1) and down columns [f0, f1) of
 * every expert). The flags pick the variant:
 *   SPK_MOE_SOFTMAX_ALL   qwen3moe / Mixtral: softmax over all n_expert logits, then top-k
 *   SPK_MOE_NORM_TOPK     then the k weights are renormalised to sum to 1 (norm_topk_prob)
 *   (neither gating flag) gpt-oss: top-k of the raw logits, softmax over the k selected
 *   SPK_MOE_SWIGLU_OAI    gpt-oss's clamped SwiGLU: g = min(gate, limit), u = clamp(up, +-limit),
 *                         out = (u + 1) * g * sigmoid(alpha * g); else silu(gate) * up
 * The bias pointers (NULL: none) are gpt-oss's: router [n_expert], gate/up [n_expert][gate.n_out]
 * (this rank's columns), down [n_expert][n_embd] (give it on one TP rank only: partial sums
 * are added up). Ties in top-k go to the lower expert index. Routing always runs over all
 * n_expert logits (the router is whole on every rank). */
enum { SPK_MOE_SOFTMAX_ALL = 1u << 0, SPK_MOE_NORM_TOPK = 1u << 1, SPK_MOE_SWIGLU_OAI = 1u << 2 };
typedef struct spk_moe {
    spk_wmat router;                 /* [n_expert][n_embd], replicated on every TP rank */
    spk_wmat gate, up, down;         /* expert 0's: [n_ff][n_embd], [n_ff][n_embd], [n_embd][n_ff] */
    size_t stride_gate, stride_up, stride_down;
    int n_expert, n_used;            /* 0 experts: a dense layer */
    int e0, e1;                      /* experts this rank runs, [e0, e1) (expert parallelism: the
                                      * matrices above are expert e0's; a token's other experts add
                                      * nothing here and the group's all-reduce sums the ranks) */
    unsigned flags;
    const float *router_bias, *gate_bias, *up_bias, *down_bias;
    float alpha, limit;
} spk_moe;

typedef struct spk_backend spk_backend;

typedef struct spk_backend_ops {
    const char *name;
    spk_mem_kind mem;

    /* ---- memory and control ---- */
    /* Zeroed buffer of `bytes` in backend memory (NULL on failure). */
    void *(*alloc)(spk_backend *be, size_t bytes);
    void (*free)(spk_backend *be, void *p);
    /* Weights: make `bytes` of host memory (the mapped file) readable by the ops; *dev is what
     * the ops get (the host pointer itself where the device reads host memory in place). NULL
     * for host backends (they read the mapping). release() undoes one upload. */
    spk_status (*upload)(spk_backend *be, const void *host, size_t bytes, void **dev);
    void (*release)(spk_backend *be, void *dev);
    /* Repack a weight matrix that only matmul and embed read into the layout the backend's
     * kernels want, once, at load (mode: SPK_PACK_*). SPK_PACK_COPY: on success with a packed copy,
     * w->data and w->layout name it and *owned is the copy's buffer (the caller frees it with
     * free() after the model); SPK_PACK_DROP: the same, and the original's whole pages are dropped
     * as they are packed (so the two copies never coexist: only for mappings that re-read a
     * dropped page); SPK_PACK_IN_PLACE: w->data is a buffer the caller owns and nothing else
     * reads, packed where it is (only w->layout changes, *owned stays NULL). *owned NULL and
     * w->layout unchanged: left as it is, nothing dropped (no packed kernel for the type here, or
     * SPK_NO_REPACK=1 in the environment). May be NULL (nothing is ever packed). */
    spk_status (*pack)(spk_backend *be, spk_wmat *w, int mode, void **owned);
    /* Whether the ops take weights of `type`. May be NULL (every type the library reads). */
    int (*supports)(spk_backend *be, spk_dtype type);
    /* Copy between host and backend memory, either way, finished on return. NULL for host backends. */
    spk_status (*copy)(spk_backend *be, void *dst, const void *src, size_t bytes);
    /* Per-forward set-up of the batch (device backends upload it). May be NULL. */
    spk_status (*begin)(spk_backend *be, const spk_step *s);
    /* Run fn(arg, ith, nth) as described above; returns when every op it issued is done, with
     * SPK_OK or the status of the first op that failed (error() then says which and why). */
    spk_status (*run)(spk_backend *be, void (*fn)(void *arg, int ith, int nth), void *arg);
    void (*barrier)(spk_backend *be);
    /* The message of run()'s failure, into buf. May be NULL (the backend's ops cannot fail). */
    const char *(*error)(spk_backend *be, char *buf, size_t cap);

    /* ---- ops: thread ith of nth does its share ----
     * Row ops (embed, copy_rows, rmsnorm, head_rmsnorm, quantize, rope_store, swiglu, add) split their n_tok
     * rows as spk_split(n_tok, 1, ith, nth) does, so a row op may follow another on the same rows
     * without a barrier; matmul splits output columns and attention (head, token) pairs, which
     * need a barrier before and after. */
    /* x[t] = row token[t] - v0 of the embedding table (zeros outside [0, table rows)). */
    void (*embed)(spk_backend *be, float *x, const spk_wmat *table, const int32_t *token, int n_tok, int v0,
                  int n_embd, int ith, int nth);
    /* dst[t] = src[t] for n_tok rows of n floats. */
    void (*copy_rows)(spk_backend *be, float *dst, const float *src, int n_tok, int n, int ith, int nth);
    /* out[r] = rmsnorm(x[rows ? rows[r] : r]) * w, for r < n_rows rows of n. */
    void (*rmsnorm)(spk_backend *be, float *out, const float *x, const int *rows, const float *w, int n_rows,
                    int n, float eps, int ith, int nth);
    /* Activations x [n_tok][w->n_in] into the form matmul reads for w's type, into `act`
     * (spk_backend_act_size bytes). */
    void (*quantize)(spk_backend *be, void *act, const spk_wmat *w, const float *x, int n_tok, int ith, int nth);
    size_t (*act_size)(spk_backend *be, const spk_wmat *w, int n_tok);
    /* out [n_tok][w->n_out] = act W^T. */
    void (*matmul)(spk_backend *be, float *out, const spk_wmat *w, const void *act, int n_tok, int ith, int nth);
    /* Per-head RMSNorm in place (Qwen3's Q and K norms): each of the n_heads runs of head_dim
     * values of the n_tok rows x [n_tok][n_heads*head_dim] becomes rmsnorm(run) * w [head_dim].
     * A row op (split over n_tok like rope_store, so the two follow each other without a barrier). */
    void (*head_rmsnorm)(spk_backend *be, float *x, const float *w, int n_tok, int n_heads, int head_dim,
                         float eps, int ith, int nth);
    /* RoPE on q [n_tok][n_heads*hd] and k [n_tok][kv_dim] at each token's position, then k and v
     * of every token into `layer` of the cache. Pairs (2i, 2i+1) of the first rot_dim dims of a
     * head (ggml "normal" mode: llama GGUFs), or (i, i + rot_dim/2) with `neox` (Qwen2/3). */
    void (*rope_store)(spk_backend *be, float *q, float *k, const float *v, int n_heads, int rot_dim, int neox,
                       const float *freqs, const spk_kv_cache *kv, int layer, const spk_step *s, int ith, int nth);
    /* Causal attention of n_heads query heads (GQA: n_heads / kv->n_kv_heads per KV head) over
     * each token's sequence in `layer` of the cache, positions 0..pos: out [n_tok][n_heads*hd].
     * gpt-oss: `window` > 0 keeps only positions pos - window + 1 .. pos (sliding window; 0: all);
     * `sinks` (NULL: none) holds one learned logit per query head of this op ([n_heads]) that joins
     * the softmax denominator and carries no value. */
    void (*attention)(spk_backend *be, float *out, const float *q, int n_heads, float scale, const float *sinks,
                      int window, const spk_kv_cache *kv, int layer, const spk_step *s, int ith, int nth);
    /* out = silu(gate) * up, n_tok rows of n (out may alias gate). */
    void (*swiglu)(spk_backend *be, float *out, const float *gate, const float *up, int n_tok, int n, int ith,
                   int nth);
    /* out = a + b, n_tok rows of n (out may alias a). */
    void (*add)(spk_backend *be, float *out, const float *a, const float *b, int n_tok, int n, int ith, int nth);
    /* x[t] += bias for n_tok rows of n (gpt-oss's projection biases). A row op. May be NULL (the
     * backend cannot run models with biases). */
    void (*add_bias)(spk_backend *be, float *x, const float *bias, int n_tok, int n, int ith, int nth);

    /* The MoE MLP (see spk_moe): out [n_tok][n_embd] = sum over the k experts chosen for each
     * token of weight * expert(x) (x [n_tok][n_embd], normed). `scratch` holds moe_size(m, n_tok)
     * bytes of backend memory. Every expert a token picks is a batched matmul over all the
     * tokens that picked it (its weights read once per call). It starts and ends with row ops
     * split like the other row ops (no barrier needed before or after from a row op on the same
     * rows) and synchronises inside. May be NULL (the backend cannot run MoE models). */
    size_t (*moe_size)(spk_backend *be, const spk_moe *m, int n_tok);
    void (*moe)(spk_backend *be, float *out, const float *x, const spk_moe *m, void *scratch, int n_tok, int ith,
                int nth);

    /* Bytes the backend holds for itself (scratch, gather buffers). May be NULL. */
    uint64_t (*held_bytes)(const spk_backend *be);
    void (*destroy)(spk_backend *be);
} spk_backend_ops;

struct spk_backend {
    const spk_backend_ops *ops;
};

/* A backend of `kind` (AUTO: CUDA if its module loads and finds a GPU, else CPU) for a model of
 * n_ctx positions and head_dim; n_threads for the CPU, device for CUDA (-1: the first). Errors:
 * UNSUPPORTED naming what is missing (the module, its CUDA runtime, a GPU). lib/backend/loader.c */
spk_status spk_backend_create(spk_backend_type kind, int device, int n_threads, int n_ctx, int head_dim,
                              spk_backend **out);
/* The backends this library can run on this machine, e.g. "cpu" or "cpu,cuda" (cached). */
const char *spk_backend_available(void);

/* The CPU backend: a pool of n_threads; attention gathers scattered KV blocks of up to n_ctx rows
 * of head_dim per thread. */
spk_status spk_backend_cpu_create(int n_threads, int n_ctx, int head_dim, spk_backend **out);
int spk_backend_cpu_threads(const spk_backend *be);

static inline void spk_backend_destroy(spk_backend *be)
{
    if (be)
        be->ops->destroy(be);
}

#endif
