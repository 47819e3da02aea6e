// Normalization kernels: RMSNorm over the last dimension, one block per row
// (dim / 4 threads, 128 to 1024),
// f32 accumulation in the same order-independent way as the CPU reference up
// to rounding (a block reduction, not a sequential sum).
#include "kernels/kernels.h"
#include "kernels/norm.cuh"
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
    rmsnorm_row(out + (size_t)blockIdx.x * dim, x + (size_t)blockIdx.x * dim, w, dim, eps, blockDim.x);
}

/* The same rows rounded to bf16 as they are written (the bf16 operand of a product). */
__global__ void rmsnorm_bf16_kernel(__nv_bfloat16 *out, const float *x, const float *w, int dim, float eps) {
    pdl_trigger();
    pdl_wait();
    rmsnorm_row(out + (size_t)blockIdx.x * dim, x + (size_t)blockIdx.x * dim, w, dim, eps, blockDim.x);
}

extern "C" int kernels_rmsnorm_f32(float *out, const float *x, const float *w, int rows, int dim,
                                   float eps, void *stream) {
    if (rows < 0 || dim <= 0 || !out || !x || !w) return KERNELS_ERR_ARG;
    if (rows == 0) return KERNELS_OK;
    int threads = rmsnorm_threads(dim);
    return pdl_launch(rmsnorm_f32_kernel, dim3(rows), dim3(threads), 0, (cudaStream_t)stream, out, x, w, dim, eps) ==
                   cudaSuccess
               ? KERNELS_OK
               : KERNELS_ERR_LAUNCH;
}

extern "C" int kernels_rmsnorm_bf16(void *out, const float *x, const float *w, int rows, int dim, float eps,
                                    void *stream) {
    if (rows < 0 || dim <= 0 || !out || !x || !w) return KERNELS_ERR_ARG;
    if (rows == 0) return KERNELS_OK;
    int threads = rmsnorm_threads(dim); /* the f32 kernel's: the same sums */
    return pdl_launch(rmsnorm_bf16_kernel, dim3(rows), dim3(threads), 0, (cudaStream_t)stream, (__nv_bfloat16 *)out,
                      x, w, dim, eps) == cudaSuccess
               ? KERNELS_OK
               : KERNELS_ERR_LAUNCH;
}
