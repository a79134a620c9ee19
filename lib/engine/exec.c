/*
 * Step executor over one process or a PP x TP cluster.
 *
 * Ranks: rank r is stage r / tp, tensor-parallel index r % tp; rank 0 (the driver) is stage 0,
 * index 0. A step: the driver sends the batch (COMMAND over the control plane) to every worker,
 * then every rank runs its shard: stage s > 0 receives hidden states from rank (s-1)*tp + t,
 * stage s < pp-1 sends its output to rank (s+1)*tp + t; inside a stage the TP group all-reduces
 * after the attention-output and MLP-down projections. The last stage computes logits for its
 * vocabulary shard; each TP rank offers its best candidates per row, the group all-gathers them
 * and samples the same token everywhere (the driver supplied each row's uniform draw), and the
 * last stage's index-0 rank returns the tokens in its reply to the driver.
 * Wire data is little-endian (asserted at compile time: x86-64 and aarch64 Linux are).
 */
#include "engine/exec.h"

#include <math.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "cluster/cluster.h"
#include "common/error.h"
#include "plan/cost.h"
#include "plan/plan.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the step protocol is written for little-endian hosts"
#endif

#define CMD_LOAD SPK_EXEC_CMD_LOAD
#define CMD_STEP (SPK_CLUSTER_CMD_USER + 0x101)
#define CMD_UNLOAD (SPK_CLUSTER_CMD_USER + 0x102)
#define CMD_STATS (SPK_CLUSTER_CMD_USER + 0x103)
#define STEP_MAGIC 0x53504b53u /* "SKPS" */
#define DATA_TIMEOUT_MS 120000
/* Per row and rank: entry 0 = {logit: max logit of the shard, raw: sum of exp(logit - max)},
 * entry 1 = the row's target token's raw logit if this shard holds it (else id -1), then the
 * shard's best raw logits (id -1: padding). */
#define LP_STRIDE (SPK_MAX_TOP_LOGPROBS + 2)

struct spk_exec {
    spk_cluster *c;            /* NULL: one process */
    int rank, world, pp, tp, stage, t;
    spk_gguf_file *own_file;       /* workers open their own */
    spk_hparams own_hp;
    spk_weights own_full;
    spk_hparams hp;
    spk_weights w;             /* this shard's weights */
    spk_shard sh;
    spk_llama *llm;
    const spk_transport *vt;
    spk_transport_comm *comm, *tp_comm;
    int max_tok, max_rows;
    float *hidden_in, *out;    /* [max_tok][n_embd] / that, or on the last stage [max_rows][n_out] if larger */
    spk_cand *cands, *all_cands, *row; /* row: one logits row's candidates from every TP rank */
    size_t cands_len;                  /* capacity of cands, in candidates */
    size_t row_len;                    /* capacity of row, in candidates per TP rank */
    spk_sampler_scratch scratch;
    spk_cand *lpc, *all_lpc, *lptmp;   /* log-prob statistics per row: [max_rows][LP_STRIDE], gathered
                                          [tp][max_rows][LP_STRIDE], one row's from every rank */
    float *pen_save;                   /* raw logits of a row's penalized tokens */
    size_t pen_save_len;
    uint64_t buf_bytes;        /* hidden_in and out */
    uint32_t act_mem;          /* SPK_TRANSPORT_MEM_* of the backend's activations */
    float *ar_host;            /* [max_tok][n_embd]: all-reduce staging for a device backend over a
                                  host-only transport (TCP) */
    uint8_t *msg;              /* encoded step (driver) */
    size_t msg_cap;
    /* step timing (spk_rank_stats): written by the thread running steps, read by the stats call */
    atomic_uint_least64_t n_steps, compute_ns, recv_wait_ns, send_ns, handoff_ns, n_handoffs;
};

/* Hidden states between stages carry the sender's wall clock (ns) at the end of its forward
 * pass in HANDOFF_STAMP bytes after the floats, so the receiver can time the hand-off. */
#define HANDOFF_STAMP 8

static uint64_t wall_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void stat_add(atomic_uint_least64_t *a, uint64_t v) { atomic_fetch_add_explicit(a, v, memory_order_relaxed); }

uint64_t spk_rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long long size = 0, res = 0;
    if (!f)
        return 0;
    if (fscanf(f, "%llu %llu", &size, &res) != 2)
        res = 0;
    fclose(f);
    return (uint64_t)res * (uint64_t)sysconf(_SC_PAGESIZE);
}

/* ---- encoding --------------------------------------------------------------------------- */

typedef struct wbuf {
    uint8_t *p;
    size_t len, cap;
    int oom;
} wbuf;

static void put(wbuf *b, const void *src, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n > b->cap) {
        size_t cap = (b->cap ? b->cap * 2 : 256) + n;
        uint8_t *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, src, n);
    b->len += n;
}

static void put_u32(wbuf *b, uint32_t v) { put(b, &v, 4); }

typedef struct rbuf {
    const uint8_t *p;
    size_t len, off;
} rbuf;

static int get(rbuf *b, void *dst, size_t n)
{
    if (n > b->len - b->off)
        return -1;
    memcpy(dst, b->p + b->off, n);
    b->off += n;
    return 0;
}

/* ---- shard setup ------------------------------------------------------------------------ */

static spk_status tp_allreduce(void *ctx, float *buf, size_t n)
{
    spk_exec *e = ctx;
    if (!e->ar_host)
        return e->vt->allreduce(e->tp_comm, buf, n, SPK_TRANSPORT_F32, e->act_mem, DATA_TIMEOUT_MS);
    const spk_backend *be = spk_llama_backend(e->llm);
    spk_status st = be->ops->copy((spk_backend *)be, e->ar_host, buf, n * sizeof(float));
    if (st == SPK_OK)
        st = e->vt->allreduce(e->tp_comm, e->ar_host, n, SPK_TRANSPORT_F32, SPK_TRANSPORT_MEM_HOST, DATA_TIMEOUT_MS);
    if (st == SPK_OK)
        st = be->ops->copy((spk_backend *)be, buf, e->ar_host, n * sizeof(float));
    return st;
}

/* Connect this rank's groups (collective over all ranks, so done before anything that can fail
 * on one rank only, like opening the file). */
static spk_status make_groups(spk_exec *e, int pp, int tp)
{
    e->pp = pp;
    e->tp = tp;
    e->stage = e->rank / tp;
    e->t = e->rank % tp;
    if (!e->c || e->world == 1)
        return SPK_OK;
    e->comm = spk_cluster_transport(e->c, &e->vt);
    if (!e->comm)
        return spk_err(SPK_ERR_STATE, "rank %d: the cluster has no connected transport", e->rank);
    if (tp > 1) {
        if (!e->vt->split)
            return spk_err(SPK_ERR_UNSUPPORTED, "transport \"%s\" cannot split groups: tp %d needs it", e->vt->name, tp);
        spk_status st = e->vt->split(e->comm, e->stage, e->t, &e->tp_comm, DATA_TIMEOUT_MS);
        if (st != SPK_OK)
            return spk_err_prefix(st, "rank %d: making the tensor-parallel group", e->rank);
    }
    return SPK_OK;
}

static spk_status setup(spk_exec *e, const spk_hparams *hp, const spk_weights *full, const spk_exec_params *p)
{
    e->hp = *hp;
    e->max_tok = p->max_tok;
    e->max_rows = p->max_rows;
    spk_shape shape;
    spk_status st = spk_shape_from_hparams(hp, p->path, &shape); /* real byte rates: the Q8_0 head weighs in */
    if (st != SPK_OK)
        return st;
    /* Stages balanced by the cost model's time of one decode micro-batch (max_rows / pp
     * sequences: the pipeline keeps pp in flight) on this backend's figures: on a CPU time follows
     * flops, so the output head weighs less than its bytes; on a GPU it is close to the byte
     * balance. Context 0: the KV reads, unknown here, are left out. AUTO balances as the CPU, so
     * that every rank computes the same split from the same load parameters. */
    spk_hw hw;
    if (p->backend == SPK_BACKEND_CUDA)
        spk_hw_init(&hw);
    else
        spk_hw_cpu(&hw);
    spk_plan plan;
    st = spk_plan_make_ep_at(&shape, p->pp, p->tp, p->ep > 1 ? p->ep : 1, &hw,
                             ceil((double)(p->max_rows > 0 ? p->max_rows : 1) / p->pp), 0, &plan);
    if (st != SPK_OK)
        return st;
    st = spk_plan_shard(&plan, e->rank, &e->sh);
    if (st != SPK_OK)
        return st;
    if (e->tp_comm) {
        e->sh.allreduce = tp_allreduce;
        e->sh.ar_ctx = e;
    }
    if ((st = spk_llama_shard(hp, full, &e->sh, &e->w)) != SPK_OK)
        return st;
    if ((st = spk_llama_create_paged(hp, &e->w, &e->sh, p->n_ctx, p->n_blocks, p->block_size, p->max_tok,
                                     p->n_threads, (spk_backend_type)p->backend, p->device, &e->llm)) != SPK_OK)
        return st;
    /* the TP all-reduce sums the backend's activations: tell the transport where they live, or
     * stage them through the host when the transport takes only host memory */
    e->act_mem = spk_llama_backend(e->llm)->ops->mem == SPK_MEM_DEVICE ? SPK_TRANSPORT_MEM_CUDA
                                                                       : SPK_TRANSPORT_MEM_HOST;
    if (e->tp_comm && e->act_mem == SPK_TRANSPORT_MEM_CUDA && !(e->vt->mem_flags & SPK_TRANSPORT_MEM_CUDA)) {
        e->ar_host = malloc(sizeof(float) * (size_t)p->max_tok * (size_t)hp->n_embd);
        if (!e->ar_host)
            return spk_err(SPK_ERR_NOMEM, "exec: out of memory");
    }
    int n_out = e->sh.v1 - e->sh.v0;
    size_t E = (size_t)hp->n_embd, T = (size_t)p->max_tok;
    /* out: hidden states, or on the last stage logits rows of this vocabulary shard */
    size_t out_len = T * E;
    if (e->sh.last && (size_t)p->max_rows * (size_t)n_out > out_len)
        out_len = (size_t)p->max_rows * (size_t)n_out;
    e->hidden_in = malloc(sizeof(float) * T * E + HANDOFF_STAMP);
    e->out = malloc(sizeof(float) * out_len + HANDOFF_STAMP);
    e->buf_bytes = sizeof(float) * (T * E + out_len);
    e->lpc = malloc(sizeof(spk_cand) * (size_t)p->max_rows * LP_STRIDE);
    e->all_lpc = malloc(sizeof(spk_cand) * (size_t)p->max_rows * LP_STRIDE * (size_t)p->tp);
    e->lptmp = malloc(sizeof(spk_cand) * LP_STRIDE * (size_t)p->tp);
    if (!e->hidden_in || !e->out || !e->lpc || !e->all_lpc || !e->lptmp ||
        spk_sampler_scratch_init(&e->scratch, n_out) != 0)
        return spk_err(SPK_ERR_NOMEM, "rank %d: out of memory for step buffers", e->rank);
    return SPK_OK;
}

static void exec_free(spk_exec *e)
{
    if (!e)
        return;
    spk_llama_free(e->llm);
    spk_llama_weights_free(&e->w);
    if (e->tp_comm)
        e->vt->finalize(e->tp_comm);
    spk_llama_weights_free(&e->own_full);
    spk_gguf_close(e->own_file);
    free(e->hidden_in);
    free(e->ar_host);
    free(e->out);
    free(e->cands);
    free(e->all_cands);
    free(e->row);
    free(e->lpc);
    free(e->all_lpc);
    free(e->lptmp);
    free(e->pen_save);
    free(e->msg);
    spk_sampler_scratch_free(&e->scratch);
    free(e);
}

#define LOAD_VERSION SPK_EXEC_LOAD_VERSION

static void encode_load(wbuf *b, const spk_exec_params *p, const uint8_t id[SPK_GGUF_ID_BYTES])
{
    uint32_t v[SPK_EXEC_LOAD_WORDS] = {LOAD_VERSION, (uint32_t)p->pp, (uint32_t)p->tp, (uint32_t)p->n_ctx,
                                       (uint32_t)p->n_blocks, (uint32_t)p->block_size, (uint32_t)p->max_tok,
                                       (uint32_t)strlen(p->path), (uint32_t)p->max_rows, (uint32_t)p->backend,
                                       (uint32_t)p->device, (uint32_t)(p->ep > 1 ? p->ep : 1)};
    put(b, v, sizeof v);
    put(b, id, SPK_GGUF_ID_BYTES);
    put(b, p->path, strlen(p->path));
}

spk_status spk_exec_open(spk_cluster *c, const spk_gguf_file *f, const spk_hparams *hp, const spk_weights *full,
                         const spk_exec_params *p, spk_exec **out)
{
    *out = NULL;
    spk_exec *e = calloc(1, sizeof *e);
    if (!e)
        return spk_err(SPK_ERR_NOMEM, "exec: out of memory");
    e->c = c;
    e->world = c ? spk_cluster_world_size(c) : 1;
    e->rank = 0;
    if (p->pp * p->tp != e->world) {
        int world = e->world;
        free(e);
        return spk_err(SPK_ERR_INVALID_ARG, "layout pp %d x tp %d needs %d ranks, the cluster has %d", p->pp,
                       p->tp, p->pp * p->tp, world);
    }
    uint32_t *req = NULL;
    wbuf b = {0};
    spk_status st = SPK_OK;
    if (e->world > 1) {
        uint8_t id[SPK_GGUF_ID_BYTES];
        spk_gguf_identity(f, id);
        encode_load(&b, p, id);
        req = calloc((size_t)e->world, sizeof *req);
        if (b.oom || !req)
            st = spk_err(SPK_ERR_NOMEM, "exec: out of memory");
        for (int r = 1; r < e->world && st == SPK_OK; r++)
            st = spk_cluster_command_send(c, r, CMD_LOAD, b.p, b.len, 1, &req[r]);
    }
    if (st == SPK_OK)
        st = make_groups(e, p->pp, p->tp);
    if (st == SPK_OK)
        st = setup(e, hp, full, p);
    if (st == SPK_OK)
        spk_log(SPK_LOG_INFO, "rank 0: stage %d/%d tp %d/%d layers [%d,%d) kv heads [%d,%d) ffn [%d,%d) vocab [%d,%d); "
                "resident %.1f MiB", e->stage, e->pp, e->t, e->tp, e->sh.l0, e->sh.l1, e->sh.kv0, e->sh.kv1,
                e->sh.f0, e->sh.f1, e->sh.v0, e->sh.v1, (double)spk_rss_bytes() / 1048576.0);
    for (int r = 1; r < e->world && req; r++) {
        void *rep = NULL;
        size_t rl = 0;
        spk_status rs = req[r] ? spk_cluster_command_wait(c, r, req[r], -1, &rep, &rl) : SPK_ERR_STATE;
        if (rs == SPK_OK && rl == 8) {
            uint64_t rss;
            memcpy(&rss, rep, 8);
            spk_log(SPK_LOG_INFO, "rank %d: model shard loaded, resident %.1f MiB", r, (double)rss / 1048576.0);
        }
        free(rep);
        if (rs != SPK_OK && st == SPK_OK && req[r])
            st = rs;
    }
    free(req);
    free(b.p);
    if (st != SPK_OK) {
        if (e->world > 1)
            spk_cluster_broadcast(c, CMD_UNLOAD, NULL, 0, 10000);
        exec_free(e);
        return st;
    }
    *out = e;
    return SPK_OK;
}

void spk_exec_close(spk_exec *e)
{
    if (!e)
        return;
    if (e->world > 1 && spk_cluster_health(e->c) == SPK_OK)
        spk_cluster_broadcast(e->c, CMD_UNLOAD, NULL, 0, 10000);
    exec_free(e);
}

/* ---- one step ----------------------------------------------------------------------------- */

static int raw_cmp(const void *a, const void *b)
{
    const spk_cand *x = a, *y = b;
    if (x->id < 0 || y->id < 0)
        return (x->id < 0) - (y->id < 0);
    if (x->raw != y->raw)
        return x->raw > y->raw ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

/* Log-prob statistics of one row of this shard's raw logits into L[0..LP_STRIDE). */
static void lp_stats(spk_exec *e, const float *x, int n_out, int want, int32_t target, spk_cand *L)
{
    for (int j = 0; j < LP_STRIDE; j++)
        L[j] = (spk_cand){0.0f, -1, 0.0f};
    if (want < 0)
        return;
    float m = x[0];
    for (int j = 1; j < n_out; j++)
        m = x[j] > m ? x[j] : m;
    double sum = 0;
    for (int j = 0; j < n_out; j++)
        sum += exp((double)(x[j] - m));
    L[0] = (spk_cand){m, -1, (float)sum};
    if (target >= e->sh.v0 && target < e->sh.v1)
        L[1] = (spk_cand){x[target - e->sh.v0], target, x[target - e->sh.v0]};
    int T = want < n_out ? want : n_out;
    if (T > 0)
        spk_top_cands(x, n_out, T, e->sh.v0, L + 2, &e->scratch);
}

/* Combine every rank's statistics of row i into its log-probs; `row` holds the candidates the
 * token was sampled from (with raw logits), `per_row` of them. */
static void lp_finish(spk_exec *e, const spk_cand *all, int n_rows, int i, int want, int32_t tok,
                      const spk_cand *row, int per_row, spk_row_lp *out)
{
    double M = -INFINITY, S = 0;
    for (int r = 0; r < e->tp; r++) {
        const spk_cand *L = all + ((size_t)r * (size_t)n_rows + (size_t)i) * LP_STRIDE;
        M = L[0].logit > M ? L[0].logit : M;
    }
    int nt = 0;
    for (int r = 0; r < e->tp; r++) {
        const spk_cand *L = all + ((size_t)r * (size_t)n_rows + (size_t)i) * LP_STRIDE;
        S += (double)L[0].raw * exp((double)L[0].logit - M);
        for (int j = 2; j < LP_STRIDE; j++)
            if (L[j].id >= 0)
                e->lptmp[nt++] = L[j];
    }
    const double lse = M + log(S);
    out->logprob = NAN;
    for (int r = 0; r < e->tp; r++) { /* a prompt row: its target's logit, from the shard holding it */
        const spk_cand *L = all + ((size_t)r * (size_t)n_rows + (size_t)i) * LP_STRIDE;
        if (L[1].id >= 0 && L[1].id == tok)
            out->logprob = (float)(L[1].raw - lse);
    }
    for (int j = 0; j < per_row && isnan(out->logprob); j++)
        if (row[j].id == tok) {
            out->logprob = (float)(row[j].raw - lse);
            break;
        }
    qsort(e->lptmp, (size_t)nt, sizeof(spk_cand), raw_cmp);
    out->n_top = want < nt ? want : nt;
    for (int j = 0; j < out->n_top; j++)
        out->top[j] = (spk_token_logprob){e->lptmp[j].id, (float)(e->lptmp[j].raw - lse)};
}

/* This rank's part of a step; on the last stage, tokens (and log-probs where asked) for the rows
 * (on every TP rank). */
static spk_status run_shard(spk_exec *e, const spk_batch *b, const spk_row *rows, int n_rows, int32_t *tokens,
                            spk_row_lp *lp)
{
    const size_t E = (size_t)e->hp.n_embd, hbytes = sizeof(float) * E * (size_t)b->n_tok;
    spk_status st;
    uint64_t t0 = wall_ns();
    if (e->stage > 0) {
        st = e->vt->recv(e->comm, (e->stage - 1) * e->tp + e->t, e->hidden_in, hbytes + HANDOFF_STAMP,
                         SPK_TRANSPORT_MEM_HOST, DATA_TIMEOUT_MS);
        if (st != SPK_OK)
            return spk_err_prefix(st, "rank %d: receiving hidden states", e->rank);
        uint64_t t1 = wall_ns(), done;
        memcpy(&done, (const char *)e->hidden_in + hbytes, sizeof done);
        uint64_t from = done > t0 ? done : t0;
        stat_add(&e->recv_wait_ns, t1 - t0);
        stat_add(&e->handoff_ns, t1 > from ? t1 - from : 0);
        stat_add(&e->n_handoffs, 1);
        t0 = t1;
    }
    st = spk_llama_forward(e->llm, b, e->hidden_in, e->out);
    uint64_t t1 = wall_ns();
    stat_add(&e->compute_ns, t1 - t0);
    stat_add(&e->n_steps, 1);
    if (st != SPK_OK)
        return st;
    if (e->stage < e->pp - 1) {
        memcpy((char *)e->out + hbytes, &t1, sizeof t1);
        st = e->vt->send(e->comm, (e->stage + 1) * e->tp + e->t, e->out, hbytes + HANDOFF_STAMP,
                         SPK_TRANSPORT_MEM_HOST, DATA_TIMEOUT_MS);
        stat_add(&e->send_ns, wall_ns() - t1);
        return st == SPK_OK ? SPK_OK : spk_err_prefix(st, "rank %d: sending hidden states", e->rank);
    }
    /* last stage: candidates from this vocabulary shard, merged across the TP group */
    const int n_out = e->sh.v1 - e->sh.v0;
    int k = 1;
    bool any_lp = false;
    int max_pen = 0;
    for (int i = 0; i < n_rows; i++) {
        int ki = spk_sample_k(&rows[i].sp, n_out);
        k = ki > k ? ki : k;
        any_lp |= rows[i].lp >= 0;
        max_pen = rows[i].n_pen > max_pen ? rows[i].n_pen : max_pen;
    }
    if ((size_t)max_pen > e->pen_save_len) { /* grows to the longest list seen, then stays */
        float *ps = realloc(e->pen_save, sizeof(float) * (size_t)max_pen);
        if (!ps)
            return spk_err(SPK_ERR_NOMEM, "rank %d: out of memory for a penalty list of %d", e->rank, max_pen);
        e->pen_save = ps;
        e->pen_save_len = (size_t)max_pen;
    }
    if (e->tp > 1) { /* shard sizes differ by a row at most, so k can differ when top-k is off */
        int32_t mine = k, ks[64];
        if (e->tp > 64)
            return spk_err(SPK_ERR_UNSUPPORTED, "tp %d > 64", e->tp);
        st = e->vt->allgather(e->tp_comm, &mine, ks, sizeof mine, SPK_TRANSPORT_MEM_HOST, DATA_TIMEOUT_MS);
        if (st != SPK_OK)
            return spk_err_prefix(st, "rank %d: agreeing on candidate counts", e->rank);
        for (int r = 0; r < e->tp; r++)
            k = ks[r] > k ? ks[r] : k;
    }
    size_t need = (size_t)n_rows * (size_t)k;
    if (need > e->cands_len) { /* grows to the largest step seen, then stays */
        spk_cand *c = realloc(e->cands, sizeof(spk_cand) * need);
        spk_cand *a = e->tp > 1 ? realloc(e->all_cands, sizeof(spk_cand) * need * (size_t)e->tp) : NULL;
        if (c)
            e->cands = c;
        if (a)
            e->all_cands = a;
        if (!c || (e->tp > 1 && !a))
            return spk_err(SPK_ERR_NOMEM, "rank %d: out of memory for %zu sampling candidates", e->rank, need);
        e->cands_len = need;
    }
    if ((size_t)k > e->row_len) {
        spk_cand *r = realloc(e->row, sizeof(spk_cand) * (size_t)k * (size_t)e->tp);
        if (!r)
            return spk_err(SPK_ERR_NOMEM, "rank %d: out of memory for %d sampling candidates", e->rank, k);
        e->row = r;
        e->row_len = (size_t)k;
    }
    for (int i = 0; i < n_rows; i++) {
        float *x = e->out + (size_t)i * (size_t)n_out;
        if (any_lp)
            lp_stats(e, x, n_out, rows[i].lp, rows[i].target, e->lpc + (size_t)i * LP_STRIDE);
        const spk_row *rw = &rows[i];
        for (int j = 0; j < rw->n_pen; j++) { /* keep the raw logits of the penalized tokens */
            int32_t t = rw->pen[j].token - e->sh.v0;
            e->pen_save[j] = t >= 0 && t < n_out ? x[t] : 0.0f;
        }
        spk_apply_penalties(x, n_out, e->sh.v0, rw->pen, rw->n_pen);
        spk_cand *c = e->cands + (size_t)i * (size_t)k;
        int ki = spk_sample_k(&rw->sp, n_out);
        spk_top_cands(x, n_out, ki, e->sh.v0, c, &e->scratch);
        for (int j = ki; j < k; j++)
            c[j] = (spk_cand){0.0f, -1, 0.0f};
        if (rw->n_pen) {
            for (int j = 0; j < rw->n_pen; j++) {
                int32_t t = rw->pen[j].token - e->sh.v0;
                if (t >= 0 && t < n_out)
                    x[t] = e->pen_save[j];
            }
            for (int j = 0; j < ki; j++)
                c[j].raw = x[c[j].id - e->sh.v0];
        }
    }
    spk_cand *all = e->cands, *all_lp = e->lpc;
    int per_row = k;
    if (e->tp > 1) {
        size_t bytes = sizeof(spk_cand) * (size_t)n_rows * (size_t)k;
        st = e->vt->allgather(e->tp_comm, e->cands, e->all_cands, bytes, SPK_TRANSPORT_MEM_HOST, DATA_TIMEOUT_MS);
        if (st != SPK_OK)
            return spk_err_prefix(st, "rank %d: gathering sampling candidates", e->rank);
        all = e->all_cands; /* rank-major: [r][row][k] */
        per_row = k * e->tp;
        if (any_lp) {
            bytes = sizeof(spk_cand) * (size_t)n_rows * LP_STRIDE;
            st = e->vt->allgather(e->tp_comm, e->lpc, e->all_lpc, bytes, SPK_TRANSPORT_MEM_HOST, DATA_TIMEOUT_MS);
            if (st != SPK_OK)
                return spk_err_prefix(st, "rank %d: gathering log-prob statistics", e->rank);
            all_lp = e->all_lpc;
        }
    }
    spk_cand *row = e->row;
    for (int i = 0; i < n_rows; i++) {
        if (e->tp > 1)
            for (int r = 0; r < e->tp; r++)
                memcpy(row + (size_t)r * (size_t)k, all + ((size_t)r * (size_t)n_rows + (size_t)i) * (size_t)k,
                       sizeof(spk_cand) * (size_t)k);
        else
            memcpy(row, all + (size_t)i * (size_t)k, sizeof(spk_cand) * (size_t)k);
        tokens[i] = rows[i].target >= 0 ? rows[i].target : spk_sample_cands(row, per_row, &rows[i].sp, rows[i].u);
        if (lp && rows[i].lp >= 0)
            lp_finish(e, all_lp, n_rows, i, rows[i].lp, tokens[i], row, per_row, &lp[i]);
    }
    return SPK_OK;
}

static void encode_step(wbuf *w, const spk_batch *b, const spk_row *rows, int n_rows)
{
    put_u32(w, STEP_MAGIC);
    put_u32(w, (uint32_t)b->n_tok);
    put_u32(w, (uint32_t)n_rows);
    put(w, b->token, sizeof(int32_t) * (size_t)b->n_tok);
    put(w, b->pos, sizeof(int32_t) * (size_t)b->n_tok);
    put(w, b->seq, sizeof(int32_t) * (size_t)b->n_tok);
    put(w, b->want_logits, (size_t)b->n_tok);
    put_u32(w, (uint32_t)b->n_seqs);
    put(w, b->table_off, sizeof(int32_t) * (size_t)b->n_seqs);
    put_u32(w, (uint32_t)b->n_table);
    put(w, b->block_table, sizeof(int32_t) * (size_t)b->n_table);
    for (int i = 0; i < n_rows; i++) {
        put(w, &rows[i].sp.temperature, 4);
        put(w, &rows[i].sp.top_k, 4);
        put(w, &rows[i].sp.top_p, 4);
        put(w, &rows[i].sp.min_p, 4);
        put(w, &rows[i].u, 8);
        put(w, &rows[i].lp, 4);
        put(w, &rows[i].target, 4);
        put(w, &rows[i].n_pen, 4);
        for (int j = 0; j < rows[i].n_pen; j++) {
            put(w, &rows[i].pen[j].token, 4);
            put(w, &rows[i].pen[j].rep, 4);
            put(w, &rows[i].pen[j].sub, 4);
        }
    }
}

/* Micro-batches worth keeping in flight: one per stage, unless SPK_PP_DEPTH (1..16) says
 * otherwise (a tuning knob for measuring the pipeline; one process always takes 1). */
int spk_exec_depth(const spk_exec *e)
{
    if (e->pp == 1)
        return 1;
    const char *s = getenv("SPK_PP_DEPTH");
    int d = s ? atoi(s) : 0;
    return d >= 1 && d <= 16 ? d : e->pp;
}

spk_status spk_exec_begin(spk_exec *e, const spk_batch *b, const spk_row *rows, int n_rows, int32_t *tokens,
                          spk_row_lp *lp, spk_exec_ticket *t)
{
    t->req = 0;
    t->n_rows = n_rows;
    t->done = 0;
    t->lp = 0;
    for (int i = 0; i < n_rows; i++)
        t->lp |= rows[i].lp >= 0;
    if (t->lp && !lp)
        return spk_err(SPK_ERR_INVALID_ARG, "step: log-probs asked for without a buffer");
    if (n_rows > e->max_rows)
        return spk_err(SPK_ERR_INVALID_ARG, "step: %d logits rows, the executor holds %d", n_rows, e->max_rows);
    if (e->world == 1) {
        t->done = 1;
        return run_shard(e, b, rows, n_rows, tokens, lp);
    }
    wbuf w = {e->msg, 0, e->msg_cap, 0};
    encode_step(&w, b, rows, n_rows);
    e->msg = w.p;
    e->msg_cap = w.cap;
    if (w.oom)
        return spk_err(SPK_ERR_NOMEM, "step: out of memory encoding the batch");
    const int last0 = (e->pp - 1) * e->tp; /* index-0 rank of the last stage */
    spk_status st = SPK_OK;
    for (int r = 1; r < e->world && st == SPK_OK; r++)
        st = spk_cluster_command_send(e->c, r, CMD_STEP, w.p, w.len, r == last0, r == last0 ? &t->req : NULL);
    if (st != SPK_OK)
        return st;
    st = run_shard(e, b, rows, n_rows, tokens, lp);
    if (st != SPK_OK) {
        /* our part failed (e.g. a peer died); the cluster reports the cause */
        spk_status h = spk_cluster_health(e->c);
        return h != SPK_OK ? h : st;
    }
    t->done = last0 == 0; /* the driver is the last stage: tokens are in already */
    return SPK_OK;
}

spk_status spk_exec_finish(spk_exec *e, spk_exec_ticket *t, int32_t *tokens, spk_row_lp *lp)
{
    if (t->done)
        return SPK_OK;
    const int last0 = (e->pp - 1) * e->tp;
    void *rep = NULL;
    size_t rl = 0;
    const size_t tb = sizeof(int32_t) * (size_t)t->n_rows, lb = t->lp ? sizeof(spk_row_lp) * (size_t)t->n_rows : 0;
    spk_status st = spk_cluster_command_wait(e->c, last0, t->req, -1, &rep, &rl);
    if (st == SPK_OK && rl != tb + lb)
        st = spk_err(SPK_ERR_FORMAT, "step: rank %d returned %zu bytes of tokens and log-probs, expected %zu",
                     last0, rl, tb + lb);
    if (st == SPK_OK) {
        memcpy(tokens, rep, tb);
        if (lb)
            memcpy(lp, (const char *)rep + tb, lb);
    }
    free(rep);
    t->done = 1;
    return st;
}

static void fill_stats(const spk_exec *e, spk_rank_stats *st)
{
    memset(st, 0, sizeof *st);
    st->struct_size = sizeof *st;
    st->rank = e->rank;
    st->stage = e->stage;
    st->tp_rank = e->t;
    st->layer_begin = e->sh.l0;
    st->layer_end = e->sh.l1;
    st->weight_bytes = e->w.n_bytes;
    st->resident_bytes = spk_rss_bytes();
    st->kv_cache_bytes = spk_llama_kv_bytes(e->llm);
    st->owned_bytes = e->w.n_bytes + spk_llama_alloc_bytes(e->llm) + e->buf_bytes;
    st->n_steps = atomic_load_explicit(&e->n_steps, memory_order_relaxed);
    st->compute_ns = atomic_load_explicit(&e->compute_ns, memory_order_relaxed);
    st->recv_wait_ns = atomic_load_explicit(&e->recv_wait_ns, memory_order_relaxed);
    st->send_ns = atomic_load_explicit(&e->send_ns, memory_order_relaxed);
    st->handoff_ns = atomic_load_explicit(&e->handoff_ns, memory_order_relaxed);
    st->n_handoffs = atomic_load_explicit(&e->n_handoffs, memory_order_relaxed);
    st->expert_begin = e->hp.n_expert > 0 ? (e->sh.e1 ? e->sh.e0 : 0) : 0;
    st->expert_end = e->hp.n_expert > 0 ? (e->sh.e1 ? e->sh.e1 : e->hp.n_expert) : 0;
}

spk_status spk_exec_rank_stats(spk_exec *e, int rank, spk_rank_stats *out)
{
    if (rank < 0 || rank >= e->world)
        return spk_err(SPK_ERR_INVALID_ARG, "rank %d outside the cluster (%d ranks)", rank, e->world);
    if (rank == 0) {
        fill_stats(e, out);
        return SPK_OK;
    }
    void *rep = NULL;
    size_t rl = 0;
    spk_status st = spk_cluster_call(e->c, rank, CMD_STATS, NULL, 0, &rep, &rl, 30000);
    if (st == SPK_OK && rl != sizeof *out)
        st = spk_err(SPK_ERR_FORMAT, "rank %d sent %zu bytes of stats, expected %zu", rank, rl, sizeof *out);
    if (st == SPK_OK)
        memcpy(out, rep, sizeof *out);
    free(rep);
    return st;
}

/* ---- worker side -------------------------------------------------------------------------- */

struct spk_exec_worker {
    spk_exec *e;
    int32_t *table_off, *table;
    int table_cap;
    int32_t *tok, *pos, *seq;
    uint8_t *want;
    spk_row *rows;
    int32_t *out_tokens;          /* reply: tokens, then log-probs when asked */
    spk_row_lp *out_lp;
    spk_pen *pen;                 /* the step's penalty lists (grows, then stays) */
    size_t pen_cap;
};

static void worker_unload(spk_exec_worker *wk);

static spk_status on_load(spk_cluster *c, uint32_t cmd, const void *data, size_t len, spk_cluster_reply *reply,
                          void *user)
{
    (void)cmd;
    spk_exec_worker *wk = user;
    rbuf b = {data, len, 0};
    uint32_t v[SPK_EXEC_LOAD_WORDS];
    uint8_t id[SPK_GGUF_ID_BYTES], own_id[SPK_GGUF_ID_BYTES];
    if (get(&b, v, 4) != 0 || v[0] != LOAD_VERSION)
        return spk_err(SPK_ERR_VERSION, "load command: version %u, this rank speaks %u (%zu bytes)",
                       len >= 4 ? v[0] : 0, LOAD_VERSION, len);
    if (get(&b, v + 1, sizeof v - 4) != 0 || get(&b, id, sizeof id) != 0 || v[7] > 4096 || len - b.off != v[7])
        return spk_err(SPK_ERR_FORMAT, "load command: malformed (%zu bytes)", len);
    if (wk->e)
        return spk_err(SPK_ERR_STATE, "load command: a model is already loaded on rank %d", spk_cluster_rank(c));
    char path[4097];
    memcpy(path, (const char *)data + b.off, v[7]);
    path[v[7]] = '\0';
    int world = spk_cluster_world_size(c);
    /* sizes from a peer: ranges here, then what this machine can hold (spk_llama_create_paged) */
    if (v[1] < 1 || v[2] < 1 || v[1] * (uint64_t)v[2] != (uint64_t)world || v[3] < 1 || v[3] > 1u << 24 ||
        v[4] < 1 || v[4] > 1u << 30 || v[5] < 1 || v[5] > 4096 || v[6] < 1 || v[6] > 1u << 16 || v[8] < 1 ||
        v[8] > v[6] || v[9] > SPK_BACKEND_CUDA || v[10] > 1023 || (v[11] > 1 && v[11] != v[2]))
        return spk_err(SPK_ERR_FORMAT,
                       "load command: bad layout pp %u tp %u ep %u (world %d) or sizes (n_ctx %u, %u KV blocks of %u, "
                       "max_tok %u, max_rows %u) or backend %u device %u", v[1], v[2], v[11], world, v[3], v[4], v[5],
                       v[6], v[8], v[9], v[10]);
    spk_exec_params p = {path, (int)v[1], (int)v[2], (int)v[3], (int)v[4], (int)v[5], (int)v[6],
                         spk_cluster_n_threads(c), (int)v[8], (int)v[9], (int)v[10], v[11] > 1 ? (int)v[11] : 1};
    spk_exec *e = calloc(1, sizeof *e);
    if (!e)
        return spk_err(SPK_ERR_NOMEM, "out of memory");
    e->c = c;
    e->world = world;
    e->rank = spk_cluster_rank(c);
    spk_status st = make_groups(e, p.pp, p.tp);
    if (st == SPK_OK)
        st = spk_gguf_open(path, &e->own_file);
    if (st == SPK_OK) {
        spk_gguf_identity(e->own_file, own_id);
        if (sodium_memcmp(id, own_id, sizeof id) != 0)
            st = spk_err(SPK_ERR_INVALID_ARG,
                         "the model file %s here (%zu bytes) is not the driver's: its size, header or weights "
                         "differ (all ranks must load the same file)", path, e->own_file->size);
    }
    if (st == SPK_OK)
        st = spk_llama_load(e->own_file, &e->own_hp, &e->own_full);
    if (st == SPK_OK)
        st = setup(e, &e->own_hp, &e->own_full, &p);
    if (st == SPK_OK) {
        size_t T = (size_t)p.max_tok;
        wk->tok = malloc(sizeof(int32_t) * T);
        wk->pos = malloc(sizeof(int32_t) * T);
        wk->seq = malloc(sizeof(int32_t) * T);
        wk->want = malloc(T);
        wk->rows = malloc(sizeof(spk_row) * T);
        wk->out_tokens = malloc((sizeof(int32_t) + sizeof(spk_row_lp)) * T);
        wk->out_lp = malloc(sizeof(spk_row_lp) * T);
        wk->table_off = malloc(sizeof(int32_t) * T);
        wk->table_cap = p.n_blocks; /* a batch's sequences never share blocks */
        wk->table = malloc(sizeof(int32_t) * (size_t)p.n_blocks);
        if (!wk->table_off || !wk->table || !wk->tok || !wk->pos || !wk->seq || !wk->want || !wk->rows ||
            !wk->out_tokens || !wk->out_lp)
            st = spk_err(SPK_ERR_NOMEM, "out of memory for step buffers");
    }
    if (st != SPK_OK) {
        wk->e = e;
        worker_unload(wk);
        return spk_err_prefix(st, "rank %d", spk_cluster_rank(c));
    }
    wk->e = e;
    spk_log(SPK_LOG_INFO, "rank %d: stage %d/%d tp %d/%d layers [%d,%d) kv heads [%d,%d) ffn [%d,%d) vocab [%d,%d)",
            e->rank, e->stage, e->pp, e->t, e->tp, e->sh.l0, e->sh.l1, e->sh.kv0, e->sh.kv1, e->sh.f0, e->sh.f1,
            e->sh.v0, e->sh.v1);
    uint64_t rss = spk_rss_bytes();
    return spk_cluster_reply_set(reply, &rss, sizeof rss);
}

static spk_status on_step(spk_cluster *c, uint32_t cmd, const void *data, size_t len, spk_cluster_reply *reply,
                          void *user)
{
    (void)cmd;
    spk_exec_worker *wk = user;
    spk_exec *e = wk->e;
    if (!e)
        return spk_err(SPK_ERR_STATE, "step command on rank %d with no model loaded", spk_cluster_rank(c));
    rbuf b = {data, len, 0};
    uint32_t h[3];
    if (get(&b, h, sizeof h) != 0 || h[0] != STEP_MAGIC || h[1] < 1 || h[1] > (uint32_t)e->max_tok || h[2] > h[1] ||
        h[2] > (uint32_t)e->max_rows)
        return spk_err(SPK_ERR_FORMAT, "step command: bad header (%zu bytes)", len);
    int n = (int)h[1], n_rows = (int)h[2];
    if (get(&b, wk->tok, 4 * (size_t)n) || get(&b, wk->pos, 4 * (size_t)n) || get(&b, wk->seq, 4 * (size_t)n) ||
        get(&b, wk->want, (size_t)n))
        return spk_err(SPK_ERR_FORMAT, "step command: truncated batch");
    uint32_t n_seqs, n_table;
    if (get(&b, &n_seqs, 4) || n_seqs < 1 || n_seqs > (uint32_t)n || get(&b, wk->table_off, 4 * (size_t)n_seqs) ||
        get(&b, &n_table, 4) || n_table > (uint32_t)wk->table_cap || get(&b, wk->table, 4 * (size_t)n_table))
        return spk_err(SPK_ERR_FORMAT, "step command: bad block tables");
    int wanted = 0;
    for (int i = 0; i < n; i++)
        wanted += wk->want[i] != 0;
    if (wanted != n_rows)
        return spk_err(SPK_ERR_FORMAT, "step command: %d rows announced, %d wanted", n_rows, wanted);
    size_t n_pen = 0;
    bool any_lp = false;
    for (int i = 0; i < n_rows; i++) {
        spk_row *r = &wk->rows[i];
        if (get(&b, &r->sp.temperature, 4) || get(&b, &r->sp.top_k, 4) || get(&b, &r->sp.top_p, 4) ||
            get(&b, &r->sp.min_p, 4) || get(&b, &r->u, 8) || get(&b, &r->lp, 4) || get(&b, &r->target, 4) || get(&b, &r->n_pen, 4))
            return spk_err(SPK_ERR_FORMAT, "step command: truncated rows");
        if (r->lp < -1 || r->lp > SPK_MAX_TOP_LOGPROBS || r->n_pen < 0 || (size_t)r->n_pen > (len - b.off) / 12 ||
            r->target < -1 || r->target >= e->hp.n_vocab || (r->target >= 0 && r->lp < 0))
            return spk_err(SPK_ERR_FORMAT, "step command: row %d: %d log-probs, target %d, %d penalties", i, r->lp,
                           r->target, r->n_pen);
        any_lp |= r->lp >= 0;
        if (n_pen + (size_t)r->n_pen > wk->pen_cap) {
            size_t cap = (n_pen + (size_t)r->n_pen) * 2;
            spk_pen *p = realloc(wk->pen, sizeof(spk_pen) * cap);
            if (!p)
                return spk_err(SPK_ERR_NOMEM, "step command: out of memory for %zu penalties", cap);
            wk->pen = p;
            wk->pen_cap = cap;
        }
        for (int j = 0; j < r->n_pen; j++) {
            spk_pen *q = &wk->pen[n_pen + (size_t)j];
            if (get(&b, &q->token, 4) || get(&b, &q->rep, 4) || get(&b, &q->sub, 4))
                return spk_err(SPK_ERR_FORMAT, "step command: truncated penalties");
        }
        r->pen = NULL;
        n_pen += (size_t)r->n_pen;
    }
    n_pen = 0;
    for (int i = 0; i < n_rows; i++) {
        wk->rows[i].pen = wk->rows[i].n_pen ? wk->pen + n_pen : NULL;
        n_pen += (size_t)wk->rows[i].n_pen;
    }
    if (b.off != len)
        return spk_err(SPK_ERR_FORMAT, "step command: %zu trailing bytes", len - b.off);
    spk_batch batch = {.n_tok = n, .token = wk->tok, .pos = wk->pos, .seq = wk->seq, .want_logits = wk->want,
                       .n_seqs = (int)n_seqs, .table_off = wk->table_off, .block_table = wk->table,
                       .n_table = (int)n_table};
    spk_status st = run_shard(e, &batch, wk->rows, n_rows, wk->out_tokens, wk->out_lp);
    if (st != SPK_OK)
        return st;
    if (e->stage == e->pp - 1 && e->t == 0) {
        size_t tb = sizeof(int32_t) * (size_t)n_rows, lb = any_lp ? sizeof(spk_row_lp) * (size_t)n_rows : 0;
        memcpy((char *)wk->out_tokens + tb, wk->out_lp, lb);
        return spk_cluster_reply_set(reply, wk->out_tokens, tb + lb);
    }
    return SPK_OK;
}

static spk_status on_stats(spk_cluster *c, uint32_t cmd, const void *data, size_t len, spk_cluster_reply *reply,
                          void *user)
{
    (void)cmd, (void)data, (void)len;
    spk_exec_worker *wk = user;
    if (!wk->e)
        return spk_err(SPK_ERR_STATE, "stats command on rank %d with no model loaded", spk_cluster_rank(c));
    spk_rank_stats st;
    fill_stats(wk->e, &st);
    return spk_cluster_reply_set(reply, &st, sizeof st);
}

static void worker_unload(spk_exec_worker *wk)
{
    exec_free(wk->e);
    wk->e = NULL;
    free(wk->tok);
    free(wk->pos);
    free(wk->seq);
    free(wk->want);
    free(wk->rows);
    free(wk->out_tokens);
    free(wk->out_lp);
    free(wk->pen);
    wk->out_lp = NULL;
    wk->pen = NULL;
    wk->pen_cap = 0;
    free(wk->table_off);
    free(wk->table);
    wk->table_off = wk->table = NULL;
    wk->tok = wk->pos = wk->seq = wk->out_tokens = NULL;
    wk->want = NULL;
    wk->rows = NULL;
}

static spk_status on_unload(spk_cluster *c, uint32_t cmd, const void *data, size_t len, spk_cluster_reply *reply,
                            void *user)
{
    (void)c, (void)cmd, (void)data, (void)len, (void)reply;
    worker_unload(user);
    return SPK_OK;
}

spk_status spk_exec_worker_register(spk_cluster *c, spk_exec_worker **out)
{
    spk_exec_worker *wk = calloc(1, sizeof *wk);
    if (!wk)
        return spk_err(SPK_ERR_NOMEM, "out of memory");
    spk_status st = spk_cluster_set_handler(c, CMD_LOAD, on_load, wk);
    if (st == SPK_OK)
        st = spk_cluster_set_handler(c, CMD_STEP, on_step, wk);
    if (st == SPK_OK)
        st = spk_cluster_set_handler(c, CMD_UNLOAD, on_unload, wk);
    if (st == SPK_OK)
        st = spk_cluster_set_handler(c, CMD_STATS, on_stats, wk);
    if (st != SPK_OK) {
        spk_exec_worker_free(c, wk);
        return st;
    }
    *out = wk;
    return SPK_OK;
}

void spk_exec_worker_free(spk_cluster *c, spk_exec_worker *wk)
{
    if (!wk)
        return;
    spk_cluster_set_handler(c, CMD_LOAD, NULL, NULL);
    spk_cluster_set_handler(c, CMD_STEP, NULL, NULL);
    spk_cluster_set_handler(c, CMD_UNLOAD, NULL, NULL);
    spk_cluster_set_handler(c, CMD_STATS, NULL, NULL);
    worker_unload(wk);
    free(wk);
}
