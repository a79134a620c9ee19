/* Element type table and scalar half/bfloat16 conversions. */
#include "common/dtype.h"

#include <math.h>
#include <string.h>

static const spk_dtype_info infos[] = {
    [SPK_DT_F32] = {"F32", 1, 4},
    [SPK_DT_F16] = {"F16", 1, 2},
    [SPK_DT_Q4_0] = {"Q4_0", SPK_QK4_0, sizeof(spk_block_q4_0)},
    [SPK_DT_Q4_1] = {"Q4_1", SPK_QK4_1, sizeof(spk_block_q4_1)},
    [SPK_DT_Q5_0] = {"Q5_0", SPK_QK5_0, sizeof(spk_block_q5_0)},
    [SPK_DT_Q5_1] = {"Q5_1", SPK_QK5_1, sizeof(spk_block_q5_1)},
    [SPK_DT_Q8_0] = {"Q8_0", SPK_QK8_0, sizeof(spk_block_q8_0)},
    [SPK_DT_Q2_K] = {"Q2_K", SPK_QK_K, sizeof(spk_block_q2_K)},
    [SPK_DT_Q3_K] = {"Q3_K", SPK_QK_K, sizeof(spk_block_q3_K)},
    [SPK_DT_Q4_K] = {"Q4_K", SPK_QK_K, sizeof(spk_block_q4_K)},
    [SPK_DT_Q5_K] = {"Q5_K", SPK_QK_K, sizeof(spk_block_q5_K)},
    [SPK_DT_Q6_K] = {"Q6_K", SPK_QK_K, sizeof(spk_block_q6_K)},
    [SPK_DT_BF16] = {"BF16", 1, 2},
    [SPK_DT_MXFP4] = {"MXFP4", SPK_QK_MXFP4, sizeof(spk_block_mxfp4)},
};

_Static_assert(sizeof infos / sizeof infos[0] == SPK_DT_LIMIT, "SPK_DT_LIMIT");

/* ggml's kvalues_mxfp4: the E2M1 values doubled (0, 0.5, 1, 1.5, 2, 3, 4, 6 and negatives). */
const int8_t spk_mxfp4_values[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

float spk_e8m0_to_f32_half(uint8_t e)
{
    /* ggml_e8m0_to_fp32_half: 2^(e-128); e 0 and 1 give the f32 subnormals 2^-128, 2^-127 */
    const uint32_t bits = e < 2 ? 0x00200000u << e : (uint32_t)(e - 1) << 23;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

_Static_assert(sizeof(spk_block_q4_0) == 18, "q4_0 layout");
_Static_assert(sizeof(spk_block_q4_1) == 20, "q4_1 layout");
_Static_assert(sizeof(spk_block_q8_0) == 34, "q8_0 layout");
_Static_assert(sizeof(spk_block_q5_0) == 22, "q5_0 layout");
_Static_assert(sizeof(spk_block_q5_1) == 24, "q5_1 layout");
_Static_assert(sizeof(spk_block_q2_K) == 84, "q2_K layout");
_Static_assert(sizeof(spk_block_q3_K) == 110, "q3_K layout");
_Static_assert(sizeof(spk_block_q5_K) == 176, "q5_K layout");
_Static_assert(sizeof(spk_block_mxfp4) == 17, "mxfp4 layout");
_Static_assert(sizeof(spk_block_q8_1) == 36, "q8_1 layout");
_Static_assert(sizeof(spk_block_q4_K) == 144, "q4_K layout");
_Static_assert(sizeof(spk_block_q6_K) == 210, "q6_K layout");

const spk_dtype_info *spk_dtype_get(uint32_t type)
{
    if (type >= sizeof infos / sizeof infos[0] || infos[type].name == NULL)
        return NULL;
    return &infos[type];
}

size_t spk_dtype_row_size(spk_dtype t, size_t n)
{
    const spk_dtype_info *i = spk_dtype_get((uint32_t)t);
    return i ? n / i->block * i->type_size : 0;
}

/* Scan `n` halves (or bfloat16s: same test with mask 0x7f80) at byte offset `off` of blocks of
 * `stride` bytes; index of the first with an all-ones exponent (Inf or NaN), else n. */
static size_t scan16(const uint8_t *p, size_t n, size_t stride, size_t off, uint16_t mask)
{
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, p + i * stride + off, 2);
        if ((h & mask) == mask)
            return i;
    }
    return n;
}

size_t spk_dtype_find_nonfinite(spk_dtype t, const void *data, size_t n_blocks, const char **field,
                                float *value)
{
    const uint8_t *p = data;
    size_t bad = n_blocks, stride = 0, off = 0, off2 = 0;
    const char *name = "d", *name2 = NULL;
    switch (t) {
    case SPK_DT_F32: {
        name = "value";
        for (size_t i = 0; i < n_blocks && bad == n_blocks; i++) {
            uint32_t b;
            memcpy(&b, p + 4 * i, 4);
            if ((b & 0x7f800000u) == 0x7f800000u)
                bad = i;
        }
        if (bad < n_blocks) {
            if (field)
                *field = name;
            if (value)
                memcpy(value, p + 4 * bad, 4);
        }
        return bad;
    }
    case SPK_DT_F16:
        name = "value";
        bad = scan16(p, n_blocks, 2, 0, 0x7c00);
        break;
    case SPK_DT_BF16:
        name = "value";
        bad = scan16(p, n_blocks, 2, 0, 0x7f80);
        if (bad < n_blocks) {
            uint16_t h;
            memcpy(&h, p + 2 * bad, 2);
            if (field)
                *field = name;
            if (value)
                *value = spk_bf16_to_f32(h);
        }
        return bad;
    case SPK_DT_Q4_0:
        stride = sizeof(spk_block_q4_0), off = offsetof(spk_block_q4_0, d);
        break;
    case SPK_DT_Q8_0:
        stride = sizeof(spk_block_q8_0), off = offsetof(spk_block_q8_0, d);
        break;
    case SPK_DT_Q4_1:
        stride = sizeof(spk_block_q4_1), off = offsetof(spk_block_q4_1, d);
        off2 = offsetof(spk_block_q4_1, m), name2 = "m";
        break;
    case SPK_DT_Q5_0:
        stride = sizeof(spk_block_q5_0), off = offsetof(spk_block_q5_0, d);
        break;
    case SPK_DT_Q5_1:
        stride = sizeof(spk_block_q5_1), off = offsetof(spk_block_q5_1, d);
        off2 = offsetof(spk_block_q5_1, m), name2 = "m";
        break;
    case SPK_DT_Q2_K:
        stride = sizeof(spk_block_q2_K), off = offsetof(spk_block_q2_K, d);
        off2 = offsetof(spk_block_q2_K, dmin), name2 = "dmin";
        break;
    case SPK_DT_Q3_K:
        stride = sizeof(spk_block_q3_K), off = offsetof(spk_block_q3_K, d);
        break;
    case SPK_DT_Q5_K:
        stride = sizeof(spk_block_q5_K), off = offsetof(spk_block_q5_K, d);
        off2 = offsetof(spk_block_q5_K, dmin), name2 = "dmin";
        break;
    case SPK_DT_Q4_K:
        stride = sizeof(spk_block_q4_K), off = offsetof(spk_block_q4_K, d);
        off2 = offsetof(spk_block_q4_K, dmin), name2 = "dmin";
        break;
    case SPK_DT_Q6_K:
        stride = sizeof(spk_block_q6_K), off = offsetof(spk_block_q6_K, d);
        break;
    case SPK_DT_MXFP4: /* E8M0 0xFF is NaN in the OCP MX spec (ggml would read it as 2^127) */
        for (size_t i = 0; i < n_blocks; i++)
            if (p[i * sizeof(spk_block_mxfp4)] == 0xFF) {
                if (field)
                    *field = "e";
                if (value)
                    *value = NAN;
                return i;
            }
        return n_blocks;
    default:
        return n_blocks;
    }
    if (stride && name2) { /* one pass over both halves of each block */
        for (size_t i = 0; i < n_blocks; i++) {
            uint16_t a, b;
            memcpy(&a, p + i * stride + off, 2);
            memcpy(&b, p + i * stride + off2, 2);
            if (((a & 0x7c00) == 0x7c00) | ((b & 0x7c00) == 0x7c00)) {
                bad = i;
                if ((a & 0x7c00) != 0x7c00)
                    off = off2, name = name2;
                break;
            }
        }
    } else if (stride) {
        bad = scan16(p, n_blocks, stride, off, 0x7c00);
    } else {
        stride = 2; /* F16 elements */
    }
    if (bad < n_blocks) {
        uint16_t h;
        memcpy(&h, p + bad * stride + off, 2);
        if (field)
            *field = name;
        if (value)
            *value = spk_f16_to_f32(h);
    }
    return bad;
}

float spk_f16_to_f32(spk_f16 h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    uint32_t bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else { /* subnormal: normalize */
            int e = -1;
            do {
                e++;
                mant <<= 1;
            } while ((mant & 0x400) == 0);
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((mant & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

spk_f16 spk_f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000;
    int32_t exp = (int32_t)((x >> 23) & 0xff) - 127 + 15;
    uint32_t mant = x & 0x7fffff;
    if (((x >> 23) & 0xff) == 0xff) /* inf/nan */
        return (spk_f16)(sign | 0x7c00 | (mant ? 0x200 : 0));
    if (exp >= 31)
        return (spk_f16)(sign | 0x7c00);
    if (exp <= 0) {
        if (exp < -10)
            return (spk_f16)sign;
        mant |= 0x800000;
        uint32_t shift = (uint32_t)(14 - exp);
        uint32_t half = mant >> shift;
        uint32_t rem = mant & ((1u << shift) - 1);
        uint32_t mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1)))
            half++;
        return (spk_f16)(sign | half);
    }
    uint32_t h = sign | ((uint32_t)exp << 10) | (mant >> 13);
    uint32_t rem = mant & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1)))
        h++; /* may carry into the exponent: still correct rounding */
    return (spk_f16)h;
}

float spk_bf16_to_f32(uint16_t b)
{
    uint32_t bits = (uint32_t)b << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t spk_f32_to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffff) > 0x7f800000)
        return (uint16_t)((x >> 16) | 0x40);
    x += 0x7fff + ((x >> 16) & 1);
    return (uint16_t)(x >> 16);
}
