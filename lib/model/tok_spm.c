/*
 * SentencePiece (tokenizer.ggml.model = "llama": Llama 2, Mistral v0.x, TinyLlama) encoding as
 * llama.cpp does it (llm_tokenizer_spm_session): spaces escaped to U+2581, one symbol per UTF-8
 * character, then repeatedly merge the adjacent pair whose concatenation is the token with the
 * highest score (leftmost on ties); a symbol that is no token becomes its bytes' <0xXX> tokens
 * (byte fallback).
 */
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "model/tok_internal.h"

typedef struct spm_sym {
    uint32_t off, n;      /* bytes of the escaped text */
    int32_t prev, next;
} spm_sym;

typedef struct spm_big {
    float score;
    int32_t left, right;
    uint32_t size;
} spm_big;

/* a before b in the queue: higher score, then smaller left */
static bool big_first(const spm_big *a, const spm_big *b)
{
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

typedef struct spm_state {
    const spk_tok *tok;
    const char *text;
    spm_sym *sym;
    spm_big *heap;
    size_t n_heap, cap_heap;
} spm_state;

static spk_status heap_push(spm_state *s, spm_big b)
{
    if (s->n_heap == s->cap_heap) {
        size_t cap = s->cap_heap ? 2 * s->cap_heap : 64;
        spm_big *h = realloc(s->heap, cap * sizeof *h);
        if (!h)
            return spk_err(SPK_ERR_NOMEM, "tokenize: out of memory for %zu SentencePiece candidates", cap);
        s->heap = h;
        s->cap_heap = cap;
    }
    size_t i = s->n_heap++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!big_first(&b, &s->heap[p]))
            break;
        s->heap[i] = s->heap[p];
        i = p;
    }
    s->heap[i] = b;
    return SPK_OK;
}

static spm_big heap_pop(spm_state *s)
{
    spm_big top = s->heap[0], last = s->heap[--s->n_heap];
    size_t i = 0, n = s->n_heap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && big_first(&s->heap[c + 1], &s->heap[c]))
            c++;
        if (!big_first(&s->heap[c], &last))
            break;
        s->heap[i] = s->heap[c];
        i = c;
    }
    if (n)
        s->heap[i] = last;
    return top;
}

static spk_status try_bigram(spm_state *s, int32_t l, int32_t r)
{
    if (l < 0 || r < 0)
        return SPK_OK;
    const spm_sym *a = &s->sym[l], *b = &s->sym[r];
    int32_t id = spk_tok_map_find(s->tok, s->text + a->off, a->n + b->n);
    if (id < 0)
        return SPK_OK;
    return heap_push(s, (spm_big){s->tok->scores ? s->tok->scores[id] : 0.0f, l, r, a->n + b->n});
}

/* UTF-8 length from the lead byte, as llama.cpp's unicode_len_utf8 (continuation bytes: 1). */
static uint32_t lead_len(uint8_t c)
{
    static const uint8_t k[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    return k[c >> 4];
}

spk_status spk_tok_spm_encode(const spk_tok *tok, const char *raw, size_t len, bool space_prefix,
                              spk_tok_sink *sink)
{
    /* escape: optional leading space, every ' ' -> U+2581 (3 bytes) */
    size_t n_sp = space_prefix ? 1 : 0;
    for (size_t i = 0; i < len; i++)
        n_sp += raw[i] == ' ';
    const size_t n = len + (space_prefix ? 3 : 0) + 2 * (n_sp - (space_prefix ? 1 : 0));
    if (n == 0)
        return SPK_OK;
    char *text = malloc(n);
    spm_sym *sym = malloc(n * sizeof *sym);
    spm_state s = {tok, text, sym, NULL, 0, 0};
    spk_status st = SPK_OK;
    if (!text || !sym) {
        st = spk_err(SPK_ERR_NOMEM, "tokenize: out of memory for a %zu-byte SentencePiece fragment", n);
        goto done;
    }
    size_t o = 0;
    if (space_prefix) {
        memcpy(text, "\xe2\x96\x81", 3);
        o = 3;
    }
    for (size_t i = 0; i < len; i++) {
        if (raw[i] == ' ') {
            memcpy(text + o, "\xe2\x96\x81", 3);
            o += 3;
        } else {
            text[o++] = raw[i];
        }
    }
    int32_t ns = 0;
    for (uint32_t off = 0; off < n; ns++) {
        uint32_t l = lead_len((uint8_t)text[off]);
        if (l > n - off)
            l = (uint32_t)(n - off);
        sym[ns] = (spm_sym){off, l, ns - 1, off + l == n ? -1 : ns + 1};
        off += l;
    }
    for (int32_t i = 1; i < ns && st == SPK_OK; i++)
        st = try_bigram(&s, i - 1, i);
    while (st == SPK_OK && s.n_heap) {
        spm_big b = heap_pop(&s);
        spm_sym *l = &sym[b.left], *r = &sym[b.right];
        if (l->n == 0 || r->n == 0 || l->n + r->n != b.size)
            continue; /* one of them was merged since */
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0)
            sym[r->next].prev = b.left;
        st = try_bigram(&s, l->prev, b.left);
        if (st == SPK_OK)
            st = try_bigram(&s, b.left, l->next);
    }
    for (int32_t i = 0; st == SPK_OK && i != -1; i = sym[i].next) {
        int32_t id = spk_tok_map_find(tok, text + sym[i].off, sym[i].n);
        if (id >= 0) {
            spk_tok_sink_push(sink, id);
            continue;
        }
        for (uint32_t j = 0; j < sym[i].n; j++) { /* byte fallback; a byte with no token is dropped */
            int32_t b = tok->byte_tok[(uint8_t)text[sym[i].off + j]];
            if (b >= 0)
                spk_tok_sink_push(sink, b);
        }
    }
done:
    free(text);
    free(sym);
    free(s.heap);
    return st;
}
