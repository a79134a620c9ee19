/*
 * GGUF v2/v3 reader. Every count, length, type, shape and offset is checked against the bytes
 * actually present before it is used, and every count is bounded by those bytes before anything
 * is allocated for it. Values and tensor data stay in the mapping; only the two tables are copied.
 */
#include "model/gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/error.h"
#include "model/hf.h"

#define GGUF_HEADER_BYTES 24u /* magic, version, n_tensors, n_kv */
#define GGUF_DEFAULT_ALIGNMENT 32u
/* Smallest possible encodings, used to bound claimed counts by the bytes left:
 * a kv is key length + one key byte + value type + one value byte;
 * a tensor info is name length + one name byte + n_dims + one dimension + type + offset. */
#define MIN_KV_BYTES (8u + 1u + 4u + 1u)
#define MIN_TENSOR_INFO_BYTES (8u + 1u + 4u + 8u + 4u + 8u)
#define SHOWN 96 /* longest name quoted in a message */

typedef struct reader {
    const uint8_t *p;
    size_t size;
    size_t pos;
    const char *file; /* for messages */
} reader;

static const uint8_t scalar_size[GGUF_VTYPE_COUNT] = {
    [GGUF_UINT8] = 1, [GGUF_INT8] = 1,    [GGUF_UINT16] = 2,  [GGUF_INT16] = 2,
    [GGUF_UINT32] = 4, [GGUF_INT32] = 4,  [GGUF_FLOAT32] = 4, [GGUF_BOOL] = 1,
    [GGUF_UINT64] = 8, [GGUF_INT64] = 8,  [GGUF_FLOAT64] = 8,
};

const char *spk_gguf_vtype_name(uint32_t t)
{
    static const char *const names[GGUF_VTYPE_COUNT] = {
        "uint8", "int8", "uint16", "int16", "uint32", "int32", "float32",
        "bool",  "string", "array", "uint64", "int64", "float64",
    };
    return t < GGUF_VTYPE_COUNT ? names[t] : "unknown";
}

const char *spk_gguf_type_name(uint32_t t)
{
    /* ggml's type ids, including those this library cannot compute with. */
    static const char *const names[] = {
        [0] = "F32",      [1] = "F16",      [2] = "Q4_0",     [3] = "Q4_1",    [6] = "Q5_0",
        [7] = "Q5_1",     [8] = "Q8_0",     [9] = "Q8_1",     [10] = "Q2_K",   [11] = "Q3_K",
        [12] = "Q4_K",    [13] = "Q5_K",    [14] = "Q6_K",    [15] = "Q8_K",   [16] = "IQ2_XXS",
        [17] = "IQ2_XS",  [18] = "IQ3_XXS", [19] = "IQ1_S",   [20] = "IQ4_NL", [21] = "IQ3_S",
        [22] = "IQ2_S",   [23] = "IQ4_XS",  [24] = "I8",      [25] = "I16",    [26] = "I32",
        [27] = "I64",     [28] = "F64",     [29] = "IQ1_M",   [30] = "BF16",   [34] = "TQ1_0",
        [35] = "TQ2_0",   [39] = "MXFP4",
    };
    if (t < sizeof names / sizeof names[0] && names[t])
        return names[t];
    return "unknown";
}

/* ---- reading primitives ------------------------------------------------------------------ */

static spk_status fail(const reader *r, spk_status st, const char *fmt, ...) SPK_PRINTF(3, 4);
static spk_status fail(const reader *r, spk_status st, const char *fmt, ...)
{
    char msg[900];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return spk_err(st, "%s: %s", r->file, msg);
}

static size_t left(const reader *r) { return r->size - r->pos; }

static uint64_t le(const uint8_t *b, unsigned n)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < n; i++)
        v |= (uint64_t)b[i] << (8 * i);
    return v;
}

/* Take n bytes; `ctx` names the item ("key 'x'"), `field` the part being read. */
static spk_status take(reader *r, size_t n, const uint8_t **out, const char *ctx, const char *field)
{
    if (n > left(r))
        return fail(r, SPK_ERR_FORMAT, "%s: %s at offset %zu needs %zu bytes, only %zu left", ctx,
                    field, r->pos, n, left(r));
    *out = r->p + r->pos;
    r->pos += n;
    return SPK_OK;
}

static spk_status rd_u32(reader *r, uint32_t *v, const char *ctx, const char *field)
{
    const uint8_t *b = NULL;
    spk_status st = take(r, 4, &b, ctx, field);
    if (st == SPK_OK)
        *v = (uint32_t)le(b, 4);
    return st;
}

static spk_status rd_u64(reader *r, uint64_t *v, const char *ctx, const char *field)
{
    const uint8_t *b = NULL;
    spk_status st = take(r, 8, &b, ctx, field);
    if (st == SPK_OK)
        *v = le(b, 8);
    return st;
}

static spk_status rd_str(reader *r, spk_gguf_str *s, const char *ctx, const char *field)
{
    uint64_t len;
    spk_status st = rd_u64(r, &len, ctx, field);
    if (st != SPK_OK)
        return st;
    if (len > left(r))
        return fail(r, SPK_ERR_FORMAT,
                    "%s: %s length %llu at offset %zu past end of file (%zu bytes left)", ctx,
                    field, (unsigned long long)len, r->pos - 8, left(r));
    s->ptr = (const char *)r->p + r->pos;
    s->len = len;
    r->pos += (size_t)len;
    return SPK_OK;
}

static int shown(spk_gguf_str s) { return s.len > SHOWN ? SHOWN : (int)s.len; }

/* ---- metadata ----------------------------------------------------------------------------- */

static void decode_scalar(spk_gguf_vtype t, const uint8_t *b, spk_gguf_kv *kv)
{
    uint64_t u = le(b, scalar_size[t]);
    switch (t) {
    case GGUF_INT8: kv->v.i = (int8_t)(uint8_t)u; break;
    case GGUF_INT16: kv->v.i = (int16_t)(uint16_t)u; break;
    case GGUF_INT32: kv->v.i = (int32_t)(uint32_t)u; break;
    case GGUF_INT64: memcpy(&kv->v.i, &u, 8); break;
    case GGUF_FLOAT32: {
        uint32_t bits = (uint32_t)u;
        float f;
        memcpy(&f, &bits, 4);
        kv->v.f = f;
        break;
    }
    case GGUF_FLOAT64: memcpy(&kv->v.f, &u, 8); break;
    default: kv->v.u = u; break; /* unsigned types and bool */
    }
}

static spk_status read_array(reader *r, spk_gguf_kv *kv, const char *ctx)
{
    uint32_t et;
    uint64_t count;
    spk_status st = rd_u32(r, &et, ctx, "array element type");
    if (st != SPK_OK)
        return st;
    if (et == GGUF_ARRAY)
        return fail(r, SPK_ERR_FORMAT, "%s: nested array (array of arrays) is not allowed", ctx);
    if (et >= GGUF_VTYPE_COUNT)
        return fail(r, SPK_ERR_FORMAT, "%s: bad array element value type %u (valid: 0..%d)", ctx,
                    et, GGUF_VTYPE_COUNT - 1);
    if ((st = rd_u64(r, &count, ctx, "array count")) != SPK_OK)
        return st;
    size_t start = r->pos;
    if (et == GGUF_STRING) {
        if (count > left(r) / 8)
            return fail(r, SPK_ERR_FORMAT,
                        "%s: array count %llu strings needs at least %llu x 8 bytes, only %zu left",
                        ctx, (unsigned long long)count, (unsigned long long)count, left(r));
        for (uint64_t i = 0; i < count; i++) {
            if (left(r) < 8)
                return fail(r, SPK_ERR_FORMAT,
                            "%s: element %llu: string length at offset %zu needs 8 bytes, only %zu left",
                            ctx, (unsigned long long)i, r->pos, left(r));
            uint64_t len = le(r->p + r->pos, 8);
            r->pos += 8;
            if (len > left(r))
                return fail(r, SPK_ERR_FORMAT,
                            "%s: element %llu: string length %llu at offset %zu past end of file (%zu bytes left)",
                            ctx, (unsigned long long)i, (unsigned long long)len, r->pos - 8, left(r));
            r->pos += (size_t)len;
        }
    } else {
        size_t esz = scalar_size[et];
        if (count > left(r) / esz)
            return fail(r, SPK_ERR_FORMAT,
                        "%s: array count %llu of %s (%zu bytes each) past end of file (%zu bytes left)",
                        ctx, (unsigned long long)count, spk_gguf_vtype_name(et), esz, left(r));
        const uint8_t *b = r->p + r->pos;
        if (et == GGUF_BOOL)
            for (uint64_t i = 0; i < count; i++)
                if (b[i] > 1)
                    return fail(r, SPK_ERR_FORMAT, "%s: bool element %llu has value %u (not 0 or 1)",
                                ctx, (unsigned long long)i, b[i]);
        r->pos += (size_t)count * esz;
    }
    kv->v.arr.type = (spk_gguf_vtype)et;
    kv->v.arr.count = count;
    kv->v.arr.data = r->p + start;
    kv->v.arr.nbytes = r->pos - start;
    return SPK_OK;
}

static spk_status read_kv(reader *r, uint64_t idx, spk_gguf_kv *kv)
{
    char ctx[SHOWN + 64];
    snprintf(ctx, sizeof ctx, "kv %llu", (unsigned long long)idx);
    spk_status st = rd_str(r, &kv->key, ctx, "key");
    if (st != SPK_OK)
        return st;
    if (kv->key.len == 0)
        return fail(r, SPK_ERR_FORMAT, "%s: empty key", ctx);
    snprintf(ctx, sizeof ctx, "key '%.*s'", shown(kv->key), kv->key.ptr);
    uint32_t t;
    if ((st = rd_u32(r, &t, ctx, "value type")) != SPK_OK)
        return st;
    if (t >= GGUF_VTYPE_COUNT)
        return fail(r, SPK_ERR_FORMAT, "%s: bad value type %u (valid: 0..%d)", ctx, t,
                    GGUF_VTYPE_COUNT - 1);
    kv->type = (spk_gguf_vtype)t;
    if (t == GGUF_STRING)
        return rd_str(r, &kv->v.s, ctx, "string");
    if (t == GGUF_ARRAY)
        return read_array(r, kv, ctx);
    const uint8_t *b = NULL;
    if ((st = take(r, scalar_size[t], &b, ctx, spk_gguf_vtype_name(t))) != SPK_OK)
        return st;
    if (t == GGUF_BOOL && b[0] > 1)
        return fail(r, SPK_ERR_FORMAT, "%s: bool value %u is not 0 or 1", ctx, b[0]);
    decode_scalar(kv->type, b, kv);
    return SPK_OK;
}

static int str_cmp(spk_gguf_str a, spk_gguf_str b)
{
    size_t n = a.len < b.len ? (size_t)a.len : (size_t)b.len;
    int c = n ? memcmp(a.ptr, b.ptr, n) : 0;
    if (c)
        return c;
    return a.len < b.len ? -1 : a.len > b.len;
}

/* Sort keys for the index copies; ties fall back to file order, so messages name the first
 * occurrence first whatever qsort does. */
static int kv_ptr_cmp(const void *a, const void *b)
{
    const spk_gguf_kv *x = *(const spk_gguf_kv *const *)a, *y = *(const spk_gguf_kv *const *)b;
    int c = str_cmp(x->key, y->key);
    return c ? c : (x > y) - (x < y);
}

static int tensor_name_cmp(const void *a, const void *b)
{
    const spk_gguf_tensor *x = *(const spk_gguf_tensor *const *)a, *y = *(const spk_gguf_tensor *const *)b;
    int c = str_cmp(x->name, y->name);
    return c ? c : (x > y) - (x < y);
}

static int tensor_off_cmp(const void *a, const void *b)
{
    const spk_gguf_tensor *x = *(const spk_gguf_tensor *const *)a, *y = *(const spk_gguf_tensor *const *)b;
    if (x->offset != y->offset)
        return x->offset < y->offset ? -1 : 1;
    return (x > y) - (x < y);
}

static spk_status check_duplicate_keys(const reader *r, const spk_gguf_file *f)
{
    if (f->n_kv < 2)
        return SPK_OK;
    const spk_gguf_kv **idx = malloc((size_t)f->n_kv * sizeof *idx);
    if (!idx)
        return fail(r, SPK_ERR_NOMEM, "no memory to sort %llu keys", (unsigned long long)f->n_kv);
    for (uint64_t i = 0; i < f->n_kv; i++)
        idx[i] = &f->kv[i];
    qsort(idx, (size_t)f->n_kv, sizeof *idx, kv_ptr_cmp);
    spk_status st = SPK_OK;
    for (uint64_t i = 1; i < f->n_kv && st == SPK_OK; i++)
        if (str_cmp(idx[i - 1]->key, idx[i]->key) == 0)
            st = fail(r, SPK_ERR_FORMAT, "duplicate key '%.*s' (kv %llu and kv %llu)",
                      shown(idx[i]->key), idx[i]->key.ptr,
                      (unsigned long long)(idx[i - 1] - f->kv), (unsigned long long)(idx[i] - f->kv));
    free(idx);
    return st;
}

static spk_status read_alignment(const reader *r, spk_gguf_file *f)
{
    f->alignment = GGUF_DEFAULT_ALIGNMENT;
    const spk_gguf_kv *kv = spk_gguf_find(f, "general.alignment");
    if (!kv)
        return SPK_OK;
    if (kv->type != GGUF_UINT32)
        return fail(r, SPK_ERR_FORMAT, "key 'general.alignment' has type %s, expected uint32",
                    spk_gguf_vtype_name(kv->type));
    if (kv->v.u == 0 || (kv->v.u & (kv->v.u - 1)) != 0)
        return fail(r, SPK_ERR_FORMAT, "key 'general.alignment': %llu is not a nonzero power of two",
                    (unsigned long long)kv->v.u);
    f->alignment = kv->v.u;
    return SPK_OK;
}

/* ---- tensor table ------------------------------------------------------------------------- */

static spk_status read_tensor_info(reader *r, uint64_t idx, spk_gguf_tensor *t)
{
    char ctx[SHOWN + 64];
    snprintf(ctx, sizeof ctx, "tensor %llu", (unsigned long long)idx);
    spk_status st = rd_str(r, &t->name, ctx, "name");
    if (st != SPK_OK)
        return st;
    if (t->name.len == 0)
        return fail(r, SPK_ERR_FORMAT, "%s: empty name", ctx);
    snprintf(ctx, sizeof ctx, "tensor '%.*s'", shown(t->name), t->name.ptr);
    if ((st = rd_u32(r, &t->n_dims, ctx, "n_dims")) != SPK_OK)
        return st;
    if (t->n_dims < 1 || t->n_dims > GGUF_MAX_DIMS)
        return fail(r, SPK_ERR_FORMAT, "%s: n_dims %u out of range 1..%d", ctx, t->n_dims,
                    GGUF_MAX_DIMS);
    uint64_t n = 1;
    for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++) {
        t->ne[d] = 1;
        if (d >= t->n_dims)
            continue;
        if ((st = rd_u64(r, &t->ne[d], ctx, "dimension")) != SPK_OK)
            return st;
        if (t->ne[d] == 0)
            return fail(r, SPK_ERR_FORMAT, "%s: dimension %u is zero", ctx, d);
        if (t->ne[d] > (uint64_t)INT64_MAX)
            return fail(r, SPK_ERR_FORMAT, "%s: dimension %u is %llu (more than 2^63-1)", ctx, d,
                        (unsigned long long)t->ne[d]);
        if (n > UINT64_MAX / t->ne[d])
            return fail(r, SPK_ERR_FORMAT,
                        "%s: element count overflows 64 bits at dimension %u (%llu x %llu)", ctx, d,
                        (unsigned long long)n, (unsigned long long)t->ne[d]);
        n *= t->ne[d];
    }
    t->n_elements = n;
    uint32_t type;
    if ((st = rd_u32(r, &type, ctx, "type")) != SPK_OK)
        return st;
    const spk_dtype_info *info = spk_dtype_get(type);
    if (!info)
        return fail(r, SPK_ERR_UNSUPPORTED, "%s: tensor type %u (%s) is not supported", ctx, type,
                    spk_gguf_type_name(type));
    t->type = (spk_dtype)type;
    if (t->ne[0] % info->block != 0)
        return fail(r, SPK_ERR_FORMAT,
                    "%s: ne[0] = %llu is not a multiple of the %s block size %u", ctx,
                    (unsigned long long)t->ne[0], info->name, info->block);
    uint64_t blocks = n / info->block;
    if (blocks > UINT64_MAX / info->type_size)
        return fail(r, SPK_ERR_FORMAT, "%s: size of %llu %s blocks overflows 64 bits", ctx,
                    (unsigned long long)blocks, info->name);
    t->nbytes = blocks * info->type_size;
    return rd_u64(r, &t->offset, ctx, "offset");
}

static spk_status check_tensors(const reader *r, spk_gguf_file *f)
{
    uint64_t data_size = f->data_offset <= f->size ? f->size - f->data_offset : 0;
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        spk_gguf_tensor *t = &f->tensors[i];
        if (t->offset % f->alignment != 0)
            return fail(r, SPK_ERR_FORMAT,
                        "tensor '%.*s': offset %llu is not a multiple of the alignment %llu",
                        shown(t->name), t->name.ptr, (unsigned long long)t->offset,
                        (unsigned long long)f->alignment);
        if (t->offset > data_size || t->nbytes > data_size - t->offset) {
            const spk_dtype_info *ti = spk_dtype_get((uint32_t)t->type);
            return fail(r, SPK_ERR_FORMAT,
                        "tensor '%.*s': offset %llu + size %llu past end of data (%llu bytes): "
                        "%llu %s values need %llu blocks of %u bytes",
                        shown(t->name), t->name.ptr, (unsigned long long)t->offset,
                        (unsigned long long)t->nbytes, (unsigned long long)data_size,
                        (unsigned long long)t->n_elements, ti->name,
                        (unsigned long long)(t->n_elements / ti->block), ti->type_size);
        }
        t->data = f->base + f->data_offset + t->offset;
    }
    if (f->n_tensors < 2)
        return SPK_OK;
    const spk_gguf_tensor **idx = malloc((size_t)f->n_tensors * sizeof *idx);
    if (!idx)
        return fail(r, SPK_ERR_NOMEM, "no memory to sort %llu tensors",
                    (unsigned long long)f->n_tensors);
    for (uint64_t i = 0; i < f->n_tensors; i++)
        idx[i] = &f->tensors[i];
    spk_status st = SPK_OK;
    qsort(idx, (size_t)f->n_tensors, sizeof *idx, tensor_name_cmp);
    for (uint64_t i = 1; i < f->n_tensors && st == SPK_OK; i++)
        if (str_cmp(idx[i - 1]->name, idx[i]->name) == 0)
            st = fail(r, SPK_ERR_FORMAT, "duplicate tensor '%.*s' (tensor %llu and tensor %llu)",
                      shown(idx[i]->name), idx[i]->name.ptr,
                      (unsigned long long)(idx[i - 1] - f->tensors),
                      (unsigned long long)(idx[i] - f->tensors));
    if (st == SPK_OK) {
        qsort(idx, (size_t)f->n_tensors, sizeof *idx, tensor_off_cmp);
        for (uint64_t i = 1; i < f->n_tensors && st == SPK_OK; i++) {
            const spk_gguf_tensor *a = idx[i - 1], *b = idx[i];
            if (a->offset + a->nbytes > b->offset) /* both ends were checked: no overflow */
                st = fail(r, SPK_ERR_FORMAT,
                          "tensor '%.*s' (offset %llu, size %llu) overlaps tensor '%.*s' (offset %llu)",
                          shown(a->name), a->name.ptr, (unsigned long long)a->offset,
                          (unsigned long long)a->nbytes, shown(b->name), b->name.ptr,
                          (unsigned long long)b->offset);
        }
    }
    free(idx);
    return st;
}

/* ---- the whole file ----------------------------------------------------------------------- */

static spk_status parse(spk_gguf_file *f)
{
    reader rr = {f->base, f->size, 0, f->path}, *r = &rr;
    if (f->size == 0)
        return fail(r, SPK_ERR_FORMAT, "empty file (a GGUF header is %u bytes)", GGUF_HEADER_BYTES);
    if (f->size < 4 || memcmp(f->base, "GGUF", 4) != 0) {
        uint8_t m[4] = {0};
        memcpy(m, f->base, f->size < 4 ? f->size : 4);
        if (f->size < 4)
            return fail(r, SPK_ERR_FORMAT, "file is %zu bytes, shorter than the %u-byte GGUF header",
                        f->size, GGUF_HEADER_BYTES);
        return fail(r, SPK_ERR_FORMAT,
                    "bad magic %02x %02x %02x %02x (expected 'GGUF': 47 47 55 46)", m[0], m[1], m[2],
                    m[3]);
    }
    if (f->size < 8)
        return fail(r, SPK_ERR_FORMAT, "file is %zu bytes, shorter than the %u-byte GGUF header",
                    f->size, GGUF_HEADER_BYTES);
    uint32_t version = (uint32_t)le(f->base + 4, 4);
    if (version != 0 && (version & 0xffffu) == 0)
        return fail(r, SPK_ERR_UNSUPPORTED,
                    "big-endian GGUF (version word 0x%08x) is not supported", version);
    if (version != 2 && version != 3)
        return fail(r, SPK_ERR_UNSUPPORTED, "GGUF version %u is not supported (only 2 and 3)",
                    version);
    if (f->size < GGUF_HEADER_BYTES)
        return fail(r, SPK_ERR_FORMAT, "file is %zu bytes, shorter than the %u-byte GGUF header",
                    f->size, GGUF_HEADER_BYTES);
    f->version = version;
    f->n_tensors = le(f->base + 8, 8);
    f->n_kv = le(f->base + 16, 8);
    r->pos = GGUF_HEADER_BYTES;

    /* Bound both counts by the bytes present before allocating anything for them. */
    size_t rest = left(r);
    if (f->n_kv > rest / MIN_KV_BYTES)
        return fail(r, SPK_ERR_FORMAT,
                    "kv count %llu needs at least %llu x %u bytes, file has only %zu after the header",
                    (unsigned long long)f->n_kv, (unsigned long long)f->n_kv, MIN_KV_BYTES, rest);
    rest -= (size_t)f->n_kv * MIN_KV_BYTES;
    if (f->n_tensors > rest / MIN_TENSOR_INFO_BYTES)
        return fail(r, SPK_ERR_FORMAT,
                    "tensor count %llu needs at least %llu x %u bytes, file has only %zu left for them",
                    (unsigned long long)f->n_tensors, (unsigned long long)f->n_tensors,
                    MIN_TENSOR_INFO_BYTES, rest);

    spk_status st;
    if (f->n_kv) {
        f->kv = calloc((size_t)f->n_kv, sizeof *f->kv);
        if (!f->kv)
            return fail(r, SPK_ERR_NOMEM, "no memory for %llu kvs", (unsigned long long)f->n_kv);
    }
    for (uint64_t i = 0; i < f->n_kv; i++)
        if ((st = read_kv(r, i, &f->kv[i])) != SPK_OK)
            return st;
    if ((st = check_duplicate_keys(r, f)) != SPK_OK)
        return st;
    if ((st = read_alignment(r, f)) != SPK_OK)
        return st;

    if (f->n_tensors > left(r) / MIN_TENSOR_INFO_BYTES)
        return fail(r, SPK_ERR_FORMAT,
                    "tensor count %llu needs at least %llu x %u bytes, only %zu left after the metadata",
                    (unsigned long long)f->n_tensors, (unsigned long long)f->n_tensors,
                    MIN_TENSOR_INFO_BYTES, left(r));
    if (f->n_tensors) {
        f->tensors = calloc((size_t)f->n_tensors, sizeof *f->tensors);
        if (!f->tensors)
            return fail(r, SPK_ERR_NOMEM, "no memory for %llu tensors",
                        (unsigned long long)f->n_tensors);
    }
    for (uint64_t i = 0; i < f->n_tensors; i++)
        if ((st = read_tensor_info(r, i, &f->tensors[i])) != SPK_OK)
            return st;

    /* pos <= size < 2^63 and alignment < 2^32: no overflow. */
    f->data_offset = (r->pos + f->alignment - 1) / f->alignment * f->alignment;
    if (f->n_tensors && f->data_offset > f->size)
        return fail(r, SPK_ERR_FORMAT,
                    "data section starts at %llu, past end of file (%zu bytes) with %llu tensors",
                    (unsigned long long)f->data_offset, f->size, (unsigned long long)f->n_tensors);
    return check_tensors(r, f);
}

static spk_status finish_open(spk_gguf_file *f, spk_gguf_file **out)
{
    spk_status st = parse(f);
    if (st != SPK_OK) {
        spk_gguf_close(f);
        return st;
    }
    *out = f;
    return SPK_OK;
}

spk_status spk_gguf_open_memory(const void *buf, size_t len, spk_gguf_file **out)
{
    if (!out || (!buf && len))
        return spk_err(SPK_ERR_INVALID_ARG, "spk_gguf_open_memory: NULL %s", out ? "buffer" : "out");
    *out = NULL;
    spk_gguf_file *f = calloc(1, sizeof *f);
    if (!f)
        return spk_err(SPK_ERR_NOMEM, "spk_gguf_open_memory: no memory");
    f->base = buf;
    f->size = len;
    snprintf(f->path, sizeof f->path, "<memory>");
    return finish_open(f, out);
}

spk_status spk_gguf_open(const char *path, spk_gguf_file **out)
{
    if (!path || !out)
        return spk_err(SPK_ERR_INVALID_ARG, "spk_gguf_open: NULL %s", path ? "out" : "path");
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return spk_err(SPK_ERR_IO, "%s: open failed: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return spk_err(SPK_ERR_IO, "%s: fstat failed: %s", path, strerror(e));
    }
    if (S_ISDIR(sb.st_mode)) {
        close(fd);
        return spk_hf_open(path, out);
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return spk_err(SPK_ERR_IO, "%s: not a regular file", path);
    }
    if (sb.st_size == 0) {
        close(fd);
        return spk_err(SPK_ERR_FORMAT, "%s: empty file (a GGUF header is %u bytes)", path,
                       GGUF_HEADER_BYTES);
    }
    if ((uint64_t)sb.st_size > (uint64_t)SIZE_MAX) {
        close(fd);
        return spk_err(SPK_ERR_IO, "%s: %lld bytes do not fit in the address space", path,
                       (long long)sb.st_size);
    }
    size_t size = (size_t)sb.st_size;
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (map == MAP_FAILED)
        return spk_err(SPK_ERR_IO, "%s: mmap of %zu bytes failed: %s", path, size, strerror(e));
    /* No readahead: a rank reads only its own slices of the weights (it asks for them with
     * MADV_WILLNEED once it knows them, see spk_llama_shard), never its neighbours' bytes. */
    madvise(map, size, MADV_RANDOM);
    spk_gguf_file *f = calloc(1, sizeof *f);
    if (!f) {
        munmap(map, size);
        return spk_err(SPK_ERR_NOMEM, "%s: no memory", path);
    }
    f->base = map;
    f->size = size;
    f->owns_map = 1;
    snprintf(f->path, sizeof f->path, "%s", path);
    return finish_open(f, out);
}

void spk_gguf_close(spk_gguf_file *f)
{
    if (!f)
        return;
    if (f->owns_map && f->base)
        munmap((void *)f->base, f->size);
    if (f->hf)
        spk_hf_free(f->hf);
    free(f->kv);
    free(f->tensors);
    free(f);
}

/* ---- lookups ------------------------------------------------------------------------------ */

bool spk_gguf_str_eq(spk_gguf_str s, const char *c)
{
    size_t n = strlen(c);
    return s.len == n && (n == 0 || memcmp(s.ptr, c, n) == 0);
}

const spk_gguf_kv *spk_gguf_find(const spk_gguf_file *f, const char *key)
{
    if (!f || !key)
        return NULL;
    for (uint64_t i = 0; i < f->n_kv; i++)
        if (spk_gguf_str_eq(f->kv[i].key, key))
            return &f->kv[i];
    return NULL;
}

const spk_gguf_tensor *spk_gguf_find_tensor(const spk_gguf_file *f, const char *name)
{
    if (!f || !name)
        return NULL;
    for (uint64_t i = 0; i < f->n_tensors; i++)
        if (spk_gguf_str_eq(f->tensors[i].name, name))
            return &f->tensors[i];
    return NULL;
}

static spk_status lookup(const spk_gguf_file *f, const char *key, const spk_gguf_kv **kv)
{
    if (!f || !key)
        return spk_err(SPK_ERR_INVALID_ARG, "gguf lookup: NULL %s", f ? "key" : "file");
    *kv = spk_gguf_find(f, key);
    if (!*kv)
        return spk_err(SPK_ERR_NOT_FOUND, "%s: key '%s' not found", f->path, key);
    return SPK_OK;
}

static bool is_unsigned(spk_gguf_vtype t)
{
    return t == GGUF_UINT8 || t == GGUF_UINT16 || t == GGUF_UINT32 || t == GGUF_UINT64;
}

static bool is_signed(spk_gguf_vtype t)
{
    return t == GGUF_INT8 || t == GGUF_INT16 || t == GGUF_INT32 || t == GGUF_INT64;
}

static spk_status wrong_type(const spk_gguf_file *f, const char *key, spk_gguf_vtype got, const char *want)
{
    return spk_err(SPK_ERR_FORMAT, "%s: key '%s' has type %s, expected %s", f->path, key,
                   spk_gguf_vtype_name(got), want);
}

spk_status spk_gguf_get_u32(const spk_gguf_file *f, const char *key, uint32_t *out)
{
    const spk_gguf_kv *kv;
    spk_status st = lookup(f, key, &kv);
    if (st != SPK_OK)
        return st;
    if (is_unsigned(kv->type)) {
        if (kv->v.u > UINT32_MAX)
            return spk_err(SPK_ERR_FORMAT, "%s: key '%s': value %llu does not fit in uint32",
                           f->path, key, (unsigned long long)kv->v.u);
        *out = (uint32_t)kv->v.u;
        return SPK_OK;
    }
    if (is_signed(kv->type)) {
        if (kv->v.i < 0 || kv->v.i > (int64_t)UINT32_MAX)
            return spk_err(SPK_ERR_FORMAT, "%s: key '%s': value %lld does not fit in uint32",
                           f->path, key, (long long)kv->v.i);
        *out = (uint32_t)kv->v.i;
        return SPK_OK;
    }
    return wrong_type(f, key, kv->type, "an integer");
}

spk_status spk_gguf_get_i64(const spk_gguf_file *f, const char *key, int64_t *out)
{
    const spk_gguf_kv *kv;
    spk_status st = lookup(f, key, &kv);
    if (st != SPK_OK)
        return st;
    if (is_unsigned(kv->type)) {
        if (kv->v.u > (uint64_t)INT64_MAX)
            return spk_err(SPK_ERR_FORMAT, "%s: key '%s': value %llu does not fit in int64",
                           f->path, key, (unsigned long long)kv->v.u);
        *out = (int64_t)kv->v.u;
        return SPK_OK;
    }
    if (is_signed(kv->type)) {
        *out = kv->v.i;
        return SPK_OK;
    }
    return wrong_type(f, key, kv->type, "an integer");
}

spk_status spk_gguf_get_f32(const spk_gguf_file *f, const char *key, float *out)
{
    const spk_gguf_kv *kv;
    spk_status st = lookup(f, key, &kv);
    if (st != SPK_OK)
        return st;
    double d;
    if (kv->type == GGUF_FLOAT32 || kv->type == GGUF_FLOAT64)
        d = kv->v.f;
    else if (is_unsigned(kv->type))
        d = (double)kv->v.u;
    else if (is_signed(kv->type))
        d = (double)kv->v.i;
    else
        return wrong_type(f, key, kv->type, "a number");
    if (isfinite(d) && (d > FLT_MAX || d < -FLT_MAX))
        return spk_err(SPK_ERR_FORMAT, "%s: key '%s': value %g does not fit in float32", f->path,
                       key, d);
    *out = (float)d;
    return SPK_OK;
}

spk_status spk_gguf_get_bool(const spk_gguf_file *f, const char *key, bool *out)
{
    const spk_gguf_kv *kv;
    spk_status st = lookup(f, key, &kv);
    if (st != SPK_OK)
        return st;
    if (kv->type != GGUF_BOOL)
        return wrong_type(f, key, kv->type, "bool");
    *out = kv->v.u != 0;
    return SPK_OK;
}

spk_status spk_gguf_get_str(const spk_gguf_file *f, const char *key, spk_gguf_str *out)
{
    const spk_gguf_kv *kv;
    spk_status st = lookup(f, key, &kv);
    if (st != SPK_OK)
        return st;
    if (kv->type != GGUF_STRING)
        return wrong_type(f, key, kv->type, "string");
    *out = kv->v.s;
    return SPK_OK;
}

spk_status spk_gguf_get_arr(const spk_gguf_file *f, const char *key, spk_gguf_vtype elem, const spk_gguf_kv **out)
{
    const spk_gguf_kv *kv;
    spk_status st = lookup(f, key, &kv);
    if (st != SPK_OK)
        return st;
    if (kv->type != GGUF_ARRAY)
        return wrong_type(f, key, kv->type, "array");
    if (elem != GGUF_VTYPE_COUNT && kv->v.arr.type != elem)
        return spk_err(SPK_ERR_FORMAT, "%s: key '%s' is an array of %s, expected an array of %s",
                       f->path, key, spk_gguf_vtype_name(kv->v.arr.type), spk_gguf_vtype_name(elem));
    *out = kv;
    return SPK_OK;
}

spk_gguf_str spk_gguf_arr_str_next(const spk_gguf_kv *arr, uint64_t *pos)
{
    spk_gguf_str s = {NULL, 0};
    if (!arr || !pos || arr->type != GGUF_ARRAY || arr->v.arr.type != GGUF_STRING)
        return s;
    uint64_t n = arr->v.arr.nbytes;
    if (*pos > n || n - *pos < 8)
        return s;
    uint64_t len = le(arr->v.arr.data + *pos, 8);
    if (len > n - *pos - 8)
        return s;
    s.ptr = (const char *)arr->v.arr.data + *pos + 8;
    s.len = len;
    *pos += 8 + len;
    return s;
}

bool spk_gguf_arr_int(const spk_gguf_kv *arr, uint64_t i, int64_t *out)
{
    if (!arr || !out || arr->type != GGUF_ARRAY || i >= arr->v.arr.count)
        return false;
    spk_gguf_vtype t = arr->v.arr.type;
    if (!is_signed(t) && !is_unsigned(t) && t != GGUF_BOOL)
        return false;
    spk_gguf_kv one;
    decode_scalar(t, arr->v.arr.data + i * scalar_size[t], &one);
    if (is_signed(t)) {
        *out = one.v.i;
        return true;
    }
    if (one.v.u > (uint64_t)INT64_MAX)
        return false;
    *out = (int64_t)one.v.u;
    return true;
}

bool spk_gguf_arr_float(const spk_gguf_kv *arr, uint64_t i, double *out)
{
    if (!arr || !out || arr->type != GGUF_ARRAY || i >= arr->v.arr.count)
        return false;
    spk_gguf_vtype t = arr->v.arr.type;
    if (t == GGUF_FLOAT32 || t == GGUF_FLOAT64) {
        spk_gguf_kv one;
        decode_scalar(t, arr->v.arr.data + i * scalar_size[t], &one);
        *out = one.v.f;
        return true;
    }
    int64_t v;
    if (!spk_gguf_arr_int(arr, i, &v))
        return false;
    *out = (double)v;
    return true;
}
