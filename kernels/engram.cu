// Engram ops (ENGRAM.md section 6): the context gate and the depthwise causal
// short conv with SiLU, on one sequence or on a step of several sequences
// with per-sequence history. (Table row gathers are in elementwise.cu.) Each
// mirrors its CPU reference in engine/backend/cpu/backend_cpu.c.
#include "kernels/kernels.h"
#include "kernels/fp8.cuh"

#include <cuda_runtime.h>

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

/* A step of several sequences: token t of sequence s = tok_seq[t] is its
 * u-th token; inputs before u = 0 come from s's history (R rows of C). */
__global__ void short_conv_batch_kernel(float *out, const float *in, const float *w, const int *seq_start,
                                        const int *tok_seq, float *const *seq_hist, size_t hist_off, int T, int C,
                                        int K, int dil) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)T * C) return;
    int t = (int)(idx / C), c = (int)(idx % C), R = (K - 1) * dil;
    int s = tok_seq[t], first = seq_start[s], u = t - first;
    const float *hist = seq_hist[s] + hist_off;
    float y = 0.0f;
    for (int k = 0; k < K; k++) {
        int v = u - (K - 1 - k) * dil;
        float x = v >= 0 ? in[(size_t)(first + v) * C + c] : hist[(size_t)(R + v) * C + c];
        y += w[(size_t)c * K + k] * x;
    }
    out[idx] = y / (1.0f + expf(-y));
}

/* Each history becomes the last R rows of (history, the sequence's inputs).
 * One thread per (sequence, channel), rows in increasing order: row r reads
 * row n + r >= r, which no earlier iteration has written. */
__global__ void conv_history_kernel(const float *in, const int *seq_start, float *const *seq_hist, size_t hist_off,
                                    int n_seqs, int C, int R) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)n_seqs * C) return;
    int s = (int)(idx / C), c = (int)(idx % C);
    int first = seq_start[s], n = seq_start[s + 1] - first;
    float *hist = seq_hist[s] + hist_off;
    for (int r = 0; r < R; r++) {
        int i = n + r; /* row of the concatenation (R history rows, n inputs) */
        hist[(size_t)r * C + c] = i < R ? hist[(size_t)i * C + c] : in[(size_t)(first + i - R) * C + c];
    }
}

extern "C" int kernels_short_conv_batch_f32(float *out, const float *in, const float *w, const int *seq_start,
                                            const int *tok_seq, float *const *seq_hist, size_t hist_off,
                                            int n_seqs, int T, int C, int K, int dil, void *stream) {
    if (T < 0 || n_seqs < 0 || C <= 0 || K <= 0 || dil <= 0) return KERNELS_ERR_ARG;
    if (T == 0) return KERNELS_OK;
    cudaStream_t st = (cudaStream_t)stream;
    size_t n = (size_t)T * C;
    short_conv_batch_kernel<<<(unsigned)((n + 255) / 256), 256, 0, st>>>(out, in, w, seq_start, tok_seq, seq_hist,
                                                                        hist_off, T, C, K, dil);
    if (cudaGetLastError() != cudaSuccess) return KERNELS_ERR_LAUNCH;
    int R = (K - 1) * dil;
    n = (size_t)n_seqs * C;
    if (R == 0 || n == 0) return KERNELS_OK;
    conv_history_kernel<<<(unsigned)((n + 255) / 256), 256, 0, st>>>(in, seq_start, seq_hist, hist_off, n_seqs, C,
                                                                    R);
    return cudaGetLastError() == cudaSuccess ? KERNELS_OK : KERNELS_ERR_LAUNCH;
}

/* ---- rows from a host store (engine/engram_fetch.c) ---- */

__device__ __forceinline__ float bits_f32(unsigned u) { return __uint_as_float(u); }

/* The CPU's conversions, integer for integer (base/numeric.h f16_to_f32; FP8
 * in kernels/fp8.cuh), so NaN payloads and subnormals come out the same. */
__device__ float row_f16(unsigned short h) {
    unsigned sign = (unsigned)(h & 0x8000) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff;
    if (e == 0x1f) return bits_f32(sign | 0x7f800000u | (m << 13));
    if (e == 0) {
        if (m == 0) return bits_f32(sign);
        int k = -1;
        do {
            k++;
            m <<= 1;
        } while (!(m & 0x400));
        return bits_f32(sign | ((unsigned)(127 - 15 - k) << 23) | ((m & 0x3ff) << 13));
    }
    return bits_f32(sign | ((e + 127 - 15) << 23) | (m << 13));
}

__global__ void decode_rows_kernel(float *out, const unsigned char *rows, int dt, size_t stride, const int *idx,
                                   int n, int cols) {
    size_t t = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= (size_t)n * cols) return;
    int i = (int)(t / cols), j = (int)(t % cols);
    const unsigned char *r = rows + (size_t)idx[i] * stride;
    float v;
    switch (dt) {
    case KERNELS_ROW_F32: v = ((const float *)r)[j]; break;
    case KERNELS_ROW_BF16: v = bits_f32((unsigned)((const unsigned short *)r)[j] << 16); break;
    case KERNELS_ROW_F16: v = row_f16(((const unsigned short *)r)[j]); break;
    default:
        v = __fmul_rn(fp8_e4m3_f32(r[j]), fp8_ue8m0_f32(r[cols + j / 32]));
        if (v != v) v = bits_f32(0x7fc00000u); /* the CPU's one NaN (engram_fp8_decode_row) */
        break;
    }
    out[t] = v;
}

extern "C" int kernels_engram_decode_rows(float *out, const void *rows, int dt, size_t stride, const int *idx, int n,
                                          int cols, void *stream) {
    if (n < 0 || cols <= 0 || dt < KERNELS_ROW_F32 || dt > KERNELS_ROW_FP8_UE8M0 ||
        (dt == KERNELS_ROW_FP8_UE8M0 && cols % 32))
        return KERNELS_ERR_ARG;
    if (n == 0) return KERNELS_OK;
    size_t total = (size_t)n * cols;
    decode_rows_kernel<<<(unsigned)((total + 255) / 256), 256, 0, (cudaStream_t)stream>>>(
        out, (const unsigned char *)rows, dt, stride, idx, n, cols);
    return cudaGetLastError() == cudaSuccess ? KERNELS_OK : KERNELS_ERR_LAUNCH;
}

/* ---- a device table of FP8 rows (DeepSeek-V4.1's Engram in checkpoint tensors) ---- */

/* One block per gathered row i (= t H + h): table row rows[i], each value its
 * e4m3 code times its 32 values' ue8m0 scale, one f32 multiply (the CPU's
 * model_weight_rows_to_f32; a NaN may differ in payload). */
__global__ void gather_rows_fp8_kernel(float *out, const unsigned char *codes, const unsigned char *scales,
                                       const long long *rows, int D) {
    size_t i = blockIdx.x;
    const unsigned char *c = codes + (size_t)rows[i] * D, *s = scales + (size_t)rows[i] * (D / 32);
    for (int j = threadIdx.x; j < D; j += blockDim.x)
        out[i * D + j] = __fmul_rn(fp8_e4m3_f32(c[j]), fp8_ue8m0_f32(s[j / 32]));
}

extern "C" int kernels_gather_rows_fp8(float *out, const void *codes, const void *scales, const long long *rows,
                                       int T, int H, int D, void *stream) {
    if (T < 0 || H <= 0 || D <= 0 || D % 32) return KERNELS_ERR_ARG;
    if (T == 0) return KERNELS_OK;
    gather_rows_fp8_kernel<<<(unsigned)((size_t)T * H), 128, 0, (cudaStream_t)stream>>>(
        out, (const unsigned char *)codes, (const unsigned char *)scales, rows, D);
    return cudaGetLastError() == cudaSuccess ? KERNELS_OK : KERNELS_ERR_LAUNCH;
}

/* One block per row; 4-byte words when the row allows. */
/* One block per row: row i of src to row slot[i] of dst (scatter), or row
 * slot[i] of src to row i of dst (collect). */
__global__ void move_rows_kernel(unsigned char *dst, const unsigned char *src, const int *slot, size_t rb,
                                 int collect) {
    int i = blockIdx.x;
    unsigned char *d = dst + (size_t)(collect ? i : slot[i]) * rb;
    const unsigned char *s = src + (size_t)(collect ? slot[i] : i) * rb;
    if (rb % 4 == 0)
        for (size_t k = threadIdx.x; k < rb / 4; k += blockDim.x) ((unsigned *)d)[k] = ((const unsigned *)s)[k];
    else
        for (size_t k = threadIdx.x; k < rb; k += blockDim.x) d[k] = s[k];
}

static int move_rows(void *dst, const void *src, const int *slot, int n, size_t row_bytes, int collect,
                     void *stream) {
    if (n < 0 || row_bytes == 0) return KERNELS_ERR_ARG;
    if (n == 0) return KERNELS_OK;
    move_rows_kernel<<<n, 64, 0, (cudaStream_t)stream>>>((unsigned char *)dst, (const unsigned char *)src, slot,
                                                         row_bytes, collect);
    return cudaGetLastError() == cudaSuccess ? KERNELS_OK : KERNELS_ERR_LAUNCH;
}

extern "C" int kernels_scatter_rows(void *dst, const void *src, const int *slot, int n, size_t row_bytes,
                                    void *stream) {
    return move_rows(dst, src, slot, n, row_bytes, 0, stream);
}

extern "C" int kernels_collect_rows(void *dst, const void *src, const int *slot, int n, size_t row_bytes,
                                    void *stream) {
    return move_rows(dst, src, slot, n, row_bytes, 1, stream);
}
