/*
 * Recognising a tokenizer.json's normalizer / pre-tokenizer / decoder / post-processor chain:
 * which of our pre-tokenizers (tok_pretok.c) a byte-level chain is, the SentencePiece-style
 * chains, and what the post-processor adds (BOS/EOS).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "model/hf_tok_internal.h"

/* The pre-tokenizer regexes as tokenizer.json spells them (after JSON unescaping). */
static const char k_re_gpt2[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
static const char k_re_llama3[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char k_re_qwen2[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char k_re_gpt4o[] =
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|"
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|"
    "\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char k_re_tekken[] =
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+|"
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*|"
    "\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

static const struct {
    const char *re, *pre;
    bool ignore_merges; /* what our tokenizer does for that pre-tokenizer (tok_vocab.c) */
} k_split_res[] = {
    {k_re_llama3, "llama-bpe", true},
    {k_re_gpt2, "gpt-2", false},
    {k_re_qwen2, "qwen2", false},
    {k_re_gpt4o, "gpt-4o", false},
    {k_re_tekken, "tekken", true},
};

static bool is_bytelevel(const cJSON *o, bool use_regex)
{
    const char *t = json_type_str(o);
    if (!t || strcmp(t, "ByteLevel") != 0 || json_true(o, "add_prefix_space"))
        return false;
    const cJSON *ur = cJSON_GetObjectItemCaseSensitive(o, "use_regex");
    bool ur_v = !ur || cJSON_IsTrue(ur); /* default true */
    return ur_v == use_regex;
}

const char *spk_hf_byte_level_pre(const hf_ctx *c, const cJSON *pt, bool *ignore_merges)
{
    *ignore_merges = false;
    if (cJSON_IsObject(pt) && is_bytelevel(pt, true))
        return "gpt-2";
    const char *t = cJSON_IsObject(pt) ? json_type_str(pt) : NULL;
    const cJSON *seq = t && strcmp(t, "Sequence") == 0 ? cJSON_GetObjectItemCaseSensitive(pt, "pretokenizers") : NULL;
    if (cJSON_IsArray(seq) && cJSON_GetArraySize(seq) == 2) {
        const cJSON *a = seq->child, *b = seq->child->next;
        const char *ta = cJSON_IsObject(a) ? json_type_str(a) : NULL;
        if (ta && strcmp(ta, "Digits") == 0 && json_true(a, "individual_digits") && cJSON_IsObject(b) &&
            is_bytelevel(b, true))
            return "smollm";
        if (ta && strcmp(ta, "Split") == 0 && cJSON_IsObject(b) && is_bytelevel(b, false)) {
            const cJSON *pat = cJSON_GetObjectItemCaseSensitive(a, "pattern");
            const cJSON *re = cJSON_IsObject(pat) ? cJSON_GetObjectItemCaseSensitive(pat, "Regex") : NULL;
            if (!cJSON_IsString(re)) {
                spk_err(SPK_ERR_UNSUPPORTED, "%s/%s: pre_tokenizer Split has no Regex pattern (a String pattern "
                        "is not supported)", c->label, c->file);
                return NULL;
            }
            if (!json_str_eq(a, "behavior", "Isolated") || json_true(a, "invert")) {
                spk_err(SPK_ERR_UNSUPPORTED, "%s/%s: pre_tokenizer Split must be behavior Isolated, invert false",
                        c->label, c->file);
                return NULL;
            }
            for (size_t i = 0; i < sizeof k_split_res / sizeof k_split_res[0]; i++)
                if (strcmp(re->valuestring, k_split_res[i].re) == 0) {
                    *ignore_merges = k_split_res[i].ignore_merges;
                    return k_split_res[i].pre;
                }
            spk_err(SPK_ERR_UNSUPPORTED, "%s/%s: pre_tokenizer Split regex '%.200s' is not one we know (known: the "
                    "Llama 3, Qwen2, GPT-4o and Tekken regexes)", c->label, c->file, re->valuestring);
            return NULL;
        }
    }
    char *txt = cJSON_PrintUnformatted(pt);
    spk_err(SPK_ERR_UNSUPPORTED, "%s/%s: pre_tokenizer %.200s is not supported (known: ByteLevel; "
            "Sequence[Digits, ByteLevel]; Sequence[Split(Regex), ByteLevel(use_regex=false)])",
            c->label, c->file, txt ? txt : "?");
    free(txt);
    return NULL;
}

bool spk_hf_bpe_normalizer_ok(const cJSON *n)
{
    if (!n || cJSON_IsNull(n))
        return true;
    const char *t = json_type_str(n);
    if (t && strcmp(t, "NFC") == 0)
        return true;
    if (t && strcmp(t, "Sequence") == 0) {
        const cJSON *seq = cJSON_GetObjectItemCaseSensitive(n, "normalizers");
        if (!cJSON_IsArray(seq))
            return false;
        for (const cJSON *e = seq->child; e; e = e->next)
            if (!spk_hf_bpe_normalizer_ok(e))
                return false;
        return true;
    }
    return false;
}

static bool is_replace(const cJSON *o, const char *from, const char *to)
{
    const char *t = json_type_str(o);
    const cJSON *pat = cJSON_GetObjectItemCaseSensitive(o, "pattern");
    return t && strcmp(t, "Replace") == 0 && cJSON_IsObject(pat) && json_str_eq(pat, "String", from) &&
           json_str_eq(o, "content", to);
}

/* SentencePiece-style: normalizer Sequence[Prepend("▁"), Replace(" ", "▁")] (or without the
 * Prepend), pre_tokenizer null; or normalizer null and pre_tokenizer Metaspace("▁", prepend
 * first/always/never, split false). Sets *prefix (add_space_prefix). */
bool spk_hf_spm_chain_ok(const cJSON *norm, const cJSON *pt, int *prefix, int *mode)
{
    *mode = 0;
    if (norm && !cJSON_IsNull(norm)) {
        if (pt && !cJSON_IsNull(pt))
            return false;
        const char *t = json_type_str(norm);
        if (t && strcmp(t, "Replace") == 0) {
            *prefix = 0;
            return is_replace(norm, " ", SPM_SPACE);
        }
        const cJSON *seq = t && strcmp(t, "Sequence") == 0 ? cJSON_GetObjectItemCaseSensitive(norm, "normalizers") : NULL;
        if (!cJSON_IsArray(seq))
            return false;
        int n = cJSON_GetArraySize(seq);
        const cJSON *a = seq->child;
        if (n == 2 && json_str_eq(a, "type", "Prepend") && json_str_eq(a, "prepend", SPM_SPACE) &&
            is_replace(a->next, " ", SPM_SPACE)) {
            *prefix = 1;
            return true;
        }
        if (n == 1 && is_replace(a, " ", SPM_SPACE)) {
            *prefix = 0;
            return true;
        }
        return false;
    }
    if (!cJSON_IsObject(pt) || !json_str_eq(pt, "type", "Metaspace") || !json_str_eq(pt, "replacement", SPM_SPACE))
        return false;
    const cJSON *split = cJSON_GetObjectItemCaseSensitive(pt, "split");
    if (split && !cJSON_IsFalse(split))
        return false;
    const cJSON *ps = cJSON_GetObjectItemCaseSensitive(pt, "prepend_scheme");
    *mode = 1; /* Metaspace never doubles a space the text starts with */
    if (cJSON_IsString(ps)) {
        if (strcmp(ps->valuestring, "first") == 0)
            *prefix = 1, *mode = 2;
        else if (strcmp(ps->valuestring, "always") == 0)
            *prefix = 1;
        else if (strcmp(ps->valuestring, "never") == 0)
            *prefix = 0;
        else
            return false;
    } else { /* older files: add_prefix_space, which prepends to every fragment */
        *prefix = json_true(pt, "add_prefix_space") ? 1 : 0;
    }
    return true;
}

/* Decoder of a SentencePiece-style tokenizer: Sequence of Replace("▁", " "), ByteFallback, Fuse,
 * Strip(" ", 1, 0); or Metaspace. */
bool spk_hf_spm_decoder_ok(const cJSON *d)
{
    if (!cJSON_IsObject(d))
        return false;
    if (json_str_eq(d, "type", "Metaspace"))
        return json_str_eq(d, "replacement", SPM_SPACE);
    const cJSON *seq = json_str_eq(d, "type", "Sequence") ? cJSON_GetObjectItemCaseSensitive(d, "decoders") : NULL;
    if (!cJSON_IsArray(seq))
        return false;
    for (const cJSON *e = seq->child; e; e = e->next) {
        const char *t = json_type_str(e);
        if (!t)
            return false;
        if (strcmp(t, "ByteFallback") == 0 || strcmp(t, "Fuse") == 0)
            continue;
        if (strcmp(t, "Replace") == 0 && is_replace(e, SPM_SPACE, " "))
            continue;
        if (strcmp(t, "Strip") == 0 && json_str_eq(e, "content", " "))
            continue;
        return false;
    }
    return true;
}

/* add_bos/add_eos implied by a TemplateProcessing post-processor ("single" = [bos] $A [eos]). */
spk_status spk_hf_post_processor(const hf_ctx *c, const cJSON *pp, int *add_bos, int *add_eos, char *bos,
                                 char *eos, size_t cap)
{
    if (!pp || cJSON_IsNull(pp))
        return SPK_OK;
    const char *t = json_type_str(pp);
    if (t && strcmp(t, "ByteLevel") == 0) /* offsets only */
        return SPK_OK;
    if (t && strcmp(t, "Sequence") == 0) {
        const cJSON *seq = cJSON_GetObjectItemCaseSensitive(pp, "processors");
        if (!cJSON_IsArray(seq))
            return spk_err(SPK_ERR_FORMAT, "%s/%s: post_processor Sequence has no processors array", c->label, c->file);
        for (const cJSON *e = seq->child; e; e = e->next) {
            spk_status st = spk_hf_post_processor(c, e, add_bos, add_eos, bos, eos, cap);
            if (st)
                return st;
        }
        return SPK_OK;
    }
    if (!t || strcmp(t, "TemplateProcessing") != 0)
        return spk_err(SPK_ERR_UNSUPPORTED, "%s/%s: post_processor type '%.64s' is not supported (known: "
                       "TemplateProcessing, ByteLevel, Sequence)", c->label, c->file, t ? t : "(none)");
    const cJSON *single = cJSON_GetObjectItemCaseSensitive(pp, "single");
    if (!cJSON_IsArray(single))
        return spk_err(SPK_ERR_FORMAT, "%s/%s: post_processor.single is not an array", c->label, c->file);
    int n = cJSON_GetArraySize(single), seq_at = -1, i = 0;
    const char *first = NULL, *last = NULL;
    for (const cJSON *e = single->child; e; e = e->next, i++) {
        const cJSON *sp = cJSON_GetObjectItemCaseSensitive(e, "SpecialToken");
        const cJSON *sq = cJSON_GetObjectItemCaseSensitive(e, "Sequence");
        if (cJSON_IsObject(sq)) {
            if (seq_at >= 0)
                return spk_err(SPK_ERR_UNSUPPORTED, "%s/%s: post_processor.single holds two sequences", c->label,
                               c->file);
            seq_at = i;
            continue;
        }
        const cJSON *id = cJSON_IsObject(sp) ? cJSON_GetObjectItemCaseSensitive(sp, "id") : NULL;
        if (!cJSON_IsString(id))
            return spk_err(SPK_ERR_FORMAT, "%s/%s: post_processor.single entry %d is neither a Sequence nor a "
                           "SpecialToken with an id", c->label, c->file, i);
        if (seq_at < 0 && !first)
            first = id->valuestring;
        if (seq_at >= 0)
            last = id->valuestring;
        if (seq_at < 0 && i > 0)
            return spk_err(SPK_ERR_UNSUPPORTED, "%s/%s: post_processor.single puts %d tokens before the text",
                           c->label, c->file, i + 1);
        if (seq_at >= 0 && i != n - 1)
            return spk_err(SPK_ERR_UNSUPPORTED, "%s/%s: post_processor.single puts several tokens after the text",
                           c->label, c->file);
    }
    if (seq_at < 0)
        return spk_err(SPK_ERR_FORMAT, "%s/%s: post_processor.single has no $A sequence", c->label, c->file);
    *add_bos = first != NULL;
    *add_eos = last != NULL;
    if (first)
        snprintf(bos, cap, "%s", first);
    if (last)
        snprintf(eos, cap, "%s", last);
    return SPK_OK;
}

