/*
 * A model's hyperparameters: the one reader of the <arch>.* keys of a GGUF file (and of the byte
 * rates of its stored weights), for the weight loader and, through spk_shape_from_hparams, the
 * planner.
 */
#include <stdio.h>
#include <string.h>

#include "common/error.h"
#include "model/llama.h"

static spk_status get_u32_key(const spk_gguf_file *f, const char *arch, const char *suffix, bool required,
                              uint32_t dflt, uint32_t *out)
{
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    if (!spk_gguf_find(f, key)) {
        if (required)
            return spk_err(SPK_ERR_FORMAT, "%s: missing metadata key '%s'", f->path, key);
        *out = dflt;
        return SPK_OK;
    }
    return spk_gguf_get_u32(f, key, out);
}

static spk_status get_f32_key(const spk_gguf_file *f, const char *arch, const char *suffix, float dflt,
                              float *out)
{
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    if (!spk_gguf_find(f, key)) {
        *out = dflt;
        return SPK_OK;
    }
    return spk_gguf_get_f32(f, key, out);
}

/* Sliding-window layers as llama.cpp counts them. Qwen3, Qwen3-MoE, Qwen2(-MoE) and Llama files
 * may carry a window their llama.cpp graphs never apply, so those architectures get none.
 * Otherwise <arch>.attention.sliding_window_pattern is either a bool per layer or a period n
 * (layer il slides when il % n < n - 1; 0: every layer); absent, the period is 2, the gpt-oss
 * pattern (even layers slide, odd layers attend to everything). */
static spk_status sliding_layers(const spk_gguf_file *f, const char *arch, int nl, int *n_out)
{
    static const char *const none[] = {"qwen3", "qwen3moe", "llama", "qwen2", "qwen2moe"};
    *n_out = 0;
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
        if (kv)
            SPK_TRY(spk_gguf_get_u32(f, key, &period));
        for (int il = 0; il < nl; il++)
            n_swa += period == 0 || (uint32_t)il % period < period - 1;
    }
    *n_out = n_swa;
    return SPK_OK;
}

/* Layer 0's router and expert tensors, where present, must agree with the expert keys: a plan
 * built from metadata that disagrees with the weights would be wrong (spk_llama_load checks
 * every layer again as it locates them). */
static spk_status check_experts(const spk_gguf_file *f, const spk_hparams *hp)
{
    const uint64_t E = (uint64_t)hp->n_embd, F = (uint64_t)hp->n_ff, X = (uint64_t)hp->n_expert;
    const spk_gguf_tensor *t = spk_gguf_find_tensor(f, "blk.0.ffn_gate_inp.weight");
    if (t && (t->n_dims != 2 || t->ne[0] != E || t->ne[1] != X))
        return spk_err(SPK_ERR_FORMAT,
                       "%s: tensor 'blk.0.ffn_gate_inp.weight' has shape [%llu, %llu] (%u dims), expected [%d, %d] "
                       "(embedding_length, expert_count)",
                       f->path, (unsigned long long)t->ne[0], (unsigned long long)(t->n_dims > 1 ? t->ne[1] : 1),
                       t->n_dims, hp->n_embd, hp->n_expert);
    static const char *const names[] = {"blk.0.ffn_gate_exps.weight", "blk.0.ffn_up_exps.weight",
                                        "blk.0.ffn_down_exps.weight"};
    for (int i = 0; i < 3; i++) {
        t = spk_gguf_find_tensor(f, names[i]);
        const uint64_t n_in = i == 2 ? F : E, n_out = i == 2 ? E : F;
        if (t && (t->n_dims != 3 || t->ne[0] != n_in || t->ne[1] != n_out || t->ne[2] != X))
            return spk_err(SPK_ERR_FORMAT,
                           "%s: tensor '%s' has shape [%llu, %llu, %llu] (%u dims), expected [%llu, %llu, %d] "
                           "(n_in, n_out, expert_count %d; expert_feed_forward_length %d)",
                           f->path, names[i], (unsigned long long)t->ne[0],
                           (unsigned long long)(t->n_dims > 1 ? t->ne[1] : 1),
                           (unsigned long long)(t->n_dims > 2 ? t->ne[2] : 1), t->n_dims, (unsigned long long)n_in,
                           (unsigned long long)n_out, hp->n_expert, hp->n_expert, hp->n_ff);
    }
    return SPK_OK;
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

/* The stored weights' byte rates: attention and MLP of blk.0 (the MLP dominates), the experts'
 * mean, the output head (token_embd when tied); the quant block of the row-parallel tensors. */
static void byte_rates(const spk_gguf_file *f, spk_hparams *hp)
{
    double r;
    int blk = 1, b;
    hp->bytes_per_weight = 2.0;
    if (tensor_rate(f, "blk.0.attn_q.weight", &r, NULL))
        hp->bytes_per_weight = r;
    if (tensor_rate(f, "blk.0.ffn_down.weight", &r, &b)) {
        hp->bytes_per_weight = (hp->bytes_per_weight + 3 * r) / 4;
        blk = b > blk ? b : blk;
    }
    if (tensor_rate(f, "blk.0.attn_output.weight", &r, &b))
        blk = b > blk ? b : blk;
    if (hp->n_expert) { /* gate, up and down hold the same number of elements: their mean rate */
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
            hp->bytes_per_expert = sum / got;
    }
    hp->quant_block = blk;
    hp->tied = spk_gguf_find_tensor(f, "output.weight") == NULL;
    if (tensor_rate(f, hp->tied ? "token_embd.weight" : "output.weight", &r, NULL))
        hp->bytes_per_head = r;
}

spk_status spk_hparams_read(const spk_gguf_file *f, spk_hparams *hp)
{
    if (!f || !hp)
        return spk_err(SPK_ERR_INVALID_ARG, "hparams_read: file or hparams is NULL");
    memset(hp, 0, sizeof *hp);
    spk_gguf_str arch;
    SPK_TRY(spk_gguf_get_str(f, "general.architecture", &arch));
    if (arch.len == 0 || arch.len >= sizeof hp->arch || memchr(arch.ptr, 0, arch.len))
        return spk_err(SPK_ERR_UNSUPPORTED, "%s: architecture '%.*s' is not supported (%llu bytes: names of 1 to %zu "
                       "bytes without NUL are)", f->path, (int)(arch.len > 64 ? 64 : arch.len), arch.ptr,
                       (unsigned long long)arch.len, sizeof hp->arch - 1);
    memcpy(hp->arch, arch.ptr, arch.len);
    const char *a = hp->arch;
    /* qwen3: llama's layer plus per-head Q/K RMSNorm before RoPE, and NEOX RoPE (the converter
     * does not permute Q/K rows for qwen3 as it does for llama); qwen3moe: qwen3 with a
     * mixture-of-experts MLP in every layer; gpt-oss: MoE in every layer (softmax over the
     * selected logits, clamped SwiGLU), biases, learned attention sinks, sliding-window attention
     * on alternating layers, NEOX RoPE with YaRN */
    const bool gptoss = strcmp(a, "gpt-oss") == 0, moe_arch = gptoss || strcmp(a, "qwen3moe") == 0;
    hp->qk_norm = strcmp(a, "qwen3") == 0 || strcmp(a, "qwen3moe") == 0;
    hp->rope_neox = hp->qk_norm || gptoss;
    hp->attn_sinks = hp->biases = gptoss;

    uint32_t n_layers, n_embd, n_heads, n_kv, n_ff, n_ctx, head_dim, rot_dim, n_exp;
    SPK_TRY(get_u32_key(f, a, "block_count", true, 0, &n_layers));
    SPK_TRY(get_u32_key(f, a, "embedding_length", true, 0, &n_embd));
    SPK_TRY(get_u32_key(f, a, "attention.head_count", true, 0, &n_heads));
    SPK_TRY(get_u32_key(f, a, "attention.head_count_kv", false, n_heads, &n_kv));
    SPK_TRY(get_u32_key(f, a, "expert_count", moe_arch, 0, &n_exp));
    if (n_exp || moe_arch) { /* the experts' width; feed_forward_length (a dense MLP's) is unused */
        uint32_t n_used, n_ff_dense, n_shff, n_sh;
        SPK_TRY(get_u32_key(f, a, "expert_used_count", true, 0, &n_used));
        SPK_TRY(get_u32_key(f, a, "feed_forward_length", false, 0, &n_ff_dense));
        SPK_TRY(get_u32_key(f, a, "expert_feed_forward_length", moe_arch, n_ff_dense, &n_ff));
        if (n_exp < 1 || n_exp > 4096 || n_used < 1 || n_used > n_exp)
            return spk_err(SPK_ERR_FORMAT, "%s: bad %s.expert_count %u / expert_used_count %u (need 1 <= used <= "
                           "count <= 4096)", f->path, a, n_exp, n_used);
        /* shared experts (qwen2moe): an always-active MLP beside the routed experts */
        SPK_TRY(get_u32_key(f, a, "expert_shared_feed_forward_length", false, 0, &n_shff));
        SPK_TRY(get_u32_key(f, a, "expert_shared_count", false, n_shff ? 1 : 0, &n_sh));
        if (n_shff > 1u << 20 || n_sh > 256 || (uint64_t)n_shff * n_sh > 1u << 24)
            return spk_err(SPK_ERR_FORMAT, "%s: bad %s shared experts: %u x feed-forward %u", f->path, a, n_sh,
                           n_shff);
        hp->n_expert = (int)n_exp;
        hp->n_expert_used = (int)n_used;
        hp->n_ff_shared = (int)(n_shff * n_sh);
    } else {
        SPK_TRY(get_u32_key(f, a, "feed_forward_length", true, 0, &n_ff));
    }
    SPK_TRY(get_u32_key(f, a, "context_length", false, 2048, &n_ctx));
    if (n_layers < 1 || n_layers > 1024 || n_embd < 1 || n_embd > 65536 || n_heads < 1 ||
        n_heads > 1024 || n_kv < 1 || n_heads % n_kv != 0 || n_ff < 1 || n_ff > 1 << 20 || n_ctx < 1)
        return spk_err(SPK_ERR_FORMAT,
                       "%s: bad hyperparameters: layers %u, embd %u, heads %u, kv heads %u, ff %u, ctx %u",
                       f->path, n_layers, n_embd, n_heads, n_kv, n_ff, n_ctx);
    SPK_TRY(get_u32_key(f, a, "attention.key_length", false, n_embd / n_heads, &head_dim));
    uint32_t v_dim;
    SPK_TRY(get_u32_key(f, a, "attention.value_length", false, head_dim, &v_dim));
    SPK_TRY(get_u32_key(f, a, "rope.dimension_count", false, head_dim, &rot_dim));
    if (head_dim < 2 || head_dim > 1024 || head_dim % 2 || rot_dim > head_dim || rot_dim % 2 || rot_dim == 0)
        return spk_err(SPK_ERR_FORMAT, "%s: bad head_dim %u / rope dims %u", f->path, head_dim, rot_dim);
    if (v_dim != head_dim)
        return spk_err(SPK_ERR_UNSUPPORTED, "%s: %s.attention.value_length %u differs from key_length %u",
                       f->path, a, v_dim, head_dim);
    hp->n_layers = (int)n_layers;
    hp->n_embd = (int)n_embd;
    hp->n_heads = (int)n_heads;
    hp->n_kv_heads = (int)n_kv;
    hp->n_ff = (int)n_ff;
    hp->n_ctx_train = (int)(n_ctx > 1u << 24 ? 1u << 24 : n_ctx);
    hp->head_dim = (int)head_dim;
    hp->rot_dim = (int)rot_dim;
    SPK_TRY(get_f32_key(f, a, "attention.layer_norm_rms_epsilon", 1e-5f, &hp->eps));
    SPK_TRY(get_f32_key(f, a, "rope.freq_base", 10000.0f, &hp->rope_theta));
    if (!(hp->eps > 0 && hp->eps < 1) || !(hp->rope_theta > 1 && hp->rope_theta < 1e12f))
        return spk_err(SPK_ERR_FORMAT, "%s: bad rms eps %g or rope theta %g", f->path, hp->eps,
                       hp->rope_theta);
    uint32_t swa; /* gpt-oss: the window of the even layers (required) */
    SPK_TRY(get_u32_key(f, a, "attention.sliding_window", gptoss, 0, &swa));
    if (swa > 1u << 24 || (gptoss && swa < 1))
        return spk_err(SPK_ERR_FORMAT, "%s: bad %s.attention.sliding_window %u", f->path, a, swa);
    if (swa) {
        SPK_TRY(sliding_layers(f, a, hp->n_layers, &hp->n_swa_layers));
        hp->swa_window = gptoss || hp->n_swa_layers ? (int)swa : 0;
    }
    char key[128];
    snprintf(key, sizeof key, "%s.rope.scaling.type", a);
    spk_gguf_str stype;
    if (spk_gguf_find(f, key)) {
        SPK_TRY(spk_gguf_get_str(f, key, &stype));
        if (spk_gguf_str_eq(stype, "linear")) {
            SPK_TRY(get_f32_key(f, a, "rope.scaling.factor", 1.0f, &hp->scaling.factor));
            if (!(hp->scaling.factor >= 1.0f && hp->scaling.factor < 1e6f))
                return spk_err(SPK_ERR_FORMAT, "%s: bad rope scaling factor %g", f->path,
                               hp->scaling.factor);
        } else if (spk_gguf_str_eq(stype, "yarn") && gptoss) {
            uint32_t orig;
            SPK_TRY(get_f32_key(f, a, "rope.scaling.factor", 1.0f, &hp->scaling.factor));
            SPK_TRY(get_u32_key(f, a, "rope.scaling.original_context_length", true, 0, &orig));
            SPK_TRY(get_f32_key(f, a, "rope.scaling.yarn_beta_fast", 32.0f, &hp->yarn_beta_fast));
            SPK_TRY(get_f32_key(f, a, "rope.scaling.yarn_beta_slow", 1.0f, &hp->yarn_beta_slow));
            SPK_TRY(get_f32_key(f, a, "rope.scaling.yarn_attn_factor", 0.0f, &hp->yarn_attn_factor));
            if (!(hp->scaling.factor >= 1.0f && hp->scaling.factor < 1e6f) || orig < 1 || orig > 1u << 24 ||
                !(hp->yarn_beta_fast > 0 && hp->yarn_beta_fast < 1e6f) ||
                !(hp->yarn_beta_slow > 0 && hp->yarn_beta_slow < 1e6f) ||
                !(hp->yarn_attn_factor >= 0 && hp->yarn_attn_factor < 100))
                return spk_err(SPK_ERR_FORMAT, "%s: bad YaRN rope scaling: factor %g, original context %u, beta_fast %g, "
                               "beta_slow %g, attn_factor %g", f->path, hp->scaling.factor, orig, hp->yarn_beta_fast,
                               hp->yarn_beta_slow, hp->yarn_attn_factor);
            hp->scaling.orig_ctx = (int)orig;
            hp->yarn = true;
        } else if (!spk_gguf_str_eq(stype, "none")) {
            return spk_err(SPK_ERR_UNSUPPORTED, "%s: rope scaling type '%.*s' not supported",
                           f->path, (int)(stype.len > 32 ? 32 : stype.len), stype.ptr);
        }
    }
    /* the vocabulary: token_embd's rows (and vocab_size, when written, must agree) */
    const spk_gguf_tensor *te = spk_gguf_find_tensor(f, "token_embd.weight");
    if (!te)
        return spk_err(SPK_ERR_FORMAT, "%s: missing tensor 'token_embd.weight'", f->path);
    if (te->n_dims != 2 || te->ne[0] != n_embd || te->ne[1] < 1 || te->ne[1] > 1u << 24)
        return spk_err(SPK_ERR_FORMAT, "%s: token_embd.weight has a bad shape: [%llu, %llu] (%u dims), expected "
                       "[%u, 1..%u]", f->path, (unsigned long long)te->ne[0],
                       (unsigned long long)(te->n_dims > 1 ? te->ne[1] : 1), te->n_dims, n_embd, 1u << 24);
    hp->n_vocab = (int)te->ne[1];
    uint32_t nv;
    SPK_TRY(get_u32_key(f, a, "vocab_size", false, (uint32_t)hp->n_vocab, &nv));
    if (nv != (uint32_t)hp->n_vocab)
        return spk_err(SPK_ERR_FORMAT, "%s: vocab_size %u but token_embd has %d rows", f->path, nv,
                       hp->n_vocab);
    if (hp->n_expert)
        SPK_TRY(check_experts(f, hp));
    byte_rates(f, hp);
    return SPK_OK;
}
