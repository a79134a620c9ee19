/* Sampling: greedy picks the argmax, seeded draws repeat, top-k/top-p restrict the support,
 * and the empirical distribution follows the temperature-scaled softmax. */
#include <math.h>
#include <stdlib.h>

#include "engine/sampler.h"
#include "testutil.h"

enum { NV = 1000 };

static float logits[NV];

static void fill(void) { spk_test_fill(logits, NV, 7, -4.0f, 4.0f); }

START_TEST(greedy_is_argmax)
{
    fill();
    logits[123] = 10.0f;
    spk_sampler_scratch s;
    ck_assert_int_eq(spk_sampler_scratch_init(&s, NV), 0);
    spk_rng r;
    spk_rng_seed(&r, 1);
    spk_sampling p = {0.0f, 40, 0.9f, 0.0f};
    ck_assert_int_eq(spk_sample(logits, NV, &p, &r, &s), 123);
    p = (spk_sampling){1.0f, 1, 1.0f, 0.0f}; /* top-k 1 is greedy too */
    ck_assert_int_eq(spk_sample(logits, NV, &p, &r, &s), 123);
    ck_assert_int_eq(spk_argmax(logits, NV), 123);
    spk_sampler_scratch_free(&s);
}
END_TEST

START_TEST(same_seed_same_tokens)
{
    fill();
    spk_sampler_scratch s;
    spk_sampler_scratch_init(&s, NV);
    spk_sampling p = {0.9f, 50, 0.95f, 0.0f};
    int32_t a[64], b[64];
    spk_rng r;
    spk_rng_seed(&r, 99);
    for (int i = 0; i < 64; i++)
        a[i] = spk_sample(logits, NV, &p, &r, &s);
    spk_rng_seed(&r, 99);
    for (int i = 0; i < 64; i++)
        b[i] = spk_sample(logits, NV, &p, &r, &s);
    int differs = 0;
    for (int i = 0; i < 64; i++) {
        ck_assert_int_eq(a[i], b[i]);
        differs += a[i] != a[0];
    }
    ck_assert_int_gt(differs, 0); /* it is actually sampling */
    spk_rng_seed(&r, 100);
    int other = 0;
    for (int i = 0; i < 64; i++)
        other += spk_sample(logits, NV, &p, &r, &s) != a[i];
    ck_assert_int_gt(other, 0);
    spk_sampler_scratch_free(&s);
}
END_TEST

START_TEST(top_k_restricts_support)
{
    fill();
    spk_sampler_scratch s;
    spk_sampler_scratch_init(&s, NV);
    /* the 5 largest logits */
    int order[NV];
    for (int i = 0; i < NV; i++)
        order[i] = i;
    for (int i = 0; i < 5; i++)
        for (int j = i + 1; j < NV; j++)
            if (logits[order[j]] > logits[order[i]]) {
                int t = order[i];
                order[i] = order[j];
                order[j] = t;
            }
    spk_sampling p = {5.0f, 5, 1.0f, 0.0f}; /* hot temperature: without top-k anything could come */
    spk_rng r;
    spk_rng_seed(&r, 3);
    int seen[5] = {0};
    for (int i = 0; i < 2000; i++) {
        int32_t t = spk_sample(logits, NV, &p, &r, &s);
        int k = -1;
        for (int j = 0; j < 5; j++)
            if (order[j] == t)
                k = j;
        ck_assert_int_ge(k, 0);
        seen[k]++;
    }
    for (int j = 0; j < 5; j++)
        ck_assert_int_gt(seen[j], 0);
    spk_sampler_scratch_free(&s);
}
END_TEST

START_TEST(top_p_keeps_the_nucleus)
{
    /* probabilities 0.5, 0.3, 0.15, 0.05 at temperature 1: top-p 0.7 keeps the first two */
    float lg[4] = {logf(0.5f), logf(0.3f), logf(0.15f), logf(0.05f)};
    spk_sampler_scratch s;
    spk_sampler_scratch_init(&s, 4);
    spk_sampling p = {1.0f, 0, 0.7f, 0.0f};
    spk_rng r;
    spk_rng_seed(&r, 5);
    int cnt[4] = {0};
    for (int i = 0; i < 20000; i++)
        cnt[spk_sample(lg, 4, &p, &r, &s)]++;
    ck_assert_int_eq(cnt[2] + cnt[3], 0);
    double f0 = cnt[0] / 20000.0; /* renormalized: 0.5 / 0.8 = 0.625 */
    ck_assert_double_lt(fabs(f0 - 0.625), 0.02);
    spk_sampler_scratch_free(&s);
}
END_TEST

START_TEST(temperature_follows_softmax)
{
    float lg[3] = {1.0f, 0.5f, -0.5f};
    spk_sampler_scratch s;
    spk_sampler_scratch_init(&s, 3);
    spk_sampling p = {0.7f, 0, 1.0f, 0.0f};
    spk_rng r;
    spk_rng_seed(&r, 11);
    int cnt[3] = {0};
    const int N = 60000;
    for (int i = 0; i < N; i++)
        cnt[spk_sample(lg, 3, &p, &r, &s)]++;
    double z = 0, e[3];
    for (int i = 0; i < 3; i++)
        z += e[i] = exp(lg[i] / 0.7);
    for (int i = 0; i < 3; i++)
        ck_assert_double_lt(fabs(cnt[i] / (double)N - e[i] / z), 0.01);
    spk_sampler_scratch_free(&s);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("sampler");
    TCase *tc = tcase_create("sample");
    tcase_add_test(tc, greedy_is_argmax);
    tcase_add_test(tc, same_seed_same_tokens);
    tcase_add_test(tc, top_k_restricts_support);
    tcase_add_test(tc, top_p_keeps_the_nucleus);
    tcase_add_test(tc, temperature_follows_softmax);
    suite_add_tcase(s, tc);
    return spk_test_run(s);
}
