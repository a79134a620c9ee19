/* Greedy / temperature / top-k / top-p sampling with xoshiro256** per request. */
#include "engine/sampler.h"

#include <math.h>
#include <stdbool.h>
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

/* Move the k largest of tl_cmp_logits (set by the caller) to the front by repeated partitioning,
 * then sort them. */
static void select_top(int32_t *idx, int n, int k)
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
    qsort(idx, (size_t)k, sizeof *idx, cmp_desc);
}

static int cand_cmp(const void *a, const void *b)
{
    const spk_cand *x = a, *y = b;
    if (x->id < 0 || y->id < 0)
        return (x->id < 0) - (y->id < 0);
    if (x->logit != y->logit)
        return x->logit > y->logit ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

int spk_sample_k(const spk_sampling *p, int n_local)
{
    if (p->temperature <= 0.0f || p->top_k == 1)
        return 1 < n_local ? 1 : n_local;
    return p->top_k > 0 && p->top_k < n_local ? p->top_k : n_local;
}

void spk_top_cands(const float *logits, int n, int k, int32_t base, spk_cand *out, spk_sampler_scratch *s)
{
    if (k == 1) {
        int32_t b = spk_argmax(logits, n);
        out[0] = (spk_cand){logits[b], b + base, logits[b]};
        return;
    }
    for (int i = 0; i < n; i++)
        s->idx[i] = i;
    tl_cmp_logits = logits;
    select_top(s->idx, n, k);
    for (int i = 0; i < k; i++)
        out[i] = (spk_cand){logits[s->idx[i]], s->idx[i] + base, logits[s->idx[i]]};
}

int32_t spk_sample_cands(spk_cand *c, int n, const spk_sampling *p, double u)
{
    qsort(c, (size_t)n, sizeof *c, cand_cmp);
    while (n > 0 && c[n - 1].id < 0)
        n--;
    if (n == 0)
        return -1;
    int k = spk_sample_k(p, n);
    if (k == 1)
        return c[0].id;
    const double inv_t = 1.0 / p->temperature;
    const float maxl = c[0].logit;
    double sum = 0;
    /* probabilities in double, kept in a small stack buffer when possible */
    double stackp[256];
    double *pr = k <= 256 ? stackp : malloc(sizeof(double) * (size_t)k);
    if (!pr)
        return c[0].id;
    for (int i = 0; i < k; i++)
        sum += pr[i] = exp((c[i].logit - maxl) * inv_t);
    int keep = k;
    if (p->top_p > 0.0f && p->top_p < 1.0f) {
        double cum = 0;
        for (int i = 0; i < k; i++) {
            cum += pr[i] / sum;
            if (cum >= p->top_p) {
                keep = i + 1;
                break;
            }
        }
        sum = 0;
        for (int i = 0; i < keep; i++)
            sum += pr[i];
    }
    if (p->min_p > 0.0f) { /* pr[0] is the top token's (unnormalized) probability, exp(0) = 1 */
        int m = 1;
        while (m < keep && pr[m] >= (double)p->min_p * pr[0])
            m++;
        if (m < keep) {
            keep = m;
            sum = 0;
            for (int i = 0; i < keep; i++)
                sum += pr[i];
        }
    }
    double x = u * sum, acc = 0;
    int32_t pick = c[keep - 1].id;
    for (int i = 0; i < keep; i++) {
        acc += pr[i];
        if (x < acc) {
            pick = c[i].id;
            break;
        }
    }
    if (pr != stackp)
        free(pr);
    return pick;
}

int32_t spk_sample_u(const float *logits, int n, const spk_sampling *p, double u, spk_sampler_scratch *s)
{
    int k = spk_sample_k(p, n);
    if (k == 1)
        return spk_argmax(logits, n);
    spk_cand stackc[256];
    spk_cand *c = k <= 256 ? stackc : malloc(sizeof(spk_cand) * (size_t)k);
    if (!c)
        return spk_argmax(logits, n);
    spk_top_cands(logits, n, k, 0, c, s);
    int32_t t = spk_sample_cands(c, k, p, u);
    if (c != stackc)
        free(c);
    return t;
}

int32_t spk_sample(const float *logits, int n, const spk_sampling *p, spk_rng *rng, spk_sampler_scratch *s)
{
    return spk_sample_u(logits, n, p, spk_rng_uniform(rng), s);
}

void spk_apply_penalties(float *logits, int n, int32_t base, const spk_pen *pen, int n_pen)
{
    for (int i = 0; i < n_pen; i++) {
        int32_t j = pen[i].token - base;
        if (j < 0 || j >= n)
            continue;
        float x = logits[j];
        if (pen[i].rep != 1.0f)
            x = x > 0.0f ? x / pen[i].rep : x * pen[i].rep;
        logits[j] = x - pen[i].sub;
    }
}

#define MARK_WIN 0x40000000 /* in the repeat window; the low bits count generated occurrences */

int spk_penalties_build(const int32_t *tokens, int n_tokens, int n_prompt, int last_n, float rep, float freq,
                        float presence, int32_t *mark, spk_pen *out)
{
    int w0 = last_n > 0 && last_n < n_tokens ? n_tokens - last_n : last_n > 0 ? 0 : n_tokens;
    bool fp = freq != 0.0f || presence != 0.0f;
    int g0 = fp ? n_prompt : n_tokens;
    for (int i = w0; i < n_tokens; i++)
        mark[tokens[i]] |= MARK_WIN;
    for (int i = g0; i < n_tokens; i++)
        mark[tokens[i]]++;
    int n = 0;
    int lo = w0 < g0 ? w0 : g0;
    for (int i = lo; i < n_tokens; i++) {
        int32_t t = tokens[i], m = mark[t];
        if (m == 0)
            continue; /* outside both ranges, or listed already */
        int count = m & ~MARK_WIN;
        out[n++] = (spk_pen){t, (m & MARK_WIN) ? rep : 1.0f, (float)count * freq + (count > 0 ? presence : 0.0f)};
        mark[t] = 0;
    }
    return n;
}
