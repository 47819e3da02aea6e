// Sampling-side reductions: greedy argmax per row of logits, lowest id on
// ties (the CPU reference scans ids upwards and keeps a strictly larger
// value). NaN never wins.
#include "kernels.h"

#include <cuda_runtime.h>
#include <math.h>

__device__ __forceinline__ void argmax_pick(float &v, int &i, float v2, int i2) {
    if (v2 > v || (v2 == v && i2 < i)) v = v2, i = i2;
}

__global__ void argmax_kernel(int *next, const float *logits, int vocab) {
    const float *row = logits + (size_t)blockIdx.x * vocab;
    float best = -INFINITY;
    int bi = 0x7fffffff;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        float v = row[i];
        if (!isnan(v)) argmax_pick(best, bi, v, i);
    }
    for (int o = 16; o > 0; o >>= 1)
        argmax_pick(best, bi, __shfl_xor_sync(0xffffffffu, best, o), __shfl_xor_sync(0xffffffffu, bi, o));
    __shared__ float bv[32];
    __shared__ int bx[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) bv[warp] = best, bx[warp] = bi;
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < (int)(blockDim.x >> 5); w++) argmax_pick(best, bi, bv[w], bx[w]);
        next[blockIdx.x] = bi == 0x7fffffff ? 0 : bi; /* an all-NaN or all -inf row: id 0 */
    }
}

extern "C" int kernels_argmax_f32(int *next, const float *logits, int T, int vocab, void *stream) {
    if (T < 0 || vocab <= 0) return KERNELS_ERR_ARG;
    if (T == 0) return KERNELS_OK;
    argmax_kernel<<<T, 1024, 0, (cudaStream_t)stream>>>(next, logits, vocab);
    return cudaGetLastError() == cudaSuccess ? KERNELS_OK : KERNELS_ERR_LAUNCH;
}
