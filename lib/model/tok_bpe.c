/*
 * The BPE merge loop for one pre-tokenized piece: start from one token per byte, repeatedly
 * merge the adjacent pair with the lowest merge rank (leftmost first on ties) using a binary
 * heap of candidate pairs, and emit the remaining symbols.
 */
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "model/tok_internal.h"

typedef struct bpe_sym {
    int32_t id;
    int32_t prev, next;   /* -1 at the ends */
} bpe_sym;

typedef struct bpe_cand {
    uint32_t rank;
    int32_t left, right;  /* symbol positions */
    int32_t lid, rid;     /* ids when the candidate was made (stale if they changed) */
    int32_t res;
} bpe_cand;

static bool cand_less(const bpe_cand *a, const bpe_cand *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->left < b->left);
}

static void heap_push(bpe_cand *h, size_t *n, bpe_cand c)
{
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_less(&c, &h[p]))
            break;
        h[i] = h[p];
        i = p;
    }
    h[i] = c;
}

static bpe_cand heap_pop(bpe_cand *h, size_t *n)
{
    bpe_cand top = h[0];
    bpe_cand last = h[--(*n)];
    size_t i = 0, m = *n;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, s = i;
        const bpe_cand *best = &last;
        if (l < m && cand_less(&h[l], best)) {
            s = l;
            best = &h[l];
        }
        if (r < m && cand_less(&h[r], best))
            s = r;
        if (s == i)
            break;
        h[i] = h[s];
        i = s;
    }
    if (m > 0)
        h[i] = last;
    return top;
}

static void try_pair(const spk_tok *tok, const bpe_sym *syms, int32_t l, int32_t r, bpe_cand *h,
                     size_t *nh)
{
    if (l < 0 || r < 0)
        return;
    bpe_cand c;
    if (!spk_tok_pair_find(tok, syms[l].id, syms[r].id, &c.rank, &c.res))
        return;
    c.left = l;
    c.right = r;
    c.lid = syms[l].id;
    c.rid = syms[r].id;
    heap_push(h, nh, c);
}

spk_status spk_tok_bpe_piece(const spk_tok *tok, spk_tok_scratch *sc, const char *p, size_t n,
                             spk_tok_sink *sink)
{
    if (n == 0)
        return SPK_OK;
    if (n == 1) {
        if (tok->byte_tok[(uint8_t)p[0]] >= 0)
            spk_tok_sink_push(sink, tok->byte_tok[(uint8_t)p[0]]);
        return SPK_OK;
    }
    if (n > INT32_MAX / 4)
        return spk_err(SPK_ERR_TOO_LONG, "tokenize: a single word of %zu bytes is too long", n);
    if (sc->cap_syms < n) {
        size_t cap = n < 64 ? 64 : n * 2;
        void *s = realloc(sc->syms, cap * sizeof(bpe_sym));
        if (!s)
            return spk_err(SPK_ERR_NOMEM, "tokenize: out of memory for a %zu-byte word", n);
        sc->syms = s;
        sc->cap_syms = cap;
    }
    /* n-1 initial pairs plus at most 2 per merge (n-1 merges). */
    size_t need_heap = 3 * n;
    if (sc->cap_heap < need_heap) {
        size_t cap = need_heap < 192 ? 192 : need_heap * 2;
        void *h = realloc(sc->heap, cap * sizeof(bpe_cand));
        if (!h)
            return spk_err(SPK_ERR_NOMEM, "tokenize: out of memory for a %zu-byte word", n);
        sc->heap = h;
        sc->cap_heap = cap;
    }
    bpe_sym *syms = sc->syms;
    bpe_cand *heap = sc->heap;
    size_t nh = 0;
    for (size_t i = 0; i < n; i++) {
        syms[i].id = tok->byte_tok[(uint8_t)p[i]];
        syms[i].prev = (int32_t)i - 1;
        syms[i].next = i + 1 < n ? (int32_t)i + 1 : -1;
    }
    for (size_t i = 0; i + 1 < n; i++)
        try_pair(tok, syms, (int32_t)i, (int32_t)i + 1, heap, &nh);

    while (nh > 0) {
        bpe_cand c = heap_pop(heap, &nh);
        bpe_sym *l = &syms[c.left], *r = &syms[c.right];
        /* Stale: a side was merged away (id -1) or grew since the candidate was made. */
        if (l->id != c.lid || r->id != c.rid || l->next != c.right)
            continue;
        l->id = c.res;
        l->next = r->next;
        if (r->next >= 0)
            syms[r->next].prev = c.left;
        r->id = -1;
        r->prev = r->next = -1;
        try_pair(tok, syms, l->prev, c.left, heap, &nh);
        try_pair(tok, syms, c.left, l->next, heap, &nh);
    }
    for (int32_t i = 0; i >= 0; i = syms[i].next)
        if (syms[i].id >= 0) /* a byte the vocabulary has no token for is dropped */
            spk_tok_sink_push(sink, syms[i].id);
    return SPK_OK;
}
