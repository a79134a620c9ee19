/*
 * Transport benchmark (spk-bench-net, and test_transport_tcp --bench): p2p ping-pong latency,
 * p2p streaming bandwidth between ranks 0 and 1, and all-reduce (f32 sum) time, 4 KiB .. 64 MiB,
 * printed like nccl-tests (algbw = bytes/time; busbw = algbw * 2(n-1)/n for all-reduce).
 */
#ifndef SPK_EXAMPLES_NET_BENCH_H
#define SPK_EXAMPLES_NET_BENCH_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <sparkinfer/transport.h>

/* Where a failing call's detail comes from (the test harness has its own). */
#ifndef NET_BENCH_ERRMSG
#define NET_BENCH_ERRMSG spk_last_error()
#endif

static inline double nb_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

static inline int bench_iters(size_t bytes)
{
    if (bytes <= (64 << 10))
        return 200;
    if (bytes <= (1 << 20))
        return 40;
    return 6;
}

static inline int bench(const spk_transport *vt, spk_transport_comm *c)
{
    int r = vt->rank(c), w = vt->world_size(c);
    const size_t max = (size_t)64 << 20;
    uint8_t *buf = calloc(max, 1), *tmp = calloc(max, 1);
    if (!buf || !tmp)
        return 1;
    if (r == 0) {
        printf("# transport %s, %d ranks; p2p between ranks 0 and 1, all-reduce f32 sum\n", vt->name, w);
        printf("# %10s %12s %12s %12s %12s %12s\n", "size(B)", "p2p-lat(us)", "p2p-bw(GB/s)",
               "ar-time(us)", "ar-algbw", "ar-busbw");
    }
    for (size_t bytes = 4096; bytes <= max; bytes *= 4) {
        int it = bench_iters(bytes);
        spk_status st = SPK_OK;
        double lat = 0, bw = 0;
        vt->barrier(c, -1);
        if (r <= 1 && w >= 2) {
            int peer = 1 - r;
            /* ping-pong: one-way latency = round trip / 2 */
            for (int k = 0; k < 2 && st == SPK_OK; k++) /* warm-up */
                st = r == 0 ? vt->send(c, peer, buf, bytes, SPK_TRANSPORT_MEM_HOST, -1)
                            : vt->recv(c, peer, buf, bytes, SPK_TRANSPORT_MEM_HOST, -1);
            if (st == SPK_OK)
                st = r == 1 ? vt->send(c, peer, buf, 1, SPK_TRANSPORT_MEM_HOST, -1)
                            : vt->recv(c, peer, buf, 1, SPK_TRANSPORT_MEM_HOST, -1);
            double t0 = nb_now_ms();
            for (int i = 0; i < it && st == SPK_OK; i++) {
                if (r == 0) {
                    st = vt->send(c, peer, buf, bytes, SPK_TRANSPORT_MEM_HOST, -1);
                    if (st == SPK_OK)
                        st = vt->recv(c, peer, buf, bytes, SPK_TRANSPORT_MEM_HOST, -1);
                } else {
                    st = vt->recv(c, peer, buf, bytes, SPK_TRANSPORT_MEM_HOST, -1);
                    if (st == SPK_OK)
                        st = vt->send(c, peer, buf, bytes, SPK_TRANSPORT_MEM_HOST, -1);
                }
            }
            lat = (nb_now_ms() - t0) * 1e3 / it / 2;
            /* streaming: rank 0 sends `it` messages back to back, rank 1 acks at the end */
            t0 = nb_now_ms();
            for (int i = 0; i < it && st == SPK_OK; i++)
                st = r == 0 ? vt->send(c, peer, buf, bytes, SPK_TRANSPORT_MEM_HOST, -1)
                            : vt->recv(c, peer, buf, bytes, SPK_TRANSPORT_MEM_HOST, -1);
            if (st == SPK_OK)
                st = r == 1 ? vt->send(c, peer, buf, 1, SPK_TRANSPORT_MEM_HOST, -1)
                            : vt->recv(c, peer, buf, 1, SPK_TRANSPORT_MEM_HOST, -1);
            bw = (double)bytes * it / ((nb_now_ms() - t0) * 1e-3) / 1e9;
        }
        if (st != SPK_OK) {
            fprintf(stderr, "bench p2p %zu bytes: status %d: %s\n", bytes, st, NET_BENCH_ERRMSG);
            return 1;
        }
        vt->barrier(c, -1);
        size_t count = bytes / 4;
        st = vt->allreduce(c, buf, count, SPK_TRANSPORT_F32, SPK_TRANSPORT_MEM_HOST, -1);
        double t0 = nb_now_ms();
        for (int i = 0; i < it && st == SPK_OK; i++)
            st = vt->allreduce(c, buf, count, SPK_TRANSPORT_F32, SPK_TRANSPORT_MEM_HOST, -1);
        double us = (nb_now_ms() - t0) * 1e3 / it;
        if (st != SPK_OK) {
            fprintf(stderr, "bench allreduce %zu bytes: status %d: %s\n", bytes, st, NET_BENCH_ERRMSG);
            return 1;
        }
        double algbw = (double)bytes / (us * 1e-6) / 1e9;
        if (r == 0)
            printf("  %10zu %12.1f %12.3f %12.1f %12.3f %12.3f\n", bytes, lat, bw, us, algbw,
                   algbw * 2 * (w - 1) / w);
        fflush(stdout);
    }
    /* the TP message of an 8B model at batch 1: 8 KiB */
    int it = 1000;
    spk_status st = SPK_OK;
    vt->barrier(c, -1);
    double t0 = nb_now_ms();
    for (int i = 0; i < it && st == SPK_OK; i++)
        st = vt->allreduce(c, buf, 8192 / 2, SPK_TRANSPORT_BF16, SPK_TRANSPORT_MEM_HOST, -1);
    double us = (nb_now_ms() - t0) * 1e3 / it;
    if (r == 0)
        printf("# all-reduce 8 KiB (4096 x bf16), %d ranks: %.1f us per call (mean of %d)\n", w, us, it);
    free(buf);
    free(tmp);
    return st == SPK_OK ? 0 : 1;
}

#endif
