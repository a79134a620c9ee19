/*
 * generate.c: one HTTP generation request's life: submit it to the library with private
 * events, poll its own outputs (spk_poll_request), answer with one JSON body or an SSE stream,
 * cancel it when the client goes away, and count it in the metrics.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <math.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "server.h"

#define OUT_CAP 16
#define KEEPALIVE_NS 15000000000ull /* an SSE comment after this much silence */

typedef struct gen {
    spk_srv *s;
    spk_srv_req q;
    uint64_t id;
    int fd;                     /* the client's socket, watched for a hang-up */
    int done;                   /* the final output arrived (the id is forgotten by the library) */
    int counted;                /* the metrics have this request */
    spk_srv_result r;
    char message[256];          /* the final output's message on FINISH_ERROR */
    int error_status;           /* spk_status of a FINISH_ERROR or a failed poll */
    uint64_t t0_ns, first_ns, last_ns, last_sent_ns;
    int n_tok;                  /* generated-token outputs seen */
    size_t echo_off;            /* text offset of the next prompt token (echo logprobs) */
    spk_output *outs;           /* fetched, not yet consumed */
    size_t n_outs, at;
    /* streaming */
    char *pending;              /* SSE bytes not yet given to MHD */
    size_t plen, poff;
    int sent_first, sent_final, sent_done;
} gen;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* The client closed its end (or the socket failed). */
static int client_gone(int fd)
{
    if (fd < 0)
        return 0;
    struct pollfd p = {.fd = fd, .events = POLLRDHUP};
    return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL));
}

static int gone(const gen *g)
{
    return __atomic_load_n(&g->s->stopping, __ATOMIC_RELAXED) || client_gone(g->fd);
}

static int text_append(spk_srv_result *r, const char *t, size_t n)
{
    if (r->text_len + n + 1 > r->text_cap) {
        size_t cap = (r->text_len + n + 1) * 2 + 64;
        char *p = realloc(r->text, cap);
        if (!p)
            return -1;
        r->text = p;
        r->text_cap = cap;
    }
    memcpy(r->text + r->text_len, t, n);
    r->text_len += n;
    r->text[r->text_len] = '\0';
    return 0;
}

/* The request ended: metrics once. */
static void account(gen *g)
{
    if (g->counted)
        return;
    g->counted = 1;
    double ttft = g->first_ns ? (double)(g->first_ns - g->t0_ns) * 1e-9 : -1;
    double tpot = g->n_tok > 1 ? (double)(g->last_ns - g->first_ns) * 1e-9 / (g->n_tok - 1) : -1;
    spk_srv_metrics_finish(&g->s->metrics, g->r.finish, g->r.n_prompt, g->r.n_generated, ttft, tpot,
                           (double)(now_ns() - g->t0_ns) * 1e-9);
    spk_srv_metrics_in_flight(&g->s->metrics, -1);
}

/* Fetch outputs if none are buffered: wait up to timeout_ms. A failed poll ends the request. */
static void fetch(gen *g, int timeout_ms)
{
    if (g->at < g->n_outs || g->done)
        return;
    g->n_outs = g->at = 0;
    spk_output_init(&g->outs[0]);
    for (int i = 1; i < OUT_CAP; i++)
        g->outs[i] = g->outs[0];
    spk_status st = spk_poll_request(g->s->model, g->id, g->outs, OUT_CAP, &g->n_outs, timeout_ms);
    if (st != SPK_OK) {
        g->n_outs = 0;
        g->done = 1;
        g->r.finish = SPK_FINISH_ERROR;
        g->error_status = st;
        snprintf(g->message, sizeof g->message, "the engine failed: %s: %s", spk_status_str(st), spk_last_error());
        account(g);
    }
}

/* Take one output into the result; text and its log-probs go to the caller's sinks. Returns the
 * output's text (in o) that the client should see. */
static void absorb(gen *g, const spk_output *o, cJSON **lp)
{
    spk_srv_result *r = &g->r;
    r->n_prompt = o->n_prompt;
    if (o->n_generated > r->n_generated)
        r->n_generated = o->n_generated;
    int prompt_tok = o->token >= 0 && o->position < o->n_prompt;
    if (o->token >= 0 && !prompt_tok) {
        if (!g->first_ns)
            g->first_ns = o->time_ns;
        g->last_ns = o->time_ns;
        g->n_tok++;
    }
    if (lp && o->token >= 0 && g->q.logprobs && (!prompt_tok || g->q.echo)) {
        size_t off = prompt_tok ? g->echo_off : r->text_len;
        spk_srv_logprobs_add(g->s, &g->q, lp, o, off);
        if (prompt_tok) {
            char raw[256];
            size_t n = 0;
            if (spk_detokenize(g->s->model, &o->token, 1, 0, raw, sizeof raw, &n) == SPK_OK)
                g->echo_off += n;
        }
    }
    if (!prompt_tok && o->text_len)
        text_append(r, o->text, o->text_len);
    if (o->finish != SPK_FINISH_NONE) {
        g->done = 1;
        r->finish = o->finish;
        g->error_status = o->status;
        snprintf(g->message, sizeof g->message, "%s", o->message);
        account(g);
    }
}

/* Cancel (if still running) and drain the request until its final output, so the library
 * forgets it. */
static void finish_off(gen *g)
{
    if (!g->id || g->done)
        return;
    spk_cancel(g->s->model, g->id);
    for (int tries = 0; !g->done && tries < 600; tries++) {
        fetch(g, 100);
        while (g->at < g->n_outs)
            absorb(g, &g->outs[g->at++], NULL);
    }
    if (!g->done) { /* the engine never answered: count it anyway */
        g->r.finish = SPK_FINISH_CANCELLED;
        account(g);
    }
}

static void gen_free(gen *g)
{
    if (!g)
        return;
    finish_off(g);
    spk_srv_req_free(&g->q);
    free(g->r.text);
    cJSON_Delete(g->r.logprobs);
    free(g->outs);
    free(g->pending);
    free(g);
}

/* The HTTP error for a request that ended in error (or could not be submitted). */
static void error_for(spk_status st, const char *detail, spk_srv_err *e)
{
    switch (st) {
    case SPK_ERR_TOO_LONG:
        spk_srv_err_set(e, 400, "invalid_request_error", "context_length_exceeded", "messages", "%s",
                        detail[0] ? detail : "the prompt is longer than the context");
        break;
    case SPK_ERR_INVALID_ARG:
        spk_srv_err_set(e, 400, "invalid_request_error", NULL, NULL, "%s", detail[0] ? detail : "invalid request");
        break;
    case SPK_ERR_BUSY:
        spk_srv_err_set(e, 429, "rate_limit_error", "queue_full", NULL, "the request queue is full; retry later");
        break;
    case SPK_ERR_STATE:
        spk_srv_err_set(e, 503, "server_error", NULL, NULL, "the server is shutting down");
        break;
    default:
        spk_srv_err_set(e, 500, "server_error", NULL, NULL, "%s: %s", spk_status_str(st), detail);
        break;
    }
}

/* ---- streaming --------------------------------------------------------------------------- */

static int pend(gen *g, char *sse)
{
    if (!sse)
        return -1;
    size_t n = strlen(sse);
    char *p = realloc(g->pending, g->plen + n);
    if (!p) {
        free(sse);
        return -1;
    }
    memcpy(p + g->plen, sse, n);
    g->pending = p;
    g->plen += n;
    free(sse);
    return 0;
}

/* Turn buffered outputs into SSE bytes; waits (a bounded time) for more when none are buffered. */
static void produce(gen *g)
{
    spk_srv *s = g->s;
    if (!g->sent_first) {
        g->sent_first = 1;
        if (g->q.chat)
            pend(g, spk_srv_chunk_sse(s, &g->q, &g->r, "", 0, NULL, SPK_FINISH_NONE, 1));
        else if (g->q.echo)
            pend(g, spk_srv_chunk_sse(s, &g->q, &g->r, g->r.text, g->r.text_len, NULL, SPK_FINISH_NONE, 0));
        if (g->plen)
            return;
    }
    if (!g->done && g->at >= g->n_outs) {
        if (gone(g)) {
            finish_off(g); /* counted as cancelled; the stream ends below */
        } else {
            fetch(g, 500);
            if (g->at >= g->n_outs && !g->done) {
                if (now_ns() - g->last_sent_ns > KEEPALIVE_NS) {
                    pend(g, strdup(": keep-alive\n\n"));
                    g->last_sent_ns = now_ns();
                }
                return;
            }
        }
    }
    size_t start = g->r.text_len;
    cJSON *lp = NULL;
    while (g->at < g->n_outs)
        absorb(g, &g->outs[g->at++], &lp);
    if (g->r.text_len > start || lp)
        pend(g, spk_srv_chunk_sse(s, &g->q, &g->r, g->r.text + start, g->r.text_len - start, lp, SPK_FINISH_NONE,
                                  0));
    if (g->done && !g->sent_final) {
        g->sent_final = 1;
        if (g->r.finish == SPK_FINISH_ERROR) {
            spk_srv_err e;
            error_for((spk_status)g->error_status, g->message, &e);
            char *j = spk_srv_err_json(&e), *out = NULL;
            if (j && asprintf(&out, "data: %s\n\n", j) < 0)
                out = NULL;
            free(j);
            pend(g, out);
        } else if (g->r.finish != SPK_FINISH_CANCELLED) {
            pend(g, spk_srv_chunk_sse(s, &g->q, &g->r, "", 0, NULL, g->r.finish, 0));
            if (g->q.include_usage)
                pend(g, spk_srv_usage_sse(s, &g->q, &g->r));
        }
        pend(g, strdup("data: [DONE]\n\n"));
        g->sent_done = 1;
    }
    g->last_sent_ns = now_ns();
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    gen *g = cls;
    (void)pos;
    for (;;) {
        if (g->poff < g->plen) {
            size_t n = g->plen - g->poff < max ? g->plen - g->poff : max;
            memcpy(buf, g->pending + g->poff, n);
            g->poff += n;
            if (g->poff == g->plen)
                g->poff = g->plen = 0;
            return (ssize_t)n;
        }
        if (g->sent_done)
            return MHD_CONTENT_READER_END_OF_STREAM;
        if (g->r.finish == SPK_FINISH_CANCELLED && g->done && client_gone(g->fd))
            return MHD_CONTENT_READER_END_WITH_ERROR;
        produce(g);
    }
}

static void stream_free(void *cls)
{
    gen_free(cls);
}

/* ---- the request --------------------------------------------------------------------------- */

static enum MHD_Result reply_error(spk_srv *s, struct MHD_Connection *conn, gen *g)
{
    spk_srv_err e;
    error_for((spk_status)g->error_status, g->message, &e);
    gen_free(g);
    return spk_srv_reply_err(s, conn, &e);
}

enum MHD_Result spk_srv_generate(spk_srv *s, struct MHD_Connection *conn, spk_srv_req *q)
{
    gen *g = calloc(1, sizeof *g);
    spk_output *outs = calloc(OUT_CAP, sizeof *outs);
    if (!g || !outs) {
        free(g);
        free(outs);
        spk_srv_req_free(q);
        spk_srv_err e;
        spk_srv_err_set(&e, 500, "server_error", NULL, NULL, "out of memory");
        return spk_srv_reply_err(s, conn, &e);
    }
    g->s = s;
    g->q = *q;
    memset(q, 0, sizeof *q);
    g->outs = outs;
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    g->fd = ci ? ci->connect_fd : -1;
    g->r.created = (int64_t)time(NULL);

    spk_request rq;
    spk_request_init(&rq);
    if (g->q.text) {
        rq.text = g->q.text;
        rq.text_len = g->q.text_len;
    } else {
        rq.prompt = g->q.ids;
        rq.n_prompt = g->q.n_ids;
    }
    rq.max_tokens = g->q.max_tokens;
    rq.temperature = g->q.temperature;
    rq.top_k = g->q.top_k;
    rq.top_p = g->q.top_p;
    rq.min_p = g->q.min_p;
    rq.seed = g->q.seed;
    rq.presence_penalty = g->q.presence;
    rq.frequency_penalty = g->q.frequency;
    rq.repeat_penalty = g->q.repeat_penalty;
    rq.stop_strings = (const char *const *)g->q.stops;
    rq.n_stop_strings = g->q.n_stops;
    rq.logprobs = g->q.logprobs;
    rq.top_logprobs = g->q.top_logprobs;
    rq.ignore_eos = g->q.ignore_eos;
    rq.prompt_logprobs = g->q.echo && g->q.logprobs;
    rq.private_events = 1;
    g->t0_ns = now_ns();
    spk_status st = spk_submit(s->model, &rq, 1, &g->id);
    if (st != SPK_OK) {
        g->id = 0;
        g->error_status = st;
        snprintf(g->message, sizeof g->message, "%s", spk_last_error());
        return reply_error(s, conn, g);
    }
    spk_srv_metrics_in_flight(&s->metrics, 1);
    snprintf(g->r.id, sizeof g->r.id, "%s-%llx%04llx", g->q.chat ? "chatcmpl" : "cmpl",
             (unsigned long long)g->r.created, (unsigned long long)g->id);
    if (g->q.echo) {
        if (g->q.text) {
            text_append(&g->r, g->q.text, g->q.text_len);
        } else {
            size_t need = 0;
            spk_detokenize(s->model, g->q.ids, g->q.n_ids, 1, NULL, 0, &need);
            char *t = malloc(need + 1);
            if (t && spk_detokenize(s->model, g->q.ids, g->q.n_ids, 1, t, need + 1, &need) == SPK_OK)
                text_append(&g->r, t, need);
            free(t);
        }
    }

    /* Wait for the first outputs here, so a request that fails before its first token (context
     * overflow) gets an HTTP error instead of a stream. Non-streaming: wait for the end. */
    while (!g->done) {
        if (gone(g)) {
            finish_off(g);
            break;
        }
        fetch(g, 200);
        if (g->q.stream && g->at < g->n_outs) {
            /* a first output that is already the final error is answered as an HTTP error */
            if (!(g->outs[g->at].finish == SPK_FINISH_ERROR && g->outs[g->at].n_generated == 0))
                break;
        }
        while (g->at < g->n_outs)
            absorb(g, &g->outs[g->at++], &g->r.logprobs);
    }
    if (g->done && g->r.finish == SPK_FINISH_ERROR && (!g->q.stream || g->r.n_generated == 0))
        return reply_error(s, conn, g);
    if (g->done && g->r.finish == SPK_FINISH_CANCELLED && client_gone(g->fd)) {
        gen_free(g);
        spk_srv_metrics_status(&s->metrics, 499); /* nginx's "client closed request" */
        return MHD_NO;                            /* nobody to answer: close */
    }
    if (!g->q.stream) {
        char *body = spk_srv_response_json(s, &g->q, &g->r);
        gen_free(g);
        return spk_srv_reply(s, conn, 200, "application/json", body);
    }
    struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, stream_read, g, stream_free);
    if (!resp) {
        gen_free(g);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", "text/event-stream");
    MHD_add_response_header(resp, "Cache-Control", "no-cache");
    g->last_sent_ns = now_ns();
    spk_srv_metrics_status(&s->metrics, 200);
    enum MHD_Result ret = MHD_queue_response(conn, 200, resp);
    MHD_destroy_response(resp);
    return ret;
}
