// Element-wise and small ops of the forward pass: RoPE (rotate-half layout,
// angle = f32(pos) * inv_freq as transformers computes it), SwiGLU, residual
// add, bias add, row scaling, dtype conversion to bf16, and row gathers with
// widening (embedding, f32 rows, Engram table rows). Each mirrors its CPU
// reference in engine/backend/cpu/backend_cpu.c.
#include "kernels/kernels.h"

#include <stdint.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

/* One block per (token, head), one thread per rotated pair. */
__global__ void rope_kernel(float *x, const int *pos, int n_heads, int hd, const float *inv_freq) {
    int t = blockIdx.x, h = blockIdx.y, half = hd / 2;
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
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
    int threads = (hd / 2 + 31) / 32 * 32;
    rope_kernel<<<dim3(T, n_heads), threads > 128 ? 128 : threads, 0, (cudaStream_t)stream>>>(x, pos, n_heads, hd,
                                                                                            inv_freq);
    return cudaGetLastError() == cudaSuccess ? KERNELS_OK : KERNELS_ERR_LAUNCH;
}

/* silu(g) * u, the one expression both SwiGLU kernels use (so the bf16 one rounds the f32 one's value) */
__device__ __forceinline__ float swiglu_f(float g, float u) { return g / (1.0f + expf(-g)) * u; }

__global__ void swiglu_kernel(float *gate, const float *up, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) gate[i] = swiglu_f(gate[i], up[i]);
}

/* blockIdx.y: tokens (strided past the grid's 65535), x: a row's pieces of 256 threads, V elements a
 * thread (V = 4: 16-byte loads and an 8-byte store, where n, ld and the pointers allow) */
template <int V>
__global__ void swiglu_bf16_kernel(__nv_bfloat16 *h, const float *gate, const float *up, int T, int n, size_t ld) {
    int i = V * (blockIdx.x * blockDim.x + threadIdx.x);
    if (i >= n) return;
    for (int t = blockIdx.y; t < T; t += gridDim.y) {
        const float *g = gate + (size_t)t * ld + i, *u = up + (size_t)t * ld + i;
        __nv_bfloat16 *o = h + (size_t)t * n + i;
        if (V == 1) {
            *o = __float2bfloat16_rn(swiglu_f(*g, *u));
        } else {
            float4 a = *(const float4 *)g, b = *(const float4 *)u;
            __nv_bfloat162 lo = {__float2bfloat16_rn(swiglu_f(a.x, b.x)), __float2bfloat16_rn(swiglu_f(a.y, b.y))};
            __nv_bfloat162 hi = {__float2bfloat16_rn(swiglu_f(a.z, b.z)), __float2bfloat16_rn(swiglu_f(a.w, b.w))};
            uint2 w;
            w.x = *(const unsigned *)&lo, w.y = *(const unsigned *)&hi;
            *(uint2 *)o = w;
        }
    }
}

extern "C" int kernels_swiglu_f32(float *gate, const float *up, size_t n, void *stream) {
    if (n == 0) return KERNELS_OK;
    swiglu_kernel<<<(unsigned)((n + 255) / 256), 256, 0, (cudaStream_t)stream>>>(gate, up, n);
    return cudaGetLastError() == cudaSuccess ? KERNELS_OK : KERNELS_ERR_LAUNCH;
}

extern "C" int kernels_swiglu_bf16(void *h, const float *gate, const float *up, int T, int n, size_t ld,
                                   void *stream) {
    if (T < 0 || n <= 0 || ld < (size_t)n || !h || !gate || !up) return KERNELS_ERR_ARG;
    if (T == 0) return KERNELS_OK;
    int v4 = n % 4 == 0 && ld % 4 == 0 && (uintptr_t)gate % 16 == 0 && (uintptr_t)up % 16 == 0 &&
             (uintptr_t)h % 8 == 0;
    int per = v4 ? 1024 : 256;
    dim3 grid((unsigned)((n + per - 1) / per), (unsigned)(T < 65535 ? T : 65535));
    if (v4)
        swiglu_bf16_kernel<4><<<grid, 256, 0, (cudaStream_t)stream>>>((__nv_bfloat16 *)h, gate, up, T, n, ld);
    else
        swiglu_bf16_kernel<1><<<grid, 256, 0, (cudaStream_t)stream>>>((__nv_bfloat16 *)h, gate, up, T, n, ld);
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

__global__ void bias_add_kernel(float *out, const float *bias, size_t n, int cols) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] += bias[i % cols];
}

extern "C" int kernels_bias_add_f32(float *out, const float *bias, int rows, int cols, void *stream) {
    if (rows < 0 || cols <= 0) return KERNELS_ERR_ARG;
    size_t n = (size_t)rows * cols;
    if (n == 0) return KERNELS_OK;
    bias_add_kernel<<<(unsigned)((n + 255) / 256), 256, 0, (cudaStream_t)stream>>>(out, bias, n, cols);
    return cudaGetLastError() == cudaSuccess ? KERNELS_OK : KERNELS_ERR_LAUNCH;
}

__global__ void scale_rows_kernel(float *out, size_t ostride, const float *x, size_t xstride, const float *s,
                                  int d) {
    int t = blockIdx.x;
    float f = s[t];
    for (int i = threadIdx.x; i < d; i += blockDim.x) out[t * ostride + i] = f * x[t * xstride + i];
}

extern "C" int kernels_scale_rows_f32(float *out, size_t ostride, const float *x, size_t xstride, const float *s,
                                      int T, int d, void *stream) {
    if (T < 0 || d < 0) return KERNELS_ERR_ARG;
    if (T == 0 || d == 0) return KERNELS_OK;
    scale_rows_kernel<<<T, 256, 0, (cudaStream_t)stream>>>(out, ostride, x, xstride, s, d);
    return cudaGetLastError() == cudaSuccess ? KERNELS_OK : KERNELS_ERR_LAUNCH;
}

/* Widening of one element of a checkpoint dtype. */
__device__ __forceinline__ float load_as_f32(const void *p, size_t i, int dt) {
    if (dt == KERNELS_BF16) return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
    if (dt == KERNELS_F16) return __half2float(((const __half *)p)[i]);
    return ((const float *)p)[i];
}

__global__ void to_bf16_kernel(__nv_bfloat16 *dst, const void *src, int dt, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = __float2bfloat16_rn(load_as_f32(src, i, dt));
}

extern "C" int kernels_to_bf16(void *dst, const void *src, int dt, size_t n, void *stream) {
    if (dt != KERNELS_F32 && dt != KERNELS_BF16 && dt != KERNELS_F16) return KERNELS_ERR_ARG;
    if (n == 0) return KERNELS_OK;
    size_t blocks = (n + 255) / 256;
    if (blocks > 65536) blocks = 65536;
    to_bf16_kernel<<<(unsigned)blocks, 256, 0, (cudaStream_t)stream>>>((__nv_bfloat16 *)dst, src, dt, n);
    return cudaGetLastError() == cudaSuccess ? KERNELS_OK : KERNELS_ERR_LAUNCH;
}

/* Row gather with widening: out[i, :] = table[idx[i], :] as f32. IDX is int
 * (embedding ids, gather_f32) or long long (Engram rows). */
template <typename IDX>
__global__ void gather_kernel(float *out, const void *table, int dt, const IDX *idx, int d) {
    size_t i = blockIdx.x, src = (size_t)idx[i] * d;
    for (int k = threadIdx.x; k < d; k += blockDim.x) out[i * d + k] = load_as_f32(table, src + k, dt);
}

extern "C" int kernels_embed(float *out, const void *table, int dt, const int *ids, int T, int d, void *stream) {
    if (T < 0 || d <= 0 || (dt != KERNELS_F32 && dt != KERNELS_BF16 && dt != KERNELS_F16)) return KERNELS_ERR_ARG;
    if (T == 0) return KERNELS_OK;
    gather_kernel<int><<<T, 256, 0, (cudaStream_t)stream>>>(out, table, dt, ids, d);
    return cudaGetLastError() == cudaSuccess ? KERNELS_OK : KERNELS_ERR_LAUNCH;
}

extern "C" int kernels_gather_f32(float *out, const float *x, const int *idx, int n, int d, void *stream) {
    return kernels_embed(out, x, KERNELS_F32, idx, n, d, stream);
}

extern "C" int kernels_gather_rows(float *out, const void *table, int dt, const long long *rows, int T, int H, int D,
                                   void *stream) {
    if (T < 0 || H <= 0 || D <= 0 || (dt != KERNELS_F32 && dt != KERNELS_BF16 && dt != KERNELS_F16))
        return KERNELS_ERR_ARG;
    if (T == 0) return KERNELS_OK;
    /* row i = t*H + h of out (T*H, D) is table row rows[i]: out (T, H*D) as one (T*H, D) gather */
    gather_kernel<long long><<<(unsigned)((size_t)T * H), 128, 0, (cudaStream_t)stream>>>(out, table, dt, rows, D);
    return cudaGetLastError() == cudaSuccess ? KERNELS_OK : KERNELS_ERR_LAUNCH;
}

extern "C" int kernels_gather_rows_bf16(float *out, const void *table, const long long *rows, int T, int H, int D,
                                        void *stream) {
    return kernels_gather_rows(out, table, KERNELS_BF16, rows, T, H, D, stream);
}
