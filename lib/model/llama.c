/*
 * llama architecture: the run state (activations, paged KV cache) and the forward pass
 * (weights and shards: llama_weights.c).
 * The forward pass is one thread-pool dispatch: every thread walks the same straight loop over
 * layers, takes its slice of each op and meets the others at a barrier between ops.
 */
#include "model/llama.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/error.h"
#include "cpu/matmul.h"

#define TRY(x)                                                                                     \
    do {                                                                                           \
        spk_status st_ = (x);                                                                      \
        if (st_ != SPK_OK)                                                                         \
            return st_;                                                                            \
    } while (0)

/* ---- run state ---------------------------------------------------------------------------- */

struct spk_llama {
    spk_hparams hp;
    spk_shard sh;
    const spk_weights *w;
    int n_ctx, n_seq, max_tok, n_layers, n_heads, n_kv, kv_dim, q_dim, n_ff, n_out;
    int block_size, n_blocks;   /* KV cache: n_blocks blocks of block_size rows per layer */
    size_t kv_rows;             /* n_blocks * block_size */
    int n_threads;
    spk_pool *pool;
    float *x, *xb, *xb2, *q, *k, *v, *att, *hb, *hb2, *freqs, *scratch;
    void *act;
    spk_f16 *kc, *vc;           /* [layer][kv_rows][kv_dim] */
    spk_f16 *gk, *gv;           /* per thread: one KV head's rows gathered from scattered blocks */
    struct gather_state { int layer, seq, kvh, rows; } *gs; /* what each thread's gather holds */
    uint8_t *contig;            /* per batch sequence: its blocks are consecutive */
    int *rows;          /* token index of each logits row */
    int *rows_need;     /* per batch sequence: blocks its positions reach */
    /* the call in progress */
    const spk_batch *b;
    const float *hidden_in;
    float *out;
    int n_rows;
    spk_status ar_status;
    uint64_t kv_bytes, alloc_bytes; /* the KV cache; everything allocated here incl. the cache */
};

static void *xcalloc(spk_llama *m, size_t n, size_t size, spk_status *st)
{
    if (*st != SPK_OK)
        return NULL;
    void *p = n && size && n <= SIZE_MAX / size ? calloc(n, size) : NULL;
    if (!p)
        *st = spk_err(SPK_ERR_NOMEM, "llama run state: cannot allocate %zu x %zu bytes", n, size);
    else
        m->alloc_bytes += (uint64_t)n * size;
    return p;
}

/* Physical memory of this machine in bytes (0 if unknown). */
static uint64_t phys_bytes(void)
{
    long n = sysconf(_SC_PHYS_PAGES), pg = sysconf(_SC_PAGESIZE);
    return n > 0 && pg > 0 ? (uint64_t)n * (uint64_t)pg : 0;
}

static size_t act_need(const spk_wmat *m, int max_tok)
{
    return spk_act_size(m->type, m->n_in, max_tok);
}

spk_status spk_llama_create(const spk_hparams *hp, const spk_weights *w, const spk_shard *sh, int n_ctx,
                            int n_seq, int max_tok, int n_threads, spk_llama **out)
{
    *out = NULL;
    if (n_seq < 1 || n_seq > 4096 || n_ctx < 1 || n_ctx > 1 << 24)
        return spk_err(SPK_ERR_INVALID_ARG, "llama: bad n_ctx %d / n_seq %d", n_ctx, n_seq);
    const int bs = 16;
    spk_status st = spk_llama_create_paged(hp, w, sh, n_ctx, n_seq * ((n_ctx + bs - 1) / bs), bs, max_tok,
                                           n_threads, out);
    if (st == SPK_OK)
        (*out)->n_seq = n_seq;
    return st;
}

spk_status spk_llama_create_paged(const spk_hparams *hp, const spk_weights *w, const spk_shard *sh, int n_ctx,
                                  int n_blocks, int block_size, int max_tok, int n_threads, spk_llama **out)
{
    *out = NULL;
    if (n_ctx < 1 || n_blocks < 1 || block_size < 1 || block_size > 4096 || max_tok < 1 || n_threads < 1 ||
        n_ctx > 1 << 24 || (int64_t)n_blocks * block_size > (int64_t)1 << 30 || max_tok > 1 << 16)
        return spk_err(SPK_ERR_INVALID_ARG, "llama: bad n_ctx %d / %d KV blocks of %d / max_tok %d / threads %d",
                       n_ctx, n_blocks, block_size, max_tok, n_threads);
    spk_shard full;
    if (!sh) {
        spk_shard_full(hp, &full);
        sh = &full;
    }
    TRY(spk_shard_check(hp, sh));
    spk_llama *m = calloc(1, sizeof *m);
    if (!m)
        return spk_err(SPK_ERR_NOMEM, "llama: out of memory");
    m->hp = *hp;
    m->sh = *sh;
    m->w = w;
    m->n_ctx = n_ctx;
    m->n_seq = 0; /* paged: the batch carries block tables */
    m->block_size = block_size;
    m->n_blocks = n_blocks;
    m->kv_rows = (size_t)n_blocks * (size_t)block_size;
    m->n_threads = n_threads;
    m->max_tok = max_tok;
    m->n_layers = sh->l1 - sh->l0;
    m->n_heads = sh->h1 - sh->h0;
    m->n_kv = sh->kv1 - sh->kv0;
    m->kv_dim = m->n_kv * hp->head_dim;
    m->q_dim = m->n_heads * hp->head_dim;
    m->n_ff = sh->f1 - sh->f0;
    m->n_out = sh->v1 - sh->v0;
    const size_t T = (size_t)max_tok, E = (size_t)hp->n_embd;
    /* What the sizes ask for, checked against the machine before anything is allocated: the
     * sizes may come from a peer (the LOAD command), and a KV cache or gather buffer larger than
     * memory must be a clear error, not an allocator abort or the OOM killer. */
    const uint64_t kv_need = 2 * sizeof(spk_f16) * (uint64_t)m->n_layers * m->kv_rows * (uint64_t)m->kv_dim;
    const uint64_t need = kv_need + 2 * sizeof(spk_f16) * (uint64_t)n_threads * (uint64_t)n_ctx * (uint64_t)hp->head_dim +
                          sizeof(float) * ((uint64_t)n_threads * (uint64_t)n_ctx +
                                           T * (3 * E + 2 * (uint64_t)m->q_dim + 2 * (uint64_t)m->kv_dim + 2 * (uint64_t)m->n_ff));
    const uint64_t have = phys_bytes();
    if (have && need > have) {
        free(m);
        return spk_err(SPK_ERR_NOMEM,
                       "llama: %d KV blocks of %d positions, n_ctx %d, max_tok %d and %d threads need %.2f GiB; "
                       "this machine has %.2f GiB", n_blocks, block_size, n_ctx, max_tok, n_threads,
                       (double)need / 1073741824.0, (double)have / 1073741824.0);
    }
    spk_status st = spk_pool_create(n_threads, &m->pool);
    m->x = xcalloc(m, T * E, sizeof(float), &st);
    m->xb = xcalloc(m, T * E, sizeof(float), &st);
    m->xb2 = xcalloc(m, T * E, sizeof(float), &st);
    m->q = xcalloc(m, T * (size_t)m->q_dim, sizeof(float), &st);
    m->k = xcalloc(m, T * (size_t)m->kv_dim, sizeof(float), &st);
    m->v = xcalloc(m, T * (size_t)m->kv_dim, sizeof(float), &st);
    m->att = xcalloc(m, T * (size_t)m->q_dim, sizeof(float), &st);
    m->hb = xcalloc(m, T * (size_t)m->n_ff, sizeof(float), &st);
    m->hb2 = xcalloc(m, T * (size_t)m->n_ff, sizeof(float), &st);
    m->freqs = xcalloc(m, (size_t)hp->rot_dim / 2, sizeof(float), &st);
    m->scratch = xcalloc(m, (size_t)n_threads * (size_t)n_ctx, sizeof(float), &st);
    m->rows = xcalloc(m, T, sizeof(int), &st);
    size_t act = sh->last ? act_need(&w->output, max_tok) : 0;
    for (int l = 0; l < m->n_layers; l++) { /* types may differ per layer */
        const spk_layer *L = &w->layers[l];
        const spk_wmat *lm[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
        for (size_t i = 0; i < 7; i++) {
            size_t s = act_need(lm[i], max_tok);
            act = s > act ? s : act;
        }
    }
    m->act = xcalloc(m, act, 1, &st);
    size_t kv = (size_t)m->n_layers * m->kv_rows * (size_t)m->kv_dim;
    m->kc = xcalloc(m, kv, sizeof(spk_f16), &st);
    m->vc = xcalloc(m, kv, sizeof(spk_f16), &st);
    m->kv_bytes = 2 * (uint64_t)kv * sizeof(spk_f16);
    size_t g = (size_t)n_threads * (size_t)n_ctx * (size_t)hp->head_dim;
    m->gk = xcalloc(m, g, sizeof(spk_f16), &st);
    m->gv = xcalloc(m, g, sizeof(spk_f16), &st);
    m->gs = xcalloc(m, (size_t)n_threads, sizeof *m->gs, &st);
    m->contig = xcalloc(m, (size_t)max_tok, 1, &st);
    m->rows_need = xcalloc(m, (size_t)max_tok, sizeof(int), &st);
    if (st != SPK_OK) {
        spk_llama_free(m);
        return st;
    }
    spk_rope_freqs(m->freqs, hp->rot_dim, hp->rope_theta, NULL);
    for (int i = 0; i < hp->rot_dim / 2; i++) {
        if (hp->scaling.factor > 0)
            m->freqs[i] /= hp->scaling.factor;
        if (w->rope_factors)
            m->freqs[i] /= w->rope_factors[i];
    }
    *out = m;
    return SPK_OK;
}

void spk_llama_free(spk_llama *m)
{
    if (!m)
        return;
    if (m->pool)
        spk_pool_destroy(m->pool);
    free(m->x);
    free(m->xb);
    free(m->xb2);
    free(m->q);
    free(m->k);
    free(m->v);
    free(m->att);
    free(m->hb);
    free(m->hb2);
    free(m->freqs);
    free(m->scratch);
    free(m->rows);
    free(m->act);
    free(m->kc);
    free(m->vc);
    free(m->gk);
    free(m->gv);
    free(m->gs);
    free(m->contig);
    free(m->rows_need);
    free(m);
}

int spk_llama_n_ctx(const spk_llama *m) { return m->n_ctx; }
int spk_llama_block_size(const spk_llama *m) { return m->block_size; }
int spk_llama_n_blocks(const spk_llama *m) { return m->n_blocks; }
int spk_llama_max_tok(const spk_llama *m) { return m->max_tok; }
int spk_llama_n_out(const spk_llama *m) { return m->n_out; }
uint64_t spk_llama_kv_bytes(const spk_llama *m) { return m->kv_bytes; }
uint64_t spk_llama_alloc_bytes(const spk_llama *m) { return m->alloc_bytes; }

/* ---- forward ------------------------------------------------------------------------------ */

/* Quantize n_tok rows of x for matrix `w`, rows split across threads, then barrier. */
static void quantize_for(spk_llama *m, const spk_wmat *w, const float *x, int n_tok, int ith, int nth)
{
    int lo, hi;
    spk_split(n_tok, 1, ith, nth, &lo, &hi);
    if (lo < hi)
        spk_act_quantize(m->act, w->type, x, w->n_in, lo, hi);
    spk_pool_barrier(m->pool);
}

/* This thread's share of out = x W^T for n_tok rows (no barrier). */
static void matmul_part(spk_llama *m, float *out, const spk_wmat *w, int n_tok, int ith, int nth)
{
    int lo, hi;
    spk_split(w->n_out, 16, ith, nth, &lo, &hi);
    if (lo < hi)
        spk_matmul(out, w->n_out, w->data, w->type, m->act, w->n_in, n_tok, lo, hi);
}

/* Sum the partial products of the TP group (one thread talks, the others wait), then barrier. */
static void tp_reduce(spk_llama *m, float *buf, int n_tok, int ith)
{
    spk_pool_barrier(m->pool);
    if (m->sh.allreduce) {
        if (ith == 0 && m->ar_status == SPK_OK)
            m->ar_status = m->sh.allreduce(m->sh.ar_ctx, buf, (size_t)n_tok * (size_t)m->hp.n_embd);
        spk_pool_barrier(m->pool);
    }
}

/* Block `i` of batch sequence `seq`: from its block table, or implicit (sequence slots of
 * n_ctx rows) when the batch has none. */
static int seq_block(const spk_llama *m, const spk_batch *b, int seq, int i)
{
    if (b->block_table)
        return b->block_table[b->table_off[seq] + i];
    return seq * ((m->n_ctx + m->block_size - 1) / m->block_size) + i;
}

/* Element offset of the KV row of (seq, pos) in `layer`. */
static size_t kv_offset(const spk_llama *m, const spk_batch *b, int layer, int seq, int pos)
{
    size_t row = (size_t)seq_block(m, b, seq, pos / m->block_size) * (size_t)m->block_size +
                 (size_t)(pos % m->block_size);
    return ((size_t)layer * m->kv_rows + row) * (size_t)m->kv_dim;
}

/* K and V rows 0..n-1 of one KV head of (layer, seq): straight from the cache when the
 * sequence's blocks are consecutive, else gathered into this thread's buffer (kept across calls,
 * so the tokens of a prompt chunk extend it instead of gathering again). */
static void kv_rows(spk_llama *m, const spk_batch *b, int layer, int seq, int kvh, int n, int ith,
                    const spk_f16 **k, const spk_f16 **v, int *stride)
{
    const int HD = m->hp.head_dim;
    if (!b->block_table || m->contig[seq]) {
        size_t base = kv_offset(m, b, layer, seq, 0) + (size_t)kvh * HD;
        *k = m->kc + base;
        *v = m->vc + base;
        *stride = m->kv_dim;
        return;
    }
    struct gather_state *g = &m->gs[ith];
    spk_f16 *gk = m->gk + (size_t)ith * (size_t)m->n_ctx * HD, *gv = m->gv + (size_t)ith * (size_t)m->n_ctx * HD;
    int from = (g->layer == layer && g->seq == seq && g->kvh == kvh) ? g->rows : 0;
    for (int p = from; p < n; p++) {
        size_t off = kv_offset(m, b, layer, seq, p) + (size_t)kvh * HD;
        memcpy(gk + (size_t)p * HD, m->kc + off, sizeof(spk_f16) * (size_t)HD);
        memcpy(gv + (size_t)p * HD, m->vc + off, sizeof(spk_f16) * (size_t)HD);
    }
    if (n > from)
        *g = (struct gather_state){layer, seq, kvh, n};
    *k = gk;
    *v = gv;
    *stride = HD;
}

static void forward_thread(void *arg, int ith, int nth)
{
    spk_llama *m = arg;
    const spk_hparams *hp = &m->hp;
    const spk_weights *w = m->w;
    const spk_batch *b = m->b;
    const int T = b->n_tok, E = hp->n_embd, HD = hp->head_dim, F = m->n_ff;
    const float scale = 1.0f / sqrtf((float)HD);
    int t0, t1;
    spk_split(T, 1, ith, nth, &t0, &t1);
    float *scratch = m->scratch + (size_t)ith * (size_t)m->n_ctx;

    if (m->sh.first) {
        const size_t erow = spk_dtype_row_size(w->tok_embd.type, (size_t)E);
        const int split = spk_llama_embd_split(hp, &m->sh), v0 = split ? m->sh.v0 : 0;
        for (int t = t0; t < t1; t++) {
            int row = b->token[t] - v0;
            if (row >= 0 && row < w->tok_embd.n_out)
                spk_dequantize_row(m->x + (size_t)t * E, (const uint8_t *)w->tok_embd.data + (size_t)row * erow,
                                   w->tok_embd.type, E);
            else
                memset(m->x + (size_t)t * E, 0, sizeof(float) * (size_t)E);
        }
        if (split)
            tp_reduce(m, m->x, T, ith);
    } else {
        memcpy(m->x + (size_t)t0 * E, m->hidden_in + (size_t)t0 * E, sizeof(float) * (size_t)(t1 - t0) * (size_t)E);
    }
    spk_pool_barrier(m->pool);

    for (int l = 0; l < m->n_layers; l++) {
        const spk_layer *L = &w->layers[l];
        /* attention block: this rank's heads */
        for (int t = t0; t < t1; t++)
            spk_rmsnorm(m->xb + (size_t)t * E, m->x + (size_t)t * E, L->attn_norm, E, hp->eps);
        quantize_for(m, &L->wq, m->xb, T, ith, nth);
        matmul_part(m, m->q, &L->wq, T, ith, nth);
        matmul_part(m, m->k, &L->wk, T, ith, nth);
        matmul_part(m, m->v, &L->wv, T, ith, nth);
        spk_pool_barrier(m->pool);
        for (int t = t0; t < t1; t++) {
            float *q = m->q + (size_t)t * m->q_dim, *k = m->k + (size_t)t * m->kv_dim;
            spk_rope(q, m->n_heads, HD, hp->rot_dim, b->pos[t], m->freqs);
            spk_rope(k, m->n_kv, HD, hp->rot_dim, b->pos[t], m->freqs);
            size_t off = kv_offset(m, b, l, b->seq[t], b->pos[t]);
            spk_f32_to_f16_row(m->kc + off, k, m->kv_dim);
            spk_f32_to_f16_row(m->vc + off, m->v + (size_t)t * m->kv_dim, m->kv_dim);
        }
        spk_pool_barrier(m->pool);
        /* work items ordered (kv head, token, query head of the group) so a thread's share
         * mostly walks one sequence's KV head and its gathers grow instead of repeating */
        int w0, w1;
        spk_split(T * m->n_heads, 1, ith, nth, &w0, &w1);
        m->gs[ith].layer = -1;
        for (int wi = w0; wi < w1; wi++) {
            int local_g = m->n_heads / m->n_kv; /* query heads per KV head on this rank */
            int kvh = wi / (T * local_g), rem = wi % (T * local_g), t = rem / local_g;
            int h = kvh * local_g + rem % local_g;
            const spk_f16 *kr, *vr;
            int stride;
            kv_rows(m, b, l, b->seq[t], kvh, b->pos[t] + 1, ith, &kr, &vr, &stride);
            spk_attn_head(m->att + (size_t)t * m->q_dim + (size_t)h * HD, m->q + (size_t)t * m->q_dim + (size_t)h * HD,
                          kr, vr, b->pos[t] + 1, HD, stride, scale, scratch);
        }
        spk_pool_barrier(m->pool);
        quantize_for(m, &L->wo, m->att, T, ith, nth);
        matmul_part(m, m->xb2, &L->wo, T, ith, nth);
        tp_reduce(m, m->xb2, T, ith);
        /* MLP block: this rank's intermediate columns */
        for (int t = t0; t < t1; t++) {
            spk_add(m->x + (size_t)t * E, m->x + (size_t)t * E, m->xb2 + (size_t)t * E, E);
            spk_rmsnorm(m->xb + (size_t)t * E, m->x + (size_t)t * E, L->ffn_norm, E, hp->eps);
        }
        quantize_for(m, &L->w_gate, m->xb, T, ith, nth);
        matmul_part(m, m->hb, &L->w_gate, T, ith, nth);
        matmul_part(m, m->hb2, &L->w_up, T, ith, nth);
        spk_pool_barrier(m->pool);
        for (int t = t0; t < t1; t++)
            spk_swiglu(m->hb + (size_t)t * F, m->hb + (size_t)t * F, m->hb2 + (size_t)t * F, F);
        quantize_for(m, &L->w_down, m->hb, T, ith, nth);
        matmul_part(m, m->xb2, &L->w_down, T, ith, nth);
        tp_reduce(m, m->xb2, T, ith);
        for (int t = t0; t < t1; t++)
            spk_add(m->x + (size_t)t * E, m->x + (size_t)t * E, m->xb2 + (size_t)t * E, E);
    }
    if (!m->sh.last) { /* hand the hidden states to the next stage */
        memcpy(m->out + (size_t)t0 * E, m->x + (size_t)t0 * E, sizeof(float) * (size_t)(t1 - t0) * (size_t)E);
        return;
    }
    if (m->n_rows == 0)
        return;
    /* final norm for the rows that want logits, gathered compactly into xb */
    int r0, r1;
    spk_split(m->n_rows, 1, ith, nth, &r0, &r1);
    spk_pool_barrier(m->pool); /* residual adds of all tokens done */
    for (int r = r0; r < r1; r++)
        spk_rmsnorm(m->xb + (size_t)r * E, m->x + (size_t)m->rows[r] * E, w->out_norm, E, hp->eps);
    quantize_for(m, &w->output, m->xb, m->n_rows, ith, nth);
    int lo, hi;
    spk_split(w->output.n_out, 16, ith, nth, &lo, &hi);
    if (lo < hi)
        spk_matmul(m->out, w->output.n_out, w->output.data, w->output.type, m->act, E, m->n_rows, lo, hi);
}

/* Validate a paged batch's block tables once per sequence (up to its largest position in the
 * batch) and note which sequences' blocks are consecutive (attention reads those in place). */
static spk_status check_tables(spk_llama *m, const spk_batch *b)
{
    if (b->n_seqs < 1 || b->n_seqs > m->max_tok || !b->table_off || b->n_table < 0)
        return spk_err(SPK_ERR_INVALID_ARG, "llama forward: %d sequences in a paged batch", b->n_seqs);
    int *need = m->rows_need;
    memset(need, 0, sizeof(int) * (size_t)b->n_seqs);
    for (int i = 0; i < b->n_tok; i++) {
        int blocks = b->pos[i] / m->block_size + 1;
        need[b->seq[i]] = blocks > need[b->seq[i]] ? blocks : need[b->seq[i]];
    }
    for (int s = 0; s < b->n_seqs; s++) {
        m->contig[s] = 1;
        if (!need[s])
            continue;
        if (b->table_off[s] < 0 || (int64_t)b->table_off[s] + need[s] > b->n_table)
            return spk_err(SPK_ERR_INVALID_ARG, "llama forward: block table of sequence %d holds fewer than %d blocks",
                           s, need[s]);
        const int32_t *tab = b->block_table + b->table_off[s];
        for (int j = 0; j < need[s]; j++) {
            if (tab[j] < 0 || tab[j] >= m->n_blocks)
                return spk_err(SPK_ERR_INVALID_ARG, "llama forward: KV block %d out of range (%d)", tab[j],
                               m->n_blocks);
            if (tab[j] != tab[0] + j)
                m->contig[s] = 0;
        }
    }
    return SPK_OK;
}

spk_status spk_llama_forward(spk_llama *m, const spk_batch *b, const float *hidden_in, float *out)
{
    if (!b || b->n_tok < 1 || b->n_tok > m->max_tok || !b->token || !b->pos || !b->seq)
        return spk_err(SPK_ERR_INVALID_ARG, "llama forward: bad batch (n_tok %d, max %d)",
                       b ? b->n_tok : -1, m->max_tok);
    const int n_seqs = b->block_table ? b->n_seqs : m->n_seq;
    int n_rows = 0;
    for (int i = 0; i < b->n_tok; i++) {
        if (b->token[i] < 0 || b->token[i] >= m->hp.n_vocab)
            return spk_err(SPK_ERR_INVALID_ARG, "llama forward: token %d out of vocabulary (%d)",
                           b->token[i], m->hp.n_vocab);
        if (b->seq[i] < 0 || b->seq[i] >= n_seqs)
            return spk_err(SPK_ERR_INVALID_ARG, "llama forward: sequence %d out of range (%d)", b->seq[i], n_seqs);
        if (b->pos[i] < 0 || b->pos[i] >= m->n_ctx)
            return spk_err(SPK_ERR_INVALID_ARG, "llama forward: position %d outside context %d",
                           b->pos[i], m->n_ctx);
        if (b->want_logits && b->want_logits[i])
            m->rows[n_rows++] = i;
    }
    if (b->block_table) {
        spk_status st = check_tables(m, b);
        if (st != SPK_OK)
            return st;
    }
    if ((n_rows || !m->sh.last) && !out)
        return spk_err(SPK_ERR_INVALID_ARG, "llama forward: no output buffer");
    if (!m->sh.first && !hidden_in)
        return spk_err(SPK_ERR_INVALID_ARG, "llama forward: a later pipeline stage needs its input hidden states");
    m->b = b;
    m->hidden_in = hidden_in;
    m->out = out;
    m->n_rows = n_rows;
    m->ar_status = SPK_OK;
    spk_pool_run(m->pool, forward_thread, m);
    m->b = NULL;
    if (m->ar_status != SPK_OK)
        return spk_err_prefix(m->ar_status, "llama forward: tensor-parallel all-reduce");
    return SPK_OK;
}
