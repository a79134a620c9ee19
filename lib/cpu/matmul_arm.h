/*
 * Internal to the aarch64 matmul kernels (cpu/matmul_arm*.c): block layouts and helpers shared
 * by the NEON, dotprod and i8mm files, each compiled with its own -march (see CMakeLists.txt).
 */
#ifndef SPK_CPU_MATMUL_ARM_H
#define SPK_CPU_MATMUL_ARM_H
#if defined(__aarch64__)

#include <arm_neon.h>
#include <stddef.h>
#include <stdint.h>

#include "cpu/quant.h"

enum { K_Q4_0, K_Q4_1, K_Q8_0 };

/* Bytes per block of 32 weights: f16 d [+ f16 m] + quants. */
static inline size_t arm_block_bytes(int kind)
{
    return kind == K_Q4_0 ? 18 : kind == K_Q4_1 ? 20 : 34;
}

static inline float h2f(const uint8_t *p)
{
    spk_f16 h;
    __builtin_memcpy(&h, p, 2);
    return spk_f16_to_f32(h);
}

/* A block's 32 quants as signed bytes: *w0 elements 0-15, *w1 elements 16-31 (Q4_0 minus 8;
 * Q4_1 unsigned 0-15, its minimum added separately). */
static inline void arm_unpack(int kind, const uint8_t *p, int8x16_t *w0, int8x16_t *w1)
{
    if (kind == K_Q8_0) {
        *w0 = vld1q_s8((const int8_t *)p + 2);
        *w1 = vld1q_s8((const int8_t *)p + 18);
        return;
    }
    const uint8x16_t x = vld1q_u8(p + (kind == K_Q4_1 ? 4 : 2));
    *w0 = vreinterpretq_s8_u8(vandq_u8(x, vdupq_n_u8(15)));
    *w1 = vreinterpretq_s8_u8(vshrq_n_u8(x, 4));
    if (kind == K_Q4_0) {
        *w0 = vsubq_s8(*w0, vdupq_n_s8(8));
        *w1 = vsubq_s8(*w1, vdupq_n_s8(8));
    }
}

#if defined(__ARM_FEATURE_DOTPROD)
/*
 * One weight row against four tokens: each block's weights are unpacked once and dotted with
 * the four activation rows with SDOT; lane j of the result belongs to token j. Callers with
 * fewer than four tokens repeat the last token's row and discard its extra lanes.
 */
static inline float32x4_t arm_dot_row4_dp(int kind, const uint8_t *w, const uint8_t *const a[4],
                                          int n)
{
    const size_t bs = arm_block_bytes(kind);
    const float *ds[4];
    for (int j = 0; j < 4; j++)
        ds[j] = (const float *)(a[j] + n);
    float32x4_t acc = vdupq_n_f32(0.0f);
    for (int b = 0; b < n / 32; b++) {
        const uint8_t *p = w + (size_t)b * bs;
        int8x16_t w0, w1;
        arm_unpack(kind, p, &w0, &w1);
        int32x4_t d[4];
        for (int j = 0; j < 4; j++) {
            const int8_t *q = (const int8_t *)a[j] + 32 * b;
            d[j] = vdotq_s32(vdotq_s32(vdupq_n_s32(0), w0, vld1q_s8(q)), w1, vld1q_s8(q + 16));
        }
        /* lane j: token j's integer block dot */
        const int32x4_t isum = vpaddq_s32(vpaddq_s32(d[0], d[1]), vpaddq_s32(d[2], d[3]));
        const float dsa[4] = {ds[0][2 * b], ds[1][2 * b], ds[2][2 * b], ds[3][2 * b]};
        acc = vfmaq_f32(acc, vcvtq_f32_s32(isum), vmulq_n_f32(vld1q_f32(dsa), h2f(p)));
        if (kind == K_Q4_1) {
            const float sa[4] = {ds[0][2 * b + 1], ds[1][2 * b + 1], ds[2][2 * b + 1],
                                 ds[3][2 * b + 1]};
            acc = vfmaq_n_f32(acc, vld1q_f32(sa), h2f(p + 2));
        }
    }
    return acc;
}

/* The dotprod kernel body: rows [row0, row1) x tokens in groups of four. */
static inline void arm_mm_q_dp(int kind, float *out, int ld, const void *w, size_t wrow,
                               const void *act, size_t arow, int n, int n_tok, int row0, int row1)
{
    for (int t0 = 0; t0 < n_tok; t0 += 4) {
        const int nt = n_tok - t0 < 4 ? n_tok - t0 : 4;
        const uint8_t *a[4];
        for (int j = 0; j < 4; j++)
            a[j] = (const uint8_t *)act + (size_t)(t0 + (j < nt ? j : nt - 1)) * arow;
        for (int r = row0; r < row1; r++) {
            float v[4];
            vst1q_f32(v, arm_dot_row4_dp(kind, (const uint8_t *)w + (size_t)r * wrow, a, n));
            for (int j = 0; j < nt; j++)
                out[(size_t)(t0 + j) * (size_t)ld + (size_t)r] = v[j];
        }
    }
}
#endif /* __ARM_FEATURE_DOTPROD */

#endif /* __aarch64__ */
#endif
