/*
 * hf_load: load a model (GGUF file or Hugging Face directory) as one rank of a layout and report
 * times and memory, for bench/hf-load.sh.
 *   hf_load PATH                      -> open, load, first token (reads every weight page), RSS
 *   hf_load PATH LAYOUT RANK [NTOK]   LAYOUT one, pp2 or tp2: open_ms, load_ms (spk_llama_load +
 *                                     spk_llama_shard, which reads the rank's pages), the rank's
 *                                     weights (n_bytes), bytes converted (HF: Q/K permutation,
 *                                     FP8/NVFP4 -> BF16 ...; made on first touch), RSS; with NTOK
 *                                     and LAYOUT one: decode tok/s of NTOK tokens on 1 thread
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "model/gguf.h"
#include "model/hf.h"
#include "model/llama.h"

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static long rss_kib(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6))
            v = atol(line + 6);
    if (f)
        fclose(f);
    return v;
}

static int fail(void)
{
    fprintf(stderr, "%s\n", spk_last_error());
    return 1;
}

static int first_token(spk_gguf_file *f, double t0, double t1)
{
    spk_hparams hp;
    spk_weights w;
    if (spk_llama_load(f, &hp, &w) != SPK_OK)
        return fail();
    double t2 = now_ms();
    spk_llama *m;
    if (spk_llama_create(&hp, &w, NULL, 16, 1, 1, 1, &m) != SPK_OK)
        return fail();
    int32_t tok = 1, pos = 0, seq = 0;
    uint8_t want = 1;
    float *lg = malloc(sizeof(float) * (size_t)hp.n_vocab);
    spk_batch b = {.n_tok = 1, .token = &tok, .pos = &pos, .seq = &seq, .want_logits = &want};
    if (spk_llama_forward(m, &b, NULL, lg) != SPK_OK)
        return fail();
    double t3 = now_ms();
    printf("open_ms %.0f load_ms %.0f first_token_ms %.0f rss_mib %.0f\n", t1 - t0, t2 - t1, t3 - t2,
           rss_kib() / 1024.0);
    free(lg);
    spk_llama_free(m);
    spk_llama_weights_free(&w);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 2 && argc != 4 && argc != 5) {
        fprintf(stderr, "usage: hf_load PATH [one|pp2|tp2 RANK [NTOK]]\n");
        return 2;
    }
    double t0 = now_ms();
    spk_gguf_file *f;
    if (spk_gguf_open(argv[1], &f) != SPK_OK)
        return fail();
    double t1 = now_ms();
    if (argc == 2) {
        int rc = first_token(f, t0, t1);
        spk_gguf_close(f);
        return rc;
    }
    const char *layout = argv[2];
    const int rank = atoi(argv[3]), ntok = argc == 5 ? atoi(argv[4]) : 0;
    spk_hparams hp;
    spk_weights full, w;
    if (spk_llama_load(f, &hp, &full) != SPK_OK)
        return fail();
    spk_shard sh;
    spk_shard_full(&hp, &sh);
    if (!strcmp(layout, "pp2")) {
        const int half = hp.n_layers / 2;
        sh.l0 = rank ? half : 0;
        sh.l1 = rank ? hp.n_layers : half;
        sh.first = rank == 0;
        sh.last = rank == 1;
    } else if (!strcmp(layout, "tp2")) {
        sh.kv0 = rank * hp.n_kv_heads / 2;
        sh.kv1 = (rank + 1) * hp.n_kv_heads / 2;
        sh.h0 = sh.kv0 * (hp.n_heads / hp.n_kv_heads);
        sh.h1 = sh.kv1 * (hp.n_heads / hp.n_kv_heads);
        sh.f0 = rank * hp.n_ff / 2;
        sh.f1 = (rank + 1) * hp.n_ff / 2;
        sh.v0 = rank * hp.n_vocab / 2;
        sh.v1 = (rank + 1) * hp.n_vocab / 2;
    } else if (strcmp(layout, "one")) {
        fprintf(stderr, "layout: one, pp2 or tp2\n");
        return 2;
    }
    if (spk_llama_shard(&hp, &full, &sh, &w) != SPK_OK)
        return fail();
    double t2 = now_ms();
    printf("open_ms %.0f load_ms %.0f weights_mib %.0f converted_mib %.1f rss_mib %.0f", t1 - t0, t2 - t1,
           w.n_bytes / 1048576.0, spk_hf_converted_bytes(f, NULL) / 1048576.0, rss_kib() / 1024.0);
    if (ntok > 0 && !strcmp(layout, "one")) {
        spk_llama *m;
        if (spk_llama_create(&hp, &w, &sh, ntok + 2, 1, 1, 1, &m) != SPK_OK)
            return fail();
        float *lg = malloc(sizeof(float) * (size_t)hp.n_vocab);
        int32_t tok = 1, seq = 0;
        uint8_t want = 1;
        double ta = 0;
        for (int i = 0; i <= ntok; i++) { /* token 0 warms up (first touch); then ntok timed */
            if (i == 1)
                ta = now_ms();
            int32_t pos = i;
            spk_batch b = {.n_tok = 1, .token = &tok, .pos = &pos, .seq = &seq, .want_logits = &want};
            if (spk_llama_forward(m, &b, NULL, lg) != SPK_OK)
                return fail();
            tok = (tok * 7919 + 11) % hp.n_vocab;
        }
        printf(" decode_tok_s %.3f", ntok / ((now_ms() - ta) / 1e3));
        free(lg);
        spk_llama_free(m);
    }
    printf("\n");
    spk_llama_weights_free(&w);
    spk_llama_weights_free(&full);
    spk_gguf_close(f);
    return 0;
}
