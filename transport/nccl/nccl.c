/*
 * NCCL transport: a non-blocking NCCL communicator per comm (unique id of rank 0 travels over the
 * bootstrap), operations on the comm's own CUDA stream, and a watchdog loop in every wait that
 * polls ncclCommGetAsyncError, the deadline and abort(), and calls ncclCommAbort on failure.
 * Host buffers are staged through a device bounce buffer (so the conformance suite runs as is).
 */
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cuda_runtime_api.h>
#include <nccl.h>

#include "transport/reduce.h"
#include "transport/registry.h"
#include "transport/util.h"

struct spk_transport_comm {
    ncclComm_t nc;
    cudaStream_t stream;
    int rank, world, device;
    int timeout_ms;
    atomic_int aborted;
    int nc_aborted;    /* ncclCommAbort already called */
    spk_status broken; /* sticky */
    void *bounce;      /* device staging buffer for host memory */
    size_t bounce_cap;
    int *one;          /* device int for barrier */
    spk_status (*set_error)(spk_status, const char *);
    void (*log)(spk_log_level, const char *);
};

typedef spk_transport_comm nc_comm;

static spk_status nccl_probe(char *why, size_t cap)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n <= 0) {
        if (why && cap)
            snprintf(why, cap, "no CUDA device (cudaGetDeviceCount: %s, count %d)",
                     e != cudaSuccess ? cudaGetErrorString(e) : "ok", n);
        return SPK_ERR_UNSUPPORTED;
    }
    if (why && cap)
        why[0] = '\0';
    return SPK_OK;
}

static void nc_abort_now(nc_comm *c)
{
    if (!c->nc_aborted && c->nc) {
        ncclCommAbort(c->nc);
        c->nc_aborted = 1;
        c->nc = NULL;
    }
}

/* Break the comm: abort NCCL (so peers blocked with us fail too) and record the status. */
static spk_status nc_fail(nc_comm *c, spk_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static spk_status nc_fail(nc_comm *c, spk_status st, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    nc_abort_now(c);
    if (c->broken == SPK_OK)
        c->broken = st;
    c->log(SPK_LOG_WARN, msg);
    return c->set_error(st, msg);
}

static spk_status map_nccl(ncclResult_t r)
{
    switch (r) {
    case ncclRemoteError:
    case ncclSystemError:
        return SPK_ERR_PEER_LOST;
    case ncclInvalidArgument:
    case ncclInvalidUsage:
        return SPK_ERR_INVALID_ARG;
    default:
        return SPK_ERR_TRANSPORT;
    }
}

/*
 * The watchdog: wait until the comm is no longer in progress (after an enqueue or init) and, if
 * `sync`, until the stream has drained; fail on an async error, the deadline, or abort().
 */
static spk_status nc_wait(nc_comm *c, ncclResult_t enq, int sync, int timeout_ms, const char *what)
{
    int64_t deadline = spk_tr_now_ms() + timeout_ms;
    if (enq != ncclSuccess && enq != ncclInProgress)
        return nc_fail(c, map_nccl(enq), "nccl rank %d: %s: %s (%s)", c->rank, what,
                       ncclGetErrorString(enq), c->nc ? ncclGetLastError(c->nc) : "");
    for (unsigned spin = 0;; spin++) {
        if (atomic_load(&c->aborted)) {
            nc_abort_now(c);
            if (c->broken == SPK_OK)
                c->broken = SPK_ERR_CANCELLED;
            return spk_tr_errf(c->set_error, SPK_ERR_CANCELLED, "nccl rank %d: %s: aborted", c->rank, what);
        }
        ncclResult_t ae = ncclSuccess;
        ncclCommGetAsyncError(c->nc, &ae);
        if (ae != ncclSuccess && ae != ncclInProgress)
            return nc_fail(c, map_nccl(ae), "nccl rank %d: %s: %s%s (%s); communicator aborted",
                           c->rank, what, ncclGetErrorString(ae),
                           map_nccl(ae) == SPK_ERR_PEER_LOST ? ", a peer is lost" : "",
                           ncclGetLastError(c->nc));
        if (ae == ncclSuccess) {
            if (!sync)
                return SPK_OK;
            cudaError_t e = cudaStreamQuery(c->stream);
            if (e == cudaSuccess)
                return SPK_OK;
            if (e != cudaErrorNotReady)
                return nc_fail(c, SPK_ERR_TRANSPORT, "nccl rank %d: %s: CUDA error %s", c->rank,
                               what, cudaGetErrorString(e));
        }
        if (spk_tr_now_ms() >= deadline)
            return nc_fail(c, SPK_ERR_TIMEOUT,
                           "nccl rank %d: %s: no completion within %d ms (a peer stopped "
                           "answering?); communicator aborted",
                           c->rank, what, timeout_ms);
        if (spin > 200) {
            struct timespec ts = {0, 50000};
            nanosleep(&ts, NULL);
        }
    }
}

static int tmo(const nc_comm *c, int timeout_ms)
{
    return timeout_ms > 0 ? timeout_ms : c->timeout_ms;
}

static spk_status nc_usable(nc_comm *c, unsigned mem, const char *what)
{
    if (mem != SPK_TRANSPORT_MEM_HOST && mem != SPK_TRANSPORT_MEM_CUDA)
        return spk_tr_errf(c->set_error, SPK_ERR_UNSUPPORTED, "nccl: %s: memory kind 0x%x", what, mem);
    if (c->broken != SPK_OK)
        return spk_tr_errf(c->set_error, c->broken, "nccl rank %d: %s on a broken communicator", c->rank,
                    what);
    if (atomic_load(&c->aborted)) {
        nc_abort_now(c);
        c->broken = SPK_ERR_CANCELLED;
        return spk_tr_errf(c->set_error, SPK_ERR_CANCELLED, "nccl rank %d: %s: aborted", c->rank, what);
    }
    if (cudaSetDevice(c->device) != cudaSuccess)
        return spk_tr_errf(c->set_error, SPK_ERR_TRANSPORT, "nccl: cudaSetDevice(%d) failed", c->device);
    return SPK_OK;
}

/* Device pointer for `bytes` of a caller buffer: itself for device memory, else the bounce
 * buffer at `offset` (grown as needed). */
static void *stage(nc_comm *c, unsigned mem, void *buf, size_t offset, size_t need)
{
    if (mem == SPK_TRANSPORT_MEM_CUDA)
        return buf;
    if (need > c->bounce_cap) {
        void *p = NULL;
        if (cudaMalloc(&p, need) != cudaSuccess)
            return NULL;
        if (c->bounce)
            cudaFree(c->bounce);
        c->bounce = p;
        c->bounce_cap = need;
    }
    return (uint8_t *)c->bounce + offset;
}

static spk_status h2d(nc_comm *c, void *dst, const void *src, size_t n)
{
    if (cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, c->stream) != cudaSuccess)
        return nc_fail(c, SPK_ERR_TRANSPORT, "nccl: host to device copy of %zu bytes failed", n);
    return SPK_OK;
}

static spk_status d2h_sync(nc_comm *c, void *dst, const void *src, size_t n, int timeout_ms,
                           const char *what)
{
    if (cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToHost, c->stream) != cudaSuccess)
        return nc_fail(c, SPK_ERR_TRANSPORT, "nccl: device to host copy of %zu bytes failed", n);
    return nc_wait(c, ncclSuccess, 1, timeout_ms, what);
}

static spk_status nc_sendrecv_impl(nc_comm *c, int sp, const void *sbuf, size_t sb, int rp,
                                   void *rbuf, size_t rb, unsigned mem, int timeout_ms,
                                   const char *what)
{
    spk_status st = nc_usable(c, mem, what);
    if (st != SPK_OK)
        return st;
    if ((sb && (sp < 0 || sp >= c->world || sp == c->rank)) ||
        (rb && (rp < 0 || rp >= c->world || rp == c->rank)) || (sb && !sbuf) || (rb && !rbuf))
        return spk_tr_errf(c->set_error, SPK_ERR_INVALID_ARG,
                    "nccl rank %d: %s: bad peer or buffer (send to %d, recv from %d, world %d)",
                    c->rank, what, sp, rp, c->world);
    int t = tmo(c, timeout_ms);
    void *ds = sb ? stage(c, mem, (void *)(uintptr_t)sbuf, 0, sb + rb) : NULL;
    void *dr = rb ? stage(c, mem, rbuf, sb, sb + rb) : NULL;
    if ((sb && !ds) || (rb && !dr))
        return spk_tr_errf(c->set_error, SPK_ERR_NOMEM, "nccl: %s: no device memory for staging", what);
    if (sb && mem == SPK_TRANSPORT_MEM_HOST && (st = h2d(c, ds, sbuf, sb)) != SPK_OK)
        return st;
    ncclResult_t r = ncclGroupStart();
    if (sb)
        r = ncclSend(ds, sb, ncclInt8, sp, c->nc, c->stream);
    if (rb && (r == ncclSuccess || r == ncclInProgress))
        r = ncclRecv(dr, rb, ncclInt8, rp, c->nc, c->stream);
    ncclResult_t e = ncclGroupEnd();
    if (r == ncclSuccess || r == ncclInProgress)
        r = e;
    if ((st = nc_wait(c, r, 1, t, what)) != SPK_OK)
        return st;
    if (rb && mem == SPK_TRANSPORT_MEM_HOST)
        return d2h_sync(c, rbuf, dr, rb, t, what);
    return SPK_OK;
}

static spk_status nc_sendrecv(nc_comm *c, int sp, const void *sbuf, size_t sb, int rp, void *rbuf,
                              size_t rb, unsigned mem, int timeout_ms)
{
    return nc_sendrecv_impl(c, sp, sbuf, sb, rp, rbuf, rb, mem, timeout_ms, "sendrecv");
}

static spk_status nc_send(nc_comm *c, int peer, const void *buf, size_t n, unsigned mem, int t)
{
    return nc_sendrecv_impl(c, peer, buf, n, -1, NULL, 0, mem, t, "send");
}

static spk_status nc_recv(nc_comm *c, int peer, void *buf, size_t n, unsigned mem, int t)
{
    return nc_sendrecv_impl(c, -1, NULL, 0, peer, buf, n, mem, t, "recv");
}

static spk_status nc_allreduce(nc_comm *c, void *buf, size_t count, spk_transport_dtype dt,
                               unsigned mem, int timeout_ms)
{
    spk_status st = nc_usable(c, mem, "allreduce");
    if (st != SPK_OK)
        return st;
    ncclDataType_t t = dt == SPK_TRANSPORT_F32 ? ncclFloat32
                       : dt == SPK_TRANSPORT_F16 ? ncclFloat16
                       : dt == SPK_TRANSPORT_BF16 ? ncclBfloat16 : (ncclDataType_t)-1;
    if ((int)t < 0)
        return spk_tr_errf(c->set_error, SPK_ERR_UNSUPPORTED, "nccl: allreduce: dtype %d", (int)dt);
    if (count == 0)
        return SPK_OK;
    if (!buf)
        return spk_tr_errf(c->set_error, SPK_ERR_INVALID_ARG, "nccl: allreduce: NULL buffer");
    size_t bytes = count * spk_tr_dtype_size(dt);
    int to = tmo(c, timeout_ms);
    void *d = stage(c, mem, buf, 0, bytes);
    if (!d)
        return spk_tr_errf(c->set_error, SPK_ERR_NOMEM, "nccl: allreduce: no device memory for staging");
    if (mem == SPK_TRANSPORT_MEM_HOST && (st = h2d(c, d, buf, bytes)) != SPK_OK)
        return st;
    st = nc_wait(c, ncclAllReduce(d, d, count, t, ncclSum, c->nc, c->stream), 1, to, "allreduce");
    if (st == SPK_OK && mem == SPK_TRANSPORT_MEM_HOST)
        st = d2h_sync(c, buf, d, bytes, to, "allreduce");
    return st;
}

static spk_status nc_allgather(nc_comm *c, const void *mine, void *all, size_t bpr, unsigned mem,
                               int timeout_ms)
{
    spk_status st = nc_usable(c, mem, "allgather");
    if (st != SPK_OK || bpr == 0)
        return st;
    if (!mine || !all)
        return spk_tr_errf(c->set_error, SPK_ERR_INVALID_ARG, "nccl: allgather: NULL buffer");
    size_t total = bpr * (size_t)c->world;
    int to = tmo(c, timeout_ms);
    uint8_t *d = stage(c, mem, all, 0, total);
    if (!d)
        return spk_tr_errf(c->set_error, SPK_ERR_NOMEM, "nccl: allgather: no device memory for staging");
    const void *src = mine;
    if (mem == SPK_TRANSPORT_MEM_HOST) {
        if ((st = h2d(c, d + (size_t)c->rank * bpr, mine, bpr)) != SPK_OK)
            return st;
        src = d + (size_t)c->rank * bpr;
    }
    st = nc_wait(c, ncclAllGather(src, d, bpr, ncclInt8, c->nc, c->stream), 1, to, "allgather");
    if (st == SPK_OK && mem == SPK_TRANSPORT_MEM_HOST)
        st = d2h_sync(c, all, d, total, to, "allgather");
    return st;
}

static spk_status nc_barrier(nc_comm *c, int timeout_ms)
{
    spk_status st = nc_usable(c, SPK_TRANSPORT_MEM_CUDA, "barrier");
    if (st != SPK_OK)
        return st;
    return nc_wait(c, ncclAllReduce(c->one, c->one, 1, ncclInt32, ncclSum, c->nc, c->stream), 1,
                   tmo(c, timeout_ms), "barrier");
}

static int nc_rank(const nc_comm *c)
{
    return c ? c->rank : -1;
}

static int nc_world(const nc_comm *c)
{
    return c ? c->world : -1;
}

static void nc_abort(nc_comm *c)
{
    if (c)
        atomic_store(&c->aborted, 1); /* the waiting thread's watchdog calls ncclCommAbort */
}

static spk_status nc_finalize(nc_comm *c)
{
    if (!c)
        return SPK_OK;
    cudaSetDevice(c->device);
    if (c->nc) {
        /* a clean finalize would wait for peers; this comm may have dead ones, so abort */
        if (c->broken == SPK_OK && !atomic_load(&c->aborted))
            ncclCommDestroy(c->nc);
        else
            ncclCommAbort(c->nc);
    }
    if (c->stream)
        cudaStreamDestroy(c->stream);
    if (c->bounce)
        cudaFree(c->bounce);
    if (c->one)
        cudaFree(c->one);
    free(c);
    return SPK_OK;
}

/* Allocate the comm shell: device, stream, barrier word. */
static spk_status nc_shell(const spk_transport_init_params *p, int rank, int world, int device,
                           nc_comm **out)
{
    nc_comm *c = calloc(1, sizeof *c);
    if (!c)
        return spk_tr_errf(p->set_error, SPK_ERR_NOMEM, "nccl: out of memory");
    c->rank = rank;
    c->world = world;
    c->device = device;
    c->timeout_ms = p->timeout_ms;
    c->set_error = p->set_error;
    c->log = p->log;
    cudaError_t e = cudaSetDevice(device);
    if (e == cudaSuccess)
        e = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking);
    if (e == cudaSuccess)
        e = cudaMalloc((void **)&c->one, sizeof(int));
    if (e == cudaSuccess)
        e = cudaMemset(c->one, 0, sizeof(int));
    if (e != cudaSuccess) {
        nc_finalize(c);
        return spk_tr_errf(p->set_error, SPK_ERR_TRANSPORT, "nccl: CUDA device %d setup failed: %s",
                    device, cudaGetErrorString(e));
    }
    *out = c;
    return SPK_OK;
}

static spk_status nccl_init(const spk_transport_init_params *params, spk_transport_comm **out)
{
    if (out)
        *out = NULL;
    if (!params || !out || !params->set_error || !params->log || !params->bootstrap)
        return params && params->set_error
                   ? params->set_error(SPK_ERR_INVALID_ARG, "nccl: init: bad arguments")
                   : SPK_ERR_INVALID_ARG;
    spk_transport_init_params p;
    memset(&p, 0, sizeof p);
    memcpy(&p, params, params->struct_size < sizeof p ? params->struct_size : sizeof p);
    const spk_transport_bootstrap *bs = p.bootstrap;
    if (bs->world_size < 1 || bs->rank < 0 || bs->rank >= bs->world_size || !bs->allgather ||
        p.timeout_ms <= 0)
        return spk_tr_errf(p.set_error, SPK_ERR_INVALID_ARG, "nccl: init: bad bootstrap or timeout");
    char why[256];
    if (nccl_probe(why, sizeof why) != SPK_OK)
        return spk_tr_errf(p.set_error, SPK_ERR_UNSUPPORTED, "nccl: %s", why);
    int ndev = 0;
    cudaGetDeviceCount(&ndev);
    int device = p.cuda_device >= 0 ? p.cuda_device : 0;
    if (device >= ndev)
        return spk_tr_errf(p.set_error, SPK_ERR_INVALID_ARG, "nccl: CUDA device %d of %d", device, ndev);
    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    if (bs->rank == 0) {
        ncclResult_t r = ncclGetUniqueId(&id);
        if (r != ncclSuccess)
            return spk_tr_errf(p.set_error, SPK_ERR_TRANSPORT, "nccl: ncclGetUniqueId: %s",
                        ncclGetErrorString(r));
    }
    uint8_t *all = malloc(sizeof id * (size_t)bs->world_size);
    if (!all)
        return spk_tr_errf(p.set_error, SPK_ERR_NOMEM, "nccl: out of memory");
    spk_status st = bs->allgather(bs->ctx, &id, all, sizeof id, p.timeout_ms);
    memcpy(&id, all, sizeof id); /* rank 0's */
    free(all);
    if (st != SPK_OK)
        return st;
    nc_comm *c = NULL;
    if ((st = nc_shell(&p, bs->rank, bs->world_size, device, &c)) != SPK_OK)
        return st;
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0;
    ncclResult_t r = ncclCommInitRankConfig(&c->nc, bs->world_size, id, bs->rank, &cfg);
    if (r != ncclSuccess && r != ncclInProgress) {
        c->nc = NULL;
        nc_finalize(c);
        return spk_tr_errf(p.set_error, SPK_ERR_TRANSPORT, "nccl: ncclCommInitRankConfig: %s",
                    ncclGetErrorString(r));
    }
    if ((st = nc_wait(c, r, 0, p.timeout_ms, "init")) != SPK_OK) {
        nc_finalize(c);
        return st;
    }
    *out = c;
    return SPK_OK;
}

static spk_status nc_split(nc_comm *c, int color, int key, nc_comm **out, int timeout_ms)
{
    if (out)
        *out = NULL;
    if (!out)
        return spk_tr_errf(c->set_error, SPK_ERR_INVALID_ARG, "nccl: split: out is NULL");
    spk_status st = nc_usable(c, SPK_TRANSPORT_MEM_CUDA, "split");
    if (st != SPK_OK)
        return st;
    spk_transport_init_params p = {sizeof p, NULL, c->timeout_ms, c->device, NULL, c->set_error,
                                   c->log};
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0;
    ncclComm_t nc = NULL;
    ncclResult_t r = ncclCommSplit(c->nc, color < 0 ? NCCL_SPLIT_NOCOLOR : color, key, &nc, &cfg);
    if ((st = nc_wait(c, r, 0, tmo(c, timeout_ms), "split")) != SPK_OK)
        return st;
    if (color < 0 || !nc)
        return SPK_OK;
    nc_comm *k = NULL;
    int rank = 0, world = 0;
    ncclCommUserRank(nc, &rank);
    ncclCommCount(nc, &world);
    if ((st = nc_shell(&p, rank, world, c->device, &k)) != SPK_OK) {
        ncclCommAbort(nc);
        return st;
    }
    k->nc = nc;
    if ((st = nc_wait(k, ncclSuccess, 0, tmo(c, timeout_ms), "split")) != SPK_OK) {
        nc_finalize(k);
        return st;
    }
    *out = k;
    return SPK_OK;
}

const spk_transport *spk_transport_nccl(void)
{
    static const spk_transport vt = {
        .name = "nccl",
        .abi_version = SPK_TRANSPORT_ABI_VERSION,
        .mem_flags = SPK_TRANSPORT_MEM_CUDA | SPK_TRANSPORT_MEM_HOST,
        .probe = nccl_probe,
        .init = nccl_init,
        .rank = nc_rank,
        .world_size = nc_world,
        .send = nc_send,
        .recv = nc_recv,
        .sendrecv = nc_sendrecv,
        .allreduce = nc_allreduce,
        .allgather = nc_allgather,
        .barrier = nc_barrier,
        .split = nc_split,
        .abort = nc_abort,
        .finalize = nc_finalize,
    };
    return &vt;
}

#ifdef SPK_TRANSPORT_MODULE
/* The module's entry point, the public plugin ABI (transport.h): the core loads this file as
 * plugins/spk_transport_nccl.so, so only the module NEEDs its libraries. */
__attribute__((visibility("default"))) const spk_transport *spk_transport_plugin_v1(void)
{
    return spk_transport_nccl();
}
#endif
