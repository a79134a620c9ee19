/*
 * Persistent compute thread pool with low-latency dispatch and barriers (spinning briefly,
 * then sleeping), so a whole forward pass can run as one dispatch with barriers between ops.
 */
#ifndef SPK_CPU_POOL_H
#define SPK_CPU_POOL_H

#include "sparkinfer/sparkinfer.h"

typedef struct spk_pool spk_pool;

/* fn runs on every thread; ith in [0, nth); the calling thread is ith 0. */
typedef void (*spk_pool_fn)(void *arg, int ith, int nth);

/* n_threads >= 1 (1: no extra threads). */
spk_status spk_pool_create(int n_threads, spk_pool **out);
void spk_pool_destroy(spk_pool *pool);
int spk_pool_size(const spk_pool *pool);

/* Run fn on all threads and return when every thread has returned. Not reentrant. */
void spk_pool_run(spk_pool *pool, spk_pool_fn fn, void *arg);

/* Inside fn: wait until all nth threads reach the barrier (memory is synchronized). */
void spk_pool_barrier(spk_pool *pool);

/* Split n items into nth contiguous chunks (multiples of `align` except the last);
 * thread ith gets [*lo, *hi). */
void spk_split(int n, int align, int ith, int nth, int *lo, int *hi);

#endif
