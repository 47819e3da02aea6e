/* Parity of backend_ops.sample on CUDA with the CPU reference op, on random
 * rows of Qwen's vocabulary (151,936) in several shapes (ties on a coarse
 * grid, -0 and +0, peaked, flat), with biases (a repeated id), penalties,
 * top-k, several candidate counts, and a row holding a NaN. Identical: the
 * rows after biases and penalties, the candidates (ids and logits, bit for
 * bit), n_valid, flags, and the token sampler_sample_candidates (or, when it
 * cannot settle it, sampler_sample_applied on the downloaded row) picks. The
 * tail mass may differ in summation order and expf ulps: its relative error
 * must stay under 2^-19 (TAIL_REL in sampler.c). Then the op's time against a
 * download of the same rows; then sample_argmax (argmax_parity). Exit status
 * 1 on any mismatch. */
#include <cuda_runtime.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/backend/backend.h"
#include "engine/sampler.h"

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint64_t rnext(void) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return rng;
}
static double urand(void) { return (double)(rnext() >> 11) * 0x1.0p-53; }
static int irand(int n) { return (int)(rnext() % (uint64_t)n); }

static void fill_row(float *l, int V, int shape) {
    for (int i = 0; i < V; i++) {
        double x = urand() * 2 - 1;
        switch (shape % 4) {
        case 0: l[i] = (float)(x * 8); break;                                          /* flat-ish */
        case 1: l[i] = roundf((float)(x * 6)) * 0.5f; break;                           /* many ties */
        case 2: l[i] = (float)(-14 * urand() - (i % 211 == 0 ? 0 : 8)); break;         /* peaked */
        default: l[i] = irand(50) == 0 ? (float)(x * 20) : 0.0f; break;                /* mostly zero */
        }
        if (l[i] == 0.0f && irand(2)) l[i] = -0.0f;
    }
}

/* backend_ops.sample_argmax (the greedy rows of a description: a grammar's
 * mask, biases, penalties): GA rows after GS rows that are not the op's, in
 * the order the engine lays them; masks allowing a few tokens, about half,
 * one, or none of the row's maximum; ties, -0 and +0; a row whose allowed
 * tokens are all -inf (id 0), a NaN the mask hides and one it lets through
 * (-1). Identical: the ids and the edited rows, bit for bit. Then the op's
 * time on 1 to 64 rows against backend_ops.sample's on the same rows (what
 * a constrained greedy row paid before). Returns the failures. */
static int argmax_parity(backend *cpu, backend *gpu, sampler_desc *d) {
    enum { V = 151936, GS = 2, GA = 64, W = (V + 31) / 32 };
    size_t bytes = (size_t)GA * V * sizeof(float);
    float *h = malloc(bytes), *hc = malloc(bytes), *hg = malloc(bytes), *d_logits = backend_alloc(gpu, bytes);
    int32_t nc[GA], ng[GA], *d_next = backend_alloc(gpu, GA * sizeof(int32_t));
    uint32_t *mask = malloc(W * sizeof(uint32_t));
    int32_t prompt[200], out[30], bias_ids[3] = {5, 5, 77};
    float bias_vals[3] = {3.5f, -1.25f, 40.0f};
    void *d_desc = backend_alloc(gpu, (size_t)8 << 20); /* GA masks of W words and the lists */
    sampler_desc_begin(d, GS + GA);
    sampler *s = sampler_create(V, sampler_default_params());
    for (int r = 0; r < GS; r++) sampler_desc_set(d, r, s, r, NULL, NULL, 0, NULL, 0, NULL, 0);
    for (int r = 0; r < GA; r++) {
        sampler_params p = sampler_default_params();
        p.temperature = 0.0f;
        if (r % 3 == 1) p.repetition_penalty = 1.3f, p.presence_penalty = 0.4f, p.frequency_penalty = 0.1f;
        sampler *g = sampler_create(V, p);
        for (int i = 0; i < 200; i++) prompt[i] = irand(V);
        for (int i = 0; i < 30; i++) out[i] = i % 3 == 0 ? 5 : irand(V);
        int row = GA - 1 - r; /* rows out of order */
        float *l = h + (size_t)row * V;
        fill_row(l, V, r);
        sampler_desc_set(d, GS + r, g, row, bias_ids, bias_vals, r % 4 == 2 ? 3 : 0, prompt, 200, out, 30);
        sampler_destroy(g);
        if (r % 8 == 7) continue; /* no mask: biases or penalties alone */
        for (int w = 0; w < W; w++) mask[w] = r % 8 == 1 ? (uint32_t)rnext() : 0;
        int keep = r % 8 == 2 ? 1 : 5;
        for (int k = 0; k < keep; k++) {
            int id = irand(V);
            mask[id >> 5] |= 1u << (id & 31);
        }
        if (r % 8 == 3) { /* the row's maximum not allowed */
            int top = 0;
            for (int i = 1; i < V; i++) top = l[i] > l[top] ? i : top;
            mask[top >> 5] &= ~(1u << (top & 31));
        }
        if (r == 4) /* every allowed token -inf */
            for (int i = 0; i < V; i++)
                if ((mask[i >> 5] >> (i & 31)) & 1) l[i] = -INFINITY;
        if (r == 5 || r == 6) { /* a NaN, hidden by the mask (5) or let through (6) */
            int at = irand(V);
            bool on = (mask[at >> 5] >> (at & 31)) & 1;
            if (on != (r == 6)) mask[at >> 5] ^= 1u << (at & 31);
            l[at] = NAN;
        }
        sampler_desc_set_mask(d, GS + r, mask, W);
    }
    if (sampler_desc_bytes(d) > ((size_t)8 << 20)) abort();
    memcpy(hc, h, bytes);
    backend_sample_argmax(cpu, nc, hc, d->w, GS, GA, V, V);
    backend_upload(gpu, d_logits, h, bytes);
    backend_upload(gpu, d_desc, d->w, sampler_desc_bytes(d));
    backend_sample_argmax(gpu, d_next, d_logits, d_desc, GS, GA, V, V);
    backend_download(gpu, ng, d_next, GA * sizeof(int32_t));
    backend_download(gpu, hg, d_logits, bytes);
    int bad_ids = 0, bad_rows = memcmp(hc, hg, bytes) != 0;
    for (int r = 0; r < GA; r++) bad_ids += nc[r] != ng[r];
    int special = nc[4] == 0 && ng[6] == -1 && ng[5] >= 0; /* the all -inf and NaN rows as the contract says */
    int failures = bad_ids || bad_rows || !special;
    printf("sample_argmax rows=%d (after %d sampled) vocab=%d rows_equal=%d id_mismatch=%d special_rows=%d %s\n", GA, GS,
           V, !bad_rows, bad_ids, special, failures ? "FAIL" : "ok");

    /* time: the op against backend_ops.sample (1024 candidates) on the same masked rows */
    for (int r = 0; r < GA; r++) fill_row(h + (size_t)r * V, V, 2);
    backend_upload(gpu, d_logits, h, bytes);
    void *d_res = backend_alloc(gpu, GA * SAMPLER_RESULT_BYTES(1024));
    for (int n = 1; n <= GA; n *= 4) {
        double us[2];
        for (int op = 0; op < 2; op++) { /* wall time of reps ops queued on the backend's stream, then one sync */
            const int reps = 50;
            struct timespec t0, t1;
            for (int i = 0; i <= reps; i++) {
                if (i == 1) clock_gettime(CLOCK_MONOTONIC, &t0); /* the first is warm-up */
                if (op) backend_sample(gpu, d_res, d_logits, d_desc, n, V, V, 1024);
                else backend_sample_argmax(gpu, d_next, d_logits, d_desc, GS, n, V, V);
                if (i == 0) backend_download(gpu, ng, d_next, sizeof(int32_t));
            }
            backend_download(gpu, ng, d_next, sizeof(int32_t));
            clock_gettime(CLOCK_MONOTONIC, &t1);
            us[op] = ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / 1e3 / reps;
        }
        printf("time rows=%-2d sample_argmax %.1f us | sample (1024 candidates) %.1f us\n", n, us[0], us[1]);
    }
    sampler_destroy(s);
    backend_free(gpu, d_res);
    backend_free(gpu, d_desc);
    backend_free(gpu, d_next);
    backend_free(gpu, d_logits);
    free(h), free(hc), free(hg), free(mask);
    return failures;
}

int main(void) {
    char err[256];
    backend *cpu = backend_cpu_create(), *gpu = backend_cuda_create(NULL, err, sizeof(err));
    if (!gpu) {
        fprintf(stderr, "%s\n", err);
        return 2;
    }
    enum { V = 151936, R = 16 };
    const int cands[] = {1024, 4096, 64, 1};
    int failures = 0;
    double worst_tail = 0;
    long decided = 0, rows_done = 0;
    float *h = malloc((size_t)R * V * sizeof(float)), *hc = malloc((size_t)R * V * sizeof(float));
    float *hg = malloc((size_t)R * V * sizeof(float));
    float *d_logits = backend_alloc(gpu, (size_t)R * V * sizeof(float));
    unsigned char *rc = malloc(R * SAMPLER_RESULT_BYTES(SAMPLER_MAX_CANDIDATES));
    unsigned char *rg = malloc(R * SAMPLER_RESULT_BYTES(SAMPLER_MAX_CANDIDATES));
    void *d_res = backend_alloc(gpu, R * SAMPLER_RESULT_BYTES(SAMPLER_MAX_CANDIDATES));
    void *d_desc = backend_alloc(gpu, (size_t)1 << 20);
    sampler_desc d = {0};
    for (int ci = 0; ci < 4; ci++) {
        int nc = cands[ci];
        sampler *sc[R], *sg[R];
        sampler_desc_begin(&d, R);
        int32_t prompt[300], out[40], bias_ids[3] = {5, 5, 77};
        float bias_vals[3] = {3.5f, -1.25f, 40.0f};
        for (int r = 0; r < R; r++) {
            sampler_params p = sampler_default_params();
            p.seed = (uint64_t)(ci * 100 + r);
            p.temperature = r % 5 == 0 ? 0.0f : (float)(0.3 + 1.5 * urand());
            if (r % 4 == 1) p.top_k = 1 + irand(nc);
            if (r % 3 == 1) p.top_p = (float)(0.5 + 0.5 * urand());
            if (r % 7 == 2) p.min_p = 0.02f;
            if (r % 2) p.repetition_penalty = 1.3f, p.presence_penalty = 0.4f, p.frequency_penalty = 0.1f;
            sc[r] = sampler_create(V, p);
            sg[r] = sampler_create(V, p);
            for (int i = 0; i < 300; i++) prompt[i] = irand(V);
            for (int i = 0; i < 40; i++) out[i] = i % 3 == 0 ? 5 : irand(V);
            int row = R - 1 - r; /* rows out of order */
            sampler_desc_set(&d, r, sc[r], row, bias_ids, bias_vals, r % 3 ? 3 : 0, prompt, 300, out, 40);
            if (r % 4 == 3) { /* a grammar's mask: a few allowed tokens, or about half */
                uint32_t mask[(V + 31) / 32];
                for (int w = 0; w < (V + 31) / 32; w++) mask[w] = r % 8 == 3 ? (uint32_t)rnext() : 0;
                for (int k = 0; k < 5; k++) mask[irand(V) >> 5] |= 1u << irand(32);
                sampler_desc_set_mask(&d, r, mask, (V + 31) / 32);
            }
            fill_row(h + (size_t)row * V, V, r);
        }
        h[(size_t)3 * V + 1000] = NAN; /* the row of r = 12 */
        memcpy(hc, h, (size_t)R * V * sizeof(float));
        backend_sample(cpu, rc, hc, d.w, R, V, V, nc);
        backend_upload(gpu, d_logits, h, (size_t)R * V * sizeof(float));
        backend_upload(gpu, d_desc, d.w, sampler_desc_bytes(&d));
        backend_sample(gpu, d_res, d_logits, d_desc, R, V, V, nc);
        backend_download(gpu, rg, d_res, R * SAMPLER_RESULT_BYTES(nc));
        backend_download(gpu, hg, d_logits, (size_t)R * V * sizeof(float));
        int bad_rows = memcmp(hc, hg, (size_t)R * V * sizeof(float)) != 0;
        int bad_cand = 0, bad_tok = 0;
        for (int r = 0; r < R; r++) {
            size_t rb = SAMPLER_RESULT_BYTES(nc);
            const unsigned char *a = rc + r * rb, *b = rg + r * rb;
            if (memcmp(a, b, 8 * (size_t)nc) || memcmp(a + 8 * (size_t)nc + 8, b + 8 * (size_t)nc + 8, 8)) bad_cand++;
            double ta, tb;
            memcpy(&ta, a + 8 * (size_t)nc, 8);
            memcpy(&tb, b + 8 * (size_t)nc, 8);
            int32_t fl;
            memcpy(&fl, a + 8 * (size_t)nc + 12, 4);
            double rel = ta == tb || (fl & SAMPLER_RESULT_NAN) ? 0 : fabs(ta - tb) / fabs(ta);
            if (!(rel <= 0x1p-19)) bad_cand++;
            if (rel > worst_tail) worst_tail = rel;
            int row = (int)d.w[(size_t)r * SAMPLER_DESC_WORDS + SAMPLER_DESC_ROW];
            int32_t ta_ = sampler_sample_candidates(sc[r], a, nc), tb_ = sampler_sample_candidates(sg[r], b, nc);
            decided += tb_ >= 0;
            rows_done++;
            if (ta_ < 0) ta_ = sampler_sample_applied(sc[r], hc + (size_t)row * V);
            if (tb_ < 0) tb_ = sampler_sample_applied(sg[r], hg + (size_t)row * V);
            if (ta_ != tb_) bad_tok++;
            sampler_destroy(sc[r]);
            sampler_destroy(sg[r]);
        }
        int32_t flags;
        memcpy(&flags, rg + 12 * SAMPLER_RESULT_BYTES(nc) + 8 * (size_t)nc + 12, 4);
        int nan_ok = flags == SAMPLER_RESULT_NAN;
        int ok = !bad_rows && !bad_cand && !bad_tok && nan_ok;
        printf("sample n_cand=%-5d rows=%d vocab=%d rows_equal=%d cand_mismatch=%d token_mismatch=%d nan_flag=%d %s\n", nc,
               R, V, !bad_rows, bad_cand, bad_tok, nan_ok, ok ? "ok" : "FAIL");
        failures += !ok;
    }
    printf("tail max rel diff %.3e (bound %.3e); %ld of %ld rows settled by the candidates\n", worst_tail, 0x1p-19,
           decided, rows_done);

    /* time: the op on R rows (1024 candidates, temperature 1, no filters) against downloading the rows */
    sampler *s = sampler_create(V, sampler_default_params());
    sampler_desc_begin(&d, R);
    for (int r = 0; r < R; r++) sampler_desc_set(&d, r, s, r, NULL, NULL, 0, NULL, 0, NULL, 0);
    for (int r = 0; r < R; r++) fill_row(h + (size_t)r * V, V, 2);
    backend_upload(gpu, d_logits, h, (size_t)R * V * sizeof(float));
    backend_upload(gpu, d_desc, d.w, sampler_desc_bytes(&d));
    for (int n = 1; n <= R; n *= 4) {
        cudaEvent_t e0, e1;
        cudaEventCreate(&e0);
        cudaEventCreate(&e1);
        const int reps = 50;
        backend_sample(gpu, d_res, d_logits, d_desc, n, V, V, 1024); /* warm */
        backend_download(gpu, rg, d_res, 16);
        cudaEventRecord(e0, 0);
        for (int i = 0; i < reps; i++) backend_sample(gpu, d_res, d_logits, d_desc, n, V, V, 1024);
        cudaEventRecord(e1, 0);
        cudaDeviceSynchronize();
        float ms_op = 0;
        cudaEventElapsedTime(&ms_op, e0, e1);
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (int i = 0; i < reps; i++) backend_download(gpu, hg, d_logits, (size_t)n * V * sizeof(float));
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double us_dl = ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / 1e3 / reps;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (int i = 0; i < reps; i++) {
            backend_sample(gpu, d_res, d_logits, d_desc, n, V, V, 1024);
            backend_download(gpu, rg, d_res, n * SAMPLER_RESULT_BYTES(1024));
        }
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double us_all = ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / 1e3 / reps;
        printf("time rows=%-2d op %.1f us (events, stream may differ: see op+download) | op+download of candidates %.1f us "
               "| download of the rows %.1f us\n",
               n, ms_op * 1000 / reps, us_all, us_dl);
    }
    sampler_destroy(s);
    free(h), free(hc), free(hg);
    backend_free(gpu, d_logits);
    failures += argmax_parity(cpu, gpu, &d);
    struct cudaDeviceProp prop;
    cudaGetDeviceProperties(&prop, 0);
    printf("%s: %d failure(s) on %s\n", failures ? "FAIL" : "ok", failures, prop.name);
    backend_destroy(gpu);
    backend_destroy(cpu);
    return failures ? 1 : 0;
}
