/*
 * GGUF reader: valid files built in memory by a small writer below (every value type, every
 * supported tensor type) must read back field by field with data pointers on the right bytes,
 * both from memory and through spk_gguf_open; a corpus of malformed files must each give a clean
 * error naming the thing (and must not read out of bounds or allocate from claimed counts).
 */
#include <check.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/error.h"
#include "model/gguf.h"
#include "testutil.h"

/* ---- a tiny GGUF writer ---------------------------------------------------------------- */

typedef struct wbuf {
    uint8_t *p;
    size_t n, cap;
} wbuf;

static void w_raw(wbuf *w, const void *d, size_t n)
{
    if (w->n + n > w->cap) {
        size_t cap = w->cap ? w->cap : 256;
        while (cap < w->n + n)
            cap *= 2;
        w->p = realloc(w->p, cap);
        ck_assert_ptr_nonnull(w->p);
        w->cap = cap;
    }
    if (n)
        memcpy(w->p + w->n, d, n);
    w->n += n;
}

static void w_le(wbuf *w, uint64_t v, unsigned n)
{
    uint8_t b[8];
    for (unsigned i = 0; i < n; i++)
        b[i] = (uint8_t)(v >> (8 * i));
    w_raw(w, b, n);
}

static void w_zeros(wbuf *w, size_t n)
{
    for (size_t i = 0; i < n; i++)
        w_le(w, 0, 1);
}

static void w_patch(wbuf *w, size_t at, uint64_t v, unsigned n)
{
    ck_assert(at + n <= w->n);
    for (unsigned i = 0; i < n; i++)
        w->p[at + i] = (uint8_t)(v >> (8 * i));
}

static void w_strn(wbuf *w, const char *s, size_t n)
{
    w_le(w, n, 8);
    w_raw(w, s, n);
}

static void w_str(wbuf *w, const char *s) { w_strn(w, s, strlen(s)); }

static void w_key(wbuf *w, const char *k, uint32_t type)
{
    w_str(w, k);
    w_le(w, type, 4);
}

static void w_header(wbuf *w, uint32_t version, uint64_t n_tensors, uint64_t n_kv)
{
    w_raw(w, "GGUF", 4);
    w_le(w, version, 4);
    w_le(w, n_tensors, 8);
    w_le(w, n_kv, 8);
}

static void w_free(wbuf *w)
{
    free(w->p);
    memset(w, 0, sizeof *w);
}

/* Layout facts written here independently of lib/common/dtype.c. */
static uint64_t type_nbytes(uint32_t type, const uint64_t *ne, uint32_t n_dims)
{
    uint64_t n = 1;
    for (uint32_t d = 0; d < n_dims && d < 5; d++)
        n *= ne[d];
    uint64_t block, size;
    switch (type) {
    case 0: block = 1, size = 4; break;    /* F32 */
    case 1: block = 1, size = 2; break;    /* F16 */
    case 30: block = 1, size = 2; break;   /* BF16 */
    case 8: block = 32, size = 34; break;  /* Q8_0 */
    case 2: block = 32, size = 18; break;  /* Q4_0 */
    case 3: block = 32, size = 20; break;  /* Q4_1 */
    case 12: block = 256, size = 144; break; /* Q4_K */
    case 14: block = 256, size = 210; break; /* Q6_K */
    case 6: block = 32, size = 22; break;  /* Q5_0 */
    case 7: block = 32, size = 24; break;  /* Q5_1 */
    case 10: block = 256, size = 84; break;  /* Q2_K */
    case 11: block = 256, size = 110; break; /* Q3_K */
    case 13: block = 256, size = 176; break; /* Q5_K */
    case 39: block = 32, size = 17; break;   /* MXFP4 */
    default: return 32;
    }
    uint64_t b = n / block * size;
    return b > 65536 || n == 0 ? 32 : b; /* hostile shapes: keep the file small */
}

typedef struct tspec {
    const char *name;
    uint32_t n_dims; /* up to 5 dims are written (5 only to test rejection) */
    uint64_t ne[5];
    uint32_t type;
    int64_t offset; /* -1: next free aligned slot */
} tspec;

#define MAXT 16
typedef struct built {
    wbuf w;
    size_t data_offset;
    uint64_t off[MAXT], nbytes[MAXT];
} built;

static uint8_t pattern(size_t tensor, uint64_t k) { return (uint8_t)(tensor * 37 + k * 13 + 5); }

typedef unsigned (*kv_fn)(wbuf *w, const void *arg);

/* Header, kvs from `kvs`, tensor infos, padding to `align`, then the data (each tensor filled
 * with its pattern; the file ends right after the last tensor's bytes). */
static void build(built *b, uint32_t version, kv_fn kvs, const void *arg, uint64_t align,
                  const tspec *ts, size_t nt)
{
    ck_assert(nt <= MAXT);
    memset(b, 0, sizeof *b);
    wbuf *w = &b->w;
    w_header(w, version, nt, 0);
    unsigned nkv = kvs ? kvs(w, arg) : 0;
    w_patch(w, 16, nkv, 8);
    uint64_t cur = 0, end = 0;
    for (size_t i = 0; i < nt; i++) {
        const tspec *t = &ts[i];
        w_str(w, t->name);
        w_le(w, t->n_dims, 4);
        for (uint32_t d = 0; d < t->n_dims && d < 5; d++)
            w_le(w, t->ne[d], 8);
        w_le(w, t->type, 4);
        b->nbytes[i] = type_nbytes(t->type, t->ne, t->n_dims);
        b->off[i] = t->offset >= 0 ? (uint64_t)t->offset : (cur + align - 1) / align * align;
        cur = b->off[i] + b->nbytes[i];
        if (cur > end)
            end = cur;
        w_le(w, b->off[i], 8);
    }
    if (nt) {
        w_zeros(w, (align - w->n % align) % align);
        b->data_offset = w->n;
        w_zeros(w, end);
        for (size_t i = 0; i < nt; i++)
            for (uint64_t k = 0; k < b->nbytes[i]; k++)
                w->p[b->data_offset + b->off[i] + k] = pattern(i, k);
    }
}

/* Metadata of every value type (and arrays of every element type). */
static unsigned kvs_all(wbuf *w, const void *arg)
{
    const uint32_t *align = arg; /* NULL: no general.alignment */
    unsigned n = 0;
    w_key(w, "general.architecture", GGUF_STRING), w_str(w, "llama"), n++;
    w_key(w, "t.u8", GGUF_UINT8), w_le(w, 200, 1), n++;
    w_key(w, "t.i8", GGUF_INT8), w_le(w, (uint8_t)-100, 1), n++;
    w_key(w, "t.u16", GGUF_UINT16), w_le(w, 60000, 2), n++;
    w_key(w, "t.i16", GGUF_INT16), w_le(w, (uint16_t)-30000, 2), n++;
    w_key(w, "t.u32", GGUF_UINT32), w_le(w, 4000000000u, 4), n++;
    w_key(w, "t.i32", GGUF_INT32), w_le(w, (uint32_t)-2000000000, 4), n++;
    w_key(w, "t.f32", GGUF_FLOAT32), w_le(w, 0x3fc00000u, 4), n++; /* 1.5f */
    w_key(w, "t.bool", GGUF_BOOL), w_le(w, 1, 1), n++;
    w_key(w, "t.str", GGUF_STRING), w_str(w, "hello gguf"), n++;
    w_key(w, "t.u64", GGUF_UINT64), w_le(w, 0x8000000000000005ull, 8), n++;
    w_key(w, "t.i64", GGUF_INT64), w_le(w, (uint64_t)-(1ll << 40), 8), n++;
    w_key(w, "t.f64", GGUF_FLOAT64), w_le(w, 0xc00a000000000000ull, 8), n++; /* -3.25 */
    w_key(w, "t.empty", GGUF_STRING), w_str(w, ""), n++;
    w_key(w, "t.bool0", GGUF_BOOL), w_le(w, 0, 1), n++;
    w_key(w, "t.neg", GGUF_INT32), w_le(w, (uint32_t)-1, 4), n++;
    w_key(w, "t.small", GGUF_INT16), w_le(w, 77, 2), n++;
    /* arrays: element type, count, elements */
    w_key(w, "t.arr.u8", GGUF_ARRAY), w_le(w, GGUF_UINT8, 4), w_le(w, 3, 8);
    w_le(w, 1, 1), w_le(w, 2, 1), w_le(w, 255, 1), n++;
    w_key(w, "t.arr.i8", GGUF_ARRAY), w_le(w, GGUF_INT8, 4), w_le(w, 2, 8);
    w_le(w, (uint8_t)-1, 1), w_le(w, 127, 1), n++;
    w_key(w, "t.arr.u16", GGUF_ARRAY), w_le(w, GGUF_UINT16, 4), w_le(w, 2, 8);
    w_le(w, 65535, 2), w_le(w, 7, 2), n++;
    w_key(w, "t.arr.i16", GGUF_ARRAY), w_le(w, GGUF_INT16, 4), w_le(w, 1, 8);
    w_le(w, (uint16_t)-300, 2), n++;
    w_key(w, "t.arr.u32", GGUF_ARRAY), w_le(w, GGUF_UINT32, 4), w_le(w, 3, 8);
    w_le(w, 1, 4), w_le(w, 2, 4), w_le(w, 3000000000u, 4), n++;
    w_key(w, "t.arr.i32", GGUF_ARRAY), w_le(w, GGUF_INT32, 4), w_le(w, 2, 8);
    w_le(w, (uint32_t)-5, 4), w_le(w, 7, 4), n++;
    w_key(w, "t.arr.f32", GGUF_ARRAY), w_le(w, GGUF_FLOAT32, 4), w_le(w, 2, 8);
    w_le(w, 0x3f000000u, 4), w_le(w, 0xc0000000u, 4), n++; /* 0.5, -2 */
    w_key(w, "t.arr.bool", GGUF_ARRAY), w_le(w, GGUF_BOOL, 4), w_le(w, 3, 8);
    w_le(w, 1, 1), w_le(w, 0, 1), w_le(w, 1, 1), n++;
    w_key(w, "t.arr.str", GGUF_ARRAY), w_le(w, GGUF_STRING, 4), w_le(w, 4, 8);
    w_str(w, "a"), w_str(w, "bc"), w_str(w, ""), w_str(w, "d\xc3\xa9j\xc3\xa0"), n++;
    w_key(w, "t.arr.u64", GGUF_ARRAY), w_le(w, GGUF_UINT64, 4), w_le(w, 2, 8);
    w_le(w, 1ull << 40, 8), w_le(w, UINT64_MAX, 8), n++;
    w_key(w, "t.arr.i64", GGUF_ARRAY), w_le(w, GGUF_INT64, 4), w_le(w, 1, 8);
    w_le(w, (uint64_t)INT64_MIN, 8), n++;
    w_key(w, "t.arr.f64", GGUF_ARRAY), w_le(w, GGUF_FLOAT64, 4), w_le(w, 1, 8);
    w_le(w, 0x3ff8000000000000ull, 8), n++; /* 1.5 */
    w_key(w, "t.arr.empty", GGUF_ARRAY), w_le(w, GGUF_UINT32, 4), w_le(w, 0, 8), n++;
    if (align)
        w_key(w, "general.alignment", GGUF_UINT32), w_le(w, *align, 4), n++;
    return n;
}

/* One tensor of every supported type, plus a 4-d one. nbytes written out by hand. */
static const tspec all_tensors[] = {
    {"f32", 2, {3, 2}, 0, -1},          {"f16", 1, {5}, 1, -1},
    {"bf16", 3, {4, 1, 2}, 30, -1},     {"q8_0", 2, {64, 2}, 8, -1},
    {"q4_0", 2, {32, 3}, 2, -1},        {"q4_1", 1, {32}, 3, -1},
    {"q4_k", 2, {256, 2}, 12, -1},      {"q6_k", 1, {256}, 14, -1},
    {"blk.0.f32_4d", 4, {2, 3, 4, 5}, 0, -1},
    {"q5_0", 2, {64, 3}, 6, -1},        {"q5_1", 1, {32}, 7, -1},
    {"q2_k", 2, {256, 3}, 10, -1},      {"q3_k", 1, {512}, 11, -1},
    {"q5_k", 2, {256, 2}, 13, -1},      {"mxfp4", 3, {64, 3, 2}, 39, -1},
};
#define N_ALL (sizeof all_tensors / sizeof all_tensors[0])
static const uint64_t all_nbytes[N_ALL] = {24,  10,     16,     4 * 34, 3 * 18, 20,     2 * 144, 210,
                                           480, 6 * 22, 24,     3 * 84, 2 * 110, 2 * 176, 12 * 17};
static const uint64_t all_nel[N_ALL] = {6, 5, 8, 128, 96, 32, 512, 256, 120, 192, 32, 768, 512, 512, 384};
static const spk_dtype all_types[N_ALL] = {SPK_DT_F32,  SPK_DT_F16,  SPK_DT_BF16, SPK_DT_Q8_0,
                                           SPK_DT_Q4_0, SPK_DT_Q4_1, SPK_DT_Q4_K, SPK_DT_Q6_K,
                                           SPK_DT_F32,  SPK_DT_Q5_0, SPK_DT_Q5_1, SPK_DT_Q2_K,
                                           SPK_DT_Q3_K, SPK_DT_Q5_K, SPK_DT_MXFP4};

static void build_all(built *b, uint32_t version, const uint32_t *align)
{
    build(b, version, kvs_all, align, align ? *align : 32, all_tensors, N_ALL);
}

/* Exact-size heap copy, so ASan catches any read past the end. */
static spk_gguf_file *open_copy(const uint8_t *p, size_t n, spk_status *st, uint8_t **copy)
{
    *copy = malloc(n ? n : 1);
    ck_assert_ptr_nonnull(*copy);
    if (n)
        memcpy(*copy, p, n);
    spk_gguf_file *f = (spk_gguf_file *)0x1;
    spk_err_clear();
    *st = spk_gguf_open_memory(*copy, n, &f);
    if (*st != SPK_OK)
        ck_assert_ptr_null(f);
    return f;
}

/* ---- checking a valid file field by field ------------------------------------------------- */

static void check_all_kvs(const spk_gguf_file *f)
{
    uint32_t u32;
    int64_t i64;
    float f32;
    bool bl;
    spk_gguf_str s;
    const spk_gguf_kv *kv;

    ck_assert_uint_eq(f->n_kv, 30 + (spk_gguf_find(f, "general.alignment") != NULL));
    ck_assert_int_eq(spk_gguf_get_str(f, "general.architecture", &s), SPK_OK);
    ck_assert(spk_gguf_str_eq(s, "llama"));

    kv = spk_gguf_find(f, "t.u8");
    ck_assert_ptr_nonnull(kv);
    ck_assert_int_eq(kv->type, GGUF_UINT8);
    ck_assert_uint_eq(kv->v.u, 200);
    kv = spk_gguf_find(f, "t.i8");
    ck_assert_int_eq(kv->type, GGUF_INT8);
    ck_assert_int_eq(kv->v.i, -100);
    kv = spk_gguf_find(f, "t.u16");
    ck_assert_int_eq(kv->type, GGUF_UINT16);
    ck_assert_uint_eq(kv->v.u, 60000);
    kv = spk_gguf_find(f, "t.i16");
    ck_assert_int_eq(kv->type, GGUF_INT16);
    ck_assert_int_eq(kv->v.i, -30000);
    kv = spk_gguf_find(f, "t.u32");
    ck_assert_int_eq(kv->type, GGUF_UINT32);
    ck_assert_uint_eq(kv->v.u, 4000000000u);
    kv = spk_gguf_find(f, "t.i32");
    ck_assert_int_eq(kv->type, GGUF_INT32);
    ck_assert_int_eq(kv->v.i, -2000000000);
    kv = spk_gguf_find(f, "t.f32");
    ck_assert_int_eq(kv->type, GGUF_FLOAT32);
    ck_assert(kv->v.f == 1.5);
    kv = spk_gguf_find(f, "t.bool");
    ck_assert_int_eq(kv->type, GGUF_BOOL);
    ck_assert_uint_eq(kv->v.u, 1);
    kv = spk_gguf_find(f, "t.str");
    ck_assert_int_eq(kv->type, GGUF_STRING);
    ck_assert(spk_gguf_str_eq(kv->v.s, "hello gguf"));
    ck_assert(kv->v.s.ptr > (const char *)f->base && kv->v.s.ptr < (const char *)f->base + f->size);
    kv = spk_gguf_find(f, "t.u64");
    ck_assert_int_eq(kv->type, GGUF_UINT64);
    ck_assert_uint_eq(kv->v.u, 0x8000000000000005ull);
    kv = spk_gguf_find(f, "t.i64");
    ck_assert_int_eq(kv->type, GGUF_INT64);
    ck_assert_int_eq(kv->v.i, -(1ll << 40));
    kv = spk_gguf_find(f, "t.f64");
    ck_assert_int_eq(kv->type, GGUF_FLOAT64);
    ck_assert(kv->v.f == -3.25);
    kv = spk_gguf_find(f, "t.empty");
    ck_assert_int_eq(kv->type, GGUF_STRING);
    ck_assert_uint_eq(kv->v.s.len, 0);
    ck_assert_ptr_null(spk_gguf_find(f, "t.missing"));
    ck_assert_ptr_null(spk_gguf_find(f, "t.u")); /* prefix of a key is not the key */

    /* typed getters: conversions where the value fits, FORMAT naming the key where not */
    ck_assert_int_eq(spk_gguf_get_u32(f, "t.u8", &u32), SPK_OK);
    ck_assert_uint_eq(u32, 200);
    ck_assert_int_eq(spk_gguf_get_u32(f, "t.u32", &u32), SPK_OK);
    ck_assert_uint_eq(u32, 4000000000u);
    ck_assert_int_eq(spk_gguf_get_u32(f, "t.small", &u32), SPK_OK);
    ck_assert_uint_eq(u32, 77);
    ck_assert_int_eq(spk_gguf_get_u32(f, "t.neg", &u32), SPK_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(spk_err_msg(), "'t.neg'"));
    ck_assert_int_eq(spk_gguf_get_u32(f, "t.u64", &u32), SPK_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(spk_err_msg(), "'t.u64'"));
    ck_assert_int_eq(spk_gguf_get_u32(f, "t.str", &u32), SPK_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(spk_err_msg(), "type string"));
    ck_assert_int_eq(spk_gguf_get_u32(f, "t.f32", &u32), SPK_ERR_FORMAT);
    ck_assert_int_eq(spk_gguf_get_u32(f, "t.missing", &u32), SPK_ERR_NOT_FOUND);
    ck_assert_ptr_nonnull(strstr(spk_err_msg(), "'t.missing'"));

    ck_assert_int_eq(spk_gguf_get_i64(f, "t.i8", &i64), SPK_OK);
    ck_assert_int_eq(i64, -100);
    ck_assert_int_eq(spk_gguf_get_i64(f, "t.i64", &i64), SPK_OK);
    ck_assert_int_eq(i64, -(1ll << 40));
    ck_assert_int_eq(spk_gguf_get_i64(f, "t.u32", &i64), SPK_OK);
    ck_assert_int_eq(i64, 4000000000ll);
    ck_assert_int_eq(spk_gguf_get_i64(f, "t.u64", &i64), SPK_ERR_FORMAT);
    ck_assert_int_eq(spk_gguf_get_i64(f, "t.bool", &i64), SPK_ERR_FORMAT);

    ck_assert_int_eq(spk_gguf_get_f32(f, "t.f32", &f32), SPK_OK);
    ck_assert(f32 == 1.5f);
    ck_assert_int_eq(spk_gguf_get_f32(f, "t.f64", &f32), SPK_OK);
    ck_assert(f32 == -3.25f);
    ck_assert_int_eq(spk_gguf_get_f32(f, "t.u16", &f32), SPK_OK);
    ck_assert(f32 == 60000.0f);
    ck_assert_int_eq(spk_gguf_get_f32(f, "t.str", &f32), SPK_ERR_FORMAT);

    ck_assert_int_eq(spk_gguf_get_bool(f, "t.bool", &bl), SPK_OK);
    ck_assert(bl);
    ck_assert_int_eq(spk_gguf_get_bool(f, "t.bool0", &bl), SPK_OK);
    ck_assert(!bl);
    ck_assert_int_eq(spk_gguf_get_bool(f, "t.u8", &bl), SPK_ERR_FORMAT);

    ck_assert_int_eq(spk_gguf_get_str(f, "t.str", &s), SPK_OK);
    ck_assert_uint_eq(s.len, 10);
    ck_assert_mem_eq(s.ptr, "hello gguf", 10);
    ck_assert_int_eq(spk_gguf_get_str(f, "t.u8", &s), SPK_ERR_FORMAT);
    ck_assert_int_eq(spk_gguf_get_str(f, "nope", &s), SPK_ERR_NOT_FOUND);

    /* arrays */
    const spk_gguf_kv *a;
    int64_t iv;
    double dv;
    ck_assert_int_eq(spk_gguf_get_arr(f, "t.arr.u8", GGUF_UINT8, &a), SPK_OK);
    ck_assert_uint_eq(a->v.arr.count, 3);
    ck_assert_uint_eq(a->v.arr.nbytes, 3);
    ck_assert_mem_eq(a->v.arr.data, "\x01\x02\xff", 3);
    ck_assert(spk_gguf_arr_int(a, 2, &iv) && iv == 255);
    ck_assert(!spk_gguf_arr_int(a, 3, &iv));
    ck_assert_int_eq(spk_gguf_get_arr(f, "t.arr.u8", GGUF_UINT32, &a), SPK_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(spk_err_msg(), "array of uint8"));
    ck_assert_int_eq(spk_gguf_get_arr(f, "t.u8", GGUF_VTYPE_COUNT, &a), SPK_ERR_FORMAT);

    ck_assert_int_eq(spk_gguf_get_arr(f, "t.arr.i8", GGUF_INT8, &a), SPK_OK);
    ck_assert(spk_gguf_arr_int(a, 0, &iv) && iv == -1);
    ck_assert(spk_gguf_arr_int(a, 1, &iv) && iv == 127);
    ck_assert_int_eq(spk_gguf_get_arr(f, "t.arr.u16", GGUF_UINT16, &a), SPK_OK);
    ck_assert_uint_eq(a->v.arr.nbytes, 4);
    ck_assert(spk_gguf_arr_int(a, 0, &iv) && iv == 65535);
    ck_assert(spk_gguf_arr_int(a, 1, &iv) && iv == 7);
    ck_assert_int_eq(spk_gguf_get_arr(f, "t.arr.i16", GGUF_INT16, &a), SPK_OK);
    ck_assert(spk_gguf_arr_int(a, 0, &iv) && iv == -300);
    ck_assert_int_eq(spk_gguf_get_arr(f, "t.arr.u32", GGUF_UINT32, &a), SPK_OK);
    ck_assert_uint_eq(a->v.arr.nbytes, 12);
    ck_assert(spk_gguf_arr_int(a, 2, &iv) && iv == 3000000000ll);
    ck_assert_int_eq(spk_gguf_get_arr(f, "t.arr.i32", GGUF_INT32, &a), SPK_OK);
    ck_assert(spk_gguf_arr_int(a, 0, &iv) && iv == -5);
    ck_assert(spk_gguf_arr_float(a, 1, &dv) && dv == 7.0);
    ck_assert_int_eq(spk_gguf_get_arr(f, "t.arr.f32", GGUF_FLOAT32, &a), SPK_OK);
    ck_assert(spk_gguf_arr_float(a, 0, &dv) && dv == 0.5);
    ck_assert(spk_gguf_arr_float(a, 1, &dv) && dv == -2.0);
    ck_assert(!spk_gguf_arr_int(a, 0, &iv)); /* floats are not integers */
    ck_assert_int_eq(spk_gguf_get_arr(f, "t.arr.bool", GGUF_BOOL, &a), SPK_OK);
    ck_assert(spk_gguf_arr_int(a, 0, &iv) && iv == 1);
    ck_assert(spk_gguf_arr_int(a, 1, &iv) && iv == 0);
    ck_assert_int_eq(spk_gguf_get_arr(f, "t.arr.u64", GGUF_UINT64, &a), SPK_OK);
    ck_assert(spk_gguf_arr_int(a, 0, &iv) && iv == (1ll << 40));
    ck_assert(!spk_gguf_arr_int(a, 1, &iv)); /* UINT64_MAX does not fit in int64 */
    ck_assert_int_eq(spk_gguf_get_arr(f, "t.arr.i64", GGUF_INT64, &a), SPK_OK);
    ck_assert(spk_gguf_arr_int(a, 0, &iv) && iv == INT64_MIN);
    ck_assert_int_eq(spk_gguf_get_arr(f, "t.arr.f64", GGUF_FLOAT64, &a), SPK_OK);
    ck_assert(spk_gguf_arr_float(a, 0, &dv) && dv == 1.5);
    ck_assert_int_eq(spk_gguf_get_arr(f, "t.arr.empty", GGUF_VTYPE_COUNT, &a), SPK_OK);
    ck_assert_uint_eq(a->v.arr.count, 0);
    ck_assert_uint_eq(a->v.arr.nbytes, 0);

    ck_assert_int_eq(spk_gguf_get_arr(f, "t.arr.str", GGUF_STRING, &a), SPK_OK);
    ck_assert_uint_eq(a->v.arr.count, 4);
    ck_assert_uint_eq(a->v.arr.nbytes, 4 * 8 + 1 + 2 + 0 + 6);
    static const char *const want[] = {"a", "bc", "", "d\xc3\xa9j\xc3\xa0"};
    uint64_t pos = 0;
    for (int i = 0; i < 4; i++) {
        spk_gguf_str e = spk_gguf_arr_str_next(a, &pos);
        ck_assert_msg(spk_gguf_str_eq(e, want[i]), "string element %d", i);
    }
    ck_assert_uint_eq(pos, a->v.arr.nbytes);
    ck_assert_ptr_null(spk_gguf_arr_str_next(a, &pos).ptr); /* past the last one */
    pos = 0;
    ck_assert_ptr_null(spk_gguf_arr_str_next(spk_gguf_find(f, "t.arr.u32"), &pos).ptr);
}

static void check_all_tensors(const spk_gguf_file *f, const built *b, uint64_t align)
{
    ck_assert_uint_eq(f->n_tensors, N_ALL);
    ck_assert_uint_eq(f->alignment, align);
    ck_assert_uint_eq(f->data_offset, b->data_offset);
    ck_assert_uint_eq(f->data_offset % align, 0);
    for (size_t i = 0; i < N_ALL; i++) {
        const spk_gguf_tensor *t = &f->tensors[i];
        const tspec *s = &all_tensors[i];
        ck_assert_msg(spk_gguf_str_eq(t->name, s->name), "tensor %zu name", i);
        ck_assert_ptr_eq(spk_gguf_find_tensor(f, s->name), t);
        ck_assert_uint_eq(t->n_dims, s->n_dims);
        for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++)
            ck_assert_uint_eq(t->ne[d], d < s->n_dims ? s->ne[d] : 1);
        ck_assert_int_eq(t->type, all_types[i]);
        ck_assert_uint_eq(t->n_elements, all_nel[i]);
        ck_assert_msg(t->nbytes == all_nbytes[i], "tensor %s: nbytes %llu, want %llu", s->name,
                      (unsigned long long)t->nbytes, (unsigned long long)all_nbytes[i]);
        ck_assert_uint_eq(t->offset, b->off[i]);
        ck_assert_uint_eq(t->offset % align, 0);
        /* the data pointer lands on the bytes the writer put there */
        ck_assert_ptr_eq(t->data, f->base + b->data_offset + b->off[i]);
        const uint8_t *d = t->data;
        for (uint64_t k = 0; k < t->nbytes; k++)
            ck_assert_msg(d[k] == pattern(i, k), "tensor %s byte %llu", s->name,
                          (unsigned long long)k);
    }
    ck_assert_ptr_null(spk_gguf_find_tensor(f, "blk.0"));
    ck_assert_ptr_null(spk_gguf_find_tensor(f, "nope"));
}

START_TEST(valid_file_reads_back_every_field_from_memory)
{
    built b;
    build_all(&b, 3, NULL);
    spk_status st;
    uint8_t *copy;
    spk_gguf_file *f = open_copy(b.w.p, b.w.n, &st, &copy);
    ck_assert_msg(st == SPK_OK, "open: %s", spk_err_msg());
    ck_assert_uint_eq(f->version, 3);
    ck_assert_ptr_eq(f->base, copy);
    ck_assert_uint_eq(f->size, b.w.n);
    ck_assert_int_eq(f->owns_map, 0);
    check_all_kvs(f);
    check_all_tensors(f, &b, 32);
    spk_gguf_close(f);
    free(copy);
    w_free(&b.w);
}
END_TEST

START_TEST(version_2_and_custom_alignment_are_honoured)
{
    static const uint32_t aligns[] = {1, 8, 64, 4096};
    for (size_t k = 0; k < sizeof aligns / sizeof aligns[0]; k++) {
        built b;
        build_all(&b, 2, &aligns[k]);
        spk_status st;
        uint8_t *copy;
        spk_gguf_file *f = open_copy(b.w.p, b.w.n, &st, &copy);
        ck_assert_msg(st == SPK_OK, "alignment %u: %s", aligns[k], spk_err_msg());
        ck_assert_uint_eq(f->version, 2);
        check_all_kvs(f);
        check_all_tensors(f, &b, aligns[k]);
        spk_gguf_close(f);
        free(copy);
        w_free(&b.w);
    }
}
END_TEST

START_TEST(file_without_tensors_or_kvs_is_valid)
{
    wbuf w = {0};
    w_header(&w, 3, 0, 0);
    spk_status st;
    uint8_t *copy;
    spk_gguf_file *f = open_copy(w.p, w.n, &st, &copy);
    ck_assert_msg(st == SPK_OK, "%s", spk_err_msg());
    ck_assert_uint_eq(f->n_kv, 0);
    ck_assert_uint_eq(f->n_tensors, 0);
    ck_assert_uint_eq(f->alignment, 32);
    ck_assert_ptr_null(spk_gguf_find(f, "x"));
    ck_assert_ptr_null(spk_gguf_find_tensor(f, "x"));
    spk_gguf_close(f);
    free(copy);
    w_free(&w);
}
END_TEST

static int count_fds(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return -1;
    while (readdir(d))
        n++;
    closedir(d);
    return n;
}

static void write_temp(char *path, const void *p, size_t n)
{
    strcpy(path, "/tmp/spk_test_gguf_XXXXXX");
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, p, n), (ssize_t)n);
    close(fd);
}

START_TEST(spk_gguf_open_maps_a_file_and_closes_the_fd)
{
    built b;
    build_all(&b, 3, NULL);
    char path[64];
    write_temp(path, b.w.p, b.w.n);
    int fds = count_fds();
    spk_gguf_file *f = NULL;
    spk_status st = spk_gguf_open(path, &f);
    ck_assert_msg(st == SPK_OK, "open: %s", spk_err_msg());
    ck_assert_int_eq(count_fds(), fds); /* the mapping stays, the descriptor does not */
    ck_assert_int_eq(f->owns_map, 1);
    ck_assert_uint_eq(f->size, b.w.n);
    ck_assert_str_eq(f->path, path);
    ck_assert_mem_eq(f->base, b.w.p, b.w.n);
    check_all_kvs(f);
    check_all_tensors(f, &b, 32);
    spk_gguf_close(f);
    spk_gguf_close(NULL);

    /* a malformed file on disk: FORMAT, message starts with the path, nothing leaks */
    w_patch(&b.w, 4, 99, 4);
    unlink(path);
    write_temp(path, b.w.p, b.w.n);
    f = (spk_gguf_file *)0x1;
    ck_assert_int_eq(spk_gguf_open(path, &f), SPK_ERR_UNSUPPORTED);
    ck_assert_ptr_null(f);
    ck_assert_int_eq(strncmp(spk_err_msg(), path, strlen(path)), 0);
    ck_assert_int_eq(count_fds(), fds);
    unlink(path);

    /* empty file: FORMAT */
    write_temp(path, "", 0);
    ck_assert_int_eq(spk_gguf_open(path, &f), SPK_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(spk_err_msg(), "empty"));
    unlink(path);
    w_free(&b.w);
}
END_TEST

START_TEST(spk_gguf_open_reports_io_errors_with_strerror)
{
    spk_gguf_file *f = (spk_gguf_file *)0x1;
    ck_assert_int_eq(spk_gguf_open("/nonexistent/dir/model.gguf", &f), SPK_ERR_IO);
    ck_assert_ptr_null(f);
    ck_assert_ptr_nonnull(strstr(spk_err_msg(), "/nonexistent/dir/model.gguf"));
    ck_assert_ptr_nonnull(strstr(spk_err_msg(), "No such file"));
    ck_assert_int_eq(spk_gguf_open("/tmp", &f), SPK_ERR_IO);
    ck_assert_ptr_nonnull(strstr(spk_err_msg(), "/tmp"));
    ck_assert_int_eq(spk_gguf_open(NULL, &f), SPK_ERR_INVALID_ARG);
    ck_assert_int_eq(spk_gguf_open_memory(NULL, 5, &f), SPK_ERR_INVALID_ARG);
    ck_assert_int_eq(spk_gguf_open_memory("GGUF", 4, NULL), SPK_ERR_INVALID_ARG);
}
END_TEST

/* ---- malformed files ------------------------------------------------------------------------ */

static const tspec one_f32[] = {{"w", 1, {8}, 0, -1}};

static void mk_valid_small(wbuf *w)
{
    built b;
    build(&b, 3, kvs_all, NULL, 32, one_f32, 1);
    *w = b.w;
}

static void mk_bad_magic(wbuf *w) { mk_valid_small(w), w->p[3] = 'X'; }
static void mk_v1(wbuf *w) { mk_valid_small(w), w_patch(w, 4, 1, 4); }
static void mk_v99(wbuf *w) { mk_valid_small(w), w_patch(w, 4, 99, 4); }
static void mk_v0(wbuf *w) { mk_valid_small(w), w_patch(w, 4, 0, 4); }
static void mk_big_endian(wbuf *w) { mk_valid_small(w), w_patch(w, 4, 0x03000000u, 4); }
static void mk_empty(wbuf *w) { (void)w; }
static void mk_short3(wbuf *w) { w_raw(w, "GGU", 3); }
static void mk_short20(wbuf *w) { mk_valid_small(w), w->n = 20; }

static void mk_100_bytes(wbuf *w, uint64_t nt, uint64_t nkv)
{
    w_header(w, 3, nt, nkv);
    w_zeros(w, 100 - w->n);
}
static void mk_huge_kv(wbuf *w) { mk_100_bytes(w, 0, 1ull << 40); }
static void mk_huge_tensors(wbuf *w) { mk_100_bytes(w, 1ull << 40, 0); }
static void mk_max_kv(wbuf *w) { mk_100_bytes(w, 0, UINT64_MAX); }
static void mk_max_tensors(wbuf *w) { mk_100_bytes(w, UINT64_MAX, 1); }
static void mk_calloc_overflow(wbuf *w) { mk_100_bytes(w, 1ull << 60, 1ull << 60); }
/* counts just under the byte bound: get past it, then fail on the missing bytes */
static void mk_kv_count_too_many(wbuf *w) { mk_100_bytes(w, 0, 5); }

static void mk_key_len_past_end(wbuf *w)
{
    w_header(w, 3, 0, 1);
    w_le(w, 1000, 8), w_raw(w, "general.name", 12), w_zeros(w, 8);
}

static void mk_str_len_max(wbuf *w)
{
    w_header(w, 3, 0, 1);
    w_key(w, "t.s", GGUF_STRING), w_le(w, UINT64_MAX, 8), w_raw(w, "xyz", 3);
}

static void mk_str_past_end(wbuf *w)
{
    w_header(w, 3, 0, 1);
    w_key(w, "t.s", GGUF_STRING), w_le(w, 64, 8), w_raw(w, "short", 5);
}

static void mk_arr_count_huge(wbuf *w)
{
    w_header(w, 3, 0, 1);
    w_key(w, "t.a", GGUF_ARRAY), w_le(w, GGUF_UINT32, 4), w_le(w, 1ull << 61, 8), w_zeros(w, 16);
}

static void mk_arr_count_max_u64(wbuf *w)
{
    w_header(w, 3, 0, 1);
    w_key(w, "t.a", GGUF_ARRAY), w_le(w, GGUF_UINT64, 4), w_le(w, UINT64_MAX, 8), w_zeros(w, 16);
}

static void mk_str_arr_count_huge(wbuf *w)
{
    w_header(w, 3, 0, 1);
    w_key(w, "t.a", GGUF_ARRAY), w_le(w, GGUF_STRING, 4), w_le(w, 1ull << 40, 8), w_zeros(w, 16);
}

static void mk_str_arr_elem_past_end(wbuf *w)
{
    w_header(w, 3, 0, 1);
    w_key(w, "t.a", GGUF_ARRAY), w_le(w, GGUF_STRING, 4), w_le(w, 2, 8);
    w_str(w, "ab"), w_le(w, 100, 8), w_raw(w, "cd", 2);
}

static void mk_nested(wbuf *w)
{
    w_header(w, 3, 0, 1);
    w_key(w, "t.n", GGUF_ARRAY), w_le(w, GGUF_ARRAY, 4), w_le(w, 1, 8);
    w_le(w, GGUF_UINT8, 4), w_le(w, 1, 8), w_le(w, 7, 1);
}

static void mk_bad_vtype(wbuf *w)
{
    w_header(w, 3, 0, 1);
    w_key(w, "t.b", 13), w_zeros(w, 16);
}

static void mk_bad_elem_type(wbuf *w)
{
    w_header(w, 3, 0, 1);
    w_key(w, "t.b", GGUF_ARRAY), w_le(w, 77, 4), w_le(w, 1, 8), w_zeros(w, 16);
}

static void mk_bool_2(wbuf *w)
{
    w_header(w, 3, 0, 1);
    w_key(w, "t.flag", GGUF_BOOL), w_le(w, 2, 1);
}

static void mk_bool_arr_2(wbuf *w)
{
    w_header(w, 3, 0, 1);
    w_key(w, "t.flags", GGUF_ARRAY), w_le(w, GGUF_BOOL, 4), w_le(w, 3, 8);
    w_le(w, 1, 1), w_le(w, 0, 1), w_le(w, 9, 1);
}

static void mk_dup_key(wbuf *w)
{
    w_header(w, 3, 0, 3);
    w_key(w, "a.b", GGUF_UINT32), w_le(w, 1, 4);
    w_key(w, "a.c", GGUF_UINT32), w_le(w, 2, 4);
    w_key(w, "a.b", GGUF_STRING), w_str(w, "x");
}

static void mk_empty_key(wbuf *w)
{
    w_header(w, 3, 0, 1);
    w_key(w, "", GGUF_UINT8), w_le(w, 1, 1), w_zeros(w, 8);
}

static unsigned kvs_align(wbuf *w, const void *arg)
{
    const uint64_t *a = arg; /* a[0] = value type, a[1] = value */
    w_key(w, "general.alignment", (uint32_t)a[0]);
    w_le(w, a[1], a[0] == GGUF_UINT64 ? 8 : a[0] == GGUF_UINT16 ? 2 : 4);
    return 1;
}

static void mk_tensors(wbuf *w, const tspec *ts, size_t n)
{
    built b;
    build(&b, 3, NULL, NULL, 32, ts, n);
    *w = b.w;
}

#define MK_T(fn, ...)                                                                              \
    static void fn(wbuf *w)                                                                        \
    {                                                                                              \
        static const tspec ts[] = {__VA_ARGS__};                                                   \
        mk_tensors(w, ts, sizeof ts / sizeof ts[0]);                                               \
    }

MK_T(mk_dup_tensor, {"w", 1, {8}, 0, -1}, {"v", 1, {8}, 0, -1}, {"w", 1, {8}, 0, -1})
MK_T(mk_empty_tensor_name, {"", 1, {8}, 0, -1})
MK_T(mk_ndims0, {"w0", 0, {8}, 0, -1})
MK_T(mk_ndims5, {"w5", 5, {8, 1, 1, 1, 1}, 0, -1})
MK_T(mk_zero_dim, {"wz", 2, {8, 0}, 0, -1})
MK_T(mk_dim_product_overflow, {"wo", 3, {1ull << 32, 1ull << 32, 2}, 0, -1})
MK_T(mk_dim_huge, {"wh", 1, {1ull << 63}, 0, -1})
MK_T(mk_nbytes_overflow, {"wb", 2, {1ull << 31, 1ull << 31}, 0, -1})
MK_T(mk_type99, {"blk.1.ffn_up.weight", 2, {32, 2}, 99, -1})
MK_T(mk_type_iq2, {"blk.2.attn_q.weight", 2, {256, 2}, 16, -1})
MK_T(mk_block_q5_k, {"q5k", 2, {288, 2}, 13, -1})
MK_T(mk_block_mxfp4, {"mx", 1, {48}, 39, -1})
/* A Q3_K tensor of 2 rows needs 220 bytes; the next tensor starts after 192. */
MK_T(mk_q3k_short, {"q3k", 2, {256, 2}, 11, 0}, {"next", 1, {8}, 0, 192})

/* MXFP4 blocks cut short: the file ends 5 bytes into the last 17-byte block. */
static void mk_mxfp4_cut(wbuf *w)
{
    static const tspec ts[] = {{"blk.0.ffn_down_exps.weight", 3, {64, 2, 4}, 39, -1}};
    mk_tensors(w, ts, 1);
    w->n -= 12;
}
MK_T(mk_type_q8_1, {"q81", 1, {32}, 9, -1})
MK_T(mk_type_huge, {"qx", 1, {32}, 0xffffffffu, -1})
MK_T(mk_block_q4_0, {"q40", 2, {48, 2}, 2, -1})
MK_T(mk_block_q6_k, {"q6k", 2, {128, 2}, 14, -1})
MK_T(mk_unaligned, {"a", 1, {8}, 0, 0}, {"u", 1, {8}, 0, 48})
MK_T(mk_overlap, {"a", 1, {16}, 0, 0}, {"b", 1, {8}, 0, 32})
MK_T(mk_overlap_unsorted, {"c", 1, {8}, 0, 96}, {"b", 1, {32}, 0, 64}, {"a", 1, {8}, 0, 0})

static void mk_past_end(wbuf *w)
{
    static const tspec ts[] = {{"a", 1, {8}, 0, -1}, {"far", 1, {8}, 0, 4096}};
    built b;
    build(&b, 3, NULL, NULL, 32, ts, 2);
    b.w.n = b.data_offset + 32; /* only tensor 'a' is present */
    *w = b.w;
}

static void mk_past_end_offset_max(wbuf *w)
{
    mk_tensors(w, one_f32, 1);
    /* the offset field is the last 8 bytes of the only tensor info, right before padding */
    size_t info_end = 24 + 8 + 1 + 4 + 8 + 4 + 8;
    w_patch(w, info_end - 8, UINT64_MAX - 31, 8); /* aligned, so the range check must catch it */
}

static void mk_align(wbuf *w, uint64_t type, uint64_t value)
{
    const uint64_t a[2] = {type, value};
    built b;
    build(&b, 3, kvs_align, a, 32, one_f32, 1);
    *w = b.w;
}
static void mk_align0(wbuf *w) { mk_align(w, GGUF_UINT32, 0); }
static void mk_align48(wbuf *w) { mk_align(w, GGUF_UINT32, 48); }
static void mk_align_u64(wbuf *w) { mk_align(w, GGUF_UINT64, 32); }
static void mk_align_u16(wbuf *w) { mk_align(w, GGUF_UINT16, 32); }

static void mk_data_section_past_eof(wbuf *w)
{
    mk_tensors(w, one_f32, 1);
    w->n = 24 + 8 + 1 + 4 + 8 + 4 + 8; /* ends right after the tensor info, before padding */
}

typedef struct bad_case {
    const char *name;
    void (*make)(wbuf *w);
    spk_status want;
    const char *msg1, *msg2; /* substrings the message must contain (msg2 may be NULL) */
} bad_case;

static const bad_case bad_cases[] = {
    {"empty file", mk_empty, SPK_ERR_FORMAT, "empty", NULL},
    {"3-byte file", mk_short3, SPK_ERR_FORMAT, "3 bytes", "shorter"},
    {"20-byte file", mk_short20, SPK_ERR_FORMAT, "20 bytes", "shorter"},
    {"bad magic", mk_bad_magic, SPK_ERR_FORMAT, "magic", "47 47 55 58"},
    {"version 1", mk_v1, SPK_ERR_UNSUPPORTED, "version 1 ", NULL},
    {"version 99", mk_v99, SPK_ERR_UNSUPPORTED, "version 99", NULL},
    {"version 0", mk_v0, SPK_ERR_UNSUPPORTED, "version 0", NULL},
    {"big-endian", mk_big_endian, SPK_ERR_UNSUPPORTED, "big-endian", "0x03000000"},
    {"huge kv count", mk_huge_kv, SPK_ERR_FORMAT, "kv count 1099511627776", "76"},
    {"huge tensor count", mk_huge_tensors, SPK_ERR_FORMAT, "tensor count 1099511627776", "76"},
    {"kv count 2^64-1", mk_max_kv, SPK_ERR_FORMAT, "kv count 18446744073709551615", NULL},
    {"tensor count 2^64-1", mk_max_tensors, SPK_ERR_FORMAT, "tensor count 18446744073709551615",
     NULL},
    {"counts 2^60", mk_calloc_overflow, SPK_ERR_FORMAT, "kv count 1152921504606846976", NULL},
    {"kv count within the bound, kvs absent", mk_kv_count_too_many, SPK_ERR_FORMAT, "kv 0",
     "empty key"},
    {"key length past end", mk_key_len_past_end, SPK_ERR_FORMAT, "key length 1000", "past end"},
    {"string length 2^64-1", mk_str_len_max, SPK_ERR_FORMAT, "'t.s'", "18446744073709551615"},
    {"string past end", mk_str_past_end, SPK_ERR_FORMAT, "'t.s'", "length 64"},
    {"array count huge", mk_arr_count_huge, SPK_ERR_FORMAT, "'t.a'", "count 2305843009213693952"},
    {"array count 2^64-1", mk_arr_count_max_u64, SPK_ERR_FORMAT, "'t.a'",
     "count 18446744073709551615"},
    {"string array count huge", mk_str_arr_count_huge, SPK_ERR_FORMAT, "'t.a'",
     "count 1099511627776"},
    {"string array element past end", mk_str_arr_elem_past_end, SPK_ERR_FORMAT, "'t.a'",
     "element 1"},
    {"nested array", mk_nested, SPK_ERR_FORMAT, "'t.n'", "nested"},
    {"bad value type", mk_bad_vtype, SPK_ERR_FORMAT, "'t.b'", "value type 13"},
    {"bad array element type", mk_bad_elem_type, SPK_ERR_FORMAT, "'t.b'", "element value type 77"},
    {"bool 2", mk_bool_2, SPK_ERR_FORMAT, "'t.flag'", "bool value 2"},
    {"bool array element 9", mk_bool_arr_2, SPK_ERR_FORMAT, "'t.flags'", "element 2"},
    {"duplicate key", mk_dup_key, SPK_ERR_FORMAT, "duplicate key 'a.b'", "kv 0 and kv 2"},
    {"empty key", mk_empty_key, SPK_ERR_FORMAT, "kv 0", "empty key"},
    {"duplicate tensor", mk_dup_tensor, SPK_ERR_FORMAT, "duplicate tensor 'w'",
     "tensor 0 and tensor 2"},
    {"empty tensor name", mk_empty_tensor_name, SPK_ERR_FORMAT, "tensor 0", "empty name"},
    {"n_dims 0", mk_ndims0, SPK_ERR_FORMAT, "'w0'", "n_dims 0"},
    {"n_dims 5", mk_ndims5, SPK_ERR_FORMAT, "'w5'", "n_dims 5"},
    {"zero dimension", mk_zero_dim, SPK_ERR_FORMAT, "'wz'", "dimension 1 is zero"},
    {"dims product overflow", mk_dim_product_overflow, SPK_ERR_FORMAT, "'wo'", "overflows"},
    {"dim >= 2^63", mk_dim_huge, SPK_ERR_FORMAT, "'wh'", "9223372036854775808"},
    {"byte size overflow", mk_nbytes_overflow, SPK_ERR_FORMAT, "'wb'", "overflows"},
    {"tensor type 99", mk_type99, SPK_ERR_UNSUPPORTED, "'blk.1.ffn_up.weight'", "type 99"},
    {"tensor type 16 (IQ2_XXS)", mk_type_iq2, SPK_ERR_UNSUPPORTED, "'blk.2.attn_q.weight'",
     "type 16 (IQ2_XXS)"},
    {"ne[0] not a multiple of the Q5_K block", mk_block_q5_k, SPK_ERR_FORMAT, "'q5k'",
     "ne[0] = 288 is not a multiple of the Q5_K block size 256"},
    {"ne[0] not a multiple of the MXFP4 block", mk_block_mxfp4, SPK_ERR_FORMAT, "'mx'",
     "ne[0] = 48 is not a multiple of the MXFP4 block size 32"},
    {"MXFP4 blocks cut short", mk_mxfp4_cut, SPK_ERR_FORMAT, "'blk.0.ffn_down_exps.weight'",
     "offset 0 + size 272 past end of data (260 bytes): 512 MXFP4 values need 16 blocks of 17 bytes"},
    {"Q3_K tensor larger than its room", mk_q3k_short, SPK_ERR_FORMAT,
     "'q3k' (offset 0, size 220) overlaps", "'next' (offset 192)"},
    {"tensor type 9 (Q8_1)", mk_type_q8_1, SPK_ERR_UNSUPPORTED, "'q81'", "type 9 (Q8_1)"},
    {"tensor type 2^32-1", mk_type_huge, SPK_ERR_UNSUPPORTED, "'qx'", "type 4294967295"},
    {"ne[0] not a multiple of 32", mk_block_q4_0, SPK_ERR_FORMAT, "'q40'",
     "ne[0] = 48 is not a multiple of the Q4_0 block size 32"},
    {"ne[0] not a multiple of 256", mk_block_q6_k, SPK_ERR_FORMAT, "'q6k'", "Q6_K block size 256"},
    {"unaligned offset", mk_unaligned, SPK_ERR_FORMAT, "'u'",
     "offset 48 is not a multiple of the alignment 32"},
    {"tensor past end", mk_past_end, SPK_ERR_FORMAT, "'far'", "offset 4096 + size 32 past end"},
    {"tensor offset near 2^64", mk_past_end_offset_max, SPK_ERR_FORMAT, "'w'",
     "offset 18446744073709551584 + size 32 past end"},
    {"overlapping tensors", mk_overlap, SPK_ERR_FORMAT, "'a' (offset 0, size 64) overlaps", "'b'"},
    {"overlap, listed out of order", mk_overlap_unsorted, SPK_ERR_FORMAT,
     "'b' (offset 64, size 128) overlaps", "'c' (offset 96)"},
    {"alignment 0", mk_align0, SPK_ERR_FORMAT, "general.alignment", "0 is not a nonzero power"},
    {"alignment 48", mk_align48, SPK_ERR_FORMAT, "general.alignment", "48 is not"},
    {"alignment uint64", mk_align_u64, SPK_ERR_FORMAT, "general.alignment", "type uint64"},
    {"alignment uint16", mk_align_u16, SPK_ERR_FORMAT, "general.alignment", "type uint16"},
    {"data section past end", mk_data_section_past_eof, SPK_ERR_FORMAT, "data section", "past end"},
};
#define N_BAD ((int)(sizeof bad_cases / sizeof bad_cases[0]))

START_TEST(malformed_file_gives_a_clean_error_naming_the_problem)
{
    const bad_case *c = &bad_cases[_i];
    wbuf w = {0};
    c->make(&w);
    spk_status st;
    uint8_t *copy;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    spk_gguf_file *f = open_copy(w.p, w.n, &st, &copy);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    const char *msg = spk_err_msg();
    ck_assert_msg(st == c->want, "%s: status %d (%s), want %d; message: %s", c->name, st,
                  spk_status_str(st), c->want, msg);
    ck_assert_ptr_null(f);
    ck_assert_msg(strncmp(msg, "<memory>: ", 10) == 0, "%s: message '%s' does not name the file",
                  c->name, msg);
    ck_assert_msg(strstr(msg, c->msg1) != NULL, "%s: message '%s' lacks '%s'", c->name, msg,
                  c->msg1);
    ck_assert_msg(!c->msg2 || strstr(msg, c->msg2) != NULL, "%s: message '%s' lacks '%s'",
                  c->name, msg, c->msg2);
    double ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
    ck_assert_msg(ms < 100, "%s: took %.1f ms", c->name, ms); /* no work from claimed counts */
    free(copy);
    w_free(&w);
}
END_TEST

START_TEST(claimed_counts_are_bounded_by_the_file_before_allocating)
{
    /* A 100-byte file claiming 2^40 tensors or kvs: allocating from the count would be
     * ~10^14 bytes (ASan aborts on such a request; plain calloc returns NULL -> NOMEM). */
    static void (*const makers[])(wbuf *) = {mk_huge_tensors, mk_huge_kv, mk_calloc_overflow,
                                             mk_max_tensors};
    for (size_t k = 0; k < sizeof makers / sizeof makers[0]; k++) {
        wbuf w = {0};
        makers[k](&w);
        ck_assert_uint_eq(w.n, 100);
        spk_status st;
        uint8_t *copy;
        spk_gguf_file *f = open_copy(w.p, w.n, &st, &copy);
        ck_assert_ptr_null(f);
        ck_assert_msg(st == SPK_ERR_FORMAT, "case %zu: %s", k, spk_err_msg());
        ck_assert_ptr_nonnull(strstr(spk_err_msg(), "needs at least"));
        free(copy);
        w_free(&w);
    }
    /* 76 bytes after the header hold at most 5 kvs of 14 bytes: 6 is refused by the bound */
    wbuf w = {0};
    mk_100_bytes(&w, 0, 6);
    spk_status st;
    uint8_t *copy;
    ck_assert_ptr_null(open_copy(w.p, w.n, &st, &copy));
    ck_assert_int_eq(st, SPK_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(spk_err_msg(), "kv count 6"));
    free(copy);
    w_free(&w);
}
END_TEST

START_TEST(truncation_at_every_byte_offset_is_a_format_error)
{
    built b;
    build_all(&b, 3, NULL);
    for (size_t len = 0; len < b.w.n; len++) {
        spk_status st;
        uint8_t *copy;
        spk_gguf_file *f = open_copy(b.w.p, len, &st, &copy);
        ck_assert_msg(st == SPK_ERR_FORMAT && f == NULL, "truncated to %zu of %zu: status %d (%s)",
                      len, b.w.n, st, spk_err_msg());
        ck_assert_msg(strncmp(spk_err_msg(), "<memory>: ", 10) == 0 && strlen(spk_err_msg()) > 20,
                      "truncated to %zu: message '%s'", len, spk_err_msg());
        free(copy);
    }
    /* and the whole file is fine */
    spk_status st;
    uint8_t *copy;
    spk_gguf_file *f = open_copy(b.w.p, b.w.n, &st, &copy);
    ck_assert_int_eq(st, SPK_OK);
    spk_gguf_close(f);
    free(copy);
    w_free(&b.w);
}
END_TEST

START_TEST(random_byte_mutations_never_crash_and_accepted_files_are_consistent)
{
    built b;
    build_all(&b, 3, NULL);
    uint64_t seed = 0x5eed1234;
    int ok = 0, bad = 0;
    for (int it = 0; it < 4000; it++) {
        uint8_t *m = malloc(b.w.n);
        ck_assert_ptr_nonnull(m);
        memcpy(m, b.w.p, b.w.n);
        int nmut = 1 + (int)(spk_test_rand(&seed) % 4);
        for (int k = 0; k < nmut; k++) {
            /* mostly in the header/metadata/tensor table, where the parser looks */
            size_t at = (size_t)(spk_test_rand(&seed) % b.data_offset);
            uint64_t r = spk_test_rand(&seed);
            m[at] = (r & 3) == 0 ? 0xff : (r & 3) == 1 ? 0 : (uint8_t)(r >> 8);
        }
        size_t len = (spk_test_rand(&seed) % 8) == 0 ? (size_t)(spk_test_rand(&seed) % b.w.n)
                                                       : b.w.n;
        spk_gguf_file *f = NULL;
        spk_status st = spk_gguf_open_memory(m, len, &f);
        ck_assert_msg(st == SPK_OK || st == SPK_ERR_FORMAT || st == SPK_ERR_UNSUPPORTED,
                      "iteration %d: status %d", it, st);
        if (st == SPK_OK) {
            ok++;
            for (uint64_t i = 0; i < f->n_tensors; i++) {
                const spk_gguf_tensor *t = &f->tensors[i];
                const uint8_t *d = t->data;
                ck_assert(d >= m && d + t->nbytes <= m + len);
                if (t->nbytes)
                    ck_assert_uint_eq(d[0] | d[t->nbytes - 1], d[0] | d[t->nbytes - 1]);
            }
            for (uint64_t i = 0; i < f->n_kv; i++) {
                const spk_gguf_kv *kv = &f->kv[i];
                if (kv->type == GGUF_ARRAY && kv->v.arr.type == GGUF_STRING) {
                    uint64_t pos = 0, n = 0;
                    while (spk_gguf_arr_str_next(kv, &pos).ptr)
                        n++;
                    ck_assert_uint_eq(n, kv->v.arr.count);
                }
            }
            spk_gguf_close(f);
        } else {
            bad++;
            ck_assert_ptr_null(f);
        }
        free(m);
    }
    ck_assert_int_gt(bad, 1000); /* the mutations did reach the checks */
    ck_assert_int_gt(ok, 10);    /* and harmless ones (inside strings) were accepted */
    w_free(&b.w);
}
END_TEST

static Suite *gguf_suite(void)
{
    Suite *s = suite_create("gguf");
    TCase *tc = tcase_create("valid");
    tcase_add_test(tc, valid_file_reads_back_every_field_from_memory);
    tcase_add_test(tc, version_2_and_custom_alignment_are_honoured);
    tcase_add_test(tc, file_without_tensors_or_kvs_is_valid);
    tcase_add_test(tc, spk_gguf_open_maps_a_file_and_closes_the_fd);
    tcase_add_test(tc, spk_gguf_open_reports_io_errors_with_strerror);
    suite_add_tcase(s, tc);
    tc = tcase_create("malformed");
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, malformed_file_gives_a_clean_error_naming_the_problem, 0, N_BAD);
    tcase_add_test(tc, claimed_counts_are_bounded_by_the_file_before_allocating);
    tcase_add_test(tc, truncation_at_every_byte_offset_is_a_format_error);
    tcase_add_test(tc, random_byte_mutations_never_crash_and_accepted_files_are_consistent);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return spk_test_run(gguf_suite()); }
