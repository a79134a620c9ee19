/*
 * Cluster membership: bootstrap, authenticated control plane, heartbeats (lib/cluster/).
 * This header is what the rest of the library may use of a cluster.
 */
#ifndef SPK_CLUSTER_CLUSTER_H
#define SPK_CLUSTER_CLUSTER_H

#include "sparkinfer/sparkinfer.h"

/* Compute threads configured for this rank (>= 1). */
int spk_cluster_n_threads(const spk_cluster *c);

#endif
