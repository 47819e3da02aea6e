/* engine/backend: the handle. Two CPU backends are independent (a fetch
 * channel's timers belong to its handle, not to the process), backend_select
 * makes the CPU backend by name and refuses an unknown device, and destroy
 * accepts NULL. The CPU's SwiGLU on every ISA path is bit for bit
 * x / (1 + expf(-x)) * u with libm's expf (the AVX-512 path computes glibc's
 * expf itself, 16 at a time), over every 512th float and the edges of its
 * fast range. So is Engram's short conv (its SiLU the same expf) of a step of
 * two sequences with histories, on the pool, and rope (whose table the CPU
 * keeps across calls) as the positions and frequencies change. The forward pass through a backend with the optional fused
 * products that take a norm (backend_norm) gives the CPU's logits bit for bit
 * when those ops are the sequences they stand for. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/backend/backend.h"
#include "engine/forward.h"

START_TEST(two_cpu_backends_are_independent) {
    backend *a = backend_cpu_create(), *b = backend_cpu_create();
    ck_assert_ptr_nonnull(a);
    ck_assert_ptr_nonnull(b);
    ck_assert_ptr_ne(a, b);
    char src[16] = "rows", dst[16] = {0};
    backend_fetch_mark(a, 0);
    backend_fetch_mark(b, 0);
    struct timespec pause = {0, 2000000}; /* 2 ms: the wait b measures */
    nanosleep(&pause, NULL);
    backend_fetch(b, 0, dst, src, sizeof(src)); /* only b's rows arrive */
    ck_assert_str_eq(dst, "rows");
    ck_assert(backend_fetch_sync(b, 0) > 0.001);
    ck_assert(backend_fetch_sync(a, 0) == 0.0); /* a's channel 0 saw no copy since its mark */
    backend_destroy(a);
    backend_destroy(b);
}
END_TEST

START_TEST(select_by_name) {
    char err[256] = "";
    backend *be = backend_select("cpu", NULL, err, sizeof(err));
    ck_assert_ptr_nonnull(be);
    ck_assert_str_eq(backend_name(be), "cpu");
    ck_assert_uint_eq(backend_kv_elem_bytes(be), sizeof(float));
    ck_assert(!backend_has(be, step_begin) && !backend_has(be, matmul_qkv) && backend_has(be, sample));
    backend_destroy(be);
    ck_assert_ptr_null(backend_select("tpu", NULL, err, sizeof(err)));
    ck_assert_ptr_nonnull(strstr(err, "unknown device 'tpu'"));
    backend_destroy(NULL);
    backend_params p = backend_default_params();
    ck_assert_int_eq(p.cuda_graphs, 1);
    ck_assert_int_eq(p.cuda_profile, 0);
}
END_TEST

START_TEST(swiglu_is_libm_expf) {
    enum { STRIDE = 4096 };
    size_t n = ((size_t)1 << 32) / STRIDE + 64;
    float *g = malloc(n * sizeof(float)), *x = malloc(n * sizeof(float)), *u = malloc(n * sizeof(float));
    float *want = malloc(n * sizeof(float));
    ck_assert(g && x && u && want);
    size_t m = 0;
    for (uint64_t b = 0; b < ((uint64_t)1 << 32); b += STRIDE) {
        uint32_t v = (uint32_t)(b + (b >> 12) % STRIDE); /* every low mantissa position over the run */
        memcpy(&x[m++], &v, 4);
    }
    static const float edges[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, 88.72f, 88.73f, -103.9f, -104.0f,
                                  64.0f, 127.99f, 128.0f, -128.0f, 0x1p-126f, 0x1p-149f, -0x1p-149f};
    for (size_t i = 0; i < sizeof(edges) / sizeof(edges[0]); i++) x[m++] = edges[i];
    for (size_t i = 0; i < m; i++) u[i] = i % 3 ? 1.0f : -0.75f, want[i] = x[i] / (1.0f + expf(-x[i])) * u[i];
    for (int isa = BACKEND_CPU_ISA_GENERIC; isa <= BACKEND_CPU_ISA_AVX512BF16; isa++) {
        backend_params p = backend_default_params();
        p.cpu_isa = isa;
        char err[256];
        backend *be = backend_select("cpu", &p, err, sizeof(err));
        if (!be) continue; /* a path this CPU lacks */
        for (size_t len = m; len >= m - 15; len -= 15) { /* a whole run, and a tail */
            memcpy(g, x, len * sizeof(float));
            backend_swiglu(be, g, u, len);
            size_t bad = 0, first = 0;
            for (size_t i = 0; i < len; i++) /* one assertion per run: check marks each one */
                if (memcmp(&want[i], &g[i], 4) && !(isnan(want[i]) && isnan(g[i])) && !bad++) first = i;
            ck_assert_msg(!bad, "%s: %zu differ, first x = %a: %a, libm %a", backend_cpu_isa_str(isa), bad, x[first],
                          g[first], want[first]);
        }
        backend_destroy(be);
    }
    free(g), free(x), free(u), free(want);
}
END_TEST

/* The CPU's ops plus matmul_qkv, matmul_glu (and matmul_ffn) as backend.h says they read:
 * rmsnorm (when given a norm) into norm->h, then the products; h is then
 * poisoned, as it holds nothing after (a backend that folds the norm never
 * writes it), so a reader of h after the op would see NaN. */
static backend_ops fused_ops;

static const float *seq_norm(backend *be, const float *x, const backend_norm *norm, int T, int cols) {
    if (!norm) return x;
    backend_rmsnorm(be, norm->h, x, norm->g, T, cols, norm->eps);
    return norm->h;
}
static void seq_poison(const backend_norm *norm, int T, int cols) {
    for (size_t i = 0; norm && i < (size_t)T * cols; i++) norm->h[i] = NAN;
}
static void seq_matmul_qkv(backend *be, float *q, float *k, float *v, const float *x, const backend_norm *norm,
                           const weight *wq, const weight *wk, const weight *wv, const float *bq, const float *bk,
                           const float *bv, int T) {
    const float *in = seq_norm(be, x, norm, T, wq->cols);
    backend_matmul(be, q, in, wq, bq, T);
    backend_matmul(be, k, in, wk, bk, T);
    backend_matmul(be, v, in, wv, bv, T);
    seq_poison(norm, T, wq->cols);
}
static void seq_matmul_glu(backend *be, float *gate, float *up, const float *x, const backend_norm *norm,
                           const weight *wg, const weight *wu, const float *bg, const float *bu, int T) {
    const float *in = seq_norm(be, x, norm, T, wg->cols);
    backend_matmul(be, gate, in, wg, bg, T);
    backend_matmul(be, up, in, wu, bu, T);
    backend_swiglu(be, gate, up, (size_t)T * wg->rows);
    seq_poison(norm, T, wg->cols);
}

/* matmul_ffn as its sequence: matmul_glu's (into work's two halves), then the down product added;
 * work is then poisoned too, as it holds nothing after. */
static int ffn_calls;
static void seq_matmul_ffn(backend *be, float *x, float *work, const backend_norm *norm, const weight *wg,
                           const weight *wu, const weight *wd, const float *bg, const float *bu, const float *bd,
                           int T) {
    ffn_calls++;
    size_t n = (size_t)T * wg->rows;
    float *tmp = malloc((size_t)T * wd->rows * sizeof(float));
    ck_assert(tmp);
    seq_matmul_glu(be, work, work + n, x, norm, wg, wu, bg, bu, T);
    backend_matmul(be, tmp, work, wd, bd, T);
    backend_add(be, x, tmp, (size_t)T * wd->rows);
    for (size_t i = 0; i < 2 * n; i++) work[i] = NAN;
    free(tmp);
}

/* A prompt of 7 tokens, then 3 single-token steps: the logits of each (4, V). */
static void run_fixture(model *m, backend *be, float *logits) {
    char err[256];
    forward_ctx *fc = NULL;
    forward_state *st = NULL;
    ck_assert_int_eq(forward_ctx_create(m, be, 16, 1, &fc, err, sizeof(err)), FORWARD_OK);
    ck_assert_int_eq(forward_state_create(fc, NULL, 16, &st), FORWARD_OK);
    int32_t ids[10] = {1, 7, 3, 12, 5, 9, 2, 11, 4, 6};
    size_t V = (size_t)m->cfg.vocab_size;
    ck_assert_int_eq(forward_run(fc, st, ids, 7, logits, NULL), FORWARD_OK);
    for (int i = 7; i < 10; i++) ck_assert_int_eq(forward_run(fc, st, ids + i, 1, logits + (i - 6) * V, NULL), FORWARD_OK);
    forward_state_destroy(st);
    forward_ctx_destroy(fc);
}

/* rope bit for bit its definition (rotate_half pairs, the angle the f32
 * product pos inv_freq, libm's cosf and sinf) through calls that change the
 * positions, then the frequencies in the same array, then neither: the CPU
 * keeps a step's table across its layers and must notice either change. */
START_TEST(rope_is_its_definition) {
    enum { T = 5, NH = 3, HD = 8, N = T * NH * HD };
    int32_t pa[T] = {0, 1, 2, 3, 4}, pb[T] = {7, 8, 9, 30, 31};
    float f[HD / 2] = {1.0f, 0.1f, 0.01f, 0.001f}, x0[N], x[N], want[N];
    for (int i = 0; i < N; i++) x0[i] = (float)(i % 7) - 2.5f;
    backend *be = backend_cpu_create();
    const int32_t *calls[4] = {pa, pb, pb, pb};
    for (int n = 0; n < 4; n++) {
        if (n == 2) f[1] = 0.2f; /* the same array, other frequencies */
        const int32_t *pos = calls[n];
        for (int t = 0; t < T; t++)
            for (int h = 0; h < NH; h++)
                for (int i = 0; i < HD / 2; i++) {
                    const float *v = x0 + (t * NH + h) * HD;
                    float a = (float)pos[t] * f[i], c = cosf(a), sn = sinf(a);
                    want[(t * NH + h) * HD + i] = v[i] * c - v[i + HD / 2] * sn;
                    want[(t * NH + h) * HD + i + HD / 2] = v[i + HD / 2] * c + v[i] * sn;
                }
        memcpy(x, x0, sizeof(x));
        backend_rope(be, x, pos, T, NH, HD, f);
        ck_assert_msg(!memcmp(x, want, sizeof(x)), "call %d", n);
    }
    backend_destroy(be);
}
END_TEST

/* The short conv of two sequences in one step (75 rows of 264 channels: the
 * pool's path, and a channel tail past the 16-wide vectors), with histories,
 * on every ISA path: bit for bit silu(sum_k w[c][k] x[t - (K-1-k) dil][c])
 * (k ascending, libm's expf), inputs before the step from the history, and
 * each history then the last R rows of (history, inputs). */
START_TEST(short_conv_is_its_definition) {
    enum { C = 264, K = 4, DIL = 3, R = (K - 1) * DIL, NA = 70, NB = 5, T = NA + NB };
    float *in = malloc(sizeof(float) * T * C), *w = malloc(sizeof(float) * C * K), *out = malloc(sizeof(float) * T * C);
    float h0[2][R * C], hist[2][R * C], want[T * C];
    ck_assert(in && w && out);
    uint32_t rng = 12345;
    for (int i = 0; i < T * C; i++) in[i] = (float)((rng = rng * 1664525u + 1013904223u) >> 8) / 16777216.0f * 8 - 4;
    for (int i = 0; i < C * K; i++) w[i] = (float)((rng = rng * 1664525u + 1013904223u) >> 8) / 16777216.0f - 0.5f;
    for (int i = 0; i < 2 * R * C; i++) (&h0[0][0])[i] = (float)((rng = rng * 1664525u + 1013904223u) >> 8) / 16777216.0f;
    int32_t start[3] = {0, NA, T};
    for (int s = 0; s < 2; s++)
        for (int t = start[s]; t < start[s + 1]; t++)
            for (int c = 0; c < C; c++) {
                float y = 0.0f;
                for (int k = 0; k < K; k++) {
                    int u = t - start[s] - (K - 1 - k) * DIL;
                    y += w[c * K + k] * (u >= 0 ? in[(start[s] + u) * C + c] : h0[s][(R + u) * C + c]);
                }
                want[t * C + c] = y / (1.0f + expf(-y));
            }
    for (int isa = BACKEND_CPU_ISA_GENERIC; isa <= BACKEND_CPU_ISA_AVX512BF16; isa++) {
        backend_params p = backend_default_params();
        p.cpu_isa = isa, p.cpu_threads = 2;
        char err[256];
        backend *be = backend_select("cpu", &p, err, sizeof(err));
        if (!be) continue; /* a path this CPU lacks */
        memcpy(hist, h0, sizeof(hist));
        float *hp[2] = {hist[0], hist[1]};
        batch_desc b = {.n_seqs = 2, .n_tokens = T, .seq_start = start, .h_seq_start = start, .seq_hist = hp};
        backend_short_conv(be, out, in, w, &b, 0, C, K, DIL);
        ck_assert_msg(!memcmp(out, want, sizeof(want)), "%s: the outputs differ", backend_cpu_isa_str(isa));
        ck_assert(!memcmp(hist[0], in + (NA - R) * C, sizeof(float) * R * C)); /* NA >= R: the last R inputs */
        ck_assert(!memcmp(hist[1], h0[1] + NB * C, sizeof(float) * (R - NB) * C)); /* NB < R: shifted, then NB inputs */
        ck_assert(!memcmp(hist[1] + (R - NB) * C, in + NA * C, sizeof(float) * NB * C));
        backend_destroy(be);
    }
    free(in), free(w), free(out);
}
END_TEST

START_TEST(forward_folds_norms_into_fused_products) {
    /* biases (qwen2), per-head q/k norms (qwen3), sparse layers whose FFN norm has two readers and
     * stays unfolded (qwen3_moe), Engram layers (qwen3_engram) */
    static const char *fixtures[] = {"llama3", "qwen2", "qwen3", "qwen3_moe", "qwen3_engram"};
    const char *src = getenv("ENGRAM_SOURCE_DIR");
    for (size_t f = 0; f < sizeof(fixtures) / sizeof(fixtures[0]); f++) {
        char dir[512], err[512];
        snprintf(dir, sizeof(dir), "%s/tests/fixtures/models/%s", src ? src : ".", fixtures[f]);
        model *m = NULL;
        ck_assert_msg(model_load(dir, &m, err, sizeof(err)) == MODEL_OK, "%s: %s", dir, err);
        size_t n = 4 * (size_t)m->cfg.vocab_size;
        float *want = malloc(n * sizeof(float)), *got = malloc(n * sizeof(float));
        ck_assert(want && got);
        backend *be = backend_cpu_create();
        run_fixture(m, be, want);
        const backend_ops *cpu_ops = be->ops;
        fused_ops = *cpu_ops;
        fused_ops.matmul_qkv = seq_matmul_qkv;
        fused_ops.matmul_glu = seq_matmul_glu;
        be->ops = &fused_ops;
        run_fixture(m, be, got);
        ck_assert_msg(!memcmp(want, got, n * sizeof(float)), "%s: the fused path's logits differ", fixtures[f]);
        fused_ops.matmul_ffn = seq_matmul_ffn; /* the whole feed-forward block as one op */
        memset(got, 0, n * sizeof(float));
        ffn_calls = 0;
        run_fixture(m, be, got);
        be->ops = cpu_ops;
        ck_assert_msg(!memcmp(want, got, n * sizeof(float)), "%s: matmul_ffn's logits differ", fixtures[f]);
        int dense = 0; /* layers with a dense feed-forward block: each step must take the op */
        for (int l = 0; l < m->cfg.n_layers; l++) dense += !m->layers[l].moe;
        ck_assert_int_eq(ffn_calls, 4 * dense);
        backend_destroy(be);
        model_destroy(m);
        free(want), free(got);
    }
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("backend");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, two_cpu_backends_are_independent);
    tcase_add_test(tc, select_by_name);
    tcase_add_test(tc, swiglu_is_libm_expf);
    tcase_add_test(tc, short_conv_is_its_definition);
    tcase_add_test(tc, rope_is_its_definition);
    tcase_add_test(tc, forward_folds_norms_into_fused_products);
    tcase_set_timeout(tc, 120);
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
