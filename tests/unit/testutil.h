/* Helpers shared by the unit tests: model lookup, seeded random data, running a Check suite. */
#ifndef SPK_TESTUTIL_H
#define SPK_TESTUTIL_H

#include <check.h>
#include <stddef.h>
#include <stdint.h>

/* Check's ck_assert_msg (and so every ck_assert*) reports a passing assertion to the parent
 * process: a strdup, a malloc and a write() to its pipe each time. The kernel and model tests
 * assert per element in loops, millions of times, and that cost most of their run time under
 * the sanitizers and qemu. Here a passing assertion costs a comparison; a failing one is reported
 * as before. What is lost: after a crash, Check names the test's last mark_point() (call it where
 * that helps) instead of its last passing assertion; ASan and UBSan print the crash's stack. */
#undef ck_assert_msg
#define ck_assert_msg(expr, ...)                                                                        \
    ((expr) ? (void)0 : _ck_assert_failed(__FILE__, __LINE__, "Assertion '" #expr "' failed", ##__VA_ARGS__))

/* Exit code a test program uses when it cannot run here (ctest counts it as skipped). */
#define SPK_TEST_SKIP 77

/* Path of the default model (SPK_TEST_MODEL, else the cache path) or NULL if not present. */
/* buf = $SPK_CACHE/rel (default ~/.cache/sparkinfer/rel); whether it is readable. */
int spk_test_cache_path(char *buf, size_t cap, const char *rel);
const char *spk_test_model_path(void);

/* Print "SKIP: <reason>" and exit SPK_TEST_SKIP. */
void spk_test_skip(const char *reason) __attribute__((noreturn));

/* Deterministic xorshift random numbers. */
uint64_t spk_test_rand(uint64_t *state);
/* Uniform in [lo, hi), never exactly 0. */
float spk_test_randf(uint64_t *state, float lo, float hi);
void spk_test_fill(float *x, size_t n, uint64_t seed, float lo, float hi);

/* Run a suite (no fork when under a sanitizer is not needed: Check forks by default) and
 * return the process exit code: 0 if all passed. */
int spk_test_run(Suite *s);

/* The default model on a one-rank cluster of 2 threads (*cl), with max_seqs sequences of n_ctx
 * positions and a queue of queue_capacity requests; fails the test if it does not load. */
struct spk_cluster;
struct spk_model;
struct spk_model *spk_test_open_model(struct spk_cluster **cl, int max_seqs, int n_ctx, int queue_capacity);

/* Logits in place into log-probabilities (log-sum-exp in double); index of the largest (first). */
void spk_test_log_softmax(float *x, int n);
int spk_test_argmax(const float *x, int n);

/* Read a whole file into a malloc'd NUL-terminated buffer; NULL on failure. */
char *spk_test_read_file(const char *path, size_t *len);

/* Where llama.cpp's models/ (ggml-vocab-*.gguf, fetched by `make refsrc`) are: $SPK_LLAMACPP_MODELS,
 * else under $SPK_CACHE (default ~/.cache/sparkinfer); NULL when absent. */
const char *spk_test_llamacpp_models_dir(void);

#endif
