/* The serving engine: request queue, sequence slots, batched steps, event queue. */
#include "engine/engine.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/error.h"
#include "engine/exec.h"
#include "engine/sampler.h"

typedef struct req {
    uint64_t id;
    int32_t *tokens;          /* prompt followed by generated tokens; capacity cap */
    int n_prompt, n_tokens, cap;
    int n_cached;             /* tokens whose KV is in the cache */
    int max_tokens, n_gen;
    spk_sampling sp;
    spk_rng rng;
    int32_t *stop;
    int n_stop;
    bool ignore_eos;
    bool cancel;
    bool busy;                /* its next token is being computed in a micro-batch */
    int inflight;             /* micro-batches in flight holding its tokens */
    int32_t *blocks;          /* its KV blocks, in position order */
    int n_blocks;
    int slot;                 /* -1 while queued */
    struct req *next;
} req;

struct spk_engine {
    spk_engine_params p;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t work_cv;   /* engine waits for requests / event room */
    pthread_cond_t event_cv;  /* pollers wait for events */
    pthread_cond_t room_cv;   /* spk_submit_wait callers wait for queue room */
    struct submit_waiter *wait_head, *wait_tail; /* FIFO of blocked submitters */
    int n_waiting;
    bool stopping;
    spk_status fatal;
    uint64_t next_id;
    req *queue_head, *queue_tail;
    int n_queued;
    req **slots;              /* [max_seqs] */
    int n_active;
    spk_event *events;        /* ring */
    size_t ev_cap, ev_head, ev_len;
    /* engine-thread-only: micro-batches in flight (a ring of `depth`, oldest at mb_head) */
    int max_tok;
    int depth, mb_head, n_inflight;
    int chunk;                /* prompt tokens per micro-batch and sequence */
    /* paged KV cache: free block ids (a stack) */
    int block_size, n_blocks, max_blocks_per_seq;
    int32_t *free_blocks;
    int n_free;
    uint64_t n_preempted, n_generated;
    struct mbatch *mbs;
};

/* One micro-batch: the tokens of a step and, per logits row, its request and sampling. */
typedef struct mbatch {
    spk_exec_ticket t;
    int n, n_rows, n_seqs, n_table;
    int32_t *tok, *pos, *seq;
    uint8_t *want;
    req **rq;                 /* per logits row */
    req **sq;                 /* per batch sequence */
    int32_t *table_off, *table;
    spk_row *rows;
    int32_t *out;
} mbatch;

static void free_req(req *r)
{
    if (!r)
        return;
    free(r->tokens);
    free(r->stop);
    free(r->blocks);
    free(r);
}

/* Caller holds mu. Waits for room unless stopping. */
static void push_event(spk_engine *e, uint64_t id, int32_t tok, int32_t pos, spk_finish fin, spk_status st)
{
    struct timespec now; /* the time the event happened, not when the ring had room */
    clock_gettime(CLOCK_MONOTONIC, &now);
    while (e->ev_len == e->ev_cap && !e->stopping)
        pthread_cond_wait(&e->work_cv, &e->mu);
    if (e->ev_len == e->ev_cap)
        return;
    spk_event *ev = &e->events[(e->ev_head + e->ev_len) % e->ev_cap];
    memset(ev, 0, sizeof *ev);
    ev->request_id = id;
    ev->token = tok;
    ev->position = pos;
    ev->finish = fin;
    ev->status = st;
    ev->time_ns = (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec;
    e->ev_len++;
    pthread_cond_broadcast(&e->event_cv);
}

/* Caller holds mu: give r's KV blocks back. */
static void release_blocks(spk_engine *e, req *r)
{
    for (int i = 0; i < r->n_blocks; i++)
        e->free_blocks[e->n_free++] = r->blocks[i];
    r->n_blocks = 0;
    r->n_cached = 0;
}

static void finish_slot(spk_engine *e, req *r)
{
    release_blocks(e, r);
    e->slots[r->slot] = NULL;
    e->n_active--;
    free_req(r);
}

/* A blocked spk_submit_wait caller (on its own stack), in arrival order. */
typedef struct submit_waiter {
    struct submit_waiter *next;
} submit_waiter;

/* Caller holds mu: move queued requests into free slots, reject impossible ones. */
static void admit(spk_engine *e)
{
    if (e->queue_head && e->wait_head)
        pthread_cond_broadcast(&e->room_cv); /* the queue shrinks below: room for a waiter */
    for (int s = 0; s < e->p.max_seqs && e->queue_head; s++) {
        if (e->slots[s])
            continue;
        req *r = e->queue_head;
        e->queue_head = r->next;
        if (!e->queue_head)
            e->queue_tail = NULL;
        e->n_queued--;
        r->next = NULL;
        if (r->cancel) {
            push_event(e, r->id, -1, -1, SPK_FINISH_CANCELLED, SPK_OK);
            free_req(r);
            s--;
            continue;
        }
        if (r->n_prompt >= e->p.n_ctx || (r->n_tokens + e->block_size) / e->block_size > e->n_blocks) {
            /* longer than the context, or than the whole KV cache: this request's error */
            push_event(e, r->id, -1, -1, SPK_FINISH_ERROR, SPK_ERR_TOO_LONG);
            free_req(r);
            s--;
            continue;
        }
        r->slot = s;
        e->slots[s] = r;
        e->n_active++;
    }
}

static bool is_stop(const spk_engine *e, const req *r, int32_t tok)
{
    for (int i = 0; i < r->n_stop; i++)
        if (r->stop[i] == tok)
            return true;
    return !r->ignore_eos && e->p.is_eog && e->p.is_eog(e->p.eog_ctx, tok);
}

/* Caller holds mu: the cluster is gone; every request ends with `st`, new ones are refused. */
static void fail_all(spk_engine *e, spk_status st)
{
    spk_log(SPK_LOG_ERROR, "engine: step failed: %s", spk_err_msg());
    e->fatal = st;
    for (int s = 0; s < e->p.max_seqs; s++)
        if (e->slots[s]) {
            push_event(e, e->slots[s]->id, -1, -1, SPK_FINISH_ERROR, st);
            finish_slot(e, e->slots[s]);
        }
    while (e->queue_head) {
        req *r = e->queue_head;
        e->queue_head = r->next;
        push_event(e, r->id, -1, -1, SPK_FINISH_ERROR, st);
        free_req(r);
    }
    e->queue_tail = NULL;
    e->n_queued = 0;
    e->n_inflight = 0; /* their requests are gone */
    pthread_cond_broadcast(&e->room_cv); /* blocked submitters get the error */
}

static bool is_cluster_failure(spk_status st)
{
    return st == SPK_ERR_PEER_LOST || st == SPK_ERR_TIMEOUT || st == SPK_ERR_TRANSPORT || st == SPK_ERR_CANCELLED;
}

/* Caller holds mu: push r back to the front of the queue; its KV is dropped and recomputed when
 * it runs again (its tokens so far, prompt and generated, become the prompt to prefill). */
static void preempt(spk_engine *e, req *r)
{
    release_blocks(e, r);
    e->slots[r->slot] = NULL;
    e->n_active--;
    r->slot = -1;
    r->next = e->queue_head;
    e->queue_head = r;
    if (!e->queue_tail)
        e->queue_tail = r;
    e->n_queued++;
    e->n_preempted++;
}

/* Caller holds mu: make r hold `need` blocks, preempting the newest other sequences that have
 * nothing in flight when the free list runs dry. Returns false if it cannot. */
static bool ensure_blocks(spk_engine *e, req *r, int need)
{
    while (r->n_blocks < need) {
        if (e->n_free == 0) {
            req *victim = NULL;
            for (int s = 0; s < e->p.max_seqs; s++) {
                req *x = e->slots[s];
                if (x && x != r && !x->busy && x->inflight == 0 && x->n_blocks > 0 && (!victim || x->id > victim->id))
                    victim = x;
            }
            if (!victim || victim->id < r->id)
                return false; /* never preempt an older sequence for a newer one */
            preempt(e, victim);
            continue;
        }
        r->blocks[r->n_blocks++] = e->free_blocks[--e->n_free];
    }
    return true;
}

/* Caller holds mu: fill micro-batch b from sequences not awaiting a token, at most max_seqs of
 * them, oldest first: decode tokens first, then prompt chunks in the token budget left. */
static void build(spk_engine *e, mbatch *b, int max_seqs)
{
    int n = 0, n_rows = 0, seqs = 0, n_table = 0;
    for (int pass = 0; pass < 2; pass++) {
        for (int s = 0; s < e->p.max_seqs && n < e->max_tok && seqs < max_seqs; s++) {
            req *r = e->slots[s];
            if (!r || r->busy)
                continue;
            int todo = r->n_tokens - r->n_cached;
            bool decoding = r->n_cached >= r->n_prompt;
            if ((pass == 0) != decoding || todo <= 0)
                continue;
            int take = todo < e->max_tok - n ? todo : e->max_tok - n;
            if (!decoding && take > e->chunk)
                take = e->chunk; /* with a pipeline, prompt chunks overlap across stages */
            int need = (r->n_cached + take - 1) / e->block_size + 1;
            if (!ensure_blocks(e, r, need)) {
                take = r->n_blocks * e->block_size - r->n_cached; /* what its blocks still hold */
                if (take <= 0) {
                    if (e->n_free + r->n_blocks == e->n_blocks && r->inflight == 0) {
                        /* it holds the whole cache and still needs more: it can never finish */
                        push_event(e, r->id, -1, -1, SPK_FINISH_ERROR, SPK_ERR_TOO_LONG);
                        finish_slot(e, r);
                    }
                    continue;
                }
                need = r->n_blocks;
            }
            b->sq[seqs] = r;
            b->table_off[seqs] = n_table;
            memcpy(b->table + n_table, r->blocks, sizeof(int32_t) * (size_t)need);
            n_table += need;
            for (int i = 0; i < take; i++) {
                int pos = r->n_cached + i;
                b->tok[n] = r->tokens[pos];
                b->pos[n] = pos;
                b->seq[n] = seqs;
                b->want[n] = (pos == r->n_tokens - 1);
                if (b->want[n]) {
                    b->rows[n_rows] = (spk_row){r->sp, spk_rng_uniform(&r->rng)};
                    b->rq[n_rows++] = r;
                    r->busy = true;
                }
                n++;
            }
            r->n_cached += take; /* later chunks may follow at once: stages run in order */
            r->inflight++;
            seqs++;
        }
    }
    b->n = n;
    b->n_rows = n_rows;
    b->n_seqs = seqs;
    b->n_table = n_table;
}

/* Caller holds mu: hand out the sampled tokens of a finished micro-batch. */
static void deliver(spk_engine *e, mbatch *b, spk_status st)
{
    for (int i = 0; i < b->n_seqs; i++)
        b->sq[i]->inflight--;
    for (int i = 0; i < b->n_rows; i++) {
        req *r = b->rq[i];
        r->busy = false;
        if (st != SPK_OK) {
            push_event(e, r->id, -1, -1, SPK_FINISH_ERROR, st);
            finish_slot(e, r);
            continue;
        }
        int32_t tok = b->out[i];
        int pos = r->n_tokens;
        e->n_generated++;
        r->tokens[r->n_tokens++] = tok;
        r->n_gen++;
        spk_finish fin = SPK_FINISH_NONE;
        if (is_stop(e, r, tok))
            fin = SPK_FINISH_STOP;
        else if (r->n_gen >= r->max_tokens || r->n_tokens >= e->p.n_ctx)
            fin = SPK_FINISH_LENGTH;
        if (r->cancel)
            fin = SPK_FINISH_CANCELLED;
        push_event(e, r->id, tok, pos, fin, SPK_OK);
        if (fin != SPK_FINISH_NONE)
            finish_slot(e, r);
    }
}

/*
 * Engine thread: start a micro-batch if the pipeline has room and some sequence has work,
 * otherwise finish the oldest one in flight. With one stage every micro-batch is finished
 * before the next starts; with P stages up to P are in flight, each with about 1/P of the
 * running sequences, so every stage has work. Returns false if there was nothing to do.
 */
static bool step(spk_engine *e)
{
    mbatch *b = NULL;
    pthread_mutex_lock(&e->mu);
    admit(e);
    for (int s = 0; s < e->p.max_seqs; s++) {
        req *r = e->slots[s];
        if (r && r->cancel && !r->busy && r->inflight == 0) {
            push_event(e, r->id, -1, -1, SPK_FINISH_CANCELLED, SPK_OK);
            finish_slot(e, r);
        }
    }
    if (e->n_inflight < e->depth && e->fatal == SPK_OK) {
        b = &e->mbs[(e->mb_head + e->n_inflight) % e->depth];
        int per_mb = (e->n_active + e->depth - 1) / e->depth;
        build(e, b, per_mb > 0 ? per_mb : 1);
        if (b->n == 0)
            b = NULL;
    }
    pthread_mutex_unlock(&e->mu);

    if (b) {
        spk_batch batch = {.n_tok = b->n, .token = b->tok, .pos = b->pos, .seq = b->seq, .want_logits = b->want,
                           .n_seqs = b->n_seqs, .table_off = b->table_off, .block_table = b->table,
                           .n_table = b->n_table};
        spk_status st = spk_exec_begin(e->p.exec, &batch, b->rows, b->n_rows, b->out, &b->t);
        pthread_mutex_lock(&e->mu);
        if (is_cluster_failure(st))
            fail_all(e, st);
        else if (st != SPK_OK)
            deliver(e, b, st);
        else
            e->n_inflight++;
        pthread_mutex_unlock(&e->mu);
        return true;
    }
    if (e->n_inflight == 0)
        return false;
    mbatch *o = &e->mbs[e->mb_head];
    spk_status st = spk_exec_finish(e->p.exec, &o->t, o->out);
    pthread_mutex_lock(&e->mu);
    e->mb_head = (e->mb_head + 1) % e->depth;
    e->n_inflight--;
    if (is_cluster_failure(st))
        fail_all(e, st);
    else
        deliver(e, o, st);
    pthread_mutex_unlock(&e->mu);
    return true;
}

static void *engine_main(void *arg)
{
    spk_engine *e = arg;
    for (;;) {
        pthread_mutex_lock(&e->mu);
        while (!e->stopping && ((e->n_active == 0 && !e->queue_head) || e->fatal != SPK_OK))
            pthread_cond_wait(&e->work_cv, &e->mu);
        bool stop = e->stopping;
        pthread_mutex_unlock(&e->mu);
        if (stop)
            break;
        step(e);
    }
    return NULL;
}

spk_status spk_engine_start(const spk_engine_params *p, spk_engine **out)
{
    *out = NULL;
    spk_engine *e = calloc(1, sizeof *e);
    if (!e)
        return spk_err(SPK_ERR_NOMEM, "engine: out of memory");
    e->p = *p;
    e->next_id = 1;
    e->max_tok = p->max_tok;
    e->ev_cap = (size_t)p->queue_capacity * 4 + 4096;
    e->slots = calloc((size_t)p->max_seqs, sizeof *e->slots);
    e->events = calloc(e->ev_cap, sizeof *e->events);
    e->depth = spk_exec_depth(p->exec);
    e->block_size = p->block_size;
    e->n_blocks = p->n_blocks;
    e->max_blocks_per_seq = (p->n_ctx + p->block_size - 1) / p->block_size;
    e->free_blocks = calloc((size_t)p->n_blocks, sizeof(int32_t));
    for (int i = 0; e->free_blocks && i < p->n_blocks; i++)
        e->free_blocks[i] = p->n_blocks - 1 - i; /* pop order 0, 1, 2...: fresh sequences get runs */
    e->n_free = p->n_blocks;
    e->chunk = e->depth > 1 ? e->max_tok / (2 * e->depth) : e->max_tok;
    if (e->chunk < 32)
        e->chunk = 32;
    e->mbs = calloc((size_t)e->depth, sizeof *e->mbs);
    bool ok = e->slots && e->events && e->mbs && e->free_blocks;
    for (int i = 0; ok && i < e->depth; i++) {
        mbatch *b = &e->mbs[i];
        size_t T = (size_t)e->max_tok;
        b->tok = calloc(T, sizeof(int32_t));
        b->pos = calloc(T, sizeof(int32_t));
        b->seq = calloc(T, sizeof(int32_t));
        b->want = calloc(T, 1);
        b->rq = calloc(T, sizeof(req *));
        b->sq = calloc(T, sizeof(req *));
        b->table_off = calloc(T, sizeof(int32_t));
        b->table = calloc((size_t)p->max_seqs * (size_t)e->max_blocks_per_seq, sizeof(int32_t));
        b->rows = calloc(T, sizeof(spk_row));
        b->out = calloc(T, sizeof(int32_t));
        ok = b->tok && b->pos && b->seq && b->want && b->rq && b->sq && b->table_off && b->table && b->rows && b->out;
    }
    if (!ok) {
        spk_engine_stop(e);
        return spk_err(SPK_ERR_NOMEM, "engine: out of memory for buffers");
    }
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->work_cv, NULL);
    pthread_cond_init(&e->event_cv, NULL);
    pthread_cond_init(&e->room_cv, NULL);
    if (pthread_create(&e->thread, NULL, engine_main, e) != 0) {
        pthread_mutex_destroy(&e->mu);
        pthread_cond_destroy(&e->work_cv);
        pthread_cond_destroy(&e->event_cv);
        pthread_cond_destroy(&e->room_cv);
        e->thread = 0;
        spk_engine_stop(e);
        return spk_err(SPK_ERR_INTERNAL, "engine: cannot start thread");
    }
    *out = e;
    return SPK_OK;
}

void spk_engine_stop(spk_engine *e)
{
    if (!e)
        return;
    if (e->thread) {
        pthread_mutex_lock(&e->mu);
        e->stopping = true;
        pthread_cond_broadcast(&e->work_cv);
        pthread_cond_broadcast(&e->event_cv);
        pthread_cond_broadcast(&e->room_cv);
        pthread_mutex_unlock(&e->mu);
        pthread_join(e->thread, NULL);
        pthread_mutex_destroy(&e->mu);
        pthread_cond_destroy(&e->work_cv);
        pthread_cond_destroy(&e->event_cv);
        pthread_cond_destroy(&e->room_cv);
    }
    while (e->queue_head) {
        req *r = e->queue_head;
        e->queue_head = r->next;
        free_req(r);
    }
    if (e->slots)
        for (int s = 0; s < e->p.max_seqs; s++)
            free_req(e->slots[s]);
    free(e->slots);
    free(e->events);
    for (int i = 0; e->mbs && i < e->depth; i++) {
        mbatch *b = &e->mbs[i];
        free(b->tok);
        free(b->pos);
        free(b->seq);
        free(b->want);
        free(b->rq);
        free(b->sq);
        free(b->table_off);
        free(b->table);
        free(b->rows);
        free(b->out);
    }
    free(e->mbs);
    free(e->free_blocks);
    free(e);
}

static spk_status check_request(const spk_engine *e, const spk_request *r, size_t i)
{
    if (r->struct_size < offsetof(spk_request, n_stop) + sizeof r->n_stop || r->struct_size > 4096)
        return spk_err(SPK_ERR_INVALID_ARG, "request %zu: struct_size %zu (use spk_request_init)", i,
                       r->struct_size);
    if (!r->prompt || r->n_prompt == 0)
        return spk_err(SPK_ERR_INVALID_ARG, "request %zu: empty prompt", i);
    if (r->n_prompt > (size_t)1 << 24)
        return spk_err(SPK_ERR_INVALID_ARG, "request %zu: prompt of %zu tokens", i, r->n_prompt);
    for (size_t j = 0; j < r->n_prompt; j++)
        if (r->prompt[j] < 0 || r->prompt[j] >= e->p.n_vocab)
            return spk_err(SPK_ERR_INVALID_ARG, "request %zu: prompt token %zu = %d outside vocabulary (%d)",
                           i, j, r->prompt[j], e->p.n_vocab);
    if (r->max_tokens < 1)
        return spk_err(SPK_ERR_INVALID_ARG, "request %zu: max_tokens %d < 1", i, r->max_tokens);
    if (!(r->temperature >= 0.0f && r->temperature <= 100.0f))
        return spk_err(SPK_ERR_INVALID_ARG, "request %zu: temperature %g out of [0, 100]", i, r->temperature);
    if (r->top_k < 0)
        return spk_err(SPK_ERR_INVALID_ARG, "request %zu: top_k %d < 0", i, r->top_k);
    if (!(r->top_p > 0.0f && r->top_p <= 1.0f))
        return spk_err(SPK_ERR_INVALID_ARG, "request %zu: top_p %g out of (0, 1]", i, r->top_p);
    if (r->n_stop > 1024 || (r->n_stop && !r->stop_tokens))
        return spk_err(SPK_ERR_INVALID_ARG, "request %zu: %zu stop tokens", i, r->n_stop);
    return SPK_OK;
}

spk_status spk_engine_submit(spk_engine *e, const spk_request *reqs, size_t n, uint64_t *ids)
{
    return spk_engine_submit_wait(e, reqs, n, ids, 0);
}

spk_status spk_engine_submit_wait(spk_engine *e, const spk_request *reqs, size_t n, uint64_t *ids,
                                  int timeout_ms)
{
    if (n == 0)
        return SPK_OK;
    size_t stride = reqs[0].struct_size;
    if (stride < offsetof(spk_request, n_stop) + sizeof(size_t) || stride > 4096)
        return spk_err(SPK_ERR_INVALID_ARG, "spk_submit: struct_size %zu (use spk_request_init)", stride);
    req **made = calloc(n, sizeof *made);
    if (!made)
        return spk_err(SPK_ERR_NOMEM, "spk_submit: out of memory");
    spk_status st = SPK_OK;
    for (size_t i = 0; i < n && st == SPK_OK; i++) {
        spk_request r;
        spk_request_init(&r);
        const spk_request *src = (const spk_request *)((const char *)reqs + i * stride);
        memcpy(&r, src, src->struct_size < sizeof r ? src->struct_size : sizeof r);
        if (src->struct_size != stride) {
            st = spk_err(SPK_ERR_INVALID_ARG, "request %zu: struct_size %zu differs from the first (%zu)",
                         i, src->struct_size, stride);
            break;
        }
        if ((st = check_request(e, &r, i)) != SPK_OK)
            break;
        req *q = calloc(1, sizeof *q);
        size_t cap = r.n_prompt + (size_t)r.max_tokens;
        if (cap > (size_t)e->p.n_ctx)
            cap = r.n_prompt > (size_t)e->p.n_ctx ? r.n_prompt : (size_t)e->p.n_ctx;
        if (q) {
            q->blocks = malloc(sizeof(int32_t) * (size_t)((e->p.n_ctx + e->block_size - 1) / e->block_size + 1));
            q->tokens = malloc(cap * sizeof(int32_t));
            q->stop = r.n_stop ? malloc(r.n_stop * sizeof(int32_t)) : NULL;
        }
        if (!q || !q->tokens || !q->blocks || (r.n_stop && !q->stop)) {
            free_req(q);
            st = spk_err(SPK_ERR_NOMEM, "spk_submit: out of memory for request %zu", i);
            break;
        }
        memcpy(q->tokens, r.prompt, r.n_prompt * sizeof(int32_t));
        if (r.n_stop)
            memcpy(q->stop, r.stop_tokens, r.n_stop * sizeof(int32_t));
        q->n_prompt = q->n_tokens = (int)r.n_prompt;
        q->cap = (int)cap;
        q->max_tokens = r.max_tokens;
        q->sp = (spk_sampling){r.temperature, r.top_k, r.top_p};
        spk_rng_seed(&q->rng, r.seed);
        q->n_stop = (int)r.n_stop;
        q->ignore_eos = r.ignore_eos != 0;
        q->slot = -1;
        made[i] = q;
    }
    if (st == SPK_OK) {
        struct timespec dl;
        clock_gettime(CLOCK_REALTIME, &dl);
        if (timeout_ms > 0) {
            dl.tv_sec += timeout_ms / 1000;
            dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
            if (dl.tv_nsec >= 1000000000L) {
                dl.tv_sec++;
                dl.tv_nsec -= 1000000000L;
            }
        }
        submit_waiter me = {NULL};
        bool waiting = false, timed_out = false;
        pthread_mutex_lock(&e->mu);
        for (;;) {
            /* FIFO: only the longest-waiting caller (or anyone when nobody waits) may enqueue. */
            bool my_turn = e->wait_head == NULL || e->wait_head == &me;
            if (e->fatal != SPK_OK) {
                st = spk_err(e->fatal, "spk_submit: engine stopped after a fatal error");
                break;
            }
            if (e->stopping) {
                st = spk_err(SPK_ERR_STATE, "spk_submit: the model is being freed");
                break;
            }
            if (my_turn && (size_t)e->n_queued + n <= (size_t)e->p.queue_capacity)
                break;
            if (n > (size_t)e->p.queue_capacity || timeout_ms == 0 || timed_out) {
                st = spk_err(SPK_ERR_BUSY, "spk_submit: queue full (%d queued + %zu new, capacity "
                             "%d; %d submitter(s) waiting first)", e->n_queued, n,
                             e->p.queue_capacity, e->n_waiting - (waiting ? 1 : 0));
                break;
            }
            if (!waiting) {
                waiting = true;
                if (e->wait_tail)
                    e->wait_tail->next = &me;
                else
                    e->wait_head = &me;
                e->wait_tail = &me;
                e->n_waiting++;
            }
            if (timeout_ms < 0)
                pthread_cond_wait(&e->room_cv, &e->mu);
            else if (pthread_cond_timedwait(&e->room_cv, &e->mu, &dl) == ETIMEDOUT)
                timed_out = true;
        }
        if (waiting) {
            submit_waiter **pp = &e->wait_head;
            while (*pp != &me)
                pp = &(*pp)->next;
            *pp = me.next;
            if (e->wait_tail == &me) {
                e->wait_tail = NULL;
                for (submit_waiter *w = e->wait_head; w; w = w->next)
                    e->wait_tail = w;
            }
            e->n_waiting--;
            pthread_cond_broadcast(&e->room_cv); /* the next waiter's turn */
        }
        if (st == SPK_OK) {
            for (size_t i = 0; i < n; i++) {
                made[i]->id = e->next_id++;
                ids[i] = made[i]->id;
                if (e->queue_tail)
                    e->queue_tail->next = made[i];
                else
                    e->queue_head = made[i];
                e->queue_tail = made[i];
                e->n_queued++;
                made[i] = NULL;
            }
            pthread_cond_broadcast(&e->work_cv);
        }
        pthread_mutex_unlock(&e->mu);
    }
    for (size_t i = 0; i < n; i++)
        free_req(made[i]);
    free(made);
    return st;
}

spk_status spk_engine_poll(spk_engine *e, spk_event *ev, size_t cap, size_t *n_out, int timeout_ms)
{
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    if (timeout_ms > 0) {
        dl.tv_sec += timeout_ms / 1000;
        dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
        if (dl.tv_nsec >= 1000000000L) {
            dl.tv_sec++;
            dl.tv_nsec -= 1000000000L;
        }
    }
    pthread_mutex_lock(&e->mu);
    while (e->ev_len == 0 && timeout_ms != 0 && !e->stopping && e->fatal == SPK_OK) {
        if (timeout_ms < 0)
            pthread_cond_wait(&e->event_cv, &e->mu);
        else if (pthread_cond_timedwait(&e->event_cv, &e->mu, &dl) == ETIMEDOUT)
            break;
    }
    size_t n = e->ev_len < cap ? e->ev_len : cap;
    for (size_t i = 0; i < n; i++)
        ev[i] = e->events[(e->ev_head + i) % e->ev_cap];
    e->ev_head = (e->ev_head + n) % e->ev_cap;
    e->ev_len -= n;
    if (n)
        pthread_cond_broadcast(&e->work_cv);
    spk_status st = n == 0 && e->fatal != SPK_OK ? e->fatal : SPK_OK;
    pthread_mutex_unlock(&e->mu);
    *n_out = n;
    return st == SPK_OK ? SPK_OK : spk_err(st, "spk_poll: engine failed");
}

spk_status spk_engine_cancel(spk_engine *e, uint64_t id)
{
    /* The engine thread emits the cancelled event and frees the request at its next step. */
    bool found = false;
    pthread_mutex_lock(&e->mu);
    for (req *r = e->queue_head; r && !found; r = r->next)
        if (r->id == id && !r->cancel)
            r->cancel = found = true;
    for (int s = 0; s < e->p.max_seqs && !found; s++)
        if (e->slots[s] && e->slots[s]->id == id && !e->slots[s]->cancel)
            e->slots[s]->cancel = found = true;
    if (found)
        pthread_cond_broadcast(&e->work_cv);
    pthread_mutex_unlock(&e->mu);
    if (!found)
        return spk_err(SPK_ERR_NOT_FOUND, "spk_cancel: no pending request %llu", (unsigned long long)id);
    return SPK_OK;
}

void spk_engine_stats(spk_engine *e, spk_engine_stats_t *st)
{
    pthread_mutex_lock(&e->mu);
    st->n_queued = e->n_queued;
    st->n_running = e->n_active;
    st->kv_blocks_total = e->n_blocks;
    st->kv_blocks_free = e->n_free;
    st->kv_block_size = e->block_size;
    st->n_preempted = e->n_preempted;
    st->n_generated = e->n_generated;
    st->n_submit_waiting = e->n_waiting;
    pthread_mutex_unlock(&e->mu);
}
