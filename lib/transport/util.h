/* Small helpers shared by the built-in transports (transport/ tcp, nccl, verbs): a monotonic clock and a
 * printf-style error setter over the bootstrap's set_error callback. */
#ifndef SPK_TRANSPORT_UTIL_H
#define SPK_TRANSPORT_UTIL_H

#include <stdint.h>

#include "sparkinfer/transport.h"

/* Milliseconds of CLOCK_MONOTONIC. */
int64_t spk_tr_now_ms(void);

/* Format the message and hand it to set_error; returns what set_error returns. */
spk_status spk_tr_errf(spk_status (*set_error)(spk_status, const char *), spk_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
