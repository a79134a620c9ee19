#include "testutil.h"

#include "sparkinfer/sparkinfer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int spk_test_cache_path(char *buf, size_t cap, const char *rel)
{
    const char *cache = getenv("SPK_CACHE");
    if (cache && *cache)
        snprintf(buf, cap, "%s/%s", cache, rel);
    else
        snprintf(buf, cap, "%s/.cache/sparkinfer/%s", getenv("HOME") ? getenv("HOME") : "/root", rel);
    return access(buf, R_OK) == 0;
}

const char *spk_test_model_path(void)
{
    static char buf[4096];
    const char *p = getenv("SPK_TEST_MODEL");
    if (p && *p && access(p, R_OK) == 0)
        return p;
    return spk_test_cache_path(buf, sizeof buf, "models/SmolLM2-135M-Instruct.Q4_1.gguf") ? buf : NULL;
}

void spk_test_skip(const char *reason)
{
    printf("SKIP: %s\n", reason);
    fflush(stdout);
    exit(SPK_TEST_SKIP);
}

uint64_t spk_test_rand(uint64_t *s)
{
    uint64_t x = *s ? *s : 0x9E3779B97F4A7C15ull;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *s = x;
    return x;
}

float spk_test_randf(uint64_t *s, float lo, float hi)
{
    for (;;) {
        float u = (float)((spk_test_rand(s) >> 40) * (1.0 / 16777216.0));
        float v = lo + (hi - lo) * u;
        if (v != 0.0f)
            return v;
    }
}

void spk_test_fill(float *x, size_t n, uint64_t seed, float lo, float hi)
{
    uint64_t s = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++)
        x[i] = spk_test_randf(&s, lo, hi);
}

int spk_test_run(Suite *s)
{
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}

char *spk_test_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) {
        buf[n] = '\0';
        if (len)
            *len = (size_t)n;
    }
    return buf;
}

spk_model *spk_test_open_model(spk_cluster **cl, int max_seqs, int n_ctx, int queue_capacity)
{
    spk_cluster_config cc;
    spk_cluster_config_init(&cc);
    cc.world_size = 1;
    cc.rank = 0;
    cc.n_threads = 2;
    ck_assert_int_eq(spk_cluster_open(&cc, cl), SPK_OK);
    spk_model_config mc;
    spk_model_config_init(&mc);
    mc.path = spk_test_model_path();
    mc.max_seqs = max_seqs;
    mc.n_ctx = n_ctx;
    mc.queue_capacity = queue_capacity;
    spk_model *m = NULL;
    ck_assert_msg(spk_model_load(*cl, &mc, &m) == SPK_OK, "%s", spk_last_error());
    return m;
}

void spk_test_log_softmax(float *x, int n)
{
    double mx = x[0], s = 0;
    for (int i = 1; i < n; i++)
        mx = x[i] > mx ? x[i] : mx;
    for (int i = 0; i < n; i++)
        s += exp(x[i] - mx);
    const double lse = mx + log(s);
    for (int i = 0; i < n; i++)
        x[i] = (float)(x[i] - lse);
}

int spk_test_argmax(const float *x, int n)
{
    int b = 0;
    for (int i = 1; i < n; i++)
        b = x[i] > x[b] ? i : b;
    return b;
}

const char *spk_test_llamacpp_models_dir(void)
{
    static char buf[1024];
    const char *e = getenv("SPK_LLAMACPP_MODELS");
    if (e && *e)
        return e;
    return spk_test_cache_path(buf, sizeof buf, "llamacpp/src/llama_cpp_python-0.3.36/vendor/llama.cpp/models") ? buf
                                                                                                            : NULL;
}
