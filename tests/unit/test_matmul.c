/*
 * Quantized matmul kernels (cpu/matmul.c, cpu/quant.c, cpu/matmul_x86.c) against a float64
 * reference, for every weight type and every SIMD level this CPU can run.
 *
 * Weights are random blocks (random f16 scales, random quants), decoded by this file's own
 * dequantizers in double. Two references:
 *  - exact: sum w_i * x_i over the float activations. The activation quantizer rounds to nearest
 *    with d = amax/127 stored as f16 (relative error <= 2^-11), so |x_i - q_i * d16| <= d/2 +
 *    127 * d * 2^-11 < 0.57 d per element, and the result may differ by at most
 *    sum_blocks 0.57 d_b sum_{i in b} |w_i|, plus float rounding (below).
 *  - quantized: sum w_i * q_i * d16_b, decoding the documented activation layout. Only float
 *    rounding separates the kernel from it: the kernels sum exact integer block dots, scale them
 *    (3 roundings) and add at most n/32 + 2 terms per accumulator lane, so the error is below
 *    (n/32 + 16) * 2^-23 * S, where S bounds every partial sum: S = sum_i W_i (|a_i|), with W_i
 *    the largest weight magnitude any path forms (|d|(|q| + 128) for Q8_0, |d q| + |m| ...).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/dtype.h"
#include "cpu/features.h"
#include "cpu/matmul.h"
#include "cpu/ops.h"
#include "cpu/quant.h"
#include "testutil.h"

static const spk_dtype k_types[] = {SPK_DT_Q4_0, SPK_DT_Q4_1, SPK_DT_Q8_0, SPK_DT_Q4_K,
                                    SPK_DT_Q6_K, SPK_DT_F32,  SPK_DT_F16,  SPK_DT_BF16,
                                    SPK_DT_Q5_0, SPK_DT_Q5_1, SPK_DT_Q2_K, SPK_DT_Q3_K,
                                    SPK_DT_Q5_K, SPK_DT_MXFP4};
#define N_TYPES (int)(sizeof k_types / sizeof k_types[0])

static float f16r(uint64_t *s, float lo, float hi)
{
    float v = spk_test_randf(s, lo, hi);
    if (spk_test_rand(s) & 1)
        v = -v;
    return v;
}

/* ---- random weight rows and this test's own float64 decoders ------------------------------- */

static void fill_blocks(uint8_t *w, spk_dtype t, int n, int rows, uint64_t *s)
{
    const size_t rb = spk_dtype_row_size(t, (size_t)n);
    for (int r = 0; r < rows; r++) {
        uint8_t *row = w + (size_t)r * rb;
        for (size_t i = 0; i < rb; i++)
            row[i] = (uint8_t)spk_test_rand(s);
        const int nb = n / (int)spk_dtype_get(t)->block;
        for (int b = 0; b < nb; b++) {
            switch (t) {
            case SPK_DT_Q4_0: {
                spk_block_q4_0 *x = (spk_block_q4_0 *)row + b;
                x->d = spk_f32_to_f16(f16r(s, 0.001f, 0.02f));
                break;
            }
            case SPK_DT_Q4_1: {
                spk_block_q4_1 *x = (spk_block_q4_1 *)row + b;
                x->d = spk_f32_to_f16(f16r(s, 0.001f, 0.02f));
                x->m = spk_f32_to_f16(f16r(s, 0.01f, 0.15f));
                break;
            }
            case SPK_DT_Q8_0: {
                spk_block_q8_0 *x = (spk_block_q8_0 *)row + b;
                x->d = spk_f32_to_f16(f16r(s, 0.0001f, 0.002f));
                break; /* quants: all of -128..127 */
            }
            case SPK_DT_Q4_K: {
                spk_block_q4_K *x = (spk_block_q4_K *)row + b;
                x->d = spk_f32_to_f16(f16r(s, 0.0001f, 0.001f));
                x->dmin = spk_f32_to_f16(f16r(s, 0.0001f, 0.001f));
                break;
            }
            case SPK_DT_Q6_K: {
                spk_block_q6_K *x = (spk_block_q6_K *)row + b;
                x->d = spk_f32_to_f16(f16r(s, 0.00001f, 0.0002f));
                break;
            }
            case SPK_DT_Q5_0: {
                spk_block_q5_0 *x = (spk_block_q5_0 *)row + b;
                x->d = spk_f32_to_f16(f16r(s, 0.001f, 0.02f));
                break;
            }
            case SPK_DT_Q5_1: {
                spk_block_q5_1 *x = (spk_block_q5_1 *)row + b;
                x->d = spk_f32_to_f16(f16r(s, 0.001f, 0.02f));
                x->m = spk_f32_to_f16(f16r(s, 0.01f, 0.15f));
                break;
            }
            case SPK_DT_Q2_K: { /* scales and mins: all of 0..15 from the random bytes */
                spk_block_q2_K *x = (spk_block_q2_K *)row + b;
                x->d = spk_f32_to_f16(f16r(s, 0.0005f, 0.005f));
                x->dmin = spk_f32_to_f16(f16r(s, 0.0005f, 0.005f));
                break;
            }
            case SPK_DT_Q3_K: { /* scales: all of -32..31 */
                spk_block_q3_K *x = (spk_block_q3_K *)row + b;
                x->d = spk_f32_to_f16(f16r(s, 0.0001f, 0.002f));
                break;
            }
            case SPK_DT_Q5_K: {
                spk_block_q5_K *x = (spk_block_q5_K *)row + b;
                x->d = spk_f32_to_f16(f16r(s, 0.00005f, 0.0005f));
                x->dmin = spk_f32_to_f16(f16r(s, 0.0001f, 0.001f));
                break;
            }
            case SPK_DT_MXFP4: { /* e 118..133: 2^-10 .. 2^5 */
                spk_block_mxfp4 *x = (spk_block_mxfp4 *)row + b;
                x->e = (uint8_t)(118 + spk_test_rand(s) % 16);
                break;
            }
            case SPK_DT_F32:
                ((float *)row)[b] = f16r(s, 0.001f, 1.0f);
                break;
            case SPK_DT_F16:
                ((spk_f16 *)row)[b] = spk_f32_to_f16(f16r(s, 0.001f, 1.0f));
                break;
            case SPK_DT_BF16:
                ((uint16_t *)row)[b] = spk_f32_to_bf16(f16r(s, 0.001f, 1.0f));
                break;
            default:
                break;
            }
        }
    }
}

/* Decode n weights of one row: w[i] the value, mag[i] the largest magnitude a kernel may form
 * for it while summing (for the float-rounding bound). */
static void decode_row(double *w, double *mag, const uint8_t *row, spk_dtype t, int n)
{
    switch (t) {
    case SPK_DT_Q4_0:
    case SPK_DT_Q4_1:
        for (int b = 0; b < n / 32; b++) {
            const uint8_t *p = row + (size_t)b * (t == SPK_DT_Q4_0 ? 18 : 20);
            const uint16_t *h = (const uint16_t *)p;
            const double d = spk_f16_to_f32(h[0]);
            const double m = t == SPK_DT_Q4_1 ? spk_f16_to_f32(h[1]) : -8.0 * d;
            const uint8_t *qs = p + (t == SPK_DT_Q4_0 ? 2 : 4);
            for (int j = 0; j < 16; j++) {
                const int q0 = qs[j] & 15, q1 = qs[j] >> 4;
                w[32 * b + j] = d * q0 + m;
                w[32 * b + j + 16] = d * q1 + m;
                mag[32 * b + j] = fabs(d) * q0 + fabs(m);
                mag[32 * b + j + 16] = fabs(d) * q1 + fabs(m);
            }
        }
        break;
    case SPK_DT_Q8_0:
        for (int b = 0; b < n / 32; b++) {
            const spk_block_q8_0 *x = (const spk_block_q8_0 *)row + b;
            const double d = spk_f16_to_f32(x->d);
            for (int j = 0; j < 32; j++) {
                w[32 * b + j] = d * x->qs[j];
                mag[32 * b + j] = fabs(d) * (abs(x->qs[j]) + 128);
            }
        }
        break;
    case SPK_DT_Q4_K:
        for (int b = 0; b < n / 256; b++) {
            const spk_block_q4_K *x = (const spk_block_q4_K *)row + b;
            const double d = spk_f16_to_f32(x->d), dmin = spk_f16_to_f32(x->dmin);
            for (int sb = 0; sb < 8; sb++) {
                int sc, m;
                const uint8_t *k = x->scales;
                if (sb < 4) {
                    sc = k[sb] & 0x3f;
                    m = k[sb + 4] & 0x3f;
                } else {
                    sc = (k[sb + 4] & 0x0f) | ((k[sb - 4] & 0xc0) >> 2);
                    m = (k[sb + 4] >> 4) | ((k[sb] & 0xc0) >> 2);
                }
                for (int l = 0; l < 32; l++) {
                    const uint8_t byte = x->qs[(sb / 2) * 32 + l];
                    const int q = (sb & 1) ? byte >> 4 : byte & 15;
                    const int i = 256 * b + 32 * sb + l;
                    w[i] = d * sc * q - dmin * m;
                    mag[i] = fabs(d) * sc * q + fabs(dmin) * m;
                }
            }
        }
        break;
    case SPK_DT_Q6_K:
        for (int b = 0; b < n / 256; b++) {
            const spk_block_q6_K *x = (const spk_block_q6_K *)row + b;
            const double d = spk_f16_to_f32(x->d);
            for (int i = 0; i < 256; i++) {
                const int half = i / 128, j = i % 128, l = j % 32, quarter = j / 32;
                const uint8_t lo = x->ql[half * 64 + (quarter & 1) * 32 + l];
                const int low4 = quarter < 2 ? lo & 15 : lo >> 4;
                const int high2 = (x->qh[half * 32 + l] >> (2 * quarter)) & 3;
                const int q = (low4 | (high2 << 4)) - 32;
                w[256 * b + i] = d * x->scales[i / 16] * q;
                mag[256 * b + i] = fabs(d * x->scales[i / 16]) * (abs(q) + 64);
            }
        }
        break;
    case SPK_DT_Q5_0:
    case SPK_DT_Q5_1: /* d [m] qh[4] qs[16]: elements j and j+16 share qs[j]; qh bit i is element i's bit 4 */
        for (int b = 0; b < n / 32; b++) {
            const int q51 = t == SPK_DT_Q5_1;
            const uint8_t *p = row + (size_t)b * (q51 ? 24 : 22);
            const uint16_t *h = (const uint16_t *)p;
            const double d = spk_f16_to_f32(h[0]);
            const double m = q51 ? spk_f16_to_f32(h[1]) : -16.0 * d;
            const uint8_t *qh = p + (q51 ? 4 : 2), *qs = qh + 4;
            const uint32_t bits = qh[0] | qh[1] << 8 | qh[2] << 16 | (uint32_t)qh[3] << 24;
            for (int i = 0; i < 32; i++) {
                const int q = (i < 16 ? qs[i] & 15 : qs[i - 16] >> 4) | (int)((bits >> i) & 1) << 4;
                w[32 * b + i] = d * q + m;
                mag[32 * b + i] = fabs(d) * q + fabs(m);
            }
        }
        break;
    case SPK_DT_MXFP4:
        for (int b = 0; b < n / 32; b++) {
            const uint8_t *p = row + (size_t)b * 17;
            const double scale = ldexp(1.0, p[0] - 127); /* OCP: E8M0 2^(e-127) times E2M1 */
            static const double e2m1[8] = {0, 0.5, 1, 1.5, 2, 3, 4, 6};
            for (int i = 0; i < 32; i++) {
                const int nib = i < 16 ? p[1 + i] & 15 : p[1 + i - 16] >> 4;
                w[32 * b + i] = (nib & 8 ? -1 : 1) * e2m1[nib & 7] * scale;
                mag[32 * b + i] = fabs(w[32 * b + i]) + 6 * scale; /* x86 tile: value + 6 (offset 12 doubled) */
            }
        }
        break;
    case SPK_DT_Q2_K:
        for (int b = 0; b < n / 256; b++) {
            const spk_block_q2_K *x = (const spk_block_q2_K *)row + b;
            const double d = spk_f16_to_f32(x->d), dmin = spk_f16_to_f32(x->dmin);
            for (int i = 0; i < 256; i++) { /* 2 bits at qs[32*(i/128) + i%32] >> 2*((i%128)/32) */
                const int q = (x->qs[32 * (i / 128) + i % 32] >> (2 * ((i % 128) / 32))) & 3;
                const int sc = x->scales[i / 16] & 15, m = x->scales[i / 16] >> 4;
                w[256 * b + i] = d * sc * q - dmin * m;
                mag[256 * b + i] = fabs(d) * sc * q + fabs(dmin) * m;
            }
        }
        break;
    case SPK_DT_Q3_K:
        for (int b = 0; b < n / 256; b++) {
            const spk_block_q3_K *x = (const spk_block_q3_K *)row + b;
            const double d = spk_f16_to_f32(x->d);
            for (int i = 0; i < 256; i++) {
                const int j = i / 16; /* scale j: low 4 bits in scales[j%8] (nibble j/8), high 2 in scales[8+j%4] */
                const int sc = (((x->scales[j % 8] >> (4 * (j / 8))) & 15) |
                                ((x->scales[8 + j % 4] >> (2 * (j / 4))) & 3) << 4) - 32;
                const int lo = (x->qs[32 * (i / 128) + i % 32] >> (2 * ((i % 128) / 32))) & 3;
                const int hi = (x->hmask[i % 32] >> (i / 32)) & 1;
                const int q = lo - (hi ? 0 : 4);
                w[256 * b + i] = d * sc * q;
                mag[256 * b + i] = fabs(d * sc) * (abs(q) + 8);
            }
        }
        break;
    case SPK_DT_Q5_K:
        for (int b = 0; b < n / 256; b++) {
            const spk_block_q5_K *x = (const spk_block_q5_K *)row + b;
            const double d = spk_f16_to_f32(x->d), dmin = spk_f16_to_f32(x->dmin);
            for (int sb = 0; sb < 8; sb++) {
                int sc, m;
                const uint8_t *k = x->scales;
                if (sb < 4) {
                    sc = k[sb] & 0x3f;
                    m = k[sb + 4] & 0x3f;
                } else {
                    sc = (k[sb + 4] & 0x0f) | ((k[sb - 4] & 0xc0) >> 2);
                    m = (k[sb + 4] >> 4) | ((k[sb] & 0xc0) >> 2);
                }
                for (int l = 0; l < 32; l++) {
                    const uint8_t byte = x->qs[(sb / 2) * 32 + l];
                    const int q = ((sb & 1) ? byte >> 4 : byte & 15) | ((x->qh[l] >> sb) & 1) << 4;
                    const int i = 256 * b + 32 * sb + l;
                    w[i] = d * sc * q - dmin * m;
                    mag[i] = fabs(d) * sc * q + fabs(dmin) * m;
                }
            }
        }
        break;
    case SPK_DT_F32:
        for (int i = 0; i < n; i++)
            w[i] = ((const float *)row)[i];
        break;
    case SPK_DT_F16:
        for (int i = 0; i < n; i++)
            w[i] = spk_f16_to_f32(((const spk_f16 *)row)[i]);
        break;
    case SPK_DT_BF16:
        for (int i = 0; i < n; i++)
            w[i] = spk_bf16_to_f32(((const uint16_t *)row)[i]);
        break;
    default:
        break;
    }
    if (t == SPK_DT_F32 || t == SPK_DT_F16 || t == SPK_DT_BF16)
        for (int i = 0; i < n; i++)
            mag[i] = fabs(w[i]);
}

static int is_float(spk_dtype t)
{
    return t == SPK_DT_F32 || t == SPK_DT_F16 || t == SPK_DT_BF16;
}

/* The activation values the kernels see, decoded from the documented Q8 planar layout (for
 * K-quant weights, that of the K-quant section, one scale per 256). */
static void decode_act(double *a, double *dblk, const uint8_t *act, spk_dtype t, int n)
{
    if (is_float(t)) {
        for (int i = 0; i < n; i++)
            a[i] = ((const float *)act)[i];
        return;
    }
    if (spk_dtype_get((uint32_t)t)->block == 256) /* K-quants read the rows' K-quant section */
        act += spk_q8_row_bytes(n);
    const int8_t *q = (const int8_t *)act;
    const float *ds = (const float *)(act + n);
    for (int i = 0; i < n; i++) {
        a[i] = q[i] * (double)ds[2 * (i / 32)];
        dblk[i / 32] = ds[2 * (i / 32)];
    }
}

/* ---- the check ------------------------------------------------------------------------------ */

static int n_isas(int *isas)
{
    int k = 0;
    for (int i = 0; i < SPK_ISA_COUNT; i++)
        if (spk_matmul_isa_usable(i))
            isas[k++] = i;
    return k;
}

static void use_isa(int isa)
{
    spk_cpu_force_scalar(isa == SPK_ISA_SCALAR);
    spk_matmul_force_isa(isa);
}

static int is_kquant(spk_dtype t)
{
    return spk_dtype_get((uint32_t)t)->block == 256;
}

static void check_case(spk_dtype t, int n_in, int n_out, int n_tok, int row0, int row1, uint64_t seed)
{
    uint64_t s = seed;
    const size_t rb = spk_dtype_row_size(t, (size_t)n_in);
    uint8_t *w = malloc(rb * (size_t)n_out);
    float *x = malloc(sizeof(float) * (size_t)n_in * (size_t)n_tok);
    const size_t asz = spk_act_size(t, n_in, n_tok);
    ck_assert_uint_gt(asz, 0);
    uint8_t *act = malloc(asz);
    const int ld = n_out + 3;
    float *out = malloc(sizeof(float) * (size_t)ld * (size_t)n_tok);
    double *wd = malloc(sizeof(double) * (size_t)n_in * (size_t)n_out);
    double *mag = malloc(sizeof(double) * (size_t)n_in * (size_t)n_out);
    double *ad = malloc(sizeof(double) * (size_t)n_in);
    double *dblk = malloc(sizeof(double) * (size_t)(n_in / 32 + 1));
    ck_assert(w && x && act && out && wd && mag && ad && dblk);

    fill_blocks(w, t, n_in, n_out, &s);
    for (int r = 0; r < n_out; r++)
        decode_row(wd + (size_t)r * n_in, mag + (size_t)r * n_in, w + (size_t)r * rb, t, n_in);
    for (int i = 0; i < n_in * n_tok; i++)
        x[i] = f16r(&s, 0.01f, 2.0f) * (i % 37 == 5 ? 8.0f : 1.0f); /* some outliers */

    int isas[SPK_ISA_COUNT];
    const int ni = n_isas(isas);
    for (int k = 0; k < ni; k++) {
        use_isa(isas[k]);
        /* quantize in two thread-like slices */
        spk_act_quantize(act, t, x, n_in, 0, n_tok / 2);
        spk_act_quantize(act, t, x, n_in, n_tok / 2, n_tok);
        for (int i = 0; i < ld * n_tok; i++)
            out[i] = -12345.0f;
        spk_matmul(out, ld, w, t, act, n_in, n_tok, row0, row1);
        const size_t arow = asz / (size_t)n_tok;
        for (int tk = 0; tk < n_tok; tk++) {
            const float *xt = x + (size_t)tk * n_in;
            decode_act(ad, dblk, act + (size_t)tk * arow, t, n_in);
            for (int r = 0; r < ld; r++) {
                const float got = out[(size_t)tk * ld + r];
                if (r < row0 || r >= row1) {
                    ck_assert_msg(got == -12345.0f, "%s isa %d: wrote row %d outside [%d,%d)",
                                  spk_dtype_get(t)->name, isas[k], r, row0, row1);
                    continue;
                }
                const double *wr = wd + (size_t)r * n_in, *mr = mag + (size_t)r * n_in;
                double exact = 0, quant = 0, qbound = 0, smag = 0;
                for (int i = 0; i < n_in; i++) {
                    exact += wr[i] * xt[i];
                    quant += wr[i] * ad[i];
                    smag += mr[i] * (fabs(xt[i]) + fabs(ad[i]));
                    if (!is_float(t))
                        qbound += 0.57 * dblk[i / 32] * fabs(wr[i]);
                }
                const double fbound = (n_in + 16) * ldexp(1.0, -23) * smag + 1e-30;
                ck_assert_msg(fabs(got - quant) <= fbound,
                              "%s isa %d n_in %d tok %d/%d row %d: got %.9g, quantized-act ref %.9g "
                              "(diff %.3g > bound %.3g)",
                              spk_dtype_get(t)->name, isas[k], n_in, tk, n_tok, r, got, quant,
                              fabs(got - quant), fbound);
                ck_assert_msg(fabs(got - exact) <= qbound + fbound,
                              "%s isa %d n_in %d tok %d/%d row %d: got %.9g, exact ref %.9g "
                              "(diff %.3g > bound %.3g)",
                              spk_dtype_get(t)->name, isas[k], n_in, tk, n_tok, r, got, exact,
                              fabs(got - exact), qbound + fbound);
            }
        }
    }
    use_isa(-1);
    spk_cpu_force_scalar(0);
    free(w);
    free(x);
    free(act);
    free(out);
    free(wd);
    free(mag);
    free(ad);
    free(dblk);
}

static const int k_ntok[] = {1, 3, 4, 7, 16};

/* _i indexes k_types: every type, both a short odd-block row and a model-sized row. */
START_TEST(test_matmul_matches_float64_reference)
{
    const spk_dtype t = k_types[_i];
    const int kq = is_kquant(t);
    const int sizes[2] = {is_float(t) ? 37 : kq ? 256 : 96, is_float(t) ? 203 : kq ? 512 : 576};
    for (int si = 0; si < 2; si++)
        for (size_t ti = 0; ti < sizeof k_ntok / sizeof k_ntok[0]; ti++) {
            const int nt = k_ntok[ti];
            check_case(t, sizes[si], 23, nt, 0, 23, 100u + (uint64_t)(_i * 10 + si) * 7 + ti);
            check_case(t, sizes[si], 23, nt, 3, 22, 200u + (uint64_t)(_i * 10 + si) * 7 + ti);
            check_case(t, sizes[si], 23, nt, 5, 6, 300u + (uint64_t)(_i * 10 + si) * 7 + ti);
        }
}
END_TEST

/* Many rows and more than 4 tokens: the kernels cut rows into cache-sized chunks and run every
 * token group over each chunk; chunk and tile edges must not lose or repeat rows. */
START_TEST(test_matmul_chunked_rows)
{
    const spk_dtype t = k_types[_i];
    const int kq = is_kquant(t);
    const int n_in = is_float(t) ? 203 : kq ? 256 : 576;
    check_case(t, n_in, 401, 5, 7, 398, 500u + (uint64_t)_i);
    check_case(t, n_in, 401, 16, 0, 401, 600u + (uint64_t)_i);
}
END_TEST

/* The SIMD activation quantizers give the reference's bytes exactly, including ties (x.5 rounds
 * away from zero), zero blocks and blocks whose amax is tiny. */
START_TEST(test_act_quantize_matches_reference_bitwise)
{
    enum { N = 32 * 12 };
    float x[N];
    uint64_t s = 77;
    for (int i = 0; i < N; i++)
        x[i] = f16r(&s, 0.0f, 3.0f);
    for (int j = 0; j < 32; j++) {
        x[j] = (float)j - 15.5f;  /* block 0: amax 127 below makes d == 1: exact ties */
        x[32 + j] = 0.0f;         /* block 1: all zero */
        x[64 + j] = 1e-30f * (float)(j - 16); /* block 2: tiny */
    }
    x[31] = 127.0f;
    x[5] = -2.5f;
    x[6] = 2.5f;
    const size_t sz = spk_q8_row_bytes(N);
    uint8_t *ref = calloc(1, sz), *got = calloc(1, sz);
    ck_assert(ref && got);
    spk_q8_quantize_row_ref(ref, x, N);
    ck_assert_int_eq(((const int8_t *)ref)[5], -3);
    ck_assert_int_eq(((const int8_t *)ref)[6], 3);
    ck_assert_int_eq(((const int8_t *)ref)[31], 127);
    int isas[SPK_ISA_COUNT];
    const int ni = n_isas(isas);
    for (int k = 0; k < ni; k++) {
        use_isa(isas[k]);
        memset(got, 0xAA, sz);
        spk_act_quantize(got, SPK_DT_Q4_1, x, N, 0, 1);
        ck_assert_msg(memcmp(ref, got, (size_t)N + 8 * (N / 32)) == 0, "isa %s differs from reference",
                      spk_matmul_isa_name());
    }
    use_isa(-1);
    /* every element within d/2 + the f16 rounding of d */
    const int8_t *q = (const int8_t *)ref;
    const float *ds = (const float *)(ref + N);
    for (int i = 0; i < N; i++) {
        const double d = ds[2 * (i / 32)];
        if (i / 32 == 2)
            continue; /* d below the f16 range rounds to 0, as in the reference format */
        ck_assert_msg(fabs(x[i] - q[i] * d) <= 0.57 * d + 1e-37, "element %d: %g vs %d*%g", i,
                      (double)x[i], q[i], d);
    }
    for (int b = 0; b < N / 32; b++) {
        int sum = 0;
        for (int j = 0; j < 32; j++)
            sum += q[32 * b + j];
        ck_assert(ds[2 * b + 1] == ds[2 * b] * (float)sum);
    }
    free(ref);
    free(got);
}
END_TEST

/* K-quant weights, every batch size 1..17 (the tiles take 1, 2, 3, 4 and 8 tokens, leftovers
 * in smaller tiles), an odd row count with ranges that start and end mid-tile, 1 and 3
 * super-blocks per row. */
START_TEST(test_kquant_batches)
{
    static const spk_dtype kt[] = {SPK_DT_Q2_K, SPK_DT_Q3_K, SPK_DT_Q4_K, SPK_DT_Q5_K, SPK_DT_Q6_K};
    const spk_dtype t = kt[_i];
    for (int nt = 1; nt <= 17; nt++) {
        check_case(t, 256, 37, nt, 0, 37, 700u + (uint64_t)(_i * 40 + nt));
        check_case(t, 768, 19, nt, 3, 18, 800u + (uint64_t)(_i * 40 + nt));
    }
}
END_TEST

/* The 8-row tiles (x86 Q4_0 and Q4_1, cpu/matmul_x86_q45.c; Q4_K matmul_x86_q4k.c
 * alike): every batch size 1..17 (tiles of 1, 2, 3, 4 and 8 tokens), row ranges that start off
 * a multiple of 8 and leave rows for the per-row kernels, 1 and several blocks per row. */
START_TEST(test_gemm8_tiles)
{
    static const spk_dtype gt[] = {SPK_DT_Q4_0, SPK_DT_Q4_1, SPK_DT_Q4_K};
    const spk_dtype t = gt[_i];
    const int kq = is_kquant(t);
    for (int nt = 1; nt <= 17; nt++) {
        check_case(t, kq ? 256 : 32, 37, nt, 0, 37, 900u + (uint64_t)(_i * 40 + nt));
        check_case(t, kq ? 768 : 224, 29, nt, 3, 28, 1000u + (uint64_t)(_i * 40 + nt));
    }
}
END_TEST

/* A token's result does not depend on the batch it comes in: every type, every ISA, 13 tokens at
 * once against each token alone, bit for bit (incremental decode must match batched prefill;
 * the 8-row tiles and the per-row kernels sum in different orders, so each row must take the
 * same kernel at every batch size). */
START_TEST(test_batch_invariant)
{
    const spk_dtype t = k_types[_i];
    const int kq = is_kquant(t), n_in = is_float(t) ? 203 : kq ? 512 : 576, n_out = 45, nt = 13;
    const size_t rb = spk_dtype_row_size(t, (size_t)n_in), asz = spk_act_size(t, n_in, nt);
    uint8_t *w = malloc(rb * n_out), *act = malloc(asz);
    float *x = malloc(sizeof(float) * (size_t)n_in * nt), *all = malloc(sizeof(float) * n_out * nt),
          *one = malloc(sizeof(float) * n_out);
    ck_assert(w && act && x && all && one);
    uint64_t s = 4000u + (uint64_t)_i;
    fill_blocks(w, t, n_in, n_out, &s);
    for (int i = 0; i < n_in * nt; i++)
        x[i] = f16r(&s, 0.01f, 2.0f);
    int isas[SPK_ISA_COUNT];
    const int ni = n_isas(isas);
    for (int k = 0; k < ni; k++) {
        use_isa(isas[k]);
        spk_act_quantize(act, t, x, n_in, 0, nt);
        spk_matmul(all, n_out, w, t, act, n_in, nt, 3, n_out); /* rows off the 8-row grid */
        const size_t arow = asz / (size_t)nt;
        for (int tk = 0; tk < nt; tk++) {
            spk_matmul(one, n_out, w, t, act + (size_t)tk * arow, n_in, 1, 3, n_out);
            for (int r = 3; r < n_out; r++)
                ck_assert_msg(memcmp(&one[r], &all[(size_t)tk * n_out + r], sizeof(float)) == 0,
                              "%s isa %d token %d row %d: alone %.9g, in a batch of %d %.9g",
                              spk_dtype_get(t)->name, isas[k], tk, r, one[r], nt, all[(size_t)tk * n_out + r]);
        }
    }
    use_isa(-1);
    spk_cpu_force_scalar(0);
    free(w);
    free(act);
    free(x);
    free(all);
    free(one);
}
END_TEST

/* Weights repacked at load (cpu/repack.c), for each packed type (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, MXFP4, Q3_K-Q6_K): the packed matrix
 * has the file's size, every row unpacks to the file's bytes, and spk_matmul_layout gives
 * spk_matmul's results bit for bit at every ISA (AVX2: the packed tile; others: the unpack
 * fallback) for batches 1..17, row counts off the 8-row grid (leftover rows in the file's
 * layout), row ranges cut inside a group and the 16-row thread shares, several n_in. 45 and 64
 * rows give the Q8_0 and MXFP4 batch-1 kernels whole sets of 4 groups and groups left over. */
START_TEST(test_repack_matches_unpacked)
{
    static const int n_ins[] = {32, 224, 576}, n_ins_k[] = {256, 512, 1280};
    static const int n_outs[] = {8, 13, 45, 64};
    static const spk_dtype types[] = {SPK_DT_Q4_0, SPK_DT_Q8_0, SPK_DT_MXFP4, SPK_DT_Q4_K, SPK_DT_Q6_K, SPK_DT_Q5_K,
                                      SPK_DT_Q3_K, SPK_DT_Q5_0, SPK_DT_Q5_1, SPK_DT_Q4_1, SPK_DT_Q2_K};
    const spk_dtype t = types[_i / 3];
    const int n_in = spk_dtype_get((uint32_t)t)->block == 256 ? n_ins_k[_i % 3] : n_ins[_i % 3], nt_max = 17;
    int isas[SPK_ISA_COUNT];
    const int ni = n_isas(isas);
    for (size_t oi = 0; oi < sizeof n_outs / sizeof *n_outs; oi++) {
        const int n_out = n_outs[oi];
        const size_t rb = spk_dtype_row_size(t, (size_t)n_in), asz = spk_act_size(t, n_in, nt_max);
        uint8_t *w = malloc(rb * (size_t)n_out), *p = malloc(rb * (size_t)n_out), *row = malloc(rb), *act = malloc(asz);
        float *x = malloc(sizeof(float) * (size_t)n_in * nt_max);
        float *a = malloc(sizeof(float) * (size_t)n_out * nt_max), *b = malloc(sizeof(float) * (size_t)n_out * nt_max);
        ck_assert(w && p && row && act && x && a && b);
        uint64_t s = 7000u + (uint64_t)(_i * 10) + oi;
        fill_blocks(w, t, n_in, n_out, &s);
        for (int i = 0; i < n_in * nt_max; i++)
            x[i] = f16r(&s, 0.01f, 2.0f);
        ck_assert_int_eq(spk_matmul_pack(p, w, t, SPK_MM_LAYOUT_R8, n_in, n_out, 0), 0);
        if (n_out >= 8) /* the first group is not the file's bytes any more */
            ck_assert(memcmp(p, w, 8 * rb) != 0);
        { /* packed in place (a TP rank's own column slices): the same bytes */
            uint8_t *q = malloc(rb * (size_t)n_out);
            ck_assert(q);
            memcpy(q, w, rb * (size_t)n_out);
            ck_assert_int_eq(spk_matmul_pack(q, q, t, SPK_MM_LAYOUT_R8, n_in, n_out, 0), 0);
            ck_assert_msg(memcmp(q, p, rb * (size_t)n_out) == 0, "n_in %d n_out %d: packed in place differs", n_in,
                          n_out);
            free(q);
        }
        for (int r = 0; r < n_out; r++) {
            ck_assert_int_eq(spk_matmul_unpack_row(row, p, t, SPK_MM_LAYOUT_R8, n_in, n_out, r), 0);
            ck_assert_msg(memcmp(row, w + (size_t)r * rb, rb) == 0, "n_in %d n_out %d: row %d unpacks wrong", n_in,
                          n_out, r);
        }
        /* row ranges as threads get them (spk_split: starts on the 16-row grid, ends there or
         * at n_out), where the file layout's tiles sit on the same 8-row groups */
        const int ranges[][2] = {{0, n_out}, {0, n_out < 16 ? n_out : 16}, {n_out < 16 ? 0 : 16, n_out},
                                 {n_out < 16 ? 0 : 8, n_out}};
        for (int k = 0; k < ni; k++) {
            use_isa(isas[k]);
            for (int nt = 1; nt <= nt_max; nt++) {
                spk_act_quantize(act, t, x, n_in, 0, nt);
                for (size_t q = 0; q < sizeof ranges / sizeof *ranges; q++) {
                    const int r0 = ranges[q][0], r1 = ranges[q][1];
                    memset(a, 0, sizeof(float) * (size_t)n_out * nt);
                    memset(b, 0, sizeof(float) * (size_t)n_out * nt);
                    spk_matmul(a, n_out, w, t, act, n_in, nt, r0, r1);
                    spk_matmul_layout(b, n_out, p, t, SPK_MM_LAYOUT_R8, n_out, act, n_in, nt, r0, r1);
                    for (int i = 0; i < n_out * nt; i++)
                        ck_assert_msg(memcmp(&a[i], &b[i], sizeof(float)) == 0,
                                      "isa %s n_in %d n_out %d tokens %d rows [%d,%d): token %d row %d: file layout "
                                      "%.9g, packed %.9g", spk_matmul_isa_name(), n_in, n_out, nt, r0, r1, i / n_out,
                                      i % n_out, a[i], b[i]);
                }
                /* a range cut inside groups: a packed row's result does not depend on the range */
                const int c0 = 3, c1 = n_out - 2 > 3 ? n_out - 2 : n_out;
                spk_matmul_layout(a, n_out, p, t, SPK_MM_LAYOUT_R8, n_out, act, n_in, nt, 0, n_out);
                memset(b, 0, sizeof(float) * (size_t)n_out * nt);
                spk_matmul_layout(b, n_out, p, t, SPK_MM_LAYOUT_R8, n_out, act, n_in, nt, c0, c1);
                for (int tk = 0; tk < nt; tk++)
                    for (int r = 0; r < n_out; r++) {
                        const float want = r >= c0 && r < c1 ? a[tk * n_out + r] : 0.0f;
                        ck_assert_msg(memcmp(&want, &b[tk * n_out + r], sizeof(float)) == 0,
                                      "isa %s n_in %d n_out %d tokens %d rows [%d,%d): token %d row %d: %.9g, "
                                      "want %.9g", spk_matmul_isa_name(), n_in, n_out, nt, c0, c1, tk, r,
                                      b[tk * n_out + r], want);
                    }
            }
        }
        use_isa(-1);
        spk_cpu_force_scalar(0);
        free(w);
        free(p);
        free(row);
        free(act);
        free(x);
        free(a);
        free(b);
    }
}
END_TEST

/* Which layouts exist: every quantized type packs (and on an AVX2 machine the kernels in use want it);
 * float types and bad arguments are refused, not packed wrong. */
/* VmRSS or VmHWM of this process in KiB (-1 if /proc cannot tell). */
static long proc_kib(const char *key)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    const size_t kl = strlen(key);
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, key, kl) == 0 && line[kl] == ':')
            v = strtol(line + kl + 1, NULL, 10);
    if (f)
        fclose(f);
    return v;
}

/* Packing with drop reads the matrix a chunk at a time and drops each chunk's whole pages as it
 * goes (a mapped matrix is never held twice): from a private anonymous mapping, where a dropped
 * page reads back as zeros, the packed bytes equal packing a copy without drop, every whole page
 * inside the matrix is dropped, and the bytes sharing its first and last pages are untouched.
 * As it goes: in a child process (its own peak), packing a resident 16 MiB anonymous matrix into
 * a fresh buffer raises the peak resident memory by a few chunks, not by the matrix (anonymous
 * pages only: nothing here depends on the page cache). */
START_TEST(test_repack_drop_releases_whole_pages_only)
{
    const long pg = sysconf(_SC_PAGESIZE);
    const spk_dtype t = SPK_DT_Q4_0;
    const int n_in = 4096, n_out = 8 * 150 + 3; /* about 2.7 MiB: three chunks and leftover rows */
    const size_t rb = spk_dtype_row_size(t, (size_t)n_in), bytes = rb * (size_t)n_out, off = 100;
    ck_assert(SPK_PACK_CHUNK < bytes / 2);
    const size_t map = (off + bytes + 2 * (size_t)pg) & ~((size_t)pg - 1);
    uint8_t *m = mmap(NULL, map, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ck_assert(m != MAP_FAILED);
    memset(m, 0xA5, map); /* canaries around the matrix */
    uint8_t *src = m + off, *copy = malloc(bytes), *want = malloc(bytes), *got = malloc(bytes);
    ck_assert(copy && want && got);
    uint64_t s = 4242;
    fill_blocks(src, t, n_in, n_out, &s);
    memcpy(copy, src, bytes);
    ck_assert_int_eq(spk_matmul_pack(want, copy, t, SPK_MM_LAYOUT_R8, n_in, n_out, 0), 0);
    ck_assert_int_eq(spk_matmul_pack(got, src, t, SPK_MM_LAYOUT_R8, n_in, n_out, 1), 0);
    ck_assert(memcmp(got, want, bytes) == 0);
    const size_t a = ((size_t)off + (size_t)pg - 1) & ~((size_t)pg - 1), e = (off + bytes) & ~((size_t)pg - 1);
    for (size_t i = 0; i < map; i++) {
        const int inside = i >= off && i < off + bytes;
        if (i >= a && i < e)
            ck_assert_msg(m[i] == 0, "byte %zu of a whole page inside the matrix was not dropped", i);
        else if (!inside)
            ck_assert_msg(m[i] == 0xA5, "byte %zu outside the matrix changed", i);
        else
            ck_assert_msg(m[i] == copy[i - off], "byte %zu on a page shared with other data changed", i);
    }
    munmap(m, map);
    free(copy), free(want), free(got);

    const pid_t pid = fork();
    ck_assert(pid >= 0);
    if (pid == 0) {
        const int big_out = 8 * 910; /* 16 MiB of Q4_0 rows */
        const size_t big = rb * (size_t)big_out;
        uint8_t *bs = mmap(NULL, big, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        uint8_t *bd = mmap(NULL, big, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (bs == MAP_FAILED || bd == MAP_FAILED)
            _exit(2);
        memset(bs, 0x11, big); /* resident; any bytes pack */
        const long before = proc_kib("VmRSS");
        if (spk_matmul_pack(bd, bs, t, SPK_MM_LAYOUT_R8, n_in, big_out, 1) != 0)
            _exit(3);
        const long peak = proc_kib("VmHWM");
        if (before < 0 || peak < 0)
            _exit(4);
        fprintf(stderr, "repack drop: peak %ld KiB above the %zu KiB matrix's resident start\n", peak - before,
                big >> 10);
        _exit(peak - before < 8192 ? 0 : 1); /* without the drop: + 16 MiB */
    }
    int st = 0;
    ck_assert(waitpid(pid, &st, 0) == pid);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0,
                  "packing with drop held the original and its copy at once (child status %d)", st);
}
END_TEST

START_TEST(test_repack_layouts)
{
    uint8_t src[18 * 8], dst[18 * 8], row[18];
    memset(src, 1, sizeof src);
    ck_assert(spk_matmul_layout_known(SPK_DT_Q4_0, SPK_MM_LAYOUT_R8));
    ck_assert(spk_matmul_layout_known(SPK_DT_Q8_0, SPK_MM_LAYOUT_R8));
    ck_assert(spk_matmul_layout_known(SPK_DT_MXFP4, SPK_MM_LAYOUT_R8));
    ck_assert(spk_matmul_layout_known(SPK_DT_Q4_K, SPK_MM_LAYOUT_R8));
    ck_assert(spk_matmul_layout_known(SPK_DT_Q6_K, SPK_MM_LAYOUT_R8));
    ck_assert(spk_matmul_layout_known(SPK_DT_Q5_K, SPK_MM_LAYOUT_R8));
    ck_assert(spk_matmul_layout_known(SPK_DT_Q3_K, SPK_MM_LAYOUT_R8));
    ck_assert(spk_matmul_layout_known(SPK_DT_Q5_0, SPK_MM_LAYOUT_R8));
    ck_assert(spk_matmul_layout_known(SPK_DT_Q5_1, SPK_MM_LAYOUT_R8));
    ck_assert(spk_matmul_layout_known(SPK_DT_Q4_1, SPK_MM_LAYOUT_R8));
    ck_assert(spk_matmul_layout_known(SPK_DT_Q2_K, SPK_MM_LAYOUT_R8));
    ck_assert(spk_matmul_layout_known(SPK_DT_F16, SPK_MM_LAYOUT_ROWS));
    ck_assert(!spk_matmul_layout_known(SPK_DT_F16, SPK_MM_LAYOUT_R8));
    ck_assert_int_eq(spk_matmul_pack(dst, src, SPK_DT_F16, SPK_MM_LAYOUT_R8, 32, 4, 0), -1);
    ck_assert_int_eq(spk_matmul_pack(dst, src, SPK_DT_Q4_0, SPK_MM_LAYOUT_R8, 31, 8, 0), -1);
    ck_assert_int_eq(spk_matmul_pack(src, src, SPK_DT_Q4_0, SPK_MM_LAYOUT_R8, 32, 8, 1), -1); /* in place: no drop */
    ck_assert_int_eq(spk_matmul_unpack_row(row, src, SPK_DT_Q4_0, SPK_MM_LAYOUT_R8, 32, 8, 8), -1);
    ck_assert_int_eq(spk_matmul_unpack_row(row, src, SPK_DT_Q4_0, 7, 32, 8, 0), -1);
    /* the AVX-512 level packs what AVX2 packs: it runs the AVX2 kernels of these types */
    const int want = spk_matmul_isa_usable(SPK_ISA_AVX2) && !spk_cpu_scalar_forced() ? SPK_MM_LAYOUT_R8
                                                                                      : SPK_MM_LAYOUT_ROWS;
    ck_assert_int_eq(spk_matmul_pack_layout(SPK_DT_Q4_0, 64), want);
    ck_assert_int_eq(spk_matmul_pack_layout(SPK_DT_Q8_0, 64), want);
    ck_assert_int_eq(spk_matmul_pack_layout(SPK_DT_Q5_0, 64), want);
    ck_assert_int_eq(spk_matmul_pack_layout(SPK_DT_Q5_1, 64), want);
    ck_assert_int_eq(spk_matmul_pack_layout(SPK_DT_MXFP4, 64), want);
    ck_assert_int_eq(spk_matmul_pack_layout(SPK_DT_Q4_K, 256), want);
    ck_assert_int_eq(spk_matmul_pack_layout(SPK_DT_Q6_K, 256), want);
    ck_assert_int_eq(spk_matmul_pack_layout(SPK_DT_Q5_K, 256), want);
    ck_assert_int_eq(spk_matmul_pack_layout(SPK_DT_Q3_K, 256), want);
    ck_assert_int_eq(spk_matmul_pack_layout(SPK_DT_Q4_K, 64), SPK_MM_LAYOUT_ROWS);
    ck_assert_int_eq(spk_matmul_pack_layout(SPK_DT_Q4_1, 64), want);
    ck_assert_int_eq(spk_matmul_pack_layout(SPK_DT_Q2_K, 256), want);
    ck_assert_int_eq(spk_matmul_pack_layout(SPK_DT_F16, 256), SPK_MM_LAYOUT_ROWS);
    ck_assert_int_eq(spk_matmul_pack_layout(SPK_DT_Q4_0, 63), SPK_MM_LAYOUT_ROWS);
}
END_TEST

/* The K-quant section: the SIMD quantizers give the reference's bytes exactly; its values are
 * within d/2 of x, d = amax/127 per 256; the per-32 pairs and the sums per 16 match the codes. */
START_TEST(test_act_q8k_section)
{
    enum { N = 256 * 3 };
    static float x[N];
    uint64_t s = 91;
    for (int i = 0; i < N; i++)
        x[i] = f16r(&s, 0.0f, 3.0f) * (i % 41 == 3 ? 20.0f : 1.0f);
    for (int j = 0; j < 256; j++)
        x[256 + j] = 0.0f; /* super-block 1: all zero */
    for (int j = 0; j < 254; j++)
        x[512 + j] = (float)(j % 127) - 63.5f; /* super-block 2: amax 127 below: d == 1, ties */
    x[766] = 127.0f;
    x[767] = -127.0f;
    const size_t rb = spk_act_size(SPK_DT_Q8_0, N, 1), off = spk_q8_row_bytes(N);
    ck_assert_uint_eq(rb, off + spk_q8k_row_bytes(N));
    ck_assert_uint_eq(spk_q8k_row_bytes(N + 32), 0);
    uint8_t *ref = calloc(1, rb), *got = calloc(1, rb);
    ck_assert(ref && got);
    spk_q8k_quantize_row_ref(ref + off, x, N);
    const size_t used = (size_t)N + 8 * (N / 32) + 2 * (N / 16);
    int isas[SPK_ISA_COUNT];
    const int ni = n_isas(isas);
    for (int k = 0; k < ni; k++) {
        use_isa(isas[k]);
        memset(got, 0xAA, rb);
        spk_act_quantize(got, SPK_DT_Q6_K, x, N, 0, 1);
        ck_assert_msg(memcmp(ref + off, got + off, used) == 0, "isa %s: K-quant section differs from reference",
                      spk_matmul_isa_name());
    }
    use_isa(-1);
    const int8_t *q = (const int8_t *)(ref + off);
    const float *ds = (const float *)(ref + off + N);
    const int16_t *bsums = (const int16_t *)(ref + off + N + 8 * (N / 32));
    ck_assert(ds[2 * 8] == 0.0f);
    ck_assert(ds[2 * 16] == 1.0f);
    ck_assert_int_eq(q[512 + 0], -64); /* -63.5 rounds away from zero */
    ck_assert_int_eq(q[512 + 126], 63); /* 62.5 */
    for (int b = 0; b < N / 256; b++) {
        double amax = 0;
        for (int j = 0; j < 256; j++) /* (not fmax: aarch64 gcc 12 -O3 crashes vectorizing it) */
            if (fabs(x[256 * b + j]) > amax)
                amax = fabs(x[256 * b + j]);
        const double d = ds[16 * b];
        ck_assert_msg(fabs(d - amax / 127.0) <= 1e-6 * amax, "super-block %d: d %g, amax %g", b, d, amax);
        for (int j = 0; j < 256; j++)
            ck_assert_msg(fabs(x[256 * b + j] - q[256 * b + j] * d) <= 0.5 * d * (1 + 1e-6) + 1e-37,
                          "element %d: %g vs %d*%g", 256 * b + j, (double)x[256 * b + j], q[256 * b + j], d);
        for (int c = 0; c < 16; c++) {
            int sum = 0;
            for (int j = 0; j < 16; j++)
                sum += q[256 * b + 16 * c + j];
            ck_assert_int_eq(bsums[16 * b + c], sum);
        }
        for (int c = 0; c < 8; c++) {
            ck_assert(ds[2 * (8 * b + c)] == ds[16 * b]);
            ck_assert(ds[2 * (8 * b + c) + 1] ==
                      ds[16 * b] * (float)(bsums[16 * b + 2 * c] + bsums[16 * b + 2 * c + 1]));
        }
    }
    free(ref);
    free(got);
}
END_TEST

/* One activation buffer serves weights of any quantized type with the same n (a layer's Q, K
 * and V, or gate and up, may differ in type): rows quantized for Q8_0 give a K-quant matmul the
 * same bits as rows quantized for that K-quant, and the other way round. */
START_TEST(test_act_shared_across_types)
{
    enum { N = 512, ROWS = 9, TOK = 5 };
    static const spk_dtype pairs[][2] = {{SPK_DT_Q8_0, SPK_DT_Q4_K}, {SPK_DT_Q4_K, SPK_DT_Q8_0},
                                         {SPK_DT_Q6_K, SPK_DT_Q4_1}, {SPK_DT_MXFP4, SPK_DT_Q6_K},
                                         {SPK_DT_Q4_0, SPK_DT_Q2_K}, {SPK_DT_Q3_K, SPK_DT_Q5_0}};
    uint64_t s = 5;
    static float x[N * TOK];
    for (int i = 0; i < N * TOK; i++)
        x[i] = f16r(&s, 0.01f, 2.0f);
    int isas[SPK_ISA_COUNT];
    const int ni = n_isas(isas);
    for (size_t p = 0; p < sizeof pairs / sizeof pairs[0]; p++) {
        const spk_dtype qt = pairs[p][0], mt = pairs[p][1];
        ck_assert_uint_eq(spk_act_size(qt, N, TOK), spk_act_size(mt, N, TOK));
        const size_t asz = spk_act_size(mt, N, TOK), rb = spk_dtype_row_size(mt, N);
        uint8_t *a1 = malloc(asz), *a2 = malloc(asz), *w = malloc(rb * ROWS);
        float o1[ROWS * TOK], o2[ROWS * TOK];
        ck_assert(a1 && a2 && w);
        fill_blocks(w, mt, N, ROWS, &s);
        for (int k = 0; k < ni; k++) {
            use_isa(isas[k]);
            spk_act_quantize(a1, qt, x, N, 0, TOK);
            spk_act_quantize(a2, mt, x, N, 0, TOK);
            spk_matmul(o1, ROWS, w, mt, a1, N, TOK, 0, ROWS);
            spk_matmul(o2, ROWS, w, mt, a2, N, TOK, 0, ROWS);
            ck_assert_msg(memcmp(o1, o2, sizeof o1) == 0, "isa %s: %s rows quantized for %s differ",
                          spk_matmul_isa_name(), spk_dtype_get(mt)->name, spk_dtype_get(qt)->name);
        }
        use_isa(-1);
        free(a1);
        free(a2);
        free(w);
    }
}
END_TEST

/* The per-type dequantizers agree with this test's own decoders. */
START_TEST(test_dequantize_matches_decoder)
{
    const spk_dtype t = k_types[_i];
    const int n = 512;
    uint64_t s = 9 + (uint64_t)_i;
    const size_t rb = spk_dtype_row_size(t, (size_t)n);
    uint8_t *w = malloc(rb);
    float *got = malloc(sizeof(float) * n);
    double *ref = malloc(sizeof(double) * n), *mag = malloc(sizeof(double) * n);
    ck_assert(w && got && ref && mag);
    fill_blocks(w, t, n, 1, &s);
    decode_row(ref, mag, w, t, n);
    spk_dequantize_row(got, w, t, n);
    for (int i = 0; i < n; i++)
        ck_assert_msg(fabs(got[i] - ref[i]) <= 1e-6 * mag[i] + 1e-30, "%s element %d: %.9g vs %.9g",
                      spk_dtype_get(t)->name, i, (double)got[i], ref[i]);
    free(w);
    free(got);
    free(ref);
    free(mag);
}
END_TEST

/* Sizes and support answers: unsupported types and ragged rows are refused, not computed. */
START_TEST(test_support_and_sizes)
{
    ck_assert(spk_matmul_supported(SPK_DT_Q4_1, 576));
    ck_assert(!spk_matmul_supported(SPK_DT_Q4_1, 577));
    ck_assert(!spk_matmul_supported(SPK_DT_Q4_K, 288));
    ck_assert(spk_matmul_supported(SPK_DT_Q4_K, 512));
    ck_assert(spk_matmul_supported(SPK_DT_F16, 37));
    ck_assert(!spk_matmul_supported(SPK_DT_Q8_1, 64));
    ck_assert(!spk_matmul_supported((spk_dtype)5, 64));
    ck_assert(!spk_matmul_supported((spk_dtype)16, 256));
    ck_assert(!spk_matmul_supported(SPK_DT_Q8_0, 0));
    ck_assert_uint_eq(spk_act_size((spk_dtype)99, 64, 1), 0);
    ck_assert_uint_ge(spk_act_size(SPK_DT_Q4_1, 576, 3), 3 * (576 + 18 * 8));
    ck_assert_uint_ge(spk_act_size(SPK_DT_F32, 37, 2), 2 * 37 * 4);
    ck_assert_int_eq(spk_act_type(SPK_DT_Q4_1), SPK_DT_Q8_1);
    ck_assert_int_eq(spk_act_type(SPK_DT_Q8_0), SPK_DT_Q8_0);
    ck_assert_int_eq(spk_act_type(SPK_DT_F16), SPK_DT_F32);
    float o = 1.0f;
    spk_matmul(&o, 1, NULL, (spk_dtype)99, NULL, 64, 1, 0, 1); /* refused: nothing touched */
    ck_assert(o == 1.0f);
    ck_assert_ptr_nonnull(spk_cpu_simd_names());
    const spk_cpu_features *f = spk_cpu_get_features();
    if (f->avx2) /* every CPU with AVX2 so far has F16C: a zero here is a detection bug */
        ck_assert(f->f16c);
    if (f->avx512vnni)
        ck_assert(f->avx512f);
#if defined(__aarch64__)
    /* NEON is baseline; the SDOT and SMMLA levels are offered exactly where HWCAP says the CPU
     * has them, and the automatic choice is the best level offered. */
    ck_assert(f->neon);
    ck_assert(spk_matmul_isa_usable(SPK_ISA_NEON));
    ck_assert_int_eq(spk_matmul_isa_usable(SPK_ISA_NEON_DOTPROD), f->dotprod != 0);
    ck_assert_int_eq(spk_matmul_isa_usable(SPK_ISA_NEON_I8MM), f->dotprod && f->i8mm);
    use_isa(-1);
    ck_assert_str_eq(spk_matmul_isa_name(), f->dotprod && f->i8mm ? "neon-i8mm"
                                            : f->dotprod          ? "neon-dotprod"
                                                                  : "neon");
#else
    ck_assert(!spk_matmul_isa_usable(SPK_ISA_NEON));
#endif
}
END_TEST

/* SPK_TEST_REQUIRE_ISA=name (set by `make test-arm64`): fail, rather than test less, when the
 * named matmul level cannot run here (a CPU model or detection that lost an extension). */
START_TEST(test_required_isa_is_tested)
{
    const char *want = getenv("SPK_TEST_REQUIRE_ISA");
    int isas[SPK_ISA_COUNT], found = 0;
    const int ni = n_isas(isas);
    for (int k = 0; k < ni && want; k++) {
        use_isa(isas[k]);
        found |= strcmp(spk_matmul_isa_name(), want) == 0;
    }
    use_isa(-1);
    ck_assert_msg(!want || found, "SPK_TEST_REQUIRE_ISA=%s, but this CPU offers only the levels up to %s",
                  want, spk_matmul_isa_name());
}
END_TEST

/* ---- MXFP4 in 8-row tiles (x86 AVX2, cpu/matmul_x86_mxfp4.c) ------------------------------- */

/* Every batch size 1..17 (tiles of 1, 2, 3, 4 and 8 tokens and their leftovers), row counts and
 * ranges off the 8-row grid (a partial last tile), 1, 3, 18 and 90 blocks per row (90: gpt-oss's
 * 2880), against the float64 references. */
START_TEST(test_mxfp4_tiles)
{
    static const int n_ins[] = {32, 96, 576, 2880};
    const int n_in = n_ins[_i];
    for (int nt = 1; nt <= 17; nt++) {
        check_case(SPK_DT_MXFP4, n_in, 13, nt, 0, 13, 1100u + (uint64_t)(_i * 40 + nt));
        check_case(SPK_DT_MXFP4, n_in, 21, nt, 3, 20, 1200u + (uint64_t)(_i * 40 + nt));
        if (nt % 4 == 1)
            check_case(SPK_DT_MXFP4, n_in, 7, nt, 2, 3, 1300u + (uint64_t)(_i * 40 + nt));
    }
}
END_TEST

/* Every E8M0 exponent, 0 and 1 (the f32 subnormal scales 2^-128, 2^-127) included, against a
 * float64 reference of the same quantized activations: the tile's SIMD exponent decode must give
 * spk_e8m0_to_f32_half's value for each. Exponents up to 240 keep the results finite. */
START_TEST(test_mxfp4_every_exponent)
{
    enum { N = 64, ROWS = 241, TOK = 3 };
    const size_t rb = spk_dtype_row_size(SPK_DT_MXFP4, N), asz = spk_act_size(SPK_DT_MXFP4, N, TOK);
    uint8_t *w = malloc(rb * ROWS), *act = malloc(asz);
    float x[N * TOK], out[ROWS * TOK];
    double ad[N], dblk[N / 32 + 1];
    ck_assert(w && act);
    uint64_t s = 1400;
    for (size_t i = 0; i < rb * ROWS; i++)
        w[i] = (uint8_t)spk_test_rand(&s);
    for (int r = 0; r < ROWS; r++)
        for (int b = 0; b < N / 32; b++)
            w[(size_t)r * rb + 17 * (size_t)b] = (uint8_t)r; /* e: the row's exponent in every block */
    for (int i = 0; i < N * TOK; i++)
        x[i] = f16r(&s, 0.01f, 2.0f);
    int isas[SPK_ISA_COUNT];
    const int ni = n_isas(isas);
    for (int k = 0; k < ni; k++) {
        use_isa(isas[k]);
        spk_act_quantize(act, SPK_DT_MXFP4, x, N, 0, TOK);
        spk_matmul(out, ROWS, w, SPK_DT_MXFP4, act, N, TOK, 0, ROWS);
        for (int t = 0; t < TOK; t++) {
            decode_act(ad, dblk, act + (size_t)t * (asz / TOK), SPK_DT_MXFP4, N);
            for (int r = 0; r < ROWS; r++) {
                double wd[N], mag[N], ref = 0, smag = 0;
                decode_row(wd, mag, w + (size_t)r * rb, SPK_DT_MXFP4, N);
                for (int i = 0; i < N; i++) {
                    ref += wd[i] * ad[i];
                    smag += mag[i] * fabs(ad[i]);
                }
                const double bound = 8 * ldexp(1.0, -23) * smag;
                const float got = out[(size_t)t * ROWS + r];
                ck_assert_msg(fabs(got - ref) <= bound, "isa %s row %d (e %d) token %d: got %.9g, ref %.9g",
                              spk_matmul_isa_name(), r, r, t, got, ref);
            }
        }
    }
    use_isa(-1);
    free(w);
    free(act);
}
END_TEST

/* A row's result does not depend on the row range it is computed in either (threads split rows
 * at multiples of 16, MoE experts at any count): the tile's lanes never mix, so the rows of one
 * call over [0, 45) match, bit for bit, calls over ranges cut at every offset 1..15, at several
 * batch sizes. */
START_TEST(test_mxfp4_row_ranges)
{
    enum { N = 576, ROWS = 45, TOK = 9 };
    const size_t rb = spk_dtype_row_size(SPK_DT_MXFP4, N), asz = spk_act_size(SPK_DT_MXFP4, N, TOK);
    uint8_t *w = malloc(rb * ROWS), *act = malloc(asz);
    float *x = malloc(sizeof(float) * N * TOK), *all = malloc(sizeof(float) * ROWS * TOK),
          *cut = malloc(sizeof(float) * ROWS * TOK);
    ck_assert(w && act && x && all && cut);
    uint64_t s = 1500;
    fill_blocks(w, SPK_DT_MXFP4, N, ROWS, &s);
    for (int i = 0; i < N * TOK; i++)
        x[i] = f16r(&s, 0.01f, 2.0f);
    int isas[SPK_ISA_COUNT];
    const int ni = n_isas(isas);
    for (int k = 0; k < ni; k++) {
        use_isa(isas[k]);
        spk_act_quantize(act, SPK_DT_MXFP4, x, N, 0, TOK);
        for (int nt = 1; nt <= TOK; nt += 3) {
            spk_matmul(all, ROWS, w, SPK_DT_MXFP4, act, N, nt, 0, ROWS);
            for (int c = 1; c < 16; c++) {
                memset(cut, 0, sizeof(float) * ROWS * TOK);
                for (int r0 = 0; r0 < ROWS; r0 += c)
                    spk_matmul(cut, ROWS, w, SPK_DT_MXFP4, act, N, nt, r0, r0 + c < ROWS ? r0 + c : ROWS);
                ck_assert_msg(memcmp(all, cut, sizeof(float) * ROWS * (size_t)nt) == 0,
                              "isa %s, %d tokens: rows cut every %d differ from one call", spk_matmul_isa_name(),
                              nt, c);
            }
        }
    }
    use_isa(-1);
    free(w);
    free(act);
    free(x);
    free(all);
    free(cut);
}
END_TEST

/* ---- Q8_0 on AVX2 (cpu/matmul_x86_q8.c): an 8-row tile from 2 tokens, a per-row kernel at 1 ---- */

/* Against the float64 references: every batch size 1..17 (tiles of 2, 3, 4 and 8 tokens and the
 * single-token kernel), row counts off the 8-row grid, ranges that start and end mid-tile, 1, 3
 * and 18 blocks per row, and enough rows for several 64 KiB chunks. */
START_TEST(test_q8_lanes_batches)
{
    for (int nt = 1; nt <= 17; nt++) {
        check_case(SPK_DT_Q8_0, 32, 37, nt, 0, 37, 1100u + (uint64_t)nt);
        check_case(SPK_DT_Q8_0, 96, 29, nt, 3, 28, 1200u + (uint64_t)nt);
        check_case(SPK_DT_Q8_0, 576, 13, nt, 5, 12, 1300u + (uint64_t)nt);
    }
    check_case(SPK_DT_Q8_0, 576, 2053, 9, 1, 2050, 1400u);
}
END_TEST

/* Q8_0 activations: the int8 codes of row tk and its per-block f16 scale (stored as float). */
static int q8_act_code(const uint8_t *act, size_t arow, int tk, int i)
{
    return ((const int8_t *)(act + (size_t)tk * arow))[i];
}

static float q8_act_scale(const uint8_t *act, size_t arow, int n, int tk, int b)
{
    float d;
    memcpy(&d, act + (size_t)tk * arow + n + 8 * (size_t)b, 4);
    return d;
}

/* The AVX2 Q8_0 kernels compute, per row and token, acc = fma(dw, (float)s * da, acc) over the
 * blocks in order with s the exact integer block dot: check that bit for bit, whatever kernel
 * (tile of 2..8 tokens, single-token kernel, leftover rows) a row and token go through, for every
 * batch size 1..17 and row ranges that do and do not start on the 8-row grid; quants include the
 * extremes (-128 weights against +-127 activations, every block of row 0). Other ISAs sum in
 * their own order and are covered by test_q8_lanes_batches. */
START_TEST(test_q8_lanes_exact)
{
    const int n_in = 160, n_out = 45, nb = n_in / 32;
    const size_t rb = spk_dtype_row_size(SPK_DT_Q8_0, (size_t)n_in);
    uint8_t *w = malloc(rb * n_out);
    float *x = malloc(sizeof(float) * (size_t)n_in * 17), *out = malloc(sizeof(float) * n_out * 17);
    const size_t asz = spk_act_size(SPK_DT_Q8_0, n_in, 17);
    uint8_t *act = malloc(asz);
    ck_assert(w && x && out && act);
    uint64_t s = 1500;
    fill_blocks(w, SPK_DT_Q8_0, n_in, n_out, &s);
    for (int b = 0; b < nb; b++) /* row 0: every code -128, scale 1 */
        memset(w + (size_t)b * sizeof(spk_block_q8_0) + 2, 0x80, 32);
    const uint16_t one = spk_f32_to_f16(1.0f);
    for (int b = 0; b < nb; b++)
        memcpy(w + (size_t)b * sizeof(spk_block_q8_0), &one, 2);
    for (int i = 0; i < n_in * 17; i++)
        x[i] = f16r(&s, 0.01f, 2.0f);
    for (int i = 0; i < n_in; i++)
        x[i] = (i & 1) ? 3.0f : -3.0f; /* token 0: codes +-127 */
    int checked = 0;
    if (spk_matmul_isa_usable(SPK_ISA_AVX2)) {
        use_isa(SPK_ISA_AVX2);
        static const int ranges[][2] = {{0, 45}, {3, 45}, {5, 12}, {8, 24}, {40, 45}};
        for (int nt = 1; nt <= 17; nt++) {
            spk_act_quantize(act, SPK_DT_Q8_0, x, n_in, 0, nt);
            const size_t arow = spk_act_size(SPK_DT_Q8_0, n_in, nt) / (size_t)nt;
            for (size_t ri = 0; ri < sizeof ranges / sizeof ranges[0]; ri++) {
                const int r0 = ranges[ri][0], r1 = ranges[ri][1];
                spk_matmul(out, n_out, w, SPK_DT_Q8_0, act, n_in, nt, r0, r1);
                for (int tk = 0; tk < nt; tk++)
                    for (int r = r0; r < r1; r++) {
                        const uint8_t *row = w + (size_t)r * rb;
                        float acc = 0.0f;
                        for (int b = 0; b < nb; b++) {
                            const spk_block_q8_0 *blk = (const spk_block_q8_0 *)row + b;
                            int32_t dot = 0;
                            for (int i = 0; i < 32; i++)
                                dot += (int32_t)blk->qs[i] * q8_act_code(act, arow, tk, 32 * b + i);
                            const float sa = (float)dot * q8_act_scale(act, arow, n_in, tk, b);
                            acc = fmaf(spk_f16_to_f32(blk->d), sa, acc);
                        }
                        const float got = out[(size_t)tk * n_out + r];
                        ck_assert_msg(memcmp(&got, &acc, sizeof acc) == 0,
                                      "Q8_0 avx2 rows [%d,%d) batch %d token %d row %d: %.9g, the "
                                      "documented arithmetic gives %.9g",
                                      r0, r1, nt, tk, r, got, acc);
                        checked++;
                    }
            }
        }
        ck_assert_int_gt(checked, 0);
        ck_assert_int_eq(q8_act_code(act, spk_act_size(SPK_DT_Q8_0, n_in, 17) / 17, 0, 0), -127);
    } else {
        printf("SKIP: test_q8_lanes_exact: no AVX2 level on this CPU\n");
    }
    use_isa(-1);
    spk_cpu_force_scalar(0);
    free(w);
    free(x);
    free(out);
    free(act);
}
END_TEST

/* ---- Q4_K in 8-row tiles (x86 AVX2, cpu/matmul_x86_q4k.c) --------------------------------- */

/* Every batch size 1..17 (tiles of 1, 2, 3, 4 and 8 tokens and their leftovers), row counts and
 * ranges off the 8-row grid (a partial last tile), 1, 3, 6 and 10 super-blocks per row (256 ..
 * 2560), against the float64 references. */
START_TEST(test_q4k_tiles)
{
    static const int n_ins[] = {256, 768, 1536, 2560};
    const int n_in = n_ins[_i];
    for (int nt = 1; nt <= 17; nt++) {
        check_case(SPK_DT_Q4_K, n_in, 13, nt, 0, 13, 1600u + (uint64_t)(_i * 40 + nt));
        check_case(SPK_DT_Q4_K, n_in, 21, nt, 3, 20, 1700u + (uint64_t)(_i * 40 + nt));
        if (nt % 4 == 1)
            check_case(SPK_DT_Q4_K, n_in, 7, nt, 2, 3, 1800u + (uint64_t)(_i * 40 + nt));
    }
}
END_TEST

/* A token's and a row's Q4_K result depend neither on the batch nor on the row range: each token
 * of batches 1..17 alone, and rows cut every 1..15, match one call over all rows and tokens bit
 * for bit, for 1 and 10 super-blocks per row (the batch-1 and batched paths share the tile's
 * float steps; only the integer sums, which are exact, may be computed differently). */
START_TEST(test_q4k_invariant)
{
    enum { ROWS = 29, TOK = 17 };
    const int n = _i == 0 ? 256 : 2560;
    const size_t rb = spk_dtype_row_size(SPK_DT_Q4_K, (size_t)n), asz = spk_act_size(SPK_DT_Q4_K, n, TOK);
    const size_t arow = asz / TOK;
    uint8_t *w = malloc(rb * ROWS), *act = malloc(asz);
    float *x = malloc(sizeof(float) * (size_t)n * TOK), *all = malloc(sizeof(float) * ROWS * TOK),
          *cut = malloc(sizeof(float) * ROWS * TOK);
    ck_assert(w && act && x && all && cut);
    uint64_t s = 1900u + (uint64_t)_i;
    fill_blocks(w, SPK_DT_Q4_K, n, ROWS, &s);
    for (int i = 0; i < n * TOK; i++)
        x[i] = f16r(&s, 0.01f, 2.0f) * (i % 53 == 7 ? -6.0f : 1.0f);
    int isas[SPK_ISA_COUNT];
    const int ni = n_isas(isas);
    for (int k = 0; k < ni; k++) {
        use_isa(isas[k]);
        spk_act_quantize(act, SPK_DT_Q4_K, x, n, 0, TOK);
        spk_matmul(all, ROWS, w, SPK_DT_Q4_K, act, n, TOK, 0, ROWS);
        for (int nt = 1; nt <= TOK; nt++) {
            /* tokens [TOK - nt, TOK) as one batch of nt */
            const int t0 = TOK - nt;
            memset(cut, 0, sizeof(float) * ROWS * TOK);
            spk_matmul(cut, ROWS, w, SPK_DT_Q4_K, act + (size_t)t0 * arow, n, nt, 0, ROWS);
            ck_assert_msg(memcmp(all + (size_t)t0 * ROWS, cut, sizeof(float) * ROWS * (size_t)nt) == 0,
                          "isa %s n_in %d: a batch of %d tokens differs from the batch of %d",
                          spk_matmul_isa_name(), n, nt, TOK);
        }
        for (int c = 1; c < 16; c++) {
            memset(cut, 0, sizeof(float) * ROWS * TOK);
            for (int r0 = 0; r0 < ROWS; r0 += c)
                spk_matmul(cut, ROWS, w, SPK_DT_Q4_K, act, n, TOK, r0, r0 + c < ROWS ? r0 + c : ROWS);
            ck_assert_msg(memcmp(all, cut, sizeof(float) * ROWS * TOK) == 0,
                          "isa %s n_in %d: rows cut every %d differ from one call", spk_matmul_isa_name(), n, c);
        }
    }
    use_isa(-1);
    spk_cpu_force_scalar(0);
    free(w);
    free(act);
    free(x);
    free(all);
    free(cut);
}
END_TEST

/* Q5_0 / Q5_1 (cpu/matmul_x86_q45.c at AVX2: 8-row tile, single-token rows kernel, leftover rows)
 * against the float64 references at every ISA, batches 1..17, row counts off the 8-row grid and
 * ranges starting inside a tile, n_in 32..2560. _i: 0 Q5_0, 1 Q5_1. */
START_TEST(test_q5_tiles_batches)
{
    const spk_dtype t = _i ? SPK_DT_Q5_1 : SPK_DT_Q5_0;
    const uint64_t k = 100u * (uint64_t)_i;
    for (int nt = 1; nt <= 17; nt++) {
        check_case(t, 32, 37, nt, 0, 37, 2100u + k + (uint64_t)nt);
        check_case(t, 96, 29, nt, 3, 28, 2200u + k + (uint64_t)nt);
        check_case(t, 576, 13, nt, 5, 12, 2300u + k + (uint64_t)nt);
    }
    check_case(t, 2560, 21, 9, 2, 21, 2400u + k);
    check_case(t, 2560, 16, 1, 0, 16, 2500u + k);
    check_case(t, 576, 2053, 9, 1, 2050, 2600u + k);
}
END_TEST

/* The 5-bit code of element i of a Q5_0 / Q5_1 block (qs nibble, qh bit i as bit 4). */
static int q5_code(const uint8_t *qh, const uint8_t *qs, int i)
{
    const int nib = i < 16 ? (qs[i] & 15) : (qs[i - 16] >> 4);
    return nib | (((qh[i / 8] >> (i % 8)) & 1) << 4);
}

/* The AVX2 Q5 kernels compute, per row and token, over the blocks in order with s the exact
 * integer dot of the unsigned codes (0..31) and the activation codes, (da, sa) the activation
 * block's (d, s): Q5_0 acc = fma(dw, fma(s, da, -16 sa), acc), Q5_1 acc = fma(mw, sa, fma(dw,
 * s * da, acc)). Check that bit for bit whatever kernel a row and token go through, batches
 * 1..17, ranges on and off the 8-row grid; row 0 holds the extreme codes (all 31 against
 * +-127, the int16 partial sums' worst case). _i: 0 Q5_0, 1 Q5_1. */
START_TEST(test_q5_tiles_exact)
{
    const spk_dtype t = _i ? SPK_DT_Q5_1 : SPK_DT_Q5_0;
    const int n_in = 160, n_out = 45, nb = n_in / 32;
    const size_t rb = spk_dtype_row_size(t, (size_t)n_in), bsz = _i ? sizeof(spk_block_q5_1) : sizeof(spk_block_q5_0);
    const size_t qho = _i ? 4 : 2;
    uint8_t *w = malloc(rb * n_out);
    float *x = malloc(sizeof(float) * (size_t)n_in * 17), *out = malloc(sizeof(float) * n_out * 17);
    const size_t asz = spk_act_size(t, n_in, 17);
    uint8_t *act = malloc(asz);
    ck_assert(w && x && out && act);
    uint64_t s = 2700u + (uint64_t)_i;
    fill_blocks(w, t, n_in, n_out, &s);
    for (int b = 0; b < nb; b++) /* row 0: every code 31 */
        memset(w + (size_t)b * bsz + qho, 0xff, 20);
    for (int i = 0; i < n_in * 17; i++)
        x[i] = f16r(&s, 0.01f, 2.0f);
    for (int i = 0; i < n_in; i++)
        x[i] = (i & 1) ? 3.0f : -3.0f; /* token 0: codes +-127 */
    for (int i = 0; i < n_in; i++)
        x[n_in + i] = -3.0f; /* token 1: codes -127 */
    int checked = 0;
    if (spk_matmul_isa_usable(SPK_ISA_AVX2)) {
        use_isa(SPK_ISA_AVX2);
        static const int ranges[][2] = {{0, 45}, {3, 45}, {5, 12}, {8, 24}, {40, 45}, {1, 42}};
        for (int nt = 1; nt <= 17; nt++) {
            spk_act_quantize(act, t, x, n_in, 0, nt);
            const size_t arow = spk_act_size(t, n_in, nt) / (size_t)nt;
            for (size_t ri = 0; ri < sizeof ranges / sizeof ranges[0]; ri++) {
                const int r0 = ranges[ri][0], r1 = ranges[ri][1];
                spk_matmul(out, n_out, w, t, act, n_in, nt, r0, r1);
                for (int tk = 0; tk < nt; tk++)
                    for (int r = r0; r < r1; r++) {
                        const uint8_t *row = w + (size_t)r * rb;
                        const uint8_t *ar = act + (size_t)tk * arow;
                        float acc = 0.0f;
                        for (int b = 0; b < nb; b++) {
                            const uint8_t *blk = row + (size_t)b * bsz;
                            int32_t dot = 0;
                            for (int i = 0; i < 32; i++)
                                dot += q5_code(blk + qho, blk + qho + 4, i) * (int32_t)((const int8_t *)ar)[32 * b + i];
                            float ds[2];
                            memcpy(ds, ar + n_in + 8 * (size_t)b, 8);
                            uint16_t h[2];
                            memcpy(h, blk, 4);
                            const float dw = spk_f16_to_f32(h[0]);
                            if (_i)
                                acc = fmaf(spk_f16_to_f32(h[1]), ds[1], fmaf(dw, (float)dot * ds[0], acc));
                            else
                                acc = fmaf(dw, fmaf((float)dot, ds[0], -16.0f * ds[1]), acc);
                        }
                        const float got = out[(size_t)tk * n_out + r];
                        ck_assert_msg(memcmp(&got, &acc, sizeof acc) == 0,
                                      "%s avx2 rows [%d,%d) batch %d token %d row %d: %.9g, the "
                                      "documented arithmetic gives %.9g",
                                      spk_dtype_get(t)->name, r0, r1, nt, tk, r, got, acc);
                        checked++;
                    }
            }
        }
        ck_assert_int_gt(checked, 0);
        ck_assert_int_eq(((const int8_t *)act)[0], -127);
    } else {
        printf("SKIP: test_q5_tiles_exact: no AVX2 level on this CPU\n");
    }
    use_isa(-1);
    spk_cpu_force_scalar(0);
    free(w);
    free(x);
    free(out);
    free(act);
}
END_TEST

/* Q6_K (cpu/matmul_x86_q6k.c at AVX2: 8-row tiles, spread rows at up to 8 tokens, a partial
 * tile for the last rows) against the float64 reference at every ISA: batches 1..17, row counts
 * off the 8-row grid, ranges starting inside a tile, n_in 256..2560. */
START_TEST(test_q6k_tiles)
{
    static const int n_ins[] = {256, 768, 1536, 2560};
    const int n_in = n_ins[_i];
    for (int nt = 1; nt <= 17; nt++) {
        check_case(SPK_DT_Q6_K, n_in, 13, nt, 0, 13, 2600u + (uint64_t)(_i * 40 + nt));
        check_case(SPK_DT_Q6_K, n_in, 21, nt, 3, 20, 2700u + (uint64_t)(_i * 40 + nt));
        if (nt % 4 == 1)
            check_case(SPK_DT_Q6_K, n_in, 37, nt, 5, 34, 2800u + (uint64_t)(_i * 40 + nt));
    }
}
END_TEST

/* A token's and a row's Q6_K result depend neither on the batch nor on the row range: each token
 * of batches 1..17 alone, and rows cut every 1..15 (ranges starting inside a tile), match one call
 * over all rows and tokens bit for bit, for n_in 256, 1280, 2560 and 4096 (333 rows: weights past
 * 1 MiB, where batches up to 8 take spread tiles; only at the x86 levels that have them, as it
 * is slow at the scalar level under emulation), with extreme codes and scales in some blocks (the
 * integer sums must stay exact). */
START_TEST(test_q6k_invariant)
{
    enum { TOK = 17 };
    static const int ns[] = {256, 1280, 2560, 4096};
    const int n = ns[_i];
    const int ROWS = _i == 3 ? 333 : 37; /* 333 x 3360 B: past 1 MiB, the spread decode tiles */
    const size_t rb = spk_dtype_row_size(SPK_DT_Q6_K, (size_t)n), asz = spk_act_size(SPK_DT_Q6_K, n, TOK);
    const size_t arow = asz / TOK;
    uint8_t *w = malloc(rb * ROWS), *act = malloc(asz);
    float *x = malloc(sizeof(float) * (size_t)n * TOK), *all = malloc(sizeof(float) * ROWS * TOK),
          *cut = malloc(sizeof(float) * ROWS * TOK);
    ck_assert(w && act && x && all && cut);
    uint64_t s = 2900u + (uint64_t)_i;
    fill_blocks(w, SPK_DT_Q6_K, n, ROWS, &s);
    for (int r = 0; r < ROWS; r += 5) { /* every code 63 or 0, scales -128 / 127 */
        spk_block_q6_K *x0 = (spk_block_q6_K *)(void *)(w + (size_t)r * rb);
        memset(x0->ql, r % 10 ? 0x00 : 0xff, sizeof x0->ql);
        memset(x0->qh, r % 10 ? 0x00 : 0xff, sizeof x0->qh);
        for (int k = 0; k < 16; k++)
            x0->scales[k] = (int8_t)(k % 2 ? 127 : -128);
    }
    for (int i = 0; i < n * TOK; i++)
        x[i] = f16r(&s, 0.01f, 2.0f) * (i % 53 == 7 ? -6.0f : 1.0f);
    int isas[SPK_ISA_COUNT];
    int ni = n_isas(isas);
    if (_i == 3) { /* the spread tiles are the AVX2 kernel's (AVX-512 runs it too): only there */
        int k2 = 0;
        for (int k = 0; k < ni; k++)
            if (isas[k] == SPK_ISA_AVX2 || isas[k] == SPK_ISA_AVX512)
                isas[k2++] = isas[k];
        ni = k2;
        if (ni == 0)
            printf("SKIP: test_q6k_invariant n_in 4096 x 333 rows: no AVX2 level on this CPU (the smaller "
                   "cases ran at every level)\n");
    }
    for (int k = 0; k < ni; k++) {
        use_isa(isas[k]);
        spk_act_quantize(act, SPK_DT_Q6_K, x, n, 0, TOK);
        spk_matmul(all, ROWS, w, SPK_DT_Q6_K, act, n, TOK, 0, ROWS);
        for (int nt = 1; nt <= TOK; nt++) {
            const int t0 = TOK - nt; /* tokens [TOK - nt, TOK) as one batch of nt */
            memset(cut, 0, sizeof(float) * ROWS * TOK);
            spk_matmul(cut, ROWS, w, SPK_DT_Q6_K, act + (size_t)t0 * arow, n, nt, 0, ROWS);
            ck_assert_msg(memcmp(all + (size_t)t0 * ROWS, cut, sizeof(float) * ROWS * (size_t)nt) == 0,
                          "isa %s n_in %d: a batch of %d tokens differs from the batch of %d",
                          spk_matmul_isa_name(), n, nt, TOK);
            for (int c = 1; c < 16; c += 7) { /* and that batch with rows cut every 1, 8, 15 */
                memset(cut, 0, sizeof(float) * ROWS * TOK);
                for (int r0 = 0; r0 < ROWS; r0 += c)
                    spk_matmul(cut, ROWS, w, SPK_DT_Q6_K, act + (size_t)t0 * arow, n, nt, r0,
                               r0 + c < ROWS ? r0 + c : ROWS);
                ck_assert_msg(memcmp(all + (size_t)t0 * ROWS, cut, sizeof(float) * ROWS * (size_t)nt) == 0,
                              "isa %s n_in %d: %d tokens, rows cut every %d differ from one call",
                              spk_matmul_isa_name(), n, nt, c);
            }
        }
        for (int c = 1; c < 16; c++) {
            memset(cut, 0, sizeof(float) * ROWS * TOK);
            for (int r0 = 0; r0 < ROWS; r0 += c)
                spk_matmul(cut, ROWS, w, SPK_DT_Q6_K, act, n, TOK, r0, r0 + c < ROWS ? r0 + c : ROWS);
            ck_assert_msg(memcmp(all, cut, sizeof(float) * ROWS * TOK) == 0,
                          "isa %s n_in %d: rows cut every %d differ from one call", spk_matmul_isa_name(), n, c);
        }
    }
    use_isa(-1);
    spk_cpu_force_scalar(0);
    free(w);
    free(act);
    free(x);
    free(all);
    free(cut);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("matmul");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_matmul_matches_float64_reference, 0, N_TYPES);
    tcase_add_loop_test(tc, test_matmul_chunked_rows, 0, N_TYPES);
    tcase_add_test(tc, test_act_quantize_matches_reference_bitwise);
    tcase_add_loop_test(tc, test_kquant_batches, 0, 5);
    tcase_add_loop_test(tc, test_gemm8_tiles, 0, 3);
    tcase_add_loop_test(tc, test_batch_invariant, 0, N_TYPES);
    tcase_add_loop_test(tc, test_repack_matches_unpacked, 0, 33);
    tcase_add_test(tc, test_repack_layouts);
    tcase_add_test(tc, test_repack_drop_releases_whole_pages_only);
    tcase_add_test(tc, test_act_q8k_section);
    tcase_add_test(tc, test_act_shared_across_types);
    tcase_add_loop_test(tc, test_dequantize_matches_decoder, 0, N_TYPES);
    tcase_add_test(tc, test_support_and_sizes);
    tcase_add_test(tc, test_required_isa_is_tested);
    tcase_add_loop_test(tc, test_mxfp4_tiles, 0, 4);
    tcase_add_test(tc, test_mxfp4_every_exponent);
    tcase_add_test(tc, test_mxfp4_row_ranges);
    tcase_add_test(tc, test_q8_lanes_batches);
    tcase_add_test(tc, test_q8_lanes_exact);
    tcase_add_loop_test(tc, test_q4k_tiles, 0, 4);
    tcase_add_loop_test(tc, test_q4k_invariant, 0, 2);
    tcase_add_loop_test(tc, test_q5_tiles_batches, 0, 2);
    tcase_add_loop_test(tc, test_q5_tiles_exact, 0, 2);
    tcase_add_loop_test(tc, test_q6k_tiles, 0, 4);
    tcase_add_loop_test(tc, test_q6k_invariant, 0, 4);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    const spk_cpu_features *f = spk_cpu_get_features();
    printf("simd: %s (avx2 %d avx512f %d vnni %d neon %d dotprod %d i8mm %d)\n",
           spk_cpu_simd_names(), f->avx2, f->avx512f, f->avx512vnni, f->neon, f->dotprod, f->i8mm);
    int isas[SPK_ISA_COUNT];
    const int ni = n_isas(isas);
    printf("matmul levels tested:");
    for (int k = 0; k < ni; k++) {
        use_isa(isas[k]);
        printf(" %s", spk_matmul_isa_name());
    }
    use_isa(-1);
    spk_cpu_force_scalar(0);
    printf("\n");
    return spk_test_run(suite());
}
