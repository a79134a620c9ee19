/* The engine's outputs to callers: the shared queue, private mailboxes, cancel and stats. */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "common/error.h"
#include "engine/engine_internal.h"

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
            spk_engine_rec_put(e, i);
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
        spk_engine_kick(e);
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
    mailbox *mb = spk_engine_find_mailbox(e, id);
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
            spk_engine_free_mailbox(e, mb);
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
        spk_engine_rec_put(e, i);
        n++;
    }
    if (final) { /* the id is forgotten */
        spk_engine_unlink_mailbox(e, mb);
        if (mb->waiters == 0)
            spk_engine_free_mailbox(e, mb);
        else
            pthread_cond_broadcast(&mb->cv);
    }
    if (n)
        spk_engine_kick(e);
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
        spk_engine_kick(e);
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
