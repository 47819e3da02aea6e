/* The engine: owns the model, its tokenizer and one engine thread that runs
 * requests. Callers (the HTTP server) submit requests from any thread into a
 * bounded FIFO queue; each request is an object with its own output stream
 * (text deltas cut at whole UTF-8 characters, stop strings held back and
 * never emitted, a finish reason and token counts). The engine thread batches
 * requests continuously: every step admits waiting requests while KV cache
 * blocks and a token budget allow, mixes prompt chunks with decode tokens,
 * and preempts the youngest sequence (to be recomputed) when blocks run out.
 * Cancellation takes effect at the next step boundary. */
#ifndef ENGINE_ENGINE_H
#define ENGINE_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/engram_fetch.h" /* engram_fetch_stats (engine_fetch_stats) */
#include "engine/sampler.h"       /* sampler_params (engine_request_params) */
#include "engram/store.h"         /* engram_store_params (engine_params), engram_store_stats */
#include "grammar/grammar.h"       /* grammar (engine_request_params) */
#include "tokenizer/tokenizer.h"

typedef struct model model; /* engine/model/model.h: for engine_model's callers (tests, benchmarks) */

typedef enum {
    ENGINE_OK = 0,
    ENGINE_ERR_NOMEM = -1,
    ENGINE_ERR_LOAD = -2,       /* the checkpoint or its tokenizer could not be loaded */
    ENGINE_ERR_INVALID = -3,    /* bad request parameters (prompt too long, token id out of range), or
                                 * engine params the model refuses (a parallel size it cannot split) */
    ENGINE_ERR_QUEUE_FULL = -4, /* --max-queued-requests reached: try again later */
    ENGINE_ERR_STOPPED = -5,    /* the engine is stopping or stopped */
    ENGINE_ERR_FORWARD = -6,    /* the forward pass failed */
    ENGINE_ERR_DEVICE = -7,     /* the requested device is not available in this build */
} engine_status;

/* Static string for a status; never NULL. */
const char *engine_status_str(int status);

typedef struct {
    const char *model_dir; /* checkpoint directory (borrowed for engine_create only) */
    const char *device;    /* "cpu", "cuda" or "auto" (CUDA when usable); NULL means "auto" */
    int max_queued;        /* requests waiting for a batch slot (those a free slot takes at the
                            * next step do not count); more get ENGINE_ERR_QUEUE_FULL; default 64 */
    int threads;           /* CPU threads of the engine (the CPU backend's pool, OpenMP's while loading);
                            * 0: OpenMP's default (OMP_NUM_THREADS, else all cores) */
    int prefill_chunk;     /* prompt tokens per forward pass; default 256 */
    int max_num_seqs;      /* sequences running at once; default 16 */
    int max_num_batched_tokens; /* tokens per scheduler step; default 512 */
    int max_prefill_tokens_decoding; /* while any sequence decodes, prompt tokens per step at most: decode
                                      * tokens go first, then prompt chunks cut to fit this (a bound on how
                                      * long a step, and so each decode's next token, waits for prefill);
                                      * with no sequence decoding prompts get the whole step. 0 (default),
                                      * or >= max_num_batched_tokens: off, prompt chunks go whole */
    int kv_cache_tokens;   /* KV cache positions, shared by all sequences; 0: on a backend that reports
                            * its memory (CUDA), what gpu_memory_utilization leaves after the weights
                            * and scratch, at most max_num_seqs contexts; elsewhere the context length */
    double gpu_memory_utilization; /* share of the GPU's memory this engine may hold in all; default 0.9 */
    int kv_block_size;     /* positions per KV cache block; default 16 */
    int enable_prefix_caching; /* 1 (default): full KV blocks (and their Engram state) stay cached after
                                * their request and a prompt starting with the same blocks reuses them;
                                * 0: off. Off, logged once, for models whose decode state is not only
                                * KV blocks and Engram histories (forward_ctx_prefix_cacheable) */
    int prefix_cache_max_blocks; /* most idle cached blocks kept (least recently used evicted first);
                                  * 0 (default): as many as the pool has free */
    int engram_lookahead;  /* prompt tokens beyond each step whose Engram rows are handed to the
                            * prefetch threads of NVMe-tier stores before the step runs
                            * (forward_prefetch_ahead); 0: off; default 2048 */
    const char *engram_tables; /* NULL: Engram tables from the checkpoint; else a directory of
                                * table files (model_engram_use_tables), borrowed for engine_create */
    engram_store_params engram_store; /* how those files are read; default engram_store_default_params().
                                       * With .warm_start on, the engine thread warms the backend's hot-row
                                       * caches from the stores' hot-row files and writes those files
                                       * every engram_hot_save_interval seconds and when it stops */
    int engram_hot_save_interval; /* seconds; 0: only when the engine stops; default 0 (a save pauses the steps) */
    const char *synthetic;  /* instead of model_dir: a synthetic model spec (model_synthetic_ex), no
                             * tokenizer; borrowed for engine_create */
    uint64_t synthetic_seed;
    const char *synthetic_table_dir; /* its Engram tables, made or reused (with engram_store) */
    int sample_on_backend; /* sampling where the logits are (backend_ops.sample, sample_argmax): -1 auto
                            * (default: sampled rows where the logits are not host memory, in steps
                            * of several such rows; greedy rows with a grammar's mask, biases or
                            * penalties on every backend), 0 off, 1 always (every row, the CPU too) */
    int cuda_graphs;       /* recorded steps on CUDA: 1 on (default), 0 off (backend_params) */
    int cuda_profile;      /* CUDA op timing to stderr: 0 off (default), 1 every op, 2 recorded steps
                            * kept and timed whole (backend_params) */
    const char *cpu_isa;   /* the CPU backend's matrix-product path: "auto" (or NULL, the default),
                            * "avx512", "avx2" or "generic" (backend_params; engine_create fails
                            * with ENGINE_ERR_DEVICE for another name or a path the CPU lacks) */
    /* The model over several ranks (engine/ranks.h), one thread each in this process: its attention
     * heads and dense MLP split tensor_parallel_size ways, its routed experts expert_parallel_size
     * ways, max of the two ranks (the smaller must divide the larger); rank k on CUDA device k, or
     * all on the CPU backend (the collectives' CPU fake: exact, not faster; the CPU's threads are
     * shared among them). 0 or 1: none (default). A size the model cannot split, or a
     * combination that does not run on ranks yet, fails engine_create with ENGINE_ERR_INVALID. */
    int tensor_parallel_size, expert_parallel_size;
} engine_params;

engine_params engine_default_params(void);

typedef struct engine engine;

/* Loads the model (and its tokenizer when the directory has one) and starts
 * the engine thread. Returns ENGINE_OK and *out, or a negative status with a
 * one-line message in err; *out is then NULL. */
int engine_create(const engine_params *p, engine **out, char *err, size_t errlen);

/* Warms the engine up before it takes requests: runs one request of its own
 * (n_prompt valid ids, cut to one prefill step and the context, then n_decode
 * decode steps, greedy) through the path every request takes, on every rank,
 * so that the one-time costs of a first forward pass (first calls of each
 * product shape, CUDA graph captures, thread pools, first touches of the
 * scratch) are paid here and not by the first client. It leaves no trace a
 * client can see: no prefix-cache block, no engine_stats count (steps,
 * tokens, host gap; the gauges are back where they were), and later outputs
 * bit-identical to an engine without it; caches whose contents never change
 * a result (the Engram row caches) may differ. Call on an idle engine,
 * before any engine_submit (else ENGINE_ERR_INVALID); blocks until done.
 * Returns ENGINE_OK with *out, or the status of what failed. */
typedef struct {
    int n_prompt, n_decode; /* what ran */
    double seconds;
} engine_warmup_info;
int engine_warmup(engine *e, int n_prompt, int n_decode, engine_warmup_info *out);

/* Stops the engine: later submits return ENGINE_ERR_STOPPED, every queued or
 * running request finishes with ENGINE_FINISH_ABORT (and its notify fires),
 * the engine thread is joined. Idempotent; call from one thread. */
void engine_stop(engine *e);

/* Stops (if needed) and frees the engine. Requests still referenced by
 * callers stay valid until released. Accepts NULL. */
void engine_destroy(engine *e);

/* Borrowed views, valid while the engine lives. The tokenizer is NULL when
 * the checkpoint has none (requests must then come as token ids). The model
 * is for tests and benchmarks that look inside it; the server uses the
 * accessors of engine_info.c below. */
const model *engine_model(const engine *e);
const tokenizer *engine_tokenizer(const engine *e);
int engine_context_length(const engine *e); /* max prompt + generated tokens: the model's context,
                                            * or the KV cache's positions when fewer */
int engine_vocab_size(const engine *e);     /* ids a prompt or logit_bias may use */

#define ENGINE_PROMPT_BUCKETS 22 /* engine_stats.decode_step_prompt_hist: 0, 1, 2, 4, ..., 2^19, more */

/* The upper bound of bucket k of decode_step_prompt_hist (0, then 2^(k-1)),
 * or -1 for the last bucket (no bound). */
int engine_prompt_bucket_le(int k);

/* engine_params.cuda_profile from a --cuda-profile value ("0"/"off", "1"/"ops",
 * "graphs"), or -1 for another: the one reading of the flag every program takes. */
int engine_cuda_profile_mode(const char *v);

typedef struct {
    int queued;  /* requests waiting: in the queue, or preempted */
    int running; /* sequences in the running batch */
    int preempted; /* of the queued, those preempted and waiting for recompute */
    int kv_tokens, kv_capacity; /* KV cache positions in use (whole blocks), and in all */
    int kv_blocks_used, kv_blocks;
    long long preemptions; /* sequences preempted so far */
    long long steps;       /* scheduler steps that ran tokens */
    int step_tokens;       /* tokens in the latest step */
    long long step_tokens_total; /* tokens over all steps */
    /* Steps that ran decode tokens (a sequence's next token after its
     * prompt) and the prompt tokens that ran beside them: the prefill that
     * each of those decodes waited for. Histogram: bucket 0 counts steps of
     * no prompt token, bucket k >= 1 those of at most 2^(k-1) (more than
     * half that), the last bucket everything above. */
    long long decode_steps;
    long long decode_step_prompt_tokens; /* summed over those steps */
    long long decode_step_prompt_hist[ENGINE_PROMPT_BUCKETS];
    int decode_step_prompt_max;          /* the most in any one of them */
    long long grammar_masks;     /* token masks computed for constrained sequences */
    double grammar_mask_seconds; /* time spent computing them */
    /* prefix caching */
    long long prefix_queries_tokens; /* tokens of the sequences that looked up their prefix (admissions) */
    long long prefix_hits_tokens;    /* of those, the ones the cache had */
    int prefix_cached_blocks;        /* KV blocks registered in the cache, in use or idle */
    long long prefix_evictions;      /* cached blocks evicted so far */
    /* The engine thread's time between the forward passes of back-to-back
     * steps, which a GPU idles through: from one pass's results to the next
     * pass's first op (taking and publishing tokens, scheduling, the pass's
     * own checks, layout and uploads). Summed over host_gap_steps steps. */
    double host_gap_seconds;
    long long host_gap_steps;
} engine_stats;

void engine_get_stats(engine *e, engine_stats *out);

/* The Engram row fetchers' counters (engram_fetch: tables read through a host
 * store) of Engram layer li (0-based among the Engram layers), or summed over
 * all layers for li < 0; zeros when there are none. Thread-safe. */
void engine_fetch_stats(engine *e, int li, engram_fetch_stats *out);

/* ---- engine_info.c: what the server may know of the model and backend ---- */

/* Whether the model has Engram layers (requests may then ask for gates). */
bool engine_has_engram(const engine *e);

/* The backbone layer at which Engram layer li (0-based among the Engram
 * layers, li < the n_layers of engine_request_gates) starts. */
int engine_engram_layer_id(const engine *e, int li);

/* The Engram stores' counters summed over the Engram layers (zeros where the
 * tables come from the checkpoint). Thread-safe against the engine thread. */
void engine_engram_store_stats(const engine *e, engram_store_stats *out);

/* The warm start of the Engram row caches (engine_params.engram_store.warm_start):
 * ENGINE_WARM_NONE (off, or no table read through a store), _WARMING (rows
 * of the hot-row files still coming back: served meanwhile, more slowly) or
 * _READY. Thread-safe. */
typedef enum { ENGINE_WARM_NONE = 0, ENGINE_WARM_WARMING = 1, ENGINE_WARM_READY = 2 } engine_warm;
engine_warm engine_engram_warm(const engine *e);

/* The backend a --device value ("cpu", "cuda", "auto" or NULL for "auto")
 * resolves to on this machine: "cpu" or "cuda" (static), or NULL with err set
 * when it names no usable backend. Needs no engine. */
const char *engine_device_name(const char *device, char *err, size_t errlen);

typedef enum {
    ENGINE_FINISH_NONE = 0, /* still running */
    ENGINE_FINISH_STOP,     /* EOS token or a stop string */
    ENGINE_FINISH_LENGTH,   /* max_tokens reached */
    ENGINE_FINISH_CANCEL,   /* engine_cancel() */
    ENGINE_FINISH_ABORT,    /* the engine stopped before the request ended */
    ENGINE_FINISH_ERROR,    /* the forward pass failed (status in engine_output.error) */
} engine_finish;

#define ENGINE_MAX_STOP 16
#define ENGINE_MAX_MARKER 32 /* bytes of a reasoning marker (engine_request_params) */
#define ENGINE_MAX_TOP_LOGPROBS 20

/* The log-probability of one generated token under the model's distribution
 * (the raw logits, before logit_bias, penalties and temperature), and the
 * n_top most likely tokens with theirs, most likely first. */
typedef struct {
    int32_t id;
    float logprob;
    int n_top;
    int32_t top_ids[ENGINE_MAX_TOP_LOGPROBS];
    float top_logprobs[ENGINE_MAX_TOP_LOGPROBS];
} engine_logprob;

typedef struct {
    const int32_t *prompt; /* (n_prompt) token ids, copied by engine_submit */
    int n_prompt;
    int max_tokens;        /* tokens to generate at most, >= 1 */
    sampler_params sampling;
    bool ignore_eos;       /* do not stop at the model's EOS ids */
    const char *stop[ENGINE_MAX_STOP]; /* stop strings (UTF-8, non-empty), copied */
    int n_stop;
    const int32_t *bias_ids; /* (n_bias) logit_bias token ids, copied */
    const float *bias_vals;  /* (n_bias) values added to those logits */
    int n_bias;
    bool want_gates;         /* keep the Engram gates of every token (engine_request_gates); such a
                              * request computes its whole prompt (no prefix cache hits) */
    const char *cache_salt;  /* prefix caching: only requests of the same salt share cached blocks;
                              * NULL or "": none; copied */
    bool logprobs;           /* keep each generated token's logprob (engine_request_logprobs) */
    int top_logprobs;        /* and this many top alternatives, 0..ENGINE_MAX_TOP_LOGPROBS */
    /* Benchmarks and tests: (max_tokens) ids, copied, that the request
     * outputs in place of what the sampler picks, each fed back as the next
     * input (the model still runs and samples every step; EOS and stop
     * strings apply to the forced ids; logprobs describe the sampled ids).
     * NULL: sample as usual. */
    const int32_t *forced;
    /* Structured output: the output must be a sentence of this grammar
     * (borrowed; the request takes its own reference). Before each token is
     * sampled the tokens the grammar does not allow get -inf (after logprobs,
     * which report the model's distribution); EOS is allowed exactly when the
     * grammar can end, and the request stops ("stop") once nothing more may
     * follow. Needs the model's tokenizer; not with forced. NULL: none. */
    grammar *grammar;
    /* With a grammar, the reasoning block a model may write before the
     * constrained output (the server's --reasoning-parser), as markers on the
     * output's bytes: the grammar applies from the byte after the first
     * reasoning_close, and nothing is masked before it. reasoning_open NULL:
     * the output starts inside the block (the prompt opened it); else there
     * is a block only when the output starts with reasoning_open, so the
     * first token is one the grammar allows or one whose bytes begin with
     * reasoning_open. reasoning_close NULL: no block. Each at most
     * ENGINE_MAX_MARKER bytes; copied. */
    const char *reasoning_open, *reasoning_close;
    /* Called when new output appears after engine_request_read armed it (see
     * there), on the engine's waker thread (once the step that made the
     * output has published it: the engine thread goes on meanwhile) or on
     * the thread in engine_stop, with the request's lock held: it must not
     * call the engine on this request. May be NULL. */
    void (*notify)(void *ctx);
    void *notify_ctx;
} engine_request_params;

typedef struct engine_request engine_request;

/* Queues a request. Returns ENGINE_OK and *out (a reference the caller must
 * drop with engine_request_release), or ENGINE_ERR_INVALID (prompt empty or
 * out of range, prompt + max_tokens over the context, bad stop/bias, a
 * grammar without a tokenizer or with forced),
 * ENGINE_ERR_QUEUE_FULL, ENGINE_ERR_STOPPED or ENGINE_ERR_NOMEM. Thread-safe. */
int engine_submit(engine *e, const engine_request_params *p, engine_request **out);

/* Asks the engine to stop the request at its next step boundary; it then
 * finishes with ENGINE_FINISH_CANCEL. Idempotent, thread-safe, and safe after
 * the request finished or the engine stopped. */
void engine_cancel(engine_request *r);

/* Once the request has finished: the Engram gates it asked for with
 * want_gates. *ids (n_tokens) are the tokens that went through the model (the
 * prompt, then every generated token but the last, which was never fed
 * back); *gates is (n_tokens, n_layers). Borrowed until the request is
 * released. Returns false when gates were not asked for, the model has no
 * Engram, or the request has not finished. Thread-safe. */
bool engine_request_gates(engine_request *r, const int32_t **ids, int *n_tokens, const float **gates,
                          int *n_layers);

/* The logprob entries of a request that asked for them (NULL otherwise): one
 * per generated token; those below the lp_end of the latest read are final.
 * Borrowed until the request is released. */
const engine_logprob *engine_request_logprobs(engine_request *r);

/* Detaches the notify callback: after this returns the engine never calls it
 * for this request (call it before the notify context goes away, e.g. when a
 * connection closes). Thread-safe; accepts NULL. */
void engine_request_detach(engine_request *r);

/* Drops the caller's reference. Accepts NULL. */
void engine_request_release(engine_request *r);

typedef struct {
    char *text;      /* new UTF-8 text since the last read, heap (caller frees), NUL-terminated; may be NULL */
    size_t len;      /* bytes of text */
    int n_prompt;    /* prompt tokens */
    int n_generated; /* tokens generated so far (EOS included) */
    engine_finish finish; /* set once, after the last text */
    int error;       /* engine status when finish is ENGINE_FINISH_ERROR */
    double t_submit, t_first_token, t_end; /* util_now() seconds; 0 until they happen */
    double t_start;  /* when the engine took the request off the queue */
    /* With logprobs asked for: entries [lp_begin, lp_end) of engine_request_logprobs
     * are new with this read (one per generated token, in order). */
    int lp_begin, lp_end;
    bool progress;   /* a prefill chunk finished since the last read (for SSE keep-alives) */
    int n_cached;    /* prompt tokens whose KV came from the prefix cache when the request started */
} engine_output;

/* Takes the output produced since the previous read (non-blocking). Returns
 * true if there is something new (text, or the finish; on an engine without
 * a tokenizer, whose tokens have no text, generated tokens too). If there is nothing
 * new and the request has not finished, calls on_empty(ctx) (if not NULL)
 * while holding the request's lock and arms the notify callback: the engine
 * calls notify once when output next appears. This lets the caller suspend
 * a connection in on_empty without a lost wake-up. Thread-safe. */
bool engine_request_read(engine_request *r, engine_output *out, void (*on_empty)(void *), void *ctx);

#endif
