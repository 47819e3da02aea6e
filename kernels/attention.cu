// Paged attention over a bf16 KV cache for a mixed step (decode rows and
// prefill chunks of several sequences in one launch), and the store of a
// step's K/V rows into their cache slots. Numerics: f32 queries, bf16 K/V
// widened to f32, f32 scores and accumulation, online softmax (flash style).
// Long contexts are split over several blocks (flash-decoding) and merged by
// a second kernel.
#include "kernels/kernels.h"
#include "kernels/pdl.cuh"
#include "kernels/smem.cuh"
#include "kernels/tc.cuh"

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define ATT_THREADS 128 /* one key per thread in the score phase; one dim per thread in the value phase */
#define ATT_MAX_HD 256
#define ATT_MIN_SPLIT 128 /* keys; below this a split is not worth its merge */
#define ATT_TARGET_BLOCKS 528 /* about four blocks per SM of an H100 */

__global__ void kv_store_bf16_kernel(__nv_bfloat16 *kc, __nv_bfloat16 *vc, const float *k, const float *v,
                                     const int *slot, int kvw) {
    int t = blockIdx.x;
    size_t dst = (size_t)slot[t] * kvw, src = (size_t)t * kvw;
    for (int i = threadIdx.x; i < kvw; i += blockDim.x) {
        kc[dst + i] = __float2bfloat16_rn(k[src + i]);
        vc[dst + i] = __float2bfloat16_rn(v[src + i]);
    }
}

extern "C" int kernels_kv_store_bf16(void *kc, void *vc, const float *k, const float *v, const int *slot, int T,
                                     int kvw, void *stream) {
    if (T < 0 || kvw <= 0) return KERNELS_ERR_ARG;
    if (T == 0) return KERNELS_OK;
    kv_store_bf16_kernel<<<T, 128, 0, (cudaStream_t)stream>>>((__nv_bfloat16 *)kc, (__nv_bfloat16 *)vc, k, v,
                                                              slot, kvw);
    return cudaGetLastError() == cudaSuccess ? KERNELS_OK : KERNELS_ERR_LAUNCH;
}

/* The pieces both qk_rope_store kernels compute, spelled out (no contraction
 * left to the compiler, which could fuse either product of a sum of two),
 * so that the two give the same bits. */
__device__ __forceinline__ float qk_sq2(float a, float b) { return __fmaf_rn(a, a, __fmul_rn(b, b)); }
__device__ __forceinline__ void qk_rot(float x1, float x2, float c, float s, float *y1, float *y2) {
    *y1 = __fmaf_rn(x1, c, -__fmul_rn(x2, s));
    *y2 = __fmaf_rn(x2, c, __fmul_rn(x1, s));
}

/* One block per (token, head), q heads first, then kv heads; a thread per
 * rotated pair (i, i + hd/2). Optional per-head RMSNorm (qn for q heads, kn
 * for kv heads), then rope; q is written back in place, a kv head's K row
 * (normed, roped) and V row go to cache row slot[t] as bf16. The faster
 * of the two below 128 tokens a step (cu_qk_rope_store, QK_WARP_MIN_T), and
 * the bit reference of the kernel below. */
__global__ void qk_rope_store_head_kernel(float *q, const float *k, const float *v, __nv_bfloat16 *kc,
                                          __nv_bfloat16 *vc, const int *pos, const int *slot, int n_heads, int n_kv,
                                          int hd, const float *qn, const float *kn, float eps, const float *inv_freq) {
    pdl_trigger();
    pdl_wait();
    const int t = blockIdx.x, h = blockIdx.y, half = hd / 2, i = threadIdx.x;
    const bool isq = h < n_heads;
    const int kh = h - n_heads;
    const float *src = isq ? q + ((size_t)t * n_heads + h) * hd : k + ((size_t)t * n_kv + kh) * hd;
    const float *nw = isq ? qn : kn;
    float x1 = 0.0f, x2 = 0.0f;
    if (i < half) x1 = src[i], x2 = src[i + half];
    if (nw) { /* the same for the whole block */
        __shared__ float ws[4];
        float ss = qk_sq2(x1, x2);
        for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
        if ((i & 31) == 0) ws[i >> 5] = ss;
        __syncthreads();
        ss = 0.0f;
        for (int w = 0; w < (int)(blockDim.x >> 5); w++) ss += ws[w];
        float sc = rsqrtf(ss / (float)hd + eps);
        if (i < half) x1 = x1 * sc * nw[i], x2 = x2 * sc * nw[i + half];
    }
    if (i >= half) return;
    float a = (float)pos[t] * inv_freq[i];
    float c = cosf(a), sn = sinf(a);
    float y1, y2;
    qk_rot(x1, x2, c, sn, &y1, &y2);
    if (isq) {
        float *dst = q + ((size_t)t * n_heads + h) * hd;
        dst[i] = y1, dst[i + half] = y2;
        return;
    }
    size_t kvw = (size_t)n_kv * hd, dst = (size_t)slot[t] * kvw + (size_t)kh * hd;
    const float *vr = v + (size_t)t * kvw + (size_t)kh * hd;
    kc[dst + i] = __float2bfloat16_rn(y1);
    kc[dst + i + half] = __float2bfloat16_rn(y2);
    vc[dst + i] = __float2bfloat16_rn(vr[i]);
    vc[dst + i + half] = __float2bfloat16_rn(vr[i + half]);
}

/* The same results, bit for bit, with a warp per head and QK_HPW heads a
 * warp: lane l holds the first kernel's pairs l, l + 32, ... (QK_MAXP of
 * them), sums their squares in that kernel's order (a warp tree per 32
 * pairs, the trees added in order from 0) and computes each pair's cos and
 * sin once for all its heads. The first kernel's block of two warps per
 * (token, head) spent more time being scheduled than working: 32 us a call
 * at 512 tokens in the paper's workload, 4% of its device time. */
#define QK_WARPS 8
#define QK_MAXP 4 /* pairs a lane: hd <= 256 */
#define QK_HPW 5
__global__ void __launch_bounds__(QK_WARPS * 32)
qk_rope_store_kernel(float *q, const float *k, const float *v, __nv_bfloat16 *kc, __nv_bfloat16 *vc, const int *pos,
                     const int *slot, int n_heads, int n_kv, int hd, const float *qn, const float *kn, float eps,
                     const float *inv_freq, int hpw) {
    pdl_trigger();
    pdl_wait();
    const int t = blockIdx.x, lane = threadIdx.x & 31, half = hd / 2, np = (half + 31) / 32;
    const int h0 = (blockIdx.y * QK_WARPS + (threadIdx.x >> 5)) * hpw;
    float c[QK_MAXP], sn[QK_MAXP];
    const float p = (float)pos[t];
#pragma unroll
    for (int j = 0; j < QK_MAXP; j++) {
        int i = lane + 32 * j;
        c[j] = sn[j] = 0.0f;
        if (j < np && i < half) {
            float a = p * inv_freq[i];
            c[j] = cosf(a), sn[j] = sinf(a);
        }
    }
    const size_t kvw = (size_t)n_kv * hd;
    for (int u = 0; u < hpw; u++) {
        const int h = h0 + u;
        if (h >= n_heads + n_kv) return;
        const bool isq = h < n_heads;
        const int kh = h - n_heads;
        const float *src = isq ? q + ((size_t)t * n_heads + h) * hd : k + ((size_t)t * n_kv + kh) * hd;
        const float *nw = isq ? qn : kn;
        float x1[QK_MAXP], x2[QK_MAXP];
#pragma unroll
        for (int j = 0; j < QK_MAXP; j++) {
            int i = lane + 32 * j;
            x1[j] = x2[j] = 0.0f;
            if (j < np && i < half) x1[j] = src[i], x2[j] = src[i + half];
        }
        if (nw) {
            float ss = 0.0f;
#pragma unroll
            for (int j = 0; j < QK_MAXP; j++) {
                if (j >= np) break;
                float w = qk_sq2(x1[j], x2[j]);
                for (int o = 16; o > 0; o >>= 1) w += __shfl_xor_sync(0xffffffffu, w, o);
                ss += w;
            }
            float sc = rsqrtf(ss / (float)hd + eps);
#pragma unroll
            for (int j = 0; j < QK_MAXP; j++) {
                int i = lane + 32 * j;
                if (j < np && i < half) x1[j] = x1[j] * sc * nw[i], x2[j] = x2[j] * sc * nw[i + half];
            }
        }
        float *qd = q + ((size_t)t * n_heads + h) * hd;
        size_t dst = isq ? 0 : (size_t)slot[t] * kvw + (size_t)kh * hd;
        const float *vr = isq ? v : v + (size_t)t * kvw + (size_t)kh * hd;
#pragma unroll
        for (int j = 0; j < QK_MAXP; j++) {
            int i = lane + 32 * j;
            if (j >= np || i >= half) continue;
            float y1, y2;
            qk_rot(x1[j], x2[j], c[j], sn[j], &y1, &y2);
            if (isq) {
                qd[i] = y1, qd[i + half] = y2;
            } else {
                kc[dst + i] = __float2bfloat16_rn(y1);
                kc[dst + i + half] = __float2bfloat16_rn(y2);
                vc[dst + i] = __float2bfloat16_rn(vr[i]);
                vc[dst + i + half] = __float2bfloat16_rn(vr[i + half]);
            }
        }
    }
}

extern "C" int kernels_qk_rope_store_bf16(float *q, const float *k, const float *v, void *kc, void *vc,
                                          const int *pos, const int *slot, int T, int n_heads, int n_kv, int hd,
                                          const float *qn, const float *kn, float eps, const float *inv_freq,
                                          int warp, void *stream) {
    if (T < 0 || n_heads <= 0 || n_kv <= 0 || hd <= 0 || hd % 2 || hd > 256) return KERNELS_ERR_ARG;
    if (T == 0) return KERNELS_OK;
    cudaStream_t st = (cudaStream_t)stream;
    cudaError_t e;
    if (!warp) {
        int threads = (hd / 2 + 31) / 32 * 32;
        e = pdl_launch(qk_rope_store_head_kernel, dim3(T, n_heads + n_kv), dim3(threads), 0, st, q, k, v,
                       (__nv_bfloat16 *)kc, (__nv_bfloat16 *)vc, pos, slot, n_heads, n_kv, hd, qn, kn, eps, inv_freq);
    } else {
        /* a warp a head while that fills the GPU (decode of a few tokens), QK_HPW heads a warp past it */
        int heads = n_heads + n_kv, hpw = T >= 128 ? QK_HPW : 1;
        int per_block = QK_WARPS * hpw, gy = (heads + per_block - 1) / per_block;
        e = pdl_launch(qk_rope_store_kernel, dim3(T, gy), dim3(QK_WARPS * 32), 0, st, q, k, v, (__nv_bfloat16 *)kc,
                       (__nv_bfloat16 *)vc, pos, slot, n_heads, n_kv, hd, qn, kn, eps, inv_freq, hpw);
    }
    return e == cudaSuccess ? KERNELS_OK : KERNELS_ERR_LAUNCH;
}

/* Keys one token attends to: [j0, p]. */
__device__ __forceinline__ int att_first_key(int p, int window) {
    return window > 0 && p - window + 1 > 0 ? p - window + 1 : 0;
}

/* Splits of the key range and keys per split, the same on the host (launch
 * and scratch size) for the same arguments. */
static void att_plan(int T, int n_kv, int max_ctx, int window, int min_split, int round, int *n_splits,
                     int *split_len) {
    int span = window > 0 && window < max_ctx ? window : max_ctx;
    if (span < 1) span = 1;
    long base = (long)T * n_kv;
    int s = (int)((ATT_TARGET_BLOCKS + base - 1) / base);
    int most = (span + min_split - 1) / min_split;
    if (s > most) s = most;
    if (s < 1) s = 1;
    int len = (span + s - 1) / s;
    len = (len + round - 1) / round * round;
    *n_splits = (span + len - 1) / len;
    *split_len = len;
}

/* One block per (token, kv head, split): the G = n_heads / n_kv query heads
 * that share the kv head walk the split's keys in chunks of ATT_THREADS with
 * a running max and sum. MAXG bounds G (registers per thread). */
template <int MAXG>
__global__ void __launch_bounds__(ATT_THREADS)
paged_attention_kernel(float *out, float *work, const float *q, const __nv_bfloat16 *kc, const __nv_bfloat16 *vc,
                       const int *pos, const int *tok_seq, const int *seq_start, const int *block_tables,
                       int block_size, int max_blocks, int n_heads, int n_kv, int hd, int window, int n_splits,
                       int split_len, float scale, int tiled_q) {
    extern __shared__ float sm[];
    const int G = n_heads / n_kv;
    float *qs = sm;                               /* (G, hd) */
    float *ps = qs + G * hd;                      /* (G, ATT_THREADS) scores, then probabilities */
    float *red = ps + G * ATT_THREADS;            /* (ATT_THREADS / 32, G) */
    int *rows = (int *)(red + (ATT_THREADS / 32) * MAXG); /* (ATT_THREADS) cache row of each key */

    const int t = blockIdx.x, kh = blockIdx.y, z = blockIdx.z, tid = threadIdx.x;
    const int lane = tid & 31, warp = tid >> 5;
    const int p = pos[t], s = tok_seq[t];
    if (seq_start[s + 1] - seq_start[s] >= tiled_q) return; /* the tiled kernel's token */
    const int j0 = att_first_key(p, window);
    const int kbeg = j0 + z * split_len;
    int kend = kbeg + split_len - 1;
    if (kend > p) kend = p;
    if (kbeg > p) return; /* an empty split: the merge skips it */
    const int kvw = n_kv * hd;
    const int *bt = block_tables + (size_t)s * max_blocks;

    for (int i = tid; i < G * hd; i += ATT_THREADS)
        qs[i] = q[((size_t)t * n_heads + kh * G) * hd + i];

    float m[MAXG], l[MAXG], acc[2][MAXG];
#pragma unroll
    for (int g = 0; g < MAXG; g++) m[g] = -INFINITY, l[g] = 0.0f, acc[0][g] = 0.0f, acc[1][g] = 0.0f;
    __syncthreads();

    for (int c0 = kbeg; c0 <= kend; c0 += ATT_THREADS) {
        const int j = c0 + tid, valid = j <= kend;
        const int nk = kend - c0 + 1 < ATT_THREADS ? kend - c0 + 1 : ATT_THREADS;
        float sc[MAXG];
#pragma unroll
        for (int g = 0; g < MAXG; g++) sc[g] = 0.0f;
        if (valid) {
            int row = bt[j / block_size] * block_size + j % block_size;
            rows[tid] = row;
            const __nv_bfloat16 *kr = kc + (size_t)row * kvw + (size_t)kh * hd;
            if ((hd & 7) == 0) {
#pragma unroll 4
                for (int i = 0; i < hd; i += 8) {
                    uint4 raw = *(const uint4 *)(kr + i);
                    const __nv_bfloat162 *b2 = (const __nv_bfloat162 *)&raw;
                    float kf[8];
#pragma unroll
                    for (int u = 0; u < 4; u++) {
                        float2 f = __bfloat1622float2(b2[u]);
                        kf[2 * u] = f.x, kf[2 * u + 1] = f.y;
                    }
#pragma unroll
                    for (int g = 0; g < MAXG; g++)
                        if (g < G) {
                            const float *qg = qs + g * hd + i;
#pragma unroll
                            for (int u = 0; u < 8; u++) sc[g] += qg[u] * kf[u];
                        }
                }
            } else {
                for (int i = 0; i < hd; i++) {
                    float kf = __bfloat162float(kr[i]);
#pragma unroll
                    for (int g = 0; g < MAXG; g++)
                        if (g < G) sc[g] += qs[g * hd + i] * kf;
                }
            }
        }
        /* chunk max per head */
#pragma unroll
        for (int g = 0; g < MAXG; g++) {
            if (g >= G) break;
            float v = valid ? sc[g] * scale : -INFINITY;
            sc[g] = v;
            for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
            if (lane == 0) red[warp * MAXG + g] = v;
        }
        __syncthreads();
        float alpha[MAXG];
#pragma unroll
        for (int g = 0; g < MAXG; g++) {
            if (g >= G) break;
            float cm = red[g];
            for (int w = 1; w < ATT_THREADS / 32; w++) cm = fmaxf(cm, red[w * MAXG + g]);
            float mn = fmaxf(m[g], cm); /* finite: the chunk has at least one key */
            alpha[g] = expf(m[g] - mn); /* exp(-inf) = 0 on the first chunk */
            m[g] = mn;
            float pr = valid ? expf(sc[g] - mn) : 0.0f;
            ps[g * ATT_THREADS + tid] = pr;
            sc[g] = pr;
        }
        __syncthreads(); /* red is reused below */
#pragma unroll
        for (int g = 0; g < MAXG; g++) {
            if (g >= G) break;
            float v = sc[g];
            for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
            if (lane == 0) red[warp * MAXG + g] = v;
        }
        __syncthreads();
#pragma unroll
        for (int g = 0; g < MAXG; g++) {
            if (g >= G) break;
            float sum = 0.0f;
            for (int w = 0; w < ATT_THREADS / 32; w++) sum += red[w * MAXG + g];
            l[g] = l[g] * alpha[g] + sum;
            acc[0][g] *= alpha[g];
            acc[1][g] *= alpha[g];
        }
        /* value phase: thread owns dims tid and tid + ATT_THREADS */
#pragma unroll
        for (int half = 0; half < 2; half++) {
            int e = tid + half * ATT_THREADS;
            if (e >= hd) break;
            const __nv_bfloat16 *vcol = vc + (size_t)kh * hd + e;
            int jj = 0;
            /* sixteen keys' loads in flight before their sums (same order of sums) */
            for (; jj + 16 <= nk; jj += 16) {
                float vf[16];
#pragma unroll
                for (int u = 0; u < 16; u++) vf[u] = __bfloat162float(vcol[(size_t)rows[jj + u] * kvw]);
#pragma unroll
                for (int u = 0; u < 16; u++)
#pragma unroll
                    for (int g = 0; g < MAXG; g++)
                        if (g < G) acc[half][g] += ps[g * ATT_THREADS + jj + u] * vf[u];
            }
            for (; jj < nk; jj++) {
                float vf = __bfloat162float(vcol[(size_t)rows[jj] * kvw]);
#pragma unroll
                for (int g = 0; g < MAXG; g++)
                    if (g < G) acc[half][g] += ps[g * ATT_THREADS + jj] * vf;
            }
        }
        __syncthreads(); /* ps, rows and red are rewritten by the next chunk */
    }

#pragma unroll
    for (int half = 0; half < 2; half++) {
        int e = tid + half * ATT_THREADS;
        if (e >= hd) break;
#pragma unroll
        for (int g = 0; g < MAXG; g++) {
            if (g >= G) break;
            int h = kh * G + g;
            if (n_splits == 1) {
                out[((size_t)t * n_heads + h) * hd + e] = acc[half][g] / l[g];
            } else { /* work: (T, n_heads, n_splits) of [acc (hd), m, l] */
                float *wk = work + (((size_t)t * n_heads + h) * n_splits + z) * (hd + 2);
                wk[e] = acc[half][g];
                if (e == 0) wk[hd] = m[g], wk[hd + 1] = l[g];
            }
        }
    }
}

/* One block per (token, head): merges the splits that had keys. */
__global__ void attention_merge_kernel(float *out, const float *work, const int *pos, const int *tok_seq,
                                       const int *seq_start, int n_heads, int hd, int window, int n_splits,
                                       int split_len, int tiled_q) {
    pdl_trigger();
    pdl_wait();
    int t = blockIdx.x, h = blockIdx.y, s = tok_seq[t];
    if (seq_start[s + 1] - seq_start[s] >= tiled_q) return;
    int p = pos[t], j0 = att_first_key(p, window);
    int used = (p - j0) / split_len + 1;
    const float *wk = work + ((size_t)t * n_heads + h) * n_splits * (hd + 2);
    float M = -INFINITY;
    for (int z = 0; z < used; z++) M = fmaxf(M, wk[z * (hd + 2) + hd]);
    float L = 0.0f;
    for (int z = 0; z < used; z++) L += wk[z * (hd + 2) + hd + 1] * expf(wk[z * (hd + 2) + hd] - M);
    for (int e = threadIdx.x; e < hd; e += blockDim.x) {
        float a = 0.0f;
        for (int z = 0; z < used; z++) a += wk[z * (hd + 2) + e] * expf(wk[z * (hd + 2) + hd] - M);
        out[((size_t)t * n_heads + h) * hd + e] = a / L;
    }
}

/* ---- decode kernel for head sizes 16..256 (powers of two) and G <= 8 ----
 * One block of DEC_WARPS warps per (token, kv head, split). Lanes work in
 * groups of L = HD / 8, each lane owning 8 dims: a group takes one key at a
 * time (one 16-byte load of its K row and one of its V row per lane), DEC_U
 * keys per chunk with all their loads in flight; every group keeps its own
 * online softmax for the G query heads (scores in the log2 domain), and the
 * groups are merged through shared memory at the end. */
#define DEC_WARPS 4
#define DEC_U 4
#define DEC_MIN_SPLIT 64 /* keys */

__device__ __forceinline__ void bf16x8_to_f32(uint4 raw, float *f) {
    const __nv_bfloat162 *b2 = (const __nv_bfloat162 *)&raw;
#pragma unroll
    for (int u = 0; u < 4; u++) {
        float2 v = __bfloat1622float2(b2[u]);
        f[2 * u] = v.x, f[2 * u + 1] = v.y;
    }
}

template <int HD, int MAXG>
__global__ void __launch_bounds__(DEC_WARPS * 32)
decode_attention_kernel(float *out, float *work, const float *q, const __nv_bfloat16 *kc, const __nv_bfloat16 *vc,
                        const int *pos, const int *tok_seq, const int *seq_start, const int *block_tables,
                        int block_size, int max_blocks, int n_heads, int n_kv, int window, int n_splits,
                        int split_len, float qscale, int tiled_q) {
    pdl_trigger();
    pdl_wait();
    constexpr int L = HD / 8, GPW = 32 / L, NG = DEC_WARPS * GPW;
    extern __shared__ float dsm[]; /* (NG, G, HD) partial sums, then (NG, G) maxima and sums */
    const int G = n_heads / n_kv;
    const int t = blockIdx.x, kh = blockIdx.y, z = blockIdx.z;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int sub = lane % L, gi = warp * GPW + lane / L;
    const int p = pos[t], s = tok_seq[t];
    if (seq_start[s + 1] - seq_start[s] >= tiled_q) return; /* the tiled kernel's token */
    const int j0 = att_first_key(p, window);
    const int kbeg = j0 + z * split_len;
    const int kend = min(kbeg + split_len - 1, p);
    if (kbeg > p) return; /* an empty split: the merge skips it */
    const int kvw = n_kv * HD;
    const int *bt = block_tables + (size_t)s * max_blocks;
    const size_t col = (size_t)kh * HD + sub * 8;

    float qr[MAXG][8], acc[MAXG][8], m[MAXG], l[MAXG];
#pragma unroll
    for (int g = 0; g < MAXG; g++) {
        m[g] = -INFINITY, l[g] = 0.0f;
#pragma unroll
        for (int e = 0; e < 8; e++) qr[g][e] = 0.0f, acc[g][e] = 0.0f;
        if (g < G) {
            const float4 *qp = (const float4 *)(q + ((size_t)t * n_heads + kh * G + g) * HD + sub * 8);
            float4 a = qp[0], b = qp[1];
            qr[g][0] = a.x * qscale, qr[g][1] = a.y * qscale, qr[g][2] = a.z * qscale, qr[g][3] = a.w * qscale;
            qr[g][4] = b.x * qscale, qr[g][5] = b.y * qscale, qr[g][6] = b.z * qscale, qr[g][7] = b.w * qscale;
        }
    }
    /* warp-uniform trip count: every lane takes part in the shuffles */
    for (int c0 = kbeg; c0 <= kend; c0 += NG * DEC_U) {
        uint4 kr[DEC_U], vr[DEC_U];
        bool ok[DEC_U];
#pragma unroll
        for (int u = 0; u < DEC_U; u++) {
            int j = c0 + u * NG + gi;
            ok[u] = j <= kend;
            kr[u] = vr[u] = make_uint4(0, 0, 0, 0);
            if (ok[u]) {
                size_t row = (size_t)bt[j / block_size] * block_size + j % block_size;
                kr[u] = __ldg((const uint4 *)(kc + row * kvw + col));
                vr[u] = __ldg((const uint4 *)(vc + row * kvw + col));
            }
        }
        float sc[DEC_U][MAXG];
#pragma unroll
        for (int u = 0; u < DEC_U; u++) {
            float kf[8];
            bf16x8_to_f32(kr[u], kf);
#pragma unroll
            for (int g = 0; g < MAXG; g++) {
                float d = 0.0f;
                if (g < G) {
#pragma unroll
                    for (int e = 0; e < 8; e++) d += qr[g][e] * kf[e];
                }
#pragma unroll
                for (int o = L / 2; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
                sc[u][g] = ok[u] ? d : -INFINITY;
            }
        }
#pragma unroll
        for (int g = 0; g < MAXG; g++) {
            if (g >= G) break;
            float cm = sc[0][g];
#pragma unroll
            for (int u = 1; u < DEC_U; u++) cm = fmaxf(cm, sc[u][g]);
            if (cm == -INFINITY) continue; /* none of this group's keys in the chunk */
            float mn = fmaxf(m[g], cm), alpha = exp2f(m[g] - mn);
            m[g] = mn;
            l[g] *= alpha;
#pragma unroll
            for (int e = 0; e < 8; e++) acc[g][e] *= alpha;
#pragma unroll
            for (int u = 0; u < DEC_U; u++) {
                float pr = exp2f(sc[u][g] - mn), vf[8];
                bf16x8_to_f32(vr[u], vf);
                l[g] += pr;
#pragma unroll
                for (int e = 0; e < 8; e++) acc[g][e] += pr * vf[e];
            }
        }
    }
    /* merge the groups: partial sums (NG, G, HD), then maxima and sums (NG, G) each */
    float *ps = dsm, *ms = ps + NG * G * HD, *ls = ms + NG * G;
#pragma unroll
    for (int g = 0; g < MAXG; g++) {
        if (g >= G) break;
        float *dst = ps + ((size_t)gi * G + g) * HD + sub * 8;
#pragma unroll
        for (int e = 0; e < 8; e++) dst[e] = acc[g][e];
        if (sub == 0) ms[gi * G + g] = m[g], ls[gi * G + g] = l[g];
    }
    __syncthreads();
    for (int i = threadIdx.x; i < G * HD; i += DEC_WARPS * 32) {
        int g = i / HD, e = i % HD, h = kh * G + g;
        float M = -INFINITY;
        for (int r = 0; r < NG; r++) M = fmaxf(M, ms[r * G + g]);
        float a = 0.0f, lsum = 0.0f;
        for (int r = 0; r < NG; r++) {
            float f = exp2f(ms[r * G + g] - M); /* 0 for a group that saw no key */
            a += ps[((size_t)r * G + g) * HD + e] * f;
            lsum += ls[r * G + g] * f;
        }
        if (n_splits == 1) {
            out[((size_t)t * n_heads + h) * HD + e] = a / lsum;
        } else { /* work: (T, n_heads, n_splits) of [acc (hd), m, l], m in the natural-log domain */
            float *wk = work + (((size_t)t * n_heads + h) * n_splits + z) * (HD + 2);
            wk[e] = a;
            if (e == 0) wk[HD] = M * 0.69314718056f, wk[HD + 1] = lsum;
        }
    }
}

template <int HD, int MAXG>
static int dec_launch(const kernels_attention_args *a, int ns, int len, int tiled_q, cudaStream_t st) {
    constexpr int NG = DEC_WARPS * (32 / (HD / 8));
    int G = a->n_heads / a->n_kv;
    size_t smem = (size_t)NG * G * (HD + 2) * sizeof(float);
    static unsigned raised;
    size_t most = (size_t)NG * MAXG * (HD + 2) * sizeof(float);
    if (most > 48 * 1024 && smem_raise_once(decode_attention_kernel<HD, MAXG>, most, &raised)) return KERNELS_ERR_LAUNCH;
    dim3 grid(a->n_tokens, a->n_kv, ns);
    cudaError_t e = pdl_launch(decode_attention_kernel<HD, MAXG>, grid, dim3(DEC_WARPS * 32), smem, st, a->out,
                               a->work, a->q, (const __nv_bfloat16 *)a->kc, (const __nv_bfloat16 *)a->vc, a->pos,
                               a->tok_seq, a->seq_start, a->block_tables, a->block_size, a->max_blocks, a->n_heads,
                               a->n_kv, a->window, ns, len, 1.4426950409f / sqrtf((float)HD), tiled_q);
    return e == cudaSuccess ? KERNELS_OK : KERNELS_ERR_LAUNCH;
}

template <int HD>
static int dec_launch_g(const kernels_attention_args *a, int ns, int len, int tiled_q, cudaStream_t st) {
    int G = a->n_heads / a->n_kv;
    return G <= 1 ? dec_launch<HD, 1>(a, ns, len, tiled_q, st)
         : G <= 4 ? dec_launch<HD, 4>(a, ns, len, tiled_q, st)
                  : dec_launch<HD, 8>(a, ns, len, tiled_q, st);
}

static int dec_supported(int hd, int G) {
    return (hd == 16 || hd == 32 || hd == 64 || hd == 128 || hd == 256) && G <= 8;
}

/* ---- tensor-core pieces shared by the decode and prefill kernels ---- */
#define TK 64 /* keys per chunk staged in shared memory */

/* Chunk c (keys kbeg + c TK ..) of one kv head's K and V rows into stage
 * c & 1 of Ks / Vs (rows of LD bf16) by cp.async, 16 bytes per copy, 128
 * threads; keys past kend are zero-filled (their scores are masked, and a
 * zero V keeps 0 x V finite). Commits the copies as one group. */
template <int HD, int LD>
__device__ __forceinline__ void att_load_chunk(__nv_bfloat16 *Ks, __nv_bfloat16 *Vs, const __nv_bfloat16 *kc,
                                               const __nv_bfloat16 *vc, const int *bt, int block_size, int kvw,
                                               int kh, int kbeg, int kend, int c, int tid) {
    __nv_bfloat16 *ks = Ks + (c & 1) * TK * LD, *vs = Vs + (c & 1) * TK * LD;
    for (int i = tid; i < TK * (HD / 8); i += 128) {
        int jj = i / (HD / 8), e = (i % (HD / 8)) * 8, j = kbeg + c * TK + jj;
        bool ok = j <= kend;
        size_t off = ok ? ((size_t)bt[j / block_size] * block_size + j % block_size) * kvw + (size_t)kh * HD + e : 0;
        tc_cp16(ks + jj * LD + e, kc + off, ok);
        tc_cp16(vs + jj * LD + e, vc + off, ok);
    }
    tc_cp_commit();
}

/* The scores of 16 keys (rows k16 .. k16 + 15 in shared memory) against the
 * query fragments qf: key tiles 0-7 into s0, 8-15 into s1 (accumulated). */
template <int HD, int LD>
__device__ __forceinline__ void att_qk16(float s0[4], float s1[4], const uint32_t (*qf)[4],
                                         const __nv_bfloat16 *k16, int lane) {
    const int mi = lane >> 3, ri = lane & 7;
#pragma unroll
    for (int ks = 0; ks < HD / 16; ks++) {
        uint32_t b[4]; /* matrices: keys 0-7 dims lo, keys 0-7 dims hi, keys 8-15 lo, 8-15 hi */
        tc_ldsm4(b, k16 + ((mi >> 1) * 8 + ri) * LD + ks * 16 + (mi & 1) * 8);
        mma_bf16(s0, qf[ks], b[0], b[1]);
        mma_bf16(s1, qf[ks], b[2], b[3]);
    }
}

/* o += P V over 16 keys (V rows v16 .. v16 + 15): the softmax weights of key
 * tiles 0-7 (p0) and 8-15 (p1), as score accumulators, are the A fragment. */
template <int HD, int LD>
__device__ __forceinline__ void att_pv16(float (*o)[4], const float p0[4], const float p1[4],
                                         const __nv_bfloat16 *v16, int lane) {
    const int mi = lane >> 3, ri = lane & 7;
    uint32_t pa[4] = {pack_bf16(p0[0], p0[1]), pack_bf16(p0[2], p0[3]), pack_bf16(p1[0], p1[1]),
                      pack_bf16(p1[2], p1[3])};
#pragma unroll
    for (int nt = 0; nt < HD / 8; nt += 2) {
        uint32_t b[4]; /* keys 0-7 / 8-15, dims nt then nt+1 */
        tc_ldsm4_t(b, v16 + ((mi & 1) * 8 + ri) * LD + (nt + (mi >> 1)) * 8);
        mma_bf16(o[nt], pa, b[0], b[1]);
        mma_bf16(o[nt + 1], pa, b[2], b[3]);
    }
}

/* ---- tensor-core decode kernel (head sizes 64 and 128, G <= 16) ----
 * One block of 4 warps per (token, kv head, split), as the kernel above, but
 * the G query heads of the kv head are the rows of mma.sync m16n8k16 tiles
 * (rows past G are zero and never stored), as in the prefill kernel: the
 * scores of 16 keys are HD / 16 x 2 mmas instead of 16 x G dot products and
 * shuffle trees per key. Chunks of 64 keys of K and V go to shared memory by
 * cp.async, two chunks in flight; each warp takes 16 keys of a chunk and keeps
 * its own online softmax (log2 domain); the warps are merged at the end. The
 * query and the softmax weights are rounded to bf16 for the tensor cores (as
 * in the prefill kernel: decode and prefill round alike), sums are f32. */

template <int HD>
__global__ void __launch_bounds__(128)
decode_tc_kernel(float *out, float *work, const float *q, const __nv_bfloat16 *kc, const __nv_bfloat16 *vc,
                 const int *pos, const int *tok_seq, const int *seq_start, const int *block_tables, int block_size,
                 int max_blocks, int n_heads, int n_kv, int window, int n_splits, int split_len, float qscale,
                 int tiled_q) {
    pdl_trigger();
    pdl_wait();
    constexpr int LD = HD + 8; /* padded row (bf16): conflict-free ldmatrix */
    extern __shared__ __align__(16) unsigned char smraw[];
    __nv_bfloat16 *Ks = (__nv_bfloat16 *)smraw; /* (2, TK, LD) */
    __nv_bfloat16 *Vs = Ks + 2 * TK * LD;  /* (2, TK, LD) */
    const int G = n_heads / n_kv;
    const int t = blockIdx.x, kh = blockIdx.y, z = blockIdx.z;
    const int p = pos[t], s = tok_seq[t];
    if (seq_start[s + 1] - seq_start[s] >= tiled_q) return; /* the tiled kernel's token */
    const int kbeg = att_first_key(p, window) + z * split_len;
    const int kend = min(kbeg + split_len - 1, p);
    if (kbeg > p) return; /* an empty split: the merge skips it */
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, gq = lane >> 2, tq = lane & 3;
    const int kvw = n_kv * HD;
    const int *bt = block_tables + (size_t)s * max_blocks;

    /* the query rows gq and gq + 8 (heads of this kv head) as A fragments */
    uint32_t qf[HD / 16][4];
    {
        const float *q0 = q + ((size_t)t * n_heads + kh * G + gq) * HD;
        const float *q1 = q0 + 8 * HD;
        bool v0 = gq < G, v1 = gq + 8 < G;
#pragma unroll
        for (int ks = 0; ks < HD / 16; ks++) {
            int e = ks * 16 + 2 * tq;
            float2 a = v0 ? *(const float2 *)(q0 + e) : make_float2(0.0f, 0.0f);
            float2 b = v1 ? *(const float2 *)(q1 + e) : make_float2(0.0f, 0.0f);
            float2 c = v0 ? *(const float2 *)(q0 + e + 8) : make_float2(0.0f, 0.0f);
            float2 d = v1 ? *(const float2 *)(q1 + e + 8) : make_float2(0.0f, 0.0f);
            qf[ks][0] = pack_bf16(a.x, a.y), qf[ks][1] = pack_bf16(b.x, b.y);
            qf[ks][2] = pack_bf16(c.x, c.y), qf[ks][3] = pack_bf16(d.x, d.y);
        }
    }
    auto load = [&](int c) { att_load_chunk<HD, LD>(Ks, Vs, kc, vc, bt, block_size, kvw, kh, kbeg, kend, c, tid); };

    float o[HD / 8][4];
#pragma unroll
    for (int nt = 0; nt < HD / 8; nt++) o[nt][0] = o[nt][1] = o[nt][2] = o[nt][3] = 0.0f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f; /* rows gq, gq + 8; l per lane until the end */
    const int n_chunks = (kend - kbeg) / TK + 1;
    load(0);
    for (int c = 0; c < n_chunks; c++) {
        if (c + 1 < n_chunks) {
            load(c + 1);
            tc_cp_wait<1>();
        } else {
            tc_cp_wait<0>();
        }
        __syncthreads();
        const int k0 = kbeg + c * TK + warp * 16; /* this warp's 16 keys */
        if (k0 <= kend) {
            const __nv_bfloat16 *kw = Ks + ((c & 1) * TK + warp * 16) * LD;
            const __nv_bfloat16 *vw = Vs + ((c & 1) * TK + warp * 16) * LD;
            /* scores: key tiles 0-7 and 8-15 of the warp's keys */
            float sc[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
            att_qk16<HD, LD>(sc[0], sc[1], qf, kw, lane);
            float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
            for (int nt = 0; nt < 2; nt++)
#pragma unroll
                for (int u = 0; u < 2; u++) {
                    bool ok = k0 + nt * 8 + 2 * tq + u <= kend;
                    sc[nt][u] = ok ? sc[nt][u] * qscale : -INFINITY;
                    sc[nt][2 + u] = ok ? sc[nt][2 + u] * qscale : -INFINITY;
                    mx0 = fmaxf(mx0, sc[nt][u]), mx1 = fmaxf(mx1, sc[nt][2 + u]);
                }
#pragma unroll
            for (int o_ = 1; o_ <= 2; o_ <<= 1) {
                mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, o_));
                mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, o_));
            }
            /* key k0 is in range, so every row's maximum is finite */
            float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
            float al0 = exp2f(m0 - mn0), al1 = exp2f(m1 - mn1);
            m0 = mn0, m1 = mn1;
            float sum0 = 0.0f, sum1 = 0.0f;
#pragma unroll
            for (int nt = 0; nt < 2; nt++)
#pragma unroll
                for (int u = 0; u < 2; u++) {
                    sc[nt][u] = exp2f(sc[nt][u] - mn0), sc[nt][2 + u] = exp2f(sc[nt][2 + u] - mn1);
                    sum0 += sc[nt][u], sum1 += sc[nt][2 + u];
                }
            l0 = l0 * al0 + sum0, l1 = l1 * al1 + sum1;
#pragma unroll
            for (int nt = 0; nt < HD / 8; nt++) o[nt][0] *= al0, o[nt][1] *= al0, o[nt][2] *= al1, o[nt][3] *= al1;
            att_pv16<HD, LD>(o, sc[0], sc[1], vw, lane); /* o += P V over the 16 keys */
        }
        __syncthreads(); /* stage c & 1 is loaded again at c + 2 */
    }
#pragma unroll
    for (int o_ = 1; o_ <= 2; o_ <<= 1) {
        l0 += __shfl_xor_sync(0xffffffffu, l0, o_);
        l1 += __shfl_xor_sync(0xffffffffu, l1, o_);
    }
    /* merge the warps: partial sums (4, G, HD), maxima and sums (4, G) each, over the K/V stages */
    float *ps = (float *)smraw, *ms = ps + 4 * G * HD, *ls = ms + 4 * G;
    int rr[2] = {gq, gq + 8};
    float mm[2] = {m0, m1}, lv[2] = {l0, l1};
#pragma unroll
    for (int h2 = 0; h2 < 2; h2++) {
        int g = rr[h2];
        if (g >= G) continue;
        float *dst = ps + ((size_t)warp * G + g) * HD + 2 * tq;
#pragma unroll
        for (int nt = 0; nt < HD / 8; nt++) *(float2 *)(dst + nt * 8) = make_float2(o[nt][2 * h2], o[nt][2 * h2 + 1]);
        if (tq == 0) ms[warp * G + g] = mm[h2], ls[warp * G + g] = lv[h2];
    }
    __syncthreads();
    for (int i = tid; i < G * HD; i += 128) {
        int g = i / HD, e = i % HD, h = kh * G + g;
        float M = -INFINITY;
        for (int r = 0; r < 4; r++) M = fmaxf(M, ms[r * G + g]);
        float a = 0.0f, lsum = 0.0f;
        for (int r = 0; r < 4; r++) {
            float f = exp2f(ms[r * G + g] - M); /* 0 for a warp that saw no key */
            a += ps[((size_t)r * G + g) * HD + e] * f;
            lsum += ls[r * G + g] * f;
        }
        if (n_splits == 1) {
            out[((size_t)t * n_heads + h) * HD + e] = a / lsum;
        } else { /* work: as the kernel above, m in the natural-log domain */
            float *wk = work + (((size_t)t * n_heads + h) * n_splits + z) * (HD + 2);
            wk[e] = a;
            if (e == 0) wk[HD] = M * 0.69314718056f, wk[HD + 1] = lsum;
        }
    }
}

template <int HD>
static int tcd_launch(const kernels_attention_args *a, int ns, int len, int tiled_q, cudaStream_t st) {
    size_t smem = (size_t)4 * TK * (HD + 8) * sizeof(__nv_bfloat16);
    static unsigned raised;
    if (smem > 48 * 1024 && smem_raise_once(decode_tc_kernel<HD>, smem, &raised)) return KERNELS_ERR_LAUNCH;
    dim3 grid(a->n_tokens, a->n_kv, ns);
    cudaError_t e = pdl_launch(decode_tc_kernel<HD>, grid, dim3(128), smem, st, a->out, a->work, a->q,
                               (const __nv_bfloat16 *)a->kc, (const __nv_bfloat16 *)a->vc, a->pos, a->tok_seq,
                               a->seq_start, a->block_tables, a->block_size, a->max_blocks, a->n_heads, a->n_kv,
                               a->window, ns, len, 1.4426950409f / sqrtf((float)HD), tiled_q);
    return e == cudaSuccess ? KERNELS_OK : KERNELS_ERR_LAUNCH;
}

/* The tensor-core decode kernel unless the arguments (tests) or
 * ENGRAM_DECODE_ATTENTION=simt (benchmarks: the two kernels in one run) ask
 * for the f32 one. */
static int tcd_supported(const kernels_attention_args *a) {
    static int simt = -1;
    if (simt < 0) {
        const char *v = getenv("ENGRAM_DECODE_ATTENTION");
        simt = v && !strcmp(v, "simt");
    }
    return (a->hd == 64 || a->hd == 128) && a->n_heads / a->n_kv <= 16 && !a->decode_simt && !simt;
}

template <int MAXG>
static int att_launch(const kernels_attention_args *a, int ns, int len, int tiled_q, cudaStream_t st) {
    int G = a->n_heads / a->n_kv;
    size_t smem = ((size_t)G * a->hd + (size_t)G * ATT_THREADS + (ATT_THREADS / 32) * MAXG) * sizeof(float) +
                  ATT_THREADS * sizeof(int);
    static unsigned raised; /* allow the largest case (G = MAXG, hd = ATT_MAX_HD) */
    size_t most = ((size_t)MAXG * ATT_MAX_HD + (size_t)MAXG * ATT_THREADS + (ATT_THREADS / 32) * MAXG) *
                      sizeof(float) + ATT_THREADS * sizeof(int);
    if (smem_raise_once(paged_attention_kernel<MAXG>, most, &raised)) return KERNELS_ERR_LAUNCH;
    dim3 grid(a->n_tokens, a->n_kv, ns);
    paged_attention_kernel<MAXG><<<grid, ATT_THREADS, smem, st>>>(
        a->out, a->work, a->q, (const __nv_bfloat16 *)a->kc, (const __nv_bfloat16 *)a->vc, a->pos, a->tok_seq,
        a->seq_start, a->block_tables, a->block_size, a->max_blocks, a->n_heads, a->n_kv, a->hd, a->window, ns, len,
        1.0f / sqrtf((float)a->hd), tiled_q);
    return cudaGetLastError() == cudaSuccess ? KERNELS_OK : KERNELS_ERR_LAUNCH;
}

/* ---- tiled kernel for prefill chunks: tensor cores (mma.sync m16n8k16,
 * bf16 inputs, f32 accumulation) ----
 * One block of 4 warps per (query tile, sequence, kv head): the tile is QT =
 * 64 / G consecutive tokens of one sequence times the G query heads of the kv
 * head, 64 query rows (row r = token r / G, head r % G), 16 per warp. Keys
 * come in chunks of 64 rows of K and V staged in shared memory; scores and
 * the output stay in registers (flash attention 2). Queries and softmax
 * weights are rounded to bf16 for the tensor cores; sums are f32. */

#define TQ_ROWS 64

template <int HD>
__global__ void __launch_bounds__(128)
prefill_attention_kernel(float *out, const float *q, const __nv_bfloat16 *kc, const __nv_bfloat16 *vc,
                         const int *pos, const int *seq_start, const int *block_tables, int block_size, int max_blocks,
                         int n_heads, int n_kv, int window, float scale, int tiled_q) {
    constexpr int LD = HD + 8; /* padded smem row (bf16): conflict-free ldmatrix */
    extern __shared__ __align__(16) unsigned char smraw[];
    __nv_bfloat16 *Ks = (__nv_bfloat16 *)smraw; /* (2, TK, LD): two chunks in flight */
    __nv_bfloat16 *Vs = Ks + 2 * TK * LD;        /* (2, TK, LD) */
    __nv_bfloat16 *Qs = Vs + 2 * TK * LD;        /* (TQ_ROWS, LD) */

    const int G = n_heads / n_kv, QT = TQ_ROWS / G;
    const int s = blockIdx.y, kh = blockIdx.z;
    const int first = seq_start[s], n_q = seq_start[s + 1] - first;
    if (n_q < tiled_q) return; /* the per-token kernel's sequence */
    const int tok0 = first + blockIdx.x * QT;
    const int ntok = min(QT, first + n_q - tok0);
    if (ntok <= 0) return;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int gq = lane >> 2, tq = lane & 3;
    const int kvw = n_kv * HD;
    const int *bt = block_tables + (size_t)s * max_blocks;
    const int p_first = pos[tok0], p_last = p_first + ntok - 1; /* a sequence's tokens are consecutive */
    const int kbeg = att_first_key(p_first, window), kend = p_last;

    auto load = [&](int c) { att_load_chunk<HD, LD>(Ks, Vs, kc, vc, bt, block_size, kvw, kh, kbeg, kend, c, tid); };
    const int n_chunks = (kend - kbeg) / TK + 1;
    load(0); /* in flight while the queries are staged */

    /* queries -> bf16 in shared memory, then into A fragments */
    for (int i = tid; i < TQ_ROWS * (HD / 2); i += 128) {
        int r = i / (HD / 2), e = (i % (HD / 2)) * 2, ti = r / G, g = r % G;
        float2 v = make_float2(0.0f, 0.0f);
        if (ti < ntok && r < QT * G) v = *(const float2 *)(q + ((size_t)(tok0 + ti) * n_heads + kh * G + g) * HD + e);
        *(__nv_bfloat162 *)(Qs + r * LD + e) = __floats2bfloat162_rn(v.x, v.y);
    }
    __syncthreads();
    const int r0 = warp * 16 + gq, r1 = r0 + 8;
    uint32_t qf[HD / 16][4];
#pragma unroll
    for (int ks = 0; ks < HD / 16; ks++) {
        qf[ks][0] = *(const uint32_t *)(Qs + r0 * LD + ks * 16 + 2 * tq);
        qf[ks][1] = *(const uint32_t *)(Qs + r1 * LD + ks * 16 + 2 * tq);
        qf[ks][2] = *(const uint32_t *)(Qs + r0 * LD + ks * 16 + 8 + 2 * tq);
        qf[ks][3] = *(const uint32_t *)(Qs + r1 * LD + ks * 16 + 8 + 2 * tq);
    }
    /* each row's key range; rows past the tile see none */
    int hi0 = -1, hi1 = -1, lo0 = 1, lo1 = 1;
    if (r0 < QT * G && r0 / G < ntok) hi0 = p_first + r0 / G, lo0 = att_first_key(hi0, window);
    if (r1 < QT * G && r1 / G < ntok) hi1 = p_first + r1 / G, lo1 = att_first_key(hi1, window);
    /* the warp's key range, to skip chunks it has nothing in */
    int wr_first = warp * 16 / G, wr_last = min((warp * 16 + 15) / G, ntok - 1);
    int w_lo = att_first_key(p_first + wr_first, window), w_hi = p_first + wr_last;
    bool warp_has_rows = warp * 16 < QT * G && wr_first < ntok;
    const float sl2 = scale * 1.4426950409f; /* scores in the log2 domain */

    float o[HD / 8][4];
#pragma unroll
    for (int nt = 0; nt < HD / 8; nt++) o[nt][0] = o[nt][1] = o[nt][2] = o[nt][3] = 0.0f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f; /* l per lane until the end */

    for (int c = 0; c < n_chunks; c++) {
        if (c + 1 < n_chunks) {
            load(c + 1);
            tc_cp_wait<1>();
        } else {
            tc_cp_wait<0>();
        }
        __syncthreads();
        const int c0 = kbeg + c * TK;
        if (warp_has_rows && c0 <= w_hi && c0 + TK - 1 >= w_lo) {
            const __nv_bfloat16 *kst = Ks + (c & 1) * TK * LD, *vst = Vs + (c & 1) * TK * LD;
            float sc[TK / 8][4];
#pragma unroll
            for (int nt = 0; nt < TK / 8; nt++) sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.0f;
#pragma unroll
            for (int nt = 0; nt < TK / 8; nt += 2) att_qk16<HD, LD>(sc[nt], sc[nt + 1], qf, kst + nt * 8 * LD, lane);
            /* mask, scale, running max */
            float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
            for (int nt = 0; nt < TK / 8; nt++)
#pragma unroll
                for (int u = 0; u < 2; u++) {
                    int j = c0 + nt * 8 + 2 * tq + u;
                    float v0 = j >= lo0 && j <= hi0 ? sc[nt][u] * sl2 : -INFINITY;
                    float v1 = j >= lo1 && j <= hi1 ? sc[nt][2 + u] * sl2 : -INFINITY;
                    sc[nt][u] = v0, sc[nt][2 + u] = v1;
                    mx0 = fmaxf(mx0, v0), mx1 = fmaxf(mx1, v1);
                }
#pragma unroll
            for (int o_ = 1; o_ <= 2; o_ <<= 1) {
                mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, o_));
                mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, o_));
            }
            float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
            float ref0 = mn0 == -INFINITY ? 0.0f : mn0, ref1 = mn1 == -INFINITY ? 0.0f : mn1;
            float al0 = exp2f(m0 - ref0), al1 = exp2f(m1 - ref1);
            m0 = mn0, m1 = mn1;
            float sum0 = 0.0f, sum1 = 0.0f;
#pragma unroll
            for (int nt = 0; nt < TK / 8; nt++)
#pragma unroll
                for (int u = 0; u < 2; u++) {
                    sc[nt][u] = exp2f(sc[nt][u] - ref0);
                    sc[nt][2 + u] = exp2f(sc[nt][2 + u] - ref1);
                    sum0 += sc[nt][u], sum1 += sc[nt][2 + u];
                }
            l0 = l0 * al0 + sum0, l1 = l1 * al1 + sum1;
#pragma unroll
            for (int nt = 0; nt < HD / 8; nt++) o[nt][0] *= al0, o[nt][1] *= al0, o[nt][2] *= al1, o[nt][3] *= al1;
            /* o += P V, 16 keys at a time */
#pragma unroll
            for (int kk = 0; kk < TK / 16; kk++) att_pv16<HD, LD>(o, sc[2 * kk], sc[2 * kk + 1], vst + kk * 16 * LD, lane);
        }
        __syncthreads(); /* stage c & 1 is loaded again at c + 2 */
    }
#pragma unroll
    for (int o_ = 1; o_ <= 2; o_ <<= 1) {
        l0 += __shfl_xor_sync(0xffffffffu, l0, o_);
        l1 += __shfl_xor_sync(0xffffffffu, l1, o_);
    }
    /* out: rows r0, r1 of the tile */
    int rr[2] = {r0, r1};
    float ll[2] = {l0, l1};
#pragma unroll
    for (int h2 = 0; h2 < 2; h2++) {
        int r = rr[h2], ti = r / G, g = r % G;
        if (r >= QT * G || ti >= ntok) continue;
        float inv = 1.0f / ll[h2];
        float *orow = out + ((size_t)(tok0 + ti) * n_heads + kh * G + g) * HD;
#pragma unroll
        for (int nt = 0; nt < HD / 8; nt++)
            *(float2 *)(orow + nt * 8 + 2 * tq) = make_float2(o[nt][2 * h2] * inv, o[nt][2 * h2 + 1] * inv);
    }
}

template <int HD>
static int prefill_launch(const kernels_attention_args *a, int tiled_q, int max_q, cudaStream_t st) {
    size_t smem = (size_t)(4 * TK + TQ_ROWS) * (HD + 8) * sizeof(__nv_bfloat16);
    static unsigned raised;
    if (smem_raise_once(prefill_attention_kernel<HD>, smem, &raised)) return KERNELS_ERR_LAUNCH;
    int QT = TQ_ROWS / (a->n_heads / a->n_kv);
    dim3 grid((max_q + QT - 1) / QT, a->n_seqs, a->n_kv);
    prefill_attention_kernel<HD><<<grid, 128, smem, st>>>(a->out, a->q, (const __nv_bfloat16 *)a->kc,
                                                         (const __nv_bfloat16 *)a->vc, a->pos, a->seq_start,
                                                         a->block_tables, a->block_size, a->max_blocks, a->n_heads,
                                                         a->n_kv, a->window, 1.0f / sqrtf((float)HD), tiled_q);
    return cudaGetLastError() == cudaSuccess ? KERNELS_OK : KERNELS_ERR_LAUNCH;
}

static int prefill_supported(int hd) {
    return hd == 16 || hd == 32 || hd == 64 || hd == 80 || hd == 96 || hd == 128;
}

/* How a step is split between the kernels. Sequences with at least tiled_q
 * tokens in the step (a warp's 16 query rows filled) go to the tiled kernel,
 * the others (decodes, short chunks: n_short tokens) to the per-token one,
 * whose key ranges are split ns ways of len keys. The host copy of
 * seq_start says which kinds the step has. */
typedef struct {
    int tiled_q, max_q, n_short, ns, len;
    int dec; /* 2: the tensor-core decode kernel, 1: the f32 one, 0: the general one */
} att_split;

/* The decode kernels' shortest split: DEC_MIN_SPLIT keys, or
 * ENGRAM_DEC_MIN_SPLIT (benchmarks: a batch-1 step of a short context
 * spends more on its splits' merge than on its keys). */
static int dec_min_split(void) {
    static int v = -1;
    if (v < 0) {
        const char *e = getenv("ENGRAM_DEC_MIN_SPLIT");
        int n = e ? atoi(e) : 0;
        v = n >= 16 && n <= (1 << 20) ? n : DEC_MIN_SPLIT;
    }
    return v;
}

static att_split att_prepare(const kernels_attention_args *a) {
    att_split p;
    int G = a->n_heads / a->n_kv;
    p.tiled_q = prefill_supported(a->hd) && !a->no_tiled && a->h_seq_start ? (16 + G - 1) / G : 0x7fffffff;
    p.max_q = 0;
    p.n_short = a->n_tokens;
    if (p.tiled_q != 0x7fffffff) {
        p.n_short = 0;
        for (int s = 0; s < a->n_seqs; s++) {
            int n = a->h_seq_start[s + 1] - a->h_seq_start[s];
            if (n >= p.tiled_q && n > p.max_q) p.max_q = n;
            if (n < p.tiled_q) p.n_short += n;
        }
    }
    p.ns = 1, p.len = 0;
    p.dec = tcd_supported(a) ? 2 : dec_supported(a->hd, G);
    if (p.n_short) att_plan(p.n_short, a->n_kv, a->max_ctx, a->window, p.dec ? dec_min_split() : ATT_MIN_SPLIT,
                            p.dec == 2 ? TK : p.dec ? 32 : ATT_THREADS, &p.ns, &p.len);
    return p;
}

extern "C" size_t kernels_paged_attention_work_floats(const kernels_attention_args *a) {
    if (a->n_tokens <= 0 || a->n_kv <= 0 || a->n_heads % a->n_kv) return 0;
    att_split p = att_prepare(a);
    return p.ns > 1 ? (size_t)a->n_tokens * a->n_heads * p.ns * (a->hd + 2) : 0;
}

extern "C" int kernels_paged_attention_bf16(const kernels_attention_args *a, void *stream) {
    if (a->n_tokens < 0 || a->n_kv <= 0 || a->n_heads % a->n_kv || a->hd <= 0 || a->hd > ATT_MAX_HD ||
        a->block_size <= 0 || a->n_heads / a->n_kv > 16 || a->n_seqs < 0)
        return KERNELS_ERR_ARG;
    if (a->n_tokens == 0) return KERNELS_OK;
    cudaStream_t st = (cudaStream_t)stream;
    int G = a->n_heads / a->n_kv;
    att_split p = att_prepare(a);
    int tiled_q = p.tiled_q, max_q = p.max_q, n_short = p.n_short, ns = p.ns, len = p.len;
    int rc = KERNELS_OK;
    if (max_q > 0) {
        switch (a->hd) {
        case 16: rc = prefill_launch<16>(a, tiled_q, max_q, st); break;
        case 32: rc = prefill_launch<32>(a, tiled_q, max_q, st); break;
        case 64: rc = prefill_launch<64>(a, tiled_q, max_q, st); break;
        case 80: rc = prefill_launch<80>(a, tiled_q, max_q, st); break;
        case 96: rc = prefill_launch<96>(a, tiled_q, max_q, st); break;
        default: rc = prefill_launch<128>(a, tiled_q, max_q, st); break;
        }
        if (rc) return rc;
    }
    if (n_short == 0) return KERNELS_OK;
    if (ns > 1 && (!a->work || a->work_floats < (size_t)a->n_tokens * a->n_heads * ns * (a->hd + 2)))
        return KERNELS_ERR_ARG;
    if (p.dec == 2) {
        rc = a->hd == 64 ? tcd_launch<64>(a, ns, len, tiled_q, st) : tcd_launch<128>(a, ns, len, tiled_q, st);
    } else if (p.dec) {
        switch (a->hd) {
        case 16: rc = dec_launch_g<16>(a, ns, len, tiled_q, st); break;
        case 32: rc = dec_launch_g<32>(a, ns, len, tiled_q, st); break;
        case 64: rc = dec_launch_g<64>(a, ns, len, tiled_q, st); break;
        case 128: rc = dec_launch_g<128>(a, ns, len, tiled_q, st); break;
        default: rc = dec_launch_g<256>(a, ns, len, tiled_q, st); break;
        }
    } else {
        rc = G <= 1 ? att_launch<1>(a, ns, len, tiled_q, st)
       : G <= 4 ? att_launch<4>(a, ns, len, tiled_q, st)
       : G <= 8 ? att_launch<8>(a, ns, len, tiled_q, st)
                : att_launch<16>(a, ns, len, tiled_q, st);
    }
    if (rc || ns == 1) return rc;
    cudaError_t e = pdl_launch(attention_merge_kernel, dim3(a->n_tokens, a->n_heads), dim3(128), 0, st, a->out,
                               (const float *)a->work, a->pos, a->tok_seq, a->seq_start, a->n_heads, a->hd, a->window,
                               ns, len, tiled_q);
    return e == cudaSuccess ? KERNELS_OK : KERNELS_ERR_LAUNCH;
}
