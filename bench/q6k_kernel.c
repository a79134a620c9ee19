/*
 * Q6_K matmul kernel driver: thread CPU time of n_in x n_out random Q6_K weights at 1 and 8
 * tokens, ns per row x token x 256 values, median of `reps`. Under valgrind --tool=callgrind
 * (reps 1, calls 1) its instruction counts are the repeatable figure (BENCHMARKS.md 9i).
 * Usage: q6k_kernel [n_in n_out reps calls tokens] (calls 0: ~20 ms per timing; tokens 0: 1 and 8)
 * Build (after `make build`): gcc -O2 -std=c11 -D_GNU_SOURCE -Ilib -Ibuild -Iinclude
 *   bench/q6k_kernel.c build/libsparkinfer.a -lpthread -lm -ldl -o /tmp/q6k_kernel
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "common/dtype.h"
#include "cpu/matmul.h"
#include "cpu/quant.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    const int n_in = argc > 1 ? atoi(argv[1]) : 512, n_out = argc > 2 ? atoi(argv[2]) : 1536;
    const int reps = argc > 3 ? atoi(argv[3]) : 7, calls0 = argc > 4 ? atoi(argv[4]) : 0;
    const int tok0 = argc > 5 ? atoi(argv[5]) : 0;
    if (!spk_matmul_supported(SPK_DT_Q6_K, n_in) || n_out < 8 || reps < 1 || reps > 101 || calls0 < 0 || tok0 < 0 || tok0 > 512)
        return fprintf(stderr, "bad sizes\n"), 2;
    const size_t rb = spk_dtype_row_size(SPK_DT_Q6_K, (size_t)n_in), wb = rb * (size_t)n_out;
    uint8_t *w = malloc(wb);
    if (!w)
        return 2;
    uint64_t s = 88172645463325252ull;
    for (size_t i = 0; i < wb; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        w[i] = (uint8_t)s;
    }
    for (int r = 0; r < n_out; r++)
        for (int b = 0; b < n_in / 256; b++) {
            spk_block_q6_K *x = (spk_block_q6_K *)(w + (size_t)r * rb) + b;
            x->d = spk_f32_to_f16(0.001f + 0.0001f * (float)((r + b) % 7));
        }
    const int toks[] = {tok0 ? tok0 : 1, 8};
    printf("isa %s, Q6_K %d x %d, thread CPU ns per row x token x 256 values, median of %d\n",
           spk_matmul_isa_name(), n_in, n_out, reps);
    for (size_t k = 0; k < (tok0 ? 1u : 2u); k++) {
        const int nt = toks[k];
        float *x = malloc(sizeof(float) * (size_t)n_in * nt), *out = malloc(sizeof(float) * (size_t)n_out * nt);
        void *act = malloc(spk_act_size(SPK_DT_Q6_K, n_in, nt));
        if (!x || !out || !act)
            return 2;
        for (int i = 0; i < n_in * nt; i++)
            x[i] = (float)((i * 37) % 101 - 50) * 0.02f;
        spk_act_quantize(act, SPK_DT_Q6_K, x, n_in, 0, nt);
        const int calls = calls0 ? calls0 : nt >= 8 ? 30 : 200;
        double tt[101];
        double chk = 0;
        for (int r = 0; r < reps; r++) {
            const double t0 = now();
            for (int c = 0; c < calls; c++)
                spk_matmul(out, n_out, w, SPK_DT_Q6_K, act, n_in, nt, 0, n_out);
            tt[r] = (now() - t0) * 1e9 / ((double)calls * n_out * nt * (n_in / 256.0));
        }
        for (int i = 0; i < n_out * nt; i++)
            chk += out[i];
        qsort(tt, (size_t)reps, sizeof(double), cmp);
        printf("tokens %d: %.2f ns (checksum %.6g)\n", nt, tt[reps / 2], chk);
        free(x);
        free(out);
        free(act);
    }
    free(w);
    return 0;
}
