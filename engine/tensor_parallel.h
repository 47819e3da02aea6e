/* Tensor parallelism (issue 18): the attention heads and the dense MLP's
 * intermediate rows split among the ranks of a group (engine/parallel.h),
 * each rank a model slice (model_tp_slice, engine/model/model.h) with its
 * own KV cache of its KV heads only. The residual stream is replicated:
 * every rank computes the norms, the router and the head on every token.
 * The two products that leave a rank's share, o_proj and down, meet here:
 *
 *   MODEL_TP_GATHER (the default): the input shares are all-gathered, each
 *   rank computes the output rows it holds over the whole input, and those
 *   are all-gathered. Every output element is one dot product that one
 *   rank's kernel computes as a single rank computes it (the CPU product is
 *   invariant over the rows computed beside an element), so the result is
 *   the single-rank one, bit for bit. Four all-gathers a layer.
 *   MODEL_TP_REDUCE: each rank multiplies its input columns, the partial
 *   sums are all-reduced (Megatron's row-parallel layer). Two all-reduces a
 *   layer and fewer bytes, but the sum is taken in another order: within a
 *   stated tolerance of one rank, not equal to it.
 *
 * DeepSeek-V4's attention (forward_dsv4.c, grouped_out) splits by output
 * group and meets by the all-gather of its wo_a outputs and then tp_matmul
 * over wo_b: bit-exact too.
 *
 * tests/unit/test_tensor_parallel.c proves both on the fixture models;
 * bench/RESULTS.md, "tensor parallelism", has the bytes per step. Internal
 * to engine/. */
#ifndef ENGINE_TENSOR_PARALLEL_H
#define ENGINE_TENSOR_PARALLEL_H

#include "engine/backend/backend.h"
#include "engine/parallel.h"

/* out (T, n) = a @ W^T (+ bias) of the whole model's matrix W (n, K), from
 * this rank's share a (T, K / R) of the input columns and its slice w of W
 * (GATHER: rows [rank n/R, (rank+1) n/R), whole input; REDUCE: the input
 * columns of its share, the bias on rank 0 only). Scratch (backend memory):
 * gath (T, K) and part (T, n / R) for GATHER, unused for REDUCE. The same
 * bits on every rank. */
void tp_matmul(const par_rank *r, model_tp_mode mode, backend *be, float *out, float *gath, float *part, const float *a,
               const weight *w, const float *bias, int T);

#endif
