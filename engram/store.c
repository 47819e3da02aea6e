/* Engram table store, host tiers (see store.h): the table file format, its
 * writer, the DRAM tier (one MAP_SHARED mapping) and the NVMe tier (sorted,
 * deduplicated block runs read with O_DIRECT through io_uring with a full
 * queue, or with pread, under a DRAM budget: a CLOCK row cache and a
 * prefetch thread that fills it ahead of the gathers). Rows are decoded to
 * f32 the same way in every tier. */
#include "engram/store.h"
#include "base/err.h"

#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <omp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "engram/engram_fp8.h"
#include "engram/row_index.h"

/* Table files are little-endian; rows are decoded with native loads. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "engram/store reads little-endian table files with native loads"
#endif

const char *engram_store_status_str(int status) {
    switch (status) {
    case ENGRAM_STORE_OK: return "ok";
    case ENGRAM_STORE_EIO: return "i/o error";
    case ENGRAM_STORE_EFORMAT: return "not a valid Engram table file";
    case ENGRAM_STORE_EINVAL: return "invalid argument";
    case ENGRAM_STORE_ERANGE: return "row out of range";
    case ENGRAM_STORE_ENOMEM: return "out of memory";
    case ENGRAM_STORE_ELOCK: return "mlock refused";
    default: return "unknown status";
    }
}

const char *engram_store_dtype_name(int dtype) {
    switch (dtype) {
    case ENGRAM_STORE_F32: return "f32";
    case ENGRAM_STORE_BF16: return "bf16";
    case ENGRAM_STORE_F16: return "f16";
    case ENGRAM_STORE_FP8_UE8M0: return "fp8_ue8m0";
    default: return "?";
    }
}

uint32_t engram_store_row_bytes(int dtype, uint32_t cols) {
    if (cols < 1 || cols > ENGRAM_STORE_MAX_COLS) return 0;
    switch (dtype) {
    case ENGRAM_STORE_F32: return cols * 4;
    case ENGRAM_STORE_BF16:
    case ENGRAM_STORE_F16: return cols * 2;
    case ENGRAM_STORE_FP8_UE8M0: return cols % ENGRAM_FP8_BLOCK ? 0 : cols + cols / ENGRAM_FP8_BLOCK;
    default: return 0;
    }
}

uint32_t engram_store_row_stride(uint32_t row_bytes) {
    if (row_bytes > ENGRAM_STORE_BLOCK)
        return (row_bytes + ENGRAM_STORE_BLOCK - 1) / ENGRAM_STORE_BLOCK * ENGRAM_STORE_BLOCK;
    uint32_t s = 1;
    while (s < row_bytes) s <<= 1;
    return s;
}

static uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t rd64(const uint8_t *p) { return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32; }
static void wr32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void wr64(uint8_t *p, uint64_t v) {
    wr32(p, (uint32_t)v);
    wr32(p + 4, (uint32_t)(v >> 32));
}

int engram_store_parse_header(const void *buf, size_t len, uint64_t file_size, engram_store_header *h,
                              char *err, size_t errlen) {
    const uint8_t *p = buf;
    int E = ENGRAM_STORE_EFORMAT;
    if (!buf || len < ENGRAM_STORE_HEADER_BYTES)
        return err_set(err, errlen, E, "truncated header (%zu bytes, need %u)", len, ENGRAM_STORE_HEADER_BYTES);
    if (memcmp(p, ENGRAM_STORE_MAGIC, 8)) return err_set(err, errlen, E, "wrong magic (not an Engram table file)");
    engram_store_header x;
    x.version = rd32(p + 8);
    x.dtype = rd32(p + 12);
    x.rows = rd64(p + 16);
    x.cols = rd32(p + 24);
    x.row_bytes = rd32(p + 28);
    x.row_stride = rd32(p + 32);
    x.data_offset = rd64(p + 40);
    if (x.version != ENGRAM_STORE_VERSION)
        return err_set(err, errlen, E, "unsupported version %u (this build reads %u)", x.version, ENGRAM_STORE_VERSION);
    if (!strcmp(engram_store_dtype_name((int)x.dtype), "?")) return err_set(err, errlen, E, "unknown dtype %u", x.dtype);
    uint32_t rb = engram_store_row_bytes((int)x.dtype, x.cols);
    if (!rb) return err_set(err, errlen, E, "cols %u invalid for dtype %s", x.cols, engram_store_dtype_name((int)x.dtype));
    if (x.row_bytes != rb)
        return err_set(err, errlen, E, "row_bytes %u, expected %u for %u %s values", x.row_bytes, rb, x.cols,
                    engram_store_dtype_name((int)x.dtype));
    if (x.row_stride != engram_store_row_stride(rb))
        return err_set(err, errlen, E, "row_stride %u, expected %u", x.row_stride, engram_store_row_stride(rb));
    if (rd32(p + 36)) return err_set(err, errlen, E, "reserved field is not zero");
    if (x.data_offset == 0 || x.data_offset % ENGRAM_STORE_BLOCK || x.data_offset > (1ull << 40))
        return err_set(err, errlen, E, "data_offset %llu is not a positive multiple of 4096",
                    (unsigned long long)x.data_offset);
    if (x.rows < 1 || x.rows > (1ull << 48) / x.row_stride)
        return err_set(err, errlen, E, "rows %llu out of range", (unsigned long long)x.rows);
    if (file_size) {
        uint64_t need = x.data_offset + (x.rows - 1) * x.row_stride + x.row_bytes;
        if (file_size < need)
            return err_set(err, errlen, E, "truncated: %llu rows need %llu bytes, file has %llu",
                        (unsigned long long)x.rows, (unsigned long long)need, (unsigned long long)file_size);
    }
    *h = x;
    return ENGRAM_STORE_OK;
}

int engram_store_write(const char *path, int dtype, uint64_t rows, uint32_t cols, engram_store_row_fn fill,
                       void *ctx, char *err, size_t errlen) {
    uint32_t rb = engram_store_row_bytes(dtype, cols);
    if (!path || !fill || !rb || rows < 1)
        return err_set(err, errlen, ENGRAM_STORE_EINVAL, "%s: bad table (dtype %d, %llu rows, %u cols)",
                    path ? path : "(null)", dtype, (unsigned long long)rows, cols);
    uint32_t stride = engram_store_row_stride(rb);
    size_t tlen = strlen(path) + 5;
    char *tmp = malloc(tlen);
    /* a chunk of whole rows, at least 1 MiB */
    size_t per = stride >= (1u << 20) ? 1 : (1u << 20) / stride;
    uint8_t *chunk = calloc(per, stride);
    if (!tmp || !chunk) {
        free(tmp);
        free(chunk);
        return err_set(err, errlen, ENGRAM_STORE_ENOMEM, "out of memory");
    }
    snprintf(tmp, tlen, "%s.tmp", path);
    int rc = ENGRAM_STORE_OK;
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        rc = err_set(err, errlen, ENGRAM_STORE_EIO, "%s: cannot create: %s", tmp, strerror(errno));
        goto out;
    }
    uint8_t hdr[ENGRAM_STORE_BLOCK] = {0};
    memcpy(hdr, ENGRAM_STORE_MAGIC, 8);
    wr32(hdr + 8, ENGRAM_STORE_VERSION);
    wr32(hdr + 12, (uint32_t)dtype);
    wr64(hdr + 16, rows);
    wr32(hdr + 24, cols);
    wr32(hdr + 28, rb);
    wr32(hdr + 32, stride);
    wr64(hdr + 40, ENGRAM_STORE_BLOCK);
    if (fwrite(hdr, 1, sizeof(hdr), f) != sizeof(hdr)) goto ioerr;
    uint64_t total = 0;
    for (uint64_t r = 0; r < rows;) {
        size_t k = rows - r < per ? (size_t)(rows - r) : per;
        for (size_t i = 0; i < k; i++)
            if (fill(ctx, r + i, chunk + i * stride)) {
                rc = err_set(err, errlen, ENGRAM_STORE_EIO, "%s: row %llu could not be produced", path,
                          (unsigned long long)(r + i));
                goto close;
            }
        if (fwrite(chunk, stride, k, f) != k) goto ioerr;
        total += (uint64_t)k * stride;
        r += k;
    }
    if (total % ENGRAM_STORE_BLOCK) { /* pad to whole blocks: direct reads of the last block are full */
        size_t pad = ENGRAM_STORE_BLOCK - total % ENGRAM_STORE_BLOCK;
        memset(hdr, 0, sizeof(hdr));
        if (fwrite(hdr, 1, pad, f) != pad) goto ioerr;
    }
    if (fflush(f) || fsync(fileno(f))) goto ioerr;
close:
    if (fclose(f) && rc == ENGRAM_STORE_OK) rc = err_set(err, errlen, ENGRAM_STORE_EIO, "%s: close: %s", tmp, strerror(errno));
    if (rc == ENGRAM_STORE_OK && rename(tmp, path))
        rc = err_set(err, errlen, ENGRAM_STORE_EIO, "%s: cannot rename to %s: %s", tmp, path, strerror(errno));
    if (rc) unlink(tmp);
out:
    free(tmp);
    free(chunk);
    return rc;
ioerr:
    rc = err_set(err, errlen, ENGRAM_STORE_EIO, "%s: write failed: %s", tmp, strerror(errno));
    goto close;
}

typedef struct {
    const uint8_t *data;
    uint32_t rb;
} dense_ctx;

static int dense_fill(void *ctx, uint64_t row, void *dst) {
    const dense_ctx *d = ctx;
    memcpy(dst, d->data + row * d->rb, d->rb);
    return 0;
}

int engram_store_write_dense(const char *path, int dtype, uint64_t rows, uint32_t cols, const void *data,
                             char *err, size_t errlen) {
    dense_ctx d = {data, engram_store_row_bytes(dtype, cols)};
    if (!data) return err_set(err, errlen, ENGRAM_STORE_EINVAL, "no data");
    return engram_store_write(path, dtype, rows, cols, dense_fill, &d, err, errlen);
}

/* ---- the store ----
 *
 * NVMe tier with a DRAM budget: a row cache of fixed slots, each holding one
 * row's raw bytes as in the file (decoded on every gather, so a cached row
 * costs row_bytes, not 4*cols). Rows are Zipfian: a small hot set takes most
 * lookups. Replacement is CLOCK (second chance): a hit only sets a bit, so
 * hits need no list surgery under the lock (LRU would move a node per hit),
 * and a row must miss its bit twice over a full sweep of the hand before it
 * goes, which keeps the hot set and lets one-off rows pass through. Slots are
 * found by row id in an open-addressing table (linear probing, deletion by
 * backward shift: no tombstones to sweep). A slot is EMPTY, LOADING (a read
 * is in flight; whoever wants the row waits for it instead of reading it
 * again), READY, or FAILED (its read failed; waiters report EIO). Gathers
 * pin the slots they will read, so eviction never takes a row from under a
 * gather. Reads go through a reader (a ring and aligned buffers): gathers
 * share one under `io_mu`, the prefetch thread owns another, so its reads
 * never hold a gather up; it pauses while a gather runs (the gather is on the
 * forward pass's path, the prefetch is for later). Locks: `mu` guards the
 * cache; a thread takes io_mu, then mu briefly, never the reverse while
 * waiting. */

enum { SLOT_EMPTY, SLOT_LOADING, SLOT_READY, SLOT_FAILED };
#define NO_IDX SIZE_MAX
#define SLOT_OVERHEAD 32u  /* bytes per slot besides its row: row id 8, state 1, ref 1, pins 4, index <= 16 */
#define PF_QUEUE (1u << 16) /* prefetch ids waiting at most */
#define PF_BATCH 128u       /* ids the prefetch thread resolves per round: how long a gather may find it reading */

/* One read: a run of whole blocks covering the rows of reqs[first..first+n). */
typedef struct {
    uint64_t off; /* file offset, a multiple of 4096 */
    uint32_t len; /* bytes, a multiple of 4096 */
    uint32_t first, n;
} block_run;

/* A row to read and where it goes. */
typedef struct {
    uint64_t off; /* file offset of the row */
    size_t idx;   /* output row to decode into, or NO_IDX */
    int32_t slot; /* cache slot to fill, or -1 */
} row_req;

typedef struct {
    uint32_t n;        /* slots (0: no cache) */
    uint32_t hand;     /* CLOCK hand */
    uint64_t used;     /* slots LOADING or READY (in the index) */
    int64_t *row;      /* (n) row id held */
    uint8_t *state;    /* (n) SLOT_* */
    uint8_t *ref;      /* (n) CLOCK reference bit */
    uint32_t *pins;    /* (n) gathers that will read the slot */
    uint8_t *data;     /* (n, row_bytes) raw rows */
    row_index index;   /* row -> slot, over row[] */
} row_cache;

typedef _Atomic uint64_t counter;

/* What reads need: an io_uring (or pread when it is off) and queue_depth
 * aligned buffers of run_bytes, with each buffer's submit time. */
typedef struct {
    struct io_uring ring;
    bool uring;
    uint8_t *buf; /* (queue_depth, run_bytes) */
    double *t_sub;
} reader;

struct engram_store {
    engram_store_params p;
    engram_store_info info;
    char *path;
    int fd;
    uint8_t *map; /* DRAM: the whole file */
    size_t map_len;
    /* NVMe reads */
    pthread_mutex_t io_mu; /* the gathers' reader */
    reader rd, pf_rd;      /* gathers', the prefetch thread's */
    size_t run_bytes;      /* largest run: one row's blocks */
    _Atomic int gathering; /* gathers between their lookup and their last read */
    /* the row cache */
    pthread_mutex_t mu;
    pthread_cond_t ready; /* broadcast when slots leave SLOT_LOADING */
    row_cache c;
    /* prefetch: a ring of ids for one thread */
    pthread_mutex_t pf_mu;
    pthread_cond_t pf_cv;
    int64_t *pf_q; /* (PF_QUEUE) */
    pthread_cond_t pf_idle; /* under pf_mu: broadcast when `gathering` drops to 0 */
    size_t pf_head, pf_len;
    bool pf_stop, pf_started;
    pthread_t pf_thread;
    /* stats; times in nanoseconds */
    counter lookups, dram_hits, nvme_hits, prefetch_rows, prefetch_reads, prefetch_dropped, evictions;
    counter reads, bytes_read, read_ns, read_hist[ENGRAM_STORE_HIST_BUCKETS + 1];
    counter gathers, stall_ns, stall_hist[ENGRAM_STORE_HIST_BUCKETS + 1];
};

const double engram_store_hist_le[ENGRAM_STORE_HIST_BUCKETS] = {
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int engram_store_hist_bucket(double sec) {
    int b = 0;
    while (b < ENGRAM_STORE_HIST_BUCKETS && sec > engram_store_hist_le[b]) b++;
    return b;
}

static void observe(counter *hist, counter *sum_ns, double sec) {
    if (sec < 0) sec = 0;
    atomic_fetch_add_explicit(&hist[engram_store_hist_bucket(sec)], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(sum_ns, (uint64_t)(sec * 1e9), memory_order_relaxed);
}

static void add(counter *c, uint64_t v) { atomic_fetch_add_explicit(c, v, memory_order_relaxed); }
static uint64_t get(const counter *c) { return atomic_load_explicit((counter *)c, memory_order_relaxed); }

engram_store_params engram_store_default_params(void) {
    engram_store_params p = {.tier = ENGRAM_STORE_DRAM, .queue_depth = 64};
    return p;
}

uint64_t engram_store_mem_available(void) {
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f) return 0;
    char line[256];
    unsigned long long kb = 0;
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) break;
    fclose(f);
    return (uint64_t)kb * 1024;
}

static void note(const engram_store *s, const char *fmt, ...) {
    if (s->p.quiet) return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "engram_store: %s: ", s->path);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* Where gathered rows go: decoded to f32 (out + i*cols floats) or copied as
 * they are in the file (out + i*row_bytes bytes). */
typedef struct {
    void *p;
    bool raw;
} row_out;

void engram_store_decode_row(int dtype, uint32_t cols, const void *row, float *restrict out) {
    const uint8_t *restrict src = row;
    uint32_t c = cols;
    switch (dtype) {
    case ENGRAM_STORE_F32: memcpy(out, src, (size_t)c * 4); break;
    case ENGRAM_STORE_BF16:
        for (uint32_t j = 0; j < c; j++) { /* little-endian host: see the check at the top */
            uint16_t v;
            memcpy(&v, src + 2 * j, 2);
            uint32_t u = (uint32_t)v << 16;
            memcpy(out + j, &u, 4);
        }
        break;
    case ENGRAM_STORE_F16:
        for (uint32_t j = 0; j < c; j++) {
            uint32_t hv = (uint32_t)src[2 * j] | (uint32_t)src[2 * j + 1] << 8;
            uint32_t sign = (hv & 0x8000u) << 16, e = (hv >> 10) & 0x1f, m = hv & 0x3ff, u;
            if (e == 0x1f) {
                u = sign | 0x7f800000u | (m << 13);
            } else if (e == 0) {
                if (m == 0) {
                    u = sign;
                } else { /* subnormal: normalize */
                    int k = -1;
                    do {
                        k++;
                        m <<= 1;
                    } while (!(m & 0x400));
                    u = sign | ((uint32_t)(127 - 15 - k) << 23) | ((m & 0x3ff) << 13);
                }
            } else {
                u = sign | ((e + 127 - 15) << 23) | (m << 13);
            }
            memcpy(out + j, &u, 4);
        }
        break;
    case ENGRAM_STORE_FP8_UE8M0: engram_fp8_decode_row(src, src + c, (int)c, out); break;
    default: break; /* rejected at open */
    }
}

static void emit(const engram_store_header *h, const uint8_t *src, row_out o, size_t i) {
    if (o.raw) memcpy((uint8_t *)o.p + i * h->row_bytes, src, h->row_bytes);
    else engram_store_decode_row((int)h->dtype, h->cols, src, (float *)o.p + i * h->cols);
}

/* ---- row cache: index and CLOCK (callers hold mu) ---- */

/* A slot for row, now LOADING and indexed, or -1 when every slot is pinned
 * or loading (a batch larger than the cache: the caller reads uncached). */
static int32_t alloc_slot(engram_store *s, int64_t row) {
    row_cache *c = &s->c;
    for (uint64_t step = 0; step < 2ull * c->n + 1 && c->n; step++) {
        uint32_t k = c->hand;
        c->hand = k + 1 == c->n ? 0 : k + 1;
        if (c->pins[k] || c->state[k] == SLOT_LOADING) continue;
        if (c->state[k] == SLOT_READY) {
            if (c->ref[k]) { /* second chance */
                c->ref[k] = 0;
                continue;
            }
            row_index_remove(&c->index, c->row[k]);
            c->used--;
            add(&s->evictions, 1);
        }
        c->row[k] = row;
        c->state[k] = SLOT_LOADING;
        c->ref[k] = 0; /* a new row must be hit once before it outlives a sweep */
        row_index_insert(&c->index, row, (int32_t)k);
        c->used++;
        return (int32_t)k;
    }
    return -1;
}

/* After a read: the slots of q still LOADING failed; waiters see FAILED. */
static void fail_unfinished(engram_store *s, const row_req *q, size_t n) {
    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; i < n; i++) {
        int32_t k = q[i].slot;
        if (k >= 0 && s->c.state[k] == SLOT_LOADING) {
            row_index_remove(&s->c.index, s->c.row[k]);
            s->c.used--;
            s->c.state[k] = SLOT_FAILED;
        }
    }
    pthread_cond_broadcast(&s->ready);
    pthread_mutex_unlock(&s->mu);
}

/* ---- reads (callers hold io_mu) ---- */

static int cmp_req(const void *a, const void *b) {
    const row_req *x = a, *y = b;
    return x->off < y->off ? -1 : x->off > y->off ? 1 : (x->idx > y->idx) - (x->idx < y->idx);
}

/* Reads run r into buf (pread path); returns bytes or -errno. */
static ssize_t read_run(engram_store *s, const block_run *r, uint8_t *buf) {
    size_t done = 0;
    while (done < r->len) {
        ssize_t k = pread(s->fd, buf + done, r->len - done, (off_t)(r->off + done));
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) return -errno;
        if (k == 0) break; /* end of file: the caller checks what it needs */
        done += (size_t)k;
    }
    return (ssize_t)done;
}

/* Delivers the rows of run r from buf, given `got` bytes were read: decoded
 * into out for output rows, copied into their slots (then READY) for cached
 * ones. A slot is LOADING and owned by this reader, so its bytes are written
 * without the lock; the state flips under it. */
static int finish_run(engram_store *s, const row_req *q, const block_run *r, const uint8_t *buf, ssize_t got,
                      double latency, row_out out) {
    const engram_store_header *h = &s->info.header;
    if (got < 0) return -1;
    q += r->first;
    uint64_t need = q[r->n - 1].off + h->row_bytes - r->off;
    if ((uint64_t)got < need) return -1;
    add(&s->reads, 1);
    add(&s->bytes_read, (uint64_t)got);
    observe(s->read_hist, &s->read_ns, latency);
    bool cached = false;
    for (uint32_t i = 0; i < r->n; i++) {
        const uint8_t *src = buf + (q[i].off - r->off);
        if (q[i].idx != NO_IDX) emit(h, src, out, q[i].idx);
        if (q[i].slot >= 0) {
            memcpy(s->c.data + (size_t)q[i].slot * h->row_bytes, src, h->row_bytes);
            cached = true;
        }
    }
    if (cached) {
        pthread_mutex_lock(&s->mu);
        for (uint32_t i = 0; i < r->n; i++)
            if (q[i].slot >= 0) s->c.state[q[i].slot] = SLOT_READY;
        pthread_cond_broadcast(&s->ready);
        pthread_mutex_unlock(&s->mu);
    }
    return 0;
}

/* io_uring: keeps up to queue_depth runs in flight; buffer k owns
 * buf + k*run_bytes. Sets *done to the runs finished (all of them unless
 * submitting failed: then the ring is closed and the caller goes on with
 * pread). Returns ENGRAM_STORE_OK or ENGRAM_STORE_EIO. */
static int read_runs_uring(engram_store *s, reader *rd, const row_req *q, const block_run *runs, size_t nr,
                           size_t *done, row_out out) {
    int qd = s->p.queue_depth;
    int *free_bufs = malloc((size_t)qd * sizeof(int));
    if (!free_bufs) return ENGRAM_STORE_ENOMEM;
    int nfree = qd, inflight = 0, rc = ENGRAM_STORE_OK;
    for (int k = 0; k < qd; k++) free_bufs[k] = qd - 1 - k;
    size_t next = 0;
    bool broken = false;
    while ((next < nr && !broken) || inflight) {
        int queued = 0;
        while (next < nr && nfree && rc == ENGRAM_STORE_OK && !broken) {
            struct io_uring_sqe *sqe = io_uring_get_sqe(&rd->ring);
            if (!sqe) break;
            int k = free_bufs[--nfree];
            io_uring_prep_read(sqe, s->fd, rd->buf + (size_t)k * s->run_bytes, runs[next].len, runs[next].off);
            io_uring_sqe_set_data64(sqe, ((uint64_t)next << 16) | (uint64_t)k);
            rd->t_sub[k] = now_s();
            next++;
            queued++;
        }
        if (queued) {
            if (io_uring_submit(&rd->ring) < 0) { /* the ring is unusable: give the runs back to pread */
                broken = true;
                next -= (size_t)queued;
                nfree += queued; /* free_bufs still holds their indices */
            } else {
                inflight += queued;
            }
        }
        if (!inflight) break;
        struct io_uring_cqe *cqe;
        int e = io_uring_wait_cqe(&rd->ring, &cqe);
        if (e == -EINTR) continue;
        if (e < 0) {
            rc = ENGRAM_STORE_EIO;
            break;
        }
        uint64_t tag = io_uring_cqe_get_data64(cqe);
        int res = cqe->res;
        io_uring_cqe_seen(&rd->ring, cqe);
        inflight--;
        size_t ri = (size_t)(tag >> 16);
        int k = (int)(tag & 0xffff);
        uint8_t *b = rd->buf + (size_t)k * s->run_bytes;
        ssize_t got = res;
        if (res > 0 && (uint32_t)res < runs[ri].len && res % 512 == 0) { /* short read: finish synchronously */
            block_run rest = runs[ri];
            rest.off += (uint64_t)res;
            rest.len -= (uint32_t)res;
            ssize_t more = read_run(s, &rest, b + res);
            got = more < 0 ? more : res + more;
        }
        if (rc == ENGRAM_STORE_OK && finish_run(s, q, &runs[ri], b, got, now_s() - rd->t_sub[k], out))
            rc = ENGRAM_STORE_EIO;
        free_bufs[nfree++] = k;
    }
    while (inflight > 0) { /* after an error: drain */
        struct io_uring_cqe *cqe;
        if (io_uring_wait_cqe(&rd->ring, &cqe)) break;
        io_uring_cqe_seen(&rd->ring, cqe);
        inflight--;
    }
    free(free_bufs);
    if (broken && rc == ENGRAM_STORE_OK) {
        note(s, "io_uring_submit failed; using pread from now on");
        io_uring_queue_exit(&rd->ring);
        rd->uring = false;
        if (rd == &s->rd) s->info.io_uring = false;
    }
    *done = next;
    return rc;
}

/* Reads the rows of q (sorted here by offset): rows sharing a block share
 * one read. Returns ENGRAM_STORE_OK, _EIO or _ENOMEM; on failure the slots
 * not filled are still LOADING (see fail_unfinished). */
static int read_reqs(engram_store *s, reader *rd, row_req *q, size_t n, row_out out) {
    qsort(q, n, sizeof(row_req), cmp_req);
    block_run *runs = malloc(n * sizeof(block_run));
    if (!runs) return ENGRAM_STORE_ENOMEM;
    /* stride <= 4096: a row lies in one block; larger strides are block aligned: a run per row */
    size_t nr = 0;
    for (size_t i = 0; i < n;) {
        uint64_t b = q[i].off & ~(uint64_t)(ENGRAM_STORE_BLOCK - 1);
        size_t j = i + 1;
        while (j < n && (q[j].off & ~(uint64_t)(ENGRAM_STORE_BLOCK - 1)) == b) j++;
        runs[nr++] = (block_run){b, (uint32_t)s->run_bytes, (uint32_t)i, (uint32_t)(j - i)};
        i = j;
    }
    int rc = ENGRAM_STORE_OK;
    size_t next = 0;
    if (rd->uring) rc = read_runs_uring(s, rd, q, runs, nr, &next, out);
    for (; next < nr && rc == ENGRAM_STORE_OK; next++) {
        double t0 = now_s();
        ssize_t got = read_run(s, &runs[next], rd->buf);
        if (finish_run(s, q, &runs[next], rd->buf, got, now_s() - t0, out)) rc = ENGRAM_STORE_EIO;
    }
    free(runs);
    return rc;
}

/* ---- gathers ---- */

static int gather_nvme(engram_store *s, const int64_t *rows, size_t n, row_out out) {
    const engram_store_header *h = &s->info.header;
    row_cache *c = &s->c;
    int32_t *slot_of = malloc(n * sizeof(int32_t)); /* (n) pinned slot of each row, or -1: read uncached */
    row_req *q = malloc(n * sizeof(row_req));
    if (!slot_of || !q) {
        free(slot_of), free(q);
        return ENGRAM_STORE_ENOMEM;
    }
    size_t nq = 0, hits = 0;
    bool waits = false;
    atomic_fetch_add(&s->gathering, 1); /* the prefetch thread holds off its next batch */
    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; i < n; i++) {
        uint64_t off = h->data_offset + (uint64_t)rows[i] * h->row_stride;
        int32_t k = c->n ? row_index_find(&c->index, rows[i]) : -1;
        if (k >= 0) { /* cached, or in flight: a repeat in this call, or another thread's read */
            c->pins[k]++;
            if (c->state[k] == SLOT_READY) {
                c->ref[k] = 1;
                hits++;
            } else {
                waits = true;
            }
        } else if ((k = alloc_slot(s, rows[i])) >= 0) {
            c->pins[k]++;
            q[nq++] = (row_req){off, NO_IDX, k};
        } else {
            q[nq++] = (row_req){off, i, -1};
        }
        slot_of[i] = k;
    }
    pthread_mutex_unlock(&s->mu);
    double t0 = now_s();
    int rc = ENGRAM_STORE_OK;
    if (nq) {
        pthread_mutex_lock(&s->io_mu);
        rc = read_reqs(s, &s->rd, q, nq, out);
        pthread_mutex_unlock(&s->io_mu);
        if (rc) fail_unfinished(s, q, nq);
    }
    if (atomic_fetch_sub(&s->gathering, 1) == 1 && s->pf_started) {
        pthread_mutex_lock(&s->pf_mu);
        pthread_cond_broadcast(&s->pf_idle);
        pthread_mutex_unlock(&s->pf_mu);
    }
    /* Wait for rows in flight, note which failed, then decode outside the
     * lock: a pinned READY slot is never evicted nor rewritten. */
    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; i < n; i++) {
        int32_t k = slot_of[i];
        while (k >= 0 && c->state[k] == SLOT_LOADING) pthread_cond_wait(&s->ready, &s->mu);
        if (k >= 0 && c->state[k] != SLOT_READY) rc = rc ? rc : ENGRAM_STORE_EIO;
    }
    pthread_mutex_unlock(&s->mu);
    double stall = nq || waits ? now_s() - t0 : 0;
    if (rc == ENGRAM_STORE_OK)
        for (size_t i = 0; i < n; i++)
            if (slot_of[i] >= 0) emit(h, c->data + (size_t)slot_of[i] * h->row_bytes, out, i);
    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; i < n; i++)
        if (slot_of[i] >= 0) c->pins[slot_of[i]]--;
    pthread_mutex_unlock(&s->mu);
    add(&s->lookups, n);
    add(&s->dram_hits, hits);
    add(&s->nvme_hits, n - hits);
    add(&s->gathers, 1);
    observe(s->stall_hist, &s->stall_ns, stall);
    free(slot_of), free(q);
    return rc;
}

/* Mapped rows: each output row is independent, so large gathers spread over
 * threads (a random DRAM row costs a memory latency; on the H100 machine 16
 * threads gather 128-byte rows at 56 M rows/s for 1024 rows, 172 M rows/s
 * for 262144: bench/RESULTS.md). A thread per GATHER_PER_THREAD rows at
 * most: waking threads costs more than small gathers take. */
#define GATHER_PER_THREAD 256

static void gather_mapped(const engram_store *s, const int64_t *rows, size_t n, row_out out) {
    const engram_store_header *h = &s->info.header;
    const uint8_t *base = s->map + h->data_offset;
    /* leave two cores to the threads that issue the backend's work */
    int nt = omp_get_max_threads(), want = (int)(n / GATHER_PER_THREAD) + 1, room = omp_get_num_procs() - 2;
    if (want < nt) nt = want;
    if (room < nt) nt = room > 1 ? room : 1;
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (size_t i = 0; i < n; i++) {
        if (i + 8 < n) /* random rows: start the miss of a row a few rows ahead */
            for (uint32_t o = 0; o < h->row_bytes; o += 64)
                __builtin_prefetch(base + (uint64_t)rows[i + 8] * h->row_stride + o);
        emit(h, base + (uint64_t)rows[i] * h->row_stride, out, i);
    }
}

static int gather(engram_store *s, const int64_t *rows, size_t n, row_out out, size_t *bad) {
    if (!s || (n && (!rows || !out.p)) || n > UINT32_MAX) return ENGRAM_STORE_EINVAL;
    const engram_store_header *h = &s->info.header;
    for (size_t i = 0; i < n; i++)
        if (rows[i] < 0 || (uint64_t)rows[i] >= h->rows) {
            if (bad) *bad = i;
            return ENGRAM_STORE_ERANGE;
        }
    if (!n) return ENGRAM_STORE_OK;
    if (s->map) {
        gather_mapped(s, rows, n, out);
        add(&s->lookups, n);
        add(&s->dram_hits, n);
        return ENGRAM_STORE_OK;
    }
    int rc = gather_nvme(s, rows, n, out);
    if (rc == ENGRAM_STORE_EIO) note(s, "read failed");
    return rc;
}

int engram_store_gather(engram_store *s, const int64_t *rows, size_t n, float *out, size_t *bad) {
    return gather(s, rows, n, (row_out){out, false}, bad);
}

int engram_store_gather_raw(engram_store *s, const int64_t *rows, size_t n, void *out, size_t *bad) {
    return gather(s, rows, n, (row_out){out, true}, bad);
}

/* ---- prefetch ---- */

int engram_store_prefetch(engram_store *s, const int64_t *rows, size_t n) {
    if (n && !rows) return ENGRAM_STORE_EINVAL;
    if (!s || !s->pf_started || !n) return ENGRAM_STORE_OK;
    pthread_mutex_lock(&s->pf_mu);
    size_t room = PF_QUEUE - s->pf_len, k = n < room ? n : room;
    for (size_t i = 0; i < k; i++) s->pf_q[(s->pf_head + s->pf_len + i) % PF_QUEUE] = rows[i];
    s->pf_len += k;
    if (k) pthread_cond_signal(&s->pf_cv);
    pthread_mutex_unlock(&s->pf_mu);
    add(&s->prefetch_rows, n);
    if (k < n) add(&s->prefetch_dropped, n - k);
    return ENGRAM_STORE_OK;
}

/* The prefetch thread: takes up to PF_BATCH ids, claims slots for those
 * neither cached nor in flight, reads them with its own reader. Already
 * cached rows get their reference bit: they are about to be used. It starts
 * no batch while a gather runs: the disk is the gather's then. */
static void *prefetch_main(void *arg) {
    engram_store *s = arg;
    const engram_store_header *h = &s->info.header;
    int64_t ids[PF_BATCH];
    row_req q[PF_BATCH];
    for (;;) {
        pthread_mutex_lock(&s->pf_mu);
        while ((!s->pf_len || atomic_load(&s->gathering)) && !s->pf_stop)
            pthread_cond_wait(s->pf_len ? &s->pf_idle : &s->pf_cv, &s->pf_mu);
        if (s->pf_stop) {
            pthread_mutex_unlock(&s->pf_mu);
            return NULL;
        }
        size_t m = s->pf_len < PF_BATCH ? s->pf_len : PF_BATCH;
        for (size_t i = 0; i < m; i++) ids[i] = s->pf_q[(s->pf_head + i) % PF_QUEUE];
        s->pf_head = (s->pf_head + m) % PF_QUEUE;
        s->pf_len -= m;
        pthread_mutex_unlock(&s->pf_mu);

        size_t nq = 0;
        pthread_mutex_lock(&s->mu);
        for (size_t i = 0; i < m; i++) {
            if (ids[i] < 0 || (uint64_t)ids[i] >= h->rows) continue;
            int32_t k = row_index_find(&s->c.index, ids[i]);
            if (k >= 0)
                s->c.ref[k] = 1;
            else if ((k = alloc_slot(s, ids[i])) >= 0)
                q[nq++] = (row_req){h->data_offset + (uint64_t)ids[i] * h->row_stride, NO_IDX, k};
        }
        pthread_mutex_unlock(&s->mu);
        if (!nq) continue;
        int rc = read_reqs(s, &s->pf_rd, q, nq, (row_out){0});
        if (rc) {
            fail_unfinished(s, q, nq);
            note(s, "prefetch read failed");
        } else {
            add(&s->prefetch_reads, nq);
        }
    }
}

/* ---- open, stats, close ---- */

/* A reader of queue_depth buffers, with an io_uring unless told to pread or
 * refused (a note says so; pread then). Returns 0, or -1 out of memory. */
static int reader_init(engram_store *s, reader *rd) {
    int qd = s->p.queue_depth;
    rd->t_sub = calloc((size_t)qd, sizeof(double));
    if (!rd->t_sub || posix_memalign((void **)&rd->buf, ENGRAM_STORE_BLOCK, (size_t)qd * s->run_bytes)) {
        rd->buf = NULL;
        return -1;
    }
    if (!s->p.use_pread) {
        int e = io_uring_queue_init((unsigned)qd, &rd->ring, 0);
        if (e == 0)
            rd->uring = true;
        else
            note(s, "io_uring_queue_init failed (%s); using pread", strerror(-e));
    }
    return 0;
}

static void reader_free(reader *rd) {
    if (rd->uring) io_uring_queue_exit(&rd->ring);
    rd->uring = false;
    free(rd->buf);
    free(rd->t_sub);
}

/* Sizes and allocates the row cache for a budget of `budget` bytes. */
static int cache_init(engram_store *s, uint64_t budget) {
    const engram_store_header *h = &s->info.header;
    uint64_t n = budget / (h->row_bytes + SLOT_OVERHEAD);
    if (n > h->rows) n = h->rows;
    if (n > (1u << 29)) n = 1u << 29; /* the index (4n entries at most) stays within int32 slots */
    if (!n) return 0;
    row_cache *c = &s->c;
    c->n = (uint32_t)n;
    c->row = malloc(n * sizeof(int64_t));
    c->state = calloc(n, 1);
    c->ref = calloc(n, 1);
    c->pins = calloc(n, sizeof(uint32_t));
    c->data = malloc(n * h->row_bytes);
    s->pf_q = malloc(PF_QUEUE * sizeof(int64_t));
    if (!c->row || !c->state || !c->ref || !c->pins || !c->data || !s->pf_q || row_index_init(&c->index, n, c->row))
        return -1;
    s->info.cache_rows = n;
    s->info.cache_bytes = n * (h->row_bytes + 8 + 1 + 1 + 4) + ((uint64_t)c->index.mask + 1) * 4;
    return 0;
}

/* A store with nothing open yet (engram_store_close frees it), or NULL. */
static engram_store *store_new(const char *path, const engram_store_params *p) {
    engram_store *s = calloc(1, sizeof(*s));
    if (!s || !(s->path = strdup(path))) {
        free(s);
        return NULL;
    }
    s->p = *p;
    s->fd = -1;
    pthread_mutex_init(&s->mu, NULL);
    pthread_mutex_init(&s->io_mu, NULL);
    pthread_mutex_init(&s->pf_mu, NULL);
    pthread_cond_init(&s->ready, NULL);
    pthread_cond_init(&s->pf_cv, NULL);
    pthread_cond_init(&s->pf_idle, NULL);
    return s;
}

int engram_store_open(const char *path, const engram_store_params *params, engram_store **out, char *err,
                      size_t errlen) {
    if (!path || !out) return err_set(err, errlen, ENGRAM_STORE_EINVAL, "engram_store_open: NULL argument");
    engram_store_params p = params ? *params : engram_store_default_params();
    if (p.tier != ENGRAM_STORE_DRAM && p.tier != ENGRAM_STORE_NVME && p.tier != ENGRAM_STORE_AUTO)
        return err_set(err, errlen, ENGRAM_STORE_EINVAL, "%s: unknown tier %d", path, (int)p.tier);
    if (p.tier != ENGRAM_STORE_DRAM && (p.queue_depth < 1 || p.queue_depth > 4096))
        return err_set(err, errlen, ENGRAM_STORE_EINVAL, "%s: queue depth %d outside 1..4096", path, p.queue_depth);
    engram_store *s = store_new(path, &p);
    if (!s) return err_set(err, errlen, ENGRAM_STORE_ENOMEM, "out of memory");
    int rc;
    /* Header through a buffered descriptor first: it may be any size. */
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st)) {
        rc = err_set(err, errlen, ENGRAM_STORE_EIO, "%s: cannot open: %s", path, strerror(errno));
        if (fd >= 0) close(fd);
        goto bad;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        rc = err_set(err, errlen, ENGRAM_STORE_EFORMAT, "%s: not a regular file", path);
        goto bad;
    }
    uint8_t hb[ENGRAM_STORE_HEADER_BYTES];
    ssize_t got = pread(fd, hb, sizeof(hb), 0);
    char herr[256];
    if (got < 0 || engram_store_parse_header(hb, (size_t)got, (uint64_t)st.st_size ? (uint64_t)st.st_size : 1,
                                             &s->info.header, herr, sizeof(herr))) {
        close(fd);
        rc = got < 0 ? err_set(err, errlen, ENGRAM_STORE_EIO, "%s: read failed: %s", path, strerror(errno))
                     : err_set(err, errlen, ENGRAM_STORE_EFORMAT, "%s: %s", path, herr);
        goto bad;
    }
    const engram_store_header *h = &s->info.header;
    if (p.tier == ENGRAM_STORE_AUTO) { /* the whole table in DRAM when the budget holds it */
        uint64_t table = h->rows * h->row_stride, budget = p.dram_budget;
        if (!budget) {
            uint64_t avail = engram_store_mem_available();
            budget = !avail || table <= avail ? table : avail / 2;
        }
        p.tier = budget >= table ? ENGRAM_STORE_DRAM : ENGRAM_STORE_NVME;
        p.dram_budget = budget;
        s->p = p;
    }
    s->info.tier = p.tier;
    s->info.hbm_cache = p.hbm_cache;

    if (p.tier == ENGRAM_STORE_DRAM) {
        s->fd = fd;
        s->map_len = (size_t)st.st_size;
        void *m = mmap(NULL, s->map_len, PROT_READ, MAP_SHARED, fd, 0);
        if (m == MAP_FAILED) {
            rc = err_set(err, errlen, ENGRAM_STORE_EIO, "%s: mmap failed: %s", path, strerror(errno));
            goto bad;
        }
        s->map = m;
        madvise(m, s->map_len, MADV_RANDOM);
        if (p.hugepages) {
            if (madvise(m, s->map_len, MADV_HUGEPAGE) == 0)
                s->info.hugepages = true;
            else
                note(s, "MADV_HUGEPAGE refused (%s); using base pages", strerror(errno));
        }
        if (p.mlock) {
            if (mlock(m, s->map_len)) {
                rc = err_set(err, errlen, ENGRAM_STORE_ELOCK,
                          "%s: mlock of %zu bytes failed: %s (raise RLIMIT_MEMLOCK or drop the lock option)",
                          path, s->map_len, strerror(errno));
                goto bad;
            }
            s->info.locked = true;
        }
        *out = s;
        return ENGRAM_STORE_OK;
    }

    /* NVMe: O_DIRECT unless told not to or refused. */
    s->fd = -1;
    if (!p.no_direct) {
        s->fd = open(path, O_RDONLY | O_CLOEXEC | O_DIRECT);
        if (s->fd < 0)
            note(s, "O_DIRECT refused by the filesystem (%s); reading through the page cache", strerror(errno));
    }
    if (s->fd >= 0) {
        close(fd);
        s->info.direct = true;
    } else {
        s->fd = fd;
    }
    s->run_bytes = h->row_stride < ENGRAM_STORE_BLOCK ? ENGRAM_STORE_BLOCK : h->row_stride;
    if (reader_init(s, &s->rd)) {
        rc = err_set(err, errlen, ENGRAM_STORE_ENOMEM, "out of memory");
        goto bad;
    }
    s->info.io_uring = s->rd.uring;
    /* Probe one direct read: some filesystems accept O_DIRECT at open and refuse the read. */
    if (s->info.direct && pread(s->fd, s->rd.buf, ENGRAM_STORE_BLOCK, 0) < 0) {
        note(s, "O_DIRECT read refused (%s); reading through the page cache", strerror(errno));
        int bfd = open(path, O_RDONLY | O_CLOEXEC);
        if (bfd < 0) {
            rc = err_set(err, errlen, ENGRAM_STORE_EIO, "%s: cannot open: %s", path, strerror(errno));
            goto bad;
        }
        close(s->fd);
        s->fd = bfd;
        s->info.direct = false;
    }
    if (cache_init(s, p.dram_budget)) {
        rc = err_set(err, errlen, ENGRAM_STORE_ENOMEM, "%s: out of memory for a row cache of %llu bytes", path,
                  (unsigned long long)p.dram_budget);
        goto bad;
    }
    if (s->c.n) {
        if (reader_init(s, &s->pf_rd)) {
            rc = err_set(err, errlen, ENGRAM_STORE_ENOMEM, "out of memory");
            goto bad;
        }
        int e = pthread_create(&s->pf_thread, NULL, prefetch_main, s);
        if (e) {
            rc = err_set(err, errlen, ENGRAM_STORE_ENOMEM, "%s: cannot start the prefetch thread: %s", path, strerror(e));
            goto bad;
        }
        s->pf_started = true;
    }
    *out = s;
    return ENGRAM_STORE_OK;
bad:
    engram_store_close(s);
    return rc;
}

int engram_store_create_memory(int dtype, uint64_t rows, uint32_t cols, engram_store_row_fn fill, void *ctx,
                               const engram_store_params *params, engram_store **out, char *err, size_t errlen) {
    if (!fill || !out) return err_set(err, errlen, ENGRAM_STORE_EINVAL, "engram_store_create_memory: NULL argument");
    uint32_t rb = engram_store_row_bytes(dtype, cols);
    if (!rb || !rows || rows > (UINT64_MAX - ENGRAM_STORE_BLOCK) / 4096 / (cols ? cols : 1))
        return err_set(err, errlen, ENGRAM_STORE_EINVAL, "in-memory table: bad shape (%llu rows, %u cols, dtype %d)",
                    (unsigned long long)rows, cols, dtype);
    engram_store_params p = params ? *params : engram_store_default_params();
    p.tier = ENGRAM_STORE_DRAM;
    engram_store *s = store_new("(memory)", &p);
    if (!s) return err_set(err, errlen, ENGRAM_STORE_ENOMEM, "out of memory");
    engram_store_header *h = &s->info.header;
    *h = (engram_store_header){.version = ENGRAM_STORE_VERSION, .dtype = (uint32_t)dtype, .rows = rows, .cols = cols,
                               .row_bytes = rb, .row_stride = engram_store_row_stride(rb),
                               .data_offset = ENGRAM_STORE_BLOCK};
    s->info.tier = ENGRAM_STORE_DRAM;
    s->info.hbm_cache = s->p.hbm_cache;
    s->map_len = (size_t)(h->data_offset + rows * h->row_stride);
    void *m = mmap(NULL, s->map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) {
        s->map_len = 0;
        engram_store_close(s);
        return err_set(err, errlen, ENGRAM_STORE_ENOMEM, "in-memory table: cannot map %.2f GB: %s",
                    (double)(h->data_offset + rows * h->row_stride) / 1e9, strerror(errno));
    }
    s->map = m;
    s->info.hugepages = madvise(m, s->map_len, MADV_HUGEPAGE) == 0; /* fewer faults and TLB misses */
    uint8_t *base = s->map + h->data_offset;
    int bad = 0;
#pragma omp parallel for schedule(dynamic, 4096) reduction(| : bad)
    for (uint64_t r = 0; r < rows; r++)
        if (!bad) bad |= fill(ctx, r, base + r * h->row_stride) != 0;
    if (bad) {
        engram_store_close(s);
        return err_set(err, errlen, ENGRAM_STORE_EIO, "in-memory table: the row generator failed");
    }
    mprotect(m, s->map_len, PROT_READ); /* like a mapped file: nobody writes rows after this */
    if (s->p.mlock) {
        if (mlock(m, s->map_len)) {
            engram_store_close(s);
            return err_set(err, errlen, ENGRAM_STORE_ELOCK, "in-memory table: mlock failed: %s", strerror(errno));
        }
        s->info.locked = true;
    }
    *out = s;
    return ENGRAM_STORE_OK;
}

engram_store_info engram_store_get_info(const engram_store *s) {
    engram_store_info in = s->info;
    in.reads = get(&s->reads);
    in.bytes_read = get(&s->bytes_read);
    return in;
}

void engram_store_get_stats(const engram_store *s, engram_store_stats *o) {
    memset(o, 0, sizeof(*o));
    o->lookups = get(&s->lookups);
    o->dram_hits = get(&s->dram_hits);
    o->nvme_hits = get(&s->nvme_hits);
    o->prefetch_rows = get(&s->prefetch_rows);
    o->prefetch_reads = get(&s->prefetch_reads);
    o->prefetch_dropped = get(&s->prefetch_dropped);
    o->evictions = get(&s->evictions);
    pthread_mutex_lock((pthread_mutex_t *)&s->mu);
    o->cache_rows = s->c.used;
    pthread_mutex_unlock((pthread_mutex_t *)&s->mu);
    o->cache_capacity = s->info.cache_rows;
    o->cache_bytes = s->info.cache_bytes;
    o->nvme_reads = get(&s->reads);
    o->nvme_bytes = get(&s->bytes_read);
    o->nvme_read_seconds = (double)get(&s->read_ns) * 1e-9;
    o->gathers = get(&s->gathers);
    o->stall_seconds = (double)get(&s->stall_ns) * 1e-9;
    for (int b = 0; b <= ENGRAM_STORE_HIST_BUCKETS; b++) {
        o->nvme_read_hist[b] = get(&s->read_hist[b]);
        o->stall_hist[b] = get(&s->stall_hist[b]);
    }
}

void engram_store_stats_add(engram_store_stats *sum, const engram_store_stats *x) {
    sum->lookups += x->lookups;
    sum->dram_hits += x->dram_hits;
    sum->nvme_hits += x->nvme_hits;
    sum->prefetch_rows += x->prefetch_rows;
    sum->prefetch_reads += x->prefetch_reads;
    sum->prefetch_dropped += x->prefetch_dropped;
    sum->evictions += x->evictions;
    sum->cache_rows += x->cache_rows;
    sum->cache_capacity += x->cache_capacity;
    sum->cache_bytes += x->cache_bytes;
    sum->nvme_reads += x->nvme_reads;
    sum->nvme_bytes += x->nvme_bytes;
    sum->nvme_read_seconds += x->nvme_read_seconds;
    sum->gathers += x->gathers;
    sum->stall_seconds += x->stall_seconds;
    for (int b = 0; b <= ENGRAM_STORE_HIST_BUCKETS; b++) {
        sum->nvme_read_hist[b] += x->nvme_read_hist[b];
        sum->stall_hist[b] += x->stall_hist[b];
    }
}

void engram_store_close(engram_store *s) {
    if (!s) return;
    if (s->pf_started) {
        pthread_mutex_lock(&s->pf_mu);
        s->pf_stop = true;
        pthread_cond_signal(&s->pf_cv);
        pthread_cond_signal(&s->pf_idle);
        pthread_mutex_unlock(&s->pf_mu);
        pthread_join(s->pf_thread, NULL);
    }
    if (s->map) {
        if (s->info.locked) munlock(s->map, s->map_len);
        munmap(s->map, s->map_len);
    }
    reader_free(&s->rd);
    reader_free(&s->pf_rd);
    if (s->fd >= 0) close(s->fd);
    pthread_mutex_destroy(&s->mu);
    pthread_mutex_destroy(&s->io_mu);
    pthread_mutex_destroy(&s->pf_mu);
    pthread_cond_destroy(&s->ready);
    pthread_cond_destroy(&s->pf_cv);
    pthread_cond_destroy(&s->pf_idle);
    free(s->c.row), free(s->c.state), free(s->c.ref), free(s->c.pins), free(s->c.data);
    row_index_free(&s->c.index);
    free(s->pf_q);
    free(s->path);
    free(s);
}
