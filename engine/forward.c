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

#include "engine/engram_fetch.h"
#include "engine/engram_module.h"
#include "base/util.h"

const char *forward_status_str(int status) {
    switch (status) {
    case FORWARD_OK: return "ok";
    case FORWARD_ERR_FULL: return "sequence longer than the context";
    case FORWARD_ERR_TOKEN: return "token id out of range";
    case FORWARD_ERR_NOMEM: return "out of memory";
    case FORWARD_ERR_IO: return "an Engram table file could not be read";
    case FORWARD_ERR_KV_FULL: return "no free KV cache blocks";
    case FORWARD_ERR_BATCH: return "step larger than the forward context";
    }
    return "unknown status";
}

struct forward_ctx {
    model *m;                /* the model (host) */
    model *bm;               /* the backend's view of it (weights in backend memory) */
    backend *be;             /* borrowed */
    int max_tokens, max_seqs, max_blocks;
    int n_engram, n_heads_e; /* Engram layers, rows per token and layer */
    float *inv_freq;         /* (hd/2) rope frequencies after scaling */
    /* step scratch, backend memory, for T = max_tokens tokens and S = max_seqs sequences */
    float *x, *h;            /* (T, d) residual stream, normed input */
    float *q, *k, *v, *att;  /* (T, n_heads*hd) (T, kvw) (T, kvw) (T, n_heads*hd) */
    float *gate, *up;        /* (T, ff) */
    float *tmp;              /* (T, max(d, n_heads*hd)) projection outputs */
    float *eout;             /* (T, d) Engram module output */
    float *egates;           /* (T, hc_mult) one layer's gates */
    float *lastx, *logits;   /* (S, d), (S, vocab) */
    int32_t *ids, *last, *next;
    int64_t *rows;           /* (n_engram, T, H) */
    int32_t *desc_i32;       /* pos, slot, tok_seq (T each); seq_start (S+1), seq_pos0 (S), block tables (S, max_blocks) */
    float **seq_hist;        /* (S) */
    engram_scratch es;
    engram_fetch *fetch[ENGRAM_MAX_LAYERS]; /* layers whose table is a host store, else NULL */
    bool rows_on_backend;    /* some layer gathers from a table in backend memory: upload rows */
    bool ahead[ENGRAM_MAX_LAYERS]; /* the layer's store reads NVMe behind a row cache (prefetch thread) */
    bool any_ahead;
    /* host mirrors */
    int32_t *h_i32;          /* like desc_i32 */
    int32_t *h_last;         /* (S) */
    int64_t *h_rows, *h_cids, *h_ids64; /* (n_engram, T, H), (T), (T) */
    float **h_seq_hist;      /* (S) */
    float *h_gates;          /* (T, hc_mult) */
    float *zero_hist;        /* host zeros of one sequence's conv histories */
    size_t hist_floats;      /* one sequence's conv histories: n_engram x ((K-1)*dil, G*d) */
    double engram_seconds;   /* wall time in hashing, gathers and modules */
};

struct forward_state {
    forward_ctx *fc;
    int max_tokens, pos;
    kv_cache *kv;            /* the paged cache holding this sequence's K/V rows */
    kv_cache *own_kv;        /* kv when the state made it itself, else NULL */
    kv_seq seq;              /* block table of positions 0..pos-1 */
    ngram_hash_history hist; /* last max_ngram_size-1 compressed ids */
    float *conv_hist;        /* backend memory: n_engram x ((K-1)*dil, G*d) normed conv inputs */
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

/* A fetcher per Engram layer whose table is a host store; the hot-row cache
 * (--engram-hbm-cache, one size for the model) is shared out in proportion
 * to the tables' bytes. Returns 0, or -1 with a message in err. */
static int create_fetchers(forward_ctx *fc, char *err, size_t errlen) {
    const model_engram *e = fc->m->engram;
    uint64_t bytes[ENGRAM_MAX_LAYERS] = {0}, total = 0, cache = 0;
    for (int li = 0; li < e->n_layers; li++) {
        engram_store *st = e->layers[li].store;
        if (!st) {
            fc->rows_on_backend = true;
            continue;
        }
        engram_store_info in = engram_store_get_info(st);
        bytes[li] = in.header.rows * in.header.row_bytes;
        fc->ahead[li] = in.tier == ENGRAM_STORE_NVME && in.cache_bytes > 0;
        fc->any_ahead |= fc->ahead[li];
        total += bytes[li];
        cache = in.hbm_cache; /* the same in every layer's params */
    }
    for (int li = 0, ch = 0; li < e->n_layers; li++) {
        engram_store *st = e->layers[li].store;
        if (!st) continue;
        uint64_t share = total ? (uint64_t)((unsigned __int128)cache * bytes[li] / total) : 0;
        fc->fetch[li] = engram_fetch_create(fc->be, st, ch++, fc->max_tokens * e->n_heads, share, err, errlen);
        if (!fc->fetch[li]) return -1;
    }
    return 0;
}

void forward_ctx_destroy(forward_ctx *fc) {
    if (!fc) return;
    backend *be = fc->be;
    void *dev[] = {fc->inv_freq, fc->x, fc->h, fc->q, fc->k, fc->v, fc->att, fc->gate, fc->up, fc->tmp,
                   fc->eout, fc->egates, fc->lastx, fc->logits, fc->ids, fc->last, fc->next, fc->rows,
                   fc->desc_i32, fc->seq_hist};
    for (size_t i = 0; i < sizeof(dev) / sizeof(dev[0]); i++) backend_free(be, dev[i]);
    if (fc->n_engram) engram_scratch_free(&fc->es, be);
    for (int li = 0; li < ENGRAM_MAX_LAYERS; li++) engram_fetch_destroy(fc->fetch[li]);
    free(fc->h_i32);
    free(fc->h_last);
    free(fc->h_rows);
    free(fc->h_cids);
    free(fc->h_ids64);
    free(fc->h_seq_hist);
    free(fc->h_gates);
    free(fc->zero_hist);
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
    const model_engram *e = m->engram;
    size_t G = e ? (size_t)e->hc_mult : 1;
    fc->inv_freq = backend_alloc(be, (size_t)c->head_dim / 2 * F);
    fc->x = backend_alloc(be, T * d * F); /* one residual stream: model_load refuses hc_mult > 1 */
    fc->h = backend_alloc(be, T * d * F);
    fc->q = backend_alloc(be, T * qw * F);
    fc->k = backend_alloc(be, T * kvw * F);
    fc->v = backend_alloc(be, T * kvw * F);
    fc->att = backend_alloc(be, T * qw * F);
    fc->gate = backend_alloc(be, T * ff * F);
    fc->up = backend_alloc(be, T * ff * F);
    fc->tmp = backend_alloc(be, T * (qw > d ? qw : d) * F);
    fc->lastx = backend_alloc(be, S * d * F);
    fc->logits = backend_alloc(be, S * (size_t)c->vocab_size * F);
    fc->ids = backend_alloc(be, T * sizeof(int32_t));
    fc->last = backend_alloc(be, S * sizeof(int32_t));
    fc->next = backend_alloc(be, S * sizeof(int32_t));
    fc->h_last = malloc(S * sizeof(int32_t));
    int ok = fc->inv_freq && fc->x && fc->h && fc->q && fc->k && fc->v && fc->att && fc->gate && fc->up &&
             fc->tmp && fc->lastx && fc->logits && fc->ids && fc->last && fc->next && fc->h_last;
    if (ok && e) {
        fc->n_engram = e->n_layers;
        fc->n_heads_e = e->n_heads;
        size_t nr = (size_t)e->n_layers * T * e->n_heads;
        fc->hist_floats = (size_t)e->n_layers * engram_conv_history_floats(e, c->hidden_size);
        fc->rows = backend_alloc(be, nr * sizeof(int64_t));
        fc->eout = backend_alloc(be, T * G * d * F);
        fc->egates = backend_alloc(be, T * G * F);
        fc->seq_hist = backend_alloc(be, S * sizeof(float *));
        fc->h_rows = malloc(nr * sizeof(int64_t));
        fc->h_cids = malloc(T * sizeof(int64_t));
        fc->h_ids64 = malloc(T * sizeof(int64_t));
        fc->h_seq_hist = calloc(S, sizeof(float *));
        fc->h_gates = malloc(T * G * F);
        fc->zero_hist = calloc(fc->hist_floats ? fc->hist_floats : 1, F);
        ok = fc->rows && fc->eout && fc->egates && fc->seq_hist && fc->h_rows && fc->h_cids && fc->h_ids64 &&
             fc->h_seq_hist && fc->h_gates && fc->zero_hist &&
             engram_scratch_init(&fc->es, be, e, c->hidden_size, max_tokens) == 0;
        if (!ok) fc->n_engram = fc->n_engram && fc->es.e ? fc->n_engram : 0;
        if (ok && create_fetchers(fc, err, errlen)) {
            forward_ctx_destroy(fc);
            return FORWARD_ERR_NOMEM;
        }
    }
    /* block tables for 16-token blocks; forward_kv_cache_create widens them for smaller ones */
    if (ok) ok = ctx_alloc_desc(fc, (c->max_position_embeddings + 15) / 16 + 1) == 0;
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

int forward_ctx_max_tokens(const forward_ctx *fc) { return fc->max_tokens; }
backend *forward_ctx_backend(const forward_ctx *fc) { return fc->be; }

int forward_kv_cache_create(forward_ctx *fc, int n_tokens, int block_size, kv_cache **out) {
    const model *m = fc->m;
    kv_cache_params p = kv_cache_default_params();
    if (block_size > 0) p.block_size = block_size;
    p.n_layers = m->cfg.n_layers;
    p.kv_width = m->cfg.n_kv_heads * m->cfg.head_dim;
    p.n_blocks = n_tokens < 1 ? 1 : (n_tokens + p.block_size - 1) / p.block_size;
    p.elem_bytes = backend_kv_elem_bytes(fc->be);
    p.be = fc->be;
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
    if (fc->n_engram && !(s->conv_hist = backend_alloc(fc->be, fc->hist_floats * sizeof(float)))) {
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
    backend_free(s->fc->be, s->conv_hist);
    free(s);
}

int forward_state_pos(const forward_state *s) { return s->pos; }
double forward_ctx_engram_seconds(const forward_ctx *fc) { return fc->engram_seconds; }

int forward_ctx_fetch_stats(forward_ctx *fc, int li, engram_fetch_stats *out) {
    memset(out, 0, sizeof(*out));
    if (li < 0 || li >= fc->n_engram || !fc->fetch[li]) return -1;
    engram_fetch_get_stats(fc->fetch[li], out);
    return 0;
}

void forward_state_reset(forward_state *s) {
    forward_ctx *fc = s->fc;
    s->pos = 0;
    kv_cache_seq_free(s->kv, &s->seq);
    const model_engram *e = fc->m->engram;
    if (!e) return;
    ngram_hash_history_init(e->hash, &s->hist);
    if (s->conv_hist) backend_upload(fc->be, s->conv_hist, fc->zero_hist, fc->hist_floats * sizeof(float));
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
    for (int i = 0; i < n_items; i++) {
        if (it[i].n < 1 || it[i].st->kv != it[0].st->kv || it[i].st->fc != fc) return FORWARD_ERR_BATCH;
        for (int j = 0; j < i; j++)
            if (it[j].st == it[i].st) return FORWARD_ERR_BATCH;
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
    for (int i = 0; i < S; i++) {
        const forward_state *s = it[i].st;
        int nb = (s->pos + it[i].n + bs - 1) / bs;
        memcpy(tables + (size_t)i * mb, s->seq.blocks, (size_t)nb * sizeof(int32_t));
    }
    backend *be = fc->be;
    backend_upload(be, fc->desc_i32, fc->h_i32, desc_ints((size_t)T, (size_t)S, (size_t)mb) * sizeof(int32_t));
    int32_t *d = fc->desc_i32; /* the same offsets as the host copy */
    *b = (batch_desc){.n_seqs = S, .n_tokens = T, .block_size = bs, .max_blocks = mb, .max_q = max_q,
                      .max_ctx = max_ctx, .pos = d, .slot = d + (slot - pos), .tok_seq = d + (tok_seq - pos),
                      .seq_start = d + (seq_start - pos), .seq_pos0 = d + (seq_pos0 - pos),
                      .block_tables = d + (tables - pos), .seq_hist = fc->seq_hist, .h_seq_start = seq_start,
                      .h_seq_pos0 = seq_pos0};

    if (e) { /* hashing: every Engram row of the step is known from here on */
        int H = e->n_heads;
        for (int i = 0; i < S; i++) {
            forward_state *s = it[i].st;
            double t0 = util_now();
            int a = seq_start[i], n = it[i].n;
            for (int k = 0; k < n; k++) fc->h_ids64[k] = it[i].ids[k];
            ngram_hash_compress_ids(e->lookup, e->lookup_n, fc->h_ids64, (size_t)n, fc->h_cids);
            for (int li = 0; li < e->n_layers; li++)
                ngram_hash_layer_rows(e->hash, li, &s->hist, fc->h_cids, (size_t)n,
                                      fc->h_rows + ((size_t)li * T + a) * H);
            ngram_hash_history_push(e->hash, &s->hist, fc->h_cids, (size_t)n);
            fc->h_seq_hist[i] = s->conv_hist;
            fc->engram_seconds += util_now() - t0;
        }
        if (fc->rows_on_backend) backend_upload(be, fc->rows, fc->h_rows, (size_t)e->n_layers * T * H * sizeof(int64_t));
        backend_upload(be, fc->seq_hist, fc->h_seq_hist, (size_t)S * sizeof(float *));
    }
    return FORWARD_OK;
}

bool forward_ctx_prefetches_ahead(const forward_ctx *fc) { return fc->any_ahead; }

_Static_assert(FORWARD_AHEAD_LEAD == NGRAM_HASH_MAX_NGRAM - 1, "the hash history's length");

int forward_prefetch_ahead(forward_ctx *fc, const int32_t *ids, int lead, int n_ahead) {
    const model_engram *e = fc->m->engram;
    if (!fc->any_ahead || lead < 0 || lead > FORWARD_AHEAD_LEAD || n_ahead <= 0) return 0;
    /* the step's host scratch: free between steps (the fetchers borrow h_rows only until their finish) */
    int H = e->n_heads, T = fc->max_tokens;
    int64_t *ids64 = fc->h_ids64, *cids = fc->h_cids, *rows = fc->h_rows;
    /* the history at the first position: it keeps the last max_ngram_size-1
     * ids, so the `lead` tokens before it give the same state as the whole prefix */
    ngram_hash_history hist;
    ngram_hash_history_init(e->hash, &hist);
    int64_t lead64[FORWARD_AHEAD_LEAD], lead_c[FORWARD_AHEAD_LEAD];
    for (int k = 0; k < lead; k++) lead64[k] = ids[k];
    ngram_hash_compress_ids(e->lookup, e->lookup_n, lead64, (size_t)lead, lead_c);
    ngram_hash_history_push(e->hash, &hist, lead_c, (size_t)lead);
    for (int a = lead; a < lead + n_ahead; a += T) {
        int n = lead + n_ahead - a < T ? lead + n_ahead - a : T;
        for (int k = 0; k < n; k++) ids64[k] = ids[a + k];
        ngram_hash_compress_ids(e->lookup, e->lookup_n, ids64, (size_t)n, cids);
        for (int li = 0; li < e->n_layers; li++) {
            if (!fc->ahead[li]) continue;
            ngram_hash_layer_rows(e->hash, li, &hist, cids, (size_t)n, rows);
            int m = fc->fetch[li] ? engram_fetch_drop_cached(fc->fetch[li], rows, n * H) : n * H;
            engram_store_prefetch(e->layers[li].store, rows, (size_t)m);
        }
        ngram_hash_history_push(e->hash, &hist, cids, (size_t)n);
    }
    return n_ahead;
}

/* x += a @ w^T (+ bias): the residual stream takes a product, fused where
 * the backend can, else through tmp. */
static void add_product(forward_ctx *fc, const float *a, const weight *w, const float *bias, int T) {
    backend *be = fc->be;
    if (backend_has(be, matmul_add)) {
        backend_matmul_add(be, fc->x, a, w, bias, T);
    } else {
        backend_matmul(be, fc->tmp, a, w, bias, T);
        backend_add(be, fc->x, fc->tmp, (size_t)T * w->rows);
    }
}

/* After a failed Engram layer: the other layers' fetches were started; end
 * them so the next step starts clean (a failed one issues nothing; the
 * others issue their copies, which keeps their hot-row caches whole). */
static int finish_fetches(forward_ctx *fc, int rc) {
    for (int li = 0; li < fc->n_engram; li++)
        if (fc->fetch[li]) engram_fetch_finish(fc->fetch[li], fc->es.e);
    return rc;
}

int forward_batch(forward_ctx *fc, const forward_item *it, int n_items) {
    const model *bm = fc->bm;
    const model_engram *e = bm->engram;
    const model_config *c = &bm->cfg;
    backend *be = fc->be;
    batch_desc b;
    /* Decode steps (one token per sequence) of up to STEP_RECORD_MAX_TOKENS
     * sequences, of a model without Engram (whose layers do host work), may be
     * recorded once and replayed by the backend: launching the ops costs more
     * host time than such a step runs on a GPU. Larger steps hide the
     * launches behind their own work, and their batch changes too often for
     * a recording to pay. */
    bool record = backend_has(be, step_begin) && !e && n_items <= STEP_RECORD_MAX_TOKENS;
    for (int i = 0; i < n_items && record; i++) record = it[i].n == 1;
    int rc = plan_step(fc, it, n_items, &b, record);
    if (rc != FORWARD_OK) return rc;
    for (int li = 0; e && li < e->n_layers; li++) /* the host stores' rows, gathered beside what follows */
        if (fc->fetch[li])
            engram_fetch_start(fc->fetch[li], fc->h_rows + (size_t)li * b.n_tokens * e->n_heads,
                               b.n_tokens * e->n_heads);
    int T = b.n_tokens, S = n_items;
    int d = c->hidden_size, hd = c->head_dim, nh = c->n_heads, nkv = c->n_kv_heads;
    size_t ff = (size_t)c->intermediate_size;
    float eps = c->rms_norm_eps;
    kv_cache *kv = it[0].st->kv;

    int32_t *ids = fc->h_i32; /* the descriptor is uploaded: reuse its host copy for the ids */
    for (int i = 0, t = 0; i < S; i++)
        for (int k = 0; k < it[i].n; k++) ids[t++] = it[i].ids[k];
    backend_upload(be, fc->ids, ids, (size_t)T * sizeof(int32_t));
    /* logits at the last token of the sequences that want them */
    int nl = 0;
    bool any_argmax = false;
    for (int i = 0; i < S; i++) {
        if (it[i].logits || it[i].argmax || it[i].logits_row) fc->h_last[nl++] = b.h_seq_start[i + 1] - 1;
        any_argmax |= it[i].argmax != NULL;
    }
    if (nl) backend_upload(be, fc->last, fc->h_last, (size_t)nl * sizeof(int32_t));
    if (record) { /* every host value the ops below bake in */
        uint64_t key[6] = {(uintptr_t)fc, (uintptr_t)kv, (uint64_t)T, (uint64_t)nl, (uint64_t)b.max_blocks,
                           any_argmax};
        if (backend_step_begin(be, key, sizeof(key))) goto issued;
    }

    backend_embed(be, fc->x, &bm->embed, fc->ids, T);
    for (int l = 0; l < c->n_layers; l++) {
        const layer_weights *L = &bm->layers[l];

        /* Engram: h = h + engram(h) at the start of the layer */
        if (L->engram) {
            const engram_weights *w = L->engram;
            int G = e->hc_mult;
            size_t off = (size_t)w->li * T * e->n_heads;
            bool want = false;
            for (int i = 0; i < S; i++) want |= it[i].gates != NULL;
            double t0 = util_now();
            /* The rows: a host store's were gathered (engram_fetch_start,
             * after planning) while this thread issued the layers before this
             * one and the backend ran them; now they are copied and decoded. */
            if (fc->fetch[w->li]) {
                if (engram_fetch_finish(fc->fetch[w->li], fc->es.e)) return finish_fetches(fc, FORWARD_ERR_IO);
            } else {
                backend_gather_rows(be, fc->es.e, &w->table, fc->rows + off, T, e->n_heads);
            }
            engram_module_run(be, e, w, d, &b, fc->x, fc->es.e, (size_t)w->li * (fc->hist_floats / e->n_layers),
                              &fc->es, fc->eout, want ? fc->egates : NULL);
            backend_add(be, fc->x, fc->eout, (size_t)T * d);
            fc->engram_seconds += util_now() - t0;
            if (want) {
                backend_download(be, fc->h_gates, fc->egates, (size_t)T * G * sizeof(float));
                for (int i = 0; i < S; i++) {
                    if (!it[i].gates) continue;
                    for (int k = 0; k < it[i].n; k++) {
                        const float *g = fc->h_gates + (size_t)(b.h_seq_start[i] + k) * G;
                        float sum = 0.0f;
                        for (int j = 0; j < G; j++) sum += g[j];
                        it[i].gates[(size_t)k * e->n_layers + w->li] = sum / (float)G;
                    }
                }
            }
        }

        /* attention block */
        /* (fused ops where the backend has them: backend.h, "fused") */
        backend_rmsnorm(be, fc->h, fc->x, L->attn_norm, T, d, eps);
        if (backend_has(be, matmul_qkv)) {
            backend_matmul_qkv(be, fc->q, fc->k, fc->v, fc->h, &L->wq, &L->wk, &L->wv, L->bq, L->bk, L->bv, T);
        } else {
            backend_matmul(be, fc->q, fc->h, &L->wq, L->bq, T);
            backend_matmul(be, fc->k, fc->h, &L->wk, L->bk, T);
            backend_matmul(be, fc->v, fc->h, &L->wv, L->bv, T);
        }
        if (backend_has(be, qk_rope_store)) {
            backend_qk_rope_store(be, fc->q, fc->k, fc->v, kv_cache_k_layer(kv, l), kv_cache_v_layer(kv, l), &b, nh, nkv, hd,
                             c->qk_norm ? L->q_norm : NULL, c->qk_norm ? L->k_norm : NULL, eps, fc->inv_freq);
        } else {
            if (c->qk_norm) { /* Qwen3: RMSNorm over each head's vector, before rope */
                backend_rmsnorm(be, fc->q, fc->q, L->q_norm, T * nh, hd, eps);
                backend_rmsnorm(be, fc->k, fc->k, L->k_norm, T * nkv, hd, eps);
            }
            backend_rope(be, fc->q, b.pos, T, nh, hd, fc->inv_freq);
            backend_rope(be, fc->k, b.pos, T, nkv, hd, fc->inv_freq);
            backend_kv_store(be, kv_cache_k_layer(kv, l), kv_cache_v_layer(kv, l), fc->k, fc->v, &b, nkv * hd);
        }
        backend_attention(be, fc->att, fc->q, kv_cache_k_layer(kv, l), kv_cache_v_layer(kv, l), &b, nh, nkv, hd,
                     c->sliding_window);
        add_product(fc, fc->att, &L->wo, L->bo, T);

        /* feed-forward block (SwiGLU) */
        backend_rmsnorm(be, fc->h, fc->x, L->ffn_norm, T, d, eps);
        if (backend_has(be, matmul_glu)) {
            backend_matmul_glu(be, fc->gate, fc->up, fc->h, &L->w_gate, &L->w_up, L->b_gate, L->b_up, T);
        } else {
            backend_matmul(be, fc->gate, fc->h, &L->w_gate, L->b_gate, T);
            backend_matmul(be, fc->up, fc->h, &L->w_up, L->b_up, T);
            backend_swiglu(be, fc->gate, fc->up, (size_t)T * ff);
        }
        add_product(fc, fc->gate, &L->w_down, L->b_down, T);
    }
    if (nl) {
        backend_gather_f32(be, fc->lastx, fc->x, fc->last, nl, d);
        backend_rmsnorm(be, fc->lastx, fc->lastx, bm->final_norm, nl, d, eps);
        backend_matmul(be, fc->logits, fc->lastx, &bm->lm_head, NULL, nl);
        if (any_argmax) backend_argmax(be, fc->next, fc->logits, nl, c->vocab_size);
    }
    if (record) backend_step_end(be);
issued:
    for (int i = 0; i < S; i++) it[i].st->pos += it[i].n;
    if (nl == 0) return FORWARD_OK;
    int32_t *next = fc->h_last; /* reused: the indices are uploaded */
    if (any_argmax) backend_download(be, next, fc->next, (size_t)nl * sizeof(int32_t));
    for (int i = 0, j = 0; i < S; i++) {
        if (!it[i].logits && !it[i].argmax && !it[i].logits_row) continue;
        if (it[i].logits_row) *it[i].logits_row = j;
        if (it[i].logits)
            backend_download(be, it[i].logits, fc->logits + (size_t)j * c->vocab_size, (size_t)c->vocab_size * sizeof(float));
        if (it[i].argmax) *it[i].argmax = next[j];
        j++;
    }
    return FORWARD_OK;
}

float *forward_ctx_logits(forward_ctx *fc) { return fc->logits; }

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
