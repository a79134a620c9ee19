/*
 * spk-generate: generate a continuation of a prompt with the default (or a given) model.
 *
 *   spk-generate [--model PATH] --prompt TEXT [--max-tokens N] [--temperature T] [--top-k K]
 *                [--top-p P] [--seed S] [--chat [--no-think]] [--print-ids] [--threads N] [--ignore-eos]
 *                [--pp P|auto] [--tp T|auto] [--ep N] [--coordinator HOST:PORT] [--transport T] [--verbose]
 *
 * With --pp/--tp and no --coordinator, the P*T-1 extra ranks are started here as local
 * spk-worker processes on loopback (each with --threads threads). With --coordinator, this is
 * rank 0 of a cluster whose workers were started elsewhere with spk-worker. --ep N (a MoE model)
 * splits the experts whole over the N ranks of each TP group (--tp defaults to N then).
 * Prints the continuation on stdout as it is generated (with --print-ids, then the generated
 * token ids on one line), and prefill / decode speed on stderr.
 */
#include <stdint.h>
#include <string.h>

#include "common.h"
#include "launch.h"

#define P "spk-generate"

static void usage(FILE *f)
{
    fprintf(f, "usage: spk-generate [--model PATH] --prompt TEXT [--max-tokens N] [--temperature T]\n"
                    "                    [--top-k K] [--top-p P] [--seed S] [--chat [--no-think]] [--print-ids]\n"
                    "                    [--threads N] [--ignore-eos] [--pp P|auto] [--tp T|auto] [--ep N]\n"
                    "                    [--backend cpu|cuda|auto] [--device N]\n"
                    "                    [--coordinator HOST:PORT] [--transport T] [--verbose]\n"
                    "--no-think (with --chat): Qwen3's enable_thinking=false (an empty <think> block opens the\n"
                    "reply); other templates ignore it.\n");
}

int main(int argc, char **argv)
{
    const char *model_path = ex_default_model(), *prompt = NULL;
    int max_tokens = 128, chat = 0, print_ids = 0, threads = 0, ignore_eos = 0, top_k = 40, backend = SPK_BACKEND_CPU, device = 0;
    int pp = 1, tp = 1, world = 0, verbose = 0, ep = 0, tp_set = 0, no_think = 0;
    const char *coordinator = NULL, *transport = NULL;
    float temperature = 0.0f, top_p = 0.95f;
    uint64_t seed = 42;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--chat")) chat = 1;
        else if (!strcmp(a, "--no-think")) no_think = 1;
        else if (!strcmp(a, "--print-ids")) print_ids = 1;
        else if (!strcmp(a, "--ignore-eos")) ignore_eos = 1;
        else if (!strcmp(a, "--verbose")) verbose = 1;
        else if (!strcmp(a, "--help") || !strcmp(a, "-h")) { usage(stdout); return 0; }
        else if (!v) { fprintf(stderr, P ": %s needs a value\n", a); usage(stderr); return 2; }
        else if (!strcmp(a, "--model")) { model_path = v; i++; }
        else if (!strcmp(a, "--prompt")) { prompt = v; i++; }
        else if (!strcmp(a, "--max-tokens")) { if (ex_parse_int(P, a, v, 1, 1 << 24, &max_tokens)) return 2; i++; }
        else if (!strcmp(a, "--temperature")) { if (ex_parse_float(P, a, v, 0, 100, &temperature)) return 2; i++; }
        else if (!strcmp(a, "--top-k")) { if (ex_parse_int(P, a, v, 0, 1 << 24, &top_k)) return 2; i++; }
        else if (!strcmp(a, "--top-p")) { if (ex_parse_float(P, a, v, 1e-6, 1, &top_p)) return 2; i++; }
        else if (!strcmp(a, "--seed")) { if (ex_parse_u64(P, a, v, &seed)) return 2; i++; }
        else if (!strcmp(a, "--threads")) { if (ex_parse_int(P, a, v, 0, 4096, &threads)) return 2; i++; }
        else if (!strcmp(a, "--backend")) { if (ex_parse_backend(P, a, v, &backend)) return 2; i++; }
        else if (!strcmp(a, "--device")) { if (ex_parse_int(P, a, v, 0, 1023, &device)) return 2; i++; }
        else if (!strcmp(a, "--pp")) { if (strcmp(v, "auto") && ex_parse_int(P, a, v, 1, 64, &pp)) return 2; if (!strcmp(v, "auto")) pp = 0; i++; }
        else if (!strcmp(a, "--tp")) { if (strcmp(v, "auto") && ex_parse_int(P, a, v, 1, 64, &tp)) return 2; if (!strcmp(v, "auto")) tp = 0; tp_set = 1; i++; }
        else if (!strcmp(a, "--ep")) { if (ex_parse_int(P, a, v, 1, 64, &ep)) return 2; i++; }
        else if (!strcmp(a, "--world")) { if (ex_parse_int(P, a, v, 1, 64, &world)) return 2; i++; }
        else if (!strcmp(a, "--coordinator")) { coordinator = v; i++; }
        else if (!strcmp(a, "--transport")) { transport = v; i++; }
        else { fprintf(stderr, "spk-generate: unknown option %s\n", a); usage(stderr); return 2; }
    }
    if (!prompt) { fprintf(stderr, P ": --prompt is required\n"); usage(stderr); return 2; }
    if (ep > 1 && !tp_set)
        tp = ep; /* experts are split over the ranks of a TP group */
    if (no_think && !chat) { fprintf(stderr, P ": --no-think applies to --chat only\n"); usage(stderr); return 2; }
    if (pp < 0 || tp < 0 || pp > 64 || tp > 64) { fprintf(stderr, "spk-generate: bad --pp/--tp\n"); return 2; }
    if (!world)
        world = (pp ? pp : 1) * (tp ? tp : 1);
    if ((!pp || !tp) && world == 1) {
        fprintf(stderr, "spk-generate: --pp/--tp auto need --world N (the number of ranks)\n");
        return 2;
    }
    if (verbose)
        spk_set_log_callback(NULL, NULL, SPK_LOG_INFO);

    spk_cluster *cl = ex_open_cluster(world, threads, coordinator, transport);
    if (!cl)
        return 1;
    spk_model_config mc;
    spk_model_config_init(&mc);
    mc.path = model_path;
    mc.max_seqs = 1;
    mc.backend = backend;
    mc.device = device;
    mc.pp = pp;
    mc.tp = tp;
    mc.ep = ep;
    spk_model *m = NULL;
    if (ex_fail(model_path, spk_model_load(cl, &mc, &m))) {
        spk_cluster_close(cl);
        ex_reap_workers(5000);
        return 1;
    }
    int rc = 1;
    char *text = NULL;
    int32_t *ids = NULL, *gen = NULL;
    spk_detokenizer *dt = NULL;
    size_t len = strlen(prompt), n = 0;
    if (chat) {
        spk_chat_message msg = {"user", prompt};
        spk_chat_options o;
        spk_chat_options_init(&o);
        o.enable_thinking = !no_think;
        size_t need = 0;
        spk_status st = spk_chat_apply_opts(m, &msg, 1, &o, NULL, 0, &need);
        if (st != SPK_OK && st != SPK_ERR_TOO_LONG) { ex_fail("chat template", st); goto out; }
        text = malloc(need + 1);
        if (!text || ex_fail("chat template", spk_chat_apply_opts(m, &msg, 1, &o, text, need + 1, &need)))
            goto out;
        prompt = text;
        len = need;
    }
    size_t cap = len + 16;
    ids = malloc(cap * sizeof *ids);
    gen = malloc((size_t)(max_tokens > 0 ? max_tokens : 1) * sizeof *gen);
    if (!ids || !gen || ex_fail("tokenize", spk_tokenize(m, prompt, len, 1, chat, ids, cap, &n)))
        goto out;
    if (n == 0) { fprintf(stderr, "spk-generate: the prompt has no tokens\n"); goto out; }
    spk_request r;
    spk_request_init(&r);
    r.prompt = ids;
    r.n_prompt = n;
    r.max_tokens = max_tokens;
    r.temperature = temperature;
    r.top_k = top_k;
    r.top_p = top_p;
    r.seed = seed;
    r.ignore_eos = ignore_eos;
    uint64_t id;
    double t0 = ex_now(), t_first = 0;
    if (ex_fail("submit", spk_submit(m, &r, 1, &id)) || ex_fail("detokenizer", spk_detokenizer_new(m, 1, &dt)))
        goto out;
    int n_gen = 0, done = 0;
    char piece[1024];
    while (!done) {
        spk_event ev[64];
        size_t ne = 0;
        if (ex_fail("poll", spk_poll(m, ev, 64, &ne, -1)))
            goto out;
        for (size_t i = 0; i < ne; i++) {
            if (ev[i].token >= 0) {
                if (n_gen == 0)
                    t_first = ex_now();
                gen[n_gen++] = ev[i].token;
                size_t pn = 0;
                if (spk_detokenizer_push(dt, ev[i].token, piece, sizeof piece, &pn) == SPK_OK)
                    fwrite(piece, 1, pn, stdout);
                fflush(stdout);
            }
            if (ev[i].finish != SPK_FINISH_NONE) {
                done = 1;
                if (ev[i].finish == SPK_FINISH_ERROR) {
                    fprintf(stderr, "\nspk-generate: request failed: %s\n", spk_status_str(ev[i].status));
                    goto out;
                }
            }
        }
    }
    double t1 = ex_now();
    size_t pn = 0;
    if (spk_detokenizer_push(dt, -1, piece, sizeof piece, &pn) == SPK_OK)
        fwrite(piece, 1, pn, stdout);
    printf("\n");
    if (print_ids) {
        for (int i = 0; i < n_gen; i++)
            printf("%s%d", i ? " " : "", gen[i]);
        printf("\n");
    }
    fflush(stdout);
    for (int r = 0; r < world; r++) {
        spk_rank_stats st = {.struct_size = sizeof st};
        if (spk_model_get_rank_stats(m, r, &st) == SPK_OK) {
            char ex[48] = "";
            if (st.expert_end > 0) /* a MoE model: the experts this rank runs */
                snprintf(ex, sizeof ex, ", experts %d-%d", st.expert_begin, st.expert_end - 1);
            fprintf(stderr, "rank %d: stage %d, tp %d, layers %d-%d%s, weights %.1f MiB, KV %.1f MiB, owned %.1f MiB, "
                    "resident %.1f MiB\n", r, st.stage, st.tp_rank, st.layer_begin, st.layer_end - 1, ex,
                    st.weight_bytes / 1048576.0, st.kv_cache_bytes / 1048576.0, st.owned_bytes / 1048576.0,
                    st.resident_bytes / 1048576.0);
        }
    }
    fprintf(stderr, "prefill: %zu tokens, %.1f tok/s; decode: %d tokens, %.1f tok/s\n", n,
            (double)n / (t_first - t0), n_gen - 1, n_gen > 1 ? (n_gen - 1) / (t1 - t_first) : 0.0);
    rc = 0;
out:
    spk_detokenizer_free(dt);
    free(text);
    free(ids);
    free(gen);
    spk_model_free(m);
    spk_cluster_close(cl);
    ex_reap_workers(5000);
    return rc;
}
