/* bench-attention: the backend's attention op at Llama-3.2-1B's shape (32
 * query heads, 8 KV heads of 64) over a paged f32 KV cache (blocks of 16),
 * as the forward pass calls it: S sequences of CTX positions each, T query
 * tokens per sequence (1: a decode step; more: the last T positions of a
 * prefill chunk). L layers of their own K and V (more than the last-level
 * cache at 2k context, so a call reads them from DRAM as a real step does,
 * where the weights' stream has evicted them). For each CTX: the best and
 * median of R passes over the layers, in ms per layer call, GB/s of K and V
 * read once, and GFLOP/s of the scores and weighted sums; and GFLOP per
 * second of the process's CPU time (best pass).
 *   bench-attention [--threads N] [--layers L] [--reps R] [--seqs S] [--q T]
 *                   [--heads H] [--kv-heads K] [--head-dim D] [CTX ...]
 *                   (default 16 layers, 7 reps, 1 sequence, T 1, 32/8/64, CTX = 64 2048) */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/util.h"
#include "engine/backend/backend.h"

int main(int argc, char **argv) {
    backend_params bp = backend_default_params();
    long layers = 16, reps = 7, threads = 0, S = 1, T = 1, nh = 32, nkv = 8, hd = 64;
    int ctxs[16], nc = 0;
    for (int i = 1; i < argc; i++) {
        long v;
        long *opt = !strcmp(argv[i], "--threads")    ? &threads
                    : !strcmp(argv[i], "--layers")   ? &layers
                    : !strcmp(argv[i], "--reps")     ? &reps
                    : !strcmp(argv[i], "--seqs")     ? &S
                    : !strcmp(argv[i], "--q")        ? &T
                    : !strcmp(argv[i], "--heads")    ? &nh
                    : !strcmp(argv[i], "--kv-heads") ? &nkv
                    : !strcmp(argv[i], "--head-dim") ? &hd
                                                     : NULL;
        if (opt) {
            if (i + 1 >= argc || util_parse_long(argv[++i], 1, 4096, opt)) goto usage;
        } else if (nc < 16 && !util_parse_long(argv[i], 1, 1 << 20, &v)) {
            ctxs[nc++] = (int)v;
        } else {
            goto usage;
        }
    }
    if (!nc) ctxs[nc++] = 64, ctxs[nc++] = 2048;
    if (nh % nkv) goto usage;
    bp.cpu_threads = (int)threads;
    char err[256];
    backend *be = backend_cpu_create_with(&bp, err, sizeof(err));
    if (!be) {
        fprintf(stderr, "bench-attention: %s\n", err);
        return 1;
    }
    printf("threads %d (0: all cores), %ld layers, %ld seqs x %ld query tokens, heads %ld/%ld of %ld\n", bp.cpu_threads,
           layers, S, T, nh, nkv, hd);
    for (int c = 0; c < nc; c++) {
        int ctx = ctxs[c], bs = 16, kvw = (int)(nkv * hd);
        if (T > ctx) continue;
        int mb = (ctx + bs - 1) / bs, n_tok = (int)(S * T);
        size_t rows = (size_t)S * mb * bs, floats = rows * kvw;
        float **kc = malloc(sizeof(float *) * layers), **vc = malloc(sizeof(float *) * layers);
        float *q = malloc(sizeof(float) * n_tok * nh * hd), *out = malloc(sizeof(float) * n_tok * nh * hd);
        int32_t *bt = malloc(sizeof(int32_t) * S * mb), *pos = malloc(sizeof(int32_t) * n_tok);
        int32_t *seq = malloc(sizeof(int32_t) * n_tok), *slot = malloc(sizeof(int32_t) * n_tok);
        int32_t *start = malloc(sizeof(int32_t) * (S + 1)), *pos0 = malloc(sizeof(int32_t) * S);
        uint32_t x = 1;
        for (long l = 0; l < layers; l++) {
            kc[l] = backend_alloc(be, sizeof(float) * floats), vc[l] = backend_alloc(be, sizeof(float) * floats);
            for (size_t i = 0; i < floats; i++) {
                x = x * 1664525u + 1013904223u;
                kc[l][i] = (float)(x >> 8) / 16777216.0f - 0.5f;
                vc[l][i] = (float)(x & 0xffff) / 65536.0f - 0.5f;
            }
        }
        for (int i = 0; i < n_tok * nh * hd; i++) q[i] = (float)((i * 37) % 101) / 50.0f - 1.0f;
        for (int s = 0; s < S; s++) {
            for (int j = 0; j < mb; j++) bt[s * mb + j] = s * mb + j;
            start[s] = (int)(s * T), pos0[s] = (int)(ctx - T);
            for (int t = 0; t < T; t++) {
                int k = (int)(s * T + t), p = (int)(ctx - T + t);
                seq[k] = s, pos[k] = p, slot[k] = bt[s * mb + p / bs] * bs + p % bs;
            }
        }
        start[S] = n_tok;
        batch_desc b = {.n_seqs = (int)S, .n_tokens = n_tok, .block_size = bs, .max_blocks = mb, .max_q = (int)T,
                        .max_ctx = ctx, .pos = pos, .slot = slot, .tok_seq = seq, .seq_start = start,
                        .seq_pos0 = pos0, .block_tables = bt, .h_seq_start = start, .h_seq_pos0 = pos0};
        double *ms = malloc(sizeof(double) * reps), best_cpu = 1e30;
        for (long r = 0; r < reps; r++) {
            double t0 = util_now(), c0 = util_cpu_now();
            for (long l = 0; l < layers; l++)
                backend_attention(be, out, q, kc[l], vc[l], &b, (int)nh, (int)nkv, (int)hd, 0);
            ms[r] = (util_now() - t0) * 1e3 / layers;
            double cs = (util_cpu_now() - c0) / layers;
            if (cs < best_cpu) best_cpu = cs;
        }
        /* the scores and the weighted sum: 2 multiply-adds per (query head, key, element) */
        double pairs = 0;
        for (int t = 0; t < T; t++) pairs += ctx - T + t + 1;
        double flop = 4.0 * S * pairs * nh * hd, bytes = 2.0 * S * ctx * kvw * sizeof(float);
        util_sort_doubles(ms, (size_t)reps);
        printf("ctx %6d: best %.3f ms/layer, median %.3f (%.2f GB/s of KV, %.1f GFLOP/s), %.1f GFLOP/cpu-s\n", ctx,
               ms[0], ms[reps / 2], bytes / ms[0] * 1e-6, flop / ms[0] * 1e-6, flop / best_cpu * 1e-9);
        for (long l = 0; l < layers; l++) backend_free(be, kc[l]), backend_free(be, vc[l]);
        free(kc), free(vc), free(q), free(out), free(bt), free(pos), free(seq), free(slot), free(start), free(pos0);
        free(ms);
    }
    backend_destroy(be);
    return 0;
usage:
    fprintf(stderr, "usage: bench-attention [--threads N] [--layers L] [--reps R] [--seqs S] [--q T] [--heads H] "
                    "[--kv-heads K] [--head-dim D] [CTX ...]\n");
    return 2;
}
