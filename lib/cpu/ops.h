/*
 * Element-wise and attention kernels on float32 rows: small pure functions, output first.
 * SIMD paths are chosen at run time from the CPU's features (see cpu/features.h).
 */
#ifndef SPK_CPU_OPS_H
#define SPK_CPU_OPS_H

#include <stdint.h>

#include "common/dtype.h"

/* out = x / sqrt(mean(x^2) + eps) * w   (out may alias x) */
void spk_rmsnorm(float *out, const float *x, const float *w, int n, float eps);

/* RoPE frequency table: freqs[i] = theta^(-2i/rot_dim) for i < rot_dim/2, with Llama-3
 * scaling applied when factor > 0 (low/high frequency factors and the original context). */
typedef struct spk_rope_scaling {
    float factor;            /* 0: none */
    float low_freq_factor;
    float high_freq_factor;
    int orig_ctx;
} spk_rope_scaling;
void spk_rope_freqs(float *freqs, int rot_dim, float theta, const spk_rope_scaling *scaling);

/* Rotate pairs (x[2i], x[2i+1]) of the first rot_dim dims of each of n_heads heads
 * (head_dim apart) by angle pos*freqs[i] (ggml "normal" mode, as llama GGUFs use). */
void spk_rope(float *x, int n_heads, int head_dim, int rot_dim, int pos, const float *freqs);

/* The same rotation of pairs (x[i], x[i + rot_dim/2]) (ggml "NEOX" mode: Qwen2/3, gpt-oss). */
void spk_rope_neox(float *x, int n_heads, int head_dim, int rot_dim, int pos, const float *freqs);

/* out = silu(gate) * up   (out may alias gate) */
void spk_swiglu(float *out, const float *gate, const float *up, int n);

/* out = a + b   (out may alias a) */
void spk_add(float *out, const float *a, const float *b, int n);

/* In-place softmax over n values. */
void spk_softmax(float *x, int n);

/* Dequantize one row of n elements of `type` (any type spk_dtype_get accepts). */
void spk_dequantize_row(float *out, const void *src, spk_dtype type, int n);

/* float <-> f16 rows (F16C when present). */
void spk_f32_to_f16_row(spk_f16 *out, const float *x, int n);
void spk_f16_to_f32_row(float *out, const spk_f16 *x, int n);

/*
 * Causal attention of one query head over n_kv cached positions:
 *   out[d] = sum_t softmax_t(scale * q.k_t) * v_t[d]
 * k and v are f16 rows of head_dim values, `stride` elements apart (row t at k + t*stride).
 * `scratch` holds at least n_kv floats.
 * `sink` (NULL: none) is a learned sink logit (gpt-oss): one more term e^sink in the softmax's
 * denominator with no value row, so the weights sum to less than 1. The scores are computed once.
 */
void spk_attn_head(float *out, const float *q, const spk_f16 *k, const spk_f16 *v, int n_kv,
                   int head_dim, int stride, float scale, const float *sink, float *scratch);

#endif
