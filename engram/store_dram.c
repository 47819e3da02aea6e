/* The DRAM tier of the Engram store (see store.h): the table file mapped
 * MAP_SHARED (random access advised, optionally huge pages and mlock), or an
 * anonymous mapping filled on the spot (engram_store_create_memory); gathers
 * read mapped rows directly, spread over threads when large. */
#include <errno.h>
#include <omp.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#include "base/err.h"
#include "engram/store_internal.h"

int engram_store__dram_open(engram_store *s, int fd, size_t size, char *err, size_t errlen) {
    s->fd = fd;
    s->map_len = size;
    void *m = mmap(NULL, s->map_len, PROT_READ, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED)
        return err_set(err, errlen, ENGRAM_STORE_EIO, "%s: mmap failed: %s", s->path, strerror(errno));
    s->map = m;
    madvise(m, s->map_len, MADV_RANDOM);
    if (s->p.hugepages) {
        if (madvise(m, s->map_len, MADV_HUGEPAGE) == 0)
            s->info.hugepages = true;
        else
            engram_store__note(s, "MADV_HUGEPAGE refused (%s); using base pages", strerror(errno));
    }
    if (s->p.mlock) {
        if (mlock(m, s->map_len))
            return err_set(err, errlen, ENGRAM_STORE_ELOCK,
                           "%s: mlock of %zu bytes failed: %s (raise RLIMIT_MEMLOCK or drop the lock option)",
                           s->path, s->map_len, strerror(errno));
        s->info.locked = true;
    }
    return ENGRAM_STORE_OK;
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
    engram_store *s = engram_store__new("(memory)", &p);
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
        int e = errno;
        double gb = (double)s->map_len / 1e9; /* h dies with s */
        s->map_len = 0;
        engram_store_close(s);
        return err_set(err, errlen, ENGRAM_STORE_ENOMEM, "in-memory table: cannot map %.2f GB: %s", gb, strerror(e));
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

/* Mapped rows: each output row is independent, so large gathers spread over
 * threads (a random DRAM row costs a memory latency; on the H100 machine 16
 * threads gather 128-byte rows at 56 M rows/s for 1024 rows, 172 M rows/s
 * for 262144: bench/RESULTS.md). A thread per GATHER_PER_THREAD rows at
 * most: waking threads costs more than small gathers take. */
#define GATHER_PER_THREAD 256

void engram_store__gather_mapped(const engram_store *s, const int64_t *rows, size_t n, row_out out) {
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
        engram_store__emit(h, base + (uint64_t)rows[i] * h->row_stride, out, i);
    }
}
