/*
 * GGUF adapter for the tokenizer: reads tokenizer.ggml.* metadata into a spk_tok_spec and
 * builds the tokenizer from it.
 */
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "model/tok_internal.h"

/* Optional token id key: absent -> -1; present -> must be an integer that fits. */
static spk_status opt_id(const spk_gguf_file *f, const char *key, int32_t *out)
{
    *out = -1;
    if (!spk_gguf_find(f, key))
        return SPK_OK;
    int64_t v;
    spk_status st = spk_gguf_get_i64(f, key, &v);
    if (st != SPK_OK)
        return st;
    if (v < -1 || v > INT32_MAX)
        return spk_err(SPK_ERR_FORMAT, "%s: %s is %lld, not a token id", f->path, key, (long long)v);
    *out = (int32_t)v;
    return SPK_OK;
}

static spk_status opt_bool(const spk_gguf_file *f, const char *key, int *out)
{
    *out = -1;
    if (!spk_gguf_find(f, key))
        return SPK_OK;
    bool b;
    spk_status st = spk_gguf_get_bool(f, key, &b);
    if (st == SPK_OK)
        *out = b;
    return st;
}

/* Copy a metadata string into a NUL-terminated buffer. */
static spk_status get_cstr(const spk_gguf_file *f, const char *key, char *dst, size_t cap)
{
    spk_gguf_str s;
    spk_status st = spk_gguf_get_str(f, key, &s);
    if (st != SPK_OK)
        return st;
    if (s.len >= cap)
        return spk_err(SPK_ERR_UNSUPPORTED, "%s: %s is %llu bytes long ('%.*s...'), not a known value",
                       f->path, key, (unsigned long long)s.len, 32, s.ptr);
    memcpy(dst, s.ptr, s.len);
    dst[s.len] = '\0';
    if (memchr(dst, '\0', s.len))
        return spk_err(SPK_ERR_FORMAT, "%s: %s contains a NUL byte", f->path, key);
    return SPK_OK;
}

/* Read a string array into spk_tok_str entries pointing into the mapping. */
static spk_status read_strs(const spk_gguf_file *f, const spk_gguf_kv *arr, const char *key,
                            spk_tok_str **out)
{
    uint64_t n = arr->v.arr.count;
    spk_tok_str *v = malloc((n ? n : 1) * sizeof *v);
    if (!v)
        return spk_err(SPK_ERR_NOMEM, "%s: out of memory for %llu entries of %s", f->path,
                       (unsigned long long)n, key);
    uint64_t pos = 0;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t before = pos;
        spk_gguf_str s = spk_gguf_arr_str_next(arr, &pos);
        if (pos == before) {
            free(v);
            return spk_err(SPK_ERR_FORMAT, "%s: %s entry %llu of %llu is truncated", f->path, key,
                           (unsigned long long)i, (unsigned long long)n);
        }
        v[i].ptr = s.ptr;
        v[i].len = (size_t)s.len;
    }
    *out = v;
    return SPK_OK;
}

spk_status spk_tok_load(const spk_gguf_file *f, int64_t n_vocab, spk_tok **out)
{
    return spk_tok_load_pre(f, n_vocab, NULL, out);
}

spk_status spk_tok_load_pre(const spk_gguf_file *f, int64_t n_vocab, const char *pre_override, spk_tok **out)
{
    if (!out)
        return spk_err(SPK_ERR_INVALID_ARG, "spk_tok_load: out is NULL");
    *out = NULL;
    if (!f)
        return spk_err(SPK_ERR_INVALID_ARG, "spk_tok_load: NULL file");
    char model[64], pre[64] = "default";
    spk_status st;
    if ((st = get_cstr(f, "tokenizer.ggml.model", model, sizeof model)))
        return st;
    if (spk_gguf_find(f, "tokenizer.ggml.pre") &&
        (st = get_cstr(f, "tokenizer.ggml.pre", pre, sizeof pre)))
        return st;

    spk_tok_spec spec;
    spk_tok_spec_init(&spec);
    spec.model = model;
    spec.pre = pre_override ? pre_override : pre;
    spec.n_vocab = n_vocab;
    const bool spm = strcmp(model, "llama") == 0;
    if (!spm && strcmp(model, "gpt2") != 0)
        return spk_tok_new(&spec, out); /* reports the unsupported model */

    const spk_gguf_kv *tokens = NULL, *types = NULL, *merges = NULL;
    spk_tok_str *tok_strs = NULL, *merge_strs = NULL;
    int32_t *type_vals = NULL, *eog_vals = NULL;
    float *score_vals = NULL;
    if ((st = spk_gguf_get_arr(f, "tokenizer.ggml.tokens", GGUF_STRING, &tokens)))
        goto done;
    if ((st = read_strs(f, tokens, "tokenizer.ggml.tokens", &tok_strs)))
        goto done;
    spec.n_tokens = (size_t)tokens->v.arr.count;
    spec.tokens = tok_strs;

    if (spk_gguf_find(f, "tokenizer.ggml.token_type")) {
        if ((st = spk_gguf_get_arr(f, "tokenizer.ggml.token_type", GGUF_VTYPE_COUNT, &types)))
            goto done;
        if (types->v.arr.count != tokens->v.arr.count) {
            st = spk_err(SPK_ERR_FORMAT, "%s: tokenizer.ggml.token_type has %llu entries but there are %llu tokens",
                         f->path, (unsigned long long)types->v.arr.count,
                         (unsigned long long)tokens->v.arr.count);
            goto done;
        }
        type_vals = malloc((spec.n_tokens ? spec.n_tokens : 1) * sizeof *type_vals);
        if (!type_vals) {
            st = spk_err(SPK_ERR_NOMEM, "%s: out of memory for token types", f->path);
            goto done;
        }
        for (size_t i = 0; i < spec.n_tokens; i++) {
            int64_t t;
            if (!spk_gguf_arr_int(types, i, &t) || t < INT32_MIN || t > INT32_MAX) {
                st = spk_err(SPK_ERR_FORMAT, "%s: tokenizer.ggml.token_type entry %zu is not a small integer",
                             f->path, i);
                goto done;
            }
            type_vals[i] = (int32_t)t;
        }
        spec.token_types = type_vals;
    }
    if (spk_gguf_find(f, "tokenizer.ggml.merges")) {
        if ((st = spk_gguf_get_arr(f, "tokenizer.ggml.merges", GGUF_STRING, &merges)))
            goto done;
        if ((st = read_strs(f, merges, "tokenizer.ggml.merges", &merge_strs)))
            goto done;
        spec.n_merges = (size_t)merges->v.arr.count;
        spec.merges = merge_strs;
    }
    if (spm && spk_gguf_find(f, "tokenizer.ggml.scores")) {
        const spk_gguf_kv *sc;
        if ((st = spk_gguf_get_arr(f, "tokenizer.ggml.scores", GGUF_VTYPE_COUNT, &sc)))
            goto done;
        if (sc->v.arr.count != tokens->v.arr.count) {
            st = spk_err(SPK_ERR_FORMAT, "%s: tokenizer.ggml.scores has %llu entries but there are %llu tokens",
                         f->path, (unsigned long long)sc->v.arr.count, (unsigned long long)tokens->v.arr.count);
            goto done;
        }
        score_vals = malloc((spec.n_tokens ? spec.n_tokens : 1) * sizeof *score_vals);
        if (!score_vals) {
            st = spk_err(SPK_ERR_NOMEM, "%s: out of memory for token scores", f->path);
            goto done;
        }
        for (size_t i = 0; i < spec.n_tokens; i++) {
            double d;
            if (!spk_gguf_arr_float(sc, i, &d)) {
                st = spk_err(SPK_ERR_FORMAT, "%s: tokenizer.ggml.scores entry %zu is not a number", f->path, i);
                goto done;
            }
            score_vals[i] = (float)d;
        }
        spec.scores = score_vals;
    }
    if (spm && (st = opt_bool(f, "tokenizer.ggml.add_space_prefix", &spec.add_space_prefix)))
        goto done;
    if (spm && spk_gguf_find(f, "tokenizer.ggml.spm_prefix_mode")) { /* ours: HF Metaspace placement */
        int64_t m;
        if ((st = spk_gguf_get_i64(f, "tokenizer.ggml.spm_prefix_mode", &m)))
            goto done;
        if (m < 0 || m > 2) {
            st = spk_err(SPK_ERR_FORMAT, "%s: tokenizer.ggml.spm_prefix_mode is %lld (valid: 0..2)", f->path, (long long)m);
            goto done;
        }
        spec.spm_prefix_mode = (int)m;
    }
    if ((st = opt_id(f, "tokenizer.ggml.bos_token_id", &spec.bos)) ||
        (st = opt_id(f, "tokenizer.ggml.eos_token_id", &spec.eos)) ||
        (st = opt_id(f, "tokenizer.ggml.eot_token_id", &spec.eot)) ||
        (st = opt_id(f, "tokenizer.ggml.eom_token_id", &spec.eom)) ||
        (st = opt_bool(f, "tokenizer.ggml.add_bos_token", &spec.add_bos)) ||
        (st = opt_bool(f, "tokenizer.ggml.add_eos_token", &spec.add_eos)))
        goto done;
    if (spk_gguf_find(f, "tokenizer.ggml.eog_token_ids")) { /* ours: extra end-of-generation ids */
        const spk_gguf_kv *eg;
        if ((st = spk_gguf_get_arr(f, "tokenizer.ggml.eog_token_ids", GGUF_VTYPE_COUNT, &eg)))
            goto done;
        size_t ne = (size_t)eg->v.arr.count;
        if (ne > spec.n_tokens) {
            st = spk_err(SPK_ERR_FORMAT, "%s: tokenizer.ggml.eog_token_ids has %zu entries, more than the %zu tokens",
                         f->path, ne, spec.n_tokens);
            goto done;
        }
        eog_vals = malloc((ne ? ne : 1) * sizeof *eog_vals);
        if (!eog_vals) {
            st = spk_err(SPK_ERR_NOMEM, "%s: out of memory for end-of-generation ids", f->path);
            goto done;
        }
        for (size_t i = 0; i < ne; i++) {
            int64_t v;
            if (!spk_gguf_arr_int(eg, i, &v) || v < 0 || v > INT32_MAX) {
                st = spk_err(SPK_ERR_FORMAT, "%s: tokenizer.ggml.eog_token_ids entry %zu is not a token id",
                             f->path, i);
                goto done;
            }
            eog_vals[i] = (int32_t)v;
        }
        spec.eog_ids = eog_vals;
        spec.n_eog = ne;
    }
    if (spm) { /* llama.cpp's SentencePiece defaults when the keys are absent */
        if (!spk_gguf_find(f, "tokenizer.ggml.bos_token_id") && spec.n_tokens > 1)
            spec.bos = 1;
        if (!spk_gguf_find(f, "tokenizer.ggml.eos_token_id") && spec.n_tokens > 2)
            spec.eos = 2;
    }
    st = spk_tok_new(&spec, out);
    if (st != SPK_OK)
        spk_err_prefix(st, "%s", f->path);
done:
    free(tok_strs);
    free(merge_strs);
    free(type_vals);
    free(eog_vals);
    free(score_vals);
    return st;
}
