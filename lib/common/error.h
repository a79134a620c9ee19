/*
 * Per-thread error detail and the library's log sink.
 * Every failing internal function sets a message naming the thing and the numbers involved.
 */
#ifndef SPK_COMMON_ERROR_H
#define SPK_COMMON_ERROR_H

#include "sparkinfer/sparkinfer.h"

#if defined(__GNUC__)
#define SPK_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define SPK_PRINTF(a, b)
#endif

/* Record `fmt` as this thread's error detail and return `st` (so: return spk_err(...)). */
spk_status spk_err(spk_status st, const char *fmt, ...) SPK_PRINTF(2, 3);

/* Prefix the current detail with "what: " (adds context on the way up). Returns `st`. */
spk_status spk_err_prefix(spk_status st, const char *fmt, ...) SPK_PRINTF(2, 3);

/* Clear this thread's error detail. */
void spk_err_clear(void);

/* Current detail (never NULL). */
const char *spk_err_msg(void);

/* Emit a log line through the user's callback (or stderr for WARN and above by default).
 * Rate-limited per kind of message (level + text without digits): a flood of similar lines is
 * cut to `burst` per window and reported as "N similar message(s) suppressed". */
void spk_log(spk_log_level level, const char *fmt, ...) SPK_PRINTF(2, 3);

/* Emit the "suppressed" summaries now (e.g. when a flood is over), whatever their window. */
void spk_log_flush(void);

/* Rate limit: `burst` lines per kind and `global` lines in all per `window_ms` (<= 0: the
 * defaults 20, 1000 ms, 200). Resets the counters. For tests and tuning. */
void spk_log_rate_set(int burst, int window_ms, int global);

/* Return the status of x from the calling function unless it is SPK_OK. */
#define SPK_TRY(x)                                                                                 \
    do {                                                                                           \
        spk_status st_ = (x);                                                                      \
        if (st_ != SPK_OK)                                                                         \
            return st_;                                                                            \
    } while (0)

#endif
