/* Ring collectives over a sendrecv primitive. */
#include "transport/ring.h"

#include <stdint.h>

#include "transport/reduce.h"

static int mod(int a, int n)
{
    return ((a % n) + n) % n;
}

spk_status spk_ring_allreduce(void *ctx, spk_ring_sendrecv_fn sr, int rank, int world, void *buf,
                              size_t count, spk_transport_dtype dt, void *scratch)
{
    size_t esz = spk_tr_dtype_size(dt);
    uint8_t *b = buf;
    int right = mod(rank + 1, world), left = mod(rank - 1, world);
    spk_status st = SPK_OK;
    for (int s = 0; s < world - 1 && st == SPK_OK; s++) {
        size_t so, sl, ro, rl;
        spk_tr_chunk(count, world, mod(rank - s, world), &so, &sl);
        spk_tr_chunk(count, world, mod(rank - s - 1, world), &ro, &rl);
        st = sr(ctx, right, b + so * esz, sl * esz, left, scratch, rl * esz);
        if (st == SPK_OK)
            spk_tr_sum_into(b + ro * esz, scratch, rl, dt);
    }
    for (int s = 0; s < world - 1 && st == SPK_OK; s++) {
        size_t so, sl, ro, rl;
        spk_tr_chunk(count, world, mod(rank + 1 - s, world), &so, &sl);
        spk_tr_chunk(count, world, mod(rank - s, world), &ro, &rl);
        st = sr(ctx, right, b + so * esz, sl * esz, left, b + ro * esz, rl * esz);
    }
    return st;
}

spk_status spk_ring_allgather(void *ctx, spk_ring_sendrecv_fn sr, int rank, int world, void *all,
                              size_t bpr)
{
    uint8_t *a = all;
    int right = mod(rank + 1, world), left = mod(rank - 1, world);
    spk_status st = SPK_OK;
    for (int s = 0; s < world - 1 && st == SPK_OK; s++)
        st = sr(ctx, right, a + (size_t)mod(rank - s, world) * bpr, bpr, left,
                a + (size_t)mod(rank - s - 1, world) * bpr, bpr);
    return st;
}
