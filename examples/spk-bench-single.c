/*
 * spk-bench-single: prefill and decode speed like llama-bench's pp/tg tests (BENCHMARKS.md
 * sections 2 and 4). Prompt tokens are drawn from a fixed seed.
 *
 *   spk-bench-single [--model PATH] [--threads N] [--prompt-tokens 512] [--gen-tokens 128]
 *                    [--reps 3] [--batch B] [--pp P] [--tp T] [--ep N]
 *
 * Prefill: one prompt of --prompt-tokens. Decode: B concurrent requests of a one-token prompt,
 * each generating --gen-tokens; decode tok/s = all generated tokens / wall time. With --pp/--tp
 * the extra ranks are started as local spk-worker processes with --threads threads each.
 * Prints per-run figures on stderr and the medians on stdout as prefill_tok_s=... decode_tok_s=...
 */
#include <stdint.h>
#include <string.h>

#include "common.h"
#include "launch.h"

#define P "spk-bench-single"

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Run `batch` requests (prompt i starts at prompt + i) to completion; return seconds from submit
 * to the last event. */
static double run(spk_model *m, const int32_t *prompt, size_t n, int gen, int batch, int *ok)
{
    spk_request r[256];
    uint64_t ids[256];
    for (int i = 0; i < batch; i++) {
        spk_request_init(&r[i]);
        r[i].prompt = prompt + i;
        r[i].n_prompt = n;
        r[i].max_tokens = gen;
        r[i].temperature = 0;
        r[i].ignore_eos = 1;
    }
    double t0 = ex_now();
    *ok = 0;
    if (ex_fail("submit", spk_submit(m, r, (size_t)batch, ids)))
        return 0;
    int done = 0, good = 0;
    while (done < batch) {
        spk_event ev[256];
        size_t ne;
        if (ex_fail("poll", spk_poll(m, ev, 256, &ne, -1)))
            return 0;
        for (size_t i = 0; i < ne; i++)
            if (ev[i].finish != SPK_FINISH_NONE) {
                done++;
                good += ev[i].finish == SPK_FINISH_LENGTH;
            }
    }
    *ok = good == batch;
    return ex_now() - t0;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: spk-bench-single [--model PATH] [--threads N] [--prompt-tokens 512] [--gen-tokens 128]\n"
               "                        [--reps 3] [--batch B] [--pp P] [--tp T] [--ep N] [--backend cpu|cuda|auto]\n"
               "                        [--device N]\n"
               "--ep N: a MoE model's experts split whole over the N ranks of each TP group (--tp defaults to N).\n"
               "Prints the median prefill and decode speeds on stdout (prefill_tok_s=..., decode_tok_s=...; with\n"
               "--pp > 1 also handoff_us=..., the mean pipeline hand-off of the decode runs, and each rank's\n"
               "per-step timing on stderr).\n");
}

int main(int argc, char **argv)
{
    const char *model_path = ex_default_model();
    int threads = 2, n_prompt = 512, n_gen = 128, reps = 3, batch = 1, pp = 1, tp = 0, backend = SPK_BACKEND_CPU,
        device = 0, ep = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { usage(stdout); return 0; }
        else if (!v) { fprintf(stderr, P ": %s needs a value\n", a); usage(stderr); return 2; }
        else if (!strcmp(a, "--model")) model_path = v;
        else if (!strcmp(a, "--threads")) bad = ex_parse_int(P, a, v, 0, 4096, &threads);
        else if (!strcmp(a, "--backend")) bad = ex_parse_backend(P, a, v, &backend);
        else if (!strcmp(a, "--device")) bad = ex_parse_int(P, a, v, 0, 1023, &device);
        else if (!strcmp(a, "--prompt-tokens")) bad = ex_parse_int(P, a, v, 1, 1 << 24, &n_prompt);
        else if (!strcmp(a, "--gen-tokens")) bad = ex_parse_int(P, a, v, 1, 1 << 24, &n_gen);
        else if (!strcmp(a, "--reps")) bad = ex_parse_int(P, a, v, 1, 100, &reps);
        else if (!strcmp(a, "--batch")) bad = ex_parse_int(P, a, v, 1, 256, &batch);
        else if (!strcmp(a, "--pp")) bad = ex_parse_int(P, a, v, 1, 64, &pp);
        else if (!strcmp(a, "--tp")) bad = ex_parse_int(P, a, v, 1, 64, &tp);
        else if (!strcmp(a, "--ep")) bad = ex_parse_int(P, a, v, 1, 64, &ep);
        else { fprintf(stderr, P ": unknown option %s\n", a); usage(stderr); return 2; }
        if (bad)
            return 2;
        i++;
    }
    if (!tp)
        tp = ep > 1 ? ep : 1;
    if (n_prompt < 1 || n_gen < 1 || reps < 1 || reps > 100 || batch < 1 || batch > 256 || pp < 1 || tp < 1 ||
        pp * tp > 64) {
        fprintf(stderr, P ": --pp x --tp is %d; at most 64 ranks\n", pp * tp);
        return 2;
    }
    spk_cluster *cl = ex_open_cluster(pp * tp, threads, NULL, "tcp");
    if (!cl)
        return 1;
    spk_model_config mc;
    spk_model_config_init(&mc);
    mc.path = model_path;
    mc.max_seqs = batch;
    mc.backend = backend;
    mc.device = device;
    mc.pp = pp;
    mc.tp = tp;
    mc.ep = ep;
    mc.n_ctx = n_prompt + n_gen + 8;
    spk_model *m = NULL;
    if (ex_fail(model_path, spk_model_load(cl, &mc, &m))) {
        spk_cluster_close(cl);
        ex_reap_workers(5000);
        return 1;
    }
    spk_model_info info = {.struct_size = sizeof info};
    spk_model_get_info(m, &info);
    int32_t *prompt = malloc((size_t)(n_prompt + batch) * sizeof *prompt);
    uint64_t s = 12345;
    for (int i = 0; i < n_prompt + batch; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        prompt[i] = (int32_t)((s >> 33) % (uint64_t)info.n_vocab);
    }
    double *ppr = calloc((size_t)reps, sizeof *ppr), *tg = calloc((size_t)reps, sizeof *tg);
    int ok = 1, rc = 0;
    /* warm-up: page in the weights (a prompt of at most --prompt-tokens: the array holds no more) */
    run(m, prompt, n_prompt < 16 ? (size_t)n_prompt : 16, 4, 1, &ok);
    /* step timing of every rank over the decode runs (pipeline hand-offs; spk_rank_stats) */
    const int world = pp * tp;
    spk_rank_stats *rs0 = calloc((size_t)world, sizeof *rs0), *rs1 = calloc((size_t)world, sizeof *rs1);
    uint64_t dstep[64] = {0}, dcomp[64] = {0}, dwait[64] = {0}, dsend[64] = {0}, dhand[64] = {0}, dnh[64] = {0};
    for (int r = 0; r < reps && ok; r++) {
        double t = run(m, prompt, (size_t)n_prompt, 1, 1, &ok);
        ppr[r] = n_prompt / t;
        for (int k = 0; k < world && rs0; k++) {
            spk_rank_stats_init(&rs0[k]);
            spk_model_get_rank_stats(m, k, &rs0[k]);
        }
        if (ok)
            t = run(m, prompt, 1, n_gen, batch, &ok);
        for (int k = 0; k < world && rs0 && rs1; k++) {
            spk_rank_stats_init(&rs1[k]);
            if (spk_model_get_rank_stats(m, k, &rs1[k]) != SPK_OK)
                continue;
            dstep[k] += rs1[k].n_steps - rs0[k].n_steps;
            dcomp[k] += rs1[k].compute_ns - rs0[k].compute_ns;
            dwait[k] += rs1[k].recv_wait_ns - rs0[k].recv_wait_ns;
            dsend[k] += rs1[k].send_ns - rs0[k].send_ns;
            dhand[k] += rs1[k].handoff_ns - rs0[k].handoff_ns;
            dnh[k] += rs1[k].n_handoffs - rs0[k].n_handoffs;
        }
        tg[r] = (double)n_gen * batch / t;
        fprintf(stderr, "rep %d: prefill %.1f tok/s, decode %.1f tok/s\n", r, ppr[r], tg[r]);
    }
    if (ok) {
        qsort(ppr, (size_t)reps, sizeof *ppr, cmp_double);
        qsort(tg, (size_t)reps, sizeof *tg, cmp_double);
        printf("prefill_tok_s=%.2f\ndecode_tok_s=%.2f\n", ppr[reps / 2], tg[reps / 2]);
        /* per rank, decode runs only: per step (micro-batch) means */
        uint64_t hsum = 0, hn = 0;
        for (int k = 0; world > 1 && k < world; k++) {
            double n = dstep[k] ? (double)dstep[k] : 1.0;
            fprintf(stderr, "rank %d decode: %llu steps; per step: compute %.1f us, waiting for the previous stage "
                    "%.1f us, sending %.1f us, hand-off %.1f us\n", k, (unsigned long long)dstep[k], dcomp[k] / n / 1e3,
                    dwait[k] / n / 1e3, dsend[k] / n / 1e3, dnh[k] ? dhand[k] / (double)dnh[k] / 1e3 : 0.0);
            hsum += dhand[k];
            hn += dnh[k];
        }
        if (hn)
            printf("handoff_us=%.2f\n", hsum / (double)hn / 1e3);
    } else {
        fprintf(stderr, "spk-bench-single: a run failed\n");
        rc = 1;
    }
    free(ppr);
    free(tg);
    free(rs0);
    free(rs1);
    free(prompt);
    spk_model_free(m);
    spk_cluster_close(cl);
    ex_reap_workers(5000);
    return rc;
}
