/* Small helpers shared by the example programs (header-only; public API only). */
#ifndef SPK_EXAMPLES_COMMON_H
#define SPK_EXAMPLES_COMMON_H

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

#endif
