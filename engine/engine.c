/* The engine thread and its request objects (see engine.h). The thread runs
 * the scheduler (continuous batching over a paged KV cache, described above
 * sched_step) and publishes text to each request's output stream after every
 * step. Stop strings are matched on the generated text;
 * the longest tail that could still start a stop string is held back so a
 * stop string is never emitted, even when it spans tokens. */
#include "engine/engine.h"

#include <omp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/backend/backend.h"
#include "engine/forward.h"
#include "engine/kv_cache.h"
#include "base/util.h"

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
    char *pend; /* text not yet read */
    size_t pend_len, pend_cap;
    int n_generated;
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
    backend *be;
    forward_ctx *fc;         /* the model on the backend, and one step's scratch */
    kv_cache *kv;            /* the paged KV cache shared by every sequence */
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
    int dev_sample_min;      /* ... in steps with at least this many of them */
    int32_t *row;            /* (max_num_seqs) each item's row of forward_ctx_logits, or -1 */
    int *res;                /* (max_num_seqs) each item's row of the sampling result, or -1 */
    sampler_desc desc;       /* the step's description, host */
    void *d_desc;            /* backend memory, d_desc_bytes */
    size_t d_desc_bytes;
    void *d_res;             /* (max_num_seqs) result rows, backend memory */
    unsigned char *h_res;    /* the same, host */
    forward_item *items;     /* (max_num_seqs) the step */
    struct seq **item_seq;   /* (max_num_seqs) the sequence of each item */
    int ctx, vocab;
    /* scheduler, engine thread only */
    struct seq **running;    /* (max_num_seqs) oldest first */
    int n_running;
    struct seq **preempted;  /* (max_num_seqs) waiting for recompute, first in line first */
    int n_preempted;
    forward_state **free_states; /* (max_num_seqs) states not in use, kept for reuse */
    int n_free_states;
    uint64_t next_arrival;
    long long n_preemptions;
    /* what engine_get_stats reports, under mu */
    int st_running, st_preempted, st_kv_used, st_step_tokens;
    long long st_preemptions, st_steps, st_step_tokens_total;
    pthread_t thread;
    bool thread_started;
    pthread_mutex_t mu; /* queue, running, stopping */
    pthread_cond_t cv;
    engine_request *head, *tail;
    int n_queued;
    int n_taken;             /* requests off the queue whose finish is not yet published (under mu) */
    atomic_bool stopping;
    bool stopped;
};

const char *engine_status_str(int status) {
    switch (status) {
    case ENGINE_OK: return "ok";
    case ENGINE_ERR_NOMEM: return "out of memory";
    case ENGINE_ERR_LOAD: return "cannot load the model";
    case ENGINE_ERR_INVALID: return "invalid request";
    case ENGINE_ERR_QUEUE_FULL: return "the request queue is full";
    case ENGINE_ERR_STOPPED: return "the engine is stopping";
    case ENGINE_ERR_FORWARD: return "the forward pass failed";
    case ENGINE_ERR_DEVICE: return "device not available";
    }
    return "unknown engine status";
}

engine_params engine_default_params(void) {
    engine_params p = {0};
    p.device = "auto";
    p.max_queued = 64;
    p.gpu_memory_utilization = 0.9;
    p.prefill_chunk = 256;
    p.max_num_seqs = 16;
    p.max_num_batched_tokens = 512;
    p.kv_block_size = 16;
    p.engram_lookahead = 2048;
    p.engram_store = engram_store_default_params();
    p.sample_on_backend = -1;
    p.cuda_graphs = 1;
    return p;
}

/* ---- requests ---- */

static void request_free(engine_request *r) {
    free(r->prompt);
    for (int i = 0; i < r->n_stop; i++) free(r->stop[i]);
    free(r->bias_ids);
    free(r->bias_vals);
    free(r->gates);
    free(r->gate_ids);
    free(r->lp);
    free(r->forced);
    free(r->pend);
    pthread_mutex_destroy(&r->mu);
    free(r);
}

bool engine_request_gates(engine_request *r, const int32_t **ids, int *n_tokens, const float **gates,
                          int *n_layers) {
    pthread_mutex_lock(&r->mu);
    bool ok = r->gates && r->finish != ENGINE_FINISH_NONE;
    pthread_mutex_unlock(&r->mu);
    if (!ok) return false;
    *ids = r->gate_ids;
    *n_tokens = r->n_gated;
    *gates = r->gates;
    *n_layers = r->n_gate_layers;
    return true;
}

void engine_request_release(engine_request *r) {
    if (r && atomic_fetch_sub(&r->refs, 1) == 1) request_free(r);
}

void engine_request_detach(engine_request *r) {
    if (!r) return;
    pthread_mutex_lock(&r->mu);
    r->notify = NULL;
    r->notify_ctx = NULL;
    r->armed = false;
    pthread_mutex_unlock(&r->mu);
}

void engine_cancel(engine_request *r) {
    if (r) atomic_store(&r->cancel, true);
}

/* Appends text to the request's unread output, records progress and (once)
 * the finish, and fires an armed notify. Engine thread only. Returns
 * ENGINE_ERR_NOMEM if the text could not be kept (the request then finishes
 * with an error). */
static int request_publish(engine_request *r, const char *text, size_t len, int n_generated,
                           engine_finish finish, int error) {
    int rc = ENGINE_OK;
    /* A taken request frees its batch slot (n_taken) before anyone can see
     * its finish: a client answered at once may submit again at once. Lock
     * order: engine.mu, then r->mu. */
    engine *e = r->taken ? r->eng : NULL;
    bool slot_locked = e && finish != ENGINE_FINISH_NONE;
    if (slot_locked) pthread_mutex_lock(&e->mu);
    pthread_mutex_lock(&r->mu);
    if (len) {
        if (r->pend_len + len + 1 > r->pend_cap) {
            size_t cap = (r->pend_len + len + 1) * 2;
            char *q = realloc(r->pend, cap);
            if (!q) {
                rc = ENGINE_ERR_NOMEM;
                finish = ENGINE_FINISH_ERROR;
                error = ENGINE_ERR_NOMEM;
                len = 0;
            } else {
                r->pend = q;
                r->pend_cap = cap;
            }
        }
        if (len) {
            memcpy(r->pend + r->pend_len, text, len);
            r->pend_len += len;
            r->pend[r->pend_len] = 0;
        }
    }
    r->n_generated = n_generated;
    if (r->lp) r->lp_published = n_generated;
    if (n_generated > 0 && r->t_first_token == 0) r->t_first_token = util_now();
    bool ends = finish != ENGINE_FINISH_NONE && r->finish == ENGINE_FINISH_NONE;
    if (ends) {
        r->finish = finish;
        r->error = error;
        r->t_end = util_now();
    }
    if (ends && slot_locked) e->n_taken--;
    bool fire = r->armed && (len || r->finish != ENGINE_FINISH_NONE);
    if (fire) r->armed = false;
    void (*notify)(void *) = r->notify;
    void *ctx = r->notify_ctx;
    pthread_mutex_unlock(&r->mu);
    if (slot_locked) pthread_mutex_unlock(&e->mu);
    if (ends && e && !slot_locked) { /* out of memory turned a text into the finish */
        pthread_mutex_lock(&e->mu);
        e->n_taken--;
        pthread_mutex_unlock(&e->mu);
    }
    if (fire && notify) notify(ctx);
    return rc;
}

/* Marks prefill progress (a chunk done, more to come) so a streaming reader
 * can send a keep-alive during a long prefill. Engine thread only. */
static void request_progress(engine_request *r) {
    pthread_mutex_lock(&r->mu);
    r->progress = true;
    bool fire = r->armed;
    r->armed = false;
    void (*notify)(void *) = r->notify;
    void *ctx = r->notify_ctx;
    pthread_mutex_unlock(&r->mu);
    if (fire && notify) notify(ctx);
}

bool engine_request_read(engine_request *r, engine_output *out, void (*on_empty)(void *), void *ctx) {
    memset(out, 0, sizeof(*out));
    pthread_mutex_lock(&r->mu);
    bool news = false;
    if (r->progress) {
        out->progress = true;
        r->progress = false;
        news = true;
    }
    if (r->pend_len) {
        out->text = r->pend; /* hand over the buffer */
        out->len = r->pend_len;
        r->pend = NULL;
        r->pend_len = r->pend_cap = 0;
        news = true;
    }
    out->n_prompt = r->n_prompt;
    out->n_generated = r->n_generated;
    out->t_submit = r->t_submit;
    out->t_start = r->t_start;
    out->t_first_token = r->t_first_token;
    out->lp_begin = r->lp_read;
    out->lp_end = r->lp_read = r->lp_published;
    if (out->lp_end > out->lp_begin) news = true;
    if (r->finish != ENGINE_FINISH_NONE && !r->finish_read) {
        out->finish = r->finish;
        out->error = r->error;
        out->t_end = r->t_end;
        r->finish_read = true;
        news = true;
    }
    if (!news && r->finish == ENGINE_FINISH_NONE) {
        if (on_empty) on_empty(ctx);
        r->armed = true;
    }
    pthread_mutex_unlock(&r->mu);
    return news;
}

/* ---- the engine ---- */

const engine_logprob *engine_request_logprobs(engine_request *r) { return r->lp; }

const model *engine_model(const engine *e) { return e->m; }
const tokenizer *engine_tokenizer(const engine *e) { return e->tok; }
int engine_context_length(const engine *e) {
    int kv = kv_cache_n_blocks(e->kv) * kv_cache_block_size(e->kv); /* one sequence may fill the cache */
    return kv < e->ctx ? kv : e->ctx;
}
int engine_vocab_size(const engine *e) { return e->vocab; }

void engine_fetch_stats(engine *e, int li, engram_fetch_stats *out) {
    memset(out, 0, sizeof(*out));
    const model_engram *me = e->m ? e->m->engram : NULL;
    if (!e->fc || !me) return;
    for (int i = 0; i < me->n_layers; i++) {
        if (li >= 0 && i != li) continue;
        engram_fetch_stats x;
        if (forward_ctx_fetch_stats(e->fc, i, &x) == 0) engram_fetch_stats_add(out, &x);
    }
}

void engine_get_stats(engine *e, engine_stats *out) {
    pthread_mutex_lock(&e->mu);
    out->queued = e->n_queued + e->st_preempted;
    out->running = e->st_running;
    out->preempted = e->st_preempted;
    int bs = kv_cache_block_size(e->kv);
    out->kv_tokens = e->st_kv_used * bs;
    out->kv_capacity = kv_cache_n_blocks(e->kv) * bs;
    out->kv_blocks_used = e->st_kv_used;
    out->kv_blocks = kv_cache_n_blocks(e->kv);
    out->preemptions = e->st_preemptions;
    out->steps = e->st_steps;
    out->step_tokens = e->st_step_tokens;
    out->step_tokens_total = e->st_step_tokens_total;
    pthread_mutex_unlock(&e->mu);
}

/* Batch slots a newly queued request could take at the next step without
 * waiting (caller holds mu): those not held by a request taken off the queue
 * and not finished (running or preempted). Requests a free slot takes are
 * not "waiting": --max-queued-requests bounds the rest. */
static int engine_free_slots(const engine *e) {
    int free = e->p.max_num_seqs - e->n_taken;
    return free > 0 ? free : 0;
}

int engine_submit(engine *e, const engine_request_params *p, engine_request **out) {
    *out = NULL;
    if (!p->prompt || p->n_prompt < 1 || p->max_tokens < 1 || p->n_stop < 0 || p->n_stop > ENGINE_MAX_STOP ||
        p->n_bias < 0 || (long)p->n_prompt + p->max_tokens > engine_context_length(e))
        return ENGINE_ERR_INVALID;
    for (int i = 0; i < p->n_prompt; i++)
        if (p->prompt[i] < 0 || p->prompt[i] >= e->vocab) return ENGINE_ERR_INVALID;
    for (int i = 0; i < p->n_bias; i++)
        if (p->bias_ids[i] < 0 || p->bias_ids[i] >= e->vocab) return ENGINE_ERR_INVALID;
    for (int i = 0; i < p->n_stop; i++)
        if (!p->stop[i] || !p->stop[i][0]) return ENGINE_ERR_INVALID;
    for (int i = 0; p->forced && i < p->max_tokens; i++)
        if (p->forced[i] < 0 || p->forced[i] >= e->vocab) return ENGINE_ERR_INVALID;

    engine_request *r = calloc(1, sizeof(*r));
    if (!r) return ENGINE_ERR_NOMEM;
    pthread_mutex_init(&r->mu, NULL);
    atomic_init(&r->refs, 2); /* the caller's and the engine's */
    atomic_init(&r->cancel, false);
    r->prompt = malloc((size_t)p->n_prompt * sizeof(int32_t));
    if (p->n_bias) {
        r->bias_ids = malloc((size_t)p->n_bias * sizeof(int32_t));
        r->bias_vals = malloc((size_t)p->n_bias * sizeof(float));
    }
    const model_engram *me = e->m->engram;
    if (p->want_gates && me) {
        size_t n_tok = (size_t)p->n_prompt + (size_t)p->max_tokens;
        r->n_gate_layers = me->n_layers;
        r->gates = malloc(n_tok * (size_t)me->n_layers * sizeof(float));
        r->gate_ids = malloc(n_tok * sizeof(int32_t));
    }
    if (p->logprobs) {
        r->n_top = p->top_logprobs < 0 ? 0 : p->top_logprobs > ENGINE_MAX_TOP_LOGPROBS ? ENGINE_MAX_TOP_LOGPROBS
                                                                                        : p->top_logprobs;
        r->lp = malloc((size_t)p->max_tokens * sizeof(engine_logprob));
    }
    if (p->forced && (r->forced = malloc((size_t)p->max_tokens * sizeof(int32_t))))
        memcpy(r->forced, p->forced, (size_t)p->max_tokens * sizeof(int32_t));
    bool nomem = !r->prompt || (p->n_bias && (!r->bias_ids || !r->bias_vals)) || (p->logprobs && !r->lp) ||
                 (r->n_gate_layers && (!r->gates || !r->gate_ids)) || (p->forced && !r->forced);
    for (int i = 0; i < p->n_stop && !nomem; i++) {
        if (!(r->stop[i] = strdup(p->stop[i]))) nomem = true;
        r->n_stop = i + 1;
    }
    if (nomem) {
        request_free(r);
        return ENGINE_ERR_NOMEM;
    }
    memcpy(r->prompt, p->prompt, (size_t)p->n_prompt * sizeof(int32_t));
    if (p->n_bias) {
        memcpy(r->bias_ids, p->bias_ids, (size_t)p->n_bias * sizeof(int32_t));
        memcpy(r->bias_vals, p->bias_vals, (size_t)p->n_bias * sizeof(float));
    }
    r->n_bias = p->n_bias;
    r->n_prompt = p->n_prompt;
    r->max_tokens = p->max_tokens;
    r->sp = p->sampling;
    r->ignore_eos = p->ignore_eos;
    r->notify = p->notify;
    r->notify_ctx = p->notify_ctx;
    r->t_submit = util_now();
    r->eng = e;

    pthread_mutex_lock(&e->mu);
    int rc = ENGINE_OK;
    if (atomic_load(&e->stopping)) rc = ENGINE_ERR_STOPPED;
    else if (e->n_queued >= e->p.max_queued + engine_free_slots(e)) rc = ENGINE_ERR_QUEUE_FULL;
    if (rc == ENGINE_OK) {
        if (e->tail) e->tail->next = r;
        else e->head = r;
        e->tail = r;
        e->n_queued++;
        pthread_cond_signal(&e->cv);
    }
    pthread_mutex_unlock(&e->mu);
    if (rc != ENGINE_OK) {
        request_free(r);
        return rc;
    }
    *out = r;
    return ENGINE_OK;
}

/* Generated text of the running request and how much of it is published. */
typedef struct {
    char *buf;
    size_t len, cap, emitted;
} gen_text;

static int gen_append(gen_text *g, const char *s, size_t n) {
    if (g->len + n + 1 > g->cap) {
        size_t cap = (g->len + n + 1) * 2;
        char *q = realloc(g->buf, cap);
        if (!q) return -1;
        g->buf = q;
        g->cap = cap;
    }
    memcpy(g->buf + g->len, s, n);
    g->len += n;
    g->buf[g->len] = 0;
    return 0;
}

/* Looks for a stop string in g from byte `from` on (minus overlap). Returns
 * the earliest match position, or -1. */
static long find_stop(const engine_request *r, const gen_text *g, size_t from) {
    long best = -1;
    for (int i = 0; i < r->n_stop; i++) {
        size_t sl = strlen(r->stop[i]);
        size_t start = from >= sl - 1 ? from - (sl - 1) : 0;
        if (start < g->emitted) start = g->emitted;
        for (size_t p = start; p + sl <= g->len; p++) {
            if (best >= 0 && (long)p >= best) break;
            if (memcmp(g->buf + p, r->stop[i], sl) == 0) {
                best = (long)p;
                break;
            }
        }
    }
    return best;
}

/* Bytes at the end of g that are a proper prefix of some stop string: they
 * cannot be published yet. */
static size_t stop_holdback(const engine_request *r, const gen_text *g) {
    size_t hold = 0;
    for (int i = 0; i < r->n_stop; i++) {
        size_t sl = strlen(r->stop[i]);
        for (size_t k = sl - 1; k > hold; k--) {
            if (k > g->len - g->emitted) continue;
            if (memcmp(g->buf + g->len - k, r->stop[i], k) == 0) {
                hold = k;
                break;
            }
        }
    }
    return hold;
}

static engine_finish interrupted(engine *e, engine_request *r) {
    if (atomic_load(&e->stopping)) return ENGINE_FINISH_ABORT;
    if (atomic_load(&r->cancel)) return ENGINE_FINISH_CANCEL;
    return ENGINE_FINISH_NONE;
}

/* Fills *lp for token `id` from raw logits (vocab): log-softmax in double,
 * and the n_top largest (ties to the lower id). */
static void logprob_entry(const float *logits, int vocab, int32_t id, int n_top, engine_logprob *lp) {
    float mx = logits[0];
    for (int i = 1; i < vocab; i++)
        if (logits[i] > mx) mx = logits[i];
    double sum = 0.0;
    for (int i = 0; i < vocab; i++) sum += exp((double)logits[i] - mx);
    double lse = mx + log(sum);
    lp->id = id;
    lp->logprob = (float)(logits[id] - lse);
    lp->n_top = 0;
    for (int i = 0; i < vocab && n_top > 0; i++) { /* insertion into a short sorted list */
        int k = lp->n_top;
        if (k == n_top && !(logits[i] > logits[lp->top_ids[k - 1]])) continue;
        if (k < n_top) lp->n_top++;
        else k--;
        while (k > 0 && logits[i] > logits[lp->top_ids[k - 1]]) {
            lp->top_ids[k] = lp->top_ids[k - 1];
            k--;
        }
        lp->top_ids[k] = i;
    }
    for (int k = 0; k < lp->n_top; k++) lp->top_logprobs[k] = (float)(logits[lp->top_ids[k]] - lse);
}

/* ---- the scheduler (engine thread) ----
 * A sequence is a request taken off the queue: its forward_state (block
 * table in the shared KV cache, Engram history), sampler, detokenizer and
 * generated text. Each step:
 *   1. running sequences that were cancelled (or all, when stopping) finish
 *      and give their blocks back;
 *   2. running sequences, oldest first, get their next piece of work within
 *      the token budget: a prompt chunk or one decode token; when the cache
 *      cannot hold it, the youngest running sequence is preempted (its
 *      blocks freed, to be recomputed later), the sequence itself last;
 *   3. waiting sequences (preempted ones first, then the queue, FCFS) are
 *      admitted while --max-num-seqs, the budget and free blocks allow;
 *   4. all scheduled pieces run as one forward pass (forward_batch: the
 *      step's tokens are hashed for Engram first, so its table rows are
 *      known before the pass, then every weight is read once for all);
 *   5. each sequence that has caught up takes its next token (the
 *      backend's argmax for plain greedy requests, else the sampler on the
 *      logits) and publishes text.
 * Batch invariance: the CPU backend computes every token's row the same way
 * whatever else is in the step, and however a prompt is cut into chunks, so
 * a sequence's logits are bit for bit those of the sequence running alone.
 * A recomputed sequence replays its generated tokens without sampling. */

typedef struct seq {
    engine_request *r;
    uint64_t arrival;    /* admission order: smaller is older */
    forward_state *st;   /* NULL while preempted */
    sampler *smp;
    tokenizer_stream *ts;
    gen_text g;
    int32_t *out_ids;    /* (max_tokens) generated ids */
    int n_out;
    int n_fed_max;       /* most tokens ever fed (for the gates' ids) */
    int piece;           /* tokens scheduled this step, 0: none */
} seq;

/* The tokens a sequence feeds, in order: its prompt then its generated ids. */
static int32_t seq_token(const seq *s, int i) {
    return i < s->r->n_prompt ? s->r->prompt[i] : s->out_ids[i - s->r->n_prompt];
}

/* The next piece of s: a prompt chunk aligned at multiples of chunk, else
 * one token (a replayed or the last sampled one). */
static int seq_next_piece(const engine *e, const seq *s) {
    int pos = s->st ? forward_state_pos(s->st) : 0, np = s->r->n_prompt;
    if (pos < np) return np - pos < e->chunk ? np - pos : e->chunk;
    return 1;
}

static void seq_release_state(engine *e, seq *s) {
    if (!s->st) return;
    forward_state_reset(s->st); /* blocks back to the cache */
    e->free_states[e->n_free_states++] = s->st;
    s->st = NULL;
}

static int seq_take_state(engine *e, seq *s) {
    if (e->n_free_states > 0) s->st = e->free_states[--e->n_free_states];
    else if (forward_state_create(e->fc, e->kv, e->ctx, &s->st) != FORWARD_OK) return -1;
    return 0;
}

/* Candidates per row that backend_ops.sample hands back: 8 KiB a row
 * instead of the whole vocabulary (600 KiB for 151,936 ids). */
#define SAMPLE_CANDIDATES 1024
#define SAMPLE_MIN_ROWS 6

/* Whether s samples through backend_ops.sample: the engine has it on, and
 * nothing needs the whole row on the host (logprobs read every logit; top-k
 * between SAMPLE_CANDIDATES and the vocabulary would leave a tail the op does
 * not sum). Greedy requests with biases or penalties take it too (the first
 * candidate is their argmax). The row comes down only when the candidates do
 * not settle the token (sampler_sample_candidates). */
static bool seq_device_sample(const engine *e, const seq *s) {
    return e->dev_sample && !s->r->lp && sampler_candidates_ok(s->smp, SAMPLE_CANDIDATES);
}

/* Greedy with nothing that needs the logits on the host: the backend's
 * argmax is the token (the sampler's own rule, lowest id on ties). */
static bool seq_pure_greedy(const engine *e, const seq *s) {
    const engine_request *r = s->r;
    const sampler_params *p = &r->sp;
    return p->temperature <= 0.0f && !r->lp && r->n_bias == 0 && p->repetition_penalty == 1.0f &&
           p->presence_penalty == 0.0f && p->frequency_penalty == 0.0f && e->vocab == e->m->cfg.vocab_size;
}

/* Ends s: publishes the finish if it has none yet, records gate ids, frees
 * everything and drops the engine's reference. */
static void seq_finish(engine *e, seq *s, engine_finish f, int error) {
    engine_request *r = s->r;
    if (f != ENGINE_FINISH_NONE) request_publish(r, NULL, 0, s->n_out, f, error);
    seq_release_state(e, s);
    free(s->g.buf);
    free(s->out_ids);
    tokenizer_stream_destroy(s->ts);
    sampler_destroy(s->smp);
    engine_request_release(r);
    free(s);
}

/* Takes the next token of s (sampled from logits, or `next` when logits is
 * NULL: the backend's greedy pick), publishes text, and returns true when s
 * has finished (the finish published). */
static bool seq_sample(engine *e, seq *s, float *logits, int32_t next) {
    engine_request *r = s->r;
    const model_config *c = &e->m->cfg;
    if (logits) {
        if (r->lp) memcpy(e->raw_logits, logits, (size_t)e->vocab * sizeof(float)); /* the sampler edits them */
        for (int i = 0; i < r->n_bias; i++) logits[r->bias_ids[i]] += r->bias_vals[i];
        next = sampler_sample(s->smp, logits, r->prompt, r->n_prompt, s->out_ids, s->n_out);
        if (r->lp) logprob_entry(e->raw_logits, e->vocab, next, r->n_top, &r->lp[s->n_out]);
    }
    if (r->forced) next = r->forced[s->n_out]; /* engine_request_params.forced */
    s->out_ids[s->n_out++] = next;

    gen_text *g = &s->g;
    size_t scanned = g->len;
    char *piece = NULL;
    size_t plen = 0;
    int trc = s->ts ? tokenizer_stream_step(s->ts, next, &piece, &plen) : TOKENIZER_OK;
    if (trc == TOKENIZER_OK && plen && gen_append(g, piece, plen) != 0) trc = TOKENIZER_ERR_NOMEM;
    free(piece);

    bool eos = false;
    for (int k = 0; k < c->n_eos && !r->ignore_eos; k++) eos |= next == c->eos_token_ids[k];
    engine_finish f = eos ? ENGINE_FINISH_STOP : s->n_out >= r->max_tokens ? ENGINE_FINISH_LENGTH : ENGINE_FINISH_NONE;
    if (f != ENGINE_FINISH_NONE && s->ts && trc == TOKENIZER_OK) { /* the incomplete tail, if any */
        piece = NULL;
        plen = 0;
        trc = tokenizer_stream_flush(s->ts, &piece, &plen);
        if (trc == TOKENIZER_OK && plen && gen_append(g, piece, plen) != 0) trc = TOKENIZER_ERR_NOMEM;
        free(piece);
    }
    if (trc != TOKENIZER_OK) {
        request_publish(r, NULL, 0, s->n_out, ENGINE_FINISH_ERROR, ENGINE_ERR_NOMEM);
        return true;
    }
    long at = r->n_stop ? find_stop(r, g, scanned) : -1;
    size_t upto;
    if (at >= 0) {
        upto = (size_t)at;
        f = ENGINE_FINISH_STOP;
    } else {
        upto = f != ENGINE_FINISH_NONE ? g->len : g->len - stop_holdback(r, g);
    }
    if (f == ENGINE_FINISH_NONE) f = interrupted(e, r);
    request_publish(r, g->buf + g->emitted, upto - g->emitted, s->n_out, f, 0);
    g->emitted = upto;
    return f != ENGINE_FINISH_NONE;
}

/* Makes a sequence of a request just taken off the queue; NULL (and the
 * request finished with an error) when out of memory. */
static seq *seq_create(engine *e, engine_request *r) {
    seq *s = calloc(1, sizeof(*s));
    if (s) {
        s->r = r;
        s->arrival = e->next_arrival++;
        s->smp = sampler_create(e->vocab, r->sp);
        s->out_ids = malloc((size_t)r->max_tokens * sizeof(int32_t));
    }
    if (!s || !s->smp || !s->out_ids || (e->tok && tokenizer_stream_create(e->tok, true, &s->ts) != TOKENIZER_OK)) {
        request_publish(r, NULL, 0, 0, ENGINE_FINISH_ERROR, ENGINE_ERR_NOMEM);
        if (s) {
            s->ts = NULL;
            seq_finish(e, s, ENGINE_FINISH_NONE, 0);
        } else {
            engine_request_release(r);
        }
        return NULL;
    }
    pthread_mutex_lock(&r->mu);
    r->t_start = util_now();
    pthread_mutex_unlock(&r->mu);
    return s;
}

/* Frees the blocks of running sequence i (recomputed later) and moves it to
 * the front of the waiting sequences. */
static void sched_preempt(engine *e, int i) {
    seq *s = e->running[i];
    seq_release_state(e, s);
    s->piece = 0;
    memmove(e->running + i, e->running + i + 1, (size_t)(e->n_running - i - 1) * sizeof(seq *));
    e->n_running--;
    memmove(e->preempted + 1, e->preempted, (size_t)e->n_preempted * sizeof(seq *));
    e->preempted[0] = s;
    e->n_preempted++;
    e->n_preemptions++;
}

/* Inserts s among the running sequences, kept oldest first. */
static void sched_insert_running(engine *e, seq *s) {
    int i = e->n_running;
    while (i > 0 && e->running[i - 1]->arrival > s->arrival) {
        e->running[i] = e->running[i - 1];
        i--;
    }
    e->running[i] = s;
    e->n_running++;
}

static void sched_publish_stats(engine *e, int step_tokens) {
    pthread_mutex_lock(&e->mu);
    e->st_running = e->n_running;
    e->st_preempted = e->n_preempted;
    e->st_preemptions = e->n_preemptions;
    e->st_kv_used = kv_cache_used_blocks(e->kv);
    e->st_step_tokens = step_tokens;
    if (step_tokens > 0) {
        e->st_steps++;
        e->st_step_tokens_total += (uint64_t)step_tokens;
    }
    pthread_mutex_unlock(&e->mu);
}

/* After the pass: one backend_ops.sample over the items that left their
 * logits on the backend (biases and penalties applied there), its result
 * rows downloaded at once. Returns 0, or -1 when host memory runs out. */
static int sched_sample_on_backend(engine *e, int n_items) {
    int n = 0;
    for (int j = 0; j < n_items; j++) e->res[j] = e->row[j] >= 0 ? n++ : -1;
    if (n == 0) return 0;
    if (sampler_desc_begin(&e->desc, n)) return -1;
    for (int j = 0; j < n_items; j++) {
        if (e->res[j] < 0) continue;
        const seq *s = e->item_seq[j];
        const engine_request *r = s->r;
        if (sampler_desc_set(&e->desc, e->res[j], s->smp, e->row[j], r->bias_ids, r->bias_vals, r->n_bias,
                             r->prompt, r->n_prompt, s->out_ids, s->n_out))
            return -1;
    }
    backend *be = e->be;
    size_t bytes = sampler_desc_bytes(&e->desc);
    if (bytes > e->d_desc_bytes) { /* grows rarely: freeing backend memory drops recorded steps */
        backend_free(be, e->d_desc);
        e->d_desc_bytes = 0;
        if (!(e->d_desc = backend_alloc(be, 2 * bytes))) return -1;
        e->d_desc_bytes = 2 * bytes;
    }
    backend_upload(be, e->d_desc, e->desc.w, bytes);
    backend_sample(be, e->d_res, forward_ctx_logits(e->fc), e->d_desc, n, e->vocab, e->m->cfg.vocab_size, SAMPLE_CANDIDATES);
    backend_download(be, e->h_res, e->d_res, (size_t)n * SAMPLER_RESULT_BYTES(SAMPLE_CANDIDATES));
    return 0;
}

/* The token of item j, sampled on the backend: from its candidates, else
 * (rarely) from its row, downloaded with biases and penalties applied. */
static int32_t seq_take_candidate(engine *e, seq *s, int j) {
    int32_t next = sampler_sample_candidates(s->smp, e->h_res + (size_t)e->res[j] * SAMPLER_RESULT_BYTES(SAMPLE_CANDIDATES),
                                             SAMPLE_CANDIDATES);
    if (next >= 0) return next;
    size_t V = (size_t)e->m->cfg.vocab_size;
    float *row = e->logits + (size_t)j * V;
    backend_download(e->be, row, forward_ctx_logits(e->fc) + (size_t)e->row[j] * V, V * sizeof(float));
    return sampler_sample_applied(s->smp, row);
}

/* Lookahead: the Engram rows of prompt tokens that the next steps will run
 * go to the NVMe stores' prefetch threads now, so that their reads overlap
 * this step's pass instead of stalling a later one. In the order they will
 * run: the rest of the prompts in prefill, then the queued prompts (FCFS),
 * over a window of engram_lookahead tokens beyond this step; each request
 * remembers how far it was handed over, so a row is handed over once per
 * request. Queued requests may be aborted by engine_stop on another thread,
 * so their pieces are copied under mu and hashed outside it. */
#define AHEAD_SEGS 64 /* queued requests handed over per step, at most */

static void sched_prefetch_ahead(engine *e) {
    int window = e->p.engram_lookahead;
    if (window <= 0 || !e->ahead) return;
    for (int i = 0; i < e->n_running && window > 0; i++) {
        seq *s = e->running[i];
        engine_request *r = s->r;
        int start = forward_state_pos(s->st) + s->piece; /* after this step */
        if (start >= r->n_prompt) continue;
        int end = r->n_prompt - start < window ? r->n_prompt : start + window;
        window -= end - start;
        int from = r->pf_upto > start ? r->pf_upto : start;
        if (from < end) {
            int lead = from < FORWARD_AHEAD_LEAD ? from : FORWARD_AHEAD_LEAD;
            forward_prefetch_ahead(e->fc, r->prompt + from - lead, lead, end - from);
            r->pf_upto = end;
        }
    }
    if (window <= 0) return;
    struct ahead_seg { int at, lead, n; } seg[AHEAD_SEGS]; /* at: offset in e->ahead */
    int nseg = 0, used = 0;
    pthread_mutex_lock(&e->mu);
    for (engine_request *r = e->head; r && window > 0 && nseg < AHEAD_SEGS; r = r->next) {
        int end = r->n_prompt < window ? r->n_prompt : window;
        window -= end;
        if (r->pf_upto >= end) continue;
        int from = r->pf_upto, lead = from < FORWARD_AHEAD_LEAD ? from : FORWARD_AHEAD_LEAD;
        memcpy(e->ahead + used, r->prompt + from - lead, (size_t)(lead + end - from) * sizeof(int32_t));
        seg[nseg++] = (struct ahead_seg){used, lead, end - from};
        used += lead + end - from;
        r->pf_upto = end;
    }
    pthread_mutex_unlock(&e->mu);
    for (int k = 0; k < nseg; k++) forward_prefetch_ahead(e->fc, e->ahead + seg[k].at, seg[k].lead, seg[k].n);
}

/* Queued and preempted requests produce no output, so their readers stay
 * suspended, and a client that went away would be noticed only once its
 * request ran. Every POKE_SECONDS the engine marks progress on those that
 * have waited that long: a streamed response then sends an SSE keep-alive, a
 * suspended non-streamed one is resumed, and the server sees a closed
 * connection on that write or read and cancels the request. Cancelled
 * requests leave the queue here (within a second) instead of when they reach
 * its head and a free slot. Pokes are made outside mu (a notify resumes a
 * connection), on referenced requests. */
#define POKE_SECONDS 1.0

static void sched_poke_waiting(engine *e) {
    double now = util_now();
    if (now - e->last_poke < POKE_SECONDS) return;
    e->last_poke = now;
    for (int i = 0; i < e->n_preempted; i++) request_progress(e->preempted[i]->r);
    engine_request *dead = NULL;
    int n = 0;
    pthread_mutex_lock(&e->mu);
    if (e->n_queued > e->poke_cap) {
        engine_request **p = realloc(e->poke, (size_t)e->n_queued * sizeof(*p));
        if (p) e->poke = p, e->poke_cap = e->n_queued;
    }
    for (engine_request *prev = NULL, *r = e->head, *next; r; r = next) {
        next = r->next;
        if (atomic_load(&r->cancel)) { /* unlink: it never ran */
            if (prev) prev->next = next;
            else e->head = next;
            if (e->tail == r) e->tail = prev;
            e->n_queued--;
            r->next = dead;
            dead = r;
            continue;
        }
        if (n < e->poke_cap && now - r->t_submit >= POKE_SECONDS) { /* not the just-arrived */
            atomic_fetch_add(&r->refs, 1);
            e->poke[n++] = r;
        }
        prev = r;
    }
    pthread_mutex_unlock(&e->mu);
    for (int i = 0; i < n; i++) {
        request_progress(e->poke[i]);
        engine_request_release(e->poke[i]);
    }
    while (dead) {
        engine_request *next = dead->next;
        dead->next = NULL;
        request_publish(dead, NULL, 0, 0, ENGINE_FINISH_CANCEL, 0);
        engine_request_release(dead);
        dead = next;
    }
}

/* One scheduler step. Returns the tokens it ran. */
static int sched_step(engine *e) {
    /* 1. cancellations; waiting requests poked now and then */
    sched_poke_waiting(e);
    for (int i = 0; i < e->n_running; i++) {
        engine_finish f = interrupted(e, e->running[i]->r);
        if (f == ENGINE_FINISH_NONE) continue;
        seq_finish(e, e->running[i], f, 0);
        memmove(e->running + i, e->running + i + 1, (size_t)(e->n_running - i - 1) * sizeof(seq *));
        e->n_running--;
        i--;
    }
    for (int i = 0; i < e->n_preempted; i++) {
        engine_finish f = interrupted(e, e->preempted[i]->r);
        if (f == ENGINE_FINISH_NONE) continue;
        seq_finish(e, e->preempted[i], f, 0);
        memmove(e->preempted + i, e->preempted + i + 1, (size_t)(e->n_preempted - i - 1) * sizeof(seq *));
        e->n_preempted--;
        i--;
    }

    /* 2. running sequences, oldest first */
    int budget = e->p.max_num_batched_tokens, scheduled = 0;
    bool preempted_now = false;
    for (int i = 0; i < e->n_running; i++) {
        seq *s = e->running[i];
        s->piece = 0;
        int n = seq_next_piece(e, s);
        if (n > budget) continue;
        while (forward_state_reserve(s->st, n) == FORWARD_ERR_KV_FULL) {
            preempted_now = true;
            sched_preempt(e, e->n_running - 1); /* the youngest; s itself when it is */
            if (e->n_running == i) break;
        }
        if (i >= e->n_running) break; /* s was preempted */
        s->piece = n;
        budget -= n;
        scheduled++;
    }

    /* 3. admissions: preempted sequences first, then the queue. A queued
     * request is looked at and taken under mu (engine_stop empties the queue
     * from another thread). */
    while (!preempted_now && e->n_running < e->p.max_num_seqs && budget > 0) {
        seq *s = NULL;
        if (e->n_preempted > 0) {
            s = e->preempted[0];
            int np = s->r->n_prompt, n = np < e->chunk ? np : e->chunk;
            if (n > budget && scheduled > 0) break;
            if (kv_cache_blocks_for(e->kv, n) > kv_cache_free_blocks(e->kv)) break;
            memmove(e->preempted, e->preempted + 1, (size_t)(e->n_preempted - 1) * sizeof(seq *));
            e->n_preempted--;
        } else {
            pthread_mutex_lock(&e->mu);
            engine_request *r = e->head;
            bool take = r != NULL;
            if (take && !atomic_load(&r->cancel)) {
                int n = r->n_prompt < e->chunk ? r->n_prompt : e->chunk;
                take = !(n > budget && scheduled > 0) && kv_cache_blocks_for(e->kv, n) <= kv_cache_free_blocks(e->kv);
            }
            if (take) {
                e->head = r->next;
                if (!e->head) e->tail = NULL;
                r->next = NULL;
                e->n_queued--;
                e->n_taken++;
                r->taken = true;
            }
            pthread_mutex_unlock(&e->mu);
            if (!take) break;
            if (atomic_load(&r->cancel)) { /* never ran */
                request_publish(r, NULL, 0, 0, ENGINE_FINISH_CANCEL, 0);
                engine_request_release(r);
                continue;
            }
            if (!(s = seq_create(e, r))) continue;
        }
        int n = seq_next_piece(e, s);
        if (seq_take_state(e, s) != 0 || forward_state_reserve(s->st, n) != FORWARD_OK) {
            seq_finish(e, s, ENGINE_FINISH_ERROR, ENGINE_ERR_NOMEM);
            continue;
        }
        s->piece = n;
        budget -= n;
        scheduled++;
        sched_insert_running(e, s);
    }

    /* 4. run the scheduled pieces as one forward pass */
    int n_items = 0, tokens = 0, n_dev = 0;
    for (int i = 0; i < e->n_running; i++) { /* rows the backend would sample: worth it in numbers */
        seq *s = e->running[i];
        if (s->piece && forward_state_pos(s->st) + s->piece == s->r->n_prompt + s->n_out && !seq_pure_greedy(e, s))
            n_dev += seq_device_sample(e, s);
    }
    bool dev_step = n_dev >= e->dev_sample_min;
    for (int i = 0; i < e->n_running; i++) {
        seq *s = e->running[i];
        if (!s->piece) continue;
        engine_request *r = s->r;
        int pos = forward_state_pos(s->st), n = s->piece, known = r->n_prompt + s->n_out;
        bool caught_up = pos + n == known;
        int32_t *ids = e->ids + tokens;
        for (int k = 0; k < n; k++) ids[k] = seq_token(s, pos + k);
        bool greedy = seq_pure_greedy(e, s), dev = dev_step && !greedy && seq_device_sample(e, s);
        e->row[n_items] = -1;
        e->items[n_items] = (forward_item){
            .st = s->st, .ids = ids, .n = n,
            .logits = caught_up && !greedy && !dev ? e->logits + (size_t)n_items * e->m->cfg.vocab_size : NULL,
            .argmax = caught_up && greedy ? &e->next[n_items] : NULL,
            .logits_row = caught_up && dev ? &e->row[n_items] : NULL,
            .gates = r->gates ? r->gates + (size_t)pos * r->n_gate_layers : NULL};
        e->item_seq[n_items++] = s;
        tokens += n;
    }
    if (n_items == 0) return 0;
    sched_prefetch_ahead(e);
    int frc = forward_batch(e->fc, e->items, n_items);
    if (frc != FORWARD_OK) log_error("step of %d sequences: %s", n_items, forward_status_str(frc));
    else if (sched_sample_on_backend(e, n_items) != 0) {
        log_error("step of %d sequences: out of memory for the sampling description", n_items);
        frc = FORWARD_ERR_NOMEM; /* every sequence of the step fails, as for a failed pass */
    }

    /* 5. sample and publish, in running order */
    for (int j = 0; j < n_items; j++) {
        seq *s = e->item_seq[j];
        engine_request *r = s->r;
        const forward_item *it = &e->items[j];
        int pos = forward_state_pos(s->st) - (frc == FORWARD_OK ? it->n : 0);
        s->piece = 0;
        bool done = false;
        if (frc != FORWARD_OK) { /* the whole step failed: so does each of its sequences */
            request_publish(r, NULL, 0, s->n_out, ENGINE_FINISH_ERROR, ENGINE_ERR_FORWARD);
            done = true;
        } else {
            for (; s->n_fed_max < pos + it->n; s->n_fed_max++) /* written before any finish is published */
                if (r->gate_ids) r->gate_ids[s->n_fed_max] = seq_token(s, s->n_fed_max);
            if (r->gate_ids) r->n_gated = s->n_fed_max;
            if (it->logits_row) done = seq_sample(e, s, NULL, seq_take_candidate(e, s, j));
            else if (it->logits || it->argmax) done = seq_sample(e, s, it->logits, it->argmax ? *it->argmax : 0);
            else if (pos + it->n < r->n_prompt) request_progress(r);
        }
        if (done) {
            int i = 0;
            while (e->running[i] != s) i++;
            seq_finish(e, s, ENGINE_FINISH_NONE, 0);
            memmove(e->running + i, e->running + i + 1, (size_t)(e->n_running - i - 1) * sizeof(seq *));
            e->n_running--;
        }
    }
    return tokens;
}

static void *engine_main(void *arg) {
    engine *e = arg;
    if (e->p.threads > 0) omp_set_num_threads(e->p.threads);
    for (;;) {
        pthread_mutex_lock(&e->mu);
        while (!atomic_load(&e->stopping) && !e->head && e->n_running == 0 && e->n_preempted == 0)
            pthread_cond_wait(&e->cv, &e->mu);
        pthread_mutex_unlock(&e->mu);
        int tokens = sched_step(e); /* when stopping, step 1 aborts every sequence */
        sched_publish_stats(e, tokens);
        if (atomic_load(&e->stopping) && e->n_running == 0 && e->n_preempted == 0) break;
    }
    return NULL;
}

/* The KV cache a GPU can hold: what is left of gpu_memory_utilization of its
 * memory once the weights, the step scratch and the Engram caches are in,
 * whole blocks, at most max_num_seqs full contexts (more could never be
 * used). Returns 0, or -1 with a message when not even one block fits. */
static int kv_tokens_from_memory(engine *e, int *out, char *err, size_t errlen) {
    size_t fr = 0, total = 0;
    backend_mem_info(e->be, &fr, &total);
    const model_config *c = &e->m->cfg;
    double util = e->p.gpu_memory_utilization > 0 && e->p.gpu_memory_utilization <= 1 ? e->p.gpu_memory_utilization
                                                                                        : 0.9;
    double keep = (1.0 - util) * (double)total, room = (double)fr - keep;
    double per_token = (double)c->n_layers * 2.0 * c->n_kv_heads * c->head_dim * backend_kv_elem_bytes(e->be);
    int bs = e->p.kv_block_size > 0 ? e->p.kv_block_size : 16;
    double blocks = room > 0 ? floor(room / (per_token * bs)) : 0;
    double most = (double)e->p.max_num_seqs * e->ctx;
    if (blocks * bs > most) blocks = ceil(most / bs);
    if (blocks < 1) {
        snprintf(err, errlen,
                 "no %s memory left for a KV cache: %.2f of %.2f GB free, and --gpu-memory-utilization %.2f keeps "
                 "%.2f GB back; raise it or lower --max-num-batched-tokens / --engram-hbm-cache",
                 backend_name(e->be), fr / 1e9, total / 1e9, util, keep / 1e9);
        return -1;
    }
    *out = (int)(blocks * bs);
    return 0;
}

int engine_create(const engine_params *p, engine **out, char *err, size_t errlen) {
    *out = NULL;
    backend_params bp = backend_default_params();
    bp.cuda_graphs = p->cuda_graphs;
    bp.cuda_profile = p->cuda_profile;
    backend *be = backend_select(p->device, &bp, err, errlen);
    if (!be) return ENGINE_ERR_DEVICE;
    engine *e = calloc(1, sizeof(*e));
    if (!e) {
        backend_destroy(be);
        snprintf(err, errlen, "out of memory");
        return ENGINE_ERR_NOMEM;
    }
    e->be = be; /* owned from here: engine_destroy frees it */
    e->p = *p;
    e->p.model_dir = e->p.synthetic = e->p.synthetic_table_dir = NULL;
    if (e->p.max_queued < 0) e->p.max_queued = 0;
    if (e->p.prefill_chunk < 1) e->p.prefill_chunk = 256;
    if (e->p.max_num_seqs < 1) e->p.max_num_seqs = 16;
    if (e->p.max_num_batched_tokens < 1) e->p.max_num_batched_tokens = 512;
    if (e->p.kv_block_size < 1) e->p.kv_block_size = 16;
    if (e->p.engram_lookahead < 0) e->p.engram_lookahead = 0;
    if (e->p.engram_lookahead > (1 << 24)) e->p.engram_lookahead = 1 << 24;
    e->chunk = e->p.prefill_chunk < e->p.max_num_batched_tokens ? e->p.prefill_chunk : e->p.max_num_batched_tokens;
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->cv, NULL);
    atomic_init(&e->stopping, false);
    e->stopped = true; /* nothing to stop until the thread runs */

    int rc = ENGINE_ERR_LOAD;
    model_synthetic_params msp = {.table_dir = p->synthetic_table_dir, .store = p->engram_store};
    if (p->synthetic ? model_synthetic_ex(p->synthetic, p->synthetic_seed, &msp, &e->m, err, errlen) != MODEL_OK
                     : model_load(p->model_dir, &e->m, err, errlen) != MODEL_OK)
        goto fail;
    if (p->engram_tables && model_engram_use_tables(e->m, p->engram_tables, &p->engram_store, err, errlen))
        goto fail;
    char terr[512] = "a synthetic model has none";
    if (p->synthetic || tokenizer_load(p->model_dir, &e->tok, terr, sizeof(terr)) != TOKENIZER_OK) {
        e->tok = NULL;
        log_warn("no tokenizer (%s): requests must come as token ids", terr);
    }
    e->ctx = e->m->cfg.max_position_embeddings;
    e->vocab = model_sampling_vocab(e->m);
    rc = ENGINE_ERR_NOMEM;
    if (forward_ctx_create(e->m, be, e->p.max_num_batched_tokens, e->p.max_num_seqs, &e->fc, err, errlen) !=
        FORWARD_OK)
        goto fail;
    size_t S = (size_t)e->p.max_num_seqs;
    e->logits = malloc(S * (size_t)e->m->cfg.vocab_size * sizeof(float));
    e->raw_logits = malloc((size_t)e->m->cfg.vocab_size * sizeof(float));
    e->ids = malloc((size_t)e->p.max_num_batched_tokens * sizeof(int32_t));
    if (e->p.engram_lookahead > 0 && forward_ctx_prefetches_ahead(e->fc)) /* off when this fails: a hint */
        e->ahead = malloc(((size_t)AHEAD_SEGS * FORWARD_AHEAD_LEAD + (size_t)e->p.engram_lookahead) * sizeof(int32_t));
    e->next = malloc(S * sizeof(int32_t));
    e->row = malloc(S * sizeof(int32_t));
    e->res = malloc(S * sizeof(int));
    /* sample_on_backend: 0 never, 1 always (the CPU too: tests), -1 (auto)
     * where the logits are not host memory already. */
    int sob = e->p.sample_on_backend;
    e->dev_sample = backend_has(be, sample) && (sob >= 0 ? sob != 0 : strcmp(backend_name(be), "cpu") != 0);
    /* The CUDA op runs one block per row, so a step's rows cost about one
     * row's time: on an H100 274 us against 71 us to download one row, 217
     * for 4, 724 for 16 (gpu-sampling-parity). Below SAMPLE_MIN_ROWS rows the
     * step downloads them; sample_on_backend 1 takes the op always. */
    e->dev_sample_min = sob == 1 ? 1 : SAMPLE_MIN_ROWS;
    if (e->dev_sample) {
        e->d_res = backend_alloc(be, S * SAMPLER_RESULT_BYTES(SAMPLE_CANDIDATES));
        e->h_res = malloc(S * SAMPLER_RESULT_BYTES(SAMPLE_CANDIDATES));
    }
    e->items = malloc(S * sizeof(*e->items));
    e->item_seq = malloc(S * sizeof(*e->item_seq));
    e->running = calloc(S, sizeof(*e->running));
    e->preempted = calloc(S, sizeof(*e->preempted));
    e->free_states = calloc(S, sizeof(*e->free_states));
    int kv_tokens = e->p.kv_cache_tokens > 0 ? e->p.kv_cache_tokens : e->ctx;
    if (e->p.kv_cache_tokens <= 0 && backend_has(be, mem_info) && kv_tokens_from_memory(e, &kv_tokens, err, errlen)) goto fail;
    if (!e->logits || !e->raw_logits || !e->ids || !e->next || !e->row || !e->res ||
        (e->dev_sample && (!e->d_res || !e->h_res)) || !e->items || !e->item_seq || !e->running ||
        !e->preempted || !e->free_states ||
        forward_kv_cache_create(e->fc, kv_tokens, e->p.kv_block_size, &e->kv) != KV_CACHE_OK) {
        snprintf(err, errlen, "out of %s memory for a KV cache of %d tokens", backend_name(be), kv_tokens);
        goto fail;
    }
    if (pthread_create(&e->thread, NULL, engine_main, e) != 0) {
        snprintf(err, errlen, "cannot start the engine thread");
        goto fail;
    }
    e->thread_started = true;
    e->stopped = false;
    *out = e;
    return ENGINE_OK;
fail:
    engine_destroy(e);
    return rc;
}

void engine_stop(engine *e) {
    if (!e || e->stopped) return;
    pthread_mutex_lock(&e->mu);
    atomic_store(&e->stopping, true);
    engine_request *q = e->head;
    e->head = e->tail = NULL;
    e->n_queued = 0;
    pthread_cond_broadcast(&e->cv);
    pthread_mutex_unlock(&e->mu);
    while (q) { /* queued requests never ran */
        engine_request *next = q->next;
        request_publish(q, NULL, 0, 0, ENGINE_FINISH_ABORT, 0);
        engine_request_release(q);
        q = next;
    }
    if (e->thread_started) pthread_join(e->thread, NULL);
    e->thread_started = false;
    e->stopped = true;
}

void engine_destroy(engine *e) {
    if (!e) return;
    engine_stop(e);
    for (int i = 0; i < e->n_free_states; i++) forward_state_destroy(e->free_states[i]);
    kv_cache_destroy(e->kv);
    forward_ctx_destroy(e->fc);
    free(e->next);
    free(e->row);
    free(e->res);
    if (e->be) {
        backend_free(e->be, e->d_desc);
        backend_free(e->be, e->d_res);
    }
    backend_destroy(e->be); /* after everything in its memory */
    free(e->h_res);
    sampler_desc_free(&e->desc);
    free(e->items);
    free(e->item_seq);
    free(e->free_states);
    free(e->running);
    free(e->preempted);
    free(e->logits);
    free(e->raw_logits);
    free(e->ids);
    free(e->ahead);
    free(e->poke);
    tokenizer_destroy(e->tok);
    model_destroy(e->m);
    pthread_cond_destroy(&e->cv);
    pthread_mutex_destroy(&e->mu);
    free(e);
}
