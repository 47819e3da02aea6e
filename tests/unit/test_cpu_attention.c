/* engine/backend/cpu: the attention op (cpu_attention.c) over a paged KV cache
 * whose blocks are shuffled, at contexts across several of its 128-position
 * chunks, grouped query heads (4 per KV head), one query head per KV head
 * (an odd count), head sizes 64 and 40 (the weighted sum's element tail),
 * with and without a sliding window.
 *   - Accuracy: every output element is within the rounding bound
 *     |o - o*| <= (2 (hd/8 + hd%8 + 8) A + min(n, 128) + 4 c + 16) u sum_j p_j |v_j|,
 *     u = 2^-24, of the softmax-weighted sum o* computed in long double from
 *     its definition: n positions attended in c chunks of 128,
 *     A = max_j sum_e |q_e k_je| / sqrt(hd). (A score's eight-lane sum errs by
 *     (hd/8 + hd%8 + 4) u A at most, its scaling and the subtraction of the
 *     maximum by 4 u A more, doubled by the softmax; a chunk's weighted sum
 *     by (128 + 1) u, each merge's rescaling by 3 u, the exps by 0.51 u.)
 *   - Batch invariance: each query's output is bit-identical whether its token
 *     runs alone (a decode step: its context split across the threads by
 *     chunks, and at 45 positions, one chunk, by KV heads; scores from the
 *     K rows, where a step of 64 tokens or more takes K transposed),
 *     with its sequence's other tokens in tiles that start elsewhere, or in a
 *     step of many sequences (a tile per work item), on 1, 2 or 3 threads.
 * And the exp it takes (cpu__exp8) against libm's exp in double: within
 * 0.51 units in the last place of the float result, 0 below -104, infinity
 * above 89, NaN kept. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/backend/backend.h"
#include "engine/backend/cpu/cpu_internal.h"

enum { BS = 16, NB = 96, S = 3, TMAX = 72 };
static const int seq_len[S] = {700, 300, 45}; /* context of each sequence, its last tokens the queries */
/* query tokens of each sequence in the whole step: the first two take their
 * scores from K transposed (KT_MIN_TOKENS, 64, or more), token by token they do not */
static const int seq_q[S] = {72, 66, 1};

static uint64_t rng = 88172645463325252ull;
static uint64_t next(void) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return rng;
}
static float uniform(void) { return (float)((double)(next() >> 11) / 9007199254740992.0 * 2.0 - 1.0); }

typedef struct {
    int nh, nkv, hd, window;
    float *k, *v;            /* (NB * BS, nkv * hd) the pool */
    int32_t table[S][NB];    /* each sequence's blocks, shuffled through the pool */
    float *q;                /* (S, TMAX, nh, hd): query of sequence s's token at position seq_len[s] - TMAX + i */
} fixture;

static void make(fixture *f, int nh, int nkv, int hd, int window) {
    int kvw = nkv * hd;
    *f = (fixture){.nh = nh, .nkv = nkv, .hd = hd, .window = window};
    f->k = malloc(sizeof(float) * NB * BS * kvw);
    f->v = malloc(sizeof(float) * NB * BS * kvw);
    f->q = malloc(sizeof(float) * S * TMAX * nh * hd);
    for (int i = 0; i < NB * BS * kvw; i++) f->k[i] = uniform(), f->v[i] = uniform();
    /* scores of a few units: peaked softmaxes, chunks' maxima apart */
    for (int i = 0; i < S * TMAX * nh * hd; i++) f->q[i] = 2.5f * uniform();
    int perm[NB];
    for (int i = 0; i < NB; i++) perm[i] = i;
    for (int i = NB - 1; i > 0; i--) {
        int j = (int)(next() % (uint64_t)(i + 1)), x = perm[i];
        perm[i] = perm[j], perm[j] = x;
    }
    int used = 0;
    for (int s = 0; s < S; s++)
        for (int b = 0; b < (seq_len[s] + BS - 1) / BS; b++) f->table[s][b] = perm[used++];
    ck_assert_int_le(used, NB);
}

static void unmake(fixture *f) {
    free(f->k);
    free(f->v);
    free(f->q);
}

/* One step: for each of its n sequences (ids seqs[i]), the queries i0[i] ..
 * i0[i] + cnt[i] - 1 of that sequence; outputs go to out[s][i] (nh * hd each). */
static void step(backend *be, const fixture *f, int n, const int *seqs, const int *i0, const int *cnt,
                 float *out) {
    int nh = f->nh, hd = f->hd, T = 0, max_ctx = 0;
    int32_t pos[S * TMAX], tok_seq[S * TMAX], start[S + 1], pos0[S], tables[S * NB];
    float *q = malloc(sizeof(float) * S * TMAX * nh * hd), *o = malloc(sizeof(float) * S * TMAX * nh * hd);
    for (int i = 0; i < n; i++) {
        int s = seqs[i];
        start[i] = T, pos0[i] = seq_len[s] - TMAX + i0[i];
        memcpy(tables + i * NB, f->table[s], sizeof(f->table[s]));
        for (int k = 0; k < cnt[i]; k++, T++) {
            pos[T] = pos0[i] + k, tok_seq[T] = i;
            memcpy(q + (size_t)T * nh * hd, f->q + ((size_t)s * TMAX + i0[i] + k) * nh * hd, sizeof(float) * nh * hd);
            if (pos[T] + 1 > max_ctx) max_ctx = pos[T] + 1;
        }
    }
    start[n] = T;
    batch_desc b = {.n_seqs = n, .n_tokens = T, .block_size = BS, .max_blocks = NB, .max_q = TMAX, .max_ctx = max_ctx,
                    .pos = pos, .tok_seq = tok_seq, .seq_start = start, .seq_pos0 = pos0, .block_tables = tables,
                    .h_seq_start = start, .h_seq_pos0 = pos0};
    backend_attention(be, o, q, f->k, f->v, &b, nh, f->nkv, hd, f->window);
    ck_assert(!be->ops->take_failure(be));
    T = 0;
    for (int i = 0; i < n; i++)
        for (int k = 0; k < cnt[i]; k++, T++)
            memcpy(out + ((size_t)seqs[i] * TMAX + i0[i] + k) * nh * hd, o + (size_t)T * nh * hd,
                   sizeof(float) * nh * hd);
    free(q);
    free(o);
}

/* Query (s, i)'s positions [j0, p]. */
static void range(const fixture *f, int s, int i, int *j0, int *p) {
    *p = seq_len[s] - TMAX + i;
    *j0 = f->window > 0 && *p - f->window + 1 > 0 ? *p - f->window + 1 : 0;
}

static const float *kv_row(const fixture *f, const float *base, int s, int j) {
    return base + ((size_t)f->table[s][j / BS] * BS + j % BS) * f->nkv * f->hd;
}

static void check_accuracy(const fixture *f, const float *out, int s, int i) {
    int nh = f->nh, hd = f->hd, G = nh / f->nkv, j0, p;
    range(f, s, i, &j0, &p);
    int n = p - j0 + 1;
    long double *w = malloc(sizeof(long double) * n);
    for (int h = 0; h < nh; h++) {
        const float *qv = f->q + (((size_t)s * TMAX + i) * nh + h) * hd;
        long double mx = -INFINITY, sum = 0, A = 0, rs = 1.0L / sqrtl(hd);
        for (int j = j0; j <= p; j++) {
            const float *kr = kv_row(f, f->k, s, j) + (size_t)(h / G) * hd;
            long double d = 0, ad = 0;
            for (int e = 0; e < hd; e++) d += (long double)qv[e] * kr[e], ad += fabsl((long double)qv[e] * kr[e]);
            w[j - j0] = d * rs;
            if (w[j - j0] > mx) mx = w[j - j0];
            if (ad * rs > A) A = ad * rs;
        }
        for (int j = 0; j < n; j++) sum += w[j] = expl(w[j] - mx);
        for (int e = 0; e < hd; e++) {
            long double ref = 0, mag = 0;
            for (int j = j0; j <= p; j++) {
                long double vv = kv_row(f, f->v, s, j)[(size_t)(h / G) * hd + e];
                ref += w[j - j0] / sum * vv, mag += w[j - j0] / sum * fabsl(vv);
            }
            long double got = out[(((size_t)s * TMAX + i) * nh + h) * hd + e];
            int c = p / 128 - j0 / 128 + 1, lanes = hd / 8 + hd % 8;
            long double bound = (2 * (lanes + 8) * A + (n < 128 ? n : 128) + 4 * c + 16) * ldexpl(1, -24) * mag;
            ck_assert_msg(fabsl(got - ref) <= bound, "seq %d query %d head %d elem %d: %.9Lg, not %.9Lg (bound %.3Lg)",
                          s, i, h, e, got, ref, bound);
        }
    }
    free(w);
}

static backend *cpu(int threads) {
    backend_params bp = backend_default_params();
    bp.cpu_threads = threads;
    char err[256];
    backend *be = backend_cpu_create_with(&bp, err, sizeof(err));
    ck_assert_msg(be != NULL, "%s", err);
    return be;
}

static const int shapes[][4] = { /* nh, nkv, hd, window */
    {8, 2, 64, 0}, {8, 2, 64, 200}, {3, 3, 40, 0}, {6, 2, 40, 333},
};

START_TEST(accurate_and_batch_invariant) {
    fixture f;
    make(&f, shapes[_i][0], shapes[_i][1], shapes[_i][2], shapes[_i][3]);
    size_t nout = (size_t)S * TMAX * f.nh * f.hd;
    float *ref = calloc(nout, sizeof(float)), *got = calloc(nout, sizeof(float));
    int all[S] = {0, 1, 2}, first[S], cnt[S];
    for (int s = 0; s < S; s++) first[s] = TMAX - seq_q[s], cnt[s] = seq_q[s];
    backend *one = cpu(1);
    step(one, &f, S, all, first, cnt, ref); /* the whole step, one thread: a tile per item */
    for (int s = 0; s < S; s++)
        for (int i = first[s]; i < TMAX; i++) check_accuracy(&f, ref, s, i);
    for (int threads = 1; threads <= 3; threads++) {
        backend *be = threads == 1 ? one : cpu(threads);
        memset(got, 0, nout * sizeof(float));
        step(be, &f, S, all, first, cnt, got);
        ck_assert_msg(memcmp(ref, got, nout * sizeof(float)) == 0, "whole step, %d threads", threads);
        for (int s = 0; s < S; s++) {
            /* each token alone: a decode step, its chunks (or KV heads) split across the threads */
            memset(got, 0, nout * sizeof(float));
            for (int i = first[s]; i < TMAX; i++) step(be, &f, 1, &s, &i, (int[]){1}, got);
            size_t row = (size_t)f.nh * f.hd, o = ((size_t)s * TMAX + first[s]) * row;
            ck_assert_msg(memcmp(ref + o, got + o, (size_t)cnt[s] * row * sizeof(float)) == 0,
                          "seq %d token by token, %d threads", s, threads);
            /* the sequence alone, and without its first query: tiles that start elsewhere */
            for (int skip = 0; skip <= 1 && skip < cnt[s]; skip++) {
                memset(got, 0, nout * sizeof(float));
                step(be, &f, 1, &s, (int[]){first[s] + skip}, (int[]){cnt[s] - skip}, got);
                ck_assert_msg(memcmp(ref + o + skip * row, got + o + skip * row,
                                     (size_t)(cnt[s] - skip) * row * sizeof(float)) == 0,
                              "seq %d from query %d alone, %d threads", s, first[s] + skip, threads);
            }
        }
        if (be != one) backend_destroy(be);
    }
    backend_destroy(one);
    free(ref);
    free(got);
    unmake(&f);
}
END_TEST

static double ulp_of(float r) { return r == 0.0f ? ldexp(1, -149) : nextafterf(fabsf(r), INFINITY) - fabsf(r); }

START_TEST(exp8_against_libm) {
    double worst = 0;
    /* every 16411th finite float, both signs (all of [-110, 0]: bench/RESULTS.md) */
    for (uint32_t bits = 0; bits < 0x7f800000u; bits += 16411) {
        float x;
        memcpy(&x, &bits, sizeof(x));
        for (int sign = 0; sign < 2; sign++, x = -x) {
            if (x < -110.0f || x > 90.0f) continue;
            float got = cpu__exp8((cpu__v8){x})[0];
            double ref = exp((double)x), err = fabs(got - ref) / ulp_of((float)ref);
            if ((float)ref == INFINITY) {
                ck_assert_msg(got == INFINITY, "exp(%a) = %a", x, got);
                continue;
            }
            ck_assert_msg(err <= 0.51, "exp(%a) = %a, libm %a: %.4f ulp", x, got, ref, err);
            if (err > worst) worst = err;
        }
    }
    ck_assert(worst > 0.0); /* the loop compared */
    cpu__v8 s = cpu__exp8((cpu__v8){NAN, -INFINITY, INFINITY, 0.0f, -0.0f, -104.0f, -1e30f, 1e30f});
    ck_assert(isnan(s[0]));
    ck_assert(s[1] == 0.0f && s[2] == INFINITY && s[3] == 1.0f && s[4] == 1.0f);
    ck_assert(s[5] == 0.0f && s[6] == 0.0f && s[7] == INFINITY);
}
END_TEST

int main(void) {
    Suite *s = suite_create("cpu_attention");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, accurate_and_batch_invariant, 0, (int)(sizeof(shapes) / sizeof(shapes[0])));
    tcase_add_test(tc, exp8_against_libm);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
