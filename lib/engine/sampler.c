/* Greedy / temperature / top-k / top-p sampling with xoshiro256** per request. */
#include "engine/sampler.h"

#include <math.h>
#include <stdlib.h>

static uint64_t splitmix(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void spk_rng_seed(spk_rng *r, uint64_t seed)
{
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix(&seed);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t spk_rng_next(spk_rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double spk_rng_uniform(spk_rng *r) { return (double)(spk_rng_next(r) >> 11) * (1.0 / 9007199254740992.0); }

int spk_sampler_scratch_init(spk_sampler_scratch *s, int n)
{
    s->n = n;
    s->idx = malloc((size_t)n * sizeof *s->idx);
    s->p = malloc((size_t)n * sizeof *s->p);
    if (!s->idx || !s->p) {
        spk_sampler_scratch_free(s);
        return -1;
    }
    return 0;
}

void spk_sampler_scratch_free(spk_sampler_scratch *s)
{
    free(s->idx);
    free(s->p);
    s->idx = NULL;
    s->p = NULL;
}

int32_t spk_argmax(const float *x, int n)
{
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}

/* Order candidates by logit, descending; ties by lower index (a strict total order, so the result
 * does not depend on the sort algorithm). */
static _Thread_local const float *tl_cmp_logits;
static int cmp_desc(const void *a, const void *b)
{
    int32_t i = *(const int32_t *)a, j = *(const int32_t *)b;
    float x = tl_cmp_logits[i], y = tl_cmp_logits[j];
    if (x != y)
        return x > y ? -1 : 1;
    return (i > j) - (i < j);
}

/* Move the k largest to the front (unordered) by repeated partitioning, then sort them. */
static void select_top(int32_t *idx, int n, int k, const float *logits)
{
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        int32_t pivot = idx[lo + (hi - lo) / 2];
        int i = lo, j = hi;
        while (i <= j) {
            while (cmp_desc(&idx[i], &pivot) < 0)
                i++;
            while (cmp_desc(&idx[j], &pivot) > 0)
                j--;
            if (i <= j) {
                int32_t t = idx[i];
                idx[i++] = idx[j];
                idx[j--] = t;
            }
        }
        if (k - 1 <= j)
            hi = j;
        else if (k - 1 >= i)
            lo = i;
        else
            break;
    }
    (void)logits;
    qsort(idx, (size_t)k, sizeof *idx, cmp_desc);
}

int32_t spk_sample(const float *logits, int n, const spk_sampling *p, spk_rng *rng,
                   spk_sampler_scratch *s)
{
    if (p->temperature <= 0.0f || p->top_k == 1)
        return spk_argmax(logits, n);
    int k = p->top_k > 0 && p->top_k < n ? p->top_k : n;
    for (int i = 0; i < n; i++)
        s->idx[i] = i;
    tl_cmp_logits = logits;
    select_top(s->idx, n, k, logits);
    const double inv_t = 1.0 / p->temperature;
    const float maxl = logits[s->idx[0]];
    double sum = 0;
    for (int i = 0; i < k; i++) {
        s->p[i] = (float)exp((logits[s->idx[i]] - maxl) * inv_t);
        sum += s->p[i];
    }
    int keep = k;
    if (p->top_p > 0.0f && p->top_p < 1.0f) {
        double cum = 0;
        for (int i = 0; i < k; i++) {
            cum += s->p[i] / sum;
            if (cum >= p->top_p) {
                keep = i + 1;
                break;
            }
        }
        sum = 0;
        for (int i = 0; i < keep; i++)
            sum += s->p[i];
    }
    double u = spk_rng_uniform(rng) * sum, acc = 0;
    for (int i = 0; i < keep; i++) {
        acc += s->p[i];
        if (u < acc)
            return s->idx[i];
    }
    return s->idx[keep - 1];
}
