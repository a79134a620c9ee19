/*
 * spk-server: serve a model over an OpenAI-compatible HTTP API (docs/SERVER.md).
 *
 *   spk-server [--model PATH] [--host ADDR] [--port N] [--api-key KEY] [--model-name NAME]
 *              [--ctx N] [--max-seqs N] [--queue N] [--kv-cache-mb N] [--threads N]
 *              [--pp P|auto] [--tp T|auto] [--world N] [--coordinator HOST:PORT] [--transport T]
 *              [--max-connections N] [--max-body BYTES] [--timeout S] [--verbose]
 *
 * Cluster options as spk-generate: with --pp/--tp and no --coordinator the extra ranks are
 * local spk-worker processes; with --coordinator this is rank 0 of a cluster started elsewhere.
 * --port 0 binds a free port; the startup line on stdout names it. SIGINT/SIGTERM stop cleanly.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <libgen.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>

#include <sodium.h>

#include "../common.h"
#include "../launch.h"
#include "server.h"

#define PROG "spk-server"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: spk-server [--model PATH] [--host ADDR] [--port N] [--api-key KEY] [--model-name NAME]\n"
            "                  [--ctx N] [--max-seqs N] [--queue N] [--kv-cache-mb N] [--threads N]\n"
            "                  [--pp P|auto] [--tp T|auto] [--world N] [--coordinator HOST:PORT]\n"
            "                  [--transport T] [--max-connections N] [--max-body BYTES] [--timeout S]\n"
            "                  [--backend cpu|cuda|auto] [--device N] [--no-think] [--verbose]\n"
            "  --host ADDR          address to listen on (default 127.0.0.1)\n"
            "  --port N             TCP port (default 8080; 0: a free one, printed at startup)\n"
            "  --api-key KEY        require 'Authorization: Bearer KEY' (default: $SPK_API_KEY, else none)\n"
            "  --model-name NAME    the model id clients use (default: the file name without .gguf)\n"
            "  --ctx N              context per sequence (default: min(model's, 4096))\n"
            "  --max-seqs N         sequences generated together (default 8)\n"
            "  --queue N            requests queued beyond those; more get 429 (default 64)\n"
            "  --kv-cache-mb N      KV cache size (default: max-seqs full contexts)\n"
            "  --max-connections N  open HTTP connections (default 256)\n"
            "  --max-body BYTES     request body limit (default 8388608)\n"
            "  --timeout S          close a connection idle this long (default 60)\n"
            "  --no-think           chat requests render Qwen3's enable_thinking=false (an empty <think>\n"
            "                       block opens the reply) unless the body's\n"
            "                       chat_template_kwargs.enable_thinking says otherwise\n");
}

static volatile sig_atomic_t stop_signal;

static void on_stop(int sig)
{
    stop_signal = sig;
}

/* Library log lines while loading: the progress a user sees. */
static void load_log(spk_log_level level, const char *msg, void *user)
{
    (void)user;
    fprintf(stderr, "%s: %s%s\n", PROG, level >= SPK_LOG_WARN ? "warning: " : "", msg);
}

typedef struct loader {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
    const char *path;
} loader;

/* Prints an elapsed-time line every 2 s until the load finishes. */
static void *progress(void *arg)
{
    loader *l = arg;
    double t0 = ex_now();
    pthread_mutex_lock(&l->mu);
    while (!l->done) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 2;
        pthread_cond_timedwait(&l->cv, &l->mu, &ts);
        if (!l->done)
            fprintf(stderr, "%s: loading %s: %.0f s\n", PROG, l->path, ex_now() - t0);
    }
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

int main(int argc, char **argv)
{
    const char *model_path = ex_default_model(), *host = "127.0.0.1", *api_key = getenv("SPK_API_KEY");
    const char *coordinator = NULL, *transport = NULL, *model_name = NULL;
    int port = 8080, threads = 0, pp = 1, tp = 1, world = 0, n_ctx = 0, max_seqs = 8, queue = 64, kv_mb = 0, backend = SPK_BACKEND_CPU, device = 0;
    int max_conns = 256, max_body = 8 << 20, timeout_s = 60, verbose = 0, no_think = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { usage(stdout); return 0; }
        else if (!strcmp(a, "--verbose")) { verbose = 1; continue; }
        else if (!strcmp(a, "--no-think")) { no_think = 1; continue; }
        else if (!v) { fprintf(stderr, "%s: %s needs a value\n", PROG, a); usage(stderr); return 2; }
        else if (!strcmp(a, "--model")) model_path = v;
        else if (!strcmp(a, "--model-name")) model_name = v;
        else if (!strcmp(a, "--host")) host = v;
        else if (!strcmp(a, "--api-key")) api_key = v;
        else if (!strcmp(a, "--coordinator")) coordinator = v;
        else if (!strcmp(a, "--transport")) transport = v;
        else if (!strcmp(a, "--port")) bad = ex_parse_int(PROG, a, v, 0, 65535, &port);
        else if (!strcmp(a, "--threads")) bad = ex_parse_int(PROG, a, v, 0, 4096, &threads);
        else if (!strcmp(a, "--backend")) bad = ex_parse_backend(PROG, a, v, &backend);
        else if (!strcmp(a, "--device")) bad = ex_parse_int(PROG, a, v, 0, 1023, &device);
        else if (!strcmp(a, "--pp")) { if (strcmp(v, "auto")) bad = ex_parse_int(PROG, a, v, 1, 64, &pp); else pp = 0; }
        else if (!strcmp(a, "--tp")) { if (strcmp(v, "auto")) bad = ex_parse_int(PROG, a, v, 1, 64, &tp); else tp = 0; }
        else if (!strcmp(a, "--world")) bad = ex_parse_int(PROG, a, v, 1, 64, &world);
        else if (!strcmp(a, "--ctx")) bad = ex_parse_int(PROG, a, v, 0, 1 << 24, &n_ctx);
        else if (!strcmp(a, "--max-seqs")) bad = ex_parse_int(PROG, a, v, 1, 4096, &max_seqs);
        else if (!strcmp(a, "--queue")) bad = ex_parse_int(PROG, a, v, 1, 1 << 20, &queue);
        else if (!strcmp(a, "--kv-cache-mb")) bad = ex_parse_int(PROG, a, v, 0, 1 << 24, &kv_mb);
        else if (!strcmp(a, "--max-connections")) bad = ex_parse_int(PROG, a, v, 1, 65536, &max_conns);
        else if (!strcmp(a, "--max-body")) bad = ex_parse_int(PROG, a, v, 1024, 1 << 30, &max_body);
        else if (!strcmp(a, "--timeout")) bad = ex_parse_int(PROG, a, v, 1, 86400, &timeout_s);
        else { fprintf(stderr, "%s: unknown option %s\n", PROG, a); usage(stderr); return 2; }
        if (bad)
            return 2;
        i++;
    }
    if (!world)
        world = (pp ? pp : 1) * (tp ? tp : 1);
    if ((!pp || !tp) && world == 1) {
        fprintf(stderr, "%s: --pp/--tp auto need --world N (the number of ranks)\n", PROG);
        return 2;
    }
    if (api_key && !*api_key)
        api_key = NULL;
    if (sodium_init() < 0) {
        fprintf(stderr, "%s: libsodium failed to initialize\n", PROG);
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);

    static spk_srv srv;
    spk_srv_metrics_init(&srv.metrics);
    srv.model_path = model_path;
    srv.max_body = (size_t)max_body;
    srv.created = (int64_t)time(NULL);
    srv.no_think = no_think;
    if (api_key) {
        srv.has_key = 1;
        crypto_generichash(srv.key_hash, sizeof srv.key_hash, (const unsigned char *)api_key, strlen(api_key), NULL,
                           0);
    }
    if (model_name) {
        snprintf(srv.model_name, sizeof srv.model_name, "%s", model_name);
    } else {
        char tmp[4096];
        snprintf(tmp, sizeof tmp, "%s", model_path);
        snprintf(srv.model_name, sizeof srv.model_name, "%s", basename(tmp));
        size_t n = strlen(srv.model_name);
        if (n > 5 && !strcmp(srv.model_name + n - 5, ".gguf"))
            srv.model_name[n - 5] = '\0';
    }

    fprintf(stderr, "%s: loading %s on %d rank(s)\n", PROG, model_path, world);
    spk_set_log_callback(load_log, NULL, SPK_LOG_INFO);
    spk_cluster *cl = ex_open_cluster(world, threads, coordinator, transport);
    if (!cl)
        return 1;
    struct sigaction sa = {.sa_handler = on_stop};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    spk_model_config mc;
    spk_model_config_init(&mc);
    mc.path = model_path;
    mc.pp = pp;
    mc.tp = tp;
    mc.n_ctx = n_ctx;
    mc.max_seqs = max_seqs;
    mc.queue_capacity = queue;
    mc.kv_cache_bytes = (uint64_t)kv_mb << 20;
    mc.backend = backend;
    mc.device = device;
    loader ld = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, model_path};
    pthread_t prog;
    int have_prog = pthread_create(&prog, NULL, progress, &ld) == 0;
    double t0 = ex_now();
    spk_model *m = NULL;
    spk_status st = spk_model_load(cl, &mc, &m);
    pthread_mutex_lock(&ld.mu);
    ld.done = 1;
    pthread_cond_signal(&ld.cv);
    pthread_mutex_unlock(&ld.mu);
    if (have_prog)
        pthread_join(prog, NULL);
    spk_set_log_callback(verbose ? load_log : NULL, NULL, verbose ? SPK_LOG_INFO : SPK_LOG_WARN);
    if (ex_fail(model_path, st)) {
        spk_cluster_close(cl);
        ex_reap_workers(5000);
        return 1;
    }
    spk_model_info info = {.struct_size = sizeof info};
    spk_model_get_info(m, &info);
    srv.model = m;
    srv.n_ctx = info.n_ctx;
    srv.n_vocab = info.n_vocab;
    srv.world = spk_cluster_world_size(cl);
    srv.pp = srv.tp = 1;
    int max_stage = 0, max_tp = 0;
    for (int r = 0; r < srv.world; r++) {
        spk_rank_stats rs = {.struct_size = sizeof rs};
        if (spk_model_get_rank_stats(m, r, &rs) == SPK_OK) {
            max_stage = rs.stage > max_stage ? rs.stage : max_stage;
            max_tp = rs.tp_rank > max_tp ? rs.tp_rank : max_tp;
        }
    }
    srv.pp = max_stage + 1;
    srv.tp = max_tp + 1;

    int bound = 0, rc = 0;
    struct MHD_Daemon *d = spk_srv_http_start(&srv, host, port, max_conns, timeout_s, &bound);
    if (!d) {
        rc = 1;
    } else {
        printf("%s: listening on http://%s%s%s:%d, model %s (%s, %d layers, ctx %d) loaded in %.1f s, "
               "layout pp %d x tp %d on %d rank(s), max-seqs %d, queue %d%s\n",
               PROG, strchr(host, ':') ? "[" : "", host, strchr(host, ':') ? "]" : "", bound, srv.model_name,
               info.arch, info.n_layers, info.n_ctx, ex_now() - t0, srv.pp, srv.tp, srv.world, max_seqs, queue,
               srv.has_key ? ", API key required" : "");
        fflush(stdout);
        while (!stop_signal) {
            struct timespec ts = {0, 100000000L};
            nanosleep(&ts, NULL);
        }
        fprintf(stderr, "%s: signal %d: stopping\n", PROG, (int)stop_signal);
        __atomic_store_n(&srv.stopping, 1, __ATOMIC_RELAXED);
        MHD_stop_daemon(d);
    }
    spk_model_free(m);
    spk_cluster_close(cl);
    ex_reap_workers(5000);
    spk_srv_metrics_destroy(&srv.metrics);
    return rc;
}
