/* bench-matmul: the CPU backend's matrix products at Llama-3.2-1B's layer
 * shapes (bf16 weights: q 2048x2048, k and v 512x2048, o 2048x2048, gate and
 * up 8192x2048, down 2048x8192), L layers of their own weights (more than the
 * last-level cache, so decode streams from DRAM as a real step does), one
 * backend_matmul per matrix, as the forward pass issues them: a decode step
 * of a 1B model is 16 such layers plus the head, so this times the ~100
 * parallel regions of a step without the model's load time.
 * For each T: best and median of R passes over all layers, in ms per layer,
 * GB/s of weights read and GFLOP/s; and GFLOP per second of the process's CPU
 * time (best pass), which another process sharing the cores disturbs less
 * (with one thread: the kernel's own rate).
 * --shape lexicon: the default model's layers instead (models/engram-lexicon:
 * q 256x256, k and v 128x256, o 256x256, gate and up 704x256, down 256x704):
 * 1.5 MB a layer, where a step lives in the caches and per-product overheads
 * (the pool's handoff, the tiles' reductions) rule. Matrices are 64-byte
 * aligned; --offset B (even, < 64) starts each B bytes past a cache line, as
 * tensors in a safetensors file mostly do (models/engram-lexicon's: 8).
 * --by-matrix: also each matrix shape's GFLOP per CPU-second on its own (its
 * best pass), to see which shape a change moves.
 *   bench-matmul [--isa auto|avx512|avx2|generic|avx512bf16] [--threads N] [--layers L]
 *                    [--reps R] [--shape llama3-1b|lexicon] [--offset B] [--by-matrix] [T ...]
 *                    (default llama3-1b, 4 layers, 7 reps, T = 1 64) */
#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>

#include "base/util.h"
#include "engine/backend/backend.h"

#define HUGE (2u << 20) /* a transparent huge page */

int main(int argc, char **argv) {
    backend_params bp = backend_default_params();
    long layers = 4, reps = 7, threads = 0;
    int ts[16], nt = 0, lexicon = 0, offset = 0, by_matrix = 0;
    for (int i = 1; i < argc; i++) {
        long v;
        if (!strcmp(argv[i], "--isa") && i + 1 < argc) {
            if ((bp.cpu_isa = backend_cpu_isa_parse(argv[++i])) < 0) goto usage;
        } else if (!strcmp(argv[i], "--threads") && i + 1 < argc) {
            if (util_parse_long(argv[++i], 1, 4096, &threads)) goto usage;
        } else if (!strcmp(argv[i], "--layers") && i + 1 < argc) {
            if (util_parse_long(argv[++i], 1, 64, &layers)) goto usage;
        } else if (!strcmp(argv[i], "--reps") && i + 1 < argc) {
            if (util_parse_long(argv[++i], 1, 1000, &reps)) goto usage;
        } else if (!strcmp(argv[i], "--offset") && i + 1 < argc) {
            if (util_parse_long(argv[++i], 0, 62, &v) || v % 2) goto usage;
            offset = (int)v;
        } else if (!strcmp(argv[i], "--by-matrix")) {
            by_matrix = 1;
        } else if (!strcmp(argv[i], "--shape") && i + 1 < argc) {
            i++;
            if (!(lexicon = !strcmp(argv[i], "lexicon")) && strcmp(argv[i], "llama3-1b")) goto usage;
        } else if (nt < 16 && !util_parse_long(argv[i], 1, 4096, &v)) {
            ts[nt++] = (int)v;
        } else {
            goto usage;
        }
    }
    if (!nt) ts[nt++] = 1, ts[nt++] = 64;
    bp.cpu_threads = (int)threads;
    char err[256];
    backend *be = backend_cpu_create_with(&bp, err, sizeof(err));
    if (!be) {
        fprintf(stderr, "bench-matmul: %s\n", err);
        return 1;
    }
    enum { NM = 7 };
    static const int shapes[2][2][NM] = {
        {{2048, 512, 512, 2048, 8192, 8192, 2048}, {2048, 2048, 2048, 2048, 2048, 2048, 8192}}, /* rows, cols */
        {{256, 128, 128, 256, 704, 704, 256}, {256, 256, 256, 256, 256, 256, 704}},
    };
    const int *rows = shapes[lexicon][0], *cols = shapes[lexicon][1];
    weight *w = calloc((size_t)layers * NM, sizeof(weight));
    size_t params = 0;
    uint32_t s = 2463534242u;
    for (int l = 0; l < layers; l++)
        for (int m = 0; m < NM; m++) {
            size_t n = (size_t)rows[m] * cols[m];
            /* 64-byte aligned, as a synthetic model's matrices (page-aligned)
             * and unlike most of a safetensors file's (--offset B: B bytes past);
             * on transparent huge pages as a synthetic model's (madvise): on 4 KiB
             * pages every row of the 1B's is a page of its own, and the TLB misses
             * cost the products 5-10% that the model does not pay */
            size_t bytes = (n * 2 + 64 + HUGE - 1) / HUGE * HUGE;
            char *raw = aligned_alloc(HUGE, bytes);
            if (raw) madvise(raw, bytes, MADV_HUGEPAGE); /* a refusal changes nothing but the speed */
            if (!raw) return 1;
            uint16_t *d = (uint16_t *)(raw + offset);
            for (size_t i = 0; i < n; i++) { /* bf16 of magnitude about 2^-6 with random mantissas and signs */
                s ^= s << 13, s ^= s >> 17, s ^= s << 5;
                d[i] = (uint16_t)(0x3c00 | (s & 0x807f));
            }
            w[l * NM + m] = (weight){.data = d, .dt = DTYPE_BF16, .rows = rows[m], .cols = cols[m], .fmt = WEIGHT_DENSE};
            params += n;
        }
    printf("isa %s, threads %ld, %ld %s layers (%.1f MB of bf16 weights)\n", backend_cpu_isa_str(be->params.cpu_isa),
           threads, layers, lexicon ? "lexicon" : "llama3-1b", params * 2 / 1e6);
    for (int k = 0; k < nt; k++) {
        int T = ts[k];
        float *x = aligned_alloc(64, (size_t)T * 8192 * sizeof(float)), *y = aligned_alloc(64, (size_t)T * 8192 * sizeof(float));
        for (size_t i = 0; i < (size_t)T * 8192; i++) x[i] = (float)((i * 2654435761u) % 1000) / 1000.0f - 0.5f;
        double *t = malloc((size_t)reps * sizeof(double)), cpu = 1e30, mcpu[NM];
        for (int m = 0; m < NM; m++) mcpu[m] = 1e30;
        for (int r = -1; r < reps; r++) { /* pass -1 warms up */
            double t0 = util_now(), c0 = util_cpu_now(), mc[NM] = {0};
            for (int l = 0; l < layers; l++)
                for (int m = 0; m < NM; m++) {
                    double c = by_matrix ? util_cpu_now() : 0;
                    backend_matmul(be, y, x, &w[l * NM + m], NULL, T);
                    if (by_matrix) mc[m] += util_cpu_now() - c;
                }
            for (int m = 0; r >= 0 && m < NM; m++)
                if (mc[m] < mcpu[m]) mcpu[m] = mc[m];
            if (r >= 0) t[r] = util_now() - t0;
            if (r >= 0 && util_cpu_now() - c0 < cpu) cpu = util_cpu_now() - c0;
        }
        util_sort_doubles(t, (size_t)reps);
        double best = t[0], med = t[reps / 2];
        printf("T %4d: best %.3f ms/layer (%.2f GB/s, %.1f GFLOP/s), median %.3f ms/layer (%.2f GB/s, %.1f GFLOP/s), "
               "%.1f GFLOP/cpu-s\n",
               T, best * 1e3 / layers, params * 2 / best / 1e9, 2.0 * params * T / best / 1e9, med * 1e3 / layers,
               params * 2 / med / 1e9, 2.0 * params * T / med / 1e9, 2.0 * params * T / cpu / 1e9);
        for (int m = 0; by_matrix && m < NM; m++)
            printf("  %dx%d: %.1f GFLOP/cpu-s\n", rows[m], cols[m],
                   2.0 * rows[m] * cols[m] * T * layers / mcpu[m] / 1e9);
        free(x), free(y), free(t);
    }
    for (int i = 0; i < layers * NM; i++) free((char *)w[i].data - offset);
    free(w);
    backend_destroy(be);
    return 0;
usage:
    fprintf(stderr, "usage: bench-matmul [--isa auto|avx512|avx2|generic|avx512bf16] [--threads N] [--layers L] [--reps R] "
                    "[--shape llama3-1b|lexicon] [--offset B] [--by-matrix] [T ...]\n");
    return 2;
}
