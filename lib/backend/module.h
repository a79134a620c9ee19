/*
 * The entry point a backend module (plugins/spk_backend_<name>.so) exports, and what the core
 * hands it. Internal: core and module come from the same build; the version and the ops table's
 * size make a stale module a clear error instead of a crash.
 */
#ifndef SPK_BACKEND_MODULE_H
#define SPK_BACKEND_MODULE_H

#include <stddef.h>

#include "backend/backend.h"

#define SPK_BACKEND_MODULE_VERSION 1

typedef struct spk_backend_module_args {
    int version;          /* SPK_BACKEND_MODULE_VERSION */
    size_t ops_size;      /* sizeof(spk_backend_ops) */
    int device;           /* -1: the first */
    int copy_weights;     /* 1: copy weights to device memory even where the device could read them in place */
} spk_backend_module_args;

/* spk_backend_cuda_create_v1: fills *out, or returns an error with a message in err. */
typedef spk_status (*spk_backend_module_fn)(const spk_backend_module_args *a, spk_backend **out, char *err,
                                            size_t err_cap);
#define SPK_BACKEND_CUDA_SYMBOL "spk_backend_cuda_create_v1"

#endif
