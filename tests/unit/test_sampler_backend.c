/* backend_ops.sample (CPU reference op) with sampler_sample_candidates
 * against sampler_sample on the full row: over many random rows, parameters
 * and seeds, the same token every time, and the generators stay in step
 * (several draws per sampler). Rows are built to hit the hard cases: ties
 * (logits on a coarse grid), -0 and +0, flat and peaked rows, tiny candidate
 * lists (so the tail is heavy and the fallback to the full row runs), top-k,
 * top-p, min-p, biases (repeated ids), penalties and a grammar's mask of
 * allowed tokens (the host sets the others to -inf after the biases, as
 * engine/sequence.c does). */
#include <check.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/backend/backend.h"
#include "engine/sampler.h"

static uint64_t rng = 0x243F6A8885A308D3ull;
static uint64_t rnext(void) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return rng;
}
static double urand(void) { return (double)(rnext() >> 11) * 0x1.0p-53; }
static int irand(int n) { return (int)(rnext() % (uint64_t)n); }

/* A random row of V logits in one of several shapes. */
static void fill_row(float *l, int V) {
    int shape = irand(5);
    float scale = (float)(0.1 + 30.0 * urand());
    for (int i = 0; i < V; i++) {
        double x = urand() * 2 - 1;
        switch (shape) {
        case 0: l[i] = (float)(x * scale); break;                        /* uniform */
        case 1: l[i] = roundf((float)(x * 4)) * 0.5f; break;             /* coarse grid: many ties */
        case 2: l[i] = (float)(-scale * urand() * urand()); break;       /* one-sided, peaked at 0 */
        case 3: l[i] = irand(8) == 0 ? (float)(x * scale) : 0.0f; break; /* mostly zero */
        default: l[i] = (float)(x * 3); break;                           /* flat */
        }
        if (l[i] == 0.0f && irand(2)) l[i] = -0.0f;
    }
}

static sampler_params rand_params(int V) {
    sampler_params p = sampler_default_params();
    p.seed = rnext();
    int t = irand(10);
    p.temperature = t == 0 ? 0.0f : t == 1 ? 1.0f : (float)(0.05 + 2.0 * urand());
    if (irand(3) == 0) p.top_k = 1 + irand(V + 2);
    if (irand(2) == 0) p.top_p = irand(4) == 0 ? 1.0f - 0x1p-24f : (float)urand();
    if (irand(3) == 0) p.min_p = irand(4) == 0 ? 1e-30f : (float)(urand() * 0.5);
    if (irand(3) == 0) p.repetition_penalty = (float)(0.5 + 1.5 * urand());
    if (irand(3) == 0) p.presence_penalty = (float)(urand() * 2 - 0.5);
    if (irand(3) == 0) p.frequency_penalty = (float)(urand() * 1 - 0.2);
    return p;
}

START_TEST(candidates_pick_the_same_tokens) {
    backend *cpu = backend_cpu_create();
    long decided = 0, fallback = 0, tails = 0, draws = 0, n_masked = 0;
    for (int iter = 0; iter < 3000; iter++) {
        int V = irand(4) == 0 ? 1 + irand(8) : 16 + irand(2000);
        int n_cand = 1 << irand(8); /* 1 .. 128: often far below V */
        sampler_params p = rand_params(V);
        sampler *ref = sampler_create(V, p), *dev = sampler_create(V, p);
        ck_assert(ref && dev);
        if (!sampler_candidates_ok(dev, n_cand)) p.top_k = 0, sampler_destroy(ref), sampler_destroy(dev),
                                                 ref = sampler_create(V, p), dev = sampler_create(V, p);
        int n_prompt = irand(20), n_out = 0, steps = 1 + irand(6), n_bias = irand(4);
        int32_t prompt[20], out[8], bias_ids[4];
        float bias_vals[4];
        for (int i = 0; i < n_prompt; i++) prompt[i] = irand(V + 3) - 1; /* a few outside the vocab */
        for (int i = 0; i < n_bias; i++) {
            bias_ids[i] = irand(V);
            bias_vals[i] = (float)(urand() * 20 - 10);
        }
        if (n_bias > 1 && irand(2)) bias_ids[1] = bias_ids[0]; /* a repeated id adds twice, in order */
        int stride = V + irand(3);
        float *a = malloc((size_t)V * sizeof(float)), *b = malloc((size_t)2 * stride * sizeof(float));
        unsigned char *res = malloc(SAMPLER_RESULT_BYTES(n_cand));
        int words = (V + 31) / 32;
        uint32_t *mask = calloc((size_t)words, sizeof(uint32_t));
        sampler_desc d = {0};
        for (int step = 0; step < steps; step++) {
            int row = irand(2), masked = irand(3) == 0, keep = 1 + irand(8);
            fill_row(a, V);
            memcpy(b + (size_t)row * stride, a, (size_t)V * sizeof(float));
            if (masked) { /* a few allowed tokens (sometimes one), or about half of them */
                memset(mask, 0, (size_t)words * sizeof(uint32_t));
                for (int i = 0; i < V; i++)
                    if (irand(2) == 0 ? irand(V) < keep : irand(2)) mask[i >> 5] |= 1u << (i & 31);
                int any = 0;
                for (int w = 0; w < words; w++) any |= mask[w] != 0;
                if (!any) mask[0] |= 1; /* the engine never samples a row whose grammar allows nothing */
            }
            /* reference: what engine/sequence.c does on the host */
            for (int i = 0; i < n_bias; i++) a[bias_ids[i]] += bias_vals[i];
            if (masked)
                for (int i = 0; i < V; i++)
                    if (!((mask[i >> 5] >> (i & 31)) & 1)) a[i] = -INFINITY;
            int32_t want = sampler_sample(ref, a, prompt, n_prompt, out, n_out);
            /* backend op, then the candidates (or the row) */
            ck_assert_int_eq(sampler_desc_begin(&d, 1), 0);
            ck_assert_int_eq(sampler_desc_set(&d, 0, dev, row, bias_ids, bias_vals, n_bias, prompt, n_prompt, out,
                                              n_out), 0);
            if (masked) {
                ck_assert_int_eq(sampler_desc_set_mask(&d, 0, mask, words), 0);
                n_masked++;
            }
            backend_sample(cpu, res, b, d.w, 1, V, stride, n_cand);
            /* the op's row is the reference's penalized row, bit for bit */
            ck_assert_int_eq(memcmp(a, b + (size_t)row * stride, (size_t)V * sizeof(float)), 0);
            double tail;
            memcpy(&tail, res + 8 * (size_t)n_cand, sizeof(tail));
            tails += tail > 0;
            int32_t got = sampler_sample_candidates(dev, res, n_cand);
            if (got >= 0) decided++;
            else fallback++, got = sampler_sample_applied(dev, b + (size_t)row * stride);
            if (masked) ck_assert_msg((mask[got >> 5] >> (got & 31)) & 1, "a masked token was sampled");
            ck_assert_msg(got == want, "iter %d step %d: %d != %d (V %d n_cand %d T %g k %d p %g min_p %g)", iter,
                          step, got, want, V, n_cand, p.temperature, p.top_k, p.top_p, p.min_p);
            draws++;
            out[n_out++] = want;
        }
        sampler_desc_free(&d);
        free(a);
        free(b);
        free(res);
        free(mask);
        sampler_destroy(ref);
        sampler_destroy(dev);
    }
    fprintf(stderr, "draws %ld (%ld masked): %ld settled by the candidates, %ld from the row; %ld with a tail\n",
            draws, n_masked, decided, fallback, tails);
    ck_assert_int_gt(n_masked, draws / 5);
    /* both ways were taken, and the tail mattered often */
    ck_assert_int_gt(decided, draws / 2);
    ck_assert_int_gt(fallback, 0);
    ck_assert_int_gt(tails, 100);
    backend_destroy(cpu);
}
END_TEST

/* Peaked rows, as a model's usually are, with the candidates far fewer than
 * the vocabulary: the candidates settle nearly every token. */
START_TEST(candidates_settle_peaked_rows) {
    backend *cpu = backend_cpu_create();
    enum { V = 20000, N_CAND = 256, N = 300 };
    float *a = malloc(V * sizeof(float)), *b = malloc(V * sizeof(float));
    unsigned char *res = malloc(SAMPLER_RESULT_BYTES(N_CAND));
    sampler_desc d = {0};
    int decided = 0;
    for (int iter = 0; iter < N; iter++) {
        sampler_params p = sampler_default_params();
        p.seed = (uint64_t)iter;
        p.temperature = 0.7f;
        if (iter % 3 == 1) p.top_p = 0.9f;
        if (iter % 3 == 2) p.min_p = 0.05f;
        sampler *ref = sampler_create(V, p), *dev = sampler_create(V, p);
        for (int i = 0; i < V; i++) a[i] = (float)(-12.0 * urand() - (i % 97 == 0 ? 0 : 6));
        memcpy(b, a, V * sizeof(float));
        int32_t want = sampler_sample(ref, a, NULL, 0, NULL, 0);
        sampler_desc_begin(&d, 1);
        sampler_desc_set(&d, 0, dev, 0, NULL, NULL, 0, NULL, 0, NULL, 0);
        backend_sample(cpu, res, b, d.w, 1, V, V, N_CAND);
        int32_t got = sampler_sample_candidates(dev, res, N_CAND);
        decided += got >= 0;
        if (got < 0) got = sampler_sample_applied(dev, b);
        ck_assert_int_eq(got, want);
        sampler_destroy(ref);
        sampler_destroy(dev);
    }
    ck_assert_int_ge(decided, N * 9 / 10);
    sampler_desc_free(&d);
    free(a);
    free(b);
    free(res);
    backend_destroy(cpu);
}
END_TEST

/* NaN logits still give a token, on both ways (the row's NaN flag sends the
 * backend way to the row). */
START_TEST(nan_rows_give_tokens) {
    backend *cpu = backend_cpu_create();
    enum { V = 64, N_CAND = 8 };
    float a[V], b[V];
    unsigned char res[SAMPLER_RESULT_BYTES(N_CAND)];
    sampler_params p = sampler_default_params();
    p.temperature = 0.7f;
    sampler *ref = sampler_create(V, p), *dev = sampler_create(V, p);
    sampler_desc d = {0};
    for (int k = 0; k < 2; k++) {
        for (int i = 0; i < V; i++) a[i] = k ? (i % 5 ? (float)i : NAN) : NAN;
        memcpy(b, a, sizeof(a));
        int32_t want = sampler_sample(ref, a, NULL, 0, NULL, 0);
        ck_assert(want >= 0 && want < V);
        sampler_desc_begin(&d, 1);
        sampler_desc_set(&d, 0, dev, 0, NULL, NULL, 0, NULL, 0, NULL, 0);
        backend_sample(cpu, res, b, d.w, 1, V, V, N_CAND);
        ck_assert_int_eq(sampler_sample_candidates(dev, res, N_CAND), -1);
        ck_assert_int_eq(sampler_sample_applied(dev, b), want);
    }
    sampler_desc_free(&d);
    sampler_destroy(ref);
    sampler_destroy(dev);
    backend_destroy(cpu);
}
END_TEST

/* backend_ops.sample_argmax against the host's greedy path (sequence.c:
 * biases added, -inf where the grammar's mask says no, then sampler_sample at
 * temperature 0 with its penalties): one op over many rows of a description
 * whose first rows are not its own, rows out of order, ties on a coarse
 * grid, -0 and +0, masks that hide the row's maximum or allow one token, rows
 * whose allowed tokens are all -inf, NaNs hidden by the mask (no effect) and
 * not hidden (the op says -1; sampler_sample_applied on its row decides). */
START_TEST(greedy_rows_take_the_masked_argmax) {
    backend *cpu = backend_cpu_create();
    enum { V = 3001, R = 24, SKIP = 3, ITERS = 60 };
    int words = (V + 31) / 32;
    float *ref = malloc((size_t)R * V * sizeof(float)), *dev = malloc((size_t)R * V * sizeof(float));
    uint32_t *mask = malloc((size_t)words * sizeof(uint32_t));
    int32_t next[R], prompt[40], out[30], bias_ids[3] = {17, 17, 2900};
    float bias_vals[3] = {2.0f, 1.5f, 9.0f};
    sampler_desc d = {0};
    long masked = 0, nan_rows = 0, hidden_max = 0, all_inf = 0;
    for (int iter = 0; iter < ITERS; iter++) {
        sampler *smp[R];
        int32_t want[R];
        ck_assert_int_eq(sampler_desc_begin(&d, SKIP + R), 0);
        for (int r = 0; r < SKIP; r++) { /* rows of backend_ops.sample: not the op's */
            sampler *s = sampler_create(V, sampler_default_params());
            ck_assert_int_eq(sampler_desc_set(&d, r, s, 0, NULL, NULL, 0, NULL, 0, NULL, 0), 0);
            sampler_destroy(s);
        }
        for (int r = 0; r < R; r++) {
            sampler_params p = rand_params(V);
            p.temperature = 0.0f;
            smp[r] = sampler_create(V, p);
            int row = (r * 7 + iter) % R, n_bias = irand(4), kind = irand(8);
            float *a = ref + (size_t)row * V, *b = dev + (size_t)row * V;
            fill_row(a, V);
            for (int i = 0; i < 40; i++) prompt[i] = irand(V);
            for (int i = 0; i < 30; i++) out[i] = i % 4 ? irand(V) : 17;
            bool use_mask = kind < 6;
            if (use_mask) { /* few allowed, about half, or one */
                memset(mask, 0, (size_t)words * sizeof(uint32_t));
                int keep = kind == 0 ? 1 : 1 + irand(20);
                for (int i = 0; i < V; i++)
                    if (kind == 1 ? irand(2) : irand(V) < keep) mask[i >> 5] |= 1u << (i & 31);
                mask[irand(V) >> 5] |= 1u << irand(32); /* at least one (maybe past V: unused) */
                mask[0] |= kind == 0; /* one allowed token at least */
                int top = 0;
                for (int i = 1; i < V; i++) top = a[i] > a[top] ? i : top;
                if (irand(2)) mask[top >> 5] &= ~(1u << (top & 31)), hidden_max++; /* the maximum is not allowed */
                if (kind == 2) { /* every allowed token -inf: the host takes id 0, allowed or not */
                    for (int i = 0; i < V; i++)
                        if ((mask[i >> 5] >> (i & 31)) & 1) a[i] = -INFINITY;
                    all_inf++;
                }
                if (kind == 3) { /* a NaN the mask hides, or one it lets through */
                    int at = irand(V);
                    a[at] = NAN;
                    nan_rows += (mask[at >> 5] >> (at & 31)) & 1;
                }
                masked++;
            } else if (kind == 6) {
                a[irand(V)] = NAN;
                nan_rows++;
            }
            memcpy(b, a, V * sizeof(float));
            for (int i = 0; i < n_bias; i++) a[bias_ids[i]] += bias_vals[i];
            if (use_mask)
                for (int i = 0; i < V; i++)
                    if (!((mask[i >> 5] >> (i & 31)) & 1)) a[i] = -INFINITY;
            want[r] = sampler_sample(smp[r], a, prompt, 40, out, 30);
            ck_assert_int_eq(sampler_desc_set(&d, SKIP + r, smp[r], row, bias_ids, bias_vals, n_bias, prompt, 40, out,
                                              30), 0);
            if (use_mask) ck_assert_int_eq(sampler_desc_set_mask(&d, SKIP + r, mask, words), 0);
        }
        backend_sample_argmax(cpu, next, dev, d.w, SKIP, R, V, V);
        for (int r = 0; r < R; r++) {
            const int32_t *h = d.w + (size_t)(SKIP + r) * SAMPLER_DESC_WORDS;
            float *b = dev + (size_t)h[SAMPLER_DESC_ROW] * V;
            bool nan = false;
            for (int i = 0; i < V; i++) nan |= isnan(b[i]);
            ck_assert_int_eq(next[r], nan ? -1 : want[r]);
            if (nan) ck_assert_int_eq(sampler_sample_applied(smp[r], b), want[r]); /* the row is left edited */
            sampler_destroy(smp[r]);
        }
    }
    fprintf(stderr, "greedy rows %d: %ld masked (%ld hiding the maximum, %ld all -inf), %ld with a NaN let through\n",
            ITERS * R, masked, hidden_max, all_inf, nan_rows);
    ck_assert_int_gt(nan_rows, 0);
    ck_assert_int_gt(all_inf, 0);
    sampler_desc_free(&d);
    free(ref);
    free(dev);
    free(mask);
    backend_destroy(cpu);
}
END_TEST

int main(void) {
    Suite *s = suite_create("sampler_backend");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, candidates_pick_the_same_tokens);
    tcase_add_test(tc, candidates_settle_peaked_rows);
    tcase_add_test(tc, nan_rows_give_tokens);
    tcase_add_test(tc, greedy_rows_take_the_masked_argmax);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
