/* The NVMe tier of the Engram store (see store.h): rows read from the table
 * file with O_DIRECT (buffered when the filesystem refuses it), sorted and
 * deduplicated into runs of whole blocks, through io_uring with a full queue
 * or with pread; under a DRAM budget, a row cache (store_cache: the CLOCK of
 * engram/row_cache plus per-slot load states, pins and bytes, admission by
 * engram/freq_sketch) that gathers, the prefetch thread (prefetch.c) and the
 * warm start (store_hot.c) fill. See store_internal.h for the
 * slot states and the locks. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/err.h"
#include "base/fault.h"
#include "base/util.h"
#include "engram/store_internal.h"

/* ---- the row cache (callers hold mu) ---- */

/* The hand passes over slots that a gather will read or a read is filling. */
static bool slot_busy(const void *ctx, uint32_t k) {
    const store_cache *c = ctx;
    return c->clock.slot[k].pins || c->clock.slot[k].state == SLOT_LOADING;
}

/* A slot for row, now LOADING and indexed, or -1 when every slot is pinned
 * or loading (a batch larger than the cache: the caller reads uncached), or
 * when `filter` and TinyLFU keeps row out: CLOCK's victim was used at least
 * as often lately, so the cache is better off keeping it (the row is read
 * uncached; the victim stays first in line). Empty slots take any row.
 * Admissions and evictions are counted. */
int32_t engram_store__alloc_slot(engram_store *s, int64_t row, bool filter) {
    store_cache *c = &s->c;
    int32_t k = row_cache_victim(&c->clock, slot_busy, c);
    if (k < 0) return -1;
    int64_t victim = c->clock.slot[k].row;
    if (filter && victim >= 0 && s->p.admission == ENGRAM_STORE_ADMIT_TINYLFU &&
        freq_sketch_estimate(&c->sketch, (uint64_t)row) <= freq_sketch_estimate(&c->sketch, (uint64_t)victim)) {
        counter_add(&s->rejections, 1);
        return -1;
    }
    if (row_cache_put(&c->clock, k, row) >= 0) counter_add(&s->evictions, 1);
    counter_add(&s->admissions, 1);
    c->clock.slot[k].state = SLOT_LOADING;
    return k;
}

/* After a read: the slots of q still LOADING failed; waiters see FAILED. */
void engram_store__fail_unfinished(engram_store *s, const row_req *q, size_t n) {
    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; i < n; i++) {
        int32_t k = q[i].slot;
        if (k >= 0 && s->c.clock.slot[k].state == SLOT_LOADING) {
            row_cache_drop(&s->c.clock, k);
            s->c.clock.slot[k].state = SLOT_FAILED;
        }
    }
    pthread_cond_broadcast(&s->ready);
    pthread_mutex_unlock(&s->mu);
}

/* DRAM of a row cache of n slots: the rows, their slots (row_slot: id,
 * ref, pins, state), the index (a power of two >= 2n entries of 4 bytes)
 * and the sketch (a power of two >= n, at least 64: 2 bytes of counters and
 * 1 of doorkeeper each). */
static uint64_t cache_footprint(uint32_t row_bytes, uint64_t n) {
    uint64_t idx = 2, w = 64;
    while (idx < 2 * n) idx <<= 1;
    while (w < n) w <<= 1;
    return n * (row_bytes + sizeof(row_slot)) + idx * 4 + w * 3;
}

/* Sizes and allocates the row cache for a budget of `budget` bytes. */
static int cache_init(engram_store *s, uint64_t budget) {
    const engram_store_header *h = &s->info.header;
    uint64_t n = budget / (h->row_bytes + SLOT_OVERHEAD);
    if (n > h->rows) n = h->rows;
    if (n > (1u << 29)) n = 1u << 29; /* the index (4n entries at most) stays within int32 slots */
    while (n && cache_footprint(h->row_bytes, n) > budget) { /* powers of two may overshoot: fewer slots */
        uint64_t d = (cache_footprint(h->row_bytes, n) - budget) / (h->row_bytes + SLOT_OVERHEAD) + 1;
        n = d < n ? n - d : 0;
    }
    if (!n) return 0;
    store_cache *c = &s->c;
    c->data = util_alloc_huge(n * h->row_bytes); /* read at random by gathers; touched as slots fill */
    if (row_cache_init(&c->clock, n) || !c->data || freq_sketch_init(&c->sketch, n, s->p.sketch_seed)) return -1;
    s->info.cache_rows = n;
    s->info.cache_bytes = cache_footprint(h->row_bytes, n);
    return 0;
}

/* ---- reads (callers hold io_mu, or own the reader) ---- */

static int cmp_req(const void *a, const void *b) {
    const row_req *x = a, *y = b;
    return x->off < y->off ? -1 : x->off > y->off ? 1 : (x->idx > y->idx) - (x->idx < y->idx);
}

/* Reads run r into buf (pread path); returns bytes or -errno. */
static ssize_t read_run(engram_store *s, const block_run *r, uint8_t *buf) {
    size_t done = 0;
    while (done < r->len) {
        ssize_t k = fault_read(pread(s->fd, buf + done, r->len - done, (off_t)(r->off + done)), (long)(r->len - done), false);
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
    counter_add(&s->reads, 1);
    counter_add(&s->bytes_read, (uint64_t)got);
    counter_observe(s->read_hist, &s->read_ns, latency);
    bool cached = false;
    for (uint32_t i = 0; i < r->n; i++) {
        const uint8_t *src = buf + (q[i].off - r->off);
        if (q[i].idx != NO_IDX) engram_store__emit(h, src, out, q[i].idx);
        if (q[i].slot >= 0) {
            memcpy(s->c.data + (size_t)q[i].slot * h->row_bytes, src, h->row_bytes);
            cached = true;
        }
    }
    if (cached) {
        pthread_mutex_lock(&s->mu);
        for (uint32_t i = 0; i < r->n; i++)
            if (q[i].slot >= 0) s->c.clock.slot[q[i].slot].state = SLOT_READY;
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
    int qd = rd->qd;
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
            io_uring_prep_read(sqe, s->fd, rd->buf + (size_t)k * rd->run_max, runs[next].len, runs[next].off);
            io_uring_sqe_set_data64(sqe, ((uint64_t)next << 16) | (uint64_t)k);
            rd->t_sub[k] = util_now();
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
        int res = (int)fault_read(cqe->res, cqe->res, true);
        io_uring_cqe_seen(&rd->ring, cqe);
        inflight--;
        size_t ri = (size_t)(tag >> 16);
        int k = (int)(tag & 0xffff);
        uint8_t *b = rd->buf + (size_t)k * rd->run_max;
        ssize_t got = res;
        if (res > 0 && (uint32_t)res < runs[ri].len && res % 512 == 0) { /* short read: finish synchronously */
            block_run rest = runs[ri];
            rest.off += (uint64_t)res;
            rest.len -= (uint32_t)res;
            ssize_t more = read_run(s, &rest, b + res);
            got = more < 0 ? more : res + more;
        }
        if (rc == ENGRAM_STORE_OK && finish_run(s, q, &runs[ri], b, got, util_now() - rd->t_sub[k], out))
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
        engram_store__note(s, "io_uring_submit failed; using pread from now on");
        io_uring_queue_exit(&rd->ring);
        rd->uring = false;
        if (rd == &s->rd) s->info.io_uring = false;
    }
    *done = next;
    return rc;
}

/* The block below off, and the block end above off + len. */
static uint64_t block_floor(uint64_t off) { return off & ~(uint64_t)(ENGRAM_STORE_BLOCK - 1); }
static uint64_t block_ceil(uint64_t end) { return block_floor(end + ENGRAM_STORE_BLOCK - 1); }

/* Reads the rows of q (sorted here by offset) in runs of whole blocks:
 * rows sharing a block share one read, and with the reader's run_max and
 * gap_max (see reader) nearby rows share a longer one. Returns
 * ENGRAM_STORE_OK, _EIO or _ENOMEM; on failure the slots not filled are
 * still LOADING (see engram_store__fail_unfinished). */
int engram_store__read_reqs(engram_store *s, reader *rd, row_req *q, size_t n, row_out out) {
    const uint32_t rb = s->info.header.row_bytes;
    qsort(q, n, sizeof(row_req), cmp_req);
    block_run *runs = malloc(n * sizeof(block_run));
    if (!runs) return ENGRAM_STORE_ENOMEM;
    /* a row spans at most run_bytes of blocks (row_span), so one row always fits a run (run_max >= run_bytes):
     * a row straddling two blocks is one read of both, copied out at its offset in the first (finish_run) */
    size_t nr = 0;
    for (size_t i = 0; i < n;) {
        uint64_t b = block_floor(q[i].off), e = block_ceil(q[i].off + rb);
        size_t j = i + 1;
        for (; j < n; j++) {
            uint64_t ej = block_ceil(q[j].off + rb);
            if (ej - b > rd->run_max || block_floor(q[j].off) > e + rd->gap_max) break;
            if (ej > e) e = ej;
        }
        runs[nr++] = (block_run){b, (uint32_t)(e - b), (uint32_t)i, (uint32_t)(j - i)};
        i = j;
    }
    int rc = ENGRAM_STORE_OK;
    size_t next = 0;
    if (rd->uring) rc = read_runs_uring(s, rd, q, runs, nr, &next, out);
    for (; next < nr && rc == ENGRAM_STORE_OK; next++) {
        double t0 = util_now();
        ssize_t got = read_run(s, &runs[next], rd->buf);
        if (finish_run(s, q, &runs[next], rd->buf, got, util_now() - t0, out)) rc = ENGRAM_STORE_EIO;
    }
    free(runs);
    return rc;
}

/* ---- gathers ---- */

/* Lookups between a prefetch and its use. Each lookup's row touches lines
 * in arrays of tens of millions of entries (its index entry; its slot: row
 * id, reference bit, state and pins in one line), each a cache miss and
 * most a TLB miss: looked up one after another they cost the sum of their latencies.
 * So the loop starts them ahead, in two stages: 2 * AHEAD lookups ahead the
 * index entry (its address comes from the row id alone), AHEAD ahead the
 * lines of the slot that entry names (the entry is in cache by then). The
 * lookups and admissions stay in order, one row after another, and so do
 * the sketch's counts (deferred: freq_sketch_defer). */
#define AHEAD 16

int engram_store__gather_nvme(engram_store *s, const int64_t *rows, size_t n, size_t n_up, row_out out) {
    const engram_store_header *h = &s->info.header;
    store_cache *c = &s->c;
    int64_t *slot_of = malloc(n * sizeof(int64_t)); /* (n) pinned slot of each row, or -1: read uncached */
    uint32_t *pend = malloc(n * sizeof(uint32_t));  /* (np) the rows whose slots were not READY at the lookup */
    row_req *q = malloc(n * sizeof(row_req));
    if (!slot_of || !pend || !q) {
        free(slot_of), free(pend), free(q);
        return ENGRAM_STORE_ENOMEM;
    }
    size_t nq = 0, np = 0, hits = 0;
    bool waits = false, cache = c->clock.n > 0;
    atomic_fetch_add(&s->gathering, 1); /* the prefetch thread holds off its next batch */
    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; i < 2 * AHEAD && i < n && cache; i++) row_cache_prefetch(&c->clock, rows[i]);
    for (size_t i = 0; i < n; i++) {
        if (cache && i + 2 * AHEAD < n) row_cache_prefetch(&c->clock, rows[i + 2 * AHEAD]); /* stage 1 */
        if (cache && i + AHEAD < n) (void)row_cache_prefetch_slot(&c->clock, rows[i + AHEAD]); /* stage 2 */
        uint64_t off = h->data_offset + (uint64_t)rows[i] * h->row_stride;
        int32_t k = row_cache_find(&c->clock, rows[i]);
        if (k >= 0) { /* cached, or in flight: a repeat in this call, or another thread's read */
            c->clock.slot[k].pins++;
            if (c->clock.slot[k].state == SLOT_READY) {
                row_cache_hit(&c->clock, k);
                hits++;
            } else {
                waits = true;
                pend[np++] = (uint32_t)i;
            }
        } else if (i >= n_up && (k = engram_store__alloc_slot(s, rows[i], true)) >= 0) { /* rows going up pass */
            c->clock.slot[k].pins++;
            q[nq++] = (row_req){off, NO_IDX, k};
            pend[np++] = (uint32_t)i;
        } else {
            q[nq++] = (row_req){off, i, -1};
        }
        slot_of[i] = k;
        /* counted after the admission: a row must have been asked for more often before this lookup
         * than the victim was, so that rows as hot as each other do not evict each other in turn; counted
         * later, off the gather's path (its 6 random lines cost more than the hit itself), by the prefetch
         * thread, or first thing by the next estimate */
        if (cache) freq_sketch_defer(&c->sketch, (uint64_t)rows[i]);
    }
    pthread_mutex_unlock(&s->mu);
    double t0 = util_now();
    int rc = ENGRAM_STORE_OK;
    if (nq) {
        pthread_mutex_lock(&s->io_mu);
        rc = engram_store__read_reqs(s, &s->rd, q, nq, out);
        pthread_mutex_unlock(&s->io_mu);
        if (rc) engram_store__fail_unfinished(s, q, nq);
    }
    if (atomic_fetch_sub(&s->gathering, 1) == 1) { /* the prefetch and warm threads may go on */
        pthread_mutex_lock(&s->pf_mu);
        pthread_cond_broadcast(&s->pf_idle);
        pthread_mutex_unlock(&s->pf_mu);
    }
    /* Wait for rows in flight and note which failed (a slot READY at the
     * lookup stays so while pinned: only the others are checked), then copy
     * outside the lock: a pinned READY slot is never evicted nor rewritten. */
    if (np) {
        pthread_mutex_lock(&s->mu);
        for (size_t j = 0; j < np; j++) {
            int64_t k = slot_of[pend[j]];
            while (c->clock.slot[k].state == SLOT_LOADING) pthread_cond_wait(&s->ready, &s->mu);
            if (c->clock.slot[k].state != SLOT_READY) rc = rc ? rc : ENGRAM_STORE_EIO;
        }
        pthread_mutex_unlock(&s->mu);
    }
    double stall = nq || waits ? util_now() - t0 : 0;
    if (rc == ENGRAM_STORE_OK) engram_store__emit_rows(h, c->data, h->row_bytes, slot_of, n, out);
    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; i < n; i++) {
        if (i + AHEAD < n && slot_of[i + AHEAD] >= 0) __builtin_prefetch(&c->clock.slot[slot_of[i + AHEAD]], 1);
        if (slot_of[i] >= 0) c->clock.slot[slot_of[i]].pins--;
    }
    /* rows going up leave the cache once no other gather reads them (one that does keeps the row: rare, and
     * engram_store_count_cached would show it) */
    size_t up = 0;
    for (size_t i = 0; i < n_up && rc == ENGRAM_STORE_OK && cache; i++) {
        int64_t k = slot_of[i];
        if (k >= 0 && (c->clock.slot[k].pins || c->clock.slot[k].state != SLOT_READY)) continue;
        if (k >= 0) {
            row_cache_drop(&c->clock, (int32_t)k);
            c->clock.slot[k].state = SLOT_EMPTY;
        }
        up++;
    }
    if (cache) atomic_store(&s->sketch_owed, true);
    pthread_mutex_unlock(&s->mu);
    if (cache) { /* the prefetch thread counts the lookups now, while the step computes */
        pthread_mutex_lock(&s->pf_mu);
        pthread_cond_signal(&s->pf_cv);
        pthread_mutex_unlock(&s->pf_mu);
    }
    counter_add(&s->promotions, up);
    counter_add(&s->lookups, n);
    counter_add(&s->dram_hits, hits);
    counter_add(&s->nvme_hits, n - hits);
    counter_add(&s->gathers, 1);
    counter_observe(s->stall_hist, &s->stall_ns, stall);
    free(slot_of), free(pend), free(q);
    return rc;
}

/* ---- the tier above (exclusive tiers) ---- */

size_t engram_store_demote(engram_store *s, const int64_t *rows, size_t n, const void *data) {
    if (!s || !s->c.clock.n || !n || !rows || !data) return 0;
    const engram_store_header *h = &s->info.header;
    store_cache *c = &s->c;
    size_t taken = 0;
    /* slots claimed under the lock (LOADING: a gather that wants the row waits), bytes copied outside it */
    int32_t *slot = malloc(n * sizeof(int32_t));
    if (!slot) return 0;
    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; i < n; i++) {
        slot[i] = -1;
        if (rows[i] < 0 || (uint64_t)rows[i] >= h->rows || row_cache_find(&c->clock, rows[i]) >= 0) continue;
        slot[i] = engram_store__alloc_slot(s, rows[i], false);
    }
    pthread_mutex_unlock(&s->mu);
    for (size_t i = 0; i < n; i++)
        if (slot[i] >= 0)
            memcpy(c->data + (size_t)slot[i] * h->row_bytes, (const uint8_t *)data + i * h->row_bytes, h->row_bytes);
    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; i < n; i++)
        if (slot[i] >= 0) {
            c->clock.slot[slot[i]].state = SLOT_READY;
            taken++;
        }
    pthread_cond_broadcast(&s->ready);
    pthread_mutex_unlock(&s->mu);
    free(slot);
    counter_add(&s->demotions, taken);
    return taken;
}

void engram_store_set_above(engram_store *s, engram_store_above_fn fn, void *ctx) {
    pthread_mutex_lock(&s->mu);
    s->above = fn;
    s->above_ctx = ctx;
    pthread_mutex_unlock(&s->mu);
}

size_t engram_store__drop_above(engram_store *s, int64_t *rows, size_t n) {
    return s->above ? s->above(s->above_ctx, rows, n) : n;
}

size_t engram_store_count_cached(engram_store *s, const int64_t *rows, size_t n) {
    size_t k = 0;
    if (!s || !s->c.clock.n) return 0;
    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; i < n; i++) k += rows[i] >= 0 && row_cache_find(&s->c.clock, rows[i]) >= 0;
    pthread_mutex_unlock(&s->mu);
    return k;
}

/* ---- open and free ---- */

int engram_store__reader_init(engram_store *s, reader *rd, int qd, size_t run_max, size_t gap_max) {
    rd->qd = qd;
    rd->run_max = run_max;
    rd->gap_max = gap_max;
    rd->t_sub = calloc((size_t)qd, sizeof(double));
    if (!rd->t_sub || posix_memalign((void **)&rd->buf, ENGRAM_STORE_BLOCK, (size_t)qd * run_max)) {
        rd->buf = NULL;
        return -1;
    }
    if (!s->p.use_pread) {
        int e = -1;
        if (s->p.sqpoll) {
            struct io_uring_params ip = {.flags = IORING_SETUP_SQPOLL, .sq_thread_idle = 50};
            e = io_uring_queue_init_params((unsigned)qd, &rd->ring, &ip);
            if (e) engram_store__note(s, "io_uring with SQPOLL refused (%s); a plain ring", strerror(-e));
        }
        if (e) e = io_uring_queue_init((unsigned)qd, &rd->ring, 0);
        if (e == 0)
            rd->uring = true;
        else
            engram_store__note(s, "io_uring_queue_init failed (%s); using pread", strerror(-e));
    }
    return 0;
}

void engram_store__reader_free(reader *rd) {
    if (rd->uring) io_uring_queue_exit(&rd->ring);
    rd->uring = false;
    free(rd->buf);
    free(rd->t_sub);
}


/* The most bytes of whole blocks one row spans. Rows start at multiples of
 * g = gcd(stride, block) inside a block: at most block - g into one, so a
 * row of row_bytes reaches at most block - g + row_bytes past a block's
 * start. A power-of-two stride up to the block (g = stride >= row_bytes)
 * keeps every row in one block; the dense stride (264 B: g = 8) lets one
 * row in 16 straddle two. */
static size_t row_span(const engram_store_header *h) {
    uint32_t a = h->row_stride, b = ENGRAM_STORE_BLOCK;
    while (b) {
        uint32_t t = a % b;
        a = b, b = t;
    }
    return (size_t)block_ceil(ENGRAM_STORE_BLOCK - a + h->row_bytes);
}

/* Swaps s->fd for a buffered descriptor when O_DIRECT reads are refused:
 * some filesystems accept O_DIRECT at open and refuse the read. */
static int probe_direct(engram_store *s, char *err, size_t errlen) {
    if (!s->info.direct || pread(s->fd, s->rd.buf, ENGRAM_STORE_BLOCK, 0) >= 0) return ENGRAM_STORE_OK;
    engram_store__note(s, "O_DIRECT read refused (%s); reading through the page cache", strerror(errno));
    int bfd = open(s->path, O_RDONLY | O_CLOEXEC);
    if (bfd < 0) return err_set(err, errlen, ENGRAM_STORE_EIO, "%s: cannot open: %s", s->path, strerror(errno));
    close(s->fd);
    s->fd = bfd;
    s->info.direct = false;
    return ENGRAM_STORE_OK;
}

int engram_store__nvme_open(engram_store *s, int fd, char *err, size_t errlen) {
    const engram_store_header *h = &s->info.header;
    /* O_DIRECT unless told not to or refused. */
    s->fd = -1;
    if (!s->p.no_direct) {
        s->fd = open(s->path, O_RDONLY | O_CLOEXEC | O_DIRECT);
        if (s->fd < 0)
            engram_store__note(s, "O_DIRECT refused by the filesystem (%s); reading through the page cache",
                               strerror(errno));
    }
    if (s->fd >= 0) {
        close(fd);
        s->info.direct = true;
    } else {
        s->fd = fd;
    }
    s->run_bytes = row_span(h);
    if (engram_store__reader_init(s, &s->rd, s->p.queue_depth, s->run_bytes, 0)) return err_set(err, errlen, ENGRAM_STORE_ENOMEM, "out of memory");
    s->info.io_uring = s->rd.uring;
    int rc = probe_direct(s, err, errlen);
    if (rc) return rc;
    if (cache_init(s, s->p.dram_budget))
        return err_set(err, errlen, ENGRAM_STORE_ENOMEM, "%s: out of memory for a row cache of %llu bytes", s->path,
                       (unsigned long long)s->p.dram_budget);
    return s->c.clock.n ? engram_store__prefetch_start(s, err, errlen) : ENGRAM_STORE_OK;
}

void engram_store__nvme_free(engram_store *s) {
    engram_store__reader_free(&s->rd);
    row_cache_free(&s->c.clock);
    free(s->c.data);
    freq_sketch_free(&s->c.sketch);
}
