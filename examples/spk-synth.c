/*
 * spk-synth: write a synthetic llama GGUF file (a named shape or explicit sizes, random weights
 * from a seed) that loads like a real model.
 *
 *   spk-synth --preset tiny-tp4 --seed 7 -o /tmp/tiny.gguf
 *   spk-synth --preset llama-3.1-8b --type q4_1 -o llama8b-synth.gguf     (about 5 GB)
 *   spk-synth --preset smollm2-135m --layers 4 --dry-run                   (size only)
 *
 * It uses the library's internal synthetic-model writer, so it links the static library (it
 * must be listed in SPK_INTERNAL_TOOLS in examples/CMakeLists.txt).
 */
#if !defined(SPK_HAVE_CUDA) /* defined only for targets that link the internal library */
#include <stdio.h>
int main(void)
{
    fprintf(stderr, "spk-synth: built without the internal library; add it to SPK_INTERNAL_TOOLS "
                    "in examples/CMakeLists.txt\n");
    return 1;
}
#else

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "tools/synth.h"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: spk-synth --preset NAME [options] -o FILE\n"
            "  --preset NAME     shape: ");
    const char *const *names = spk_synth_preset_names();
    for (int i = 0; names[i]; i++)
        fprintf(out, "%s%s", i ? ", " : "", names[i]);
    fprintf(out,
            "\n"
            "  --seed S          weights seed (default 0); equal options give identical files\n"
            "  --type T          matrices: q4_1 (default), q4_0, q8_0, f16, bf16, f32,\n"
            "                    q5_0, q5_1, q2_k, q3_k, q4_k, q5_k, q6_k, mxfp4\n"
            "  --embd-type T     token_embd: q8_0 (default) or as --type\n"
            "  --out-type T      output.weight when untied (default q4_1)\n"
            "  --tied / --untied output head shares token_embd or not (default: preset's)\n"
            "  --layers N --embd N --heads N --kv-heads N --head-dim N --ff N --vocab N --ctx N\n"
            "  --rope-theta F    override the preset's shape\n"
            "  --experts N --experts-used K   qwen3moe presets: experts per layer / per token\n"
            "                    (--ff is then each expert's width)\n"
            "  --expert-type T   MoE presets: the stacked experts' type (as --type), or 'same' for\n"
            "                    --type's (default; gpt-oss-20b/-120b: mxfp4, as llama-quantize MXFP4_MOE)\n"
            "  --window N        gpt-oss: attention.sliding_window (default 4 for gpt-oss-tiny)\n"
            "  --chat-template FILE  tokenizer.chat_template from FILE (default: ChatML)\n"
            "  --dry-run         print the file size without writing\n"
            "  -o FILE           output path\n");
}

static int parse_type(const char *s, spk_dtype *out)
{
    static const struct { const char *n; spk_dtype t; } k[] = {
        {"q4_1", SPK_DT_Q4_1}, {"q4_0", SPK_DT_Q4_0}, {"q8_0", SPK_DT_Q8_0},
        {"f16", SPK_DT_F16},   {"bf16", SPK_DT_BF16}, {"f32", SPK_DT_F32},
        {"q5_0", SPK_DT_Q5_0}, {"q5_1", SPK_DT_Q5_1}, {"q2_k", SPK_DT_Q2_K},
        {"q3_k", SPK_DT_Q3_K}, {"q4_k", SPK_DT_Q4_K}, {"q5_k", SPK_DT_Q5_K}, {"q6_k", SPK_DT_Q6_K}, {"mxfp4", SPK_DT_MXFP4},
    };
    for (size_t i = 0; i < sizeof k / sizeof *k; i++)
        if (strcasecmp(s, k[i].n) == 0) {
            *out = k[i].t;
            return 0;
        }
    fprintf(stderr, "spk-synth: unknown type '%s' (q4_1, q4_0, q8_0, f16, bf16, f32, q5_0, q5_1, q2_k, q3_k, q4_k, q5_k, q6_k, mxfp4)\n", s);
    return -1;
}

static int parse_int(const char *opt, const char *s, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s || v < 0 || v > 1 << 30) {
        fprintf(stderr, "spk-synth: %s needs a non-negative integer, got '%s'\n", opt, s);
        return -1;
    }
    *out = (int)v;
    return 0;
}

static char *tmpl; /* --chat-template's text (freed at exit) */

static void free_tmpl(void) { free(tmpl); }

/* A whole text file (at most 1 MiB), NUL-terminated; NULL with a message. */
static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "spk-synth: --chat-template %s: %s\n", path, strerror(errno));
        return NULL;
    }
    char *buf = malloc((1u << 20) + 1);
    size_t n = buf ? fread(buf, 1, (1u << 20) + 1, f) : 0;
    const int err = ferror(f);
    fclose(f);
    if (!buf || err || n == 0 || n > (1u << 20) || memchr(buf, 0, n)) {
        fprintf(stderr, "spk-synth: --chat-template %s: %s\n", path,
                !buf ? "out of memory" : err ? "read error" : n == 0 ? "empty file"
                : n > (1u << 20) ? "larger than 1 MiB" : "holds a NUL byte");
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    return buf;
}

int main(int argc, char **argv)
{
    atexit(free_tmpl);
    const char *preset = NULL, *path = NULL;
    int dry = 0;
    /* First pass: the preset, so the overrides apply on top of it whatever their order. */
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return 0;
        }
        if (strcmp(argv[i], "--preset") == 0 && i + 1 < argc)
            preset = argv[++i];
    }
    spk_synth_params p;
    if (!preset) {
        usage(stderr);
        return 2;
    }
    if (spk_synth_preset(preset, &p) != SPK_OK) {
        fprintf(stderr, "spk-synth: %s\n", spk_last_error());
        return 2;
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        int rc = 0;
#define INT_OPT(name, field)                                                                       \
    else if (strcmp(a, name) == 0 && v) { rc = parse_int(a, v, &p.field); i++; }
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "--preset") == 0 && v) {
            i++;
        } else if (strcmp(a, "-o") == 0 && v) {
            path = v;
            i++;
        } else if (strcmp(a, "--seed") == 0 && v) {
            char *end;
            errno = 0;
            p.seed = strtoull(v, &end, 0);
            if (errno || *end || end == v) {
                fprintf(stderr, "spk-synth: --seed needs an unsigned integer, got '%s'\n", v);
                return 2;
            }
            i++;
        } else if (strcmp(a, "--type") == 0 && v) {
            rc = parse_type(v, &p.wtype);
            i++;
        } else if (strcmp(a, "--embd-type") == 0 && v) {
            rc = parse_type(v, &p.embd_type);
            i++;
        } else if (strcmp(a, "--out-type") == 0 && v) {
            rc = parse_type(v, &p.out_type);
            i++;
        } else if (strcmp(a, "--expert-type") == 0 && v) {
            spk_dtype et = SPK_DT_F32;
            if (strcmp(v, "same") == 0)
                p.expert_type = -1;
            else if (!(rc = parse_type(v, &et)))
                p.expert_type = (int)et;
            i++;
        } else if (strcmp(a, "--chat-template") == 0 && v) {
            free(tmpl);
            tmpl = read_text(v);
            if (!tmpl)
                return 2;
            p.chat_template = tmpl;
            i++;
        } else if (strcmp(a, "--tied") == 0) {
            p.tied = true;
        } else if (strcmp(a, "--untied") == 0) {
            p.tied = false;
        } else if (strcmp(a, "--dry-run") == 0) {
            dry = 1;
        } else if (strcmp(a, "--rope-theta") == 0 && v) {
            char *end;
            p.rope_theta = strtof(v, &end);
            if (*end || end == v) {
                fprintf(stderr, "spk-synth: --rope-theta needs a number, got '%s'\n", v);
                return 2;
            }
            i++;
        }
        INT_OPT("--layers", n_layers)
        INT_OPT("--embd", n_embd)
        INT_OPT("--heads", n_heads)
        INT_OPT("--kv-heads", n_kv_heads)
        INT_OPT("--head-dim", head_dim)
        INT_OPT("--ff", n_ff)
        INT_OPT("--vocab", n_vocab)
        INT_OPT("--ctx", n_ctx_train)
        INT_OPT("--experts", n_expert)
        INT_OPT("--experts-used", n_expert_used)
        INT_OPT("--window", sliding_window)
        else {
            fprintf(stderr, "spk-synth: unknown or incomplete option '%s'\n", a);
            usage(stderr);
            return 2;
        }
#undef INT_OPT
        if (rc)
            return 2;
    }
    uint64_t size = 0;
    if (spk_synth_file_size(&p, &size) != SPK_OK) {
        fprintf(stderr, "spk-synth: %s\n", spk_last_error());
        return 1;
    }
    if (dry) {
        printf("%s seed %llu: %llu bytes (%.2f GB)\n", preset, (unsigned long long)p.seed,
               (unsigned long long)size, (double)size / 1e9);
        return 0;
    }
    if (!path) {
        fprintf(stderr, "spk-synth: -o FILE is required (or --dry-run)\n");
        return 2;
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (spk_synth_write(path, &p) != SPK_OK) {
        fprintf(stderr, "spk-synth: %s\n", spk_last_error());
        return 1;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double s = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    printf("%s: %llu bytes (%.2f GB), %s seed %llu, written in %.1f s\n", path, (unsigned long long)size,
           (double)size / 1e9, preset, (unsigned long long)p.seed, s);
    return 0;
}
#endif
