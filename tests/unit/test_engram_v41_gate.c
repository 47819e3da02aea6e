/* engine/backend: the CPU backend's engram_v41_gate (DeepSeek-V4.1's per-stream Engram gate,
 * DEEPSEEK_V4.md 5.6) against the formula in double precision on random streams, and its edges:
 * |s| below the clamp takes sqrt(1e-6) with the sign of s, +0 included; gates reported per
 * (token, stream); each token's result independent of the others in the step. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/backend/backend.h"

enum { T = 5, N = 4, D = 64 };

static float rnd(unsigned *s) {
    *s = *s * 1103515245u + 12345u;
    return ((float)((*s >> 8) & 0xffff) / 65536.0f - 0.5f) * 4.0f;
}

/* The gate of one stream in double: SGLang's formula, eps 1e-6, clamp 1e-6. */
static double gate_ref(const float *x, const float *key, const float *w) {
    double sx = 0, sk = 0, dot = 0;
    for (int i = 0; i < D; i++) sx += (double)x[i] * x[i], sk += (double)key[i] * key[i], dot += (double)x[i] * w[i] * key[i];
    double s = dot / sqrt(sx / D + 1e-6) / sqrt(sk / D + 1e-6) / sqrt((double)D);
    return 1.0 / (1.0 + exp(-copysign(sqrt(fmax(fabs(s), 1e-6)), s)));
}

START_TEST(matches_the_formula) {
    backend *be = backend_cpu_create();
    static float X[T * N * D], X0[T * N * D], kv[T * (N + 1) * D], w[N * D], gates[T * N], one[N * D];
    unsigned s = 41;
    for (int i = 0; i < T * N * D; i++) X[i] = X0[i] = rnd(&s);
    for (int i = 0; i < T * (N + 1) * D; i++) kv[i] = rnd(&s);
    for (int i = 0; i < N * D; i++) w[i] = 1.0f + 0.25f * rnd(&s);
    backend_engram_v41_gate(be, X, kv, w, T, N, D, 1e-6f, 1e-6f, gates);
    for (int t = 0; t < T; t++)
        for (int g = 0; g < N; g++) {
            const float *x0 = X0 + ((size_t)t * N + g) * D, *k = kv + (size_t)t * (N + 1) * D + g * D;
            const float *v = kv + (size_t)t * (N + 1) * D + N * D;
            double ref = gate_ref(x0, k, w + g * D);
            ck_assert_double_eq_tol(gates[t * N + g], ref, 1e-6);
            for (int i = 0; i < D; i++)
                ck_assert_float_eq(X[((size_t)t * N + g) * D + i], x0[i] + gates[t * N + g] * v[i]);
        }
    /* one token alone gives the bits it gave inside the step */
    float X1[N * D], g1[N];
    memcpy(X1, X0 + 3 * N * D, sizeof(X1));
    backend_engram_v41_gate(be, X1, kv + 3 * (N + 1) * D, w, 1, N, D, 1e-6f, 1e-6f, g1);
    ck_assert(memcmp(X1, X + 3 * N * D, sizeof(X1)) == 0 && memcmp(g1, gates + 3 * N, sizeof(g1)) == 0);
    /* |s| under the clamp: x = e0, key = e1 (s = +0), then key = e1 - 1e-9 e0 (s < 0, tiny) */
    for (int i = 0; i < N * D; i++) one[i] = 1.0f;
    memset(X, 0, sizeof(float) * N * D);
    memset(kv, 0, sizeof(float) * (N + 1) * D);
    for (int g = 0; g < N; g++) X[g * D] = 1.0f, kv[g * D + 1] = 1.0f;
    kv[1 * D] = -1e-9f;
    backend_engram_v41_gate(be, X, kv, one, 1, N, D, 1e-6f, 1e-6f, gates);
    float up = 1.0f / (1.0f + expf(-sqrtf(1e-6f))), down = 1.0f / (1.0f + expf(sqrtf(1e-6f)));
    ck_assert_float_eq(gates[0], up);
    ck_assert_float_eq(gates[1], down);
    backend_destroy(be);
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("engram_v41_gate");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, matches_the_formula);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *r = srunner_create(suite());
    srunner_run_all(r, CK_NORMAL);
    int failed = srunner_ntests_failed(r);
    srunner_free(r);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
