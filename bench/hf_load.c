/*
 * hf_load: time to open a model (GGUF file or Hugging Face directory) and run its first token
 * (which reads every weight page), and the resident memory after, for bench/hf-load.sh.
 *   hf_load PATH   -> "open_ms W load_ms X first_token_ms Y rss_mib Z"
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "model/gguf.h"
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

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: hf_load PATH\n");
        return 2;
    }
    double t0 = now_ms();
    spk_gguf_file *f;
    if (spk_gguf_open(argv[1], &f) != SPK_OK) {
        fprintf(stderr, "%s\n", spk_last_error());
        return 1;
    }
    double t1 = now_ms();
    spk_hparams hp;
    spk_weights w;
    if (spk_llama_load(f, &hp, &w) != SPK_OK) {
        fprintf(stderr, "%s\n", spk_last_error());
        return 1;
    }
    double t2 = now_ms();
    spk_llama *m;
    if (spk_llama_create(&hp, &w, NULL, 16, 1, 1, 1, &m) != SPK_OK) {
        fprintf(stderr, "%s\n", spk_last_error());
        return 1;
    }
    int32_t tok = 1, pos = 0, seq = 0;
    uint8_t want = 1;
    float *lg = malloc(sizeof(float) * (size_t)hp.n_vocab);
    spk_batch b = {.n_tok = 1, .token = &tok, .pos = &pos, .seq = &seq, .want_logits = &want};
    if (spk_llama_forward(m, &b, NULL, lg) != SPK_OK) {
        fprintf(stderr, "%s\n", spk_last_error());
        return 1;
    }
    double t3 = now_ms();
    printf("open_ms %.0f load_ms %.0f first_token_ms %.0f rss_mib %.0f\n", t1 - t0, t2 - t1, t3 - t2,
           rss_kib() / 1024.0);
    free(lg);
    spk_llama_free(m);
    spk_llama_weights_free(&w);
    spk_gguf_close(f);
    return 0;
}
