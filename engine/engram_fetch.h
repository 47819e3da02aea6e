/* One Engram layer's rows, from a host store (engram/store.h: DRAM or NVMe)
 * to backend memory, once per step. The rows are known before the pass
 * (they hang on token ids only), so the host gathers them while the backend
 * computes the layers before the Engram layer:
 *
 *   with a hot-row cache (backend memory, --engram-hbm-cache; its index lives
 *   on the host, which knows every row before the backend needs it): dedupe
 *   the step's row ids and look the distinct rows up -> gather the misses
 *   as stored (bf16, FP8: half or a quarter of f32's bytes) into pinned
 *   staging -> one copy beside the compute (backend_fetch) -> the compute waits
 *   for it, moves new rows into their cache slots and decodes every lookup
 *   to f32 by slot.
 *
 *   with exclusive tiers (engram_store_tiers, the default) the cache and the
 *   store's DRAM cache hold no row in common: a row the cache takes leaves
 *   the store's, and a row it evicts is copied back to the host and goes to
 *   the store's (engram_store_demote).
 *
 * The same code runs on the CPU backend (where the copy is a memcpy), so the
 * cache and its slot bookkeeping are tested in CI. The result is bit-equal to
 * engram_store_gather wherever the rows came from. */
#ifndef ENGINE_ENGRAM_FETCH_H
#define ENGINE_ENGRAM_FETCH_H

#include <stddef.h>
#include <stdint.h>

typedef struct backend backend; /* engine/backend/backend.h: only passed through here */
#include "engram/store.h"

typedef struct engram_fetch engram_fetch;

typedef struct {
    uint64_t steps;        /* fetches done */
    uint64_t lookups;      /* rows asked for, repeats included */
    uint64_t unique;       /* distinct rows per step, summed (= lookups without a cache: no dedupe) */
    uint64_t cache_hits;   /* distinct rows found in the hot-row cache */
    uint64_t copied_rows;  /* rows copied host -> backend (the misses) */
    uint64_t copied_back_rows; /* exclusive tiers: rows the cache evicted, copied backend -> host for the store's cache */
    uint64_t copied_bytes; /* bytes copied host -> backend (rows and slot indices) */
    double hash_seconds;   /* host time making the rows on the fetch thread (engram_fetch_start_fill) */
    double gather_seconds; /* host time resolving and gathering */
    double host_wait_seconds; /* time the thread issuing the layers waited at the layer for that host
                               * half: on the CPU backend the compute's wait for rows; on a GPU it is
                               * hidden while the GPU still runs earlier layers */
    uint64_t stalls;       /* fetches whose wait was measured (all but the last) */
    double stall_seconds;  /* time the compute waited for rows (backend_fetch_sync) */
    double stall_max;      /* the longest such wait */
    uint64_t stall_hist[ENGRAM_STORE_HIST_BUCKETS + 1]; /* per bucket of engram_store_hist_le, not cumulative */
    uint64_t cache_rows;     /* gauge: rows in the cache */
    uint64_t cache_capacity; /* gauge: cache slots */
} engram_fetch_stats;

/* A fetcher of up to max_rows lookups per step from store (borrowed), on
 * channel ch of be (borrowed), with a hot-row cache of cache_bytes of backend memory
 * (0: none; rows are then decoded straight from the step's copy). Returns
 * NULL with a message in err when memory runs out. */
engram_fetch *engram_fetch_create(backend *be, engram_store *store, int ch, int max_rows,
                                  uint64_t cache_bytes, char *err, size_t errlen);
void engram_fetch_destroy(engram_fetch *f); /* accepts NULL; waits for its copy */

/* A step in two halves, so that the host's part overlaps the backend's work:
 * start hands rows (host, n <= max_rows; borrowed until finish) to the
 * fetcher's thread, which waits for the last copy out of the staging,
 * resolves the lookups and gathers the misses; the caller meanwhile issues
 * the layers before this one. finish waits for that, then issues the copy
 * and, on the backend's stream, the decode: out (n, cols) f32 in backend
 * memory = rows[i] of the table. finish returns 0, or a negative
 * engram_store_status (a row out of range, a failed read; EINVAL without a
 * start) with nothing issued. Each start must be followed by one finish
 * before the next start (a later start waits for an unfinished one). */
void engram_fetch_start(engram_fetch *f, const int64_t *rows, int n);
int engram_fetch_finish(engram_fetch *f, float *out);

/* engram_fetch_start whose rows are made on the fetcher's thread first:
 * fill(ctx, rows) writes rows[0..n) there (the step's hashing, taken off the
 * thread that issues the layers), then the host half goes on as start's.
 * fill and ctx are borrowed, rows written and read, until finish. */
typedef void (*engram_fetch_fill_fn)(void *ctx, int64_t *rows);
void engram_fetch_start_fill(engram_fetch *f, int64_t *rows, int n, engram_fetch_fill_fn fill, void *ctx);

/* start then finish. */
int engram_fetch_rows(engram_fetch *f, const int64_t *rows, int n, float *out);

/* Drops from rows[0..n) those the hot-row cache holds now, keeping the
 * others in order; returns how many are left. Read ahead, a cached row would
 * be a wasted NVMe read. Thread-safe (a step in flight may hold it up while
 * its host half changes the cache). The store's prefetch and warm threads
 * ask the same before they read a row (engram_store_set_above). */
int engram_fetch_drop_cached(engram_fetch *f, int64_t *rows, int n);

/* How many rows the hot-row cache and the store's DRAM cache both hold now:
 * with exclusive tiers 0 always (the check the tests make), with inclusive
 * ones the overlap. Between steps only; costs a lookup per cached row. */
size_t engram_fetch_tier_overlap(engram_fetch *f);

/* Warm restarts (engram/store.h's hot-row file). Between steps only. */
/* The rows the hot-row cache holds, with each one's hits since it came in
 * (saturating), into rows and counts (room for engram_fetch_cache_slots
 * each). Returns how many. */
size_t engram_fetch_hot_rows(engram_fetch *f, int64_t *rows, uint32_t *counts);
/* The hot-row cache's slots (0: no cache). */
uint32_t engram_fetch_cache_slots(const engram_fetch *f);
/* Brings rows (most wanted first; those past the cache's size are left
 * out) into the hot-row cache as steps would, from the store (where a warm
 * start has put them), max_rows at a time; out is scratch for the decode
 * (backend memory of max_rows rows of cols f32). Not counted as steps.
 * Returns 0, or a negative engram_store_status (the cache keeps what came). */
int engram_fetch_warm(engram_fetch *f, const int64_t *rows, size_t n, float *out);

/* A snapshot of f's counters. Thread-safe (the stats sit behind a lock). */
void engram_fetch_get_stats(engram_fetch *f, engram_fetch_stats *out);
void engram_fetch_stats_add(engram_fetch_stats *sum, const engram_fetch_stats *x);

#endif
