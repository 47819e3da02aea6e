/* The CPU reference of the DeepSeek-V4 ops (backend.h, DEEPSEEK_V4.md section
 * 2): hyper-connections with Sinkhorn, the interleaved tail rope, the
 * compressors, the Lightning indexer and the window + compressed attention
 * with sinks; DeepSeek-V4.1's ratio-1/2 compressor and index keys with
 * SGLang's FP4 fake quantisations (5.8). f32, each token's row computed alone
 * (batch invariance). */
#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/numeric.h"
#include "engine/backend/cpu/cpu_internal.h"

static float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

void cpu__rmsnorm_plain(backend *be, float *out, const float *x, int T, int d, float eps) {
    (void)be;
    for (int t = 0; t < T; t++) {
        const float *xt = x + (size_t)t * d;
        float *ot = out + (size_t)t * d;
        float scale = cpu__rms_scale(xt, d, eps);
        for (int i = 0; i < d; i++) ot[i] = xt[i] * scale;
    }
}

/* One token's triplet from its mix a ((2+N)N) in the order of MOD:956-995 (every hc_eps where
 * transformers puts it; SGLang's hc_split_sinkhorn_kernel is the same): pre (N), post (N), C (N, N). */
static void hc_weights_row(float *pre, float *po, float *C, const float *a, const float *base, const float *scale,
                           int N, int iters, float hc_eps) {
    for (int j = 0; j < N; j++) {
        pre[j] = sigmoidf(a[j] * scale[0] + base[j]) + hc_eps;
        po[j] = 2.0f * sigmoidf(a[N + j] * scale[1] + base[N + j]);
    }
    for (int j = 0; j < N; j++) { /* softmax over k of row j */
        float *row = C + j * N, mx = -INFINITY, sum = 0.0f;
        for (int k = 0; k < N; k++) {
            row[k] = a[2 * N + j * N + k] * scale[2] + base[2 * N + j * N + k];
            mx = row[k] > mx ? row[k] : mx;
        }
        for (int k = 0; k < N; k++) sum += row[k] = expf(row[k] - mx);
        for (int k = 0; k < N; k++) row[k] = row[k] / sum + hc_eps;
    }
    for (int it = 0; it < iters; it++) {
        if (it > 0)
            for (int j = 0; j < N; j++) { /* rows */
                float s = 0.0f;
                for (int k = 0; k < N; k++) s += C[j * N + k];
                for (int k = 0; k < N; k++) C[j * N + k] /= s + hc_eps;
            }
        for (int k = 0; k < N; k++) { /* columns */
            float s = 0.0f;
            for (int j = 0; j < N; j++) s += C[j * N + k];
            for (int j = 0; j < N; j++) C[j * N + k] /= s + hc_eps;
        }
    }
}

/* x (d) = sum_j pre[j] Xt[j], streams in order (f32, as both references accumulate). */
static void collapse_row(float *x, const float *Xt, const float *pre, int N, int d) {
    for (int i = 0; i < d; i++) {
        float s = 0.0f;
        for (int j = 0; j < N; j++) s += pre[j] * Xt[(size_t)j * d + i];
        x[i] = s;
    }
}

/* The hyper-connection ops' arguments, one token a parallel item. */
typedef struct {
    float *pre, *post, *comb, *x, *X;
    const float *cX, *y, *mix, *base, *scale;
    int N, d, iters;
    float hc_eps;
} hc_job;

static void hc_split_token(void *ctx, int t) {
    hc_job *j = ctx;
    int N = j->N;
    float pre[16];
    hc_weights_row(pre, j->post + (size_t)t * N, j->comb + (size_t)t * N * N, j->mix + (size_t)t * (2 + N) * N,
                   j->base, j->scale, N, j->iters, j->hc_eps);
    collapse_row(j->x + (size_t)t * j->d, j->cX + (size_t)t * N * j->d, pre, N, j->d);
}

void cpu__hc_split(backend *be, float *post, float *comb, float *x, const float *X, const float *mix,
                   const float *base, const float *scale, int T, int N, int d, int iters, float hc_eps) {
    hc_job j = {.post = post, .comb = comb, .x = x, .cX = X, .mix = mix, .base = base, .scale = scale, .N = N,
                .d = d, .iters = iters, .hc_eps = hc_eps};
    cpu__parallel_for(be, T, 1, hc_split_token, &j);
}

static void hc_weights_token(void *ctx, int t) {
    hc_job *j = ctx;
    int N = j->N;
    hc_weights_row(j->pre + (size_t)t * N, j->post + (size_t)t * N, j->comb + (size_t)t * N * N,
                   j->mix + (size_t)t * (2 + N) * N, j->base, j->scale, N, j->iters, j->hc_eps);
}

void cpu__hc_weights(backend *be, float *pre, float *post, float *comb, const float *mix, const float *base,
                     const float *scale, int T, int N, int iters, float hc_eps) {
    hc_job j = {.pre = pre, .post = post, .comb = comb, .mix = mix, .base = base, .scale = scale, .N = N,
                .iters = iters, .hc_eps = hc_eps};
    cpu__parallel_for(be, T, 4, hc_weights_token, &j);
}

static void hc_collapse_token(void *ctx, int t) {
    hc_job *j = ctx;
    collapse_row(j->x + (size_t)t * j->d, j->cX + (size_t)t * j->N * j->d, j->pre + (size_t)t * j->N, j->N, j->d);
}

void cpu__hc_collapse(backend *be, float *x, const float *X, const float *pre, int T, int N, int d) {
    hc_job j = {.x = x, .cX = X, .pre = (float *)pre, .N = N, .d = d}; /* pre only read */
    cpu__parallel_for(be, T, 1, hc_collapse_token, &j);
}

static void hc_merge_token(void *ctx, int t) {
    hc_job *j = ctx;
    int N = j->N, d = j->d;
    float *Xt = j->X + (size_t)t * N * d, col[16];
    const float *po = j->post + (size_t)t * N, *C = j->comb + (size_t)t * N * N, *yt = j->y + (size_t)t * d;
    for (int i = 0; i < d; i++) {
        for (int jj = 0; jj < N; jj++) col[jj] = Xt[(size_t)jj * d + i];
        for (int k = 0; k < N; k++) {
            float s = 0.0f;
            for (int jj = 0; jj < N; jj++) s += C[jj * N + k] * col[jj];
            Xt[(size_t)k * d + i] = po[k] * yt[i] + s;
        }
    }
}

void cpu__hc_merge(backend *be, float *X, const float *y, const float *post, const float *comb, int T, int N, int d) {
    hc_job j = {.X = X, .y = y, .post = (float *)post, .comb = (float *)comb, .N = N, .d = d}; /* post, comb only read */
    cpu__parallel_for(be, T, 1, hc_merge_token, &j);
}

void cpu__hc_head(backend *be, float *out, const float *X, const float *mix, const float *base, const float *scale,
                  int T, int N, int d, float hc_eps) {
    (void)be;
    for (int t = 0; t < T; t++) {
        float pre[16];
        for (int j = 0; j < N; j++) pre[j] = sigmoidf(mix[(size_t)t * N + j] * scale[0] + base[j]) + hc_eps;
        collapse_row(out + (size_t)t * d, X + (size_t)t * N * d, pre, N, d);
    }
}

/* Interleaved pairs (c0, c0+1), c0 = hd - r + 2j, as MOD:345-369 rotates them, each product
 * rounded on its own as torch's elementwise ops round it. Head by head, through arrays of the
 * rotated evens and odds: with the pairs rotated in place inside a loop over the heads, GCC 12 at
 * -O3 vectorized that loop as complex multiplies (vfmaddsub: fused, -ffp-contract=off
 * notwithstanding) when there were heads enough, so a head's bits depended on how many heads the
 * call had (a tensor-parallel rank has fewer; tests/unit/test_tensor_parallel.c). */
#define ROPE_MAX_PAIRS 512 /* dsv4_ctx_create refuses more */
static void rope_row(float *x, int n_heads, int hd, int r, int pos, const float *inv_freq, int inverse) {
    float c[ROPE_MAX_PAIRS], s[ROPE_MAX_PAIRS], y0[ROPE_MAX_PAIRS], y1[ROPE_MAX_PAIRS];
    int n = r / 2;
    assert(n <= ROPE_MAX_PAIRS);
    for (int j = 0; j < n; j++) {
        float a = (float)pos * inv_freq[j];
        c[j] = cosf(a), s[j] = inverse ? -sinf(a) : sinf(a);
    }
    for (int h = 0; h < n_heads; h++) {
        float *v = x + (size_t)h * hd + hd - r;
        for (int j = 0; j < n; j++) y0[j] = v[2 * j] * c[j] - v[2 * j + 1] * s[j];
        for (int j = 0; j < n; j++) y1[j] = v[2 * j + 1] * c[j] + v[2 * j] * s[j];
        for (int j = 0; j < n; j++) v[2 * j] = y0[j], v[2 * j + 1] = y1[j];
    }
}

void cpu__rope_tail(backend *be, float *x, const int32_t *pos, int T, int n_heads, int hd, int r,
                    const float *inv_freq, int inverse) {
    (void)be;
    for (int t = 0; t < T; t++) rope_row(x + (size_t)t * n_heads * hd, n_heads, hd, r, pos[t], inv_freq, inverse);
}

/* Rows of position p of sequence s: the step's own (p >= pos0) or the ring's. */
static const float *row_at(const float *step, const float *ring, int cap, int cw, int start, int pos0, int p) {
    return p >= pos0 ? step + (size_t)(start + p - pos0) * cw : ring + (size_t)(p % cap) * cw;
}

/* The block of sequence s holding position p, through the step's block tables (backend.h, dsv4_kv). */
static float *block_of(const dsv4_kv *L, const batch_desc *b, int s, int p) {
    int blk = b->block_tables[(size_t)s * b->max_blocks + p / b->block_size];
    return L->base + (size_t)blk * L->block_floats;
}

/* The kv row (D) of position p of sequence s. */
static float *kv_row(const dsv4_kv *L, const batch_desc *b, int s, int p) {
    return block_of(L, b, s, p) + (size_t)(p % b->block_size) * L->D;
}

/* Compressed entry w (D) of sequence s, or its index key (dI) when key: in the block of position w m
 * of the store that keeps the entries (the layer's, or a V4.1 layer's kv source's). */
static float *entry_at(const dsv4_kv *L, const batch_desc *b, int s, int w, int key) {
    int p = w * L->m, slot = p % b->block_size / L->m;
    int blk = b->block_tables[(size_t)s * b->max_blocks + p / b->block_size];
    float *e = L->ebase + (size_t)blk * L->eblock_floats + (size_t)b->block_size * L->D;
    return key ? e + (size_t)L->slots * L->D + (size_t)slot * L->dI : e + (size_t)slot * L->D;
}

/* x (n) = x * rsqrt(mean(x^2) + eps) times the weight, sums in double: a compressor's norm (transformers'
 * kv_norm, dsv41_sparse.py's RMSNorm: the same order). */
static void rmsnorm_w_row(float *x, const float *w, int n, float eps) {
    double ss = 0.0;
    for (int i = 0; i < n; i++) ss += (double)x[i] * x[i];
    float sc = 1.0f / sqrtf((float)(ss / n) + eps);
    for (int i = 0; i < n; i++) x[i] = w[i] * (x[i] * sc);
}

typedef struct {
    const float *kv, *gate, *rk, *rg, *ape, *norm, *inv_freq;
    const batch_desc *b;
    const dsv4_kv *cache;
    int s, which, m, D, overlap, r, cw, cap, start, pos0, w0;
    float eps;
} compress_job;

/* Compressed entry w0 + i of the job's sequence. */
static void compress_window(void *ctx, int i) {
    compress_job *j = ctx;
    int w = j->w0 + i, m = j->m, D = j->D, cw = j->cw, cap = j->cap, start = j->start, pos0 = j->pos0;
    float *e = entry_at(j->cache, j->b, j->s, w, j->which);
    for (int c = 0; c < D; c++) {
        float g[256], v[256], mx = -INFINITY, sum = 0.0f, acc = 0.0f; /* 2m slots; m <= 128 */
        int n = 0;
        if (j->overlap && w > 0)
            for (int k = 0; k < m; k++, n++) { /* A halves of window w-1 */
                int p = (w - 1) * m + k;
                v[n] = row_at(j->kv, j->rk, cap, cw, start, pos0, p)[c];
                g[n] = row_at(j->gate, j->rg, cap, cw, start, pos0, p)[c] + j->ape[(size_t)k * cw + c];
            }
        for (int k = 0; k < m; k++, n++) { /* B halves (or the whole row) of window w */
            int p = w * m + k, o = j->overlap ? D : 0;
            v[n] = row_at(j->kv, j->rk, cap, cw, start, pos0, p)[o + c];
            g[n] = row_at(j->gate, j->rg, cap, cw, start, pos0, p)[o + c] + j->ape[(size_t)k * cw + o + c];
        }
        for (int k = 0; k < n; k++) mx = g[k] > mx ? g[k] : mx;
        for (int k = 0; k < n; k++) sum += g[k] = expf(g[k] - mx);
        for (int k = 0; k < n; k++) acc += v[k] * (g[k] / sum);
        e[c] = acc;
    }
    rmsnorm_w_row(e, j->norm, D, j->eps);
    rope_row(e, 1, D, j->r, w * m, j->inv_freq, 0);
}

void cpu__dsv4_compress(backend *be, const float *kv, const float *gate, const batch_desc *b, const dsv4_state *st,
                        const dsv4_kv *cache, int which, int m, int D, int overlap, const float *ape,
                        const float *norm, float eps, int r, const float *inv_freq) {
    int cw = overlap ? 2 * D : D, cap = 2 * m;
    for (int s = 0; s < b->n_seqs; s++) {
        float *rk = b->seq_state[s] + (which ? st->i_kv : st->c_kv);
        float *rg = b->seq_state[s] + (which ? st->i_gate : st->c_gate);
        int start = b->h_seq_start[s], pos0 = b->h_seq_pos0[s], P = pos0 + b->h_seq_start[s + 1] - start;
        compress_job j = {.kv = kv, .gate = gate, .rk = rk, .rg = rg, .ape = ape, .norm = norm, .inv_freq = inv_freq,
                          .b = b, .cache = cache, .s = s, .which = which, .m = m, .D = D, .overlap = overlap, .r = r,
                          .cw = cw, .cap = cap, .start = start, .pos0 = pos0, .w0 = pos0 / m, .eps = eps};
        cpu__parallel_for(be, P / m - pos0 / m, 1, compress_window, &j);
        for (int p = P - cap > pos0 ? P - cap : pos0; p < P; p++) {
            memcpy(rk + (size_t)(p % cap) * cw, kv + (size_t)(start + p - pos0) * cw, (size_t)cw * sizeof(float));
            memcpy(rg + (size_t)(p % cap) * cw, gate + (size_t)(start + p - pos0) * cw, (size_t)cw * sizeof(float));
        }
    }
}

typedef struct {
    float score;
    int idx;
} scored;

/* Score descending, then index ascending: the oldest block wins a tie. */
static int scored_cmp(const void *a, const void *b) {
    const scored *x = a, *y = b;
    if (x->score != y->score) return x->score > y->score ? -1 : 1;
    return x->idx - y->idx;
}

static int scored_idx_cmp(const void *a, const void *b) { return ((const scored *)a)->idx - ((const scored *)b)->idx; }

typedef struct {
    int32_t *sel;
    float *out;
    const float *q, *kv, *wts, *sinks;
    const int32_t *csel;
    const batch_desc *b;
    const dsv4_kv *cache;
    int m, K, nI, dI, nh, D, W;
    int32_t *publish;      /* (T, nb) V4.1's candidate source: its blocks, or NULL */
    const int32_t *among;  /* (T, nb) a later index source: the blocks it selects within, or NULL */
    int nb, bs;            /* blocks published, entries per block */
    size_t most;
    atomic_bool failed; /* an item could not get its host scratch */
} dsv4_job;

/* The index score of entry w for token t: sum_h wts[h] nI^-0.5 relu(q_h . key_w) dI^-0.5. */
static float index_score(const dsv4_job *j, int t, int s, int w) {
    int nI = j->nI, dI = j->dI;
    float qs = 1.0f / sqrtf((float)dI), ws = 1.0f / sqrtf((float)nI), total = 0.0f;
    const float *qt = j->q + (size_t)t * nI * dI, *wt = j->wts + (size_t)t * nI;
    const float *key = entry_at(j->cache, j->b, s, w, 1);
    for (int h = 0; h < nI; h++) {
        float dot = 0.0f;
        for (int c = 0; c < dI; c++) dot += qt[(size_t)h * dI + c] * key[c];
        total += (dot > 0.0f ? dot : 0.0f) * qs * (wt[h] * ws);
    }
    return total;
}

/* The candidate source's blocks of one token (candidate_blocks.py select_candidate_block_ids) from
 * sc (n) in entry order: each block keyed by the maximum over its entries, the newest block first
 * (SGLang keys it +inf), then the nb - 1 others of the highest keys; keys (ceil(n / bs)) scratch. */
static void publish_blocks(const scored *sc, int n, int bs, int nb, scored *keys, int32_t *out) {
    int nblk = (n + bs - 1) / bs, k = 0;
    for (int i = 0; i < nb; i++) out[i] = -1;
    if (n == 0) return;
    out[k++] = nblk - 1;
    for (int bl = 0; bl < nblk - 1; bl++) { /* full blocks: only the newest may be partial */
        float mx = sc[bl * bs].score;
        for (int w = bl * bs + 1; w < (bl + 1) * bs; w++) mx = sc[w].score > mx ? sc[w].score : mx;
        keys[bl] = (scored){mx, bl};
    }
    if (nblk - 1 > nb - 1) qsort(keys, (size_t)(nblk - 1), sizeof(scored), scored_cmp);
    for (int i = 0; i < nblk - 1 && k < nb; i++) out[k++] = keys[i].idx;
}

static void index_token(void *ctx, int t) {
    dsv4_job *j = ctx;
    const batch_desc *b = j->b;
    int m = j->m, K = j->K, bs = j->bs;
    int s = b->tok_seq[t], n = (b->pos[t] + 1) / m, c = 0;
    int32_t *out = j->sel + (size_t)t * K, *pub = j->publish ? j->publish + (size_t)t * j->nb : NULL;
    for (int i = 0; i < K; i++) out[i] = -1;
    for (int i = 0; pub && i < j->nb; i++) pub[i] = -1;
    if (n == 0) return;
    scored *sc = malloc((size_t)(n + (pub ? (n + bs - 1) / bs : 0)) * sizeof(scored));
    if (!sc) { /* host scratch: the step fails */
        atomic_store(&j->failed, true);
        return;
    }
    if (j->among) { /* only the causal entries of the published blocks are candidates */
        const int32_t *blk = j->among + (size_t)t * j->nb;
        for (int i = 0; i < j->nb; i++)
            for (int w = blk[i] * bs; blk[i] >= 0 && w < (blk[i] + 1) * bs && w < n; w++)
                sc[c++] = (scored){index_score(j, t, s, w), w};
    } else {
        for (int w = 0; w < n; w++) sc[c++] = (scored){index_score(j, t, s, w), w};
    }
    if (pub) publish_blocks(sc, n, bs, j->nb, sc + n, pub); /* sc still in entry order */
    if (c > K) qsort(sc, (size_t)c, sizeof(scored), scored_cmp);
    else if (j->among) qsort(sc, (size_t)c, sizeof(scored), scored_idx_cmp); /* all kept: in entry order, as
                                                                              * the full top-k keeps them */
    for (int i = 0; i < c && i < K; i++) out[i] = sc[i].idx;
    free(sc);
}

void cpu__dsv4_index(backend *be, int32_t *sel, const float *q, const float *wts, const batch_desc *b,
                     const dsv4_kv *cache, int m, int K, int nI, int dI) {
    cpu__dsv41_index(be, sel, q, wts, b, cache, m, K, nI, dI, NULL, NULL, 0, 1);
}

void cpu__dsv41_index(backend *be, int32_t *sel, const float *q, const float *wts, const batch_desc *b,
                      const dsv4_kv *cache, int m, int K, int nI, int dI, int32_t *publish, const int32_t *among,
                      int nb, int bs) {
    dsv4_job j = {.sel = sel, .q = q, .wts = wts, .b = b, .cache = cache, .m = m, .K = K, .nI = nI, .dI = dI,
                  .publish = publish, .among = among, .nb = nb, .bs = bs};
    cpu__parallel_for(be, b->n_tokens, 1, index_token, &j);
    if (atomic_load(&j.failed)) cpu__fail(be);
}

static void attention_token(void *ctx, int t) {
    dsv4_job *j = ctx;
    const batch_desc *b = j->b;
    const dsv4_kv *cache = j->cache;
    int m = j->m, K = j->K, nh = j->nh, D = j->D, W = j->W;
    const int32_t *sel = j->csel;
    float scale = 1.0f / sqrtf((float)D);
    float *l = malloc(j->most * sizeof(float));
    const float **rows = malloc(j->most * sizeof(float *));
    if (!l || !rows) { /* host scratch: the step fails */
        atomic_store(&j->failed, true);
        free(l), free(rows);
        return;
    }
    int s = b->tok_seq[t], p = b->pos[t], n = 0;
    for (int i = p - W + 1 > 0 ? p - W + 1 : 0; i <= p; i++) rows[n++] = kv_row(cache, b, s, i);
    if (m && sel) {
        for (int i = 0; i < K; i++)
            if (sel[(size_t)t * K + i] >= 0) rows[n++] = entry_at(cache, b, s, sel[(size_t)t * K + i], 0);
    } else if (m) {
        for (int w = 0; w < (p + 1) / m; w++) rows[n++] = entry_at(cache, b, s, w, 0);
    }
    for (int h = 0; h < nh; h++) {
        const float *qh = j->q + ((size_t)t * nh + h) * D;
        float mx = j->sinks[h], sum;
        for (int i = 0; i < n; i++) {
            float dot = 0.0f;
            for (int c = 0; c < D; c++) dot += qh[c] * rows[i][c];
            l[i] = dot * scale;
            mx = l[i] > mx ? l[i] : mx;
        }
        sum = expf(j->sinks[h] - mx);
        for (int i = 0; i < n; i++) sum += l[i] = expf(l[i] - mx);
        float *o = j->out + ((size_t)t * nh + h) * D;
        memset(o, 0, (size_t)D * sizeof(float));
        for (int i = 0; i < n; i++) {
            float pr = l[i] / sum;
            for (int c = 0; c < D; c++) o[c] += pr * rows[i][c];
        }
    }
    free(l);
    free(rows);
}

void cpu__dsv4_attention(backend *be, float *out, const float *q, const float *kv, const batch_desc *b,
                         const dsv4_kv *cache, int m, const int32_t *sel, int K, const float *sinks, int nh, int D,
                         int W) {
    size_t most = (size_t)W + (m ? (size_t)(sel ? K : b->max_ctx / m + 1) : 0);
    for (int t = 0; t < b->n_tokens; t++) /* the step's rows first: its later tokens read its earlier ones */
        memcpy(kv_row(cache, b, b->tok_seq[t], b->pos[t]), kv + (size_t)t * D, (size_t)D * sizeof(float));
    dsv4_job j = {.out = out, .q = q, .sinks = sinks, .csel = sel, .b = b, .cache = cache, .m = m, .K = K, .nh = nh,
                  .D = D, .W = W, .most = most};
    cpu__parallel_for(be, b->n_tokens, 1, attention_token, &j);
    if (atomic_load(&j.failed)) cpu__fail(be);
}

/* ---- DeepSeek-V4.1's ratio-1/2 layers: SGLang's torch path with its fake quantisations, in f32
 * activations where SGLang's are bf16 (its casts back to the activation dtype, DeepseekV41Compressor
 * .finish and the bf16 wk, are then no-ops) ---- */

/* fp4_fake_quant.py round_fp4: |v| <= 6 onto the e2m1 grid (steps 0.5 / 1 / 2 below 2 / 4 / 6),
 * nearest with ties to even (torch.round), the sign of v kept (0 stays 0). */
static float round_fp4(float v) {
    float a = fabsf(v), step = a < 2.0f ? 0.5f : a < 4.0f ? 1.0f : 2.0f;
    float q = nearbyintf(a / step) * step;
    return v > 0 ? q : v < 0 ? -q : 0.0f;
}

/* fake_quant_fp4 of one block of 32: scale = 2^ceil(log2(max(amax, 6 * 2^-126) / 6)) taken from the f32
 * bits (ceil_pow2), then each value round_fp4(clamp(x / scale, -6, 6)) * scale. */
static void fq4_block(float *x) {
    float amax = 0.0f;
    for (int i = 0; i < 32; i++) amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
    amax = amax > 6.0f * 0x1p-126f ? amax : 6.0f * 0x1p-126f;
    float t = amax * (float)(1.0 / 6.0);
    uint32_t u;
    memcpy(&u, &t, 4);
    int e = (int)((u >> 23) & 0xff) - 127 + ((u & 0x7fffff) != 0);
    u = (uint32_t)(e + 127) << 23;
    float scale;
    memcpy(&scale, &u, 4);
    for (int i = 0; i < 32; i++) {
        float v = x[i] / scale;
        x[i] = round_fp4(v < -6.0f ? -6.0f : v > 6.0f ? 6.0f : v) * scale;
    }
}

/* fake_quant_compressed_kv of one block of 16: scale = e4m3(clamp(amax / 6, 2^-9, 448)), then each value
 * round_fp4(clamp(x / scale, -6, 6)) * scale. */
static void fq_kv_block(float *x) {
    float amax = 0.0f;
    for (int i = 0; i < 16; i++) amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
    float t = amax * (float)(1.0 / 6.0);
    t = t < 0x1p-9f ? 0x1p-9f : t > 448.0f ? 448.0f : t;
    float scale = fp8_e4m3_to_f32(f32_to_fp8_e4m3(t));
    for (int i = 0; i < 16; i++) {
        float v = x[i] / scale;
        x[i] = round_fp4(v < -6.0f ? -6.0f : v > 6.0f ? 6.0f : v) * scale;
    }
}

typedef struct {
    float *lat;
    const float *kv, *score, *rk, *rg, *norm, *inv_freq;
    const batch_desc *b;
    const dsv4_kv *cache;
    int s, m, D, r, start, pos0;
    float eps;
} low_job;

/* Token start + i of the job's sequence: its group's latent and entry when it closes one. */
static void low_compress_token(void *ctx, int i) {
    low_job *j = ctx;
    int p = j->pos0 + i, m = j->m, D = j->D, cap = 2 * m;
    float *l = j->lat + (size_t)(j->start + i) * D;
    if (p % m != m - 1) {
        memset(l, 0, (size_t)D * sizeof(float));
        return;
    }
    const float *v1 = j->kv + (size_t)(j->start + i) * D;
    if (m == 1) {
        memcpy(l, v1, (size_t)D * sizeof(float));
    } else { /* pool_pairs: the partner p - 1 first */
        const float *v0 = row_at(j->kv, j->rk, cap, D, j->start, j->pos0, p - 1);
        const float *g0 = row_at(j->score, j->rg, cap, D, j->start, j->pos0, p - 1);
        const float *g1 = j->score + (size_t)(j->start + i) * D;
        for (int c = 0; c < D; c++) {
            float mx = g0[c] > g1[c] ? g0[c] : g1[c], e0 = expf(g0[c] - mx), e1 = expf(g1[c] - mx);
            float sum = e0 + e1;
            l[c] = v0[c] * (e0 / sum) + v1[c] * (e1 / sum);
        }
    }
    rmsnorm_w_row(l, j->norm, D, j->eps); /* DeepseekV41Compressor.finish, in the f32 activations */
    float *e = entry_at(j->cache, j->b, j->s, p / m, 0);
    memcpy(e, l, (size_t)D * sizeof(float));
    rope_row(e, 1, D, j->r, p - m + 1, j->inv_freq, 0); /* group_pos: the pair's first position */
    for (int c = 0; c < D; c += 16) fq_kv_block(e + c);
}

void cpu__dsv41_compress(backend *be, float *lat, const float *kv, const float *score, const batch_desc *b,
                         const dsv4_state *st, const dsv4_kv *cache, int m, int D, const float *norm, float eps,
                         int r, const float *inv_freq) {
    int cap = 2 * m;
    for (int s = 0; s < b->n_seqs; s++) {
        float *rk = b->seq_state[s] + st->c_kv, *rg = b->seq_state[s] + st->c_gate;
        int start = b->h_seq_start[s], pos0 = b->h_seq_pos0[s], n = b->h_seq_start[s + 1] - start;
        low_job j = {.lat = lat, .kv = kv, .score = score, .rk = rk, .rg = rg, .norm = norm, .inv_freq = inv_freq,
                     .b = b, .cache = cache, .s = s, .m = m, .D = D, .r = r, .start = start, .pos0 = pos0, .eps = eps};
        cpu__parallel_for(be, n, 1, low_compress_token, &j);
        int P = pos0 + n;
        if (m > 1)
            for (int p = P - cap > pos0 ? P - cap : pos0; p < P; p++) {
                memcpy(rk + (size_t)(p % cap) * D, kv + (size_t)(start + p - pos0) * D, (size_t)D * sizeof(float));
                memcpy(rg + (size_t)(p % cap) * D, score + (size_t)(start + p - pos0) * D, (size_t)D * sizeof(float));
            }
    }
}

typedef struct {
    const float *k, *k_norm, *inv_freq;
    const batch_desc *b;
    const dsv4_kv *cache;
    int m, dI, r;
    float eps;
} key_job;

static void low_index_key(void *ctx, int t) {
    key_job *j = ctx;
    int p = j->b->pos[t], m = j->m, dI = j->dI;
    if (p % m != m - 1) return;
    float *key = entry_at(j->cache, j->b, j->b->tok_seq[t], p / m, 1);
    memcpy(key, j->k + (size_t)t * dI, (size_t)dI * sizeof(float));
    rmsnorm_w_row(key, j->k_norm, dI, j->eps);
    rope_row(key, 1, dI, j->r, p - m + 1, j->inv_freq, 0);
    for (int c = 0; c < dI; c += 32) fq4_block(key + c);
}

void cpu__dsv41_index_keys(backend *be, const float *k, const batch_desc *b, const dsv4_kv *cache, int m, int dI,
                           const float *k_norm, float eps, int r, const float *inv_freq) {
    key_job j = {.k = k, .k_norm = k_norm, .inv_freq = inv_freq, .b = b, .cache = cache, .m = m, .dI = dI, .r = r,
                 .eps = eps};
    cpu__parallel_for(be, b->n_tokens, 1, low_index_key, &j);
}

typedef struct {
    float *x;
    int w;
} fq_job;

static void fq4_row(void *ctx, int i) {
    fq_job *j = ctx;
    for (int c = 0; c < j->w; c += 32) fq4_block(j->x + (size_t)i * j->w + c);
}

void cpu__fake_quant_fp4(backend *be, float *x, size_t n, int w) {
    fq_job j = {x, w};
    cpu__parallel_for(be, (int)n, 16, fq4_row, &j);
}

void cpu__swiglu_limit(backend *be, float *gate, const float *up, size_t n, float limit) {
    (void)be;
    for (size_t i = 0; i < n; i++) {
        float g = gate[i] > limit ? limit : gate[i];
        float u = up[i] > limit ? limit : up[i] < -limit ? -limit : up[i];
        gate[i] = g / (1.0f + expf(-g)) * u;
    }
}

/* DeepSeek-V4.1's Engram gate in SGLang's order (engram.py engram_gate): the rstd of the stream
 * and of its key multiplied first, the dot product of (x w) key, then rstd and d^-0.5; sums of
 * squares and the dot in double, as this file's norms. */
typedef struct {
    float *X, *gates;
    const float *kv, *w;
    int N, d;
    float eps, clamp;
} v41_gate_job;

static void v41_gate_token(void *ctx, int t) {
    v41_gate_job *j = ctx;
    int N = j->N, d = j->d;
    const float inv_sqrt_d = (float)(1.0 / sqrt((double)d));
    const float *kvt = j->kv + (size_t)t * (N + 1) * d, *value = kvt + (size_t)N * d;
    for (int g = 0; g < N; g++) {
        float *x = j->X + ((size_t)t * N + g) * d;
        const float *key = kvt + (size_t)g * d, *wg = j->w + (size_t)g * d;
        double sx = 0.0, sk = 0.0, dot = 0.0;
        for (int i = 0; i < d; i++) {
            sx += (double)x[i] * x[i];
            sk += (double)key[i] * key[i];
            dot += (double)(x[i] * wg[i] * key[i]);
        }
        float rstd = 1.0f / sqrtf((float)(sx / d) + j->eps) * (1.0f / sqrtf((float)(sk / d) + j->eps));
        float s = (float)dot * rstd * inv_sqrt_d;
        float a = fabsf(s) > j->clamp ? fabsf(s) : j->clamp;
        float gate = sigmoidf(copysignf(sqrtf(a), s));
        for (int i = 0; i < d; i++) x[i] += gate * value[i];
        if (j->gates) j->gates[(size_t)t * N + g] = gate;
    }
}

void cpu__engram_v41_gate(backend *be, float *X, const float *kv, const float *w, int T, int N, int d, float eps,
                          float clamp, float *gates) {
    v41_gate_job j = {.X = X, .gates = gates, .kv = kv, .w = w, .N = N, .d = d, .eps = eps, .clamp = clamp};
    cpu__parallel_for(be, T, 1, v41_gate_token, &j);
}
