/*
 * CPU op kernels against float64 references on random non-zero inputs, at every SIMD level
 * this CPU has (scalar, AVX2, AVX-512). Tolerances are stated per test as |got - ref| <=
 * atol + rtol * |ref|.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/dtype.h"
#include "cpu/features.h"
#include "cpu/ops.h"
#include "cpu/ops_isa.h"
#include "testutil.h"

static const char *isa_name(int isa)
{
#if defined(__aarch64__)
    return isa == SPK_OPS_NEON ? "neon" : "scalar";
#else
    return isa == SPK_OPS_AVX512 ? "avx512" : isa == SPK_OPS_AVX2 ? "avx2" : "scalar";
#endif
}

/* Pin a level; returns 0 if this CPU lacks it (the caller skips that level). */
static int use_isa(int isa)
{
    if (!spk_ops_isa_usable(isa))
        return 0;
    spk_ops_force_isa(isa);
    ck_assert_int_eq(spk_ops_isa(), isa);
    return 1;
}

static void check_close(const float *got, const double *ref, int n, double atol, double rtol,
                        const char *what, int isa)
{
    for (int i = 0; i < n; i++) {
        double err = fabs((double)got[i] - ref[i]);
        if (!(err <= atol + rtol * fabs(ref[i])))
            ck_abort_msg("%s [%s] n=%d: element %d is %.9g, reference %.9g (error %.3g > %.3g)",
                         what, isa_name(isa), n, i, got[i], ref[i], err,
                         atol + rtol * fabs(ref[i]));
    }
}

/* IEEE half from its bits, straight from the format: sign, 5-bit exponent (bias 15), 10-bit
 * fraction; exponent 0 is subnormal. (NaN/inf not produced by these tests.) */
static double half_bits_to_double(uint16_t h)
{
    int sign = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    double v = e == 0 ? ldexp(m, -24) : ldexp(1024 + m, e - 25);
    return sign ? -v : v;
}

/* A random finite half with magnitude in [lo, hi). */
static uint16_t rand_half(uint64_t *s, float lo, float hi)
{
    float v = spk_test_randf(s, lo, hi);
    return spk_f32_to_f16(spk_test_rand(s) & 1 ? -v : v);
}

static const int sizes[] = {1, 7, 16, 33, 64, 576, 1000, 1536};
#define NSIZES ((int)(sizeof sizes / sizeof sizes[0]))

START_TEST(test_rmsnorm_matches_float64)
{
    /* atol 1e-6, rtol 1e-5 (outputs are O(1): x and w in [-2, 2)). */
    for (int isa = 0; isa <= 2; isa++) {
        if (!use_isa(isa))
            continue;
        for (int si = 0; si < NSIZES; si++) {
            int n = sizes[si];
            float *x = malloc(n * sizeof *x), *w = malloc(n * sizeof *w);
            float *out = malloc(n * sizeof *out);
            double *ref = malloc(n * sizeof *ref);
            spk_test_fill(x, n, 100 + n, -2.0f, 2.0f);
            spk_test_fill(w, n, 200 + n, -2.0f, 2.0f);
            double ss = 0;
            for (int i = 0; i < n; i++)
                ss += (double)x[i] * x[i];
            double sc = 1.0 / sqrt(ss / n + 1e-5);
            for (int i = 0; i < n; i++)
                ref[i] = x[i] * sc * w[i];
            spk_rmsnorm(out, x, w, n, 1e-5f);
            check_close(out, ref, n, 1e-6, 1e-5, "rmsnorm", isa);
            spk_rmsnorm(x, x, w, n, 1e-5f); /* in place */
            check_close(x, ref, n, 1e-6, 1e-5, "rmsnorm in place", isa);
            free(x), free(w), free(out), free(ref);
        }
    }
    spk_ops_force_isa(-1);
}
END_TEST

START_TEST(test_swiglu_matches_float64)
{
    /* rtol 1e-6 + atol 1e-7: vector exp is within a few ulp of expf. Gates span [-30, 30) and
     * a few are +-100 so the exp clamps are crossed without inf/nan. */
    for (int isa = 0; isa <= 2; isa++) {
        if (!use_isa(isa))
            continue;
        for (int si = 0; si < NSIZES; si++) {
            int n = sizes[si];
            float *g = malloc(n * sizeof *g), *u = malloc(n * sizeof *u);
            float *out = malloc(n * sizeof *out);
            double *ref = malloc(n * sizeof *ref);
            spk_test_fill(g, n, 300 + n, -30.0f, 30.0f);
            spk_test_fill(u, n, 400 + n, -3.0f, 3.0f);
            for (int i = 0; i < n; i += 97)
                g[i] = (i / 97) % 2 ? 100.0f : -100.0f;
            for (int i = 0; i < n; i++)
                ref[i] = g[i] / (1.0 + exp(-(double)g[i])) * u[i];
            spk_swiglu(out, g, u, n);
            check_close(out, ref, n, 1e-7, 1e-6, "swiglu", isa);
            spk_swiglu(g, g, u, n);
            check_close(g, ref, n, 1e-7, 1e-6, "swiglu in place", isa);
            free(g), free(u), free(out), free(ref);
        }
    }
    spk_ops_force_isa(-1);
}
END_TEST

START_TEST(test_add_matches_float64)
{
    /* Correctly rounded float sums: rtol 1.2e-7 (half an ulp is 6e-8). */
    for (int isa = 0; isa <= 2; isa++) {
        if (!use_isa(isa))
            continue;
        for (int si = 0; si < NSIZES; si++) {
            int n = sizes[si];
            float *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b);
            double *ref = malloc(n * sizeof *ref);
            spk_test_fill(a, n, 500 + n, -5.0f, 5.0f);
            spk_test_fill(b, n, 600 + n, -5.0f, 5.0f);
            for (int i = 0; i < n; i++)
                ref[i] = (double)a[i] + b[i];
            spk_add(a, a, b, n);
            check_close(a, ref, n, 0, 1.2e-7, "add", isa);
            free(a), free(b), free(ref);
        }
    }
    spk_ops_force_isa(-1);
}
END_TEST

START_TEST(test_softmax_is_stable_and_matches_float64)
{
    /* Logits offset by +1000 (exp would overflow without the max shift). atol 1e-7,
     * rtol 1e-5; the outputs must also sum to 1 within 1e-5. */
    for (int isa = 0; isa <= 2; isa++) {
        if (!use_isa(isa))
            continue;
        for (int si = 0; si < NSIZES; si++) {
            int n = sizes[si];
            float *x = malloc(n * sizeof *x);
            double *ref = malloc(n * sizeof *ref);
            spk_test_fill(x, n, 700 + n, -15.0f, 15.0f);
            for (int i = 0; i < n; i++)
                x[i] += 1000.0f;
            double mx = x[0], sum = 0;
            for (int i = 1; i < n; i++)
                mx = x[i] > mx ? x[i] : mx;
            for (int i = 0; i < n; i++)
                sum += ref[i] = exp((double)x[i] - mx);
            for (int i = 0; i < n; i++)
                ref[i] /= sum;
            spk_softmax(x, n);
            check_close(x, ref, n, 1e-7, 1e-5, "softmax", isa);
            double total = 0;
            for (int i = 0; i < n; i++)
                total += x[i];
            ck_assert_double_eq_tol(total, 1.0, 1e-5);
            free(x), free(ref);
        }
    }
    spk_ops_force_isa(-1);
}
END_TEST

START_TEST(test_rope_freqs_plain_matches_float64)
{
    /* theta^(-2i/d), rtol 1e-7 (one float rounding). */
    float f[64];
    double ref[64];
    spk_rope_freqs(f, 64, 10000.0f, NULL);
    for (int i = 0; i < 32; i++)
        ref[i] = pow(10000.0, -2.0 * i / 64);
    check_close(f, ref, 32, 0, 1.2e-7, "rope_freqs", 0);
    spk_rope_scaling none = {0.0f, 1.0f, 4.0f, 8192};
    spk_rope_freqs(f, 64, 10000.0f, &none);
    check_close(f, ref, 32, 0, 1.2e-7, "rope_freqs with factor 0", 0);
}
END_TEST

START_TEST(test_rope_freqs_llama3_scaling)
{
    /* Llama 3.1 (theta 500000, head dim 128, factor 8, low 1, high 4, original context 8192):
     * wavelengths below 8192/4 keep their frequency, above 8192/1 are divided by 8, and in
     * between blend with smooth = (8192/wavelen - 1) / (4 - 1). */
    const spk_rope_scaling sc = {8.0f, 1.0f, 4.0f, 8192};
    float f[64];
    double ref[64];
    spk_rope_freqs(f, 128, 500000.0f, &sc);
    int n_keep = 0, n_div = 0, n_smooth = 0;
    for (int i = 0; i < 64; i++) {
        double fr = pow(500000.0, -2.0 * i / 128), wl = 2 * M_PI / fr;
        if (wl < 8192.0 / 4) {
            ref[i] = fr;
            n_keep++;
        } else if (wl > 8192.0 / 1) {
            ref[i] = fr / 8;
            n_div++;
        } else {
            double s = (8192.0 / wl - 1) / (4 - 1);
            ref[i] = (1 - s) * fr / 8 + s * fr;
            n_smooth++;
        }
    }
    check_close(f, ref, 64, 0, 1.2e-7, "rope_freqs llama3", 0);
    ck_assert_int_eq(n_keep, 29); /* i 0..28 */
    ck_assert_int_eq(n_smooth, 6); /* i 29..34 */
    ck_assert_int_eq(n_div, 29);  /* i 35..63 */
    /* Known values (computed independently from Meta's reference apply_scaling). */
    ck_assert_double_eq_tol(f[0], 1.0, 1e-7);
    ck_assert_double_eq_tol(f[26] / 0.004839421345719893, 1.0, 2e-7);   /* kept */
    ck_assert_double_eq_tol(f[30] / 0.0013718935677611381, 1.0, 2e-7);  /* smooth 0.5928 */
    ck_assert_double_eq_tol(f[32] / 0.0005248461609929547, 1.0, 2e-7);  /* smooth 0.2813 */
    ck_assert_double_eq_tol(f[35] / 9.556212353964683e-05, 1.0, 2e-7);  /* divided by 8 */
    ck_assert_double_eq_tol(f[63] / 3.068925988914511e-07, 1.0, 2e-7);  /* divided by 8 */
}
END_TEST

START_TEST(test_rope_rotates_adjacent_pairs_like_float64)
{
    /* x values in [-1, 1): atol 2e-6 (angle reduced in double, cos/sin in float). Dims past
     * rot_dim stay bit-identical. */
    const int n_heads = 3, head_dim = 64;
    const int rot_dims[] = {64, 32};
    const int poss[] = {0, 1, 17, 4095, 100000};
    float freqs[32], x[3 * 64], x0[3 * 64];
    double ref[3 * 64];
    for (int r = 0; r < 2; r++) {
        int rot = rot_dims[r];
        spk_rope_freqs(freqs, rot, 10000.0f, NULL);
        for (int pi = 0; pi < 5; pi++) {
            int pos = poss[pi];
            spk_test_fill(x0, n_heads * head_dim, 800 + pos + r, -1.0f, 1.0f);
            memcpy(x, x0, sizeof x);
            for (int h = 0; h < n_heads; h++) {
                for (int d = 0; d < head_dim; d++)
                    ref[h * head_dim + d] = x0[h * head_dim + d];
                for (int i = 0; i < rot / 2; i++) {
                    double a = (double)pos * freqs[i];
                    double u = x0[h * head_dim + 2 * i], v = x0[h * head_dim + 2 * i + 1];
                    ref[h * head_dim + 2 * i] = u * cos(a) - v * sin(a);
                    ref[h * head_dim + 2 * i + 1] = u * sin(a) + v * cos(a);
                }
            }
            spk_rope(x, n_heads, head_dim, rot, pos, freqs);
            check_close(x, ref, n_heads * head_dim, 2e-6, 0, "rope", 0);
            for (int h = 0; h < n_heads; h++)
                for (int d = rot; d < head_dim; d++)
                    ck_assert(x[h * head_dim + d] == x0[h * head_dim + d]);
            /* Same position and table again (the cached cos/sin path): same result. */
            memcpy(x, x0, sizeof x);
            spk_rope(x, n_heads, head_dim, rot, pos, freqs);
            check_close(x, ref, n_heads * head_dim, 2e-6, 0, "rope again", 0);
        }
    }
    /* The same buffer rewritten with another theta, same position and size: the new table is
     * used (nothing stale from the previous call). */
    spk_rope_freqs(freqs, 32, 10000.0f, NULL);
    spk_rope(x, n_heads, head_dim, 32, 4095, freqs);
    spk_rope_freqs(freqs, 32, 500000.0f, NULL);
    spk_test_fill(x0, n_heads * head_dim, 4242, -1.0f, 1.0f);
    memcpy(x, x0, sizeof x);
    spk_rope(x, n_heads, head_dim, 32, 4095, freqs);
    for (int h = 0; h < n_heads; h++)
        for (int i = 0; i < 16; i++) {
            double a = 4095.0 * freqs[i];
            double u = x0[h * head_dim + 2 * i], v = x0[h * head_dim + 2 * i + 1];
            ck_assert_double_eq_tol(x[h * head_dim + 2 * i], u * cos(a) - v * sin(a), 2e-6);
            ck_assert_double_eq_tol(x[h * head_dim + 2 * i + 1], u * sin(a) + v * cos(a), 2e-6);
        }
}
END_TEST

/* ---- dequantization: blocks with random contents, decoded here from the format ------------ */

static void put_half(uint8_t *p, uint16_t h)
{
    memcpy(p, &h, 2);
}

static double get_half(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return half_bits_to_double(h);
}

/* Reference decoders, one element at a time from the layouts:
 *  Q4_0 (18 B): f16 d, 16 bytes; element e is nibble e/16 (low first) of byte e%16; d*(q-8).
 *  Q4_1 (20 B): f16 d, f16 m, 16 bytes as Q4_0; d*q + m.
 *  Q8_0 (34 B): f16 d, 32 int8; d*q.
 *  Q4_K (144 B): f16 d, f16 dmin, 12 scale bytes, 128 bytes of nibbles. Sub-block j = e/32
 *    has 6-bit scale sc[j] and min mn[j]: for j < 4 the low 6 bits of bytes j and 4+j; for
 *    j >= 4 the low/high nibble of byte 8+(j-4) plus, as bits 4-5, the top two bits of bytes
 *    j-4 (scale) and j (min). Quant: byte 32*(j/2) + e%32, low nibble for even j.
 *    Value d*sc*q - dmin*mn.
 *  Q6_K (210 B): 128 ql bytes, 64 qh bytes, 16 int8 scales, f16 d. Element e: half h = e/128,
 *    r = e%128; low 4 bits = nibble r/64 of ql[64h + r%64], high 2 bits = bits 2*(r/32) of
 *    qh[32h + r%32]; q = that 6-bit value - 32; value d * scales[e/16] * q. */
static double ref_elem(spk_dtype t, const uint8_t *b, int e)
{
    switch (t) {
    case SPK_DT_Q4_0:
        return get_half(b) * ((((b[2 + e % 16]) >> (4 * (e / 16))) & 15) - 8);
    case SPK_DT_Q4_1:
        return get_half(b) * (((b[4 + e % 16]) >> (4 * (e / 16))) & 15) + get_half(b + 2);
    case SPK_DT_Q8_0:
        return get_half(b) * (int8_t)b[2 + e];
    case SPK_DT_Q4_K: {
        const uint8_t *s = b + 4, *qs = b + 16;
        int sc[8], mn[8];
        for (int j = 0; j < 4; j++) {
            sc[j] = s[j] & 63;
            mn[j] = s[4 + j] & 63;
            sc[4 + j] = (s[8 + j] & 15) | ((s[j] >> 6) << 4);
            mn[4 + j] = (s[8 + j] >> 4) | ((s[4 + j] >> 6) << 4);
        }
        int j = e / 32;
        int q = (qs[32 * (j / 2) + e % 32] >> (4 * (j % 2))) & 15;
        return get_half(b) * sc[j] * q - get_half(b + 2) * mn[j];
    }
    case SPK_DT_Q6_K: {
        const uint8_t *ql = b, *qh = b + 128;
        const int8_t *scales = (const int8_t *)(b + 192);
        int h = e / 128, r = e % 128;
        int lo = (ql[64 * h + r % 64] >> (4 * (r / 64))) & 15;
        int hi = (qh[32 * h + r % 32] >> (2 * (r / 32))) & 3;
        return get_half(b + 208) * scales[e / 16] * ((lo | (hi << 4)) - 32);
    }
    default:
        return NAN;
    }
}

/* Largest |value| a block can produce, for the error scale. */
static double block_mag(spk_dtype t, const uint8_t *b)
{
    switch (t) {
    case SPK_DT_Q4_0: return fabs(get_half(b)) * 8;
    case SPK_DT_Q4_1: return fabs(get_half(b)) * 15 + fabs(get_half(b + 2));
    case SPK_DT_Q8_0: return fabs(get_half(b)) * 128;
    case SPK_DT_Q4_K: return fabs(get_half(b)) * 63 * 15 + fabs(get_half(b + 2)) * 63;
    case SPK_DT_Q6_K: return fabs(get_half(b + 208)) * 128 * 32;
    default: return 0;
    }
}

START_TEST(test_dequantize_quantized_types_match_format)
{
    /* Random bytes everywhere except the f16 scales (random finite halves). Error bound:
     * 4 float roundings of the block's largest magnitude: atol = 5e-7 * block_mag. */
    const spk_dtype types[] = {SPK_DT_Q4_0, SPK_DT_Q4_1, SPK_DT_Q8_0, SPK_DT_Q4_K, SPK_DT_Q6_K};
    uint64_t s = 12345;
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        spk_dtype t = types[ti];
        const spk_dtype_info *info = spk_dtype_get(t);
        ck_assert_ptr_nonnull(info);
        const int nb = 5, n = nb * (int)info->block;
        uint8_t *buf = malloc((size_t)nb * info->type_size);
        for (size_t i = 0; i < (size_t)nb * info->type_size; i++)
            buf[i] = (uint8_t)spk_test_rand(&s);
        for (int bi = 0; bi < nb; bi++) {
            uint8_t *b = buf + (size_t)bi * info->type_size;
            if (t == SPK_DT_Q6_K) {
                put_half(b + 208, rand_half(&s, 1e-4f, 0.05f));
            } else {
                put_half(b, rand_half(&s, 1e-4f, 0.05f));
                if (t == SPK_DT_Q4_1 || t == SPK_DT_Q4_K)
                    put_half(b + 2, rand_half(&s, 1e-4f, 0.05f));
            }
        }
        float *out = malloc(n * sizeof *out);
        double *ref = malloc(n * sizeof *ref);
        int nonzero = 0;
        for (int i = 0; i < n; i++) {
            const uint8_t *b = buf + (size_t)(i / info->block) * info->type_size;
            ref[i] = ref_elem(t, b, i % (int)info->block);
            nonzero += ref[i] != 0;
        }
        ck_assert_int_gt(nonzero, n / 2);
        for (int isa = 0; isa <= 2; isa++) {
            if (!use_isa(isa))
                continue;
            spk_dequantize_row(out, buf, t, n);
            for (int i = 0; i < n; i++) {
                const uint8_t *b = buf + (size_t)(i / info->block) * info->type_size;
                double tol = 5e-7 * block_mag(t, b);
                if (!(fabs(out[i] - ref[i]) <= tol))
                    ck_abort_msg("dequantize %s [%s]: element %d is %.9g, reference %.9g",
                                 info->name, isa_name(isa), i, out[i], ref[i]);
            }
        }
        free(buf), free(out), free(ref);
    }
    spk_ops_force_isa(-1);
}
END_TEST

START_TEST(test_dequantize_float_types_are_exact)
{
    const int n = 77;
    uint64_t s = 999;
    float f32[77], out[77];
    uint16_t h[77], bf[77];
    for (int i = 0; i < n; i++) {
        f32[i] = spk_test_randf(&s, -1e4f, 1e4f);
        h[i] = rand_half(&s, 1e-6f, 6e4f); /* includes f16 subnormals */
        bf[i] = (uint16_t)(spk_test_rand(&s) & 0xFFFF);
        if (((bf[i] >> 7) & 0xFF) == 0xFF) /* no inf/nan */
            bf[i] &= 0xBFFF;
    }
    for (int isa = 0; isa <= 2; isa++) {
        if (!use_isa(isa))
            continue;
        spk_dequantize_row(out, f32, SPK_DT_F32, n);
        ck_assert_mem_eq(out, f32, sizeof f32);
        spk_dequantize_row(out, h, SPK_DT_F16, n);
        for (int i = 0; i < n; i++)
            ck_assert_msg((double)out[i] == half_bits_to_double(h[i]), "F16 element %d [%s]", i,
                          isa_name(isa));
        spk_dequantize_row(out, bf, SPK_DT_BF16, n);
        for (int i = 0; i < n; i++) {
            /* bf16 is the top half of a float32: sign, 8-bit exponent (bias 127), 7 bits. */
            int sign = bf[i] >> 15, e = (bf[i] >> 7) & 255, m = bf[i] & 127;
            double v = e == 0 ? ldexp(m, -133) : ldexp(128 + m, e - 134);
            ck_assert_msg((double)out[i] == (sign ? -v : v), "BF16 element %d", i);
        }
    }
    spk_ops_force_isa(-1);
}
END_TEST

START_TEST(test_dequantize_unknown_or_partial_gives_zeros)
{
    float out[40];
    uint8_t blk[64];
    memset(blk, 0x77, sizeof blk);
    put_half(blk, spk_f32_to_f16(1.0f));
    for (int i = 0; i < 40; i++)
        out[i] = 123.0f;
    spk_dequantize_row(out, blk, (spk_dtype)99, 40);
    for (int i = 0; i < 40; i++)
        ck_assert(out[i] == 0.0f);
    for (int i = 0; i < 40; i++)
        out[i] = 123.0f;
    spk_dequantize_row(out, blk, SPK_DT_Q8_0, 40); /* one whole block, 8 left over */
    for (int i = 0; i < 32; i++)
        ck_assert(out[i] == 119.0f);
    for (int i = 32; i < 40; i++)
        ck_assert(out[i] == 0.0f);
}
END_TEST

/* ---- f16 rows ---------------------------------------------------------------------------- */

START_TEST(test_f16_rows_round_to_nearest_even_and_back)
{
    /* f32 -> f16 must round to nearest, ties to even, exactly as the scalar converter (and
     * within half an f16 ulp of the input); f16 -> f32 is exact for all finite halves. */
    const int n = 1013;
    float *x = malloc(n * sizeof *x), *back = malloc(n * sizeof *back);
    spk_f16 *h = malloc(n * sizeof *h);
    uint64_t s = 4242;
    for (int i = 0; i < n; i++) {
        float mag = ldexpf(1.0f, (int)(spk_test_rand(&s) % 40) - 26); /* 2^-26 .. 2^13 */
        x[i] = spk_test_randf(&s, -mag, mag);
    }
    x[0] = 65504.0f;         /* largest half */
    x[1] = 1.0f + ldexpf(1, -11); /* tie: rounds to even (1.0) */
    x[2] = 1.0f + 3 * ldexpf(1, -11); /* tie: rounds to even (1 + 2^-9) */
    static spk_f16 all[65536];
    static float allf[65536];
    for (int i = 0; i < 65536; i++)
        all[i] = (spk_f16)i;
    for (int isa = 0; isa <= 2; isa++) {
        if (!use_isa(isa))
            continue;
        spk_f32_to_f16_row(h, x, n);
        for (int i = 0; i < n; i++) {
            ck_assert_msg(h[i] == spk_f32_to_f16(x[i]), "f32->f16 [%s] element %d (%.9g): %04x",
                          isa_name(isa), i, x[i], h[i]);
            double hv = half_bits_to_double(h[i]);
            double ax = fabs((double)x[i]);
            double ulp = ax < ldexp(1, -14) ? ldexp(1, -24) : ldexp(1, (int)floor(log2(ax)) - 10);
            ck_assert_msg(fabs(hv - x[i]) <= ulp / 2, "f32->f16 [%s] element %d off by more "
                          "than half an ulp", isa_name(isa), i);
        }
        ck_assert_uint_eq(h[1], 0x3C00);
        ck_assert_uint_eq(h[2], 0x3C02);
        spk_f16_to_f32_row(back, h, n);
        for (int i = 0; i < n; i++)
            ck_assert((double)back[i] == half_bits_to_double(h[i]));
        spk_f16_to_f32_row(allf, all, 65536);
        for (int i = 0; i < 65536; i++) {
            if (((i >> 10) & 31) == 31)
                continue; /* inf/nan */
            ck_assert_msg((double)allf[i] == half_bits_to_double((uint16_t)i),
                          "f16->f32 [%s] of %04x", isa_name(isa), i);
        }
    }
    spk_ops_force_isa(-1);
    free(x), free(back), free(h);
}
END_TEST

/* ---- attention --------------------------------------------------------------------------- */

START_TEST(test_attn_head_matches_float64_softmax_weighted_sum)
{
    /* q in [-2, 2), K and V f16 in [-1, 1), scale 1/sqrt(head_dim); K/V rows interleaved with
     * other heads (stride 3*head_dim). Reference decodes the same f16 bits in double.
     * atol 2e-6, rtol 1e-5 on outputs of magnitude <= 1. With a learned sink logit (gpt-oss) the
     * denominator gains e^sink: sinks below, inside and far above the scores' range (200: every
     * weight ~0, the output 0, not NaN). */
    const int n_kvs[] = {1, 5, 64, 300};
    const int head_dims[] = {64, 128, 80, 20};
    for (int hi = 0; hi < 4; hi++) {
        int hd = head_dims[hi], stride = 3 * hd;
        for (int ki = 0; ki < 4; ki++) {
            int n_kv = n_kvs[ki];
            float *q = malloc(hd * sizeof *q), *out = malloc(hd * sizeof *out);
            float *scratch = malloc(n_kv * sizeof *scratch);
            spk_f16 *k = malloc((size_t)n_kv * stride * sizeof *k);
            spk_f16 *v = malloc((size_t)n_kv * stride * sizeof *v);
            double *ref = malloc(hd * sizeof *ref), *p = malloc(n_kv * sizeof *p);
            uint64_t s = 77 + n_kv * 13 + hd;
            spk_test_fill(q, hd, s, -2.0f, 2.0f);
            for (size_t i = 0; i < (size_t)n_kv * stride; i++) {
                k[i] = spk_f32_to_f16(spk_test_randf(&s, -1.0f, 1.0f));
                v[i] = spk_f32_to_f16(spk_test_randf(&s, -1.0f, 1.0f));
            }
            float scale = 1.0f / sqrtf((float)hd);
            double mx = -INFINITY, sum = 0;
            for (int t = 0; t < n_kv; t++) {
                double d = 0;
                for (int j = 0; j < hd; j++)
                    d += q[j] * half_bits_to_double(k[(size_t)t * stride + j]);
                p[t] = d * scale;
                mx = p[t] > mx ? p[t] : mx;
            }
            for (int t = 0; t < n_kv; t++)
                sum += p[t] = exp(p[t] - mx);
            const float sinks[] = {-4.0f, 0.5f, 2.0f, 200.0f};
            for (int si = -1; si < 4; si++) {
                const double den = si < 0 ? sum : sum + exp((double)sinks[si] - mx);
                for (int j = 0; j < hd; j++) {
                    double o = 0;
                    for (int t = 0; t < n_kv; t++)
                        o += p[t] * half_bits_to_double(v[(size_t)t * stride + j]);
                    ref[j] = o / den;
                }
                for (int isa = 0; isa <= 2; isa++) {
                    if (!use_isa(isa))
                        continue;
                    for (int j = 0; j < hd; j++)
                        out[j] = 1e30f; /* must be overwritten */
                    spk_attn_head(out, q, k, v, n_kv, hd, stride, scale, si < 0 ? NULL : &sinks[si], scratch);
                    char what[80];
                    snprintf(what, sizeof what, "attn head_dim %d n_kv %d sink %g", hd, n_kv,
                             si < 0 ? -INFINITY : (double)sinks[si]);
                    check_close(out, ref, hd, 2e-6, 1e-5, what, isa);
                }
            }
            free(q), free(out), free(scratch), free(k), free(v), free(ref), free(p);
        }
    }
    spk_ops_force_isa(-1);
}
END_TEST

START_TEST(test_force_scalar_wins_over_pinned_level)
{
    spk_ops_force_isa(SPK_OPS_AVX512);
    spk_cpu_force_scalar(1);
    ck_assert_int_eq(spk_ops_isa(), SPK_OPS_SCALAR);
    spk_cpu_force_scalar(0);
    spk_ops_force_isa(-1);
    /* automatic: the best this CPU has */
    int best = spk_ops_isa_usable(SPK_OPS_AVX512) ? 2 : spk_ops_isa_usable(SPK_OPS_AVX2) ? 1 : 0;
    ck_assert_int_eq(spk_ops_isa(), best);
}
END_TEST

static Suite *ops_suite(void)
{
    Suite *s = suite_create("ops");
    TCase *tc = tcase_create("ops");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_rmsnorm_matches_float64);
    tcase_add_test(tc, test_swiglu_matches_float64);
    tcase_add_test(tc, test_add_matches_float64);
    tcase_add_test(tc, test_softmax_is_stable_and_matches_float64);
    tcase_add_test(tc, test_rope_freqs_plain_matches_float64);
    tcase_add_test(tc, test_rope_freqs_llama3_scaling);
    tcase_add_test(tc, test_rope_rotates_adjacent_pairs_like_float64);
    tcase_add_test(tc, test_dequantize_quantized_types_match_format);
    tcase_add_test(tc, test_dequantize_float_types_are_exact);
    tcase_add_test(tc, test_dequantize_unknown_or_partial_gives_zeros);
    tcase_add_test(tc, test_f16_rows_round_to_nearest_even_and_back);
    tcase_add_test(tc, test_attn_head_matches_float64_softmax_weighted_sum);
    tcase_add_test(tc, test_force_scalar_wins_over_pinned_level);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    printf("ops SIMD levels here: %s\n", spk_cpu_simd_names());
    return spk_test_run(ops_suite());
}
