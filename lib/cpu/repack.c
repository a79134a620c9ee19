/*
 * Weight repacking at load (cpu/matmul.h: spk_matmul_pack): the packed layouts the kernels read,
 * one table entry per (type, layout). A packed matrix has the file's size: its first
 * 8 * floor(n_out / 8) rows become groups of 8 rows in the kernels' order, the leftover rows stay
 * in the file's layout at the file's offsets (so group g starts at byte 8 * g * wrow and a
 * leftover row r at r * wrow, as before packing).
 *
 * SPK_MM_LAYOUT_R8 for Q8_0: per group, per block b (272 bytes = 8 file blocks):
 *   bytes 0..15     the 8 rows' f16 scales d, row j at 2j
 *   bytes 16..271   the codes, 8 registers of 32 bytes: register k, dword j = code bytes
 *                   4k..4k+3 of row j (cpu/matmul_x86_q8.c's tile_q8t builds the same from the
 *                   file layout)
 *
 * SPK_MM_LAYOUT_R8 for MXFP4: per group, per block b (136 bytes = 8 file blocks):
 *   bytes 0..7      the 8 rows' E8M0 scales e, row j at j
 *   bytes 8..135    the codes, 4 registers of 32 bytes: register k, dword j = code bytes
 *                   4k..4k+3 of row j (cpu/matmul_x86_mxfp4.c's tile8 builds the same)
 * SPK_MM_LAYOUT_R8 for Q4_K: per group, per super-block b (1152 bytes = 8 file blocks):
 *   bytes 0..15     the 8 rows' f16 scales d, row j at 2j
 *   bytes 16..31    the 8 rows' f16 mins' scales dmin, row j at 16 + 2j
 *   bytes 32..95    the low 4 bits of the 6-bit sub-block scales s and mins m (the file packs
 *                   them in 12 bytes per row): byte 32 + 8i + j = (s_i & 15) | (m_i & 15) << 4
 *                   of row j, sub-block i (32 values) = 0..7
 *   bytes 96..127   their high 2 bits: byte 96 + 8(i & 3) + j of row j holds, for i < 4, s_i >> 4
 *                   in bits 0-1 and m_i >> 4 in bits 2-3, for i >= 4 the same in bits 4-5 and 6-7
 *                   (so 256-bit shifts and masks decode all 64 scales and mins of the group)
 *   bytes 128..1151 the codes, 32 registers of 32 bytes: register 8h + k, dword j = code bytes
 *                   32h + 4k..32h + 4k + 3 of row j (low nibbles: sub-block 2h, high: 2h + 1)
 * SPK_MM_LAYOUT_R8 for Q5_K: per group, per super-block b (1408 bytes = 8 file blocks): Q4_K's
 *   1152 bytes, then the fifth bits, 8 registers of 32 bytes: register k, dword j = qh bytes
 *   4k..4k + 3 of row j (bit i of a byte: code bit 4 of sub-block i at that byte's place)
 *
 * SPK_MM_LAYOUT_R8 for Q6_K: per group, per super-block b (1680 bytes = 8 file blocks):
 *   bytes 0..15     the 8 rows' f16 scales d, row j at 2j
 *   bytes 16..143   the int8 sub-block scales: byte 16 + 8i + j = scale i (16 values) of row j
 *   then per sub-block i = 0..15, 96 bytes: registers R0..R3 of the codes (6 bits, value + 32),
 *                   dword j of Rk = the codes of values 16i + 4k..16i + 4k + 3 of row j, as
 *                   32 bytes R0 | R1 << 4 (low 4 bits), 32 bytes R2 | R3 << 4, and 32 bytes of
 *                   the high 2 bits R0 | R1 << 2 | R2 << 4 | R3 << 6 (the shifts and masks of
 *                   cpu/matmul_x86_q6k.c's file-layout unpacking give R0..R3 back)
 * SPK_MM_LAYOUT_R8 for Q3_K: per group, per super-block b (880 bytes = 8 file blocks):
 *   bytes 0..15     the 8 rows' f16 scales d, row j at 2j
 *   bytes 16..111   the file's 12 scale bytes, byte i of row j at 16 + 8i + j (so 256-bit shifts
 *                   and masks decode the 16 scales of all 8 rows at once)
 *   then per pair of sub-blocks i = 2P, 2P + 1 (16 values each), 96 bytes: for each, 32 bytes
 *                   of the codes' 2 low bits (bits 2k of byte 4j + e: value 16i + 4k + e of row
 *                   j), then 32 bytes of their third bits (bit k + 4 (i & 1) of the same byte)
 * SPK_MM_LAYOUT_R8 for Q2_K: per group, per super-block b (672 bytes = 8 file blocks):
 *   bytes 0..15     the 8 rows' f16 scales d, row j at 2j
 *   bytes 16..31    the 8 rows' f16 mins' scales dmin, row j at 16 + 2j
 *   bytes 32..159   the file's 16 scale bytes (scale low nibble, min high), byte i of row j at
 *                   32 + 8i + j
 *   bytes 160..671  the codes, 16 registers of 32 bytes, one per sub-block i (16 values): bits 2k
 *                   of byte 4j + e = value 16i + 4k + e of row j (Q3_K's low-bit registers)
 * SPK_MM_LAYOUT_R8 for Q4_0, Q4_1, Q5_0, Q5_1: per group, per block b (8 file blocks: 144, 160,
 * 176, 192 bytes):
 *   bytes 0..15     the 8 rows' f16 scales d, row j at 2j
 *  (bytes 16..31    Q4_1 and Q5_1: the 8 rows' f16 mins m, row j at 16 + 2j)
 *  (then 32 bytes   Q5_0 and Q5_1: the fifth bits, bit m of byte 4j + e = bit 4m + e of row j's qh,
 *                   value 4m + e)
 *   then 128 bytes  the codes' low nibbles, 4 registers of 32 bytes: register k, dword j = qs
 *                   bytes 4k..4k+3 of row j (the order cpu/matmul_x86_q45.c's file-layout tile
 *                   builds with its transposes; its r8_codes reads them)
 * Another type adds a pack_group/unpack_row pair and one row of k_formats.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "cpu/matmul.h"
#include "cpu/quant.h"

typedef struct pack_format {
    spk_dtype type;
    int layout;
    /* the 8 file-layout rows at src (wrow bytes apart, nb blocks each) into one group at dst */
    void (*pack_group)(uint8_t *dst, const uint8_t *src, size_t wrow, int nb);
    /* blocks [b0, b1) of row j of the group at grp back into the file layout at dst */
    void (*unpack_row)(uint8_t *dst, const uint8_t *grp, int j, int b0, int b1);
} pack_format;

static void pack_q8_0_r8(uint8_t *dst, const uint8_t *src, size_t wrow, int nb)
{
    for (int b = 0; b < nb; b++) {
        uint8_t *o = dst + (size_t)b * 8 * sizeof(spk_block_q8_0);
        for (int j = 0; j < 8; j++) {
            const spk_block_q8_0 *x = (const spk_block_q8_0 *)(src + (size_t)j * wrow) + b;
            memcpy(o + 2 * j, &x->d, 2);
            for (int k = 0; k < 8; k++)
                memcpy(o + 16 + 32 * k + 4 * j, x->qs + 4 * k, 4);
        }
    }
}

static void unpack_q8_0_r8(uint8_t *dst, const uint8_t *grp, int j, int b0, int b1)
{
    for (int b = b0; b < b1; b++) {
        const uint8_t *o = grp + (size_t)b * 8 * sizeof(spk_block_q8_0);
        spk_block_q8_0 *x = (spk_block_q8_0 *)dst + (b - b0);
        memcpy(&x->d, o + 2 * j, 2);
        for (int k = 0; k < 8; k++)
            memcpy(x->qs + 4 * k, o + 16 + 32 * k + 4 * j, 4);
    }
}

static void pack_mxfp4_r8(uint8_t *dst, const uint8_t *src, size_t wrow, int nb)
{
    for (int b = 0; b < nb; b++) {
        uint8_t *o = dst + (size_t)b * 8 * sizeof(spk_block_mxfp4);
        for (int j = 0; j < 8; j++) {
            const spk_block_mxfp4 *x = (const spk_block_mxfp4 *)(src + (size_t)j * wrow) + b;
            o[j] = x->e;
            for (int k = 0; k < 4; k++)
                memcpy(o + 8 + 32 * k + 4 * j, x->qs + 4 * k, 4);
        }
    }
}

static void unpack_mxfp4_r8(uint8_t *dst, const uint8_t *grp, int j, int b0, int b1)
{
    for (int b = b0; b < b1; b++) {
        const uint8_t *o = grp + (size_t)b * 8 * sizeof(spk_block_mxfp4);
        spk_block_mxfp4 *x = (spk_block_mxfp4 *)dst + (b - b0);
        x->e = o[j];
        for (int k = 0; k < 4; k++)
            memcpy(x->qs + 4 * k, o + 8 + 32 * k + 4 * j, 4);
    }
}

/* Row j of a Q4_K/Q5_K group's super-block at o (o[96..127] zeroed before row 0): d, dmin, the
 * scales and mins, the 4-bit codes. */
static void pack_k4_row(uint8_t *o, int j, const spk_f16 *d, const spk_f16 *dmin, const uint8_t *scales,
                        const uint8_t *qs)
{
    memcpy(o + 2 * j, d, 2);
    memcpy(o + 16 + 2 * j, dmin, 2);
    for (int i = 0; i < 8; i++) {
        int sc, m;
        spk_q4k_scale_min(scales, i, &sc, &m);
        o[32 + 8 * i + j] = (uint8_t)((sc & 15) | (m & 15) << 4);
        o[96 + 8 * (i & 3) + j] |= (uint8_t)(((sc >> 4) | (m >> 4) << 2) << (i < 4 ? 0 : 4));
    }
    for (int r = 0; r < 32; r++)
        memcpy(o + 128 + 32 * r + 4 * j, qs + 4 * r, 4);
}

static void unpack_k4_row(const uint8_t *o, int j, spk_f16 *d, spk_f16 *dmin, uint8_t *scales, uint8_t *qs)
{
    memcpy(d, o + 2 * j, 2);
    memcpy(dmin, o + 16 + 2 * j, 2);
    int sc[8], m[8];
    for (int i = 0; i < 8; i++) {
        const int lo = o[32 + 8 * i + j], hi = o[96 + 8 * (i & 3) + j] >> (i < 4 ? 0 : 4);
        sc[i] = (lo & 15) | (hi & 3) << 4;
        m[i] = (lo >> 4) | ((hi >> 2) & 3) << 4;
    }
    for (int i = 0; i < 4; i++) {
        scales[i] = (uint8_t)(sc[i] | (sc[i + 4] >> 4) << 6);
        scales[i + 4] = (uint8_t)(m[i] | (m[i + 4] >> 4) << 6);
        scales[i + 8] = (uint8_t)((sc[i + 4] & 15) | (m[i + 4] & 15) << 4);
    }
    for (int r = 0; r < 32; r++)
        memcpy(qs + 4 * r, o + 128 + 32 * r + 4 * j, 4);
}

static void pack_q4_K_r8(uint8_t *dst, const uint8_t *src, size_t wrow, int nb)
{
    for (int b = 0; b < nb; b++) {
        uint8_t *o = dst + (size_t)b * 8 * sizeof(spk_block_q4_K);
        memset(o + 96, 0, 32);
        for (int j = 0; j < 8; j++) {
            const spk_block_q4_K *x = (const spk_block_q4_K *)(src + (size_t)j * wrow) + b;
            pack_k4_row(o, j, &x->d, &x->dmin, x->scales, x->qs);
        }
    }
}

static void unpack_q4_K_r8(uint8_t *dst, const uint8_t *grp, int j, int b0, int b1)
{
    for (int b = b0; b < b1; b++) {
        spk_block_q4_K *x = (spk_block_q4_K *)dst + (b - b0);
        unpack_k4_row(grp + (size_t)b * 8 * sizeof(spk_block_q4_K), j, &x->d, &x->dmin, x->scales, x->qs);
    }
}

static void pack_q5_K_r8(uint8_t *dst, const uint8_t *src, size_t wrow, int nb)
{
    for (int b = 0; b < nb; b++) {
        uint8_t *o = dst + (size_t)b * 8 * sizeof(spk_block_q5_K);
        memset(o + 96, 0, 32);
        for (int j = 0; j < 8; j++) {
            const spk_block_q5_K *x = (const spk_block_q5_K *)(src + (size_t)j * wrow) + b;
            pack_k4_row(o, j, &x->d, &x->dmin, x->scales, x->qs);
            for (int r = 0; r < 8; r++)
                memcpy(o + 1152 + 32 * r + 4 * j, x->qh + 4 * r, 4);
        }
    }
}

static void unpack_q5_K_r8(uint8_t *dst, const uint8_t *grp, int j, int b0, int b1)
{
    for (int b = b0; b < b1; b++) {
        const uint8_t *o = grp + (size_t)b * 8 * sizeof(spk_block_q5_K);
        spk_block_q5_K *x = (spk_block_q5_K *)dst + (b - b0);
        unpack_k4_row(o, j, &x->d, &x->dmin, x->scales, x->qs);
        for (int r = 0; r < 8; r++)
            memcpy(x->qh + 4 * r, o + 1152 + 32 * r + 4 * j, 4);
    }
}

/* The 256 codes of a Q6_K (value + 32) or Q3_K (value + 4) block in value order. */
static void k_codes(uint8_t c[256], const int8_t v[256], int offset)
{
    for (int i = 0; i < 256; i++)
        c[i] = (uint8_t)(v[i] + offset);
}

static void pack_q6_K_r8(uint8_t *dst, const uint8_t *src, size_t wrow, int nb)
{
    for (int b = 0; b < nb; b++) {
        uint8_t *o = dst + (size_t)b * 8 * sizeof(spk_block_q6_K);
        for (int j = 0; j < 8; j++) {
            const spk_block_q6_K *x = (const spk_block_q6_K *)(src + (size_t)j * wrow) + b;
            int8_t v[256];
            uint8_t c[256];
            spk_q6k_unpack(v, x);
            k_codes(c, v, 32);
            memcpy(o + 2 * j, &x->d, 2);
            for (int i = 0; i < 16; i++) {
                o[16 + 8 * i + j] = (uint8_t)x->scales[i];
                uint8_t *u = o + 144 + 96 * i;
                for (int e = 0; e < 4; e++) {
                    const int r[4] = {c[16 * i + e], c[16 * i + 4 + e], c[16 * i + 8 + e], c[16 * i + 12 + e]};
                    u[4 * j + e] = (uint8_t)((r[0] & 15) | (r[1] & 15) << 4);
                    u[32 + 4 * j + e] = (uint8_t)((r[2] & 15) | (r[3] & 15) << 4);
                    u[64 + 4 * j + e] = (uint8_t)((r[0] >> 4) | (r[1] >> 4) << 2 | (r[2] >> 4) << 4 | (r[3] >> 4) << 6);
                }
            }
        }
    }
}

static void unpack_q6_K_r8(uint8_t *dst, const uint8_t *grp, int j, int b0, int b1)
{
    for (int b = b0; b < b1; b++) {
        const uint8_t *o = grp + (size_t)b * 8 * sizeof(spk_block_q6_K);
        spk_block_q6_K *x = (spk_block_q6_K *)dst + (b - b0);
        uint8_t c[256];
        memcpy(&x->d, o + 2 * j, 2);
        for (int i = 0; i < 16; i++) {
            x->scales[i] = (int8_t)o[16 + 8 * i + j];
            const uint8_t *u = o + 144 + 96 * i;
            for (int e = 0; e < 4; e++) {
                const int l0 = u[4 * j + e], l1 = u[32 + 4 * j + e], h = u[64 + 4 * j + e];
                c[16 * i + e] = (uint8_t)((l0 & 15) | (h & 3) << 4);
                c[16 * i + 4 + e] = (uint8_t)((l0 >> 4) | ((h >> 2) & 3) << 4);
                c[16 * i + 8 + e] = (uint8_t)((l1 & 15) | ((h >> 4) & 3) << 4);
                c[16 * i + 12 + e] = (uint8_t)((l1 >> 4) | ((h >> 6) & 3) << 4);
            }
        }
        spk_q6k_set_codes(x, c);
    }
}

/* The 2 low bits of sub-block i's 16 codes c (value 16i + 4k + e at c[16i + 4k + e]) of row j into
 * a 32-byte register u of a group: bits 2k of byte 4j + e (Q3_K's and Q2_K's code registers). */
static void put_2bit(uint8_t *u, const uint8_t *c, int i, int j)
{
    for (int k = 0; k < 4; k++)
        for (int e = 0; e < 4; e++)
            u[4 * j + e] |= (uint8_t)((c[16 * i + 4 * k + e] & 3) << (2 * k));
}

/* The inverse: row j's 2-bit codes of sub-block i from register u, or'ed into c. */
static void get_2bit(uint8_t *c, const uint8_t *u, int i, int j)
{
    for (int k = 0; k < 4; k++)
        for (int e = 0; e < 4; e++)
            c[16 * i + 4 * k + e] |= (uint8_t)((u[4 * j + e] >> (2 * k)) & 3);
}

static void pack_q3_K_r8(uint8_t *dst, const uint8_t *src, size_t wrow, int nb)
{
    for (int b = 0; b < nb; b++) {
        uint8_t *o = dst + (size_t)b * 8 * sizeof(spk_block_q3_K);
        memset(o + 112, 0, 768);
        for (int j = 0; j < 8; j++) {
            const spk_block_q3_K *x = (const spk_block_q3_K *)(src + (size_t)j * wrow) + b;
            int8_t v[256];
            uint8_t c[256];
            spk_q3k_unpack(v, x);
            k_codes(c, v, 4);
            memcpy(o + 2 * j, &x->d, 2);
            for (int i = 0; i < 12; i++)
                o[16 + 8 * i + j] = x->scales[i];
            for (int i = 0; i < 16; i++) {
                uint8_t *u = o + 112 + 96 * (i / 2);
                put_2bit(u + 32 * (i & 1), c, i, j);
                for (int k = 0; k < 4; k++)
                    for (int e = 0; e < 4; e++)
                        u[64 + 4 * j + e] |= (uint8_t)((c[16 * i + 4 * k + e] >> 2) << (k + 4 * (i & 1)));
            }
        }
    }
}

static void unpack_q3_K_r8(uint8_t *dst, const uint8_t *grp, int j, int b0, int b1)
{
    for (int b = b0; b < b1; b++) {
        const uint8_t *o = grp + (size_t)b * 8 * sizeof(spk_block_q3_K);
        spk_block_q3_K *x = (spk_block_q3_K *)dst + (b - b0);
        uint8_t c[256] = {0};
        memcpy(&x->d, o + 2 * j, 2);
        for (int i = 0; i < 12; i++)
            x->scales[i] = o[16 + 8 * i + j];
        for (int i = 0; i < 16; i++) {
            const uint8_t *u = o + 112 + 96 * (i / 2);
            get_2bit(c, u + 32 * (i & 1), i, j);
            for (int k = 0; k < 4; k++)
                for (int e = 0; e < 4; e++)
                    c[16 * i + 4 * k + e] |= (uint8_t)(((u[64 + 4 * j + e] >> (k + 4 * (i & 1))) & 1) << 2);
        }
        spk_q3k_set_codes(x, c);
    }
}

static void pack_q2_K_r8(uint8_t *dst, const uint8_t *src, size_t wrow, int nb)
{
    for (int b = 0; b < nb; b++) {
        uint8_t *o = dst + (size_t)b * 8 * sizeof(spk_block_q2_K);
        memset(o + 160, 0, 512);
        for (int j = 0; j < 8; j++) {
            const spk_block_q2_K *x = (const spk_block_q2_K *)(src + (size_t)j * wrow) + b;
            uint8_t c[256];
            spk_q2k_unpack(c, x);
            memcpy(o + 2 * j, &x->d, 2);
            memcpy(o + 16 + 2 * j, &x->dmin, 2);
            for (int i = 0; i < 16; i++) {
                o[32 + 8 * i + j] = x->scales[i];
                put_2bit(o + 160 + 32 * i, c, i, j);
            }
        }
    }
}

static void unpack_q2_K_r8(uint8_t *dst, const uint8_t *grp, int j, int b0, int b1)
{
    for (int b = b0; b < b1; b++) {
        const uint8_t *o = grp + (size_t)b * 8 * sizeof(spk_block_q2_K);
        spk_block_q2_K *x = (spk_block_q2_K *)dst + (b - b0);
        uint8_t c[256] = {0};
        memcpy(&x->d, o + 2 * j, 2);
        memcpy(&x->dmin, o + 16 + 2 * j, 2);
        for (int i = 0; i < 16; i++) {
            x->scales[i] = o[32 + 8 * i + j];
            get_2bit(c, o + 160 + 32 * i, i, j);
        }
        spk_q2k_set_codes(x, c);
    }
}

/* Q4_0, Q4_1, Q5_0 and Q5_1: the file block's m, qh and qs at m_off, qh_off (0: none) and qs_off;
 * the packed block's d at 0, m at 16, the fifth bits H next, then the codes. */
typedef struct q5_shape { size_t bs, m_off, qh_off, qs_off; } q5_shape;
static const q5_shape k_q5_0 = {sizeof(spk_block_q5_0), 0, offsetof(spk_block_q5_0, qh), offsetof(spk_block_q5_0, qs)};
static const q5_shape k_q5_1 = {sizeof(spk_block_q5_1), offsetof(spk_block_q5_1, m), offsetof(spk_block_q5_1, qh),
                                offsetof(spk_block_q5_1, qs)};
static const q5_shape k_q4_1 = {sizeof(spk_block_q4_1), offsetof(spk_block_q4_1, m), 0, offsetof(spk_block_q4_1, qs)};
static const q5_shape k_q4_0 = {sizeof(spk_block_q4_0), 0, 0, offsetof(spk_block_q4_0, qs)};

static void pack_q5_r8(uint8_t *dst, const uint8_t *src, size_t wrow, int nb, const q5_shape *f)
{
    const size_t ph = f->m_off ? 32 : 16, pc = f->qh_off ? ph + 32 : ph;
    for (int b = 0; b < nb; b++) {
        uint8_t *o = dst + (size_t)b * 8 * f->bs;
        memset(o + ph, 0, pc - ph);
        for (int j = 0; j < 8; j++) {
            const uint8_t *x = src + (size_t)j * wrow + (size_t)b * f->bs;
            memcpy(o + 2 * j, x, 2);
            if (f->m_off)
                memcpy(o + 16 + 2 * j, x + f->m_off, 2);
            if (f->qh_off) {
                const uint8_t *h = x + f->qh_off;
                const uint32_t qh = (uint32_t)h[0] | (uint32_t)h[1] << 8 | (uint32_t)h[2] << 16 | (uint32_t)h[3] << 24;
                for (int m = 0; m < 8; m++)
                    for (int e = 0; e < 4; e++)
                        o[ph + 4 * j + e] |= (uint8_t)(((qh >> (4 * m + e)) & 1) << m);
            }
            for (int k = 0; k < 4; k++)
                memcpy(o + pc + 32 * k + 4 * j, x + f->qs_off + 4 * k, 4);
        }
    }
}

static void unpack_q5_r8(uint8_t *dst, const uint8_t *grp, int j, int b0, int b1, const q5_shape *f)
{
    const size_t ph = f->m_off ? 32 : 16, pc = f->qh_off ? ph + 32 : ph;
    for (int b = b0; b < b1; b++) {
        const uint8_t *o = grp + (size_t)b * 8 * f->bs;
        uint8_t *x = dst + (size_t)(b - b0) * f->bs;
        memcpy(x, o + 2 * j, 2);
        if (f->m_off)
            memcpy(x + f->m_off, o + 16 + 2 * j, 2);
        if (f->qh_off) {
            uint32_t qh = 0;
            for (int m = 0; m < 8; m++)
                for (int e = 0; e < 4; e++)
                    qh |= (uint32_t)((o[ph + 4 * j + e] >> m) & 1) << (4 * m + e);
            for (int i = 0; i < 4; i++)
                x[f->qh_off + i] = (uint8_t)(qh >> (8 * i));
        }
        for (int k = 0; k < 4; k++)
            memcpy(x + f->qs_off + 4 * k, o + pc + 32 * k + 4 * j, 4);
    }
}

#define Q5_FORMAT(name, shape)                                                                     \
    static void pack_##name##_r8(uint8_t *dst, const uint8_t *src, size_t wrow, int nb)            \
    {                                                                                              \
        pack_q5_r8(dst, src, wrow, nb, &shape);                                                    \
    }                                                                                              \
    static void unpack_##name##_r8(uint8_t *dst, const uint8_t *grp, int j, int b0, int b1)       \
    {                                                                                              \
        unpack_q5_r8(dst, grp, j, b0, b1, &shape);                                                 \
    }
Q5_FORMAT(q5_0, k_q5_0)
Q5_FORMAT(q5_1, k_q5_1)
Q5_FORMAT(q4_1, k_q4_1)
Q5_FORMAT(q4_0, k_q4_0)

static const pack_format k_formats[] = {
    {SPK_DT_Q4_0, SPK_MM_LAYOUT_R8, pack_q4_0_r8, unpack_q4_0_r8},
    {SPK_DT_Q8_0, SPK_MM_LAYOUT_R8, pack_q8_0_r8, unpack_q8_0_r8},
    {SPK_DT_Q5_0, SPK_MM_LAYOUT_R8, pack_q5_0_r8, unpack_q5_0_r8},
    {SPK_DT_Q5_1, SPK_MM_LAYOUT_R8, pack_q5_1_r8, unpack_q5_1_r8},
    {SPK_DT_Q4_1, SPK_MM_LAYOUT_R8, pack_q4_1_r8, unpack_q4_1_r8},
    {SPK_DT_MXFP4, SPK_MM_LAYOUT_R8, pack_mxfp4_r8, unpack_mxfp4_r8},
    {SPK_DT_Q4_K, SPK_MM_LAYOUT_R8, pack_q4_K_r8, unpack_q4_K_r8},
    {SPK_DT_Q3_K, SPK_MM_LAYOUT_R8, pack_q3_K_r8, unpack_q3_K_r8},
    {SPK_DT_Q5_K, SPK_MM_LAYOUT_R8, pack_q5_K_r8, unpack_q5_K_r8},
    {SPK_DT_Q6_K, SPK_MM_LAYOUT_R8, pack_q6_K_r8, unpack_q6_K_r8},
    {SPK_DT_Q2_K, SPK_MM_LAYOUT_R8, pack_q2_K_r8, unpack_q2_K_r8},
};

static const pack_format *find(spk_dtype t, int layout)
{
    for (size_t i = 0; i < sizeof k_formats / sizeof *k_formats; i++)
        if (k_formats[i].type == t && k_formats[i].layout == layout)
            return &k_formats[i];
    return NULL;
}

/* Drop the whole pages of [lo, hi) (those that hold nothing outside it); returns where the next
 * range's whole pages may start. */
static const uint8_t *drop_pages(const uint8_t *lo, const uint8_t *hi, uintptr_t pg)
{
    const uintptr_t a = ((uintptr_t)lo + pg - 1) & ~(pg - 1), e = (uintptr_t)hi & ~(pg - 1);
    if (e <= a)
        return lo;
    madvise((void *)a, e - a, MADV_DONTNEED);
    return (const uint8_t *)e;
}

int spk_matmul_pack(void *dst, const void *src, spk_dtype wtype, int layout, int n_in, int n_out, int drop)
{
    const pack_format *f = find(wtype, layout);
    if (!f || !spk_matmul_supported(wtype, n_in) || n_out < 0 || (dst == src && drop))
        return -1;
    const size_t wrow = spk_dtype_row_size(wtype, (size_t)n_in);
    const int nb = n_in / (int)spk_dtype_get((uint32_t)wtype)->block, G = n_out / 8;
    if (dst == src) { /* group g's bytes are the 8 rows it is made of: one group at a time */
        uint8_t *tmp = G ? malloc(8 * wrow) : NULL;
        if (G && !tmp)
            return -1;
        for (int g = 0; g < G; g++) {
            uint8_t *grp = (uint8_t *)dst + (size_t)g * 8 * wrow;
            f->pack_group(tmp, grp, wrow, nb);
            memcpy(grp, tmp, 8 * wrow);
        }
        free(tmp);
        return 0;
    }
    const int chunk = SPK_PACK_CHUNK / (8 * wrow) > 0 ? (int)(SPK_PACK_CHUNK / (8 * wrow)) : 1; /* groups */
    const long pgl = sysconf(_SC_PAGESIZE);
    const uintptr_t pg = pgl > 0 ? (uintptr_t)pgl : 4096;
    const uint8_t *s = src, *kept = src; /* pages from `kept` on are still mapped */
    for (int g0 = 0; g0 < G; g0 += chunk) {
        const int g1 = G - g0 > chunk ? g0 + chunk : G;
        for (int g = g0; g < g1; g++)
            f->pack_group((uint8_t *)dst + (size_t)g * 8 * wrow, s + (size_t)g * 8 * wrow, wrow, nb);
        if (drop)
            kept = drop_pages(kept, s + (size_t)g1 * 8 * wrow, pg);
    }
    memcpy((uint8_t *)dst + (size_t)G * 8 * wrow, s + (size_t)G * 8 * wrow, (size_t)(n_out - 8 * G) * wrow);
    if (drop)
        drop_pages(kept, s + (size_t)n_out * wrow, pg);
    return 0;
}

int spk_matmul_unpack_blocks(void *dst, const void *w, spk_dtype wtype, int layout, int n_in, int n_out, int r,
                             int b0, int b1)
{
    const spk_dtype_info *ti = spk_dtype_get((uint32_t)wtype);
    if (!ti || !spk_matmul_supported(wtype, n_in) || r < 0 || r >= n_out || b0 < 0 || b0 > b1 ||
        b1 > n_in / (int)ti->block)
        return -1;
    const size_t wrow = spk_dtype_row_size(wtype, (size_t)n_in);
    if (layout == SPK_MM_LAYOUT_ROWS || r >= n_out / 8 * 8) {
        memcpy(dst, (const uint8_t *)w + (size_t)r * wrow + (size_t)b0 * ti->type_size,
               (size_t)(b1 - b0) * ti->type_size);
        return 0;
    }
    const pack_format *f = find(wtype, layout);
    if (!f)
        return -1;
    f->unpack_row(dst, (const uint8_t *)w + (size_t)(r / 8) * 8 * wrow, r % 8, b0, b1);
    return 0;
}

int spk_matmul_unpack_row(void *dst, const void *w, spk_dtype wtype, int layout, int n_in, int n_out, int r)
{
    const spk_dtype_info *ti = spk_dtype_get((uint32_t)wtype);
    return ti ? spk_matmul_unpack_blocks(dst, w, wtype, layout, n_in, n_out, r, 0, n_in / (int)ti->block) : -1;
}

int spk_matmul_layout_known(spk_dtype wtype, int layout)
{
    return layout == SPK_MM_LAYOUT_ROWS || find(wtype, layout) != NULL;
}
