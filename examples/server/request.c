/*
 * request.c: an OpenAI request body (chat or completions) parsed and validated into
 * spk_srv_req; every mistake is a 400 (404 for an unknown model) naming the field and value.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "server.h"

void spk_srv_err_set(spk_srv_err *e, unsigned http, const char *type, const char *code, const char *param,
                     const char *fmt, ...)
{
    e->http = http;
    e->type = type;
    e->code = code;
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
}

char *spk_srv_err_json(const spk_srv_err *e)
{
    cJSON *root = cJSON_CreateObject(), *o = cJSON_AddObjectToObject(root, "error");
    if (o) {
        cJSON_AddStringToObject(o, "message", e->message);
        cJSON_AddStringToObject(o, "type", e->type ? e->type : "invalid_request_error");
        if (e->param[0])
            cJSON_AddStringToObject(o, "param", e->param);
        else
            cJSON_AddNullToObject(o, "param");
        if (e->code)
            cJSON_AddStringToObject(o, "code", e->code);
        else
            cJSON_AddNullToObject(o, "code");
    }
    char *s = o ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    return s;
}

int spk_srv_utf8_valid(const char *buf, size_t len)
{
    const unsigned char *p = (const unsigned char *)buf, *end = p + len;
    while (p < end) {
        unsigned c = *p;
        if (c < 0x80) {
            p++;
            continue;
        }
        int n;
        unsigned cp, min;
        if ((c & 0xE0) == 0xC0) { n = 1; cp = c & 0x1F; min = 0x80; }
        else if ((c & 0xF0) == 0xE0) { n = 2; cp = c & 0x0F; min = 0x800; }
        else if ((c & 0xF8) == 0xF0) { n = 3; cp = c & 0x07; min = 0x10000; }
        else return 0;
        if (end - p <= n)
            return 0;
        for (int i = 1; i <= n; i++) {
            if ((p[i] & 0xC0) != 0x80)
                return 0;
            cp = (cp << 6) | (p[i] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        p += n + 1;
    }
    return 1;
}

void spk_srv_req_free(spk_srv_req *r)
{
    free(r->text);
    free(r->ids);
    for (size_t i = 0; i < r->n_stops; i++)
        free(r->stops[i]);
    memset(r, 0, sizeof *r);
}

/* A 400 naming `param`; returns -1. */
static int bad(spk_srv_err *err, const char *param, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int bad(spk_srv_err *err, const char *param, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    spk_srv_err_set(err, 400, "invalid_request_error", NULL, param, "%s", msg);
    return -1;
}
#define BAD(...) bad(err, __VA_ARGS__)

/* Optional number field in [lo, hi]; integer-only when `integer`. 0: absent or fine, -1: error. */
static int get_num(const cJSON *root, const char *name, double lo, double hi, int integer, double *out,
                   spk_srv_err *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, name);
    if (!v || cJSON_IsNull(v))
        return 0;
    if (!cJSON_IsNumber(v))
        return BAD(name, "'%s' must be a number", name);
    double d = v->valuedouble;
    if (!isfinite(d))
        return BAD(name, "'%s' must be a finite number", name);
    if (integer && d != floor(d))
        return BAD(name, "'%s' must be an integer, got %g", name, d);
    if (d < lo || d > hi)
        return BAD(name, "'%s' is %g; it must be in [%g, %g]", name, d, lo, hi);
    *out = d;
    return 0;
}

/* Optional boolean field. */
static int get_bool(const cJSON *root, const char *name, int *out, spk_srv_err *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, name);
    if (!v || cJSON_IsNull(v))
        return 0;
    if (!cJSON_IsBool(v))
        return BAD(name, "'%s' must be a boolean", name);
    *out = cJSON_IsTrue(v);
    return 0;
}

/* Append a string to a growing buffer. */
static int cat(char **s, size_t *len, size_t *cap, const char *add, size_t n)
{
    if (*len + n + 1 > *cap) {
        size_t c = (*len + n + 1) * 2;
        char *p = realloc(*s, c);
        if (!p)
            return -1;
        *s = p;
        *cap = c;
    }
    memcpy(*s + *len, add, n);
    *len += n;
    (*s)[*len] = '\0';
    return 0;
}

/* A message's content: a string, or an array of {"type":"text","text":...} parts (joined). */
static int message_content(const cJSON *msg, size_t i, char **out, spk_srv_err *err)
{
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(msg, "content");
    char param[64];
    snprintf(param, sizeof param, "messages[%zu].content", i);
    size_t len = 0, cap = 0;
    *out = NULL;
    if (cJSON_IsString(c)) {
        if (cat(out, &len, &cap, c->valuestring, strlen(c->valuestring)))
            return BAD(param, "out of memory");
        return 0;
    }
    if (cJSON_IsNull(c) || !c) {
        *out = strdup("");
        return *out ? 0 : BAD(param, "out of memory");
    }
    if (!cJSON_IsArray(c))
        return BAD(param, "'%s' must be a string or an array of text parts", param);
    const cJSON *part;
    cJSON_ArrayForEach(part, c)
    {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type");
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(part, "text");
        if (!cJSON_IsString(type) || strcmp(type->valuestring, "text") || !cJSON_IsString(text)) {
            free(*out);
            *out = NULL;
            return BAD(param, "'%s': only parts {\"type\": \"text\", \"text\": ...} are supported", param);
        }
        if (cat(out, &len, &cap, text->valuestring, strlen(text->valuestring))) {
            free(*out);
            *out = NULL;
            return BAD(param, "out of memory");
        }
    }
    if (!*out)
        *out = strdup("");
    return *out ? 0 : BAD(param, "out of memory");
}

/* messages -> the model's chat template -> r->text; chat_template_kwargs {"enable_thinking": bool}
 * (as llama.cpp's server and vLLM take it; other keys are ignored) is Qwen3's thinking switch,
 * the server's --no-think its default. */
static int parse_messages(const spk_srv *s, const cJSON *msgs, const cJSON *kwargs, spk_srv_req *r,
                          spk_srv_err *err)
{
    spk_chat_options opts;
    spk_chat_options_init(&opts);
    opts.enable_thinking = !s->no_think;
    if (kwargs && !cJSON_IsNull(kwargs)) {
        if (!cJSON_IsObject(kwargs))
            return BAD("chat_template_kwargs", "'chat_template_kwargs' must be an object");
        const cJSON *et = cJSON_GetObjectItemCaseSensitive(kwargs, "enable_thinking");
        if (et && !cJSON_IsBool(et))
            return BAD("chat_template_kwargs.enable_thinking", "'chat_template_kwargs.enable_thinking' must be a boolean");
        if (et)
            opts.enable_thinking = cJSON_IsTrue(et);
    }
    if (!cJSON_IsArray(msgs))
        return BAD("messages", "%s", msgs ? "'messages' must be an array" : "'messages' is required");
    int n = cJSON_GetArraySize(msgs);
    if (n < 1)
        return BAD("messages", "'messages' is empty");
    if (n > 100000)
        return BAD("messages", "'messages' has %d entries; at most 100000", n);
    spk_chat_message *cm = calloc((size_t)n, sizeof *cm);
    char **contents = calloc((size_t)n, sizeof *contents);
    int rc = -1;
    if (!cm || !contents) {
        BAD("messages", "out of memory");
        goto out;
    }
    size_t i = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, msgs)
    {
        char param[64];
        snprintf(param, sizeof param, "messages[%zu].role", i);
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        if (!cJSON_IsObject(m) || !cJSON_IsString(role)) {
            BAD(param, "'%s' must be a string", param);
            goto out;
        }
        const char *rs = role->valuestring;
        if (!strcmp(rs, "developer"))
            rs = "system";
        if (strcmp(rs, "system") && strcmp(rs, "user") && strcmp(rs, "assistant")) {
            BAD(param, "'%s' is '%.32s'; supported roles: system, developer, user, assistant", param, rs);
            goto out;
        }
        if (message_content(m, i, &contents[i], err))
            goto out;
        cm[i].role = rs;
        cm[i].content = contents[i];
        i++;
    }
    size_t need = 0;
    spk_status st = spk_chat_apply_opts(s->model, cm, (size_t)n, &opts, NULL, 0, &need);
    if (st != SPK_OK && st != SPK_ERR_TOO_LONG) {
        BAD("messages", "chat template: %s: %s", spk_status_str(st), spk_last_error());
        goto out;
    }
    r->text = malloc(need + 1);
    if (!r->text || spk_chat_apply_opts(s->model, cm, (size_t)n, &opts, r->text, need + 1, &need) != SPK_OK) {
        BAD("messages", "chat template failed: %s", spk_last_error());
        goto out;
    }
    r->text_len = need;
    rc = 0;
out:
    if (contents)
        for (int k = 0; k < n; k++)
            free(contents[k]);
    free(contents);
    free(cm);
    return rc;
}

/* prompt: a string, an array of one string, or an array of token ids. */
static int parse_prompt(const spk_srv *s, const cJSON *p, spk_srv_req *r, spk_srv_err *err)
{
    if (cJSON_IsArray(p) && cJSON_GetArraySize(p) == 1 && cJSON_IsString(cJSON_GetArrayItem(p, 0)))
        p = cJSON_GetArrayItem(p, 0);
    if (cJSON_IsString(p)) {
        r->text_len = strlen(p->valuestring);
        if (r->text_len == 0)
            return BAD("prompt", "'prompt' is empty");
        r->text = strdup(p->valuestring);
        return r->text ? 0 : BAD("prompt", "out of memory");
    }
    if (!cJSON_IsArray(p))
        return BAD("prompt", "%s", p ? "'prompt' must be a string or an array of token ids" : "'prompt' is required");
    int n = cJSON_GetArraySize(p);
    if (n < 1)
        return BAD("prompt", "'prompt' is empty");
    r->ids = malloc((size_t)n * sizeof *r->ids);
    if (!r->ids)
        return BAD("prompt", "out of memory");
    const cJSON *t;
    cJSON_ArrayForEach(t, p)
    {
        if (!cJSON_IsNumber(t) || t->valuedouble != floor(t->valuedouble) || t->valuedouble < 0 ||
            t->valuedouble >= s->n_vocab)
            return BAD("prompt", "'prompt' token %zu is not a token id in [0, %d) (only one prompt, a string or "
                                 "a list of ids, is supported)", r->n_ids, s->n_vocab);
        r->ids[r->n_ids++] = (int32_t)t->valuedouble;
    }
    return 0;
}

static int parse_stop(const cJSON *stop, spk_srv_req *r, spk_srv_err *err)
{
    if (!stop || cJSON_IsNull(stop))
        return 0;
    if (cJSON_IsString(stop)) {
        if (!stop->valuestring[0])
            return 0; /* "" stops nothing */
    } else if (!cJSON_IsArray(stop)) {
        return BAD("stop", "'stop' must be a string or an array of strings");
    } else if (cJSON_GetArraySize(stop) > SPK_MAX_STOP_STRINGS) {
        return BAD("stop", "'stop' has %d strings; at most %d", cJSON_GetArraySize(stop), SPK_MAX_STOP_STRINGS);
    }
    const cJSON *one = stop, *it;
    int single = cJSON_IsString(stop);
    for (it = single ? one : stop->child; it; it = single ? NULL : it->next) {
        if (!cJSON_IsString(it))
            return BAD("stop", "'stop' entries must be strings");
        size_t len = strlen(it->valuestring);
        if (len == 0)
            continue;
        if (len > SPK_MAX_STOP_LEN)
            return BAD("stop", "a stop string is %zu bytes; at most %d", len, SPK_MAX_STOP_LEN);
        if (!(r->stops[r->n_stops] = strdup(it->valuestring)))
            return BAD("stop", "out of memory");
        r->n_stops++;
    }
    return 0;
}

int spk_srv_req_parse(const spk_srv *s, int chat, const char *body, size_t len, spk_srv_req *r, spk_srv_err *err)
{
    memset(r, 0, sizeof *r);
    r->chat = chat;
    r->temperature = 1.0f;
    r->top_p = 1.0f;
    r->repeat_penalty = 1.0f;
    r->seed = SPK_SEED_RANDOM;
    r->max_tokens = s->n_ctx;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(body, len, &end, 0);
    int rc = -1;
    if (!root) {
        size_t at = end ? (size_t)(end - body) : 0;
        if (at > len)
            at = len;
        spk_srv_err_set(err, 400, "invalid_request_error", NULL, NULL,
                        "the body is not valid JSON (error near byte %zu of %zu)", at, len);
        goto out;
    }
    if (!cJSON_IsObject(root)) {
        BAD(NULL, "the body must be a JSON object");
        goto out;
    }
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (model && !cJSON_IsNull(model)) {
        if (!cJSON_IsString(model)) {
            BAD("model", "'model' must be a string");
            goto out;
        }
        if (strcmp(model->valuestring, s->model_name)) {
            spk_srv_err_set(err, 404, "invalid_request_error", "model_not_found", "model",
                            "The model '%.200s' does not exist; this server serves '%s'", model->valuestring,
                            s->model_name);
            goto out;
        }
    }
    if (chat ? parse_messages(s, cJSON_GetObjectItemCaseSensitive(root, "messages"),
                              cJSON_GetObjectItemCaseSensitive(root, "chat_template_kwargs"), r, err)
             : parse_prompt(s, cJSON_GetObjectItemCaseSensitive(root, "prompt"), r, err))
        goto out;

    double d, big = 1e9;
    d = 1;
    if (get_num(root, "n", 1, big, 1, &d, err))
        goto out;
    if (d != 1) {
        BAD("n", "'n' is %g; only n = 1 is supported", d);
        goto out;
    }
    const char *mt = chat && cJSON_GetObjectItemCaseSensitive(root, "max_completion_tokens") ? "max_completion_tokens"
                                                                                             : "max_tokens";
    d = -1;
    if (get_num(root, mt, 1, 1 << 30, 1, &d, err))
        goto out;
    if (d >= 1)
        r->max_tokens = (int)d;
    d = r->temperature;
    if (get_num(root, "temperature", 0, 2, 0, &d, err))
        goto out;
    r->temperature = (float)d;
    d = r->top_p;
    if (get_num(root, "top_p", 0, 1, 0, &d, err))
        goto out;
    if (d <= 0) {
        BAD("top_p", "'top_p' is %g; it must be in (0, 1]", d);
        goto out;
    }
    r->top_p = (float)d;
    d = 0;
    if (get_num(root, "top_k", -1, 1 << 30, 1, &d, err)) /* -1: off, as 0 */
        goto out;
    r->top_k = d < 0 ? 0 : (int)d;
    d = 0;
    if (get_num(root, "min_p", 0, 1, 0, &d, err))
        goto out;
    r->min_p = (float)d;
    d = 0;
    if (get_num(root, "presence_penalty", -2, 2, 0, &d, err))
        goto out;
    r->presence = (float)d;
    d = 0;
    if (get_num(root, "frequency_penalty", -2, 2, 0, &d, err))
        goto out;
    r->frequency = (float)d;
    d = 1;
    if (get_num(root, "repetition_penalty", 0.01, 10, 0, &d, err))
        goto out;
    r->repeat_penalty = (float)d;
    d = -1;
    if (get_num(root, "seed", -9.2e18, 1.8e19, 1, &d, err))
        goto out;
    if (cJSON_GetObjectItemCaseSensitive(root, "seed") && !cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(root, "seed")))
        r->seed = d < 0 ? (uint64_t)(int64_t)d : (uint64_t)d;
    if (r->seed == SPK_SEED_RANDOM)
        r->seed--; /* a client's -1 is a seed like any other */
    if (get_bool(root, "ignore_eos", &r->ignore_eos, err))
        goto out;
    if (get_bool(root, "stream", &r->stream, err))
        goto out;
    const cJSON *so = cJSON_GetObjectItemCaseSensitive(root, "stream_options");
    if (so && !cJSON_IsNull(so)) {
        if (!cJSON_IsObject(so)) {
            BAD("stream_options", "'stream_options' must be an object");
            goto out;
        }
        if (!r->stream) {
            BAD("stream_options", "'stream_options' is only allowed with 'stream': true");
            goto out;
        }
        if (get_bool(so, "include_usage", &r->include_usage, err))
            goto out;
    }
    if (chat) {
        if (get_bool(root, "logprobs", &r->logprobs, err))
            goto out;
        d = 0;
        if (get_num(root, "top_logprobs", 0, SPK_MAX_TOP_LOGPROBS, 1, &d, err))
            goto out;
        r->top_logprobs = (int)d;
        if (r->top_logprobs && !r->logprobs) {
            BAD("top_logprobs", "'top_logprobs' needs 'logprobs': true");
            goto out;
        }
    } else {
        d = -1;
        if (get_num(root, "logprobs", 0, SPK_MAX_TOP_LOGPROBS, 1, &d, err))
            goto out;
        r->logprobs = d >= 0;
        r->top_logprobs = d > 0 ? (int)d : 0;
        if (get_bool(root, "echo", &r->echo, err))
            goto out;

    }
    if (parse_stop(cJSON_GetObjectItemCaseSensitive(root, "stop"), r, err))
        goto out;
    rc = 0;
out:
    cJSON_Delete(root);
    if (rc)
        spk_srv_req_free(r);
    return rc;
}
