/*
 * Chat templates rendered natively: ChatML (with the template's own default system message,
 * if it has one) and Llama 3 headers. The template text is only inspected, never interpreted.
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
    if (contains(tmpl, len, "<|im_start|>"))
        return SPK_CHAT_CHATML;
    if (contains(tmpl, len, "<|start_header_id|>"))
        return SPK_CHAT_LLAMA3;
    return SPK_CHAT_UNKNOWN;
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

spk_status spk_chat_render_template(const char *tmpl, size_t len, const spk_chat_message *msgs,
                                    size_t n, bool add_assistant, char *buf, size_t cap,
                                    size_t *n_out)
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
    default:
        return spk_err(SPK_ERR_UNSUPPORTED,
                       "chat: template not recognised (known: ChatML with <|im_start|>, Llama 3 with "
                       "<|start_header_id|>): '%.*s%s'",
                       (int)(len > 60 ? 60 : len), tmpl, len > 60 ? "..." : "");
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
    return spk_chat_render_template(t.ptr, (size_t)t.len, msgs, n, add_assistant, buf, cap, n_out);
}
