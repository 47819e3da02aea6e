// Products with few output rows on f32 weights: out (T, rows) = x (T, K) @ w^T (+ bias), rows <= 64,
// at any T. DeepSeek-V4's hyper-connection products are such (24 x 16384 and the head's 4 x 16384),
// and pedantic f32 cuBLAS took 75 times their bytes' time on them (H100, 24 x 16384 at T = 1024:
// 1,867 us for 64 MiB of x). Their bytes are x's, read once; the weight (at most 64 x K floats)
// stays in L2, and a chunk of it sits in each block's shared memory.
//
// The work is split over K in fixed chunks of SK_KC floats (blockIdx.y) and over tokens (blockIdx.x):
// a warp takes 8 tokens (16 with A = 2), SK_S = 4 lanes a token, each lane reading every SK_S-th
// float4 of the token's chunk (so the 4 lanes of a token read 64 contiguous bytes a step, coalesced)
// and the weights of all R rows at those columns from shared memory (8 distinct 16-byte words a
// warp load: no bank conflict). Chunk sums go to a scratch of partials that a second launch adds up;
// a K of one chunk writes the output at once.
//
// Determinism: each output is one dot product summed in an order fixed by K alone. Lane s of a
// token sums its float4s s, s + 4, s + 8, ... of the chunk in order, four fmas each; the four
// lanes' sums meet by a butterfly (the same value in every lane: a + b == b + a); the chunks' sums
// are added in chunk order. No token's result depends on T, on the other tokens, on where the token
// falls in a tile, or on how the tokens are cut into launches (batch invariance, as the rest of the
// backend promises).
#include "kernels/kernels.h"
#include "kernels/smem.cuh"

#include <cuda_runtime.h>
#include <stdint.h>

#define SK_S 4              // lanes a token: the K split inside a warp
#define SK_KC 256           // floats of K a chunk (fixed: the order of the sums depends on it)
#define SK_WARPS 4          // warps a block
#define SK_THREADS (SK_WARPS * 32)
#define SK_WORK (1u << 22)  // partials' scratch bound, floats (16 MiB: stays in L2); more tokens, more launches

struct sk_args {
    float *out;          // (T, rows)
    const float *x;      // (T, K)
    const float *w;      // (rows, K)
    const float *bias;   // (rows) or NULL
    float *part;         // (nc, rows, T) chunk sums, or NULL when nc == 1
    int T, rows, K, nc, add;
};

// Output (t, r) from its sum v: + bias, then stored, or added to what is there (matmul_add: the
// product and bias first, as matmul then add would).
__device__ __forceinline__ void sk_store(const sk_args &a, int t, int r, float v) {
    if (a.bias) v += a.bias[r];
    float *o = a.out + (size_t)t * a.rows + r;
    *o = a.add ? *o + v : v;
}

// x's float4 j of a token's chunk; past the chunk's end its last one again (never summed; a load
// every lane makes, without zeroing the registers of those that would skip it).
__device__ __forceinline__ float4 sk_load(const float4 *xr, int j, int n4) { return __ldg(xr + min(j, n4 - 1)); }

// The four columns of float4 j into every row's sum of each of the lane's A tokens, in column order.
template <int R, int A>
__device__ __forceinline__ void sk_fma(float (&acc)[A][R], const float4 (&xv)[A], const float4 *sw, int j) {
#pragma unroll
    for (int r = 0; r < R; r++) {
        float4 w = sw[r * (SK_KC / 4) + j];
#pragma unroll
        for (int q = 0; q < A; q++) {
            acc[q][r] = fmaf(xv[q].x, w.x, acc[q][r]);
            acc[q][r] = fmaf(xv[q].y, w.y, acc[q][r]);
            acc[q][r] = fmaf(xv[q].z, w.z, acc[q][r]);
            acc[q][r] = fmaf(xv[q].w, w.w, acc[q][r]);
        }
    }
}

// Chunk blockIdx.y of every row for the block's tokens; R >= rows (the rows past a.rows repeat the
// last one and are never stored), A tokens a lane. The launch bound lets ptxas keep every sum in
// registers (at the default it spilled one at R = 24, A = 1; R A = 64 spills at 128 registers, the
// limit of 4 blocks an SM).
template <int R, int A>
__global__ void __launch_bounds__(SK_THREADS, R * A <= 48 ? 4 : R * A <= 64 ? 3 : 2) skinny_chunk_kernel(sk_args a) {
    extern __shared__ float4 sw[]; // (R, SK_KC / 4): the chunk's columns of the weight rows
    const int c = blockIdx.y, k0 = c * SK_KC, n4 = min(SK_KC, a.K - k0) / 4;
    for (int i = threadIdx.x; i < R * n4; i += SK_THREADS) {
        int r = i / n4, j = i - r * n4;
        sw[r * (SK_KC / 4) + j] = __ldg((const float4 *)(a.w + (size_t)min(r, a.rows - 1) * a.K + k0) + j);
    }
    __syncthreads();
    const int lane = threadIdx.x & 31, s = lane % SK_S, tl = lane / SK_S;
    const int tw = (blockIdx.x * SK_WARPS + (threadIdx.x >> 5)) * (32 / SK_S) * A; // the warp's first token
    if (tw >= a.T) return;
    const float4 *xr[A]; // token q: tw + q * 8 + tl (past T: the last token again, never stored)
#pragma unroll
    for (int q = 0; q < A; q++)
        xr[q] = (const float4 *)(a.x + (size_t)min(tw + q * (32 / SK_S) + tl, a.T - 1) * a.K + k0);
    float acc[A][R];
#pragma unroll
    for (int q = 0; q < A; q++)
#pragma unroll
        for (int r = 0; r < R; r++) acc[q][r] = 0.0f;
    /* two steps of x in registers while the two before them are summed: x is the only stream from
     * DRAM, and a block has few warps to hide its latency with */
    float4 x0[A], x1[A];
#pragma unroll
    for (int q = 0; q < A; q++) x0[q] = sk_load(xr[q], s, n4), x1[q] = sk_load(xr[q], s + SK_S, n4);
    for (int j = s; j < n4; j += 2 * SK_S) {
        float4 y0[A], y1[A];
#pragma unroll
        for (int q = 0; q < A; q++)
            y0[q] = sk_load(xr[q], j + 2 * SK_S, n4), y1[q] = sk_load(xr[q], j + 3 * SK_S, n4);
        sk_fma<R, A>(acc, x0, sw, j);
        if (j + SK_S < n4) sk_fma<R, A>(acc, x1, sw, j + SK_S);
#pragma unroll
        for (int q = 0; q < A; q++) x0[q] = y0[q], x1[q] = y1[q];
    }
    /* the token's SK_S lane sums, the same bits in each lane; lane s stores the rows r % SK_S == s */
#pragma unroll
    for (int q = 0; q < A; q++) {
        const int t = tw + q * (32 / SK_S) + tl;
#pragma unroll
        for (int r = 0; r < R; r++) {
            float v = acc[q][r];
#pragma unroll
            for (int o = 1; o < SK_S; o <<= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
            if (r % SK_S != s || r >= a.rows || t >= a.T) continue;
            if (a.nc == 1) sk_store(a, t, r, v);
            else a.part[((size_t)c * a.rows + r) * a.T + t] = v;
        }
    }
}

// out (t, r) = the chunk sums of (t, r) added in chunk order; a thread an output, consecutive
// threads consecutive tokens (coalesced reads of the partials).
__global__ void skinny_sum_kernel(sk_args a) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= a.T * a.rows) return;
    int r = i / a.T, t = i - r * a.T;
    const float *p = a.part + (size_t)r * a.T + t;
    const size_t cs = (size_t)a.rows * a.T;
    float v = p[0];
#pragma unroll 8
    for (int c = 1; c < a.nc; c++) v += p[(size_t)c * cs];
    sk_store(a, t, r, v);
}

static int sk_chunks(int K) { return (K + SK_KC - 1) / SK_KC; }

// Tokens a pair of launches takes: all of them, unless their partials would pass SK_WORK floats.
static int sk_slab(int T, int rows, int nc) {
    if (nc == 1) return T;
    long most = (long)(SK_WORK / ((unsigned)rows * (unsigned)nc));
    return (int)(T < most ? T : most < 32 ? 32 : most);
}

// R's shared memory (R x SK_KC floats) past the 48 KiB a launch gets unasked (R = 64): kernels/smem.cuh.
template <int R, int A>
static int sk_configure(void) {
    const size_t smem = (size_t)R * SK_KC * sizeof(float);
    static unsigned done;
    return smem <= 48 * 1024 ? 0 : smem_raise_once(skinny_chunk_kernel<R, A>, smem, &done);
}

template <int R, int A>
static int sk_launch_chunks(const sk_args &a, cudaStream_t st) {
    if (sk_configure<R, A>()) return KERNELS_ERR_LAUNCH;
    const int per_block = SK_WARPS * (32 / SK_S) * A;
    dim3 grid((a.T + per_block - 1) / per_block, a.nc);
    skinny_chunk_kernel<R, A><<<grid, SK_THREADS, (size_t)R * SK_KC * sizeof(float), st>>>(a);
    return 0;
}

// The rows rounded up to an instantiated R; two tokens a lane on larger steps (half the shared
// loads a multiply) while the sums fit in registers (R <= 32), one on smaller ones (twice the
// warps to hide the loads behind).
static int sk_launch(const sk_args &a, cudaStream_t st) {
    const int two = a.T >= 512;
    if (a.rows <= 4) return two ? sk_launch_chunks<4, 2>(a, st) : sk_launch_chunks<4, 1>(a, st);
    if (a.rows <= 8) return two ? sk_launch_chunks<8, 2>(a, st) : sk_launch_chunks<8, 1>(a, st);
    if (a.rows <= 16) return two ? sk_launch_chunks<16, 2>(a, st) : sk_launch_chunks<16, 1>(a, st);
    if (a.rows <= 24) return two ? sk_launch_chunks<24, 2>(a, st) : sk_launch_chunks<24, 1>(a, st);
    if (a.rows <= 32) return two ? sk_launch_chunks<32, 2>(a, st) : sk_launch_chunks<32, 1>(a, st);
    if (a.rows <= 48) return sk_launch_chunks<48, 1>(a, st);
    return sk_launch_chunks<64, 1>(a, st);
}

extern "C" int kernels_skinny_supported(const float *x, const void *w, int rows, int cols) {
    return rows >= 1 && rows <= KERNELS_SKINNY_MAX_ROWS && cols >= 4 && cols % 4 == 0 &&
           sk_chunks(cols) <= 65535 && (uintptr_t)x % 16 == 0 && (uintptr_t)w % 16 == 0;
}

extern "C" size_t kernels_skinny_work_floats(int T, int rows, int cols) {
    if (T <= 0 || rows < 1 || cols < 4) return 0;
    int nc = sk_chunks(cols);
    return nc == 1 ? 0 : (size_t)sk_slab(T, rows, nc) * rows * nc;
}

extern "C" int kernels_skinny_f32(float *out, const float *x, const void *w, const float *bias, int T, int rows,
                                  int cols, int add, float *work, size_t work_floats, void *stream) {
    if (T < 0 || !kernels_skinny_supported(x, w, rows, cols)) return KERNELS_ERR_ARG;
    if (T == 0) return KERNELS_OK;
    const int nc = sk_chunks(cols), slab = sk_slab(T, rows, nc);
    if (nc > 1 && (!work || work_floats < kernels_skinny_work_floats(T, rows, cols))) return KERNELS_ERR_ARG;
    cudaStream_t st = (cudaStream_t)stream;
    for (int t0 = 0; t0 < T; t0 += slab) {
        sk_args a = {out + (size_t)t0 * rows, x + (size_t)t0 * cols, (const float *)w, bias, nc > 1 ? work : NULL,
                     T - t0 < slab ? T - t0 : slab, rows, cols, nc, add};
        if (sk_launch(a, st)) return KERNELS_ERR_LAUNCH;
        if (nc > 1) {
            int n = a.T * rows;
            skinny_sum_kernel<<<(n + 255) / 256, 256, 0, st>>>(a);
        }
    }
    return cudaGetLastError() == cudaSuccess ? KERNELS_OK : KERNELS_ERR_LAUNCH;
}
