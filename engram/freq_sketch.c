/* TinyLFU's frequency sketch (see freq_sketch.h): 4-bit count-min counters
 * with periodic halving, behind a doorkeeper Bloom filter. */
#include "engram/freq_sketch.h"

#include <stdlib.h>
#include <string.h>

#include "base/util.h"

int freq_sketch_init(freq_sketch *f, uint64_t slots, uint64_t seed) {
    memset(f, 0, sizeof(*f));
    uint64_t w = 64;
    while (w < slots) w <<= 1;
    f->width = w;
    f->seed = seed;
    f->sample = 10 * (slots > 64 ? slots : 64);
    f->cnt = util_alloc_huge(2 * w); /* 4 rows of w nibbles, read at random */
    f->door = util_alloc_huge(w / 8 * sizeof(uint64_t)); /* 8 bits per counter: its false positives let one-offs count twice */
    if (!f->cnt || !f->door) return -1;
    memset(f->cnt, 0, 2 * w);
    memset(f->door, 0, w / 8 * sizeof(uint64_t));
    return 0;
}

void freq_sketch_free(freq_sketch *f) {
    free(f->cnt);
    free(f->door);
    free(f->owed);
    f->cnt = NULL;
    f->door = NULL;
    f->owed = NULL;
}

/* splitmix64's finalizer over id and the seed: the 4 rows' positions come
 * from its two halves (double hashing: h1 + i*h2, h2 odd). */
static uint64_t mix(const freq_sketch *f, uint64_t id) {
    uint64_t z = id + f->seed * 0x9E3779B97F4A7C15ull + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Counter i (0..3) of the hash h: its nibble's index in cnt. */
static uint64_t at(const freq_sketch *f, uint64_t h, int i) {
    uint64_t h1 = h & 0xffffffffu, h2 = (h >> 32) | 1;
    return (uint64_t)i * f->width + ((h1 + (uint64_t)i * h2) & (f->width - 1));
}

static uint32_t nib_get(const uint8_t *c, uint64_t k) { return (c[k >> 1] >> ((k & 1) * 4)) & 15u; }

static void nib_inc(uint8_t *c, uint64_t k) {
    if (nib_get(c, k) < FREQ_SKETCH_MAX) c[k >> 1] = (uint8_t)(c[k >> 1] + (1u << ((k & 1) * 4)));
}

/* Doorkeeper bits: two of its 8 * width bits, from the hash's other end. */
static void door_bits(const freq_sketch *f, uint64_t h, uint64_t *a, uint64_t *b) {
    uint64_t m = 8 * f->width - 1;
    *a = (h >> 5) & m;
    *b = ((h >> 37) ^ (h << 11)) & m;
}

static bool door_test_set(freq_sketch *f, uint64_t h, bool set) {
    uint64_t a, b;
    door_bits(f, h, &a, &b);
    bool in = (f->door[a >> 6] >> (a & 63) & 1) && (f->door[b >> 6] >> (b & 63) & 1);
    if (set) {
        f->door[a >> 6] |= 1ull << (a & 63);
        f->door[b >> 6] |= 1ull << (b & 63);
    }
    return in;
}

/* Every counter halved (each nibble shifted right), the doorkeeper cleared. */
static void halve(freq_sketch *f) {
    for (uint64_t i = 0; i < 2 * f->width; i++) f->cnt[i] = (uint8_t)((f->cnt[i] >> 1) & 0x77);
    memset(f->door, 0, f->width / 8 * sizeof(uint64_t));
    f->added = 0;
}

/* Counts one lookup of id (freq_sketch_add without settling first). */
static void record(freq_sketch *f, uint64_t id) {
    uint64_t h = mix(f, id);
    if (door_test_set(f, h, true)) {
        /* conservative update: only the smallest counters grow, which keeps collisions from inflating */
        uint32_t m = FREQ_SKETCH_MAX;
        for (int i = 0; i < 4; i++) {
            uint32_t v = nib_get(f->cnt, at(f, h, i));
            if (v < m) m = v;
        }
        for (int i = 0; i < 4; i++)
            if (nib_get(f->cnt, at(f, h, i)) == m) nib_inc(f->cnt, at(f, h, i));
    }
    if (++f->added >= f->sample) halve(f);
}

/* Starts loading the 6 lines counting id touches (always_inline: see engram/row_index.h, row_index_prefetch). */
static inline __attribute__((always_inline)) void prefetch(const freq_sketch *f, uint64_t id) {
    uint64_t h = mix(f, id), a, b;
    for (int i = 0; i < 4; i++) __builtin_prefetch(f->cnt + (at(f, h, i) >> 1), 1);
    door_bits(f, h, &a, &b);
    __builtin_prefetch(f->door + (a >> 6), 1);
    __builtin_prefetch(f->door + (b >> 6), 1);
}

/* Lookups between a prefetch and its count: the lines of the next ones load while these count. */
#define AHEAD 16

/* The i-th owed lookup, oldest first. */
static uint64_t owed_at(const freq_sketch *f, uint32_t i) {
    return f->owed[(f->owed_head + i) & (FREQ_SKETCH_OWED - 1)];
}

uint32_t freq_sketch_settle(freq_sketch *f, uint32_t max) {
    uint32_t m = f->owed_n < max ? f->owed_n : max;
    for (uint32_t j = 0; j < m && j < AHEAD; j++) prefetch(f, owed_at(f, j));
    for (uint32_t j = 0; j < m; j++) {
        if (j + AHEAD < m) prefetch(f, owed_at(f, j + AHEAD));
        record(f, owed_at(f, j));
    }
    f->owed_head = (f->owed_head + m) & (FREQ_SKETCH_OWED - 1);
    f->owed_n -= m;
    return f->owed_n;
}

void freq_sketch_add(freq_sketch *f, uint64_t id) {
    freq_sketch_settle(f, UINT32_MAX);
    record(f, id);
}

void freq_sketch_defer(freq_sketch *f, uint64_t id) {
    if (!f->owed && !(f->owed = malloc(FREQ_SKETCH_OWED * sizeof(uint64_t)))) {
        record(f, id); /* nothing is owed without the list: counting now keeps the order */
        return;
    }
    if (f->owed_n == FREQ_SKETCH_OWED) freq_sketch_settle(f, FREQ_SKETCH_OWED / 16); /* the oldest sixteenth: a few ms */
    f->owed[(f->owed_head + f->owed_n++) & (FREQ_SKETCH_OWED - 1)] = id;
}

void freq_sketch_seed(freq_sketch *f, uint64_t id, uint32_t count) {
    if (!count) return;
    freq_sketch_settle(f, UINT32_MAX);
    uint64_t h = mix(f, id);
    door_test_set(f, h, true);
    uint32_t want = count - 1 < FREQ_SKETCH_MAX ? count - 1 : FREQ_SKETCH_MAX;
    for (int i = 0; i < 4; i++) {
        uint64_t k = at(f, h, i);
        while (nib_get(f->cnt, k) < want) nib_inc(f->cnt, k);
    }
}

uint32_t freq_sketch_estimate(freq_sketch *f, uint64_t id) {
    freq_sketch_settle(f, UINT32_MAX);
    uint64_t h = mix(f, id);
    uint32_t m = FREQ_SKETCH_MAX;
    for (int i = 0; i < 4; i++) {
        uint32_t v = nib_get(f->cnt, at(f, h, i));
        if (v < m) m = v;
    }
    return m + (door_test_set(f, h, false) ? 1u : 0u);
}
