/* DeepSeek-V4 ops of the CUDA backend, V4.1's ratio-1/2 ops and two-level
 * top-k included (kernels/dsv4.cu; the CPU reference is
 * engine/backend/cpu/cpu_dsv4.c): the glue from backend.h's arguments to the
 * kernels'. No launch depends on the step's host copies (positions, which
 * sequences): grids follow the token count and bounds the recorded step's
 * key holds (max_ctx, rounded up by forward.c's plan_step), so decode steps
 * may be recorded. */
#include "engine/backend/cuda/cuda_internal.h"

static kernels_dsv4_kv kv_of(const dsv4_kv *c) {
    return (kernels_dsv4_kv){.base = c->base, .block_floats = c->block_floats, .m = c->m, .slots = c->slots,
                             .D = c->D, .dI = c->dI, .ebase = c->ebase ? c->ebase : c->base,
                             .eblock_floats = c->ebase ? c->eblock_floats : c->block_floats};
}

void cu_rmsnorm_plain(backend *be, float *out, const float *x, int T, int d, float eps) {
    cuda_backend *g = cuda__of(be);
    CUDA_TIMED(g, CHECK_K(kernels_rmsnorm_plain(out, x, T, d, eps, g->stream)), "rmsnorm_plain d=%d", d);
}

void cu_hc_weights(backend *be, float *pre, float *post, float *comb, const float *mix, const float *base,
                   const float *scale, int T, int N, int iters, float hc_eps) {
    cuda_backend *g = cuda__of(be);
    CUDA_TIMED(g, CHECK_K(kernels_hc_weights(pre, post, comb, mix, base, scale, T, N, iters, hc_eps, g->stream)),
               "hc_weights");
}

void cu_hc_collapse(backend *be, float *x, const float *X, const float *pre, int T, int N, int d) {
    cuda_backend *g = cuda__of(be);
    CUDA_TIMED(g, CHECK_K(kernels_hc_collapse(x, X, pre, T, N, d, g->stream)), "hc_collapse");
}

/* hc_weights, then the collapse with pre from scratch (hc_split keeps no pre). */
void cu_hc_split(backend *be, float *post, float *comb, float *x, const float *X, const float *mix,
                 const float *base, const float *scale, int T, int N, int d, int iters, float hc_eps) {
    cuda_backend *g = cuda__of(be);
    cuda__grow(g, &g->dsv4_work, &g->dsv4_work_bytes, (size_t)T * N * sizeof(float));
    float *pre = g->dsv4_work;
    int pi = prof__begin(g, "hc_split");
    CHECK_K(kernels_hc_weights(pre, post, comb, mix, base, scale, T, N, iters, hc_eps, g->stream));
    CHECK_K(kernels_hc_collapse(x, X, pre, T, N, d, g->stream));
    prof__end(g, pi);
}

void cu_hc_merge(backend *be, float *X, const float *y, const float *post, const float *comb, int T, int N, int d) {
    cuda_backend *g = cuda__of(be);
    CUDA_TIMED(g, CHECK_K(kernels_hc_merge(X, y, post, comb, T, N, d, g->stream)), "hc_merge");
}

void cu_hc_head(backend *be, float *out, const float *X, const float *mix, const float *base, const float *scale,
                int T, int N, int d, float hc_eps) {
    cuda_backend *g = cuda__of(be);
    CUDA_TIMED(g, CHECK_K(kernels_hc_head(out, X, mix, base, scale, T, N, d, hc_eps, g->stream)), "hc_head");
}

void cu_rope_tail(backend *be, float *x, const int32_t *pos, int T, int n_heads, int hd, int r,
                  const float *inv_freq, int inverse) {
    cuda_backend *g = cuda__of(be);
    CUDA_TIMED(g, CHECK_K(kernels_rope_tail(x, pos, T, n_heads, hd, r, inv_freq, inverse, g->stream)), "rope_tail");
}

/* One launch where the kernel takes the shape (kernels_dsv4_qk_norm_rope: hd up to 1024), else (and
 * with ENGRAM_DSV4_FUSE=0) the four kernels it stands for. */
void cu_dsv4_qk_norm_rope(backend *be, float *q, float *kv, const float *kv_norm, const int32_t *pos, int T,
                          int n_heads, int hd, int r, const float *inv_freq, int q_norm, float eps) {
    cuda_backend *g = cuda__of(be);
    if (T <= 0) return;
    int pi = prof__begin(g, "dsv4_qk_norm_rope");
    if (hd > 1024 || T > 65535 || !cuda__dsv4_fuse()) {
        if (q_norm) CHECK_K(kernels_rmsnorm_plain(q, q, T * n_heads, hd, eps, g->stream));
        CHECK_K(kernels_rope_tail(q, pos, T, n_heads, hd, r, inv_freq, 0, g->stream));
        CHECK_K(kernels_rmsnorm_f32(kv, kv, kv_norm, T, hd, eps, g->stream));
        CHECK_K(kernels_rope_tail(kv, pos, T, 1, hd, r, inv_freq, 0, g->stream));
    } else {
        CHECK_K(kernels_dsv4_qk_norm_rope(q, kv, kv_norm, pos, T, n_heads, hd, r, inv_freq, q_norm, eps, g->stream));
    }
    prof__end(g, pi);
}

/* The compressor's launch arguments but for its weights and kind: the step from b's device arrays, the
 * rings of compressor `which` (0 main, 1 the indexer's) at the layer's offsets into each sequence's state. */
static kernels_dsv4_compress_args compress_args(const float *kv, const float *gate, const batch_desc *b,
                                                const dsv4_state *st, int which, const dsv4_kv *cache, int m, int D,
                                                int r, const float *norm, float eps, const float *inv_freq) {
    return (kernels_dsv4_compress_args){
        .kv = kv, .gate = gate, .seq_state = b->seq_state, .ring_kv = which ? st->i_kv : st->c_kv,
        .ring_gate = which ? st->i_gate : st->c_gate, .pos = b->pos, .tok_seq = b->tok_seq,
        .seq_start = b->seq_start, .seq_pos0 = b->seq_pos0, .block_tables = b->block_tables,
        .n_tokens = b->n_tokens, .max_blocks = b->max_blocks, .block_size = b->block_size, .cache = kv_of(cache),
        .m = m, .D = D, .r = r, .norm = norm, .inv_freq = inv_freq, .eps = eps,
    };
}

void cu_dsv4_compress(backend *be, const float *kv, const float *gate, const batch_desc *b, const dsv4_state *st,
                      const dsv4_kv *cache, int which, int m, int D, int overlap, const float *ape,
                      const float *norm, float eps, int r, const float *inv_freq) {
    cuda_backend *g = cuda__of(be);
    kernels_dsv4_compress_args a = compress_args(kv, gate, b, st, which, cache, m, D, r, norm, eps, inv_freq);
    a.which = which, a.overlap = overlap, a.ape = ape;
    CUDA_TIMED(g, CHECK_K(kernels_dsv4_compress(&a, g->stream)), "dsv4_compress m=%d", m);
}

void cu_dsv41_compress(backend *be, float *lat, const float *kv, const float *score, const batch_desc *b,
                       const dsv4_state *st, const dsv4_kv *cache, int m, int D, const float *norm, float eps, int r,
                       const float *inv_freq) {
    cuda_backend *g = cuda__of(be);
    /* a ratio-2 kv source's ring of pending pairs (none at ratio 1) */
    kernels_dsv4_compress_args a = compress_args(kv, score, b, st, 0, cache, m, D, r, norm, eps, inv_freq);
    a.lat = lat;
    CUDA_TIMED(g, CHECK_K(kernels_dsv41_compress(&a, g->stream)), "dsv41_compress m=%d", m);
}

void cu_dsv41_index_keys(backend *be, const float *k, const batch_desc *b, const dsv4_kv *cache, int m, int dI,
                         const float *k_norm, float eps, int r, const float *inv_freq) {
    cuda_backend *g = cuda__of(be);
    kernels_dsv4_kv c = kv_of(cache);
    CUDA_TIMED(g,
               CHECK_K(kernels_dsv41_index_keys(k, &c, b->pos, b->tok_seq, b->block_tables, b->max_blocks,
                                                b->block_size, b->n_tokens, m, dI, k_norm, eps, r, inv_freq,
                                                g->stream)),
               "dsv41_index_keys m=%d", m);
}

void cu_fake_quant_fp4(backend *be, float *x, size_t n, int w) {
    cuda_backend *g = cuda__of(be);
    CUDA_TIMED(g, CHECK_K(kernels_fake_quant_fp4(x, n, w, g->stream)), "fake_quant_fp4");
}

/* V4's indexer is V4.1's without candidates, as on the CPU: one kernel for both. */
void cu_dsv41_index(backend *be, int32_t *sel, const float *q, const float *wts, const batch_desc *b,
                    const dsv4_kv *cache, int m, int K, int nI, int dI, int32_t *publish, const int32_t *among,
                    int nb, int bs) {
    cuda_backend *g = cuda__of(be);
    kernels_dsv4_index_args a = {
        .sel = sel, .q = q, .wts = wts, .pos = b->pos, .tok_seq = b->tok_seq, .block_tables = b->block_tables,
        .n_tokens = b->n_tokens, .max_blocks = b->max_blocks, .block_size = b->block_size, .max_ctx = b->max_ctx,
        .cache = kv_of(cache), .m = m, .K = K, .nI = nI, .dI = dI, .publish = publish, .among = among, .nb = nb,
        .bs = bs,
    };
    /* T and max_ctx size it: both in a recorded step's key, whose first run (never recorded) grows it */
    cuda__grow(g, &g->dsv4_work, &g->dsv4_work_bytes, kernels_dsv4_index_work_floats(&a) * sizeof(float));
    a.work = g->dsv4_work;
    CUDA_TIMED(g, CHECK_K(kernels_dsv4_index(&a, g->stream)), "dsv4_index m=%d%s", m,
               publish ? " publish" : among ? " among" : "");
}

void cu_dsv4_index(backend *be, int32_t *sel, const float *q, const float *wts, const batch_desc *b,
                   const dsv4_kv *cache, int m, int K, int nI, int dI) {
    cu_dsv41_index(be, sel, q, wts, b, cache, m, K, nI, dI, NULL, NULL, 0, 1);
}

void cu_dsv4_attention(backend *be, float *out, const float *q, const float *kv, const batch_desc *b,
                       const dsv4_kv *cache, int m, const int32_t *sel, int K, const float *sinks, int nh, int D,
                       int W) {
    cuda_backend *g = cuda__of(be);
    kernels_dsv4_attention_args a = {
        .out = out, .q = q, .kv = kv, .pos = b->pos, .tok_seq = b->tok_seq, .block_tables = b->block_tables,
        .n_tokens = b->n_tokens, .max_blocks = b->max_blocks, .block_size = b->block_size, .max_ctx = b->max_ctx,
        .cache = kv_of(cache), .m = m, .sel = sel, .K = K, .sinks = sinks, .nh = nh, .D = D, .W = W,
        .ref = g->dsv4_attention_ref,
    };
    /* the split rows' partials; sized by T and max_ctx, as the indexer's scratch (the same buffer: each
     * op's use of it ends with the op) */
    size_t need = kernels_dsv4_attention_work_floats(&a) * sizeof(float);
    if (need) cuda__grow(g, &g->dsv4_work, &g->dsv4_work_bytes, need);
    a.work = g->dsv4_work;
    CUDA_TIMED(g, CHECK_K(kernels_dsv4_attention(&a, g->stream)), "dsv4_attention m=%d", m);
}

void cu_swiglu_limit(backend *be, float *gate, const float *up, size_t n, float limit) {
    cuda_backend *g = cuda__of(be);
    CUDA_TIMED(g, CHECK_K(kernels_swiglu_limit(gate, up, n, limit, g->stream)), "swiglu_limit");
}

void cu_engram_v41_gate(backend *be, float *X, const float *kv, const float *w, int T, int N, int d, float eps,
                        float clamp, float *gates) {
    cuda_backend *g = cuda__of(be);
    CUDA_TIMED(g, CHECK_K(kernels_engram_v41_gate(X, kv, w, T, N, d, eps, clamp, gates, g->stream)),
               "engram_v41_gate");
}
