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

int engram_scratch_init(engram_scratch *s, backend *be, const model_engram *e, int d, int max_tokens) {
    memset(s, 0, sizeof(*s));
    size_t T = (size_t)max_tokens, G = (size_t)e->hc_mult, F = sizeof(float);
    s->max_tokens = max_tokens;
    s->e = backend_alloc(be, T * e->embed_dim * F);
    s->v = backend_alloc(be, T * d * F);
    s->k = backend_alloc(be, T * d * F);
    s->q = backend_alloc(be, T * d * F);
    s->gate = backend_alloc(be, T * F);
    s->vg = backend_alloc(be, T * G * d * F);
    s->cin = backend_alloc(be, T * G * d * F);
    s->conv = backend_alloc(be, T * G * d * F);
    if (!s->e || !s->v || !s->k || !s->q || !s->gate || !s->vg || !s->cin || !s->conv) {
        engram_scratch_free(s, be);
        return -1;
    }
    return 0;
}

void engram_scratch_free(engram_scratch *s, backend *be) {
    backend_free(be, s->e);
    backend_free(be, s->v);
    backend_free(be, s->k);
    backend_free(be, s->q);
    backend_free(be, s->gate);
    backend_free(be, s->vg);
    backend_free(be, s->cin);
    backend_free(be, s->conv);
    memset(s, 0, sizeof(*s));
}

void engram_module_run(backend *be, const model_engram *e, const engram_weights *w, int d,
                       const batch_desc *b, const float *h, const float *emb, size_t hist_off, engram_scratch *s,
                       float *out, float *gates) {
    int G = e->hc_mult, T = b->n_tokens;
    size_t gd = (size_t)G * d;

    backend_matmul(be, s->v, emb, &w->w_value, w->b_value, T);           /* value (T, d), shared */
    for (int g = 0; g < G; g++) {
        backend_matmul(be, s->k, emb, &w->w_key[g], w->b_key[g], T);     /* key_g (T, d) */
        backend_rmsnorm(be, s->k, s->k, w->norm1[g], T, d, NORM_EPS);
        backend_copy2d(be, s->q, (size_t)d, h + (size_t)g * d, gd, (size_t)d, (size_t)T); /* query: stream g of h */
        backend_rmsnorm(be, s->q, s->q, w->norm2[g], T, d, NORM_EPS);
        backend_engram_gate(be, s->gate, s->k, s->q, T, d);
        if (gates) backend_copy2d(be, gates + g, (size_t)G, s->gate, 1, 1, (size_t)T);
        /* v_g = gate_g * value, stored as stream g of vg (T, G, d) */
        backend_scale_rows(be, s->vg + (size_t)g * d, gd, s->v, (size_t)d, s->gate, T, d);
    }
    /* Conv input: each stream's v_g, normed (through q as a contiguous buffer when G > 1). */
    if (G == 1) {
        backend_rmsnorm(be, s->cin, s->vg, w->conv_norm[0], T, d, CONV_NORM_EPS);
    } else {
        for (int g = 0; g < G; g++) {
            backend_copy2d(be, s->q, (size_t)d, s->vg + (size_t)g * d, gd, (size_t)d, (size_t)T);
            backend_rmsnorm(be, s->q, s->q, w->conv_norm[g], T, d, CONV_NORM_EPS);
            backend_copy2d(be, s->cin + (size_t)g * d, gd, s->q, (size_t)d, (size_t)d, (size_t)T);
        }
    }
    backend_short_conv(be, s->conv, s->cin, w->conv_w, b, hist_off, (int)gd, e->kernel_size, e->dilation);
    backend_copy2d(be, out, gd, s->vg, gd, gd, (size_t)T);
    backend_add(be, out, s->conv, (size_t)T * gd);
}
