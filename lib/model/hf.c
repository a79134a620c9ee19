/*
 * A Hugging Face model directory as a virtual GGUF file (see hf.h). The metadata keys, tensor
 * names, shapes and data are what convert_hf_to_gguf.py writes for llama and qwen3, so that
 * spk_llama_load, the tokenizer and the planner read a directory exactly as a converted file.
 */
#include "model/hf.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/error.h"
#include "model/hf_lazy.h"
#include "model/hf_tok.h"
#include "model/safetensors.h"

#define MAX_JSON_BYTES (64u << 20) /* config.json, index, tokenizer files */
#define SHOWN 96

struct spk_hf_model {
    spk_st_file **shards;
    size_t n_shards;
    char *config;
    size_t config_len;
    spk_hf_lazyset *lazy; /* converted tensors (model/hf_lazy.h) */
    void **allocs; /* keys, strings, arrays, names */
    size_t n_allocs, cap_allocs;
};

/* ---- the virtual file under construction --------------------------------------------------- */

typedef struct builder {
    spk_gguf_file *f;
    struct spk_hf_model *m;
    size_t cap_kv, cap_t;
    const char *dir;
} builder;

static void *keep(builder *b, void *p)
{
    if (!p)
        return NULL;
    if (b->m->n_allocs == b->m->cap_allocs) {
        size_t nc = b->m->cap_allocs ? 2 * b->m->cap_allocs : 64;
        void **na = realloc(b->m->allocs, nc * sizeof *na);
        if (!na) {
            free(p);
            return NULL;
        }
        b->m->allocs = na;
        b->m->cap_allocs = nc;
    }
    b->m->allocs[b->m->n_allocs++] = p;
    return p;
}

static spk_gguf_str keep_str(builder *b, const char *s, size_t n)
{
    spk_gguf_str r = {NULL, 0};
    char *c = keep(b, malloc(n + 1));
    if (c) {
        memcpy(c, s, n);
        c[n] = '\0';
        r.ptr = c;
        r.len = n;
    }
    return r;
}

/* The table `arr` (capacity *cap elements) with room for element n: arr itself, or a copy twice
 * as large (`first` elements at first); NULL (arr unchanged) when out of memory. */
static void *grow(void *arr, size_t *cap, uint64_t n, size_t elem, size_t first)
{
    if (n < *cap)
        return arr;
    size_t nc = *cap ? 2 * *cap : first;
    void *a = realloc(arr, nc * elem);
    if (a)
        *cap = nc;
    return a;
}

static spk_gguf_kv *add_kv(builder *b, const char *key, spk_gguf_vtype type)
{
    spk_gguf_file *f = b->f;
    spk_gguf_kv *kvs = grow(f->kv, &b->cap_kv, f->n_kv, sizeof *f->kv, 32);
    if (!kvs)
        return NULL;
    f->kv = kvs;
    spk_gguf_kv *kv = &f->kv[f->n_kv];
    memset(kv, 0, sizeof *kv);
    kv->key = keep_str(b, key, strlen(key));
    if (!kv->key.ptr)
        return NULL;
    kv->type = type;
    f->n_kv++;
    return kv;
}

static spk_status nomem(void) { return spk_err(SPK_ERR_NOMEM, "hf: out of memory"); }

static spk_status kv_u32(builder *b, const char *key, uint64_t v)
{
    spk_gguf_kv *kv = add_kv(b, key, GGUF_UINT32);
    if (!kv)
        return nomem();
    kv->v.u = v;
    return SPK_OK;
}

static spk_status kv_i32(builder *b, const char *key, int32_t v)
{
    spk_gguf_kv *kv = add_kv(b, key, GGUF_INT32);
    if (!kv)
        return nomem();
    kv->v.i = v;
    return SPK_OK;
}

static spk_status kv_f32(builder *b, const char *key, double v)
{
    spk_gguf_kv *kv = add_kv(b, key, GGUF_FLOAT32);
    if (!kv)
        return nomem();
    kv->v.f = (double)(float)v;
    return SPK_OK;
}

static spk_status kv_str(builder *b, const char *key, const char *s)
{
    spk_gguf_kv *kv = add_kv(b, key, GGUF_STRING);
    if (!kv)
        return nomem();
    kv->v.s = keep_str(b, s, strlen(s));
    return kv->v.s.ptr ? SPK_OK : nomem();
}

static spk_status kv_bool(builder *b, const char *key, int v)
{
    spk_gguf_kv *kv = add_kv(b, key, GGUF_BOOL);
    if (!kv)
        return nomem();
    kv->v.u = v ? 1 : 0;
    return SPK_OK;
}

/* An array in GGUF's encoding (what spk_gguf_arr_* walk): strings as u64 length + bytes,
 * numbers little-endian. `strs` or `vals` (int32 / float32, 4 bytes each). */
static spk_status kv_arr(builder *b, const char *key, spk_gguf_vtype et, size_t n, const spk_tok_str *strs,
                         const void *vals)
{
    size_t bytes = 0;
    if (et == GGUF_STRING)
        for (size_t i = 0; i < n; i++)
            bytes += 8 + strs[i].len;
    else
        bytes = 4 * n;
    uint8_t *d = keep(b, malloc(bytes ? bytes : 1));
    spk_gguf_kv *kv = d ? add_kv(b, key, GGUF_ARRAY) : NULL;
    if (!kv)
        return nomem();
    if (et == GGUF_STRING) {
        uint8_t *p = d;
        for (size_t i = 0; i < n; i++) {
            uint64_t l = strs[i].len;
            for (int k = 0; k < 8; k++)
                p[k] = (uint8_t)(l >> (8 * k));
            if (l)
                memcpy(p + 8, strs[i].ptr, l);
            p += 8 + l;
        }
    } else {
        const uint8_t *v = vals;
        for (size_t i = 0; i < n; i++) {
            uint32_t x;
            memcpy(&x, v + 4 * i, 4);
            for (int k = 0; k < 4; k++)
                d[4 * i + (size_t)k] = (uint8_t)(x >> (8 * k));
        }
    }
    kv->v.arr.type = et;
    kv->v.arr.count = n;
    kv->v.arr.data = d;
    kv->v.arr.nbytes = bytes;
    return SPK_OK;
}

/* tokenizer.json / tokenizer_config.json / generation_config.json as the tokenizer.ggml.* keys
 * and tokenizer.chat_template (model/hf_tok.h says which key gets what). No tokenizer.json:
 * no keys (the weights still load; spk_model_load then reports the missing tokenizer). */
static spk_status write_tokenizer(builder *b)
{
    char p[1200];
    snprintf(p, sizeof p, "%s/tokenizer.json", b->dir);
    if (access(p, F_OK) != 0)
        return SPK_OK;
    spk_hf_tok t;
    SPK_TRY(spk_hf_tok_read(b->dir, &t));
    const spk_tok_spec *s = &t.spec;
    spk_status st = kv_str(b, "tokenizer.ggml.model", s->model ? s->model : "gpt2");
    if (st == SPK_OK && s->pre)
        st = kv_str(b, "tokenizer.ggml.pre", s->pre);
    if (st == SPK_OK)
        st = kv_arr(b, "tokenizer.ggml.tokens", GGUF_STRING, s->n_tokens, s->tokens, NULL);
    if (st == SPK_OK && s->token_types)
        st = kv_arr(b, "tokenizer.ggml.token_type", GGUF_INT32, s->n_tokens, NULL, s->token_types);
    if (st == SPK_OK && s->n_merges)
        st = kv_arr(b, "tokenizer.ggml.merges", GGUF_STRING, s->n_merges, s->merges, NULL);
    if (st == SPK_OK && s->scores)
        st = kv_arr(b, "tokenizer.ggml.scores", GGUF_FLOAT32, s->n_tokens, NULL, s->scores);
    const struct {
        const char *key;
        int32_t v;
    } ids[] = {{"tokenizer.ggml.bos_token_id", s->bos}, {"tokenizer.ggml.eos_token_id", s->eos},
               {"tokenizer.ggml.eot_token_id", s->eot}, {"tokenizer.ggml.eom_token_id", s->eom}};
    for (size_t i = 0; i < sizeof ids / sizeof ids[0] && st == SPK_OK; i++)
        if (ids[i].v >= 0)
            st = kv_u32(b, ids[i].key, (uint64_t)ids[i].v);
    if (st == SPK_OK && s->add_bos >= 0)
        st = kv_bool(b, "tokenizer.ggml.add_bos_token", s->add_bos);
    if (st == SPK_OK && s->add_eos >= 0)
        st = kv_bool(b, "tokenizer.ggml.add_eos_token", s->add_eos);
    if (st == SPK_OK && s->model && !strcmp(s->model, "llama") && s->add_space_prefix >= 0)
        st = kv_bool(b, "tokenizer.ggml.add_space_prefix", s->add_space_prefix);
    if (st == SPK_OK && s->model && !strcmp(s->model, "llama") && s->spm_prefix_mode != 0)
        st = kv_i32(b, "tokenizer.ggml.spm_prefix_mode", s->spm_prefix_mode); /* ours: HF Metaspace */
    if (st == SPK_OK && t.n_eog)
        st = kv_arr(b, "tokenizer.ggml.eog_token_ids", GGUF_INT32, t.n_eog, NULL, t.eog_ids);
    if (st == SPK_OK && t.chat_template)
        st = kv_str(b, "tokenizer.chat_template", t.chat_template);
    spk_hf_tok_free(&t);
    return st;
}

static spk_gguf_tensor *add_tensor(builder *b, const char *name)
{
    spk_gguf_file *f = b->f;
    spk_gguf_tensor *ts = grow(f->tensors, &b->cap_t, f->n_tensors, sizeof *f->tensors, 64);
    if (!ts)
        return NULL;
    f->tensors = ts;
    spk_gguf_tensor *t = &f->tensors[f->n_tensors];
    memset(t, 0, sizeof *t);
    t->name = keep_str(b, name, strlen(name));
    if (!t->name.ptr)
        return NULL;
    f->n_tensors++;
    return t;
}

void spk_hf_free(struct spk_hf_model *m)
{
    if (!m)
        return;
    spk_hf_lazy_free(m->lazy); /* first: its thread reads the shards, its tensors are in allocs */
    for (size_t i = 0; i < m->n_shards; i++)
        spk_st_close(m->shards[i]);
    free(m->shards);
    for (size_t i = 0; i < m->n_allocs; i++)
        free(m->allocs[i]);
    free(m->allocs);
    free(m->config);
    free(m);
}

/* ---- files ------------------------------------------------------------------------------------ */

static spk_status read_small(const char *path, char **out, size_t *len, int *missing)
{
    *out = NULL;
    if (missing)
        *missing = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (missing && errno == ENOENT) {
            *missing = 1;
            return SPK_OK;
        }
        return spk_err(SPK_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode) || sb.st_size < 0 ||
        (uint64_t)sb.st_size > MAX_JSON_BYTES) {
        close(fd);
        return spk_err(SPK_ERR_FORMAT, "%s: not a regular file of at most %u bytes", path, MAX_JSON_BYTES);
    }
    size_t n = (size_t)sb.st_size, got = 0;
    char *buf = malloc(n + 1);
    if (!buf) {
        close(fd);
        return nomem();
    }
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r <= 0) {
            int e = errno;
            free(buf);
            close(fd);
            return spk_err(SPK_ERR_IO, "%s: read failed: %s", path, r ? strerror(e) : "short file");
        }
        got += (size_t)r;
    }
    close(fd);
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return SPK_OK;
}

static spk_status parse_json(const char *path, const char *txt, size_t len, cJSON **out)
{
    const char *end = NULL;
    *out = cJSON_ParseWithLengthOpts(txt, len, &end, 0);
    if (!*out || !cJSON_IsObject(*out)) {
        const char *at = cJSON_GetErrorPtr();
        long off = *out ? 0 : at && at >= txt && at <= txt + len ? (long)(at - txt) : -1;
        cJSON_Delete(*out);
        *out = NULL;
        return spk_err(SPK_ERR_FORMAT, "%s: not a JSON object (parse error near byte %ld of %zu)", path, off, len);
    }
    return SPK_OK;
}

static int plain_file_name(const char *s)
{
    return s[0] && s[0] != '.' && !strchr(s, '/') && strlen(s) < 256;
}

/* ---- config.json ------------------------------------------------------------------------------ */

enum arch { A_LLAMA, A_QWEN3, A_QWEN3MOE, A_GPTOSS };
static const char *const arch_gguf[] = {"llama", "qwen3", "qwen3moe", "gpt-oss"};

typedef struct hparams {
    int llama; /* arch == A_LLAMA */
    enum arch arch;
    uint64_t n_layers, n_embd, n_heads, n_kv, n_ff, n_ctx, n_vocab, head_dim;
    uint64_t n_expert, n_expert_used, n_ff_exp; /* qwen3moe, gpt-oss */
    uint64_t swa;                               /* gpt-oss: sliding_window */
    int head_dim_given;
    double eps, theta;
    int have_theta;
    const cJSON *rope; /* rope_scaling / rope_parameters object or NULL */
    uint64_t block_size; /* FP8 weight_block_size (square), default 128 */
} hparams;

static spk_status cfg_uint(const char *path, const cJSON *cfg, const char *key, int required, uint64_t dflt,
                           uint64_t *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    if (!v || cJSON_IsNull(v)) {
        if (required)
            return spk_err(SPK_ERR_FORMAT, "%s: config.json has no '%s'", path, key);
        *out = dflt;
        return SPK_OK;
    }
    double d = cJSON_IsNumber(v) ? v->valuedouble : -1;
    if (!(d >= 1 && d < 4294967296.0) || floor(d) != d)
        return spk_err(SPK_ERR_FORMAT, "%s: config.json '%s' is not a positive 32-bit integer", path, key);
    *out = (uint64_t)d;
    return SPK_OK;
}

static spk_status cfg_num(const char *path, const cJSON *obj, const char *key, double dflt, double *out, int *found)
{
    const cJSON *v = obj ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;
    if (found)
        *found = 0;
    if (!v || cJSON_IsNull(v)) {
        *out = dflt;
        return SPK_OK;
    }
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
        return spk_err(SPK_ERR_FORMAT, "%s: config.json '%s' is not a number", path, key);
    *out = v->valuedouble;
    if (found)
        *found = 1;
    return SPK_OK;
}

/* The experts' hyperparameters (qwen3moe, gpt-oss) and what the architectures fix: where a
 * config asks for something llama.cpp's qwen3moe / gpt-oss graphs (and ours) do not compute, it
 * is refused here rather than run differently from transformers. */
static spk_status read_moe_hparams(const char *dir, const cJSON *cfg, hparams *hp)
{
    const int gpt = hp->arch == A_GPTOSS;
    /* the converter's find_hparam order; transformers 5 saves Qwen3-MoE's as num_local_experts */
    const int local = cJSON_GetObjectItemCaseSensitive(cfg, "num_local_experts") != NULL;
    SPK_TRY(cfg_uint(dir, cfg, local || gpt ? "num_local_experts" : "num_experts", 1, 0, &hp->n_expert));
    const cJSON *used = cJSON_GetObjectItemCaseSensitive(cfg, "num_experts_per_tok");
    SPK_TRY(cfg_uint(dir, cfg, used || !gpt ? "num_experts_per_tok" : "experts_per_token", 1, 0, &hp->n_expert_used));
    if (gpt)
        hp->n_ff_exp = hp->n_ff;
    else
        SPK_TRY(cfg_uint(dir, cfg, "moe_intermediate_size", 1, 0, &hp->n_ff_exp));
    if (hp->n_expert > 4096 || hp->n_expert_used > hp->n_expert || hp->n_ff_exp > (1u << 20))
        return spk_err(SPK_ERR_FORMAT, "%s/config.json: bad experts: %llu experts, %llu per token, %llu wide", dir,
                       (unsigned long long)hp->n_expert, (unsigned long long)hp->n_expert_used,
                       (unsigned long long)hp->n_ff_exp);
    if (!gpt) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, "norm_topk_prob");
        const cJSON *ml = cJSON_GetObjectItemCaseSensitive(cfg, "mlp_only_layers");
        double step = 1;
        SPK_TRY(cfg_num(dir, cfg, "decoder_sparse_step", 1, &step, NULL));
        if (!cJSON_IsTrue(v))
            return spk_err(SPK_ERR_UNSUPPORTED, "%s/config.json: qwen3_moe with norm_topk_prob false (or absent) is "
                           "not supported (the qwen3moe graph renormalizes the top-k weights)", dir);
        if (step != 1 || (ml && !cJSON_IsNull(ml) && (!cJSON_IsArray(ml) || cJSON_GetArraySize(ml) != 0)))
            return spk_err(SPK_ERR_UNSUPPORTED, "%s/config.json: qwen3_moe with dense layers (decoder_sparse_step "
                           "%g, mlp_only_layers) is not supported: every layer must be MoE", dir, step);
        if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(cfg, "use_sliding_window")))
            return spk_err(SPK_ERR_UNSUPPORTED, "%s/config.json: qwen3_moe with use_sliding_window is not supported",
                           dir);
        return SPK_OK;
    }
    SPK_TRY(cfg_uint(dir, cfg, "sliding_window", 1, 0, &hp->swa));
    double limit = 7.0, alpha = 1.702;
    SPK_TRY(cfg_num(dir, cfg, "swiglu_limit", 7.0, &limit, NULL));
    SPK_TRY(cfg_num(dir, cfg, "swiglu_alpha", 1.702, &alpha, NULL));
    if (limit != 7.0 || fabs(alpha - 1.702) > 1e-9)
        return spk_err(SPK_ERR_UNSUPPORTED, "%s/config.json: gpt_oss swiglu_limit %g / swiglu_alpha %g (the gpt-oss "
                       "graph computes 7 and 1.702)", dir, limit, alpha);
    if (cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(cfg, "attention_bias")))
        return spk_err(SPK_ERR_UNSUPPORTED, "%s/config.json: gpt_oss without attention biases is not supported", dir);
    const cJSON *lt = cJSON_GetObjectItemCaseSensitive(cfg, "layer_types");
    if (lt && !cJSON_IsNull(lt)) {
        int ok = cJSON_IsArray(lt) && (uint64_t)cJSON_GetArraySize(lt) == hp->n_layers;
        for (int i = 0; ok && i < cJSON_GetArraySize(lt); i++) {
            const cJSON *x = cJSON_GetArrayItem(lt, i);
            ok = cJSON_IsString(x) && !strcmp(x->valuestring, i % 2 ? "full_attention" : "sliding_attention");
        }
        if (!ok)
            return spk_err(SPK_ERR_UNSUPPORTED, "%s/config.json: gpt_oss layer_types must alternate "
                           "sliding_attention, full_attention (from layer 0) over the %llu layers", dir,
                           (unsigned long long)hp->n_layers);
    }
    return SPK_OK;
}

static spk_status read_hparams(const char *dir, const cJSON *cfg, hparams *hp)
{
    memset(hp, 0, sizeof *hp);
    const cJSON *archs = cJSON_GetObjectItemCaseSensitive(cfg, "architectures");
    const cJSON *a0 = cJSON_IsArray(archs) ? cJSON_GetArrayItem(archs, 0) : NULL;
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(cfg, "model_type");
    const char *arch = cJSON_IsString(a0) ? a0->valuestring : NULL;
    const char *mtype = cJSON_IsString(mt) ? mt->valuestring : "";
    if (arch ? (!strcmp(arch, "LlamaForCausalLM") || !strcmp(arch, "MistralForCausalLM"))
             : (!strcmp(mtype, "llama") || !strcmp(mtype, "mistral")))
        hp->arch = A_LLAMA;
    else if (arch ? !strcmp(arch, "Qwen3ForCausalLM") : !strcmp(mtype, "qwen3"))
        hp->arch = A_QWEN3;
    else if (arch ? !strcmp(arch, "Qwen3MoeForCausalLM") : !strcmp(mtype, "qwen3_moe"))
        hp->arch = A_QWEN3MOE;
    else if (arch ? !strcmp(arch, "GptOssForCausalLM") : !strcmp(mtype, "gpt_oss"))
        hp->arch = A_GPTOSS;
    else
        return spk_err(SPK_ERR_UNSUPPORTED,
                       "%s/config.json: architecture '%.64s' (model_type '%.32s') is not supported "
                       "(LlamaForCausalLM, MistralForCausalLM, Qwen3ForCausalLM, Qwen3MoeForCausalLM, "
                       "GptOssForCausalLM)", dir, arch ? arch : "?", mtype);
    hp->llama = hp->arch == A_LLAMA;
    SPK_TRY(cfg_uint(dir, cfg, "num_hidden_layers", 1, 0, &hp->n_layers));
    SPK_TRY(cfg_uint(dir, cfg, "hidden_size", 1, 0, &hp->n_embd));
    SPK_TRY(cfg_uint(dir, cfg, "num_attention_heads", 1, 0, &hp->n_heads));
    SPK_TRY(cfg_uint(dir, cfg, "num_key_value_heads", 0, hp->n_heads, &hp->n_kv));
    SPK_TRY(cfg_uint(dir, cfg, "intermediate_size", 1, 0, &hp->n_ff));
    SPK_TRY(cfg_uint(dir, cfg, "vocab_size", 1, 0, &hp->n_vocab));
    SPK_TRY(cfg_uint(dir, cfg, "max_position_embeddings", 0, 0, &hp->n_ctx));
    hp->head_dim_given = cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(cfg, "head_dim"));
    SPK_TRY(cfg_uint(dir, cfg, "head_dim", 0, hp->n_embd / hp->n_heads, &hp->head_dim));
    if (hp->n_layers > 1024 || hp->n_embd > 65536 || hp->n_heads > 1024 || hp->n_kv > hp->n_heads ||
        hp->n_heads % hp->n_kv || hp->n_ff > (1u << 20) || hp->n_vocab > (1u << 24) || hp->head_dim > 1024 ||
        hp->head_dim < 2 || hp->head_dim % 2)
        return spk_err(SPK_ERR_FORMAT,
                       "%s/config.json: bad hyperparameters: layers %llu, hidden %llu, heads %llu, kv heads %llu, "
                       "intermediate %llu, vocab %llu, head_dim %llu", dir, (unsigned long long)hp->n_layers,
                       (unsigned long long)hp->n_embd, (unsigned long long)hp->n_heads,
                       (unsigned long long)hp->n_kv, (unsigned long long)hp->n_ff,
                       (unsigned long long)hp->n_vocab, (unsigned long long)hp->head_dim);
    int found = 0;
    SPK_TRY(cfg_num(dir, cfg, "rms_norm_eps", 1e-6, &hp->eps, &found));
    hp->rope = cJSON_GetObjectItemCaseSensitive(cfg, "rope_scaling");
    if (!cJSON_IsObject(hp->rope))
        hp->rope = cJSON_GetObjectItemCaseSensitive(cfg, "rope_parameters");
    if (!cJSON_IsObject(hp->rope))
        hp->rope = NULL;
    SPK_TRY(cfg_num(dir, cfg, "rope_theta", 10000.0, &hp->theta, &hp->have_theta));
    if (!hp->have_theta && hp->rope)
        SPK_TRY(cfg_num(dir, hp->rope, "rope_theta", 10000.0, &hp->theta, &hp->have_theta));
    for (const char *k = "attention_bias"; k && hp->arch != A_GPTOSS;
         k = strcmp(k, "attention_bias") ? NULL : "mlp_bias") {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, k);
        if (cJSON_IsTrue(v))
            return spk_err(SPK_ERR_UNSUPPORTED, "%s/config.json: %s = true is not supported", dir, k);
    }
    if (hp->arch == A_QWEN3MOE || hp->arch == A_GPTOSS)
        SPK_TRY(read_moe_hparams(dir, cfg, hp));
    hp->block_size = 128;
    const cJSON *q = cJSON_GetObjectItemCaseSensitive(cfg, "quantization_config");
    const cJSON *bs = q ? cJSON_GetObjectItemCaseSensitive(q, "weight_block_size") : NULL;
    if (cJSON_IsArray(bs)) {
        const cJSON *b0 = cJSON_GetArrayItem(bs, 0), *b1 = cJSON_GetArrayItem(bs, 1);
        if (cJSON_GetArraySize(bs) != 2 || !cJSON_IsNumber(b0) || !cJSON_IsNumber(b1) ||
            b0->valuedouble != b1->valuedouble || !(b0->valuedouble >= 1 && b0->valuedouble <= 65536))
            return spk_err(SPK_ERR_UNSUPPORTED, "%s/config.json: quantization_config.weight_block_size must be "
                           "two equal positive integers", dir);
        hp->block_size = (uint64_t)b0->valuedouble;
    }
    return SPK_OK;
}

/* ---- metadata -------------------------------------------------------------------------------- */

static spk_status write_metadata(builder *b, const hparams *hp, const cJSON *cfg, float *rope_factors, int *n_factors)
{
    const char *A = arch_gguf[hp->arch];
    char k[128];
    SPK_TRY(kv_str(b, "general.architecture", A));
    const char *base = strrchr(b->dir, '/');
    char nm[256];
    snprintf(nm, sizeof nm, "%s", base && base[1] ? base + 1 : b->dir);
    size_t nl = strlen(nm);
    while (nl > 1 && nm[nl - 1] == '/')
        nm[--nl] = '\0';
    SPK_TRY(kv_str(b, "general.name", nm));
#define U32(suffix, v)                                                                             \
    do {                                                                                           \
        snprintf(k, sizeof k, "%s." suffix, A);                                                    \
        SPK_TRY(kv_u32(b, k, v));                                                                      \
    } while (0)
#define F32(suffix, v)                                                                             \
    do {                                                                                           \
        snprintf(k, sizeof k, "%s." suffix, A);                                                    \
        SPK_TRY(kv_f32(b, k, v));                                                                      \
    } while (0)
    U32("block_count", hp->n_layers);
    if (hp->n_ctx)
        U32("context_length", hp->n_ctx);
    U32("embedding_length", hp->n_embd);
    U32("feed_forward_length", hp->n_ff);
    U32("attention.head_count", hp->n_heads);
    U32("attention.head_count_kv", hp->n_kv);
    if (hp->have_theta)
        F32("rope.freq_base", hp->theta);
    F32("attention.layer_norm_rms_epsilon", hp->eps);
    /* the converter reads config.json through transformers, whose Llama/Qwen3 configs always
     * carry head_dim (hidden / heads when absent), so it always writes these */
    U32("attention.key_length", hp->head_dim);
    U32("attention.value_length", hp->head_dim);
    if (hp->llama) {
        U32("vocab_size", hp->n_vocab);
        U32("rope.dimension_count", hp->head_dim);
    }
    if (hp->n_expert) {
        U32("expert_count", hp->n_expert);
        U32("expert_used_count", hp->n_expert_used);
        U32("expert_feed_forward_length", hp->n_ff_exp);
    }
    if (hp->swa)
        U32("attention.sliding_window", hp->swa);
    (void)cfg;
    *n_factors = 0;
    if (hp->rope) {
        const cJSON *rt = cJSON_GetObjectItemCaseSensitive(hp->rope, "rope_type");
        if (!rt)
            rt = cJSON_GetObjectItemCaseSensitive(hp->rope, "type");
        const char *type = cJSON_IsString(rt) ? rt->valuestring : "default";
        double factor = 0;
        int have_factor = 0;
        SPK_TRY(cfg_num(b->dir, hp->rope, "factor", 0, &factor, &have_factor));
        if (!strcmp(type, "default")) {
            /* no scaling */
        } else if (!strcmp(type, "linear") && have_factor) {
            snprintf(k, sizeof k, "%s.rope.scaling.type", A);
            SPK_TRY(kv_str(b, k, "linear"));
            F32("rope.scaling.factor", factor);
        } else if (!strcmp(type, "llama3") && hp->llama) {
            /* the converter's generate_extra_tensors: per-frequency divisors (rope_freqs) */
            double lo, hi, old;
            SPK_TRY(cfg_num(b->dir, hp->rope, "low_freq_factor", 1.0, &lo, NULL));
            SPK_TRY(cfg_num(b->dir, hp->rope, "high_freq_factor", 4.0, &hi, NULL));
            SPK_TRY(cfg_num(b->dir, hp->rope, "original_max_position_embeddings", 8192, &old, NULL));
            if (!have_factor)
                factor = 8.0;
            if (!(factor > 0) || !(hi > lo) || !(old > 0))
                return spk_err(SPK_ERR_FORMAT, "%s/config.json: bad llama3 rope scaling (factor %g, low %g, "
                               "high %g, original context %g)", b->dir, factor, lo, hi, old);
            const int dim = (int)hp->head_dim;
            const float theta = (float)hp->theta, fac = (float)factor, flo = (float)lo, fhi = (float)hi,
                        fold = (float)old;
            const float lo_wl = (float)(old / lo), hi_wl = (float)(old / hi);
            for (int i = 0; i < dim / 2; i++) {
                float freq = 1.0f / powf(theta, (float)(2 * i) / (float)dim);
                float wavelen = (float)(2 * 3.14159265358979323846) / freq;
                float r;
                if (wavelen < hi_wl)
                    r = 1.0f;
                else if (wavelen > lo_wl)
                    r = fac;
                else {
                    float smooth = (fold / wavelen - flo) / (fhi - flo);
                    r = 1.0f / ((1.0f - smooth) / fac + smooth);
                }
                rope_factors[i] = r;
            }
            *n_factors = dim / 2;
        } else if (!strcmp(type, "yarn") && hp->arch == A_GPTOSS && have_factor) {
            /* the converter's keys; the truncated YaRN of transformers' default is not what
             * llama.cpp (and we) compute, gpt-oss's config says truncate: false */
            double orig = 0, x = 0;
            int have = 0;
            const cJSON *tr = cJSON_GetObjectItemCaseSensitive(hp->rope, "truncate");
            if (!cJSON_IsFalse(tr))
                return spk_err(SPK_ERR_UNSUPPORTED, "%s/config.json: YaRN rope scaling without \"truncate\": false "
                               "(transformers then truncates the correction range; llama.cpp's YaRN does not)", b->dir);
            SPK_TRY(cfg_num(b->dir, hp->rope, "original_max_position_embeddings", 0, &orig, &have));
            if (!have || !(orig >= 1 && orig < 4294967296.0) || !(factor > 0))
                return spk_err(SPK_ERR_FORMAT, "%s/config.json: YaRN rope scaling needs a factor > 0 (%g) and "
                               "original_max_position_embeddings >= 1 (%g)", b->dir, factor, orig);
            snprintf(k, sizeof k, "%s.rope.scaling.type", A);
            SPK_TRY(kv_str(b, k, "yarn"));
            F32("rope.scaling.factor", factor);
            U32("rope.scaling.original_context_length", (uint64_t)orig);
            SPK_TRY(cfg_num(b->dir, hp->rope, "extrapolation_factor", 0, &x, &have));
            if (have)
                F32("rope.scaling.yarn_ext_factor", x);
            SPK_TRY(cfg_num(b->dir, hp->rope, "attention_factor", 0, &x, &have));
            if (!have)
                SPK_TRY(cfg_num(b->dir, hp->rope, "attn_factor", 0, &x, &have));
            if (have)
                F32("rope.scaling.yarn_attn_factor", x);
            SPK_TRY(cfg_num(b->dir, hp->rope, "beta_fast", 0, &x, &have));
            if (have)
                F32("rope.scaling.yarn_beta_fast", x);
            SPK_TRY(cfg_num(b->dir, hp->rope, "beta_slow", 0, &x, &have));
            if (have)
                F32("rope.scaling.yarn_beta_slow", x);
        } else {
            return spk_err(SPK_ERR_UNSUPPORTED, "%s/config.json: rope scaling type '%.32s' is not supported "
                           "(default, linear, llama3 for llama, yarn for gpt-oss)", b->dir, type);
        }
    }
#undef U32
#undef F32
    return SPK_OK;
}

/* ---- tensors ------------------------------------------------------------------------------ */

typedef struct entry {
    const spk_st_tensor *t;
    const spk_st_file *shard;
    int used;
} entry;

typedef struct index {
    entry *e;
    size_t n;
} index_t;

static int entry_cmp(const void *a, const void *b)
{
    return strcmp(((const entry *)a)->t->name, ((const entry *)b)->t->name);
}

static entry *lookup(index_t *ix, const char *name)
{
    spk_st_tensor key = {0};
    key.name = (char *)name;
    entry k = {&key, NULL, 0};
    return bsearch(&k, ix->e, ix->n, sizeof *ix->e, entry_cmp);
}

enum kind { K_VEC, K_MAT };
typedef struct role {
    const char *hf, *gguf;
    enum kind kind;
    int perm; /* 1: q rows, 2: k rows */
} role;

static const role layer_roles[] = {
    {"input_layernorm", "attn_norm", K_VEC, 0},
    {"post_attention_layernorm", "ffn_norm", K_VEC, 0},
    {"self_attn.q_norm", "attn_q_norm", K_VEC, 0},
    {"self_attn.k_norm", "attn_k_norm", K_VEC, 0},
    {"self_attn.q_proj", "attn_q", K_MAT, 1},
    {"self_attn.k_proj", "attn_k", K_MAT, 2},
    {"self_attn.v_proj", "attn_v", K_MAT, 0},
    {"self_attn.o_proj", "attn_output", K_MAT, 0},
    {"mlp.gate_proj", "ffn_gate", K_MAT, 0},
    {"mlp.up_proj", "ffn_up", K_MAT, 0},
    {"mlp.down_proj", "ffn_down", K_MAT, 0},
};

/* Expected torch shape [rows, cols] (vectors: cols only) of a role. */
static void role_shape(const hparams *hp, const char *gguf, uint64_t *rows, uint64_t *cols)
{
    const uint64_t E = hp->n_embd, Q = hp->n_heads * hp->head_dim, KV = hp->n_kv * hp->head_dim, F = hp->n_ff;
    *rows = 1;
    if (!strcmp(gguf, "attn_norm") || !strcmp(gguf, "ffn_norm") || !strcmp(gguf, "output_norm") ||
        !strcmp(gguf, "post_attention_norm"))
        *cols = E;
    else if (!strcmp(gguf, "attn_sinks"))
        *cols = hp->n_heads;
    else if (!strcmp(gguf, "ffn_gate_inp"))
        *rows = hp->n_expert, *cols = E;
    else if (!strcmp(gguf, "attn_q_norm") || !strcmp(gguf, "attn_k_norm"))
        *cols = hp->head_dim;
    else if (!strcmp(gguf, "attn_q"))
        *rows = Q, *cols = E;
    else if (!strcmp(gguf, "attn_k") || !strcmp(gguf, "attn_v"))
        *rows = KV, *cols = E;
    else if (!strcmp(gguf, "attn_output"))
        *rows = E, *cols = Q;
    else if (!strcmp(gguf, "ffn_gate") || !strcmp(gguf, "ffn_up"))
        *rows = F, *cols = E;
    else if (!strcmp(gguf, "ffn_down"))
        *rows = E, *cols = F;
    else /* token_embd, output */
        *rows = hp->n_vocab, *cols = E;
}

static float e4m3_table[256];
static float e2m1_table[16] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6, -0.0f, -0.5f, -1, -1.5f, -2, -3, -4, -6};

static void init_tables(void)
{
    for (int i = 0; i < 256; i++) {
        int s = i >> 7, e = (i >> 3) & 15, m = i & 7;
        float v;
        if (e == 15 && m == 7)
            v = NAN;
        else if (e == 0)
            v = ldexpf((float)m / 8.0f, -6);
        else
            v = ldexpf(1.0f + (float)m / 8.0f, e - 7);
        e4m3_table[i] = s ? -v : v;
    }
}

static float scalar_at(const spk_st_tensor *t, uint64_t i)
{
    const uint8_t *p = t->data;
    switch (t->dtype) {
    case SPK_ST_F32: {
        float v;
        memcpy(&v, p + 4 * i, 4);
        return v;
    }
    case SPK_ST_BF16: {
        uint16_t v;
        memcpy(&v, p + 2 * i, 2);
        return spk_bf16_to_f32(v);
    }
    case SPK_ST_F16: {
        uint16_t v;
        memcpy(&v, p + 2 * i, 2);
        return spk_f16_to_f32(v);
    }
    case SPK_ST_F8_E4M3:
        return e4m3_table[p[i]];
    default:
        return NAN;
    }
}

static int has_suffix(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

static int float_dtype(spk_st_dtype d) { return d == SPK_ST_F32 || d == SPK_ST_BF16 || d == SPK_ST_F16; }

/* Source row of destination row d under the converter's permute (n_head groups of rows). */
static uint64_t src_row(uint64_t d, uint64_t rows, uint64_t n_head)
{
    if (!n_head)
        return d;
    const uint64_t hd = rows / n_head, h = d / hd, r = d % hd;
    return h * hd + (r % 2) * (hd / 2) + r / 2;
}

typedef struct convert {
    builder *b;
    const hparams *hp;
    index_t *ix;
    const char *hfname; /* of the weight (".weight") */
    const char *gname;
    enum kind kind;
    uint64_t rows, cols;
    uint64_t perm_heads; /* 0: none */
    int f32;             /* matrix wanted as F32 (the converter's ffn_gate_inp) */
    spk_hf_lazy *sub;    /* FP8/NVFP4: fill this (one expert of a stack) instead of making a tensor */
} convert;

static spk_status shape_err(const convert *c, const spk_st_tensor *t, const char *what)
{
    char got[96] = "", *p = got;
    for (int i = 0; i < t->n_dims && p < got + sizeof got - 24; i++)
        p += snprintf(p, (size_t)(got + sizeof got - p), "%s%llu", i ? ", " : "", (unsigned long long)t->shape[i]);
    if (c->kind == K_VEC)
        return spk_err(SPK_ERR_FORMAT, "%s: tensor '%.*s' (%s) has shape [%s], config.json implies [%llu]",
                       c->b->dir, SHOWN, t->name, what, got, (unsigned long long)c->cols);
    return spk_err(SPK_ERR_FORMAT, "%s: tensor '%.*s' (%s) has shape [%s], config.json implies [%llu, %llu]",
                   c->b->dir, SHOWN, t->name, what, got, (unsigned long long)c->rows, (unsigned long long)c->cols);
}

static spk_gguf_tensor *out_tensor(const convert *c, spk_dtype type)
{
    spk_gguf_tensor *g = add_tensor(c->b, c->gname);
    if (!g)
        return NULL;
    g->type = type;
    if (c->kind == K_VEC) {
        g->n_dims = 1;
        g->ne[0] = c->cols;
        g->ne[1] = g->ne[2] = g->ne[3] = 1;
    } else {
        g->n_dims = 2;
        g->ne[0] = c->cols;
        g->ne[1] = c->rows;
        g->ne[2] = g->ne[3] = 1;
    }
    g->n_elements = c->rows * c->cols;
    g->nbytes = spk_dtype_row_size(type, (size_t)c->cols) * c->rows;
    return g;
}

/* A converted tensor: its rows made by `fill` on first touch (model/hf_lazy.h). */
static spk_hf_lazy *lazy_new(builder *b, const char *name, size_t row_bytes, uint64_t n_rows, spk_hf_fill_fn fill)
{
    spk_hf_lazy *z = keep(b, calloc(1, sizeof *z));
    if (z) {
        snprintf(z->name, sizeof z->name, "%s", name);
        z->row_bytes = row_bytes;
        z->n_rows = n_rows;
        z->size = row_bytes * n_rows;
        z->fill = fill;
    }
    return z;
}

/* z's memory, and g's data in it. */
static void fill_stack(const spk_hf_lazy *z, uint64_t r0, uint64_t r1, uint8_t *dst);

static spk_status lazy_add(builder *b, spk_hf_lazy *z, spk_gguf_tensor *g)
{
    if (z->fill != fill_stack && z->p[0]) { /* every other fill reads its tensor from p[0] */
        const spk_st_tensor *t = z->p[0];
        z->src = t->data;
        z->src_len = t->end - t->begin;
    }
    SPK_TRY(spk_hf_lazy_add(b->m->lazy, z));
    if (g)
        g->data = z->base;
    return SPK_OK;
}

/* p[0] source; u: cols, rows, permuted heads (0: none), F32 output from BF16/F16. */
static void fill_float(const spk_hf_lazy *z, uint64_t r0, uint64_t r1, uint8_t *dst)
{
    const spk_st_tensor *t = z->p[0];
    const uint64_t C = z->u[0], R = z->u[1], ph = z->u[2];
    const size_t irow = spk_st_dtype_size(t->dtype) * C;
    for (uint64_t d = r0; d < r1; d++, dst += z->row_bytes) {
        const uint64_t s = src_row(d, R, ph);
        if (!z->u[3] || t->dtype == SPK_ST_F32) {
            memcpy(dst, t->data + s * irow, z->row_bytes);
            continue;
        }
        const spk_st_tensor row = {.dtype = t->dtype, .data = t->data + s * irow};
        for (uint64_t j = 0; j < C; j++) {
            const float v = scalar_at(&row, j);
            memcpy(dst + 4 * j, &v, 4);
        }
    }
}

/* BF16/F16/F32 source. Vectors become F32; matrices keep their type (zero-copy unless rows
 * are permuted or the data is misaligned for its element size). */
static spk_status conv_float(const convert *c, const spk_st_tensor *t)
{
    const size_t es = spk_st_dtype_size(t->dtype);
    spk_dtype ty = t->dtype == SPK_ST_F32 ? SPK_DT_F32 : t->dtype == SPK_ST_BF16 ? SPK_DT_BF16 : SPK_DT_F16;
    if (c->kind == K_VEC || c->f32)
        ty = SPK_DT_F32;
    spk_gguf_tensor *g = out_tensor(c, ty);
    if (!g)
        return nomem();
    if (ty == (t->dtype == SPK_ST_F32 ? SPK_DT_F32 : t->dtype == SPK_ST_BF16 ? SPK_DT_BF16 : SPK_DT_F16) &&
        !c->perm_heads && (uintptr_t)t->data % es == 0) {
        g->data = t->data;
        return SPK_OK;
    }
    spk_hf_lazy *z = lazy_new(c->b, c->gname, spk_dtype_row_size(ty, (size_t)c->cols), c->rows, fill_float);
    if (!z)
        return nomem();
    z->p[0] = t;
    z->u[0] = c->cols;
    z->u[1] = c->rows;
    z->u[2] = c->perm_heads;
    z->u[3] = ty == SPK_DT_F32;
    return lazy_add(c->b, z, g);
}

static entry *aux(index_t *ix, const char *hfname, const char *suffix)
{
    char n[1200];
    size_t l = strlen(hfname);
    if (l > 7 && !strcmp(hfname + l - 7, ".weight"))
        l -= 7;
    snprintf(n, sizeof n, "%.*s.%s", (int)l, hfname, suffix);
    return lookup(ix, n);
}

/* p[0] E4M3 codes, p[1] scales; u: cols, rows, permuted heads, mode (0 tensor, 1 channel, 2
 * block), block size. */
static void fill_fp8(const spk_hf_lazy *z, uint64_t r0, uint64_t r1, uint8_t *dst)
{
    const spk_st_tensor *t = z->p[0], *s = z->p[1];
    const uint64_t C = z->u[0], R = z->u[1], ph = z->u[2], mode = z->u[3], B = z->u[4], nb = (C + B - 1) / B;
    for (uint64_t d = r0; d < r1; d++, dst += z->row_bytes) {
        const uint64_t r = src_row(d, R, ph);
        const uint8_t *in = t->data + r * C;
        float sc = mode == 0 ? scalar_at(s, 0) : scalar_at(s, r);
        for (uint64_t j = 0; j < C; j++) {
            if (mode == 2 && j % B == 0)
                sc = scalar_at(s, (r / B) * nb + j / B);
            const uint16_t v = spk_f32_to_bf16(e4m3_table[in[j]] * sc);
            memcpy(dst + 2 * j, &v, 2);
        }
    }
}

/* FP8 E4M3 weights: value = e4m3 * scale, in float, rounded to BF16. Scale layouts: one value
 * (per tensor), one per row (per channel: [rows] or [rows, 1]), or one per B x B block
 * ([ceil(rows/B), ceil(cols/B)], "weight_scale_inv" of block-quantized checkpoints). */
static spk_status conv_fp8(const convert *c, const spk_st_tensor *t)
{
    entry *se = aux(c->ix, c->hfname, "weight_scale");
    if (!se)
        se = aux(c->ix, c->hfname, "weight_scale_inv");
    if (!se)
        return spk_err(SPK_ERR_FORMAT, "%s: FP8 tensor '%.*s' has no weight_scale or weight_scale_inv",
                       c->b->dir, SHOWN, t->name);
    se->used = 1;
    /* static activation scales (compressed-tensors input_scale, fbgemm input_scale_ub): our
     * activations stay float, so they are not needed */
    entry *ia = aux(c->ix, c->hfname, "input_scale"), *ib = aux(c->ix, c->hfname, "input_scale_ub");
    if (ia)
        ia->used = 1;
    if (ib)
        ib->used = 1;
    const spk_st_tensor *s = se->t;
    if (!float_dtype(s->dtype))
        return spk_err(SPK_ERR_UNSUPPORTED, "%s: scale '%.*s' has dtype %s (F32, BF16, F16)", c->b->dir, SHOWN,
                       s->name, spk_st_dtype_name(s->dtype));
    const uint64_t B = c->hp->block_size, R = c->rows, C = c->cols;
    int mode; /* 0 tensor, 1 channel, 2 block */
    if (s->n_elements == 1)
        mode = 0;
    else if (s->n_elements == R && (s->n_dims == 1 || (s->n_dims == 2 && s->shape[1] == 1)))
        mode = 1;
    else if (s->n_dims == 2 && s->shape[0] == (R + B - 1) / B && s->shape[1] == (C + B - 1) / B)
        mode = 2;
    else
        return spk_err(SPK_ERR_FORMAT, "%s: scale '%.*s' of %llu elements fits neither per-tensor, per-channel "
                       "[%llu] nor %llux%llu blocks [%llu, %llu]", c->b->dir, SHOWN, s->name,
                       (unsigned long long)s->n_elements, (unsigned long long)R, (unsigned long long)B,
                       (unsigned long long)B, (unsigned long long)((R + B - 1) / B),
                       (unsigned long long)((C + B - 1) / B));
    spk_hf_lazy *z = c->sub ? c->sub : lazy_new(c->b, c->gname, 2 * C, R, fill_fp8);
    if (!z)
        return nomem();
    z->fill = fill_fp8;
    z->row_bytes = 2 * C;
    z->p[0] = t;
    z->p[1] = s;
    z->u[0] = C;
    z->u[1] = R;
    z->u[2] = c->perm_heads;
    z->u[3] = (uint64_t)mode;
    z->u[4] = B;
    if (c->sub)
        return SPK_OK;
    spk_gguf_tensor *g = out_tensor(c, SPK_DT_BF16);
    return g ? lazy_add(c->b, z, g) : nomem();
}

/* p[0] packed E2M1, p[1] E4M3 scales; u: cols, rows, permuted heads, compressed-tensors, the
 * global scale's bits. */
static void fill_nvfp4(const spk_hf_lazy *z, uint64_t r0, uint64_t r1, uint8_t *dst)
{
    const spk_st_tensor *t = z->p[0], *se = z->p[1];
    const uint64_t C = z->u[0], R = z->u[1], ph = z->u[2];
    const int ct = (int)z->u[3];
    float g2;
    memcpy(&g2, &z->u[4], sizeof g2);
    for (uint64_t d = r0; d < r1; d++, dst += z->row_bytes) {
        const uint64_t r = src_row(d, R, ph);
        const uint8_t *in = t->data + r * (C / 2), *sc = se->data + r * (C / 16);
        for (uint64_t j = 0; j < C; j++) {
            const uint8_t q = (uint8_t)(j & 1 ? in[j / 2] >> 4 : in[j / 2] & 15);
            const float v = e2m1_table[q] * e4m3_table[sc[j / 16]];
            const uint16_t o = spk_f32_to_bf16(ct ? v / g2 : v * g2);
            memcpy(dst + 2 * j, &o, 2);
        }
    }
}

/* NVFP4 (ModelOpt): U8 [rows, cols/2] of E2M1 pairs (low nibble first), weight_scale E4M3
 * [rows, cols/16], weight_scale_2 F32 (one value). value = (e2m1 * e4m3) * scale_2, in float,
 * rounded to BF16 (e2m1 * e4m3 is exact in float; the product with scale_2 is rounded once).
 * compressed-tensors (nvfp4-pack-quantized) names them weight_packed, weight_scale and
 * weight_global_scale, the reciprocal: value = (e2m1 * e4m3) / global_scale. */
static spk_status conv_nvfp4(const convert *c, const spk_st_tensor *t)
{
    entry *se = aux(c->ix, c->hfname, "weight_scale"), *s2 = aux(c->ix, c->hfname, "weight_scale_2");
    entry *is = aux(c->ix, c->hfname, "input_scale");
    const int ct = has_suffix(t->name, ".weight_packed"); /* compressed-tensors: the reciprocal */
    if (ct) {
        s2 = aux(c->ix, c->hfname, "weight_global_scale");
        is = aux(c->ix, c->hfname, "input_global_scale");
    }
    if (!se || !s2)
        return spk_err(SPK_ERR_FORMAT, "%s: packed FP4 tensor '%.*s' needs weight_scale and %s (NVFP4)", c->b->dir,
                       SHOWN, t->name, ct ? "weight_global_scale" : "weight_scale_2");
    se->used = s2->used = 1;
    if (is)
        is->used = 1; /* activation scale: activations stay in float here */
    const uint64_t R = c->rows, C = c->cols;
    if (C % 16 || t->n_dims != 2 || t->shape[0] != R || t->shape[1] != C / 2)
        return shape_err(c, t, "NVFP4: packed pairs, [rows, cols/2]");
    if (se->t->dtype != SPK_ST_F8_E4M3 || se->t->n_dims != 2 || se->t->shape[0] != R || se->t->shape[1] != C / 16)
        return spk_err(SPK_ERR_FORMAT, "%s: NVFP4 scale '%.*s' must be F8_E4M3 [%llu, %llu]", c->b->dir, SHOWN,
                       se->t->name, (unsigned long long)R, (unsigned long long)(C / 16));
    if (s2->t->n_elements != 1 || !float_dtype(s2->t->dtype))
        return spk_err(SPK_ERR_FORMAT, "%s: NVFP4 global scale '%.*s' must be one float", c->b->dir, SHOWN,
                       s2->t->name);
    const float g2 = scalar_at(s2->t, 0);
    if (!(isfinite(g2) && (ct ? g2 > 0 : g2 >= 0)))
        return spk_err(SPK_ERR_FORMAT, "%s: NVFP4 global scale '%.*s' is %g", c->b->dir, SHOWN, s2->t->name, g2);
    spk_hf_lazy *z = c->sub ? c->sub : lazy_new(c->b, c->gname, 2 * C, R, fill_nvfp4);
    if (!z)
        return nomem();
    z->fill = fill_nvfp4;
    z->row_bytes = 2 * C;
    z->p[0] = t;
    z->p[1] = se->t;
    z->u[0] = C;
    z->u[1] = R;
    z->u[2] = c->perm_heads;
    z->u[3] = (uint64_t)ct;
    memcpy(&z->u[4], &g2, sizeof g2);
    if (c->sub)
        return SPK_OK;
    spk_gguf_tensor *g = out_tensor(c, SPK_DT_BF16);
    return g ? lazy_add(c->b, z, g) : nomem();
}

/* MXFP4 (gpt-oss): blocks U8 [rows, cols/32, 16] (element 2k in the low nibble of byte k),
 * scales U8/F8_E8M0 [rows, cols/32] -> ggml's block_mxfp4 {e, qs[16]} with element j in the low
 * nibble of qs[j] and element j+16 in its high nibble (the converter's repack_mxfp4): exact. */
static void mxfp4_row(uint8_t *o, const uint8_t *blocks, const uint8_t *scales, uint64_t nb)
{
    for (uint64_t k = 0; k < nb; k++) {
        const uint8_t *in = blocks + k * 16;
        uint8_t *blk = o + k * 17;
        blk[0] = scales[k];
        for (int j = 0; j < 16; j++) {
            uint8_t lo = (uint8_t)(j & 1 ? in[j / 2] >> 4 : in[j / 2] & 15);
            uint8_t hi = (uint8_t)((j + 16) & 1 ? in[(j + 16) / 2] >> 4 : in[(j + 16) / 2] & 15);
            blk[1 + j] = (uint8_t)(lo | hi << 4);
        }
    }
}

/* p[0] blocks, p[1] scales; u: blocks per row, rows, permuted heads. */
static void fill_mxfp4(const spk_hf_lazy *z, uint64_t r0, uint64_t r1, uint8_t *dst)
{
    const spk_st_tensor *t = z->p[0], *sc = z->p[1];
    const uint64_t nb = z->u[0];
    for (uint64_t d = r0; d < r1; d++, dst += z->row_bytes) {
        const uint64_t r = src_row(d, z->u[1], z->u[2]);
        mxfp4_row(dst, t->data + r * nb * 16, sc->data + r * nb, nb);
    }
}

static spk_status conv_mxfp4(const convert *c, const spk_st_tensor *t, const spk_st_tensor *sc)
{
    const uint64_t R = c->rows, C = c->cols;
    if (C % 32 || t->n_dims != 3 || t->shape[0] != R || t->shape[1] != C / 32 || t->shape[2] != 16)
        return shape_err(c, t, "MXFP4 blocks: [rows, cols/32, 16]");
    if ((sc->dtype != SPK_ST_U8 && sc->dtype != SPK_ST_F8_E8M0) || sc->n_dims != 2 || sc->shape[0] != R ||
        sc->shape[1] != C / 32)
        return spk_err(SPK_ERR_FORMAT, "%s: MXFP4 scales '%.*s' must be U8 or F8_E8M0 [%llu, %llu]", c->b->dir,
                       SHOWN, sc->name, (unsigned long long)R, (unsigned long long)(C / 32));
    spk_gguf_tensor *g = out_tensor(c, SPK_DT_MXFP4);
    spk_hf_lazy *z = g ? lazy_new(c->b, c->gname, C / 32 * 17, R, fill_mxfp4) : NULL;
    if (!z)
        return nomem();
    z->p[0] = t;
    z->p[1] = sc;
    z->u[0] = C / 32;
    z->u[1] = R;
    z->u[2] = c->perm_heads;
    return lazy_add(c->b, z, g);
}

static spk_status convert_one(convert *c, entry *e)
{
    const spk_st_tensor *t = e->t;
    e->used = 1;
    if (c->kind == K_VEC) {
        if (!float_dtype(t->dtype))
            return spk_err(SPK_ERR_UNSUPPORTED, "%s: tensor '%.*s' has dtype %s (vectors: F32, BF16, F16)",
                           c->b->dir, SHOWN, t->name, spk_st_dtype_name(t->dtype));
        if (t->n_dims != 1 || t->shape[0] != c->cols)
            return shape_err(c, t, "vector");
        return conv_float(c, t);
    }
    if (float_dtype(t->dtype) || t->dtype == SPK_ST_F8_E4M3) {
        if (t->n_dims != 2 || t->shape[0] != c->rows || t->shape[1] != c->cols)
            return shape_err(c, t, "matrix");
        return float_dtype(t->dtype) ? conv_float(c, t) : conv_fp8(c, t);
    }
    if (t->dtype == SPK_ST_U8 || t->dtype == SPK_ST_I8)
        return conv_nvfp4(c, t);
    return spk_err(SPK_ERR_UNSUPPORTED, "%s: tensor '%.*s' has dtype %s (BF16, F16, F32, F8_E4M3, packed FP4)",
                   c->b->dir, SHOWN, t->name, spk_st_dtype_name(t->dtype));
}

/* The GGUF name (with its ".weight" / ".bias") of an HF name (".weight" form for quantized
 * weights); 1 known, 0 unknown, -1 a layer past num_hidden_layers. */
static int map_name(const hparams *hp, const char *n, char *out, size_t cap, enum kind *kind, int *perm)
{
    *perm = 0;
    if (!strcmp(n, "model.embed_tokens.weight")) {
        snprintf(out, cap, "token_embd.weight");
        *kind = K_MAT;
        return 1;
    }
    if (!strcmp(n, "model.norm.weight")) {
        snprintf(out, cap, "output_norm.weight");
        *kind = K_VEC;
        return 1;
    }
    if (!strcmp(n, "lm_head.weight")) {
        snprintf(out, cap, "output.weight");
        *kind = K_MAT;
        return 1;
    }
    const char *p = "model.layers.";
    if (strncmp(n, p, strlen(p)) != 0)
        return 0;
    const char *q = n + strlen(p);
    char *endp = NULL;
    if (*q < '0' || *q > '9')
        return 0;
    unsigned long l = strtoul(q, &endp, 10);
    if (*endp != '.' || l >= hp->n_layers)
        return -1;
    const char *rest = endp + 1;
    const int moe = hp->n_expert > 0, gpt = hp->arch == A_GPTOSS;
    if (gpt && !strcmp(rest, "self_attn.sinks")) {
        snprintf(out, cap, "blk.%lu.attn_sinks.weight", l);
        *kind = K_VEC;
        return 1;
    }
    if ((gpt && (!strcmp(rest, "mlp.router.weight") || !strcmp(rest, "mlp.router.bias"))) ||
        (moe && !gpt && !strcmp(rest, "mlp.gate.weight"))) {
        snprintf(out, cap, "blk.%lu.ffn_gate_inp.%s", l, has_suffix(rest, ".bias") ? "bias" : "weight");
        *kind = K_MAT;
        return 1;
    }
    for (size_t i = 0; i < sizeof layer_roles / sizeof layer_roles[0]; i++) {
        size_t rl = strlen(layer_roles[i].hf);
        if (strncmp(rest, layer_roles[i].hf, rl))
            continue;
        const int bias = !strcmp(rest + rl, ".bias");
        if (strcmp(rest + rl, ".weight") && !(bias && gpt && layer_roles[i].kind == K_MAT))
            continue;
        const char *g = layer_roles[i].gguf;
        if ((hp->arch == A_LLAMA || gpt) && (!strcmp(g, "attn_q_norm") || !strcmp(g, "attn_k_norm")))
            return 0;
        if (moe && !strncmp(g, "ffn_", 4) && strcmp(g, "ffn_norm"))
            return 0; /* dense MLP weights in a MoE model */
        if (gpt && !strcmp(g, "ffn_norm"))
            g = "post_attention_norm"; /* the converter's name for gpt-oss */
        *perm = hp->llama ? layer_roles[i].perm : 0;
        snprintf(out, cap, "blk.%lu.%s.%s", l, g, bias ? "bias" : "weight");
        *kind = layer_roles[i].kind;
        return 1;
    }
    return 0;
}

/* ---- experts (qwen3moe, gpt-oss) ------------------------------------------------------------ */

/* A stacked tensor of n_dims (2: [ne1][ne0], 3: [ne2][ne1][ne0]), data not set. */
static spk_gguf_tensor *out_stack(builder *b, const char *name, spk_dtype type, int n_dims, uint64_t ne0,
                                  uint64_t ne1, uint64_t ne2)
{
    spk_gguf_tensor *g = spk_gguf_find_tensor(b->f, name) ? NULL : add_tensor(b, name);
    if (!g)
        return NULL;
    g->type = type;
    g->n_dims = (uint32_t)n_dims;
    g->ne[0] = ne0;
    g->ne[1] = ne1;
    g->ne[2] = ne2;
    g->ne[3] = 1;
    g->n_elements = ne0 * ne1 * ne2;
    g->nbytes = spk_dtype_row_size(type, (size_t)ne0) * ne1 * ne2;
    return g;
}

/* A stacked tensor made by `fill` (rows of all experts, expert-major). */
static spk_hf_lazy *stack_lazy(builder *b, const char *name, spk_dtype type, uint64_t ne0, uint64_t ne1,
                               uint64_t ne2, spk_hf_fill_fn fill, spk_gguf_tensor **g)
{
    *g = out_stack(b, name, type, 3, ne0, ne1, ne2);
    return *g ? lazy_new(b, name, spk_dtype_row_size(type, (size_t)ne0), ne1 * ne2, fill) : NULL;
}

static spk_status stack_shape_err(builder *b, const spk_st_tensor *t, const char *want)
{
    char got[96] = "", *p = got;
    for (int i = 0; i < t->n_dims && p < got + sizeof got - 24; i++)
        p += snprintf(p, (size_t)(got + sizeof got - p), "%s%llu", i ? ", " : "", (unsigned long long)t->shape[i]);
    return spk_err(SPK_ERR_FORMAT, "%s: tensor '%.*s' (%s) has shape [%s], config.json implies [%s]", b->dir, SHOWN,
                   t->name, spk_st_dtype_name(t->dtype), got, want);
}

/* p[0] the experts' fills (one per expert, not regions); u[0] rows per expert. */
static void fill_stack(const spk_hf_lazy *z, uint64_t r0, uint64_t r1, uint8_t *dst)
{
    const spk_hf_lazy *sub = z->p[0];
    const uint64_t R = z->u[0];
    for (uint64_t r = r0; r < r1; r++, dst += z->row_bytes) {
        const spk_hf_lazy *x = &sub[r / R];
        x->fill(x, r % R, r % R + 1, dst);
    }
}

/* Qwen3-MoE as published: mlp.experts.N.{gate,up,down}_proj.weight, one matrix per expert,
 * stacked into ffn_{gate,up,down}_exps [n_expert][rows][cols] as the converter's torch.stack:
 * F32/BF16/F16 copied, FP8 and NVFP4 experts dequantized to BF16 (as the dense weights). */
static spk_status stack_experts(builder *b, const hparams *hp, index_t *ix, unsigned long l)
{
    static const char *const proj[] = {"gate_proj", "up_proj", "down_proj"};
    static const char *const gg[] = {"ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"};
    const uint64_t NE = hp->n_expert, F = hp->n_ff_exp, E = hp->n_embd;
    for (int k = 0; k < 3; k++) {
        const uint64_t R = k == 2 ? E : F, C = k == 2 ? F : E;
        char hn[256], gname[96];
        snprintf(gname, sizeof gname, "blk.%lu.%s.weight", l, gg[k]);
        spk_dtype ty = SPK_DT_F32;
        spk_hf_lazy *sub = keep(b, calloc(NE, sizeof *sub));
        if (!sub)
            return nomem();
        for (uint64_t x = 0; x < NE; x++) {
            snprintf(hn, sizeof hn, "model.layers.%lu.mlp.experts.%llu.%s.weight", l, (unsigned long long)x, proj[k]);
            entry *e = lookup(ix, hn);
            if (!e)
                return spk_err(SPK_ERR_FORMAT, "%s: layer %lu has no '%s' (config.json: %llu experts; each needs "
                               "gate_proj, up_proj and down_proj)", b->dir, l, hn, (unsigned long long)NE);
            const spk_st_tensor *t = e->t;
            e->used = 1;
            const spk_dtype et = float_dtype(t->dtype) ? (t->dtype == SPK_ST_F32 ? SPK_DT_F32 :
                                 t->dtype == SPK_ST_BF16 ? SPK_DT_BF16 : SPK_DT_F16) : SPK_DT_BF16;
            if (x == 0)
                ty = et;
            else if (et != ty)
                return spk_err(SPK_ERR_FORMAT, "%s: expert tensor '%.*s' is %s, expert 0's is %s (one stack, one "
                               "type)", b->dir, SHOWN, hn, spk_st_dtype_name(t->dtype), spk_gguf_type_name(ty));
            convert c = {.b = b, .hp = hp, .ix = ix, .hfname = hn, .gname = gname, .kind = K_MAT, .rows = R,
                         .cols = C, .sub = &sub[x]};
            spk_status st = SPK_OK;
            if (float_dtype(t->dtype)) {
                if (t->n_dims != 2 || t->shape[0] != R || t->shape[1] != C)
                    return shape_err(&c, t, "expert matrix");
                sub[x].fill = fill_float;
                sub[x].row_bytes = spk_dtype_row_size(ty, (size_t)C);
                sub[x].p[0] = t;
                sub[x].u[0] = C;
                sub[x].u[1] = R;
            } else if (t->dtype == SPK_ST_F8_E4M3) {
                if (t->n_dims != 2 || t->shape[0] != R || t->shape[1] != C)
                    return shape_err(&c, t, "expert matrix");
                st = conv_fp8(&c, t);
            } else if (t->dtype == SPK_ST_U8 || t->dtype == SPK_ST_I8) {
                st = conv_nvfp4(&c, t);
            } else {
                st = spk_err(SPK_ERR_UNSUPPORTED, "%s: expert tensor '%.*s' has dtype %s (BF16, F16, F32, F8_E4M3, "
                             "NVFP4)", b->dir, SHOWN, hn, spk_st_dtype_name(t->dtype));
            }
            if (st != SPK_OK)
                return st;
        }
        spk_gguf_tensor *g;
        spk_hf_lazy *z = stack_lazy(b, gname, ty, C, R, NE, fill_stack, &g);
        if (!z)
            return nomem();
        z->p[0] = sub;
        z->u[0] = R;
        SPK_TRY(lazy_add(b, z, g));
    }
    return SPK_OK;
}

static entry *layer_entry(index_t *ix, unsigned long l, const char *rest)
{
    char n[256];
    snprintf(n, sizeof n, "model.layers.%lu.mlp.experts.%s", l, rest);
    return lookup(ix, n);
}

/* gpt-oss gate or up (u[2]: 0 gate, 1 up) from gate_up_proj [E, H, 2F]: row (x, f) is column
 * 2f + u[2] of expert x. p[0] source; u: H, F, which, element size. */
static void fill_gu(const spk_hf_lazy *z, uint64_t r0, uint64_t r1, uint8_t *dst)
{
    const spk_st_tensor *t = z->p[0];
    const uint64_t H = z->u[0], F = z->u[1], w = z->u[2], es = z->u[3];
    for (uint64_t r = r0; r < r1; r++, dst += z->row_bytes) {
        const uint64_t x = r / F, f = r % F;
        const uint8_t *in = t->data + (x * H * 2 * F + 2 * f + w) * es;
        for (uint64_t h = 0; h < H; h++)
            memcpy(dst + h * es, in + h * 2 * F * es, es);
    }
}

/* gpt-oss down from down_proj [E, F, H]: row (x, h) is column h of expert x. u: H, F, element size. */
static void fill_down(const spk_hf_lazy *z, uint64_t r0, uint64_t r1, uint8_t *dst)
{
    const spk_st_tensor *t = z->p[0];
    const uint64_t H = z->u[0], F = z->u[1], es = z->u[2];
    for (uint64_t r = r0; r < r1; r++, dst += z->row_bytes) {
        const uint64_t x = r / H, h = r % H;
        for (uint64_t f = 0; f < F; f++)
            memcpy(dst + f * es, t->data + ((x * F + f) * H + h) * es, es);
    }
}

/* MXFP4 expert rows: row r is source row r * u[1] + u[2] (gate_up: 2r, 2r + 1; down: r).
 * p[0] blocks, p[1] scales; u[0] blocks per row. */
static void fill_mx_rows(const spk_hf_lazy *z, uint64_t r0, uint64_t r1, uint8_t *dst)
{
    const spk_st_tensor *t = z->p[0], *sc = z->p[1];
    const uint64_t nb = z->u[0];
    for (uint64_t r = r0; r < r1; r++, dst += z->row_bytes) {
        const uint64_t s = r * z->u[1] + z->u[2];
        mxfp4_row(dst, t->data + s * nb * 16, sc->data + s * nb, nb);
    }
}

/* gpt-oss: the experts stacked in transformers' layout: gate_up_proj [E, hidden, 2F] with gate and
 * up interleaved in the last dimension (gate = [..., ::2], up = [..., 1::2]), down_proj [E, F,
 * hidden], biases gate_up_proj_bias [E, 2F] and down_proj_bias [E, hidden]; or MXFP4 as published:
 * *_blocks [E, rows, cols/32, 16] + *_scales [E, rows, cols/32] of the [out, in] matrices. Into
 * ffn_{gate,up}_exps {hidden, F, E}, ffn_down_exps {F, hidden, E} and their F32 biases, as the
 * converter's transpose + split (float) or repack_mxfp4 (exact). */
static spk_status gptoss_experts(builder *b, const hparams *hp, index_t *ix, unsigned long l)
{
    const uint64_t NE = hp->n_expert, F = hp->n_ff_exp, H = hp->n_embd;
    char gname[3][96], want[128];
    snprintf(gname[0], sizeof gname[0], "blk.%lu.ffn_gate_exps.weight", l);
    snprintf(gname[1], sizeof gname[1], "blk.%lu.ffn_up_exps.weight", l);
    snprintf(gname[2], sizeof gname[2], "blk.%lu.ffn_down_exps.weight", l);
    entry *gu = layer_entry(ix, l, "gate_up_proj"), *dn = layer_entry(ix, l, "down_proj");
    entry *gub = layer_entry(ix, l, "gate_up_proj_blocks"), *gus = layer_entry(ix, l, "gate_up_proj_scales");
    entry *dnb = layer_entry(ix, l, "down_proj_blocks"), *dns = layer_entry(ix, l, "down_proj_scales");
    entry *bgu = layer_entry(ix, l, "gate_up_proj_bias"), *bdn = layer_entry(ix, l, "down_proj_bias");
    spk_gguf_tensor *g;
    spk_hf_lazy *z;
    if (!bgu || !bdn)
        return spk_err(SPK_ERR_FORMAT, "%s: layer %lu has no model.layers.%lu.mlp.experts.%s", b->dir, l, l,
                       bgu ? "down_proj_bias" : "gate_up_proj_bias");
    /* gate/up */
    if (gu) {
        const spk_st_tensor *t = gu->t;
        gu->used = 1;
        if (!float_dtype(t->dtype))
            return spk_err(SPK_ERR_UNSUPPORTED, "%s: tensor '%.*s' has dtype %s (F32, BF16, F16; or MXFP4 "
                           "_blocks/_scales)", b->dir, SHOWN, t->name, spk_st_dtype_name(t->dtype));
        snprintf(want, sizeof want, "%llu, %llu, %llu: experts, hidden, 2 x intermediate (gate/up interleaved)",
                 (unsigned long long)NE, (unsigned long long)H, (unsigned long long)(2 * F));
        if (t->n_dims != 3 || t->shape[0] != NE || t->shape[1] != H || t->shape[2] != 2 * F)
            return stack_shape_err(b, t, want);
        const spk_dtype ty = t->dtype == SPK_ST_F32 ? SPK_DT_F32 : t->dtype == SPK_ST_BF16 ? SPK_DT_BF16 : SPK_DT_F16;
        for (int w = 0; w < 2; w++) {
            if (!(z = stack_lazy(b, gname[w], ty, H, F, NE, fill_gu, &g)))
                return nomem();
            z->p[0] = t;
            z->u[0] = H;
            z->u[1] = F;
            z->u[2] = (uint64_t)w;
            z->u[3] = spk_st_dtype_size(t->dtype);
            SPK_TRY(lazy_add(b, z, g));
        }
    } else if (gub && gus) {
        gub->used = gus->used = 1;
        const spk_st_tensor *t = gub->t, *sc = gus->t;
        snprintf(want, sizeof want, "%llu, %llu, %llu, 16: experts, 2 x intermediate, hidden / 32, 16 bytes",
                 (unsigned long long)NE, (unsigned long long)(2 * F), (unsigned long long)(H / 32));
        if (H % 32 || t->dtype != SPK_ST_U8 || t->n_dims != 4 || t->shape[0] != NE || t->shape[1] != 2 * F ||
            t->shape[2] != H / 32 || t->shape[3] != 16)
            return stack_shape_err(b, t, want);
        snprintf(want, sizeof want, "%llu, %llu, %llu: experts, 2 x intermediate, hidden / 32 (U8 / F8_E8M0)",
                 (unsigned long long)NE, (unsigned long long)(2 * F), (unsigned long long)(H / 32));
        if ((sc->dtype != SPK_ST_U8 && sc->dtype != SPK_ST_F8_E8M0) || sc->n_dims != 3 || sc->shape[0] != NE ||
            sc->shape[1] != 2 * F || sc->shape[2] != H / 32)
            return stack_shape_err(b, sc, want);
        for (int w = 0; w < 2; w++) { /* row (x, f): source rows (x, 2f) and (x, 2f + 1) */
            if (!(z = stack_lazy(b, gname[w], SPK_DT_MXFP4, H, F, NE, fill_mx_rows, &g)))
                return nomem();
            z->p[0] = t;
            z->p[1] = sc;
            z->u[0] = H / 32;
            z->u[1] = 2;
            z->u[2] = (uint64_t)w;
            SPK_TRY(lazy_add(b, z, g));
        }
    } else {
        return spk_err(SPK_ERR_FORMAT, "%s: layer %lu has neither mlp.experts.gate_up_proj nor "
                       "mlp.experts.gate_up_proj_blocks + _scales", b->dir, l);
    }
    /* down */
    if (dn) {
        const spk_st_tensor *t = dn->t;
        dn->used = 1;
        if (!float_dtype(t->dtype))
            return spk_err(SPK_ERR_UNSUPPORTED, "%s: tensor '%.*s' has dtype %s (F32, BF16, F16; or MXFP4 "
                           "_blocks/_scales)", b->dir, SHOWN, t->name, spk_st_dtype_name(t->dtype));
        snprintf(want, sizeof want, "%llu, %llu, %llu: experts, intermediate, hidden", (unsigned long long)NE,
                 (unsigned long long)F, (unsigned long long)H);
        if (t->n_dims != 3 || t->shape[0] != NE || t->shape[1] != F || t->shape[2] != H)
            return stack_shape_err(b, t, want);
        const spk_dtype ty = t->dtype == SPK_ST_F32 ? SPK_DT_F32 : t->dtype == SPK_ST_BF16 ? SPK_DT_BF16 : SPK_DT_F16;
        if (!(z = stack_lazy(b, gname[2], ty, F, H, NE, fill_down, &g)))
            return nomem();
        z->p[0] = t;
        z->u[0] = H;
        z->u[1] = F;
        z->u[2] = spk_st_dtype_size(t->dtype);
        SPK_TRY(lazy_add(b, z, g));
    } else if (dnb && dns) {
        dnb->used = dns->used = 1;
        const spk_st_tensor *t = dnb->t, *sc = dns->t;
        snprintf(want, sizeof want, "%llu, %llu, %llu, 16: experts, hidden, intermediate / 32, 16 bytes",
                 (unsigned long long)NE, (unsigned long long)H, (unsigned long long)(F / 32));
        if (F % 32 || t->dtype != SPK_ST_U8 || t->n_dims != 4 || t->shape[0] != NE || t->shape[1] != H ||
            t->shape[2] != F / 32 || t->shape[3] != 16)
            return stack_shape_err(b, t, want);
        snprintf(want, sizeof want, "%llu, %llu, %llu: experts, hidden, intermediate / 32 (U8 / F8_E8M0)",
                 (unsigned long long)NE, (unsigned long long)H, (unsigned long long)(F / 32));
        if ((sc->dtype != SPK_ST_U8 && sc->dtype != SPK_ST_F8_E8M0) || sc->n_dims != 3 || sc->shape[0] != NE ||
            sc->shape[1] != H || sc->shape[2] != F / 32)
            return stack_shape_err(b, sc, want);
        if (!(z = stack_lazy(b, gname[2], SPK_DT_MXFP4, F, H, NE, fill_mx_rows, &g)))
            return nomem();
        z->p[0] = t;
        z->p[1] = sc;
        z->u[0] = F / 32;
        z->u[1] = 1;
        SPK_TRY(lazy_add(b, z, g));
    } else {
        return spk_err(SPK_ERR_FORMAT, "%s: layer %lu has neither mlp.experts.down_proj nor "
                       "mlp.experts.down_proj_blocks + _scales", b->dir, l);
    }
    /* biases, F32 (small: made now) */
    const spk_st_tensor *tb = bgu->t, *td = bdn->t;
    bgu->used = bdn->used = 1;
    snprintf(want, sizeof want, "%llu, %llu", (unsigned long long)NE, (unsigned long long)(2 * F));
    if (!float_dtype(tb->dtype) || tb->n_dims != 2 || tb->shape[0] != NE || tb->shape[1] != 2 * F)
        return stack_shape_err(b, tb, want);
    snprintf(want, sizeof want, "%llu, %llu", (unsigned long long)NE, (unsigned long long)H);
    if (!float_dtype(td->dtype) || td->n_dims != 2 || td->shape[0] != NE || td->shape[1] != H)
        return stack_shape_err(b, td, want);
    char n[3][96];
    snprintf(n[0], sizeof n[0], "blk.%lu.ffn_gate_exps.bias", l);
    snprintf(n[1], sizeof n[1], "blk.%lu.ffn_up_exps.bias", l);
    snprintf(n[2], sizeof n[2], "blk.%lu.ffn_down_exps.bias", l);
    spk_gguf_tensor *gb[3] = {out_stack(b, n[0], SPK_DT_F32, 2, F, NE, 1), out_stack(b, n[1], SPK_DT_F32, 2, F, NE, 1),
                              out_stack(b, n[2], SPK_DT_F32, 2, H, NE, 1)};
    float *bg = keep(b, malloc(sizeof(float) * NE * F)), *bu = keep(b, malloc(sizeof(float) * NE * F));
    float *bd = keep(b, malloc(sizeof(float) * NE * H));
    if (!gb[0] || !gb[1] || !gb[2] || !bg || !bu || !bd)
        return nomem();
    for (uint64_t i = 0; i < NE * F; i++) {
        bg[i] = scalar_at(tb, 2 * i);
        bu[i] = scalar_at(tb, 2 * i + 1);
    }
    for (uint64_t i = 0; i < NE * H; i++)
        bd[i] = scalar_at(td, i);
    gb[0]->data = bg;
    gb[1]->data = bu;
    gb[2]->data = bd;
    return SPK_OK;
}

static spk_status build_experts(builder *b, const hparams *hp, index_t *ix)
{
    for (unsigned long l = 0; l < hp->n_layers; l++)
        SPK_TRY(hp->arch == A_GPTOSS ? gptoss_experts(b, hp, ix, l) : stack_experts(b, hp, ix, l));
    return SPK_OK;
}

static spk_status build_tensors(builder *b, const hparams *hp, index_t *ix)
{
    if (hp->n_expert)
        SPK_TRY(build_experts(b, hp, ix));
    for (size_t i = 0; i < ix->n; i++) {
        entry *e = &ix->e[i];
        const char *n = e->t->name;
        /* rotary tables (recomputed), FP8 KV-cache scales (our cache is f16) */
        if (has_suffix(n, "rotary_emb.inv_freq") || has_suffix(n, "self_attn.k_scale") ||
            has_suffix(n, "self_attn.v_scale")) {
            e->used = 1;
            continue;
        }
        if (has_suffix(n, ".weight_scale") || has_suffix(n, ".weight_scale_inv") || has_suffix(n, ".weight_scale_2") ||
            has_suffix(n, ".input_scale") || has_suffix(n, ".input_scale_ub") || has_suffix(n, "_scales") ||
            has_suffix(n, ".weight_global_scale") || has_suffix(n, ".input_global_scale"))
            continue; /* consumed with their weight; leftovers are refused below */
        if (e->used)
            continue; /* experts (build_experts), MXFP4 scales taken with their blocks */
        if (hp->n_expert && strstr(n, ".mlp.experts."))
            break; /* an expert build_experts did not take: refused below */
        char hfname[1200], gname[256];
        const spk_st_tensor *scales = NULL;
        if (has_suffix(n, "_blocks")) {
            size_t l = strlen(n) - 7;
            char sn[1200];
            snprintf(sn, sizeof sn, "%.*s_scales", (int)l, n);
            entry *se = lookup(ix, sn);
            if (!se)
                return spk_err(SPK_ERR_FORMAT, "%s: MXFP4 blocks '%.*s' without '%.*s'", b->dir, SHOWN, n, SHOWN, sn);
            se->used = 1;
            scales = se->t;
            if (l > 7 && !strncmp(n + l - 7, ".weight", 7))
                snprintf(hfname, sizeof hfname, "%.*s", (int)l, n);
            else
                snprintf(hfname, sizeof hfname, "%.*s.weight", (int)l, n);
        } else if (has_suffix(n, ".weight_packed")) { /* compressed-tensors NVFP4 */
            snprintf(hfname, sizeof hfname, "%.*s.weight", (int)(strlen(n) - 14), n);
        } else {
            snprintf(hfname, sizeof hfname, "%s", n);
        }
        enum kind kind;
        int perm;
        int r = map_name(hp, hfname, gname, sizeof gname - 8, &kind, &perm);
        if (r < 0)
            return spk_err(SPK_ERR_FORMAT, "%s: tensor '%.*s' is outside num_hidden_layers %llu", b->dir, SHOWN, n,
                           (unsigned long long)hp->n_layers);
        if (r == 0)
            return spk_err(SPK_ERR_UNSUPPORTED, "%s: tensor '%.*s' is not part of a %s model this library runs",
                           b->dir, SHOWN, n, arch_gguf[hp->arch]);
        if (spk_gguf_find_tensor(b->f, gname))
            return spk_err(SPK_ERR_FORMAT, "%s: two tensors map to '%s' (the second: '%.*s')", b->dir, gname, SHOWN, n);
        convert c = {.b = b, .hp = hp, .ix = ix, .hfname = hfname, .gname = gname, .kind = kind};
        char base[sizeof gname];
        snprintf(base, sizeof base, "%s", strncmp(gname, "blk.", 4) ? gname : strchr(gname + 4, '.') + 1);
        char *dot = strrchr(base, '.');
        if (dot)
            *dot = '\0';
        role_shape(hp, base, &c.rows, &c.cols);
        if (has_suffix(gname, ".bias")) { /* gpt-oss: one per output row, F32 */
            c.kind = K_VEC;
            c.cols = c.rows;
            c.rows = 1;
        }
        c.f32 = !strcmp(base, "ffn_gate_inp"); /* the converter keeps the router in F32 */
        c.perm_heads = perm == 1 ? hp->n_heads : perm == 2 ? hp->n_kv : 0;
        spk_status st;
        if (scales) {
            e->used = 1;
            st = kind == K_MAT ? conv_mxfp4(&c, e->t, scales)
                               : spk_err(SPK_ERR_FORMAT, "%s: '%.*s': MXFP4 vector", b->dir, SHOWN, n);
        } else {
            st = convert_one(&c, e);
        }
        if (st != SPK_OK)
            return st;
    }
    for (size_t i = 0; i < ix->n; i++) {
        if (ix->e[i].used)
            continue;
        if (hp->n_expert && strstr(ix->e[i].t->name, ".mlp.experts."))
            return spk_err(SPK_ERR_FORMAT, "%s: tensor '%.*s' (in %s) is not one of the %llu experts of "
                           "config.json (num_experts / num_local_experts)", b->dir, SHOWN, ix->e[i].t->name,
                           ix->e[i].shard->path, (unsigned long long)hp->n_expert);
        return spk_err(SPK_ERR_UNSUPPORTED, "%s: tensor '%.*s' (in %s) belongs to no weight this loader knows",
                       b->dir, SHOWN, ix->e[i].t->name, ix->e[i].shard->path);
    }
    return SPK_OK;
}

/* ---- shards ------------------------------------------------------------------------------- */

static spk_status add_shard(builder *b, const char *file)
{
    struct spk_hf_model *m = b->m;
    char p[1200];
    snprintf(p, sizeof p, "%s/%s", b->dir, file);
    spk_st_file **ns = realloc(m->shards, (m->n_shards + 1) * sizeof *ns);
    if (!ns)
        return nomem();
    m->shards = ns;
    struct stat sb;
    if (stat(p, &sb) != 0)
        return spk_err(SPK_ERR_IO, "%s: shard '%s' is missing: %s", b->dir, file, strerror(errno));
    SPK_TRY(spk_st_open(p, &m->shards[m->n_shards]));
    m->n_shards++;
    return SPK_OK;
}

static spk_status open_shards(builder *b, index_t *ix)
{
    char p[1200];
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", b->dir);
    char *txt = NULL;
    size_t len = 0;
    int missing = 0;
    SPK_TRY(read_small(p, &txt, &len, &missing));
    cJSON *idx = NULL, *wm = NULL;
    if (missing) {
        snprintf(p, sizeof p, "%s/model.safetensors", b->dir);
        if (access(p, F_OK) != 0)
            return spk_err(SPK_ERR_IO, "%s: neither model.safetensors nor model.safetensors.index.json "
                           "(not a Hugging Face checkpoint directory)", b->dir);
        SPK_TRY(add_shard(b, "model.safetensors"));
    } else {
        spk_status st = parse_json(p, txt, len, &idx);
        free(txt);
        if (st != SPK_OK)
            return st;
        wm = cJSON_GetObjectItemCaseSensitive(idx, "weight_map");
        if (!cJSON_IsObject(wm) || !wm->child) {
            cJSON_Delete(idx);
            return spk_err(SPK_ERR_FORMAT, "%s: no 'weight_map' object", p);
        }
        const cJSON *e;
        cJSON_ArrayForEach(e, wm)
        {
            if (!cJSON_IsString(e) || !plain_file_name(e->valuestring)) {
                st = spk_err(SPK_ERR_FORMAT, "%s: weight_map['%.*s'] is not a file name in the directory", p,
                             SHOWN, e->string);
                break;
            }
            int seen = 0;
            for (const cJSON *f = wm->child; f != e && !seen; f = f->next)
                seen = !strcmp(f->valuestring, e->valuestring);
            if (!seen && (st = add_shard(b, e->valuestring)) != SPK_OK)
                break;
        }
        if (st != SPK_OK) {
            cJSON_Delete(idx);
            return st;
        }
    }
    size_t n = 0;
    for (size_t i = 0; i < b->m->n_shards; i++)
        n += b->m->shards[i]->n_tensors;
    ix->e = calloc(n ? n : 1, sizeof *ix->e);
    if (!ix->e) {
        cJSON_Delete(idx);
        return nomem();
    }
    for (size_t i = 0; i < b->m->n_shards; i++)
        for (size_t j = 0; j < b->m->shards[i]->n_tensors; j++)
            ix->e[ix->n++] = (entry){&b->m->shards[i]->tensors[j], b->m->shards[i], 0};
    qsort(ix->e, ix->n, sizeof *ix->e, entry_cmp);
    spk_status st = SPK_OK;
    for (size_t i = 1; i < ix->n && st == SPK_OK; i++)
        if (!strcmp(ix->e[i - 1].t->name, ix->e[i].t->name))
            st = spk_err(SPK_ERR_FORMAT, "%s: tensor '%.*s' is in two shards (%s, %s)", b->dir, SHOWN,
                         ix->e[i].t->name, ix->e[i - 1].shard->path, ix->e[i].shard->path);
    if (wm && st == SPK_OK) {
        /* the index names every tensor, in the file that holds it, and nothing else */
        size_t listed = 0;
        const cJSON *e;
        cJSON_ArrayForEach(e, wm)
        {
            listed++;
            entry *x = lookup(ix, e->string);
            const char *base = x ? strrchr(x->shard->path, '/') + 1 : NULL;
            if (!x || strcmp(base, e->valuestring)) {
                st = spk_err(SPK_ERR_FORMAT, "%s: the index puts tensor '%.*s' in %s, which does not hold it",
                             b->dir, SHOWN, e->string, e->valuestring);
                break;
            }
        }
        if (st == SPK_OK && listed != ix->n)
            st = spk_err(SPK_ERR_FORMAT, "%s: the shards hold %zu tensors, the index names %zu", b->dir, ix->n,
                         listed);
    }
    cJSON_Delete(idx);
    return st;
}

/* ---- open ---------------------------------------------------------------------------------- */

spk_status spk_hf_open(const char *dir, spk_gguf_file **out)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, init_tables);
    *out = NULL;
    if (strlen(dir) >= sizeof((spk_gguf_file *)0)->path - 64)
        return spk_err(SPK_ERR_IO, "%.64s...: a model directory path of %zu bytes (at most %zu)", dir, strlen(dir),
                       sizeof((spk_gguf_file *)0)->path - 65);
    spk_gguf_file *f = calloc(1, sizeof *f);
    struct spk_hf_model *m = calloc(1, sizeof *m);
    if (!f || !m) {
        free(f);
        free(m);
        return nomem();
    }
    f->hf = m;
    if (!(m->lazy = spk_hf_lazy_new())) {
        free(f);
        free(m);
        return nomem();
    }
    f->version = 3;
    f->alignment = 32;
    snprintf(f->path, sizeof f->path, "%s", dir);
    builder b = {.f = f, .m = m, .dir = f->path};
    index_t ix = {0};
    cJSON *cfg = NULL;
    char p[1200];
    snprintf(p, sizeof p, "%s/config.json", dir);
    int missing = 0;
    spk_status st = read_small(p, &m->config, &m->config_len, &missing);
    if (st == SPK_OK && missing)
        st = spk_err(SPK_ERR_IO, "%s: a directory without config.json (neither a GGUF file nor a Hugging Face "
                     "model directory)", dir);
    if (st == SPK_OK)
        st = parse_json(p, m->config, m->config_len, &cfg);
    hparams hp;
    if (st == SPK_OK)
        st = read_hparams(f->path, cfg, &hp);
    float *factors = NULL;
    int n_factors = 0;
    if (st == SPK_OK) {
        factors = keep(&b, malloc(sizeof(float) * (hp.head_dim / 2 + 1)));
        st = factors ? write_metadata(&b, &hp, cfg, factors, &n_factors) : nomem();
    }
    if (st == SPK_OK)
        st = write_tokenizer(&b);
    if (st == SPK_OK)
        st = open_shards(&b, &ix);
    if (st == SPK_OK)
        st = build_tensors(&b, &hp, &ix);
    if (st == SPK_OK && n_factors) {
        spk_gguf_tensor *g = add_tensor(&b, "rope_freqs.weight");
        if (!g)
            st = nomem();
        else {
            g->type = SPK_DT_F32;
            g->n_dims = 1;
            g->ne[0] = (uint64_t)n_factors;
            g->ne[1] = g->ne[2] = g->ne[3] = 1;
            g->n_elements = (uint64_t)n_factors;
            g->nbytes = 4u * (uint64_t)n_factors;
            g->data = factors;
        }
    }
    if (st == SPK_OK && !spk_gguf_find_tensor(f, "token_embd.weight"))
        st = spk_err(SPK_ERR_FORMAT, "%s: no model.embed_tokens.weight in the checkpoint", dir);
    if (st == SPK_OK)
        st = spk_hf_lazy_start(m->lazy);
    free(ix.e);
    cJSON_Delete(cfg);
    if (st != SPK_OK) {
        spk_gguf_close(f);
        return st;
    }
    *out = f;
    return SPK_OK;
}

uint64_t spk_hf_converted_bytes(const spk_gguf_file *f, const char *name)
{
    return f && f->hf ? spk_hf_lazy_done(f->hf->lazy, name) : 0;
}

int spk_hf_lazy_conversion(const spk_gguf_file *f) { return f && f->hf && spk_hf_lazy_is_lazy(f->hf->lazy); }

/* ---- identity -------------------------------------------------------------------------------- */

static void absorb_u64(crypto_generichash_state *st, uint64_t v)
{
    uint8_t b[8];
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(v >> (8 * i));
    crypto_generichash_update(st, b, sizeof b);
}

void spk_hf_identity(const spk_gguf_file *f, uint8_t out[SPK_GGUF_ID_BYTES])
{
    enum { SAMPLE = 4096 };
    const struct spk_hf_model *m = f->hf;
    crypto_generichash_state st;
    crypto_generichash_init(&st, (const unsigned char *)"spk-hf-identity-v1", 18, SPK_GGUF_ID_BYTES);
    absorb_u64(&st, m->config_len);
    crypto_generichash_update(&st, (const unsigned char *)m->config, m->config_len);
    absorb_u64(&st, m->n_shards);
    for (size_t i = 0; i < m->n_shards; i++) {
        const spk_st_file *s = m->shards[i];
        absorb_u64(&st, s->size);
        crypto_generichash_update(&st, s->base, 8 + s->header_len);
    }
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const spk_gguf_tensor *t = &f->tensors[i];
        const uint8_t *d = t->data;
        uint64_t n = t->nbytes;
        absorb_u64(&st, t->name.len);
        crypto_generichash_update(&st, (const unsigned char *)t->name.ptr, t->name.len);
        absorb_u64(&st, (uint64_t)t->type);
        absorb_u64(&st, t->ne[0]);
        absorb_u64(&st, t->ne[1]);
        if (n <= 3 * SAMPLE) {
            crypto_generichash_update(&st, d, n);
            continue;
        }
        crypto_generichash_update(&st, d, SAMPLE);
        crypto_generichash_update(&st, d + (n / 2 - SAMPLE / 2), SAMPLE);
        crypto_generichash_update(&st, d + n - SAMPLE, SAMPLE);
    }
    crypto_generichash_final(&st, out, SPK_GGUF_ID_BYTES);
}
