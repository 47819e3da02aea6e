// Matrix-vector products for decode: out (T, rows) = x (T, cols) @ w^T (+ bias)
// for a few tokens (T <= 8), bf16 weights read once from memory and f32
// activations (not rounded), f32 accumulation. One warp per weight row, 16-byte
// loads; the T activation rows are read through the cache by every warp.
// Larger T goes through cuBLAS in the backend.
#include "kernels.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#define GEMV_WARPS 8

template <int T>
__global__ void __launch_bounds__(GEMV_WARPS * 32)
gemv_bf16_kernel(float *out, const float *x, const __nv_bfloat16 *w, const float *bias, int rows, int cols) {
    int row = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (row >= rows) return;
    const uint4 *wr = (const uint4 *)(w + (size_t)row * cols);
    int n8 = cols >> 3;
    float acc[T];
#pragma unroll
    for (int t = 0; t < T; t++) acc[t] = 0.0f;
#pragma unroll 4
    for (int i = lane; i < n8; i += 32) {
        uint4 raw = __ldg(wr + i);
        const __nv_bfloat162 *b2 = (const __nv_bfloat162 *)&raw;
        float2 w0 = __bfloat1622float2(b2[0]), w1 = __bfloat1622float2(b2[1]);
        float2 w2 = __bfloat1622float2(b2[2]), w3 = __bfloat1622float2(b2[3]);
#pragma unroll
        for (int t = 0; t < T; t++) {
            const float4 *xp = (const float4 *)(x + (size_t)t * cols) + 2 * i;
            float4 a = __ldg(xp), b = __ldg(xp + 1);
            acc[t] += a.x * w0.x + a.y * w0.y + a.z * w1.x + a.w * w1.y + b.x * w2.x + b.y * w2.y + b.z * w3.x +
                      b.w * w3.y;
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

extern "C" int kernels_gemv_supported(const float *x, const void *w, int T, int cols) {
    return T >= 1 && T <= KERNELS_GEMV_MAX_T && cols % 8 == 0 && (uintptr_t)x % 16 == 0 && (uintptr_t)w % 16 == 0;
}

extern "C" int kernels_gemv_bf16(float *out, const float *x, const void *w, const float *bias, int T, int rows,
                                 int cols, void *stream) {
    if (rows < 0 || !kernels_gemv_supported(x, w, T, cols)) return KERNELS_ERR_ARG;
    if (rows == 0) return KERNELS_OK;
    dim3 grid((rows + GEMV_WARPS - 1) / GEMV_WARPS), block(GEMV_WARPS * 32);
    cudaStream_t st = (cudaStream_t)stream;
    const __nv_bfloat16 *wb = (const __nv_bfloat16 *)w;
    switch (T) {
    case 1: gemv_bf16_kernel<1><<<grid, block, 0, st>>>(out, x, wb, bias, rows, cols); break;
    case 2: gemv_bf16_kernel<2><<<grid, block, 0, st>>>(out, x, wb, bias, rows, cols); break;
    case 3: gemv_bf16_kernel<3><<<grid, block, 0, st>>>(out, x, wb, bias, rows, cols); break;
    case 4: gemv_bf16_kernel<4><<<grid, block, 0, st>>>(out, x, wb, bias, rows, cols); break;
    case 5: gemv_bf16_kernel<5><<<grid, block, 0, st>>>(out, x, wb, bias, rows, cols); break;
    case 6: gemv_bf16_kernel<6><<<grid, block, 0, st>>>(out, x, wb, bias, rows, cols); break;
    case 7: gemv_bf16_kernel<7><<<grid, block, 0, st>>>(out, x, wb, bias, rows, cols); break;
    default: gemv_bf16_kernel<8><<<grid, block, 0, st>>>(out, x, wb, bias, rows, cols); break;
    }
    return cudaGetLastError() == cudaSuccess ? KERNELS_OK : KERNELS_ERR_LAUNCH;
}
