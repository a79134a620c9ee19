/*
 * What the x86-64 AVX2 kernel files share (cpu/matmul_x86*.c): the target attributes that let
 * one binary carry AVX2 code chosen at run time, and the small register helpers the 8-row tiles
 * use. Include only inside `#if defined(__x86_64__) || defined(__i386__)`.
 */
#ifndef SPK_CPU_MATMUL_X86_AVX2_H
#define SPK_CPU_MATMUL_X86_AVX2_H

#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define TGT2 "avx2,fma,f16c"
#define A2 __attribute__((target(TGT2)))
#define I2 static inline __attribute__((always_inline, target(TGT2)))

/* The sum of v's 8 lanes. */
I2 float hsum256(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Lane j of the result: the sum of v[j]'s 8 lanes (exact int32 sums, the rows' block dots). */
I2 __m256i hsum8x8(const __m256i v[8])
{
    const __m256i h01 = _mm256_hadd_epi32(v[0], v[1]), h23 = _mm256_hadd_epi32(v[2], v[3]);
    const __m256i h45 = _mm256_hadd_epi32(v[4], v[5]), h67 = _mm256_hadd_epi32(v[6], v[7]);
    const __m256i h0 = _mm256_hadd_epi32(h01, h23), h1 = _mm256_hadd_epi32(h45, h67);
    /* h0: [rows 0-3 of the low halves | rows 0-3 of the high halves], h1 alike for rows 4-7 */
    return _mm256_add_epi32(_mm256_permute2x128_si256(h0, h1, 0x20), _mm256_permute2x128_si256(h0, h1, 0x31));
}

/* 16 bytes of row j (lower half) and row j + 4 (upper half). */
I2 __m256i ld_pair(const uint8_t *lo, const uint8_t *hi)
{
    return _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)lo)),
                                   _mm_loadu_si128((const __m128i *)hi), 1);
}

/* 4 bytes at p in every dword lane (vpbroadcastd from memory). */
I2 __m256i bcast4(const uint8_t *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}

/* 4x4 dword transposes in both 128-bit halves. */
I2 void tr4(__m256i z[4], __m256i y0, __m256i y1, __m256i y2, __m256i y3)
{
    const __m256i t0l = _mm256_unpacklo_epi32(y0, y1), t0h = _mm256_unpackhi_epi32(y0, y1);
    const __m256i t1l = _mm256_unpacklo_epi32(y2, y3), t1h = _mm256_unpackhi_epi32(y2, y3);
    z[0] = _mm256_unpacklo_epi64(t0l, t1l);
    z[1] = _mm256_unpackhi_epi64(t0l, t1l);
    z[2] = _mm256_unpacklo_epi64(t0h, t1h);
    z[3] = _mm256_unpackhi_epi64(t0h, t1h);
}

/* The codes of one block of 8 rows from the transposed code bytes L[0..3] (dword lane j of L[k]:
 * bytes 4k..4k+3 of row j, a nibble each for two values): W[k] the low nibbles (values 4k..4k+3),
 * W[4 + k] the high nibbles (values 16+4k..16+4k+3), 0..15. */
I2 void nibbles8(__m256i W[8], const __m256i L[4])
{
    const __m256i m4 = _mm256_set1_epi8(15);
#pragma GCC unroll 4
    for (int k = 0; k < 4; k++) {
        W[k] = _mm256_and_si256(L[k], m4);
        W[4 + k] = _mm256_and_si256(_mm256_srli_epi16(L[k], 4), m4);
    }
}

/* One block's exact dot of 8 rows' unsigned codes W (register k, dword j: values 4k..4k+3 of row
 * j, as nibbles8 gives them) with the 32 int8 activations at a, row j in int32 lane j: two halves
 * of 4 maddubs summed in int16 (codes up to 31: |sum| <= 4 * 2 * 31 * 128 = 31744), then madd. */
I2 __m256i dot_lanes8(const __m256i W[8], const uint8_t *a)
{
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i h0 = _mm256_maddubs_epi16(W[0], bcast4(a)), h1 = _mm256_maddubs_epi16(W[4], bcast4(a + 16));
#pragma GCC unroll 4
    for (int k = 1; k < 4; k++) {
        h0 = _mm256_add_epi16(h0, _mm256_maddubs_epi16(W[k], bcast4(a + 4 * k)));
        h1 = _mm256_add_epi16(h1, _mm256_maddubs_epi16(W[4 + k], bcast4(a + 16 + 4 * k)));
    }
    return _mm256_add_epi32(_mm256_madd_epi16(h0, ones), _mm256_madd_epi16(h1, ones));
}

static inline int spk_ld_u16(const uint8_t *p)
{
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

/* The K-quant section (cpu/quant.h) of a token's activation row at `at` (n values), super-block b:
 * its scale d, and the 8 lanes of sum_i madd(c[i], sums per 16 2i and 2i + 1 broadcast): with
 * c[i] holding row j's coefficients of those two sums in int16 lanes 2j and 2j + 1, lane j is row
 * j's mins' (or code offsets') sum for the super-block (the packed K-quant tiles). */
static inline float spk_kq_d(const uint8_t *at, int n, int b)
{
    float d;
    memcpy(&d, at + (size_t)n + 64 * (size_t)b, 4);
    return d;
}

I2 __m256i kq_bsums8(const __m256i c[8], const uint8_t *at, int n, int b)
{
    const uint8_t *bs = at + (size_t)n + (size_t)(n / 32) * 8 + 32 * (size_t)b;
    __m256i s = _mm256_setzero_si256();
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++)
        s = _mm256_add_epi32(s, _mm256_madd_epi16(c[i], bcast4(bs + 4 * i)));
    return s;
}

/* 8 f16 values, one per row, from p[j] + off into a float vector (lane j): the 8 rows' block
 * scales of a tile. */
I2 __m256 ld_f16x8(const uint8_t *const p[8], size_t off)
{
    __m128i v = _mm_cvtsi32_si128(spk_ld_u16(p[0] + off));
    v = _mm_insert_epi16(v, spk_ld_u16(p[1] + off), 1);
    v = _mm_insert_epi16(v, spk_ld_u16(p[2] + off), 2);
    v = _mm_insert_epi16(v, spk_ld_u16(p[3] + off), 3);
    v = _mm_insert_epi16(v, spk_ld_u16(p[4] + off), 4);
    v = _mm_insert_epi16(v, spk_ld_u16(p[5] + off), 5);
    v = _mm_insert_epi16(v, spk_ld_u16(p[6] + off), 6);
    v = _mm_insert_epi16(v, spk_ld_u16(p[7] + off), 7);
    return _mm256_cvtph_ps(v);
}

/* A tile's results: acc[t] holds token t0 + t of its nr (1..8) rows r0 + j * rs in lane j; they
 * go to out[(t0 + t) * ld + r0 + j * rs]. */
I2 void store_lanes(float *out, int ld, const __m256 *acc, int T, int t0, int r0, int rs, int nr)
{
    if (rs != 1) {
        for (int t = 0; t < T; t++) {
            float v[8];
            _mm256_storeu_ps(v, acc[t]);
            for (int j = 0; j < nr; j++)
                out[(size_t)(t0 + t) * (size_t)ld + (size_t)(r0 + j * rs)] = v[j];
        }
    } else if (nr == 8) {
        for (int t = 0; t < T; t++)
            _mm256_storeu_ps(out + (size_t)(t0 + t) * (size_t)ld + (size_t)r0, acc[t]);
    } else {
        const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(nr), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        for (int t = 0; t < T; t++)
            _mm256_maskstore_ps(out + (size_t)(t0 + t) * (size_t)ld + (size_t)r0, mask, acc[t]);
    }
}

/*
 * The driver of a lane tile `tile8(T, out, ld, w, wrow, act, arow, n, r0, rs, nr, t0)` (nr rows
 * r0 + j * rs against tokens t0..t0+T-1, T a constant 1, 2, 3, 4 or 8), as the body of an
 * spk_mm_kernel whose `spread` says how rows share tiles: rows [row0, row1), all tokens, cut
 * into chunks of about 64 KiB of weights when there are several token groups (a chunk stays in
 * cache while every group runs over it); in a chunk [c0, c1), g = (c1 - c0) / 8 tiles of 8
 * rows - with spread, rows g apart (8 sequential streams through weights read from memory),
 * else consecutive rows - then the leftover rows as one partial tile. Which rows share a tile
 * changes no result: the lanes never mix.
 */
#define SPK_LANES_TILES_(tile8, T)                                                                 \
    do {                                                                                           \
        const int g_ = (c1 - c0) / 8, left_ = (c1 - c0) - 8 * g_;                                  \
        for (int i_ = 0; i_ < g_; i_++) {                                                          \
            if (spread)                                                                            \
                tile8(T, out, ld, w, wrow, act, arow, n, c0 + i_, g_ > 1 ? g_ : 1, 8, t);           \
            else                                                                                   \
                tile8(T, out, ld, w, wrow, act, arow, n, c0 + 8 * i_, 1, 8, t);                    \
        }                                                                                          \
        if (left_ > 0)                                                                             \
            tile8(T, out, ld, w, wrow, act, arow, n, c0 + 8 * g_, 1, left_, t);                    \
    } while (0)
#define SPK_LANES_DRIVE(tile8, spread)                                                             \
    do {                                                                                           \
        int ch = row1 - row0;                                                                      \
        if (n_tok > 8) {                                                                           \
            const size_t cr = (64u << 10) / (wrow ? wrow : 1);                                     \
            ch = cr < 8 ? 8 : (int)cr;                                                             \
        }                                                                                          \
        for (int c0 = row0; c0 < row1; c0 += ch) {                                                 \
            const int c1 = row1 - c0 > ch ? c0 + ch : row1;                                        \
            for (int t = 0; t < n_tok;) {                                                          \
                const int left = n_tok - t, T = left >= 8 ? 8 : left >= 4 ? 4 : left;              \
                switch (T) {                                                                       \
                case 1: SPK_LANES_TILES_(tile8, 1); break;                                         \
                case 2: SPK_LANES_TILES_(tile8, 2); break;                                         \
                case 3: SPK_LANES_TILES_(tile8, 3); break;                                         \
                case 4: SPK_LANES_TILES_(tile8, 4); break;                                         \
                default: SPK_LANES_TILES_(tile8, 8); break;                                        \
                }                                                                                  \
                t += T;                                                                            \
            }                                                                                      \
        }                                                                                          \
    } while (0)

/*
 * The driver of a type with a single-token rows kernel ROWS(R, r, t) (R rows r[0..R-1], token t)
 * and a tile TILE(T, r0, t0) (8 consecutive rows from r0, T = 2, 3, 4 or 8 tokens from t0), both
 * with the same per-row float steps, as the body of an spk_mm_kernel (wb, ab: w and act as bytes):
 * at 1 token, 8 rows g apart per pass (8 sequential streams through the weights); else chunks of
 * about 64 KiB of weights stay in cache while every token group runs over them; leftover rows
 * (row1 - row0 not a multiple of 8) through ROWS.
 */
#define SPK_ROWS_TILE_DRIVE(ROWS, TILE)                                                            \
    do {                                                                                           \
        const int g = (row1 - row0) / 8, r8 = row0 + 8 * g;                                        \
        int r[8];                                                                                  \
        if (n_tok == 1) {                                                                          \
            for (int i = 0; i < g; i++) {                                                          \
                for (int j = 0; j < 8; j++)                                                        \
                    r[j] = row0 + i + j * g;                                                       \
                ROWS(8, r, 0);                                                                     \
            }                                                                                      \
        } else if (g > 0) {                                                                        \
            const size_t cr = (64u << 10) / (wrow ? wrow : 1);                                     \
            const int ch = cr < 8 ? 1 : (int)(cr / 8);                                             \
            for (int c0 = 0; c0 < g; c0 += ch) {                                                   \
                const int c1 = g - c0 > ch ? c0 + ch : g;                                          \
                for (int t = 0; t < n_tok;) {                                                      \
                    const int left = n_tok - t, T = left >= 8 ? 8 : left >= 4 ? 4 : left;          \
                    for (int i = c0; i < c1; i++) {                                                \
                        const int rr = row0 + 8 * i;                                               \
                        switch (T) {                                                               \
                        case 1:                                                                    \
                            for (int j = 0; j < 8; j++)                                            \
                                r[j] = rr + j;                                                     \
                            ROWS(8, r, t);                                                         \
                            break;                                                                 \
                        case 2: TILE(2, rr, t); break;                                             \
                        case 3: TILE(3, rr, t); break;                                             \
                        case 4: TILE(4, rr, t); break;                                             \
                        default: TILE(8, rr, t); break;                                            \
                        }                                                                          \
                    }                                                                              \
                    t += T;                                                                        \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
        if (r8 < row1) {                                                                           \
            for (int j = 0; j < row1 - r8; j++)                                                    \
                r[j] = r8 + j;                                                                     \
            for (int t = 0; t < n_tok; t++)                                                        \
                ROWS(row1 - r8, r, t);                                                             \
        }                                                                                          \
    } while (0)

/*
 * The driver of a packed tile TILE(T, o, ld, gp, act, arow, n) (cpu/repack.c's SPK_MM_LAYOUT_R8:
 * the 8-row group at gp against T tokens from act, results o[t * ld + j]; T a constant 1, 2, 3,
 * 4 or 8) as the body of an spk_mm_kernel on rows [row0, row1) of the grouped part, any
 * alignment: chunks of about 64 KiB of weights stay in cache while every token group (8, then 4,
 * then the rest) runs over them; a group cut by the range (only off the 16-row grid spk_split
 * gives threads) is computed whole into a buffer and its rows in the range copied out.
 */
#define SPK_R8_GROUPS_(TILE, T)                                                                    \
    for (int g = c0; g < c1; g++) {                                                                \
        const int r = 8 * g, lo = r > row0 ? r : row0, hi = r + 8 < row1 ? r + 8 : row1;           \
        const int whole = lo == r && hi == r + 8;                                                  \
        float tmp[8 * 8];                                                                          \
        TILE(T, whole ? out + (size_t)t * (size_t)ld + (size_t)r : tmp, whole ? (size_t)ld : 8,    \
             (const uint8_t *)w + (size_t)g * 8 * wrow, at, arow, n);                              \
        for (int k = 0; k < T && !whole; k++)                                                      \
            for (int j = lo; j < hi; j++)                                                          \
                out[(size_t)(t + k) * (size_t)ld + (size_t)j] = tmp[8 * k + (j - r)];              \
    }
#define SPK_R8_DRIVE(TILE)                                                                         \
    do {                                                                                           \
        if (row0 >= row1 || n_tok <= 0)                                                            \
            return;                                                                                \
        const int g0 = row0 / 8, g1 = (row1 + 7) / 8;                                              \
        const size_t cr = (64u << 10) / (wrow ? wrow : 1);                                         \
        const int ch = cr < 8 ? 1 : (int)(cr / 8);                                                 \
        for (int c0 = g0; c0 < g1; c0 += ch) {                                                     \
            const int c1 = g1 - c0 > ch ? c0 + ch : g1;                                            \
            for (int t = 0; t < n_tok;) {                                                          \
                const int left = n_tok - t, T = left >= 8 ? 8 : left >= 4 ? 4 : left;              \
                const uint8_t *at = (const uint8_t *)act + (size_t)t * arow;                       \
                switch (T) {                                                                       \
                case 1: SPK_R8_GROUPS_(TILE, 1); break;                                            \
                case 2: SPK_R8_GROUPS_(TILE, 2); break;                                            \
                case 3: SPK_R8_GROUPS_(TILE, 3); break;                                            \
                case 4: SPK_R8_GROUPS_(TILE, 4); break;                                            \
                default: SPK_R8_GROUPS_(TILE, 8); break;                                           \
                }                                                                                  \
                t += T;                                                                            \
            }                                                                                      \
        }                                                                                          \
    } while (0)

/*
 * SPK_R8_DRIVE with a batch-1 path: at one token the whole groups in [row0, row1) go 4 at a time,
 * groups q apart (q = groups / 4: 4 sequential streams through weights read from memory, where
 * one stream is slower), through TOK4(o, os, gp, gs, act, n) (the 4 groups at gp + i * gs, group
 * i's results to o + i * os); the groups left over and any group cut by the range go back
 * through SELF (the kernel this is the body of), which takes them to SPK_R8_DRIVE.
 */
#define SPK_R8_DRIVE_TOK4(SELF, TOK4, TILE)                                                        \
    do {                                                                                           \
        const int gA_ = (row0 + 7) / 8, gB_ = row1 / 8, q_ = (gB_ - gA_) / 4;                      \
        if (n_tok == 1 && q_ > 0) {                                                                \
            for (int i_ = 0; i_ < q_; i_++)                                                        \
                TOK4(out + 8 * (size_t)(gA_ + i_), 8 * (size_t)q_,                                 \
                     (const uint8_t *)w + (size_t)(gA_ + i_) * 8 * wrow, (size_t)q_ * 8 * wrow,    \
                     (const uint8_t *)act, n);                                                     \
            SELF(out, ld, w, wrow, act, arow, n, 1, row0, 8 * gA_);                                \
            SELF(out, ld, w, wrow, act, arow, n, 1, 8 * (gA_ + 4 * q_), row1);                     \
            return;                                                                                \
        }                                                                                          \
        SPK_R8_DRIVE(TILE);                                                                        \
    } while (0)

/*
 * A packed kernel `name` (an spk_mm_kernel, SPK_R8_DRIVE_TOK4's) from a tile and a batch-1 kernel
 * shared by two types and told apart by a constant first argument: tilek(flag, T, o, ld, gp, act,
 * arow, n) and tok1k(flag, o, os, gp, gs, act, n).
 */
#define SPK_R8_KERNEL(name, tilek, tok1k, flag)                                                    \
    I2 void name##_tile(int T, float *o, size_t ld, const uint8_t *gp, const uint8_t *act, size_t arow, int n) \
    {                                                                                              \
        tilek(flag, T, o, ld, gp, act, arow, n);                                                   \
    }                                                                                              \
    I2 void name##_tok1(float *o, size_t os, const uint8_t *gp, size_t gs, const uint8_t *act, int n) \
    {                                                                                              \
        tok1k(flag, o, os, gp, gs, act, n);                                                        \
    }                                                                                              \
    A2 void name(float *out, int ld, const void *w, size_t wrow, const void *act, size_t arow, int n, int n_tok, \
                 int row0, int row1)                                                               \
    {                                                                                              \
        SPK_R8_DRIVE_TOK4(name, name##_tok1, name##_tile);                                         \
    }

#endif
