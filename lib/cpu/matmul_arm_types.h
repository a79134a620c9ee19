/*
 * Internal to cpu/matmul_arm.c and cpu/matmul_arm_dotprod.c: aarch64 kernels for Q5_0, Q5_1,
 * MXFP4, Q2_K, Q3_K, Q4_K, Q5_K and Q6_K against the Q8 planar activations. Each includer gets
 * its own copy of the code: with SDOT (__ARM_FEATURE_DOTPROD, the dotprod file's -march) the
 * 16-byte dots use vdotq_s32, otherwise widening multiplies (baseline NEON). One weight row and
 * one token at a time; each block is unpacked into int8 lanes and dotted in integers, as
 * cpu/quant.c does.
 */
#ifndef SPK_CPU_MATMUL_ARM_TYPES_H
#define SPK_CPU_MATMUL_ARM_TYPES_H
#if defined(__aarch64__)

#include "cpu/matmul_arm.h"

/* int32 lanes summing w[i] * a[i] over 16 bytes (|w| <= 128, |a| <= 127). */
static inline int32x4_t at_dot16(int8x16_t w, int8x16_t a)
{
#if defined(__ARM_FEATURE_DOTPROD)
    return vdotq_s32(vdupq_n_s32(0), w, a);
#else
    int16x8_t p = vmull_s8(vget_low_s8(w), vget_low_s8(a));
    p = vmlal_s8(p, vget_high_s8(w), vget_high_s8(a));
    return vpaddlq_s16(p);
#endif
}

static inline int at_dot32(int8x16_t w0, int8x16_t w1, const int8_t *a)
{
    return vaddvq_s32(vaddq_s32(at_dot16(w0, vld1q_s8(a)), at_dot16(w1, vld1q_s8(a + 16))));
}

/* 0x10 in byte j (of *h0: bytes 0-15, *h1: 16-31) where bit j of the little-endian qh is set. */
static inline void at_bit4(const uint8_t *qh, uint8x16_t *h0, uint8x16_t *h1)
{
    static const uint8_t idx0[16] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1};
    static const uint8_t idx1[16] = {2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3};
    static const uint8_t bits[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    uint32_t v;
    __builtin_memcpy(&v, qh, 4);
    const uint8x16_t rep = vreinterpretq_u8_u32(vdupq_n_u32(v)), bv = vld1q_u8(bits);
    const uint8x16_t k10 = vdupq_n_u8(0x10);
    *h0 = vandq_u8(vtstq_u8(vqtbl1q_u8(rep, vld1q_u8(idx0)), bv), k10);
    *h1 = vandq_u8(vtstq_u8(vqtbl1q_u8(rep, vld1q_u8(idx1)), bv), k10);
}

static inline float at_e8m0_half(uint8_t e)
{
    const uint32_t bits = e < 2 ? 0x00200000u << e : (uint32_t)(e - 1) << 23;
    float f;
    __builtin_memcpy(&f, &bits, 4);
    return f;
}

enum { AT_Q5_0, AT_Q5_1, AT_MXFP4 };

/* Q5_0 (values minus 16), Q5_1 (values 0..31 plus m * s) and MXFP4 (table lookup). */
static inline float at_dot_row32(int kind, const uint8_t *w, const uint8_t *act, int n)
{
    const size_t bs = kind == AT_Q5_0 ? sizeof(spk_block_q5_0)
                      : kind == AT_Q5_1 ? sizeof(spk_block_q5_1) : sizeof(spk_block_mxfp4);
    const float *ds = (const float *)(act + n);
    const int8x16_t lut = vld1q_s8(spk_mxfp4_values);
    float acc = 0.0f;
    for (int b = 0; b < n / 32; b++) {
        const uint8_t *p = w + (size_t)b * bs;
        int8x16_t w0, w1;
        float dw, mw = 0.0f;
        if (kind == AT_MXFP4) {
            const uint8x16_t x = vld1q_u8(p + 1);
            w0 = vqtbl1q_s8(lut, vandq_u8(x, vdupq_n_u8(15)));
            w1 = vqtbl1q_s8(lut, vshrq_n_u8(x, 4));
            dw = at_e8m0_half(p[0]);
        } else {
            const uint8_t *qh = p + (kind == AT_Q5_1 ? 4 : 2);
            const uint8x16_t x = vld1q_u8(qh + 4);
            uint8x16_t h0, h1;
            at_bit4(qh, &h0, &h1);
            w0 = vreinterpretq_s8_u8(vorrq_u8(vandq_u8(x, vdupq_n_u8(15)), h0));
            w1 = vreinterpretq_s8_u8(vorrq_u8(vshrq_n_u8(x, 4), h1));
            dw = h2f(p);
            if (kind == AT_Q5_0) {
                w0 = vsubq_s8(w0, vdupq_n_s8(16));
                w1 = vsubq_s8(w1, vdupq_n_s8(16));
            } else {
                mw = h2f(p + 2);
            }
        }
        const int isum = at_dot32(w0, w1, (const int8_t *)act + 32 * b);
        acc += dw * ds[2 * b] * (float)isum + mw * ds[2 * b + 1];
    }
    return acc;
}

static inline void at_q4k_scales(const uint8_t *k, int *sc, int *m)
{
    for (int j = 0; j < 4; j++) {
        sc[j] = k[j] & 63;
        m[j] = k[j + 4] & 63;
        sc[j + 4] = (k[j + 8] & 15) | ((k[j] >> 6) << 4);
        m[j + 4] = (k[j + 8] >> 4) | ((k[j + 4] >> 6) << 4);
    }
}

/* Q4_K (values 0..15) and Q5_K (a fifth bit from qh): 6-bit scale and min per 32 values. */
static inline float at_dot_q45k(int q5, const uint8_t *w, const uint8_t *act, int n)
{
    const size_t bs = q5 ? sizeof(spk_block_q5_K) : sizeof(spk_block_q4_K);
    const int8_t *a = (const int8_t *)act;
    const float *ds = (const float *)(act + n);
    const uint8x16_t m4 = vdupq_n_u8(15), b1 = vdupq_n_u8(1);
    float acc = 0.0f;
    for (int b = 0; b < n / SPK_QK_K; b++) {
        const uint8_t *p = w + (size_t)b * bs;
        const spk_block_q4_K *x4 = (const spk_block_q4_K *)p;
        const spk_block_q5_K *x5 = (const spk_block_q5_K *)p;
        const float d = h2f(p), dmin = h2f(p + 2);
        const uint8_t *qs = q5 ? x5->qs : x4->qs;
        int sc[8], mn[8];
        at_q4k_scales(q5 ? x5->scales : x4->scales, sc, mn);
        const uint8x16_t hb0 = q5 ? vld1q_u8(x5->qh) : vdupq_n_u8(0), hb1 = q5 ? vld1q_u8(x5->qh + 16) : vdupq_n_u8(0);
        for (int c = 0; c < 4; c++) {
            const uint8x16_t q0 = vld1q_u8(qs + 32 * c), q1 = vld1q_u8(qs + 32 * c + 16);
            uint8x16_t l0 = vandq_u8(q0, m4), l1 = vandq_u8(q1, m4), u0 = vshrq_n_u8(q0, 4), u1 = vshrq_n_u8(q1, 4);
            if (q5) { /* fifth bits: (qh >> 2c) & 1 and (qh >> 2c+1) & 1, moved to bit 4 */
                const int8x16_t s0 = vdupq_n_s8((int8_t)-(2 * c)), s1 = vdupq_n_s8((int8_t)-(2 * c + 1));
                l0 = vorrq_u8(l0, vshlq_n_u8(vandq_u8(vshlq_u8(hb0, s0), b1), 4));
                l1 = vorrq_u8(l1, vshlq_n_u8(vandq_u8(vshlq_u8(hb1, s0), b1), 4));
                u0 = vorrq_u8(u0, vshlq_n_u8(vandq_u8(vshlq_u8(hb0, s1), b1), 4));
                u1 = vorrq_u8(u1, vshlq_n_u8(vandq_u8(vshlq_u8(hb1, s1), b1), 4));
            }
            const int ab = b * 8 + 2 * c;
            const int i0 = at_dot32(vreinterpretq_s8_u8(l0), vreinterpretq_s8_u8(l1), a + 32 * ab);
            const int i1 = at_dot32(vreinterpretq_s8_u8(u0), vreinterpretq_s8_u8(u1), a + 32 * ab + 32);
            acc += d * ((float)sc[2 * c] * ds[2 * ab] * (float)i0 + (float)sc[2 * c + 1] * ds[2 * ab + 2] * (float)i1) -
                   dmin * ((float)mn[2 * c] * ds[2 * ab + 1] + (float)mn[2 * c + 1] * ds[2 * ab + 3]);
        }
    }
    return acc;
}

/* Q6_K: values (4 low bits | 2 high bits << 4) - 32, int8 scale per 16. In each half of 128
 * values (64 ql bytes, 32 qh bytes), quarter k (32 values) takes the low (k = 0, 1) or high
 * (k = 2, 3) nibbles of ql bytes 32 (k & 1) to 32 (k & 1) + 31, and bits 2k, 2k + 1 of qh. */
static inline float at_dot_q6k(const uint8_t *w, const uint8_t *act, int n)
{
    const spk_block_q6_K *x = (const spk_block_q6_K *)w;
    const int8_t *a = (const int8_t *)act;
    const float *ds = (const float *)(act + n);
    const uint8x16_t m4 = vdupq_n_u8(15), m3 = vdupq_n_u8(3);
    const int8x16_t k32 = vdupq_n_s8(32);
    float acc = 0.0f;
    for (int b = 0; b < n / SPK_QK_K; b++) {
        const float d = h2f((const uint8_t *)&x[b].d);
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = x[b].ql + 64 * h, *qh = x[b].qh + 32 * h;
            const int8_t *sc = x[b].scales + 8 * h;
            const uint8x16_t h0 = vld1q_u8(qh), h1 = vld1q_u8(qh + 16);
            for (int k = 0; k < 4; k++) {
                const uint8x16_t l0 = vld1q_u8(ql + 32 * (k & 1)), l1 = vld1q_u8(ql + 32 * (k & 1) + 16);
                const uint8x16_t n0 = k < 2 ? vandq_u8(l0, m4) : vshrq_n_u8(l0, 4);
                const uint8x16_t n1 = k < 2 ? vandq_u8(l1, m4) : vshrq_n_u8(l1, 4);
                const int8x16_t sh = vdupq_n_s8((int8_t)-(2 * k));
                const uint8x16_t g0 = vshlq_n_u8(vandq_u8(vshlq_u8(h0, sh), m3), 4);
                const uint8x16_t g1 = vshlq_n_u8(vandq_u8(vshlq_u8(h1, sh), m3), 4);
                const int8x16_t w0 = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(n0, g0)), k32);
                const int8x16_t w1 = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(n1, g1)), k32);
                const int ab = b * 8 + 4 * h + k;
                const int i0 = vaddvq_s32(at_dot16(w0, vld1q_s8(a + 32 * ab)));
                const int i1 = vaddvq_s32(at_dot16(w1, vld1q_s8(a + 32 * ab + 16)));
                acc += ds[2 * ab] * d * (float)(sc[2 * k] * i0 + sc[2 * k + 1] * i1);
            }
        }
    }
    return acc;
}

/* Q3_K (values (2 bits | high bit << 2) - 4, signed scale per 16) and Q2_K (values 0..3,
 * scale and min per 16; the min meets the int8 activation sums of its 16). */
static inline float at_dot_q23k(int q3, const uint8_t *w, const uint8_t *act, int n)
{
    const int8_t *a = (const int8_t *)act;
    const float *ds = (const float *)(act + n);
    const size_t bs = q3 ? sizeof(spk_block_q3_K) : sizeof(spk_block_q2_K);
    const uint8x16_t m3 = vdupq_n_u8(3), b1 = vdupq_n_u8(1);
    float acc = 0.0f;
    for (int b = 0; b < n / SPK_QK_K; b++) {
        const uint8_t *p = w + (size_t)b * bs;
        const spk_block_q3_K *x3 = (const spk_block_q3_K *)p;
        const spk_block_q2_K *x2 = (const spk_block_q2_K *)p;
        const uint8_t *qs = q3 ? x3->qs : x2->qs;
        float d, dmin = 0.0f;
        int sc[16], mn[16];
        if (q3) {
            d = h2f((const uint8_t *)&x3->d);
            for (int j = 0; j < 16; j++)
                sc[j] = (((x3->scales[j % 8] >> (4 * (j / 8))) & 15) |
                         ((x3->scales[8 + j % 4] >> (2 * (j / 4))) & 3) << 4) - 32;
        } else {
            d = h2f((const uint8_t *)&x2->d);
            dmin = h2f((const uint8_t *)&x2->dmin);
            for (int j = 0; j < 16; j++) {
                sc[j] = x2->scales[j] & 15;
                mn[j] = x2->scales[j] >> 4;
            }
        }
        uint8x16_t hb0 = vdupq_n_u8(0), hb1 = vdupq_n_u8(0);
        if (q3) {
            hb0 = vld1q_u8(x3->hmask);
            hb1 = vld1q_u8(x3->hmask + 16);
        }
        for (int h = 0; h < 2; h++) {
            const uint8x16_t qv0 = vld1q_u8(qs + 32 * h), qv1 = vld1q_u8(qs + 32 * h + 16);
            for (int k = 0; k < 4; k++) {
                const int8x16_t sh = vdupq_n_s8((int8_t)-(2 * k));
                int8x16_t w0 = vreinterpretq_s8_u8(vandq_u8(vshlq_u8(qv0, sh), m3));
                int8x16_t w1 = vreinterpretq_s8_u8(vandq_u8(vshlq_u8(qv1, sh), m3));
                const int j = 4 * h + k, ab = b * 8 + j;
                const int8x16_t a0 = vld1q_s8(a + 32 * ab), a1 = vld1q_s8(a + 32 * ab + 16);
                if (q3) {
                    const int8x16_t hs = vdupq_n_s8((int8_t)-j);
                    const uint8x16_t g0 = vshlq_n_u8(vandq_u8(vshlq_u8(hb0, hs), b1), 2);
                    const uint8x16_t g1 = vshlq_n_u8(vandq_u8(vshlq_u8(hb1, hs), b1), 2);
                    w0 = vsubq_s8(vorrq_s8(w0, vreinterpretq_s8_u8(g0)), vdupq_n_s8(4));
                    w1 = vsubq_s8(vorrq_s8(w1, vreinterpretq_s8_u8(g1)), vdupq_n_s8(4));
                }
                const int i0 = vaddvq_s32(at_dot16(w0, a0)), i1 = vaddvq_s32(at_dot16(w1, a1));
                float f = d * (float)(sc[2 * j] * i0 + sc[2 * j + 1] * i1);
                if (!q3) {
                    const int s0 = vaddlvq_s8(a0), s1 = vaddlvq_s8(a1);
                    f -= dmin * (float)(mn[2 * j] * s0 + mn[2 * j + 1] * s1);
                }
                acc += ds[2 * ab] * f;
            }
        }
    }
    return acc;
}

/* A kernel: rows [row0, row1) x tokens, through dot(w row, act row, n). */
#define AT_KERNEL(name, dotexpr)                                                                   \
    static void name(float *out, int ld, const void *w, size_t wrow, const void *act, size_t arow, \
                     int n, int n_tok, int row0, int row1)                                         \
    {                                                                                              \
        for (int r = row0; r < row1; r++) {                                                        \
            const uint8_t *wr_ = (const uint8_t *)w + (size_t)r * wrow;                            \
            for (int t = 0; t < n_tok; t++) {                                                      \
                const uint8_t *ar_ = (const uint8_t *)act + (size_t)t * arow;                      \
                out[(size_t)t * (size_t)ld + (size_t)r] = dotexpr;                                 \
            }                                                                                      \
        }                                                                                          \
    }

AT_KERNEL(at_mm_q5_0, at_dot_row32(AT_Q5_0, wr_, ar_, n))
AT_KERNEL(at_mm_q5_1, at_dot_row32(AT_Q5_1, wr_, ar_, n))
AT_KERNEL(at_mm_mxfp4, at_dot_row32(AT_MXFP4, wr_, ar_, n))
AT_KERNEL(at_mm_q4k, at_dot_q45k(0, wr_, ar_, n))
AT_KERNEL(at_mm_q5k, at_dot_q45k(1, wr_, ar_, n))
AT_KERNEL(at_mm_q6k, at_dot_q6k(wr_, ar_, n))
AT_KERNEL(at_mm_q3k, at_dot_q23k(1, wr_, ar_, n))
AT_KERNEL(at_mm_q2k, at_dot_q23k(0, wr_, ar_, n))

static inline void at_fill(spk_mm_table *t)
{
    t->mm[SPK_DT_Q5_0] = at_mm_q5_0;
    t->mm[SPK_DT_Q5_1] = at_mm_q5_1;
    t->mm[SPK_DT_MXFP4] = at_mm_mxfp4;
    t->mm[SPK_DT_Q4_K] = at_mm_q4k;
    t->mm[SPK_DT_Q5_K] = at_mm_q5k;
    t->mm[SPK_DT_Q6_K] = at_mm_q6k;
    t->mm[SPK_DT_Q3_K] = at_mm_q3k;
    t->mm[SPK_DT_Q2_K] = at_mm_q2k;
}

#endif /* __aarch64__ */
#endif
