/* C ABI of the CUDA kernels. One .cu per op family; every launcher takes a
 * stream (cudaStream_t passed as void *) and returns 0 or a negative
 * kernels_status, checking the launch. Numerics follow the CPU reference in
 * engine/backend_cpu.c: f32 accumulation. */
#ifndef KERNELS_H
#define KERNELS_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    KERNELS_OK = 0,
    KERNELS_ERR_LAUNCH = -1, /* the launch or the CUDA runtime reported an error */
    KERNELS_ERR_ARG = -2,    /* a size or pointer argument is invalid */
} kernels_status;

const char *kernels_status_str(int status);

/* out[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * w[:], for r < rows.
 * out, x: (rows, dim) f32 device memory; w: (dim) f32. out may alias x. */
int kernels_rmsnorm_f32(float *out, const float *x, const float *w, int rows, int dim,
                        float eps, void *stream);

#ifdef __cplusplus
}
#endif
#endif
