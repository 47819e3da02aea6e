/* The Engram module of one layer (ENGRAM.md section 6), backend-neutral:
 * gathered rows -> keys and value -> context gate per stream -> gated value
 * plus a short causal convolution. It runs on a whole step (several
 * sequences, see batch_desc); the convolution's history (the last
 * (K-1)*dilation normed inputs) belongs to each sequence and is reached
 * through b->seq_hist, so chunked prefill and token-by-token decode give
 * one-pass results. All buffers are backend memory unless named host. */
#ifndef ENGINE_ENGRAM_MODULE_H
#define ENGINE_ENGRAM_MODULE_H

#include "engine/backend/backend.h"
#include "engine/model/model.h"

/* Scratch for up to max_tokens positions of one module call. */
typedef struct {
    int max_tokens;
    float *e;      /* (T, E) retrieved rows: where callers gather a step's rows */
    float *v;      /* (T, d) value projection */
    float *k;      /* (T, d) key projection, then its norm */
    float *q;      /* (T, d) one stream's hidden state, then its norm */
    float *gate;   /* (T) one stream's gates */
    float *vg;     /* (T, G, d) gated values, then the module output */
    float *cin;    /* (T, G*d) normed gated values: the conv input */
    float *conv;   /* (T, G*d) */
} engram_scratch;

/* Returns 0, or -1 when memory runs out (nothing to free then). */
int engram_scratch_init(engram_scratch *s, backend *be, const model_engram *e, int d, int max_tokens);
void engram_scratch_free(engram_scratch *s, backend *be);

/* Floats of conv history one sequence keeps per Engram layer: (K-1)*dil rows of G*d. */
size_t engram_conv_history_floats(const model_engram *e, int d);

/* Runs the module of layer w on the b->n_tokens <= s->max_tokens tokens of a step.
 * h (T, G, d): the streams' hidden states; emb (T, E): the step's table rows
 * as f32 (from backend_gather_rows over w->table, or engram_fetch over
 * w->store; usually s->e); hist_off: where this layer's history starts in
 * each b->seq_hist entry (advanced to end at this step's last position).
 * out (T, G, d) = v_g + conv_g, to be added to h; gates (T, G) if not NULL. */
void engram_module_run(backend *be, const model_engram *e, const engram_weights *w, int d,
                       const batch_desc *b, const float *h, const float *emb, size_t hist_off, engram_scratch *s,
                       float *out, float *gates);

#endif
