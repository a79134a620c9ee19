/*
 * x86-64 matmul kernels for the 32-value block types Q5_0 and Q5_1, AVX2+FMA+F16C, with target
 * attributes like cpu/matmul_x86.c (the AVX-512 table inherits them). One weight row against up
 * to 4 tokens: each block is unpacked once per 4 tokens. (MXFP4: cpu/matmul_x86_mxfp4.c.)
 */
#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "cpu/quant.h"

#define TGT2 "avx2,fma,f16c"
#define A2 __attribute__((target(TGT2)))
#define I2 static inline __attribute__((always_inline, target(TGT2)))

enum { K_Q5_0, K_Q5_1 };

I2 float hsum256(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* 0x10 in byte j where bit j of the 32-bit little-endian qh is set, else 0. */
I2 __m256i bit4_bytes(const uint8_t *qh)
{
    uint32_t v;
    memcpy(&v, qh, 4);
    const __m256i rep = _mm256_shuffle_epi8(
        _mm256_set1_epi32((int)v),
        _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3,
                         3, 3, 3, 3, 3, 3, 3));
    const __m256i bit = _mm256_set1_epi64x(0x8040201008040201ll);
    const __m256i on = _mm256_cmpeq_epi8(_mm256_and_si256(rep, bit), bit);
    return _mm256_and_si256(on, _mm256_set1_epi8(0x10));
}

/* The 16 nibbles at qs as 32 bytes in element order (low nibbles are elements 0-15). */
I2 __m256i nibbles(const uint8_t *qs)
{
    const __m128i x = _mm_loadu_si128((const __m128i *)qs);
    const __m256i y = _mm256_inserti128_si256(_mm256_castsi128_si256(x), _mm_srli_epi16(x, 4), 1);
    return _mm256_and_si256(y, _mm256_set1_epi8(15));
}

I2 __m256i block_dot(__m256i w, __m256i a)
{
    return _mm256_madd_epi16(_mm256_maddubs_epi16(w, a), _mm256_set1_epi16(1));
}

/*
 * One row against T tokens: the unsigned 5-bit values (0..31) are dotted, then -16 * d * s
 * (Q5_0) or m * s (Q5_1) is added.
 */
I2 void tile_avx2(int kind, int T, float *out, int ld, const uint8_t *w, size_t wrow,
                  const uint8_t *act, size_t arow, int n, int r, int t0)
{
    const size_t bs = kind == K_Q5_0 ? sizeof(spk_block_q5_0) : sizeof(spk_block_q5_1);
    const uint8_t *wr = w + (size_t)r * wrow;
    __m256 acc[4];
    float corr[4];
    const uint8_t *at[4];
    for (int t = 0; t < T; t++) {
        acc[t] = _mm256_setzero_ps();
        corr[t] = 0.0f;
        at[t] = act + (size_t)(t0 + t) * arow;
    }
    for (int b = 0; b < n / 32; b++) {
        const uint8_t *p = wr + (size_t)b * bs;
        uint16_t h[2];
        memcpy(h, p, 4);
        const float dw = _cvtsh_ss(h[0]), mw = kind == K_Q5_1 ? _cvtsh_ss(h[1]) : -16.0f * dw;
        const uint8_t *qh = p + (kind == K_Q5_1 ? 4 : 2);
        const __m256i wv = _mm256_or_si256(nibbles(qh + 4), bit4_bytes(qh));
        for (int t = 0; t < T; t++) {
            const float *ds = (const float *)(at[t] + n);
            const __m256i a = _mm256_loadu_si256((const __m256i *)(at[t] + 32 * b));
            const __m256 f = _mm256_cvtepi32_ps(block_dot(wv, a));
            acc[t] = _mm256_fmadd_ps(f, _mm256_set1_ps(dw * ds[2 * b]), acc[t]);
            corr[t] += mw * ds[2 * b + 1];
        }
    }
    for (int t = 0; t < T; t++)
        out[(size_t)(t0 + t) * (size_t)ld + (size_t)r] = hsum256(acc[t]) + corr[t];
}

I2 void mm_avx2(int kind, float *out, int ld, const void *w, size_t wrow, const void *act,
                size_t arow, int n, int n_tok, int row0, int row1)
{
    for (int r = row0; r < row1; r++)
        for (int t = 0; t < n_tok; t += 4) {
            switch (n_tok - t) {
            case 1: tile_avx2(kind, 1, out, ld, w, wrow, act, arow, n, r, t); break;
            case 2: tile_avx2(kind, 2, out, ld, w, wrow, act, arow, n, r, t); break;
            case 3: tile_avx2(kind, 3, out, ld, w, wrow, act, arow, n, r, t); break;
            default: tile_avx2(kind, 4, out, ld, w, wrow, act, arow, n, r, t); break;
            }
        }
}

#define MM(name, kind)                                                                             \
    A2 static void name(float *out, int ld, const void *w, size_t wrow, const void *act,           \
                        size_t arow, int n, int n_tok, int row0, int row1)                         \
    {                                                                                              \
        mm_avx2(kind, out, ld, w, wrow, act, arow, n, n_tok, row0, row1);                          \
    }

MM(mm_q5_0_avx2, K_Q5_0)
MM(mm_q5_1_avx2, K_Q5_1)

A2 void spk_mm_fill_avx2_q5(spk_mm_table *t)
{
    t->mm[SPK_DT_Q5_0] = mm_q5_0_avx2;
    t->mm[SPK_DT_Q5_1] = mm_q5_1_avx2;
}

#else
typedef int spk_matmul_x86_q5_unused; /* ISO C forbids an empty translation unit */
#endif
