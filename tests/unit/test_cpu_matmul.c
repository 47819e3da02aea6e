/* engine/backend/cpu: the matrix product on each ISA path this CPU runs
 * (--cpu-isa generic, avx2, avx512, avx512bf16), for bf16, f32 and f16
 * (widened) weights, shapes with row, token and reduction tails.
 *   - Accuracy: every element is within the worst-case bound of recursive f32
 *     summation of the exact products (|y - s| <= (d + 2) u sum|x_k w_k| (+ |b|),
 *     u = 2^-24), s the sum in long double. This is the stated tolerance
 *     between paths: the generic path (no FMA, 8 lanes) and the FMA paths (8 or
 *     16 lanes) round differently, so they agree to it, not bit for bit.
 *     The opt-in avx512bf16 path rounds the activations to bf16 (unit roundoff
 *     2^-8) for bf16 weights: its bound there is (2^-8 + (d + 3) u) sum|x_k w_k|
 *     (+ |b|); but not for a weight that keeps f32 activations
 *     (weight.f32_activations, DeepSeek-V4.1's quantised and ranked products),
 *     whose products on that path are held to the f32 bound and equal the
 *     avx512 path's bit for bit.
 *   - Batch invariance: on each path, each token's row of a T-token product
 *     (T = 1..9) is bit-identical to that token's product alone.
 *   - Row-range invariance: the product with rows [r0, r0 + n) of the matrix
 *     (model_weight_row_view, as a tensor-parallel rank holds them) is
 *     bit-identical to those columns of the whole product, for ranges that
 *     start and end inside the row blocks and tiles.
 *   - The grouped product (matmul_grouped, DeepSeek-V4's output projection)
 *     is bit for bit the loop it stands for: per group, the group's columns of
 *     x copied out and matmul with the group's rows (a row view), on every
 *     path, for dense, FP8 and FP4 weights, x with and without a row stride
 *     beyond its groups, groups whose rows end inside a row block.
 * A path the CPU lacks is refused by backend_select with a clear error.
 * And attention's batched reduction (cpu__lanes_sum8) is bit for bit eight
 * cpu__lanes_sum trees, on sums whose order shows (mixed magnitudes). */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/numeric.h"
#include "engine/backend/backend.h"
#include "engine/backend/cpu/cpu_internal.h"
#include "engine/model/model.h"

enum { N = 37, TMAX = 9 }; /* 37 rows: two blocks of 16 and 5 (a 4-row group and one more) */

static uint64_t rng = 88172645463325252ull;
static uint64_t next(void) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return rng;
}
static float uniform(void) { return (float)((double)(next() >> 11) / 9007199254740992.0 - 0.5); }

static float weight_at(const weight *w, size_t i) {
    const uint16_t *h = w->data;
    return w->dt == DTYPE_F32 ? ((const float *)w->data)[i] : w->dt == DTYPE_BF16 ? bf16_to_f32(h[i]) : f16_to_f32(h[i]);
}

/* Random weights of dt: bf16 from the top half of a uniform f32, f16 codes of
 * magnitude 2^-5 .. 2^2 with random signs and mantissas. */
static weight make_weight(dtype dt, int d) {
    size_t n = (size_t)N * d, esz = dt == DTYPE_F32 ? 4 : 2;
    void *data = malloc(n * esz);
    for (size_t i = 0; i < n; i++) {
        float f = uniform();
        uint32_t u;
        memcpy(&u, &f, 4);
        if (dt == DTYPE_F32) ((float *)data)[i] = f;
        else if (dt == DTYPE_BF16) ((uint16_t *)data)[i] = (uint16_t)(u >> 16);
        else ((uint16_t *)data)[i] = (uint16_t)((next() & 0x8000) | ((10 + next() % 8) << 10) | (next() & 0x3ff));
    }
    return (weight){.data = data, .dt = dt, .rows = N, .cols = d, .fmt = WEIGHT_DENSE};
}

static void check_path(int isa, dtype dt, int d, bool f32_act) {
    backend_params p = backend_default_params();
    p.cpu_isa = isa;
    char err[256] = "";
    backend *be = backend_select("cpu", &p, err, sizeof(err));
    ck_assert_msg(be != NULL, "%s: %s", backend_cpu_isa_str(isa), err);
    weight w = make_weight(dt, d);
    w.f32_activations = f32_act;
    float *x = malloc((size_t)TMAX * d * sizeof(float)), bias[N];
    float *y = malloc((size_t)TMAX * N * sizeof(float)), *y1 = malloc(N * sizeof(float));
    float *yv = malloc((size_t)TMAX * N * sizeof(float));
    for (int i = 0; i < TMAX * d; i++) x[i] = uniform();
    for (int i = 0; i < N; i++) bias[i] = uniform();
    for (int T = 1; T <= TMAX; T++) {
        const float *b = T % 2 ? bias : NULL;
        backend_matmul(be, y, x, &w, b, T);
        static const int ranges[][2] = {{5, 11}, {16, 21}, {3, 1}, {33, 4}, {1, 35}};
        for (int r = 0; r < 5; r++) {
            int r0 = ranges[r][0], nr = ranges[r][1];
            weight v = model_weight_row_view(&w, r0, nr);
            backend_matmul(be, yv, x, &v, b ? b + r0 : NULL, T);
            for (int t = 0; t < T; t++)
                ck_assert_msg(!memcmp(yv + (size_t)t * nr, y + (size_t)t * N + r0, (size_t)nr * sizeof(float)),
                              "%s dt %d d %d: rows [%d, %d) of %d tokens differ from the whole product's",
                              backend_cpu_isa_str(isa), dt, d, r0, r0 + nr, T);
        }
        for (int t = 0; t < T; t++) {
            backend_matmul(be, y1, x + (size_t)t * d, &w, b, 1);
            ck_assert_msg(memcmp(y1, y + (size_t)t * N, N * sizeof(float)) == 0,
                          "%s dt %d d %d: token %d of %d differs from the token alone", backend_cpu_isa_str(isa),
                          dt, d, t, T);
            for (int i = 0; i < N; i++) {
                long double s = b ? b[i] : 0, mag = b ? fabsf(b[i]) : 0;
                for (int k = 0; k < d; k++) {
                    long double v = (long double)x[(size_t)t * d + k] * weight_at(&w, (size_t)i * d + k);
                    s += v, mag += fabsl(v);
                }
                bool xb = isa == BACKEND_CPU_ISA_AVX512BF16 && dt == DTYPE_BF16 && !f32_act; /* x rounded */
                double rel = xb ? 0x1p-8 + (d + 3) * 0x1p-24 : (d + 2) * 0x1p-24;
                double tol = rel * (double)mag, e = fabs((double)(y1[i] - s));
                ck_assert_msg(e <= tol, "%s dt %d d %d: y[%d][%d] = %.9g, exact %.9Lg, error %g > %g",
                              backend_cpu_isa_str(isa), dt, d, t, i, y1[i], s, e, tol);
            }
        }
    }
    free((void *)w.data), free(x), free(y), free(y1), free(yv);
    backend_destroy(be);
}

static const int isas[] = {BACKEND_CPU_ISA_GENERIC, BACKEND_CPU_ISA_AVX2, BACKEND_CPU_ISA_AVX512,
                           BACKEND_CPU_ISA_AVX512BF16};

/* _i: the path; each dtype and width (tails of 8 and 16 lanes, a long row, and
 * one past two of the avx512bf16 prefill's reduction pieces (BF16_KC, 2048)
 * with a tail: its chains paused and taken up again) */
START_TEST(paths_accurate_and_batch_invariant) {
    int isa = isas[_i];
    backend_params p = backend_default_params();
    p.cpu_isa = isa;
    char err[256] = "";
    backend *be = backend_select("cpu", &p, err, sizeof(err));
    if (!be) { /* a path this CPU lacks: refused clearly, nothing to run */
        ck_assert_ptr_nonnull(strstr(err, "not supported by this CPU"));
        fprintf(stderr, "test_cpu_matmul: %s skipped: %s\n", backend_cpu_isa_str(isa), err);
        return;
    }
    backend_destroy(be);
    static const int ds[] = {5, 64, 200, 2048, 4200};
    static const dtype dts[] = {DTYPE_BF16, DTYPE_F32, DTYPE_F16};
    for (int j = 0; j < 3; j++)
        for (int k = 0; k < 5; k++) check_path(isa, dts[j], ds[k], false);
    for (int k = 0; k < 5; k++) check_path(isa, DTYPE_BF16, ds[k], true); /* f32 activations kept */
}
END_TEST

/* A bf16 weight that keeps f32 activations: the avx512bf16 path's product is the avx512 path's,
 * bit for bit, at every token count (the activations are not rounded: the same code runs). */
START_TEST(f32_activations_take_the_f32_path) {
    backend_params p = backend_default_params();
    char err[256] = "";
    p.cpu_isa = BACKEND_CPU_ISA_AVX512BF16;
    backend *bf = backend_select("cpu", &p, err, sizeof(err));
    if (!bf) {
        fprintf(stderr, "test_cpu_matmul: avx512bf16 skipped: %s\n", err);
        return;
    }
    p.cpu_isa = BACKEND_CPU_ISA_AVX512;
    backend *f = backend_select("cpu", &p, err, sizeof(err));
    ck_assert_msg(f != NULL, "%s", err);
    enum { D = 200, T = 40 };
    weight w = make_weight(DTYPE_BF16, D);
    w.f32_activations = true;
    float *x = malloc((size_t)T * D * sizeof(float)), *y = malloc((size_t)T * N * sizeof(float));
    float *yf = malloc((size_t)T * N * sizeof(float));
    for (int i = 0; i < T * D; i++) x[i] = uniform();
    for (int t = 1; t <= T; t += 13) {
        backend_matmul(bf, y, x, &w, NULL, t);
        backend_matmul(f, yf, x, &w, NULL, t);
        ck_assert_msg(memcmp(y, yf, (size_t)t * N * sizeof(float)) == 0, "T=%d: avx512bf16 rounded the activations", t);
    }
    free((void *)w.data), free(x), free(y), free(yf);
    backend_destroy(bf);
    backend_destroy(f);
}
END_TEST

/* A (rows, cols) matrix of format fmt (WEIGHT_DENSE: dt) with random values: FP8 codes with one ue8m0
 * scale per 16 x 16 block (a group's rows start inside one: row views read it by row_base), FP4 codes
 * with one per 32 values of a row (DeepSeek-V4's layouts). */
static weight make_matrix(weight_format fmt, dtype dt, int rows, int cols) {
    weight w = {.rows = rows, .cols = cols, .fmt = fmt, .dt = dt};
    size_t n = (size_t)rows * cols;
    if (fmt == WEIGHT_DENSE) {
        size_t esz = dt == DTYPE_F32 ? 4 : 2;
        uint8_t *d = malloc(n * esz);
        for (size_t i = 0; i < n; i++) {
            float f = uniform();
            if (dt == DTYPE_F32) memcpy(d + 4 * i, &f, 4);
            else {
                uint16_t h = dt == DTYPE_BF16 ? f32_to_bf16(f) : (uint16_t)((next() & 0x8000) | ((10 + next() % 8) << 10) | (next() & 0x3ff));
                memcpy(d + 2 * i, &h, 2);
            }
        }
        w.data = d;
        return w;
    }
    int fp8 = fmt == WEIGHT_FP8, br = fp8 ? 16 : 1, bc = fp8 ? 16 : 32;
    size_t bytes = fp8 ? n : n / 2;
    uint8_t *q = malloc(bytes);
    for (size_t i = 0; i < bytes; i++) {
        q[i] = (uint8_t)next();
        if (fp8 && (q[i] & 0x7f) == 0x7f) q[i] ^= 1; /* e4m3fn's NaN codes */
    }
    w.dt = fp8 ? DTYPE_F8_E4M3 : DTYPE_I8;
    w.block_rows = br, w.block_cols = bc;
    w.scale_rows = (rows + br - 1) / br, w.scale_cols = (cols + bc - 1) / bc;
    uint8_t *sc = malloc((size_t)w.scale_rows * w.scale_cols);
    for (int i = 0; i < w.scale_rows * w.scale_cols; i++) sc[i] = (uint8_t)(122 + next() % 8); /* 2^-5 .. 2^2 */
    w.scale = sc, w.scale_dt = DTYPE_F8_E8M0;
    w.data = q;
    return w;
}

/* _i: the path. Each group's columns of y against matmul of its row view on its columns of x,
 * copied out: memcmp. */
START_TEST(grouped_is_per_group_products) {
    int isa = isas[_i];
    backend_params p = backend_default_params();
    p.cpu_isa = isa;
    char err[256] = "";
    backend *be = backend_select("cpu", &p, err, sizeof(err));
    if (!be) return; /* a path this CPU lacks (paths_accurate_and_batch_invariant checks the refusal) */
    /* G, R, K, extra floats at the end of each x row: R = 37 ends inside the third row block, K =
     * 4200 passes two of avx512bf16's reduction pieces; T up to 20 (x's prep in two pieces of 16
     * rows), and on the pool at the widest */
    static const int shapes[][4] = {{3, 37, 200, 5}, {8, 16, 64, 0}, {2, 5, 4200, 0}, {1, 21, 96, 40}};
    static const int Ts[] = {1, 2, 3, 4, 5, 9, 20};
    static const struct {
        weight_format fmt;
        dtype dt;
    } kinds[] = {{WEIGHT_DENSE, DTYPE_BF16}, {WEIGHT_DENSE, DTYPE_F32}, {WEIGHT_DENSE, DTYPE_F16},
                 {WEIGHT_FP8, DTYPE_F8_E4M3}, {WEIGHT_FP4, DTYPE_I8}};
    for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
        int G = shapes[s][0], R = shapes[s][1], K = shapes[s][2];
        size_t xs = (size_t)G * K + (size_t)shapes[s][3];
        float *x = malloc(20 * xs * sizeof(float)), *y = malloc((size_t)20 * G * R * sizeof(float));
        float *xg = malloc((size_t)20 * K * sizeof(float)), *yg = malloc((size_t)20 * R * sizeof(float));
        for (size_t i = 0; i < 20 * xs; i++) x[i] = uniform();
        for (size_t k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++) {
            weight w = make_matrix(kinds[k].fmt, kinds[k].dt, G * R, K);
            for (size_t ti = 0; ti < sizeof(Ts) / sizeof(Ts[0]); ti++) {
                int T = Ts[ti];
                backend_matmul_grouped(be, y, x, xs, &w, G, T);
                for (int g = 0; g < G; g++) {
                    weight v = model_weight_row_view(&w, g * R, R);
                    for (int t = 0; t < T; t++) memcpy(xg + (size_t)t * K, x + t * xs + (size_t)g * K, (size_t)K * 4);
                    backend_matmul(be, yg, xg, &v, NULL, T);
                    for (int t = 0; t < T; t++)
                        ck_assert_msg(!memcmp(yg + (size_t)t * R, y + (size_t)t * G * R + (size_t)g * R,
                                              (size_t)R * sizeof(float)),
                                      "%s fmt %d dt %d G %d R %d K %d T %d: group %d token %d differs from its product",
                                      backend_cpu_isa_str(isa), kinds[k].fmt, kinds[k].dt, G, R, K, T, g, t);
                }
            }
            free((void *)w.data), free((void *)w.scale);
        }
        free(x), free(y), free(xg), free(yg);
    }
    ck_assert(!backend_take_failure(be));
    backend_destroy(be);
}
END_TEST

START_TEST(lanes_sum8_is_eight_trees) {
    for (int rep = 0; rep < 1000; rep++) {
        cpu__v8 a[8];
        for (int p = 0; p < 8; p++)
            for (int l = 0; l < 8; l++) a[p][l] = ldexpf(uniform(), (int)(next() % 48) - 24);
        cpu__v8 s = cpu__lanes_sum8(a);
        for (int p = 0; p < 8; p++) {
            float one = cpu__lanes_sum(a[p]);
            ck_assert_msg(memcmp(&one, &s[p], sizeof(float)) == 0, "row %d: %a against %a", p, s[p], one);
        }
    }
}
END_TEST

/* auto resolves to a concrete path, never the opt-in avx512bf16, and the
 * names parse both ways. */
START_TEST(auto_and_names) {
    backend *be = backend_cpu_create();
    ck_assert_int_ne(be->params.cpu_isa, BACKEND_CPU_ISA_AUTO);
    ck_assert_int_ne(be->params.cpu_isa, BACKEND_CPU_ISA_AVX512BF16);
    backend_destroy(be);
    for (int i = 0; i < 5; i++) ck_assert_int_eq(backend_cpu_isa_parse(backend_cpu_isa_str(i)), i);
    ck_assert_int_eq(backend_cpu_isa_parse("sse"), -1);
    ck_assert_int_eq(backend_cpu_isa_parse(NULL), -1);
}
END_TEST

int main(void) {
    Suite *s = suite_create("cpu_matmul");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, paths_accurate_and_batch_invariant, 0, 4);
    tcase_add_loop_test(tc, grouped_is_per_group_products, 0, 4);
    tcase_add_test(tc, auto_and_names);
    tcase_add_test(tc, f32_activations_take_the_f32_path);
    tcase_add_test(tc, lanes_sum8_is_eight_trees);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
