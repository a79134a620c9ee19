/*
 * spk-plan: print the planner's predictions for every pp x tp layout of a model (preset shape or
 * GGUF file) on given hardware, per batch size, and the layout it would choose; with
 * --compare-published, set the predictions beside the published two-DGX-Spark study.
 * Links the internal library (the planner is not public API yet).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__has_include)
#if __has_include("plan/cost.h")
#define SPK_PLAN_INTERNAL 1
#endif
#endif

#ifndef SPK_PLAN_INTERNAL
/* Built as a public-API example (examples/CMakeLists.txt has not yet linked spk-plan against
 * spk_internal): say so instead of failing the whole build. */
int main(void)
{
    fprintf(stderr, "spk-plan: this build lacks the planner's internal headers; link spk-plan against "
                    "spk_internal (see docs/PLANNER.md)\n");
    return 1;
}
#else

#include "common.h"
#include "common/error.h"
#include "model/gguf.h"
#include "plan/cost.h"
#include "plan/plan.h"
#include "model/llama.h"

static void usage(FILE *o)
{
    fprintf(o,
            "usage: spk-plan (--preset NAME | --model FILE.gguf|DIR) [options]\n"
            "  --world N              ranks (default 2)\n"
            "  --batch LIST           batch sizes, comma separated (default 1,8,32,64,128)\n"
            "  --context N            tokens already in each sequence's cache (default 1024)\n"
            "  --scenario ISL/OSL     predict whole runs (prefill ISL, decode OSL; the study's metric)\n"
            "  --mem-bw GBPS          memory bandwidth per rank (default 273)\n"
            "  --tflops T             matmul TFLOP/s per rank (default 100)\n"
            "  --link-gbps G          link rate between ranks (default 200)\n"
            "  --link-latency-us U    point-to-point latency (default 5)\n"
            "  --allreduce-us U       small all-reduce latency (default 30)\n"
            "  --allreduce-gbps B     all-reduce bus bandwidth, GB/s (default: link rate)\n"
            "  --overhead-us U        fixed cost per micro-batch per stage (default 0)\n"
            "  --act-bytes N          bytes per activation on the wire (default 2)\n"
            "  --dgx-spark            DGX Spark figures incl. the observed all-reduce bandwidth (%.2g GB/s)\n"
            "  --show-plan            print each layout's layer/head/ffn/vocab split and bytes per rank\n"
            "  --no-ep                MoE shapes: leave out the expert-parallel layouts (ppN epM: tp M with\n"
            "                         each rank of a TP group holding 1/M of the experts whole)\n"
            "  --compare-published    predictions vs the published two-Spark study (world 2), incl.\n"
            "                         gpt-oss-120b PP2 vs TP2 (and EP2) per batch 1..128\n"
            "presets:",
            SPK_DGX_SPARK_AR_BUSBW);
    for (const char *const *n = spk_shape_preset_names(); *n; n++)
        fprintf(o, " %s", *n);
    fprintf(o, "\n");
}

static int parse_list(const char *s, int *out, int cap)
{
    int n = 0;
    while (*s && n < cap) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v < 1 || v > 1 << 20)
            return -1;
        out[n++] = (int)v;
        s = *end == ',' ? end + 1 : end;
        if (*end && *end != ',')
            return -1;
    }
    return n;
}

static void print_shape(const spk_shape *s)
{
    printf("model %s: %d layers, embd %d, heads %d/%d x %d, ", s->name, s->n_layers, s->n_embd, s->n_heads,
           s->n_kv_heads, s->head_dim);
    if (s->n_experts) {
        printf("%d experts top-%d x ff %d, ", s->n_experts, s->n_experts_used, s->n_ff_expert);
        if (s->n_ff)
            printf("shared-expert ff %d, ", s->n_ff);
    } else {
        printf("ff %d, ", s->n_ff);
    }
    if (s->sliding_window)
        printf("sliding window %d on %d layers, ", s->sliding_window, s->n_sliding_layers);
    printf("vocab %d; %.3g GB weights (layer %.3g MB, head %.3g MB)\n", s->n_vocab,
           (spk_shape_layer_bytes(s) * s->n_layers + spk_shape_head_bytes(s) +
            (s->tied_embeddings ? 0 : spk_shape_embd_bytes(s))) / 1e9,
           spk_shape_layer_bytes(s) / 1e6, spk_shape_head_bytes(s) / 1e6);
    printf("parameters: %.4g B total, %.4g B active per token", spk_shape_total_params(s) / 1e9,
           spk_shape_active_params(s) / 1e9);
    if (s->n_experts)
        printf(" (distinct experts per layer a batch touches: b=1 %.1f, b=8 %.1f, b=64 %.1f, b=128 %.1f of %d)",
               spk_moe_distinct_experts(s->n_experts, s->n_experts_used, 1),
               spk_moe_distinct_experts(s->n_experts, s->n_experts_used, 8),
               spk_moe_distinct_experts(s->n_experts, s->n_experts_used, 64),
               spk_moe_distinct_experts(s->n_experts, s->n_experts_used, 128), s->n_experts);
    printf("\n");
}

/* "pp2 tp1", or "pp1 ep2" for tp 2 with the experts split whole over the group (ep = tp) */
static const char *layout_name(const spk_cost *c, char *buf, size_t cap)
{
    if (c->ep > 1)
        snprintf(buf, cap, "pp%d ep%d", c->pp, c->ep);
    else
        snprintf(buf, cap, "pp%d tp%d", c->pp, c->tp);
    return buf;
}

/* The marker after a layout's row: the chosen one is the best (first) layout. */
static const char *row_mark(const spk_cost *c, int *chosen)
{
    (void)c;
    if (!*chosen) {
        *chosen = 1;
        return "  <- chosen";
    }
    return "";
}

static void print_hw(const spk_hw *hw)
{
    printf("hardware per rank: %.4g GB/s, %.4g TFLOP/s; link %.4g Gb/s, %.3g us; all-reduce %.3g us + ", hw->mem_bw_GBps,
           hw->tflops, hw->link_Gbps, hw->link_latency_us, hw->allreduce_latency_us);
    if (hw->allreduce_busbw_GBps > 0)
        printf("%.3g GB/s bus bandwidth", hw->allreduce_busbw_GBps);
    else
        printf("link rate");
    printf("; overhead %.3g us\n", hw->step_overhead_us);
}

/* Each layout's split, its layers balanced as the executor balances them for `batch` sequences
 * (one micro-batch of batch/pp on these figures, context 0). */
static int show_plans(const spk_shape *s, int world, const spk_hw *hw, int batch)
{
    printf("layer splits balanced for %d sequences on these figures (as the executor does for max_seqs %d):\n",
           batch, batch);
    for (int tp = 1; tp <= world; tp++) {
        for (int ep = 1; ep <= tp; ep = ep == 1 && tp > 1 ? tp : tp + 1) { /* ep 1, then ep = tp */
            if (world % tp || (ep > 1 && s->n_experts == 0))
                continue;
            spk_plan p;
            char buf[512];
            if (spk_plan_make_ep_at(s, world / tp, tp, ep, hw, ceil((double)batch / (world / tp)), 0, &p) != SPK_OK) {
                printf("  pp %d x tp %d%s: invalid: %s\n", world / tp, tp, ep > 1 ? " + ep" : "", spk_err_msg());
                continue;
            }
            printf("  %s\n   bytes per rank:", spk_plan_describe(&p, buf, sizeof buf));
            for (int r = 0; r < p.world; r++)
                printf(" %.3g MB", spk_plan_rank_bytes(&p, r) / 1e6);
            printf("\n");
        }
    }
    return 0;
}

static int table(const spk_shape *s, int world, const int *batches, int nb, int context, int isl, int osl,
                 const spk_hw *hw, unsigned flags)
{
    for (int i = 0; i < nb; i++) {
        spk_cost c[64];
        int n = 0, chosen = 0;
        char ln[32];
        spk_status st =
            spk_plan_rank_layouts_ex(s, world, batches[i], isl > 0 ? isl : context, osl, hw, flags, c, 64, &n);
        if (st) {
            fprintf(stderr, "spk-plan: %s: %s\n", spk_status_str(st), spk_err_msg());
            return 1;
        }
        if (n > 64)
            n = 64;
        if (osl > 0) {
            printf("\nbatch %d, scenario %d/%d (output tok/s over the run):\n", batches[i], isl, osl);
            printf("  %-10s %10s %10s %10s %4s\n", "layout", "tok/s", "prefill s", "decode s", "mb");
            for (int k = 0; k < n; k++)
                printf("  %-10s %10.1f %10.2f %10.2f %4d%s\n", layout_name(&c[k], ln, sizeof ln), c[k].tok_s,
                       c[k].prefill_s, c[k].decode_s, c[k].micro_batches, row_mark(&c[k], &chosen));
            continue;
        }
        printf("\nbatch %d, context %d (decode):\n", batches[i], context);
        printf("  %-10s %9s %9s %4s %5s | %8s %8s %8s %8s %8s  (ms: one micro-batch, busiest stage;\n"
               "  %-10s %9s %9s %4s %5s   %8s %8s %8s %8s %8s   coll: the TP group's all-reduces)\n",
               "layout", "tok/s", "step ms", "mb", "size", "weights", "kv", "compute", "coll", "xfer", "", "", "", "",
               "", "", "", "", "", "");
        for (int k = 0; k < n; k++)
            printf("  %-10s %9.1f %9.3f %4d %5d | %8.3f %8.3f %8.3f %8.3f %8.3f%s\n", layout_name(&c[k], ln, sizeof ln),
                   c[k].tok_s, c[k].step_s * 1e3, c[k].micro_batches, c[k].micro_batch, c[k].weight_s * 1e3,
                   c[k].kv_s * 1e3, c[k].compute_s * 1e3, c[k].allreduce_s * 1e3, c[k].transfer_s * 1e3,
                   row_mark(&c[k], &chosen));
    }
    return 0;
}

/* ---- the published study (BENCHMARKS.md section 1): output tok/s over whole runs ------------ */

typedef struct pub {
    const char *preset;
    const char *scenario;
    int isl, osl, batch;
    double pp2, tp2; /* 0: not published */
} pub;

static const pub published[] = {
    {"gpt-oss-120b", "balanced", 1024, 1024, 128, 554.69, 252},
    {"gpt-oss-120b", "prefill-heavy", 2048, 128, 128, 310.63, 164.99},
    {"gpt-oss-120b", "balanced", 1024, 1024, 64, 504.88, 0},
    {"gpt-oss-120b", "prefill-heavy", 2048, 128, 64, 441.63, 0},
    {"gpt-oss-120b", "decode-heavy", 128, 2048, 64, 494.37, 0},
    {"gpt-oss-20b", "balanced", 1024, 1024, 64, 976.77, 0},
    {"gpt-oss-20b", "prefill-heavy", 2048, 128, 64, 852.39, 0},
    {"gpt-oss-20b", "decode-heavy", 128, 2048, 64, 945.55, 0},
    {"llama-3.1-8b", "balanced", 1024, 1024, 64, 689.53, 0},
    {"llama-3.1-8b", "prefill-heavy", 2048, 128, 64, 539.27, 0},
    {"llama-3.1-8b", "decode-heavy", 128, 2048, 64, 581.43, 0},
    {"mistral-small-24b", "balanced", 1024, 1024, 64, 255.09, 0},
    {"mistral-small-24b", "prefill-heavy", 2048, 128, 64, 216.01, 0},
    {"mistral-small-24b", "decode-heavy", 128, 2048, 64, 238.44, 0},
};

static int compare_by_batch(const spk_hw *hw);

static int compare_published(const spk_hw *hw)
{
    print_hw(hw);
    printf("\nPublished figures: BENCHMARKS.md section 1 (output tok/s over whole runs, two DGX Sparks).\n");
    printf("%-18s %-14s %5s | %9s %9s %6s | %9s %9s\n", "model", "scenario", "batch", "pred PP2", "pred TP2",
           "winner", "pub PP2", "pub TP2");
    for (size_t i = 0; i < sizeof published / sizeof published[0]; i++) {
        const pub *p = &published[i];
        spk_shape s;
        spk_cost a, b;
        if (spk_shape_preset(p->preset, &s) || spk_cost_scenario(&s, 2, 1, p->batch, p->isl, p->osl, hw, &a) ||
            spk_cost_scenario(&s, 1, 2, p->batch, p->isl, p->osl, hw, &b)) {
            fprintf(stderr, "spk-plan: %s\n", spk_err_msg());
            return 1;
        }
        char pp2[32] = "-", tp2[32] = "-";
        if (p->pp2 > 0)
            snprintf(pp2, sizeof pp2, "%.2f", p->pp2);
        if (p->tp2 > 0)
            snprintf(tp2, sizeof tp2, "%s%.2f", p->tp2 == 252 ? "~" : "", p->tp2);
        printf("%-18s %-14s %5d | %9.1f %9.1f %6s | %9s %9s", p->preset, p->scenario, p->batch, a.tok_s, b.tok_s,
               a.tok_s > b.tok_s ? "PP" : "TP", pp2, tp2);
        if (p->pp2 > 0 && p->tp2 > 0)
            printf("  (published winner %s: %s)", p->pp2 > p->tp2 ? "PP" : "TP",
                   (p->pp2 > p->tp2) == (a.tok_s > b.tok_s) ? "agrees" : "DISAGREES");
        printf("\n");
    }

    /* The study's qualitative findings, batch by batch (balanced scenario). */
    static const int bs[] = {1, 2, 4, 8, 16, 32, 64, 128};
    const char *models[] = {"gpt-oss-120b", "gpt-oss-20b", "llama-3.1-8b", "mistral-small-24b"};
    printf("\nBalanced 1024/1024, predicted winner by batch (study: gpt-oss-120b TP only at batch 1, PP\n"
           "2.2x at 128; Llama-3.1-8B TP at most batch sizes):\n%-18s", "model");
    for (size_t k = 0; k < sizeof bs / sizeof bs[0]; k++)
        printf(" %12d", bs[k]);
    printf("\n");
    for (size_t m = 0; m < sizeof models / sizeof models[0]; m++) {
        spk_shape s;
        spk_shape_preset(models[m], &s);
        printf("%-18s", models[m]);
        for (size_t k = 0; k < sizeof bs / sizeof bs[0]; k++) {
            spk_cost a, b;
            spk_cost_scenario(&s, 2, 1, bs[k], 1024, 1024, hw, &a);
            spk_cost_scenario(&s, 1, 2, bs[k], 1024, 1024, hw, &b);
            printf("  %s %4.2fx", a.tok_s > b.tok_s ? "PP" : "TP",
                   a.tok_s > b.tok_s ? a.tok_s / b.tok_s : b.tok_s / a.tok_s);
        }
        printf("\n");
    }
    return compare_by_batch(hw);
}

/* gpt-oss-120b PP2 vs TP2 batch by batch beside what BENCHMARKS.md section 1 records of the study
 * for it: "TP won only at batch 1" and "PP=2 beat TP=2 by 2.20x at batch 128 (554.69 vs ~252 tok/s
 * balanced)"; so TP at batch 1 and PP at every larger batch it ran. Every verdict below is
 * computed from the predictions. */
static int compare_by_batch(const spk_hw *hw)
{
    static const int bs[] = {1, 2, 4, 8, 16, 32, 64, 128};
    enum { NB = (int)(sizeof bs / sizeof bs[0]) };
    const double pub_pp128 = 554.69, pub_tp128 = 252; /* balanced, batch 128 */
    spk_shape s;
    if (spk_shape_preset("gpt-oss-120b", &s)) {
        fprintf(stderr, "spk-plan: %s\n", spk_err_msg());
        return 1;
    }
    char pred[NB]; /* predicted winner per batch: 'P' or 'T' */
    double ratio[NB];
    printf("\ngpt-oss-120b on two Sparks, balanced 1024/1024, output tok/s by batch (predicted vs study;\n"
           "EP2 = TP2 with the experts split whole over the two ranks; not in the verdicts):\n");
    printf("%5s %10s %10s %10s | %-6s %6s | %-9s | %s\n", "batch", "pred PP2", "pred TP2", "pred EP2", "winner",
           "ratio", "study", "verdict");
    for (int i = 0; i < NB; i++) {
        spk_cost a, b, e;
        if (spk_cost_scenario(&s, 2, 1, bs[i], 1024, 1024, hw, &a) ||
            spk_cost_scenario(&s, 1, 2, bs[i], 1024, 1024, hw, &b) ||
            spk_cost_scenario_ep(&s, 1, 2, 2, bs[i], 1024, 1024, hw, &e)) {
            fprintf(stderr, "spk-plan: %s\n", spk_err_msg());
            return 1;
        }
        pred[i] = a.tok_s > b.tok_s ? 'P' : 'T';
        ratio[i] = a.tok_s > b.tok_s ? a.tok_s / b.tok_s : b.tok_s / a.tok_s;
        char study = bs[i] == 1 ? 'T' : 'P';
        printf("%5d %10.1f %10.1f %10.1f | %-6s %5.2fx | %-9s | %s\n", bs[i], a.tok_s, b.tok_s, e.tok_s,
               pred[i] == 'P' ? "PP" : "TP", ratio[i], bs[i] == 128 ? "PP 2.20x" : study == 'P' ? "PP" : "TP",
               pred[i] == study ? "agrees" : "DISAGREES");
    }
    /* the claims, each judged from the rows above */
    int tp1 = pred[0] == 'T', pp_from64 = 1, tp_only1 = tp1, n_tp_small = 0;
    char tp_list[64] = "", pp_list[64] = "";
    int nl = 0, np = 0;
    for (int i = 0; i < NB; i++) {
        if (bs[i] >= 64 && pred[i] != 'P')
            pp_from64 = 0;
        if (bs[i] > 1 && pred[i] == 'T') {
            tp_only1 = 0;
            n_tp_small++;
        }
        if (pred[i] == 'T')
            nl += snprintf(tp_list + nl, sizeof tp_list - (size_t)nl, "%s%d", nl ? "," : "", bs[i]);
        else
            np += snprintf(pp_list + np, sizeof pp_list - (size_t)np, "%s%d", np ? "," : "", bs[i]);
    }
    printf("predicted: TP ahead at batch {%s}, PP ahead at batch {%s}\n", tp_list, pp_list);
    printf("claim \"TP ahead at batch 1\": %s\n", tp1 ? "agrees" : "DISAGREES");
    printf("claim \"PP ahead from batch 64\": %s\n", pp_from64 ? "agrees" : "DISAGREES");
    printf("claim \"TP won only at batch 1\": %s", tp_only1 ? "agrees" : "DISAGREES");
    if (!tp_only1 && n_tp_small)
        printf(" (predicted TP also at %d larger batch size%s)", n_tp_small, n_tp_small > 1 ? "s" : "");
    printf("\n");
    printf("claim \"PP %.2fx TP at batch 128\": predicted %s %.2fx: direction %s\n", pub_pp128 / pub_tp128,
           pred[NB - 1] == 'P' ? "PP" : "TP", ratio[NB - 1], pred[NB - 1] == 'P' ? "agrees" : "DISAGREES");
    return 0;
}

int main(int argc, char **argv)
{
    const char *preset = NULL, *model = NULL;
    int world = 2, context = SPK_COST_DEFAULT_CONTEXT, isl = 0, osl = 0, compare = 0, show = 0, no_ep = 0;
    int batches[32] = {1, 8, 32, 64, 128}, nb = 5;
    spk_hw hw;
    spk_hw_init(&hw);
    int dgx = 0;
    /* --dgx-spark first, so explicit figures override it wherever it appears */
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--dgx-spark") == 0)
            dgx = 1;
    if (dgx)
        spk_hw_dgx_spark(&hw);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define NEEDV()                                                                                   \
    do {                                                                                          \
        if (!v) {                                                                                 \
            fprintf(stderr, "spk-plan: %s needs a value\n", a);                                   \
            return 2;                                                                             \
        }                                                                                         \
        i++;                                                                                      \
    } while (0)
#define NUM(field)                                                                                \
    do {                                                                                          \
        NEEDV();                                                                                  \
        char *end;                                                                                \
        field = strtod(v, &end);                                                                  \
        if (end == v || *end || !(field >= 0)) {                                                  \
            fprintf(stderr, "spk-plan: %s: '%s' is not a non-negative number\n", a, v);           \
            return 2;                                                                             \
        }                                                                                         \
    } while (0)
        if (strcmp(a, "--preset") == 0) {
            NEEDV();
            preset = v;
        } else if (strcmp(a, "--model") == 0) {
            NEEDV();
            model = v;
        } else if (strcmp(a, "--world") == 0) {
            NEEDV();
            if (ex_parse_int("spk-plan", a, v, 1, 1 << 20, &world))
                return 2;
        } else if (strcmp(a, "--context") == 0) {
            NEEDV();
            if (ex_parse_int("spk-plan", a, v, 1, 1 << 30, &context))
                return 2;
        } else if (strcmp(a, "--batch") == 0) {
            NEEDV();
            nb = parse_list(v, batches, 32);
            if (nb <= 0) {
                fprintf(stderr, "spk-plan: --batch: '%s' is not a list of positive integers\n", v);
                return 2;
            }
        } else if (strcmp(a, "--scenario") == 0) {
            NEEDV();
            if (sscanf(v, "%d/%d", &isl, &osl) != 2 || isl < 1 || osl < 1) {
                fprintf(stderr, "spk-plan: --scenario: '%s' is not ISL/OSL\n", v);
                return 2;
            }
        } else if (strcmp(a, "--mem-bw") == 0) {
            NUM(hw.mem_bw_GBps);
        } else if (strcmp(a, "--tflops") == 0) {
            NUM(hw.tflops);
        } else if (strcmp(a, "--link-gbps") == 0) {
            NUM(hw.link_Gbps);
        } else if (strcmp(a, "--link-latency-us") == 0) {
            NUM(hw.link_latency_us);
        } else if (strcmp(a, "--allreduce-us") == 0) {
            NUM(hw.allreduce_latency_us);
        } else if (strcmp(a, "--allreduce-gbps") == 0) {
            NUM(hw.allreduce_busbw_GBps);
        } else if (strcmp(a, "--overhead-us") == 0) {
            NUM(hw.step_overhead_us);
        } else if (strcmp(a, "--act-bytes") == 0) {
            NUM(hw.act_bytes);
        } else if (strcmp(a, "--dgx-spark") == 0) {
        } else if (strcmp(a, "--show-plan") == 0) {
            show = 1;
        } else if (strcmp(a, "--no-ep") == 0) {
            no_ep = 1;
        } else if (strcmp(a, "--compare-published") == 0) {
            compare = 1;
        } else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "spk-plan: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        }
#undef NUM
#undef NEEDV
    }
    if (compare) {
        if (!dgx && hw.allreduce_busbw_GBps == 0)
            printf("note: without --dgx-spark the all-reduce runs at link rate (see docs/PLANNER.md)\n");
        return compare_published(&hw);
    }
    if (!preset == !model) {
        usage(stderr);
        return 2;
    }
    spk_shape s;
    if (preset) {
        if (spk_shape_preset(preset, &s) != SPK_OK) {
            fprintf(stderr, "spk-plan: %s\n", spk_err_msg());
            return 1;
        }
    } else {
        spk_gguf_file *f;
        spk_status st = spk_gguf_open(model, &f);
        if (st == SPK_OK) {
            spk_hparams hp;
            st = spk_hparams_read(f, &hp);
            if (st == SPK_OK)
                st = spk_shape_from_hparams(&hp, model, &s);
            spk_gguf_close(f);
        }
        if (st) {
            fprintf(stderr, "spk-plan: %s: %s\n", spk_status_str(st), spk_err_msg());
            return 1;
        }
    }
    if (world < 1 || world > SPK_PLAN_MAX_WORLD) {
        fprintf(stderr, "spk-plan: --world %d out of range [1, %d]\n", world, SPK_PLAN_MAX_WORLD);
        return 2;
    }
    print_shape(&s);
    print_hw(&hw);
    if (show)
        show_plans(&s, world, &hw, batches[0]);
    return table(&s, world, batches, nb, context, isl, osl, &hw, no_ep ? SPK_PLAN_NO_EP : 0u);
}

#endif /* SPK_PLAN_INTERNAL */
