/*
 * Building and validating the tokenizer's vocabulary: token texts and decoded pieces, the
 * text->id and merge-pair hash maps, special tokens and the end-of-generation set.
 */
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "model/tok_internal.h"

/* ---- GPT-2 byte <-> unicode ------------------------------------------------------------- */

/* Bytes that are printable in Latin-1 map to themselves; the other 68 map to 256, 257, ... in
 * byte order. */
static bool byte_is_direct(unsigned b)
{
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

uint32_t spk_tok_byte_to_cp(uint8_t b)
{
    if (byte_is_direct(b))
        return b;
    if (b <= 0x20)
        return 256 + b;                 /* 0x00..0x20 -> 256..288 */
    if (b == 0x7F)
        return 256 + 33;
    if (b <= 0xA0)
        return 256 + 34 + (b - 0x80u);  /* 0x80..0xA0 -> 290..322 */
    return 256 + 67;                    /* 0xAD */
}

int spk_tok_cp_to_byte(uint32_t cp)
{
    if (cp < 256)
        return byte_is_direct(cp) ? (int)cp : -1;
    uint32_t n = cp - 256;
    if (n <= 32)
        return (int)n;
    if (n == 33)
        return 0x7F;
    if (n <= 66)
        return (int)(0x80 + n - 34);
    return n == 67 ? 0xAD : -1;
}

/* ---- hashing ------------------------------------------------------------------------------ */

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (uint8_t)s[i];
        h *= 0x100000001b3ull;
    }
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 32;
    return h;
}

static uint64_t hash_pair(uint64_t key)
{
    key ^= key >> 31;
    key *= 0x9E3779B97F4A7C15ull;
    key ^= key >> 29;
    return key;
}

static uint64_t pow2_at_least(uint64_t n)
{
    uint64_t p = 16;
    while (p < n)
        p <<= 1;
    return p;
}

int32_t spk_tok_map_find(const spk_tok *tok, const char *s, size_t n)
{
    uint64_t i = hash_bytes(s, n) & tok->map_mask;
    for (;;) {
        uint32_t v = tok->map[i];
        if (v == 0)
            return -1;
        uint32_t id = v - 1;
        uint32_t off = tok->text_off[id], len = tok->text_off[id + 1] - off;
        if (len == n && memcmp(tok->text + off, s, n) == 0)
            return (int32_t)id;
        i = (i + 1) & tok->map_mask;
    }
}

bool spk_tok_pair_find(const spk_tok *tok, int32_t left, int32_t right, uint32_t *rank,
                       int32_t *res)
{
    if (!tok->pair_key || left < 0 || right < 0)
        return false;
    uint64_t key = ((uint64_t)(uint32_t)left << 32) | (uint32_t)right;
    uint64_t i = hash_pair(key) & tok->pair_mask;
    for (;;) {
        uint64_t k = tok->pair_key[i];
        if (k == UINT64_MAX)
            return false;
        if (k == key) {
            *rank = tok->pair_rank[i];
            *res = tok->pair_res[i];
            return true;
        }
        i = (i + 1) & tok->pair_mask;
    }
}

/* ---- building ----------------------------------------------------------------------------- */

void spk_tok_spec_init(spk_tok_spec *spec)
{
    memset(spec, 0, sizeof *spec);
    spec->bos = spec->eos = spec->eot = spec->eom = -1;
    spec->add_bos = spec->add_eos = spec->add_space_prefix = -1;
}

/* Append the bytes of a stored NORMAL-token text with the GPT-2 mapping undone. A code point
 * that is not the image of a byte (or a malformed sequence) is copied through unchanged. */
static size_t decode_stored(const char *s, size_t n, char *dst)
{
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        uint8_t c = (uint8_t)s[i];
        uint32_t cp = 0;
        size_t k = 0;
        if (c < 0x80) {
            cp = c;
            k = 1;
        } else if ((c & 0xE0) == 0xC0 && i + 1 < n && ((uint8_t)s[i + 1] & 0xC0) == 0x80) {
            cp = ((uint32_t)(c & 0x1F) << 6) | ((uint8_t)s[i + 1] & 0x3F);
            k = 2;
        }
        int b = k ? spk_tok_cp_to_byte(cp) : -1;
        if (b >= 0) {
            dst[o++] = (char)b;
            i += k;
        } else {
            dst[o++] = s[i++]; /* copy through byte by byte */
        }
    }
    return o;
}

/* A SentencePiece token's bytes: U+2581 is a space; a BYTE token <0xXX> is that byte. */
static size_t decode_spm(const char *s, size_t n, int type, char *dst)
{
    if (type == SPK_TOKTYPE_BYTE && n == 6 && memcmp(s, "<0x", 3) == 0 && s[5] == '>') {
        int v = 0;
        for (int k = 3; k < 5; k++) {
            char c = s[k];
            v = v * 16 + (c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : c >= 'a' && c <= 'f' ? c - 'a' + 10 : 0);
        }
        dst[0] = (char)v;
        return 1;
    }
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        if (i + 3 <= n && memcmp(s + i, "\xe2\x96\x81", 3) == 0) {
            dst[o++] = ' ';
            i += 3;
        } else {
            dst[o++] = s[i++];
        }
    }
    return o;
}

static int cmp_special(const void *a, const void *b, void *ctx)
{
    const spk_tok *tok = ctx;
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    uint8_t fx = (uint8_t)tok->text[tok->text_off[x]], fy = (uint8_t)tok->text[tok->text_off[y]];
    if (fx != fy)
        return fx < fy ? -1 : 1;
    uint32_t lx = tok->text_off[x + 1] - tok->text_off[x];
    uint32_t ly = tok->text_off[y + 1] - tok->text_off[y];
    if (lx != ly)
        return lx > ly ? -1 : 1;
    return x < y ? -1 : (x > y);
}

/* Tokens that end a turn wherever they appear (as llama.cpp marks them by name). */
static const char *const k_eog_names[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|endoftext|>", "<|eom_id|>", "<|end_of_text|>",
    "<end_of_turn>", "<EOT>", "<end_of_utterance>",
};

static spk_status check_id(const char *what, int32_t id, uint32_t n)
{
    if (id < -1 || id >= (int64_t)n)
        return spk_err(SPK_ERR_FORMAT, "tokenizer: %s token id %d out of range (vocabulary has %u tokens)",
                       what, id, n);
    return SPK_OK;
}

static spk_status build_texts(spk_tok *tok, const spk_tok_spec *spec)
{
    uint32_t n = tok->n_tokens;
    uint64_t total = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (!spec->tokens[i].ptr && spec->tokens[i].len)
            return spk_err(SPK_ERR_INVALID_ARG, "tokenizer: token %u has no text", i);
        total += spec->tokens[i].len;
    }
    if (total >= UINT32_MAX)
        return spk_err(SPK_ERR_FORMAT, "tokenizer: token texts total %llu bytes (limit 4 GiB)",
                       (unsigned long long)total);
    tok->text = malloc(total + 1);
    tok->piece = malloc(total + 1); /* a decoded piece is never longer than its text */
    tok->text_off = malloc(((size_t)n + 1) * sizeof *tok->text_off);
    tok->piece_off = malloc(((size_t)n + 1) * sizeof *tok->piece_off);
    tok->type = malloc(n);
    tok->flags = calloc(n, 1);
    if (!tok->text || !tok->piece || !tok->text_off || !tok->piece_off || !tok->type || !tok->flags)
        return spk_err(SPK_ERR_NOMEM, "tokenizer: out of memory for %u tokens", n);

    uint32_t to = 0, po = 0;
    for (uint32_t i = 0; i < n; i++) {
        int32_t t = spec->token_types ? spec->token_types[i] : SPK_TOKTYPE_NORMAL;
        if (t < SPK_TOKTYPE_UNDEFINED || t > SPK_TOKTYPE_BYTE)
            return spk_err(SPK_ERR_FORMAT, "tokenizer: token %u has type %d (valid: 0..6)", i, t);
        tok->type[i] = (uint8_t)t;
        const char *s = spec->tokens[i].ptr;
        size_t len = spec->tokens[i].len;
        tok->text_off[i] = to;
        tok->piece_off[i] = po;
        if (len)
            memcpy(tok->text + to, s, len);
        to += (uint32_t)len;
        size_t plen;
        switch (t) {
        case SPK_TOKTYPE_CONTROL:
        case SPK_TOKTYPE_USER_DEFINED:
        case SPK_TOKTYPE_UNKNOWN:
            memcpy(tok->piece + po, s, len); /* rendered as stored */
            plen = len;
            break;
        case SPK_TOKTYPE_UNUSED:
            plen = 0;
            break;
        default:
            plen = spec->model && strcmp(spec->model, "llama") == 0 ? decode_spm(s, len, t, tok->piece + po)
                                                                    : decode_stored(s, len, tok->piece + po);
            break;
        }
        po += (uint32_t)plen;
        if (plen > tok->max_piece)
            tok->max_piece = plen;
    }
    tok->text_off[n] = to;
    tok->piece_off[n] = po;
    return SPK_OK;
}

static spk_status build_map(spk_tok *tok)
{
    uint32_t n = tok->n_tokens;
    tok->map_mask = pow2_at_least((uint64_t)n * 2) - 1;
    tok->map = calloc(tok->map_mask + 1, sizeof *tok->map);
    if (!tok->map)
        return spk_err(SPK_ERR_NOMEM, "tokenizer: out of memory for the token map");
    for (uint32_t id = 0; id < n; id++) {
        uint32_t off = tok->text_off[id], len = tok->text_off[id + 1] - off;
        if (len == 0)
            continue;
        uint64_t i = hash_bytes(tok->text + off, len) & tok->map_mask;
        for (;;) {
            uint32_t v = tok->map[i];
            if (v == 0) {
                tok->map[i] = id + 1;
                break;
            }
            uint32_t o2 = tok->text_off[v - 1], l2 = tok->text_off[v] - o2;
            if (l2 == len && memcmp(tok->text + o2, tok->text + off, len) == 0) {
                tok->map[i] = id + 1; /* a duplicate text: the later id wins, as in llama.cpp */
                break;
            }
            i = (i + 1) & tok->map_mask;
        }
    }
    return SPK_OK;
}

static spk_status build_merges(spk_tok *tok, const spk_tok_spec *spec)
{
    size_t nm = spec->n_merges;
    if (nm == 0)
        return SPK_OK;
    if (!spec->merges)
        return spk_err(SPK_ERR_INVALID_ARG, "tokenizer: %zu merges but no merge array", nm);
    if (nm >= UINT32_MAX)
        return spk_err(SPK_ERR_FORMAT, "tokenizer: %zu merges (limit %u)", nm, UINT32_MAX - 1);
    tok->pair_mask = pow2_at_least((uint64_t)nm * 2) - 1;
    size_t cap = tok->pair_mask + 1;
    tok->pair_key = malloc(cap * sizeof *tok->pair_key);
    tok->pair_rank = malloc(cap * sizeof *tok->pair_rank);
    tok->pair_res = malloc(cap * sizeof *tok->pair_res);
    if (!tok->pair_key || !tok->pair_rank || !tok->pair_res)
        return spk_err(SPK_ERR_NOMEM, "tokenizer: out of memory for %zu merges", nm);
    memset(tok->pair_key, 0xFF, cap * sizeof *tok->pair_key);

    char *cat = NULL;
    size_t cat_cap = 0;
    spk_status st = SPK_OK;
    for (size_t r = 0; r < nm && st == SPK_OK; r++) {
        const char *s = spec->merges[r].ptr;
        size_t len = spec->merges[r].len;
        const char *sp = (len > 1 && s) ? memchr(s + 1, ' ', len - 1) : NULL;
        int show = len > 64 ? 64 : (int)len;
        if (!sp || (size_t)(sp - s) + 1 >= len) {
            st = spk_err(SPK_ERR_FORMAT, "tokenizer: merge %zu '%.*s' is not 'left right'", r, show,
                         s ? s : "");
            break;
        }
        size_t ll = (size_t)(sp - s), rl = len - ll - 1;
        int32_t a = spk_tok_map_find(tok, s, ll);
        int32_t b = spk_tok_map_find(tok, sp + 1, rl);
        if (a < 0 || b < 0) {
            st = spk_err(SPK_ERR_FORMAT, "tokenizer: merge %zu '%.*s' names an unknown token '%.*s'",
                         r, show, s, (int)(a < 0 ? (ll > 64 ? 64 : ll) : (rl > 64 ? 64 : rl)),
                         a < 0 ? s : sp + 1);
            break;
        }
        if (ll + rl > cat_cap) {
            free(cat);
            cat_cap = (ll + rl) * 2;
            cat = malloc(cat_cap);
            if (!cat) {
                st = spk_err(SPK_ERR_NOMEM, "tokenizer: out of memory");
                break;
            }
        }
        memcpy(cat, s, ll);
        memcpy(cat + ll, sp + 1, rl);
        int32_t c = spk_tok_map_find(tok, cat, ll + rl);
        if (c < 0) {
            st = spk_err(SPK_ERR_FORMAT, "tokenizer: merge %zu '%.*s' makes '%.*s', which is not a token",
                         r, show, s, (int)(ll + rl > 64 ? 64 : ll + rl), cat);
            break;
        }
        uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
        uint64_t i = hash_pair(key) & tok->pair_mask;
        while (tok->pair_key[i] != UINT64_MAX && tok->pair_key[i] != key)
            i = (i + 1) & tok->pair_mask;
        if (tok->pair_key[i] == UINT64_MAX) { /* a repeated pair keeps its first (best) rank */
            tok->pair_key[i] = key;
            tok->pair_rank[i] = (uint32_t)r;
            tok->pair_res[i] = c;
        }
    }
    free(cat);
    return st;
}

static spk_status build_specials(spk_tok *tok)
{
    uint32_t n = tok->n_tokens, ns = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint8_t t = tok->type[i];
        bool sp = t == SPK_TOKTYPE_CONTROL || t == SPK_TOKTYPE_USER_DEFINED ||
                  t == SPK_TOKTYPE_UNKNOWN;
        if (sp && tok->text_off[i + 1] > tok->text_off[i])
            ns++;
    }
    tok->special = malloc(((size_t)ns + 1) * sizeof *tok->special);
    if (!tok->special)
        return spk_err(SPK_ERR_NOMEM, "tokenizer: out of memory");
    ns = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint8_t t = tok->type[i];
        bool sp = t == SPK_TOKTYPE_CONTROL || t == SPK_TOKTYPE_USER_DEFINED ||
                  t == SPK_TOKTYPE_UNKNOWN;
        if (sp && tok->text_off[i + 1] > tok->text_off[i])
            tok->special[ns++] = (int32_t)i;
    }
    tok->n_special = ns;
    qsort_r(tok->special, ns, sizeof *tok->special, cmp_special, tok);
    uint32_t j = 0;
    for (unsigned b = 0; b < 256; b++) {
        tok->special_first[b] = j;
        while (j < ns && (uint8_t)tok->text[tok->text_off[tok->special[j]]] == b)
            j++;
    }
    tok->special_first[256] = ns;
    return SPK_OK;
}

spk_status spk_tok_new(const spk_tok_spec *spec, spk_tok **out)
{
    if (!out)
        return spk_err(SPK_ERR_INVALID_ARG, "spk_tok_new: out is NULL");
    *out = NULL;
    if (!spec)
        return spk_err(SPK_ERR_INVALID_ARG, "spk_tok_new: spec is NULL");
    const bool spm = spec->model && strcmp(spec->model, "llama") == 0;
    if (!spec->model || (!spm && strcmp(spec->model, "gpt2") != 0))
        return spk_err(SPK_ERR_UNSUPPORTED,
                       "tokenizer model '%.64s' is not supported ('gpt2': byte-level BPE, 'llama': SentencePiece)",
                       spec->model ? spec->model : "(none)");
    /* tokenizer.ggml.pre names as llama.cpp maps them (llama-vocab.cpp) for the families here */
    static const struct {
        const char *name;
        spk_tok_pre pre;
    } k_pre[] = {
        {"smollm", SPK_PRE_SMOLLM},   {"llama-bpe", SPK_PRE_LLAMA3}, {"llama3", SPK_PRE_LLAMA3},
        {"llama-v3", SPK_PRE_LLAMA3}, {"pixtral", SPK_PRE_LLAMA3},   {"gpt-2", SPK_PRE_GPT2},
        {"phi-2", SPK_PRE_GPT2},      {"qwen2", SPK_PRE_QWEN2},      {"deepseek-r1-qwen", SPK_PRE_QWEN2},
        {"gpt-4o", SPK_PRE_GPT4O},    {"llama4", SPK_PRE_GPT4O},     {"tekken", SPK_PRE_TEKKEN},
    };
    spk_tok_pre pre = 0;
    const char *p = spec->pre;
    for (size_t i = 0; p && i < sizeof k_pre / sizeof k_pre[0] && !pre; i++)
        if (strcmp(p, k_pre[i].name) == 0)
            pre = k_pre[i].pre;
    if (!pre && !spm) /* SentencePiece has no pre-tokenizer (llama.cpp ignores the key) */
        return spk_err(SPK_ERR_UNSUPPORTED,
                       "tokenizer pre-tokenizer '%.64s' is not supported (known: smollm, llama-bpe, llama3, "
                       "llama-v3, pixtral, gpt-2, phi-2, qwen2, deepseek-r1-qwen, gpt-4o, llama4, tekken)",
                       p ? p : "(none)");
    if (spec->n_tokens == 0 || !spec->tokens)
        return spk_err(SPK_ERR_FORMAT, "tokenizer: empty vocabulary");
    if (spec->n_tokens >= INT32_MAX)
        return spk_err(SPK_ERR_FORMAT, "tokenizer: %zu tokens (limit %d)", spec->n_tokens, INT32_MAX - 1);
    if (spec->n_vocab > 0 && (uint64_t)spec->n_vocab != spec->n_tokens)
        return spk_err(SPK_ERR_FORMAT, "tokenizer: %zu tokens but the model has n_vocab %lld",
                       spec->n_tokens, (long long)spec->n_vocab);
    uint32_t n = (uint32_t)spec->n_tokens;
    spk_status st;
    if ((st = check_id("bos", spec->bos, n)) || (st = check_id("eos", spec->eos, n)) ||
        (st = check_id("eot", spec->eot, n)) || (st = check_id("eom", spec->eom, n)))
        return st;
    if (spec->n_eog && !spec->eog_ids)
        return spk_err(SPK_ERR_INVALID_ARG, "tokenizer: %zu end-of-generation ids but no array", spec->n_eog);
    for (size_t i = 0; i < spec->n_eog; i++)
        if (spec->eog_ids[i] < 0 || spec->eog_ids[i] >= (int64_t)n)
            return spk_err(SPK_ERR_FORMAT, "tokenizer: end-of-generation id %d (entry %zu) out of range "
                           "(vocabulary has %u tokens)", spec->eog_ids[i], i, n);

    spk_tok *tok = calloc(1, sizeof *tok);
    if (!tok)
        return spk_err(SPK_ERR_NOMEM, "tokenizer: out of memory");
    tok->pre = pre;
    tok->spm = spm;
    tok->add_space_prefix = spm && spec->add_space_prefix != 0;
    if (spec->spm_prefix_mode < 0 || spec->spm_prefix_mode > 2) {
        st = spk_err(SPK_ERR_FORMAT, "tokenizer: space prefix mode %d (valid: 0..2)", spec->spm_prefix_mode);
        goto fail;
    }
    tok->spm_prefix_mode = (uint8_t)spec->spm_prefix_mode;
    tok->ignore_merges = pre == SPK_PRE_LLAMA3 || pre == SPK_PRE_TEKKEN;
    tok->n_tokens = n;
    tok->bos = spec->bos;
    tok->eos = spec->eos;
    tok->eot = spec->eot;
    tok->eom = spec->eom;
    tok->add_bos = spec->add_bos >= 0 ? spec->add_bos != 0 : spm || pre == SPK_PRE_LLAMA3 || pre == SPK_PRE_TEKKEN;
    tok->add_eos = spec->add_eos > 0;
    if (tok->add_bos && tok->bos < 0) {
        st = spk_err(SPK_ERR_FORMAT, "tokenizer: add_bos_token is set but there is no bos token id");
        goto fail;
    }
    if (tok->add_eos && tok->eos < 0) {
        st = spk_err(SPK_ERR_FORMAT, "tokenizer: add_eos_token is set but there is no eos token id");
        goto fail;
    }
    if ((st = build_texts(tok, spec)) || (st = build_map(tok)))
        goto fail;
    if (spm && spec->scores) {
        tok->scores = malloc((size_t)n * sizeof *tok->scores);
        if (!tok->scores) {
            st = spk_err(SPK_ERR_NOMEM, "tokenizer: out of memory for %u scores", n);
            goto fail;
        }
        memcpy(tok->scores, spec->scores, (size_t)n * sizeof *tok->scores);
    }

    for (unsigned b = 0; b < 256 && spm; b++) { /* byte fallback tokens <0xXX>, else the byte itself */
        static const char hex[] = "0123456789ABCDEF";
        const char name[6] = {'<', '0', 'x', hex[b >> 4], hex[b & 15], '>'};
        const char raw = (char)b;
        tok->byte_tok[b] = spk_tok_map_find(tok, name, 6);
        if (tok->byte_tok[b] < 0)
            tok->byte_tok[b] = spk_tok_map_find(tok, &raw, 1);
    }
    for (unsigned b = 0; b < 256 && !spm; b++) {
        uint32_t cp = spk_tok_byte_to_cp((uint8_t)b);
        char u[2];
        size_t ul = 1;
        if (cp < 0x80) {
            u[0] = (char)cp;
        } else {
            u[0] = (char)(0xC0 | (cp >> 6));
            u[1] = (char)(0x80 | (cp & 0x3F));
            ul = 2;
        }
        /* -1 if absent: such bytes are dropped when encoding, as llama.cpp and HF do (SmolLM2
         * lacks 21 of them, e.g. 0x04, 0xC0, 0xF5..0xFF) */
        tok->byte_tok[b] = spk_tok_map_find(tok, u, ul);
    }
    /* End of generation: the metadata's ids plus end-of-turn tokens known by name; like
     * llama.cpp, such a token is treated as CONTROL even if the file marks it otherwise (its
     * text is ASCII, so its decoded piece does not change). */
    int32_t ids[3] = {tok->eos, tok->eot, tok->eom};
    for (int i = 0; i < 3; i++)
        if (ids[i] >= 0)
            tok->flags[ids[i]] |= SPK_TOKF_EOG;
    for (size_t i = 0; i < spec->n_eog; i++)
        tok->flags[spec->eog_ids[i]] |= SPK_TOKF_EOG;
    for (size_t k = 0; k < sizeof k_eog_names / sizeof *k_eog_names; k++) {
        int32_t id = spk_tok_map_find(tok, k_eog_names[k], strlen(k_eog_names[k]));
        if (id >= 0) {
            tok->flags[id] |= SPK_TOKF_EOG;
            uint8_t t = tok->type[id];
            if (t == SPK_TOKTYPE_NORMAL || t == SPK_TOKTYPE_UNDEFINED ||
                t == SPK_TOKTYPE_USER_DEFINED)
                tok->type[id] = SPK_TOKTYPE_CONTROL;
        }
    }
    if ((st = build_merges(tok, spec)) || (st = build_specials(tok)))
        goto fail;
    if (!spm && (st = spk_tok_pretok_init(tok)))
        goto fail;
    *out = tok;
    return SPK_OK;
fail:
    spk_tok_free(tok);
    return st;
}

void spk_tok_free(spk_tok *tok)
{
    if (!tok)
        return;
    spk_tok_pretok_free(tok);
    free(tok->text);
    free(tok->text_off);
    free(tok->piece);
    free(tok->piece_off);
    free(tok->type);
    free(tok->flags);
    free(tok->map);
    free(tok->pair_key);
    free(tok->pair_rank);
    free(tok->pair_res);
    free(tok->special);
    free(tok->scores);
    free(tok);
}

/* ---- getters ------------------------------------------------------------------------------ */

int spk_tok_n_vocab(const spk_tok *tok) { return tok ? (int)tok->n_tokens : 0; }
int32_t spk_tok_bos(const spk_tok *tok) { return tok ? tok->bos : -1; }
int32_t spk_tok_eos(const spk_tok *tok) { return tok ? tok->eos : -1; }
int32_t spk_tok_eot(const spk_tok *tok) { return tok ? tok->eot : -1; }
bool spk_tok_add_bos(const spk_tok *tok) { return tok && tok->add_bos; }
size_t spk_tok_max_piece(const spk_tok *tok) { return tok ? tok->max_piece : 0; }

int spk_tok_type(const spk_tok *tok, int32_t id)
{
    if (!tok || id < 0 || (uint32_t)id >= tok->n_tokens)
        return -1;
    return tok->type[id];
}

bool spk_tok_is_eog(const spk_tok *tok, int32_t id)
{
    if (!tok || id < 0 || (uint32_t)id >= tok->n_tokens)
        return false;
    return (tok->flags[id] & SPK_TOKF_EOG) != 0;
}

int32_t spk_tok_find(const spk_tok *tok, const char *text, size_t len)
{
    if (!tok || (!text && len))
        return -1;
    return len ? spk_tok_map_find(tok, text, len) : -1;
}
