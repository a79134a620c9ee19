/*
 * Local cluster launcher for the example programs: with --pp/--tp and no --coordinator, the
 * driver starts the extra ranks itself as spk-worker processes on loopback, with a fresh random
 * cluster key, and makes sure none outlives it (PR_SET_PDEATHSIG, kill on every exit path).
 */
#ifndef SPK_EXAMPLES_LAUNCH_H
#define SPK_EXAMPLES_LAUNCH_H

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <sparkinfer/sparkinfer.h>

#define EX_MAX_WORKERS 64

static pid_t ex_workers[EX_MAX_WORKERS];
static int ex_n_workers;

static void ex_kill_workers(void)
{
    for (int i = 0; i < ex_n_workers; i++)
        if (ex_workers[i] > 0)
            kill(ex_workers[i], SIGKILL);
}

static void ex_on_signal(int sig)
{
    ex_kill_workers();
    signal(sig, SIG_DFL);
    raise(sig);
}

/* Wait up to timeout_ms for the workers to exit by themselves, then kill and reap the rest. */
static inline void ex_reap_workers(int timeout_ms)
{
    for (int waited = 0;; waited += 20) {
        int left = 0;
        for (int i = 0; i < ex_n_workers; i++) {
            if (ex_workers[i] <= 0)
                continue;
            if (waitpid(ex_workers[i], NULL, WNOHANG) == ex_workers[i])
                ex_workers[i] = 0;
            else
                left++;
        }
        if (!left)
            break;
        if (waited >= timeout_ms) {
            ex_kill_workers();
            for (int i = 0; i < ex_n_workers; i++)
                if (ex_workers[i] > 0)
                    waitpid(ex_workers[i], NULL, 0);
            break;
        }
        usleep(20000);
    }
    ex_n_workers = 0;
}

/* A free TCP port on 127.0.0.1 (bound, read and released: a small race, fine for a demo). */
static int ex_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    int port = -1;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 && getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

/*
 * Open the driver side of a world-rank cluster on loopback and start ranks 1..world-1 as
 * spk-worker processes (found next to this program). Returns the cluster or NULL (message on
 * stderr). `threads` is per rank.
 */
static inline spk_cluster *ex_launch_with(const char *worker, int world, int threads, const char *transport,
                                   int peer_timeout_ms);

static inline spk_cluster *ex_launch_local(int world, int threads, const char *transport)
{
    char self[4096], worker[4200];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) {
        fprintf(stderr, "launch: cannot find this program's directory\n");
        return NULL;
    }
    self[n] = '\0';
    snprintf(worker, sizeof worker, "%s/spk-worker", dirname(self));
    return ex_launch_with(worker, world, threads, transport, 0);
}

/* As ex_launch_local with an explicit spk-worker path; peer_timeout_ms 0: the default. */
static inline spk_cluster *ex_launch_with(const char *worker, int world, int threads, const char *transport,
                                   int peer_timeout_ms)
{
    char coord[64], key[65], rank_s[16], world_s[16], threads_s[16], pto_s[16];
    if (world > EX_MAX_WORKERS) {
        fprintf(stderr, "launch: at most %d ranks\n", EX_MAX_WORKERS);
        return NULL;
    }
    if (access(worker, X_OK) != 0) {
        fprintf(stderr, "launch: %s: %s\n", worker, strerror(errno));
        return NULL;
    }
    int port = ex_free_port();
    unsigned char rnd[32];
    int fd = open("/dev/urandom", O_RDONLY);
    if (port < 0 || fd < 0 || read(fd, rnd, sizeof rnd) != (ssize_t)sizeof rnd) {
        if (fd >= 0)
            close(fd);
        fprintf(stderr, "launch: no free port or no randomness\n");
        return NULL;
    }
    close(fd);
    for (int i = 0; i < 32; i++)
        snprintf(key + 2 * i, 3, "%02x", rnd[i]);
    snprintf(coord, sizeof coord, "127.0.0.1:%d", port);
    snprintf(world_s, sizeof world_s, "%d", world);
    snprintf(threads_s, sizeof threads_s, "%d", threads);
    snprintf(pto_s, sizeof pto_s, "%d", peer_timeout_ms > 0 ? peer_timeout_ms : 10000);
    signal(SIGINT, ex_on_signal);
    signal(SIGTERM, ex_on_signal);
    signal(SIGHUP, ex_on_signal);
    atexit(ex_kill_workers);
    for (int r = 1; r < world; r++) {
        snprintf(rank_s, sizeof rank_s, "%d", r);
        pid_t pid = fork();
        if (pid == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            setenv("SPK_CLUSTER_KEY", key, 1);
            char *args[] = {(char *)worker, "--coordinator", coord, "--rank", rank_s, "--world", world_s,
                            "--threads", threads_s, "--transport", (char *)(transport ? transport : "auto"),
                            "--peer-timeout", pto_s, NULL};
            execv(worker, args);
            _exit(127);
        }
        if (pid < 0) {
            fprintf(stderr, "launch: fork: %s\n", strerror(errno));
            ex_kill_workers();
            ex_reap_workers(0);
            return NULL;
        }
        ex_workers[ex_n_workers++] = pid;
    }
    spk_cluster_config cc;
    spk_cluster_config_init(&cc);
    cc.rank = 0;
    cc.world_size = world;
    cc.coordinator = coord;
    cc.cluster_key = key;
    cc.n_threads = threads;
    cc.transport = transport ? transport : "auto";
    if (peer_timeout_ms > 0)
        cc.peer_timeout_ms = peer_timeout_ms;
    spk_cluster *cl = NULL;
    spk_status st = spk_cluster_open(&cc, &cl);
    if (st != SPK_OK) {
        fprintf(stderr, "launch: cluster: %s: %s\n", spk_status_str(st), spk_last_error());
        ex_kill_workers();
        ex_reap_workers(0);
        return NULL;
    }
    return cl;
}

/*
 * The driver's cluster for an example program: with world > 1 and no coordinator, local workers
 * started here (threads per rank, at least 1); otherwise rank 0 of `world` ranks at
 * `coordinator` (NULL: one process, or SPK_COORDINATOR). NULL on failure (message on stderr).
 */
static inline spk_cluster *ex_open_cluster(int world, int threads, const char *coordinator, const char *transport)
{
    if (world > 1 && !coordinator)
        return ex_launch_local(world, threads > 0 ? threads : 1, transport ? transport : "tcp");
    spk_cluster_config cc;
    spk_cluster_config_init(&cc);
    cc.n_threads = threads;
    cc.rank = 0;
    cc.world_size = world;
    cc.coordinator = coordinator;
    if (transport)
        cc.transport = transport;
    spk_cluster *cl = NULL;
    spk_status st = spk_cluster_open(&cc, &cl);
    if (st != SPK_OK) {
        fprintf(stderr, "cluster: %s: %s\n", spk_status_str(st), spk_last_error());
        return NULL;
    }
    return cl;
}

#endif
