/* The group of ranks in threads and its collectives: NCCL through the
 * backends' collective ops, or the CPU fake over host memory. See
 * parallel.h. */
#include "engine/parallel.h"

#include <assert.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct par_group {
    int n;
    pthread_barrier_t bar;
    const float **bufs; /* (n) each rank's buffer during a collective (the CPU fake) */
    /* NCCL, once joined (par_rank_join); comm[k] NULL: the CPU fake */
    unsigned char id[BACKEND_COLL_ID_BYTES]; /* the group's id, made by rank 0 */
    int *join_rc;                            /* (n) each rank's progress in par_rank_join: 0, or -1 */
    void **comm;                             /* (n) each rank's communicator */
    backend **be;                            /* (n) the backend each joined on */
    float **stage;                           /* (n) each rank's all-gather staging, backend memory */
    size_t *stage_floats;                    /* (n) its size */
};

par_group *par_group_create(int n_ranks) {
    if (n_ranks < 1) return NULL;
    par_group *g = calloc(1, sizeof(*g));
    if (!g) return NULL;
    size_t n = (size_t)n_ranks;
    g->bufs = calloc(n, sizeof(*g->bufs));
    g->comm = calloc(n, sizeof(*g->comm));
    g->be = calloc(n, sizeof(*g->be));
    g->stage = calloc(n, sizeof(*g->stage));
    g->stage_floats = calloc(n, sizeof(*g->stage_floats));
    g->join_rc = calloc(n, sizeof(*g->join_rc));
    g->n = n_ranks;
    if (!g->bufs || !g->comm || !g->be || !g->stage || !g->stage_floats || !g->join_rc ||
        pthread_barrier_init(&g->bar, NULL, (unsigned)n_ranks)) {
        free(g->bufs), free(g->comm), free(g->be), free(g->stage), free(g->stage_floats), free(g->join_rc);
        free(g);
        return NULL;
    }
    return g;
}

void par_group_destroy(par_group *g) {
    if (!g) return;
    pthread_barrier_destroy(&g->bar);
    free(g->bufs), free(g->comm), free(g->be), free(g->stage), free(g->stage_floats), free(g->join_rc);
    free(g);
}

int par_rank_join(const par_rank *r, backend *be, size_t stage_floats, char *err, size_t errlen) {
    par_group *g = r->group;
    int k = r->rank;
    bool nccl = backend_has(be, coll_init);
    g->join_rc[k] = 0;
    if (nccl && k == 0) g->join_rc[k] = backend_coll_id(be, g->id, err, errlen);
    if (nccl && !g->join_rc[k]) {
        g->be[k] = be;
        g->stage_floats[k] = stage_floats;
        if (stage_floats && !(g->stage[k] = backend_alloc(be, stage_floats * sizeof(float)))) {
            snprintf(err, errlen, "rank %d: out of %s memory for the all-gather staging (%zu floats)", k,
                     backend_name(be), stage_floats);
            g->join_rc[k] = -1;
        }
    }
    pthread_barrier_wait(&g->bar); /* the id, and whether every rank got this far */
    if (!nccl) return 0;
    for (int q = 0; q < g->n; q++)
        if (g->join_rc[q]) { /* no rank calls NCCL, which would wait for the missing one */
            if (!g->join_rc[k]) snprintf(err, errlen, "rank %d of the group could not join it", q);
            return -1;
        }
    if (!(g->comm[k] = backend_coll_init(be, g->id, g->n, k, err, errlen))) return -1;
    return 0;
}

void par_rank_leave(const par_rank *r) {
    par_group *g = r->group;
    int k = r->rank;
    if (!g || !g->be[k]) return;
    backend_coll_free(g->be[k], g->comm[k]);
    backend_free(g->be[k], g->stage[k]);
    g->comm[k] = NULL, g->stage[k] = NULL, g->be[k] = NULL, g->stage_floats[k] = 0;
}

bool par_rank_usable(const par_rank *r, const backend *be) {
    par_group *g = r->group;
    if (g && g->comm[r->rank]) return g->be[r->rank] == be;
    return !strcmp(backend_name(be), "cpu");
}

const char *par_rank_kind(const par_rank *r) { return r->group && r->group->comm[r->rank] ? "nccl" : "host"; }

void par_range(const par_rank *r, int n, int *lo, int *hi) {
    int R = r ? r->n_ranks : 1, k = r ? r->rank : 0;
    *lo = (int)((long long)n * k / R);
    *hi = (int)((long long)n * (k + 1) / R);
}

/* The CPU fake: each rank publishes its buffer; then each sums its own
 * slice of the elements over all buffers in rank order and writes the sum
 * into every buffer's slice at once (no other rank reads or writes that
 * slice), so all ranks end with the same bits. The second barrier: every
 * slice written before any rank reads its buffer. The CPU backend's ops are
 * done when they return, so be has nothing in flight to wait for. */
void par_all_reduce_sum(const par_rank *r, backend *be, float *buf, size_t n) {
    par_group *g = r->group;
    int R = g->n, k = r->rank;
    if (g->comm[k]) {
        backend_all_reduce_sum(be, g->comm[k], buf, n);
        return;
    }
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

/* NCCL gathers whole buffers end to end, (R, rows, width): a single row is
 * already the (1, R width) layout; more rows go through the staging and one
 * strided copy per rank. The CPU fake: each rank publishes its src and
 * copies every rank's into its own dst; the second barrier keeps each src
 * unchanged until every rank has read it. */
void par_all_gather(const par_rank *r, backend *be, float *dst, const float *src, size_t rows, size_t width) {
    par_group *g = r->group;
    int R = g->n, k = r->rank;
    if (g->comm[k]) {
        if (rows == 1) {
            backend_all_gather(be, g->comm[k], dst, src, width);
            return;
        }
        assert(rows * width * (size_t)R <= g->stage_floats[k] && "par_rank_join's stage_floats too small");
        backend_all_gather(be, g->comm[k], g->stage[k], src, rows * width);
        for (int q = 0; q < R; q++)
            backend_copy2d(be, dst + (size_t)q * width, (size_t)R * width, g->stage[k] + (size_t)q * rows * width,
                           width, width, rows);
        return;
    }
    g->bufs[k] = src;
    pthread_barrier_wait(&g->bar);
    for (int q = 0; q < R; q++) backend_copy2d(be, dst + (size_t)q * width, (size_t)R * width, g->bufs[q], width, width, rows);
    pthread_barrier_wait(&g->bar);
}
