/* The completion and chat request path: body to validated request, prompt
 * ids (chat template, tokenizer), the checks that need the model (vocabulary,
 * context length, Engram), one engine request per choice, then either the
 * non-streaming path here (the connection is suspended until the engine has
 * output, the response goes out once every choice has finished) or a stream
 * (sse.c). */
#include <stdio.h>
#include <time.h>

#include "base/util.h"
#include "server/server_internal.h"

/* The prompt of a request as token ids, and the ids engram_force asks for. */
typedef struct {
    char *rendered;  /* chat: the template's output, or NULL */
    int32_t *ids;    /* (n) the prompt */
    size_t n;
    int32_t *forced; /* (n_forced) engram_force's ids, the output; or NULL */
    size_t n_forced;
} prompt;

static void prompt_free(prompt *p) {
    free(p->rendered);
    free(p->ids);
    free(p->forced);
}

/* The prompt's ids (chat: rendered, then tokenized; completions: the text
 * tokenized, or the ids as given) and engram_force's, which also cap
 * max_tokens. Returns 0, or -1 with the reply queued in *ret. */
static int prompt_build(conn *c, api_kind kind, api_request *ar, prompt *p, enum MHD_Result *ret) {
    const char *pparam = kind == API_CHAT ? "messages" : "prompt";
    if (kind == API_CHAT) {
        if (render_chat(c, ar->messages, ar->tools, &p->rendered, ret) ||
            prompt_encode(c, p->rendered, false, pparam, &p->ids, &p->n, ret))
            return -1;
    } else if (ar->prompt_text) {
        if (prompt_encode(c, ar->prompt_text, true, pparam, &p->ids, &p->n, ret)) return -1;
    } else {
        p->ids = ar->prompt_ids;
        p->n = (size_t)ar->n_prompt_ids;
        ar->prompt_ids = NULL;
    }
    if (ar->force_text) {
        if (prompt_encode(c, ar->force_text, false, "engram_force", &p->forced, &p->n_forced, ret)) return -1;
        if (p->n_forced == 0) {
            *ret = fail(c, 400, "engram_force", "'engram_force' encodes to no tokens.");
            return -1;
        }
        if (ar->max_tokens <= 0 || (size_t)ar->max_tokens > p->n_forced) ar->max_tokens = (int)p->n_forced;
    }
    return 0;
}

/* The ids of the prompt and of logit_bias against the vocabulary. Returns 0,
 * or -1 with the reply queued in *ret. */
static int check_ids(conn *c, const char *pparam, const api_request *ar, const prompt *p, enum MHD_Result *ret) {
    int vocab = engine_vocab_size(c->s->e);
    api_error err;
    for (size_t i = 0; i < p->n; i++)
        if (p->ids[i] >= vocab) {
            api_error_set(&err, 400, pparam, "Token id %d is outside the vocabulary (%d ids).", p->ids[i], vocab);
            *ret = reply_error(c, &err, NULL);
            return -1;
        }
    for (int i = 0; i < ar->n_bias; i++)
        if (ar->bias_ids[i] >= vocab) {
            api_error_set(&err, 400, "logit_bias", "Token id %d in 'logit_bias' is outside the vocabulary (%d ids).",
                          ar->bias_ids[i], vocab);
            *ret = reply_error(c, &err, NULL);
            return -1;
        }
    return 0;
}

/* The checks that need the model and the server's state: a non-empty prompt
 * of known ids, prompt + max_tokens within the context, gates only where
 * there are some, not draining. Sets *max_tokens (the request's, or what the
 * context leaves; completions default to 16). Returns 0, or -1 with the reply
 * queued in *ret. */
static int check_request(conn *c, api_kind kind, const api_request *ar, const prompt *p, int *max_tokens,
                         enum MHD_Result *ret) {
    server *s = c->s;
    const char *pparam = kind == API_CHAT ? "messages" : "prompt";
    int ctx = engine_context_length(s->e);
    size_t n = p->n;
    if (n == 0) {
        *ret = fail(c, 400, pparam, "The prompt is empty: it encodes to no tokens.");
        return -1;
    }
    if (check_ids(c, pparam, ar, p, ret)) return -1;
    if ((long)n >= ctx || (ar->max_tokens > 0 && (long)n + ar->max_tokens > ctx)) {
        api_error err;
        api_error_set(&err, 400, (long)n >= ctx ? pparam : "max_tokens",
                      "This model's maximum context length is %d tokens. However, you requested %ld tokens (%zu in the "
                      "prompt, %d for the completion).",
                      ctx, (long)n + (ar->max_tokens > 0 ? ar->max_tokens : 0), n,
                      ar->max_tokens > 0 ? ar->max_tokens : 0);
        err.code = "context_length_exceeded";
        *ret = reply_error(c, &err, NULL);
        return -1;
    }
    *max_tokens = ar->max_tokens > 0 ? ar->max_tokens : ctx - (int)n;
    if (ar->max_tokens <= 0 && kind == API_COMPLETIONS && *max_tokens > 16) *max_tokens = 16; /* OpenAI's default */
    if (ar->engram_gates && ar->n > 1) {
        *ret = fail(c, 400, "engram_gates", "'engram_gates' is only available with n = 1.");
        return -1;
    }
    if (ar->engram_gates && !engine_has_engram(s->e)) {
        *ret = fail(c, 400, "engram_gates", "This model has no Engram layers, so it has no gates to return.");
        return -1;
    }
    if (atomic_load(&s->draining)) {
        *ret = fail(c, 503, NULL, "The server is shutting down.");
        return -1;
    }
    return 0;
}

/* The engine request of choice 0 (choice i samples with seed + i). */
static engine_request_params request_params(conn *c, const api_request *ar, const prompt *p, int max_tokens,
                                            grammar *gr) {
    server *s = c->s;
    engine_request_params rp = {0};
    rp.prompt = p->ids;
    rp.n_prompt = (int)p->n;
    rp.max_tokens = max_tokens;
    rp.sampling = ar->sampling;
    if (!ar->has_seed) { /* OpenAI: no seed, no reproducibility */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        rp.sampling.seed = (uint64_t)ts.tv_nsec * 0x9E3779B97F4A7C15ull ^ atomic_fetch_add(&s->next_id, 1) ^ s->id_salt;
    }
    rp.ignore_eos = ar->ignore_eos || p->forced;
    rp.forced = p->forced;
    rp.want_gates = ar->engram_gates;
    rp.cache_salt = ar->cache_salt;
    rp.logprobs = ar->logprobs;
    rp.top_logprobs = ar->top_logprobs;
    for (int i = 0; i < ar->n_stop; i++) rp.stop[i] = ar->stop[i];
    rp.n_stop = ar->n_stop;
    rp.bias_ids = ar->bias_ids;
    rp.bias_vals = ar->bias_vals;
    rp.n_bias = ar->n_bias;
    rp.grammar = gr; /* each request takes its own reference */
    if (ar->kind == API_CHAT) /* the reasoning is split off chat output: the constraint starts after it */
        reasoning_markers(s->reasoning, &rp.reasoning_open, &rp.reasoning_close);
    rp.notify = http_resume;
    rp.notify_ctx = c->mc;
    return rp;
}

/* Submits one engine request per choice into g and names the response.
 * Returns 0, or -1 (nothing left submitted) with the reply queued in *ret. */
static int submit(conn *c, api_kind kind, const api_request *ar, const prompt *p, int max_tokens, generation *g,
                  enum MHD_Result *ret) {
    server *s = c->s;
    grammar *gr = NULL;
    if (structured_grammar(c, ar, &gr, ret)) return -1;
    engine_request_params rp = request_params(c, ar, p, max_tokens, gr);
    for (int i = 0; i < ar->n; i++) {
        engine_request_params ri = rp;
        ri.sampling.seed = rp.sampling.seed + (uint64_t)i;
        int rc = engine_submit(s->e, &ri, &g->reqs[i]);
        if (rc != ENGINE_OK) {
            grammar_release(gr);
            generate_release(g->reqs, 0, i);
            api_error err;
            int status = errors_engine_http_status(rc);
            api_error_set(&err, status, NULL, "%s%s", rc == ENGINE_ERR_QUEUE_FULL ? "The server is overloaded: " : "",
                          engine_status_str(rc));
            *ret = reply_error(c, &err, NULL);
            return -1;
        }
    }
    grammar_release(gr);
    g->n_req = ar->n;
    g->kind = kind;
    snprintf(g->id, sizeof(g->id), "%s-%016llx%08llx", kind == API_CHAT ? "chatcmpl" : "cmpl", s->id_salt,
             (unsigned long long)atomic_fetch_add(&s->next_id, 1));
    g->created = (long)time(NULL);
    g->include_usage = ar->include_usage;
    g->gates = ar->engram_gates;
    g->logprobs = ar->logprobs;
    g->tools = ar->tools ? s->tool_fmt : TOOL_FORMAT_NONE;
    return 0;
}

/* The non-streaming path: c reads g's choices in turn. */
static enum MHD_Result start_whole(conn *c, const generation *g) {
    c->generating = true;
    atomic_fetch_add(&c->s->active, 1);
    c->g = *g;
    c->req = g->reqs[0];
    return generate_continue(c);
}

enum MHD_Result handle_generate(conn *c, api_kind kind) {
    api_request ar;
    api_error err;
    if (api_parse_request(kind, c->body, c->len, &ar, &err)) return reply_error(c, &err, NULL);
    enum MHD_Result ret = MHD_NO;
    prompt p = {0};
    generation g = {0};
    int max_tokens = 0;
    if (!prompt_check_model(c, ar.model, &ret) && !prompt_build(c, kind, &ar, &p, &ret) &&
        !check_request(c, kind, &ar, &p, &max_tokens, &ret) && !submit(c, kind, &ar, &p, max_tokens, &g, &ret))
        ret = ar.stream ? sse_start(c, &g) : start_whole(c, &g);
    prompt_free(&p);
    api_request_free(&ar);
    return ret;
}

void generate_release(engine_request **reqs, int from, int n) {
    for (int i = from; i < n; i++) {
        engine_request_detach(reqs[i]);
        engine_cancel(reqs[i]);
        engine_request_release(reqs[i]);
        reqs[i] = NULL;
    }
}

/* Choice c->cur has finished with o (STOP or LENGTH): its choice goes into
 * c->choices; after the last one, the response. Returns 1 when another
 * choice follows, else 0 with the reply queued in *ret. */
static int finish_choice(conn *c, engine_output *o, enum MHD_Result *ret) {
    cJSON *gates = c->g.gates ? response_gates(c->s, c->req, o->n_prompt) : NULL;
    size_t text_offset = 0;
    cJSON *lps = c->g.logprobs ? response_logprobs(c->s, c->g.kind, engine_request_logprobs(c->req), 0, o->lp_end,
                                                 &text_offset)
                             : NULL;
    engine_request_release(c->req);
    c->req = c->g.reqs[c->cur] = NULL;
    if (response_choice_add(c, o, lps)) {
        generate_release(c->g.reqs, c->cur + 1, c->g.n_req);
        cJSON_Delete(gates);
        *ret = fail(c, 500, NULL, "Out of memory.");
        return 0;
    }
    c->completion_tokens += o->n_generated;
    if (c->cur == 0) c->cached_tokens = o->n_cached; /* the prompt's, counted once as prompt_tokens is */
    strbuf_drop(&c->text, c->text.len);
    if (++c->cur < c->g.n_req) { /* the next choice (queued in the engine meanwhile) */
        c->req = c->g.reqs[c->cur];
        cJSON_Delete(gates);
        return 1;
    }
    *ret = reply_json(c, 200, response_completion(c, o, gates));
    return 0;
}

enum MHD_Result generate_continue(conn *c) {
    engine_output o;
    while (engine_request_read(c->req, &o, http_suspend, c->mc)) {
        /* libmicrohttpd does not watch a connection that waits for its
         * response (suspended, or resumed with nothing to send): look at the
         * socket at each wake-up, so that a client gone is noticed at the
         * next token (or poke) */
        if (o.finish == ENGINE_FINISH_NONE && http_peer_gone(c->mc)) {
            free(o.text);
            return MHD_NO; /* closes the connection: on_completed cancels the request */
        }
        if (strbuf_add(&c->text, o.text, o.len)) {
            free(o.text);
            engine_cancel(c->req);
            return fail(c, 500, NULL, "Out of memory.");
        }
        free(o.text);
        if (o.finish == ENGINE_FINISH_NONE) continue;

        /* Choice c->cur has finished. */
        metrics_request_done(c->s->mx, response_finish_str(o.finish), &o, util_now());
        if (o.finish != ENGINE_FINISH_STOP && o.finish != ENGINE_FINISH_LENGTH) {
            engine_request_release(c->req);
            c->req = c->g.reqs[c->cur] = NULL;
            generate_release(c->g.reqs, c->cur + 1, c->g.n_req);
            api_error err;
            response_finish_error(&o, &err);
            return reply_error(c, &err, NULL);
        }
        enum MHD_Result ret;
        if (!finish_choice(c, &o, &ret)) return ret;
    }
    return MHD_YES; /* suspended until the engine has more */
}

void generate_abort(conn *c) {
    engine_request_detach(c->req); /* so the read below cannot arm a notify of a dead connection */
    engine_cancel(c->req);
    engine_output o;
    engine_request_read(c->req, &o, NULL, NULL);
    free(o.text);
    metrics_request_done(c->s->mx, "abort", &o, util_now());
    engine_request_release(c->req);
    generate_release(c->g.reqs, c->cur + 1, c->g.n_req);
}
