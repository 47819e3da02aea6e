// RMSNorm of one row by the first n threads of a block (n a multiple of 32, at most 1024; the
// others, if any, add nothing and write nothing): norm.cu's rmsnorm kernel and the fused DeepSeek-V4
// q/kv kernel (dsv4.cu) share it, so both give a row the same bits. f32 sums per thread over
// i = tid, tid + n, ..., then a warp tree and a tree of the warps' sums (a warp's sum of zeros
// changes no bit of the others'). out may alias x; every thread of the block must call it. OUT is
// float, or __nv_bfloat16 for the rows a bf16 product reads (kernels_rmsnorm_bf16): each element the
// same f32 value, rounded once to nearest even, so bit for bit the f32 row rounded afterwards.
#ifndef KERNELS_NORM_CUH
#define KERNELS_NORM_CUH

#include <cuda_bf16.h>

__device__ __forceinline__ void rmsnorm_put(float *p, float v) { *p = v; }
__device__ __forceinline__ void rmsnorm_put(__nv_bfloat16 *p, float v) { *p = __float2bfloat16_rn(v); }

template <typename OUT>
__device__ __forceinline__ void rmsnorm_row(OUT *out, const float *x, const float *w, int dim, float eps, int n) {
    __shared__ float warp_sums[32];
    float ss = 0.0f;
    if ((int)threadIdx.x < n)
        for (int i = threadIdx.x; i < dim; i += n) ss += x[i] * x[i];
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) warp_sums[warp] = ss;
    __syncthreads();
    if (warp == 0) {
        ss = lane < (int)(blockDim.x >> 5) ? warp_sums[lane] : 0.0f;
        for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
        if (lane == 0) warp_sums[0] = ss;
    }
    __syncthreads();
    float scale = rsqrtf(warp_sums[0] / (float)dim + eps);
    if ((int)threadIdx.x < n)
        for (int i = threadIdx.x; i < dim; i += n) rmsnorm_put(&out[i], x[i] * scale * w[i]);
}

/* The threads norm.cu's kernel gives a row of dim: about four elements each, 128 to 1024 (dim
 * alone decides, so a row's result does not depend on how many rows the step has). */
static inline int rmsnorm_threads(int dim) {
    int threads = (dim / 4 + 31) / 32 * 32;
    return threads < 128 ? 128 : threads > 1024 ? 1024 : threads;
}

#endif
