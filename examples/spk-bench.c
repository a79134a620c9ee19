/*
 * spk-bench: the seed study's grid (BENCHMARKS.md section 1): scenarios x batch sizes x layouts,
 * output tokens/s over the whole run, time to first token and time per output token; a table on
 * stdout, all runs in JSON, and an SVG chart of tok/s against batch size per layout.
 *
 *   spk-bench --preset tiny --scale 0.03 --batch 1,4 --layouts 1,pp2,tp2 --json out.json --chart out.svg
 *   spk-bench --model SmolLM2-135M-Instruct.Q4_1.gguf --scale 0.0625 --batch 1,8,32,64
 *
 * A run: the cluster of the layout (one process, or local spk-worker ranks on loopback TCP with
 * the same total threads), the model loaded with n_ctx = ISL + OSL and max_seqs = batch, then
 * `batch` requests of ISL random prompt tokens (distinct per request, from --seed) submitted at
 * once, greedy with ignore_eos, each generating OSL tokens. output tok/s = all output tokens /
 * (last token - submit); TTFT = first token - submit (mean over requests); TPOT = mean gap
 * between a request's consecutive tokens (mean over requests). Synthetic presets are written once
 * to ${SPK_CACHE:-~/.cache/sparkinfer}/synth/<preset>-<seed>.gguf. It uses the library's internal
 * synthetic-model writer and GGUF reader, so it links the static library (SPK_INTERNAL_TOOLS).
 */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include "bench_report.h"
#include "common.h"
#include "launch.h"
#include "model/gguf.h"
#include "tools/synth.h"
#include "model/llama.h"
#include "plan/plan.h"


static void usage(FILE *f)
{
    fprintf(f,
            "usage: spk-bench [--model FILE.gguf|DIR | --preset NAME] [options]\n"
            "  --model PATH       GGUF file or Hugging Face model directory (default: the default\n"
            "                     model in the cache)\n"
            "  --preset NAME      synthetic model: tiny, tiny-tp4, smollm2-135m, llama-3.1-8b,\n"
            "                     mistral-small-24b, qwen3-8b, qwen3-30b-a3b, gpt-oss-20b (MXFP4\n"
            "                     experts), gpt-oss-120b, or any other spk-synth preset (written\n"
            "                     once to $SPK_CACHE/synth/)\n"
            "  --seed S           weights seed of a preset and prompt seed (default 0)\n"
            "  --scenarios LIST   balanced,prefill-heavy,decode-heavy (ISL/OSL 1024/1024,\n"
            "                     2048/128, 128/2048; default all)\n"
            "  --scale F          multiply ISL and OSL by F (default 1; lengths at least 1)\n"
            "  --batch LIST       concurrent requests (default 1,8,32,64,128; at most %d)\n"
            "  --layouts LIST     1, ppN, tpN, ppNtpM, epN (tpN with a MoE model's experts split whole over\n"
            "                     the N ranks), ppNepM, auto (the planner picks for 2 ranks), autoN\n"
            "                     (default 1,pp2,tp2,auto); extra ranks are local spk-worker processes\n"
            "  --threads N        total compute threads, split over the ranks (default: online CPUs)\n"
            "  --backend B        cpu (default), cuda or auto, on every rank; --device N: the GPU\n"
            "  --reps N           repetitions per run; the median tok/s is reported (default 1)\n"
            "  --json FILE        write every run, the parameters and the machine as JSON\n"
            "  --chart FILE       write an SVG chart of output tok/s against batch size\n"
            "  --coordinator HOST:PORT --world N\n"
            "                     run the multi-rank layouts on a real cluster: this process is rank 0 and\n"
            "                     listens there; start `spk-worker --coordinator HOST:PORT --rank R --world N`\n"
            "                     on each other node (same SPK_CLUSTER_KEY); every layout must use 1 or N\n"
            "                     ranks; --threads is then this rank's threads (workers take their own)\n"
            "  --transport T      with --coordinator: auto (default), tcp, nccl, verbs or a plugin .so;\n"
            "                     local ranks always use tcp over loopback\n",
            MAX_BATCH);
}

static int bad(const char *fmt, const char *a, const char *b)
{
    fprintf(stderr, "spk-bench: ");
    fprintf(stderr, fmt, a, b);
    fprintf(stderr, "\n(spk-bench --help for usage)\n");
    return 2;
}

static int parse_int(const char *s, long lo, long hi, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return -1;
    *out = (int)v;
    return 0;
}

/* "pp2", "tp2", "pp2tp2", "ep2", "pp2ep2", "1", "auto", "auto4" */
static int parse_layout(const char *s, layout *l)
{
    memset(l, 0, sizeof *l);
    if (strlen(s) >= sizeof l->name)
        return -1;
    snprintf(l->name, sizeof l->name, "%s", s);
    if (!strcmp(s, "1")) {
        l->pp = l->tp = l->world = 1;
        return 0;
    }
    if (!strncmp(s, "auto", 4)) {
        l->world = 2;
        return s[4] ? parse_int(s + 4, 1, EX_MAX_WORKERS, &l->world) : 0;
    }
    int pp = 1, tp = 1, n = 0;
    l->ep = 1;
    if ((sscanf(s, "pp%dep%d%n", &pp, &tp, &n) == 2 && !s[n]) ||
        (pp = 1, tp = 1, sscanf(s, "ep%d%n", &tp, &n) == 1 && !s[n])) {
        if (strchr(s, ' ') || strchr(s, '+') || strchr(s, '-') || pp < 1 || tp < 2 || pp > EX_MAX_WORKERS ||
            tp > EX_MAX_WORKERS || pp * tp > EX_MAX_WORKERS)
            return -1;
        l->pp = pp;
        l->tp = l->ep = tp;
        l->world = pp * tp;
        return 0;
    }
    pp = tp = 1;
    bool ok = (sscanf(s, "pp%dtp%d%n", &pp, &tp, &n) == 2 && !s[n]) ||
              (pp = 1, tp = 1, sscanf(s, "pp%d%n", &pp, &n) == 1 && !s[n]) ||
              (pp = 1, tp = 1, sscanf(s, "tp%d%n", &tp, &n) == 1 && !s[n]);
    if (!ok || strchr(s, ' ') || strchr(s, '+') || strchr(s, '-'))
        return -1;
    if (pp < 1 || tp < 1 || pp > EX_MAX_WORKERS || tp > EX_MAX_WORKERS || pp * tp > EX_MAX_WORKERS)
        return -1;
    l->pp = pp;
    l->tp = tp;
    l->world = pp * tp;
    return 0;
}

/* Split a comma list in place; calls f on each item. */
static int each_item(const char *opt, const char *list, int (*f)(opts *, const char *), opts *o)
{
    char buf[512];
    if (!*list || strlen(list) >= sizeof buf)
        return bad("%s: empty or too long list '%s'", opt, list);
    snprintf(buf, sizeof buf, "%s", list);
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save))
        if (f(o, t))
            return 2;
    return 0;
}

static int add_scen(opts *o, const char *t)
{
    for (int i = 0; i < N_SCEN; i++)
        if (!strcmp(t, SCEN[i].name)) {
            for (int j = 0; j < o->n_scen; j++)
                if (o->scen[j] == i)
                    return bad("--scenarios: '%s' given twice%s", t, "");
            o->scen[o->n_scen++] = i;
            return 0;
        }
    return bad("--scenarios: unknown scenario '%s' (balanced, prefill-heavy, decode-heavy)%s", t, "");
}

static int add_batch(opts *o, const char *t)
{
    int b;
    if (o->n_batch >= MAX_LIST)
        return bad("--batch: more than 16 sizes%s%s", "", "");
    if (parse_int(t, 1, MAX_BATCH, &b))
        return bad("--batch: '%s' is not a batch size in 1..4096%s", t, "");
    for (int j = 0; j < o->n_batch; j++)
        if (o->batch[j] == b)
            return bad("--batch: '%s' given twice%s", t, "");
    o->batch[o->n_batch++] = b;
    return 0;
}

static int add_layout(opts *o, const char *t)
{
    if (o->n_lay >= MAX_LIST)
        return bad("--layouts: more than 16 layouts%s%s", "", "");
    if (parse_layout(t, &o->lay[o->n_lay]))
        return bad("--layouts: '%s' is not a layout (1, ppN, tpN, ppNtpM, epN, ppNepM, auto, autoN; at most 64 "
                   "ranks)%s", t,
                   "");
    for (int j = 0; j < o->n_lay; j++)
        if (!strcmp(o->lay[j].name, t))
            return bad("--layouts: '%s' given twice%s", t, "");
    o->n_lay++;
    return 0;
}

static int cmp_int(const void *a, const void *b)
{
    return (*(const int *)a > *(const int *)b) - (*(const int *)a < *(const int *)b);
}

static int parse_args(int argc, char **argv, opts *o)
{
    memset(o, 0, sizeof *o);
    o->scale = 1;
    o->reps = 1;
    long nc = sysconf(_SC_NPROCESSORS_ONLN);
    o->threads = nc > 0 ? (int)nc : 1;
    o->backend = SPK_BACKEND_CPU;
    const char *scen = "balanced,prefill-heavy,decode-heavy", *batch = "1,8,32,64,128", *lays = "1,pp2,tp2,auto";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            exit(0);
        }
        if (a[0] != '-' || a[1] != '-')
            return bad("unexpected argument '%s'%s", a, "");
        if (i + 1 >= argc)
            return bad("%s needs a value%s", a, "");
        const char *v = argv[++i];
        if (!strcmp(a, "--model")) o->model = v;
        else if (!strcmp(a, "--preset")) o->preset = v;
        else if (!strcmp(a, "--json")) o->json = v;
        else if (!strcmp(a, "--chart")) o->chart = v;
        else if (!strcmp(a, "--scenarios")) scen = v;
        else if (!strcmp(a, "--batch")) batch = v;
        else if (!strcmp(a, "--layouts")) lays = v;
        else if (!strcmp(a, "--coordinator")) o->coordinator = v;
        else if (!strcmp(a, "--transport")) o->transport = v;
        else if (!strcmp(a, "--world")) {
            if (parse_int(v, 2, EX_MAX_WORKERS, &o->world))
                return bad("--world: '%s' is not a rank count in 2..64%s", v, "");
        }
        else if (!strcmp(a, "--seed")) {
            char *end;
            errno = 0;
            o->seed = strtoull(v, &end, 0);
            if (errno || end == v || *end || v[0] == '-')
                return bad("--seed: '%s' is not an unsigned integer%s", v, "");
        } else if (!strcmp(a, "--scale")) {
            char *end;
            o->scale = strtod(v, &end);
            if (end == v || *end || !(o->scale > 0) || o->scale > 64)
                return bad("--scale: '%s' is not a number in (0, 64]%s", v, "");
        } else if (!strcmp(a, "--threads")) {
            if (parse_int(v, 1, 1024, &o->threads))
                return bad("--threads: '%s' is not a thread count in 1..1024%s", v, "");
        } else if (!strcmp(a, "--backend")) {
            if (ex_parse_backend("spk-bench", a, v, &o->backend))
                return 2;
        } else if (!strcmp(a, "--device")) {
            if (parse_int(v, 0, 1023, &o->device))
                return bad("--device: '%s' is not a GPU ordinal in 0..1023%s", v, "");
        } else if (!strcmp(a, "--reps")) {
            if (parse_int(v, 1, MAX_REPS, &o->reps))
                return bad("--reps: '%s' is not a repetition count in 1..20%s", v, "");
        } else
            return bad("unknown option '%s'%s", a, "");
    }
    if (o->model && o->preset)
        return bad("give --model or --preset, not both%s%s", "", "");
    int rc;
    if ((rc = each_item("--scenarios", scen, add_scen, o)) || (rc = each_item("--batch", batch, add_batch, o)) ||
        (rc = each_item("--layouts", lays, add_layout, o)))
        return rc;
    qsort(o->batch, (size_t)o->n_batch, sizeof *o->batch, cmp_int);
    if (!o->coordinator != !o->world)
        return bad("--coordinator and --world go together%s%s", "", "");
    if (o->transport && !o->coordinator)
        return bad("--transport applies to a real cluster (--coordinator); local ranks use tcp%s%s", "", "");
    for (int i = 0; o->coordinator && i < o->n_lay; i++)
        if (o->lay[i].world != 1 && o->lay[i].world != o->world) {
            char w[16];
            snprintf(w, sizeof w, "%d", o->world);
            return bad("--layouts: '%s' does not use 1 rank or the cluster's %s ranks", o->lay[i].name, w);
        }
    return 0;
}

/* ---- model file --------------------------------------------------------------------------- */

/* The preset's file in the cache, written if absent; 0, or 1/2 with a message. */
static int preset_file(const char *name, uint64_t seed, char *path, size_t cap)
{
    spk_synth_params p;
    if (spk_synth_preset(name, &p) != SPK_OK) {
        fprintf(stderr, "spk-bench: --preset: %s\n", spk_last_error());
        return 2;
    }
    p.seed = seed;
    uint64_t size = 0;
    char h1[32], h2[32];
    if (ex_fail("spk-bench: preset size", spk_synth_file_size(&p, &size)))
        return 1;
    const char *cache = getenv("SPK_CACHE");
    char dir[3072];
    if (cache && *cache)
        snprintf(dir, sizeof dir, "%s/synth", cache);
    else
        snprintf(dir, sizeof dir, "%s/.cache/sparkinfer/synth", getenv("HOME") ? getenv("HOME") : ".");
    snprintf(path, cap, "%s/%s-%llu.gguf", dir, name, (unsigned long long)seed);
    uint64_t avail = meminfo_bytes("MemAvailable");
    if (avail && size > avail) {
        fprintf(stderr, "spk-bench: preset %s: the model is %s but only %s of memory is available; it would not "
                        "fit\n", name, human_bytes(h1, sizeof h1, size), human_bytes(h2, sizeof h2, avail));
        return 1;
    }
    struct stat sb;
    if (stat(path, &sb) == 0 && (uint64_t)sb.st_size == size)
        return 0;
    if (mkdirs(dir)) {
        fprintf(stderr, "spk-bench: cannot create %s: %s\n", dir, strerror(errno));
        return 1;
    }
    struct statvfs vs;
    if (statvfs(dir, &vs) == 0 && (uint64_t)vs.f_bavail * vs.f_frsize < size + (64u << 20)) {
        fprintf(stderr, "spk-bench: preset %s: the file is %s but %s has only %s free\n", name,
                human_bytes(h1, sizeof h1, size), dir, human_bytes(h2, sizeof h2, (uint64_t)vs.f_bavail * vs.f_frsize));
        return 1;
    }
    fprintf(stderr, "spk-bench: writing synthetic %s (seed %llu, %s) to %s\n", name, (unsigned long long)seed,
            human_bytes(h1, sizeof h1, size), path);
    return ex_fail("spk-bench: synth", spk_synth_write(path, &p)) ? 1 : 0;
}

/* ---- one run ------------------------------------------------------------------------------ */

/* A run with no new token for this long is abandoned (a prefill step of an 8B model on a few CPU
 * cores takes seconds, not minutes). */
#define STALL_S 600

typedef struct req_time {
    uint64_t id;
    int idx;
} req_time;

static int cmp_req(const void *a, const void *b)
{
    uint64_t x = ((const req_time *)a)->id, y = ((const req_time *)b)->id;
    return (x > y) - (x < y);
}

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* batch prompts of isl tokens in [0, n_vocab), distinct per request (same for every layout). */
static void make_prompts(int32_t *p, int batch, int isl, int n_vocab, uint64_t seed, int scen)
{
    for (int i = 0; i < batch; i++) {
        uint64_t s = seed * 0x100000001b3ull ^ ((uint64_t)scen << 32) ^ (uint64_t)i;
        for (int k = 0; k < isl; k++)
            p[(size_t)i * isl + k] = (int32_t)(splitmix(&s) % (uint64_t)n_vocab);
        /* short prompts can collide: bump the first token until this one differs from the others */
        for (int tries = 0; tries < n_vocab; tries++) {
            int dup = 0;
            for (int j = 0; j < i && !dup; j++)
                dup = !memcmp(p + (size_t)j * isl, p + (size_t)i * isl, (size_t)isl * sizeof *p);
            if (!dup)
                break;
            p[(size_t)i * isl] = (p[(size_t)i * isl] + 1) % n_vocab;
        }
    }
}

typedef struct progress {
    int i, n, tty;
    const char *what;
    double last;
} progress;

static void show(progress *pg, long done, long total, double elapsed, int final)
{
    double t = ex_now();
    if (!pg->tty || (!final && t - pg->last < 0.2))
        return;
    pg->last = t;
    fprintf(stderr, "\r[run %d/%d] %s: %ld/%ld tokens, %.1f s   ", pg->i, pg->n, pg->what, done, total, elapsed);
    fflush(stderr);
}

/* Submit `batch` requests and poll until all finish; fill the timing fields of one repetition.
 * Returns 0, or -1 with r->note set (and *fatal if the engine is gone). */
static int measure(spk_model *m, const int32_t *prompts, int batch, int isl, int osl, progress *pg, double *tok_s,
                   double *ttft_ms, double *tpot_ms, double *wall_s, long *n_tok, char *note, size_t note_cap,
                   int *fatal)
{
    spk_request *r = calloc((size_t)batch, sizeof *r);
    uint64_t *ids = calloc((size_t)batch, sizeof *ids);
    req_time *map = calloc((size_t)batch, sizeof *map);
    double *first = calloc((size_t)batch, sizeof *first), *prev = calloc((size_t)batch, sizeof *prev);
    int *cnt = calloc((size_t)batch, sizeof *cnt);
    spk_event ev[512];
    int rc = -1;
    if (!r || !ids || !map || !first || !prev || !cnt) {
        snprintf(note, note_cap, "out of memory");
        goto out;
    }
    for (int i = 0; i < batch; i++) {
        spk_request_init(&r[i]);
        r[i].prompt = prompts + (size_t)i * isl;
        r[i].n_prompt = (size_t)isl;
        r[i].max_tokens = osl;
        r[i].temperature = 0;
        r[i].ignore_eos = 1;
        r[i].seed = (uint64_t)i;
    }
    const long total = (long)batch * osl;
    long done_tok = 0;
    int done = 0;
    double t0 = ex_now(), tlast = t0;
    spk_status st = spk_submit(m, r, (size_t)batch, ids);
    if (st != SPK_OK) {
        snprintf(note, note_cap, "submit: %s: %s", spk_status_str(st), spk_last_error());
        goto out;
    }
    for (int i = 0; i < batch; i++)
        map[i] = (req_time){ids[i], i};
    qsort(map, (size_t)batch, sizeof *map, cmp_req);
    while (done < batch) {
        size_t ne = 0;
        if ((st = spk_poll(m, ev, sizeof ev / sizeof *ev, &ne, 200)) != SPK_OK) {
            snprintf(note, note_cap, "poll: %s: %s", spk_status_str(st), spk_last_error());
            *fatal = 1;
            goto out;
        }
        double t = ex_now();
        for (size_t k = 0; k < ne; k++) {
            req_time key = {ev[k].request_id, 0}, *hit = bsearch(&key, map, (size_t)batch, sizeof *map, cmp_req);
            if (!hit)
                continue; /* an event of an earlier run */
            int i = hit->idx;
            if (ev[k].token >= 0) { /* the engine's time stamp: a late poll must not merge tokens */
                double te = (double)ev[k].time_ns * 1e-9;
                if (cnt[i]++ == 0)
                    first[i] = te;
                prev[i] = te;
                done_tok++;
                tlast = te > tlast ? te : tlast;
            }
            if (ev[k].finish != SPK_FINISH_NONE) {
                done++;
                if (ev[k].finish != SPK_FINISH_LENGTH || cnt[i] != osl) {
                    snprintf(note, note_cap, "request %d ended with finish %d (%s) after %d of %d tokens", i,
                             ev[k].finish, spk_status_str((spk_status)ev[k].status), cnt[i], osl);
                    for (int j = 0; j < batch; j++)
                        spk_cancel(m, ids[j]);
                    goto out;
                }
            }
        }
        if (t - (done_tok ? tlast : t0) > STALL_S) { /* a wedged engine must not hang the whole grid */
            snprintf(note, note_cap, "no token for %d s (%ld of %ld tokens done)", STALL_S, done_tok, total);
            *fatal = 1;
            goto out;
        }
        show(pg, done_tok, total, t - t0, 0);
    }
    show(pg, done_tok, total, tlast - t0, 1);
    double ttft = 0, tpot = 0;
    int n_tpot = 0;
    for (int i = 0; i < batch; i++) {
        ttft += first[i] - t0;
        if (cnt[i] > 1) {
            tpot += (prev[i] - first[i]) / (cnt[i] - 1);
            n_tpot++;
        }
    }
    *wall_s = tlast - t0;
    *n_tok = done_tok;
    *tok_s = *wall_s > 0 ? (double)done_tok / *wall_s : 0;
    *ttft_ms = ttft / batch * 1e3;
    *tpot_ms = n_tpot ? tpot / n_tpot * 1e3 : NAN;
    rc = 0;
out:
    free(r);
    free(ids);
    free(map);
    free(first);
    free(prev);
    free(cnt);
    return rc;
}

static int cmp_dbl(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Estimated bytes a run needs beyond the weights: paged KV (f16 K and V, 16-token blocks) and
 * each rank's per-step buffers (512 tokens). */
static uint64_t run_bytes(const spk_shape *s, int batch, int n_ctx, int world)
{
    uint64_t blocks = (uint64_t)batch * (uint64_t)((n_ctx + 15) / 16);
    uint64_t kv = (uint64_t)s->n_layers * blocks * 16 * (uint64_t)s->n_kv_heads * (uint64_t)s->head_dim * 2 * 2;
    uint64_t step = 512ull * (uint64_t)(6 * s->n_embd + 2 * s->n_ff + s->n_vocab) * 4;
    return kv + step * (uint64_t)world;
}

/* Load, warm up, measure `reps` times, free. */
static void do_run(spk_cluster *cl, const opts *o, const char *path, const spk_shape *shape, uint64_t file_bytes,
                   run *r, progress *pg, int *fatal)
{
    const layout *L = &o->lay[r->lay];
    int n_ctx = r->isl + r->osl;
    uint64_t need = file_bytes + run_bytes(shape, r->batch, n_ctx, L->world), avail = meminfo_bytes("MemAvailable");
    if (avail && need > avail / 10 * 9) {
        r->status = 1;
        snprintf(r->note, sizeof r->note, "skipped: needs about %.2f GiB (weights %.2f + KV and buffers %.2f), "
                 "%.2f GiB available", gib(need), gib(file_bytes), gib(need - file_bytes), gib(avail));
        return;
    }
    spk_model_config mc;
    spk_model_config_init(&mc);
    mc.path = path;
    mc.pp = L->pp;
    mc.tp = L->tp;
    mc.ep = L->ep;
    mc.n_ctx = n_ctx;
    mc.max_seqs = r->batch;
    mc.backend = o->backend;
    mc.device = o->device;
    mc.queue_capacity = r->batch > 1024 ? r->batch : 0;
    spk_model *m = NULL;
    spk_status st = spk_model_load(cl, &mc, &m);
    if (st != SPK_OK) {
        r->status = 2;
        snprintf(r->note, sizeof r->note, "load: %s: %s", spk_status_str(st), spk_last_error());
        *fatal = st == SPK_ERR_PEER_LOST || st == SPK_ERR_TRANSPORT || st == SPK_ERR_TIMEOUT;
        return;
    }
    spk_model_info info = {.struct_size = sizeof info};
    spk_model_get_info(m, &info);
    r->pp = L->pp;
    r->tp = L->tp;
    if (!L->pp) { /* what the planner picked: the deepest stage and widest TP group over the ranks */
        r->pp = r->tp = 1;
        for (int k = 0; k < L->world; k++) {
            spk_rank_stats rs = {.struct_size = sizeof rs};
            if (spk_model_get_rank_stats(m, k, &rs) == SPK_OK) {
                r->pp = rs.stage + 1 > r->pp ? rs.stage + 1 : r->pp;
                r->tp = rs.tp_rank + 1 > r->tp ? rs.tp_rank + 1 : r->tp;
            }
        }
    }
    int32_t *prompts = malloc((size_t)r->batch * (size_t)r->isl * sizeof *prompts);
    if (!prompts) {
        r->status = 2;
        snprintf(r->note, sizeof r->note, "out of memory for %d prompts of %d tokens", r->batch, r->isl);
        spk_model_free(m);
        return;
    }
    make_prompts(prompts, r->batch, r->isl, info.n_vocab, o->seed, r->scen);
    /* warm-up: page the weights in and start every rank's threads */
    double d0, d1, d2, d3;
    long dn;
    progress quiet = {0};
    int wisl = r->isl < 4 ? r->isl : 4;
    if (measure(m, prompts, 1, wisl, 2, &quiet, &d0, &d1, &d2, &d3, &dn, r->note, sizeof r->note, fatal)) {
        r->status = 2;
        goto done;
    }
    double tok[MAX_REPS], ttft[MAX_REPS], tpot[MAX_REPS], wall[MAX_REPS];
    long ntok[MAX_REPS];
    for (int k = 0; k < o->reps; k++) {
        if (measure(m, prompts, r->batch, r->isl, r->osl, pg, &tok[k], &ttft[k], &tpot[k], &wall[k], &ntok[k],
                    r->note, sizeof r->note, fatal)) {
            r->status = 2;
            goto done;
        }
        r->rep_tok_s[k] = tok[k];
    }
    r->n_rep = o->reps;
    double sorted[MAX_REPS];
    memcpy(sorted, tok, sizeof(double) * (size_t)o->reps);
    qsort(sorted, (size_t)o->reps, sizeof *sorted, cmp_dbl);
    int med = 0;
    for (int k = 0; k < o->reps; k++)
        if (tok[k] == sorted[(o->reps - 1) / 2])
            med = k;
    r->tok_s = tok[med];
    r->ttft_ms = ttft[med];
    r->tpot_ms = tpot[med];
    r->wall_s = wall[med];
    r->out_tokens = ntok[med];
    r->status = 0;
done:
    free(prompts);
    spk_model_free(m);
}

/* ---- output ------------------------------------------------------------------------------- */

/* The ranks for layout L: one process, local spk-worker ranks, or the real cluster (opened once
 * and kept in *remote). NULL with r->note set if it did not open. */
static spk_cluster *open_cluster(const opts *o, const layout *L, spk_cluster **remote, int *remote_lost, run *r)
{
    spk_cluster *cl = NULL;
    spk_cluster_config cc;
    spk_cluster_config_init(&cc);
    if (L->world == 1) {
        cc.n_threads = o->threads;
        if (spk_cluster_open(&cc, &cl) != SPK_OK)
            cl = NULL;
    } else if (o->coordinator) {
        if (!*remote && !*remote_lost) {
            cc.rank = 0;
            cc.world_size = o->world;
            cc.coordinator = o->coordinator;
            cc.transport = o->transport ? o->transport : "auto";
            cc.n_threads = o->threads;
            fprintf(stderr, "spk-bench: waiting for %d worker(s) at %s\n", o->world - 1, o->coordinator);
            if (spk_cluster_open(&cc, remote) != SPK_OK) {
                *remote = NULL;
                *remote_lost = 1;
            }
        }
        cl = *remote;
    } else {
        cl = ex_launch_local(L->world, o->threads / L->world > 1 ? o->threads / L->world : 1, "tcp");
    }
    if (!cl)
        snprintf(r->note, sizeof r->note, "cluster of %d ranks did not open: %s", L->world,
                 *remote_lost && L->world > 1 && o->coordinator ? "lost earlier or never opened" : spk_last_error());
    return cl;
}

static void close_cluster(spk_cluster *cl, spk_cluster **remote)
{
    if (!cl)
        return;
    spk_cluster_close(cl);
    if (cl == *remote)
        *remote = NULL;
    else
        ex_reap_workers(5000);
}

/* Every layout x scenario x batch in that order (one cluster per layout); the number that failed. */
static int run_grid(const opts *o, const char *path, const spk_shape *shape, uint64_t file_bytes, run *runs,
                    int n_runs)
{
    progress pg = {.n = n_runs, .tty = isatty(2)};
    char what[128];
    int i = 0, failed = 0, remote_lost = 0;
    spk_cluster *remote = NULL;
    double t_start = ex_now();
    for (int l = 0; l < o->n_lay; l++) {
        const layout *L = &o->lay[l];
        spk_cluster *cl = NULL;
        for (int s = 0; s < o->n_scen; s++)
            for (int b = 0; b < o->n_batch; b++, i++) {
                run *r = &runs[i];
                r->lay = l;
                r->scen = o->scen[s];
                r->batch = o->batch[b];
                r->isl = (int)lround(SCEN[r->scen].isl * o->scale);
                r->osl = (int)lround(SCEN[r->scen].osl * o->scale);
                r->isl = r->isl < 1 ? 1 : r->isl;
                r->osl = r->osl < 1 ? 1 : r->osl;
                snprintf(what, sizeof what, "%s %d/%d, batch %d, %s", SCEN[r->scen].name, r->isl, r->osl, r->batch,
                         L->name);
                pg.i = i + 1;
                pg.what = what;
                pg.last = 0;
                int fatal = 0;
                if (!cl && !(cl = open_cluster(o, L, &remote, &remote_lost, r)))
                    r->status = 2; /* reopened for the next run if a run lost it */
                else
                    do_run(cl, o, path, shape, file_bytes, r, &pg, &fatal);
                failed += r->status == 2;
                if (pg.tty)
                    fprintf(stderr, "\r%100s\r", "");
                if (r->status)
                    fprintf(stderr, "[run %d/%d] %s: %s: %s (%.0f s elapsed)\n", i + 1, n_runs, what,
                            status_name(r->status), r->note, ex_now() - t_start);
                else
                    fprintf(stderr, "[run %d/%d] %s: %.1f output tok/s (%.0f s elapsed)\n", i + 1, n_runs, what,
                            r->tok_s, ex_now() - t_start);
                if (fatal) {
                    remote_lost |= cl == remote;
                    close_cluster(cl, &remote);
                    cl = NULL;
                }
            }
        if (cl != remote)
            close_cluster(cl, &remote);
    }
    close_cluster(remote, &remote);
    return failed;
}

int main(int argc, char **argv)
{
    opts o;
    int rc = parse_args(argc, argv, &o);
    if (rc)
        return rc;
    char path[4096];
    if (o.preset) {
        if ((rc = preset_file(o.preset, o.seed, path, sizeof path)))
            return rc;
    } else {
        snprintf(path, sizeof path, "%s", o.model ? o.model : ex_default_model());
    }
    struct stat sb;
    if (stat(path, &sb) != 0) {
        fprintf(stderr, "spk-bench: %s: %s\n", path, strerror(errno));
        return 1;
    }
    spk_gguf_file *gf = NULL;
    spk_shape shape;
    spk_hparams hp;
    if (ex_fail(path, spk_gguf_open(path, &gf)) || ex_fail(path, spk_hparams_read(gf, &hp)) ||
        ex_fail(path, spk_shape_from_hparams(&hp, path, &shape))) {
        spk_gguf_close(gf);
        return 1;
    }
    char model_name[160];
    spk_gguf_str gname;
    if (spk_gguf_find(gf, "general.name") && spk_gguf_get_str(gf, "general.name", &gname) == SPK_OK)
        snprintf(model_name, sizeof model_name, "%.*s", (int)(gname.len > 120 ? 120 : gname.len), gname.ptr);
    else
        snprintf(model_name, sizeof model_name, "%.150s", strrchr(path, '/') ? strrchr(path, '/') + 1 : path);
    spk_gguf_close(gf);
    spk_set_log_callback(NULL, NULL, SPK_LOG_ERROR);

    const int n_runs = o.n_lay * o.n_scen * o.n_batch;
    run *runs = calloc((size_t)n_runs, sizeof *runs);
    if (!runs)
        return 1;
    int failed = run_grid(&o, path, &shape, (uint64_t)sb.st_size, runs, n_runs);

    print_table(&o, model_name, runs, n_runs);
    rc = failed ? 1 : 0;
    if (o.json && write_json(o.json, &o, path, model_name, &shape, (uint64_t)sb.st_size, runs, n_runs))
        rc = 1;
    if (o.chart && write_chart(o.chart, &o, model_name, runs, n_runs))
        rc = 1;
    free(runs);
    return rc;
}
