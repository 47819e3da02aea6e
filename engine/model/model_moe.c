/* Mixture-of-experts layers (Qwen3MoeForCausalLM): the config keys that say
 * which layers are sparse and how their router works, and each sparse
 * layer's router and experts, as the release names them
 * (mlp.experts.{e}.{gate,up,down}_proj.weight) or as transformers 5 stacks
 * them in memory (mlp.experts.gate_up_proj [E, 2I, d] and
 * mlp.experts.down_proj [E, d, I]). Called by model.c; calls model_read.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/model/model_internal.h"

/* Reads the optional integer list `key` into out (n_out entries); entries
 * must lie in [0, n_layers). Returns 0, or -1 with a message. */
static int get_layer_list(const cJSON *root, const char *key, int n_layers, bool *out, const char *label,
                          char *err, size_t errlen) {
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!a || cJSON_IsNull(a)) return 0;
    if (!cJSON_IsArray(a)) {
        snprintf(err, errlen, "%s: key %s must be a list of layer indices", label, key);
        return -1;
    }
    for (const cJSON *e = a->child; e; e = e->next) {
        if (!cJSON_IsNumber(e) || e->valuedouble != (double)(int)e->valuedouble || e->valuedouble < 0 ||
            e->valuedouble >= n_layers) {
            snprintf(err, errlen, "%s: key %s holds %s, not a layer index below %d", label, key,
                     cJSON_IsNumber(e) ? "an out-of-range number" : "a non-number", n_layers);
            return -1;
        }
        out[(int)e->valuedouble] = true;
    }
    return 0;
}

int model__parse_moe_config(const cJSON *root, model_config *c, const char *label, char *err, size_t errlen) {
    moe_config *mc = &c->moe;
    memset(mc, 0, sizeof(*mc));
    if (c->arch != ARCH_QWEN3_MOE) return 0;
    /* transformers 5 writes num_local_experts, the releases num_experts. */
    const char *ekey = cJSON_GetObjectItemCaseSensitive(root, "num_experts") ? "num_experts" : "num_local_experts";
    int step;
    bool mlp_only[MODEL_MAX_LAYERS] = {0};
    if (model__get_int(root, ekey, INT32_MIN, 1, MODEL_MAX_EXPERTS, &mc->n_experts, label, err, errlen) ||
        model__get_int(root, "num_experts_per_tok", INT32_MIN, 1, mc->n_experts, &mc->top_k, label, err, errlen) ||
        model__get_int(root, "moe_intermediate_size", INT32_MIN, 1, 1 << 20, &mc->inter, label, err, errlen) ||
        model__get_bool(root, "norm_topk_prob", false, &mc->norm_topk_prob, label, err, errlen) ||
        model__get_int(root, "decoder_sparse_step", 1, 1, MODEL_MAX_LAYERS, &step, label, err, errlen) ||
        get_layer_list(root, "mlp_only_layers", c->n_layers, mlp_only, label, err, errlen))
        return -1;
    for (int i = 0; i < c->n_layers; i++) mc->layer_moe[i] = !mlp_only[i] && (i + 1) % step == 0;
    return 0;
}

/* Expert e's matrices from the per-expert tensors. */
static int load_expert(model *m, int i, int e, moe_weights *w, char *err, size_t errlen) {
    int d = m->cfg.hidden_size, I = w->inter, rc;
    char n[256];
#define P(part) (snprintf(n, sizeof(n), "model.layers.%d.mlp.experts.%d.%s.weight", i, e, part), n)
    if ((rc = model__load_matrix(m, P("gate_proj"), I, d, &w->gate[e], err, errlen)) ||
        (rc = model__load_matrix(m, P("up_proj"), I, d, &w->up[e], err, errlen)) ||
        (rc = model__load_matrix(m, P("down_proj"), d, I, &w->down[e], err, errlen)))
        return rc;
#undef P
    return MODEL_OK;
}

/* All experts from the stacked tensors: gate rows [0, I) and up rows [I, 2I)
 * of gate_up_proj[e], down_proj[e]. */
static int load_stacked(model *m, int i, moe_weights *w, char *err, size_t errlen) {
    int d = m->cfg.hidden_size, I = w->inter, E = w->n_experts, rc;
    char gu[256], dn[256];
    snprintf(gu, sizeof(gu), "model.layers.%d.mlp.experts.gate_up_proj", i);
    snprintf(dn, sizeof(dn), "model.layers.%d.mlp.experts.down_proj", i);
    for (int e = 0; e < E; e++)
        if ((rc = model__load_slice(m, gu, E, e, 2 * I, d, 0, I, &w->gate[e], err, errlen)) ||
            (rc = model__load_slice(m, gu, E, e, 2 * I, d, I, I, &w->up[e], err, errlen)) ||
            (rc = model__load_slice(m, dn, E, e, d, I, 0, d, &w->down[e], err, errlen)))
            return rc;
    return MODEL_OK;
}

int model__load_moe_layer(model *m, int i, char *err, size_t errlen) {
    const moe_config *mc = &m->cfg.moe;
    moe_weights *w = &m->moe[i];
    int E = mc->n_experts, rc;
    *w = (moe_weights){.scoring = MOE_SOFTMAX, .n_experts = E, .top_k = mc->top_k, .inter = mc->inter,
                       .norm_topk = mc->norm_topk_prob};
    w->gate = calloc((size_t)E * 3, sizeof(weight));
    if (!w->gate) {
        snprintf(err, errlen, "out of memory");
        return MODEL_ERR_NOMEM;
    }
    w->up = w->gate + E;
    w->down = w->up + E;
    char n[256], f[256];
    snprintf(n, sizeof(n), "model.layers.%d.mlp.gate.weight", i);
    if ((rc = model__load_matrix(m, n, E, m->cfg.hidden_size, &w->router, err, errlen))) return rc;
    const char *file;
    snprintf(f, sizeof(f), "model.layers.%d.mlp.experts.gate_up_proj", i);
    if (model__find_tensor(m, f, &file)) {
        rc = load_stacked(m, i, w, err, errlen);
    } else {
        for (int e = 0; e < E && !(rc = load_expert(m, i, e, w, err, errlen)); e++) {}
    }
    if (rc) return rc;
    m->layers[i].moe = w;
    return MODEL_OK;
}

void model__destroy_moe(model *m) {
    if (!m->moe) return;
    for (int i = 0; i < m->cfg.n_layers; i++) free(m->moe[i].gate);
    free(m->moe);
}
