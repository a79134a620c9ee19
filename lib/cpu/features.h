/* What the CPU we run on can do, read once at run time. */
#ifndef SPK_CPU_FEATURES_H
#define SPK_CPU_FEATURES_H

typedef struct spk_cpu_features {
    int avx2, fma, f16c, avx512f, avx512bw, avx512vl, avx512vnni, avxvnni, neon, dotprod, i8mm;
} spk_cpu_features;

const spk_cpu_features *spk_cpu_get_features(void);

/* Comma-separated names of the SIMD paths compiled in and usable here, e.g. "avx2,avx512". */
const char *spk_cpu_simd_names(void);

/* Test hook: force the portable scalar paths (1) or allow SIMD again (0). */
void spk_cpu_force_scalar(int on);

#endif
