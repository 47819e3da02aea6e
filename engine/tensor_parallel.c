/* Tensor parallelism: the products that leave a rank's share. See
 * tensor_parallel.h. */
#include "engine/tensor_parallel.h"

void tp_matmul(const par_rank *r, model_tp_mode mode, backend *be, float *out, float *gath, float *part, const float *a,
               const weight *w, const float *bias, int T) {
    int R = r->n_ranks;
    if (mode == MODEL_TP_REDUCE) {
        backend_matmul(be, out, a, w, bias, T);
        par_all_reduce_sum(r, be, out, (size_t)T * w->rows);
        return;
    }
    par_all_gather(r, be, gath, a, (size_t)T, (size_t)(w->cols / R));
    backend_matmul(be, part, gath, w, bias, T);
    par_all_gather(r, be, out, part, (size_t)T, (size_t)w->rows);
}
