/* Engram module forward (see engram_module.h). Numerics follow DeepSeek's
 * reference: key and query norms use no explicit eps (PyTorch then uses the
 * f32 machine epsilon), the conv's norms use 1e-5, the conv is depthwise with
 * dilation max_ngram_size, no bias, then SiLU. */
#include "engine/engram_module.h"

#include <float.h>
#include <stdlib.h>
#include <string.h>

#define NORM_EPS FLT_EPSILON /* nn.RMSNorm(eps=None) on f32 input */
#define CONV_NORM_EPS 1e-5f

static int hist_rows(const model_engram *e) { return (e->kernel_size - 1) * e->dilation; }

size_t engram_conv_history_floats(const model_engram *e, int d) {
    return (size_t)hist_rows(e) * e->hc_mult * d;
}

int engram_scratch_init(engram_scratch *s, const backend_ops *ops, const model_engram *e, int d, int max_tokens) {
    memset(s, 0, sizeof(*s));
    size_t T = (size_t)max_tokens, G = (size_t)e->hc_mult, F = sizeof(float);
    s->max_tokens = max_tokens;
    s->e = ops->alloc(T * e->embed_dim * F);
    s->v = ops->alloc(T * d * F);
    s->k = ops->alloc(T * d * F);
    s->q = ops->alloc(T * d * F);
    s->gate = ops->alloc(T * F);
    s->vg = ops->alloc(T * G * d * F);
    s->cin = ops->alloc(T * G * d * F);
    s->conv = ops->alloc(T * G * d * F);
    if (!s->e || !s->v || !s->k || !s->q || !s->gate || !s->vg || !s->cin || !s->conv) {
        engram_scratch_free(s, ops);
        return -1;
    }
    return 0;
}

void engram_scratch_free(engram_scratch *s, const backend_ops *ops) {
    ops->free(s->e);
    ops->free(s->v);
    ops->free(s->k);
    ops->free(s->q);
    ops->free(s->gate);
    ops->free(s->vg);
    ops->free(s->cin);
    ops->free(s->conv);
    memset(s, 0, sizeof(*s));
}

void engram_module_run(const backend_ops *ops, const model_engram *e, const engram_weights *w, int d,
                       const batch_desc *b, const float *h, const float *emb, size_t hist_off, engram_scratch *s,
                       float *out, float *gates) {
    int G = e->hc_mult, T = b->n_tokens;
    size_t gd = (size_t)G * d;

    ops->matmul(s->v, emb, &w->w_value, w->b_value, T);           /* value (T, d), shared */
    for (int g = 0; g < G; g++) {
        ops->matmul(s->k, emb, &w->w_key[g], w->b_key[g], T);     /* key_g (T, d) */
        ops->rmsnorm(s->k, s->k, w->norm1[g], T, d, NORM_EPS);
        ops->copy2d(s->q, (size_t)d, h + (size_t)g * d, gd, (size_t)d, (size_t)T); /* query: stream g of h */
        ops->rmsnorm(s->q, s->q, w->norm2[g], T, d, NORM_EPS);
        ops->engram_gate(s->gate, s->k, s->q, T, d);
        if (gates) ops->copy2d(gates + g, (size_t)G, s->gate, 1, 1, (size_t)T);
        /* v_g = gate_g * value, stored as stream g of vg (T, G, d) */
        ops->scale_rows(s->vg + (size_t)g * d, gd, s->v, (size_t)d, s->gate, T, d);
    }
    /* Conv input: each stream's v_g, normed (through q as a contiguous buffer when G > 1). */
    if (G == 1) {
        ops->rmsnorm(s->cin, s->vg, w->conv_norm[0], T, d, CONV_NORM_EPS);
    } else {
        for (int g = 0; g < G; g++) {
            ops->copy2d(s->q, (size_t)d, s->vg + (size_t)g * d, gd, (size_t)d, (size_t)T);
            ops->rmsnorm(s->q, s->q, w->conv_norm[g], T, d, CONV_NORM_EPS);
            ops->copy2d(s->cin + (size_t)g * d, gd, s->q, (size_t)d, (size_t)d, (size_t)T);
        }
    }
    ops->short_conv(s->conv, s->cin, w->conv_w, b, hist_off, (int)gd, e->kernel_size, e->dilation);
    ops->copy2d(out, gd, s->vg, gd, gd, (size_t)T);
    ops->add(out, s->conv, (size_t)T * gd);
}
