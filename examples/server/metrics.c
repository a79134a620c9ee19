/*
 * metrics.c: the server's counters and latency histograms, and GET /metrics in the Prometheus
 * text format (with the engine's queue depth, KV cache use and preemptions from spk_model_stats).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server.h"

/* Upper bounds in seconds, shared by the TTFT, TPOT and duration histograms. */
static const double bounds[SPK_SRV_HIST_BUCKETS] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                    0.25,  0.5,    1.0,   2.5,  10.0,  30.0, 120.0};

static const char *finish_names[5] = {"none", "length", "stop", "cancelled", "error"};

void spk_srv_metrics_init(spk_srv_metrics *m)
{
    memset(m, 0, sizeof *m);
    pthread_mutex_init(&m->mu, NULL);
}

void spk_srv_metrics_destroy(spk_srv_metrics *m)
{
    pthread_mutex_destroy(&m->mu);
}

static void hist_add(spk_srv_hist *h, double v)
{
    int b = 0;
    while (b < SPK_SRV_HIST_BUCKETS && v > bounds[b])
        b++;
    h->count[b]++;
    h->sum += v;
    h->n++;
}

void spk_srv_metrics_status(spk_srv_metrics *m, unsigned status)
{
    pthread_mutex_lock(&m->mu);
    m->status_count[status < 600 ? status : 599]++;
    if (status == 429)
        m->rejected_busy++;
    pthread_mutex_unlock(&m->mu);
}

void spk_srv_metrics_finish(spk_srv_metrics *m, int finish, int n_prompt, int n_gen, double ttft, double tpot,
                            double e2e)
{
    pthread_mutex_lock(&m->mu);
    m->finish_count[finish >= 0 && finish < 5 ? finish : 4]++;
    m->prompt_tokens += (uint64_t)(n_prompt > 0 ? n_prompt : 0);
    m->generated_tokens += (uint64_t)(n_gen > 0 ? n_gen : 0);
    if (ttft >= 0)
        hist_add(&m->ttft, ttft);
    if (tpot >= 0)
        hist_add(&m->tpot, tpot);
    hist_add(&m->e2e, e2e);
    pthread_mutex_unlock(&m->mu);
}

void spk_srv_metrics_in_flight(spk_srv_metrics *m, int delta)
{
    pthread_mutex_lock(&m->mu);
    m->in_flight += delta;
    pthread_mutex_unlock(&m->mu);
}

/* A growing text buffer; on allocation failure it stays failed and the render returns NULL. */
typedef struct buf {
    char *p;
    size_t len, cap;
    int failed;
} buf;

static void put(buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(buf *b, const char *fmt, ...)
{
    if (b->failed)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->failed = 1;
            return;
        }
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = (b->cap + (size_t)n + 1) * 2;
        char *q = realloc(b->p, cap);
        if (!q) {
            b->failed = 1;
            return;
        }
        b->p = q;
        b->cap = cap;
    }
}

static void put_hist(buf *b, const char *name, const char *help, const spk_srv_hist *h)
{
    put(b, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    uint64_t cum = 0;
    for (int i = 0; i < SPK_SRV_HIST_BUCKETS; i++) {
        cum += h->count[i];
        put(b, "%s_bucket{le=\"%g\"} %llu\n", name, bounds[i], (unsigned long long)cum);
    }
    cum += h->count[SPK_SRV_HIST_BUCKETS];
    put(b, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.6f\n%s_count %llu\n", name, (unsigned long long)cum, name, h->sum,
        name, (unsigned long long)h->n);
}

char *spk_srv_metrics_render(spk_srv_metrics *m, spk_model *model)
{
    buf b = {malloc(4096), 0, 4096, 0};
    if (!b.p)
        return NULL;
    b.p[0] = '\0';
    spk_model_stats st = {.struct_size = sizeof st};
    int have_stats = spk_model_get_stats(model, &st) == SPK_OK;

    pthread_mutex_lock(&m->mu);
    spk_srv_metrics c = *m; /* a consistent copy; the mutex field is not used from it */
    pthread_mutex_unlock(&m->mu);

    put(&b, "# HELP spk_server_requests_total HTTP responses by status code.\n"
            "# TYPE spk_server_requests_total counter\n");
    for (int s = 100; s < 600; s++)
        if (c.status_count[s])
            put(&b, "spk_server_requests_total{status=\"%d\"} %llu\n", s, (unsigned long long)c.status_count[s]);
    put(&b, "# HELP spk_server_generations_total Generation requests that ended, by finish reason.\n"
            "# TYPE spk_server_generations_total counter\n");
    for (int f = 1; f < 5; f++)
        put(&b, "spk_server_generations_total{finish=\"%s\"} %llu\n", finish_names[f],
            (unsigned long long)c.finish_count[f]);
    put(&b, "# HELP spk_server_prompt_tokens_total Prompt tokens of ended generation requests.\n"
            "# TYPE spk_server_prompt_tokens_total counter\nspk_server_prompt_tokens_total %llu\n",
        (unsigned long long)c.prompt_tokens);
    put(&b, "# HELP spk_server_generated_tokens_total Tokens generated for ended generation requests.\n"
            "# TYPE spk_server_generated_tokens_total counter\nspk_server_generated_tokens_total %llu\n",
        (unsigned long long)c.generated_tokens);
    put(&b, "# HELP spk_server_rejected_busy_total Requests refused with 429 (queue full).\n"
            "# TYPE spk_server_rejected_busy_total counter\nspk_server_rejected_busy_total %llu\n",
        (unsigned long long)c.rejected_busy);
    put(&b, "# HELP spk_server_requests_in_flight Generation requests submitted and not yet ended.\n"
            "# TYPE spk_server_requests_in_flight gauge\nspk_server_requests_in_flight %d\n", c.in_flight);
    put_hist(&b, "spk_server_time_to_first_token_seconds", "Time from submit to the first generated token.",
             &c.ttft);
    put_hist(&b, "spk_server_time_per_output_token_seconds",
             "Mean time per generated token after the first, per request.", &c.tpot);
    put_hist(&b, "spk_server_request_duration_seconds", "Time from submit to the final output.", &c.e2e);
    if (have_stats) {
        int used = st.kv_blocks_total - st.kv_blocks_free;
        put(&b, "# HELP spk_queue_depth Requests waiting for a sequence slot.\n"
                "# TYPE spk_queue_depth gauge\nspk_queue_depth %d\n", st.n_queued);
        put(&b, "# HELP spk_running_requests Requests holding a sequence slot.\n"
                "# TYPE spk_running_requests gauge\nspk_running_requests %d\n", st.n_running);
        put(&b, "# HELP spk_kv_cache_blocks KV cache blocks of %d positions.\n"
                "# TYPE spk_kv_cache_blocks gauge\nspk_kv_cache_blocks{state=\"used\"} %d\n"
                "spk_kv_cache_blocks{state=\"free\"} %d\n", st.kv_block_size, used, st.kv_blocks_free);
        put(&b, "# HELP spk_kv_cache_usage_ratio Fraction of KV cache blocks in use.\n"
                "# TYPE spk_kv_cache_usage_ratio gauge\nspk_kv_cache_usage_ratio %.6f\n",
            st.kv_blocks_total > 0 ? (double)used / st.kv_blocks_total : 0.0);
        put(&b, "# HELP spk_preemptions_total Sequences preempted for lack of KV blocks.\n"
                "# TYPE spk_preemptions_total counter\nspk_preemptions_total %llu\n",
            (unsigned long long)st.n_preempted);
        put(&b, "# HELP spk_engine_generated_tokens_total Tokens the engine generated since load.\n"
                "# TYPE spk_engine_generated_tokens_total counter\nspk_engine_generated_tokens_total %llu\n",
            (unsigned long long)st.n_generated);
    }
    if (b.failed) {
        free(b.p);
        return NULL;
    }
    return b.p;
}
