/* The CLOCK row cache (see row_cache.h): slot ids and reference bits over
 * the row index; the callers own the bytes and the per-slot state. */
#include "engram/row_cache.h"

#include <stdlib.h>
#include <string.h>

int row_cache_init(row_cache *c, uint64_t n) {
    memset(c, 0, sizeof(*c));
    if (!n) return 0;
    c->n = (uint32_t)n;
    c->row = malloc(n * sizeof(int64_t));
    c->ref = calloc(n, 1);
    if (!c->row || !c->ref || row_index_init(&c->index, n, c->row)) return -1;
    memset(c->row, 0xff, n * sizeof(int64_t)); /* -1: empty */
    return 0;
}

void row_cache_free(row_cache *c) {
    free(c->row);
    free(c->ref);
    row_index_free(&c->index);
    c->row = NULL;
    c->ref = NULL;
    c->n = 0;
}

int32_t row_cache_take(row_cache *c, int64_t row, row_cache_busy_fn busy, const void *ctx, int64_t *victim) {
    if (victim) *victim = -1;
    for (uint64_t step = 0; step < 2ull * c->n + 1 && c->n; step++) {
        uint32_t k = c->hand;
        c->hand = k + 1 == c->n ? 0 : k + 1;
        if (busy(ctx, k)) continue;
        if (c->row[k] >= 0) {
            if (c->ref[k]) { /* second chance */
                c->ref[k] = 0;
                continue;
            }
            if (victim) *victim = c->row[k];
            row_index_remove(&c->index, c->row[k]);
            c->used--;
        }
        c->row[k] = row;
        c->ref[k] = 0;
        row_index_insert(&c->index, row, (int32_t)k);
        c->used++;
        return (int32_t)k;
    }
    return -1;
}

void row_cache_drop(row_cache *c, int32_t k) {
    row_index_remove(&c->index, c->row[k]);
    c->row[k] = -1;
    c->used--;
}
