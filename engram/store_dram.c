/* The DRAM tier of the Engram store (see store.h): the table file mapped
 * MAP_SHARED (random access advised, optionally huge pages and mlock), or an
 * anonymous mapping filled on the spot (engram_store_create_memory); gathers
 * read mapped rows directly, spread over threads when large. A file that
 * shrinks under its mapping is caught by a SIGBUS handler (the guard below):
 * the gather fails with EIO and the store is marked bad instead of the
 * process dying. */
#include <errno.h>
#include <omp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "base/err.h"
#include "engram/store_internal.h"

/* ---- the SIGBUS guard ----
 *
 * A read of a mapped page that lies past the end of a file that was cut
 * short (truncated, or rewritten in place) raises SIGBUS, whose default
 * action kills the process. Table files must not change under a server, but
 * an operator's mistake should cost the requests that needed the table, not
 * the server. Measured against the other way, an fstat before each gather
 * (bench-store --dram-check, bench/RESULTS.md), the handler costs the gather
 * nothing (one flag load) where fstat costs about a microsecond per gather,
 * and it is not racy (the file may shrink between the fstat and the loads).
 *
 * The handler looks the faulting address up in a fixed table of the mapped
 * stores (lock-free: slots hold atomics), maps an anonymous zero page over
 * the faulting page, so that the load completes (in whichever thread, an
 * OpenMP worker included: no longjmp out of a parallel region), and marks
 * the store bad. The gather checks the mark after its loads and fails with
 * ENGRAM_STORE_EIO, and so does every later gather of that store: its
 * mapping now holds zero pages where rows were. A SIGBUS at any other
 * address goes to the handler installed before ours, or kills as it would
 * have. mmap is not on POSIX's async-signal-safe list, but on Linux it is
 * the system call itself (no lock, no allocation). */
#define GUARD_SLOTS 256 /* mapped table files at once, at most (more are mapped unguarded, with a note) */

static struct {
    _Atomic(uintptr_t) lo, hi;       /* [lo, hi): the mapping; 0, 0 when free */
    _Atomic(engram_store *) store;
} guard[GUARD_SLOTS];
static pthread_mutex_t guard_mu = PTHREAD_MUTEX_INITIALIZER; /* registrations (not the handler) */
static struct sigaction guard_prev;
static uintptr_t guard_page; /* the page size (sysconf is not for a signal handler) */
static bool guard_installed;

static void guard_handler(int sig, siginfo_t *si, void *uc) {
    uintptr_t a = (uintptr_t)si->si_addr;
    for (int i = 0; i < GUARD_SLOTS; i++) {
        engram_store *s = atomic_load(&guard[i].store);
        if (!s || a < atomic_load(&guard[i].lo) || a >= atomic_load(&guard[i].hi)) continue;
        uintptr_t page = a & ~(guard_page - 1);
        atomic_store(&s->bad, 1);
        if (mmap((void *)page, (size_t)guard_page, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1,
                 0) != MAP_FAILED)
            return; /* the load is retried and reads zeros; the gather fails on the mark */
        break;
    }
    /* not ours (or the page could not be replaced): as if we were not here */
    if (guard_prev.sa_flags & SA_SIGINFO) {
        guard_prev.sa_sigaction(sig, si, uc);
    } else if (guard_prev.sa_handler != SIG_IGN && guard_prev.sa_handler != SIG_DFL) {
        guard_prev.sa_handler(sig);
    } else { /* the default action: the fault repeats on return and kills */
        signal(SIGBUS, SIG_DFL);
    }
}

/* Registers s's mapping with the guard (installing the handler the first
 * time). Returns 0, or -1 when the table is full (s stays unguarded). */
static int guard_add(engram_store *s) {
    pthread_mutex_lock(&guard_mu);
    if (!guard_installed) {
        struct sigaction sa = {0};
        guard_page = (uintptr_t)sysconf(_SC_PAGESIZE);
        sa.sa_sigaction = guard_handler;
        sa.sa_flags = SA_SIGINFO;
        sigemptyset(&sa.sa_mask);
        guard_installed = sigaction(SIGBUS, &sa, &guard_prev) == 0;
    }
    int rc = -1;
    for (int i = 0; i < GUARD_SLOTS && guard_installed && rc; i++)
        if (!atomic_load(&guard[i].store)) {
            atomic_store(&guard[i].lo, (uintptr_t)s->map);
            atomic_store(&guard[i].hi, (uintptr_t)s->map + s->map_len);
            atomic_store(&guard[i].store, s); /* last: the handler reads store first */
            rc = 0;
        }
    pthread_mutex_unlock(&guard_mu);
    return rc;
}

void engram_store__guard_remove(engram_store *s) {
    pthread_mutex_lock(&guard_mu);
    for (int i = 0; i < GUARD_SLOTS; i++)
        if (atomic_load(&guard[i].store) == s) {
            atomic_store(&guard[i].store, NULL);
            atomic_store(&guard[i].lo, 0);
            atomic_store(&guard[i].hi, 0);
        }
    pthread_mutex_unlock(&guard_mu);
}

int engram_store__dram_open(engram_store *s, int fd, size_t size, char *err, size_t errlen) {
    s->fd = fd;
    s->map_len = size;
    void *m = mmap(NULL, s->map_len, PROT_READ, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED)
        return err_set(err, errlen, ENGRAM_STORE_EIO, "%s: mmap failed: %s", s->path, strerror(errno));
    s->map = m;
    if (guard_add(s))
        engram_store__note(s, "more than %d mapped tables: a file shrinking under this one would stop the process",
                           GUARD_SLOTS);
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

/* Random rows: each output row is independent, so large gathers spread
 * over threads (a random DRAM row costs a memory latency; on the H100
 * machine 16 threads gather 128-byte rows at 56 M rows/s for 1024 rows, 172
 * M rows/s for 262144: bench/RESULTS.md). A thread per GATHER_PER_THREAD
 * rows at most: waking threads costs more than small gathers take. */
#define GATHER_PER_THREAD 256

void engram_store__emit_rows(const engram_store_header *h, const uint8_t *base, uint64_t stride, const int64_t *idx,
                             size_t n, row_out out) {
    /* leave two cores to the threads that issue the backend's work */
    int nt = omp_get_max_threads(), want = (int)(n / GATHER_PER_THREAD) + 1, room = omp_get_num_procs() - 2;
    if (want < nt) nt = want;
    if (room < nt) nt = room > 1 ? room : 1;
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (size_t i = 0; i < n; i++) {
        if (i + 8 < n && idx[i + 8] >= 0) { /* start the miss of a row a few rows ahead */
            const uint8_t *ahead = base + (uint64_t)idx[i + 8] * stride;
            for (uint32_t o = 0; o < h->row_bytes; o += 64) __builtin_prefetch(ahead + o);
            __builtin_prefetch(ahead + h->row_bytes - 1); /* a row off a cache line (dense stride) ends in one more */
        }
        if (idx[i] >= 0) engram_store__emit(h, base + (uint64_t)idx[i] * stride, out, i);
    }
}

int engram_store__gather_mapped(engram_store *s, const int64_t *rows, size_t n, row_out out) {
    if (atomic_load(&s->bad)) return ENGRAM_STORE_EIO;
    const engram_store_header *h = &s->info.header;
    engram_store__emit_rows(h, s->map + h->data_offset, h->row_stride, rows, n, out);
    return atomic_load(&s->bad) ? ENGRAM_STORE_EIO : ENGRAM_STORE_OK; /* a page was cut off under the loads */
}
