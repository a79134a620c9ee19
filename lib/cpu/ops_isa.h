/*
 * Internal: the SIMD variants of the cpu/ops.h kernels (cpu/ops_x86.c, cpu/ops_arm.c) and a test
 * hook that pins the level cpu/ops.c dispatches to. Only cpu/ops.c and the op tests include this.
 */
#ifndef SPK_CPU_OPS_ISA_H
#define SPK_CPU_OPS_ISA_H

#include "common/dtype.h"

/* The vector exp of the SIMD variants (exp8/exp16 in cpu/ops_x86.c, exp4 in cpu/ops_arm.c):
 * exp(x) = 2^n * e^r with n = round(x / ln 2), r = x - n ln 2 (ln 2 split in two parts so
 * n*ln2_hi is exact) and a degree-6 polynomial for e^r on [-ln2/2, ln2/2] (Cephes expf
 * coefficients). x is clamped to [-87.3, 88.0]: results stay finite and normal enough that
 * softmax and silu never see inf or nan. */
#define SPK_EXP_HI 88.0f
#define SPK_EXP_LO -87.3f
#define SPK_EXP_LOG2E 1.44269504088896341f
#define SPK_EXP_LN2_HI 0.693359375f
#define SPK_EXP_LN2_LO -2.12194440e-4f
#define SPK_EXP_P0 1.9875691500e-4f
#define SPK_EXP_P1 1.3981999507e-3f
#define SPK_EXP_P2 8.3334519073e-3f
#define SPK_EXP_P3 4.1665795894e-2f
#define SPK_EXP_P4 1.6666665459e-1f
#define SPK_EXP_P5 5.0000001201e-1f

/* Levels, as cpu/quant.h numbers them: 0 scalar, 1 AVX2 (+FMA, F16C), 2 AVX-512F; on aarch64
 * 1 is NEON (every Armv8-A has it) and there is no 2. */
enum { SPK_OPS_SCALAR = 0, SPK_OPS_AVX2 = 1, SPK_OPS_AVX512 = 2, SPK_OPS_NEON = 1 };

/* Pin the level (-1: automatic, the best usable; a level this CPU lacks is ignored).
 * spk_cpu_force_scalar(1) still wins. */
void spk_ops_force_isa(int isa);
/* The level the kernels use now. */
int spk_ops_isa(void);
/* Whether this CPU can run a level. */
int spk_ops_isa_usable(int isa);

#define SPK_OPS_DECL(isa)                                                                      \
    void spk_rmsnorm_##isa(float *out, const float *x, const float *w, int n, float eps);     \
    void spk_swiglu_##isa(float *out, const float *gate, const float *up, int n);             \
    void spk_add_##isa(float *out, const float *a, const float *b, int n);                    \
    void spk_softmax_##isa(float *x, int n);                                                  \
    void spk_f32_to_f16_row_##isa(spk_f16 *out, const float *x, int n);                        \
    void spk_f16_to_f32_row_##isa(float *out, const spk_f16 *x, int n);                        \
    void spk_attn_head_##isa(float *out, const float *q, const spk_f16 *k, const spk_f16 *v,  \
                             int n_kv, int head_dim, int stride, float scale, const float *sink,     \
                             float *scratch);
#if defined(__x86_64__)
#define SPK_OPS_X86 1
SPK_OPS_DECL(avx2)
SPK_OPS_DECL(avx512)
#else
#define SPK_OPS_X86 0
#endif
#if defined(__aarch64__)
#define SPK_OPS_ARM 1
SPK_OPS_DECL(neon)
#else
#define SPK_OPS_ARM 0
#endif
#undef SPK_OPS_DECL

#endif
