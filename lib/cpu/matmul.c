/*
 * Matmul entry points: activation formats and sizes, and run-time dispatch to the kernel table
 * of the best instruction set this CPU has (tables are built once, at first use).
 */
#include "cpu/matmul.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>

#include "cpu/features.h"
#include "cpu/quant.h"

static spk_mm_table g_tables[SPK_ISA_COUNT];
static int g_best = SPK_ISA_SCALAR;
/* Packed kernels per ISA and type (cpu/repack.c's layouts). A level takes the packed kernel of the
 * level below for the types whose file-layout kernel it takes from there too (the AVX-512 level
 * runs the AVX2 kernels of every quantized type), since a packed kernel gives its own level's
 * file-layout kernel's bits; a type with a kernel of the level's own keeps the file layout (no
 * packing), and a level with no packed kernel at all unpacks into its file-layout kernel. */
static spk_mm_kernel g_r8[SPK_ISA_COUNT][SPK_MM_NTYPES];
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static atomic_int g_forced = -1;

/* Missing entries of level `isa` fall back to level `below` (scalar at the bottom), packed kernels
 * with the file-layout kernels they match. */
static void inherit(int isa, int below)
{
    spk_mm_table *t = &g_tables[isa];
    const spk_mm_table *b = &g_tables[below];
    for (int i = 0; i < SPK_MM_NTYPES; i++)
        if (!t->mm[i]) {
            t->mm[i] = b->mm[i];
            g_r8[isa][i] = g_r8[below][i];
        }
    if (!t->q8_quantize)
        t->q8_quantize = b->q8_quantize;
    if (!t->q8k_quantize)
        t->q8k_quantize = b->q8k_quantize;
}

static void init_tables(void)
{
    spk_mm_fill_scalar(&g_tables[SPK_ISA_SCALAR]);
    for (int i = 1; i < SPK_ISA_COUNT; i++)
        g_tables[i] = g_tables[SPK_ISA_SCALAR];
#if defined(__x86_64__) || defined(__i386__)
    if (spk_cpu_isa_usable(SPK_ISA_AVX2)) {
        spk_mm_fill_avx2(&g_tables[SPK_ISA_AVX2]);
        inherit(SPK_ISA_AVX2, SPK_ISA_SCALAR);
        g_best = SPK_ISA_AVX2;
        g_r8[SPK_ISA_AVX2][SPK_DT_Q4_0] = spk_mm_r8_q4_0_avx2;
        g_r8[SPK_ISA_AVX2][SPK_DT_Q8_0] = spk_mm_r8_q8_0_avx2;
        g_r8[SPK_ISA_AVX2][SPK_DT_Q5_0] = spk_mm_r8_q5_0_avx2;
        g_r8[SPK_ISA_AVX2][SPK_DT_Q5_1] = spk_mm_r8_q5_1_avx2;
        g_r8[SPK_ISA_AVX2][SPK_DT_Q4_1] = spk_mm_r8_q4_1_avx2;
        g_r8[SPK_ISA_AVX2][SPK_DT_MXFP4] = spk_mm_r8_mxfp4_avx2;
        g_r8[SPK_ISA_AVX2][SPK_DT_Q4_K] = spk_mm_r8_q4k_avx2;
        g_r8[SPK_ISA_AVX2][SPK_DT_Q5_K] = spk_mm_r8_q5k_avx2;
        g_r8[SPK_ISA_AVX2][SPK_DT_Q3_K] = spk_mm_r8_q3k_avx2;
        g_r8[SPK_ISA_AVX2][SPK_DT_Q6_K] = spk_mm_r8_q6k_avx2;
        g_r8[SPK_ISA_AVX2][SPK_DT_Q2_K] = spk_mm_r8_q2k_avx2;
    }
    if (spk_cpu_isa_usable(SPK_ISA_AVX512)) {
        spk_mm_fill_avx512(&g_tables[SPK_ISA_AVX512]);
        inherit(SPK_ISA_AVX512, SPK_ISA_AVX2);
        g_best = SPK_ISA_AVX512;
    }
#endif
#if defined(__aarch64__)
    if (spk_cpu_isa_usable(SPK_ISA_NEON)) {
        spk_mm_fill_neon(&g_tables[SPK_ISA_NEON]);
        inherit(SPK_ISA_NEON, SPK_ISA_SCALAR);
        g_best = SPK_ISA_NEON;
    }
    if (spk_cpu_isa_usable(SPK_ISA_NEON_DOTPROD)) {
        spk_mm_fill_neon_dotprod(&g_tables[SPK_ISA_NEON_DOTPROD]);
        inherit(SPK_ISA_NEON_DOTPROD, SPK_ISA_NEON);
        g_best = SPK_ISA_NEON_DOTPROD;
    }
    if (spk_cpu_isa_usable(SPK_ISA_NEON_I8MM)) {
        spk_mm_fill_neon_i8mm(&g_tables[SPK_ISA_NEON_I8MM]);
        inherit(SPK_ISA_NEON_I8MM, SPK_ISA_NEON_DOTPROD);
        g_best = SPK_ISA_NEON_I8MM;
    }
#endif
}

static int current_isa(void)
{
    pthread_once(&g_once, init_tables);
    if (spk_cpu_scalar_forced())
        return SPK_ISA_SCALAR;
    int f = atomic_load_explicit(&g_forced, memory_order_relaxed);
    return f >= 0 ? f : g_best;
}

int spk_matmul_isa_usable(int isa)
{
    pthread_once(&g_once, init_tables);
    return isa == SPK_ISA_SCALAR || (isa > SPK_ISA_SCALAR && isa < SPK_ISA_COUNT &&
                                     spk_cpu_isa_usable(isa) && isa <= g_best);
}

void spk_matmul_force_isa(int isa)
{
    atomic_store(&g_forced, spk_matmul_isa_usable(isa) ? isa : -1);
}

const char *spk_matmul_isa_name(void)
{
    static const char *const names[SPK_ISA_COUNT] = {"scalar", "avx2", "avx512", "neon",
                                                      "neon-dotprod", "neon-i8mm"};
    return names[current_isa()];
}

spk_dtype spk_act_type(spk_dtype wtype)
{
    switch (wtype) {
    case SPK_DT_Q4_1:
    case SPK_DT_Q5_1:
    case SPK_DT_Q4_K:
    case SPK_DT_Q5_K:
    case SPK_DT_Q2_K:
        return SPK_DT_Q8_1;
    case SPK_DT_Q4_0:
    case SPK_DT_Q5_0:
    case SPK_DT_Q8_0:
    case SPK_DT_Q3_K:
    case SPK_DT_Q6_K:
    case SPK_DT_MXFP4:
        return SPK_DT_Q8_0;
    default:
        return SPK_DT_F32;
    }
}

static int is_float_type(spk_dtype t)
{
    return t == SPK_DT_F32 || t == SPK_DT_F16 || t == SPK_DT_BF16;
}

int spk_matmul_supported(spk_dtype wtype, int n_in)
{
    if (n_in <= 0)
        return 0;
    switch (wtype) {
    case SPK_DT_F32:
    case SPK_DT_F16:
    case SPK_DT_BF16:
        return 1;
    case SPK_DT_Q4_0:
    case SPK_DT_Q4_1:
    case SPK_DT_Q5_0:
    case SPK_DT_Q5_1:
    case SPK_DT_Q8_0:
    case SPK_DT_MXFP4:
        return n_in % 32 == 0;
    case SPK_DT_Q2_K:
    case SPK_DT_Q3_K:
    case SPK_DT_Q4_K:
    case SPK_DT_Q5_K:
    case SPK_DT_Q6_K:
        return n_in % SPK_QK_K == 0;
    default:
        return 0;
    }
}

static int is_kquant(spk_dtype t)
{
    return t == SPK_DT_Q2_K || t == SPK_DT_Q3_K || t == SPK_DT_Q4_K || t == SPK_DT_Q5_K ||
           t == SPK_DT_Q6_K;
}

/* Quantized types: the planar part, then the K-quant section when n allows one (cpu/quant.h),
 * for every quantized type alike, so rows quantized for one type serve any other. */
static size_t act_row_bytes(spk_dtype wtype, int n)
{
    return is_float_type(wtype) ? spk_f32_row_bytes(n) : spk_q8_row_bytes(n) + spk_q8k_row_bytes(n);
}

size_t spk_act_size(spk_dtype wtype, int n, int n_tok)
{
    if (!spk_matmul_supported(wtype, n) || n_tok <= 0)
        return 0;
    return act_row_bytes(wtype, n) * (size_t)n_tok;
}

void spk_act_quantize(void *act, spk_dtype wtype, const float *x, int n, int tok0, int tok1)
{
    if (!spk_matmul_supported(wtype, n))
        return;
    const size_t rb = act_row_bytes(wtype, n);
    if (is_float_type(wtype)) {
        for (int t = tok0; t < tok1; t++) {
            float *dst = (float *)((uint8_t *)act + (size_t)t * rb);
            const float *src = x + (size_t)t * (size_t)n;
            for (int i = 0; i < n; i++)
                dst[i] = src[i];
        }
        return;
    }
    const spk_mm_table *tab = &g_tables[current_isa()];
    const size_t koff = spk_q8_row_bytes(n);
    const int ksec = spk_q8k_row_bytes(n) != 0;
    for (int t = tok0; t < tok1; t++) {
        uint8_t *row = (uint8_t *)act + (size_t)t * rb;
        tab->q8_quantize(row, x + (size_t)t * (size_t)n, n);
        if (ksec)
            tab->q8k_quantize(row + koff, x + (size_t)t * (size_t)n, n);
    }
}

void spk_matmul(float *out, int ld_out, const void *w, spk_dtype wtype, const void *act,
                int n_in, int n_tok, int row0, int row1)
{
    if (!spk_matmul_supported(wtype, n_in) || n_tok <= 0 || row0 >= row1)
        return;
    spk_mm_kernel k = g_tables[current_isa()].mm[wtype];
    const uint8_t *a = (const uint8_t *)act + (is_kquant(wtype) ? spk_q8_row_bytes(n_in) : 0);
    k(out, ld_out, w, spk_dtype_row_size(wtype, (size_t)n_in), a, act_row_bytes(wtype, n_in),
      n_in, n_tok, row0, row1);
}

int spk_matmul_pack_layout(spk_dtype wtype, int n_in)
{
    if (!spk_matmul_supported(wtype, n_in) || (int)wtype < 0 || (int)wtype >= SPK_MM_NTYPES)
        return SPK_MM_LAYOUT_ROWS;
    const int isa = current_isa();
    return g_r8[isa][wtype] && spk_matmul_layout_known(wtype, SPK_MM_LAYOUT_R8) ? SPK_MM_LAYOUT_R8
                                                                                : SPK_MM_LAYOUT_ROWS;
}

void spk_matmul_layout(float *out, int ld_out, const void *w, spk_dtype wtype, int layout, int n_out,
                       const void *act, int n_in, int n_tok, int row0, int row1)
{
    if (layout == SPK_MM_LAYOUT_ROWS || row0 >= n_out / 8 * 8) { /* leftover rows: the file's layout */
        spk_matmul(out, ld_out, w, wtype, act, n_in, n_tok, row0, row1);
        return;
    }
    if (!spk_matmul_supported(wtype, n_in) || n_tok <= 0 || row0 >= row1 || layout != SPK_MM_LAYOUT_R8 ||
        !spk_matmul_layout_known(wtype, layout))
        return;
    const int isa = current_isa(), g_end = n_out / 8 * 8, r1 = row1 < g_end ? row1 : g_end;
    const size_t wrow = spk_dtype_row_size(wtype, (size_t)n_in), arow = act_row_bytes(wtype, n_in);
    const uint8_t *a = (const uint8_t *)act + (is_kquant(wtype) ? spk_q8_row_bytes(n_in) : 0);
    spk_mm_kernel k = g_r8[isa][wtype];
    if (k) {
        k(out, ld_out, w, wrow, a, arow, n_in, n_tok, row0, r1);
    } else {
        /* No packed kernel at this level (forced scalar, or a level packed for another): each
         * group back in the file's layout, through the level's kernel on the group's rows from its
         * first (as the unpacked matrix's thread shares, which start on the 16-row grid, run it),
         * so any row blocking of up to 8 sits the same. Slow, exact; the only op path that
         * allocates (8 rows, and a group cut by the range), since no packing happens at this level. */
        spk_mm_kernel rk = g_tables[isa].mm[wtype];
        uint8_t stackbuf[16384];
        uint8_t *buf = 8 * wrow <= sizeof stackbuf ? stackbuf : malloc(8 * wrow);
        float *tmp = NULL;
        if (!buf)
            return;
        for (int g = row0 / 8; g < (r1 + 7) / 8; g++) {
            const int r = 8 * g, lo = row0 > r ? row0 : r, hi = r1 < r + 8 ? r1 : r + 8;
            for (int j = 0; j < 8; j++)
                spk_matmul_unpack_row(buf + (size_t)j * wrow, w, wtype, layout, n_in, n_out, r + j);
            if (lo == r) {
                rk(out + r, ld_out, buf, wrow, a, arow, n_in, n_tok, 0, hi - r);
                continue;
            }
            if (!tmp && !(tmp = malloc(sizeof(float) * 8 * (size_t)n_tok)))
                break;
            rk(tmp, 8, buf, wrow, a, arow, n_in, n_tok, 0, hi - r);
            for (int t = 0; t < n_tok; t++)
                for (int i = lo; i < hi; i++)
                    out[(size_t)t * (size_t)ld_out + (size_t)i] = tmp[(size_t)t * 8 + (size_t)(i - r)];
        }
        free(tmp);
        if (buf != stackbuf)
            free(buf);
    }
    if (row1 > g_end)
        spk_matmul(out, ld_out, w, wtype, act, n_in, n_tok, g_end, row1);
}
