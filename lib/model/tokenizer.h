/*
 * Byte-level BPE tokenizer (GGUF tokenizer.ggml.model "gpt2") with the "smollm" and "llama-bpe"
 * pre-tokenizers: text <-> token ids, special tokens, end-of-generation set, streaming decode.
 *
 * Thread rule: a spk_tok is immutable after construction; encode/decode may run concurrently
 * from any number of threads (each call uses its own scratch memory and PCRE2 match data).
 * A spk_tok_stream belongs to one thread at a time.
 */
#ifndef SPK_MODEL_TOKENIZER_H
#define SPK_MODEL_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model/gguf.h"
#include "sparkinfer/sparkinfer.h"

typedef struct spk_tok spk_tok;

/* Token types as stored in tokenizer.ggml.token_type. */
enum {
    SPK_TOKTYPE_UNDEFINED = 0,
    SPK_TOKTYPE_NORMAL = 1,
    SPK_TOKTYPE_UNKNOWN = 2,
    SPK_TOKTYPE_CONTROL = 3,
    SPK_TOKTYPE_USER_DEFINED = 4,
    SPK_TOKTYPE_UNUSED = 5,
    SPK_TOKTYPE_BYTE = 6,
};

/* A byte string that need not be NUL-terminated. */
typedef struct spk_tok_str {
    const char *ptr;
    size_t len;
} spk_tok_str;

/*
 * Everything the tokenizer is built from, independent of the file format (the GGUF adapter
 * fills it from metadata; tests fill it by hand). Strings are copied; the spec may be freed
 * after spk_tok_new returns.
 */
typedef struct spk_tok_spec {
    const char *model;            /* tokenizer.ggml.model: "gpt2" (byte-level BPE) or "llama" (SentencePiece) */
    const char *pre;              /* tokenizer.ggml.pre: smollm, llama-bpe, gpt-2, qwen2, gpt-4o, tekken... (NULL: error) */
    size_t n_tokens;
    const spk_tok_str *tokens;    /* token text as stored (GPT-2 byte-to-unicode form) */
    const int32_t *token_types;   /* n_tokens SPK_TOKTYPE_* values; NULL: all NORMAL */
    size_t n_merges;
    const spk_tok_str *merges;    /* "left right", rank = index */
    int32_t bos, eos, eot, eom;   /* -1: none */
    int add_bos;                  /* 1/0; -1: the pre-tokenizer's default */
    int add_eos;                  /* 1/0; -1: no */
    int64_t n_vocab;              /* expected token count (e.g. the embedding rows); <= 0: unchecked */
    const float *scores;          /* SentencePiece: n_tokens scores (NULL: all 0) */
    int add_space_prefix;         /* SentencePiece: 1/0; -1: yes */
    const int32_t *eog_ids;       /* extra end-of-generation ids beyond eos/eot/eom (e.g. a Hugging
                                   * Face generation_config.json eos list; GGUF: our optional
                                   * tokenizer.ggml.eog_token_ids); NULL/0: none */
    size_t n_eog;
    int spm_prefix_mode;          /* SentencePiece, where the space prefix goes (GGUF: our optional
                                   * tokenizer.ggml.spm_prefix_mode): 0 before text at the start and
                                   * after each special token, as llama.cpp (and HF's Prepend
                                   * normalizer) do; 1 the same but not before text that starts with
                                   * a space (HF Metaspace prepend_scheme "always"); 2 only before
                                   * text at the very start of the input, not starting with a space
                                   * (Metaspace "first") */
} spk_tok_spec;

/* Set every field to "absent" (ids -1, add_* -1, NULL arrays). */
void spk_tok_spec_init(spk_tok_spec *spec);

/*
 * Build a tokenizer from `spec`, validating it: FORMAT (naming the token/merge and the numbers)
 * for a malformed vocabulary, UNSUPPORTED naming the model or pre-tokenizer it does not know,
 * NOMEM. On error *out is NULL.
 */
spk_status spk_tok_new(const spk_tok_spec *spec, spk_tok **out);

/*
 * Build from GGUF metadata (tokenizer.ggml.*). `n_vocab` > 0 is checked against the token count
 * (pass the embedding rows; 0 to skip). Errors as spk_tok_new, plus NOT_FOUND/FORMAT for absent
 * or mistyped keys (message names the key).
 */
spk_status spk_tok_load(const spk_gguf_file *f, int64_t n_vocab, spk_tok **out);

/* The same with tokenizer.ggml.pre replaced by `pre_override` (NULL: the file's): the tests
 * run one vocabulary under another pre-tokenizer's regexes, as llama.cpp does for a file whose
 * pre key names it. */
spk_status spk_tok_load_pre(const spk_gguf_file *f, int64_t n_vocab, const char *pre_override, spk_tok **out);

void spk_tok_free(spk_tok *tok);

/*
 * Tokenize `len` bytes of `text` (any bytes; invalid UTF-8 is encoded byte by byte; a byte
 * the vocabulary has no token for is dropped, as llama.cpp and HF do).
 * add_special: prepend BOS (append EOS) when the model asks for it. parse_special: text of
 * CONTROL tokens (e.g. "<|im_end|>") becomes that token; USER_DEFINED tokens are always matched
 * (as llama.cpp and HF do). Writes at most `cap` ids; *n_out gets the total needed; TOO_LONG
 * if that exceeds `cap`.
 */
spk_status spk_tok_encode(const spk_tok *tok, const char *text, size_t len, bool add_special,
                          bool parse_special, int32_t *out, size_t cap, size_t *n_out);

/*
 * Concatenate the bytes of `n` tokens into `buf` (not NUL-terminated). CONTROL and UNKNOWN
 * tokens are skipped when skip_special, else rendered as their text. INVALID_ARG for an id out
 * of range; TOO_LONG (with *n_out the size needed) when `cap` is too small.
 */
spk_status spk_tok_decode(const spk_tok *tok, const int32_t *ids, size_t n, bool skip_special,
                          char *buf, size_t cap, size_t *n_out);

/* The bytes of one token (skip_special rules as decode); NULL/0 for an id out of range. */
const char *spk_tok_piece(const spk_tok *tok, int32_t id, bool skip_special, size_t *len);

int spk_tok_n_vocab(const spk_tok *tok);
int32_t spk_tok_bos(const spk_tok *tok);          /* -1 if none */
int32_t spk_tok_eos(const spk_tok *tok);          /* -1 if none */
int32_t spk_tok_eot(const spk_tok *tok);          /* -1 if none */
bool spk_tok_add_bos(const spk_tok *tok);
int spk_tok_type(const spk_tok *tok, int32_t id); /* SPK_TOKTYPE_*, -1 if out of range */
/* Longest piece of any token in bytes (sizing for streaming output: 3 * this + 4 suffices). */
size_t spk_tok_max_piece(const spk_tok *tok);

/* True if generating `id` ends a turn: eos, eot, eom and tokens such as <|im_end|>,
 * <|eot_id|>, <|end_of_text|>, <|endoftext|> when present. */
bool spk_tok_is_eog(const spk_tok *tok, int32_t id);

/* Id of the token whose stored text is exactly `text` (len bytes), or -1. */
int32_t spk_tok_find(const spk_tok *tok, const char *text, size_t len);

/*
 * Streaming detokenizer: emits only complete UTF-8 characters. Bytes of a character split
 * across tokens are held back until it completes; bytes that can never form a valid character
 * come out as U+FFFD (one per maximal invalid subpart), so the output is always valid UTF-8.
 */
typedef struct spk_tok_stream {
    const spk_tok *tok;
    bool skip_special;
    uint8_t pending[4];
    uint32_t n_pending;
} spk_tok_stream;

void spk_tok_stream_init(spk_tok_stream *s, const spk_tok *tok, bool skip_special);

/*
 * Feed token `id` (or -1 to flush: a held-back incomplete character becomes U+FFFD) and append
 * the bytes now complete to `buf`. *n_out gets their count. TOO_LONG (state unchanged, *n_out
 * the size needed) if `cap` is too small; INVALID_ARG for an id out of range.
 */
spk_status spk_tok_stream_push(spk_tok_stream *s, int32_t id, char *buf, size_t cap,
                               size_t *n_out);

#endif
