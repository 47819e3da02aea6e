/* Parity of every CUDA kernel in kernels/ with its CPU reference op in
 * engine/backend/cpu/backend_cpu.c, on fresh random inputs (never zeros), with the device
 * output poisoned (NaN) before each run so an unwritten element fails. Run on
 * the GPU machine: scripts/test-gpu. Prints one line per op; exits 1 if any
 * relative error ||gpu - cpu|| / ||cpu|| exceeds its bound or is NaN. */
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/backend/backend.h"
#include "kernels/kernels.h"

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static float frand(void) { /* uniform in [-1, 1) */
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (float)((rng >> 11) * 0x1.0p-53 * 2.0 - 1.0);
}
static float *rand_host(size_t n) {
    float *p = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) p[i] = frand();
    return p;
}

#define CK(x)                                                                                      \
    do {                                                                                           \
        cudaError_t e_ = (x);                                                                      \
        if (e_ != cudaSuccess) {                                                                   \
            fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, cudaGetErrorString(e_));           \
            exit(2);                                                                               \
        }                                                                                          \
    } while (0)

static void *to_dev(const void *h, size_t bytes) {
    void *d;
    CK(cudaMalloc(&d, bytes));
    CK(cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice));
    return d;
}
static float *poisoned(size_t n) { /* 0xFF bytes: NaN floats */
    float *d;
    CK(cudaMalloc((void **)&d, n * sizeof(float)));
    CK(cudaMemset(d, 0xFF, n * sizeof(float)));
    return d;
}

static int failures;

static void compare(const char *op, const float *dev, const float *ref, size_t n, double bound) {
    float *got = malloc(n * sizeof(float));
    CK(cudaDeviceSynchronize());
    CK(cudaMemcpy(got, dev, n * sizeof(float), cudaMemcpyDeviceToHost));
    double num = 0, den = 0;
    int nan = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(got[i]) || isnan(ref[i])) nan = 1;
        num += ((double)got[i] - ref[i]) * ((double)got[i] - ref[i]);
        den += (double)ref[i] * ref[i];
    }
    double rel = sqrt(num / (den > 0 ? den : 1));
    int ok = !nan && rel <= bound;
    printf("%-16s n=%-9zu rel_err=%.3e bound=%.0e %s\n", op, n, rel, bound, ok ? "ok" : "FAIL");
    failures += !ok;
    free(got);
}

int main(void) {
    backend *cpu = backend_cpu_create();
    const int T = 37, d = 512, nh = 8, hd = 64, H = 8, D = 32, rows = 5000, K = 4, dil = 3;

    { /* rmsnorm */
        float *x = rand_host((size_t)T * d), *w = rand_host(d), *ref = malloc((size_t)T * d * 4);
        backend_rmsnorm(cpu, ref, x, w, T, d, 1e-6f);
        float *dx = to_dev(x, (size_t)T * d * 4), *dw = to_dev(w, d * 4), *out = poisoned((size_t)T * d);
        if (kernels_rmsnorm_f32(out, dx, dw, T, d, 1e-6f, NULL)) failures++;
        compare("rmsnorm", out, ref, (size_t)T * d, 1e-5);
    }
    { /* rope */
        size_t n = (size_t)T * nh * hd;
        float *x = rand_host(n), *inv = malloc(hd / 2 * 4), *ref = malloc(n * 4);
        int32_t pos[64];
        for (int i = 0; i < hd / 2; i++) inv[i] = 1.0f / powf(10000.0f, (float)(2 * i) / hd);
        for (int t = 0; t < T; t++) pos[t] = 1000 + 7 * t;
        memcpy(ref, x, n * 4);
        backend_rope(cpu, ref, pos, T, nh, hd, inv);
        float *dx = to_dev(x, n * 4), *dinv = to_dev(inv, hd / 2 * 4);
        int *dpos = to_dev(pos, T * 4);
        if (kernels_rope_f32(dx, dpos, T, nh, hd, dinv, NULL)) failures++;
        compare("rope", dx, ref, n, 1e-5);
    }
    { /* swiglu and add */
        size_t n = (size_t)T * 1024;
        float *g = rand_host(n), *u = rand_host(n), *ref = malloc(n * 4);
        memcpy(ref, g, n * 4);
        backend_swiglu(cpu, ref, u, n);
        float *dg = to_dev(g, n * 4), *du = to_dev(u, n * 4);
        if (kernels_swiglu_f32(dg, du, n, NULL)) failures++;
        compare("swiglu", dg, ref, n, 1e-6);
        memcpy(ref, g, n * 4);
        backend_add(cpu, ref, u, n);
        float *da = to_dev(g, n * 4);
        if (kernels_add_f32(da, du, n, NULL)) failures++;
        compare("add", da, ref, n, 0);
    }
    { /* gather_rows from a bf16 table */
        uint16_t *tab = malloc((size_t)rows * D * 2);
        for (size_t i = 0; i < (size_t)rows * D; i++) {
            float f = frand();
            uint32_t b;
            memcpy(&b, &f, 4);
            tab[i] = (uint16_t)(b >> 16);
        }
        int64_t *r = malloc((size_t)T * H * 8);
        for (int i = 0; i < T * H; i++) r[i] = (int64_t)((frand() + 1) * 0.5 * (rows - 1));
        weight w = {.data = tab, .dt = DTYPE_BF16, .rows = rows, .cols = D};
        float *ref = malloc((size_t)T * H * D * 4);
        backend_gather_rows(cpu, ref, &w, r, T, H);
        void *dt = to_dev(tab, (size_t)rows * D * 2);
        long long *dr = to_dev(r, (size_t)T * H * 8);
        float *out = poisoned((size_t)T * H * D);
        if (kernels_gather_rows_bf16(out, dt, dr, T, H, D, NULL)) failures++;
        compare("gather_rows", out, ref, (size_t)T * H * D, 0);
    }
    { /* engram gate */
        float *nk = rand_host((size_t)T * d), *nq = rand_host((size_t)T * d), ref[64];
        backend_engram_gate(cpu, ref, nk, nq, T, d);
        float *dk = to_dev(nk, (size_t)T * d * 4), *dq = to_dev(nq, (size_t)T * d * 4), *out = poisoned(T);
        if (kernels_engram_gate_f32(out, dk, dq, T, d, NULL)) failures++;
        compare("engram_gate", out, ref, T, 1e-5);
    }
    { /* short conv */
        int R = (K - 1) * dil, C = 2 * d;
        float *in = rand_host((size_t)(R + T) * C), *w = rand_host((size_t)C * K), *ref = malloc((size_t)T * C * 4);
        /* the CPU op takes the history rows apart, one sequence of T tokens */
        float *hist = malloc((size_t)R * C * 4);
        memcpy(hist, in, (size_t)R * C * 4);
        int32_t start[2] = {0, T};
        float *hists[1] = {hist};
        batch_desc b = {.n_seqs = 1, .n_tokens = T, .seq_start = start, .h_seq_start = start, .seq_hist = hists};
        backend_short_conv(cpu, ref, in + (size_t)R * C, w, &b, 0, C, K, dil);
        free(hist);
        float *din = to_dev(in, (size_t)(R + T) * C * 4), *dw = to_dev(w, (size_t)C * K * 4);
        float *out = poisoned((size_t)T * C);
        if (kernels_short_conv_f32(out, din, dw, T, C, K, dil, NULL)) failures++;
        compare("short_conv", out, ref, (size_t)T * C, 1e-6);
    }
    struct cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("%s: %d failure(s) on %s\n", failures ? "FAIL" : "ok", failures, prop.name);
    backend_destroy(cpu);
    return failures ? 1 : 0;
}
