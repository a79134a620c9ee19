/*
 * Transport selection (lib/transport/): the built-in vtables, "auto" choice and plugin loading.
 * The rest of the library reaches a transport only through the public vtable in transport.h.
 */
#ifndef SPK_TRANSPORT_REGISTRY_H
#define SPK_TRANSPORT_REGISTRY_H

#include "sparkinfer/transport.h"

/* The built-in TCP vtable; NCCL's and verbs' are defined in their modules (transport/nccl/,
 * transport/verbs/, loaded by name from the plugin directory) and in the tests that compile them. */
const spk_transport *spk_transport_tcp(void);
const spk_transport *spk_transport_nccl(void);
const spk_transport *spk_transport_verbs(void);

/* A selected transport: its vtable and, for a plugin, the dlopen handle that keeps it loaded. */
typedef struct spk_transport_handle {
    const spk_transport *vt;
    void *dl; /* NULL for built-ins */
} spk_transport_handle;

/*
 * Pick a transport. `name_or_path`: "auto" (or NULL), "tcp", "nccl", "verbs", an absolute path
 * to a plugin .so, or a bare "NAME.so" loaded from the installed plugin directory
 * (spk_transport_plugin_dir()). Relative paths ("./x.so", "lib/x.so") are refused with
 * INVALID_ARG: nothing is ever loaded through the current directory or the loader's search
 * path. `mem`: the SPK_TRANSPORT_MEM_* kind
 * the caller's buffers live in; "auto" picks nccl for CUDA memory, else verbs if a device
 * exists (probe), else tcp. Checks the vtable's abi_version (1..SPK_TRANSPORT_ABI_VERSION) and
 * that every mandatory method is set, and that it accepts `mem`.
 * Errors: NOT_FOUND (unknown name, not compiled in, plugin missing or without the symbol),
 * UNSUPPORTED (probe failed for an explicitly named transport, or memory kind not accepted),
 * VERSION (plugin ABI too new or 0), INVALID_ARG (relative plugin path, path too long).
 * On error *out is zeroed.
 */
spk_status spk_transport_select(const char *name_or_path, unsigned mem, spk_transport_handle *out);

/* The installed plugin directory (absolute; <libdir>/sparkinfer/plugins of the install). */
const char *spk_transport_plugin_dir(void);

/* Test hook: look bare plugin names up in `dir` instead (NULL: back to the installed one).
 * Not thread-safe; tests only. */
void spk_transport_test_set_plugin_dir(const char *dir);

/* Unload a plugin handle (no-op for built-ins); zeroes *h. */
void spk_transport_release(spk_transport_handle *h);

/* Fill `p` with struct_size, the bootstrap, timeout, no CUDA device, no options, and the
 * library's own set_error/log callbacks. */
void spk_transport_params_init(spk_transport_init_params *p, const spk_transport_bootstrap *bs,
                               int timeout_ms);

/* Validate a vtable as the loader does (abi version, mandatory methods). INVALID_ARG/VERSION. */
spk_status spk_transport_check_vtable(const spk_transport *vt, const char *origin);

#endif
