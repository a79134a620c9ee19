/*
 * Synthetic llama-architecture GGUF v3 files: any dense llama shape (named presets or explicit
 * sizes) with seeded random weights and a small byte-level BPE vocabulary, loadable like a real
 * model. For TP tests with head counts that divide, and for benchmarks without downloads.
 */
#ifndef SPK_MODEL_SYNTH_H
#define SPK_MODEL_SYNTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/dtype.h"
#include "sparkinfer/sparkinfer.h"

/* general.architecture of a synthetic file. */
typedef enum spk_synth_arch {
    SPK_SYNTH_LLAMA = 0,    /* llama keys and tensors */
    SPK_SYNTH_QWEN3 = 1,    /* qwen3 keys; blk.N.attn_q_norm / attn_k_norm [head_dim] in every layer */
    SPK_SYNTH_QWEN3MOE = 2, /* qwen3moe: qwen3's attention, and in every layer an F32 router
                             * blk.N.ffn_gate_inp [n_expert][n_embd] and stacked experts
                             * ffn_gate_exps / ffn_up_exps [n_expert][n_ff][n_embd], ffn_down_exps
                             * [n_expert][n_embd][n_ff] (n_ff = expert_feed_forward_length) */
    SPK_SYNTH_GPTOSS = 3,   /* gpt-oss: qwen3moe's MoE layout without Q/K norms, with biases on
                             * Q/K/V/O, router and experts (.bias, F32), blk.N.attn_sinks [n_heads],
                             * blk.N.post_attention_norm for ffn_norm, sliding window 4 and YaRN keys
                             * (factor 32, original context 4096, beta 32 / 1) as gpt-oss-20b's */
} spk_synth_arch;

typedef struct spk_synth_params {
    int n_layers, n_embd, n_heads, n_kv_heads;
    int head_dim;           /* 0: n_embd / n_heads */
    int n_ff;
    int n_vocab;            /* >= SPK_SYNTH_MIN_VOCAB (256 byte tokens + 3 special tokens) */
    int n_ctx_train;
    spk_dtype wtype;        /* attention and MLP matrices: Q4_1 (default), Q4_0, Q8_0, F16, BF16, F32 */
    spk_dtype embd_type;    /* token_embd.weight: Q8_0 (default) or any of the above */
    spk_dtype out_type;     /* output.weight when not tied (default Q4_1) */
    bool tied;              /* true (default): no output.weight, the head reuses token_embd */
    bool llama3_rope;       /* write rope_freqs.weight with Llama 3.1's frequency scaling */
    float rope_theta;       /* default 10000 */
    float rms_eps;          /* default 1e-5 */
    uint64_t seed;
    char preset[40];        /* shows in general.name ("synthetic <preset> seed N"); "custom" */
    spk_synth_arch arch;    /* default SPK_SYNTH_LLAMA */
    int n_expert, n_expert_used; /* qwen3moe: experts per layer and per token (else 0) */
    int expert_type;        /* the stacked experts' spk_dtype; -1 (the default): wtype. MXFP4 experts with
                             * Q8_0 elsewhere is llama-quantize's MXFP4_MOE (general.file_type 38) */
    int sliding_window;     /* gpt-oss: attention.sliding_window (0: 4; the real models' is 128) */
    const char *chat_template; /* tokenizer.chat_template (NUL-terminated, not copied); NULL: ChatML */
} spk_synth_params;

/* 256 byte tokens + <|endoftext|>, <|im_start|>, <|im_end|>. */
#define SPK_SYNTH_MIN_VOCAB 259
/* Token ids of the special tokens (the same in every synthetic file). */
#define SPK_SYNTH_TOK_ENDOFTEXT 256
#define SPK_SYNTH_TOK_IM_START 257
#define SPK_SYNTH_TOK_IM_END 258

/* The "tiny" preset with seed 0. */
void spk_synth_params_init(spk_synth_params *p);

/*
 * Fill *p with a named shape (seed 0, default types; overwrite fields afterwards as needed):
 *   tiny               4 layers, 256 embd, 8 heads / 4 KV, head_dim 32, ff 512, vocab 1024
 *   tiny-tp4           the same shape (8 / 4 heads: TP 2 and 4 divide the heads and KV groups)
 *   smollm2-135m       30 layers, 576 embd, 9 / 3 heads, ff 1536, vocab 49152, tied
 *   llama-3.1-8b       32 layers, 4096 embd, 32 / 8 heads, ff 14336, vocab 128256, untied,
 *                      rope theta 500000 with Llama 3.1 frequency scaling
 *   mistral-small-24b  40 layers, 5120 embd, 32 / 8 heads of 128, ff 32768, vocab 131072,
 *                      untied, rope theta 1e8
 *   qwen3-tiny         qwen3: 3 layers, 128 embd, 8 heads / 4 KV of 32 (query width 256),
 *                      ff 256, vocab 512, tied, rope theta 1e6, eps 1e-6, F32 matrices
 *                      (the transformers reference of tests/ref/qwen3-reference.py)
 *   qwen3moe-tiny      qwen3moe: 3 layers, 128 embd, 8 heads / 4 KV of 32, 8 experts of ff 64,
 *                      2 per token, vocab 512, tied, F32 (tests/ref/qwen3moe-reference.py)
 *   qwen3-30b-a3b      qwen3moe: 48 layers, 2048 embd, 32 / 4 heads of 128, 128 experts of ff 768,
 *                      8 per token, vocab 151936, untied, rope theta 1e6, eps 1e-6
 *   qwen3-8b           qwen3: 36 layers, 4096 embd, 32 / 8 heads of 128, ff 12288, vocab 151936,
 *                      untied, rope theta 1e6, eps 1e-6
 *   gpt-oss-20b        gpt-oss: 24 layers, 2880 embd, 64 / 8 heads of 64, 32 experts of ff 2880,
 *                      4 per token, vocab 201088, untied, rope theta 150000, sliding window 128,
 *                      MXFP4 experts and Q8_0 everything else (llama-quantize's MXFP4_MOE;
 *                      the published files keep BF16 outside the experts), about 12.1 GB
 *   gpt-oss-120b       the same with 36 layers and 128 experts, about 63.4 GB
 * Big shapes give big files (Q4_1 matrices, Q8_0 embeddings): llama-3.1-8b is about 5.25 GB,
 * mistral-small-24b about 15.0 GB; see spk_synth_file_size. NOT_FOUND (listing the names) for
 * an unknown name, INVALID_ARG for NULL.
 */
spk_status spk_synth_preset(const char *name, spk_synth_params *p);

/* NULL-terminated list of preset names (static). */
const char *const *spk_synth_preset_names(void);

/* Check the parameters (ranges, divisibility, block sizes of the chosen types); INVALID_ARG or
 * UNSUPPORTED with a message naming the field and the numbers. */
spk_status spk_synth_check(const spk_synth_params *p);

/* Exact size in bytes of the file spk_synth_write would write (without writing anything). */
spk_status spk_synth_file_size(const spk_synth_params *p, uint64_t *bytes);

/*
 * Write a GGUF v3 file (general.alignment 32) with the llama metadata the loader reads, a GPT-2
 * style vocabulary (byte tokens, the three ChatML special tokens, then merged English letter
 * sequences, each with its merge), a ChatML chat template, and random weights that depend only
 * on the seed (byte-identical files for equal parameters): matrices ~N(0, 1.25/sqrt(n_in))
 * (0.02 at n_in 4096: each layer adds a signal of order one, so greedy output depends on the
 * context instead of echoing the input token, as it does with 0.02 at small widths), embeddings
 * and the output head ~N(0, s) with s = 1/sqrt(n_embd) clamped to [0.02, 0.08], norm weights
 * 1 + N(0, 0.01) except the final norm, scaled so logits have a standard deviation of about 3
 * (softmax neither flat nor one-hot; top-2 margins mostly well above rounding). Streams tensor by tensor (memory stays a few rows), into
 * "<path>.tmp" renamed to `path` at the end; on error nothing is left at `path`'s temporary
 * name. Errors: the check's, IO (naming the file and strerror), NOMEM.
 */
spk_status spk_synth_write(const char *path, const spk_synth_params *p);

/*
 * Reference quantizer: one row of n floats (n a multiple of the block size) into `type`
 * (F32, F16, BF16, Q4_0, Q4_1, Q8_0). Q4_1: d = (max - min)/15, m = min, q = round((x - m)/d);
 * Q4_0: d = x_absmax_signed / -8, q = round(x/d) + 8 clamped to 15; Q8_0: d = absmax/127,
 * q = round(x/d). Low nibbles hold elements 0..15 of a block, high nibbles 16..31.
 * Returns the bytes written, or 0 for an unsupported type or n.
 */
size_t spk_synth_quantize_row(void *dst, const float *x, spk_dtype type, int n);

#endif
