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
#include "net_bench.h"

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

int main(int argc, char **argv)
{
    int rank = 0, world = 2, local = 0;
    const char *coord = NULL, *transport = "auto";
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--rank")) rank = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--world")) world = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--local")) local = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--coordinator")) coord = argv[i + 1];
        else if (!strcmp(argv[i], "--transport")) transport = argv[i + 1];
        else {
            fprintf(stderr, "usage: spk-bench-net (--local N | --coordinator HOST:PORT --rank R --world N) "
                            "[--transport auto|tcp|nccl|verbs|PLUGIN.so]\n");
            return 2;
        }
    }
    if (!local)
        return world >= 2 ? run_rank(rank, world, coord, transport) : 2;
    if (local < 2 || local > 64)
        return 2;
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
