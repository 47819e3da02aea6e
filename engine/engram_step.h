/* The Engram work of a forward step, beside the transformer in forward.c:
 * hashing the step's tokens into table rows (once per token and step; a host
 * store's rows on its fetcher's thread), the host stores' fetchers that
 * gather those rows while earlier layers run,
 * each Engram layer's module and gates, and the lookahead that hands the
 * rows of later steps to the NVMe stores' prefetch threads. Internal to the
 * engine; forward.c owns one engram_step per forward_ctx. */
#ifndef ENGINE_ENGRAM_STEP_H
#define ENGINE_ENGRAM_STEP_H

#include <stdbool.h>
#include <stdint.h>

#include "engine/backend/backend.h"
#include "engine/engram_fetch.h"
#include "engine/forward.h"
#include "engine/model/model.h"

typedef struct engram_step engram_step;

/* One sequence's Engram state, kept in its forward_state. */
typedef struct {
    ngram_hash_history hist; /* last max_ngram_size-1 compressed ids */
    float *conv_hist;        /* backend memory: n_engram x ((K-1)*dil, G*d) normed conv inputs */
} engram_step_seq;

/* The Engram part of a forward context of up to max_tokens tokens and
 * max_seqs sequences per step, for m (host: hashing, stores) and bm (its
 * backend view: module weights); both borrowed. Returns FORWARD_OK and *out,
 * or FORWARD_ERR_NOMEM with a message in err. */
int engram_step_create(const model *m, const model *bm, backend *be, int max_tokens, int max_seqs,
                       engram_step **out, char *err, size_t errlen);
void engram_step_destroy(engram_step *es); /* accepts NULL; its sequences must be freed first */

/* A sequence's conv history (backend memory): returns 0, or -1 out of memory. */
int engram_step_seq_init(engram_step *es, engram_step_seq *q);
void engram_step_seq_reset(engram_step *es, engram_step_seq *q); /* start of sequence: pad history, zero conv */
void engram_step_seq_free(engram_step *es, engram_step_seq *q);  /* es may be NULL (then q holds nothing) */

/* Prefix caching: a block boundary that sequence `seq` of the step crosses,
 * `at` tokens into its piece (1..n): its conv histories there (those a
 * sequence resumed at that position needs) go to dst, engram_step_seq_bytes
 * of backend memory laid out as engram_step_seq.conv_hist. */
typedef struct {
    int seq, at;
    float *dst;
} engram_step_snap;

/* Bytes of one sequence's conv histories (a snapshot). */
size_t engram_step_seq_bytes(const engram_step *es);
/* The step's snapshots (snaps borrowed until the step's layers are issued),
 * taken by engram_step_layer; set before each step (n 0: none). */
void engram_step_set_snaps(engram_step *es, const engram_step_snap *snaps, int n);
/* Resumes q at a position p > 0 of a sequence: the hash history from the
 * lead = min(p, FORWARD_AHEAD_LEAD) tokens before p (ids), the conv
 * histories from a snapshot taken at p (backend memory). */
void engram_step_seq_resume(engram_step *es, engram_step_seq *q, const int32_t *ids, int lead, const float *snap);

/* Planning, on the host: sequence i of the step (i = 0, 1, ... in order),
 * n tokens ids at step offset a of T, following q's history (pushed). The
 * rows of a layer whose table is in backend memory are made here; a host
 * store's layer's are made by its fetcher (engram_step_fetch_start) from what
 * this keeps of the step, which the fetchers borrow until their finish. */
void engram_step_hash(engram_step *es, int i, engram_step_seq *q, const int32_t *ids, int n, int a, int T);
/* After every sequence is hashed: the rows (where a table is in backend
 * memory) and the sequences' conv histories go up; sets b->seq_hist. */
void engram_step_upload(engram_step *es, batch_desc *b);
/* Each host store's fetcher starts making (hashing) and gathering its
 * layer's rows of the step (T tokens), on its own thread, while the layers
 * before it are issued. Every start is finished (engram_step_rows, or on a
 * failure all of them) before the next step is planned. */
void engram_step_fetch_start(engram_step *es, int T);

/* x += engram(x) for the Engram module w at the start of its layer, over the
 * step b; each item's gates (when asked for) get this layer's column.
 * Returns FORWARD_OK, or FORWARD_ERR_IO when a host store's rows could not be
 * read (every started fetch is then finished, nothing more issued). */
int engram_step_layer(engram_step *es, const engram_weights *w, const batch_desc *b, float *x,
                      const forward_item *it, int n_items);

/* The rows half of engram_step_layer, for a module run elsewhere (DeepSeek-V4.1's, in
 * forward_dsv4.c) or apart from the rest (a recorded step): *emb = the step's rows of layer w as
 * f32 (T, E), backend memory, valid until the next layer's rows. Returns FORWARD_OK, or
 * FORWARD_ERR_IO as engram_step_layer does. */
int engram_step_rows(engram_step *es, const engram_weights *w, const batch_desc *b, const float **emb);
/* A decode step recorded in segments cut at each Engram layer's rows (forward.c, and forward_dsv4.c for
 * DeepSeek-V4.1): key holds every host value the step's ops bake in, its last word the segment's number;
 * record: the step may be recorded (one token per sequence, engram_step_recordable); replayed: the
 * backend replayed the current segment itself, so its ops are not to be issued. */
typedef struct {
    uint64_t key[7];
    bool record, replayed;
} engram_step_seg;
/* engram_step_rows between two segments of sg: the current one ends, the rows are gathered and copied
 * live (how many miss a hot-row cache changes every step), and the next one begins (sg->replayed says
 * how). Returns what engram_step_rows returns. */
int engram_step_rows_cut(engram_step *es, engram_step_seg *sg, const engram_weights *w, const batch_desc *b,
                         const float **emb);
/* The other half: x += engram(x) from those rows, and the gates. Only backend ops, each with the
 * same host arguments for steps of one shape, when engram_step_recordable. */
void engram_step_apply(engram_step *es, const engram_weights *w, const batch_desc *b, float *x, const float *emb,
                       const forward_item *it, int n_items);
/* Whether the step's backend ops between two rows halves may be recorded once and replayed (no
 * snapshots, no gates to download). */
bool engram_step_recordable(const engram_step *es, const forward_item *it, int n_items);
/* The (T, hc_mult) backend buffer such a module writes its gates to when an item wants them,
 * else NULL; then engram_step_gates_done hands layer w's gates to those items. */
float *engram_step_gates(const engram_step *es, const forward_item *it, int n_items);
void engram_step_gates_done(engram_step *es, const engram_weights *w, const batch_desc *b, const forward_item *it,
                            int n_items);

/* forward_prefetch_ahead (forward.h) on es. */
int engram_step_prefetch_ahead(engram_step *es, const int32_t *ids, int lead, int n_ahead);
bool engram_step_prefetches_ahead(const engram_step *es);

/* forward_ctx_engram_hot on es. */
int engram_step_hot(engram_step *es, bool save);

double engram_step_seconds(const engram_step *es); /* forward_ctx_engram_seconds */
/* forward_ctx_fetch_stats: out zeroed first; -1 when layer li has no fetcher. */
int engram_step_fetch_stats(engram_step *es, int li, engram_fetch_stats *out);
/* forward_ctx_engram_tier_overlap. */
size_t engram_step_tier_overlap(engram_step *es);

#endif
