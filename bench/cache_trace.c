/* Trace-driven hit rates of the NVMe tier's DRAM row cache: the real store
 * (engram/store: CLOCK, and TinyLFU admission or admit-on-first-touch) over
 * a small table file read buffered (the page cache stands in for the disk:
 * only which rows hit matters here, not how fast misses are), gathered in
 * steps of --step row ids, at cache sizes of a few shares of the trace's
 * distinct rows. Traces:
 *   --zipf S     N lookups over R rows, Zipf(S) by rank, ranks scattered over
 *                the table by a fixed permutation;
 *   --tokens F   a token file of real text (tools/make_text_tokens.py): each
 *                token's Engram rows of the first layer under DeepSeek's demo
 *                layout (orders 2 and 3, 8 heads each; compressed id = token
 *                id, as for synthetic models), as a model reading that text
 *                would look them up.
 * One line per policy and cache size: hit ratio over the whole trace and over
 * its second half (the steady state), admissions, rejections.
 *
 *   build/bench-cache_trace [--zipf S] [--rows R] [--lookups N] [--tokens F]
 *                           [--step ROWS] [--file PATH] */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/util.h"
#include "engram/ngram_hash.h"
#include "engram/store.h"

static uint64_t splitmix(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* N Zipf(s) lookups over R rows; rank r is row (r * a + b) mod R for an a coprime with R. */
static int64_t *zipf_trace(double s, uint64_t R, size_t N) {
    double *cdf = malloc(R * sizeof(double)), sum = 0;
    int64_t *t = malloc(N * sizeof(int64_t));
    for (uint64_t r = 0; r < R; r++) cdf[r] = sum += pow((double)(r + 1), -s);
    uint64_t x = 1, a = 2654435761u % R, g, p, q;
    do { /* a coprime with R: the map from ranks to rows is one to one */
        a++;
        for (p = a, q = R; q; g = p % q, p = q, q = g) {}
    } while (p != 1);
    for (size_t i = 0; i < N; i++) {
        double u = (double)(splitmix(&x) >> 11) * 0x1.0p-53 * sum;
        uint64_t lo = 0, hi = R - 1;
        while (lo < hi) {
            uint64_t mid = (lo + hi) / 2;
            if (cdf[mid] < u) lo = mid + 1;
            else hi = mid;
        }
        t[i] = (int64_t)((lo * a + 12345) % R);
    }
    free(cdf);
    return t;
}

/* Layer 0's rows of every token of a token file; *rows gets the table size. */
static int64_t *token_trace(const char *path, size_t *n_out, uint64_t *rows) {
    int32_t *ids;
    size_t n;
    uint32_t vocab;
    char err[512];
    if (util_read_token_file(path, &ids, &n, &vocab, err, sizeof(err))) {
        fprintf(stderr, "%s\n", err);
        exit(1);
    }
    ngram_hash_config c = ngram_hash_default_config();
    c.compressed_vocab_size = vocab ? vocab : 151936;
    c.compressed_pad_id = c.pad_id;
    ngram_hash *h;
    if (ngram_hash_create(&c, &h, err, sizeof(err))) {
        fprintf(stderr, "%s\n", err);
        exit(1);
    }
    int H = ngram_hash_n_heads(h);
    int64_t *t = malloc(n * H * sizeof(int64_t)), *cids = malloc(n * sizeof(int64_t));
    for (size_t i = 0; i < n; i++) cids[i] = ids[i];
    ngram_hash_history hist;
    ngram_hash_history_init(h, &hist);
    ngram_hash_layer_rows(h, 0, &hist, cids, n, t);
    *rows = (uint64_t)ngram_hash_table_rows(h, 0);
    *n_out = n * H;
    ngram_hash_destroy(h);
    free(ids), free(cids);
    return t;
}

static int cmp(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static int fill_zero(void *ctx, uint64_t row, void *dst) {
    (void)ctx, (void)row;
    memset(dst, 0, 32);
    return 0;
}

int main(int argc, char **argv) {
    double zipf = 1.0;
    uint64_t R = 10000000;
    size_t N = 4000000, step = 4096;
    const char *tokens = NULL, *path = "/tmp/engram-bench-cache-trace.tbl";
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--zipf")) zipf = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--rows")) R = strtoull(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--lookups")) N = strtoull(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--tokens")) tokens = argv[i + 1];
        else if (!strcmp(argv[i], "--step")) step = strtoull(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--file")) path = argv[i + 1];
        else {
            fprintf(stderr, "usage: bench-cache_trace [--zipf S] [--rows R] [--lookups N] [--tokens F] [--step ROWS] [--file PATH]\n");
            return 2;
        }
    }
    int64_t *t = tokens ? token_trace(tokens, &N, &R) : zipf_trace(zipf, R, N);
    /* distinct rows of the trace: the cache sizes are shares of them */
    int64_t *srt = malloc(N * sizeof(int64_t));
    memcpy(srt, t, N * sizeof(int64_t));
    qsort(srt, N, sizeof(int64_t), cmp);
    size_t distinct = 0;
    for (size_t i = 0; i < N; i++) distinct += !i || srt[i] != srt[i - 1];
    free(srt);
    char err[512];
    if (engram_store_write(path, ENGRAM_STORE_F32, R, 8, 0, fill_zero, NULL, err, sizeof(err))) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    printf("trace: %s, %zu lookups, %zu distinct rows of %llu, steps of %zu\n",
           tokens ? tokens : "zipf", N, distinct, (unsigned long long)R, step);
    if (!tokens) printf("zipf s=%.2f\n", zipf);
    const double shares[] = {0.01, 0.05, 0.2, 0.5};
    float *out = malloc(step * 8 * sizeof(float));
    for (size_t k = 0; k < sizeof(shares) / sizeof(shares[0]); k++) {
        for (int pol = 0; pol < 2; pol++) {
            engram_store_params p = engram_store_default_params();
            p.tier = ENGRAM_STORE_NVME;
            p.no_direct = true;
            p.use_pread = true;
            p.quiet = true;
            p.admission = pol ? ENGRAM_STORE_ADMIT_TINYLFU : ENGRAM_STORE_ADMIT_ALL;
            p.dram_budget = (uint64_t)(shares[k] * (double)distinct) * (32 + 38) + 4096;
            engram_store *s;
            if (engram_store_open(path, &p, &s, err, sizeof(err))) {
                fprintf(stderr, "%s\n", err);
                return 1;
            }
            engram_store_stats half = {0}, end;
            for (size_t a = 0; a < N; a += step) {
                if (a <= N / 2 && a + step > N / 2) engram_store_get_stats(s, &half);
                engram_store_gather(s, t + a, N - a < step ? N - a : step, out, NULL);
            }
            engram_store_get_stats(s, &end);
            printf("cache %5.1f%% of distinct (%9llu rows) %-7s hit %.4f  second half %.4f  admitted %10llu  "
                   "rejected %10llu\n",
                   shares[k] * 100, (unsigned long long)end.cache_capacity, pol ? "tinylfu" : "all",
                   (double)end.dram_hits / (double)end.lookups,
                   (double)(end.dram_hits - half.dram_hits) / (double)(end.lookups - half.lookups),
                   (unsigned long long)end.admissions, (unsigned long long)end.rejections);
            fflush(stdout);
            engram_store_close(s);
        }
    }
    unlink(path);
    free(out), free(t);
    return 0;
}

