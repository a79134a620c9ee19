/* Cluster membership. Single-rank only for now: multi-rank comes with the cluster issue. */
#include "cluster/cluster.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/error.h"

struct spk_cluster {
    spk_cluster_config cfg;
};

spk_status spk_cluster_config_init(spk_cluster_config *cfg)
{
    if (!cfg)
        return spk_err(SPK_ERR_INVALID_ARG, "spk_cluster_config_init: cfg is NULL");
    memset(cfg, 0, sizeof *cfg);
    cfg->struct_size = sizeof *cfg;
    cfg->rank = -1;
    cfg->world_size = 0;
    cfg->transport = "auto";
    cfg->connect_timeout_ms = 30000;
    cfg->peer_timeout_ms = 10000;
    cfg->heartbeat_ms = 1000;
    return SPK_OK;
}

spk_status spk_cluster_open(const spk_cluster_config *cfg, spk_cluster **out)
{
    if (out)
        *out = NULL;
    if (!cfg || !out)
        return spk_err(SPK_ERR_INVALID_ARG, "spk_cluster_open: NULL argument");
    if (cfg->struct_size < offsetof(spk_cluster_config, n_threads) || cfg->struct_size > 4096)
        return spk_err(SPK_ERR_INVALID_ARG, "spk_cluster_open: bad struct_size %zu", cfg->struct_size);
    spk_cluster *c = calloc(1, sizeof *c);
    if (!c)
        return spk_err(SPK_ERR_NOMEM, "spk_cluster_open: out of memory");
    spk_cluster_config_init(&c->cfg);
    memcpy(&c->cfg, cfg, cfg->struct_size < sizeof c->cfg ? cfg->struct_size : sizeof c->cfg);
    c->cfg.struct_size = sizeof c->cfg;
    if (c->cfg.rank < 0)
        c->cfg.rank = 0;
    if (c->cfg.world_size <= 0)
        c->cfg.world_size = 1;
    if (c->cfg.world_size != 1 || c->cfg.rank != 0) {
        free(c);
        return spk_err(SPK_ERR_UNSUPPORTED, "spk_cluster_open: multi-rank clusters are not built yet");
    }
    if (c->cfg.n_threads < 0 || c->cfg.n_threads > 1024) {
        free(c);
        return spk_err(SPK_ERR_INVALID_ARG, "spk_cluster_open: n_threads %d out of range", cfg->n_threads);
    }
    if (c->cfg.n_threads == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        c->cfg.n_threads = n > 0 ? (int)n : 1;
    }
    *out = c;
    return SPK_OK;
}

spk_status spk_cluster_serve(spk_cluster *c)
{
    if (!c)
        return spk_err(SPK_ERR_INVALID_ARG, "spk_cluster_serve: cluster is NULL");
    return spk_err(SPK_ERR_STATE, "spk_cluster_serve: rank 0 is the driver and does not serve");
}

int spk_cluster_rank(const spk_cluster *c) { return c ? c->cfg.rank : -1; }
int spk_cluster_world_size(const spk_cluster *c) { return c ? c->cfg.world_size : -1; }
int spk_cluster_n_threads(const spk_cluster *c) { return c->cfg.n_threads; }

spk_status spk_cluster_close(spk_cluster *c)
{
    free(c);
    return SPK_OK;
}
