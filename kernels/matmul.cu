// Matrix-vector products for decode: out (T, rows) = x (T, cols) @ w^T (+ bias)
// for a few tokens (T <= 8), bf16 or f32 weights read once from memory and f32
// activations (not rounded), f32 accumulation. One warp per weight row, 16-byte
// loads; the T activation rows are read through the cache by every warp.
// Larger T goes through cuBLAS in the backend.
#include "kernels.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

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

template <int T, typename W>
__global__ void __launch_bounds__(GEMV_WARPS * 32)
gemv_kernel(float *out, const float *x, const W *w, const float *bias, int rows, int cols) {
    int row = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (row >= rows) return;
    const W *wr = w + (size_t)row * cols;
    int n8 = cols >> 3;
    float acc[T];
#pragma unroll
    for (int t = 0; t < T; t++) acc[t] = 0.0f;
#pragma unroll 4
    for (int i = lane; i < n8; i += 32) {
        float wv[8];
        gemv_load8(wr, i, wv);
#pragma unroll
        for (int t = 0; t < T; t++) {
            const float4 *xp = (const float4 *)(x + (size_t)t * cols) + 2 * i;
            float4 a = __ldg(xp), b = __ldg(xp + 1);
            acc[t] += a.x * wv[0] + a.y * wv[1] + a.z * wv[2] + a.w * wv[3] + b.x * wv[4] + b.y * wv[5] +
                      b.z * wv[6] + b.w * wv[7];
        }
    }
#pragma unroll
    for (int t = 0; t < T; t++)
        for (int o = 16; o > 0; o >>= 1) acc[t] += __shfl_xor_sync(0xffffffffu, acc[t], o);
    if (lane == 0) {
        float bv = bias ? bias[row] : 0.0f;
#pragma unroll
        for (int t = 0; t < T; t++) out[(size_t)t * rows + row] = acc[t] + bv;
    }
}

template <typename W>
static int gemv_launch(float *out, const float *x, const void *w, const float *bias, int T, int rows, int cols,
                       void *stream) {
    if (rows < 0 || !kernels_gemv_supported(x, w, T, cols)) return KERNELS_ERR_ARG;
    if (rows == 0) return KERNELS_OK;
    dim3 grid((rows + GEMV_WARPS - 1) / GEMV_WARPS), block(GEMV_WARPS * 32);
    cudaStream_t st = (cudaStream_t)stream;
    const W *wt = (const W *)w;
    switch (T) {
    case 1: gemv_kernel<1, W><<<grid, block, 0, st>>>(out, x, wt, bias, rows, cols); break;
    case 2: gemv_kernel<2, W><<<grid, block, 0, st>>>(out, x, wt, bias, rows, cols); break;
    case 3: gemv_kernel<3, W><<<grid, block, 0, st>>>(out, x, wt, bias, rows, cols); break;
    case 4: gemv_kernel<4, W><<<grid, block, 0, st>>>(out, x, wt, bias, rows, cols); break;
    case 5: gemv_kernel<5, W><<<grid, block, 0, st>>>(out, x, wt, bias, rows, cols); break;
    case 6: gemv_kernel<6, W><<<grid, block, 0, st>>>(out, x, wt, bias, rows, cols); break;
    case 7: gemv_kernel<7, W><<<grid, block, 0, st>>>(out, x, wt, bias, rows, cols); break;
    default: gemv_kernel<8, W><<<grid, block, 0, st>>>(out, x, wt, bias, rows, cols); break;
    }
    return cudaGetLastError() == cudaSuccess ? KERNELS_OK : KERNELS_ERR_LAUNCH;
}

extern "C" int kernels_gemv_supported(const float *x, const void *w, int T, int cols) {
    return T >= 1 && T <= KERNELS_GEMV_MAX_T && cols % 8 == 0 && (uintptr_t)x % 16 == 0 && (uintptr_t)w % 16 == 0;
}

extern "C" int kernels_gemv_bf16(float *out, const float *x, const void *w, const float *bias, int T, int rows,
                                 int cols, void *stream) {
    return gemv_launch<__nv_bfloat16>(out, x, w, bias, T, rows, cols, stream);
}

extern "C" int kernels_gemv_f32(float *out, const float *x, const void *w, const float *bias, int T, int rows,
                                int cols, void *stream) {
    return gemv_launch<float>(out, x, w, bias, T, rows, cols, stream);
}
