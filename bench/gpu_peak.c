/* The GPU's two ceilings and the engine's matrix products against them
 * (built with ENGRAM_CUDA only; see bench/RESULTS.md):
 *   copy   cudaMemcpy device to device of 1 GiB, median of 20 (bytes read
 *          plus bytes written over the time, as METHOD.md counts a copy)
 *   gemm   cuBLAS bf16 8192^3 (f32 accumulation, bf16 and f32 output),
 *          median of 20, random inputs; then cuBLASLt FP8 e4m3 8192^3 (bf16
 *          output), with one scale per tensor and with DeepSeek's block
 *          scales (128x128 blocks of the weight, 1x128 of the activations,
 *          f32), the rates the expert products are held against
 *   model  one decoder layer's seven products of a model shape (q, k, v, o,
 *          gate, up, down; bf16 weights) through the CUDA backend's matmul op,
 *          as the forward pass calls it (activation rounding included), at
 *          several token counts T: TFLOP/s against the gemm rate and weight
 *          GB/s against the copy rate.
 *   ops    each op of one llama3-8b decode layer (T = 1, context 272) alone,
 *          100 back-to-back calls recorded as one CUDA graph through the
 *          backend's step_begin/step_end and replayed: us per call with no
 *          launch gaps from the host.
 *   build/bench-gpu_peak [llama3-8b|qwen3-8b|llama3-1b|qwen3-4b|ops]... */
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/backend/backend.h"

#define CK(x)                                                                                               \
    do {                                                                                                    \
        cudaError_t e_ = (x);                                                                               \
        if (e_ != cudaSuccess) {                                                                            \
            fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, cudaGetErrorString(e_));                     \
            exit(1);                                                                                        \
        }                                                                                                   \
    } while (0)

static uint64_t rs = 0x9e3779b97f4a7c15ull;
static float frand(void) { /* [-1, 1) */
    rs ^= rs << 13, rs ^= rs >> 7, rs ^= rs << 17;
    return (float)((rs >> 11) * 0x1.0p-53 * 2.0 - 1.0);
}
static uint16_t bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16);
}
static void *dev_rand_bf16(size_t n, float scale) {
    uint16_t *h = malloc(n * 2);
    if (!h) exit(1);
    for (size_t i = 0; i < n; i++) h[i] = bf16(scale * frand());
    void *d;
    CK(cudaMalloc(&d, n * 2));
    CK(cudaMemcpy(d, h, n * 2, cudaMemcpyHostToDevice));
    free(h);
    return d;
}
static void *dev_rand_f32(size_t n, float scale) {
    float *h = malloc(n * 4);
    if (!h) exit(1);
    for (size_t i = 0; i < n; i++) h[i] = scale * frand();
    void *d;
    CK(cudaMalloc(&d, n * 4));
    CK(cudaMemcpy(d, h, n * 4, cudaMemcpyHostToDevice));
    free(h);
    return d;
}
static int cmp_f(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}
static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double copy_rate(void) {
    size_t bytes = (size_t)1 << 30;
    void *a, *b;
    CK(cudaMalloc(&a, bytes));
    CK(cudaMalloc(&b, bytes));
    CK(cudaMemset(a, 1, bytes));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    float ms[20];
    for (int i = 0; i < 3; i++) CK(cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice));
    for (int i = 0; i < 20; i++) {
        CK(cudaEventRecord(e0, 0));
        CK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, 0));
        CK(cudaEventRecord(e1, 0));
        CK(cudaEventSynchronize(e1));
        CK(cudaEventElapsedTime(&ms[i], e0, e1));
    }
    qsort(ms, 20, sizeof(float), cmp_f);
    double gbs = 2.0 * bytes / (ms[10] * 1e-3) * 1e-9;
    printf("copy: cudaMemcpy D2D 1 GiB: median %.3f ms (min %.3f, max %.3f), %.0f GB/s read + write "
           "(%.0f GB/s counting one direction)\n", ms[10], ms[0], ms[19], gbs, gbs / 2);
    CK(cudaFree(a));
    CK(cudaFree(b));
    cudaEventDestroy(e0), cudaEventDestroy(e1);
    return gbs;
}

/* One product, run by f(ctx) (returns its cuBLAS status): 3 warm-up calls,
 * then 20 timed with events; the sorted times in ms[20]. */
typedef cublasStatus_t (*gemm_fn)(void *ctx);
static void gemm_times(gemm_fn f, void *ctx, const char *what, float ms[20]) {
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    for (int i = -3; i < 20; i++) {
        CK(cudaEventRecord(e0, 0));
        cublasStatus_t st = f(ctx);
        if (st != CUBLAS_STATUS_SUCCESS) {
            fprintf(stderr, "%s: %s\n", what, cublasGetStatusString(st));
            exit(1);
        }
        CK(cudaEventRecord(e1, 0));
        CK(cudaEventSynchronize(e1));
        if (i >= 0) CK(cudaEventElapsedTime(&ms[i], e0, e1));
    }
    qsort(ms, 20, sizeof(float), cmp_f);
    cudaEventDestroy(e0), cudaEventDestroy(e1);
}

typedef struct {
    cublasHandle_t h;
    int n;
    cudaDataType ct;
    void *A, *B, *C;
} gemm_bf16;
static cublasStatus_t run_gemm_bf16(void *ctx) {
    gemm_bf16 *g = ctx;
    const float one = 1.0f, zero = 0.0f;
    return cublasGemmEx(g->h, CUBLAS_OP_T, CUBLAS_OP_N, g->n, g->n, g->n, &one, g->A, CUDA_R_16BF, g->n, g->B,
                        CUDA_R_16BF, g->n, &zero, g->C, g->ct, g->n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
}

static double gemm_rate(int n, cudaDataType ct) {
    gemm_bf16 g = {.n = n, .ct = ct};
    if (cublasCreate(&g.h) != CUBLAS_STATUS_SUCCESS) exit(1);
    g.A = dev_rand_bf16((size_t)n * n, 0.05f), g.B = dev_rand_bf16((size_t)n * n, 1.0f);
    CK(cudaMalloc(&g.C, (size_t)n * n * (ct == CUDA_R_32F ? 4 : 2)));
    float ms[20];
    gemm_times(run_gemm_bf16, &g, "cublasGemmEx", ms);
    double tf = 2.0 * n * n * (double)n / (ms[10] * 1e-3) * 1e-12;
    printf("gemm: cuBLAS bf16 %d^3, f32 accumulation, %s output: median %.3f ms (min %.3f), %.1f TFLOP/s\n", n,
           ct == CUDA_R_32F ? "f32" : "bf16", ms[10], ms[0], tf);
    cudaFree(g.A), cudaFree(g.B), cudaFree(g.C);
    cublasDestroy(g.h);
    return tf;
}

typedef struct {
    cublasLtHandle_t lt;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t la, lb, ld;
    void *A, *B, *D, *ws;
    size_t wsz;
    const cublasLtMatmulAlgo_t *algo;
} gemm_fp8;
static cublasStatus_t run_gemm_fp8(void *ctx) {
    gemm_fp8 *g = ctx;
    const float one = 1.0f, zero = 0.0f;
    return cublasLtMatmul(g->lt, g->op, &one, g->A, g->la, g->B, g->lb, &zero, g->D, g->ld, g->D, g->ld, g->algo,
                          g->ws, g->wsz, 0);
}

/* cuBLASLt e4m3 x e4m3 -> bf16, n^3, f32 accumulation: the weight A (n, n)
 * row-major (so op T on its column-major view, the layout Hopper's FP8
 * kernels take), the activations B (n tokens of n). blocked: A scaled per
 * 128x128 block, B per 128 values of a token (DeepSeek's scheme), all scales
 * 1; else one scale per tensor. Returns TFLOP/s, or 0 when cuBLASLt offers
 * no algorithm for it (printed). */
static double gemm_rate_fp8(int n, int blocked) {
    cublasLtHandle_t lt;
    if (cublasLtCreate(&lt) != CUBLAS_STATUS_SUCCESS) exit(1);
    size_t nn = (size_t)n * n, ns = nn / 128 + n;
    uint8_t *hq = malloc(nn);
    float *hs = malloc(ns * sizeof(float));
    for (size_t i = 0; i < nn; i++) hq[i] = (uint8_t)((rs = rs * 6364136223846793005ull + 1) >> 56) & 0x77; /* no NaN */
    for (size_t i = 0; i < ns; i++) hs[i] = 1.0f;
    void *A, *B, *D, *sa, *sb, *ws;
    size_t wsz = 64u << 20;
    CK(cudaMalloc(&A, nn));
    CK(cudaMalloc(&B, nn));
    CK(cudaMalloc(&D, nn * 2));
    CK(cudaMalloc(&sa, ns * sizeof(float)));
    CK(cudaMalloc(&sb, ns * sizeof(float)));
    CK(cudaMalloc(&ws, wsz));
    CK(cudaMemcpy(A, hq, nn, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(B, hq, nn, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(sa, hs, ns * sizeof(float), cudaMemcpyHostToDevice));
    CK(cudaMemcpy(sb, hs, ns * sizeof(float), cudaMemcpyHostToDevice));
    free(hq), free(hs);
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t la, lb, ld;
    cublasOperation_t tA = CUBLAS_OP_T, tB = CUBLAS_OP_N;
    cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &tA, sizeof tA);
    cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tB, sizeof tB);
    cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &sa, sizeof sa);
    cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &sb, sizeof sb);
    if (blocked) {
        int ma = CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F, mb = CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
        cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &ma, sizeof ma);
        cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &mb, sizeof mb);
    }
    cublasLtMatrixLayoutCreate(&la, CUDA_R_8F_E4M3, n, n, n);
    cublasLtMatrixLayoutCreate(&lb, CUDA_R_8F_E4M3, n, n, n);
    cublasLtMatrixLayoutCreate(&ld, CUDA_R_16BF, n, n, n);
    cublasLtMatmulPreference_t pref;
    cublasLtMatmulPreferenceCreate(&pref);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsz, sizeof wsz);
    cublasLtMatmulHeuristicResult_t hr;
    int got = 0;
    cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(lt, op, la, lb, ld, ld, pref, 1, &hr, &got);
    const char *what = blocked ? "block scales 128x128 / 1x128" : "one scale per tensor";
    double tf = 0.0;
    if (st != CUBLAS_STATUS_SUCCESS || got == 0) {
        printf("gemm: cuBLASLt fp8 e4m3 %d^3, %s: no algorithm (%s)\n", n, what, cublasGetStatusString(st));
    } else {
        gemm_fp8 g = {lt, op, la, lb, ld, A, B, D, ws, wsz, &hr.algo};
        float ms[20];
        gemm_times(run_gemm_fp8, &g, "cublasLtMatmul", ms);
        tf = 2.0 * n * n * (double)n / (ms[10] * 1e-3) * 1e-12;
        printf("gemm: cuBLASLt fp8 e4m3 %d^3, %s, f32 accumulation, bf16 output: median %.3f ms (min %.3f), %.1f "
               "TFLOP/s\n", n, what, ms[10], ms[0], tf);
    }
    cublasLtMatmulPreferenceDestroy(pref);
    cublasLtMatrixLayoutDestroy(la), cublasLtMatrixLayoutDestroy(lb), cublasLtMatrixLayoutDestroy(ld);
    cublasLtMatmulDescDestroy(op);
    cudaFree(A), cudaFree(B), cudaFree(D), cudaFree(sa), cudaFree(sb), cudaFree(ws);
    cublasLtDestroy(lt);
    return tf;
}

typedef struct {
    const char *name;
    int d, q, kv, ff;
} shape;

static const shape shapes[] = {
    {"llama3-8b", 4096, 4096, 1024, 14336},
    {"qwen3-8b", 4096, 4096, 1024, 12288},
    {"qwen3-4b", 2560, 4096, 1024, 9728},
    {"llama3-1b", 2048, 2048, 512, 8192},
};

static void model_layer(const shape *s, double peak_tf, double copy_gbs) {
    char err[256];
    backend *g = backend_cuda_create(NULL, err, sizeof(err));
    if (!g) {
        fprintf(stderr, "backend_cuda: %s\n", err);
        exit(1);
    }
    int rows[7] = {s->q, s->kv, s->kv, s->d, s->ff, s->ff, s->d};
    int cols[7] = {s->d, s->d, s->d, s->q, s->d, s->d, s->ff};
    weight w[7];
    size_t params = 0;
    for (int i = 0; i < 7; i++) {
        w[i] = (weight){.data = dev_rand_bf16((size_t)rows[i] * cols[i], 0.02f), .dt = DTYPE_BF16, .rows = rows[i],
                        .cols = cols[i]};
        params += (size_t)rows[i] * cols[i];
    }
    const int Ts[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192};
    int maxT = 8192, widest = s->ff > s->q ? s->ff : s->q;
    float *x = dev_rand_f32((size_t)maxT * widest, 1.0f), *out;
    CK(cudaMalloc((void **)&out, (size_t)maxT * widest * 4));
    printf("model %s: one layer's 7 products, %.1f M bf16 weights (%.1f MB)\n", s->name, params * 1e-6,
           params * 2e-6);
    for (size_t ti = 0; ti < sizeof(Ts) / sizeof(Ts[0]); ti++) {
        int T = Ts[ti];
        for (int i = 0; i < 7; i++) backend_matmul(g, out, x, &w[i], NULL, T);
        CK(cudaDeviceSynchronize());
        float ts[9];
        int iters = T <= 64 ? 100 : T <= 1024 ? 20 : 5;
        for (int r = 0; r < 9; r++) {
            double t0 = now();
            for (int it = 0; it < iters; it++)
                for (int i = 0; i < 7; i++) backend_matmul(g, out, x, &w[i], NULL, T);
            CK(cudaDeviceSynchronize());
            ts[r] = (float)((now() - t0) / iters);
        }
        qsort(ts, 9, sizeof(float), cmp_f);
        double dt = ts[4], tf = 2.0 * T * params / dt * 1e-12, gbs = params * 2.0 / dt * 1e-9;
        printf("model %s T=%-5d %9.1f us/layer  %6.1f TFLOP/s (%5.1f%% of gemm)  %6.0f GB/s of weights "
               "(%5.1f%% of copy)\n", s->name, T, dt * 1e6, tf, 100 * tf / peak_tf, gbs, 100 * gbs / copy_gbs);
    }
    for (int i = 0; i < 7; i++) cudaFree((void *)w[i].data);
    cudaFree(x), cudaFree(out);
    backend_destroy(g);
}

/* ---- single ops of a decode step ---- */

static backend *G;
typedef void (*op_fn)(void *ctx);
static double time_op(const char *name, op_fn f, void *ctx) {
    uint64_t key[2] = {(uintptr_t)f, 0xfeed};
    for (int pass = 0; pass < 3; pass++) { /* plain (again if scratch grew), then recorded */
        if (backend_step_begin(G, key, sizeof(key))) break;
        for (int i = 0; i < 100; i++) f(ctx);
        backend_step_end(G);
    }
    CK(cudaDeviceSynchronize());
    float ts[7];
    for (int r = 0; r < 7; r++) {
        double t0 = now();
        for (int it = 0; it < 10; it++)
            if (!backend_step_begin(G, key, sizeof(key))) {
                fprintf(stderr, "%s: not recorded\n", name);
                exit(1);
            }
        CK(cudaDeviceSynchronize());
        ts[r] = (float)((now() - t0) / 1000);
    }
    qsort(ts, 7, sizeof(float), cmp_f);
    printf("op %-28s %7.2f us\n", name, ts[3] * 1e6);
    return ts[3];
}

/* The products' weights come in NW copies used in turn, so 100 calls in a
 * graph read more than the 50 MB L2 holds (one 4096x4096 bf16 matrix fits). */
#define NW 8
static struct {
    float *x, *h, *q, *k, *v, *att, *gate, *up, *tmp, *g;
    void *kc, *vc;
    batch_desc b;
    weight wq[NW], wk[NW], wv[NW], wgate[2], wup[2], wdown[2];
    int iq, ik, ig, id;
    float *inv;
} D;
static void op_rmsnorm(void *c) { (void)c; backend_rmsnorm(G, D.h, D.x, D.g, 1, 4096, 1e-5f); }
static void op_qnorm(void *c) { (void)c; backend_rmsnorm(G, D.q, D.q, D.g, 32, 128, 1e-5f); }
static void op_rope_q(void *c) { (void)c; backend_rope(G, D.q, D.b.pos, 1, 32, 128, D.inv); }
static void op_rope_k(void *c) { (void)c; backend_rope(G, D.k, D.b.pos, 1, 8, 128, D.inv); }
static void op_kv_store(void *c) { (void)c; backend_kv_store(G, D.kc, D.vc, D.k, D.v, &D.b, 1024); }
static void op_attention(void *c) { (void)c; backend_attention(G, D.att, D.q, D.kc, D.vc, &D.b, 32, 8, 128, 0); }
static void op_add(void *c) { (void)c; backend_add(G, D.x, D.tmp, 4096); }
static void op_swiglu(void *c) { (void)c; backend_swiglu(G, D.gate, D.up, 14336); }
static void op_mm_q(void *c) { (void)c; backend_matmul(G, D.q, D.h, &D.wq[D.iq++ % NW], NULL, 1); }
static void op_mm_k(void *c) { (void)c; backend_matmul(G, D.k, D.h, &D.wk[D.ik++ % NW], NULL, 1); }
static void op_mm_gate(void *c) { (void)c; backend_matmul(G, D.gate, D.h, &D.wgate[D.ig++ % 2], NULL, 1); }
static void op_mm_down(void *c) { (void)c; backend_matmul(G, D.tmp, D.gate, &D.wdown[D.id++ % 2], NULL, 1); }
/* the fused ops the forward pass calls at T <= 2 */
static void op_qkv(void *c) {
    (void)c;
    int i = D.iq++ % NW;
    backend_matmul_qkv(G, D.q, D.k, D.v, D.h, NULL, &D.wq[i], &D.wk[i], &D.wv[i], NULL, NULL, NULL, 1);
}
static void op_o_add(void *c) { (void)c; backend_matmul_add(G, D.x, D.att, &D.wq[D.iq++ % NW], NULL, 1); }
static void op_glu(void *c) {
    (void)c;
    int i = D.ig++ % 2;
    backend_matmul_glu(G, D.gate, D.up, D.h, NULL, &D.wgate[i], &D.wup[i], NULL, NULL, 1);
}
/* the same with the RMSNorm before them folded in, as the forward pass calls them */
static void op_norm_qkv(void *c) {
    (void)c;
    int i = D.iq++ % NW;
    backend_norm n = {D.g, 1e-5f, D.h};
    backend_matmul_qkv(G, D.q, D.k, D.v, D.x, &n, &D.wq[i], &D.wk[i], &D.wv[i], NULL, NULL, NULL, 1);
}
static void op_norm_glu(void *c) {
    (void)c;
    int i = D.ig++ % 2;
    backend_norm n = {D.g, 1e-5f, D.h};
    backend_matmul_glu(G, D.gate, D.up, D.x, &n, &D.wgate[i], &D.wup[i], NULL, NULL, 1);
}
static void op_down_add(void *c) { (void)c; backend_matmul_add(G, D.x, D.gate, &D.wdown[D.id++ % 2], NULL, 1); }

static void decode_ops(void) {
    char err[256];
    if (!(G = backend_cuda_create(NULL, err, sizeof(err)))) {
        fprintf(stderr, "backend_cuda: %s\n", err);
        exit(1);
    }
    D.x = dev_rand_f32(4096, 1), D.h = dev_rand_f32(4096, 1), D.q = dev_rand_f32(4096, 1);
    D.k = dev_rand_f32(1024, 1), D.v = dev_rand_f32(1024, 1), D.att = dev_rand_f32(4096, 1);
    D.gate = dev_rand_f32(14336, 1), D.up = dev_rand_f32(14336, 1), D.tmp = dev_rand_f32(4096, 1);
    D.g = dev_rand_f32(4096, 1), D.inv = dev_rand_f32(64, 0.5f);
    D.kc = dev_rand_bf16(512 * 1024, 1), D.vc = dev_rand_bf16(512 * 1024, 1);
    /* one sequence at position 271, blocks 0..31 of 16, tables bucketed to 32 blocks */
    int host[1 + 1 + 1 + 2 + 1 + 32];
    int *pos = host, *slot = host + 1, *tok = host + 2, *ss = host + 3, *p0 = host + 5, *bt = host + 6;
    static int h_ss[2] = {0, 1}, h_p0[1] = {271};
    pos[0] = 271, slot[0] = 271, tok[0] = 0, ss[0] = 0, ss[1] = 1, p0[0] = 271;
    for (int i = 0; i < 32; i++) bt[i] = i;
    int *d;
    CK(cudaMalloc((void **)&d, sizeof(host)));
    CK(cudaMemcpy(d, host, sizeof(host), cudaMemcpyHostToDevice));
    D.b = (batch_desc){.n_seqs = 1, .n_tokens = 1, .block_size = 16, .max_blocks = 32, .max_q = 1, .max_ctx = 512,
                       .pos = d, .slot = d + 1, .tok_seq = d + 2, .seq_start = d + 3, .seq_pos0 = d + 5,
                       .block_tables = d + 6, .h_seq_start = h_ss, .h_seq_pos0 = h_p0};
    for (int i = 0; i < NW; i++) {
        D.wq[i] = (weight){.data = dev_rand_bf16(4096 * 4096, 0.02f), .dt = DTYPE_BF16, .rows = 4096, .cols = 4096};
        D.wk[i] = (weight){.data = dev_rand_bf16(1024 * 4096, 0.02f), .dt = DTYPE_BF16, .rows = 1024, .cols = 4096};
        D.wv[i] = (weight){.data = dev_rand_bf16(1024 * 4096, 0.02f), .dt = DTYPE_BF16, .rows = 1024, .cols = 4096};
    }
    for (int i = 0; i < 2; i++) {
        D.wgate[i] = (weight){.data = dev_rand_bf16(14336 * 4096, 0.02f), .dt = DTYPE_BF16, .rows = 14336,
                              .cols = 4096};
        D.wup[i] = (weight){.data = dev_rand_bf16(14336 * 4096, 0.02f), .dt = DTYPE_BF16, .rows = 14336, .cols = 4096};
        D.wdown[i] = (weight){.data = dev_rand_bf16(4096 * 14336, 0.02f), .dt = DTYPE_BF16, .rows = 4096,
                              .cols = 14336};
    }
    const char *gk = getenv("ENGRAM_GEMV");
    printf("ops of one llama3-8b decode layer (T = 1, context 272), each 100 x in one graph "
           "(weights in %d copies, read in turn; ENGRAM_GEMV=%s):\n", NW, gk ? gk : "(default)");
    double sum = 0, mm = 0;
    double rn = time_op("rmsnorm (1, 4096) x2", op_rmsnorm, NULL);
    sum += 2 * rn;
    time_op("rmsnorm per head (32, 128)", op_qnorm, NULL); /* qwen3 only */
    sum += time_op("rope q (32 heads)", op_rope_q, NULL);
    sum += time_op("rope k (8 heads)", op_rope_k, NULL);
    sum += time_op("kv_store", op_kv_store, NULL);
    sum += time_op("attention (split + merge)", op_attention, NULL);
    sum += 2 * time_op("add (4096) x2", op_add, NULL);
    sum += time_op("swiglu (14336)", op_swiglu, NULL);
    mm += 2 * time_op("matmul q/o 4096x4096 x2", op_mm_q, NULL);
    mm += 2 * time_op("matmul k/v 1024x4096 x2", op_mm_k, NULL);
    mm += 2 * time_op("matmul gate/up 14336x4096 x2", op_mm_gate, NULL);
    mm += time_op("matmul down 4096x14336", op_mm_down, NULL);
    printf("op sum per layer: products %.1f us, the rest %.1f us\n", mm * 1e6, sum * 1e6);
    /* the fused products of the forward pass: bytes of weights over the time */
    double fq = time_op("fused qkv 6144x4096", op_qkv, NULL), fo = time_op("fused o + add 4096x4096", op_o_add, NULL);
    double fg = time_op("fused gate/up glu 2x14336x4096", op_glu, NULL);
    double fd = time_op("fused down + add 4096x14336", op_down_add, NULL);
    printf("fused products: qkv %.0f, o %.0f, glu %.0f, down %.0f GB/s of weights; %.1f us per layer\n",
           6144.0 * 4096 * 2 / fq * 1e-9, 4096.0 * 4096 * 2 / fo * 1e-9, 2 * 14336.0 * 4096 * 2 / fg * 1e-9,
           4096.0 * 14336 * 2 / fd * 1e-9, (fq + fo + fg + fd) * 1e6);
    /* the norms folded into the products that read them, against a norm kernel and the product */
    double nq = time_op("fused rmsnorm + qkv 6144x4096", op_norm_qkv, NULL);
    double ng = time_op("fused rmsnorm + gate/up glu", op_norm_glu, NULL);
    printf("norms folded: qkv %.2f us against %.2f + %.2f, glu %.2f against %.2f + %.2f; %.2f us per layer saved\n",
           nq * 1e6, rn * 1e6, fq * 1e6, ng * 1e6, rn * 1e6, fg * 1e6, (2 * rn + fq + fg - nq - ng) * 1e6);
    backend_destroy(G);
    G = NULL;
}

int main(int argc, char **argv) {
    struct cudaDeviceProp p;
    CK(cudaGetDeviceProperties(&p, 0));
    printf("device: %s, %d SMs, %.1f GiB\n", p.name, p.multiProcessorCount, p.totalGlobalMem / 1073741824.0);
    double gbs = copy_rate();
    gemm_rate(8192, CUDA_R_16BF);
    double tf = gemm_rate(8192, CUDA_R_32F);
    gemm_rate_fp8(8192, 0);
    gemm_rate_fp8(8192, 1);
    for (int a = 1; a < argc; a++)
        if (!strcmp(argv[a], "ops")) decode_ops();
    for (int a = 1; a < argc; a++)
        for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++)
            if (!strcmp(argv[a], shapes[i].name)) model_layer(&shapes[i], tf, gbs);
    return 0;
}
