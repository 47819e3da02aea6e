/* A tensor-parallel rank's share of a model (model.h, "tensor
 * parallelism"): the split rule, its checks, and the slice, made of row
 * views into the whole model's matrices (and, for the all-reduce variant,
 * column copies of o_proj and down). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/model/dtype.h"
#include "engine/model/model.h"
#include "engine/model/model_internal.h"

/* DeepSeek-V4's attention, split by output group (model.h): the heads, and
 * wo_a's rows by whole groups (R divides G) or by equal shares of one group
 * (R a multiple of G); wo_b's output rows gathered. */
static int dsv4_check(const model_config *c, int R, model_tp_mode mode, char *err, size_t errlen) {
    int G = c->dsv4.o_groups, Ro = c->dsv4.o_lora_rank;
    if (mode != MODEL_TP_GATHER)
        return snprintf(err, errlen, "tensor parallelism: DeepSeek-V4's attention splits by the all-gather variant "
                                     "only (the all-reduce one would cut wo_b by columns, FP8 in the release)"),
               MODEL_ERR_CONFIG;
    if (c->n_heads % R)
        return snprintf(err, errlen, "tensor parallelism: %d ranks do not divide the model's %d attention heads",
                        R, c->n_heads), MODEL_ERR_CONFIG;
    if (G % R && (R % G || Ro % (R / G)))
        return snprintf(err, errlen,
                        "tensor parallelism: %d ranks neither divide DeepSeek-V4's %d output groups (o_groups) nor "
                        "split each group's %d wo_a rows (o_lora_rank) evenly", R, G, Ro), MODEL_ERR_CONFIG;
    if (c->hidden_size % R)
        return snprintf(err, errlen, "tensor parallelism: %d ranks do not divide the model's hidden_size %d", R,
                        c->hidden_size), MODEL_ERR_CONFIG;
    return MODEL_OK;
}

int model_tp_check(const model_config *c, int R, model_tp_mode mode, char *err, size_t errlen) {
    if (R < 1) return snprintf(err, errlen, "tensor parallelism: %d ranks", R), MODEL_ERR_CONFIG;
    if (c->arch == ARCH_DEEPSEEK_V4) return dsv4_check(c, R, mode, err, errlen);
    if (c->n_heads % R)
        return snprintf(err, errlen, "tensor parallelism: %d ranks do not divide the model's %d attention heads",
                        R, c->n_heads), MODEL_ERR_CONFIG;
    /* Each rank's query heads must use whole KV heads: its own share of them,
     * or the one they all share (replicated on R / nkv ranks). */
    if (c->n_kv_heads % R && R % c->n_kv_heads)
        return snprintf(err, errlen,
                        "tensor parallelism: %d ranks neither divide the model's %d KV heads nor are a multiple of them",
                        R, c->n_kv_heads), MODEL_ERR_CONFIG;
    bool dense = false;
    for (int l = 0; l < c->n_layers; l++) dense |= !c->moe.n_experts || !c->moe.layer_moe[l];
    if (dense && c->intermediate_size % R)
        return snprintf(err, errlen, "tensor parallelism: %d ranks do not divide the model's intermediate_size %d", R,
                        c->intermediate_size), MODEL_ERR_CONFIG;
    /* the all-gather of o_proj's and down's output rows: equal shares, as
     * NCCL's all-gather wants */
    if (mode == MODEL_TP_GATHER && c->hidden_size % R)
        return snprintf(err, errlen, "tensor parallelism: %d ranks do not divide the model's hidden_size %d", R,
                        c->hidden_size), MODEL_ERR_CONFIG;
    return MODEL_OK;
}

/* Columns [c0, c0 + n) of a dense matrix, copied into memory s owns. */
static int col_slice(model *s, const weight *w, int c0, int n, weight *out, const char *what, int layer, char *err,
                     size_t errlen) {
    if (w->fmt != WEIGHT_DENSE) {
        snprintf(err, errlen, "tensor parallelism: the all-reduce variant cuts layer %d's %s by columns, "
                              "which a quantized matrix does not allow (use the all-gather variant)", layer, what);
        return MODEL_ERR_CONFIG;
    }
    size_t es = dtype_size(w->dt), row = (size_t)n * es;
    char *p = (char *)model__own(s, ((size_t)w->rows * row + sizeof(float) - 1) / sizeof(float));
    if (!p) return snprintf(err, errlen, "out of memory"), MODEL_ERR_NOMEM;
    for (int i = 0; i < w->rows; i++)
        memcpy(p + (size_t)i * row, (const char *)w->data + ((size_t)i * w->cols + c0) * es, row);
    *out = *w;
    out->data = p;
    out->cols = n;
    return MODEL_OK;
}

/* DeepSeek-V4: rank k's query heads [k nh/R, (k+1) nh/R) (wq_b's rows and
 * their sinks), wo_a's rows [k G Ro/R, (k+1) G Ro/R) (its groups, or its
 * share of one group) and wo_b's output rows [k d/R, (k+1) d/R). wq_a, wkv,
 * the compressors, the indexer and the hyper-connections stay whole: every
 * rank computes the single K=V head and its entries. The config keeps
 * o_groups and o_lora_rank of the whole projection (forward_dsv4.c's
 * grouped_out cuts it by rank); n_heads is the rank's. */
static int dsv4_slice(const model *m, model *s, int k, int R) {
    const model_config *c = &m->cfg;
    int nh = c->n_heads / R, D = c->head_dim, d = c->hidden_size / R;
    int rows = c->dsv4.o_groups * c->dsv4.o_lora_rank / R;
    if (!(s->dsv4 = malloc(sizeof(*s->dsv4))) ||
        !(s->dsv4->layers = malloc((size_t)c->n_layers * sizeof(dsv4_layer)))) {
        free(s->dsv4);
        s->dsv4 = NULL;
        return MODEL_ERR_NOMEM;
    }
    dsv4_layer *layers = s->dsv4->layers;
    *s->dsv4 = *m->dsv4;
    s->dsv4->layers = layers;
    s->cfg.n_heads = nh;
    for (int l = 0; l < c->n_layers; l++) {
        const dsv4_layer *W = &m->dsv4->layers[l];
        dsv4_layer *Y = &layers[l];
        *Y = *W;
        Y->wq_b = model_weight_row_view(&W->wq_b, k * nh * D, nh * D);
        Y->sinks = W->sinks + k * nh; /* each head's sink goes with its head */
        Y->wo_a = model_weight_row_view(&W->wo_a, k * rows, rows);
        Y->wo_b = model_weight_row_view(&W->wo_b, k * d, d);
    }
    return MODEL_OK;
}

int model_tp_slice(const model *m, int k, int R, model_tp_mode mode, model **out, char *err, size_t errlen) {
    const model_config *c = &m->cfg;
    *out = NULL;
    int rc = model_tp_check(c, R, mode, err, errlen);
    if (rc != MODEL_OK) return rc;
    if (k < 0 || k >= R) return snprintf(err, errlen, "tensor parallelism: rank %d of %d", k, R), MODEL_ERR_CONFIG;
    model *s = malloc(sizeof(*s));
    if (!s) return snprintf(err, errlen, "out of memory"), MODEL_ERR_NOMEM;
    *s = *m;
    s->parent = m;
    s->owned = NULL, s->n_owned = s->cap_owned = 0;
    s->tp = (model_tp){.rank = k, .n_ranks = R, .mode = mode};
    s->dsv4 = NULL; /* a DeepSeek-V4 slice owns its own (dsv4_slice) */
    if (!(s->layers = calloc((size_t)c->n_layers, sizeof(*s->layers)))) {
        free(s);
        return snprintf(err, errlen, "out of memory"), MODEL_ERR_NOMEM;
    }
    if (c->arch == ARCH_DEEPSEEK_V4) {
        memcpy(s->layers, m->layers, (size_t)c->n_layers * sizeof(*s->layers)); /* norms, experts, Engram: shared */
        if ((rc = dsv4_slice(m, s, k, R)) != MODEL_OK) {
            model_destroy(s);
            return snprintf(err, errlen, "out of memory"), rc;
        }
        *out = s;
        return MODEL_OK;
    }
    int hd = c->head_dim, nh = c->n_heads / R, nkv = c->n_kv_heads >= R ? c->n_kv_heads / R : 1;
    int kv0 = (int)((long long)k * c->n_kv_heads / R); /* its first KV head (floor: the shared one) */
    int ff = c->intermediate_size / R, d = c->hidden_size / R;
    s->cfg.n_heads = nh;
    s->cfg.n_kv_heads = nkv;
    s->cfg.intermediate_size = ff;
    for (int l = 0; l < c->n_layers && rc == MODEL_OK; l++) {
        const layer_weights *W = &m->layers[l];
        layer_weights *L = &s->layers[l];
        *L = *W;
        int q0 = k * nh * hd, k0 = kv0 * hd;
        L->wq = model_weight_row_view(&W->wq, q0, nh * hd);
        L->wk = model_weight_row_view(&W->wk, k0, nkv * hd);
        L->wv = model_weight_row_view(&W->wv, k0, nkv * hd);
        if (W->bq) L->bq = W->bq + q0, L->bk = W->bk + k0, L->bv = W->bv + k0;
        bool dense = !W->moe;
        if (dense) {
            L->w_gate = model_weight_row_view(&W->w_gate, k * ff, ff);
            L->w_up = model_weight_row_view(&W->w_up, k * ff, ff);
            if (W->b_gate) L->b_gate = W->b_gate + k * ff, L->b_up = W->b_up + k * ff;
        }
        if (mode == MODEL_TP_GATHER) {
            L->wo = model_weight_row_view(&W->wo, k * d, d);
            if (W->bo) L->bo = W->bo + k * d;
            if (dense) {
                L->w_down = model_weight_row_view(&W->w_down, k * d, d);
                if (W->b_down) L->b_down = W->b_down + k * d;
            }
        } else {
            rc = col_slice(s, &W->wo, q0, nh * hd, &L->wo, "o_proj", l, err, errlen);
            if (rc == MODEL_OK && dense) rc = col_slice(s, &W->w_down, k * ff, ff, &L->w_down, "down_proj", l, err, errlen);
            if (k) L->bo = NULL, L->b_down = NULL; /* added once, by rank 0 */
        }
    }
    if (rc != MODEL_OK) {
        model_destroy(s);
        return rc;
    }
    *out = s;
    return MODEL_OK;
}
