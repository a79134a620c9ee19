/* Per-thread error detail, status strings and the log sink. */
#include "common/error.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

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

void spk_log(spk_log_level level, const char *fmt, ...)
{
    static const char *const lv[] = {"debug", "info", "warn", "error"};
    char msg[1024];
    pthread_mutex_lock(&log_mu);
    spk_log_fn fn = log_fn;
    void *user = log_user;
    spk_log_level min = log_min;
    pthread_mutex_unlock(&log_mu);
    if (level < min || level >= SPK_LOG_NONE)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (fn)
        fn(level, msg, user);
    else
        fprintf(stderr, "sparkinfer[%s]: %s\n", lv[level], msg);
}
