/* Expert parallelism: the sparse layer over the ranks of a group. See
 * expert_parallel.h. */
#include "engine/expert_parallel.h"

void ep_moe_experts(const par_rank *r, backend *be, float *out, float *pairs, const float *x, const int32_t *ids,
                    const float *wts, const moe_weights *moe, int T) {
    if (!r || r->n_ranks == 1) {
        backend_moe_experts(be, out, x, ids, wts, moe, T);
        return;
    }
    int lo, hi, k = moe->top_k, d = moe->router.cols;
    par_range(r, moe->n_experts, &lo, &hi);
    backend_moe_pairs(be, pairs, x, ids, moe, T, lo, hi);
    par_all_reduce_sum(r, be, pairs, (size_t)T * k * d);
    backend_moe_combine(be, out, pairs, wts, T, k, d);
}
