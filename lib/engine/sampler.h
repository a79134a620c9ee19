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
    float logit;
    int32_t id;
} spk_cand;

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
