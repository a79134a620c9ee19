/*
 * safetensors reader: maps a file (or wraps a caller's buffer) and validates the whole header
 * (JSON, parsed with cJSON) before anything uses it: header length against the file and a cap,
 * every entry's dtype, shape and data_offsets, offsets inside the data section, tensors that
 * cover the data section exactly (no overlap, no gap), unique names, __metadata__ strings.
 */
#ifndef SPK_MODEL_SAFETENSORS_H
#define SPK_MODEL_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "sparkinfer/sparkinfer.h"

/* Header cap (as the reference implementation's): 100 MB of JSON. */
#define SPK_ST_MAX_HEADER (100u * 1000u * 1000u)
#define SPK_ST_MAX_DIMS 8

typedef enum spk_st_dtype {
    SPK_ST_BOOL, SPK_ST_U8, SPK_ST_I8, SPK_ST_I16, SPK_ST_U16, SPK_ST_F16, SPK_ST_BF16, SPK_ST_I32,
    SPK_ST_U32, SPK_ST_F32, SPK_ST_F64, SPK_ST_I64, SPK_ST_U64, SPK_ST_F8_E4M3, SPK_ST_F8_E5M2,
    SPK_ST_F8_E8M0, SPK_ST_DTYPE_COUNT
} spk_st_dtype;

typedef struct spk_st_tensor {
    char *name;                  /* NUL-terminated copy */
    spk_st_dtype dtype;
    int n_dims;                  /* 0 (scalar) .. SPK_ST_MAX_DIMS */
    uint64_t shape[SPK_ST_MAX_DIMS]; /* outermost first, as in the file (torch order) */
    uint64_t n_elements;
    uint64_t begin, end;         /* data_offsets, relative to the data section */
    const uint8_t *data;         /* data section + begin */
} spk_st_tensor;

typedef struct spk_st_file {
    char path[512];
    const uint8_t *base;         /* mapping or caller buffer */
    size_t size;
    int owns_map;
    uint64_t header_len;         /* the JSON's bytes (after the 8-byte length) */
    const uint8_t *data;         /* base + 8 + header_len */
    uint64_t data_size;
    size_t n_tensors;
    spk_st_tensor *tensors;      /* sorted by begin */
} spk_st_file;

/* Element size of a dtype (bytes); name for messages ("BF16"). */
size_t spk_st_dtype_size(spk_st_dtype t);
const char *spk_st_dtype_name(spk_st_dtype t);

/* Map `path` read-only (MADV_RANDOM) and validate it. Errors: IO (open/stat/mmap), FORMAT
 * (malformed: the message names the file, the tensor and the numbers), UNSUPPORTED (a dtype
 * string this reader does not know), NOMEM. On error *out is NULL and nothing stays mapped. */
spk_status spk_st_open(const char *path, spk_st_file **out);

/* Validate a caller-owned buffer (must outlive the result); `name` is used in messages. */
spk_status spk_st_open_memory(const void *buf, size_t len, const char *name, spk_st_file **out);

void spk_st_close(spk_st_file *f);

const spk_st_tensor *spk_st_find(const spk_st_file *f, const char *name);

#endif
