/* N-gram hashing of Engram: NumPy-exact multiplier draws (SeedSequence, PCG64,
 * Lemire bounded integers), head table primes with one shared seen set, and
 * row ids per position with a per-sequence history (ENGRAM.md sections 4-5).
 * The compressed tokenizer lives in ngram_hash_compress.c. */
#include "engram/ngram_hash.h"
#include "base/err.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef unsigned __int128 u128;

const char *ngram_hash_status_str(int status) {
    switch (status) {
    case NGRAM_HASH_OK: return "ok";
    case NGRAM_HASH_EINVAL: return "invalid argument";
    case NGRAM_HASH_EOVERFLOW: return "value overflows int64";
    case NGRAM_HASH_ENOMEM: return "out of memory";
    case NGRAM_HASH_ERANGE: return "token id out of range";
    default: return "unknown status";
    }
}

/* ---- NumPy SeedSequence (numpy/random/bit_generator.pyx) ---- */

#define SS_POOL 4
#define SS_INIT_A 0x43b0d7e5u
#define SS_MULT_A 0x931e8875u
#define SS_INIT_B 0x8b51f9ddu
#define SS_MULT_B 0x58f38dedu
#define SS_MIX_MULT_L 0xca01f9ddu
#define SS_MIX_MULT_R 0x4973f715u
#define SS_XSHIFT 16

static uint32_t ss_hashmix(uint32_t value, uint32_t *hash_const) {
    value ^= *hash_const;
    *hash_const *= SS_MULT_A;
    value *= *hash_const;
    value ^= value >> SS_XSHIFT;
    return value;
}

static uint32_t ss_mix(uint32_t x, uint32_t y) {
    uint32_t r = SS_MIX_MULT_L * x - SS_MIX_MULT_R * y;
    r ^= r >> SS_XSHIFT;
    return r;
}

/* SeedSequence(seed).generate_state(4, np.uint64) for 0 <= seed < 2^64. */
static void ss_generate_state_u64x4(uint64_t seed, uint64_t out[4]) {
    /* Entropy as little-endian 32-bit words; 0 is one word [0]. */
    uint32_t ent[2];
    int n_ent = 0;
    ent[n_ent++] = (uint32_t)seed;
    if (seed >> 32) ent[n_ent++] = (uint32_t)(seed >> 32);

    uint32_t pool[SS_POOL];
    uint32_t hc = SS_INIT_A;
    for (int i = 0; i < SS_POOL; i++) pool[i] = ss_hashmix(i < n_ent ? ent[i] : 0u, &hc);
    for (int src = 0; src < SS_POOL; src++)
        for (int dst = 0; dst < SS_POOL; dst++)
            if (src != dst) pool[dst] = ss_mix(pool[dst], ss_hashmix(pool[src], &hc));
    /* (entropy never exceeds the pool here, so no trailing mixing pass) */

    uint32_t words[8];
    uint32_t hb = SS_INIT_B;
    for (int i = 0; i < 8; i++) {
        uint32_t v = pool[i % SS_POOL];
        v ^= hb;
        hb *= SS_MULT_B;
        v *= hb;
        v ^= v >> SS_XSHIFT;
        words[i] = v;
    }
    for (int i = 0; i < 4; i++) out[i] = (uint64_t)words[2 * i] | ((uint64_t)words[2 * i + 1] << 32);
}

/* ---- PCG64 (numpy/random/src/pcg64/pcg64.h) ---- */

#define PCG_MULT ((((u128)2549297995355413924ULL) << 64) | (u128)4865540595714422341ULL)

static void pcg_step(ngram_hash_pcg64 *rng) { rng->state = rng->state * PCG_MULT + rng->inc; }

void ngram_hash_pcg64_seed(ngram_hash_pcg64 *rng, uint64_t seed) {
    uint64_t v[4];
    ss_generate_state_u64x4(seed, v);
    u128 initstate = ((u128)v[0] << 64) | v[1];
    u128 initseq = ((u128)v[2] << 64) | v[3];
    rng->state = 0;
    rng->inc = (initseq << 1) | 1u;
    pcg_step(rng);
    rng->state += initstate;
    pcg_step(rng);
    rng->has_uint32 = 0;
    rng->uinteger = 0;
}

uint64_t ngram_hash_pcg64_next64(ngram_hash_pcg64 *rng) {
    pcg_step(rng);
    uint64_t x = (uint64_t)(rng->state >> 64) ^ (uint64_t)rng->state;
    unsigned rot = (unsigned)(rng->state >> 122);
    return (x >> rot) | (x << ((64u - rot) & 63u));
}

uint32_t ngram_hash_pcg64_next32(ngram_hash_pcg64 *rng) {
    if (rng->has_uint32) {
        rng->has_uint32 = 0;
        return rng->uinteger;
    }
    uint64_t next = ngram_hash_pcg64_next64(rng);
    rng->has_uint32 = 1;
    rng->uinteger = (uint32_t)(next >> 32);
    return (uint32_t)next;
}

/* ---- Bounded integers (numpy/random/src/distributions/distributions.c) ---- */

/* Lemire on 32 bits; rng < 0xFFFFFFFF. */
static uint32_t bounded_lemire_u32(ngram_hash_pcg64 *g, uint32_t rng) {
    const uint32_t rng_excl = rng + 1;
    uint64_t m = (uint64_t)ngram_hash_pcg64_next32(g) * rng_excl;
    uint32_t leftover = (uint32_t)m;
    if (leftover < rng_excl) {
        const uint32_t threshold = (UINT32_MAX - rng) % rng_excl;
        while (leftover < threshold) {
            m = (uint64_t)ngram_hash_pcg64_next32(g) * rng_excl;
            leftover = (uint32_t)m;
        }
    }
    return (uint32_t)(m >> 32);
}

/* Lemire on 64 bits; rng < 0xFFFFFFFFFFFFFFFF. */
static uint64_t bounded_lemire_u64(ngram_hash_pcg64 *g, uint64_t rng) {
    const uint64_t rng_excl = rng + 1;
    u128 m = (u128)ngram_hash_pcg64_next64(g) * rng_excl;
    uint64_t leftover = (uint64_t)m;
    if (leftover < rng_excl) {
        const uint64_t threshold = (UINT64_MAX - rng) % rng_excl;
        while (leftover < threshold) {
            m = (u128)ngram_hash_pcg64_next64(g) * rng_excl;
            leftover = (uint64_t)m;
        }
    }
    return (uint64_t)(m >> 64);
}

/* random_bounded_uint64_fill with use_masked = false (Generator.integers). */
static void bounded_u64_fill(ngram_hash_pcg64 *g, uint64_t off, uint64_t rng, size_t cnt,
                             uint64_t *out) {
    if (rng == 0) {
        for (size_t i = 0; i < cnt; i++) out[i] = off;
    } else if (rng <= 0xFFFFFFFFull) {
        if (rng == 0xFFFFFFFFull) {
            for (size_t i = 0; i < cnt; i++) out[i] = off + ngram_hash_pcg64_next32(g);
        } else {
            for (size_t i = 0; i < cnt; i++) out[i] = off + bounded_lemire_u32(g, (uint32_t)rng);
        }
    } else if (rng == UINT64_MAX) {
        for (size_t i = 0; i < cnt; i++) out[i] = off + ngram_hash_pcg64_next64(g);
    } else {
        for (size_t i = 0; i < cnt; i++) out[i] = off + bounded_lemire_u64(g, rng);
    }
}

int ngram_hash_numpy_integers(uint64_t seed, int64_t low, int64_t high, size_t n, int64_t *out) {
    if (low >= high) return NGRAM_HASH_EINVAL;
    ngram_hash_pcg64 g;
    ngram_hash_pcg64_seed(&g, seed);
    /* closed interval [low, high-1]; rng and off as NumPy computes them */
    uint64_t rng = (uint64_t)(high - 1) - (uint64_t)low;
    uint64_t off = (uint64_t)low;
    bounded_u64_fill(&g, off, rng, n, (uint64_t *)out);
    return NGRAM_HASH_OK;
}

/* ---- Primes ---- */

static uint64_t mulmod(uint64_t a, uint64_t b, uint64_t m) { return (uint64_t)((u128)a * b % m); }

static uint64_t powmod(uint64_t a, uint64_t e, uint64_t m) {
    uint64_t r = 1 % m;
    a %= m;
    while (e) {
        if (e & 1) r = mulmod(r, a, m);
        a = mulmod(a, a, m);
        e >>= 1;
    }
    return r;
}

int ngram_hash_is_prime(uint64_t n) {
    static const uint64_t bases[] = {2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37};
    if (n < 2) return 0;
    for (size_t i = 0; i < sizeof bases / sizeof bases[0]; i++) {
        if (n == bases[i]) return 1;
        if (n % bases[i] == 0) return 0;
    }
    uint64_t d = n - 1;
    int s = 0;
    while ((d & 1) == 0) {
        d >>= 1;
        s++;
    }
    for (size_t i = 0; i < sizeof bases / sizeof bases[0]; i++) {
        uint64_t x = powmod(bases[i], d, n);
        if (x == 1 || x == n - 1) continue;
        int composite = 1;
        for (int r = 1; r < s; r++) {
            x = mulmod(x, x, n);
            if (x == n - 1) {
                composite = 0;
                break;
            }
        }
        if (composite) return 0;
    }
    return 1;
}

/* Open-addressing set of primes (never 0, so 0 marks an empty slot). */
typedef struct {
    uint64_t *slot;
    size_t cap; /* power of two */
} prime_set;

static int prime_set_has(const prime_set *s, uint64_t p) {
    size_t i = (size_t)(p * 0x9E3779B97F4A7C15ull) & (s->cap - 1);
    while (s->slot[i]) {
        if (s->slot[i] == p) return 1;
        i = (i + 1) & (s->cap - 1);
    }
    return 0;
}

static void prime_set_add(prime_set *s, uint64_t p) {
    size_t i = (size_t)(p * 0x9E3779B97F4A7C15ull) & (s->cap - 1);
    while (s->slot[i] && s->slot[i] != p) i = (i + 1) & (s->cap - 1);
    s->slot[i] = p;
}

/* ---- Configuration ---- */

struct ngram_hash {
    int n_layers;
    int max_ngram;       /* N */
    int n_head_per_ngram;
    int n_heads;         /* H */
    int64_t head_dim;    /* D */
    int64_t pad;         /* compressed pad id */
    int64_t *layer_ids;  /* (n_layers) */
    int64_t *mult;       /* (n_layers, N) */
    int64_t *primes;     /* (n_layers, H) */
    int64_t *offsets;    /* (n_layers, H) */
    int64_t *rows;       /* (n_layers) table rows per layer */
};

static const int64_t default_vocab[2] = {129280 * 5, 129280 * 5};
static const int64_t default_layers[2] = {1, 15};

ngram_hash_config ngram_hash_default_config(void) {
    ngram_hash_config c;
    memset(&c, 0, sizeof c);
    c.engram_vocab_size = default_vocab;
    c.max_ngram_size = 3;
    c.n_embed_per_ngram = 512;
    c.n_head_per_ngram = 8;
    c.layer_ids = default_layers;
    c.n_layers = 2;
    c.pad_id = 2;
    c.seed = 0;
    c.kernel_size = 4;
    c.hc_mult = 4;
    return c;
}

/* Largest prime-search start accepted: keeps every prime and every layer's
 * row count far from the int64 limit. */
#define MAX_VOCAB_START ((int64_t)1 << 56)

static int validate(const ngram_hash_config *c, char *err, size_t errlen) {
    if (!c) return err_set(err, errlen, NGRAM_HASH_EINVAL, "config is NULL");
    if (c->max_ngram_size < 2 || c->max_ngram_size > NGRAM_HASH_MAX_NGRAM)
        return err_set(err, errlen, NGRAM_HASH_EINVAL, "max_ngram_size %d outside [2, %d]",
                    c->max_ngram_size, NGRAM_HASH_MAX_NGRAM);
    if (c->n_head_per_ngram < 1 || c->n_head_per_ngram > NGRAM_HASH_MAX_HEADS)
        return err_set(err, errlen, NGRAM_HASH_EINVAL, "n_head_per_ngram %d outside [1, %d]",
                    c->n_head_per_ngram, NGRAM_HASH_MAX_HEADS);
    if (c->n_layers < 1 || c->n_layers > NGRAM_HASH_MAX_LAYERS)
        return err_set(err, errlen, NGRAM_HASH_EINVAL, "layer_ids has %d entries, need 1..%d",
                    c->n_layers, NGRAM_HASH_MAX_LAYERS);
    if (!c->layer_ids) return err_set(err, errlen, NGRAM_HASH_EINVAL, "layer_ids is NULL");
    if (!c->engram_vocab_size)
        return err_set(err, errlen, NGRAM_HASH_EINVAL, "engram_vocab_size is NULL");
    long total = (long)c->n_layers * (c->max_ngram_size - 1) * c->n_head_per_ngram;
    if (total > NGRAM_HASH_MAX_TOTAL_HEADS)
        return err_set(err, errlen, NGRAM_HASH_EINVAL,
                    "layer_ids x (max_ngram_size-1) x n_head_per_ngram = %ld heads, over %d",
                    total, NGRAM_HASH_MAX_TOTAL_HEADS);
    for (int i = 0; i < c->max_ngram_size - 1; i++) {
        int64_t v = c->engram_vocab_size[i];
        if (v < 1 || v > MAX_VOCAB_START)
            return err_set(err, errlen, NGRAM_HASH_EINVAL,
                        "engram_vocab_size[%d] = %lld outside [1, 2^56]", i, (long long)v);
    }
    for (int i = 0; i < c->n_layers; i++) {
        if (c->layer_ids[i] < 0)
            return err_set(err, errlen, NGRAM_HASH_EINVAL, "layer_ids[%d] = %lld is negative", i,
                        (long long)c->layer_ids[i]);
        for (int j = 0; j < i; j++)
            if (c->layer_ids[j] == c->layer_ids[i])
                return err_set(err, errlen, NGRAM_HASH_EINVAL, "layer_ids[%d] = %lld repeats", i,
                            (long long)c->layer_ids[i]);
    }
    if (c->n_embed_per_ngram < 1 || c->n_embed_per_ngram % c->n_head_per_ngram != 0)
        return err_set(err, errlen, NGRAM_HASH_EINVAL,
                    "n_embed_per_ngram %lld is not a positive multiple of n_head_per_ngram %d",
                    (long long)c->n_embed_per_ngram, c->n_head_per_ngram);
    int64_t e;
    if (__builtin_mul_overflow(c->n_embed_per_ngram, (int64_t)(c->max_ngram_size - 1), &e) ||
        e > ((int64_t)1 << 40))
        return err_set(err, errlen, NGRAM_HASH_EOVERFLOW,
                    "n_embed_per_ngram %lld x (max_ngram_size-1) is too large",
                    (long long)c->n_embed_per_ngram);
    if (c->seed < 0)
        return err_set(err, errlen, NGRAM_HASH_EINVAL, "seed %lld is negative", (long long)c->seed);
    for (int i = 0; i < c->n_layers; i++) {
        int64_t s;
        if (__builtin_mul_overflow(c->layer_ids[i], (int64_t)10007, &s) ||
            __builtin_add_overflow(s, c->seed, &s))
            return err_set(err, errlen, NGRAM_HASH_EOVERFLOW,
                        "seed + 10007 * layer_ids[%d] overflows int64", i);
    }
    if (c->kernel_size < 1 || c->kernel_size > 1024)
        return err_set(err, errlen, NGRAM_HASH_EINVAL, "kernel_size %d outside [1, 1024]",
                    c->kernel_size);
    if (c->hc_mult < 1 || c->hc_mult > 1024)
        return err_set(err, errlen, NGRAM_HASH_EINVAL, "hc_mult %d outside [1, 1024]", c->hc_mult);
    if (c->pad_id < 0)
        return err_set(err, errlen, NGRAM_HASH_EINVAL, "pad_id %lld is negative",
                    (long long)c->pad_id);
    if (c->compressed_vocab_size < 1)
        return err_set(err, errlen, NGRAM_HASH_EINVAL, "compressed_vocab_size %lld is not positive",
                    (long long)c->compressed_vocab_size);
    if (c->compressed_pad_id < 0 || c->compressed_pad_id >= c->compressed_vocab_size)
        return err_set(err, errlen, NGRAM_HASH_EINVAL,
                    "compressed_pad_id %lld outside [0, compressed_vocab_size %lld)",
                    (long long)c->compressed_pad_id, (long long)c->compressed_vocab_size);
    return NGRAM_HASH_OK;
}

int ngram_hash_create(const ngram_hash_config *cfg, ngram_hash **out, char *err, size_t errlen) {
    if (!out) return err_set(err, errlen, NGRAM_HASH_EINVAL, "out is NULL");
    *out = NULL;
    int st = validate(cfg, err, errlen);
    if (st) return st;

    const int L = cfg->n_layers, N = cfg->max_ngram_size, nh = cfg->n_head_per_ngram;
    const int H = (N - 1) * nh;
    prime_set seen = {NULL, 0};
    ngram_hash *h = calloc(1, sizeof *h);
    if (!h) goto oom;
    h->n_layers = L;
    h->max_ngram = N;
    h->n_head_per_ngram = nh;
    h->n_heads = H;
    h->head_dim = cfg->n_embed_per_ngram / nh;
    h->pad = cfg->compressed_pad_id;
    h->layer_ids = malloc((size_t)L * sizeof *h->layer_ids);
    h->mult = malloc((size_t)L * N * sizeof *h->mult);
    h->primes = malloc((size_t)L * H * sizeof *h->primes);
    h->offsets = malloc((size_t)L * H * sizeof *h->offsets);
    h->rows = malloc((size_t)L * sizeof *h->rows);
    seen.cap = 1;
    while (seen.cap < 2 * (size_t)L * H) seen.cap <<= 1;
    seen.slot = calloc(seen.cap, sizeof *seen.slot);
    if (!h->layer_ids || !h->mult || !h->primes || !h->offsets || !h->rows || !seen.slot)
        goto oom;

    /* Multipliers: M_max = floor((2^63-1)/Vc), half = max(1, M_max/2), m = 2r+1. */
    const int64_t m_max = INT64_MAX / cfg->compressed_vocab_size;
    const int64_t half = m_max / 2 > 1 ? m_max / 2 : 1;
    for (int li = 0; li < L; li++) {
        h->layer_ids[li] = cfg->layer_ids[li];
        uint64_t s = (uint64_t)cfg->seed + 10007u * (uint64_t)cfg->layer_ids[li];
        int64_t *m = h->mult + (size_t)li * N;
        ngram_hash_numpy_integers(s, 0, half, (size_t)N, m);
        for (int k = 0; k < N; k++) m[k] = 2 * m[k] + 1;
    }

    /* Primes: smallest unseen prime above the start, start moves to it. */
    for (int li = 0; li < L; li++) {
        int64_t *p = h->primes + (size_t)li * H;
        int64_t *off = h->offsets + (size_t)li * H;
        int64_t sum = 0;
        for (int n = 2; n <= N; n++) {
            uint64_t start = (uint64_t)cfg->engram_vocab_size[n - 2] - 1;
            for (int j = 0; j < nh; j++) {
                uint64_t c = start + 1;
                while (!ngram_hash_is_prime(c) || prime_set_has(&seen, c)) c++;
                prime_set_add(&seen, c);
                start = c;
                int hi = (n - 2) * nh + j;
                p[hi] = (int64_t)c;
                off[hi] = sum;
                if (__builtin_add_overflow(sum, (int64_t)c, &sum)) {
                    st = err_set(err, errlen, NGRAM_HASH_EOVERFLOW,
                              "engram_vocab_size: table rows of layer %lld overflow int64",
                              (long long)cfg->layer_ids[li]);
                    goto fail_out;
                }
            }
        }
        h->rows[li] = sum;
    }
    free(seen.slot);
    *out = h;
    return NGRAM_HASH_OK;

oom:
    st = err_set(err, errlen, NGRAM_HASH_ENOMEM, "out of memory");
fail_out:
    free(seen.slot);
    ngram_hash_destroy(h);
    return st;
}

void ngram_hash_destroy(ngram_hash *h) {
    if (!h) return;
    free(h->layer_ids);
    free(h->mult);
    free(h->primes);
    free(h->offsets);
    free(h->rows);
    free(h);
}

int ngram_hash_n_layers(const ngram_hash *h) { return h->n_layers; }
int ngram_hash_max_ngram_size(const ngram_hash *h) { return h->max_ngram; }
int ngram_hash_n_heads(const ngram_hash *h) { return h->n_heads; }
int64_t ngram_hash_head_dim(const ngram_hash *h) { return h->head_dim; }
int64_t ngram_hash_embed_dim(const ngram_hash *h) { return h->head_dim * h->n_heads; }
int64_t ngram_hash_layer_id(const ngram_hash *h, int li) { return h->layer_ids[li]; }
const int64_t *ngram_hash_multipliers(const ngram_hash *h, int li) {
    return h->mult + (size_t)li * h->max_ngram;
}
const int64_t *ngram_hash_primes(const ngram_hash *h, int li) {
    return h->primes + (size_t)li * h->n_heads;
}
const int64_t *ngram_hash_offsets(const ngram_hash *h, int li) {
    return h->offsets + (size_t)li * h->n_heads;
}
int64_t ngram_hash_table_rows(const ngram_hash *h, int li) { return h->rows[li]; }

/* ---- Hashing ---- */

void ngram_hash_history_init(const ngram_hash *h, ngram_hash_history *hist) {
    for (int k = 0; k < NGRAM_HASH_MAX_NGRAM - 1; k++) hist->ids[k] = h->pad;
}

void ngram_hash_layer_rows(const ngram_hash *h, int li, const ngram_hash_history *hist,
                           const int64_t *cids, size_t n, int64_t *rows) {
    const int N = h->max_ngram, nh = h->n_head_per_ngram, H = h->n_heads;
    const int64_t *m = ngram_hash_multipliers(h, li);
    const int64_t *p = ngram_hash_primes(h, li);
    const int64_t *off = ngram_hash_offsets(h, li);
    for (size_t t = 0; t < n; t++) {
        int64_t *r = rows + t * (size_t)H;
        /* NumPy int64 semantics: products wrap, % is a floor modulo. */
        int64_t mix = (int64_t)((uint64_t)cids[t] * (uint64_t)m[0]);
        for (int order = 2; order <= N; order++) {
            size_t k = (size_t)order - 1;
            int64_t tok = k <= t ? cids[t - k] : hist->ids[k - t - 1];
            mix ^= (int64_t)((uint64_t)tok * (uint64_t)m[k]);
            for (int j = 0; j < nh; j++) {
                int hi = (order - 2) * nh + j;
                int64_t v = mix % p[hi];
                if (v < 0) v += p[hi];
                r[hi] = off[hi] + v;
            }
        }
    }
}

void ngram_hash_history_push(const ngram_hash *h, ngram_hash_history *hist,
                             const int64_t *cids, size_t n) {
    const size_t keep = (size_t)h->max_ngram - 1;
    if (n >= keep) {
        for (size_t k = 0; k < keep; k++) hist->ids[k] = cids[n - 1 - k];
        return;
    }
    /* shift the old ids back by n, then put the new ones in front */
    for (size_t k = keep; k-- > n;) hist->ids[k] = hist->ids[k - n];
    for (size_t k = 0; k < n; k++) hist->ids[k] = cids[n - 1 - k];
}

void ngram_hash_rows(const ngram_hash *h, ngram_hash_history *hist, const int64_t *cids,
                     size_t n, int64_t *rows) {
    for (int li = 0; li < h->n_layers; li++)
        ngram_hash_layer_rows(h, li, hist, cids, n, rows + (size_t)li * n * h->n_heads);
    ngram_hash_history_push(h, hist, cids, n);
}
