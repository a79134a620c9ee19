/*
 * Matrix multiply of float activations against (quantized) weight matrices.
 * Weights are row-major [n_out][n_in] in a GGUF type; activations are first quantized to the
 * matching activation format (e.g. Q8_1 for Q4_1 weights), once per input, then any number of
 * weight matrices can be applied to them. SIMD paths are chosen at run time.
 */
#ifndef SPK_CPU_MATMUL_H
#define SPK_CPU_MATMUL_H

#include <stddef.h>

#include "common/dtype.h"

/* Activation format used with weights of type `wtype` (F32 for float weights). Q8_0/Q8_1 name
 * the arithmetic (nearest rounding, d = amax/127 per 32 values, s = d * sum(q)); the bytes are
 * laid out for the kernels, not as GGUF blocks (see cpu/quant.h), and only spk_matmul reads them.
 * K-quant weights (Q2_K..Q6_K) read the rows' K-quant section instead, whose d is per 256 values
 * (llama.cpp's Q8_K arithmetic); this still answers Q8_0/Q8_1 for them (no Q8_K dtype). */
spk_dtype spk_act_type(spk_dtype wtype);

/* Bytes needed for n_tok quantized activation rows of n values for weights of `wtype`. */
size_t spk_act_size(spk_dtype wtype, int n, int n_tok);

/* Quantize rows [tok0, tok1) of x (n_tok x n floats, row-major) into act.
 * Thread-sliced use: each thread passes its own token range (or call once for all). */
void spk_act_quantize(void *act, spk_dtype wtype, const float *x, int n, int tok0, int tok1);

/* Whether (wtype, n_in) is supported: type known and n_in a multiple of its block. */
int spk_matmul_supported(spk_dtype wtype, int n_in);

/*
 * out[t * ld_out + r] = dot(w row r, activation row t) for r in [row0, row1), t < n_tok.
 * act comes from spk_act_quantize with the same wtype and n_in. Threads call this with
 * disjoint row ranges (see spk_split; rows in multiples of 16 are best).
 */
void spk_matmul(float *out, int ld_out, const void *w, spk_dtype wtype, const void *act,
                int n_in, int n_tok, int row0, int row1);

/*
 * Packed weight layouts (weight repacking at load, cpu/repack.c). SPK_MM_LAYOUT_ROWS is the
 * file's row-major layout; SPK_MM_LAYOUT_R8 groups rows 8 at a time in the order a type's 8-row
 * kernel reads (the leftover n_out % 8 rows stay in the file's layout at their offsets). A packed
 * matrix has the same size as the file's and the same results, bit for bit, at every ISA.
 */
#define SPK_MM_LAYOUT_ROWS 0
#define SPK_MM_LAYOUT_R8 1

/* The layout the kernels of the ISA in use now want for (wtype, n_in) weights: SPK_MM_LAYOUT_R8
 * where a packed kernel exists (x86 AVX2 and AVX-512: every quantized type), else
 * SPK_MM_LAYOUT_ROWS (nothing to gain). */
int spk_matmul_pack_layout(spk_dtype wtype, int n_in);
/* Whether spk_matmul_pack knows (wtype, layout). */
int spk_matmul_layout_known(spk_dtype wtype, int layout);
/* The n_out rows at src (file layout) into `layout` at dst (the same size; dst == src packs in
 * place, one 8-row group at a time through a group-sized buffer, without `drop`; otherwise not
 * overlapping src). 0, or -1 if (wtype, layout, n_in) is not packable (checked before anything is
 * read) or the group buffer cannot be allocated (src untouched).
 * With `drop`, src is read about SPK_PACK_CHUNK bytes at a time and the whole pages of src a
 * chunk came from are dropped (MADV_DONTNEED) before the next is read: packing a mapped matrix then
 * holds the packed copy and one chunk, not two copies (the caller must be able to lose src's
 * pages: a file mapping re-reads them if touched again, a private anonymous one reads zeros). */
#define SPK_PACK_CHUNK ((size_t)1 << 20)
int spk_matmul_pack(void *dst, const void *src, spk_dtype wtype, int layout, int n_in, int n_out, int drop);
/* Row r of a matrix in `layout` back in the file's layout (spk_dtype_row_size bytes at dst).
 * 0, or -1 for an unknown layout or a row out of range. */
int spk_matmul_unpack_row(void *dst, const void *w, spk_dtype wtype, int layout, int n_in, int n_out, int r);
/* Blocks [b0, b1) of row r of it, likewise ((b1 - b0) blocks of the type at dst). */
int spk_matmul_unpack_blocks(void *dst, const void *w, spk_dtype wtype, int layout, int n_in, int n_out, int r,
                             int b0, int b1);
/* spk_matmul of weights in `layout` (n_out rows in all), any row range. A packed row's result does
 * not depend on the range, and equals spk_matmul's on the unpacked matrix bit for bit for ranges
 * that start on the 8-row grid and end on it or at n_out (spk_split's 16-row thread shares). An
 * ISA with no packed kernel for the type (e.g. forced scalar) unpacks each 8-row group into its
 * own kernel (slow, exact). */
void spk_matmul_layout(float *out, int ld_out, const void *w, spk_dtype wtype, int layout, int n_out,
                       const void *act, int n_in, int n_tok, int row0, int row1);

#endif
