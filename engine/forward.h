/* The forward pass, backend-neutral and readable top to bottom (llama2.c
 * style), over a whole scheduler step: the new tokens of several sequences
 * run as one batch, so every weight matrix is read once per step.
 *
 * A forward_ctx holds what all sequences share: the model as the backend
 * sees it and the step's scratch. A forward_state is one sequence: its
 * position, its block table in a paged KV cache (its own, or one shared by
 * many states), its Engram hash history and conv history. The CPU backend's
 * ops compute each token's row the same way whatever else is in the step,
 * so a prompt gives bit-identical logits in one chunk, in several, token by
 * token, or beside other sequences. */
#ifndef ENGINE_FORWARD_H
#define ENGINE_FORWARD_H

#include "engine/backend/backend.h"
#include "engine/engram_fetch.h"
#include "engine/parallel.h"
#include "engine/kv_cache.h"
#include "engine/model/model.h"

typedef enum {
    FORWARD_OK = 0,
    FORWARD_ERR_FULL = -1,  /* the tokens do not fit in the state's max_tokens */
    FORWARD_ERR_TOKEN = -2, /* a token id is outside [0, vocab_size) */
    FORWARD_ERR_NOMEM = -3,
    FORWARD_ERR_IO = -4, /* an external Engram table could not be read; reset the states before reuse */
    FORWARD_ERR_KV_FULL = -5, /* the shared KV cache has too few free blocks; nothing was appended */
    FORWARD_ERR_BATCH = -6,   /* a malformed step: too many tokens or sequences, a state twice,
                               * states of different KV caches or contexts, or a tensor-parallel
                               * slice's context outside its group */
    FORWARD_ERR_UNSUPPORTED = -7, /* the model needs an op this backend does not have */
} forward_status;

const char *forward_status_str(int status);

typedef struct forward_ctx forward_ctx;
typedef struct forward_state forward_state;

/* A context running up to max_tokens tokens of up to max_seqs sequences per
 * step on backend be. m and be (borrowed) must outlive it. Returns FORWARD_OK and *out, or
 * FORWARD_ERR_NOMEM or FORWARD_ERR_UNSUPPORTED (the model's layers need ops
 * be lacks, e.g. mixture of experts on CUDA) with a message in err. */
int forward_ctx_create(model *m, backend *be, int max_tokens, int max_seqs, forward_ctx **out,
                       char *err, size_t errlen);
void forward_ctx_destroy(forward_ctx *fc); /* accepts NULL; its states must be destroyed first */
int forward_ctx_max_tokens(const forward_ctx *fc);
/* Expert parallelism (engine/expert_parallel.h): from now on the sparse
 * layers compute only rank r's experts and meet the group's other ranks (the
 * same model and steps, each in its own thread with its own context) in an
 * all-reduce. r is borrowed. Returns 0, or -1 with a message (no experts, a
 * backend without moe_pairs, a group whose collectives cannot reach the
 * backend's memory (par_rank_usable), more ranks than experts, out of memory). */
int forward_ctx_set_expert_rank(forward_ctx *fc, const par_rank *r, char *err, size_t errlen);
/* Tensor parallelism (engine/tensor_parallel.h): a context made on rank r's
 * model slice (model_tp_slice) runs its share of every step and meets the
 * group's other ranks (the same steps, each in its own thread with its own
 * context and KV cache, which holds only the rank's KV heads) in the
 * collectives of o_proj and down (DeepSeek-V4: of wo_a's outputs and wo_b,
 * its cache holding the whole single K=V head on every rank). Call it before the first step; without
 * it a slice's context runs no step (FORWARD_ERR_BATCH). r is borrowed; with expert parallelism
 * too, its group may be the same as the experts' or another. Returns 0, or
 * -1 with a message (r is not the slice's rank, a group whose collectives
 * cannot reach the backend's memory (par_rank_usable), out of memory). */
int forward_ctx_set_tensor_rank(forward_ctx *fc, const par_rank *r, char *err, size_t errlen);
backend *forward_ctx_backend(const forward_ctx *fc);
/* Wall time spent in Engram so far (hashing, gathers, modules; on an
 * asynchronous backend the modules' launch time only). */
double forward_ctx_engram_seconds(const forward_ctx *fc);
/* The row fetcher's counters of Engram layer li (0-based among the Engram
 * layers) when its table is a host store; -1 (zeros) otherwise. Thread-safe. */
int forward_ctx_fetch_stats(forward_ctx *fc, int li, engram_fetch_stats *out);
/* Rows that a layer's hot-row cache and its store's DRAM cache both hold,
 * summed over the layers (engram_fetch_tier_overlap: 0 with exclusive
 * tiers). Between steps, on the thread that runs them. */
size_t forward_ctx_engram_tier_overlap(forward_ctx *fc);

/* Warm restarts of the host Engram stores (engram/store.h, hot-row file),
 * between steps, on the thread that runs them: once a store has read its
 * hot rows back, its layer's hot-row cache takes the rows of the file's
 * tier above (once); with save, every store whose warm start is over writes
 * its hot-row file with those of its cache and of the hot-row cache. Returns
 * FORWARD_HOT_NONE (no store keeps a hot-row file), _WARMING (some store is
 * still reading its rows back) or _READY. */
enum { FORWARD_HOT_NONE = 0, FORWARD_HOT_WARMING = 1, FORWARD_HOT_READY = 2 };
int forward_ctx_engram_hot(forward_ctx *fc, bool save);

/* A KV cache in fc's backend memory: n_tokens positions in blocks of
 * block_size (0: 16); fc's block tables are widened for blocks under 16. Returns KV_CACHE_OK and *out, or KV_CACHE_ERR_NOMEM. */
int forward_kv_cache_create(forward_ctx *fc, int n_tokens, int block_size, kv_cache **out);

/* Prefix caching (kv_cache.h): forward_kv_cache_create with it on, at most
 * max_idle idle cached blocks (0: no bound but the pool); with Engram each
 * block also keeps, beside its rows, the conv histories at its end
 * (forward_ctx_prefix_aux_bytes). Returns as forward_kv_cache_create. */
int forward_kv_cache_create_cached(forward_ctx *fc, int n_tokens, int block_size, int max_idle, kv_cache **out);
/* Whether a sequence's whole decode state is its KV blocks and what
 * forward_state_begin restores (the Engram histories): only then may states
 * share cached blocks. A model with other per-sequence state must say false
 * here until that state is kept with the blocks too. */
bool forward_ctx_prefix_cacheable(const forward_ctx *fc);
/* Backend bytes each cached block keeps beside its KV rows (0 without Engram). */
size_t forward_ctx_prefix_aux_bytes(const forward_ctx *fc);

/* A sequence of up to max_tokens positions (at most the model's
 * max_position_embeddings). Its KV rows live in blocks of `kv` (borrowed; it
 * must outlive the state), taken as tokens arrive and returned by
 * forward_state_reset and forward_state_destroy; kv NULL: the state makes a
 * cache of its own for max_tokens. Returns FORWARD_OK and *out, or
 * FORWARD_ERR_NOMEM. */
int forward_state_create(forward_ctx *fc, kv_cache *kv, int max_tokens, forward_state **out);
void forward_state_destroy(forward_state *s); /* accepts NULL; returns its blocks */

int forward_state_pos(const forward_state *s); /* tokens in the cache */
void forward_state_reset(forward_state *s); /* position 0, empty histories; returns its KV blocks */

/* Starts a sequence on a state at position 0 whose cache does prefix
 * caching (else: nothing, 0): its full blocks will be registered as they are
 * computed, under salt (borrowed until the state is reset; NULL: none); and
 * the cached blocks holding the longest prefix of ids[0..n_ids), at most
 * max_blocks, are taken: the state resumes after them (position, Engram
 * hash and conv histories as if it had computed them). Returns the
 * positions taken (a multiple of the block size). */
int forward_state_begin(forward_state *s, const char *salt, const int32_t *ids, int n_ids, int max_blocks);

/* Takes the KV blocks for n more tokens now (forward_batch would take them
 * itself). Returns FORWARD_OK, FORWARD_ERR_KV_FULL (nothing taken),
 * FORWARD_ERR_FULL (past max_tokens) or FORWARD_ERR_NOMEM. */
int forward_state_reserve(forward_state *s, int n);

/* One sequence's part of a step. */
typedef struct {
    forward_state *st;
    const int32_t *ids; /* (n) tokens appended to the sequence, n >= 1 */
    int n;
    float *logits;      /* host (vocab_size): the last token's logits, or NULL */
    int32_t *argmax;    /* host: the argmax of those logits (lowest id on ties), or NULL */
    int32_t *logits_row; /* host: set to the row of forward_ctx_logits that holds those logits,
                          * left in backend memory until the next step, or NULL */
    float *gates;       /* host (n, n_engram_layers): each token's Engram gate per layer
                         * (mean over hc_mult streams), or NULL */
} forward_item;

/* The last step's logits in backend memory: (rows, vocab_size), the rows
 * that forward_item.logits_row names; valid until the next step. */
float *forward_ctx_logits(forward_ctx *fc);

/* Host seconds forward_batch has spent on fc's steps before their first op
 * (checks, the step's layout and hashing, uploads), summed: the part of a
 * step's host time between two passes that the pass itself takes. */
double forward_ctx_plan_seconds(const forward_ctx *fc);

/* Runs one step: items' tokens together, at most forward_ctx_max_tokens in
 * all, each state at most once, all states of fc sharing one KV cache (else
 * FORWARD_ERR_BATCH). First every token is hashed (the step's
 * Engram rows are then known: each store-backed layer's fetcher starts
 * gathering them at once, on its own thread), then the pass runs. On an error before the pass nothing is appended; after
 * FORWARD_ERR_IO the states must be reset. */
int forward_batch(forward_ctx *fc, const forward_item *items, int n_items);

/* Hands the Engram rows of upcoming positions of a sequence to the prefetch
 * threads of the layers whose store reads NVMe behind a row cache, ahead of
 * the steps that will run them (the rest of a prompt in prefill, queued
 * prompts), so their reads overlap the steps before. ids[0..lead) are the
 * tokens just before those positions (all of them when fewer than
 * FORWARD_AHEAD_LEAD come before; none at the sequence's start),
 * ids[lead..lead+n_ahead) the positions' tokens. Rows the layer's hot-row
 * cache holds are left out (engram_fetch_drop_cached). Only the row caches change,
 * never a result. Returns n_ahead; 0 when no layer has such a store or the
 * arguments are out of range. Uses the step's host scratch: not while
 * forward_batch runs on another thread. */
#define FORWARD_AHEAD_LEAD 15 /* the hash history: NGRAM_HASH_MAX_NGRAM - 1 tokens */
int forward_prefetch_ahead(forward_ctx *fc, const int32_t *ids, int lead, int n_ahead);
/* Whether forward_prefetch_ahead has any store to hand rows to. */
bool forward_ctx_prefetches_ahead(const forward_ctx *fc);

/* One sequence alone: ids[0..n) in steps of forward_ctx_max_tokens, logits
 * (and gates) as in forward_item; each step's rows are read ahead
 * (forward_prefetch_ahead) while the step before it runs. */
int forward_run(forward_ctx *fc, forward_state *s, const int32_t *ids, int n, float *logits, float *gates);

#endif
