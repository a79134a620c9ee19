/*
 * Quantized blocks on the CPU: per-type dequantizers, the activation format the matmul kernels
 * read, and the per-ISA kernel tables that cpu/matmul.c dispatches through.
 */
#ifndef SPK_CPU_QUANT_H
#define SPK_CPU_QUANT_H

#include <stddef.h>
#include <stdint.h>

#include "common/dtype.h"

/*
 * Activation rows for quantized weights ("Q8 planar"), one per token, spk_q8_row_bytes(n) +
 * spk_q8k_row_bytes(n) apart (the K-quant section below follows when n is a multiple of 256):
 *   int8_t qs[n]                    q = roundf(x / d), as ggml's reference quantizer
 *   float  ds[2 * n/32]             pairs (d, s) per block of 32: d = amax/127 rounded to f16
 *                                   (as the reference stores it), s = d * sum(q) (exact in f32)
 * Q4_0, Q5_0, Q8_0, MXFP4 read d (Q8_0 semantics), Q4_1, Q5_1 read d and s (Q8_1). K-quant
 * weights read the K-quant section instead, the same layout with d per 256 (per-32 kernels:
 * Q3_K, Q6_K read d, Q4_K, Q5_K d and s, Q2_K sums the int8 values itself).
 * Float weights (F32, F16, BF16) take plain f32 rows, spk_f32_row_bytes(n) apart.
 */
#define SPK_ACT_BLOCK 32

static inline size_t spk_q8_row_bytes(int n)
{
    size_t b = (size_t)n + (size_t)(n / SPK_ACT_BLOCK) * 8;
    return (b + 63) & ~(size_t)63;
}

static inline size_t spk_f32_row_bytes(int n)
{
    return ((size_t)n * 4 + 63) & ~(size_t)63;
}

/* Quantize one row of n floats (n multiple of 32) into a Q8 planar row (portable reference). */
void spk_q8_quantize_row_ref(void *dst, const float *x, int n);

/*
 * The K-quant section ("Q8_K"): when n is a multiple of 256, every activation row for quantized
 * weights carries, after its Q8 planar part (spk_q8_row_bytes(n) bytes), a second quantization
 * of the same values with one scale per 256, as llama.cpp's Q8_K, laid out so that it is itself
 * a Q8 planar row plus the sums the integer kernels want:
 *   int8_t  qs[n]                q = roundf(x / d), d = amax/127 over the 256 values (a float,
 *                                not rounded to f16), clamped to -127..127
 *   float   ds[2 * n/32]         pairs (d, d * sum of the 32 q) per block of 32 (d repeats 8x)
 *   int16_t bsums[n/16]          sum of q over each 16
 * K-quant weights (Q2_K..Q6_K) read only this section (spk_matmul passes its start to their
 * kernels: per-32 kernels see it as a planar row, the integer ones use d once per super-block
 * and bsums for mins and offsets); every other quantized type reads only the planar part. Both
 * parts are always written, so one activation buffer serves weights of any quantized type with
 * the same n (Q, K and V may differ in type).
 */
static inline size_t spk_q8k_row_bytes(int n)
{
    if (n % 256 != 0)
        return 0;
    size_t b = (size_t)n + (size_t)(n / SPK_ACT_BLOCK) * 8 + (size_t)(n / 16) * 2;
    return (b + 63) & ~(size_t)63;
}

/* Quantize one row (n multiple of 256) into the K-quant section (portable reference). */
void spk_q8k_quantize_row_ref(void *dst, const float *x, int n);

/* (Dequantizing a row: spk_dequantize_row in cpu/ops.h.) Decode one block of Q5_0, Q5_1, Q2_K,
 * Q3_K, Q5_K or MXFP4 (the types added for the model-families issue) into y[block size];
 * returns 0, writing nothing, for any other type. */
int spk_quant_dequantize_block(float *y, const void *blk, spk_dtype t);

/*
 * Reference quantizers (cpu/quant_ref.c), ports of ggml's quantize_row_*_ref, for tests and the
 * synthetic-model writer (not a hot path): n floats (a multiple of the block) into blocks of
 * type t. Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K and MXFP4; returns the bytes written, 0 for other
 * types.
 */
size_t spk_quantize_row_ref(void *dst, const float *x, spk_dtype t, int n);
/* K-quant block fields (cpu/quant.c): the 6-bit scale and min of sub-block j (0..7) of a Q4_K or
 * Q5_K block's 12 scale bytes; a Q6_K block's 256 values (-32..31) and a Q3_K block's (-4..3) in
 * element order. */
void spk_q4k_scale_min(const uint8_t *s, int j, int *sc, int *m);
void spk_q6k_unpack(int8_t *q, const spk_block_q6_K *x);
void spk_q3k_unpack(int8_t *q, const spk_block_q3_K *x);
/* A Q6_K block's ql and qh from its 256 codes (0..63, value + 32) in value order. */
void spk_q6k_set_codes(spk_block_q6_K *y, const uint8_t c[SPK_QK_K]);
/* A Q3_K block's qs and hmask from its 256 codes (0..7, value + 4) in value order. */
void spk_q3k_set_codes(spk_block_q3_K *y, const uint8_t c[SPK_QK_K]);
/* A Q2_K block's 256 codes (0..3) in value order, and its qs from them (Q3_K's low bits). */
void spk_q2k_unpack(uint8_t *q, const spk_block_q2_K *x);
void spk_q2k_set_codes(spk_block_q2_K *y, const uint8_t c[SPK_QK_K]);

/*
 * Kernel signature: out[t * ld_out + r] for r in [row0, row1), t < n_tok.
 * w points at row 0, rows wrow bytes apart; act points at token 0, rows arow bytes apart.
 */
typedef void (*spk_mm_kernel)(float *out, int ld_out, const void *w, size_t wrow, const void *act,
                              size_t arow, int n_in, int n_tok, int row0, int row1);
typedef void (*spk_act_kernel)(void *dst, const float *x, int n);

/* Instruction-set levels, in increasing order on x86 (1, 2) and on aarch64 (3, 4, 5). */
enum {
    SPK_ISA_SCALAR = 0,
    SPK_ISA_AVX2 = 1,
    SPK_ISA_AVX512 = 2,
    SPK_ISA_NEON = 3,
    SPK_ISA_NEON_DOTPROD = 4, /* NEON + the SDOT instruction (Armv8.2 FEAT_DotProd) */
    SPK_ISA_NEON_I8MM = 5,    /* that + the SMMLA instruction (Armv8.6 FEAT_I8MM) */
    SPK_ISA_COUNT = 6
};

/* A kernel table: one matmul kernel per weight type (NULL: not in this ISA) and the Q8 quantizer. */
#define SPK_MM_NTYPES SPK_DT_LIMIT
typedef struct spk_mm_table {
    spk_mm_kernel mm[SPK_MM_NTYPES];
    spk_act_kernel q8_quantize;  /* NULL: use the reference */
    spk_act_kernel q8k_quantize; /* the K-quant section; NULL: use the reference */
} spk_mm_table;

void spk_mm_fill_scalar(spk_mm_table *t);
#if defined(__x86_64__) || defined(__i386__)
void spk_mm_fill_avx2(spk_mm_table *t);
void spk_mm_fill_avx512(spk_mm_table *t);
void spk_mm_fill_avx2_kquants(spk_mm_table *t); /* sets the Q2_K..Q6_K entries only */
void spk_mm_fill_avx2_q45(spk_mm_table *t);      /* sets Q4_0, Q4_1, Q5_0 and Q5_1 only */
/* cpu/matmul_x86_mxfp4.c: MXFP4 rows [row0, row1) in 8-row tiles (an spk_mm_kernel: all rows, a
 * partial tile for the last ones), at every token count: a token's result must not depend on the
 * batch it came in (test_golden's incremental decode matches batched prefill exactly). */
void spk_mm_mxfp4_avx2(float *out, int ld, const void *w, size_t wrow, const void *act, size_t arow, int n,
                       int n_tok, int row0, int row1);
/* cpu/matmul_x86_mxfp4.c: the MXFP4 tile reading SPK_MM_LAYOUT_R8, as spk_mm_r8_q4_0_avx2; the same
 * results bit for bit as spk_mm_mxfp4_avx2 on the file layout. */
void spk_mm_r8_mxfp4_avx2(float *out, int ld, const void *w, size_t wrow, const void *act, size_t arow, int n,
                          int n_tok, int row0, int row1);
/* cpu/matmul_x86_q8.c: the Q8_0 tile reading SPK_MM_LAYOUT_R8, as spk_mm_r8_q4_0_avx2; the same
 * results bit for bit as spk_mm_q8_0_lanes_avx2 on the file layout. */
void spk_mm_r8_q8_0_avx2(float *out, int ld, const void *w, size_t wrow, const void *act, size_t arow, int n,
                         int n_tok, int row0, int row1);
/* cpu/matmul_x86_q8.c: Q8_0 rows [row0, row1) (kernel arguments as spk_mm_kernel), every row
 * with the same per-block float steps at every token count (8-row tile from 2 tokens). */
void spk_mm_q8_0_lanes_avx2(float *out, int ld, const void *w, size_t wrow, const void *act, size_t arow,
                            int n, int n_tok, int row0, int row1);
/* cpu/matmul_x86_q45.c: the Q4_0, Q4_1, Q5_0 and Q5_1 tiles reading SPK_MM_LAYOUT_R8 (cpu/repack.c):
 * rows [row0, row1) of the grouped part (row1 <= 8 * floor(n_out / 8)), any alignment; the same
 * results bit for bit as the AVX2 table's file-layout kernels of these types. */
void spk_mm_r8_q4_0_avx2(float *out, int ld, const void *w, size_t wrow, const void *act, size_t arow, int n,
                         int n_tok, int row0, int row1);
void spk_mm_r8_q5_0_avx2(float *out, int ld, const void *w, size_t wrow, const void *act, size_t arow, int n,
                         int n_tok, int row0, int row1);
void spk_mm_r8_q5_1_avx2(float *out, int ld, const void *w, size_t wrow, const void *act, size_t arow, int n,
                         int n_tok, int row0, int row1);
void spk_mm_r8_q4_1_avx2(float *out, int ld, const void *w, size_t wrow, const void *act, size_t arow, int n,
                         int n_tok, int row0, int row1);
/* cpu/matmul_x86_q4k.c: Q4_K rows [row0, row1) in 8-row tiles (an spk_mm_kernel: all rows, a
 * partial tile for the last ones), at every token count for the same reason. */
void spk_mm_q4k_avx2(float *out, int ld, const void *w, size_t wrow, const void *act, size_t arow, int n,
                     int n_tok, int row0, int row1);
/* cpu/matmul_x86_q4k.c: Q5_K rows in the same 8-row tiles (the Q4_K arithmetic, a fifth bit). */
void spk_mm_q5k_avx2(float *out, int ld, const void *w, size_t wrow, const void *act, size_t arow, int n,
                     int n_tok, int row0, int row1);
/* cpu/matmul_x86_q4k.c: the Q4_K tile reading SPK_MM_LAYOUT_R8, as spk_mm_r8_q4_0_avx2; the same
 * results bit for bit as spk_mm_q4k_avx2 on the file layout. */
void spk_mm_r8_q4k_avx2(float *out, int ld, const void *w, size_t wrow, const void *act, size_t arow, int n,
                        int n_tok, int row0, int row1);
/* The same for Q5_K (spk_mm_q5k_avx2's results). */
void spk_mm_r8_q5k_avx2(float *out, int ld, const void *w, size_t wrow, const void *act, size_t arow, int n,
                        int n_tok, int row0, int row1);
/* cpu/matmul_x86_q6k.c: Q6_K rows [row0, row1) in 8-row tiles (an spk_mm_kernel: all rows, a
 * partial tile for the last ones), at every token count for the same reason. */
void spk_mm_q6k_avx2(float *out, int ld, const void *w, size_t wrow, const void *act, size_t arow, int n,
                     int n_tok, int row0, int row1);
/* cpu/matmul_x86_q6k.c: Q3_K rows in the same 8-row tiles (codes 0..7 with offset 4, scales per 16). */
void spk_mm_q3k_avx2(float *out, int ld, const void *w, size_t wrow, const void *act, size_t arow, int n,
                     int n_tok, int row0, int row1);
/* cpu/matmul_x86_q6k.c: the Q6_K tile reading SPK_MM_LAYOUT_R8, as spk_mm_r8_q4_0_avx2; the same
 * results bit for bit as spk_mm_q6k_avx2 on the file layout. */
void spk_mm_r8_q6k_avx2(float *out, int ld, const void *w, size_t wrow, const void *act, size_t arow, int n,
                        int n_tok, int row0, int row1);
/* The same for Q3_K (spk_mm_q3k_avx2's results). */
void spk_mm_r8_q3k_avx2(float *out, int ld, const void *w, size_t wrow, const void *act, size_t arow, int n,
                        int n_tok, int row0, int row1);
/* cpu/matmul_x86_q6k.c: Q2_K rows in the same 8-row tiles (codes 0..3, a scale and a min per 16),
 * and its packed tile (spk_mm_q2k_avx2's results). */
void spk_mm_q2k_avx2(float *out, int ld, const void *w, size_t wrow, const void *act, size_t arow, int n,
                     int n_tok, int row0, int row1);
void spk_mm_r8_q2k_avx2(float *out, int ld, const void *w, size_t wrow, const void *act, size_t arow, int n,
                        int n_tok, int row0, int row1);
#endif
#if defined(__aarch64__)
void spk_mm_fill_neon(spk_mm_table *t);
void spk_mm_fill_neon_dotprod(spk_mm_table *t); /* Q4_0, Q4_1, Q8_0, and the types of
                                                   cpu/matmul_arm_types.h */
void spk_mm_fill_neon_i8mm(spk_mm_table *t);    /* Q4_0, Q4_1, Q8_0 only */
#endif

/* Test hooks (cpu/matmul.c): whether an ISA level is usable here, and forcing one
 * (-1: automatic, the best usable). spk_cpu_force_scalar(1) still wins over a forced level. */
int spk_matmul_isa_usable(int isa);
void spk_matmul_force_isa(int isa);
/* Name of the ISA level spk_matmul uses now ("scalar", "avx2", "avx512", "neon",
 * "neon-dotprod", "neon-i8mm"). */
const char *spk_matmul_isa_name(void);

/* cpu/features.c: whether spk_cpu_force_scalar(1) is in effect, and whether this CPU has what
 * the kernels of an ISA level use (x86 AVX2: avx2+fma+f16c; AVX512: that plus avx512 f, bw, vl,
 * vnni; NEON: aarch64; NEON_DOTPROD: aarch64 with HWCAP_ASIMDDP; NEON_I8MM: that and
 * HWCAP2_I8MM). */
int spk_cpu_scalar_forced(void);
int spk_cpu_isa_usable(int isa);

#endif
