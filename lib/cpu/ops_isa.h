/*
 * Internal: the SIMD variants of the cpu/ops.h kernels (cpu/ops_x86.c, cpu/ops_arm.c) and a test
 * hook that pins the level cpu/ops.c dispatches to. Only cpu/ops.c and the op tests include this.
 */
#ifndef SPK_CPU_OPS_ISA_H
#define SPK_CPU_OPS_ISA_H

#include "common/dtype.h"

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
