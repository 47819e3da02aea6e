/* The DeepSeek-V4 forward pass (DEEPSEEK_V4.md section 2) over one scheduler
 * step, and each sequence's decode state (section 3): forward.c hands a
 * DeepSeek-V4 model's steps here. Internal to engine/. */
#ifndef ENGINE_FORWARD_DSV4_H
#define ENGINE_FORWARD_DSV4_H

#include "engine/backend/backend.h"
#include "engine/engram_step.h"
#include "engine/expert_parallel.h"
#include "engine/kv_cache.h"
#include "engine/model/model.h"

typedef struct dsv4_ctx dsv4_ctx;
typedef struct dsv4_seq dsv4_seq;

/* Step scratch for up to max_tokens tokens of max_seqs sequences of model bm
 * (the backend's view; borrowed, as is be). Returns 0, or -1 when memory runs out. */
int dsv4_ctx_create(const model *bm, backend *be, int max_tokens, int max_seqs, dsv4_ctx **out);
void dsv4_ctx_destroy(dsv4_ctx *dc); /* accepts NULL */
/* Expert parallelism: the sparse layers as rank r of its group, pairs the (T, top_k, d) scratch of
 * ep_moe_experts (both borrowed). */
void dsv4_ctx_set_expert_rank(dsv4_ctx *dc, const par_rank *r, float *pairs);

/* Tensor parallelism: the attention as rank r (borrowed) of the group its model slice was cut for
 * (model_tp_slice: its heads, its share of wo_a and wo_b's rows). The context was made on that
 * slice, so its scratch already holds the gathers. */
void dsv4_ctx_set_tensor_rank(dsv4_ctx *dc, const par_rank *r);

/* Elements (f32) of one KV cache block of layer l for blocks of block_size
 * positions: its window rows, compressed entries and index keys (the layout
 * of backend.h's dsv4_kv). What forward.c makes the cache with. */
size_t dsv4_block_floats(const model_config *c, int l, int block_size);

/* One sequence's state apart from its KV blocks, in backend memory: the
 * compressors' projections of its last 2m positions per compressed layer,
 * the same size whatever its length. It needs no reset: every row is found
 * by position and written before it is read, so a sequence restarting at
 * position 0 simply overwrites it. Returns 0, or -1 when memory runs out. */
int dsv4_seq_create(dsv4_ctx *dc, dsv4_seq **out);
void dsv4_seq_destroy(dsv4_ctx *dc, dsv4_seq *s); /* accepts NULL */
size_t dsv4_seq_bytes(const dsv4_seq *s);          /* backend memory it holds */

/* Before a step's ops (and before a recorded step is looked up): the table of the step's sequences'
 * states (seqs, n_seqs of them in batch order) goes up, and b->seq_state points at it. */
void dsv4_step_upload(dsv4_ctx *dc, dsv4_seq *const *seqs, batch_desc *b);

/* Runs the step described by b (ids (T) in backend memory, its sequences'
 * states uploaded by dsv4_step_upload; kv the cache whose blocks b's tables
 * name, made with dsv4_block_floats), then the head at rows last (nl) into
 * logits (nl, vocab). With DeepSeek-V4.1's Engram, eng (the step's Engram
 * work, hashed when the step was planned) gives each Engram layer its rows,
 * and the items (n_items, batch order) that ask for gates get them. sg: the
 * step's recorded segments (forward.c), cut at each Engram layer; the ops of
 * a segment the backend replayed are not issued. Returns FORWARD_OK, or
 * FORWARD_ERR_IO when a host store's rows could not be read. */
int dsv4_forward(dsv4_ctx *dc, engram_step *eng, engram_step_seg *sg, const batch_desc *b, kv_cache *kv,
                 const int32_t *ids, const forward_item *it, int n_items, const int32_t *last, int nl, float *logits);

#endif
