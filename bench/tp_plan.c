/* The bytes and collectives of tensor parallelism per layer and per decode
 * token (engine/tensor_parallel.h), from a synthetic spec's config (no
 * weights made) and the split rule the engine uses (model_tp_check), for
 * R = 2, 4, 8 and both variants: arithmetic, not a measurement.
 *   bench-tp_plan [SPEC...]   (default: llama3-8b qwen3-30b-a3b)
 * Activations are the engine's f32 (4 bytes; bf16 would halve every byte
 * count). A ring all-gather of N bytes in all moves (R-1)/R N in and out of
 * each rank, a ring all-reduce of N bytes 2 (R-1)/R N. The all-gather
 * variant gathers each attention output and o_proj's output rows (and, on a
 * dense MLP, its intermediate and down's output rows); the all-reduce variant
 * reduces o_proj's and down's partial sums. A sparse layer's experts are
 * split by expert parallelism: the existing all-reduce of the (token, slot)
 * rows, T top_k d floats, is counted apart. */
#include <stdio.h>

#include "engine/model/model.h"

#define NVLINK 450e9 /* H100 SXM NVLink 4, bytes/s per direction per GPU: the datasheet value, not measured */

int main(int argc, char **argv) {
    const char *def[] = {"llama3-8b", "qwen3-30b-a3b"};
    int n = argc > 1 ? argc - 1 : 2;
    for (int s = 0; s < n; s++) {
        const char *spec = argc > 1 ? argv[s + 1] : def[s];
        model_config c;
        char err[256];
        if (model_synthetic_config(spec, &c, err, sizeof(err)) != MODEL_OK) {
            fprintf(stderr, "bench-tp_plan: %s\n", err);
            return 1;
        }
        int L = c.n_layers, dense = 0;
        for (int l = 0; l < L; l++) dense += !c.moe.n_experts || !c.moe.layer_moe[l];
        double qw = (double)c.n_heads * c.head_dim, d = c.hidden_size, ff = c.intermediate_size;
        double ep = c.moe.n_experts ? (double)c.moe.top_k * d * 4 : 0; /* EP's pairs, bytes per token */
        printf("%s: %d layers (%d dense MLP), d %g, %d heads x %d (%d KV), ff %g", spec, L, dense, d, c.n_heads,
               c.head_dim, c.n_kv_heads, ff);
        if (c.moe.n_experts) printf(", %d experts (top %d)", c.moe.n_experts, c.moe.top_k);
        printf("\n%-2s %-6s %-17s %-26s %-24s %s\n", "R", "mode", "collectives/step", "bytes/rank/token/layer",
               "bytes/rank/token/step", "at 450 GB/s");
        for (int R = 2; R <= 8; R *= 2) {
            if (model_tp_check(&c, R, MODEL_TP_GATHER, err, sizeof(err)) != MODEL_OK) {
                printf("%-2d %s\n", R, err);
                continue;
            }
            double g = (double)(R - 1) / R;
            for (int mode = 0; mode < 2; mode++) {
                /* per step, all layers, one token; the experts' all-reduce added where the layer is sparse */
                double bytes = 0;
                int coll = 0;
                if (mode == MODEL_TP_GATHER) {
                    bytes = g * 4 * ((qw + d) * L + (ff + d) * dense);
                    coll = 2 * L + 2 * dense;
                } else {
                    bytes = 2 * g * 4 * d * (L + dense);
                    coll = L + dense;
                }
                bytes += 2 * g * ep * (L - dense);
                coll += L - dense;
                printf("%-2d %-6s %-17d %-26.0f %-24.0f %.2f us\n", R, mode ? "reduce" : "gather", coll, bytes / L,
                       bytes, bytes / NVLINK * 1e6);
            }
        }
        printf("(per layer: gather 2 collectives for the attention, 2 more on a dense MLP; reduce 1 and 1");
        printf(ep ? "; a sparse layer adds expert parallelism's all-reduce of %g bytes of expert rows per token)\n" : ")\n", ep);
        printf("\n");
    }
    return 0;
}
