/*
 * The CPU backend: the ops of backend/backend.h on host memory, run by one thread-pool dispatch
 * per forward (each op does thread ith's share; barriers between dependent ops). The kernels are
 * cpu/ops.h and cpu/matmul.h, with their run-time SIMD dispatch.
 */
#include <float.h>
#include <math.h>
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
        if (row >= 0 && row < table->n_out && table->layout != SPK_WLAYOUT_ROWS) {
            /* a packed tied head: its row back in the file's layout, a few blocks at a time */
            uint8_t buf[2048];
            const spk_dtype_info *ti = spk_dtype_get((uint32_t)table->type);
            const int nb = E / (int)ti->block, per = (int)(sizeof buf / ti->type_size);
            for (int b = 0; b < nb; b += per) {
                const int b1 = nb - b > per ? b + per : nb;
                spk_matmul_unpack_blocks(buf, table->data, table->type, table->layout, E, table->n_out, row, b, b1);
                spk_dequantize_row(x + (size_t)t * E + (size_t)b * ti->block, buf, table->type,
                                   (b1 - b) * (int)ti->block);
            }
        } else if (row >= 0 && row < table->n_out)
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
    if (lo < hi && w->layout != SPK_WLAYOUT_ROWS) /* 16-row shares keep 8-row groups whole */
        spk_matmul_layout(out, w->n_out, w->data, w->type, w->layout, w->n_out, act, w->n_in, n_tok, lo, hi);
    else if (lo < hi)
        spk_matmul(out, w->n_out, w->data, w->type, act, w->n_in, n_tok, lo, hi);
}

_Static_assert(SPK_WLAYOUT_R8 == SPK_MM_LAYOUT_R8 && SPK_WLAYOUT_ROWS == SPK_MM_LAYOUT_ROWS,
               "backend and kernel layout numbers");

static spk_status cpu_pack(spk_backend *be, spk_wmat *w, int mode, void **owned)
{
    (void)be;
    *owned = NULL;
    const char *no = getenv("SPK_NO_REPACK");
    if ((no && *no && strcmp(no, "0") != 0) || !w->data || w->layout != SPK_WLAYOUT_ROWS || w->n_out < 8)
        return SPK_OK;
    const int layout = spk_matmul_pack_layout(w->type, w->n_in);
    if (layout == SPK_MM_LAYOUT_ROWS)
        return SPK_OK;
    if (mode == SPK_PACK_IN_PLACE) { /* the caller's own buffer (pack op contract): writable */
        void *data = (void *)(uintptr_t)w->data;
        if (spk_matmul_pack(data, data, w->type, layout, w->n_in, w->n_out, 0) == 0)
            w->layout = (uint8_t)layout;
        return SPK_OK;
    }
    const size_t bytes = spk_dtype_row_size(w->type, (size_t)w->n_in) * (size_t)w->n_out;
    void *buf = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
    if (!buf)
        return spk_err(SPK_ERR_NOMEM, "cpu backend: cannot allocate %zu bytes to repack a %d x %d weight matrix", bytes,
                       w->n_out, w->n_in);
    if (spk_matmul_pack(buf, w->data, w->type, layout, w->n_in, w->n_out, mode == SPK_PACK_DROP) != 0) {
        free(buf);
        return SPK_OK;
    }
    w->data = buf;
    w->layout = (uint8_t)layout;
    *owned = buf;
    return SPK_OK;
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

static void cpu_attention(spk_backend *be, float *out, const float *q, int n_heads, float scale, const float *sinks,
                          int window, const spk_kv_cache *kv, int layer, const spk_step *s, int ith, int nth)
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
        /* sliding window: positions pos - window + 1 .. pos */
        const int p0 = window > 0 && s->pos[t] + 1 > window ? s->pos[t] + 1 - window : 0, n = s->pos[t] + 1 - p0;
        float *o = out + (size_t)t * q_dim + (size_t)h * HD;
        const float *qh = q + (size_t)t * q_dim + (size_t)h * HD;
        kr += (size_t)p0 * stride;
        vr += (size_t)p0 * stride;
        /* a learned sink joins the softmax's denominator (scores computed once) */
        spk_attn_head(o, qh, kr, vr, n, HD, stride, scale, sinks ? sinks + h : NULL, scratch);
    }
}

static void cpu_add_bias(spk_backend *be, float *x, const float *bias, int n_tok, int n, int ith, int nth)
{
    (void)be;
    int t0, t1;
    spk_split(n_tok, 1, ith, nth, &t0, &t1);
    for (int t = t0; t < t1; t++)
        spk_add(x + (size_t)t * n, x + (size_t)t * n, bias, n);
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

/* ---- mixture of experts ---- */

/* Where each part of the MoE scratch lives (byte offsets, 64-aligned), for n_tok tokens. */
typedef struct moe_layout {
    size_t logits, sel, wgt, gpos, off, cnt, rowtok, rowexp, act_r, act_g, act_u, hg, hu, act_d, og, total;
} moe_layout;

static void moe_lay(const spk_moe *m, int n_tok, moe_layout *L)
{
    const size_t T = (size_t)n_tok, N = (size_t)m->n_expert, R = T * (size_t)m->n_used;
    const size_t E = (size_t)m->router.n_in, F = (size_t)m->gate.n_out;
    size_t o = 0;
#define SEG(f, bytes)                                                                              \
    do {                                                                                           \
        L->f = o;                                                                                  \
        o += ((size_t)(bytes) + 63) & ~(size_t)63;                                                 \
    } while (0)
    SEG(logits, sizeof(float) * T * N);
    SEG(sel, sizeof(int) * R);
    SEG(wgt, sizeof(float) * R);
    SEG(gpos, sizeof(int) * R);
    SEG(off, sizeof(int) * (N + 1));
    SEG(cnt, sizeof(int) * N);
    SEG(rowtok, sizeof(int) * R);
    SEG(rowexp, sizeof(int) * R);
    SEG(act_r, spk_act_size(m->router.type, (int)E, n_tok));
    SEG(act_g, spk_act_size(m->gate.type, (int)E, (int)R));
    if (m->up.type != m->gate.type)
        SEG(act_u, spk_act_size(m->up.type, (int)E, (int)R));
    else
        L->act_u = L->act_g;
    SEG(hg, sizeof(float) * R * F);
    SEG(hu, sizeof(float) * R * F);
    SEG(act_d, spk_act_size(m->down.type, (int)F, (int)R));
    SEG(og, sizeof(float) * R * E);
#undef SEG
    L->total = o;
}

static size_t cpu_moe_size(spk_backend *be, const spk_moe *m, int n_tok)
{
    (void)be;
    moe_layout L;
    moe_lay(m, n_tok, &L);
    return L.total;
}

/* Top-k of row l[n] (largest first; ties to the lower index) into sel[k]. */
static void top_k(const float *l, int n, int k, int *sel)
{
    for (int j = 0; j < k; j++) {
        int best = -1;
        for (int e = 0; e < n; e++) {
            int taken = 0;
            for (int i = 0; i < j && !taken; i++)
                taken = sel[i] == e;
            if (!taken && (best < 0 || l[e] > l[best]))
                best = e;
        }
        sel[j] = best;
    }
}

/* Router weights of one token: the k experts and their weights (see spk_moe's flags). */
static void moe_route(const spk_moe *m, float *l, int *sel, float *wgt)
{
    const int N = m->n_expert, K = m->n_used;
    if (m->router_bias)
        for (int e = 0; e < N; e++)
            l[e] += m->router_bias[e];
    top_k(l, N, K, sel);
    const float mx = l[sel[0]];
    if (m->flags & SPK_MOE_SOFTMAX_ALL) {
        double z = 0;
        for (int e = 0; e < N; e++)
            z += exp((double)l[e] - mx);
        double s = 0;
        for (int j = 0; j < K; j++)
            s += exp((double)l[sel[j]] - mx);
        const double d = (m->flags & SPK_MOE_NORM_TOPK) ? s : z;
        for (int j = 0; j < K; j++)
            wgt[j] = (float)(exp((double)l[sel[j]] - mx) / d);
    } else { /* softmax over the selected logits */
        double s = 0;
        for (int j = 0; j < K; j++)
            s += exp((double)l[sel[j]] - mx);
        for (int j = 0; j < K; j++)
            wgt[j] = (float)(exp((double)l[sel[j]] - mx) / s);
    }
}

static void moe_act(const spk_moe *m, float *g, const float *u, int e, int n)
{
    const float *gb = m->gate_bias ? m->gate_bias + (size_t)e * n : NULL;
    const float *ub = m->up_bias ? m->up_bias + (size_t)e * n : NULL;
    if (!(m->flags & SPK_MOE_SWIGLU_OAI) && !gb && !ub) {
        spk_swiglu(g, g, u, n);
        return;
    }
    for (int i = 0; i < n; i++) {
        float a = g[i] + (gb ? gb[i] : 0.0f), b = u[i] + (ub ? ub[i] : 0.0f);
        if (m->flags & SPK_MOE_SWIGLU_OAI) {
            a = a < m->limit ? a : m->limit;
            b = b < -m->limit ? -m->limit : b > m->limit ? m->limit : b;
            g[i] = (b + 1.0f) * (a / (1.0f + expf(-m->alpha * a)));
        } else {
            g[i] = b * (a / (1.0f + expf(-a)));
        }
    }
}

static void cpu_moe(spk_backend *be, float *out, const float *x, const spk_moe *m, void *scratch, int n_tok, int ith,
                    int nth)
{
    spk_pool *pool = cpu(be)->pool;
    moe_layout L;
    moe_lay(m, n_tok, &L);
    uint8_t *sb = scratch;
    float *logits = (float *)(sb + L.logits), *wgt = (float *)(sb + L.wgt), *hg = (float *)(sb + L.hg);
    float *hu = (float *)(sb + L.hu), *og = (float *)(sb + L.og);
    int *sel = (int *)(sb + L.sel), *gpos = (int *)(sb + L.gpos), *off = (int *)(sb + L.off);
    int *cnt = (int *)(sb + L.cnt), *rowtok = (int *)(sb + L.rowtok), *rowexp = (int *)(sb + L.rowexp);
    uint8_t *act_r = sb + L.act_r, *act_g = sb + L.act_g, *act_u = sb + L.act_u, *act_d = sb + L.act_d;
    const int T = n_tok, N = m->n_expert, K = m->n_used, E = m->router.n_in, F = m->gate.n_out, R = T * K;
    const size_t rb_g = spk_act_size(m->gate.type, E, 1), rb_u = spk_act_size(m->up.type, E, 1);
    const size_t rb_d = spk_act_size(m->down.type, F, 1);
    int t0, t1, lo, hi;

    /* router logits: a row op, then the matmul over experts */
    spk_split(T, 1, ith, nth, &t0, &t1);
    if (t0 < t1)
        spk_act_quantize(act_r, m->router.type, x, E, t0, t1);
    spk_pool_barrier(pool);
    spk_split(N, 16, ith, nth, &lo, &hi);
    if (lo < hi)
        spk_matmul(logits, N, m->router.data, m->router.type, act_r, E, T, lo, hi);
    spk_pool_barrier(pool);
    for (int t = t0; t < t1; t++)
        moe_route(m, logits + (size_t)t * N, sel + (size_t)t * K, wgt + (size_t)t * K);
    spk_pool_barrier(pool);
    /* group the (token, slot) pairs by expert, tokens ascending within an expert */
    const int e_lo = m->e0, e_hi = m->e1; /* the experts this rank runs */
    if (ith == 0) {
        memset(cnt, 0, sizeof(int) * (size_t)N);
        for (int i = 0; i < R; i++)
            cnt[sel[i]]++;
        off[0] = 0;
        for (int e = 0; e < N; e++)
            off[e + 1] = off[e] + (e >= e_lo && e < e_hi ? cnt[e] : 0);
        memset(cnt, 0, sizeof(int) * (size_t)N);
        for (int i = 0; i < R; i++) {
            const int e = sel[i];
            if (e < e_lo || e >= e_hi) {
                gpos[i] = -1;
                continue;
            }
            const int p = off[e] + cnt[e]++;
            rowtok[p] = i / K;
            rowexp[p] = e;
            gpos[i] = p;
        }
    }
    spk_pool_barrier(pool);
    int r0, r1;
    spk_split(off[N], 1, ith, nth, &r0, &r1); /* the (token, expert) pairs this rank runs */
    for (int r = r0; r < r1; r++) {
        const float *xr = x + (size_t)rowtok[r] * E;
        spk_act_quantize(act_g + (size_t)r * rb_g, m->gate.type, xr, E, 0, 1);
        if (act_u != act_g)
            spk_act_quantize(act_u + (size_t)r * rb_u, m->up.type, xr, E, 0, 1);
    }
    spk_pool_barrier(pool);
    /* gate and up: one batched matmul per active expert over its tokens, columns split (each
     * expert's slice in the layout its stack was packed in, lib/model/llama.c pack_weights) */
    spk_split(F, 16, ith, nth, &lo, &hi);
    for (int e = e_lo; e < e_hi && lo < hi; e++) {
        const int c = off[e + 1] - off[e];
        if (!c)
            continue;
        const uint8_t *wg = (const uint8_t *)m->gate.data + (size_t)(e - e_lo) * m->stride_gate;
        const uint8_t *wu = (const uint8_t *)m->up.data + (size_t)(e - e_lo) * m->stride_up;
        spk_matmul_layout(hg + (size_t)off[e] * F, F, wg, m->gate.type, m->gate.layout, F, act_g + (size_t)off[e] * rb_g,
                          E, c, lo, hi);
        spk_matmul_layout(hu + (size_t)off[e] * F, F, wu, m->up.type, m->up.layout, F, act_u + (size_t)off[e] * rb_u, E,
                          c, lo, hi);
    }
    spk_pool_barrier(pool);
    for (int r = r0; r < r1; r++) {
        moe_act(m, hg + (size_t)r * F, hu + (size_t)r * F, rowexp[r], F);
        spk_act_quantize(act_d + (size_t)r * rb_d, m->down.type, hg + (size_t)r * F, F, 0, 1);
    }
    spk_pool_barrier(pool);
    spk_split(E, 16, ith, nth, &lo, &hi);
    for (int e = e_lo; e < e_hi && lo < hi; e++) {
        const int c = off[e + 1] - off[e];
        if (!c)
            continue;
        const uint8_t *wd = (const uint8_t *)m->down.data + (size_t)(e - e_lo) * m->stride_down;
        spk_matmul_layout(og + (size_t)off[e] * E, E, wd, m->down.type, m->down.layout, E, act_d + (size_t)off[e] * rb_d,
                          F, c, lo, hi);
    }
    spk_pool_barrier(pool);
    /* weighted sum of each token's experts, in its top-k order (a row op) */
    for (int t = t0; t < t1; t++) {
        float *o = out + (size_t)t * E;
        int first = 1;
        for (int j = 0; j < K; j++) {
            const int i = t * K + j, e = sel[i];
            if (gpos[i] < 0) /* another rank's expert */
                continue;
            const float w = wgt[i], *y = og + (size_t)gpos[i] * E;
            const float *db = m->down_bias ? m->down_bias + (size_t)e * E : NULL;
            for (int d = 0; d < E; d++) {
                const float v = w * (y[d] + (db ? db[d] : 0.0f));
                o[d] = first ? v : o[d] + v;
            }
            first = 0;
        }
        if (first) /* none of its experts is here */
            memset(o, 0, sizeof(float) * (size_t)E);
    }
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
    .pack = cpu_pack,
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
    .add_bias = cpu_add_bias,
    .swiglu = cpu_swiglu,
    .add = cpu_add,
    .moe_size = cpu_moe_size,
    .moe = cpu_moe,
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
