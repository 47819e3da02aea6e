/* The paged KV cache (see kv_cache.h): a pool of blocks per layer, a stack
 * of free block ids, and growable block tables. Engine thread only: no
 * locking. */
#include "engine/kv_cache.h"

#include <assert.h>
#include <stdlib.h>

struct kv_cache {
    kv_cache_params p;
    char **k, **v;  /* (n_layers) x (n_blocks, block_size, kv_width) elements of elem_bytes */
    int *free_ids;  /* (n_blocks) stack of free block ids, top at n_free-1 */
    int n_free;
};

const char *kv_cache_status_str(int status) {
    switch (status) {
    case KV_CACHE_OK: return "ok";
    case KV_CACHE_ERR_NOMEM: return "out of memory";
    case KV_CACHE_ERR_FULL: return "no free KV cache blocks";
    }
    return "unknown kv_cache status";
}

/* The pool's memory: the backend's when the params name one, else the heap. */
static void *kv_alloc(const kv_cache *c, size_t bytes) {
    return c->p.be ? backend_alloc(c->p.be, bytes) : malloc(bytes);
}
static void kv_free(const kv_cache *c, void *p) {
    if (c->p.be) backend_free(c->p.be, p);
    else free(p);
}

kv_cache_params kv_cache_default_params(void) {
    kv_cache_params p = {0};
    p.block_size = 16;
    return p;
}

int kv_cache_create(const kv_cache_params *p, kv_cache **out) {
    assert(p->n_layers > 0 && p->kv_width > 0 && p->block_size > 0 && p->n_blocks > 0);
    *out = NULL;
    kv_cache *c = calloc(1, sizeof(*c));
    if (!c) return KV_CACHE_ERR_NOMEM;
    c->p = *p;
    if (!c->p.elem_bytes) c->p.elem_bytes = sizeof(float);
    c->k = calloc((size_t)p->n_layers, sizeof(char *));
    c->v = calloc((size_t)p->n_layers, sizeof(char *));
    c->free_ids = malloc((size_t)p->n_blocks * sizeof(int));
    int ok = c->k && c->v && c->free_ids;
    size_t per_layer = (size_t)p->n_blocks * p->block_size * p->kv_width * c->p.elem_bytes;
    for (int l = 0; ok && l < p->n_layers; l++) {
        c->k[l] = kv_alloc(c, per_layer);
        c->v[l] = kv_alloc(c, per_layer);
        ok = c->k[l] && c->v[l];
    }
    if (!ok) {
        kv_cache_destroy(c);
        return KV_CACHE_ERR_NOMEM;
    }
    /* Lowest ids on top, so a lone sequence gets blocks 0, 1, 2, ... */
    for (int i = 0; i < p->n_blocks; i++) c->free_ids[i] = p->n_blocks - 1 - i;
    c->n_free = p->n_blocks;
    *out = c;
    return KV_CACHE_OK;
}

void kv_cache_destroy(kv_cache *c) {
    if (!c) return;
    for (int l = 0; l < c->p.n_layers; l++) {
        if (c->k) kv_free(c, c->k[l]);
        if (c->v) kv_free(c, c->v[l]);
    }
    free(c->k);
    free(c->v);
    free(c->free_ids);
    free(c);
}

int kv_cache_block_size(const kv_cache *c) { return c->p.block_size; }
int kv_cache_n_blocks(const kv_cache *c) { return c->p.n_blocks; }
int kv_cache_used_blocks(const kv_cache *c) { return c->p.n_blocks - c->n_free; }
int kv_cache_free_blocks(const kv_cache *c) { return c->n_free; }

int kv_cache_blocks_for(const kv_cache *c, int n_tokens) {
    return n_tokens <= 0 ? 0 : (n_tokens + c->p.block_size - 1) / c->p.block_size;
}

int kv_cache_seq_reserve(kv_cache *c, kv_seq *s, int n_tokens) {
    int need = kv_cache_blocks_for(c, n_tokens) - s->n_blocks;
    if (need <= 0) return KV_CACHE_OK;
    if (need > c->n_free) return KV_CACHE_ERR_FULL;
    if (s->n_blocks + need > s->cap) {
        int cap = s->cap ? s->cap : 4;
        while (cap < s->n_blocks + need) cap *= 2;
        int *b = realloc(s->blocks, (size_t)cap * sizeof(int));
        if (!b) return KV_CACHE_ERR_NOMEM;
        s->blocks = b;
        s->cap = cap;
    }
    for (int i = 0; i < need; i++) s->blocks[s->n_blocks++] = c->free_ids[--c->n_free];
    return KV_CACHE_OK;
}

void kv_cache_seq_free(kv_cache *c, kv_seq *s) {
    /* Pushed back in reverse, so the next sequence gets the same ids in order. */
    for (int i = s->n_blocks - 1; i >= 0; i--) {
        assert(c->n_free < c->p.n_blocks);
        c->free_ids[c->n_free++] = s->blocks[i];
    }
    s->n_blocks = 0;
}

void kv_cache_seq_destroy(kv_cache *c, kv_seq *s) {
    kv_cache_seq_free(c, s);
    free(s->blocks);
    s->blocks = NULL;
    s->cap = 0;
}

void *kv_cache_k(kv_cache *c, int layer, int block) {
    assert(layer >= 0 && layer < c->p.n_layers && block >= 0 && block < c->p.n_blocks);
    return c->k[layer] + (size_t)block * c->p.block_size * c->p.kv_width * c->p.elem_bytes;
}

void *kv_cache_v(kv_cache *c, int layer, int block) {
    assert(layer >= 0 && layer < c->p.n_layers && block >= 0 && block < c->p.n_blocks);
    return c->v[layer] + (size_t)block * c->p.block_size * c->p.kv_width * c->p.elem_bytes;
}

void *kv_cache_k_layer(kv_cache *c, int layer) { return c->k[layer]; }
void *kv_cache_v_layer(kv_cache *c, int layer) { return c->v[layer]; }
