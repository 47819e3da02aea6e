/* An open-addressing index from row ids to the slots of a row cache that
 * holds them: linear probing, Fibonacci hashing, deletion by shifting later
 * entries of a probe chain back (no tombstones). The cache owns its slots
 * (row_slot: the row each holds); the index only stores slot numbers. Used through
 * engram/row_cache.h (the CLOCK of the store's DRAM row cache and of the
 * backend's hot-row cache). Not thread-safe: callers lock. */
#ifndef ENGRAM_ROW_INDEX_H
#define ENGRAM_ROW_INDEX_H

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/util.h"

/* One slot of a row cache: the row it holds and what a lookup needs beside
 * it, in 16 bytes, so that a lookup reads one cache line of the slot array
 * (as parallel arrays the four fields were four random lines: issue 22's
 * hit path). pins and state belong to the cache's owner (the store's DRAM
 * cache: the gathers that will read the slot, its load state); owners that
 * need neither leave them 0. */
typedef struct {
    int64_t row;   /* row id held, -1 none */
    uint32_t pins; /* the owner's */
    uint8_t ref;   /* CLOCK's reference bit (engram/row_cache.h) */
    uint8_t state; /* the owner's */
} row_slot;

typedef struct {
    int32_t *slot;        /* (mask+1) slot or -1 */
    const row_slot *rows; /* (slots) the cache's slots: the row id each holds */
    uint32_t mask, shift;
} row_index;

/* An index of at least 2*slots entries (load <= 1/2) over the cache's
 * slots. Returns 0, or -1 when out of memory. */
static inline int row_index_init(row_index *x, uint64_t slots, const row_slot *rows) {
    uint32_t bits = 1;
    while (bits < 31 && (1ull << bits) < 2 * slots) bits++;
    x->mask = (1u << bits) - 1;
    x->shift = 64 - bits;
    x->rows = rows;
    x->slot = util_alloc_huge(((size_t)x->mask + 1) * sizeof(int32_t)); /* read at random */
    if (!x->slot) return -1;
    memset(x->slot, 0xff, ((size_t)x->mask + 1) * sizeof(int32_t)); /* -1: empty */
    return 0;
}

static inline void row_index_free(row_index *x) {
    free(x->slot);
    x->slot = NULL;
}

static inline uint32_t row_index_home(const row_index *x, int64_t row) {
    return (uint32_t)(((uint64_t)row * 0x9E3779B97F4A7C15ull) >> x->shift);
}

/* The slot holding row, or -1. */
static inline int32_t row_index_find(const row_index *x, int64_t row) {
    for (uint32_t i = row_index_home(x, row);; i = (i + 1) & x->mask) {
        int32_t k = x->slot[i];
        if (k < 0 || x->rows[k].row == row) return k;
    }
}

/* Starts loading row's home entry: a caller that knows its rows a few
 * lookups ahead hides the miss (the index is far larger than the caches).
 * always_inline, as every helper that only prefetches: GCC 12 at -O1 and up
 * finds such a function free of side effects and deletes its calls before
 * it would inline them (the prefetches vanish without a word). */
static inline __attribute__((always_inline)) void row_index_prefetch(const row_index *x, int64_t row) {
    __builtin_prefetch(&x->slot[row_index_home(x, row)]);
}

/* The slot row's home entry names, or -1: where row most likely is (at the
 * index's load most rows sit at their home), for prefetching that slot's
 * data a few lookups ahead; row_index_find gives the answer. */
static inline int32_t row_index_guess(const row_index *x, int64_t row) {
    return x->slot[row_index_home(x, row)];
}

/* Adds row (absent) at slot; rows[slot].row must already say row. */
static inline void row_index_insert(row_index *x, int64_t row, int32_t slot) {
    uint32_t i = row_index_home(x, row);
    while (x->slot[i] >= 0) i = (i + 1) & x->mask;
    x->slot[i] = slot;
}

/* Removes row (present) and shifts later entries of its probe chain back, so
 * that every entry stays reachable from its home without tombstones. */
static inline void row_index_remove(row_index *x, int64_t row) {
    uint32_t i = row_index_home(x, row);
    while (x->rows[x->slot[i]].row != row) i = (i + 1) & x->mask;
    for (uint32_t j = i;;) {
        j = (j + 1) & x->mask;
        if (x->slot[j] < 0) break;
        uint32_t h = row_index_home(x, x->rows[x->slot[j]].row);
        /* the entry at j may move to the hole at i unless its home lies in (i, j] */
        bool stays = i <= j ? (h > i && h <= j) : (h > i || h <= j);
        if (!stays) {
            x->slot[i] = x->slot[j];
            i = j;
        }
    }
    x->slot[i] = -1;
}

#endif
