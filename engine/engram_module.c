/* Engram module forward (see engram_module.h). Numerics follow DeepSeek's
 * reference: key and query norms use no explicit eps (PyTorch then uses the
 * f32 machine epsilon), the conv's norms use 1e-5, the conv is depthwise with
 * dilation max_ngram_size, no bias, then SiLU. */
#include "engram_module.h"

#include <float.h>
#include <stdlib.h>
#include <string.h>

#define NORM_EPS FLT_EPSILON /* nn.RMSNorm(eps=None) on f32 input */
#define CONV_NORM_EPS 1e-5f

static int hist_rows(const model_engram *e) { return (e->kernel_size - 1) * e->dilation; }

size_t engram_conv_history_floats(const model_engram *e, int d) {
    return (size_t)hist_rows(e) * e->hc_mult * d;
}

int engram_scratch_init(engram_scratch *s, const model_engram *e, int d, int max_tokens) {
    memset(s, 0, sizeof(*s));
    size_t T = (size_t)max_tokens, G = (size_t)e->hc_mult, R = (size_t)hist_rows(e);
    s->max_tokens = max_tokens;
    s->e = malloc(T * e->embed_dim * sizeof(float));
    s->v = malloc(T * d * sizeof(float));
    s->k = malloc(T * d * sizeof(float));
    s->q = malloc(T * d * sizeof(float));
    s->gate = malloc(T * sizeof(float));
    s->vg = malloc(T * G * d * sizeof(float));
    s->cin = malloc((R + T) * G * d * sizeof(float));
    s->conv = malloc(T * G * d * sizeof(float));
    if (!s->e || !s->v || !s->k || !s->q || !s->gate || !s->vg || !s->cin || !s->conv) {
        engram_scratch_free(s);
        return -1;
    }
    return 0;
}

void engram_scratch_free(engram_scratch *s) {
    free(s->e);
    free(s->v);
    free(s->k);
    free(s->q);
    free(s->gate);
    free(s->vg);
    free(s->cin);
    free(s->conv);
    memset(s, 0, sizeof(*s));
}

int engram_module_run(const backend_ops *ops, const model_engram *e, const engram_weights *w, int d,
                       const float *h, const int64_t *rows, int T, float *hist, engram_scratch *s,
                       float *out, float *gates) {
    int G = e->hc_mult, R = hist_rows(e);
    size_t gd = (size_t)G * d;

    if (w->store) { /* e (T, E) from the table file: host rows, same bits as the tensor's */
        if (engram_store_gather(w->store, rows, (size_t)T * e->n_heads, s->e, NULL)) return -1;
    } else {
        ops->gather_rows(s->e, &w->table, rows, T, e->n_heads); /* e (T, E) */
    }
    ops->matmul(s->v, s->e, &w->w_value, w->b_value, T);           /* value (T, d), shared */
    for (int g = 0; g < G; g++) {
        ops->matmul(s->k, s->e, &w->w_key[g], w->b_key[g], T);     /* key_g (T, d) */
        ops->rmsnorm(s->k, s->k, w->norm1[g], T, d, NORM_EPS);
        for (int t = 0; t < T; t++)                                /* query: stream g of h */
            memcpy(s->q + (size_t)t * d, h + (size_t)t * gd + (size_t)g * d, (size_t)d * sizeof(float));
        ops->rmsnorm(s->q, s->q, w->norm2[g], T, d, NORM_EPS);
        ops->engram_gate(s->gate, s->k, s->q, T, d);
        if (gates)
            for (int t = 0; t < T; t++) gates[(size_t)t * G + g] = s->gate[t];
        /* v_g = gate_g * value, stored as stream g of vg (T, G, d) */
        for (int t = 0; t < T; t++)
            ops->scale_rows(s->vg + (size_t)t * gd + (size_t)g * d, s->v + (size_t)t * d, s->gate + t, 1, d);
    }
    /* Conv input: the R history rows, then this chunk's per-stream normed v_g. */
    memcpy(s->cin, hist, (size_t)R * gd * sizeof(float));
    for (int t = 0; t < T; t++)
        for (int g = 0; g < G; g++) {
            size_t o = (size_t)t * gd + (size_t)g * d;
            ops->rmsnorm(s->cin + (size_t)R * gd + o, s->vg + o, w->conv_norm[g], 1, d, CONV_NORM_EPS);
        }
    ops->short_conv(s->conv, s->cin, w->conv_w, T, (int)gd, e->kernel_size, e->dilation);
    memcpy(hist, s->cin + (size_t)T * gd, (size_t)R * gd * sizeof(float)); /* keep the last R rows */
    memcpy(out, s->vg, (size_t)T * gd * sizeof(float));
    ops->add(out, s->conv, (size_t)T * gd);
    return 0;
}
