/* The engine (see engine.h): create, submit, stop, destroy, the accessors
 * the server reads, and the engine thread, which runs the scheduler
 * (scheduler.c) step after step and sleeps while there is nothing to run.
 * Requests (request.c), their text and stop strings (holdback.c) and
 * running sequences (sequence.c) have their own files; engine_internal.h
 * holds the structs they share. */
#include <errno.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/engine_internal.h"
#include "base/util.h"

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
    p.enable_prefix_caching = 1;
    p.engram_lookahead = 2048;
    p.engram_hot_save_interval = 0; /* at shutdown only: a periodic write pauses the steps */
    p.sample_on_backend = -1;
    p.cuda_graphs = 1;
    p.tensor_parallel_size = p.expert_parallel_size = 1;
    p.engram_store = engram_store_default_params();
    return p;
}

/* ---- what the server reads ---- */

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
    out->decode_steps = e->st_decode_steps;
    out->decode_step_prompt_tokens = e->st_decode_prompt_tokens;
    memcpy(out->decode_step_prompt_hist, e->st_decode_prompt_hist, sizeof(out->decode_step_prompt_hist));
    out->decode_step_prompt_max = e->st_decode_prompt_max;
    out->grammar_masks = e->st_masks;
    out->grammar_mask_seconds = e->st_mask_seconds;
    out->prefix_queries_tokens = e->st_prefix_queries;
    out->prefix_hits_tokens = e->st_prefix_hits;
    out->prefix_cached_blocks = e->st_prefix_cached;
    out->prefix_evictions = e->st_prefix_evictions;
    out->host_gap_seconds = e->st_host_gap;
    out->host_gap_steps = e->st_host_gap_steps;
    pthread_mutex_unlock(&e->mu);
}

int engine_cuda_profile_mode(const char *v) {
    return !strcmp(v, "0") || !strcmp(v, "off")  ? 0
           : !strcmp(v, "1") || !strcmp(v, "ops") ? 1
           : !strcmp(v, "graphs")                 ? 2
                                                  : -1;
}

int engine_prompt_bucket_le(int k) {
    return k <= 0 ? 0 : k < ENGINE_PROMPT_BUCKETS - 1 ? 1 << (k - 1) : -1;
}

/* Batch slots a newly queued request could take at the next step without
 * waiting (caller holds mu): those not held by a request taken off the queue
 * and not finished (running or preempted). Requests a free slot takes are
 * not "waiting": --max-queued-requests bounds the rest. */
static int engine_free_slots(const engine *e) {
    int free = e->p.max_num_seqs - e->n_taken;
    return free > 0 ? free : 0;
}

engine_warm engine_engram_warm(const engine *e) {
    _Static_assert((int)ENGINE_WARM_WARMING == FORWARD_HOT_WARMING && (int)ENGINE_WARM_READY == FORWARD_HOT_READY,
                   "engine_warm mirrors FORWARD_HOT_*");
    return (engine_warm)atomic_load(&((engine *)e)->hot);
}

/* ---- the engine ---- */

/* r at the queue's tail, the engine thread woken: under e->mu. */
static void enqueue_locked(engine *e, engine_request *r) {
    if (e->tail) e->tail->next = r;
    else e->head = r;
    e->tail = r;
    e->n_queued++;
    pthread_cond_signal(&e->cv);
}

int engine_submit(engine *e, const engine_request_params *p, engine_request **out) {
    *out = NULL;
    engine_request *r;
    int rc = engine__request_create(e, p, &r);
    if (rc != ENGINE_OK) return rc;
    pthread_mutex_lock(&e->mu);
    if (atomic_load(&e->stopping)) rc = ENGINE_ERR_STOPPED;
    else if (e->n_queued >= e->p.max_queued + engine_free_slots(e)) rc = ENGINE_ERR_QUEUE_FULL;
    if (rc == ENGINE_OK) enqueue_locked(e, r);
    pthread_mutex_unlock(&e->mu);
    if (rc != ENGINE_OK) {
        engine__request_free(r);
        return rc;
    }
    *out = r;
    return ENGINE_OK;
}

/* An idle engine thread waits for work, and with hot-row files for the next
 * save, or, while a store warms, a while (to warm the hot-row caches once
 * it is done). */
static void wait_for_work(engine *e, double next_save) {
    pthread_mutex_lock(&e->mu);
    while (!atomic_load(&e->stopping) && !e->head && e->n_running == 0 && e->n_preempted == 0) {
        int hot = atomic_load(&e->hot);
        if (hot == FORWARD_HOT_NONE || (hot == FORWARD_HOT_READY && next_save <= 0)) {
            pthread_cond_wait(&e->cv, &e->mu);
            continue;
        }
        double wait = hot == FORWARD_HOT_WARMING ? 0.05 : next_save - util_now();
        if (wait <= 0) break;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts); /* the condition variable's clock */
        double t = (double)ts.tv_sec + ts.tv_nsec * 1e-9 + wait;
        ts.tv_sec = (time_t)t;
        ts.tv_nsec = (long)((t - (double)ts.tv_sec) * 1e9);
        if (pthread_cond_timedwait(&e->cv, &e->mu, &ts) == ETIMEDOUT) break;
    }
    pthread_mutex_unlock(&e->mu);
}

/* After a step: once engine_warmup's request has finished, and the step
 * that finished it has published its stats, its caller may go on. All: at
 * the thread's end, whatever became of it. */
static void warmup_check(engine *e, bool all) {
    if (!atomic_load(&e->warming)) return;
    pthread_mutex_lock(&e->mu); /* then the request's: the lock order */
    engine_request *w = e->warm;
    bool done = all;
    if (w && !done) {
        pthread_mutex_lock(&w->mu);
        done = w->finish != ENGINE_FINISH_NONE;
        pthread_mutex_unlock(&w->mu);
    }
    if (done) {
        e->warm = NULL;
        atomic_store(&e->warming, false);
        pthread_cond_broadcast(&e->warm_cv);
    }
    pthread_mutex_unlock(&e->mu);
}

static void *engine_main(void *arg) {
    engine *e = arg;
    if (e->p.threads > 0) omp_set_num_threads(e->p.threads);
    int every = e->p.engram_hot_save_interval;
    double next_save = every > 0 ? util_now() + every : 0;
    for (;;) {
        wait_for_work(e, next_save);
        if (atomic_load(&e->hot) != FORWARD_HOT_NONE) { /* between steps: the hot-row caches are idle */
            bool save = next_save > 0 && util_now() >= next_save;
            atomic_store(&e->hot, forward_ctx_engram_hot(e->fc, save));
            if (save) next_save = util_now() + every;
        }
        engine__sched_step(e); /* when stopping, its first phase aborts every sequence */
        warmup_check(e, false);
        if (atomic_load(&e->stopping) && e->n_running == 0 && e->n_preempted == 0) break;
    }
    warmup_check(e, true);
    if (atomic_load(&e->hot) != FORWARD_HOT_NONE) forward_ctx_engram_hot(e->fc, true); /* for the next start */
    return NULL;
}

/* The KV cache a GPU can hold: what is left of gpu_memory_utilization of its
 * memory once the weights, the step scratch and the Engram caches are in,
 * whole blocks, at most max_num_seqs full contexts (more could never be
 * used). Returns 0, or -1 with a message when not even one block fits. */
static int kv_tokens_from_memory(engine *e, int *out, char *err, size_t errlen) {
    size_t fr = 0, total = 0;
    backend_mem_info(e->be, &fr, &total);
    const model_config *c = &ranks_model(e->ranks)->cfg; /* a rank's KV heads, each rank on its own device */
    double util = e->p.gpu_memory_utilization > 0 && e->p.gpu_memory_utilization <= 1 ? e->p.gpu_memory_utilization
                                                                                        : 0.9;
    double keep = (1.0 - util) * (double)total, room = (double)fr - keep;
    int bs = e->p.kv_block_size > 0 ? e->p.kv_block_size : 16;
    double per_token = (double)c->n_layers * 2.0 * c->n_kv_heads * c->head_dim * backend_kv_elem_bytes(e->be) +
                       (e->prefix ? (double)forward_ctx_prefix_aux_bytes(e->fc) / bs : 0.0); /* a block's Engram snapshot */
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
    bp.cpu_threads = p->threads; /* the CPU backend's pool; omp_set_num_threads in engine_main covers the rest */
    /* the ranks (ranks.h): 0 means 1; on the CPU they share its threads */
    int tp = p->tensor_parallel_size ? p->tensor_parallel_size : 1, ep = p->expert_parallel_size ? p->expert_parallel_size : 1;
    int W = tp > ep ? tp : ep;
    bp.cpu_threads = ranks_cpu_threads(p->threads, tp, ep);
    if ((bp.cpu_isa = backend_cpu_isa_parse(p->cpu_isa ? p->cpu_isa : "auto")) < 0) {
        snprintf(err, errlen, "unknown cpu isa '%s' (expected auto, avx512, avx2, generic or avx512bf16)", p->cpu_isa);
        return ENGINE_ERR_DEVICE;
    }
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
    if (e->p.max_prefill_tokens_decoding < 0 || e->p.max_prefill_tokens_decoding >= e->p.max_num_batched_tokens)
        e->p.max_prefill_tokens_decoding = 0; /* the step's budget bounds prompts anyway */
    if (e->p.kv_block_size < 1) e->p.kv_block_size = 16;
    if (e->p.engram_lookahead < 0) e->p.engram_lookahead = 0;
    if (e->p.engram_lookahead > (1 << 24)) e->p.engram_lookahead = 1 << 24;
    e->chunk = e->p.prefill_chunk < e->p.max_num_batched_tokens ? e->p.prefill_chunk : e->p.max_num_batched_tokens;
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->cv, NULL);
    pthread_cond_init(&e->warm_cv, NULL);
    atomic_init(&e->warming, false);
    atomic_init(&e->stopping, false);
    e->stopped = true; /* nothing to stop until the thread runs */

    int rc = ENGINE_ERR_LOAD;
    model_synthetic_params msp = {.table_dir = p->synthetic_table_dir, .store = p->engram_store};
    if (p->synthetic ? model_synthetic_ex(p->synthetic, p->synthetic_seed, &msp, &e->m, err, errlen) != MODEL_OK
                     : model_load_ex(p->model_dir, backend_weight_align(be), &e->m, err, errlen) != MODEL_OK)
        goto fail;
    ranks_params rp = {.tp = tp, .ep = ep, .bp = bp, .max_tokens = e->p.max_num_batched_tokens,
                       .max_seqs = e->p.max_num_seqs, .engram_store = p->engram_tables != NULL};
    if (ranks_check(e->m, &rp, err, errlen)) { /* before any table file is written */
        rc = ENGINE_ERR_INVALID;
        goto fail;
    }
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
    if (ranks_create(e->m, be, &rp, &e->ranks, err, errlen)) goto fail;
    e->fc = ranks_ctx(e->ranks);
    if (W > 1) {
        char lay[256];
        ranks_describe(e->ranks, lay, sizeof(lay));
        log_info("%s", lay);
    }
    size_t S = (size_t)e->p.max_num_seqs;
    e->logits = malloc(S * (size_t)e->m->cfg.vocab_size * sizeof(float));
    e->raw_logits = malloc((size_t)e->m->cfg.vocab_size * sizeof(float));
    e->ids = malloc((size_t)e->p.max_num_batched_tokens * sizeof(int32_t));
    if (e->p.engram_lookahead > 0 && forward_ctx_prefetches_ahead(e->fc)) /* off when this fails: a hint */
        e->ahead = malloc(((size_t)AHEAD_SEGS * FORWARD_AHEAD_LEAD + (size_t)e->p.engram_lookahead) * sizeof(int32_t));
    e->next = malloc(S * sizeof(int32_t));
    e->row = malloc(S * sizeof(int32_t));
    e->res = malloc(S * sizeof(int));
    e->gallowed = malloc(S * sizeof(int));
    /* sample_on_backend: 0 never, 1 always (the CPU too: tests), -1 (auto)
     * where the logits are not host memory already. */
    int sob = e->p.sample_on_backend;
    bool ops = backend_has(be, sample) && backend_has(be, sample_argmax);
    e->dev_sample = ops && (sob >= 0 ? sob != 0 : strcmp(backend_name(be), "cpu") != 0);
    /* Greedy rows that the forward pass's argmax cannot serve (a grammar's
     * mask, biases, penalties) take sample_argmax on every backend, the CPU
     * too: no row copied, the masks made on the worker during the pass (CPU,
     * 64 constrained rows: 10% faster at 8k tokens, 40% at 151k; RESULTS.md). */
    e->dev_greedy = ops && sob != 0;
    /* The CUDA op runs one block per row, so a step's rows cost about one
     * row's time: on an H100 274 us against 71 us to download one row, 217
     * for 4, 724 for 16 (gpu-sampling-parity). Below SAMPLE_MIN_ROWS rows the
     * step downloads them; sample_on_backend 1 takes the op always. Greedy
     * rows (sample_argmax: one pass over a row) go to the backend in any number. */
    e->dev_sample_min = sob == 1 ? 1 : SAMPLE_MIN_ROWS;
    /* With the backend sampling, the engine thread mostly waits for the forward pass:
     * the grammar masks are made on a worker meanwhile. */
    if ((e->dev_sample || e->dev_greedy) && engine__masks_start(e)) goto fail;
    if (e->dev_sample || e->dev_greedy) {
        e->d_res = backend_alloc(be, S * SAMPLER_RESULT_BYTES(SAMPLE_CANDIDATES));
        e->h_res = malloc(S * SAMPLER_RESULT_BYTES(SAMPLE_CANDIDATES));
    }
    e->items = malloc(S * sizeof(*e->items));
    e->item_seq = malloc(S * sizeof(*e->item_seq));
    e->item_slot = malloc(S * sizeof(*e->item_slot));
    e->running = calloc(S, sizeof(*e->running));
    e->preempted = calloc(S, sizeof(*e->preempted));
    e->prefix = e->p.enable_prefix_caching != 0 && forward_ctx_prefix_cacheable(e->fc);
    if (e->p.enable_prefix_caching && !e->prefix)
        log_warn("prefix caching off: this model keeps per-sequence state outside the KV blocks");
    int kv_tokens = e->p.kv_cache_tokens > 0 ? e->p.kv_cache_tokens : e->ctx;
    if (e->p.kv_cache_tokens <= 0 && backend_has(be, mem_info) && kv_tokens_from_memory(e, &kv_tokens, err, errlen)) goto fail;
    if (!e->logits || !e->raw_logits || !e->ids || !e->next || !e->row || !e->res || !e->gallowed ||
        ((e->dev_sample || e->dev_greedy) && (!e->d_res || !e->h_res)) || !e->items || !e->item_seq ||
        !e->item_slot || !e->running || !e->preempted) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    if (ranks_kv_create(e->ranks, kv_tokens, e->p.kv_block_size, e->prefix ? e->p.prefix_cache_max_blocks : -1, e->ctx,
                        &e->kv, err, errlen) != KV_CACHE_OK)
        goto fail;
    /* warm start: WAIT has read the stores' hot rows at open; the hot-row
     * caches take theirs now, before any request */
    atomic_init(&e->hot, p->engram_store.warm_start != ENGRAM_STORE_WARM_OFF ? forward_ctx_engram_hot(e->fc, false)
                                                                            : FORWARD_HOT_NONE);
    if (engine__wakes_start(e) != 0) {
        snprintf(err, errlen, "cannot start the waker thread");
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

/* The warm-up is one request of the engine's own through the queue, the
 * scheduler and ranks_step like any other (so every rank and every op of a
 * first prefill and decode runs once), marked so that it leaves no trace: no
 * prefix-cache block looked up or registered (scheduler.c), its steps
 * counted in no engine_stats field, its blocks freed and its state slot reset
 * at its finish as any sequence's. Its prompt: spread-out valid ids. */
int engine_warmup(engine *e, int n_prompt, int n_decode, engine_warmup_info *out) {
    memset(out, 0, sizeof(*out));
    double t0 = util_now();
    int ctx = engine_context_length(e);
    if (n_decode > ctx - 2) n_decode = ctx - 2; /* the prompt's token, and the first from the prefill */
    if (n_decode < 0) n_decode = 0;
    if (n_prompt > e->chunk) n_prompt = e->chunk; /* one prefill step */
    if (n_prompt > ctx - 1 - n_decode) n_prompt = ctx - 1 - n_decode;
    if (n_prompt < 1) return ENGINE_ERR_INVALID;
    int32_t *ids = malloc((size_t)n_prompt * sizeof(int32_t));
    if (!ids) return ENGINE_ERR_NOMEM;
    for (int i = 0; i < n_prompt; i++) ids[i] = (int32_t)((1 + (uint64_t)i * 7919) % (uint64_t)e->vocab);
    engine_request_params p = {.prompt = ids, .n_prompt = n_prompt, .max_tokens = n_decode + 1,
                               .sampling = sampler_default_params(), .ignore_eos = true};
    p.sampling.temperature = 0; /* the plain greedy path: the backend's argmax */
    engine_request *r;
    int rc = engine__request_create(e, &p, &r);
    free(ids);
    if (rc != ENGINE_OK) return rc;
    r->warmup = true;
    pthread_mutex_lock(&e->mu);
    if (atomic_load(&e->stopping)) rc = ENGINE_ERR_STOPPED;
    else if (e->head || e->n_taken || e->warm) rc = ENGINE_ERR_INVALID; /* only on an idle engine */
    if (rc == ENGINE_OK) {
        e->warm = r;
        atomic_store(&e->warming, true);
        enqueue_locked(e, r);
        while (e->warm == r) pthread_cond_wait(&e->warm_cv, &e->mu);
    }
    pthread_mutex_unlock(&e->mu);
    if (rc != ENGINE_OK) {
        engine__request_free(r);
        return rc;
    }
    engine_output o;
    engine_request_read(r, &o, NULL, NULL);
    free(o.text);
    engine_request_release(r);
    if (o.finish == ENGINE_FINISH_ERROR) return o.error ? o.error : ENGINE_ERR_FORWARD;
    if (o.finish != ENGINE_FINISH_LENGTH) return ENGINE_ERR_STOPPED;
    out->n_prompt = n_prompt;
    out->n_decode = o.n_generated - 1; /* the first token came from the prefill */
    out->seconds = util_now() - t0;
    return ENGINE_OK;
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
        engine__request_publish(q, NULL, 0, 0, ENGINE_FINISH_ABORT, 0);
        engine_request_release(q);
        q = next;
    }
    if (e->thread_started) pthread_join(e->thread, NULL);
    e->thread_started = false;
    engine__wakes_stop(e); /* after the engine thread's last wakes */
    e->stopped = true;
}

void engine_destroy(engine *e) {
    if (!e) return;
    engine_stop(e);
    ranks_destroy(e->ranks); /* every rank's states, KV cache and context */
    free(e->next);
    grammar_vocab_destroy(e->gvocab);
    free(e->gmask);
    free(e->open_marker);
    free(e->open_ids);
    free(e->row);
    free(e->res);
    free(e->gallowed);
    engine__masks_stop(e);
    if (e->be) {
        backend_free(e->be, e->d_desc);
        backend_free(e->be, e->d_res);
    }
    backend_destroy(e->be); /* after everything in its memory */
    free(e->h_res);
    sampler_desc_free(&e->desc);
    free(e->items);
    free(e->item_seq);
    free(e->item_slot);
    free(e->running);
    free(e->preempted);
    free(e->logits);
    free(e->raw_logits);
    free(e->ids);
    free(e->ahead);
    free(e->poke);
    free(e->toks);
    tokenizer_destroy(e->tok);
    model_destroy(e->m);
    pthread_cond_destroy(&e->cv);
    pthread_cond_destroy(&e->warm_cv);
    pthread_mutex_destroy(&e->mu);
    free(e);
}
