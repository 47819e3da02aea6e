/* The bytes and collectives of tensor parallelism per layer and per decode
 * token (engine/tensor_parallel.h), from a synthetic spec's config (no
 * weights made) and the split rule the engine uses (model_tp_check), for
 * R = 2, 4, 8 and both variants: arithmetic, not a measurement.
 *   bench-tp_plan [SPEC...]   (default: llama3-8b qwen3-30b-a3b deepseek-v4-flash)
 * Activations are the engine's f32 (4 bytes; bf16 would halve every byte
 * count). A ring all-gather of N bytes in all moves (R-1)/R N in and out of
 * each rank, a ring all-reduce of N bytes 2 (R-1)/R N. The all-gather
 * variant gathers each attention output and o_proj's output rows (and, on a
 * dense MLP, its intermediate and down's output rows); the all-reduce variant
 * reduces o_proj's and down's partial sums. A sparse layer's experts are
 * split by expert parallelism: the existing all-reduce of the (token, slot)
 * rows, T top_k d floats, is counted apart.
 * DeepSeek-V4 (deepseek-v4-flash, deepseek-v4.1-flash) splits its attention
 * by output group (forward_dsv4.c, grouped_out): `group` is the design built,
 * where a rank whose groups' heads are all its own (R divides o_groups)
 * gathers only wo_a's outputs (G R_o) and then wo_b's output rows (d), and a
 * rank holding a share of one group (R a multiple of o_groups) gathers the
 * heads' outputs (nh D) first; `heads` gathers the heads' outputs at every
 * R (what the group structure spares); `reduce` is Megatron's all-reduce of
 * wo_b's partial sums (not built: another summation order, and a column cut
 * of the release's FP8 wo_b). Every layer is sparse: expert parallelism's
 * all-reduce rides on every one. */
#include <stdio.h>

#include "engine/model/model.h"

#define NVLINK 450e9 /* H100 SXM NVLink 4, bytes/s per direction per GPU: the datasheet value, not measured */

/* One DeepSeek-V4 table: per decode token, all layers. */
static void dsv4_plan(const char *spec, const model_config *c) {
    const dsv4_config *v = &c->dsv4;
    int L = c->n_layers, G = v->o_groups;
    double d = c->hidden_size, att = (double)c->n_heads * c->head_dim, oa = (double)G * v->o_lora_rank;
    double ep = (double)c->moe.top_k * d * 4; /* expert parallelism's (token, slot) rows, bytes */
    char err[256];
    printf("%s: %d layers (all sparse), d %g, %d heads x %d (one K=V head, replicated), %d output groups x %d, "
           "%d experts (top %d)\n", spec, L, d, c->n_heads, c->head_dim, G, v->o_lora_rank, c->moe.n_experts,
           c->moe.top_k);
    printf("%-2s %-7s %-17s %-15s %-26s %-24s %s\n", "R", "design", "collectives/step", "attention/layer",
           "bytes/rank/token/layer", "bytes/rank/token/step", "at 450 GB/s");
    for (int R = 2; R <= 8; R *= 2) {
        if (model_tp_check(c, R, MODEL_TP_GATHER, err, sizeof(err)) != MODEL_OK) {
            printf("%-2d %s\n", R, err);
            continue;
        }
        double g = (double)(R - 1) / R;
        const char *names[] = {"group", "heads", "reduce"};
        for (int k = 0; k < 3; k++) {
            double floats = k == 2 ? 2 * d : oa + d + (k == 1 || R > G ? att : 0); /* per layer, one token */
            int coll = k == 2 ? 1 : 2 + (k == 1 || R > G);
            double bytes = (g * 4 * floats + 2 * g * ep) * L;
            printf("%-2d %-7s %-17d %-15.0f %-26.0f %-24.0f %.2f us\n", R, names[k], (coll + 1) * L,
                   g * 4 * floats, bytes / L, bytes, bytes / NVLINK * 1e6);
        }
    }
    printf("(attention/layer: its bytes alone, per rank and token; per layer: group gathers wo_a's outputs (%g floats) and wo_b's rows (%g), heads also the heads' "
           "outputs (%g), reduce all-reduces wo_b's partial sums; each adds expert parallelism's all-reduce of %g "
           "bytes of expert rows per token)\n\n", oa, d, att, ep);
}

int main(int argc, char **argv) {
    const char *def[] = {"llama3-8b", "qwen3-30b-a3b", "deepseek-v4-flash"};
    int n = argc > 1 ? argc - 1 : 3;
    for (int s = 0; s < n; s++) {
        const char *spec = argc > 1 ? argv[s + 1] : def[s];
        model_config c;
        char err[256];
        if (model_synthetic_config(spec, &c, err, sizeof(err)) != MODEL_OK) {
            fprintf(stderr, "bench-tp_plan: %s\n", err);
            return 1;
        }
        if (c.arch == ARCH_DEEPSEEK_V4) {
            dsv4_plan(spec, &c);
            continue;
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
