/* N-gram hashing of Engram (../shared/ENGRAM.md sections 3-5): NumPy-exact
 * multipliers (SeedSequence + PCG64 + bounded integers), head table sizes by
 * prime search, per-position row ids with a per-sequence history, and the
 * compressed tokenizer. Pure functions: no I/O, no global state. */
#ifndef ENGRAM_NGRAM_HASH_H
#define ENGRAM_NGRAM_HASH_H

#include <stddef.h>
#include <stdint.h>

/* Status codes (0 ok, negative errors; append only). */
typedef enum {
    NGRAM_HASH_OK = 0,
    NGRAM_HASH_EINVAL = -1,   /* a configuration or argument value is out of range */
    NGRAM_HASH_EOVERFLOW = -2, /* a derived value would overflow int64 */
    NGRAM_HASH_ENOMEM = -3,   /* allocation failed */
    NGRAM_HASH_ERANGE = -4,   /* a token id is outside the lookup table */
} ngram_hash_status;

/* Returns a static description of a status ("ok", "invalid argument", ...). */
const char *ngram_hash_status_str(int status);

/* Limits enforced by ngram_hash_create (absurd values are refused, not asserted). */
#define NGRAM_HASH_MAX_NGRAM 16      /* largest max_ngram_size */
#define NGRAM_HASH_MAX_HEADS 1024    /* largest n_head_per_ngram */
#define NGRAM_HASH_MAX_LAYERS 1024   /* largest number of Engram layers */
#define NGRAM_HASH_MAX_TOTAL_HEADS 65536 /* layers * (max_ngram_size-1) * heads */

/* ---- NumPy random: default_rng(seed).integers(low, high, size, dtype=int64) ---- */

/* PCG64 as NumPy seeds and runs it (XSL-RR output, one buffered 32-bit half). */
typedef struct {
    unsigned __int128 state;
    unsigned __int128 inc;
    int has_uint32;   /* 1 when uinteger holds the upper half of the last 64-bit draw */
    uint32_t uinteger;
} ngram_hash_pcg64;

/* Seeds *rng exactly like numpy.random.PCG64(seed) for a non-negative integer
 * seed < 2^64 (SeedSequence with pool size 4, generate_state(4, uint64)). */
void ngram_hash_pcg64_seed(ngram_hash_pcg64 *rng, uint64_t seed);
/* Next 64-bit output (PCG64.random_raw()). */
uint64_t ngram_hash_pcg64_next64(ngram_hash_pcg64 *rng);
/* Next 32-bit output, NumPy style: the low half of a 64-bit draw, the high half
 * buffered for the next call. */
uint32_t ngram_hash_pcg64_next32(ngram_hash_pcg64 *rng);

/* Writes out[0..n-1] = numpy.random.default_rng(seed).integers(low, high,
 * size=n, dtype=np.int64) (endpoint False). Returns NGRAM_HASH_EINVAL when
 * low >= high (NumPy raises there), else NGRAM_HASH_OK. */
int ngram_hash_numpy_integers(uint64_t seed, int64_t low, int64_t high, size_t n, int64_t *out);

/* Deterministic Miller-Rabin: 1 when n is prime, else 0. Exact for all 64-bit n. */
int ngram_hash_is_prime(uint64_t n);

/* ---- Configuration and derived tables ---- */

/* Engram configuration, reference field names (ENGRAM.md section 2). The caller
 * owns the arrays; ngram_hash_create copies what it needs. */
typedef struct {
    const int64_t *engram_vocab_size; /* (max_ngram_size-1) prime-search starts, order 2.. */
    int max_ngram_size;               /* N: orders 2..N */
    int64_t n_embed_per_ngram;        /* embedding width per order */
    int n_head_per_ngram;             /* hash heads per order */
    const int64_t *layer_ids;         /* (n_layers) 0-based backbone layers, no duplicates */
    int n_layers;
    int64_t pad_id;                   /* raw token id of the history before the start */
    int64_t seed;                     /* multiplier seed base, >= 0 */
    int kernel_size;                  /* short-conv kernel (validated, not used here) */
    int hc_mult;                      /* hyper-connection streams (validated, not used here) */
    int64_t compressed_vocab_size;    /* Vc, from the compressed tokenizer (> 0) */
    int64_t compressed_pad_id;        /* lookup[pad_id] (ngram_hash_compress_ids) */
} ngram_hash_config;

/* The demo layout of ENGRAM.md section 2; Vc and the compressed pad are left
 * 0 and must be filled in from the compressed tokenizer. Arrays point to static
 * storage. */
ngram_hash_config ngram_hash_default_config(void);

/* Derived hashing tables, opaque. */
typedef struct ngram_hash ngram_hash;

/* Validates cfg and derives multipliers, head primes and offsets. On success
 * stores a new object in *out and returns NGRAM_HASH_OK; on failure returns a
 * negative status, leaves *out NULL and writes a message naming the offending
 * field to err (errlen bytes; err may be NULL). Never asserts on cfg values. */
int ngram_hash_create(const ngram_hash_config *cfg, ngram_hash **out, char *err, size_t errlen);
/* Frees h; NULL is accepted. */
void ngram_hash_destroy(ngram_hash *h);

int ngram_hash_n_layers(const ngram_hash *h);
int ngram_hash_max_ngram_size(const ngram_hash *h);
/* H = (max_ngram_size-1) * n_head_per_ngram heads per layer. */
int ngram_hash_n_heads(const ngram_hash *h);
/* D = n_embed_per_ngram / n_head_per_ngram, the width of one row. */
int64_t ngram_hash_head_dim(const ngram_hash *h);
/* E = H * D, the retrieved width per position and layer. */
int64_t ngram_hash_embed_dim(const ngram_hash *h);
/* Backbone layer id of Engram layer index li (0 <= li < n_layers). */
int64_t ngram_hash_layer_id(const ngram_hash *h, int li);
/* Multipliers m[0..max_ngram_size-1] of layer index li (borrowed). */
const int64_t *ngram_hash_multipliers(const ngram_hash *h, int li);
/* Head table sizes (primes) of layer index li, H of them, order-major (borrowed). */
const int64_t *ngram_hash_primes(const ngram_hash *h, int li);
/* Row offsets of layer li's heads in its table, H of them (borrowed). */
const int64_t *ngram_hash_offsets(const ngram_hash *h, int li);
/* Rows of layer li's table: the sum of its head primes. */
int64_t ngram_hash_table_rows(const ngram_hash *h, int li);

/* ---- Hashing with a per-sequence history ---- */

/* The last max_ngram_size-1 compressed ids of a sequence; ids[0] is the most
 * recent. A fresh sequence starts with all entries = compressed pad. */
typedef struct {
    int64_t ids[NGRAM_HASH_MAX_NGRAM - 1];
} ngram_hash_history;

/* Sets *hist to the start-of-sequence history (all compressed pad). */
void ngram_hash_history_init(const ngram_hash *h, ngram_hash_history *hist);

/* Row ids of Engram layer index li for n new positions with compressed ids
 * cids[0..n-1] following the history *hist (not modified):
 * rows (n, H): rows[t*H + h] = offset[h] + (mix mod prime[h]) in [0, table_rows).
 * Exact with the reference for any int64 ids (wrapping products, floor mod). */
void ngram_hash_layer_rows(const ngram_hash *h, int li, const ngram_hash_history *hist,
                           const int64_t *cids, size_t n, int64_t *rows);

/* Appends n compressed ids to *hist (keeps the last max_ngram_size-1). */
void ngram_hash_history_push(const ngram_hash *h, ngram_hash_history *hist,
                             const int64_t *cids, size_t n);

/* All layers at once, then advances the history: rows (n_layers, n, H), i.e.
 * rows[(li*n + t)*H + h]. Chunked calls give exactly the rows of one call. */
void ngram_hash_rows(const ngram_hash *h, ngram_hash_history *hist, const int64_t *cids,
                     size_t n, int64_t *rows);

/* ---- Compressed tokenizer (section 3) ---- */

/* Normalizes UTF-8 text exactly like the reference's `tokenizers` normalizer
 * sequence: NFKC, NFD, drop combining marks (Mn, Mc and Me, as its StripAccents
 * does), per-character full lowercase (no final-sigma rule), collapse runs of
 * [ \t\r\n] into one space, then keep a lone " " or strip White_Space, and
 * turn U+E000 (the reference's sentinel) into " ". Text may contain NUL. On
 * success stores a new NUL-terminated heap string (caller frees) in *out and
 * its length in *out_len; returns NGRAM_HASH_EINVAL for invalid UTF-8 (*out
 * NULL), NGRAM_HASH_ENOMEM. */
int ngram_hash_normalize(const char *text, size_t len, char **out, size_t *out_len);

/* One vocabulary entry: the decoded text of [id] and the raw vocab string
 * (both borrowed, not NUL-terminated; raw may be NULL when len is 0). */
typedef struct {
    const char *text;
    size_t text_len;
    const char *raw;
    size_t raw_len;
} ngram_hash_token_text;

/* Builds the compressed lookup: lookup[i] (n entries, caller-allocated) =
 * index of token i's key in order of first appearance; *vc = number of keys.
 * Key: raw when text contains U+FFFD, else normalize(text), or text when that
 * is empty. Returns NGRAM_HASH_OK, NGRAM_HASH_EINVAL (invalid UTF-8 text) or
 * NGRAM_HASH_ENOMEM. The reference's lookup is this table when the texts are
 * tokenizer.decode([id], skip_special_tokens=False) without space clean-up
 * and raw is the vocab string of id, for every id including added tokens. */
int ngram_hash_compress_build(const ngram_hash_token_text *tokens, size_t n, int64_t *lookup,
                              int64_t *vc);

/* Compresses raw ids: out[i] = ids[i] < 0 ? ids[i] : lookup[ids[i]]. Returns
 * NGRAM_HASH_ERANGE (out partly written) when an id is >= vocab. */
int ngram_hash_compress_ids(const int64_t *lookup, int64_t vocab, const int64_t *ids, size_t n,
                            int64_t *out);

#endif
