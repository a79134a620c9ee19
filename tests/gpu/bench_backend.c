/*
 * bench_backend: prefill and decode speed of one model on one backend, straight through the
 * forward pass (no engine, no sampling), for tests/gpu/run.sh.
 *
 *   bench_backend MODEL cpu|cuda PEAK_GBPS [THREADS]
 *
 * Prints one JSON object per line: prefill (512 tokens in one batch) and decode at batch
 * 1/8/32/64/128 (b sequences of 64-token contexts, one token each per step, 16 steps after
 * 2 warm-up steps). For decode, weight bytes per step / step time = the weights' read rate, and
 * its fraction of PEAK_GBPS (the GPU's memory bandwidth) is the roofline figure of issue 8.
 * SPK_MODULE_DIR names the directory holding spk_backend_cuda.so.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "model/gguf.h"
#include "model/llama.h"
#include "transport/registry.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: bench_backend MODEL cpu|cuda PEAK_GBPS [THREADS]\n");
        return 2;
    }
    const char *path = argv[1];
    const spk_backend_type be = strcmp(argv[2], "cuda") == 0 ? SPK_BACKEND_CUDA : SPK_BACKEND_CPU;
    const double peak = atof(argv[3]);
    const int threads = argc > 4 ? atoi(argv[4]) : 1;
    if (getenv("SPK_MODULE_DIR"))
        spk_transport_test_set_plugin_dir(getenv("SPK_MODULE_DIR"));
    spk_gguf_file *gf;
    spk_hparams hp;
    spk_weights w;
    if (spk_gguf_open(path, &gf) != SPK_OK || spk_llama_load(gf, &hp, &w) != SPK_OK) {
        fprintf(stderr, "bench_backend: %s\n", spk_last_error());
        return 1;
    }
    enum { CTX = 640, BS = 16, MAXB = 128, PREFILL = 512, STEPS = 16, WARM = 2 };
    const int blocks_per_seq = CTX / BS, n_blocks = MAXB * blocks_per_seq;
    spk_llama *m;
    if (spk_llama_create_paged(&hp, &w, NULL, CTX, n_blocks, BS, PREFILL, threads, be, 0, &m) != SPK_OK) {
        fprintf(stderr, "bench_backend: %s\n", spk_last_error());
        return 1;
    }
    int32_t *tok = calloc(PREFILL, sizeof *tok), *pos = calloc(PREFILL, sizeof *pos), *seq = calloc(PREFILL, sizeof *seq);
    int32_t *toff = calloc(MAXB, sizeof *toff), *table = calloc((size_t)n_blocks, sizeof *table);
    uint8_t *want = calloc(PREFILL, 1);
    float *out = malloc(sizeof(float) * (size_t)MAXB * (size_t)hp.n_vocab);
    for (int i = 0; i < n_blocks; i++)
        table[i] = i;
    for (int s = 0; s < MAXB; s++)
        toff[s] = s * blocks_per_seq;
    /* prefill: one sequence, 512 tokens, logits of the last */
    for (int i = 0; i < PREFILL; i++) {
        tok[i] = (int32_t)((i * 7919u) % (unsigned)hp.n_vocab);
        pos[i] = i;
    }
    want[PREFILL - 1] = 1;
    spk_batch b = {.n_tok = PREFILL, .token = tok, .pos = pos, .seq = seq, .want_logits = want, .n_seqs = 1,
                   .table_off = toff, .block_table = table, .n_table = n_blocks};
    double best = 1e30;
    for (int r = 0; r < 3; r++) {
        double t0 = now();
        if (spk_llama_forward(m, &b, NULL, out) != SPK_OK) {
            fprintf(stderr, "bench_backend: %s\n", spk_last_error());
            return 1;
        }
        double dt = now() - t0;
        best = dt < best ? dt : best;
    }
    printf("{\"backend\":\"%s\",\"phase\":\"prefill\",\"tokens\":%d,\"tok_s\":%.1f}\n", argv[2], PREFILL,
           PREFILL / best);
    static const int batches[] = {1, 8, 32, 64, 128};
    for (size_t bi = 0; bi < sizeof batches / sizeof *batches; bi++) {
        const int B = batches[bi];
        double t_sum = 0;
        for (int step = 0; step < WARM + STEPS; step++) {
            for (int s = 0; s < B; s++) {
                tok[s] = (int32_t)((s * 31u + (unsigned)step) % (unsigned)hp.n_vocab);
                pos[s] = 64 + step;
                seq[s] = s;
                want[s] = 1;
            }
            spk_batch d = {.n_tok = B, .token = tok, .pos = pos, .seq = seq, .want_logits = want, .n_seqs = B,
                           .table_off = toff, .block_table = table, .n_table = n_blocks};
            double t0 = now();
            if (spk_llama_forward(m, &d, NULL, out) != SPK_OK) {
                fprintf(stderr, "bench_backend: %s\n", spk_last_error());
                return 1;
            }
            if (step >= WARM)
                t_sum += now() - t0;
        }
        const double step_s = t_sum / STEPS, gbps = (double)w.n_bytes / step_s / 1e9;
        printf("{\"backend\":\"%s\",\"phase\":\"decode\",\"batch\":%d,\"tok_s\":%.1f,\"step_ms\":%.3f,"
               "\"weight_gb_s\":%.1f,\"roofline\":%.3f}\n", argv[2], B, B / step_s, step_s * 1e3, gbps,
               peak > 0 ? gbps / peak : 0.0);
        fflush(stdout);
    }
    spk_llama_free(m);
    spk_llama_weights_free(&w);
    spk_gguf_close(gf);
    free(tok), free(pos), free(seq), free(toff), free(table), free(want), free(out);
    return 0;
}
