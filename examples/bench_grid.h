/*
 * spk-bench's data model: the study's scenarios, a layout, one run's parameters and figures, the
 * options. Shared by spk-bench.c and bench_report.h.
 */
#ifndef SPK_EXAMPLES_BENCH_GRID_H
#define SPK_EXAMPLES_BENCH_GRID_H

#include <stdint.h>

#define MAX_LIST 16
#define MAX_REPS 20
#define MAX_BATCH 4096

static const struct { const char *name; int isl, osl; } SCEN[] = {
    {"balanced", 1024, 1024}, {"prefill-heavy", 2048, 128}, {"decode-heavy", 128, 2048}};
#define N_SCEN ((int)(sizeof SCEN / sizeof *SCEN))

typedef struct layout {
    char name[24];
    int pp, tp, world;  /* pp == tp == 0: the planner picks for `world` ranks */
    int ep;             /* tp > 1: 1 experts column-split, == tp experts split whole (spk_model_config.ep) */
} layout;

typedef struct run {
    int scen, batch, lay, isl, osl;
    int pp, tp;                 /* what ran (the planner's pick for auto) */
    int status;                 /* 0 ok, 1 skipped, 2 failed */
    char note[256];
    double tok_s, ttft_ms, tpot_ms, wall_s; /* of the median repetition */
    long out_tokens;
    int n_rep;
    double rep_tok_s[MAX_REPS];
} run;

typedef struct opts {
    const char *model, *preset, *json, *chart;
    const char *coordinator, *transport; /* a real cluster: rank 0 here, spk-worker on the other nodes */
    int world;                           /* its ranks (with coordinator) */
    uint64_t seed;
    double scale;
    int scen[N_SCEN], n_scen;
    int batch[MAX_LIST], n_batch;
    layout lay[MAX_LIST];
    int n_lay;
    int threads, reps;
    int backend, device;     /* spk_backend_type and GPU ordinal of every rank */
} opts;

#endif
