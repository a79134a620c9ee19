/*
 * Named model shapes for the planner (sources in docs/PLANNER.md); a model file's shape comes
 * from its hyperparameters (spk_shape_from_hparams).
 */
#include "plan/plan.h"

#include <stdio.h>
#include <string.h>

#include "common/error.h"

#define BF16 2.0
#define Q4_1 (20.0 / 32.0)
#define Q8_0 (34.0 / 32.0)
#define MXFP4 (17.0 / 32.0)

typedef struct preset {
    const char *name;
    spk_shape s;
} preset;

/* Fields: name, layers, embd, heads, kv heads, head_dim, ff, vocab, experts, used, expert ff,
 * quant block, sliding window, sliding layers, tied, bytes weight/expert/head/kv. */
static const preset presets[] = {
    {"llama-3.1-8b", {"llama-3.1-8b", 32, 4096, 32, 8, 128, 14336, 128256, 0, 0, 0, 32, 0, 0, 0, BF16, 0, 0, BF16}},
    {"mistral-small-24b",
     {"mistral-small-24b", 40, 5120, 32, 8, 128, 32768, 131072, 0, 0, 0, 32, 0, 0, 0, BF16, 0, 0, BF16}},
    {"gpt-oss-20b",
     {"gpt-oss-20b", 24, 2880, 64, 8, 64, 0, 201088, 32, 4, 2880, 32, 128, 12, 0, BF16, MXFP4, BF16, BF16}},
    {"gpt-oss-120b",
     {"gpt-oss-120b", 36, 2880, 64, 8, 64, 0, 201088, 128, 4, 2880, 32, 128, 18, 0, BF16, MXFP4, BF16, BF16}},
    {"qwen3-30b-a3b",
     {"qwen3-30b-a3b", 48, 2048, 32, 4, 128, 0, 151936, 128, 8, 768, 32, 0, 0, 0, BF16, BF16, BF16, BF16}},
    {"smollm2-135m", {"smollm2-135m", 30, 576, 9, 3, 64, 1536, 49152, 0, 0, 0, 32, 0, 0, 1, Q4_1, 0, Q8_0, 2}},
    {"tiny", {"tiny", 4, 256, 8, 4, 32, 512, 1024, 0, 0, 0, 32, 0, 0, 1, Q4_1, 0, Q8_0, 2}},
    {"tiny-moe", {"tiny-moe", 4, 256, 8, 4, 32, 0, 1024, 8, 2, 256, 32, 0, 0, 1, Q4_1, Q4_1, Q8_0, 2}},
};
enum { N_PRESETS = (int)(sizeof presets / sizeof presets[0]) };

const char *const *spk_shape_preset_names(void)
{
    static const char *names[N_PRESETS + 1];
    for (int i = 0; i < N_PRESETS; i++)
        names[i] = presets[i].name;
    names[N_PRESETS] = NULL;
    return names;
}

spk_status spk_shape_preset(const char *name, spk_shape *out)
{
    if (!name || !out)
        return spk_err(SPK_ERR_INVALID_ARG, "shape preset: name or out is NULL");
    for (int i = 0; i < N_PRESETS; i++)
        if (strcmp(presets[i].name, name) == 0) {
            *out = presets[i].s;
            return SPK_OK;
        }
    char list[256];
    int n = 0;
    list[0] = 0;
    for (int i = 0; i < N_PRESETS && n < (int)sizeof list; i++)
        n += snprintf(list + n, sizeof list - (size_t)n, "%s%s", i ? ", " : "", presets[i].name);
    return spk_err(SPK_ERR_NOT_FOUND, "unknown shape preset '%.64s' (known: %s)", name, list);
}
