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

/* ---- K-quant unpacking (for the scalar dot products) ---------------------------------------- */

/* 6-bit scale and min of sub-block j (0..7) of a Q4_K super-block. */
static void q4k_scale_min(const uint8_t *s, int j, int *sc, int *m)
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
static void q6k_unpack(int8_t *q, const spk_block_q6_K *x)
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
        for (int j = 0; j < 8; j++) {
            const int ab = b * 8 + j; /* activation block */
            int sc, m, isum = 0;
            q4k_scale_min(w[b].scales, j, &sc, &m);
            for (int l = 0; l < 32; l++)
                isum += q[j * 32 + l] * a[ab * 32 + l];
            acc += d * (float)sc * ds[2 * ab] * (float)isum - dmin * (float)m * ds[2 * ab + 1];
        }
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
        q6k_unpack(q, &w[b]);
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
    t->mm[SPK_DT_F32] = mm_f32;
    t->mm[SPK_DT_F16] = mm_f16;
    t->mm[SPK_DT_BF16] = mm_bf16;
    t->q8_quantize = spk_q8_quantize_row_ref;
}
