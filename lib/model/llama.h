/*
 * The llama architecture family (Llama 2/3, SmolLM2, Mistral-like): hyperparameters and weights
 * taken from a validated GGUF file, and the forward pass over a batch of tokens.
 */
#ifndef SPK_MODEL_LLAMA_H
#define SPK_MODEL_LLAMA_H

#include <stdbool.h>
#include <stdint.h>

#include "common/dtype.h"
#include "cpu/ops.h"
#include "cpu/pool.h"
#include "model/gguf.h"

typedef struct spk_hparams {
    char arch[32];
    int n_layers, n_embd, n_heads, n_kv_heads, head_dim, rot_dim, n_ff, n_vocab, n_ctx_train;
    float eps, rope_theta;
    spk_rope_scaling scaling;
} spk_hparams;

/* A weight matrix [n_out][n_in] inside the mapped file. */
typedef struct spk_wmat {
    const void *data;
    spk_dtype type;
    int n_in, n_out;
} spk_wmat;

typedef struct spk_layer {
    const float *attn_norm;          /* [n_embd] */
    const float *ffn_norm;           /* [n_embd] */
    spk_wmat wq;                     /* [n_heads*head_dim][n_embd] */
    spk_wmat wk, wv;                 /* [n_kv_heads*head_dim][n_embd] */
    spk_wmat wo;                     /* [n_embd][n_heads*head_dim] */
    spk_wmat w_gate, w_up;           /* [n_ff][n_embd] */
    spk_wmat w_down;                 /* [n_embd][n_ff] */
} spk_layer;

typedef struct spk_weights {
    spk_wmat tok_embd;               /* [n_vocab][n_embd] */
    const float *out_norm;           /* [n_embd] */
    spk_wmat output;                 /* [n_vocab][n_embd]; tok_embd when tied */
    spk_layer *layers;               /* [n_layers] */
    const float *rope_factors;       /* [rot_dim/2] frequency divisors, or NULL */
    uint64_t n_params, n_bytes;
} spk_weights;

/* Read hyperparameters and locate/validate every weight (shape, type, layer count). */
spk_status spk_llama_load(const gguf_file *f, spk_hparams *hp, spk_weights *w);
void spk_llama_weights_free(spk_weights *w);

/* Run state: activations and the KV cache, allocated once. */
typedef struct spk_llama spk_llama;

/* n_seq sequences of up to n_ctx tokens each; up to max_tok tokens per forward call. */
spk_status spk_llama_create(const spk_hparams *hp, const spk_weights *w, int n_ctx, int n_seq,
                            int max_tok, int n_threads, spk_llama **out);
void spk_llama_free(spk_llama *m);

/* One batch: token i of sequence seq[i] at position pos[i] (positions of a sequence must be
 * contiguous with what its cache already holds). For each i with want_logits[i], a row of
 * n_vocab logits is written to logits (in order). Returns INVALID_ARG on bad ids/positions. */
typedef struct spk_batch {
    int n_tok;
    const int32_t *token;
    const int32_t *pos;
    const int32_t *seq;
    const uint8_t *want_logits;
} spk_batch;
spk_status spk_llama_forward(spk_llama *m, const spk_batch *b, float *logits);

int spk_llama_n_ctx(const spk_llama *m);
int spk_llama_max_tok(const spk_llama *m);

#endif
