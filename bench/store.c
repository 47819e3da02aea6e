/* Random-row gather rate of the Engram store's host tiers: DRAM (the table
 * file mmap'd) and NVMe (O_DIRECT through io_uring at queue depths 1..256,
 * and pread), under uniform and Zipf(s) row distributions; then NVMe behind
 * a DRAM budget (the CLOCK row cache) of 1..25% of the table under Zipf(s),
 * gathering alone and with the next batch prefetched during a simulated
 * compute gap. Creates a table file of the given size, runs, deletes it
 * (unless --keep).
 *
 *   build/bench-store [--file PATH] [--gib G] [--dtype bf16|fp8] [--cols N]
 *                     [--batch ROWS] [--seconds S] [--zipf S] [--keep]
 *                     [--cache-only] [--compute-us US] [--dram-check]
 *                     [--ceiling [--sqpoll]] [--stride B] [--stride-compare B [--rounds N]]
 *                     [--hits W [--rounds N]]
 *   defaults: /tmp/engram-bench-store.tbl, 3 GiB, bf16, 256 cols, 4096 rows
 *   per gather, 1.5 s per point, Zipf exponent 1.0, 1000 us of compute
 *   between a prefetch and its gather.
 * One line per point: rows/s, GB/s of decoded-row bytes (row_bytes each),
 * block reads/s and GB/s read from the file, rows per read (dedupe), and
 * rows per CPU second of the gathering thread. Cache points (after a warm-up
 * until the cache is full, at most 20 s): hit ratio (rows found in DRAM),
 * rows/s over the gather calls, NVMe reads/s, mean stall per gather.
 * --dram-check: only the DRAM tier (unlocked), at 16, 256 and 4096 rows per
 * gather, each gather alone and with an fstat of the file before it: what
 * checking the file's size before each gather would cost, against the
 * SIGBUS guard's one flag load (engram/store_dram.c).
 * --ceiling: only the NVMe points under the uniform distribution (io_uring,
 * queue depths 1..256): the disk's random-read ceiling, as fio would measure
 * it, for the reads/s the engine's NVMe tier reaches (issue 22). With
 * --sqpoll each queue depth also with a submission-polling ring
 * (engram_store_params.sqpoll), right after the plain one.
 * --stride B: the table's rows B bytes apart (default 0: the store's stride,
 * engram_store_row_stride; B may be up to the old power of two).
 * --stride-compare B: only the NVMe tier (O_DIRECT, io_uring at queue depths
 * 1, 16 and 64, uniform rows), over two tables of the same rows (as many as
 * --gib holds at stride B), one at stride B and one at the store's own
 * (engram_store_row_stride: dense for V4.1's 264-byte rows); the points
 * alternate between the two files, --rounds times (default 3), so that a
 * neighbour's load hits both alike. The dense table's rows may straddle two
 * 4 KiB blocks: its reads/s and read_GB/s say what that costs.
 * --hits W: the NVMe tier's DRAM-cache hit path against the DRAM tier
 * (issue 22): W distinct rows scattered over the table (default 1/2 of it)
 * are read once into a row cache that holds them all (buffered reads: the
 * file is in the page cache), then batches of --batch rows drawn from them
 * (all hits) are gathered raw, as the engine does, through that cache and,
 * with the same rows, from the table mmap'd (faulted in first); uniform
 * and Zipf(s) over the working set, alternating between the tiers in
 * --rounds rounds of >= --seconds each, each gather followed by
 * --compute-us of sleep (the step's compute; the store's threads work
 * then). Per round: microseconds per gather and nanoseconds per row, wall
 * (the gathers alone) and CPU (the whole process, the gaps included), and
 * the NVMe tier's wall time over the DRAM tier's. */
#include <fcntl.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "engram/store.h"
#include "base/util.h"

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t next64(void) {
    uint64_t x = rng_state;
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    return rng_state = x;
}

static int fill_row(void *ctx, uint64_t row, void *dst) {
    uint32_t rb = *(const uint32_t *)ctx;
    uint64_t x = row * 0x9E3779B97F4A7C15ull + 1;
    uint8_t *d = dst;
    for (uint32_t i = 0; i < rb; i += 8) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        size_t k = rb - i < 8 ? rb - i : 8;
        memcpy(d + i, &x, k);
    }
    return 0;
}

static uint64_t gcd(uint64_t a, uint64_t b) {
    while (b) {
        uint64_t t = a % b;
        a = b, b = t;
    }
    return a;
}

/* Writes a table of nrows rows at stride (0: dense) with fill_row's bytes
 * and says so. Returns 0, or 1 with a message (an existing file is never
 * overwritten). */
static int write_table(const char *path, int dtype, uint64_t nrows, uint32_t cols, uint32_t stride) {
    uint32_t rb = engram_store_row_bytes(dtype, cols);
    char err[512];
    double t0 = util_now();
    if (access(path, F_OK) == 0) {
        fprintf(stderr, "bench-store: %s exists; refusing to overwrite\n", path);
        return 1;
    }
    if (engram_store_write(path, dtype, nrows, cols, stride, fill_row, &rb, err, sizeof(err))) {
        fprintf(stderr, "bench-store: %s\n", err);
        return 1;
    }
    if (!stride) stride = engram_store_row_stride(rb);
    printf("table %s: %llu rows x %u %s, row %u B, stride %u B, %.2f GiB, written in %.1f s\n", path,
           (unsigned long long)nrows, cols, engram_store_dtype_name(dtype), rb, stride,
           (double)nrows * stride / (1ull << 30), util_now() - t0);
    fflush(stdout);
    return 0;
}

/* CPU seconds of this thread: on a shared machine, rows per CPU second is the
 * number that does not depend on the neighbours' load. */
static double cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

typedef struct {
    const char *name;
    double *cdf;   /* Zipf: cumulative probability by rank, NULL for uniform */
    uint64_t n, mul; /* rank -> row: rank * mul mod n (scatters hot rows over the file) */
} dist;

static void draw(const dist *d, int64_t *rows, size_t k) {
    for (size_t i = 0; i < k; i++) {
        if (!d->cdf) {
            rows[i] = (int64_t)(next64() % d->n);
            continue;
        }
        double u = (double)(next64() >> 11) * 0x1.0p-53;
        uint64_t lo = 0, hi = d->n - 1;
        while (lo < hi) {
            uint64_t mid = (lo + hi) / 2;
            if (d->cdf[mid] < u) lo = mid + 1;
            else hi = mid;
        }
        rows[i] = (int64_t)((unsigned __int128)lo * d->mul % d->n);
    }
}

static void run_point(const char *path, const engram_store_params *p, const char *label, const dist *d,
                      size_t batch, double seconds, float *out, int64_t *rows) {
    engram_store *s = NULL;
    char err[512];
    int orc = engram_store_open(path, p, &s, err, sizeof(err));
    if (orc == ENGRAM_STORE_ELOCK) { /* DRAM points lock (and so fault in) the table when allowed */
        engram_store_params q = *p;
        q.mlock = false;
        fprintf(stderr, "bench-store: %s; measuring unlocked\n", err);
        orc = engram_store_open(path, &q, &s, err, sizeof(err));
    }
    if (orc) {
        fprintf(stderr, "bench-store: %s\n", err);
        exit(1);
    }
    engram_store_info in0 = engram_store_get_info(s);
    uint64_t nrows = 0;
    double t = 0, cpu = 0;
    int iters = 0;
    while (t < seconds || iters < 2) {
        draw(d, rows, batch);
        double t0 = util_now(), c0 = cpu_now();
        if (engram_store_gather(s, rows, batch, out, NULL)) {
            fprintf(stderr, "bench-store: gather failed\n");
            exit(1);
        }
        t += util_now() - t0;
        cpu += cpu_now() - c0;
        nrows += batch;
        iters++;
    }
    engram_store_info in = engram_store_get_info(s);
    double rb = in.header.row_bytes;
    printf("%-26s stride=%-4u locked=%d dist=%-7s qd=%-3d direct=%d rows/s=%11.0f row_GB/s=%7.3f reads/s=%10.0f "
           "read_GB/s=%7.3f rows/read=%5.2f rows/cpu_s=%11.0f\n",
           label, in.header.row_stride, in.locked, d->name, p->tier == ENGRAM_STORE_NVME ? p->queue_depth : 0, in.direct, nrows / t,
           nrows * rb / t / 1e9, (in.reads - in0.reads) / t, (in.bytes_read - in0.bytes_read) / t / 1e9,
           in.reads ? (double)nrows / (double)(in.reads - in0.reads) : 0.0, nrows / cpu);
    fflush(stdout);
    engram_store_close(s);
}

/* NVMe behind a DRAM budget of `frac` of the table: warm up until the cache
 * is full (or 20 s), then measure. With prefetch, each step hands the next
 * batch to the prefetch thread, "computes" for compute_us, then gathers the
 * current batch (prefetched one step earlier), as the forward pass will. */
static void run_cache_point(const char *path, double frac, bool prefetch, long compute_us, const dist *d, double zipf_s,
                            size_t batch, double seconds, float *out, int64_t *rows, int64_t *next) {
    engram_store_params p = engram_store_default_params();
    p.tier = ENGRAM_STORE_NVME;
    p.queue_depth = 64;
    engram_store *s = NULL;
    char err[512];
    if (engram_store_open(path, &p, &s, err, sizeof(err))) { /* the table's size first */
        fprintf(stderr, "bench-store: %s\n", err);
        exit(1);
    }
    engram_store_header h = engram_store_get_info(s).header;
    engram_store_close(s);
    p.dram_budget = (uint64_t)(frac * (double)(h.rows * h.row_stride));
    if (engram_store_open(path, &p, &s, err, sizeof(err))) {
        fprintf(stderr, "bench-store: %s\n", err);
        exit(1);
    }
    engram_store_stats a, b;
    draw(d, next, batch);
    double t_warm = util_now();
    bool measuring = false;
    double t = 0, t_start = 0;
    uint64_t nrows = 0, gathers = 0;
    for (;;) {
        memcpy(rows, next, batch * sizeof(int64_t));
        draw(d, next, batch);
        if (prefetch) {
            engram_store_prefetch(s, next, batch);
            struct timespec ts = {0, compute_us * 1000};
            nanosleep(&ts, NULL);
        }
        double t0 = util_now();
        if (engram_store_gather(s, rows, batch, out, NULL)) {
            fprintf(stderr, "bench-store: gather failed\n");
            exit(1);
        }
        double t1 = util_now();
        if (!measuring) {
            engram_store_get_stats(s, &a);
            if (a.cache_rows >= a.cache_capacity || t1 - t_warm > 20) {
                measuring = true;
                t_start = t1;
            }
            continue;
        }
        t += t1 - t0;
        nrows += batch;
        gathers++;
        if (t1 - t_start >= seconds && gathers >= 2) break;
    }
    engram_store_get_stats(s, &b);
    double look = (double)(b.lookups - a.lookups);
    printf("nvme cache %5.1f%% %-8s zipf s=%.2f cache_rows=%9llu warm=%5.1fs full=%d hit=%6.4f rows/s=%10.0f "
           "reads/s=%8.0f stall/gather=%8.1fus prefetched=%8llu dropped=%llu\n",
           frac * 100, prefetch ? "prefetch" : "gather", zipf_s, (unsigned long long)b.cache_capacity,
           t_start - t_warm, a.cache_rows >= a.cache_capacity, (double)(b.dram_hits - a.dram_hits) / look,
           nrows / t, (double)(b.nvme_reads - a.nvme_reads) / (util_now() - t_start),
           (b.stall_seconds - a.stall_seconds) / (double)(b.gathers - a.gathers) * 1e6,
           (unsigned long long)(b.prefetch_reads - a.prefetch_reads), (unsigned long long)b.prefetch_dropped);
    fflush(stdout);
    engram_store_close(s);
}

/* The DRAM tier at a few gather sizes, each gather alone, then with an
 * fstat of the file before it (the size check the SIGBUS guard replaces):
 * mean microseconds per gather, interleaved rounds so that a neighbour's
 * load hits both alike. */
static void run_check_points(const char *path, const dist *d, double seconds, float *out, int64_t *rows) {
    engram_store_params p = engram_store_default_params();
    p.tier = ENGRAM_STORE_DRAM;
    engram_store *s = NULL;
    char err[512];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || engram_store_open(path, &p, &s, err, sizeof(err))) {
        fprintf(stderr, "bench-store: %s\n", fd < 0 ? "cannot open the table" : err);
        exit(1);
    }
    /* fault the whole table in first: the points measure gathers, not page faults */
    uint64_t nrows = engram_store_get_info(s).header.rows;
    for (uint64_t r = 0; r < nrows; r += 4096) {
        size_t m = nrows - r < 4096 ? (size_t)(nrows - r) : 4096;
        for (size_t i = 0; i < m; i++) rows[i] = (int64_t)(r + i);
        engram_store_gather(s, rows, m, out, NULL);
    }
    double f0 = util_now();
    struct stat st0;
    for (int i = 0; i < 100000; i++) (void)!fstat(fd, &st0);
    printf("fstat alone: %.3f us per call\n", (util_now() - f0) / 100000 * 1e6);
    static const size_t sizes[] = {16, 256, 4096};
    for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
        size_t batch = sizes[k];
        double t[2] = {0, 0};
        uint64_t n[2] = {0, 0};
        while (t[0] + t[1] < 2 * seconds)
            for (int check = 0; check < 2; check++)
                for (int rep = 0; rep < 64; rep++) {
                    draw(d, rows, batch);
                    double t0 = util_now();
                    struct stat st;
                    if ((check && (fstat(fd, &st) || (uint64_t)st.st_size < 4096)) ||
                        engram_store_gather(s, rows, batch, out, NULL)) {
                        fprintf(stderr, "bench-store: gather failed\n");
                        exit(1);
                    }
                    t[check] += util_now() - t0;
                    n[check]++;
                }
        printf("dram check dist=%-7s rows/gather=%5zu us/gather: alone=%9.3f with_fstat=%9.3f (+%.3f us, %+.1f%%)\n",
               d->name, batch, t[0] / n[0] * 1e6, t[1] / n[1] * 1e6, (t[1] / n[1] - t[0] / n[0]) * 1e6,
               (t[1] / n[1] / (t[0] / n[0]) - 1) * 100);
        fflush(stdout);
    }
    engram_store_close(s);
    close(fd);
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static engram_store *open_or_die(const char *path, const engram_store_params *p) {
    engram_store *s = NULL;
    char err[512];
    if (engram_store_open(path, p, &s, err, sizeof(err))) {
        fprintf(stderr, "bench-store: %s\n", err);
        exit(1);
    }
    return s;
}

/* Mean seconds per gather of `reps` batches (rows[r * batch ..]) through s, raw, each followed by gap_us of
 * sleep (the step's compute), and the CPU seconds of the whole process over them, gaps included: the store's
 * own threads' work after a gather counts too. */
static double time_gathers(engram_store *s, const int64_t *rows, size_t batch, int reps, long gap_us, void *out,
                           double *cpu) {
    double t = 0, c0 = util_cpu_now();
    for (int r = 0; r < reps; r++) {
        double t0 = util_now();
        if (engram_store_gather_raw(s, rows + (size_t)r * batch, batch, out, NULL)) {
            fprintf(stderr, "bench-store: gather failed\n");
            exit(1);
        }
        t += util_now() - t0;
        struct timespec ts = {gap_us / 1000000, gap_us % 1000000 * 1000};
        if (gap_us) nanosleep(&ts, NULL); /* as the engine's fetcher thread waits for the next step */
    }
    *cpu = util_cpu_now() - c0;
    return t / reps;
}

/* --hits: the row cache's hit path against the mapped table (see the header). */
static void run_hit_points(const char *path, uint64_t nrows, uint64_t ws_n, size_t batch, double seconds, int rounds,
                           double zipf_s, long gap_us) {
    /* the working set: ranks scattered over the table (distinct: mul is coprime with nrows) */
    uint64_t mul = 1000003;
    while (gcd(mul, nrows) != 1) mul += 2;
    int64_t *ws = malloc(ws_n * sizeof(int64_t));
    double *cdf = malloc(ws_n * sizeof(double));
    enum { REPS = 16 }; /* gathers per timing: one draw of REPS batches, the same for both tiers */
    int64_t *rows = malloc(REPS * batch * sizeof(int64_t));
    void *out = malloc(batch * 4096);
    if (!ws || !cdf || !rows || !out) {
        fprintf(stderr, "bench-store: out of memory\n");
        exit(1);
    }
    for (uint64_t r = 0; r < ws_n; r++) ws[r] = (int64_t)((unsigned __int128)r * mul % nrows);
    qsort(ws, ws_n, sizeof(int64_t), cmp_i64); /* filled in offset order: rows sharing a block share a read */
    double acc = 0;
    for (uint64_t r = 0; r < ws_n; r++) cdf[r] = (acc += pow((double)(r + 1), -zipf_s));
    for (uint64_t r = 0; r < ws_n; r++) cdf[r] /= acc;
    uint64_t wmul = 1000003;
    while (gcd(wmul, ws_n) != 1) wmul += 2;
    dist ds[2] = {{"uniform", NULL, ws_n, 1}, {"zipf", cdf, ws_n, wmul}};

    engram_store_params p = engram_store_default_params();
    p.tier = ENGRAM_STORE_DRAM;
    engram_store *dram = open_or_die(path, &p);
    uint32_t rb = engram_store_get_info(dram).header.row_bytes;
    p = engram_store_default_params();
    p.tier = ENGRAM_STORE_NVME;
    p.no_direct = true; /* the fill reads the page cache: this measures hits, not the disk */
    p.dram_budget = (ws_n * (rb + 38)) / 4 * 5 + (64u << 20); /* 38: SLOT_OVERHEAD; room for the powers of two */
    engram_store *nvme = open_or_die(path, &p);
    double t0 = util_now(), cpu;
    for (uint64_t r = 0; r < nrows; r += batch) { /* fault the mapping in: the points measure gathers, not faults */
        size_t m = nrows - r < batch ? (size_t)(nrows - r) : batch;
        for (size_t i = 0; i < m; i++) rows[i] = (int64_t)(r + i);
        time_gathers(dram, rows, m, 1, 0, out, &cpu);
    }
    for (uint64_t r = 0; r < ws_n; r += batch)
        time_gathers(nvme, ws + r, ws_n - r < batch ? (size_t)(ws_n - r) : batch, 1, 0, out, &cpu);
    engram_store_stats st;
    engram_store_get_stats(nvme, &st);
    engram_store_info in = engram_store_get_info(nvme);
    printf("hit path: %llu rows x %u B, working set %llu rows, row cache %llu slots (%.2f GiB) holding %llu, "
           "filled and mapping faulted in %.1f s; %zu rows a gather, %ld us between gathers, %d rounds, >= %.1f s a point\n",
           (unsigned long long)nrows, rb, (unsigned long long)ws_n, (unsigned long long)in.cache_rows,
           (double)in.cache_bytes / (1ull << 30), (unsigned long long)st.cache_rows, util_now() - t0, batch, gap_us,
           rounds, seconds);
    if (st.cache_rows < ws_n) {
        fprintf(stderr, "bench-store: the row cache holds %llu of the %llu working-set rows\n",
                (unsigned long long)st.cache_rows, (unsigned long long)ws_n);
        exit(1);
    }
    fflush(stdout);
    for (int round = 1; round <= rounds; round++)
        for (int k = 0; k < 2; k++) {
            double t[2] = {0, 0}, c[2] = {0, 0};
            uint64_t g = 0;
            engram_store_stats a, b;
            engram_store_get_stats(nvme, &a);
            while (t[0] + t[1] < 2 * seconds) { /* the tiers in turn, over the same rows */
                for (int r = 0; r < REPS; r++) draw(&ds[k], rows + (size_t)r * batch, batch);
                for (size_t i = 0; i < REPS * batch; i++) rows[i] = ws[rows[i]];
                for (int tier = 0; tier < 2; tier++) {
                    double ci;
                    t[tier] += REPS * time_gathers(tier ? nvme : dram, rows, batch, REPS, gap_us, out, &ci);
                    c[tier] += ci;
                }
                g += REPS;
            }
            engram_store_get_stats(nvme, &b);
            printf("round %d dist=%-7s dram: %7.1f us/gather %5.1f ns/row cpu %5.1f ns/row | nvme hits: %7.1f us/gather "
                   "%5.1f ns/row cpu %5.1f ns/row hit=%.4f | nvme/dram %.2f\n",
                   round, ds[k].name, t[0] / g * 1e6, t[0] / g / batch * 1e9, c[0] / g / batch * 1e9, t[1] / g * 1e6,
                   t[1] / g / batch * 1e9, c[1] / g / batch * 1e9,
                   (double)(b.dram_hits - a.dram_hits) / (double)(b.lookups - a.lookups), t[1] / t[0]);
            fflush(stdout);
        }
    engram_store_close(nvme);
    engram_store_close(dram);
    free(ws), free(cdf), free(rows), free(out);
}

/* --stride-compare: the same rows at two strides over NVMe, point by point
 * in turn (see the header). */
static void run_stride_compare(const char *padded, const char *dense, size_t batch, double seconds, int rounds,
                               long cols) {
    engram_store *s = NULL;
    char err[512];
    if (engram_store_open(dense, NULL, &s, err, sizeof(err))) {
        fprintf(stderr, "bench-store: %s\n", err);
        exit(1);
    }
    uint64_t nrows = engram_store_get_info(s).header.rows;
    engram_store_close(s);
    dist uni = {"uniform", NULL, nrows, 1};
    float *out = malloc(batch * (size_t)cols * sizeof(float));
    int64_t *rows = malloc(batch * sizeof(int64_t));
    if (!out || !rows) {
        fprintf(stderr, "bench-store: out of memory\n");
        exit(1);
    }
    printf("batch %zu rows per gather, >= %.1f s per point, %d rounds\n", batch, seconds, rounds);
    static const int qds[] = {1, 16, 64};
    for (int r = 0; r < rounds; r++)
        for (size_t q = 0; q < sizeof(qds) / sizeof(qds[0]); q++)
            for (int k = 0; k < 2; k++) {
                engram_store_params p = engram_store_default_params();
                p.tier = ENGRAM_STORE_NVME;
                p.queue_depth = qds[q];
                char label[64];
                snprintf(label, sizeof(label), "round %d %s", r + 1, k ? "dense" : "padded");
                run_point(k ? dense : padded, &p, label, &uni, batch, seconds, out, rows);
            }
    free(out), free(rows);
}

int main(int argc, char **argv) {
    const char *path = "/tmp/engram-bench-store.tbl";
    double gib = 3, seconds = 1.5, zipf_s = 1.0;
    int dtype = ENGRAM_STORE_BF16, keep = 0, cache_only = 0, dram_check = 0, ceiling = 0, sqpoll = 0;
    long cols = 256, batch = 4096, compute_us = 1000;
    uint32_t stride = 0, compare = 0;
    int rounds = 3;
    long long hits = -1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help")) {
            printf("usage: bench-store [--file PATH] [--gib G] [--dtype bf16|fp8] [--cols N] [--batch ROWS]\n"
                   "                   [--seconds S] [--zipf S] [--keep] [--cache-only] [--compute-us US]\n"
                   "                   [--dram-check] [--ceiling [--sqpoll]] [--stride B] [--stride-compare B [--rounds N]]\n"
                   "                   [--hits W [--rounds N]]\n"
                   "(defaults and output: the header of bench/store.c)\n");
            return 0;
        } else if (!strcmp(a, "--keep")) keep = 1;
        else if (!strcmp(a, "--cache-only")) cache_only = 1;
        else if (!strcmp(a, "--dram-check")) dram_check = 1;
        else if (!strcmp(a, "--ceiling")) ceiling = 1;
        else if (!strcmp(a, "--sqpoll")) sqpoll = 1;
        else if (v && !strcmp(a, "--compute-us")) compute_us = atol(argv[++i]);
        else if (v && !strcmp(a, "--file")) path = argv[++i];
        else if (v && !strcmp(a, "--gib")) gib = atof(argv[++i]);
        else if (v && !strcmp(a, "--seconds")) seconds = atof(argv[++i]);
        else if (v && !strcmp(a, "--zipf")) zipf_s = atof(argv[++i]);
        else if (v && !strcmp(a, "--cols")) cols = atol(argv[++i]);
        else if (v && !strcmp(a, "--batch")) batch = atol(argv[++i]);
        else if (v && !strcmp(a, "--stride")) stride = (uint32_t)atol(argv[++i]);
        else if (v && !strcmp(a, "--stride-compare")) compare = (uint32_t)atol(argv[++i]);
        else if (v && !strcmp(a, "--rounds")) rounds = atoi(argv[++i]);
        else if (v && !strcmp(a, "--hits")) hits = atoll(argv[++i]);
        else if (v && !strcmp(a, "--dtype")) {
            i++;
            dtype = !strcmp(v, "fp8") ? ENGRAM_STORE_FP8_UE8M0 : !strcmp(v, "bf16") ? ENGRAM_STORE_BF16 : 0;
        } else {
            fprintf(stderr, "bench-store: unknown option %s (see the header of bench/store.c)\n", a);
            return 2;
        }
    }
    uint32_t rb = engram_store_row_bytes(dtype, (uint32_t)cols);
    if (!rb || gib <= 0 || gib > 4 || batch < 1 || batch > (1 << 22) || compute_us < 0 || compute_us > 999999 ||
        rounds < 1 || (compare && compare < rb)) {
        fprintf(stderr, "bench-store: bad --dtype/--cols/--gib (at most 4)/--batch/--rounds/--stride-compare\n");
        return 2;
    }
    if (!stride) stride = engram_store_row_stride(rb);
    uint64_t nrows = (uint64_t)(gib * (double)(1ull << 30)) / (compare ? compare : stride);
    if (compare) {
        char dense[4200], padded[4200];
        snprintf(dense, sizeof(dense), "%s.dense", path);
        snprintf(padded, sizeof(padded), "%s.%u", path, compare);
        int rc = write_table(dense, dtype, nrows, (uint32_t)cols, 0) || write_table(padded, dtype, nrows, (uint32_t)cols, compare);
        if (!rc) run_stride_compare(padded, dense, (size_t)batch, seconds, rounds, cols);
        if (!keep) unlink(dense), unlink(padded);
        return rc;
    }
    if (write_table(path, dtype, nrows, (uint32_t)cols, stride)) return 1;
    if (hits >= 0) {
        if (hits == 0 || (uint64_t)hits > nrows) hits = (long long)(nrows / 2);
        run_hit_points(path, nrows, (uint64_t)hits, (size_t)batch, seconds, rounds, zipf_s, compute_us);
        if (!keep) unlink(path);
        return 0;
    }

    dist uni = {"uniform", NULL, nrows, 1}, zipf = {"zipf", NULL, nrows, 1000003};
    while (gcd(zipf.mul, nrows) != 1) zipf.mul += 2;
    zipf.cdf = malloc(nrows * sizeof(double));
    float *out = malloc((size_t)batch * cols * sizeof(float));
    int64_t *rows = malloc((size_t)batch * sizeof(int64_t)), *next = malloc((size_t)batch * sizeof(int64_t));
    if (!zipf.cdf || !out || !rows || !next) {
        fprintf(stderr, "bench-store: out of memory\n");
        unlink(path);
        return 1;
    }
    double acc = 0;
    for (uint64_t r = 0; r < nrows; r++) zipf.cdf[r] = (acc += pow((double)(r + 1), -zipf_s));
    for (uint64_t r = 0; r < nrows; r++) zipf.cdf[r] /= acc;
    printf("batch %ld rows per gather, >= %.1f s per point, zipf s=%.2f\n", batch, seconds, zipf_s);

    const dist *ds[2] = {&uni, &zipf};
    if (dram_check) {
        for (int k = 0; k < 2; k++) run_check_points(path, ds[k], seconds, out, rows);
        if (!keep) unlink(path);
        free(zipf.cdf), free(out), free(rows), free(next);
        return 0;
    }
    for (int k = 0; k < 2 && !cache_only && !ceiling; k++) {
        engram_store_params p = engram_store_default_params();
        p.tier = ENGRAM_STORE_DRAM;
        p.mlock = true;
        run_point(path, &p, "dram mmap mlock", ds[k], (size_t)batch, seconds, out, rows);
    }
    static const int qds[] = {1, 2, 4, 8, 16, 32, 64, 128, 256};
    for (int k = 0; k < (ceiling ? 1 : 2) && !cache_only; k++) {
        for (size_t q = 0; q < sizeof(qds) / sizeof(qds[0]); q++) {
            engram_store_params p = engram_store_default_params();
            p.tier = ENGRAM_STORE_NVME;
            p.queue_depth = qds[q];
            run_point(path, &p, "nvme io_uring O_DIRECT", ds[k], (size_t)batch, seconds, out, rows);
            if (sqpoll) {
                p.sqpoll = true;
                run_point(path, &p, "nvme io_uring SQPOLL O_DIRECT", ds[k], (size_t)batch, seconds, out, rows);
            }
        }
        if (ceiling) break;
        engram_store_params p = engram_store_default_params();
        p.tier = ENGRAM_STORE_NVME;
        p.queue_depth = 1;
        p.use_pread = true;
        run_point(path, &p, "nvme pread O_DIRECT", ds[k], (size_t)batch, seconds, out, rows);
    }
    static const double fracs[] = {0.01, 0.05, 0.10, 0.25};
    if (ceiling) goto out;
    printf("cache points: queue depth 64, %ld us of compute between a prefetch and its gather\n", compute_us);
    for (size_t f = 0; f < sizeof(fracs) / sizeof(fracs[0]); f++)
        for (int pf = 0; pf < 2; pf++)
            run_cache_point(path, fracs[f], pf, compute_us, &zipf, zipf_s, (size_t)batch, seconds, out, rows, next);
out:
    if (!keep) unlink(path);
    free(zipf.cdf), free(out), free(rows), free(next);
    return 0;
}
