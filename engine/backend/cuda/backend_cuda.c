/* The CUDA backend: backend memory is device memory, every op is issued in
 * order on the handle's stream (see cuda_ops.c for how products run, and
 * cuda_view.c for how weights are uploaded). The KV cache holds bf16.
 * Built only with ENGRAM_CUDA, as its own shared library (libengram-cuda.so)
 * that backend.c loads on demand: a program that never asks for CUDA never
 * loads cuBLAS, and a CUDA build still starts on a machine without CUDA. It
 * calls back into the program (dtype_size), whose symbols are exported.
 * This file makes and frees the handle and holds the memory ops; the files
 * beside it each own one concern (cuda_internal.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/backend/cuda/cuda_internal.h"

void cuda__fail(const char *op, const char *what) {
    fprintf(stderr, "backend_cuda: %s: %s\n", op, what);
    abort();
}

/* ---- memory ---- */

static void *cu_alloc(backend *be, size_t bytes) {
    cuda_backend *g = cuda__of(be);
    void *p = NULL;
    if (bytes == 0) bytes = 1;
    if (cuda__malloc((void **)&p, bytes) != cudaSuccess) {
        cudaGetLastError(); /* clear the allocation error */
        return NULL;
    }
    CHECK_CUDA(cudaMemsetAsync(p, 0, bytes, g->stream));
    return p;
}

static void cu_free(backend *be, void *p) {
    cuda_backend *g = cuda__of(be);
    if (!p) return;
    graphs__clear(g);
    CHECK_CUDA(cudaFree(p));
}

static void cu_mem_info(backend *be, size_t *free_bytes, size_t *total_bytes) {
    cuda_backend *g = cuda__of(be);
    CHECK_CUDA(cudaStreamSynchronize(g->stream)); /* frees and allocations queued before count */
    CHECK_CUDA(cudaMemGetInfo(free_bytes, total_bytes));
}

static void cu_upload(backend *be, void *dst, const void *host, size_t bytes) {
    cuda_backend *g = cuda__of(be);
    int pi = prof__begin(g, "upload");
    if (bytes) CHECK_CUDA(cudaMemcpyAsync(dst, host, bytes, cudaMemcpyHostToDevice, g->stream));
    prof__end(g, pi);
}

static void cu_download(backend *be, void *host, const void *src, size_t bytes) {
    cuda_backend *g = cuda__of(be);
    int pi = prof__begin(g, "download");
    if (bytes) CHECK_CUDA(cudaMemcpyAsync(host, src, bytes, cudaMemcpyDeviceToHost, g->stream));
    prof__end(g, pi);
    CHECK_CUDA(cudaStreamSynchronize(g->stream));
}

static void cu_copy2d(backend *be, float *dst, size_t dpitch, const float *src, size_t spitch, size_t width,
                      size_t rows) {
    cuda_backend *g = cuda__of(be);
    if (!width || !rows) return;
    CHECK_CUDA(cudaMemcpy2DAsync(dst, dpitch * sizeof(float), src, spitch * sizeof(float), width * sizeof(float),
                                 rows, cudaMemcpyDeviceToDevice, g->stream));
}

/* Waits for the handle's work, prints its profile (when on) and frees all
 * it holds; accepts a handle whose creation stopped part way. */
static void cu_destroy(backend *be) {
    cuda_backend *g = cuda__of(be);
    if (g->stream) cudaStreamSynchronize(g->stream);
    if (g->copy) cudaStreamSynchronize(g->copy);
    if (g->pf) cudaStreamSynchronize(g->pf);
    prof__finish(g);
    g->capturing = -1;
    graphs__clear(g);
    cuda__ops_free(g);
    if (g->blas) cublasDestroy(g->blas);
    if (g->blas_ws) cudaFree(g->blas_ws);
    cuda__fetch_free(g);
    if (g->ev_pf_fork) cudaEventDestroy(g->ev_pf_fork);
    if (g->ev_pf_done) cudaEventDestroy(g->ev_pf_done);
    if (g->pf) cudaStreamDestroy(g->pf);
    if (g->stream) cudaStreamDestroy(g->stream);
    free(g);
}

static const backend_ops cuda_ops = {
    .name = "cuda",
    .destroy = cu_destroy,
    .kv_elem_bytes = 2,
    .alloc = cu_alloc,
    .free = cu_free,
    .upload = cu_upload,
    .download = cu_download,
    .copy2d = cu_copy2d,
    .mem_info = cu_mem_info,
    .prepare = cu_prepare,
    .release = cu_release,
    .matmul = cu_matmul,
    .prefetch = cu_prefetch,
    .matmul_grouped = cu_matmul_grouped,
    .rmsnorm = cu_rmsnorm,
    .embed = cu_embed,
    .rope = cu_rope,
    .kv_store = cu_kv_store,
    .attention = cu_attention,
    .swiglu = cu_swiglu,
    .moe_route = cu_moe_route,
    .moe_experts = cu_moe_experts,
    .moe_experts_add = cu_moe_experts_add,
    .rmsnorm_plain = cu_rmsnorm_plain,
    .hc_split = cu_hc_split,
    .hc_merge = cu_hc_merge,
    .hc_head = cu_hc_head,
    .hc_weights = cu_hc_weights,
    .hc_collapse = cu_hc_collapse,
    .rope_tail = cu_rope_tail,
    .dsv4_compress = cu_dsv4_compress,
    .dsv4_index = cu_dsv4_index,
    .dsv4_attention = cu_dsv4_attention,
    .swiglu_limit = cu_swiglu_limit,
    .dsv41_compress = cu_dsv41_compress,
    .dsv41_index_keys = cu_dsv41_index_keys,
    .fake_quant_fp4 = cu_fake_quant_fp4,
    .dsv41_index = cu_dsv41_index,
    .engram_v41_gate = cu_engram_v41_gate,
    .add = cu_add,
    .gather_f32 = cu_gather_f32,
    .argmax = cu_argmax,
    .gather_rows = cu_gather_rows,
    .engram_gate = cu_engram_gate,
    .scale_rows = cu_scale_rows,
    .short_conv = cu_short_conv,
    .host_alloc = cu_host_alloc,
    .host_free = cu_host_free,
    .fetch_mark = cu_fetch_mark,
    .fetch = cu_fetch,
    .fetch_wait = cu_fetch_wait,
    .fetch_release = cu_fetch_release,
    .fetch_sync = cu_fetch_sync,
    .decode_rows = cu_decode_rows,
    .scatter_rows = cu_scatter_rows,
    .collect_rows = cu_collect_rows,
    .fetch_back = cu_fetch_back,
    .step_begin = cu_step_begin,
    .step_end = cu_step_end,
    .matmul_qkv = cu_matmul_qkv,
    .matmul_add = cu_matmul_add,
    .matmul_glu = cu_matmul_glu,
    .matmul_ffn = cu_matmul_ffn,
    .qk_rope_store = cu_qk_rope_store,
    .dsv4_qk_norm_rope = cu_dsv4_qk_norm_rope,
    .sample = cu_sample,
    .sample_argmax = cu_sample_argmax,
    .coll_id = cu_coll_id,
    .coll_init = cu_coll_init,
    .coll_free = cu_coll_free,
    .all_reduce_sum = cu_all_reduce_sum,
    .all_gather = cu_all_gather,
};

/* A failed CUDA call while making a handle: err says why. */
static int cuda__init_fail(const backend_params *p, char *err, size_t errlen, cudaError_t e) {
    snprintf(err, errlen, "CUDA device %d: %s", p->cuda_device, cudaGetErrorString(e));
    return -1;
}

/* The device p names, made this thread's current one (the process's CUDA
 * context on it is the device's primary context, shared by every handle on
 * it), then the handle's streams, events, cuBLAS handle and workspace.
 * Returns 0, or -1 with a message in err. */
static int cu_init(cuda_backend *g, const backend_params *p, char *err, size_t errlen) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        snprintf(err, errlen, "device cuda: no usable CUDA device (%s)",
                 e != cudaSuccess ? cudaGetErrorString(e) : "none found");
        return -1;
    }
    if (p->cuda_device < 0 || p->cuda_device >= n) {
        snprintf(err, errlen, "device cuda: no CUDA device %d (this machine has %d)", p->cuda_device, n);
        return -1;
    }
    if ((e = cudaSetDevice(p->cuda_device)) != cudaSuccess || (e = cudaStreamCreate(&g->stream)) != cudaSuccess ||
        (e = cuda__fetch_init(g)) != cudaSuccess)
        return cuda__init_fail(p, err, errlen, e);
    /* cuda_profile 2 keeps recorded steps, each replay timed as one op */
    g->graphs_off = !p->cuda_graphs || p->cuda_profile == 1;
    /* The few-row f32 kernel (kernels_skinny_f32) takes f32 products of at
     * most 8 rows (DeepSeek-V4's 4-row hyper-connection product): on an H100
     * it beat pedantic cuBLAS 1.3-2.4x there at T 64..4096 and tied it at 24
     * rows, losing at T 4096 (bench/RESULTS.md, "The host-gap changes and
     * the few-row kernel on an H100"). ENGRAM_SKINNY_F32=0 turns it off, =1
     * on up to 64 rows. */
    const char *sk = getenv("ENGRAM_SKINNY_F32");
    g->skinny_max_rows = !sk ? 8 : !strcmp(sk, "0") ? 0 : !strcmp(sk, "1") ? KERNELS_SKINNY_MAX_ROWS : 8;
    /* A/B switches of the bf16 products' activations (cuda_ops.c): ENGRAM_ACT_FUSE=0 takes them
     * through f32 as before (bit-identical results); ENGRAM_GLU_STACK=0 runs gate and up as two
     * products at every T (by default one stacked product up to GLU_STACK_MAX_TOKENS: on an H100
     * the paper's workload ran 0.7-0.8% faster with it, bench/RESULTS.md). */
    const char *af = getenv("ENGRAM_ACT_FUSE"), *gs = getenv("ENGRAM_GLU_STACK");
    g->act_unfused = af && !strcmp(af, "0");
    g->glu_stack = gs && !strcmp(gs, "0") ? 0 : 1;
    /* qk_rope_store's kernel: by the step's size unless ENGRAM_QK_ROPE_STORE=warp or head names
     * one (the two give the same bits: gpu-backend-parity) */
    const char *qk = getenv("ENGRAM_QK_ROPE_STORE");
    g->qk_warp = !qk ? -1 : !strcmp(qk, "warp") ? 1 : !strcmp(qk, "head") ? 0 : -1;
    /* backend_prefetch (cu_prefetch): ENGRAM_L2_PREFETCH=MB, the most of a weight asked of L2
     * (0 or unset: off) */
    const char *pf = getenv("ENGRAM_L2_PREFETCH");
    g->pf_max_bytes = pf ? (size_t)strtoul(pf, NULL, 10) << 20 : 0;
    if ((e = cudaStreamCreateWithFlags(&g->pf, cudaStreamNonBlocking)) != cudaSuccess ||
        (e = cudaEventCreateWithFlags(&g->ev_pf_fork, cudaEventDisableTiming)) != cudaSuccess ||
        (e = cudaEventCreateWithFlags(&g->ev_pf_done, cudaEventDisableTiming)) != cudaSuccess)
        return cuda__init_fail(p, err, errlen, e);
    if ((e = prof__init(g, p->cuda_profile)) != cudaSuccess) return cuda__init_fail(p, err, errlen, e);
    cublasStatus_t st = cublasCreate(&g->blas);
    if (st == CUBLAS_STATUS_SUCCESS) st = cublasSetStream(g->blas, g->stream);
    /* its own workspace, so recorded steps never see cuBLAS allocate */
    if (st == CUBLAS_STATUS_SUCCESS && cuda__malloc((void **)&g->blas_ws, (size_t)32 << 20) != cudaSuccess) {
        snprintf(err, errlen, "CUDA device %d: no memory for the cuBLAS workspace", p->cuda_device);
        return -1;
    }
    if (st == CUBLAS_STATUS_SUCCESS) st = cublasSetWorkspace(g->blas, g->blas_ws, (size_t)32 << 20);
    if (st != CUBLAS_STATUS_SUCCESS) {
        snprintf(err, errlen, "cuBLAS: %s", cublasGetStatusString(st));
        return -1;
    }
    return 0;
}

/* The plugin's entry point (backend.c finds it with dlsym): a new handle
 * made with p, or NULL with a message in err. */
__attribute__((visibility("default"))) backend *engram_cuda_backend_create(const backend_params *p, char *err,
                                                                           size_t errlen);
backend *engram_cuda_backend_create(const backend_params *p, char *err, size_t errlen) {
    cuda_backend *g = calloc(1, sizeof(*g));
    if (!g) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    g->base.ops = &cuda_ops;
    g->base.params = *p;
    g->capturing = -1;
    if (cu_init(g, p, err, errlen)) {
        cu_destroy(&g->base);
        return NULL;
    }
    return &g->base;
}
