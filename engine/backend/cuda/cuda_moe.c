/* Mixture-of-experts ops of the CUDA backend (kernels/moe.cu): the router,
 * then the experts without leaving the device. Decode steps (a few tokens)
 * take one matrix-vector launch per product over the (token, expert) pairs,
 * f32 activations, as dense decode does; larger steps pack each expert's
 * tokens into tiles (the plan) and run every expert's products in one
 * tensor-core launch each (bf16 activations, as cuBLAS products do). The
 * experts' weights are stacked by the view (cuda_view.c, view__moe), in
 * f32, bf16, or FP4 as stored (DeepSeek-V4's routed experts), which the
 * kernels dequantize as they load it. */
#include <stddef.h>
#include <stdint.h>

#include "engine/backend/cuda/cuda_internal.h"

/* Tokens up to which the experts go through the pair kernel (the dense
 * products' GEMV_MAX_TOKENS: the same numerics switch at the same T). */
#define MOE_GEMV_TOKENS 2

void cu_moe_route(backend *be, int32_t *ids, float *wts, const float *logits, const int32_t *tokens,
                  const moe_weights *moe, int T) {
    cuda_backend *g = cuda__of(be);
    kernels_moe_router r = {
        .scoring = moe->scoring == MOE_SOFTMAX ? KERNELS_MOE_SOFTMAX
                   : moe->scoring == MOE_HASH  ? KERNELS_MOE_HASH
                                               : KERNELS_MOE_SQRTSOFTPLUS,
        .n_experts = moe->n_experts, .top_k = moe->top_k, .norm_topk = moe->norm_topk,
        .bias = moe->bias, .tid2eid = moe->tid2eid, .routed_scaling = moe->routed_scaling,
    };
    CUDA_TIMED(g, CHECK_K(kernels_moe_route(ids, wts, logits, tokens, &r, T, g->stream)), "moe_route E=%d",
               moe->n_experts);
}

/* The scratch of one call, carved from g->moe_work: 16-byte aligned pieces. */
static char *carve(char **at, size_t bytes) {
    char *p = *at;
    *at += (bytes + 15) & ~(size_t)15;
    return p;
}

/* The stacked matrix whose first expert is w0 (view__moe), for the kernels. */
static kernels_moe_weights moe_weights_of(const weight *w0) {
    kernels_moe_weights k = {.w = w0->data, .fmt = KERNELS_MOE_F32};
    if (w0->fmt == WEIGHT_FP4) k.fmt = KERNELS_MOE_FP4, k.scale = w0->scale;
    else if (w0->dt == DTYPE_BF16) k.fmt = KERNELS_MOE_BF16;
    return k;
}

/* moe_experts, or with add moe_experts_add: out += the sum (the last kernel, down-combine or
 * combine, adds it as it writes: one addition, as the add kernel made it). */
static void moe_run(cuda_backend *g, float *out, const float *x, const int32_t *ids, const float *wts,
                    const moe_weights *moe, int T, int add) {
    cuda__pf_join(g);
    if (T <= 0) return;
    int d = moe->router.cols, I = moe->inter, k = moe->top_k, E = moe->n_experts;
    kernels_moe_weights gu = moe_weights_of(&moe->gate[0]), dn = moe_weights_of(&moe->down[0]);
    /* the activations: bf16 with bf16 or FP4 weights (view__moe makes gate, up and down one kind) */
    int bf16 = gu.fmt != KERNELS_MOE_F32;
    size_t es = bf16 ? 2 : 4, n = (size_t)T * k;
    /* the stacking this relies on (view__moe): one base per product */
    if ((const char *)moe->up[0].data != (const char *)gu.w + cuda__expert_stride(&moe->gate[0]) ||
        (bf16 != (dn.fmt != KERNELS_MOE_F32))) /* (a shared expert is forward_dsv4's) */
        cuda__fail(__func__, "experts are not a stacked device view (cuda_view.c prepares them)");
    int pi = prof__begin(g, "moe_experts E=%d k=%d %s", E, k, prof__tclass(T));
    if (T <= MOE_GEMV_TOKENS) {
        size_t need = n * (size_t)I * 4 + 32;
        cuda__grow(g, &g->moe_work, &g->moe_work_bytes, need);
        char *at = g->moe_work;
        float *h = (float *)carve(&at, n * (size_t)I * 4);
        CHECK_K(kernels_moe_glu_gemv(h, x, &gu, ids, T, k, I, d, moe->swiglu_limit, g->stream));
        CHECK_K(kernels_moe_down_combine(out, h, &dn, ids, wts, T, k, d, I, add, g->stream));
        prof__end(g, pi);
        return;
    }
    int bm = kernels_moe_tile_rows(T, k, E), max_tiles = (int)((n + bm - 1) / bm) + E;
    size_t need = n * 4 + 2 * ((size_t)E + 1) * 4 + n * (size_t)d * es + n * (size_t)I * es + n * (size_t)d * 4 + 96;
    cuda__grow(g, &g->moe_work, &g->moe_work_bytes, need);
    char *at = g->moe_work;
    int *pos = (int *)carve(&at, n * 4), *offsets = (int *)carve(&at, ((size_t)E + 1) * 4);
    int *tiles = (int *)carve(&at, ((size_t)E + 1) * 4);
    void *xs = carve(&at, n * (size_t)d * es), *h = carve(&at, n * (size_t)I * es);
    float *y = (float *)carve(&at, n * (size_t)d * 4);
    CHECK_K(kernels_moe_plan(pos, offsets, tiles, ids, T, k, E, bm, g->stream));
    CHECK_K(kernels_moe_gather(xs, bf16, x, pos, T, k, d, g->stream));
    CHECK_K(kernels_moe_gemm(h, xs, &gu, offsets, tiles, max_tiles, E, I, d, bm, 1, moe->swiglu_limit, g->stream));
    CHECK_K(kernels_moe_gemm(y, h, &dn, offsets, tiles, max_tiles, E, d, I, bm, 0, 0.0f, g->stream));
    CHECK_K(kernels_moe_combine(out, y, pos, wts, T, k, d, add, g->stream));
    prof__end(g, pi);
}

void cu_moe_experts(backend *be, float *out, const float *x, const int32_t *ids, const float *wts,
                    const moe_weights *moe, int T) {
    moe_run(cuda__of(be), out, x, ids, wts, moe, T, 0);
}

void cu_moe_experts_add(backend *be, float *out, const float *x, const int32_t *ids, const float *wts,
                        const moe_weights *moe, int T) {
    moe_run(cuda__of(be), out, x, ids, wts, moe, T, 1);
}
