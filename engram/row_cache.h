/* The one CLOCK (second chance) of Engram's row caches: the store's DRAM row
 * cache (engram/store_nvme.c) and the backend's HBM hot-row index
 * (engine/engram_fetch.c). Fixed slots, each holding one row id or none,
 * found by id through engram/row_index.h. Each slot (row_slot) has room for
 * the owner's pins and load state; the caller keeps the rows' bytes and
 * anything else a slot needs (step stamps) in arrays of its own, and tells
 * the hand which slots to pass over. Not thread-safe: callers lock. */
#ifndef ENGRAM_ROW_CACHE_H
#define ENGRAM_ROW_CACHE_H

#include <stdbool.h>
#include <stdint.h>

#include "engram/row_index.h"

typedef struct {
    uint32_t n;      /* slots (0: no cache) */
    uint32_t hand;   /* the slot the hand looks at next */
    uint64_t used;   /* slots holding a row (those in the index) */
    row_slot *slot;  /* (n) row id a slot holds (-1 none); reference bit: set by a hit, cleared as the hand passes */
    row_index index; /* row id -> slot, over slot[] */
} row_cache;

/* Slots the hand must pass over this sweep (pinned, being loaded, used by the
 * current step): neither evicted nor stripped of their reference bit. */
typedef bool (*row_cache_busy_fn)(const void *ctx, uint32_t slot);

/* A cache of n slots (n <= 2^30: slots and the index fit int32), all
 * empty. Returns 0, or -1 when out of memory (row_cache_free then frees what
 * was made). n == 0 makes an empty cache that finds nothing, takes nothing. */
int row_cache_init(row_cache *c, uint64_t n);

/* Frees the arrays; accepts a zeroed or half-made cache. */
void row_cache_free(row_cache *c);

/* The slot holding row, or -1. */
static inline int32_t row_cache_find(const row_cache *c, int64_t row) {
    return c->n ? row_index_find(&c->index, row) : -1;
}

/* Prefetching for a caller that looks many rows up in a row: stage 1 starts
 * loading row's index entry; stage 2, some lookups later (the entry
 * loaded), starts loading the slot the entry names (row_slot: one line) and
 * returns it (a guess, see row_index_guess: for prefetching the caller's
 * own per-slot arrays), or -1. (always_inline: see row_index_prefetch.) */
static inline __attribute__((always_inline)) void row_cache_prefetch(const row_cache *c, int64_t row) {
    if (c->n) row_index_prefetch(&c->index, row);
}

static inline __attribute__((always_inline)) int32_t row_cache_prefetch_slot(const row_cache *c, int64_t row) {
    int32_t k = c->n ? row_index_guess(&c->index, row) : -1;
    if (k >= 0) __builtin_prefetch(&c->slot[k], 1);
    return k;
}

/* A hit on slot k: the row survives the hand's next pass. */
static inline void row_cache_hit(row_cache *c, int32_t k) { c->slot[k].ref = 1; }

/* CLOCK: moves the hand over at most two sweeps for a slot that is not busy
 * and either empty or unreferenced (a referenced one loses its bit and is
 * passed: the second chance), and puts row (absent) there, indexed, with its
 * bit clear: a new row must be hit once before it outlives a sweep. Hits need
 * no list surgery (LRU would move a node per hit), and a row must miss its
 * bit twice over a full sweep before it goes, which keeps the hot set and
 * lets one-off rows pass through. Returns the slot, and in *victim the row it
 * evicted or -1 (victim may be NULL); or -1 when every slot is busy or the
 * cache has none. row_cache_victim then row_cache_put. */
int32_t row_cache_take(row_cache *c, int64_t row, row_cache_busy_fn busy, const void *ctx, int64_t *victim);

/* The first half of row_cache_take, for an admission policy that may say no:
 * the slot the hand stops at (empty, or holding the row CLOCK would evict),
 * with the hand left on it, so that a refused newcomer leaves the same
 * victim first in line; or -1. */
int32_t row_cache_victim(row_cache *c, row_cache_busy_fn busy, const void *ctx);

/* The second half: row (absent) into slot k from row_cache_victim, indexed,
 * bit clear, the hand past it. Returns the row evicted from k, or -1. */
int64_t row_cache_put(row_cache *c, int32_t k, int64_t row);

/* Empties slot k (holding a row): out of the index, row -1. For a slot that
 * never got its row's bytes (a failed read). */
void row_cache_drop(row_cache *c, int32_t k);

#endif
