/*
 * llama architecture: the run state (activations, paged KV cache) and the forward pass
 * (weights and shards: llama_weights.c).
 * The forward pass is one straight loop over layers written against the backend table
 * (backend/backend.h): on the CPU every pool thread walks it, takes its slice of each op and
 * meets the others at a barrier between dependent ops; a stream backend walks it once.
 */
#include "model/llama.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/error.h"

/* ---- run state ---------------------------------------------------------------------------- */

struct spk_llama {
    spk_hparams hp;
    spk_shard sh;
    const spk_weights *w;
    int n_ctx, n_seq, max_tok, n_layers, n_heads, n_kv, kv_dim, q_dim, n_ff, n_out;
    int block_size, n_blocks;   /* KV cache: n_blocks blocks of block_size rows per layer */
    spk_backend *be;
    spk_weights dw;             /* a device backend's view of the weights (w points here then) */
    spk_layer *dlayers;
    void **uploads;             /* what upload() returned, for release() */
    int n_uploads;
    /* backend memory */
    float *x, *xb, *xb2, *q, *k, *v, *att, *hb, *hb2, *freqs;
    float *io;                  /* a device backend's hidden-state input and output rows */
    float attn_scale;           /* Q.K scale: 1/sqrt(head_dim), times YaRN's attention factor squared */
    void *act;
    void *moe_scratch;          /* the MoE op's scratch (MoE models) */
    spk_kv_cache kv;
    /* host metadata of a batch */
    uint8_t *contig;            /* per batch sequence: its blocks are consecutive */
    int *rows;          /* token index of each logits row */
    int *rows_need;     /* per batch sequence: blocks its positions reach */
    /* the call in progress */
    spk_step step;
    const float *hidden_in;
    float *out;
    int n_rows;
    spk_status ar_status;
    uint64_t kv_bytes, alloc_bytes; /* the KV cache; everything allocated here incl. the cache */
    void **packed;              /* the CPU backend's repacked weight copies (pack_weights) */
    int n_packed;
    uint64_t packed_bytes;      /* their size: the same bytes the file's mapping no longer holds */
};

/* A zeroed run-state buffer of n x size bytes (counted): in backend memory, or on the host for
 * the batch metadata the layer loop reads on the host. */
static void *zalloc(spk_llama *m, int host, size_t n, size_t size, spk_status *st)
{
    if (*st != SPK_OK)
        return NULL;
    const int ok = n && size && n <= SIZE_MAX / size;
    void *p = !ok ? NULL : host ? calloc(n, size) : m->be->ops->alloc(m->be, n * size);
    if (!p)
        *st = spk_err(SPK_ERR_NOMEM, "llama run state: cannot allocate %zu x %zu bytes (%s memory)", n, size,
                      host ? "host" : m->be->ops->name);
    else
        m->alloc_bytes += (uint64_t)n * size;
    return p;
}

/* Make `bytes` at host pointer *p readable by a device backend; *p becomes what the ops read.
 * Tensors that share memory (tied embedding and head) are uploaded once. */
static spk_status upload(spk_llama *m, const void **p, size_t bytes, const char *what)
{
    if (!*p)
        return SPK_OK;
    for (int i = 0; i < m->n_uploads; i += 2) /* uploads[] holds (host, device) pairs */
        if (m->uploads[i] == *p) {
            *p = m->uploads[i + 1];
            return SPK_OK;
        }
    /* The device reads these pages (a copy by its driver, or in place): fault them in from the CPU
     * first, since a Hugging Face tensor converted on first touch is filled by a user-mode fault only. */
    const volatile uint8_t *b = *p;
    uint8_t sink = 0;
    for (size_t i = 0; i < bytes; i += 4096)
        sink ^= b[i];
    if (bytes)
        sink ^= b[bytes - 1];
    (void)sink;
    void *dev = NULL;
    spk_status st = m->be->ops->upload(m->be, *p, bytes, &dev);
    if (st != SPK_OK)
        return spk_err(st, "llama: cannot give %s (%zu bytes) to the %s backend", what, bytes, m->be->ops->name);
    m->uploads[m->n_uploads++] = (void *)*p;
    m->uploads[m->n_uploads++] = dev;
    if (dev != *p) /* a copy, not the mapping read in place */
        m->alloc_bytes += bytes;
    *p = dev;
    return SPK_OK;
}

static size_t wmat_bytes(const spk_wmat *w) { return spk_dtype_row_size(w->type, (size_t)w->n_in) * (size_t)w->n_out; }

/* upload() of a weight matrix the backend's ops can multiply by. */
static spk_status upload_mat(spk_llama *m, spk_wmat *w, const char *what)
{
    const spk_backend_ops *o = m->be->ops;
    if (w->data && o->supports && !o->supports(m->be, w->type)) {
        const spk_dtype_info *info = spk_dtype_get((uint32_t)w->type);
        return spk_err(SPK_ERR_UNSUPPORTED, "llama: %s is %s, which the %s backend cannot multiply by yet", what,
                       info ? info->name : "an unknown type", o->name);
    }
    return upload(m, &w->data, wmat_bytes(w), what);
}

/* The MoE weights of a layer: router, this rank's experts (stacked, from expert e0's matrices at
 * their strides) and the biases (indexed by the global expert). */
static spk_status upload_moe(spk_llama *m, spk_moe *x)
{
    const int n_loc = x->e1 - x->e0;
    const size_t E = (size_t)x->router.n_in, F = (size_t)x->gate.n_out;
    SPK_TRY(upload_mat(m, &x->router, "an MoE router"));
    spk_wmat *mats[] = {&x->gate, &x->up, &x->down};
    const size_t strides[] = {x->stride_gate, x->stride_up, x->stride_down};
    for (int i = 0; i < 3; i++) {
        const spk_backend_ops *o = m->be->ops;
        if (mats[i]->data && o->supports && !o->supports(m->be, mats[i]->type)) {
            const spk_dtype_info *info = spk_dtype_get((uint32_t)mats[i]->type);
            return spk_err(SPK_ERR_UNSUPPORTED, "llama: the MoE experts are %s, which the %s backend cannot multiply "
                           "by yet", info ? info->name : "an unknown type", o->name);
        }
        SPK_TRY(upload(m, &mats[i]->data, (size_t)(n_loc - 1) * strides[i] + wmat_bytes(mats[i]), "MoE experts"));
    }
    const size_t N = (size_t)x->n_expert;
    SPK_TRY(upload(m, (const void **)&x->router_bias, sizeof(float) * N, "an MoE router bias"));
    SPK_TRY(upload(m, (const void **)&x->gate_bias, sizeof(float) * N * F, "MoE gate biases"));
    SPK_TRY(upload(m, (const void **)&x->up_bias, sizeof(float) * N * F, "MoE up biases"));
    SPK_TRY(upload(m, (const void **)&x->down_bias, sizeof(float) * N * E, "MoE down biases"));
    return SPK_OK;
}

/* A device backend's copy of the weights this shard reads: m->dw, with m->w pointing at it. */
static spk_status upload_weights(spk_llama *m, const spk_weights *w)
{
    const int L = m->n_layers;
    const size_t E = sizeof(float) * (size_t)m->hp.n_embd;
    m->dw = *w;
    m->dlayers = calloc((size_t)(L > 0 ? L : 1), sizeof *m->dlayers);
    m->uploads = calloc(2 * (size_t)(4 + 24 * L), sizeof *m->uploads);
    if (!m->dlayers || !m->uploads)
        return spk_err(SPK_ERR_NOMEM, "llama: out of memory");
    memcpy(m->dlayers, w->layers, sizeof *m->dlayers * (size_t)L);
    m->dw.layers = m->dlayers;
    m->dw.rope_factors = NULL; /* folded into the frequency table on the host */
    SPK_TRY(upload_mat(m, &m->dw.tok_embd, "the token embedding"));
    SPK_TRY(upload_mat(m, &m->dw.output, "the output head"));
    SPK_TRY(upload(m, (const void **)&m->dw.out_norm, E, "the output norm"));
    for (int l = 0; l < L; l++) {
        spk_layer *d = &m->dlayers[l];
        spk_wmat *mats[] = {&d->wq, &d->wk, &d->wv, &d->wo, &d->w_gate, &d->w_up, &d->w_down};
        for (size_t i = 0; i < sizeof mats / sizeof *mats; i++)
            SPK_TRY(upload_mat(m, mats[i], "a layer weight"));
        SPK_TRY(upload(m, (const void **)&d->attn_norm, E, "an attention norm"));
        SPK_TRY(upload(m, (const void **)&d->q_norm, sizeof(float) * (size_t)m->hp.head_dim, "a Q norm"));
        SPK_TRY(upload(m, (const void **)&d->k_norm, sizeof(float) * (size_t)m->hp.head_dim, "a K norm"));
        SPK_TRY(upload(m, (const void **)&d->ffn_norm, E, "an MLP norm"));
        /* gpt-oss: this rank's Q/K/V bias rows, the output bias and its heads' sinks */
        SPK_TRY(upload(m, (const void **)&d->bq, sizeof(float) * (size_t)m->q_dim, "a Q bias"));
        SPK_TRY(upload(m, (const void **)&d->bk, sizeof(float) * (size_t)m->kv_dim, "a K bias"));
        SPK_TRY(upload(m, (const void **)&d->bv, sizeof(float) * (size_t)m->kv_dim, "a V bias"));
        SPK_TRY(upload(m, (const void **)&d->bo, E, "an output bias"));
        SPK_TRY(upload(m, (const void **)&d->sinks, sizeof(float) * (size_t)(m->q_dim / m->hp.head_dim),
                       "attention sinks"));
        if (d->moe.n_expert > 0)
            SPK_TRY(upload_moe(m, &d->moe));
    }
    m->w = &m->dw;
    return SPK_OK;
}

/* A host backend's repacking of the matrices only matmul reads (and the tied embedding, which
 * embed reads packed), once: m->dw with m->w pointing at it. Memory-neutral: the packed copy
 * replaces the mapping's pages of the original, which the backend drops as it packs them, a chunk
 * at a time, so the peak is one chunk above, not one matrix (file-backed or Hugging Face regions:
 * re-read or re-converted if anything touches them again). A layer's stacked experts
 * pack as one matrix of n_loc * n_out rows when they lie back to back and n_out is a multiple of
 * 8 (so no 8-row group spans two experts, and expert e's packed rows start at e * stride as
 * before): cpu_moe multiplies each expert's slice in its layout. Buffers the weights own (the
 * column slices of a TP shard, which only this model reads: spk_llama_create) are packed in
 * place, so a TP rank's attention output and MLP down run the packed kernels too. Left unpacked:
 * routers and expert row slices under TP (the expert stride is not theirs). */
static spk_status pack_weights(spk_llama *m, const spk_weights *w)
{
    const int L = m->n_layers;
    m->dw = *w;
    m->dlayers = calloc((size_t)(L > 0 ? L : 1), sizeof *m->dlayers);
    m->packed = calloc((size_t)(1 + 7 * L), sizeof *m->packed);
    if (!m->dlayers || !m->packed)
        return spk_err(SPK_ERR_NOMEM, "llama: out of memory");
    memcpy(m->dlayers, w->layers, sizeof *m->dlayers * (size_t)L);
    m->dw.layers = m->dlayers;
    m->w = &m->dw;
    for (int i = -1; i < L; i++) {
        spk_layer *d = i >= 0 ? &m->dlayers[i] : NULL;
        spk_wmat *list[7] = {0};
        int mult[7] = {1, 1, 1, 1, 1, 1, 1}; /* matrices stacked back to back (experts) */
        int n = 0;
        if (!d) {
            if (m->sh.last)
                list[n++] = &m->dw.output;
        } else {
            spk_wmat *lm[] = {&d->wq, &d->wk, &d->wv, &d->wo, &d->w_gate, &d->w_up, &d->w_down};
            for (int k = 0; k < (d->moe.n_expert ? 4 : 7); k++)
                list[n++] = lm[k];
        }
        if (d && d->moe.n_expert) {
            spk_moe *x = &d->moe;
            spk_wmat *em[] = {&x->gate, &x->up, &x->down};
            const size_t es[] = {x->stride_gate, x->stride_up, x->stride_down};
            for (int k = 0; k < 3; k++)
                if (em[k]->n_out % 8 == 0 && es[k] == wmat_bytes(em[k])) {
                    mult[n] = x->e1 - x->e0;
                    list[n++] = em[k];
                }
        }
        for (int k = 0; k < n; k++) {
            spk_wmat *x = list[k];
            int owned = 0;
            for (int o = 0; o < w->n_owned && !owned; o++)
                owned = w->owned[o] == x->data;
            if (!x->data)
                continue;
            spk_wmat all = *x; /* the whole stack: mult matrices back to back */
            all.n_out *= mult[k];
            /* tied to the embedding: embed reads the packed head if it is the same matrix, else
             * (another shape or type over the same bytes) the original's pages stay */
            const int tied = !d && m->sh.first && w->tok_embd.data == all.data;
            const int same = tied && w->tok_embd.n_out == all.n_out && w->tok_embd.type == all.type &&
                             w->tok_embd.n_in == all.n_in;
            void *buf = NULL;
            const int mode = owned ? SPK_PACK_IN_PLACE : !tied || same ? SPK_PACK_DROP : SPK_PACK_COPY;
            SPK_TRY(m->be->ops->pack(m->be, &all, mode, &buf));
            if (owned && all.layout != x->layout) {
                x->layout = all.layout;
                m->packed_bytes += wmat_bytes(&all);
                continue;
            }
            if (!buf)
                continue;
            x->data = all.data;
            x->layout = all.layout;
            m->packed[m->n_packed++] = buf;
            m->packed_bytes += wmat_bytes(&all);
            if (same)
                m->dw.tok_embd = *x;
        }
    }
    return SPK_OK;
}

/* Physical memory of this machine in bytes (0 if unknown). */
static uint64_t phys_bytes(void)
{
    long n = sysconf(_SC_PHYS_PAGES), pg = sysconf(_SC_PAGESIZE);
    return n > 0 && pg > 0 ? (uint64_t)n * (uint64_t)pg : 0;
}

spk_status spk_llama_create(const spk_hparams *hp, const spk_weights *w, const spk_shard *sh, int n_ctx,
                            int n_seq, int max_tok, int n_threads, spk_llama **out)
{
    *out = NULL;
    if (n_seq < 1 || n_seq > 4096 || n_ctx < 1 || n_ctx > 1 << 24)
        return spk_err(SPK_ERR_INVALID_ARG, "llama: bad n_ctx %d / n_seq %d", n_ctx, n_seq);
    const int bs = 16;
    spk_status st = spk_llama_create_paged(hp, w, sh, n_ctx, n_seq * ((n_ctx + bs - 1) / bs), bs, max_tok,
                                           n_threads, SPK_BACKEND_CPU, -1, out);
    if (st == SPK_OK)
        (*out)->n_seq = n_seq;
    return st;
}

spk_status spk_llama_create_paged(const spk_hparams *hp, const spk_weights *w, const spk_shard *sh, int n_ctx,
                                  int n_blocks, int block_size, int max_tok, int n_threads, spk_backend_type backend,
                                  int device, spk_llama **out)
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
    SPK_TRY(spk_shard_check(hp, sh));
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
    m->max_tok = max_tok;
    m->n_layers = sh->l1 - sh->l0;
    m->n_heads = sh->h1 - sh->h0;
    m->n_kv = sh->kv1 - sh->kv0;
    m->kv_dim = m->n_kv * hp->head_dim;
    m->q_dim = m->n_heads * hp->head_dim;
    m->n_ff = sh->f1 - sh->f0;
    m->n_out = sh->v1 - sh->v0;
    const size_t T = (size_t)max_tok, E = (size_t)hp->n_embd, kv_rows = (size_t)n_blocks * (size_t)block_size;
    /* What the sizes ask for, checked against the machine before anything is allocated: the
     * sizes may come from a peer (the LOAD command), and a KV cache or gather buffer larger than
     * memory must be a clear error, not an allocator abort or the OOM killer. */
    const uint64_t kv_need = 2 * sizeof(spk_f16) * (uint64_t)m->n_layers * kv_rows * (uint64_t)m->kv_dim;
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
    spk_status st = spk_backend_create(backend, device, n_threads, n_ctx, hp->head_dim, &m->be);
    if (st != SPK_OK) {
        free(m);
        return st;
    }
    if ((hp->attn_sinks || hp->biases || hp->swa_window) && !m->be->ops->add_bias) {
        st = spk_err(SPK_ERR_UNSUPPORTED, "llama: %s needs learned attention sinks, sliding-window attention (%d) and "
                     "projection biases, which the %s backend does not implement yet: run it on the CPU backend",
                     hp->arch, hp->swa_window, m->be->ops->name);
        spk_llama_free(m);
        return st;
    }
    if (hp->n_expert && (!m->be->ops->moe || !m->be->ops->moe_size)) {
        st = spk_err(SPK_ERR_UNSUPPORTED, "llama: %s is a mixture-of-experts model (%d experts, %d per token) and the "
                     "%s backend has no 'moe' op yet: run it on the CPU backend", hp->arch, hp->n_expert,
                     hp->n_expert_used, m->be->ops->name);
        spk_llama_free(m);
        return st;
    }
    if (m->be->ops->upload && (st = upload_weights(m, w)) != SPK_OK) {
        spk_llama_free(m);
        return st;
    }
    if (!m->be->ops->upload && m->be->ops->pack && (st = pack_weights(m, w)) != SPK_OK) {
        spk_llama_free(m);
        return st;
    }
    m->x = zalloc(m, 0, T * E, sizeof(float), &st);
    m->xb = zalloc(m, 0, T * E, sizeof(float), &st);
    m->xb2 = zalloc(m, 0, T * E, sizeof(float), &st);
    m->q = zalloc(m, 0, T * (size_t)m->q_dim, sizeof(float), &st);
    m->k = zalloc(m, 0, T * (size_t)m->kv_dim, sizeof(float), &st);
    m->v = zalloc(m, 0, T * (size_t)m->kv_dim, sizeof(float), &st);
    m->att = zalloc(m, 0, T * (size_t)m->q_dim, sizeof(float), &st);
    m->hb = zalloc(m, 0, T * (size_t)m->n_ff, sizeof(float), &st);
    m->hb2 = zalloc(m, 0, T * (size_t)m->n_ff, sizeof(float), &st);
    m->freqs = zalloc(m, 0, (size_t)hp->rot_dim / 2, sizeof(float), &st);
    m->rows = zalloc(m, 1, T, sizeof(int), &st);
    if (m->be->ops->mem == SPK_MEM_DEVICE) { /* hidden rows in and out, or the logits rows */
        const size_t io = T * (E > (size_t)m->n_out ? E : (size_t)m->n_out);
        m->io = zalloc(m, 0, io, sizeof(float), &st);
    }
    size_t act = 0;
    if (st == SPK_OK) {
        const spk_backend_ops *o = m->be->ops;
        act = sh->last ? o->act_size(m->be, &w->output, max_tok) : 0;
        for (int l = 0; l < m->n_layers; l++) { /* types may differ per layer */
            const spk_layer *L = &w->layers[l];
            const spk_wmat *lm[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
            for (size_t i = 0; i < 7; i++) {
                size_t sz = o->act_size(m->be, lm[i], max_tok);
                act = sz > act ? sz : act;
            }
        }
    }
    m->act = zalloc(m, 0, act, 1, &st);
    if (st == SPK_OK && hp->n_expert) {
        size_t ms = 0;
        for (int l = 0; l < m->n_layers; l++) {
            size_t sz = m->be->ops->moe_size(m->be, &w->layers[l].moe, max_tok);
            ms = sz > ms ? sz : ms;
        }
        m->moe_scratch = zalloc(m, 0, ms, 1, &st);
    }
    size_t kv = (size_t)m->n_layers * kv_rows * (size_t)m->kv_dim;
    m->kv = (spk_kv_cache){.rows = kv_rows, .kv_dim = m->kv_dim, .n_kv_heads = m->n_kv, .head_dim = hp->head_dim,
                           .block_size = block_size, .n_ctx = n_ctx};
    m->kv.k = zalloc(m, 0, kv, sizeof(spk_f16), &st);
    m->kv.v = zalloc(m, 0, kv, sizeof(spk_f16), &st);
    m->kv_bytes = 2 * (uint64_t)kv * sizeof(spk_f16);
    m->contig = zalloc(m, 1, (size_t)max_tok, 1, &st);
    m->rows_need = zalloc(m, 1, (size_t)max_tok, sizeof(int), &st);
    if (st != SPK_OK) {
        spk_llama_free(m);
        return st;
    }
    /* the RoPE frequency table, made on the host and copied where the backend reads it */
    float *freqs = m->be->ops->copy ? malloc(sizeof(float) * (size_t)(hp->rot_dim / 2 > 0 ? hp->rot_dim / 2 : 1))
                                    : m->freqs;
    if (!freqs) {
        spk_llama_free(m);
        return spk_err(SPK_ERR_NOMEM, "llama: out of memory");
    }
    m->attn_scale = 1.0f / sqrtf((float)hp->head_dim);
    if (hp->yarn) {
        const float af = spk_yarn_freqs(freqs, hp->rot_dim, hp->rope_theta, hp->scaling.factor, hp->scaling.orig_ctx,
                                        hp->yarn_beta_fast, hp->yarn_beta_slow, hp->yarn_attn_factor);
        m->attn_scale *= af * af; /* cos and sin times af: Q.K times af^2 */
    } else {
        spk_rope_freqs(freqs, hp->rot_dim, hp->rope_theta, NULL);
    }
    for (int i = 0; i < hp->rot_dim / 2 && !hp->yarn; i++) {
        if (hp->scaling.factor > 0)
            freqs[i] /= hp->scaling.factor;
        if (w->rope_factors)
            freqs[i] /= w->rope_factors[i];
    }
    if (freqs != m->freqs) {
        st = m->be->ops->copy(m->be, m->freqs, freqs, sizeof(float) * (size_t)(hp->rot_dim / 2));
        free(freqs);
        if (st != SPK_OK) {
            spk_llama_free(m);
            return spk_err(st, "llama: cannot copy the RoPE table to the %s backend", m->be->ops->name);
        }
    }
    *out = m;
    return SPK_OK;
}

void spk_llama_free(spk_llama *m)
{
    if (!m)
        return;
    if (m->be) {
        void *bufs[] = {m->x, m->xb, m->xb2, m->q, m->k, m->v, m->att, m->hb, m->hb2, m->freqs, m->act,
                        m->kv.k, m->kv.v, m->io, m->moe_scratch};
        for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
            if (bufs[i])
                m->be->ops->free(m->be, bufs[i]);
        for (int i = 1; i < m->n_uploads; i += 2)
            m->be->ops->release(m->be, m->uploads[i]);
        spk_backend_destroy(m->be);
    }
    for (int i = 0; i < m->n_packed; i++)
        free(m->packed[i]);
    free(m->packed);
    free(m->uploads);
    free(m->dlayers);
    free(m->rows);
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
uint64_t spk_llama_alloc_bytes(const spk_llama *m)
{
    const spk_backend_ops *o = m->be->ops;
    return m->alloc_bytes + (o->held_bytes ? o->held_bytes(m->be) : 0);
}
const spk_backend *spk_llama_backend(const spk_llama *m) { return m->be; }
uint64_t spk_llama_packed_bytes(const spk_llama *m) { return m->packed_bytes; }

float spk_yarn_freqs(float *freqs, int rot_dim, float theta, float factor, int orig_ctx, float beta_fast,
                     float beta_slow, float attn_factor)
{
    /* transformers' _compute_yarn_parameters with truncate false (gpt-oss's config): the
     * frequencies of the dims below the correction range are kept (extrapolation), those above
     * it divided by factor (interpolation), a linear ramp between */
    const double dim = rot_dim, base = theta, twopi = 6.283185307179586;
    double lo = dim * log((double)orig_ctx / (beta_fast * twopi)) / (2 * log(base));
    double hi = dim * log((double)orig_ctx / (beta_slow * twopi)) / (2 * log(base));
    lo = lo > 0 ? lo : 0;
    hi = hi < dim - 1 ? hi : dim - 1;
    if (lo == hi)
        hi += 0.001;
    for (int i = 0; i < rot_dim / 2; i++) {
        const double pf = pow(base, 2.0 * i / dim), ext = 1.0 / pf, itp = 1.0 / (factor * pf);
        double ramp = ((double)i - lo) / (hi - lo);
        ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
        const double ef = 1.0 - ramp; /* the share of extrapolation */
        freqs[i] = (float)(itp * (1.0 - ef) + ext * ef);
    }
    if (attn_factor > 0)
        return attn_factor;
    return factor <= 1 ? 1.0f : (float)(0.1 * log((double)factor) + 1.0);
}

/* ---- forward ------------------------------------------------------------------------------ */

/* Sum the partial products of the TP group (one thread talks, the others wait), then barrier. */
static void tp_reduce(spk_llama *m, float *buf, int n_tok, int ith)
{
    m->be->ops->barrier(m->be);
    if (m->sh.allreduce) {
        if (ith == 0 && m->ar_status == SPK_OK)
            m->ar_status = m->sh.allreduce(m->sh.ar_ctx, buf, (size_t)n_tok * (size_t)m->hp.n_embd);
        m->be->ops->barrier(m->be);
    }
}

/* The layer loop: thread ith of nth (CPU pool) or the one stream walker (0 of 1). */
static void forward_thread(void *arg, int ith, int nth)
{
    spk_llama *m = arg;
    spk_backend *be = m->be;
    const spk_backend_ops *o = be->ops;
    const spk_hparams *hp = &m->hp;
    const spk_weights *w = m->w;
    const spk_step *s = &m->step;
    const int T = s->n_tok, E = hp->n_embd, F = m->n_ff;
    const float scale = m->attn_scale;

    if (m->sh.first) {
        const int split = spk_llama_embd_split(hp, &m->sh);
        o->embed(be, m->x, &w->tok_embd, s->token, T, split ? m->sh.v0 : 0, E, ith, nth);
        if (split)
            tp_reduce(m, m->x, T, ith);
    } else {
        o->copy_rows(be, m->x, m->hidden_in, T, E, ith, nth);
    }
    o->barrier(be);

    for (int l = 0; l < m->n_layers; l++) {
        const spk_layer *L = &w->layers[l];
        /* attention block: this rank's heads */
        o->rmsnorm(be, m->xb, m->x, NULL, L->attn_norm, T, E, hp->eps, ith, nth);
        o->quantize(be, m->act, &L->wq, m->xb, T, ith, nth);
        o->barrier(be);
        o->matmul(be, m->q, &L->wq, m->act, T, ith, nth);
        o->matmul(be, m->k, &L->wk, m->act, T, ith, nth);
        o->matmul(be, m->v, &L->wv, m->act, T, ith, nth);
        o->barrier(be);
        if (L->bq) { /* gpt-oss: row ops on the rows rope_store then reads (no barrier) */
            o->add_bias(be, m->q, L->bq, T, m->q_dim, ith, nth);
            o->add_bias(be, m->k, L->bk, T, m->kv_dim, ith, nth);
            o->add_bias(be, m->v, L->bv, T, m->kv_dim, ith, nth);
        }
        if (L->q_norm) { /* qwen3: row ops on the rows rope_store then reads (no barrier) */
            o->head_rmsnorm(be, m->q, L->q_norm, T, m->n_heads, hp->head_dim, hp->eps, ith, nth);
            o->head_rmsnorm(be, m->k, L->k_norm, T, m->n_kv, hp->head_dim, hp->eps, ith, nth);
        }
        o->rope_store(be, m->q, m->k, m->v, m->n_heads, hp->rot_dim, hp->rope_neox, m->freqs, &m->kv, l, s, ith,
                      nth);
        o->barrier(be);
        o->attention(be, m->att, m->q, m->n_heads, scale, L->sinks, L->swa, &m->kv, l, s, ith, nth);
        o->barrier(be);
        o->quantize(be, m->act, &L->wo, m->att, T, ith, nth);
        o->barrier(be);
        o->matmul(be, m->xb2, &L->wo, m->act, T, ith, nth);
        tp_reduce(m, m->xb2, T, ith);
        if (L->bo) /* gpt-oss: after the TP sum, on every rank (a row op like the add below) */
            o->add_bias(be, m->xb2, L->bo, T, E, ith, nth);
        /* MLP block: this rank's intermediate columns */
        o->add(be, m->x, m->x, m->xb2, T, E, ith, nth);
        o->rmsnorm(be, m->xb, m->x, NULL, L->ffn_norm, T, E, hp->eps, ith, nth);
        if (L->moe.n_expert) { /* mixture of experts: this rank's columns of every expert */
            o->moe(be, m->xb2, m->xb, &L->moe, m->moe_scratch, T, ith, nth);
            tp_reduce(m, m->xb2, T, ith);
            o->add(be, m->x, m->x, m->xb2, T, E, ith, nth);
            continue;
        }
        o->quantize(be, m->act, &L->w_gate, m->xb, T, ith, nth);
        o->barrier(be);
        o->matmul(be, m->hb, &L->w_gate, m->act, T, ith, nth);
        o->matmul(be, m->hb2, &L->w_up, m->act, T, ith, nth);
        o->barrier(be);
        o->swiglu(be, m->hb, m->hb, m->hb2, T, F, ith, nth);
        o->quantize(be, m->act, &L->w_down, m->hb, T, ith, nth);
        o->barrier(be);
        o->matmul(be, m->xb2, &L->w_down, m->act, T, ith, nth);
        tp_reduce(m, m->xb2, T, ith);
        o->add(be, m->x, m->x, m->xb2, T, E, ith, nth);
    }
    if (!m->sh.last) { /* hand the hidden states to the next stage */
        o->copy_rows(be, m->out, m->x, T, E, ith, nth);
        return;
    }
    if (m->n_rows == 0)
        return;
    /* final norm for the rows that want logits, gathered compactly into xb */
    o->barrier(be); /* residual adds of all tokens done */
    o->rmsnorm(be, m->xb, m->x, m->rows, w->out_norm, m->n_rows, E, hp->eps, ith, nth);
    o->quantize(be, m->act, &w->output, m->xb, m->n_rows, ith, nth);
    o->barrier(be);
    o->matmul(be, m->out, &w->output, m->act, m->n_rows, ith, nth);
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
    m->step = (spk_step){.n_tok = b->n_tok, .token = b->token, .pos = b->pos, .seq = b->seq,
                         .table_off = b->table_off, .block_table = b->block_table, .contig = m->contig,
                         .n_seqs = b->block_table ? b->n_seqs : 0, .n_table = b->block_table ? b->n_table : 0};
    const spk_backend_ops *o = m->be->ops;
    const size_t in_bytes = sizeof(float) * (size_t)b->n_tok * (size_t)m->hp.n_embd;
    const size_t out_bytes = !m->sh.last ? in_bytes : sizeof(float) * (size_t)n_rows * (size_t)m->n_out;
    spk_status st = SPK_OK;
    /* a device backend reads and writes its own buffer; the caller's arrays are host memory */
    m->hidden_in = hidden_in && m->io ? m->io : hidden_in;
    m->out = m->io ? m->io : out;
    m->n_rows = n_rows;
    m->ar_status = SPK_OK;
    if (o->begin && (st = o->begin(m->be, &m->step)) != SPK_OK)
        return spk_err_prefix(st, "llama forward: %s backend: batch set-up", o->name);
    if (hidden_in && m->io && (st = o->copy(m->be, m->io, hidden_in, in_bytes)) != SPK_OK)
        return spk_err(st, "llama forward: cannot copy the hidden states to the %s backend", o->name);
    st = o->run(m->be, forward_thread, m);
    if (m->ar_status != SPK_OK)
        return spk_err_prefix(m->ar_status, "llama forward: tensor-parallel all-reduce");
    if (st != SPK_OK) {
        char why[256] = "";
        return spk_err(st, "llama forward: %s backend: %s", o->name, o->error ? o->error(m->be, why, sizeof why) : "failed");
    }
    if (m->io && out_bytes && (st = o->copy(m->be, out, m->io, out_bytes)) != SPK_OK)
        return spk_err(st, "llama forward: cannot copy the results back from the %s backend", o->name);
    return SPK_OK;
}
