/* The engine's intake: request checks, copies and the FIFO queue (spk_submit, spk_submit_wait). */
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
        spk_engine_free_req(q);
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
    spk_engine_free_req(q);
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
            spk_engine_kick(e);
        }
        pthread_mutex_unlock(&e->mu);
    }
    for (size_t i = 0; i < n; i++)
        discard_req(made[i]);
    free(made);
    return st;
}
