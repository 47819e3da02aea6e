/* The Engram work of a forward step (see engram_step.h). A step's tokens are
 * hashed once: while the step is planned, each sequence's ids are compressed
 * and its history moves on; the rows of a host store's layer are then made
 * from those (and each sequence's history as it was before the step) on that
 * layer's fetcher thread, first thing in its job, so the thread that issues
 * the layers never waits for them between two passes. The fetchers gather the
 * rows beside the layers before their own, and the layer only waits for the
 * copy, runs the module and adds it to the residual stream. A layer whose
 * table is in backend memory gets its rows hashed while planning (they are
 * uploaded before the pass). The lookahead hashes later steps' tokens through
 * the same function to warm the NVMe stores' row caches; it changes no
 * result. */
#include "engine/engram_step.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engram_module.h"
#include "base/util.h"

struct engram_step {
    const model *m;          /* the host model: hashing, stores (borrowed) */
    const model *bm;         /* its backend view: module weights (borrowed) */
    backend *be;
    int max_tokens;
    int n_engram, n_heads;   /* Engram layers, rows per token and layer */
    /* step scratch, backend memory, for T = max_tokens tokens and S = max_seqs sequences */
    float *eout;             /* (T, d) module output */
    float *egates;           /* (T, hc_mult) one layer's gates */
    int64_t *rows;           /* (n_engram, T, H) */
    float **seq_hist;        /* (S) */
    engram_scratch scratch;
    bool scratch_ok;         /* scratch was made (engram_scratch_free then) */
    engram_fetch *fetch[ENGRAM_MAX_LAYERS]; /* layers whose table is a host store, else NULL */
    bool rows_on_backend;    /* some layer gathers from a table in backend memory: upload rows */
    bool ahead[ENGRAM_MAX_LAYERS]; /* the layer's store reads NVMe behind a row cache (prefetch thread) */
    bool any_ahead;
    bool hbm_warmed[ENGRAM_MAX_LAYERS]; /* the fetcher's cache got its store's hot-row list */
    /* the step's hashing, as planned (engram_step_hash), read by the fetchers' fills during the pass */
    int64_t *s_cids;            /* (T) the step's compressed ids */
    ngram_hash_history *s_hist; /* (S) each sequence's history before the step */
    int32_t *s_start;           /* (S + 1) each sequence's first token in the step, then T */
    int s_seqs;                 /* sequences hashed this step */
    bool fetch_all;             /* every layer has a fetcher: nothing to hash while planning */
    struct engram_step_fill { engram_step *es; int li; } fill[ENGRAM_MAX_LAYERS]; /* the fills' contexts */
    double hash_t0;             /* when the step's hashing began */
    /* host mirrors */
    int64_t *h_rows, *h_cids, *h_ids64; /* (n_engram, T, H), (T), (T) */
    float **h_seq_hist;      /* (S) */
    float *h_gates;          /* (T, hc_mult) */
    float *zero_hist;        /* host zeros of one sequence's conv histories */
    size_t hist_floats;      /* one sequence's conv histories: n_engram x ((K-1)*dil, G*d) */
    const engram_step_snap *snaps; /* (n_snaps) this step's block-boundary snapshots (borrowed) */
    int n_snaps;
    double seconds;          /* wall time in hashing, gathers and modules */
};

_Static_assert(FORWARD_AHEAD_LEAD == NGRAM_HASH_MAX_NGRAM - 1, "the hash history's length");

/* ---- context ---- */

/* A fetcher per Engram layer whose table is a host store; the hot-row cache
 * (--engram-hbm-cache, one size for the model) is shared out in proportion
 * to the tables' bytes. Returns 0, or -1 with a message in err. */
static int create_fetchers(engram_step *es, char *err, size_t errlen) {
    const model_engram *e = es->m->engram;
    uint64_t bytes[ENGRAM_MAX_LAYERS] = {0}, total = 0, cache = 0;
    for (int li = 0; li < e->n_layers; li++) {
        engram_store *st = e->layers[li].store;
        if (!st) {
            es->rows_on_backend = true;
            continue;
        }
        engram_store_info in = engram_store_get_info(st);
        bytes[li] = in.header.rows * in.header.row_bytes;
        es->ahead[li] = in.tier == ENGRAM_STORE_NVME && in.cache_bytes > 0;
        es->any_ahead |= es->ahead[li];
        total += bytes[li];
        cache = in.hbm_cache; /* the same in every layer's params */
    }
    for (int li = 0, ch = 0; li < e->n_layers; li++) {
        engram_store *st = e->layers[li].store;
        if (!st) continue;
        uint64_t share = total ? (uint64_t)((unsigned __int128)cache * bytes[li] / total) : 0;
        es->fetch[li] = engram_fetch_create(es->be, st, ch++, es->max_tokens * e->n_heads, share, err, errlen);
        if (!es->fetch[li]) return -1;
    }
    return 0;
}

void engram_step_destroy(engram_step *es) {
    if (!es) return;
    backend *be = es->be;
    backend_free(be, es->eout);
    backend_free(be, es->egates);
    backend_free(be, es->rows);
    backend_free(be, es->seq_hist);
    if (es->scratch_ok) engram_scratch_free(&es->scratch, be);
    for (int li = 0; li < ENGRAM_MAX_LAYERS; li++) engram_fetch_destroy(es->fetch[li]);
    free(es->s_cids);
    free(es->s_hist);
    free(es->s_start);
    free(es->h_rows);
    free(es->h_cids);
    free(es->h_ids64);
    free(es->h_seq_hist);
    free(es->h_gates);
    free(es->zero_hist);
    free(es);
}

int engram_step_create(const model *m, const model *bm, backend *be, int max_tokens, int max_seqs,
                       engram_step **out, char *err, size_t errlen) {
    const model_engram *e = m->engram;
    const model_config *c = &m->cfg;
    *out = NULL;
    engram_step *es = calloc(1, sizeof(*es));
    if (!es) {
        snprintf(err, errlen, "out of %s memory for a step of %d tokens", backend_name(be), max_tokens);
        return FORWARD_ERR_NOMEM;
    }
    es->m = m;
    es->bm = bm;
    es->be = be;
    es->max_tokens = max_tokens;
    es->n_engram = e->n_layers;
    es->n_heads = e->n_heads;
    size_t T = (size_t)max_tokens, S = (size_t)max_seqs, F = sizeof(float), d = (size_t)c->hidden_size;
    size_t G = (size_t)e->hc_mult, nr = (size_t)e->n_layers * T * e->n_heads;
    es->hist_floats = (size_t)e->n_layers * engram_conv_history_floats(e, c->hidden_size);
    es->rows = backend_alloc(be, nr * sizeof(int64_t));
    es->eout = backend_alloc(be, T * G * d * F);
    es->egates = backend_alloc(be, T * G * F);
    es->seq_hist = backend_alloc(be, S * sizeof(float *));
    es->h_rows = malloc(nr * sizeof(int64_t));
    es->h_cids = malloc(T * sizeof(int64_t));
    es->h_ids64 = malloc(T * sizeof(int64_t));
    es->h_seq_hist = calloc(S, sizeof(float *));
    es->s_cids = malloc(T * sizeof(int64_t));
    es->s_hist = malloc(S * sizeof(ngram_hash_history));
    es->s_start = malloc((S + 1) * sizeof(int32_t));
    es->h_gates = malloc(T * G * F);
    es->zero_hist = calloc(es->hist_floats ? es->hist_floats : 1, F);
    bool ok = es->rows && es->eout && es->egates && es->seq_hist && es->h_rows && es->h_cids && es->h_ids64 &&
              es->h_seq_hist && es->h_gates && es->zero_hist && es->s_cids && es->s_hist && es->s_start &&
              (es->scratch_ok = engram_scratch_init(&es->scratch, be, e, c->hidden_size, max_tokens) == 0);
    if (!ok) snprintf(err, errlen, "out of %s memory for a step of %d tokens", backend_name(be), max_tokens);
    if (!ok || create_fetchers(es, err, errlen)) {
        engram_step_destroy(es);
        return FORWARD_ERR_NOMEM;
    }
    es->fetch_all = true;
    for (int li = 0; li < e->n_layers; li++) {
        es->fill[li] = (struct engram_step_fill){es, li};
        es->fetch_all &= es->fetch[li] != NULL;
    }
    *out = es;
    return FORWARD_OK;
}

bool engram_step_prefetches_ahead(const engram_step *es) { return es->any_ahead; }
double engram_step_seconds(const engram_step *es) { return es->seconds; }

int engram_step_fetch_stats(engram_step *es, int li, engram_fetch_stats *out) {
    memset(out, 0, sizeof(*out));
    if (li < 0 || li >= es->n_engram || !es->fetch[li]) return -1;
    engram_fetch_get_stats(es->fetch[li], out);
    return 0;
}

size_t engram_step_tier_overlap(engram_step *es) {
    size_t n = 0;
    for (int li = 0; li < es->n_engram; li++)
        if (es->fetch[li]) n += engram_fetch_tier_overlap(es->fetch[li]);
    return n;
}

/* ---- sequences ---- */

int engram_step_seq_init(engram_step *es, engram_step_seq *q) {
    q->conv_hist = backend_alloc(es->be, es->hist_floats * sizeof(float));
    return q->conv_hist ? 0 : -1;
}

void engram_step_seq_reset(engram_step *es, engram_step_seq *q) {
    ngram_hash_history_init(es->m->engram->hash, &q->hist);
    if (q->conv_hist) backend_upload(es->be, q->conv_hist, es->zero_hist, es->hist_floats * sizeof(float));
}

void engram_step_seq_free(engram_step *es, engram_step_seq *q) {
    if (es) backend_free(es->be, q->conv_hist);
    q->conv_hist = NULL;
}

/* ---- prefix caching: snapshots of the conv histories ---- */

static void hash_tokens(engram_step *es, ngram_hash_history *hist, const int32_t *ids, int n, int64_t *rows,
                        size_t layer_stride, const bool *only);

size_t engram_step_seq_bytes(const engram_step *es) { return es->hist_floats * sizeof(float); }

void engram_step_set_snaps(engram_step *es, const engram_step_snap *snaps, int n) {
    es->snaps = snaps;
    es->n_snaps = n;
}

/* Layer w's part of each snapshot of the step. The history at position
 * pos0 + at is the conv inputs of the R positions before it: the last R - at
 * rows of the history before the step (`before`: called before the module
 * runs, which overwrites it), then the first min(at, R) of those that end at
 * `at` among the step's inputs (after: the module left them in scratch.cin). */
static void take_snaps(engram_step *es, const engram_weights *w, const batch_desc *b, bool before) {
    const model_engram *e = es->bm->engram;
    backend *be = es->be;
    size_t C = (size_t)e->hc_mult * es->bm->cfg.hidden_size, per = es->hist_floats / e->n_layers;
    int R = (int)(per / C);
    for (int k = 0; k < es->n_snaps && R > 0; k++) {
        const engram_step_snap *sn = &es->snaps[k];
        float *dst = sn->dst + (size_t)w->li * per;
        int old = R - sn->at; /* rows from the history before the step */
        if (before && old > 0)
            backend_copy2d(be, dst, C, es->h_seq_hist[sn->seq] + (size_t)w->li * per + (size_t)sn->at * C, C, C,
                           (size_t)old);
        if (!before) {
            int n = sn->at < R ? sn->at : R, a = b->h_seq_start[sn->seq] + sn->at - n;
            backend_copy2d(be, dst + (size_t)(R - n) * C, C, es->scratch.cin + (size_t)a * C, C, C, (size_t)n);
        }
    }
}

void engram_step_seq_resume(engram_step *es, engram_step_seq *q, const int32_t *ids, int lead, const float *snap) {
    const model_engram *e = es->m->engram;
    ngram_hash_history_init(e->hash, &q->hist);
    for (int a = 0; a < lead; a += es->max_tokens) /* the history keeps the last max_ngram_size-1 ids */
        hash_tokens(es, &q->hist, ids + a, lead - a < es->max_tokens ? lead - a : es->max_tokens, NULL, 0, NULL);
    if (es->hist_floats) backend_copy2d(es->be, q->conv_hist, es->hist_floats, snap, es->hist_floats, es->hist_floats, 1);
}

/* ---- hashing ---- */

/* The one hashing path, for a step's tokens and the lookahead's alike: the
 * compressed ids of ids[0..n) (n <= max_tokens), then, unless rows is NULL,
 * the rows of every Engram layer (of those `only` marks, when not NULL) at
 * rows + li * layer_stride, (n, H) each; then the ids join *hist. */
static void hash_tokens(engram_step *es, ngram_hash_history *hist, const int32_t *ids, int n, int64_t *rows,
                        size_t layer_stride, const bool *only) {
    const model_engram *e = es->m->engram;
    for (int k = 0; k < n; k++) es->h_ids64[k] = ids[k];
    ngram_hash_compress_ids(e->lookup, e->lookup_n, es->h_ids64, (size_t)n, es->h_cids);
    for (int li = 0; rows && li < e->n_layers; li++)
        if (!only || only[li])
            ngram_hash_layer_rows(e->hash, li, hist, es->h_cids, (size_t)n, rows + (size_t)li * layer_stride);
    ngram_hash_history_push(e->hash, hist, es->h_cids, (size_t)n);
}

/* Planning's part of the hashing, per sequence: the compressed ids (ids
 * were checked against the lookup by plan_step: lookup[id] is
 * ngram_hash_compress_ids's result), the history before the step kept for
 * the fetchers' fills, then moved on; the rows of a layer without a fetcher
 * made here. Sequences come in step order (a = the tokens before). */
void engram_step_hash(engram_step *es, int i, engram_step_seq *q, const int32_t *ids, int n, int a, int T) {
    const model_engram *e = es->m->engram;
    if (i == 0) es->hash_t0 = util_now();
    int64_t *cids = es->s_cids + a;
    for (int k = 0; k < n; k++) cids[k] = e->lookup[ids[k]];
    /* the fills read the last max_ngram_size-1 ids only */
    memcpy(es->s_hist[i].ids, q->hist.ids, (size_t)(ngram_hash_max_ngram_size(e->hash) - 1) * sizeof(int64_t));
    es->s_start[i] = a;
    es->s_start[i + 1] = a + n;
    es->s_seqs = i + 1;
    for (int li = 0; !es->fetch_all && li < e->n_layers; li++)
        if (!es->fetch[li])
            ngram_hash_layer_rows(e->hash, li, &q->hist, cids, (size_t)n,
                                  es->h_rows + ((size_t)li * T + (size_t)a) * es->n_heads);
    ngram_hash_history_push(e->hash, &q->hist, cids, (size_t)n);
    es->h_seq_hist[i] = q->conv_hist;
}

/* engram_fetch_fill_fn, on layer li's fetcher thread: the layer's rows of
 * the step as planned, (T, H). */
static void fill_rows(void *ctx, int64_t *rows) {
    const struct engram_step_fill *fl = ctx;
    const engram_step *es = fl->es;
    const ngram_hash *h = es->m->engram->hash;
    for (int i = 0; i < es->s_seqs; i++) {
        int a = es->s_start[i];
        ngram_hash_layer_rows(h, fl->li, &es->s_hist[i], es->s_cids + a, (size_t)(es->s_start[i + 1] - a),
                              rows + (size_t)a * es->n_heads);
    }
}

void engram_step_upload(engram_step *es, batch_desc *b) {
    backend *be = es->be;
    size_t T = (size_t)b->n_tokens;
    es->seconds += util_now() - es->hash_t0; /* the step's hashing, as planned */
    if (es->rows_on_backend) backend_upload(be, es->rows, es->h_rows, (size_t)es->n_engram * T * es->n_heads * sizeof(int64_t));
    backend_upload(be, es->seq_hist, es->h_seq_hist, (size_t)b->n_seqs * sizeof(float *));
    b->seq_hist = es->seq_hist;
}

int engram_step_prefetch_ahead(engram_step *es, const int32_t *ids, int lead, int n_ahead) {
    const model_engram *e = es->m->engram;
    if (!es->any_ahead || lead < 0 || lead > FORWARD_AHEAD_LEAD || n_ahead <= 0) return 0;
    /* the step's host scratch: free between steps (the fetchers borrow h_rows only until their finish) */
    int H = es->n_heads, T = es->max_tokens;
    /* the history at the first position: it keeps the last max_ngram_size-1
     * ids, so the `lead` tokens before it give the same state as the whole prefix */
    ngram_hash_history hist;
    ngram_hash_history_init(e->hash, &hist);
    for (int a = 0; a < lead; a += T) hash_tokens(es, &hist, ids + a, lead - a < T ? lead - a : T, NULL, 0, NULL);
    for (int a = lead; a < lead + n_ahead; a += T) {
        int n = lead + n_ahead - a < T ? lead + n_ahead - a : T;
        hash_tokens(es, &hist, ids + a, n, es->h_rows, (size_t)n * H, es->ahead);
        for (int li = 0; li < e->n_layers; li++) {
            if (!es->ahead[li]) continue;
            int64_t *rows = es->h_rows + (size_t)li * n * H;
            int m = es->fetch[li] ? engram_fetch_drop_cached(es->fetch[li], rows, n * H) : n * H;
            engram_store_prefetch(e->layers[li].store, rows, (size_t)m);
        }
    }
    return n_ahead;
}

/* ---- warm restarts ---- */

int engram_step_hot(engram_step *es, bool save) {
    const model_engram *e = es->m->engram;
    int state = FORWARD_HOT_NONE;
    for (int li = 0; li < e->n_layers; li++) {
        engram_store *st = e->layers[li].store;
        engram_fetch *f = es->fetch[li];
        if (!st || !engram_store_hot_path(st)) continue;
        if (engram_store_warming(st)) { /* the file must not be replaced by a half-warm cache's */
            state = FORWARD_HOT_WARMING;
            continue;
        }
        if (state == FORWARD_HOT_NONE) state = FORWARD_HOT_READY;
        if (f && !es->hbm_warmed[li]) { /* the store has the rows in DRAM now: up they go */
            const int64_t *up;
            size_t n = engram_store_hot_upper(st, &up);
            double t0 = util_now();
            int rc = n ? engram_fetch_warm(f, up, n, es->scratch.e) : 0;
            if (n)
                log_info("Engram layer %d: %zu hot rows into the backend's cache in %.2f s%s", e->layers[li].layer_id,
                         n < engram_fetch_cache_slots(f) ? n : (size_t)engram_fetch_cache_slots(f),
                         util_now() - t0, rc ? " (a read failed: the rest stays cold)" : "");
            es->hbm_warmed[li] = true;
        }
        if (!save) continue;
        uint32_t C = f ? engram_fetch_cache_slots(f) : 0;
        int64_t *rows = malloc((C ? C : 1) * sizeof(int64_t));
        uint32_t *counts = malloc((C ? C : 1) * sizeof(uint32_t));
        char err[512] = "out of memory";
        size_t n = rows && counts && f ? engram_fetch_hot_rows(f, rows, counts) : 0;
        if (!rows || !counts || engram_store_hot_save(st, rows, counts, n, err, sizeof(err)))
            log_warn("Engram hot-row file not written: %s", err);
        free(rows);
        free(counts);
    }
    return state;
}

/* ---- the layers ---- */

void engram_step_fetch_start(engram_step *es, int T) {
    for (int li = 0; li < es->n_engram; li++) /* the host stores' rows, made and gathered beside what follows */
        if (es->fetch[li])
            engram_fetch_start_fill(es->fetch[li], es->h_rows + (size_t)li * T * es->n_heads, T * es->n_heads,
                                    fill_rows, &es->fill[li]);
}

/* After a failed Engram layer: the other layers' fetches were started; end
 * them so the next step starts clean (a failed one issues nothing; the
 * others issue their copies, which keeps their hot-row caches whole). */
static int finish_fetches(engram_step *es, int rc) {
    for (int li = 0; li < es->n_engram; li++)
        if (es->fetch[li]) engram_fetch_finish(es->fetch[li], es->scratch.e);
    return rc;
}

/* Each item's gate of this layer per token: the mean over the hc_mult streams. */
static void collect_gates(engram_step *es, const engram_weights *w, const batch_desc *b, const forward_item *it,
                          int n_items) {
    const model_engram *e = es->bm->engram;
    int G = e->hc_mult;
    backend_download(es->be, es->h_gates, es->egates, (size_t)b->n_tokens * G * sizeof(float));
    for (int i = 0; i < n_items; i++) {
        if (!it[i].gates) continue;
        for (int k = 0; k < it[i].n; k++) {
            const float *g = es->h_gates + (size_t)(b->h_seq_start[i] + k) * G;
            float sum = 0.0f;
            for (int j = 0; j < G; j++) sum += g[j];
            it[i].gates[(size_t)k * e->n_layers + w->li] = sum / (float)G;
        }
    }
}

int engram_step_rows(engram_step *es, const engram_weights *w, const batch_desc *b, const float **emb) {
    const model_engram *e = es->bm->engram;
    int T = b->n_tokens;
    double t0 = util_now();
    /* The rows: a host store's were gathered (engram_fetch_start, after
     * planning) while this thread issued the layers before this one and the
     * backend ran them; now they are copied and decoded. */
    if (es->fetch[w->li]) {
        if (engram_fetch_finish(es->fetch[w->li], es->scratch.e)) return finish_fetches(es, FORWARD_ERR_IO);
    } else {
        backend_gather_rows(es->be, es->scratch.e, &w->table, es->rows + (size_t)w->li * T * e->n_heads, T,
                            e->n_heads);
    }
    es->seconds += util_now() - t0;
    *emb = es->scratch.e;
    return FORWARD_OK;
}

int engram_step_rows_cut(engram_step *es, engram_step_seg *sg, const engram_weights *w, const batch_desc *b,
                         const float **emb) {
    if (sg->record && !sg->replayed) backend_step_end(es->be);
    int rc = engram_step_rows(es, w, b, emb);
    if (rc != FORWARD_OK) return rc;
    sg->key[sizeof(sg->key) / sizeof(sg->key[0]) - 1]++;
    sg->replayed = sg->record && backend_step_begin(es->be, sg->key, sizeof(sg->key));
    return FORWARD_OK;
}

float *engram_step_gates(const engram_step *es, const forward_item *it, int n_items) {
    for (int i = 0; i < n_items; i++)
        if (it[i].gates) return es->egates;
    return NULL;
}

void engram_step_gates_done(engram_step *es, const engram_weights *w, const batch_desc *b, const forward_item *it,
                            int n_items) {
    if (engram_step_gates(es, it, n_items)) collect_gates(es, w, b, it, n_items);
}

bool engram_step_recordable(const engram_step *es, const forward_item *it, int n_items) {
    return es->n_snaps == 0 && !engram_step_gates(es, it, n_items);
}

int engram_step_layer(engram_step *es, const engram_weights *w, const batch_desc *b, float *x,
                      const forward_item *it, int n_items) {
    const float *emb;
    int rc = engram_step_rows(es, w, b, &emb);
    if (rc != FORWARD_OK) return rc;
    engram_step_apply(es, w, b, x, emb, it, n_items);
    return FORWARD_OK;
}

void engram_step_apply(engram_step *es, const engram_weights *w, const batch_desc *b, float *x, const float *emb,
                       const forward_item *it, int n_items) {
    const model_engram *e = es->bm->engram;
    backend *be = es->be;
    int T = b->n_tokens, d = es->bm->cfg.hidden_size;
    bool want = engram_step_gates(es, it, n_items) != NULL;
    double t0 = util_now();
    if (es->n_snaps) take_snaps(es, w, b, true);
    engram_module_run(be, e, w, d, b, x, emb, (size_t)w->li * (es->hist_floats / e->n_layers),
                      &es->scratch, es->eout, want ? es->egates : NULL);
    if (es->n_snaps) take_snaps(es, w, b, false);
    backend_add(be, x, es->eout, (size_t)T * d);
    es->seconds += util_now() - t0;
    if (want) collect_gates(es, w, b, it, n_items);
}
