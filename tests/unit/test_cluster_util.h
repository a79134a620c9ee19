/*
 * Helpers for the multi-process cluster tests: free ports, forked worker ranks with test
 * handlers, waiting for children with a deadline, log capture. Header-only (static functions)
 * so each test_cluster*.c program stays one translation unit plus testutil.c.
 */
#ifndef SPK_TEST_CLUSTER_UTIL_H
#define SPK_TEST_CLUSTER_UTIL_H

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cluster/cluster.h"
#include "common/error.h"
#include "testutil.h"

#define T_CONNECT_MS 8000
#define T_PEER_MS 1500
#define T_HB_MS 200
/* A cluster key of the accepted length (the library refuses keys under 16 bytes). */
#define T_KEY "test-cluster-key-0123456789abcdef"

#define CMD_ADD (SPK_CLUSTER_CMD_USER + 0)  /* u32 x -> u32 x + 1000 * rank */
#define CMD_FAIL (SPK_CLUSTER_CMD_USER + 1) /* always fails with SPK_ERR_IO */
#define CMD_COLL (SPK_CLUSTER_CMD_USER + 2) /* allgather, barrier, transport all-reduce */
#define COLL_FLOATS 1000

static inline int64_t t_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline void t_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* A loopback port nobody listens on right now. */
static inline int t_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0)
        return 29500 + (int)(getpid() % 1000);
    int port = ntohs(a.sin_port);
    close(fd);
    return port;
}

static inline void t_config(spk_cluster_config *cfg, const char *coord, int rank, int world,
                            const char *key)
{
    spk_cluster_config_init(cfg);
    cfg->coordinator = coord;
    cfg->rank = rank;
    cfg->world_size = world;
    cfg->cluster_key = key;
    cfg->n_threads = 1;
    cfg->connect_timeout_ms = T_CONNECT_MS;
    cfg->peer_timeout_ms = T_PEER_MS;
    cfg->heartbeat_ms = T_HB_MS;
}

static inline spk_status h_add(spk_cluster *c, uint32_t cmd, const void *data, size_t len,
                        spk_cluster_reply *reply, void *user)
{
    uint32_t x;
    if (len != sizeof x)
        return SPK_ERR_INVALID_ARG;
    memcpy(&x, data, sizeof x);
    x += 1000u * (uint32_t)spk_cluster_rank(c);
    return spk_cluster_reply_set(reply, &x, sizeof x);
}

static inline spk_status h_fail(spk_cluster *c, uint32_t cmd, const void *data, size_t len,
                         spk_cluster_reply *reply, void *user)
{
    return spk_err(SPK_ERR_IO, "handler failed on purpose on rank %d", spk_cluster_rank(c));
}

/* The collective part every rank runs for CMD_COLL; returns 0 if all results were right. */
static inline int t_collectives(spk_cluster *c, uint32_t *gathered)
{
    int world = spk_cluster_world_size(c), rank = spk_cluster_rank(c);
    uint32_t mine = 100u + (uint32_t)rank;
    if (spk_cluster_allgather(c, &mine, gathered, sizeof mine, -1) != SPK_OK)
        return 1;
    for (int r = 0; r < world; r++)
        if (gathered[r] != 100u + (uint32_t)r)
            return 2;
    if (spk_cluster_barrier(c, -1) != SPK_OK)
        return 3;
    const spk_transport *vt = NULL;
    spk_transport_comm *comm = spk_cluster_transport(c, &vt);
    if (!comm || !vt)
        return 4;
    if (vt->rank(comm) != rank || vt->world_size(comm) != world)
        return 5;
    float *x = malloc(COLL_FLOATS * sizeof *x);
    for (int i = 0; i < COLL_FLOATS; i++)
        x[i] = (float)(rank + 1) * (float)(i % 7 + 1);
    spk_status st = vt->allreduce(comm, x, COLL_FLOATS, SPK_TRANSPORT_F32, SPK_TRANSPORT_MEM_HOST,
                                  5000);
    int bad = st != SPK_OK;
    float tri = (float)(world * (world + 1) / 2);
    for (int i = 0; i < COLL_FLOATS && !bad; i++)
        if (x[i] != tri * (float)(i % 7 + 1))
            bad = 1;
    free(x);
    return bad ? 6 : 0;
}

static inline spk_status h_coll(spk_cluster *c, uint32_t cmd, const void *data, size_t len,
                         spk_cluster_reply *reply, void *user)
{
    uint32_t g[64];
    int rc = t_collectives(c, g);
    if (rc)
        return spk_err(SPK_ERR_INTERNAL, "collectives failed on rank %d (step %d): %s",
                       spk_cluster_rank(c), rc, spk_last_error());
    return spk_cluster_reply_set(reply, g, sizeof(uint32_t) * (size_t)spk_cluster_world_size(c));
}

typedef struct t_worker_opts {
    const char *key;
    int delay_ms;
    int use_env;            /* take rank/world/coordinator/key from the environment */
    uint32_t fake_lib;      /* advertise this library version */
    int check_msg_has_versions; /* exit 100+status if the error does not name both versions */
} t_worker_opts;

/* Body of a forked worker rank: open, serve, close. Returns the exit code (the status). */
static inline int t_worker_main(const char *coord, int rank, int world, const t_worker_opts *o)
{
    if (o && o->delay_ms)
        t_sleep_ms(o->delay_ms);
    if (o && o->fake_lib)
        spk_cluster_test_fake_version(o->fake_lib, 0);
    spk_set_log_callback(NULL, NULL, SPK_LOG_NONE);
    spk_cluster_config cfg;
    t_config(&cfg, coord, rank, world, o ? o->key : NULL);
    if (o && o->use_env) {
        char buf[32];
        snprintf(buf, sizeof buf, "%d", rank);
        setenv("SPK_RANK", buf, 1);
        snprintf(buf, sizeof buf, "%d", world);
        setenv("SPK_WORLD_SIZE", buf, 1);
        setenv("SPK_COORDINATOR", coord, 1);
        if (o->key)
            setenv("SPK_CLUSTER_KEY", o->key, 1);
        cfg.rank = -1;
        cfg.world_size = 0;
        cfg.coordinator = NULL;
        cfg.cluster_key = NULL;
    }
    spk_cluster *c = NULL;
    spk_status st = spk_cluster_open(&cfg, &c);
    if (st != SPK_OK) {
        fprintf(stderr, "worker %d: open: %s: %s\n", rank, spk_status_str(st), spk_last_error());
        if (o && o->check_msg_has_versions) {
            char want1[32], want2[32];
            unsigned v1 = SPK_VERSION_NUMBER, v2 = o->fake_lib;
            snprintf(want1, sizeof want1, "(%u)", v1);
            snprintf(want2, sizeof want2, "(%u)", v2);
            if (!strstr(spk_last_error(), want1) || !strstr(spk_last_error(), want2))
                return 100 + (int)st;
        }
        return (int)st;
    }
    if (spk_cluster_rank(c) != rank || spk_cluster_world_size(c) != world)
        return 99;
    spk_cluster_set_handler(c, CMD_ADD, h_add, NULL);
    spk_cluster_set_handler(c, CMD_FAIL, h_fail, NULL);
    spk_cluster_set_handler(c, CMD_COLL, h_coll, NULL);
    st = spk_cluster_serve(c);
    if (st != SPK_OK)
        fprintf(stderr, "worker %d: serve: %s: %s\n", rank, spk_status_str(st), spk_last_error());
    spk_cluster_close(c);
    return (int)st;
}

static inline pid_t t_spawn_worker(const char *coord, int rank, int world, const t_worker_opts *o)
{
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0)
        _exit(t_worker_main(coord, rank, world, o));
    return pid;
}

/* Exit code of pid within timeout_ms; -1 (and the child is killed) if it did not exit, -2 if it
 * died by a signal. */
static inline int t_wait_exit(pid_t pid, int timeout_ms)
{
    int64_t dl = t_now_ms() + timeout_ms;
    for (;;) {
        int status;
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            return WIFEXITED(status) ? WEXITSTATUS(status) : -2;
        if (r < 0)
            return -3;
        if (t_now_ms() >= dl) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            return -1;
        }
        t_sleep_ms(5);
    }
}

/* Log capture (driver side). */
static pthread_mutex_t t_log_mu = PTHREAD_MUTEX_INITIALIZER;
static char t_log[16384];

static inline void t_log_fn(spk_log_level level, const char *msg, void *user)
{
    pthread_mutex_lock(&t_log_mu);
    size_t n = strlen(t_log);
    snprintf(t_log + n, sizeof t_log - n, "[%d] %s\n", (int)level, msg);
    pthread_mutex_unlock(&t_log_mu);
}

static inline int t_log_count(const char *needle)
{
    int n = 0;
    pthread_mutex_lock(&t_log_mu);
    for (const char *p = t_log; (p = strstr(p, needle)) != NULL; p++)
        n++;
    pthread_mutex_unlock(&t_log_mu);
    return n;
}

#endif
