/* What the engine's files share (not a public interface): the request
 * object, the engine, and the scheduler's sequence. Calls point one way:
 * engine.c (create, submit, the thread) -> scheduler.c (the step) ->
 * sequence.c (a running request) -> holdback.c (its text, stop strings);
 * each of them -> request.c (the object readers see: publish, read). */
#ifndef ENGINE_ENGINE_INTERNAL_H
#define ENGINE_ENGINE_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>

#include "engine/backend/backend.h"
#include "engine/engine.h"
#include "engine/forward.h"
#include "engine/kv_cache.h"
#include "engine/ranks.h"
#include "base/buf.h"

/* Candidates per row that backend_ops.sample hands back: 8 KiB a row
 * instead of the whole vocabulary (600 KiB for 151,936 ids). */
#define SAMPLE_CANDIDATES 1024
#define SAMPLE_MIN_ROWS 6
#define AHEAD_SEGS 64 /* queued requests the lookahead hands over per step, at most (scheduler.c) */

struct engine_request {
    pthread_mutex_t mu;
    atomic_int refs;
    atomic_bool cancel;
    engine_request *next; /* queue link, under engine.mu */
    /* parameters, owned copies */
    int32_t *prompt; /* (n_prompt) */
    int n_prompt, max_tokens;
    sampler_params sp;
    bool ignore_eos;
    char *stop[ENGINE_MAX_STOP];
    int n_stop;
    int32_t *bias_ids; /* (n_bias) */
    float *bias_vals;  /* (n_bias) */
    int n_bias;
    engine_logprob *lp; /* (max_tokens) when logprobs were asked for */
    int32_t *forced;    /* (max_tokens) output ids instead of sampled ones, or NULL */
    grammar *grammar;   /* one reference, or NULL: the output's grammar */
    char *reasoning_open, *reasoning_close; /* the reasoning block before the grammar, or NULL (engine.h) */
    char *cache_salt;   /* prefix caching salt, or NULL */
    bool warmup;        /* engine_warmup's: no prefix cache lookup or registration, its steps not counted */
    int n_cached;       /* prompt tokens from the prefix cache at the first admission, under mu */
    int pf_upto;        /* prompt positions whose Engram rows went to the prefetch threads (engine thread) */
    engine *eng;        /* the engine it was submitted to */
    bool taken;         /* off the queue (under engine.mu): it holds a batch slot until its finish */
    int n_top;          /* top alternatives per token */
    int lp_published, lp_read; /* entries final / handed to readers, under mu */
    float *gates;      /* (n_prompt + max_tokens, n_layers) when gates were asked for */
    int32_t *gate_ids; /* (n_prompt + max_tokens) the tokens those gates belong to */
    int n_gated, n_gate_layers;
    void (*notify)(void *);
    void *notify_ctx;
    /* output, under mu */
    strbuf pend; /* text not yet read */
    int n_generated;
    int n_read;       /* n_generated at the latest read */
    engine_finish finish;
    bool finish_read; /* the finish has been returned by a read */
    bool armed;       /* notify on the next publish */
    bool progress;    /* a prefill chunk finished since the last read */
    int error;
    double t_submit, t_start, t_first_token, t_end;
};

struct engine {
    engine_params p;
    model *m;
    tokenizer *tok;          /* NULL when the checkpoint has none */
    backend *be;             /* rank 0's */
    engine_ranks *ranks;     /* the ranks the model runs on (ranks.h; one, unless split): every rank's
                              * context, KV cache and sequence states */
    forward_ctx *fc;         /* rank 0's context: the model on the backend, and one step's scratch */
    kv_cache *kv;            /* rank 0's paged KV cache shared by every sequence: the one the scheduler
                              * allocates from (the other ranks' mirror it) */
    int chunk;               /* prompt tokens per piece: min(prefill_chunk, max_num_batched_tokens) */
    float *logits;           /* (max_num_seqs, vocab_size) the step's logits, host */
    float *raw_logits;       /* (vocab_size) a copy for logprobs, before sampling edits them */
    int32_t *ids;            /* (max_num_batched_tokens) the step's ids */
    int32_t *ahead;          /* (AHEAD_SEGS * FORWARD_AHEAD_LEAD + engram_lookahead) queued prompt pieces */
    double last_poke;        /* when the waiting requests were last poked (sched_poke_waiting) */
    engine_request **poke;   /* (poke_cap) queued requests to poke, referenced */
    int poke_cap;
    int32_t *next;           /* (max_num_seqs) argmax of each sequence's logits (greedy) */
    /* sampling where the logits are (backend_ops.sample), see seq_device_sample */
    bool dev_sample;         /* on: the backend samples for the requests it can serve */
    bool dev_greedy;         /* on: and picks the greedy rows the forward's argmax does not (sample_argmax) */
    int dev_sample_min;      /* ... in steps with at least this many of them */
    int32_t *row;            /* (max_num_seqs) each item's row of forward_ctx_logits, or -1 */
    int *res;                /* (max_num_seqs) each item's row of the step's description, or -1: rows below
                              * n_sampled are backend_ops.sample's, the others sample_argmax's (greedy) */
    int n_sampled;
    int *gallowed;           /* (max_num_seqs) a constrained item sampled on the backend: its grammar's
                              * allowed tokens (0: none, -1: out of memory) */
    sampler_desc desc;       /* the step's description, host */
    void *d_desc;            /* backend memory, d_desc_bytes */
    size_t d_desc_bytes;
    void *d_res;             /* (max_num_seqs) result rows, backend memory: n_sampled of sample's, then
                              * sample_argmax's int32 ids */
    unsigned char *h_res;    /* the same, host */
    forward_item *items;     /* (max_num_seqs) the step */
    struct seq **item_seq;   /* (max_num_seqs) the sequence of each item */
    int *item_slot;          /* (max_num_seqs) the state slot of each item (ranks.h) */
    int ctx, vocab;
    /* constrained decoding, engine thread only: the tokenizer's vocabulary
     * as a grammar trie (made by the first request with a grammar) */
    grammar_vocab *gvocab;
    uint32_t *gmask;         /* (grammar_vocab_mask_words) the mask of one row */
    char *open_marker;       /* the reasoning_open that open_ids were found for, or NULL */
    int32_t *open_ids;       /* (n_open_ids) the tokens whose bytes begin with it */
    int n_open_ids;
    long long n_masks;
    double mask_seconds;
    /* The step's grammar masks, computed on a worker thread while the forward
     * pass runs (with backend sampling: the engine thread only waits then).
     * mw_busy under mw_mu; the worker owns the step's masked seqs meanwhile. */
    pthread_t mw_thread;
    bool mw_started, mw_thread_running, mw_busy, mw_stop;
    pthread_mutex_t mw_mu;
    pthread_cond_t mw_cv;
    int mw_n;                /* items of the job (e->item_seq) */
    uint32_t *mw_rows;       /* (max_num_seqs, mask words) item j's mask in row j; backend_host_alloc'd: the
                              * sampling ops read them uploaded as they are (engine__sample_on_backend) */
    long long mw_masks;      /* the worker's count and time, added to n_masks and mask_seconds after */
    double mw_seconds;
    /* scheduler, engine thread only */
    struct seq **running;    /* (max_num_seqs) oldest first */
    int n_running;
    struct seq **preempted;  /* (max_num_seqs) waiting for recompute, first in line first */
    int n_preempted;
    uint64_t next_arrival;
    long long n_preemptions;
    bool prefix;             /* prefix caching on (the KV cache registers blocks) */
    int32_t *toks;           /* (toks_cap) a preempted sequence's tokens, contiguous (scheduler.c) */
    int toks_cap;
    long long prefix_queries, prefix_hits; /* tokens looked up, and found (engine_stats) */
    double pass_end;         /* when the latest forward pass returned; 0: the engine may have idled since */
    double host_gap;         /* engine_stats.host_gap_seconds, and its steps */
    long long host_gap_steps;
    /* what engine_get_stats reports, under mu */
    int st_running, st_preempted, st_kv_used, st_step_tokens;
    long long st_preemptions, st_steps, st_step_tokens_total, st_masks;
    long long st_decode_steps, st_decode_prompt_tokens, st_decode_prompt_hist[ENGINE_PROMPT_BUCKETS];
    int st_decode_prompt_max;
    double st_mask_seconds, st_host_gap;
    long long st_host_gap_steps;
    long long st_prefix_queries, st_prefix_hits, st_prefix_evictions;
    int st_prefix_cached;
    /* The readers' wake-ups (request.c): the notifies a step's publishes fire,
     * queued on the engine thread (wk_list, referenced) and handed over once a
     * step to the waker thread, which calls them (wk_todo, under wk_mu). */
    engine_request **wk_list, **wk_todo;
    int wk_n, wk_cap, wk_todo_n, wk_todo_cap;
    pthread_t wk_thread;
    bool wk_running, wk_stop;
    pthread_mutex_t wk_mu;
    pthread_cond_t wk_cv;
    pthread_t thread;
    bool thread_started;
    pthread_mutex_t mu; /* queue, running, stopping */
    pthread_cond_t cv;
    engine_request *head, *tail;
    int n_queued;
    int n_taken;             /* requests off the queue whose finish is not yet published (under mu) */
    atomic_bool stopping;
    bool stopped;
    engine_request *warm;    /* engine_warmup's request until the step that finished it has ended, under mu */
    atomic_bool warming;     /* warm is set: the engine thread checks it after each step */
    pthread_cond_t warm_cv;  /* signalled when warm is cleared */
    atomic_int hot; /* FORWARD_HOT_*: the Engram stores' warm start (forward_ctx_engram_hot), set by the engine thread */
};

/* ---- request.c ---- */

/* Checks p against e (ids within the vocabulary, prompt + max_tokens within
 * the context, stop strings and biases) and makes a request of owned copies
 * with two references (the caller's and the engine's). Returns ENGINE_OK
 * and *out, ENGINE_ERR_INVALID or ENGINE_ERR_NOMEM. */
int engine__request_create(engine *e, const engine_request_params *p, engine_request **out);
void engine__request_free(engine_request *r); /* whatever its references */

/* Appends text to the request's unread output, records progress and (once)
 * the finish, and fires an armed notify. Engine thread only. Returns
 * ENGINE_ERR_NOMEM if the text could not be kept (the request then finishes
 * with an error). */
int engine__request_publish(engine_request *r, const char *text, size_t len, int n_generated,
                            engine_finish finish, int error);

/* Marks prefill progress (a chunk done, more to come) so a streaming reader
 * can send a keep-alive during a long prefill. Engine thread only. */
void engine__request_progress(engine_request *r);

/* The waker thread (engine__wakes_start: 0, or -1 when it cannot start: the
 * engine thread then calls the notifies itself) and its end, after the
 * engine thread's (wakes still queued are made first; accepts a waker never
 * started). engine__wakes_flush hands the wakes queued on the engine thread
 * to the waker: once a step, after its publishes. */
int engine__wakes_start(engine *e);
void engine__wakes_stop(engine *e);
void engine__wakes_flush(engine *e);

/* Fills *lp for token `id` from raw logits (vocab): log-softmax in double,
 * and the n_top largest (ties to the lower id). */
void engine__logprob_entry(const float *logits, int vocab, int32_t id, int n_top, engine_logprob *lp);

/* ---- holdback.c ---- */

/* Generated text of a running request and how much of it is published. */
typedef struct {
    strbuf text;
    size_t emitted;
} gen_text;

/* Appends the text of token id (ts NULL: none, no tokenizer), and with
 * `last` the stream's incomplete tail. Returns TOKENIZER_OK or an error
 * (out of memory). */
int engine__gen_text_add(gen_text *g, tokenizer_stream *ts, int32_t id, bool last);

/* How far g may be published now that bytes from `scanned` on are new: up to
 * the earliest stop string (*f becomes ENGINE_FINISH_STOP), all of it when
 * *f already ends the request, else all but the longest tail that could
 * still begin a stop string (held back so a stop string is never emitted,
 * even when it spans tokens). */
size_t engine__gen_text_upto(const engine_request *r, const gen_text *g, size_t scanned, engine_finish *f);

/* ---- sequence.c ---- */

/* A sequence is a request taken off the queue (engine thread only): its
 * forward_state (block table in the shared KV cache, Engram history),
 * sampler, detokenizer and generated text. */
typedef struct seq {
    engine_request *r;
    uint64_t arrival;    /* admission order: smaller is older */
    forward_state *st;   /* rank 0's state, NULL while preempted */
    int slot;            /* its slot among the ranks' states (ranks.h), while st is set */
    sampler *smp;
    tokenizer_stream *ts;
    grammar_matcher *gm; /* where the output is in the request's grammar, or NULL */
    int32_t gm_pending;  /* a sampled token gm has yet to take, or -1: taken by the mask worker at the start
                          * of the next step's job, off the engine thread (sequence.c, seq_advance) */
    int phase;           /* with gm: SEQ_GRAMMAR, SEQ_FIRST or SEQ_REASONING (sequence.c) */
    char tail[ENGINE_MAX_MARKER]; /* SEQ_REASONING: the last bytes, a possible start of reasoning_close */
    int n_tail;
    gen_text g;          /* generated text (holdback.c) */
    int32_t *out_ids;    /* (max_tokens) generated ids */
    int n_out;
    int n_fed_max;       /* most tokens ever fed (for the gates' ids) */
    int piece;           /* tokens scheduled this step, 0: none */
    bool mw_want;        /* this step's mask is the worker's to compute */
    const uint32_t *pre_mask; /* the worker's mask for this step's token, or NULL */
    int pre_allowed;     /* its allowed tokens (-1: out of memory) */
} seq;

/* ENGINE_FINISH_ABORT when stopping, ENGINE_FINISH_CANCEL when r is
 * cancelled, else ENGINE_FINISH_NONE. */
engine_finish engine__interrupted(engine *e, engine_request *r);

/* The tokens a sequence feeds, in order: its prompt then its generated ids. */
int32_t engine__seq_token(const seq *s, int i);
/* The next piece of s: a prompt chunk of up to chunk tokens (the scheduler
 * may cut it shorter, scheduler.c's sched_budget), else one token (a
 * replayed or the last sampled one). */
int engine__seq_next_piece(const engine *e, const seq *s);
/* A forward state for s (reused or new): returns 0, or -1 out of memory. */
int engine__seq_take_state(engine *e, seq *s);
/* Gives s's state (and its KV blocks) back: s is preempted, recomputed later. */
void engine__seq_release_state(engine *e, seq *s);
/* Whether s samples on the backend with backend_ops.sample (see sequence.c). */
bool engine__seq_device_sample(const engine *e, const seq *s);
/* Whether s is greedy with its token picked on the backend by sample_argmax
 * (one pass over the row: worth it for any number of rows, unlike sample's
 * candidates). */
bool engine__seq_device_greedy(const engine *e, const seq *s);
/* Greedy with nothing that needs the logits on the host: the backend's
 * argmax is the token (the sampler's own rule, lowest id on ties). */
bool engine__seq_pure_greedy(const engine *e, const seq *s);

/* Makes a sequence of a request just taken off the queue; NULL (and the
 * request finished with an error) when out of memory. */
seq *engine__seq_create(engine *e, engine_request *r);
/* Ends s: publishes the finish if it has none yet (f NONE: it has one),
 * frees everything and drops the engine's reference. */
void engine__seq_finish(engine *e, seq *s, engine_finish f, int error);

/* Takes the next token of s (sampled from logits, or `next` when logits is
 * NULL: the backend's greedy pick), publishes text, and returns true when s
 * has finished (the finish published). */
bool engine__seq_sample(engine *e, seq *s, float *logits, int32_t next);

/* After the pass: one backend_ops.sample over the items of the step
 * (e->item_seq) that left their logits on the backend to be sampled, one
 * sample_argmax over the greedy ones, their results downloaded at once.
 * Returns 0, or -1 when host memory runs out. */
int engine__sample_on_backend(engine *e, int n_items);
/* The token of item j, sampled on the backend: from its candidates or its
 * greedy id, else (rarely) from its row, downloaded with biases, the mask and
 * penalties applied. */
int32_t engine__seq_take_candidate(engine *e, seq *s, int j);
/* The step's grammar masks: begin hands the items that will sample with a
 * mask to the worker (when it runs), wait takes them back; around the
 * forward pass. */
void engine__masks_begin(engine *e, int n_items);
void engine__masks_wait(engine *e);
int engine__masks_start(engine *e);  /* the worker; 0, or -1 */
void engine__masks_stop(engine *e);  /* accepts a worker never started */

/* Item j's token from the backend's sampling (a grammar that allows nothing
 * ends the request instead), then engine__seq_sample. */
bool engine__seq_sample_row(engine *e, seq *s, int j);

/* ---- scheduler.c ---- */

/* One scheduler step (its phases: scheduler.c), then the stats that
 * engine_get_stats reports. Engine thread only. */
void engine__sched_step(engine *e);

#endif
