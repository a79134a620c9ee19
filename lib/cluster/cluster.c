/* Cluster membership: configuration (struct, then environment), open, close, queries. */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cluster/cluster_internal.h"
#include "common/error.h"

static uint32_t fake_lib, fake_proto; /* test hook */

void spk_cluster_test_fake_version(uint32_t lib_version, uint32_t proto_version)
{
    fake_lib = lib_version;
    fake_proto = proto_version;
}

static pthread_once_t sodium_once = PTHREAD_ONCE_INIT;
static int sodium_ok;

static void sodium_setup(void) { sodium_ok = sodium_init() >= 0; }

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

static void copy_str(char *dst, size_t cap, const char *src) { snprintf(dst, cap, "%s", src); }

/* Fill c from cfg (struct wins), then the environment, then defaults; validate. */
static spk_status resolve_config(spk_cluster *c, const spk_cluster_config *cfg)
{
    spk_cluster_config_init(&c->cfg);
    memcpy(&c->cfg, cfg, cfg->struct_size < sizeof c->cfg ? cfg->struct_size : sizeof c->cfg);
    c->cfg.struct_size = sizeof c->cfg;
    spk_cluster_config *k = &c->cfg;
    spk_launch_env le = {k->rank, k->world_size, "", "config", "config", "config"};
    if (k->coordinator && strlen(k->coordinator) >= sizeof le.coordinator)
        return spk_err(SPK_ERR_INVALID_ARG, "coordinator address too long (%zu bytes)",
                       strlen(k->coordinator));
    if (k->coordinator) /* set in the struct: it wins; "" means the default, as before */
        copy_str(le.coordinator, sizeof le.coordinator,
                 *k->coordinator ? k->coordinator : "127.0.0.1:29500");
    spk_status st = spk_cluster_launch_env(&le);
    if (st != SPK_OK)
        return st;
    k->rank = le.rank;
    k->world_size = le.world_size;
    if (k->world_size < 1 || k->world_size > (int)SPK_PROTO_MAX_RANKS)
        return spk_err(SPK_ERR_INVALID_ARG, "world size %d (%s) out of range 1..%u",
                       k->world_size, le.world_from, SPK_PROTO_MAX_RANKS);
    if (k->rank < 0 || k->rank >= k->world_size)
        return spk_err(SPK_ERR_INVALID_ARG, "rank %d (%s) out of range 0..%d", k->rank,
                       le.rank_from, k->world_size - 1);
    _Static_assert(sizeof le.coordinator <= sizeof c->coordinator, "coordinator buffers");
    copy_str(c->coordinator, sizeof c->coordinator, le.coordinator);
    const char *key = k->cluster_key ? k->cluster_key : getenv("SPK_CLUSTER_KEY");
    if (!key)
        key = "";
    c->key_len = strlen(key);
    if (c->key_len >= sizeof c->key)
        return spk_err(SPK_ERR_INVALID_ARG, "cluster key too long (%zu bytes, at most %zu)",
                       c->key_len, sizeof c->key - 1);
    /* A short key falls to an offline search of one captured handshake in milliseconds. */
    if (c->key_len && c->key_len < SPK_CLUSTER_KEY_MIN)
        return spk_err(SPK_ERR_INVALID_ARG,
                       "cluster key too short (%zu bytes, at least %d); make one with "
                       "`head -c 32 /dev/urandom | base64`", c->key_len, SPK_CLUSTER_KEY_MIN);
    memcpy(c->key, key, c->key_len + 1);
    const char *tr = k->transport && *k->transport ? k->transport : "auto";
    if (strlen(tr) >= sizeof c->transport_name)
        return spk_err(SPK_ERR_INVALID_ARG, "transport name too long");
    copy_str(c->transport_name, sizeof c->transport_name, tr);
    k->coordinator = c->coordinator;
    k->cluster_key = NULL; /* never kept outside c->key */
    k->transport = c->transport_name;
    if (k->n_threads < 0 || k->n_threads > 1024)
        return spk_err(SPK_ERR_INVALID_ARG, "n_threads %d out of range 0..1024", k->n_threads);
    if (k->n_threads == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        k->n_threads = n > 0 ? (int)n : 1;
    }
    if (k->connect_timeout_ms <= 0 || k->peer_timeout_ms <= 0 || k->heartbeat_ms <= 0)
        return spk_err(SPK_ERR_INVALID_ARG,
                       "timeouts must be > 0 (connect_timeout_ms %d, peer_timeout_ms %d, "
                       "heartbeat_ms %d)", k->connect_timeout_ms, k->peer_timeout_ms,
                       k->heartbeat_ms);
    if (k->heartbeat_ms >= k->peer_timeout_ms)
        return spk_err(SPK_ERR_INVALID_ARG, "heartbeat_ms %d must be below peer_timeout_ms %d",
                       k->heartbeat_ms, k->peer_timeout_ms);
    c->rank = k->rank;
    c->world = k->world_size;

    c->my_lib_version = SPK_VERSION_NUMBER;
    c->my_proto_version = SPK_PROTO_VERSION;
    const char *fv = getenv("SPK_TEST_FAKE_VERSION");
    if (fv && *fv) {
        unsigned a = 0, b = 0;
        int n = sscanf(fv, "%u:%u", &a, &b);
        if (n >= 1 && a)
            c->my_lib_version = a;
        if (n == 2 && b)
            c->my_proto_version = b;
    }
    if (fake_lib)
        c->my_lib_version = fake_lib;
    if (fake_proto)
        c->my_proto_version = fake_proto;
    return SPK_OK;
}

static void cluster_free(spk_cluster *c)
{
    if (!c)
        return;
    spk_cluster_io_stop(c);
    if (c->peers) {
        for (int r = 0; r < c->world; r++) {
            if (c->peers[r].fd >= 0)
                close(c->peers[r].fd);
            free(c->peers[r].rx);
            sodium_memzero(c->peers[r].tx_key, sizeof c->peers[r].tx_key);
            sodium_memzero(c->peers[r].rx_key, sizeof c->peers[r].rx_key);
            pthread_mutex_destroy(&c->peers[r].send_mu);
        }
        free(c->peers);
    }
    spk_cluster_inbox_free(c);
    free(c->handlers);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    sodium_memzero(c->key, sizeof c->key);
    sodium_memzero(c->cluster_nonce, sizeof c->cluster_nonce);
    free(c);
}

spk_status spk_cluster_open(const spk_cluster_config *cfg, spk_cluster **out)
{
    if (out)
        *out = NULL;
    if (!cfg || !out)
        return spk_err(SPK_ERR_INVALID_ARG, "spk_cluster_open: NULL argument");
    if (cfg->struct_size < offsetof(spk_cluster_config, n_threads) || cfg->struct_size > 4096)
        return spk_err(SPK_ERR_INVALID_ARG, "spk_cluster_open: bad struct_size %zu",
                       cfg->struct_size);
    pthread_once(&sodium_once, sodium_setup);
    if (!sodium_ok)
        return spk_err(SPK_ERR_INTERNAL, "spk_cluster_open: libsodium failed to initialise");
    spk_cluster *c = calloc(1, sizeof *c);
    if (!c)
        return spk_err(SPK_ERR_NOMEM, "spk_cluster_open: out of memory");
    c->wake[0] = c->wake[1] = -1;
    pthread_mutex_init(&c->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&c->cv, &ca);
    pthread_condattr_destroy(&ca);
    spk_status st = resolve_config(c, cfg);
    if (st != SPK_OK) {
        sodium_memzero(c->key, sizeof c->key);
        pthread_mutex_destroy(&c->mu);
        pthread_cond_destroy(&c->cv);
        free(c);
        return spk_err_prefix(st, "spk_cluster_open");
    }
    c->peers = calloc((size_t)c->world, sizeof *c->peers);
    if (!c->peers) {
        cluster_free(c);
        return spk_err(SPK_ERR_NOMEM, "spk_cluster_open: out of memory");
    }
    for (int r = 0; r < c->world; r++) {
        c->peers[r].rank = r;
        c->peers[r].fd = -1;
        pthread_mutex_init(&c->peers[r].send_mu, NULL);
    }
    spk_cluster_bootstrap(c);
    if (c->world == 1) {
        *out = c;
        return SPK_OK;
    }

    st = spk_net_split_hostport(c->coordinator, c->host, sizeof c->host, c->port, sizeof c->port);
    if (st == SPK_OK && c->key_len == 0 && !c->cfg.allow_open_cluster &&
        !spk_net_is_loopback(c->host))
        st = spk_err(SPK_ERR_AUTH,
                     "rank %d: no cluster key, so refusing to %s %s (not a loopback address); set "
                     "cluster_key or SPK_CLUSTER_KEY, or allow_open_cluster to run without one",
                     c->rank, c->rank == 0 ? "listen on" : "join", c->coordinator);
    if (st != SPK_OK) {
        cluster_free(c);
        return st;
    }
    int64_t deadline = spk_net_now_ms() + c->cfg.connect_timeout_ms;
    st = c->rank == 0 ? spk_cluster_join_driver(c, deadline) : spk_cluster_join_worker(c, deadline);
    if (st == SPK_OK)
        st = spk_cluster_io_start(c);
    if (st != SPK_OK) {
        cluster_free(c);
        return st;
    }
    spk_cluster_bootstrap(c); /* local address and nonce are known now */
    st = spk_cluster_transport_connect(c);
    if (st != SPK_OK) {
        char msg[SPK_CLUSTER_FAIL_CAP];
        snprintf(msg, sizeof msg, "%s", spk_err_msg());
        spk_cluster_fail(c, st, c->rank, "rank %d: %s", c->rank, msg);
        cluster_free(c);
        return spk_err(st, "%s", msg);
    }
    *out = c;
    return SPK_OK;
}

int spk_cluster_rank(const spk_cluster *c) { return c ? c->rank : -1; }
int spk_cluster_world_size(const spk_cluster *c) { return c ? c->world : -1; }
int spk_cluster_n_threads(const spk_cluster *c) { return c ? c->cfg.n_threads : 1; }

spk_status spk_cluster_close(spk_cluster *c)
{
    if (!c)
        return SPK_OK;
    if (c->world > 1) {
        spk_cluster_transport_close(c);
        spk_cluster_say_goodbye(c);
    }
    cluster_free(c);
    return SPK_OK;
}
