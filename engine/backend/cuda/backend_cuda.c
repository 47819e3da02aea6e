/* The CUDA backend: backend memory is device memory, every op is issued in
 * order on one stream. Matrix products of 1 or 2 tokens (decode) go through
 * a matrix-vector kernel (f32 activations), larger ones through cuBLAS: bf16
 * weights times activations rounded to bf16, or f32 weights times f32
 * activations (no TF32), all with f32 accumulation and output; the rest
 * through kernels/. prepare uploads every weight once (f16 matrices become
 * bf16, bf16 and f32 ones keep their dtype, so an f32 checkpoint computes in
 * f32; embeddings and Engram tables keep their dtype). The KV cache holds bf16.
 * Built only with ENGRAM_CUDA, as its own shared library (libengram-cuda.so)
 * that backend.c loads on demand: a program that never asks for CUDA never
 * loads cuBLAS, and a CUDA build still starts on a machine without CUDA. It
 * calls back into the program (dtype_size), whose symbols are exported. */
#include "engine/backend/backend.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/kernels.h"
#include "engine/sampler.h"

/* Tokens up to which a product takes the matrix-vector kernel rather than
 * cuBLAS (H100, 4096x4096 bf16: T=1 8.6 us against 20 us through cuBLAS with
 * the activation conversion; T=8 38 us against 17). */
#define GEMV_MAX_TOKENS 2

static struct {
    int tried, ok;
    char why[256];
    cudaStream_t stream;
    cublasHandle_t blas;
    void *xb; /* bf16 copy of a product's activations */
    size_t xb_bytes;
    void *add_tmp; /* matmul_add's product when it cannot add in place */
    size_t add_tmp_bytes;
    float *att_work; /* attention split scratch */
    size_t att_work_floats;
    int graphs_off;  /* ENGRAM_CUDA_GRAPHS=0: no recorded steps */
    int capturing;   /* slot being recorded, or -1 */
    unsigned long long tick;
    /* Engram row copies: a second stream, and per channel the compute's mark
     * (timing), the copy's end (timing) and the compute's last read */
    cudaStream_t copy;
    cudaEvent_t ev_mark[BACKEND_FETCH_CHANNELS], ev_copied[BACKEND_FETCH_CHANNELS],
        ev_released[BACKEND_FETCH_CHANNELS];
    int marked[BACKEND_FETCH_CHANNELS], copied[BACKEND_FETCH_CHANNELS], released[BACKEND_FETCH_CHANNELS];
} g = {.capturing = -1};

/* Recorded steps (CUDA graphs), looked up by the caller's key; the least
 * recently used slot is replaced. A key seen once runs plainly (it warms
 * cuBLAS and grows the scratch buffers), the second time it is recorded,
 * from the third on replayed. */
#define GRAPH_SLOTS 16
#define GRAPH_KEY_MAX 64
static struct {
    unsigned char key[GRAPH_KEY_MAX];
    size_t key_bytes;
    int state; /* 0 free, 1 seen once, 2 recorded */
    cudaGraphExec_t exec;
    unsigned long long used;
} graphs[GRAPH_SLOTS];

/* A failed launch or CUDA call inside an op: the context is unusable and the
 * op cannot report it (ops return nothing), so stop here. */
static void cuda__fail(const char *op, const char *what) {
    fprintf(stderr, "backend_cuda: %s: %s\n", op, what);
    abort();
}
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

/* ENGRAM_CUDA_PROFILE=1: every op is bracketed by two events (recorded
 * steps are off, so each op is issued on its own) and its device time added
 * to a per-name total, printed to stderr at exit with the wall time from the
 * first op to the last: the difference is time the GPU waited for the host.
 * Names carry a size class (matmul shape and tokens, attention step kind).
 * ENGRAM_CUDA_PROFILE=graphs keeps recorded steps and times each replay as
 * one op. */
#define PROF_PAIRS 1024
#define PROF_NAMES 96
static struct {
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
} prof;

static double prof__now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void prof__flush(void) {
    if (!prof.n) return;
    CHECK_CUDA(cudaEventSynchronize(prof.ev[2 * prof.n - 1]));
    for (int i = 0; i < prof.n; i++) {
        float ms = 0;
        CHECK_CUDA(cudaEventElapsedTime(&ms, prof.ev[2 * i], prof.ev[2 * i + 1]));
        prof.e[prof.name[i]].ms += ms;
        prof.e[prof.name[i]].calls++;
        prof.ms_sum += ms;
    }
    prof.n = 0;
    prof.wall1 = prof__now();
}

/* Starts timing an op named by the format; returns its pair, or -1 when off. */
__attribute__((format(printf, 1, 2))) static int prof__begin(const char *fmt, ...) {
    if (!prof.on || g.capturing >= 0) return -1;
    char s[56];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s, sizeof(s), fmt, ap);
    va_end(ap);
    int k = 0;
    while (k < prof.ne && strcmp(prof.e[k].s, s)) k++;
    if (k == prof.ne) {
        if (prof.ne == PROF_NAMES) k = PROF_NAMES - 1; /* the last name takes the overflow */
        else snprintf(prof.e[prof.ne++].s, sizeof(prof.e[0].s), "%s", s);
    }
    if (prof.n == PROF_PAIRS) prof__flush();
    if (prof.wall0 == 0) prof.wall0 = prof__now();
    int i = prof.n++;
    prof.name[i] = k;
    CHECK_CUDA(cudaEventRecord(prof.ev[2 * i], g.stream));
    return i;
}

static void prof__end(int i) {
    if (i >= 0) CHECK_CUDA(cudaEventRecord(prof.ev[2 * i + 1], g.stream));
}

static const char *prof__tclass(int T) {
    return T <= 2 ? "T<=2" : T <= 16 ? "T<=16" : T <= 64 ? "T<=64" : T <= 256 ? "T<=256" : T <= 1024 ? "T<=1024"
                                                                                                  : "T>1024";
}

static void prof__report(void) {
    prof__flush();
    if (!prof.ne) return;
    int order[PROF_NAMES];
    for (int i = 0; i < prof.ne; i++) order[i] = i;
    for (int i = 1; i < prof.ne; i++) /* by total time, largest first */
        for (int j = i; j > 0 && prof.e[order[j]].ms > prof.e[order[j - 1]].ms; j--) {
            int t = order[j];
            order[j] = order[j - 1], order[j - 1] = t;
        }
    double wall = (prof.wall1 - prof.wall0) * 1e3;
    fprintf(stderr, "cuda profile: ops %.1f ms of device time, %.1f ms wall from the first op to the last\n",
            prof.ms_sum, wall);
    for (int i = 0; i < prof.ne; i++) {
        int k = order[i];
        fprintf(stderr, "cuda profile: %-56s %8ld calls %10.2f ms %5.1f%% %9.2f us/call\n", prof.e[k].s,
                prof.e[k].calls, prof.e[k].ms, 100 * prof.e[k].ms / (prof.ms_sum > 0 ? prof.ms_sum : 1),
                1e3 * prof.e[k].ms / (prof.e[k].calls ? prof.e[k].calls : 1));
    }
}

/* Drops every recorded step: they hold device addresses that are about to
 * change. */
static void graphs__clear(void) {
    if (g.capturing >= 0) cuda__fail(__func__, "backend memory freed while a step is being recorded");
    for (int i = 0; i < GRAPH_SLOTS; i++) {
        if (graphs[i].state == 2) cudaGraphExecDestroy(graphs[i].exec);
        graphs[i].state = 0;
    }
}

/* Grows a device scratch buffer to at least `bytes`. cudaFree waits for the
 * work that may still read the old one. */
static void cuda__grow(void **buf, size_t *have, size_t bytes) {
    if (bytes <= *have) return;
    graphs__clear();
    CHECK_CUDA(cudaFree(*buf));
    *buf = NULL;
    *have = 0;
    size_t want = bytes + bytes / 4;
    CHECK_CUDA(cudaMalloc(buf, want));
    *have = want;
}

static int cuda__dtype(dtype t) {
    return t == DTYPE_BF16 ? KERNELS_BF16 : t == DTYPE_F16 ? KERNELS_F16 : KERNELS_F32;
}

/* ---- memory ---- */

static void *cu_alloc(size_t bytes) {
    void *p = NULL;
    if (bytes == 0) bytes = 1;
    if (cudaMalloc(&p, bytes) != cudaSuccess) {
        cudaGetLastError(); /* clear the allocation error */
        return NULL;
    }
    CHECK_CUDA(cudaMemsetAsync(p, 0, bytes, g.stream));
    return p;
}

static void cu_free(void *p) {
    if (!p) return;
    graphs__clear();
    CHECK_CUDA(cudaFree(p));
}

static void cu_mem_info(size_t *free_bytes, size_t *total_bytes) {
    CHECK_CUDA(cudaStreamSynchronize(g.stream)); /* frees and allocations queued before count */
    CHECK_CUDA(cudaMemGetInfo(free_bytes, total_bytes));
}

static void cu_upload(void *dst, const void *host, size_t bytes) {
    int pi = prof__begin("upload");
    if (bytes) CHECK_CUDA(cudaMemcpyAsync(dst, host, bytes, cudaMemcpyHostToDevice, g.stream));
    prof__end(pi);
}

static void cu_download(void *host, const void *src, size_t bytes) {
    int pi = prof__begin("download");
    if (bytes) CHECK_CUDA(cudaMemcpyAsync(host, src, bytes, cudaMemcpyDeviceToHost, g.stream));
    prof__end(pi);
    CHECK_CUDA(cudaStreamSynchronize(g.stream));
}

static void cu_copy2d(float *dst, size_t dpitch, const float *src, size_t spitch, size_t width, size_t rows) {
    if (!width || !rows) return;
    CHECK_CUDA(cudaMemcpy2DAsync(dst, dpitch * sizeof(float), src, spitch * sizeof(float), width * sizeof(float),
                                 rows, cudaMemcpyDeviceToDevice, g.stream));
}

/* ---- the device view of a model ---- */

typedef struct {
    model m; /* handed out as the view; first member */
    layer_weights *layers;
    model_engram eng;
    engram_weights *elayers;
    void **dev; /* every device buffer of the view */
    int n_dev, cap_dev;
    struct {
        const void *host;
        int converted;
        void *dev;
    } *seen; /* uploads done, so a tensor used twice (tied embeddings) is uploaded once */
    int n_seen, cap_seen;
    size_t bytes;
} cuda_view;

static int view__keep(cuda_view *v, void *d) {
    if (v->n_dev == v->cap_dev) {
        int cap = v->cap_dev ? 2 * v->cap_dev : 256;
        void **p = realloc(v->dev, (size_t)cap * sizeof(*p));
        if (!p) return -1;
        v->dev = p;
        v->cap_dev = cap;
    }
    v->dev[v->n_dev++] = d;
    return 0;
}

static void *view__find(const cuda_view *v, const void *host, int converted) {
    for (int i = v->n_seen; i-- > 0;)
        if (v->seen[i].host == host && v->seen[i].converted == converted) return v->seen[i].dev;
    return NULL;
}

static int view__remember(cuda_view *v, const void *host, int converted, void *d) {
    if (v->n_seen == v->cap_seen) {
        int cap = v->cap_seen ? 2 * v->cap_seen : 256;
        void *p = realloc(v->seen, (size_t)cap * sizeof(*v->seen));
        if (!p) return -1;
        v->seen = p;
        v->cap_seen = cap;
    }
    v->seen[v->n_seen].host = host;
    v->seen[v->n_seen].converted = converted;
    v->seen[v->n_seen].dev = d;
    v->n_seen++;
    return 0;
}

static void view__oom(char *err, size_t errlen, const char *what, size_t bytes, size_t so_far) {
    size_t fr = 0, total = 0;
    cudaGetLastError();
    cudaMemGetInfo(&fr, &total);
    snprintf(err, errlen,
             "out of GPU memory uploading %s (%zu bytes) after %zu bytes of weights; %zu of %zu bytes free", what,
             bytes, so_far, fr, total);
}

/* Device copy of n elements of dtype t at host, as bf16 when to_bf16 (the
 * conversion runs on the GPU), else unchanged. *out NULL for a NULL host. */
static int view__upload(cuda_view *v, const void *host, dtype t, size_t n, int to_bf16, void **out,
                        const char *what, char *err, size_t errlen) {
    *out = NULL;
    if (!host) return 0;
    int conv = to_bf16 && t != DTYPE_BF16;
    void *d = view__find(v, host, conv);
    if (d) {
        *out = d;
        return 0;
    }
    if (t != DTYPE_F32 && t != DTYPE_BF16 && t != DTYPE_F16) {
        snprintf(err, errlen, "%s: dtype %s is not supported on CUDA", what, dtype_name(t));
        return -1;
    }
    size_t src_bytes = n * dtype_size(t), dst_bytes = conv ? n * 2 : src_bytes;
    if (cudaMalloc(&d, dst_bytes ? dst_bytes : 1) != cudaSuccess) {
        view__oom(err, errlen, what, dst_bytes, v->bytes);
        return -1;
    }
    if (view__keep(v, d)) {
        cudaFree(d);
        snprintf(err, errlen, "out of host memory");
        return -1;
    }
    if (view__remember(v, host, conv, d)) { /* d is freed with the view */
        snprintf(err, errlen, "out of host memory");
        return -1;
    }
    v->bytes += dst_bytes;
    cudaError_t e;
    if (!conv) {
        e = cudaMemcpy(d, host, src_bytes, cudaMemcpyHostToDevice);
    } else {
        void *tmp = NULL;
        if (cudaMalloc(&tmp, src_bytes ? src_bytes : 1) != cudaSuccess) {
            view__oom(err, errlen, what, src_bytes, v->bytes);
            return -1;
        }
        e = cudaMemcpy(tmp, host, src_bytes, cudaMemcpyHostToDevice);
        if (e == cudaSuccess && kernels_to_bf16(d, tmp, cuda__dtype(t), n, NULL)) e = cudaGetLastError();
        if (e == cudaSuccess) e = cudaDeviceSynchronize();
        cudaFree(tmp);
    }
    if (e != cudaSuccess) {
        snprintf(err, errlen, "uploading %s: %s", what, cudaGetErrorString(e));
        return -1;
    }
    *out = d;
    return 0;
}

/* A matrix for matmul (bf16 or f32 on the device: f16 becomes bf16) or, with
 * keep_dtype, for row gathers (its own dtype). */
static int view__weight(cuda_view *v, const weight *w, weight *out, int keep_dtype, const char *what, char *err,
                        size_t errlen) {
    *out = *w;
    void *d;
    int conv = !keep_dtype && w->dt == DTYPE_F16;
    if (view__upload(v, w->data, w->dt, (size_t)w->rows * w->cols, conv, &d, what, err, errlen)) return -1;
    out->data = d;
    if (conv && w->data) out->dt = DTYPE_BF16;
    return 0;
}

static int view__vec(cuda_view *v, const float *p, size_t n, const float **out, const char *what, char *err,
                     size_t errlen) {
    void *d;
    if (view__upload(v, p, DTYPE_F32, n, 0, &d, what, err, errlen)) return -1;
    *out = d;
    return 0;
}

static void cu_release(model *view, model *m) {
    (void)m;
    if (!view) return;
    cuda_view *v = (cuda_view *)view;
    graphs__clear();
    cudaDeviceSynchronize();
    for (int i = 0; i < v->n_dev; i++) cudaFree(v->dev[i]);
    free(v->dev);
    free(v->seen);
    free(v->layers);
    free(v->elayers);
    free(v);
}

static int view__engram(cuda_view *v, const model *m, char *err, size_t errlen) {
    const model_engram *e = m->engram;
    size_t d = (size_t)m->cfg.hidden_size;
    char what[96];
    v->eng = *e;
    v->elayers = calloc((size_t)e->n_layers, sizeof(*v->elayers));
    if (!v->elayers) return snprintf(err, errlen, "out of host memory"), -1;
    v->eng.layers = v->elayers;
    for (int i = 0; i < e->n_layers; i++) {
        const engram_weights *w = &e->layers[i];
        engram_weights *o = &v->elayers[i];
        *o = *w;
        int G = e->hc_mult;
#define EW(field, keep)                                                                                     \
    (snprintf(what, sizeof(what), "engram layer %d " #field, w->layer_id),                                   \
     view__weight(v, &w->field, &o->field, keep, what, err, errlen))
#define EV(field, n)                                                                                        \
    (snprintf(what, sizeof(what), "engram layer %d " #field, w->layer_id),                                   \
     view__vec(v, w->field, n, &o->field, what, err, errlen))
        if (w->store) { /* rows come from the host store, never from a device table */
            o->table.data = NULL;
        } else if (EW(table, 1)) {
            return -1;
        }
        if (EW(w_value, 0) || EV(b_value, d) || EV(conv_w, (size_t)G * d * e->kernel_size)) return -1;
        for (int gi = 0; gi < G; gi++)
            if (EW(w_key[gi], 0) || EV(b_key[gi], d) || EV(norm1[gi], d) || EV(norm2[gi], d) ||
                EV(conv_norm[gi], d))
                return -1;
#undef EW
#undef EV
    }
    v->m.engram = &v->eng;
    return 0;
}

static model *cu_prepare(model *m, char *err, size_t errlen) {
    const model_config *c = &m->cfg;
    cuda_view *v = calloc(1, sizeof(*v));
    if (!v) return snprintf(err, errlen, "out of host memory"), NULL;
    v->m = *m;
    v->m.files = NULL;
    v->m.n_files = 0;
    v->m.owned = NULL;
    v->m.n_owned = v->m.cap_owned = 0;
    v->m.engram = NULL;
    size_t d = (size_t)c->hidden_size, hd = (size_t)c->head_dim, ff = (size_t)c->intermediate_size;
    size_t qw = (size_t)c->n_heads * hd, kvw = (size_t)c->n_kv_heads * hd;
    v->layers = calloc((size_t)c->n_layers, sizeof(*v->layers));
    if (!v->layers) {
        snprintf(err, errlen, "out of host memory");
        goto fail;
    }
    v->m.layers = v->layers;
    if (view__weight(v, &m->embed, &v->m.embed, 1, "embed_tokens", err, errlen) ||
        view__weight(v, &m->lm_head, &v->m.lm_head, 0, "lm_head", err, errlen) ||
        view__vec(v, m->final_norm, d, &v->m.final_norm, "norm", err, errlen))
        goto fail;
    if (m->engram && view__engram(v, m, err, errlen)) goto fail;
    for (int l = 0; l < c->n_layers; l++) {
        const layer_weights *L = &m->layers[l];
        layer_weights *o = &v->layers[l];
        char what[64];
        *o = *L;
#define LW(field) (snprintf(what, sizeof(what), "layer %d " #field, l), view__weight(v, &L->field, &o->field, 0, what, err, errlen))
#define LV(field, n) (snprintf(what, sizeof(what), "layer %d " #field, l), view__vec(v, L->field, n, &o->field, what, err, errlen))
        if (LW(wq) || LW(wk) || LW(wv) || LW(wo) || LW(w_gate) || LW(w_up) || LW(w_down) ||
            LV(attn_norm, d) || LV(ffn_norm, d) || LV(bq, qw) || LV(bk, kvw) || LV(bv, kvw) || LV(bo, d) ||
            LV(q_norm, hd) || LV(k_norm, hd) || LV(b_gate, ff) || LV(b_up, ff) || LV(b_down, d))
            goto fail;
#undef LW
#undef LV
        if (L->engram) o->engram = &v->elayers[L->engram - m->engram->layers];
    }
    return &v->m;
fail:
    cu_release(&v->m, m);
    return NULL;
}

/* ---- compute ---- */

static void cu_matmul_(float *out, const float *x, const weight *w, const float *bias, int T) {
    if (w->dt != DTYPE_BF16 && w->dt != DTYPE_F32)
        cuda__fail(__func__, "weight is not a bf16 or f32 device view (prepare converts them)");
    int f32 = w->dt == DTYPE_F32;
    if (T <= GEMV_MAX_TOKENS && kernels_gemv_supported(x, w->data, T, w->cols)) { /* decode: one launch */
        if (f32) CHECK_K(kernels_gemv_f32(out, x, w->data, bias, T, w->rows, w->cols, g.stream));
        else CHECK_K(kernels_gemv_bf16(out, x, w->data, bias, T, w->rows, w->cols, g.stream));
        return;
    }
    const float one = 1.0f, zero = 0.0f;
    if (f32) { /* f32 checkpoints: f32 operands, pedantic f32 compute (never TF32) */
        cublasStatus_t st = cublasGemmEx(g.blas, CUBLAS_OP_T, CUBLAS_OP_N, w->rows, T, w->cols, &one, w->data,
                                         CUDA_R_32F, w->cols, x, CUDA_R_32F, w->cols, &zero, out, CUDA_R_32F,
                                         w->rows, CUBLAS_COMPUTE_32F_PEDANTIC, CUBLAS_GEMM_DEFAULT);
        if (st != CUBLAS_STATUS_SUCCESS) cuda__fail(__func__, cublasGetStatusString(st));
        if (bias) CHECK_K(kernels_bias_add_f32(out, bias, T, w->rows, g.stream));
        return;
    }
    size_t n = (size_t)T * w->cols;
    cuda__grow(&g.xb, &g.xb_bytes, n * 2);
    CHECK_K(kernels_to_bf16(g.xb, x, KERNELS_F32, n, g.stream));
    /* column-major: out^T (rows, T) = W (cols, rows)^T x^T (cols, T) */
    cublasStatus_t st = cublasGemmEx(g.blas, CUBLAS_OP_T, CUBLAS_OP_N, w->rows, T, w->cols, &one, w->data,
                                     CUDA_R_16BF, w->cols, g.xb, CUDA_R_16BF, w->cols, &zero, out, CUDA_R_32F,
                                     w->rows, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (st != CUBLAS_STATUS_SUCCESS) cuda__fail(__func__, cublasGetStatusString(st));
    if (bias) CHECK_K(kernels_bias_add_f32(out, bias, T, w->rows, g.stream));
}

static void cu_matmul(float *out, const float *x, const weight *w, const float *bias, int T) {
    if (T <= 0) return;
    int pi = prof__begin("matmul %dx%d %s", w->rows, w->cols, prof__tclass(T));
    cu_matmul_(out, x, w, bias, T);
    prof__end(pi);
}

static void cu_rmsnorm(float *out, const float *x, const float *gw, int T, int d, float eps) {
    int pi = prof__begin("rmsnorm d=%d", d);
    CHECK_K(kernels_rmsnorm_f32(out, x, gw, T, d, eps, g.stream));
    prof__end(pi);
}

static void cu_embed(float *out, const weight *emb, const int32_t *ids, int T) {
    int pi = prof__begin("embed");
    CHECK_K(kernels_embed(out, emb->data, cuda__dtype(emb->dt), ids, T, emb->cols, g.stream));
    prof__end(pi);
}

static void cu_rope(float *x, const int32_t *pos, int T, int n_heads, int hd, const float *inv_freq) {
    int pi = prof__begin("rope");
    CHECK_K(kernels_rope_f32(x, pos, T, n_heads, hd, inv_freq, g.stream));
    prof__end(pi);
}

static void cu_kv_store(void *kc, void *vc, const float *k, const float *v, const batch_desc *b, int kvw) {
    int pi = prof__begin("kv_store");
    CHECK_K(kernels_kv_store_bf16(kc, vc, k, v, b->slot, b->n_tokens, kvw, g.stream));
    prof__end(pi);
}

/* Set by tests: every token through the per-token kernel. */
int backend_cuda_attention_no_tiled;

static void cu_attention(float *out, const float *q, const void *kc, const void *vc, const batch_desc *b,
                         int n_heads, int n_kv, int hd, int window) {
    kernels_attention_args a = {
        .out = out, .q = q, .kc = kc, .vc = vc, .pos = b->pos, .tok_seq = b->tok_seq, .seq_start = b->seq_start,
        .block_tables = b->block_tables, .h_seq_start = b->h_seq_start, .n_tokens = b->n_tokens,
        .n_seqs = b->n_seqs, .block_size = b->block_size, .max_blocks = b->max_blocks, .n_heads = n_heads,
        .n_kv = n_kv, .hd = hd, .window = window, .max_ctx = b->max_ctx,
        .no_tiled = backend_cuda_attention_no_tiled,
    };
    size_t need = kernels_paged_attention_work_floats(&a);
    if (need) {
        size_t have = g.att_work_floats * sizeof(float);
        cuda__grow((void **)&g.att_work, &have, need * sizeof(float));
        g.att_work_floats = have / sizeof(float);
    }
    a.work = g.att_work;
    a.work_floats = g.att_work_floats;
    int pi = prof__begin("attention %s %s ctx<=%d", b->max_q > 1 ? "mixed" : "decode", prof__tclass(b->n_tokens),
                         b->max_ctx <= 512 ? 512 : b->max_ctx <= 1024 ? 1024 : b->max_ctx <= 2048 ? 2048 : 1 << 30);
    CHECK_K(kernels_paged_attention_bf16(&a, g.stream));
    prof__end(pi);
}

static void cu_swiglu(float *gate, const float *up, size_t n) {
    int pi = prof__begin("swiglu");
    CHECK_K(kernels_swiglu_f32(gate, up, n, g.stream));
    prof__end(pi);
}

static void cu_add(float *x, const float *y, size_t n) {
    int pi = prof__begin("add");
    CHECK_K(kernels_add_f32(x, y, n, g.stream));
    prof__end(pi);
}

static void cu_gather_f32(float *out, const float *x, const int32_t *idx, int n, int d) {
    int pi = prof__begin("gather_f32");
    CHECK_K(kernels_gather_f32(out, x, idx, n, d, g.stream));
    prof__end(pi);
}

static void cu_argmax(int32_t *next, const float *logits, int T, int vocab) {
    int pi = prof__begin("argmax");
    CHECK_K(kernels_argmax_f32(next, logits, T, vocab, g.stream));
    prof__end(pi);
}

static void cu_gather_rows(float *out, const weight *table, const int64_t *rows, int T, int H) {
    if (!table->data) cuda__fail(__func__, "the table is not on the device (served by a host store)");
    int pi = prof__begin("gather_rows");
    CHECK_K(kernels_gather_rows(out, table->data, cuda__dtype(table->dt), (const long long *)rows, T, H,
                                table->cols, g.stream));
    prof__end(pi);
}

static void cu_engram_gate(float *gate, const float *nk, const float *nq, int T, int d) {
    int pi = prof__begin("engram_gate");
    CHECK_K(kernels_engram_gate_f32(gate, nk, nq, T, d, g.stream));
    prof__end(pi);
}

static void cu_scale_rows(float *out, size_t ostride, const float *x, size_t xstride, const float *s, int T, int d) {
    int pi = prof__begin("scale_rows");
    CHECK_K(kernels_scale_rows_f32(out, ostride, x, xstride, s, T, d, g.stream));
    prof__end(pi);
}

static void cu_short_conv(float *out, const float *in, const float *w, const batch_desc *b, size_t hist_off, int C,
                          int K, int dil) {
    int pi = prof__begin("short_conv");
    CHECK_K(kernels_short_conv_batch_f32(out, in, w, b->seq_start, b->tok_seq, b->seq_hist, hist_off, b->n_seqs,
                                         b->n_tokens, C, K, dil, g.stream));
    prof__end(pi);
}

/* ---- fused ops (backend.h, "fused") ---- */

/* Whether a decode product of w takes the matrix-vector kernels. */
static int cuda__gemv(const float *x, const weight *w, int T) {
    return T <= GEMV_MAX_TOKENS && (w->dt == DTYPE_BF16 || w->dt == DTYPE_F32) &&
           kernels_gemv_supported(x, w->data, T, w->cols);
}

static void cu_matmul_qkv(float *q, float *k, float *v, const float *x, const weight *wq, const weight *wk,
                          const weight *wv, const float *bq, const float *bk, const float *bv, int T) {
    if (T <= 0) return;
    int pi = prof__begin("matmul qkv %dx%d %s", wq->rows + wk->rows + wv->rows, wq->cols, prof__tclass(T));
    if (cuda__gemv(x, wq, T) && cuda__gemv(x, wk, T) && cuda__gemv(x, wv, T) && wk->dt == wq->dt &&
        wv->dt == wq->dt && wk->cols == wq->cols && wv->cols == wq->cols) {
        CHECK_K(kernels_gemv3(q, k, v, x, wq->data, wk->data, wv->data, bq, bk, bv, wq->rows, wk->rows, wv->rows, T,
                              wq->cols, wq->dt == DTYPE_F32, g.stream));
    } else {
        cu_matmul_(q, x, wq, bq, T);
        cu_matmul_(k, x, wk, bk, T);
        cu_matmul_(v, x, wv, bv, T);
    }
    prof__end(pi);
}

static void cu_matmul_add(float *x, const float *a, const weight *w, const float *bias, int T) {
    if (T <= 0) return;
    int pi = prof__begin("matmul+add %dx%d %s", w->rows, w->cols, prof__tclass(T));
    if (cuda__gemv(a, w, T)) {
        CHECK_K(kernels_gemv_add(x, a, w->data, bias, T, w->rows, w->cols, w->dt == DTYPE_F32, g.stream));
    } else if (w->dt == DTYPE_BF16 && !bias) { /* cuBLAS adds into x itself (beta = 1) */
        size_t n = (size_t)T * w->cols;
        cuda__grow(&g.xb, &g.xb_bytes, n * 2);
        CHECK_K(kernels_to_bf16(g.xb, a, KERNELS_F32, n, g.stream));
        const float one = 1.0f;
        cublasStatus_t st = cublasGemmEx(g.blas, CUBLAS_OP_T, CUBLAS_OP_N, w->rows, T, w->cols, &one, w->data,
                                         CUDA_R_16BF, w->cols, g.xb, CUDA_R_16BF, w->cols, &one, x, CUDA_R_32F,
                                         w->rows, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        if (st != CUBLAS_STATUS_SUCCESS) cuda__fail(__func__, cublasGetStatusString(st));
    } else { /* f32 weights or a bias: the product, then the sum, as the ops do */
        size_t n = (size_t)T * w->rows * sizeof(float);
        cuda__grow(&g.add_tmp, &g.add_tmp_bytes, n);
        cu_matmul_(g.add_tmp, a, w, bias, T);
        CHECK_K(kernels_add_f32(x, g.add_tmp, (size_t)T * w->rows, g.stream));
    }
    prof__end(pi);
}

static void cu_matmul_glu(float *gate, float *up, const float *x, const weight *wg, const weight *wu, const float *bg,
                          const float *bu, int T) {
    if (T <= 0) return;
    int pi = prof__begin("matmul glu %dx%d %s", wg->rows, wg->cols, prof__tclass(T));
    if (cuda__gemv(x, wg, T) && cuda__gemv(x, wu, T) && wg->dt == wu->dt && wg->rows == wu->rows &&
        wg->cols == wu->cols) {
        CHECK_K(kernels_gemv_glu(gate, x, wg->data, wu->data, bg, bu, T, wg->rows, wg->cols, wg->dt == DTYPE_F32,
                                 g.stream));
    } else {
        cu_matmul_(gate, x, wg, bg, T);
        cu_matmul_(up, x, wu, bu, T);
        CHECK_K(kernels_swiglu_f32(gate, up, (size_t)T * wg->rows, g.stream));
    }
    prof__end(pi);
}

static void cu_qk_rope_store(float *q, const float *k, const float *v, void *kc, void *vc, const batch_desc *b,
                             int n_heads, int n_kv, int hd, const float *qn, const float *kn, float eps,
                             const float *inv_freq) {
    int pi = prof__begin("qk_rope_store");
    CHECK_K(kernels_qk_rope_store_bf16(q, k, v, kc, vc, b->pos, b->slot, b->n_tokens, n_heads, n_kv, hd, qn, kn, eps,
                                       inv_freq, g.stream));
    prof__end(pi);
}

/* ---- Engram rows from host memory ---- */

static void *cu_host_alloc(size_t bytes) {
    void *p = NULL;
    if (cudaHostAlloc(&p, bytes ? bytes : 1, cudaHostAllocDefault) != cudaSuccess) {
        cudaGetLastError();
        return NULL;
    }
    return p;
}

static void cu_host_free(void *p) {
    if (p) CHECK_CUDA(cudaFreeHost(p));
}

static void cu_fetch_mark(int ch) {
    CHECK_CUDA(cudaEventRecord(g.ev_mark[ch], g.stream));
    g.marked[ch] = 1;
}

static void cu_fetch(int ch, void *dst, const void *src, size_t bytes) {
    if (g.released[ch]) CHECK_CUDA(cudaStreamWaitEvent(g.copy, g.ev_released[ch], 0));
    if (bytes) CHECK_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, g.copy));
    CHECK_CUDA(cudaEventRecord(g.ev_copied[ch], g.copy));
    g.copied[ch] = 1;
}

static void cu_fetch_wait(int ch) {
    if (g.copied[ch]) CHECK_CUDA(cudaStreamWaitEvent(g.stream, g.ev_copied[ch], 0));
}

static void cu_fetch_release(int ch) {
    CHECK_CUDA(cudaEventRecord(g.ev_released[ch], g.stream));
    g.released[ch] = 1;
}

static double cu_fetch_sync(int ch) {
    if (!g.copied[ch]) return 0.0;
    CHECK_CUDA(cudaEventSynchronize(g.ev_copied[ch]));
    if (!g.marked[ch]) return 0.0;
    CHECK_CUDA(cudaEventSynchronize(g.ev_mark[ch]));
    float ms = 0.0f;
    CHECK_CUDA(cudaEventElapsedTime(&ms, g.ev_mark[ch], g.ev_copied[ch]));
    g.marked[ch] = 0;
    return ms > 0.0f ? ms * 1e-3 : 0.0;
}

static void cu_decode_rows(float *out, const void *rows, int dt, size_t stride, const int32_t *idx, int n, int cols) {
    CHECK_K(kernels_engram_decode_rows(out, rows, dt, stride, idx, n, cols, g.stream));
}

static void cu_scatter_rows(void *dst, const void *src, const int32_t *slot, int n, size_t row_bytes) {
    CHECK_K(kernels_scatter_rows(dst, src, slot, n, row_bytes, g.stream));
}

/* ---- sampling ---- */

_Static_assert(KERNELS_SAMPLE_DESC_WORDS == SAMPLER_DESC_WORDS, "kernels.h and sampler.h disagree");
_Static_assert(KERNELS_SAMPLE_MAX_CANDIDATES == SAMPLER_MAX_CANDIDATES, "kernels.h and sampler.h disagree");
_Static_assert(KERNELS_SAMPLE_NAN == SAMPLER_RESULT_NAN, "kernels.h and sampler.h disagree");

static void cu_sample(void *out, float *logits, const int32_t *desc, int n, int vocab, int stride, int n_cand) {
    CHECK_K(kernels_sample_f32(out, logits, desc, n, vocab, stride, n_cand, g.stream));
}

/* ---- recorded steps ---- */

static int cu_step_begin(const void *key, size_t key_bytes) {
    if (g.graphs_off || key_bytes > GRAPH_KEY_MAX || g.capturing >= 0) return 0;
    g.tick++;
    int lru = 0;
    for (int i = 0; i < GRAPH_SLOTS; i++) {
        if (graphs[i].state && graphs[i].key_bytes == key_bytes && !memcmp(graphs[i].key, key, key_bytes)) {
            graphs[i].used = g.tick;
            if (graphs[i].state == 2) {
                int pi = prof__begin("graph replay");
                CHECK_CUDA(cudaGraphLaunch(graphs[i].exec, g.stream));
                prof__end(pi);
                return 1;
            }
            CHECK_CUDA(cudaStreamBeginCapture(g.stream, cudaStreamCaptureModeRelaxed));
            g.capturing = i;
            return 0;
        }
        if (!graphs[i].state || (graphs[lru].state && graphs[i].used < graphs[lru].used)) lru = i;
    }
    if (graphs[lru].state == 2) CHECK_CUDA(cudaGraphExecDestroy(graphs[lru].exec));
    memcpy(graphs[lru].key, key, key_bytes);
    graphs[lru].key_bytes = key_bytes;
    graphs[lru].state = 1;
    graphs[lru].used = g.tick;
    return 0;
}

static void cu_step_end(void) {
    int i = g.capturing;
    if (i < 0) return;
    g.capturing = -1;
    cudaGraph_t graph;
    CHECK_CUDA(cudaStreamEndCapture(g.stream, &graph));
    cudaError_t e = cudaGraphInstantiate(&graphs[i].exec, graph, 0);
    cudaGraphDestroy(graph);
    CHECK_CUDA(e);
    graphs[i].state = 2;
    CHECK_CUDA(cudaGraphLaunch(graphs[i].exec, g.stream));
}

static const backend_ops cuda_ops = {
    .name = "cuda",
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
    .rmsnorm = cu_rmsnorm,
    .embed = cu_embed,
    .rope = cu_rope,
    .kv_store = cu_kv_store,
    .attention = cu_attention,
    .swiglu = cu_swiglu,
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
    .step_begin = cu_step_begin,
    .step_end = cu_step_end,
    .matmul_qkv = cu_matmul_qkv,
    .matmul_add = cu_matmul_add,
    .matmul_glu = cu_matmul_glu,
    .qk_rope_store = cu_qk_rope_store,
    .sample = cu_sample,
};

/* Device 0, one stream, one cuBLAS handle; made on the first call. */
static int cuda__init(void) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        snprintf(g.why, sizeof(g.why), "device cuda: no usable CUDA device (%s)",
                 e != cudaSuccess ? cudaGetErrorString(e) : "none found");
        return -1;
    }
    if ((e = cudaSetDevice(0)) != cudaSuccess || (e = cudaStreamCreate(&g.stream)) != cudaSuccess) {
        snprintf(g.why, sizeof(g.why), "CUDA device 0: %s", cudaGetErrorString(e));
        return -1;
    }
    if ((e = cudaStreamCreateWithFlags(&g.copy, cudaStreamNonBlocking)) != cudaSuccess) {
        snprintf(g.why, sizeof(g.why), "CUDA device 0: %s", cudaGetErrorString(e));
        return -1;
    }
    for (int ch = 0; ch < BACKEND_FETCH_CHANNELS && e == cudaSuccess; ch++) {
        e = cudaEventCreate(&g.ev_mark[ch]);
        if (e == cudaSuccess) e = cudaEventCreate(&g.ev_copied[ch]);
        if (e == cudaSuccess) e = cudaEventCreateWithFlags(&g.ev_released[ch], cudaEventDisableTiming);
    }
    if (e != cudaSuccess) {
        snprintf(g.why, sizeof(g.why), "CUDA device 0: %s", cudaGetErrorString(e));
        return -1;
    }
    const char *gr = getenv("ENGRAM_CUDA_GRAPHS"), *pr = getenv("ENGRAM_CUDA_PROFILE");
    g.graphs_off = gr && !strcmp(gr, "0");
    if (pr && strcmp(pr, "0")) { /* "graphs": recorded steps stay on, each replay timed as one op */
        prof.on = 1;
        if (strcmp(pr, "graphs")) g.graphs_off = 1;
        for (int i = 0; i < 2 * PROF_PAIRS; i++) CHECK_CUDA(cudaEventCreate(&prof.ev[i]));
        atexit(prof__report);
    }
    cublasStatus_t st = cublasCreate(&g.blas);
    if (st == CUBLAS_STATUS_SUCCESS) st = cublasSetStream(g.blas, g.stream);
    /* its own workspace, so recorded steps never see cuBLAS allocate */
    void *ws = NULL;
    if (st == CUBLAS_STATUS_SUCCESS && cudaMalloc(&ws, (size_t)32 << 20) != cudaSuccess) {
        snprintf(g.why, sizeof(g.why), "CUDA device 0: no memory for the cuBLAS workspace");
        return -1;
    }
    if (st == CUBLAS_STATUS_SUCCESS) st = cublasSetWorkspace(g.blas, ws, (size_t)32 << 20);
    if (st != CUBLAS_STATUS_SUCCESS) {
        snprintf(g.why, sizeof(g.why), "cuBLAS: %s", cublasGetStatusString(st));
        return -1;
    }
    return 0;
}

const backend_ops *engram_cuda_backend(char *err, size_t errlen);
const backend_ops *engram_cuda_backend(char *err, size_t errlen) {
    if (!g.tried) {
        g.tried = 1;
        g.ok = cuda__init() == 0;
    }
    if (!g.ok) {
        snprintf(err, errlen, "%s", g.why);
        return NULL;
    }
    return &cuda_ops;
}
