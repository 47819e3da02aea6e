/* bench-hc: the cost of one DeepSeek-V4 hyper-connection on the CPU backend at
 * V4-Flash's shape (N = 4 streams of d = 4096, 20 Sinkhorn iterations): the
 * streams' plain RMSNorm, the fn product ((2+N)N x N d, f32), hc_split
 * (the maps, Sinkhorn and the collapse) and hc_merge, each timed alone, per
 * token, at T tokens. A layer has two hyper-connections.
 *   bench-hc [T ...]   (default 1 64) */
#include <stdio.h>
#include <stdlib.h>

#include "base/util.h"
#include "engine/backend/backend.h"

static float *rnd(size_t n, float s) {
    float *p = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) p[i] = s * (float)((double)rand() / RAND_MAX - 0.5);
    return p;
}

int main(int argc, char **argv) {
    const int N = 4, d = 4096, iters = 20, M = (2 + N) * N;
    backend *be = backend_cpu_create();
    float *fnw = rnd((size_t)M * N * d, 0.02f), *base = rnd(M, 1.0f), scale[3] = {0.5f, 0.7f, 0.9f};
    weight fn = {.data = fnw, .dt = DTYPE_F32, .rows = M, .cols = N * d};
    int ts[16], nt = 0;
    for (int i = 1; i < argc && nt < 16; i++) {
        long v;
        if (util_parse_long(argv[i], 1, 4096, &v)) {
            fprintf(stderr, "usage: bench-hc [T ...] (1..4096)\n");
            return 2;
        }
        ts[nt++] = (int)v;
    }
    if (!nt) ts[nt++] = 1, ts[nt++] = 64;
    for (int k = 0; k < nt; k++) {
        int T = ts[k];
        float *X = rnd((size_t)T * N * d, 1.0f), *Xn = malloc((size_t)T * N * d * sizeof(float));
        float *mix = malloc((size_t)T * M * sizeof(float)), *post = malloc((size_t)T * N * sizeof(float));
        float *comb = malloc((size_t)T * N * N * sizeof(float)), *x = malloc((size_t)T * d * sizeof(float));
        float *y = rnd((size_t)T * d, 1.0f);
        double t[4] = {0};
        int reps = T == 1 ? 2000 : 50;
        for (int r = 0; r < reps + 5; r++) { /* the first 5 warm up */
            double t0 = util_now();
            backend_rmsnorm_plain(be, Xn, X, T, N * d, 1e-6f);
            double t1 = util_now();
            backend_matmul(be, mix, Xn, &fn, NULL, T);
            double t2 = util_now();
            backend_hc_split(be, post, comb, x, X, mix, base, scale, T, N, d, iters, 1e-6f);
            double t3 = util_now();
            backend_hc_merge(be, X, y, post, comb, T, N, d);
            double t4 = util_now();
            if (r >= 5) t[0] += t1 - t0, t[1] += t2 - t1, t[2] += t3 - t2, t[3] += t4 - t3;
        }
        double per = 1e6 / ((double)reps * T);
        printf("{\"T\": %d, \"us_per_token\": {\"norm\": %.3f, \"fn_product\": %.3f, \"split_sinkhorn_collapse\": %.3f, "
               "\"merge\": %.3f, \"total\": %.3f}}\n",
               T, t[0] * per, t[1] * per, t[2] * per, t[3] * per, (t[0] + t[1] + t[2] + t[3]) * per);
        free(X), free(Xn), free(mix), free(post), free(comb), free(x), free(y);
    }
    free(fnw), free(base);
    backend_destroy(be);
    return 0;
}
