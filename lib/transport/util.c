/* Small helpers shared by the built-in transports. */
#include "transport/util.h"

#include <stdarg.h>
#include <stdio.h>
#include <time.h>

int64_t spk_tr_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

spk_status spk_tr_errf(spk_status (*set_error)(spk_status, const char *), spk_status st, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return set_error(st, msg);
}
