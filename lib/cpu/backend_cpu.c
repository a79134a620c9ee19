/*
 * The CPU backend: the ops of backend/backend.h on host memory, run by one thread-pool dispatch
 * per forward (each op does thread ith's share; barriers between dependent ops). The kernels are
 * cpu/ops.h and cpu/matmul.h, with their run-time SIMD dispatch.
 */
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "common/error.h"
#include "cpu/matmul.h"
#include "cpu/ops.h"
#include "cpu/pool.h"

/* What each thread's gather buffer holds: KV rows 0..rows-1 of (layer, seq, kv head). */
struct gather_state {
    int layer, seq, kvh, rows;
};

typedef struct cpu_backend {
    spk_backend base;
    spk_pool *pool;
    int n_threads, n_ctx, head_dim;
    float *scratch;            /* per thread: n_ctx attention scores */
    spk_f16 *gk, *gv;          /* per thread: one KV head's rows gathered from scattered blocks */
    struct gather_state *gs;
} cpu_backend;

static cpu_backend *cpu(spk_backend *be) { return (cpu_backend *)be; }

static void *cpu_alloc(spk_backend *be, size_t bytes)
{
    (void)be;
    return bytes ? calloc(1, bytes) : NULL;
}

static void cpu_free(spk_backend *be, void *p)
{
    (void)be;
    free(p);
}

static spk_status cpu_run(spk_backend *be, void (*fn)(void *, int, int), void *arg)
{
    spk_pool_run(cpu(be)->pool, fn, arg);
    return SPK_OK;
}

static void cpu_barrier(spk_backend *be) { spk_pool_barrier(cpu(be)->pool); }

static void cpu_embed(spk_backend *be, float *x, const spk_wmat *table, const int32_t *token, int n_tok, int v0,
                      int E, int ith, int nth)
{
    (void)be;
    const size_t erow = spk_dtype_row_size(table->type, (size_t)E);
    int t0, t1;
    spk_split(n_tok, 1, ith, nth, &t0, &t1);
    for (int t = t0; t < t1; t++) {
        int row = token[t] - v0;
        if (row >= 0 && row < table->n_out)
            spk_dequantize_row(x + (size_t)t * E, (const uint8_t *)table->data + (size_t)row * erow, table->type, E);
        else
            memset(x + (size_t)t * E, 0, sizeof(float) * (size_t)E);
    }
}

static void cpu_copy_rows(spk_backend *be, float *dst, const float *src, int n_tok, int n, int ith, int nth)
{
    (void)be;
    int t0, t1;
    spk_split(n_tok, 1, ith, nth, &t0, &t1);
    if (t1 > t0)
        memcpy(dst + (size_t)t0 * n, src + (size_t)t0 * n, sizeof(float) * (size_t)(t1 - t0) * (size_t)n);
}

static void cpu_rmsnorm(spk_backend *be, float *out, const float *x, const int *rows, const float *w, int n_rows,
                        int n, float eps, int ith, int nth)
{
    (void)be;
    int r0, r1;
    spk_split(n_rows, 1, ith, nth, &r0, &r1);
    for (int r = r0; r < r1; r++)
        spk_rmsnorm(out + (size_t)r * n, x + (size_t)(rows ? rows[r] : r) * n, w, n, eps);
}

static void cpu_quantize(spk_backend *be, void *act, const spk_wmat *w, const float *x, int n_tok, int ith, int nth)
{
    (void)be;
    int lo, hi;
    spk_split(n_tok, 1, ith, nth, &lo, &hi);
    if (lo < hi)
        spk_act_quantize(act, w->type, x, w->n_in, lo, hi);
}

static size_t cpu_act_size(spk_backend *be, const spk_wmat *w, int n_tok)
{
    (void)be;
    return spk_act_size(w->type, w->n_in, n_tok);
}

static void cpu_matmul(spk_backend *be, float *out, const spk_wmat *w, const void *act, int n_tok, int ith, int nth)
{
    (void)be;
    int lo, hi;
    spk_split(w->n_out, 16, ith, nth, &lo, &hi);
    if (lo < hi)
        spk_matmul(out, w->n_out, w->data, w->type, act, w->n_in, n_tok, lo, hi);
}

/* Block `i` of sequence `seq`: from its block table, or implicit (consecutive per sequence). */
static int seq_block(const spk_kv_cache *kv, const spk_step *s, int seq, int i)
{
    if (s->block_table)
        return s->block_table[s->table_off[seq] + i];
    return seq * ((kv->n_ctx + kv->block_size - 1) / kv->block_size) + i;
}

/* Element offset of the KV row of (seq, pos) in `layer`. */
static size_t kv_offset(const spk_kv_cache *kv, const spk_step *s, int layer, int seq, int pos)
{
    size_t row = (size_t)seq_block(kv, s, seq, pos / kv->block_size) * (size_t)kv->block_size +
                 (size_t)(pos % kv->block_size);
    return ((size_t)layer * kv->rows + row) * (size_t)kv->kv_dim;
}

static void cpu_head_rmsnorm(spk_backend *be, float *x, const float *w, int n_tok, int n_heads, int head_dim,
                             float eps, int ith, int nth)
{
    (void)be;
    int t0, t1;
    spk_split(n_tok, 1, ith, nth, &t0, &t1);
    for (int t = t0; t < t1; t++)
        for (int h = 0; h < n_heads; h++) {
            float *r = x + ((size_t)t * (size_t)n_heads + (size_t)h) * (size_t)head_dim;
            spk_rmsnorm(r, r, w, head_dim, eps);
        }
}

static void cpu_rope_store(spk_backend *be, float *q, float *k, const float *v, int n_heads, int rot_dim, int neox,
                           const float *freqs, const spk_kv_cache *kv, int layer, const spk_step *s, int ith, int nth)
{
    (void)be;
    const int HD = kv->head_dim, q_dim = n_heads * HD, kv_dim = kv->kv_dim;
    int t0, t1;
    spk_split(s->n_tok, 1, ith, nth, &t0, &t1);
    for (int t = t0; t < t1; t++) {
        float *qt = q + (size_t)t * q_dim, *kt = k + (size_t)t * kv_dim;
        if (neox) {
            spk_rope_neox(qt, n_heads, HD, rot_dim, s->pos[t], freqs);
            spk_rope_neox(kt, kv->n_kv_heads, HD, rot_dim, s->pos[t], freqs);
        } else {
            spk_rope(qt, n_heads, HD, rot_dim, s->pos[t], freqs);
            spk_rope(kt, kv->n_kv_heads, HD, rot_dim, s->pos[t], freqs);
        }
        size_t off = kv_offset(kv, s, layer, s->seq[t], s->pos[t]);
        spk_f32_to_f16_row(kv->k + off, kt, kv_dim);
        spk_f32_to_f16_row(kv->v + off, v + (size_t)t * kv_dim, kv_dim);
    }
}

/* K and V rows 0..n-1 of one KV head of (layer, seq): straight from the cache when the
 * sequence's blocks are consecutive, else gathered into this thread's buffer (kept across calls,
 * so the tokens of a prompt chunk extend it instead of gathering again). */
static void kv_rows(cpu_backend *c, const spk_kv_cache *kv, const spk_step *s, int layer, int seq, int kvh, int n,
                    int ith, const spk_f16 **k, const spk_f16 **v, int *stride)
{
    const int HD = kv->head_dim;
    if (!s->block_table || s->contig[seq]) {
        size_t base = kv_offset(kv, s, layer, seq, 0) + (size_t)kvh * HD;
        *k = kv->k + base;
        *v = kv->v + base;
        *stride = kv->kv_dim;
        return;
    }
    struct gather_state *g = &c->gs[ith];
    spk_f16 *gk = c->gk + (size_t)ith * (size_t)c->n_ctx * HD, *gv = c->gv + (size_t)ith * (size_t)c->n_ctx * HD;
    int from = (g->layer == layer && g->seq == seq && g->kvh == kvh) ? g->rows : 0;
    for (int p = from; p < n; p++) {
        size_t off = kv_offset(kv, s, layer, seq, p) + (size_t)kvh * HD;
        memcpy(gk + (size_t)p * HD, kv->k + off, sizeof(spk_f16) * (size_t)HD);
        memcpy(gv + (size_t)p * HD, kv->v + off, sizeof(spk_f16) * (size_t)HD);
    }
    if (n > from)
        *g = (struct gather_state){layer, seq, kvh, n};
    *k = gk;
    *v = gv;
    *stride = HD;
}

static void cpu_attention(spk_backend *be, float *out, const float *q, int n_heads, float scale,
                          const spk_kv_cache *kv, int layer, const spk_step *s, int ith, int nth)
{
    cpu_backend *c = cpu(be);
    const int T = s->n_tok, HD = kv->head_dim, q_dim = n_heads * HD;
    float *scratch = c->scratch + (size_t)ith * (size_t)c->n_ctx;
    /* work items ordered (kv head, token, query head of the group) so a thread's share mostly
     * walks one sequence's KV head and its gathers grow instead of repeating */
    int w0, w1;
    spk_split(T * n_heads, 1, ith, nth, &w0, &w1);
    c->gs[ith].layer = -1;
    const int local_g = n_heads / kv->n_kv_heads; /* query heads per KV head on this rank */
    for (int wi = w0; wi < w1; wi++) {
        int kvh = wi / (T * local_g), rem = wi % (T * local_g), t = rem / local_g;
        int h = kvh * local_g + rem % local_g;
        const spk_f16 *kr, *vr;
        int stride;
        kv_rows(c, kv, s, layer, s->seq[t], kvh, s->pos[t] + 1, ith, &kr, &vr, &stride);
        spk_attn_head(out + (size_t)t * q_dim + (size_t)h * HD, q + (size_t)t * q_dim + (size_t)h * HD, kr, vr,
                      s->pos[t] + 1, HD, stride, scale, scratch);
    }
}

static void cpu_swiglu(spk_backend *be, float *out, const float *gate, const float *up, int n_tok, int n, int ith,
                       int nth)
{
    (void)be;
    int t0, t1;
    spk_split(n_tok, 1, ith, nth, &t0, &t1);
    for (int t = t0; t < t1; t++)
        spk_swiglu(out + (size_t)t * n, gate + (size_t)t * n, up + (size_t)t * n, n);
}

static void cpu_add(spk_backend *be, float *out, const float *a, const float *b, int n_tok, int n, int ith, int nth)
{
    (void)be;
    int t0, t1;
    spk_split(n_tok, 1, ith, nth, &t0, &t1);
    for (int t = t0; t < t1; t++)
        spk_add(out + (size_t)t * n, a + (size_t)t * n, b + (size_t)t * n, n);
}

static uint64_t cpu_held_bytes(const spk_backend *be)
{
    const cpu_backend *c = (const cpu_backend *)be;
    const uint64_t per = (uint64_t)c->n_ctx * (sizeof(float) + 2 * sizeof(spk_f16) * (uint64_t)c->head_dim);
    return (uint64_t)c->n_threads * (per + sizeof(struct gather_state));
}

static void cpu_destroy(spk_backend *be)
{
    cpu_backend *c = cpu(be);
    if (c->pool)
        spk_pool_destroy(c->pool);
    free(c->scratch);
    free(c->gk);
    free(c->gv);
    free(c->gs);
    free(c);
}

static const spk_backend_ops cpu_ops = {
    .name = "cpu",
    .mem = SPK_MEM_HOST,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .begin = NULL,
    .run = cpu_run,
    .barrier = cpu_barrier,
    .embed = cpu_embed,
    .copy_rows = cpu_copy_rows,
    .rmsnorm = cpu_rmsnorm,
    .quantize = cpu_quantize,
    .act_size = cpu_act_size,
    .matmul = cpu_matmul,
    .head_rmsnorm = cpu_head_rmsnorm,
    .rope_store = cpu_rope_store,
    .attention = cpu_attention,
    .swiglu = cpu_swiglu,
    .add = cpu_add,
    .held_bytes = cpu_held_bytes,
    .destroy = cpu_destroy,
};

spk_status spk_backend_cpu_create(int n_threads, int n_ctx, int head_dim, spk_backend **out)
{
    *out = NULL;
    if (n_threads < 1 || n_ctx < 1 || head_dim < 1)
        return spk_err(SPK_ERR_INVALID_ARG, "cpu backend: bad threads %d / n_ctx %d / head_dim %d", n_threads, n_ctx,
                       head_dim);
    cpu_backend *c = calloc(1, sizeof *c);
    if (!c)
        return spk_err(SPK_ERR_NOMEM, "cpu backend: out of memory");
    c->base.ops = &cpu_ops;
    c->n_threads = n_threads;
    c->n_ctx = n_ctx;
    c->head_dim = head_dim;
    spk_status st = spk_pool_create(n_threads, &c->pool);
    const size_t T = (size_t)n_threads, g = T * (size_t)n_ctx * (size_t)head_dim;
    if (st == SPK_OK) {
        c->scratch = calloc(T * (size_t)n_ctx, sizeof(float));
        c->gk = calloc(g, sizeof(spk_f16));
        c->gv = calloc(g, sizeof(spk_f16));
        c->gs = calloc(T, sizeof *c->gs);
        if (!c->scratch || !c->gk || !c->gv || !c->gs)
            st = spk_err(SPK_ERR_NOMEM, "cpu backend: cannot allocate attention buffers for %d threads x %d positions",
                         n_threads, n_ctx);
    }
    if (st != SPK_OK) {
        cpu_destroy(&c->base);
        return st;
    }
    *out = &c->base;
    return SPK_OK;
}

int spk_backend_cpu_threads(const spk_backend *be) { return ((const cpu_backend *)be)->n_threads; }
