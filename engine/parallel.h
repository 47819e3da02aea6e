/* A group of ranks and its collectives, the one implementation that expert
 * parallelism (expert_parallel.h) and tensor parallelism (tensor_parallel.h)
 * share (issue 18). Every rank runs the same steps on its own backend, its
 * own forward context and KV cache; the ranks meet only in these calls.
 *
 * The group is ranks in threads of one process (engine/ranks.c drives them
 * for the engine). Two implementations sit behind one interface, chosen when
 * the ranks join (par_rank_join):
 *   - NCCL, where the ranks' backends have the collective ops (the CUDA
 *     plugin, engine/backend/cuda/cuda_coll.c): par_all_reduce_sum is
 *     ncclAllReduce(ncclSum) on the backend's stream, par_all_gather an
 *     ncclAllGather into a (R, rows, width) staging buffer followed by R
 *     backend_copy2d into the interleaved layout (one call, no staging, when
 *     rows is 1: a decode step of one token). NCCL's ring sums in its own
 *     order, not rank order, so only the all-gather keeps results
 *     bit-identical on GPUs.
 *   - the CPU fake, where buffers are host memory (the CPU backend's): a
 *     collective is two barriers around plain loads and stores; it proves a
 *     partition exact (tests/unit/test_expert_parallel.c,
 *     test_tensor_parallel.c, test_engine_ranks.c).
 * bench/RESULTS.md, "tensor parallelism", has the plan and the bytes.
 * Internal to engine/. */
#ifndef ENGINE_PARALLEL_H
#define ENGINE_PARALLEL_H

#include <stdbool.h>
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

/* Makes rank r's collectives ready on be: with NCCL when be has the
 * collective ops (rank 0 makes the group's id; each rank then makes its
 * communicator, and a staging buffer of stage_floats floats for the
 * all-gathers: the most any of them gathers, rows x R width), else the CPU
 * fake, which needs nothing. Every rank of the group calls it at the same
 * time, each from the thread that issues be's ops; be (borrowed) is the
 * backend its collectives will be given. Returns 0, or -1 with a message
 * (then on every rank when the id failed; NCCL may hang when one rank alone
 * fails to join). */
int par_rank_join(const par_rank *r, backend *be, size_t stage_floats, char *err, size_t errlen);
/* Frees what par_rank_join made for rank r (its communicator, its staging),
 * from the same thread; nothing for the CPU fake. Accepts a rank that never
 * joined. */
void par_rank_leave(const par_rank *r);
/* Whether r's collectives can run on be's memory: NCCL joined on be, or,
 * without NCCL, be's memory is host memory (the CPU backend) that the fake
 * reads across threads. */
bool par_rank_usable(const par_rank *r, const backend *be);
/* "nccl" or "host" (the CPU fake): what r's group meets through (after joining). */
const char *par_rank_kind(const par_rank *r);

/* The share [*lo, *hi) of n items that rank r owns: contiguous, in rank
 * order, sizes differing by at most one (r NULL: all of them). */
void par_range(const par_rank *r, int n, int *lo, int *hi);

/* buf (n floats, be's memory) = the sum over the ranks' buffers, the same
 * bits on every rank: taken in rank order by the CPU fake, in NCCL's order
 * with NCCL. Every rank of the group must call it with the same n. */
void par_all_reduce_sum(const par_rank *r, backend *be, float *buf, size_t n);

/* dst (rows, R width) = every rank's src (rows, width) side by side, rank q's
 * in columns [q width, (q + 1) width) (be's memory, dst not overlapping
 * src). Every rank must call it with the same rows and width. */
void par_all_gather(const par_rank *r, backend *be, float *dst, const float *src, size_t rows, size_t width);

#endif
