/* Transport selection: built-in vtables by name, "auto", and plugins loaded with dlopen. */
#include "transport/registry.h"

#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "common/error.h"

#ifndef SPK_PLUGIN_DIR
#define SPK_PLUGIN_DIR "/usr/local/lib/sparkinfer/plugins"
#endif

/* Where bare plugin names ("foo.so") are looked up: the installed plugin directory, fixed at
 * build time (a test may point it elsewhere). Never the current directory, never the dynamic
 * loader's search path. */
static const char *plugin_dir = SPK_PLUGIN_DIR;

const char *spk_transport_plugin_dir(void)
{
    return plugin_dir;
}

void spk_transport_test_set_plugin_dir(const char *dir)
{
    plugin_dir = dir ? dir : SPK_PLUGIN_DIR;
}


static spk_status lib_set_error(spk_status st, const char *msg)
{
    return spk_err(st, "%s", msg ? msg : "(no message)");
}

static void lib_log(spk_log_level level, const char *msg)
{
    spk_log(level, "%s", msg ? msg : "");
}

void spk_transport_params_init(spk_transport_init_params *p, const spk_transport_bootstrap *bs,
                               int timeout_ms)
{
    memset(p, 0, sizeof *p);
    p->struct_size = sizeof *p;
    p->bootstrap = bs;
    p->timeout_ms = timeout_ms > 0 ? timeout_ms : 30000;
    p->cuda_device = -1;
    p->options = NULL;
    p->set_error = lib_set_error;
    p->log = lib_log;
}

spk_status spk_transport_check_vtable(const spk_transport *vt, const char *origin)
{
    if (!vt)
        return spk_err(SPK_ERR_INVALID_ARG, "transport %s: vtable is NULL", origin);
    if (vt->abi_version == 0 || vt->abi_version > SPK_TRANSPORT_ABI_VERSION)
        return spk_err(SPK_ERR_VERSION,
                       "transport %s: plugin ABI version %u, this library supports 1..%d", origin,
                       vt->abi_version, SPK_TRANSPORT_ABI_VERSION);
    if (!vt->name || !vt->name[0])
        return spk_err(SPK_ERR_INVALID_ARG, "transport %s: vtable has no name", origin);
    const char *missing = NULL;
    if (!vt->probe)
        missing = "probe";
    else if (!vt->init)
        missing = "init";
    else if (!vt->rank || !vt->world_size)
        missing = "rank/world_size";
    else if (!vt->send || !vt->recv || !vt->sendrecv)
        missing = "send/recv/sendrecv";
    else if (!vt->allreduce || !vt->allgather || !vt->barrier)
        missing = "allreduce/allgather/barrier";
    else if (!vt->abort || !vt->finalize)
        missing = "abort/finalize";
    else if ((vt->isend || vt->irecv || vt->test) && !(vt->isend && vt->irecv && vt->test))
        missing = "isend/irecv/test (all three or none)";
    if (missing)
        return spk_err(SPK_ERR_INVALID_ARG, "transport %s (\"%s\"): mandatory method %s is NULL",
                       origin, vt->name, missing);
    if ((vt->mem_flags & (SPK_TRANSPORT_MEM_HOST | SPK_TRANSPORT_MEM_CUDA)) == 0)
        return spk_err(SPK_ERR_INVALID_ARG, "transport %s (\"%s\"): mem_flags 0x%x accepts no memory",
                       origin, vt->name, vt->mem_flags);
    return SPK_OK;
}

static spk_status accept_mem(const spk_transport *vt, unsigned mem)
{
    if (mem && (vt->mem_flags & mem) != mem)
        return spk_err(SPK_ERR_UNSUPPORTED, "transport \"%s\" does not accept %s memory", vt->name,
                       (mem & SPK_TRANSPORT_MEM_CUDA) ? "CUDA device" : "host");
    return SPK_OK;
}

static spk_status load_plugin(const char *path, unsigned mem, spk_transport_handle *out)
{
    void *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!dl)
        return spk_err(SPK_ERR_NOT_FOUND, "transport plugin %s: dlopen failed: %s", path, dlerror());
    /* the newest version this library knows that the plugin exports */
    void *sym = NULL;
    unsigned version = SPK_TRANSPORT_ABI_VERSION + 1;
    char name[64];
    while (!sym && --version >= 1) {
        snprintf(name, sizeof name, "%s%u", SPK_TRANSPORT_PLUGIN_SYMBOL_PREFIX, version);
        sym = dlsym(dl, name);
    }
    if (!sym) {
        /* say so if it only speaks versions newer than this library */
        unsigned newer = 0;
        for (unsigned v = SPK_TRANSPORT_ABI_VERSION + 1; v <= SPK_TRANSPORT_ABI_VERSION + 16 && !newer; v++) {
            snprintf(name, sizeof name, "%s%u", SPK_TRANSPORT_PLUGIN_SYMBOL_PREFIX, v);
            newer = dlsym(dl, name) ? v : 0;
        }
        dlclose(dl);
        if (newer)
            return spk_err(SPK_ERR_VERSION, "transport plugin %s exports only ABI version %u and later (%s%u); "
                           "this library speaks versions 1..%d", path, newer, SPK_TRANSPORT_PLUGIN_SYMBOL_PREFIX,
                           newer, SPK_TRANSPORT_ABI_VERSION);
        return spk_err(SPK_ERR_NOT_FOUND, "transport plugin %s: no symbol %s1..%d (%s for this version)", path,
                       SPK_TRANSPORT_PLUGIN_SYMBOL_PREFIX, SPK_TRANSPORT_ABI_VERSION, SPK_TRANSPORT_PLUGIN_SYMBOL);
    }
    spk_transport_plugin_fn fn;
    memcpy(&fn, &sym, sizeof fn); /* object pointer to function pointer, as POSIX allows */
    const spk_transport *vt = fn();
    spk_status st = spk_transport_check_vtable(vt, path);
    if (st == SPK_OK && vt->abi_version != version)
        st = spk_err(SPK_ERR_VERSION, "transport plugin %s: %s%u returned a vtable of ABI version %u", path,
                     SPK_TRANSPORT_PLUGIN_SYMBOL_PREFIX, version, vt->abi_version);
    if (st == SPK_OK)
        st = accept_mem(vt, mem);
    if (st != SPK_OK) {
        dlclose(dl);
        return st;
    }
    out->vt = vt;
    out->dl = dl;
    spk_log(SPK_LOG_INFO, "transport plugin %s loaded: \"%s\" ABI %u", path, vt->name, vt->abi_version);
    return SPK_OK;
}

/* The NCCL and verbs transports: modules in the plugin directory (they NEED libcudart/libnccl or
 * libibverbs, which the core must not), checked to accept `mem` and to run on this machine. */
static spk_status load_module(const char *name, unsigned mem, spk_transport_handle *out)
{
    char path[PATH_MAX];
    int n = snprintf(path, sizeof path, "%s/spk_transport_%s.so", plugin_dir, name);
    if (n < 0 || (size_t)n >= sizeof path)
        return spk_err(SPK_ERR_INVALID_ARG, "transport \"%s\": plugin directory path too long", name);
    if (access(path, R_OK) != 0)
        return spk_err(SPK_ERR_UNSUPPORTED, "transport \"%s\" is not installed here: no module %s (it is built "
                       "where %s was found)", name, path, strcmp(name, "nccl") == 0 ? "CUDA + NCCL" : "libibverbs");
    spk_status st = load_plugin(path, mem, out);
    if (st == SPK_ERR_NOT_FOUND) /* e.g. the module's libcudart is missing on this machine */
        return spk_err_prefix(SPK_ERR_UNSUPPORTED, "transport \"%s\" cannot be loaded", name);
    if (st != SPK_OK)
        return st;
    char why[256] = "";
    if (out->vt->probe(why, sizeof why) != SPK_OK) {
        spk_transport_release(out);
        return spk_err(SPK_ERR_UNSUPPORTED, "transport \"%s\" cannot run here: %s", name, why);
    }
    return SPK_OK;
}

static spk_status builtin(const char *name, const spk_transport *vt, unsigned mem, int must_probe,
                          spk_transport_handle *out)
{
    if (!vt)
        return spk_err(SPK_ERR_NOT_FOUND, "transport \"%s\" is not compiled into this library",
                       name);
    spk_status st = spk_transport_check_vtable(vt, name);
    if (st == SPK_OK)
        st = accept_mem(vt, mem);
    if (st != SPK_OK)
        return st;
    if (must_probe) {
        char why[256] = "";
        if (vt->probe(why, sizeof why) != SPK_OK)
            return spk_err(SPK_ERR_UNSUPPORTED, "transport \"%s\" cannot run here: %s", name, why);
    }
    out->vt = vt;
    out->dl = NULL;
    return SPK_OK;
}

static int usable(const spk_transport *vt, unsigned mem, char *why, size_t cap)
{
    if (!vt)
        return 0;
    if (mem && (vt->mem_flags & mem) != mem)
        return 0;
    return vt->probe(why, cap) == SPK_OK;
}

spk_status spk_transport_select(const char *name, unsigned mem, spk_transport_handle *out)
{
    if (!out)
        return spk_err(SPK_ERR_INVALID_ARG, "spk_transport_select: out is NULL");
    memset(out, 0, sizeof *out);
    if (!name || !*name || strcmp(name, "auto") == 0) {
        char why[256] = "";
        if ((mem & SPK_TRANSPORT_MEM_CUDA) && load_module("nccl", mem, out) == SPK_OK)
            return SPK_OK;
        if (load_module("verbs", mem, out) == SPK_OK)
            return SPK_OK;
        if (usable(spk_transport_tcp(), mem, why, sizeof why))
            return builtin("tcp", spk_transport_tcp(), mem, 0, out);
        return spk_err(SPK_ERR_UNSUPPORTED, "transport auto: no transport accepts %s memory here",
                       (mem & SPK_TRANSPORT_MEM_CUDA) ? "CUDA device" : "host");
    }
    size_t len = strlen(name);
    if (name[0] == '/')
        return load_plugin(name, mem, out); /* an absolute path the configuration names */
    if (strchr(name, '/'))
        return spk_err(SPK_ERR_INVALID_ARG,
                       "transport plugin \"%s\": relative paths are refused (they depend on the "
                       "current directory); give an absolute path or a bare name installed in %s",
                       name, plugin_dir);
    if (len > 3 && strcmp(name + len - 3, ".so") == 0) {
        char path[PATH_MAX];
        int n = snprintf(path, sizeof path, "%s/%s", plugin_dir, name);
        if (n < 0 || (size_t)n >= sizeof path)
            return spk_err(SPK_ERR_INVALID_ARG, "transport plugin \"%s\": path %s/%s too long "
                           "(%d bytes, at most %zu)", name, plugin_dir, name, n, sizeof path - 1);
        if (path[0] != '/')
            return spk_err(SPK_ERR_UNSUPPORTED, "transport plugin \"%s\": plugin directory "
                           "\"%s\" is not absolute", name, plugin_dir);
        return load_plugin(path, mem, out);
    }
    if (strcmp(name, "tcp") == 0)
        return builtin(name, spk_transport_tcp(), mem, 1, out);
    if (strcmp(name, "nccl") == 0 || strcmp(name, "verbs") == 0)
        return load_module(name, mem, out);
    return spk_err(SPK_ERR_NOT_FOUND,
                   "unknown transport \"%s\" (expected auto, tcp, nccl, verbs, NAME.so from %s "
                   "or an absolute plugin path)", name, plugin_dir);
}

void spk_transport_release(spk_transport_handle *h)
{
    if (!h)
        return;
    if (h->dl)
        dlclose(h->dl);
    h->vt = NULL;
    h->dl = NULL;
}
