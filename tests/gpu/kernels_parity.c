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

#include "base/numeric.h"
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

/* The bf16 kernels that round as they write (the operands of the bf16 products) against their f32
 * kernel then kernels_to_bf16 on the same input: n bf16 values, bit for bit. */
static void compare_bits(const char *op, const void *dev, const void *ref_dev, size_t n) {
    uint16_t *got = malloc(n * 2), *want = malloc(n * 2);
    CK(cudaDeviceSynchronize());
    CK(cudaMemcpy(got, dev, n * 2, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(want, ref_dev, n * 2, cudaMemcpyDeviceToHost));
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) bad += got[i] != want[i];
    printf("%-16s n=%-9zu differing=%zu (bit for bit) %s\n", op, n, bad, bad ? "FAIL" : "ok");
    failures += bad != 0;
    free(got), free(want);
}
/* n bf16 values on the device, widened, against a host f32 reference */
static void compare_bf16(const char *op, const void *dev, const float *ref, size_t n, double bound) {
    uint16_t *b = malloc(n * 2);
    float *f = malloc(n * 4), *df;
    CK(cudaDeviceSynchronize());
    CK(cudaMemcpy(b, dev, n * 2, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < n; i++) f[i] = bf16_to_f32(b[i]);
    df = to_dev(f, n * 4);
    compare(op, df, ref, n, bound);
    CK(cudaFree(df));
    free(b), free(f);
}
static void *poisoned_bf16(size_t n) { /* 0xFFFF: a bf16 NaN */
    void *d;
    CK(cudaMalloc(&d, n * 2));
    CK(cudaMemset(d, 0xFF, n * 2));
    return d;
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
        /* rounded as written: the f32 rows above rounded, bit for bit; the CPU's within bf16's 2^-9 */
        void *ob = poisoned_bf16((size_t)T * d), *rb = poisoned_bf16((size_t)T * d);
        if (kernels_rmsnorm_bf16(ob, dx, dw, T, d, 1e-6f, NULL) || kernels_to_bf16(rb, out, KERNELS_F32, (size_t)T * d, NULL))
            failures++;
        compare_bits("rmsnorm_bf16", ob, rb, (size_t)T * d);
        compare_bf16("rmsnorm_bf16", ob, ref, (size_t)T * d, 4e-3);
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
    for (int n = 1000; n >= 998; n -= 2) {
        /* swiglu rounded to bf16 as written: rows of n = 1000 (4 a thread: not whole blocks of 1024) and
         * 998 (1 a thread: rows not 16-byte aligned) read at a stride of 2n from a stacked [gate | up]
         * product, and at n from two; against swiglu_f32 then to_bf16 of the same values, bit for bit,
         * and the CPU's op within bf16's 2^-9 */
        size_t tn = (size_t)T * n;
        float *gu = rand_host(2 * tn), *g = malloc(tn * 4), *u = malloc(tn * 4);
        for (int t = 0; t < T; t++)
            for (int i = 0; i < n; i++) {
                gu[(size_t)t * 2 * n + i] *= 8.0f; /* gates over silu's curve, not its linear middle */
                g[(size_t)t * n + i] = gu[(size_t)t * 2 * n + i], u[(size_t)t * n + i] = gu[(size_t)t * 2 * n + n + i];
            }
        float *ref = malloc(tn * 4);
        memcpy(ref, g, tn * 4);
        backend_swiglu(cpu, ref, u, tn);
        float *dgu = to_dev(gu, 2 * tn * 4), *dg = to_dev(g, tn * 4), *du = to_dev(u, tn * 4);
        void *hs = poisoned_bf16(tn), *hp = poisoned_bf16(tn), *rb = poisoned_bf16(tn);
        if (kernels_swiglu_bf16(hs, dgu, dgu + n, T, n, 2 * (size_t)n, NULL) ||
            kernels_swiglu_bf16(hp, dg, du, T, n, (size_t)n, NULL) || kernels_swiglu_f32(dg, du, tn, NULL) ||
            kernels_to_bf16(rb, dg, KERNELS_F32, tn, NULL))
            failures++;
        char nm[32];
        snprintf(nm, sizeof(nm), "swiglu_bf16 %d/%d", n, 2 * n);
        compare_bits(nm, hs, rb, tn);
        snprintf(nm, sizeof(nm), "swiglu_bf16 %d/%d", n, n);
        compare_bits(nm, hp, rb, tn);
        compare_bf16("swiglu_bf16", hs, ref, tn, 4e-3);
        void *dev[] = {dgu, dg, du, hs, hp, rb};
        for (int i = 0; i < 6; i++) CK(cudaFree(dev[i]));
        free(gu), free(g), free(u), free(ref);
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
