/* Memory read bandwidth of this machine: the bound for CPU decode, which
 * reads every weight once per token. Several access patterns over a buffer
 * much larger than the caches, each with 1 thread and with all OpenMP threads
 * (each thread its own contiguous share), best of several passes in GB/s:
 *   scalar   the plain C sum loop (what the compiler makes of it)
 *   avx2     256-bit loads into 4 independent accumulators
 *   avx512   512-bit loads into 4 independent accumulators
 *   nt       512-bit non-temporal loads (vmovntdqa)
 *   rows4/8  4 or 8 interleaved streams of 4 KiB rows (a matrix-vector
 *            product's access: several weight rows read side by side)
 *   pf       avx512 with a software prefetch 1 KiB ahead
 * Patterns the CPU lacks are skipped. The last line is the best of all.
 *
 *   build/bench-membw [MiB]   (default 1024) */
#include <immintrin.h>
#include <limits.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/util.h"

typedef float (*pattern_fn)(const float *a, size_t n); /* sums a[0, n): n a multiple of 8192 */

static float sum_scalar(const float *a, size_t n) {
    float s = 0;
    for (size_t i = 0; i < n; i += 8)
        s += a[i] + a[i + 1] + a[i + 2] + a[i + 3] + a[i + 4] + a[i + 5] + a[i + 6] + a[i + 7];
    return s;
}

__attribute__((target("avx2"))) static float sum_avx2(const float *a, size_t n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    for (size_t i = 0; i < n; i += 32) {
        s0 = _mm256_add_ps(s0, _mm256_loadu_ps(a + i));
        s1 = _mm256_add_ps(s1, _mm256_loadu_ps(a + i + 8));
        s2 = _mm256_add_ps(s2, _mm256_loadu_ps(a + i + 16));
        s3 = _mm256_add_ps(s3, _mm256_loadu_ps(a + i + 24));
    }
    __m256 s = _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3));
    return s[0] + s[7];
}

#define AVX512 "avx512f"
__attribute__((target(AVX512))) static float sum_avx512(const float *a, size_t n) {
    __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    for (size_t i = 0; i < n; i += 64) {
        s0 = _mm512_add_ps(s0, _mm512_loadu_ps(a + i));
        s1 = _mm512_add_ps(s1, _mm512_loadu_ps(a + i + 16));
        s2 = _mm512_add_ps(s2, _mm512_loadu_ps(a + i + 32));
        s3 = _mm512_add_ps(s3, _mm512_loadu_ps(a + i + 48));
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

__attribute__((target(AVX512))) static float sum_nt(const float *a, size_t n) {
    __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    for (size_t i = 0; i < n; i += 64) {
        s0 = _mm512_add_ps(s0, _mm512_castsi512_ps(_mm512_stream_load_si512((void *)(a + i))));
        s1 = _mm512_add_ps(s1, _mm512_castsi512_ps(_mm512_stream_load_si512((void *)(a + i + 16))));
        s2 = _mm512_add_ps(s2, _mm512_castsi512_ps(_mm512_stream_load_si512((void *)(a + i + 32))));
        s3 = _mm512_add_ps(s3, _mm512_castsi512_ps(_mm512_stream_load_si512((void *)(a + i + 48))));
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

__attribute__((target(AVX512))) static float sum_pf(const float *a, size_t n) {
    __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    for (size_t i = 0; i < n; i += 64) {
        _mm_prefetch((const char *)(a + i) + 1024, _MM_HINT_T0);
        s0 = _mm512_add_ps(s0, _mm512_loadu_ps(a + i));
        s1 = _mm512_add_ps(s1, _mm512_loadu_ps(a + i + 16));
        s2 = _mm512_add_ps(s2, _mm512_loadu_ps(a + i + 32));
        s3 = _mm512_add_ps(s3, _mm512_loadu_ps(a + i + 48));
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

/* R rows of 1024 floats read side by side, 16 floats of each in turn. */
__attribute__((target(AVX512))) static float rows_sum(const float *a, size_t n, int R) {
    __m512 s = _mm512_setzero_ps();
    for (size_t b = 0; b < n; b += (size_t)R * 1024)
        for (int k = 0; k < 1024; k += 16)
            for (int r = 0; r < R; r++) s = _mm512_add_ps(s, _mm512_loadu_ps(a + b + (size_t)r * 1024 + k));
    return _mm512_reduce_add_ps(s);
}
__attribute__((target(AVX512))) static float sum_rows4(const float *a, size_t n) { return rows_sum(a, n, 4); }
__attribute__((target(AVX512))) static float sum_rows8(const float *a, size_t n) { return rows_sum(a, n, 8); }

/* Best GB/s of 5 passes of fn over a[0, n) with nt threads. */
static double measure(pattern_fn fn, const float *a, size_t n, int nt, double *sink) {
    double best = 0;
    for (int pass = 0; pass < 5; pass++) {
        double t0 = util_now(), s = 0;
#pragma omp parallel num_threads(nt) reduction(+ : s)
        {
            size_t share = n / 8192 / (size_t)omp_get_num_threads() * 8192;
            s += fn(a + share * (size_t)omp_get_thread_num(), share);
        }
        double gbs = (double)(n / 8192 / (size_t)nt * 8192 * nt) * sizeof(float) / (util_now() - t0) / 1e9;
        if (gbs > best) best = gbs;
        *sink += s;
    }
    return best;
}

int main(int argc, char **argv) {
    long mib = 1024;
    if (argc > 1 && util_parse_long(argv[1], 64, LONG_MAX >> 20, &mib)) {
        fprintf(stderr, "usage: bench-membw [MiB] (at least 64)\n");
        return 2;
    }
    size_t n = (size_t)mib * (1u << 20) / sizeof(float);
    float *a = aligned_alloc(64, n * sizeof(float));
    if (!a) {
        fprintf(stderr, "bench-membw: cannot allocate %ld MiB\n", mib);
        return 1;
    }
#pragma omp parallel for
    for (size_t i = 0; i < n; i++) a[i] = (float)(i & 1023);
    __builtin_cpu_init();
    int avx2 = __builtin_cpu_supports("avx2"), avx512 = __builtin_cpu_supports("avx512f");
    struct {
        const char *name;
        pattern_fn fn;
        int ok;
    } pats[] = {{"scalar", sum_scalar, 1},  {"avx2", sum_avx2, avx2},       {"avx512", sum_avx512, avx512},
                {"nt", sum_nt, avx512},     {"rows4", sum_rows4, avx512}, {"rows8", sum_rows8, avx512},
                {"pf", sum_pf, avx512}};
    int all = omp_get_max_threads();
    double best = 0, sink = 0;
    const char *best_name = "";
    for (size_t p = 0; p < sizeof(pats) / sizeof(pats[0]); p++) {
        if (!pats[p].ok) continue;
        double one = measure(pats[p].fn, a, n, 1, &sink), many = measure(pats[p].fn, a, n, all, &sink);
        printf("%-7s 1 thread %6.2f GB/s, %d threads %6.2f GB/s\n", pats[p].name, one, all, many);
        if (many > best) best = many, best_name = pats[p].name;
    }
    printf("read bandwidth: %.2f GB/s (best pattern %s, best of 5 passes over %ld MiB, %d threads) [%g]\n", best,
           best_name, mib, all, sink > 0 ? 1.0 : 0.0);
    free(a);
    return 0;
}
