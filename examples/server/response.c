/*
 * response.c: the JSON an OpenAI client expects: chat.completion / text_completion bodies,
 * their streamed chunks as SSE events, log-probs in the chat and the completions layouts,
 * usage, and the model list.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "server.h"

const char *spk_srv_finish_reason(int finish)
{
    switch (finish) {
    case SPK_FINISH_LENGTH: return "length";
    case SPK_FINISH_STOP: return "stop";
    case SPK_FINISH_CANCELLED: return "cancelled";
    case SPK_FINISH_ERROR: return "error";
    default: return NULL;
    }
}

/* A token's text: raw bytes into `raw` (*n), and a valid-UTF-8 copy (bad bytes as U+FFFD) into
 * `str` for JSON strings. */
static void token_text(const spk_srv *s, int32_t tok, char *raw, size_t cap, size_t *n, char *str, size_t scap)
{
    *n = 0;
    if (spk_detokenize(s->model, &tok, 1, 0, raw, cap, n) != SPK_OK)
        *n = 0;
    size_t o = 0;
    for (size_t i = 0; i < *n && o + 4 < scap;) {
        size_t k = 1;
        unsigned char c = (unsigned char)raw[i];
        if (c >= 0x80)
            k = (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
        if (k && i + k <= *n && spk_srv_utf8_valid(raw + i, k)) {
            memcpy(str + o, raw + i, k);
            o += k;
            i += k;
        } else {
            memcpy(str + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i++;
        }
    }
    str[o] = '\0';
}

static double lp_value(float lp)
{
    return isfinite(lp) ? (double)lp : -9999.0; /* JSON has no -inf */
}

static cJSON *bytes_array(const char *raw, size_t n)
{
    cJSON *a = cJSON_CreateArray();
    for (size_t i = 0; a && i < n; i++)
        cJSON_AddItemToArray(a, cJSON_CreateNumber((unsigned char)raw[i]));
    return a;
}

int spk_srv_logprobs_add(const spk_srv *s, const spk_srv_req *q, cJSON **lp, const spk_output *o, size_t text_offset)
{
    char raw[256], str[800];
    size_t n;
    if (!*lp) {
        *lp = cJSON_CreateObject();
        if (!*lp)
            return -1;
        if (q->chat) {
            cJSON_AddArrayToObject(*lp, "content");
        } else {
            cJSON_AddArrayToObject(*lp, "tokens");
            cJSON_AddArrayToObject(*lp, "token_logprobs");
            cJSON_AddArrayToObject(*lp, "top_logprobs");
            cJSON_AddArrayToObject(*lp, "text_offset");
        }
    }
    token_text(s, o->token, raw, sizeof raw, &n, str, sizeof str);
    if (q->chat) {
        cJSON *e = cJSON_CreateObject(), *top = cJSON_CreateArray();
        if (!e || !top) {
            cJSON_Delete(e);
            cJSON_Delete(top);
            return -1;
        }
        cJSON_AddStringToObject(e, "token", str);
        cJSON_AddNumberToObject(e, "logprob", lp_value(o->logprob));
        cJSON_AddItemToObject(e, "bytes", bytes_array(raw, n));
        for (int i = 0; i < o->n_top && i < q->top_logprobs; i++) {
            char r2[256], s2[800];
            size_t n2;
            token_text(s, o->top[i].token, r2, sizeof r2, &n2, s2, sizeof s2);
            cJSON *t = cJSON_CreateObject();
            cJSON_AddStringToObject(t, "token", s2);
            cJSON_AddNumberToObject(t, "logprob", lp_value(o->top[i].logprob));
            cJSON_AddItemToObject(t, "bytes", bytes_array(r2, n2));
            cJSON_AddItemToArray(top, t);
        }
        cJSON_AddItemToObject(e, "top_logprobs", top);
        cJSON_AddItemToArray(cJSON_GetObjectItemCaseSensitive(*lp, "content"), e);
        return 0;
    }
    cJSON_AddItemToArray(cJSON_GetObjectItemCaseSensitive(*lp, "tokens"), cJSON_CreateString(str));
    cJSON_AddItemToArray(cJSON_GetObjectItemCaseSensitive(*lp, "token_logprobs"),
                         isnan(o->logprob) ? cJSON_CreateNull() : cJSON_CreateNumber(lp_value(o->logprob)));
    cJSON *top = isnan(o->logprob) ? cJSON_CreateNull() : cJSON_CreateObject();
    for (int i = 0; top && !cJSON_IsNull(top) && i < o->n_top && i < q->top_logprobs; i++) {
        char r2[256], s2[800];
        size_t n2;
        token_text(s, o->top[i].token, r2, sizeof r2, &n2, s2, sizeof s2);
        if (!cJSON_GetObjectItemCaseSensitive(top, s2))
            cJSON_AddNumberToObject(top, s2, lp_value(o->top[i].logprob));
    }
    cJSON_AddItemToArray(cJSON_GetObjectItemCaseSensitive(*lp, "top_logprobs"), top);
    cJSON_AddItemToArray(cJSON_GetObjectItemCaseSensitive(*lp, "text_offset"), cJSON_CreateNumber((double)text_offset));
    return 0;
}

static cJSON *usage(const spk_srv_result *r)
{
    cJSON *u = cJSON_CreateObject();
    cJSON_AddNumberToObject(u, "prompt_tokens", r->n_prompt);
    cJSON_AddNumberToObject(u, "completion_tokens", r->n_generated);
    cJSON_AddNumberToObject(u, "total_tokens", r->n_prompt + r->n_generated);
    return u;
}

static cJSON *envelope(const spk_srv *s, const spk_srv_req *q, const spk_srv_result *r, const char *object)
{
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "id", r->id);
    cJSON_AddStringToObject(root, "object", object);
    cJSON_AddNumberToObject(root, "created", (double)r->created);
    cJSON_AddStringToObject(root, "model", s->model_name);
    cJSON_AddStringToObject(root, "system_fingerprint", "spk-" SPK_VERSION_STRING);
    (void)q;
    return root;
}

static char *print_and_free(cJSON *root)
{
    char *out = root ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    return out;
}

static void add_finish(cJSON *choice, int finish)
{
    const char *fr = spk_srv_finish_reason(finish);
    if (fr)
        cJSON_AddStringToObject(choice, "finish_reason", fr);
    else
        cJSON_AddNullToObject(choice, "finish_reason");
}

char *spk_srv_response_json(const spk_srv *s, const spk_srv_req *q, const spk_srv_result *r)
{
    cJSON *root = envelope(s, q, r, q->chat ? "chat.completion" : "text_completion");
    cJSON *choices = cJSON_AddArrayToObject(root, "choices"), *c = cJSON_CreateObject();
    cJSON_AddNumberToObject(c, "index", 0);
    if (q->chat) {
        cJSON *msg = cJSON_AddObjectToObject(c, "message");
        cJSON_AddStringToObject(msg, "role", "assistant");
        cJSON_AddStringToObject(msg, "content", r->text ? r->text : "");
    } else {
        cJSON_AddStringToObject(c, "text", r->text ? r->text : "");
    }
    if (r->logprobs)
        cJSON_AddItemToObject(c, "logprobs", cJSON_Duplicate(r->logprobs, 1));
    else
        cJSON_AddNullToObject(c, "logprobs");
    add_finish(c, r->finish);
    cJSON_AddItemToArray(choices, c);
    cJSON_AddItemToObject(root, "usage", usage(r));
    return print_and_free(root);
}

/* "data: JSON\n\n" (malloc'd) from a JSON tree, which is freed. */
static char *sse(cJSON *root)
{
    char *j = print_and_free(root);
    if (!j)
        return NULL;
    char *out = NULL;
    if (asprintf(&out, "data: %s\n\n", j) < 0)
        out = NULL;
    free(j);
    return out;
}

char *spk_srv_chunk_sse(const spk_srv *s, const spk_srv_req *q, const spk_srv_result *r, const char *text,
                        size_t len, cJSON *logprobs, int finish, int first)
{
    cJSON *root = envelope(s, q, r, q->chat ? "chat.completion.chunk" : "text_completion");
    cJSON *choices = cJSON_AddArrayToObject(root, "choices"), *c = cJSON_CreateObject();
    char *piece = strndup(text ? text : "", len);
    cJSON_AddNumberToObject(c, "index", 0);
    if (q->chat) {
        cJSON *delta = cJSON_AddObjectToObject(c, "delta");
        if (first)
            cJSON_AddStringToObject(delta, "role", "assistant");
        if (first || len || finish == SPK_FINISH_NONE)
            cJSON_AddStringToObject(delta, "content", piece ? piece : "");
    } else {
        cJSON_AddStringToObject(c, "text", piece ? piece : "");
    }
    free(piece);
    if (logprobs)
        cJSON_AddItemToObject(c, "logprobs", logprobs);
    else
        cJSON_AddNullToObject(c, "logprobs");
    add_finish(c, finish);
    cJSON_AddItemToArray(choices, c);
    if (q->include_usage)
        cJSON_AddNullToObject(root, "usage");
    return sse(root);
}

char *spk_srv_usage_sse(const spk_srv *s, const spk_srv_req *q, const spk_srv_result *r)
{
    cJSON *root = envelope(s, q, r, q->chat ? "chat.completion.chunk" : "text_completion");
    cJSON_AddArrayToObject(root, "choices");
    cJSON_AddItemToObject(root, "usage", usage(r));
    return sse(root);
}

char *spk_srv_models_json(const spk_srv *s)
{
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "object", "list");
    cJSON *data = cJSON_AddArrayToObject(root, "data"), *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "id", s->model_name);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", (double)s->created);
    cJSON_AddStringToObject(m, "owned_by", "sparkinfer");
    cJSON *meta = cJSON_AddObjectToObject(m, "meta");
    cJSON_AddNumberToObject(meta, "n_ctx", s->n_ctx);
    cJSON_AddNumberToObject(meta, "n_vocab", s->n_vocab);
    cJSON_AddNumberToObject(meta, "pp", s->pp);
    cJSON_AddNumberToObject(meta, "tp", s->tp);
    cJSON_AddNumberToObject(meta, "world", s->world);
    cJSON_AddItemToArray(data, m);
    return print_and_free(root);
}
