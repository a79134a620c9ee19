/*
 * Reference quantizers for Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K and MXFP4: the algorithms of ggml's
 * quantize_row_*_ref (ggml/src/ggml-quants.c), rewritten here, so files we write hold the blocks
 * llama-quantize would write without an importance matrix. Used by tests and the synthetic-model
 * writer only; nothing on the inference path calls them.
 */
#include <math.h>
#include <string.h>

#include "cpu/quant.h"

/* ggml's nearest_int: round to nearest, ties to even, for |f| < 2^22. */
static int nearest_int(float f)
{
    float v = f + 12582912.0f;
    int32_t i;
    memcpy(&i, &v, 4);
    return (i & 0x007fffff) - 0x00400000;
}

static int clampi(int v, int lo, int hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

/* ---- Q5_0, Q5_1 --------------------------------------------------------------------------- */

static void pack_q5(uint8_t *qh4, uint8_t *qs, const uint8_t *q)
{
    uint32_t qh = 0;
    for (int j = 0; j < 16; j++) {
        qs[j] = (uint8_t)((q[j] & 15) | (q[j + 16] & 15) << 4);
        qh |= (uint32_t)((q[j] >> 4) & 1) << j;
        qh |= (uint32_t)((q[j + 16] >> 4) & 1) << (j + 16);
    }
    for (int k = 0; k < 4; k++)
        qh4[k] = (uint8_t)(qh >> (8 * k));
}

static void quant_q5_0(spk_block_q5_0 *y, const float *x, int nb)
{
    for (int b = 0; b < nb; b++, x += 32) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < 32; j++)
            if (amax < fabsf(x[j])) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        const float d = max / -16.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = spk_f32_to_f16(d);
        uint8_t q[32];
        for (int j = 0; j < 32; j++) {
            const int v = (int8_t)(x[j] * id + 16.5f); /* ggml truncates through int8_t */
            q[j] = (uint8_t)(v < 31 ? v : 31);
        }
        pack_q5(y[b].qh, y[b].qs, q);
    }
}

static void quant_q5_1(spk_block_q5_1 *y, const float *x, int nb)
{
    for (int b = 0; b < nb; b++, x += 32) {
        float min = x[0], max = x[0];
        for (int j = 1; j < 32; j++) {
            min = x[j] < min ? x[j] : min;
            max = x[j] > max ? x[j] : max;
        }
        const float d = (max - min) / 31.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = spk_f32_to_f16(d);
        y[b].m = spk_f32_to_f16(min);
        uint8_t q[32];
        for (int j = 0; j < 32; j++)
            q[j] = (uint8_t)((x[j] - min) * id + 0.5f);
        pack_q5(y[b].qh, y[b].qs, q);
    }
}

/* ---- MXFP4 -------------------------------------------------------------------------------- */

static void quant_mxfp4(spk_block_mxfp4 *y, const float *x, int nb)
{
    for (int b = 0; b < nb; b++, x += 32) {
        float amax = 0.0f;
        for (int j = 0; j < 32; j++)
            amax = fabsf(x[j]) > amax ? fabsf(x[j]) : amax;
        const uint8_t e = amax > 0.0f ? (uint8_t)(floorf(log2f(amax)) - 2 + 127) : 0;
        const float d = spk_e8m0_to_f32_half(e);
        y[b].e = e;
        uint8_t q[32];
        for (int j = 0; j < 32; j++) { /* nearest value; the first of equals wins */
            int best = 0;
            float berr = fabsf((float)spk_mxfp4_values[0] * d - x[j]);
            for (int i = 1; i < 16; i++) {
                const float err = fabsf((float)spk_mxfp4_values[i] * d - x[j]);
                if (err < berr) {
                    best = i;
                    berr = err;
                }
            }
            q[j] = (uint8_t)best;
        }
        for (int j = 0; j < 16; j++)
            y[b].qs[j] = (uint8_t)(q[j] | q[j + 16] << 4);
    }
}

/* ---- K-quant helpers (ggml's make_qkx2_quants and make_q3_quants) ---------------------------- */

/* Scale and min (returned in *the_min, as a positive offset) of n values with levels 0..nmax,
 * searching nstep+1 candidate scales for the least weighted error. */
static float make_qkx2(int n, int nmax, const float *x, const float *w, uint8_t *L, float *the_min,
                       uint8_t *Laux, float rmin, float rdelta, int nstep, int use_mad)
{
    float min = x[0], max = x[0], sum_w = w[0], sum_x = sum_w * x[0];
    for (int i = 1; i < n; i++) {
        min = x[i] < min ? x[i] : min;
        max = x[i] > max ? x[i] : max;
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if (min > 0)
        min = 0;
    if (max == min) {
        memset(L, 0, (size_t)n);
        *the_min = -min;
        return 0.0f;
    }
    float iscale = (float)nmax / (max - min), scale = 1 / iscale, best = 0;
    for (int i = 0; i < n; i++) {
        L[i] = (uint8_t)clampi(nearest_int(iscale * (x[i] - min)), 0, nmax);
        const float diff = scale * L[i] + min - x[i];
        best += w[i] * (use_mad ? fabsf(diff) : diff * diff);
    }
    for (int is = 0; is <= nstep; is++) {
        iscale = (rmin + rdelta * (float)is + (float)nmax) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; i++) {
            const int l = clampi(nearest_int(iscale * (x[i] - min)), 0, nmax);
            Laux[i] = (uint8_t)l;
            sum_l += w[i] * (float)l;
            sum_l2 += w[i] * (float)l * (float)l; /* (w*l)*l, as ggml rounds it */
            sum_xl += w[i] * (float)l * x[i];
        }
        const float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0) {
            float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
            float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
            if (this_min > 0) {
                this_min = 0;
                this_scale = sum_xl / sum_l2;
            }
            float err = 0;
            for (int i = 0; i < n; i++) {
                const float diff = this_scale * Laux[i] + this_min - x[i];
                err += w[i] * (use_mad ? fabsf(diff) : diff * diff);
            }
            if (err < best) {
                memcpy(L, Laux, (size_t)n);
                best = err;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *the_min = -min;
    return scale;
}

/* The value of largest magnitude among x[0..n) (the first of equals), 0 for none. */
static float signed_max(int n, const float *x)
{
    float max = 0, amax = 0;
    for (int i = 0; i < n; i++)
        if (fabsf(x[i]) > amax) {
            amax = fabsf(x[i]);
            max = x[i];
        }
    return max;
}

/* Signed scale of n values with levels -nmax..nmax-1 (L stores level + nmax), refined by
 * moving single values while the x^2-weighted error drops. */
static float make_q3(int n, int nmax, const float *x, int8_t *L)
{
    const float max = signed_max(n, x);
    if (fabsf(max) < 1e-15f) {
        memset(L, 0, (size_t)n);
        return 0.0f;
    }
    const float iscale = -(float)nmax / max;
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        const int l = clampi(nearest_int(iscale * x[i]), -nmax, nmax - 1);
        L[i] = (int8_t)l;
        const float w = x[i] * x[i];
        sumlx += w * x[i] * (float)l;
        suml2 += w * (float)l * (float)l;
    }
    for (int itry = 0; itry < 5; itry++) {
        int changed = 0;
        for (int i = 0; i < n; i++) {
            const float w = x[i] * x[i];
            float slx = sumlx - w * x[i] * (float)L[i];
            if (slx > 0) {
                float sl2 = suml2 - w * (float)L[i] * (float)L[i];
                const int nl = clampi(nearest_int(x[i] * sl2 / slx), -nmax, nmax - 1);
                if (nl != L[i]) {
                    slx += w * x[i] * (float)nl;
                    sl2 += w * (float)nl * (float)nl;
                    if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
                        L[i] = (int8_t)nl;
                        sumlx = slx;
                        suml2 = sl2;
                        changed++;
                    }
                }
            }
        }
        if (!changed)
            break;
    }
    for (int i = 0; i < n; i++)
        L[i] = (int8_t)(L[i] + nmax);
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

/* ggml's make_qx_quants with rmse_type 1 (x^2 weights) and no importance: signed levels
 * -nmax..nmax-1 (L stores level + nmax; 0 for an all-zero group), the scale of the best of 19
 * candidate inverse scales. */
static float make_qx(int n, int nmax, const float *x, int8_t *L)
{
    const float max = signed_max(n, x);
    if (fabsf(max) < 1e-15f) {
        memset(L, 0, (size_t)n);
        return 0.0f;
    }
    float iscale = -(float)nmax / max, sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        const int l = clampi(nearest_int(iscale * x[i]), -nmax, nmax - 1);
        L[i] = (int8_t)(l + nmax);
        const float w = x[i] * x[i];
        sumlx += w * x[i] * (float)l;
        suml2 += w * (float)l * (float)l;
    }
    float scale = suml2 != 0.0f ? sumlx / suml2 : 0.0f, best = scale * sumlx;
    for (int is = -9; is <= 9; is++) {
        if (is == 0)
            continue;
        iscale = -((float)nmax + 0.1f * (float)is) / max;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; i++) {
            const int l = clampi(nearest_int(iscale * x[i]), -nmax, nmax - 1);
            const float w = x[i] * x[i];
            sumlx += w * x[i] * (float)l;
            suml2 += w * (float)l * (float)l;
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; i++)
                L[i] = (int8_t)(nmax + clampi(nearest_int(iscale * x[i]), -nmax, nmax - 1));
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

/* Element order -> the 2-bit packing of Q2_K/Q3_K qs (element 128h + 32k + l at bits 2k of
 * byte 32h + l). */
static void pack_2bit(uint8_t *qs, const uint8_t *L)
{
    for (int h = 0; h < 2; h++)
        for (int l = 0; l < 32; l++)
            qs[32 * h + l] = (uint8_t)(L[128 * h + l] | L[128 * h + l + 32] << 2 |
                                       L[128 * h + l + 64] << 4 | L[128 * h + l + 96] << 6);
}

/* ---- Q2_K --------------------------------------------------------------------------------- */

static void quant_q2_K(spk_block_q2_K *y, const float *x, int nb)
{
    uint8_t L[SPK_QK_K], Laux[16];
    float w[16], mins[16], scales[16];
    for (int b = 0; b < nb; b++, x += SPK_QK_K) {
        float max_scale = 0, max_min = 0;
        for (int j = 0; j < 16; j++) {
            for (int l = 0; l < 16; l++)
                w[l] = fabsf(x[16 * j + l]);
            scales[j] = make_qkx2(16, 3, x + 16 * j, w, L + 16 * j, &mins[j], Laux, -0.5f, 0.1f, 15, 1);
            max_scale = scales[j] > max_scale ? scales[j] : max_scale;
            max_min = mins[j] > max_min ? mins[j] : max_min;
        }
        if (max_scale > 0) {
            const float iscale = 15.0f / max_scale;
            for (int j = 0; j < 16; j++)
                y[b].scales[j] = (uint8_t)nearest_int(iscale * scales[j]);
            y[b].d = spk_f32_to_f16(max_scale / 15.0f);
        } else {
            memset(y[b].scales, 0, 16);
            y[b].d = spk_f32_to_f16(0.0f);
        }
        if (max_min > 0) {
            const float iscale = 15.0f / max_min;
            for (int j = 0; j < 16; j++)
                y[b].scales[j] |= (uint8_t)(nearest_int(iscale * mins[j]) << 4);
            y[b].dmin = spk_f32_to_f16(max_min / 15.0f);
        } else {
            y[b].dmin = spk_f32_to_f16(0.0f);
        }
        for (int j = 0; j < 16; j++) {
            const float d = spk_f16_to_f32(y[b].d) * (float)(y[b].scales[j] & 15);
            if (d == 0.0f)
                continue;
            const float dm = spk_f16_to_f32(y[b].dmin) * (float)(y[b].scales[j] >> 4);
            for (int i = 0; i < 16; i++)
                L[16 * j + i] = (uint8_t)clampi(nearest_int((x[16 * j + i] + dm) / d), 0, 3);
        }
        pack_2bit(y[b].qs, L);
    }
}

/* ---- Q3_K --------------------------------------------------------------------------------- */

static void quant_q3_K(spk_block_q3_K *y, const float *x, int nb)
{
    int8_t L[SPK_QK_K];
    float scales[16];
    for (int b = 0; b < nb; b++, x += SPK_QK_K) {
        float max_scale = 0, amax = 0;
        for (int j = 0; j < 16; j++) {
            scales[j] = make_q3(16, 4, x + 16 * j, L + 16 * j);
            if (fabsf(scales[j]) > amax) {
                amax = fabsf(scales[j]);
                max_scale = scales[j];
            }
        }
        memset(y[b].scales, 0, 12);
        if (max_scale != 0.0f) {
            const float iscale = -32.0f / max_scale;
            for (int j = 0; j < 16; j++) {
                int l = clampi((int8_t)nearest_int(iscale * scales[j]), -32, 31) + 32;
                if (j < 8)
                    y[b].scales[j] = (uint8_t)(l & 15);
                else
                    y[b].scales[j - 8] |= (uint8_t)((l & 15) << 4);
                l >>= 4;
                y[b].scales[j % 4 + 8] |= (uint8_t)(l << (2 * (j / 4)));
            }
            y[b].d = spk_f32_to_f16(1 / iscale);
        } else {
            y[b].d = spk_f32_to_f16(0.0f);
        }
        for (int j = 0; j < 16; j++) {
            int sc = j < 8 ? y[b].scales[j] & 15 : y[b].scales[j - 8] >> 4;
            sc = (sc | ((y[b].scales[8 + j % 4] >> (2 * (j / 4))) & 3) << 4) - 32;
            const float d = spk_f16_to_f32(y[b].d) * (float)sc;
            if (d == 0.0f)
                continue;
            for (int i = 0; i < 16; i++)
                L[16 * j + i] = (int8_t)(clampi(nearest_int(x[16 * j + i] / d), -4, 3) + 4);
        }
        spk_q3k_set_codes(&y[b], (const uint8_t *)L);
    }
}

void spk_q3k_set_codes(spk_block_q3_K *y, const uint8_t c[SPK_QK_K])
{
    /* high bit: element j goes to hmask[j % 32] bit j / 32 */
    memset(y->hmask, 0, sizeof y->hmask);
    uint8_t lo[SPK_QK_K];
    for (int j = 0; j < SPK_QK_K; j++) {
        if (c[j] > 3)
            y->hmask[j % 32] |= (uint8_t)(1u << (j / 32));
        lo[j] = (uint8_t)(c[j] & 3);
    }
    pack_2bit(y->qs, lo);
}

void spk_q2k_set_codes(spk_block_q2_K *y, const uint8_t c[SPK_QK_K])
{
    pack_2bit(y->qs, c);
}

/* ---- Q5_K --------------------------------------------------------------------------------- */

/*
 * Q4_K and Q5_K's super-block (nmax 15 or 31, ggml's make_qkx2_quants parameters rmin, nstep):
 * the 8 sub-blocks' scales and mins into 6 bits each (scales[12], d, dmin) and the codes
 * L[256] (0..nmax) they give.
 */
static void kx_block(const float *x, int nmax, float rmin, int nstep, uint8_t scales[12], spk_f16 *dd,
                     spk_f16 *dmin, uint8_t L[SPK_QK_K])
{
    uint8_t Laux[32];
    float w[32], mins[8], sc[8], max_scale = 0, max_min = 0;
    for (int j = 0; j < 8; j++) {
        float sum_x2 = 0;
        for (int l = 0; l < 32; l++)
            sum_x2 += x[32 * j + l] * x[32 * j + l];
        const float av_x = sqrtf(sum_x2 / 32);
        for (int l = 0; l < 32; l++)
            w[l] = av_x + fabsf(x[32 * j + l]);
        sc[j] = make_qkx2(32, nmax, x + 32 * j, w, L + 32 * j, &mins[j], Laux, rmin, 0.1f, nstep, 0);
        max_scale = sc[j] > max_scale ? sc[j] : max_scale;
        max_min = mins[j] > max_min ? mins[j] : max_min;
    }
    const float inv_scale = max_scale > 0 ? 63.0f / max_scale : 0.0f;
    const float inv_min = max_min > 0 ? 63.0f / max_min : 0.0f;
    memset(scales, 0, 12);
    for (int j = 0; j < 8; j++) {
        uint8_t ls = (uint8_t)nearest_int(inv_scale * sc[j]);
        uint8_t lm = (uint8_t)nearest_int(inv_min * mins[j]);
        ls = ls < 63 ? ls : 63;
        lm = lm < 63 ? lm : 63;
        if (j < 4) {
            scales[j] = ls;
            scales[j + 4] = lm;
        } else {
            scales[j + 4] = (uint8_t)((ls & 15) | (lm & 15) << 4);
            scales[j - 4] |= (uint8_t)((ls >> 4) << 6);
            scales[j] |= (uint8_t)((lm >> 4) << 6);
        }
    }
    *dd = spk_f32_to_f16(max_scale / 63.0f);
    *dmin = spk_f32_to_f16(max_min / 63.0f);
    for (int j = 0; j < 8; j++) {
        int s, m;
        spk_q4k_scale_min(scales, j, &s, &m);
        const float d = spk_f16_to_f32(*dd) * (float)s;
        if (d == 0.0f)
            continue;
        const float dm = spk_f16_to_f32(*dmin) * (float)m;
        for (int i = 0; i < 32; i++)
            L[32 * j + i] = (uint8_t)clampi(nearest_int((x[32 * j + i] + dm) / d), 0, nmax);
    }
}

static void quant_q4_K(spk_block_q4_K *y, const float *x, int nb)
{
    uint8_t L[SPK_QK_K];
    for (int b = 0; b < nb; b++, x += SPK_QK_K) {
        kx_block(x, 15, -1.0f, 20, y[b].scales, &y[b].d, &y[b].dmin, L);
        for (int c = 0; c < 4; c++)
            for (int l = 0; l < 32; l++)
                y[b].qs[32 * c + l] = (uint8_t)(L[64 * c + l] | L[64 * c + 32 + l] << 4);
    }
}

static void quant_q5_K(spk_block_q5_K *y, const float *x, int nb)
{
    uint8_t L[SPK_QK_K];
    for (int b = 0; b < nb; b++, x += SPK_QK_K) {
        kx_block(x, 31, -0.5f, 15, y[b].scales, &y[b].d, &y[b].dmin, L);
        memset(y[b].qh, 0, sizeof y[b].qh);
        for (int c = 0; c < 4; c++)
            for (int l = 0; l < 32; l++) {
                int l1 = L[64 * c + l], l2 = L[64 * c + 32 + l];
                if (l1 > 15) {
                    l1 -= 16;
                    y[b].qh[l] |= (uint8_t)(1u << (2 * c));
                }
                if (l2 > 15) {
                    l2 -= 16;
                    y[b].qh[l] |= (uint8_t)(2u << (2 * c));
                }
                y[b].qs[32 * c + l] = (uint8_t)(l1 | l2 << 4);
            }
    }
}

/* ---- Q6_K --------------------------------------------------------------------------------- */

void spk_q6k_set_codes(spk_block_q6_K *y, const uint8_t c[SPK_QK_K])
{
    for (int n = 0; n < 2; n++)
        for (int l = 0; l < 32; l++) {
            const int v = 128 * n + l;
            y->ql[64 * n + l] = (uint8_t)((c[v] & 15) | (c[v + 64] & 15) << 4);
            y->ql[64 * n + l + 32] = (uint8_t)((c[v + 32] & 15) | (c[v + 96] & 15) << 4);
            y->qh[32 * n + l] = (uint8_t)((c[v] >> 4) | (c[v + 32] >> 4) << 2 | (c[v + 64] >> 4) << 4 |
                                          (c[v + 96] >> 4) << 6);
        }
}

static void quant_q6_K(spk_block_q6_K *y, const float *x, int nb)
{
    int8_t L[SPK_QK_K];
    float scales[SPK_QK_K / 16];
    for (int b = 0; b < nb; b++, x += SPK_QK_K) {
        float max_scale = 0, max_abs = 0;
        for (int j = 0; j < SPK_QK_K / 16; j++) {
            scales[j] = make_qx(16, 32, x + 16 * j, L + 16 * j);
            if (fabsf(scales[j]) > max_abs) {
                max_abs = fabsf(scales[j]);
                max_scale = scales[j];
            }
        }
        memset(&y[b], 0, sizeof y[b]);
        if (max_abs < 1e-15f)
            continue; /* d = 0: all zero */
        const float iscale = -128.0f / max_scale;
        y[b].d = spk_f32_to_f16(1 / iscale);
        for (int j = 0; j < SPK_QK_K / 16; j++) {
            const int v = nearest_int(iscale * scales[j]);
            y[b].scales[j] = (int8_t)(v < 127 ? v : 127);
        }
        for (int j = 0; j < SPK_QK_K / 16; j++) {
            const float d = spk_f16_to_f32(y[b].d) * (float)y[b].scales[j];
            if (d == 0.0f)
                continue;
            for (int i = 0; i < 16; i++)
                L[16 * j + i] = (int8_t)(clampi(nearest_int(x[16 * j + i] / d), -32, 31) + 32);
        }
        spk_q6k_set_codes(&y[b], (const uint8_t *)L);
    }
}

size_t spk_quantize_row_ref(void *dst, const float *x, spk_dtype t, int n)
{
    const spk_dtype_info *info = spk_dtype_get((uint32_t)t);
    if (!info || !dst || !x || n <= 0 || n % (int)info->block)
        return 0;
    const int nb = n / (int)info->block;
    switch (t) {
    case SPK_DT_Q5_0: quant_q5_0(dst, x, nb); break;
    case SPK_DT_Q5_1: quant_q5_1(dst, x, nb); break;
    case SPK_DT_Q2_K: quant_q2_K(dst, x, nb); break;
    case SPK_DT_Q3_K: quant_q3_K(dst, x, nb); break;
    case SPK_DT_Q4_K: quant_q4_K(dst, x, nb); break;
    case SPK_DT_Q5_K: quant_q5_K(dst, x, nb); break;
    case SPK_DT_Q6_K: quant_q6_K(dst, x, nb); break;
    case SPK_DT_MXFP4: quant_mxfp4(dst, x, nb); break;
    default: return 0;
    }
    return (size_t)nb * info->type_size;
}
