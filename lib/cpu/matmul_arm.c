/*
 * aarch64 NEON matmul kernels (NEON is baseline on aarch64): Q4_0, Q4_1, Q8_0 (and through
 * cpu/matmul_arm_types.h Q5_0, Q5_1, MXFP4, Q2_K-Q6_K) against the Q8 planar activations, and
 * F32, F16 and BF16 weights against float activations, one row and one token at a time. The SDOT
 * and SMMLA levels live in cpu/matmul_arm_dotprod.c and cpu/matmul_arm_i8mm.c (compiled with
 * their own -march). Missing types fall back to the level below (cpu/quant.c at the bottom).
 */
#if defined(__aarch64__)

#include "cpu/matmul_arm.h"
#include "cpu/matmul_arm_types.h"

/* int32 lanes summing w[i] * a[i] over 32 bytes each. */
static inline int32x4_t dot32(int8x16_t w0, int8x16_t w1, const int8_t *a)
{
    const int8x16_t a0 = vld1q_s8(a), a1 = vld1q_s8(a + 16);
    int16x8_t p = vmull_s8(vget_low_s8(w0), vget_low_s8(a0));
    p = vmlal_s8(p, vget_high_s8(w0), vget_high_s8(a0));
    int16x8_t q = vmull_s8(vget_low_s8(w1), vget_low_s8(a1));
    q = vmlal_s8(q, vget_high_s8(w1), vget_high_s8(a1));
    return vaddq_s32(vpaddlq_s16(p), vpaddlq_s16(q));
}

static inline float dot_row(int kind, const uint8_t *w, const uint8_t *act, int n)
{
    const size_t bs = arm_block_bytes(kind);
    const float *ds = (const float *)(act + n);
    float acc = 0.0f;
    for (int b = 0; b < n / 32; b++) {
        const uint8_t *p = w + (size_t)b * bs;
        int8x16_t w0, w1;
        arm_unpack(kind, p, &w0, &w1);
        const int isum = vaddvq_s32(dot32(w0, w1, (const int8_t *)act + 32 * b));
        acc += h2f(p) * ds[2 * b] * (float)isum;
        if (kind == K_Q4_1)
            acc += h2f(p + 2) * ds[2 * b + 1];
    }
    return acc;
}

static void mm_q(int kind, float *out, int ld, const void *w, size_t wrow, const void *act,
                 size_t arow, int n, int n_tok, int row0, int row1)
{
    for (int r = row0; r < row1; r++)
        for (int t = 0; t < n_tok; t++)
            out[(size_t)t * (size_t)ld + (size_t)r] =
                dot_row(kind, (const uint8_t *)w + (size_t)r * wrow,
                        (const uint8_t *)act + (size_t)t * arow, n);
}

#define MM_Q(name, kind)                                                                           \
    static void name(float *out, int ld, const void *w, size_t wrow, const void *act, size_t arow, \
                     int n, int n_tok, int row0, int row1)                                         \
    {                                                                                              \
        mm_q(kind, out, ld, w, wrow, act, arow, n, n_tok, row0, row1);                             \
    }

MM_Q(mm_q4_0_neon, K_Q4_0)
MM_Q(mm_q4_1_neon, K_Q4_1)
MM_Q(mm_q8_0_neon, K_Q8_0)

/* Float weights against float activations: 4 weights of row p from element i as floats (F16
 * widened by FCVTL, BF16 by a 16-bit shift: both exact), and one. */
enum { FW_F32, FW_F16, FW_BF16 };

static inline float32x4_t fw_ld4(int kind, const void *p, int i)
{
    if (kind == FW_F32)
        return vld1q_f32((const float *)p + i);
    const uint16x4_t h = vld1_u16((const uint16_t *)p + i);
    return kind == FW_F16 ? vcvt_f32_f16(vreinterpret_f16_u16(h)) : vreinterpretq_f32_u32(vshll_n_u16(h, 16));
}

static inline float fw_ld1(int kind, const void *p, int i)
{
    if (kind == FW_F32)
        return ((const float *)p)[i];
    const uint16_t h = ((const uint16_t *)p)[i];
    return kind == FW_F16 ? spk_f16_to_f32(h) : spk_bf16_to_f32(h);
}

static inline void mm_fw(int kind, float *out, int ld, const void *w, size_t wrow, const void *act, size_t arow,
                         int n, int n_tok, int row0, int row1)
{
    for (int r = row0; r < row1; r++) {
        const void *wr = (const uint8_t *)w + (size_t)r * wrow;
        for (int t = 0; t < n_tok; t++) {
            const float *a = (const float *)((const uint8_t *)act + (size_t)t * arow);
            float32x4_t s0 = vdupq_n_f32(0.0f), s1 = vdupq_n_f32(0.0f);
            int i = 0;
            for (; i + 8 <= n; i += 8) {
                s0 = vfmaq_f32(s0, fw_ld4(kind, wr, i), vld1q_f32(a + i));
                s1 = vfmaq_f32(s1, fw_ld4(kind, wr, i + 4), vld1q_f32(a + i + 4));
            }
            float s = vaddvq_f32(vaddq_f32(s0, s1));
            for (; i < n; i++)
                s += fw_ld1(kind, wr, i) * a[i];
            out[(size_t)t * (size_t)ld + (size_t)r] = s;
        }
    }
}

#define MM_FW(name, kind)                                                                          \
    static void name(float *out, int ld, const void *w, size_t wrow, const void *act, size_t arow, \
                     int n, int n_tok, int row0, int row1)                                         \
    {                                                                                              \
        mm_fw(kind, out, ld, w, wrow, act, arow, n, n_tok, row0, row1);                            \
    }

MM_FW(mm_f32_neon, FW_F32)
MM_FW(mm_f16_neon, FW_F16)
MM_FW(mm_bf16_neon, FW_BF16)

/* The Q8 activation rows, bit-identical to spk_q8_quantize_row_ref: FRINTA is roundf (ties
 * away), values clamped to +-127 and NaN to -127 as the reference's comparisons do, d rounded
 * through f16 by FCVT (to nearest even). */
static void q8_quantize_neon(void *dst, const float *x, int n)
{
    int8_t *q = (int8_t *)dst;
    float *ds = (float *)((uint8_t *)dst + n);
    for (int b = 0; b < n / SPK_ACT_BLOCK; b++) {
        const float *xb = x + SPK_ACT_BLOCK * b;
        float32x4_t v[8];
        float32x4_t m = vdupq_n_f32(0.0f);
        for (int j = 0; j < 8; j++) {
            v[j] = vld1q_f32(xb + 4 * j);
            m = vmaxnmq_f32(m, vabsq_f32(v[j])); /* a NaN is skipped, as by the reference */
        }
        const float amax = vmaxnmvq_f32(m);
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        int32x4_t qi[8], sum = vdupq_n_s32(0);
        for (int j = 0; j < 8; j++) {
            const float32x4_t r = vrndaq_f32(vmulq_n_f32(v[j], id));
            const float32x4_t c = vminq_f32(vmaxq_f32(r, vdupq_n_f32(-127.0f)), vdupq_n_f32(127.0f));
            qi[j] = vbslq_s32(vceqq_f32(r, r), vcvtq_s32_f32(c), vdupq_n_s32(-127));
            sum = vaddq_s32(sum, qi[j]);
        }
        for (int j = 0; j < 8; j += 4) {
            const int16x8_t lo = vcombine_s16(vmovn_s32(qi[j]), vmovn_s32(qi[j + 1]));
            const int16x8_t hi = vcombine_s16(vmovn_s32(qi[j + 2]), vmovn_s32(qi[j + 3]));
            vst1q_s8(q + SPK_ACT_BLOCK * b + 4 * j, vcombine_s8(vmovn_s16(lo), vmovn_s16(hi)));
        }
        const float d16 = vgetq_lane_f32(vcvt_f32_f16(vcvt_f16_f32(vdupq_n_f32(d))), 0);
        ds[2 * b] = d16;
        ds[2 * b + 1] = d16 * (float)vaddvq_s32(sum);
    }
}

void spk_mm_fill_neon(spk_mm_table *t)
{
    for (int i = 0; i < SPK_MM_NTYPES; i++)
        t->mm[i] = 0;
    t->q8_quantize = q8_quantize_neon;
    t->mm[SPK_DT_Q4_0] = mm_q4_0_neon;
    t->mm[SPK_DT_Q4_1] = mm_q4_1_neon;
    t->mm[SPK_DT_Q8_0] = mm_q8_0_neon;
    t->mm[SPK_DT_F32] = mm_f32_neon;
    t->mm[SPK_DT_F16] = mm_f16_neon;
    t->mm[SPK_DT_BF16] = mm_bf16_neon;
    at_fill(t); /* Q5_0, Q5_1, MXFP4, Q2_K-Q6_K: cpu/matmul_arm_types.h */
}

#else
typedef int spk_matmul_arm_unused; /* ISO C forbids an empty translation unit */
#endif
