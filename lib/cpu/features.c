/* CPU feature detection (once, at first use) and the force-scalar test hook. */
#include "cpu/features.h"

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include "cpu/quant.h"

#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1UL << 20)
#endif
#ifndef HWCAP2_I8MM
#define HWCAP2_I8MM (1UL << 13)
#endif
#endif

static spk_cpu_features g_features;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static atomic_int g_force_scalar;
static char g_names[64];

/* The rule for each kernel level (cpu/quant.h): which features its code may use. */
static int isa_usable(const spk_cpu_features *f, int isa)
{
    switch (isa) {
    case SPK_ISA_SCALAR:
        return 1;
#if defined(__x86_64__) || defined(__i386__)
    case SPK_ISA_AVX2:
        return f->avx2 && f->fma && f->f16c;
    case SPK_ISA_AVX512:
        return f->avx2 && f->fma && f->f16c && f->avx512f && f->avx512bw && f->avx512vl &&
               f->avx512vnni;
#endif
#if defined(__aarch64__)
    case SPK_ISA_NEON:
        return f->neon;
    case SPK_ISA_NEON_DOTPROD:
        return f->neon && f->dotprod;
    case SPK_ISA_NEON_I8MM:
        return f->neon && f->dotprod && f->i8mm;
#endif
    default:
        return 0;
    }
}

static void detect(void)
{
    spk_cpu_features f;
    memset(&f, 0, sizeof f);
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    f.avx2 = __builtin_cpu_supports("avx2") != 0;
    f.fma = __builtin_cpu_supports("fma") != 0;
    f.avx512f = __builtin_cpu_supports("avx512f") != 0;
    f.avx512bw = __builtin_cpu_supports("avx512bw") != 0;
    f.avx512vl = __builtin_cpu_supports("avx512vl") != 0;
    f.avx512vnni = __builtin_cpu_supports("avx512vnni") != 0;
    /* Not every compiler knows "f16c"/"avxvnni" for __builtin_cpu_supports: read CPUID. Both
     * need the AVX register state the OS enables, which the avx2 answer above already implies. */
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (__get_cpuid(1, &a, &b, &c, &d))
        f.f16c = f.avx2 && (c & (1u << 29)) != 0;
    if (__get_cpuid_max(0, NULL) >= 7) {
        __cpuid_count(7, 1, a, b, c, d);
        f.avxvnni = f.avx2 && (a & (1u << 4)) != 0;
    }
#elif defined(__aarch64__)
    f.neon = 1;
#if defined(__linux__)
    f.dotprod = (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
    f.i8mm = (getauxval(AT_HWCAP2) & HWCAP2_I8MM) != 0;
#endif
#endif
    g_features = f;

    g_names[0] = '\0';
    const char *sep = "";
    if (isa_usable(&f, SPK_ISA_AVX2)) {
        strcat(g_names, "avx2");
        sep = ",";
    }
    if (isa_usable(&f, SPK_ISA_AVX512)) {
        strcat(g_names, sep);
        strcat(g_names, "avx512");
        sep = ",";
    }
    if (isa_usable(&f, SPK_ISA_NEON)) {
        strcat(g_names, sep);
        strcat(g_names, "neon");
        if (isa_usable(&f, SPK_ISA_NEON_DOTPROD))
            strcat(g_names, ",dotprod");
        if (isa_usable(&f, SPK_ISA_NEON_I8MM))
            strcat(g_names, ",i8mm");
    }
}

int spk_cpu_isa_usable(int isa)
{
    pthread_once(&g_once, detect);
    return isa_usable(&g_features, isa);
}

const spk_cpu_features *spk_cpu_get_features(void)
{
    pthread_once(&g_once, detect);
    return &g_features;
}

const char *spk_cpu_simd_names(void)
{
    pthread_once(&g_once, detect);
    return g_names;
}

void spk_cpu_force_scalar(int on)
{
    atomic_store(&g_force_scalar, on ? 1 : 0);
}

int spk_cpu_scalar_forced(void)
{
    return atomic_load_explicit(&g_force_scalar, memory_order_relaxed);
}
