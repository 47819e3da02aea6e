/* TinyLFU's frequency sketch (Einziger, Friedman, Manes: "TinyLFU: A Highly
 * Efficient Cache Admission Policy", 2017) for the store's DRAM row cache:
 * how often each row id was asked for lately, in a few bytes per cache slot.
 * A count-min sketch of 4-bit counters (4 rows, each id hashed once per row
 * under a seed; the estimate is the smallest of its 4 counters), all halved
 * after every `sample` recorded lookups so that old popularity fades, and a
 * doorkeeper (a Bloom filter of 8 bits per counter, cleared at each halving)
 * that absorbs each id's first lookup of a period: the many rows seen only
 * once never reach the counters. Deterministic: the same seed and the same
 * lookups give the same estimates. Not thread-safe: callers lock.
 *
 * A lookup touches 6 random cache lines of a sketch far larger than the
 * caches (4 counters, 2 doorkeeper words): on the store's gather path that
 * was two thirds of a cache hit's cost (bench/RESULTS.md, "hit path"). So a
 * caller may record lookups to be counted later (freq_sketch_defer) and
 * count them when it has time (freq_sketch_settle, from another thread
 * under the caller's lock); every estimate, seed and add settles all of
 * them first, in order, so what any of them sees is exactly what counting
 * each lookup at once would have given. */
#ifndef ENGRAM_FREQ_SKETCH_H
#define ENGRAM_FREQ_SKETCH_H

#include <stdbool.h>
#include <stdint.h>

#define FREQ_SKETCH_MAX 15u /* a counter saturates here */
#define FREQ_SKETCH_OWED (1u << 20) /* lookups deferred at most (8 MiB, allocated at the first; a power of two) */

typedef struct {
    uint8_t *cnt;     /* (4, width) 4-bit counters, two a byte */
    uint64_t *door;   /* (8 * width) doorkeeper bits */
    uint64_t width;   /* counters per row, a power of two */
    uint64_t seed;
    uint64_t sample;  /* recorded lookups between halvings */
    uint64_t added;   /* recorded since the last halving */
    uint64_t *owed;   /* (FREQ_SKETCH_OWED) a ring of deferred lookups: owed_n of them from owed_head, oldest first */
    uint32_t owed_head, owed_n;
} freq_sketch;

/* A sketch sized for a cache of `slots` rows: width the power of two at or
 * above slots (at least 64), halving after 10 * slots lookups, as the paper
 * suggests. Costs width * 3 bytes. Returns 0, or -1 when out of memory
 * (freq_sketch_free then frees what was made). */
int freq_sketch_init(freq_sketch *f, uint64_t slots, uint64_t seed);
void freq_sketch_free(freq_sketch *f); /* accepts a zeroed or half-made sketch */

/* One lookup of id: into the doorkeeper the first time in a period, into
 * the counters after that; every `sample` of them halves the counters. */
void freq_sketch_add(freq_sketch *f, uint64_t id);

/* One lookup of id, counted later: by freq_sketch_settle, or by the next
 * add, seed or estimate (which settle first), in the order of the calls.
 * A full list has its oldest sixteenth counted first; without memory for a
 * list it counts now. */
void freq_sketch_defer(freq_sketch *f, uint64_t id);

/* Counts up to max deferred lookups, oldest first (their lines prefetched
 * ahead). Returns how many are still owed. */
uint32_t freq_sketch_settle(freq_sketch *f, uint32_t max);

/* Raises id's estimate to at least count (capped) as if it had been looked
 * up that often in this period, without counting toward the halving: for
 * the rows a warm start brings back with the counts they had. */
void freq_sketch_seed(freq_sketch *f, uint64_t id, uint32_t count);

/* How often id was looked up lately (0..FREQ_SKETCH_MAX + 1): the counters'
 * minimum, plus one when the doorkeeper has it. Never less than the true
 * count since the last halving, capped; more only by hash collisions. */
uint32_t freq_sketch_estimate(freq_sketch *f, uint64_t id);

#endif
