// Sampling-side reductions: greedy argmax per row of logits, lowest id on
// ties (the CPU reference scans ids upwards and keeps a strictly larger
// value). NaN never wins.
#include "kernels/kernels.h"

#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

__device__ __forceinline__ void argmax_pick(float &v, int &i, float v2, int i2) {
    if (v2 > v || (v2 == v && i2 < i)) v = v2, i = i2;
}

#define ARGMAX_THREADS 1024

// The block's (best, bi) pairs reduced by argmax_pick; thread 0 gets the
// winner's id, 0 when no thread saw a value that is not NaN.
__device__ int argmax_reduce(float best, int bi) {
    for (int o = 16; o > 0; o >>= 1)
        argmax_pick(best, bi, __shfl_xor_sync(0xffffffffu, best, o), __shfl_xor_sync(0xffffffffu, bi, o));
    __shared__ float bv[32];
    __shared__ int bx[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) bv[warp] = best, bx[warp] = bi;
    __syncthreads();
    if (threadIdx.x == 0)
        for (int w = 1; w < (int)(blockDim.x >> 5); w++) argmax_pick(best, bi, bv[w], bx[w]);
    return bi == 0x7fffffff ? 0 : bi; /* an all-NaN row: id 0 */
}

__device__ __forceinline__ void argmax_pick4(float &best, int &bi, float4 v, int i) {
    if (!isnan(v.x)) argmax_pick(best, bi, v.x, i);
    if (!isnan(v.y)) argmax_pick(best, bi, v.y, i + 1);
    if (!isnan(v.z)) argmax_pick(best, bi, v.z, i + 2);
    if (!isnan(v.w)) argmax_pick(best, bi, v.w, i + 3);
}

// One block per row. The row is read 16 bytes a load, four loads issued
// before any is used: a single block's sweep of a 128k vocabulary is a
// chain of L2 round trips, and a scalar load per trip took ~50 us of a
// batch-1 decode step (bench/RESULTS.md). The pick is a total order (value,
// then lowest id), so the threads' split of the row changes no result.
__global__ void __launch_bounds__(ARGMAX_THREADS) argmax_kernel(int *next, const float *logits, int vocab) {
    const float *row = logits + (size_t)blockIdx.x * vocab;
    float best = -INFINITY;
    int bi = 0x7fffffff;
    const int n4 = ((uintptr_t)row & 15) ? 0 : vocab / 4, nt = blockDim.x;
    const float4 *r4 = (const float4 *)row;
    int i = threadIdx.x;
    for (; i + 3 * nt < n4; i += 4 * nt) {
        float4 a = r4[i], b = r4[i + nt], c = r4[i + 2 * nt], d = r4[i + 3 * nt];
        argmax_pick4(best, bi, a, 4 * i);
        argmax_pick4(best, bi, b, 4 * (i + nt));
        argmax_pick4(best, bi, c, 4 * (i + 2 * nt));
        argmax_pick4(best, bi, d, 4 * (i + 3 * nt));
    }
    for (; i < n4; i += nt) argmax_pick4(best, bi, r4[i], 4 * i);
    for (int j = 4 * n4 + threadIdx.x; j < vocab; j += nt) {
        float v = row[j];
        if (!isnan(v)) argmax_pick(best, bi, v, j);
    }
    int id = argmax_reduce(best, bi);
    if (threadIdx.x == 0) next[blockIdx.x] = id;
}

extern "C" int kernels_argmax_f32(int *next, const float *logits, int T, int vocab, void *stream) {
    if (T < 0 || vocab <= 0) return KERNELS_ERR_ARG;
    if (T == 0) return KERNELS_OK;
    argmax_kernel<<<T, ARGMAX_THREADS, 0, (cudaStream_t)stream>>>(next, logits, vocab);
    return cudaGetLastError() == cudaSuccess ? KERNELS_OK : KERNELS_ERR_LAUNCH;
}

// ---- candidates for host-side sampling (backend_ops.sample) ----
// One block of SAMPLE_THREADS per row. The order is sampler_sample's: logit
// descending, id ascending, -0 equal to +0; it is the order of the 64-bit
// key (sample_key(l) << 32) | ~id. The n-th largest 32-bit key is found by
// a radix select (four 8-bit passes over the row), the candidates above it
// and the lowest ids equal to it are gathered into shared memory and
// bitonic-sorted there. Penalties repeat sampler.c's f32 operations with
// explicit IEEE rounding (no FMA contraction), so rows are bit for bit the
// CPU op's.

#define SAMPLE_THREADS 1024
#define SAMPLE_MAX 4096 // KERNELS_SAMPLE_MAX_CANDIDATES
#define SAMPLE_UNROLL 8  // row elements a thread loads before using them

__device__ __forceinline__ unsigned sample_key(float f) {
    if (f == 0.0f) f = 0.0f;
    unsigned b = __float_as_uint(f);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ float sample_unkey(unsigned k) {
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// Step 1 of the op on the row that header h names, but the mask: biases in
// order (one thread: an id may repeat), then penalties (distinct ids, one
// thread each). Ends with the block synchronised.
__device__ void sample_bias_penalize(float *row, const int *h, const int *desc) {
    float rp = __int_as_float(h[2]), pp = __int_as_float(h[3]), fp = __int_as_float(h[4]);
    int n_bias = h[6], n_pen = h[8];
    const int *bias = desc + h[7], *pen = desc + h[9];
    if (threadIdx.x == 0)
        for (int i = 0; i < n_bias; i++) row[bias[2 * i]] = __fadd_rn(row[bias[2 * i]], __int_as_float(bias[2 * i + 1]));
    __syncthreads();
    for (int i = threadIdx.x; i < n_pen; i += blockDim.x) {
        int id = pen[2 * i], c = pen[2 * i + 1];
        float l = row[id];
        if (rp != 1.0f) l = l > 0 ? __fdiv_rn(l, rp) : __fmul_rn(l, rp);
        l = __fsub_rn(l, __fadd_rn(__fmul_rn(pp, (float)(c > 0)), __fmul_rn(fp, (float)c)));
        row[id] = l;
    }
    __syncthreads();
}

__global__ void __launch_bounds__(SAMPLE_THREADS) sample_kernel(unsigned char *out, float *logits, const int *desc,
                                                                int vocab, int stride, int n_cand) {
    __shared__ unsigned long long cand[SAMPLE_MAX];
    __shared__ unsigned hist[256];
    __shared__ unsigned s_prefix, s_need, s_count, s_base, s_eq;
    __shared__ int s_nan;
    __shared__ unsigned warp_cnt[SAMPLE_THREADS / 32];
    __shared__ double warp_sum[SAMPLE_THREADS / 32];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int *h = desc + (size_t)blockIdx.x * KERNELS_SAMPLE_DESC_WORDS;
    float *row = logits + (size_t)h[0] * stride;
    float T = __int_as_float(h[1]);
    int nf = h[5];
    const unsigned *allowed = h[10] >= 0 ? (const unsigned *)desc + h[10] : NULL; // a grammar's mask

    // 1. biases and penalties, then the mask
    if (tid == 0) {
        s_nan = 0;
        s_prefix = 0;
        s_need = (unsigned)min(nf, n_cand);
        s_count = 0;
    }
    sample_bias_penalize(row, h, desc);
    if (allowed) { // the tokens a grammar does not allow can never be sampled (after biases and penalties: -inf either way)
        for (int i = tid; i < vocab; i += SAMPLE_THREADS)
            if (!((allowed[i >> 5] >> (i & 31)) & 1)) row[i] = -INFINITY;
        __syncthreads();
    }
    const unsigned K = s_need; // candidates wanted, >= 1

    // 2. radix select of the K-th largest key, most significant byte first
    unsigned mask = 0;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int i = tid; i < 256; i += SAMPLE_THREADS) hist[i] = 0;
        __syncthreads();
        unsigned prefix = s_prefix;
        int nan = 0;
        for (int t0 = 0; t0 < vocab; t0 += SAMPLE_THREADS * SAMPLE_UNROLL) { // whole warps: uniform tiles
            float v[SAMPLE_UNROLL];
#pragma unroll
            for (int q = 0; q < SAMPLE_UNROLL; q++) { // loads first: one block per row needs them in flight
                int i = t0 + q * SAMPLE_THREADS + tid;
                v[q] = i < vocab ? row[i] : 0.0f;
            }
#pragma unroll
            for (int q = 0; q < SAMPLE_UNROLL; q++) {
                int i = t0 + q * SAMPLE_THREADS + tid;
                if (shift == 24) nan |= isnan(v[q]);
                unsigned k = sample_key(v[q]), bin = (k >> shift) & 255;
                bool m = i < vocab && (k & mask) == prefix;
                unsigned active = __ballot_sync(0xffffffffu, m);
                if (m) { // one atomic per distinct bin of the warp: rows crowd into few bins
                    unsigned peers = __match_any_sync(active, bin);
                    if (lane == __ffs(peers) - 1) atomicAdd(&hist[bin], (unsigned)__popc(peers));
                }
            }
        }
        if (nan) s_nan = 1;
        __syncthreads();
        if (warp == 0) { // the bin holding the need-th largest of those matching the prefix
            unsigned need = s_need, c = 0;
            int hi = 255 - 8 * lane; // this lane's bins: hi down to hi - 7
            for (int q = 0; q < 8; q++) c += hist[hi - q];
            unsigned incl = c;
            for (int o = 1; o < 32; o <<= 1) {
                unsigned y = __shfl_up_sync(0xffffffffu, incl, o);
                if (lane >= o) incl += y;
            }
            if (incl - c < need && incl >= need) { // exactly one lane
                unsigned cum = incl - c;
                int b = hi;
                for (int q = 0; q < 7 && cum + hist[b] < need; q++, b--) cum += hist[b];
                s_need = need - cum;
                s_prefix = prefix | ((unsigned)b << shift);
                s_eq = hist[b];
            }
        }
        mask |= 255u << shift;
        __syncthreads();
    }
    const unsigned tau = s_prefix, take_eq = s_need, n_eq = s_eq; // keys == tau: n_eq, of which take_eq lowest ids

    // 3. gather: every key above tau, and the take_eq lowest ids equal to it
    for (int i = tid; i < n_cand; i += SAMPLE_THREADS) cand[i] = 0; // 0 sorts after every real key
    __syncthreads();
    for (int t0 = 0; t0 < vocab; t0 += SAMPLE_THREADS * SAMPLE_UNROLL) {
        float v[SAMPLE_UNROLL];
#pragma unroll
        for (int q = 0; q < SAMPLE_UNROLL; q++) {
            int i = t0 + q * SAMPLE_THREADS + tid;
            v[q] = i < vocab ? row[i] : 0.0f;
        }
#pragma unroll
        for (int q = 0; q < SAMPLE_UNROLL; q++) {
            int i = t0 + q * SAMPLE_THREADS + tid;
            unsigned k = sample_key(v[q]);
            if (i < vocab && (k > tau || (k == tau && take_eq == n_eq)))
                cand[atomicAdd(&s_count, 1u)] = ((unsigned long long)k << 32) | (unsigned)~i;
        }
    }
    if (take_eq < n_eq) { // ties at tau cut: take them in id order, a tile of the row at a time
        if (tid == 0) s_base = 0;
        __syncthreads();
        for (int t0 = 0; t0 < vocab; t0 += SAMPLE_THREADS) {
            int i = t0 + tid;
            bool eq = i < vocab && sample_key(row[i]) == tau;
            unsigned bal = __ballot_sync(0xffffffffu, eq);
            if (lane == 0) warp_cnt[warp] = __popc(bal);
            __syncthreads();
            unsigned before = s_base, tile = 0;
            for (int w = 0; w < SAMPLE_THREADS / 32; w++) {
                if (w < warp) before += warp_cnt[w];
                tile += warp_cnt[w];
            }
            before += __popc(bal & ((1u << lane) - 1u));
            if (eq && before < take_eq)
                cand[atomicAdd(&s_count, 1u)] = ((unsigned long long)tau << 32) | (unsigned)~i;
            __syncthreads();
            if (tid == 0) s_base += tile;
            __syncthreads();
            if (s_base >= take_eq) break;
        }
    }
    __syncthreads();

    // 4. bitonic sort of cand[0, n_cand), descending
    for (int size = 2; size <= n_cand; size <<= 1)
        for (int j = size >> 1; j > 0; j >>= 1) {
            for (int t = tid; t < n_cand / 2; t += SAMPLE_THREADS) {
                int a = 2 * t - (t & (j - 1)), b = a + j; // pairs (a, a + j), a's bit j clear
                bool desc_ = (a & size) == 0;
                unsigned long long x = cand[a], y = cand[b];
                if ((x < y) == desc_) cand[a] = y, cand[b] = x;
            }
            __syncthreads();
        }

    // 5. the result row
    int *ids = (int *)(out + (size_t)blockIdx.x * (8 * (size_t)n_cand + 16));
    float *lg = (float *)((unsigned char *)ids + 4 * (size_t)n_cand);
    for (int i = tid; i < n_cand; i += SAMPLE_THREADS) {
        bool ok = i < (int)K;
        int id = ok ? (int)~(unsigned)cand[i] : -1;
        ids[i] = id;
        lg[i] = ok ? row[id] : 0.0f;
    }

    // 6. the tail: every id past the K candidates
    double tail = 0.0;
    if (nf > n_cand && T > 0.0f) {
        float mx = __fdiv_rn(row[(int)~(unsigned)cand[0]], T);
        for (int t0 = 0; t0 < vocab; t0 += SAMPLE_THREADS * SAMPLE_UNROLL) {
            float v[SAMPLE_UNROLL];
#pragma unroll
            for (int q = 0; q < SAMPLE_UNROLL; q++) {
                int i = t0 + q * SAMPLE_THREADS + tid;
                v[q] = i < vocab ? row[i] : 0.0f;
            }
#pragma unroll
            for (int q = 0; q < SAMPLE_UNROLL; q++)
                if (t0 + q * SAMPLE_THREADS + tid < vocab && sample_key(v[q]) < tau)
                    tail += (double)expf(__fsub_rn(__fdiv_rn(v[q], T), mx));
        }
        if (tid == 0 && n_eq > take_eq)
            tail += (double)(n_eq - take_eq) * (double)expf(__fsub_rn(__fdiv_rn(sample_unkey(tau), T), mx));
        for (int o = 16; o > 0; o >>= 1) tail += __shfl_xor_sync(0xffffffffu, tail, o);
        if (lane == 0) warp_sum[warp] = tail;
        __syncthreads();
        if (tid == 0) {
            tail = 0.0;
            for (int w = 0; w < SAMPLE_THREADS / 32; w++) tail += warp_sum[w];
        }
    }
    if (tid == 0) {
        unsigned char *m = (unsigned char *)ids + 8 * (size_t)n_cand;
        *(double *)m = tail;
        *(int *)(m + 8) = (int)K;
        *(int *)(m + 12) = s_nan ? KERNELS_SAMPLE_NAN : 0;
    }
}

extern "C" int kernels_sample_f32(void *out, float *logits, const int *desc, int n, int vocab, int stride, int n_cand,
                                  void *stream) {
    if (n < 0 || vocab <= 0 || stride < vocab || n_cand < 1 || n_cand > SAMPLE_MAX || (n_cand & (n_cand - 1)))
        return KERNELS_ERR_ARG;
    if (n == 0) return KERNELS_OK;
    sample_kernel<<<n, SAMPLE_THREADS, 0, (cudaStream_t)stream>>>((unsigned char *)out, logits, desc, vocab, stride,
                                                                 n_cand);
    return cudaGetLastError() == cudaSuccess ? KERNELS_OK : KERNELS_ERR_LAUNCH;
}

// ---- greedy rows of a description (backend_ops.sample_argmax) ----
// One block per row: biases and penalties as sample_kernel applies them,
// then one pass that writes -inf where the mask says no (in place, as the
// sampling op leaves its rows) and takes the argmax as argmax_kernel does;
// a NaN left in the row makes it -1.
__global__ void __launch_bounds__(ARGMAX_THREADS) sample_argmax_kernel(int *next, float *logits, const int *desc,
                                                                       int first, int vocab, int stride) {
    const int *h = desc + (size_t)(first + blockIdx.x) * KERNELS_SAMPLE_DESC_WORDS;
    float *row = logits + (size_t)h[0] * stride;
    const unsigned *allowed = h[10] >= 0 ? (const unsigned *)desc + h[10] : NULL;
    sample_bias_penalize(row, h, desc);
    float best = -INFINITY;
    int bi = 0x7fffffff, nan = 0;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        float v = row[i];
        if (allowed && !((allowed[i >> 5] >> (i & 31)) & 1)) {
            if (v != -INFINITY) row[i] = -INFINITY;
            v = -INFINITY;
        }
        if (isnan(v)) nan = 1;
        else argmax_pick(best, bi, v, i);
    }
    nan = __syncthreads_or(nan);
    int id = argmax_reduce(best, bi);
    if (threadIdx.x == 0) next[blockIdx.x] = nan ? -1 : id;
}

extern "C" int kernels_sample_argmax_f32(int *next, float *logits, const int *desc, int first, int n, int vocab,
                                         int stride, void *stream) {
    if (n < 0 || first < 0 || vocab <= 0 || stride < vocab) return KERNELS_ERR_ARG;
    if (n == 0) return KERNELS_OK;
    sample_argmax_kernel<<<n, ARGMAX_THREADS, 0, (cudaStream_t)stream>>>(next, logits, desc, first, vocab, stride);
    return cudaGetLastError() == cudaSuccess ? KERNELS_OK : KERNELS_ERR_LAUNCH;
}
