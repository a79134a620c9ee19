/*
 * Pre-tokenizers: split text into the pieces BPE runs on, with PCRE2 regexes (UTF + UCP,
 * JIT when available). Stages apply in order; each stage splits every piece of the previous
 * stage into its matches and the text between them (HF's "Isolated" split behaviour).
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "model/tok_internal.h"

/* SmolLM2 (tokenizer.json: Digits(individual_digits) then ByteLevel's GPT-2 regex). */
static const char *const k_smollm[] = {
    "\\p{N}",
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+",
};

/* Llama 3 (tokenizer.json's Split regex; case-insensitive contractions spelled out). */
static const char *const k_llama3[] = {
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|"
    "\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
};

/* GPT-2 (llama.cpp's "gpt-2": the GPT-2 regex alone; SmolLM's second stage). */
static const char *const k_gpt2[] = {
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+",
};

/* Qwen2/Qwen3 ("qwen2"): Llama 3's regex with single digits. */
static const char *const k_qwen2[] = {
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|"
    "\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
};

/* GPT-4o / Llama 4 ("gpt-4o") and Mistral's Tekken ("tekken"): as llama.cpp spells them, where a
 * letter that is not ASCII a-z counts as upper case and one that is not A-Z as lower case (its
 * stand-in for \p{Lu}/\p{Ll} classes; non-ASCII letters are both). */
static const char *const k_gpt4o[] = {
    "[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))*((?=[\\p{L}])([^A-Z]))+"
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|"
    "[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))+((?=[\\p{L}])([^A-Z]))*"
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|"
    "\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
};
static const char *const k_tekken[] = {
    "[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))*((?=[\\p{L}])([^A-Z]))+|"
    "[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))+((?=[\\p{L}])([^A-Z]))*|"
    "\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
};

spk_status spk_tok_pretok_init(spk_tok *tok)
{
    const char *const *res;
    int n = 1;
    switch (tok->pre) {
    case SPK_PRE_SMOLLM: res = k_smollm; n = 2; break;
    case SPK_PRE_GPT2: res = k_gpt2; break;
    case SPK_PRE_QWEN2: res = k_qwen2; break;
    case SPK_PRE_GPT4O: res = k_gpt4o; break;
    case SPK_PRE_TEKKEN: res = k_tekken; break;
    default: res = k_llama3; break;
    }
    uint32_t opts = PCRE2_UTF | PCRE2_UCP;
#ifdef PCRE2_MATCH_INVALID_UTF
    opts |= PCRE2_MATCH_INVALID_UTF; /* invalid bytes never match and act as barriers */
#endif
    for (int i = 0; i < n; i++) {
        int err;
        PCRE2_SIZE erroff;
        pcre2_code *re = pcre2_compile((PCRE2_SPTR)res[i], PCRE2_ZERO_TERMINATED, opts, &err,
                                       &erroff, NULL);
        if (!re) {
            PCRE2_UCHAR msg[160];
            pcre2_get_error_message(err, msg, sizeof msg);
            return spk_err(SPK_ERR_INTERNAL, "tokenizer: PCRE2 rejected pre-tokenizer regex %d at %zu: %s",
                           i, (size_t)erroff, (const char *)msg);
        }
        (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* falls back to the interpreter */
        tok->re[i] = re;
        tok->n_re = i + 1;
    }
    return SPK_OK;
}

void spk_tok_pretok_free(spk_tok *tok)
{
    for (int i = 0; i < tok->n_re; i++)
        pcre2_code_free(tok->re[i]);
    tok->n_re = 0;
}

/* Length of the valid UTF-8 character at s (n bytes available), or 0 if invalid there. */
static size_t utf8_valid_len(const uint8_t *s, size_t n)
{
    uint8_t c = s[0];
    if (c < 0x80)
        return 1;
    size_t need;
    uint8_t lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) {
        need = 1;
    } else if (c >= 0xE0 && c <= 0xEF) {
        need = 2;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 3;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else {
        return 0;
    }
    if (n < need + 1 || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t k = 2; k <= need; k++)
        if ((s[k] & 0xC0) != 0x80)
            return 0;
    return need + 1;
}

/* Text no regex alternative matched: invalid bytes become one piece each, valid runs one
 * piece (the regexes cover every valid character, so those are rare). */
static spk_status emit_gap(const spk_tok *tok, spk_tok_scratch *sc, const char *p, size_t n,
                           spk_tok_sink *sink)
{
    size_t i = 0;
    while (i < n) {
        size_t j = i;
        size_t k;
        while (j < n && (k = utf8_valid_len((const uint8_t *)p + j, n - j)) > 0)
            j += k;
        spk_status st;
        if (j > i && (st = spk_tok_bpe_piece(tok, sc, p + i, j - i, sink)))
            return st;
        if (j < n && (st = spk_tok_bpe_piece(tok, sc, p + j, 1, sink)))
            return st;
        i = j < n ? j + 1 : n;
    }
    return SPK_OK;
}

/* Encode one final piece: whole-piece lookup first when merges are ignored (Llama 3), else BPE. */
static spk_status emit_piece(const spk_tok *tok, spk_tok_scratch *sc, const char *p, size_t n,
                             spk_tok_sink *sink)
{
    if (tok->ignore_merges && n > 1) {
        if (sc->cap_mapped < 2 * n) {
            size_t cap = 2 * n < 256 ? 256 : 4 * n;
            char *m = realloc(sc->mapped, cap);
            if (!m)
                return spk_err(SPK_ERR_NOMEM, "tokenize: out of memory for a %zu-byte word", n);
            sc->mapped = m;
            sc->cap_mapped = cap;
        }
        size_t o = 0;
        for (size_t i = 0; i < n; i++) {
            uint32_t cp = spk_tok_byte_to_cp((uint8_t)p[i]);
            if (cp < 0x80) {
                sc->mapped[o++] = (char)cp;
            } else {
                sc->mapped[o++] = (char)(0xC0 | (cp >> 6));
                sc->mapped[o++] = (char)(0x80 | (cp & 0x3F));
            }
        }
        int32_t id = spk_tok_map_find(tok, sc->mapped, o);
        if (id >= 0) {
            spk_tok_sink_push(sink, id);
            return SPK_OK;
        }
    }
    return spk_tok_bpe_piece(tok, sc, p, n, sink);
}

static spk_status split_stage(const spk_tok *tok, spk_tok_scratch *sc, int stage, const char *p,
                              size_t n, spk_tok_sink *sink);

/* Hand a piece produced by `stage` to the next stage (or encode it after the last). */
static spk_status next_stage(const spk_tok *tok, spk_tok_scratch *sc, int stage, const char *p,
                             size_t n, bool matched, spk_tok_sink *sink)
{
    if (n == 0)
        return SPK_OK;
    if (stage + 1 < tok->n_re)
        return split_stage(tok, sc, stage + 1, p, n, sink);
    return matched ? emit_piece(tok, sc, p, n, sink) : emit_gap(tok, sc, p, n, sink);
}

static spk_status split_stage(const spk_tok *tok, spk_tok_scratch *sc, int stage, const char *p,
                              size_t n, spk_tok_sink *sink)
{
    const pcre2_code *re = tok->re[stage];
    pcre2_match_data *md = sc->md[stage];
    if (!md) {
        md = pcre2_match_data_create_from_pattern(re, NULL);
        if (!md)
            return spk_err(SPK_ERR_NOMEM, "tokenize: out of memory for regex match data");
        sc->md[stage] = md;
    }
    size_t pos = 0, gap = 0;
    spk_status st;
    while (pos < n) {
        int rc = pcre2_match(re, (PCRE2_SPTR)p, n, pos, 0, md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH)
            break;
        if (rc < 0) {
            PCRE2_UCHAR msg[160];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return spk_err(SPK_ERR_INTERNAL, "tokenize: pre-tokenizer regex failed at byte %zu of %zu: %s",
                           pos, n, (const char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t ms = ov[0], me = ov[1];
        if (me <= ms) { /* cannot happen with these patterns; never loop forever */
            pos = ms + 1;
            continue;
        }
        if ((st = next_stage(tok, sc, stage, p + gap, ms - gap, false, sink)))
            return st;
        if ((st = next_stage(tok, sc, stage, p + ms, me - ms, true, sink)))
            return st;
        pos = gap = me;
    }
    return next_stage(tok, sc, stage, p + gap, n - gap, false, sink);
}

spk_status spk_tok_pretok_encode(const spk_tok *tok, spk_tok_scratch *sc, const char *text,
                                 size_t len, spk_tok_sink *sink)
{
    if (len == 0)
        return SPK_OK;
    return split_stage(tok, sc, 0, text, len, sink);
}

void spk_tok_scratch_free(spk_tok_scratch *sc)
{
    free(sc->syms);
    free(sc->heap);
    free(sc->mapped);
    for (int i = 0; i < SPK_TOK_MAX_REGEX; i++)
        if (sc->md[i])
            pcre2_match_data_free(sc->md[i]);
    memset(sc, 0, sizeof *sc);
}
