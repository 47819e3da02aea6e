/* The paged KV cache (vLLM's design): one pool of fixed-size blocks of
 * block_size token positions, shared by every sequence. A sequence owns a
 * block table (logical block i -> physical block) that grows as its tokens
 * arrive and is returned whole when the sequence ends or is preempted. Each
 * block holds, for every layer, the K and V rows of its positions:
 * K(layer, block) is (block_size, kv_width) elements, row-major, in the
 * memory and element type of the backend that reads them (f32 host memory
 * unless the params say otherwise). */
#ifndef ENGINE_KV_CACHE_H
#define ENGINE_KV_CACHE_H

#include <stddef.h>

#include "engine/backend/backend.h"

typedef enum {
    KV_CACHE_OK = 0,
    KV_CACHE_ERR_NOMEM = -1, /* the pool itself could not be allocated */
    KV_CACHE_ERR_FULL = -2,  /* not enough free blocks: nothing was allocated */
} kv_cache_status;

const char *kv_cache_status_str(int status);

typedef struct {
    int n_layers;   /* model layers */
    int kv_width;   /* n_kv_heads * head_dim floats per position and layer */
    int block_size; /* token positions per block; default 16 */
    int n_blocks;   /* blocks in the pool */
    size_t elem_bytes; /* bytes per element; 0: 4 (f32) */
    backend *be;       /* the backend whose memory holds the pool (borrowed); NULL: malloc */
} kv_cache_params;

/* block_size 16; the other fields must be set by the caller. */
kv_cache_params kv_cache_default_params(void);

typedef struct kv_cache kv_cache;

/* A sequence's block table. Zero-initialise it ({0}) before first use; it
 * belongs to one cache from its first reserve until kv_cache_seq_free. */
typedef struct {
    int *blocks;    /* (n_blocks) physical block ids, heap, owned by the table */
    int n_blocks;   /* blocks held */
    int cap;        /* entries allocated in blocks */
} kv_seq;

/* Creates the pool: 2 * n_layers * n_blocks * block_size * kv_width elements.
 * Returns KV_CACHE_OK and *out, or KV_CACHE_ERR_NOMEM (*out NULL). */
int kv_cache_create(const kv_cache_params *p, kv_cache **out);
void kv_cache_destroy(kv_cache *c); /* accepts NULL; every sequence must be freed first */

int kv_cache_block_size(const kv_cache *c);
int kv_cache_n_blocks(const kv_cache *c);  /* blocks in the pool */
int kv_cache_used_blocks(const kv_cache *c); /* blocks held by sequences */
int kv_cache_free_blocks(const kv_cache *c);

/* Blocks needed to hold n_tokens positions. */
int kv_cache_blocks_for(const kv_cache *c, int n_tokens);

/* Grows s so that it holds at least n_tokens positions. Returns KV_CACHE_OK,
 * KV_CACHE_ERR_FULL (the pool has too few free blocks; s is unchanged) or
 * KV_CACHE_ERR_NOMEM (the table could not grow; s is unchanged). */
int kv_cache_seq_reserve(kv_cache *c, kv_seq *s, int n_tokens);

/* Returns every block of s to the pool and empties s (it may be reused).
 * Accepts an empty table. */
void kv_cache_seq_free(kv_cache *c, kv_seq *s);

/* kv_cache_seq_free, then frees the table's own array. */
void kv_cache_seq_destroy(kv_cache *c, kv_seq *s);

/* The K (or V) rows of one physical block in one layer:
 * (block_size, kv_width) elements. Borrowed from the pool. */
void *kv_cache_k(kv_cache *c, int layer, int block);
void *kv_cache_v(kv_cache *c, int layer, int block);

/* Base of layer `layer`'s K (or V) storage: block b starts at
 * base + b * block_size * kv_width. What the attention op reads through a
 * block table. Borrowed from the pool. */
void *kv_cache_k_layer(kv_cache *c, int layer);
void *kv_cache_v_layer(kv_cache *c, int layer);

#endif
