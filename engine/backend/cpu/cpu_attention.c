/* The CPU backend's attention op over the paged KV cache, batch-invariant.
 *
 * A query (one token's head) attends to the positions [j0, i]: i its own
 * position, j0 = i - window + 1 (or 0). They are cut into chunks at fixed
 * multiples of ATT_CHUNK positions, and each chunk c gives a partial
 *   s_j = dot(q, k_j) / sqrt(hd)     (cpu__dot's sum: eight lanes, then a tree)
 *   m_c = max_j s_j,  e_j = exp(s_j - m_c)   (cpu__exp8),
 *   l_c = sum_j e_j   (in double, j ascending),  u_c[e] = sum_j e_j v_j[e]   (j ascending)
 * which are merged in chunk order (att_merge) before o = u / l. Every sum has
 * one order, fixed by the query's positions alone: a query's output is the
 * same bits whatever else the step holds, however the work is split and
 * whichever thread runs it.
 *
 * The work: a tile is up to ATT_TILE consecutive tokens of one sequence, and
 * its queries are all their heads, which share each pass over the K and V
 * rows: the row of a position (all KV heads, contiguous) comes from memory
 * once per tile and the other heads and tokens read it again from L1. One
 * item per (token, head), reading its head's 256 bytes of every 2 KB row,
 * streamed a 2k context's K and V four times per layer at a third of the
 * bandwidth of a contiguous read (bench/RESULTS.md, "CPU decode at 2k
 * context"). Steps of many tiles (prefills, batches) take one tile per work
 * item and merge its chunks as they go; steps of a few (one sequence's
 * decode) take one (tile, chunk) per item, so that every thread has a part of
 * the context (at short contexts, one part of the KV heads of a chunk), and
 * merge the partials after: the same partials, merged in the same order.
 * A sequence with KT_MIN_TOKENS tokens or more in the step (a prefill) has
 * its K rows transposed once, before the tiles, into blocks of KT_BLOCK
 * positions (att_kt), which its tiles' scores read sixteen positions to a
 * vector: cpu__dot's eight lanes become eight vectors and its tree runs
 * across them, so the scores are the same bits as the row-wise kernels'. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "engine/backend/cpu/cpu_internal.h"

#define ATT_TILE 4    /* most tokens of a tile */
#define ATT_CHUNK 128 /* positions of a chunk */
#define ATT_SPLIT 2   /* a step of fewer than ATT_SPLIT x threads tiles is split by chunks */
/* positions of V a tile's queries take in turn (u kept in registers over
 * them: 8 reloaded u for a fifth more time than 32, measured; 32 rows of
 * two KV heads of 64 are 16 KB, in L1 for the tile's next query) */
#define ATT_PV_BLOCK 32
/* K transposed (see att_kt): blocks of KT_BLOCK positions, for the sequences
 * of at least KT_MIN_TOKENS tokens in the step (fewer tiles do not pay back
 * the transposition of their context) */
#define KT_BLOCK 16
#define KT_MIN_TOKENS 64

typedef struct {
    int t0, nt;   /* the tile's tokens t0 .. t0 + nt - 1, of one sequence */
    int jlo, jhi; /* the positions any of them attends to */
    int item0;    /* split: the tile's first (tile, chunk) item */
    int kt_seq;   /* its sequence's K transposed: entry kt_seq of attention_job.kts, or -1 (none) */
} att_tile;

/* One sequence's K transposed, position blocks first .. first + n - 1: block
 * B of KV head h is (hd, KT_BLOCK) floats at kt + at + ((B - first) n_kv + h)
 * hd KT_BLOCK: element e of the positions' rows side by side. Only the
 * positions in [lo, hi] are written. */
typedef struct {
    int tok;        /* a token of the sequence (its block table) */
    int lo, hi;     /* the positions any of its tokens attends to */
    int first, n;   /* its blocks */
    size_t at;      /* its first block's offset in kt, floats */
    int item0;      /* its first block's fill item */
} att_kt;

typedef struct {
    backend *be;
    float *out;
    const float *q, *k, *v;
    const batch_desc *b;
    int n_heads, n_kv, hd, window;
    const att_tile *tiles;
    int nq; /* most queries of a tile: its tokens times n_heads */
    float *kt; /* the K transposed of the sequences kts[0, n_kts) (att_kt), 64-byte aligned */
    const att_kt *kts;
    int n_kts;
    /* split: item i is part i % parts (of the KV heads) of chunk ichunk[k]
     * of tile itile[k], k = i / parts, whose partial (l, m, u as att_chunk
     * writes them) is at part + k pstride floats */
    const int32_t *itile, *ichunk;
    int parts;
    float *part;
    size_t pstride;
    cpu_range items; /* split: (tile, chunk) pairs; else tiles */
} attention_job;

/* The positions [*j0, *i] token t attends to. */
static void att_range(const attention_job *a, int t, int *j0, int *i) {
    *i = a->b->pos[t];
    *j0 = a->window > 0 && *i - a->window + 1 > 0 ? *i - a->window + 1 : 0;
}

/* Whether query r of tile tl (token r / n_heads) has positions in chunk c. */
static bool att_in_chunk(const attention_job *a, const att_tile *tl, int r, int c) {
    int j0, i;
    att_range(a, tl->t0 + r / a->n_heads, &j0, &i);
    return c >= 0 && j0 < (c + 1) * ATT_CHUNK && i >= c * ATT_CHUNK;
}

/* One load per cache line of rows[0, n) (floats [off, off + len) of each), in order: a
 * decode tile's chunk read from DRAM as one sequential stream before its
 * compute. (Its queries read each row a head at a time, and the hardware
 * prefetcher does not follow that; prefetch instructions spread over the
 * compute did not help either: 1.1 ms a layer at 2k context, 1.0 with this
 * pass, bench/RESULTS.md.) The sum keeps the loads. */
__attribute__((noinline)) static float att_touch(const float *const *rows, int n, size_t off, size_t len) {
    float t = 0.0f;
    for (int p = 0; p < n; p++)
        for (size_t e = off; e < off + len; e += 16) t += rows[p][e];
    return t;
}

/* The four kernels below are not inlined: in att_chunk the compiler spilled
 * their row pointers to keep the loop variables around them in registers. */

/* s[p] = cpu__dot(q, k[p] + off, hd) * scale for eight positions side by
 * side, their lane trees reduced together (cpu__lanes_sum8: the same bits). */
__attribute__((noinline)) static void att_scores8(float *s, const float *q, const float *const k[8], size_t off,
                                                  int hd, float scale) {
    cpu__v8 acc[8];
    for (int p = 0; p < 8; p++) acc[p] = (cpu__v8){0};
    int e = 0;
    for (; e + 8 <= hd; e += 8) {
        cpu__v8 qe = cpu__load8(q + e);
        for (int p = 0; p < 8; p++) acc[p] += qe * cpu__load8(k[p] + off + e);
    }
    for (; e < hd; e++)
        for (int p = 0; p < 8; p++) acc[p][0] += q[e] * k[p][off + e];
    cpu__v8 r = cpu__lanes_sum8(acc);
    for (int p = 0; p < 8; p++) s[p] = r[p] * scale;
}

/* att_scores8 for two queries of one KV head (each row loaded once) */
__attribute__((noinline)) static void att_scores8x2(float *s1, float *s2, const float *q1, const float *q2,
                                                    const float *const k[8], size_t off, int hd, float scale) {
    cpu__v8 a1[8], a2[8];
    for (int p = 0; p < 8; p++) a1[p] = a2[p] = (cpu__v8){0};
    int e = 0;
    for (; e + 8 <= hd; e += 8) {
        cpu__v8 x1 = cpu__load8(q1 + e), x2 = cpu__load8(q2 + e);
        for (int p = 0; p < 8; p++) {
            cpu__v8 kv = cpu__load8(k[p] + off + e);
            a1[p] += x1 * kv;
            a2[p] += x2 * kv;
        }
    }
    for (; e < hd; e++)
        for (int p = 0; p < 8; p++) a1[p][0] += q1[e] * k[p][off + e], a2[p][0] += q2[e] * k[p][off + e];
    cpu__v8 r1 = cpu__lanes_sum8(a1), r2 = cpu__lanes_sum8(a2);
    for (int p = 0; p < 8; p++) s1[p] = r1[p] * scale, s2[p] = r2[p] * scale;
}

/* att_scores8x2's scores for KT_BLOCK positions from K transposed (kt: (hd,
 * KT_BLOCK), element e of the positions side by side): lane l of cpu__dot
 * is a vector a[l] over the positions, e = l, l + 8, ... added in order (the
 * tail into a[0]), then the same tree across a[0..8) as whole vectors: the
 * same bits as cpu__dot, without the shuffles of a tree across lanes. q2
 * NULL: one query. */
typedef float att_v16 __attribute__((vector_size(4 * KT_BLOCK)));

__attribute__((noinline)) static void att_scores16(float *s1, float *s2, const float *q1, const float *q2,
                                                   const float *kt, int hd, float scale) {
    att_v16 a1[8], a2[8];
    for (int l = 0; l < 8; l++) a1[l] = a2[l] = (att_v16){0};
    int e = 0;
    for (; e + 8 <= hd; e += 8)
        for (int l = 0; l < 8; l++) {
            att_v16 k;
            memcpy(&k, kt + (size_t)(e + l) * KT_BLOCK, sizeof(k));
            a1[l] += q1[e + l] * k;
            if (q2) a2[l] += q2[e + l] * k;
        }
    for (; e < hd; e++) {
        att_v16 k;
        memcpy(&k, kt + (size_t)e * KT_BLOCK, sizeof(k));
        a1[0] += q1[e] * k;
        if (q2) a2[0] += q2[e] * k;
    }
    att_v16 r1 = ((a1[0] + a1[1]) + (a1[2] + a1[3])) + ((a1[4] + a1[5]) + (a1[6] + a1[7]));
    r1 *= scale;
    memcpy(s1, &r1, sizeof(r1));
    if (q2) {
        att_v16 r2 = ((a2[0] + a2[1]) + (a2[2] + a2[3])) + ((a2[4] + a2[5]) + (a2[6] + a2[7]));
        r2 *= scale;
        memcpy(s2, &r2, sizeof(r2));
    }
}

/* u[e] += w[j] v[j][off + e] for j in [j1, j2], in order (u: hd floats in
 * memory, 64 of them at a time in registers while the positions are added). */
__attribute__((noinline)) static void att_pv(float *u, const float *w, const float *const *v, size_t off, int j1,
                                             int j2, int hd) {
    int e0 = 0;
    for (; e0 + 64 <= hd; e0 += 64) {
        cpu__v8 acc[8];
        for (int c = 0; c < 8; c++) acc[c] = cpu__load8(u + e0 + 8 * c);
        for (int j = j1; j <= j2; j++)
            for (int c = 0; c < 8; c++) acc[c] += w[j] * cpu__load8(v[j] + off + e0 + 8 * c);
        memcpy(u + e0, acc, sizeof(acc));
    }
    for (; e0 < hd; e0++) /* a head's tail (under 64): element by element, the same sums */
        for (int j = j1; j <= j2; j++) u[e0] += w[j] * v[j][off + e0];
}

/* att_pv for two queries of one KV head over the same positions (each row
 * loaded once) */
__attribute__((noinline)) static void att_pv2(float *u1, float *u2, const float *w1, const float *w2,
                                              const float *const *v, size_t off, int j1, int j2, int hd) {
    int e0 = 0;
    for (; e0 + 64 <= hd; e0 += 64) {
        cpu__v8 a1[8], a2[8];
        for (int c = 0; c < 8; c++) a1[c] = cpu__load8(u1 + e0 + 8 * c), a2[c] = cpu__load8(u2 + e0 + 8 * c);
        for (int j = j1; j <= j2; j++)
            for (int c = 0; c < 8; c++) {
                cpu__v8 x = cpu__load8(v[j] + off + e0 + 8 * c);
                a1[c] += w1[j] * x;
                a2[c] += w2[j] * x;
            }
        memcpy(u1 + e0, a1, sizeof(a1));
        memcpy(u2 + e0, a2, sizeof(a2));
    }
    for (; e0 < hd; e0++)
        for (int j = j1; j <= j2; j++) u1[e0] += w1[j] * v[j][off + e0], u2[e0] += w2[j] * v[j][off + e0];
}

typedef int32_t cpu__v8i __attribute__((vector_size(32)));

/* max_j s[j] over n > 0 floats, in any order: the same value (a NaN may be
 * skipped or kept; its query's output is NaN either way) */
static float att_max(const float *s, int n) {
    float mx = s[0];
    int j = 0;
    if (n >= 8) {
        cpu__v8 mv = cpu__load8(s);
        for (j = 8; j + 8 <= n; j += 8) {
            cpu__v8 x = cpu__load8(s + j);
            cpu__v8i gt = x > mv;
            mv = (cpu__v8)((gt & (cpu__v8i)x) | (~gt & (cpu__v8i)mv));
        }
        mx = mv[0];
        for (int k = 1; k < 8; k++)
            if (mv[k] > mx) mx = mv[k];
    }
    for (; j < n; j++)
        if (s[j] > mx) mx = s[j];
    return mx;
}

/* s[j] = exp(s[j] - mx) for j in [0, n) */
static void att_exp(float *s, int n, float mx) {
    int j = 0;
    for (; j + 8 <= n; j += 8) {
        cpu__v8 e = cpu__exp8(cpu__load8(s + j) - mx);
        memcpy(s + j, &e, sizeof(e));
    }
    if (j < n) {
        cpu__v8 x = {0};
        memcpy(&x, s + j, (size_t)(n - j) * sizeof(float));
        x = cpu__exp8(x - mx);
        memcpy(s + j, &x, (size_t)(n - j) * sizeof(float));
    }
}

/* A query of a tile: its positions [j0, i], its KV head's offset in a row,
 * and whether the next query is the next head of the same group (the same
 * token, positions and rows: the kernels take the two together). */
typedef struct {
    int j0, i, off, pair;
} att_query;

/* The queries of tile tl, r = token * n_heads + head. */
static void att_queries(const attention_job *a, const att_tile *tl, att_query *qs) {
    int G = a->n_heads / a->n_kv;
    for (int r = 0; r < tl->nt * a->n_heads; r++) {
        att_range(a, tl->t0 + r / a->n_heads, &qs[r].j0, &qs[r].i);
        qs[r].off = r % a->n_heads / G * a->hd;
        qs[r].pair = r % G + 1 < G;
    }
}

/* The partials of chunk c for tile tl's queries qs[ra, rb) (whole KV head
 * groups): l (nq doubles), m (nq), u (nq, hd), indexed by query; a query
 * with no position in the chunk is left alone. sc: (nq, ATT_CHUNK) scratch. */
static void att_chunk(const attention_job *a, const att_tile *tl, const att_query *qs, int c, int ra, int rb,
                      float *sc, double *l, float *m, float *u) {
    const batch_desc *b = a->b;
    int hd = a->hd, bs = b->block_size;
    size_t kvw = (size_t)a->n_kv * hd;
    const int32_t *blocks = b->block_tables + (size_t)b->tok_seq[tl->t0] * b->max_blocks;
    const float *q = a->q + (size_t)tl->t0 * a->n_heads * hd; /* query r at q + r hd */
    float scale = 1.0f / sqrtf((float)hd);
    int p0 = c * ATT_CHUNK > tl->jlo ? c * ATT_CHUNK : tl->jlo;
    int p1 = (c + 1) * ATT_CHUNK - 1 < tl->jhi ? (c + 1) * ATT_CHUNK - 1 : tl->jhi;
    /* position j's rows of K and V, every head, at kr[j], vr[j] (row j % bs of block blocks[j / bs]) */
    const float *krows[ATT_CHUNK], *vrows[ATT_CHUNK], **kr = krows - p0, **vr = vrows - p0;
    for (int j = p0; j <= p1; j++) {
        size_t row = (size_t)blocks[j / bs] * bs + j % bs;
        kr[j] = a->k + row * kvw, vr[j] = a->v + row * kvw;
    }
    if (tl->nt == 1) { /* a decode tile: nothing else reads the chunk */
        size_t off = (size_t)qs[ra].off, len = (size_t)(qs[rb - 1].off + hd) - off; /* its heads' part of a row */
        volatile float keep = att_touch(kr + p0, p1 - p0 + 1, off, len) + att_touch(vr + p0, p1 - p0 + 1, off, len);
        (void)keep;
    }
    /* scores: a block of KT_BLOCK positions from K transposed where the
     * sequence has it and the block is whole, else eight at a time */
    const att_kt *kt = tl->kt_seq >= 0 ? &a->kts[tl->kt_seq] : NULL;
    for (int js = p0, n; js <= p1; js += n) {
        bool wide = kt && js % KT_BLOCK == 0 && js + KT_BLOCK - 1 <= p1;
        n = wide ? KT_BLOCK : p1 - js + 1 < 8 ? p1 - js + 1 : 8;
        if (kt && !wide && n > KT_BLOCK - js % KT_BLOCK) n = KT_BLOCK - js % KT_BLOCK; /* up to the next block */
        for (int r = ra; r < rb; r++) {
            const att_query *x = &qs[r];
            float *s = sc + (size_t)r * ATT_CHUNK - p0; /* s[j]: position j's score */
            if (js + n - 1 < x->j0 || js > x->i) continue; /* none of its positions */
            if (wide) { /* scores outside [j0, i] are left unread, as below */
                const float *ktb = a->kt + kt->at + ((size_t)(js / KT_BLOCK - kt->first) * a->n_kv + x->off / hd) *
                                                        hd * KT_BLOCK;
                att_scores16(s + js, x->pair ? s + ATT_CHUNK + js : NULL, q + (size_t)r * hd,
                             x->pair ? q + (size_t)(r + 1) * hd : NULL, ktb, hd, scale);
                r += x->pair;
                continue;
            }
            if (n == 8) {
                if (x->pair) {
                    att_scores8x2(s + js, s + ATT_CHUNK + js, q + (size_t)r * hd, q + (size_t)(r + 1) * hd, kr + js,
                                  (size_t)x->off, hd, scale);
                    r++;
                } else {
                    att_scores8(s + js, q + (size_t)r * hd, kr + js, (size_t)x->off, hd, scale);
                }
                continue;
            }
            for (int j = js; j < js + n; j++)
                if (j >= x->j0 && j <= x->i) s[j] = cpu__dot(q + (size_t)r * hd, kr[j] + x->off, hd) * scale;
        }
    }
    for (int r = ra; r < rb; r++) { /* scores -> e_j in place, m */
        int j1 = qs[r].j0 > p0 ? qs[r].j0 : p0, j2 = qs[r].i < p1 ? qs[r].i : p1;
        if (j1 > j2) continue;
        float *s = sc + (size_t)r * ATT_CHUNK - p0;
        m[r] = att_max(s + j1, j2 - j1 + 1);
        att_exp(s + j1, j2 - j1 + 1, m[r]);
        memset(u + (size_t)r * hd, 0, (size_t)hd * sizeof(float));
    }
    /* l: eight queries' sums side by side over the positions they share (one
     * alone waits on its adds' latency), each in its own order */
    for (int r0 = ra; r0 < rb; r0 += 8) {
        int nr = rb - r0 < 8 ? rb - r0 : 8, j1[8], j2[8], c1 = p0, c2 = p1;
        double sum[8] = {0};
        const float *s[8];
        for (int k = 0; k < nr; k++) {
            j1[k] = qs[r0 + k].j0 > p0 ? qs[r0 + k].j0 : p0, j2[k] = qs[r0 + k].i < p1 ? qs[r0 + k].i : p1;
            s[k] = sc + (size_t)(r0 + k) * ATT_CHUNK - p0;
            if (j1[k] > c1) c1 = j1[k];
            if (j2[k] < c2) c2 = j2[k];
        }
        if (nr < 8 || c1 > c2) c2 = c1 - 1; /* nothing shared: each alone */
        for (int k = 0; k < nr; k++)
            for (int j = j1[k]; j < c1 && j <= j2[k]; j++) sum[k] += s[k][j];
        for (int j = c1; j <= c2; j++)
            for (int k = 0; k < 8; k++) sum[k] += s[k][j];
        for (int k = 0; k < nr; k++) {
            for (int j = c2 + 1 > j1[k] ? c2 + 1 : j1[k]; j <= j2[k]; j++) sum[k] += s[k][j];
            if (j1[k] <= j2[k]) l[r0 + k] = sum[k];
        }
    }
    for (int jb = p0; jb <= p1; jb += ATT_PV_BLOCK) { /* u, ATT_PV_BLOCK positions at a time */
        int je = p1 - jb + 1 < ATT_PV_BLOCK ? p1 : jb + ATT_PV_BLOCK - 1;
        for (int r = ra; r < rb; r++) {
            const att_query *x = &qs[r];
            int j1 = x->j0 > jb ? x->j0 : jb, j2 = x->i < je ? x->i : je;
            if (j1 > j2) continue;
            const float *w = sc + (size_t)r * ATT_CHUNK - p0;
            if (x->pair) {
                att_pv2(u + (size_t)r * hd, u + (size_t)(r + 1) * hd, w, w + ATT_CHUNK, vr, (size_t)x->off, j1, j2, hd);
                r++;
            } else {
                att_pv(u + (size_t)r * hd, w, vr, (size_t)x->off, j1, j2, hd);
            }
        }
    }
}

/* A query's (l, m, u) of its chunks so far, merged with the next chunk's
 * (lc, mc, uc): both rescaled to the larger maximum. first: there were none. */
static void att_merge(double *l, float *m, float *u, double lc, float mc, const float *uc, int hd, bool first) {
    if (first) {
        *l = lc, *m = mc;
        memcpy(u, uc, (size_t)hd * sizeof(float));
        return;
    }
    float mx = mc > *m ? mc : *m;
    cpu__v8 f = cpu__exp8((cpu__v8){*m - mx, mc - mx});
    *l = *l * f[0] + lc * f[1];
    for (int e = 0; e < hd; e++) u[e] = u[e] * f[0] + uc[e] * f[1];
    *m = mx;
}

/* o = u / l for each query of the tile */
static void att_out(const attention_job *a, const att_tile *tl, const double *l, const float *u) {
    int hd = a->hd;
    for (int r = 0; r < tl->nt * a->n_heads; r++) {
        float inv = (float)(1.0 / l[r]), *o = a->out + ((size_t)tl->t0 * a->n_heads + r) * hd;
        for (int e = 0; e < hd; e++) o[e] = u[(size_t)r * hd + e] * inv;
    }
}

static void attention_items(void *arg, int ith, int nth) {
    attention_job *a = arg;
    int nq = a->nq, hd = a->hd;
    /* scores (nq, ATT_CHUNK); a chunk's l, the running L; m, M; u, U (nq, hd); the queries */
    size_t floats = (size_t)nq * ATT_CHUNK + 2 * (size_t)nq * (hd + 3);
    float *sc = cpu__thread_scratch(a->be, ith, floats * sizeof(float) + (size_t)nq * sizeof(att_query));
    if (!sc) return; /* the other workers take the items (cpu__range_done) */
    double *l = (double *)(sc + (size_t)nq * ATT_CHUNK), *L = l + nq;
    float *m = (float *)(L + nq), *M = m + nq, *u = M + nq, *U = u + (size_t)nq * hd;
    att_query *qs = (att_query *)(sc + floats);
    int i0, i1;
    while (cpu__range_take(&a->items, &i0, &i1))
        for (int it = i0; it < i1; it++) {
            if (a->itile) { /* a part of one chunk's partials, merged by att_merge_tile */
                int k = it / a->parts, part = it % a->parts, G = a->n_heads / a->n_kv;
                const att_tile *tl = &a->tiles[a->itile[k]];
                float *p = a->part + (size_t)k * a->pstride;
                int ra = a->parts > 1 ? part * a->n_kv / a->parts * G : 0;
                int rb = a->parts > 1 ? (part + 1) * a->n_kv / a->parts * G : tl->nt * a->n_heads;
                att_queries(a, tl, qs);
                att_chunk(a, tl, qs, a->ichunk[k], ra, rb, sc, (double *)p, p + 2 * nq, p + 3 * nq);
                continue;
            }
            const att_tile *tl = &a->tiles[it];
            att_queries(a, tl, qs);
            for (int c = tl->jlo / ATT_CHUNK; c <= tl->jhi / ATT_CHUNK; c++) {
                att_chunk(a, tl, qs, c, 0, tl->nt * a->n_heads, sc, l, m, u);
                for (int r = 0; r < tl->nt * a->n_heads; r++)
                    if (att_in_chunk(a, tl, r, c))
                        att_merge(&L[r], &M[r], U + (size_t)r * hd, l[r], m[r], u + (size_t)r * hd, hd,
                                  !att_in_chunk(a, tl, r, c - 1));
            }
            att_out(a, tl, L, U);
        }
}

/* A split step: tile i's partials merged in chunk order, then its outputs.
 * The running (l, m, u) is kept in the partial of the tile's first chunk. */
static void att_merge_tile(void *ctx, int i) {
    attention_job *a = ctx;
    const att_tile *tl = &a->tiles[i];
    int nq = a->nq, hd = a->hd, c0 = tl->jlo / ATT_CHUNK;
    float *p0 = a->part + (size_t)tl->item0 * a->pstride, *M = p0 + 2 * nq, *U = p0 + 3 * nq;
    double *L = (double *)p0;
    for (int r = 0; r < tl->nt * a->n_heads; r++)
        for (int c = c0; c <= tl->jhi / ATT_CHUNK; c++) {
            bool first = !att_in_chunk(a, tl, r, c - 1);
            if (!att_in_chunk(a, tl, r, c) || (first && c == c0)) continue; /* c0's is in place */
            float *p = a->part + (size_t)(tl->item0 + c - c0) * a->pstride;
            att_merge(&L[r], &M[r], U + (size_t)r * hd, ((double *)p)[r], p[2 * nq + r], p + 3 * nq + (size_t)r * hd,
                      hd, first);
        }
    att_out(a, tl, L, U);
}

/* Fill item i of the K transposed: one block of one sequence's (att_kt). */
static void att_kt_fill(void *ctx, int i) {
    const attention_job *a = ctx;
    const batch_desc *b = a->b;
    int k = 0;
    while (k + 1 < a->n_kts && a->kts[k + 1].item0 <= i) k++;
    const att_kt *x = &a->kts[k];
    int B = x->first + i - x->item0, hd = a->hd, bs = b->block_size;
    size_t kvw = (size_t)a->n_kv * hd;
    const int32_t *blocks = b->block_tables + (size_t)b->tok_seq[x->tok] * b->max_blocks;
    float *dst = a->kt + x->at + (size_t)(i - x->item0) * kvw * KT_BLOCK; /* (n_kv, hd, KT_BLOCK) */
    int j0 = B * KT_BLOCK > x->lo ? B * KT_BLOCK : x->lo, j1 = (B + 1) * KT_BLOCK - 1 < x->hi ? (B + 1) * KT_BLOCK - 1 : x->hi;
    for (int j = j0; j <= j1; j++) {
        const float *row = a->k + ((size_t)blocks[j / bs] * bs + j % bs) * kvw;
        for (size_t e = 0; e < kvw; e++) dst[e * KT_BLOCK + j % KT_BLOCK] = row[e];
    }
}

/* The tile of tokens [t, min(t + ATT_TILE, end)) of a sequence whose tokens end at end. */
static att_tile att_tile_at(const attention_job *a, int t, int end) {
    att_tile tl = {.t0 = t, .nt = end - t < ATT_TILE ? end - t : ATT_TILE, .jlo = INT32_MAX, .jhi = -1};
    for (int u = t; u < t + tl.nt; u++) {
        int j0, i;
        att_range(a, u, &j0, &i);
        if (j0 < tl.jlo) tl.jlo = j0;
        if (i > tl.jhi) tl.jhi = i;
    }
    return tl;
}

void cpu__attention(backend *be, float *out, const float *q, const void *kcache, const void *vcache,
                    const batch_desc *b, int n_heads, int n_kv, int hd, int window) {
    attention_job a = {.be = be, .out = out, .q = q, .k = kcache, .v = vcache, .b = b, .n_heads = n_heads,
                       .n_kv = n_kv, .hd = hd, .window = window};
    int n_tiles = 0, n_chunks = 0, tile_max = 1, n_kts = 0, kt_blocks = 0;
    for (int s = 0; s < b->n_seqs; s++) {
        int lo = INT32_MAX, hi = -1;
        for (int t = b->h_seq_start[s], end = b->h_seq_start[s + 1]; t < end; t += ATT_TILE) {
            att_tile tl = att_tile_at(&a, t, end);
            n_tiles++, n_chunks += tl.jhi / ATT_CHUNK - tl.jlo / ATT_CHUNK + 1;
            if (tl.nt > tile_max) tile_max = tl.nt;
            lo = tl.jlo < lo ? tl.jlo : lo, hi = tl.jhi > hi ? tl.jhi : hi;
        }
        if (b->h_seq_start[s + 1] - b->h_seq_start[s] >= KT_MIN_TOKENS)
            n_kts++, kt_blocks += hi / KT_BLOCK - lo / KT_BLOCK + 1;
    }
    a.nq = tile_max * n_heads;
    /* split: fewer tiles than threads have work for, into their chunks, and
     * (single-token tiles) the chunks into parts of the KV heads, when the
     * chunks are still too few (a short context) */
    int want = ATT_SPLIT * cpu__threads(be);
    bool split = n_tiles < want && (n_chunks > n_tiles || (tile_max == 1 && n_kv > 1));
    a.parts = 1;
    if (split && tile_max == 1)
        while (a.parts < n_kv && n_chunks * a.parts < want) a.parts++;
    int n_items = split ? n_chunks * a.parts : n_tiles;
    a.pstride = ((size_t)a.nq * (hd + 3) + 1) & ~(size_t)1; /* even: the next partial's doubles aligned */
    size_t head = ((size_t)n_tiles * sizeof(att_tile) + (size_t)n_chunks * 2 * sizeof(int32_t) +
                   (size_t)n_kts * sizeof(att_kt) + 63) & ~(size_t)63;
    size_t parts = split ? (size_t)n_chunks * a.pstride * sizeof(float) : 0;
    parts = (parts + 63) & ~(size_t)63;
    size_t kvw = (size_t)n_kv * hd;
    char *mem = cpu__scratch(be, head + parts + (size_t)kt_blocks * kvw * KT_BLOCK * sizeof(float));
    if (!mem) return;
    att_tile *tiles = (att_tile *)mem;
    int32_t *itile = (int32_t *)(tiles + n_tiles), *ichunk = itile + n_chunks;
    att_kt *kts = (att_kt *)(ichunk + n_chunks);
    n_tiles = n_chunks = n_kts = kt_blocks = 0;
    for (int s = 0; s < b->n_seqs; s++) {
        int lo = INT32_MAX, hi = -1, first = n_tiles;
        bool has_kt = b->h_seq_start[s + 1] - b->h_seq_start[s] >= KT_MIN_TOKENS;
        for (int t = b->h_seq_start[s], end = b->h_seq_start[s + 1]; t < end; t += ATT_TILE) {
            att_tile *tl = &tiles[n_tiles];
            *tl = att_tile_at(&a, t, end);
            tl->item0 = n_chunks;
            tl->kt_seq = has_kt ? n_kts : -1;
            for (int c = tl->jlo / ATT_CHUNK; split && c <= tl->jhi / ATT_CHUNK; c++)
                itile[n_chunks] = n_tiles, ichunk[n_chunks++] = c;
            lo = tl->jlo < lo ? tl->jlo : lo, hi = tl->jhi > hi ? tl->jhi : hi;
            n_tiles++;
        }
        if (has_kt) {
            att_kt *x = &kts[n_kts++];
            *x = (att_kt){.tok = tiles[first].t0, .lo = lo, .hi = hi, .first = lo / KT_BLOCK,
                          .n = hi / KT_BLOCK - lo / KT_BLOCK + 1, .at = (size_t)kt_blocks * kvw * KT_BLOCK,
                          .item0 = kt_blocks};
            kt_blocks += x->n;
        }
    }
    a.tiles = tiles;
    if (n_kts) { /* K transposed first, for every tile of its sequences */
        a.kt = (float *)(mem + head + parts), a.kts = kts, a.n_kts = n_kts;
        cpu__parallel_for(be, kt_blocks, 4, att_kt_fill, &a);
    }
    if (split) a.itile = itile, a.ichunk = ichunk, a.part = (float *)(mem + head);
    a.items = cpu__range(n_items, 1);
    cpu__parallel(be, attention_items, &a);
    if (!cpu__range_done(&a.items)) {
        cpu__fail(be);
        return;
    }
    if (split) cpu__parallel_for(be, n_tiles, 1, att_merge_tile, &a);
}
