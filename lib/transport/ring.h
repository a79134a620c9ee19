/*
 * Collectives built on a transport's own sendrecv (lib/transport/): ring all-reduce
 * (reduce-scatter + all-gather) and ring all-gather, for transports without native collectives.
 */
#ifndef SPK_TRANSPORT_RING_H
#define SPK_TRANSPORT_RING_H

#include "sparkinfer/transport.h"

typedef spk_status (*spk_ring_sendrecv_fn)(void *ctx, int send_peer, const void *sbuf,
                                           size_t sbytes, int recv_peer, void *rbuf,
                                           size_t rbytes);

/* In-place sum of `count` elements over `world` ranks; `scratch` holds count/world+1 elements.
 * Chunk k (spk_tr_chunk) is reduced on rank k-1 and then passed around. */
spk_status spk_ring_allreduce(void *ctx, spk_ring_sendrecv_fn sr, int rank, int world, void *buf,
                              size_t count, spk_transport_dtype dt, void *scratch);

/* all[r*bpr..] = rank r's block; this rank's block must already be in place. */
spk_status spk_ring_allgather(void *ctx, spk_ring_sendrecv_fn sr, int rank, int world, void *all,
                              size_t bpr);

#endif
