/* The Engram module of one layer (ENGRAM.md section 6), backend-neutral:
 * gathered rows -> keys and value -> context gate per stream -> gated value
 * plus a short causal convolution. The convolution's history (the last
 * (K-1)*dilation normed inputs) belongs to the sequence and is passed in, so
 * chunked prefill and token-by-token decode give one-pass results. */
#ifndef ENGINE_ENGRAM_MODULE_H
#define ENGINE_ENGRAM_MODULE_H

#include "backend.h"
#include "model.h"

/* Scratch for up to max_tokens positions of one module call. */
typedef struct {
    int max_tokens;
    float *e;     /* (T, E) gathered rows */
    float *v;     /* (T, d) value projection */
    float *k;     /* (T, d) key projection, then its norm */
    float *q;     /* (T, d) one stream's hidden state, then its norm */
    float *gate;  /* (T) */
    float *vg;    /* (T, G, d) gated values */
    float *cin;   /* (R + T, G*d) conv history then normed gated values */
    float *conv;  /* (T, G*d) */
} engram_scratch;

/* Returns 0, or -1 when memory runs out (nothing to free then). */
int engram_scratch_init(engram_scratch *s, const model_engram *e, int d, int max_tokens);
void engram_scratch_free(engram_scratch *s);

/* Floats of conv history one sequence keeps per Engram layer: (K-1)*dil rows of G*d. */
size_t engram_conv_history_floats(const model_engram *e, int d);

/* Runs the module on T <= s->max_tokens positions.
 * h (T, G, d): the streams' hidden states; rows (T, H): table rows (hash + offset);
 * hist ((K-1)*dil, G*d): normed conv inputs of the previous positions, zeros at
 * the start of a sequence; updated to end at the last of these T positions.
 * out (T, G, d) = v_g + conv_g, to be added to h; gates (T, G) if not NULL.
 * The rows come from w->store when the layer has one, else ops->gather_rows.
 * Returns 0, or -1 when the store could not read the rows (then nothing is
 * updated). */
int engram_module_run(const backend_ops *ops, const model_engram *e, const engram_weights *w, int d,
                       const float *h, const int64_t *rows, int T, float *hist, engram_scratch *s,
                       float *out, float *gates);

#endif
