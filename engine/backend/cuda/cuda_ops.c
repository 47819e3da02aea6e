/* The compute ops of the CUDA backend, each issued on the handle's stream.
 * Matrix products of 1 or 2 tokens (decode) go through a matrix-vector
 * kernel (f32 activations), larger ones through cuBLAS: bf16 weights times
 * activations rounded to bf16, or f32 weights times f32 activations (no
 * TF32), all with f32 accumulation and output, except f32 weights of few
 * rows (kernels_skinny_f32); the rest through kernels/.
 * The decode kernels of the qkv and gate/up products also apply the RMSNorm
 * before them (backend_norm), so a decode layer runs no norm kernel. Beyond
 * them the activations a bf16 product reads are written as bf16 by the op
 * before it where that op is ours (the norm; SwiGLU feeding the down product,
 * matmul_ffn), the same bits as f32 rounded afterwards, without the f32 trip
 * (ENGRAM_ACT_FUSE=0: the f32 trips, for A/B timings).
 * FP8 weights kept packed (cuda_view.c; ENGRAM_FP8_PACKED=0 expands them) take an FP8
 * matrix-vector kernel for decode and, past it, their bf16 values expanded
 * into scratch for cuBLAS: the bf16 path's numbers either way. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/backend/cuda/cuda_internal.h"
#include "engine/sampler.h"

/* Tokens up to which a product takes the matrix-vector kernel rather than
 * cuBLAS (H100, 4096x4096 bf16: T=1 8.6 us against 20 us through cuBLAS with
 * the activation conversion; T=8 38 us against 17). */
#define GEMV_MAX_TOKENS 2

/* Grows a device scratch buffer to at least `bytes`. cudaFree waits for the
 * work that may still read the old one. */
void cuda__grow(cuda_backend *g, void **buf, size_t *have, size_t bytes) {
    if (bytes <= *have) return;
    graphs__clear(g);
    CHECK_CUDA(cudaFree(*buf));
    *buf = NULL;
    *have = 0;
    size_t want = bytes + bytes / 4;
    CHECK_CUDA(cuda__malloc(buf, want));
    *have = want;
}

/* ---- compute ---- */

/* The activations x (T, cols) rounded to bf16 into g->xb, for cu_gemm_xb. */
static void cu_x_bf16(cuda_backend *g, const float *x, int T, int cols) {
    size_t n = (size_t)T * cols;
    cuda__grow(g, &g->xb, &g->xb_bytes, n * 2);
    CHECK_K(kernels_to_bf16(g->xb, x, KERNELS_F32, n, g->stream));
}

/* out (T, rows) = g->xb @ w^T (+ bias) + beta * out, bf16 weights, f32 output. */
static void cu_gemm_xb(cuda_backend *g, float *out, const weight *w, const float *bias, int T, float beta) {
    const float one = 1.0f;
    /* column-major: out^T (rows, T) = W (cols, rows)^T x^T (cols, T) */
    cublasStatus_t st = cublasGemmEx(g->blas, CUBLAS_OP_T, CUBLAS_OP_N, w->rows, T, w->cols, &one, w->data,
                                     CUDA_R_16BF, w->cols, g->xb, CUDA_R_16BF, w->cols, &beta, out, CUDA_R_32F,
                                     w->rows, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (st != CUBLAS_STATUS_SUCCESS) cuda__fail(__func__, cublasGetStatusString(st));
    if (bias) CHECK_K(kernels_bias_add_f32(out, bias, T, w->rows, g->stream));
}

/* x (T, w.rows) += g->xb @ w^T (+ bias), bf16 weights: without a bias cuBLAS adds into x itself
 * (beta = 1: x + the f32 accumulator, rounded once, as the add kernel rounds x + the product); with one,
 * the product and its bias into add_tmp and then the sum, as matmul then add round it. */
static void cu_add_xb(cuda_backend *g, float *x, const weight *w, const float *bias, int T) {
    if (!bias) {
        cu_gemm_xb(g, x, w, NULL, T, 1.0f);
        return;
    }
    cuda__grow(g, &g->add_tmp, &g->add_tmp_bytes, (size_t)T * w->rows * sizeof(float));
    cu_gemm_xb(g, g->add_tmp, w, bias, T, 0.0f);
    CHECK_K(kernels_add_f32(x, g->add_tmp, (size_t)T * w->rows, g->stream));
}

/* Whether a product past the matrix-vector kernels takes the few-row kernel: f32 weights of at
 * most g->skinny_max_rows rows (backend_cuda.c: 8 by default, DeepSeek-V4's 4-row
 * hyper-connection product; pedantic cuBLAS took 1.3-2.4x its time there). */
static int cu_skinny(cuda_backend *g, const float *x, const weight *w) {
    return w->dt == DTYPE_F32 && w->rows <= g->skinny_max_rows && kernels_skinny_supported(x, w->data, w->rows, w->cols);
}

/* out (T, rows) = x @ w^T (+ bias), or with add out += that, through kernels_skinny_f32. */
static void cu_skinny_run(cuda_backend *g, float *out, const float *x, const weight *w, const float *bias, int T,
                          int add) {
    size_t need = kernels_skinny_work_floats(T, w->rows, w->cols) * sizeof(float);
    if (need) cuda__grow(g, &g->skinny_work, &g->skinny_work_bytes, need);
    CHECK_K(kernels_skinny_f32(out, x, w->data, bias, T, w->rows, w->cols, add, g->skinny_work,
                               g->skinny_work_bytes / sizeof(float), g->stream));
}

/* An FP8 weight as cuda_view.c packs it (fmt WEIGHT_FP8, f32 scales on the device, blocks of powers
 * of two, so their log2 is their count of trailing zeros): the kernels' description, a row view
 * (model_weight_row_view) by its first row. */
static int cu_is_fp8(const weight *w) { return w->fmt == WEIGHT_FP8; }
static kernels_fp8w cu_fp8w(const weight *w) {
    kernels_fp8w k = {w->data, w->scale, w->scale_cols, __builtin_ctz((unsigned)w->block_rows),
                      __builtin_ctz((unsigned)w->block_cols), w->row_base};
    return k;
}

/* A bf16 weight holding w's values (exact: cuda_view.c packs only matrices whose values are all
 * bf16s), in g->fp8_bf16: valid until the next expansion. */
static weight cu_fp8_expand(cuda_backend *g, const weight *w) {
    cuda__grow(g, &g->fp8_bf16, &g->fp8_bf16_bytes, (size_t)w->rows * w->cols * 2);
    kernels_fp8w k = cu_fp8w(w);
    CHECK_K(kernels_fp8_to_bf16(g->fp8_bf16, &k, w->rows, w->cols, g->stream));
    weight b = {.data = g->fp8_bf16, .dt = DTYPE_BF16, .rows = w->rows, .cols = w->cols, .fmt = WEIGHT_DENSE};
    return b;
}

static void cu_matmul_(cuda_backend *g, float *out, const float *x, const weight *w, const float *bias, int T) {
    weight wb;
    if (cu_is_fp8(w)) {
        if (T <= GEMV_MAX_TOKENS && kernels_gemv_fp8_supported(x, w->data, T, w->cols)) {
            kernels_fp8w k = cu_fp8w(w);
            CHECK_K(kernels_gemv_fp8(out, x, &k, bias, T, w->rows, w->cols, 0, g->stream));
            return;
        }
        wb = cu_fp8_expand(g, w), w = &wb;
    }
    if (w->dt != DTYPE_BF16 && w->dt != DTYPE_F32)
        cuda__fail(__func__, "weight is not a bf16 or f32 device view (prepare converts them)");
    int f32 = w->dt == DTYPE_F32;
    if (T <= GEMV_MAX_TOKENS && kernels_gemv_supported(x, w->data, T, w->cols)) { /* decode: one launch */
        if (f32) CHECK_K(kernels_gemv_f32(out, x, w->data, bias, T, w->rows, w->cols, g->stream));
        else CHECK_K(kernels_gemv_bf16(out, x, w->data, bias, T, w->rows, w->cols, g->stream));
        return;
    }
    if (cu_skinny(g, x, w)) {
        cu_skinny_run(g, out, x, w, bias, T, 0);
        return;
    }
    const float one = 1.0f, zero = 0.0f;
    if (f32) { /* f32 checkpoints: f32 operands, pedantic f32 compute (never TF32) */
        cublasStatus_t st = cublasGemmEx(g->blas, CUBLAS_OP_T, CUBLAS_OP_N, w->rows, T, w->cols, &one, w->data,
                                         CUDA_R_32F, w->cols, x, CUDA_R_32F, w->cols, &zero, out, CUDA_R_32F,
                                         w->rows, CUBLAS_COMPUTE_32F_PEDANTIC, CUBLAS_GEMM_DEFAULT);
        if (st != CUBLAS_STATUS_SUCCESS) cuda__fail(__func__, cublasGetStatusString(st));
        if (bias) CHECK_K(kernels_bias_add_f32(out, bias, T, w->rows, g->stream));
        return;
    }
    cu_x_bf16(g, x, T, w->cols);
    cu_gemm_xb(g, out, w, bias, T, 0.0f);
}

void cu_matmul(backend *be, float *out, const float *x, const weight *w, const float *bias, int T) {
    cuda_backend *g = cuda__of(be);
    cuda__pf_join(g);
    if (T <= 0) return;
    int pi = prof__begin(g, "matmul %dx%d %s", w->rows, w->cols, prof__tclass(T));
    cu_matmul_(g, out, x, w, bias, T);
    prof__end(g, pi);
}

/* backend_prefetch: decode steps only (their products stream weights; past
 * GEMV_MAX_TOKENS the products are compute-bound). The prefetch kernels are
 * forked onto g->pf after the ops queued so far, and joined before the next
 * product, so they overlap the ops between (rope, attention); the hints
 * between two products share pf_max_bytes, first come first served (a
 * weight's first rows: the products' first blocks read them). */
void cu_prefetch(backend *be, const weight *w, int T) {
    cuda_backend *g = cuda__of(be);
    if (!g->pf_max_bytes || T > GEMV_MAX_TOKENS || !w->data) return;
    if (!g->pf_pending) g->pf_left = g->pf_max_bytes; /* a window's first hint */
    size_t bytes = cuda__expert_stride(w);
    if (bytes > g->pf_left) bytes = g->pf_left;
    if (!bytes) return;
    g->pf_left -= bytes;
    if (!g->pf_pending) {
        CHECK_CUDA(cudaEventRecord(g->ev_pf_fork, g->stream));
        CHECK_CUDA(cudaStreamWaitEvent(g->pf, g->ev_pf_fork, 0));
    }
    CHECK_K(kernels_l2_prefetch(w->data, bytes, g->pf));
    CHECK_CUDA(cudaEventRecord(g->ev_pf_done, g->pf));
    g->pf_pending = 1;
}

/* ENGRAM_DSV4_FUSE=0: matmul_grouped and dsv4_qk_norm_rope issue the launches they stand for (per
 * group a copy out, the product, a copy in; the four norm and rope kernels), as DeepSeek-V4's
 * forward did before them (A/B timings of the fusion in one build). */
int cuda__dsv4_fuse(void) {
    static int on = -1;
    if (on < 0) {
        const char *v = getenv("ENGRAM_DSV4_FUSE");
        on = !(v && !strcmp(v, "0"));
    }
    return on;
}

/* The unfused grouped product: G copies out, products and copies in, through dsv4_work. */
static void cu_grouped_loop(cuda_backend *g, float *y, const float *x, size_t xs, const weight *w, int G, int T) {
    int R = w->rows / G, K = w->cols;
    cuda__grow(g, &g->dsv4_work, &g->dsv4_work_bytes, (size_t)T * (K + R) * sizeof(float));
    float *gin = g->dsv4_work, *gout = gin + (size_t)T * K;
    for (int k = 0; k < G; k++) {
        weight wk = model_weight_row_view(w, k * R, R);
        backend_copy2d(&g->base, gin, (size_t)K, x + (size_t)k * K, xs, (size_t)K, (size_t)T);
        cu_matmul_(g, gout, gin, &wk, NULL, T);
        backend_copy2d(&g->base, y + (size_t)k * R, (size_t)G * R, gout, (size_t)R, (size_t)R, (size_t)T);
    }
}

/* Decode: one matrix-vector launch over all groups, each row reading its group's columns of x.
 * More tokens: one strided batched cuBLAS product over the groups (batch g: W_g at g R K, x's
 * columns at g K, y's at g R; ldb the row stride of x, ldc G R), the activations rounded to bf16
 * once for all groups as cu_matmul rounds them, f32 weights in pedantic f32. */
void cu_matmul_grouped(backend *be, float *y, const float *x, size_t xs, const weight *w, int G, int T) {
    cuda_backend *g = cuda__of(be);
    cuda__pf_join(g);
    if (T <= 0) return;
    if (G < 1 || w->rows % G || xs < (size_t)G * w->cols || xs > INT32_MAX) cuda__fail(__func__, "bad groups");
    weight wb;
    if (cu_is_fp8(w)) {
        int R = w->rows / G, K = w->cols;
        if (cuda__dsv4_fuse() && T <= GEMV_MAX_TOKENS && xs % 4 == 0 && kernels_gemv_fp8_supported(x, w->data, T, K)) {
            int pi = prof__begin(g, "matmul_grouped fp8 %dx%dx%d %s", G, R, K, prof__tclass(T));
            kernels_fp8w k = cu_fp8w(w);
            CHECK_K(kernels_gemv_grouped_fp8(y, x, (int)xs, &k, T, G, R, K, g->stream));
            prof__end(g, pi);
            return;
        }
        if (cuda__dsv4_fuse()) wb = cu_fp8_expand(g, w), w = &wb; /* the loop's products expand their own rows */
    }
    if ((w->dt != DTYPE_BF16 && w->dt != DTYPE_F32) && !cu_is_fp8(w))
        cuda__fail(__func__, "weight is not a bf16, f32 or packed FP8 device view (prepare converts them)");
    int R = w->rows / G, K = w->cols, f32 = w->dt == DTYPE_F32;
    int pi = prof__begin(g, "matmul_grouped %dx%dx%d %s", G, R, K, prof__tclass(T));
    if (!cuda__dsv4_fuse()) {
        cu_grouped_loop(g, y, x, xs, w, G, T);
        prof__end(g, pi);
        return;
    }
    if (T <= GEMV_MAX_TOKENS && xs % 4 == 0 && kernels_gemv_supported(x, w->data, T, K)) {
        CHECK_K(kernels_gemv_grouped(y, x, (int)xs, w->data, T, G, R, K, f32, g->stream));
        prof__end(g, pi);
        return;
    }
    const float one = 1.0f, zero = 0.0f;
    const void *b = x;
    if (!f32) { /* the span from x's first element to its last row's last group */
        cu_x_bf16(g, x, 1, (int)((size_t)(T - 1) * xs + (size_t)G * K));
        b = g->xb;
    }
    cudaDataType_t dt = f32 ? CUDA_R_32F : CUDA_R_16BF;
    cublasStatus_t st = cublasGemmStridedBatchedEx(
        g->blas, CUBLAS_OP_T, CUBLAS_OP_N, R, T, K, &one, w->data, dt, K, (long long)R * K, b, dt, (int)xs, K, &zero,
        y, CUDA_R_32F, G * R, R, G, f32 ? CUBLAS_COMPUTE_32F_PEDANTIC : CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (st != CUBLAS_STATUS_SUCCESS) cuda__fail(__func__, cublasGetStatusString(st));
    prof__end(g, pi);
}

void cu_rmsnorm(backend *be, float *out, const float *x, const float *gw, int T, int d, float eps) {
    cuda_backend *g = cuda__of(be);
    CUDA_TIMED(g, CHECK_K(kernels_rmsnorm_f32(out, x, gw, T, d, eps, g->stream)), "rmsnorm d=%d", d);
}

void cu_embed(backend *be, float *out, const weight *emb, const int32_t *ids, int T) {
    cuda_backend *g = cuda__of(be);
    CUDA_TIMED(g, CHECK_K(kernels_embed(out, emb->data, cuda__dtype(emb->dt), ids, T, emb->cols, g->stream)),
               "embed");
}

void cu_rope(backend *be, float *x, const int32_t *pos, int T, int n_heads, int hd, const float *inv_freq) {
    cuda_backend *g = cuda__of(be);
    CUDA_TIMED(g, CHECK_K(kernels_rope_f32(x, pos, T, n_heads, hd, inv_freq, g->stream)), "rope");
}

void cu_kv_store(backend *be, void *kc, void *vc, const float *k, const float *v, const batch_desc *b, int kvw) {
    cuda_backend *g = cuda__of(be);
    CUDA_TIMED(g, CHECK_K(kernels_kv_store_bf16(kc, vc, k, v, b->slot, b->n_tokens, kvw, g->stream)), "kv_store");
}

void cu_attention(backend *be, float *out, const float *q, const void *kc, const void *vc, const batch_desc *b,
                  int n_heads, int n_kv, int hd, int window) {
    cuda_backend *g = cuda__of(be);
    kernels_attention_args a = {
        .out = out, .q = q, .kc = kc, .vc = vc, .pos = b->pos, .tok_seq = b->tok_seq, .seq_start = b->seq_start,
        .block_tables = b->block_tables, .h_seq_start = b->h_seq_start, .n_tokens = b->n_tokens,
        .n_seqs = b->n_seqs, .block_size = b->block_size, .max_blocks = b->max_blocks, .n_heads = n_heads,
        .n_kv = n_kv, .hd = hd, .window = window, .max_ctx = b->max_ctx,
        .no_tiled = g->attention_no_tiled, .decode_simt = g->attention_decode_simt,
    };
    size_t need = kernels_paged_attention_work_floats(&a);
    if (need) {
        size_t have = g->att_work_floats * sizeof(float);
        cuda__grow(g, (void **)&g->att_work, &have, need * sizeof(float));
        g->att_work_floats = have / sizeof(float);
    }
    a.work = g->att_work;
    a.work_floats = g->att_work_floats;
    CUDA_TIMED(g, CHECK_K(kernels_paged_attention_bf16(&a, g->stream)), "attention %s %s ctx<=%d",
               b->max_q > 1 ? "mixed" : "decode", prof__tclass(b->n_tokens),
               b->max_ctx <= 512 ? 512 : b->max_ctx <= 1024 ? 1024 : b->max_ctx <= 2048 ? 2048 : 1 << 30);
}

void cu_swiglu(backend *be, float *gate, const float *up, size_t n) {
    cuda_backend *g = cuda__of(be);
    CUDA_TIMED(g, CHECK_K(kernels_swiglu_f32(gate, up, n, g->stream)), "swiglu");
}

void cu_add(backend *be, float *x, const float *y, size_t n) {
    cuda_backend *g = cuda__of(be);
    CUDA_TIMED(g, CHECK_K(kernels_add_f32(x, y, n, g->stream)), "add");
}

void cu_gather_f32(backend *be, float *out, const float *x, const int32_t *idx, int n, int d) {
    cuda_backend *g = cuda__of(be);
    CUDA_TIMED(g, CHECK_K(kernels_gather_f32(out, x, idx, n, d, g->stream)), "gather_f32");
}

void cu_argmax(backend *be, int32_t *next, const float *logits, int T, int vocab) {
    cuda_backend *g = cuda__of(be);
    CUDA_TIMED(g, CHECK_K(kernels_argmax_f32(next, logits, T, vocab, g->stream)), "argmax");
}

void cu_gather_rows(backend *be, float *out, const weight *table, const int64_t *rows, int T, int H) {
    cuda_backend *g = cuda__of(be);
    if (!table->data) cuda__fail(__func__, "the table is not on the device (served by a host store)");
    if (table->fmt == WEIGHT_FP8) { /* DeepSeek-V4.1's rows as stored (view__fp8_rows): decoded here */
        CUDA_TIMED(g,
                   CHECK_K(kernels_gather_rows_fp8(out, table->data, table->scale, (const long long *)rows, T, H,
                                                   table->cols, g->stream)),
                   "gather_rows fp8");
        return;
    }
    CUDA_TIMED(g,
               CHECK_K(kernels_gather_rows(out, table->data, cuda__dtype(table->dt), (const long long *)rows, T, H,
                                           table->cols, g->stream)),
               "gather_rows");
}

void cu_engram_gate(backend *be, float *gate, const float *nk, const float *nq, int T, int d) {
    cuda_backend *g = cuda__of(be);
    CUDA_TIMED(g, CHECK_K(kernels_engram_gate_f32(gate, nk, nq, T, d, g->stream)), "engram_gate");
}

void cu_scale_rows(backend *be, float *out, size_t ostride, const float *x, size_t xstride, const float *s, int T,
                   int d) {
    cuda_backend *g = cuda__of(be);
    CUDA_TIMED(g, CHECK_K(kernels_scale_rows_f32(out, ostride, x, xstride, s, T, d, g->stream)), "scale_rows");
}

void cu_short_conv(backend *be, float *out, const float *in, const float *w, const batch_desc *b, size_t hist_off,
                   int C, int K, int dil) {
    cuda_backend *g = cuda__of(be);
    CUDA_TIMED(g,
               CHECK_K(kernels_short_conv_batch_f32(out, in, w, b->seq_start, b->tok_seq, b->seq_hist, hist_off,
                                                    b->n_seqs, b->n_tokens, C, K, dil, g->stream)),
               "short_conv");
}

/* ---- fused ops (backend.h, "fused") ---- */

/* Whether a decode product of w takes the matrix-vector kernels (with a
 * norm, which they fold in: its weight aligned as they load it). */
static int cuda__gemv(const float *x, const backend_norm *norm, const weight *w, int T) {
    return T <= GEMV_MAX_TOKENS && (w->dt == DTYPE_BF16 || w->dt == DTYPE_F32) &&
           kernels_gemv_supported(x, w->data, T, w->cols) && (!norm || (uintptr_t)norm->g % 16 == 0);
}

#define GLU_NORM_FOLD_MAX_COLS 2048 /* see cu_matmul_glu */

/* Which decode products fold their norm (bit 1 qkv, bit 2 gate/up):
 * ENGRAM_NORM_FOLD=0|qkv|glu runs the norm's own kernel first for the others
 * (benchmarks: the fold's gain in one build). */
static int cuda__norm_fold(int which) {
    static int on = -1;
    if (on < 0) {
        const char *v = getenv("ENGRAM_NORM_FOLD");
        on = !v ? 3 : !strcmp(v, "0") ? 0 : !strcmp(v, "qkv") ? 1 : !strcmp(v, "glu") ? 2 : 3;
    }
    return on & which;
}

/* The input of a fused product that does not fold its norm: x, or x normed
 * into norm->h by the rmsnorm op's kernel. */
static const float *cu_normed(cuda_backend *g, const float *x, const backend_norm *norm, int T, int cols) {
    if (!norm) return x;
    CHECK_K(kernels_rmsnorm_f32(norm->h, x, norm->g, T, cols, norm->eps, g->stream));
    return norm->h;
}

/* x (T, cols), normed first when norm, rounded to bf16 into g->xb for cu_gemm_xb: the norm's kernel
 * writes the bf16 rows itself (kernels_rmsnorm_bf16: the bits of the f32 norm rounded afterwards,
 * without writing and reading back norm->h), unless ENGRAM_ACT_FUSE=0. */
static void cu_xb_normed(cuda_backend *g, const float *x, const backend_norm *norm, int T, int cols) {
    if (norm && !g->act_unfused) {
        cuda__grow(g, &g->xb, &g->xb_bytes, (size_t)T * cols * 2);
        CHECK_K(kernels_rmsnorm_bf16(g->xb, x, norm->g, T, cols, norm->eps, g->stream));
        return;
    }
    cu_x_bf16(g, cu_normed(g, x, norm, T, cols), T, cols);
}

void cu_matmul_qkv(backend *be, float *q, float *k, float *v, const float *x, const backend_norm *norm,
                   const weight *wq, const weight *wk, const weight *wv, const float *bq, const float *bk,
                   const float *bv, int T) {
    cuda_backend *g = cuda__of(be);
    cuda__pf_join(g);
    if (T <= 0) return;
    int pi = prof__begin(g, "matmul qkv%s %dx%d %s", norm ? "+norm" : "", wq->rows + wk->rows + wv->rows, wq->cols,
                         prof__tclass(T));
    if (norm && !cuda__norm_fold(1)) x = cu_normed(g, x, norm, T, wq->cols), norm = NULL;
    if (cuda__gemv(x, norm, wq, T) && cuda__gemv(x, norm, wk, T) && cuda__gemv(x, norm, wv, T) &&
        wk->dt == wq->dt && wv->dt == wq->dt && wk->cols == wq->cols && wv->cols == wq->cols) {
        CHECK_K(kernels_gemv3(q, k, v, x, wq->data, wk->data, wv->data, bq, bk, bv, wq->rows, wk->rows, wv->rows, T,
                              wq->cols, norm ? norm->g : NULL, norm ? norm->eps : 0.0f, wq->dt == DTYPE_F32,
                              g->stream));
    } else if (wq->dt == DTYPE_BF16 && wk->dt == DTYPE_BF16 && wv->dt == DTYPE_BF16 && wk->cols == wq->cols &&
               wv->cols == wq->cols) { /* (normed and) rounded to bf16 once for the three */
        cu_xb_normed(g, x, norm, T, wq->cols);
        cu_gemm_xb(g, q, wq, bq, T, 0.0f);
        cu_gemm_xb(g, k, wk, bk, T, 0.0f);
        cu_gemm_xb(g, v, wv, bv, T, 0.0f);
    } else {
        x = cu_normed(g, x, norm, T, wq->cols);
        cu_matmul_(g, q, x, wq, bq, T);
        cu_matmul_(g, k, x, wk, bk, T);
        cu_matmul_(g, v, x, wv, bv, T);
    }
    prof__end(g, pi);
}

void cu_matmul_add(backend *be, float *x, const float *a, const weight *w, const float *bias, int T) {
    cuda_backend *g = cuda__of(be);
    cuda__pf_join(g);
    if (T <= 0) return;
    int pi = prof__begin(g, "matmul+add %dx%d %s", w->rows, w->cols, prof__tclass(T));
    weight wb;
    if (cu_is_fp8(w) && T <= GEMV_MAX_TOKENS && kernels_gemv_fp8_supported(a, w->data, T, w->cols)) {
        kernels_fp8w k = cu_fp8w(w);
        CHECK_K(kernels_gemv_fp8(x, a, &k, bias, T, w->rows, w->cols, 1, g->stream));
        prof__end(g, pi);
        return;
    }
    if (cu_is_fp8(w)) wb = cu_fp8_expand(g, w), w = &wb;
    if (cuda__gemv(a, NULL, w, T)) {
        CHECK_K(kernels_gemv_add(x, a, w->data, bias, T, w->rows, w->cols, w->dt == DTYPE_F32, g->stream));
    } else if (cu_skinny(g, a, w)) { /* f32, few rows: the kernel adds into x itself */
        cu_skinny_run(g, x, a, w, bias, T, 1);
    } else if (w->dt == DTYPE_BF16) {
        cu_x_bf16(g, a, T, w->cols);
        cu_add_xb(g, x, w, bias, T);
    } else { /* f32 weights: the product, then the sum, as the ops do */
        size_t n = (size_t)T * w->rows * sizeof(float);
        cuda__grow(g, &g->add_tmp, &g->add_tmp_bytes, n);
        cu_matmul_(g, g->add_tmp, a, w, bias, T);
        CHECK_K(kernels_add_f32(x, g->add_tmp, (size_t)T * w->rows, g->stream));
    }
    prof__end(g, pi);
}

void cu_matmul_glu(backend *be, float *gate, float *up, const float *x, const backend_norm *norm,
                   const weight *wg, const weight *wu, const float *bg, const float *bu, int T) {
    cuda_backend *g = cuda__of(be);
    cuda__pf_join(g);
    if (T <= 0) return;
    int pi = prof__begin(g, "matmul glu%s %dx%d %s", norm ? "+norm" : "", wg->rows, wg->cols, prof__tclass(T));
    /* the gate/up warp kernel's fold pays on short rows only: it costs its
     * registers (44 -> 56, one block less an SM) and a second row read a
     * warp, which 4096-column models did not win back (H100, bench/RESULTS.md
     * "the norm fold": llama3-1b +2%, llama3-8b -2.5%, qwen3-8b 0%) */
    if (norm && (!cuda__norm_fold(2) || wg->cols > GLU_NORM_FOLD_MAX_COLS))
        x = cu_normed(g, x, norm, T, wg->cols), norm = NULL;
    if (cuda__gemv(x, norm, wg, T) && cuda__gemv(x, norm, wu, T) && wg->dt == wu->dt && wg->rows == wu->rows &&
        wg->cols == wu->cols) {
        CHECK_K(kernels_gemv_glu(gate, x, wg->data, wu->data, bg, bu, T, wg->rows, wg->cols, norm ? norm->g : NULL,
                                 norm ? norm->eps : 0.0f, wg->dt == DTYPE_F32, g->stream));
    } else {
        if (wg->dt == DTYPE_BF16 && wu->dt == DTYPE_BF16 && wu->cols == wg->cols) { /* x to bf16 once */
            cu_xb_normed(g, x, norm, T, wg->cols);
            cu_gemm_xb(g, gate, wg, bg, T, 0.0f);
            cu_gemm_xb(g, up, wu, bu, T, 0.0f);
        } else {
            x = cu_normed(g, x, norm, T, wg->cols);
            cu_matmul_(g, gate, x, wg, bg, T);
            cu_matmul_(g, up, x, wu, bu, T);
        }
        CHECK_K(kernels_swiglu_f32(gate, up, (size_t)T * wg->rows, g->stream));
    }
    prof__end(g, pi);
}

/* The stacked gate|up product's reach: on an H100 (qwen3-4b's 2560 x 9728) it took 5% less time
 * than two products at T 128, the same at 550 and 2048, and 2-3% more at 16384 (gpu-backend-parity's
 * ffn timings, bench/RESULTS.md). */
#define GLU_STACK_MAX_TOKENS 2048

/* Whether up's rows follow gate's in device memory (cuda_view.c stacks them so on upload): one
 * product of 2 N rows then gives each token's [gate | up]. */
static int cu_glu_stacked(const weight *wg, const weight *wu) {
    return wg->dt == DTYPE_BF16 && wu->dt == DTYPE_BF16 && wu->rows == wg->rows && wu->cols == wg->cols &&
           (const char *)wu->data == (const char *)wg->data + (size_t)wg->rows * wg->cols * 2;
}

/* The feed-forward block. Past the decode kernels, on bf16 weights: the (normed) input to bf16, the
 * gate and up products into work (one (T, 2 N) product where the weights are stacked and T is at most
 * GLU_STACK_MAX_TOKENS, which cuBLAS may sum in another order than two (T, N) products; ENGRAM_GLU_STACK=0
 * always two), SwiGLU writing h as the bf16
 * operand of the down product (the bits h in f32 would round to), and the down product added into x.
 * Against matmul_glu then matmul_add that skips writing h in f32 and reading it back to round it:
 * 8 bytes an element of h (qwen3-4b: 78 KB a token a layer), and one launch. Otherwise those two ops. */
void cu_matmul_ffn(backend *be, float *x, float *work, const backend_norm *norm, const weight *wg,
                   const weight *wu, const weight *wd, const float *bg, const float *bu, const float *bd, int T) {
    cuda_backend *g = cuda__of(be);
    cuda__pf_join(g);
    if (T <= 0) return;
    int N = wg->rows, K = wg->cols;
    float *gate = work, *up = work + (size_t)T * N;
    if (g->act_unfused || T <= GEMV_MAX_TOKENS || wg->dt != DTYPE_BF16 || wu->dt != DTYPE_BF16 ||
        wd->dt != DTYPE_BF16 || wu->rows != N || wu->cols != K || wd->cols != N) {
        cu_matmul_glu(be, gate, up, x, norm, wg, wu, bg, bu, T);
        cu_matmul_add(be, x, gate, wd, bd, T);
        return;
    }
    int pi = prof__begin(g, "matmul glu%s %dx%d %s", norm ? "+norm" : "", N, K, prof__tclass(T));
    /* xb holds the input's rows, then h's: grown for both first */
    cuda__grow(g, &g->xb, &g->xb_bytes, (size_t)T * (N > K ? N : K) * 2);
    cu_xb_normed(g, x, norm, T, K);
    size_t ld = (size_t)N;
    if ((g->glu_stack == 2 || (g->glu_stack && T <= GLU_STACK_MAX_TOKENS)) && !bg && !bu && cu_glu_stacked(wg, wu)) {
        weight both = *wg;
        both.rows = 2 * N;
        cu_gemm_xb(g, work, &both, NULL, T, 0.0f);
        up = work + N, ld = 2 * (size_t)N;
    } else {
        cu_gemm_xb(g, gate, wg, bg, T, 0.0f);
        cu_gemm_xb(g, up, wu, bu, T, 0.0f);
    }
    CHECK_K(kernels_swiglu_bf16(g->xb, gate, up, T, N, ld, g->stream));
    prof__end(g, pi);
    pi = prof__begin(g, "matmul+add %dx%d %s", wd->rows, wd->cols, prof__tclass(T));
    cu_add_xb(g, x, wd, bd, T);
    prof__end(g, pi);
}

void cu_qk_rope_store(backend *be, float *q, const float *k, const float *v, void *kc, void *vc, const batch_desc *b,
                      int n_heads, int n_kv, int hd, const float *qn, const float *kn, float eps,
                      const float *inv_freq) {
    cuda_backend *g = cuda__of(be);
    /* Both kernels give the same bits; which is faster depends on the step's size (H100, stop 24:
     * 32:8 heads, T=1 warp 4.8 us, block 3.6; T=64 5.3 and 5.2; T=512 12.0 and 26.7) */
    int warp = g->qk_warp >= 0 ? g->qk_warp : b->n_tokens >= QK_WARP_MIN_T;
    CUDA_TIMED(g,
               CHECK_K(kernels_qk_rope_store_bf16(q, k, v, kc, vc, b->pos, b->slot, b->n_tokens, n_heads, n_kv, hd,
                                                  qn, kn, eps, inv_freq, warp, g->stream)),
               "qk_rope_store");
}

/* ---- sampling ---- */

_Static_assert(KERNELS_SAMPLE_DESC_WORDS == SAMPLER_DESC_WORDS, "kernels.h and sampler.h disagree");
_Static_assert(KERNELS_SAMPLE_MAX_CANDIDATES == SAMPLER_MAX_CANDIDATES, "kernels.h and sampler.h disagree");
_Static_assert(KERNELS_SAMPLE_NAN == SAMPLER_RESULT_NAN, "kernels.h and sampler.h disagree");

void cu_sample(backend *be, void *out, float *logits, const int32_t *desc, int n, int vocab, int stride, int n_cand) {
    cuda_backend *g = cuda__of(be);
    CHECK_K(kernels_sample_f32(out, logits, desc, n, vocab, stride, n_cand, g->stream));
}

void cu_sample_argmax(backend *be, int32_t *next, float *logits, const int32_t *desc, int first, int n, int vocab,
                      int stride) {
    cuda_backend *g = cuda__of(be);
    CUDA_TIMED(g, CHECK_K(kernels_sample_argmax_f32(next, logits, desc, first, n, vocab, stride, g->stream)),
               "sample_argmax");
}


/* Set by tests (exported from the plugin), each for handle be when on: every
 * token through the per-token attention kernel; per-token tokens through the
 * f32 decode kernel; DeepSeek-V4's attention through its first kernel; f32
 * products with few rows through cuBLAS (the path before the few-row kernel);
 * the products' activations through f32 (ENGRAM_ACT_FUSE=0); gate and up as
 * one product where stacked at every T (on) or never (off). */
__attribute__((visibility("default"))) void backend_cuda_set_attention_no_tiled(backend *be, int on);
void backend_cuda_set_attention_no_tiled(backend *be, int on) { cuda__of(be)->attention_no_tiled = on; }
__attribute__((visibility("default"))) void backend_cuda_set_attention_decode_simt(backend *be, int on);
void backend_cuda_set_attention_decode_simt(backend *be, int on) { cuda__of(be)->attention_decode_simt = on; }
__attribute__((visibility("default"))) void backend_cuda_set_dsv4_attention_ref(backend *be, int on);
void backend_cuda_set_dsv4_attention_ref(backend *be, int on) { cuda__of(be)->dsv4_attention_ref = on; }
__attribute__((visibility("default"))) void backend_cuda_set_matmul_no_skinny(backend *be, int on);
void backend_cuda_set_matmul_no_skinny(backend *be, int on) {
    cuda__of(be)->skinny_max_rows = on ? 0 : KERNELS_SKINNY_MAX_ROWS;
}
/* ENGRAM_ACT_FUSE=0 and the stacked gate|up product for handle be (the paths against each other in one program) */
__attribute__((visibility("default"))) void backend_cuda_set_act_unfused(backend *be, int on);
void backend_cuda_set_act_unfused(backend *be, int on) { cuda__of(be)->act_unfused = on; }
/* qk_rope_store's warp-per-head kernel (1) or the first (0) for handle be */
__attribute__((visibility("default"))) void backend_cuda_set_qk_warp(backend *be, int on);
void backend_cuda_set_qk_warp(backend *be, int on) { cuda__of(be)->qk_warp = on; } /* 1, 0 or -1 (by T) */
__attribute__((visibility("default"))) void backend_cuda_set_glu_stack(backend *be, int on);
void backend_cuda_set_glu_stack(backend *be, int on) { cuda__of(be)->glu_stack = on ? 2 : 0; }

void cuda__ops_free(cuda_backend *g) {
    if (g->xb) cudaFree(g->xb);
    if (g->add_tmp) cudaFree(g->add_tmp);
    if (g->skinny_work) cudaFree(g->skinny_work);
    if (g->att_work) cudaFree(g->att_work);
    if (g->moe_work) cudaFree(g->moe_work);
    if (g->dsv4_work) cudaFree(g->dsv4_work);
    if (g->fp8_bf16) cudaFree(g->fp8_bf16);
    g->xb = g->add_tmp = g->moe_work = g->dsv4_work = g->skinny_work = g->fp8_bf16 = NULL;
    g->moe_work_bytes = g->dsv4_work_bytes = g->skinny_work_bytes = g->fp8_bf16_bytes = 0;
    g->att_work = NULL;
    g->xb_bytes = g->add_tmp_bytes = g->att_work_floats = 0;
}
