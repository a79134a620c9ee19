/*
 * aarch64 matmul kernels with SMMLA (Armv8.6 FEAT_I8MM): Q4_0, Q4_1, Q8_0 against the Q8 planar
 * activations in 2x2 tiles of weight rows and tokens; a single token goes to the SDOT kernel.
 * This file alone is compiled with -march=armv8.2-a+dotprod+i8mm (CMakeLists.txt); cpu/matmul.c
 * calls it only where HWCAP2_I8MM (and HWCAP_ASIMDDP) say the CPU has the instructions.
 */
#if defined(__aarch64__)

#if !defined(__ARM_FEATURE_MATMUL_INT8) || !defined(__ARM_FEATURE_DOTPROD)
#error "cpu/matmul_arm_i8mm.c needs -march=armv8.2-a+dotprod+i8mm (set by CMakeLists.txt)"
#endif

#include "cpu/matmul_arm.h"

/* Two 16-byte vectors of two rows, regrouped for SMMLA: lo = [x.lo, y.lo], hi = [x.hi, y.hi]. */
static inline int8x16_t zip_lo(int8x16_t x, int8x16_t y)
{
    return vreinterpretq_s8_s64(vzip1q_s64(vreinterpretq_s64_s8(x), vreinterpretq_s64_s8(y)));
}
static inline int8x16_t zip_hi(int8x16_t x, int8x16_t y)
{
    return vreinterpretq_s8_s64(vzip2q_s64(vreinterpretq_s64_s8(x), vreinterpretq_s64_s8(y)));
}

/*
 * A 2x2 tile: weight rows w[0], w[1] against tokens a[0], a[1]. SMMLA multiplies a 2x8 by an
 * 8x2 int8 matrix into 2x2 int32 lanes [r0t0, r0t1, r1t0, r1t1]; four of them cover a block of
 * 32. Callers with an odd row or token repeat the last one and discard its lanes.
 */
static inline float32x4_t tile2x2(int kind, const uint8_t *const w[2], const uint8_t *const a[2],
                                  int n)
{
    const size_t bs = arm_block_bytes(kind);
    const float *ds0 = (const float *)(a[0] + n), *ds1 = (const float *)(a[1] + n);
    float32x4_t acc = vdupq_n_f32(0.0f);
    for (int b = 0; b < n / 32; b++) {
        const uint8_t *p0 = w[0] + (size_t)b * bs, *p1 = w[1] + (size_t)b * bs;
        int8x16_t x0, x1, y0, y1; /* row 0: elements 0-15, 16-31; row 1: the same */
        arm_unpack(kind, p0, &x0, &x1);
        arm_unpack(kind, p1, &y0, &y1);
        const int8_t *q0 = (const int8_t *)a[0] + 32 * b, *q1 = (const int8_t *)a[1] + 32 * b;
        const int8x16_t s0 = vld1q_s8(q0), s1 = vld1q_s8(q0 + 16);
        const int8x16_t u0 = vld1q_s8(q1), u1 = vld1q_s8(q1 + 16);
        int32x4_t isum = vmmlaq_s32(vdupq_n_s32(0), zip_lo(x0, y0), zip_lo(s0, u0));
        isum = vmmlaq_s32(isum, zip_hi(x0, y0), zip_hi(s0, u0));
        isum = vmmlaq_s32(isum, zip_lo(x1, y1), zip_lo(s1, u1));
        isum = vmmlaq_s32(isum, zip_hi(x1, y1), zip_hi(s1, u1));
        const float dw0 = h2f(p0), dw1 = h2f(p1);
        const float sc[4] = {dw0 * ds0[2 * b], dw0 * ds1[2 * b], dw1 * ds0[2 * b], dw1 * ds1[2 * b]};
        acc = vfmaq_f32(acc, vcvtq_f32_s32(isum), vld1q_f32(sc));
        if (kind == K_Q4_1) {
            const float m0 = h2f(p0 + 2), m1 = h2f(p1 + 2);
            const float ms[4] = {m0, m0, m1, m1};
            const float sa[4] = {ds0[2 * b + 1], ds1[2 * b + 1], ds0[2 * b + 1], ds1[2 * b + 1]};
            acc = vfmaq_f32(acc, vld1q_f32(ms), vld1q_f32(sa));
        }
    }
    return acc;
}

static void mm_q_mm(int kind, float *out, int ld, const void *w, size_t wrow, const void *act,
                    size_t arow, int n, int n_tok, int row0, int row1)
{
    if (n_tok == 1) { /* a single token gains nothing from 2x2 tiles */
        arm_mm_q_dp(kind, out, ld, w, wrow, act, arow, n, n_tok, row0, row1);
        return;
    }
    for (int t = 0; t < n_tok; t += 2) {
        const int nt = n_tok - t < 2 ? 1 : 2;
        const uint8_t *a[2] = {(const uint8_t *)act + (size_t)t * arow,
                               (const uint8_t *)act + (size_t)(t + nt - 1) * arow};
        for (int r = row0; r < row1; r += 2) {
            const int nr = row1 - r < 2 ? 1 : 2;
            const uint8_t *wr[2] = {(const uint8_t *)w + (size_t)r * wrow,
                                    (const uint8_t *)w + (size_t)(r + nr - 1) * wrow};
            float v[4];
            vst1q_f32(v, tile2x2(kind, wr, a, n));
            for (int i = 0; i < nr; i++)
                for (int j = 0; j < nt; j++)
                    out[(size_t)(t + j) * (size_t)ld + (size_t)(r + i)] = v[2 * i + j];
        }
    }
}

#define MM_Q_MM(name, kind)                                                                        \
    static void name(float *out, int ld, const void *w, size_t wrow, const void *act, size_t arow, \
                     int n, int n_tok, int row0, int row1)                                         \
    {                                                                                              \
        mm_q_mm(kind, out, ld, w, wrow, act, arow, n, n_tok, row0, row1);                          \
    }

MM_Q_MM(mm_q4_0_mm, K_Q4_0)
MM_Q_MM(mm_q4_1_mm, K_Q4_1)
MM_Q_MM(mm_q8_0_mm, K_Q8_0)

void spk_mm_fill_neon_i8mm(spk_mm_table *t)
{
    for (int i = 0; i < SPK_MM_NTYPES; i++)
        t->mm[i] = 0;
    t->q8_quantize = 0;
    t->mm[SPK_DT_Q4_0] = mm_q4_0_mm;
    t->mm[SPK_DT_Q4_1] = mm_q4_1_mm;
    t->mm[SPK_DT_Q8_0] = mm_q8_0_mm;
}

#else
typedef int spk_matmul_arm_i8mm_unused; /* ISO C forbids an empty translation unit */
#endif
