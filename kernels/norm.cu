// Normalization kernels: RMSNorm over the last dimension, one block per row
// (dim / 4 threads, 128 to 1024),
// f32 accumulation in the same order-independent way as the CPU reference up
// to rounding (a block reduction, not a sequential sum).
#include "kernels/kernels.h"
#include "kernels/pdl.cuh"

#include <cuda_runtime.h>

extern "C" const char *kernels_status_str(int status) {
    switch (status) {
    case KERNELS_OK: return "ok";
    case KERNELS_ERR_LAUNCH: return "CUDA launch or runtime error";
    case KERNELS_ERR_ARG: return "invalid argument";
    }
    return "unknown status";
}

__global__ void rmsnorm_f32_kernel(float *out, const float *x, const float *w, int dim, float eps) {
    pdl_trigger();
    pdl_wait();
    const float *xr = x + (size_t)blockIdx.x * dim;
    float *outr = out + (size_t)blockIdx.x * dim;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) ss += xr[i] * xr[i];
    __shared__ float warp_sums[32];
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
    for (int i = threadIdx.x; i < dim; i += blockDim.x) outr[i] = xr[i] * scale * w[i];
}

extern "C" int kernels_rmsnorm_f32(float *out, const float *x, const float *w, int rows, int dim,
                                   float eps, void *stream) {
    if (rows < 0 || dim <= 0 || !out || !x || !w) return KERNELS_ERR_ARG;
    if (rows == 0) return KERNELS_OK;
    /* about four elements per thread; the block size depends on dim alone, so
     * a row's result does not depend on how many rows the step has */
    int threads = (dim / 4 + 31) / 32 * 32;
    threads = threads < 128 ? 128 : threads > 1024 ? 1024 : threads;
    return pdl_launch(rmsnorm_f32_kernel, dim3(rows), dim3(threads), 0, (cudaStream_t)stream, out, x, w, dim, eps) ==
                   cudaSuccess
               ? KERNELS_OK
               : KERNELS_ERR_LAUNCH;
}
