/*
 * aarch64 matmul kernels with SDOT (Armv8.2 FEAT_DotProd): Q4_0, Q4_1, Q8_0 against the Q8
 * planar activations, one row and four tokens at a time. This file alone is compiled with
 * -march=armv8.2-a+dotprod (CMakeLists.txt); cpu/matmul.c calls it only where HWCAP_ASIMDDP
 * says the CPU has the instruction.
 */
#if defined(__aarch64__)

#if !defined(__ARM_FEATURE_DOTPROD)
#error "cpu/matmul_arm_dotprod.c needs -march=armv8.2-a+dotprod (set by CMakeLists.txt)"
#endif

#include "cpu/matmul_arm.h"
#include "cpu/matmul_arm_types.h"

#define MM_Q_DP(name, kind)                                                                        \
    static void name(float *out, int ld, const void *w, size_t wrow, const void *act, size_t arow, \
                     int n, int n_tok, int row0, int row1)                                         \
    {                                                                                              \
        arm_mm_q_dp(kind, out, ld, w, wrow, act, arow, n, n_tok, row0, row1);                      \
    }

MM_Q_DP(mm_q4_0_dp, K_Q4_0)
MM_Q_DP(mm_q4_1_dp, K_Q4_1)
MM_Q_DP(mm_q8_0_dp, K_Q8_0)

void spk_mm_fill_neon_dotprod(spk_mm_table *t)
{
    for (int i = 0; i < SPK_MM_NTYPES; i++)
        t->mm[i] = 0;
    t->q8_quantize = 0;
    t->mm[SPK_DT_Q4_0] = mm_q4_0_dp;
    t->mm[SPK_DT_Q4_1] = mm_q4_1_dp;
    t->mm[SPK_DT_Q8_0] = mm_q8_0_dp;
    at_fill(t); /* the types of cpu/matmul_arm_types.h, with SDOT */
}

#else
typedef int spk_matmul_arm_dotprod_unused; /* ISO C forbids an empty translation unit */
#endif
