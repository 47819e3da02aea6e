// Matrix-vector products for decode: out (T, rows) = x (T, cols) @ w^T (+ bias)
// for a few tokens (T <= 8), bf16 or f32 weights read once from memory and f32
// activations (not rounded), f32 accumulation. One warp per weight row, 16-byte
// loads; the T activation rows are read through the cache by every warp.
// The input may be RMSNorm'd on the way in (NORM): every warp (or block) sees
// all of x anyway, so it sums the squares as it loads x and scales its sums by
// the inverse RMS at the end, and no norm kernel runs before the product.
// Larger T goes through cuBLAS in the backend.
#include "kernels/kernels.h"
#include "kernels/pdl.cuh"

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define GEMV_WARPS 8

// Eight consecutive weights of a row as f32: one 16-byte load for bf16, two for f32.
__device__ __forceinline__ void gemv_load8(const __nv_bfloat16 *row, int i, float w[8]) {
    uint4 raw = __ldg((const uint4 *)row + i);
    const __nv_bfloat162 *b2 = (const __nv_bfloat162 *)&raw;
#pragma unroll
    for (int j = 0; j < 4; j++) {
        float2 f = __bfloat1622float2(b2[j]);
        w[2 * j] = f.x;
        w[2 * j + 1] = f.y;
    }
}
__device__ __forceinline__ void gemv_load8(const float *row, int i, float w[8]) {
    float4 a = __ldg((const float4 *)row + 2 * i), b = __ldg((const float4 *)row + 2 * i + 1);
    w[0] = a.x, w[1] = a.y, w[2] = a.z, w[3] = a.w, w[4] = b.x, w[5] = b.y, w[6] = b.z, w[7] = b.w;
}

/* FP8 weights (kernels_fp8w): e4m3fn codes, one byte each, and f32 block scales.
 * Byte j of q as f32 times 2^-120, exactly: the code's sign to bit 31 and its 4
 * exponent and 3 mantissa bits to bits 26..20, the low end of an f32's exponent
 * and the top of its mantissa. A normal code (1 + m/8) 2^(e-7) becomes
 * (1 + m/8) 2^(e-127), a subnormal one (m/8) 2^-6 the f32 subnormal (m/8) 2^-126:
 * both 2^-120 times the value, in three integer operations (byte to the top, an
 * arithmetic shift, a mask) instead of a table or a branch. NaN codes are not
 * decoded as NaN: cuda_view.c keeps no weight with them packed. */
__device__ __forceinline__ float gemv_fp8(unsigned q, int j) {
    unsigned top = __byte_perm(q, 0u, 0x0444u | ((unsigned)j << 12)); /* byte j in bits 31..24, zeros below */
    return __uint_as_float((unsigned)((int)top >> 4) & 0x87f00000u);
}

/* Eight consecutive weights of a row as f32 (W the stored type): bf16 and f32 as
 * gemv_load8; FP8 as its codes times their block's scale (srow: the row's scales,
 * one per 2^sbc columns). The FP8 values come out exact (cuda_view.c packs a
 * matrix only where code times scale is a bf16 for every code: a power-of-two
 * scale in [2^-124, 2^7]), so they are the bits the bf16 kernel reads from the same
 * matrix dequantized, and the products the same sums. */
__device__ __forceinline__ void gemv_loadw(const __nv_bfloat16 *row, const float *, int, int i, float w[8]) {
    gemv_load8(row, i, w);
}
__device__ __forceinline__ void gemv_loadw(const float *row, const float *, int, int i, float w[8]) {
    gemv_load8(row, i, w);
}
__device__ __forceinline__ void gemv_loadw(const unsigned char *row, const float *srow, int sbc, int i, float w[8]) {
    uint2 raw = __ldg((const uint2 *)row + i);
    float s = __fmul_rn(__ldg(srow + ((i << 3) >> sbc)), 0x1p120f); /* 2^(b-7): at most 2^127 (cuda_view.c) */
#pragma unroll
    for (int j = 0; j < 4; j++) {
        w[j] = __fmul_rn(gemv_fp8(raw.x, j), s);
        w[4 + j] = __fmul_rn(gemv_fp8(raw.y, j), s);
    }
}

/* Eight activations of row xr at i as the product takes them: with NORM their
 * squares added to *ss (the row's sum for its inverse RMS) and each times the
 * norm's weight g; the scale by the inverse RMS comes at the end (gemv_rms). */
template <bool NORM>
__device__ __forceinline__ void gemv_x8(const float *xr, int i, const float g[8], float v[8], float *ss) {
    gemv_load8(xr, i, v);
    if (NORM)
#pragma unroll
        for (int j = 0; j < 8; j++) *ss += v[j] * v[j], v[j] *= g[j];
}

__device__ __forceinline__ float gemv_dot8(const float a[8], const float w[8]) {
    return a[0] * w[0] + a[1] * w[1] + a[2] * w[2] + a[3] * w[3] + a[4] * w[4] + a[5] * w[5] + a[6] * w[6] +
           a[7] * w[7];
}

/* rmsnorm's scale of a row of cols values whose squares sum to ss (norm.cu's formula). */
__device__ __forceinline__ float gemv_rms(float ss, int cols, float eps) { return rsqrtf(ss / (float)cols + eps); }

/* What one launch computes: up to three products of the same input stacked
 * as one matrix (rows end[0], end[1], end[2] cumulative; segment i writes
 * out[i] (T, ld[i]) and adds bias[i]), or with MODE GEMV_ADD the first one
 * added into out[0], or with MODE GEMV_GLU gate = w[0], up = w[1] (rows
 * end[0] each) and out[0] = silu(gate x + b0) * (up x + b1). With NORM the
 * input is rmsnorm(x) * norm (eps) instead of x. x's rows are xld floats
 * apart (0: cols); with grows, row r reads the group r / grows of x's
 * columns, [g cols, (g+1) cols) (a grouped product, GEMV_PLAIN only). */
enum { GEMV_PLAIN = 0, GEMV_ADD = 1, GEMV_GLU = 2 };
typedef struct {
    const void *w0, *w1, *w2;
    float *out0, *out1, *out2;
    const float *b0, *b1, *b2;
    int end0, end1, end2;
    int ld0, ld1, ld2;
    int pdl; /* pdl_flags(): launched with programmatic dependent launch, and how */
    const float *norm; /* (cols) with NORM: the RMSNorm's weight */
    float eps;
    int xld, grows;
    const float *s0, *s1, *s2; /* FP8 weights (W unsigned char): each matrix's block scales, rows of scols */
    int scols, sbr, sbc;       /* and log2 of a block's rows and columns */
    int srow0;                 /* a row view's first row in the scales' grid */
} gemv_args;

/* Row `local` of segment seg's scales (FP8 weights; NULL for the others). */
template <typename W>
__device__ __forceinline__ const float *gemv_srow(const gemv_args &a, int seg, int local) {
    if (sizeof(W) != 1) return nullptr;
    const float *s = seg == 0 ? a.s0 : seg == 1 ? a.s1 : a.s2;
    return s + (size_t)((a.srow0 + local) >> a.sbr) * a.scols;
}

/* Row `row`'s x: its group's columns (grouped products), rows of gemv_xld apart. */
__device__ __forceinline__ const float *gemv_xrow(const gemv_args &a, const float *x, int row, int cols) {
    return a.grows ? x + (size_t)(row / a.grows) * cols : x;
}
__device__ __forceinline__ size_t gemv_xld(const gemv_args &a, int cols) { return a.xld ? (size_t)a.xld : (size_t)cols; }

/* Row `row` of the stacked matrix: its segment and its row in that segment. */
__device__ __forceinline__ int gemv_seg(const gemv_args &a, int row, int *local) {
    int seg = row < a.end0 ? 0 : row < a.end1 ? 1 : 2;
    *local = seg == 0 ? row : seg == 1 ? row - a.end0 : row - a.end1;
    return seg;
}

/* Stores token t's sums of a row (s: the product, u: GLU's up product) as MODE says. */
template <int MODE>
__device__ __forceinline__ void gemv_store(const gemv_args &a, int seg, int local, int t, float s, float u) {
    float *out = seg == 0 ? a.out0 : seg == 1 ? a.out1 : a.out2;
    const float *bias = seg == 0 ? a.b0 : seg == 1 ? a.b1 : a.b2;
    int ld = seg == 0 ? a.ld0 : seg == 1 ? a.ld1 : a.ld2;
    float bv = bias ? bias[local] : 0.0f;
    float *o = out + (size_t)t * ld + local;
    if (MODE == GEMV_GLU) {
        float gv = s + bv, bu = a.b1 ? a.b1[local] : 0.0f;
        *o = gv / (1.0f + expf(-gv)) * (u + bu);
    } else if (MODE == GEMV_ADD) {
        *o = *o + (s + bv);
    } else {
        *o = s + bv;
    }
}

template <int T, typename W, int MODE, bool NORM>
__global__ void __launch_bounds__(GEMV_WARPS * 32)
gemv_kernel(gemv_args a, const float *x, int cols) {
    int row = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (row >= a.end2) return;
    int local, seg = gemv_seg(a, row, &local);
    const W *wb = (const W *)(seg == 0 ? a.w0 : seg == 1 ? a.w1 : a.w2);
    const W *wr = wb + (size_t)local * cols;
    const W *wu = (const W *)a.w1 + (size_t)local * cols; /* GLU: the up row */
    const float *sr = gemv_srow<W>(a, seg, local), *su = gemv_srow<W>(a, 1, local);
    const float *xr = gemv_xrow(a, x, row, cols);
    const size_t xld = gemv_xld(a, cols);
    int n8 = cols >> 3;
    /* the row's first 2 KB into L2 while the op before may still run */
    if ((a.pdl & PDL_PREFETCH) && lane * 128 < min(cols * (int)sizeof(W), 2048)) {
        pdl_prefetch_l2((const char *)wr + lane * 128);
        if (MODE == GEMV_GLU) pdl_prefetch_l2((const char *)wu + lane * 128);
    }
    if (!(a.pdl & PDL_LATE)) pdl_trigger();
    pdl_wait();
    /* the lanes stride over all of a row's columns: the warp sees each x row whole */
    float acc[T], acc2[MODE == GEMV_GLU ? T : 1], ss[NORM ? T : 1];
#pragma unroll
    for (int t = 0; t < T; t++) acc[t] = 0.0f;
#pragma unroll
    for (int t = 0; t < (MODE == GEMV_GLU ? T : 1); t++) acc2[t] = 0.0f;
#pragma unroll
    for (int t = 0; t < (NORM ? T : 1); t++) ss[t] = 0.0f;
#pragma unroll 4
    for (int i = lane; i < n8; i += 32) {
        float wv[8], wv2[8], g[8];
        gemv_loadw(wr, sr, a.sbc, i, wv);
        if (MODE == GEMV_GLU) gemv_loadw(wu, su, a.sbc, i, wv2);
        if (NORM) gemv_load8(a.norm, i, g);
#pragma unroll
        for (int t = 0; t < T; t++) {
            float xv[8];
            gemv_x8<NORM>(xr + (size_t)t * xld, i, g, xv, &ss[NORM ? t : 0]);
            acc[t] += gemv_dot8(xv, wv);
            if (MODE == GEMV_GLU) acc2[t] += gemv_dot8(xv, wv2);
        }
    }
    if (a.pdl & PDL_LATE) pdl_trigger();
#pragma unroll
    for (int t = 0; t < T; t++) {
        for (int o = 16; o > 0; o >>= 1) acc[t] += __shfl_xor_sync(0xffffffffu, acc[t], o);
        if (MODE == GEMV_GLU)
            for (int o = 16; o > 0; o >>= 1) acc2[t] += __shfl_xor_sync(0xffffffffu, acc2[t], o);
        if (NORM) {
            for (int o = 16; o > 0; o >>= 1) ss[t] += __shfl_xor_sync(0xffffffffu, ss[t], o);
            float r = gemv_rms(ss[t], cols, a.eps);
            acc[t] *= r;
            if (MODE == GEMV_GLU) acc2[t] *= r;
        }
    }
    if (lane == 0)
#pragma unroll
        for (int t = 0; t < T; t++) gemv_store<MODE>(a, seg, local, t, acc[t], acc2[MODE == GEMV_GLU ? t : 0]);
}

/* The same products with a block of GEMV_WARPS warps on R consecutive rows
 * (row-wise segments as above, looked up per row): every thread strides
 * along the rows' columns 16 bytes at a time, so a block reads R contiguous
 * spans (fewer DRAM pages open at once than a warp per row) and each x load
 * serves R rows; the warps' partial sums meet in shared memory. A grouped
 * product's R divides its group's rows, so a block's rows share one x. */
template <int T, typename W, int MODE, bool NORM, int R>
__global__ void __launch_bounds__(GEMV_WARPS * 32)
gemv_block_kernel(gemv_args a, const float *x, int cols) {
    constexpr int NT = GEMV_WARPS * 32, NA = MODE == GEMV_GLU ? 2 : 1;
    __shared__ float red[GEMV_WARPS][NA][R][T];
    __shared__ float red_ss[GEMV_WARPS][T]; /* with NORM: the warps' sums of squares of each x row */
    const int row0 = blockIdx.x * R, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const W *wr[R], *wu[R];
    const float *sr[R], *su[R];
#pragma unroll
    for (int r = 0; r < R; r++) {
        int row = min(row0 + r, a.end2 - 1); /* rows past the end: read row end2 - 1, never stored */
        int local, seg = gemv_seg(a, row, &local);
        wr[r] = (const W *)(seg == 0 ? a.w0 : seg == 1 ? a.w1 : a.w2) + (size_t)local * cols;
        wu[r] = (const W *)a.w1 + (size_t)local * cols; /* GLU: the up row */
        sr[r] = gemv_srow<W>(a, seg, local), su[r] = gemv_srow<W>(a, 1, local);
    }
    const float *xr = gemv_xrow(a, x, min(row0, a.end2 - 1), cols);
    const size_t xld = gemv_xld(a, cols);
    /* the rows' first 2 KB into L2 while the op before may still run */
    {
        int lines = min(cols * (int)sizeof(W), 2048) / 128, r = tid / 16, l = tid % 16;
        if ((a.pdl & PDL_PREFETCH) && r < R && l < lines) {
            pdl_prefetch_l2((const char *)wr[r] + l * 128);
            if (MODE == GEMV_GLU) pdl_prefetch_l2((const char *)wu[r] + l * 128);
        }
    }
    if (!(a.pdl & PDL_LATE)) pdl_trigger();
    pdl_wait();
    float acc[NA][R][T], ss[NORM ? T : 1];
#pragma unroll
    for (int k = 0; k < NA; k++)
#pragma unroll
        for (int r = 0; r < R; r++)
#pragma unroll
            for (int t = 0; t < T; t++) acc[k][r][t] = 0.0f;
#pragma unroll
    for (int t = 0; t < (NORM ? T : 1); t++) ss[t] = 0.0f;
    const int n8 = cols >> 3;
#pragma unroll 2
    for (int i = tid; i < n8; i += NT) {
        float wv[NA][R][8], g[8];
#pragma unroll
        for (int r = 0; r < R; r++) {
            gemv_loadw(wr[r], sr[r], a.sbc, i, wv[0][r]);
            if (MODE == GEMV_GLU) gemv_loadw(wu[r], su[r], a.sbc, i, wv[NA - 1][r]);
        }
        if (NORM) gemv_load8(a.norm, i, g);
#pragma unroll
        for (int t = 0; t < T; t++) {
            float xv[8];
            gemv_x8<NORM>(xr + (size_t)t * xld, i, g, xv, &ss[NORM ? t : 0]);
#pragma unroll
            for (int k = 0; k < NA; k++)
#pragma unroll
                for (int r = 0; r < R; r++) acc[k][r][t] += gemv_dot8(xv, wv[k][r]);
        }
    }
    if (a.pdl & PDL_LATE) pdl_trigger();
#pragma unroll
    for (int k = 0; k < NA; k++)
#pragma unroll
        for (int r = 0; r < R; r++)
#pragma unroll
            for (int t = 0; t < T; t++) {
                float v = acc[k][r][t];
                for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
                if (lane == 0) red[warp][k][r][t] = v;
            }
    if (NORM) /* the block's threads together saw each x row once */
#pragma unroll
        for (int t = 0; t < T; t++) {
            float v = ss[t];
            for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
            if (lane == 0) red_ss[warp][t] = v;
        }
    __syncthreads();
    if (tid >= R * T) return;
    const int r = tid / T, t = tid % T, row = row0 + r;
    if (row >= a.end2) return;
    float sum[NA], sst = 0.0f;
#pragma unroll
    for (int k = 0; k < NA; k++) {
        sum[k] = 0.0f;
        for (int w = 0; w < GEMV_WARPS; w++) sum[k] += red[w][k][r][t];
    }
    if (NORM) {
        for (int w = 0; w < GEMV_WARPS; w++) sst += red_ss[w][t];
        float rs = gemv_rms(sst, cols, a.eps);
#pragma unroll
        for (int k = 0; k < NA; k++) sum[k] *= rs;
    }
    int local, seg = gemv_seg(a, row, &local);
    gemv_store<MODE>(a, seg, local, t, sum[0], sum[NA - 1]);
}

/* Which kernel, by measurement (H100, bench/RESULTS.md): the block kernel on
 * matrices up to GEMV_BLOCK_MAX_BYTES (alone in a graph 1024x4096 takes 4.9
 * against 7.3 us; llama3-1b, whose products are all small, decodes 1.5%
 * faster with it), a warp per row on larger ones and for gate|up (2x14336x4096
 * GLU 77.7 against 92.2 us; llama3-8b and qwen3-8b decode 1.2-1.6% faster
 * with warps everywhere). ENGRAM_GEMV=warp|block forces one (benchmarks). */
#define GEMV_BLOCK_MAX_BYTES (16u << 20)
static bool gemv_use_block(int mode, int rows, int cols, size_t wbytes) {
    static int force = -1;
    if (force < 0) {
        const char *v = getenv("ENGRAM_GEMV");
        force = v && !strcmp(v, "warp") ? 0 : v && !strcmp(v, "block") ? 1 : 2;
    }
    if (force < 2) return force;
    return mode != GEMV_GLU && (size_t)rows * cols * wbytes <= GEMV_BLOCK_MAX_BYTES;
}

template <int T, typename W, int MODE, bool NORM>
static void gemv_block_launch(const gemv_args &a, const float *x, int cols, cudaStream_t st) {
    /* R by rows: enough blocks to fill the GPU several times over (a grouped product's R divides
     * its groups' rows) */
    int rows = a.end2;
    dim3 block(GEMV_WARPS * 32);
    if (rows >= 8192 && a.grows % 4 == 0)
        pdl_launch(gemv_block_kernel<T, W, MODE, NORM, 4>, dim3((rows + 3) / 4), block, 0, st, a, x, cols);
    else if (rows >= 2048 && a.grows % 2 == 0)
        pdl_launch(gemv_block_kernel<T, W, MODE, NORM, 2>, dim3((rows + 1) / 2), block, 0, st, a, x, cols);
    else pdl_launch(gemv_block_kernel<T, W, MODE, NORM, 1>, dim3(rows), block, 0, st, a, x, cols);
}

template <typename W, int MODE, bool NORM>
static int gemv_run(gemv_args a, const float *x, int T, int cols, void *stream) {
    if (a.end2 == 0) return KERNELS_OK;
    a.pdl = pdl_flags();
    dim3 grid((a.end2 + GEMV_WARPS - 1) / GEMV_WARPS), block(GEMV_WARPS * 32);
    cudaStream_t st = (cudaStream_t)stream;
    /* FP8 weights choose as their bf16 expansion would (2 bytes an element): the same kernel, so the
     * same sums, bit for bit (kernels_gemv_fp8) */
    if (T <= 2 && gemv_use_block(MODE, a.end2, cols, sizeof(W) == 1 ? 2 : sizeof(W))) {
        if (T == 1) gemv_block_launch<1, W, MODE, NORM>(a, x, cols, st);
        else gemv_block_launch<2, W, MODE, NORM>(a, x, cols, st);
        return cudaGetLastError() == cudaSuccess ? KERNELS_OK : KERNELS_ERR_LAUNCH;
    }
    switch (T) {
    case 1: pdl_launch(gemv_kernel<1, W, MODE, NORM>, grid, block, 0, st, a, x, cols); break;
    case 2: pdl_launch(gemv_kernel<2, W, MODE, NORM>, grid, block, 0, st, a, x, cols); break;
    case 3: pdl_launch(gemv_kernel<3, W, MODE, NORM>, grid, block, 0, st, a, x, cols); break;
    case 4: pdl_launch(gemv_kernel<4, W, MODE, NORM>, grid, block, 0, st, a, x, cols); break;
    case 5: pdl_launch(gemv_kernel<5, W, MODE, NORM>, grid, block, 0, st, a, x, cols); break;
    case 6: pdl_launch(gemv_kernel<6, W, MODE, NORM>, grid, block, 0, st, a, x, cols); break;
    case 7: pdl_launch(gemv_kernel<7, W, MODE, NORM>, grid, block, 0, st, a, x, cols); break;
    default: pdl_launch(gemv_kernel<8, W, MODE, NORM>, grid, block, 0, st, a, x, cols); break;
    }
    return cudaGetLastError() == cudaSuccess ? KERNELS_OK : KERNELS_ERR_LAUNCH;
}

/* The products of a with bf16 (or f32) weights, on rmsnorm(x) * a.norm when a.norm is set. */
template <int MODE>
static int gemv_run_norm(const gemv_args &a, const float *x, int T, int cols, int f32, void *stream) {
    if (a.norm)
        return f32 ? gemv_run<float, MODE, true>(a, x, T, cols, stream)
                   : gemv_run<__nv_bfloat16, MODE, true>(a, x, T, cols, stream);
    return f32 ? gemv_run<float, MODE, false>(a, x, T, cols, stream)
               : gemv_run<__nv_bfloat16, MODE, false>(a, x, T, cols, stream);
}

template <typename W>
static int gemv_launch(float *out, const float *x, const void *w, const float *bias, int T, int rows, int cols,
                       void *stream) {
    if (rows < 0 || !kernels_gemv_supported(x, w, T, cols)) return KERNELS_ERR_ARG;
    gemv_args a = {w, w, w, out, out, out, bias, bias, bias, rows, rows, rows, rows, rows, rows};
    return gemv_run<W, GEMV_PLAIN, false>(a, x, T, cols, stream);
}

/* The matrix-vector kernels' rules: T, cols a multiple of 8, x 16-byte aligned, and the weights
 * aligned for one 8-element load (16 bytes of bf16, 8 of FP8 codes). */
static int gemv_ok(const float *x, const void *w, int T, int cols, uintptr_t w_align) {
    return T >= 1 && T <= KERNELS_GEMV_MAX_T && cols % 8 == 0 && (uintptr_t)x % 16 == 0 && (uintptr_t)w % w_align == 0;
}

extern "C" int kernels_gemv_supported(const float *x, const void *w, int T, int cols) { return gemv_ok(x, w, T, cols, 16); }

extern "C" int kernels_gemv_bf16(float *out, const float *x, const void *w, const float *bias, int T, int rows,
                                 int cols, void *stream) {
    return gemv_launch<__nv_bfloat16>(out, x, w, bias, T, rows, cols, stream);
}

extern "C" int kernels_gemv_f32(float *out, const float *x, const void *w, const float *bias, int T, int rows,
                                int cols, void *stream) {
    return gemv_launch<float>(out, x, w, bias, T, rows, cols, stream);
}

extern "C" int kernels_gemv_grouped(float *out, const float *x, int xld, const void *w, int T, int G, int rows,
                                    int cols, int f32, void *stream) {
    if (G < 1 || rows < 0 || xld % 4 || xld < G * cols || !kernels_gemv_supported(x, w, T, cols))
        return KERNELS_ERR_ARG;
    int n = G * rows;
    gemv_args a = {w, w, w, out, out, out, NULL, NULL, NULL, n, n, n, n, n, n};
    a.xld = xld, a.grows = rows;
    return f32 ? gemv_run<float, GEMV_PLAIN, false>(a, x, T, cols, stream)
               : gemv_run<__nv_bfloat16, GEMV_PLAIN, false>(a, x, T, cols, stream);
}

/* FP8 weights (kernels.h, kernels_fp8w): the scales' layout into a. */
static int gemv_fp8_args(gemv_args *a, const kernels_fp8w *w) {
    if (!w->codes || !w->scales || w->scols < 1 || w->sbr < 0 || w->sbr > 20 || w->sbc < 3 || w->sbc > 20 ||
        w->row0 < 0)
        return 0;
    a->s0 = a->s1 = a->s2 = w->scales;
    a->scols = w->scols, a->sbr = w->sbr, a->sbc = w->sbc, a->srow0 = w->row0;
    return 1;
}

extern "C" int kernels_gemv_fp8_supported(const float *x, const void *codes, int T, int cols) {
    return gemv_ok(x, codes, T, cols, 8);
}

extern "C" int kernels_gemv_fp8(float *out, const float *x, const kernels_fp8w *w, const float *bias, int T, int rows,
                                int cols, int add, void *stream) {
    if (rows < 0 || !kernels_gemv_fp8_supported(x, w->codes, T, cols)) return KERNELS_ERR_ARG;
    const void *c = w->codes;
    gemv_args a = {c, c, c, out, out, out, bias, bias, bias, rows, rows, rows, rows, rows, rows};
    if (!gemv_fp8_args(&a, w)) return KERNELS_ERR_ARG;
    return add ? gemv_run<unsigned char, GEMV_ADD, false>(a, x, T, cols, stream)
               : gemv_run<unsigned char, GEMV_PLAIN, false>(a, x, T, cols, stream);
}

extern "C" int kernels_gemv_grouped_fp8(float *out, const float *x, int xld, const kernels_fp8w *w, int T, int G,
                                        int rows, int cols, void *stream) {
    if (G < 1 || rows < 0 || xld % 4 || xld < G * cols || !kernels_gemv_fp8_supported(x, w->codes, T, cols))
        return KERNELS_ERR_ARG;
    int n = G * rows;
    const void *c = w->codes;
    gemv_args a = {c, c, c, out, out, out, NULL, NULL, NULL, n, n, n, n, n, n};
    a.xld = xld, a.grows = rows;
    if (!gemv_fp8_args(&a, w)) return KERNELS_ERR_ARG;
    return gemv_run<unsigned char, GEMV_PLAIN, false>(a, x, T, cols, stream);
}

/* dst (rows, cols) bf16 = the FP8 matrix's values: eight a thread, decoded as the matrix-vector
 * kernel decodes them (exact: each is a bf16, so the rounding to bf16 changes nothing). */
__global__ void fp8_to_bf16_kernel(uint4 *dst, const unsigned char *codes, const float *scales, int scols, int sbr,
                                   int sbc, int row0, int cols, size_t n8) {
    for (size_t k = blockIdx.x * (size_t)blockDim.x + threadIdx.x; k < n8; k += (size_t)gridDim.x * blockDim.x) {
        size_t r = k / (size_t)(cols >> 3);
        int i = (int)(k - r * (size_t)(cols >> 3));
        float w[8];
        gemv_loadw(codes + r * cols, scales + ((row0 + r) >> sbr) * scols, sbc, i, w);
        __nv_bfloat162 b[4];
#pragma unroll
        for (int j = 0; j < 4; j++) b[j] = __floats2bfloat162_rn(w[2 * j], w[2 * j + 1]);
        dst[k] = *(uint4 *)b;
    }
}

extern "C" int kernels_fp8_to_bf16(void *dst, const kernels_fp8w *w, int rows, int cols, void *stream) {
    gemv_args a = {};
    if (rows < 0 || cols % 8 || (uintptr_t)dst % 16 || (uintptr_t)w->codes % 8 || !gemv_fp8_args(&a, w))
        return KERNELS_ERR_ARG;
    size_t n8 = (size_t)rows * cols / 8;
    if (!n8) return KERNELS_OK;
    int blocks = (int)((n8 + 255) / 256 < 4096 ? (n8 + 255) / 256 : 4096);
    fp8_to_bf16_kernel<<<blocks, 256, 0, (cudaStream_t)stream>>>((uint4 *)dst, (const unsigned char *)w->codes,
                                                                  w->scales, w->scols, w->sbr, w->sbc, w->row0, cols,
                                                                  n8);
    return cudaGetLastError() == cudaSuccess ? KERNELS_OK : KERNELS_ERR_LAUNCH;
}

/* Pointers of the weights in one launch: all 16-byte aligned. */
static int gemv_w_ok(const float *x, const void *w, int T, int cols) { return kernels_gemv_supported(x, w, T, cols); }

extern "C" int kernels_gemv3(float *out0, float *out1, float *out2, const float *x, const void *w0, const void *w1,
                             const void *w2, const float *b0, const float *b1, const float *b2, int rows0, int rows1,
                             int rows2, int T, int cols, const float *norm, float eps, int f32, void *stream) {
    if (rows0 < 0 || rows1 < 0 || rows2 < 0 || !gemv_w_ok(x, w0, T, cols) || !gemv_w_ok(x, w1, T, cols) ||
        !gemv_w_ok(x, w2, T, cols) || (norm && !gemv_w_ok(x, norm, T, cols)))
        return KERNELS_ERR_ARG;
    gemv_args a = {w0, w1, w2, out0, out1, out2, b0, b1, b2, rows0, rows0 + rows1, rows0 + rows1 + rows2,
                   rows0, rows1, rows2};
    a.norm = norm, a.eps = eps;
    return gemv_run_norm<GEMV_PLAIN>(a, x, T, cols, f32, stream);
}

extern "C" int kernels_gemv_add(float *out, const float *x, const void *w, const float *bias, int T, int rows,
                                int cols, int f32, void *stream) {
    if (rows < 0 || !gemv_w_ok(x, w, T, cols)) return KERNELS_ERR_ARG;
    gemv_args a = {w, w, w, out, out, out, bias, bias, bias, rows, rows, rows, rows, rows, rows};
    return f32 ? gemv_run<float, GEMV_ADD, false>(a, x, T, cols, stream)
               : gemv_run<__nv_bfloat16, GEMV_ADD, false>(a, x, T, cols, stream);
}

extern "C" int kernels_gemv_glu(float *out, const float *x, const void *wg, const void *wu, const float *bg,
                                const float *bu, int T, int rows, int cols, const float *norm, float eps, int f32,
                                void *stream) {
    if (rows < 0 || !gemv_w_ok(x, wg, T, cols) || !gemv_w_ok(x, wu, T, cols) || (norm && !gemv_w_ok(x, norm, T, cols)))
        return KERNELS_ERR_ARG;
    gemv_args a = {wg, wu, wg, out, out, out, bg, bu, bg, rows, rows, rows, rows, rows, rows};
    a.norm = norm, a.eps = eps;
    return gemv_run_norm<GEMV_GLU>(a, x, T, cols, f32, stream);
}

/* ---- L2 prefetch ---- */

#define L2PF_BLOCKS 64
#define L2PF_THREADS 256

__global__ void __launch_bounds__(L2PF_THREADS) l2_prefetch_kernel(const char *p, size_t lines) {
    size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < lines; i += stride)
        pdl_prefetch_l2(p + i * 128);
}

extern "C" int kernels_l2_prefetch(const void *p, size_t bytes, void *stream) {
    if (!p || !bytes) return KERNELS_OK;
    const char *b = (const char *)((uintptr_t)p & ~(uintptr_t)127);
    size_t lines = ((const char *)p + bytes - b + 127) / 128;
    l2_prefetch_kernel<<<L2PF_BLOCKS, L2PF_THREADS, 0, (cudaStream_t)stream>>>(b, lines);
    return cudaGetLastError() == cudaSuccess ? KERNELS_OK : KERNELS_ERR_LAUNCH;
}
