/*
 * Chat templates rendered natively: ChatML (with the template's own default system message,
 * if it has one), Qwen3 (ChatML with <think> handling), Llama 3 headers, Mistral v7 and
 * Harmony (gpt-oss, llama.cpp's renderer). The
 * template text is only inspected, never interpreted.
 */
#include <string.h>

#include "common/error.h"
#include "model/chat.h"

static bool contains(const char *s, size_t n, const char *needle)
{
    return memmem(s, n, needle, strlen(needle)) != NULL;
}

spk_chat_kind spk_chat_detect(const char *tmpl, size_t len)
{
    if (!tmpl)
        return SPK_CHAT_UNKNOWN;
    if (spk_chat_unsupported_family(tmpl, len))
        return SPK_CHAT_UNKNOWN;
    if (contains(tmpl, len, "<|channel|>") && contains(tmpl, len, "<|start|>")) /* llama.cpp's test for gpt-oss */
        return SPK_CHAT_HARMONY;
    if (contains(tmpl, len, "<|im_start|>"))
        return contains(tmpl, len, "enable_thinking") ? SPK_CHAT_QWEN3 : SPK_CHAT_CHATML;
    if (contains(tmpl, len, "[SYSTEM_PROMPT]") && contains(tmpl, len, "[INST]"))
        return SPK_CHAT_MISTRAL_V7;
    if (contains(tmpl, len, "<|start_header_id|>") && contains(tmpl, len, "<|end_header_id|>"))
        return SPK_CHAT_LLAMA3;
    return SPK_CHAT_UNKNOWN;
}

/* Families llama.cpp knows that we do not render, in llama.cpp's order of detection
 * (llm_chat_detect_template) where the markers overlap. */
const char *spk_chat_unsupported_family(const char *t, size_t n)
{
    if (!t)
        return NULL;
    if (contains(t, n, "<|im_start|>"))
        return contains(t, n, "<|im_sep|>") ? "phi-4" : contains(t, n, "<end_of_utterance>") ? "smolvlm" : NULL;
    if (contains(t, n, "[INST]") && !contains(t, n, "[SYSTEM_PROMPT]")) {
        if (contains(t, n, "' [INST] ' + system_message") || contains(t, n, "[AVAILABLE_TOOLS]"))
            return contains(t, n, " [INST]") ? "mistral-v1" : contains(t, n, "\"[INST]\"") ? "mistral-v3-tekken" : "mistral-v3";
        return "llama2";
    }
    if (contains(t, n, "<|assistant|>") && contains(t, n, "<|end|>"))
        return "phi-3";
    if (contains(t, n, "<start_of_turn>"))
        return "gemma";
    if (contains(t, n, "<|START_OF_TURN_TOKEN|>"))
        return "command-r";
    if (contains(t, n, "### Instruction:") || contains(t, n, "<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>"))
        return "deepseek";
    return NULL;
}

/* Output with capacity semantics: bytes past `cap` are counted, not written. */
typedef struct out_buf {
    char *buf;
    size_t cap;
    size_t n;
} out_buf;

static void put(out_buf *o, const char *s, size_t n)
{
    if (o->n < o->cap)
        memcpy(o->buf + o->n, s, n <= o->cap - o->n ? n : o->cap - o->n);
    o->n += n;
}

static void puts_(out_buf *o, const char *s) { put(o, s, strlen(s)); }

/*
 * The template's default system message: a string literal '<|im_start|>system\n TEXT <|im_end|>'
 * whose TEXT is plain (no quotes, no Jinja). Literal escapes (\n, \t, \\, \', \") are undone.
 * Writes at most cap bytes to dst; returns the length, or -1 if the template has none.
 */
static long default_system(const char *t, size_t len, char *dst, size_t cap)
{
    static const char head[] = "<|im_start|>system";
    static const char tail[] = "<|im_end|>";
    const char *end = t + len;
    for (const char *p = t; (p = memmem(p, (size_t)(end - p), head, sizeof head - 1)) != NULL;) {
        const char *q = p + sizeof head - 1;
        p = q;
        if (q < end && *q == '\n')
            q += 1;
        else if (end - q >= 2 && q[0] == '\\' && q[1] == 'n')
            q += 2;
        else
            continue;
        const char *e = memmem(q, (size_t)(end - q), tail, sizeof tail - 1);
        if (!e || e == q)
            continue;
        /* plain: no Jinja, no operators, and quotes only escaped (else it is an expression) */
        bool plain = true;
        for (const char *c = q; c < e && plain; c++)
            plain = !(*c == '{' || *c == '}' || *c == '+' ||
                      ((*c == '\'' || *c == '"') && (c == q || c[-1] != '\\')));
        if (!plain)
            continue;
        size_t o = 0;
        for (const char *c = q; c < e; c++) {
            char ch = *c;
            if (ch == '\\' && c + 1 < e) {
                char x = *++c;
                ch = x == 'n' ? '\n' : x == 't' ? '\t' : x == 'r' ? '\r' : x;
            }
            if (o < cap)
                dst[o] = ch;
            o++;
        }
        return (long)o;
    }
    return -1;
}

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/* A byte range of a message. */
typedef struct span {
    const char *p;
    size_t n;
} span;

static span strip_nl(span s, bool left, bool right)
{
    while (left && s.n && s.p[0] == '\n')
        s.p++, s.n--;
    while (right && s.n && s.p[s.n - 1] == '\n')
        s.n--;
    return s;
}

static const char *find_last(const char *s, size_t n, const char *needle)
{
    const size_t k = strlen(needle);
    for (size_t i = n >= k ? n - k + 1 : 0; i-- > 0;)
        if (memcmp(s + i, needle, k) == 0)
            return s + i;
    return NULL;
}

static bool starts_ends(const char *c, const char *head, const char *tail)
{
    size_t n = strlen(c), h = strlen(head), t = strlen(tail);
    return n >= h && n >= t && memcmp(c, head, h) == 0 && memcmp(c + n - t, tail, t) == 0;
}

/* Qwen3's Jinja template (Qwen/Qwen3-*), without tools. */
static void render_qwen3(out_buf *o, const spk_chat_message *m, size_t n, bool add_assistant, bool no_think)
{
    if (n > 0 && strcmp(m[0].role, "system") == 0) {
        puts_(o, "<|im_start|>system\n");
        puts_(o, m[0].content);
        puts_(o, "<|im_end|>\n");
    }
    /* the last user message that is not a tool response */
    size_t last_query = n ? n - 1 : 0;
    for (size_t i = n; i-- > 0;)
        if (strcmp(m[i].role, "user") == 0 && !starts_ends(m[i].content, "<tool_response>", "</tool_response>")) {
            last_query = i;
            break;
        }
    for (size_t i = 0; i < n; i++) {
        const char *role = m[i].role, *c = m[i].content;
        const size_t cl = strlen(c);
        if (strcmp(role, "user") == 0 || (strcmp(role, "system") == 0 && i > 0)) {
            puts_(o, "<|im_start|>");
            puts_(o, role);
            puts_(o, "\n");
            puts_(o, c);
            puts_(o, "<|im_end|>\n");
        } else if (strcmp(role, "assistant") == 0) {
            span content = {c, cl}, reasoning = {"", 0};
            const char *close = memmem(c, cl, "</think>", 8);
            if (close) {
                const char *last_close = find_last(c, cl, "</think>");
                content = strip_nl((span){last_close + 8, (size_t)(c + cl - (last_close + 8))}, true, false);
                span before = strip_nl((span){c, (size_t)(close - c)}, false, true);
                const char *open = find_last(before.p, before.n, "<think>");
                if (open)
                    before = (span){open + 7, (size_t)(before.p + before.n - (open + 7))};
                reasoning = strip_nl(before, true, false);
            }
            puts_(o, "<|im_start|>assistant\n");
            if (i > last_query && (i == n - 1 || reasoning.n)) {
                span r = strip_nl(reasoning, true, true);
                puts_(o, "<think>\n");
                put(o, r.p, r.n);
                puts_(o, "\n</think>\n\n");
                content = strip_nl(content, true, false);
            }
            put(o, content.p, content.n);
            puts_(o, "<|im_end|>\n");
        } else if (strcmp(role, "tool") == 0) {
            if (i == 0 || strcmp(m[i - 1].role, "tool") != 0)
                puts_(o, "<|im_start|>user");
            puts_(o, "\n<tool_response>\n");
            puts_(o, c);
            puts_(o, "\n</tool_response>");
            if (i == n - 1 || strcmp(m[i + 1].role, "tool") != 0)
                puts_(o, "<|im_end|>\n");
        }
    }
    if (add_assistant) {
        puts_(o, "<|im_start|>assistant\n");
        if (no_think)
            puts_(o, "<think>\n\n</think>\n\n");
    }
}

/* llama.cpp's mistral-v7 / mistral-v7-tekken renderer. */
static void render_mistral_v7(out_buf *o, const spk_chat_message *m, size_t n, bool tekken)
{
    const char *sp = tekken ? "" : " ";
    for (size_t i = 0; i < n; i++) {
        if (strcmp(m[i].role, "system") == 0) {
            puts_(o, "[SYSTEM_PROMPT]");
            puts_(o, sp);
            puts_(o, m[i].content);
            puts_(o, "[/SYSTEM_PROMPT]");
        } else if (strcmp(m[i].role, "user") == 0) {
            puts_(o, "[INST]");
            puts_(o, sp);
            puts_(o, m[i].content);
            puts_(o, "[/INST]");
        } else {
            puts_(o, sp);
            puts_(o, m[i].content);
            puts_(o, "</s>");
        }
    }
}

spk_status spk_chat_render_template(const char *tmpl, size_t len, const spk_chat_message *msgs,
                                    size_t n, bool add_assistant, char *buf, size_t cap,
                                    size_t *n_out)
{
    return spk_chat_render_template_ex(tmpl, len, 0, msgs, n, add_assistant, buf, cap, n_out);
}

spk_status spk_chat_render_template_ex(const char *tmpl, size_t len, unsigned flags, const spk_chat_message *msgs,
                                       size_t n, bool add_assistant, char *buf, size_t cap, size_t *n_out)
{
    if (n_out)
        *n_out = 0;
    if (!tmpl || !n_out || (!msgs && n) || (!buf && cap))
        return spk_err(SPK_ERR_INVALID_ARG, "chat: NULL %s",
                       !tmpl ? "template" : !n_out ? "n_out" : (!msgs && n) ? "messages" : "buf");
    for (size_t i = 0; i < n; i++)
        if (!msgs[i].role || !msgs[i].content)
            return spk_err(SPK_ERR_INVALID_ARG, "chat: message %zu has a NULL %s", i,
                           !msgs[i].role ? "role" : "content");
    spk_chat_kind kind = spk_chat_detect(tmpl, len);
    out_buf o = {buf, cap, 0};
    switch (kind) {
    case SPK_CHAT_CHATML: {
        if (n > 0 && strcmp(msgs[0].role, "system") != 0) {
            char sys[1024];
            long sl = default_system(tmpl, len, sys, sizeof sys);
            if (sl > (long)sizeof sys)
                return spk_err(SPK_ERR_UNSUPPORTED, "chat: default system message of %ld bytes is too long",
                               sl);
            if (sl > 0) {
                puts_(&o, "<|im_start|>system\n");
                put(&o, sys, (size_t)sl);
                puts_(&o, "<|im_end|>\n");
            }
        }
        for (size_t i = 0; i < n; i++) {
            puts_(&o, "<|im_start|>");
            puts_(&o, msgs[i].role);
            puts_(&o, "\n");
            puts_(&o, msgs[i].content);
            puts_(&o, "<|im_end|>\n");
        }
        if (add_assistant)
            puts_(&o, "<|im_start|>assistant\n");
        break;
    }
    case SPK_CHAT_LLAMA3:
        for (size_t i = 0; i < n; i++) {
            const char *c = msgs[i].content;
            size_t cl = strlen(c);
            while (cl > 0 && is_space(*c)) {
                c++;
                cl--;
            }
            while (cl > 0 && is_space(c[cl - 1]))
                cl--;
            puts_(&o, "<|start_header_id|>");
            puts_(&o, msgs[i].role);
            puts_(&o, "<|end_header_id|>\n\n");
            put(&o, c, cl);
            puts_(&o, "<|eot_id|>");
        }
        if (add_assistant)
            puts_(&o, "<|start_header_id|>assistant<|end_header_id|>\n\n");
        break;
    case SPK_CHAT_QWEN3:
        render_qwen3(&o, msgs, n, add_assistant, (flags & SPK_CHAT_NO_THINKING) != 0);
        break;
    case SPK_CHAT_MISTRAL_V7:
        render_mistral_v7(&o, msgs, n, (flags & SPK_CHAT_TEKKEN) != 0);
        break;
    case SPK_CHAT_HARMONY: /* llama.cpp's LLM_CHAT_TEMPLATE_OPENAI_MOE renderer */
        for (size_t i = 0; i < n; i++) {
            puts_(&o, "<|start|>");
            puts_(&o, msgs[i].role);
            puts_(&o, "<|message|>");
            puts_(&o, msgs[i].content);
            puts_(&o, strcmp(msgs[i].role, "assistant") == 0 ? "<|return|>" : "<|end|>");
        }
        if (add_assistant)
            puts_(&o, "<|start|>assistant");
        break;
    default: {
        const char *fam = spk_chat_unsupported_family(tmpl, len);
        if (fam)
            return spk_err(SPK_ERR_UNSUPPORTED,
                           "chat: template family '%s' is not supported (supported: chatml, qwen3, llama3, "
                           "mistral-v7, mistral-v7-tekken, harmony)", fam);
        return spk_err(SPK_ERR_UNSUPPORTED,
                       "chat: template not recognised (supported: chatml, qwen3, llama3, mistral-v7, "
                       "mistral-v7-tekken, harmony): '%.*s%s'",
                       (int)(len > 60 ? 60 : len), tmpl, len > 60 ? "..." : "");
    }
    }
    *n_out = o.n;
    if (o.n > cap)
        return spk_err(SPK_ERR_TOO_LONG, "chat: rendered prompt of %zu bytes does not fit in %zu", o.n,
                       cap);
    if (o.n < cap)
        buf[o.n] = '\0';
    return SPK_OK;
}

spk_status spk_chat_render(const spk_gguf_file *f, const spk_chat_message *msgs, size_t n,
                           bool add_assistant, char *buf, size_t cap, size_t *n_out)
{
    return spk_chat_render_ex(f, 0, msgs, n, add_assistant, buf, cap, n_out);
}

spk_status spk_chat_render_ex(const spk_gguf_file *f, unsigned flags, const spk_chat_message *msgs, size_t n,
                              bool add_assistant, char *buf, size_t cap, size_t *n_out)
{
    if (n_out)
        *n_out = 0;
    if (!f)
        return spk_err(SPK_ERR_INVALID_ARG, "chat: NULL model file");
    if (!spk_gguf_find(f, "tokenizer.chat_template"))
        return spk_err(SPK_ERR_UNSUPPORTED, "chat: %s has no tokenizer.chat_template", f->path);
    spk_gguf_str t;
    spk_status st = spk_gguf_get_str(f, "tokenizer.chat_template", &t);
    if (st != SPK_OK)
        return st;
    spk_gguf_str pre;
    if (spk_gguf_find(f, "tokenizer.ggml.pre") && spk_gguf_get_str(f, "tokenizer.ggml.pre", &pre) == SPK_OK &&
        spk_gguf_str_eq(pre, "tekken"))
        flags |= SPK_CHAT_TEKKEN;
    return spk_chat_render_template_ex(t.ptr, (size_t)t.len, flags, msgs, n, add_assistant, buf, cap, n_out);
}
