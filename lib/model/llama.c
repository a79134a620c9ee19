/*
 * llama architecture: hyperparameters and weights from GGUF, and the forward pass.
 * The forward pass is one thread-pool dispatch: every thread walks the same straight loop over
 * layers, takes its slice of each op and meets the others at a barrier between ops.
 */
#include "model/llama.h"

#include <math.h>
#include <sys/mman.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "cpu/matmul.h"

/* ---- loading ------------------------------------------------------------------------------ */

static spk_status get_u32_key(const gguf_file *f, const char *arch, const char *suffix, bool required,
                              uint32_t dflt, uint32_t *out)
{
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    if (!gguf_find(f, key)) {
        if (required)
            return spk_err(SPK_ERR_FORMAT, "%s: missing metadata key '%s'", f->path, key);
        *out = dflt;
        return SPK_OK;
    }
    return gguf_get_u32(f, key, out);
}

static spk_status get_f32_key(const gguf_file *f, const char *arch, const char *suffix, float dflt,
                              float *out)
{
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    if (!gguf_find(f, key)) {
        *out = dflt;
        return SPK_OK;
    }
    return gguf_get_f32(f, key, out);
}

static spk_status find_mat(const gguf_file *f, const char *name, int n_in, int n_out, spk_wmat *out)
{
    const gguf_tensor *t = gguf_find_tensor(f, name);
    if (!t)
        return spk_err(SPK_ERR_FORMAT, "%s: missing tensor '%s'", f->path, name);
    if (t->n_dims != 2 || t->ne[0] != (uint64_t)n_in || t->ne[1] != (uint64_t)n_out)
        return spk_err(SPK_ERR_FORMAT,
                       "%s: tensor '%s' has shape [%llu, %llu] (%u dims), expected [%d, %d]", f->path,
                       name, (unsigned long long)t->ne[0], (unsigned long long)t->ne[1], t->n_dims,
                       n_in, n_out);
    if (!spk_matmul_supported(t->type, n_in))
        return spk_err(SPK_ERR_UNSUPPORTED, "%s: tensor '%s': type %s not supported for matmul",
                       f->path, name, spk_dtype_get(t->type) ? spk_dtype_get(t->type)->name : "?");
    out->data = t->data;
    out->type = t->type;
    out->n_in = n_in;
    out->n_out = n_out;
    return SPK_OK;
}

static spk_status find_vec(const gguf_file *f, const char *name, int n, const float **out)
{
    const gguf_tensor *t = gguf_find_tensor(f, name);
    if (!t)
        return spk_err(SPK_ERR_FORMAT, "%s: missing tensor '%s'", f->path, name);
    if (t->type != SPK_DT_F32 || t->n_elements != (uint64_t)n || t->ne[0] != (uint64_t)n)
        return spk_err(SPK_ERR_FORMAT, "%s: tensor '%s' must be F32 [%d], has %llu elements of type %d",
                       f->path, name, n, (unsigned long long)t->n_elements, (int)t->type);
    *out = t->data;
    return SPK_OK;
}

#define TRY(x)                                                                                     \
    do {                                                                                           \
        spk_status st_ = (x);                                                                      \
        if (st_ != SPK_OK)                                                                         \
            return st_;                                                                            \
    } while (0)

static spk_status load_hparams(const gguf_file *f, spk_hparams *hp)
{
    gguf_str arch;
    TRY(gguf_get_str(f, "general.architecture", &arch));
    if (!gguf_str_eq(arch, "llama"))
        return spk_err(SPK_ERR_UNSUPPORTED, "%s: architecture '%.*s' is not supported (llama only)",
                       f->path, (int)(arch.len > 64 ? 64 : arch.len), arch.ptr);
    snprintf(hp->arch, sizeof hp->arch, "llama");
    uint32_t n_layers, n_embd, n_heads, n_kv, n_ff, n_ctx, head_dim, rot_dim;
    TRY(get_u32_key(f, hp->arch, "block_count", true, 0, &n_layers));
    TRY(get_u32_key(f, hp->arch, "embedding_length", true, 0, &n_embd));
    TRY(get_u32_key(f, hp->arch, "attention.head_count", true, 0, &n_heads));
    TRY(get_u32_key(f, hp->arch, "attention.head_count_kv", false, n_heads, &n_kv));
    TRY(get_u32_key(f, hp->arch, "feed_forward_length", true, 0, &n_ff));
    TRY(get_u32_key(f, hp->arch, "context_length", false, 2048, &n_ctx));
    if (n_layers < 1 || n_layers > 1024 || n_embd < 1 || n_embd > 65536 || n_heads < 1 ||
        n_heads > 1024 || n_kv < 1 || n_heads % n_kv != 0 || n_ff < 1 || n_ff > 1 << 20 || n_ctx < 1)
        return spk_err(SPK_ERR_FORMAT,
                       "%s: bad hyperparameters: layers %u, embd %u, heads %u, kv heads %u, ff %u, ctx %u",
                       f->path, n_layers, n_embd, n_heads, n_kv, n_ff, n_ctx);
    TRY(get_u32_key(f, hp->arch, "attention.key_length", false, n_embd / n_heads, &head_dim));
    TRY(get_u32_key(f, hp->arch, "rope.dimension_count", false, head_dim, &rot_dim));
    if (head_dim < 2 || head_dim > 1024 || head_dim % 2 || rot_dim > head_dim || rot_dim % 2 || rot_dim == 0)
        return spk_err(SPK_ERR_FORMAT, "%s: bad head_dim %u / rope dims %u", f->path, head_dim, rot_dim);
    hp->n_layers = (int)n_layers;
    hp->n_embd = (int)n_embd;
    hp->n_heads = (int)n_heads;
    hp->n_kv_heads = (int)n_kv;
    hp->n_ff = (int)n_ff;
    hp->n_ctx_train = (int)(n_ctx > 1u << 24 ? 1u << 24 : n_ctx);
    hp->head_dim = (int)head_dim;
    hp->rot_dim = (int)rot_dim;
    TRY(get_f32_key(f, hp->arch, "attention.layer_norm_rms_epsilon", 1e-5f, &hp->eps));
    TRY(get_f32_key(f, hp->arch, "rope.freq_base", 10000.0f, &hp->rope_theta));
    if (!(hp->eps > 0 && hp->eps < 1) || !(hp->rope_theta > 1 && hp->rope_theta < 1e12f))
        return spk_err(SPK_ERR_FORMAT, "%s: bad rms eps %g or rope theta %g", f->path, hp->eps,
                       hp->rope_theta);
    memset(&hp->scaling, 0, sizeof hp->scaling);
    char key[128];
    snprintf(key, sizeof key, "%s.rope.scaling.type", hp->arch);
    gguf_str stype;
    if (gguf_find(f, key)) {
        TRY(gguf_get_str(f, key, &stype));
        if (gguf_str_eq(stype, "linear")) {
            TRY(get_f32_key(f, hp->arch, "rope.scaling.factor", 1.0f, &hp->scaling.factor));
            if (!(hp->scaling.factor >= 1.0f && hp->scaling.factor < 1e6f))
                return spk_err(SPK_ERR_FORMAT, "%s: bad rope scaling factor %g", f->path,
                               hp->scaling.factor);
        } else if (!gguf_str_eq(stype, "none")) {
            return spk_err(SPK_ERR_UNSUPPORTED, "%s: rope scaling type '%.*s' not supported",
                           f->path, (int)(stype.len > 32 ? 32 : stype.len), stype.ptr);
        }
    }
    return SPK_OK;
}

/* Tensors named blk.N.* must have N < n_layers (a file with extra layers is malformed). */
static spk_status check_layer_names(const gguf_file *f, int n_layers)
{
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        gguf_str n = f->tensors[i].name;
        if (n.len < 5 || memcmp(n.ptr, "blk.", 4) != 0)
            continue;
        uint64_t idx = 0;
        size_t j = 4;
        while (j < n.len && n.ptr[j] >= '0' && n.ptr[j] <= '9' && idx < 1u << 20)
            idx = idx * 10 + (uint64_t)(n.ptr[j++] - '0');
        if (j == 4 || idx >= (uint64_t)n_layers)
            return spk_err(SPK_ERR_FORMAT, "%s: tensor '%.*s' is outside block_count %d", f->path,
                           (int)(n.len > 96 ? 96 : n.len), n.ptr, n_layers);
    }
    return SPK_OK;
}

static uint64_t mat_params(const spk_wmat *m) { return (uint64_t)m->n_in * (uint64_t)m->n_out; }

spk_status spk_llama_load(const gguf_file *f, spk_hparams *hp, spk_weights *w)
{
    memset(w, 0, sizeof *w);
    TRY(load_hparams(f, hp));
    const gguf_tensor *te = gguf_find_tensor(f, "token_embd.weight");
    if (!te)
        return spk_err(SPK_ERR_FORMAT, "%s: missing tensor 'token_embd.weight'", f->path);
    if (te->n_dims != 2 || te->ne[1] < 1 || te->ne[1] > 1u << 24)
        return spk_err(SPK_ERR_FORMAT, "%s: token_embd.weight has a bad shape", f->path);
    hp->n_vocab = (int)te->ne[1];
    uint32_t nv;
    TRY(get_u32_key(f, hp->arch, "vocab_size", false, (uint32_t)hp->n_vocab, &nv));
    if (nv != (uint32_t)hp->n_vocab)
        return spk_err(SPK_ERR_FORMAT, "%s: vocab_size %u but token_embd has %d rows", f->path, nv,
                       hp->n_vocab);
    TRY(check_layer_names(f, hp->n_layers));

    const int E = hp->n_embd, Q = hp->n_heads * hp->head_dim, KV = hp->n_kv_heads * hp->head_dim;
    TRY(find_mat(f, "token_embd.weight", E, hp->n_vocab, &w->tok_embd));
    TRY(find_vec(f, "output_norm.weight", E, &w->out_norm));
    if (gguf_find_tensor(f, "output.weight"))
        TRY(find_mat(f, "output.weight", E, hp->n_vocab, &w->output));
    else
        w->output = w->tok_embd;
    /* Llama-3.x rope scaling is stored as per-frequency divisors (converted from the model's
     * rope_scaling config by the GGUF writer). */
    if (gguf_find_tensor(f, "rope_freqs.weight"))
    {
        TRY(find_vec(f, "rope_freqs.weight", hp->rot_dim / 2, &w->rope_factors));
        for (int i = 0; i < hp->rot_dim / 2; i++)
            if (!(w->rope_factors[i] > 0.0f && w->rope_factors[i] < 1e9f))
                return spk_err(SPK_ERR_FORMAT, "%s: rope_freqs.weight[%d] = %g is not a positive factor",
                               f->path, i, w->rope_factors[i]);
    }

    w->layers = calloc((size_t)hp->n_layers, sizeof *w->layers);
    if (!w->layers)
        return spk_err(SPK_ERR_NOMEM, "out of memory for %d layers", hp->n_layers);
    uint64_t np = mat_params(&w->tok_embd) + (uint64_t)E;
    if (w->output.data != w->tok_embd.data)
        np += mat_params(&w->output);
    for (int l = 0; l < hp->n_layers; l++) {
        spk_layer *L = &w->layers[l];
        char name[96];
        spk_status st = SPK_OK;
#define MAT(field, tname, nin, nout)                                                               \
    if (st == SPK_OK) {                                                                            \
        snprintf(name, sizeof name, "blk.%d." tname ".weight", l);                                 \
        st = find_mat(f, name, nin, nout, &L->field);                                              \
        np += mat_params(&L->field);                                                               \
    }
#define VEC(field, tname)                                                                          \
    if (st == SPK_OK) {                                                                            \
        snprintf(name, sizeof name, "blk.%d." tname ".weight", l);                                 \
        st = find_vec(f, name, E, &L->field);                                                      \
        np += (uint64_t)E;                                                                         \
    }
        VEC(attn_norm, "attn_norm");
        VEC(ffn_norm, "ffn_norm");
        MAT(wq, "attn_q", E, Q);
        MAT(wk, "attn_k", E, KV);
        MAT(wv, "attn_v", E, KV);
        MAT(wo, "attn_output", Q, E);
        MAT(w_gate, "ffn_gate", E, hp->n_ff);
        MAT(w_up, "ffn_up", E, hp->n_ff);
        MAT(w_down, "ffn_down", hp->n_ff, E);
#undef MAT
#undef VEC
        if (st != SPK_OK) {
            spk_llama_weights_free(w);
            return st;
        }
    }
    w->n_params = np;
    for (uint64_t i = 0; i < f->n_tensors; i++)
        w->n_bytes += f->tensors[i].nbytes;
    return SPK_OK;
}

void spk_llama_weights_free(spk_weights *w)
{
    for (int i = 0; i < w->n_owned; i++)
        free(w->owned[i]);
    free(w->owned);
    free(w->layers);
    memset(w, 0, sizeof *w);
}

/* ---- slicing for pipeline / tensor parallelism -------------------------------------------- */

void spk_shard_full(const spk_hparams *hp, spk_shard *sh)
{
    memset(sh, 0, sizeof *sh);
    sh->l1 = hp->n_layers;
    sh->h1 = hp->n_heads;
    sh->kv1 = hp->n_kv_heads;
    sh->f1 = hp->n_ff;
    sh->v1 = hp->n_vocab;
    sh->first = sh->last = true;
}

static spk_status check_shard(const spk_hparams *hp, const spk_shard *sh)
{
    const int g = hp->n_heads / hp->n_kv_heads;
    if (sh->l0 < 0 || sh->l1 > hp->n_layers || sh->l0 >= sh->l1 || sh->kv0 < 0 || sh->kv1 > hp->n_kv_heads ||
        sh->kv0 >= sh->kv1 || sh->h0 != sh->kv0 * g || sh->h1 != sh->kv1 * g || sh->f0 < 0 ||
        sh->f1 > hp->n_ff || sh->f0 >= sh->f1 || sh->v0 < 0 || sh->v1 > hp->n_vocab || sh->v0 >= sh->v1)
        return spk_err(SPK_ERR_INVALID_ARG,
                       "shard: layers [%d,%d) heads [%d,%d) kv [%d,%d) ffn [%d,%d) vocab [%d,%d) do not fit "
                       "the model (%d layers, %d/%d heads, ffn %d, vocab %d)",
                       sh->l0, sh->l1, sh->h0, sh->h1, sh->kv0, sh->kv1, sh->f0, sh->f1, sh->v0, sh->v1,
                       hp->n_layers, hp->n_heads, hp->n_kv_heads, hp->n_ff, hp->n_vocab);
    return SPK_OK;
}

/* Rows [r0, r1) of a matrix: a view into the mapping. */
static spk_wmat rows_of(const spk_wmat *m, int r0, int r1)
{
    spk_wmat out = *m;
    out.data = (const uint8_t *)m->data + (size_t)r0 * spk_dtype_row_size(m->type, (size_t)m->n_in);
    out.n_out = r1 - r0;
    return out;
}

/* Drop the mapping's pages of a matrix we copied from (they are file-backed: re-read on demand). */
static void release_pages(const spk_wmat *m)
{
    long pg = sysconf(_SC_PAGESIZE);
    uintptr_t a = (uintptr_t)m->data, e = a + spk_dtype_row_size(m->type, (size_t)m->n_in) * (size_t)m->n_out;
    a &= ~(uintptr_t)(pg - 1);
    madvise((void *)a, e - a, MADV_DONTNEED);
}

/* Columns [c0, c1) of a matrix: copied into an owned buffer (whole quantization blocks). */
static spk_status cols_of(spk_weights *w, const spk_wmat *m, int c0, int c1, spk_wmat *out)
{
    if (c0 == 0 && c1 == m->n_in) {
        *out = *m;
        return SPK_OK;
    }
    const spk_dtype_info *ti = spk_dtype_get(m->type);
    if (!ti || c0 % (int)ti->block || c1 % (int)ti->block || !spk_matmul_supported(m->type, c1 - c0))
        return spk_err(SPK_ERR_UNSUPPORTED, "shard: columns [%d,%d) of a %s matrix are not whole blocks of %u",
                       c0, c1, ti ? ti->name : "?", ti ? ti->block : 0);
    size_t src_row = spk_dtype_row_size(m->type, (size_t)m->n_in), dst_row = spk_dtype_row_size(m->type, (size_t)(c1 - c0));
    size_t off = (size_t)c0 / ti->block * ti->type_size;
    uint8_t *buf = malloc(dst_row * (size_t)m->n_out);
    void **owned = realloc(w->owned, sizeof(void *) * (size_t)(w->n_owned + 1));
    if (!buf || !owned) {
        free(buf);
        if (owned)
            w->owned = owned;
        return spk_err(SPK_ERR_NOMEM, "shard: out of memory for a %zu-byte weight slice", dst_row * (size_t)m->n_out);
    }
    w->owned = owned;
    w->owned[w->n_owned++] = buf;
    for (int r = 0; r < m->n_out; r++)
        memcpy(buf + (size_t)r * dst_row, (const uint8_t *)m->data + (size_t)r * src_row + off, dst_row);
    release_pages(m);
    *out = *m;
    out->data = buf;
    out->n_in = c1 - c0;
    return SPK_OK;
}

static uint64_t wmat_bytes(const spk_wmat *m)
{
    return (uint64_t)spk_dtype_row_size(m->type, (size_t)m->n_in) * (uint64_t)m->n_out;
}

spk_status spk_llama_shard(const spk_hparams *hp, const spk_weights *full, const spk_shard *sh, spk_weights *out)
{
    memset(out, 0, sizeof *out);
    TRY(check_shard(hp, sh));
    const int HD = hp->head_dim, nl = sh->l1 - sh->l0;
    out->out_norm = full->out_norm;
    out->rope_factors = full->rope_factors;
    out->tok_embd = full->tok_embd;
    out->output = rows_of(&full->output, sh->v0, sh->v1);
    out->layers = calloc((size_t)nl, sizeof *out->layers);
    if (!out->layers)
        return spk_err(SPK_ERR_NOMEM, "shard: out of memory");
    spk_status st = SPK_OK;
    for (int i = 0; i < nl && st == SPK_OK; i++) {
        const spk_layer *F = &full->layers[sh->l0 + i];
        spk_layer *L = &out->layers[i];
        L->attn_norm = F->attn_norm;
        L->ffn_norm = F->ffn_norm;
        L->wq = rows_of(&F->wq, sh->h0 * HD, sh->h1 * HD);
        L->wk = rows_of(&F->wk, sh->kv0 * HD, sh->kv1 * HD);
        L->wv = rows_of(&F->wv, sh->kv0 * HD, sh->kv1 * HD);
        L->w_gate = rows_of(&F->w_gate, sh->f0, sh->f1);
        L->w_up = rows_of(&F->w_up, sh->f0, sh->f1);
        st = cols_of(out, &F->wo, sh->h0 * HD, sh->h1 * HD, &L->wo);
        if (st == SPK_OK)
            st = cols_of(out, &F->w_down, sh->f0, sh->f1, &L->w_down);
    }
    if (st != SPK_OK) {
        spk_llama_weights_free(out);
        return st;
    }
    uint64_t bytes = 0;
    for (int i = 0; i < nl; i++) {
        const spk_layer *L = &out->layers[i];
        bytes += wmat_bytes(&L->wq) + wmat_bytes(&L->wk) + wmat_bytes(&L->wv) + wmat_bytes(&L->wo) +
                 wmat_bytes(&L->w_gate) + wmat_bytes(&L->w_up) + wmat_bytes(&L->w_down) +
                 2 * sizeof(float) * (uint64_t)hp->n_embd;
    }
    if (sh->first)
        bytes += wmat_bytes(&out->tok_embd);
    if (sh->last) { /* a tied head on the embedding stage is the same bytes, counted once */
        bool tied_here = sh->first && full->output.data == full->tok_embd.data;
        bytes += (tied_here ? 0 : wmat_bytes(&out->output)) + sizeof(float) * (uint64_t)hp->n_embd;
    }
    out->n_bytes = bytes;
    return SPK_OK;
}

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
    /* the call in progress */
    const spk_batch *b;
    const float *hidden_in;
    float *out;
    int n_rows;
    spk_status ar_status;
};

static void *xcalloc(size_t n, size_t size, spk_status *st)
{
    if (*st != SPK_OK)
        return NULL;
    void *p = n && size && n <= SIZE_MAX / size ? calloc(n, size) : NULL;
    if (!p)
        *st = spk_err(SPK_ERR_NOMEM, "llama run state: cannot allocate %zu x %zu bytes", n, size);
    return p;
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
    TRY(check_shard(hp, sh));
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
    spk_status st = spk_pool_create(n_threads, &m->pool);
    const size_t T = (size_t)max_tok, E = (size_t)hp->n_embd;
    m->x = xcalloc(T * E, sizeof(float), &st);
    m->xb = xcalloc(T * E, sizeof(float), &st);
    m->xb2 = xcalloc(T * E, sizeof(float), &st);
    m->q = xcalloc(T * (size_t)m->q_dim, sizeof(float), &st);
    m->k = xcalloc(T * (size_t)m->kv_dim, sizeof(float), &st);
    m->v = xcalloc(T * (size_t)m->kv_dim, sizeof(float), &st);
    m->att = xcalloc(T * (size_t)m->q_dim, sizeof(float), &st);
    m->hb = xcalloc(T * (size_t)m->n_ff, sizeof(float), &st);
    m->hb2 = xcalloc(T * (size_t)m->n_ff, sizeof(float), &st);
    m->freqs = xcalloc((size_t)hp->rot_dim / 2, sizeof(float), &st);
    m->scratch = xcalloc((size_t)n_threads * (size_t)n_ctx, sizeof(float), &st);
    m->rows = xcalloc(T, sizeof(int), &st);
    size_t act = sh->last ? act_need(&w->output, max_tok) : 0;
    for (int l = 0; l < m->n_layers; l++) { /* types may differ per layer */
        const spk_layer *L = &w->layers[l];
        const spk_wmat *lm[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
        for (size_t i = 0; i < 7; i++) {
            size_t s = act_need(lm[i], max_tok);
            act = s > act ? s : act;
        }
    }
    m->act = xcalloc(act, 1, &st);
    size_t kv = (size_t)m->n_layers * m->kv_rows * (size_t)m->kv_dim;
    m->kc = xcalloc(kv, sizeof(spk_f16), &st);
    m->vc = xcalloc(kv, sizeof(spk_f16), &st);
    size_t g = (size_t)n_threads * (size_t)n_ctx * (size_t)hp->head_dim;
    m->gk = xcalloc(g, sizeof(spk_f16), &st);
    m->gv = xcalloc(g, sizeof(spk_f16), &st);
    m->gs = xcalloc((size_t)n_threads, sizeof *m->gs, &st);
    m->contig = xcalloc((size_t)max_tok, 1, &st);
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
    free(m);
}

int spk_llama_n_ctx(const spk_llama *m) { return m->n_ctx; }
int spk_llama_block_size(const spk_llama *m) { return m->block_size; }
int spk_llama_n_blocks(const spk_llama *m) { return m->n_blocks; }
int spk_llama_max_tok(const spk_llama *m) { return m->max_tok; }
int spk_llama_n_out(const spk_llama *m) { return m->n_out; }

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
        for (int t = t0; t < t1; t++)
            spk_dequantize_row(m->x + (size_t)t * E,
                               (const uint8_t *)w->tok_embd.data + (size_t)b->token[t] * erow, w->tok_embd.type, E);
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

spk_status spk_llama_forward(spk_llama *m, const spk_batch *b, const float *hidden_in, float *out)
{
    if (!b || b->n_tok < 1 || b->n_tok > m->max_tok || !b->token || !b->pos || !b->seq)
        return spk_err(SPK_ERR_INVALID_ARG, "llama forward: bad batch (n_tok %d, max %d)",
                       b ? b->n_tok : -1, m->max_tok);
    int n_rows = 0;
    for (int i = 0; i < b->n_tok; i++) {
        if (b->token[i] < 0 || b->token[i] >= m->hp.n_vocab)
            return spk_err(SPK_ERR_INVALID_ARG, "llama forward: token %d out of vocabulary (%d)",
                           b->token[i], m->hp.n_vocab);
        int n_seqs = b->block_table ? b->n_seqs : m->n_seq;
        if (b->seq[i] < 0 || b->seq[i] >= n_seqs)
            return spk_err(SPK_ERR_INVALID_ARG, "llama forward: sequence %d out of range (%d)", b->seq[i], n_seqs);
        if (b->pos[i] < 0 || b->pos[i] >= m->n_ctx)
            return spk_err(SPK_ERR_INVALID_ARG, "llama forward: position %d outside context %d",
                           b->pos[i], m->n_ctx);
        if (b->block_table) {
            int need = b->pos[i] / m->block_size + 1;
            if (b->table_off[b->seq[i]] < 0 || (int64_t)b->table_off[b->seq[i]] + need > b->n_table)
                return spk_err(SPK_ERR_INVALID_ARG, "llama forward: block table of sequence %d too short for "
                               "position %d", b->seq[i], b->pos[i]);
            for (int j = 0; j < need; j++) {
                int blk = b->block_table[b->table_off[b->seq[i]] + j];
                if (blk < 0 || blk >= m->n_blocks)
                    return spk_err(SPK_ERR_INVALID_ARG, "llama forward: KV block %d out of range (%d)", blk,
                                   m->n_blocks);
            }
        }
        if (b->want_logits && b->want_logits[i])
            m->rows[n_rows++] = i;
    }
    if ((n_rows || !m->sh.last) && !out)
        return spk_err(SPK_ERR_INVALID_ARG, "llama forward: no output buffer");
    if (!m->sh.first && !hidden_in)
        return spk_err(SPK_ERR_INVALID_ARG, "llama forward: a later pipeline stage needs its input hidden states");
    if (b->block_table && (b->n_seqs < 1 || b->n_seqs > m->max_tok || !b->table_off))
        return spk_err(SPK_ERR_INVALID_ARG, "llama forward: %d sequences in a paged batch", b->n_seqs);
    /* which sequences' blocks are consecutive (attention reads them in place) */
    int n_seqs = b->block_table ? b->n_seqs : 0;
    memset(m->contig, 1, (size_t)m->max_tok);
    for (int i = 0; i < b->n_tok && b->block_table; i++) {
        int s0 = b->seq[i], need = b->pos[i] / m->block_size + 1;
        const int32_t *tab = b->block_table + b->table_off[s0];
        for (int j = 1; j < need && m->contig[s0]; j++)
            if (tab[j] != tab[0] + j)
                m->contig[s0] = 0;
    }
    (void)n_seqs;
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
