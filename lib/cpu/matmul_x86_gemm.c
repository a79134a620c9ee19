/*
 * x86-64 AVX2 kernel for Q4_0 weights in 8-row x up to 8-token tiles, the 8 rows' results in the
 * 8 float lanes of one register per token (as llama.cpp's q4_0_8x8 GEMM), so the per-block float
 * work (convert, scale, accumulate) is done once per 8 rows instead of once per row, and no
 * horizontal sum is left at the end. cpu/matmul_x86.c runs it on the rows it covers at every
 * token count (a token's result must not depend on the batch it came in: the tile sums in
 * another order than the per-row kernels) and its per-row kernels on the leftover rows.
 *
 * Layout in registers: the 16 code bytes of block b of the 8 rows are transposed in 4-byte
 * groups (two 4x4 dword transposes in the halves of 256-bit registers), so dword lane j of
 * register k holds codes 4k..4k+3 of row j (low nibbles: values 4k..4k+3, high nibbles: values
 * 16+4k..16+4k+3). Each is multiplied (maddubs, unsigned codes x int8 activations) by the
 * broadcast 4 activation bytes of the same values; the 8 products per block are summed in int16
 * (|sum| <= 8 * 2 * 15 * 127 = 30480 < 2^15) and widened once (madd). Then per block and token:
 *   acc += dw * (da * dot - 8 * s)      (codes are value + 8, s = da * sum(q))
 * Weights in the file's layout pay for the transposes, 12 shuffles per block per 8 rows, shared
 * by the tile's tokens; weights packed at load (tile_p8 below) are read in the registers' order.
 *
 * The other types' tiles live beside this one, each with a batch-1 path that keeps the tile's
 * per-row float steps (integer block dots are exact, so batch 1 may compute them per row and
 * then run the tile's float steps in lanes): Q8_0 (cpu/matmul_x86_q8.c), Q4_K (matmul_x86_q4k.c),
 * Q4_1/Q5_0/Q5_1 (matmul_x86_q5.c); MXFP4's tile is cheap enough at batch 1 as it is
 * (matmul_x86_mxfp4.c).
 */
#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "cpu/matmul_x86_avx2.h"
#include "cpu/quant.h"

/*
 * Rows r0..r0+7 (consecutive) against tokens t0..t0+T-1 (T <= 4): out[(t0 + t) * ld + r0 + j].
 */
I2 void tile_g8(int T, float *out, int ld, const uint8_t *w, size_t wrow, const uint8_t *act, size_t arow, int n,
                int r0, int t0)
{
    const int nb = n / 32;
    const size_t bs = sizeof(spk_block_q4_0), qo = 2;
    const __m256i m4 = _mm256_set1_epi8(15), ones = _mm256_set1_epi16(1);
    __m256 acc[8];
    for (int t = 0; t < T; t++)
        acc[t] = _mm256_setzero_ps();
    const uint8_t *wr[8], *at[8];
    for (int j = 0; j < 8; j++)
        wr[j] = w + (size_t)(r0 + j) * wrow;
    for (int t = 0; t < T; t++)
        at[t] = act + (size_t)(t0 + t) * arow;
    for (int b = 0; b < nb; b++) {
        const size_t o = (size_t)b * bs;
        const uint8_t *p[8];
        for (int j = 0; j < 8; j++)
            p[j] = wr[j] + o;
        /* rows (0,4), (1,5), (2,6), (3,7) in the two halves; then 4x4 dword transposes */
        const __m256i y0 = ld_pair(p[0] + qo, p[4] + qo), y1 = ld_pair(p[1] + qo, p[5] + qo);
        const __m256i y2 = ld_pair(p[2] + qo, p[6] + qo), y3 = ld_pair(p[3] + qo, p[7] + qo);
        const __m256i t0l = _mm256_unpacklo_epi32(y0, y1), t0h = _mm256_unpackhi_epi32(y0, y1);
        const __m256i t1l = _mm256_unpacklo_epi32(y2, y3), t1h = _mm256_unpackhi_epi32(y2, y3);
        const __m256i L0 = _mm256_unpacklo_epi64(t0l, t1l), L1 = _mm256_unpackhi_epi64(t0l, t1l);
        const __m256i L2 = _mm256_unpacklo_epi64(t0h, t1h), L3 = _mm256_unpackhi_epi64(t0h, t1h);
        __m256i W[8];
        W[0] = _mm256_and_si256(L0, m4);
        W[1] = _mm256_and_si256(L1, m4);
        W[2] = _mm256_and_si256(L2, m4);
        W[3] = _mm256_and_si256(L3, m4);
        W[4] = _mm256_and_si256(_mm256_srli_epi16(L0, 4), m4);
        W[5] = _mm256_and_si256(_mm256_srli_epi16(L1, 4), m4);
        W[6] = _mm256_and_si256(_mm256_srli_epi16(L2, 4), m4);
        W[7] = _mm256_and_si256(_mm256_srli_epi16(L3, 4), m4);
        const __m256 dw = ld_f16x8(p, 0);
#pragma GCC unroll 8
        for (int t = 0; t < T; t++) {
            const uint8_t *a = at[t] + 32 * (size_t)b;
            __m256i s = _mm256_maddubs_epi16(W[0], bcast4(a));
#pragma GCC unroll 8
            for (int k = 1; k < 8; k++)
                s = _mm256_add_epi16(s, _mm256_maddubs_epi16(W[k], bcast4(a + 4 * k)));
            const __m256 dot = _mm256_cvtepi32_ps(_mm256_madd_epi16(s, ones));
            float ds[2];
            memcpy(ds, at[t] + n + 8 * (size_t)b, 8);
            const __m256 x = _mm256_fmadd_ps(dot, _mm256_set1_ps(ds[0]), _mm256_set1_ps(-8.0f * ds[1]));
            acc[t] = _mm256_fmadd_ps(dw, x, acc[t]);
        }
    }
    for (int t = 0; t < T; t++)
        _mm256_storeu_ps(out + (size_t)(t0 + t) * (size_t)ld + (size_t)r0, acc[t]);
}

/*
 * Rows [row0, row0 + 8 * g) in tiles of 8 rows, all tokens, cut into chunks of about 64 KiB of
 * weights so a chunk stays in cache while every token group runs over it. Returns the rows done
 * (a multiple of 8); the caller's kernel does the rest.
 */
I2 int mm_g8(float *out, int ld, const void *w, size_t wrow, const void *act, size_t arow, int n,
             int n_tok, int row0, int row1)
{
    const int g = (row1 - row0) / 8;
    if (g == 0)
        return 0;
    size_t cr = (64u << 10) / (wrow ? wrow : 1);
    int ch = cr < 8 ? 1 : (int)(cr / 8); /* tiles per chunk */
    for (int c0 = 0; c0 < g; c0 += ch) {
        const int c1 = g - c0 > ch ? c0 + ch : g;
        for (int t = 0; t < n_tok;) {
            const int left = n_tok - t, T = left >= 8 ? 8 : left >= 4 ? 4 : left;
            for (int i = c0; i < c1; i++) {
                const int r = row0 + 8 * i;
                switch (T) {
                case 1: tile_g8(1, out, ld, w, wrow, act, arow, n, r, t); break;
                case 2: tile_g8(2, out, ld, w, wrow, act, arow, n, r, t); break;
                case 3: tile_g8(3, out, ld, w, wrow, act, arow, n, r, t); break;
                case 4: tile_g8(4, out, ld, w, wrow, act, arow, n, r, t); break;
                default: tile_g8(8, out, ld, w, wrow, act, arow, n, r, t); break;
                }
            }
            t += T;
        }
    }
    return 8 * g;
}

A2 int spk_mm_gemm8_q4_0_avx2(float *out, int ld, const void *w, size_t wrow, const void *act, size_t arow,
                              int n, int n_tok, int row0, int row1)
{
    return mm_g8(out, ld, w, wrow, act, arow, n, n_tok, row0, row1);
}

/*
 * The Q4_0 tile on weights packed at load (SPK_MM_LAYOUT_R8, cpu/repack.c): per 8-row group and
 * block, the 8 f16 scales (one 16-byte load) and the codes already in the order of the registers
 * L0..L3 above (four 32-byte loads): no transposes and no scale gathers, which at batch 1 are not
 * shared by any other token. The arithmetic is tile_g8's, op for op, so the results are the same
 * bit for bit. The group at gp, tokens act[0..T) (arow apart), results o[t * ld + j].
 */
I2 void tile_p8(int T, float *o, size_t ld, const uint8_t *gp, const uint8_t *act, size_t arow, int n)
{
    const int nb = n / 32;
    const __m256i m4 = _mm256_set1_epi8(15), ones = _mm256_set1_epi16(1);
    __m256 acc[8];
    for (int t = 0; t < T; t++)
        acc[t] = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const uint8_t *p = gp + (size_t)b * (8 * sizeof(spk_block_q4_0));
        const __m256i L0 = _mm256_loadu_si256((const __m256i *)(p + 16));
        const __m256i L1 = _mm256_loadu_si256((const __m256i *)(p + 48));
        const __m256i L2 = _mm256_loadu_si256((const __m256i *)(p + 80));
        const __m256i L3 = _mm256_loadu_si256((const __m256i *)(p + 112));
        __m256i W[8];
        W[0] = _mm256_and_si256(L0, m4);
        W[1] = _mm256_and_si256(L1, m4);
        W[2] = _mm256_and_si256(L2, m4);
        W[3] = _mm256_and_si256(L3, m4);
        W[4] = _mm256_and_si256(_mm256_srli_epi16(L0, 4), m4);
        W[5] = _mm256_and_si256(_mm256_srli_epi16(L1, 4), m4);
        W[6] = _mm256_and_si256(_mm256_srli_epi16(L2, 4), m4);
        W[7] = _mm256_and_si256(_mm256_srli_epi16(L3, 4), m4);
        const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
#pragma GCC unroll 8
        for (int t = 0; t < T; t++) {
            const uint8_t *at = act + (size_t)t * arow, *a = at + 32 * (size_t)b;
            __m256i s = _mm256_maddubs_epi16(W[0], bcast4(a));
#pragma GCC unroll 8
            for (int k = 1; k < 8; k++)
                s = _mm256_add_epi16(s, _mm256_maddubs_epi16(W[k], bcast4(a + 4 * k)));
            const __m256 dot = _mm256_cvtepi32_ps(_mm256_madd_epi16(s, ones));
            float ds[2];
            memcpy(ds, at + n + 8 * (size_t)b, 8);
            const __m256 x = _mm256_fmadd_ps(dot, _mm256_set1_ps(ds[0]), _mm256_set1_ps(-8.0f * ds[1]));
            acc[t] = _mm256_fmadd_ps(dw, x, acc[t]);
        }
    }
    for (int t = 0; t < T; t++)
        _mm256_storeu_ps(o + (size_t)t * ld, acc[t]);
}

/* Rows [row0, row1) of the grouped part (row1 <= 8 * floor(n_out / 8)); a group cut by the range
 * (only off the 16-row grid spk_split gives threads) is computed whole into a buffer. */
A2 void spk_mm_r8_q4_0_avx2(float *out, int ld, const void *w, size_t wrow, const void *act, size_t arow, int n,
                            int n_tok, int row0, int row1)
{
    SPK_R8_DRIVE(tile_p8);
}

#else
typedef int spk_matmul_x86_gemm_unused; /* ISO C forbids an empty translation unit */
#endif
