/*
 * The CUDA backend: the ops of lib/backend/backend.h as kernels in one stream, built as a module
 * (plugins/spk_backend_cuda.so) that the core loads with dlopen (lib/backend/loader.c), so that
 * libsparkinfer itself NEEDs no CUDA library. Every kernel has its CPU twin in lib/cpu/ and
 * tests/unit/test_backend.c runs the same conformance suite on both.
 *
 * Numerics follow the CPU backend: f32 activations, f16 KV cache, RoPE angles reduced in double,
 * softmax with the running maximum. What differs: matmul dequantizes the weights and multiplies
 * by f32 activations (the CPU quantizes activations to Q8 for its integer dot products), so the
 * two agree to float rounding plus the CPU's activation quantization error, not bit for bit.
 *
 * Weights: on a GPU that reads pageable host memory through the host's page tables (GB10 /
 * Grace: cudaDevAttrPageableMemoryAccessUsesHostPageTables) the kernels read the mmap'ed file in
 * place and nothing is copied, so unified-memory machines do not hold the model twice; elsewhere
 * upload() copies each tensor into device memory once at load.
 */
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "backend/backend.h"
#include "backend/module.h"
}

#define WARP 32

/* Bytes of a row of n elements of type (the module does not link the core's dtype.c). */
static size_t row_bytes(spk_dtype t, size_t n)
{
    switch (t) {
    case SPK_DT_F32: return 4 * n;
    case SPK_DT_F16:
    case SPK_DT_BF16: return 2 * n;
    case SPK_DT_Q4_0: return n / 32 * sizeof(spk_block_q4_0);
    case SPK_DT_Q4_1: return n / 32 * sizeof(spk_block_q4_1);
    case SPK_DT_Q8_0: return n / 32 * sizeof(spk_block_q8_0);
    case SPK_DT_Q4_K: return n / 256 * sizeof(spk_block_q4_K);
    case SPK_DT_Q6_K: return n / 256 * sizeof(spk_block_q6_K);
    case SPK_DT_Q5_0: return n / 32 * sizeof(spk_block_q5_0);
    case SPK_DT_Q5_1: return n / 32 * sizeof(spk_block_q5_1);
    case SPK_DT_Q5_K: return n / 256 * sizeof(spk_block_q5_K);
    case SPK_DT_Q3_K: return n / 256 * sizeof(spk_block_q3_K);
    case SPK_DT_Q2_K: return n / 256 * sizeof(spk_block_q2_K);
    case SPK_DT_MXFP4: return n / 32 * sizeof(spk_block_mxfp4);
    default: return 0;
    }
}

/* ---- element decoding (one element of a quantized block; the CPU twins are lib/cpu/ops.c's
 * deq_* functions) ------------------------------------------------------------------------- */

__device__ __forceinline__ float ld_half(const uint8_t *p)
{
    const uint16_t h = (uint16_t)p[0] | ((uint16_t)p[1] << 8);
    return __half2float(__ushort_as_half(h));
}

__device__ __forceinline__ float elem_q4_0(const uint8_t *b, int i)
{
    const uint8_t q = b[2 + (i & 15)];
    return ld_half(b) * (float)((i < 16 ? (q & 15) : (q >> 4)) - 8);
}

__device__ __forceinline__ float elem_q4_1(const uint8_t *b, int i)
{
    const uint8_t q = b[4 + (i & 15)];
    return ld_half(b) * (float)(i < 16 ? (q & 15) : (q >> 4)) + ld_half(b + 2);
}

__device__ __forceinline__ float elem_q8_0(const uint8_t *b, int i) { return ld_half(b) * (float)(int8_t)b[2 + i]; }

__device__ __forceinline__ float elem_q4_k(const uint8_t *b, int i)
{
    const uint8_t *s = b + 4, *qs = b + 4 + SPK_K_SCALE_SIZE;
    const int j = i >> 5, l = i & 31;
    int sc, mn;
    if (j < 4) {
        sc = s[j] & 63;
        mn = s[j + 4] & 63;
    } else {
        sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
        mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
    const int q = (qs[(j >> 1) * 32 + l] >> ((j & 1) * 4)) & 0xF;
    return ld_half(b) * (float)sc * (float)q - ld_half(b + 2) * (float)mn;
}

__device__ __forceinline__ float elem_q6_k(const uint8_t *b, int i)
{
    const uint8_t *ql = b, *qh = b + SPK_QK_K / 2;
    const int8_t *sc = (const int8_t *)(b + SPK_QK_K / 2 + SPK_QK_K / 4);
    const float d = ld_half(b + SPK_QK_K / 2 + SPK_QK_K / 4 + SPK_QK_K / 16);
    const int half = i >> 7, r = i & 127, k = r >> 5, l = r & 31;
    const int lo = (ql[half * 64 + l + 32 * (k & 1)] >> (4 * (k >> 1))) & 0xF;
    const int hi = (qh[half * 32 + l] >> (2 * k)) & 3;
    return d * (float)sc[half * 8 + 2 * k + l / 16] * (float)((lo | (hi << 4)) - 32);
}

/* Q5_0 / Q5_1: low nibbles hold elements 0-15, high 16-31; bit i of the little-endian qh is
 * element i's fifth bit (cpu/quant.c q5_unpack). */
__device__ __forceinline__ int q5_val(const uint8_t *qh4, const uint8_t *qs, int i)
{
    const uint32_t qh = (uint32_t)qh4[0] | (uint32_t)qh4[1] << 8 | (uint32_t)qh4[2] << 16 | (uint32_t)qh4[3] << 24;
    const int nib = i < 16 ? (qs[i] & 15) : (qs[i - 16] >> 4);
    return nib | (int)((qh >> i) & 1) << 4;
}

__device__ __forceinline__ float elem_q5_0(const uint8_t *b, int i) { return ld_half(b) * (float)(q5_val(b + 2, b + 6, i) - 16); }

__device__ __forceinline__ float elem_q5_1(const uint8_t *b, int i)
{
    return ld_half(b) * (float)q5_val(b + 4, b + 8, i) + ld_half(b + 2);
}

/* The 6-bit scale and min of sub-block j of a Q4_K/Q5_K super-block. */
__device__ __forceinline__ void k4_scale_min(const uint8_t *s, int j, int *sc, int *mn)
{
    if (j < 4) {
        *sc = s[j] & 63;
        *mn = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
        *mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

/* Q5_K: d, dmin, 12 scale bytes, qh[32], qs[128]; chunk c of 64 takes qs[32c..] (low nibbles
 * first), fifth bits qh[l] bit 2c (low half) and 2c+1 (high half). */
__device__ __forceinline__ float elem_q5_k(const uint8_t *b, int i)
{
    const uint8_t *s = b + 4, *qh = b + 4 + SPK_K_SCALE_SIZE, *qs = qh + SPK_QK_K / 8;
    const int j = i >> 5, l = i & 31, c = j >> 1, hi = j & 1;
    int sc, mn;
    k4_scale_min(s, j, &sc, &mn);
    const int q = ((qs[c * 32 + l] >> (4 * hi)) & 15) | ((qh[l] >> (2 * c + hi)) & 1) << 4;
    return ld_half(b) * (float)sc * (float)q - ld_half(b + 2) * (float)mn;
}

/* Q3_K: hmask[32], qs[64], scales[12], d; element 128h + 32k + l: low bits qs[32h + l] >> 2k,
 * high bit hmask[l] bit 4h + k (clear: minus 4); 16 signed 6-bit scales biased by 32. */
__device__ __forceinline__ float elem_q3_k(const uint8_t *b, int i)
{
    const uint8_t *hm = b, *qs = b + 32, *s = b + 96;
    const int h = i >> 7, k = (i >> 5) & 3, l = i & 31, j = i >> 4;
    const int lo = (qs[32 * h + l] >> (2 * k)) & 3, hb = (hm[l] >> (4 * h + k)) & 1;
    const int sl = j < 8 ? s[j] & 15 : s[j - 8] >> 4, sh = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
    return ld_half(b + 108) * (float)((sl | sh << 4) - 32) * (float)(lo - (hb ? 0 : 4));
}

/* Q2_K: scales[16] (4-bit scale low, min high, per 16 values), qs[64], d, dmin. */
__device__ __forceinline__ float elem_q2_k(const uint8_t *b, int i)
{
    const uint8_t *qs = b + 16;
    const int h = i >> 7, k = (i >> 5) & 3, l = i & 31;
    const int q = (qs[32 * h + l] >> (2 * k)) & 3;
    const uint8_t s = b[i >> 4];
    return ld_half(b + 80) * (float)(s & 15) * (float)q - ld_half(b + 82) * (float)(s >> 4);
}

/* MXFP4: an E8M0 exponent, then 16 bytes of E2M1 pairs (low nibbles first). */
__device__ __forceinline__ float elem_mxfp4(const uint8_t *b, int i)
{
    const int8_t vals[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12}; /* doubled E2M1 */
    const uint8_t e = b[0], q = b[1 + (i & 15)];
    const uint32_t bits = e < 2 ? 0x00200000u << e : (uint32_t)(e - 1) << 23; /* 2^(e-128) */
    return __uint_as_float(bits) * (float)vals[i < 16 ? (q & 15) : (q >> 4)];
}

/* Element j of a row of `type` (j < the row's length). */
__device__ __forceinline__ float row_elem(const uint8_t *row, int type, int j)
{
    switch (type) {
    case SPK_DT_F32: return ((const float *)row)[j];
    case SPK_DT_F16: return ld_half(row + 2 * (size_t)j);
    case SPK_DT_BF16: {
        const uint32_t u = ((uint32_t)row[2 * (size_t)j] | ((uint32_t)row[2 * (size_t)j + 1] << 8)) << 16;
        return __uint_as_float(u);
    }
    case SPK_DT_Q4_0: return elem_q4_0(row + (size_t)(j / 32) * sizeof(spk_block_q4_0), j & 31);
    case SPK_DT_Q4_1: return elem_q4_1(row + (size_t)(j / 32) * sizeof(spk_block_q4_1), j & 31);
    case SPK_DT_Q8_0: return elem_q8_0(row + (size_t)(j / 32) * sizeof(spk_block_q8_0), j & 31);
    case SPK_DT_Q4_K: return elem_q4_k(row + (size_t)(j / 256) * sizeof(spk_block_q4_K), j & 255);
    case SPK_DT_Q6_K: return elem_q6_k(row + (size_t)(j / 256) * sizeof(spk_block_q6_K), j & 255);
    case SPK_DT_Q5_0: return elem_q5_0(row + (size_t)(j / 32) * sizeof(spk_block_q5_0), j & 31);
    case SPK_DT_Q5_1: return elem_q5_1(row + (size_t)(j / 32) * sizeof(spk_block_q5_1), j & 31);
    case SPK_DT_Q5_K: return elem_q5_k(row + (size_t)(j / 256) * sizeof(spk_block_q5_K), j & 255);
    case SPK_DT_Q3_K: return elem_q3_k(row + (size_t)(j / 256) * sizeof(spk_block_q3_K), j & 255);
    case SPK_DT_Q2_K: return elem_q2_k(row + (size_t)(j / 256) * sizeof(spk_block_q2_K), j & 255);
    case SPK_DT_MXFP4: return elem_mxfp4(row + (size_t)(j / 32) * sizeof(spk_block_mxfp4), j & 31);
    default: return 0.0f;
    }
}

__device__ __forceinline__ float warp_sum(float v)
{
    for (int o = WARP / 2; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* ---- kernels -------------------------------------------------------------------------------- */

/* x[t] = row token[t] - v0 of the table, zeros outside it. grid (n_tok), block 256. */
__global__ void k_embed(float *x, const uint8_t *table, size_t row_bytes, int type, int n_rows, const int32_t *token,
                        int v0, int E)
{
    const int t = blockIdx.x, row = token[t] - v0;
    float *xt = x + (size_t)t * E;
    for (int j = threadIdx.x; j < E; j += blockDim.x)
        xt[j] = (row >= 0 && row < n_rows) ? row_elem(table + (size_t)row * row_bytes, type, j) : 0.0f;
}

/* out[r] = rmsnorm(x[rows ? rows[r] : r]) * w. grid (n_rows), block 256. */
__global__ void k_rmsnorm(float *out, const float *x, const int *rows, const float *w, int n, float eps)
{
    __shared__ float part[32];
    const int r = blockIdx.x;
    const float *xr = x + (size_t)(rows ? rows[r] : r) * n;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        ss += xr[i] * xr[i];
    ss = warp_sum(ss);
    if ((threadIdx.x & 31) == 0)
        part[threadIdx.x >> 5] = ss;
    __syncthreads();
    if (threadIdx.x < 32) {
        float v = threadIdx.x < (blockDim.x >> 5) ? part[threadIdx.x] : 0.0f;
        v = warp_sum(v);
        if (threadIdx.x == 0)
            part[0] = v;
    }
    __syncthreads();
    const float scale = rsqrtf(part[0] / (float)n + eps);
    float *o = out + (size_t)r * n;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        o[i] = xr[i] * scale * w[i];
}

/* Per-head RMSNorm in place: one warp per (token, head) run of head_dim values. grid
 * (ceil(n_tok * n_heads / 4)), block (32, 4). */
__global__ void k_head_rmsnorm(float *x, const float *w, int n_runs, int hd, float eps)
{
    const int run = blockIdx.x * 4 + threadIdx.y, lane = threadIdx.x;
    if (run >= n_runs)
        return;
    float *r = x + (size_t)run * hd;
    float ss = 0.0f;
    for (int i = lane; i < hd; i += WARP)
        ss += r[i] * r[i];
    ss = warp_sum(ss);
    const float scale = rsqrtf(ss / (float)hd + eps);
    for (int i = lane; i < hd; i += WARP)
        r[i] = r[i] * scale * w[i];
}

/* out [n_tok][n_out] = act [n_tok][n_in] x W^T: one warp per output row and a tile of MM_TT
 * tokens, so each weight is decoded once per tile. grid (ceil(n_out / MM_ROWS), ceil(n_tok /
 * MM_TT)), block (32, MM_ROWS). */
#define MM_ROWS 4
#define MM_TT 8
__global__ void k_matmul(float *out, const uint8_t *w, size_t row_bytes, int type, int n_out, const float *act,
                         int n_in, int n_tok)
{
    const int row = blockIdx.x * MM_ROWS + threadIdx.y, t0 = blockIdx.y * MM_TT, lane = threadIdx.x;
    if (row >= n_out)
        return;
    const int nt = min(MM_TT, n_tok - t0);
    const uint8_t *wr = w + (size_t)row * row_bytes;
    float acc[MM_TT];
#pragma unroll
    for (int t = 0; t < MM_TT; t++)
        acc[t] = 0.0f;
    for (int j = lane; j < n_in; j += WARP) {
        const float wv = row_elem(wr, type, j);
#pragma unroll
        for (int t = 0; t < MM_TT; t++)
            if (t < nt)
                acc[t] += wv * act[(size_t)(t0 + t) * n_in + j];
    }
#pragma unroll
    for (int t = 0; t < MM_TT; t++) {
        const float v = warp_sum(acc[t]);
        if (lane == 0 && t < nt)
            out[(size_t)(t0 + t) * n_out + row] = v;
    }
}

/* Block i of sequence seq (explicit table or implicit consecutive blocks). */
__device__ __forceinline__ size_t kv_row(const int32_t *block_table, const int32_t *table_off, int n_ctx, int bs,
                                         int seq, int pos)
{
    const int i = pos / bs;
    const int blk = block_table ? block_table[table_off[seq] + i] : seq * ((n_ctx + bs - 1) / bs) + i;
    return (size_t)blk * bs + (size_t)(pos % bs);
}

/* RoPE on q and k of token t (as spk_rope / spk_rope_neox), then k and v into the cache.
 * grid (n_tok), block 128. */
__global__ void k_rope_store(float *q, float *k, const float *v, int n_heads, int n_kv_heads, int hd, int rot_dim,
                             int neox, const float *freqs, __half *kc, __half *vc, size_t layer_off, int kv_dim,
                             const int32_t *pos, const int32_t *seq, const int32_t *block_table,
                             const int32_t *table_off, int n_ctx, int bs)
{
    const int t = blockIdx.x, p = pos[t], half = rot_dim / 2;
    float *qt = q + (size_t)t * n_heads * hd, *kt = k + (size_t)t * kv_dim;
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        const double two_pi = 6.283185307179586476925;
        double a = (double)p * (double)freqs[i];
        a -= two_pi * floor(a * (1.0 / two_pi));
        const float c = cosf((float)a), s = sinf((float)a);
        /* the pair: (2i, 2i+1) in ggml's normal mode, (i, i + rot_dim/2) in NEOX mode */
        const int a0 = neox ? i : 2 * i, a1 = neox ? i + half : 2 * i + 1;
        for (int h = 0; h < n_heads; h++) {
            float *x = qt + (size_t)h * hd;
            const float x0 = x[a0], x1 = x[a1];
            x[a0] = x0 * c - x1 * s;
            x[a1] = x0 * s + x1 * c;
        }
        for (int h = 0; h < n_kv_heads; h++) {
            float *x = kt + (size_t)h * hd;
            const float x0 = x[a0], x1 = x[a1];
            x[a0] = x0 * c - x1 * s;
            x[a1] = x0 * s + x1 * c;
        }
    }
    __syncthreads();
    const size_t off = layer_off + kv_row(block_table, table_off, n_ctx, bs, seq[t], p) * (size_t)kv_dim;
    for (int j = threadIdx.x; j < kv_dim; j += blockDim.x) {
        kc[off + j] = __float2half_rn(kt[j]);
        vc[off + j] = __float2half_rn(v[(size_t)t * kv_dim + j]);
    }
}

/* Causal attention of query head h of token t over positions 0..pos[t] of its sequence, in tiles
 * of ATT_TILE positions with a running maximum (one pass over the cache). grid (n_heads, n_tok),
 * block ATT_TILE threads; thread d owns output dimensions d and d + ATT_TILE (head_dim <= 256). */
#define ATT_TILE 128
__global__ void k_attention(float *out, const float *q, int n_heads, int group, int hd, float scale,
                            const __half *kc, const __half *vc, size_t layer_off, int kv_dim, const int32_t *pos,
                            const int32_t *seq, const int32_t *block_table, const int32_t *table_off, int n_ctx,
                            int bs)
{
    __shared__ float qs[256];
    __shared__ float sc[ATT_TILE];
    __shared__ size_t rowoff[ATT_TILE];
    __shared__ float red[ATT_TILE / WARP];
    const int h = blockIdx.x, t = blockIdx.y, tid = threadIdx.x, kvh = h / group, n = pos[t] + 1, s = seq[t];
    const float *qh = q + (size_t)t * n_heads * hd + (size_t)h * hd;
    for (int d = tid; d < hd; d += ATT_TILE)
        qs[d] = qh[d];
    float m = -INFINITY, l = 0.0f, acc0 = 0.0f, acc1 = 0.0f;
    __syncthreads();
    for (int p0 = 0; p0 < n; p0 += ATT_TILE) {
        const int p = p0 + tid;
        float sv = -INFINITY;
        if (p < n) {
            const size_t off = layer_off + kv_row(block_table, table_off, n_ctx, bs, s, p) * (size_t)kv_dim +
                               (size_t)kvh * hd;
            rowoff[tid] = off;
            const __half *kr = kc + off;
            float dot = 0.0f;
            for (int d = 0; d < hd; d++)
                dot += qs[d] * __half2float(kr[d]);
            sv = dot * scale;
        }
        /* tile maximum */
        float mx = sv;
        for (int o = WARP / 2; o > 0; o >>= 1)
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
        if ((tid & 31) == 0)
            red[tid >> 5] = mx;
        __syncthreads();
        mx = red[0];
        for (int i = 1; i < ATT_TILE / WARP; i++)
            mx = fmaxf(mx, red[i]);
        const float m_new = fmaxf(m, mx), corr = __expf(m - m_new);
        sc[tid] = p < n ? __expf(sv - m_new) : 0.0f;
        __syncthreads();
        acc0 *= corr;
        acc1 *= corr;
        l *= corr;
        const int np = min(ATT_TILE, n - p0);
        for (int i = 0; i < np; i++) {
            const float w = sc[i];
            const __half *vr = vc + rowoff[i];
            l += w;
            if (tid < hd)
                acc0 += w * __half2float(vr[tid]);
            if (tid + ATT_TILE < hd)
                acc1 += w * __half2float(vr[tid + ATT_TILE]);
        }
        m = m_new;
        __syncthreads();
    }
    float *o = out + (size_t)t * n_heads * hd + (size_t)h * hd;
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    if (tid < hd)
        o[tid] = acc0 * inv;
    if (tid + ATT_TILE < hd)
        o[tid + ATT_TILE] = acc1 * inv;
}

__global__ void k_swiglu(float *out, const float *gate, const float *up, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float g = gate[i];
        out[i] = g / (1.0f + __expf(-g)) * up[i];
    }
}

__global__ void k_add(float *out, const float *a, const float *b, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        out[i] = a[i] + b[i];
}

/* ---- the backend ---------------------------------------------------------------------------- */

typedef struct cuda_backend {
    spk_backend base;
    int device;
    int in_place;            /* weights are read from host memory where they lie */
    cudaStream_t stream;
    cudaError_t err;         /* first error since the last run() */
    char where[64];
    /* the batch, uploaded by begin(): token, pos, seq, table_off, block_table, then rows */
    int32_t *d_meta, *h_meta; /* device / pinned host staging, cap_meta ints each */
    size_t cap_meta;
    const int32_t *d_token, *d_pos, *d_seq, *d_table_off, *d_block_table;
    int32_t *d_rows;
    int cap_rows;
    uint64_t held;
} cuda_backend;

static cuda_backend *cu(spk_backend *be) { return (cuda_backend *)be; }

static void note(cuda_backend *c, cudaError_t e, const char *where)
{
    if (e != cudaSuccess && c->err == cudaSuccess) {
        c->err = e;
        snprintf(c->where, sizeof c->where, "%s", where);
    }
}

static void check_launch(cuda_backend *c, const char *what) { note(c, cudaGetLastError(), what); }

static unsigned grid_for(size_t n, unsigned block)
{
    size_t g = (n + block - 1) / block;
    return (unsigned)(g > 65535 ? 65535 : (g ? g : 1));
}

static void *cuda_alloc(spk_backend *be, size_t bytes)
{
    (void)be;
    void *p = NULL;
    if (!bytes || cudaMalloc(&p, bytes) != cudaSuccess)
        return NULL;
    if (cudaMemset(p, 0, bytes) != cudaSuccess) {
        cudaFree(p);
        return NULL;
    }
    return p;
}

static void cuda_free(spk_backend *be, void *p)
{
    (void)be;
    cudaFree(p);
}

static spk_status cuda_upload(spk_backend *be, const void *host, size_t bytes, void **dev)
{
    cuda_backend *c = cu(be);
    *dev = NULL;
    if (c->in_place) {
        *dev = (void *)host;
        return SPK_OK;
    }
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1);
    if (e == cudaSuccess)
        e = cudaMemcpy(p, host, bytes, cudaMemcpyHostToDevice);
    if (e != cudaSuccess) {
        if (p)
            cudaFree(p);
        return SPK_ERR_NOMEM;
    }
    *dev = p;
    return SPK_OK;
}

static void cuda_release(spk_backend *be, void *dev)
{
    if (!cu(be)->in_place)
        cudaFree(dev);
}

static int cuda_supports(spk_backend *be, spk_dtype type)
{
    (void)be;
    return row_bytes(type, 256) != 0;
}

static spk_status cuda_copy(spk_backend *be, void *dst, const void *src, size_t bytes)
{
    cuda_backend *c = cu(be);
    cudaError_t e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, c->stream);
    if (e == cudaSuccess)
        e = cudaStreamSynchronize(c->stream);
    return e == cudaSuccess ? SPK_OK : SPK_ERR_INTERNAL;
}

/* Upload the batch (token, pos, seq, table_off, block_table) in one copy from pinned memory. */
static spk_status cuda_begin(spk_backend *be, const spk_step *s)
{
    cuda_backend *c = cu(be);
    const int T = s->n_tok;
    const size_t n_seqs = s->block_table ? (size_t)s->n_seqs : 0, n_table = s->block_table ? (size_t)s->n_table : 0;
    const size_t need = 3 * (size_t)T + n_seqs + n_table;
    if (need > c->cap_meta) {
        cudaFree(c->d_meta);
        cudaFreeHost(c->h_meta);
        c->d_meta = c->h_meta = NULL;
        c->cap_meta = 0;
        size_t cap = need < 4096 ? 4096 : need * 2;
        if (cudaMalloc((void **)&c->d_meta, cap * sizeof(int32_t)) != cudaSuccess ||
            cudaMallocHost((void **)&c->h_meta, cap * sizeof(int32_t)) != cudaSuccess)
            return SPK_ERR_NOMEM;
        c->cap_meta = cap;
        c->held = (uint64_t)cap * sizeof(int32_t) + (uint64_t)c->cap_rows * sizeof(int32_t);
    }
    int32_t *h = c->h_meta;
    memcpy(h, s->token, sizeof(int32_t) * (size_t)T);
    memcpy(h + T, s->pos, sizeof(int32_t) * (size_t)T);
    memcpy(h + 2 * (size_t)T, s->seq, sizeof(int32_t) * (size_t)T);
    if (s->block_table) {
        memcpy(h + 3 * (size_t)T, s->table_off, sizeof(int32_t) * n_seqs);
        memcpy(h + 3 * (size_t)T + n_seqs, s->block_table, sizeof(int32_t) * n_table);
    }
    c->d_token = c->d_meta;
    c->d_pos = c->d_meta + T;
    c->d_seq = c->d_meta + 2 * (size_t)T;
    c->d_table_off = s->block_table ? c->d_meta + 3 * (size_t)T : NULL;
    c->d_block_table = s->block_table ? c->d_meta + 3 * (size_t)T + n_seqs : NULL;
    if (cudaMemcpyAsync(c->d_meta, h, need * sizeof(int32_t), cudaMemcpyHostToDevice, c->stream) != cudaSuccess)
        return SPK_ERR_INTERNAL;
    if (T > c->cap_rows) {
        cudaFree(c->d_rows);
        c->d_rows = NULL;
        c->cap_rows = 0;
        if (cudaMalloc((void **)&c->d_rows, sizeof(int32_t) * (size_t)T) != cudaSuccess)
            return SPK_ERR_NOMEM;
        c->cap_rows = T;
        c->held = (uint64_t)c->cap_meta * sizeof(int32_t) + (uint64_t)c->cap_rows * sizeof(int32_t);
    }
    return SPK_OK;
}

static spk_status cuda_run(spk_backend *be, void (*fn)(void *, int, int), void *arg)
{
    cuda_backend *c = cu(be);
    c->err = cudaSuccess; /* begin() reports its own failures */
    fn(arg, 0, 1);
    note(c, cudaStreamSynchronize(c->stream), "stream synchronize");
    return c->err == cudaSuccess ? SPK_OK : SPK_ERR_INTERNAL;
}

static void cuda_barrier(spk_backend *be) { (void)be; }

static void cuda_embed(spk_backend *be, float *x, const spk_wmat *table, const int32_t *token, int n_tok, int v0,
                       int E, int ith, int nth)
{
    cuda_backend *c = cu(be);
    (void)token; /* the batch's tokens, uploaded by begin() */
    (void)ith;
    (void)nth;
    k_embed<<<n_tok, 256, 0, c->stream>>>(x, (const uint8_t *)table->data, row_bytes(table->type, (size_t)E),
                                          (int)table->type, table->n_out, c->d_token, v0, E);
    check_launch(c, "embed");
}

static void cuda_copy_rows(spk_backend *be, float *dst, const float *src, int n_tok, int n, int ith, int nth)
{
    cuda_backend *c = cu(be);
    (void)ith;
    (void)nth;
    note(c, cudaMemcpyAsync(dst, src, sizeof(float) * (size_t)n_tok * (size_t)n, cudaMemcpyDefault, c->stream),
         "copy_rows");
}

static void cuda_rmsnorm(spk_backend *be, float *out, const float *x, const int *rows, const float *w, int n_rows,
                         int n, float eps, int ith, int nth)
{
    cuda_backend *c = cu(be);
    (void)ith;
    (void)nth;
    if (n_rows <= 0)
        return;
    const int *d_rows = NULL;
    if (rows) { /* host row indices (the logits rows): a few ints, in stream order */
        if (n_rows > c->cap_rows) {
            note(c, cudaErrorInvalidValue, "rmsnorm rows");
            return;
        }
        note(c, cudaMemcpyAsync(c->d_rows, rows, sizeof(int) * (size_t)n_rows, cudaMemcpyHostToDevice, c->stream),
             "rmsnorm rows");
        d_rows = c->d_rows;
    }
    k_rmsnorm<<<n_rows, 256, 0, c->stream>>>(out, x, d_rows, w, n, eps);
    check_launch(c, "rmsnorm");
}

static void cuda_head_rmsnorm(spk_backend *be, float *x, const float *w, int n_tok, int n_heads, int head_dim,
                              float eps, int ith, int nth)
{
    cuda_backend *c = cu(be);
    (void)ith;
    (void)nth;
    const int runs = n_tok * n_heads;
    k_head_rmsnorm<<<(unsigned)((runs + 3) / 4), dim3(WARP, 4), 0, c->stream>>>(x, w, runs, head_dim, eps);
    check_launch(c, "head_rmsnorm");
}

/* Activations stay f32 on the GPU: quantize is a copy into `act`. */
static void cuda_quantize(spk_backend *be, void *act, const spk_wmat *w, const float *x, int n_tok, int ith, int nth)
{
    cuda_backend *c = cu(be);
    (void)ith;
    (void)nth;
    note(c, cudaMemcpyAsync(act, x, sizeof(float) * (size_t)n_tok * (size_t)w->n_in, cudaMemcpyDeviceToDevice,
                            c->stream), "quantize");
}

static size_t cuda_act_size(spk_backend *be, const spk_wmat *w, int n_tok)
{
    (void)be;
    return sizeof(float) * (size_t)n_tok * (size_t)w->n_in;
}

static void cuda_matmul(spk_backend *be, float *out, const spk_wmat *w, const void *act, int n_tok, int ith, int nth)
{
    cuda_backend *c = cu(be);
    (void)ith;
    (void)nth;
    dim3 grid((unsigned)((w->n_out + MM_ROWS - 1) / MM_ROWS), (unsigned)((n_tok + MM_TT - 1) / MM_TT));
    dim3 block(WARP, MM_ROWS);
    k_matmul<<<grid, block, 0, c->stream>>>(out, (const uint8_t *)w->data, row_bytes(w->type, (size_t)w->n_in),
                                            (int)w->type, w->n_out, (const float *)act, w->n_in, n_tok);
    check_launch(c, "matmul");
}

static void cuda_rope_store(spk_backend *be, float *q, float *k, const float *v, int n_heads, int rot_dim,
                            int neox, const float *freqs, const spk_kv_cache *kv, int layer, const spk_step *s, int ith,
                            int nth)
{
    cuda_backend *c = cu(be);
    (void)ith;
    (void)nth;
    const size_t layer_off = (size_t)layer * kv->rows * (size_t)kv->kv_dim;
    k_rope_store<<<s->n_tok, 128, 0, c->stream>>>(q, k, v, n_heads, kv->n_kv_heads, kv->head_dim, rot_dim, neox, freqs,
                                                  (__half *)kv->k, (__half *)kv->v, layer_off, kv->kv_dim, c->d_pos,
                                                  c->d_seq, c->d_block_table, c->d_table_off, kv->n_ctx,
                                                  kv->block_size);
    check_launch(c, "rope_store");
}

static void cuda_attention(spk_backend *be, float *out, const float *q, int n_heads, float scale, const float *sinks,
                           int window, const spk_kv_cache *kv, int layer, const spk_step *s, int ith, int nth)
{
    cuda_backend *c = cu(be);
    (void)ith;
    (void)nth;
    if (sinks || window > 0) { /* gpt-oss; spk_llama_create refuses such a model before it gets here */
        note(c, cudaErrorNotSupported, sinks ? "attention sinks (gpt-oss)" : "sliding-window attention");
        return;
    }
    if (kv->head_dim > 2 * ATT_TILE) {
        note(c, cudaErrorInvalidValue, "attention: head_dim over 256");
        return;
    }
    const size_t layer_off = (size_t)layer * kv->rows * (size_t)kv->kv_dim;
    k_attention<<<dim3((unsigned)n_heads, (unsigned)s->n_tok), ATT_TILE, 0, c->stream>>>(
        out, q, n_heads, n_heads / kv->n_kv_heads, kv->head_dim, scale, (const __half *)kv->k, (const __half *)kv->v,
        layer_off, kv->kv_dim, c->d_pos, c->d_seq, c->d_block_table, c->d_table_off, kv->n_ctx, kv->block_size);
    check_launch(c, "attention");
}

static void cuda_swiglu(spk_backend *be, float *out, const float *gate, const float *up, int n_tok, int n, int ith,
                        int nth)
{
    cuda_backend *c = cu(be);
    (void)ith;
    (void)nth;
    const size_t total = (size_t)n_tok * (size_t)n;
    k_swiglu<<<grid_for(total, 256), 256, 0, c->stream>>>(out, gate, up, total);
    check_launch(c, "swiglu");
}

static void cuda_add(spk_backend *be, float *out, const float *a, const float *b, int n_tok, int n, int ith, int nth)
{
    cuda_backend *c = cu(be);
    (void)ith;
    (void)nth;
    const size_t total = (size_t)n_tok * (size_t)n;
    k_add<<<grid_for(total, 256), 256, 0, c->stream>>>(out, a, b, total);
    check_launch(c, "add");
}

static uint64_t cuda_held_bytes(const spk_backend *be) { return ((const cuda_backend *)be)->held; }

static void cuda_destroy(spk_backend *be)
{
    cuda_backend *c = cu(be);
    if (c->stream)
        cudaStreamSynchronize(c->stream);
    cudaFree(c->d_meta);
    cudaFreeHost(c->h_meta);
    cudaFree(c->d_rows);
    if (c->stream)
        cudaStreamDestroy(c->stream);
    free(c);
}

static const char *cuda_error(spk_backend *be, char *buf, size_t cap)
{
    cuda_backend *c = cu(be);
    snprintf(buf, cap, "%s: %s", c->where[0] ? c->where : "cuda", cudaGetErrorString(c->err));
    return buf;
}

static const spk_backend_ops cuda_ops = {
    .name = "cuda",
    .mem = SPK_MEM_DEVICE,
    .alloc = cuda_alloc,
    .free = cuda_free,
    .upload = cuda_upload,
    .release = cuda_release,
    .supports = cuda_supports,
    .copy = cuda_copy,
    .begin = cuda_begin,
    .run = cuda_run,
    .barrier = cuda_barrier,
    .error = cuda_error,
    .embed = cuda_embed,
    .copy_rows = cuda_copy_rows,
    .rmsnorm = cuda_rmsnorm,
    .quantize = cuda_quantize,
    .act_size = cuda_act_size,
    .matmul = cuda_matmul,
    .head_rmsnorm = cuda_head_rmsnorm,
    .rope_store = cuda_rope_store,
    .attention = cuda_attention,
    .swiglu = cuda_swiglu,
    .add = cuda_add,
    .add_bias = NULL, /* gpt-oss's biases, sinks and sliding window: spk_llama_create refuses it */
    /* no MoE op yet: spk_llama_create_paged refuses MoE models on this backend (UNSUPPORTED,
     * naming the 'moe' op) instead of running them */
    .moe_size = NULL,
    .moe = NULL,
    .held_bytes = cuda_held_bytes,
    .destroy = cuda_destroy,
};

static spk_status fail(char *err, size_t cap, spk_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, cap, fmt, ap);
    va_end(ap);
    return st;
}

/* The module's one entry point (backend/module.h). */
extern "C" __attribute__((visibility("default"))) spk_status
spk_backend_cuda_create_v1(const spk_backend_module_args *a, spk_backend **out, char *err, size_t err_cap)
{
    *out = NULL;
    if (!a || a->ops_size != sizeof(spk_backend_ops) || a->version != SPK_BACKEND_MODULE_VERSION)
        return fail(err, err_cap, SPK_ERR_VERSION, "cuda backend module: built for another version of the library "
                    "(ops table %zu bytes, version %d; this module: %zu, %d)", a ? a->ops_size : 0,
                    a ? a->version : 0, sizeof(spk_backend_ops), SPK_BACKEND_MODULE_VERSION);
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0)
        return fail(err, err_cap, SPK_ERR_UNSUPPORTED, "cuda backend: no usable GPU (%s)",
                    e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
    const int dev = a->device < 0 ? 0 : a->device;
    if (dev >= n)
        return fail(err, err_cap, SPK_ERR_INVALID_ARG, "cuda backend: device %d requested, %d present", dev, n);
    if ((e = cudaSetDevice(dev)) != cudaSuccess)
        return fail(err, err_cap, SPK_ERR_UNSUPPORTED, "cuda backend: device %d: %s", dev, cudaGetErrorString(e));
    cuda_backend *c = (cuda_backend *)calloc(1, sizeof *c);
    if (!c)
        return fail(err, err_cap, SPK_ERR_NOMEM, "cuda backend: out of memory");
    c->base.ops = &cuda_ops;
    c->device = dev;
    int host_tables = 0;
    cudaDeviceGetAttribute(&host_tables, cudaDevAttrPageableMemoryAccessUsesHostPageTables, dev);
    c->in_place = host_tables && !a->copy_weights;
    if ((e = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking)) != cudaSuccess) {
        free(c);
        return fail(err, err_cap, SPK_ERR_INTERNAL, "cuda backend: stream: %s", cudaGetErrorString(e));
    }
    *out = &c->base;
    return SPK_OK;
}
