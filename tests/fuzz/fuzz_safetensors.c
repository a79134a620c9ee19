/*
 * libFuzzer target for the safetensors header parser (model/safetensors.c): any input must give
 * OK, FORMAT or UNSUPPORTED (never a crash, an out-of-bounds read or a huge allocation), and an
 * accepted file must be consistent: tensors sorted, tiling the data section exactly, each one's
 * bytes matching its dtype and shape, names unique and found by lookup.
 * Build: cmake -DSPK_FUZZ=ON with clang; run: ./fuzz_safetensors -max_total_time=60 corpus/
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model/safetensors.h"

static volatile uint8_t sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf)
        return 0;
    if (size)
        memcpy(buf, data, size);
    spk_st_file *f = NULL;
    spk_status st = spk_st_open_memory(buf, size, "<fuzz>", &f);
    if (st != SPK_OK && st != SPK_ERR_FORMAT && st != SPK_ERR_UNSUPPORTED)
        abort();
    if (st != SPK_OK) {
        if (f)
            abort();
        free(buf);
        return 0;
    }
    uint64_t at = 0;
    for (size_t i = 0; i < f->n_tensors; i++) {
        const spk_st_tensor *t = &f->tensors[i];
        if (t->begin != at || t->end < t->begin || t->data != f->data + t->begin ||
            t->end - t->begin != t->n_elements * spk_st_dtype_size(t->dtype) || t->n_dims > SPK_ST_MAX_DIMS)
            abort();
        if (t->data < buf || t->data + (t->end - t->begin) > buf + size)
            abort();
        if (t->end > t->begin)
            sink ^= t->data[0] ^ t->data[t->end - t->begin - 1];
        if (spk_st_find(f, t->name) != t)
            abort();
        at = t->end;
    }
    if (at != f->data_size || f->data + f->data_size != buf + size)
        abort();
    spk_st_close(f);
    free(buf);
    return 0;
}
