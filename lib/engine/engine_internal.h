/*
 * The engine's shared state (engine.c runs the steps; submit.c takes requests in; poll.c hands
 * outputs out): the request, the private-output mailbox and the engine struct, and the few
 * helpers the three files share. Internal to lib/engine.
 */
#ifndef SPK_ENGINE_INTERNAL_H
#define SPK_ENGINE_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "engine/engine.h"
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

/* A blocked spk_submit_wait caller (on its own stack), in arrival order. */
typedef struct submit_waiter {
    struct submit_waiter *next;
} submit_waiter;

/* Helpers of engine.c the other two use; callers hold e->mu where the engine's state is touched. */
void spk_engine_free_req(req *r);                       /* a request that never reached a slot */
void spk_engine_kick(spk_engine *e);                    /* wake the engine thread */
void spk_engine_rec_put(spk_engine *e, int32_t i);      /* an output record back to the pool */
mailbox *spk_engine_find_mailbox(spk_engine *e, uint64_t id);
void spk_engine_unlink_mailbox(spk_engine *e, mailbox *mb);
void spk_engine_free_mailbox(spk_engine *e, mailbox *mb);

#endif
