/* Per-thread error detail, status strings and the log sink. */
#include "common/error.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define ERR_CAP 1024

static _Thread_local char tl_err[ERR_CAP];

spk_status spk_err(spk_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tl_err, sizeof tl_err, fmt, ap);
    va_end(ap);
    return st;
}

spk_status spk_err_prefix(spk_status st, const char *fmt, ...)
{
    char old[ERR_CAP];
    memcpy(old, tl_err, sizeof old);
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tl_err, sizeof tl_err, fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n + 2 < sizeof tl_err) {
        size_t room = sizeof tl_err - (size_t)n;
        tl_err[n] = ':';
        tl_err[n + 1] = ' ';
        size_t copy = strnlen(old, room - 3);
        memcpy(tl_err + n + 2, old, copy);
        tl_err[(size_t)n + 2 + copy] = '\0';
    }
    return st;
}

void spk_err_clear(void) { tl_err[0] = '\0'; }

const char *spk_err_msg(void) { return tl_err; }

const char *spk_last_error(void) { return tl_err; }

const char *spk_status_str(spk_status status)
{
    static const char *const names[SPK_STATUS_COUNT] = {
        [SPK_OK] = "ok",
        [SPK_ERR_INVALID_ARG] = "invalid argument",
        [SPK_ERR_NOMEM] = "out of memory",
        [SPK_ERR_IO] = "I/O error",
        [SPK_ERR_FORMAT] = "malformed data",
        [SPK_ERR_UNSUPPORTED] = "unsupported",
        [SPK_ERR_TIMEOUT] = "timed out",
        [SPK_ERR_PEER_LOST] = "peer lost",
        [SPK_ERR_AUTH] = "authentication failed",
        [SPK_ERR_VERSION] = "version mismatch",
        [SPK_ERR_BUSY] = "busy",
        [SPK_ERR_NOT_FOUND] = "not found",
        [SPK_ERR_STATE] = "invalid state",
        [SPK_ERR_CANCELLED] = "cancelled",
        [SPK_ERR_INTERNAL] = "internal error",
        [SPK_ERR_TRANSPORT] = "transport error",
        [SPK_ERR_TOO_LONG] = "too long",
    };
    if ((int)status < 0 || status >= SPK_STATUS_COUNT || !names[status])
        return "unknown status";
    return names[status];
}

static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static spk_log_fn log_fn;
static void *log_user;
static spk_log_level log_min = SPK_LOG_WARN;

void spk_set_log_callback(spk_log_fn fn, void *user, spk_log_level min_level)
{
    pthread_mutex_lock(&log_mu);
    log_fn = fn;
    log_user = user;
    log_min = min_level;
    pthread_mutex_unlock(&log_mu);
}

/*
 * Rate limit. Messages are grouped by level and text with every digit removed, so "refused
 * connection from 10.0.0.7:51234: ..." is one kind whatever the address. Each kind may emit
 * log_burst lines per log_window_ms, and all kinds together log_global lines per window; the rest
 * are counted, and once a kind's window has passed the next log call (any level) or
 * spk_log_flush() emits "N similar messages suppressed" for it. Under log_mu.
 */
#define LOG_KINDS 64
#define LOG_SAMPLE 160

typedef struct log_kind {
    uint64_t key;          /* 0: unused */
    spk_log_level level;
    int64_t window_start;  /* ms */
    int used;              /* lines emitted in this window */
    uint64_t suppressed;   /* lines dropped since the last summary */
    char sample[LOG_SAMPLE];
} log_kind;

static log_kind log_kinds[LOG_KINDS];
static int log_burst = 20, log_window_ms = 1000, log_global = 200;
static int64_t log_global_start;
static int log_global_used;

static int64_t log_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint64_t log_key(spk_log_level level, const char *msg)
{
    uint64_t h = 1469598103934665603ull ^ (uint64_t)level;
    for (const unsigned char *p = (const unsigned char *)msg; *p; p++) {
        if (*p >= '0' && *p <= '9')
            continue;
        h = (h ^ *p) * 1099511628211ull;
    }
    return h ? h : 1;
}

typedef struct log_line {
    spk_log_level level;
    char text[LOG_SAMPLE + 96];
} log_line;

/* Caller holds log_mu: move summaries of kinds whose window has passed (all if `all`) into out. */
static int log_collect(int64_t now, int all, log_line *out, int cap)
{
    int n = 0;
    for (int i = 0; i < LOG_KINDS && n < cap; i++) {
        log_kind *k = &log_kinds[i];
        if (!k->key || !k->suppressed || (!all && now - k->window_start < log_window_ms))
            continue;
        out[n].level = k->level;
        snprintf(out[n].text, sizeof out[n].text,
                 "%llu similar message(s) suppressed in the last %lld ms (rate limit %d per %d "
                 "ms), last: %s", (unsigned long long)k->suppressed,
                 (long long)(now - k->window_start), log_burst, log_window_ms, k->sample);
        n++;
        k->suppressed = 0;
        k->window_start = now;
        k->used = 0;
    }
    return n;
}

static void log_emit(spk_log_fn fn, void *user, spk_log_level level, const char *msg)
{
    static const char *const lv[] = {"debug", "info", "warn", "error"};
    if (fn)
        fn(level, msg, user);
    else
        fprintf(stderr, "sparkinfer[%s]: %s\n", lv[level], msg);
}

void spk_log_rate_set(int burst, int window_ms, int global)
{
    pthread_mutex_lock(&log_mu);
    log_burst = burst > 0 ? burst : 20;
    log_window_ms = window_ms > 0 ? window_ms : 1000;
    log_global = global > 0 ? global : 200;
    memset(log_kinds, 0, sizeof log_kinds);
    log_global_start = 0;
    log_global_used = 0;
    pthread_mutex_unlock(&log_mu);
}

void spk_log_flush(void)
{
    log_line sum[8];
    for (;;) {
        pthread_mutex_lock(&log_mu);
        spk_log_fn fn = log_fn;
        void *user = log_user;
        spk_log_level min = log_min;
        int n = log_collect(log_now_ms(), 1, sum, 8);
        pthread_mutex_unlock(&log_mu);
        for (int i = 0; i < n; i++)
            if (sum[i].level >= min && sum[i].level < SPK_LOG_NONE)
                log_emit(fn, user, sum[i].level, sum[i].text);
        if (n < 8)
            return;
    }
}

void spk_log(spk_log_level level, const char *fmt, ...)
{
    char msg[1024];
    log_line sum[4];
    int n_sum = 0, emit = 0;
    pthread_mutex_lock(&log_mu);
    spk_log_fn fn = log_fn;
    void *user = log_user;
    spk_log_level min = log_min;
    int64_t now = log_now_ms();
    n_sum = log_collect(now, 0, sum, 4);
    if (level >= min && level < SPK_LOG_NONE) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        uint64_t key = log_key(level, msg);
        /* Open addressing with a short probe; a full neighbourhood reuses its stalest entry. */
        log_kind *k = NULL, *stalest = NULL;
        for (int j = 0; j < 8 && !k; j++) {
            log_kind *e = &log_kinds[(key + (uint64_t)j) % LOG_KINDS];
            if (e->key == key)
                k = e;
            else if (!stalest || (stalest->key && !e->key) ||
                     (stalest->key && e->key && e->window_start < stalest->window_start))
                stalest = e; /* an empty entry, else the one with the oldest window */
        }
        if (!k) {
            k = stalest;
            if (k->key && k->suppressed && n_sum < 4) { /* report what it was holding */
                sum[n_sum].level = k->level;
                snprintf(sum[n_sum].text, sizeof sum[n_sum].text,
                         "%llu similar message(s) suppressed, last: %s",
                         (unsigned long long)k->suppressed, k->sample);
                n_sum++;
            }
            memset(k, 0, sizeof *k);
            k->key = key;
            k->level = level;
            k->window_start = now;
        }
        if (now - k->window_start >= log_window_ms) {
            k->window_start = now;
            k->used = 0;
        }
        if (now - log_global_start >= log_window_ms) {
            log_global_start = now;
            log_global_used = 0;
        }
        if (k->used < log_burst && log_global_used < log_global) {
            k->used++;
            log_global_used++;
            emit = 1;
        } else {
            k->suppressed++;
            size_t len = strnlen(msg, sizeof k->sample - 1);
            memcpy(k->sample, msg, len);
            k->sample[len] = '\0';
        }
    }
    pthread_mutex_unlock(&log_mu);
    for (int i = 0; i < n_sum; i++)
        if (sum[i].level >= min && sum[i].level < SPK_LOG_NONE)
            log_emit(fn, user, sum[i].level, sum[i].text);
    if (emit)
        log_emit(fn, user, level, msg);
}
