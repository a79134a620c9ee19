/* The serving engine: request queue, sequence slots, batched steps, event queue. */
#include "engine/engine.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/random.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/error.h"
#include "engine/exec.h"
#include "engine/sampler.h"
#include "model/tokenizer.h"

/* Outputs of one private_events request, waiting for spk_poll_request; outlives its request
 * until the final output is taken (then it is unlinked and freed by the last poller). */
typedef struct mailbox {
    uint64_t id;
    int32_t head, tail;       /* FIFO of record indexes (-1: empty) */
    int len;
    int waiters;              /* spk_poll_request callers blocked on cv */
    bool gone;                /* unlinked: final output taken */
    pthread_cond_t cv;
    struct mailbox *next;
} mailbox;

/* A private request with this many undelivered outputs is not scheduled until they are polled. */
#define MAILBOX_LIMIT 64

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
    mailbox *mb;              /* private_events: its outputs' queue; NULL: the shared queue */
    /* output text: the detokenizer, and bytes not yet emitted (held back while they could
     * start a stop string); stop strings packed in one block */
    spk_tok_stream ts;
    char *pend;
    int pend_len, pend_cap;
    char *stops;
    int n_stops;
    uint16_t stop_off[SPK_MAX_STOP_STRINGS], stop_len[SPK_MAX_STOP_STRINGS];
    /* penalties and log-probs */
    float repeat_penalty, freq_penalty, presence_penalty;
    int repeat_last_n;        /* -1: whole sequence */
    int lp;                   /* -1: no log-probs; else the number of alternatives */
    bool echo;                /* prompt_logprobs: outputs for the prompt tokens come first */
    int echo_lp;              /* alternatives per prompt output */
    int echo_next;            /* prompt positions whose output is scheduled (position 0 needs none) */
    int n_echoed;             /* prompt outputs emitted */
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
    /* outputs: a pool of ev_cap records; the shared queue and every mailbox are FIFO lists of
     * record indexes through rec_next. The engine waits when the pool is full. */
    spk_output *recs;
    int32_t *rec_next, *rec_free;
    int ev_cap, n_rec_free;
    int32_t sq_head, sq_tail;
    int sq_len;
    mailbox *mboxes;
    uint64_t kick;            /* bumped whenever something the engine may wait on changes */
    /* engine-thread-only scratch: per-token marks for building penalty lists */
    int32_t *pen_mark;
    /* engine-thread-only: micro-batches in flight (a ring of `depth`, oldest at mb_head) */
    int max_tok;
    int depth, mb_head, n_inflight;
    int chunk;                /* prompt tokens per micro-batch and sequence */
    /* paged KV cache: free block ids (a stack) */
    int block_size, n_blocks, max_blocks_per_seq;
    int32_t *free_blocks;
    int n_free;
    uint64_t n_preempted, n_generated;
    int pend_cap;             /* bytes of a request's pending-text buffer */
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
    spk_row_lp *lp;           /* per logits row: log-probs when asked */
    spk_pen *pen;             /* penalty lists of the rows, back to back (grows, then stays) */
    size_t pen_cap;
} mbatch;

static void free_req(req *r)
{
    if (!r)
        return;
    free(r->tokens);
    free(r->stop);
    free(r->blocks);
    free(r->pend);
    free(r->stops);
    free(r);
}

static void kick(spk_engine *e)
{
    e->kick++;
    pthread_cond_broadcast(&e->work_cv);
}

static uint64_t now_ns(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec;
}

/* Caller holds mu: a free output record, waiting for one unless stopping (then -1). */
static int32_t rec_get(spk_engine *e)
{
    while (e->n_rec_free == 0 && !e->stopping)
        pthread_cond_wait(&e->work_cv, &e->mu);
    if (e->n_rec_free == 0)
        return -1;
    return e->rec_free[--e->n_rec_free];
}

static void rec_put(spk_engine *e, int32_t i) { e->rec_free[e->n_rec_free++] = i; }

static mailbox *find_mailbox(spk_engine *e, uint64_t id)
{
    for (mailbox *m = e->mboxes; m; m = m->next)
        if (m->id == id)
            return m;
    return NULL;
}

static void unlink_mailbox(spk_engine *e, mailbox *mb)
{
    for (mailbox **pp = &e->mboxes; *pp; pp = &(*pp)->next)
        if (*pp == mb) {
            *pp = mb->next;
            break;
        }
    mb->gone = true;
}

static void free_mailbox(spk_engine *e, mailbox *mb)
{
    for (int32_t i = mb->head; i >= 0; i = e->rec_next[i])
        rec_put(e, i);
    pthread_cond_destroy(&mb->cv);
    free(mb);
}

/* Caller holds mu: queue record i to its request's mailbox or the shared queue. */
static void rec_post(spk_engine *e, mailbox *mb, int32_t i)
{
    e->rec_next[i] = -1;
    if (mb) {
        if (mb->tail >= 0)
            e->rec_next[mb->tail] = i;
        else
            mb->head = i;
        mb->tail = i;
        mb->len++;
        pthread_cond_broadcast(&mb->cv);
    } else {
        if (e->sq_tail >= 0)
            e->rec_next[e->sq_tail] = i;
        else
            e->sq_head = i;
        e->sq_tail = i;
        e->sq_len++;
        pthread_cond_broadcast(&e->event_cv);
    }
}

/* What an output carries besides its request, token and finish. */
typedef struct emit_info {
    const char *text;
    size_t text_len;
    const spk_row_lp *lp;     /* NULL: no log-probs */
    const char *msg;          /* error detail or NULL */
} emit_info;

/* Caller holds mu: emit r's output for `tok` at `pos` (tok -1: none) with finish `fin`; text
 * longer than an output holds continues in text-only outputs, the finish going on the last.
 * Waits for record room unless stopping. */
static void emit(spk_engine *e, const req *r, int32_t tok, int32_t pos, spk_finish fin, spk_status st,
                 const emit_info *info)
{
    uint64_t t = now_ns(); /* the time the output happened, not when the pool had room */
    const char *text = info ? info->text : NULL;
    size_t left = info ? info->text_len : 0;
    bool first = true;
    do {
        size_t take = left;
        if (take > SPK_OUTPUT_TEXT_CAP - 1) { /* cut at a character boundary */
            take = SPK_OUTPUT_TEXT_CAP - 1;
            while (take > 0 && ((uint8_t)text[take] & 0xC0) == 0x80)
                take--;
        }
        bool last = take == left;
        int32_t i = rec_get(e);
        if (i < 0)
            return;
        spk_output *o = &e->recs[i];
        memset(o, 0, sizeof *o); /* no stale bytes of an earlier output reach a caller */
        o->struct_size = sizeof *o;
        o->request_id = r->id;
        o->token = first ? tok : -1;
        o->position = first ? pos : -1;
        o->finish = last ? fin : SPK_FINISH_NONE;
        o->status = last ? st : SPK_OK;
        o->time_ns = t;
        o->logprob = NAN;
        o->n_top = 0;
        if (first && info && info->lp) {
            o->logprob = info->lp->logprob;
            o->n_top = info->lp->n_top;
            memcpy(o->top, info->lp->top, sizeof(spk_token_logprob) * (size_t)o->n_top);
        }
        o->text_len = (uint32_t)take;
        if (take)
            memcpy(o->text, text, take);
        o->text[take] = '\0';
        o->n_prompt = r->n_prompt;
        o->n_generated = r->n_gen;
        o->message[0] = '\0';
        if (last && info && info->msg)
            snprintf(o->message, sizeof o->message, "%s", info->msg);
        rec_post(e, r->mb, i);
        text += take;
        left -= take;
        first = false;
    } while (left > 0);
}

/* Caller holds mu: r ends here without a token (cancelled, error). */
static void emit_end(spk_engine *e, const req *r, spk_finish fin, spk_status st, const char *msg)
{
    emit_info info = {NULL, 0, NULL, msg};
    emit(e, r, -1, -1, fin, st, &info);
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
            emit_end(e, r, SPK_FINISH_CANCELLED, SPK_OK, NULL);
            free_req(r);
            s--;
            continue;
        }
        if (r->n_prompt >= e->p.n_ctx || (r->n_tokens + e->block_size) / e->block_size > e->n_blocks) {
            /* longer than the context, or than the whole KV cache: this request's error */
            char msg[160];
            if (r->n_prompt >= e->p.n_ctx)
                snprintf(msg, sizeof msg, "prompt is %d tokens; the context holds %d (a prompt must leave room "
                         "for one generated token)", r->n_prompt, e->p.n_ctx);
            else
                snprintf(msg, sizeof msg, "sequence is %d tokens; the whole KV cache holds %d (%d blocks of %d)",
                         r->n_tokens, e->n_blocks * e->block_size, e->n_blocks, e->block_size);
            emit_end(e, r, SPK_FINISH_ERROR, SPK_ERR_TOO_LONG, msg);
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
    char msg[256];
    snprintf(msg, sizeof msg, "the engine failed: %s", spk_err_msg());
    e->fatal = st;
    for (int s = 0; s < e->p.max_seqs; s++)
        if (e->slots[s]) {
            emit_end(e, e->slots[s], SPK_FINISH_ERROR, st, msg);
            finish_slot(e, e->slots[s]);
        }
    while (e->queue_head) {
        req *r = e->queue_head;
        e->queue_head = r->next;
        emit_end(e, r, SPK_FINISH_ERROR, st, msg);
        free_req(r);
    }
    e->queue_tail = NULL;
    e->n_queued = 0;
    e->n_inflight = 0; /* their requests are gone */
    pthread_cond_broadcast(&e->room_cv); /* blocked submitters get the error */
    pthread_cond_broadcast(&e->event_cv);
    for (mailbox *mb = e->mboxes; mb; mb = mb->next)
        pthread_cond_broadcast(&mb->cv);
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

/* Caller holds mu: append r's penalty list for its next token to b->pen at `at`; returns its
 * length (0 when r has no penalties or memory ran out: then it is sampled without them, logged). */
static int add_penalties(spk_engine *e, mbatch *b, const req *r, size_t at)
{
    bool rep = r->repeat_penalty != 1.0f && r->repeat_last_n != 0;
    bool fp = r->freq_penalty != 0.0f || r->presence_penalty != 0.0f;
    if (!rep && !fp)
        return 0;
    int win = rep ? (r->repeat_last_n < 0 || r->repeat_last_n > r->n_tokens ? r->n_tokens : r->repeat_last_n) : 0;
    size_t most = (size_t)win + (fp ? (size_t)(r->n_tokens - r->n_prompt) : 0);
    if (at + most > b->pen_cap) {
        size_t cap = (at + most) * 2 + 64;
        spk_pen *p = realloc(b->pen, sizeof(spk_pen) * cap);
        if (!p) {
            spk_log(SPK_LOG_WARN, "engine: out of memory for a penalty list of %zu tokens; request %llu "
                    "sampled without penalties", most, (unsigned long long)r->id);
            return 0;
        }
        b->pen = p;
        b->pen_cap = cap;
    }
    return spk_penalties_build(r->tokens, r->n_tokens, r->n_prompt, win, rep ? r->repeat_penalty : 1.0f,
                               fp ? r->freq_penalty : 0.0f, fp ? r->presence_penalty : 0.0f, e->pen_mark,
                               b->pen + at);
}

/* Caller holds mu: fill micro-batch b from sequences not awaiting a token, at most max_seqs of
 * them, oldest first: decode tokens first, then prompt chunks in the token budget left. */
static void build(spk_engine *e, mbatch *b, int max_seqs)
{
    int n = 0, n_rows = 0, seqs = 0, n_table = 0, echo_left = e->p.echo_rows;
    size_t n_pen = 0;
    for (int pass = 0; pass < 2; pass++) {
        for (int s = 0; s < e->p.max_seqs && n < e->max_tok && seqs < max_seqs; s++) {
            req *r = e->slots[s];
            if (!r || r->busy || (r->mb && r->mb->len >= MAILBOX_LIMIT))
                continue; /* computing, or a private request whose outputs nobody takes */
            int todo = r->n_tokens - r->n_cached;
            bool decoding = r->n_cached >= r->n_prompt;
            if ((pass == 0) != decoding || todo <= 0)
                continue;
            int take = todo < e->max_tok - n ? todo : e->max_tok - n;
            if (!decoding && take > e->chunk)
                take = e->chunk; /* with a pipeline, prompt chunks overlap across stages */
            if (r->echo && !decoding) { /* a logits row per prompt position: at most echo_left rows */
                int first = r->echo_next - 1 > r->n_cached ? r->echo_next - 1 : r->n_cached;
                int rows = r->n_cached + take < r->n_prompt - 1 ? r->n_cached + take - first : r->n_prompt - 1 - first;
                if (rows > echo_left)
                    take = first - r->n_cached + echo_left;
                if (take <= 0)
                    continue; /* no rows left in this step */
            }
            int need = (r->n_cached + take - 1) / e->block_size + 1;
            if (!ensure_blocks(e, r, need)) {
                take = r->n_blocks * e->block_size - r->n_cached; /* what its blocks still hold */
                if (take <= 0) {
                    if (e->n_free + r->n_blocks == e->n_blocks && r->inflight == 0) {
                        /* it holds the whole cache and still needs more: it can never finish */
                        char msg[160];
                        snprintf(msg, sizeof msg, "sequence of %d tokens needs more than the whole KV cache "
                                 "(%d positions)", r->n_tokens, e->n_blocks * e->block_size);
                        emit_end(e, r, SPK_FINISH_ERROR, SPK_ERR_TOO_LONG, msg);
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
                if (r->echo && pos + 1 < r->n_prompt && pos + 1 >= r->echo_next) {
                    /* a prompt row: the log-probs of the next prompt token */
                    b->want[n] = 1;
                    b->rows[n_rows] = (spk_row){.sp = {0.0f, 1, 1.0f, 0.0f}, .lp = r->echo_lp,
                                                .target = r->tokens[pos + 1]};
                    b->rq[n_rows++] = r;
                    r->echo_next = pos + 2;
                    echo_left--;
                } else if (b->want[n]) {
                    spk_row *row = &b->rows[n_rows];
                    *row = (spk_row){.sp = r->sp, .u = spk_rng_uniform(&r->rng), .lp = r->lp, .target = -1};
                    row->n_pen = add_penalties(e, b, r, n_pen);
                    n_pen += (size_t)row->n_pen;
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
    n_pen = 0; /* b->pen may have moved while it grew: point the rows at their lists now */
    for (int i = 0; i < n_rows; i++) {
        b->rows[i].pen = b->rows[i].n_pen ? b->pen + n_pen : NULL;
        n_pen += (size_t)b->rows[i].n_pen;
    }
    b->n = n;
    b->n_rows = n_rows;
    b->n_seqs = seqs;
    b->n_table = n_table;
}

/* Earliest match of one of r's stop strings in its pending text: the offset, or -1. */
static int stop_match(const req *r)
{
    int best = -1;
    for (int k = 0; k < r->n_stops; k++) {
        const char *m = memmem(r->pend, (size_t)r->pend_len, r->stops + r->stop_off[k], r->stop_len[k]);
        if (m && (best < 0 || m - r->pend < best))
            best = (int)(m - r->pend);
    }
    return best;
}

/* Bytes at the end of r's pending text that could be the start of a stop string. */
static int stop_holdback(const req *r)
{
    int hold = 0;
    for (int k = 0; k < r->n_stops; k++) {
        const char *st = r->stops + r->stop_off[k];
        int h = r->stop_len[k] - 1 < r->pend_len ? r->stop_len[k] - 1 : r->pend_len;
        for (; h > hold; h--)
            if (memcmp(r->pend + r->pend_len - h, st, (size_t)h) == 0)
                break;
        if (h > hold)
            hold = h;
    }
    return hold;
}

/* Caller holds mu: append the text of `tok` (-1: flush) to r's pending text. */
static void add_text(req *r, int32_t tok)
{
    size_t got = 0;
    /* pend_cap leaves room for the hold-back plus one token's bytes (see spk_tok_max_piece) */
    if (spk_tok_stream_push(&r->ts, tok, r->pend + r->pend_len, (size_t)(r->pend_cap - r->pend_len), &got) != SPK_OK)
        got = 0; /* cannot happen for a sampled token; the text just lacks it */
    r->pend_len += (int)got;
}

/* Caller holds mu: hand out the sampled tokens of a finished micro-batch. */
static void deliver(spk_engine *e, mbatch *b, spk_status st)
{
    for (int i = 0; i < b->n_seqs; i++)
        b->sq[i]->inflight--;
    for (int i = 0; i < b->n_rows; i++) {
        req *r = b->rq[i];
        if (r->echo && r->n_echoed == 0) { /* the first prompt token: no log-prob */
            emit_info info = {NULL, 0, NULL, NULL};
            spk_row_lp none = {.logprob = NAN, .n_top = 0};
            info.lp = &none;
            r->n_echoed = 1;
            emit(e, r, r->tokens[0], 0, SPK_FINISH_NONE, SPK_OK, &info);
        }
        if (b->rows[i].target >= 0) { /* a prompt row: its output, unless the step failed (the
                                          request's sampling row reports that) */
            if (st == SPK_OK) { /* rows come in position order: this is prompt position n_echoed */
                emit_info info = {NULL, 0, &b->lp[i], NULL};
                int q = r->n_echoed;
                r->n_echoed = q + 1;
                emit(e, r, b->rows[i].target, q, SPK_FINISH_NONE, SPK_OK, &info);
            }
            continue;
        }
        r->busy = false;
        if (st != SPK_OK) {
            emit_end(e, r, SPK_FINISH_ERROR, st, spk_err_msg());
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
        add_text(r, tok);
        int out_len = r->pend_len;
        int m = r->n_stops ? stop_match(r) : -1;
        if (m >= 0) { /* a stop string: the text before it is the last, the request ends */
            out_len = m;
            if (fin != SPK_FINISH_CANCELLED)
                fin = SPK_FINISH_STOP;
        } else if (fin != SPK_FINISH_NONE) {
            add_text(r, -1); /* the end: an incomplete character comes out as U+FFFD */
            out_len = r->pend_len;
        } else if (r->n_stops) {
            out_len = r->pend_len - stop_holdback(r);
        }
        emit_info info = {r->pend, (size_t)out_len, r->lp >= 0 ? &b->lp[i] : NULL, NULL};
        emit(e, r, tok, pos, fin, SPK_OK, &info);
        if (fin != SPK_FINISH_NONE) {
            finish_slot(e, r);
            continue;
        }
        memmove(r->pend, r->pend + out_len, (size_t)(r->pend_len - out_len));
        r->pend_len -= out_len;
    }
}

/*
 * Engine thread: start a micro-batch if the pipeline has room and some sequence has work,
 * otherwise finish the oldest one in flight. With one stage every micro-batch is finished
 * before the next starts; with P stages up to P are in flight, each with about 1/P of the
 * running sequences, so every stage has work. Returns false if there was nothing to do.
 */
static bool step(spk_engine *e, uint64_t *seen)
{
    mbatch *b = NULL;
    pthread_mutex_lock(&e->mu);
    *seen = e->kick;
    const int q0 = e->n_queued, a0 = e->n_active;
    bool cancelled = false;
    admit(e);
    for (int s = 0; s < e->p.max_seqs; s++) {
        req *r = e->slots[s];
        if (r && r->cancel && !r->busy && r->inflight == 0) {
            emit_info info = {r->pend, (size_t)r->pend_len, NULL, NULL}; /* text held back so far */
            emit(e, r, -1, -1, SPK_FINISH_CANCELLED, SPK_OK, &info);
            finish_slot(e, r);
            cancelled = true;
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
        spk_status st = spk_exec_begin(e->p.exec, &batch, b->rows, b->n_rows, b->out, b->lp, &b->t);
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
    if (e->n_inflight == 0) {
        /* nothing to compute; but if this step freed a slot or admitted or ended requests, the
         * next one may find work (a queued request for the freed slot): no wait for a kick */
        pthread_mutex_lock(&e->mu);
        bool changed = cancelled || e->n_queued != q0 || e->n_active != a0;
        pthread_mutex_unlock(&e->mu);
        return changed;
    }
    mbatch *o = &e->mbs[e->mb_head];
    spk_status st = spk_exec_finish(e->p.exec, &o->t, o->out, o->lp);
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
    bool idle = false; /* the last step found nothing to do: wait for a change (a kick) */
    uint64_t seen = 0;
    for (;;) {
        pthread_mutex_lock(&e->mu);
        while (!e->stopping && ((e->n_active == 0 && !e->queue_head) || e->fatal != SPK_OK ||
                                (idle && e->kick == seen)))
            pthread_cond_wait(&e->work_cv, &e->mu);
        bool stop = e->stopping;
        pthread_mutex_unlock(&e->mu);
        if (stop)
            break;
        idle = !step(e, &seen);
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
    e->ev_cap = p->queue_capacity * 4 + 4096;
    e->slots = calloc((size_t)p->max_seqs, sizeof *e->slots);
    e->recs = calloc((size_t)e->ev_cap, sizeof *e->recs);
    e->rec_next = calloc((size_t)e->ev_cap, sizeof *e->rec_next);
    e->rec_free = calloc((size_t)e->ev_cap, sizeof *e->rec_free);
    e->pen_mark = calloc((size_t)p->n_vocab, sizeof *e->pen_mark);
    for (int i = 0; e->rec_free && i < e->ev_cap; i++)
        e->rec_free[i] = e->ev_cap - 1 - i;
    e->n_rec_free = e->ev_cap;
    e->sq_head = e->sq_tail = -1;
    e->pend_cap = SPK_MAX_STOP_LEN + 3 * (int)spk_tok_max_piece(p->tok) + 16;
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
    bool ok = e->slots && e->recs && e->rec_next && e->rec_free && e->pen_mark && e->mbs && e->free_blocks;
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
        b->lp = calloc(T, sizeof(spk_row_lp));
        ok = b->lp && b->tok && b->pos && b->seq && b->want && b->rq && b->sq && b->table_off && b->table && b->rows && b->out;
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
    while (e->mboxes) {
        mailbox *mb = e->mboxes;
        e->mboxes = mb->next;
        free_mailbox(e, mb);
    }
    free(e->recs);
    free(e->rec_next);
    free(e->rec_free);
    free(e->pen_mark);
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
        free(b->lp);
        free(b->pen);
    }
    free(e->mbs);
    free(e->free_blocks);
    free(e);
}

/* Valid UTF-8 (no overlongs, surrogates or code points past U+10FFFF)? */
static bool utf8_valid(const uint8_t *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        uint8_t c = s[i];
        size_t len = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
        if (!len || i + len > n || (len == 2 && c < 0xC2) || (len == 4 && c > 0xF4))
            return false;
        for (size_t j = 1; j < len; j++)
            if ((s[i + j] & 0xC0) != 0x80)
                return false;
        if ((len == 3 && c == 0xE0 && s[i + 1] < 0xA0) || (len == 3 && c == 0xED && s[i + 1] >= 0xA0) ||
            (len == 4 && c == 0xF0 && s[i + 1] < 0x90) || (len == 4 && c == 0xF4 && s[i + 1] >= 0x90))
            return false;
        i += len;
    }
    return true;
}

/* Fields of a request other than its prompt tokens (checked after a text prompt is tokenized). */
static spk_status check_request(const spk_engine *e, const spk_request *r, size_t i)
{
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
    if (r->n_stop_strings > SPK_MAX_STOP_STRINGS || (r->n_stop_strings && !r->stop_strings))
        return spk_err(SPK_ERR_INVALID_ARG, "request %zu: %zu stop strings (at most %d)", i, r->n_stop_strings,
                       SPK_MAX_STOP_STRINGS);
    for (size_t k = 0; k < r->n_stop_strings; k++) {
        const char *ss = r->stop_strings[k];
        size_t len = ss ? strnlen(ss, SPK_MAX_STOP_LEN + 1) : 0;
        if (len == 0 || len > SPK_MAX_STOP_LEN)
            return spk_err(SPK_ERR_INVALID_ARG, "request %zu: stop string %zu is %s (1..%d bytes)", i, k,
                           !ss ? "NULL" : len == 0 ? "empty" : "too long", SPK_MAX_STOP_LEN);
        if (!utf8_valid((const uint8_t *)ss, len))
            return spk_err(SPK_ERR_INVALID_ARG, "request %zu: stop string %zu is not valid UTF-8", i, k);
    }
    if (!(r->min_p >= 0.0f && r->min_p <= 1.0f))
        return spk_err(SPK_ERR_INVALID_ARG, "request %zu: min_p %g out of [0, 1]", i, r->min_p);
    if (!(r->repeat_penalty > 0.0f && r->repeat_penalty <= 100.0f))
        return spk_err(SPK_ERR_INVALID_ARG, "request %zu: repeat_penalty %g out of (0, 100]", i, r->repeat_penalty);
    if (r->repeat_last_n < -1)
        return spk_err(SPK_ERR_INVALID_ARG, "request %zu: repeat_last_n %d (-1: whole sequence)", i, r->repeat_last_n);
    if (!(r->frequency_penalty >= -2.0f && r->frequency_penalty <= 2.0f))
        return spk_err(SPK_ERR_INVALID_ARG, "request %zu: frequency_penalty %g out of [-2, 2]", i,
                       r->frequency_penalty);
    if (!(r->presence_penalty >= -2.0f && r->presence_penalty <= 2.0f))
        return spk_err(SPK_ERR_INVALID_ARG, "request %zu: presence_penalty %g out of [-2, 2]", i,
                       r->presence_penalty);
    if (r->logprobs != 0 && r->logprobs != 1)
        return spk_err(SPK_ERR_INVALID_ARG, "request %zu: logprobs %d (0 or 1)", i, r->logprobs);
    if (r->top_logprobs < 0 || r->top_logprobs > SPK_MAX_TOP_LOGPROBS)
        return spk_err(SPK_ERR_INVALID_ARG, "request %zu: top_logprobs %d out of [0, %d]", i, r->top_logprobs,
                       SPK_MAX_TOP_LOGPROBS);
    if (r->prompt_logprobs != 0 && r->prompt_logprobs != 1)
        return spk_err(SPK_ERR_INVALID_ARG, "request %zu: prompt_logprobs %d (0 or 1)", i, r->prompt_logprobs);
    if (r->prompt_logprobs && e->p.echo_rows < 1)
        return spk_err(SPK_ERR_UNSUPPORTED, "request %zu: prompt_logprobs needs logits rows this load has no room "
                       "for (max_seqs too large)", i);
    if (r->private_events != 0 && r->private_events != 1)
        return spk_err(SPK_ERR_INVALID_ARG, "request %zu: private_events %d (0 or 1)", i, r->private_events);
    return SPK_OK;
}

static uint64_t random_seed(void)
{
    uint64_t s = 0;
    if (getrandom(&s, sizeof s, 0) != (ssize_t)sizeof s) { /* no entropy source: time and address */
        struct timespec t;
        clock_gettime(CLOCK_REALTIME, &t);
        static _Atomic uint64_t ctr;
        s = ((uint64_t)t.tv_sec << 32) ^ (uint64_t)t.tv_nsec ^ (uintptr_t)&t ^ (ctr++ * 0x9E3779B97F4A7C15ull);
    }
    return s;
}

/* Build the engine's copy of request r (checked, text prompt tokenized). */
static spk_status make_req(spk_engine *e, spk_request *r, size_t i, req **out)
{
    *out = NULL;
    int32_t *tp = NULL; /* a text prompt's tokens */
    spk_status st;
    if (!r->prompt && r->n_prompt == 0 && r->text) {
        if (r->text_len > (size_t)1 << 26)
            return spk_err(SPK_ERR_INVALID_ARG, "request %zu: text prompt of %zu bytes (at most %d)", i,
                           r->text_len, 1 << 26);
        size_t cap = r->text_len + 2, nt = 0; /* a token covers at least one byte, plus BOS */
        if (!(tp = malloc(sizeof(int32_t) * cap)))
            return spk_err(SPK_ERR_NOMEM, "request %zu: out of memory tokenizing %zu bytes", i, r->text_len);
        if ((st = spk_tok_encode(e->p.tok, r->text, r->text_len, true, true, tp, cap, &nt)) != SPK_OK) {
            free(tp);
            return spk_err_prefix(st, "request %zu: text prompt", i);
        }
        r->prompt = tp;
        r->n_prompt = nt;
    }
    if (!r->prompt || r->n_prompt == 0) {
        free(tp);
        return spk_err(SPK_ERR_INVALID_ARG, "request %zu: empty prompt (no tokens%s)", i,
                       r->text ? " from its text" : " and no text");
    }
    if ((st = check_request(e, r, i)) != SPK_OK) {
        free(tp);
        return st;
    }
    req *q = calloc(1, sizeof *q);
    size_t cap = r->n_prompt + (size_t)r->max_tokens;
    if (cap > (size_t)e->p.n_ctx)
        cap = r->n_prompt > (size_t)e->p.n_ctx ? r->n_prompt : (size_t)e->p.n_ctx;
    size_t stop_bytes = 0;
    for (size_t k = 0; k < r->n_stop_strings; k++)
        stop_bytes += strlen(r->stop_strings[k]);
    if (q) {
        q->blocks = malloc(sizeof(int32_t) * (size_t)((e->p.n_ctx + e->block_size - 1) / e->block_size + 1));
        q->tokens = malloc(cap * sizeof(int32_t));
        q->stop = r->n_stop ? malloc(r->n_stop * sizeof(int32_t)) : NULL;
        q->pend = malloc((size_t)e->pend_cap);
        q->stops = stop_bytes ? malloc(stop_bytes) : NULL;
        if (r->private_events && (q->mb = calloc(1, sizeof *q->mb)) != NULL) {
            q->mb->head = q->mb->tail = -1;
            pthread_cond_init(&q->mb->cv, NULL);
        }
    }
    if (!q || !q->tokens || !q->blocks || (r->n_stop && !q->stop) || !q->pend || (stop_bytes && !q->stops) ||
        (r->private_events && !q->mb)) {
        if (q && q->mb) {
            pthread_cond_destroy(&q->mb->cv);
            free(q->mb);
        }
        free_req(q);
        free(tp);
        return spk_err(SPK_ERR_NOMEM, "spk_submit: out of memory for request %zu", i);
    }
    memcpy(q->tokens, r->prompt, r->n_prompt * sizeof(int32_t));
    free(tp);
    r->prompt = NULL;
    if (r->n_stop)
        memcpy(q->stop, r->stop_tokens, r->n_stop * sizeof(int32_t));
    q->n_prompt = q->n_tokens = (int)r->n_prompt;
    q->cap = (int)cap;
    q->max_tokens = r->max_tokens;
    q->sp = (spk_sampling){r->temperature, r->top_k, r->top_p, r->min_p};
    spk_rng_seed(&q->rng, r->seed == SPK_SEED_RANDOM ? random_seed() : r->seed);
    q->n_stop = (int)r->n_stop;
    q->ignore_eos = r->ignore_eos != 0;
    q->slot = -1;
    spk_tok_stream_init(&q->ts, e->p.tok, true);
    q->pend_cap = e->pend_cap;
    size_t off = 0;
    for (size_t k = 0; k < r->n_stop_strings; k++) {
        size_t len = strlen(r->stop_strings[k]);
        memcpy(q->stops + off, r->stop_strings[k], len);
        q->stop_off[k] = (uint16_t)off;
        q->stop_len[k] = (uint16_t)len;
        off += len;
    }
    q->n_stops = (int)r->n_stop_strings;
    q->repeat_penalty = r->repeat_penalty;
    q->repeat_last_n = r->repeat_last_n;
    q->freq_penalty = r->frequency_penalty;
    q->presence_penalty = r->presence_penalty;
    q->lp = r->logprobs || r->top_logprobs ? r->top_logprobs : -1;
    q->echo = r->prompt_logprobs != 0;
    q->echo_lp = r->top_logprobs;
    q->echo_next = 1;
    *out = q;
    return SPK_OK;
}

static void discard_req(req *q)
{
    if (q && q->mb) {
        pthread_cond_destroy(&q->mb->cv);
        free(q->mb);
    }
    free_req(q);
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
        if (src->struct_size != stride) {
            st = spk_err(SPK_ERR_INVALID_ARG, "request %zu: struct_size %zu differs from the first (%zu)",
                         i, src->struct_size, stride);
            break;
        }
        memcpy(&r, src, src->struct_size < sizeof r ? src->struct_size : sizeof r);
        st = make_req(e, &r, i, &made[i]);
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
                if (made[i]->mb) {
                    made[i]->mb->id = made[i]->id;
                    made[i]->mb->next = e->mboxes;
                    e->mboxes = made[i]->mb;
                }
                if (e->queue_tail)
                    e->queue_tail->next = made[i];
                else
                    e->queue_head = made[i];
                e->queue_tail = made[i];
                e->n_queued++;
                made[i] = NULL;
            }
            kick(e);
        }
        pthread_mutex_unlock(&e->mu);
    }
    for (size_t i = 0; i < n; i++)
        discard_req(made[i]);
    free(made);
    return st;
}

static struct timespec deadline(int timeout_ms)
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
    return dl;
}

/* Copy record `o` to the caller's output (its layout: `stride` bytes, possibly an older one). */
static void copy_output(void *dst, size_t stride, const spk_output *o)
{
    memcpy(dst, o, stride < sizeof *o ? stride : sizeof *o);
    ((spk_output *)dst)->struct_size = stride;
}

/* Shared queue: spk_poll (events; text-only outputs are dropped) or spk_poll_outputs. */
static spk_status poll_shared(spk_engine *e, spk_event *ev, void *out, size_t stride, size_t cap, size_t *n_out,
                              int timeout_ms)
{
    struct timespec dl = deadline(timeout_ms);
    size_t n = 0;
    bool freed = false;
    pthread_mutex_lock(&e->mu);
    for (;;) {
        while (n < cap && e->sq_len > 0) {
            int32_t i = e->sq_head;
            e->sq_head = e->rec_next[i];
            if (e->sq_head < 0)
                e->sq_tail = -1;
            e->sq_len--;
            const spk_output *o = &e->recs[i];
            if (ev) {
                if (o->token >= 0 || o->finish != SPK_FINISH_NONE)
                    ev[n++] = (spk_event){.request_id = o->request_id, .token = o->token, .position = o->position,
                                          .finish = o->finish, .status = o->status, .time_ns = o->time_ns};
            } else {
                copy_output((char *)out + n * stride, stride, o);
                n++;
            }
            rec_put(e, i);
            freed = true;
        }
        if (n > 0 || timeout_ms == 0 || e->stopping || e->fatal != SPK_OK)
            break;
        if (timeout_ms < 0)
            pthread_cond_wait(&e->event_cv, &e->mu);
        else if (pthread_cond_timedwait(&e->event_cv, &e->mu, &dl) == ETIMEDOUT)
            break;
    }
    if (freed)
        kick(e);
    spk_status st = n == 0 && e->fatal != SPK_OK ? e->fatal : SPK_OK;
    pthread_mutex_unlock(&e->mu);
    *n_out = n;
    return st == SPK_OK ? SPK_OK : spk_err(st, "spk_poll: engine failed");
}

spk_status spk_engine_poll(spk_engine *e, spk_event *ev, size_t cap, size_t *n_out, int timeout_ms)
{
    return poll_shared(e, ev, NULL, 0, cap, n_out, timeout_ms);
}

spk_status spk_engine_poll_outputs(spk_engine *e, spk_output *out, size_t stride, size_t cap, size_t *n_out,
                                   int timeout_ms)
{
    return poll_shared(e, NULL, out, stride, cap, n_out, timeout_ms);
}

spk_status spk_engine_poll_request(spk_engine *e, uint64_t id, spk_output *out, size_t stride, size_t cap,
                                   size_t *n_out, int timeout_ms)
{
    *n_out = 0;
    struct timespec dl = deadline(timeout_ms);
    pthread_mutex_lock(&e->mu);
    mailbox *mb = find_mailbox(e, id);
    if (!mb) {
        pthread_mutex_unlock(&e->mu);
        return spk_err(SPK_ERR_NOT_FOUND, "spk_poll_request: request %llu is unknown, not private_events, or "
                       "its final output was already returned", (unsigned long long)id);
    }
    mb->waiters++;
    while (mb->len == 0 && !mb->gone && timeout_ms != 0 && !e->stopping && e->fatal == SPK_OK) {
        if (timeout_ms < 0)
            pthread_cond_wait(&mb->cv, &e->mu);
        else if (pthread_cond_timedwait(&mb->cv, &e->mu, &dl) == ETIMEDOUT)
            break;
    }
    mb->waiters--;
    if (mb->gone) { /* another thread took the final output while this one waited */
        if (mb->waiters == 0)
            free_mailbox(e, mb);
        pthread_mutex_unlock(&e->mu);
        return spk_err(SPK_ERR_NOT_FOUND, "spk_poll_request: request %llu ended (another caller took its final "
                       "output)", (unsigned long long)id);
    }
    size_t n = 0;
    bool final = false;
    while (n < cap && mb->len > 0 && !final) {
        int32_t i = mb->head;
        mb->head = e->rec_next[i];
        if (mb->head < 0)
            mb->tail = -1;
        mb->len--;
        copy_output((char *)out + n * stride, stride, &e->recs[i]);
        final = e->recs[i].finish != SPK_FINISH_NONE;
        rec_put(e, i);
        n++;
    }
    if (final) { /* the id is forgotten */
        unlink_mailbox(e, mb);
        if (mb->waiters == 0)
            free_mailbox(e, mb);
        else
            pthread_cond_broadcast(&mb->cv);
    }
    if (n)
        kick(e);
    spk_status st = n == 0 && e->fatal != SPK_OK ? e->fatal : SPK_OK;
    pthread_mutex_unlock(&e->mu);
    *n_out = n;
    return st == SPK_OK ? SPK_OK : spk_err(st, "spk_poll_request: engine failed");
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
        kick(e);
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
