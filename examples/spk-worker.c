/*
 * spk-worker: join a sparkinfer cluster as one worker rank and serve the driver until it closes.
 *
 *   spk-worker --coordinator HOST:PORT --rank R --world N [--key-file F] [--transport T]
 *              [--threads N] [--connect-timeout MS] [--peer-timeout MS] [--heartbeat MS]
 *
 * Options not given fall back to SPK_COORDINATOR, SPK_RANK, SPK_WORLD_SIZE, SPK_CLUSTER_KEY.
 * Exit status: 0 when the driver closed the cluster, otherwise the spk_status number
 * (6 timeout, 7 peer lost, 8 authentication, 9 version mismatch, ...), 64 for a usage error.
 * Messages go to stderr.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sparkinfer/sparkinfer.h>

#define EXIT_USAGE 64

static void usage(FILE *f)
{
    fprintf(f, "usage: spk-worker --coordinator HOST:PORT --rank R --world N [--key-file FILE]\n"
               "                  [--transport auto|tcp|nccl|verbs|PLUGIN.so] [--threads N]\n"
               "                  [--connect-timeout MS] [--peer-timeout MS] [--heartbeat MS]\n");
}

static int parse_int(const char *opt, const char *s, int lo, int hi, int *out)
{
    char *end = NULL;
    errno = 0;
    long v = s ? strtol(s, &end, 10) : 0;
    if (!s || !*s || *end || errno || v < lo || v > hi) {
        fprintf(stderr, "spk-worker: %s wants an integer in %d..%d, got \"%s\"\n", opt, lo, hi,
                s ? s : "");
        return -1;
    }
    *out = (int)v;
    return 0;
}

/* Read the key file; trailing newlines and spaces are not part of the key. */
static char *read_key(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "spk-worker: cannot open key file %s: %s\n", path, strerror(errno));
        return NULL;
    }
    char *buf = calloc(1, 1025);
    size_t n = buf ? fread(buf, 1, 1024, f) : 0;
    int more = buf && fgetc(f) != EOF;
    fclose(f);
    if (!buf || more) {
        fprintf(stderr, "spk-worker: key file %s is larger than 1024 bytes\n", path);
        free(buf);
        return NULL;
    }
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' '))
        buf[--n] = '\0';
    if (n == 0 || strlen(buf) != n) {
        fprintf(stderr, "spk-worker: key file %s is empty or contains a NUL byte\n", path);
        free(buf);
        return NULL;
    }
    return buf;
}

int main(int argc, char **argv)
{
    spk_cluster_config cfg;
    spk_cluster_config_init(&cfg);
    const char *key_file = NULL;
    for (int i = 1; i < argc; i += 2) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "--coordinator") == 0 && v) {
            cfg.coordinator = v;
        } else if (strcmp(a, "--rank") == 0) {
            bad = parse_int(a, v, 1, 4095, &cfg.rank);
        } else if (strcmp(a, "--world") == 0) {
            bad = parse_int(a, v, 2, 4096, &cfg.world_size);
        } else if (strcmp(a, "--key-file") == 0 && v) {
            key_file = v;
        } else if (strcmp(a, "--transport") == 0 && v) {
            cfg.transport = v;
        } else if (strcmp(a, "--threads") == 0) {
            bad = parse_int(a, v, 0, 1024, &cfg.n_threads);
        } else if (strcmp(a, "--connect-timeout") == 0) {
            bad = parse_int(a, v, 1, INT_MAX, &cfg.connect_timeout_ms);
        } else if (strcmp(a, "--peer-timeout") == 0) {
            bad = parse_int(a, v, 1, INT_MAX, &cfg.peer_timeout_ms);
        } else if (strcmp(a, "--heartbeat") == 0) {
            bad = parse_int(a, v, 1, INT_MAX, &cfg.heartbeat_ms);
        } else {
            fprintf(stderr, "spk-worker: unknown option or missing value: %s\n", a);
            usage(stderr);
            return EXIT_USAGE;
        }
        if (bad)
            return EXIT_USAGE;
    }
    char *key = NULL;
    if (key_file) {
        key = read_key(key_file);
        if (!key)
            return EXIT_USAGE;
        cfg.cluster_key = key;
    }

    spk_cluster *cl = NULL;
    spk_status st = spk_cluster_open(&cfg, &cl);
    if (key) {
        memset(key, 0, strlen(key));
        free(key);
    }
    if (st != SPK_OK) {
        fprintf(stderr, "spk-worker: cannot join the cluster: %s: %s\n", spk_status_str(st),
                spk_last_error());
        return (int)st;
    }
    if (spk_cluster_rank(cl) == 0) {
        fprintf(stderr, "spk-worker: rank 0 is the driver; start workers with --rank 1..N-1\n");
        spk_cluster_close(cl);
        return EXIT_USAGE;
    }
    fprintf(stderr, "spk-worker: rank %d of %d joined; serving\n", spk_cluster_rank(cl),
            spk_cluster_world_size(cl));
    st = spk_cluster_serve(cl);
    if (st == SPK_OK)
        fprintf(stderr, "spk-worker: rank %d: the driver closed the cluster\n",
                spk_cluster_rank(cl));
    else
        fprintf(stderr, "spk-worker: rank %d: %s: %s\n", spk_cluster_rank(cl), spk_status_str(st),
                spk_last_error());
    spk_cluster_close(cl);
    return (int)st;
}
