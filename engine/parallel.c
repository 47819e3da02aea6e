/* The group of ranks in threads and its collectives over host memory. See
 * parallel.h. */
#include "engine/parallel.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct par_group {
    int n;
    pthread_barrier_t bar;
    const float **bufs; /* (n) each rank's buffer during a collective */
};

par_group *par_group_create(int n_ranks) {
    if (n_ranks < 1) return NULL;
    par_group *g = calloc(1, sizeof(*g));
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

void par_group_destroy(par_group *g) {
    if (!g) return;
    pthread_barrier_destroy(&g->bar);
    free(g->bufs);
    free(g);
}

void par_range(const par_rank *r, int n, int *lo, int *hi) {
    int R = r ? r->n_ranks : 1, k = r ? r->rank : 0;
    *lo = (int)((long long)n * k / R);
    *hi = (int)((long long)n * (k + 1) / R);
}

/* Each rank publishes its buffer; then each sums its own slice of the
 * elements over all buffers in rank order and writes the sum into every
 * buffer's slice at once (no other rank reads or writes that slice), so all
 * ranks end with the same bits. The second barrier: every slice written
 * before any rank reads its buffer. The CPU backend's ops are done when they
 * return, so be has nothing in flight to wait for. */
void par_all_reduce_sum(const par_rank *r, backend *be, float *buf, size_t n) {
    (void)be;
    par_group *g = r->group;
    int R = g->n, k = r->rank;
    g->bufs[k] = buf;
    pthread_barrier_wait(&g->bar);
    size_t lo = n * (size_t)k / (size_t)R, hi = n * ((size_t)k + 1) / (size_t)R;
    for (size_t i = lo; i < hi; i++) {
        float s = g->bufs[0][i];
        for (int q = 1; q < R; q++) s += g->bufs[q][i];
        for (int q = 0; q < R; q++) ((float *)g->bufs[q])[i] = s;
    }
    pthread_barrier_wait(&g->bar);
}

/* Each rank publishes its src and copies every rank's into its own dst; the
 * second barrier keeps each src unchanged until every rank has read it. */
void par_all_gather(const par_rank *r, backend *be, float *dst, const float *src, size_t rows, size_t width) {
    par_group *g = r->group;
    int R = g->n;
    g->bufs[r->rank] = src;
    pthread_barrier_wait(&g->bar);
    for (int q = 0; q < R; q++) backend_copy2d(be, dst + (size_t)q * width, (size_t)R * width, g->bufs[q], width, width, rows);
    pthread_barrier_wait(&g->bar);
}
