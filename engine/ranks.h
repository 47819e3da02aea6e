/* The engine's ranks (issue 18): the model split over W = max(T, E) ranks
 * by tensor parallelism of size T and expert parallelism of size E (the
 * smaller dividing the larger), in one process, one thread per rank. Rank k
 * has its own backend (the CPU's, or CUDA device k), model slice
 * (model_tp_slice), forward context and KV cache, and the sequences' states
 * on it. Rank 0 is the engine's own: it runs on the engine thread, its
 * logits are the ones sampled, its KV cache is the one the scheduler sees.
 * Ranks 1..W-1 are threads kept alive and woken for each step.
 *
 * The groups: the tensor-parallel groups are runs of T consecutive ranks
 * (rank k is rank k % T of group k / T); the expert-parallel groups take
 * every (W / E)-th rank (rank k is rank k / (W / E) of group k % (W / E)),
 * so with E = T = W the experts are split over the tensor-parallel group
 * itself (DeepSeek-V4-Flash's plan: 8 ranks, attention by output group,
 * 32 experts a rank), and E = W > T or T = W > E gives the second axis of
 * tests/unit/test_tensor_parallel.c.
 *
 * KV blocks are allocated once, by the scheduler on rank 0, and mirrored:
 * every call that changes a sequence's state (reserve, reset, a prefix-cache
 * hit) goes through this module, which applies it to rank 0 at once and logs
 * it; each other rank replays the log in order at the start of the next
 * step, before the forward pass. Every rank's cache therefore goes through
 * the same calls in the same order and is the same replica (the same
 * blocks, the same prefix registry, its own memory), and every rank runs
 * the same forward_batch over the same block tables. With one rank nothing
 * is logged and no thread exists: the engine runs as it always did.
 * Internal to engine/. */
#ifndef ENGINE_RANKS_H
#define ENGINE_RANKS_H

#include "engine/backend/backend.h"
#include "engine/forward.h"
#include "engine/kv_cache.h"
#include "engine/model/model.h"

typedef struct engine_ranks engine_ranks;

typedef struct {
    int tp, ep;              /* tensor- and expert-parallel sizes, >= 1 */
    backend_params bp;       /* each rank's backend; rank k's cuda_device is k */
    int max_tokens, max_seqs; /* each rank's forward context (forward_ctx_create) */
    bool engram_store;       /* the Engram tables are to be read through a store (a table directory) */
} ranks_params;

/* Each rank's CPU threads (backend_params.cpu_threads) when `threads` (0:
 * OpenMP's count, all cores) are shared by the ranks of sizes tp and ep:
 * threads itself for one rank, else an equal share, at least 1. */
int ranks_cpu_threads(int threads, int tp, int ep);

/* Whether m can run as p->tp x p->ep ranks: sizes of at least 1, the smaller
 * dividing the larger, a split the model allows (model_tp_check, experts
 * enough), and nothing that does not run on ranks yet (Engram tables read
 * through a store). Returns 0, or -1 with the refusal in err. */
int ranks_check(const model *m, const ranks_params *p, char *err, size_t errlen);

/* The ranks of m (borrowed; it must outlive them): ranks_check, then each
 * rank's slice, backend (rank 0 takes be0, borrowed: made with p->bp on the
 * calling thread; the others make theirs on their own threads, of be0's
 * kind), forward context and groups (par_rank_join: NCCL where the backend
 * has it). Returns 0 and *out, or -1 with a message in err. */
int ranks_create(model *m, backend *be0, const ranks_params *p, engine_ranks **out, char *err, size_t errlen);
/* Every rank's states, KV cache, context and groups, then the threads. On
 * the thread that made them. Accepts NULL. */
void ranks_destroy(engine_ranks *rk);

int ranks_count(const engine_ranks *rk);
forward_ctx *ranks_ctx(const engine_ranks *rk); /* rank 0's */
const model *ranks_model(const engine_ranks *rk); /* rank 0's: its slice, or the whole model */
/* One line for the log: ranks, sizes, groups, where they run and how they meet. */
void ranks_describe(const engine_ranks *rk, char *buf, size_t n);

/* A KV cache of n_tokens positions in blocks of block_size on every rank
 * (prefix caching with max_idle >= 0, as forward_kv_cache_create_cached;
 * off with max_idle < 0), for states of up to max_seq_tokens positions.
 * Returns KV_CACHE_OK and *kv0 (rank 0's, owned by rk), or an error with a
 * message in err. */
int ranks_kv_create(engine_ranks *rk, int n_tokens, int block_size, int max_idle, int max_seq_tokens, kv_cache **kv0,
                    char *err, size_t errlen);

/* ---- the sequences' states, by slot (0 .. max_seqs - 1) ---- */

/* A state for a new or resumed sequence (one of the pool, reset, or a new
 * one): returns its slot and *st0 (rank 0's state), or -1 out of memory. */
int ranks_state_take(engine_ranks *rk, forward_state **st0);
/* Gives a slot back: its state reset (its KV blocks freed) on every rank. */
void ranks_state_release(engine_ranks *rk, int slot);
/* forward_state_reserve on every rank: returns rank 0's status. */
int ranks_state_reserve(engine_ranks *rk, int slot, int n);
/* forward_state_begin on every rank (ids copied; salt borrowed by rank 0's
 * state until the slot is released, copied for the others): returns rank
 * 0's positions taken. */
int ranks_state_begin(engine_ranks *rk, int slot, const char *salt, const int32_t *ids, int n_ids, int max_blocks);

/* One step on every rank: items are rank 0's (their outputs are rank 0's),
 * slots[j] item j's slot; every other rank replays the log, then runs the
 * same items on its own states, without outputs. Returns FORWARD_OK or the
 * first failing rank's status (FORWARD_ERR_NOMEM for good once a rank could
 * not replay the log: its states no longer mirror rank 0's). */
int ranks_step(engine_ranks *rk, const forward_item *items, const int *slots, int n_items);

/* forward_run over the ranks: one sequence (slot's) alone, ids[0..n) in
 * steps of the contexts' max_tokens, logits and gates as forward_run's
 * (rank 0's). One rank: forward_run itself (with its read-ahead). */
int ranks_forward_run(engine_ranks *rk, int slot, const int32_t *ids, int n, float *logits, float *gates);

#endif
