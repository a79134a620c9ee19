/*
 * Synthetic llama GGUF writer: header, metadata, tensor table, then the tensors one by one
 * (random rows generated, quantized and written a row at a time).
 */
#include "tools/synth.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/error.h"
#include "cpu/quant.h"

/* ---- presets -------------------------------------------------------------------------------- */

typedef struct synth_preset {
    const char *name;
    int n_layers, n_embd, n_heads, n_kv_heads, head_dim, n_ff, n_vocab, n_ctx_train;
    bool tied, llama3_rope;
    float rope_theta;
    spk_synth_arch arch;
    float rms_eps;          /* 0: 1e-5 */
    bool f32;               /* every matrix F32 (default: Q4_1 matrices, Q8_0 embeddings) */
    int n_expert, n_expert_used; /* qwen3moe */
    bool mxfp4_moe;         /* MXFP4 experts, Q8_0 everything else (llama-quantize's MXFP4_MOE) */
    int sliding_window;     /* gpt-oss (0: 4) */
} synth_preset;

static const synth_preset k_presets[] = {
    {"tiny", 4, 256, 8, 4, 32, 512, 1024, 2048, true, false, 10000.0f, SPK_SYNTH_LLAMA, 0, false, 0, 0, false, 0},
    {"tiny-tp4", 4, 256, 8, 4, 32, 512, 1024, 2048, true, false, 10000.0f, SPK_SYNTH_LLAMA, 0, false, 0, 0, false, 0},
    {"smollm2-135m", 30, 576, 9, 3, 64, 1536, 49152, 8192, true, false, 100000.0f, SPK_SYNTH_LLAMA, 0, false, 0, 0, false, 0},
    {"llama-3.1-8b", 32, 4096, 32, 8, 128, 14336, 128256, 131072, false, true, 500000.0f, SPK_SYNTH_LLAMA, 0, false, 0, 0, false, 0},
    {"mistral-small-24b", 40, 5120, 32, 8, 128, 32768, 131072, 32768, false, false, 100000000.0f, SPK_SYNTH_LLAMA, 0, false, 0, 0, false, 0},
    {"qwen3-tiny", 3, 128, 8, 4, 32, 256, 512, 4096, true, false, 1000000.0f, SPK_SYNTH_QWEN3, 1e-6f, true, 0, 0, false, 0},
    {"qwen3moe-tiny", 3, 128, 8, 4, 32, 64, 512, 4096, true, false, 1000000.0f, SPK_SYNTH_QWEN3MOE, 1e-6f, true, 8, 2, false, 0},
    {"qwen3-30b-a3b", 48, 2048, 32, 4, 128, 768, 151936, 40960, false, false, 1000000.0f, SPK_SYNTH_QWEN3MOE, 1e-6f, false,
     128, 8, false, 0},
    {"gpt-oss-tiny", 4, 128, 8, 4, 32, 64, 512, 131072, false, false, 150000.0f, SPK_SYNTH_GPTOSS, 1e-5f, true, 8, 2, false, 4},
    {"qwen3-8b", 36, 4096, 32, 8, 128, 12288, 151936, 40960, false, false, 1000000.0f, SPK_SYNTH_QWEN3, 1e-6f, false, 0, 0, false, 0},
    {"gpt-oss-20b", 24, 2880, 64, 8, 64, 2880, 201088, 131072, false, false, 150000.0f, SPK_SYNTH_GPTOSS, 1e-5f, false,
     32, 4, true, 128},
    {"gpt-oss-120b", 36, 2880, 64, 8, 64, 2880, 201088, 131072, false, false, 150000.0f, SPK_SYNTH_GPTOSS, 1e-5f, false,
     128, 4, true, 128},
};
enum { N_PRESETS = (int)(sizeof k_presets / sizeof k_presets[0]) };

const char *const *spk_synth_preset_names(void)
{
    static const char *names[N_PRESETS + 1];
    for (int i = 0; i < N_PRESETS; i++)
        names[i] = k_presets[i].name;
    names[N_PRESETS] = NULL;
    return names;
}

static void apply_preset(const synth_preset *s, spk_synth_params *p)
{
    memset(p, 0, sizeof *p);
    p->n_layers = s->n_layers;
    p->n_embd = s->n_embd;
    p->n_heads = s->n_heads;
    p->n_kv_heads = s->n_kv_heads;
    p->head_dim = s->head_dim;
    p->n_ff = s->n_ff;
    p->n_vocab = s->n_vocab;
    p->n_ctx_train = s->n_ctx_train;
    p->wtype = SPK_DT_Q4_1;
    p->embd_type = SPK_DT_Q8_0;
    p->out_type = SPK_DT_Q4_1;
    p->tied = s->tied;
    p->llama3_rope = s->llama3_rope;
    p->rope_theta = s->rope_theta;
    p->rms_eps = s->rms_eps > 0 ? s->rms_eps : 1e-5f;
    p->arch = s->arch;
    p->n_expert = s->n_expert;
    p->n_expert_used = s->n_expert_used;
    if (s->f32)
        p->wtype = p->embd_type = p->out_type = SPK_DT_F32;
    p->expert_type = -1;
    if (s->mxfp4_moe) {
        p->wtype = p->embd_type = p->out_type = SPK_DT_Q8_0;
        p->expert_type = SPK_DT_MXFP4;
    }
    p->sliding_window = s->sliding_window;
    p->seed = 0;
    snprintf(p->preset, sizeof p->preset, "%s", s->name);
}

void spk_synth_params_init(spk_synth_params *p)
{
    if (p)
        apply_preset(&k_presets[0], p);
}

spk_status spk_synth_preset(const char *name, spk_synth_params *p)
{
    if (!name || !p)
        return spk_err(SPK_ERR_INVALID_ARG, "spk_synth_preset: name or params is NULL");
    for (int i = 0; i < N_PRESETS; i++)
        if (strcmp(k_presets[i].name, name) == 0) {
            apply_preset(&k_presets[i], p);
            return SPK_OK;
        }
    char list[256];
    int n = 0;
    for (int i = 0; i < N_PRESETS && n < (int)sizeof list; i++)
        n += snprintf(list + n, sizeof list - (size_t)n, "%s%s", i ? ", " : "", k_presets[i].name);
    return spk_err(SPK_ERR_NOT_FOUND, "unknown synthetic preset '%.64s' (known: %s)", name, list);
}

/* ---- checks --------------------------------------------------------------------------------- */

static bool type_ok(spk_dtype t)
{
    return t == SPK_DT_F32 || t == SPK_DT_F16 || t == SPK_DT_BF16 || t == SPK_DT_Q4_0 ||
           t == SPK_DT_Q4_1 || t == SPK_DT_Q8_0 || t == SPK_DT_Q5_0 || t == SPK_DT_Q5_1 ||
           t == SPK_DT_Q2_K || t == SPK_DT_Q3_K || t == SPK_DT_Q4_K || t == SPK_DT_Q5_K || t == SPK_DT_Q6_K || t == SPK_DT_MXFP4;
}

static int type_block(spk_dtype t)
{
    const spk_dtype_info *in = spk_dtype_get((uint32_t)t);
    return in ? (int)in->block : 1;
}

static const char *type_name(spk_dtype t)
{
    const spk_dtype_info *in = spk_dtype_get((uint32_t)t);
    return in ? in->name : "unknown";
}

static int head_dim_of(const spk_synth_params *p)
{
    return p->head_dim ? p->head_dim : (p->n_heads > 0 ? p->n_embd / p->n_heads : 0);
}

/* The stacked experts' type: expert_type, or wtype when it is -1. */
static spk_dtype expert_type_of(const spk_synth_params *p)
{
    return p->expert_type < 0 ? p->wtype : (spk_dtype)p->expert_type;
}

spk_status spk_synth_check(const spk_synth_params *p)
{
    if (!p)
        return spk_err(SPK_ERR_INVALID_ARG, "synth: params is NULL");
    const int hd = head_dim_of(p);
    if (p->n_layers < 1 || p->n_layers > 1024 || p->n_embd < 1 || p->n_embd > 65536 || p->n_heads < 1 ||
        p->n_heads > 1024 || p->n_kv_heads < 1 || p->n_heads % p->n_kv_heads != 0 || p->n_ff < 1 ||
        p->n_ff > 1 << 20 || p->n_ctx_train < 1 || p->head_dim < 0 ||
        (p->arch != SPK_SYNTH_LLAMA && p->arch != SPK_SYNTH_QWEN3 && p->arch != SPK_SYNTH_QWEN3MOE &&
         p->arch != SPK_SYNTH_GPTOSS))
        return spk_err(SPK_ERR_INVALID_ARG,
                       "synth: bad shape: layers %d, embd %d, heads %d, kv heads %d (must divide heads), "
                       "ff %d, ctx %d, head_dim %d, arch %d",
                       p->n_layers, p->n_embd, p->n_heads, p->n_kv_heads, p->n_ff, p->n_ctx_train,
                       p->head_dim, (int)p->arch);
    if ((p->arch == SPK_SYNTH_QWEN3MOE || p->arch == SPK_SYNTH_GPTOSS) &&
        (p->n_expert < 1 || p->n_expert > 4096 || p->n_expert_used < 1 || p->n_expert_used > p->n_expert))
        return spk_err(SPK_ERR_INVALID_ARG, "synth: a MoE model needs 1 <= experts used %d <= experts %d <= 4096",
                       p->n_expert_used, p->n_expert);
    if (hd < 2 || hd > 1024 || hd % 2)
        return spk_err(SPK_ERR_INVALID_ARG, "synth: head_dim %d must be even and in 2..1024 (embd %d, heads %d)",
                       hd, p->n_embd, p->n_heads);
    if (p->n_vocab < SPK_SYNTH_MIN_VOCAB || p->n_vocab > 1 << 22)
        return spk_err(SPK_ERR_INVALID_ARG, "synth: n_vocab %d out of range (%d..%d: 256 bytes + 3 special tokens)",
                       p->n_vocab, SPK_SYNTH_MIN_VOCAB, 1 << 22);
    if (!(p->rope_theta > 1.0f && p->rope_theta < 1e12f) || !(p->rms_eps > 0.0f && p->rms_eps < 1.0f))
        return spk_err(SPK_ERR_INVALID_ARG, "synth: bad rope theta %g or rms eps %g", p->rope_theta, p->rms_eps);
    const spk_dtype types[3] = {p->wtype, p->embd_type, p->out_type};
    const char *what[3] = {"matrix type", "token_embd type", "output type"};
    for (int i = 0; i < 3; i++)
        if (!type_ok(types[i]))
            return spk_err(SPK_ERR_UNSUPPORTED, "synth: %s %d (%s) not supported (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, MXFP4)",
                           what[i], (int)types[i], type_name(types[i]));
    /* Every row length must be a whole number of blocks of its type. */
    const int q_dim = p->n_heads * hd;
    const int bw = type_block(p->wtype), be = type_block(p->embd_type), bo = type_block(p->out_type);
    if (p->n_embd % bw || p->n_ff % bw || q_dim % bw)
        return spk_err(SPK_ERR_INVALID_ARG,
                       "synth: %s needs rows that are multiples of %d: embd %d, ff %d, heads*head_dim %d",
                       type_name(p->wtype), bw, p->n_embd, p->n_ff, q_dim);
    const bool moe = p->arch == SPK_SYNTH_QWEN3MOE || p->arch == SPK_SYNTH_GPTOSS;
    if (p->expert_type < -1 || p->expert_type >= SPK_DT_LIMIT || (p->expert_type >= 0 && !moe) ||
        !type_ok(expert_type_of(p)))
        return spk_err(SPK_ERR_UNSUPPORTED, "synth: expert type %d (%s) not supported%s", p->expert_type,
                       p->expert_type >= 0 ? type_name((spk_dtype)p->expert_type) : "-",
                       moe ? "" : " (only MoE architectures have experts)");
    const int bx = type_block(expert_type_of(p));
    if (moe && (p->n_embd % bx || p->n_ff % bx))
        return spk_err(SPK_ERR_INVALID_ARG, "synth: expert type %s needs rows that are multiples of %d: embd %d, "
                       "expert ff %d", type_name(expert_type_of(p)), bx, p->n_embd, p->n_ff);
    if (p->sliding_window < 0 || p->sliding_window > p->n_ctx_train)
        return spk_err(SPK_ERR_INVALID_ARG, "synth: sliding window %d out of range (0..context %d)",
                       p->sliding_window, p->n_ctx_train);
    if (p->n_embd % be || (!p->tied && p->n_embd % bo))
        return spk_err(SPK_ERR_INVALID_ARG, "synth: embd %d is not a multiple of the %s/%s block",
                       p->n_embd, type_name(p->embd_type), type_name(p->out_type));
    return SPK_OK;
}

/* ---- random numbers --------------------------------------------------------------------------- */

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Approximately N(0, 1): the sum of four 16-bit uniforms (Irwin-Hall), centred and scaled to
 * unit variance; bounded by +-2*sqrt(3). One 64-bit draw per value. */
static float normalish(uint64_t *s)
{
    uint64_t r = splitmix64(s);
    uint32_t sum = (uint32_t)(r & 0xFFFF) + (uint32_t)((r >> 16) & 0xFFFF) + (uint32_t)((r >> 32) & 0xFFFF) +
                   (uint32_t)(r >> 48);
    /* sum/65536 has mean ~2 and variance 4/12 */
    return ((float)sum * (1.0f / 65536.0f) - 2.0f) * 1.7320508f;
}

/* ---- reference quantizers ------------------------------------------------------------------------ */

static void quant_q4_0(spk_block_q4_0 *y, const float *x, int n)
{
    for (int b = 0; b < n / SPK_QK4_0; b++, x += SPK_QK4_0) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < SPK_QK4_0; j++)
            if (fabsf(x[j]) > amax) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        const float d = max / -8.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = spk_f32_to_f16(d);
        for (int j = 0; j < SPK_QK4_0 / 2; j++) {
            int q0 = (int)(x[j] * id + 8.5f), q1 = (int)(x[j + 16] * id + 8.5f);
            q0 = q0 < 0 ? 0 : q0 > 15 ? 15 : q0;
            q1 = q1 < 0 ? 0 : q1 > 15 ? 15 : q1;
            y[b].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

static void quant_q4_1(spk_block_q4_1 *y, const float *x, int n)
{
    for (int b = 0; b < n / SPK_QK4_1; b++, x += SPK_QK4_1) {
        float min = x[0], max = x[0];
        for (int j = 1; j < SPK_QK4_1; j++) {
            min = x[j] < min ? x[j] : min;
            max = x[j] > max ? x[j] : max;
        }
        const float d = (max - min) / 15.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = spk_f32_to_f16(d);
        y[b].m = spk_f32_to_f16(min);
        for (int j = 0; j < SPK_QK4_1 / 2; j++) {
            int q0 = (int)((x[j] - min) * id + 0.5f), q1 = (int)((x[j + 16] - min) * id + 0.5f);
            q0 = q0 < 0 ? 0 : q0 > 15 ? 15 : q0;
            q1 = q1 < 0 ? 0 : q1 > 15 ? 15 : q1;
            y[b].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

static void quant_q8_0(spk_block_q8_0 *y, const float *x, int n)
{
    for (int b = 0; b < n / SPK_QK8_0; b++, x += SPK_QK8_0) {
        float amax = 0.0f;
        for (int j = 0; j < SPK_QK8_0; j++)
            amax = fabsf(x[j]) > amax ? fabsf(x[j]) : amax;
        const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = spk_f32_to_f16(d);
        for (int j = 0; j < SPK_QK8_0; j++) {
            float q = roundf(x[j] * id);
            y[b].qs[j] = (int8_t)(q > 127.0f ? 127 : q < -127.0f ? -127 : q);
        }
    }
}

size_t spk_synth_quantize_row(void *dst, const float *x, spk_dtype type, int n)
{
    if (!dst || !x || n <= 0 || !type_ok(type) || n % type_block(type))
        return 0;
    switch (type) {
    case SPK_DT_F32:
        memcpy(dst, x, (size_t)n * sizeof(float));
        break;
    case SPK_DT_F16:
        for (int i = 0; i < n; i++)
            ((uint16_t *)dst)[i] = spk_f32_to_f16(x[i]);
        break;
    case SPK_DT_BF16:
        for (int i = 0; i < n; i++)
            ((uint16_t *)dst)[i] = spk_f32_to_bf16(x[i]);
        break;
    case SPK_DT_Q4_0: quant_q4_0(dst, x, n); break;
    case SPK_DT_Q4_1: quant_q4_1(dst, x, n); break;
    case SPK_DT_Q8_0: quant_q8_0(dst, x, n); break;
    default: /* Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, MXFP4: ggml's reference quantizers */
        return spk_quantize_row_ref(dst, x, type, n);
    }
    return spk_dtype_row_size(type, (size_t)n);
}

/* ---- vocabulary ------------------------------------------------------------------------------- */

/* Token texts packed in one buffer, with a hash set for "is this text a token already". */
typedef struct vocab {
    char *buf;
    size_t len, cap;
    uint32_t *off;          /* n + 1 offsets */
    uint32_t *merge_left;   /* for token i >= SPK_SYNTH_MIN_VOCAB: length of the left part */
    int n, max;
    uint32_t *set;          /* open addressing: id + 1, 0 empty */
    uint32_t mask;
} vocab;

static uint64_t hash_str(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (uint8_t)s[i]) * 1099511628211ull;
    return h;
}

static int vocab_find(const vocab *v, const char *s, size_t n)
{
    for (uint64_t i = hash_str(s, n) & v->mask;; i = (i + 1) & v->mask) {
        uint32_t e = v->set[i];
        if (!e)
            return -1;
        uint32_t o = v->off[e - 1], l = v->off[e] - o;
        if (l == n && memcmp(v->buf + o, s, n) == 0)
            return (int)e - 1;
    }
}

/* Append a token (the caller knows it is new and that there is room for it). */
static spk_status vocab_add(vocab *v, const char *s, size_t n, uint32_t left_len)
{
    if (v->len + n > v->cap) {
        size_t nc = (v->cap ? v->cap * 2 : 4096) + n;
        char *nb = realloc(v->buf, nc);
        if (!nb)
            return spk_err(SPK_ERR_NOMEM, "synth: out of memory for the vocabulary (%zu bytes)", nc);
        v->buf = nb;
        v->cap = nc;
    }
    memcpy(v->buf + v->len, s, n);
    v->len += n;
    v->merge_left[v->n] = left_len;
    v->off[++v->n] = (uint32_t)v->len;
    uint64_t i = hash_str(s, n) & v->mask;
    while (v->set[i])
        i = (i + 1) & v->mask;
    v->set[i] = (uint32_t)v->n;
    return SPK_OK;
}

static void vocab_free(vocab *v)
{
    free(v->buf);
    free(v->off);
    free(v->merge_left);
    free(v->set);
    memset(v, 0, sizeof *v);
}

/* GPT-2 byte-to-unicode: printable bytes stand for themselves, the others map to U+0100 on. */
static uint32_t byte_cp(unsigned b)
{
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174)
        return b;
    unsigned k = 0;
    for (unsigned c = 0; c < b; c++)
        if (!((c >= 33 && c <= 126) || (c >= 161 && c <= 172) || c >= 174))
            k++;
    return 256 + k;
}

static size_t put_cp(char *out, uint32_t cp)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    out[0] = (char)(0xC0 | (cp >> 6));
    out[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
}

#define SPACE_MARK "\xC4\xA0" /* "Ġ": the GPT-2 form of a leading space */

/* Frequent English words and fragments (a leading '_' stands for a space). */
static const char *const k_common[] = {
    "_t", "he", "in", "er", "_a", "an", "on", "re", "_the", "at", "en", "or", "es", "is", "ed", "_s",
    "_w", "it", "_o", "_c", "ing", "_b", "_f", "_p", "_of", "_and", "_to", "_in", "ou", "al", "ar",
    "le", "_m", "_h", "_d", "_is", "_that", "_for", "_it", "_with", "_as", "_was", "_on", "_be",
    "_he", "_by", "_this", "_are", "_from", "_or", "_have", "_an", "_they", "_which", "_one",
    "_you", "_were", "_her", "_all", "_she", "_there", "_would", "_their", "_we", "_him", "_been",
    "_has", "_when", "_who", "_will", "_more", "_no", "_if", "_out", "_so", "_said", "_what",
    "_up", "_its", "_about", "_into", "_than", "_them", "_can", "_only", "_other", "_new", "_some",
    "_could", "_time", "_these", "_two", "_may", "_then", "_do", "_first", "_any", "_my", "_now",
    "_such", "_like", "_our", "_over", "_man", "_me", "_even", "_most", "_made", "_after",
    "_also", "_did", "_many", "_before", "_must", "_through", "_back", "_years", "_where",
    "_much", "_your", "_way", "_well", "_down", "_should", "_because", "_each", "_just",
    "_those", "_people", "_how", "_too", "_little", "_state", "_good", "_very", "_make",
    "_world", "_still", "_own", "_see", "_men", "_work", "_long", "_get", "_here", "_between",
    "_both", "_life", "_being", "_under", "_never", "_day", "_same", "_another", "_know",
    "_while", "_last", "_might", "_us", "_great", "_old", "_year", "_off", "_come", "_since",
    "_against", "_go", "_came", "_right", "_used", "_take", "_three", "_hello", "hello", "world",
    "ion", "tion", "ation", "ment", "ness", "ly", "er", "est", "ous", "ive", "able", "ful",
};

/* English letters by frequency: the systematic part enumerates frequent letters first. */
static const char k_letters[] = "etaoinshrdlcumwfgypbvkjxqz";

/* The merge that makes the pair (a, b) of adjacent pieces of one buffer (a at a_off, a_len
 * bytes, b right after it with b_len bytes): the id of the token made by exactly that split
 * (its rank: later merges have larger ids), or -1. */
static int pair_merge(const vocab *v, const char *s, size_t a_off, size_t a_len, size_t b_len)
{
    int id = vocab_find(v, s + a_off, a_len + b_len);
    return id >= SPK_SYNTH_MIN_VOCAB && v->merge_left[id] == a_len ? id : -1;
}

/*
 * Make the word `s` (len <= 32 bytes; the first unit may be the 2-byte space mark) encode to a
 * single token, the way a BPE vocabulary grows: encode it with the merges so far (lowest rank,
 * leftmost first, as the tokenizer does), then add a merge of two adjacent pieces whose join is
 * not a token yet, and repeat. A new merge only joins pieces the old merges leave alone, so the
 * word's pieces shrink by at least one each round. Stops when the vocabulary is full or no pair
 * can be added (the word then stays in several pieces).
 */
static spk_status add_word(vocab *v, const char *s, size_t len)
{
    size_t cut[34], n = 0; /* piece k is s[cut[k], cut[k+1]) */
    for (size_t i = 0; i < len; i += (i == 0 && len >= 2 && memcmp(s, SPACE_MARK, 2) == 0) ? 2 : 1)
        cut[n++] = i;
    cut[n] = len;
    while (n > 1 && v->n < v->max) {
        /* encode with the existing merges */
        for (;;) {
            int best = -1;
            size_t at = 0;
            for (size_t k = 0; k + 1 < n; k++) {
                int id = pair_merge(v, s, cut[k], cut[k + 1] - cut[k], cut[k + 2] - cut[k + 1]);
                if (id >= 0 && (best < 0 || id < best)) {
                    best = id;
                    at = k;
                }
            }
            if (best < 0)
                break;
            memmove(&cut[at + 1], &cut[at + 2], (n - at - 1) * sizeof *cut);
            n--;
        }
        if (n == 1)
            break;
        /* one new merge: the leftmost pair whose join is new */
        size_t k = 0;
        while (k + 1 < n && vocab_find(v, s + cut[k], cut[k + 2] - cut[k]) >= 0)
            k++;
        if (k + 1 >= n)
            break;
        spk_status st = vocab_add(v, s + cut[k], cut[k + 2] - cut[k], (uint32_t)(cut[k + 1] - cut[k]));
        if (st != SPK_OK)
            return st;
    }
    return SPK_OK;
}

/*
 * Build the whole vocabulary: 256 byte tokens (id = byte value, GPT-2 unicode form), the three
 * special tokens, then merged tokens until n_vocab: the common words made whole, then all
 * letter strings of length 1, 2, 3 ... (with and without a leading space mark) in frequency
 * order. Each merge "left right" joins two existing tokens into a new one.
 */
static spk_status vocab_build(vocab *v, int n_vocab)
{
    memset(v, 0, sizeof *v);
    v->max = n_vocab;
    uint32_t cap = 1;
    while (cap < (uint32_t)n_vocab * 2u)
        cap <<= 1;
    v->mask = cap - 1;
    v->set = calloc(cap, sizeof *v->set);
    v->off = calloc((size_t)n_vocab + 1, sizeof *v->off);
    v->merge_left = calloc((size_t)n_vocab, sizeof *v->merge_left);
    if (!v->set || !v->off || !v->merge_left)
        return spk_err(SPK_ERR_NOMEM, "synth: out of memory for %d tokens", n_vocab);
    spk_status st;
    for (unsigned b = 0; b < 256; b++) {
        char u[2];
        size_t n = put_cp(u, byte_cp(b));
        if ((st = vocab_add(v, u, n, 0)) != SPK_OK)
            return st;
    }
    static const char *const specials[3] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
    for (int i = 0; i < 3; i++)
        if ((st = vocab_add(v, specials[i], strlen(specials[i]), 0)) != SPK_OK)
            return st;
    char word[64];
    for (size_t w = 0; w < sizeof k_common / sizeof *k_common && v->n < v->max; w++) {
        const char *c = k_common[w];
        size_t n = 0;
        if (*c == '_') {
            memcpy(word, SPACE_MARK, 2);
            n = 2;
            c++;
        }
        size_t cl = strlen(c);
        memcpy(word + n, c, cl);
        if ((st = add_word(v, word, n + cl)) != SPK_OK)
            return st;
    }
    /* Systematic letter strings: length L = 1 (spaced only), 2, 3, ... */
    const int A = (int)(sizeof k_letters - 1);
    for (int L = 1; v->n < v->max && L <= 24; L++) {
        for (int spaced = 0; spaced < 2 && v->n < v->max; spaced++) {
            if (L == 1 && !spaced)
                continue; /* single letters are byte tokens */
            int idx[24] = {0};
            for (;;) {
                size_t n = 0;
                if (spaced) {
                    memcpy(word, SPACE_MARK, 2);
                    n = 2;
                }
                for (int k = 0; k < L; k++)
                    word[n++] = k_letters[idx[k]];
                if ((st = add_word(v, word, n)) != SPK_OK)
                    return st;
                if (v->n >= v->max)
                    break;
                int k = L - 1;
                while (k >= 0 && ++idx[k] == A)
                    idx[k--] = 0;
                if (k < 0)
                    break;
            }
        }
    }
    if (v->n != n_vocab)
        return spk_err(SPK_ERR_INTERNAL, "synth: built %d tokens, wanted %d", v->n, n_vocab);
    return SPK_OK;
}

/* ---- output: a byte-counting writer that may or may not have a file -------------------------- */

typedef struct writer {
    FILE *f;              /* NULL: count only */
    const char *path;
    uint64_t pos;
    spk_status st;
} writer;

static void w_bytes(writer *w, const void *p, size_t n)
{
    if (w->st != SPK_OK || n == 0)
        return;
    if (w->f && fwrite(p, 1, n, w->f) != n)
        w->st = spk_err(SPK_ERR_IO, "synth: writing %s at byte %llu: %s", w->path,
                        (unsigned long long)w->pos, strerror(errno));
    w->pos += n;
}

static void w_u32(writer *w, uint32_t x)
{
    uint8_t b[4] = {(uint8_t)x, (uint8_t)(x >> 8), (uint8_t)(x >> 16), (uint8_t)(x >> 24)};
    w_bytes(w, b, 4);
}

static void w_u64(writer *w, uint64_t x)
{
    w_u32(w, (uint32_t)x);
    w_u32(w, (uint32_t)(x >> 32));
}

static void w_str(writer *w, const char *s, size_t n)
{
    w_u64(w, n);
    w_bytes(w, s, n);
}

static void w_pad(writer *w, uint64_t align)
{
    static const uint8_t zeros[64];
    uint64_t pad = (align - w->pos % align) % align;
    w_bytes(w, zeros, (size_t)pad);
}

/* Metadata pairs: key then a typed value. */
static void kv_key(writer *w, const char *key, uint32_t type)
{
    w_str(w, key, strlen(key));
    w_u32(w, type);
}

static void kv_u32(writer *w, const char *key, uint32_t v)
{
    kv_key(w, key, 4 /* UINT32 */);
    w_u32(w, v);
}

static void kv_f32(writer *w, const char *key, float v)
{
    uint32_t x;
    memcpy(&x, &v, 4);
    kv_key(w, key, 6 /* FLOAT32 */);
    w_u32(w, x);
}

static void kv_bool(writer *w, const char *key, bool v)
{
    uint8_t b = v ? 1 : 0;
    kv_key(w, key, 7 /* BOOL */);
    w_bytes(w, &b, 1);
}

static void kv_cstr(writer *w, const char *key, const char *v)
{
    kv_key(w, key, 8 /* STRING */);
    w_str(w, v, strlen(v));
}

/* ---- the tensor list -------------------------------------------------------------------------- */

typedef enum tkind { T_MAT, T_EMBD, T_NORM, T_ROPE, T_BIAS } tkind;

typedef struct tdesc {
    char name[48];
    int ne0, ne1;          /* ne1 == 0: a vector */
    int ne2;               /* > 0: a 3D tensor of ne2 matrices (stacked experts) */
    spk_dtype type;
    tkind kind;
    uint64_t nbytes, offset;
} tdesc;

static int tensor_list(const spk_synth_params *p, tdesc *t)
{
    const int E = p->n_embd, hd = head_dim_of(p), Q = p->n_heads * hd, KV = p->n_kv_heads * hd;
    int n = 0;
#define ADD(nm, a, b, ty, k) ADD3(nm, a, b, 0, ty, k)
#define ADD3(nm, a, b, c, ty, k)                                                                   \
    do {                                                                                           \
        if (t) {                                                                                   \
            snprintf(t[n].name, sizeof t[n].name, "%s", nm);                                       \
            t[n].ne0 = (a);                                                                        \
            t[n].ne1 = (b);                                                                        \
            t[n].ne2 = (c);                                                                        \
            t[n].type = (ty);                                                                      \
            t[n].kind = (k);                                                                       \
        }                                                                                          \
        n++;                                                                                       \
    } while (0)
    ADD("token_embd.weight", E, p->n_vocab, p->embd_type, T_EMBD);
    if (p->llama3_rope)
        ADD("rope_freqs.weight", hd / 2, 0, SPK_DT_F32, T_ROPE);
    ADD("output_norm.weight", E, 0, SPK_DT_F32, T_NORM);
    if (!p->tied)
        ADD("output.weight", E, p->n_vocab, p->out_type, T_EMBD);
    for (int l = 0; l < p->n_layers; l++) {
        char nm[48];
#define LAYER(suffix, a, b, ty, k)                                                                 \
    do {                                                                                           \
        snprintf(nm, sizeof nm, "blk.%d.%s.weight", l, suffix);                                    \
        ADD(nm, a, b, ty, k);                                                                      \
    } while (0)
        LAYER("attn_norm", E, 0, SPK_DT_F32, T_NORM);
        if (p->arch == SPK_SYNTH_QWEN3 || p->arch == SPK_SYNTH_QWEN3MOE) {
            LAYER("attn_q_norm", hd, 0, SPK_DT_F32, T_NORM);
            LAYER("attn_k_norm", hd, 0, SPK_DT_F32, T_NORM);
        }
        LAYER("attn_q", E, Q, p->wtype, T_MAT);
        LAYER("attn_k", E, KV, p->wtype, T_MAT);
        LAYER("attn_v", E, KV, p->wtype, T_MAT);
        LAYER("attn_output", Q, E, p->wtype, T_MAT);
        const bool oss = p->arch == SPK_SYNTH_GPTOSS;
#define BIAS(suffix, a, b)                                                                         \
    do {                                                                                           \
        snprintf(nm, sizeof nm, "blk.%d.%s.bias", l, suffix);                                      \
        ADD(nm, a, b, SPK_DT_F32, T_BIAS);                                                         \
    } while (0)
        if (oss) {
            BIAS("attn_q", Q, 0);
            BIAS("attn_k", KV, 0);
            BIAS("attn_v", KV, 0);
            BIAS("attn_output", E, 0);
            LAYER("attn_sinks", p->n_heads, 0, SPK_DT_F32, T_BIAS);
        }
        LAYER(oss ? "post_attention_norm" : "ffn_norm", E, 0, SPK_DT_F32, T_NORM);
        if (p->arch == SPK_SYNTH_QWEN3MOE || oss) { /* the router stays F32 (as llama.cpp's converter and quantizer keep it) */
            const int X = p->n_expert;
            LAYER("ffn_gate_inp", E, X, SPK_DT_F32, T_MAT);
            snprintf(nm, sizeof nm, "blk.%d.ffn_gate_exps.weight", l);
            ADD3(nm, E, p->n_ff, X, expert_type_of(p), T_MAT);
            snprintf(nm, sizeof nm, "blk.%d.ffn_up_exps.weight", l);
            ADD3(nm, E, p->n_ff, X, expert_type_of(p), T_MAT);
            snprintf(nm, sizeof nm, "blk.%d.ffn_down_exps.weight", l);
            ADD3(nm, p->n_ff, E, X, expert_type_of(p), T_MAT);
            if (oss) {
                BIAS("ffn_gate_inp", X, 0);
                BIAS("ffn_gate_exps", p->n_ff, X);
                BIAS("ffn_up_exps", p->n_ff, X);
                BIAS("ffn_down_exps", E, X);
            }
#undef BIAS
        } else {
            LAYER("ffn_gate", E, p->n_ff, p->wtype, T_MAT);
            LAYER("ffn_up", E, p->n_ff, p->wtype, T_MAT);
            LAYER("ffn_down", p->n_ff, E, p->wtype, T_MAT);
        }
#undef LAYER
    }
#undef ADD3
#undef ADD
    return n;
}

#define ALIGN 32u

static uint64_t align_up(uint64_t x) { return (x + ALIGN - 1) / ALIGN * ALIGN; }

static void lay_out(tdesc *t, int n)
{
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        uint64_t rows = (t[i].ne1 ? (uint64_t)t[i].ne1 : 1) * (t[i].ne2 ? (uint64_t)t[i].ne2 : 1);
        t[i].nbytes = rows * spk_dtype_row_size(t[i].type, (size_t)t[i].ne0);
        t[i].offset = off;
        off = align_up(off + t[i].nbytes);
    }
}

/* ggml "file type" of the matrices (LLAMA_FTYPE_*). */
static uint32_t file_type(spk_dtype t)
{
    switch (t) {
    case SPK_DT_F32: return 0;
    case SPK_DT_F16: return 1;
    case SPK_DT_Q4_0: return 2;
    case SPK_DT_Q4_1: return 3;
    case SPK_DT_Q8_0: return 7;
    case SPK_DT_Q5_0: return 8;
    case SPK_DT_Q5_1: return 9;
    case SPK_DT_Q2_K: return 10;
    case SPK_DT_Q3_K: return 12;  /* Q3_K_M's id; the file holds Q3_K only */
    case SPK_DT_Q4_K: return 15;  /* Q4_K_M's id */
    case SPK_DT_Q5_K: return 17;  /* Q5_K_M's id */
    case SPK_DT_Q6_K: return 18;
    case SPK_DT_MXFP4: return 38; /* MXFP4_MOE */
    case SPK_DT_BF16: return 32;
    default: return 0;
    }
}

static const char k_chat_template[] =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% endif %}";

/* "<arch>.<suffix>" in buf. */
static const char *key(char *buf, const char *arch, const char *suffix)
{
    snprintf(buf, 96, "%s.%s", arch, suffix);
    return buf;
}

/* Header, metadata and tensor table, then padding to the data section. */
static void write_header(writer *w, const spk_synth_params *p, const vocab *v, const tdesc *t, int nt)
{
    const int hd = head_dim_of(p);
    const int n_merges = v->n - SPK_SYNTH_MIN_VOCAB;
    const bool oss = p->arch == SPK_SYNTH_GPTOSS, moe = p->arch == SPK_SYNTH_QWEN3MOE || oss;
    const char *a = oss ? "gpt-oss" : moe ? "qwen3moe" : p->arch == SPK_SYNTH_QWEN3 ? "qwen3" : "llama"; /* keys' prefix */
    char k[96];
    w_bytes(w, "GGUF", 4);
    w_u32(w, 3);
    w_u64(w, (uint64_t)nt);
    w_u64(w, oss ? 39 : moe ? 33 : 30); /* metadata pairs below */
    char name[128];
    snprintf(name, sizeof name, "synthetic %s seed %llu", p->preset[0] ? p->preset : "custom",
             (unsigned long long)p->seed);
    kv_cstr(w, "general.architecture", a);                          /* 1 */
    kv_cstr(w, "general.name", name);                                     /* 2 */
    kv_u32(w, "general.alignment", ALIGN);                                /* 3 */
    kv_u32(w, "general.file_type", moe && expert_type_of(p) == SPK_DT_MXFP4 && p->wtype != SPK_DT_MXFP4
                                       ? 38u /* MXFP4_MOE */ : file_type(p->wtype)); /* 4 */
    kv_u32(w, "general.quantization_version", 2);                         /* 5 */
    kv_u32(w, key(k, a, "block_count"), (uint32_t)p->n_layers);                /* 6 */
    kv_u32(w, key(k, a, "context_length"), (uint32_t)p->n_ctx_train);          /* 7 */
    kv_u32(w, key(k, a, "embedding_length"), (uint32_t)p->n_embd);             /* 8 */
    kv_u32(w, key(k, a, "feed_forward_length"), (uint32_t)p->n_ff);            /* 9 */
    kv_u32(w, key(k, a, "attention.head_count"), (uint32_t)p->n_heads);        /* 10 */
    kv_u32(w, key(k, a, "attention.head_count_kv"), (uint32_t)p->n_kv_heads);  /* 11 */
    kv_u32(w, key(k, a, "attention.key_length"), (uint32_t)hd);                /* 12 */
    kv_u32(w, key(k, a, "attention.value_length"), (uint32_t)hd);              /* 13 */
    kv_u32(w, key(k, a, "rope.dimension_count"), (uint32_t)hd);                /* 14 */
    kv_f32(w, key(k, a, "rope.freq_base"), p->rope_theta);                     /* 15 */
    kv_f32(w, key(k, a, "attention.layer_norm_rms_epsilon"), p->rms_eps);      /* 16 */
    kv_u32(w, key(k, a, "vocab_size"), (uint32_t)p->n_vocab);                  /* 17 */
    kv_cstr(w, "tokenizer.ggml.model", "gpt2");                           /* 18 */
    kv_cstr(w, "tokenizer.ggml.pre", "smollm");                           /* 19 */
    kv_key(w, "tokenizer.ggml.tokens", 9 /* ARRAY */);                    /* 20 */
    w_u32(w, 8 /* STRING */);
    w_u64(w, (uint64_t)v->n);
    for (int i = 0; i < v->n; i++)
        w_str(w, v->buf + v->off[i], v->off[i + 1] - v->off[i]);
    kv_key(w, "tokenizer.ggml.token_type", 9);                            /* 21 */
    w_u32(w, 5 /* INT32 */);
    w_u64(w, (uint64_t)v->n);
    for (int i = 0; i < v->n; i++)
        w_u32(w, i >= 256 && i < SPK_SYNTH_MIN_VOCAB ? 3u /* CONTROL */ : 1u /* NORMAL */);
    kv_key(w, "tokenizer.ggml.merges", 9);                                /* 22 */
    w_u32(w, 8);
    w_u64(w, (uint64_t)n_merges);
    for (int i = SPK_SYNTH_MIN_VOCAB; i < v->n; i++) {
        char m[64];
        const char *s = v->buf + v->off[i];
        uint32_t len = v->off[i + 1] - v->off[i], ll = v->merge_left[i];
        if (len + 1 > sizeof m || ll == 0 || ll >= len) { /* never: merged tokens are short */
            if (w->st == SPK_OK)
                w->st = spk_err(SPK_ERR_INTERNAL, "synth: token %d (%u bytes) has no valid merge", i, len);
            return;
        }
        memcpy(m, s, ll);
        m[ll] = ' ';
        memcpy(m + ll + 1, s + ll, len - ll);
        w_str(w, m, len + 1);
    }
    kv_u32(w, "tokenizer.ggml.bos_token_id", SPK_SYNTH_TOK_IM_START);     /* 23 */
    kv_u32(w, "tokenizer.ggml.eos_token_id", SPK_SYNTH_TOK_IM_END);       /* 24 */
    kv_u32(w, "tokenizer.ggml.unknown_token_id", SPK_SYNTH_TOK_ENDOFTEXT); /* 25 */
    kv_u32(w, "tokenizer.ggml.padding_token_id", SPK_SYNTH_TOK_IM_END);   /* 26 */
    kv_bool(w, "tokenizer.ggml.add_bos_token", false);                    /* 27 */
    kv_bool(w, "tokenizer.ggml.add_eos_token", false);                    /* 28 */
    kv_cstr(w, "tokenizer.chat_template", p->chat_template ? p->chat_template : k_chat_template); /* 29 */
    kv_key(w, "synthetic.seed", 10 /* UINT64 */);                         /* 30 */
    w_u64(w, p->seed);
    if (moe) {
        kv_u32(w, key(k, a, "expert_count"), (uint32_t)p->n_expert);               /* 31 */
        kv_u32(w, key(k, a, "expert_used_count"), (uint32_t)p->n_expert_used);     /* 32 */
        kv_u32(w, key(k, a, "expert_feed_forward_length"), (uint32_t)p->n_ff);     /* 33 */
    }
    if (oss) { /* gpt-oss-20b's values (its config.json); the window defaults to 4 to matter in short prompts */
        kv_u32(w, key(k, a, "attention.sliding_window"), p->sliding_window > 0 ? (uint32_t)p->sliding_window : 4u); /* 34 */
        kv_cstr(w, key(k, a, "rope.scaling.type"), "yarn");                       /* 35 */
        kv_f32(w, key(k, a, "rope.scaling.factor"), 32.0f);                       /* 36 */
        kv_u32(w, key(k, a, "rope.scaling.original_context_length"), 4096);       /* 37 */
        kv_f32(w, key(k, a, "rope.scaling.yarn_beta_fast"), 32.0f);               /* 38 */
        kv_f32(w, key(k, a, "rope.scaling.yarn_beta_slow"), 1.0f);                /* 39 */
    }
    for (int i = 0; i < nt; i++) {
        w_str(w, t[i].name, strlen(t[i].name));
        w_u32(w, t[i].ne2 ? 3 : t[i].ne1 ? 2 : 1);
        w_u64(w, (uint64_t)t[i].ne0);
        if (t[i].ne1)
            w_u64(w, (uint64_t)t[i].ne1);
        if (t[i].ne2)
            w_u64(w, (uint64_t)t[i].ne2);
        w_u32(w, (uint32_t)t[i].type);
        w_u64(w, t[i].offset);
    }
    w_pad(w, ALIGN);
}

/* Llama 3.1 rope scaling as per-frequency divisors (factor 8, low/high frequency factors 1/4,
 * original context 8192). */
static float llama3_rope_factor(int i, int rot_dim, float theta)
{
    const double factor = 8.0, lo = 1.0, hi = 4.0, old_ctx = 8192.0;
    const double freq = pow((double)theta, -2.0 * i / rot_dim), wavelen = 2.0 * M_PI / freq;
    if (wavelen < old_ctx / hi)
        return 1.0f;
    if (wavelen > old_ctx / lo)
        return (float)factor;
    const double smooth = (old_ctx / wavelen - lo) / (hi - lo);
    return (float)(1.0 / ((1.0 - smooth) / factor + smooth));
}

static float embd_std(const spk_synth_params *p)
{
    float s = 1.0f / sqrtf((float)p->n_embd);
    return s < 0.02f ? 0.02f : s > 0.08f ? 0.08f : s;
}

/* The final norm's weights: logits of standard deviation about 3 (as trained models have) for
 * any width, whatever the head's scale. */
static float out_norm_gain(const spk_synth_params *p)
{
    return 3.0f / (embd_std(p) * sqrtf((float)p->n_embd));
}

/* Generate and write tensor i row by row. `row` holds ne0 floats, `q` a quantized row. */
static void write_tensor(writer *w, const spk_synth_params *p, const tdesc *t, int i, float *row, void *q)
{
    uint64_t s = p->seed ^ (0xD1B54A32D192ED03ull * (uint64_t)(i + 1));
    splitmix64(&s);
    const int rows = (t->ne1 ? t->ne1 : 1) * (t->ne2 ? t->ne2 : 1);
    float sd, mean = 0.0f;
    if (t->kind == T_EMBD) {
        sd = embd_std(p);
    } else if (t->kind == T_BIAS) { /* gpt-oss's biases and sinks */
        sd = strstr(t->name, "attn_sinks") ? 1.0f : 0.2f;
    } else if (t->kind == T_NORM) {
        sd = 0.01f;
        mean = strcmp(t->name, "output_norm.weight") == 0 ? out_norm_gain(p) : 1.0f;
    } else {
        sd = 1.25f / sqrtf((float)t->ne0); /* unit-gain layers: 0.02 at n_in 4096 */
    }
    for (int r = 0; r < rows && w->st == SPK_OK; r++) {
        if (t->kind == T_ROPE) {
            for (int j = 0; j < t->ne0; j++)
                row[j] = llama3_rope_factor(j, 2 * t->ne0, p->rope_theta);
        } else {
            for (int j = 0; j < t->ne0; j++)
                row[j] = mean + sd * normalish(&s);
        }
        size_t nb = spk_synth_quantize_row(q, row, t->type, t->ne0);
        w_bytes(w, q, nb);
    }
    w_pad(w, ALIGN);
}

static spk_status prepare(const spk_synth_params *p, vocab *v, tdesc **tt, int *nt)
{
    memset(v, 0, sizeof *v);
    spk_status st = spk_synth_check(p);
    if (st != SPK_OK)
        return st;
    if ((st = vocab_build(v, p->n_vocab)) != SPK_OK)
        return st;
    int n = tensor_list(p, NULL);
    tdesc *t = calloc((size_t)n, sizeof *t);
    if (!t)
        return spk_err(SPK_ERR_NOMEM, "synth: out of memory for %d tensor descriptions", n);
    tensor_list(p, t);
    lay_out(t, n);
    *tt = t;
    *nt = n;
    return SPK_OK;
}

spk_status spk_synth_file_size(const spk_synth_params *p, uint64_t *bytes)
{
    if (!bytes)
        return spk_err(SPK_ERR_INVALID_ARG, "spk_synth_file_size: bytes is NULL");
    vocab v;
    tdesc *t = NULL;
    int nt = 0;
    spk_status st = prepare(p, &v, &t, &nt);
    if (st == SPK_OK) {
        writer w = {NULL, "(count)", 0, SPK_OK};
        write_header(&w, p, &v, t, nt);
        *bytes = w.pos + (nt ? align_up(t[nt - 1].offset + t[nt - 1].nbytes) : 0);
    }
    vocab_free(&v);
    free(t);
    return st;
}

spk_status spk_synth_write(const char *path, const spk_synth_params *p)
{
    if (!path || !p)
        return spk_err(SPK_ERR_INVALID_ARG, "spk_synth_write: path or params is NULL");
    vocab v;
    tdesc *t = NULL;
    int nt = 0;
    float *row = NULL;
    void *q = NULL;
    FILE *f = NULL;
    char tmp[4096];
    spk_status st = prepare(p, &v, &t, &nt);
    if (st != SPK_OK)
        goto done;
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp", path) >= sizeof tmp) {
        st = spk_err(SPK_ERR_INVALID_ARG, "spk_synth_write: path is too long (%zu bytes)", strlen(path));
        goto done;
    }
    int max_row = 0;
    for (int i = 0; i < nt; i++)
        max_row = t[i].ne0 > max_row ? t[i].ne0 : max_row;
    row = malloc((size_t)max_row * sizeof *row);
    q = malloc((size_t)max_row * sizeof(float));
    if (!row || !q) {
        st = spk_err(SPK_ERR_NOMEM, "synth: out of memory for a row of %d", max_row);
        goto done;
    }
    f = fopen(tmp, "wb");
    if (!f) {
        st = spk_err(SPK_ERR_IO, "synth: cannot create %s: %s", tmp, strerror(errno));
        goto done;
    }
    setvbuf(f, NULL, _IOFBF, 1 << 20);
    writer w = {f, tmp, 0, SPK_OK};
    write_header(&w, p, &v, t, nt);
    const uint64_t data0 = w.pos;
    for (int i = 0; i < nt && w.st == SPK_OK; i++) {
        if (w.pos - data0 != t[i].offset) {
            w.st = spk_err(SPK_ERR_INTERNAL, "synth: tensor %s at data offset %llu, planned %llu", t[i].name,
                           (unsigned long long)(w.pos - data0), (unsigned long long)t[i].offset);
            break;
        }
        write_tensor(&w, p, &t[i], i, row, q);
    }
    st = w.st;
    int rc = fclose(f);
    f = NULL;
    if (st == SPK_OK && rc != 0)
        st = spk_err(SPK_ERR_IO, "synth: closing %s: %s", tmp, strerror(errno));
    if (st == SPK_OK && rename(tmp, path) != 0)
        st = spk_err(SPK_ERR_IO, "synth: renaming %s to %s: %s", tmp, path, strerror(errno));
    if (st != SPK_OK)
        unlink(tmp);
done:
    if (f) {
        fclose(f);
        unlink(tmp);
    }
    free(row);
    free(q);
    free(t);
    vocab_free(&v);
    return st;
}
