/* The paged KV cache (vLLM's design): one pool of fixed-size blocks of
 * block_size token positions, shared by every sequence. A sequence owns a
 * block table (logical block i -> physical block) that grows as its tokens
 * arrive and is returned whole when the sequence ends or is preempted. Each
 * block holds, for every layer, the K and V rows of its positions:
 * K(layer, block) is (block_size, kv_width) elements, row-major, in the
 * memory and element type of the backend that reads them (f32 host memory
 * unless the params say otherwise). A model whose per-position state is not
 * K/V pairs (DeepSeek-V4: window rows, compressed entries, index keys) gives
 * instead the elements of one block of each layer (params.layer_block_elems)
 * and lays them out itself; its blocks are taken, counted and freed the same way.
 *
 * Prefix caching (params.prefix_caching): blocks are reference counted, and
 * a full block can be registered under a 64-bit hash chained over its
 * parent's hash, its token ids and the sequence's salt. A registered block
 * keeps its token ids and its parent's registration serial, and a lookup
 * compares them (and the salt), so a hash collision can never hand out a
 * block of other contents. A freed registered block stays cached, idle, on
 * an LRU list, and is evicted (unregistered, reused) only when the pool
 * needs a block or more than max_idle blocks are idle; blocks in use are
 * never evicted. Each block may keep aux_bytes of backend memory beside its
 * rows (the Engram conv history at the block's end, engram_step.h). */
#ifndef ENGINE_KV_CACHE_H
#define ENGINE_KV_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/backend/backend.h"

typedef enum {
    KV_CACHE_OK = 0,
    KV_CACHE_ERR_NOMEM = -1, /* the pool itself could not be allocated */
    KV_CACHE_ERR_FULL = -2,  /* not enough free blocks: nothing was allocated */
} kv_cache_status;

const char *kv_cache_status_str(int status);

typedef struct {
    int n_layers;   /* model layers */
    int kv_width;   /* n_kv_heads * head_dim floats per position and layer (unused with layer_block_elems) */
    int block_size; /* token positions per block; default 16 */
    int n_blocks;   /* blocks in the pool */
    size_t elem_bytes; /* bytes per element; 0: 4 (f32) */
    backend *be;       /* the backend whose memory holds the pool (borrowed); NULL: malloc */
    const size_t *layer_block_elems; /* (n_layers) elements of one block of each layer, in one store per
                                      * layer and no V store (read at create, not kept); NULL: K and V
                                      * of block_size * kv_width elements each */
    /* prefix caching */
    bool prefix_caching; /* register full blocks and keep them cached after their sequence ends */
    int max_idle;        /* most idle cached blocks kept (the least recently used go first); 0: the pool */
    size_t aux_bytes;    /* per block, beside its rows, in the pool's memory; 0: none */
    uint64_t hash_seed;  /* mixed into every chain (a model fingerprint) */
    int hash_bits;       /* tests: chain hashes keep only their low hash_bits bits, so that
                          * collisions happen (0: all 64) */
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
    /* prefix caching, from kv_cache_seq_begin until kv_cache_seq_free */
    bool cached;      /* its full blocks are registered (kv_cache_seq_commit) */
    const char *salt; /* borrowed; NULL: none */
    int n_committed;  /* leading blocks whose chain is known (hit or registered) */
    uint64_t chain;   /* hash of blocks [0, n_committed) */
    uint64_t serial;  /* registration serial of block n_committed-1's contents; 0: none */
} kv_seq;

/* Creates the pool: 2 * n_layers * n_blocks * block_size * kv_width elements,
 * or n_blocks * the sum of layer_block_elems. Returns KV_CACHE_OK and *out, or KV_CACHE_ERR_NOMEM (*out NULL). */
int kv_cache_create(const kv_cache_params *p, kv_cache **out);
void kv_cache_destroy(kv_cache *c); /* accepts NULL; every sequence must be freed first */

int kv_cache_block_size(const kv_cache *c);
size_t kv_cache_block_bytes(const kv_cache *c); /* bytes of one block, all layers (and aux) together */
int kv_cache_n_blocks(const kv_cache *c);  /* blocks in the pool */
int kv_cache_used_blocks(const kv_cache *c); /* blocks held by sequences */
int kv_cache_free_blocks(const kv_cache *c); /* blocks a reserve may take: free or idle cached */
bool kv_cache_prefix_caching(const kv_cache *c);
int kv_cache_cached_blocks(const kv_cache *c); /* registered blocks, in use or idle */
int kv_cache_idle_blocks(const kv_cache *c);   /* registered blocks no sequence holds */
long long kv_cache_evictions(const kv_cache *c); /* registered blocks evicted so far */

/* Blocks needed to hold n_tokens positions. */
int kv_cache_blocks_for(const kv_cache *c, int n_tokens);

/* Grows s so that it holds at least n_tokens positions. Returns KV_CACHE_OK,
 * KV_CACHE_ERR_FULL (the pool has too few free blocks; s is unchanged) or
 * KV_CACHE_ERR_NOMEM (the table could not grow; s is unchanged). */
int kv_cache_seq_reserve(kv_cache *c, kv_seq *s, int n_tokens);

/* Returns every block of s to the pool (a registered block no other
 * sequence holds becomes idle cached, the last block first in line for
 * eviction) and empties s (it may be reused, after kv_cache_seq_begin when
 * its blocks are to be registered). Accepts an empty table. */
void kv_cache_seq_free(kv_cache *c, kv_seq *s);

/* kv_cache_seq_free, then frees the table's own array. */
void kv_cache_seq_destroy(kv_cache *c, kv_seq *s);

/* The K (or V) rows of one physical block in one layer:
 * (block_size, kv_width) elements (with layer_block_elems: the layer's block,
 * and no V: NULL). Borrowed from the pool. */
void *kv_cache_k(kv_cache *c, int layer, int block);
void *kv_cache_v(kv_cache *c, int layer, int block);

/* Base of layer `layer`'s K (or V) storage: block b starts at
 * base + b * block_size * kv_width (with layer_block_elems: base + b *
 * layer_block_elems[layer], and no V: NULL). What the attention op reads
 * through a block table. Borrowed from the pool. */
void *kv_cache_k_layer(kv_cache *c, int layer);
void *kv_cache_v_layer(kv_cache *c, int layer);

/* ---- prefix caching (no-ops when the params leave it off) ---- */

/* Makes the empty table s a cached one: the blocks it fills will be
 * registered under chains seeded by salt (borrowed until kv_cache_seq_free;
 * NULL or "": no salt). */
void kv_cache_seq_begin(kv_cache *c, kv_seq *s, const char *salt);

/* How many of the leading full blocks of ids[0..n_ids) are cached under
 * salt, at most max_blocks; *n_idle (may be NULL): how many of those no
 * sequence holds (taking them lowers kv_cache_free_blocks by that much);
 * *serial (may be NULL): the registration serial of the last of them (0:
 * none). Changes nothing. */
int kv_cache_prefix_probe(const kv_cache *c, const int32_t *ids, int n_ids, const char *salt, int max_blocks,
                          int *n_idle, uint64_t *serial);

/* On a table just begun (kv_cache_seq_begin, no blocks): takes the blocks
 * kv_cache_prefix_probe would count (a reference each). Returns how many;
 * 0 when prefix caching is off or s is not empty. */
int kv_cache_seq_attach(kv_cache *c, kv_seq *s, const int32_t *ids, int n_ids, int max_blocks);

/* Records the token ids of positions pos..pos+n-1 of s (its blocks must be
 * reserved): what kv_cache_seq_commit registers a block under. */
void kv_cache_seq_write_ids(kv_cache *c, kv_seq *s, int pos, const int32_t *ids, int n);

/* Once positions [0, n_tokens) of s are computed (their K/V rows and aux
 * written): registers each full block among them not yet committed, unless
 * a block of the same contents is registered already (s then chains on
 * that one, and its own block stays unregistered). */
void kv_cache_seq_commit(kv_cache *c, kv_seq *s, int n_tokens);

/* The aux_bytes of block `block` (backend memory), or NULL without aux. */
void *kv_cache_aux(kv_cache *c, int block);

#endif
