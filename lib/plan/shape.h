/*
 * The planner's model shape read from a validated GGUF file (hyperparameter keys of any
 * architecture prefix, byte rates from the tensors actually stored).
 */
#ifndef SPK_PLAN_SHAPE_H
#define SPK_PLAN_SHAPE_H

#include "model/gguf.h"
#include "plan/plan.h"

/* Fill *out from `f`: <arch>.block_count, embedding_length, attention.head_count(_kv),
 * attention.key_length, feed_forward_length (dense files), expert_count, expert_used_count,
 * expert_feed_forward_length, expert_shared_feed_forward_length x expert_shared_count (n_ff of a
 * MoE shape), attention.sliding_window with attention.sliding_window_pattern (default period 2,
 * gpt-oss; none for qwen3, qwen3moe, qwen2(moe), llama); vocabulary from token_embd.weight;
 * bytes per element from blk.0 tensors and the output head (token_embd when tied); quant block
 * from the row-parallel tensors. FORMAT if a required key or tensor is missing or out of range,
 * or blk.0's router / expert tensors disagree with expert_count / expert_feed_forward_length;
 * INVALID_ARG if the result fails spk_shape_check. docs/PLANNER.md section 1. */
spk_status spk_shape_from_gguf(const spk_gguf_file *f, spk_shape *out);

#endif
