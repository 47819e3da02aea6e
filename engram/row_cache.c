/* The CLOCK row cache (see row_cache.h): slot ids and reference bits over
 * the row index; the callers own the bytes and the per-slot state. */
#include "engram/row_cache.h"

#include <stdlib.h>
#include <string.h>

#include "base/util.h"

int row_cache_init(row_cache *c, uint64_t n) {
    memset(c, 0, sizeof(*c));
    if (!n) return 0;
    c->n = (uint32_t)n;
    c->slot = util_alloc_huge(n * sizeof(row_slot)); /* read at random, as the index */
    if (!c->slot || row_index_init(&c->index, n, c->slot)) return -1;
    for (uint64_t k = 0; k < n; k++) c->slot[k] = (row_slot){.row = -1}; /* empty */
    return 0;
}

void row_cache_free(row_cache *c) {
    free(c->slot);
    row_index_free(&c->index);
    c->slot = NULL;
    c->n = 0;
}

int32_t row_cache_victim(row_cache *c, row_cache_busy_fn busy, const void *ctx) {
    for (uint64_t step = 0; step < 2ull * c->n + 1 && c->n; step++) {
        uint32_t k = c->hand;
        if (!busy(ctx, k) && (c->slot[k].row < 0 || !c->slot[k].ref)) return (int32_t)k; /* the hand stays on it */
        if (!busy(ctx, k)) c->slot[k].ref = 0; /* second chance */
        c->hand = k + 1 == c->n ? 0 : k + 1;
    }
    return -1;
}

int64_t row_cache_put(row_cache *c, int32_t k, int64_t row) {
    int64_t victim = c->slot[k].row;
    if (victim >= 0) {
        row_index_remove(&c->index, victim);
        c->used--;
    }
    c->slot[k].row = row;
    c->slot[k].ref = 0;
    row_index_insert(&c->index, row, k);
    c->used++;
    c->hand = (uint32_t)k + 1 == c->n ? 0 : (uint32_t)k + 1;
    return victim;
}

int32_t row_cache_take(row_cache *c, int64_t row, row_cache_busy_fn busy, const void *ctx, int64_t *victim) {
    int32_t k = row_cache_victim(c, busy, ctx);
    int64_t v = k >= 0 ? row_cache_put(c, k, row) : -1;
    if (victim) *victim = v;
    return k;
}

void row_cache_drop(row_cache *c, int32_t k) {
    row_index_remove(&c->index, c->slot[k].row);
    c->slot[k].row = -1;
    c->used--;
}
