/*
 * spk-server: an OpenAI-compatible HTTP server on libmicrohttpd and cJSON (docs/SERVER.md).
 * This header holds what the server's parts share: the server state, a parsed request, an
 * HTTP-level error, and the functions each file provides.
 */
#ifndef SPK_SERVER_H
#define SPK_SERVER_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include <microhttpd.h>
#include <sparkinfer/sparkinfer.h>

struct cJSON;

/* ---- metrics.c: Prometheus counters and histograms ------------------------------------ */

#define SPK_SRV_HIST_BUCKETS 14

typedef struct spk_srv_hist {
    uint64_t count[SPK_SRV_HIST_BUCKETS + 1]; /* per bucket, last = +Inf */
    double sum;
    uint64_t n;
} spk_srv_hist;

typedef struct spk_srv_metrics {
    pthread_mutex_t mu;
    uint64_t status_count[600];    /* HTTP responses by status code */
    uint64_t finish_count[5];      /* generation requests by spk_finish */
    uint64_t prompt_tokens, generated_tokens;
    uint64_t rejected_busy;
    int in_flight;                 /* generation requests between submit and their final output */
    spk_srv_hist ttft, tpot, e2e;
} spk_srv_metrics;

void spk_srv_metrics_init(spk_srv_metrics *m);
void spk_srv_metrics_destroy(spk_srv_metrics *m);
void spk_srv_metrics_status(spk_srv_metrics *m, unsigned status);
/* One generation request ended: finish reason, token counts, seconds to first token (< 0: no
 * token), seconds per output token after the first (< 0: fewer than 2 tokens), seconds total. */
void spk_srv_metrics_finish(spk_srv_metrics *m, int finish, int n_prompt, int n_gen, double ttft, double tpot,
                            double e2e);
void spk_srv_metrics_in_flight(spk_srv_metrics *m, int delta);
/* The Prometheus text exposition (malloc'd, NUL-terminated) or NULL. */
char *spk_srv_metrics_render(spk_srv_metrics *m, spk_model *model);

/* ---- the server state --------------------------------------------------------------- */

typedef struct spk_srv {
    spk_model *model;
    char model_name[256];       /* the id clients send as "model" */
    const char *model_path;
    int n_ctx, n_vocab;
    int pp, tp, world;
    int has_key;
    int no_think;               /* --no-think: chat requests render Qwen3's enable_thinking=false unless
                                 * the body's chat_template_kwargs.enable_thinking says otherwise */
    unsigned char key_hash[32]; /* BLAKE2b of the API key */
    size_t max_body;            /* bytes */
    int64_t created;            /* unix time the server started */
    int stopping;               /* set at shutdown (atomically): running requests are cancelled */
    spk_srv_metrics metrics;
} spk_srv;

/* ---- an error answered as OpenAI's JSON error shape ---------------------------------- */

typedef struct spk_srv_err {
    unsigned http;              /* 0: no error */
    const char *type;           /* "invalid_request_error", "server_error", ... */
    const char *code;           /* NULL or e.g. "model_not_found" */
    char param[64];             /* "" or the offending field */
    char message[512];
} spk_srv_err;

void spk_srv_err_set(spk_srv_err *e, unsigned http, const char *type, const char *code, const char *param,
                     const char *fmt, ...) __attribute__((format(printf, 6, 7)));
/* {"error":{"message":..,"type":..,"param":..,"code":..}} (malloc'd) or NULL. */
char *spk_srv_err_json(const spk_srv_err *e);

/* ---- request.c: a validated OpenAI request -------------------------------------------- */

typedef struct spk_srv_req {
    int chat;                   /* /v1/chat/completions (else /v1/completions) */
    int stream, include_usage;
    int logprobs, top_logprobs, echo;
    char *text;                 /* prompt text (owned), or NULL with ids */
    size_t text_len;
    int32_t *ids;               /* token prompt (owned) */
    size_t n_ids;
    char *stops[SPK_MAX_STOP_STRINGS];
    size_t n_stops;
    int max_tokens;
    float temperature, top_p, min_p, presence, frequency, repeat_penalty;
    int top_k;
    int ignore_eos;             /* extension (as llama-server): do not stop at end-of-generation */
    uint64_t seed;
} spk_srv_req;

/* Parse and validate a request body (already checked to be UTF-8) into *out. On failure fills
 * *err (400/404) and returns -1; *out is then freed. */
int spk_srv_req_parse(const spk_srv *s, int chat, const char *body, size_t len, spk_srv_req *out,
                      spk_srv_err *err);
void spk_srv_req_free(spk_srv_req *r);
/* 1 if buf[0..len) is well-formed UTF-8 (no overlongs, surrogates or bytes past U+10FFFF). */
int spk_srv_utf8_valid(const char *buf, size_t len);

/* ---- response.c: OpenAI JSON bodies ------------------------------------------------------ */

/* The parts of a finished (or streaming) completion a response needs. */
typedef struct spk_srv_result {
    char id[48];                /* "chatcmpl-..." / "cmpl-..." */
    int64_t created;
    char *text;                 /* generated text so far (owned, NUL-terminated) */
    size_t text_len, text_cap;
    int finish;                 /* spk_finish */
    int n_prompt, n_generated;
    struct cJSON *logprobs;     /* the choice's logprobs object being built, or NULL */
} spk_srv_result;

const char *spk_srv_finish_reason(int finish);
/* Append an output's token log-probs to *lp (created on first use) in the chat or completions
 * layout; text_offset: byte offset of the token's text in the output. Returns -1 on no memory. */
int spk_srv_logprobs_add(const spk_srv *s, const spk_srv_req *q, struct cJSON **lp, const spk_output *o,
                         size_t text_offset);
/* The whole non-streaming response (malloc'd) or NULL. */
char *spk_srv_response_json(const spk_srv *s, const spk_srv_req *q, const spk_srv_result *r);
/* One SSE event "data: {...}\n\n" for a streamed piece: text (may be empty), logprobs of this
 * piece (taken, may be NULL), finish (NONE while streaming), first (the chat role chunk).
 * malloc'd or NULL. */
char *spk_srv_chunk_sse(const spk_srv *s, const spk_srv_req *q, const spk_srv_result *r, const char *text,
                        size_t len, struct cJSON *logprobs, int finish, int first);
/* The final usage chunk (stream_options.include_usage). */
char *spk_srv_usage_sse(const spk_srv *s, const spk_srv_req *q, const spk_srv_result *r);
/* GET /v1/models */
char *spk_srv_models_json(const spk_srv *s);

/* ---- generate.c: run a request and answer it ------------------------------------------- */

/* Submit q (ownership moves to the generation) and queue the HTTP response for it on conn:
 * the whole JSON answer, or an SSE stream. Returns the MHD result. */
enum MHD_Result spk_srv_generate(spk_srv *s, struct MHD_Connection *conn, spk_srv_req *q);

/* ---- http.c ------------------------------------------------------------------------------ */

/* Queue a response with `status` and a malloc'd body (taken; NULL: a 500); counts it in the
 * metrics. spk_srv_reply_err adds Retry-After to a 429 and WWW-Authenticate to a 401. */
enum MHD_Result spk_srv_reply(spk_srv *s, struct MHD_Connection *conn, unsigned status, const char *ctype, char *body);
enum MHD_Result spk_srv_reply_err(spk_srv *s, struct MHD_Connection *conn, const spk_srv_err *e);
/* Start the daemon on host:port (port 0: any); *bound receives the port. NULL on failure. */
struct MHD_Daemon *spk_srv_http_start(spk_srv *s, const char *host, int port, int max_conns, int timeout_s,
                                      int *bound);

#endif
