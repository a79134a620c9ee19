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

#endif
