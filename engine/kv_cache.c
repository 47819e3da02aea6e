/* The paged KV cache (see kv_cache.h): a pool of blocks per layer, a stack
 * of free block ids, growable block tables, and for prefix caching the
 * blocks' reference counts, a hash table of registered blocks and the LRU
 * list of idle ones. Engine thread only: no locking. */
#include "engine/kv_cache.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

/* A block's prefix-caching record. */
typedef struct {
    int refs;          /* tables holding it */
    uint64_t hash;     /* chain hash, when serial != 0 */
    uint64_t serial;   /* registration serial (unique for the cache's life); 0: not registered */
    uint64_t parent;   /* serial of the block before it; 0: the first block of a chain */
    char *salt;        /* first blocks only: the salt (owned), NULL: none */
    int next;          /* next block of its hash bucket, -1: none */
    int prev_lru, next_lru; /* idle list links, -1: none */
} kv_block;

struct kv_cache {
    kv_cache_params p;
    char **k, **v;  /* (n_layers) x (n_blocks, block_size, kv_width) elements of elem_bytes; v NULLs with
                     * layer_block_elems */
    size_t *stride; /* (n_layers) bytes of one block of each layer's store */
    int *free_ids;  /* (n_blocks) stack of free block ids, top at n_free-1 */
    int n_free;
    /* prefix caching */
    char *aux;        /* (n_blocks, aux_bytes) pool memory, or NULL */
    kv_block *blk;    /* (n_blocks), or NULL when prefix caching is off */
    int32_t *ids;     /* (n_blocks, block_size) each block's token ids */
    int *bucket;      /* (n_buckets) first block of each hash bucket, -1: none */
    int n_buckets;    /* a power of two */
    int lru_head, lru_tail; /* idle registered blocks, least recently used at the head */
    int n_idle, n_cached;
    uint64_t next_serial;
    long long evictions;
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

/* The prefix-caching records. Returns 0, or -1 out of memory. */
static int prefix_create(kv_cache *c) {
    int nb = c->p.n_blocks;
    c->n_buckets = 1;
    while (c->n_buckets < 2 * nb) c->n_buckets *= 2;
    c->blk = calloc((size_t)nb, sizeof(*c->blk));
    c->ids = malloc((size_t)nb * c->p.block_size * sizeof(int32_t));
    c->bucket = malloc((size_t)c->n_buckets * sizeof(int));
    if (c->p.aux_bytes) c->aux = kv_alloc(c, (size_t)nb * c->p.aux_bytes);
    if (!c->blk || !c->ids || !c->bucket || (c->p.aux_bytes && !c->aux)) return -1;
    for (int i = 0; i < c->n_buckets; i++) c->bucket[i] = -1;
    for (int i = 0; i < nb; i++) c->blk[i].next = c->blk[i].prev_lru = c->blk[i].next_lru = -1;
    c->lru_head = c->lru_tail = -1;
    c->next_serial = 1;
    return 0;
}

int kv_cache_create(const kv_cache_params *p, kv_cache **out) {
    assert(p->n_layers > 0 && (p->kv_width > 0 || p->layer_block_elems) && p->block_size > 0 && p->n_blocks > 0 &&
           p->max_idle >= 0);
    *out = NULL;
    kv_cache *c = calloc(1, sizeof(*c));
    if (!c) return KV_CACHE_ERR_NOMEM;
    c->p = *p;
    c->p.layer_block_elems = NULL; /* borrowed: only read here, into stride */
    if (!c->p.elem_bytes) c->p.elem_bytes = sizeof(float);
    if (!c->p.prefix_caching) c->p.aux_bytes = 0;
    c->k = calloc((size_t)p->n_layers, sizeof(char *));
    c->v = calloc((size_t)p->n_layers, sizeof(char *));
    c->stride = calloc((size_t)p->n_layers, sizeof(size_t));
    c->free_ids = malloc((size_t)p->n_blocks * sizeof(int));
    int ok = c->k && c->v && c->stride && c->free_ids;
    for (int l = 0; ok && l < p->n_layers; l++) {
        bool pairs = !p->layer_block_elems;
        c->stride[l] = (pairs ? (size_t)p->block_size * p->kv_width : p->layer_block_elems[l]) * c->p.elem_bytes;
        c->k[l] = kv_alloc(c, (size_t)p->n_blocks * c->stride[l]);
        c->v[l] = pairs ? kv_alloc(c, (size_t)p->n_blocks * c->stride[l]) : NULL;
        ok = c->k[l] && (c->v[l] || !pairs);
    }
    if (!ok || (c->p.prefix_caching && prefix_create(c))) {
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
    for (int i = 0; c->blk && i < c->p.n_blocks; i++) free(c->blk[i].salt);
    if (c->aux) kv_free(c, c->aux);
    free(c->blk);
    free(c->ids);
    free(c->bucket);
    free(c->k);
    free(c->v);
    free(c->stride);
    free(c->free_ids);
    free(c);
}

int kv_cache_block_size(const kv_cache *c) { return c->p.block_size; }
int kv_cache_n_blocks(const kv_cache *c) { return c->p.n_blocks; }

size_t kv_cache_block_bytes(const kv_cache *c) {
    size_t n = c->p.aux_bytes;
    for (int l = 0; l < c->p.n_layers; l++) n += c->stride[l] * (c->v[l] ? 2 : 1);
    return n;
}
int kv_cache_used_blocks(const kv_cache *c) { return c->p.n_blocks - c->n_free - c->n_idle; }
int kv_cache_free_blocks(const kv_cache *c) { return c->n_free + c->n_idle; }
bool kv_cache_prefix_caching(const kv_cache *c) { return c->p.prefix_caching; }
int kv_cache_cached_blocks(const kv_cache *c) { return c->n_cached; }
int kv_cache_idle_blocks(const kv_cache *c) { return c->n_idle; }
long long kv_cache_evictions(const kv_cache *c) { return c->evictions; }

int kv_cache_blocks_for(const kv_cache *c, int n_tokens) {
    return n_tokens <= 0 ? 0 : (n_tokens + c->p.block_size - 1) / c->p.block_size;
}

/* ---- the idle list and the hash table ---- */

static void lru_unlink(kv_cache *c, int b) {
    kv_block *k = &c->blk[b];
    if (k->prev_lru >= 0) c->blk[k->prev_lru].next_lru = k->next_lru;
    else c->lru_head = k->next_lru;
    if (k->next_lru >= 0) c->blk[k->next_lru].prev_lru = k->prev_lru;
    else c->lru_tail = k->prev_lru;
    k->prev_lru = k->next_lru = -1;
    c->n_idle--;
}

static void lru_append(kv_cache *c, int b) {
    kv_block *k = &c->blk[b];
    k->prev_lru = c->lru_tail;
    k->next_lru = -1;
    if (c->lru_tail >= 0) c->blk[c->lru_tail].next_lru = b;
    else c->lru_head = b;
    c->lru_tail = b;
    c->n_idle++;
}

/* Takes block b out of the hash table (it is registered). */
static void unregister(kv_cache *c, int b) {
    kv_block *k = &c->blk[b];
    int *at = &c->bucket[k->hash & (uint64_t)(c->n_buckets - 1)];
    while (*at != b) at = &c->blk[*at].next;
    *at = k->next;
    k->next = -1;
    k->serial = 0;
    free(k->salt);
    k->salt = NULL;
    c->n_cached--;
}

/* The least recently used idle block, unregistered: a free block now. */
static int evict_lru(kv_cache *c) {
    int b = c->lru_head;
    assert(b >= 0);
    lru_unlink(c, b);
    unregister(c, b);
    c->evictions++;
    return b;
}

/* The chain hash of a block: FNV-1a over its ids from the parent's hash, then
 * a splitmix64 finish. Collisions only cost a comparison (lookups verify the
 * ids, the parent and the salt). */
static uint64_t chain_hash(uint64_t parent, const int32_t *ids, int n) {
    uint64_t h = parent ^ 0xcbf29ce484222325ull;
    for (int i = 0; i < n; i++) h = (h ^ (uint32_t)ids[i]) * 0x100000001b3ull;
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebull;
    return h ^ (h >> 31);
}

/* chain_hash as the cache keeps it (params.hash_bits). */
static uint64_t block_hash(const kv_cache *c, uint64_t parent, const int32_t *ids) {
    uint64_t h = chain_hash(parent, ids, c->p.block_size);
    return c->p.hash_bits > 0 && c->p.hash_bits < 64 ? h & ((1ull << c->p.hash_bits) - 1) : h;
}

/* The seed of a chain: the cache's seed and the salt. */
static uint64_t chain_seed(const kv_cache *c, const char *salt) {
    uint64_t h = chain_hash(c->p.hash_seed, NULL, 0);
    for (const char *p = salt; p && *p; p++) h = (h ^ (unsigned char)*p) * 0x100000001b3ull;
    return chain_hash(h, NULL, 0);
}

static bool same_salt(const char *a, const char *b) {
    return (!a || !*a) ? (!b || !*b) : (b && !strcmp(a, b));
}

/* The registered block of these contents: hash h, after the block of serial
 * `parent` (0: first, under salt), with these ids; -1 when none. */
static int find(const kv_cache *c, uint64_t h, uint64_t parent, const int32_t *ids, const char *salt) {
    int bs = c->p.block_size;
    for (int b = c->bucket[h & (uint64_t)(c->n_buckets - 1)]; b >= 0; b = c->blk[b].next) {
        const kv_block *k = &c->blk[b];
        if (k->hash == h && k->parent == parent && !memcmp(c->ids + (size_t)b * bs, ids, (size_t)bs * sizeof(int32_t)) &&
            (parent || same_salt(k->salt, salt)))
            return b;
    }
    return -1;
}

/* ---- tables ---- */

int kv_cache_seq_reserve(kv_cache *c, kv_seq *s, int n_tokens) {
    int need = kv_cache_blocks_for(c, n_tokens) - s->n_blocks;
    if (need <= 0) return KV_CACHE_OK;
    if (need > c->n_free + c->n_idle) return KV_CACHE_ERR_FULL;
    if (s->n_blocks + need > s->cap) {
        int cap = s->cap ? s->cap : 4;
        while (cap < s->n_blocks + need) cap *= 2;
        int *b = realloc(s->blocks, (size_t)cap * sizeof(int));
        if (!b) return KV_CACHE_ERR_NOMEM;
        s->blocks = b;
        s->cap = cap;
    }
    for (int i = 0; i < need; i++) { /* free blocks first: idle ones may still be hit */
        int b = c->n_free ? c->free_ids[--c->n_free] : evict_lru(c);
        if (c->blk) c->blk[b].refs = 1;
        s->blocks[s->n_blocks++] = b;
    }
    return KV_CACHE_OK;
}

/* Block b loses a holder; with none left it becomes idle (registered) or free. */
static void block_release(kv_cache *c, int b) {
    if (c->blk) {
        kv_block *k = &c->blk[b];
        assert(k->refs > 0);
        if (--k->refs > 0) return;
        if (k->serial) {
            lru_append(c, b);
            if (c->p.max_idle > 0 && c->n_idle > c->p.max_idle) b = evict_lru(c);
            else return;
        }
    }
    assert(c->n_free < c->p.n_blocks);
    c->free_ids[c->n_free++] = b;
}

void kv_cache_seq_free(kv_cache *c, kv_seq *s) {
    /* In reverse: the next sequence gets the same free ids in order, and a
     * chain's last blocks are evicted before its first (which more prompts share). */
    for (int i = s->n_blocks - 1; i >= 0; i--) block_release(c, s->blocks[i]);
    s->n_blocks = 0;
    s->cached = false;
    s->salt = NULL;
    s->n_committed = 0;
    s->chain = 0;
    s->serial = 0;
}

void kv_cache_seq_destroy(kv_cache *c, kv_seq *s) {
    kv_cache_seq_free(c, s);
    free(s->blocks);
    s->blocks = NULL;
    s->cap = 0;
}

void *kv_cache_k(kv_cache *c, int layer, int block) {
    assert(layer >= 0 && layer < c->p.n_layers && block >= 0 && block < c->p.n_blocks);
    return c->k[layer] + (size_t)block * c->stride[layer];
}

void *kv_cache_v(kv_cache *c, int layer, int block) {
    assert(layer >= 0 && layer < c->p.n_layers && block >= 0 && block < c->p.n_blocks);
    return c->v[layer] ? c->v[layer] + (size_t)block * c->stride[layer] : NULL;
}

void *kv_cache_k_layer(kv_cache *c, int layer) { return c->k[layer]; }
void *kv_cache_v_layer(kv_cache *c, int layer) { return c->v[layer]; }

/* ---- prefix caching ---- */

void kv_cache_seq_begin(kv_cache *c, kv_seq *s, const char *salt) {
    assert(s->n_blocks == 0);
    if (!c->blk) return;
    s->cached = true;
    s->salt = salt && *salt ? salt : NULL;
    s->n_committed = 0;
    s->chain = chain_seed(c, s->salt);
    s->serial = 0;
}

int kv_cache_prefix_probe(const kv_cache *c, const int32_t *ids, int n_ids, const char *salt, int max_blocks,
                          int *n_idle, uint64_t *serial) {
    int bs = c->p.block_size, n = 0, idle = 0;
    uint64_t h = c->blk ? chain_seed(c, salt) : 0, ser = 0;
    for (; c->blk && n < max_blocks && (n + 1) * bs <= n_ids; n++) {
        const int32_t *blk_ids = ids + (size_t)n * bs;
        h = block_hash(c, h, blk_ids);
        int b = find(c, h, ser, blk_ids, salt);
        if (b < 0) break;
        idle += c->blk[b].refs == 0;
        ser = c->blk[b].serial;
    }
    if (n_idle) *n_idle = idle;
    if (serial) *serial = ser;
    return n;
}

int kv_cache_seq_attach(kv_cache *c, kv_seq *s, const int32_t *ids, int n_ids, int max_blocks) {
    if (!s->cached || s->n_blocks) return 0;
    int bs = c->p.block_size, want = kv_cache_prefix_probe(c, ids, n_ids, s->salt, max_blocks, NULL, NULL);
    if (want > s->cap) {
        int *b = realloc(s->blocks, (size_t)want * sizeof(int));
        if (!b) return 0; /* a hint: compute them instead */
        s->blocks = b;
        s->cap = want;
    }
    for (int i = 0; i < want; i++) {
        const int32_t *blk_ids = ids + (size_t)i * bs;
        s->chain = block_hash(c, s->chain, blk_ids);
        int b = find(c, s->chain, s->serial, blk_ids, s->salt);
        assert(b >= 0);
        if (c->blk[b].refs++ == 0) lru_unlink(c, b);
        s->serial = c->blk[b].serial;
        s->blocks[s->n_blocks++] = b;
    }
    s->n_committed = want;
    return want;
}

void kv_cache_seq_write_ids(kv_cache *c, kv_seq *s, int pos, const int32_t *ids, int n) {
    if (!s->cached) return;
    int bs = c->p.block_size;
    for (int k = 0; k < n; k++) {
        int p = pos + k;
        assert(p / bs < s->n_blocks && p / bs >= s->n_committed);
        c->ids[(size_t)s->blocks[p / bs] * bs + p % bs] = ids[k];
    }
}

void kv_cache_seq_commit(kv_cache *c, kv_seq *s, int n_tokens) {
    if (!s->cached) return;
    int bs = c->p.block_size;
    for (; (s->n_committed + 1) * bs <= n_tokens && s->n_committed < s->n_blocks; s->n_committed++) {
        int b = s->blocks[s->n_committed];
        const int32_t *blk_ids = c->ids + (size_t)b * bs;
        s->chain = block_hash(c, s->chain, blk_ids);
        int have = find(c, s->chain, s->serial, blk_ids, s->salt);
        if (have >= 0) { /* computed twice (two sequences of one step): chain on the first */
            s->serial = c->blk[have].serial;
            continue;
        }
        kv_block *k = &c->blk[b];
        if (!s->serial && s->salt && !(k->salt = strdup(s->salt))) { /* cannot keep the salt: stop registering */
            s->cached = false;
            return;
        }
        k->hash = s->chain;
        k->parent = s->serial;
        k->serial = s->serial = c->next_serial++;
        int *head = &c->bucket[k->hash & (uint64_t)(c->n_buckets - 1)];
        k->next = *head;
        *head = b;
        c->n_cached++;
    }
}

void *kv_cache_aux(kv_cache *c, int block) {
    assert(block >= 0 && block < c->p.n_blocks);
    return c->aux ? c->aux + (size_t)block * c->p.aux_bytes : NULL;
}
