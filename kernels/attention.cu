// Paged attention over a bf16 KV cache for a mixed step (decode rows and
// prefill chunks of several sequences in one launch), and the store of a
// step's K/V rows into their cache slots. Numerics: f32 queries, bf16 K/V
// widened to f32, f32 scores and accumulation, online softmax (flash style).
// Long contexts are split over several blocks (flash-decoding) and merged by
// a second kernel.
#include "kernels.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>

#define ATT_THREADS 128 /* one key per thread in the score phase; one dim per thread in the value phase */
#define ATT_MAX_HD 256
#define ATT_MIN_SPLIT 256 /* keys; below this a split is not worth its merge */
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

/* Keys one token attends to: [j0, p]. */
__device__ __forceinline__ int att_first_key(int p, int window) {
    return window > 0 && p - window + 1 > 0 ? p - window + 1 : 0;
}

/* Splits of the key range and keys per split, the same on the host (launch
 * and scratch size) for the same arguments. */
static void att_plan(int T, int n_kv, int max_ctx, int window, int *n_splits, int *split_len) {
    int span = window > 0 && window < max_ctx ? window : max_ctx;
    if (span < 1) span = 1;
    long base = (long)T * n_kv;
    int s = (int)((ATT_TARGET_BLOCKS + base - 1) / base);
    int most = (span + ATT_MIN_SPLIT - 1) / ATT_MIN_SPLIT;
    if (s > most) s = most;
    if (s < 1) s = 1;
    int len = (span + s - 1) / s;
    len = (len + ATT_THREADS - 1) / ATT_THREADS * ATT_THREADS;
    *n_splits = (span + len - 1) / len;
    *split_len = len;
}

extern "C" size_t kernels_paged_attention_work_floats(int T, int n_heads, int n_kv, int hd, int max_ctx,
                                                      int window) {
    int ns, len;
    if (T <= 0 || n_kv <= 0) return 0;
    att_plan(T, n_kv, max_ctx, window, &ns, &len);
    if (ns == 1) return 0;
    return (size_t)T * n_heads * ns * (hd + 2);
}

/* One block per (token, kv head, split): the G = n_heads / n_kv query heads
 * that share the kv head walk the split's keys in chunks of ATT_THREADS with
 * a running max and sum. MAXG bounds G (registers per thread). */
template <int MAXG>
__global__ void __launch_bounds__(ATT_THREADS)
paged_attention_kernel(float *out, float *work, const float *q, const __nv_bfloat16 *kc, const __nv_bfloat16 *vc,
                       const int *pos, const int *tok_seq, const int *block_tables, int block_size, int max_blocks,
                       int n_heads, int n_kv, int hd, int window, int n_splits, int split_len, float scale) {
    extern __shared__ float sm[];
    const int G = n_heads / n_kv;
    float *qs = sm;                               /* (G, hd) */
    float *ps = qs + G * hd;                      /* (G, ATT_THREADS) scores, then probabilities */
    float *red = ps + G * ATT_THREADS;            /* (ATT_THREADS / 32, G) */
    int *rows = (int *)(red + (ATT_THREADS / 32) * MAXG); /* (ATT_THREADS) cache row of each key */

    const int t = blockIdx.x, kh = blockIdx.y, z = blockIdx.z, tid = threadIdx.x;
    const int lane = tid & 31, warp = tid >> 5;
    const int p = pos[t], s = tok_seq[t];
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
            for (int jj = 0; jj < nk; jj++) {
                float vf = __bfloat162float(vc[(size_t)rows[jj] * kvw + (size_t)kh * hd + e]);
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
__global__ void attention_merge_kernel(float *out, const float *work, const int *pos, int n_heads, int hd,
                                       int window, int n_splits, int split_len) {
    int t = blockIdx.x, h = blockIdx.y;
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

template <int MAXG>
static int att_launch(const kernels_attention_args *a, int ns, int len, cudaStream_t st) {
    int G = a->n_heads / a->n_kv;
    size_t smem = ((size_t)G * a->hd + (size_t)G * ATT_THREADS + (ATT_THREADS / 32) * MAXG) * sizeof(float) +
                  ATT_THREADS * sizeof(int);
    static int configured;
    if (!configured) { /* allow the largest case (G = MAXG, hd = ATT_MAX_HD) */
        size_t most = ((size_t)MAXG * ATT_MAX_HD + (size_t)MAXG * ATT_THREADS + (ATT_THREADS / 32) * MAXG) *
                          sizeof(float) + ATT_THREADS * sizeof(int);
        if (cudaFuncSetAttribute(paged_attention_kernel<MAXG>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 (int)most) != cudaSuccess)
            return KERNELS_ERR_LAUNCH;
        configured = 1;
    }
    dim3 grid(a->n_tokens, a->n_kv, ns);
    paged_attention_kernel<MAXG><<<grid, ATT_THREADS, smem, st>>>(
        a->out, a->work, a->q, (const __nv_bfloat16 *)a->kc, (const __nv_bfloat16 *)a->vc, a->pos, a->tok_seq,
        a->block_tables, a->block_size, a->max_blocks, a->n_heads, a->n_kv, a->hd, a->window, ns, len,
        1.0f / sqrtf((float)a->hd));
    return cudaGetLastError() == cudaSuccess ? KERNELS_OK : KERNELS_ERR_LAUNCH;
}

extern "C" int kernels_paged_attention_bf16(const kernels_attention_args *a, void *stream) {
    if (a->n_tokens < 0 || a->n_kv <= 0 || a->n_heads % a->n_kv || a->hd <= 0 || a->hd > ATT_MAX_HD ||
        a->block_size <= 0 || a->n_heads / a->n_kv > 16)
        return KERNELS_ERR_ARG;
    if (a->n_tokens == 0) return KERNELS_OK;
    int ns, len;
    att_plan(a->n_tokens, a->n_kv, a->max_ctx, a->window, &ns, &len);
    if (ns > 1 && (!a->work || a->work_floats < (size_t)a->n_tokens * a->n_heads * ns * (a->hd + 2)))
        return KERNELS_ERR_ARG;
    cudaStream_t st = (cudaStream_t)stream;
    int G = a->n_heads / a->n_kv;
    int rc = G <= 1 ? att_launch<1>(a, ns, len, st)
           : G <= 4 ? att_launch<4>(a, ns, len, st)
           : G <= 8 ? att_launch<8>(a, ns, len, st)
                    : att_launch<16>(a, ns, len, st);
    if (rc || ns == 1) return rc;
    attention_merge_kernel<<<dim3(a->n_tokens, a->n_heads), 128, 0, st>>>(a->out, a->work, a->pos, a->n_heads,
                                                                          a->hd, a->window, ns, len);
    return cudaGetLastError() == cudaSuccess ? KERNELS_OK : KERNELS_ERR_LAUNCH;
}
