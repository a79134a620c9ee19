/*
 * x86-64 variants of the hot cpu/ops.h kernels: AVX2 (+FMA, F16C) and AVX-512F. Each function
 * carries its own target attribute, so the file builds with default flags; cpu/ops.c calls a
 * level only when the CPU has it. Results match the scalar versions up to float summation
 * order and the vector exp (within 2 ulp of expf).
 */
#if defined(__x86_64__)

#include <float.h>
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#include "cpu/ops_isa.h"

#define TGT2 "avx2,fma,f16c"
#define TGT5 "avx2,fma,f16c,avx512f"
#define A2 __attribute__((target(TGT2)))
#define A5 __attribute__((target(TGT5)))
#define I2 static inline __attribute__((always_inline, target(TGT2)))
#define I5 static inline __attribute__((always_inline, target(TGT5)))

I2 __m256 exp8(__m256 x)
{
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(SPK_EXP_LO)), _mm256_set1_ps(SPK_EXP_HI));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(SPK_EXP_LOG2E)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(SPK_EXP_LN2_HI), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(SPK_EXP_LN2_LO), r);
    __m256 p = _mm256_set1_ps(SPK_EXP_P0);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(SPK_EXP_P1));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(SPK_EXP_P2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(SPK_EXP_P3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(SPK_EXP_P4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(SPK_EXP_P5));
    __m256 r2 = _mm256_mul_ps(r, r);
    p = _mm256_fmadd_ps(p, r2, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

I5 __m512 exp16(__m512 x)
{
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(SPK_EXP_LO)), _mm512_set1_ps(SPK_EXP_HI));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(SPK_EXP_LOG2E)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(SPK_EXP_LN2_HI), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(SPK_EXP_LN2_LO), r);
    __m512 p = _mm512_set1_ps(SPK_EXP_P0);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(SPK_EXP_P1));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(SPK_EXP_P2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(SPK_EXP_P3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(SPK_EXP_P4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(SPK_EXP_P5));
    __m512 r2 = _mm512_mul_ps(r, r);
    p = _mm512_fmadd_ps(p, r2, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

I2 float hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

I2 float hmax4(__m128 s)
{
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

I2 float hmax8(__m256 v)
{
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

I2 float h2f(spk_f16 h)
{
    return _cvtsh_ss(h);
}

I2 spk_f16 f2h(float f)
{
    return (spk_f16)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
}

I2 __m256 ldh8(const spk_f16 *p)
{
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

I5 __m512 ldh16(const spk_f16 *p)
{
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}

/* Mask of the first n (< 16) lanes. */
I5 __mmask16 tailmask(int n)
{
    return (__mmask16)((1u << n) - 1u);
}

/* ---- AVX2 -------------------------------------------------------------------------------- */

A2 void spk_rmsnorm_avx2(float *out, const float *x, const float *w, int n, float eps)
{
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256 x0 = _mm256_loadu_ps(x + i), x1 = _mm256_loadu_ps(x + i + 8);
        a0 = _mm256_fmadd_ps(x0, x0, a0);
        a1 = _mm256_fmadd_ps(x1, x1, a1);
    }
    float ss = hsum8(_mm256_add_ps(a0, a1));
    for (; i < n; i++)
        ss += x[i] * x[i];
    float scale = 1.0f / sqrtf(ss / (float)(n > 0 ? n : 1) + eps);
    __m256 sv = _mm256_set1_ps(scale);
    for (i = 0; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), sv),
                                                _mm256_loadu_ps(w + i)));
    for (; i < n; i++)
        out[i] = x[i] * scale * w[i];
}

A2 void spk_swiglu_avx2(float *out, const float *gate, const float *up, int n)
{
    int i = 0;
    const __m256 one = _mm256_set1_ps(1.0f);
    for (; i + 8 <= n; i += 8) {
        __m256 g = _mm256_loadu_ps(gate + i);
        __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
        __m256 s = _mm256_div_ps(g, _mm256_add_ps(one, e));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(s, _mm256_loadu_ps(up + i)));
    }
    for (; i < n; i++)
        out[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
}

A2 void spk_add_avx2(float *out, const float *a, const float *b, int n)
{
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, _mm256_add_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)));
    for (; i < n; i++)
        out[i] = a[i] + b[i];
}

/* x[i] = exp(x[i] - mx); returns the sum. */
A2 static float exp_sub_sum_avx2(float *x, int n, float mx)
{
    __m256 m = _mm256_set1_ps(mx), acc = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), m));
        _mm256_storeu_ps(x + i, e);
        acc = _mm256_add_ps(acc, e);
    }
    float sum = hsum8(acc);
    for (; i < n; i++) {
        x[i] = expf(x[i] - mx);
        sum += x[i];
    }
    return sum;
}

A2 void spk_softmax_avx2(float *x, int n)
{
    if (n <= 0)
        return;
    __m256 mv = _mm256_set1_ps(-FLT_MAX);
    int i = 0;
    for (; i + 8 <= n; i += 8)
        mv = _mm256_max_ps(mv, _mm256_loadu_ps(x + i));
    float mx = hmax8(mv);
    for (; i < n; i++)
        mx = x[i] > mx ? x[i] : mx;
    float inv = 1.0f / exp_sub_sum_avx2(x, n, mx);
    __m256 iv = _mm256_set1_ps(inv);
    for (i = 0; i + 8 <= n; i += 8)
        _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), iv));
    for (; i < n; i++)
        x[i] *= inv;
}

A2 void spk_f32_to_f16_row_avx2(spk_f16 *out, const float *x, int n)
{
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(out + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++)
        out[i] = f2h(x[i]);
}

A2 void spk_f16_to_f32_row_avx2(float *out, const spk_f16 *x, int n)
{
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, ldh8(x + i));
    for (; i < n; i++)
        out[i] = h2f(x[i]);
}

A2 static float dot_f16_avx2(const float *q, const spk_f16 *k, int n)
{
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int d = 0;
    for (; d + 16 <= n; d += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), ldh8(k + d), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + d + 8), ldh8(k + d + 8), a1);
    }
    for (; d + 8 <= n; d += 8)
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), ldh8(k + d), a0);
    float s = hsum8(_mm256_add_ps(a0, a1));
    for (; d < n; d++)
        s += q[d] * h2f(k[d]);
    return s;
}

/* Four horizontal sums at once: lanes of the result are sum(a), sum(b), sum(c), sum(d). */
I2 __m128 hsum8x4(__m256 a, __m256 b, __m256 c, __m256 d)
{
    __m256 ab = _mm256_hadd_ps(a, b), cd = _mm256_hadd_ps(c, d);
    __m256 abcd = _mm256_hadd_ps(ab, cd);
    return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

/* scratch[t] = scale * q.k_t for all t; returns the largest. Rows go four at a time with two
 * accumulators each, so the FMA chains and the reductions of different rows overlap. */
A2 static float scores_avx2(float *scratch, const float *q, const spk_f16 *k, int n_kv,
                            int head_dim, int stride, float scale)
{
    int hd8 = head_dim & ~7;
    __m128 mxv = _mm_set1_ps(-FLT_MAX), sv = _mm_set1_ps(scale);
    int t = 0;
    for (; t + 4 <= n_kv; t += 4) {
        const spk_f16 *k0 = k + (size_t)t * stride, *k1 = k0 + stride, *k2 = k1 + stride,
                      *k3 = k2 + stride;
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(),
               a3 = _mm256_setzero_ps(), b0 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps(),
               b2 = _mm256_setzero_ps(), b3 = _mm256_setzero_ps();
        int d = 0;
        for (; d + 16 <= hd8; d += 16) {
            __m256 qa = _mm256_loadu_ps(q + d), qb = _mm256_loadu_ps(q + d + 8);
            a0 = _mm256_fmadd_ps(qa, ldh8(k0 + d), a0);
            a1 = _mm256_fmadd_ps(qa, ldh8(k1 + d), a1);
            a2 = _mm256_fmadd_ps(qa, ldh8(k2 + d), a2);
            a3 = _mm256_fmadd_ps(qa, ldh8(k3 + d), a3);
            b0 = _mm256_fmadd_ps(qb, ldh8(k0 + d + 8), b0);
            b1 = _mm256_fmadd_ps(qb, ldh8(k1 + d + 8), b1);
            b2 = _mm256_fmadd_ps(qb, ldh8(k2 + d + 8), b2);
            b3 = _mm256_fmadd_ps(qb, ldh8(k3 + d + 8), b3);
        }
        if (d < hd8) {
            __m256 qa = _mm256_loadu_ps(q + d);
            a0 = _mm256_fmadd_ps(qa, ldh8(k0 + d), a0);
            a1 = _mm256_fmadd_ps(qa, ldh8(k1 + d), a1);
            a2 = _mm256_fmadd_ps(qa, ldh8(k2 + d), a2);
            a3 = _mm256_fmadd_ps(qa, ldh8(k3 + d), a3);
        }
        __m128 s4 = hsum8x4(_mm256_add_ps(a0, b0), _mm256_add_ps(a1, b1),
                            _mm256_add_ps(a2, b2), _mm256_add_ps(a3, b3));
        if (hd8 < head_dim) {
            float tail[4] = {0, 0, 0, 0};
            for (int j = hd8; j < head_dim; j++) {
                tail[0] += q[j] * h2f(k0[j]);
                tail[1] += q[j] * h2f(k1[j]);
                tail[2] += q[j] * h2f(k2[j]);
                tail[3] += q[j] * h2f(k3[j]);
            }
            s4 = _mm_add_ps(s4, _mm_loadu_ps(tail));
        }
        s4 = _mm_mul_ps(s4, sv);
        _mm_storeu_ps(scratch + t, s4);
        mxv = _mm_max_ps(mxv, s4);
    }
    float mx = hmax4(mxv);
    for (; t < n_kv; t++) {
        float s = scale * dot_f16_avx2(q, k + (size_t)t * stride, head_dim);
        scratch[t] = s;
        mx = s > mx ? s : mx;
    }
    return mx;
}

A2 void spk_attn_head_avx2(float *out, const float *q, const spk_f16 *k, const spk_f16 *v,
                           int n_kv, int head_dim, int stride, float scale, const float *sink, float *scratch)
{
    for (int d = 0; d < head_dim; d++)
        out[d] = 0.0f;
    if (n_kv <= 0)
        return;
    float mx = scores_avx2(scratch, q, k, n_kv, head_dim, stride, scale);
    float den = exp_sub_sum_avx2(scratch, n_kv, mx);
    if (sink) /* a learned sink logit: one more term of the denominator */
        den += expf(*sink - mx);
    float inv = 1.0f / den;
    /* out += p_t * v_t in tiles of 64 dims (128 bytes of f16 = two cache lines per row), the
     * tile's accumulators held in registers across all t, so each V row is read once. */
    int d0 = 0;
    for (; d0 + 64 <= head_dim; d0 += 64) {
        __m256 c0 = _mm256_setzero_ps(), c1 = _mm256_setzero_ps(), c2 = _mm256_setzero_ps(),
               c3 = _mm256_setzero_ps(), c4 = _mm256_setzero_ps(), c5 = _mm256_setzero_ps(),
               c6 = _mm256_setzero_ps(), c7 = _mm256_setzero_ps();
        for (int t = 0; t < n_kv; t++) {
            const spk_f16 *vt = v + (size_t)t * stride + d0;
            __m256 p = _mm256_set1_ps(scratch[t]);
            c0 = _mm256_fmadd_ps(p, ldh8(vt), c0);
            c1 = _mm256_fmadd_ps(p, ldh8(vt + 8), c1);
            c2 = _mm256_fmadd_ps(p, ldh8(vt + 16), c2);
            c3 = _mm256_fmadd_ps(p, ldh8(vt + 24), c3);
            c4 = _mm256_fmadd_ps(p, ldh8(vt + 32), c4);
            c5 = _mm256_fmadd_ps(p, ldh8(vt + 40), c5);
            c6 = _mm256_fmadd_ps(p, ldh8(vt + 48), c6);
            c7 = _mm256_fmadd_ps(p, ldh8(vt + 56), c7);
        }
        __m256 iv = _mm256_set1_ps(inv);
        _mm256_storeu_ps(out + d0, _mm256_mul_ps(c0, iv));
        _mm256_storeu_ps(out + d0 + 8, _mm256_mul_ps(c1, iv));
        _mm256_storeu_ps(out + d0 + 16, _mm256_mul_ps(c2, iv));
        _mm256_storeu_ps(out + d0 + 24, _mm256_mul_ps(c3, iv));
        _mm256_storeu_ps(out + d0 + 32, _mm256_mul_ps(c4, iv));
        _mm256_storeu_ps(out + d0 + 40, _mm256_mul_ps(c5, iv));
        _mm256_storeu_ps(out + d0 + 48, _mm256_mul_ps(c6, iv));
        _mm256_storeu_ps(out + d0 + 56, _mm256_mul_ps(c7, iv));
    }
    if (d0 < head_dim) { /* the remaining dims: row by row */
        for (int t = 0; t < n_kv; t++) {
            const spk_f16 *vt = v + (size_t)t * stride;
            __m256 p = _mm256_set1_ps(scratch[t]);
            int d = d0;
            for (; d + 8 <= head_dim; d += 8)
                _mm256_storeu_ps(out + d, _mm256_fmadd_ps(p, ldh8(vt + d), _mm256_loadu_ps(out + d)));
            for (; d < head_dim; d++)
                out[d] += scratch[t] * h2f(vt[d]);
        }
        for (int d = d0; d < head_dim; d++)
            out[d] *= inv;
    }
}

/* ---- AVX-512 ----------------------------------------------------------------------------- */

A5 void spk_rmsnorm_avx512(float *out, const float *x, const float *w, int n, float eps)
{
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        __m512 x0 = _mm512_loadu_ps(x + i), x1 = _mm512_loadu_ps(x + i + 16);
        a0 = _mm512_fmadd_ps(x0, x0, a0);
        a1 = _mm512_fmadd_ps(x1, x1, a1);
    }
    for (; i < n; i += 16) {
        __m512 x0 = _mm512_maskz_loadu_ps(n - i >= 16 ? 0xFFFF : tailmask(n - i), x + i);
        a0 = _mm512_fmadd_ps(x0, x0, a0);
    }
    float ss = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
    float scale = 1.0f / sqrtf(ss / (float)(n > 0 ? n : 1) + eps);
    __m512 sv = _mm512_set1_ps(scale);
    for (i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? 0xFFFF : tailmask(n - i);
        __m512 y = _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), sv),
                                 _mm512_maskz_loadu_ps(m, w + i));
        _mm512_mask_storeu_ps(out + i, m, y);
    }
}

A5 void spk_swiglu_avx512(float *out, const float *gate, const float *up, int n)
{
    const __m512 one = _mm512_set1_ps(1.0f);
    for (int i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? 0xFFFF : tailmask(n - i);
        __m512 g = _mm512_maskz_loadu_ps(m, gate + i);
        __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), g));
        __m512 s = _mm512_div_ps(g, _mm512_add_ps(one, e));
        _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(s, _mm512_maskz_loadu_ps(m, up + i)));
    }
}

A5 void spk_add_avx512(float *out, const float *a, const float *b, int n)
{
    for (int i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? 0xFFFF : tailmask(n - i);
        _mm512_mask_storeu_ps(out + i, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, a + i),
                                                        _mm512_maskz_loadu_ps(m, b + i)));
    }
}

A5 static float exp_sub_sum_avx512(float *x, int n, float mx)
{
    __m512 mv = _mm512_set1_ps(mx), acc = _mm512_setzero_ps();
    for (int i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? 0xFFFF : tailmask(n - i);
        __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), mv));
        _mm512_mask_storeu_ps(x + i, m, e);
        acc = _mm512_mask_add_ps(acc, m, acc, e);
    }
    return _mm512_reduce_add_ps(acc);
}

A5 void spk_softmax_avx512(float *x, int n)
{
    if (n <= 0)
        return;
    __m512 mv = _mm512_set1_ps(-FLT_MAX);
    for (int i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? 0xFFFF : tailmask(n - i);
        mv = _mm512_mask_max_ps(mv, m, mv, _mm512_maskz_loadu_ps(m, x + i));
    }
    float inv = 1.0f / exp_sub_sum_avx512(x, n, _mm512_reduce_max_ps(mv));
    __m512 iv = _mm512_set1_ps(inv);
    for (int i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? 0xFFFF : tailmask(n - i);
        _mm512_mask_storeu_ps(x + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), iv));
    }
}

A5 void spk_f32_to_f16_row_avx512(spk_f16 *out, const float *x, int n)
{
    int i = 0;
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(out + i),
                            _mm512_cvtps_ph(_mm512_loadu_ps(x + i),
                                            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    for (; i < n; i++)
        out[i] = f2h(x[i]);
}

A5 void spk_f16_to_f32_row_avx512(float *out, const spk_f16 *x, int n)
{
    int i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(out + i, ldh16(x + i));
    for (; i < n; i++)
        out[i] = h2f(x[i]);
}

A5 static float dot_f16_avx512(const float *q, const spk_f16 *k, int n)
{
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    int d = 0;
    for (; d + 32 <= n; d += 32) {
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q + d), ldh16(k + d), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(q + d + 16), ldh16(k + d + 16), a1);
    }
    for (; d + 16 <= n; d += 16)
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q + d), ldh16(k + d), a0);
    float s = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
    for (; d < n; d++)
        s += q[d] * h2f(k[d]);
    return s;
}

/* Four horizontal sums at once (lanes: sum(a), sum(b), sum(c), sum(d)). */
I5 __m128 hsum16x4(__m512 a, __m512 b, __m512 c, __m512 d)
{
    __m256 a8 = _mm256_add_ps(_mm512_castps512_ps256(a),
                              _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)));
    __m256 b8 = _mm256_add_ps(_mm512_castps512_ps256(b),
                              _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(b), 1)));
    __m256 c8 = _mm256_add_ps(_mm512_castps512_ps256(c),
                              _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(c), 1)));
    __m256 d8 = _mm256_add_ps(_mm512_castps512_ps256(d),
                              _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(d), 1)));
    return hsum8x4(a8, b8, c8, d8);
}

/* As scores_avx2, 16 dims per step. */
A5 static float scores_avx512(float *scratch, const float *q, const spk_f16 *k, int n_kv,
                              int head_dim, int stride, float scale)
{
    int hd16 = head_dim & ~15;
    __m128 mxv = _mm_set1_ps(-FLT_MAX), sv = _mm_set1_ps(scale);
    int t = 0;
    for (; t + 4 <= n_kv; t += 4) {
        const spk_f16 *k0 = k + (size_t)t * stride, *k1 = k0 + stride, *k2 = k1 + stride,
                      *k3 = k2 + stride;
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(),
               a3 = _mm512_setzero_ps(), b0 = _mm512_setzero_ps(), b1 = _mm512_setzero_ps(),
               b2 = _mm512_setzero_ps(), b3 = _mm512_setzero_ps();
        int d = 0;
        for (; d + 32 <= hd16; d += 32) {
            __m512 qa = _mm512_loadu_ps(q + d), qb = _mm512_loadu_ps(q + d + 16);
            a0 = _mm512_fmadd_ps(qa, ldh16(k0 + d), a0);
            a1 = _mm512_fmadd_ps(qa, ldh16(k1 + d), a1);
            a2 = _mm512_fmadd_ps(qa, ldh16(k2 + d), a2);
            a3 = _mm512_fmadd_ps(qa, ldh16(k3 + d), a3);
            b0 = _mm512_fmadd_ps(qb, ldh16(k0 + d + 16), b0);
            b1 = _mm512_fmadd_ps(qb, ldh16(k1 + d + 16), b1);
            b2 = _mm512_fmadd_ps(qb, ldh16(k2 + d + 16), b2);
            b3 = _mm512_fmadd_ps(qb, ldh16(k3 + d + 16), b3);
        }
        if (d < hd16) {
            __m512 qa = _mm512_loadu_ps(q + d);
            a0 = _mm512_fmadd_ps(qa, ldh16(k0 + d), a0);
            a1 = _mm512_fmadd_ps(qa, ldh16(k1 + d), a1);
            a2 = _mm512_fmadd_ps(qa, ldh16(k2 + d), a2);
            a3 = _mm512_fmadd_ps(qa, ldh16(k3 + d), a3);
        }
        __m128 s4 = hsum16x4(_mm512_add_ps(a0, b0), _mm512_add_ps(a1, b1),
                             _mm512_add_ps(a2, b2), _mm512_add_ps(a3, b3));
        if (hd16 < head_dim) {
            float tail[4] = {0, 0, 0, 0};
            for (int j = hd16; j < head_dim; j++) {
                tail[0] += q[j] * h2f(k0[j]);
                tail[1] += q[j] * h2f(k1[j]);
                tail[2] += q[j] * h2f(k2[j]);
                tail[3] += q[j] * h2f(k3[j]);
            }
            s4 = _mm_add_ps(s4, _mm_loadu_ps(tail));
        }
        s4 = _mm_mul_ps(s4, sv);
        _mm_storeu_ps(scratch + t, s4);
        mxv = _mm_max_ps(mxv, s4);
    }
    float mx = hmax4(mxv);
    for (; t < n_kv; t++) {
        float s = scale * dot_f16_avx512(q, k + (size_t)t * stride, head_dim);
        scratch[t] = s;
        mx = s > mx ? s : mx;
    }
    return mx;
}

A5 void spk_attn_head_avx512(float *out, const float *q, const spk_f16 *k, const spk_f16 *v,
                             int n_kv, int head_dim, int stride, float scale, const float *sink, float *scratch)
{
    for (int d = 0; d < head_dim; d++)
        out[d] = 0.0f;
    if (n_kv <= 0)
        return;
    float mx = scores_avx512(scratch, q, k, n_kv, head_dim, stride, scale);
    float den = exp_sub_sum_avx512(scratch, n_kv, mx);
    if (sink) /* a learned sink logit: one more term of the denominator */
        den += expf(*sink - mx);
    float inv = 1.0f / den;
    /* Tiles of 64 dims with register accumulators, as in the AVX2 version. */
    int d0 = 0;
    for (; d0 + 64 <= head_dim; d0 += 64) {
        __m512 c0 = _mm512_setzero_ps(), c1 = _mm512_setzero_ps(), c2 = _mm512_setzero_ps(),
               c3 = _mm512_setzero_ps();
        for (int t = 0; t < n_kv; t++) {
            const spk_f16 *vt = v + (size_t)t * stride + d0;
            __m512 p = _mm512_set1_ps(scratch[t]);
            c0 = _mm512_fmadd_ps(p, ldh16(vt), c0);
            c1 = _mm512_fmadd_ps(p, ldh16(vt + 16), c1);
            c2 = _mm512_fmadd_ps(p, ldh16(vt + 32), c2);
            c3 = _mm512_fmadd_ps(p, ldh16(vt + 48), c3);
        }
        __m512 iv = _mm512_set1_ps(inv);
        _mm512_storeu_ps(out + d0, _mm512_mul_ps(c0, iv));
        _mm512_storeu_ps(out + d0 + 16, _mm512_mul_ps(c1, iv));
        _mm512_storeu_ps(out + d0 + 32, _mm512_mul_ps(c2, iv));
        _mm512_storeu_ps(out + d0 + 48, _mm512_mul_ps(c3, iv));
    }
    if (d0 < head_dim) {
        for (int t = 0; t < n_kv; t++) {
            const spk_f16 *vt = v + (size_t)t * stride;
            __m512 p = _mm512_set1_ps(scratch[t]);
            int d = d0;
            for (; d + 16 <= head_dim; d += 16)
                _mm512_storeu_ps(out + d, _mm512_fmadd_ps(p, ldh16(vt + d), _mm512_loadu_ps(out + d)));
            for (; d < head_dim; d++)
                out[d] += scratch[t] * h2f(vt[d]);
        }
        for (int d = d0; d < head_dim; d++)
            out[d] *= inv;
    }
}

#else
typedef int spk_ops_x86_unused; /* ISO C forbids an empty translation unit */
#endif
