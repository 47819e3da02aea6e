/* Memory read bandwidth of this machine: the bound for CPU decode, which
 * reads every weight once per token. Sums a buffer much larger than the
 * caches with all OpenMP threads; prints the best of several passes in GB/s.
 *
 *   build/bench-membw [MiB]   (default 1024) */
#include <limits.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

#include "base/util.h"

int main(int argc, char **argv) {
    long mib = 1024;
    if (argc > 1 && util_parse_long(argv[1], 1, LONG_MAX >> 20, &mib)) {
        fprintf(stderr, "usage: bench-membw [MiB]\n");
        return 2;
    }
    size_t n = (size_t)mib * (1u << 20) / sizeof(float);
    float *a = malloc(n * sizeof(float));
    if (!a) {
        fprintf(stderr, "bench-membw: cannot allocate %ld MiB\n", mib);
        return 1;
    }
#pragma omp parallel for
    for (size_t i = 0; i < n; i++) a[i] = (float)(i & 1023);
    double best = 0, sink = 0;
    for (int pass = 0; pass < 7; pass++) {
        double t0 = util_now(), s = 0;
#pragma omp parallel for reduction(+ : s)
        for (size_t i = 0; i < n; i += 8)
            s += a[i] + a[i + 1] + a[i + 2] + a[i + 3] + a[i + 4] + a[i + 5] + a[i + 6] + a[i + 7];
        double gbs = (double)n * sizeof(float) / (util_now() - t0) / 1e9;
        if (gbs > best) best = gbs;
        sink += s;
    }
    printf("read bandwidth: %.2f GB/s (best of 7 passes over %ld MiB, %d threads) [%g]\n", best, mib,
           omp_get_max_threads(), sink > 0 ? 1.0 : 0.0);
    free(a);
    return 0;
}
