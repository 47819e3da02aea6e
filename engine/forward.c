/* Forward pass for Llama-family decoders (Llama, Qwen2, Qwen3, Mistral), one
 * scheduler step at a time:
 *   x = embed(ids)                      all tokens of the step, end to end
 *   per layer: x += engram(x)           on Engram layers
 *              x += o_proj(attention(rope(q), rope(k), v)) on rmsnorm(x),
 *                                       each token over its own sequence
 *              x += down(silu(gate(h)) * up(h)) on h = rmsnorm(x)
 *   logits = lm_head(rmsnorm(x)) at each sequence's last token. */
#include "engine/forward.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/util.h"
#include "engine/engram_step.h"
#include "engine/expert_parallel.h"
#include "engine/forward_dsv4.h"
#include "engine/tensor_parallel.h"

const char *forward_status_str(int status) {
    switch (status) {
    case FORWARD_OK: return "ok";
    case FORWARD_ERR_FULL: return "sequence longer than the context";
    case FORWARD_ERR_TOKEN: return "token id out of range";
    case FORWARD_ERR_NOMEM: return "out of memory";
    case FORWARD_ERR_IO: return "an Engram table file could not be read";
    case FORWARD_ERR_KV_FULL: return "no free KV cache blocks";
    case FORWARD_ERR_BATCH: return "step larger than the forward context";
    case FORWARD_ERR_UNSUPPORTED: return "the model needs an op this backend lacks";
    }
    return "unknown status";
}

struct forward_ctx {
    model *m;                /* the model (host) */
    model *bm;               /* the backend's view of it (weights in backend memory) */
    backend *be;
    int max_tokens, max_seqs, max_blocks;
    float *inv_freq;         /* (hd/2) rope frequencies after scaling */
    /* step scratch, backend memory, for T = max_tokens tokens and S = max_seqs sequences */
    float *x, *h;            /* (T, d) residual stream, normed input */
    float *q, *k, *v, *att;  /* (T, n_heads*hd) (T, kvw) (T, kvw) (T, n_heads*hd) */
    float *gate, *up;        /* (T, ff) each, one buffer: up = gate + T ff (matmul_ffn's work) */
    float *tmp;              /* (T, max(d, n_heads*hd)) projection outputs */
    float *lastx, *logits;   /* (S, d), (S, vocab) */
    float *rlogits, *moe_w;  /* (T, n_experts) router logits, (T, top_k) expert weights; with experts */
    int32_t *moe_ids;        /* (T, top_k) chosen experts */
    int32_t *ids, *last, *next;
    int32_t *desc_i32;       /* pos, slot, tok_seq (T each); seq_start (S+1), seq_pos0 (S), block tables (S, max_blocks) */
    engram_step *eng;        /* the step's Engram work (engram_step.c); NULL without Engram */
    dsv4_ctx *dsv4;          /* a DeepSeek-V4 model's own pass (forward_dsv4.c), else NULL */
    const par_rank *ep;       /* expert parallelism: this context's rank, or NULL (forward_ctx_set_expert_rank) */
    float *pairs;            /* (T, top_k, d) with ep: the (token, slot) rows of the experts */
    const par_rank *tp;      /* tensor parallelism: this context's rank, or NULL (forward_ctx_set_tensor_rank) */
    float *tp_gath, *tp_part; /* with tp: (T, max(n_heads hd, ff) R) gathered inputs, (T, d / R) output rows */
    dsv4_seq **dsv4_seqs;    /* host (S): the step's sequences' DeepSeek-V4 states */
    bool prefix_ok;          /* forward_ctx_prefix_cacheable */
    engram_step_snap *snaps; /* (T + S) a step's block-boundary snapshots, with Engram */
    /* host mirrors */
    int32_t *h_i32;          /* like desc_i32 */
    int32_t *h_last;         /* (S) */
    uint64_t n_plans;        /* steps planned: plan_step's mark of the states in a step */
    double plan_seconds;     /* forward_ctx_plan_seconds */
};

struct forward_state {
    forward_ctx *fc;
    int max_tokens, pos;
    kv_cache *kv;            /* the paged cache holding this sequence's K/V rows */
    kv_cache *own_kv;        /* kv when the state made it itself, else NULL */
    kv_seq seq;              /* block table of positions 0..pos-1 */
    engram_step_seq eng;     /* hash history and conv history, with Engram */
    dsv4_seq *dsv4;          /* DeepSeek-V4's open compression windows (the rest is in its blocks), or NULL */
    uint64_t planned;        /* the fc->n_plans of the last step planned with it */
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

/* ---- context ---- */

/* The step descriptor, packed for T tokens, S sequences and block tables of
 * mb entries: pos, slot, tok_seq (T each), seq_start (S+1), seq_pos0 (S),
 * block tables (S, mb). A step uploads only its own part. */
static size_t desc_ints(size_t T, size_t S, size_t mb) { return 3 * T + 2 * S + 1 + S * mb; }

/* (Re)makes the descriptor buffers for block tables of up to max_blocks
 * entries. Returns 0, or -1 (the old buffers kept) when memory runs out. */
static int ctx_alloc_desc(forward_ctx *fc, int max_blocks) {
    size_t n = desc_ints((size_t)fc->max_tokens, (size_t)fc->max_seqs, (size_t)max_blocks) * sizeof(int32_t);
    int32_t *d = backend_alloc(fc->be, n), *h = malloc(n);
    if (!d || !h) {
        backend_free(fc->be, d);
        free(h);
        return -1;
    }
    backend_free(fc->be, fc->desc_i32);
    free(fc->h_i32);
    fc->desc_i32 = d;
    fc->h_i32 = h;
    fc->max_blocks = max_blocks;
    return 0;
}

void forward_ctx_destroy(forward_ctx *fc) {
    if (!fc) return;
    backend *be = fc->be;
    void *dev[] = {fc->inv_freq, fc->x, fc->h, fc->q, fc->k, fc->v, fc->att, fc->gate, fc->tmp, /* up: in gate's */
                   fc->lastx, fc->logits, fc->ids, fc->last, fc->next, fc->desc_i32, fc->rlogits, fc->moe_w,
                   fc->moe_ids, fc->pairs, fc->tp_gath, fc->tp_part};
    for (size_t i = 0; i < sizeof(dev) / sizeof(dev[0]); i++) backend_free(be, dev[i]);
    engram_step_destroy(fc->eng);
    dsv4_ctx_destroy(fc->dsv4);
    free(fc->dsv4_seqs);
    free(fc->snaps);
    free(fc->h_i32);
    free(fc->h_last);
    if (fc->bm) backend_release(be, fc->bm, fc->m);
    free(fc);
}

int forward_ctx_create(model *m, backend *be, int max_tokens, int max_seqs, forward_ctx **out,
                       char *err, size_t errlen) {
    const model_config *c = &m->cfg;
    *out = NULL;
    if (max_tokens < 1) max_tokens = 1;
    if (max_seqs < 1) max_seqs = 1;
    if (max_seqs > max_tokens) max_seqs = max_tokens;
    if (c->arch == ARCH_DEEPSEEK_V4 && !(backend_has(be, dsv4_attention) && backend_has(be, dsv4_compress) &&
                                         backend_has(be, dsv4_index) && backend_has(be, hc_split) &&
                                         backend_has(be, moe_route))) {
        snprintf(err, errlen, "the %s backend does not run DeepSeek-V4 models yet (use --device cpu)",
                 backend_name(be));
        return FORWARD_ERR_UNSUPPORTED;
    }
    if (c->arch == ARCH_DEEPSEEK_V4 && c->dsv4.hc_pre_from_prev &&
        !(backend_has(be, hc_weights) && backend_has(be, hc_collapse))) {
        snprintf(err, errlen,
                 "the %s backend does not run DeepSeek-V4.1's lagged hyper-connections "
                 "(hc_pre_from_prev_sublayer) yet (use --device cpu)", backend_name(be));
        return FORWARD_ERR_UNSUPPORTED;
    }
    bool low = false;
    for (int l = 0; c->arch == ARCH_DEEPSEEK_V4 && l < c->n_layers; l++) low |= c->dsv4.attn[l] == DSV4_LOW;
    if (low && !(backend_has(be, dsv41_compress) && backend_has(be, dsv41_index_keys) &&
                 backend_has(be, fake_quant_fp4) && (c->dsv4.cand_src < 0 || backend_has(be, dsv41_index)))) {
        snprintf(err, errlen, "the %s backend does not run DeepSeek-V4.1's compress ratios 1 and 2 yet (use --device cpu)",
                 backend_name(be));
        return FORWARD_ERR_UNSUPPORTED;
    }
    if (m->engram && m->engram->v41 && !backend_has(be, engram_v41_gate)) {
        snprintf(err, errlen, "the %s backend does not run DeepSeek-V4.1's Engram yet (use --device cpu)",
                 backend_name(be));
        return FORWARD_ERR_UNSUPPORTED;
    }
    if (c->moe.n_experts && !(backend_has(be, moe_route) && backend_has(be, moe_experts))) {
        snprintf(err, errlen, "the %s backend does not run mixture-of-experts layers yet (use --device cpu)",
                 backend_name(be));
        return FORWARD_ERR_UNSUPPORTED;
    }
    forward_ctx *fc = calloc(1, sizeof(*fc));
    if (!fc) {
        snprintf(err, errlen, "out of memory");
        return FORWARD_ERR_NOMEM;
    }
    fc->m = m;
    fc->be = be;
    fc->max_tokens = max_tokens;
    fc->max_seqs = max_seqs;
    if (!(fc->bm = backend_prepare(be, m, err, errlen))) {
        free(fc);
        return FORWARD_ERR_NOMEM;
    }
    size_t T = (size_t)max_tokens, S = (size_t)max_seqs, F = sizeof(float), d = (size_t)c->hidden_size;
    size_t qw = (size_t)c->n_heads * c->head_dim, kvw = (size_t)c->n_kv_heads * c->head_dim;
    size_t ff = (size_t)c->intermediate_size;
    fc->inv_freq = backend_alloc(be, (size_t)c->head_dim / 2 * F);
    fc->x = backend_alloc(be, T * d * F); /* one residual stream: model_load refuses hc_mult > 1 */
    fc->h = backend_alloc(be, T * d * F);
    fc->q = backend_alloc(be, T * qw * F);
    fc->k = backend_alloc(be, T * kvw * F);
    fc->v = backend_alloc(be, T * kvw * F);
    fc->att = backend_alloc(be, T * qw * F);
    fc->gate = backend_alloc(be, 2 * T * ff * F);
    fc->up = fc->gate ? fc->gate + T * ff : NULL;
    fc->tmp = backend_alloc(be, T * (qw > d ? qw : d) * F);
    fc->lastx = backend_alloc(be, S * d * F);
    fc->logits = backend_alloc(be, S * (size_t)c->vocab_size * F);
    fc->ids = backend_alloc(be, T * sizeof(int32_t));
    fc->last = backend_alloc(be, S * sizeof(int32_t));
    fc->next = backend_alloc(be, S * sizeof(int32_t));
    fc->h_last = malloc(S * sizeof(int32_t));
    int ok = fc->inv_freq && fc->x && fc->h && fc->q && fc->k && fc->v && fc->att && fc->gate && fc->up &&
             fc->tmp && fc->lastx && fc->logits && fc->ids && fc->last && fc->next && fc->h_last;
    if (ok && c->moe.n_experts) {
        fc->rlogits = backend_alloc(be, T * (size_t)c->moe.n_experts * F);
        fc->moe_w = backend_alloc(be, T * (size_t)c->moe.top_k * F);
        fc->moe_ids = backend_alloc(be, T * (size_t)c->moe.top_k * sizeof(int32_t));
        ok = fc->rlogits && fc->moe_w && fc->moe_ids;
    }
    if (ok && m->engram &&
        engram_step_create(m, fc->bm, be, max_tokens, max_seqs, &fc->eng, err, errlen) != FORWARD_OK) {
        forward_ctx_destroy(fc);
        return FORWARD_ERR_NOMEM;
    }
    if (ok && c->arch == ARCH_DEEPSEEK_V4)
        ok = dsv4_ctx_create(fc->bm, be, max_tokens, max_seqs, &fc->dsv4) == 0 &&
             (fc->dsv4_seqs = calloc((size_t)max_seqs, sizeof(dsv4_seq *))) != NULL;
    /* block tables for 16-token blocks; forward_kv_cache_create widens them for smaller ones */
    if (ok) ok = ctx_alloc_desc(fc, (c->max_position_embeddings + 15) / 16 + 1) == 0;
    if (ok && fc->eng) ok = (fc->snaps = malloc((T + S) * sizeof(*fc->snaps))) != NULL;
    /* Models that keep their whole decode state in the KV blocks and the
     * Engram histories that forward_state_begin restores. DeepSeek-V4 keeps
     * its window rows, compressed entries and index keys in the blocks, but
     * its compressors' open windows (the projections of the last 2m
     * positions) in the sequence's own state, which no cached block carries
     * and forward_state_begin could only rebuild by running those positions
     * again: caching stays off for it (the engine says so once). */
    fc->prefix_ok = c->arch != ARCH_DEEPSEEK_V4;
    if (!ok) {
        forward_ctx_destroy(fc);
        snprintf(err, errlen, "out of %s memory for a step of %d tokens", backend_name(be), max_tokens);
        return FORWARD_ERR_NOMEM;
    }
    float *f = malloc((size_t)c->head_dim / 2 * F);
    if (!f) {
        forward_ctx_destroy(fc);
        snprintf(err, errlen, "out of memory");
        return FORWARD_ERR_NOMEM;
    }
    rope_freqs(c, f);
    backend_upload(be, fc->inv_freq, f, (size_t)c->head_dim / 2 * F);
    free(f);
    *out = fc;
    return FORWARD_OK;
}

int forward_ctx_set_expert_rank(forward_ctx *fc, const par_rank *r, char *err, size_t errlen) {
    const model_config *c = &fc->bm->cfg;
    if (!c->moe.n_experts) return snprintf(err, errlen, "expert parallelism: the model has no experts"), -1;
    if (!backend_has(fc->be, moe_pairs) || !backend_has(fc->be, moe_combine))
        return snprintf(err, errlen, "expert parallelism: the %s backend has no moe_pairs/moe_combine ops yet",
                        backend_name(fc->be)), -1;
    if (!par_rank_usable(r, fc->be))
        return snprintf(err, errlen, "expert parallelism: the group's collectives cannot reach %s memory (no NCCL "
                                     "joined)", backend_name(fc->be)), -1;
    if (r->n_ranks > c->moe.n_experts)
        return snprintf(err, errlen, "expert parallelism: %d ranks for %d experts", r->n_ranks, c->moe.n_experts), -1;
    size_t n = (size_t)fc->max_tokens * c->moe.top_k * c->hidden_size;
    if (!fc->pairs && !(fc->pairs = backend_alloc(fc->be, n * sizeof(float))))
        return snprintf(err, errlen, "out of memory"), -1;
    fc->ep = r;
    if (fc->dsv4) dsv4_ctx_set_expert_rank(fc->dsv4, r, fc->pairs);
    return 0;
}

int forward_ctx_set_tensor_rank(forward_ctx *fc, const par_rank *r, char *err, size_t errlen) {
    const model_tp *tp = &fc->m->tp;
    const model_config *c = &fc->bm->cfg;
    if (tp->n_ranks != r->n_ranks || tp->rank != r->rank)
        return snprintf(err, errlen, "tensor parallelism: the model is rank %d of %d's slice, the group's rank is %d of %d",
                        tp->rank, tp->n_ranks, r->rank, r->n_ranks), -1;
    if (!par_rank_usable(r, fc->be))
        return snprintf(err, errlen, "tensor parallelism: the group's collectives cannot reach %s memory (no NCCL "
                                     "joined)", backend_name(fc->be)), -1;
    if (fc->dsv4) { /* its own pass holds the gathers' scratch (forward_dsv4.c, grouped_out) */
        dsv4_ctx_set_tensor_rank(fc->dsv4, r);
        fc->tp = r;
        return 0;
    }
    size_t T = (size_t)fc->max_tokens, R = (size_t)r->n_ranks, qw = (size_t)c->n_heads * c->head_dim;
    size_t ff = (size_t)c->intermediate_size, wide = (qw > ff ? qw : ff) * R;
    if (tp->mode == MODEL_TP_GATHER && !fc->tp_gath &&
        (!(fc->tp_gath = backend_alloc(fc->be, T * wide * sizeof(float))) ||
         !(fc->tp_part = backend_alloc(fc->be, T * (size_t)c->hidden_size / R * sizeof(float)))))
        return snprintf(err, errlen, "out of memory"), -1;
    fc->tp = r;
    return 0;
}

int forward_ctx_max_tokens(const forward_ctx *fc) { return fc->max_tokens; }
backend *forward_ctx_backend(const forward_ctx *fc) { return fc->be; }

/* max_idle < 0: prefix caching off. */
static int kv_create(forward_ctx *fc, int n_tokens, int block_size, int max_idle, kv_cache **out) {
    const model *m = fc->m;
    const model_config *c = &m->cfg;
    kv_cache_params p = kv_cache_default_params();
    size_t dsv4_elems[MODEL_MAX_LAYERS];
    p.prefix_caching = max_idle >= 0;
    p.max_idle = max_idle > 0 ? max_idle : 0;
    p.aux_bytes = p.prefix_caching ? forward_ctx_prefix_aux_bytes(fc) : 0;
    p.hash_seed = ((uint64_t)c->n_layers << 48) ^ ((uint64_t)c->hidden_size << 24) ^ (uint64_t)c->vocab_size;
    if (block_size > 0) p.block_size = block_size;
    p.n_layers = m->cfg.n_layers;
    p.kv_width = m->cfg.n_kv_heads * m->cfg.head_dim;
    p.n_blocks = n_tokens < 1 ? 1 : (n_tokens + p.block_size - 1) / p.block_size;
    p.elem_bytes = backend_kv_elem_bytes(fc->be);
    p.be = fc->be;
    if (fc->dsv4) { /* DeepSeek-V4: its own block layout (forward_dsv4.h), f32 as its ops read it */
        for (int l = 0; l < c->n_layers; l++) dsv4_elems[l] = dsv4_block_floats(c, l, p.block_size);
        p.layer_block_elems = dsv4_elems;
        p.elem_bytes = sizeof(float);
    }
    int rc = kv_cache_create(&p, out);
    if (rc != KV_CACHE_OK) return rc;
    /* A block table never holds more than the model's positions in blocks of this size. */
    int need = (m->cfg.max_position_embeddings + p.block_size - 1) / p.block_size;
    if (need > fc->max_blocks && ctx_alloc_desc(fc, need) != 0) { /* blocks smaller than 16 */
        kv_cache_destroy(*out);
        *out = NULL;
        return KV_CACHE_ERR_NOMEM;
    }
    return KV_CACHE_OK;
}

int forward_kv_cache_create(forward_ctx *fc, int n_tokens, int block_size, kv_cache **out) {
    return kv_create(fc, n_tokens, block_size, -1, out);
}

int forward_kv_cache_create_cached(forward_ctx *fc, int n_tokens, int block_size, int max_idle, kv_cache **out) {
    return kv_create(fc, n_tokens, block_size, max_idle < 0 ? 0 : max_idle, out);
}

bool forward_ctx_prefix_cacheable(const forward_ctx *fc) { return fc->prefix_ok; }
size_t forward_ctx_prefix_aux_bytes(const forward_ctx *fc) { return fc->eng ? engram_step_seq_bytes(fc->eng) : 0; }

/* ---- states ---- */

int forward_state_create(forward_ctx *fc, kv_cache *kv, int max_tokens, forward_state **out) {
    const model *m = fc->m;
    *out = NULL;
    if (max_tokens > m->cfg.max_position_embeddings) max_tokens = m->cfg.max_position_embeddings;
    if (max_tokens < 1) max_tokens = 1;
    forward_state *s = calloc(1, sizeof(*s));
    if (!s) return FORWARD_ERR_NOMEM;
    s->fc = fc;
    s->max_tokens = max_tokens;
    s->kv = kv;
    if (!kv && forward_kv_cache_create(fc, max_tokens, 0, &s->own_kv) != KV_CACHE_OK) {
        free(s);
        return FORWARD_ERR_NOMEM;
    }
    if (!kv) s->kv = s->own_kv;
    if (fc->dsv4 && dsv4_seq_create(fc->dsv4, &s->dsv4)) {
        forward_state_destroy(s);
        return FORWARD_ERR_NOMEM;
    }
    if (fc->eng && engram_step_seq_init(fc->eng, &s->eng)) {
        forward_state_destroy(s);
        return FORWARD_ERR_NOMEM;
    }
    forward_state_reset(s);
    *out = s;
    return FORWARD_OK;
}

void forward_state_destroy(forward_state *s) {
    if (!s) return;
    kv_cache_seq_destroy(s->kv, &s->seq);
    kv_cache_destroy(s->own_kv);
    engram_step_seq_free(s->fc->eng, &s->eng);
    dsv4_seq_destroy(s->fc->dsv4, s->dsv4);
    free(s);
}

int forward_state_pos(const forward_state *s) { return s->pos; }
double forward_ctx_engram_seconds(const forward_ctx *fc) { return fc->eng ? engram_step_seconds(fc->eng) : 0.0; }

size_t forward_ctx_engram_tier_overlap(forward_ctx *fc) { return fc->eng ? engram_step_tier_overlap(fc->eng) : 0; }

int forward_ctx_fetch_stats(forward_ctx *fc, int li, engram_fetch_stats *out) {
    if (fc->eng) return engram_step_fetch_stats(fc->eng, li, out);
    memset(out, 0, sizeof(*out));
    return -1;
}

void forward_state_reset(forward_state *s) {
    forward_ctx *fc = s->fc;
    s->pos = 0;
    kv_cache_seq_free(s->kv, &s->seq);
    if (fc->eng) engram_step_seq_reset(fc->eng, &s->eng);
}

int forward_state_begin(forward_state *s, const char *salt, const int32_t *ids, int n_ids, int max_blocks) {
    kv_cache *kv = s->kv;
    if (s->pos || s->seq.n_blocks || !kv_cache_prefix_caching(kv) || !s->fc->prefix_ok) return 0;
    kv_cache_seq_begin(kv, &s->seq, salt);
    int bs = kv_cache_block_size(kv), most = (s->max_tokens - 1) / bs; /* room for one more token */
    int nb = kv_cache_seq_attach(kv, &s->seq, ids, n_ids, max_blocks < most ? max_blocks : most);
    if (nb == 0) return 0;
    s->pos = nb * bs;
    if (s->fc->eng) { /* the Engram state at pos: hash history from the ids, conv histories from the snapshot */
        int lead = s->pos < FORWARD_AHEAD_LEAD ? s->pos : FORWARD_AHEAD_LEAD;
        engram_step_seq_resume(s->fc->eng, &s->eng, ids + s->pos - lead, lead,
                               kv_cache_aux(kv, s->seq.blocks[nb - 1]));
    }
    return s->pos;
}

int forward_state_reserve(forward_state *s, int n) {
    if (n > s->max_tokens - s->pos) return FORWARD_ERR_FULL;
    int rc = kv_cache_seq_reserve(s->kv, &s->seq, s->pos + n);
    return rc == KV_CACHE_OK ? FORWARD_OK : rc == KV_CACHE_ERR_FULL ? FORWARD_ERR_KV_FULL : FORWARD_ERR_NOMEM;
}

/* ---- one step ---- */

/* Checks the items and lays out the step on the host: the batch descriptor,
 * the ids, and every Engram row (hashing happens here, before the pass).
 * With `bucket`, the block tables' stride (and max_ctx with it) is rounded up
 * to a multiple of STEP_BLOCKS_BUCKET blocks, so that consecutive decode
 * steps have the same shape and can replay one recording.
 * Returns FORWARD_OK or an error with nothing appended. */
#define STEP_BLOCKS_BUCKET 32
#define STEP_RECORD_MAX_TOKENS 64
static int plan_step(forward_ctx *fc, const forward_item *it, int n_items, batch_desc *b, bool bucket) {
    const model *m = fc->m;
    const model_engram *e = m->engram;
    int T = 0, max_q = 0, max_ctx = 0;
    if (n_items < 1 || n_items > fc->max_seqs) return FORWARD_ERR_BATCH;
    /* With Engram, ids past the tokenizer have no compressed id. */
    int64_t limit = e ? e->lookup_n : m->cfg.vocab_size;
    if (limit > m->cfg.vocab_size) limit = m->cfg.vocab_size;
    uint64_t mark = ++fc->n_plans; /* a state met twice in the step: linear, where comparing pairs of items
                                     * cost more than the rest of the plan at 512 sequences */
    for (int i = 0; i < n_items; i++) {
        if (it[i].n < 1 || it[i].st->kv != it[0].st->kv || it[i].st->fc != fc || it[i].st->planned == mark)
            return FORWARD_ERR_BATCH;
        it[i].st->planned = mark;
        if (it[i].n > it[i].st->max_tokens - it[i].st->pos) return FORWARD_ERR_FULL;
        for (int k = 0; k < it[i].n; k++)
            if (it[i].ids[k] < 0 || it[i].ids[k] >= limit) return FORWARD_ERR_TOKEN;
        T += it[i].n;
        if (T > fc->max_tokens) return FORWARD_ERR_BATCH;
    }
    for (int i = 0; i < n_items; i++) {
        int rc = forward_state_reserve(it[i].st, it[i].n);
        if (rc != FORWARD_OK) return rc;
    }
    int S = n_items, bs = kv_cache_block_size(it[0].st->kv);
    int32_t *pos = fc->h_i32, *slot = pos + T, *tok_seq = slot + T;
    int32_t *seq_start = tok_seq + T, *seq_pos0 = seq_start + S + 1, *tables = seq_pos0 + S;
    int t = 0;
    for (int i = 0; i < S; i++) {
        const forward_state *s = it[i].st;
        seq_start[i] = t;
        seq_pos0[i] = s->pos;
        if (it[i].n > max_q) max_q = it[i].n;
        if (s->pos + it[i].n > max_ctx) max_ctx = s->pos + it[i].n;
        for (int k = 0; k < it[i].n; k++, t++) {
            int p = s->pos + k;
            pos[t] = p;
            slot[t] = s->seq.blocks[p / bs] * bs + p % bs;
            tok_seq[t] = i;
        }
        fc->h_last[i] = t - 1;
    }
    seq_start[S] = t;
    int mb = (max_ctx + bs - 1) / bs;
    if (bucket) {
        int r = (mb + STEP_BLOCKS_BUCKET - 1) / STEP_BLOCKS_BUCKET * STEP_BLOCKS_BUCKET;
        mb = r < fc->max_blocks ? r : fc->max_blocks > mb ? fc->max_blocks : mb;
        max_ctx = mb * bs; /* an upper bound of every token's position + 1, as the ops want */
    }
    int n_snaps = 0;
    for (int i = 0; i < S; i++) {
        forward_state *s = it[i].st;
        int nb = (s->pos + it[i].n + bs - 1) / bs;
        memcpy(tables + (size_t)i * mb, s->seq.blocks, (size_t)nb * sizeof(int32_t));
        if (!s->seq.cached) continue;
        /* prefix caching: the ids each block is registered under, and with
         * Engram the conv histories at each block end the piece reaches */
        kv_cache_seq_write_ids(s->kv, &s->seq, s->pos, it[i].ids, it[i].n);
        for (int p = (s->pos / bs + 1) * bs; fc->eng && p <= s->pos + it[i].n; p += bs)
            fc->snaps[n_snaps++] = (engram_step_snap){.seq = i, .at = p - s->pos,
                                                      .dst = kv_cache_aux(s->kv, s->seq.blocks[p / bs - 1])};
    }
    if (fc->eng) engram_step_set_snaps(fc->eng, fc->snaps, n_snaps);
    backend *be = fc->be;
    backend_upload(be, fc->desc_i32, fc->h_i32, desc_ints((size_t)T, (size_t)S, (size_t)mb) * sizeof(int32_t));
    int32_t *d = fc->desc_i32; /* the same offsets as the host copy */
    *b = (batch_desc){.n_seqs = S, .n_tokens = T, .block_size = bs, .max_blocks = mb, .max_q = max_q,
                      .max_ctx = max_ctx, .pos = d, .slot = d + (slot - pos), .tok_seq = d + (tok_seq - pos),
                      .seq_start = d + (seq_start - pos), .seq_pos0 = d + (seq_pos0 - pos),
                      .block_tables = d + (tables - pos), .seq_hist = NULL, .h_seq_start = seq_start,
                      .h_seq_pos0 = seq_pos0};

    if (fc->eng) { /* hashing: every Engram row of the step is known from here on */
        for (int i = 0; i < S; i++) engram_step_hash(fc->eng, i, &it[i].st->eng, it[i].ids, it[i].n, seq_start[i], T);
        engram_step_upload(fc->eng, b);
    }
    return FORWARD_OK;
}

int forward_ctx_engram_hot(forward_ctx *fc, bool save) { return fc->eng ? engram_step_hot(fc->eng, save) : FORWARD_HOT_NONE; }

bool forward_ctx_prefetches_ahead(const forward_ctx *fc) { return fc->eng && engram_step_prefetches_ahead(fc->eng); }

int forward_prefetch_ahead(forward_ctx *fc, const int32_t *ids, int lead, int n_ahead) {
    return fc->eng ? engram_step_prefetch_ahead(fc->eng, ids, lead, n_ahead) : 0;
}

/* x += a @ w^T (+ bias): the residual stream takes a product, fused where
 * the backend can, else through tmp. Under tensor parallelism a is this
 * rank's share of the input and w its slice: the ranks meet in tp_matmul. */
static void add_product(forward_ctx *fc, const float *a, const weight *w, const float *bias, int T) {
    backend *be = fc->be;
    if (fc->tp) {
        tp_matmul(fc->tp, fc->m->tp.mode, be, fc->tmp, fc->tp_gath, fc->tp_part, a, w, bias, T);
        backend_add(be, fc->x, fc->tmp, (size_t)T * fc->bm->cfg.hidden_size);
    } else {
        backend_add_product(be, fc->x, a, w, bias, fc->tmp, T);
    }
}

/* Uploads the step's ids and the indices of the last tokens of the items
 * that want logits (nl of them, returned); *any_argmax: some want the argmax. */
static int upload_inputs(forward_ctx *fc, const forward_item *it, int S, const batch_desc *b, bool *any_argmax) {
    backend *be = fc->be;
    int32_t *ids = fc->h_i32; /* the descriptor is uploaded: reuse its host copy for the ids */
    for (int i = 0, t = 0; i < S; i++)
        for (int k = 0; k < it[i].n; k++) ids[t++] = it[i].ids[k];
    backend_upload(be, fc->ids, ids, (size_t)b->n_tokens * sizeof(int32_t));
    /* logits at the last token of the sequences that want them */
    int nl = 0;
    *any_argmax = false;
    for (int i = 0; i < S; i++) {
        if (it[i].logits || it[i].argmax || it[i].logits_row) fc->h_last[nl++] = b->h_seq_start[i + 1] - 1;
        *any_argmax |= it[i].argmax != NULL;
    }
    if (nl) backend_upload(be, fc->last, fc->h_last, (size_t)nl * sizeof(int32_t));
    return nl;
}

/* x += o_proj(attention(rope(q), rope(k), v)) on h = rmsnorm(x), this step's
 * K/V rows stored in layer l of the cache first. */
static void attention_block(forward_ctx *fc, const layer_weights *L, kv_cache *kv, int l, const batch_desc *b) {
    const model_config *c = &fc->bm->cfg;
    backend *be = fc->be;
    int T = b->n_tokens, d = c->hidden_size, hd = c->head_dim, nh = c->n_heads, nkv = c->n_kv_heads;
    float eps = c->rms_norm_eps;
    /* (fused ops where the backend has them: backend.h, "fused"; the norm
     * goes into the product, its only reader) */
    if (backend_has(be, matmul_qkv)) {
        backend_norm norm = {L->attn_norm, eps, fc->h};
        backend_matmul_qkv(be, fc->q, fc->k, fc->v, fc->x, &norm, &L->wq, &L->wk, &L->wv, L->bq, L->bk, L->bv, T);
    } else {
        backend_rmsnorm(be, fc->h, fc->x, L->attn_norm, T, d, eps);
        backend_matmul(be, fc->q, fc->h, &L->wq, L->bq, T);
        backend_matmul(be, fc->k, fc->h, &L->wk, L->bk, T);
        backend_matmul(be, fc->v, fc->h, &L->wv, L->bv, T);
    }
    /* the output projection's weights (then the feed-forward's first rows)
     * on their way while rope and attention, which read little, run */
    if (backend_has(be, prefetch)) {
        backend_prefetch(be, &L->wo, T);
        if (!L->moe) backend_prefetch(be, &L->w_gate, T), backend_prefetch(be, &L->w_up, T);
    }
    if (backend_has(be, qk_rope_store)) {
        backend_qk_rope_store(be, fc->q, fc->k, fc->v, kv_cache_k_layer(kv, l), kv_cache_v_layer(kv, l), b, nh, nkv, hd,
                         c->qk_norm ? L->q_norm : NULL, c->qk_norm ? L->k_norm : NULL, eps, fc->inv_freq);
    } else {
        if (c->qk_norm) { /* Qwen3: RMSNorm over each head's vector, before rope */
            backend_rmsnorm(be, fc->q, fc->q, L->q_norm, T * nh, hd, eps);
            backend_rmsnorm(be, fc->k, fc->k, L->k_norm, T * nkv, hd, eps);
        }
        backend_rope(be, fc->q, b->pos, T, nh, hd, fc->inv_freq);
        backend_rope(be, fc->k, b->pos, T, nkv, hd, fc->inv_freq);
        backend_kv_store(be, kv_cache_k_layer(kv, l), kv_cache_v_layer(kv, l), fc->k, fc->v, b, nkv * hd);
    }
    backend_attention(be, fc->att, fc->q, kv_cache_k_layer(kv, l), kv_cache_v_layer(kv, l), b, nh, nkv, hd,
                 c->sliding_window);
    add_product(fc, fc->att, &L->wo, L->bo, T);
}

/* x += down(silu(gate(h)) * up(h)) on h = rmsnorm(x): the SwiGLU feed-forward. */
static void ffn_block(forward_ctx *fc, const layer_weights *L, int T) {
    const model_config *c = &fc->bm->cfg;
    backend *be = fc->be;
    float eps = c->rms_norm_eps;
    if (L->moe) { /* a sparse layer: route each token, run its experts, add (h read twice: not folded) */
        backend_rmsnorm(be, fc->h, fc->x, L->ffn_norm, T, c->hidden_size, eps);
        backend_matmul(be, fc->rlogits, fc->h, &L->moe->router, NULL, T);
        backend_moe_route(be, fc->moe_ids, fc->moe_w, fc->rlogits, fc->ids, L->moe, T);
        if (!fc->ep && backend_has(be, moe_experts_add)) { /* the add in the experts' last kernel */
            backend_moe_experts_add(be, fc->x, fc->h, fc->moe_ids, fc->moe_w, L->moe, T);
            return;
        }
        ep_moe_experts(fc->ep, be, fc->tmp, fc->pairs, fc->h, fc->moe_ids, fc->moe_w, L->moe, T);
        backend_add(be, fc->x, fc->tmp, (size_t)T * c->hidden_size);
        return;
    }
    if (backend_has(be, matmul_ffn) && !fc->tp) { /* the whole block: h stays in the backend's own form */
        backend_norm norm = {L->ffn_norm, eps, fc->h};
        backend_matmul_ffn(be, fc->x, fc->gate, &norm, &L->w_gate, &L->w_up, &L->w_down, L->b_gate, L->b_up,
                           L->b_down, T);
        return;
    }
    if (backend_has(be, matmul_glu)) { /* the norm folded in, as in attention_block */
        backend_norm norm = {L->ffn_norm, eps, fc->h};
        backend_matmul_glu(be, fc->gate, fc->up, fc->x, &norm, &L->w_gate, &L->w_up, L->b_gate, L->b_up, T);
    } else {
        backend_rmsnorm(be, fc->h, fc->x, L->ffn_norm, T, c->hidden_size, eps);
        backend_matmul(be, fc->gate, fc->h, &L->w_gate, L->b_gate, T);
        backend_matmul(be, fc->up, fc->h, &L->w_up, L->b_up, T);
        backend_swiglu(be, fc->gate, fc->up, (size_t)T * (size_t)c->intermediate_size);
    }
    add_product(fc, fc->gate, &L->w_down, L->b_down, T);
}

/* After the pass: each item's logits (host copy), argmax or logits row, in
 * the order of the nl rows the head computed. */
static void read_results(forward_ctx *fc, const forward_item *it, int S, int nl, bool any_argmax) {
    backend *be = fc->be;
    int V = fc->bm->cfg.vocab_size;
    int32_t *next = fc->h_last; /* reused: the indices are uploaded */
    if (any_argmax) backend_download(be, next, fc->next, (size_t)nl * sizeof(int32_t));
    for (int i = 0, j = 0; i < S; i++) {
        if (!it[i].logits && !it[i].argmax && !it[i].logits_row) continue;
        if (it[i].logits_row) *it[i].logits_row = j;
        if (it[i].logits) backend_download(be, it[i].logits, fc->logits + (size_t)j * V, (size_t)V * sizeof(float));
        if (it[i].argmax) *it[i].argmax = next[j];
        j++;
    }
}

int forward_batch(forward_ctx *fc, const forward_item *it, int n_items) {
    const model *bm = fc->bm;
    const model_config *c = &bm->cfg;
    backend *be = fc->be;
    batch_desc b;
    backend_take_failure(be); /* a mark left by a step that failed before it looked */
    if (fc->m->tp.n_ranks > 1 && !fc->tp) return FORWARD_ERR_BATCH; /* a slice runs only in its group */
    /* Decode steps (one token per sequence) of up to STEP_RECORD_MAX_TOKENS
     * sequences may be recorded once and replayed by the backend: launching
     * the ops costs more host time than such a step runs on a GPU. Larger
     * steps hide the launches behind their own work, and their batch changes
     * too often for a recording to pay. With Engram the step is recorded in
     * segments between the layers' rows, which are copied live (how many
     * rows miss the hot-row cache changes every step). A DeepSeek-V4 step
     * too: its ops read every sequence's positions and compressor rings from
     * the step's uploads, so one recording serves any sequences. Prefill
     * steps are never recorded, nor the steps of a rank of a group (its
     * collectives are not recorded: not yet measured). */
    bool record = backend_has(be, step_begin) && !fc->tp && !fc->ep && n_items <= STEP_RECORD_MAX_TOKENS;
    for (int i = 0; i < n_items && record; i++) record = it[i].n == 1;
    double t0 = util_now();
    int rc = plan_step(fc, it, n_items, &b, record);
    if (rc != FORWARD_OK) return rc;
    /* after planning, which lays out this step's snapshots */
    record = record && (!bm->engram || engram_step_recordable(fc->eng, it, n_items));
    if (fc->eng) engram_step_fetch_start(fc->eng, b.n_tokens);
    int T = b.n_tokens, S = n_items, d = c->hidden_size;
    kv_cache *kv = it[0].st->kv;
    bool any_argmax;
    int nl = upload_inputs(fc, it, S, &b, &any_argmax);
    if (fc->dsv4) {
        for (int i = 0; i < S; i++) fc->dsv4_seqs[i] = it[i].st->dsv4;
        dsv4_step_upload(fc->dsv4, fc->dsv4_seqs, &b);
    }
    fc->plan_seconds += util_now() - t0; /* the first op comes next */
    /* every host value the ops below bake in, and the segment */
    engram_step_seg sg = {.key = {(uintptr_t)fc, (uintptr_t)kv, (uint64_t)T, (uint64_t)nl, (uint64_t)b.max_blocks,
                                  any_argmax, 0},
                          .record = record};
    sg.replayed = record && backend_step_begin(be, sg.key, sizeof(sg.key));
    if (sg.replayed && !bm->engram) goto issued;

    if (fc->dsv4) { /* DeepSeek-V4: its own pass and head (forward_dsv4.c) */
        if ((rc = dsv4_forward(fc->dsv4, fc->eng, &sg, &b, kv, fc->ids, it, S, fc->last, nl, fc->logits)))
            return rc;
    } else {
        if (!sg.replayed) backend_embed(be, fc->x, &bm->embed, fc->ids, T);
        for (int l = 0; l < c->n_layers; l++) {
            const layer_weights *L = &bm->layers[l];
            /* Engram: x += engram(x) at the start of the layer; its rows come
             * between two recorded segments */
            if (L->engram) {
                const float *emb;
                if ((rc = engram_step_rows_cut(fc->eng, &sg, L->engram, &b, &emb)) != FORWARD_OK) return rc;
                if (!sg.replayed) engram_step_apply(fc->eng, L->engram, &b, fc->x, emb, it, S);
            }
            if (sg.replayed) continue;
            attention_block(fc, L, kv, l, &b);
            ffn_block(fc, L, T);
        }
        if (nl && !sg.replayed) { /* the head, at the last token of the sequences that want logits */
            backend_gather_f32(be, fc->lastx, fc->x, fc->last, nl, d);
            backend_rmsnorm(be, fc->lastx, fc->lastx, bm->final_norm, nl, d, c->rms_norm_eps);
            backend_matmul(be, fc->logits, fc->lastx, &bm->lm_head, NULL, nl);
        }
    }
    if (nl && any_argmax && !sg.replayed) backend_argmax(be, fc->next, fc->logits, nl, c->vocab_size);
    if (record && !sg.replayed) backend_step_end(be);
issued:
    for (int i = 0; i < S; i++) {
        it[i].st->pos += it[i].n;
        /* the blocks this step filled, registered now that they are written
         * (later steps read them after this one on the backend's stream) */
        kv_cache_seq_commit(kv, &it[i].st->seq, it[i].st->pos);
    }
    if (nl) read_results(fc, it, S, nl, any_argmax);
    return backend_take_failure(be) ? FORWARD_ERR_NOMEM : FORWARD_OK; /* an op's scratch: its output is garbage */
}

float *forward_ctx_logits(forward_ctx *fc) { return fc->logits; }
double forward_ctx_plan_seconds(const forward_ctx *fc) { return fc->plan_seconds; }

int forward_run(forward_ctx *fc, forward_state *s, const int32_t *ids, int n, float *logits, float *gates) {
    if (n <= 0) return FORWARD_OK;
    if (n > s->max_tokens - s->pos) return FORWARD_ERR_FULL;
    int krc = forward_state_reserve(s, n);
    if (krc != FORWARD_OK) return krc;
    int nl = fc->m->engram ? fc->m->engram->n_layers : 0, pos0 = s->pos;
    for (int i = 0; i < n; i += fc->max_tokens) {
        int T = n - i < fc->max_tokens ? n - i : fc->max_tokens, next = i + T;
        /* the next chunk's rows read ahead while this one runs (when the
         * history before it lies in ids: a hint, skipped otherwise) */
        int lead = next < FORWARD_AHEAD_LEAD ? next : FORWARD_AHEAD_LEAD;
        if (next < n && (pos0 == 0 || lead == FORWARD_AHEAD_LEAD))
            forward_prefetch_ahead(fc, ids + next - lead, lead, n - next < fc->max_tokens ? n - next : fc->max_tokens);
        forward_item it = {.st = s, .ids = ids + i, .n = T, .logits = i + T == n ? logits : NULL,
                           .gates = gates ? gates + (size_t)i * nl : NULL};
        int rc = forward_batch(fc, &it, 1);
        if (rc) return rc;
    }
    return FORWARD_OK;
}
