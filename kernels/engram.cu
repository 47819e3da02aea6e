// Engram ops (ENGRAM.md section 6): gather of table rows (bf16 -> f32), the
// context gate, and the depthwise causal short conv with SiLU. Each mirrors
// its CPU reference in engine/backend_cpu.c.
#include "kernels.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

__global__ void gather_rows_bf16_kernel(float *out, const __nv_bfloat16 *table, const long long *rows, int H,
                                        int D) {
    int t = blockIdx.x;
    for (int k = threadIdx.x; k < H * D; k += blockDim.x) {
        int h = k / D, j = k % D;
        out[(size_t)t * H * D + k] = __bfloat162float(table[(size_t)rows[(size_t)t * H + h] * D + j]);
    }
}

extern "C" int kernels_gather_rows_bf16(float *out, const void *table, const long long *rows, int T, int H, int D,
                                        void *stream) {
    if (T < 0 || H <= 0 || D <= 0) return KERNELS_ERR_ARG;
    if (T == 0) return KERNELS_OK;
    gather_rows_bf16_kernel<<<T, 256, 0, (cudaStream_t)stream>>>(out, (const __nv_bfloat16 *)table, rows, H, D);
    return cudaGetLastError() == cudaSuccess ? KERNELS_OK : KERNELS_ERR_LAUNCH;
}

// One block per token: dot(nk, nq) / sqrt(d), then sigmoid(sign(s) sqrt(max(|s|, 1e-6))).
__global__ void engram_gate_kernel(float *gate, const float *nk, const float *nq, int d) {
    int t = blockIdx.x;
    float s = 0.0f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) s += nk[(size_t)t * d + i] * nq[(size_t)t * d + i];
    __shared__ float partial[32];
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        float sum = 0.0f;
        for (int w = 0; w < (int)(blockDim.x >> 5); w++) sum += partial[w];
        sum /= sqrtf((float)d);
        float a = sqrtf(fmaxf(fabsf(sum), 1e-6f));
        float z = sum > 0 ? a : sum < 0 ? -a : 0.0f;
        gate[t] = 1.0f / (1.0f + expf(-z));
    }
}

extern "C" int kernels_engram_gate_f32(float *gate, const float *nk, const float *nq, int T, int d, void *stream) {
    if (T < 0 || d <= 0) return KERNELS_ERR_ARG;
    if (T == 0) return KERNELS_OK;
    engram_gate_kernel<<<T, 256, 0, (cudaStream_t)stream>>>(gate, nk, nq, d);
    return cudaGetLastError() == cudaSuccess ? KERNELS_OK : KERNELS_ERR_LAUNCH;
}

__global__ void short_conv_kernel(float *out, const float *in, const float *w, int T, int C, int K, int dil) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)T * C) return;
    int t = (int)(idx / C), c = (int)(idx % C), R = (K - 1) * dil;
    float y = 0.0f;
    for (int k = 0; k < K; k++) y += w[(size_t)c * K + k] * in[(size_t)(R + t - (K - 1 - k) * dil) * C + c];
    out[idx] = y / (1.0f + expf(-y));
}

extern "C" int kernels_short_conv_f32(float *out, const float *in, const float *w, int T, int C, int K, int dil,
                                      void *stream) {
    if (T < 0 || C <= 0 || K <= 0 || dil <= 0) return KERNELS_ERR_ARG;
    if (T == 0) return KERNELS_OK;
    size_t n = (size_t)T * C;
    short_conv_kernel<<<(unsigned)((n + 255) / 256), 256, 0, (cudaStream_t)stream>>>(out, in, w, T, C, K, dil);
    return cudaGetLastError() == cudaSuccess ? KERNELS_OK : KERNELS_ERR_LAUNCH;
}
