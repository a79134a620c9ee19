/*
 * The planner's model shape read from a validated GGUF file (hyperparameter keys of any
 * architecture prefix, byte rates from the tensors actually stored).
 */
#ifndef SPK_PLAN_SHAPE_H
#define SPK_PLAN_SHAPE_H

#include "model/gguf.h"
#include "plan/plan.h"

/* Fill *out from `f`: <arch>.block_count, embedding_length, attention.head_count(_kv),
 * attention.key_length, feed_forward_length, expert_count, expert_used_count,
 * expert_feed_forward_length, attention.sliding_window; vocabulary from token_embd.weight;
 * bytes per element from blk.0 tensors and the output head (token_embd when tied); quant block
 * from the row-parallel tensors. FORMAT if a required key or tensor is missing or out of range,
 * INVALID_ARG if the result fails spk_shape_check. */
spk_status spk_shape_from_gguf(const spk_gguf_file *f, spk_shape *out);

#endif
