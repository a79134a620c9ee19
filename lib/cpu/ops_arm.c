/*
 * aarch64 NEON variants of the hot cpu/ops.h kernels (Advanced SIMD and the f16 <-> f32
 * conversions are part of every Armv8-A, so no run-time check is needed; cpu/ops.c still lets a
 * test pin the portable C). Results match the scalar versions up to float summation order and the
 * vector exp (the AVX2 one's Cephes polynomial, within 2 ulp of expf).
 */
#if defined(__aarch64__)

#include <arm_neon.h>
#include <float.h>
#include <math.h>
#include <stdint.h>

#include "cpu/ops_isa.h"

/* exp(x) = 2^n * e^r, n = round(x / ln 2), as exp8 in cpu/ops_x86.c (x clamped to [-87.3, 88]). */
static inline float32x4_t exp4(float32x4_t x)
{
    x = vminq_f32(vmaxq_f32(x, vdupq_n_f32(SPK_EXP_LO)), vdupq_n_f32(SPK_EXP_HI));
    const float32x4_t n = vrndnq_f32(vmulq_n_f32(x, SPK_EXP_LOG2E));
    float32x4_t r = vfmsq_f32(x, n, vdupq_n_f32(SPK_EXP_LN2_HI));
    r = vfmsq_f32(r, n, vdupq_n_f32(SPK_EXP_LN2_LO));
    float32x4_t p = vdupq_n_f32(SPK_EXP_P0);
    p = vfmaq_f32(vdupq_n_f32(SPK_EXP_P1), p, r);
    p = vfmaq_f32(vdupq_n_f32(SPK_EXP_P2), p, r);
    p = vfmaq_f32(vdupq_n_f32(SPK_EXP_P3), p, r);
    p = vfmaq_f32(vdupq_n_f32(SPK_EXP_P4), p, r);
    p = vfmaq_f32(vdupq_n_f32(SPK_EXP_P5), p, r);
    const float32x4_t r2 = vmulq_f32(r, r);
    p = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.0f)), p, r2);
    const int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23);
    return vmulq_f32(p, vreinterpretq_f32_s32(e));
}

/* 4 f16 values (raw bits) as floats, and back (round to nearest even). */
static inline float32x4_t ldh4(const spk_f16 *p)
{
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p)));
}

static inline float h2f(spk_f16 h)
{
    return vgetq_lane_f32(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(h))), 0);
}

static inline spk_f16 f2h(float f)
{
    return vget_lane_u16(vreinterpret_u16_f16(vcvt_f16_f32(vdupq_n_f32(f))), 0);
}

void spk_rmsnorm_neon(float *out, const float *x, const float *w, int n, float eps)
{
    float32x4_t a0 = vdupq_n_f32(0), a1 = vdupq_n_f32(0);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        const float32x4_t x0 = vld1q_f32(x + i), x1 = vld1q_f32(x + i + 4);
        a0 = vfmaq_f32(a0, x0, x0);
        a1 = vfmaq_f32(a1, x1, x1);
    }
    float ss = vaddvq_f32(vaddq_f32(a0, a1));
    for (; i < n; i++)
        ss += x[i] * x[i];
    const float scale = 1.0f / sqrtf(ss / (float)(n > 0 ? n : 1) + eps);
    for (i = 0; i + 4 <= n; i += 4)
        vst1q_f32(out + i, vmulq_f32(vmulq_n_f32(vld1q_f32(x + i), scale), vld1q_f32(w + i)));
    for (; i < n; i++)
        out[i] = x[i] * scale * w[i];
}

void spk_swiglu_neon(float *out, const float *gate, const float *up, int n)
{
    int i = 0;
    for (; i + 4 <= n; i += 4) {
        const float32x4_t g = vld1q_f32(gate + i);
        const float32x4_t s = vdivq_f32(g, vaddq_f32(vdupq_n_f32(1.0f), exp4(vnegq_f32(g))));
        vst1q_f32(out + i, vmulq_f32(s, vld1q_f32(up + i)));
    }
    for (; i < n; i++)
        out[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
}

void spk_add_neon(float *out, const float *a, const float *b, int n)
{
    int i = 0;
    for (; i + 4 <= n; i += 4)
        vst1q_f32(out + i, vaddq_f32(vld1q_f32(a + i), vld1q_f32(b + i)));
    for (; i < n; i++)
        out[i] = a[i] + b[i];
}

/* x[i] = exp(x[i] - mx); returns the sum. */
static float exp_sub_sum(float *x, int n, float mx)
{
    const float32x4_t m = vdupq_n_f32(mx);
    float32x4_t acc = vdupq_n_f32(0);
    int i = 0;
    for (; i + 4 <= n; i += 4) {
        const float32x4_t e = exp4(vsubq_f32(vld1q_f32(x + i), m));
        vst1q_f32(x + i, e);
        acc = vaddq_f32(acc, e);
    }
    float sum = vaddvq_f32(acc);
    for (; i < n; i++) {
        x[i] = expf(x[i] - mx);
        sum += x[i];
    }
    return sum;
}

void spk_softmax_neon(float *x, int n)
{
    if (n <= 0)
        return;
    float32x4_t mv = vdupq_n_f32(-FLT_MAX);
    int i = 0;
    for (; i + 4 <= n; i += 4)
        mv = vmaxq_f32(mv, vld1q_f32(x + i));
    float mx = vmaxvq_f32(mv);
    for (; i < n; i++)
        mx = x[i] > mx ? x[i] : mx;
    const float inv = 1.0f / exp_sub_sum(x, n, mx);
    for (i = 0; i + 4 <= n; i += 4)
        vst1q_f32(x + i, vmulq_n_f32(vld1q_f32(x + i), inv));
    for (; i < n; i++)
        x[i] *= inv;
}

void spk_f32_to_f16_row_neon(spk_f16 *out, const float *x, int n)
{
    int i = 0;
    for (; i + 4 <= n; i += 4)
        vst1_u16(out + i, vreinterpret_u16_f16(vcvt_f16_f32(vld1q_f32(x + i))));
    for (; i < n; i++)
        out[i] = f2h(x[i]);
}

void spk_f16_to_f32_row_neon(float *out, const spk_f16 *x, int n)
{
    int i = 0;
    for (; i + 4 <= n; i += 4)
        vst1q_f32(out + i, ldh4(x + i));
    for (; i < n; i++)
        out[i] = h2f(x[i]);
}

/* scale * q.k for the f16 rows k0..k3 (any may repeat), in lanes 0..3: one accumulator per row,
 * then the head_dim % 4 last values one by one. */
static inline float32x4_t score4(const float *q, const spk_f16 *k0, const spk_f16 *k1, const spk_f16 *k2,
                                 const spk_f16 *k3, int head_dim, float scale)
{
    const int hd4 = head_dim & ~3;
    float32x4_t a0 = vdupq_n_f32(0), a1 = vdupq_n_f32(0), a2 = vdupq_n_f32(0), a3 = vdupq_n_f32(0);
    for (int d = 0; d < hd4; d += 4) {
        const float32x4_t qd = vld1q_f32(q + d);
        a0 = vfmaq_f32(a0, qd, ldh4(k0 + d));
        a1 = vfmaq_f32(a1, qd, ldh4(k1 + d));
        a2 = vfmaq_f32(a2, qd, ldh4(k2 + d));
        a3 = vfmaq_f32(a3, qd, ldh4(k3 + d));
    }
    /* pairwise adds: lane j is the sum of row j's accumulator */
    float32x4_t s4 = vpaddq_f32(vpaddq_f32(a0, a1), vpaddq_f32(a2, a3));
    if (hd4 < head_dim) {
        float tail[4] = {0, 0, 0, 0};
        for (int j = hd4; j < head_dim; j++) {
            tail[0] += q[j] * h2f(k0[j]);
            tail[1] += q[j] * h2f(k1[j]);
            tail[2] += q[j] * h2f(k2[j]);
            tail[3] += q[j] * h2f(k3[j]);
        }
        s4 = vaddq_f32(s4, vld1q_f32(tail));
    }
    return vmulq_n_f32(s4, scale);
}

void spk_attn_head_neon(float *out, const float *q, const spk_f16 *k, const spk_f16 *v, int n_kv, int head_dim,
                        int stride, float scale, const float *sink, float *scratch)
{
    for (int d = 0; d < head_dim; d++)
        out[d] = 0.0f;
    if (n_kv <= 0)
        return;
    /* scores, four rows at a time so their FMA chains overlap; the last n_kv % 4 one by one */
    float mx = -FLT_MAX;
    int t = 0;
    for (; t + 4 <= n_kv; t += 4) {
        const spk_f16 *k0 = k + (size_t)t * stride;
        const float32x4_t s4 = score4(q, k0, k0 + stride, k0 + 2 * stride, k0 + 3 * stride, head_dim, scale);
        vst1q_f32(scratch + t, s4);
        const float m4 = vmaxvq_f32(s4);
        mx = m4 > mx ? m4 : mx;
    }
    for (; t < n_kv; t++) {
        const spk_f16 *kt = k + (size_t)t * stride;
        const float s = vgetq_lane_f32(score4(q, kt, kt, kt, kt, head_dim, scale), 0);
        scratch[t] = s;
        mx = s > mx ? s : mx;
    }
    float den = exp_sub_sum(scratch, n_kv, mx);
    if (sink) /* a learned sink logit: one more term of the denominator */
        den += expf(*sink - mx);
    const float inv = 1.0f / den;
    /* out += p_t * v_t, 32 dims at a time in registers across all t (each V row read once per
     * 32 dims), then 4 at a time, then the rest */
    int d0 = 0;
    for (; d0 + 32 <= head_dim; d0 += 32) {
        float32x4_t c0 = vdupq_n_f32(0), c1 = vdupq_n_f32(0), c2 = vdupq_n_f32(0), c3 = vdupq_n_f32(0),
                    c4 = vdupq_n_f32(0), c5 = vdupq_n_f32(0), c6 = vdupq_n_f32(0), c7 = vdupq_n_f32(0);
        for (int r = 0; r < n_kv; r++) {
            const spk_f16 *vt = v + (size_t)r * stride + d0;
            const float p = scratch[r];
            c0 = vfmaq_n_f32(c0, ldh4(vt), p);
            c1 = vfmaq_n_f32(c1, ldh4(vt + 4), p);
            c2 = vfmaq_n_f32(c2, ldh4(vt + 8), p);
            c3 = vfmaq_n_f32(c3, ldh4(vt + 12), p);
            c4 = vfmaq_n_f32(c4, ldh4(vt + 16), p);
            c5 = vfmaq_n_f32(c5, ldh4(vt + 20), p);
            c6 = vfmaq_n_f32(c6, ldh4(vt + 24), p);
            c7 = vfmaq_n_f32(c7, ldh4(vt + 28), p);
        }
        vst1q_f32(out + d0, vmulq_n_f32(c0, inv));
        vst1q_f32(out + d0 + 4, vmulq_n_f32(c1, inv));
        vst1q_f32(out + d0 + 8, vmulq_n_f32(c2, inv));
        vst1q_f32(out + d0 + 12, vmulq_n_f32(c3, inv));
        vst1q_f32(out + d0 + 16, vmulq_n_f32(c4, inv));
        vst1q_f32(out + d0 + 20, vmulq_n_f32(c5, inv));
        vst1q_f32(out + d0 + 24, vmulq_n_f32(c6, inv));
        vst1q_f32(out + d0 + 28, vmulq_n_f32(c7, inv));
    }
    if (d0 < head_dim) { /* the remaining dims: row by row */
        for (int r = 0; r < n_kv; r++) {
            const spk_f16 *vt = v + (size_t)r * stride;
            const float p = scratch[r];
            int d = d0;
            for (; d + 4 <= head_dim; d += 4)
                vst1q_f32(out + d, vfmaq_n_f32(vld1q_f32(out + d), ldh4(vt + d), p));
            for (; d < head_dim; d++)
                out[d] += p * h2f(vt[d]);
        }
        for (int d = d0; d < head_dim; d++)
            out[d] *= inv;
    }
}

#else
typedef int spk_ops_arm_unused; /* ISO C forbids an empty translation unit */
#endif
