/*
 * Serving engine: a thread that owns the model's run state, takes queued requests into
 * sequence slots, runs batched forward steps (prompt chunks and decode tokens together),
 * samples, and hands token events to pollers. submit/poll/cancel are thread-safe.
 */
#ifndef SPK_ENGINE_ENGINE_H
#define SPK_ENGINE_ENGINE_H

#include <stdbool.h>
#include <stdint.h>

#include "engine/exec.h"

typedef struct spk_engine spk_engine;

typedef struct spk_engine_params {
    spk_exec *exec;                      /* model executor (owned by the caller, used only by the engine thread) */
    int max_tok;                         /* tokens per step */
    int n_blocks, block_size;            /* the executor's paged KV cache */
    int n_vocab;
    int n_ctx;
    int max_seqs;                        /* sequence slots in the run state */
    int echo_rows;                       /* logits rows per step for prompt log-probs (the executor
                                            holds max_seqs + echo_rows rows) */
    int queue_capacity;
    bool (*is_eog)(const void *ctx, int32_t token);
    const void *eog_ctx;
    const struct spk_tok *tok;           /* text prompts and output text (outlives the engine) */
} spk_engine_params;

spk_status spk_engine_start(const spk_engine_params *p, spk_engine **out);
/* Stop the thread, drop pending work, free. */
void spk_engine_stop(spk_engine *e);

spk_status spk_engine_submit(spk_engine *e, const spk_request *reqs, size_t n, uint64_t *ids);
/* Wait up to timeout_ms (0: not at all, -1: forever) for queue room; blocked callers are served
 * in arrival order and plain submits do not overtake them (see spk_submit_wait). */
spk_status spk_engine_submit_wait(spk_engine *e, const spk_request *reqs, size_t n, uint64_t *ids,
                                  int timeout_ms);
spk_status spk_engine_poll(spk_engine *e, spk_event *ev, size_t cap, size_t *n_out, int timeout_ms);
/* Rich outputs of the shared queue; `stride` bytes per output (the caller's struct_size). */
spk_status spk_engine_poll_outputs(spk_engine *e, spk_output *out, size_t stride, size_t cap, size_t *n_out,
                                   int timeout_ms);
/* Outputs of one private_events request (NOT_FOUND: unknown, not private, or already ended). */
spk_status spk_engine_poll_request(spk_engine *e, uint64_t id, spk_output *out, size_t stride, size_t cap,
                                   size_t *n_out, int timeout_ms);
spk_status spk_engine_cancel(spk_engine *e, uint64_t id);

typedef struct spk_engine_stats_t {
    int n_queued, n_running;
    int kv_blocks_total, kv_blocks_free, kv_block_size;
    uint64_t n_preempted, n_generated;
    int n_submit_waiting;
} spk_engine_stats_t;
void spk_engine_stats(spk_engine *e, spk_engine_stats_t *st);

#endif
