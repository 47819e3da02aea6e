/* A group of ranks and its collectives, the one implementation that expert
 * parallelism (expert_parallel.h) and tensor parallelism (tensor_parallel.h)
 * share (issue 18). Every rank runs the same steps on its own backend, its
 * own forward context and KV cache; the ranks meet only in these calls.
 *
 * Here the group is ranks in threads of one process whose buffers are host
 * memory (the CPU backend's), and a collective is two barriers around plain
 * loads and stores: the CPU fake that proves a partition exact
 * (tests/unit/test_expert_parallel.c, test_tensor_parallel.c). The calls
 * take the rank's backend so that NCCL slots in behind the same interface:
 * par_all_reduce_sum is ncclAllReduce(ncclSum) on the backend's stream,
 * par_all_gather an ncclAllGather into a (R, rows, width) staging buffer
 * followed by R backend_copy2d into the interleaved layout (one call, no
 * staging, when rows is 1: a decode step of one token). NCCL's ring sums in
 * its own order, not rank order, so only the all-gather keeps results
 * bit-identical on GPUs; bench/RESULTS.md, "tensor parallelism", has the
 * plan and the bytes. Internal to engine/. */
#ifndef ENGINE_PARALLEL_H
#define ENGINE_PARALLEL_H

#include <stddef.h>

#include "engine/backend/backend.h"

typedef struct par_group par_group;

/* A group of n_ranks ranks, each driven by its own thread. NULL when out of memory. */
par_group *par_group_create(int n_ranks);
void par_group_destroy(par_group *g); /* accepts NULL; after every rank stopped calling */

/* One rank's view of its group. */
typedef struct {
    par_group *group;
    int rank, n_ranks;
} par_rank;

/* The share [*lo, *hi) of n items that rank r owns: contiguous, in rank
 * order, sizes differing by at most one (r NULL: all of them). */
void par_range(const par_rank *r, int n, int *lo, int *hi);

/* buf (n floats, be's memory) = the sum over the ranks' buffers, taken in
 * rank order, the same bits on every rank. Every rank of the group must call
 * it with the same n. */
void par_all_reduce_sum(const par_rank *r, backend *be, float *buf, size_t n);

/* dst (rows, R width) = every rank's src (rows, width) side by side, rank q's
 * in columns [q width, (q + 1) width) (be's memory, dst not overlapping
 * src). Every rank must call it with the same rows and width. */
void par_all_gather(const par_rank *r, backend *be, float *dst, const float *src, size_t rows, size_t width);

#endif
