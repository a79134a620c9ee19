/*
 * Element-wise and attention kernels: the portable scalar versions, dequantization of every
 * stored type, and run-time dispatch to the AVX2 / AVX-512 variants in cpu/ops_x86.c and the NEON
 * ones in cpu/ops_arm.c.
 */
#include "cpu/ops.h"

#include <float.h>
#include <math.h>
#include <stdatomic.h>
#include <string.h>

#include "cpu/features.h"
#include "cpu/ops_isa.h"
#include "cpu/quant.h"

/* ---- dispatch ------------------------------------------------------------------------------ */

static atomic_int g_forced_isa = -1;

int spk_ops_isa_usable(int isa)
{
    if (isa == SPK_OPS_SCALAR)
        return 1;
#if SPK_OPS_X86
    const spk_cpu_features *f = spk_cpu_get_features();
    int avx2 = f->avx2 && f->fma && f->f16c;
    if (isa == SPK_OPS_AVX2)
        return avx2;
    if (isa == SPK_OPS_AVX512)
        return avx2 && f->avx512f;
#elif SPK_OPS_ARM
    if (isa == SPK_OPS_NEON)
        return 1;
#endif
    return 0;
}

void spk_ops_force_isa(int isa)
{
    atomic_store(&g_forced_isa, isa);
}

int spk_ops_isa(void)
{
    if (spk_cpu_scalar_forced())
        return SPK_OPS_SCALAR;
    int f = atomic_load_explicit(&g_forced_isa, memory_order_relaxed);
    if (f >= 0 && spk_ops_isa_usable(f))
        return f;
    if (spk_ops_isa_usable(SPK_OPS_AVX512))
        return SPK_OPS_AVX512;
    if (spk_ops_isa_usable(SPK_OPS_AVX2))
        return SPK_OPS_AVX2;
    return SPK_OPS_SCALAR;
}

#if SPK_OPS_X86
#define DISPATCH(name, ...)                                                                    \
    do {                                                                                       \
        int isa_ = spk_ops_isa();                                                              \
        if (isa_ == SPK_OPS_AVX512) {                                                          \
            name##_avx512(__VA_ARGS__);                                                        \
            return;                                                                            \
        }                                                                                      \
        if (isa_ == SPK_OPS_AVX2) {                                                            \
            name##_avx2(__VA_ARGS__);                                                          \
            return;                                                                            \
        }                                                                                      \
    } while (0)
#elif SPK_OPS_ARM
#define DISPATCH(name, ...)                                                                    \
    do {                                                                                       \
        if (spk_ops_isa() == SPK_OPS_NEON) {                                                   \
            name##_neon(__VA_ARGS__);                                                          \
            return;                                                                            \
        }                                                                                      \
    } while (0)
#else
#define DISPATCH(name, ...) ((void)0)
#endif

/* ---- normalization and element-wise ------------------------------------------------------ */

void spk_rmsnorm(float *out, const float *x, const float *w, int n, float eps)
{
    DISPATCH(spk_rmsnorm, out, x, w, n, eps);
    double ss = 0.0;
    for (int i = 0; i < n; i++)
        ss += (double)x[i] * x[i];
    float scale = (float)(1.0 / sqrt(ss / (n > 0 ? n : 1) + eps));
    for (int i = 0; i < n; i++)
        out[i] = x[i] * scale * w[i];
}

void spk_swiglu(float *out, const float *gate, const float *up, int n)
{
    DISPATCH(spk_swiglu, out, gate, up, n);
    for (int i = 0; i < n; i++) {
        float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

void spk_add(float *out, const float *a, const float *b, int n)
{
    DISPATCH(spk_add, out, a, b, n);
    for (int i = 0; i < n; i++)
        out[i] = a[i] + b[i];
}

void spk_softmax(float *x, int n)
{
    DISPATCH(spk_softmax, x, n);
    if (n <= 0)
        return;
    float mx = x[0];
    for (int i = 1; i < n; i++)
        mx = x[i] > mx ? x[i] : mx;
    double sum = 0.0;
    for (int i = 0; i < n; i++) {
        x[i] = expf(x[i] - mx);
        sum += x[i];
    }
    float inv = (float)(1.0 / sum);
    for (int i = 0; i < n; i++)
        x[i] *= inv;
}

/* ---- rotary position embedding ------------------------------------------------------------ */

void spk_rope_freqs(float *freqs, int rot_dim, float theta, const spk_rope_scaling *scaling)
{
    const double two_pi = 6.283185307179586476925;
    int half = rot_dim / 2;
    int scaled = scaling && scaling->factor > 0.0f && scaling->orig_ctx > 0;
    double factor = scaled ? scaling->factor : 1.0;
    double lo_f = scaled ? scaling->low_freq_factor : 1.0;
    double hi_f = scaled ? scaling->high_freq_factor : 1.0;
    double orig = scaled ? scaling->orig_ctx : 1.0;
    /* Llama 3.1: wavelengths shorter than orig/hi_f keep their frequency, longer than orig/lo_f
     * are divided by `factor`, and in between the two are blended linearly in orig/wavelength.
     * Factors <= 0 or hi_f <= lo_f leave an empty blend band (a plain threshold). */
    double lo_wl = lo_f > 0.0 ? orig / lo_f : INFINITY;
    double hi_wl = hi_f > 0.0 ? orig / hi_f : INFINITY;
    for (int i = 0; i < half; i++) {
        double f = pow((double)theta, -2.0 * i / rot_dim);
        if (scaled) {
            double wl = two_pi / f;
            if (wl < hi_wl) {
                /* high frequency: unchanged */
            } else if (wl > lo_wl || hi_f <= lo_f) {
                f /= factor;
            } else {
                double smooth = (orig / wl - lo_f) / (hi_f - lo_f);
                f = (1.0 - smooth) * f / factor + smooth * f;
            }
        }
        freqs[i] = (float)f;
    }
}

/* The cos/sin of the last (pos, freqs) this thread rotated by: every layer rotates Q and K at
 * the same position with the same table, so all but the first call per token skip the trig.
 * Keyed on the table's contents, not its address, so a rewritten table is never stale. */
#define ROPE_CACHE_MAX 256
typedef struct rope_cache {
    int pos, half;
    float f[ROPE_CACHE_MAX], c[ROPE_CACHE_MAX], s[ROPE_CACHE_MAX];
} rope_cache;
static _Thread_local rope_cache tl_rope = {.half = -1};

static void rope_angle(float *c, float *s, int pos, float freq)
{
    const double two_pi = 6.283185307179586476925;
    /* Reduce the angle in double: pos * freq reaches 1e5 radians at long contexts, where a
     * float angle would be off by ~1e-2. */
    double a = (double)pos * freq;
    a -= two_pi * floor(a * (1.0 / two_pi));
    *c = cosf((float)a);
    *s = sinf((float)a);
}

/* The pair of dims rotated together: (2i, 2i+1) in normal mode, (i, i + rot_dim/2) in NEOX. */
static void rope_impl(float *x, int n_heads, int head_dim, int rot_dim, int pos, const float *freqs, int neox)
{
    int half = rot_dim / 2;
    const int stride = neox ? 1 : 2, other = neox ? half : 1;
    rope_cache *rc = &tl_rope;
    int cached = half <= ROPE_CACHE_MAX;
    if (cached && !(rc->half == half && rc->pos == pos &&
                    memcmp(rc->f, freqs, (size_t)half * sizeof(float)) == 0)) {
        for (int i = 0; i < half; i++)
            rope_angle(&rc->c[i], &rc->s[i], pos, freqs[i]);
        memcpy(rc->f, freqs, (size_t)half * sizeof(float));
        rc->half = half;
        rc->pos = pos;
    }
    for (int i = 0; i < half; i++) {
        float c, s;
        if (cached) {
            c = rc->c[i];
            s = rc->s[i];
        } else {
            rope_angle(&c, &s, pos, freqs[i]);
        }
        for (int h = 0; h < n_heads; h++) {
            float *p = x + (size_t)h * head_dim + stride * i;
            float x0 = p[0], x1 = p[other];
            p[0] = x0 * c - x1 * s;
            p[other] = x0 * s + x1 * c;
        }
    }
}

void spk_rope(float *x, int n_heads, int head_dim, int rot_dim, int pos, const float *freqs)
{
    rope_impl(x, n_heads, head_dim, rot_dim, pos, freqs, 0);
}

void spk_rope_neox(float *x, int n_heads, int head_dim, int rot_dim, int pos, const float *freqs)
{
    rope_impl(x, n_heads, head_dim, rot_dim, pos, freqs, 1);
}

/* ---- f16 rows ---------------------------------------------------------------------------- */

void spk_f32_to_f16_row(spk_f16 *out, const float *x, int n)
{
    DISPATCH(spk_f32_to_f16_row, out, x, n);
    for (int i = 0; i < n; i++)
        out[i] = spk_f32_to_f16(x[i]);
}

void spk_f16_to_f32_row(float *out, const spk_f16 *x, int n)
{
    DISPATCH(spk_f16_to_f32_row, out, x, n);
    for (int i = 0; i < n; i++)
        out[i] = spk_f16_to_f32(x[i]);
}

/* ---- dequantization ---------------------------------------------------------------------- */

static float ld_f16(const void *p)
{
    spk_f16 h;
    memcpy(&h, p, 2);
    return spk_f16_to_f32(h);
}

/* Q4_0: 32 values, d * (q - 8); low nibbles are values 0..15, high nibbles 16..31. */
static void deq_q4_0(float *y, const uint8_t *b)
{
    float d = ld_f16(b);
    const uint8_t *qs = b + 2;
    for (int j = 0; j < 16; j++) {
        y[j] = d * (float)((qs[j] & 0xF) - 8);
        y[j + 16] = d * (float)((qs[j] >> 4) - 8);
    }
}

/* Q4_1: d * q + m, same nibble order as Q4_0. */
static void deq_q4_1(float *y, const uint8_t *b)
{
    float d = ld_f16(b), m = ld_f16(b + 2);
    const uint8_t *qs = b + 4;
    for (int j = 0; j < 16; j++) {
        y[j] = d * (float)(qs[j] & 0xF) + m;
        y[j + 16] = d * (float)(qs[j] >> 4) + m;
    }
}

/* Q8_0: d * q (q signed). Q8_1 is the same with an extra f16 (d*sum) before the quants. */
static void deq_q8(float *y, const uint8_t *b, int qs_off)
{
    float d = ld_f16(b);
    const int8_t *qs = (const int8_t *)(b + qs_off);
    for (int j = 0; j < 32; j++)
        y[j] = d * (float)qs[j];
}

/* Q4_K: 8 sub-blocks of 32 with 6-bit scales sc and mins mn packed in 12 bytes:
 * sub-block j < 4: sc = s[j] & 63, mn = s[j+4] & 63; j >= 4: the low 4 bits come from
 * s[j+4] (low nibble for sc, high nibble for mn) and the high 2 bits from the top bits of
 * s[j-4] (sc) and s[j] (mn). Value = d*sc*q - dmin*mn. Each 32 bytes of quants hold two
 * sub-blocks: low nibbles the first, high nibbles the second. */
static void deq_q4_k(float *y, const uint8_t *b)
{
    float d = ld_f16(b), dmin = ld_f16(b + 2);
    const uint8_t *s = b + 4, *qs = b + 4 + SPK_K_SCALE_SIZE;
    for (int j = 0; j < 8; j++) {
        int sc, mn;
        if (j < 4) {
            sc = s[j] & 63;
            mn = s[j + 4] & 63;
        } else {
            sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
            mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
        }
        float dl = d * (float)sc, ml = dmin * (float)mn;
        const uint8_t *q = qs + (j / 2) * 32;
        int shift = (j & 1) * 4;
        for (int l = 0; l < 32; l++)
            y[j * 32 + l] = dl * (float)((q[l] >> shift) & 0xF) - ml;
    }
}

/* Q6_K: 6-bit quants (low 4 bits in ql, high 2 bits in qh), offset 32, 16 int8 scales of 16
 * values each, one f16 d. Per half of 128 values: ql 64 bytes, qh 32 bytes, 8 scales; in a
 * half, value l + 32*k (k = 0..3) takes nibble (k >> 1) of ql[l + 32*(k & 1)] and bits
 * 2k..2k+1 of qh[l]. */
static void deq_q6_k(float *y, const uint8_t *b)
{
    const uint8_t *ql = b, *qh = b + SPK_QK_K / 2;
    const int8_t *sc = (const int8_t *)(b + SPK_QK_K / 2 + SPK_QK_K / 4);
    float d = ld_f16(b + SPK_QK_K / 2 + SPK_QK_K / 4 + SPK_QK_K / 16);
    for (int half = 0; half < 2; half++) {
        for (int k = 0; k < 4; k++) {
            for (int l = 0; l < 32; l++) {
                int lo = (ql[l + 32 * (k & 1)] >> (4 * (k >> 1))) & 0xF;
                int hi = (qh[l] >> (2 * k)) & 3;
                int q = (lo | (hi << 4)) - 32;
                y[32 * k + l] = d * (float)sc[2 * k + l / 16] * (float)q;
            }
        }
        y += 128;
        ql += 64;
        qh += 32;
        sc += 8;
    }
}

void spk_dequantize_row(float *out, const void *src, spk_dtype type, int n)
{
    const uint8_t *p = src;
    if (n <= 0)
        return;
    switch (type) {
    case SPK_DT_F32:
        memcpy(out, src, (size_t)n * sizeof(float));
        return;
    case SPK_DT_F16:
        if (((uintptr_t)src & 1) == 0) {
            spk_f16_to_f32_row(out, src, n);
        } else {
            for (int i = 0; i < n; i++)
                out[i] = ld_f16(p + 2 * (size_t)i);
        }
        return;
    case SPK_DT_BF16:
        for (int i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * (size_t)i, 2);
            out[i] = spk_bf16_to_f32(h);
        }
        return;
    default:
        break;
    }
    const spk_dtype_info *info = spk_dtype_get((uint32_t)type);
    uint32_t bk = info ? info->block : (type == SPK_DT_Q8_1 ? SPK_QK8_1 : 0);
    size_t bsize = info ? info->type_size : (type == SPK_DT_Q8_1 ? sizeof(spk_block_q8_1) : 0);
    int nb = bk ? n / (int)bk : 0;
    int done = 0;
    for (int i = 0; i < nb; i++, p += bsize) {
        float *y = out + (size_t)i * bk;
        done += spk_quant_dequantize_block(y, p, type) ? (int)bk : 0;
        switch (type) {
        case SPK_DT_Q4_0: deq_q4_0(y, p); break;
        case SPK_DT_Q4_1: deq_q4_1(y, p); break;
        case SPK_DT_Q8_0: deq_q8(y, p, 2); break;
        case SPK_DT_Q8_1: deq_q8(y, p, 4); break;
        case SPK_DT_Q4_K: deq_q4_k(y, p); break;
        case SPK_DT_Q6_K: deq_q6_k(y, p); break;
        default: break;
        }
    }
    /* A partial last block or an unknown type cannot be decoded: give zeros, not garbage. */
    if (type == SPK_DT_Q4_0 || type == SPK_DT_Q4_1 || type == SPK_DT_Q8_0 ||
        type == SPK_DT_Q8_1 || type == SPK_DT_Q4_K || type == SPK_DT_Q6_K)
        done = nb * (int)bk;
    if (done < n)
        memset(out + done, 0, (size_t)(n - done) * sizeof(float));
}

/* ---- attention --------------------------------------------------------------------------- */

void spk_attn_head(float *out, const float *q, const spk_f16 *k, const spk_f16 *v, int n_kv,
                   int head_dim, int stride, float scale, const float *sink, float *scratch)
{
    DISPATCH(spk_attn_head, out, q, k, v, n_kv, head_dim, stride, scale, sink, scratch);
    for (int d = 0; d < head_dim; d++)
        out[d] = 0.0f;
    if (n_kv <= 0)
        return;
    float mx = -FLT_MAX;
    for (int t = 0; t < n_kv; t++) {
        const spk_f16 *kt = k + (size_t)t * stride;
        float s = 0.0f;
        for (int d = 0; d < head_dim; d++)
            s += q[d] * spk_f16_to_f32(kt[d]);
        s *= scale;
        scratch[t] = s;
        mx = s > mx ? s : mx;
    }
    float sum = 0.0f;
    for (int t = 0; t < n_kv; t++) {
        float p = expf(scratch[t] - mx);
        sum += p;
        const spk_f16 *vt = v + (size_t)t * stride;
        for (int d = 0; d < head_dim; d++)
            out[d] += p * spk_f16_to_f32(vt[d]);
    }
    if (sink) /* the sink's share of the denominator (e^(sink - mx) may be inf: the output is then 0) */
        sum += expf(*sink - mx);
    float inv = 1.0f / sum;
    for (int d = 0; d < head_dim; d++)
        out[d] *= inv;
}
