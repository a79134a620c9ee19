/*
 * Hugging Face model directories (config.json + model.safetensors, or shards named by
 * model.safetensors.index.json) presented as the GGUF file llama.cpp's convert_hf_to_gguf.py
 * would have written: the same metadata keys and tensor names, tensor data pointing into the
 * safetensors mappings (BF16/F16/F32 matrices, zero-copy) or into buffers made at open where
 * the converter transforms data (llama's Q/K row permutation, norms as F32, llama3 rope
 * factors, stacked experts) or the format has no CPU kernel (FP8 E4M3 and NVFP4 -> BF16; MXFP4
 * -> ggml MXFP4, exact), made on first touch (model/hf_lazy.h). Architectures: llama
 * (LlamaForCausalLM, MistralForCausalLM), qwen3, qwen3moe and gpt-oss.
 */
#ifndef SPK_MODEL_HF_H
#define SPK_MODEL_HF_H

#include "model/gguf.h"

/* Open directory `dir` as a virtual GGUF file (closed with spk_gguf_close). Errors: IO,
 * FORMAT (malformed config/index/safetensors, shapes that disagree with config.json, a shard
 * missing or not named by the index), UNSUPPORTED (architecture, dtype, quantization layout). */
spk_status spk_hf_open(const char *dir, spk_gguf_file **out);

/* Frees what spk_hf_open attached to f (called by spk_gguf_close). */
void spk_hf_free(struct spk_hf_model *m);

/* Bytes of converted tensors made so far: of tensor `name` (GGUF name), or of all (NULL); 0
 * for a GGUF file. Conversion is lazy where userfaultfd works (spk_hf_lazy_conversion 1): a
 * page of a converted tensor is made on its first read, so a rank converts only the rows of the
 * slices it reads; otherwise (or with SPK_HF_EAGER=1) everything is converted at open. A page
 * dropped by the loader (MADV_DONTNEED after a column copy) and read again counts again. */
uint64_t spk_hf_converted_bytes(const spk_gguf_file *f, const char *name);
int spk_hf_lazy_conversion(const spk_gguf_file *f);

/* Identity of a directory file: config.json, every shard's size and header, and sampled bytes
 * of every (virtual) tensor. */
void spk_hf_identity(const spk_gguf_file *f, uint8_t out[SPK_GGUF_ID_BYTES]);

#endif
