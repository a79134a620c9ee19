/*
 * Internals of the Hugging Face tokenizer-file reader shared by hf_tok.c (files, vocabulary,
 * merges, configs) and hf_tok_chain.c (recognising the normalizer / pre-tokenizer / decoder /
 * post-processor chain).
 */
#ifndef SPK_MODEL_HF_TOK_INTERNAL_H
#define SPK_MODEL_HF_TOK_INTERNAL_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <string.h>

#include "model/hf_tok.h"

#define SPM_SPACE "\xe2\x96\x81" /* U+2581, SentencePiece's space */

struct hf_priv;

typedef struct hf_ctx {
    const char *label;  /* directory (or "memory") for messages */
    const char *file;   /* file being read */
    struct hf_priv *p;
    size_t n;           /* tokens */
} hf_ctx;

/* ---- small JSON helpers ---- */

static inline const char *json_type_str(const cJSON *obj)
{
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(obj, "type");
    return cJSON_IsString(t) ? t->valuestring : NULL;
}

static inline bool json_str_eq(const cJSON *obj, const char *key, const char *want)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsString(v) && strcmp(v->valuestring, want) == 0;
}

static inline bool json_true(const cJSON *obj, const char *key)
{
    return cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(obj, key));
}

/* A key that must be absent, null, false, "" (optional features we do not implement). */
static inline bool json_unset(const cJSON *obj, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return !v || cJSON_IsNull(v) || cJSON_IsFalse(v) || (cJSON_IsString(v) && !v->valuestring[0]);
}


/* The byte-level pre-tokenizer name ("gpt-2", "smollm", "llama-bpe", "qwen2", "gpt-4o", "tekken")
 * for tokenizer.json's pre_tokenizer, or NULL with the error message set (UNSUPPORTED).
 * *ignore_merges: what our tokenizer does for that name. */
const char *spk_hf_byte_level_pre(const hf_ctx *c, const cJSON *pt, bool *ignore_merges);

/* Normalizer of a byte-level tokenizer: null, NFC, or a Sequence of NFC. */
bool spk_hf_bpe_normalizer_ok(const cJSON *n);

/* SentencePiece-style chain: sets *prefix (add_space_prefix) and *mode (spm_prefix_mode). */
bool spk_hf_spm_chain_ok(const cJSON *norm, const cJSON *pt, int *prefix, int *mode);

/* SentencePiece-style decoder (Replace/ByteFallback/Fuse/Strip sequence, or Metaspace). */
bool spk_hf_spm_decoder_ok(const cJSON *d);

/* add_bos/add_eos and their token texts from the post_processor (TemplateProcessing, ByteLevel,
 * Sequence, null); UNSUPPORTED/FORMAT otherwise. */
spk_status spk_hf_post_processor(const hf_ctx *c, const cJSON *pp, int *add_bos, int *add_eos, char *bos, char *eos,
                                 size_t cap);

#endif
