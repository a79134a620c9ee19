/*
 * Hugging Face tokenizer files -> spk_tok_spec: tokenizer.json (model, added tokens, normalizer,
 * pre-tokenizer, decoder, post-processor), tokenizer_config.json and generation_config.json.
 * See hf_tok.h for what is accepted. Every JSON value is type- and range-checked; errors name the
 * file and the item.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/error.h"
#include "model/hf_tok_internal.h"

/* Limits: far above any published tokenizer, low enough that a malformed file cannot make us
 * allocate without bound. */
#define HF_MAX_FILE ((size_t)1 << 30)      /* bytes of one JSON file */
#define HF_MAX_TOKENS ((size_t)1 << 24)    /* vocabulary entries */
#define HF_MAX_TOKEN_LEN ((size_t)1 << 16) /* bytes of one token's text */

/* Owned storage behind spk_hf_tok.priv. */
typedef struct hf_priv {
    spk_tok_str *tokens;
    int32_t *types;
    spk_tok_str *merges;
    size_t n_merges;
    float *scores;
    char *arena;               /* token and merge texts */
    size_t arena_len, arena_cap;
    size_t *tok_off;           /* arena offset of each token text while building */
    size_t *merge_off;
    bool *filled;
    size_t *sorted;            /* token ids ordered by text (lookups by text) */
    char model[8], pre[16];
} hf_priv;

static spk_status arena_add(hf_ctx *c, const char *s, size_t n, size_t *off)
{
    hf_priv *p = c->p;
    if (p->arena_len + n + 1 > p->arena_cap) {
        size_t cap = p->arena_cap ? p->arena_cap : 1 << 16;
        while (cap < p->arena_len + n + 1)
            cap *= 2;
        char *a = realloc(p->arena, cap);
        if (!a)
            return spk_err(SPK_ERR_NOMEM, "%s: out of memory for token texts (%zu bytes)", c->label, cap);
        p->arena = a;
        p->arena_cap = cap;
    }
    *off = p->arena_len;
    if (n)
        memcpy(p->arena + p->arena_len, s, n);
    p->arena[p->arena_len + n] = '\0';
    p->arena_len += n + 1;
    return SPK_OK;
}

/* ---- JSON helpers --------------------------------------------------------------------------- */

/* item as an integer in [lo, hi]; FORMAT naming `what` otherwise. */
static spk_status json_int(const hf_ctx *c, const cJSON *item, const char *what, int64_t lo, int64_t hi,
                           int64_t *out)
{
    if (!cJSON_IsNumber(item))
        return spk_err(SPK_ERR_FORMAT, "%s/%s: %s is not a number", c->label, c->file, what);
    double d = item->valuedouble;
    if (!isfinite(d) || d != floor(d) || d < (double)lo || d > (double)hi)
        return spk_err(SPK_ERR_FORMAT, "%s/%s: %s is %g, not an integer in [%lld, %lld]", c->label, c->file,
                       what, d, (long long)lo, (long long)hi);
    *out = (int64_t)d;
    return SPK_OK;
}

/* Optional bool: absent or null -> *out unchanged. */
static spk_status json_opt_bool(const hf_ctx *c, const cJSON *obj, const char *key, int *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsNull(v))
        return SPK_OK;
    if (!cJSON_IsBool(v))
        return spk_err(SPK_ERR_FORMAT, "%s/%s: %s is not true/false", c->label, c->file, key);
    *out = cJSON_IsTrue(v) ? 1 : 0;
    return SPK_OK;
}

static spk_status parse_json(const hf_ctx *c, const char *text, size_t len, cJSON **out)
{
    *out = NULL;
    if (len > HF_MAX_FILE)
        return spk_err(SPK_ERR_FORMAT, "%s/%s: %zu bytes (limit %zu)", c->label, c->file, len, HF_MAX_FILE);
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(text, len, &end, false);
    if (!j) {
        size_t at = end && end >= text && end <= text + len ? (size_t)(end - text) : 0;
        return spk_err(SPK_ERR_FORMAT, "%s/%s: not valid JSON (error near byte %zu of %zu)", c->label, c->file,
                       at, len);
    }
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        return spk_err(SPK_ERR_FORMAT, "%s/%s: the top level is not a JSON object", c->label, c->file);
    }
    *out = j;
    return SPK_OK;
}

/* ---- vocabulary ----------------------------------------------------------------------------- */

static spk_status set_token(hf_ctx *c, size_t id, const char *s, size_t len, int32_t type, const char *what)
{
    hf_priv *p = c->p;
    if (len == 0)
        return spk_err(SPK_ERR_FORMAT, "%s/%s: %s id %zu has empty text", c->label, c->file, what, id);
    if (len > HF_MAX_TOKEN_LEN)
        return spk_err(SPK_ERR_FORMAT, "%s/%s: %s id %zu is %zu bytes long ('%.32s...'; limit %zu)", c->label,
                       c->file, what, id, len, s, HF_MAX_TOKEN_LEN);
    spk_status st = arena_add(c, s, len, &p->tok_off[id]);
    if (st)
        return st;
    p->tokens[id].len = len;
    p->types[id] = type;
    p->filled[id] = true;
    return SPK_OK;
}

static int cmp_tok_text(const void *a, const void *b, void *ctx)
{
    const hf_priv *p = ctx;
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    size_t lx = p->tokens[x].len, ly = p->tokens[y].len;
    int r = memcmp(p->arena + p->tok_off[x], p->arena + p->tok_off[y], lx < ly ? lx : ly);
    if (r)
        return r;
    return lx < ly ? -1 : lx > ly ? 1 : (x < y ? -1 : x > y);
}

/* Two ids with the same text: FORMAT naming both. */
static spk_status check_unique(hf_ctx *c)
{
    hf_priv *p = c->p;
    size_t *ix = malloc((c->n ? c->n : 1) * sizeof *ix);
    if (!ix)
        return spk_err(SPK_ERR_NOMEM, "%s: out of memory", c->label);
    for (size_t i = 0; i < c->n; i++)
        ix[i] = i;
    qsort_r(ix, c->n, sizeof *ix, cmp_tok_text, p);
    spk_status st = SPK_OK;
    for (size_t i = 1; i < c->n; i++) {
        size_t a = ix[i - 1], b = ix[i];
        if (p->tokens[a].len == p->tokens[b].len &&
            memcmp(p->arena + p->tok_off[a], p->arena + p->tok_off[b], p->tokens[a].len) == 0) {
            st = spk_err(SPK_ERR_FORMAT, "%s/%s: token '%.64s' has two ids, %zu and %zu", c->label, c->file,
                         p->arena + p->tok_off[a], a < b ? a : b, a < b ? b : a);
            break;
        }
    }
    p->sorted = ix;
    return st;
}

/* Id of the token whose text is the n bytes at s, or -1 (binary search in p->sorted). */
static int64_t find_text(const hf_ctx *c, const char *s, size_t n)
{
    const hf_priv *p = c->p;
    size_t lo = 0, hi = c->n;
    while (lo < hi) { /* first index whose text >= s */
        size_t mid = lo + (hi - lo) / 2, t = p->sorted[mid];
        size_t lt = p->tokens[t].len;
        int cmp = memcmp(p->arena + p->tok_off[t], s, lt < n ? lt : n);
        if (cmp == 0)
            cmp = lt < n ? -1 : lt > n;
        if (cmp < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == c->n || p->tokens[p->sorted[lo]].len != n || memcmp(p->arena + p->tok_off[p->sorted[lo]], s, n) != 0)
        return -1;
    return (int64_t)p->sorted[lo];
}

static int64_t find_token(const hf_ctx *c, const char *s)
{
    return find_text(c, s, strlen(s));
}

static bool is_byte_token(const char *s, size_t n)
{
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>')
        return false;
    for (int k = 3; k < 5; k++)
        if (!((s[k] >= '0' && s[k] <= '9') || (s[k] >= 'A' && s[k] <= 'F')))
            return false;
    return true;
}

static spk_status read_vocab(hf_ctx *c, const cJSON *model, const cJSON *added, bool spm, const char *unk)
{
    hf_priv *p = c->p;
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    if (!cJSON_IsObject(vocab))
        return spk_err(SPK_ERR_FORMAT, "%s/%s: model.vocab is not an object", c->label, c->file);
    if (added && !cJSON_IsArray(added))
        return spk_err(SPK_ERR_FORMAT, "%s/%s: added_tokens is not an array", c->label, c->file);
    size_t nv = 0, na = 0;
    for (const cJSON *e = vocab->child; e; e = e->next)
        nv++;
    for (const cJSON *e = added ? added->child : NULL; e; e = e->next)
        na++;
    if (nv == 0)
        return spk_err(SPK_ERR_FORMAT, "%s/%s: model.vocab is empty", c->label, c->file);
    if (nv + na > HF_MAX_TOKENS)
        return spk_err(SPK_ERR_FORMAT, "%s/%s: %zu vocabulary + %zu added tokens (limit %zu)", c->label, c->file,
                       nv, na, HF_MAX_TOKENS);
    /* ids must be dense, so none can reach nv + na */
    const int64_t id_hi = (int64_t)(nv + na) - 1;
    int64_t max_id = -1, id;
    spk_status st;
    for (const cJSON *e = vocab->child; e; e = e->next) {
        char what[96];
        snprintf(what, sizeof what, "model.vocab['%.48s']", e->string ? e->string : "");
        if ((st = json_int(c, e, what, 0, id_hi, &id)))
            return st;
        if (id > max_id)
            max_id = id;
    }
    for (const cJSON *e = added ? added->child : NULL; e; e = e->next) {
        if (!cJSON_IsObject(e))
            return spk_err(SPK_ERR_FORMAT, "%s/%s: an added_tokens entry is not an object", c->label, c->file);
        if ((st = json_int(c, cJSON_GetObjectItemCaseSensitive(e, "id"), "added_tokens[].id", 0, id_hi, &id)))
            return st;
        if (id > max_id)
            max_id = id;
    }
    c->n = (size_t)max_id + 1;
    p->tokens = calloc(c->n, sizeof *p->tokens);
    p->types = malloc(c->n * sizeof *p->types);
    p->tok_off = calloc(c->n, sizeof *p->tok_off);
    p->filled = calloc(c->n, sizeof *p->filled);
    if (!p->tokens || !p->types || !p->tok_off || !p->filled)
        return spk_err(SPK_ERR_NOMEM, "%s: out of memory for %zu tokens", c->label, c->n);

    for (const cJSON *e = vocab->child; e; e = e->next) {
        size_t i = (size_t)e->valuedouble;
        if (p->filled[i])
            return spk_err(SPK_ERR_FORMAT, "%s/%s: model.vocab gives id %zu to two tokens ('%.64s' and '%.64s')",
                           c->label, c->file, i, p->arena + p->tok_off[i], e->string ? e->string : "");
        const char *s = e->string ? e->string : "";
        size_t len = strlen(s);
        int32_t type = SPK_TOKTYPE_NORMAL;
        if (spm && is_byte_token(s, len))
            type = SPK_TOKTYPE_BYTE;
        else if (spm && unk && strcmp(s, unk) == 0)
            type = SPK_TOKTYPE_UNKNOWN;
        if ((st = set_token(c, i, s, len, type, "model.vocab token")))
            return st;
    }
    bool *seen = calloc(c->n, 1);
    if (!seen)
        return spk_err(SPK_ERR_NOMEM, "%s: out of memory", c->label);
    st = SPK_OK;
    for (const cJSON *e = added ? added->child : NULL; e && !st; e = e->next) {
        size_t i = (size_t)cJSON_GetObjectItemCaseSensitive(e, "id")->valuedouble;
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(e, "content");
        if (!cJSON_IsString(content)) {
            st = spk_err(SPK_ERR_FORMAT, "%s/%s: added token id %zu has no content string", c->label, c->file, i);
            break;
        }
        const char *s = content->valuestring;
        if (seen[i]) {
            st = spk_err(SPK_ERR_FORMAT, "%s/%s: added_tokens list id %zu twice (second: '%.64s')", c->label,
                         c->file, i, s);
            break;
        }
        seen[i] = true;
        if (!json_unset(e, "lstrip") || !json_unset(e, "rstrip") || !json_unset(e, "single_word")) {
            st = spk_err(SPK_ERR_UNSUPPORTED, "%s/%s: added token '%.64s' (id %zu) sets lstrip/rstrip/single_word, "
                         "which we do not implement", c->label, c->file, s, i);
            break;
        }
        const cJSON *special = cJSON_GetObjectItemCaseSensitive(e, "special");
        if (special && !cJSON_IsBool(special)) {
            st = spk_err(SPK_ERR_FORMAT, "%s/%s: added token '%.64s': special is not true/false", c->label, c->file, s);
            break;
        }
        int32_t type = cJSON_IsTrue(special) ? SPK_TOKTYPE_CONTROL : SPK_TOKTYPE_USER_DEFINED;
        if (spm && unk && strcmp(s, unk) == 0)
            type = SPK_TOKTYPE_UNKNOWN;
        /* an added token with a vocabulary id takes it over (HF matches and decodes it by content) */
        st = set_token(c, i, s, strlen(s), type, "added token");
    }
    free(seen);
    if (st)
        return st;
    for (size_t i = 0; i < c->n; i++)
        if (!p->filled[i])
            return spk_err(SPK_ERR_FORMAT, "%s/%s: no token has id %zu (ids must be 0..%zu without gaps)", c->label,
                           c->file, i, c->n - 1);
    return check_unique(c);
}

/* ---- merges --------------------------------------------------------------------------------- */

static spk_status read_merges(hf_ctx *c, const cJSON *model)
{
    hf_priv *p = c->p;
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    if (!merges || cJSON_IsNull(merges))
        return SPK_OK;
    if (!cJSON_IsArray(merges))
        return spk_err(SPK_ERR_FORMAT, "%s/%s: model.merges is not an array", c->label, c->file);
    size_t nm = 0;
    for (const cJSON *e = merges->child; e; e = e->next)
        nm++;
    if (nm == 0)
        return SPK_OK;
    p->merges = calloc(nm, sizeof *p->merges);
    p->merge_off = calloc(nm, sizeof *p->merge_off);
    if (!p->merges || !p->merge_off)
        return spk_err(SPK_ERR_NOMEM, "%s: out of memory for %zu merges", c->label, nm);
    size_t r = 0;
    char *buf = NULL;
    size_t cap = 0;
    spk_status st = SPK_OK;
    for (const cJSON *e = merges->child; e && !st; e = e->next, r++) {
        const char *a, *b;
        size_t la, lb;
        if (cJSON_IsString(e)) { /* "left right" */
            const char *s = e->valuestring;
            const char *sp = strchr(s, ' ');
            if (!sp || sp == s || !sp[1] || strchr(sp + 1, ' ')) {
                st = spk_err(SPK_ERR_FORMAT, "%s/%s: merge %zu '%.64s' is not 'left right'", c->label, c->file, r, s);
                break;
            }
            a = s;
            la = (size_t)(sp - s);
            b = sp + 1;
            lb = strlen(b);
        } else if (cJSON_IsArray(e) && cJSON_GetArraySize(e) == 2 && cJSON_IsString(e->child) &&
                   cJSON_IsString(e->child->next)) { /* ["left", "right"] */
            a = e->child->valuestring;
            b = e->child->next->valuestring;
            la = strlen(a);
            lb = strlen(b);
            if (!la || !lb || memchr(a, ' ', la) || memchr(b, ' ', lb)) {
                st = spk_err(SPK_ERR_UNSUPPORTED, "%s/%s: merge %zu ['%.32s', '%.32s'] has an empty or space-holding "
                             "part, which the 'left right' form cannot hold", c->label, c->file, r, a, b);
                break;
            }
        } else {
            st = spk_err(SPK_ERR_FORMAT, "%s/%s: merge %zu is neither \"left right\" nor [\"left\", \"right\"]",
                         c->label, c->file, r);
            break;
        }
        if (la + lb + 1 > cap) {
            cap = 2 * (la + lb + 1);
            char *nb = realloc(buf, cap);
            if (!nb) {
                st = spk_err(SPK_ERR_NOMEM, "%s: out of memory", c->label);
                break;
            }
            buf = nb;
        }
        memcpy(buf, a, la);
        memcpy(buf + la, b, lb);
        int64_t ia = find_text(c, a, la), ib = find_text(c, b, lb), ic = find_text(c, buf, la + lb);
        if (ia < 0 || ib < 0) {
            st = spk_err(SPK_ERR_FORMAT, "%s/%s: merge %zu ('%.*s' + '%.*s') names an unknown token '%.*s'",
                         c->label, c->file, r, (int)(la > 32 ? 32 : la), a, (int)(lb > 32 ? 32 : lb), b,
                         (int)(ia < 0 ? (la > 64 ? 64 : la) : (lb > 64 ? 64 : lb)), ia < 0 ? a : b);
            break;
        }
        if (ic < 0) {
            st = spk_err(SPK_ERR_FORMAT, "%s/%s: merge %zu ('%.*s' + '%.*s') makes '%.*s', which is not a token",
                         c->label, c->file, r, (int)(la > 32 ? 32 : la), a, (int)(lb > 32 ? 32 : lb), b,
                         (int)(la + lb > 64 ? 64 : la + lb), buf);
            break;
        }
        memcpy(buf, a, la);
        buf[la] = ' ';
        memcpy(buf + la + 1, b, lb);
        if ((st = arena_add(c, buf, la + lb + 1, &p->merge_off[r])))
            break;
        p->merges[r].len = la + lb + 1;
    }
    free(buf);
    if (!st)
        p->n_merges = nm;
    return st;
}

/* ---- SentencePiece scores ------------------------------------------------------------------- */

/* HF's BPE form of a SentencePiece model has merges instead of scores; the merges were made from
 * the scores (transformers' SentencePieceExtractor: every split of a piece into two pieces, ordered
 * by the piece's score), so the piece a merge makes scores minus the rank of its first merge and
 * the SentencePiece algorithm (best-scoring adjacent pair first) merges in the same order. Pieces
 * no merge makes (characters, bytes, specials) score below every merged piece. */
static spk_status spm_scores(hf_ctx *c)
{
    hf_priv *p = c->p;
    p->scores = malloc(c->n * sizeof *p->scores);
    if (!p->scores)
        return spk_err(SPK_ERR_NOMEM, "%s: out of memory for %zu scores", c->label, c->n);
    const size_t nm = p->n_merges;
    for (size_t i = 0; i < c->n; i++)
        p->scores[i] = -1e9f;
    char *cat = NULL;
    spk_status st = SPK_OK;
    for (size_t r = 0; r < nm; r++) {
        const char *m = p->arena + p->merge_off[r];
        size_t ml = p->merges[r].len;
        const char *sp = memchr(m, ' ', ml);
        size_t la = (size_t)(sp - m), lb = ml - la - 1, lc = la + lb;
        free(cat);
        cat = malloc(lc + 1);
        if (!cat) {
            st = spk_err(SPK_ERR_NOMEM, "%s: out of memory", c->label);
            break;
        }
        memcpy(cat, m, la);
        memcpy(cat + la, sp + 1, lb);
        int64_t id = find_text(c, cat, lc);
        if (id < 0) { /* read_merges checked this */
            st = spk_err(SPK_ERR_INTERNAL, "%s/%s: merge %zu makes no token", c->label, c->file, r);
            break;
        }
        float s = -(float)r;
        if (p->scores[id] < s)
            p->scores[id] = s;
    }
    free(cat);
    return st;
}

/* ---- tokenizer_config.json / generation_config.json ----------------------------------------- */

/* bos_token / eos_token: a string, an AddedToken object {"content": ...}, or null/absent. */
static spk_status config_token(hf_ctx *c, const cJSON *cfg, const char *key, int32_t *id)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    if (!v || cJSON_IsNull(v))
        return SPK_OK;
    if (cJSON_IsObject(v))
        v = cJSON_GetObjectItemCaseSensitive(v, "content");
    if (!cJSON_IsString(v))
        return spk_err(SPK_ERR_FORMAT, "%s/%s: %s is neither a string nor an object with a content string",
                       c->label, c->file, key);
    int64_t i = find_token(c, v->valuestring);
    if (i < 0)
        return spk_err(SPK_ERR_FORMAT, "%s/%s: %s '%.64s' is not a token of tokenizer.json", c->label, c->file, key,
                       v->valuestring);
    *id = (int32_t)i;
    return SPK_OK;
}

static int cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return x < y ? -1 : x > y;
}

static spk_status add_eog(hf_ctx *c, spk_hf_tok *out, int32_t id)
{
    (void)c;
    for (size_t i = 0; i < out->n_eog; i++)
        if (out->eog_ids[i] == id)
            return SPK_OK;
    int32_t *e = realloc(out->eog_ids, (out->n_eog + 1) * sizeof *e);
    if (!e)
        return spk_err(SPK_ERR_NOMEM, "%s: out of memory", c->label);
    out->eog_ids = e;
    e[out->n_eog++] = id;
    return SPK_OK;
}

static spk_status read_config(hf_ctx *c, const cJSON *cfg, spk_hf_tok *out)
{
    spk_status st;
    c->file = "tokenizer_config.json";
    if ((st = config_token(c, cfg, "bos_token", &out->spec.bos)) ||
        (st = config_token(c, cfg, "eos_token", &out->spec.eos)) ||
        (st = json_opt_bool(c, cfg, "add_bos_token", &out->spec.add_bos)) ||
        (st = json_opt_bool(c, cfg, "add_eos_token", &out->spec.add_eos)))
        return st;
    const cJSON *ct = cJSON_GetObjectItemCaseSensitive(cfg, "chat_template");
    const char *tmpl = NULL;
    if (cJSON_IsString(ct)) {
        tmpl = ct->valuestring;
    } else if (cJSON_IsArray(ct)) {
        for (const cJSON *e = ct->child; e; e = e->next) {
            const cJSON *name = cJSON_GetObjectItemCaseSensitive(e, "name");
            const cJSON *t = cJSON_GetObjectItemCaseSensitive(e, "template");
            if (!cJSON_IsString(name) || !cJSON_IsString(t))
                return spk_err(SPK_ERR_FORMAT, "%s/%s: a chat_template list entry lacks a name or template string",
                               c->label, c->file);
            if (strcmp(name->valuestring, "default") == 0)
                tmpl = t->valuestring;
        }
    } else if (ct && !cJSON_IsNull(ct)) {
        return spk_err(SPK_ERR_FORMAT, "%s/%s: chat_template is neither a string nor a list of named templates",
                       c->label, c->file);
    }
    if (tmpl && !(out->chat_template = strdup(tmpl)))
        return spk_err(SPK_ERR_NOMEM, "%s: out of memory", c->label);
    return SPK_OK;
}

static spk_status read_generation(hf_ctx *c, const cJSON *gen, spk_hf_tok *out, int32_t *bos, int32_t *eos)
{
    c->file = "generation_config.json";
    int64_t v;
    spk_status st;
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(gen, "bos_token_id");
    if (b && !cJSON_IsNull(b)) {
        if ((st = json_int(c, b, "bos_token_id", 0, (int64_t)c->n - 1, &v)))
            return st;
        *bos = (int32_t)v;
    }
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(gen, "eos_token_id");
    if (!e || cJSON_IsNull(e))
        return SPK_OK;
    if (cJSON_IsArray(e)) {
        if (cJSON_GetArraySize(e) > 1024)
            return spk_err(SPK_ERR_FORMAT, "%s/%s: eos_token_id lists %d ids (limit 1024)", c->label, c->file,
                           cJSON_GetArraySize(e));
        for (const cJSON *x = e->child; x; x = x->next) {
            if ((st = json_int(c, x, "eos_token_id[]", 0, (int64_t)c->n - 1, &v)) || (st = add_eog(c, out, (int32_t)v)))
                return st;
            if (*eos < 0)
                *eos = (int32_t)v;
        }
        return SPK_OK;
    }
    if ((st = json_int(c, e, "eos_token_id", 0, (int64_t)c->n - 1, &v)))
        return st;
    *eos = (int32_t)v;
    return add_eog(c, out, (int32_t)v);
}

/* ---- top level ------------------------------------------------------------------------------ */

static spk_status parse_tokenizer(hf_ctx *c, const cJSON *j, spk_hf_tok *out, char *pp_bos, char *pp_eos,
                                  size_t cap)
{
    hf_priv *p = c->p;
    c->file = "tokenizer.json";
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(j, "model");
    if (!cJSON_IsObject(model))
        return spk_err(SPK_ERR_FORMAT, "%s/%s: no model object", c->label, c->file);
    const char *mt = json_type_str(model);
    if (!mt && cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(model, "vocab")) &&
        cJSON_GetObjectItemCaseSensitive(model, "merges"))
        mt = "BPE"; /* older files leave the type out */
    if (!mt || strcmp(mt, "BPE") != 0)
        return spk_err(SPK_ERR_UNSUPPORTED, "%s/%s: model.type '%.32s' is not supported (only BPE)", c->label,
                       c->file, mt ? mt : "(none)");
    const bool byte_fallback = json_true(model, "byte_fallback");
    if (!json_unset(model, "dropout") && !(cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(model, "dropout")) &&
                                           cJSON_GetObjectItemCaseSensitive(model, "dropout")->valuedouble == 0))
        return spk_err(SPK_ERR_UNSUPPORTED, "%s/%s: model.dropout is set (BPE dropout is not supported)", c->label,
                       c->file);
    if (!json_unset(model, "continuing_subword_prefix") || !json_unset(model, "end_of_word_suffix"))
        return spk_err(SPK_ERR_UNSUPPORTED, "%s/%s: model.continuing_subword_prefix / end_of_word_suffix are not "
                       "supported", c->label, c->file);
    const cJSON *norm = cJSON_GetObjectItemCaseSensitive(j, "normalizer");
    const cJSON *pt = cJSON_GetObjectItemCaseSensitive(j, "pre_tokenizer");
    const cJSON *dec = cJSON_GetObjectItemCaseSensitive(j, "decoder");
    const cJSON *unk = cJSON_GetObjectItemCaseSensitive(model, "unk_token");
    spk_status st;
    if (byte_fallback) { /* SentencePiece-style */
        strcpy(p->model, "llama");
        strcpy(p->pre, "default");
        int prefix = 1, mode = 0;
        if (!spk_hf_spm_chain_ok(norm, pt, &prefix, &mode))
            return spk_err(SPK_ERR_UNSUPPORTED, "%s/%s: byte_fallback BPE with a normalizer/pre_tokenizer other than "
                           "SentencePiece's (Prepend+Replace or Metaspace) is not supported", c->label, c->file);
        if (!spk_hf_spm_decoder_ok(dec))
            return spk_err(SPK_ERR_UNSUPPORTED, "%s/%s: byte_fallback BPE with a decoder other than "
                           "Replace/ByteFallback/Fuse/Strip or Metaspace is not supported", c->label, c->file);
        out->spec.add_space_prefix = prefix;
        out->spec.spm_prefix_mode = mode;
        if (json_true(model, "ignore_merges"))
            return spk_err(SPK_ERR_UNSUPPORTED, "%s/%s: model.ignore_merges with byte_fallback is not supported",
                           c->label, c->file);
    } else {
        strcpy(p->model, "gpt2");
        if (!spk_hf_bpe_normalizer_ok(norm)) {
            const char *t = cJSON_IsObject(norm) ? json_type_str(norm) : NULL;
            return spk_err(SPK_ERR_UNSUPPORTED, "%s/%s: normalizer '%.64s' is not supported (byte-level BPE: none or "
                           "NFC)", c->label, c->file, t ? t : "?");
        }
        bool ignore = false;
        const char *pre = spk_hf_byte_level_pre(c, pt, &ignore);
        if (!pre)
            return SPK_ERR_UNSUPPORTED;
        snprintf(p->pre, sizeof p->pre, "%s", pre);
        if (json_true(model, "ignore_merges") != ignore)
            return spk_err(SPK_ERR_UNSUPPORTED, "%s/%s: model.ignore_merges is %s but our '%s' pre-tokenizer %s merges",
                           c->label, c->file, ignore ? "false" : "true", pre, ignore ? "ignores" : "applies");
        if (!cJSON_IsObject(dec) || !json_str_eq(dec, "type", "ByteLevel"))
            return spk_err(SPK_ERR_UNSUPPORTED, "%s/%s: byte-level BPE needs the ByteLevel decoder", c->label, c->file);
    }
    if ((st = read_vocab(c, model, cJSON_GetObjectItemCaseSensitive(j, "added_tokens"), byte_fallback,
                         cJSON_IsString(unk) ? unk->valuestring : NULL)))
        return st;
    if ((st = read_merges(c, model)))
        return st;
    int add_bos = -1, add_eos = -1;
    if ((st = spk_hf_post_processor(c, cJSON_GetObjectItemCaseSensitive(j, "post_processor"), &add_bos, &add_eos, pp_bos,
                             pp_eos, cap)))
        return st;
    out->spec.add_bos = add_bos;
    out->spec.add_eos = add_eos;
    return SPK_OK;
}

spk_status spk_hf_tok_parse(const char *label, const char *tokenizer_json, size_t tj_len,
                            const char *config_json, size_t cfg_len, const char *gen_json,
                            size_t gen_len, spk_hf_tok *out)
{
    if (!out)
        return spk_err(SPK_ERR_INVALID_ARG, "spk_hf_tok_parse: out is NULL");
    memset(out, 0, sizeof *out);
    if (!tokenizer_json)
        return spk_err(SPK_ERR_INVALID_ARG, "spk_hf_tok_parse: no tokenizer.json text");
    hf_ctx c = {.label = label ? label : "(memory)", .file = "tokenizer.json"};
    hf_priv *p = calloc(1, sizeof *p);
    if (!p)
        return spk_err(SPK_ERR_NOMEM, "%s: out of memory", c.label);
    c.p = p;
    out->priv = p;
    spk_tok_spec_init(&out->spec);
    cJSON *tj = NULL, *cfg = NULL, *gen = NULL;
    char pp_bos[256] = "", pp_eos[256] = "";
    spk_status st = parse_json(&c, tokenizer_json, tj_len, &tj);
    if (!st)
        st = parse_tokenizer(&c, tj, out, pp_bos, pp_eos, sizeof pp_bos);
    cJSON_Delete(tj);
    if (st)
        goto fail;
    /* tokenizer_config's bos/eos, then the tokens the post-processor adds (what HF's
     * encode(add_special_tokens=True) puts there, so they win for bos/eos; a different
     * tokenizer_config eos still ends generation), then generation_config fills what is unset */
    int add_bos = out->spec.add_bos, add_eos = out->spec.add_eos;
    out->spec.add_bos = out->spec.add_eos = -1;
    int32_t pp_bos_id = -1, pp_eos_id = -1;
    if (pp_bos[0] && (pp_bos_id = (int32_t)find_token(&c, pp_bos)) < 0) {
        st = spk_err(SPK_ERR_FORMAT, "%s/tokenizer.json: post_processor names '%.64s', which is not a token", c.label,
                     pp_bos);
        goto fail;
    }
    if (pp_eos[0] && (pp_eos_id = (int32_t)find_token(&c, pp_eos)) < 0) {
        st = spk_err(SPK_ERR_FORMAT, "%s/tokenizer.json: post_processor names '%.64s', which is not a token", c.label,
                     pp_eos);
        goto fail;
    }
    if (config_json) {
        c.file = "tokenizer_config.json";
        if ((st = parse_json(&c, config_json, cfg_len, &cfg)) || (st = read_config(&c, cfg, out)))
            goto fail;
    }
    if (pp_bos_id >= 0)
        out->spec.bos = pp_bos_id;
    if (pp_eos_id >= 0) {
        if (out->spec.eos >= 0 && (st = add_eog(&c, out, out->spec.eos)))
            goto fail;
        out->spec.eos = pp_eos_id;
    }
    /* the post-processor decides what encode adds; tokenizer_config's add_*_token flags are the
     * slow tokenizer's and count only where there is no TemplateProcessing */
    if (add_bos >= 0)
        out->spec.add_bos = add_bos;
    if (add_eos >= 0)
        out->spec.add_eos = add_eos;
    if (out->spec.add_bos < 0)
        out->spec.add_bos = 0;
    if (out->spec.add_eos < 0)
        out->spec.add_eos = 0;
    int32_t gbos = -1, geos = -1;
    if (gen_json) {
        c.file = "generation_config.json";
        if ((st = parse_json(&c, gen_json, gen_len, &gen)) || (st = read_generation(&c, gen, out, &gbos, &geos)))
            goto fail;
    }
    if (out->spec.bos < 0)
        out->spec.bos = gbos;
    if (out->spec.eos < 0)
        out->spec.eos = geos;
    if (out->spec.eos >= 0 && (st = add_eog(&c, out, out->spec.eos)))
        goto fail;
    if (out->n_eog)
        qsort(out->eog_ids, out->n_eog, sizeof *out->eog_ids, cmp_i32);
    if (!strcmp(p->model, "llama") && (st = spm_scores(&c)))
        goto fail;

    for (size_t i = 0; i < c.n; i++)
        p->tokens[i].ptr = p->arena + p->tok_off[i];
    const size_t nm = p->n_merges;
    for (size_t r = 0; r < nm; r++)
        p->merges[r].ptr = p->arena + p->merge_off[r];
    out->spec.model = p->model;
    out->spec.pre = p->pre;
    out->spec.n_tokens = c.n;
    out->spec.tokens = p->tokens;
    out->spec.token_types = p->types;
    out->spec.n_merges = nm;
    out->spec.merges = p->merges;
    out->spec.scores = p->scores;
    out->spec.eog_ids = out->eog_ids;
    out->spec.n_eog = out->n_eog;
    cJSON_Delete(cfg);
    cJSON_Delete(gen);
    return SPK_OK;
fail:
    cJSON_Delete(cfg);
    cJSON_Delete(gen);
    spk_hf_tok_free(out);
    return st;
}

/* Read dir/name: *buf NULL (and OK) if absent and optional. */
static spk_status read_file(const char *dir, const char *name, bool required, char **buf, size_t *len)
{
    *buf = NULL;
    *len = 0;
    char path[4096];
    if (snprintf(path, sizeof path, "%s/%s", dir, name) >= (int)sizeof path)
        return spk_err(SPK_ERR_INVALID_ARG, "%s: directory path too long", dir);
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (errno == ENOENT && !required)
            return SPK_OK;
        return spk_err(errno == ENOENT ? SPK_ERR_NOT_FOUND : SPK_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    }
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        fclose(f);
        return spk_err(SPK_ERR_IO, "%s: not a regular file", path);
    }
    if ((uint64_t)sb.st_size > HF_MAX_FILE) {
        fclose(f);
        return spk_err(SPK_ERR_FORMAT, "%s: %lld bytes (limit %zu)", path, (long long)sb.st_size, HF_MAX_FILE);
    }
    size_t n = (size_t)sb.st_size;
    char *b = malloc(n + 1);
    if (!b) {
        fclose(f);
        return spk_err(SPK_ERR_NOMEM, "%s: out of memory for %zu bytes", path, n);
    }
    size_t got = fread(b, 1, n, f);
    int err = ferror(f);
    fclose(f);
    if (got != n || err) {
        free(b);
        return spk_err(SPK_ERR_IO, "%s: read %zu of %zu bytes", path, got, n);
    }
    b[n] = '\0';
    *buf = b;
    *len = n;
    return SPK_OK;
}

spk_status spk_hf_tok_read(const char *dir, spk_hf_tok *out)
{
    if (!out)
        return spk_err(SPK_ERR_INVALID_ARG, "spk_hf_tok_read: out is NULL");
    memset(out, 0, sizeof *out);
    if (!dir)
        return spk_err(SPK_ERR_INVALID_ARG, "spk_hf_tok_read: dir is NULL");
    char *tj = NULL, *cfg = NULL, *gen = NULL, *jinja = NULL;
    size_t ltj, lcfg, lgen, ljinja;
    spk_status st;
    if ((st = read_file(dir, "tokenizer.json", true, &tj, &ltj)) ||
        (st = read_file(dir, "tokenizer_config.json", false, &cfg, &lcfg)) ||
        (st = read_file(dir, "generation_config.json", false, &gen, &lgen)))
        goto done;
    st = spk_hf_tok_parse(dir, tj, ltj, cfg, lcfg, gen, lgen, out);
    if (st)
        goto done;
    /* newer transformers save the template beside tokenizer_config.json */
    if (!out->chat_template) {
        if ((st = read_file(dir, "chat_template.jinja", false, &jinja, &ljinja))) {
            spk_hf_tok_free(out);
            goto done;
        }
        if (jinja && memchr(jinja, '\0', ljinja)) {
            st = spk_err(SPK_ERR_FORMAT, "%s/chat_template.jinja: contains a NUL byte", dir);
            spk_hf_tok_free(out);
            goto done;
        }
        out->chat_template = jinja;
        jinja = NULL;
    }
done:
    free(tj);
    free(cfg);
    free(gen);
    free(jinja);
    return st;
}

void spk_hf_tok_free(spk_hf_tok *t)
{
    if (!t)
        return;
    hf_priv *p = t->priv;
    if (p) {
        free(p->tokens);
        free(p->types);
        free(p->merges);
        free(p->scores);
        free(p->arena);
        free(p->tok_off);
        free(p->merge_off);
        free(p->filled);
        free(p->sorted);
        free(p);
    }
    free(t->chat_template);
    free(t->eog_ids);
    memset(t, 0, sizeof *t);
}
