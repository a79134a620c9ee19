/*
 * Persistent compute thread pool with low-latency dispatch and barriers (spinning for an adaptive,
 * calibrated time, then yielding and sleeping), so a whole forward pass can run as one dispatch
 * with barriers between ops and a busy machine does not burn its CPU on waits.
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

/* Run fn on nth threads (ith 0 .. nth-1, the caller is 0) and return when every one of them has
 * returned. nth is the pool size, unless the pool is adaptive (the default) and its recent
 * dispatches were starved (threads waiting on descheduled peers, a machine busier than its
 * cores): then it runs on the caller alone (nth 1) for a while and probes full width
 * again. fn must split its work by the nth it is given. Not reentrant. */
void spk_pool_run(spk_pool *pool, spk_pool_fn fn, void *arg);

/* Adaptive width on (1, the default unless SPK_POOL_ADAPTIVE=0 in the environment at creation)
 * or off (0: every dispatch runs on all threads). Call between dispatches. */
void spk_pool_set_adaptive(spk_pool *pool, int on);

/* Dispatches so far that ran on all threads / on fewer (adaptive narrowing). */
void spk_pool_counts(const spk_pool *pool, unsigned long *wide, unsigned long *narrow);

/* Inside fn: wait until all nth threads of this dispatch reach the barrier (memory is
 * synchronized). */
void spk_pool_barrier(spk_pool *pool);

/* Split n items into nth contiguous chunks (multiples of `align` except the last);
 * thread ith gets [*lo, *hi). */
void spk_split(int n, int align, int ith, int nth, int *lo, int *hi);

#endif
