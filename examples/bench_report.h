/*
 * spk-bench's output: the table on stdout, the JSON file (every run, the parameters, the
 * machine) and the SVG chart (bench_chart.h).
 */
#ifndef SPK_EXAMPLES_BENCH_REPORT_H
#define SPK_EXAMPLES_BENCH_REPORT_H

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include "bench_chart.h"
#include "bench_grid.h"
#include "bench_util.h"
#include "plan/plan.h"

static inline const char *status_name(int s) { return s == 0 ? "ok" : s == 1 ? "skipped" : "failed"; }

static inline void layout_label(const run *r, const layout *L, char *buf, size_t cap)
{
    if (!L->pp && r->status == 0 && r->pp > 1 && r->tp > 1)
        snprintf(buf, cap, "%s(pp%dtp%d)", L->name, r->pp, r->tp);
    else if (!L->pp && r->status == 0 && r->pp * r->tp > 1)
        snprintf(buf, cap, "%s(%s%d)", L->name, r->pp > 1 ? "pp" : "tp", r->pp > 1 ? r->pp : r->tp);
    else if (!L->pp && r->status == 0)
        snprintf(buf, cap, "%s(1)", L->name);
    else
        snprintf(buf, cap, "%s", L->name);
}

static inline int write_json(const char *path, const opts *o, const char *model_path, const char *model_name,
                      const spk_shape *s, uint64_t file_bytes, const run *runs, int n_runs)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "spk-bench: %s: %s\n", path, strerror(errno));
        return 1;
    }
    char cpu[256], date[64];
    cpu_model(cpu, sizeof cpu);
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", &tm);
    struct utsname u;
    int have_u = uname(&u) == 0;
    fprintf(f, "{\n  \"tool\": \"spk-bench\",\n  \"library_version\": ");
    json_str(f, spk_version_string());
    fprintf(f, ",\n  \"date\": ");
    json_str(f, date);
    fprintf(f, ",\n  \"machine\": {\"cpu\": ");
    json_str(f, cpu);
    fprintf(f, ", \"cpus_online\": %ld, \"mem_total_bytes\": %llu, \"kernel\": ", sysconf(_SC_NPROCESSORS_ONLN),
            (unsigned long long)meminfo_bytes("MemTotal"));
    json_str(f, have_u ? u.release : "");
    fprintf(f, ", \"arch\": ");
    json_str(f, have_u ? u.machine : "");
    fprintf(f, ", \"build_info\": ");
    json_str(f, spk_build_info());
    fprintf(f, ", \"shared\": true},\n  \"model\": {\"path\": ");
    json_str(f, model_path);
    fprintf(f, ", \"preset\": ");
    if (o->preset)
        json_str(f, o->preset);
    else
        fputs("null", f);
    fprintf(f, ", \"name\": ");
    json_str(f, model_name);
    fprintf(f, ", \"file_bytes\": %llu, \"n_layers\": %d, \"n_embd\": %d, \"n_heads\": %d, \"n_kv_heads\": %d, "
               "\"head_dim\": %d, \"n_ff\": %d, \"n_vocab\": %d},\n",
            (unsigned long long)file_bytes, s->n_layers, s->n_embd, s->n_heads, s->n_kv_heads, s->head_dim, s->n_ff,
            s->n_vocab);
    fprintf(f, "  \"params\": {\"seed\": %llu, \"scale\": ", (unsigned long long)o->seed);
    json_num(f, o->scale);
    fprintf(f, ", \"threads\": %d, \"reps\": %d, \"transport\": ", o->threads, o->reps);
    json_str(f, o->coordinator ? (o->transport ? o->transport : "auto") : "tcp");
    fprintf(f, ", \"cluster\": ");
    if (o->coordinator) {
        fprintf(f, "{\"coordinator\": ");
        json_str(f, o->coordinator);
        fprintf(f, ", \"world\": %d}", o->world);
    } else {
        fputs("\"local\"", f);
    }
    fprintf(f, ", \"sampling\": \"greedy, ignore_eos\", \"scenarios\": [");
    for (int i = 0; i < o->n_scen; i++)
        fprintf(f, "%s{\"name\": \"%s\", \"isl\": %d, \"osl\": %d}", i ? ", " : "", SCEN[o->scen[i]].name,
                SCEN[o->scen[i]].isl, SCEN[o->scen[i]].osl);
    fprintf(f, "], \"batches\": [");
    for (int i = 0; i < o->n_batch; i++)
        fprintf(f, "%s%d", i ? ", " : "", o->batch[i]);
    fprintf(f, "], \"layouts\": [");
    for (int i = 0; i < o->n_lay; i++) {
        fputs(i ? ", " : "", f);
        json_str(f, o->lay[i].name);
    }
    fprintf(f, "]},\n  \"runs\": [\n");
    for (int i = 0; i < n_runs; i++) {
        const run *r = &runs[i];
        const layout *L = &o->lay[r->lay];
        fprintf(f, "    {\"scenario\": \"%s\", \"isl\": %d, \"osl\": %d, \"batch\": %d, \"layout\": ",
                SCEN[r->scen].name, r->isl, r->osl, r->batch);
        json_str(f, L->name);
        fprintf(f, ", \"world\": %d, \"pp\": %d, \"tp\": %d, \"threads_per_rank\": %d, \"status\": \"%s\"", L->world,
                r->pp, r->tp,
                L->world > 1 && !o->coordinator ? (o->threads / L->world > 1 ? o->threads / L->world : 1) : o->threads,
                status_name(r->status));
        if (r->note[0]) {
            fprintf(f, ", \"note\": ");
            json_str(f, r->note);
        }
        if (r->status == 0) {
            fprintf(f, ", \"output_tokens\": %ld, \"wall_s\": ", r->out_tokens);
            json_num(f, r->wall_s);
            fprintf(f, ", \"output_tok_s\": ");
            json_num(f, r->tok_s);
            fprintf(f, ", \"ttft_ms\": ");
            json_num(f, r->ttft_ms);
            fprintf(f, ", \"tpot_ms\": ");
            json_num(f, r->tpot_ms);
            fprintf(f, ", \"rep_output_tok_s\": [");
            for (int k = 0; k < r->n_rep; k++) {
                fputs(k ? ", " : "", f);
                json_num(f, r->rep_tok_s[k]);
            }
            fputc(']', f);
        }
        fprintf(f, "}%s\n", i + 1 < n_runs ? "," : "");
    }
    fprintf(f, "  ]\n}\n");
    if (fclose(f)) {
        fprintf(stderr, "spk-bench: %s: %s\n", path, strerror(errno));
        return 1;
    }
    return 0;
}

static inline int write_chart(const char *path, const opts *o, const char *model_name, const run *runs, int n_runs)
{
    double *y = malloc(sizeof(double) * (size_t)(o->n_scen * o->n_lay * o->n_batch));
    const char *titles[N_SCEN], *names[MAX_LIST];
    char tbuf[N_SCEN][96], sub[512], title[256], cpu[256];
    if (!y)
        return 1;
    for (int i = 0; i < o->n_scen * o->n_lay * o->n_batch; i++)
        y[i] = NAN;
    for (int i = 0; i < n_runs; i++) {
        const run *r = &runs[i];
        int p = 0, b = 0;
        while (o->scen[p] != r->scen)
            p++;
        while (o->batch[b] != r->batch)
            b++;
        if (r->status == 0)
            y[((size_t)p * o->n_lay + r->lay) * o->n_batch + b] = r->tok_s;
    }
    for (int p = 0; p < o->n_scen; p++) {
        int s = o->scen[p], il = (int)lround(SCEN[s].isl * o->scale), ol = (int)lround(SCEN[s].osl * o->scale);
        snprintf(tbuf[p], sizeof tbuf[p], "%s (ISL %d / OSL %d)", SCEN[s].name, il < 1 ? 1 : il, ol < 1 ? 1 : ol);
        titles[p] = tbuf[p];
    }
    for (int l = 0; l < o->n_lay; l++)
        names[l] = strcmp(o->lay[l].name, "1") ? o->lay[l].name : "1 rank";
    cpu_model(cpu, sizeof cpu);
    snprintf(title, sizeof title, "spk-bench: output tokens/s, %s", model_name);
    if (o->coordinator)
        snprintf(sub, sizeof sub, "%d-rank cluster (%s transport), %d threads on rank 0 (%s), greedy, median of %d; %s",
                 o->world, o->transport ? o->transport : "auto", o->threads, cpu, o->reps, spk_version_string());
    else
        snprintf(sub, sizeof sub, "%s, %d threads in total, TCP between local ranks, greedy, median of %d; %s", cpu,
                 o->threads, o->reps, spk_version_string());
    bench_chart c = {title, sub, "output tok/s", "batch size", o->n_scen, titles, o->n_batch, o->batch,
                     o->n_lay, names, y};
    FILE *f = fopen(path, "w");
    int rc = !f || bench_chart_svg(f, &c) != 0;
    if (f && fclose(f))
        rc = 1;
    if (rc)
        fprintf(stderr, "spk-bench: %s: %s\n", path, f ? "write failed" : strerror(errno));
    free(y);
    return rc;
}
static inline int run_order(const void *a, const void *b)
{
    const run *x = a, *y = b;
    if (x->scen != y->scen)
        return x->scen - y->scen;
    if (x->batch != y->batch)
        return x->batch - y->batch;
    return x->lay - y->lay;
}

/* Sort the runs by scenario, batch, layout and print them. */
static inline void print_table(const opts *o, const char *model_name, run *runs, int n_runs)
{
    qsort(runs, (size_t)n_runs, sizeof *runs, run_order);
    printf("# spk-bench: %s, %d threads %s, median of %d rep(s); output tok/s = output tokens / "
           "(last token - submit)\n", model_name, o->threads, o->coordinator ? "on rank 0" : "in total", o->reps);
    printf("%-14s %6s %6s %6s %-12s %10s %10s %9s\n", "scenario", "ISL", "OSL", "batch", "layout", "tok/s",
           "TTFT ms", "TPOT ms");
    for (int k = 0; k < n_runs; k++) {
        const run *r = &runs[k];
        char lab[48];
        layout_label(r, &o->lay[r->lay], lab, sizeof lab);
        if (r->status == 0)
            printf("%-14s %6d %6d %6d %-12s %10.1f %10.1f %9.2f\n", SCEN[r->scen].name, r->isl, r->osl, r->batch,
                   lab, r->tok_s, r->ttft_ms, r->tpot_ms);
        else
            printf("%-14s %6d %6d %6d %-12s %10s %10s %9s  %s\n", SCEN[r->scen].name, r->isl, r->osl, r->batch, lab,
                   "-", "-", "-", r->note);
    }
    fflush(stdout);
}

#endif
