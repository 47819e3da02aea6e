/* How should a step's Engram rows reach the GPU when the table sits in host
 * DRAM (issue 8)? Measures, on one table of random rows in anonymous host
 * memory (huge pages advised) large enough that DRAM is really randomly
 * accessed, for a step of N tokens x H heads (one row id per token and head;
 * head h's ids fall in its own slice of the table, uniform or Zipf(1.0) with
 * the hot rows scattered):
 *   uva       one kernel gathers the rows straight from the table, registered
 *             with cudaHostRegister (mapped), into device memory; ids already
 *             on the device (the hash runs wherever the ids are needed)
 *   cpuT      T CPU threads (OpenMP) gather the rows into a pinned staging
 *             buffer, then one cudaMemcpyAsync to the device
 *   dedupT    the same after removing repeated ids (T hash shards): unique
 *             rows, the inverse map and the shard offsets in one copy, then
 *             a kernel expands them to one row per (token, head) in HBM
 * Each step's latency is host wall time from "ids known" to "rows in HBM"
 * (stream synchronized); rows/s = rows over the sum of step times. Also: how
 * long cudaHostRegister takes for a few sizes and for the whole table, and
 * the pinned host-to-device copy rate. The first step of every point is
 * checked against a host gather, the device output poisoned before it.
 *
 *   build/bench-gpu_engram_fetch [--gib 48] [--row-bytes 128,264]
 *       [--dist uniform,zipf] [--tokens 1,64,256,512,4096,16384] [--heads 16]
 *       [--threads 1,4,8,16] [--seconds 0.15] [--min-steps 20] [--pool-m 16]
 *       [--register-gib 1,8] [--no-hugepages] [--cpu-check]
 * --cpu-check runs the CPU paths and their checks without CUDA (no GPU
 * needed; uva skipped, copies skipped, dedup expanded on the host).
 * CUDA builds only; kernels in gpu_engram_fetch_kernels.cu. */
#include <cuda_runtime.h>
#include <limits.h>
#include <math.h>
#include <omp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "base/util.h"

int fetch_gather_uva(void *dst, const void *table, int row_bytes, const uint32_t *ids, long n, cudaStream_t s);
int fetch_expand(void *dst, const void *urows, int row_bytes, const int32_t *inv, const int32_t *offs, long n,
                 cudaStream_t s);

#define CK(x)                                                                                                       \
    do {                                                                                                            \
        cudaError_t e_ = (cudaError_t)(x);                                                                          \
        if (e_ != cudaSuccess) {                                                                                    \
            fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, cudaGetErrorString(e_));                             \
            exit(1);                                                                                                \
        }                                                                                                           \
    } while (0)

#define MAX_LIST 16
#define MAX_THREADS 64
#define SHARD_SHIFT 26 /* dedup inverse map entry: shard << 26 | index within the shard */
#define HDR_OFFS 256   /* staging: shard offsets (64 int32), then the inverse map, then rows */

static int parse_list(const char *s, long *out) {
    int n = 0;
    while (*s && n < MAX_LIST) {
        char *end;
        out[n++] = strtol(s, &end, 10);
        if (end == s) return -1;
        s = *end == ',' ? end + 1 : end;
        if (*end && *end != ',') return -1;
    }
    return n;
}

static uint64_t splitmix(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint32_t mix32(uint32_t h) {
    h ^= h >> 16, h *= 0x85ebca6bu, h ^= h >> 13, h *= 0xc2b2ae35u, h ^= h >> 16;
    return h;
}

static uint64_t gcd(uint64_t a, uint64_t b) {
    while (b) {
        uint64_t t = a % b;
        a = b, b = t;
    }
    return a;
}

static size_t round_up(size_t x, size_t a) { return (x + a - 1) / a * a; }
static size_t inv_bytes(size_t n) { return round_up(n * 4, 256); }
static size_t hdr_bytes(size_t n) { return HDR_OFFS + inv_bytes(n); }

/* ---- state ---- */
struct slot {
    uint32_t stamp, key, val; /* the step that wrote it, row id, index among the shard's unique rows */
};
static struct {
    bool gpu;
    uint8_t *tab; /* (bytes) the table, random bytes */
    size_t bytes;
    int rb;        /* row bytes */
    uint64_t rows; /* rows of rb bytes in the table */
    int heads;
    uint32_t *pool; /* (pool_n) row ids: entry i belongs to head i % heads */
    uint32_t *d_pool;
    size_t pool_n, pos;
    uint8_t *stage;   /* pinned: rows, or the dedup header then unique rows */
    uint8_t *d_tab;   /* the table's device address (UVA) */
    uint8_t *d_out;   /* (n, rb) one row per (token, head) */
    uint8_t *d_stage; /* the staging buffer's copy */
    uint8_t *ref, *back; /* host: expected rows, the device's rows copied back */
    size_t max_rows;
    cudaStream_t st;
    /* dedup: per-thread open-addressing tables (stamp != current = empty) and unique ids */
    struct slot *ht[MAX_THREADS];
    uint32_t *uniq[MAX_THREADS];
    size_t hcap;
    size_t cnt[MAX_THREADS];
    uint32_t stamp;
} B;

/* ---- ids ---- */

/* Zipf(1.0) ranks over n items: exact CDF for the first K ranks, the tail by
 * the midpoint integral (sum_{j=a..b} 1/j ~ ln((b+0.5)/(a-0.5))). */
typedef struct {
    double *head; /* (k) cumulative 1/j, j = 1..k */
    uint64_t k, n;
    double total;
} zipf;

static zipf zipf_make(uint64_t n) {
    zipf z = {.n = n, .k = n < (1u << 20) ? n : (1u << 20)};
    z.head = malloc(z.k * sizeof(double));
    if (!z.head) exit(1);
    double acc = 0;
    for (uint64_t j = 0; j < z.k; j++) z.head[j] = (acc += 1.0 / (double)(j + 1));
    z.total = acc + (n > z.k ? log(((double)n + 0.5) / ((double)z.k + 0.5)) : 0);
    return z;
}

static uint64_t zipf_draw(const zipf *z, uint64_t *rng) {
    double u = (double)(splitmix(rng) >> 11) * 0x1.0p-53 * z->total;
    if (u < z->head[z->k - 1]) {
        uint64_t lo = 0, hi = z->k - 1;
        while (lo < hi) {
            uint64_t mid = (lo + hi) / 2;
            if (z->head[mid] < u) lo = mid + 1;
            else hi = mid;
        }
        return lo;
    }
    double x = ((double)z->k + 0.5) * exp(u - z->head[z->k - 1]);
    uint64_t j = (uint64_t)(x + 0.5); /* 1-based rank */
    if (j <= z->k) j = z->k + 1;
    if (j > z->n) j = z->n;
    return j - 1;
}

/* Fills the id pool for B.rows rows of B.heads heads: head h owns rows
 * [h*rph, (h+1)*rph); ranks scatter over its slice by rank*mul mod rph. */
static void make_pool(bool use_zipf) {
    uint64_t rph = B.rows / (uint64_t)B.heads, mul = 1000003;
    while (gcd(mul, rph) != 1) mul += 2;
    zipf z = {0};
    if (use_zipf) z = zipf_make(rph);
    size_t chunk = 1 << 16;
#pragma omp parallel for schedule(dynamic)
    for (size_t c = 0; c < B.pool_n; c += chunk) {
        uint64_t rng = 0x1234567ull * (c / chunk + 1) + (use_zipf ? 77 : 0);
        for (size_t i = c; i < c + chunk && i < B.pool_n; i++) {
            uint64_t h = i % (size_t)B.heads;
            uint64_t r = use_zipf ? zipf_draw(&z, &rng) * mul % rph : splitmix(&rng) % rph;
            B.pool[i] = (uint32_t)(h * rph + r);
        }
    }
    free(z.head);
    if (B.gpu) CK(cudaMemcpy(B.d_pool, B.pool, B.pool_n * 4, cudaMemcpyHostToDevice));
    B.pos = 0;
}

/* The next step's n ids (a fresh slice of the pool; its offset in *off). */
static const uint32_t *next_ids(size_t n, size_t *off) {
    if (B.pos + n > B.pool_n) B.pos = 0;
    *off = B.pos;
    B.pos += n;
    return B.pool + *off;
}

/* ---- CPU paths ---- */

static inline void prefetch_row(const uint8_t *p, int rb) {
    for (int o = 0; o < rb; o += 64) __builtin_prefetch(p + o);
    __builtin_prefetch(p + rb - 1);
}

/* dst row i = table row ids[i], i in [lo, hi), with rows PF ahead prefetched. */
static void gather_range(uint8_t *dst, const uint32_t *ids, size_t lo, size_t hi) {
    enum { PF = 16 };
    const uint8_t *tab = B.tab;
    const int rb = B.rb;
    for (size_t i = lo; i < hi && i < lo + PF; i++) prefetch_row(tab + (size_t)ids[i] * rb, rb);
    for (size_t i = lo; i < hi; i++) {
        if (i + PF < hi) prefetch_row(tab + (size_t)ids[i + PF] * rb, rb);
        const uint8_t *src = tab + (size_t)ids[i] * rb;
        if (rb == 128) memcpy(dst + i * 128, src, 128);
        else if (rb == 264) memcpy(dst + i * 264, src, 264);
        else memcpy(dst + i * rb, src, (size_t)rb);
    }
}

static void cpu_gather(int t, const uint32_t *ids, size_t n) {
    if (t == 1) {
        gather_range(B.stage, ids, 0, n);
        return;
    }
#pragma omp parallel num_threads(t)
    {
        int me = omp_get_thread_num(), nt = omp_get_num_threads();
        gather_range(B.stage, ids, n * me / nt, n * (me + 1) / nt);
    }
}

/* Deduplicates ids over t hash shards (thread `me` owns the ids whose hash
 * falls in shard me), gathers each shard's unique rows after the header:
 * offs[shard] (int32), inv[i] = shard << SHARD_SHIFT | index in shard.
 * Returns the unique rows, or 0 when a shard's table overflowed. */
static size_t dedup_gather(int t, const uint32_t *ids, size_t n) {
    int32_t *offs = (int32_t *)B.stage, *inv = (int32_t *)(B.stage + HDR_OFFS);
    uint8_t *rows = B.stage + hdr_bytes(n);
    uint32_t stamp = ++B.stamp;
    size_t per = (n + (size_t)t - 1) / (size_t)t, cap = 64;
    while (cap < 2 * per + 64) cap *= 2;
    if (cap > B.hcap) {
        fprintf(stderr, "dedup: table of %zu slots over the %zu allocated\n", cap, B.hcap);
        exit(1);
    }
    uint32_t mask = (uint32_t)cap - 1;
    int overflow = 0;
#pragma omp parallel num_threads(t) if (t > 1) reduction(| : overflow)
    {
        int me = omp_get_thread_num();
        struct slot *ht = B.ht[me];
        uint32_t *u = B.uniq[me];
        uint32_t c = 0;
        for (size_t i = 0; i < n; i++) {
            uint32_t id = ids[i], h = mix32(id);
            uint32_t shard = (uint32_t)(((uint64_t)h * (uint32_t)t) >> 32);
            if ((int)shard != me) continue;
            uint32_t s = h & mask;
            while (ht[s].stamp == stamp && ht[s].key != id) s = (s + 1) & mask;
            if (ht[s].stamp != stamp) {
                if (c >= cap * 3 / 4) {
                    overflow = 1;
                    break;
                }
                ht[s] = (struct slot){stamp, id, c};
                u[c++] = id;
            }
            inv[i] = (int32_t)(shard << SHARD_SHIFT | ht[s].val);
        }
        B.cnt[me] = c;
#pragma omp barrier
        size_t off = 0;
        for (int j = 0; j < me; j++) off += B.cnt[j];
        offs[me] = (int32_t)off;
        gather_range(rows + off * (size_t)B.rb, u, 0, c);
    }
    if (overflow) return 0;
    size_t total = 0;
    for (int j = 0; j < t; j++) total += B.cnt[j];
    return total;
}

/* ---- one point ---- */

typedef enum { M_UVA, M_CPU, M_DEDUP } method;

typedef struct {
    int rb;
    const char *dist;
    int tokens;
    method m;
    int t;
    double p50, p99, rps;
} result;

static result results[4096];
static int n_results;

/* One step of method m on the next n ids; returns seconds, the CPU part in
 * *cpu_s and the unique rows in *uniq. */
static double step(method m, int t, size_t n, double *cpu_s, size_t *uniq) {
    size_t off;
    const uint32_t *ids = next_ids(n, &off);
    double t0 = util_now(), t1 = t0;
    *uniq = n;
    if (m == M_UVA) {
        CK(fetch_gather_uva(B.d_out, B.d_tab, B.rb, B.d_pool + off, (long)n, B.st));
        CK(cudaStreamSynchronize(B.st));
    } else if (m == M_CPU) {
        cpu_gather(t, ids, n);
        t1 = util_now();
        if (B.gpu) {
            CK(cudaMemcpyAsync(B.d_out, B.stage, n * (size_t)B.rb, cudaMemcpyHostToDevice, B.st));
            CK(cudaStreamSynchronize(B.st));
        }
    } else {
        size_t u = dedup_gather(t, ids, n);
        if (!u) {
            fprintf(stderr, "dedup: a shard's hash table overflowed\n");
            exit(1);
        }
        *uniq = u;
        t1 = util_now();
        if (B.gpu) {
            size_t h = hdr_bytes(n);
            CK(cudaMemcpyAsync(B.d_stage, B.stage, h + u * (size_t)B.rb, cudaMemcpyHostToDevice, B.st));
            CK(fetch_expand(B.d_out, B.d_stage + h, B.rb, (const int32_t *)(B.d_stage + HDR_OFFS),
                            (const int32_t *)B.d_stage, (long)n, B.st));
            CK(cudaStreamSynchronize(B.st));
        }
    }
    double t2 = util_now();
    *cpu_s = m == M_UVA ? 0 : t1 - t0;
    (void)ids;
    return t2 - t0;
}

/* Runs one step on poisoned output and compares it with a host gather. */
static void check_step(method m, int t, size_t n) {
    size_t rb = (size_t)B.rb, save = B.pos, off, uniq;
    const uint32_t *ids = next_ids(n, &off);
    B.pos = save;
    for (size_t i = 0; i < n; i++) memcpy(B.ref + i * rb, B.tab + (size_t)ids[i] * rb, rb);
    memset(B.back, 0xa5, n * rb);
    memset(B.stage, 0x5a, hdr_bytes(n) + n * rb);
    if (B.gpu) CK(cudaMemset(B.d_out, 0xa5, n * rb));
    double c;
    step(m, t, n, &c, &uniq);
    if (B.gpu) {
        CK(cudaMemcpy(B.back, B.d_out, n * rb, cudaMemcpyDeviceToHost));
    } else if (m == M_CPU) {
        memcpy(B.back, B.stage, n * rb);
    } else { /* the expansion the kernel does, on the host */
        const int32_t *offs = (const int32_t *)B.stage, *inv = (const int32_t *)(B.stage + HDR_OFFS);
        const uint8_t *rows = B.stage + hdr_bytes(n);
        for (size_t i = 0; i < n; i++) {
            size_t r = (size_t)offs[inv[i] >> SHARD_SHIFT] + (size_t)(inv[i] & ((1 << SHARD_SHIFT) - 1));
            if (r >= uniq) {
                fprintf(stderr, "check: dedup inverse %zu -> %zu of %zu unique rows\n", i, r, uniq);
                exit(1);
            }
            memcpy(B.back + i * rb, rows + r * rb, rb);
        }
    }
    for (size_t i = 0; i < n; i++)
        if (memcmp(B.back + i * rb, B.ref + i * rb, rb)) {
            fprintf(stderr, "check FAILED: method %d threads %d n %zu: row %zu (id %u) differs\n", (int)m, t, n, i,
                    ids[i]);
            exit(1);
        }
}

static const char *mname(method m, int t, char *buf, size_t len) {
    if (m == M_UVA) snprintf(buf, len, "uva");
    else snprintf(buf, len, "%s%d", m == M_CPU ? "cpu" : "dedup", t);
    return buf;
}

static void run_point(method m, int t, int tokens, const char *dist, double seconds, int min_steps) {
    enum { MAX_STEPS = 20000 };
    static double lat[MAX_STEPS], cpu[MAX_STEPS];
    size_t n = (size_t)tokens * (size_t)B.heads, uniq, usum = 0;
    check_step(m, t, n);
    double c;
    step(m, t, n, &c, &uniq); /* warm-up */
    int k = 0;
    double sum = 0, t0 = util_now();
    while (k < MAX_STEPS && (k < min_steps || util_now() - t0 < seconds)) {
        lat[k] = step(m, t, n, &cpu[k], &uniq);
        sum += lat[k++];
        usum += uniq;
    }
    util_sort_doubles(lat, (size_t)k);
    util_sort_doubles(cpu, (size_t)k);
    int i99 = (int)ceil(0.99 * k) - 1;
    result r = {B.rb, dist, tokens, m, t, lat[k / 2], lat[i99 < 0 ? 0 : i99], (double)n * k / sum};
    char nm[32];
    printf("rb=%d dist=%-7s N=%5d rows=%6zu %-7s steps=%5d rows/s=%8.2fM p50=%9.1fus p99=%9.1fus cpu_p50=%9.1fus "
           "unique=%.3f\n",
           B.rb, dist, tokens, n, mname(m, t, nm, sizeof(nm)), k, r.rps * 1e-6, r.p50 * 1e6, r.p99 * 1e6,
           m == M_UVA ? 0.0 : cpu[k / 2] * 1e6, (double)usum / ((double)n * k));
    fflush(stdout);
    if (n_results < (int)(sizeof(results) / sizeof(results[0]))) results[n_results++] = r;
}

static void summary(const long *rbs, int n_rb, const char **dists, int n_dist, const long *toks, int n_tok) {
    printf("\nsummary: p50 us per step (rows/s), best thread count per family; winner = lowest p50\n");
    printf("%-4s %-7s %6s | %-20s | %-26s | %-26s | %s\n", "rb", "dist", "N", "uva", "best cpu", "best dedup",
           "winner");
    for (int a = 0; a < n_rb; a++)
        for (int d = 0; d < n_dist; d++)
            for (int k = 0; k < n_tok; k++) {
                const result *best[3] = {0};
                for (int i = 0; i < n_results; i++) {
                    const result *r = &results[i];
                    if (r->rb != rbs[a] || strcmp(r->dist, dists[d]) || r->tokens != toks[k]) continue;
                    if (!best[r->m] || r->p50 < best[r->m]->p50) best[r->m] = r;
                }
                char cell[3][48], nm[32];
                const result *win = NULL;
                for (int m = 0; m < 3; m++) {
                    if (!best[m]) {
                        snprintf(cell[m], sizeof(cell[m]), "-");
                        continue;
                    }
                    snprintf(cell[m], sizeof(cell[m]), "%s %.1f (%.1fM)", mname((method)m, best[m]->t, nm, sizeof(nm)),
                             best[m]->p50 * 1e6, best[m]->rps * 1e-6);
                    if (!win || best[m]->p50 < win->p50) win = best[m];
                }
                printf("%-4ld %-7s %6ld | %-20s | %-26s | %-26s | %s\n", rbs[a], dists[d], toks[k], cell[0], cell[1],
                       cell[2], win ? mname(win->m, win->t, nm, sizeof(nm)) : "-");
            }
}

static void thp_report(const char *when) {
    char line[256];
    FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
    if (f && fgets(line, sizeof(line), f)) printf("%s: transparent_hugepage %s", when, line);
    if (f) fclose(f);
    if ((f = fopen("/proc/meminfo", "r"))) {
        while (fgets(line, sizeof(line), f))
            if (!strncmp(line, "AnonHugePages:", 14) || !strncmp(line, "MemTotal:", 9) ||
                !strncmp(line, "MemAvailable:", 13))
                printf("%s: %s", when, line);
        fclose(f);
    }
}

/* ---- the program ---- */

/* Everything the command line sets (defaults in fetch_options_parse). */
typedef struct {
    double gib, seconds;
    long rbs[MAX_LIST], toks[MAX_LIST], ths[MAX_LIST], regs[MAX_LIST], pool_m;
    int n_rb, n_tok, n_th, n_reg, min_steps, heads;
    bool huge, cpu_check;
    const char *dists[2];
    int n_dist;
} fetch_options;

/* Sets the option a (which takes a value) from v. Returns 0, 1 for a bad
 * value, -1 for an unknown option. */
static int fetch_option_set(fetch_options *o, const char *a, const char *v) {
    long lv = 0;
    int bad = 0;
    if (!strcmp(a, "--gib")) bad = (o->gib = atof(v)) <= 0;
    else if (!strcmp(a, "--seconds")) bad = (o->seconds = atof(v)) < 0;
    else if (!strcmp(a, "--min-steps")) bad = util_parse_long(v, 1, INT_MAX, &lv), o->min_steps = (int)lv;
    else if (!strcmp(a, "--heads")) bad = util_parse_long(v, 1, INT_MAX, &lv), o->heads = (int)lv;
    else if (!strcmp(a, "--pool-m")) bad = util_parse_long(v, 1, LONG_MAX, &o->pool_m);
    else if (!strcmp(a, "--row-bytes")) bad = (o->n_rb = parse_list(v, o->rbs)) < 1;
    else if (!strcmp(a, "--tokens")) bad = (o->n_tok = parse_list(v, o->toks)) < 1;
    else if (!strcmp(a, "--threads")) bad = (o->n_th = parse_list(v, o->ths)) < 1;
    else if (!strcmp(a, "--register-gib")) bad = (o->n_reg = parse_list(v, o->regs)) < 0;
    else if (!strcmp(a, "--dist")) {
        if (!strcmp(v, "uniform") || !strcmp(v, "zipf")) o->dists[0] = v, o->n_dist = 1;
        else bad = strcmp(v, "uniform,zipf") != 0, o->n_dist = 2;
    } else return -1;
    return bad ? 1 : 0;
}

/* Fills o from argv. Returns -1 to go on, or 2 for a usage error (the
 * message on stderr). */
static int fetch_options_parse(int argc, char **argv, fetch_options *o) {
    *o = (fetch_options){.gib = 48, .seconds = 0.15, .rbs = {128, 264}, .toks = {1, 64, 256, 512, 4096, 16384},
                         .ths = {1, 4, 8, 16}, .regs = {1, 8}, .pool_m = 16, .n_rb = 2, .n_tok = 6, .n_th = 4,
                         .n_reg = 2, .min_steps = 20, .heads = 16, .huge = true, .dists = {"uniform", "zipf"},
                         .n_dist = 2};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--no-hugepages")) o->huge = false;
        else if (!strcmp(a, "--cpu-check")) o->cpu_check = true;
        else if (!v) {
            fprintf(stderr, "bench-gpu_engram_fetch: unknown option or missing value: %s (see the file's header)\n", a);
            return 2;
        } else {
            i++;
            int set = fetch_option_set(o, a, v);
            if (set < 0) {
                fprintf(stderr, "bench-gpu_engram_fetch: unknown option %s (see the file's header)\n", a);
                return 2;
            }
            if (set) {
                fprintf(stderr, "bench-gpu_engram_fetch: bad value for %s: %s\n", a, v);
                return 2;
            }
        }
    }
    for (int i = 0; i < o->n_rb; i++)
        if (o->rbs[i] < 4 || o->rbs[i] % 4) {
            fprintf(stderr, "bench-gpu_engram_fetch: row bytes must be a positive multiple of 4\n");
            return 2;
        }
    for (int i = 0; i < o->n_th; i++)
        if (o->ths[i] < 1 || o->ths[i] > MAX_THREADS) {
            fprintf(stderr, "bench-gpu_engram_fetch: threads 1..%d\n", MAX_THREADS);
            return 2;
        }
    return -1;
}

static long list_max(const long *v, int n, long floor) {
    for (int i = 0; i < n; i++) floor = v[i] > floor ? v[i] : floor;
    return floor;
}

/* The table: anonymous memory, huge pages advised, filled in parallel with
 * random bytes. Returns 0, or -1 with the message on stderr. */
static int table_fill(bool huge) {
    double t0 = util_now();
    B.tab = mmap(NULL, B.bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (B.tab == MAP_FAILED) {
        fprintf(stderr, "bench-gpu_engram_fetch: mmap of %zu bytes failed\n", B.bytes);
        return -1;
    }
    if (huge && madvise(B.tab, B.bytes, MADV_HUGEPAGE)) perror("madvise(MADV_HUGEPAGE)");
    size_t fchunk = 2u << 20;
#pragma omp parallel for schedule(static)
    for (size_t c = 0; c < B.bytes; c += fchunk) {
        uint64_t x = c * 0x9e3779b97f4a7c15ull + 1, *w = (uint64_t *)(B.tab + c);
        size_t m = (B.bytes - c < fchunk ? B.bytes - c : fchunk) / 8;
        for (size_t i = 0; i < m; i++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            w[i] = x;
        }
    }
    double t_fill = util_now() - t0;
    printf("table: %.2f GiB of random bytes, filled in %.2f s (%.1f GB/s), hugepages %s\n", B.bytes / 1073741824.0,
           t_fill, B.bytes / t_fill * 1e-9, huge ? "advised" : "off");
    thp_report("after fill");
    return 0;
}

/* cudaHostRegister: a few sizes registered and unregistered, then the
 * whole table, kept; the device buffers; the pinned host-to-device copy
 * rate, for scale. Exits on a CUDA error. */
static void gpu_setup(const fetch_options *o, size_t stage_bytes, long max_rb) {
    for (int i = 0; i < o->n_reg; i++) {
        size_t sz = (size_t)o->regs[i] << 30;
        if (sz >= B.bytes || sz == 0) continue;
        double t0 = util_now();
        CK(cudaHostRegister(B.tab, sz, cudaHostRegisterMapped));
        double tr = util_now() - t0;
        t0 = util_now();
        CK(cudaHostUnregister(B.tab));
        double tu = util_now() - t0;
        printf("cudaHostRegister %6.2f GiB: %8.3f s (%.1f GB/s), cudaHostUnregister %.3f s\n", sz / 1073741824.0, tr,
               sz / tr * 1e-9, tu);
    }
    double t0 = util_now();
    CK(cudaHostRegister(B.tab, B.bytes, cudaHostRegisterMapped));
    double tr = util_now() - t0;
    printf("cudaHostRegister %6.2f GiB: %8.3f s (%.1f GB/s) (the whole table, kept registered)\n",
           B.bytes / 1073741824.0, tr, B.bytes / tr * 1e-9);
    fflush(stdout);
    CK(cudaHostGetDevicePointer((void **)&B.d_tab, B.tab, 0));
    CK(cudaHostAlloc((void **)&B.stage, stage_bytes, cudaHostAllocDefault));
    CK(cudaMalloc((void **)&B.d_out, B.max_rows * (size_t)max_rb));
    CK(cudaMalloc((void **)&B.d_stage, stage_bytes));
    CK(cudaMalloc((void **)&B.d_pool, B.pool_n * 4));
    size_t cb = stage_bytes;
    memset(B.stage, 1, cb);
    double ts[11];
    for (int i = -2; i < 11; i++) {
        t0 = util_now();
        CK(cudaMemcpyAsync(B.d_stage, B.stage, cb, cudaMemcpyHostToDevice, B.st));
        CK(cudaStreamSynchronize(B.st));
        if (i >= 0) ts[i] = util_now() - t0;
    }
    util_sort_doubles(ts, 11);
    printf("pinned H2D cudaMemcpyAsync of %.1f MB: median %.1f us, %.1f GB/s\n", cb * 1e-6, ts[5] * 1e6,
           cb / ts[5] * 1e-9);
}

/* The host buffers: the id pool, the check rows, and per thread a dedup
 * table and unique ids. Returns 0, or -1 with the message on stderr. */
static int host_alloc(const fetch_options *o, long max_rb) {
    B.pool = malloc(B.pool_n * 4);
    B.ref = malloc(B.max_rows * (size_t)max_rb);
    B.back = malloc(B.max_rows * (size_t)max_rb);
    B.hcap = 64;
    while (B.hcap < 2 * B.max_rows + 64) B.hcap *= 2;
    int max_t = (int)list_max(o->ths, o->n_th, 1);
    for (int i = 0; i < max_t; i++) {
        B.ht[i] = calloc(B.hcap, sizeof(struct slot));
        B.uniq[i] = malloc(B.max_rows * 4);
        if (!B.ht[i] || !B.uniq[i]) {
            fprintf(stderr, "bench-gpu_engram_fetch: out of memory\n");
            return -1;
        }
    }
    if (!B.stage || !B.pool || !B.ref || !B.back) {
        fprintf(stderr, "bench-gpu_engram_fetch: out of memory\n");
        return -1;
    }
    return 0;
}

/* Every point: row sizes x distributions x token counts x methods. */
static void run_all(const fetch_options *o) {
    for (int a = 0; a < o->n_rb; a++) {
        B.rb = (int)o->rbs[a];
        B.rows = B.bytes / (size_t)B.rb;
        if (B.rows >= (1ull << 32)) B.rows = (1ull << 32) - 1; /* ids are uint32 */
        for (int d = 0; d < o->n_dist; d++) {
            const char *dist = o->dists[d];
            double t0 = util_now();
            make_pool(!strcmp(dist, "zipf"));
            printf("rows of %d bytes: %llu (%llu per head), %s ids drawn in %.2f s\n", B.rb,
                   (unsigned long long)B.rows, (unsigned long long)(B.rows / (uint64_t)o->heads), dist,
                   util_now() - t0);
            for (int k = 0; k < o->n_tok; k++) {
                int tokens = (int)o->toks[k];
                if (B.gpu) run_point(M_UVA, 1, tokens, dist, o->seconds, o->min_steps);
                for (int i = 0; i < o->n_th; i++)
                    run_point(M_CPU, (int)o->ths[i], tokens, dist, o->seconds, o->min_steps);
                for (int i = 0; i < o->n_th; i++)
                    run_point(M_DEDUP, (int)o->ths[i], tokens, dist, o->seconds, o->min_steps);
            }
        }
    }
}

int main(int argc, char **argv) {
    fetch_options o;
    int rc = fetch_options_parse(argc, argv, &o);
    if (rc >= 0) return rc;
    B.gpu = !o.cpu_check;
    B.heads = o.heads;
    B.bytes = (size_t)(o.gib * 1073741824.0) / 4096 * 4096;
    long max_tok = list_max(o.toks, o.n_tok, 0), max_rb = list_max(o.rbs, o.n_rb, 0);
    B.max_rows = (size_t)max_tok * (size_t)o.heads;
    B.pool_n = (size_t)o.pool_m << 20;
    if (B.pool_n < B.max_rows) B.pool_n = B.max_rows;
    B.pool_n = B.pool_n / (size_t)o.heads * (size_t)o.heads;
    size_t stage_bytes = hdr_bytes(B.max_rows) + B.max_rows * (size_t)max_rb;

    if (B.gpu) {
        struct cudaDeviceProp p;
        CK(cudaGetDeviceProperties(&p, 0));
        printf("device: %s, %d SMs, %.1f GiB; host: %d OpenMP procs\n", p.name, p.multiProcessorCount,
               p.totalGlobalMem / 1073741824.0, omp_get_num_procs());
        CK(cudaStreamCreateWithFlags(&B.st, cudaStreamNonBlocking));
    }
    if (table_fill(o.huge)) return 1;
    if (B.gpu) gpu_setup(&o, stage_bytes, max_rb);
    else B.stage = malloc(stage_bytes);
    if (host_alloc(&o, max_rb)) return 1;
    printf("steps: N tokens x %d heads, >= %.2f s and >= %d steps per point, id pool %zu ids (fresh ids every "
           "step); OMP_WAIT_POLICY=%s\n",
           o.heads, o.seconds, o.min_steps, B.pool_n,
           getenv("OMP_WAIT_POLICY") ? getenv("OMP_WAIT_POLICY") : "(unset)");
    fflush(stdout);
    run_all(&o);
    summary(o.rbs, o.n_rb, o.dists, o.n_dist, o.toks, o.n_tok);
    printf("all checks passed\n");
    return 0;
}
