/*
 * NCCL transport: the same conformance suite as TCP (host buffers are staged through device
 * memory), plus device buffers and abort. Runs only where a CUDA device exists; NCCL allows one
 * rank per GPU, so a one-GPU machine runs world size 1. Skips with the reason elsewhere.
 */
#include <check.h>

#include "testutil.h"
#include "test_transport_harness.h"
#include "transport/registry.h"

/* The few CUDA runtime calls the test needs (the test tree does not see the CUDA headers). */
#if SPK_HAVE_NCCL
int cudaMalloc(void **p, size_t n);
int cudaFree(void *p);
int cudaMemcpy(void *dst, const void *src, size_t n, int kind);
#else
/* Built without CUDA (e.g. the aarch64 cross build): main() skips before any of these runs;
 * failing stand-ins keep the program linkable without libcudart. */
static int cudaMalloc(void **p, size_t n)
{
    *p = NULL;
    (void)n;
    return -1;
}
static int cudaFree(void *p)
{
    (void)p;
    return -1;
}
static int cudaMemcpy(void *dst, const void *src, size_t n, int kind)
{
    (void)dst, (void)src, (void)n, (void)kind;
    return -1;
}
#endif

static const spk_transport *vt_nccl(void)
{
    return spk_transport_nccl();
}

static int rank_conformance(const spk_transport *vt, th_boot *b, int rfd, void *arg)
{
    spk_transport_init_params p;
    th_params(&p, b, 60000);
    p.cuda_device = b->bs.rank;
    spk_transport_comm *c = NULL;
    spk_status st = vt->init(&p, &c);
    if (st != SPK_OK)
        TH_FAIL("nccl init: status %d", st);
    int rc = th_conformance(vt, c, 1);
    /* device memory: in-place f32 sum of 1M+3 elements */
    size_t n = (1u << 20) + 3;
    float *h = malloc(n * sizeof *h), *d = NULL;
    for (size_t i = 0; i < n; i++)
        h[i] = (float)(i % 1000) * 0.5f;
    if (cudaMalloc((void **)&d, n * sizeof *h) != 0 || cudaMemcpy(d, h, n * sizeof *h, 1) != 0)
        TH_FAIL("cudaMalloc/cudaMemcpy");
    st = vt->allreduce(c, d, n, SPK_TRANSPORT_F32, SPK_TRANSPORT_MEM_CUDA, -1);
    if (st != SPK_OK)
        TH_FAIL("allreduce on device memory: status %d", st);
    cudaMemcpy(h, d, n * sizeof *h, 2);
    for (size_t i = 0; i < n; i++)
        if (h[i] != (float)(i % 1000) * 0.5f * (float)b->bs.world_size)
            TH_FAIL("device allreduce element %zu = %g", i, h[i]);
    cudaFree(d);
    free(h);
    vt->abort(c);
    uint8_t x = 0;
    if (vt->allreduce(c, &x, 1, SPK_TRANSPORT_F32, SPK_TRANSPORT_MEM_HOST, -1) != SPK_ERR_CANCELLED)
        TH_FAIL("allreduce after abort must be CANCELLED");
    vt->finalize(c);
    return rc;
}

START_TEST(nccl_passes_conformance_on_every_gpu)
{
    const spk_transport *vt = vt_nccl();
    int ngpu = 1; /* NCCL: one rank per GPU; world 1 exercises the same code paths */
    ck_assert_int_eq(th_run_world(vt, ngpu, rank_conformance, NULL, 0, -1, NULL, 0, NULL), 0);
}
END_TEST

int main(void)
{
    const spk_transport *vt = vt_nccl();
    if (!vt)
        spk_test_skip("NCCL transport not compiled in (no CUDA/NCCL at build time)");
    if (spk_transport_check_vtable(vt, "nccl") != SPK_OK) {
        fprintf(stderr, "nccl vtable invalid: %s\n", spk_last_error());
        return 1;
    }
    char why[256] = "";
    /* probe in a child: CUDA must not be initialised in the parent before fork */
    pid_t pid = fork();
    if (pid == 0)
        _exit(vt->probe(why, sizeof why) == SPK_OK ? 0 : (printf("SKIP: %s\n", why), fflush(stdout), 77));
    int wst = 0;
    waitpid(pid, &wst, 0);
    if (!WIFEXITED(wst) || WEXITSTATUS(wst) != 0)
        return SPK_TEST_SKIP;
    Suite *s = suite_create("transport_nccl");
    TCase *tc = tcase_create("conformance");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, nccl_passes_conformance_on_every_gpu);
    suite_add_tcase(s, tc);
    return spk_test_run(s);
}
