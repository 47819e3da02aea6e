/* Expert parallelism (issue 18): the routed experts of every sparse layer
 * split among the ranks of a group in contiguous id ranges. Every rank runs
 * the rest of the model on every token (the attention replicated), computes
 * the (token, slot) products of its own experts, and one all-reduce of those
 * rows gives every rank all of them (each row has one owner; the others add
 * exact zeros). Each token's weighted sum is then taken in slot order, as a
 * single rank takes it: the result is the single-rank one, bit for bit.
 *
 * The group here is ranks in threads of one process, whose collective is a
 * barrier over host memory: the CPU fake that proves the partition exact
 * (tests/unit/test_expert_parallel.c). NCCL over GPUs is the next step: the
 * same ep_rank, its all-reduce on device memory. Internal to engine/. */
#ifndef ENGINE_EXPERT_PARALLEL_H
#define ENGINE_EXPERT_PARALLEL_H

#include <stddef.h>
#include <stdint.h>

#include "engine/backend/backend.h"

typedef struct ep_group ep_group;

/* A group of n_ranks ranks, each driven by its own thread. NULL when out of memory. */
ep_group *ep_group_create(int n_ranks);
void ep_group_destroy(ep_group *g); /* accepts NULL; after every rank stopped calling */

/* One rank's view of its group. */
typedef struct {
    ep_group *group;
    int rank, n_ranks;
} ep_rank;

/* The experts [*lo, *hi) of E that rank owns: contiguous, sizes differing by at most one. */
void ep_expert_range(const ep_rank *r, int E, int *lo, int *hi);

/* buf (n floats, host memory) = the sum over the ranks' buffers, taken in rank
 * order, the same on every rank. Every rank of the group must call it with
 * the same n. */
void ep_all_reduce_sum(const ep_rank *r, float *buf, size_t n);

/* backend_moe_experts over the group: with r NULL or one rank, that op
 * itself; else this rank's experts into pairs (T top_k, d; backend memory
 * that is host memory: the threads' fake), the all-reduce, the combine. */
void ep_moe_experts(const ep_rank *r, backend *be, float *out, float *pairs, const float *x, const int32_t *ids,
                    const float *wts, const moe_weights *moe, int T);

#endif
