// Mixture-of-experts on the GPU: the router, the plan that groups a step's
// (token, expert) pairs by expert, the grouped expert products, and the
// combine. Same numbers as the CPU reference (backend_cpu.c, cpu_moe_route and
// cpu_moe_experts) up to the order of f32 sums in the products.
//
// Why these pieces: the experts a token uses are only known on the device
// after routing, and a host round trip per layer would stall the stream and
// break recorded steps (CUDA graphs). So the grouping happens on the device
// too: a counting pass gives each expert its rows of a packed activation
// matrix and its tiles, and one launch of the grouped product covers every
// expert, each tile finding its expert by a binary search over the tile
// prefix sums. A decode step (a few pairs) skips the plan: a warp per few weight
// rows and a pair reads each routed expert's weights once, activations in f32,
// and the down product sums a token's pairs itself (no combine).
//
// The experts' weights are f32, bf16, or FP4 as DeepSeek-V4 stores its routed
// experts (e2m1 codes and a ue8m0 scale per 32 values): every product reads
// a weight through one of the row types below, FP4 dequantized where it is
// loaded (into shared memory for the tensor cores, into registers for the
// others) to exactly the bf16 values of its expansion, in the same order, so
// an FP4 product is bit for bit the product on the bf16-expanded weights
// while reading a quarter of their bytes.
#include "kernels/kernels.h"
#include "kernels/fp8.cuh"
#include "kernels/tc.cuh"

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mma.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static int moe_launch_status(void) { return cudaGetLastError() == cudaSuccess ? KERNELS_OK : KERNELS_ERR_LAUNCH; }

// ---- router ----

// (value, id) pairs: the larger value wins, the lower id among equals.
__device__ __forceinline__ bool moe_better(float v, int i, float bv, int bi) {
    return bi < 0 || v > bv || (v == bv && i < bi);
}

// One warp per token; s (E) of the block's shared memory per warp holds the
// scores. Mirrors cpu_moe_route: softmax (then top-k of p, renormalised by
// their sum taken largest first), or DeepSeek-V4's sqrt(softplus) with a
// selection bias or a token's hashed experts; chosen experts sorted by id.
__global__ void moe_route_kernel(int *ids, float *wts, const float *logits, const int *tokens, kernels_moe_router r,
                                 int T) {
    extern __shared__ float sm[];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int t = blockIdx.x * (blockDim.x >> 5) + warp;
    if (t >= T) return;
    int E = r.n_experts, k = r.top_k;
    float *s = sm + (size_t)warp * 2 * E, *sel = s + E; // scores, selection keys
    const float *l = logits + (size_t)t * E;
    if (r.scoring == KERNELS_MOE_SOFTMAX) {
        float mx = -INFINITY;
        for (int e = lane; e < E; e += 32) mx = fmaxf(mx, l[e]);
        for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
        float sum = 0.0f;
        for (int e = lane; e < E; e += 32) sum += s[e] = expf(l[e] - mx);
        for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
        for (int e = lane; e < E; e += 32) sel[e] = s[e] = s[e] / sum;
    } else {
        for (int e = lane; e < E; e += 32) {
            float v = l[e];
            s[e] = sqrtf(v > 20.0f ? v : log1pf(expf(v)));
            sel[e] = r.scoring == KERNELS_MOE_SQRTSOFTPLUS ? s[e] + r.bias[e] : s[e];
        }
    }
    __syncwarp();
    // Lane i < k keeps choice i (id, weight) in registers: the sum, the
    // scaling and the sort by id below never touch global memory, which a
    // single lane's serial loop over ids/wts did (about 8 us a layer).
    int my_id = -1;
    if (r.scoring == KERNELS_MOE_HASH) {
        if (lane < k) my_id = r.tid2eid[(size_t)tokens[t] * k + lane];
    } else {
        unsigned taken = 0; // bit q: this lane's expert lane + 32 q is chosen (E <= 1024)
        for (int i = 0; i < k; i++) { // k rounds of a warp argmax, as the CPU's selection (NaN never wins over a number)
            float bv = 0.0f;
            int bi = -1;
            for (int e = lane; e < E; e += 32)
                if (!(taken >> (e >> 5) & 1) && moe_better(sel[e], e, bv, bi)) bv = sel[e], bi = e;
            for (int o = 16; o > 0; o >>= 1) {
                float ov = __shfl_xor_sync(0xffffffffu, bv, o);
                int oi = __shfl_xor_sync(0xffffffffu, bi, o);
                if (oi >= 0 && moe_better(ov, oi, bv, bi)) bv = ov, bi = oi;
            }
            if (lane == i) my_id = bi; // bi is the same on every lane after the butterfly
            if (lane == (bi & 31)) taken |= 1u << (bi >> 5);
        }
    }
    float my_w = lane < k ? s[my_id] : 0.0f;
    float sum = 0.0f; // in selection order, as the CPU adds them (every lane the same sum)
    for (int i = 0; i < k; i++) sum += __shfl_sync(0xffffffffu, my_w, i);
    if (r.scoring == KERNELS_MOE_SOFTMAX) {
        if (r.norm_topk) my_w /= sum;
    } else {
        my_w = my_w / (sum + 1e-20f) * r.routed_scaling;
    }
    // Ascending id, equal ids in selection order (the CPU's stable insertion
    // sort): the order the experts' results are added in.
    int rank = 0;
    for (int i = 0; i < k; i++) {
        int oi = __shfl_sync(0xffffffffu, my_id, i);
        rank += oi < my_id || (oi == my_id && i < lane);
    }
    if (lane < k) ids[(size_t)t * k + rank] = my_id, wts[(size_t)t * k + rank] = my_w;
}

extern "C" int kernels_moe_route(int *ids, float *wts, const float *logits, const int *tokens,
                                 const kernels_moe_router *r, int T, void *stream) {
    if (T <= 0) return KERNELS_OK;
    if (!r || r->n_experts < 1 || r->n_experts > 1024 || r->top_k < 1 || r->top_k > r->n_experts || r->top_k > 32)
        return KERNELS_ERR_ARG;
    if ((r->scoring == KERNELS_MOE_SQRTSOFTPLUS && !r->bias) || (r->scoring == KERNELS_MOE_HASH && !r->tid2eid))
        return KERNELS_ERR_ARG;
    int warps = 4;
    size_t smem = (size_t)warps * 2 * r->n_experts * sizeof(float);
    moe_route_kernel<<<(T + warps - 1) / warps, warps * 32, smem, (cudaStream_t)stream>>>(ids, wts, logits, tokens,
                                                                                          *r, T);
    return moe_launch_status();
}

// ---- plan ----

// One block: counts per expert, their prefix sums (offsets, E + 1), tiles of
// bm rows per expert and their prefix sums (tile_start, E + 1), and each
// pair's row in the packed matrix (pos (T k)). Rows within an expert are in
// arrival order of an atomic counter: any order gives the same results,
// because a product's row depends only on its own activations.
__global__ void moe_plan_kernel(int *pos, int *offsets, int *tile_start, const int *ids, int n, int E, int bm) {
    extern __shared__ int cnt[]; // (E) counts, then (E) cursors
    int *cur = cnt + E;
    for (int e = threadIdx.x; e < E; e += blockDim.x) cnt[e] = 0;
    __syncthreads();
    for (int j = threadIdx.x; j < n; j += blockDim.x) atomicAdd(&cnt[ids[j]], 1);
    __syncthreads();
    if (threadIdx.x == 0) { // E is at most 1024: a serial scan is short
        int o = 0, tl = 0;
        for (int e = 0; e < E; e++) {
            offsets[e] = o, tile_start[e] = tl, cur[e] = o;
            o += cnt[e];
            tl += (cnt[e] + bm - 1) / bm;
        }
        offsets[E] = o, tile_start[E] = tl;
    }
    __syncthreads();
    for (int j = threadIdx.x; j < n; j += blockDim.x) pos[j] = atomicAdd(&cur[ids[j]], 1);
}

extern "C" int kernels_moe_plan(int *pos, int *offsets, int *tile_start, const int *ids, int T, int k, int E, int bm,
                                void *stream) {
    if (T <= 0) return KERNELS_OK;
    if (E < 1 || E > 1024 || k < 1 || bm < 1) return KERNELS_ERR_ARG;
    moe_plan_kernel<<<1, 1024, 2 * (size_t)E * sizeof(int), (cudaStream_t)stream>>>(pos, offsets, tile_start, ids,
                                                                                    T * k, E, bm);
    return moe_launch_status();
}

// xs[pos[j]] = x[j / k] (a token's row once per chosen expert), bf16 or f32.
template <typename A>
__global__ void moe_gather_kernel(A *xs, const float *x, const int *pos, int n, int k, int d) {
    int j = blockIdx.x;
    if (j >= n) return;
    const float *src = x + (size_t)(j / k) * d;
    A *dst = xs + (size_t)pos[j] * d;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        if constexpr (sizeof(A) == 2) dst[i] = __float2bfloat16_rn(src[i]);
        else dst[i] = src[i];
    }
}

extern "C" int kernels_moe_gather(void *xs, int bf16, const float *x, const int *pos, int T, int k, int d,
                                  void *stream) {
    if (T <= 0) return KERNELS_OK;
    int n = T * k;
    int grid = n;
    if (bf16) moe_gather_kernel<<<grid, 256, 0, (cudaStream_t)stream>>>((__nv_bfloat16 *)xs, x, pos, n, k, d);
    else moe_gather_kernel<<<grid, 256, 0, (cudaStream_t)stream>>>((float *)xs, x, pos, n, k, d);
    return moe_launch_status();
}

// ---- grouped products ----

__device__ __forceinline__ float moe_glu(float g, float u, float limit) {
    if (limit > 0.0f) {
        g = g > limit ? limit : g;
        u = u > limit ? limit : u < -limit ? -limit : u;
    }
    return g / (1.0f + expf(-g)) * u;
}

// Which expert owns tile m, and its rows [r0, r1); false past the last tile.
__device__ __forceinline__ bool moe_tile(int m, const int *offsets, const int *tile_start, int E, int bm, int *e,
                                         int *r0, int *r1) {
    if (m >= tile_start[E]) return false;
    int lo = 0, hi = E - 1; // the last e with tile_start[e] <= m (empty experts share a start: take the last)
    while (lo < hi) {
        int mid = (lo + hi + 1) >> 1;
        if (tile_start[mid] <= m) lo = mid;
        else hi = mid - 1;
    }
    *e = lo;
    *r0 = offsets[lo] + (m - tile_start[lo]) * bm;
    *r1 = min(*r0 + bm, offsets[lo + 1]);
    return true;
}

// ---- the experts' weights, whatever their format ----

// An FP4 matrix (or one of its rows): codes, 8 to a 32-bit word (the low
// nibble first), and one ue8m0 scale byte per 32 values (per 4 words).
struct moe_fp4 {
    const uint32_t *q;
    const unsigned char *s;
};

// Row r of a (rows, K) matrix (or r rows past a row): a pointer for dense
// weights, a moe_fp4 for FP4.
__device__ __forceinline__ const __nv_bfloat16 *moe_row(const __nv_bfloat16 *w, size_t r, int K) { return w + r * K; }
__device__ __forceinline__ const float *moe_row(const float *w, size_t r, int K) { return w + r * K; }
__device__ __forceinline__ moe_fp4 moe_row(moe_fp4 w, size_t r, int K) {
    return {w.q + r * (K / 8), w.s + r * (K / 32)};
}

// Element i of a row as f32 (the general kernels).
__device__ __forceinline__ float moe_at(const __nv_bfloat16 *row, int i) { return (float)row[i]; }
__device__ __forceinline__ float moe_at(const float *row, int i) { return row[i]; }
__device__ __forceinline__ float moe_at(moe_fp4 row, int i) {
    unsigned q = ((const unsigned char *)row.q)[i >> 1] >> (4 * (i & 1));
    return __fmul_rn(fp4_e2m1_f32(q), fp8_ue8m0_f32(row.s[i >> 5]));
}

#define MOE_BN 64
#define MOE_BK 32
#define MOE_STAGES 3
#define MOE_LDS (MOE_BK + 8) // bf16 elements per shared row: 80 bytes, off the bank period


// Tensor-core tiles (bf16 in, f32 accumulate) of BM rows x 64 columns: a
// (rows, K) bf16 packed by expert; w the experts' matrices stacked, (E,
// GLU ? 2N : N, K), a GLU expert's gate rows first and its up rows after. GLU
// writes h (rows, N) bf16 = silu(gate) * up (clamped with limit > 0); plain
// writes y (rows, N) f32. N % 64 == 0, K % 32 == 0. 4 warps, WM along M and
// 4 / WM along N. The tile height follows the rows an expert gets: short
// tiles when each expert has a few tokens (the weights stream through once,
// little padding), tall ones when it has many (each weight tile feeds more
// rows).
//
// FP4 weights (wq codes, ws scales): the pipeline carries their codes (16
// bytes a row and k-step of 32, one scale's worth), and each step
// dequantizes its stage into one bf16 tile before the products read it: the
// same bf16 operands as the expanded weights' tile, the same products in the
// same order. A thread dequantizes the same row (or half row) at every step,
// so it reads that row's scales 4 steps at a time (one 32-bit word, when K %
// 128 == 0, as in DeepSeek-V4's shapes), the next word loaded 4 steps before
// it is needed.
template <bool GLU, int BM, int WM, bool FP4>
__global__ void __launch_bounds__(128) moe_gemm_bf16_kernel(void *out, const __nv_bfloat16 *a,
                                                            const __nv_bfloat16 *w, const unsigned char *wq,
                                                            const unsigned char *ws, const int *offsets,
                                                            const int *tile_start, int E, int N, int K,
                                                            float limit) {
    using namespace nvcuda;
    constexpr int NB = GLU ? 2 : 1, WN = 4 / WM;
    constexpr int FM = BM / WM / 16, FN = MOE_BN / WN / 16; // fragments per warp along M and N
    constexpr int A_BYTES = MOE_STAGES * BM * MOE_LDS * 2;
    constexpr int B_BYTES = (FP4 ? 1 : MOE_STAGES) * NB * MOE_BN * MOE_LDS * 2; // FP4: one dequantized stage
    constexpr int Q_BYTES = FP4 ? MOE_STAGES * NB * MOE_BN * 16 : 0;           // FP4: the codes' stages
    constexpr int C_BYTES = NB * BM * MOE_BN * 4;
    constexpr int P_BYTES = A_BYTES + B_BYTES + Q_BYTES;
    __shared__ __align__(128) unsigned char smem[P_BYTES > C_BYTES ? P_BYTES : C_BYTES];
    typedef __nv_bfloat16 arow[MOE_LDS];
    arow *As = (arow *)smem, *Bs = (arow *)(smem + A_BYTES); // [stage * BM + r], [stage * NB * BN + r]
    uint4 *Qs = (uint4 *)(smem + A_BYTES + B_BYTES);         // FP4: [stage * NB * BN + r], 32 codes
    int e, r0, r1;
    if (!moe_tile(blockIdx.y, offsets, tile_start, E, BM, &e, &r0, &r1)) return;
    int n0 = blockIdx.x * MOE_BN, tid = threadIdx.x, warp = tid >> 5;
    int wm = warp % WM, wn = warp / WM;
    size_t e_row = (size_t)e * NB * N; // the expert's first row in the stack
    const __nv_bfloat16 *we = w + e_row * K;
    int nk = K / MOE_BK;
    auto wrow = [&](int r) { return r < MOE_BN ? n0 + r : N + n0 + (r - MOE_BN); }; // gate row, or the matching up row
    auto load = [&](int st, int kt) {
        int k0 = kt * MOE_BK;
        for (int i = tid; i < BM * 4; i += 128) { // A: BM rows x 4 chunks of 8
            int r = i >> 2, c = (i & 3) * 8;
            bool ok = r0 + r < r1;
            tc_cp16(&As[st * BM + r][c], a + (size_t)(ok ? r0 + r : r0) * K + k0 + c, ok);
        }
        if constexpr (FP4) { // B: NB*64 rows x 16 bytes of codes
            for (int r = tid; r < NB * MOE_BN; r += 128)
                tc_cp16(&Qs[st * NB * MOE_BN + r], wq + (e_row + wrow(r)) * (K / 2) + k0 / 2, true);
        } else { // B: NB*64 rows x 4 chunks
            for (int i = tid; i < NB * MOE_BN * 4; i += 128) {
                int r = i >> 2, c = (i & 3) * 8;
                tc_cp16(&Bs[st * NB * MOE_BN + r][c], we + (size_t)wrow(r) * K + k0 + c, true);
            }
        }
    };
    // FP4: this thread's row of the B tile and its part (PER threads a row), and that row's scales
    constexpr int PER = 128 / (NB * MOE_BN), WORDS = 4 / PER; // 32-bit code words a thread dequantizes
    int qr = tid / PER, qp = tid % PER;
    const unsigned char *srow = FP4 ? ws + (e_row + wrow(qr)) * (K / 32) : NULL;
    bool words = (K & 127) == 0; // 4 scales to an aligned word; otherwise one byte a step, read when needed
    uint32_t s_cur = 0, s_next = 0;
    if (FP4 && words) {
        s_cur = __ldg((const uint32_t *)srow);
        if (nk > 4) s_next = __ldg((const uint32_t *)srow + 1);
    }
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[NB][FM][FN];
#pragma unroll
    for (int b = 0; b < NB; b++)
#pragma unroll
        for (int i = 0; i < FM; i++)
#pragma unroll
            for (int j = 0; j < FN; j++) wmma::fill_fragment(acc[b][i][j], 0.0f);
#pragma unroll
    for (int s = 0; s < MOE_STAGES - 1; s++) {
        if (s < nk) load(s, s);
        tc_cp_commit();
    }
    for (int kt = 0; kt < nk; kt++) {
        tc_cp_wait<MOE_STAGES - 2>();
        __syncthreads();
        int st = kt % MOE_STAGES, bst = FP4 ? 0 : st;
        if constexpr (FP4) { // stage st's codes -> the bf16 tile (every warp is past the last step's products)
            if (words && kt && (kt & 3) == 0) {
                s_cur = s_next;
                if (kt + 4 < nk) s_next = __ldg((const uint32_t *)srow + (kt >> 2) + 1);
            }
            float sf = fp8_ue8m0_f32(words ? (unsigned char)(s_cur >> (8 * (kt & 3))) : __ldg(srow + kt));
            const uint32_t *q = (const uint32_t *)&Qs[st * NB * MOE_BN + qr] + qp * WORDS;
#pragma unroll
            for (int j = 0; j < WORDS; j++) {
                float v[8];
                fp4_dequant8(q[j], sf, v);
                *(uint4 *)&Bs[qr][(qp * WORDS + j) * 8] = make_uint4(pack_bf16(v[0], v[1]), pack_bf16(v[2], v[3]),
                                                                     pack_bf16(v[4], v[5]), pack_bf16(v[6], v[7]));
            }
            __syncthreads();
        }
#pragma unroll
        for (int kk = 0; kk < MOE_BK; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa[FM];
#pragma unroll
            for (int i = 0; i < FM; i++)
                wmma::load_matrix_sync(fa[i], &As[st * BM + (wm * FM + i) * 16][kk], MOE_LDS);
#pragma unroll
            for (int b = 0; b < NB; b++)
#pragma unroll
                for (int j = 0; j < FN; j++) {
                    wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fb;
                    wmma::load_matrix_sync(fb, &Bs[(bst * NB + b) * MOE_BN + (wn * FN + j) * 16][kk], MOE_LDS);
#pragma unroll
                    for (int i = 0; i < FM; i++) wmma::mma_sync(acc[b][i][j], fa[i], fb, acc[b][i][j]);
                }
        }
        int next = kt + MOE_STAGES - 1; // into the stage every warp finished with before this iteration's barrier
        if (next < nk) load(next % MOE_STAGES, next);
        tc_cp_commit();
    }
    tc_cp_wait<0>();
    __syncthreads();
    // Epilogue through shared memory (the pipeline's buffers are free now).
    float *Cs = (float *)smem;
#pragma unroll
    for (int b = 0; b < NB; b++)
#pragma unroll
        for (int i = 0; i < FM; i++)
#pragma unroll
            for (int j = 0; j < FN; j++)
                wmma::store_matrix_sync(Cs + b * BM * MOE_BN + ((wm * FM + i) * 16) * MOE_BN + (wn * FN + j) * 16,
                                        acc[b][i][j], MOE_BN, wmma::mem_row_major);
    __syncthreads();
    for (int i = tid; i < BM * MOE_BN; i += 128) {
        int r = i / MOE_BN, c = i % MOE_BN;
        if (r0 + r >= r1) continue;
        size_t o = (size_t)(r0 + r) * N + n0 + c;
        if (GLU) ((__nv_bfloat16 *)out)[o] = __float2bfloat16_rn(moe_glu(Cs[i], Cs[BM * MOE_BN + i], limit));
        else ((float *)out)[o] = Cs[i];
    }
}

// The general case (f32 weights, or shapes off the tensor-core tiles): one
// thread per output element of a tile's rows, f32 (or bf16 widened) operands,
// f32 sums in k order. A the activations' type (bf16 for bf16 and FP4
// weights), M the weights' (moe_row).
template <typename A, typename M, bool GLU>
__global__ void moe_gemm_simt_kernel(void *out, const A *a, M w, const int *offsets, const int *tile_start, int E,
                                     int N, int K, float limit, int bm) {
    int e, r0, r1;
    if (!moe_tile(blockIdx.y, offsets, tile_start, E, bm, &e, &r0, &r1)) return;
    int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N) return;
    constexpr int NB = GLU ? 2 : 1;
    auto wg = moe_row(w, (size_t)e * NB * N + n, K), wu = moe_row(w, (size_t)e * NB * N + N + n, K);
    for (int r = r0; r < r1; r++) {
        const A *x = a + (size_t)r * K;
        float g = 0.0f, u = 0.0f;
        for (int i = 0; i < K; i++) {
            float xv = (float)x[i];
            g += xv * moe_at(wg, i);
            if (GLU) u += xv * moe_at(wu, i);
        }
        if (GLU) {
            if constexpr (sizeof(A) == 2) ((A *)out)[(size_t)r * N + n] = __float2bfloat16_rn(moe_glu(g, u, limit));
            else ((A *)out)[(size_t)r * N + n] = moe_glu(g, u, limit);
        } else {
            ((float *)out)[(size_t)r * N + n] = g;
        }
    }
}

template <bool GLU, bool FP4>
static void moe_gemm_tc(void *out, const void *a, const kernels_moe_weights *w, const int *offsets,
                        const int *tile_start, int max_tiles, int E, int N, int K, int bm, float limit,
                        cudaStream_t s) {
    dim3 grid(N / MOE_BN, max_tiles);
    const __nv_bfloat16 *ab = (const __nv_bfloat16 *)a, *wb = (const __nv_bfloat16 *)w->w;
    const unsigned char *wq = (const unsigned char *)w->w, *ws = w->scale;
    if (bm == 16)
        moe_gemm_bf16_kernel<GLU, 16, 1, FP4><<<grid, 128, 0, s>>>(out, ab, wb, wq, ws, offsets, tile_start, E, N, K, limit);
    else if (bm == 32)
        moe_gemm_bf16_kernel<GLU, 32, 2, FP4><<<grid, 128, 0, s>>>(out, ab, wb, wq, ws, offsets, tile_start, E, N, K, limit);
    else
        moe_gemm_bf16_kernel<GLU, 64, 2, FP4><<<grid, 128, 0, s>>>(out, ab, wb, wq, ws, offsets, tile_start, E, N, K, limit);
}

template <typename A, typename M>
static void moe_gemm_simt(void *out, const void *a, M w, const int *offsets, const int *tile_start, int max_tiles,
                          int E, int N, int K, int bm, int glu, float limit, cudaStream_t s) {
    dim3 grid((N + 127) / 128, max_tiles);
    if (glu) moe_gemm_simt_kernel<A, M, true><<<grid, 128, 0, s>>>(out, (const A *)a, w, offsets, tile_start, E, N, K, limit, bm);
    else moe_gemm_simt_kernel<A, M, false><<<grid, 128, 0, s>>>(out, (const A *)a, w, offsets, tile_start, E, N, K, limit, bm);
}

// The FP4 matrix of w, or false when its shape or addresses do not fit the
// kernels (K % 32 == 0, 4-byte aligned code rows and a valid scale pointer).
static bool moe_fp4_of(const kernels_moe_weights *w, int K, moe_fp4 *m) {
    if (K % 32 || ((uintptr_t)w->w & 3) || !w->scale) return false;
    *m = {(const uint32_t *)w->w, w->scale};
    return true;
}

extern "C" int kernels_moe_tile_rows(int T, int k, int E) {
    int per = (int)(((long long)T * k + E - 1) / E); // rows an expert gets on average
    const char *force = getenv("ENGRAM_MOE_TILE"); // benchmarks: one height for every step
    if (force && (!strcmp(force, "16") || !strcmp(force, "32") || !strcmp(force, "64"))) return atoi(force);
    return per <= 16 ? 16 : per <= 48 ? 32 : 64;
}

extern "C" int kernels_moe_gemm(void *out, const void *a, const kernels_moe_weights *w, const int *offsets,
                                const int *tile_start, int max_tiles, int E, int N, int K, int bm, int glu,
                                float limit, void *stream) {
    if (max_tiles <= 0) return KERNELS_OK;
    if (!w || E < 1 || N < 1 || K < 1 || max_tiles > 65535 || (bm != 16 && bm != 32 && bm != 64)) return KERNELS_ERR_ARG;
    cudaStream_t s = (cudaStream_t)stream;
    bool tiles = N % MOE_BN == 0 && K % MOE_BK == 0 && ((uintptr_t)a & 15) == 0 && ((uintptr_t)w->w & 15) == 0;
    if (w->fmt == KERNELS_MOE_FP4) {
        moe_fp4 m;
        if (!moe_fp4_of(w, K, &m)) return KERNELS_ERR_ARG;
        if (tiles) { // the tiles bf16 weights of this shape take: the same products
            if (glu) moe_gemm_tc<true, true>(out, a, w, offsets, tile_start, max_tiles, E, N, K, bm, limit, s);
            else moe_gemm_tc<false, true>(out, a, w, offsets, tile_start, max_tiles, E, N, K, bm, limit, s);
        } else {
            moe_gemm_simt<__nv_bfloat16>(out, a, m, offsets, tile_start, max_tiles, E, N, K, bm, glu, limit, s);
        }
    } else if (w->fmt == KERNELS_MOE_BF16) {
        if (tiles) {
            if (glu) moe_gemm_tc<true, false>(out, a, w, offsets, tile_start, max_tiles, E, N, K, bm, limit, s);
            else moe_gemm_tc<false, false>(out, a, w, offsets, tile_start, max_tiles, E, N, K, bm, limit, s);
        } else {
            moe_gemm_simt<__nv_bfloat16>(out, a, (const __nv_bfloat16 *)w->w, offsets, tile_start, max_tiles, E, N,
                                         K, bm, glu, limit, s);
        }
    } else if (w->fmt == KERNELS_MOE_F32) {
        moe_gemm_simt<float>(out, a, (const float *)w->w, offsets, tile_start, max_tiles, E, N, K, bm, glu, limit, s);
    } else {
        return KERNELS_ERR_ARG;
    }
    return moe_launch_status();
}

// ---- decode: warps over (weight rows, pair), f32 activations ----

#define MOE_GEMV_WARPS 8

// Eight consecutive weights, elements 8i..8i+7 of a row, as f32 (one
// 16-byte load of bf16, two of f32, one 4-byte load of FP4 codes and their
// scale byte).
__device__ __forceinline__ void moe_load8(const __nv_bfloat16 *row, int i, float v[8]) {
    uint4 raw = __ldg((const uint4 *)row + i);
    const __nv_bfloat162 *b2 = (const __nv_bfloat162 *)&raw;
#pragma unroll
    for (int j = 0; j < 4; j++) {
        float2 f = __bfloat1622float2(b2[j]);
        v[2 * j] = f.x, v[2 * j + 1] = f.y;
    }
}
__device__ __forceinline__ void moe_load8(const float *row, int i, float v[8]) {
    float4 a = __ldg((const float4 *)row + 2 * i), b = __ldg((const float4 *)row + 2 * i + 1);
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}
__device__ __forceinline__ void moe_load8(moe_fp4 row, int i, float v[8]) {
    fp4_dequant8(__ldg(row.q + i), fp8_ue8m0_f32(__ldg(row.s + (i >> 2))), v);
}

// One warp's dot products of x (K, f32) with NR weight rows (rows[r]: a GLU's gate and
// up rows, or rows sharing one activation row), all streams in flight and each x load
// serving them all; each row's sum taken over the warp in the same order on every lane.
// K % 8 == 0 and 16-byte aligned rows take wide loads, other shapes one element per
// lane (never FP4, whose K is a multiple of 32): either way each lane sums the same
// elements in the same order for every weight format and every NR. out[r] on every lane.
template <typename R, int NR>
__device__ __forceinline__ void moe_dotn(const R *rows, const float *x, int K, int lane, float *out) {
    float acc[NR];
#pragma unroll
    for (int r = 0; r < NR; r++) acc[r] = 0.0f;
    if ((K & 7) == 0) {
#pragma unroll 4
        for (int i = lane; i < K / 8; i += 32) {
            float v[NR][8];
#pragma unroll
            for (int r = 0; r < NR; r++) moe_load8(rows[r], i, v[r]);
            float4 p = __ldg((const float4 *)x + 2 * i), q = __ldg((const float4 *)x + 2 * i + 1);
            float xv[8] = {p.x, p.y, p.z, p.w, q.x, q.y, q.z, q.w};
#pragma unroll
            for (int c = 0; c < 8; c++)
#pragma unroll
                for (int r = 0; r < NR; r++) acc[r] += xv[c] * v[r][c];
        }
    } else {
        for (int i = lane; i < K; i += 32)
#pragma unroll
            for (int r = 0; r < NR; r++) acc[r] += x[i] * moe_at(rows[r], i);
    }
#pragma unroll
    for (int r = 0; r < NR; r++) {
        for (int o = 16; o > 0; o >>= 1) acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], o);
        out[r] = acc[r];
    }
}

// Pair j = (token j / k, expert ids[j]): h (n, N) f32 = the GLU of token j / k's x row. A warp
// takes two gate/up row pairs, rows n0 and n0 + 1 (a last odd row read twice, stored once), all
// four rows in one loop so each x load serves them all: one pair a warp read 8 KB of x for 8 KB
// of qwen3-30b-a3b's weights (2.37 TB/s); two pairs measured 1-2% faster end to end (RESULTS).
template <typename M>
__global__ void __launch_bounds__(MOE_GEMV_WARPS * 32) moe_glu_gemv_kernel(float *out, const float *x, M w,
                                                                           const int *ids, int k, int N, int K,
                                                                           float limit) {
    int n0 = (blockIdx.x * MOE_GEMV_WARPS + (threadIdx.x >> 5)) * 2, j = blockIdx.y, lane = threadIdx.x & 31;
    if (n0 >= N) return;
    int n1 = min(n0 + 1, N - 1);
    auto g0 = moe_row(w, (size_t)ids[j] * 2 * N + n0, K), g1 = moe_row(w, (size_t)ids[j] * 2 * N + n1, K);
    decltype(g0) rows[4] = {g0, moe_row(g0, N, K), g1, moe_row(g1, N, K)};
    float d[4];
    moe_dotn<decltype(g0), 4>(rows, x + (size_t)(j / k) * K, K, lane, d);
    if (lane == 0) {
        out[(size_t)j * N + n0] = moe_glu(d[0], d[1], limit);
        if (n0 + 1 < N) out[(size_t)j * N + n0 + 1] = moe_glu(d[2], d[3], limit);
    }
}

// The down product and the combine in one launch: block (n0, t) has a warp per pair of token t,
// each the dots of its pair's h (K) with rows n0 .. n0 + R - 1 of its expert's down matrix (rows
// past N read row N - 1, never stored), each h load serving the R rows; then out[t, n] = sum over
// the pairs in order of wts * dot, from 0, as moe_combine_kernel adds them. This saves the (T k,
// d) f32 staging of y and a launch per layer. R = MOE_DOWN_ROWS = 4: a row a block paid three
// 16-byte loads a lane and a block barrier per 1.5 KB row (1.93 TB/s on qwen3-30b-a3b); 4 rows
// measured +2.2-2.7% end to end, 2 rows +0.3-1.8% (RESULTS).
#define MOE_DOWN_ROWS 4
template <typename M>
__global__ void moe_down_combine_kernel(float *out, const float *h, M w, const int *ids, const float *wts, int k,
                                        int N, int K, int add) {
    enum { R = MOE_DOWN_ROWS };
    __shared__ float dots[R][32];
    int n0 = blockIdx.x * R, t = blockIdx.y, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int j = t * k + warp;
    using Row = decltype(moe_row(w, (size_t)0, K));
    Row rows[R];
#pragma unroll
    for (int r = 0; r < R; r++) rows[r] = moe_row(w, (size_t)ids[j] * N + min(n0 + r, N - 1), K);
    float d[R];
    moe_dotn<Row, R>(rows, h + (size_t)j * K, K, lane, d);
    if (lane == 0)
#pragma unroll
        for (int r = 0; r < R; r++) dots[r][warp] = d[r];
    __syncthreads();
    int r = threadIdx.x;
    if (r >= R || n0 + r >= N) return;
    float acc = 0.0f;
    for (int s = 0; s < k; s++) acc += dots[r][s] * wts[t * k + s];
    float *o = out + (size_t)t * N + n0 + r;
    *o = add ? *o + acc : acc;
}

template <typename M>
static void moe_down_combine_launch(float *out, const float *h, M w, const int *ids, const float *wts, int T, int k,
                                    int N, int K, int add, cudaStream_t s) {
    moe_down_combine_kernel<<<dim3((N + MOE_DOWN_ROWS - 1) / MOE_DOWN_ROWS, T), k * 32, 0, s>>>(
        out, h, w, ids, wts, k, N, K, add);
}

template <typename M>
static void moe_glu_gemv_launch(float *out, const float *x, M w, const int *ids, int n, int k, int N, int K,
                                float limit, cudaStream_t s) {
    dim3 block(MOE_GEMV_WARPS * 32);
    moe_glu_gemv_kernel<<<dim3(((N + 1) / 2 + MOE_GEMV_WARPS - 1) / MOE_GEMV_WARPS, n), block, 0, s>>>(
        out, x, w, ids, k, N, K, limit);
}

// The weights' alignment the decode kernels' wide loads need: 16 bytes for
// dense rows when K % 8 == 0; FP4 (K % 32 == 0) reads 4-byte words.
static bool moe_gemv_weights_ok(const kernels_moe_weights *w, int K) {
    if (w->fmt == KERNELS_MOE_FP4) return K % 32 == 0 && !((uintptr_t)w->w & 3) && w->scale;
    return (w->fmt == KERNELS_MOE_BF16 || w->fmt == KERNELS_MOE_F32) && ((K & 7) || !((uintptr_t)w->w & 15));
}

extern "C" int kernels_moe_down_combine(float *out, const float *h, const kernels_moe_weights *w, const int *ids,
                                        const float *wts, int T, int k, int N, int K, int add, void *stream) {
    if (T <= 0) return KERNELS_OK;
    if (!w || N < 1 || K < 1 || k < 1 || k > 32 || T > 65535) return KERNELS_ERR_ARG;
    if (!moe_gemv_weights_ok(w, K) || ((K & 7) == 0 && ((uintptr_t)h & 15))) return KERNELS_ERR_ARG;
    cudaStream_t s = (cudaStream_t)stream;
    if (w->fmt == KERNELS_MOE_FP4)
        moe_down_combine_launch(out, h, moe_fp4{(const uint32_t *)w->w, w->scale}, ids, wts, T, k, N, K, add, s);
    else if (w->fmt == KERNELS_MOE_BF16)
        moe_down_combine_launch(out, h, (const __nv_bfloat16 *)w->w, ids, wts, T, k, N, K, add, s);
    else moe_down_combine_launch(out, h, (const float *)w->w, ids, wts, T, k, N, K, add, s);
    return moe_launch_status();
}

extern "C" int kernels_moe_glu_gemv(float *out, const float *x, const kernels_moe_weights *w, const int *ids, int T,
                                    int k, int N, int K, float limit, void *stream) {
    if (T <= 0) return KERNELS_OK;
    int n = T * k;
    if (!w || N < 1 || K < 1 || n > 65535) return KERNELS_ERR_ARG;
    if (!moe_gemv_weights_ok(w, K) || ((K & 7) == 0 && ((uintptr_t)x & 15))) return KERNELS_ERR_ARG;
    cudaStream_t s = (cudaStream_t)stream;
    if (w->fmt == KERNELS_MOE_FP4)
        moe_glu_gemv_launch(out, x, moe_fp4{(const uint32_t *)w->w, w->scale}, ids, n, k, N, K, limit, s);
    else if (w->fmt == KERNELS_MOE_BF16)
        moe_glu_gemv_launch(out, x, (const __nv_bfloat16 *)w->w, ids, n, k, N, K, limit, s);
    else moe_glu_gemv_launch(out, x, (const float *)w->w, ids, n, k, N, K, limit, s);
    return moe_launch_status();
}

// ---- combine ----

// out (T, d) = sum over i in order of wts[t k + i] * y[pos[t k + i]] (the
// plan's rows). Summed from 0 in the CPU's order; with add, out += it.
__global__ void moe_combine_kernel(float *out, const float *y, const int *pos, const float *wts, int T, int k, int d,
                                   int add) {
    int t = blockIdx.x;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        float acc = 0.0f;
        for (int s = 0; s < k; s++) {
            int j = t * k + s;
            acc += y[(size_t)pos[j] * d + i] * wts[j];
        }
        float *o = out + (size_t)t * d + i;
        *o = add ? *o + acc : acc;
    }
}

extern "C" int kernels_moe_combine(float *out, const float *y, const int *pos, const float *wts, int T, int k, int d,
                                   int add, void *stream) {
    if (T <= 0) return KERNELS_OK;
    moe_combine_kernel<<<T, 256, 0, (cudaStream_t)stream>>>(out, y, pos, wts, T, k, d, add);
    return moe_launch_status();
}
