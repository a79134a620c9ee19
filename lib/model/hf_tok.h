/*
 * Hugging Face tokenizer files -> the tokenizer spec: reads a model directory's tokenizer.json,
 * tokenizer_config.json and generation_config.json into exactly what GGUF tokenizer.ggml.* would
 * hold (spk_tok_spec, for spk_tok_new) plus the chat template and the end-of-generation ids.
 *
 * What is read (anything else is UNSUPPORTED, naming the file and the item):
 *  - tokenizer.json, model.type "BPE":
 *      byte-level BPE (model "gpt2"): pre_tokenizer ByteLevel(use_regex=true) alone (pre "gpt-2"),
 *      Sequence[Digits(individual_digits), ByteLevel(use_regex=true)] (pre "smollm"), or
 *      Sequence[Split(Regex R, Isolated), ByteLevel(use_regex=false)] where R is the Llama 3,
 *      Qwen2, GPT-4o or Tekken regex (pre "llama-bpe", "qwen2", "gpt-4o", "tekken"); normalizer
 *      null or NFC; decoder ByteLevel; model.ignore_merges must agree with the pre-tokenizer.
 *      SentencePiece-style BPE (model "llama"): byte_fallback, Metaspace or Replace(" ", "▁")
 *      (+ Prepend("▁")) normalizer/pre-tokenizer, ByteFallback/Fuse/Strip/Replace decoder; the
 *      scores are derived from the merge ranks (see hf_tok.c).
 *      vocab (dense ids 0..n-1, no duplicates), merges as "a b" strings or ["a","b"] pairs,
 *      added_tokens (special -> CONTROL, else USER_DEFINED; they may extend the vocabulary).
 *  - tokenizer_config.json (optional): bos_token / eos_token (string or AddedToken object),
 *    add_bos_token / add_eos_token, chat_template (string, or the list-of-{name,template} form:
 *    the "default" one).
 *  - generation_config.json (optional): bos_token_id, eos_token_id (int or list).
 *  - chat_template.jinja (optional): the template when tokenizer_config.json has none.
 * bos/eos: a TemplateProcessing post-processor's tokens (what HF's encode adds) win, then
 * tokenizer_config.json's, then generation_config.json's; add_bos/add_eos come from the
 * post-processor, else tokenizer_config.json, else 0. The input is not NFC-normalized (as in
 * llama.cpp): an NFC normalizer is accepted and text is taken as already NFC.
 *
 * For the in-memory GGUF (the safetensors loader): write spec.model -> tokenizer.ggml.model,
 * spec.pre -> tokenizer.ggml.pre, spec.tokens -> tokenizer.ggml.tokens, spec.token_types ->
 * tokenizer.ggml.token_type, spec.merges -> tokenizer.ggml.merges (n_merges may be 0: key
 * absent), spec.scores (model "llama" only, else NULL) -> tokenizer.ggml.scores,
 * bos/eos/eot/eom (each only when >= 0) -> tokenizer.ggml.{bos,eos,eot,eom}_token_id,
 * add_bos/add_eos (only when >= 0) -> tokenizer.ggml.add_{bos,eos}_token (bool),
 * add_space_prefix (model "llama", when >= 0) -> tokenizer.ggml.add_space_prefix,
 * spm_prefix_mode (model "llama", when != 0) -> tokenizer.ggml.spm_prefix_mode (INT32; ours, read
 * by tok_gguf.c: where HF's Metaspace puts the space prefix; no llama.cpp file has the key),
 * chat_template -> tokenizer.chat_template, eog_ids -> tokenizer.ggml.eog_token_ids (array of
 * INT32; an extension of ours, read by tok_gguf.c: extra end-of-generation ids beyond
 * eos/eot/eom, e.g. generation_config.json's eos list; no llama.cpp file has the key).
 * spec.eog_ids/n_eog (tokenizer.h) point at the same list, so spk_tok_new(&t.spec) directly
 * gives the same tokenizer as the GGUF round trip.
 *
 * Thread rule: a spk_hf_tok is plain data owned by the caller; free it once with spk_hf_tok_free.
 */
#ifndef SPK_MODEL_HF_TOK_H
#define SPK_MODEL_HF_TOK_H

#include <stddef.h>
#include <stdint.h>

#include "model/tokenizer.h"
#include "sparkinfer/sparkinfer.h"

typedef struct spk_hf_tok {
    spk_tok_spec spec;      /* as GGUF tokenizer.ggml.* would hold it; n_vocab 0 (unchecked) */
    char *chat_template;    /* NUL-terminated; NULL if none */
    int32_t *eog_ids;       /* every end-of-generation id (eos, generation_config eos list,
                             * tokenizer_config eos), deduplicated, ascending; == spec.eog_ids */
    size_t n_eog;
    void *priv;             /* owned storage (token texts, arrays) */
} spk_hf_tok;

/*
 * Read `dir`/tokenizer.json (required), `dir`/tokenizer_config.json and
 * `dir`/generation_config.json (each optional) into *out. Errors: IO (a file that exists but
 * cannot be read; NOT_FOUND for a missing tokenizer.json), FORMAT (not JSON, a wrong type, a
 * bad id, a duplicate, a merge naming an unknown token...), UNSUPPORTED (a model type,
 * normalizer, pre-tokenizer regex or decoder we do not implement), NOMEM; the message names the
 * file and the item. On error *out is zeroed (nothing to free; freeing it anyway is harmless).
 */
spk_status spk_hf_tok_read(const char *dir, spk_hf_tok *out);

/*
 * The same from file contents in memory (any of the config texts may be NULL: absent);
 * `tokenizer_json` is `tj_len` bytes, not necessarily NUL-terminated. For the fuzz target and
 * tests. `label` names the source in messages (e.g. the directory).
 */
spk_status spk_hf_tok_parse(const char *label, const char *tokenizer_json, size_t tj_len,
                            const char *config_json, size_t cfg_len, const char *gen_json,
                            size_t gen_len, spk_hf_tok *out);

/* Free everything *t owns and zero it (NULL or a zeroed struct: nothing happens). */
void spk_hf_tok_free(spk_hf_tok *t);

#endif
