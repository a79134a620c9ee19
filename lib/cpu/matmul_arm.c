/*
 * aarch64 NEON matmul kernels (NEON is baseline on aarch64): Q4_0, Q4_1, Q8_0 against the Q8
 * planar activations and F32 weights, one row and one token at a time; and, where the CPU has
 * SDOT (dotprod), Q4_0, Q4_1, Q8_0 with SDOT, one row and four tokens at a time; and where it
 * also has SMMLA (i8mm), the same types in 2x2 tiles of rows and tokens. Missing types fall back
 * to the level below (cpu/quant.c at the bottom).
 */
#if defined(__aarch64__)

#include <arm_neon.h>
#include <stdint.h>

#include "cpu/quant.h"

enum { K_Q4_0, K_Q4_1, K_Q8_0 };

static inline float h2f(const uint8_t *p)
{
    spk_f16 h;
    __builtin_memcpy(&h, p, 2);
    return spk_f16_to_f32(h);
}

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
    const size_t bs = kind == K_Q4_0 ? 18 : kind == K_Q4_1 ? 20 : 34;
    const float *ds = (const float *)(act + n);
    float acc = 0.0f;
    for (int b = 0; b < n / 32; b++) {
        const uint8_t *p = w + (size_t)b * bs;
        int8x16_t w0, w1;
        if (kind == K_Q8_0) {
            w0 = vld1q_s8((const int8_t *)p + 2);
            w1 = vld1q_s8((const int8_t *)p + 18);
        } else {
            const uint8x16_t x = vld1q_u8(p + (kind == K_Q4_1 ? 4 : 2));
            w0 = vreinterpretq_s8_u8(vandq_u8(x, vdupq_n_u8(15)));
            w1 = vreinterpretq_s8_u8(vshrq_n_u8(x, 4));
            if (kind == K_Q4_0) {
                w0 = vsubq_s8(w0, vdupq_n_s8(8));
                w1 = vsubq_s8(w1, vdupq_n_s8(8));
            }
        }
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

static void mm_f32_neon(float *out, int ld, const void *w, size_t wrow, const void *act,
                        size_t arow, int n, int n_tok, int row0, int row1)
{
    for (int r = row0; r < row1; r++) {
        const float *wr = (const float *)((const uint8_t *)w + (size_t)r * wrow);
        for (int t = 0; t < n_tok; t++) {
            const float *a = (const float *)((const uint8_t *)act + (size_t)t * arow);
            float32x4_t s0 = vdupq_n_f32(0.0f), s1 = vdupq_n_f32(0.0f);
            int i = 0;
            for (; i + 8 <= n; i += 8) {
                s0 = vfmaq_f32(s0, vld1q_f32(wr + i), vld1q_f32(a + i));
                s1 = vfmaq_f32(s1, vld1q_f32(wr + i + 4), vld1q_f32(a + i + 4));
            }
            float s = vaddvq_f32(vaddq_f32(s0, s1));
            for (; i < n; i++)
                s += wr[i] * a[i];
            out[(size_t)t * (size_t)ld + (size_t)r] = s;
        }
    }
}

/* ---- NEON + SDOT (FEAT_DotProd): chosen at run time from HWCAP_ASIMDDP --------------------- */

/* Built for Armv8.2-A+dotprod whatever the baseline; called only where the CPU has it. */
#define SPK_DOTPROD __attribute__((target("arch=armv8.2-a+dotprod")))

/*
 * One weight row against four tokens: each block's weights are unpacked once and dotted with
 * the four activation rows with SDOT; lane j of the accumulators belongs to token j. Callers
 * with fewer than four tokens repeat the last token's row and discard its extra lanes.
 */
static SPK_DOTPROD inline float32x4_t dot_row4_dp(int kind, const uint8_t *w, const uint8_t *const a[4],
                                                  int n)
{
    const size_t bs = kind == K_Q4_0 ? 18 : kind == K_Q4_1 ? 20 : 34;
    const float *ds[4];
    for (int j = 0; j < 4; j++)
        ds[j] = (const float *)(a[j] + n);
    float32x4_t acc = vdupq_n_f32(0.0f);
    for (int b = 0; b < n / 32; b++) {
        const uint8_t *p = w + (size_t)b * bs;
        int8x16_t w0, w1;
        if (kind == K_Q8_0) {
            w0 = vld1q_s8((const int8_t *)p + 2);
            w1 = vld1q_s8((const int8_t *)p + 18);
        } else {
            const uint8x16_t x = vld1q_u8(p + (kind == K_Q4_1 ? 4 : 2));
            w0 = vreinterpretq_s8_u8(vandq_u8(x, vdupq_n_u8(15)));
            w1 = vreinterpretq_s8_u8(vshrq_n_u8(x, 4));
            if (kind == K_Q4_0) {
                w0 = vsubq_s8(w0, vdupq_n_s8(8));
                w1 = vsubq_s8(w1, vdupq_n_s8(8));
            }
        }
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

static SPK_DOTPROD void mm_q_dp(int kind, float *out, int ld, const void *w, size_t wrow,
                                const void *act, size_t arow, int n, int n_tok, int row0, int row1)
{
    for (int t0 = 0; t0 < n_tok; t0 += 4) {
        const int nt = n_tok - t0 < 4 ? n_tok - t0 : 4;
        const uint8_t *a[4];
        for (int j = 0; j < 4; j++)
            a[j] = (const uint8_t *)act + (size_t)(t0 + (j < nt ? j : nt - 1)) * arow;
        for (int r = row0; r < row1; r++) {
            float v[4];
            vst1q_f32(v, dot_row4_dp(kind, (const uint8_t *)w + (size_t)r * wrow, a, n));
            for (int j = 0; j < nt; j++)
                out[(size_t)(t0 + j) * (size_t)ld + (size_t)r] = v[j];
        }
    }
}

#define MM_Q_DP(name, kind)                                                                        \
    static void name(float *out, int ld, const void *w, size_t wrow, const void *act, size_t arow, \
                     int n, int n_tok, int row0, int row1)                                         \
    {                                                                                              \
        mm_q_dp(kind, out, ld, w, wrow, act, arow, n, n_tok, row0, row1);                          \
    }

MM_Q_DP(mm_q4_0_dp, K_Q4_0)
MM_Q_DP(mm_q4_1_dp, K_Q4_1)
MM_Q_DP(mm_q8_0_dp, K_Q8_0)

void spk_mm_fill_neon_dotprod(spk_mm_table *t)
{
    for (int i = 0; i < SPK_MM_NTYPES; i++)
        t->mm[i] = 0;
    t->q8_quantize = 0;
    t->mm[SPK_DT_Q4_0] = mm_q4_0_dp;
    t->mm[SPK_DT_Q4_1] = mm_q4_1_dp;
    t->mm[SPK_DT_Q8_0] = mm_q8_0_dp;
}

/* ---- NEON + SMMLA (FEAT_I8MM): chosen at run time from HWCAP2_I8MM --------------------------- */

#define SPK_I8MM __attribute__((target("arch=armv8.2-a+dotprod+i8mm")))

/* Two 16-byte vectors of two rows, regrouped for SMMLA: lo = [x.lo, y.lo], hi = [x.hi, y.hi]. */
static SPK_I8MM inline int8x16_t zip_lo(int8x16_t x, int8x16_t y)
{
    return vreinterpretq_s8_s64(vzip1q_s64(vreinterpretq_s64_s8(x), vreinterpretq_s64_s8(y)));
}
static SPK_I8MM inline int8x16_t zip_hi(int8x16_t x, int8x16_t y)
{
    return vreinterpretq_s8_s64(vzip2q_s64(vreinterpretq_s64_s8(x), vreinterpretq_s64_s8(y)));
}

static SPK_I8MM inline void unpack(int kind, const uint8_t *p, int8x16_t *w0, int8x16_t *w1)
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

/*
 * A 2x2 tile: weight rows w[0], w[1] against tokens a[0], a[1]. SMMLA multiplies a 2x8 by an
 * 8x2 int8 matrix into 2x2 int32 lanes [r0t0, r0t1, r1t0, r1t1]; four of them cover a block of
 * 32. Callers with an odd row or token repeat the last one and discard its lanes.
 */
static SPK_I8MM inline float32x4_t tile2x2_mm(int kind, const uint8_t *const w[2],
                                              const uint8_t *const a[2], int n)
{
    const size_t bs = kind == K_Q4_0 ? 18 : kind == K_Q4_1 ? 20 : 34;
    const float *ds0 = (const float *)(a[0] + n), *ds1 = (const float *)(a[1] + n);
    float32x4_t acc = vdupq_n_f32(0.0f);
    for (int b = 0; b < n / 32; b++) {
        const uint8_t *p0 = w[0] + (size_t)b * bs, *p1 = w[1] + (size_t)b * bs;
        int8x16_t x0, x1, y0, y1; /* row 0: elements 0-15, 16-31; row 1: the same */
        unpack(kind, p0, &x0, &x1);
        unpack(kind, p1, &y0, &y1);
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

static SPK_I8MM void mm_q_mm(int kind, float *out, int ld, const void *w, size_t wrow,
                             const void *act, size_t arow, int n, int n_tok, int row0, int row1)
{
    if (n_tok == 1) { /* a single token gains nothing from 2x2 tiles */
        mm_q_dp(kind, out, ld, w, wrow, act, arow, n, n_tok, row0, row1);
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
            vst1q_f32(v, tile2x2_mm(kind, wr, a, n));
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

void spk_mm_fill_neon(spk_mm_table *t)
{
    for (int i = 0; i < SPK_MM_NTYPES; i++)
        t->mm[i] = 0;
    t->q8_quantize = 0;
    t->mm[SPK_DT_Q4_0] = mm_q4_0_neon;
    t->mm[SPK_DT_Q4_1] = mm_q4_1_neon;
    t->mm[SPK_DT_Q8_0] = mm_q8_0_neon;
    t->mm[SPK_DT_F32] = mm_f32_neon;
}

#else
typedef int spk_matmul_arm_unused; /* ISO C forbids an empty translation unit */
#endif
