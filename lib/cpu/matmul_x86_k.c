/*
 * x86-64 matmul kernels for K-quant weights (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K), AVX2+FMA+F16C, compiled with target
 * attributes like cpu/matmul_x86.c; the AVX-512 table inherits them. One weight row at a time
 * against up to 4 tokens (each super-block is unpacked once per 4 tokens).
 */
#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>
#include <stdint.h>

#include "cpu/quant.h"

#define TGT2 "avx2,fma,f16c"
#define A2 __attribute__((target(TGT2)))
#define I2 static inline __attribute__((always_inline, target(TGT2)))

I2 float hsum256(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* The 6-bit scales and mins of the 8 sub-blocks of a Q4_K super-block. */
static inline void q4k_scales(const uint8_t *k, int *sc, int *m)
{
    for (int j = 0; j < 4; j++) {
        sc[j] = k[j] & 63;
        m[j] = k[j + 4] & 63;
        sc[j + 4] = (k[j + 8] & 15) | ((k[j] >> 6) << 4);
        m[j + 4] = (k[j + 8] >> 4) | ((k[j + 4] >> 6) << 4);
    }
}

/* One Q4_K row against T tokens: sub-block j of 32 values matches activation block j. */
I2 void tile_q4k_avx2(int T, float *out, int ld, const uint8_t *w, size_t wrow, const uint8_t *act,
                      size_t arow, int n, int r, int t0)
{
    const spk_block_q4_K *x = (const spk_block_q4_K *)(w + (size_t)r * wrow);
    const __m256i m4 = _mm256_set1_epi8(15), ones = _mm256_set1_epi16(1);
    __m256 acc[4];
    float corr[4];
    const uint8_t *at[4];
    for (int t = 0; t < T; t++) {
        acc[t] = _mm256_setzero_ps();
        corr[t] = 0.0f;
        at[t] = act + (size_t)(t0 + t) * arow;
    }
    for (int b = 0; b < n / SPK_QK_K; b++) {
        const float d = _cvtsh_ss(x[b].d), dmin = _cvtsh_ss(x[b].dmin);
        int sc[8], mn[8];
        q4k_scales(x[b].scales, sc, mn);
        for (int j = 0; j < 4; j++) {
            const __m256i q = _mm256_loadu_si256((const __m256i *)(x[b].qs + 32 * j));
            const __m256i lo = _mm256_and_si256(q, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            const int ab = b * 8 + 2 * j;
            for (int t = 0; t < T; t++) {
                const float *ds = (const float *)(at[t] + n);
                const __m256i a0 = _mm256_loadu_si256((const __m256i *)(at[t] + 32 * ab));
                const __m256i a1 = _mm256_loadu_si256((const __m256i *)(at[t] + 32 * ab + 32));
                const __m256 f0 = _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(lo, a0), ones));
                const __m256 f1 = _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(hi, a1), ones));
                acc[t] = _mm256_fmadd_ps(f0, _mm256_set1_ps(d * (float)sc[2 * j] * ds[2 * ab]), acc[t]);
                acc[t] = _mm256_fmadd_ps(f1, _mm256_set1_ps(d * (float)sc[2 * j + 1] * ds[2 * ab + 2]), acc[t]);
                corr[t] += dmin * ((float)mn[2 * j] * ds[2 * ab + 1] + (float)mn[2 * j + 1] * ds[2 * ab + 3]);
            }
        }
    }
    for (int t = 0; t < T; t++)
        out[(size_t)(t0 + t) * (size_t)ld + (size_t)r] = hsum256(acc[t]) - corr[t];
}

/* One Q6_K row against T tokens: 6-bit values minus 32, a signed scale per 16 values. */
I2 void tile_q6k_avx2(int T, float *out, int ld, const uint8_t *w, size_t wrow, const uint8_t *act,
                      size_t arow, int n, int r, int t0)
{
    const spk_block_q6_K *x = (const spk_block_q6_K *)(w + (size_t)r * wrow);
    const __m256i m4 = _mm256_set1_epi8(15), m3 = _mm256_set1_epi8(3), k32 = _mm256_set1_epi8(32);
    __m256 acc[4];
    const uint8_t *at[4];
    for (int t = 0; t < T; t++) {
        acc[t] = _mm256_setzero_ps();
        at[t] = act + (size_t)(t0 + t) * arow;
    }
    for (int b = 0; b < n / SPK_QK_K; b++) {
        const float d = _cvtsh_ss(x[b].d);
        for (int h = 0; h < 2; h++) {
            const __m256i l0 = _mm256_loadu_si256((const __m256i *)(x[b].ql + 64 * h));
            const __m256i l1 = _mm256_loadu_si256((const __m256i *)(x[b].ql + 64 * h + 32));
            const __m256i hb = _mm256_loadu_si256((const __m256i *)(x[b].qh + 32 * h));
            __m256i q[4];
            q[0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_slli_epi16(_mm256_and_si256(hb, m3), 4));
            q[1] = _mm256_or_si256(_mm256_and_si256(l1, m4),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2), m3), 4));
            q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 4), m3), 4));
            q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 6), m3), 4));
            for (int k = 0; k < 4; k++) {
                const __m256i wq = _mm256_sub_epi8(q[k], k32);
                const __m256i aw = _mm256_sign_epi8(wq, wq);
                const int8_t *sc = x[b].scales + 8 * h + 2 * k;
                const __m256i scv = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_set1_epi16(sc[0])),
                                                            _mm_set1_epi16(sc[1]), 1);
                const int ab = b * 8 + 4 * h + k;
                for (int t = 0; t < T; t++) {
                    const float *ds = (const float *)(at[t] + n);
                    const __m256i a = _mm256_loadu_si256((const __m256i *)(at[t] + 32 * ab));
                    const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, _mm256_sign_epi8(a, wq)), scv);
                    acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(d * ds[2 * ab]), acc[t]);
                }
            }
        }
    }
    for (int t = 0; t < T; t++)
        out[(size_t)(t0 + t) * (size_t)ld + (size_t)r] = hsum256(acc[t]);
}

/* One Q5_K row against T tokens: Q4_K's layout plus a fifth bit per value in qh (bit 2c of
 * qh[l] for value l of the first 32 of chunk c, bit 2c+1 for the second 32). */
I2 void tile_q5k_avx2(int T, float *out, int ld, const uint8_t *w, size_t wrow, const uint8_t *act,
                      size_t arow, int n, int r, int t0)
{
    const spk_block_q5_K *x = (const spk_block_q5_K *)(w + (size_t)r * wrow);
    const __m256i m4 = _mm256_set1_epi8(15), b1 = _mm256_set1_epi8(1), ones = _mm256_set1_epi16(1);
    __m256 acc[4];
    float corr[4];
    const uint8_t *at[4];
    for (int t = 0; t < T; t++) {
        acc[t] = _mm256_setzero_ps();
        corr[t] = 0.0f;
        at[t] = act + (size_t)(t0 + t) * arow;
    }
    for (int b = 0; b < n / SPK_QK_K; b++) {
        const float d = _cvtsh_ss(x[b].d), dmin = _cvtsh_ss(x[b].dmin);
        int sc[8], mn[8];
        q4k_scales(x[b].scales, sc, mn);
        const __m256i hb = _mm256_loadu_si256((const __m256i *)x[b].qh);
        for (int j = 0; j < 4; j++) {
            const __m256i q = _mm256_loadu_si256((const __m256i *)(x[b].qs + 32 * j));
            const __m256i h0 = _mm256_and_si256(_mm256_srli_epi16(hb, 2 * j), b1);
            const __m256i h1 = _mm256_and_si256(_mm256_srli_epi16(hb, 2 * j + 1), b1);
            const __m256i lo = _mm256_or_si256(_mm256_and_si256(q, m4), _mm256_slli_epi16(h0, 4));
            const __m256i hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 4), m4),
                                               _mm256_slli_epi16(h1, 4));
            const int ab = b * 8 + 2 * j;
            for (int t = 0; t < T; t++) {
                const float *ds = (const float *)(at[t] + n);
                const __m256i a0 = _mm256_loadu_si256((const __m256i *)(at[t] + 32 * ab));
                const __m256i a1 = _mm256_loadu_si256((const __m256i *)(at[t] + 32 * ab + 32));
                const __m256 f0 = _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(lo, a0), ones));
                const __m256 f1 = _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(hi, a1), ones));
                acc[t] = _mm256_fmadd_ps(f0, _mm256_set1_ps(d * (float)sc[2 * j] * ds[2 * ab]), acc[t]);
                acc[t] = _mm256_fmadd_ps(f1, _mm256_set1_ps(d * (float)sc[2 * j + 1] * ds[2 * ab + 2]), acc[t]);
                corr[t] += dmin * ((float)mn[2 * j] * ds[2 * ab + 1] + (float)mn[2 * j + 1] * ds[2 * ab + 3]);
            }
        }
    }
    for (int t = 0; t < T; t++)
        out[(size_t)(t0 + t) * (size_t)ld + (size_t)r] = hsum256(acc[t]) - corr[t];
}

/* int16 lanes: a in the low 128 bits (values 0-15 of a block of 32), b in the high 128. */
I2 __m256i split16(int a, int b)
{
    return _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_set1_epi16((short)a)),
                                   _mm_set1_epi16((short)b), 1);
}

/* The 16 signed scales (-32..31) of a Q3_K super-block. */
static inline void q3k_scales(const uint8_t *s, int *sc)
{
    for (int j = 0; j < 16; j++)
        sc[j] = (((s[j % 8] >> (4 * (j / 8))) & 15) | ((s[8 + j % 4] >> (2 * (j / 4))) & 3) << 4) - 32;
}

/* One Q3_K row against T tokens: values (low 2 bits | high bit << 2) - 4, i.e. -4..3, a signed
 * scale per 16; activation block 4h + k takes bits 2k of qs[32h..] and bit 4h + k of hmask. */
I2 void tile_q3k_avx2(int T, float *out, int ld, const uint8_t *w, size_t wrow, const uint8_t *act,
                      size_t arow, int n, int r, int t0)
{
    const spk_block_q3_K *x = (const spk_block_q3_K *)(w + (size_t)r * wrow);
    const __m256i m3 = _mm256_set1_epi8(3), b1 = _mm256_set1_epi8(1), k4 = _mm256_set1_epi8(4);
    __m256 acc[4];
    const uint8_t *at[4];
    for (int t = 0; t < T; t++) {
        acc[t] = _mm256_setzero_ps();
        at[t] = act + (size_t)(t0 + t) * arow;
    }
    for (int b = 0; b < n / SPK_QK_K; b++) {
        const float d = _cvtsh_ss(x[b].d);
        int sc[16];
        q3k_scales(x[b].scales, sc);
        const __m256i hb = _mm256_loadu_si256((const __m256i *)x[b].hmask);
        for (int h = 0; h < 2; h++) {
            const __m256i qv = _mm256_loadu_si256((const __m256i *)(x[b].qs + 32 * h));
            for (int k = 0; k < 4; k++) {
                const __m256i lo = _mm256_and_si256(_mm256_srli_epi16(qv, 2 * k), m3);
                const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(hb, 4 * h + k), b1);
                const __m256i wq = _mm256_sub_epi8(_mm256_or_si256(lo, _mm256_slli_epi16(hi, 2)), k4);
                const __m256i aw = _mm256_sign_epi8(wq, wq);
                const int ab = b * 8 + 4 * h + k;
                const __m256i scv = split16(sc[2 * (4 * h + k)], sc[2 * (4 * h + k) + 1]);
                for (int t = 0; t < T; t++) {
                    const float *ds = (const float *)(at[t] + n);
                    const __m256i a = _mm256_loadu_si256((const __m256i *)(at[t] + 32 * ab));
                    const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, _mm256_sign_epi8(a, wq)), scv);
                    acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(d * ds[2 * ab]), acc[t]);
                }
            }
        }
    }
    for (int t = 0; t < T; t++)
        out[(size_t)(t0 + t) * (size_t)ld + (size_t)r] = hsum256(acc[t]);
}

/* One Q2_K row against T tokens: values 0..3 times a 4-bit scale, minus a 4-bit min, per 16;
 * the mins meet the sums of the int8 activations over each 16 (maddubs with ones). */
I2 void tile_q2k_avx2(int T, float *out, int ld, const uint8_t *w, size_t wrow, const uint8_t *act,
                      size_t arow, int n, int r, int t0)
{
    const spk_block_q2_K *x = (const spk_block_q2_K *)(w + (size_t)r * wrow);
    const __m256i m3 = _mm256_set1_epi8(3), u1 = _mm256_set1_epi8(1);
    __m256 acc[4];
    const uint8_t *at[4];
    for (int t = 0; t < T; t++) {
        acc[t] = _mm256_setzero_ps();
        at[t] = act + (size_t)(t0 + t) * arow;
    }
    for (int b = 0; b < n / SPK_QK_K; b++) {
        const float d = _cvtsh_ss(x[b].d), dmin = _cvtsh_ss(x[b].dmin);
        for (int h = 0; h < 2; h++) {
            const __m256i qv = _mm256_loadu_si256((const __m256i *)(x[b].qs + 32 * h));
            for (int k = 0; k < 4; k++) {
                const __m256i q = _mm256_and_si256(_mm256_srli_epi16(qv, 2 * k), m3);
                const int ab = b * 8 + 4 * h + k;
                const uint8_t s0 = x[b].scales[2 * (4 * h + k)], s1 = x[b].scales[2 * (4 * h + k) + 1];
                const __m256i scv = split16(s0 & 15, s1 & 15), mv = split16(s0 >> 4, s1 >> 4);
                for (int t = 0; t < T; t++) {
                    const float *ds = (const float *)(at[t] + n);
                    const __m256i a = _mm256_loadu_si256((const __m256i *)(at[t] + 32 * ab));
                    const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(q, a), scv);
                    const __m256i m = _mm256_madd_epi16(_mm256_maddubs_epi16(u1, a), mv);
                    acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(d * ds[2 * ab]), acc[t]);
                    acc[t] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(m), _mm256_set1_ps(dmin * ds[2 * ab]), acc[t]);
                }
            }
        }
    }
    for (int t = 0; t < T; t++)
        out[(size_t)(t0 + t) * (size_t)ld + (size_t)r] = hsum256(acc[t]);
}

#define MM_K(name, tile)                                                                           \
    A2 static void name(float *out, int ld, const void *w, size_t wrow, const void *act,           \
                        size_t arow, int n, int n_tok, int row0, int row1)                         \
    {                                                                                              \
        for (int r = row0; r < row1; r++)                                                          \
            for (int t = 0; t < n_tok; t += 4) {                                                   \
                switch (n_tok - t) {                                                               \
                case 1: tile(1, out, ld, w, wrow, act, arow, n, r, t); break;                      \
                case 2: tile(2, out, ld, w, wrow, act, arow, n, r, t); break;                      \
                case 3: tile(3, out, ld, w, wrow, act, arow, n, r, t); break;                      \
                default: tile(4, out, ld, w, wrow, act, arow, n, r, t); break;                     \
                }                                                                                  \
            }                                                                                      \
    }

MM_K(mm_q4k_avx2, tile_q4k_avx2)
MM_K(mm_q6k_avx2, tile_q6k_avx2)
MM_K(mm_q5k_avx2, tile_q5k_avx2)
MM_K(mm_q3k_avx2, tile_q3k_avx2)
MM_K(mm_q2k_avx2, tile_q2k_avx2)

A2 void spk_mm_fill_avx2_kquants(spk_mm_table *t)
{
    t->mm[SPK_DT_Q4_K] = mm_q4k_avx2;
    t->mm[SPK_DT_Q6_K] = mm_q6k_avx2;
    t->mm[SPK_DT_Q5_K] = mm_q5k_avx2;
    t->mm[SPK_DT_Q3_K] = mm_q3k_avx2;
    t->mm[SPK_DT_Q2_K] = mm_q2k_avx2;
}

#else
typedef int spk_matmul_x86_k_unused; /* ISO C forbids an empty translation unit */
#endif
