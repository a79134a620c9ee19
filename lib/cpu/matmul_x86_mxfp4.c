/*
 * x86-64 AVX2 kernel for MXFP4 weights (gpt-oss's expert type) in 8-row x up to 8-token tiles,
 * the 8 rows' results in the 8 float lanes of one register per token, as the Q4_0 tile of
 * cpu/matmul_x86_q45.c: the per-block float work is shared by 8 rows and no horizontal sum is
 * left at the end. Every row of every call takes this kernel, at every token count, 1 included
 * (a token's result must not depend on the batch it came in); rows past the last multiple of 8
 * run in a tile whose missing rows repeat the last row and are not stored. The lanes never mix,
 * so a row's result does not depend on which tile, thread slice or batch it came in either.
 *
 * Per block: the 16 code bytes of the 8 rows are transposed in 4-byte groups (dword lane j of
 * register k holds codes 4k..4k+3 of row j: low nibbles values 4k..4k+3, high nibbles values
 * 16+4k..16+4k+3), and each nibble is looked up (pshufb) in the doubled E2M1 table plus 12, so
 * the weights are unsigned 0..24 for maddubs against the broadcast int8 activations. Four
 * products are summed in int16 (|sum| <= 4 * 2 * 24 * 127 = 24384 < 2^15), the two halves
 * widened (madd) and added: an exact integer u = sum (w + 12) a per row and token. Then
 *   acc += dw * (da * u - 12 * s)      (s = da * sum(a), dw = 2^(e-128), ggml's half E8M0)
 * in the float lanes, one step per block per token for all 8 rows. Weights packed at load
 * (cpu/repack.c) take spk_mm_r8_mxfp4_avx2 at the end of this file: the same steps without the
 * transposes, so the same results.
 */
#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "cpu/matmul_x86_avx2.h"
#include "cpu/quant.h"

#define BS ((size_t)sizeof(spk_block_mxfp4)) /* 17: e, qs[16] */

/* 8 E8M0 scales (bytes 0-7 of v) as floats 2^(e-128) (e 0, 1: the subnormals 2^-128, 2^-127),
 * bit-identical to spk_e8m0_to_f32_half. */
I2 __m256 e8m0f(__m128i v)
{
    const __m256i e = _mm256_cvtepu8_epi32(v);
    const __m256i norm = _mm256_slli_epi32(_mm256_sub_epi32(e, _mm256_set1_epi32(1)), 23);
    const __m256i sub = _mm256_sllv_epi32(_mm256_set1_epi32(0x00200000), e);
    const __m256i big = _mm256_cmpgt_epi32(e, _mm256_set1_epi32(1));
    return _mm256_castsi256_ps(_mm256_blendv_epi8(sub, norm, big));
}

/* The E8M0 scales p[j][0] of the 8 rows (file layout), as e8m0f. */
I2 __m256 e8m0x8(const uint8_t *const p[8])
{
    __m128i v = _mm_cvtsi32_si128(p[0][0]);
    v = _mm_insert_epi8(v, p[1][0], 1);
    v = _mm_insert_epi8(v, p[2][0], 2);
    v = _mm_insert_epi8(v, p[3][0], 3);
    v = _mm_insert_epi8(v, p[4][0], 4);
    v = _mm_insert_epi8(v, p[5][0], 5);
    v = _mm_insert_epi8(v, p[6][0], 6);
    v = _mm_insert_epi8(v, p[7][0], 7);
    return e8m0f(v);
}

/* The weights of one block of 8 rows from the transposed code registers L[0..3] (dword lane j of
 * L[k]: codes 4k..4k+3 of row j): W[k] values 4k..4k+3, W[4 + k] values 16+4k..16+4k+3, each
 * the doubled E2M1 value plus 12 (0..24). */
I2 void weights8(__m256i W[8], const __m256i L[4])
{
    const __m256i lut = _mm256_setr_epi8(12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0, 12, 13,
                                         14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0);
    nibbles8(W, L);
#pragma GCC unroll 8
    for (int k = 0; k < 8; k++)
        W[k] = _mm256_shuffle_epi8(lut, W[k]);
}

/* One block's float step for one token (at: its activation row, b: the block): acc + dw * (da * u
 * - 12 * s) in the 8 row lanes. */
I2 __m256 step8(__m256 acc, const __m256i W[8], __m256 dw, const uint8_t *at, int b, int n)
{
    const __m256i u = dot_lanes8(W, at + 32 * (size_t)b);
    float ds[2];
    memcpy(ds, at + n + 8 * (size_t)b, 8);
    const __m256 x = _mm256_fmadd_ps(_mm256_cvtepi32_ps(u), _mm256_set1_ps(ds[0]), _mm256_set1_ps(-12.0f * ds[1]));
    return _mm256_fmadd_ps(dw, x, acc);
}

/*
 * Rows r0..r0+7 against tokens t0..t0+T-1 (T <= 8): out[(t0 + t) * ld + r0 + j] for the first
 * nr (1..8) rows; rows from nr on repeat row r0 + nr - 1 and are not stored.
 */
I2 void tile8(int T, float *out, int ld, const uint8_t *w, size_t wrow, const uint8_t *act, size_t arow,
              int n, int r0, int nr, int t0)
{
    const int nb = n / 32;
    __m256 acc[8];
    for (int t = 0; t < T; t++)
        acc[t] = _mm256_setzero_ps();
    const uint8_t *wr[8], *at[8];
    for (int j = 0; j < 8; j++)
        wr[j] = w + (size_t)(r0 + (j < nr ? j : nr - 1)) * wrow;
    for (int t = 0; t < T; t++)
        at[t] = act + (size_t)(t0 + t) * arow;
    for (int b = 0; b < nb; b++) {
        const size_t o = (size_t)b * BS;
        const uint8_t *p[8];
        for (int j = 0; j < 8; j++)
            p[j] = wr[j] + o;
        __m256i L[4], W[8];
        tr4(L, ld_pair(p[0] + 1, p[4] + 1), ld_pair(p[1] + 1, p[5] + 1), ld_pair(p[2] + 1, p[6] + 1),
            ld_pair(p[3] + 1, p[7] + 1));
        weights8(W, L);
        const __m256 dw = e8m0x8(p);
#pragma GCC unroll 8
        for (int t = 0; t < T; t++)
            acc[t] = step8(acc[t], W, dw, at[t], b, n);
    }
    store_lanes(out, ld, acc, T, t0, r0, 1, nr);
}

/*
 * Rows [row0, row1), all tokens, in tiles of 8 rows (the last one partial), cut into chunks of
 * about 64 KiB of weights so a chunk stays in cache while every token group runs over it.
 */
A2 void spk_mm_mxfp4_avx2(float *out, int ld, const void *w, size_t wrow, const void *act, size_t arow, int n,
                          int n_tok, int row0, int row1)
{
    const int g = (row1 - row0 + 7) / 8;
    const size_t cr = (64u << 10) / (wrow ? wrow : 1);
    const int ch = cr < 8 ? 1 : (int)(cr / 8); /* tiles per chunk */
    for (int c0 = 0; c0 < g; c0 += ch) {
        const int c1 = g - c0 > ch ? c0 + ch : g;
        for (int t = 0; t < n_tok;) {
            const int left = n_tok - t, T = left >= 8 ? 8 : left >= 4 ? 4 : left;
            for (int i = c0; i < c1; i++) {
                const int r = row0 + 8 * i, nr = row1 - r < 8 ? row1 - r : 8;
                switch (T) {
                case 1: tile8(1, out, ld, w, wrow, act, arow, n, r, nr, t); break;
                case 2: tile8(2, out, ld, w, wrow, act, arow, n, r, nr, t); break;
                case 3: tile8(3, out, ld, w, wrow, act, arow, n, r, nr, t); break;
                case 4: tile8(4, out, ld, w, wrow, act, arow, n, r, nr, t); break;
                default: tile8(8, out, ld, w, wrow, act, arow, n, r, nr, t); break;
                }
            }
            t += T;
        }
    }
}

/*
 * The tile on weights packed at load (SPK_MM_LAYOUT_R8, cpu/repack.c): per 8-row group and block,
 * the 8 rows' E8M0 scales (one 8-byte load) and the codes already in tile8's registers L[0..3]
 * (four 32-byte loads): no transposes and no scale gathers, the rest tile8's arithmetic op for op,
 * so the results are the same bit for bit. G groups gp + i * gs (results o + i * os) against T
 * tokens from act (results o[t * ld + j]): G = 1 at any T, and G = 4 at one token, so batch 1
 * reads 4 sequential streams (SPK_R8_DRIVE_TOK4).
 */
I2 void tile_r8fp4(int G, int T, float *o, size_t os, size_t ld, const uint8_t *gp, size_t gs, const uint8_t *act,
                   size_t arow, int n)
{
    const int nb = n / 32;
    __m256 acc[8];
    for (int i = 0; i < G * T; i++)
        acc[i] = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
#pragma GCC unroll 4
        for (int i = 0; i < G; i++) {
            const uint8_t *p = gp + (size_t)i * gs + (size_t)b * (8 * BS);
            __m256i L[4], W[8];
            for (int k = 0; k < 4; k++)
                L[k] = _mm256_loadu_si256((const __m256i *)(p + 8 + 32 * k));
            weights8(W, L);
            const __m256 dw = e8m0f(_mm_loadl_epi64((const __m128i *)p));
#pragma GCC unroll 8
            for (int t = 0; t < T; t++)
                acc[i * T + t] = step8(acc[i * T + t], W, dw, act + (size_t)t * arow, b, n);
        }
    }
    for (int i = 0; i < G; i++)
        for (int t = 0; t < T; t++)
            _mm256_storeu_ps(o + (size_t)i * os + (size_t)t * ld, acc[i * T + t]);
}

I2 void tile1_r8fp4(int T, float *o, size_t ld, const uint8_t *gp, const uint8_t *act, size_t arow, int n)
{
    tile_r8fp4(1, T, o, 0, ld, gp, 0, act, arow, n);
}

I2 void tok1_r8fp4x4(float *o, size_t os, const uint8_t *gp, size_t gs, const uint8_t *act, int n)
{
    tile_r8fp4(4, 1, o, os, 0, gp, gs, act, 0, n);
}

A2 void spk_mm_r8_mxfp4_avx2(float *out, int ld, const void *w, size_t wrow, const void *act, size_t arow, int n,
                             int n_tok, int row0, int row1)
{
    SPK_R8_DRIVE_TOK4(spk_mm_r8_mxfp4_avx2, tok1_r8fp4x4, tile1_r8fp4);
}

#else
typedef int spk_matmul_x86_mxfp4_unused; /* ISO C forbids an empty translation unit */
#endif
