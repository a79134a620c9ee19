/*
 * Tokenizer entry points: encode (special-token partition, then pre-tokenizer + BPE on the
 * text between), decode, and the streaming UTF-8-safe detokenizer.
 */
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "model/tok_internal.h"

/* Longest special token whose text starts at s (n bytes left), or -1. CONTROL and UNKNOWN
 * tokens only count when parse_special; USER_DEFINED always do. */
static int32_t special_at(const spk_tok *tok, const char *s, size_t n, bool parse_special,
                          size_t *tlen)
{
    uint8_t b = (uint8_t)s[0];
    for (uint32_t j = tok->special_first[b]; j < tok->special_first[b + 1]; j++) {
        int32_t id = tok->special[j];
        if (!parse_special && tok->type[id] != SPK_TOKTYPE_USER_DEFINED)
            continue;
        uint32_t off = tok->text_off[id], len = tok->text_off[id + 1] - off;
        if (len <= n && memcmp(tok->text + off, s, len) == 0) {
            *tlen = len;
            return id;
        }
    }
    return -1;
}

/* One fragment of text between special tokens (none if empty, as llama.cpp's partition). */
static spk_status encode_text(const spk_tok *tok, spk_tok_scratch *sc, const char *s, size_t n, bool *prev_special,
                              bool at_start, spk_tok_sink *sink)
{
    if (n == 0)
        return SPK_OK;
    if (!tok->spm)
        return spk_tok_pretok_encode(tok, sc, s, n, sink);
    bool prefix = tok->add_space_prefix && *prev_special;
    if (tok->spm_prefix_mode >= 1 && s[0] == ' ') /* HF Metaspace: text that starts with a space has one */
        prefix = false;
    if (tok->spm_prefix_mode == 2 && !at_start)   /* Metaspace "first": only at the start of the input */
        prefix = false;
    *prev_special = false;
    return spk_tok_spm_encode(tok, s, n, prefix, sink);
}

spk_status spk_tok_encode(const spk_tok *tok, const char *text, size_t len, bool add_special,
                          bool parse_special, int32_t *out, size_t cap, size_t *n_out)
{
    if (n_out)
        *n_out = 0;
    if (!tok || !n_out || (!text && len) || (!out && cap))
        return spk_err(SPK_ERR_INVALID_ARG, "tokenize: NULL %s",
                       !tok ? "tokenizer" : !n_out ? "n_out" : (!text && len) ? "text" : "out");
    spk_tok_sink sink = {out, cap, 0};
    spk_tok_scratch sc;
    memset(&sc, 0, sizeof sc);
    spk_status st = SPK_OK;

    if (add_special && tok->add_bos)
        spk_tok_sink_push(&sink, tok->bos);
    bool prev_special = true; /* SentencePiece: a space before text at the start or after a special */
    size_t seg = 0;
    for (size_t p = 0; p < len && tok->n_special > 0;) {
        size_t tlen = 0;
        uint8_t b = (uint8_t)text[p];
        int32_t id = tok->special_first[b] != tok->special_first[b + 1]
                         ? special_at(tok, text + p, len - p, parse_special, &tlen)
                         : -1;
        if (id < 0) {
            p++;
            continue;
        }
        if ((st = encode_text(tok, &sc, text + seg, p - seg, &prev_special, seg == 0, &sink)))
            goto done;
        spk_tok_sink_push(&sink, id);
        prev_special = true;
        p += tlen;
        seg = p;
    }
    if ((st = encode_text(tok, &sc, text + seg, len - seg, &prev_special, seg == 0, &sink)))
        goto done;
    if (add_special && tok->add_eos)
        spk_tok_sink_push(&sink, tok->eos);
    *n_out = sink.n;
    if (sink.n > cap)
        st = spk_err(SPK_ERR_TOO_LONG, "tokenize: %zu tokens do not fit in a buffer of %zu",
                     sink.n, cap);
done:
    spk_tok_scratch_free(&sc);
    return st;
}

const char *spk_tok_piece(const spk_tok *tok, int32_t id, bool skip_special, size_t *len)
{
    *len = 0;
    if (!tok || id < 0 || (uint32_t)id >= tok->n_tokens)
        return NULL;
    uint8_t t = tok->type[id];
    if (skip_special && (t == SPK_TOKTYPE_CONTROL || t == SPK_TOKTYPE_UNKNOWN))
        return tok->piece + tok->piece_off[id];
    *len = tok->piece_off[id + 1] - tok->piece_off[id];
    return tok->piece + tok->piece_off[id];
}

spk_status spk_tok_decode(const spk_tok *tok, const int32_t *ids, size_t n, bool skip_special,
                          char *buf, size_t cap, size_t *n_out)
{
    if (n_out)
        *n_out = 0;
    if (!tok || !n_out || (!ids && n) || (!buf && cap))
        return spk_err(SPK_ERR_INVALID_ARG, "detokenize: NULL %s",
                       !tok ? "tokenizer" : !n_out ? "n_out" : (!ids && n) ? "tokens" : "buf");
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || (uint32_t)ids[i] >= tok->n_tokens)
            return spk_err(SPK_ERR_INVALID_ARG, "detokenize: token %zu is %d, outside the vocabulary (0..%u)",
                           i, ids[i], tok->n_tokens - 1);
        size_t pl;
        const char *p = spk_tok_piece(tok, ids[i], skip_special, &pl);
        if (o + pl <= cap)
            memcpy(buf + o, p, pl);
        else if (o < cap)
            memcpy(buf + o, p, cap - o);
        o += pl;
    }
    *n_out = o;
    if (o > cap)
        return spk_err(SPK_ERR_TOO_LONG, "detokenize: %zu bytes do not fit in a buffer of %zu", o, cap);
    return SPK_OK;
}

/* ---- streaming ---------------------------------------------------------------------------- */

void spk_tok_stream_init(spk_tok_stream *s, const spk_tok *tok, bool skip_special)
{
    memset(s, 0, sizeof *s);
    s->tok = tok;
    s->skip_special = skip_special;
}

/* The bytes pending + piece, read through one index. */
typedef struct two_bufs {
    const uint8_t *a;
    size_t na;
    const uint8_t *b;
    size_t n;
} two_bufs;

static inline uint8_t at(const two_bufs *t, size_t i)
{
    return i < t->na ? t->a[i] : t->b[i - t->na];
}

static const uint8_t k_fffd[3] = {0xEF, 0xBF, 0xBD};

/*
 * Turn the bytes into valid UTF-8: complete characters are copied, each maximal invalid
 * subpart becomes U+FFFD; an incomplete (but so far valid) character at the end is held back
 * unless `final` (then it is invalid). Writes to out when non-NULL; returns the output size and
 * sets *held to the number of held-back bytes at the end.
 */
static size_t sanitize(const two_bufs *t, bool final, uint8_t *out, size_t *held)
{
    size_t o = 0, i = 0;
    *held = 0;
    while (i < t->n) {
        uint8_t c = at(t, i);
        size_t need;
        uint8_t lo = 0x80, hi = 0xBF;
        if (c < 0x80) {
            if (out)
                out[o] = c;
            o++;
            i++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            need = 1;
        } else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            lo = c == 0xE0 ? 0xA0 : 0x80;
            hi = c == 0xED ? 0x9F : 0xBF;
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            lo = c == 0xF0 ? 0x90 : 0x80;
            hi = c == 0xF4 ? 0x8F : 0xBF;
        } else {
            need = 0; /* never valid as a lead byte */
        }
        size_t k = 1;
        bool ok = need > 0;
        while (ok && k <= need) {
            if (i + k >= t->n) {
                if (!final) { /* may still complete with the next token */
                    *held = t->n - i;
                    return o;
                }
                ok = false;
                break;
            }
            uint8_t d = at(t, i + k);
            if (k == 1 ? (d < lo || d > hi) : (d & 0xC0) != 0x80) {
                ok = false;
                break;
            }
            k++;
        }
        if (ok) {
            for (size_t j = 0; j <= need; j++)
                if (out)
                    out[o + j] = at(t, i + j);
            o += need + 1;
            i += need + 1;
        } else {
            if (out)
                memcpy(out + o, k_fffd, 3);
            o += 3;
            i += k; /* the lead byte and the continuation bytes that were valid so far */
        }
    }
    return o;
}

spk_status spk_tok_stream_push(spk_tok_stream *s, int32_t id, char *buf, size_t cap,
                               size_t *n_out)
{
    if (n_out)
        *n_out = 0;
    if (!s || !s->tok || !n_out || (!buf && cap))
        return spk_err(SPK_ERR_INVALID_ARG, "detokenizer push: NULL %s",
                       !s || !s->tok ? "detokenizer" : !n_out ? "n_out" : "buf");
    const spk_tok *tok = s->tok;
    bool final = id == -1;
    size_t pl = 0;
    const char *p = "";
    if (!final) {
        if (id < 0 || (uint32_t)id >= tok->n_tokens)
            return spk_err(SPK_ERR_INVALID_ARG, "detokenizer push: token %d outside the vocabulary (0..%u)",
                           id, tok->n_tokens - 1);
        p = spk_tok_piece(tok, id, s->skip_special, &pl);
    }
    two_bufs t = {s->pending, s->n_pending, (const uint8_t *)p, s->n_pending + pl};
    size_t held;
    size_t need = sanitize(&t, final, NULL, &held);
    *n_out = need;
    if (need > cap)
        return spk_err(SPK_ERR_TOO_LONG, "detokenizer push: %zu bytes do not fit in a buffer of %zu",
                       need, cap);
    sanitize(&t, final, (uint8_t *)buf, &held);
    uint8_t keep[4];
    for (size_t j = 0; j < held; j++)
        keep[j] = at(&t, t.n - held + j);
    memcpy(s->pending, keep, held);
    s->n_pending = (uint32_t)held;
    return SPK_OK;
}
