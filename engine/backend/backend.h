/* The ops a backend provides to the forward pass, as a table of function
 * pointers chosen once at start (no #ifdef in forward.c), reached through a
 * backend handle that every op takes first (ggml style): the handle holds the
 * table and the backend's own state (streams, scratch, recorded steps, fetch
 * channels, timers), so two handles are independent.
 *
 * Memory: activations, the KV cache, Engram conv histories and the batch
 * descriptor live in *backend memory* (host memory for the CPU, device memory
 * for CUDA), taken with alloc and filled with upload; forward.c never
 * dereferences them, it only passes them to ops and reads results back with
 * download. Weights are read through the backend's view of the model
 * (prepare): for the CPU that is the model itself; a GPU backend returns a
 * copy of the model struct whose weight and vector pointers are device
 * copies. Activations are f32 row-major (tokens, features); weights keep the
 * dtype of their view.
 *
 * Ops are issued in order on one stream; download waits for everything
 * issued before it. Every op works on a whole step: the tokens of several
 * sequences laid end to end, described by a batch_desc. The CPU backend
 * (backend_cpu.c) is the reference every other backend must match op by op;
 * its ops compute each output row the same way whatever else is in the batch
 * (batch invariance). */
#ifndef ENGINE_BACKEND_H
#define ENGINE_BACKEND_H

#include "engine/model/model.h"

/* One step's tokens: sequence s owns tokens seq_start[s] .. seq_start[s+1]-1,
 * at positions seq_pos0[s] onwards. Pointer fields are backend memory; the
 * h_ fields are host copies for backends that plan launches on the host. */
typedef struct {
    int n_seqs, n_tokens;
    int block_size;           /* KV positions per block */
    int max_blocks;           /* row stride of block_tables */
    int max_q;                /* most tokens of one sequence in this step */
    int max_ctx;              /* most positions one sequence attends to (pos0 + its tokens) */
    const int32_t *pos;       /* (n_tokens) position of each token */
    const int32_t *slot;      /* (n_tokens) KV cache row of each token: block * block_size + offset */
    const int32_t *tok_seq;   /* (n_tokens) sequence of each token */
    const int32_t *seq_start; /* (n_seqs + 1) */
    const int32_t *seq_pos0;  /* (n_seqs) */
    const int32_t *block_tables; /* (n_seqs, max_blocks) physical blocks of positions 0.. */
    float *const *seq_hist;   /* (n_seqs) each sequence's Engram conv history (see short_conv), or NULL */
    float *const *seq_state;  /* (n_seqs) each sequence's DeepSeek-V4 state (see dsv4_state), or NULL */
    const int32_t *h_seq_start, *h_seq_pos0; /* host copies */
} batch_desc;

/* One DeepSeek-V4 layer's per-position decode state (DEEPSEEK_V4.md section
 * 3) in the paged KV cache: block b of the layer starts at base + b *
 * block_floats and holds, for its bs = batch_desc.block_size positions,
 *   (bs, D)     the normed, rotated kv rows, position p at row p % bs
 *   (slots, D)  with m > 0, the compressed entries of the windows that start
 *               in the block: entry w (positions [w m, (w+1) m)) in the block
 *               of position w m, slot (w m % bs) / m
 *   (slots, dI) on CSA layers, the index keys of those windows
 * slots = ceil(bs / m) (the first positions of windows in one block are m
 * apart, so that slot is unique): any rate, a divisor of bs or not, and a
 * rate above bs gives one slot that blocks without a window start leave
 * unused. Every row is written before it is read, so blocks need no reset. */
typedef struct {
    float *base;         /* backend memory: the layer's store in the pool */
    size_t block_floats; /* dsv4_kv_block_floats */
    int m, slots, D, dI; /* rate (0: sliding), entries per block, kv and index key widths */
    /* where the entries and index keys are: the layer's own store, or on a DeepSeek-V4.1
     * ratio-1/2 layer its kv source's (same blocks, same layout) */
    float *ebase;
    size_t eblock_floats;
} dsv4_kv;

/* Floats of one block of a layer of rate m (0: sliding) in the layout above; entries only when
 * the layer keeps them (not a V4.1 layer that reads its kv source's), index keys when keys. */
static inline size_t dsv4_kv_block_floats(int bs, int m, bool entries, bool keys, int D, int dI) {
    size_t slots = m && entries ? (size_t)((bs + m - 1) / m) : 0;
    return (size_t)bs * D + slots * D + (keys ? slots * dI : 0);
}

/* What one layer's state keeps of one sequence apart from the blocks, small
 * and independent of its length (backend memory, owned by forward_dsv4.c):
 * the compressors' open windows and the CSA overlap, i.e. the projections of
 * the last 2m positions, position p at row p % 2m (a V4.1 ratio-2 kv source:
 * its kv and score, SGLang's ring of pending pairs). Derived from those
 * positions alone, so a sequence recomputed from position 0 rewrites it.
 * Every sequence's state has the same layout, so one dsv4_state per layer
 * says where its rings start (floats into batch_desc.seq_state[s]): the ops
 * find a step's sequences through the uploaded table, and a recorded step
 * replays for other sequences. */
typedef struct {
    size_t c_kv, c_gate;  /* (2m, cw) compressor projections (before ape), cw = 2D (CSA) or D (HCA) */
    size_t i_kv, i_gate;  /* (2m, 2 dI) the indexer compressor's (CSA) */
} dsv4_state;

#define BACKEND_FETCH_CHANNELS 8 /* Engram layers with host tables, at most */

/* An RMSNorm that a fused product applies to its input x (T, cols) first: each
 * row as rmsnorm does, with weight g (cols) and eps. h (T, cols, backend
 * memory) is where the backend may put the normed rows; it need not (the
 * CUDA decode products scale x as they load it), so h holds nothing after. */
typedef struct {
    const float *g;
    float eps;
    float *h;
} backend_norm;

typedef struct backend backend;

typedef struct backend_ops {
    const char *name;
    /* Frees the handle and everything the backend holds for it (streams,
     * scratch, recordings); the caller has freed its backend memory and
     * released its views first. */
    void (*destroy)(backend *be);
    size_t kv_elem_bytes; /* bytes per K/V element in the cache: 4 (f32) on the CPU, 2 (bf16) on CUDA */
    /* Alignment the products want of weights they read in place from the
     * loaded file (the CPU: 64, a cache line; a load split across two lines
     * costs its decode products 19-26%), or 0 where prepare copies them
     * anyway (CUDA). model_load_ex copies a file whose tensors miss it. */
    size_t weight_align;

    /* ---- memory ---- */
    void *(*alloc)(backend *be, size_t bytes); /* backend memory, zero-filled; NULL when out of memory */
    void (*free)(backend *be, void *p);        /* accepts NULL */
    void (*upload)(backend *be, void *dst, const void *host, size_t bytes);
    void (*download)(backend *be, void *host, const void *src, size_t bytes); /* waits for earlier ops */
    /* rows x width floats: dst[r * dpitch + i] = src[r * spitch + i] (pitches in floats) */
    void (*copy2d)(backend *be, float *dst, size_t dpitch, const float *src, size_t spitch, size_t width, size_t rows);
    /* Bytes of backend memory free now and in all, for sizing the KV cache;
     * NULL where memory is the host's (the CPU). */
    void (*mem_info)(backend *be, size_t *free_bytes, size_t *total_bytes);
    /* The model as this backend reads it; NULL when out of memory (err says
     * why). release undoes it. */
    model *(*prepare)(backend *be, model *m, char *err, size_t errlen);
    void (*release)(backend *be, model *view, model *m);

    /* ---- compute ---- */
    /* out (T, w.rows) = x (T, w.cols) @ w^T (+ bias (w.rows) if not NULL) */
    void (*matmul)(backend *be, float *out, const float *x, const weight *w, const float *bias, int T);
    /* G products side by side (DeepSeek-V4's grouped output projection): with R = w.rows / G (G
     * divides w.rows) and K = w.cols, y[:, g R : (g+1) R] = x[:, g K : (g+1) K] @ W_g^T for g < G,
     * W_g rows [g R, (g+1) R) of w; x (T, G K) in rows of xs >= G K floats, y (T, G R). Each
     * element as matmul computes it with the group's rows alone (a row view) on the group's
     * columns of x copied out: the CPU's bits are those, on the GPU the same up to rounding. */
    void (*matmul_grouped)(backend *be, float *y, const float *x, size_t xs, const weight *w, int G, int T);
    /* out (T, d) = rmsnorm(x (T, d)) * g (d); out may alias x */
    void (*rmsnorm)(backend *be, float *out, const float *x, const float *g, int T, int d, float eps);
    /* out (T, d) = rows ids[t] of the embedding, as f32 */
    void (*embed)(backend *be, float *out, const weight *emb, const int32_t *ids, int T);
    /* In place on x (T, n_heads, hd): rotate halves by pos[t] * inv_freq (hd/2). */
    void (*rope)(backend *be, float *x, const int32_t *pos, int T, int n_heads, int hd, const float *inv_freq);
    /* Writes each token's K and V rows (T, kvw) into row b->slot[t] of one
     * layer's cache storage kc, vc ((n_blocks * block_size, kvw) elements of
     * kv_elem_bytes). */
    void (*kv_store)(backend *be, void *kc, void *vc, const float *k, const float *v, const batch_desc *b, int kvw);
    /* Causal attention of q (T, n_heads, hd): token t of sequence s at position
     * p attends to positions j <= p (and p - j < window unless window is 0)
     * of s, whose K row is kc + (block_tables[s][j / bs] * bs + j % bs) * n_kv*hd
     * (likewise V); GQA maps head h to kv head h / (n_heads / n_kv).
     * out (T, n_heads, hd). The tokens' own rows must be stored first. */
    void (*attention)(backend *be, float *out, const float *q, const void *kc, const void *vc, const batch_desc *b,
                      int n_heads, int n_kv, int hd, int window);
    /* gate (n) = silu(gate) * up */
    void (*swiglu)(backend *be, float *gate, const float *up, size_t n);
    /* x (n) += y (n) */
    void (*add)(backend *be, float *x, const float *y, size_t n);
    /* out (n, d) = rows idx[i] of x (., d); idx in backend memory */
    void (*gather_f32)(backend *be, float *out, const float *x, const int32_t *idx, int n, int d);
    /* next (T) = argmax of each row of logits (T, vocab), lowest id on ties */
    void (*argmax)(backend *be, int32_t *next, const float *logits, int T, int vocab);

    /* ---- mixture of experts (optional: NULL where a backend has none; a
     * model with sparse layers then does not run there) ---- */
    /* From router logits (T, moe->n_experts): ids (T, top_k) each token's
     * chosen experts in ascending id order, wts (T, top_k) their weights
     * (moe_scoring says how; tokens (T), the step's token ids, for routers
     * that read them). */
    void (*moe_route)(backend *be, int32_t *ids, float *wts, const float *logits, const int32_t *tokens,
                      const moe_weights *moe, int T);
    /* out (T, d) = sum over i in order of wts[t, i] * down_e(silu(gate_e x[t]) * up_e x[t]),
     * e = ids[t, i], from 0; each token's result independent of the others. */
    void (*moe_experts)(backend *be, float *out, const float *x, const int32_t *ids, const float *wts,
                        const moe_weights *moe, int T);
    /* Optional: out (T, d) += what moe_experts computes (that sum first, then one addition, as add
     * would add it; CUDA: the decode kernel adds it as it writes). */
    void (*moe_experts_add)(backend *be, float *out, const float *x, const int32_t *ids, const float *wts,
                            const moe_weights *moe, int T);
    /* Expert parallelism (engine/expert_parallel.h; optional): pairs (T k, d) row t k + i = the
     * product down_e(swiglu) of token t for e = ids[t, i] when lo <= e < hi, else zeros (each row
     * as moe_experts computes it); then out (T, d) = sum over i in order of wts[t, i] pairs[t k + i],
     * from 0: moe_experts' result, bit for bit, once every rank's rows are in. */
    void (*moe_pairs)(backend *be, float *pairs, const float *x, const int32_t *ids, const moe_weights *moe, int T,
                      int lo, int hi);
    void (*moe_combine)(backend *be, float *out, const float *pairs, const float *wts, int T, int k, int d);

    /* ---- DeepSeek-V4 (optional; DEEPSEEK_V4.md section 2; a model of this
     * family runs only where all are set). st (host struct) is one layer's
     * layout of the sequences' states, read and written through b->seq_state;
     * kv (host struct) is the layer's store in the KV cache, read and written
     * through b's block tables. A backend that records steps reads whatever
     * changes from step to step in b's backend memory, never in its host
     * copies, so that one recording replays for any decode step of its key. ---- */
    /* out (T, d) = x / sqrt(mean(x^2) + eps), no weight; out may alias x */
    void (*rmsnorm_plain)(backend *be, float *out, const float *x, int T, int d, float eps);
    /* A hyper-connection from mix (T, (2+N)N) = fn . rmsnorm_plain(X): post (T, N), comb (T, N, N)
     * (softmax, + hc_eps, Sinkhorn with iters column and iters-1 row passes), x (T, d) = sum_j pre[j] X[j]
     * with X (T, N, d). */
    void (*hc_split)(backend *be, float *post, float *comb, float *x, const float *X, const float *mix,
                     const float *base, const float *scale, int T, int N, int d, int iters, float hc_eps);
    /* X[k] (T, N, d) = post[k] y + sum_j comb[j, k] X[j], y (T, d) */
    void (*hc_merge)(backend *be, float *X, const float *y, const float *post, const float *comb, int T, int N, int d);
    /* out (T, d) = sum_j (sigmoid(mix[j] scale[0] + base[j]) + hc_eps) X[j], mix (T, N) */
    void (*hc_head)(backend *be, float *out, const float *X, const float *mix, const float *base, const float *scale,
                    int T, int N, int d, float hc_eps);
    /* DeepSeek-V4.1's lagged collapse (hc_pre_from_prev_sublayer; optional, a model that needs it runs
     * only where both are set): hc_weights is hc_split without the collapse, and also writes
     * pre (T, N) = sigmoid(mix[j] scale[0] + base[j]) + hc_eps; hc_collapse is x (T, d) = sum_j pre[j] X[j]
     * with X (T, N, d), the next hyper-connection (or the head) collapsing with this one's pre. */
    void (*hc_weights)(backend *be, float *pre, float *post, float *comb, const float *mix, const float *base,
                       const float *scale, int T, int N, int iters, float hc_eps);
    void (*hc_collapse)(backend *be, float *x, const float *X, const float *pre, int T, int N, int d);
    /* In place on x (T, n_heads, hd): interleaved pairs of the last r channels of each head rotated by
     * pos[t] * inv_freq (r/2); by minus that angle when inverse. */
    void (*rope_tail)(backend *be, float *x, const int32_t *pos, int T, int n_heads, int hd, int r,
                      const float *inv_freq, int inverse);
    /* A compressor of rate m over the step's projections kv, gate (T, cw): every window that closes in the
     * step becomes an entry (softmax over slots per channel with ape (m, cw), overlapping A/B halves when
     * overlap (cw = 2 D), else cw = D; rmsnorm with norm (D); rope_tail at w m), written to the block
     * of position w m: the entry (which 0: main compressor, st's c_*) or the index key (which 1: the
     * indexer's, i_*); then the last 2m projections go to st's ring. */
    void (*dsv4_compress)(backend *be, const float *kv, const float *gate, const batch_desc *b, const dsv4_state *st,
                          const dsv4_kv *cache, int which, int m, int D, int overlap, const float *ape,
                          const float *norm, float eps, int r, const float *inv_freq);
    /* The Lightning indexer: sel (T, K) = the top min(K, causal) entries w < floor((p+1)/m) by score
     * sum_h wts[h] nI^-0.5 relu(q_h . key_w) dI^-0.5 (score descending, index ascending), -1 after;
     * q (T, nI, dI) rotated, wts (T, nI). */
    void (*dsv4_index)(backend *be, int32_t *sel, const float *q, const float *wts, const batch_desc *b,
                       const dsv4_kv *cache, int m, int K, int nI, int dI);
    /* First the step's kv rows (T, D) go to their positions' blocks; then the attention of q (T, nh, D)
     * over the window (the last W positions) and, with m > 0, compressed entries: those sel (T, K) names
     * (CSA), or all w < floor((p+1)/m) (sel NULL: HCA); a sink logit per head; scale D^-0.5.
     * out (T, nh, D). */
    void (*dsv4_attention)(backend *be, float *out, const float *q, const float *kv, const batch_desc *b,
                           const dsv4_kv *cache, int m, const int32_t *sel, int K, const float *sinks, int nh,
                           int D, int W);
    /* gate (n) = silu(min(gate, limit)) * clamp(up, -limit, limit) */
    void (*swiglu_limit)(backend *be, float *gate, const float *up, size_t n, float limit);
    /* DeepSeek-V4.1's ratio-1/2 layers (optional: a model with such layers runs only where all three
     * are set; DEEPSEEK_V4.md 5.8, SGLang's torch path deepseek_v4_backend.py _low_ratio_*, in f32
     * activations). fq_kv is SGLang's fake_quant_compressed_kv (e2m1 with one e4m3 scale per 16),
     * fq4 its fake_quant_fp4 (e2m1 with one ue8m0 scale per 32).
     * dsv41_compress: the compressor of a kv source of ratio m (1 or 2) over the step's projections
     * kv and score (T, D) (score unused at ratio 1): each token at a position p that closes a group
     * (p % m == m - 1) pools it (ratio 2: per channel, the softmax of the scores of p - 1 and p
     * weighting their kv, p - 1 from st's ring when it is not in the step), lat (T, D) gets
     * rmsnorm(pooled) * norm on that token's row (zero on the others), and entry p / m of the cache
     * fq_kv(rope_tail(lat, p - m + 1)). Then the last 2m projections go to st's ring. */
    void (*dsv41_compress)(backend *be, float *lat, const float *kv, const float *score, const batch_desc *b,
                           const dsv4_state *st, const dsv4_kv *cache, int m, int D, const float *norm, float eps,
                           int r, const float *inv_freq);
    /* dsv41_index_keys: on the rows of k (T, dI) = lat wk^T whose token closes a group, the index key of
     * entry p / m = fq4(rope_tail(rmsnorm(k) * k_norm, p - m + 1)). */
    void (*dsv41_index_keys)(backend *be, const float *k, const batch_desc *b, const dsv4_kv *cache, int m, int dI,
                             const float *k_norm, float eps, int r, const float *inv_freq);
    /* x (n, w) in place = fq4 of each row (w a multiple of 32): the index queries. */
    void (*fake_quant_fp4)(backend *be, float *x, size_t n, int w);
    /* dsv41_index: dsv4_index's scores and selection with V4.1's two-level candidates (optional: a
     * model with a candidate source runs only where it is set; v41_indexer/dense_blocks.py and
     * candidate_blocks.py's torch forms). Entries come in blocks of bs (entry w in block w / bs).
     * With publish (T, nb) (the candidate source): besides sel, the ids of the min(nb, ceil(n / bs))
     * blocks with the highest maximum score over their causal entries w < n = floor((p+1)/m), the
     * newest block ((n - 1) / bs) always first, then by maximum descending, id ascending; -1 after.
     * With among (T, nb) (a later index source): sel is the top min(K, candidates) of the causal
     * entries of the blocks among names (-1 ignored) instead of all causal entries. */
    void (*dsv41_index)(backend *be, int32_t *sel, const float *q, const float *wts, const batch_desc *b,
                        const dsv4_kv *cache, int m, int K, int nI, int dI, int32_t *publish, const int32_t *among,
                        int nb, int bs);

    /* ---- Engram (ENGRAM.md section 6) ---- */
    /* out (T, H*D) = concatenation of table rows rows[t*H + h], as f32 */
    void (*gather_rows)(backend *be, float *out, const weight *table, const int64_t *rows, int T, int H);
    /* gate (T) = sigmoid(sign(s) sqrt(max(|s|, 1e-6))), s = dot(nk[t], nq[t]) / sqrt(d) */
    void (*engram_gate)(backend *be, float *gate, const float *nk, const float *nq, int T, int d);
    /* out[t * ostride + i] = s[t] * x[t * xstride + i] for i < d; out may alias x */
    void (*scale_rows)(backend *be, float *out, size_t ostride, const float *x, size_t xstride, const float *s, int T,
                       int d);
    /* Depthwise causal conv then SiLU, per sequence, over in (T, C) (this
     * step's normed inputs): with R = (K-1)*dil and sequence s's history
     * hist = b->seq_hist[s] + hist_off (R rows of C: the inputs at its R
     * positions before this step, zeros at the start),
     *   out[t, c] = silu(sum_k w[c, k] * x(t - (K-1-k)*dil, c)),
     * x(u) being in's row u of s's tokens, or hist row R + u when u < 0.
     * Then each history is replaced by the last R rows of (history, inputs). */
    void (*short_conv)(backend *be, float *out, const float *in, const float *w, const batch_desc *b, size_t hist_off,
                       int C, int K, int dil);

    /* DeepSeek-V4.1's Engram gate (DEEPSEEK_V4.md 5.6; optional: NULL where a backend has none,
     * and a V4.1 Engram model does not run there). In place on X (T, N, d), for each token t and
     * stream g, with kv (T, (N+1) d) holding the N keys then the shared value, w (N, d):
     *   s = (sum_i X[g][i] w[g][i] key_g[i]) rsqrt(mean(X[g]^2) + eps) rsqrt(mean(key_g^2) + eps) d^-0.5
     *   gate = sigmoid(copysign(sqrt(max(|s|, clamp)), s)); X[g] += gate * value;
     * gates (T, N) = those gates when not NULL. */
    void (*engram_v41_gate)(backend *be, float *X, const float *kv, const float *w, int T, int N, int d, float eps,
                            float clamp, float *gates);

    /* ---- Engram rows from host memory (engram_fetch.c) ----
     * A table in a host store reaches the backend as raw rows: gathered by
     * the host into host_alloc'd staging, copied by fetch on a channel (one
     * per Engram layer, < BACKEND_FETCH_CHANNELS) while the compute goes on,
     * then decoded by decode_rows. */
    void *(*host_alloc)(backend *be, size_t bytes); /* host memory fetch copies from fastest (pinned); NULL when out */
    void (*host_free)(backend *be, void *p);        /* accepts NULL */
    /* Marks the point the compute has reached before the host starts
     * gathering for channel ch: the GPU's wait for the rows is measured from
     * there (see fetch_sync). */
    void (*fetch_mark)(backend *be, int ch);
    /* Copies bytes from host_alloc'd src to backend memory dst, beside the
     * compute; it starts once the ops issued before ch's last fetch_release
     * have run (dst may be what they read). src must stay untouched until
     * fetch_sync(ch). */
    void (*fetch)(backend *be, int ch, void *dst, const void *src, size_t bytes);
    void (*fetch_wait)(backend *be, int ch);    /* ops issued from now on run after ch's last fetch */
    void (*fetch_release)(backend *be, int ch); /* the ops issued so far are the last readers of ch's dst */
    /* Blocks until ch's last fetch is done. Returns how long the compute
     * waited for it, in seconds: from when it reached the fetch_mark before
     * that fetch to when the rows arrived, 0 if they were there first. */
    double (*fetch_sync)(backend *be, int ch);
    /* out[i*cols + j] = value j of the row at rows + idx[i]*stride, decoded
     * from dt (an engram_store_dtype) to f32 exactly, for i < n. idx in
     * backend memory. */
    void (*decode_rows)(backend *be, float *out, const void *rows, int dt, size_t stride, const int32_t *idx, int n,
                        int cols);
    /* Row slot[i] of dst = row i of src (row_bytes each), for i < n; slot in backend memory. */
    void (*scatter_rows)(backend *be, void *dst, const void *src, const int32_t *slot, int n, size_t row_bytes);
    /* Row i of dst = row slot[i] of src (row_bytes each), for i < n: scatter_rows' inverse; slot in backend
     * memory. */
    void (*collect_rows)(backend *be, void *dst, const void *src, const int32_t *slot, int n, size_t row_bytes);
    /* Copies bytes from backend memory src to host_alloc'd dst, beside the
     * compute (fetch's way back: rows the hot-row cache evicts, to the host's
     * cache below it): it starts once the ops issued so far have run (src is
     * what they wrote) and holds no later op up. src must not be written
     * again, nor dst read, until fetch_sync(ch), which waits for it too. */
    void (*fetch_back)(backend *be, int ch, void *dst, const void *src, size_t bytes);

    /* ---- recorded steps (optional: NULL where a backend has none) ---- */
    /* A step whose ops depend on nothing but `key` (key_bytes <= 64: the
     * caller puts every host value its ops bake in there: sizes, buffers,
     * flags) may be replayed from a recording. step_begin returns 1 when it
     * has issued the recorded ops itself: the caller skips them and calls
     * nothing else for them. It returns 0 when the caller must issue the ops,
     * then call step_end (the backend may be recording them; step_end issues
     * them). No download, upload or alloc between the two. Recordings are
     * dropped whenever backend memory is freed or scratch is reallocated. */
    int (*step_begin)(backend *be, const void *key, size_t key_bytes);
    void (*step_end)(backend *be);

    /* ---- fused (optional) ----
     * Each stands for a sequence of the ops above and gives the same result
     * up to rounding; NULL where a backend has none (the CPU reference), and
     * forward.c then issues that sequence. The products that take a norm
     * (NULL: none) stand for rmsnorm first, their input being its output. */
    /* q (T, wq.rows), k (T, wk.rows), v (T, wv.rows) = x (T, cols) @ w^T (+ bias
     * where not NULL), for the three: (rmsnorm,) matmul three times */
    void (*matmul_qkv)(backend *be, float *q, float *k, float *v, const float *x, const backend_norm *norm,
                       const weight *wq, const weight *wk, const weight *wv, const float *bq, const float *bk,
                       const float *bv, int T);
    /* x (T, w.rows) += a (T, w.cols) @ w^T (+ bias): matmul into scratch, then add */
    void (*matmul_add)(backend *be, float *x, const float *a, const weight *w, const float *bias, int T);
    /* A hint: the next product, of T tokens, reads w. The backend may start
     * loading w into its cache while the ops queued before that product run
     * (CUDA: decode steps, into L2 from a second stream, joined before the
     * next product). Changes no result. */
    void (*prefetch)(backend *be, const weight *w, int T);
    /* gate (T, wg.rows) = silu(x @ wg^T + bg) * (x @ wu^T + bu); up (T, wu.rows)
     * is scratch the backend may use: (rmsnorm,) matmul gate, matmul up, swiglu */
    void (*matmul_glu)(backend *be, float *gate, float *up, const float *x, const backend_norm *norm,
                       const weight *wg, const weight *wu, const float *bg, const float *bu, int T);
    /* The feed-forward block: x (T, wd.rows) += down(silu(h @ wg^T + bg) * (h @ wu^T + bu)) (+ bd), h
     * = x or rmsnorm(x) (norm): (rmsnorm,) matmul gate, matmul up, swiglu, matmul_add down (or
     * matmul_glu, matmul_add). work (T, 2 wg.rows) is scratch the backend may use; the backend keeps
     * h (its activations) in its own form between the products (CUDA: the bf16 operand the down
     * product reads, never h in f32) */
    void (*matmul_ffn)(backend *be, float *x, float *work, const backend_norm *norm, const weight *wg,
                       const weight *wu, const weight *wd, const float *bg, const float *bu, const float *bd, int T);
    /* q (T, n_heads, hd) in place and each token's K and V rows: RMSNorm per
     * head by qn (hd) and kn when not NULL, rope of q and k by b->pos, then K
     * (normed, roped) and V stored as kv_store does; k is not written:
     * rmsnorm q and k per head (if qn), rope q, rope k, kv_store */
    void (*qk_rope_store)(backend *be, float *q, const float *k, const float *v, void *kc, void *vc,
                          const batch_desc *b, int n_heads, int n_kv, int hd, const float *qn, const float *kn,
                          float eps, const float *inv_freq);
    /* DeepSeek-V4's queries q (T, n_heads, hd) and key-value head kv (T, hd) before the attention,
     * in place: rmsnorm_plain of each q head when q_norm, rope_tail of q; rmsnorm of kv by kv_norm,
     * rope_tail of kv (both by pos, not inverse) */
    void (*dsv4_qk_norm_rope)(backend *be, float *q, float *kv, const float *kv_norm, const int32_t *pos, int T,
                              int n_heads, int hd, int r, const float *inv_freq, int q_norm, float eps);

    /* ---- sampling ---- */
    /* Sampling where the logits are (engine/sampler.h, "sampling with the
     * logits on a backend"), for the n rows of desc (a packed description,
     * backend memory). Row r works on logits row h[SAMPLER_DESC_ROW] (rows of
     * `stride` floats, ids below `vocab`), h its header:
     *   1. adds its biases in order, then applies its penalties (sampler.c's
     *      f32 operations, each listed id once), then its mask (-inf where a
     *      grammar says no), in place;
     *   2. writes result row r (out + r * SAMPLER_RESULT_BYTES(n_cand),
     *      backend memory): n_valid = min(h[N_FULL], n_cand) candidates, the
     *      largest logits in (logit descending, id ascending) order, -0 equal
     *      to +0 (the order sampler_sample sorts in); when h[N_FULL] > n_cand
     *      and the temperature T > 0, tail = the sum in double over the other
     *      ids of expf(l / T - l0 / T) (f32 division and subtraction, l0 the
     *      largest logit), else 0; flags SAMPLER_RESULT_NAN when the row holds
     *      a NaN.
     * n_cand is a power of two up to SAMPLER_MAX_CANDIDATES. NULL where a
     * backend has none. */
    void (*sample)(backend *be, void *out, float *logits, const int32_t *desc, int n, int vocab, int stride,
                   int n_cand);
    /* The greedy rows of a description (temperature 0: a grammar's mask, biases or penalties kept
     * them off argmax): rows first .. first + n - 1 of desc get sample's step 1 (biases, the mask,
     * penalties, in place), then next[r - first] (backend memory) = the lowest id of the row's
     * largest logit (sampler_sample's greedy rule; -0 equal to +0), or -1 when the row holds a NaN
     * (the caller then decides on the row). One pass over the row, no candidates: a grammar's
     * greedy row costs what argmax costs. NULL where sample is. */
    void (*sample_argmax)(backend *be, int32_t *next, float *logits, const int32_t *desc, int first, int n,
                          int vocab, int stride);
    /* Optional: whether an op failed since the last call (host scratch out
     * of memory: the ops return nothing, so one that cannot get its scratch
     * leaves its output unwritten and says so here), clearing the mark; the
     * step's results are then garbage and the step fails. NULL: ops never
     * fail (the CUDA backend aborts on a device error). */
    bool (*take_failure)(backend *be);

    /* ---- collectives of a group of ranks (engine/parallel.h; optional: NULL where a backend has
     * none, and its ranks meet through host memory instead, the CPU fake) ----
     * coll_id writes a new group's id (BACKEND_COLL_ID_BYTES) on one rank; every rank of the group
     * then calls coll_init with that id at the same time (it blocks until all have joined), from
     * the thread that issues its ops, and gets its communicator, or NULL with a message in err.
     * The collectives are issued in order on the backend's stream, as every other op. */
    int (*coll_id)(backend *be, void *id, char *err, size_t errlen); /* 0, or -1 with a message */
    void *(*coll_init)(backend *be, const void *id, int n_ranks, int rank, char *err, size_t errlen);
    void (*coll_free)(backend *be, void *comm); /* accepts NULL */
    /* buf (n) = the sum over the ranks' buf (in the library's order, not rank order) */
    void (*all_reduce_sum)(backend *be, void *comm, float *buf, size_t n);
    /* dst (R, n) = every rank's src (n), rank q's at dst + q n; dst does not overlap src */
    void (*all_gather)(backend *be, void *comm, float *dst, const float *src, size_t n);
} backend_ops;

#define BACKEND_COLL_ID_BYTES 128 /* NCCL_UNIQUE_ID_BYTES */

/* How a backend is made; knobs a backend does not have are ignored. */
typedef struct {
    int cuda_graphs;  /* 1 on (default), 0 off: no recorded steps (step_begin always returns 0) */
    int cuda_profile; /* 0 off (default); 1 every op timed by events (recorded steps off), totals per op
                       * on stderr when the backend is destroyed; 2 the same with recorded steps on, each
                       * replay timed as one op */
    int cpu_isa;      /* the CPU's matrix-product code path: BACKEND_CPU_ISA_AUTO (default: the best this
                       * CPU runs), _AVX512, _AVX2 or _GENERIC (portable C); asking for one the CPU lacks
                       * fails backend_select. Each is batch-invariant; they agree within rounding.
                       * _AVX512BF16 (never chosen by AUTO) also rounds the activations to bf16 for
                       * products with bf16 weights (vdpbf16ps): faster, less exact (cpu_matmul.c) */
    int cpu_threads;  /* the CPU backend's threads, the calling one included; 0 (default): OpenMP's
                       * count for the creating thread (OMP_NUM_THREADS, else all cores) */
    int cuda_device;  /* the CUDA device ordinal (default 0): a rank of a group takes its own. The
                       * backend's ops must then be issued from the thread that made it */
} backend_params;

enum { BACKEND_CPU_ISA_AUTO, BACKEND_CPU_ISA_GENERIC, BACKEND_CPU_ISA_AVX2, BACKEND_CPU_ISA_AVX512,
       BACKEND_CPU_ISA_AVX512BF16 };

/* "auto", "generic", "avx2", "avx512", "avx512bf16" as BACKEND_CPU_ISA_*, or -1. */
int backend_cpu_isa_parse(const char *s);
/* The name of a BACKEND_CPU_ISA_* value. */
const char *backend_cpu_isa_str(int isa);

backend_params backend_default_params(void);

/* The handle. A backend's own handle type embeds it as its first member and
 * its ops cast be back to that type; callers only pass it on (through the
 * wrappers below) and never read its fields. */
struct backend {
    const backend_ops *ops;
    backend_params params;
};

/* The CPU reference backend (its own thread pool) with the defaults; NULL when out of
 * memory. */
backend *backend_cpu_create(void);

/* The CPU backend made with p (NULL: the defaults): NULL (err set) when out
 * of memory or when p->cpu_isa names a path this CPU cannot run. The handle's
 * params.cpu_isa is the path taken, never AUTO. */
backend *backend_cpu_create_with(const backend_params *p, char *err, size_t errlen);

/* The CUDA backend (p NULL: the defaults), or NULL when this build has none
 * or no GPU is usable (err says why). */
backend *backend_cuda_create(const backend_params *p, char *err, size_t errlen);

/* "cpu", "cuda", or "auto" (CUDA when usable, else the CPU), made with p
 * (NULL: the defaults). NULL (err set) for an unknown or unavailable device
 * or when memory runs out. */
backend *backend_select(const char *device, const backend_params *p, char *err, size_t errlen);

/* Frees a backend made by one of the above. Accepts NULL. */
void backend_destroy(backend *be);

/* ---- calling the ops ----
 * One wrapper per op, so a call names the op once and the handle first, like
 * every other module's functions: backend_matmul(be, out, x, w, bias, T).
 * The contracts are those of backend_ops above. An optional op (mem_info,
 * step_begin/step_end, the fused ops, sample) is called only where
 * backend_has(be, op) says the backend provides it. */
#define backend_has(be, op) ((be)->ops->op != NULL)

static inline const char *backend_name(const backend *be) { return be->ops->name; }
static inline size_t backend_weight_align(const backend *be) { return be->ops->weight_align; }
static inline size_t backend_kv_elem_bytes(const backend *be) { return be->ops->kv_elem_bytes; }

static inline void *backend_alloc(backend *be, size_t bytes) { return be->ops->alloc(be, bytes); }
static inline void backend_free(backend *be, void *p) { be->ops->free(be, p); }
static inline void backend_upload(backend *be, void *dst, const void *host, size_t bytes) {
    be->ops->upload(be, dst, host, bytes);
}
static inline void backend_download(backend *be, void *host, const void *src, size_t bytes) {
    be->ops->download(be, host, src, bytes);
}
static inline void backend_copy2d(backend *be, float *dst, size_t dpitch, const float *src, size_t spitch,
                                  size_t width, size_t rows) {
    be->ops->copy2d(be, dst, dpitch, src, spitch, width, rows);
}
static inline void backend_mem_info(backend *be, size_t *free_bytes, size_t *total_bytes) {
    be->ops->mem_info(be, free_bytes, total_bytes);
}
static inline model *backend_prepare(backend *be, model *m, char *err, size_t errlen) {
    return be->ops->prepare(be, m, err, errlen);
}
static inline void backend_release(backend *be, model *view, model *m) { be->ops->release(be, view, m); }

static inline void backend_matmul(backend *be, float *out, const float *x, const weight *w, const float *bias,
                                  int T) {
    be->ops->matmul(be, out, x, w, bias, T);
}
static inline void backend_matmul_grouped(backend *be, float *y, const float *x, size_t xs, const weight *w, int G,
                                          int T) {
    be->ops->matmul_grouped(be, y, x, xs, w, G, T);
}
static inline void backend_rmsnorm(backend *be, float *out, const float *x, const float *g, int T, int d,
                                   float eps) {
    be->ops->rmsnorm(be, out, x, g, T, d, eps);
}
static inline void backend_embed(backend *be, float *out, const weight *emb, const int32_t *ids, int T) {
    be->ops->embed(be, out, emb, ids, T);
}
static inline void backend_rope(backend *be, float *x, const int32_t *pos, int T, int n_heads, int hd,
                                const float *inv_freq) {
    be->ops->rope(be, x, pos, T, n_heads, hd, inv_freq);
}
static inline void backend_kv_store(backend *be, void *kc, void *vc, const float *k, const float *v,
                                    const batch_desc *b, int kvw) {
    be->ops->kv_store(be, kc, vc, k, v, b, kvw);
}
static inline void backend_attention(backend *be, float *out, const float *q, const void *kc, const void *vc,
                                     const batch_desc *b, int n_heads, int n_kv, int hd, int window) {
    be->ops->attention(be, out, q, kc, vc, b, n_heads, n_kv, hd, window);
}
static inline void backend_swiglu(backend *be, float *gate, const float *up, size_t n) {
    be->ops->swiglu(be, gate, up, n);
}
static inline void backend_add(backend *be, float *x, const float *y, size_t n) { be->ops->add(be, x, y, n); }
static inline void backend_gather_f32(backend *be, float *out, const float *x, const int32_t *idx, int n, int d) {
    be->ops->gather_f32(be, out, x, idx, n, d);
}
static inline void backend_argmax(backend *be, int32_t *next, const float *logits, int T, int vocab) {
    be->ops->argmax(be, next, logits, T, vocab);
}

static inline void backend_gather_rows(backend *be, float *out, const weight *table, const int64_t *rows, int T,
                                       int H) {
    be->ops->gather_rows(be, out, table, rows, T, H);
}
static inline void backend_moe_route(backend *be, int32_t *ids, float *wts, const float *logits,
                                     const int32_t *tokens, const moe_weights *moe, int T) {
    be->ops->moe_route(be, ids, wts, logits, tokens, moe, T);
}
static inline void backend_moe_experts_add(backend *be, float *out, const float *x, const int32_t *ids,
                                           const float *wts, const moe_weights *moe, int T) {
    be->ops->moe_experts_add(be, out, x, ids, wts, moe, T);
}
static inline void backend_moe_experts(backend *be, float *out, const float *x, const int32_t *ids,
                                       const float *wts, const moe_weights *moe, int T) {
    be->ops->moe_experts(be, out, x, ids, wts, moe, T);
}
static inline void backend_moe_pairs(backend *be, float *pairs, const float *x, const int32_t *ids,
                                     const moe_weights *moe, int T, int lo, int hi) {
    be->ops->moe_pairs(be, pairs, x, ids, moe, T, lo, hi);
}
static inline void backend_moe_combine(backend *be, float *out, const float *pairs, const float *wts, int T, int k,
                                       int d) {
    be->ops->moe_combine(be, out, pairs, wts, T, k, d);
}
static inline void backend_engram_gate(backend *be, float *gate, const float *nk, const float *nq, int T, int d) {
    be->ops->engram_gate(be, gate, nk, nq, T, d);
}
static inline void backend_scale_rows(backend *be, float *out, size_t ostride, const float *x, size_t xstride,
                                      const float *s, int T, int d) {
    be->ops->scale_rows(be, out, ostride, x, xstride, s, T, d);
}
static inline void backend_short_conv(backend *be, float *out, const float *in, const float *w, const batch_desc *b,
                                      size_t hist_off, int C, int K, int dil) {
    be->ops->short_conv(be, out, in, w, b, hist_off, C, K, dil);
}

static inline void backend_engram_v41_gate(backend *be, float *X, const float *kv, const float *w, int T, int N,
                                           int d, float eps, float clamp, float *gates) {
    be->ops->engram_v41_gate(be, X, kv, w, T, N, d, eps, clamp, gates);
}

static inline void *backend_host_alloc(backend *be, size_t bytes) { return be->ops->host_alloc(be, bytes); }
static inline void backend_host_free(backend *be, void *p) { be->ops->host_free(be, p); }
static inline void backend_fetch_mark(backend *be, int ch) { be->ops->fetch_mark(be, ch); }
static inline void backend_fetch(backend *be, int ch, void *dst, const void *src, size_t bytes) {
    be->ops->fetch(be, ch, dst, src, bytes);
}
static inline void backend_fetch_wait(backend *be, int ch) { be->ops->fetch_wait(be, ch); }
static inline void backend_fetch_release(backend *be, int ch) { be->ops->fetch_release(be, ch); }
static inline double backend_fetch_sync(backend *be, int ch) { return be->ops->fetch_sync(be, ch); }
static inline void backend_decode_rows(backend *be, float *out, const void *rows, int dt, size_t stride,
                                       const int32_t *idx, int n, int cols) {
    be->ops->decode_rows(be, out, rows, dt, stride, idx, n, cols);
}
static inline void backend_scatter_rows(backend *be, void *dst, const void *src, const int32_t *slot, int n,
                                        size_t row_bytes) {
    be->ops->scatter_rows(be, dst, src, slot, n, row_bytes);
}
static inline void backend_collect_rows(backend *be, void *dst, const void *src, const int32_t *slot, int n,
                                        size_t row_bytes) {
    be->ops->collect_rows(be, dst, src, slot, n, row_bytes);
}
static inline void backend_fetch_back(backend *be, int ch, void *dst, const void *src, size_t bytes) {
    be->ops->fetch_back(be, ch, dst, src, bytes);
}

static inline int backend_step_begin(backend *be, const void *key, size_t key_bytes) {
    return be->ops->step_begin(be, key, key_bytes);
}
static inline void backend_step_end(backend *be) { be->ops->step_end(be); }

static inline void backend_matmul_qkv(backend *be, float *q, float *k, float *v, const float *x,
                                      const backend_norm *norm, const weight *wq, const weight *wk, const weight *wv,
                                      const float *bq, const float *bk, const float *bv, int T) {
    be->ops->matmul_qkv(be, q, k, v, x, norm, wq, wk, wv, bq, bk, bv, T);
}
static inline void backend_prefetch(backend *be, const weight *w, int T) { be->ops->prefetch(be, w, T); }
static inline void backend_matmul_add(backend *be, float *x, const float *a, const weight *w, const float *bias,
                                      int T) {
    be->ops->matmul_add(be, x, a, w, bias, T);
}
/* x (T, w.rows) += a @ w^T (+ bias): matmul_add where the backend has it, else the product into tmp
 * (T, w.rows) and add. */
static inline void backend_add_product(backend *be, float *x, const float *a, const weight *w, const float *bias,
                                       float *tmp, int T) {
    if (backend_has(be, matmul_add)) {
        backend_matmul_add(be, x, a, w, bias, T);
        return;
    }
    backend_matmul(be, tmp, a, w, bias, T);
    backend_add(be, x, tmp, (size_t)T * w->rows);
}
static inline void backend_matmul_glu(backend *be, float *gate, float *up, const float *x, const backend_norm *norm,
                                      const weight *wg, const weight *wu, const float *bg, const float *bu, int T) {
    be->ops->matmul_glu(be, gate, up, x, norm, wg, wu, bg, bu, T);
}
static inline void backend_matmul_ffn(backend *be, float *x, float *work, const backend_norm *norm,
                                      const weight *wg, const weight *wu, const weight *wd, const float *bg,
                                      const float *bu, const float *bd, int T) {
    be->ops->matmul_ffn(be, x, work, norm, wg, wu, wd, bg, bu, bd, T);
}
static inline void backend_qk_rope_store(backend *be, float *q, const float *k, const float *v, void *kc, void *vc,
                                         const batch_desc *b, int n_heads, int n_kv, int hd, const float *qn,
                                         const float *kn, float eps, const float *inv_freq) {
    be->ops->qk_rope_store(be, q, k, v, kc, vc, b, n_heads, n_kv, hd, qn, kn, eps, inv_freq);
}

static inline void backend_dsv4_qk_norm_rope(backend *be, float *q, float *kv, const float *kv_norm,
                                             const int32_t *pos, int T, int n_heads, int hd, int r,
                                             const float *inv_freq, int q_norm, float eps) {
    be->ops->dsv4_qk_norm_rope(be, q, kv, kv_norm, pos, T, n_heads, hd, r, inv_freq, q_norm, eps);
}

static inline void backend_sample(backend *be, void *out, float *logits, const int32_t *desc, int n, int vocab,
                                  int stride, int n_cand) {
    be->ops->sample(be, out, logits, desc, n, vocab, stride, n_cand);
}
static inline void backend_sample_argmax(backend *be, int32_t *next, float *logits, const int32_t *desc, int first,
                                         int n, int vocab, int stride) {
    be->ops->sample_argmax(be, next, logits, desc, first, n, vocab, stride);
}
static inline bool backend_take_failure(backend *be) { return be->ops->take_failure && be->ops->take_failure(be); }

static inline int backend_coll_id(backend *be, void *id, char *err, size_t errlen) {
    return be->ops->coll_id(be, id, err, errlen);
}
static inline void *backend_coll_init(backend *be, const void *id, int n_ranks, int rank, char *err, size_t errlen) {
    return be->ops->coll_init(be, id, n_ranks, rank, err, errlen);
}
static inline void backend_coll_free(backend *be, void *comm) { be->ops->coll_free(be, comm); }
static inline void backend_all_reduce_sum(backend *be, void *comm, float *buf, size_t n) {
    be->ops->all_reduce_sum(be, comm, buf, n);
}
static inline void backend_all_gather(backend *be, void *comm, float *dst, const float *src, size_t n) {
    be->ops->all_gather(be, comm, dst, src, n);
}

/* DeepSeek-V4 (backend_has(be, dsv4_attention) says whether the family runs here) */
static inline void backend_rmsnorm_plain(backend *be, float *out, const float *x, int T, int d, float eps) {
    be->ops->rmsnorm_plain(be, out, x, T, d, eps);
}
static inline void backend_hc_split(backend *be, float *post, float *comb, float *x, const float *X, const float *mix,
                                    const float *base, const float *scale, int T, int N, int d, int iters,
                                    float hc_eps) {
    be->ops->hc_split(be, post, comb, x, X, mix, base, scale, T, N, d, iters, hc_eps);
}
static inline void backend_hc_merge(backend *be, float *X, const float *y, const float *post, const float *comb,
                                    int T, int N, int d) {
    be->ops->hc_merge(be, X, y, post, comb, T, N, d);
}
static inline void backend_hc_head(backend *be, float *out, const float *X, const float *mix, const float *base,
                                   const float *scale, int T, int N, int d, float hc_eps) {
    be->ops->hc_head(be, out, X, mix, base, scale, T, N, d, hc_eps);
}
static inline void backend_hc_weights(backend *be, float *pre, float *post, float *comb, const float *mix,
                                      const float *base, const float *scale, int T, int N, int iters, float hc_eps) {
    be->ops->hc_weights(be, pre, post, comb, mix, base, scale, T, N, iters, hc_eps);
}
static inline void backend_hc_collapse(backend *be, float *x, const float *X, const float *pre, int T, int N, int d) {
    be->ops->hc_collapse(be, x, X, pre, T, N, d);
}
static inline void backend_rope_tail(backend *be, float *x, const int32_t *pos, int T, int n_heads, int hd, int r,
                                     const float *inv_freq, int inverse) {
    be->ops->rope_tail(be, x, pos, T, n_heads, hd, r, inv_freq, inverse);
}
static inline void backend_dsv4_compress(backend *be, const float *kv, const float *gate, const batch_desc *b,
                                         const dsv4_state *st, const dsv4_kv *cache, int which, int m, int D,
                                         int overlap, const float *ape, const float *norm, float eps, int r,
                                         const float *inv_freq) {
    be->ops->dsv4_compress(be, kv, gate, b, st, cache, which, m, D, overlap, ape, norm, eps, r, inv_freq);
}
static inline void backend_dsv4_index(backend *be, int32_t *sel, const float *q, const float *wts,
                                      const batch_desc *b, const dsv4_kv *cache, int m, int K, int nI, int dI) {
    be->ops->dsv4_index(be, sel, q, wts, b, cache, m, K, nI, dI);
}
static inline void backend_dsv4_attention(backend *be, float *out, const float *q, const float *kv,
                                          const batch_desc *b, const dsv4_kv *cache, int m, const int32_t *sel,
                                          int K, const float *sinks, int nh, int D, int W) {
    be->ops->dsv4_attention(be, out, q, kv, b, cache, m, sel, K, sinks, nh, D, W);
}
static inline void backend_swiglu_limit(backend *be, float *gate, const float *up, size_t n, float limit) {
    be->ops->swiglu_limit(be, gate, up, n, limit);
}
static inline void backend_dsv41_compress(backend *be, float *lat, const float *kv, const float *score,
                                          const batch_desc *b, const dsv4_state *st, const dsv4_kv *cache, int m,
                                          int D, const float *norm, float eps, int r, const float *inv_freq) {
    be->ops->dsv41_compress(be, lat, kv, score, b, st, cache, m, D, norm, eps, r, inv_freq);
}
static inline void backend_dsv41_index_keys(backend *be, const float *k, const batch_desc *b, const dsv4_kv *cache,
                                            int m, int dI, const float *k_norm, float eps, int r,
                                            const float *inv_freq) {
    be->ops->dsv41_index_keys(be, k, b, cache, m, dI, k_norm, eps, r, inv_freq);
}
static inline void backend_fake_quant_fp4(backend *be, float *x, size_t n, int w) {
    be->ops->fake_quant_fp4(be, x, n, w);
}
static inline void backend_dsv41_index(backend *be, int32_t *sel, const float *q, const float *wts,
                                       const batch_desc *b, const dsv4_kv *cache, int m, int K, int nI, int dI,
                                       int32_t *publish, const int32_t *among, int nb, int bs) {
    be->ops->dsv41_index(be, sel, q, wts, b, cache, m, K, nI, dI, publish, among, nb, bs);
}

#endif
