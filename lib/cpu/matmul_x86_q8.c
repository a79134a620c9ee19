/*
 * x86-64 AVX2 kernels for Q8_0 weights whose float arithmetic does not depend on the batch size,
 * so prefill can use a tile that shares work across tokens and decode a kernel that streams rows,
 * and a token still gets the same bits alone or in a batch (test_matmul's test_batch_invariant).
 *
 * Every row r, token t, at every token count: for each block b in order,
 *     s   = sum_i w[i] * a[i]                 (exact int32, however it is computed)
 *     acc = fma(dw, (float)s * da, acc)       (acc starts at 0.0f; result = acc)
 * one float lane per row. Only the way s is computed differs between the kernels:
 *  - tile_q8t (2..8 tokens, 8 rows): the 32 code bytes of a block of 8 rows are transposed in
 *    4-byte groups (dword lane j of register k = bytes 4k..4k+3 of row j), so one register holds
 *    the 8 rows' products of 4 values (maddubs |w| x sign(a, w), widened by madd: a pair sum
 *    reaches 2 * 128 * 127, so no int16 sums of pairs), the transposes shared by the tile's
 *    tokens and the 8 rows' float steps done in one vector op each;
 *  - rows_q8 (1 token, 1..8 rows; also a batch's last token when one is left over): each row's
 *    block dot the per-row way (one 32-byte maddubs, madd), the 8 rows' int32 partial sums
 *    reduced into one vector (hadd tree), then the same vector float steps. At batch 1 the 8
 *    rows are taken q = rows / 8 apart (8 long sequential streams, as cpu/matmul_x86.c's
 *    per-row kernels take 4), which the lane-per-row arithmetic allows; measured from memory,
 *    8 consecutive rows were 3x slower and 4 streams of row pairs 2x (BENCHMARKS.md 9f).
 * Leftover rows (fewer than 8) take rows_q8 with the missing lanes pointing at a valid row and
 * not stored.
 *
 * Weights packed at load (cpu/repack.c) take spk_mm_r8_q8_0_avx2 at the end of this file, with
 * the same arithmetic and so the same results.
 *
 * This replaces cpu/matmul_x86.c's AVX2 Q8_0 per-row kernels (8 float lanes per row, summed
 * horizontally at the end), so the results differ from those in the last bits. The AVX-512
 * table inherits these and the packed kernel (its own 512-bit Q8_0 kernel is gone, cpu/matmul.c).
 */
#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "cpu/matmul_x86_avx2.h"
#include "cpu/quant.h"

enum { BS = sizeof(spk_block_q8_0) };

/* The float step shared by both kernels: acc + dw * (s * da), lane per row. */
I2 __m256 fstep(__m256 acc, __m256 dw, __m256i s, const uint8_t *ds)
{
    float da;
    memcpy(&da, ds, 4);
    return _mm256_fmadd_ps(dw, _mm256_mul_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(da)), acc);
}

/* Rows r0..r0+7 (consecutive) against tokens t0..t0+T-1: out[(t0 + t) * ld + r0 + j]. */
I2 void tile_q8t(int T, float *out, int ld, const uint8_t *w, size_t wrow, const uint8_t *act, size_t arow,
                 int n, int r0, int t0)
{
    const int nb = n / 32;
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[8];
    for (int t = 0; t < T; t++)
        acc[t] = _mm256_setzero_ps();
    const uint8_t *wr[8], *at[8];
    for (int j = 0; j < 8; j++)
        wr[j] = w + (size_t)(r0 + j) * wrow;
    for (int t = 0; t < T; t++)
        at[t] = act + (size_t)(t0 + t) * arow;
    for (int b = 0; b < nb; b++) {
        const size_t o = (size_t)b * BS;
        const uint8_t *p[8];
        __m256i x[8], L[8], A[8];
        for (int j = 0; j < 8; j++) {
            p[j] = wr[j] + o;
            x[j] = _mm256_loadu_si256((const __m256i *)(p[j] + 2));
        }
        tr4(L, _mm256_permute2x128_si256(x[0], x[4], 0x20), _mm256_permute2x128_si256(x[1], x[5], 0x20),
            _mm256_permute2x128_si256(x[2], x[6], 0x20), _mm256_permute2x128_si256(x[3], x[7], 0x20));
        tr4(L + 4, _mm256_permute2x128_si256(x[0], x[4], 0x31), _mm256_permute2x128_si256(x[1], x[5], 0x31),
            _mm256_permute2x128_si256(x[2], x[6], 0x31), _mm256_permute2x128_si256(x[3], x[7], 0x31));
        for (int k = 0; k < 8; k++)
            A[k] = _mm256_sign_epi8(L[k], L[k]);
        const __m256 dw = ld_f16x8(p, 0);
        /* group k outer, tokens inner: the tile's 8 int32 sums and one group's codes in registers */
        __m256i s[8];
#pragma GCC unroll 8
        for (int t = 0; t < T; t++) {
            const __m256i a = _mm256_sign_epi8(bcast4(at[t] + 32 * (size_t)b), L[0]);
            s[t] = _mm256_madd_epi16(_mm256_maddubs_epi16(A[0], a), ones);
        }
#pragma GCC unroll 8
        for (int k = 1; k < 8; k++)
#pragma GCC unroll 8
            for (int t = 0; t < T; t++) {
                const __m256i a = _mm256_sign_epi8(bcast4(at[t] + 32 * (size_t)b + 4 * k), L[k]);
                s[t] = _mm256_add_epi32(s[t], _mm256_madd_epi16(_mm256_maddubs_epi16(A[k], a), ones));
            }
#pragma GCC unroll 8
        for (int t = 0; t < T; t++)
            acc[t] = fstep(acc[t], dw, s[t], at[t] + n + 8 * (size_t)b);
    }
    for (int t = 0; t < T; t++)
        _mm256_storeu_ps(out + (size_t)(t0 + t) * (size_t)ld + (size_t)r0, acc[t]);
}

/* One block of one row against one token's block: 8 int32 partial sums. */
I2 __m256i dot8(const uint8_t *qs, __m256i a)
{
    const __m256i w = _mm256_loadu_si256((const __m256i *)qs);
    return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w)),
                             _mm256_set1_epi16(1));
}

/* R (1..8) rows r[0..R-1] against token t: out[t * ld + r[j]]. */
I2 void rows_q8(int R, float *out, int ld, const uint8_t *w, size_t wrow, const uint8_t *act, size_t arow,
                int n, const int r[8], int t)
{
    const int nb = n / 32;
    const uint8_t *wr[8], *at = act + (size_t)t * arow;
    for (int j = 0; j < 8; j++)
        wr[j] = w + (size_t)r[j < R ? j : 0] * wrow;
    __m256 acc = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const size_t o = (size_t)b * BS;
        const __m256i a = _mm256_loadu_si256((const __m256i *)(at + 32 * (size_t)b));
        const uint8_t *p[8];
        __m256i v[8];
        for (int j = 0; j < 8; j++) {
            p[j] = wr[j] + o;
            v[j] = dot8(p[j] + 2, a);
        }
        acc = fstep(acc, ld_f16x8(p, 0), hsum8x8(v), at + n + 8 * (size_t)b);
    }
    float f[8];
    _mm256_storeu_ps(f, acc);
    for (int j = 0; j < R; j++)
        out[(size_t)t * (size_t)ld + (size_t)r[j]] = f[j];
}

A2 void spk_mm_q8_0_lanes_avx2(float *out, int ld, const void *w, size_t wrow, const void *act, size_t arow,
                               int n, int n_tok, int row0, int row1)
{
    const uint8_t *wb = (const uint8_t *)w, *ab = (const uint8_t *)act;
#define ROWS(R, r_, t_) rows_q8(R, out, ld, wb, wrow, ab, arow, n, r_, t_)
#define TILE(T, r0_, t0_) tile_q8t(T, out, ld, wb, wrow, ab, arow, n, r0_, t0_)
    SPK_ROWS_TILE_DRIVE(ROWS, TILE);
#undef ROWS
#undef TILE
}

/*
 * The tile on weights packed at load (SPK_MM_LAYOUT_R8, cpu/repack.c): per 8-row group and block,
 * the 8 f16 scales (one 16-byte load) and the codes already in tile_q8t's registers L[0..7]
 * (eight 32-byte loads), so no transposes and no scale gathers, at every token count (batch 1
 * takes tok1_r8q8x4 below where it can). The integer sums are exact and the float steps
 * tile_q8t's and rows_q8's, so the results are theirs bit for bit. Group k outer, tokens inner:
 * one group's codes and the T int32 sums stay in registers; the accumulators are touched once
 * per block.
 */
I2 void tile_r8q8(int T, float *o, size_t ld, const uint8_t *gp, const uint8_t *act, size_t arow, int n)
{
    const int nb = n / 32;
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[8];
    for (int t = 0; t < T; t++)
        acc[t] = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const uint8_t *p = gp + (size_t)b * (8 * BS), *a = act + 32 * (size_t)b;
        __m256i s[8];
#pragma GCC unroll 8
        for (int k = 0; k < 8; k++) {
            const __m256i L = _mm256_loadu_si256((const __m256i *)(p + 16 + 32 * k)), A = _mm256_sign_epi8(L, L);
#pragma GCC unroll 8
            for (int t = 0; t < T; t++) {
                const __m256i x = _mm256_sign_epi8(bcast4(a + (size_t)t * arow + 4 * k), L);
                const __m256i d = _mm256_madd_epi16(_mm256_maddubs_epi16(A, x), ones);
                s[t] = k ? _mm256_add_epi32(s[t], d) : d;
            }
        }
        const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
#pragma GCC unroll 8
        for (int t = 0; t < T; t++)
            acc[t] = fstep(acc[t], dw, s[t], act + (size_t)t * arow + n + 8 * (size_t)b);
    }
    for (int t = 0; t < T; t++)
        _mm256_storeu_ps(o + (size_t)t * ld, acc[t]);
}

/* One token against the 4 groups gp + i * gs at once (tile_r8q8's arithmetic per group), group
 * i's results to o[i * os + j] (SPK_R8_DRIVE_TOK4's batch-1 path; BENCHMARKS.md 9j). */
I2 void tok1_r8q8x4(float *o, size_t os, const uint8_t *gp, size_t gs, const uint8_t *act, int n)
{
    const int nb = n / 32;
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[4];
    for (int i = 0; i < 4; i++)
        acc[i] = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const uint8_t *a = act + 32 * (size_t)b;
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++) {
            const uint8_t *p = gp + (size_t)i * gs + (size_t)b * (8 * BS);
            __m256i s = _mm256_setzero_si256();
#pragma GCC unroll 8
            for (int k = 0; k < 8; k++) {
                const __m256i L = _mm256_loadu_si256((const __m256i *)(p + 16 + 32 * k));
                const __m256i x = _mm256_sign_epi8(bcast4(a + 4 * k), L);
                const __m256i d = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(L, L), x), ones);
                s = k ? _mm256_add_epi32(s, d) : d;
            }
            acc[i] = fstep(acc[i], _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)), s, act + n + 8 * (size_t)b);
        }
    }
    for (int i = 0; i < 4; i++)
        _mm256_storeu_ps(o + (size_t)i * os, acc[i]);
}

A2 void spk_mm_r8_q8_0_avx2(float *out, int ld, const void *w, size_t wrow, const void *act, size_t arow, int n,
                            int n_tok, int row0, int row1)
{
    SPK_R8_DRIVE_TOK4(spk_mm_r8_q8_0_avx2, tok1_r8q8x4, tile_r8q8);
}

#else
typedef int spk_matmul_x86_q8_unused; /* ISO C forbids an empty translation unit */
#endif
