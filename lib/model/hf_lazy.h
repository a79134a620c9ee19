/*
 * Converted tensors of a Hugging Face directory (model/hf.c), made on first touch: each is a
 * region of anonymous memory registered with userfaultfd; a page's first read converts the rows
 * that page holds (FP8/NVFP4 -> BF16, MXFP4 repacking, llama's Q/K row permutation, expert
 * stacking) and nothing else, so a rank converts, and keeps resident, only the slices it reads.
 * Where userfaultfd is not available (or SPK_HF_EAGER=1), every region is converted at open.
 */
#ifndef SPK_MODEL_HF_LAZY_H
#define SPK_MODEL_HF_LAZY_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "sparkinfer/sparkinfer.h"

typedef struct spk_hf_lazy spk_hf_lazy;

/* Rows [r0, r1) of z's tensor into dst ((r1 - r0) * z->row_bytes bytes). Runs on the fault
 * thread: reads only the safetensors mappings and z's parameters, never another region. */
typedef void (*spk_hf_fill_fn)(const spk_hf_lazy *z, uint64_t r0, uint64_t r1, uint8_t *dst);

struct spk_hf_lazy {
    char name[96];              /* GGUF tensor name, for spk_hf_lazy_done */
    uint8_t *base;              /* set by spk_hf_lazy_add */
    size_t size, map_size;      /* tensor bytes; mapping (whole pages) */
    size_t row_bytes;
    uint64_t n_rows;
    spk_hf_fill_fn fill;
    const void *p[4];           /* the fill's parameters (source tensors, scales, sub-fills) */
    uint64_t u[8];
    _Atomic uint64_t done;      /* bytes converted so far (a page at a time when lazy) */
    const uint8_t *src;         /* the source bytes (file-backed), dropped once every page is made */
    size_t src_len;
    int src_dropped;            /* fault thread only */
};

typedef struct spk_hf_lazyset spk_hf_lazyset;

/* A set for one model: lazy when userfaultfd works here and SPK_HF_EAGER is not 1. NULL: out of
 * memory. */
spk_hf_lazyset *spk_hf_lazy_new(void);

/* Give z (which must outlive the set) its memory: lazy, a reserved region filled on first
 * touch once spk_hf_lazy_start ran; eager, converted now. */
spk_status spk_hf_lazy_add(spk_hf_lazyset *s, spk_hf_lazy *z);

/* Register the regions and start the fault thread (no-op when eager). Nothing may touch a lazy
 * region before this. */
spk_status spk_hf_lazy_start(spk_hf_lazyset *s);

/* Bytes converted so far: of the tensor `name`, or of all (name NULL). */
uint64_t spk_hf_lazy_done(const spk_hf_lazyset *s, const char *name);

/* 1 when regions are filled on first touch. */
int spk_hf_lazy_is_lazy(const spk_hf_lazyset *s);

/* Stop the fault thread and unmap every region. */
void spk_hf_lazy_free(spk_hf_lazyset *s);

#endif
