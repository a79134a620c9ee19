/*
 * spk-bench-net: point-to-point latency and bandwidth, and all-reduce time, 4 KiB to 64 MiB,
 * over the transport a cluster connects (BENCHMARKS.md section 5), printed like nccl-tests.
 *
 *   on each node:  spk-bench-net --coordinator HOST:PORT --rank R --world N [--transport T]
 *   on one box:    spk-bench-net --local N [--transport T]     (starts ranks 1..N-1 itself)
 *
 * The cluster key comes from SPK_CLUSTER_KEY (required off loopback). Rank 0 prints the table.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cluster/cluster.h"
#include "common.h"
#include "net_bench.h"

#define P "spk-bench-net"

static int run_rank(int rank, int world, const char *coord, const char *transport)
{
    spk_cluster_config cc;
    spk_cluster_config_init(&cc);
    cc.rank = rank;
    cc.world_size = world;
    cc.coordinator = coord;
    cc.transport = transport;
    spk_cluster *c = NULL;
    spk_status st = spk_cluster_open(&cc, &c);
    if (st != SPK_OK) {
        fprintf(stderr, "spk-bench-net: rank %d: %s: %s\n", rank, spk_status_str(st), spk_last_error());
        return 1;
    }
    const spk_transport *vt = NULL;
    spk_transport_comm *comm = spk_cluster_transport(c, &vt);
    int rc = comm ? bench(vt, comm) : 1;
    if (!comm)
        fprintf(stderr, "spk-bench-net: rank %d: no transport connected\n", rank);
    spk_cluster_close(c);
    return rc;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: spk-bench-net (--local N | --coordinator HOST:PORT --rank R --world N)\n"
               "                     [--transport auto|tcp|nccl|verbs|PLUGIN.so]\n"
               "Point-to-point latency/bandwidth and all-reduce time, 4 KiB to 64 MiB; rank 0 prints the table.\n"
               "The cluster key comes from SPK_CLUSTER_KEY (required off loopback).\n");
}

int main(int argc, char **argv)
{
    int rank = 0, world = 2, local = 0;
    const char *coord = NULL, *transport = "auto";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { usage(stdout); return 0; }
        else if (!v) { fprintf(stderr, P ": %s needs a value\n", a); usage(stderr); return 2; }
        else if (!strcmp(a, "--rank")) bad = ex_parse_int(P, a, v, 0, 63, &rank);
        else if (!strcmp(a, "--world")) bad = ex_parse_int(P, a, v, 2, 64, &world);
        else if (!strcmp(a, "--local")) bad = ex_parse_int(P, a, v, 2, 64, &local);
        else if (!strcmp(a, "--coordinator")) coord = v;
        else if (!strcmp(a, "--transport")) transport = v;
        else { fprintf(stderr, P ": unknown option %s\n", a); usage(stderr); return 2; }
        if (bad)
            return 2;
        i++;
    }
    if (!local && rank >= world) {
        fprintf(stderr, P ": --rank %d is not below --world %d\n", rank, world);
        return 2;
    }
    if (!local)
        return world >= 2 ? run_rank(rank, world, coord, transport) : 2;
    static char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", 29900 + (int)(getpid() % 90));
    pid_t kids[64];
    for (int r = 1; r < local; r++) {
        kids[r] = fork();
        if (kids[r] == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            _exit(run_rank(r, local, addr, transport));
        }
    }
    int rc = run_rank(0, local, addr, transport);
    for (int r = 1; r < local; r++) {
        int ws = 0;
        waitpid(kids[r], &ws, 0);
        rc |= !WIFEXITED(ws) || WEXITSTATUS(ws) != 0;
    }
    return rc;
}
