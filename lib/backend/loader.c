/*
 * Backend selection: the CPU backend is built in; the CUDA backend is a module
 * (spk_backend_cuda.so in the plugin directory) loaded with dlopen on first use, so the core
 * NEEDs no CUDA library and loads on any machine.
 */
#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "backend/backend.h"
#include "backend/module.h"
#include "common/error.h"
#include "transport/registry.h"

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static spk_backend_module_fn cuda_create; /* the module stays loaded for the process's life */

/* Load the CUDA module once; UNSUPPORTED naming what is missing. Caller holds mu. */
static spk_status load_cuda(void)
{
    if (cuda_create)
        return SPK_OK;
    char path[PATH_MAX];
    int n = snprintf(path, sizeof path, "%s/spk_backend_cuda.so", spk_transport_plugin_dir());
    if (n < 0 || (size_t)n >= sizeof path)
        return spk_err(SPK_ERR_INVALID_ARG, "cuda backend: plugin directory path too long");
    if (access(path, R_OK) != 0)
        return spk_err(SPK_ERR_UNSUPPORTED, "cuda backend is not installed here: no module %s (it is built where "
                       "the CUDA toolkit was found)", path);
    void *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!dl)
        return spk_err(SPK_ERR_UNSUPPORTED, "cuda backend cannot be loaded: %s", dlerror());
    void *sym = dlsym(dl, SPK_BACKEND_CUDA_SYMBOL);
    if (!sym) {
        dlclose(dl);
        return spk_err(SPK_ERR_UNSUPPORTED, "cuda backend module %s: no symbol %s", path, SPK_BACKEND_CUDA_SYMBOL);
    }
    memcpy(&cuda_create, &sym, sizeof cuda_create); /* object pointer to function pointer, as POSIX allows */
    return SPK_OK;
}

static spk_status create_cuda(int device, spk_backend **out)
{
    pthread_mutex_lock(&mu);
    spk_status st = load_cuda();
    spk_backend_module_fn fn = cuda_create;
    pthread_mutex_unlock(&mu);
    if (st != SPK_OK)
        return st;
    spk_backend_module_args a = {.version = SPK_BACKEND_MODULE_VERSION, .ops_size = sizeof(spk_backend_ops),
                                 .device = device, .copy_weights = 0};
    char err[256] = "";
    st = fn(&a, out, err, sizeof err);
    if (st != SPK_OK)
        return spk_err(st, "%s", err[0] ? err : "cuda backend: creation failed");
    return SPK_OK;
}

spk_status spk_backend_create(spk_backend_type kind, int device, int n_threads, int n_ctx, int head_dim,
                              spk_backend **out)
{
    *out = NULL;
    switch (kind) {
    case SPK_BACKEND_CPU:
        return spk_backend_cpu_create(n_threads, n_ctx, head_dim, out);
    case SPK_BACKEND_CUDA:
        return create_cuda(device, out);
    case SPK_BACKEND_AUTO:
        if (create_cuda(device, out) == SPK_OK)
            return SPK_OK;
        spk_log(SPK_LOG_INFO, "backend auto: %s; using the CPU", spk_last_error());
        return spk_backend_cpu_create(n_threads, n_ctx, head_dim, out);
    }
    return spk_err(SPK_ERR_INVALID_ARG, "backend kind %d is not one of auto, cpu, cuda", (int)kind);
}

static char avail[32];
static pthread_once_t avail_once = PTHREAD_ONCE_INIT;

static void avail_init(void)
{
    spk_backend *be = NULL;
    const int gpu = create_cuda(-1, &be) == SPK_OK;
    spk_backend_destroy(be);
    snprintf(avail, sizeof avail, "%s", gpu ? "cpu,cuda" : "cpu");
}

const char *spk_backend_available(void)
{
    pthread_once(&avail_once, avail_init);
    return avail;
}
