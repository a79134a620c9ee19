/*
 * x86-64 matmul kernels for float weights (F32, F16, BF16) and the Q8 activation quantizer, at
 * AVX2+FMA+F16C and AVX-512 (F, BW, VL, VNNI), and the AVX2 table. The quantized types' kernels
 * have files of their own (AVX2 only; the AVX-512 level inherits them, cpu/matmul.c): Q4_0, Q4_1,
 * Q5_0, Q5_1 matmul_x86_q45.c; Q8_0 matmul_x86_q8.c; MXFP4 matmul_x86_mxfp4.c; the K-quants
 * matmul_x86_q4k.c (Q4_K, Q5_K) and matmul_x86_q6k.c (Q6_K, Q3_K, Q2_K), with their activation
 * quantizer and table entries in matmul_x86_k.c. Each function carries its own target
 * attribute, so the file builds with default flags; cpu/matmul.c only calls a level's table
 * when the CPU has what the level needs. Results agree with cpu/quant.c up to float summation
 * order.
 *
 * Register tiles: R weight rows x T tokens per pass, so each weight block is loaded and unpacked
 * once per T tokens (batched decode / prefill) and each activation block once per R rows.
 */
#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "cpu/matmul_x86_avx2.h"
#include "cpu/quant.h"

#define TGT5 "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni"
#define A5 __attribute__((target(TGT5)))
#define I5 static inline __attribute__((always_inline, target(TGT5)))

/* ================================ AVX2 ======================================================= */

/*
 * Row order of the drivers below. Tiles take their R rows q apart (q = rows / R), so each tile
 * row walks its own long sequential stream of memory: hardware prefetchers follow a few such
 * streams well, but not R interleaved neighbouring rows. With more than 4 tokens the rows are
 * cut into chunks of about 64 KiB of weights, and all token groups run over a chunk while it
 * is in cache, so weights come from memory once per call, not once per 4 tokens.
 */
static inline int chunk_rows(size_t wrow, int n_tok, int rows)
{
    if (n_tok <= 4)
        return rows > 0 ? rows : 1;
    size_t c = (64u << 10) / (wrow ? wrow : 1);
    return c < 16 ? 16 : (int)c;
}

/* ---- float weights (F32, F16, BF16) against f32 activations ---- */

enum { F_F32, F_F16, F_BF16 };

I2 __m256 w8_avx2(int kind, const uint8_t *row, int i)
{
    if (kind == F_F32)
        return _mm256_loadu_ps((const float *)row + i);
    __m128i h = _mm_loadu_si128((const __m128i *)(row + 2 * (size_t)i));
    if (kind == F_F16)
        return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

static inline float w1(int kind, const uint8_t *row, int i)
{
    if (kind == F_F32) {
        float f;
        memcpy(&f, row + 4 * (size_t)i, 4);
        return f;
    }
    uint16_t h;
    memcpy(&h, row + 2 * (size_t)i, 2);
    return kind == F_F16 ? spk_f16_to_f32(h) : spk_bf16_to_f32(h);
}

I2 void tile_f_avx2(int kind, int R, int T, float *out, int ld, const uint8_t *w, size_t wrow,
                    const uint8_t *act, size_t arow, int n, int r0, int rs, int t0)
{
    __m256 acc[4][4];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++)
            acc[r][t] = _mm256_setzero_ps();
    const uint8_t *wr[4];
    const float *at[4];
    for (int r = 0; r < R; r++)
        wr[r] = w + (size_t)(r0 + r * rs) * wrow;
    for (int t = 0; t < T; t++)
        at[t] = (const float *)(act + (size_t)(t0 + t) * arow);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 wv[4];
        for (int r = 0; r < R; r++)
            wv[r] = w8_avx2(kind, wr[r], i);
        for (int t = 0; t < T; t++) {
            const __m256 a = _mm256_loadu_ps(at[t] + i);
            for (int r = 0; r < R; r++)
                acc[r][t] = _mm256_fmadd_ps(wv[r], a, acc[r][t]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) {
            float s = hsum256(acc[r][t]);
            for (int j = i; j < n; j++)
                s += w1(kind, wr[r], j) * at[t][j];
            out[(size_t)(t0 + t) * (size_t)ld + (size_t)(r0 + r * rs)] = s;
        }
}

I2 void mm_f_avx2(int kind, float *out, int ld, const void *w, size_t wrow, const void *act,
                  size_t arow, int n, int n_tok, int row0, int row1)
{
    const int rows = row1 - row0, ch = chunk_rows(wrow, n_tok, rows);
    for (int c0 = row0; c0 < row1; c0 += ch) {
    const int c1 = row1 - c0 > ch ? c0 + ch : row1;
    for (int t = 0; t < n_tok;) {
        const int tn = n_tok - t >= 4 ? 4 : n_tok - t;
        const int row0 = c0, row1 = c1;
        switch (tn) {
        case 1: {
            const int q = (row1 - row0) / 4;
            for (int i = 0; i < q; i++)
                tile_f_avx2(kind, 4, 1, out, ld, w, wrow, act, arow, n, row0 + i, q, t);
            for (int r = row0 + 4 * q; r < row1; r++)
                tile_f_avx2(kind, 1, 1, out, ld, w, wrow, act, arow, n, r, 0, t);
            break;
        }
        case 2: {
            const int q = (row1 - row0) / 2;
            for (int i = 0; i < q; i++)
                tile_f_avx2(kind, 2, 2, out, ld, w, wrow, act, arow, n, row0 + i, q, t);
            for (int r = row0 + 2 * q; r < row1; r++)
                tile_f_avx2(kind, 1, 2, out, ld, w, wrow, act, arow, n, r, 0, t);
            break;
        }
        case 3: {
            const int q = (row1 - row0) / 2;
            for (int i = 0; i < q; i++)
                tile_f_avx2(kind, 2, 3, out, ld, w, wrow, act, arow, n, row0 + i, q, t);
            for (int r = row0 + 2 * q; r < row1; r++)
                tile_f_avx2(kind, 1, 3, out, ld, w, wrow, act, arow, n, r, 0, t);
            break;
        }
        default: {
            const int q = (row1 - row0) / 2;
            for (int i = 0; i < q; i++)
                tile_f_avx2(kind, 2, 4, out, ld, w, wrow, act, arow, n, row0 + i, q, t);
            for (int r = row0 + 2 * q; r < row1; r++)
                tile_f_avx2(kind, 1, 4, out, ld, w, wrow, act, arow, n, r, 0, t);
            break;
        }
        }
        t += tn;
    }
    }
}

#define MM_F(isa, name, kind)                                                                      \
    static void name(float *out, int ld, const void *w, size_t wrow, const void *act, size_t arow, \
                     int n, int n_tok, int row0, int row1)                                         \
    {                                                                                              \
        mm_f_##isa(kind, out, ld, w, wrow, act, arow, n, n_tok, row0, row1);                        \
    }

A2 MM_F(avx2, mm_f32_avx2, F_F32)
A2 MM_F(avx2, mm_f16_avx2, F_F16)
A2 MM_F(avx2, mm_bf16_avx2, F_BF16)

/* ---- activation quantizer (bit-identical to spk_q8_quantize_row_ref) ---- */

/* roundf(): add 0.5 minus one ulp with the sign of v, truncate. Exact for |v| < 2^23. */
I2 __m256i round_away_avx2(__m256 v)
{
    const __m256 half = _mm256_castsi256_ps(_mm256_set1_epi32(0x3EFFFFFF));
    const __m256 sign = _mm256_and_ps(v, _mm256_castsi256_ps(_mm256_set1_epi32((int)0x80000000u)));
    __m256i q = _mm256_cvttps_epi32(_mm256_add_ps(v, _mm256_or_ps(half, sign)));
    q = _mm256_min_epi32(q, _mm256_set1_epi32(127));
    return _mm256_max_epi32(q, _mm256_set1_epi32(-127));
}

A2 static void q8_quantize_avx2(void *dst, const float *x, int n)
{
    int8_t *q = (int8_t *)dst;
    float *ds = (float *)((uint8_t *)dst + n);
    const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (int b = 0; b < n / 32; b++) {
        const float *xb = x + 32 * b;
        __m256 v[4];
        __m256 m = _mm256_setzero_ps();
        for (int j = 0; j < 4; j++) {
            v[j] = _mm256_loadu_ps(xb + 8 * j);
            m = _mm256_max_ps(m, _mm256_and_ps(v[j], absm));
        }
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        h = _mm_max_ss(h, _mm_movehdup_ps(h));
        const float amax = _mm_cvtss_f32(h);
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        const __m256 vid = _mm256_set1_ps(id);
        __m256i qi[4];
        for (int j = 0; j < 4; j++)
            qi[j] = round_away_avx2(_mm256_mul_ps(v[j], vid));
        __m256i s = _mm256_add_epi32(_mm256_add_epi32(qi[0], qi[1]), _mm256_add_epi32(qi[2], qi[3]));
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
        const int sum = _mm_cvtsi128_si32(s4);
        __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(qi[0], qi[1]), _mm256_packs_epi32(qi[2], qi[3]));
        p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)(q + 32 * b), p);
        const float d16 = _cvtsh_ss(_cvtss_sh(d, 0));
        ds[2 * b] = d16;
        ds[2 * b + 1] = d16 * (float)sum;
    }
}

A2 void spk_mm_fill_avx2(spk_mm_table *t)
{
    memset(t, 0, sizeof *t);
    t->mm[SPK_DT_Q8_0] = spk_mm_q8_0_lanes_avx2; /* cpu/matmul_x86_q8.c: 8-row tile, batch-1 twin */
    spk_mm_fill_avx2_kquants(t); /* cpu/matmul_x86_k.c */
    spk_mm_fill_avx2_q45(t);     /* cpu/matmul_x86_q45.c */
    t->mm[SPK_DT_MXFP4] = spk_mm_mxfp4_avx2; /* 8-row tiles, every row: cpu/matmul_x86_mxfp4.c */
    t->mm[SPK_DT_F32] = mm_f32_avx2;
    t->mm[SPK_DT_F16] = mm_f16_avx2;
    t->mm[SPK_DT_BF16] = mm_bf16_avx2;
    t->q8_quantize = q8_quantize_avx2;
}

/* ================================ AVX-512 ==================================================== */

/* ---- float weights ---- */

I5 __m512 w16_512(int kind, const uint8_t *row, int i, __mmask16 m)
{
    if (kind == F_F32)
        return _mm512_maskz_loadu_ps(m, (const float *)row + i);
    __m256i h = _mm256_maskz_loadu_epi16(m, row + 2 * (size_t)i);
    if (kind == F_F16)
        return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

I5 void tile_f_512(int kind, int R, int T, float *out, int ld, const uint8_t *w, size_t wrow,
                   const uint8_t *act, size_t arow, int n, int r0, int rs, int t0)
{
    __m512 acc[4][4];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++)
            acc[r][t] = _mm512_setzero_ps();
    const uint8_t *wr[4];
    const float *at[4];
    for (int r = 0; r < R; r++)
        wr[r] = w + (size_t)(r0 + r * rs) * wrow;
    for (int t = 0; t < T; t++)
        at[t] = (const float *)(act + (size_t)(t0 + t) * arow);
    for (int i = 0; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1);
        __m512 wv[4];
        for (int r = 0; r < R; r++)
            wv[r] = w16_512(kind, wr[r], i, m);
        for (int t = 0; t < T; t++) {
            const __m512 a = _mm512_maskz_loadu_ps(m, at[t] + i);
            for (int r = 0; r < R; r++)
                acc[r][t] = _mm512_fmadd_ps(wv[r], a, acc[r][t]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++)
            out[(size_t)(t0 + t) * (size_t)ld + (size_t)(r0 + r * rs)] = _mm512_reduce_add_ps(acc[r][t]);
}

I5 void mm_f_512(int kind, float *out, int ld, const void *w, size_t wrow, const void *act,
                  size_t arow, int n, int n_tok, int row0, int row1)
{
    const int rows = row1 - row0, ch = chunk_rows(wrow, n_tok, rows);
    for (int c0 = row0; c0 < row1; c0 += ch) {
    const int c1 = row1 - c0 > ch ? c0 + ch : row1;
    for (int t = 0; t < n_tok;) {
        const int tn = n_tok - t >= 4 ? 4 : n_tok - t;
        const int row0 = c0, row1 = c1;
        switch (tn) {
        case 1: {
            const int q = (row1 - row0) / 4;
            for (int i = 0; i < q; i++)
                tile_f_512(kind, 4, 1, out, ld, w, wrow, act, arow, n, row0 + i, q, t);
            for (int r = row0 + 4 * q; r < row1; r++)
                tile_f_512(kind, 1, 1, out, ld, w, wrow, act, arow, n, r, 0, t);
            break;
        }
        case 2: {
            const int q = (row1 - row0) / 4;
            for (int i = 0; i < q; i++)
                tile_f_512(kind, 4, 2, out, ld, w, wrow, act, arow, n, row0 + i, q, t);
            for (int r = row0 + 4 * q; r < row1; r++)
                tile_f_512(kind, 1, 2, out, ld, w, wrow, act, arow, n, r, 0, t);
            break;
        }
        case 3: {
            const int q = (row1 - row0) / 4;
            for (int i = 0; i < q; i++)
                tile_f_512(kind, 4, 3, out, ld, w, wrow, act, arow, n, row0 + i, q, t);
            for (int r = row0 + 4 * q; r < row1; r++)
                tile_f_512(kind, 1, 3, out, ld, w, wrow, act, arow, n, r, 0, t);
            break;
        }
        default: {
            const int q = (row1 - row0) / 4;
            for (int i = 0; i < q; i++)
                tile_f_512(kind, 4, 4, out, ld, w, wrow, act, arow, n, row0 + i, q, t);
            for (int r = row0 + 4 * q; r < row1; r++)
                tile_f_512(kind, 1, 4, out, ld, w, wrow, act, arow, n, r, 0, t);
            break;
        }
        }
        t += tn;
    }
    }
}

A5 MM_F(512, mm_f32_512, F_F32)
A5 MM_F(512, mm_f16_512, F_F16)
A5 MM_F(512, mm_bf16_512, F_BF16)

/* ---- activation quantizer ---- */

I5 __m512i round_away_512(__m512 v)
{
    const __m512i half = _mm512_set1_epi32(0x3EFFFFFF);
    const __m512i sign = _mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32((int)0x80000000u));
    __m512i q = _mm512_cvttps_epi32(_mm512_add_ps(v, _mm512_castsi512_ps(_mm512_or_si512(half, sign))));
    q = _mm512_min_epi32(q, _mm512_set1_epi32(127));
    return _mm512_max_epi32(q, _mm512_set1_epi32(-127));
}

A5 static void q8_quantize_512(void *dst, const float *x, int n)
{
    int8_t *q = (int8_t *)dst;
    float *ds = (float *)((uint8_t *)dst + n);
    for (int b = 0; b < n / 32; b++) {
        const __m512 v0 = _mm512_loadu_ps(x + 32 * b), v1 = _mm512_loadu_ps(x + 32 * b + 16);
        const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        const __m512 vid = _mm512_set1_ps(id);
        const __m512i q0 = round_away_512(_mm512_mul_ps(v0, vid));
        const __m512i q1 = round_away_512(_mm512_mul_ps(v1, vid));
        _mm_storeu_si128((__m128i *)(q + 32 * b), _mm512_cvtepi32_epi8(q0));
        _mm_storeu_si128((__m128i *)(q + 32 * b + 16), _mm512_cvtepi32_epi8(q1));
        const int sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
        const float d16 = _cvtsh_ss(_cvtss_sh(d, 0));
        ds[2 * b] = d16;
        ds[2 * b + 1] = d16 * (float)sum;
    }
}

A5 void spk_mm_fill_avx512(spk_mm_table *t)
{
    memset(t, 0, sizeof *t);
    t->mm[SPK_DT_F32] = mm_f32_512;
    t->mm[SPK_DT_F16] = mm_f16_512;
    t->mm[SPK_DT_BF16] = mm_bf16_512;
    t->q8_quantize = q8_quantize_512;
}

#else
typedef int spk_matmul_x86_unused; /* ISO C forbids an empty translation unit */
#endif
