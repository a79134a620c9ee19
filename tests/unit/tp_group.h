/* tests' in-process tensor-parallel group: threads of one process stand for the ranks of a TP
 * group, and this all-reduce (the shard's allreduce hook) sums their buffers. */
#ifndef SPK_TEST_TP_GROUP_H
#define SPK_TEST_TP_GROUP_H

#include <pthread.h>
#include <string.h>

#include "sparkinfer/sparkinfer.h"

/* In-process all-reduce for one TP group: ordered sum, the same bits on every member. */
typedef struct group {
    pthread_barrier_t bar;
    int tp;
    float *bufs[8];
    float *sum;
} group;

typedef struct member {
    group *g;
    int t;
} member;

static spk_status ar(void *ctx, float *buf, size_t n)
{
    member *m = ctx;
    group *g = m->g;
    g->bufs[m->t] = buf;
    pthread_barrier_wait(&g->bar);
    if (m->t == 0)
        for (size_t i = 0; i < n; i++) {
            float s = 0;
            for (int r = 0; r < g->tp; r++)
                s += g->bufs[r][i];
            g->sum[i] = s;
        }
    pthread_barrier_wait(&g->bar);
    memcpy(buf, g->sum, n * sizeof(float));
    pthread_barrier_wait(&g->bar);
    return SPK_OK;
}

#endif
