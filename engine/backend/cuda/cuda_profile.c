/* Op timing for the CUDA backend (backend_params.cuda_profile). Mode 1:
 * every op is bracketed by two events (recorded steps are off, so each op is
 * issued on its own) and its device time added to a per-name total, printed
 * to stderr when the backend is destroyed with the wall time from the first
 * op to the last: the difference is time the GPU waited for the host. Names
 * carry a size class (matmul shape and tokens, attention step kind). Mode 2
 * keeps recorded steps and times each replay as one op. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "engine/backend/cuda/cuda_internal.h"

static double prof__now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void prof__flush(cuda_backend *g) {
    if (!g->prof.n) return;
    CHECK_CUDA(cudaEventSynchronize(g->prof.ev[2 * g->prof.n - 1]));
    for (int i = 0; i < g->prof.n; i++) {
        float ms = 0;
        CHECK_CUDA(cudaEventElapsedTime(&ms, g->prof.ev[2 * i], g->prof.ev[2 * i + 1]));
        g->prof.e[g->prof.name[i]].ms += ms;
        g->prof.e[g->prof.name[i]].calls++;
        g->prof.ms_sum += ms;
    }
    g->prof.n = 0;
    g->prof.wall1 = prof__now();
}

int prof__begin(cuda_backend *g, const char *fmt, ...) {
    if (!g->prof.on || g->capturing >= 0) return -1;
    char s[56];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s, sizeof(s), fmt, ap);
    va_end(ap);
    int k = 0;
    while (k < g->prof.ne && strcmp(g->prof.e[k].s, s)) k++;
    if (k == g->prof.ne) {
        if (g->prof.ne == PROF_NAMES) k = PROF_NAMES - 1; /* the last name takes the overflow */
        else snprintf(g->prof.e[g->prof.ne++].s, sizeof(g->prof.e[0].s), "%s", s);
    }
    if (g->prof.n == PROF_PAIRS) prof__flush(g);
    if (g->prof.wall0 == 0) g->prof.wall0 = prof__now();
    int i = g->prof.n++;
    g->prof.name[i] = k;
    CHECK_CUDA(cudaEventRecord(g->prof.ev[2 * i], g->stream));
    return i;
}

void prof__end(cuda_backend *g, int i) {
    if (i >= 0) CHECK_CUDA(cudaEventRecord(g->prof.ev[2 * i + 1], g->stream));
}

const char *prof__tclass(int T) {
    return T <= 2 ? "T<=2" : T <= 16 ? "T<=16" : T <= 64 ? "T<=64" : T <= 256 ? "T<=256" : T <= 1024 ? "T<=1024"
                                                                                                  : "T>1024";
}

static void prof__report(cuda_backend *g) {
    prof__flush(g);
    if (!g->prof.ne) return;
    int order[PROF_NAMES];
    for (int i = 0; i < g->prof.ne; i++) order[i] = i;
    for (int i = 1; i < g->prof.ne; i++) /* by total time, largest first */
        for (int j = i; j > 0 && g->prof.e[order[j]].ms > g->prof.e[order[j - 1]].ms; j--) {
            int t = order[j];
            order[j] = order[j - 1], order[j - 1] = t;
        }
    double wall = (g->prof.wall1 - g->prof.wall0) * 1e3;
    fprintf(stderr, "cuda profile: ops %.1f ms of device time, %.1f ms wall from the first op to the last\n",
            g->prof.ms_sum, wall);
    for (int i = 0; i < g->prof.ne; i++) {
        int k = order[i];
        fprintf(stderr, "cuda profile: %-56s %8ld calls %10.2f ms %5.1f%% %9.2f us/call\n", g->prof.e[k].s,
                g->prof.e[k].calls, g->prof.e[k].ms, 100 * g->prof.e[k].ms / (g->prof.ms_sum > 0 ? g->prof.ms_sum : 1),
                1e3 * g->prof.e[k].ms / (g->prof.e[k].calls ? g->prof.e[k].calls : 1));
    }
}

cudaError_t prof__init(cuda_backend *g, int mode) {
    if (!mode) return cudaSuccess;
    for (int i = 0; i < 2 * PROF_PAIRS; i++) {
        cudaError_t e = cudaEventCreate(&g->prof.ev[i]);
        if (e != cudaSuccess) return e;
    }
    g->prof.on = mode;
    return cudaSuccess;
}

void prof__finish(cuda_backend *g) {
    if (!g->prof.on) return;
    prof__report(g);
    for (int i = 0; i < 2 * PROF_PAIRS; i++) cudaEventDestroy(g->prof.ev[i]);
    g->prof.on = 0;
}
