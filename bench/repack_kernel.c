/*
 * A packed type's matmul kernel (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, MXFP4, Q2_K, Q3_K, Q4_K, Q5_K or Q6_K), file layout against the layout packed at load
 * (cpu/repack.c): thread CPU time of n_in x n_out random weights (n_in 512 x n_out 1536 by
 * default) at 1, 8 and 256 tokens, ns per row x token x 256 values, the median of `reps` runs of
 * each, the two layouts alternating. Built and run by bench/repack.sh.
 * Usage: repack_kernel [n_in n_out reps [q4_0|q4_1|q5_0|q5_1|q8_0|mxfp4|q2_k|q3_k|q4_k|q5_k|q6_k]]
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
    const int reps = argc > 3 ? atoi(argv[3]) : 7;
    static const struct { const char *arg, *name; spk_dtype t; } types[] = {
        {"q4_0", "Q4_0", SPK_DT_Q4_0}, {"q8_0", "Q8_0", SPK_DT_Q8_0}, {"mxfp4", "MXFP4", SPK_DT_MXFP4},
        {"q4_k", "Q4_K", SPK_DT_Q4_K}, {"q6_k", "Q6_K", SPK_DT_Q6_K},
        {"q5_k", "Q5_K", SPK_DT_Q5_K}, {"q3_k", "Q3_K", SPK_DT_Q3_K},
        {"q5_0", "Q5_0", SPK_DT_Q5_0}, {"q5_1", "Q5_1", SPK_DT_Q5_1}, {"q4_1", "Q4_1", SPK_DT_Q4_1},
        {"q2_k", "Q2_K", SPK_DT_Q2_K}};
    const int nt = (int)(sizeof types / sizeof *types);
    int ti = 0;
    while (argc > 4 && ti < nt && strcmp(argv[4], types[ti].arg) != 0)
        ti++;
    if (ti == nt)
        return fprintf(stderr, "type: q4_0, q4_1, q5_0, q5_1, q8_0, mxfp4, q2_k, q3_k, q4_k, q5_k or q6_k\n"), 2;
    const spk_dtype T = types[ti].t;
    const char *tn = types[ti].name;
    if (!spk_matmul_supported(T, n_in) || n_out < 8 || reps < 1 || reps > 101)
        return fprintf(stderr, "bad sizes\n"), 2;
    const int layout = spk_matmul_pack_layout(T, n_in);
    const size_t rb = spk_dtype_row_size(T, (size_t)n_in), wb = rb * (size_t)n_out;
    uint8_t *w = malloc(wb), *p = malloc(wb);
    uint64_t s = 88172645463325252ull;
    for (size_t i = 0; i < wb; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        w[i] = (uint8_t)s;
    }
    for (int r = 0; r < n_out; r++)
        for (int b = 0; b < n_in / (int)spk_dtype_get((uint32_t)T)->block; b++) { /* the scale leads (Q3_K, Q6_K: ends) every block */
            uint8_t *x = w + (size_t)r * rb + (size_t)b * spk_dtype_get((uint32_t)T)->type_size;
            const spk_f16 d = spk_f32_to_f16(0.01f + 0.001f * (float)((r + b) % 7));
            if (T == SPK_DT_MXFP4)
                x[0] = (uint8_t)(120 + (r + b) % 7); /* E8M0 2^-8 .. 2^-2 */
            else if (T == SPK_DT_Q6_K) /* d is last */
                memcpy(x + offsetof(spk_block_q6_K, d), &d, 2);
            else if (T == SPK_DT_Q3_K)
                memcpy(x + offsetof(spk_block_q3_K, d), &d, 2);
            else
                memcpy(x, &d, 2);
            if (T == SPK_DT_Q4_K || T == SPK_DT_Q5_K || T == SPK_DT_Q4_1 || T == SPK_DT_Q5_1) /* and dmin, m */
                memcpy(x + 2, &d, 2);
        }
    /* no packed kernel (another ISA, or a library before the type's): the file layout alone */
    const int packed = layout != SPK_MM_LAYOUT_ROWS && spk_matmul_pack(p, w, T, layout, n_in, n_out, 0) == 0;
    if (!packed)
        printf("no packed %s kernel at this ISA (%s): file layout only\n", tn, spk_matmul_isa_name());
    static const int toks[] = {1, 8, 256};
    printf("isa %s, %s %d x %d, thread CPU ns per row x token x 256 values, median of %d\n",
           spk_matmul_isa_name(), tn, n_in, n_out, reps);
    printf("| tokens | file layout | packed | file / packed |\n|---|---|---|---|\n");
    for (size_t k = 0; k < sizeof toks / sizeof *toks; k++) {
        const int nt = toks[k];
        float *x = malloc(sizeof(float) * (size_t)n_in * nt), *out = malloc(sizeof(float) * (size_t)n_out * nt);
        void *act = malloc(spk_act_size(T, n_in, nt));
        for (int i = 0; i < n_in * nt; i++)
            x[i] = (float)((i * 37) % 101 - 50) * 0.02f;
        spk_act_quantize(act, T, x, n_in, 0, nt);
        /* enough calls per timing for ~20 ms */
        const int calls = nt >= 256 ? 1 : nt >= 8 ? 30 : 200;
        double tf[101], tp[101];
        for (int r = 0; r < reps; r++) {
            double t0 = now();
            for (int c = 0; c < calls; c++)
                spk_matmul(out, n_out, w, T, act, n_in, nt, 0, n_out);
            double t1 = now();
            for (int c = 0; c < calls && packed; c++)
                spk_matmul_layout(out, n_out, p, T, layout, n_out, act, n_in, nt, 0, n_out);
            double t2 = now();
            const double units = (double)calls * n_out * nt * (n_in / 256.0);
            tf[r] = (t1 - t0) * 1e9 / units;
            tp[r] = (t2 - t1) * 1e9 / units;
        }
        qsort(tf, (size_t)reps, sizeof(double), cmp);
        qsort(tp, (size_t)reps, sizeof(double), cmp);
        if (packed)
            printf("| %d | %.2f | %.2f | %.2fx |\n", nt, tf[reps / 2], tp[reps / 2], tf[reps / 2] / tp[reps / 2]);
        else
            printf("| %d | %.2f | - | - |\n", nt, tf[reps / 2]);
        free(x);
        free(out);
        free(act);
    }
    free(w);
    free(p);
    return 0;
}
