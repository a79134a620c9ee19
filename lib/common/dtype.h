/*
 * Tensor element types (numbered as in the GGUF/ggml format) and their block layouts.
 * Quantized types store `block` elements in `type_size` bytes.
 */
#ifndef SPK_COMMON_DTYPE_H
#define SPK_COMMON_DTYPE_H

#include <stddef.h>
#include <stdint.h>

typedef enum spk_dtype {
    SPK_DT_F32 = 0,
    SPK_DT_F16 = 1,
    SPK_DT_Q4_0 = 2,
    SPK_DT_Q4_1 = 3,
    SPK_DT_Q5_0 = 6,
    SPK_DT_Q5_1 = 7,
    SPK_DT_Q8_0 = 8,
    SPK_DT_Q8_1 = 9,   /* activations only (never accepted from a file) */
    SPK_DT_Q2_K = 10,
    SPK_DT_Q3_K = 11,
    SPK_DT_Q4_K = 12,
    SPK_DT_Q5_K = 13,
    SPK_DT_Q6_K = 14,
    SPK_DT_BF16 = 30,
    SPK_DT_MXFP4 = 39, /* OCP microscaling FP4 (E2M1) with an E8M0 scale per 32 */
} spk_dtype;

/* One past the largest type id above (sizes of tables indexed by type). */
#define SPK_DT_LIMIT 40

#define SPK_QK4_0 32
#define SPK_QK4_1 32
#define SPK_QK5_0 32
#define SPK_QK5_1 32
#define SPK_QK_MXFP4 32
#define SPK_QK8_0 32
#define SPK_QK8_1 32
#define SPK_QK_K 256
#define SPK_K_SCALE_SIZE 12

typedef uint16_t spk_f16; /* IEEE half, raw bits */

typedef struct { spk_f16 d; uint8_t qs[SPK_QK4_0 / 2]; } spk_block_q4_0;          /* 18 B */
typedef struct { spk_f16 d, m; uint8_t qs[SPK_QK4_1 / 2]; } spk_block_q4_1;       /* 20 B */
typedef struct { spk_f16 d; uint8_t qh[4]; uint8_t qs[SPK_QK5_0 / 2]; } spk_block_q5_0;     /* 22 B */
typedef struct { spk_f16 d, m; uint8_t qh[4]; uint8_t qs[SPK_QK5_1 / 2]; } spk_block_q5_1;  /* 24 B */
typedef struct { spk_f16 d; int8_t qs[SPK_QK8_0]; } spk_block_q8_0;               /* 34 B */
typedef struct { uint8_t e; uint8_t qs[SPK_QK_MXFP4 / 2]; } spk_block_mxfp4;      /* 17 B: e is E8M0 */
typedef struct { spk_f16 d, s; int8_t qs[SPK_QK8_1]; } spk_block_q8_1;            /* 36 B: s = d*sum(qs) */
typedef struct {
    spk_f16 d, dmin;
    uint8_t scales[SPK_K_SCALE_SIZE];
    uint8_t qs[SPK_QK_K / 2];
} spk_block_q4_K;                                                                  /* 144 B */
typedef struct {
    uint8_t scales[SPK_QK_K / 16]; /* 4-bit scale (low) and min (high) per 16 values */
    uint8_t qs[SPK_QK_K / 4];
    spk_f16 d, dmin;
} spk_block_q2_K;                                                                  /* 84 B */
typedef struct {
    uint8_t hmask[SPK_QK_K / 8];   /* high bit of each value (set: no -4) */
    uint8_t qs[SPK_QK_K / 4];      /* low 2 bits */
    uint8_t scales[12];            /* 16 6-bit scales, biased by 32 */
    spk_f16 d;
} spk_block_q3_K;                                                                  /* 110 B */
typedef struct {
    spk_f16 d, dmin;
    uint8_t scales[SPK_K_SCALE_SIZE];
    uint8_t qh[SPK_QK_K / 8];
    uint8_t qs[SPK_QK_K / 2];
} spk_block_q5_K;                                                                  /* 176 B */
typedef struct {
    uint8_t ql[SPK_QK_K / 2];
    uint8_t qh[SPK_QK_K / 4];
    int8_t scales[SPK_QK_K / 16];
    spk_f16 d;
} spk_block_q6_K;                                                                  /* 210 B */

/* Layout facts of a type: elements per block and bytes per block; 0 for unknown types. */
typedef struct spk_dtype_info {
    const char *name;
    uint32_t block;
    uint32_t type_size;
} spk_dtype_info;

/* Info for a ggml type id, or NULL if this library does not support it. */
const spk_dtype_info *spk_dtype_get(uint32_t type);

/* Bytes of a row of `n` elements (n must be a multiple of the block size). */
size_t spk_dtype_row_size(spk_dtype t, size_t n);

/*
 * First non-finite scale among `n_blocks` blocks of type `t` at `data`: the f16 d (and m of
 * Q4_1/Q5_1, dmin of Q2_K/Q4_K/Q5_K) of quantized blocks, MXFP4's E8M0 e when it is 0xFF (NaN), every element of F32/F16/BF16 data (a "block" of one).
 * Returns the block index, or n_blocks when every scale is finite (also for types without float
 * scales). *field ("d", "m", "dmin", "value") and *value (as float) describe the bad one; either
 * may be NULL. Reads only the scale bytes; no alignment is assumed.
 */
size_t spk_dtype_find_nonfinite(spk_dtype t, const void *data, size_t n_blocks, const char **field,
                                float *value);

float spk_f16_to_f32(spk_f16 h);
spk_f16 spk_f32_to_f16(float f);
float spk_bf16_to_f32(uint16_t b);
/* MXFP4's E8M0 scale e as ggml uses it: 2^(e - 128), half the OCP value, because the
 * values it scales are stored doubled as integers (spk_mxfp4_values). */
float spk_e8m0_to_f32_half(uint8_t e);
extern const int8_t spk_mxfp4_values[16];
uint16_t spk_f32_to_bf16(float f);

#endif
