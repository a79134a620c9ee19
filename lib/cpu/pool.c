/*
 * Persistent compute thread pool: one dispatch runs fn on every thread, barriers inside fn.
 * Waits spin (with a pause instruction) for an adaptive, calibrated time, yield, then sleep on a
 * futex (Linux) or a condition variable (elsewhere), so idle threads cost no CPU between requests
 * and a busy machine (more runnable threads than cores) degrades gracefully.
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

/* How a waiting thread waits: it spins (pause), then yields the CPU between polls, then sleeps
 * on a futex. A forward pass has hundreds of barriers a few microseconds apart; the gap between
 * two dispatches (sampling, scheduling) is usually well under a millisecond while decoding, and
 * seconds when the engine is idle. Waking a sleeping thread costs tens of microseconds on bare
 * metal and several hundred in some VMs, and on a machine with more runnable threads than cores
 * a sleeper, once woken, may queue behind CPU hogs for milliseconds, while a yielding thread lets
 * others run yet stays runnable (measured at load 9 on 2 cores: sleeping right after a short
 * spin made two threads 3x slower than yielding first). So waits spin, yield until
 * SPK_POOL_YIELD_US, then sleep.
 * The pure spin (no yield) adapts per pool and per kind of wait, since on a busy machine the
 * thread a waiter waits for is often descheduled for a whole time slice and spinning only burns
 * the CPU that thread (or another process) needs: a wait that outlasted SPK_POOL_LONG_WAIT_US
 * halves the spin budget (down to SPK_POOL_SPIN_MIN_US), a short one grows it by an eighth (up
 * to SPK_POOL_SPIN_MAX_US); with more than ~15% long waits a pool spins only briefly. The budget
 * is counted in pause iterations calibrated once per process, so the spin reads no clock. */
#define SPK_POOL_SPIN_MAX_US 50
#define SPK_POOL_SPIN_MIN_US 2
#define SPK_POOL_LONG_WAIT_US 200
#define SPK_POOL_YIELD_US 1000
/* Adaptive width (judge_window): full-width dispatches judged together, and the bounds of the
 * narrow period between two probes. */
#define SPK_POOL_WINDOW 2
#define SPK_POOL_NARROW_MIN 16
#define SPK_POOL_NARROW_MAX 1024
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

/* Pause iterations per microsecond, measured once (the pause instruction takes ~10 cycles on
 * some x86 parts and ~140 on others; aarch64's yield is ~1). The fastest of a few tries, so a
 * preempted try does not shorten the spins; at least 1. */
static int g_relax_per_us;
static pthread_once_t g_calib_once = PTHREAD_ONCE_INIT;

static void calibrate_relax(void)
{
    const int n = 4096;
    long best = -1;
    for (int t = 0; t < 5; t++) {
        long t0 = now_ns();
        for (int i = 0; i < n; i++)
            cpu_relax();
        long dt = now_ns() - t0;
        if (dt > 0 && (best < 0 || dt < best))
            best = dt;
    }
    long per_us = best > 0 ? (long)n * 1000L / best : 1000L;
    g_relax_per_us = (int)(per_us < 1 ? 1 : per_us > 100000 ? 100000 : per_us);
}

/* The adaptive spin budget of one kind of wait (microseconds), shared by the pool's threads.
 * Relaxed atomics: it is a hint, a lost update costs nothing. */
typedef struct spinbudget {
    alignas(SPK_CACHELINE) atomic_int us;
    int max_us;
} spinbudget;

static void sb_init(spinbudget *b, int max_us)
{
    b->max_us = max_us;
    atomic_init(&b->us, max_us);
}

/* Record one wait of `waited_ns` (long when the spin budget ran out). */
static void sb_record(spinbudget *b, int cur, long waited_ns)
{
    int next;
    if (waited_ns > SPK_POOL_LONG_WAIT_US * 1000L)
        next = cur / 2 > SPK_POOL_SPIN_MIN_US ? cur / 2 : SPK_POOL_SPIN_MIN_US;
    else
        next = cur + cur / 8 + 1 < b->max_us ? cur + cur / 8 + 1 : b->max_us;
    if (next != cur)
        atomic_store_explicit(&b->us, next, memory_order_relaxed);
}

/* Wait until w->word != old: spin (pause) for the budget's microseconds, then yield the CPU
 * between polls for up to SPK_POOL_YIELD_US, then sleep on the futex. Returns the new value with acquire ordering. Adapts the
 * budget: a wait that ends within the spin is short; one that does not is timed and judged, and
 * its length (spin included) is added to *stall_ns when stall_ns is not NULL. */
static unsigned ww_wait(waitword *w, unsigned old, spinbudget *b, atomic_long *stall_ns)
{
    unsigned v = old;
    int us = atomic_load_explicit(&b->us, memory_order_relaxed);
    long iters = (long)us * g_relax_per_us;
    for (long i = 0; i < iters; i++) {
        if ((v = atomic_load_explicit(&w->word, memory_order_acquire)) != old) {
            if (us < b->max_us)
                sb_record(b, us, 0);
            return v;
        }
        cpu_relax();
    }
    long t0 = now_ns(), t = t0;
    while (t - t0 < SPK_POOL_YIELD_US * 1000L) {
        sched_yield();
        if ((v = atomic_load_explicit(&w->word, memory_order_acquire)) != old)
            break;
        t = now_ns();
    }
    if (v == old)
        v = ww_sleep(w, old);
    long waited = (long)us * 1000L + (now_ns() - t0);
    sb_record(b, us, waited);
    if (stall_ns)
        atomic_fetch_add_explicit(stall_ns, waited, memory_order_relaxed);
    return v;
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
    spinbudget spin_dispatch; /* workers waiting for the next dispatch */
    spinbudget spin_barrier;  /* barriers and the caller waiting for the workers */
    pthread_t *threads;

    /* Adaptive width (see spk_pool_run). `width` threads run the current dispatch (written by
     * the caller before it publishes the dispatch; 1: the caller alone, workers stay asleep). */
    int width;
    int adaptive;             /* 0: always all threads (SPK_POOL_ADAPTIVE=0) */
    alignas(SPK_CACHELINE) atomic_long stall_ns; /* this dispatch: time in waits past the spin */
    long win_ns, win_stall_ns; /* the current window of full-width dispatches */
    int win_runs;
    int narrow_left;          /* dispatches still to run narrow before the next probe */
    int narrow_len;           /* how long the next narrow period is (doubles while probes fail) */
    int narrow_width;
    unsigned long n_wide, n_narrow;
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
        seen = ww_wait(&pool->gen, seen, &pool->spin_dispatch, NULL);
        /* The acquire above makes fn, arg, width and stop (written before the release) visible. */
        if (pool->stop)
            break;
        int width = pool->width;
        if (ith >= width)
            continue; /* a narrowed dispatch: not counted in `active` */
        pool->fn(pool->arg, ith, width);
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
    pthread_once(&g_calib_once, calibrate_relax);
    /* More threads than CPUs we may run on: some thread is always descheduled, spin briefly. */
    int spin_max = n_threads > usable_cpus() ? SPK_POOL_SPIN_MIN_US : SPK_POOL_SPIN_MAX_US;
    sb_init(&pool->spin_dispatch, spin_max);
    sb_init(&pool->spin_barrier, spin_max);
    atomic_init(&pool->stall_ns, 0);
    pool->width = n_threads;
    const char *ad = getenv("SPK_POOL_ADAPTIVE");
    pool->adaptive = !(ad && !strcmp(ad, "0"));
    pool->narrow_len = SPK_POOL_NARROW_MIN;
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

void spk_pool_set_adaptive(spk_pool *pool, int on)
{
    pool->adaptive = on != 0;
    pool->narrow_left = 0;
    pool->narrow_len = SPK_POOL_NARROW_MIN;
    pool->win_ns = pool->win_stall_ns = 0;
    pool->win_runs = 0;
}

void spk_pool_counts(const spk_pool *pool, unsigned long *wide, unsigned long *narrow)
{
    if (wide)
        *wide = pool ? pool->n_wide : 0;
    if (narrow)
        *narrow = pool ? pool->n_narrow : 0;
}

int spk_pool_size(const spk_pool *pool)
{
    return pool ? pool->n_threads : 0;
}

/* Width of the next dispatch: all threads, unless recent full-width dispatches were starved. */
static int next_width(spk_pool *pool)
{
    if (!pool->adaptive || pool->narrow_left == 0)
        return pool->n_threads;
    pool->narrow_left--;
    return pool->narrow_width;
}

/*
 * After a full-width dispatch of `ns` wall time whose threads waited `stall` ns in total past
 * their spin (descheduled peers): over a window of SPK_POOL_WINDOW such dispatches, the threads
 * did about n*T - S of work in T, i.e. they ran (n*T - S) / T at a time on average. When that
 * is at most one thread's worth (the extra threads gained nothing, the waits for descheduled
 * peers ate it), the next narrow_len dispatches run on the caller alone, so waits for
 * descheduled threads stop; then a full-width window probes again. (Only width 1: a narrower
 * dispatch that still woke the workers would let a late worker read the next dispatch's
 * parameters under the old generation.)
 * A probe that fails doubles narrow_len (up to SPK_POOL_NARROW_MAX), one that passes resets it.
 * On an idle machine waits end while spinning, S stays 0 and nothing changes.
 */
static void judge_window(spk_pool *pool, long ns, long stall)
{
    pool->win_ns += ns;
    pool->win_stall_ns += stall;
    if (++pool->win_runs < SPK_POOL_WINDOW)
        return;
    int n = pool->n_threads;
    double busy = ((double)n * (double)pool->win_ns - (double)pool->win_stall_ns) /
                  (double)(pool->win_ns > 0 ? pool->win_ns : 1);
    if (busy <= 1.05) {
        pool->narrow_width = 1;
        pool->narrow_left = pool->narrow_len;
        pool->narrow_len = pool->narrow_len * 2 < SPK_POOL_NARROW_MAX ? pool->narrow_len * 2
                                                                      : SPK_POOL_NARROW_MAX;
    } else {
        pool->narrow_len = SPK_POOL_NARROW_MIN;
    }
    pool->win_ns = pool->win_stall_ns = 0;
    pool->win_runs = 0;
}

void spk_pool_run(spk_pool *pool, spk_pool_fn fn, void *arg)
{
    int nth = pool->n_threads;
    if (nth == 1) {
        fn(arg, 0, 1);
        return;
    }
    int width = next_width(pool);
    pool->width = width;
    if (width == 1) {
        pool->n_narrow++;
        fn(arg, 0, 1);
        return;
    }
    long t0 = pool->adaptive ? now_ns() : 0;
    pool->fn = fn;
    pool->arg = arg;
    atomic_store_explicit(&pool->active.word, (unsigned)(width - 1), memory_order_relaxed);
    /* Release: publishes fn, arg, width and active to the workers that acquire the new
     * generation. */
    atomic_fetch_add_explicit(&pool->gen.word, 1, memory_order_seq_cst);
    ww_wake(&pool->gen);

    fn(arg, 0, width);

    unsigned left = atomic_load_explicit(&pool->active.word, memory_order_acquire);
    while (left != 0)
        left = ww_wait(&pool->active, left, &pool->spin_barrier, &pool->stall_ns);
    /* Every worker added its stalls before it left (acquire above). */
    long stall = atomic_exchange_explicit(&pool->stall_ns, 0, memory_order_relaxed);
    if (width < nth) {
        pool->n_narrow++;
    } else {
        pool->n_wide++;
        if (pool->adaptive)
            judge_window(pool, now_ns() - t0, stall);
    }
}

void spk_pool_barrier(spk_pool *pool)
{
    /* The width of the current dispatch: the caller wrote it before publishing (or runs alone). */
    unsigned nth = (unsigned)pool->width;
    if (nth <= 1)
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
        ww_wait(&pool->phase, ph, &pool->spin_barrier, &pool->stall_ns);
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
