/*
 * http.c: the HTTP side on libmicrohttpd (one thread per connection, bounded): reading the body
 * within a size limit, the API key check, routing to the endpoints, and replies counted by
 * status in the metrics.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include <sodium.h>

#include "server.h"

/* Per-request state: the body read so far. */
typedef struct conn_ctx {
    char *body;
    size_t len, cap;
    int too_big;
    int answered; /* a reply was queued before the body was read */
} conn_ctx;

enum MHD_Result spk_srv_reply(spk_srv *s, struct MHD_Connection *conn, unsigned status, const char *ctype, char *body)
{
    static char oom[] = "{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\",\"param\":null,"
                        "\"code\":null}}";
    struct MHD_Response *r;
    if (body) {
        r = MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    } else {
        status = 500;
        ctype = "application/json";
        r = MHD_create_response_from_buffer(strlen(oom), oom, MHD_RESPMEM_PERSISTENT);
    }
    if (!r) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", ctype);
    spk_srv_metrics_status(&s->metrics, status);
    enum MHD_Result ret = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return ret;
}

enum MHD_Result spk_srv_reply_err(spk_srv *s, struct MHD_Connection *conn, const spk_srv_err *e)
{
    char *body = spk_srv_err_json(e);
    struct MHD_Response *r = body ? MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE) : NULL;
    if (!r) {
        free(body);
        return spk_srv_reply(s, conn, 500, "application/json", NULL);
    }
    MHD_add_response_header(r, "Content-Type", "application/json");
    if (e->http == 429)
        MHD_add_response_header(r, "Retry-After", "1");
    if (e->http == 401)
        MHD_add_response_header(r, "WWW-Authenticate", "Bearer");
    spk_srv_metrics_status(&s->metrics, e->http);
    enum MHD_Result ret = MHD_queue_response(conn, e->http, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result fail(spk_srv *s, struct MHD_Connection *conn, unsigned http, const char *code,
                            const char *param, const char *msg)
{
    spk_srv_err e;
    spk_srv_err_set(&e, http, http == 401 ? "authentication_error" : "invalid_request_error", code, param, "%s",
                    msg);
    return spk_srv_reply_err(s, conn, &e);
}

/* The API key check: constant time (hashes of equal length compared with sodium_memcmp). */
static int authorized(const spk_srv *s, struct MHD_Connection *conn)
{
    if (!s->has_key)
        return 1;
    const char *h = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7))
        return 0;
    h += 7;
    while (*h == ' ')
        h++;
    unsigned char hash[32];
    crypto_generichash(hash, sizeof hash, (const unsigned char *)h, strlen(h), NULL, 0);
    return sodium_memcmp(hash, s->key_hash, sizeof hash) == 0;
}

static int json_content_type(struct MHD_Connection *conn)
{
    const char *ct = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Type");
    if (!ct)
        return 1; /* absent: taken as JSON */
    while (*ct == ' ')
        ct++;
    size_t n = strlen("application/json");
    return !strncasecmp(ct, "application/json", n) && (ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ');
}

static enum MHD_Result handle_post(spk_srv *s, struct MHD_Connection *conn, int chat, conn_ctx *c)
{
    if (c->too_big) {
        char msg[128];
        snprintf(msg, sizeof msg, "the request body is larger than the limit of %zu bytes", s->max_body);
        return fail(s, conn, 413, "request_too_large", NULL, msg);
    }
    if (!json_content_type(conn))
        return fail(s, conn, 415, "unsupported_media_type", NULL, "Content-Type must be application/json");
    if (!spk_srv_utf8_valid(c->body ? c->body : "", c->len))
        return fail(s, conn, 400, NULL, NULL, "the request body is not valid UTF-8");
    spk_srv_req q;
    spk_srv_err e;
    if (spk_srv_req_parse(s, chat, c->body ? c->body : "", c->len, &q, &e))
        return spk_srv_reply_err(s, conn, &e);
    return spk_srv_generate(s, conn, &q);
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                               const char *version, const char *upload, size_t *upload_size, void **con_cls)
{
    spk_srv *s = cls;
    (void)version;
    conn_ctx *c = *con_cls;
    int post = !strcmp(method, "POST");
    if (!c) {
        c = calloc(1, sizeof *c);
        if (!c)
            return MHD_NO;
        *con_cls = c;
        if (post) {
            const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
            if (cl && strtoull(cl, NULL, 10) > s->max_body) {
                c->answered = 1; /* answered before the body: libmicrohttpd closes afterwards */
                c->too_big = 1;
                char msg[128];
                snprintf(msg, sizeof msg, "the request body (%s bytes) is larger than the limit of %zu bytes", cl,
                         s->max_body);
                return fail(s, conn, 413, "request_too_large", NULL, msg);
            }
        }
        return MHD_YES;
    }
    if (*upload_size) {
        size_t n = *upload_size;
        *upload_size = 0;
        if (c->answered || c->too_big)
            return MHD_YES;
        if (c->len + n > s->max_body) {
            c->too_big = 1;
            free(c->body);
            c->body = NULL;
            c->len = c->cap = 0;
            return MHD_YES;
        }
        if (c->len + n + 1 > c->cap) {
            size_t cap = (c->len + n + 1) * 2;
            if (cap > s->max_body + 1)
                cap = s->max_body + 1;
            char *p = realloc(c->body, cap);
            if (!p)
                return MHD_NO;
            c->body = p;
            c->cap = cap;
        }
        memcpy(c->body + c->len, upload, n);
        c->len += n;
        c->body[c->len] = '\0';
        return MHD_YES;
    }
    if (c->answered)
        return MHD_YES;

    int is_chat = !strcmp(url, "/v1/chat/completions"), is_cmpl = !strcmp(url, "/v1/completions");
    int is_models = !strcmp(url, "/v1/models");
    if (!strcmp(url, "/health")) {
        spk_model_stats st = {.struct_size = sizeof st};
        if (spk_model_get_stats(s->model, &st) != SPK_OK)
            return fail(s, conn, 503, NULL, NULL, "the engine is not serving");
        char *body = NULL;
        if (asprintf(&body, "{\"status\":\"ok\",\"queued\":%d,\"running\":%d}", st.n_queued, st.n_running) < 0)
            body = NULL;
        return spk_srv_reply(s, conn, 200, "application/json", body);
    }
    if (!strcmp(url, "/metrics"))
        return spk_srv_reply(s, conn, 200, "text/plain; version=0.0.4", spk_srv_metrics_render(&s->metrics, s->model));
    if (!is_chat && !is_cmpl && !is_models) {
        char msg[160];
        snprintf(msg, sizeof msg, "no endpoint %.100s", url);
        return fail(s, conn, 404, "not_found", NULL, msg);
    }
    if (!authorized(s, conn))
        return fail(s, conn, 401, "invalid_api_key", NULL, "Incorrect or missing API key (Authorization: Bearer KEY)");
    if (is_models) {
        if (strcmp(method, "GET"))
            return fail(s, conn, 405, "method_not_allowed", NULL, "use GET");
        return spk_srv_reply(s, conn, 200, "application/json", spk_srv_models_json(s));
    }
    if (!post)
        return fail(s, conn, 405, "method_not_allowed", NULL, "use POST");
    return handle_post(s, conn, is_chat, c);
}

static void completed(void *cls, struct MHD_Connection *conn, void **con_cls, enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)conn;
    (void)toe;
    conn_ctx *c = *con_cls;
    if (c) {
        free(c->body);
        free(c);
        *con_cls = NULL;
    }
}

struct MHD_Daemon *spk_srv_http_start(spk_srv *s, const char *host, int port, int max_conns, int timeout_s,
                                      int *bound)
{
    char port_s[16];
    snprintf(port_s, sizeof port_s, "%d", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *ai = NULL;
    int gai = getaddrinfo(host, port_s, &hints, &ai);
    if (gai) {
        fprintf(stderr, "spk-server: address %s: %s\n", host, gai_strerror(gai));
        return NULL;
    }
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD;
    if (ai->ai_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    struct MHD_Daemon *d =
        MHD_start_daemon(flags, 0, NULL, NULL, handler, s, MHD_OPTION_SOCK_ADDR, ai->ai_addr,
                         MHD_OPTION_CONNECTION_LIMIT, (unsigned)max_conns, MHD_OPTION_CONNECTION_TIMEOUT,
                         (unsigned)timeout_s, MHD_OPTION_NOTIFY_COMPLETED, completed, s,
                         MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)65536, MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!d) {
        fprintf(stderr, "spk-server: cannot listen on %s:%d (in use, or not an address of this host)\n", host, port);
        return NULL;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    *bound = di ? di->port : port;
    return d;
}
