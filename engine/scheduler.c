/* The scheduler (engine thread): continuous batching over the paged KV
 * cache. Each step admits, preempts and runs sequences as described below,
 * hands the Engram rows of the prompts to come to the prefetch threads
 * (lookahead), and pokes waiting requests so that gone clients are noticed. */
#include <stdlib.h>
#include <string.h>

#include "engine/engine_internal.h"
#include "base/util.h"

/* ---- the scheduler (engine thread) ----
 * A sequence is a request taken off the queue: its forward_state (block
 * table in the shared KV cache, Engram history), sampler, detokenizer and
 * generated text. Each step:
 *   1. running sequences that were cancelled (or all, when stopping) finish
 *      and give their blocks back;
 *   2. running sequences, oldest first, get their next piece of work within
 *      the token budget: a prompt chunk or one decode token; when the cache
 *      cannot hold it, the youngest running sequence is preempted (its
 *      blocks freed, to be recomputed later), the sequence itself last.
 *      With --max-prefill-tokens-decoding N and a sequence decoding, the
 *      decode tokens go first and the prompt chunks after them share N
 *      tokens, cut to fit (see sched_budget);
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
 * A recomputed sequence replays its generated tokens without sampling.
 * engine_warmup's request (engine.c) takes the same phases, but looks up
 * and registers no prefix-cache block, and its steps count in no stat. */

/* What a step may still take. tokens: of --max-num-batched-tokens. prompt:
 * prompt tokens left under --max-prefill-tokens-decoding, or -1 when that
 * does not apply this step (off, or no sequence decoding): then a prompt
 * chunk goes whole or waits for a step with room, as every chunk did
 * before the cap. Under the cap a chunk is cut to what is left, so the
 * oldest prompt in prefill runs at least min(N, tokens left after the
 * decodes) of its tokens every step: prompts never stall while decodes run
 * unless the decodes alone fill --max-num-batched-tokens. A chunk cut
 * anywhere computes the same rows (batch invariance, above). */
typedef struct {
    int tokens, prompt;
} sched_budget;

/* The budget of a step: the prompt cap applies when it is set and a running
 * sequence is past its prompt (its next piece is a decode token). */
static sched_budget sched_step_budget(const engine *e) {
    sched_budget b = {e->p.max_num_batched_tokens, -1};
    for (int i = 0; i < e->n_running && e->p.max_prefill_tokens_decoding > 0; i++)
        if (forward_state_pos(e->running[i]->st) >= e->running[i]->r->n_prompt) {
            b.prompt = e->p.max_prefill_tokens_decoding;
            break;
        }
    return b;
}

/* A piece of n tokens at position pos of r within budget b: a prompt chunk
 * cut to the prompt cap (and to the step's tokens) when it applies. */
static int sched_cut(const sched_budget *b, const engine_request *r, int pos, int n) {
    if (b->prompt < 0 || pos >= r->n_prompt) return n;
    int room = b->prompt < b->tokens ? b->prompt : b->tokens;
    return n < room ? n : room;
}

/* Takes a piece of n tokens at position pos of r out of b. */
static void sched_take(sched_budget *b, const engine_request *r, int pos, int n) {
    b->tokens -= n;
    if (b->prompt >= 0 && pos < r->n_prompt) b->prompt -= n;
}

/* Removes list[i] of the *n sequences in list, keeping their order. */
static void list_remove(seq **list, int *n, int i) {
    memmove(list + i, list + i + 1, (size_t)(*n - i - 1) * sizeof(seq *));
    (*n)--;
}

/* Frees the blocks of running sequence i (recomputed later) and moves it to
 * the front of the waiting sequences. */
static void sched_preempt(engine *e, int i) {
    seq *s = e->running[i];
    engine__seq_release_state(e, s);
    s->piece = 0;
    list_remove(e->running, &e->n_running, i);
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

/* The bucket of engine_stats.decode_step_prompt_hist that n prompt tokens fall in. */
static int sched_prompt_bucket(int n) {
    int k = 0;
    while (k < ENGINE_PROMPT_BUCKETS - 1 && n > engine_prompt_bucket_le(k)) k++;
    return k;
}

/* step_tokens: the step's tokens, prompt_tokens of them from prompts;
 * decodes: its decode tokens. */
static void sched_publish_stats(engine *e, int step_tokens, int prompt_tokens, int decodes) {
    pthread_mutex_lock(&e->mu);
    e->st_running = e->n_running;
    e->st_preempted = e->n_preempted;
    e->st_preemptions = e->n_preemptions;
    e->st_kv_used = kv_cache_used_blocks(e->kv);
    e->st_prefix_queries = e->prefix_queries;
    e->st_prefix_hits = e->prefix_hits;
    e->st_prefix_cached = kv_cache_cached_blocks(e->kv);
    e->st_prefix_evictions = kv_cache_evictions(e->kv);
    e->st_step_tokens = step_tokens;
    e->st_masks = e->n_masks;
    e->st_mask_seconds = e->mask_seconds;
    e->st_host_gap = e->host_gap;
    e->st_host_gap_steps = e->host_gap_steps;
    if (step_tokens > 0) {
        e->st_steps++;
        e->st_step_tokens_total += (uint64_t)step_tokens;
    }
    if (decodes > 0) {
        e->st_decode_steps++;
        e->st_decode_prompt_tokens += prompt_tokens;
        e->st_decode_prompt_hist[sched_prompt_bucket(prompt_tokens)]++;
        if (prompt_tokens > e->st_decode_prompt_max) e->st_decode_prompt_max = prompt_tokens;
    }
    pthread_mutex_unlock(&e->mu);
}

/* Lookahead: the Engram rows of prompt tokens that the next steps will run
 * go to the NVMe stores' prefetch threads now, so that their reads overlap
 * this step's pass instead of stalling a later one. In the order they will
 * run: the rest of the prompts in prefill, then the queued prompts (FCFS),
 * over a window of engram_lookahead tokens beyond this step; each request
 * remembers how far it was handed over, so a row is handed over once per
 * request. Queued requests may be aborted by engine_stop on another thread,
 * so their pieces are copied under mu and hashed outside it. */
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
    for (int i = 0; i < e->n_preempted; i++) engine__request_progress(e->preempted[i]->r);
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
        engine__request_progress(e->poke[i]);
        engine_request_release(e->poke[i]);
    }
    while (dead) {
        engine_request *next = dead->next;
        dead->next = NULL;
        engine__request_publish(dead, NULL, 0, 0, ENGINE_FINISH_CANCEL, 0);
        engine_request_release(dead);
        dead = next;
    }
}

/* ---- admission with prefix caching ----
 * A waiting request looks up the leading full blocks of its tokens (the
 * prompt, and for a preempted sequence what it generated too) in the
 * prefix cache, takes those it finds and computes the rest, always its last
 * token at least (whose logits it needs). The blocks it fills are
 * registered after each step. Two requests that begin with the same blocks
 * not yet cached: the second is held back (with the queue behind it, FCFS)
 * while the first, running, has not computed the block where the second's
 * hits stop, so the shared blocks are computed once; it is then admitted
 * with those blocks. Requests asking for Engram gates compute every token
 * (their gates are the pass's), but their blocks are cached too. */

/* A waiting sequence's tokens from the start, contiguous: its prompt, or
 * for a preempted sequence that generated tokens, a copy with them in
 * e->toks. *n: how many. NULL when memory runs out (then no lookup). */
static const int32_t *sched_tokens(engine *e, const engine_request *r, const seq *s, int *n) {
    int n_out = s ? s->n_out : 0;
    *n = r->n_prompt + n_out;
    if (n_out == 0) return r->prompt;
    if (*n > e->toks_cap) {
        int32_t *t = realloc(e->toks, (size_t)*n * sizeof(int32_t));
        if (!t) return NULL;
        e->toks = t;
        e->toks_cap = *n;
    }
    memcpy(e->toks, r->prompt, (size_t)r->n_prompt * sizeof(int32_t));
    memcpy(e->toks + r->n_prompt, s->out_ids, (size_t)n_out * sizeof(int32_t));
    return e->toks;
}

static bool same_salt(const char *a, const char *b) { return !a ? !b : (b && !strcmp(a, b)); }

/* Whether a running sequence will compute (and register) block k of ids
 * (n of them) soon: it holds the same tokens up to that block's end under
 * the same salt, and has not passed the block's end yet. */
static bool sched_block_pending(engine *e, const engine_request *r, const int32_t *ids, int n, int k) {
    int bs = kv_cache_block_size(e->kv), end = (k + 1) * bs;
    for (int i = 0; i < e->n_running; i++) {
        const seq *t = e->running[i];
        const engine_request *tr = t->r;
        if (tr->warmup || forward_state_pos(t->st) >= end || tr->n_prompt + t->n_out < end ||
            !same_salt(tr->cache_salt, r->cache_salt)) /* a warm-up registers nothing */
            continue;
        bool same = true;
        for (int p = 0; p < end && same; p++) same = engine__seq_token(t, p) == ids[p];
        if (same && end < n) return true;
    }
    return false;
}

/* Whether a sequence's first piece fits in this step (within the budget, or
 * the step's only piece, and the free blocks), with the blocks the prefix
 * cache has or, when those do not fit, without. Returns the cached blocks
 * to take (0: none), or -1: not this step. */
static int sched_fits(engine *e, const engine_request *r, const seq *s, const sched_budget *b, int scheduled) {
    int budget = b->tokens;
    int n_known, free_blocks = kv_cache_free_blocks(e->kv), np = r->n_prompt;
    const int32_t *ids = e->prefix && !r->gates && !r->warmup ? sched_tokens(e, r, s, &n_known) : NULL;
    if (ids) {
        int bs = kv_cache_block_size(e->kv), idle = 0;
        int k = kv_cache_prefix_probe(e->kv, ids, n_known, r->cache_salt, (n_known - 1) / bs, &idle, NULL);
        if ((k + 1) * bs < n_known && sched_block_pending(e, r, ids, n_known, k)) return -1;
        int pos = k * bs, n = sched_cut(b, r, pos, pos < np ? (np - pos < e->chunk ? np - pos : e->chunk) : 1);
        if (k > 0 && n > 0 && !(n > budget && scheduled > 0) && kv_cache_blocks_for(e->kv, n) + idle <= free_blocks)
            return k;
    }
    int n = sched_cut(b, r, 0, np < e->chunk ? np : e->chunk);
    return n > 0 && !(n > budget && scheduled > 0) && kv_cache_blocks_for(e->kv, n) <= free_blocks ? 0 : -1;
}

/* The state of a sequence being admitted, with `hit` cached blocks taken
 * (see sched_fits). Returns 0, or -1 out of memory. */
static int sched_start(engine *e, seq *s, int hit, bool first) {
    if (engine__seq_take_state(e, s) != 0) return -1;
    engine_request *r = s->r;
    int n_known = 0;
    /* a warm-up's table never begins: none of its blocks is registered */
    const int32_t *ids = e->prefix && !r->warmup ? sched_tokens(e, r, s, &n_known) : NULL;
    int reused = ids ? ranks_state_begin(e->ranks, s->slot, r->cache_salt, ids, n_known, hit) : 0;
    if (ids && !r->gates) {
        e->prefix_queries += n_known;
        e->prefix_hits += reused;
    }
    if (first) {
        pthread_mutex_lock(&r->mu);
        r->n_cached = reused < r->n_prompt ? reused : r->n_prompt;
        pthread_mutex_unlock(&r->mu);
    }
    return 0;
}

/* 1. The sequences of list (*n of them) whose request was cancelled (every
 * one, when stopping) finish and give their blocks back. */
static void sched_drop_interrupted(engine *e, seq **list, int *n) {
    for (int i = 0; i < *n; i++) {
        engine_finish f = engine__interrupted(e, list[i]->r);
        if (f == ENGINE_FINISH_NONE) continue;
        engine__seq_finish(e, list[i], f, 0);
        list_remove(list, n, i);
        i--;
    }
}

/* Which running sequences sched_continue takes. */
enum { PIECES_ALL, PIECES_DECODE, PIECES_PROMPT };

/* Running sequences of kind `which`, oldest first, get their next piece
 * within *b (*scheduled counts them); when the cache cannot hold one, the
 * youngest running sequence is preempted, the sequence itself last (a
 * younger one may have been given its piece by an earlier call: it loses
 * it). Returns true when one was preempted. */
static bool sched_continue(engine *e, sched_budget *b, int *scheduled, int which) {
    bool preempted_now = false;
    for (int i = 0; i < e->n_running; i++) {
        seq *s = e->running[i];
        int pos = forward_state_pos(s->st);
        if (which != PIECES_ALL && (pos < s->r->n_prompt) != (which == PIECES_PROMPT)) continue;
        int n = sched_cut(b, s->r, pos, engine__seq_next_piece(e, s));
        if (n == 0 || n > b->tokens) continue;
        while (ranks_state_reserve(e->ranks, s->slot, n) == FORWARD_ERR_KV_FULL) {
            preempted_now = true;
            sched_preempt(e, e->n_running - 1); /* the youngest; s itself when it is */
            if (e->n_running == i) break;
        }
        if (i >= e->n_running) break; /* s was preempted */
        s->piece = n;
        sched_take(b, s->r, pos, n);
        (*scheduled)++;
    }
    return preempted_now;
}

/* 2. Running sequences get their next piece within *b, oldest first; under
 * the prompt cap the decode tokens first, then the prompt chunks in what is
 * left. Returns true when one was preempted (nothing is admitted in this
 * step then). */
static bool sched_continue_running(engine *e, sched_budget *b, int *scheduled) {
    for (int i = 0; i < e->n_running; i++) e->running[i]->piece = 0;
    if (b->prompt < 0) return sched_continue(e, b, scheduled, PIECES_ALL);
    bool preempted_now = sched_continue(e, b, scheduled, PIECES_DECODE);
    return sched_continue(e, b, scheduled, PIECES_PROMPT) || preempted_now;
}

/* The queue's head, taken off the queue (it holds a batch slot from now on)
 * when it is cancelled or its first piece fits (*hit: sched_fits); NULL
 * otherwise. Looked at and taken under mu: engine_stop empties the queue
 * from another thread. */
static engine_request *sched_take_queued(engine *e, const sched_budget *b, int scheduled, int *hit) {
    pthread_mutex_lock(&e->mu);
    engine_request *r = e->head;
    bool take = r != NULL;
    *hit = 0;
    if (take && !atomic_load(&r->cancel)) take = (*hit = sched_fits(e, r, NULL, b, scheduled)) >= 0;
    if (take) {
        e->head = r->next;
        if (!e->head) e->tail = NULL;
        r->next = NULL;
        e->n_queued--;
        e->n_taken++;
        r->taken = true;
    }
    pthread_mutex_unlock(&e->mu);
    return take ? r : NULL;
}

/* 3. Admissions while --max-num-seqs, the budget and free blocks allow:
 * preempted sequences first, then the queue (FCFS). */
static void sched_admit(engine *e, sched_budget *b, int scheduled) {
    while (e->n_running < e->p.max_num_seqs && b->tokens > 0 && b->prompt != 0) {
        seq *s = NULL;
        int hit;
        bool first = e->n_preempted == 0;
        if (!first) {
            s = e->preempted[0];
            if ((hit = sched_fits(e, s->r, s, b, scheduled)) < 0) break;
            list_remove(e->preempted, &e->n_preempted, 0);
        } else {
            engine_request *r = sched_take_queued(e, b, scheduled, &hit);
            if (!r) break;
            if (atomic_load(&r->cancel)) { /* never ran */
                engine__request_publish(r, NULL, 0, 0, ENGINE_FINISH_CANCEL, 0);
                engine_request_release(r);
                continue;
            }
            if (!(s = engine__seq_create(e, r))) continue;
        }
        int n = 0, pos = 0;
        if (sched_start(e, s, hit, first) != 0 ||
            ranks_state_reserve(e->ranks, s->slot, n = sched_cut(b, s->r, pos = forward_state_pos(s->st),
                                                                  engine__seq_next_piece(e, s))) != FORWARD_OK) {
            engine__seq_finish(e, s, ENGINE_FINISH_ERROR, ENGINE_ERR_NOMEM);
            continue;
        }
        s->piece = n;
        sched_take(b, s->r, pos, n);
        scheduled++;
        sched_insert_running(e, s);
    }
}

/* 4. The scheduled pieces as the step's items, in running order: each
 * sequence that catches up with this piece asks for its next token's
 * logits, as the backend's argmax (plain greedy), a row left on the backend
 * for backend_ops.sample or sample_argmax (greedy with a grammar's mask,
 * biases or penalties), or a host copy. Returns the number of items;
 * *tokens: the step's tokens, *prompt of them prompt tokens; *decodes: its
 * decode tokens. */
static int sched_build_items(engine *e, int *tokens, int *prompt, int *decodes) {
    int n_items = 0, n_dev = 0;
    for (int i = 0; i < e->n_running; i++) { /* rows the backend would sample: worth it in numbers */
        seq *s = e->running[i];
        if (s->piece && forward_state_pos(s->st) + s->piece == s->r->n_prompt + s->n_out)
            n_dev += engine__seq_device_sample(e, s);
    }
    bool dev_step = n_dev >= e->dev_sample_min;
    *tokens = *prompt = *decodes = 0;
    for (int i = 0; i < e->n_running; i++) {
        seq *s = e->running[i];
        if (!s->piece) continue;
        engine_request *r = s->r;
        int pos = forward_state_pos(s->st), n = s->piece, known = r->n_prompt + s->n_out;
        bool caught_up = pos + n == known;
        int32_t *ids = e->ids + *tokens;
        for (int k = 0; k < n; k++) ids[k] = engine__seq_token(s, pos + k);
        bool greedy = engine__seq_pure_greedy(e, s);
        bool dev = !greedy && (engine__seq_device_greedy(e, s) || (dev_step && engine__seq_device_sample(e, s)));
        e->row[n_items] = -1;
        e->items[n_items] = (forward_item){
            .st = s->st, .ids = ids, .n = n,
            .logits = caught_up && !greedy && !dev ? e->logits + (size_t)n_items * e->m->cfg.vocab_size : NULL,
            .argmax = caught_up && greedy ? &e->next[n_items] : NULL,
            .logits_row = caught_up && dev ? &e->row[n_items] : NULL,
            .gates = r->gates ? r->gates + (size_t)pos * r->n_gate_layers : NULL};
        e->item_slot[n_items] = s->slot;
        e->item_seq[n_items++] = s;
        *tokens += n;
        if (pos < r->n_prompt) *prompt += n;
        else (*decodes)++;
    }
    return n_items;
}

/* 5. After the pass (frc its status): each sequence that has caught up
 * takes its next token and publishes text, in running order; finished ones
 * leave. When the pass failed, so does each sequence of the step. */
static void sched_take_tokens(engine *e, int n_items, int frc) {
    for (int j = 0; j < n_items; j++) {
        seq *s = e->item_seq[j];
        engine_request *r = s->r;
        const forward_item *it = &e->items[j];
        int pos = forward_state_pos(s->st) - (frc == FORWARD_OK ? it->n : 0);
        s->piece = 0;
        bool done = false;
        if (frc != FORWARD_OK) { /* the whole step failed: so does each of its sequences */
            engine__request_publish(r, NULL, 0, s->n_out, ENGINE_FINISH_ERROR, ENGINE_ERR_FORWARD);
            done = true;
        } else {
            for (; s->n_fed_max < pos + it->n; s->n_fed_max++) /* written before any finish is published */
                if (r->gate_ids) r->gate_ids[s->n_fed_max] = engine__seq_token(s, s->n_fed_max);
            if (r->gate_ids) r->n_gated = s->n_fed_max;
            if (it->logits_row) done = engine__seq_sample_row(e, s, j);
            else if (it->logits || it->argmax)
                done = engine__seq_sample(e, s, it->logits, it->argmax ? *it->argmax : 0);
            else if (pos + it->n < r->n_prompt) engine__request_progress(r);
        }
        if (done) {
            int i = 0;
            while (e->running[i] != s) i++;
            engine__seq_finish(e, s, ENGINE_FINISH_NONE, 0);
            list_remove(e->running, &e->n_running, i);
        }
    }
}

/* One scheduler step, phases 1 to 5 above. Returns the tokens it ran,
 * *prompt of them prompt tokens, and *decodes its decode tokens; *warm: every
 * item was engine_warmup's (the step is then counted nowhere). */
static int sched_run_step(engine *e, int *prompt, int *decodes, bool *warm) {
    if (e->n_running == 0) e->pass_end = 0; /* it may have waited for work since: no gap to count */
    sched_poke_waiting(e); /* waiting requests poked now and then */
    sched_drop_interrupted(e, e->running, &e->n_running);
    sched_drop_interrupted(e, e->preempted, &e->n_preempted);
    sched_budget b = sched_step_budget(e);
    int scheduled = 0;
    if (!sched_continue_running(e, &b, &scheduled)) sched_admit(e, &b, scheduled);
    int tokens, n_items = sched_build_items(e, &tokens, prompt, decodes);
    if (n_items == 0) return 0;
    *warm = atomic_load(&e->warming); /* only while engine_warmup runs: every item its request's */
    for (int j = 0; j < n_items && *warm; j++) *warm = e->item_seq[j]->r->warmup;
    sched_prefetch_ahead(e);
    engine__masks_begin(e, n_items); /* the grammar masks meanwhile, on the worker */
    double t_pass = util_now(), plan = forward_ctx_plan_seconds(e->fc);
    int frc = ranks_step(e->ranks, e->items, e->item_slot, n_items); /* forward_batch on every rank */
    if (e->pass_end > 0 && !*warm) { /* engine_stats.host_gap_seconds: since the last pass, and this one's planning */
        e->host_gap += t_pass - e->pass_end + forward_ctx_plan_seconds(e->fc) - plan;
        e->host_gap_steps++;
    }
    e->pass_end = util_now();
    engine__masks_wait(e);
    if (frc != FORWARD_OK) log_error("step of %d sequences: %s", n_items, forward_status_str(frc));
    else if (engine__sample_on_backend(e, n_items) != 0) {
        log_error("step of %d sequences: out of memory for the sampling description", n_items);
        frc = FORWARD_ERR_NOMEM; /* every sequence of the step fails, as for a failed pass */
    }
    sched_take_tokens(e, n_items, frc);
    return tokens;
}

void engine__sched_step(engine *e) {
    int prompt = 0, decodes = 0;
    bool warm = false;
    int tokens = sched_run_step(e, &prompt, &decodes, &warm);
    engine__wakes_flush(e); /* the readers of what the step published, woken by the waker thread */
    if (warm) tokens = prompt = decodes = 0; /* engine_warmup's steps: the gauges only */
    sched_publish_stats(e, tokens, prompt, decodes);
}
