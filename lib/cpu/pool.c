/*
 * Persistent compute thread pool: one dispatch runs fn on every thread, barriers inside fn.
 * Waits spin (with a pause instruction) for a bounded time, then sleep on a futex (Linux) or a
 * condition variable (elsewhere), so idle threads cost no CPU between requests.
 */
#include "cpu/pool.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/error.h"

#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#define SPK_POOL_FUTEX 1
#else
#define SPK_POOL_FUTEX 0
#endif

/* How long a waiting thread spins before it goes to sleep. A forward pass has hundreds of
 * barriers a few microseconds apart; the gap between two dispatches (sampling, scheduling)
 * is usually well under a millisecond while decoding, and seconds when the engine is idle.
 * Waking a sleeping thread costs tens of microseconds on bare metal and several hundred in
 * some VMs, so waits spin for up to a millisecond (yielding after the first few microseconds). */
#define SPK_POOL_BARRIER_SPIN_NS 1000000L  /* 1 ms */
#define SPK_POOL_DISPATCH_SPIN_NS 1000000L /* 1 ms */
#define SPK_POOL_YIELD_AFTER_NS 20000L     /* pure spinning for the first 20 us */
#define SPK_POOL_MAX_THREADS 1024

#define SPK_CACHELINE 64

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#endif
}

static long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)ts.tv_sec * 1000000000L + ts.tv_nsec;
}

/*
 * A 32-bit word threads wait on until it differs from a value they saw, plus a count of
 * sleepers so a waker skips the system call when nobody sleeps. The sleeper count and the word
 * use seq_cst operations on both sides: either the waker sees a sleeper, or the sleeper sees the
 * new value before it sleeps (futex_wait also rechecks the value in the kernel).
 */
typedef struct waitword {
    alignas(SPK_CACHELINE) atomic_uint word;
    atomic_uint sleepers;
#if !SPK_POOL_FUTEX
    pthread_mutex_t mu;
    pthread_cond_t cv;
#endif
} waitword;

static void ww_init(waitword *w, unsigned v)
{
    atomic_init(&w->word, v);
    atomic_init(&w->sleepers, 0);
#if !SPK_POOL_FUTEX
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
#endif
}

static void ww_fini(waitword *w)
{
#if !SPK_POOL_FUTEX
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
#else
    (void)w;
#endif
}

/* Sleep until w->word != old. Returns the new value (acquire). */
static unsigned ww_sleep(waitword *w, unsigned old)
{
    unsigned v;
    atomic_fetch_add_explicit(&w->sleepers, 1, memory_order_seq_cst);
#if SPK_POOL_FUTEX
    while ((v = atomic_load_explicit(&w->word, memory_order_seq_cst)) == old)
        syscall(SYS_futex, (unsigned *)&w->word, FUTEX_WAIT_PRIVATE, old, NULL, NULL, 0);
#else
    pthread_mutex_lock(&w->mu);
    while ((v = atomic_load_explicit(&w->word, memory_order_seq_cst)) == old)
        pthread_cond_wait(&w->cv, &w->mu);
    pthread_mutex_unlock(&w->mu);
#endif
    atomic_fetch_sub_explicit(&w->sleepers, 1, memory_order_relaxed);
    return v;
}

/* Wake every sleeper; call after changing w->word with a seq_cst operation. */
static void ww_wake(waitword *w)
{
    if (atomic_load_explicit(&w->sleepers, memory_order_seq_cst) == 0)
        return;
#if SPK_POOL_FUTEX
    syscall(SYS_futex, (unsigned *)&w->word, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
#else
    pthread_mutex_lock(&w->mu);
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
#endif
}

/* Wait until w->word != old: spin for about spin_ns, then sleep. Returns the new value with
 * acquire ordering. After a short pure spin the loop also yields the CPU between polls, so a
 * pool with more threads than free cores lets the thread everyone waits for run. */
static unsigned ww_wait(waitword *w, unsigned old, long spin_ns, long yield_after_ns)
{
    unsigned v;
    for (int i = 0; i < 128; i++) {
        if ((v = atomic_load_explicit(&w->word, memory_order_acquire)) != old)
            return v;
        cpu_relax();
    }
    long start = now_ns(), t = start;
    while (t - start < spin_ns) {
        for (int i = 0; i < 64; i++) {
            if ((v = atomic_load_explicit(&w->word, memory_order_acquire)) != old)
                return v;
            cpu_relax();
        }
        t = now_ns();
        if (t - start >= yield_after_ns)
            sched_yield();
    }
    return ww_sleep(w, old);
}

struct spk_pool {
    /* Dispatch: the caller publishes fn/arg, sets `active`, then bumps `gen`. */
    waitword gen;
    /* Workers still running the current fn; the caller waits for 0. */
    waitword active;
    /* Barrier: arrivals counted in `arrived`; the last one resets it and bumps `phase`. */
    alignas(SPK_CACHELINE) atomic_uint arrived;
    waitword phase;

    alignas(SPK_CACHELINE) spk_pool_fn fn;
    void *arg;
    int stop;
    int n_threads;
    int n_started;
    long yield_after_ns; /* 0 when there are more threads than CPUs we may run on */
    pthread_t *threads;
};

typedef struct worker_arg {
    spk_pool *pool;
    int ith;
} worker_arg;

static void *worker_main(void *p)
{
    worker_arg *wa = p;
    spk_pool *pool = wa->pool;
    int ith = wa->ith;
    free(wa);
    unsigned seen = 0; /* the generation at creation: no dispatch can be missed */
    for (;;) {
        seen = ww_wait(&pool->gen, seen, SPK_POOL_DISPATCH_SPIN_NS, pool->yield_after_ns);
        /* The acquire above makes fn, arg and stop (written before the release) visible. */
        if (pool->stop)
            break;
        pool->fn(pool->arg, ith, pool->n_threads);
        if (atomic_fetch_sub_explicit(&pool->active.word, 1, memory_order_seq_cst) == 1)
            ww_wake(&pool->active);
    }
    return NULL;
}

/* CPUs this process may run on (at least 1). */
static int usable_cpus(void)
{
#if defined(__linux__)
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0)
        return CPU_COUNT(&set);
#endif
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

static void *pool_alloc(void)
{
    size_t sz = (sizeof(spk_pool) + SPK_CACHELINE - 1) / SPK_CACHELINE * SPK_CACHELINE;
    void *p = aligned_alloc(SPK_CACHELINE, sz);
    if (p)
        memset(p, 0, sz);
    return p;
}

spk_status spk_pool_create(int n_threads, spk_pool **out)
{
    if (!out)
        return spk_err(SPK_ERR_INVALID_ARG, "spk_pool_create: out is NULL");
    *out = NULL;
    if (n_threads < 1 || n_threads > SPK_POOL_MAX_THREADS)
        return spk_err(SPK_ERR_INVALID_ARG, "spk_pool_create: n_threads %d not in [1, %d]",
                       n_threads, SPK_POOL_MAX_THREADS);
    spk_pool *pool = pool_alloc();
    if (!pool)
        return spk_err(SPK_ERR_NOMEM, "spk_pool_create: allocating the pool");
    ww_init(&pool->gen, 0);
    ww_init(&pool->active, 0);
    ww_init(&pool->phase, 0);
    atomic_init(&pool->arrived, 0);
    pool->n_threads = n_threads;
    pool->yield_after_ns = n_threads > usable_cpus() ? 0 : SPK_POOL_YIELD_AFTER_NS;
    if (n_threads > 1) {
        pool->threads = calloc((size_t)n_threads - 1, sizeof *pool->threads);
        if (!pool->threads) {
            spk_pool_destroy(pool);
            return spk_err(SPK_ERR_NOMEM, "spk_pool_create: allocating %d thread handles",
                           n_threads - 1);
        }
    }
    for (int i = 1; i < n_threads; i++) {
        worker_arg *wa = malloc(sizeof *wa);
        int rc = wa ? 0 : ENOMEM;
        if (wa) {
            wa->pool = pool;
            wa->ith = i;
            rc = pthread_create(&pool->threads[i - 1], NULL, worker_main, wa);
            if (rc != 0)
                free(wa);
        }
        if (rc != 0) {
            spk_pool_destroy(pool);
            return spk_err(rc == ENOMEM ? SPK_ERR_NOMEM : SPK_ERR_INTERNAL,
                           "spk_pool_create: starting worker thread %d of %d: %s", i, n_threads,
                           strerror(rc));
        }
        pool->n_started++;
    }
    *out = pool;
    return SPK_OK;
}

void spk_pool_destroy(spk_pool *pool)
{
    if (!pool)
        return;
    if (pool->n_started > 0) {
        pool->stop = 1;
        atomic_fetch_add_explicit(&pool->gen.word, 1, memory_order_seq_cst);
        ww_wake(&pool->gen);
        for (int i = 0; i < pool->n_started; i++)
            pthread_join(pool->threads[i], NULL);
    }
    ww_fini(&pool->gen);
    ww_fini(&pool->active);
    ww_fini(&pool->phase);
    free(pool->threads);
    free(pool);
}

int spk_pool_size(const spk_pool *pool)
{
    return pool ? pool->n_threads : 0;
}

void spk_pool_run(spk_pool *pool, spk_pool_fn fn, void *arg)
{
    int nth = pool->n_threads;
    if (nth == 1) {
        fn(arg, 0, 1);
        return;
    }
    pool->fn = fn;
    pool->arg = arg;
    atomic_store_explicit(&pool->active.word, (unsigned)(nth - 1), memory_order_relaxed);
    /* Release: publishes fn, arg and active to the workers that acquire the new generation. */
    atomic_fetch_add_explicit(&pool->gen.word, 1, memory_order_seq_cst);
    ww_wake(&pool->gen);

    fn(arg, 0, nth);

    unsigned left = atomic_load_explicit(&pool->active.word, memory_order_acquire);
    while (left != 0)
        left = ww_wait(&pool->active, left, SPK_POOL_BARRIER_SPIN_NS, pool->yield_after_ns);
}

void spk_pool_barrier(spk_pool *pool)
{
    unsigned nth = (unsigned)pool->n_threads;
    if (nth == 1)
        return;
    /* The phase cannot advance before this thread arrives, so this is the current phase. */
    unsigned ph = atomic_load_explicit(&pool->phase.word, memory_order_relaxed);
    if (atomic_fetch_add_explicit(&pool->arrived, 1, memory_order_acq_rel) == nth - 1) {
        /* Last to arrive: every other thread's writes are visible to us (acq_rel chain on
         * `arrived`); reset for the next barrier and release the phase to everyone. */
        atomic_store_explicit(&pool->arrived, 0, memory_order_relaxed);
        atomic_store_explicit(&pool->phase.word, ph + 1, memory_order_seq_cst);
        ww_wake(&pool->phase);
    } else {
        ww_wait(&pool->phase, ph, SPK_POOL_BARRIER_SPIN_NS, pool->yield_after_ns);
    }
}

void spk_split(int n, int align, int ith, int nth, int *lo, int *hi)
{
    if (align < 1)
        align = 1;
    if (nth < 1)
        nth = 1;
    if (n < 0)
        n = 0;
    long long units = ((long long)n + align - 1) / align;
    long long ulo = units * ith / nth;
    long long uhi = units * (ith + 1) / nth;
    long long l = ulo * align, h = uhi * align;
    *lo = (int)(l < n ? l : n);
    *hi = (int)(h < n ? h : n);
}
