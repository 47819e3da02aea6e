/* Internal to the CUDA backend plugin (engine/backend/cuda/): the handle's
 * state and what its files share. backend_cuda.c makes the handle and owns
 * memory; cuda_ops.c the compute ops, cuda_moe.c the mixture-of-experts
 * ops, cuda_dsv4.c DeepSeek-V4's, cuda_view.c the device view of a model (uploading weights),
 * cuda_graphs.c recorded steps, cuda_fetch.c the copy
 * stream of Engram rows, cuda_coll.c the collectives of a group of ranks
 * (NCCL), cuda_profile.c op timing. */
#ifndef ENGINE_BACKEND_CUDA_INTERNAL_H
#define ENGINE_BACKEND_CUDA_INTERNAL_H

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "engine/backend/backend.h"
#include "kernels/kernels.h"
#include "base/fault.h"

/* Device and pinned allocations go through these: in a fault-injection
 * build (ENGRAM_FAULT) the Nth of them fails as the driver's out of memory
 * would (ENGRAM_FAULT_CUDA_ALLOC=N), so that tests can see every caller
 * handle it. */
static inline cudaError_t cuda__malloc(void **p, size_t bytes) {
    return fault_hit(FAULT_CUDA_ALLOC) ? cudaErrorMemoryAllocation : cudaMalloc(p, bytes);
}
static inline cudaError_t cuda__host_alloc(void **p, size_t bytes) {
    return fault_hit(FAULT_CUDA_ALLOC) ? cudaErrorMemoryAllocation : cudaHostAlloc(p, bytes, cudaHostAllocDefault);
}

/* Everything below is the plugin's own: hidden, so that no symbol of the
 * program (which exports its symbols to the plugin) can stand in for one of
 * these. */
#pragma GCC visibility push(hidden)

/* Recorded steps (CUDA graphs), looked up by the caller's key; the least
 * recently used slot is replaced. A key seen once runs plainly (it warms
 * cuBLAS and grows the scratch buffers), the second time it is recorded,
 * from the third on replayed. */
#define GRAPH_SLOTS 48
#define GRAPH_KEY_MAX 64
/* qk_rope_store takes its warp-per-head kernel from this many tokens a step up (by default):
 * below it the block-per-head kernel was as fast or faster on the H100 (cu_qk_rope_store) */
#define QK_WARP_MIN_T 128
typedef struct {
    unsigned char key[GRAPH_KEY_MAX];
    size_t key_bytes;
    int state; /* 0 free, 1 seen once, 2 recorded */
    cudaGraphExec_t exec;
    unsigned long long used;
} cuda_graph_slot;

/* Op timing (backend_params.cuda_profile): see cuda_profile.c. */
#define PROF_PAIRS 1024
#define PROF_NAMES 96
typedef struct {
    int on, n;
    cudaEvent_t ev[2 * PROF_PAIRS];
    int name[PROF_PAIRS];
    struct {
        char s[56];
        double ms;
        long calls;
    } e[PROF_NAMES];
    int ne;
    double ms_sum, wall0, wall1;
} cuda_profile;

/* The handle. Each has its own streams, cuBLAS handle, scratch, recordings
 * and fetch channels; what they share is the process's CUDA context on its
 * device (backend_params.cuda_device; the runtime's primary context: one per
 * process and device). */
typedef struct {
    backend base; /* first: the ops get &base */
    cudaStream_t stream; /* every op, in order */
    cublasHandle_t blas;
    void *blas_ws; /* cuBLAS's workspace (32 MiB) */
    void *xb; /* bf16 copy of a product's activations */
    size_t xb_bytes;
    void *add_tmp; /* matmul_add's product when it cannot add in place */
    size_t add_tmp_bytes;
    void *skinny_work; /* the few-row products' chunk sums (kernels_skinny_f32) */
    size_t skinny_work_bytes;
    float *att_work; /* attention split scratch */
    size_t att_work_floats;
    void *moe_work; /* moe_experts' packed rows and products (cuda_moe.c) */
    size_t moe_work_bytes;
    void *fp8_bf16; /* an FP8 weight's bf16 values for a product past the decode kernels (cu_fp8_expand) */
    size_t fp8_bf16_bytes;
    void *dsv4_work; /* DeepSeek-V4 ops' scratch (cuda_dsv4.c) */
    size_t dsv4_work_bytes;
    int attention_no_tiled; /* tests: every token through the per-token kernel */
    int attention_decode_simt; /* tests: per-token tokens through the f32 kernel, not the tensor-core one */
    int dsv4_attention_ref; /* tests: DeepSeek-V4's attention through its first kernel (kernels.h) */
    int skinny_max_rows; /* f32 products of at most this many rows take kernels_skinny_f32 (0: none) */
    int act_unfused; /* ENGRAM_ACT_FUSE=0: bf16 products' activations through f32 (norm, SwiGLU), as before */
    int qk_warp;     /* qk_rope_store's kernel: 1 warp per head, 0 the first (a block per token and head),
                      * -1 (the default) warp from QK_WARP_MIN_T tokens up (ENGRAM_QK_ROPE_STORE) */
    int glu_stack;   /* gate and up as one product where the view stacked them: 0 never, 1 up to
                      * GLU_STACK_MAX_TOKENS tokens (default), 2 at every T (tests) */
    int graphs_off; /* backend_params.cuda_graphs 0 (or op profiling): no recorded steps */
    int capturing;  /* slot being recorded, or -1 */
    unsigned long long tick;
    cuda_graph_slot graphs[GRAPH_SLOTS];
    /* Engram row copies: a second stream, and per channel the compute's mark
     * (timing), the copy's end (timing) and the compute's last read; the
     * copies back (fetch_back) on a third stream, so that the next layer's
     * copy up never queues behind a copy back waiting for the compute: per
     * channel the compute's point it starts from and its end */
    cudaStream_t copy, back;
    cudaEvent_t ev_mark[BACKEND_FETCH_CHANNELS], ev_copied[BACKEND_FETCH_CHANNELS],
        ev_released[BACKEND_FETCH_CHANNELS], ev_back_from[BACKEND_FETCH_CHANNELS],
        ev_backed[BACKEND_FETCH_CHANNELS];
    int marked[BACKEND_FETCH_CHANNELS], copied[BACKEND_FETCH_CHANNELS], released[BACKEND_FETCH_CHANNELS],
        backed[BACKEND_FETCH_CHANNELS];
    /* backend_prefetch: a third stream forked from and joined back into
     * `stream` (pf_pending: a fork not yet joined); at most pf_max_bytes
     * asked between two products (0: off, ENGRAM_L2_PREFETCH=MB), pf_left of
     * them still free */
    cudaStream_t pf;
    cudaEvent_t ev_pf_fork, ev_pf_done;
    int pf_pending;
    size_t pf_max_bytes, pf_left;
    cuda_profile prof;
} cuda_backend;

static inline cuda_backend *cuda__of(backend *be) { return (cuda_backend *)be; }

/* A failed launch or CUDA call inside an op: the context is unusable and the
 * op cannot report it (ops return nothing), so stop here. */
__attribute__((noreturn)) void cuda__fail(const char *op, const char *what);
#define CHECK_CUDA(x)                                                                                       \
    do {                                                                                                    \
        cudaError_t e_ = (x);                                                                               \
        if (e_ != cudaSuccess) cuda__fail(__func__, cudaGetErrorString(e_));                                \
    } while (0)
#define CHECK_K(x)                                                                                          \
    do {                                                                                                    \
        int k_ = (x);                                                                                       \
        if (k_) cuda__fail(__func__, kernels_status_str(k_));                                               \
    } while (0)

static inline int cuda__dtype(dtype t) {
    return t == DTYPE_BF16 ? KERNELS_BF16 : t == DTYPE_F16 ? KERNELS_F16 : KERNELS_F32;
}

/* ---- compute (cuda_ops.c) ---- */
void cu_prefetch(backend *be, const weight *w, int T);
/* The main stream waits for a pending prefetch's launch (before a product, and before a
 * recording ends: a forked stream must rejoin its capture). */
static inline void cuda__pf_join(cuda_backend *g) {
    if (!g->pf_pending) return;
    g->pf_pending = 0;
    CHECK_CUDA(cudaStreamWaitEvent(g->stream, g->ev_pf_done, 0));
}
void cu_matmul(backend *be, float *out, const float *x, const weight *w, const float *bias, int T);
void cu_matmul_grouped(backend *be, float *y, const float *x, size_t xs, const weight *w, int G, int T);
void cu_rmsnorm(backend *be, float *out, const float *x, const float *gw, int T, int d, float eps);
void cu_embed(backend *be, float *out, const weight *emb, const int32_t *ids, int T);
void cu_rope(backend *be, float *x, const int32_t *pos, int T, int n_heads, int hd, const float *inv_freq);
void cu_kv_store(backend *be, void *kc, void *vc, const float *k, const float *v, const batch_desc *b, int kvw);
void cu_attention(backend *be, float *out, const float *q, const void *kc, const void *vc, const batch_desc *b,
                  int n_heads, int n_kv, int hd, int window);
void cu_swiglu(backend *be, float *gate, const float *up, size_t n);
void cu_add(backend *be, float *x, const float *y, size_t n);
void cu_gather_f32(backend *be, float *out, const float *x, const int32_t *idx, int n, int d);
void cu_argmax(backend *be, int32_t *next, const float *logits, int T, int vocab);
void cu_gather_rows(backend *be, float *out, const weight *table, const int64_t *rows, int T, int H);
void cu_engram_gate(backend *be, float *gate, const float *nk, const float *nq, int T, int d);
void cu_scale_rows(backend *be, float *out, size_t ostride, const float *x, size_t xstride, const float *s, int T,
                   int d);
void cu_short_conv(backend *be, float *out, const float *in, const float *w, const batch_desc *b, size_t hist_off,
                   int C, int K, int dil);
void cu_matmul_qkv(backend *be, float *q, float *k, float *v, const float *x, const backend_norm *norm,
                   const weight *wq, const weight *wk, const weight *wv, const float *bq, const float *bk,
                   const float *bv, int T);
void cu_matmul_add(backend *be, float *x, const float *a, const weight *w, const float *bias, int T);
void cu_matmul_glu(backend *be, float *gate, float *up, const float *x, const backend_norm *norm,
                   const weight *wg, const weight *wu, const float *bg, const float *bu, int T);
void cu_matmul_ffn(backend *be, float *x, float *work, const backend_norm *norm, const weight *wg,
                   const weight *wu, const weight *wd, const float *bg, const float *bu, const float *bd, int T);
void cu_qk_rope_store(backend *be, float *q, const float *k, const float *v, void *kc, void *vc, const batch_desc *b,
                      int n_heads, int n_kv, int hd, const float *qn, const float *kn, float eps,
                      const float *inv_freq);
void cu_sample(backend *be, void *out, float *logits, const int32_t *desc, int n, int vocab, int stride, int n_cand);
void cu_sample_argmax(backend *be, int32_t *next, float *logits, const int32_t *desc, int first, int n, int vocab,
                      int stride);
/* 0 when ENGRAM_DSV4_FUSE=0 asks DeepSeek-V4's fused ops for the launches they replace (cuda_ops.c). */
int cuda__dsv4_fuse(void);
/* Grows a device scratch buffer to at least `bytes` (drops recorded steps). */
void cuda__grow(cuda_backend *g, void **buf, size_t *have, size_t bytes);
/* Frees the ops' scratch buffers (the handle's teardown). */
void cuda__ops_free(cuda_backend *g);

/* ---- mixture of experts (cuda_moe.c) ---- */
/* Bytes from one expert's matrix to the next in the view's stacks (cuda_view.c, view__stack):
 * dense ones in their device dtype, FP4 ones kept packed (the codes; their scales lie
 * rows * cols / 32 bytes apart). */
static inline size_t cuda__expert_stride(const weight *w) {
    size_t n = (size_t)w->rows * w->cols;
    return w->fmt == WEIGHT_FP4 ? n / 2 : n * dtype_size(w->dt);
}
void cu_moe_route(backend *be, int32_t *ids, float *wts, const float *logits, const int32_t *tokens,
                  const moe_weights *moe, int T);
void cu_moe_experts(backend *be, float *out, const float *x, const int32_t *ids, const float *wts,
                    const moe_weights *moe, int T);
void cu_moe_experts_add(backend *be, float *out, const float *x, const int32_t *ids, const float *wts,
                    const moe_weights *moe, int T);

/* ---- DeepSeek-V4 (cuda_dsv4.c) ---- */
void cu_rmsnorm_plain(backend *be, float *out, const float *x, int T, int d, float eps);
void cu_hc_weights(backend *be, float *pre, float *post, float *comb, const float *mix, const float *base,
                   const float *scale, int T, int N, int iters, float hc_eps);
void cu_hc_collapse(backend *be, float *x, const float *X, const float *pre, int T, int N, int d);
void cu_hc_split(backend *be, float *post, float *comb, float *x, const float *X, const float *mix,
                 const float *base, const float *scale, int T, int N, int d, int iters, float hc_eps);
void cu_hc_merge(backend *be, float *X, const float *y, const float *post, const float *comb, int T, int N, int d);
void cu_hc_head(backend *be, float *out, const float *X, const float *mix, const float *base, const float *scale,
                int T, int N, int d, float hc_eps);
void cu_rope_tail(backend *be, float *x, const int32_t *pos, int T, int n_heads, int hd, int r,
                  const float *inv_freq, int inverse);
void cu_dsv4_qk_norm_rope(backend *be, float *q, float *kv, const float *kv_norm, const int32_t *pos, int T,
                          int n_heads, int hd, int r, const float *inv_freq, int q_norm, float eps);
void cu_dsv4_compress(backend *be, const float *kv, const float *gate, const batch_desc *b, const dsv4_state *st,
                      const dsv4_kv *cache, int which, int m, int D, int overlap, const float *ape,
                      const float *norm, float eps, int r, const float *inv_freq);
void cu_dsv4_index(backend *be, int32_t *sel, const float *q, const float *wts, const batch_desc *b,
                   const dsv4_kv *cache, int m, int K, int nI, int dI);
void cu_dsv4_attention(backend *be, float *out, const float *q, const float *kv, const batch_desc *b,
                       const dsv4_kv *cache, int m, const int32_t *sel, int K, const float *sinks, int nh, int D,
                       int W);
void cu_swiglu_limit(backend *be, float *gate, const float *up, size_t n, float limit);
void cu_dsv41_compress(backend *be, float *lat, const float *kv, const float *score, const batch_desc *b,
                       const dsv4_state *st, const dsv4_kv *cache, int m, int D, const float *norm, float eps, int r,
                       const float *inv_freq);
void cu_dsv41_index_keys(backend *be, const float *k, const batch_desc *b, const dsv4_kv *cache, int m, int dI,
                         const float *k_norm, float eps, int r, const float *inv_freq);
void cu_fake_quant_fp4(backend *be, float *x, size_t n, int w);
void cu_dsv41_index(backend *be, int32_t *sel, const float *q, const float *wts, const batch_desc *b,
                    const dsv4_kv *cache, int m, int K, int nI, int dI, int32_t *publish, const int32_t *among,
                    int nb, int bs);
void cu_engram_v41_gate(backend *be, float *X, const float *kv, const float *w, int T, int N, int d, float eps,
                        float clamp, float *gates);

/* ---- the device view of a model (cuda_view.c) ---- */
model *cu_prepare(backend *be, model *m, char *err, size_t errlen);
void cu_release(backend *be, model *view, model *m);

/* ---- recorded steps (cuda_graphs.c) ---- */
int cu_step_begin(backend *be, const void *key, size_t key_bytes);
void cu_step_end(backend *be);
/* Drops every recorded step: they hold device addresses that are about to
 * change. */
void graphs__clear(cuda_backend *g);

/* ---- Engram rows from host memory (cuda_fetch.c) ---- */
void *cu_host_alloc(backend *be, size_t bytes);
void cu_host_free(backend *be, void *p);
void cu_fetch_mark(backend *be, int ch);
void cu_fetch(backend *be, int ch, void *dst, const void *src, size_t bytes);
void cu_fetch_wait(backend *be, int ch);
void cu_fetch_release(backend *be, int ch);
double cu_fetch_sync(backend *be, int ch);
void cu_decode_rows(backend *be, float *out, const void *rows, int dt, size_t stride, const int32_t *idx, int n,
                    int cols);
void cu_scatter_rows(backend *be, void *dst, const void *src, const int32_t *slot, int n, size_t row_bytes);
void cu_collect_rows(backend *be, void *dst, const void *src, const int32_t *slot, int n, size_t row_bytes);
void cu_fetch_back(backend *be, int ch, void *dst, const void *src, size_t bytes);
/* The copy stream and the channels' events; 0, or a CUDA error. */
cudaError_t cuda__fetch_init(cuda_backend *g);
void cuda__fetch_free(cuda_backend *g); /* after both streams are idle; accepts a partial init */

/* ---- collectives of a group of ranks: NCCL, opened at first use (cuda_coll.c) ---- */
int cu_coll_id(backend *be, void *id, char *err, size_t errlen);
void *cu_coll_init(backend *be, const void *id, int n_ranks, int rank, char *err, size_t errlen);
void cu_coll_free(backend *be, void *comm);
void cu_all_reduce_sum(backend *be, void *comm, float *buf, size_t n);
void cu_all_gather(backend *be, void *comm, float *dst, const float *src, size_t n);

/* ---- profiling (cuda_profile.c) ---- */
/* Starts timing an op named by the format; returns its pair, or -1 when off. */
__attribute__((format(printf, 2, 3))) int prof__begin(cuda_backend *g, const char *fmt, ...);
void prof__end(cuda_backend *g, int i);
/* Issues `launch` timed as one op named by the format and its arguments
 * (untimed when profiling is off). */
#define CUDA_TIMED(g, launch, ...)                                                                          \
    do {                                                                                                    \
        int pi_ = prof__begin(g, __VA_ARGS__);                                                              \
        launch;                                                                                             \
        prof__end(g, pi_);                                                                                  \
    } while (0)
/* A size class of T tokens, for op names. */
const char *prof__tclass(int T);
/* Turns timing on (mode 1 or 2, backend_params.cuda_profile); 0, or a CUDA error. */
cudaError_t prof__init(cuda_backend *g, int mode);
/* Prints the totals (when on) and frees the events. */
void prof__finish(cuda_backend *g);

#pragma GCC visibility pop

#endif
