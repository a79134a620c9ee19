/*
 * llama architecture: the weights of a validated GGUF file (pointers into the mapping, nothing
 * read yet; the hyperparameters come from model/hparams.c), and the slices of them one rank of a
 * PP x TP layout holds.
 */
#include "model/llama.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common/error.h"
#include "cpu/matmul.h"

/* ---- loading ------------------------------------------------------------------------------ */

static spk_status find_mat(const spk_gguf_file *f, const char *name, int n_in, int n_out, spk_wmat *out)
{
    const spk_gguf_tensor *t = spk_gguf_find_tensor(f, name);
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

/* A stacked expert tensor [n_exp][n_out][n_in] (GGUF ne = {n_in, n_out, n_exp}): expert 0's matrix
 * and the bytes between experts. */
static spk_status find_exps(const spk_gguf_file *f, const char *name, int n_in, int n_out, int n_exp,
                            spk_wmat *out, size_t *stride)
{
    const spk_gguf_tensor *t = spk_gguf_find_tensor(f, name);
    if (!t)
        return spk_err(SPK_ERR_FORMAT, "%s: missing tensor '%s'", f->path, name);
    if (t->n_dims != 3 || t->ne[0] != (uint64_t)n_in || t->ne[1] != (uint64_t)n_out || t->ne[2] != (uint64_t)n_exp)
        return spk_err(SPK_ERR_FORMAT,
                       "%s: tensor '%s' has shape [%llu, %llu, %llu] (%u dims), expected [%d, %d, %d] "
                       "(n_in, n_out, expert_count)", f->path, name, (unsigned long long)t->ne[0],
                       (unsigned long long)t->ne[1], (unsigned long long)(t->n_dims > 2 ? t->ne[2] : 1), t->n_dims,
                       n_in, n_out, n_exp);
    if (!spk_matmul_supported(t->type, n_in))
        return spk_err(SPK_ERR_UNSUPPORTED, "%s: tensor '%s': type %s not supported for matmul",
                       f->path, name, spk_dtype_get(t->type) ? spk_dtype_get(t->type)->name : "?");
    out->data = t->data;
    out->type = t->type;
    out->n_in = n_in;
    out->n_out = n_out;
    *stride = spk_dtype_row_size(t->type, (size_t)n_in) * (size_t)n_out;
    return SPK_OK;
}

static spk_status find_vec(const spk_gguf_file *f, const char *name, int n, const float **out)
{
    const spk_gguf_tensor *t = spk_gguf_find_tensor(f, name);
    if (!t)
        return spk_err(SPK_ERR_FORMAT, "%s: missing tensor '%s'", f->path, name);
    if (t->type != SPK_DT_F32 || t->n_elements != (uint64_t)n || t->ne[0] != (uint64_t)n)
        return spk_err(SPK_ERR_FORMAT, "%s: tensor '%s' must be F32 [%d], has %llu elements of type %d",
                       f->path, name, n, (unsigned long long)t->n_elements, (int)t->type);
    *out = t->data;
    return SPK_OK;
}

/* An F32 bias of ne {n0, n1} (n1 1: a vector of n0). */
static spk_status find_bias(const spk_gguf_file *f, const char *name, int n0, int n1, const float **out)
{
    const spk_gguf_tensor *t = spk_gguf_find_tensor(f, name);
    if (!t)
        return spk_err(SPK_ERR_FORMAT, "%s: missing tensor '%s'", f->path, name);
    const bool ok = t->type == SPK_DT_F32 && t->n_elements == (uint64_t)n0 * (uint64_t)n1 && t->ne[0] == (uint64_t)n0 &&
                    (n1 == 1 ? t->n_dims == 1 : t->n_dims == 2 && t->ne[1] == (uint64_t)n1);
    if (!ok)
        return spk_err(SPK_ERR_FORMAT, "%s: tensor '%s' must be F32 [%d, %d], has %u dims [%llu, %llu] of type %d",
                       f->path, name, n0, n1, t->n_dims, (unsigned long long)t->ne[0],
                       (unsigned long long)(t->n_dims > 1 ? t->ne[1] : 1), (int)t->type);
    *out = t->data;
    return SPK_OK;
}

/* The architectures this forward pass runs. */
static bool arch_runs(const char *arch)
{
    static const char *const runs[] = {"llama", "qwen3", "qwen3moe", "gpt-oss"};
    for (size_t i = 0; i < sizeof runs / sizeof runs[0]; i++)
        if (strcmp(arch, runs[i]) == 0)
            return true;
    return false;
}

/* Tensors named blk.N.* must have N < n_layers (a file with extra layers is malformed). */
static spk_status check_layer_names(const spk_gguf_file *f, int n_layers)
{
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        spk_gguf_str n = f->tensors[i].name;
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

spk_status spk_llama_load(const spk_gguf_file *f, spk_hparams *hp, spk_weights *w)
{
    memset(w, 0, sizeof *w);
    spk_status st_hp = spk_hparams_read(f, hp);
    if (hp->arch[0] && !arch_runs(hp->arch)) /* named before any key of it is missed */
        return spk_err(SPK_ERR_UNSUPPORTED, "%s: architecture '%s' is not supported (llama, qwen3, qwen3moe, gpt-oss)",
                       f->path, hp->arch);
    SPK_TRY(st_hp);
    if (hp->n_expert && (strcmp(hp->arch, "llama") == 0 || strcmp(hp->arch, "qwen3") == 0)) /* Mixtral-like */
        return spk_err(SPK_ERR_UNSUPPORTED, "%s: %s with %s.expert_count %d: mixture-of-experts layers run for "
                       "qwen3moe and gpt-oss", f->path, hp->arch, hp->arch, hp->n_expert);
    SPK_TRY(check_layer_names(f, hp->n_layers));

    const int E = hp->n_embd, Q = hp->n_heads * hp->head_dim, KV = hp->n_kv_heads * hp->head_dim;
    SPK_TRY(find_mat(f, "token_embd.weight", E, hp->n_vocab, &w->tok_embd));
    SPK_TRY(find_vec(f, "output_norm.weight", E, &w->out_norm));
    if (spk_gguf_find_tensor(f, "output.weight"))
        SPK_TRY(find_mat(f, "output.weight", E, hp->n_vocab, &w->output));
    else
        w->output = w->tok_embd;
    /* Llama-3.x rope scaling is stored as per-frequency divisors (converted from the model's
     * rope_scaling config by the GGUF writer). */
    if (spk_gguf_find_tensor(f, "rope_freqs.weight"))
    {
        SPK_TRY(find_vec(f, "rope_freqs.weight", hp->rot_dim / 2, &w->rope_factors));
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
#define VEC(field, tname, n)                                                                       \
    if (st == SPK_OK) {                                                                            \
        snprintf(name, sizeof name, "blk.%d." tname ".weight", l);                                 \
        st = find_vec(f, name, n, &L->field);                                                      \
        np += (uint64_t)(n);                                                                       \
    }
#define BIAS(field, tname, kind, n0, n1)                                                             \
    if (st == SPK_OK) {                                                                            \
        snprintf(name, sizeof name, "blk.%d." tname "." kind, l);                                  \
        st = find_bias(f, name, n0, n1, &field);                                                   \
        np += (uint64_t)(n0) * (uint64_t)(n1);                                                     \
    }
        VEC(attn_norm, "attn_norm", E);
        if (hp->attn_sinks) { /* gpt-oss: the converter's name of the norm before the MLP */
            VEC(ffn_norm, "post_attention_norm", E);
        } else {
            VEC(ffn_norm, "ffn_norm", E);
        }
        if (hp->biases) {
            BIAS(L->bq, "attn_q", "bias", Q, 1);
            BIAS(L->bk, "attn_k", "bias", KV, 1);
            BIAS(L->bv, "attn_v", "bias", KV, 1);
            BIAS(L->bo, "attn_output", "bias", E, 1);
        }
        if (hp->attn_sinks) {
            BIAS(L->sinks, "attn_sinks", "weight", hp->n_heads, 1);
            L->swa = l % 2 == 0 ? hp->swa_window : 0;
        }
        if (hp->qk_norm) {
            VEC(q_norm, "attn_q_norm", hp->head_dim);
            VEC(k_norm, "attn_k_norm", hp->head_dim);
        }
        MAT(wq, "attn_q", E, Q);
        MAT(wk, "attn_k", E, KV);
        MAT(wv, "attn_v", E, KV);
        MAT(wo, "attn_output", Q, E);
        if (hp->n_expert) {
            spk_moe *M = &L->moe;
            const int NX = hp->n_expert;
            MAT(moe.router, "ffn_gate_inp", E, NX);
#define EXPS(field, stride, tname, nin, nout)                                                      \
    if (st == SPK_OK) {                                                                            \
        snprintf(name, sizeof name, "blk.%d." tname ".weight", l);                                 \
        st = find_exps(f, name, nin, nout, NX, &M->field, &M->stride);                             \
        np += (uint64_t)NX * mat_params(&M->field);                                                \
    }
            EXPS(gate, stride_gate, "ffn_gate_exps", E, hp->n_ff);
            EXPS(up, stride_up, "ffn_up_exps", E, hp->n_ff);
            EXPS(down, stride_down, "ffn_down_exps", hp->n_ff, E);
#undef EXPS
            M->n_expert = NX;
            M->n_used = hp->n_expert_used;
            M->e0 = 0;
            M->e1 = NX;
            M->flags = SPK_MOE_SOFTMAX_ALL | SPK_MOE_NORM_TOPK; /* qwen3moe: norm_topk_prob */
            if (hp->biases) { /* gpt-oss: softmax over the selected logits, clamped SwiGLU (transformers'
                               * GptOssConfig swiglu_limit 7.0 and GptOssExperts alpha 1.702), biases */
                M->flags = SPK_MOE_SWIGLU_OAI;
                M->alpha = 1.702f;
                M->limit = 7.0f;
                BIAS(M->router_bias, "ffn_gate_inp", "bias", NX, 1);
                BIAS(M->gate_bias, "ffn_gate_exps", "bias", hp->n_ff, NX);
                BIAS(M->up_bias, "ffn_up_exps", "bias", hp->n_ff, NX);
                BIAS(M->down_bias, "ffn_down_exps", "bias", E, NX);
            }
        } else {
            MAT(w_gate, "ffn_gate", E, hp->n_ff);
            MAT(w_up, "ffn_up", E, hp->n_ff);
            MAT(w_down, "ffn_down", hp->n_ff, E);
        }
#undef MAT
#undef VEC
#undef BIAS
        if (st != SPK_OK) {
            spk_llama_weights_free(w);
            return st;
        }
    }
    w->n_params = np;
    w->path = f->path;
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

bool spk_llama_embd_split(const spk_hparams *hp, const spk_shard *sh)
{
    return sh->first && sh->allreduce && (sh->v0 > 0 || sh->v1 < hp->n_vocab);
}

void spk_shard_full(const spk_hparams *hp, spk_shard *sh)
{
    memset(sh, 0, sizeof *sh);
    sh->l1 = hp->n_layers;
    sh->h1 = hp->n_heads;
    sh->kv1 = hp->n_kv_heads;
    sh->f1 = hp->n_ff;
    sh->v1 = hp->n_vocab;
    sh->e1 = hp->n_expert;
    sh->first = sh->last = true;
}

spk_status spk_shard_check(const spk_hparams *hp, const spk_shard *sh)
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
    if (sh->e1 != 0 && (sh->e0 < 0 || sh->e0 >= sh->e1 || sh->e1 > hp->n_expert))
        return spk_err(SPK_ERR_INVALID_ARG, "shard: experts [%d,%d) do not fit the model (%d experts%s)", sh->e0,
                       sh->e1, hp->n_expert, hp->n_expert ? "" : ": not a MoE model");
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

/* Ask the kernel to read a view's bytes ahead (the file is mapped MADV_RANDOM, so nothing else
 * of it is read unless touched). */
static void willneed(const spk_wmat *m)
{
    long pg = sysconf(_SC_PAGESIZE);
    uintptr_t a = (uintptr_t)m->data, e = a + spk_dtype_row_size(m->type, (size_t)m->n_in) * (size_t)m->n_out;
    a &= ~(uintptr_t)(pg - 1);
    if (e > a)
        madvise((void *)a, e - a, MADV_WILLNEED);
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

/* gpt-oss's expert gate/up biases [n_expert][n_ff] cut to columns [f0, f1) of every expert
 * (copied: the op reads them [n_expert][f1 - f0]). */
static spk_status bias_cols(spk_weights *w, const spk_moe *full, int f0, int f1, int n_ff, spk_moe *out)
{
    const size_t NX = (size_t)full->n_expert, n = (size_t)(f1 - f0);
    float *buf = malloc(sizeof(float) * 2 * NX * n);
    void **owned = realloc(w->owned, sizeof(void *) * (size_t)(w->n_owned + 1));
    if (owned)
        w->owned = owned;
    if (!buf || !owned) {
        free(buf);
        return spk_err(SPK_ERR_NOMEM, "shard: out of memory for expert biases");
    }
    w->owned[w->n_owned++] = buf;
    for (size_t e = 0; e < NX; e++) {
        memcpy(buf + e * n, full->gate_bias + e * (size_t)n_ff + f0, sizeof(float) * n);
        memcpy(buf + (NX + e) * n, full->up_bias + e * (size_t)n_ff + f0, sizeof(float) * n);
    }
    out->gate_bias = buf;
    out->up_bias = buf + NX * n;
    return SPK_OK;
}

static bool owned_by(const spk_weights *w, const void *p)
{
    for (int i = 0; i < w->n_owned; i++)
        if (w->owned[i] == p)
            return true;
    return false;
}

/* Refuse a slice whose scales are not all finite (NaN/Inf scales turn every output into
 * garbage). `m` holds rows [row0, row0 + n_out) and columns [col0, col0 + n_in) of tensor
 * `name`, whose rows are `full_n_in` wide; the message gives the block index in the tensor. */
static spk_status check_scales(const char *path, const char *name, const spk_wmat *m, int row0,
                               int col0, int full_n_in)
{
    const spk_dtype_info *ti = spk_dtype_get(m->type);
    if (!ti || m->n_in <= 0 || m->n_out <= 0)
        return SPK_OK;
    size_t per_row = (size_t)m->n_in / ti->block, n = per_row * (size_t)m->n_out;
    const char *field = "d";
    float v = 0.0f;
    size_t bad = spk_dtype_find_nonfinite(m->type, m->data, n, &field, &v);
    if (bad == n)
        return SPK_OK;
    size_t r = (size_t)row0 + bad / per_row, cb = (size_t)col0 / ti->block + bad % per_row;
    size_t block = r * ((size_t)full_n_in / ti->block) + cb;
    return spk_err(SPK_ERR_FORMAT,
                   "%s: tensor '%s' (%s): block %zu (row %zu, columns %zu..%zu) has a non-finite "
                   "scale %s = %g", path ? path : "model", name, ti->name, block, r, cb * ti->block,
                   (cb + 1) * ti->block - 1, field, (double)v);
}

static spk_status check_vec(const char *path, const char *name, const float *x, int n)
{
    spk_wmat m = {x, SPK_DT_F32, n, 1, SPK_WLAYOUT_ROWS};
    return check_scales(path, name, &m, 0, 0, n);
}

/* The finite-scale check over everything shard `out` of `full` reads. */
static spk_status check_shard(const spk_hparams *hp, const spk_weights *full, const spk_shard *sh,
                              const spk_weights *out)
{
    const char *path = full->path;
    const int HD = hp->head_dim, E = hp->n_embd, Q = hp->n_heads * HD;
    char name[96];
    for (int i = 0; i < sh->l1 - sh->l0; i++) {
        const spk_layer *L = &out->layers[i];
        const int l = sh->l0 + i;
#define CHECK(expr, tname)                                                                     \
    do {                                                                                       \
        snprintf(name, sizeof name, "blk.%d." tname ".weight", l);                             \
        SPK_TRY(expr);                                                                             \
    } while (0)
        CHECK(check_vec(path, name, L->attn_norm, E), "attn_norm");
        CHECK(check_vec(path, name, L->ffn_norm, E), "ffn_norm");
        if (L->q_norm) {
            CHECK(check_vec(path, name, L->q_norm, HD), "attn_q_norm");
            CHECK(check_vec(path, name, L->k_norm, HD), "attn_k_norm");
        }
        CHECK(check_scales(path, name, &L->wq, sh->h0 * HD, 0, E), "attn_q");
        CHECK(check_scales(path, name, &L->wk, sh->kv0 * HD, 0, E), "attn_k");
        CHECK(check_scales(path, name, &L->wv, sh->kv0 * HD, 0, E), "attn_v");
        CHECK(check_scales(path, name, &L->wo, 0, sh->h0 * HD, Q), "attn_output");
        CHECK(check_scales(path, name, &L->w_gate, sh->f0, 0, E), "ffn_gate");
        CHECK(check_scales(path, name, &L->w_up, sh->f0, 0, E), "ffn_up");
        CHECK(check_scales(path, name, &L->w_down, 0, sh->f0, hp->n_ff), "ffn_down");
        if (L->sinks) { /* gpt-oss: this rank's sinks and biases (named by tensor, index within the slice) */
            const int nh = sh->h1 - sh->h0, nkv = (sh->kv1 - sh->kv0) * HD;
            CHECK(check_vec(path, name, L->sinks, nh), "attn_sinks");
            snprintf(name, sizeof name, "blk.%d.attn_q.bias", l);
            SPK_TRY(check_vec(path, name, L->bq, nh * HD));
            snprintf(name, sizeof name, "blk.%d.attn_k.bias", l);
            SPK_TRY(check_vec(path, name, L->bk, nkv));
            snprintf(name, sizeof name, "blk.%d.attn_v.bias", l);
            SPK_TRY(check_vec(path, name, L->bv, nkv));
            snprintf(name, sizeof name, "blk.%d.attn_output.bias", l);
            SPK_TRY(check_vec(path, name, L->bo, E));
        }
        const spk_moe *M = &L->moe;
        if (M->n_expert && M->router_bias) {
            const int nf = M->gate.n_out, NX = M->n_expert;
            snprintf(name, sizeof name, "blk.%d.ffn_gate_inp.bias", l);
            SPK_TRY(check_vec(path, name, M->router_bias, NX));
            snprintf(name, sizeof name, "blk.%d.ffn_gate_exps.bias", l);
            SPK_TRY(check_vec(path, name, M->gate_bias, NX * nf));
            snprintf(name, sizeof name, "blk.%d.ffn_up_exps.bias", l);
            SPK_TRY(check_vec(path, name, M->up_bias, NX * nf));
            if (M->down_bias) {
                snprintf(name, sizeof name, "blk.%d.ffn_down_exps.bias", l);
                SPK_TRY(check_vec(path, name, M->down_bias, NX * E));
            }
        }
        if (M->n_expert) {
            CHECK(check_scales(path, name, &M->router, 0, 0, E), "ffn_gate_inp");
            for (int e = 0; e < M->e1 - M->e0; e++) { /* block numbers counted within an expert */
                spk_wmat g = M->gate, u = M->up;
                g.data = (const uint8_t *)g.data + (size_t)e * M->stride_gate;
                u.data = (const uint8_t *)u.data + (size_t)e * M->stride_up;
                CHECK(check_scales(path, name, &g, sh->f0, 0, E), "ffn_gate_exps");
                CHECK(check_scales(path, name, &u, sh->f0, 0, E), "ffn_up_exps");
            }
            spk_wmat d = M->down; /* the experts' slices are consecutive: one scan */
            d.n_out *= M->e1 - M->e0;
            CHECK(check_scales(path, name, &d, M->e0 * E, sh->f0, hp->n_ff), "ffn_down_exps");
        }
#undef CHECK
    }
    const bool tied = full->output.data == full->tok_embd.data;
    if (sh->first)
        SPK_TRY(check_scales(path, "token_embd.weight", &out->tok_embd, 0, 0, E));
    if (sh->last) {
        SPK_TRY(check_vec(path, "output_norm.weight", out->out_norm, E));
        if (!(tied && sh->first && sh->v0 == 0 && sh->v1 == hp->n_vocab)) /* not scanned twice */
            SPK_TRY(check_scales(path, tied ? "token_embd.weight" : "output.weight", &out->output,
                             sh->v0, 0, E));
    }
    return SPK_OK;
}

static uint64_t wmat_bytes(const spk_wmat *m)
{
    return (uint64_t)spk_dtype_row_size(m->type, (size_t)m->n_in) * (uint64_t)m->n_out;
}

spk_status spk_llama_shard(const spk_hparams *hp, const spk_weights *full, const spk_shard *sh, spk_weights *out)
{
    memset(out, 0, sizeof *out);
    SPK_TRY(spk_shard_check(hp, sh));
    const int HD = hp->head_dim, nl = sh->l1 - sh->l0;
    out->out_norm = full->out_norm;
    out->rope_factors = full->rope_factors;
    /* vocabulary-parallel embedding: a TP rank holds its rows of the table and the group sums
     * the looked-up rows (spk_llama_embd_split); otherwise the whole table */
    out->tok_embd = spk_llama_embd_split(hp, sh) ? rows_of(&full->tok_embd, sh->v0, sh->v1) : full->tok_embd;
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
        L->q_norm = F->q_norm; /* per head: every TP rank holds the whole vector */
        L->k_norm = F->k_norm;
        L->wq = rows_of(&F->wq, sh->h0 * HD, sh->h1 * HD);
        L->wk = rows_of(&F->wk, sh->kv0 * HD, sh->kv1 * HD);
        L->wv = rows_of(&F->wv, sh->kv0 * HD, sh->kv1 * HD);
        st = cols_of(out, &F->wo, sh->h0 * HD, sh->h1 * HD, &L->wo);
        if (F->bq) { /* gpt-oss: this rank's heads' biases and sinks; the output bias on one rank */
            L->bq = F->bq + (size_t)sh->h0 * HD;
            L->bk = F->bk + (size_t)sh->kv0 * HD;
            L->bv = F->bv + (size_t)sh->kv0 * HD;
            L->bo = F->bo; /* added after the TP sum */
        }
        L->sinks = F->sinks ? F->sinks + sh->h0 : NULL;
        L->swa = F->swa;
        if (F->moe.n_expert) {
            /* every expert's columns [f0, f1): rows of gate/up (views, the expert stride stays),
             * columns of down (the stacked [n_expert * n_embd][n_ff] matrix cut at once) */
            const spk_moe *FM = &F->moe;
            const int e0 = sh->e1 ? sh->e0 : 0, e1 = sh->e1 ? sh->e1 : FM->n_expert;
            L->moe = *FM;
            L->moe.e0 = e0; /* expert parallelism: experts [e0, e1), the matrices from expert e0's */
            L->moe.e1 = e1;
            L->moe.gate = rows_of(&FM->gate, sh->f0, sh->f1);
            L->moe.up = rows_of(&FM->up, sh->f0, sh->f1);
            L->moe.gate.data = (const uint8_t *)L->moe.gate.data + (size_t)e0 * FM->stride_gate;
            L->moe.up.data = (const uint8_t *)L->moe.up.data + (size_t)e0 * FM->stride_up;
            spk_wmat all = FM->down, cut;
            all.data = (const uint8_t *)all.data + (size_t)e0 * FM->stride_down;
            all.n_out *= e1 - e0;
            if (FM->gate_bias && st == SPK_OK && (sh->f0 > 0 || sh->f1 < hp->n_ff))
                st = bias_cols(out, FM, sh->f0, sh->f1, hp->n_ff, &L->moe);
            if (FM->down_bias && sh->f0 > 0) /* added once: by the TP rank holding columns from 0 */
                L->moe.down_bias = NULL;
            if (st == SPK_OK && (st = cols_of(out, &all, sh->f0, sh->f1, &cut)) == SPK_OK) {
                cut.n_out = F->moe.down.n_out;
                L->moe.down = cut;
                L->moe.stride_down = spk_dtype_row_size(cut.type, (size_t)cut.n_in) * (size_t)cut.n_out;
            }
        } else {
            L->w_gate = rows_of(&F->w_gate, sh->f0, sh->f1);
            L->w_up = rows_of(&F->w_up, sh->f0, sh->f1);
            if (st == SPK_OK)
                st = cols_of(out, &F->w_down, sh->f0, sh->f1, &L->w_down);
        }
    }
    out->path = full->path;
    if (st == SPK_OK) {
        /* read ahead exactly the mapped slices this rank will use (copied slices are read
         * already); the first stage's table (its vocabulary rows under TP) is read whole by the
         * scale check below */
        for (int i = 0; i < nl; i++) {
            const spk_layer *L = &out->layers[i];
            const spk_wmat *views[] = {&L->wq, &L->wk, &L->wv, &L->w_gate, &L->w_up, &L->wo, &L->w_down};
            for (size_t k = 0; k < sizeof views / sizeof *views; k++)
                if (views[k]->data && !owned_by(out, views[k]->data))
                    willneed(views[k]);
            const spk_moe *M = &L->moe;
            if (M->n_expert)
                willneed(&M->router);
            for (int e = 0; e < M->e1 - M->e0; e++) {
                spk_wmat g = M->gate, u = M->up, d = M->down;
                g.data = (const uint8_t *)g.data + (size_t)e * M->stride_gate;
                u.data = (const uint8_t *)u.data + (size_t)e * M->stride_up;
                d.data = (const uint8_t *)d.data + (size_t)e * M->stride_down;
                willneed(&g);
                willneed(&u);
                if (!owned_by(out, M->down.data))
                    willneed(&d);
            }
        }
        if (sh->last)
            willneed(&out->output);
        if (sh->first)
            willneed(&out->tok_embd);
        st = check_shard(hp, full, sh, out); /* the first read of the rank's pages */
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
                 2 * sizeof(float) * (uint64_t)hp->n_embd + (L->q_norm ? 2 * sizeof(float) * (uint64_t)HD : 0);
        if (L->moe.n_expert)
            bytes += wmat_bytes(&L->moe.router) + (uint64_t)(L->moe.e1 - L->moe.e0) * (wmat_bytes(&L->moe.gate) +
                     wmat_bytes(&L->moe.up) + wmat_bytes(&L->moe.down));
    }
    if (sh->first)
        bytes += wmat_bytes(&out->tok_embd);
    if (sh->last) { /* a tied head on the embedding stage is the same rows, counted once */
        bool tied_here = sh->first && out->output.data == out->tok_embd.data && out->output.n_out == out->tok_embd.n_out;
        bytes += (tied_here ? 0 : wmat_bytes(&out->output)) + sizeof(float) * (uint64_t)hp->n_embd;
    }
    out->n_bytes = bytes;
    return SPK_OK;
}
