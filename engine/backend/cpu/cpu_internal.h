/* What the CPU backend's files share: the matrix product of cpu_matmul.c and
 * the DeepSeek-V4 (and V4.1 Engram) ops of cpu_dsv4.c, registered in
 * backend_cpu.c's ops table. Contracts in backend.h. */
#ifndef ENGINE_BACKEND_CPU_INTERNAL_H
#define ENGINE_BACKEND_CPU_INTERNAL_H

#include <math.h>

#include "engine/backend/backend.h"

/* 1 / sqrt(mean(x^2) + eps) over x (d), the sum in double: every RMSNorm of the
 * CPU backend (weighted or not) scales its row by this. */
static inline float cpu__rms_scale(const float *x, int d, float eps) {
    double ss = 0.0;
    for (int i = 0; i < d; i++) ss += (double)x[i] * x[i];
    return 1.0f / sqrtf((float)(ss / d) + eps);
}

/* The matrix product (cpu_matmul.c), the backend's matmul op. */
void cpu__matmul(backend *be, float *out, const float *x, const weight *w, const float *bias, int T);
/* BACKEND_CPU_ISA_* (AUTO: the best this CPU runs) as the path to take, or -1
 * when the CPU cannot run it. */
int cpu__isa_resolve(int isa);

void cpu__rmsnorm_plain(backend *be, float *out, const float *x, int T, int d, float eps);
void cpu__hc_split(backend *be, float *post, float *comb, float *x, const float *X, const float *mix,
                   const float *base, const float *scale, int T, int N, int d, int iters, float hc_eps);
void cpu__hc_weights(backend *be, float *pre, float *post, float *comb, const float *mix, const float *base,
                     const float *scale, int T, int N, int iters, float hc_eps);
void cpu__hc_collapse(backend *be, float *x, const float *X, const float *pre, int T, int N, int d);
void cpu__hc_merge(backend *be, float *X, const float *y, const float *post, const float *comb, int T, int N, int d);
void cpu__hc_head(backend *be, float *out, const float *X, const float *mix, const float *base, const float *scale,
                  int T, int N, int d, float hc_eps);
void cpu__rope_tail(backend *be, float *x, const int32_t *pos, int T, int n_heads, int hd, int r,
                    const float *inv_freq, int inverse);
void cpu__dsv4_compress(backend *be, const float *kv, const float *gate, const batch_desc *b, dsv4_state *const *st,
                        const dsv4_kv *cache, int which, int m, int D, int overlap, const float *ape,
                        const float *norm, float eps, int r, const float *inv_freq);
void cpu__dsv4_index(backend *be, int32_t *sel, const float *q, const float *wts, const batch_desc *b,
                     const dsv4_kv *cache, int m, int K, int nI, int dI);
void cpu__dsv4_attention(backend *be, float *out, const float *q, const float *kv, const batch_desc *b,
                         const dsv4_kv *cache, int m, const int32_t *sel, int K, const float *sinks, int nh, int D,
                         int W);
void cpu__swiglu_limit(backend *be, float *gate, const float *up, size_t n, float limit);
void cpu__engram_v41_gate(backend *be, float *X, const float *kv, const float *w, int T, int N, int d, float eps,
                          float clamp, float *gates);

#endif
