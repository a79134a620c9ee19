/*
 * x86-64 AVX2 kernels for the 32-value nibble block types Q4_0, Q4_1, Q5_0 and Q5_1 (Q4_0 and
 * Q4_1 are Q5_0 and Q5_1 without the fifth bits: codes 0..15, offset 8 instead of 16) whose float
 * arithmetic does not depend on the batch size (as cpu/matmul_x86_q8.c's Q8_0 kernels), so prefill can use a tile
 * that shares work across tokens and decode a kernel that streams rows, and a token still gets
 * the same bits alone or in a batch (test_matmul's test_batch_invariant).
 *
 * Every row r, token t, at every token count: for each block b in order, with c[i] = the 5-bit
 * code (low nibble from qs, 5th bit from qh, 0..31), (da, sa) the activation block's (d, s):
 *     s   = sum_i c[i] * a[i]                           (exact int32, however it is computed)
 *     Q5_0 (Q4_0): acc = fma(dw, fma((float)s, da, -16 (-8) * sa), acc)
 *     Q5_1, Q4_1:   acc = fma(mw, sa, fma(dw, (float)s * da, acc))
 * (acc starts at 0.0f; result = acc), one float lane per row. Only the way s is computed differs:
 *  - tile_q45 (2..8 tokens, 8 rows): the 8 rows' codes transposed in 4-byte groups (dword lane
 *    j of register k = codes 4k..4k+3 of row j; Q4_0/Q4_1 transpose the 16 nibble bytes, then
 *    split them, as llama.cpp's q4_0_8x8 GEMM), one maddubs per group and token (codes 0..31 unsigned, activations signed: a pair sum is
 *    at most 2 * 31 * 128, so four groups add in int16 without overflow: 2 madds per block);
 *  - rows_q45 (1 token, 1..8 rows; also a batch's last token when one is left over): each row's
 *    block dot the per-row way (32-byte maddubs, madd), the 8 rows' int32 partial sums reduced
 *    into one vector (hadd tree), then the same vector float steps. At batch 1 the 8 rows are
 *    taken q = rows / 8 apart (8 sequential streams through the weights).
 * Leftover rows (fewer than 8) take rows_q45 with the missing lanes pointing at a valid row and
 * not stored. Weights packed at load (cpu/repack.c's SPK_MM_LAYOUT_R8) take the packed tile at the
 * end of this file, with the same integer sums and float steps and so the same bits. The AVX-512
 * table inherits all of these.
 */
#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "cpu/matmul_x86_avx2.h"
#include "cpu/quant.h"

enum { K_Q5_0, K_Q5_1, K_Q4_1, K_Q4_0 };

static inline size_t block_bytes(int kind)
{
    return kind == K_Q5_0   ? sizeof(spk_block_q5_0)
           : kind == K_Q5_1 ? sizeof(spk_block_q5_1)
           : kind == K_Q4_1 ? sizeof(spk_block_q4_1)
                            : sizeof(spk_block_q4_0);
}

/* Whether the type has fifth bits (qh, the 4 bytes before qs) and mins m; where its qs start in a
 * block. */
static inline int has_qh(int kind)
{
    return kind == K_Q5_0 || kind == K_Q5_1;
}

static inline int has_m(int kind)
{
    return kind == K_Q4_1 || kind == K_Q5_1;
}

static inline size_t qs_off(int kind)
{
    return kind == K_Q5_0 ? offsetof(spk_block_q5_0, qs)
           : kind == K_Q5_1 ? offsetof(spk_block_q5_1, qs)
           : kind == K_Q4_1 ? offsetof(spk_block_q4_1, qs)
                            : offsetof(spk_block_q4_0, qs);
}

/* Q5_0 and Q4_0 (no m): the code offset (16, 8) */
static inline float code_off(int kind)
{
    return kind == K_Q5_0 ? 16.0f : 8.0f;
}

/* The float steps of every kernel here, lane j for row j: the rows' d (dw) and m (mw: Q4_1 and
 * Q5_1), their exact block dots s, the activation block's (d, s) at ds. */
I2 __m256 fstep(int kind, __m256 acc, __m256 dw, __m256 mw, __m256i s, const uint8_t *ds)
{
    float f[2];
    memcpy(f, ds, 8);
    const __m256 sf = _mm256_cvtepi32_ps(s);
    if (kind == K_Q5_0 || kind == K_Q4_0)
        return _mm256_fmadd_ps(dw, _mm256_fmadd_ps(sf, _mm256_set1_ps(f[0]), _mm256_set1_ps(-code_off(kind) * f[1])),
                               acc);
    acc = _mm256_fmadd_ps(dw, _mm256_mul_ps(sf, _mm256_set1_ps(f[0])), acc);
    return _mm256_fmadd_ps(mw, _mm256_set1_ps(f[1]), acc);
}

/* fstep with the 8 file-layout blocks at p[j] (d first, then Q4_1's and Q5_1's m). */
I2 __m256 fstep_rows(int kind, __m256 acc, const uint8_t *const p[8], __m256i s, const uint8_t *ds)
{
    return fstep(kind, acc, ld_f16x8(p, 0), has_m(kind) ? ld_f16x8(p, 2) : _mm256_setzero_ps(), s, ds);
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

/* The 32 codes (0..31; Q4_0, Q4_1: 0..15) of the block at p in element order (low nibbles are
 * elements 0-15). */
I2 __m256i codes(int kind, const uint8_t *p)
{
    const uint8_t *qs = p + qs_off(kind);
    const __m128i x = _mm_loadu_si128((const __m128i *)qs);
    const __m256i y = _mm256_inserti128_si256(_mm256_castsi128_si256(x), _mm_srli_epi16(x, 4), 1);
    const __m256i lo = _mm256_and_si256(y, _mm256_set1_epi8(15));
    return has_qh(kind) ? _mm256_or_si256(lo, bit4_bytes(qs - 4)) : lo;
}

/* Rows r0..r0+7 (consecutive) against tokens t0..t0+T-1: out[(t0 + t) * ld + r0 + j]. */
I2 void tile_q45(int kind, int T, float *out, int ld, const uint8_t *w, size_t wrow, const uint8_t *act,
                 size_t arow, int n, int r0, int t0)
{
    const size_t bs = block_bytes(kind);
    const int nb = n / 32;
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
        __m256i L[8];
        for (int j = 0; j < 8; j++)
            p[j] = wr[j] + o;
        if (!has_qh(kind)) { /* rows (0,4), (1,5), (2,6), (3,7) in the halves, then 4x4 dword transposes */
            const size_t qo = qs_off(kind);
            __m256i B[4];
            tr4(B, ld_pair(p[0] + qo, p[4] + qo), ld_pair(p[1] + qo, p[5] + qo), ld_pair(p[2] + qo, p[6] + qo),
                ld_pair(p[3] + qo, p[7] + qo));
            nibbles8(L, B);
        } else {
            __m256i x[8];
            for (int j = 0; j < 8; j++)
                x[j] = codes(kind, p[j]);
            tr4(L, _mm256_permute2x128_si256(x[0], x[4], 0x20), _mm256_permute2x128_si256(x[1], x[5], 0x20),
                _mm256_permute2x128_si256(x[2], x[6], 0x20), _mm256_permute2x128_si256(x[3], x[7], 0x20));
            tr4(L + 4, _mm256_permute2x128_si256(x[0], x[4], 0x31), _mm256_permute2x128_si256(x[1], x[5], 0x31),
                _mm256_permute2x128_si256(x[2], x[6], 0x31), _mm256_permute2x128_si256(x[3], x[7], 0x31));
        }
        __m256i s[8];
#pragma GCC unroll 8
        for (int t = 0; t < T; t++)
            s[t] = dot_lanes8(L, at[t] + 32 * (size_t)b);
#pragma GCC unroll 8
        for (int t = 0; t < T; t++)
            acc[t] = fstep_rows(kind, acc[t], p, s[t], at[t] + n + 8 * (size_t)b);
    }
    for (int t = 0; t < T; t++)
        _mm256_storeu_ps(out + (size_t)(t0 + t) * (size_t)ld + (size_t)r0, acc[t]);
}

/* R (1..8) rows r[0..R-1] against token t: out[t * ld + r[j]]. */
I2 void rows_q45(int kind, int R, float *out, int ld, const uint8_t *w, size_t wrow, const uint8_t *act,
                size_t arow, int n, const int r[8], int t)
{
    const size_t bs = block_bytes(kind);
    const int nb = n / 32;
    const __m256i ones = _mm256_set1_epi16(1);
    const uint8_t *wr[8], *at = act + (size_t)t * arow;
    for (int j = 0; j < 8; j++)
        wr[j] = w + (size_t)r[j < R ? j : 0] * wrow;
    __m256 acc = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const size_t o = (size_t)b * bs;
        const __m256i a = _mm256_loadu_si256((const __m256i *)(at + 32 * (size_t)b));
        const uint8_t *p[8];
        __m256i v[8];
        for (int j = 0; j < 8; j++) {
            p[j] = wr[j] + o;
            v[j] = _mm256_madd_epi16(_mm256_maddubs_epi16(codes(kind, p[j]), a), ones);
        }
        acc = fstep_rows(kind, acc, p, hsum8x8(v), at + n + 8 * (size_t)b);
    }
    float f[8];
    _mm256_storeu_ps(f, acc);
    for (int j = 0; j < R; j++)
        out[(size_t)t * (size_t)ld + (size_t)r[j]] = f[j];
}

I2 void mm_q45(int kind, float *out, int ld, const void *w, size_t wrow, const void *act, size_t arow, int n,
              int n_tok, int row0, int row1)
{
    const uint8_t *wb = (const uint8_t *)w, *ab = (const uint8_t *)act;
#define ROWS(R, r_, t_) rows_q45(kind, R, out, ld, wb, wrow, ab, arow, n, r_, t_)
#define TILE(T, r0_, t0_) tile_q45(kind, T, out, ld, wb, wrow, ab, arow, n, r0_, t0_)
    SPK_ROWS_TILE_DRIVE(ROWS, TILE);
#undef ROWS
#undef TILE
}

#define MM(name, kind)                                                                             \
    A2 static void name(float *out, int ld, const void *w, size_t wrow, const void *act,           \
                        size_t arow, int n, int n_tok, int row0, int row1)                         \
    {                                                                                              \
        mm_q45(kind, out, ld, w, wrow, act, arow, n, n_tok, row0, row1);                            \
    }

MM(mm_q5_0_avx2, K_Q5_0)
MM(mm_q5_1_avx2, K_Q5_1)
MM(mm_q4_1_avx2, K_Q4_1)
MM(mm_q4_0_avx2, K_Q4_0)

/*
 * The tile on weights packed at load (SPK_MM_LAYOUT_R8, cpu/repack.c): per 8-row group and block,
 * the 8 rows' f16 d (and Q5_1's and Q4_1's m) in one 16-byte load each, Q5's fifth bits in one register H
 * (bit m of byte 4j + e: the fifth bit of value 4m + e of row j) and the low nibbles in the four
 * code registers of the Q4_0 layout (register k, dword j: qs bytes 4k..4k+3 of row j). Register
 * m of codes (values 4m..4m+3 of each row in its dword) is then a nibble mask and H shifted so
 * bit m lands on bit 4: no transposes, no per-row loads or scale gathers. The integer sums are
 * exact and the float steps fstep's, so the results are tile_q45's and rows_q45's bit for bit.
 */
I2 void r8_codes(int kind, const uint8_t *p, __m256i W[8])
{
    const uint8_t *h = p + (has_m(kind) ? 32 : 16), *c = has_qh(kind) ? h + 32 : h;
    __m256i L[4];
    for (int k = 0; k < 4; k++)
        L[k] = _mm256_loadu_si256((const __m256i *)(c + 32 * k));
    nibbles8(W, L);
    if (!has_qh(kind))
        return;
    const __m256i H = _mm256_loadu_si256((const __m256i *)h), b4 = _mm256_set1_epi8(0x10);
    W[0] = _mm256_or_si256(W[0], _mm256_and_si256(_mm256_slli_epi16(H, 4), b4));
    W[1] = _mm256_or_si256(W[1], _mm256_and_si256(_mm256_slli_epi16(H, 3), b4));
    W[2] = _mm256_or_si256(W[2], _mm256_and_si256(_mm256_slli_epi16(H, 2), b4));
    W[3] = _mm256_or_si256(W[3], _mm256_and_si256(_mm256_slli_epi16(H, 1), b4));
    W[4] = _mm256_or_si256(W[4], _mm256_and_si256(H, b4));
    W[5] = _mm256_or_si256(W[5], _mm256_and_si256(_mm256_srli_epi16(H, 1), b4));
    W[6] = _mm256_or_si256(W[6], _mm256_and_si256(_mm256_srli_epi16(H, 2), b4));
    W[7] = _mm256_or_si256(W[7], _mm256_and_si256(_mm256_srli_epi16(H, 3), b4));
}

/* fstep on a packed group's block at p (d at p, Q4_1's and Q5_1's m at p + 16). */
I2 __m256 fstep_r8(int kind, __m256 acc, const uint8_t *p, __m256i s, const uint8_t *ds)
{
    return fstep(kind, acc, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)),
                 has_m(kind) ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 16))) : _mm256_setzero_ps(), s,
                 ds);
}

I2 void tile_r8(int kind, int T, float *o, size_t ld, const uint8_t *gp, const uint8_t *act, size_t arow, int n)
{
    const size_t gb = 8 * block_bytes(kind);
    const int nb = n / 32;
    __m256 acc[8];
    for (int t = 0; t < T; t++)
        acc[t] = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const uint8_t *p = gp + (size_t)b * gb;
        __m256i W[8], s[8];
        r8_codes(kind, p, W);
#pragma GCC unroll 8
        for (int t = 0; t < T; t++)
            s[t] = dot_lanes8(W, act + (size_t)t * arow + 32 * (size_t)b);
#pragma GCC unroll 8
        for (int t = 0; t < T; t++)
            acc[t] = fstep_r8(kind, acc[t], p, s[t], act + (size_t)t * arow + n + 8 * (size_t)b);
    }
    for (int t = 0; t < T; t++)
        _mm256_storeu_ps(o + (size_t)t * ld, acc[t]);
}

/* One token against the 4 groups gp + i * gs at once (4 sequential streams; SPK_R8_DRIVE_TOK4). */
I2 void tok1_r8x4(int kind, float *o, size_t os, const uint8_t *gp, size_t gs, const uint8_t *act, int n)
{
    const size_t gb = 8 * block_bytes(kind);
    const int nb = n / 32;
    __m256 acc[4];
    for (int i = 0; i < 4; i++)
        acc[i] = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++) {
            const uint8_t *p = gp + (size_t)i * gs + (size_t)b * gb;
            __m256i W[8];
            r8_codes(kind, p, W);
            acc[i] = fstep_r8(kind, acc[i], p, dot_lanes8(W, act + 32 * (size_t)b), act + n + 8 * (size_t)b);
        }
    }
    for (int i = 0; i < 4; i++)
        _mm256_storeu_ps(o + (size_t)i * os, acc[i]);
}

SPK_R8_KERNEL(spk_mm_r8_q5_0_avx2, tile_r8, tok1_r8x4, K_Q5_0)
SPK_R8_KERNEL(spk_mm_r8_q5_1_avx2, tile_r8, tok1_r8x4, K_Q5_1)
SPK_R8_KERNEL(spk_mm_r8_q4_1_avx2, tile_r8, tok1_r8x4, K_Q4_1)
SPK_R8_KERNEL(spk_mm_r8_q4_0_avx2, tile_r8, tok1_r8x4, K_Q4_0)

A2 void spk_mm_fill_avx2_q45(spk_mm_table *t)
{
    t->mm[SPK_DT_Q5_0] = mm_q5_0_avx2;
    t->mm[SPK_DT_Q5_1] = mm_q5_1_avx2;
    t->mm[SPK_DT_Q4_1] = mm_q4_1_avx2;
    t->mm[SPK_DT_Q4_0] = mm_q4_0_avx2;
}

#else
typedef int spk_matmul_x86_q45_unused; /* ISO C forbids an empty translation unit */
#endif
