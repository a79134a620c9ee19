/* The planner's layout choice for an open cluster: world size from the cluster, hardware
 * figures from defaults and SPK_PLAN_HW, ranking logged. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "plan/cost.h"
#include "plan/plan.h"

/* "key=value,key=value" over the defaults. */
static spk_status hw_from_env(spk_hw *hw)
{
    spk_hw_init(hw);
    const char *env = getenv("SPK_PLAN_HW");
    if (!env || !*env)
        return SPK_OK;
    struct {
        const char *key;
        double *field;
    } keys[] = {
        {"mem", &hw->mem_bw_GBps},           {"tflops", &hw->tflops},
        {"link", &hw->link_Gbps},            {"link_us", &hw->link_latency_us},
        {"ar_us", &hw->allreduce_latency_us}, {"ar_gbps", &hw->allreduce_busbw_GBps},
        {"overhead_us", &hw->step_overhead_us}, {"act_bytes", &hw->act_bytes},
    };
    const char *p = env;
    while (*p) {
        const char *eq = strchr(p, '=');
        const char *end = strchr(p, ',');
        if (!end)
            end = p + strlen(p);
        if (!eq || eq > end)
            return spk_err(SPK_ERR_INVALID_ARG, "SPK_PLAN_HW: item '%.*s' is not key=value", (int)(end - p), p);
        size_t klen = (size_t)(eq - p);
        double *field = NULL;
        for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
            if (strlen(keys[i].key) == klen && memcmp(keys[i].key, p, klen) == 0)
                field = keys[i].field;
        char num[64];
        size_t vlen = (size_t)(end - eq - 1);
        if (!field || vlen == 0 || vlen >= sizeof num)
            return spk_err(SPK_ERR_INVALID_ARG,
                           "SPK_PLAN_HW: item '%.*s' (keys: mem tflops link link_us ar_us ar_gbps overhead_us "
                           "act_bytes)",
                           (int)(end - p), p);
        memcpy(num, eq + 1, vlen);
        num[vlen] = 0;
        char *stop;
        double v = strtod(num, &stop);
        if (*stop || !(v >= 0) || v > 1e9)
            return spk_err(SPK_ERR_INVALID_ARG, "SPK_PLAN_HW: '%.*s' is not a non-negative number", (int)(end - p), p);
        *field = v;
        p = *end ? end + 1 : end;
    }
    return SPK_OK;
}

spk_status spk_plan_choose_for_cluster(const spk_cluster *cluster, const spk_shape *shape, int batch, int *pp,
                                       int *tp)
{
    if (!cluster || !shape || !pp || !tp || batch < 1)
        return spk_err(SPK_ERR_INVALID_ARG, "plan_choose_for_cluster: NULL argument or batch %d < 1", batch);
    int world = spk_cluster_world_size(cluster);
    if (world <= 1) {
        *pp = *tp = 1;
        return SPK_OK;
    }
    spk_hw hw;
    spk_status st = hw_from_env(&hw);
    if (st)
        return st;
    spk_cost c[16];
    int n = 0;
    st = spk_plan_rank_layouts(shape, world, batch, SPK_COST_DEFAULT_ISL, SPK_COST_DEFAULT_OSL, &hw, c, 16, &n);
    if (st)
        return st;
    for (int i = 0; i < n && i < 16; i++)
        spk_log(SPK_LOG_INFO, "planner: %s pp %d x tp %d: predicted %.1f output tok/s at batch %d%s", shape->name,
                c[i].pp, c[i].tp, c[i].tok_s, batch, i == 0 ? " (chosen)" : "");
    *pp = c[0].pp;
    *tp = c[0].tp;
    return SPK_OK;
}
