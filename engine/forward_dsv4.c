/* DeepSeek-V4 forward pass, one scheduler step, through backend ops:
 *   X = N copies of embed(ids)                        (T, N, d) residual streams
 *   per layer: X[g] += gate_g(X[g], key_g) value    on DeepSeek-V4.1 Engram layers, before
 *                the attention's HC: rows -> kv = wkv(rows) = N keys + one value
 *              (post, comb, x) = HC(attn_hc, X); X = post y + comb^T X with
 *                y = attention(rmsnorm(x)): low-rank q, one K=V head, tail rope,
 *                window + compressed entries (CSA: indexer top-k; HCA: all), sinks,
 *                inverse rope, grouped output projection
 *              the same around the MoE (sqrt-softplus or hash router, shared expert)
 *   logits = head(rmsnorm(hc_head(X))) at the last tokens.
 * DeepSeek-V4.1's backbone (hc_pre_from_prev_sublayer) collapses each sublayer's input with the
 * previous hyper-connection's pre instead of its own (stream 0 at the first sublayer), the head
 * with the last one's; its queries may skip the per-head norm (q_head_norm false). Its ratio-1/2
 * layers attend to the window and the top-k of one entry per token (ratio 1) or pair (ratio 2),
 * SGLang's fake-quantised latents, written by kv source layers and scored by index source layers
 * whose top-k the later layers of the ratio reuse (low_sources), the later index sources within the
 * blocks a candidate source chose (V4.1's two-level top-k).
 * What later steps read lives in the KV cache's blocks (window rows, compressed
 * entries, index keys: backend.h, dsv4_kv) and, for the open compression
 * windows, in each sequence's small state (forward_dsv4.h). */
#include "engine/forward_dsv4.h"

#include "engine/model/dtype.h"
#include "engine/tensor_parallel.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct dsv4_seq {
    void *mem;    /* backend memory of all layers, cut as dsv4_ctx.layout says */
    size_t bytes; /* of mem */
};

struct dsv4_ctx {
    const model *bm;
    backend *be;
    int max_tokens, max_seqs;
    float *freq_main, *freq_comp;          /* (r/2) each */
    float *X, *Xn;                         /* (T, N, d) streams, normed copy */
    float *mix, *post, *comb;              /* (T, (2+N)N) (T, N) (T, N, N) */
    float *pre[2];                         /* (T, N) x2: V4.1's pre of the last HC and of this one */
    const float *lag;                      /* V4.1: the previous HC's pre (one of pre[]), NULL before the first */
    float *xc, *h, *y;                     /* (T, d) collapsed, normed, block output */
    float *qlat, *q, *kv, *att;            /* (T, Q) (T, nh, D) (T, D) (T, nh, D) */
    float *ck, *cg, *ik, *ig, *iq, *iw;    /* (T, 2D) x2, (T, 2dI) x2, (T, nI, dI), (T, nI) */
    int32_t *sel;                          /* (T, K) */
    const par_rank *ep;                     /* expert parallelism: this rank (dsv4_ctx_set_expert_rank), or NULL */
    float *pairs;                          /* its (T, top_k, d) scratch, borrowed */
    int32_t *sel_low[2];                   /* (T, K) x2: V4.1's top-k of ratio 1 and 2, kept for later layers */
    int32_t *cand;                         /* (T, cand_blocks) V4.1: the candidate source's blocks of the step */
    float *lat;                            /* (T, D) V4.1: the pre-rope latents of the groups closing at a token */
    float *oa;                             /* (T, G R) the grouped output projection's */
    const par_rank *tp;                    /* tensor parallelism: this rank (dsv4_ctx_set_tensor_rank), or NULL */
    float *tp_att, *tp_oa, *tp_part;       /* with a slice of R ranks: (T, nh D) when R > G, (T, G R), (T, d / R) */
    float *rlogits, *moe_w, *sg, *su;      /* (T, E) (T, k) (T, I) (T, I) */
    int32_t *moe_ids;                      /* (T, k) */
    float *lastX, *lastmix, *lasth;        /* (S, N, d) (S, N) (S, d) */
    float *ekv;                            /* (T, (N+1) d) an Engram layer's keys and value (V4.1), or NULL */
    dsv4_state *layout;                    /* host (n_layers): where each layer's rings are in a sequence's state */
    size_t state_floats;                   /* of one sequence's state */
    float **seq_state, **h_seq_state;      /* (S) backend and host: the step's sequences' states (batch_desc) */
    dsv4_kv cache;                         /* the current layer's store in the KV cache */
};

/* DEEPSEEK_V4.md 1.4: default inv_freq theta^(-2j/r), or YaRN's blend (ROPE:488-499) in f32. */
static void rope_freqs(const dsv4_config *v, double theta, bool yarn, float *f) {
    int r = v->rope_dim;
    double lo = 0, hi = 0;
    if (yarn) {
        double L0 = v->yarn_original_max_pos;
        lo = floor(r * log(L0 / (v->yarn_beta_fast * 2 * M_PI)) / (2 * log(theta)));
        hi = ceil(r * log(L0 / (v->yarn_beta_slow * 2 * M_PI)) / (2 * log(theta)));
        lo = lo > 0 ? lo : 0;
        hi = hi < r - 1 ? hi : r - 1;
        if (lo == hi) hi += 0.001;
    }
    for (int j = 0; j < r / 2; j++) {
        float p = powf((float)theta, (float)(2 * j) / (float)r), extra = 1.0f / p;
        if (!yarn) {
            f[j] = extra;
            continue;
        }
        float inter = 1.0f / ((float)v->yarn_factor * p);
        float ramp = ((float)j - (float)lo) / (float)(hi - lo);
        ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
        float keep = 1.0f - ramp;
        f[j] = inter * (1.0f - keep) + extra * keep;
    }
}

/* Floats of layer l's per-sequence state (the last 2m projections of its compressors), starting `at`
 * floats into a sequence's state: s gets where its rings are. */
static size_t layer_state(const model_config *c, int l, size_t at, dsv4_state *s) {
    const dsv4_config *v = &c->dsv4;
    size_t D = (size_t)c->head_dim, dI = (size_t)v->index_head_dim, m = (size_t)v->rate[l], n = 0;
#define CUT(field, count) s->field = at + n, n += (count)
    if (v->attn[l] == DSV4_LOW) { /* a ratio-2 kv source's ring of pending pairs: kv and score */
        if (v->kv_src[l] == l && m == 2) {
            CUT(c_kv, 2 * m * D);
            CUT(c_gate, 2 * m * D);
        }
    } else if (v->attn[l] != DSV4_SLIDING) {
        size_t cw = v->attn[l] == DSV4_CSA ? 2 * D : D;
        CUT(c_kv, 2 * m * cw);
        CUT(c_gate, 2 * m * cw);
    }
    if (v->attn[l] == DSV4_CSA) {
        CUT(i_kv, 2 * m * 2 * dI);
        CUT(i_gate, 2 * m * 2 * dI);
    }
#undef CUT
    return n;
}

void dsv4_ctx_destroy(dsv4_ctx *dc) {
    if (!dc) return;
    float **bufs[] = {&dc->freq_main, &dc->freq_comp, &dc->X, &dc->Xn, &dc->mix, &dc->post, &dc->comb, &dc->xc,
                      &dc->h, &dc->y, &dc->qlat, &dc->q, &dc->kv, &dc->att, &dc->ck, &dc->cg, &dc->ik, &dc->ig,
                      &dc->iq, &dc->iw, &dc->oa, &dc->rlogits, &dc->moe_w, &dc->sg, &dc->su,
                      &dc->lastX, &dc->lastmix, &dc->lasth, &dc->ekv, &dc->pre[0], &dc->pre[1], (float **)&dc->sel,
                      &dc->tp_att, &dc->tp_oa, &dc->tp_part,
                      (float **)&dc->moe_ids, (float **)&dc->sel_low[0], (float **)&dc->sel_low[1], &dc->lat,
                      (float **)&dc->cand, (float **)&dc->seq_state};
    for (size_t i = 0; i < sizeof(bufs) / sizeof(bufs[0]); i++) backend_free(dc->be, *bufs[i]);
    free(dc->layout);
    free(dc->h_seq_state);
    free(dc);
}

void dsv4_ctx_set_expert_rank(dsv4_ctx *dc, const par_rank *r, float *pairs) {
    dc->ep = r;
    dc->pairs = pairs;
}

void dsv4_ctx_set_tensor_rank(dsv4_ctx *dc, const par_rank *r) { dc->tp = r; }

int dsv4_ctx_create(const model *bm, backend *be, int max_tokens, int max_seqs, dsv4_ctx **out) {
    const model_config *c = &bm->cfg;
    const dsv4_config *v = &c->dsv4;
    *out = NULL;
    dsv4_ctx *dc = calloc(1, sizeof(*dc));
    if (!dc) return -1;
    dc->bm = bm, dc->be = be, dc->max_tokens = max_tokens, dc->max_seqs = max_seqs;
    size_t T = (size_t)max_tokens, S = (size_t)max_seqs, F = sizeof(float), N = (size_t)v->hc_mult;
    size_t d = (size_t)c->hidden_size, D = (size_t)c->head_dim, nh = (size_t)c->n_heads, G = (size_t)v->o_groups;
    size_t dI = (size_t)v->index_head_dim, nI = (size_t)v->index_n_heads, I = (size_t)c->moe.inter;
    size_t E = (size_t)c->moe.n_experts, k = (size_t)c->moe.top_k, R = (size_t)v->o_lora_rank;
    /* a tensor-parallel slice (model_tp.c) has its rank's heads; with more ranks than groups the
     * grouped output projection reads the whole model's (tp_att) */
    size_t P = bm->tp.n_ranks > 1 ? (size_t)bm->tp.n_ranks : 1;
    struct {
        float **p;
        size_t n;
    } want[] = {
        {&dc->freq_main, (size_t)v->rope_dim / 2 + 1}, {&dc->freq_comp, (size_t)v->rope_dim / 2 + 1},
        {&dc->X, T * N * d}, {&dc->Xn, T * N * d}, {&dc->mix, T * (2 + N) * N}, {&dc->post, T * N},
        {&dc->comb, T * N * N}, {&dc->xc, T * d}, {&dc->h, T * d}, {&dc->y, T * d},
        {&dc->qlat, T * (size_t)v->q_lora_rank}, {&dc->q, T * nh * D}, {&dc->kv, T * D}, {&dc->att, T * nh * D},
        {&dc->ck, T * 2 * D}, {&dc->cg, T * 2 * D}, {&dc->ik, T * 2 * dI}, {&dc->ig, T * 2 * dI},
        {&dc->iq, T * nI * dI}, {&dc->iw, T * nI}, {(float **)&dc->sel, T * (size_t)v->index_topk},
        {&dc->oa, T * G * R}, {&dc->rlogits, T * E},
        {&dc->moe_w, T * k}, {(float **)&dc->moe_ids, T * k}, {&dc->sg, T * I}, {&dc->su, T * I},
        {&dc->lastX, S * N * d}, {&dc->lastmix, S * N}, {&dc->lasth, S * d},
        {&dc->ekv, bm->engram ? T * (N + 1) * d : 1}, {&dc->pre[0], T * N}, {&dc->pre[1], T * N},
        {(float **)&dc->sel_low[0], T * (size_t)v->index_topk}, {(float **)&dc->sel_low[1], T * (size_t)v->index_topk},
        {&dc->lat, T * D}, {(float **)&dc->cand, T * (size_t)(v->cand_blocks ? v->cand_blocks : 1)},
        {&dc->tp_att, P > G ? T * nh * P * D : 0}, {&dc->tp_oa, P > 1 ? T * G * R : 0},
        {&dc->tp_part, P > 1 ? T * d / P : 0},
    };
    bool ok = (dc->layout = calloc((size_t)c->n_layers, sizeof(dsv4_state))) &&
              (dc->h_seq_state = calloc(S, sizeof(float *))) &&
              (dc->seq_state = backend_alloc(be, S * sizeof(float *)));
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]) && ok; i++)
        ok = !want[i].n || (*want[i].p = backend_alloc(be, want[i].n * F));
    for (int l = 0; ok && l < c->n_layers; l++)
        dc->state_floats += layer_state(c, l, dc->state_floats, &dc->layout[l]);
    float f[2][512];
    if (!ok || v->rope_dim / 2 > 512) {
        dsv4_ctx_destroy(dc);
        return -1;
    }
    rope_freqs(v, v->main_theta, false, f[0]);
    rope_freqs(v, v->comp_theta, v->comp_yarn, f[1]);
    backend_upload(be, dc->freq_main, f[0], (size_t)v->rope_dim / 2 * F);
    backend_upload(be, dc->freq_comp, f[1], (size_t)v->rope_dim / 2 * F);
    *out = dc;
    return 0;
}

size_t dsv4_block_floats(const model_config *c, int l, int block_size) {
    const dsv4_config *v = &c->dsv4;
    bool low = v->attn[l] == DSV4_LOW, own = !low || v->kv_src[l] == l; /* V4.1: only kv sources keep entries */
    return dsv4_kv_block_floats(block_size, v->rate[l], own, v->attn[l] == DSV4_CSA || (low && own && v->idx_src[l]),
                                c->head_dim, v->index_head_dim);
}

int dsv4_seq_create(dsv4_ctx *dc, dsv4_seq **out) {
    *out = NULL;
    dsv4_seq *s = calloc(1, sizeof(*s));
    if (!s) return -1;
    s->bytes = (dc->state_floats ? dc->state_floats : 1) * sizeof(float); /* sliding layers only: nothing */
    if (!(s->mem = backend_alloc(dc->be, s->bytes))) {
        dsv4_seq_destroy(dc, s);
        return -1;
    }
    *out = s;
    return 0;
}

void dsv4_step_upload(dsv4_ctx *dc, dsv4_seq *const *seqs, batch_desc *b) {
    for (int s = 0; s < b->n_seqs; s++) dc->h_seq_state[s] = seqs[s]->mem;
    backend_upload(dc->be, dc->seq_state, dc->h_seq_state, (size_t)b->n_seqs * sizeof(float *));
    b->seq_state = dc->seq_state;
}

size_t dsv4_seq_bytes(const dsv4_seq *s) { return s->bytes; }

void dsv4_seq_destroy(dsv4_ctx *dc, dsv4_seq *s) {
    if (!s) return;
    backend_free(dc->be, s->mem);
    free(s);
}

/* (post, comb, xc) of one hyper-connection of the streams X. V4.1 (MHC:212-216, 467-481): the
 * triplet still comes from X, but xc collapses with the previous HC's pre (stream 0 before the
 * first), and this one's pre waits for the next. */
static void hc_pre(dsv4_ctx *dc, const weight *fn, const float *base, const float *scale, int T) {
    const model_config *c = &dc->bm->cfg;
    int N = c->dsv4.hc_mult, d = c->hidden_size;
    backend *be = dc->be;
    backend_rmsnorm_plain(be, dc->Xn, dc->X, T, N * d, c->rms_norm_eps);
    backend_matmul(be, dc->mix, dc->Xn, fn, NULL, T);
    if (!c->dsv4.hc_pre_from_prev) {
        backend_hc_split(be, dc->post, dc->comb, dc->xc, dc->X, dc->mix, base, scale, T, N, d, c->dsv4.hc_iters,
                         c->dsv4.hc_eps);
        return;
    }
    float *own = dc->lag == dc->pre[0] ? dc->pre[1] : dc->pre[0];
    backend_hc_weights(be, own, dc->post, dc->comb, dc->mix, base, scale, T, N, c->dsv4.hc_iters, c->dsv4.hc_eps);
    if (dc->lag) backend_hc_collapse(be, dc->xc, dc->X, dc->lag, T, N, d);
    else backend_copy2d(be, dc->xc, (size_t)d, dc->X, (size_t)N * d, (size_t)d, (size_t)T);
    dc->lag = own;
}

/* y (T, d) = Wo_b (grouped Wo_a (att)): group g of the heads through rows [g R, (g+1) R) of Wo_a,
 * all groups in one grouped product (backend.h, matmul_grouped).
 * Rank k of P (tensor parallelism; P = 1 alone) holds Wo_a's rows [r0, r1) = [k G R/P, (k+1) G R/P):
 * G/P whole groups, whose heads are its own (P divides G), or a 1/(P/G) share of one group, whose
 * heads are spread over P/G ranks (P a multiple of G): then the heads' outputs are gathered first,
 * and its rows are one group of the product. Its oa rows are gathered, and Wo_b's output rows it
 * holds are computed over all of them and gathered (tp_matmul). Every element is one dot product
 * as one rank computes it: bit-exact. */
static void grouped_out(dsv4_ctx *dc, const dsv4_layer *Y, int T) {
    const model_config *c = &dc->bm->cfg;
    int P = dc->tp ? dc->tp->n_ranks : 1, k = dc->tp ? dc->tp->rank : 0;
    int G = c->dsv4.o_groups, R = c->dsv4.o_lora_rank, aw = c->n_heads * c->head_dim, gw = aw * P / G;
    int r0 = k * G * R / P, r1 = (k + 1) * G * R / P, g0 = k * G / P; /* g0: the group att starts at */
    const float *att = dc->att;
    if (P > G) { /* the group's heads live on P/G ranks */
        par_all_gather(dc->tp, dc->be, dc->tp_att, dc->att, (size_t)T, (size_t)aw);
        att = dc->tp_att, aw *= P, g0 = 0;
    }
    int groups = r1 - r0 >= R ? (r1 - r0) / R : 1; /* whole groups, or the share of one */
    backend_matmul_grouped(dc->be, dc->oa, att + (size_t)(r0 / R - g0) * gw, (size_t)aw, &Y->wo_a, groups, T);
    if (dc->tp) tp_matmul(dc->tp, MODEL_TP_GATHER, dc->be, dc->y, dc->tp_oa, dc->tp_part, dc->oa, &Y->wo_b, NULL, T);
    else backend_matmul(dc->be, dc->y, dc->oa, &Y->wo_b, NULL, T);
}

/* A V4.1 ratio-1/2 layer's sources (deepseek_v4_backend.py forward_low_ratio_sources): a kv source
 * writes its groups' entries (and, owning them, their index keys from the pre-rope latents); an index
 * source scores its kv source's keys with fp4 queries into the top-k of its ratio, which the later
 * layers of the ratio reuse. With a candidate source (_low_ratio_index_topk) that layer also publishes
 * each token's best blocks of entries, and every later index source takes its top-k among them. */
static void low_sources(dsv4_ctx *dc, int l, const batch_desc *b) {
    const model_config *c = &dc->bm->cfg;
    const dsv4_config *v = &c->dsv4;
    const dsv4_layer *Y = &dc->bm->dsv4->layers[l];
    backend *be = dc->be;
    int T = b->n_tokens, D = c->head_dim, r = v->rope_dim, m = v->rate[l];
    int nI = v->index_n_heads, dI = v->index_head_dim, K = v->index_topk;
    float eps = c->rms_norm_eps;
    if (v->kv_src[l] == l) {
        backend_matmul(be, dc->ck, dc->h, &Y->comp.wkv, NULL, T);
        if (m == 2) backend_matmul(be, dc->cg, dc->h, &Y->comp.wgate, NULL, T);
        backend_dsv41_compress(be, dc->lat, dc->ck, dc->cg, b, &dc->layout[l], &dc->cache, m, D, Y->comp.norm,
                               eps, r, dc->freq_comp);
        if (v->idx_src[l]) {
            backend_matmul(be, dc->ik, dc->lat, &Y->iwk, NULL, T);
            backend_dsv41_index_keys(be, dc->ik, b, &dc->cache, m, dI, Y->ik_norm, eps, r, dc->freq_comp);
        }
    }
    if (v->idx_src[l]) {
        backend_matmul(be, dc->iq, dc->qlat, &Y->iwq_b, NULL, T);
        backend_rope_tail(be, dc->iq, b->pos, T, nI, dI, r, dc->freq_comp, 0);
        backend_fake_quant_fp4(be, dc->iq, (size_t)T * nI, dI);
        backend_matmul(be, dc->iw, dc->h, &Y->iweights, NULL, T);
        int32_t *sel = dc->sel_low[m - 1];
        if (v->cand_src < 0 || l < v->cand_src) { /* the full top-k */
            backend_dsv4_index(be, sel, dc->iq, dc->iw, b, &dc->cache, m, K, nI, dI);
        } else { /* two-level: the source publishes its blocks, the later index sources select within them */
            bool src = l == v->cand_src;
            backend_dsv41_index(be, sel, dc->iq, dc->iw, b, &dc->cache, m, K, nI, dI, src ? dc->cand : NULL,
                                src ? NULL : dc->cand, v->cand_blocks, v->cand_block);
        }
    }
}

/* V4's compressors and indexer (CSA, HCA) and the attention over their entries. */
static void attend_v4(dsv4_ctx *dc, int l, const batch_desc *b, const float *freq) {
    const model_config *c = &dc->bm->cfg;
    const dsv4_config *v = &c->dsv4;
    const dsv4_layer *Y = &dc->bm->dsv4->layers[l];
    backend *be = dc->be;
    int T = b->n_tokens, nh = c->n_heads, D = c->head_dim, r = v->rope_dim, m = v->rate[l];
    int nI = v->index_n_heads, dI = v->index_head_dim, K = v->index_topk;
    float eps = c->rms_norm_eps;
    int csa = v->attn[l] == DSV4_CSA;
    if (m) { /* entries of windows closing in this step exist before the attention reads them */
        backend_matmul(be, dc->ck, dc->h, &Y->comp.wkv, NULL, T);
        backend_matmul(be, dc->cg, dc->h, &Y->comp.wgate, NULL, T);
        backend_dsv4_compress(be, dc->ck, dc->cg, b, &dc->layout[l], &dc->cache, 0, m, D, csa, Y->comp.ape,
                              Y->comp.norm, eps, r, freq);
    }
    if (csa) {
        backend_matmul(be, dc->ik, dc->h, &Y->icomp.wkv, NULL, T);
        backend_matmul(be, dc->ig, dc->h, &Y->icomp.wgate, NULL, T);
        backend_dsv4_compress(be, dc->ik, dc->ig, b, &dc->layout[l], &dc->cache, 1, m, dI, 1, Y->icomp.ape,
                              Y->icomp.norm, eps, r, freq);
        backend_matmul(be, dc->iq, dc->qlat, &Y->iwq_b, NULL, T);
        backend_rope_tail(be, dc->iq, b->pos, T, nI, dI, r, freq, 0);
        backend_matmul(be, dc->iw, dc->h, &Y->iweights, NULL, T);
        backend_dsv4_index(be, dc->sel, dc->iq, dc->iw, b, &dc->cache, m, K, nI, dI);
    }
    backend_dsv4_attention(be, dc->att, dc->q, dc->kv, b, &dc->cache, m, csa ? dc->sel : NULL, K, Y->sinks, nh, D,
                           c->sliding_window);
}

/* The layer's attention on h = input_layernorm(x) into y. */
static void attention(dsv4_ctx *dc, int l, const batch_desc *b) {
    const model_config *c = &dc->bm->cfg;
    const dsv4_config *v = &c->dsv4;
    const dsv4_layer *Y = &dc->bm->dsv4->layers[l];
    backend *be = dc->be;
    int T = b->n_tokens, nh = c->n_heads, D = c->head_dim, r = v->rope_dim, m = v->rate[l];
    float eps = c->rms_norm_eps;
    const float *freq = v->attn[l] == DSV4_SLIDING ? dc->freq_main : dc->freq_comp;
    backend_matmul(be, dc->qlat, dc->h, &Y->wq_a, NULL, T);
    backend_rmsnorm(be, dc->qlat, dc->qlat, Y->q_norm, T, v->q_lora_rank, eps);
    backend_matmul(be, dc->q, dc->qlat, &Y->wq_b, NULL, T);
    backend_matmul(be, dc->kv, dc->h, &Y->wkv, NULL, T);
    if (backend_has(be, dsv4_qk_norm_rope)) { /* the four below in one launch */
        backend_dsv4_qk_norm_rope(be, dc->q, dc->kv, Y->kv_norm, b->pos, T, nh, D, r, freq, v->q_head_norm, eps);
    } else {
        if (v->q_head_norm) backend_rmsnorm_plain(be, dc->q, dc->q, T * nh, D, eps); /* per head, no weight */
        backend_rope_tail(be, dc->q, b->pos, T, nh, D, r, freq, 0);
        backend_rmsnorm(be, dc->kv, dc->kv, Y->kv_norm, T, D, eps);
        backend_rope_tail(be, dc->kv, b->pos, T, 1, D, r, freq, 0);
    }
    if (v->attn[l] == DSV4_LOW) {
        low_sources(dc, l, b);
        backend_dsv4_attention(be, dc->att, dc->q, dc->kv, b, &dc->cache, m, dc->sel_low[m - 1], v->index_topk,
                               Y->sinks, nh, D,
                               c->sliding_window);
    } else {
        attend_v4(dc, l, b, freq);
    }
    backend_rope_tail(be, dc->att, b->pos, T, nh, D, r, freq, 1); /* values carried rotation(j): back to relative */
    grouped_out(dc, Y, T);
}

/* The layer's MoE on h = post_attention_layernorm(x) into y: routed + shared expert. */
static void moe(dsv4_ctx *dc, int l, const int32_t *ids, int T) {
    const moe_weights *w = dc->bm->layers[l].moe;
    backend *be = dc->be;
    backend_matmul(be, dc->rlogits, dc->h, &w->router, NULL, T);
    backend_moe_route(be, dc->moe_ids, dc->moe_w, dc->rlogits, ids, w, T);
    ep_moe_experts(dc->ep, be, dc->y, dc->pairs, dc->h, dc->moe_ids, dc->moe_w, w, T);
    backend_matmul(be, dc->sg, dc->h, &w->sh_gate, NULL, T);
    backend_matmul(be, dc->su, dc->h, &w->sh_up, NULL, T);
    backend_swiglu_limit(be, dc->sg, dc->su, (size_t)T * w->inter, w->swiglu_limit);
    backend_add_product(be, dc->y, dc->sg, &w->sh_down, NULL, dc->xc, T); /* xc is free again: the scratch */
}

/* SGLang's clamp_value of the gate's |s| (engram.py, Engram.__init__). */
#define ENGRAM_V41_CLAMP 1e-6f

/* DeepSeek-V4.1's Engram of layer w on the streams X (DEEPSEEK_V4.md 5.6-5.7): the step's rows
 * (hashed at planning, from the checkpoint tensor or a store), kv = rows wkv^T, then each
 * stream's gate adds the gated value in place. */
static int engram_layer(dsv4_ctx *dc, engram_step *eng, engram_step_seg *sg, const engram_weights *w,
                        const batch_desc *b, const forward_item *it, int n_items) {
    const model_config *c = &dc->bm->cfg;
    const float *emb;
    int T = b->n_tokens, rc = engram_step_rows_cut(eng, sg, w, b, &emb); /* live, between two segments */
    if (rc != FORWARD_OK || sg->replayed) return rc;
    backend_matmul(dc->be, dc->ekv, emb, &w->w_kv, NULL, T);
    backend_engram_v41_gate(dc->be, dc->X, dc->ekv, w->qk, T, c->dsv4.hc_mult, c->hidden_size,
                            dc->bm->engram->eps, ENGRAM_V41_CLAMP, engram_step_gates(eng, it, n_items));
    engram_step_gates_done(eng, w, b, it, n_items);
    return FORWARD_OK;
}

int dsv4_forward(dsv4_ctx *dc, engram_step *eng, engram_step_seg *sg, const batch_desc *b, kv_cache *kv,
                 const int32_t *ids, const forward_item *it, int n_items, const int32_t *last, int nl, float *logits) {
    const model *bm = dc->bm;
    const model_config *c = &bm->cfg;
    const dsv4_weights *dw = bm->dsv4;
    backend *be = dc->be;
    int T = b->n_tokens, N = c->dsv4.hc_mult, d = c->hidden_size;
    float eps = c->rms_norm_eps;
    if (!sg->replayed) {
        backend_embed(be, dc->xc, &bm->embed, ids, T);
        for (int j = 0; j < N; j++) /* every stream starts as the embedding */
            backend_copy2d(be, dc->X + (size_t)j * d, (size_t)N * d, dc->xc, (size_t)d, (size_t)d, (size_t)T);
    }
    for (int l = 0; l < c->n_layers; l++) {
        const dsv4_layer *Y = &dw->layers[l];
        const layer_weights *L = &bm->layers[l];
        /* V4.1: the HC before this layer's first is the previous layer's second (hc_pre alternates pre[0]
         * and pre[1]), set here so that a segment issued after a replayed one finds it */
        dc->lag = l ? dc->pre[1] : NULL;
        int m = c->dsv4.rate[l];
        int src = c->dsv4.attn[l] == DSV4_LOW ? c->dsv4.kv_src[l] : l; /* V4.1: entries at the kv source */
        dc->cache = (dsv4_kv){.base = kv_cache_k_layer(kv, l), .block_floats = dsv4_block_floats(c, l, b->block_size),
                              .m = m, .slots = m ? (b->block_size + m - 1) / m : 0, .D = c->head_dim,
                              .dI = c->dsv4.index_head_dim, .ebase = kv_cache_k_layer(kv, src),
                              .eblock_floats = dsv4_block_floats(c, src, b->block_size)};
        int rc = L->engram ? engram_layer(dc, eng, sg, L->engram, b, it, n_items) : FORWARD_OK;
        if (rc != FORWARD_OK) return rc;
        if (sg->replayed) continue;
        hc_pre(dc, &Y->hc_attn_fn, Y->hc_attn_base, Y->hc_attn_scale, T);
        backend_rmsnorm(be, dc->h, dc->xc, L->attn_norm, T, d, eps);
        attention(dc, l, b);
        backend_hc_merge(be, dc->X, dc->y, dc->post, dc->comb, T, N, d);
        hc_pre(dc, &Y->hc_ffn_fn, Y->hc_ffn_base, Y->hc_ffn_scale, T);
        backend_rmsnorm(be, dc->h, dc->xc, L->ffn_norm, T, d, eps);
        moe(dc, l, ids, T);
        backend_hc_merge(be, dc->X, dc->y, dc->post, dc->comb, T, N, d);
    }
    if (!nl || sg->replayed) return FORWARD_OK;
    backend_gather_f32(be, dc->lastX, dc->X, last, nl, N * d);
    if (c->dsv4.hc_pre_from_prev) { /* the last FFN HC's pre: SGM:4588-4596 */
        backend_gather_f32(be, dc->lastmix, dc->lag, last, nl, N);
        backend_hc_collapse(be, dc->lasth, dc->lastX, dc->lastmix, nl, N, d);
    } else {
        backend_rmsnorm_plain(be, dc->Xn, dc->lastX, nl, N * d, eps);
        backend_matmul(be, dc->lastmix, dc->Xn, &dw->hc_head_fn, NULL, nl);
        backend_hc_head(be, dc->lasth, dc->lastX, dc->lastmix, dw->hc_head_base, dw->hc_head_scale, nl, N, d,
                        c->dsv4.hc_eps);
    }
    backend_rmsnorm(be, dc->lasth, dc->lasth, bm->final_norm, nl, d, eps);
    backend_matmul(be, logits, dc->lasth, &bm->lm_head, NULL, nl);
    return FORWARD_OK;
}
