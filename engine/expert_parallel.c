/* Expert parallelism: the group's collective (threads and a barrier) and the
 * sparse layer over ranks. See expert_parallel.h. */
#include "engine/expert_parallel.h"

#include <pthread.h>
#include <stdlib.h>

struct ep_group {
    int n;
    pthread_barrier_t bar;
    float **bufs; /* (n) each rank's buffer during an all-reduce */
};

ep_group *ep_group_create(int n_ranks) {
    if (n_ranks < 1) return NULL;
    ep_group *g = calloc(1, sizeof(*g));
    if (!g || !(g->bufs = calloc((size_t)n_ranks, sizeof(float *)))) {
        free(g);
        return NULL;
    }
    g->n = n_ranks;
    if (pthread_barrier_init(&g->bar, NULL, (unsigned)n_ranks)) {
        free(g->bufs);
        free(g);
        return NULL;
    }
    return g;
}

void ep_group_destroy(ep_group *g) {
    if (!g) return;
    pthread_barrier_destroy(&g->bar);
    free(g->bufs);
    free(g);
}

void ep_expert_range(const ep_rank *r, int E, int *lo, int *hi) {
    int n = r ? r->n_ranks : 1, k = r ? r->rank : 0;
    *lo = (int)((long long)E * k / n);
    *hi = (int)((long long)E * (k + 1) / n);
}

/* Each rank publishes its buffer; then each sums its own slice of the
 * elements over all buffers in rank order and writes the sum into every
 * buffer's slice at once (no other rank reads or writes that slice), so all
 * ranks end with the same bits. The second barrier: every slice written
 * before any rank reads its buffer. */
void ep_all_reduce_sum(const ep_rank *r, float *buf, size_t n) {
    ep_group *g = r->group;
    int R = g->n, k = r->rank;
    g->bufs[k] = buf;
    pthread_barrier_wait(&g->bar);
    size_t lo = n * (size_t)k / (size_t)R, hi = n * ((size_t)k + 1) / (size_t)R;
    for (size_t i = lo; i < hi; i++) {
        float s = g->bufs[0][i];
        for (int q = 1; q < R; q++) s += g->bufs[q][i];
        for (int q = 0; q < R; q++) g->bufs[q][i] = s;
    }
    pthread_barrier_wait(&g->bar);
}

void ep_moe_experts(const ep_rank *r, backend *be, float *out, float *pairs, const float *x, const int32_t *ids,
                    const float *wts, const moe_weights *moe, int T) {
    if (!r || r->n_ranks == 1) {
        backend_moe_experts(be, out, x, ids, wts, moe, T);
        return;
    }
    int lo, hi, k = moe->top_k, d = moe->router.cols;
    ep_expert_range(r, moe->n_experts, &lo, &hi);
    backend_moe_pairs(be, pairs, x, ids, moe, T, lo, hi);
    ep_all_reduce_sum(r, pairs, (size_t)T * k * d);
    backend_moe_combine(be, out, pairs, wts, T, k, d);
}
