/* Recorded steps of the CUDA backend (backend.h, "recorded steps"): CUDA
 * graphs captured from the stream, looked up by the caller's key (see
 * cuda_graph_slot in cuda_internal.h). */
#include <string.h>

#include "engine/backend/cuda/cuda_internal.h"

void graphs__clear(cuda_backend *g) {
    if (g->capturing >= 0) cuda__fail(__func__, "backend memory freed while a step is being recorded");
    for (int i = 0; i < GRAPH_SLOTS; i++) {
        if (g->graphs[i].state == 2) cudaGraphExecDestroy(g->graphs[i].exec);
        g->graphs[i].state = 0;
    }
}


int cu_step_begin(backend *be, const void *key, size_t key_bytes) {
    cuda_backend *g = cuda__of(be);
    if (g->graphs_off || key_bytes > GRAPH_KEY_MAX || g->capturing >= 0) return 0;
    g->tick++;
    int lru = 0;
    for (int i = 0; i < GRAPH_SLOTS; i++) {
        if (g->graphs[i].state && g->graphs[i].key_bytes == key_bytes && !memcmp(g->graphs[i].key, key, key_bytes)) {
            g->graphs[i].used = g->tick;
            if (g->graphs[i].state == 2) {
                int pi = prof__begin(g, "graph replay");
                CHECK_CUDA(cudaGraphLaunch(g->graphs[i].exec, g->stream));
                prof__end(g, pi);
                return 1;
            }
            CHECK_CUDA(cudaStreamBeginCapture(g->stream, cudaStreamCaptureModeRelaxed));
            g->capturing = i;
            return 0;
        }
        if (!g->graphs[i].state || (g->graphs[lru].state && g->graphs[i].used < g->graphs[lru].used)) lru = i;
    }
    if (g->graphs[lru].state == 2) CHECK_CUDA(cudaGraphExecDestroy(g->graphs[lru].exec));
    memcpy(g->graphs[lru].key, key, key_bytes);
    g->graphs[lru].key_bytes = key_bytes;
    g->graphs[lru].state = 1;
    g->graphs[lru].used = g->tick;
    return 0;
}

void cu_step_end(backend *be) {
    cuda_backend *g = cuda__of(be);
    int i = g->capturing;
    if (i < 0) return;
    g->capturing = -1;
    cuda__pf_join(g); /* a stream forked in the capture rejoins it before it ends */
    cudaGraph_t graph;
    CHECK_CUDA(cudaStreamEndCapture(g->stream, &graph));
    cudaError_t e = cudaGraphInstantiate(&g->graphs[i].exec, graph, 0);
    cudaGraphDestroy(graph);
    CHECK_CUDA(e);
    g->graphs[i].state = 2;
    CHECK_CUDA(cudaGraphLaunch(g->graphs[i].exec, g->stream));
}
