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
/* Output rows `row` of tokens p0 .. p0+nt-1 (nt <= MM_TT): act rows [p0 + t][n_in] against weight row
 * wr, each weight decoded once for the tile; one warp, lane `lane`. */
__device__ __forceinline__ void mm_tile(float *out, const uint8_t *wr, int type, int n_out, int row, const float *act,
                                        int n_in, int p0, int nt, int lane)
{
    float acc[MM_TT];
#pragma unroll
    for (int t = 0; t < MM_TT; t++)
        acc[t] = 0.0f;
    for (int j = lane; j < n_in; j += WARP) {
        const float wv = row_elem(wr, type, j);
#pragma unroll
        for (int t = 0; t < MM_TT; t++)
            if (t < nt)
                acc[t] += wv * act[(size_t)(p0 + t) * n_in + j];
    }
#pragma unroll
    for (int t = 0; t < MM_TT; t++) {
        const float v = warp_sum(acc[t]);
        if (lane == 0 && t < nt)
            out[(size_t)(p0 + t) * n_out + row] = v;
    }
}

__global__ void k_matmul(float *out, const uint8_t *w, size_t row_bytes, int type, int n_out, const float *act,
                         int n_in, int n_tok)
{
    const int row = blockIdx.x * MM_ROWS + threadIdx.y, t0 = blockIdx.y * MM_TT;
    if (row >= n_out)
        return;
    mm_tile(out, w + (size_t)row * row_bytes, type, n_out, row, act, n_in, t0, min(MM_TT, n_tok - t0), threadIdx.x);
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
                            const float *sinks, int window, const __half *kc, const __half *vc, size_t layer_off,
                            int kv_dim, const int32_t *pos, const int32_t *seq, const int32_t *block_table,
                            const int32_t *table_off, int n_ctx, int bs)
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
    /* sliding window: positions pos - window + 1 .. pos */
    const int p_first = window > 0 && n > window ? n - window : 0;
    for (int p0 = p_first; p0 < n; p0 += ATT_TILE) {
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
    if (sinks) { /* a learned logit per head joins the softmax denominator and carries no value */
        const float sk = sinks[h], m_new = fmaxf(m, sk), corr = __expf(m - m_new);
        l = l * corr + __expf(sk - m_new);
        acc0 *= corr;
        acc1 *= corr;
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

__global__ void k_add_bias(float *x, const float *bias, int n, size_t total)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x)
        x[i] += bias[i % (size_t)n];
}

/* ---- mixture of experts (spk_moe; the CPU twin is cpu_moe in lib/cpu/backend_cpu.c) ---------- */

/* Routing of token t (one thread per token; n_expert is at most a few hundred): router bias,
 * top-k (ties to the lower index) and the weights the flags ask for. */
__global__ void k_moe_route(float *logits, int *sel, float *wgt, const float *router_bias, int T, int N, int K,
                            unsigned flags)
{
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= T)
        return;
    float *l = logits + (size_t)t * N;
    int *sl = sel + (size_t)t * K;
    float *w = wgt + (size_t)t * K;
    if (router_bias)
        for (int e = 0; e < N; e++)
            l[e] += router_bias[e];
    for (int j = 0; j < K; j++) {
        int best = -1;
        for (int e = 0; e < N; e++) {
            int taken = 0;
            for (int i = 0; i < j && !taken; i++)
                taken = sl[i] == e;
            if (!taken && (best < 0 || l[e] > l[best]))
                best = e;
        }
        sl[j] = best;
    }
    const float mx = l[sl[0]];
    double s = 0;
    for (int j = 0; j < K; j++)
        s += exp((double)l[sl[j]] - mx);
    double d = s;
    if ((flags & SPK_MOE_SOFTMAX_ALL) && !(flags & SPK_MOE_NORM_TOPK)) {
        d = 0;
        for (int e = 0; e < N; e++)
            d += exp((double)l[e] - mx);
    }
    for (int j = 0; j < K; j++)
        w[j] = (float)(exp((double)l[sl[j]] - mx) / d);
}

/* Group the (token, slot) pairs of this rank's experts [e0, e1) by expert (one block): off[e] is
 * where expert e's pairs start, gpos[i] pair i's place (-1: another rank's expert), rowtok and
 * rowexp the token and expert of each place, and tiles of at most MM_TT places of one expert
 * (tile_e, tile_p, tile_n; n_tiles of them). The order of pairs within an expert does not change
 * any value: each place's rows are computed on their own. */
__global__ void k_moe_group(const int *sel, int R, int K, int N, int e0, int e1, int *cnt, int *off, int *fill,
                            int *gpos, int *rowtok, int *rowexp, int *tile_e, int *tile_p, int *tile_n, int *n_tiles)
{
    for (int e = threadIdx.x; e < N; e += blockDim.x) {
        cnt[e] = 0;
        fill[e] = 0;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < R; i += blockDim.x) {
        const int e = sel[i];
        if (e >= e0 && e < e1)
            atomicAdd(&cnt[e], 1);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        int o = 0, nt = 0;
        for (int e = 0; e < N; e++) {
            off[e] = o;
            for (int p = 0; p < cnt[e]; p += MM_TT) {
                tile_e[nt] = e;
                tile_p[nt] = o + p;
                tile_n[nt] = min(MM_TT, cnt[e] - p);
                nt++;
            }
            o += cnt[e];
        }
        off[N] = o;
        *n_tiles = nt;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < R; i += blockDim.x) {
        const int e = sel[i];
        if (e < e0 || e >= e1) {
            gpos[i] = -1;
            continue;
        }
        const int p = off[e] + atomicAdd(&fill[e], 1);
        gpos[i] = p;
        rowtok[p] = i / K;
        rowexp[p] = e;
    }
}

/* xg[p] = x[rowtok[p]] for the grouped places (grid over places, upper bound R). */
__global__ void k_moe_gather(float *xg, const float *x, const int *rowtok, const int *off, int N, int E)
{
    const int p = blockIdx.x;
    if (p >= off[N])
        return;
    const float *src = x + (size_t)rowtok[p] * E;
    for (int d = threadIdx.x; d < E; d += blockDim.x)
        xg[(size_t)p * E + d] = src[d];
}

/* out[p] = act[p] x W_e^T over the tiles (each tile: places of one expert e, its matrix at
 * w + (e - e0) * stride). grid (ceil(n_out / MM_ROWS), max tiles), block (32, MM_ROWS); blocks past
 * n_tiles return. As k_matmul, each weight is decoded once per tile. */
__global__ void k_moe_matmul(float *out, const uint8_t *w, size_t stride, size_t row_bytes, int type, int n_out,
                             const float *act, int n_in, int e0, const int *tile_e, const int *tile_p,
                             const int *tile_n, const int *n_tiles)
{
    const int tile = blockIdx.y;
    if (tile >= *n_tiles)
        return;
    const int row = blockIdx.x * MM_ROWS + threadIdx.y;
    if (row >= n_out)
        return;
    const uint8_t *wr = w + (size_t)(tile_e[tile] - e0) * stride + (size_t)row * row_bytes;
    mm_tile(out, wr, type, n_out, row, act, n_in, tile_p[tile], tile_n[tile], threadIdx.x);
}

/* The gated activation of each place, into hg (biases by the place's expert). */
__global__ void k_moe_act(float *hg, const float *hu, const int *rowexp, const int *off, int N, int F,
                          const float *gate_bias, const float *up_bias, unsigned flags, float alpha, float limit)
{
    const size_t total = (size_t)off[N] * F;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        const size_t p = i / F, f = i % F, e = (size_t)rowexp[p];
        float a = hg[i] + (gate_bias ? gate_bias[e * F + f] : 0.0f), b = hu[i] + (up_bias ? up_bias[e * F + f] : 0.0f);
        if (flags & SPK_MOE_SWIGLU_OAI) {
            a = fminf(a, limit);
            b = fminf(fmaxf(b, -limit), limit);
            hg[i] = (b + 1.0f) * (a / (1.0f + expf(-alpha * a)));
        } else {
            hg[i] = b * (a / (1.0f + expf(-a)));
        }
    }
}

/* out[t] = sum over token t's experts here, in top-k order, of weight * (og[place] + down bias). */
__global__ void k_moe_combine(float *out, const float *og, const int *sel, const float *wgt, const int *gpos, int K,
                              int E, const float *down_bias)
{
    const int t = blockIdx.x;
    for (int d = threadIdx.x; d < E; d += blockDim.x) {
        float acc = 0.0f;
        for (int j = 0; j < K; j++) {
            const int i = t * K + j;
            if (gpos[i] < 0)
                continue;
            const float y = og[(size_t)gpos[i] * E + d] + (down_bias ? down_bias[(size_t)sel[i] * E + d] : 0.0f);
            acc += wgt[i] * y;
        }
        out[(size_t)t * E + d] = acc;
    }
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
    if (kv->head_dim > 2 * ATT_TILE) {
        note(c, cudaErrorInvalidValue, "attention: head_dim over 256");
        return;
    }
    const size_t layer_off = (size_t)layer * kv->rows * (size_t)kv->kv_dim;
    k_attention<<<dim3((unsigned)n_heads, (unsigned)s->n_tok), ATT_TILE, 0, c->stream>>>(
        out, q, n_heads, n_heads / kv->n_kv_heads, kv->head_dim, scale, sinks, window, (const __half *)kv->k,
        (const __half *)kv->v, layer_off, kv->kv_dim, c->d_pos, c->d_seq, c->d_block_table, c->d_table_off, kv->n_ctx, kv->block_size);
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

static void cuda_add_bias(spk_backend *be, float *x, const float *bias, int n_tok, int n, int ith, int nth)
{
    cuda_backend *c = cu(be);
    (void)ith;
    (void)nth;
    const size_t total = (size_t)n_tok * (size_t)n;
    k_add_bias<<<grid_for(total, 256), 256, 0, c->stream>>>(x, bias, n, total);
    check_launch(c, "add_bias");
}

/* The MoE scratch: routing, grouping and tile tables, then f32 rows of the grouped places. */
typedef struct moe_layout {
    size_t logits, sel, wgt, gpos, rowtok, rowexp, cnt, off, fill, tile_e, tile_p, tile_n, n_tiles, xg, hg, hu, og;
    size_t total;
    int max_tiles;
} moe_layout;

static void moe_lay(const spk_moe *m, int n_tok, moe_layout *L)
{
    const size_t T = (size_t)n_tok, N = (size_t)m->n_expert, R = T * (size_t)m->n_used;
    const size_t E = (size_t)m->router.n_in, F = (size_t)m->gate.n_out;
    L->max_tiles = (int)((R + MM_TT - 1) / MM_TT + N);
    size_t o = 0;
#define SEG(f, bytes)                                                                              \
    do {                                                                                           \
        L->f = o;                                                                                  \
        o += ((size_t)(bytes) + 255) & ~(size_t)255;                                               \
    } while (0)
    SEG(logits, sizeof(float) * T * N);
    SEG(sel, sizeof(int) * R);
    SEG(wgt, sizeof(float) * R);
    SEG(gpos, sizeof(int) * R);
    SEG(rowtok, sizeof(int) * R);
    SEG(rowexp, sizeof(int) * R);
    SEG(cnt, sizeof(int) * N);
    SEG(off, sizeof(int) * (N + 1));
    SEG(fill, sizeof(int) * N);
    SEG(tile_e, sizeof(int) * (size_t)L->max_tiles);
    SEG(tile_p, sizeof(int) * (size_t)L->max_tiles);
    SEG(tile_n, sizeof(int) * (size_t)L->max_tiles);
    SEG(n_tiles, sizeof(int));
    SEG(xg, sizeof(float) * R * E);
    SEG(hg, sizeof(float) * R * F);
    SEG(hu, sizeof(float) * R * F);
    SEG(og, sizeof(float) * R * E);
#undef SEG
    L->total = o;
}

static size_t cuda_moe_size(spk_backend *be, const spk_moe *m, int n_tok)
{
    (void)be;
    moe_layout L;
    moe_lay(m, n_tok, &L);
    return L.total;
}

/* All in stream order, no host round trip: router matmul, routing, grouping by expert, gate and up
 * per expert tile, activation, down per expert tile, weighted sum per token. */
static void cuda_moe(spk_backend *be, float *out, const float *x, const spk_moe *m, void *scratch, int n_tok, int ith,
                     int nth)
{
    cuda_backend *c = cu(be);
    (void)ith;
    (void)nth;
    if (n_tok <= 0)
        return;
    moe_layout L;
    moe_lay(m, n_tok, &L);
    uint8_t *sb = (uint8_t *)scratch;
#define P(T_, f) ((T_ *)(sb + L.f))
    const int T = n_tok, N = m->n_expert, K = m->n_used, E = m->router.n_in, F = m->gate.n_out, R = T * K;
    if (L.max_tiles > 65535) {
        note(c, cudaErrorInvalidValue, "moe: too many expert tiles for one launch");
        return;
    }
    dim3 blk(WARP, MM_ROWS);
    k_matmul<<<dim3((unsigned)((N + MM_ROWS - 1) / MM_ROWS), (unsigned)((T + MM_TT - 1) / MM_TT)), blk, 0,
               c->stream>>>(P(float, logits), (const uint8_t *)m->router.data,
                            row_bytes(m->router.type, (size_t)E), (int)m->router.type, N, x, E, T);
    check_launch(c, "moe router");
    k_moe_route<<<(unsigned)((T + 63) / 64), 64, 0, c->stream>>>(P(float, logits), P(int, sel), P(float, wgt),
                                                                 m->router_bias, T, N, K, m->flags);
    check_launch(c, "moe route");
    k_moe_group<<<1, 1024, 0, c->stream>>>(P(int, sel), R, K, N, m->e0, m->e1, P(int, cnt), P(int, off), P(int, fill),
                                          P(int, gpos), P(int, rowtok), P(int, rowexp), P(int, tile_e), P(int, tile_p),
                                          P(int, tile_n), P(int, n_tiles));
    check_launch(c, "moe group");
    k_moe_gather<<<(unsigned)R, 128, 0, c->stream>>>(P(float, xg), x, P(int, rowtok), P(int, off), N, E);
    check_launch(c, "moe gather");
    const dim3 g_f((unsigned)((F + MM_ROWS - 1) / MM_ROWS), (unsigned)L.max_tiles);
    k_moe_matmul<<<g_f, blk, 0, c->stream>>>(P(float, hg), (const uint8_t *)m->gate.data, m->stride_gate,
                                             row_bytes(m->gate.type, (size_t)E), (int)m->gate.type, F, P(float, xg), E,
                                             m->e0, P(int, tile_e), P(int, tile_p), P(int, tile_n), P(int, n_tiles));
    k_moe_matmul<<<g_f, blk, 0, c->stream>>>(P(float, hu), (const uint8_t *)m->up.data, m->stride_up,
                                             row_bytes(m->up.type, (size_t)E), (int)m->up.type, F, P(float, xg), E,
                                             m->e0, P(int, tile_e), P(int, tile_p), P(int, tile_n), P(int, n_tiles));
    check_launch(c, "moe gate/up");
    k_moe_act<<<grid_for((size_t)R * F, 256), 256, 0, c->stream>>>(P(float, hg), P(float, hu), P(int, rowexp),
                                                                    P(int, off), N, F, m->gate_bias, m->up_bias,
                                                                    m->flags, m->alpha, m->limit);
    check_launch(c, "moe activation");
    const dim3 g_e((unsigned)((E + MM_ROWS - 1) / MM_ROWS), (unsigned)L.max_tiles);
    k_moe_matmul<<<g_e, blk, 0, c->stream>>>(P(float, og), (const uint8_t *)m->down.data, m->stride_down,
                                             row_bytes(m->down.type, (size_t)F), (int)m->down.type, E, P(float, hg), F,
                                             m->e0, P(int, tile_e), P(int, tile_p), P(int, tile_n), P(int, n_tiles));
    check_launch(c, "moe down");
    k_moe_combine<<<(unsigned)T, 256, 0, c->stream>>>(out, P(float, og), P(int, sel), P(float, wgt), P(int, gpos), K,
                                                      E, m->down_bias);
    check_launch(c, "moe combine");
#undef P
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
    .pack = nullptr, /* device backends never see packed matrices */
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
    .add_bias = cuda_add_bias,
    .moe_size = cuda_moe_size,
    .moe = cuda_moe,
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
