/*
 * x86-64 AVX2 quantizer of the K-quant section of the activation rows (cpu/quant.h: one scale per
 * 256 values, int16 sums per 16), bit-identical to spk_q8k_quantize_row_ref, and the table entries
 * of the K-quant kernels (8-row tiles in cpu/matmul_x86_q4k.c and cpu/matmul_x86_q6k.c), compiled
 * with target attributes like cpu/matmul_x86.c; the AVX-512 table inherits them.
 */
#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "cpu/matmul_x86_avx2.h"
#include "cpu/quant.h"

/* roundf(): add 0.5 minus one ulp with the sign of v, truncate, clamp to -127..127. */
I2 __m256i kround(__m256 v)
{
    const __m256 half = _mm256_castsi256_ps(_mm256_set1_epi32(0x3EFFFFFF));
    const __m256 sign = _mm256_and_ps(v, _mm256_castsi256_ps(_mm256_set1_epi32((int)0x80000000u)));
    __m256i q = _mm256_cvttps_epi32(_mm256_add_ps(v, _mm256_or_ps(half, sign)));
    q = _mm256_min_epi32(q, _mm256_set1_epi32(127));
    return _mm256_max_epi32(q, _mm256_set1_epi32(-127));
}

I2 int hsum_i32(__m256i s)
{
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
    return _mm_cvtsi128_si32(s4);
}

A2 static void q8k_quantize_avx2(void *dst, const float *x, int n)
{
    int8_t *q = (int8_t *)dst;
    float *ds = (float *)((uint8_t *)dst + n);
    int16_t *bsums = (int16_t *)((uint8_t *)dst + n + (size_t)(n / 32) * 8);
    const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (int b = 0; b < n / 256; b++) {
        const float *xb = x + 256 * b;
        __m256 m = _mm256_setzero_ps();
        for (int j = 0; j < 32; j++)
            m = _mm256_max_ps(m, _mm256_and_ps(_mm256_loadu_ps(xb + 8 * j), absm));
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        h = _mm_max_ss(h, _mm_movehdup_ps(h));
        const float d = _mm_cvtss_f32(h) / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        const __m256 vid = _mm256_set1_ps(id);
        for (int c = 0; c < 8; c++) {
            __m256i qi[4];
            for (int j = 0; j < 4; j++)
                qi[j] = kround(_mm256_mul_ps(_mm256_loadu_ps(xb + 32 * c + 8 * j), vid));
            const int s0 = hsum_i32(_mm256_add_epi32(qi[0], qi[1]));
            const int s1 = hsum_i32(_mm256_add_epi32(qi[2], qi[3]));
            __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(qi[0], qi[1]), _mm256_packs_epi32(qi[2], qi[3]));
            p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_storeu_si256((__m256i *)(q + 256 * b + 32 * c), p);
            bsums[16 * b + 2 * c] = (int16_t)s0;
            bsums[16 * b + 2 * c + 1] = (int16_t)s1;
            ds[2 * (8 * b + c)] = d;
            ds[2 * (8 * b + c) + 1] = d * (float)(s0 + s1);
        }
    }
}

A2 void spk_mm_fill_avx2_kquants(spk_mm_table *t)
{
    t->mm[SPK_DT_Q4_K] = spk_mm_q4k_avx2; /* 8-row tiles, every row: cpu/matmul_x86_q4k.c */
    t->mm[SPK_DT_Q6_K] = spk_mm_q6k_avx2; /* 8-row tiles, every row: cpu/matmul_x86_q6k.c */
    t->mm[SPK_DT_Q5_K] = spk_mm_q5k_avx2; /* the Q4_K tiles: cpu/matmul_x86_q4k.c */
    t->mm[SPK_DT_Q3_K] = spk_mm_q3k_avx2; /* the Q6_K tiles: cpu/matmul_x86_q6k.c */
    t->mm[SPK_DT_Q2_K] = spk_mm_q2k_avx2; /* the Q6_K tiles: cpu/matmul_x86_q6k.c */
    t->q8k_quantize = q8k_quantize_avx2;
}

#else
typedef int spk_matmul_x86_k_unused; /* ISO C forbids an empty translation unit */
#endif
