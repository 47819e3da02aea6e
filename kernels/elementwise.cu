// Element-wise and small ops of the forward pass: RoPE (rotate-half layout,
// angle = f32(pos) * inv_freq as transformers computes it), SwiGLU, residual
// add. Each mirrors its CPU reference in engine/backend_cpu.c.
#include "kernels.h"

#include <cuda_runtime.h>

__global__ void rope_kernel(float *x, const int *pos, int n_heads, int hd, const float *inv_freq) {
    int t = blockIdx.x, half = hd / 2;
    for (int k = threadIdx.x; k < n_heads * half; k += blockDim.x) {
        int h = k / half, i = k % half;
        float a = (float)pos[t] * inv_freq[i];
        float c = cosf(a), s = sinf(a);
        float *v = x + ((size_t)t * n_heads + h) * hd;
        float x1 = v[i], x2 = v[i + half];
        v[i] = x1 * c - x2 * s;
        v[i + half] = x2 * c + x1 * s;
    }
}

extern "C" int kernels_rope_f32(float *x, const int *pos, int T, int n_heads, int hd, const float *inv_freq,
                                void *stream) {
    if (T < 0 || n_heads <= 0 || hd <= 0 || hd % 2) return KERNELS_ERR_ARG;
    if (T == 0) return KERNELS_OK;
    rope_kernel<<<T, 128, 0, (cudaStream_t)stream>>>(x, pos, n_heads, hd, inv_freq);
    return cudaGetLastError() == cudaSuccess ? KERNELS_OK : KERNELS_ERR_LAUNCH;
}

__global__ void swiglu_kernel(float *gate, const float *up, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) gate[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
}

extern "C" int kernels_swiglu_f32(float *gate, const float *up, size_t n, void *stream) {
    if (n == 0) return KERNELS_OK;
    swiglu_kernel<<<(unsigned)((n + 255) / 256), 256, 0, (cudaStream_t)stream>>>(gate, up, n);
    return cudaGetLastError() == cudaSuccess ? KERNELS_OK : KERNELS_ERR_LAUNCH;
}

__global__ void add_kernel(float *x, const float *y, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += y[i];
}

extern "C" int kernels_add_f32(float *x, const float *y, size_t n, void *stream) {
    if (n == 0) return KERNELS_OK;
    add_kernel<<<(unsigned)((n + 255) / 256), 256, 0, (cudaStream_t)stream>>>(x, y, n);
    return cudaGetLastError() == cudaSuccess ? KERNELS_OK : KERNELS_ERR_LAUNCH;
}
