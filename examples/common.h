/* Small helpers shared by the example programs (header-only; public API only). */
#ifndef SPK_EXAMPLES_COMMON_H
#define SPK_EXAMPLES_COMMON_H

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <sparkinfer/sparkinfer.h>

/* The default model's cache path: $SPK_CACHE or ~/.cache/sparkinfer (see scripts/fetch-model.sh). */
static inline const char *ex_default_model(void)
{
    static char buf[4096];
    const char *cache = getenv("SPK_CACHE");
    if (cache && *cache)
        snprintf(buf, sizeof buf, "%s/models/SmolLM2-135M-Instruct.Q4_1.gguf", cache);
    else
        snprintf(buf, sizeof buf, "%s/.cache/sparkinfer/models/SmolLM2-135M-Instruct.Q4_1.gguf",
                 getenv("HOME") ? getenv("HOME") : ".");
    return buf;
}

static inline double ex_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Print "what: status: detail" to stderr and return 1 if st is an error. */
static inline int ex_fail(const char *what, spk_status st)
{
    if (st == SPK_OK)
        return 0;
    fprintf(stderr, "%s: %s: %s\n", what, spk_status_str(st), spk_last_error());
    return 1;
}

/*
 * Strict number parsing for command-line options: the whole string must be a number in
 * [lo, hi] ("abc", "0.5abc", "", "1e999" and out-of-range values are errors). On error print
 * "PROG: OPT: 'V' is not ..." on stderr and return -1; on success store it and return 0.
 */
static inline int ex_parse_int(const char *prog, const char *opt, const char *v, long lo, long hi, int *out)
{
    char *end = NULL;
    errno = 0;
    long x = v ? strtol(v, &end, 10) : 0;
    if (!v || !*v || *end || errno || x < lo || x > hi) {
        fprintf(stderr, "%s: %s: '%s' is not an integer in [%ld, %ld]\n", prog, opt, v ? v : "", lo, hi);
        return -1;
    }
    *out = (int)x;
    return 0;
}

/* --backend cpu|cuda|auto into an spk_backend_type. */
static inline int ex_parse_backend(const char *prog, const char *opt, const char *v, int *out)
{
    static const char *names[] = {"auto", "cpu", "cuda"}; /* SPK_BACKEND_AUTO, _CPU, _CUDA */
    for (int i = 0; v && i < 3; i++)
        if (!strcmp(v, names[i])) {
            *out = i;
            return 0;
        }
    fprintf(stderr, "%s: %s: '%s' is not one of cpu, cuda, auto\n", prog, opt, v ? v : "");
    return -1;
}

static inline int ex_parse_float(const char *prog, const char *opt, const char *v, double lo, double hi,
                                 float *out)
{
    char *end = NULL;
    errno = 0;
    double x = v ? strtod(v, &end) : 0;
    if (!v || !*v || *end || errno || !isfinite(x) || x < lo || x > hi) {
        fprintf(stderr, "%s: %s: '%s' is not a number in [%g, %g]\n", prog, opt, v ? v : "", lo, hi);
        return -1;
    }
    *out = (float)x;
    return 0;
}

static inline int ex_parse_u64(const char *prog, const char *opt, const char *v, uint64_t *out)
{
    char *end = NULL;
    errno = 0;
    unsigned long long x = v && *v != '-' ? strtoull(v, &end, 10) : 0;
    if (!v || !*v || *v == '-' || *end || errno) {
        fprintf(stderr, "%s: %s: '%s' is not an unsigned integer\n", prog, opt, v ? v : "");
        return -1;
    }
    *out = (uint64_t)x;
    return 0;
}

#endif
