/*
 * x86-64 AVX2 kernel for Q6_K weights (Q6_K files; the output head and some layers of Q4_K_M and
 * Q5_K_M files; Q3_K too: codes 0..7 with offset 4 and the same per-16 scales, the same arithmetic;
 * and Q2_K: codes 0..3, a 4-bit scale and a 4-bit min per 16 values, the mins' sum a second
 * integer per super-block with a float step of its own, kstep below) in 8-row x up to 8-token
 * tiles, the 8 rows' results in the 8 float lanes of one register per token, as the Q4_K tile of
 * cpu/matmul_x86_q4k.c: the per-super-block float work and the final horizontal sums are shared
 * by 8 rows. Every row of every call takes this kernel,
 * at every token count, 1 included (a token's result must not depend on the batch it came in);
 * rows past the last multiple of 8 run in a tile whose missing rows repeat the last row and are
 * not stored. The lanes never mix, so a row's result depends neither on the tile, thread slice
 * nor batch it came in.
 *
 * Per super-block, row and token, the integer part is as llama.cpp's Q8_K dot: the 8 chunks of 32
 * 6-bit codes (value + 32, unsigned) are dotted with the int8 activations (maddubs), scaled by
 * the 16 int8 sub-block scales (madd) and summed in 8 int32 lanes; the codes' offset 32 meets the
 * activations' sums per 16 (one madd with 32 x the scales) and is subtracted in integers. The
 * codes are unpacked per half super-block from 3 loads (ql twice, qh once) with one shift and
 * mask of qh per chunk. Integer sums are exact whatever computes them (|sum| < 2^28), so each
 * row's lanes are reduced with a horizontal-add tree over the tile's 8 rows into one int32 per
 * row (lane j: row j), and one float step per super-block and token ends it:
 *   acc = fma(float(I), d * da, acc)
 * with d the 8 rows' f16 scales (lanes) and da the token's Q8_K scale. Every token count runs
 * exactly these float steps, so batch invariance holds bit for bit.
 *
 * Tile rows: at up to 8 tokens with the weights past ~1 MiB (decode from memory) spread over the
 * range, 8 sequential weight streams, with a software prefetch 8 blocks ahead (without it the 8
 * streams measured slower than the 4-row tile they replace when the weights come from memory;
 * runs of 2 or 4 consecutive rows per stream, or streams rotated off 4 KiB multiples, were slower still); else consecutive rows, with
 * more tokens in 64 KiB chunks that stay in cache while every token group runs over them.
 * BENCHMARKS.md 9i.
 */
#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "cpu/matmul_x86_avx2.h"
#include "cpu/quant.h"

/* The types of this file, the first argument of its tiles (constant after inlining). */
enum { K6, K3, K2 };

/* Bytes per block of each, and the offset of its f16 scale d. */
#define BSK(kind) ((kind) == K6 ? sizeof(spk_block_q6_K) : (kind) == K3 ? sizeof(spk_block_q3_K) : sizeof(spk_block_q2_K))
#define D_OFF(kind)                                                                                \
    ((kind) == K6 ? offsetof(spk_block_q6_K, d) : (kind) == K3 ? offsetof(spk_block_q3_K, d) : offsetof(spk_block_q2_K, d))

/* vpshufb masks on 8 int16 scales (both 128-bit halves): q6k_mask[k], the low half all lane 2k,
 * the high half all lane 2k + 1 (a chunk of 32 values spans two scales: maddubs' int16 pairs of
 * values 0-15 in the low half, 16-31 in the high). */
static const uint8_t q6k_mask[4][32] __attribute__((aligned(32))) = {
#define M16(k) {4*k,4*k+1,4*k,4*k+1,4*k,4*k+1,4*k,4*k+1,4*k,4*k+1,4*k,4*k+1,4*k,4*k+1,4*k,4*k+1, \
                4*k+2,4*k+3,4*k+2,4*k+3,4*k+2,4*k+3,4*k+2,4*k+3,4*k+2,4*k+3,4*k+2,4*k+3,4*k+2,4*k+3,4*k+2,4*k+3}
    M16(0), M16(1), M16(2), M16(3)
#undef M16
};

/* Keeps a running sum in one register (GCC otherwise reassociates the adds into a tree). */
#define KEEP(v) __asm__("" : "+x"(v))

/* The 16 int8 sub-block scales of a Q3_K block (6 bits, biased by 32, packed in 12 bytes). */
I2 __m128i q3k_scales(const spk_block_q3_K *q)
{
    uint32_t a[3];
    memcpy(a, q->scales, 12);
    return _mm_sub_epi8(_mm_set_epi32((int)(((a[1] >> 4) & 0x0f0f0f0f) | (((a[2] >> 6) & 0x03030303) << 4)),
                                      (int)(((a[0] >> 4) & 0x0f0f0f0f) | (((a[2] >> 4) & 0x03030303) << 4)),
                                      (int)((a[1] & 0x0f0f0f0f) | (((a[2] >> 2) & 0x03030303) << 4)),
                                      (int)((a[0] & 0x0f0f0f0f) | ((a[2] & 0x03030303) << 4))),
                        _mm_set1_epi8(32));
}

/*
 * One super-block x of one row against T tokens: P[t] = the dot's 8 int32 partial sums (codes x
 * activations x sub-block scales) minus the offsets' (32 x scales x activation sums per 16).
 * a[t]: the tokens' K-quant sections at this super-block's values; bs[t]: its sums per 16.
 * K3: a Q3_K block instead: codes 0..7 (2 low bits from qs, the third from hmask; value + 4),
 * the same scale layout (one per 16 values), offset 4. K2: a Q2_K block: codes 0..3 (qs as
 * Q3_K's), scales the low nibbles of its 16 scale bytes, no offset; M[t] = the mins (the high
 * nibbles) against the activation sums per 16, 8 int32 partial sums.
 */
I2 void row_sums(int kind, int T, const uint8_t *x, const uint8_t *const a[8], const uint8_t *const bs[8],
                 __m256i P[8], __m256i M[8])
{
    const spk_block_q6_K *q = (const void *)x;
    const spk_block_q3_K *q3b = (const void *)x;
    const spk_block_q2_K *q2b = (const void *)x;
    const __m128i m0f = _mm_set1_epi8(15);
    const __m128i sc2 = kind == K2 ? _mm_loadu_si128((const __m128i *)q2b->scales) : _mm_setzero_si128();
    const __m256i s = kind == K2   ? _mm256_cvtepu8_epi16(_mm_and_si128(sc2, m0f))
                      : kind == K3 ? _mm256_cvtepi8_epi16(q3k_scales(q3b))
                                   : _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)q->scales));
    const __m256i m4 = _mm256_set1_epi8(15), m30 = _mm256_set1_epi8(0x30);
    const __m256i m3 = _mm256_set1_epi8(3), b2 = _mm256_set1_epi8(4);
    __m256i S[8];
    for (int t = 0; t < T; t++)
        S[t] = _mm256_setzero_si256();
#pragma GCC unroll 2
    for (int h = 0; h < 2; h++) {
        /* scales 8h..8h+7 in both halves */
        const __m256i sh = h ? _mm256_permute2x128_si256(s, s, 0x11) : _mm256_permute2x128_si256(s, s, 0x00);
        __m256i c[4];
        if (kind != K6) { /* chunk j: bits 2j of qs[32h + l]; Q3_K: the third bit from bit 4h + j of hmask[l] */
            const __m256i qv = _mm256_loadu_si256((const __m256i *)((kind == K2 ? q2b->qs : q3b->qs) + 32 * h));
            for (int j = 0; j < 4; j++)
                c[j] = _mm256_and_si256(_mm256_srli_epi16(qv, 2 * j), m3);
            if (kind == K3) {
                const __m256i hm = _mm256_loadu_si256((const __m256i *)q3b->hmask);
                for (int j = 0; j < 4; j++)
                    c[j] = _mm256_or_si256(c[j], _mm256_and_si256(_mm256_slli_epi16(_mm256_srli_epi16(hm, 4 * h + j), 2), b2));
            }
        } else {
            const __m256i l0 = _mm256_loadu_si256((const __m256i *)(q->ql + 64 * h));
            const __m256i l1 = _mm256_loadu_si256((const __m256i *)(q->ql + 64 * h + 32));
            const __m256i hb = _mm256_loadu_si256((const __m256i *)(q->qh + 32 * h));
            /* chunk j: 4 low bits from ql (j & 1 picks the 32 bytes, j >= 2 the high nibbles),
             * the 2 high bits from qh bits 2j, 2j+1 moved to bits 4, 5 */
            c[0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_and_si256(_mm256_slli_epi16(hb, 4), m30));
            c[1] = _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_and_si256(_mm256_slli_epi16(hb, 2), m30));
            c[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), _mm256_and_si256(hb, m30));
            c[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                   _mm256_and_si256(_mm256_srli_epi16(hb, 2), m30));
        }
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            const __m256i sc = _mm256_shuffle_epi8(sh, _mm256_load_si256((const __m256i *)q6k_mask[j]));
            for (int t = 0; t < T; t++) {
                const __m256i av = _mm256_loadu_si256((const __m256i *)(a[t] + 128 * h + 32 * j));
                S[t] = _mm256_add_epi32(S[t], _mm256_madd_epi16(_mm256_maddubs_epi16(c[j], av), sc));
                KEEP(S[t]);
            }
        }
    }
    if (kind == K2) {
        const __m256i mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sc2, 4), m0f));
        for (int t = 0; t < T; t++) {
            P[t] = S[t];
            M[t] = _mm256_madd_epi16(mins, _mm256_loadu_si256((const __m256i *)bs[t]));
        }
        return;
    }
    const __m256i coef = kind == K3 ? _mm256_slli_epi16(s, 2) : _mm256_slli_epi16(s, 5); /* codes: value + 4, + 32 */
    for (int t = 0; t < T; t++)
        P[t] = _mm256_sub_epi32(S[t], _mm256_madd_epi16(coef, _mm256_loadu_si256((const __m256i *)bs[t])));
}

/* The float step of one super-block and token, shared by the file-layout and packed tiles: I the
 * 8 rows' integer sums (lane j: row j), d their f16 scales, da the token's Q8_K scale; K2 also
 * subtracts its mins' sums Mi times the rows' dmin. */
I2 __m256 kstep(int kind, __m256 acc, __m256i I, __m256i Mi, __m256 d, __m256 dmin, float da)
{
    const __m256 vda = _mm256_set1_ps(da);
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(I), _mm256_mul_ps(d, vda), acc);
    if (kind == K2)
        acc = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(Mi), _mm256_mul_ps(dmin, vda), acc);
    return acc;
}

/*
 * Rows r0 + j * rs (j = 0..7) against tokens t0..t0+T-1 (T <= 8): out[(t0 + t) * ld + r0 + j * rs]
 * for the first nr (1..8) rows; rows from nr on repeat row nr - 1 and are not stored. kind: the
 * block type (row_sums').
 */
I2 void tile8_k(int kind, int T, float *out, int ld, const uint8_t *w, size_t wrow, const uint8_t *act, size_t arow,
                int n, int r0, int rs, int nr, int t0)
{
    const size_t bsk = BSK(kind);
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
        const size_t o = (size_t)b * bsk;
        const uint8_t *p[8], *a[8], *bsum[8];
        for (int j = 0; j < 8; j++)
            p[j] = wr[j] + o;
        for (int t = 0; t < T; t++) {
            a[t] = at[t] + 256 * (size_t)b;
            bsum[t] = at[t] + bs_off + 32 * (size_t)b;
        }
        __m256i P[8][8], M[8][8];
        /* (not unrolled over rows, as the Q4_K tile: 8 copies overflow the op cache) */
#pragma GCC unroll 1
        for (int j = 0; j < 8; j++) {
            __m256i R[8], Rm[8];
            { /* the row's block 8 ahead (in spread tiles, past the row's end: the next tile's
               * row): 10-25% less CPU time at 4096 x 14336, 1 and 8 tokens (BENCHMARKS 9i) */
                const char *f = (const char *)p[j] + 8 * bsk;
                for (size_t l = 0; l < bsk; l += 64)
                    _mm_prefetch(f + l, _MM_HINT_T0);
            }
            row_sums(kind, T, p[j], a, bsum, R, Rm);
            for (int t = 0; t < T; t++) {
                P[t][j] = R[t];
                if (kind == K2)
                    M[t][j] = Rm[t];
            }
        }
        const __m256 d = ld_f16x8(p, D_OFF(kind));
        const __m256 dmin = kind == K2 ? ld_f16x8(p, offsetof(spk_block_q2_K, dmin)) : d;
        for (int t = 0; t < T; t++) {
            float da;
            memcpy(&da, at[t] + ds_off + 64 * (size_t)b, 4);
            acc[t] = kstep(kind, acc[t], hsum8x8(P[t]), kind == K2 ? hsum8x8(M[t]) : P[t][0], d, dmin, da);
        }
    }
    store_lanes(out, ld, acc, T, t0, r0, rs, nr);
}

/* The tile of each type, for SPK_LANES_DRIVE. */
#define TILE8_Q6(...) tile8_k(K6, __VA_ARGS__)
#define TILE8_Q3(...) tile8_k(K3, __VA_ARGS__)
#define TILE8_Q2(...) tile8_k(K2, __VA_ARGS__)

/* up to 8 tokens from memory (the rows' weights past ~1 MiB, this VM's L2): 8 spread streams; in
 * cache, or with several token groups: consecutive rows (measured on Q6_K 1.1-1.2x faster at
 * 512 x 1536, 1 and 8 tokens; spread 1.4x faster at 8 tokens from memory) */
#define SPREAD() (n_tok <= 8 && (size_t)(row1 - row0) * wrow > ((size_t)1 << 20))

A2 void spk_mm_q6k_avx2(float *out, int ld, const void *w, size_t wrow, const void *act, size_t arow, int n,
                        int n_tok, int row0, int row1)
{
    const int spread = SPREAD();
    SPK_LANES_DRIVE(TILE8_Q6, spread);
}

/* Q3_K (Q3_K_M files), the same way (until it served Q3_K, 1-row tiles did). */
A2 void spk_mm_q3k_avx2(float *out, int ld, const void *w, size_t wrow, const void *act, size_t arow, int n,
                        int n_tok, int row0, int row1)
{
    const int spread = SPREAD();
    SPK_LANES_DRIVE(TILE8_Q3, spread);
}

/* Q2_K (Q2_K files), the same way. */
A2 void spk_mm_q2k_avx2(float *out, int ld, const void *w, size_t wrow, const void *act, size_t arow, int n,
                        int n_tok, int row0, int row1)
{
    const int spread = SPREAD();
    SPK_LANES_DRIVE(TILE8_Q2, spread);
}

/*
 * The tile on weights packed at load (SPK_MM_LAYOUT_R8, cpu/repack.c), as the Q4_K one of
 * cpu/matmul_x86_q4k.c: per 8-row group and sub-block of 16 values, 4 registers of codes with
 * dword j from row j (unpacked from 3 loads by tile8_k's shifts and masks; Q3_K from 2, Q2_K
 * from 1) against a token's 4 activations broadcast to every dword; two maddubs add up in int16
 * (|sum| <= 2 * 2 * 63 * 127 = 32004: exact) before one madd with the sub-block's scales (row j's
 * in lanes 2j, 2j + 1), so 1 + 1/2 multiplies per 32 products (the file-layout tile: 2) and no
 * horizontal sums. The offset 32 (Q3_K 4; Q2_K: the mins) meets the activation sums per 16 (one
 * madd per two sub-blocks); the float step per super-block and token is tile8_k's kstep, so the
 * results are its bits.
 */
/* The scales of the super-block at p of a packed group: sc[i], lanes 2j and 2j + 1 = scale i of
 * row j; pr[k], lane 2j = coefficient 2k, lane 2j + 1 = coefficient 2k + 1 of the activation
 * sums of row j: the scales (Q6_K, Q3_K: the offset's) or the mins (Q2_K). Q6_K: int8 at
 * p + 16 + 8i + j. Q3_K: its 6-bit scales (the file's 12 bytes of row j at p + 16 + 8i + j,
 * i = 0..11) are decoded to that layout first. Q2_K: byte p + 32 + 8i + j = the file's scale byte
 * i of row j, scale in the low nibble, min in the high. */
I2 void r8_scales(int kind, const uint8_t *p, __m256i sc[16], __m256i pr[8])
{
    uint8_t tmp[128], tmpm[128];
    const uint8_t *S = p + 16, *Mn = p + 16; /* scale (coefficient) i of row j at S[8i + j] (Mn[8i + j]) */
    const __m256i m0f = _mm256_set1_epi8(0x0f);
    if (kind == K3) {
        const __m256i L0 = _mm256_loadu_si256((const __m256i *)(p + 16));
        const __m256i L1 = _mm256_loadu_si256((const __m256i *)(p + 48));
        const __m256i H = _mm256_loadu_si256((const __m256i *)(p + 80));
        const __m256i m30 = _mm256_set1_epi8(0x30), b32 = _mm256_set1_epi8(32);
        const __m256i v[4] = {
            _mm256_or_si256(_mm256_and_si256(L0, m0f), _mm256_and_si256(_mm256_slli_epi16(H, 4), m30)),
            _mm256_or_si256(_mm256_and_si256(L1, m0f), _mm256_and_si256(_mm256_slli_epi16(H, 2), m30)),
            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(L0, 4), m0f), _mm256_and_si256(H, m30)),
            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(L1, 4), m0f),
                            _mm256_and_si256(_mm256_srli_epi16(H, 2), m30)),
        };
        for (int k = 0; k < 4; k++) /* scales 4k..4k + 3 */
            _mm256_storeu_si256((__m256i *)(tmp + 32 * k), _mm256_sub_epi8(v[k], b32));
        S = Mn = tmp;
    } else if (kind == K2) {
        for (int k = 0; k < 4; k++) { /* sub-blocks 4k..4k + 3 */
            const __m256i v = _mm256_loadu_si256((const __m256i *)(p + 32 + 32 * k));
            _mm256_storeu_si256((__m256i *)(tmp + 32 * k), _mm256_and_si256(v, m0f));
            _mm256_storeu_si256((__m256i *)(tmpm + 32 * k), _mm256_and_si256(_mm256_srli_epi16(v, 4), m0f));
        }
        S = tmp;
        Mn = tmpm;
    }
    for (int k = 0; k < 8; k++) {
        const __m128i x0 = _mm_loadl_epi64((const __m128i *)(S + 16 * k));
        const __m128i x1 = _mm_loadl_epi64((const __m128i *)(S + 8 + 16 * k));
        sc[2 * k] = _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(x0, x0));
        sc[2 * k + 1] = _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(x1, x1));
        pr[k] = _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(_mm_loadl_epi64((const __m128i *)(Mn + 16 * k)),
                                                       _mm_loadl_epi64((const __m128i *)(Mn + 8 + 16 * k))));
    }
}

/* The 4 code registers of sub-block i of the super-block at p (tile8_k's unpacking; Q3_K: the 2
 * low bits at 2k of the pair's register for i, the third at bit k + 4 (i & 1) of its third;
 * Q2_K: the 2 bits at 2k of register i at p + 160). */
I2 void r8_codes(int kind, const uint8_t *p, int i, __m256i c[4])
{
    if (kind != K6) { /* the 2 low bits: register i (Q2_K), or the pair's register for i (Q3_K) */
        const __m256i m3 = _mm256_set1_epi8(3);
        const uint8_t *pair = p + 112 + 96 * (size_t)(i / 2); /* Q3_K */
        const __m256i lo = _mm256_loadu_si256((const __m256i *)(kind == K2 ? p + 160 + 32 * (size_t)i
                                                                             : pair + 32 * (size_t)(i & 1)));
        for (int k = 0; k < 4; k++)
            c[k] = _mm256_and_si256(_mm256_srli_epi16(lo, 2 * k), m3);
        if (kind == K3) {
            /* bits 4 (i & 1)..+3 of each byte of the third register to 0..3 (a byte's own bits: the
             * bits shifted in from the next byte land at 4..7, which no code reads), then to bit 2 */
            const __m256i b2 = _mm256_set1_epi8(4);
            const __m256i hi =
                _mm256_srl_epi16(_mm256_loadu_si256((const __m256i *)(pair + 64)), _mm_cvtsi32_si128(4 * (i & 1)));
            c[0] = _mm256_or_si256(c[0], _mm256_and_si256(_mm256_slli_epi16(hi, 2), b2));
            c[1] = _mm256_or_si256(c[1], _mm256_and_si256(_mm256_slli_epi16(hi, 1), b2));
            c[2] = _mm256_or_si256(c[2], _mm256_and_si256(hi, b2));
            c[3] = _mm256_or_si256(c[3], _mm256_and_si256(_mm256_srli_epi16(hi, 1), b2));
        }
        return;
    }
    const __m256i m4 = _mm256_set1_epi8(15), m30 = _mm256_set1_epi8(0x30);
    const uint8_t *u = p + 144 + 96 * (size_t)i;
    const __m256i l0 = _mm256_loadu_si256((const __m256i *)u), l1 = _mm256_loadu_si256((const __m256i *)(u + 32));
    const __m256i hb = _mm256_loadu_si256((const __m256i *)(u + 64));
    c[0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_and_si256(_mm256_slli_epi16(hb, 4), m30));
    c[1] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                           _mm256_and_si256(_mm256_slli_epi16(hb, 2), m30));
    c[2] = _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_and_si256(hb, m30));
    c[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                           _mm256_and_si256(_mm256_srli_epi16(hb, 2), m30));
}

/* I += sub-block i's scaled dots of the 8 rows (lane j) against the token's 16 values at a: two
 * maddubs per madd (Q3_K, Q2_K, codes to 7: all four, |sum| <= 4 * 2 * 7 * 127 = 7112). */
I2 __m256i r8_dot(int kind, __m256i I, const __m256i c[4], const uint8_t *a, __m256i sc)
{
    __m256i s = _mm256_add_epi16(_mm256_maddubs_epi16(c[0], bcast4(a)), _mm256_maddubs_epi16(c[1], bcast4(a + 4)));
    if (kind == K6) {
        I = _mm256_add_epi32(I, _mm256_madd_epi16(s, sc));
        KEEP(I);
        s = _mm256_setzero_si256();
    }
    s = _mm256_add_epi16(s, _mm256_add_epi16(_mm256_maddubs_epi16(c[2], bcast4(a + 8)),
                                             _mm256_maddubs_epi16(c[3], bcast4(a + 12))));
    I = _mm256_add_epi32(I, _mm256_madd_epi16(s, sc));
    KEEP(I);
    return I;
}

/* The 8 rows' d (and Q2_K's dmin, at 16) of the packed super-block at p. */
#define R8_D(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p)))

/* The float step of one super-block (b; its rows' d and dmin) and token (its row at at): tile8_k's
 * (offset 32, Q3_K 4: subtracted in integers; Q2_K: the mins' sums, kstep's second step). */
I2 __m256 r8_step(int kind, __m256 acc, __m256i I, const __m256i pr[8], __m256 d, __m256 dmin, const uint8_t *at,
                  int n, int b)
{
    const __m256i O = kq_bsums8(pr, at, n, b);
    if (kind != K2)
        I = _mm256_sub_epi32(I, kind == K3 ? _mm256_slli_epi32(O, 2) : _mm256_slli_epi32(O, 5));
    return kstep(kind, acc, I, O, d, dmin, spk_kq_d(at, n, b));
}

I2 void tile_r8k6(int kind, int T, float *o, size_t ld, const uint8_t *gp, const uint8_t *act, size_t arow, int n)
{
    const size_t GB = 8 * BSK(kind);
    const int nb = n / SPK_QK_K;
    __m256 acc[8];
    for (int t = 0; t < T; t++)
        acc[t] = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const uint8_t *p = gp + (size_t)b * GB;
        __m256i sc[16], pr[8];
        r8_scales(kind, p, sc, pr);
        const __m256 d = R8_D(p), dmin = kind == K2 ? R8_D(p + 16) : d;
        for (int t0 = 0; t0 < T; t0 += 8) {
            const int U = T - t0 < 8 ? T - t0 : 8;
            __m256i I[8];
            for (int t = 0; t < U; t++)
                I[t] = _mm256_setzero_si256();
#pragma GCC unroll 1
            for (int i = 0; i < 16; i++) {
                __m256i c[4];
                r8_codes(kind, p, i, c);
#pragma GCC unroll 8
                for (int t = 0; t < U; t++)
                    I[t] = r8_dot(kind, I[t], c, act + (size_t)(t0 + t) * arow + 256 * (size_t)b + 16 * i, sc[i]);
            }
            for (int t = 0; t < U; t++)
                acc[t0 + t] = r8_step(kind, acc[t0 + t], I[t], pr, d, dmin, act + (size_t)(t0 + t) * arow, n, b);
        }
    }
    for (int t = 0; t < T; t++)
        _mm256_storeu_ps(o + (size_t)t * ld, acc[t]);
}

/* One token against the 4 groups gp + g * gs at once (4 sequential streams through weights read
 * from memory; tile_r8k6's arithmetic per group), group g's results to o[g * os + j]. */
I2 void tok1_r8k6x4(int kind, float *o, size_t os, const uint8_t *gp, size_t gs, const uint8_t *act, int n)
{
    const size_t GB = 8 * BSK(kind);
    const int nb = n / SPK_QK_K;
    __m256 acc[4];
    for (int g = 0; g < 4; g++)
        acc[g] = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
#pragma GCC unroll 1
        for (int g = 0; g < 4; g++) {
            const uint8_t *p = gp + (size_t)g * gs + (size_t)b * GB;
            __m256i sc[16], pr[8], I = _mm256_setzero_si256();
            r8_scales(kind, p, sc, pr);
#pragma GCC unroll 2
            for (int i = 0; i < 16; i++) {
                __m256i c[4];
                r8_codes(kind, p, i, c);
                I = r8_dot(kind, I, c, act + 256 * (size_t)b + 16 * i, sc[i]);
            }
            acc[g] = r8_step(kind, acc[g], I, pr, R8_D(p), kind == K2 ? R8_D(p + 16) : R8_D(p), act, n, b);
        }
    }
    for (int g = 0; g < 4; g++)
        _mm256_storeu_ps(o + (size_t)g * os, acc[g]);
}

SPK_R8_KERNEL(spk_mm_r8_q6k_avx2, tile_r8k6, tok1_r8k6x4, K6)
SPK_R8_KERNEL(spk_mm_r8_q3k_avx2, tile_r8k6, tok1_r8k6x4, K3)
SPK_R8_KERNEL(spk_mm_r8_q2k_avx2, tile_r8k6, tok1_r8k6x4, K2)

#else
typedef int spk_matmul_x86_q6k_unused; /* ISO C forbids an empty translation unit */
#endif
