/*
 * Bridge to the transports: the spk_transport_bootstrap interface over the control plane, and
 * selecting plus connecting the configured transport at open so that all ranks agree on it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster/cluster_internal.h"
#include "common/error.h"

#define NAME_BYTES 64

static spk_status bs_allgather(void *ctx, const void *mine, void *all, size_t bytes_per_rank,
                               int timeout_ms)
{
    return spk_cluster_allgather(ctx, mine, all, bytes_per_rank, timeout_ms);
}

static spk_status bs_barrier(void *ctx, int timeout_ms)
{
    return spk_cluster_barrier(ctx, timeout_ms);
}

const spk_transport_bootstrap *spk_cluster_bootstrap(spk_cluster *c)
{
    if (!c)
        return NULL;
    c->bs.struct_size = sizeof c->bs;
    c->bs.rank = c->rank;
    c->bs.world_size = c->world;
    c->bs.ctx = c;
    c->bs.allgather = bs_allgather;
    c->bs.barrier = bs_barrier;
    c->bs.cluster_nonce = c->world > 1 ? c->cluster_nonce : NULL;
    c->bs.cluster_nonce_len = c->world > 1 ? sizeof c->cluster_nonce : 0;
    c->bs.local_addr = c->local_addr[0] ? c->local_addr : NULL;
    return &c->bs;
}

spk_transport_comm *spk_cluster_transport(const spk_cluster *c, const spk_transport **vt)
{
    if (vt)
        *vt = c ? c->th.vt : NULL;
    return c ? c->comm : NULL;
}

spk_status spk_cluster_transport_connect(spk_cluster *c)
{
    /* "none": control plane only (every rank must say so; tests and control-only users). */
    if (c->world == 1 || strcmp(c->transport_name, "none") == 0)
        return SPK_OK;
    const spk_transport_bootstrap *bs = spk_cluster_bootstrap(c);
    /* Every rank picks, then all compare: "auto" may resolve differently on different boxes. */
    char mine[NAME_BYTES] = {0}, why[512] = "";
    spk_status sel = spk_transport_select(c->transport_name, SPK_TRANSPORT_MEM_HOST, &c->th);
    if (sel == SPK_OK)
        snprintf(mine, sizeof mine, "%s", c->th.vt->name);
    else
        snprintf(why, sizeof why, "%s", spk_err_msg());
    char *names = calloc((size_t)c->world, NAME_BYTES);
    if (!names) {
        spk_transport_release(&c->th);
        return spk_err(SPK_ERR_NOMEM, "transport selection: out of memory");
    }
    spk_status st = spk_cluster_allgather(c, mine, names, NAME_BYTES, -1);
    if (st != SPK_OK) {
        free(names);
        spk_transport_release(&c->th);
        return spk_err_prefix(st, "transport selection");
    }
    int agree = 1, any_failed = 0;
    for (int r = 0; r < c->world; r++) {
        names[(size_t)r * NAME_BYTES + NAME_BYTES - 1] = '\0';
        if (!names[(size_t)r * NAME_BYTES])
            any_failed = 1;
        if (strcmp(names + (size_t)r * NAME_BYTES, names) != 0)
            agree = 0;
    }
    const int is_auto = strcmp(c->transport_name, "auto") == 0;
    if ((!agree || any_failed) && is_auto && !any_failed) {
        /* The same decision on every rank from the same gathered names: fall back to TCP. */
        spk_transport_release(&c->th);
        sel = spk_transport_select("tcp", SPK_TRANSPORT_MEM_HOST, &c->th);
        agree = sel == SPK_OK;
        if (!agree)
            snprintf(why, sizeof why, "%s", spk_err_msg());
        spk_log(SPK_LOG_INFO, "cluster: ranks picked different transports for \"auto\"; using tcp");
    }
    if (!agree || any_failed) {
        char list[1024] = "";
        size_t off = 0;
        for (int r = 0; r < c->world && off + 80 < sizeof list; r++) {
            const char *n = names + (size_t)r * NAME_BYTES;
            off += (size_t)snprintf(list + off, sizeof list - off, "%srank %d: %s", r ? ", " : "",
                                    r, *n ? n : "none");
        }
        free(names);
        spk_transport_release(&c->th);
        if (sel != SPK_OK)
            return spk_err(sel, "transport \"%s\" on rank %d: %s (%s)", c->transport_name, c->rank,
                           why, list);
        return spk_err(SPK_ERR_UNSUPPORTED, "transport \"%s\": the ranks do not agree (%s)",
                       c->transport_name, list);
    }
    free(names);
    spk_transport_init_params p;
    spk_transport_params_init(&p, bs, c->cfg.connect_timeout_ms);
    if (c->cfg.unauthenticated_data)
        p.options = "data_auth=0"; /* transports without data MACs ignore it */
    spk_transport_comm *comm = NULL;
    st = c->th.vt->init(&p, &comm);
    if (st != SPK_OK) {
        spk_err_prefix(st, "transport \"%s\" init on rank %d", c->th.vt->name, c->rank);
        spk_transport_release(&c->th);
        return st;
    }
    pthread_mutex_lock(&c->mu);
    c->comm = comm;
    pthread_mutex_unlock(&c->mu);
    spk_log(SPK_LOG_INFO, "cluster: rank %d connected transport \"%s\"", c->rank, c->th.vt->name);
    return SPK_OK;
}

void spk_cluster_transport_close(spk_cluster *c)
{
    pthread_mutex_lock(&c->mu);
    spk_transport_comm *comm = c->comm;
    c->comm = NULL;
    pthread_mutex_unlock(&c->mu);
    if (comm)
        c->th.vt->finalize(comm);
    spk_transport_release(&c->th);
}
