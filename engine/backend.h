/* The ops a backend provides to the forward pass, as a table of function
 * pointers chosen once at start (no #ifdef in forward.c). Activations are f32
 * row-major (tokens, features); weights are read in their checkpoint dtype.
 * The CPU backend (backend_cpu.c) is the reference every other backend must
 * match op by op. */
#ifndef ENGINE_BACKEND_H
#define ENGINE_BACKEND_H

#include "model.h"

typedef struct {
    const char *name;
    /* out (T, w.rows) = x (T, w.cols) @ w^T (+ bias (w.rows) if not NULL) */
    void (*matmul)(float *out, const float *x, const weight *w, const float *bias, int T);
    /* out (T, d) = rmsnorm(x (T, d)) * g (d); out may alias x */
    void (*rmsnorm)(float *out, const float *x, const float *g, int T, int d, float eps);
    /* out (T, d) = rows ids[t] of the embedding, as f32 */
    void (*embed)(float *out, const weight *emb, const int32_t *ids, int T);
    /* In place on x (T, n_heads, hd): rotate halves by pos[t] * inv_freq (hd/2). */
    void (*rope)(float *x, const int32_t *pos, int T, int n_heads, int hd, const float *inv_freq);
    /* Causal attention of q (T, n_heads, hd) at positions pos0..pos0+T-1 over a
     * paged cache: position j's K row is k + (blocks[j / bs] * bs + j % bs) * n_kv*hd
     * (likewise V), for j < pos0+T; keys j with i - j < window (0: all);
     * out (T, n_heads, hd). */
    void (*attention)(float *out, const float *q, const float *k, const float *v, const int *blocks,
                      int bs, int T, int pos0, int n_heads, int n_kv, int hd, int window);
    /* gate (T, n) = silu(gate) * up */
    void (*swiglu)(float *gate, const float *up, size_t n);
    /* x (n) += y (n) */
    void (*add)(float *x, const float *y, size_t n);

    /* Engram (ENGRAM.md section 6) */
    /* out (T, H*D) = concatenation of table rows rows[t*H + h], as f32 */
    void (*gather_rows)(float *out, const weight *table, const int64_t *rows, int T, int H);
    /* gate (T) = sigmoid(sign(s) sqrt(max(|s|, 1e-6))), s = dot(nk[t], nq[t]) / sqrt(d) */
    void (*engram_gate)(float *gate, const float *nk, const float *nq, int T, int d);
    /* out (T, d) = s[t] * x (T, d); out may alias x */
    void (*scale_rows)(float *out, const float *x, const float *s, int T, int d);
    /* Depthwise causal conv then SiLU: in (R+T, C) holds R = (K-1)*dil history
     * rows then the chunk; out (T, C)[t, c] = silu(sum_k w[c, k] in[R+t-(K-1-k)*dil, c]). */
    void (*short_conv)(float *out, const float *in, const float *w, int T, int C, int K, int dil);
} backend_ops;

/* The CPU reference backend (plain C, OpenBLAS for multi-token products, OpenMP). */
const backend_ops *backend_cpu(void);

#endif
