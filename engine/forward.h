/* The forward pass of one sequence, backend-neutral and readable top to bottom
 * (llama2.c style). A forward_state holds the sequence's position, its block
 * table in a paged KV cache (its own, or one shared by many states) and its
 * Engram history, so a prompt can go in as one chunk, several chunks, or one
 * token at a time with the same result. */
#ifndef ENGINE_FORWARD_H
#define ENGINE_FORWARD_H

#include "backend.h"
#include "kv_cache.h"
#include "model.h"

typedef enum {
    FORWARD_OK = 0,
    FORWARD_ERR_FULL = -1,  /* the tokens do not fit in the state's max_tokens */
    FORWARD_ERR_TOKEN = -2, /* a token id is outside [0, vocab_size) */
    FORWARD_ERR_NOMEM = -3,
    FORWARD_ERR_IO = -4, /* an external Engram table could not be read; reset the state before reuse */
    FORWARD_ERR_KV_FULL = -5, /* the shared KV cache has too few free blocks; nothing was appended */
} forward_status;

const char *forward_status_str(int status);

typedef struct forward_state forward_state;

/* Creates a state for up to max_tokens positions (at most the model's
 * max_position_embeddings), running at most max_chunk tokens per pass.
 * Returns FORWARD_OK and *out, or FORWARD_ERR_NOMEM. */
int forward_state_create(const model *m, int max_tokens, int max_chunk, forward_state **out);

/* Like forward_state_create, but the state's KV rows live in blocks of the
 * shared cache `kv` (borrowed; it must outlive the state), taken as tokens
 * arrive and returned by forward_state_reset and forward_state_destroy. */
int forward_state_create_shared(const model *m, kv_cache *kv, int max_tokens, int max_chunk,
                                forward_state **out);
void forward_state_destroy(forward_state *s); /* accepts NULL; returns its blocks */

/* A KV cache sized for m: n_tokens positions in blocks of block_size (0: 16).
 * Returns KV_CACHE_OK and *out, or KV_CACHE_ERR_NOMEM. */
int forward_kv_cache_create(const model *m, int n_tokens, int block_size, kv_cache **out);

int forward_state_pos(const forward_state *s); /* tokens in the cache */
double forward_state_engram_seconds(const forward_state *s); /* wall time spent in Engram so far */
void forward_state_reset(forward_state *s);

/* Takes the KV blocks for n more tokens now (forward_run would take them
 * itself). Returns FORWARD_OK, FORWARD_ERR_KV_FULL (nothing taken),
 * FORWARD_ERR_FULL (past max_tokens) or FORWARD_ERR_NOMEM. */
int forward_state_reserve(forward_state *s, int n); /* position 0, empty history; returns its KV blocks */

/* Appends ids[0..n) to the sequence and runs them through the model in chunks
 * of max_chunk. If logits is not NULL it receives the logits of the last
 * token, (vocab_size) floats. If gates is not NULL and the model has Engram,
 * it receives (n, n_engram_layers) gate values (which tokens leaned on
 * memory). On error nothing is appended. With a shared cache, returns
 * FORWARD_ERR_KV_FULL when the blocks for the new tokens cannot be had. */
int forward_run(const model *m, const backend_ops *ops, forward_state *s, const int32_t *ids, int n,
                float *logits, float *gates);

#endif
