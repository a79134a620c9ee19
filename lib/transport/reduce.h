/*
 * Helpers shared by the transports (lib/transport/): element sizes, in-place sums of f32/f16/bf16
 * (accumulated in float per element), and the partition of a buffer into per-rank ring chunks.
 */
#ifndef SPK_TRANSPORT_REDUCE_H
#define SPK_TRANSPORT_REDUCE_H

#include <stddef.h>
#include <stdint.h>

#include "sparkinfer/transport.h"

/* Bytes per element of `dt`, or 0 for a type the transports do not reduce. */
size_t spk_tr_dtype_size(spk_transport_dtype dt);

/* acc[i] = acc[i] + in[i] for `count` elements (f16/bf16: summed in float, rounded once). */
void spk_tr_sum_into(void *acc, const void *in, size_t count, spk_transport_dtype dt);

/* out[i] = ins[0][i] + ins[1][i] + ... + ins[n-1][i], added in that order in float and rounded
 * once (so every rank that calls it with the same inputs gets the same bits). `out` may alias
 * one of the inputs. */
void spk_tr_sum_ordered(void *out, const void *const *ins, int n, size_t count,
                        spk_transport_dtype dt);

/* Partition `count` elements into `n` chunks: chunk i starts at *off and has *len elements.
 * The first count % n chunks get one extra element; chunks may be empty when count < n. */
void spk_tr_chunk(size_t count, int n, int i, size_t *off, size_t *len);

/* Split `bytes` into pieces of at most `piece` bytes: number of pieces (0 for bytes == 0). */
size_t spk_tr_n_pieces(size_t bytes, size_t piece);

#endif
