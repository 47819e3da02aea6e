/* Request objects (see engine.h): what a request asked for, as owned copies,
 * and its output stream. The engine thread publishes text, progress and the
 * finish (engine__request_publish); any thread reads them
 * (engine_request_read), under the request's own lock; the waker thread
 * wakes the readers of a step's publishes. Also the logprobs of a sampled
 * token. */
#include <math.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine_internal.h"
#include "base/util.h"

void engine__request_free(engine_request *r) {
    free(r->prompt);
    for (int i = 0; i < r->n_stop; i++) free(r->stop[i]);
    free(r->bias_ids);
    free(r->bias_vals);
    free(r->gates);
    free(r->gate_ids);
    free(r->lp);
    free(r->forced);
    grammar_release(r->grammar);
    free(r->cache_salt);
    free(r->reasoning_open);
    free(r->reasoning_close);
    strbuf_free(&r->pend);
    pthread_mutex_destroy(&r->mu);
    free(r);
}

int engine__request_create(engine *e, const engine_request_params *p, engine_request **out) {
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
    if (p->grammar && (!e->tok || p->forced)) return ENGINE_ERR_INVALID; /* token bytes come from the tokenizer */
    if ((p->reasoning_open && (!p->reasoning_close || !p->reasoning_open[0] ||
                               strlen(p->reasoning_open) > ENGINE_MAX_MARKER)) ||
        (p->reasoning_close && (!p->reasoning_close[0] || strlen(p->reasoning_close) > ENGINE_MAX_MARKER)))
        return ENGINE_ERR_INVALID;
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
    if (p->cache_salt && p->cache_salt[0]) r->cache_salt = strdup(p->cache_salt);
    if (p->grammar && p->reasoning_close) {
        r->reasoning_close = strdup(p->reasoning_close);
        if (p->reasoning_open) r->reasoning_open = strdup(p->reasoning_open);
    }
    bool nomem = !r->prompt || (p->n_bias && (!r->bias_ids || !r->bias_vals)) || (p->logprobs && !r->lp) ||
                 (r->n_gate_layers && (!r->gates || !r->gate_ids)) || (p->forced && !r->forced) ||
                 (p->cache_salt && p->cache_salt[0] && !r->cache_salt) ||
                 (p->grammar && p->reasoning_close && !r->reasoning_close) ||
                 (p->grammar && p->reasoning_open && !r->reasoning_open);
    for (int i = 0; i < p->n_stop && !nomem; i++) {
        if (!(r->stop[i] = strdup(p->stop[i]))) nomem = true;
        r->n_stop = i + 1;
    }
    if (nomem) {
        engine__request_free(r);
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
    r->grammar = p->grammar ? grammar_retain(p->grammar) : NULL;
    r->notify = p->notify;
    r->notify_ctx = p->notify_ctx;
    r->t_submit = util_now();
    r->eng = e;
    *out = r;
    return ENGINE_OK;
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
    if (r && atomic_fetch_sub(&r->refs, 1) == 1) engine__request_free(r);
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

/* ---- wake-ups ----
 * A reader's notify costs far more than the publish that fires it (the
 * server resumes a connection: a lock and a write to libmicrohttpd's event
 * descriptor; bench-throughput signals a condition), and a decode step
 * publishes to every running request: 512 notifies a step were most of the
 * engine thread's time between two passes, which a GPU waits for. So the
 * engine thread only queues them (each with a reference), hands them to the
 * waker thread once a step (engine__wakes_flush), and goes on with the next
 * step while the waker calls them. Each call is made under the request's
 * lock, which engine_request_detach takes too: once detach returns no call
 * is under way or to come, however late the waker is. Lock order: r->mu,
 * then whatever the notify takes (as on_empty in engine_request_read). */

/* Calls r's notify, if it still has one. */
static void request_notify(engine_request *r) {
    pthread_mutex_lock(&r->mu);
    if (r->notify) r->notify(r->notify_ctx);
    pthread_mutex_unlock(&r->mu);
}

/* Appends n requests to the list *v of *len (room for *cap). Returns 0, or
 * -1 when out of memory (nothing appended). */
static int wake_append(engine_request ***v, int *len, int *cap, engine_request *const *r, int n) {
    if (*len + n > *cap) {
        int c = *cap ? *cap : 64;
        while (c < *len + n) c *= 2;
        engine_request **p = realloc(*v, (size_t)c * sizeof(*p));
        if (!p) return -1;
        *v = p, *cap = c;
    }
    memcpy(*v + *len, r, (size_t)n * sizeof(*r));
    *len += n;
    return 0;
}

/* r's reader is to be woken: queued for the waker when the engine thread
 * publishes, else (engine_stop's aborts of queued requests, or out of
 * memory) woken now. */
static void request_wake(engine_request *r) {
    engine *e = r->eng;
    if (e->wk_running && e->thread_started && pthread_equal(pthread_self(), e->thread)) {
        atomic_fetch_add(&r->refs, 1);
        if (wake_append(&e->wk_list, &e->wk_n, &e->wk_cap, &r, 1) == 0) return;
        engine_request_release(r); /* not the last: the caller holds one */
    }
    request_notify(r);
}

static void *waker_main(void *arg) {
    engine *e = arg;
    engine_request **mine = NULL; /* the batch being woken, (cap) */
    int cap = 0;
    pthread_mutex_lock(&e->wk_mu);
    for (;;) {
        while (!e->wk_todo_n && !e->wk_stop) pthread_cond_wait(&e->wk_cv, &e->wk_mu);
        if (!e->wk_todo_n) break; /* stopping, and every wake made */
        engine_request **batch = e->wk_todo; /* take the batch, leave the empty array */
        int n = e->wk_todo_n, bcap = e->wk_todo_cap;
        e->wk_todo = mine, e->wk_todo_cap = cap, e->wk_todo_n = 0;
        mine = batch, cap = bcap;
        pthread_mutex_unlock(&e->wk_mu);
        for (int i = 0; i < n; i++) {
            request_notify(mine[i]);
            engine_request_release(mine[i]);
        }
        pthread_mutex_lock(&e->wk_mu);
    }
    pthread_mutex_unlock(&e->wk_mu);
    free(mine);
    return NULL;
}

int engine__wakes_start(engine *e) {
    if (pthread_mutex_init(&e->wk_mu, NULL)) return -1;
    if (pthread_cond_init(&e->wk_cv, NULL)) {
        pthread_mutex_destroy(&e->wk_mu);
        return -1;
    }
    if (pthread_create(&e->wk_thread, NULL, waker_main, e)) {
        pthread_cond_destroy(&e->wk_cv);
        pthread_mutex_destroy(&e->wk_mu);
        return -1;
    }
    /* Linux's SCHED_BATCH: woken by the flush, the waker does not preempt
     * the engine thread on its CPU when no other is free (it waits for its
     * turn instead of the engine thread waiting for its 512 notifies). Best
     * effort: without it the waker is an ordinary thread. */
    pthread_setschedparam(e->wk_thread, SCHED_BATCH, &(struct sched_param){.sched_priority = 0});
    e->wk_running = true;
    return 0;
}

void engine__wakes_flush(engine *e) {
    if (!e->wk_n) return;
    pthread_mutex_lock(&e->wk_mu);
    int rc = 0;
    if (!e->wk_todo_n) { /* the waker is done with the last batch: swap */
        engine_request **t = e->wk_todo;
        int cap = e->wk_todo_cap;
        e->wk_todo = e->wk_list, e->wk_todo_cap = e->wk_cap, e->wk_todo_n = e->wk_n;
        e->wk_list = t, e->wk_cap = cap;
    } else {
        rc = wake_append(&e->wk_todo, &e->wk_todo_n, &e->wk_todo_cap, e->wk_list, e->wk_n);
    }
    pthread_mutex_unlock(&e->wk_mu);
    if (rc == 0) pthread_cond_signal(&e->wk_cv); /* after the unlock: the waker wakes to a free lock */
    for (int i = 0; rc != 0 && i < e->wk_n; i++) { /* out of memory: woken here */
        request_notify(e->wk_list[i]);
        engine_request_release(e->wk_list[i]);
    }
    e->wk_n = 0;
}

void engine__wakes_stop(engine *e) {
    if (!e->wk_running) return;
    engine__wakes_flush(e);
    pthread_mutex_lock(&e->wk_mu);
    e->wk_stop = true;
    pthread_cond_signal(&e->wk_cv);
    pthread_mutex_unlock(&e->wk_mu);
    pthread_join(e->wk_thread, NULL);
    pthread_cond_destroy(&e->wk_cv);
    pthread_mutex_destroy(&e->wk_mu);
    free(e->wk_list);
    free(e->wk_todo);
    e->wk_list = e->wk_todo = NULL;
    e->wk_running = false;
}

int engine__request_publish(engine_request *r, const char *text, size_t len, int n_generated,
                            engine_finish finish, int error) {
    int rc = ENGINE_OK;
    /* A taken request frees its batch slot (n_taken) before anyone can see
     * its finish: a client answered at once may submit again at once. Lock
     * order: engine.mu, then r->mu. */
    engine *e = r->taken ? r->eng : NULL;
    bool slot_locked = e && finish != ENGINE_FINISH_NONE;
    if (slot_locked) pthread_mutex_lock(&e->mu);
    pthread_mutex_lock(&r->mu);
    if (len && strbuf_add(&r->pend, text, len) != 0) {
        rc = ENGINE_ERR_NOMEM;
        finish = ENGINE_FINISH_ERROR;
        error = ENGINE_ERR_NOMEM;
        len = 0;
    }
    /* Without a tokenizer tokens have no text: a new token is news then,
     * so that streams can show each step's tokens as they come. */
    bool new_token = !r->eng->tok && n_generated > r->n_generated;
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
    bool fire = r->armed && r->notify && (len || new_token || r->finish != ENGINE_FINISH_NONE);
    if (fire) r->armed = false;
    pthread_mutex_unlock(&r->mu);
    if (slot_locked) pthread_mutex_unlock(&e->mu);
    if (ends && e && !slot_locked) { /* out of memory turned a text into the finish */
        pthread_mutex_lock(&e->mu);
        e->n_taken--;
        pthread_mutex_unlock(&e->mu);
    }
    if (fire) request_wake(r);
    return rc;
}

void engine__request_progress(engine_request *r) {
    pthread_mutex_lock(&r->mu);
    r->progress = true;
    bool fire = r->armed && r->notify;
    r->armed = false;
    pthread_mutex_unlock(&r->mu);
    if (fire) request_wake(r);
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
    if (r->pend.len) {
        out->len = r->pend.len;
        out->text = strbuf_take(&r->pend); /* hand over the buffer */
        news = true;
    }
    out->n_prompt = r->n_prompt;
    out->n_generated = r->n_generated;
    if (!r->eng->tok && r->n_generated > r->n_read) news = true; /* tokens without text (engine__request_publish) */
    r->n_read = r->n_generated;
    out->t_submit = r->t_submit;
    out->t_start = r->t_start;
    out->t_first_token = r->t_first_token;
    out->n_cached = r->n_cached;
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

const engine_logprob *engine_request_logprobs(engine_request *r) { return r->lp; }

void engine__logprob_entry(const float *logits, int vocab, int32_t id, int n_top, engine_logprob *lp) {
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
