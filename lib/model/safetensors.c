/*
 * safetensors reader. Layout: 8-byte little-endian header length N, N bytes of JSON (an object:
 * tensor name -> {"dtype", "shape", "data_offsets": [begin, end]}, plus an optional
 * "__metadata__" object of strings; may be padded with trailing spaces), then the data section,
 * which the tensors cover exactly. Everything is checked before the table is returned.
 */
#include "model/safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/error.h"

#define SHOWN 96 /* longest name quoted in a message */

static const struct {
    const char *name;
    size_t size;
} dtypes[SPK_ST_DTYPE_COUNT] = {
    [SPK_ST_BOOL] = {"BOOL", 1},       [SPK_ST_U8] = {"U8", 1},       [SPK_ST_I8] = {"I8", 1},
    [SPK_ST_I16] = {"I16", 2},         [SPK_ST_U16] = {"U16", 2},     [SPK_ST_F16] = {"F16", 2},
    [SPK_ST_BF16] = {"BF16", 2},       [SPK_ST_I32] = {"I32", 4},     [SPK_ST_U32] = {"U32", 4},
    [SPK_ST_F32] = {"F32", 4},         [SPK_ST_F64] = {"F64", 8},     [SPK_ST_I64] = {"I64", 8},
    [SPK_ST_U64] = {"U64", 8},         [SPK_ST_F8_E4M3] = {"F8_E4M3", 1},
    [SPK_ST_F8_E5M2] = {"F8_E5M2", 1}, [SPK_ST_F8_E8M0] = {"F8_E8M0", 1},
};

size_t spk_st_dtype_size(spk_st_dtype t) { return t < SPK_ST_DTYPE_COUNT ? dtypes[t].size : 0; }
const char *spk_st_dtype_name(spk_st_dtype t) { return t < SPK_ST_DTYPE_COUNT ? dtypes[t].name : "?"; }

void spk_st_close(spk_st_file *f)
{
    if (!f)
        return;
    for (size_t i = 0; i < f->n_tensors; i++)
        free(f->tensors[i].name);
    free(f->tensors);
    if (f->owns_map && f->base)
        munmap((void *)f->base, f->size);
    free(f);
}

/* A JSON number that is a non-negative integer below 2^53 (exact in a double). */
static int json_uint(const cJSON *v, uint64_t *out)
{
    if (!cJSON_IsNumber(v))
        return 0;
    double d = v->valuedouble;
    if (!(d >= 0 && d < 9007199254740992.0) || floor(d) != d)
        return 0;
    *out = (uint64_t)d;
    return 1;
}

static int by_begin(const void *a, const void *b)
{
    const spk_st_tensor *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

static int by_name(const void *a, const void *b)
{
    return strcmp((*(const spk_st_tensor *const *)a)->name, (*(const spk_st_tensor *const *)b)->name);
}

static spk_status parse_entry(const spk_st_file *f, const cJSON *e, spk_st_tensor *t)
{
    const char *nm = e->string;
    const int sh = SHOWN;
    if (!cJSON_IsObject(e))
        return spk_err(SPK_ERR_FORMAT, "%s: tensor '%.*s': entry is not a JSON object", f->path, sh, nm);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsString(dt) || !cJSON_IsArray(shape) || !cJSON_IsArray(offs))
        return spk_err(SPK_ERR_FORMAT, "%s: tensor '%.*s': needs a string 'dtype', an array 'shape' and an "
                       "array 'data_offsets'", f->path, sh, nm);
    int found = 0;
    for (int i = 0; i < SPK_ST_DTYPE_COUNT; i++)
        if (strcmp(dt->valuestring, dtypes[i].name) == 0) {
            t->dtype = (spk_st_dtype)i;
            found = 1;
        }
    if (!found)
        return spk_err(SPK_ERR_UNSUPPORTED, "%s: tensor '%.*s': unknown dtype '%.32s'", f->path, sh, nm,
                       dt->valuestring);
    int nd = cJSON_GetArraySize(shape);
    if (nd > SPK_ST_MAX_DIMS)
        return spk_err(SPK_ERR_FORMAT, "%s: tensor '%.*s': %d dimensions (at most %d)", f->path, sh, nm, nd,
                       SPK_ST_MAX_DIMS);
    t->n_dims = nd;
    uint64_t n = 1;
    int overflow = 0;
    for (int i = 0; i < nd; i++) {
        uint64_t d;
        if (!json_uint(cJSON_GetArrayItem(shape, i), &d))
            return spk_err(SPK_ERR_FORMAT, "%s: tensor '%.*s': shape[%d] is not a non-negative integer",
                           f->path, sh, nm, i);
        t->shape[i] = d;
        if (d && n > UINT64_MAX / d)
            overflow = 1;
        n *= d;
    }
    size_t es = dtypes[t->dtype].size;
    if (overflow || n > UINT64_MAX / es)
        return spk_err(SPK_ERR_FORMAT, "%s: tensor '%.*s': element count overflows", f->path, sh, nm);
    t->n_elements = n;
    if (cJSON_GetArraySize(offs) != 2 || !json_uint(cJSON_GetArrayItem(offs, 0), &t->begin) ||
        !json_uint(cJSON_GetArrayItem(offs, 1), &t->end))
        return spk_err(SPK_ERR_FORMAT, "%s: tensor '%.*s': data_offsets must be two non-negative integers",
                       f->path, sh, nm);
    if (t->begin > t->end || t->end > f->data_size)
        return spk_err(SPK_ERR_FORMAT, "%s: tensor '%.*s': data_offsets [%llu, %llu] outside the data section "
                       "of %llu bytes", f->path, sh, nm, (unsigned long long)t->begin,
                       (unsigned long long)t->end, (unsigned long long)f->data_size);
    if (t->end - t->begin != n * es)
        return spk_err(SPK_ERR_FORMAT, "%s: tensor '%.*s': data_offsets [%llu, %llu] hold %llu bytes but %s "
                       "shape of %llu elements needs %llu", f->path, sh, nm, (unsigned long long)t->begin,
                       (unsigned long long)t->end, (unsigned long long)(t->end - t->begin),
                       dtypes[t->dtype].name, (unsigned long long)n, (unsigned long long)(n * es));
    t->data = f->data + t->begin;
    size_t nl = strlen(nm);
    if (nl == 0 || nl > 1024)
        return spk_err(SPK_ERR_FORMAT, "%s: a tensor name of %zu bytes (1..1024)", f->path, nl);
    t->name = malloc(nl + 1);
    if (!t->name)
        return spk_err(SPK_ERR_NOMEM, "%s: out of memory", f->path);
    memcpy(t->name, nm, nl + 1);
    return SPK_OK;
}

static spk_status parse(spk_st_file *f)
{
    if (f->size < 8)
        return spk_err(SPK_ERR_FORMAT, "%s: %zu bytes: shorter than the 8-byte header length", f->path, f->size);
    uint64_t n = 0;
    for (int i = 0; i < 8; i++)
        n |= (uint64_t)f->base[i] << (8 * i);
    if (n > f->size - 8)
        return spk_err(SPK_ERR_FORMAT, "%s: header length %llu runs past the end of the file (%zu bytes)",
                       f->path, (unsigned long long)n, f->size);
    if (n > SPK_ST_MAX_HEADER)
        return spk_err(SPK_ERR_FORMAT, "%s: header length %llu exceeds the cap of %u bytes", f->path,
                       (unsigned long long)n, SPK_ST_MAX_HEADER);
    if (n < 2)
        return spk_err(SPK_ERR_FORMAT, "%s: header length %llu is too short for a JSON object", f->path,
                       (unsigned long long)n);
    f->header_len = n;
    f->data = f->base + 8 + n;
    f->data_size = f->size - 8 - n;
    const char *js = (const char *)f->base + 8, *end = NULL;
    if (js[0] != '{')
        return spk_err(SPK_ERR_FORMAT, "%s: header does not start with '{' (not a JSON object)", f->path);
    cJSON *root = cJSON_ParseWithLengthOpts(js, (size_t)n, &end, 0);
    if (!root) {
        const char *at = cJSON_GetErrorPtr();
        long off = at && at >= js && at <= js + n ? (long)(at - js) : -1;
        return spk_err(SPK_ERR_FORMAT, "%s: header is not valid JSON (error near byte %ld of %llu)", f->path,
                       off, (unsigned long long)n);
    }
    spk_status st = SPK_OK;
    for (const char *p = end; p && p < js + n; p++)
        if (*p != ' ' && *p != '\n' && *p != '\r' && *p != '\t' && *p != '\0') {
            st = spk_err(SPK_ERR_FORMAT, "%s: bytes after the JSON header object at %ld", f->path, (long)(p - js));
            break;
        }
    if (st == SPK_OK && !cJSON_IsObject(root))
        st = spk_err(SPK_ERR_FORMAT, "%s: header is JSON but not an object", f->path);
    size_t count = 0;
    const cJSON *e;
    if (st == SPK_OK)
        cJSON_ArrayForEach(e, root) count++;
    if (st == SPK_OK) {
        f->tensors = calloc(count ? count : 1, sizeof *f->tensors);
        if (!f->tensors)
            st = spk_err(SPK_ERR_NOMEM, "%s: out of memory for %zu tensors", f->path, count);
    }
    int seen_meta = 0;
    if (st == SPK_OK)
        cJSON_ArrayForEach(e, root)
        {
            if (!e->string) {
                st = spk_err(SPK_ERR_FORMAT, "%s: header entry without a name", f->path);
                break;
            }
            if (strcmp(e->string, "__metadata__") == 0) {
                if (seen_meta++ || !cJSON_IsObject(e)) {
                    st = spk_err(SPK_ERR_FORMAT, "%s: __metadata__ must be one object", f->path);
                    break;
                }
                const cJSON *m;
                cJSON_ArrayForEach(m, e) if (!cJSON_IsString(m))
                {
                    st = spk_err(SPK_ERR_FORMAT, "%s: __metadata__ value '%.*s' is not a string", f->path,
                                 SHOWN, m->string ? m->string : "?");
                    break;
                }
                if (st != SPK_OK)
                    break;
                continue;
            }
            st = parse_entry(f, e, &f->tensors[f->n_tensors]);
            if (f->tensors[f->n_tensors].name)
                f->n_tensors++;
            if (st != SPK_OK)
                break;
        }
    cJSON_Delete(root);
    if (st != SPK_OK)
        return st;
    /* unique names */
    if (f->n_tensors > 1) {
        const spk_st_tensor **v = malloc(f->n_tensors * sizeof *v);
        if (!v)
            return spk_err(SPK_ERR_NOMEM, "%s: out of memory", f->path);
        for (size_t i = 0; i < f->n_tensors; i++)
            v[i] = &f->tensors[i];
        qsort(v, f->n_tensors, sizeof *v, by_name);
        for (size_t i = 1; i < f->n_tensors && st == SPK_OK; i++)
            if (strcmp(v[i - 1]->name, v[i]->name) == 0)
                st = spk_err(SPK_ERR_FORMAT, "%s: tensor '%.*s' appears twice", f->path, SHOWN, v[i]->name);
        free(v);
        if (st != SPK_OK)
            return st;
    }
    /* the tensors tile the data section: sorted by offset, each starts where the last ended */
    qsort(f->tensors, f->n_tensors, sizeof *f->tensors, by_begin);
    uint64_t at = 0;
    for (size_t i = 0; i < f->n_tensors; i++) {
        const spk_st_tensor *t = &f->tensors[i];
        if (t->begin < at)
            return spk_err(SPK_ERR_FORMAT, "%s: tensor '%.*s' at [%llu, %llu] overlaps '%.*s' ending at %llu",
                           f->path, SHOWN, t->name, (unsigned long long)t->begin, (unsigned long long)t->end,
                           SHOWN, f->tensors[i - 1].name, (unsigned long long)at);
        if (t->begin > at)
            return spk_err(SPK_ERR_FORMAT, "%s: %llu unused bytes before tensor '%.*s' at offset %llu", f->path,
                           (unsigned long long)(t->begin - at), SHOWN, t->name, (unsigned long long)t->begin);
        at = t->end;
    }
    if (at != f->data_size)
        return spk_err(SPK_ERR_FORMAT, "%s: the tensors end at byte %llu of a %llu-byte data section "
                       "(truncated or trailing data)", f->path, (unsigned long long)at,
                       (unsigned long long)f->data_size);
    return SPK_OK;
}

static spk_status finish(spk_st_file *f, spk_st_file **out)
{
    spk_status st = parse(f);
    if (st != SPK_OK) {
        spk_st_close(f);
        return st;
    }
    *out = f;
    return SPK_OK;
}

spk_status spk_st_open_memory(const void *buf, size_t len, const char *name, spk_st_file **out)
{
    if (!out || (!buf && len))
        return spk_err(SPK_ERR_INVALID_ARG, "safetensors: NULL argument");
    *out = NULL;
    spk_st_file *f = calloc(1, sizeof *f);
    if (!f)
        return spk_err(SPK_ERR_NOMEM, "safetensors: out of memory");
    f->base = buf;
    f->size = len;
    snprintf(f->path, sizeof f->path, "%s", name ? name : "<memory>");
    return finish(f, out);
}

spk_status spk_st_open(const char *path, spk_st_file **out)
{
    if (!out || !path)
        return spk_err(SPK_ERR_INVALID_ARG, "safetensors: NULL argument");
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return spk_err(SPK_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return spk_err(SPK_ERR_IO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return spk_err(SPK_ERR_IO, "%s: not a regular file", path);
    }
    size_t size = (size_t)sb.st_size;
    if (size < 8) {
        close(fd);
        return spk_err(SPK_ERR_FORMAT, "%s: %zu bytes: shorter than the 8-byte header length", path, size);
    }
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (map == MAP_FAILED)
        return spk_err(SPK_ERR_IO, "%s: mmap of %zu bytes failed: %s", path, size, strerror(e));
    madvise(map, size, MADV_RANDOM);
    spk_st_file *f = calloc(1, sizeof *f);
    if (!f) {
        munmap(map, size);
        return spk_err(SPK_ERR_NOMEM, "safetensors: out of memory");
    }
    f->base = map;
    f->size = size;
    f->owns_map = 1;
    snprintf(f->path, sizeof f->path, "%s", path);
    return finish(f, out);
}

const spk_st_tensor *spk_st_find(const spk_st_file *f, const char *name)
{
    if (!f || !name)
        return NULL;
    for (size_t i = 0; i < f->n_tensors; i++)
        if (strcmp(f->tensors[i].name, name) == 0)
            return &f->tensors[i];
    return NULL;
}
