/*
 * Small helpers of spk-bench (header-only like the other example helpers): machine facts from
 * /proc, a recursive mkdir, JSON string and number output.
 */
#ifndef SPK_EXAMPLES_BENCH_UTIL_H
#define SPK_EXAMPLES_BENCH_UTIL_H

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/utsname.h>

/* A /proc/meminfo field ("MemAvailable", "MemTotal") in bytes (0 if unknown). */
static inline uint64_t meminfo_bytes(const char *key)
{
    FILE *f = fopen("/proc/meminfo", "r");
    char line[256];
    uint64_t kb = 0;
    size_t kl = strlen(key);
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, key, kl) && line[kl] == ':') {
            kb = strtoull(line + kl + 1, NULL, 10);
            break;
        }
    if (f)
        fclose(f);
    return kb * 1024;
}

/* The CPU model name ("model name" on x86, "Hardware"/"Model"/"CPU part" elsewhere; else the
 * machine type from uname). */
static inline void cpu_model(char *buf, size_t cap)
{
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[512];
    buf[0] = '\0';
    while (f && fgets(line, sizeof line, f)) {
        const char *keys[] = {"model name", "Hardware", "Model", "CPU part"};
        for (size_t k = 0; k < sizeof keys / sizeof *keys && !buf[0]; k++)
            if (!strncmp(line, keys[k], strlen(keys[k]))) {
                char *c = strchr(line, ':');
                if (c) {
                    c++;
                    while (*c == ' ' || *c == '\t')
                        c++;
                    snprintf(buf, cap, "%.*s", (int)strcspn(c, "\n"), c);
                }
            }
        if (buf[0] && strncmp(line, "CPU part", 8) != 0)
            break;
    }
    if (f)
        fclose(f);
    if (!buf[0]) {
        struct utsname u;
        snprintf(buf, cap, "%s", uname(&u) == 0 ? u.machine : "unknown");
    }
}

static inline double gib(uint64_t b) { return (double)b / (1024.0 * 1024 * 1024); }

/* "1.71 MiB", "5.25 GiB" into buf; returns buf. */
static inline const char *human_bytes(char *buf, size_t cap, uint64_t b)
{
    if (b >= (1ull << 30))
        snprintf(buf, cap, "%.2f GiB", gib(b));
    else
        snprintf(buf, cap, "%.2f MiB", (double)b / (1024.0 * 1024));
    return buf;
}

/* mkdir -p; 0 or -1 with errno. */
static inline int mkdirs(char *path)
{
    for (char *p = path + 1; *p; p++)
        if (*p == '/') {
            *p = '\0';
            int r = mkdir(path, 0755);
            *p = '/';
            if (r && errno != EEXIST)
                return -1;
        }
    return mkdir(path, 0755) && errno != EEXIST ? -1 : 0;
}

static inline void json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; s && *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

/* A number, or null for NaN/inf (JSON has neither). */
static inline void json_num(FILE *f, double v)
{
    if (isfinite(v))
        fprintf(f, "%.6g", v);
    else
        fputs("null", f);
}

#endif
