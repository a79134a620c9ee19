/*
 * Choosing pp x tp for a cluster: measure this machine's memory bandwidth and the control link
 * to rank 1, then ask the cost model (lib/plan/cost.h) for the best layout.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cluster/cluster.h"
#include "common/error.h"
#include "engine/exec.h"
#include "plan/cost.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* This machine's memory bandwidth (GB/s) from a 32 MiB copy, best of three. */
static double measure_mem_bw(void)
{
    const size_t n = 32u << 20;
    char *a = malloc(n), *b = malloc(n);
    double best = 0;
    if (a && b) {
        memset(a, 1, n);
        memset(b, 2, n);
        for (int i = 0; i < 3; i++) {
            double t = now_s();
            memcpy(b, a, n);
            t = now_s() - t;
            double bw = 2.0 * (double)n / t / 1e9; /* read + write */
            best = bw > best ? bw : best;
            a[i] = b[n - 1 - (size_t)i];
        }
    }
    free(a);
    free(b);
    return best > 0 ? best : 10.0;
}

spk_status spk_exec_choose_layout(spk_cluster *c, const spk_shape *shape, int batch, spk_hw *hw_out, int *pp,
                                  int *tp, int *ep)
{
    const int world = c ? spk_cluster_world_size(c) : 1;
    spk_hw hw;
    spk_hw_init(&hw);
    hw.mem_bw_GBps = measure_mem_bw();
    hw.tflops = 0.1 * spk_cluster_n_threads(c); /* a CPU core does ~50-100 GFLOP/s of int8 dot products */
    hw.step_overhead_us = 200;                  /* CPU: thread dispatch, control message per step */
    hw.act_bytes = 4;                           /* hidden states and all-reduces travel as F32 */
    if (world > 1) {
        /* latency: small round trips to rank 1; bandwidth: a 4 MiB echo (it crosses twice) */
        static char small[64];
        double best_rtt = 1e9, best_bw = 0;
        for (int i = 0; i < 5; i++) {
            double t = now_s();
            spk_status st = spk_cluster_call(c, 1, SPK_CLUSTER_CMD_PING, small, sizeof small, NULL, NULL, 10000);
            if (st != SPK_OK)
                return spk_err_prefix(st, "measuring the link to rank 1");
            t = now_s() - t;
            best_rtt = t < best_rtt ? t : best_rtt;
        }
        const size_t big = 4u << 20;
        char *buf = calloc(1, big);
        if (!buf)
            return spk_err(SPK_ERR_NOMEM, "out of memory");
        for (int i = 0; i < 2; i++) {
            double t = now_s();
            spk_status st = spk_cluster_call(c, 1, SPK_CLUSTER_CMD_PING, buf, big, NULL, NULL, 30000);
            t = now_s() - t;
            if (st != SPK_OK) {
                free(buf);
                return spk_err_prefix(st, "measuring the link to rank 1");
            }
            double bw = 2.0 * (double)big * 8 / t / 1e9;
            best_bw = bw > best_bw ? bw : best_bw;
        }
        free(buf);
        hw.link_latency_us = best_rtt / 2 * 1e6;
        hw.link_Gbps = best_bw;
        hw.allreduce_latency_us = best_rtt * 1e6; /* two ranks: one exchange */
        hw.allreduce_busbw_GBps = best_bw / 8;
    }
    if (hw_out)
        *hw_out = hw;
    if (ep)
        *ep = 1;
    if (world == 1) {
        *pp = *tp = 1;
        return SPK_OK;
    }
    spk_status st = spk_plan_choose(shape, world, batch, &hw, pp, tp, ep);
    if (st == SPK_OK)
        spk_log(SPK_LOG_INFO, "planner: measured %.1f GB/s memory, link %.2f Gb/s, %.0f us latency: pp %d x tp %d%s "
                "for batch %d", hw.mem_bw_GBps, hw.link_Gbps, hw.link_latency_us, *pp, *tp,
                ep && *ep > 1 ? " + ep" : "", batch);
    return st;
}
