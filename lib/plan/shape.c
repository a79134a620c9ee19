/*
 * Model shapes for the planner: named presets (sources in docs/PLANNER.md) and the shape of a
 * validated GGUF file.
 */
#include "plan/shape.h"

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

/* ---- from a GGUF file ---------------------------------------------------------------------- */

static spk_status arch_u32(const spk_gguf_file *f, const char *arch, const char *suffix, uint32_t dflt,
                           bool required, uint32_t *out)
{
    char key[160];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    if (!spk_gguf_find(f, key)) {
        if (required)
            return spk_err(SPK_ERR_FORMAT, "%s: missing metadata key '%s'", f->path, key);
        *out = dflt;
        return SPK_OK;
    }
    return spk_gguf_get_u32(f, key, out);
}

/* Bytes per element and block size of a tensor, if present. */
static bool tensor_rate(const spk_gguf_file *f, const char *name, double *bpe, int *block)
{
    const spk_gguf_tensor *t = spk_gguf_find_tensor(f, name);
    if (!t || t->n_elements == 0)
        return false;
    *bpe = (double)t->nbytes / (double)t->n_elements;
    const spk_dtype_info *di = spk_dtype_get((uint32_t)t->type);
    if (block)
        *block = di ? (int)di->block : 32;
    return true;
}

/* Sliding-window layers as llama.cpp counts them. Qwen3, Qwen3-MoE and Llama files may carry a
 * window their llama.cpp graphs never apply, so those architectures get none. Otherwise
 * <arch>.attention.sliding_window_pattern is either a bool per layer or a period n (layer il
 * slides when il % n < n - 1; 0: every layer); absent, the period is 2, the gpt-oss pattern
 * (even layers slide, odd layers attend to everything). */
static spk_status sliding_layers(const spk_gguf_file *f, const char *arch, int nl, int swa, spk_shape *out)
{
    static const char *const none[] = {"qwen3", "qwen3moe", "llama", "qwen2", "qwen2moe"};
    for (size_t i = 0; i < sizeof none / sizeof none[0]; i++)
        if (strcmp(arch, none[i]) == 0)
            return SPK_OK;
    char key[160];
    snprintf(key, sizeof key, "%s.attention.sliding_window_pattern", arch);
    const spk_gguf_kv *kv = spk_gguf_find(f, key);
    int n_swa = 0;
    if (kv && kv->type == GGUF_ARRAY) {
        if (kv->v.arr.count != (uint64_t)nl)
            return spk_err(SPK_ERR_FORMAT, "%s: '%s' has %llu entries for %d layers", f->path, key,
                           (unsigned long long)kv->v.arr.count, nl);
        for (int il = 0; il < nl; il++) {
            int64_t v;
            if (!spk_gguf_arr_int(kv, (uint64_t)il, &v))
                return spk_err(SPK_ERR_FORMAT, "%s: '%s' entry %d is not a bool or integer", f->path, key, il);
            n_swa += v != 0;
        }
    } else {
        uint32_t period = 2;
        if (kv) {
            spk_status st = spk_gguf_get_u32(f, key, &period);
            if (st)
                return st;
        }
        for (int il = 0; il < nl; il++)
            n_swa += period == 0 || (uint32_t)il % period < period - 1;
    }
    out->sliding_window = n_swa ? swa : 0;
    out->n_sliding_layers = n_swa;
    return SPK_OK;
}

/* The expert tensors of layer 0, where present, must agree with the expert count and width: a
 * plan built from metadata that disagrees with the weights would be wrong. */
static spk_status check_experts(const spk_gguf_file *f, int ne, int nexp, int nffe)
{
    const spk_gguf_tensor *t = spk_gguf_find_tensor(f, "blk.0.ffn_gate_inp.weight");
    if (t && (t->n_dims != 2 || t->ne[0] != (uint64_t)ne || t->ne[1] != (uint64_t)nexp))
        return spk_err(SPK_ERR_FORMAT,
                       "%s: router blk.0.ffn_gate_inp.weight is %llu x %llu, expected %d x %d (embedding x "
                       "expert_count)",
                       f->path, (unsigned long long)t->ne[0], (unsigned long long)(t->n_dims > 1 ? t->ne[1] : 0),
                       ne, nexp);
    static const char *const names[] = {"blk.0.ffn_gate_exps.weight", "blk.0.ffn_up_exps.weight",
                                        "blk.0.ffn_down_exps.weight"};
    for (int i = 0; i < 3; i++) {
        t = spk_gguf_find_tensor(f, names[i]);
        if (!t)
            continue;
        uint64_t want0 = i == 2 ? (uint64_t)nffe : (uint64_t)ne, want1 = i == 2 ? (uint64_t)ne : (uint64_t)nffe;
        if (t->n_dims != 3 || t->ne[0] != want0 || t->ne[1] != want1 || t->ne[2] != (uint64_t)nexp)
            return spk_err(SPK_ERR_FORMAT,
                           "%s: %s has %u dims (%llu x %llu x %llu), expected %llu x %llu x %d (expert_count %d, "
                           "expert_feed_forward_length %d)",
                           f->path, names[i], t->n_dims, (unsigned long long)t->ne[0],
                           (unsigned long long)(t->n_dims > 1 ? t->ne[1] : 0),
                           (unsigned long long)(t->n_dims > 2 ? t->ne[2] : 0), (unsigned long long)want0,
                           (unsigned long long)want1, nexp, nexp, nffe);
    }
    return SPK_OK;
}

spk_status spk_shape_from_gguf(const spk_gguf_file *f, spk_shape *out)
{
    if (!f || !out)
        return spk_err(SPK_ERR_INVALID_ARG, "shape_from_gguf: file or out is NULL");
    memset(out, 0, sizeof *out);
    spk_gguf_str a;
    spk_status st = spk_gguf_get_str(f, "general.architecture", &a);
    if (st)
        return st;
    char arch[64];
    snprintf(arch, sizeof arch, "%.*s", (int)(a.len > 63 ? 63 : a.len), a.ptr);
    const char *base = strrchr(f->path, '/');
    snprintf(out->name, sizeof out->name, "%.47s", base ? base + 1 : f->path);

    uint32_t nl, ne, nh, nkv, nff, hd, nexp, nused, nffe, swa, nshff, nsh;
#define TRY(x)                                                                                    \
    do {                                                                                          \
        if ((st = (x)) != SPK_OK)                                                                 \
            return st;                                                                            \
    } while (0)
    TRY(arch_u32(f, arch, "block_count", 0, true, &nl));
    TRY(arch_u32(f, arch, "embedding_length", 0, true, &ne));
    TRY(arch_u32(f, arch, "attention.head_count", 0, true, &nh));
    TRY(arch_u32(f, arch, "attention.head_count_kv", nh, false, &nkv));
    TRY(arch_u32(f, arch, "expert_count", 0, false, &nexp));
    TRY(arch_u32(f, arch, "expert_used_count", 0, false, &nused));
    TRY(arch_u32(f, arch, "feed_forward_length", 0, nexp == 0, &nff));
    TRY(arch_u32(f, arch, "expert_feed_forward_length", nff, false, &nffe));
    /* shared experts (qwen2moe-style): an always-active MLP beside the routed experts */
    TRY(arch_u32(f, arch, "expert_shared_feed_forward_length", 0, false, &nshff));
    TRY(arch_u32(f, arch, "expert_shared_count", nshff ? 1 : 0, false, &nsh));
    TRY(arch_u32(f, arch, "attention.key_length", nh ? ne / nh : 0, false, &hd));
    TRY(arch_u32(f, arch, "attention.sliding_window", 0, false, &swa));
#undef TRY
    if (nl > 4096 || ne > (1u << 20) || nh > 4096 || nkv > 4096 || nff > (1u << 24) || hd > 65536 ||
        nexp > 65536 || nffe > (1u << 24) || nshff > (1u << 24) || nsh > 256 || (uint64_t)nshff * nsh > (1u << 24))
        return spk_err(SPK_ERR_FORMAT,
                       "%s: hyperparameters out of range (layers %u, embd %u, heads %u/%u, ff %u, experts %u x ff "
                       "%u, shared %u x ff %u)",
                       f->path, nl, ne, nh, nkv, nff, nexp, nffe, nsh, nshff);
    out->n_layers = (int)nl;
    out->n_embd = (int)ne;
    out->n_heads = (int)nh;
    out->n_kv_heads = (int)nkv;
    out->head_dim = (int)hd;
    out->n_experts = (int)nexp;
    out->n_experts_used = nexp ? (int)nused : 0;
    out->n_ff_expert = nexp ? (int)nffe : 0;
    /* A MoE file's feed_forward_length is not a per-layer MLP (Qwen3-MoE writes its unused dense
     * intermediate_size there); only shared experts are always active. */
    out->n_ff = nexp ? (int)(nshff * nsh) : (int)nff;
    if (swa && (st = sliding_layers(f, arch, (int)nl, (int)swa, out)) != SPK_OK)
        return st;
    if (nexp && (st = check_experts(f, (int)ne, (int)nexp, (int)nffe)) != SPK_OK)
        return st;

    const spk_gguf_tensor *emb = spk_gguf_find_tensor(f, "token_embd.weight");
    if (!emb || emb->n_dims != 2 || emb->ne[0] != ne)
        return spk_err(SPK_ERR_FORMAT, "%s: missing or mis-shaped token_embd.weight", f->path);
    out->n_vocab = emb->ne[1] > (1u << 24) ? 0 : (int)emb->ne[1];

    double r;
    int blk = 1, b;
    out->bytes_per_weight = 2.0;
    if (tensor_rate(f, "blk.0.attn_q.weight", &r, NULL))
        out->bytes_per_weight = r;
    if (tensor_rate(f, "blk.0.ffn_down.weight", &r, &b)) {
        out->bytes_per_weight = (out->bytes_per_weight + 3 * r) / 4; /* MLP dominates the bytes */
        blk = b > blk ? b : blk;
    }
    if (tensor_rate(f, "blk.0.attn_output.weight", &r, &b))
        blk = b > blk ? b : blk;
    if (nexp) { /* gate, up and down hold the same number of elements: their mean rate */
        static const char *const exps[] = {"blk.0.ffn_gate_exps.weight", "blk.0.ffn_up_exps.weight",
                                           "blk.0.ffn_down_exps.weight"};
        double sum = 0;
        int got = 0;
        for (int i = 0; i < 3; i++)
            if (tensor_rate(f, exps[i], &r, &b)) {
                sum += r;
                got++;
                if (i == 2)
                    blk = b > blk ? b : blk;
            }
        if (got)
            out->bytes_per_expert = sum / got;
    }
    out->quant_block = blk;
    out->tied_embeddings = spk_gguf_find_tensor(f, "output.weight") == NULL;
    if (tensor_rate(f, out->tied_embeddings ? "token_embd.weight" : "output.weight", &r, NULL))
        out->bytes_per_head = r;
    out->bytes_per_kv = 2.0;
    return spk_shape_check(out);
}
