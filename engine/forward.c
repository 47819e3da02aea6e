/* Forward pass for Llama-family decoders (Llama, Qwen2, Qwen3, Mistral):
 *   x = embed(ids)
 *   per layer: x += o_proj(attention(rope(q), rope(k), v)) on rmsnorm(x)
 *              x += down(silu(gate(h)) * up(h)) on h = rmsnorm(x)
 *   logits = lm_head(rmsnorm(x)) at the last position. */
#include "forward.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engram_module.h"
#include "util.h"

const char *forward_status_str(int status) {
    switch (status) {
    case FORWARD_OK: return "ok";
    case FORWARD_ERR_FULL: return "sequence longer than the context";
    case FORWARD_ERR_TOKEN: return "token id out of range";
    case FORWARD_ERR_NOMEM: return "out of memory";
    case FORWARD_ERR_IO: return "an Engram table file could not be read";
    case FORWARD_ERR_KV_FULL: return "no free KV cache blocks";
    }
    return "unknown status";
}

struct forward_state {
    int max_tokens, max_chunk, pos;
    float *inv_freq;         /* (hd/2) rope frequencies after scaling */
    kv_cache *kv;            /* the paged cache holding this sequence's K/V rows */
    kv_cache *own_kv;        /* kv when the state made it itself, else NULL */
    kv_seq seq;              /* block table of positions 0..pos-1 */
    float *kbuf, *vbuf;      /* (C, n_kv*hd) the chunk's K and V before they go to blocks */
    int n_layers;
    /* scratch for one chunk of C = max_chunk tokens */
    float *x, *h;            /* (C, d) residual stream, normed input */
    float *q, *att;          /* (C, n_heads*hd) */
    float *gate, *up;        /* (C, ff) */
    float *tmp;              /* (C, max(d, n_heads*hd)) projection outputs */
    int32_t *pos_ids;        /* (C) */
    const model *model;      /* borrowed: the model the state was made for */
    /* Engram: per-sequence state and scratch (all NULL without Engram) */
    ngram_hash_history hist; /* last max_ngram_size-1 compressed ids */
    float **conv_hist;       /* (n_engram_layers) x ((K-1)*dil, G*d) normed conv inputs */
    int n_engram;
    int64_t *ids64, *cids;   /* (C) raw and compressed ids of the chunk */
    int64_t *rows;           /* (C, H) table rows of one layer */
    float *eout;             /* (C, d) module output */
    float *egates;           /* (C) one layer's gates */
    engram_scratch es;
    double engram_seconds;   /* wall time in hashing, gathers and modules */
};

/* Rope inverse frequencies as transformers computes them (f32), with linear
 * or llama3 scaling applied. */
static void rope_freqs(const model_config *c, float *inv_freq) {
    int half = c->head_dim / 2;
    for (int i = 0; i < half; i++) {
        float f = 1.0f / powf((float)c->rope_theta, (float)(2 * i) / (float)c->head_dim);
        if (c->rope == ROPE_LINEAR) {
            f = f / (float)c->rope_factor;
        } else if (c->rope == ROPE_LLAMA3) {
            double factor = c->rope_factor, lo = c->rope_low_freq_factor, hi = c->rope_high_freq_factor;
            double old = c->rope_original_max_pos;
            double wavelen = 2.0 * M_PI / f;
            double lo_wavelen = old / lo, hi_wavelen = old / hi;
            if (wavelen > lo_wavelen) {
                f = (float)(f / factor);
            } else if (wavelen >= hi_wavelen) { /* between the two: interpolate */
                double smooth = (old / wavelen - lo) / (hi - lo);
                f = (float)((1.0 - smooth) * f / factor + smooth * f);
            }
        }
        inv_freq[i] = f;
    }
}

int forward_kv_cache_create(const model *m, int n_tokens, int block_size, kv_cache **out) {
    kv_cache_params p = kv_cache_default_params();
    if (block_size > 0) p.block_size = block_size;
    p.n_layers = m->cfg.n_layers;
    p.kv_width = m->cfg.n_kv_heads * m->cfg.head_dim;
    p.n_blocks = n_tokens < 1 ? 1 : (n_tokens + p.block_size - 1) / p.block_size;
    return kv_cache_create(&p, out);
}

int forward_state_create(const model *m, int max_tokens, int max_chunk, forward_state **out) {
    *out = NULL;
    int mt = max_tokens > m->cfg.max_position_embeddings ? m->cfg.max_position_embeddings : max_tokens;
    kv_cache *kv;
    if (forward_kv_cache_create(m, mt, 0, &kv) != KV_CACHE_OK) return FORWARD_ERR_NOMEM;
    int rc = forward_state_create_shared(m, kv, max_tokens, max_chunk, out);
    if (rc != FORWARD_OK) {
        kv_cache_destroy(kv);
        return rc;
    }
    (*out)->own_kv = kv;
    return FORWARD_OK;
}

int forward_state_create_shared(const model *m, kv_cache *kv, int max_tokens, int max_chunk,
                                forward_state **out) {
    const model_config *c = &m->cfg;
    *out = NULL;
    if (max_tokens > c->max_position_embeddings) max_tokens = c->max_position_embeddings;
    if (max_chunk > max_tokens) max_chunk = max_tokens;
    if (max_chunk < 1) max_chunk = 1;
    forward_state *s = calloc(1, sizeof(*s));
    if (!s) return FORWARD_ERR_NOMEM;
    s->max_tokens = max_tokens;
    s->max_chunk = max_chunk;
    s->n_layers = c->n_layers;
    size_t C = (size_t)max_chunk, d = (size_t)c->hidden_size, qw = (size_t)c->n_heads * c->head_dim;
    size_t kvw = (size_t)c->n_kv_heads * c->head_dim, ff = (size_t)c->intermediate_size;
    s->inv_freq = malloc((size_t)c->head_dim / 2 * sizeof(float));
    s->kv = kv;
    s->kbuf = malloc(C * kvw * sizeof(float));
    s->vbuf = malloc(C * kvw * sizeof(float));
    s->x = malloc(C * d * sizeof(float));
    s->h = malloc(C * d * sizeof(float));
    s->q = malloc(C * qw * sizeof(float));
    s->att = malloc(C * qw * sizeof(float));
    s->gate = malloc(C * ff * sizeof(float));
    s->up = malloc(C * ff * sizeof(float));
    s->tmp = malloc(C * (qw > d ? qw : d) * sizeof(float));
    s->pos_ids = malloc(C * sizeof(int32_t));
    int ok = s->inv_freq && s->kbuf && s->vbuf && s->x && s->h && s->q && s->att && s->gate &&
             s->up && s->tmp && s->pos_ids;
    const model_engram *e = m->engram;
    if (ok && e) {
        s->n_engram = e->n_layers;
        s->conv_hist = calloc((size_t)e->n_layers, sizeof(float *));
        s->ids64 = malloc(C * sizeof(int64_t));
        s->cids = malloc(C * sizeof(int64_t));
        s->rows = malloc(C * e->n_heads * sizeof(int64_t));
        s->eout = malloc(C * d * sizeof(float));
        s->egates = malloc(C * sizeof(float));
        ok = s->conv_hist && s->ids64 && s->cids && s->rows && s->eout && s->egates &&
             engram_scratch_init(&s->es, e, c->hidden_size, max_chunk) == 0;
        for (int i = 0; ok && i < e->n_layers; i++)
            ok = (s->conv_hist[i] = malloc(engram_conv_history_floats(e, c->hidden_size) * sizeof(float))) != NULL;
    }
    if (!ok) {
        forward_state_destroy(s);
        return FORWARD_ERR_NOMEM;
    }
    rope_freqs(c, s->inv_freq);
    s->model = m;
    forward_state_reset(s);
    *out = s;
    return FORWARD_OK;
}

void forward_state_destroy(forward_state *s) {
    if (!s) return;
    kv_cache_seq_destroy(s->kv, &s->seq);
    kv_cache_destroy(s->own_kv);
    free(s->kbuf);
    free(s->vbuf);
    free(s->inv_freq);
    free(s->x);
    free(s->h);
    free(s->q);
    free(s->att);
    free(s->gate);
    free(s->up);
    free(s->tmp);
    free(s->pos_ids);
    for (int i = 0; s->conv_hist && i < s->n_engram; i++) free(s->conv_hist[i]);
    free(s->conv_hist);
    free(s->ids64);
    free(s->cids);
    free(s->rows);
    free(s->eout);
    free(s->egates);
    engram_scratch_free(&s->es);
    free(s);
}

int forward_state_pos(const forward_state *s) { return s->pos; }
double forward_state_engram_seconds(const forward_state *s) { return s->engram_seconds; }
void forward_state_reset(forward_state *s) {
    s->pos = 0;
    kv_cache_seq_free(s->kv, &s->seq);
    const model_engram *e = s->model->engram;
    if (!e) return;
    ngram_hash_history_init(e->hash, &s->hist);
    for (int i = 0; i < e->n_layers; i++)
        memset(s->conv_hist[i], 0, engram_conv_history_floats(e, s->model->cfg.hidden_size) * sizeof(float));
}

int forward_state_reserve(forward_state *s, int n) {
    if (n > s->max_tokens - s->pos) return FORWARD_ERR_FULL;
    int rc = kv_cache_seq_reserve(s->kv, &s->seq, s->pos + n);
    return rc == KV_CACHE_OK ? FORWARD_OK : rc == KV_CACHE_ERR_FULL ? FORWARD_ERR_KV_FULL : FORWARD_ERR_NOMEM;
}

/* One chunk of T tokens at positions s->pos .. s->pos+T-1. */
static int forward_chunk(const model *m, const backend_ops *ops, forward_state *s, const int32_t *ids,
                          int T, float *logits, float *gates) {
    const model_engram *e = m->engram;
    const model_config *c = &m->cfg;
    int d = c->hidden_size, hd = c->head_dim, nh = c->n_heads, nkv = c->n_kv_heads;
    size_t kvw = (size_t)nkv * hd, ff = (size_t)c->intermediate_size;
    float eps = c->rms_norm_eps;
    int bs = kv_cache_block_size(s->kv);
    for (int t = 0; t < T; t++) s->pos_ids[t] = s->pos + t;

    if (e) { /* the chunk's compressed ids: every Engram row is known from here on */
        double t0 = util_now();
        for (int t = 0; t < T; t++) s->ids64[t] = ids[t];
        ngram_hash_compress_ids(e->lookup, e->lookup_n, s->ids64, (size_t)T, s->cids);
        s->engram_seconds += util_now() - t0;
    }

    ops->embed(s->x, &m->embed, ids, T);
    for (int l = 0; l < c->n_layers; l++) {
        const layer_weights *L = &m->layers[l];

        /* Engram: h = h + engram(h) at the start of the layer */
        if (L->engram) {
            const engram_weights *w = L->engram;
            double t0 = util_now();
            ngram_hash_layer_rows(e->hash, w->li, &s->hist, s->cids, (size_t)T, s->rows);
            if (engram_module_run(ops, e, w, d, s->x, s->rows, T, s->conv_hist[w->li], &s->es, s->eout,
                                  s->egates))
                return FORWARD_ERR_IO;
            ops->add(s->x, s->eout, (size_t)T * d);
            s->engram_seconds += util_now() - t0;
            if (gates)
                for (int t = 0; t < T; t++) gates[(size_t)t * e->n_layers + w->li] = s->egates[t];
        }

        float *kc = s->kbuf, *vc = s->vbuf; /* this chunk's rows, copied into blocks after rope */

        /* attention block */
        ops->rmsnorm(s->h, s->x, L->attn_norm, T, d, eps);
        ops->matmul(s->q, s->h, &L->wq, L->bq, T);
        ops->matmul(kc, s->h, &L->wk, L->bk, T);
        ops->matmul(vc, s->h, &L->wv, L->bv, T);
        if (c->qk_norm) { /* Qwen3: RMSNorm over each head's vector, before rope */
            ops->rmsnorm(s->q, s->q, L->q_norm, T * nh, hd, eps);
            ops->rmsnorm(kc, kc, L->k_norm, T * nkv, hd, eps);
        }
        ops->rope(s->q, s->pos_ids, T, nh, hd, s->inv_freq);
        ops->rope(kc, s->pos_ids, T, nkv, hd, s->inv_freq);
        for (int t = 0; t < T; t++) { /* position p goes to row p % bs of block p / bs */
            int p = s->pos + t, b = s->seq.blocks[p / bs];
            memcpy(kv_cache_k(s->kv, l, b) + (size_t)(p % bs) * kvw, kc + (size_t)t * kvw, kvw * sizeof(float));
            memcpy(kv_cache_v(s->kv, l, b) + (size_t)(p % bs) * kvw, vc + (size_t)t * kvw, kvw * sizeof(float));
        }
        ops->attention(s->att, s->q, kv_cache_k_layer(s->kv, l), kv_cache_v_layer(s->kv, l), s->seq.blocks, bs,
                       T, s->pos, nh, nkv, hd, c->sliding_window);
        ops->matmul(s->tmp, s->att, &L->wo, L->bo, T);
        ops->add(s->x, s->tmp, (size_t)T * d);

        /* feed-forward block (SwiGLU) */
        ops->rmsnorm(s->h, s->x, L->ffn_norm, T, d, eps);
        ops->matmul(s->gate, s->h, &L->w_gate, L->b_gate, T);
        ops->matmul(s->up, s->h, &L->w_up, L->b_up, T);
        ops->swiglu(s->gate, s->up, (size_t)T * ff);
        ops->matmul(s->tmp, s->gate, &L->w_down, L->b_down, T);
        ops->add(s->x, s->tmp, (size_t)T * d);
    }
    s->pos += T;
    if (e) {
        double t0 = util_now();
        ngram_hash_history_push(e->hash, &s->hist, s->cids, (size_t)T);
        s->engram_seconds += util_now() - t0;
    }
    if (logits) { /* only the last position's logits are needed */
        float *last = s->x + (size_t)(T - 1) * d;
        ops->rmsnorm(s->h, last, m->final_norm, 1, d, eps);
        ops->matmul(logits, s->h, &m->lm_head, NULL, 1);
    }
    return FORWARD_OK;
}

int forward_run(const model *m, const backend_ops *ops, forward_state *s, const int32_t *ids, int n,
                float *logits, float *gates) {
    if (n <= 0) return FORWARD_OK;
    if (n > s->max_tokens - s->pos) return FORWARD_ERR_FULL;
    /* With Engram, ids past the tokenizer have no compressed id. */
    int64_t limit = m->engram ? m->engram->lookup_n : m->cfg.vocab_size;
    if (limit > m->cfg.vocab_size) limit = m->cfg.vocab_size;
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= limit) return FORWARD_ERR_TOKEN;
    int krc = forward_state_reserve(s, n);
    if (krc != FORWARD_OK) return krc;
    int nl = m->engram ? m->engram->n_layers : 0;
    for (int i = 0; i < n; i += s->max_chunk) {
        int T = n - i < s->max_chunk ? n - i : s->max_chunk;
        int rc = forward_chunk(m, ops, s, ids + i, T, i + T == n ? logits : NULL,
                               gates ? gates + (size_t)i * nl : NULL);
        if (rc) return rc;
    }
    return FORWARD_OK;
}
