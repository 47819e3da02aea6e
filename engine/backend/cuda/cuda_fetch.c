/* Engram rows from host memory on the CUDA backend (backend.h, "Engram rows
 * from host memory"): pinned staging, the copies on a second stream of the
 * handle beside the compute, the copies back (rows the hot-row cache
 * evicts) on a third, one channel (five events) per Engram layer, and the
 * decode, scatter and collect kernels on the compute stream. */
#include "engine/backend/cuda/cuda_internal.h"

void *cu_host_alloc(backend *be, size_t bytes) {
    void *p = NULL;
    if (cuda__host_alloc(&p, bytes ? bytes : 1) != cudaSuccess) {
        cudaGetLastError();
        return NULL;
    }
    return p;
}

void cu_host_free(backend *be, void *p) {
    if (p) CHECK_CUDA(cudaFreeHost(p));
}

void cu_fetch_mark(backend *be, int ch) {
    cuda_backend *g = cuda__of(be);
    CHECK_CUDA(cudaEventRecord(g->ev_mark[ch], g->stream));
    g->marked[ch] = 1;
}

void cu_fetch(backend *be, int ch, void *dst, const void *src, size_t bytes) {
    cuda_backend *g = cuda__of(be);
    if (g->released[ch]) CHECK_CUDA(cudaStreamWaitEvent(g->copy, g->ev_released[ch], 0));
    if (bytes) CHECK_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, g->copy));
    CHECK_CUDA(cudaEventRecord(g->ev_copied[ch], g->copy));
    g->copied[ch] = 1;
}

void cu_fetch_wait(backend *be, int ch) {
    cuda_backend *g = cuda__of(be);
    if (g->copied[ch]) CHECK_CUDA(cudaStreamWaitEvent(g->stream, g->ev_copied[ch], 0));
}

void cu_fetch_release(backend *be, int ch) {
    cuda_backend *g = cuda__of(be);
    CHECK_CUDA(cudaEventRecord(g->ev_released[ch], g->stream));
    g->released[ch] = 1;
}

double cu_fetch_sync(backend *be, int ch) {
    cuda_backend *g = cuda__of(be);
    if (g->backed[ch]) { /* the copy back: no timing, only done */
        CHECK_CUDA(cudaEventSynchronize(g->ev_backed[ch]));
        g->backed[ch] = 0;
    }
    if (!g->copied[ch]) return 0.0;
    CHECK_CUDA(cudaEventSynchronize(g->ev_copied[ch]));
    if (!g->marked[ch]) return 0.0;
    CHECK_CUDA(cudaEventSynchronize(g->ev_mark[ch]));
    float ms = 0.0f;
    CHECK_CUDA(cudaEventElapsedTime(&ms, g->ev_mark[ch], g->ev_copied[ch]));
    g->marked[ch] = 0;
    return ms > 0.0f ? ms * 1e-3 : 0.0;
}

void cu_decode_rows(backend *be, float *out, const void *rows, int dt, size_t stride, const int32_t *idx, int n,
                    int cols) {
    cuda_backend *g = cuda__of(be);
    CHECK_K(kernels_engram_decode_rows(out, rows, dt, stride, idx, n, cols, g->stream));
}

void cu_scatter_rows(backend *be, void *dst, const void *src, const int32_t *slot, int n, size_t row_bytes) {
    cuda_backend *g = cuda__of(be);
    CHECK_K(kernels_scatter_rows(dst, src, slot, n, row_bytes, g->stream));
}


void cu_collect_rows(backend *be, void *dst, const void *src, const int32_t *slot, int n, size_t row_bytes) {
    cuda_backend *g = cuda__of(be);
    CHECK_K(kernels_collect_rows(dst, src, slot, n, row_bytes, g->stream));
}

/* On the back stream, from the compute's point now: the compute goes on at
 * once, and so do the channels' copies up on the copy stream. */
void cu_fetch_back(backend *be, int ch, void *dst, const void *src, size_t bytes) {
    cuda_backend *g = cuda__of(be);
    if (!bytes) return;
    CHECK_CUDA(cudaEventRecord(g->ev_back_from[ch], g->stream));
    CHECK_CUDA(cudaStreamWaitEvent(g->back, g->ev_back_from[ch], 0));
    CHECK_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, g->back));
    CHECK_CUDA(cudaEventRecord(g->ev_backed[ch], g->back));
    g->backed[ch] = 1;
}

cudaError_t cuda__fetch_init(cuda_backend *g) {
    cudaError_t e = cudaStreamCreateWithFlags(&g->copy, cudaStreamNonBlocking);
    if (e == cudaSuccess) e = cudaStreamCreateWithFlags(&g->back, cudaStreamNonBlocking);
    for (int ch = 0; ch < BACKEND_FETCH_CHANNELS && e == cudaSuccess; ch++) {
        e = cudaEventCreate(&g->ev_mark[ch]);
        if (e == cudaSuccess) e = cudaEventCreate(&g->ev_copied[ch]);
        if (e == cudaSuccess) e = cudaEventCreateWithFlags(&g->ev_released[ch], cudaEventDisableTiming);
        if (e == cudaSuccess) e = cudaEventCreateWithFlags(&g->ev_back_from[ch], cudaEventDisableTiming);
        if (e == cudaSuccess) e = cudaEventCreateWithFlags(&g->ev_backed[ch], cudaEventDisableTiming);
    }
    return e;
}

void cuda__fetch_free(cuda_backend *g) {
    for (int ch = 0; ch < BACKEND_FETCH_CHANNELS; ch++) {
        if (g->ev_mark[ch]) cudaEventDestroy(g->ev_mark[ch]);
        if (g->ev_copied[ch]) cudaEventDestroy(g->ev_copied[ch]);
        if (g->ev_released[ch]) cudaEventDestroy(g->ev_released[ch]);
        if (g->ev_back_from[ch]) cudaEventDestroy(g->ev_back_from[ch]);
        if (g->ev_backed[ch]) cudaEventDestroy(g->ev_backed[ch]);
    }
    if (g->copy) cudaStreamDestroy(g->copy);
    if (g->back) cudaStreamDestroy(g->back);
}
