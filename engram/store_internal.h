/* Internals of engram/store shared between its source files: the store
 * struct, the NVMe tier's reads and its DRAM row cache, counters, and the
 * helpers each tier calls (store.c: the interface; store_dram.c,
 * store_nvme.c: the tiers; prefetch.c: the prefetch thread). */
#ifndef ENGRAM_STORE_INTERNAL_H
#define ENGRAM_STORE_INTERNAL_H

#include <liburing.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "engram/freq_sketch.h"
#include "engram/row_cache.h"
#include "engram/store.h"

/* Table files are little-endian; rows are decoded with native loads. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "engram/store reads little-endian table files with native loads"
#endif

/* ---- the NVMe tier's row cache ----
 *
 * With a DRAM budget: a row cache of fixed slots, each holding one row's raw
 * bytes as in the file (decoded on every gather, so a cached row costs
 * row_bytes, not 4*cols). Rows are Zipfian: a small hot set takes most
 * lookups. Replacement is engram/row_cache's CLOCK; admission (which misses
 * may displace CLOCK's victim at all) asks the TinyLFU sketch, which every
 * gather's lookups feed (deferred: the prefetch thread counts them after
 * the gather, between steps; any estimate counts the rest first, so
 * admissions see exactly what counting at once gives). A slot is EMPTY, LOADING
 * (a read is in flight; whoever wants the row waits for it instead of
 * reading it again), READY, or FAILED (its read failed; waiters report EIO).
 * Gathers pin the slots they will read, so eviction never takes a row from
 * under a gather. Reads go through a reader (a ring and aligned buffers):
 * gathers share one under `io_mu`, the prefetch thread owns another, so its
 * reads never hold a gather up; it pauses while a gather runs (the gather is
 * on the forward pass's path, the prefetch is for later). Locks: `mu` guards
 * the cache; a thread takes io_mu, then mu briefly, never the reverse while
 * waiting. */
enum { SLOT_EMPTY, SLOT_LOADING, SLOT_READY, SLOT_FAILED };
#define NO_IDX SIZE_MAX
#define SLOT_OVERHEAD 38u   /* bytes per slot besides its row: row_slot 16, index <= 16, sketch <= 6 */
/* Prefetch ids waiting at most: a whole prefill step's rows (16,384 tokens x 24 rows of V4.1's
 * layer: 393k) fit, so --engram-lookahead can cover the next step (8 MiB of ids, only on the
 * nvme tier with a row cache, touched as used). Ids beyond it are dropped and counted. */
#define PF_QUEUE (1u << 20)
/* Ids the prefetch thread resolves per round (a round's reads all finish before the next round
 * starts, and a gather that starts meanwhile shares the disk with them until then): PF_BATCH, or
 * ENGRAM_PF_BATCH=N (16..8192) for A/B timings. At the default queue depth of 64 a round of 128
 * is two waves of reads and a drain. With the disk the limit, bench-store's prefetch point read
 * ~10% more rows a second at 1,024 a round, but the gathers waited no less (bench/RESULTS.md,
 * stop 25), so 128 stays until the GPU host's pass 2 says otherwise (bench/gpu.sh pfab). */
#define PF_BATCH 128u
#define PF_BATCH_MAX 8192u
#define PF_LOCK_IDS 128u /* ids a round claims per hold of mu (~25 us): how long a gather may wait for it */
#define SKETCH_BATCH 256u   /* deferred lookups the prefetch thread counts per hold of mu (~40 us): a gather's wait for it */

typedef struct {
    row_cache clock; /* which row each slot holds, CLOCK (c.clock.n == 0: no cache); each slot's state
                      * (SLOT_*) and pins (gathers that will read it) in its row_slot */
    uint8_t *data;   /* (n, row_bytes) raw rows */
    freq_sketch sketch; /* recent lookups of every row (admission, the hot-row file's counts) */
} store_cache;

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

/* Where gathered rows go: decoded to f32 (out + i*cols floats) or copied as
 * they are in the file (out + i*row_bytes bytes). */
typedef struct {
    void *p;
    bool raw;
} row_out;

typedef _Atomic uint64_t counter;

/* What reads need: an io_uring (or pread when it is off) and qd aligned
 * buffers of run_max bytes, with each buffer's submit time. A run covers
 * blocks of rows in offset order up to run_max bytes, and may take in up to
 * gap_max bytes of blocks no row wants between two that one does: the
 * gathers' reader reads one row's blocks (run_max = run_bytes, gap 0), the
 * warm start's long sequential runs. A row is never cut between runs: one
 * row's blocks (run_bytes) always fit run_max. */
typedef struct {
    struct io_uring ring;
    bool uring;
    int qd;
    size_t run_max, gap_max;
    uint8_t *buf; /* (qd, run_max) */
    double *t_sub;
} reader;

struct engram_store {
    engram_store_params p;
    engram_store_info info;
    char *path;
    int fd;
    uint8_t *map; /* DRAM: the whole file */
    size_t map_len;
    _Atomic int bad; /* DRAM: the file shrank under the mapping (set by the SIGBUS guard); gathers fail */
    atomic_flag bad_noted; /* the note about it was written */
    /* NVMe reads */
    pthread_mutex_t io_mu; /* the gathers' reader */
    reader rd, pf_rd;      /* gathers', the prefetch thread's */
    size_t run_bytes;      /* the most bytes of blocks one row spans (store_nvme.c, row_span): every reader's
                            * run_max is at least this */
    _Atomic int gathering; /* gathers between their lookup and their last read */
    /* the row cache */
    pthread_mutex_t mu;
    pthread_cond_t ready; /* broadcast when slots leave SLOT_LOADING */
    store_cache c;
    engram_store_above_fn above; /* under mu: the rows the tier above holds (engram_store_set_above), or NULL */
    void *above_ctx;
    /* prefetch: a ring of ids for one thread */
    pthread_mutex_t pf_mu;
    pthread_cond_t pf_cv;
    int64_t *pf_q; /* (PF_QUEUE) */
    int64_t *pf_ids;  /* (pf_batch) a round's ids */
    row_req *pf_reqs; /* (pf_batch) a round's reads */
    pthread_cond_t pf_idle; /* under pf_mu: broadcast when `gathering` drops to 0 */
    pthread_cond_t pf_done; /* under pf_mu: broadcast when the prefetch thread ends a round (pf_busy false) */
    bool pf_busy;           /* under pf_mu: the prefetch thread has ids taken and not yet read */
    _Atomic bool sketch_owed; /* set under mu: the sketch holds deferred lookups for the prefetch thread to count */
    size_t pf_head, pf_len, pf_batch; /* pf_batch: ids a round (PF_BATCH) */
    bool pf_stop, pf_started;
    pthread_t pf_thread;
    /* warm restarts (store_hot.c) */
    char *hot_path;           /* path + ".hot" */
    uint64_t table_size, table_id; /* the table's identity, written to and checked against the hot-row file */
    int64_t *hot_rows;        /* (hot_n) rows the warm start reads, in offset order */
    size_t hot_n;
    int64_t *hot_upper;       /* (hot_n_upper) rows of the tier above, most counted first */
    size_t hot_n_upper;
    pthread_t warm_thread;
    bool warm_started;
    _Atomic bool warm_stop, warm_busy;
    /* stats; times in nanoseconds */
    counter lookups, dram_hits, nvme_hits, prefetch_rows, prefetch_reads, prefetch_dropped, evictions;
    counter admissions, rejections, promotions, demotions, warm_rows, warm_target, warm_ignored, warm_ns;
    counter reads, bytes_read, read_ns, read_hist[ENGRAM_STORE_HIST_BUCKETS + 1];
    counter gathers, stall_ns, stall_hist[ENGRAM_STORE_HIST_BUCKETS + 1];
};

static inline void counter_add(counter *c, uint64_t v) { atomic_fetch_add_explicit(c, v, memory_order_relaxed); }
static inline uint64_t counter_get(const counter *c) {
    return atomic_load_explicit((counter *)c, memory_order_relaxed);
}

/* One time into a histogram and its sum (nanoseconds). */
static inline void counter_observe(counter *hist, counter *sum_ns, double sec) {
    if (sec < 0) sec = 0;
    atomic_fetch_add_explicit(&hist[engram_store_hist_bucket(sec)], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(sum_ns, (uint64_t)(sec * 1e9), memory_order_relaxed);
}

/* Output row i from a stored row at src: decoded or copied (see row_out). */
static inline void engram_store__emit(const engram_store_header *h, const uint8_t *src, row_out o, size_t i) {
    if (o.raw) memcpy((uint8_t *)o.p + i * h->row_bytes, src, h->row_bytes);
    else engram_store_decode_row((int)h->dtype, h->cols, src, (float *)o.p + i * h->cols);
}

/* store.c */
/* A note on stderr naming the store's file, unless params.quiet. */
void engram_store__note(const engram_store *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A store with nothing open yet (engram_store_close frees it), or NULL. */
engram_store *engram_store__new(const char *path, const engram_store_params *p);

/* store_dram.c */
/* The DRAM tier over fd (the table file, size bytes, header parsed into
 * s->info): maps it MAP_SHARED, advises, locks. s owns fd from here, even on
 * failure. Returns ENGRAM_STORE_OK, or _EIO/_ELOCK with a message. */
int engram_store__dram_open(engram_store *s, int fd, size_t size, char *err, size_t errlen);
/* Gathers n in-range rows from the mapping into out. Returns
 * ENGRAM_STORE_OK, or _EIO when the store is bad (its file shrank under the
 * mapping, now or before). */
int engram_store__gather_mapped(engram_store *s, const int64_t *rows, size_t n, row_out out);
/* Emits output row i from base + idx[i] * stride (a stored row) for every
 * idx[i] >= 0 (the others are left as they are), each row's lines
 * prefetched a few rows ahead, spread over threads when n is large: the
 * copy of both tiers' gathers (the mapped table's rows; the row cache's
 * slots). */
void engram_store__emit_rows(const engram_store_header *h, const uint8_t *base, uint64_t stride, const int64_t *idx,
                             size_t n, row_out out);
/* Takes s's mapping out of the SIGBUS guard (before it is unmapped). */
void engram_store__guard_remove(engram_store *s);

/* store_nvme.c */
/* The NVMe tier over fd (a buffered descriptor of the table file, header
 * parsed into s->info): O_DIRECT when allowed, the gathers' reader, the row
 * cache of params.dram_budget and, with a cache, the prefetch thread. s owns
 * fd from here, even on failure. Returns ENGRAM_STORE_OK, or _EIO/_ENOMEM
 * with a message. */
int engram_store__nvme_open(engram_store *s, int fd, char *err, size_t errlen);
/* Frees the readers and the row cache (the prefetch thread is stopped). */
void engram_store__nvme_free(engram_store *s);
/* Gathers n in-range rows through the cache and the gathers' reader; the
 * first n_up leave the cache for the tier above (engram_store_gather_up). */
int engram_store__gather_nvme(engram_store *s, const int64_t *rows, size_t n, size_t n_up, row_out out);
/* A reader of qd buffers of run_max bytes (see reader), with an io_uring
 * unless told to pread or refused (a note says so; pread then). Returns 0,
 * or -1 out of memory. */
int engram_store__reader_init(engram_store *s, reader *rd, int qd, size_t run_max, size_t gap_max);
/* Frees a reader; accepts a zeroed or half-made one. */
void engram_store__reader_free(reader *rd);
/* Reads the rows of q through rd (see store_nvme.c); callers own rd. */
int engram_store__read_reqs(engram_store *s, reader *rd, row_req *q, size_t n, row_out out);
/* Under mu: a slot for row, now LOADING and indexed, or -1 (all busy, or,
 * when `filter`, refused by the admission policy). */
int32_t engram_store__alloc_slot(engram_store *s, int64_t row, bool filter);
/* Under mu: drops from rows[0..n) those the tier above holds (see
 * engram_store_set_above); returns how many are left. */
size_t engram_store__drop_above(engram_store *s, int64_t *rows, size_t n);
/* After a failed read: the slots of q still LOADING become FAILED. */
void engram_store__fail_unfinished(engram_store *s, const row_req *q, size_t n);

/* store_hot.c */
/* At open, for a file-backed store: its table's identity, and with
 * warm_start on the hot-row file read back (WAIT: now; BACKGROUND: a
 * thread started). A missing, stale or damaged file is noted and ignored.
 * Returns ENGRAM_STORE_OK, or _ENOMEM. */
int engram_store__hot_open(engram_store *s, char *err, size_t errlen);
/* Stops and joins the warm thread; frees the hot-row lists. */
void engram_store__hot_close(engram_store *s);
/* Blocks while a gather runs (the prefetch and warm threads yield to it);
 * returns at once without one. */
void engram_store__wait_no_gather(engram_store *s);

/* prefetch.c */
/* Starts the prefetch thread (its queue and reader). Returns
 * ENGRAM_STORE_OK, or _ENOMEM with a message. */
int engram_store__prefetch_start(engram_store *s, char *err, size_t errlen);
/* Stops and joins it, frees its queue and reader; accepts a store that never
 * started one. */
void engram_store__prefetch_stop(engram_store *s);

#endif
