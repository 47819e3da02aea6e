// DeepSeek-V4 on the GPU (DEEPSEEK_V4.md section 2): hyper-connections with
// Sinkhorn, the interleaved tail rope, the compressors, the Lightning indexer,
// the window + compressed attention with sinks, the clamped SwiGLU and
// V4.1's Engram gate. Each kernel mirrors its CPU reference
// (engine/backend/cpu/cpu_dsv4.c) line by line. Where a sum runs over one
// thread, it runs in the CPU's order with rounded operations (no fused
// multiply-add), so that the indexer's scores, which pick entries by rank,
// are the CPU's bit for bit; reductions across threads differ from the CPU
// only in their order. Mostly plain per-token blocks, no tiling; the
// attention is tiled (a block's heads share each staged row, online softmax).
#include "kernels/kernels.h"
#include "kernels/fp8.cuh"
#include "kernels/norm.cuh"
#include "kernels/tc.cuh"
#include "kernels/smem.cuh"

#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static int dsv4_status(void) { return cudaGetLastError() == cudaSuccess ? KERNELS_OK : KERNELS_ERR_LAUNCH; }

__device__ __forceinline__ float dsv4_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// ---- hyper-connections ----

// One token's (pre, post, comb) from its mix ((2+N)N), cpu_dsv4.c hc_weights_row,
// for any N <= 16 (N = 4 takes hc_weights4_kernel below). The Sinkhorn
// iterations run on a copy of comb in the thread's own (local) memory: in
// global memory each of their dependent loads and stores went through the
// cache. The operations and their order are the CPU's.
__global__ void hc_weights_kernel(float *pre, float *post, float *comb, const float *mix, const float *base,
                                  const float *scale, int T, int N, int iters, float hc_eps) {
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= T) return;
    const float *a = mix + (size_t)t * (2 + N) * N;
    float *pr = pre + (size_t)t * N, *po = post + (size_t)t * N;
    float C[256];
    for (int j = 0; j < N; j++) {
        pr[j] = dsv4_sigmoid(__fadd_rn(__fmul_rn(a[j], scale[0]), base[j])) + hc_eps;
        po[j] = 2.0f * dsv4_sigmoid(__fadd_rn(__fmul_rn(a[N + j], scale[1]), base[N + j]));
    }
    for (int j = 0; j < N; j++) {
        float *row = C + j * N, mx = -INFINITY, sum = 0.0f;
        for (int k = 0; k < N; k++) {
            row[k] = __fadd_rn(__fmul_rn(a[2 * N + j * N + k], scale[2]), base[2 * N + j * N + k]);
            mx = row[k] > mx ? row[k] : mx;
        }
        for (int k = 0; k < N; k++) sum += row[k] = expf(row[k] - mx);
        for (int k = 0; k < N; k++) row[k] = row[k] / sum + hc_eps;
    }
    for (int it = 0; it < iters; it++) {
        if (it > 0)
            for (int j = 0; j < N; j++) {
                float s = 0.0f;
                for (int k = 0; k < N; k++) s += C[j * N + k];
                for (int k = 0; k < N; k++) C[j * N + k] /= s + hc_eps;
            }
        for (int k = 0; k < N; k++) {
            float s = 0.0f;
            for (int j = 0; j < N; j++) s += C[j * N + k];
            for (int j = 0; j < N; j++) C[j * N + k] /= s + hc_eps;
        }
    }
    float *Ct = comb + (size_t)t * N * N;
    for (int i = 0; i < N * N; i++) Ct[i] = C[i];
}

// The same for N = 4 (DeepSeek-V4's hc_mult), a lane per element of comb:
// 16 lanes a token, lane (j, k) holding C[j][k]. Every lane gathers its row's
// (or column's) four values by shuffles and sums them in the CPU's order from
// 0.0f, so each lane computes what the loop above computes for its element,
// bit for bit, with the 20 iterations' chain of ~1,300 dependent operations
// cut to ~200 (hc_split took 30 us a call at T = 1 with the loop in
// registers, 64 us with it in global memory).
__global__ void hc_weights4_kernel(float *pre, float *post, float *comb, const float *mix, const float *base,
                                   const float *scale, int T, int iters, float hc_eps) {
    const int N = 4;
    int t = (blockIdx.x * blockDim.x + threadIdx.x) >> 4, l = threadIdx.x & 15, j = l >> 2, k = l & 3;
    bool live = t < T;
    const float *a = mix + (size_t)(live ? t : 0) * (2 + N) * N;
    if (live && l < N) pre[(size_t)t * N + l] = dsv4_sigmoid(__fadd_rn(__fmul_rn(a[l], scale[0]), base[l])) + hc_eps;
    if (live && l >= N && l < 2 * N)
        post[(size_t)t * N + l - N] = 2.0f * dsv4_sigmoid(__fadd_rn(__fmul_rn(a[l], scale[1]), base[l]));
    // all 16 lanes of a token take part in the shuffles, live or not
    float c = __fadd_rn(__fmul_rn(a[2 * N + l], scale[2]), base[2 * N + l]), mx = -INFINITY, sum = 0.0f;
    for (int q = 0; q < N; q++) {
        float v = __shfl_sync(0xffffffffu, c, j * N + q, 16);
        mx = v > mx ? v : mx;
    }
    c = expf(c - mx);
    for (int q = 0; q < N; q++) sum += __shfl_sync(0xffffffffu, c, j * N + q, 16);
    c = c / sum + hc_eps;
    for (int it = 0; it < iters; it++) {
        float s = 0.0f;
        if (it > 0) {
            for (int q = 0; q < N; q++) s += __shfl_sync(0xffffffffu, c, j * N + q, 16);
            c /= s + hc_eps;
            s = 0.0f;
        }
        for (int q = 0; q < N; q++) s += __shfl_sync(0xffffffffu, c, q * N + k, 16);
        c /= s + hc_eps;
    }
    if (live) comb[(size_t)t * N * N + l] = c;
}

extern "C" int kernels_hc_weights(float *pre, float *post, float *comb, const float *mix, const float *base,
                                  const float *scale, int T, int N, int iters, float hc_eps, void *stream) {
    if (T <= 0) return KERNELS_OK;
    if (N < 1 || N > 16) return KERNELS_ERR_ARG;
    if (N == 4) /* DeepSeek-V4's hc_mult: 8 tokens a block of 128 */
        hc_weights4_kernel<<<(T + 7) / 8, 128, 0, (cudaStream_t)stream>>>(pre, post, comb, mix, base, scale, T, iters,
                                                                          hc_eps);
    else
        hc_weights_kernel<<<(T + 127) / 128, 128, 0, (cudaStream_t)stream>>>(pre, post, comb, mix, base, scale, T,
                                                                                N, iters, hc_eps);
    return dsv4_status();
}

// x (T, d) = sum_j pre[t, j] X[t, j] (streams in order), or with head the
// pre of the head: sigmoid(mix[t, j] scale[0] + base[j]) + hc_eps.
__global__ void hc_collapse_kernel(float *x, const float *X, const float *pre, const float *mix, const float *base,
                                   const float *scale, int N, int d, float hc_eps) {
    int t = blockIdx.y;
    __shared__ float w[16];
    if (threadIdx.x < N)
        w[threadIdx.x] = mix ? dsv4_sigmoid(__fadd_rn(__fmul_rn(mix[(size_t)t * N + threadIdx.x], scale[0]),
                                                      base[threadIdx.x])) + hc_eps
                             : pre[(size_t)t * N + threadIdx.x];
    __syncthreads();
    const float *Xt = X + (size_t)t * N * d;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < d; i += gridDim.x * blockDim.x) {
        float s = 0.0f;
        for (int j = 0; j < N; j++) s = __fadd_rn(s, __fmul_rn(w[j], Xt[(size_t)j * d + i]));
        x[(size_t)t * d + i] = s;
    }
}

static int hc_collapse_launch(float *x, const float *X, const float *pre, const float *mix, const float *base,
                              const float *scale, int T, int N, int d, float hc_eps, void *stream) {
    if (T <= 0) return KERNELS_OK;
    if (N < 1 || N > 16 || T > 65535) return KERNELS_ERR_ARG;
    dim3 grid((d + 255) / 256 < 8 ? (d + 255) / 256 : 8, T);
    hc_collapse_kernel<<<grid, 256, 0, (cudaStream_t)stream>>>(x, X, pre, mix, base, scale, N, d, hc_eps);
    return dsv4_status();
}

extern "C" int kernels_hc_collapse(float *x, const float *X, const float *pre, int T, int N, int d, void *stream) {
    return hc_collapse_launch(x, X, pre, NULL, NULL, NULL, T, N, d, 0.0f, stream);
}

extern "C" int kernels_hc_head(float *out, const float *X, const float *mix, const float *base, const float *scale,
                               int T, int N, int d, float hc_eps, void *stream) {
    return hc_collapse_launch(out, X, NULL, mix, base, scale, T, N, d, hc_eps, stream);
}

// X[k] (T, N, d) = post[k] y + sum_j comb[j, k] X[j].
__global__ void hc_merge_kernel(float *X, const float *y, const float *post, const float *comb, int N, int d) {
    int t = blockIdx.y;
    __shared__ float po[16], C[256];
    if (threadIdx.x < N) po[threadIdx.x] = post[(size_t)t * N + threadIdx.x];
    for (int i = threadIdx.x; i < N * N; i += blockDim.x) C[i] = comb[(size_t)t * N * N + i];
    __syncthreads();
    float *Xt = X + (size_t)t * N * d;
    const float *yt = y + (size_t)t * d;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < d; i += gridDim.x * blockDim.x) {
        float col[16];
        for (int j = 0; j < N; j++) col[j] = Xt[(size_t)j * d + i];
        for (int k = 0; k < N; k++) {
            float s = 0.0f;
            for (int j = 0; j < N; j++) s = __fadd_rn(s, __fmul_rn(C[j * N + k], col[j]));
            Xt[(size_t)k * d + i] = __fadd_rn(__fmul_rn(po[k], yt[i]), s);
        }
    }
}

extern "C" int kernels_hc_merge(float *X, const float *y, const float *post, const float *comb, int T, int N, int d,
                                void *stream) {
    if (T <= 0) return KERNELS_OK;
    if (N < 1 || N > 16 || T > 65535) return KERNELS_ERR_ARG;
    dim3 grid((d + 255) / 256 < 8 ? (d + 255) / 256 : 8, T);
    hc_merge_kernel<<<grid, 256, 0, (cudaStream_t)stream>>>(X, y, post, comb, N, d);
    return dsv4_status();
}

// ---- rope on the last r channels, interleaved pairs ----

__device__ __forceinline__ void dsv4_rope_pair(float *v, float pos, float f, int inverse) {
    float a = pos * f, c = cosf(a), s = sinf(a);
    if (inverse) s = -s;
    float x0 = v[0], x1 = v[1];
    v[0] = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
    v[1] = __fadd_rn(__fmul_rn(x1, c), __fmul_rn(x0, s));
}

// Block (t, c): token t's pairs c 128 .. c 128 + 127 of all its heads' (then every 64 128th), a thread a
// pair: at T = 1 one block had looped over 64 heads' 2,048 pairs, 16 sine-cosine chains a thread
// (8.3 us a call in the V4 profile). Each pair's operations are unchanged: the same bits.
__global__ void rope_tail_kernel(float *x, const int *pos, int n_heads, int hd, int r, const float *inv_freq,
                                 int inverse) {
    int t = blockIdx.x;
    for (int i = blockIdx.y * blockDim.x + threadIdx.x; i < n_heads * (r / 2); i += gridDim.y * blockDim.x) {
        int h = i / (r / 2), j = i % (r / 2);
        dsv4_rope_pair(x + ((size_t)t * n_heads + h) * hd + hd - r + 2 * j, (float)pos[t], inv_freq[j], inverse);
    }
}

extern "C" int kernels_rope_tail(float *x, const int *pos, int T, int n_heads, int hd, int r, const float *inv_freq,
                                 int inverse, void *stream) {
    if (T <= 0) return KERNELS_OK;
    int pairs = n_heads * (r / 2), chunks = (pairs + 127) / 128;
    if (pairs <= 0) return KERNELS_OK;
    dim3 grid(T, chunks < 64 ? chunks : 64);
    rope_tail_kernel<<<grid, 128, 0, (cudaStream_t)stream>>>(x, pos, n_heads, hd, r, inv_freq, inverse);
    return dsv4_status();
}

// ---- the paged decode state (backend.h, dsv4_kv) ----

__device__ __forceinline__ float *dsv4_block(const kernels_dsv4_kv &L, const int *bt, int max_blocks, int bs, int s,
                                             int p) {
    int blk = bt[(size_t)s * max_blocks + p / bs];
    return L.base + (size_t)blk * L.block_floats;
}
__device__ __forceinline__ float *dsv4_kv_row(const kernels_dsv4_kv &L, const int *bt, int max_blocks, int bs, int s,
                                              int p) {
    return dsv4_block(L, bt, max_blocks, bs, s, p) + (size_t)(p % bs) * L.D;
}
__device__ __forceinline__ float *dsv4_entry(const kernels_dsv4_kv &L, const int *bt, int max_blocks, int bs, int s,
                                             int w, int key) {
    int p = w * L.m, slot = p % bs / L.m;
    int blk = bt[(size_t)s * max_blocks + p / bs];
    float *e = L.ebase + (size_t)blk * L.eblock_floats + (size_t)bs * L.D;
    return key ? e + (size_t)L.slots * L.D + (size_t)slot * L.dI : e + (size_t)slot * L.D;
}

// ---- compressor ----

// x (n) = w * (x * rsqrt(mean(x^2) + eps)) by the whole block (blockDim.x a power of two, at most 256), the
// sum of squares in double: cpu_dsv4.c rmsnorm_w_row, the reduction in another order. x is written by the
// block before (the caller syncs) and read by it after (this syncs last).
__device__ void dsv4_rmsnorm_w_block(float *x, const float *w, int n, float eps) {
    __shared__ double part[256];
    double ss = 0.0;
    for (int c = threadIdx.x; c < n; c += blockDim.x) ss += (double)x[c] * x[c];
    part[threadIdx.x] = ss;
    __syncthreads();
    for (int o = blockDim.x / 2; o > 0; o >>= 1) {
        if (threadIdx.x < o) part[threadIdx.x] += part[threadIdx.x + o];
        __syncthreads();
    }
    float sc = 1.0f / sqrtf((float)(part[0] / n) + eps);
    for (int c = threadIdx.x; c < n; c += blockDim.x) x[c] = __fmul_rn(w[c], __fmul_rn(x[c], sc));
    __syncthreads();
}

// Rows of position p: the step's (p >= pos0) or the ring's.
__device__ __forceinline__ const float *dsv4_row_at(const float *step, const float *ring, int cap, int cw, int start,
                                                    int pos0, int p) {
    return p >= pos0 ? step + (size_t)(start + p - pos0) * cw : ring + (size_t)(p % cap) * cw;
}

// Token t's sequence s, where its step rows start and its first position, and its rings (the layer's
// offsets into its state): what the compressors read, from device memory.
struct dsv4_seq_of {
    int s, start, pos0;
    float *rk, *rg;
};
__device__ __forceinline__ dsv4_seq_of dsv4_seq_at(const kernels_dsv4_compress_args &a, int t) {
    int s = a.tok_seq[t];
    float *st = a.seq_state[s];
    return {s, a.seq_start[s], a.seq_pos0[s], st + a.ring_kv, st + a.ring_gate};
}

// One block per token; the token at the last position of window w (p = w m + m - 1, each closing
// window has one in the step) makes its entry: channel c's softmax over the window's slots (one thread
// per channel, slots in the CPU's order), then the entry's norm (sum of squares in double) and the rope
// at w m. The other blocks leave at once.
__global__ void compress_kernel(kernels_dsv4_compress_args a) {
    int t = blockIdx.x, last = a.pos[t], m = a.m, D = a.D, cw = a.overlap ? 2 * D : D, cap = 2 * m;
    if (last % m != m - 1) return; // the whole block: no window closes here
    dsv4_seq_of q = dsv4_seq_at(a, t);
    int w = last / m, s = q.s, start = q.start, pos0 = q.pos0;
    const float *rk = q.rk, *rg = q.rg;
    float *e = dsv4_entry(a.cache, a.block_tables, a.max_blocks, a.block_size, s, w, a.which);
    for (int c = threadIdx.x; c < D; c += blockDim.x) {
        float g[256], v[256], mx = -INFINITY, sum = 0.0f, acc = 0.0f; // 2m slots; m <= 128
        int n = 0;
        if (a.overlap && w > 0)
            for (int i = 0; i < m; i++, n++) {
                int p = (w - 1) * m + i;
                v[n] = dsv4_row_at(a.kv, rk, cap, cw, start, pos0, p)[c];
                g[n] = __fadd_rn(dsv4_row_at(a.gate, rg, cap, cw, start, pos0, p)[c], a.ape[(size_t)i * cw + c]);
            }
        for (int i = 0; i < m; i++, n++) {
            int p = w * m + i, o = a.overlap ? D : 0;
            v[n] = dsv4_row_at(a.kv, rk, cap, cw, start, pos0, p)[o + c];
            g[n] = __fadd_rn(dsv4_row_at(a.gate, rg, cap, cw, start, pos0, p)[o + c], a.ape[(size_t)i * cw + o + c]);
        }
        for (int i = 0; i < n; i++) mx = g[i] > mx ? g[i] : mx;
        for (int i = 0; i < n; i++) sum += g[i] = expf(g[i] - mx);
        for (int i = 0; i < n; i++) acc = __fadd_rn(acc, __fmul_rn(v[i], g[i] / sum));
        e[c] = acc;
    }
    __syncthreads();
    dsv4_rmsnorm_w_block(e, a.norm, D, a.eps);
    for (int j = threadIdx.x; j < a.r / 2; j += blockDim.x) dsv4_rope_pair(e + D - a.r + 2 * j, (float)(w * m), a.inv_freq[j], 0);
}

// One block per token: the last 2m projections of each sequence (its tokens at p >= P - 2m, P the
// sequence's end in the step) go to its ring, position p at row p % 2m. Launched after the entries,
// which read the rows these overwrite.
__global__ void compress_ring_kernel(kernels_dsv4_compress_args a, int cw) {
    int t = blockIdx.x, p = a.pos[t], cap = 2 * a.m;
    dsv4_seq_of q = dsv4_seq_at(a, t);
    if (p < q.pos0 + a.seq_start[q.s + 1] - q.start - cap) return;
    for (int i = threadIdx.x; i < cw; i += blockDim.x) {
        q.rk[(size_t)(p % cap) * cw + i] = a.kv[(size_t)t * cw + i];
        q.rg[(size_t)(p % cap) * cw + i] = a.gate[(size_t)t * cw + i];
    }
}

extern "C" int kernels_dsv4_compress(const kernels_dsv4_compress_args *a, void *stream) {
    if (a->n_tokens <= 0) return KERNELS_OK;
    if (a->m < 1 || a->m > 128 || a->D < 1) return KERNELS_ERR_ARG;
    cudaStream_t st = (cudaStream_t)stream;
    compress_kernel<<<a->n_tokens, 256, 0, st>>>(*a);
    compress_ring_kernel<<<a->n_tokens, 256, 0, st>>>(*a, a->overlap ? 2 * a->D : a->D);
    return dsv4_status();
}

// ---- DeepSeek-V4.1's ratio-1/2 layers: SGLang's fake quantisations (cpu_dsv4.c round_fp4, fq4_block,
// fq_kv_block), each block of values by one thread in the CPU's order, every operation rounded as the
// CPU's, so the quantised values are the CPU's bits on the same inputs ----

// |v| <= 6 onto the e2m1 grid (steps 0.5 / 1 / 2 below 2 / 4 / 6), nearest with ties to even, v's sign.
__device__ __forceinline__ float dsv41_round_fp4(float v) {
    float a = fabsf(v), step = a < 2.0f ? 0.5f : a < 4.0f ? 1.0f : 2.0f;
    float q = __fmul_rn(rintf(a / step), step);
    return v > 0 ? q : v < 0 ? -q : 0.0f;
}

__device__ __forceinline__ float dsv41_amax(const float *x, int n) {
    float amax = 0.0f;
    for (int i = 0; i < n; i++) amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
    return amax;
}

// x (n) in place: round_fp4(clamp(x / scale, -6, 6)) * scale.
__device__ __forceinline__ void dsv41_fq_apply(float *x, int n, float scale) {
    for (int i = 0; i < n; i++) {
        float v = x[i] / scale;
        x[i] = __fmul_rn(dsv41_round_fp4(v < -6.0f ? -6.0f : v > 6.0f ? 6.0f : v), scale);
    }
}

// fake_quant_fp4 of one block of 32: scale 2^ceil(log2(max(amax, 6 2^-126) / 6)) from the f32 bits.
__device__ void dsv41_fq4_block(float *x) {
    float amax = dsv41_amax(x, 32);
    amax = amax > 6.0f * 0x1p-126f ? amax : 6.0f * 0x1p-126f;
    unsigned u = __float_as_uint(__fmul_rn(amax, (float)(1.0 / 6.0)));
    int e = (int)((u >> 23) & 0xff) - 127 + ((u & 0x7fffff) != 0);
    dsv41_fq_apply(x, 32, __uint_as_float((unsigned)(e + 127) << 23));
}

// fake_quant_compressed_kv of one block of 16: scale e4m3(clamp(amax / 6, 2^-9, 448)).
__device__ void dsv41_fq_kv_block(float *x) {
    float t = __fmul_rn(dsv41_amax(x, 16), (float)(1.0 / 6.0));
    t = t < 0x1p-9f ? 0x1p-9f : t > 448.0f ? 448.0f : t;
    dsv41_fq_apply(x, 16, fp8_e4m3_f32(fp8_f32_e4m3(t)));
}

// One block per token t, at position p (cpu_dsv4.c low_compress_token):
// a token that closes a group (p % m == m - 1) pools it (ratio 2: per channel the softmax of the scores
// of p - 1 and p weighting their kv, p - 1 from the ring when it precedes the step), its lat row gets
// rmsnorm(pooled) * norm and entry p / m the fake-quantised rope of that at the group's first position;
// the other tokens' lat rows are zeros.
__global__ void low_compress_kernel(kernels_dsv4_compress_args a) {
    int t = blockIdx.x, p = a.pos[t], m = a.m, D = a.D, cap = 2 * m;
    float *l = a.lat + (size_t)t * D;
    if (p % m != m - 1) { // the whole block leaves: p is the block's
        for (int c = threadIdx.x; c < D; c += blockDim.x) l[c] = 0.0f;
        return;
    }
    dsv4_seq_of q = dsv4_seq_at(a, t);
    int s = q.s, start = q.start, pos0 = q.pos0;
    const float *v1 = a.kv + (size_t)t * D, *rk = q.rk, *rg = q.rg;
    for (int c = threadIdx.x; c < D; c += blockDim.x) {
        if (m == 1) {
            l[c] = v1[c];
            continue;
        }
        const float *v0 = dsv4_row_at(a.kv, rk, cap, D, start, pos0, p - 1);
        const float *g0 = dsv4_row_at(a.gate, rg, cap, D, start, pos0, p - 1);
        const float *g1 = a.gate + (size_t)t * D;
        float mx = g0[c] > g1[c] ? g0[c] : g1[c], e0 = expf(g0[c] - mx), e1 = expf(g1[c] - mx);
        float sum = e0 + e1;
        l[c] = __fadd_rn(__fmul_rn(v0[c], e0 / sum), __fmul_rn(v1[c], e1 / sum));
    }
    __syncthreads();
    dsv4_rmsnorm_w_block(l, a.norm, D, a.eps);
    float *e = dsv4_entry(a.cache, a.block_tables, a.max_blocks, a.block_size, s, p / m, 0);
    for (int c = threadIdx.x; c < D; c += blockDim.x) e[c] = l[c];
    __syncthreads();
    for (int j = threadIdx.x; j < a.r / 2; j += blockDim.x)
        dsv4_rope_pair(e + D - a.r + 2 * j, (float)(p - m + 1), a.inv_freq[j], 0);
    __syncthreads();
    for (int c = threadIdx.x * 16; c < D; c += blockDim.x * 16) dsv41_fq_kv_block(e + c);
}

extern "C" int kernels_dsv41_compress(const kernels_dsv4_compress_args *a, void *stream) {
    if (a->n_tokens <= 0) return KERNELS_OK;
    if (a->m < 1 || a->m > 2 || a->D < 16 || a->D % 16 || !a->lat) return KERNELS_ERR_ARG;
    cudaStream_t st = (cudaStream_t)stream;
    low_compress_kernel<<<a->n_tokens, 256, 0, st>>>(*a); // then (ratio 2) the rings
    if (a->m > 1) compress_ring_kernel<<<a->n_tokens, 256, 0, st>>>(*a, a->D);
    return dsv4_status();
}

// One block per token closing a group: the index key of entry p / m = fq4(rope_tail(rmsnorm(k) * k_norm,
// p - m + 1)) (cpu_dsv4.c low_index_key).
__global__ void low_index_key_kernel(const float *k, kernels_dsv4_kv L, const int *pos, const int *tok_seq,
                                     const int *bt, int max_blocks, int bs, int m, int dI, const float *k_norm,
                                     float eps, int r, const float *inv_freq) {
    int t = blockIdx.x, p = pos[t];
    if (p % m != m - 1) return; // the whole block
    float *key = dsv4_entry(L, bt, max_blocks, bs, tok_seq[t], p / m, 1);
    for (int c = threadIdx.x; c < dI; c += blockDim.x) key[c] = k[(size_t)t * dI + c];
    __syncthreads();
    dsv4_rmsnorm_w_block(key, k_norm, dI, eps);
    for (int j = threadIdx.x; j < r / 2; j += blockDim.x)
        dsv4_rope_pair(key + dI - r + 2 * j, (float)(p - m + 1), inv_freq[j], 0);
    __syncthreads();
    for (int c = threadIdx.x * 32; c < dI; c += blockDim.x * 32) dsv41_fq4_block(key + c);
}

extern "C" int kernels_dsv41_index_keys(const float *k, const kernels_dsv4_kv *cache, const int *pos,
                                        const int *tok_seq, const int *block_tables, int max_blocks, int block_size,
                                        int T, int m, int dI, const float *k_norm, float eps, int r,
                                        const float *inv_freq, void *stream) {
    if (T <= 0) return KERNELS_OK;
    if (m < 1 || dI < 32 || dI % 32) return KERNELS_ERR_ARG;
    low_index_key_kernel<<<T, 256, 0, (cudaStream_t)stream>>>(k, *cache, pos, tok_seq, block_tables, max_blocks,
                                                             block_size, m, dI, k_norm, eps, r, inv_freq);
    return dsv4_status();
}

// One thread per block of 32 values (a row's blocks are consecutive: w % 32 == 0).
__global__ void fake_quant_fp4_kernel(float *x, size_t blocks) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < blocks; i += (size_t)gridDim.x * blockDim.x)
        dsv41_fq4_block(x + i * 32);
}

extern "C" int kernels_fake_quant_fp4(float *x, size_t n, int w, void *stream) {
    if (w < 32 || w % 32) return KERNELS_ERR_ARG;
    size_t blocks = n * (size_t)(w / 32), grid = (blocks + 127) / 128;
    if (!blocks) return KERNELS_OK;
    fake_quant_fp4_kernel<<<grid < 4096 ? (unsigned)grid : 4096u, 128, 0, (cudaStream_t)stream>>>(x, blocks);
    return dsv4_status();
}

// ---- Lightning indexer (V4's, and V4.1's with two-level candidates) ----

// Floats of one token's scratch: the scores of its candidate slots (every causal entry, at most n_max, or
// the nb * bs slots of the blocks it selects within), then for the candidate source (whose slots are the
// n_max entries) its block keys (fewer than n_max).
static size_t index_stride(const kernels_dsv4_index_args *a) {
    size_t n_max = (size_t)(a->max_ctx / a->m + 1);
    return (a->among ? (size_t)a->nb * a->bs : n_max) + (a->publish ? n_max : 0);
}

// One block per token (cpu_dsv4.c index_token). The candidates: the n = (p+1)/m causal entries, or with
// among the causal entries of the blocks it names (slot j: entry among[j / bs] bs + j % bs, none for a
// -1 block or past n). Their scores go to work (one thread per candidate, heads and channels in the
// CPU's order, so bit for bit the CPU's); then each candidate's rank by counting: with more than K
// candidates, score descending then index ascending, the first K ranks in rank order; else all of them
// in index order; -1 after. With publish (the candidate source): its blocks as publish_blocks picks
// them, the newest first, then the others by their largest score descending, id ascending.
__global__ void index_kernel(kernels_dsv4_index_args a, size_t stride) {
    int t = blockIdx.x, s = a.tok_seq[t], n = (a.pos[t] + 1) / a.m, K = a.K, nI = a.nI, dI = a.dI, bs = a.bs;
    int *out = a.sel + (size_t)t * K, *pub = a.publish ? a.publish + (size_t)t * a.nb : NULL;
    const int *blk = a.among ? a.among + (size_t)t * a.nb : NULL;
    float *sc = a.work + (size_t)t * stride;
    float qs = 1.0f / sqrtf((float)dI), ws = 1.0f / sqrtf((float)nI);
    const float *qt = a.q + (size_t)t * nI * dI, *wt = a.wts + (size_t)t * nI;
    int slots = blk ? a.nb * bs : n, c = 0; // candidate slots, candidates
    auto entry = [&](int j) -> int {       // the entry of slot j, or -1
        if (!blk) return j;
        int w = blk[j / bs] * bs + j % bs;
        return blk[j / bs] >= 0 && w < n ? w : -1;
    };
    for (int j = 0; j < slots; j++) c += entry(j) >= 0;
    for (int i = threadIdx.x; i < K; i += blockDim.x) out[i] = -1;
    for (int i = threadIdx.x; pub && i < a.nb; i += blockDim.x) pub[i] = -1;
    for (int j = threadIdx.x; j < slots; j += blockDim.x) {
        int w = entry(j);
        if (w < 0) continue;
        const float *key = dsv4_entry(a.cache, a.block_tables, a.max_blocks, a.block_size, s, w, 1);
        float total = 0.0f;
        for (int h = 0; h < nI; h++) {
            float dot = 0.0f;
            for (int i = 0; i < dI; i++) dot = __fadd_rn(dot, __fmul_rn(qt[(size_t)h * dI + i], key[i]));
            total = __fadd_rn(total, __fmul_rn(__fmul_rn(dot > 0.0f ? dot : 0.0f, qs), __fmul_rn(wt[h], ws)));
        }
        sc[j] = total;
    }
    __syncthreads();
    if (pub && n > 0) { // no among here: slot w is entry w
        int nblk = (n + bs - 1) / bs, full = nblk - 1; // only the newest block may be partial
        float *key = sc + (a.max_ctx / a.m + 1);
        for (int b = threadIdx.x; b < full; b += blockDim.x) {
            float mx = sc[b * bs];
            for (int w = b * bs + 1; w < (b + 1) * bs; w++) mx = sc[w] > mx ? sc[w] : mx;
            key[b] = mx;
        }
        __syncthreads();
        if (threadIdx.x == 0) pub[0] = nblk - 1;
        for (int b = threadIdx.x; b < full; b += blockDim.x) {
            int rank = b; // all of them fit: in id order (the CPU sorts only when some are left out)
            if (full > a.nb - 1) {
                rank = 0;
                for (int u = 0; u < full; u++) rank += key[u] > key[b] || (key[u] == key[b] && u < b);
            }
            if (rank < a.nb - 1) pub[1 + rank] = b;
        }
    }
    for (int j = threadIdx.x; j < slots; j += blockDim.x) {
        int w = entry(j), rank = 0;
        if (w < 0) continue;
        float v = sc[j];
        for (int u = 0; u < slots; u++) {
            int wu = entry(u);
            rank += wu >= 0 && (c <= K ? wu < w : sc[u] > v || (sc[u] == v && wu < w));
        }
        if (rank < K) out[rank] = w;
    }
}

extern "C" size_t kernels_dsv4_index_work_floats(const kernels_dsv4_index_args *a) {
    return (size_t)(a->n_tokens > 0 ? a->n_tokens : 0) * index_stride(a);
}

extern "C" int kernels_dsv4_index(const kernels_dsv4_index_args *a, void *stream) {
    if (a->n_tokens <= 0) return KERNELS_OK;
    if (a->m < 1 || a->K < 1 || ((a->publish || a->among) && (a->nb < 1 || a->bs < 1)) || (a->publish && a->among))
        return KERNELS_ERR_ARG;
    index_kernel<<<a->n_tokens, 256, 0, (cudaStream_t)stream>>>(*a, index_stride(a));
    return dsv4_status();
}

// ---- attention over the window and the compressed entries, with sinks ----

// The step's kv rows into their positions' blocks (before any token reads them).
__global__ void dsv4_store_kernel(kernels_dsv4_kv L, const float *kv, const int *pos, const int *tok_seq,
                                  const int *bt, int max_blocks, int bs) {
    int t = blockIdx.x;
    float *row = dsv4_kv_row(L, bt, max_blocks, bs, tok_seq[t], pos[t]);
    for (int c = threadIdx.x; c < L.D; c += blockDim.x) row[c] = kv[(size_t)t * L.D + c];
}

// Token t's rows: the window's positions lo..p (nw of them), then its compressed entries (the K
// selected, or every w < (p+1)/m); n in all.
struct dsv4_att_rows {
    int s, lo, nw, n;
};
__device__ __forceinline__ dsv4_att_rows dsv4_att_rows_of(const kernels_dsv4_attention_args &a, int t) {
    int s = a.tok_seq[t], p = a.pos[t], lo = p - a.W + 1 > 0 ? p - a.W + 1 : 0, nw = p - lo + 1;
    int nc = !a.m ? 0 : a.sel ? a.K : (p + 1) / a.m;
    return {s, lo, nw, nw + nc};
}
// Row i of token t: the window's position lo + i, then compressed entry i - nw (NULL: an unselected -1).
__device__ __forceinline__ const float *dsv4_att_row(const kernels_dsv4_attention_args &a, int t,
                                                     const dsv4_att_rows &rw, int i) {
    if (i < rw.nw) return dsv4_kv_row(a.cache, a.block_tables, a.max_blocks, a.block_size, rw.s, rw.lo + i);
    int j = i - rw.nw, w = a.sel ? a.sel[(size_t)t * a.K + j] : j;
    return w >= 0 ? dsv4_entry(a.cache, a.block_tables, a.max_blocks, a.block_size, rw.s, w, 0) : NULL;
}

// The first kernel, kept for A/B timings (ENGRAM_DSV4_ATTENTION=ref) and for layouts the fast one does
// not take. One block per (token, head): the rows' logits (one thread per row, channels in order) into
// shared memory, the softmax with the sink, then each output channel summed over the rows in order.
__global__ void dsv4_attention_kernel(kernels_dsv4_attention_args a) {
    extern __shared__ float l[];
    __shared__ float red[256];
    int t = blockIdx.x, h = blockIdx.y, D = a.D;
    dsv4_att_rows rw = dsv4_att_rows_of(a, t);
    int n = rw.n;
    const float *qh = a.q + ((size_t)t * a.nh + h) * D;
    float scale = 1.0f / sqrtf((float)D);
    float mx = a.sinks[h];
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const float *r = dsv4_att_row(a, t, rw, i);
        float v = -INFINITY;
        if (r) {
            float dot = 0.0f;
            for (int c = 0; c < D; c++) dot = __fadd_rn(dot, __fmul_rn(qh[c], r[c]));
            v = __fmul_rn(dot, scale);
        }
        l[i] = v;
        mx = fmaxf(mx, v);
    }
    red[threadIdx.x] = mx;
    __syncthreads();
    for (int o = blockDim.x / 2; o > 0; o >>= 1) {
        if (threadIdx.x < o) red[threadIdx.x] = fmaxf(red[threadIdx.x], red[threadIdx.x + o]);
        __syncthreads();
    }
    mx = red[0];
    __syncthreads();
    float sum = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) sum += l[i] = l[i] == -INFINITY ? 0.0f : expf(l[i] - mx);
    red[threadIdx.x] = sum;
    __syncthreads();
    for (int o = blockDim.x / 2; o > 0; o >>= 1) {
        if (threadIdx.x < o) red[threadIdx.x] += red[threadIdx.x + o];
        __syncthreads();
    }
    sum = red[0] + expf(a.sinks[h] - mx);
    float *o = a.out + ((size_t)t * a.nh + h) * D;
    for (int c = threadIdx.x; c < D; c += blockDim.x) {
        float acc = 0.0f;
        for (int i = 0; i < n; i++) {
            if (l[i] == 0.0f) continue; // an unselected (-1) entry, or a weight that underflowed: adds nothing
            acc = __fadd_rn(acc, __fmul_rn(l[i] / sum, dsv4_att_row(a, t, rw, i)[c]));
        }
        o[c] = acc;
    }
}

static size_t dsv4_attention_ref_smem(const kernels_dsv4_attention_args *a) {
    return ((size_t)a->W + (a->m ? (size_t)(a->sel ? a->K : a->max_ctx / a->m + 1) : 0)) * sizeof(float);
}

// ---- the attention at the GPU's speed: a block per (token, group of HG heads, split of the rows) ----
// Every head reads the same rows (one KV head), so a block stages each chunk of DSA_R rows in shared
// memory once for its HG heads (16-byte cp.async, the next chunk in flight while this one is used).
// Per chunk: the scores, a thread a tile of 4 heads x 2 rows over one of DS slices of the channels
// (the slices summed in a fixed order); the online softmax, a warp per head, whose running max starts
// at the head's sink, so a -inf score weighs exp(-inf) = 0 and nothing computes -inf - -inf; then P V,
// a thread 4 channels of HG/2 heads in registers. An unselected entry (-1) or a row past the end is a
// zero row of weight 0 (the CPU leaves it out: the same sum). The sink is counted once: split 0's l
// starts at exp(sink - sink), the others' at 0; the merge weighs split z by exp(m_z - max m). NaN is
// never hidden: every weight multiplies its row (no zero weight skipped) and a NaN score makes its
// head's l NaN. All f32: against the CPU only the order of the sums differs.

#define DSA_THREADS 256
#define DSA_R 16 // rows a chunk
#define DSA_MAX_D 512
#define DSA_MAX_SPLITS 64

template <int HG>
struct dsa_tiles {
    static constexpr int TILES = HG / 4 * (DSA_R / 2); // score tiles of 4 heads x 2 rows
    static constexpr int DS = DSA_THREADS / TILES;      // channel slices of a score
    static constexpr int PH = HG / 2;                   // heads of a thread's P V accumulators
    static constexpr int HW = HG / 8;                   // heads of a warp's softmax: warp + 8 j
};

// Floats of shared memory at row width D (rows padded to LD = D + 4: 16-byte aligned, and the 8 rows a
// warp's score tiles read at one column fall in distinct banks): q (HG, LD), two chunks (2, R, LD), the
// partial scores (DS, HG, R), the weights (R, HG), each head's rescale (HG) and final l (HG).
template <int HG>
static size_t dsa_smem_floats(int D) {
    size_t LD = (size_t)D + 4;
    return HG * LD + 2 * DSA_R * LD + (size_t)dsa_tiles<HG>::DS * HG * DSA_R + DSA_R * HG + 2 * HG;
}

template <int HG>
__global__ void __launch_bounds__(DSA_THREADS, 2) dsv4_attend_kernel(kernels_dsv4_attention_args a, int rows_split,
                                                                      int n_split) {
    typedef dsa_tiles<HG> TL;
    constexpr int R = DSA_R, DS = TL::DS, PH = TL::PH, HW = TL::HW;
    extern __shared__ __align__(16) float sm[];
    __shared__ const float *ptr[2][R]; // each buffer's rows (NULL: a zero row of weight 0)
    const int D = a.D, LD = D + 4, D4 = D / 4, tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int t = blockIdx.x, h0 = blockIdx.y * HG, z = blockIdx.z, nh = a.nh;
    float *qs = sm, *rs = qs + HG * LD, *sp = rs + 2 * R * LD, *pw = sp + DS * HG * R, *al = pw + R * HG;
    float *lf = al + HG;
    const dsv4_att_rows rw = dsv4_att_rows_of(a, t);
    const int r0 = z * rows_split, r1 = min(rw.n, r0 + rows_split), chunks = r1 > r0 ? (r1 - r0 + R - 1) / R : 0;
    const float *qt = a.q + (size_t)t * nh * D;
    for (int i = tid; i < HG * D4; i += DSA_THREADS) { // the group's queries (zeros past nh): their own group
        int h = i / D4, c4 = i % D4, ok = h0 + h < nh;
        tc_cp16(qs + h * LD + 4 * c4, qt + (size_t)(ok ? h0 + h : 0) * D + 4 * c4, ok);
    }
    tc_cp_commit();
    auto stage = [&](int k) { // chunk k's rows into buffer k & 1, one group of copies
        const float **pk = ptr[k & 1];
        if (tid < R) {
            int i = r0 + k * R + tid;
            pk[tid] = i < r1 ? dsv4_att_row(a, t, rw, i) : NULL;
        }
        __syncthreads();
        float *buf = rs + (k & 1) * R * LD;
        for (int i = tid; i < R * D4; i += DSA_THREADS) {
            int r = i / D4, c4 = i % D4;
            const float *src = pk[r];
            tc_cp16(buf + r * LD + 4 * c4, src ? src + 4 * c4 : qt, src != NULL);
        }
        tc_cp_commit();
    };
    float mrun[HW], lrun[HW]; // the softmax of heads warp + 8 j, the same in every lane
#pragma unroll
    for (int j = 0; j < HW; j++) {
        int h = h0 + warp + 8 * j;
        float sink = h < nh ? a.sinks[h] : 0.0f;
        mrun[j] = sink;
        lrun[j] = z == 0 && sink != -INFINITY ? expf(sink - sink) : 0.0f; // 1 (NaN for a NaN or +inf sink)
    }
    const int tile = tid % TL::TILES, ds = tid / TL::TILES, hq = tile / (R / 2), rp = tile % (R / 2);
    const int ph = tid / (DSA_THREADS / 2), c4p = tid % (DSA_THREADS / 2); // P V: heads ph PH.., channels 4 c4p..
    float acc[PH][4];
#pragma unroll
    for (int j = 0; j < PH; j++) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
    const float scale = 1.0f / sqrtf((float)D);
    if (chunks) stage(0);
    for (int k = 0; k < chunks; k++) {
        if (k + 1 < chunks) {
            stage(k + 1);
            tc_cp_wait<1>();
        } else
            tc_cp_wait<0>();
        __syncthreads();
        const float *rb = rs + (k & 1) * R * LD;
        { // partial scores: heads 4 hq.., rows rp and rp + R/2, channels 4 (ds + DS i)..
            float s0[4] = {0.0f, 0.0f, 0.0f, 0.0f}, s1[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            const float *x0 = rb + rp * LD, *x1 = rb + (rp + R / 2) * LD;
            for (int c4 = ds; c4 < D4; c4 += DS) {
                float4 u = *(const float4 *)(x0 + 4 * c4), v = *(const float4 *)(x1 + 4 * c4);
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    float4 qv = *(const float4 *)(qs + (hq * 4 + j) * LD + 4 * c4);
                    s0[j] = fmaf(qv.x, u.x, fmaf(qv.y, u.y, fmaf(qv.z, u.z, fmaf(qv.w, u.w, s0[j]))));
                    s1[j] = fmaf(qv.x, v.x, fmaf(qv.y, v.y, fmaf(qv.z, v.z, fmaf(qv.w, v.w, s1[j]))));
                }
            }
#pragma unroll
            for (int j = 0; j < 4; j++) {
                sp[(ds * HG + hq * 4 + j) * R + rp] = s0[j];
                sp[(ds * HG + hq * 4 + j) * R + rp + R / 2] = s1[j];
            }
        }
        __syncthreads();
        const float *const *pk = ptr[k & 1];
#pragma unroll
        for (int j = 0; j < HW; j++) { // the online softmax of head warp + 8 j, lane r for row r
            int h = warp + 8 * j;
            float sc = -INFINITY;
            bool row = lane < R && pk[lane];
            if (row) {
                float d = 0.0f;
#pragma unroll
                for (int i = 0; i < DS; i++) d += sp[(i * HG + h) * R + lane];
                sc = d * scale;
            }
            float cm = sc;
            for (int o = 16; o > 0; o >>= 1) cm = fmaxf(cm, __shfl_xor_sync(0xffffffffu, cm, o));
            // (a -inf sink, the one way to a -inf max: no row weighs exp(-inf - -inf))
            float mn = fmaxf(mrun[j], cm), pr = row ? expf(sc - mn) : 0.0f, ps = pr;
            for (int o = 16; o > 0; o >>= 1) ps += __shfl_xor_sync(0xffffffffu, ps, o);
            float alpha = mrun[j] == mn ? 1.0f : expf(mrun[j] - mn);
            lrun[j] = lrun[j] * alpha + ps;
            mrun[j] = mn;
            if (lane < R) pw[lane * HG + h] = pr;
            if (lane == 0) al[h] = alpha;
        }
        __syncthreads();
        if (c4p < D4) { // P V
#pragma unroll
            for (int j = 0; j < PH; j++) {
                float f = al[ph * PH + j];
                acc[j][0] *= f, acc[j][1] *= f, acc[j][2] *= f, acc[j][3] *= f;
            }
            for (int r = 0; r < R; r++) {
                float4 v = *(const float4 *)(rb + r * LD + 4 * c4p);
                float w[PH];
#pragma unroll
                for (int j = 0; j < PH; j += 4) *(float4 *)(w + j) = *(const float4 *)(pw + r * HG + ph * PH + j);
#pragma unroll
                for (int j = 0; j < PH; j++) {
                    float p = w[j];
                    acc[j][0] = fmaf(p, v.x, acc[j][0]), acc[j][1] = fmaf(p, v.y, acc[j][1]);
                    acc[j][2] = fmaf(p, v.z, acc[j][2]), acc[j][3] = fmaf(p, v.w, acc[j][3]);
                }
            }
        }
        __syncthreads(); // the buffer and the weights are free again
    }
    tc_cp_wait<0>(); // (no chunk: the queries' copies)
    if (lane == 0)
#pragma unroll
        for (int j = 0; j < HW; j++) al[warp + 8 * j] = mrun[j], lf[warp + 8 * j] = lrun[j];
    __syncthreads();
    float *wacc = a.work, *wml = a.work + (size_t)a.n_tokens * n_split * nh * D;
    if (c4p < D4)
#pragma unroll
        for (int j = 0; j < PH; j++) {
            int h = h0 + ph * PH + j;
            if (h >= nh) break;
            float l = n_split == 1 ? lf[ph * PH + j] : 1.0f; // a split's partials unscaled
            float4 o = make_float4(acc[j][0] / l, acc[j][1] / l, acc[j][2] / l, acc[j][3] / l);
            float *dst = n_split == 1 ? a.out + ((size_t)t * nh + h) * D : wacc + (((size_t)t * n_split + z) * nh + h) * D;
            *(float4 *)(dst + 4 * c4p) = o;
        }
    if (n_split > 1 && tid < HG && h0 + tid < nh) {
        float *ml = wml + (((size_t)t * n_split + z) * nh + h0 + tid) * 2;
        ml[0] = al[tid], ml[1] = lf[tid];
    }
}

// One block per (token, head): out = sum_z acc_z exp(m_z - M) / sum_z l_z exp(m_z - M), splits in order.
__global__ void dsv4_attend_merge_kernel(kernels_dsv4_attention_args a, int n_split) {
    __shared__ float f[DSA_MAX_SPLITS], L;
    int t = blockIdx.x, h = blockIdx.y, D = a.D, nh = a.nh;
    const float *wacc = a.work, *wml = a.work + (size_t)a.n_tokens * n_split * nh * D;
    if (threadIdx.x == 0) {
        float M = -INFINITY, sum = 0.0f;
        for (int z = 0; z < n_split; z++) M = fmaxf(M, wml[(((size_t)t * n_split + z) * nh + h) * 2]);
        for (int z = 0; z < n_split; z++) {
            const float *ml = wml + (((size_t)t * n_split + z) * nh + h) * 2;
            f[z] = ml[0] == M ? 1.0f : expf(ml[0] - M);
            sum += ml[1] * f[z];
        }
        L = sum;
    }
    __syncthreads();
    for (int c = threadIdx.x; c < D; c += blockDim.x) {
        float o = 0.0f;
        for (int z = 0; z < n_split; z++) o += wacc[(((size_t)t * n_split + z) * nh + h) * D + c] * f[z];
        a.out[((size_t)t * nh + h) * D + c] = o / L;
    }
}

// How a call runs: the first kernel (ref), or the fast one with HG heads a block and its rows in
// n_split splits of rows_split. From n_tokens, max_ctx and the shapes only (a recorded step's key).
typedef struct {
    int ref, hg, n_split, rows_split;
} dsa_plan;

static int dsa_sms(void) {
    static int n;
    if (!n) {
        int dev = 0, v = 0;
        cudaGetDevice(&dev);
        n = cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev) == cudaSuccess && v > 0 ? v : 132;
    }
    return n;
}

static dsa_plan dsa_plan_of(const kernels_dsv4_attention_args *a) {
    static int env_ref = -1; // benchmarks: ENGRAM_DSV4_ATTENTION=ref, the first kernel for every call
    if (env_ref < 0) {
        const char *v = getenv("ENGRAM_DSV4_ATTENTION");
        env_ref = v && !strcmp(v, "ref");
    }
    const kernels_dsv4_kv &L = a->cache;
    int fits = a->D % 4 == 0 && a->D <= DSA_MAX_D && L.D == a->D && L.block_floats % 4 == 0 &&
               L.eblock_floats % 4 == 0 && !((uintptr_t)L.base & 15) && !((uintptr_t)L.ebase & 15) &&
               !((uintptr_t)a->q & 15) && !((uintptr_t)a->out & 15);
    if (a->ref || env_ref || !fits) return {1, 0, 1, 0};
    // the most rows a token has (the first kernel's bound); blocks for every SM, twice over where the
    // tokens and head groups alone are fewer (batch 1: 8 groups of 8 heads), by splitting the rows
    int n_max = a->W + (a->m ? (a->sel ? a->K : a->max_ctx / a->m + 1) : 0), chunks = (n_max + DSA_R - 1) / DSA_R;
    int sms = dsa_sms(), hg = a->nh <= 8 || (long long)a->n_tokens * ((a->nh + 15) / 16) < sms ? 8 : 16;
    long long blocks = (long long)a->n_tokens * ((a->nh + hg - 1) / hg);
    int ns = blocks >= sms ? 1 : (int)((2LL * sms + blocks - 1) / blocks);
    ns = ns < chunks ? ns : chunks;
    ns = ns < DSA_MAX_SPLITS ? ns : DSA_MAX_SPLITS;
    ns = ns > 1 ? ns : 1;
    int per = (chunks + ns - 1) / ns; // chunks a split
    return {0, hg, (chunks + per - 1) / per, per * DSA_R};
}

extern "C" size_t kernels_dsv4_attention_work_floats(const kernels_dsv4_attention_args *a) {
    if (a->n_tokens <= 0) return 0;
    dsa_plan pl = dsa_plan_of(a);
    return pl.ref || pl.n_split == 1 ? 0 : (size_t)a->n_tokens * pl.n_split * a->nh * ((size_t)a->D + 2);
}

// The kernel's shared memory limit raised to its largest size (kernels/smem.cuh).
template <int HG>
static int dsa_configure(void) {
    static unsigned done;
    return smem_raise_once(dsv4_attend_kernel<HG>, dsa_smem_floats<HG>(DSA_MAX_D) * sizeof(float), &done);
}

template <int HG>
static int dsa_launch(const kernels_dsv4_attention_args *a, const dsa_plan &pl, cudaStream_t st) {
    if (dsa_configure<HG>()) return KERNELS_ERR_LAUNCH;
    size_t smem = dsa_smem_floats<HG>(a->D) * sizeof(float);
    dim3 grid(a->n_tokens, (a->nh + HG - 1) / HG, pl.n_split);
    dsv4_attend_kernel<HG><<<grid, DSA_THREADS, smem, st>>>(*a, pl.rows_split, pl.n_split);
    if (pl.n_split > 1) dsv4_attend_merge_kernel<<<dim3(a->n_tokens, a->nh), 128, 0, st>>>(*a, pl.n_split);
    return dsv4_status();
}

extern "C" int kernels_dsv4_attention(const kernels_dsv4_attention_args *a, void *stream) {
    if (a->n_tokens <= 0) return KERNELS_OK;
    if (a->nh < 1 || a->nh > 65535 || a->D < 1) return KERNELS_ERR_ARG;
    cudaStream_t st = (cudaStream_t)stream;
    dsa_plan pl = dsa_plan_of(a);
    if (!pl.ref && pl.n_split > 1 && !a->work) return KERNELS_ERR_ARG;
    dsv4_store_kernel<<<a->n_tokens, 256, 0, st>>>(a->cache, a->kv, a->pos, a->tok_seq, a->block_tables,
                                                   a->max_blocks, a->block_size);
    if (!pl.ref) return pl.hg == 8 ? dsa_launch<8>(a, pl, st) : dsa_launch<16>(a, pl, st);
    size_t smem = dsv4_attention_ref_smem(a);
    if (smem > 48 * 1024) {
        if (smem > 227 * 1024) return KERNELS_ERR_ARG;
        static unsigned raised; /* to the most a block may have, once per device: every size fits */
        if (smem_raise_once(dsv4_attention_kernel, 227 * 1024, &raised)) return KERNELS_ERR_LAUNCH;
    }
    dsv4_attention_kernel<<<dim3(a->n_tokens, a->nh), 256, smem, st>>>(*a);
    return dsv4_status();
}

// ---- clamped SwiGLU, V4.1's Engram gate ----

__global__ void swiglu_limit_kernel(float *gate, const float *up, size_t n, float limit) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float g = gate[i] > limit ? limit : gate[i];
        float u = up[i] > limit ? limit : up[i] < -limit ? -limit : up[i];
        gate[i] = __fmul_rn(g / (1.0f + expf(-g)), u);
    }
}

extern "C" int kernels_swiglu_limit(float *gate, const float *up, size_t n, float limit, void *stream) {
    if (!n) return KERNELS_OK;
    size_t blocks = (n + 255) / 256;
    swiglu_limit_kernel<<<blocks < 4096 ? (unsigned)blocks : 4096u, 256, 0, (cudaStream_t)stream>>>(gate, up, n,
                                                                                                      limit);
    return dsv4_status();
}

// One block per (token, stream): sums of squares and the dot in double, the
// gate, then x += gate * value.
__global__ void engram_v41_gate_kernel(float *X, const float *kv, const float *w, int N, int d, float eps,
                                       float clamp, float *gates) {
    int t = blockIdx.x, g = blockIdx.y;
    __shared__ double sx[256], sk[256], sd[256];
    __shared__ float s_gate;
    const float *kvt = kv + (size_t)t * (N + 1) * d, *value = kvt + (size_t)N * d;
    float *x = X + ((size_t)t * N + g) * d;
    const float *key = kvt + (size_t)g * d, *wg = w + (size_t)g * d;
    double a = 0.0, b = 0.0, c = 0.0;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        a += (double)x[i] * x[i];
        b += (double)key[i] * key[i];
        c += (double)__fmul_rn(__fmul_rn(x[i], wg[i]), key[i]);
    }
    sx[threadIdx.x] = a, sk[threadIdx.x] = b, sd[threadIdx.x] = c;
    __syncthreads();
    for (int o = blockDim.x / 2; o > 0; o >>= 1) {
        if (threadIdx.x < o) {
            sx[threadIdx.x] += sx[threadIdx.x + o];
            sk[threadIdx.x] += sk[threadIdx.x + o];
            sd[threadIdx.x] += sd[threadIdx.x + o];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        float rstd = 1.0f / sqrtf((float)(sx[0] / d) + eps) * (1.0f / sqrtf((float)(sk[0] / d) + eps));
        float s = (float)sd[0] * rstd * (float)(1.0 / sqrt((double)d));
        float mag = fabsf(s) > clamp ? fabsf(s) : clamp;
        s_gate = dsv4_sigmoid(copysignf(sqrtf(mag), s));
        if (gates) gates[(size_t)t * N + g] = s_gate;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < d; i += blockDim.x) x[i] = __fadd_rn(x[i], __fmul_rn(s_gate, value[i]));
}

extern "C" int kernels_engram_v41_gate(float *X, const float *kv, const float *w, int T, int N, int d, float eps,
                                       float clamp, float *gates, void *stream) {
    if (T <= 0) return KERNELS_OK;
    if (N < 1 || N > 65535) return KERNELS_ERR_ARG;
    engram_v41_gate_kernel<<<dim3(T, N), 256, 0, (cudaStream_t)stream>>>(X, kv, w, N, d, eps, clamp, gates);
    return dsv4_status();
}

// ---- weightless norm ----

// One block a row. The sum of squares in double (as the CPU's), from
// float4 loads where the row allows: a hyper-connection norm's row is
// N d = 16,384 floats, and at T = 1 one block of 256 threads reading one
// float at a time took 22 us.
template <int BLOCK>
__device__ __forceinline__ void dsv4_rmsnorm_plain_row(float *out, const float *xt, int d, float eps) {
    __shared__ double part[BLOCK];
    double ss = 0.0;
    if ((d & 3) == 0 && ((uintptr_t)xt & 15) == 0) {
        const float4 *x4 = (const float4 *)xt;
        for (int i = threadIdx.x; i < d / 4; i += BLOCK) {
            float4 v = x4[i];
            ss += (double)v.x * v.x;
            ss += (double)v.y * v.y;
            ss += (double)v.z * v.z;
            ss += (double)v.w * v.w;
        }
    } else
        for (int i = threadIdx.x; i < d; i += BLOCK) ss += (double)xt[i] * xt[i];
    part[threadIdx.x] = ss;
    __syncthreads();
    for (int o = BLOCK / 2; o > 0; o >>= 1) {
        if (threadIdx.x < o) part[threadIdx.x] += part[threadIdx.x + o];
        __syncthreads();
    }
    float sc = 1.0f / sqrtf((float)(part[0] / d) + eps);
    for (int i = threadIdx.x; i < d; i += BLOCK) out[i] = __fmul_rn(xt[i], sc);
}

template <int BLOCK>
__global__ void rmsnorm_plain_kernel(float *out, const float *x, int d, float eps) {
    size_t t = blockIdx.x;
    dsv4_rmsnorm_plain_row<BLOCK>(out + t * d, x + t * d, d, eps);
}

extern "C" int kernels_rmsnorm_plain(float *out, const float *x, int T, int d, float eps, void *stream) {
    if (T <= 0) return KERNELS_OK;
    if (d >= 8192) /* few long rows: more threads a row */
        rmsnorm_plain_kernel<1024><<<T, 1024, 0, (cudaStream_t)stream>>>(out, x, d, eps);
    else
        rmsnorm_plain_kernel<256><<<T, 256, 0, (cudaStream_t)stream>>>(out, x, d, eps);
    return dsv4_status();
}

// ---- fused ----

// The queries and the key-value head before the attention, one launch for what were four (the
// fused op dsv4_qk_norm_rope): block (h, t) takes q's head h of token t (its rmsnorm_plain when
// q_norm), block (n_heads, t) kv's row t (its rmsnorm by kv_norm), then each rotates its row's tail.
// Every step is the standalone kernels' own code on the threads they give such a row
// (rmsnorm_plain_kernel<256>, norm.cu's kernel on rmsnorm_threads(hd), rope_tail_kernel's pairs).
__global__ void __launch_bounds__(256)
qk_norm_rope_kernel(float *q, float *kv, const float *kv_norm, const int *pos, int n_heads, int hd, int r,
                    const float *inv_freq, int q_norm, int kv_threads, float eps) {
    int h = blockIdx.x, t = blockIdx.y;
    float *x = h < n_heads ? q + ((size_t)t * n_heads + h) * hd : kv + (size_t)t * hd;
    if (h == n_heads) rmsnorm_row(x, x, kv_norm, hd, eps, kv_threads);
    else if (q_norm) dsv4_rmsnorm_plain_row<256>(x, x, hd, eps);
    __syncthreads(); // the normed row, written by the block's threads, before its pairs are read
    for (int j = threadIdx.x; j < r / 2; j += blockDim.x)
        dsv4_rope_pair(x + hd - r + 2 * j, (float)pos[t], inv_freq[j], 0);
}

extern "C" int kernels_dsv4_qk_norm_rope(float *q, float *kv, const float *kv_norm, const int *pos, int T,
                                         int n_heads, int hd, int r, const float *inv_freq, int q_norm, float eps,
                                         void *stream) {
    if (T <= 0) return KERNELS_OK;
    int kv_threads = rmsnorm_threads(hd);
    if (n_heads < 1 || T > 65535 || kv_threads > 256 || r > hd || r % 2) return KERNELS_ERR_ARG;
    qk_norm_rope_kernel<<<dim3(n_heads + 1, T), 256, 0, (cudaStream_t)stream>>>(q, kv, kv_norm, pos, n_heads, hd, r,
                                                                              inv_freq, q_norm, kv_threads, eps);
    return dsv4_status();
}
