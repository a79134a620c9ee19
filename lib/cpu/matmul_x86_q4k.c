/*
 * x86-64 AVX2 kernel for Q4_K weights (Q4_K_M files; Q5_K too: the same blocks with a fifth bit
 * per code from qh, the same arithmetic) in 8-row x up to 8-token tiles, the 8 rows'
 * results in the 8 float lanes of one register per token (as the Q4_0 and MXFP4 tiles of
 * cpu/matmul_x86_q45.c and cpu/matmul_x86_mxfp4.c): the per-super-block float work and the
 * final horizontal sums are shared by 8 rows. Every row of every call takes this kernel, at
 * every token count, 1 included (a token's result must not depend on the batch it came in);
 * rows past the last multiple of 8 run in a tile whose missing rows repeat the last row and are
 * not stored. The lanes never mix, so a row's result does not depend on the tile, thread slice
 * or batch it came in either.
 *
 * Per super-block, row and token, the integer part is as llama.cpp's Q8_K dot: the 8 chunks of 32
 * codes are dotted with the int8 activations (maddubs), scaled by the 6-bit sub-block scales
 * (madd) and summed in 8 int32 lanes; the mins meet the activations' sums per 16 (one madd).
 * Integer sums are exact whatever computes them, so each row's lanes are then reduced with a
 * horizontal-add tree over the tile's 8 rows into one int32 per row (lane j: row j), both for
 * the dot I and the min correction M, and one float step per super-block and token ends it:
 *   acc = fma(float(I), d * da, acc);  acc = fnma(float(M), dmin * da, acc)
 * with d, dmin the 8 rows' f16 scales (lanes) and da the token's Q8_K scale. Every token count
 * runs exactly these float steps, so batch invariance holds bit for bit.
 *
 * Which rows share a tile changes no result, so the driver picks for speed: at one token group
 * (decode, weights streamed from memory) a tile's rows are spread over the range, 8 sequential
 * streams (the contiguous tile read one stream and was 35% slower in Q4_K_M decode); with several
 * groups (prefill) consecutive rows of a 64 KiB chunk that stays in cache. BENCHMARKS.md 9g.
 */
#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "cpu/matmul_x86_avx2.h"
#include "cpu/quant.h"

#define BS ((size_t)sizeof(spk_block_q4_K)) /* 144: d, dmin, scales[12], qs[128] */

/* vpshufb masks on a row's decoded scales (bytes 0-7: the 8 scales, 8-15: the 8 mins, in both
 * 128-bit halves): q4k_mask[c], the scale of chunk c zero-extended into every int16 lane;
 * q4k_mins, mins 0-3 (low half) and 4-7 (high half) each into two int16 lanes, the pairs of
 * sums per 16 that make a chunk. */
static const uint8_t q4k_mask[8][32] __attribute__((aligned(32))) = {
#define M4(j) {j,0x80,j,0x80,j,0x80,j,0x80,j,0x80,j,0x80,j,0x80,j,0x80, \
               j,0x80,j,0x80,j,0x80,j,0x80,j,0x80,j,0x80,j,0x80,j,0x80}
    M4(0), M4(1), M4(2), M4(3), M4(4), M4(5), M4(6), M4(7)
#undef M4
};
static const uint8_t q4k_mins[32] __attribute__((aligned(32))) = {
    8, 0x80, 8, 0x80, 9, 0x80, 9, 0x80, 10, 0x80, 10, 0x80, 11, 0x80, 11, 0x80,
    12, 0x80, 12, 0x80, 13, 0x80, 13, 0x80, 14, 0x80, 14, 0x80, 15, 0x80, 15, 0x80};

/*
 * The 6-bit scales and mins of two rows' super-blocks (12 bytes at x + 4; 16 loaded) in SIMD:
 * row lo in the low 128-bit half, row hi in the high, each as bytes 0-7 scales, 8-15 mins
 * (ggml's get_scale_min_k4 for j = 0..7). With u0..u2 the 3 dwords of the 12 bytes:
 *   dword 0: u0 & 0x3f3f3f3f                     dword 2: u1 & 0x3f3f3f3f
 *   dword 1: (u2 & 0x0f..) | ((u0 >> 6) & 3) << 4  dword 3: ((u2 >> 4) & 0x0f..) | ((u1 >> 6) & 3) << 4
 */
I2 __m256i scales2(const uint8_t *lo, const uint8_t *hi)
{
    const __m256i v = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(lo + 4))),
                                              _mm_loadu_si128((const __m128i *)(hi + 4)), 1);
    const __m256i x = _mm256_shuffle_epi32(v, 0x98); /* u0 u2 u1 u2 */
    const __m256i y = _mm256_shuffle_epi32(v, 0x50); /* u0 u0 u1 u1 */
    const __m256i a = _mm256_and_si256(x, _mm256_set1_epi8(0x3f));
    const __m256i b = _mm256_or_si256(
        _mm256_and_si256(_mm256_srlv_epi32(x, _mm256_setr_epi32(0, 0, 0, 4, 0, 0, 0, 4)), _mm256_set1_epi8(0x0f)),
        _mm256_and_si256(_mm256_srli_epi32(y, 2), _mm256_set1_epi8(0x30)));
    return _mm256_blend_epi32(a, b, 0xAA);
}

/* Keeps a running sum in one register (GCC otherwise reassociates the adds into a tree). */
#define KEEP(v) __asm__("" : "+x"(v))

/*
 * One super-block x of one row against T tokens (s0: its scales2 half in both halves): S[t] the
 * dot's 8 int32 partial sums (codes x activations x sub-block scales), C[t] the mins' (mins x
 * activation sums per 32, as 8 lanes).
 * a[t]: the tokens' K-quant sections at this super-block's values; bs[t]: its sums per 16.
 */
I2 void row_sums(int q5, int T, const uint8_t *x, __m256i s0, const uint8_t *const a[8], const uint8_t *const bs[8],
                 __m256i S[8], __m256i C[8])
{
    const uint8_t *qs = q5 ? ((const spk_block_q5_K *)(const void *)x)->qs : ((const spk_block_q4_K *)(const void *)x)->qs;
    const __m256i hb = q5 ? _mm256_loadu_si256((const __m256i *)((const spk_block_q5_K *)(const void *)x)->qh)
                          : _mm256_setzero_si256();
    const __m256i coef = _mm256_shuffle_epi8(s0, _mm256_load_si256((const __m256i *)q4k_mins));
    const __m256i m4 = _mm256_set1_epi8(15);
    for (int t = 0; t < T; t++)
        S[t] = _mm256_setzero_si256();
#pragma GCC unroll 4
    for (int h = 0; h < 4; h++) {
        const __m256i qv = _mm256_loadu_si256((const __m256i *)(qs + 32 * h));
        __m256i lo = _mm256_and_si256(qv, m4), hi = _mm256_and_si256(_mm256_srli_epi16(qv, 4), m4);
        if (q5) { /* Q5_K's fifth bits: bits 2h (low nibbles) and 2h + 1 (high) of qh[l] to bit 4 */
            const __m256i hv = _mm256_srli_epi16(hb, 2 * h), b4 = _mm256_set1_epi8(16);
            lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16(hv, 4), b4));
            hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_slli_epi16(hv, 3), b4));
        }
        const __m256i sl = _mm256_shuffle_epi8(s0, _mm256_load_si256((const __m256i *)q4k_mask[2 * h]));
        const __m256i sh = _mm256_shuffle_epi8(s0, _mm256_load_si256((const __m256i *)q4k_mask[2 * h + 1]));
        for (int t = 0; t < T; t++) {
            const __m256i al = _mm256_loadu_si256((const __m256i *)(a[t] + 64 * h));
            const __m256i ah = _mm256_loadu_si256((const __m256i *)(a[t] + 64 * h + 32));
            S[t] = _mm256_add_epi32(S[t], _mm256_madd_epi16(_mm256_maddubs_epi16(lo, al), sl));
            KEEP(S[t]);
            S[t] = _mm256_add_epi32(S[t], _mm256_madd_epi16(_mm256_maddubs_epi16(hi, ah), sh));
            KEEP(S[t]);
        }
    }
    for (int t = 0; t < T; t++)
        C[t] = _mm256_madd_epi16(coef, _mm256_loadu_si256((const __m256i *)bs[t]));
}

/* From two vectors whose low halves hold rows 0-3's and high halves the same rows' other partial
 * sums (and likewise rows 4-7): lane j = the whole sum of row j. */
I2 __m256i fold8(__m256 q0, __m256 q1)
{
    const __m256i a = _mm256_castps_si256(q0), b = _mm256_castps_si256(q1);
    return _mm256_add_epi32(_mm256_permute2x128_si256(a, b, 0x20), _mm256_permute2x128_si256(a, b, 0x31));
}

/* P[j] = hadd(S_j, C_j) of rows j = 0..7 into I (lane j: row j's dot) and M (its mins' sum). */
I2 void sums8(const __m256i P[8], __m256i *I, __m256i *M)
{
    /* each 128-bit half: (S0, C0, S1, C1) partial sums, the low half over lanes 0-3 of S and C */
    const __m256 q01 = _mm256_castsi256_ps(_mm256_hadd_epi32(P[0], P[1]));
    const __m256 q23 = _mm256_castsi256_ps(_mm256_hadd_epi32(P[2], P[3]));
    const __m256 q45 = _mm256_castsi256_ps(_mm256_hadd_epi32(P[4], P[5]));
    const __m256 q67 = _mm256_castsi256_ps(_mm256_hadd_epi32(P[6], P[7]));
    *I = fold8(_mm256_shuffle_ps(q01, q23, 0x88), _mm256_shuffle_ps(q45, q67, 0x88));
    *M = fold8(_mm256_shuffle_ps(q01, q23, 0xDD), _mm256_shuffle_ps(q45, q67, 0xDD));
}

/*
 * Rows r0 + j * rs (j = 0..7) against tokens t0..t0+T-1 (T <= 8): out[(t0 + t) * ld + r0 + j * rs]
 * for the first nr (1..8) rows; rows from nr on repeat row nr - 1 and are not stored. q5: Q5_K
 * blocks (the same scales and arithmetic, a fifth bit per code).
 */
I2 void tile8_k(int q5, int T, float *out, int ld, const uint8_t *w, size_t wrow, const uint8_t *act, size_t arow,
                int n, int r0, int rs, int nr, int t0)
{
    const size_t BSK = q5 ? sizeof(spk_block_q5_K) : sizeof(spk_block_q4_K);
    const int nb = n / SPK_QK_K;
    const size_t ds_off = (size_t)n, bs_off = (size_t)n + (size_t)(n / 32) * 8;
    __m256 acc[8];
    for (int t = 0; t < T; t++)
        acc[t] = _mm256_setzero_ps();
    const uint8_t *wr[8], *at[8];
    for (int j = 0; j < 8; j++)
        wr[j] = w + (size_t)(r0 + (j < nr ? j : nr - 1) * rs) * wrow;
    for (int t = 0; t < T; t++)
        at[t] = act + (size_t)(t0 + t) * arow;
    for (int b = 0; b < nb; b++) {
        const size_t o = (size_t)b * BSK;
        const uint8_t *p[8], *a[8], *bsum[8];
        for (int j = 0; j < 8; j++)
            p[j] = wr[j] + o;
        for (int t = 0; t < T; t++) {
            a[t] = at[t] + 256 * (size_t)b;
            bsum[t] = at[t] + bs_off + 32 * (size_t)b;
        }
        /* P[t][j] = hadd(S, C) of row j: its dot's and its mins' lanes, pairwise summed */
        __m256i sc[8];
        for (int j = 0; j < 4; j++) {
            const __m256i v = scales2(p[j], p[j + 4]);
            sc[j] = _mm256_permute2x128_si256(v, v, 0x00);
            sc[j + 4] = _mm256_permute2x128_si256(v, v, 0x11);
        }
        __m256i P[8][8];
        /* (not unrolled: 8 copies of the 8-token row body overflow the op cache, -30% measured) */
#pragma GCC unroll 1
        for (int j = 0; j < 8; j++) {
            __m256i S[8], C[8];
            row_sums(q5, T, p[j], sc[j], a, bsum, S, C);
            for (int t = 0; t < T; t++)
                P[t][j] = _mm256_hadd_epi32(S[t], C[t]);
        }
        const __m256 d = ld_f16x8(p, 0), dm = ld_f16x8(p, 2);
        for (int t = 0; t < T; t++) {
            float da;
            memcpy(&da, at[t] + ds_off + 64 * (size_t)b, 4);
            const __m256 vda = _mm256_set1_ps(da);
            __m256i I, M;
            sums8(P[t], &I, &M);
            const __m256 fi = _mm256_cvtepi32_ps(I), fm = _mm256_cvtepi32_ps(M);
            acc[t] = _mm256_fmadd_ps(fi, _mm256_mul_ps(d, vda), acc[t]);
            acc[t] = _mm256_fnmadd_ps(fm, _mm256_mul_ps(dm, vda), acc[t]);
        }
    }
    store_lanes(out, ld, acc, T, t0, r0, rs, nr);
}

/* The tile of each type, for SPK_LANES_DRIVE. */
#define TILE8_Q4(...) tile8_k(0, __VA_ARGS__)
#define TILE8_Q5(...) tile8_k(1, __VA_ARGS__)

/*
 * Rows [row0, row1), all tokens, in tiles of 8 rows (SPK_LANES_DRIVE, cpu/matmul_x86_avx2.h), in chunks of 64 KiB of
 * weights when there are several token groups, so a chunk stays in cache while every token group
 * runs over it. Which rows share a tile does not change any row's result (the lanes never mix).
 */
A2 void spk_mm_q4k_avx2(float *out, int ld, const void *w, size_t wrow, const void *act, size_t arow, int n,
                        int n_tok, int row0, int row1)
{
    /* one token group (decode): tiles of rows far apart; several (prefill): rows in a chunk that
     * is in cache, consecutive rows measured 3-7% faster at 256 tokens */
    const int spread = n_tok <= 8;
    SPK_LANES_DRIVE(TILE8_Q4, spread);
}

/* Q5_K, the same way (until the Q4_K tile served it, 1-row tiles did). */
A2 void spk_mm_q5k_avx2(float *out, int ld, const void *w, size_t wrow, const void *act, size_t arow, int n,
                        int n_tok, int row0, int row1)
{
    const int spread = n_tok <= 8;
    SPK_LANES_DRIVE(TILE8_Q5, spread);
}

/*
 * The tile on weights packed at load (SPK_MM_LAYOUT_R8, cpu/repack.c): per 8-row group and
 * super-block, the 8 rows' d and dmin, their 64 scales and 64 mins in a form 256-bit shifts and
 * masks decode at once, and the codes with dword j of every register from row j. One maddubs of
 * a register's codes (4 values of each of the 8 rows) against a token's 4 activations broadcast
 * to every dword gives row j's two pair sums in int16 lanes 2j, 2j + 1; the 8 registers of a
 * sub-block (32 values) add up in int16 (|sum| <= 8 * 2 * 15 * 127 = 30480: exact) and one madd
 * with the sub-block's scales, row j's in lanes 2j and 2j + 1, leaves row j's scaled sub-block
 * dot in int32 lane j. So the multiplies are 1 + 1/8 per 32 products (the file layout's tile:
 * 2) and no horizontal sums are left; the mins meet the activation sums per 16 the same way (one
 * madd per sub-block). The integer sums I and M are exact whatever adds them, and the float
 * steps per super-block and token are tile8_k's, so the results are tile8_k's bit for bit.
 */

/* vpshufb masks: from a 128-bit half (in both halves) holding two sub-blocks' 8 bytes (one per
 * row, the first sub-block's at byte 0, the second's at 8), the sub-block's bytes of rows 0-3
 * (low half) and 4-7 (high half), each zero-extended into two int16 lanes. */
static const uint8_t r8_dup[2][32] __attribute__((aligned(32))) = {
#define D(o) {o, 0x80, o, 0x80, o + 1, 0x80, o + 1, 0x80, o + 2, 0x80, o + 2, 0x80, o + 3, 0x80, o + 3, 0x80, \
              o + 4, 0x80, o + 4, 0x80, o + 5, 0x80, o + 5, 0x80, o + 6, 0x80, o + 6, 0x80, o + 7, 0x80, o + 7, 0x80}
    D(0), D(8)
#undef D
};

/* The super-block at p of a packed group: sc[i] (mn[i]), int16 lanes 2j and 2j + 1 = the scale
 * (min) of sub-block i of row j. */
I2 void r8_scales(const uint8_t *p, __m256i sc[8], __m256i mn[8])
{
    const __m256i L0 = _mm256_loadu_si256((const __m256i *)(p + 32)), L1 = _mm256_loadu_si256((const __m256i *)(p + 64));
    const __m256i H = _mm256_loadu_si256((const __m256i *)(p + 96));
    const __m256i m0f = _mm256_set1_epi8(0x0f), m30 = _mm256_set1_epi8(0x30);
    /* bytes 8i + j (i = 0..3 of the register's four sub-blocks) */
    const __m256i v[4] = {
        _mm256_or_si256(_mm256_and_si256(L0, m0f), _mm256_and_si256(_mm256_slli_epi16(H, 4), m30)),
        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(L0, 4), m0f), _mm256_and_si256(_mm256_slli_epi16(H, 2), m30)),
        _mm256_or_si256(_mm256_and_si256(L1, m0f), _mm256_and_si256(H, m30)),
        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(L1, 4), m0f), _mm256_and_si256(_mm256_srli_epi16(H, 2), m30)),
    };
    const __m256i d0 = _mm256_load_si256((const __m256i *)r8_dup[0]);
    const __m256i d1 = _mm256_load_si256((const __m256i *)r8_dup[1]);
    for (int q = 0; q < 2; q++) {
        for (int hf = 0; hf < 2; hf++) {
            const __m256i s = hf ? _mm256_permute2x128_si256(v[2 * q], v[2 * q], 0x11)
                                 : _mm256_permute2x128_si256(v[2 * q], v[2 * q], 0x00);
            const __m256i m = hf ? _mm256_permute2x128_si256(v[2 * q + 1], v[2 * q + 1], 0x11)
                                 : _mm256_permute2x128_si256(v[2 * q + 1], v[2 * q + 1], 0x00);
            sc[4 * q + 2 * hf] = _mm256_shuffle_epi8(s, d0);
            sc[4 * q + 2 * hf + 1] = _mm256_shuffle_epi8(s, d1);
            mn[4 * q + 2 * hf] = _mm256_shuffle_epi8(m, d0);
            mn[4 * q + 2 * hf + 1] = _mm256_shuffle_epi8(m, d1);
        }
    }
}

/* One sub-block i's codes (half 0: low nibbles, 1: high; i = 2h + half) of registers q[0..7]
 * (Q5_K: with the fifth bits, bit i of the registers qh[0..7]) against T <= 4 tokens' 32
 * activations at a[t]: I[t] += the 8 rows' scaled dots (lane j: row j). Q5_K's codes reach 31,
 * so its int16 sums take 4 maddubs (|sum| <= 4 * 2 * 31 * 127 = 31496) per madd. */
I2 void r8_sub(int q5, int T, const uint8_t *q, const uint8_t *qh, int i, int half, const uint8_t *const a[4],
               __m256i scale, __m256i I[4])
{
    const __m256i m4 = _mm256_set1_epi8(15), b4 = _mm256_set1_epi8(16);
    const __m128i cnt = _mm_cvtsi32_si128(i);
    __m256i s[4];
#pragma GCC unroll 8
    for (int k = 0; k < 8; k++) {
        const __m256i v = _mm256_loadu_si256((const __m256i *)(q + 32 * k));
        __m256i u = half ? _mm256_and_si256(_mm256_srli_epi16(v, 4), m4) : _mm256_and_si256(v, m4);
        if (q5)
            u = _mm256_or_si256(u, _mm256_and_si256(
                _mm256_slli_epi16(_mm256_srl_epi16(_mm256_loadu_si256((const __m256i *)(qh + 32 * k)), cnt), 4), b4));
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) {
            const __m256i p = _mm256_maddubs_epi16(u, bcast4(a[t] + 4 * k));
            s[t] = k % (q5 ? 4 : 8) ? _mm256_add_epi16(s[t], p) : p;
            KEEP(s[t]);
        }
        if (q5 && k == 3)
            for (int t = 0; t < T; t++)
                I[t] = _mm256_add_epi32(I[t], _mm256_madd_epi16(s[t], scale));
    }
#pragma GCC unroll 4
    for (int t = 0; t < T; t++)
        I[t] = _mm256_add_epi32(I[t], _mm256_madd_epi16(s[t], scale));
}

/* The float steps of one super-block (b) and token (its row at at) after its dot I: the mins M
 * meet the activation sums per 16, then tile8_k's two steps. */
I2 __m256 r8_step(__m256 acc, __m256i I, const __m256i mn[8], __m256 d, __m256 dm, const uint8_t *at, int n, int b)
{
    const __m256i M = kq_bsums8(mn, at, n, b);
    const __m256 vda = _mm256_set1_ps(spk_kq_d(at, n, b));
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(I), _mm256_mul_ps(d, vda), acc);
    return _mm256_fnmadd_ps(_mm256_cvtepi32_ps(M), _mm256_mul_ps(dm, vda), acc);
}

/* q5: Q5_K groups (Q4_K's layout with the fifth bits after the codes). */
I2 void tile_r8k(int q5, int T, float *o, size_t ld, const uint8_t *gp, const uint8_t *act, size_t arow, int n)
{
    const size_t GB = 8 * (q5 ? sizeof(spk_block_q5_K) : sizeof(spk_block_q4_K));
    const int nb = n / SPK_QK_K;
    __m256 acc[8];
    for (int t = 0; t < T; t++)
        acc[t] = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const uint8_t *p = gp + (size_t)b * GB;
        __m256i sc[8], mn[8];
        r8_scales(p, sc, mn);
        const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
        const __m256 dm = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 16)));
        for (int t0 = 0; t0 < T; t0 += 4) {
            const int U = T - t0 < 4 ? T - t0 : 4;
            const uint8_t *a[4], *a2[4];
            __m256i I[4];
            for (int t = 0; t < U; t++) {
                a[t] = act + (size_t)(t0 + t) * arow + 256 * (size_t)b;
                I[t] = _mm256_setzero_si256();
            }
            /* (not unrolled: the 8 sub-blocks' bodies at 4 tokens would not fit the op cache) */
#pragma GCC unroll 1
            for (int h = 0; h < 4; h++) {
                for (int t = 0; t < U; t++)
                    a2[t] = a[t] + 64 * h;
                r8_sub(q5, U, p + 128 + 256 * (size_t)h, p + 1152, 2 * h, 0, a2, sc[2 * h], I);
                for (int t = 0; t < U; t++)
                    a2[t] = a[t] + 64 * h + 32;
                r8_sub(q5, U, p + 128 + 256 * (size_t)h, p + 1152, 2 * h + 1, 1, a2, sc[2 * h + 1], I);
            }
            for (int t = 0; t < U; t++)
                acc[t0 + t] = r8_step(acc[t0 + t], I[t], mn, d, dm, act + (size_t)(t0 + t) * arow, n, b);
        }
    }
    for (int t = 0; t < T; t++)
        _mm256_storeu_ps(o + (size_t)t * ld, acc[t]);
}

/* One token against the 4 groups gp + g * gs at once (4 sequential streams through weights read
 * from memory; tile_r8k's arithmetic per group), group g's results to o[g * os + j]. */
I2 void tok1_r8kx4(int q5, float *o, size_t os, const uint8_t *gp, size_t gs, const uint8_t *act, int n)
{
    const size_t GB = 8 * (q5 ? sizeof(spk_block_q5_K) : sizeof(spk_block_q4_K));
    const int nb = n / SPK_QK_K;
    __m256 acc[4];
    for (int g = 0; g < 4; g++)
        acc[g] = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const uint8_t *a = act + 256 * (size_t)b;
#pragma GCC unroll 1
        for (int g = 0; g < 4; g++) {
            const uint8_t *p = gp + (size_t)g * gs + (size_t)b * GB;
            /* the group's super-block 2 ahead: Q5_K from memory (512 x 98304) measured 0.64-0.74x
             * the file layout without, 1.21-1.29x with; Q4_K the same either way */
            for (size_t c = 0; c < GB; c += 64)
                _mm_prefetch((const char *)p + 2 * GB + c, _MM_HINT_T0);
            __m256i sc[8], mn[8], I[4] = {_mm256_setzero_si256()};
            r8_scales(p, sc, mn);
#pragma GCC unroll 1
            for (int h = 0; h < 4; h++) {
                const uint8_t *a2[4] = {a + 64 * h}, *a3[4] = {a + 64 * h + 32};
                r8_sub(q5, 1, p + 128 + 256 * (size_t)h, p + 1152, 2 * h, 0, a2, sc[2 * h], I);
                r8_sub(q5, 1, p + 128 + 256 * (size_t)h, p + 1152, 2 * h + 1, 1, a3, sc[2 * h + 1], I);
            }
            acc[g] = r8_step(acc[g], I[0], mn, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)),
                             _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 16))), act, n, b);
        }
    }
    for (int g = 0; g < 4; g++)
        _mm256_storeu_ps(o + (size_t)g * os, acc[g]);
}

SPK_R8_KERNEL(spk_mm_r8_q4k_avx2, tile_r8k, tok1_r8kx4, 0)
SPK_R8_KERNEL(spk_mm_r8_q5k_avx2, tile_r8k, tok1_r8kx4, 1)

#else
typedef int spk_matmul_x86_q4k_unused; /* ISO C forbids an empty translation unit */
#endif
