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

    uint32_t nl, ne, nh, nkv, nff, hd, nexp, nused, nffe, swa;
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
    TRY(arch_u32(f, arch, "attention.key_length", nh ? ne / nh : 0, false, &hd));
    TRY(arch_u32(f, arch, "attention.sliding_window", 0, false, &swa));
#undef TRY
    if (nl > 4096 || ne > (1u << 20) || nh > 4096 || nkv > 4096 || nff > (1u << 24) || hd > 65536 ||
        nexp > 65536 || nffe > (1u << 24))
        return spk_err(SPK_ERR_FORMAT, "%s: hyperparameters out of range (layers %u, embd %u, heads %u/%u, ff %u)",
                       f->path, nl, ne, nh, nkv, nff);
    out->n_layers = (int)nl;
    out->n_embd = (int)ne;
    out->n_heads = (int)nh;
    out->n_kv_heads = (int)nkv;
    out->head_dim = (int)hd;
    out->n_experts = (int)nexp;
    out->n_experts_used = nexp ? (int)nused : 0;
    out->n_ff_expert = nexp ? (int)nffe : 0;
    out->n_ff = nexp ? 0 : (int)nff;
    if (swa) {
        out->sliding_window = (int)swa;
        out->n_sliding_layers = (int)nl / 2; /* the alternating pattern of the known SWA families */
    }

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
    if (nexp && tensor_rate(f, "blk.0.ffn_down_exps.weight", &r, &b)) {
        out->bytes_per_expert = r;
        blk = b > blk ? b : blk;
    }
    out->quant_block = blk;
    out->tied_embeddings = spk_gguf_find_tensor(f, "output.weight") == NULL;
    if (tensor_rate(f, out->tied_embeddings ? "token_embd.weight" : "output.weight", &r, NULL))
        out->bytes_per_head = r;
    out->bytes_per_kv = 2.0;
    return spk_shape_check(out);
}
