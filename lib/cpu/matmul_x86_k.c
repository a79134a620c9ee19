/*
 * x86-64 matmul kernel for Q2_K weights (Q3_K, Q4_K, Q5_K and Q6_K have 8-row tiles of their own
 * in cpu/matmul_x86_q4k.c and cpu/matmul_x86_q6k.c) against the K-quant
 * section of the activation rows (cpu/quant.h: one scale per 256 values, int16 sums per 16),
 * AVX2+FMA+F16C, compiled with target attributes like cpu/matmul_x86.c; the AVX-512 table
 * inherits them. Also the AVX2 quantizer of that section.
 *
 * Arithmetic, as llama.cpp's Q8_K dot products: per super-block and (row, token) the 8 chunks of
 * 32 values are dotted in integers (maddubs of the unsigned weight codes with the int8
 * activations, then madd with the sub-block scales), summed as int32 lanes; the mins meet the
 * activations' sums per 16 (one madd); two float FMAs per super-block end it.
 * Partial sums stay far from int32 limits.
 *
 * Register tiles: R weight rows x T tokens per pass; each super-block's scales are decoded and
 * each chunk of codes unpacked once per tile, each activation chunk loaded once per R rows.
 */
#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "cpu/matmul_x86_avx2.h"
#include "cpu/quant.h"

/* Byte masks for vpshufb. k16[k]: low half int16 lane 2k, high half lane 2k+1 (per-16 scales: a
 * chunk of 32 values spans two, values 0-15 in the low half of maddubs' int16 pairs, 16-31 in
 * the high). */
static const uint8_t k_mask16[4][32] __attribute__((aligned(32))) = {
#define M16(k) {4*k,4*k+1,4*k,4*k+1,4*k,4*k+1,4*k,4*k+1,4*k,4*k+1,4*k,4*k+1,4*k,4*k+1,4*k,4*k+1, \
                4*k+2,4*k+3,4*k+2,4*k+3,4*k+2,4*k+3,4*k+2,4*k+3,4*k+2,4*k+3,4*k+2,4*k+3,4*k+2,4*k+3,4*k+2,4*k+3}
    M16(0), M16(1), M16(2), M16(3)
#undef M16
};

/* One Q2_K super-block of one row, decoded for the chunk loop. */
typedef struct {
    const spk_block_q2_K *x;
    float d, dm;    /* scale of the codes' dot; of the mins */
    __m256i s0, s1; /* scale sources for vpshufb (the halves of the 16 per-16 scales) */
    __m256i coef;   /* the mins, int16 per 16 values: madd with the activation sums */
} kblk;

I2 void kprep(kblk *k, const uint8_t *x)
{
    const spk_block_q2_K *q = (const void *)x;
    const __m128i sc = _mm_loadu_si128((const __m128i *)q->scales);
    const __m256i s = _mm256_cvtepu8_epi16(_mm_and_si128(sc, _mm_set1_epi8(15)));
    k->x = q;
    k->s0 = _mm256_permute2x128_si256(s, s, 0x00);
    k->s1 = _mm256_permute2x128_si256(s, s, 0x11);
    k->coef = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sc, 4), _mm_set1_epi8(15)));
    k->d = _cvtsh_ss(q->d);
    k->dm = _cvtsh_ss(q->dmin);
}

/* The codes (0..3) of chunk c (values 32c..32c+31 of the super-block). */
I2 __m256i kcodes(const kblk *k, int c)
{
    const __m256i qv = _mm256_loadu_si256((const __m256i *)(k->x->qs + 32 * (c / 4)));
    return _mm256_and_si256(_mm256_srli_epi16(qv, 2 * (c % 4)), _mm256_set1_epi8(3));
}

/* int16 scales of chunk c, laid out as maddubs' pair sums (low half: values 0-15). */
I2 __m256i kscales(const kblk *k, int c)
{
    return _mm256_shuffle_epi8(c < 4 ? k->s0 : k->s1, _mm256_load_si256((const __m256i *)k_mask16[c % 4]));
}

/* An empty asm that claims to change v: keeps the chunk sums a running sum in one register each
 * (GCC otherwise reassociates the 8 integer adds into a tree and spills the products). */
#define KEEP(v) __asm__("" : "+x"(v))

I2 void tile_k(int R, int T, float *out, int ld, const uint8_t *w, size_t wrow, const uint8_t *act, size_t arow,
               int n, int r0, int rs, int t0)
{
    const int nb = n / SPK_QK_K;
    __m256 acc[4][8];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++)
            acc[r][t] = _mm256_setzero_ps();
    const uint8_t *wr[4], *at[8];
    for (int r = 0; r < R; r++)
        wr[r] = w + (size_t)(r0 + r * rs) * wrow;
    for (int t = 0; t < T; t++)
        at[t] = act + (size_t)(t0 + t) * arow;
    const size_t ds_off = (size_t)n, bs_off = (size_t)n + (size_t)(n / 32) * 8;
    for (int b = 0; b < nb; b++) {
        kblk k[4];
        for (int r = 0; r < R; r++)
            kprep(&k[r], wr[r] + (size_t)b * sizeof(spk_block_q2_K));
        __m256i sumi[4][8];
        for (int r = 0; r < R; r++)
            for (int t = 0; t < T; t++)
                sumi[r][t] = _mm256_setzero_si256();
#pragma GCC unroll 8
        for (int c = 0; c < 8; c++) {
            __m256i q[4], s[4];
            for (int r = 0; r < R; r++) {
                q[r] = kcodes(&k[r], c);
                s[r] = kscales(&k[r], c);
            }
            for (int t = 0; t < T; t++) {
                const __m256i a = _mm256_loadu_si256((const __m256i *)(at[t] + 256 * (size_t)b + 32 * c));
                for (int r = 0; r < R; r++) {
                    sumi[r][t] = _mm256_add_epi32(sumi[r][t],
                                                  _mm256_madd_epi16(_mm256_maddubs_epi16(q[r], a), s[r]));
                    KEEP(sumi[r][t]);
                }
            }
        }
        for (int t = 0; t < T; t++) {
            const __m256i bsum = _mm256_loadu_si256((const __m256i *)(at[t] + bs_off + 32 * (size_t)b));
            float da;
            memcpy(&da, at[t] + ds_off + 64 * (size_t)b, 4);
            for (int r = 0; r < R; r++) {
                const __m256i corr = _mm256_madd_epi16(k[r].coef, bsum);
                acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi[r][t]), _mm256_set1_ps(k[r].d * da), acc[r][t]);
                acc[r][t] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(corr), _mm256_set1_ps(k[r].dm * da), acc[r][t]);
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++)
            out[(size_t)(t0 + t) * (size_t)ld + (size_t)(r0 + r * rs)] = hsum256(acc[r][t]);
}

/* Rows cut into chunks of about 64 KiB of weights when there are several token groups, so
 * weights come from memory once per call (as cpu/matmul_x86.c). */
static inline int kchunk_rows(size_t wrow, int n_tok, int rows)
{
    if (n_tok <= 4)
        return rows > 0 ? rows : 1;
    size_t c = (64u << 10) / (wrow ? wrow : 1);
    return c < 16 ? 16 : (int)c;
}

/* Rows [row0, row1) against tokens [t, t + T): tiles of RG rows taken q = rows / RG apart (each
 * tile row its own sequential stream), then the leftover rows one at a time. */
#define ROWS(RG, T)                                                                                \
    do {                                                                                           \
        const int q_ = (c1 - c0) / (RG);                                                           \
        for (int i_ = 0; i_ < q_; i_++)                                                            \
            tile_k(RG, T, out, ld, w, wrow, act, arow, n, c0 + i_, q_, t);                         \
        for (int r_ = c0 + (RG) * q_; r_ < c1; r_++)                                               \
            tile_k(1, T, out, ld, w, wrow, act, arow, n, r_, 0, t);                                \
    } while (0)

A2 static void mm_q2k_avx2(float *out, int ld, const void *w, size_t wrow, const void *act, size_t arow, int n,
                           int n_tok, int row0, int row1)
{
    const int ch = kchunk_rows(wrow, n_tok, row1 - row0);
    for (int c0 = row0; c0 < row1; c0 += ch) {
        const int c1 = row1 - c0 > ch ? c0 + ch : row1;
        for (int t = 0; t < n_tok;) {
            const int left = n_tok - t;
            /* 1 row x 8 tokens measured fastest for prefill (1.2x 2 x 4, 1.4x 2 x 6, which
             * spill); batch 1 takes 4 rows, a stream each */
            switch (left >= 8 ? 8 : left >= 4 ? 4 : left) {
            case 1: ROWS(4, 1); t += 1; break;
            case 2: ROWS(4, 2); t += 2; break;
            case 3: ROWS(2, 3); t += 3; break;
            case 4: ROWS(2, 4); t += 4; break;
            default: ROWS(1, 8); t += 8; break;
            }
        }
    }
}

/* ---- the K-quant section quantizer (bit-identical to spk_q8k_quantize_row_ref) ---- */

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
    t->mm[SPK_DT_Q2_K] = mm_q2k_avx2;
    t->q8k_quantize = q8k_quantize_avx2;
}

#else
typedef int spk_matmul_x86_k_unused; /* ISO C forbids an empty translation unit */
#endif
