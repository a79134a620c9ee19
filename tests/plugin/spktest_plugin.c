/* A minimal third-party transport plugin for the loader tests: a complete version-1 vtable whose
 * data methods refuse to run. Built as tests/plugins/spktest.so in the build tree. */
#include <sparkinfer/transport.h>

static spk_status p_probe(char *why, size_t why_cap) { return SPK_OK; }
static spk_status p_init(const spk_transport_init_params *p, spk_transport_comm **out)
{
    *out = NULL;
    return SPK_ERR_UNSUPPORTED;
}
static int p_rank(const spk_transport_comm *c) { return 0; }
static int p_world(const spk_transport_comm *c) { return 1; }
static spk_status p_send(spk_transport_comm *c, int peer, const void *b, size_t n, unsigned m,
                         int t)
{
    return SPK_ERR_UNSUPPORTED;
}
static spk_status p_recv(spk_transport_comm *c, int peer, void *b, size_t n, unsigned m, int t)
{
    return SPK_ERR_UNSUPPORTED;
}
static spk_status p_sendrecv(spk_transport_comm *c, int sp, const void *sb, size_t sn, int rp,
                           void *rb, size_t rn, unsigned m, int t)
{
    return SPK_ERR_UNSUPPORTED;
}
static spk_status p_allreduce(spk_transport_comm *c, void *b, size_t n, spk_transport_dtype d,
                            unsigned m, int t)
{
    return SPK_ERR_UNSUPPORTED;
}
static spk_status p_allgather(spk_transport_comm *c, const void *mine, void *all, size_t n,
                            unsigned m, int t)
{
    return SPK_ERR_UNSUPPORTED;
}
static spk_status p_barrier(spk_transport_comm *c, int t) { return SPK_ERR_UNSUPPORTED; }
static void p_abort_(spk_transport_comm *c) {}
static spk_status p_finalize(spk_transport_comm *c) { return SPK_OK; }

static const spk_transport vtable = {
    .name = "spktest",
    .abi_version = SPK_TRANSPORT_ABI_VERSION,
    .mem_flags = SPK_TRANSPORT_MEM_HOST,
    .probe = p_probe,
    .init = p_init,
    .rank = p_rank,
    .world_size = p_world,
    .send = p_send,
    .recv = p_recv,
    .sendrecv = p_sendrecv,
    .allreduce = p_allreduce,
    .allgather = p_allgather,
    .barrier = p_barrier,
    .abort = p_abort_,
    .finalize = p_finalize,
};

#ifndef SPKTEST_FUTURE
const spk_transport *spk_transport_plugin_v1(void);
const spk_transport *spk_transport_plugin_v1(void) { return &vtable; }
#else
/* Built a second time as spkfuture.so: a plugin that speaks only an ABI version newer than the
 * library's (the vtable is not looked at: the library must refuse it by its symbols alone). */
const spk_transport *spk_transport_plugin_v2(void);
const spk_transport *spk_transport_plugin_v2(void) { return &vtable; }
#endif
