/*
 * reliability: the adversarial-review attacks on loopback, with figures (BENCHMARKS.md,
 * RELIABILITY). Built and run by bench/reliability.sh against the static library.
 *   A. 70 idle connections, then the real worker: does it join, how fast.
 *   B. a refused-connection flood for 10 s, the real worker starting 5 s into it: log lines and
 *      bytes, suppressed count, join.
 *   C. a keyed worker sending 40 unsolicited 16 MiB frames: the driver's queued bytes and RSS.
 *   D. two connections racing for one rank: refused, descriptors before/after.
 *   E. 8 submitters x 20 requests through a queue of 2: retries with spk_submit + retry loop,
 *      BUSY results with spk_submit_wait (needs the model path as argv[1]).
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cluster/cluster_internal.h"
#include "common/error.h"
#include "sparkinfer/sparkinfer.h"

static char coord[64];

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static void new_coord(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    bind(fd, (struct sockaddr *)&a, sizeof a);
    getsockname(fd, (struct sockaddr *)&a, &len);
    snprintf(coord, sizeof coord, "127.0.0.1:%d", ntohs(a.sin_port));
    close(fd);
}

static int connect_coord(int tries)
{
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)atoi(strrchr(coord, ':') + 1));
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (int t = 0; t < tries; t++) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0)
            return fd;
        if (fd >= 0)
            close(fd);
        sleep_ms(10);
    }
    return -1;
}

static void config(spk_cluster_config *cfg, int rank, int world)
{
    spk_cluster_config_init(cfg);
    cfg->coordinator = coord;
    cfg->rank = rank;
    cfg->world_size = world;
    cfg->cluster_key = "bench-key";
    cfg->transport = "none";
    cfg->n_threads = 1;
    cfg->connect_timeout_ms = 20000;
}

static int worker(int rank, int world, int version_delay_ms)
{
    spk_set_log_callback(NULL, NULL, SPK_LOG_NONE);
    spk_cluster_test_version_delay(version_delay_ms);
    spk_cluster_config cfg;
    config(&cfg, rank, world);
    spk_cluster *c = NULL;
    spk_status st = spk_cluster_open(&cfg, &c);
    if (st != SPK_OK)
        return (int)st;
    st = spk_cluster_serve(c);
    spk_cluster_close(c);
    return (int)st;
}

static pid_t spawn_worker(int rank, int world, int start_after_ms, int version_delay_ms)
{
    fflush(stdout);
    pid_t p = fork();
    if (p == 0) {
        sleep_ms(start_after_ms);
        _exit(worker(rank, world, version_delay_ms));
    }
    return p;
}

static int wait_exit(pid_t p)
{
    int status = 0;
    waitpid(p, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* Log sink that counts lines, bytes and the "N similar message(s) suppressed" totals. */
static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static long log_lines, log_bytes, log_suppressed;

static void count_log(spk_log_level lv, const char *msg, void *user)
{
    (void)lv;
    (void)user;
    pthread_mutex_lock(&log_mu);
    log_lines++;
    log_bytes += (long)strlen(msg) + 1;
    if (strstr(msg, "similar message(s) suppressed"))
        log_suppressed += strtol(msg, NULL, 10);
    pthread_mutex_unlock(&log_mu);
}

static void log_reset(void)
{
    log_lines = log_bytes = log_suppressed = 0;
    spk_set_log_callback(count_log, NULL, SPK_LOG_WARN);
}

static long rss_kib(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kib = -1;
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "VmRSS:", 6) == 0)
            kib = strtol(line + 6, NULL, 10);
    if (f)
        fclose(f);
    return kib;
}

static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    int n = 0;
    while (d && readdir(d))
        n++;
    if (d)
        closedir(d);
    return n;
}

/* ---------------------------------------------------------------------------------------- */

static void idle_flood(void)
{
    new_coord();
    const int n_idle = 70;
    fflush(stdout);
    pid_t orch = fork();
    if (orch == 0) {
        int fds[70];
        for (int i = 0; i < n_idle; i++)
            fds[i] = connect_coord(i == 0 ? 500 : 5);
        int64_t t0 = now_ms();
        pid_t w = spawn_worker(1, 2, 0, 0);
        int rc = wait_exit(w);
        for (int i = 0; i < n_idle; i++)
            if (fds[i] >= 0)
                close(fds[i]);
        fprintf(stderr, "  worker served and exited %d, %lld ms after it started\n", rc,
                (long long)(now_ms() - t0));
        _exit(rc);
    }
    log_reset();
    spk_cluster_config cfg;
    config(&cfg, 0, 2);
    cfg.connect_timeout_ms = 10000;
    spk_cluster *c = NULL;
    int64_t t0 = now_ms();
    spk_status st = spk_cluster_open(&cfg, &c);
    int64_t dt = now_ms() - t0;
    spk_set_log_callback(NULL, NULL, SPK_LOG_NONE);
    printf("A. %d idle connections, then the worker: driver open %s after %lld ms; %ld log "
           "lines, %ld suppressed\n", n_idle, spk_status_str(st), (long long)dt, log_lines,
           log_suppressed);
    if (st != SPK_OK)
        printf("   %s\n", spk_last_error());
    spk_cluster_close(c);
    wait_exit(orch);
}

/* A2: the flooder keeps n idle connections open for 10 s, reopening each one the driver closes. */
static void churning_idle_flood(void)
{
    new_coord();
    enum { N = 100 };
    const int flood_ms = 10000;
    fflush(stdout);
    pid_t flooder = fork();
    if (flooder == 0) {
        struct pollfd pf[N];
        long reopened = 0;
        for (int i = 0; i < N; i++)
            pf[i] = (struct pollfd){connect_coord(i == 0 ? 500 : 5), POLLIN, 0};
        int64_t end = now_ms() + flood_ms;
        while (now_ms() < end) {
            if (poll(pf, N, 100) <= 0)
                continue;
            for (int i = 0; i < N; i++) {
                if (!pf[i].revents)
                    continue;
                char buf[256];
                if (recv(pf[i].fd, buf, sizeof buf, MSG_DONTWAIT) > 0)
                    continue; /* the challenge: stay idle */
                close(pf[i].fd);
                pf[i].fd = connect_coord(1);
                pf[i].revents = 0;
                reopened++;
            }
        }
        printf("A2. flooder: %d idle connections held for %d ms, %ld reopened after eviction\n", N,
               flood_ms, reopened);
        fflush(stdout);
        _exit(0);
    }
    pid_t w = spawn_worker(1, 2, 2000, 0);
    log_reset();
    spk_cluster_config cfg;
    config(&cfg, 0, 2);
    spk_cluster *c = NULL;
    int64_t t0 = now_ms();
    spk_status st = spk_cluster_open(&cfg, &c);
    int64_t dt = now_ms() - t0;
    spk_log_flush();
    spk_set_log_callback(NULL, NULL, SPK_LOG_NONE);
    printf("A2. worker started 2000 ms into a churning idle flood: driver open %s %lld ms after "
           "the flood began; %ld log lines, %ld suppressed\n", spk_status_str(st), (long long)dt,
           log_lines, log_suppressed);
    spk_cluster_close(c);
    wait_exit(w);
    wait_exit(flooder);
}

static void refused_flood(void)
{
    new_coord();
    const int flood_ms = 10000;
    fflush(stdout);
    pid_t flooder = fork();
    if (flooder == 0) {
        const char junk[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        long n = 0;
        int fd = connect_coord(500);
        if (fd >= 0)
            close(fd);
        int64_t end = now_ms() + flood_ms;
        while (now_ms() < end) {
            fd = connect_coord(1);
            if (fd < 0)
                continue;
            ssize_t k = send(fd, junk, sizeof junk - 1, MSG_NOSIGNAL);
            (void)k;
            close(fd);
            n++;
        }
        printf("B. flooder: %ld junk connections in %d ms\n", n, flood_ms);
        fflush(stdout);
        _exit(0);
    }
    pid_t w = spawn_worker(1, 2, flood_ms / 2, 0);
    log_reset();
    spk_cluster_config cfg;
    config(&cfg, 0, 2);
    spk_cluster *c = NULL;
    int64_t t0 = now_ms();
    spk_status st = spk_cluster_open(&cfg, &c);
    int64_t dt = now_ms() - t0;
    printf("B. worker started %d ms into the flood: driver open %s %lld ms after the flood began\n",
           flood_ms / 2, spk_status_str(st), (long long)dt);
    wait_exit(flooder);
    spk_log_flush();
    spk_set_log_callback(NULL, NULL, SPK_LOG_NONE);
    printf("B. driver log during the join: %ld lines, %ld bytes; %ld messages suppressed and "
           "counted\n", log_lines, log_bytes, log_suppressed);
    spk_cluster_close(c);
    wait_exit(w);
}

static int unsolicited_worker(void)
{
    spk_set_log_callback(NULL, NULL, SPK_LOG_NONE);
    spk_cluster_config cfg;
    config(&cfg, 1, 2);
    cfg.peer_timeout_ms = 10000;
    spk_cluster *c = NULL;
    if (spk_cluster_open(&cfg, &c) != SPK_OK)
        return 10;
    const size_t len = SPK_PROTO_MAX_PAYLOAD - 10u - SPK_PROTO_MAX_MSG;
    uint8_t *big = calloc(1, len);
    for (int i = 0; i < 40 && big; i++) {
        spk_proto_msg m = {0};
        m.h.type = SPK_MSG_REPLY;
        m.u.reply.req_id = 0xdead0000u + (uint32_t)i;
        m.u.reply.data = big;
        m.u.reply.len = (uint32_t)len;
        if (spk_cluster_send(c, &c->peers[0], &m) != SPK_OK)
            break;
    }
    free(big);
    spk_cluster_wait_failure(c, 10000);
    spk_cluster_close(c);
    return 0;
}

static void inbox_flood(void)
{
    new_coord();
    fflush(stdout);
    pid_t w = fork();
    if (w == 0)
        _exit(unsolicited_worker());
    spk_set_log_callback(NULL, NULL, SPK_LOG_NONE);
    spk_cluster_config cfg;
    config(&cfg, 0, 2);
    cfg.peer_timeout_ms = 10000;
    spk_cluster *c = NULL;
    long rss0 = rss_kib();
    if (spk_cluster_open(&cfg, &c) != SPK_OK) {
        printf("C. open failed: %s\n", spk_last_error());
        return;
    }
    spk_status st = spk_cluster_wait_failure(c, 20000);
    long rss1 = rss_kib();
    spk_cluster_inbox_stats s;
    spk_cluster_inbox_stats_get(c, &s);
    printf("C. 40 unsolicited 16 MiB frames: %s (%s)\n", spk_status_str(st), spk_last_error());
    printf("C. inbox peak %.1f MiB (bound %u MiB), %llu overrun(s); driver RSS %ld -> %ld MiB\n",
           (double)s.peak_bytes / 1048576.0, SPK_CLUSTER_INBOX_MAX_BYTES >> 20,
           (unsigned long long)s.overruns, rss0 / 1024, rss1 / 1024);
    spk_cluster_close(c);
    wait_exit(w);
}

static void rank_race(void)
{
    new_coord();
    int fds0 = count_fds();
    pid_t a = spawn_worker(1, 3, 0, 1500), b = spawn_worker(1, 3, 300, 1500);
    pid_t r2 = spawn_worker(2, 3, 2500, 0);
    spk_set_log_callback(NULL, NULL, SPK_LOG_NONE);
    spk_cluster_config cfg;
    config(&cfg, 0, 3);
    spk_cluster *c = NULL;
    spk_status st = spk_cluster_open(&cfg, &c);
    spk_cluster_close(c);
    int ea = wait_exit(a), eb = wait_exit(b);
    wait_exit(r2);
    printf("D. two rank-1 connections racing: driver open %s; workers exited %d and %d (%s); "
           "driver fds %d before, %d after\n", spk_status_str(st), ea, eb,
           spk_status_str((spk_status)(ea ? ea : eb)), fds0, count_fds());
}

/* ---------------------------------------------------------------------------------------- */

enum { N_SUB = 8, PER_SUB = 20 };
static spk_model *model;
static int use_wait;
static const int32_t prompt[3] = {1, 504, 3458};

typedef struct sub {
    long retries, max_retries, busy;
    int64_t max_wait_ms;
} sub;

static void *sub_main(void *p)
{
    sub *s = p;
    for (int i = 0; i < PER_SUB; i++) {
        spk_request r;
        spk_request_init(&r);
        r.prompt = prompt;
        r.n_prompt = 3;
        r.max_tokens = 4;
        r.temperature = 0.0f;
        r.ignore_eos = 1;
        uint64_t id;
        int64_t t0 = now_ms();
        long tries = 0;
        for (;;) {
            spk_status st = use_wait ? spk_submit_wait(model, &r, 1, &id, 60000)
                                     : spk_submit(model, &r, 1, &id);
            if (st == SPK_OK)
                break;
            if (st == SPK_ERR_BUSY)
                s->busy++;
            tries++;
        }
        s->retries += tries;
        if (tries > s->max_retries)
            s->max_retries = tries;
        if (now_ms() - t0 > s->max_wait_ms)
            s->max_wait_ms = now_ms() - t0;
    }
    return NULL;
}

static void *poller(void *p)
{
    long *finished = p;
    while (*finished < N_SUB * PER_SUB) {
        spk_event ev[64];
        size_t k = 0;
        spk_poll(model, ev, 64, &k, 50);
        for (size_t i = 0; i < k; i++)
            if (ev[i].finish != SPK_FINISH_NONE)
                (*finished)++;
    }
    return NULL;
}

static void submitters(const char *path)
{
    spk_cluster_config cc;
    spk_cluster_config_init(&cc);
    cc.world_size = 1;
    cc.rank = 0;
    cc.n_threads = 2;
    spk_cluster *cl = NULL;
    spk_cluster_open(&cc, &cl);
    spk_model_config mc;
    spk_model_config_init(&mc);
    mc.path = path;
    mc.max_seqs = 2;
    mc.n_ctx = 256;
    mc.queue_capacity = 2;
    if (spk_model_load(cl, &mc, &model) != SPK_OK) {
        printf("E. model load failed: %s\n", spk_last_error());
        spk_cluster_close(cl);
        return;
    }
    for (use_wait = 0; use_wait < 2; use_wait++) {
        sub s[N_SUB];
        pthread_t t[N_SUB], pt;
        long finished = 0;
        memset(s, 0, sizeof s);
        int64_t t0 = now_ms();
        pthread_create(&pt, NULL, poller, &finished);
        for (int i = 0; i < N_SUB; i++)
            pthread_create(&t[i], NULL, sub_main, &s[i]);
        long total = 0, max = 0, busy = 0;
        int64_t max_wait = 0;
        for (int i = 0; i < N_SUB; i++) {
            pthread_join(t[i], NULL);
            total += s[i].retries;
            busy += s[i].busy;
            if (s[i].max_retries > max)
                max = s[i].max_retries;
            if (s[i].max_wait_ms > max_wait)
                max_wait = s[i].max_wait_ms;
        }
        pthread_join(pt, NULL);
        printf("E. %s: %d submitters x %d requests, queue 2: %ld BUSY, retries max %ld per "
               "request (%ld total), longest submit %lld ms, all done in %lld ms\n",
               use_wait ? "spk_submit_wait" : "spk_submit + retry loop", N_SUB, PER_SUB, busy,
               max, total, (long long)max_wait, (long long)(now_ms() - t0));
    }
    spk_model_free(model);
    spk_cluster_close(cl);
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);
    idle_flood();
    churning_idle_flood();
    refused_flood();
    inbox_flood();
    rank_race();
    if (argc > 1)
        submitters(argv[1]);
    return 0;
}
