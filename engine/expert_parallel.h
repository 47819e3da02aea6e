/* Expert parallelism (issue 18): the routed experts of every sparse layer
 * split among the ranks of a group (engine/parallel.h) in contiguous id
 * ranges (par_range). Every rank runs the rest of the model on every token
 * (the attention replicated, or split by tensor parallelism over another
 * group or the same one), computes the (token, slot) products of its own
 * experts, and one all-reduce of those rows gives every rank all of them
 * (each row has one owner; the others add exact zeros). Each token's
 * weighted sum is then taken in slot order, as a single rank takes it: the
 * result is the single-rank one, bit for bit
 * (tests/unit/test_expert_parallel.c). Internal to engine/. */
#ifndef ENGINE_EXPERT_PARALLEL_H
#define ENGINE_EXPERT_PARALLEL_H

#include <stdint.h>

#include "engine/backend/backend.h"
#include "engine/parallel.h"

/* backend_moe_experts over the group: with r NULL or one rank, that op
 * itself; else this rank's experts into pairs (T top_k, d; backend memory),
 * the all-reduce, the combine. */
void ep_moe_experts(const par_rank *r, backend *be, float *out, float *pairs, const float *x, const int32_t *ids,
                    const float *wts, const moe_weights *moe, int T);

#endif
