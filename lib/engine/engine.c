/* The serving engine: sequence slots and batched steps (submit.c takes requests in, poll.c hands outputs out). */
#include "engine/engine_internal.h"

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

void spk_engine_free_req(req *r)
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

void spk_engine_kick(spk_engine *e)
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

void spk_engine_rec_put(spk_engine *e, int32_t i) { e->rec_free[e->n_rec_free++] = i; }

mailbox *spk_engine_find_mailbox(spk_engine *e, uint64_t id)
{
    for (mailbox *m = e->mboxes; m; m = m->next)
        if (m->id == id)
            return m;
    return NULL;
}

void spk_engine_unlink_mailbox(spk_engine *e, mailbox *mb)
{
    for (mailbox **pp = &e->mboxes; *pp; pp = &(*pp)->next)
        if (*pp == mb) {
            *pp = mb->next;
            break;
        }
    mb->gone = true;
}

void spk_engine_free_mailbox(spk_engine *e, mailbox *mb)
{
    for (int32_t i = mb->head; i >= 0; i = e->rec_next[i])
        spk_engine_rec_put(e, i);
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
    spk_engine_free_req(r);
}


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
            spk_engine_free_req(r);
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
            spk_engine_free_req(r);
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
        spk_engine_free_req(r);
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
        spk_engine_free_req(r);
    }
    if (e->slots)
        for (int s = 0; s < e->p.max_seqs; s++)
            spk_engine_free_req(e->slots[s]);
    free(e->slots);
    while (e->mboxes) {
        mailbox *mb = e->mboxes;
        e->mboxes = mb->next;
        spk_engine_free_mailbox(e, mb);
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
