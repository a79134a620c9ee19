/*
 * Token sampling from a row of logits: greedy, temperature, top-k, top-p, with a per-request
 * seeded RNG so the same seed gives the same tokens whatever else runs.
 */
#ifndef SPK_ENGINE_SAMPLER_H
#define SPK_ENGINE_SAMPLER_H

#include <stdint.h>

typedef struct spk_sampling {
    float temperature;   /* <= 0: greedy */
    int top_k;           /* <= 0: whole vocabulary */
    float top_p;         /* >= 1: off */
    float min_p;         /* <= 0: off; keeps tokens with p >= min_p * p(top token), after temperature */
} spk_sampling;

typedef struct spk_rng {
    uint64_t s[4];
} spk_rng;

void spk_rng_seed(spk_rng *r, uint64_t seed);
uint64_t spk_rng_next(spk_rng *r);
/* Uniform in [0, 1). */
double spk_rng_uniform(spk_rng *r);

/* Scratch the sampler needs for a vocabulary of n (reused across calls, not shared). */
typedef struct spk_sampler_scratch {
    int n;
    int32_t *idx;
    float *p;
} spk_sampler_scratch;

int spk_sampler_scratch_init(spk_sampler_scratch *s, int n_vocab);
void spk_sampler_scratch_free(spk_sampler_scratch *s);

/* Index of the largest logit (lowest index on ties). */
int32_t spk_argmax(const float *logits, int n);

/* Draw a token. The logits are not modified. */
int32_t spk_sample(const float *logits, int n, const spk_sampling *p, spk_rng *rng,
                   spk_sampler_scratch *s);

/* Same, with the uniform draw u in [0, 1) supplied by the caller (the driver draws it from the
 * request's RNG so any rank can sample the same token). */
int32_t spk_sample_u(const float *logits, int n, const spk_sampling *p, double u,
                     spk_sampler_scratch *s);

/* A sampling candidate: a vocabulary id and its logit. */
typedef struct spk_cand {
    float logit;         /* after penalties: what sampling uses */
    int32_t id;
    float raw;           /* the model's logit, before penalties (log-probs) */
} spk_cand;

/* A penalty on one token's logit: with rep != 1 a positive logit is divided by rep and a
 * negative one multiplied (llama.cpp's repeat penalty); then sub is subtracted (OpenAI's
 * count * frequency_penalty + presence_penalty). */
typedef struct spk_pen {
    int32_t token;
    float rep;
    float sub;
} spk_pen;

/* Apply penalties to a shard of logits holding ids [base, base + n); ids outside are skipped. */
void spk_apply_penalties(float *logits, int n, int32_t base, const spk_pen *pen, int n_pen);

/* The penalty list for the next token of a sequence tokens[0..n_tokens) whose first n_prompt
 * are the prompt: repeat penalty `rep` on the distinct tokens of the last `last_n` (0: none),
 * frequency/presence on the generated ones by their counts. `mark` is zeroed scratch of the
 * vocabulary's size, left zeroed. Writes at most last_n + (n_tokens - n_prompt) entries, each
 * token once, and returns their number. */
int spk_penalties_build(const int32_t *tokens, int n_tokens, int n_prompt, int last_n, float rep, float freq,
                        float presence, int32_t *mark, spk_pen *out);

/* How many candidates per row sampling with `p` needs from a shard of n_local logits
 * (1 for greedy, top_k, or all of them when top-k is off). */
int spk_sample_k(const spk_sampling *p, int n_local);

/* The k best of n logits (ids offset by `base`), best first, ties by lower id. k <= n. */
void spk_top_cands(const float *logits, int n, int k, int32_t base, spk_cand *out,
                   spk_sampler_scratch *s);

/* Merge candidate lists (n entries in any order; entries with id < 0 are padding) and sample
 * from their best k as spk_sample_u would from the whole vocabulary. Reorders `c`. */
int32_t spk_sample_cands(spk_cand *c, int n, const spk_sampling *p, double u);

#endif
