/* DeepSeek-V4.1 Engram configuration (../shared/ENGRAM.md section 7): the
 * engram_* keys of config.json (in "text_config" or at top level) parsed and
 * range-checked, turned into an ngram_hash_config, and checked against what
 * they imply: each layer's derived table rows must equal engram_num_embeddings
 * and the stated compressed vocab must equal the tokenizer's. The hash itself
 * is not stored in the checkpoint: seed 0, multiplier seeds 10007*layer_id. */
#ifndef ENGINE_ENGRAM_V41_H
#define ENGINE_ENGRAM_V41_H

#include <stddef.h>
#include <stdint.h>

#include "engram/ngram_hash.h"

/* Status codes (0 ok, negative errors; append only). */
typedef enum {
    ENGRAM_V41_OK = 0,
    ENGRAM_V41_EJSON = -1,   /* config.json is not a JSON object */
    ENGRAM_V41_ECONFIG = -2, /* a key is missing, of the wrong type or out of range */
    ENGRAM_V41_EMISMATCH = -3, /* values contradict each other or the tokenizer */
    ENGRAM_V41_ENOMEM = -4,
} engram_v41_status;

/* Returns a static description of a status. */
const char *engram_v41_status_str(int status);

#define ENGRAM_V41_MAX_LAYERS 64
#define ENGRAM_V41_MAX_HC 16

/* The engram_* keys, V4.1 names. */
typedef struct {
    int n_layers;
    int64_t layer_ids[ENGRAM_V41_MAX_LAYERS];      /* engram_layer_ids */
    int64_t num_embeddings[ENGRAM_V41_MAX_LAYERS]; /* engram_num_embeddings: rows per layer */
    int max_ngram_size;                            /* engram_max_ngram_size: orders 2..N */
    int64_t vocab_size;            /* engram_vocab_size: the prime-search start of every order */
    int n_heads;                   /* engram_n_heads: hash heads per order */
    int head_dim;                  /* engram_head_dim: values per row, a multiple of 32 */
    int64_t pad_token_id;          /* engram_pad_token_id (alias engram_pad_id) */
    int64_t compressed_vocab_size; /* engram_compressed_vocab_size: Vc as stated */
    int hc_mult;                   /* hc_mult: hyper-connection streams */
    /* engram_vocab_size repeated once per order, for ngram_hash_config */
    int64_t vocab_starts[NGRAM_HASH_MAX_NGRAM];
} engram_v41_config;

/* Parses config.json text (untrusted, len bytes, need not be NUL-terminated).
 * The engram_* keys are read from "text_config" when that object has
 * engram_layer_ids, else from the top level; hc_mult from the same object.
 * Checks types and ranges only (no prime search). Returns ENGRAM_V41_OK, or a
 * negative status with a one-line message naming the key in err (errlen bytes;
 * err may be NULL). `label` names the file in messages. */
int engram_v41_config_parse(const char *json, size_t len, const char *label, engram_v41_config *c,
                            char *err, size_t errlen);

/* The ngram_hash_config of a parsed config: engram_vocab_size repeated per
 * order, n_head_per_ngram = n_heads, n_embed_per_ngram = n_heads*head_dim,
 * seed 0, kernel_size 1 (V4.1 has no short conv). Arrays point into *c, which
 * must outlive the result. The compressed vocab and pad are the given ones. */
ngram_hash_config engram_v41_hash_config(const engram_v41_config *c, int64_t compressed_vocab_size,
                                         int64_t compressed_pad_id);

/* The compressed tokenizer, when the caller has built one (ngram_hash_compress_build). */
typedef struct {
    const int64_t *lookup; /* (n) compressed id of every raw token id; borrowed */
    int64_t n;
    int64_t vc;            /* its compressed vocab size */
} engram_v41_tokenizer;

/* Derives the hash tables of a parsed config and checks them: each layer's
 * table rows (the sum of its head primes) must equal engram_num_embeddings,
 * and, when tok is given, tok->vc must equal engram_compressed_vocab_size and
 * engram_pad_token_id must be one of its ids. Without tok the stated Vc is
 * used and the compressed pad is taken to be engram_pad_token_id itself (the
 * multipliers, primes and offsets do not depend on it; rows at the start of a
 * sequence do). Returns ENGRAM_V41_OK and a new object in *out (free with
 * ngram_hash_destroy), or a negative status, *out NULL and a one-line message
 * naming the key. */
int engram_v41_hash_create(const engram_v41_config *c, const engram_v41_tokenizer *tok,
                           const char *label, ngram_hash **out, char *err, size_t errlen);

#endif
