/*
 * Portable reference for quantized matmul: the Q8 planar activation quantizer, per-type
 * dequantizers and dot products, and the scalar kernel table. SIMD paths must agree with these.
 */
#include "cpu/quant.h"

#include <math.h>
#include <string.h>

/* ---- activation quantization ---------------------------------------------------------------- */

void spk_q8_quantize_row_ref(void *dst, const float *x, int n)
{
    int8_t *q = (int8_t *)dst;
    float *ds = (float *)((uint8_t *)dst + n);
    for (int b = 0; b < n / SPK_ACT_BLOCK; b++) {
        const float *xb = x + b * SPK_ACT_BLOCK;
        float amax = 0.0f;
        for (int j = 0; j < SPK_ACT_BLOCK; j++) {
            float a = fabsf(xb[j]);
            amax = a > amax ? a : amax;
        }
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        int sum = 0;
        for (int j = 0; j < SPK_ACT_BLOCK; j++) {
            const float r = roundf(xb[j] * id);
            const int v = (r >= -127.0f && r <= 127.0f) ? (int)r : (r > 0.0f ? 127 : -127);
            q[b * SPK_ACT_BLOCK + j] = (int8_t)v;
            sum += v;
        }
        const float d16 = spk_f16_to_f32(spk_f32_to_f16(d));
        ds[2 * b] = d16;
        ds[2 * b + 1] = d16 * (float)sum; /* |sum| < 2^12, d16 has 11 bits: exact */
    }
}

void spk_q8k_quantize_row_ref(void *dst, const float *x, int n)
{
    int8_t *q = (int8_t *)dst;
    float *ds = (float *)((uint8_t *)dst + n);
    int16_t *bsums = (int16_t *)((uint8_t *)dst + n + (size_t)(n / SPK_ACT_BLOCK) * 8);
    for (int b = 0; b < n / 256; b++) {
        const float *xb = x + b * 256;
        float amax = 0.0f;
        for (int j = 0; j < 256; j++) {
            float a = fabsf(xb[j]);
            amax = a > amax ? a : amax;
        }
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        for (int k = 0; k < 16; k++) {
            int sum = 0;
            for (int j = 16 * k; j < 16 * k + 16; j++) {
                const float r = roundf(xb[j] * id);
                const int v = (r >= -127.0f && r <= 127.0f) ? (int)r : (r > 0.0f ? 127 : -127);
                q[b * 256 + j] = (int8_t)v;
                sum += v;
            }
            bsums[b * 16 + k] = (int16_t)sum;
        }
        for (int k = 0; k < 8; k++) {
            ds[2 * (b * 8 + k)] = d;
            ds[2 * (b * 8 + k) + 1] = d * (float)(bsums[b * 16 + 2 * k] + bsums[b * 16 + 2 * k + 1]);
        }
    }
}

/* ---- K-quant unpacking (for the scalar dot products) ---------------------------------------- */

/* 6-bit scale and min of sub-block j (0..7) of a Q4_K super-block. */
void spk_q4k_scale_min(const uint8_t *s, int j, int *sc, int *m)
{
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
        *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

/* The 256 4-bit values of a Q4_K super-block, in element order. */
static void q4k_unpack(uint8_t *q, const spk_block_q4_K *x)
{
    for (int c = 0; c < 4; c++)
        for (int l = 0; l < 32; l++) {
            q[c * 64 + l] = x->qs[c * 32 + l] & 15;
            q[c * 64 + 32 + l] = x->qs[c * 32 + l] >> 4;
        }
}

/* The 256 signed 6-bit values (-32..31) of a Q6_K super-block, in element order. */
void spk_q6k_unpack(int8_t *q, const spk_block_q6_K *x)
{
    for (int h = 0; h < 2; h++) {
        const uint8_t *ql = x->ql + h * 64, *qh = x->qh + h * 32;
        int8_t *y = q + h * 128;
        for (int l = 0; l < 32; l++) {
            y[l] = (int8_t)(((ql[l] & 15) | (((qh[l] >> 0) & 3) << 4)) - 32);
            y[l + 32] = (int8_t)(((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4)) - 32);
            y[l + 64] = (int8_t)(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
            y[l + 96] = (int8_t)(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
        }
    }
}

/* The 32 5-bit values (0..31) of a Q5_0/Q5_1 block, in element order: low nibbles of qs hold
 * elements 0-15, high nibbles 16-31; bit j of the little-endian qh is element j's fifth bit. */
static void q5_unpack(uint8_t *q, const uint8_t *qh4, const uint8_t *qs)
{
    const uint32_t qh = (uint32_t)qh4[0] | (uint32_t)qh4[1] << 8 | (uint32_t)qh4[2] << 16 |
                        (uint32_t)qh4[3] << 24;
    for (int j = 0; j < 16; j++) {
        q[j] = (uint8_t)((qs[j] & 15) | ((qh >> j) & 1) << 4);
        q[j + 16] = (uint8_t)((qs[j] >> 4) | ((qh >> (j + 16)) & 1) << 4);
    }
}

/* The 256 5-bit values (0..31) of a Q5_K super-block, in element order: chunk c of 64 takes
 * qs[32c..32c+31] (low nibbles first, then high), fifth bits from qh bit 2c and 2c+1. */
static void q5k_unpack(uint8_t *q, const spk_block_q5_K *x)
{
    for (int c = 0; c < 4; c++)
        for (int l = 0; l < 32; l++) {
            q[c * 64 + l] = (uint8_t)((x->qs[c * 32 + l] & 15) | ((x->qh[l] >> (2 * c)) & 1) << 4);
            q[c * 64 + 32 + l] =
                (uint8_t)((x->qs[c * 32 + l] >> 4) | ((x->qh[l] >> (2 * c + 1)) & 1) << 4);
        }
}

/* The 16 signed 6-bit scales (stored + 32, already minus 32 here) of a Q3_K super-block. */
static void q3k_scales(int *sc, const uint8_t *s)
{
    for (int j = 0; j < 16; j++) {
        const int lo = j < 8 ? s[j] & 15 : s[j - 8] >> 4;
        const int hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        sc[j] = (lo | hi << 4) - 32;
    }
}

/* The 256 values (-4..3) of a Q3_K super-block in element order: element 128h + 32k + l has
 * its low two bits at qs[32h + l] >> 2k and its high bit (set: no -4) at hmask[l] bit 4h + k. */
void spk_q3k_unpack(int8_t *q, const spk_block_q3_K *x)
{
    for (int h = 0; h < 2; h++)
        for (int k = 0; k < 4; k++)
            for (int l = 0; l < 32; l++) {
                const int lo = (x->qs[32 * h + l] >> (2 * k)) & 3;
                const int hb = (x->hmask[l] >> (4 * h + k)) & 1;
                q[128 * h + 32 * k + l] = (int8_t)(lo - (hb ? 0 : 4));
            }
}

/* The 256 values (0..3) of a Q2_K super-block in element order (same packing as Q3_K's qs). */
void spk_q2k_unpack(uint8_t *q, const spk_block_q2_K *x)
{
    for (int h = 0; h < 2; h++)
        for (int k = 0; k < 4; k++)
            for (int l = 0; l < 32; l++)
                q[128 * h + 32 * k + l] = (uint8_t)((x->qs[32 * h + l] >> (2 * k)) & 3);
}

/* The 32 doubled E2M1 values of an MXFP4 block, in element order (low nibbles first). */
static void mxfp4_unpack(int8_t *q, const spk_block_mxfp4 *x)
{
    for (int j = 0; j < 16; j++) {
        q[j] = spk_mxfp4_values[x->qs[j] & 15];
        q[j + 16] = spk_mxfp4_values[x->qs[j] >> 4];
    }
}

/* ---- dequantizing the types added for issue 9 (cpu/ops.c handles the older ones) ----------- */

int spk_quant_dequantize_block(float *y, const void *blk, spk_dtype t)
{
    switch (t) {
    case SPK_DT_Q5_0: {
        const spk_block_q5_0 *x = blk;
        uint8_t q[32];
        q5_unpack(q, x->qh, x->qs);
        const float d = spk_f16_to_f32(x->d);
        for (int j = 0; j < 32; j++)
            y[j] = (float)(q[j] - 16) * d;
        return 1;
    }
    case SPK_DT_Q5_1: {
        const spk_block_q5_1 *x = blk;
        uint8_t q[32];
        q5_unpack(q, x->qh, x->qs);
        const float d = spk_f16_to_f32(x->d), m = spk_f16_to_f32(x->m);
        for (int j = 0; j < 32; j++)
            y[j] = (float)q[j] * d + m;
        return 1;
    }
    case SPK_DT_Q5_K: {
        const spk_block_q5_K *x = blk;
        uint8_t q[SPK_QK_K];
        q5k_unpack(q, x);
        const float d = spk_f16_to_f32(x->d), dmin = spk_f16_to_f32(x->dmin);
        for (int j = 0; j < 8; j++) {
            int sc, m;
            spk_q4k_scale_min(x->scales, j, &sc, &m);
            const float d1 = d * (float)sc, m1 = dmin * (float)m;
            for (int l = 0; l < 32; l++)
                y[32 * j + l] = d1 * (float)q[32 * j + l] - m1;
        }
        return 1;
    }
    case SPK_DT_Q3_K: {
        const spk_block_q3_K *x = blk;
        int8_t q[SPK_QK_K];
        int sc[16];
        spk_q3k_unpack(q, x);
        q3k_scales(sc, x->scales);
        const float d = spk_f16_to_f32(x->d);
        for (int i = 0; i < SPK_QK_K; i++)
            y[i] = d * (float)sc[i / 16] * (float)q[i];
        return 1;
    }
    case SPK_DT_Q2_K: {
        const spk_block_q2_K *x = blk;
        uint8_t q[SPK_QK_K];
        spk_q2k_unpack(q, x);
        const float d = spk_f16_to_f32(x->d), dmin = spk_f16_to_f32(x->dmin);
        for (int i = 0; i < SPK_QK_K; i++) {
            const uint8_t s = x->scales[i / 16];
            y[i] = d * (float)(s & 15) * (float)q[i] - dmin * (float)(s >> 4);
        }
        return 1;
    }
    case SPK_DT_MXFP4: {
        const spk_block_mxfp4 *x = blk;
        int8_t q[32];
        mxfp4_unpack(q, x);
        const float d = spk_e8m0_to_f32_half(x->e);
        for (int j = 0; j < 32; j++)
            y[j] = (float)q[j] * d;
        return 1;
    }
    default:
        return 0;
    }
}

/* ---- scalar dot products: one weight row against one activation row ------------------------- */

static float dot_q4_0(const void *wrow, const uint8_t *act, int n)
{
    const spk_block_q4_0 *w = wrow;
    const int8_t *a = (const int8_t *)act;
    const float *ds = (const float *)(act + n);
    float acc = 0.0f;
    for (int b = 0; b < n / 32; b++, a += 32) {
        int isum = 0;
        for (int j = 0; j < 16; j++)
            isum += ((w[b].qs[j] & 15) - 8) * a[j] + ((w[b].qs[j] >> 4) - 8) * a[j + 16];
        acc += spk_f16_to_f32(w[b].d) * ds[2 * b] * (float)isum;
    }
    return acc;
}

static float dot_q4_1(const void *wrow, const uint8_t *act, int n)
{
    const spk_block_q4_1 *w = wrow;
    const int8_t *a = (const int8_t *)act;
    const float *ds = (const float *)(act + n);
    float acc = 0.0f;
    for (int b = 0; b < n / 32; b++, a += 32) {
        int isum = 0;
        for (int j = 0; j < 16; j++)
            isum += (w[b].qs[j] & 15) * a[j] + (w[b].qs[j] >> 4) * a[j + 16];
        acc += spk_f16_to_f32(w[b].d) * ds[2 * b] * (float)isum +
               spk_f16_to_f32(w[b].m) * ds[2 * b + 1];
    }
    return acc;
}

static float dot_q8_0(const void *wrow, const uint8_t *act, int n)
{
    const spk_block_q8_0 *w = wrow;
    const int8_t *a = (const int8_t *)act;
    const float *ds = (const float *)(act + n);
    float acc = 0.0f;
    for (int b = 0; b < n / 32; b++, a += 32) {
        int isum = 0;
        for (int j = 0; j < 32; j++)
            isum += w[b].qs[j] * a[j];
        acc += spk_f16_to_f32(w[b].d) * ds[2 * b] * (float)isum;
    }
    return acc;
}

/* Q4_K and Q5_K after unpacking: super-block b's 256 values q against activation blocks 8b..8b+7,
 * added to *acc in block order. */
static void q45k_block(float *acc, const uint8_t *q, const uint8_t *scales, float d, float dmin, const int8_t *a,
                       const float *ds, int b)
{
    for (int j = 0; j < 8; j++) {
        const int ab = b * 8 + j; /* activation block */
        int sc, m, isum = 0;
        spk_q4k_scale_min(scales, j, &sc, &m);
        for (int l = 0; l < 32; l++)
            isum += q[j * 32 + l] * a[ab * 32 + l];
        *acc += d * (float)sc * ds[2 * ab] * (float)isum - dmin * (float)m * ds[2 * ab + 1];
    }
}

static float dot_q4_K(const void *wrow, const uint8_t *act, int n)
{
    const spk_block_q4_K *w = wrow;
    const int8_t *a = (const int8_t *)act;
    const float *ds = (const float *)(act + n);
    uint8_t q[SPK_QK_K];
    float acc = 0.0f;
    for (int b = 0; b < n / SPK_QK_K; b++) {
        const float d = spk_f16_to_f32(w[b].d), dmin = spk_f16_to_f32(w[b].dmin);
        q4k_unpack(q, &w[b]);
        q45k_block(&acc, q, w[b].scales, d, dmin, a, ds, b);
    }
    return acc;
}

static float dot_q6_K(const void *wrow, const uint8_t *act, int n)
{
    const spk_block_q6_K *w = wrow;
    const int8_t *a = (const int8_t *)act;
    const float *ds = (const float *)(act + n);
    int8_t q[SPK_QK_K];
    float acc = 0.0f;
    for (int b = 0; b < n / SPK_QK_K; b++) {
        const float d = spk_f16_to_f32(w[b].d);
        spk_q6k_unpack(q, &w[b]);
        for (int j = 0; j < 8; j++) {
            const int ab = b * 8 + j;
            int s0 = 0, s1 = 0;
            for (int l = 0; l < 16; l++) {
                s0 += q[j * 32 + l] * a[ab * 32 + l];
                s1 += q[j * 32 + 16 + l] * a[ab * 32 + 16 + l];
            }
            const int isum = w[b].scales[2 * j] * s0 + w[b].scales[2 * j + 1] * s1;
            acc += d * ds[2 * ab] * (float)isum;
        }
    }
    return acc;
}

static float dot_q5_0(const void *wrow, const uint8_t *act, int n)
{
    const spk_block_q5_0 *w = wrow;
    const int8_t *a = (const int8_t *)act;
    const float *ds = (const float *)(act + n);
    uint8_t q[32];
    float acc = 0.0f;
    for (int b = 0; b < n / 32; b++, a += 32) {
        q5_unpack(q, w[b].qh, w[b].qs);
        int isum = 0;
        for (int j = 0; j < 32; j++)
            isum += (q[j] - 16) * a[j];
        acc += spk_f16_to_f32(w[b].d) * ds[2 * b] * (float)isum;
    }
    return acc;
}

static float dot_q5_1(const void *wrow, const uint8_t *act, int n)
{
    const spk_block_q5_1 *w = wrow;
    const int8_t *a = (const int8_t *)act;
    const float *ds = (const float *)(act + n);
    uint8_t q[32];
    float acc = 0.0f;
    for (int b = 0; b < n / 32; b++, a += 32) {
        q5_unpack(q, w[b].qh, w[b].qs);
        int isum = 0;
        for (int j = 0; j < 32; j++)
            isum += q[j] * a[j];
        acc += spk_f16_to_f32(w[b].d) * ds[2 * b] * (float)isum +
               spk_f16_to_f32(w[b].m) * ds[2 * b + 1];
    }
    return acc;
}

static float dot_mxfp4(const void *wrow, const uint8_t *act, int n)
{
    const spk_block_mxfp4 *w = wrow;
    const int8_t *a = (const int8_t *)act;
    const float *ds = (const float *)(act + n);
    int8_t q[32];
    float acc = 0.0f;
    for (int b = 0; b < n / 32; b++, a += 32) {
        mxfp4_unpack(q, &w[b]);
        int isum = 0;
        for (int j = 0; j < 32; j++)
            isum += q[j] * a[j];
        acc += spk_e8m0_to_f32_half(w[b].e) * ds[2 * b] * (float)isum;
    }
    return acc;
}

static float dot_q5_K(const void *wrow, const uint8_t *act, int n)
{
    const spk_block_q5_K *w = wrow;
    const int8_t *a = (const int8_t *)act;
    const float *ds = (const float *)(act + n);
    uint8_t q[SPK_QK_K];
    float acc = 0.0f;
    for (int b = 0; b < n / SPK_QK_K; b++) {
        const float d = spk_f16_to_f32(w[b].d), dmin = spk_f16_to_f32(w[b].dmin);
        q5k_unpack(q, &w[b]);
        q45k_block(&acc, q, w[b].scales, d, dmin, a, ds, b);
    }
    return acc;
}

/* Q3_K: a signed scale per 16 values, so each activation block of 32 meets two scales. */
static float dot_q3_K(const void *wrow, const uint8_t *act, int n)
{
    const spk_block_q3_K *w = wrow;
    const int8_t *a = (const int8_t *)act;
    const float *ds = (const float *)(act + n);
    int8_t q[SPK_QK_K];
    int sc[16];
    float acc = 0.0f;
    for (int b = 0; b < n / SPK_QK_K; b++) {
        const float d = spk_f16_to_f32(w[b].d);
        spk_q3k_unpack(q, &w[b]);
        q3k_scales(sc, w[b].scales);
        for (int j = 0; j < 8; j++) {
            const int ab = b * 8 + j;
            int s0 = 0, s1 = 0;
            for (int l = 0; l < 16; l++) {
                s0 += q[j * 32 + l] * a[ab * 32 + l];
                s1 += q[j * 32 + 16 + l] * a[ab * 32 + 16 + l];
            }
            acc += d * ds[2 * ab] * (float)(sc[2 * j] * s0 + sc[2 * j + 1] * s1);
        }
    }
    return acc;
}

/* Q2_K: scale and min per 16 values; the min meets the sum of those 16 activations. */
static float dot_q2_K(const void *wrow, const uint8_t *act, int n)
{
    const spk_block_q2_K *w = wrow;
    const int8_t *a = (const int8_t *)act;
    const float *ds = (const float *)(act + n);
    uint8_t q[SPK_QK_K];
    float acc = 0.0f;
    for (int b = 0; b < n / SPK_QK_K; b++) {
        const float d = spk_f16_to_f32(w[b].d), dmin = spk_f16_to_f32(w[b].dmin);
        spk_q2k_unpack(q, &w[b]);
        for (int j = 0; j < 8; j++) {
            const int ab = b * 8 + j;
            int isum = 0, msum = 0;
            for (int h = 0; h < 2; h++) {
                const uint8_t s = w[b].scales[2 * j + h];
                int qa = 0, sa = 0;
                for (int l = 0; l < 16; l++) {
                    qa += q[j * 32 + 16 * h + l] * a[ab * 32 + 16 * h + l];
                    sa += a[ab * 32 + 16 * h + l];
                }
                isum += (s & 15) * qa;
                msum += (s >> 4) * sa;
            }
            acc += ds[2 * ab] * (d * (float)isum - dmin * (float)msum);
        }
    }
    return acc;
}

static float dot_f32(const void *wrow, const uint8_t *act, int n)
{
    const float *w = wrow, *a = (const float *)act;
    float acc = 0.0f;
    for (int i = 0; i < n; i++)
        acc += w[i] * a[i];
    return acc;
}

static float dot_f16(const void *wrow, const uint8_t *act, int n)
{
    const spk_f16 *w = wrow;
    const float *a = (const float *)act;
    float acc = 0.0f;
    for (int i = 0; i < n; i++)
        acc += spk_f16_to_f32(w[i]) * a[i];
    return acc;
}

static float dot_bf16(const void *wrow, const uint8_t *act, int n)
{
    const uint16_t *w = wrow;
    const float *a = (const float *)act;
    float acc = 0.0f;
    for (int i = 0; i < n; i++)
        acc += spk_bf16_to_f32(w[i]) * a[i];
    return acc;
}

#define SCALAR_KERNEL(name, dot)                                                                   \
    static void name(float *out, int ld_out, const void *w, size_t wrow, const void *act,         \
                     size_t arow, int n_in, int n_tok, int row0, int row1)                         \
    {                                                                                              \
        for (int r = row0; r < row1; r++) {                                                        \
            const void *wr = (const uint8_t *)w + (size_t)r * wrow;                                \
            for (int t = 0; t < n_tok; t++)                                                        \
                out[(size_t)t * (size_t)ld_out + (size_t)r] =                                      \
                    dot(wr, (const uint8_t *)act + (size_t)t * arow, n_in);                        \
        }                                                                                          \
    }

SCALAR_KERNEL(mm_q4_0, dot_q4_0)
SCALAR_KERNEL(mm_q4_1, dot_q4_1)
SCALAR_KERNEL(mm_q8_0, dot_q8_0)
SCALAR_KERNEL(mm_q4_K, dot_q4_K)
SCALAR_KERNEL(mm_q6_K, dot_q6_K)
SCALAR_KERNEL(mm_q5_0, dot_q5_0)
SCALAR_KERNEL(mm_q5_1, dot_q5_1)
SCALAR_KERNEL(mm_q5_K, dot_q5_K)
SCALAR_KERNEL(mm_q3_K, dot_q3_K)
SCALAR_KERNEL(mm_q2_K, dot_q2_K)
SCALAR_KERNEL(mm_mxfp4, dot_mxfp4)
SCALAR_KERNEL(mm_f32, dot_f32)
SCALAR_KERNEL(mm_f16, dot_f16)
SCALAR_KERNEL(mm_bf16, dot_bf16)

void spk_mm_fill_scalar(spk_mm_table *t)
{
    memset(t, 0, sizeof *t);
    t->mm[SPK_DT_Q4_0] = mm_q4_0;
    t->mm[SPK_DT_Q4_1] = mm_q4_1;
    t->mm[SPK_DT_Q8_0] = mm_q8_0;
    t->mm[SPK_DT_Q4_K] = mm_q4_K;
    t->mm[SPK_DT_Q6_K] = mm_q6_K;
    t->mm[SPK_DT_Q5_0] = mm_q5_0;
    t->mm[SPK_DT_Q5_1] = mm_q5_1;
    t->mm[SPK_DT_Q5_K] = mm_q5_K;
    t->mm[SPK_DT_Q3_K] = mm_q3_K;
    t->mm[SPK_DT_Q2_K] = mm_q2_K;
    t->mm[SPK_DT_MXFP4] = mm_mxfp4;
    t->mm[SPK_DT_F32] = mm_f32;
    t->mm[SPK_DT_F16] = mm_f16;
    t->mm[SPK_DT_BF16] = mm_bf16;
    t->q8_quantize = spk_q8_quantize_row_ref;
    t->q8k_quantize = spk_q8k_quantize_row_ref;
}
