/* A running request (seq, see engine_internal.h), engine thread only: its
 * forward state taken and given back, its pieces of work, and its next
 * token: sampled on the host from the step's logits, taken from the
 * backend's argmax or from the candidates backend_ops.sample left, then
 * detokenized and published (holdback.c decides how much). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine_internal.h"
#include "base/util.h"

engine_finish engine__interrupted(engine *e, engine_request *r) {
    if (atomic_load(&e->stopping)) return ENGINE_FINISH_ABORT;
    if (atomic_load(&r->cancel)) return ENGINE_FINISH_CANCEL;
    return ENGINE_FINISH_NONE;
}

int32_t engine__seq_token(const seq *s, int i) {
    return i < s->r->n_prompt ? s->r->prompt[i] : s->out_ids[i - s->r->n_prompt];
}

int engine__seq_next_piece(const engine *e, const seq *s) {
    int pos = s->st ? forward_state_pos(s->st) : 0, np = s->r->n_prompt;
    if (pos < np) return np - pos < e->chunk ? np - pos : e->chunk;
    return 1;
}

void engine__seq_release_state(engine *e, seq *s) {
    if (!s->st) return;
    ranks_state_release(e->ranks, s->slot); /* blocks back to the cache, on every rank */
    s->st = NULL;
}

int engine__seq_take_state(engine *e, seq *s) {
    s->slot = ranks_state_take(e->ranks, &s->st);
    return s->slot < 0 ? -1 : 0;
}

/* Whether s samples on the backend (a temperature above 0): the engine has
 * it on, and nothing needs the whole row on the host (logprobs read every
 * logit; top-k between SAMPLE_CANDIDATES and the vocabulary would leave a
 * tail the op does not sum). The row comes down only when the candidates do
 * not settle the token (sampler_sample_candidates). */
bool engine__seq_device_sample(const engine *e, const seq *s) {
    return e->dev_sample && s->r->sp.temperature > 0.0f && !s->r->lp &&
           sampler_candidates_ok(s->smp, SAMPLE_CANDIDATES);
}

/* Greedy rows need no candidates: only logprobs keep them on the host (the
 * row comes down when it holds a NaN). */
bool engine__seq_device_greedy(const engine *e, const seq *s) {
    return e->dev_greedy && s->r->sp.temperature <= 0.0f && !s->r->lp;
}

bool engine__seq_pure_greedy(const engine *e, const seq *s) {
    const engine_request *r = s->r;
    const sampler_params *p = &r->sp;
    return p->temperature <= 0.0f && !r->lp && !s->gm && r->n_bias == 0 && p->repetition_penalty == 1.0f &&
           p->presence_penalty == 0.0f && p->frequency_penalty == 0.0f && e->vocab == e->m->cfg.vocab_size;
}

void engine__seq_finish(engine *e, seq *s, engine_finish f, int error) {
    engine_request *r = s->r;
    if (f != ENGINE_FINISH_NONE) engine__request_publish(r, NULL, 0, s->n_out, f, error);
    engine__seq_release_state(e, s);
    strbuf_free(&s->g.text);
    free(s->out_ids);
    tokenizer_stream_destroy(s->ts);
    grammar_matcher_destroy(s->gm);
    sampler_destroy(s->smp);
    engine_request_release(r);
    free(s);
}

/* Where a constrained sequence is (seq.phase): in the grammar, or before it
 * in a reasoning block (engine_request_params.reasoning_open/close): at the
 * first token, which decides whether there is one, or inside it (where
 * nothing is masked). */
enum { SEQ_GRAMMAR, SEQ_FIRST, SEQ_REASONING };

/* Whether s's next token is masked: it has a grammar and is not inside a
 * reasoning block. */
static bool seq_masked(const seq *s) { return s->gm && s->phase != SEQ_REASONING; }

/* Gives gm the token put off by seq_advance, if any. Reads and writes s's
 * matcher alone: the mask worker runs it for the step's sequences. */
static void seq_take_pending(const engine *e, seq *s) {
    if (s->gm_pending < 0) return;
    if (!grammar_matcher_accept_token(s->gm, e->gvocab, s->gm_pending)) log_warn("a constrained token was not accepted");
    s->gm_pending = -1;
}

/* The grammar's allowed next tokens into dst; at SEQ_FIRST the tokens that
 * open a reasoning block too. Not for SEQ_REASONING. Reads e and s only, so
 * the mask worker runs it. Returns their number, or -1 out of memory. */
static int seq_mask_into(const engine *e, const seq *s, uint32_t *dst) {
    int n = grammar_matcher_mask(s->gm, e->gvocab, dst);
    for (int k = 0; n >= 0 && s->phase == SEQ_FIRST && k < e->n_open_ids; k++) {
        int32_t id = e->open_ids[k];
        if (!((dst[id / 32] >> (id & 31)) & 1)) dst[id / 32] |= 1u << (id & 31), n++;
    }
    return n;
}

/* This step's mask of s: the worker's when it made one, else made now
 * (timed for the metrics) in e->gmask. Returns the allowed tokens' number,
 * or -1 out of memory, and the mask in *mask. */
static int seq_grammar_mask(engine *e, seq *s, const uint32_t **mask) {
    if (s->pre_mask) {
        *mask = s->pre_mask;
        s->pre_mask = NULL;
        return s->pre_allowed;
    }
    seq_take_pending(e, s);
    double t0 = util_now();
    int n = seq_mask_into(e, s, e->gmask);
    e->mask_seconds += util_now() - t0;
    e->n_masks++;
    *mask = e->gmask;
    return n;
}

static void *mask_worker(void *arg) {
    engine *e = arg;
    size_t words = grammar_vocab_mask_words(e->gvocab);
    pthread_mutex_lock(&e->mw_mu);
    for (;;) {
        while (!e->mw_busy && !e->mw_stop) pthread_cond_wait(&e->mw_cv, &e->mw_mu);
        if (e->mw_stop) break;
        int n = e->mw_n;
        pthread_mutex_unlock(&e->mw_mu);
        long long count = 0;
        for (int j = 0; j < n; j++) seq_take_pending(e, e->item_seq[j]); /* the tokens the engine thread put off */
        double t0 = util_now();
        if (!words) words = grammar_vocab_mask_words(e->gvocab); /* the vocabulary came after the start */
        for (int j = 0; j < n; j++) {
            seq *s = e->item_seq[j];
            if (!s->mw_want) continue;
            uint32_t *dst = e->mw_rows + (size_t)j * words;
            s->pre_allowed = seq_mask_into(e, s, dst);
            s->pre_mask = dst;
            count++;
        }
        double dt = util_now() - t0;
        pthread_mutex_lock(&e->mw_mu);
        e->mw_masks += count;
        e->mw_seconds += dt;
        e->mw_busy = false;
        pthread_cond_broadcast(&e->mw_cv);
    }
    pthread_mutex_unlock(&e->mw_mu);
    return NULL;
}

int engine__masks_start(engine *e) {
    if (pthread_mutex_init(&e->mw_mu, NULL)) return -1;
    if (pthread_cond_init(&e->mw_cv, NULL)) {
        pthread_mutex_destroy(&e->mw_mu);
        return -1;
    }
    e->mw_started = true; /* the lock and condition exist from here; the thread on the first constrained step */
    return 0;
}

void engine__masks_stop(engine *e) {
    if (!e->mw_started) return;
    pthread_mutex_lock(&e->mw_mu);
    e->mw_stop = true;
    pthread_cond_broadcast(&e->mw_cv);
    pthread_mutex_unlock(&e->mw_mu);
    if (e->mw_thread_running) pthread_join(e->mw_thread, NULL);
    pthread_cond_destroy(&e->mw_cv);
    pthread_mutex_destroy(&e->mw_mu);
    backend_host_free(e->be, e->mw_rows);
    e->mw_rows = NULL;
    e->mw_started = false;
}

void engine__masks_begin(engine *e, int n_items) {
    if (!e->mw_started || !e->gvocab) return;
    int want = 0;
    for (int j = 0; j < n_items; j++) {
        seq *s = e->item_seq[j];
        const forward_item *it = &e->items[j];
        s->pre_mask = NULL;
        s->mw_want = seq_masked(s) && (it->logits || it->logits_row || it->argmax);
        want += s->mw_want;
    }
    if (!want) return;
    if (!e->mw_rows) { /* the first constrained step: the rows and the thread */
        size_t bytes = (size_t)e->p.max_num_seqs * grammar_vocab_mask_words(e->gvocab) * sizeof(uint32_t);
        e->mw_rows = backend_host_alloc(e->be, bytes); /* pinned on a GPU: they are uploaded as they are */
        if (!e->mw_rows || pthread_create(&e->mw_thread, NULL, mask_worker, e)) {
            backend_host_free(e->be, e->mw_rows);
            e->mw_rows = NULL;
            for (int j = 0; j < n_items; j++) e->item_seq[j]->mw_want = false; /* made on the engine thread, as before */
            return;
        }
        e->mw_thread_running = true;
    }
    pthread_mutex_lock(&e->mw_mu);
    e->mw_n = n_items;
    e->mw_busy = true;
    pthread_cond_broadcast(&e->mw_cv);
    pthread_mutex_unlock(&e->mw_mu);
}

void engine__masks_wait(engine *e) {
    if (!e->mw_started) return;
    pthread_mutex_lock(&e->mw_mu);
    while (e->mw_busy) pthread_cond_wait(&e->mw_cv, &e->mw_mu);
    e->n_masks += e->mw_masks;
    e->mask_seconds += e->mw_seconds;
    e->mw_masks = 0;
    e->mw_seconds = 0;
    pthread_mutex_unlock(&e->mw_mu);
}

/* A constrained request whose grammar allows nothing (allowed 0: only past
 * a matcher limit; the output so far is kept, not repaired) or ran out of
 * memory (-1) ends here. Returns whether it did. */
static bool seq_grammar_dead(engine_request *r, const seq *s, int allowed) {
    if (allowed > 0) return false;
    if (allowed < 0) {
        engine__request_publish(r, NULL, 0, s->n_out, ENGINE_FINISH_ERROR, ENGINE_ERR_NOMEM);
    } else {
        log_warn("a constrained request stopped: its grammar allows no token here");
        engine__request_publish(r, NULL, 0, s->n_out, ENGINE_FINISH_STOP, 0);
    }
    return true;
}

/* The grammar's mask on a row of logits: -inf for every token it does not
 * allow next. Returns the number of allowed tokens, or -1 out of memory. */
static int seq_mask(engine *e, seq *s, float *logits) {
    const uint32_t *mask;
    int n = seq_grammar_mask(e, s, &mask);
    if (n >= 0) sampler_apply_mask(logits, e->vocab, mask);
    return n;
}

/* Moves a constrained sequence past its sampled token next: through the
 * reasoning block while there is one (its close marker may span tokens),
 * then through the grammar (the token was allowed, so it is accepted; one
 * that cannot complete the output is put off, s->gm_pending, and taken
 * before the matcher is next read). Returns true when the output is
 * complete (nothing more may follow), or cannot go on: a token that closes
 * the reasoning block with bytes after the marker that the grammar refuses
 * (the output is kept, not repaired). */
static bool seq_advance(engine *e, seq *s, int32_t next) {
    const engine_request *r = s->r;
    size_t n;
    const char *b = grammar_vocab_token(e->gvocab, next, &n);
    bool eos = grammar_vocab_is_eos(e->gvocab, next);
    if (s->phase == SEQ_FIRST) { /* a block is there iff the output starts with its open marker */
        size_t k = strlen(r->reasoning_open);
        if (eos || n < k || memcmp(b, r->reasoning_open, k)) s->phase = SEQ_GRAMMAR;
        else s->phase = SEQ_REASONING, b += k, n -= k;
    }
    seq_take_pending(e, s);
    if (s->phase == SEQ_GRAMMAR) { /* the whole token is the grammar's */
        if (!eos && !grammar_matcher_may_end_after(s->gm, b, n)) {
            /* it cannot complete the output, so nothing here needs it taken yet: the mask worker takes
             * it before the next mask, during the next forward pass, off the engine thread, whose time
             * between steps a GPU waits for (without the worker, seq_grammar_mask takes it) */
            s->gm_pending = next;
            return false;
        }
        if (!grammar_matcher_accept_token(s->gm, e->gvocab, next)) log_warn("a constrained token was not accepted");
        return grammar_matcher_ended(s->gm);
    }
    if (eos) return false; /* the caller stops at EOS */
    size_t m = strlen(r->reasoning_close), i = 0;
    while (i < n && s->phase == SEQ_REASONING) { /* a window of the last m bytes */
        if (s->n_tail == (int)m) memmove(s->tail, s->tail + 1, m - 1), s->n_tail--;
        s->tail[s->n_tail++] = b[i++];
        if (s->n_tail == (int)m && !memcmp(s->tail, r->reasoning_close, m)) s->phase = SEQ_GRAMMAR;
    }
    if (s->phase == SEQ_GRAMMAR && !grammar_matcher_accept_bytes(s->gm, b + i, n - i)) {
        log_warn("a constrained request stopped: the text after its reasoning block is outside its grammar");
        return true;
    }
    return s->phase == SEQ_GRAMMAR && grammar_matcher_ended(s->gm);
}

bool engine__seq_sample(engine *e, seq *s, float *logits, int32_t next) {
    engine_request *r = s->r;
    const model_config *c = &e->m->cfg;
    bool grammar_done = false;
    if (logits) {
        if (r->lp) memcpy(e->raw_logits, logits, (size_t)e->vocab * sizeof(float)); /* the sampler edits them */
        for (int i = 0; i < r->n_bias; i++) logits[r->bias_ids[i]] += r->bias_vals[i];
        if (seq_grammar_dead(r, s, seq_masked(s) ? seq_mask(e, s, logits) : 1)) return true;
        next = sampler_sample(s->smp, logits, r->prompt, r->n_prompt, s->out_ids, s->n_out);
        if (r->lp) engine__logprob_entry(e->raw_logits, e->vocab, next, r->n_top, &r->lp[s->n_out]);
    }
    if (r->forced) next = r->forced[s->n_out]; /* engine_request_params.forced */
    s->out_ids[s->n_out++] = next;
    if (s->gm) grammar_done = seq_advance(e, s, next);

    bool eos = false;
    for (int k = 0; k < c->n_eos && !r->ignore_eos; k++) eos |= next == c->eos_token_ids[k];
    engine_finish f = eos || grammar_done ? ENGINE_FINISH_STOP
                      : s->n_out >= r->max_tokens ? ENGINE_FINISH_LENGTH : ENGINE_FINISH_NONE;
    gen_text *g = &s->g;
    size_t scanned = g->text.len;
    if (engine__gen_text_add(g, s->ts, next, f != ENGINE_FINISH_NONE) != TOKENIZER_OK) {
        engine__request_publish(r, NULL, 0, s->n_out, ENGINE_FINISH_ERROR, ENGINE_ERR_NOMEM);
        return true;
    }
    size_t upto = engine__gen_text_upto(r, g, scanned, &f);
    if (f == ENGINE_FINISH_NONE) f = engine__interrupted(e, r);
    const char *text = upto > g->emitted ? g->text.s + g->emitted : NULL; /* none yet: no NULL + 0 */
    engine__request_publish(r, text, upto - g->emitted, s->n_out, f, 0);
    g->emitted = upto;
    return f != ENGINE_FINISH_NONE;
}

/* The tokenizer's vocabulary as a grammar trie, made once (a second or so
 * for 151k tokens). Returns 0, or -1 out of memory. */
static int grammar_vocab_ready(engine *e) {
    if (e->gvocab) return 0;
    int n = e->vocab, rc = -1;
    size_t tv = tokenizer_vocab_size(e->tok);
    char **bytes = calloc((size_t)n, sizeof(char *));
    size_t *lens = calloc((size_t)n, sizeof(size_t));
    bool *special = calloc((size_t)n, 1);
    char err[200];
    if (!bytes || !lens || !special) goto out;
    for (int i = 0; i < n && (size_t)i < tv; i++) {
        special[i] = tokenizer_is_special(e->tok, i);
        if (tokenizer_token_bytes(e->tok, i, &bytes[i], &lens[i]) != TOKENIZER_OK) bytes[i] = NULL, lens[i] = 0;
    }
    const model_config *c = &e->m->cfg;
    if (grammar_vocab_create(n, (const char *const *)bytes, lens, special, c->eos_token_ids, c->n_eos, &e->gvocab, err,
                             sizeof(err)) != GRAMMAR_OK) {
        log_error("%s", err);
        goto out;
    }
    if (!(e->gmask = malloc(grammar_vocab_mask_words(e->gvocab) * sizeof(uint32_t)))) {
        grammar_vocab_destroy(e->gvocab);
        e->gvocab = NULL;
        goto out;
    }
    rc = 0;
out:
    for (int i = 0; bytes && i < n; i++) free(bytes[i]);
    free(bytes), free(lens), free(special);
    return rc;
}

/* The tokens whose bytes begin with open (a reasoning block's open marker;
 * special tokens and EOS left out: they are not in the text), found once
 * per marker. Returns 0, or -1 out of memory. */
static int open_ids_ready(engine *e, const char *open) {
    if (e->open_marker && !strcmp(e->open_marker, open)) return 0;
    free(e->open_marker), free(e->open_ids);
    e->open_marker = NULL, e->open_ids = NULL, e->n_open_ids = 0;
    size_t k = strlen(open), tv = tokenizer_vocab_size(e->tok);
    int n = 0;
    for (int pass = 0; pass < 2; pass++) { /* count, then fill */
        for (int32_t id = 0; id < e->vocab && (size_t)id < tv; id++) {
            size_t len;
            const char *b = grammar_vocab_token(e->gvocab, id, &len);
            if (len < k || memcmp(b, open, k) || tokenizer_is_special(e->tok, id) || grammar_vocab_is_eos(e->gvocab, id))
                continue;
            if (pass) e->open_ids[e->n_open_ids++] = id;
            else n++;
        }
        if (!pass && !(e->open_ids = malloc(((size_t)n + 1) * sizeof(int32_t)))) return -1;
    }
    if (!(e->open_marker = strdup(open))) return -1;
    return 0;
}

seq *engine__seq_create(engine *e, engine_request *r) {
    seq *s = calloc(1, sizeof(*s));
    if (s) {
        s->r = r;
        s->arrival = e->next_arrival++;
        s->smp = sampler_create(e->vocab, r->sp);
        s->out_ids = malloc((size_t)r->max_tokens * sizeof(int32_t));
        if (r->grammar && grammar_vocab_ready(e) == 0 && (!r->reasoning_open || open_ids_ready(e, r->reasoning_open) == 0))
            s->gm = grammar_matcher_create(r->grammar);
        s->phase = !r->reasoning_close ? SEQ_GRAMMAR : r->reasoning_open ? SEQ_FIRST : SEQ_REASONING;
        s->gm_pending = -1;
    }
    if (!s || !s->smp || !s->out_ids || (r->grammar && !s->gm) ||
        (e->tok && tokenizer_stream_create(e->tok, true, &s->ts) != TOKENIZER_OK)) {
        engine__request_publish(r, NULL, 0, 0, ENGINE_FINISH_ERROR, ENGINE_ERR_NOMEM);
        if (s) {
            s->ts = NULL;
            engine__seq_finish(e, s, ENGINE_FINISH_NONE, 0);
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

/* Biases and penalties are applied on the backend too (the description).
 * The description's rows: the sampled ones first (backend_ops.sample), then
 * the greedy ones (sample_argmax), whose ids follow the sampled rows' results
 * in d_res: one download for both. The grammar's masks are not copied into
 * the description: they go up from the worker's rows (item j's mask in slot
 * j, host_alloc'd: pinned on a GPU) right behind it, in a second upload. */
int engine__sample_on_backend(engine *e, int n_items) {
    int ns = 0, n = 0;
    for (int j = 0; j < n_items; j++) {
        n += e->row[j] >= 0;
        ns += e->row[j] >= 0 && !engine__seq_device_greedy(e, e->item_seq[j]);
    }
    e->n_sampled = ns;
    if (n == 0) return 0;
    for (int j = 0, a = 0, g = ns; j < n_items; j++)
        e->res[j] = e->row[j] < 0 ? -1 : engine__seq_device_greedy(e, e->item_seq[j]) ? g++ : a++;
    if (sampler_desc_begin(&e->desc, n)) return -1;
    size_t words = e->gvocab ? grammar_vocab_mask_words(e->gvocab) : 0;
    int n_slots = 0; /* the worker's rows 0 .. n_slots - 1 go up behind the description */
    for (int j = 0; j < n_items; j++) {
        if (e->res[j] < 0) continue;
        seq *s = e->item_seq[j];
        const engine_request *r = s->r;
        if (sampler_desc_set(&e->desc, e->res[j], s->smp, e->row[j], r->bias_ids, r->bias_vals, r->n_bias,
                             r->prompt, r->n_prompt, s->out_ids, s->n_out))
            return -1;
        e->gallowed[j] = 1; /* unconstrained, or in a reasoning block: no mask */
        if (seq_masked(s)) { /* the grammar's mask goes with the row (when it allows nothing, the row's result
                              * is unused) */
            const uint32_t *mask;
            e->gallowed[j] = seq_grammar_mask(e, s, &mask);
            if (e->mw_rows) {
                uint32_t *slot = e->mw_rows + (size_t)j * words;
                if (mask != slot) memcpy(slot, mask, words * sizeof(uint32_t)); /* made on this thread */
                n_slots = j + 1;
            } else if (sampler_desc_set_mask(&e->desc, e->res[j], mask, (int)words)) {
                return -1; /* no worker rows (out of memory at the start): copied in */
            }
        }
    }
    size_t at = e->desc.len; /* words: where the slots land */
    for (int j = 0; j < n_slots; j++)
        if (e->res[j] >= 0 && seq_masked(e->item_seq[j]))
            sampler_desc_mask_at(&e->desc, e->res[j], at + (size_t)j * words);
    backend *be = e->be;
    size_t bytes = sampler_desc_bytes(&e->desc), slot_bytes = (size_t)n_slots * words * sizeof(uint32_t);
    if (bytes + slot_bytes > e->d_desc_bytes) { /* grows rarely: freeing backend memory drops recorded steps */
        backend_free(be, e->d_desc);
        e->d_desc_bytes = 0;
        if (!(e->d_desc = backend_alloc(be, 2 * (bytes + slot_bytes)))) return -1;
        e->d_desc_bytes = 2 * (bytes + slot_bytes);
    }
    backend_upload(be, e->d_desc, e->desc.w, bytes);
    if (slot_bytes) backend_upload(be, (char *)e->d_desc + bytes, e->mw_rows, slot_bytes);
    float *logits = forward_ctx_logits(e->fc);
    int V = e->m->cfg.vocab_size;
    size_t sampled = (size_t)ns * SAMPLER_RESULT_BYTES(SAMPLE_CANDIDATES);
    if (ns) backend_sample(be, e->d_res, logits, e->d_desc, ns, e->vocab, V, SAMPLE_CANDIDATES);
    if (n > ns)
        backend_sample_argmax(be, (int32_t *)((char *)e->d_res + sampled), logits, e->d_desc, ns, n - ns, e->vocab, V);
    backend_download(be, e->h_res, e->d_res, sampled + (size_t)(n - ns) * sizeof(int32_t));
    return backend_take_failure(be) ? -1 : 0;
}

bool engine__seq_sample_row(engine *e, seq *s, int j) {
    if (s->gm && seq_grammar_dead(s->r, s, e->gallowed[j])) return true;
    return engine__seq_sample(e, s, NULL, engine__seq_take_candidate(e, s, j));
}

int32_t engine__seq_take_candidate(engine *e, seq *s, int j) {
    size_t rb = SAMPLER_RESULT_BYTES(SAMPLE_CANDIDATES);
    int32_t next;
    if (e->res[j] < e->n_sampled) {
        next = sampler_sample_candidates(s->smp, e->h_res + (size_t)e->res[j] * rb, SAMPLE_CANDIDATES);
    } else { /* a greedy row: its id, -1 when the row holds a NaN */
        size_t at = (size_t)e->n_sampled * rb + (size_t)(e->res[j] - e->n_sampled) * sizeof(int32_t);
        memcpy(&next, e->h_res + at, sizeof(next));
    }
    if (next >= 0) return next;
    size_t V = (size_t)e->m->cfg.vocab_size;
    float *row = e->logits + (size_t)j * V;
    backend_download(e->be, row, forward_ctx_logits(e->fc) + (size_t)e->row[j] * V, V * sizeof(float));
    return sampler_sample_applied(s->smp, row);
}
