/* Rank, world size and coordinator from the environment: SPK_* first, then what a launcher
 * (Open MPI's mpirun, a PMI launcher such as MPICH's or srun --mpi=pmi2, Slurm's srun) sets. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster/cluster_internal.h"
#include "common/error.h"

typedef struct launcher {
    const char *name, *rank_var, *size_var, *size_var2;
} launcher;

/* In order: mpirun inside a Slurm allocation sets OMPI_* and also inherits the allocation's
 * SLURM_* (with SLURM_PROCID 0), so Open MPI goes first; srun --mpi=pmi2 sets both PMI_* and
 * SLURM_*, which agree. Slurm's size is the step's task count when srun set it. */
static const launcher k_launchers[] = {
    {"Open MPI", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", NULL},
    {"PMI", "PMI_RANK", "PMI_SIZE", NULL},
    {"Slurm", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS"},
};

/* A whole decimal int from variable `name`: *set 0 if unset or empty. */
static spk_status env_int(const char *name, int *out, int *set)
{
    const char *s = getenv(name);
    *set = 0;
    if (!s || !*s)
        return SPK_OK;
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (*end || errno || v < INT_MIN || v > INT_MAX)
        return spk_err(SPK_ERR_INVALID_ARG, "%s=\"%s\" is not an integer", name, s);
    *out = (int)v;
    *set = 1;
    return SPK_OK;
}

spk_status spk_cluster_launch_env(spk_launch_env *e)
{
    int v, set;
    spk_status st;
    const launcher *L = NULL;
    for (size_t i = 0; i < sizeof k_launchers / sizeof k_launchers[0] && !L; i++) {
        const char *r = getenv(k_launchers[i].rank_var);
        if (r && *r)
            L = &k_launchers[i];
    }
    if (e->rank < 0) {
        if ((st = env_int("SPK_RANK", &v, &set)) != SPK_OK)
            return st;
        if (set) {
            e->rank = v, e->rank_from = "SPK_RANK";
        } else if (L) {
            if ((st = env_int(L->rank_var, &v, &set)) != SPK_OK)
                return st;
            e->rank = v, e->rank_from = L->rank_var;
        } else {
            e->rank = 0, e->rank_from = "default";
        }
    }
    if (e->world_size <= 0) {
        if ((st = env_int("SPK_WORLD_SIZE", &v, &set)) != SPK_OK)
            return st;
        if (set) {
            e->world_size = v, e->world_from = "SPK_WORLD_SIZE";
        } else if (L) {
            const char *var = L->size_var;
            if ((st = env_int(var, &v, &set)) == SPK_OK && !set && L->size_var2)
                st = env_int(var = L->size_var2, &v, &set);
            if (st != SPK_OK)
                return st;
            if (!set)
                return spk_err(SPK_ERR_INVALID_ARG,
                               "%s=%s names this process's rank under %s, but %s%s%s is not set: "
                               "set SPK_WORLD_SIZE", L->rank_var, getenv(L->rank_var), L->name,
                               L->size_var, L->size_var2 ? " or " : "",
                               L->size_var2 ? L->size_var2 : "");
            e->world_size = v, e->world_from = var;
        } else {
            e->world_size = 1, e->world_from = "default";
        }
    }
    if (!e->coordinator[0]) {
        const char *c = getenv("SPK_COORDINATOR");
        const char *addr = getenv("MASTER_ADDR"), *port = getenv("MASTER_PORT");
        int n;
        if (c && *c) {
            n = snprintf(e->coordinator, sizeof e->coordinator, "%s", c);
            e->coord_from = "SPK_COORDINATOR";
        } else if (addr && *addr) {
            if (!port || !*port)
                port = "29500";
            const int v6 = strchr(addr, ':') && addr[0] != '[';
            n = snprintf(e->coordinator, sizeof e->coordinator, "%s%s%s:%s", v6 ? "[" : "", addr,
                         v6 ? "]" : "", port);
            e->coord_from = "MASTER_ADDR/MASTER_PORT";
        } else {
            n = snprintf(e->coordinator, sizeof e->coordinator, "127.0.0.1:29500");
            e->coord_from = "default";
        }
        if (n < 0 || (size_t)n >= sizeof e->coordinator) {
            e->coordinator[0] = '\0';
            return spk_err(SPK_ERR_INVALID_ARG, "coordinator address from %s too long (%d bytes, "
                           "at most %zu)", e->coord_from, n, sizeof e->coordinator - 1);
        }
    }
    if (L && (e->rank_from == L->rank_var || e->world_from == L->size_var ||
              (L->size_var2 && e->world_from == L->size_var2)))
        spk_log(SPK_LOG_INFO, "launched by %s: rank %d (%s) of %d (%s), coordinator %s (%s)",
                L->name, e->rank, e->rank_from, e->world_size, e->world_from, e->coordinator,
                e->coord_from);
    return SPK_OK;
}
