/*
 * GGUF v2/v3 reader: maps a file (or wraps a caller's buffer), validates every header field,
 * the metadata and the tensor table before anything uses them, and answers lookups.
 */
#ifndef SPK_MODEL_GGUF_H
#define SPK_MODEL_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/dtype.h"
#include "sparkinfer/sparkinfer.h"

/* Metadata value types, numbered as in the GGUF spec. */
typedef enum spk_gguf_vtype {
    GGUF_UINT8 = 0, GGUF_INT8 = 1, GGUF_UINT16 = 2, GGUF_INT16 = 3, GGUF_UINT32 = 4,
    GGUF_INT32 = 5, GGUF_FLOAT32 = 6, GGUF_BOOL = 7, GGUF_STRING = 8, GGUF_ARRAY = 9,
    GGUF_UINT64 = 10, GGUF_INT64 = 11, GGUF_FLOAT64 = 12, GGUF_VTYPE_COUNT
} spk_gguf_vtype;

/* A string inside the mapped file: not NUL-terminated. */
typedef struct spk_gguf_str {
    const char *ptr;
    uint64_t len;
} spk_gguf_str;

typedef struct spk_gguf_kv {
    spk_gguf_str key;
    spk_gguf_vtype type;
    union {
        uint64_t u;       /* UINT8..UINT64, BOOL */
        int64_t i;        /* INT8..INT64 */
        double f;         /* FLOAT32, FLOAT64 */
        spk_gguf_str s;       /* STRING */
        struct {
            spk_gguf_vtype type;      /* element type (never ARRAY: nested arrays are rejected) */
            uint64_t count;
            const uint8_t *data;  /* first element in the file */
            uint64_t nbytes;      /* bytes the elements occupy */
        } arr;
    } v;
} spk_gguf_kv;

#define GGUF_MAX_DIMS 4

typedef struct spk_gguf_tensor {
    spk_gguf_str name;
    uint32_t n_dims;
    uint64_t ne[GGUF_MAX_DIMS];  /* ne[0] is the contiguous (row) dimension; unused dims are 1 */
    spk_dtype type;
    uint64_t n_elements;
    uint64_t offset;             /* from the start of the data section */
    uint64_t nbytes;
    const void *data;            /* inside the mapping, aligned to `alignment` */
} spk_gguf_tensor;

typedef struct spk_gguf_file {
    const uint8_t *base;         /* mapping or caller buffer */
    size_t size;
    int owns_map;
    uint32_t version;
    uint64_t alignment;
    uint64_t data_offset;        /* start of the data section (aligned); may equal or, in a
                                    file without tensors, pass `size` */
    uint64_t n_kv;
    spk_gguf_kv *kv;
    uint64_t n_tensors;
    spk_gguf_tensor *tensors;
    char path[512];
    struct spk_hf_model *hf;     /* a Hugging Face directory (model/hf.h): owns what the tables
                                    point to; NULL for a GGUF file */
} spk_gguf_file;

/* Map `path` read-only (MAP_PRIVATE; the fd is closed before returning) and validate it.
 * Errors: IO (open/fstat/mmap, with strerror), FORMAT (malformed, empty or short file),
 * UNSUPPORTED (GGUF v1, unknown or big-endian version, tensor type this library lacks),
 * NOMEM. The message names the file, the item (key, tensor) and the numbers. On error *out is
 * NULL and nothing is left mapped. Checked before use: every string/array length against the
 * bytes left; kv and tensor counts against the bytes left (before anything is allocated, so the
 * tables take at most a small multiple of the file size); nested arrays; value types; bools;
 * duplicate keys and tensor names; general.alignment (uint32, nonzero power of two, default
 * 32); n_dims 1..4; dimensions nonzero, < 2^63, product without overflow; ne[0] a multiple of
 * the block size; offsets aligned, inside the data section and not overlapping.
 * The result is read-only and may be shared by threads; spk_gguf_close must not race. */
spk_status spk_gguf_open(const char *path, spk_gguf_file **out);
/* A directory path is a Hugging Face checkpoint: spk_gguf_open hands it to spk_hf_open
 * (model/hf.h), which presents it as the GGUF file llama.cpp's converter would write. */

/* Validate a caller-owned buffer (must outlive the result). Used by tests and the fuzzer.
 * Same checks and errors as spk_gguf_open; messages name the file "<memory>". */
spk_status spk_gguf_open_memory(const void *buf, size_t len, spk_gguf_file **out);

/* Unmap (if spk_gguf_open mapped it) and free. NULL is fine. */
void spk_gguf_close(spk_gguf_file *f);

/* The file's identity: BLAKE2b over its size, its whole header (metadata and tensor directory)
 * and 4 KiB at the start, middle and end of every tensor's data (about 12 KiB per tensor are
 * read, so ranks stay within their own slices). Two files that differ in shape, metadata or
 * weights (another fine-tune, quantization or conversion) differ here; a file edited between
 * the sampled bytes does not. */
#define SPK_GGUF_ID_BYTES 32
void spk_gguf_identity(const spk_gguf_file *f, uint8_t out[SPK_GGUF_ID_BYTES]);

/* Lookups: NULL / NOT_FOUND if absent. Typed getters convert between integer types when the
 * value fits, and report FORMAT (naming the key) when the type is wrong. */
const spk_gguf_kv *spk_gguf_find(const spk_gguf_file *f, const char *key);
spk_status spk_gguf_get_u32(const spk_gguf_file *f, const char *key, uint32_t *out);
spk_status spk_gguf_get_i64(const spk_gguf_file *f, const char *key, int64_t *out);
spk_status spk_gguf_get_f32(const spk_gguf_file *f, const char *key, float *out);
spk_status spk_gguf_get_bool(const spk_gguf_file *f, const char *key, bool *out);
spk_status spk_gguf_get_str(const spk_gguf_file *f, const char *key, spk_gguf_str *out);
/* An array whose elements have type `elem` (any type if elem == GGUF_VTYPE_COUNT). */
spk_status spk_gguf_get_arr(const spk_gguf_file *f, const char *key, spk_gguf_vtype elem, const spk_gguf_kv **out);

/* Walk an array of strings: start with *pos = 0; each call returns the next string.
 * (Strings were bounds-checked at open.) */
spk_gguf_str spk_gguf_arr_str_next(const spk_gguf_kv *arr, uint64_t *pos);

const spk_gguf_tensor *spk_gguf_find_tensor(const spk_gguf_file *f, const char *name);

/* Compare a spk_gguf_str with a C string. */
bool spk_gguf_str_eq(spk_gguf_str s, const char *c);

/* Element i of an integer or bool array as int64; false if i is out of range, the elements are
 * not integers, or a uint64 element exceeds INT64_MAX. Elements need not be aligned. */
bool spk_gguf_arr_int(const spk_gguf_kv *arr, uint64_t i, int64_t *out);

/* Element i of a float or integer array as double; false if out of range or not numeric. */
bool spk_gguf_arr_float(const spk_gguf_kv *arr, uint64_t i, double *out);

/* Static names for messages: a metadata value type ("uint32") and a ggml tensor type id
 * ("Q4_K", also for ids this library does not support, e.g. 6 -> "Q5_0"); "unknown" otherwise. */
const char *spk_gguf_vtype_name(uint32_t t);
const char *spk_gguf_type_name(uint32_t t);

#endif
