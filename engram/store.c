/* Engram table store, host tiers (see store.h): the table file format, its
 * writer, the DRAM tier (one MAP_SHARED mapping) and the NVMe tier (sorted,
 * deduplicated block runs read with O_DIRECT through io_uring with a full
 * queue, or with pread). Rows are decoded to f32 the same way in every tier. */
#include "store.h"

#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engram_fp8.h"

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

static int fail(char *err, size_t errlen, int status, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return status;
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
        return fail(err, errlen, E, "truncated header (%zu bytes, need %u)", len, ENGRAM_STORE_HEADER_BYTES);
    if (memcmp(p, ENGRAM_STORE_MAGIC, 8)) return fail(err, errlen, E, "wrong magic (not an Engram table file)");
    engram_store_header x;
    x.version = rd32(p + 8);
    x.dtype = rd32(p + 12);
    x.rows = rd64(p + 16);
    x.cols = rd32(p + 24);
    x.row_bytes = rd32(p + 28);
    x.row_stride = rd32(p + 32);
    x.data_offset = rd64(p + 40);
    if (x.version != ENGRAM_STORE_VERSION)
        return fail(err, errlen, E, "unsupported version %u (this build reads %u)", x.version, ENGRAM_STORE_VERSION);
    if (!strcmp(engram_store_dtype_name((int)x.dtype), "?")) return fail(err, errlen, E, "unknown dtype %u", x.dtype);
    uint32_t rb = engram_store_row_bytes((int)x.dtype, x.cols);
    if (!rb) return fail(err, errlen, E, "cols %u invalid for dtype %s", x.cols, engram_store_dtype_name((int)x.dtype));
    if (x.row_bytes != rb)
        return fail(err, errlen, E, "row_bytes %u, expected %u for %u %s values", x.row_bytes, rb, x.cols,
                    engram_store_dtype_name((int)x.dtype));
    if (x.row_stride != engram_store_row_stride(rb))
        return fail(err, errlen, E, "row_stride %u, expected %u", x.row_stride, engram_store_row_stride(rb));
    if (rd32(p + 36)) return fail(err, errlen, E, "reserved field is not zero");
    if (x.data_offset == 0 || x.data_offset % ENGRAM_STORE_BLOCK || x.data_offset > (1ull << 40))
        return fail(err, errlen, E, "data_offset %llu is not a positive multiple of 4096",
                    (unsigned long long)x.data_offset);
    if (x.rows < 1 || x.rows > (1ull << 48) / x.row_stride)
        return fail(err, errlen, E, "rows %llu out of range", (unsigned long long)x.rows);
    if (file_size) {
        uint64_t need = x.data_offset + (x.rows - 1) * x.row_stride + x.row_bytes;
        if (file_size < need)
            return fail(err, errlen, E, "truncated: %llu rows need %llu bytes, file has %llu",
                        (unsigned long long)x.rows, (unsigned long long)need, (unsigned long long)file_size);
    }
    *h = x;
    return ENGRAM_STORE_OK;
}

int engram_store_write(const char *path, int dtype, uint64_t rows, uint32_t cols, engram_store_row_fn fill,
                       void *ctx, char *err, size_t errlen) {
    uint32_t rb = engram_store_row_bytes(dtype, cols);
    if (!path || !fill || !rb || rows < 1)
        return fail(err, errlen, ENGRAM_STORE_EINVAL, "%s: bad table (dtype %d, %llu rows, %u cols)",
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
        return fail(err, errlen, ENGRAM_STORE_ENOMEM, "out of memory");
    }
    snprintf(tmp, tlen, "%s.tmp", path);
    int rc = ENGRAM_STORE_OK;
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        rc = fail(err, errlen, ENGRAM_STORE_EIO, "%s: cannot create: %s", tmp, strerror(errno));
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
                rc = fail(err, errlen, ENGRAM_STORE_EIO, "%s: row %llu could not be produced", path,
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
    if (fclose(f) && rc == ENGRAM_STORE_OK) rc = fail(err, errlen, ENGRAM_STORE_EIO, "%s: close: %s", tmp, strerror(errno));
    if (rc == ENGRAM_STORE_OK && rename(tmp, path))
        rc = fail(err, errlen, ENGRAM_STORE_EIO, "%s: cannot rename to %s: %s", tmp, path, strerror(errno));
    if (rc) unlink(tmp);
out:
    free(tmp);
    free(chunk);
    return rc;
ioerr:
    rc = fail(err, errlen, ENGRAM_STORE_EIO, "%s: write failed: %s", tmp, strerror(errno));
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
    if (!data) return fail(err, errlen, ENGRAM_STORE_EINVAL, "no data");
    return engram_store_write(path, dtype, rows, cols, dense_fill, &d, err, errlen);
}

/* ---- the store ---- */

/* One read: a run of whole blocks covering the rows of sorted[first..first+n). */
typedef struct {
    uint64_t off; /* file offset, a multiple of 4096 */
    uint32_t len; /* bytes, a multiple of 4096 */
    uint32_t first, n;
} block_run;

/* A requested row and where it goes. */
typedef struct {
    uint64_t off; /* file offset of the row */
    size_t idx;   /* index into rows/out */
} row_req;

struct engram_store {
    engram_store_params p;
    engram_store_info info;
    char *path;
    int fd;
    uint8_t *map; /* DRAM: the whole file */
    size_t map_len;
    /* NVMe */
    pthread_mutex_t mu;
    struct io_uring ring;
    uint8_t *buf;     /* (queue_depth, run_bytes) aligned read buffers */
    size_t run_bytes; /* largest run: one row's blocks */
    row_req *reqs;
    block_run *runs;
    size_t cap; /* capacity of reqs and runs */
};

engram_store_params engram_store_default_params(void) {
    engram_store_params p = {.tier = ENGRAM_STORE_DRAM, .queue_depth = 64};
    return p;
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

static void decode_row(const engram_store_header *h, const uint8_t *restrict src, float *restrict out) {
    uint32_t c = h->cols;
    switch (h->dtype) {
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

int engram_store_open(const char *path, const engram_store_params *params, engram_store **out, char *err,
                      size_t errlen) {
    if (!path || !out) return fail(err, errlen, ENGRAM_STORE_EINVAL, "engram_store_open: NULL argument");
    engram_store_params p = params ? *params : engram_store_default_params();
    if (p.tier != ENGRAM_STORE_DRAM && p.tier != ENGRAM_STORE_NVME)
        return fail(err, errlen, ENGRAM_STORE_EINVAL, "%s: unknown tier %d", path, (int)p.tier);
    if (p.tier == ENGRAM_STORE_NVME && (p.queue_depth < 1 || p.queue_depth > 4096))
        return fail(err, errlen, ENGRAM_STORE_EINVAL, "%s: queue depth %d outside 1..4096", path, p.queue_depth);
    engram_store *s = calloc(1, sizeof(*s));
    if (!s || !(s->path = strdup(path))) {
        free(s);
        return fail(err, errlen, ENGRAM_STORE_ENOMEM, "out of memory");
    }
    s->p = p;
    s->fd = -1;
    s->info.tier = p.tier;
    pthread_mutex_init(&s->mu, NULL);
    int rc;
    /* Header through a buffered descriptor first: it may be any size. */
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st)) {
        rc = fail(err, errlen, ENGRAM_STORE_EIO, "%s: cannot open: %s", path, strerror(errno));
        if (fd >= 0) close(fd);
        goto bad;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        rc = fail(err, errlen, ENGRAM_STORE_EFORMAT, "%s: not a regular file", path);
        goto bad;
    }
    uint8_t hb[ENGRAM_STORE_HEADER_BYTES];
    ssize_t got = pread(fd, hb, sizeof(hb), 0);
    char herr[256];
    if (got < 0 || engram_store_parse_header(hb, (size_t)got, (uint64_t)st.st_size ? (uint64_t)st.st_size : 1,
                                             &s->info.header, herr, sizeof(herr))) {
        close(fd);
        rc = got < 0 ? fail(err, errlen, ENGRAM_STORE_EIO, "%s: read failed: %s", path, strerror(errno))
                     : fail(err, errlen, ENGRAM_STORE_EFORMAT, "%s: %s", path, herr);
        goto bad;
    }
    const engram_store_header *h = &s->info.header;

    if (p.tier == ENGRAM_STORE_DRAM) {
        s->fd = fd;
        s->map_len = (size_t)st.st_size;
        void *m = mmap(NULL, s->map_len, PROT_READ, MAP_SHARED, fd, 0);
        if (m == MAP_FAILED) {
            rc = fail(err, errlen, ENGRAM_STORE_EIO, "%s: mmap failed: %s", path, strerror(errno));
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
                rc = fail(err, errlen, ENGRAM_STORE_ELOCK,
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
    if (posix_memalign((void **)&s->buf, ENGRAM_STORE_BLOCK, (size_t)p.queue_depth * s->run_bytes)) {
        s->buf = NULL;
        rc = fail(err, errlen, ENGRAM_STORE_ENOMEM, "out of memory");
        goto bad;
    }
    if (!p.use_pread) {
        int e = io_uring_queue_init((unsigned)p.queue_depth, &s->ring, 0);
        if (e == 0)
            s->info.io_uring = true;
        else
            note(s, "io_uring_queue_init failed (%s); using pread", strerror(-e));
    }
    /* Probe one direct read: some filesystems accept O_DIRECT at open and refuse the read. */
    if (s->info.direct && pread(s->fd, s->buf, ENGRAM_STORE_BLOCK, 0) < 0) {
        note(s, "O_DIRECT read refused (%s); reading through the page cache", strerror(errno));
        int bfd = open(path, O_RDONLY | O_CLOEXEC);
        if (bfd < 0) {
            rc = fail(err, errlen, ENGRAM_STORE_EIO, "%s: cannot open: %s", path, strerror(errno));
            goto bad;
        }
        close(s->fd);
        s->fd = bfd;
        s->info.direct = false;
    }
    *out = s;
    return ENGRAM_STORE_OK;
bad:
    engram_store_close(s);
    return rc;
}

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

/* Decodes the rows of run r from buf, given `got` bytes were read. */
static int finish_run(engram_store *s, const block_run *r, const uint8_t *buf, ssize_t got, float *out) {
    const engram_store_header *h = &s->info.header;
    if (got < 0) return -1;
    const row_req *q = s->reqs + r->first;
    uint64_t need = q[r->n - 1].off + h->row_bytes - r->off;
    if ((uint64_t)got < need) return -1;
    s->info.reads++;
    s->info.bytes_read += (uint64_t)got;
    for (uint32_t i = 0; i < r->n; i++) decode_row(h, buf + (q[i].off - r->off), out + q[i].idx * h->cols);
    return 0;
}

static int gather_nvme(engram_store *s, const int64_t *rows, size_t n, float *out) {
    const engram_store_header *h = &s->info.header;
    if (n > s->cap) {
        size_t cap = n < 1024 ? 1024 : n;
        row_req *q = realloc(s->reqs, cap * sizeof(*q));
        if (q) s->reqs = q;
        block_run *r = q ? realloc(s->runs, cap * sizeof(*r)) : NULL;
        if (r) s->runs = r;
        if (!q || !r) return ENGRAM_STORE_ENOMEM;
        s->cap = cap;
    }
    for (size_t i = 0; i < n; i++) {
        s->reqs[i].off = h->data_offset + (uint64_t)rows[i] * h->row_stride;
        s->reqs[i].idx = i;
    }
    qsort(s->reqs, n, sizeof(row_req), cmp_req);
    /* Runs: rows whose blocks coincide share one read (stride <= 4096: a row is in one block). */
    size_t nr = 0;
    for (size_t i = 0; i < n;) {
        uint64_t b = s->reqs[i].off & ~(uint64_t)(ENGRAM_STORE_BLOCK - 1);
        size_t j = i + 1;
        while (j < n && (s->reqs[j].off & ~(uint64_t)(ENGRAM_STORE_BLOCK - 1)) == b) j++;
        s->runs[nr++] = (block_run){b, (uint32_t)s->run_bytes, (uint32_t)i, (uint32_t)(j - i)};
        i = j;
    }
    int qd = s->p.queue_depth;
    if (!s->info.io_uring) {
        for (size_t r = 0; r < nr; r++)
            if (finish_run(s, &s->runs[r], s->buf, read_run(s, &s->runs[r], s->buf), out))
                return ENGRAM_STORE_EIO;
        return ENGRAM_STORE_OK;
    }
    /* io_uring: keep up to qd reads in flight; slot k owns buf + k*run_bytes. */
    int *free_slots = malloc((size_t)qd * sizeof(int));
    if (!free_slots) return ENGRAM_STORE_ENOMEM;
    int nfree = qd, inflight = 0, rc = ENGRAM_STORE_OK;
    for (int k = 0; k < qd; k++) free_slots[k] = qd - 1 - k;
    size_t next = 0;
    while (next < nr || inflight) {
        int queued = 0;
        while (next < nr && nfree && rc == ENGRAM_STORE_OK) {
            struct io_uring_sqe *sqe = io_uring_get_sqe(&s->ring);
            if (!sqe) break;
            int k = free_slots[--nfree];
            io_uring_prep_read(sqe, s->fd, s->buf + (size_t)k * s->run_bytes, s->runs[next].len,
                               s->runs[next].off);
            io_uring_sqe_set_data64(sqe, ((uint64_t)next << 16) | (uint64_t)k);
            next++;
            queued++;
        }
        if (queued) {
            int e = io_uring_submit(&s->ring);
            if (e < 0) { /* the ring is unusable: the caller redoes the gather with pread */
                rc = -1000;
                break;
            }
            inflight += queued;
        }
        if (!inflight) break;
        struct io_uring_cqe *cqe;
        int e = io_uring_wait_cqe(&s->ring, &cqe);
        if (e == -EINTR) continue;
        if (e < 0) {
            rc = ENGRAM_STORE_EIO;
            break;
        }
        uint64_t tag = io_uring_cqe_get_data64(cqe);
        int res = cqe->res;
        io_uring_cqe_seen(&s->ring, cqe);
        inflight--;
        size_t ri = (size_t)(tag >> 16);
        int k = (int)(tag & 0xffff);
        uint8_t *b = s->buf + (size_t)k * s->run_bytes;
        ssize_t got = res;
        if (res >= 0 && (uint32_t)res < s->runs[ri].len && res % 512 == 0 && res > 0) {
            /* short read: complete it synchronously */
            block_run rest = s->runs[ri];
            rest.off += (uint64_t)res;
            rest.len -= (uint32_t)res;
            ssize_t more = read_run(s, &rest, b + res);
            got = more < 0 ? more : res + more;
        }
        if (rc == ENGRAM_STORE_OK && finish_run(s, &s->runs[ri], b, got, out)) rc = ENGRAM_STORE_EIO;
        free_slots[nfree++] = k;
    }
    /* Drain anything still in flight after an error. */
    while (inflight > 0) {
        struct io_uring_cqe *cqe;
        if (io_uring_wait_cqe(&s->ring, &cqe)) break;
        io_uring_cqe_seen(&s->ring, cqe);
        inflight--;
    }
    free(free_slots);
    return rc;
}

int engram_store_prefetch(engram_store *s, const int64_t *rows, size_t n) {
    (void)s, (void)rows, (void)n;
    return ENGRAM_STORE_OK;
}

int engram_store_gather(engram_store *s, const int64_t *rows, size_t n, float *out, size_t *bad) {
    if (!s || (n && (!rows || !out)) || n > UINT32_MAX) return ENGRAM_STORE_EINVAL;
    const engram_store_header *h = &s->info.header;
    for (size_t i = 0; i < n; i++)
        if (rows[i] < 0 || (uint64_t)rows[i] >= h->rows) {
            if (bad) *bad = i;
            return ENGRAM_STORE_ERANGE;
        }
    if (s->map) {
        const uint8_t *base = s->map + h->data_offset;
        for (size_t i = 0; i < n; i++) {
            if (i + 8 < n) /* random rows: start the miss of a row a few rows ahead */
                for (uint32_t o = 0; o < h->row_bytes; o += 64)
                    __builtin_prefetch(base + (uint64_t)rows[i + 8] * h->row_stride + o);
            decode_row(h, base + (uint64_t)rows[i] * h->row_stride, out + i * h->cols);
        }
        return ENGRAM_STORE_OK;
    }
    pthread_mutex_lock(&s->mu);
    int rc = gather_nvme(s, rows, n, out);
    if (rc == -1000) {
        note(s, "io_uring_submit failed; using pread from now on");
        io_uring_queue_exit(&s->ring);
        s->info.io_uring = false;
        rc = gather_nvme(s, rows, n, out);
    }
    pthread_mutex_unlock(&s->mu);
    if (rc == ENGRAM_STORE_EIO) note(s, "read failed");
    return rc;
}

engram_store_info engram_store_get_info(const engram_store *s) { return s->info; }

void engram_store_close(engram_store *s) {
    if (!s) return;
    if (s->map) {
        if (s->info.locked) munlock(s->map, s->map_len);
        munmap(s->map, s->map_len);
    }
    if (s->info.io_uring) io_uring_queue_exit(&s->ring);
    if (s->fd >= 0) close(s->fd);
    pthread_mutex_destroy(&s->mu);
    free(s->buf);
    free(s->reqs);
    free(s->runs);
    free(s->path);
    free(s);
}
