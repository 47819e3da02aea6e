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

/* In place on x (T, n_heads, hd): rotate halves by pos[t] * inv_freq (hd/2). */
int kernels_rope_f32(float *x, const int *pos, int T, int n_heads, int hd, const float *inv_freq, void *stream);

/* gate (n) = silu(gate) * up */
int kernels_swiglu_f32(float *gate, const float *up, size_t n, void *stream);

/* x (n) += y (n) */
int kernels_add_f32(float *x, const float *y, size_t n, void *stream);

/* out (T, H*D) = bf16 table rows rows[t*H + h] as f32. */
int kernels_gather_rows_bf16(float *out, const void *table, const long long *rows, int T, int H, int D,
                             void *stream);

/* gate (T) = sigmoid(sign(s) sqrt(max(|s|, 1e-6))), s = dot(nk[t], nq[t]) / sqrt(d). */
int kernels_engram_gate_f32(float *gate, const float *nk, const float *nq, int T, int d, void *stream);

/* Depthwise causal conv + SiLU over in ((K-1)*dil + T, C): out (T, C). */
int kernels_short_conv_f32(float *out, const float *in, const float *w, int T, int C, int K, int dil,
                           void *stream);

#ifdef __cplusplus
}
#endif
#endif
