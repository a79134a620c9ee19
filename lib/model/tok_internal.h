/*
 * Internals of the tokenizer shared by tokenizer.c (encode/decode/stream), tok_vocab.c (building
 * and validating the vocabulary), tok_pretok.c (PCRE2 pre-tokenizers) and tok_bpe.c (merges).
 */
#ifndef SPK_MODEL_TOK_INTERNAL_H
#define SPK_MODEL_TOK_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model/tokenizer.h"

/* Pre-tokenizer families (tokenizer.ggml.pre). */
typedef enum spk_tok_pre {
    SPK_PRE_SMOLLM = 1,     /* split digits one by one, then the GPT-2 regex */
    SPK_PRE_LLAMA3 = 2,     /* the Llama 3 regex; whole pieces found in the vocab skip merges */
    SPK_PRE_GPT2 = 3,       /* the GPT-2 regex */
    SPK_PRE_QWEN2 = 4,      /* Llama 3's regex with single digits (Qwen2, Qwen3) */
    SPK_PRE_GPT4O = 5,      /* GPT-4o / Llama 4: case-aware words, digits in threes */
    SPK_PRE_TEKKEN = 6,     /* Mistral Tekken: case-aware words, single digits; skips merges */
} spk_tok_pre;

#define SPK_TOK_MAX_REGEX 2
#define SPK_TOKF_EOG 0x01u

struct spk_tok {
    spk_tok_pre pre;            /* byte-level BPE only */
    bool spm;                   /* SentencePiece (tokenizer.ggml.model = "llama") */
    bool add_space_prefix;      /* SentencePiece: a space before the first text fragment */
    uint8_t spm_prefix_mode;    /* SentencePiece: spk_tok_spec.spm_prefix_mode */
    float *scores;              /* SentencePiece: score of each token (NULL: all 0) */
    bool ignore_merges;
    bool add_bos, add_eos;
    int32_t bos, eos, eot, eom;
    uint32_t n_tokens;

    /* Stored text of token i: text + text_off[i], text_off[i+1] - text_off[i] bytes. */
    char *text;
    uint32_t *text_off;
    /* Decoded bytes of token i (GPT-2 byte mapping undone for NORMAL tokens). */
    char *piece;
    uint32_t *piece_off;
    uint8_t *type;          /* SPK_TOKTYPE_* */
    uint8_t *flags;         /* SPK_TOKF_* */
    size_t max_piece;

    /* Stored text -> id, open addressing; slot holds id + 1 (0 = empty). */
    uint32_t *map;
    uint64_t map_mask;

    /* Merge (left id, right id) -> rank and result id, open addressing. */
    uint64_t *pair_key;     /* UINT64_MAX = empty */
    uint32_t *pair_rank;
    int32_t *pair_res;
    uint64_t pair_mask;

    int32_t byte_tok[256];  /* token of each single byte (SentencePiece: its <0xXX> token) */

    /* Special tokens matched literally in text, sorted by first byte then length descending;
     * those with first byte b are special[special_first[b] .. special_first[b+1]). */
    int32_t *special;
    uint32_t n_special;
    uint32_t special_first[257];

    void *re[SPK_TOK_MAX_REGEX];  /* pcre2_code_8 * */
    int n_re;
};

/* GPT-2 byte <-> unicode code point mapping. */
uint32_t spk_tok_byte_to_cp(uint8_t b);
int spk_tok_cp_to_byte(uint32_t cp);   /* -1 if cp is not the image of a byte */

/* Hash lookups. */
int32_t spk_tok_map_find(const spk_tok *tok, const char *s, size_t n);
bool spk_tok_pair_find(const spk_tok *tok, int32_t left, int32_t right, uint32_t *rank,
                       int32_t *res);

/* Where encoded ids go: the first `cap` are stored, all are counted. */
typedef struct spk_tok_sink {
    int32_t *out;
    size_t cap;
    size_t n;
} spk_tok_sink;

static inline void spk_tok_sink_push(spk_tok_sink *s, int32_t id)
{
    if (s->n < s->cap)
        s->out[s->n] = id;
    s->n++;
}

/* Per-call scratch memory (one per encode call, never shared). */
typedef struct spk_tok_scratch {
    void *syms;
    size_t cap_syms;
    void *heap;
    size_t cap_heap;
    char *mapped;
    size_t cap_mapped;
    void *md[SPK_TOK_MAX_REGEX];  /* pcre2_match_data_8 * */
} spk_tok_scratch;

void spk_tok_scratch_free(spk_tok_scratch *sc);

/* BPE-encode one pre-tokenized piece (raw bytes) into `sink`. */
spk_status spk_tok_bpe_piece(const spk_tok *tok, spk_tok_scratch *sc, const char *p, size_t n,
                             spk_tok_sink *sink);

/* SentencePiece-encode one text fragment (raw bytes; `space_prefix`: a space goes first). */
spk_status spk_tok_spm_encode(const spk_tok *tok, const char *raw, size_t len, bool space_prefix,
                              spk_tok_sink *sink);

/* Compile the regexes of tok->pre into tok->re (JIT when available). */
spk_status spk_tok_pretok_init(spk_tok *tok);
void spk_tok_pretok_free(spk_tok *tok);

/* Split `text` into pieces and BPE-encode each into `sink`. */
spk_status spk_tok_pretok_encode(const spk_tok *tok, spk_tok_scratch *sc, const char *text,
                                 size_t len, spk_tok_sink *sink);

#endif
