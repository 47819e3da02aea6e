/* The HTTP front end: libmicrohttpd (epoll, internal thread pool) routes
 * requests, checks the API key and body size, parses bodies (api_request.c),
 * renders the chat template, tokenizes and submits to the engine. A
 * connection waiting on the engine is suspended and resumed by the engine's
 * notify callback, so no HTTP thread ever blocks on generation. Streaming
 * responses are Server-Sent Events written by a content-reader callback; when
 * the client goes away libmicrohttpd frees the response and the request is
 * cancelled in the engine. */
#include <arpa/inet.h>
#include <errno.h>
#include <cjson/cJSON.h>
#include <microhttpd.h>
#include <netdb.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "chat/chat_template.h"
#include "server/server.h"
#include "chat/reasoning.h"
#include "chat/tool_calls.h"
#include "tokenizer/tokenizer.h"
#include "base/util.h"

#define SSE_BLOCK 4096

struct server {
    server_params p;
    engine *e;          /* borrowed */
    metrics *mx;        /* borrowed */
    const tokenizer *tok; /* borrowed from the engine; NULL if none */
    chat_template *tmpl;
    tool_format tool_fmt; /* how the template writes tool calls: what the model's output is parsed for */
    reasoning_format reasoning; /* --reasoning-parser */
    struct MHD_Daemon *d;
    struct sockaddr_storage addr;
    atomic_bool draining;
    atomic_bool ready; /* the engine is loaded (e and tok set) */
    atomic_int active; /* generations whose response is not finished */
    atomic_ullong next_id;
    unsigned long long id_salt;
    long started; /* unix seconds */
};

/* Per-connection state of one HTTP request (libmicrohttpd's con_cls). */
typedef struct {
    server *s;
    struct MHD_Connection *mc;
    const char *route; /* metrics label */
    char *body;        /* (len) bytes received */
    size_t len, cap;
    bool too_big;
    unsigned long long seen; /* body bytes received, kept or not */
    bool generating; /* counted in server.active */
    /* a non-streaming generation waiting on the engine: choice `cur` of n_req */
    engine_request *req;               /* reqs[cur], the one being read */
    engine_request *reqs[API_MAX_N];
    int n_req, cur;
    cJSON *choices;                    /* finished choices */
    int completion_tokens;             /* summed over the finished choices */
    api_kind kind;
    char id[64];
    long created;
    strbuf text; /* the choice's generated text so far */
    bool gates;    /* the request asked for "engram_gates" */
    bool logprobs; /* the request asked for logprobs */
    tool_format tools; /* parse tool calls out of each choice's text (the request gave tools) */
} conn;

/* A streaming generation, owned by its libmicrohttpd response. */
typedef struct {
    server *s;
    struct MHD_Connection *mc;
    engine_request *req;               /* reqs[cur], the choice being streamed */
    engine_request *reqs[API_MAX_N];
    int n_req, cur;
    int completion_tokens;             /* summed over the finished choices */
    api_kind kind;
    bool include_usage;
    char id[64];
    long created;
    char *buf; /* SSE bytes not yet handed to libmicrohttpd: buf[off..len) */
    size_t len, off, cap;
    bool ended;    /* [DONE] is in buf */
    bool recorded; /* metrics_request_done called */
    bool logprobs; /* the request asked for logprobs */
    size_t text_offset; /* completions' logprobs.text_offset so far */
    engine_output last;
    tool_format tools;  /* parse tool calls out of the text (the request gave tools) */
    tool_parser tp;     /* the current choice's */
    reasoning_splitter rs; /* the current choice's (--reasoning-parser) */
} stream;

/* ---- responses ---- */

/* CORS (off unless --cors-allow-origin): the allowed origin on every response. */
static void add_cors(server *s, struct MHD_Response *r) {
    const char *o = s->p.cors_origin;
    if (!o || !o[0]) return;
    MHD_add_response_header(r, "Access-Control-Allow-Origin", o);
    if (strcmp(o, "*") != 0) MHD_add_response_header(r, "Vary", "Origin");
}

static enum MHD_Result reply(conn *c, int status, const char *ctype, char *body, size_t len, const char *allow) {
    if (!body) {
        status = 500;
        ctype = "application/json";
        static const char oom[] = "{\"error\": {\"message\": \"Out of memory.\", \"type\": \"server_error\", "
                                  "\"param\": null, \"code\": \"internal_error\"}}";
        body = strdup(oom);
        len = body ? strlen(body) : 0;
    }
    struct MHD_Response *r = body ? MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE)
                                   : MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    add_cors(c->s, r);
    if (allow) MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, allow);
    if (status == 503) MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, "1");
    if (status == 413) MHD_add_response_header(r, MHD_HTTP_HEADER_CONNECTION, "close");
    metrics_http(c->s->mx, c->route, status);
    enum MHD_Result ret = MHD_queue_response(c->mc, (unsigned)status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result reply_error(conn *c, api_error *err, const char *allow) {
    errors_fill(err);
    char *s = errors_json(err);
    return reply(c, err->status, "application/json", s, s ? strlen(s) : 0, allow);
}

static enum MHD_Result reply_json(conn *c, int status, cJSON *obj) {
    char *s = obj ? cJSON_PrintUnformatted(obj) : NULL;
    cJSON_Delete(obj);
    return reply(c, status, "application/json", s, s ? strlen(s) : 0, NULL);
}

static enum MHD_Result fail(conn *c, int status, const char *param, const char *msg) {
    api_error err;
    errors_set(&err, status, param, "%s", msg);
    return reply_error(c, &err, NULL);
}

/* ---- engine hooks: suspend when there is no output, resume on notify ---- */

static void suspend_cb(void *mc) { MHD_suspend_connection(mc); }
static void resume_cb(void *mc) { MHD_resume_connection(mc); }

/* Whether the client has closed its side of mc's connection (or reset it).
 * A suspended connection is not watched by libmicrohttpd, so the handlers
 * look when the engine pokes a request that waits (engine_output.progress
 * with nothing else). Pipelined bytes are left for libmicrohttpd. */
static bool peer_gone(struct MHD_Connection *mc) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(mc, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci) return false;
    char b;
    ssize_t n = recv(ci->connect_fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

static const char *finish_str(engine_finish f) {
    switch (f) {
    case ENGINE_FINISH_STOP: return "stop";
    case ENGINE_FINISH_LENGTH: return "length";
    case ENGINE_FINISH_ERROR: return "error";
    default: return "abort";
    }
}

/* The error a request that did not finish normally earns. */
static void finish_error(const engine_output *o, api_error *err) {
    if (o->finish == ENGINE_FINISH_ABORT)
        errors_set(err, 503, NULL, "The server is shutting down; the request was not completed.");
    else if (o->finish == ENGINE_FINISH_CANCEL)
        errors_set(err, 500, NULL, "The request was cancelled.");
    else
        errors_set(err, 500, NULL, "Generation failed: %s.", engine_status_str(o->error));
}

static cJSON *usage_json(const engine_output *o) {
    cJSON *u = cJSON_CreateObject();
    cJSON_AddNumberToObject(u, "prompt_tokens", o->n_prompt);
    cJSON_AddNumberToObject(u, "completion_tokens", o->n_generated);
    cJSON_AddNumberToObject(u, "total_tokens", o->n_prompt + o->n_generated);
    return u;
}

static cJSON *response_head(server *s, const char *id, const char *object, long created) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", id);
    cJSON_AddStringToObject(o, "object", object);
    cJSON_AddNumberToObject(o, "created", (double)created);
    cJSON_AddStringToObject(o, "model", s->p.served_model_name);
    return o;
}

/* ---- logprobs ---- */

/* The text of one token (special tokens kept), as a JSON string item. */
static cJSON *token_text(server *s, int32_t id, size_t *len) {
    const tokenizer *tok = engine_tokenizer(s->e);
    char *piece = NULL, num[16];
    size_t n = 0;
    if (!tok || tokenizer_decode(tok, &id, 1, false, &piece, &n) != TOKENIZER_OK) {
        free(piece);
        piece = NULL;
        n = (size_t)snprintf(num, sizeof(num), "<%d>", id); /* no tokenizer: ids as text */
    }
    cJSON *str = cJSON_CreateString(piece ? piece : num);
    if (len) *len = n;
    free(piece);
    return str;
}

/* {"token", "logprob", "bytes"} of chat's logprobs.content entries: "bytes"
 * are the token's own bytes (a piece of a character split over tokens stays
 * that piece, where "token" shows U+FFFD), as OpenAI's. */
static cJSON *chat_token_lp(server *s, int32_t id, float logprob) {
    cJSON *o = cJSON_CreateObject();
    cJSON *t = token_text(s, id, NULL);
    cJSON *bytes = cJSON_CreateArray();
    const tokenizer *tok = engine_tokenizer(s->e);
    char *raw = NULL;
    size_t n = 0;
    if (!tok || tokenizer_token_bytes(tok, id, &raw, &n) != TOKENIZER_OK) { /* as its text */
        free(raw);
        raw = NULL;
        n = strlen(t->valuestring);
    }
    const unsigned char *p = (const unsigned char *)(raw ? raw : t->valuestring);
    for (size_t k = 0; k < n; k++) cJSON_AddItemToArray(bytes, cJSON_CreateNumber(p[k]));
    free(raw);
    cJSON_AddItemToObject(o, "token", t);
    cJSON_AddNumberToObject(o, "logprob", logprob);
    cJSON_AddItemToObject(o, "bytes", bytes);
    return o;
}

/* The "logprobs" of a choice for entries [from, to): chat's {"content": [...]}
 * or completions' {"tokens", "token_logprobs", "top_logprobs", "text_offset"}. */
static cJSON *logprobs_json(server *s, api_kind kind, const engine_logprob *lp, int from, int to,
                            size_t *text_offset) {
    cJSON *o = cJSON_CreateObject();
    if (kind == API_CHAT) {
        cJSON *content = cJSON_AddArrayToObject(o, "content");
        for (int i = from; i < to; i++) {
            cJSON *e = chat_token_lp(s, lp[i].id, lp[i].logprob);
            cJSON *top = cJSON_AddArrayToObject(e, "top_logprobs");
            for (int k = 0; k < lp[i].n_top; k++)
                cJSON_AddItemToArray(top, chat_token_lp(s, lp[i].top_ids[k], lp[i].top_logprobs[k]));
            cJSON_AddItemToArray(content, e);
        }
        return o;
    }
    cJSON *tokens = cJSON_AddArrayToObject(o, "tokens"), *tlp = cJSON_AddArrayToObject(o, "token_logprobs");
    cJSON *top = cJSON_AddArrayToObject(o, "top_logprobs"), *off = cJSON_AddArrayToObject(o, "text_offset");
    for (int i = from; i < to; i++) {
        size_t len = 0;
        cJSON_AddItemToArray(tokens, token_text(s, lp[i].id, &len));
        cJSON_AddItemToArray(tlp, cJSON_CreateNumber(lp[i].logprob));
        cJSON *alts = cJSON_CreateObject();
        for (int k = 0; k < lp[i].n_top; k++) {
            cJSON *t = token_text(s, lp[i].top_ids[k], NULL);
            if (!cJSON_GetObjectItemCaseSensitive(alts, t->valuestring)) /* two ids may share a text */
                cJSON_AddNumberToObject(alts, t->valuestring, lp[i].top_logprobs[k]);
            cJSON_Delete(t);
        }
        cJSON_AddItemToArray(top, alts);
        cJSON_AddItemToArray(off, cJSON_CreateNumber((double)*text_offset));
        *text_offset += len;
    }
    return o;
}

/* ---- non-streaming generation ---- */

/* {"layers", "n_prompt", "token_ids", "tokens", "gates"} of a finished request
 * that asked for Engram gates: each token that went through the model (text of
 * that token alone, special tokens kept) with its gate per Engram layer. */
static cJSON *gates_json(server *s, engine_request *r, int n_prompt) {
    const int32_t *ids;
    const float *g;
    int n, nl;
    if (!engine_request_gates(r, &ids, &n, &g, &nl)) return NULL;
    const model *m = engine_model(s->e);
    const tokenizer *tok = engine_tokenizer(s->e);
    cJSON *o = cJSON_CreateObject();
    cJSON *layers = cJSON_AddArrayToObject(o, "layers");
    for (int l = 0; l < nl; l++) cJSON_AddItemToArray(layers, cJSON_CreateNumber(m->engram->layers[l].layer_id));
    cJSON_AddNumberToObject(o, "n_prompt", n_prompt);
    cJSON *jids = cJSON_AddArrayToObject(o, "token_ids");
    cJSON *jtok = cJSON_AddArrayToObject(o, "tokens");
    cJSON *jg = cJSON_AddArrayToObject(o, "gates");
    for (int t = 0; t < n; t++) {
        cJSON_AddItemToArray(jids, cJSON_CreateNumber(ids[t]));
        char *piece = NULL;
        size_t len = 0;
        if (tok && tokenizer_decode(tok, ids + t, 1, false, &piece, &len) == TOKENIZER_OK)
            cJSON_AddItemToArray(jtok, cJSON_CreateString(piece));
        else
            cJSON_AddItemToArray(jtok, cJSON_CreateString(""));
        free(piece);
        cJSON *row = cJSON_CreateArray();
        for (int l = 0; l < nl; l++) cJSON_AddItemToArray(row, cJSON_CreateNumber(g[(size_t)t * nl + l]));
        cJSON_AddItemToArray(jg, row);
    }
    return o;
}

/* OpenAI's "tool_calls" of p's calls from `from` on: [{"id", "type":
 * "function", "function": {"name", "arguments"}}], with "index" (their
 * place among the choice's calls) in a stream's delta. */
static cJSON *tool_calls_json(server *s, const tool_parser *p, int from, bool indexed) {
    cJSON *arr = cJSON_CreateArray();
    for (int i = from; i < p->n_calls; i++) {
        cJSON *o = cJSON_CreateObject();
        char id[48];
        snprintf(id, sizeof(id), "call_%016llx%08llx", s->id_salt, (unsigned long long)atomic_fetch_add(&s->next_id, 1));
        if (indexed) cJSON_AddNumberToObject(o, "index", i);
        cJSON_AddStringToObject(o, "id", id);
        cJSON_AddStringToObject(o, "type", "function");
        cJSON *f = cJSON_AddObjectToObject(o, "function");
        cJSON_AddStringToObject(f, "name", p->calls[i].name);
        cJSON_AddStringToObject(f, "arguments", p->calls[i].arguments);
        cJSON_AddItemToArray(arr, o);
    }
    return arr;
}

/* Appends what a parser gave (heap or NULL) to b and frees it. */
static int take_into(strbuf *b, char *part) {
    int rc = part ? strbuf_add(b, part, strlen(part)) : 0;
    free(part);
    return rc;
}

/* A chat choice's "message" out of the whole generated text: the reasoning
 * split off (--reasoning-parser), then the tool calls parsed out of the rest
 * (the request gave tools); *finish becomes "tool_calls" when there are
 * some. Returns 0, or -1 out of memory. */
static int chat_message(conn *c, cJSON *ch, const char **finish) {
    const char *text = c->text.s ? c->text.s : "";
    cJSON *msg = cJSON_AddObjectToObject(ch, "message");
    cJSON_AddStringToObject(msg, "role", "assistant");
    if (!c->s->reasoning && !c->tools) {
        cJSON_AddStringToObject(msg, "content", text);
        return 0;
    }
    reasoning_splitter rs;
    tool_parser tp;
    reasoning_init(&rs, c->s->reasoning);
    tool_parser_init(&tp, c->tools);
    strbuf reasoning = {0}, answer = {0}, content = {0}; /* answer: what follows the reasoning */
    char *r, *a; /* each call sets both (NULL on failure); take_into frees them */
    int rc = reasoning_feed(&rs, text, c->text.len, &r, &a);
    rc |= take_into(&reasoning, r) | take_into(&answer, a);
    rc |= reasoning_finish(&rs, &r, &a);
    rc |= take_into(&reasoning, r) | take_into(&answer, a);
    if (!rc && c->tools) { /* the calls out of the answer; the rest is the content */
        rc = tool_parser_feed(&tp, answer.s ? answer.s : "", answer.len, &a);
        rc |= take_into(&content, a);
        rc |= tool_parser_finish(&tp, &a);
        rc |= take_into(&content, a);
    } else if (!rc) {
        content = answer, answer = (strbuf){0};
    }
    if (!rc) {
        size_t k = strspn(content.s ? content.s : "", " \n\t\r");
        if (k < content.len || !tp.n_calls) cJSON_AddStringToObject(msg, "content", content.s ? content.s : "");
        else cJSON_AddNullToObject(msg, "content"); /* only calls */
        if (c->s->reasoning && reasoning.len) cJSON_AddStringToObject(msg, "reasoning_content", reasoning.s);
        else if (c->s->reasoning) cJSON_AddNullToObject(msg, "reasoning_content");
        if (tp.n_calls) {
            cJSON_AddItemToObject(msg, "tool_calls", tool_calls_json(c->s, &tp, 0, false));
            *finish = "tool_calls";
        }
    }
    strbuf_free(&reasoning), strbuf_free(&answer), strbuf_free(&content);
    reasoning_free(&rs);
    tool_parser_free(&tp);
    return rc ? -1 : 0;
}

/* Cancels and releases the choices after `from` that were never read. */
static void release_rest(engine_request **reqs, int from, int n) {
    for (int i = from; i < n; i++) {
        engine_request_detach(reqs[i]);
        engine_cancel(reqs[i]);
        engine_request_release(reqs[i]);
        reqs[i] = NULL;
    }
}

static enum MHD_Result continue_generation(conn *c) {
    engine_output o;
    while (engine_request_read(c->req, &o, suspend_cb, c->mc)) {
        if (o.progress && !o.len && o.finish == ENGINE_FINISH_NONE && peer_gone(c->mc)) {
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
        metrics_request_done(c->s->mx, finish_str(o.finish), &o, util_now());
        cJSON *gates = c->gates ? gates_json(c->s, c->req, o.n_prompt) : NULL;
        size_t text_offset = 0;
        cJSON *lps = c->logprobs ? logprobs_json(c->s, c->kind, engine_request_logprobs(c->req), 0, o.lp_end,
                                                 &text_offset)
                                 : NULL;
        engine_request_release(c->req);
        c->req = c->reqs[c->cur] = NULL;
        if (o.finish != ENGINE_FINISH_STOP && o.finish != ENGINE_FINISH_LENGTH) {
            release_rest(c->reqs, c->cur + 1, c->n_req);
            cJSON_Delete(gates);
            cJSON_Delete(lps);
            api_error err;
            finish_error(&o, &err);
            return reply_error(c, &err, NULL);
        }
        bool chat = c->kind == API_CHAT;
        if (!c->choices) c->choices = cJSON_CreateArray();
        cJSON *ch = cJSON_CreateObject();
        cJSON_AddItemToArray(c->choices, ch);
        cJSON_AddNumberToObject(ch, "index", c->cur);
        const char *finish = finish_str(o.finish);
        if (chat) {
            if (chat_message(c, ch, &finish)) {
                release_rest(c->reqs, c->cur + 1, c->n_req);
                cJSON_Delete(gates);
                cJSON_Delete(lps);
                return fail(c, 500, NULL, "Out of memory.");
            }
        } else {
            cJSON_AddStringToObject(ch, "text", c->text.s ? c->text.s : "");
        }
        if (lps) cJSON_AddItemToObject(ch, "logprobs", lps);
        else cJSON_AddNullToObject(ch, "logprobs");
        cJSON_AddStringToObject(ch, "finish_reason", finish);
        c->completion_tokens += o.n_generated;
        strbuf_drop(&c->text, c->text.len);
        if (++c->cur < c->n_req) { /* the next choice (queued in the engine meanwhile) */
            c->req = c->reqs[c->cur];
            cJSON_Delete(gates);
            continue;
        }
        cJSON *root = response_head(c->s, c->id, chat ? "chat.completion" : "text_completion", c->created);
        cJSON_AddItemToObject(root, "choices", c->choices);
        c->choices = NULL;
        o.n_generated = c->completion_tokens;
        cJSON_AddItemToObject(root, "usage", usage_json(&o));
        if (gates) cJSON_AddItemToObject(root, "engram_gates", gates);
        return reply_json(c, 200, root);
    }
    return MHD_YES; /* suspended until the engine has more */
}

/* ---- streaming generation (SSE) ---- */

static int sse_append(stream *st, const char *data, size_t n) {
    if (st->len + n > st->cap) {
        size_t cap = (st->len + n) * 2 + 256;
        char *q = realloc(st->buf, cap);
        if (!q) return -1;
        st->buf = q;
        st->cap = cap;
    }
    memcpy(st->buf + st->len, data, n);
    st->len += n;
    return 0;
}

/* Appends `data: <json>\n\n` and frees obj. */
static int sse_event(stream *st, cJSON *obj) {
    char *s = obj ? cJSON_PrintUnformatted(obj) : NULL;
    cJSON_Delete(obj);
    if (!s) return -1;
    int rc = sse_append(st, "data: ", 6) || sse_append(st, s, strlen(s)) || sse_append(st, "\n\n", 2);
    free(s);
    return rc ? -1 : 0;
}

/* One chunk with one choice, sent: for chat, a delta with the role (when
 * role), the content text, the reasoning text and the tool calls completed
 * since calls_from (each when given: NULL, or calls_from < 0, for none); for
 * completions the text (""). Then logprobs (owned, or NULL) and finish (or
 * NULL). */
static int sse_delta(stream *st, bool role, const char *text, const char *reasoning, int calls_from, const char *finish,
                     cJSON *lps) {
    bool chat = st->kind == API_CHAT;
    cJSON *root = response_head(st->s, st->id, chat ? "chat.completion.chunk" : "text_completion", st->created);
    cJSON *choices = cJSON_AddArrayToObject(root, "choices");
    cJSON *ch = cJSON_CreateObject();
    cJSON_AddItemToArray(choices, ch);
    cJSON_AddNumberToObject(ch, "index", st->cur);
    if (chat) {
        cJSON *delta = cJSON_AddObjectToObject(ch, "delta");
        if (role) cJSON_AddStringToObject(delta, "role", "assistant");
        if (text) cJSON_AddStringToObject(delta, "content", text);
        if (reasoning) cJSON_AddStringToObject(delta, "reasoning_content", reasoning);
        if (calls_from >= 0) cJSON_AddItemToObject(delta, "tool_calls", tool_calls_json(st->s, &st->tp, calls_from, true));
    } else {
        cJSON_AddStringToObject(ch, "text", text ? text : "");
    }
    if (lps) cJSON_AddItemToObject(ch, "logprobs", lps);
    else cJSON_AddNullToObject(ch, "logprobs");
    if (finish) cJSON_AddStringToObject(ch, "finish_reason", finish);
    else cJSON_AddNullToObject(ch, "finish_reason");
    if (st->include_usage) cJSON_AddNullToObject(root, "usage");
    return sse_event(st, root);
}

/* A chunk of text (or NULL for none) with logprobs and finish (see sse_delta). */
static int sse_chunk(stream *st, const char *text, bool role, const char *finish, cJSON *lps) {
    return sse_delta(st, role, text, NULL, -1, finish, lps);
}

/* A streamed chat choice's next text (or its end, final): the reasoning
 * split off goes out as reasoning_content, the rest as content except what
 * may start a tool call, and each call when it closes. lps (owned) rides on
 * the first chunk. */
static int stream_chat_text(stream *st, const char *text, size_t len, cJSON *lps, bool final) {
    char *r = NULL, *c = NULL, *part = NULL;
    int had = st->tp.n_calls;
    int rc = final ? reasoning_finish(&st->rs, &r, &c) : reasoning_feed(&st->rs, text ? text : "", len, &r, &c);
    if (!rc && r) {
        rc = sse_delta(st, false, NULL, r, -1, NULL, lps);
        lps = NULL;
    }
    if (!rc && st->tools) {
        strbuf out = {0};
        char *p; /* set by each call (NULL on failure); take_into frees it */
        rc = tool_parser_feed(&st->tp, c ? c : "", c ? strlen(c) : 0, &p);
        rc |= take_into(&out, p);
        if (final) {
            rc |= tool_parser_finish(&st->tp, &p);
            rc |= take_into(&out, p);
        }
        part = strbuf_take(&out);
    } else if (!rc) {
        part = c, c = NULL;
    }
    if (!rc && (part || lps)) {
        rc = sse_chunk(st, part, false, NULL, lps);
        lps = NULL;
    }
    if (!rc && st->tp.n_calls > had) rc = sse_delta(st, false, NULL, NULL, had, NULL, NULL);
    cJSON_Delete(lps);
    free(r), free(c), free(part);
    return rc ? -1 : 0;
}

static void stream_record(stream *st, const char *reason) {
    if (st->recorded) return;
    st->recorded = true;
    metrics_request_done(st->s->mx, reason, &st->last, util_now());
}

/* Turns one engine read into SSE events. */
static int stream_format(stream *st, const engine_output *o) {
    st->last.n_prompt = o->n_prompt;
    st->last.n_generated = o->n_generated;
    st->last.t_submit = o->t_submit;
    st->last.t_start = o->t_start;
    st->last.t_first_token = o->t_first_token;
    if (o->progress && sse_append(st, ": keep-alive\n\n", 14)) return -1; /* long prefill: SSE comment */
    cJSON *lps = st->logprobs && o->lp_end > o->lp_begin
                     ? logprobs_json(st->s, st->kind, engine_request_logprobs(st->req), o->lp_begin, o->lp_end,
                                     &st->text_offset)
                     : NULL;
    bool split = st->kind == API_CHAT && (st->rs.fmt || st->tools);
    if (split) {
        if (stream_chat_text(st, o->text, o->len, lps, false)) return -1;
    } else if ((o->len || lps) && sse_chunk(st, o->len ? o->text : (st->kind == API_CHAT ? NULL : ""), false, NULL, lps)) {
        return -1;
    }
    if (o->finish == ENGINE_FINISH_NONE) return 0;
    stream_record(st, finish_str(o->finish));
    if (o->finish == ENGINE_FINISH_STOP || o->finish == ENGINE_FINISH_LENGTH) {
        const char *finish = finish_str(o->finish);
        if (split) { /* what was held (an unclosed call, a partial marker) goes out where it was */
            if (stream_chat_text(st, NULL, 0, NULL, true)) return -1;
            if (st->tp.n_calls) finish = "tool_calls";
            tool_parser_free(&st->tp);
            tool_parser_init(&st->tp, st->tools);
            reasoning_free(&st->rs);
            reasoning_init(&st->rs, st->s->reasoning);
        }
        if (sse_chunk(st, st->kind == API_CHAT ? NULL : "", false, finish, NULL)) return -1;
        st->completion_tokens += o->n_generated;
        if (st->cur + 1 < st->n_req) { /* on to the next choice */
            engine_request_release(st->req);
            st->req = st->reqs[++st->cur];
            st->reqs[st->cur - 1] = NULL;
            st->recorded = false;
            st->text_offset = 0;
            return st->kind == API_CHAT ? sse_chunk(st, "", true, NULL, NULL) : 0;
        }
        if (st->include_usage) {
            cJSON *root = response_head(st->s, st->id, st->kind == API_CHAT ? "chat.completion.chunk" : "text_completion",
                                        st->created);
            cJSON_AddArrayToObject(root, "choices");
            engine_output tot = *o;
            tot.n_generated = st->completion_tokens;
            cJSON_AddItemToObject(root, "usage", usage_json(&tot));
            if (sse_event(st, root)) return -1;
        }
    } else {
        api_error err;
        finish_error(o, &err);
        char *s = errors_json(&err);
        if (!s) return -1;
        int rc = sse_append(st, "data: ", 6) || sse_append(st, s, strlen(s)) || sse_append(st, "\n\n", 2);
        free(s);
        if (rc) return -1;
    }
    st->ended = true;
    return sse_append(st, "data: [DONE]\n\n", 14);
}

static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max) {
    stream *st = cls;
    for (;;) {
        if (st->off < st->len) {
            size_t n = st->len - st->off < max ? st->len - st->off : max;
            memcpy(buf, st->buf + st->off, n);
            st->off += n;
            return (ssize_t)n;
        }
        st->off = st->len = 0;
        if (st->ended) return MHD_CONTENT_READER_END_OF_STREAM;
        engine_output o;
        if (!engine_request_read(st->req, &o, suspend_cb, st->mc)) return 0; /* suspended */
        if (o.progress && !o.len && o.finish == ENGINE_FINISH_NONE && peer_gone(st->mc)) {
            free(o.text);
            return MHD_CONTENT_READER_END_WITH_ERROR; /* stream_free cancels the request */
        }
        int rc = stream_format(st, &o);
        free(o.text);
        if (rc) {
            engine_cancel(st->req);
            stream_record(st, "error");
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
    }
}

static void stream_free(void *cls) {
    stream *st = cls;
    engine_request_detach(st->req); /* the connection is going away: never notify it again */
    if (!st->ended) { /* the client went away (or the daemon stops): cancel at the next step */
        engine_cancel(st->req);
        stream_record(st, "abort");
    }
    engine_request_release(st->req);
    release_rest(st->reqs, st->cur + 1, st->n_req);
    tool_parser_free(&st->tp);
    reasoning_free(&st->rs);
    atomic_fetch_sub(&st->s->active, 1);
    free(st->buf);
    free(st);
}

/* ---- routes ---- */

static bool auth_ok(conn *c) {
    const char *key = c->s->p.api_key;
    if (!key || !key[0]) return true;
    const char *h = MHD_lookup_connection_value(c->mc, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h || strncmp(h, "Bearer ", 7) != 0) return false;
    h += 7;
    size_t hl = strlen(h), kl = strlen(key);
    unsigned diff = hl != kl;
    for (size_t i = 0; i < kl; i++) diff |= (unsigned char)key[i] ^ (unsigned char)(i < hl ? h[i] : 0);
    return diff == 0;
}

/* Refuses a request naming another model (404). Returns 0 when fine. */
static int check_model(conn *c, const char *name, enum MHD_Result *ret) {
    if (!name || !strcmp(name, c->s->p.served_model_name)) return 0;
    api_error err;
    errors_set(&err, 404, "model", "The model `%.200s` does not exist.", name);
    err.code = "model_not_found";
    *ret = reply_error(c, &err, NULL);
    return -1;
}

static cJSON *model_card(server *s) {
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "id", s->p.served_model_name);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", (double)s->started);
    cJSON_AddStringToObject(m, "owned_by", "engram");
    cJSON_AddNumberToObject(m, "max_model_len", engine_context_length(s->e));
    return m;
}

static enum MHD_Result handle_models(conn *c) {
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "object", "list");
    cJSON *data = cJSON_AddArrayToObject(root, "data");
    cJSON_AddItemToArray(data, model_card(c->s));
    return reply_json(c, 200, root);
}

static enum MHD_Result handle_model(conn *c, const char *id) {
    enum MHD_Result ret;
    if (check_model(c, id, &ret)) return ret;
    return reply_json(c, 200, model_card(c->s));
}

static enum MHD_Result handle_health(conn *c) {
    if (!atomic_load(&c->s->ready)) return fail(c, 503, NULL, "The model is loading.");
    if (atomic_load(&c->s->draining)) return fail(c, 503, NULL, "The server is shutting down.");
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "status", "ok");
    return reply_json(c, 200, root);
}

static enum MHD_Result handle_metrics(conn *c) {
    engine_stats st = {0};
    engram_store_stats es = {0};
    engram_fetch_stats fs = {0};
    if (atomic_load(&c->s->ready)) {
        engine_get_stats(c->s->e, &st);
        model_engram_store_stats(engine_model(c->s->e), &es);
        engine_fetch_stats(c->s->e, -1, &fs);
    }
    char *text = metrics_render(c->s->mx, &st, &es, &fs);
    return reply(c, 200, "text/plain; version=0.0.4; charset=utf-8", text, text ? strlen(text) : 0, NULL);
}

/* How a chat template writes an assistant's tool call: seen by rendering one. */
static tool_format template_tool_format(const chat_template *t) {
    static const char msgs[] =
        "[{\"role\": \"user\", \"content\": \"x\"}, {\"role\": \"assistant\", \"content\": \"\", \"tool_calls\": "
        "[{\"id\": \"call_0\", \"type\": \"function\", \"function\": {\"name\": \"probe\", \"arguments\": \"{}\"}}]}]";
    static const char tools[] = "[{\"type\": \"function\", \"function\": {\"name\": \"probe\", \"description\": \"\", "
                                "\"parameters\": {\"type\": \"object\", \"properties\": {}}}}]";
    char *out = NULL, err[256];
    cJSON *m = cJSON_Parse(msgs), *tl = cJSON_Parse(tools);
    int rc = t && m && tl ? chat_template_render(t, m, tl, false, &out, err, sizeof(err)) : CHAT_TEMPLATE_ERR_NOMEM;
    cJSON_Delete(m);
    cJSON_Delete(tl);
    if (rc != CHAT_TEMPLATE_OK) return TOOL_FORMAT_NONE;
    tool_format f = tool_format_detect(out);
    free(out);
    return f;
}

/* Renders chat messages through the template (with the generation prompt). */
static int render_chat(conn *c, const cJSON *messages, const cJSON *tools, char **out, enum MHD_Result *ret) {
    char err[512];
    if (!c->s->tmpl) {
        *ret = fail(c, 400, "messages",
                    "This model has no tokenizer or chat template: use /v1/completions with a list of token ids.");
        return -1;
    }
    if (tools && c->s->tool_fmt == TOOL_FORMAT_NONE) {
        *ret = fail(c, 400, "tools",
                    "This model's chat template writes no tool calls this server can parse (it parses Hermes-style "
                    "<tool_call> blocks, as Qwen's templates write them).");
        return -1;
    }
    int rc = chat_template_render(c->s->tmpl, messages, tools, true, out, err, sizeof(err));
    if (rc == CHAT_TEMPLATE_OK) return 0;
    api_error e;
    errors_set(&e, rc == CHAT_TEMPLATE_ERR_NOMEM ? 500 : 400, "messages", "The chat template failed: %s", err);
    *ret = reply_error(c, &e, NULL);
    return -1;
}

static int encode_text(conn *c, const char *text, bool add_special, const char *param, int32_t **ids, size_t *n,
                       enum MHD_Result *ret) {
    if (!c->s->tok) {
        *ret = fail(c, 400, param, "This model has no tokenizer: send the prompt as a list of token ids.");
        return -1;
    }
    int rc = tokenizer_encode(c->s->tok, text, strlen(text), add_special, ids, n);
    if (rc == TOKENIZER_OK) return 0;
    api_error e;
    errors_set(&e, rc == TOKENIZER_ERR_NOMEM ? 500 : 400, param, "Cannot tokenize '%s': %s.", param,
               tokenizer_status_str(rc));
    *ret = reply_error(c, &e, NULL);
    return -1;
}

static enum MHD_Result handle_tokenize(conn *c) {
    api_tokenize t;
    api_error err;
    if (api_parse_tokenize(c->body, c->len, &t, &err)) return reply_error(c, &err, NULL);
    enum MHD_Result ret;
    char *rendered = NULL;
    int32_t *ids = NULL;
    size_t n = 0;
    if (check_model(c, t.model, &ret) ||
        (t.messages && render_chat(c, t.messages, NULL, &rendered, &ret)) ||
        encode_text(c, rendered ? rendered : t.prompt_text, t.add_special, t.messages ? "messages" : "prompt", &ids,
                    &n, &ret)) {
        free(rendered);
        api_tokenize_free(&t);
        return ret;
    }
    cJSON *root = cJSON_CreateObject();
    cJSON *arr = cJSON_AddArrayToObject(root, "tokens");
    for (size_t i = 0; i < n; i++) cJSON_AddItemToArray(arr, cJSON_CreateNumber(ids[i]));
    cJSON_AddNumberToObject(root, "count", (double)n);
    cJSON_AddNumberToObject(root, "max_model_len", engine_context_length(c->s->e));
    free(ids);
    free(rendered);
    api_tokenize_free(&t);
    return reply_json(c, 200, root);
}

static enum MHD_Result handle_detokenize(conn *c) {
    api_detokenize d;
    api_error err;
    if (api_parse_detokenize(c->body, c->len, &d, &err)) return reply_error(c, &err, NULL);
    enum MHD_Result ret;
    if (check_model(c, d.model, &ret)) {
        api_detokenize_free(&d);
        return ret;
    }
    if (!c->s->tok) {
        api_detokenize_free(&d);
        return fail(c, 400, "tokens", "This model has no tokenizer.");
    }
    size_t vocab = tokenizer_vocab_size(c->s->tok);
    for (int i = 0; i < d.n_ids; i++)
        if ((size_t)d.ids[i] >= vocab) {
            errors_set(&err, 400, "tokens", "Token id %d is outside the vocabulary (%zu ids).", d.ids[i], vocab);
            api_detokenize_free(&d);
            return reply_error(c, &err, NULL);
        }
    char *text = NULL;
    size_t len = 0;
    int rc = tokenizer_decode(c->s->tok, d.ids, (size_t)d.n_ids, false, &text, &len);
    api_detokenize_free(&d);
    if (rc != TOKENIZER_OK) return fail(c, 500, NULL, "Decoding failed.");
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "prompt", text);
    free(text);
    return reply_json(c, 200, root);
}

static enum MHD_Result handle_generate(conn *c, api_kind kind) {
    server *s = c->s;
    api_request ar;
    api_error err;
    if (api_parse_request(kind, c->body, c->len, &ar, &err)) return reply_error(c, &err, NULL);
    enum MHD_Result ret;
    char *rendered = NULL;
    int32_t *ids = NULL, *forced = NULL; /* forced: engram_force's ids, the output */
    size_t n = 0, n_forced = 0;
    const char *pparam = kind == API_CHAT ? "messages" : "prompt";
    if (check_model(c, ar.model, &ret)) goto out;
    if (kind == API_CHAT) {
        if (render_chat(c, ar.messages, ar.tools, &rendered, &ret) ||
            encode_text(c, rendered, false, pparam, &ids, &n, &ret))
            goto out;
    } else if (ar.prompt_text) {
        if (encode_text(c, ar.prompt_text, true, pparam, &ids, &n, &ret)) goto out;
    } else {
        ids = ar.prompt_ids;
        n = (size_t)ar.n_prompt_ids;
        ar.prompt_ids = NULL;
    }
    if (ar.force_text) {
        if (encode_text(c, ar.force_text, false, "engram_force", &forced, &n_forced, &ret)) goto out;
        if (n_forced == 0) {
            ret = fail(c, 400, "engram_force", "'engram_force' encodes to no tokens.");
            goto out;
        }
        if (ar.max_tokens <= 0 || (size_t)ar.max_tokens > n_forced) ar.max_tokens = (int)n_forced;
    }
    int ctx = engine_context_length(s->e), vocab = engine_vocab_size(s->e);
    if (n == 0) {
        ret = fail(c, 400, pparam, "The prompt is empty: it encodes to no tokens.");
        goto out;
    }
    for (size_t i = 0; i < n; i++)
        if (ids[i] >= vocab) {
            errors_set(&err, 400, pparam, "Token id %d is outside the vocabulary (%d ids).", ids[i], vocab);
            ret = reply_error(c, &err, NULL);
            goto out;
        }
    for (int i = 0; i < ar.n_bias; i++)
        if (ar.bias_ids[i] >= vocab) {
            errors_set(&err, 400, "logit_bias", "Token id %d in 'logit_bias' is outside the vocabulary (%d ids).",
                       ar.bias_ids[i], vocab);
            ret = reply_error(c, &err, NULL);
            goto out;
        }
    if ((long)n >= ctx || (ar.max_tokens > 0 && (long)n + ar.max_tokens > ctx)) {
        errors_set(&err, 400, (long)n >= ctx ? pparam : "max_tokens",
                   "This model's maximum context length is %d tokens. However, you requested %ld tokens (%zu in the "
                   "prompt, %d for the completion).",
                   ctx, (long)n + (ar.max_tokens > 0 ? ar.max_tokens : 0), n, ar.max_tokens > 0 ? ar.max_tokens : 0);
        err.code = "context_length_exceeded";
        ret = reply_error(c, &err, NULL);
        goto out;
    }
    int max_tokens = ar.max_tokens > 0 ? ar.max_tokens : ctx - (int)n;
    if (ar.max_tokens <= 0 && kind == API_COMPLETIONS && max_tokens > 16) max_tokens = 16; /* OpenAI's default */
    if (ar.engram_gates && ar.n > 1) {
        ret = fail(c, 400, "engram_gates", "'engram_gates' is only available with n = 1.");
        goto out;
    }
    if (ar.engram_gates && !engine_model(s->e)->engram) {
        ret = fail(c, 400, "engram_gates", "This model has no Engram layers, so it has no gates to return.");
        goto out;
    }
    if (atomic_load(&s->draining)) {
        ret = fail(c, 503, NULL, "The server is shutting down.");
        goto out;
    }

    engine_request_params rp = {0};
    rp.prompt = ids;
    rp.n_prompt = (int)n;
    rp.max_tokens = max_tokens;
    rp.sampling = ar.sampling;
    if (!ar.has_seed) { /* OpenAI: no seed, no reproducibility */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        rp.sampling.seed = (uint64_t)ts.tv_nsec * 0x9E3779B97F4A7C15ull ^ atomic_fetch_add(&s->next_id, 1) ^ s->id_salt;
    }
    rp.ignore_eos = ar.ignore_eos || forced;
    rp.forced = forced;
    rp.want_gates = ar.engram_gates;
    rp.logprobs = ar.logprobs;
    rp.top_logprobs = ar.top_logprobs;
    for (int i = 0; i < ar.n_stop; i++) rp.stop[i] = ar.stop[i];
    rp.n_stop = ar.n_stop;
    rp.bias_ids = ar.bias_ids;
    rp.bias_vals = ar.bias_vals;
    rp.n_bias = ar.n_bias;
    rp.notify = resume_cb;
    rp.notify_ctx = c->mc;
    /* One engine request per choice; with a seed, choice i samples with seed + i. */
    engine_request *reqs[API_MAX_N] = {0};
    for (int i = 0; i < ar.n; i++) {
        engine_request_params ri = rp;
        ri.sampling.seed = rp.sampling.seed + (uint64_t)i;
        int rc = engine_submit(s->e, &ri, &reqs[i]);
        if (rc != ENGINE_OK) {
            release_rest(reqs, 0, i);
            int status = errors_engine_http_status(rc);
            errors_set(&err, status, NULL, "%s%s", rc == ENGINE_ERR_QUEUE_FULL ? "The server is overloaded: " : "",
                       engine_status_str(rc));
            ret = reply_error(c, &err, NULL);
            goto out;
        }
    }
    engine_request *req = reqs[0];
    char id[64];
    snprintf(id, sizeof(id), "%s-%016llx%08llx", kind == API_CHAT ? "chatcmpl" : "cmpl", s->id_salt,
             (unsigned long long)atomic_fetch_add(&s->next_id, 1));
    long created = (long)time(NULL);

    if (!ar.stream) {
        c->generating = true;
        atomic_fetch_add(&s->active, 1);
        c->req = req;
        memcpy(c->reqs, reqs, sizeof(reqs));
        c->n_req = ar.n;
        c->kind = kind;
        c->gates = ar.engram_gates;
        c->logprobs = ar.logprobs;
        c->tools = ar.tools ? s->tool_fmt : TOOL_FORMAT_NONE;
        c->created = created;
        memcpy(c->id, id, sizeof(id));
        ret = continue_generation(c);
        goto out;
    }
    stream *st = calloc(1, sizeof(*st));
    struct MHD_Response *r = NULL;
    if (st) {
        st->s = s;
        st->mc = c->mc;
        st->req = req;
        memcpy(st->reqs, reqs, sizeof(reqs));
        st->n_req = ar.n;
        st->kind = kind;
        st->include_usage = ar.include_usage;
        st->logprobs = ar.logprobs;
        st->tools = ar.tools ? s->tool_fmt : TOOL_FORMAT_NONE;
        tool_parser_init(&st->tp, st->tools);
        reasoning_init(&st->rs, s->reasoning);
        st->created = created;
        memcpy(st->id, id, sizeof(id));
        if (kind == API_CHAT && sse_chunk(st, "", true, NULL, NULL)) { /* the first delta carries the role */
            free(st->buf);
            free(st);
            st = NULL;
        }
    }
    if (st) r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, SSE_BLOCK, stream_reader, st, stream_free);
    if (!r) {
        release_rest(reqs, 0, ar.n);
        if (st) {
            free(st->buf);
            free(st);
        }
        ret = fail(c, 500, NULL, "Out of memory.");
        goto out;
    }
    atomic_fetch_add(&s->active, 1); /* until stream_free */
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    add_cors(s, r);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    MHD_add_response_header(r, "X-Accel-Buffering", "no");
    metrics_http(s->mx, c->route, 200);
    ret = MHD_queue_response(c->mc, 200, r);
    MHD_destroy_response(r);
out:
    free(rendered);
    free(ids);
    free(forced);
    api_request_free(&ar);
    return ret;
}

typedef enum { R_COMPLETIONS, R_CHAT, R_MODELS, R_MODEL, R_HEALTH, R_METRICS, R_TOKENIZE, R_DETOKENIZE } route_id;

static const struct {
    const char *path; /* exact, or a prefix when it ends with '/' */
    const char *method;
    route_id id;
    bool open; /* no API key needed */
    const char *label;
} routes[] = {
    {"/v1/completions", "POST", R_COMPLETIONS, false, "/v1/completions"},
    {"/v1/chat/completions", "POST", R_CHAT, false, "/v1/chat/completions"},
    {"/v1/models", "GET", R_MODELS, false, "/v1/models"},
    {"/v1/models/", "GET", R_MODEL, false, "/v1/models"},
    {"/health", "GET", R_HEALTH, true, "/health"},
    {"/metrics", "GET", R_METRICS, true, "/metrics"},
    {"/tokenize", "POST", R_TOKENIZE, false, "/tokenize"},
    {"/detokenize", "POST", R_DETOKENIZE, false, "/detokenize"},
};

extern const unsigned char server_page_index[]; /* server/static/index.html, embedded by CMake */
extern const size_t server_page_index_len;

/* GET /: the memory-view page (each token shaded by its Engram gate). */
static enum MHD_Result handle_page(conn *c, const char *method) {
    api_error err;
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
        errors_set(&err, 405, NULL, "Method %s is not allowed on /; use GET.", method);
        return reply_error(c, &err, "GET, HEAD");
    }
    char *body = malloc(server_page_index_len);
    if (body) memcpy(body, server_page_index, server_page_index_len);
    return reply(c, 200, "text/html; charset=utf-8", body, server_page_index_len, NULL);
}

/* A CORS preflight: 204 with what a browser may send. */
static enum MHD_Result handle_preflight(conn *c) {
    struct MHD_Response *r = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    if (!r) return MHD_NO;
    add_cors(c->s, r);
    MHD_add_response_header(r, "Access-Control-Allow-Methods", "GET, POST, OPTIONS");
    MHD_add_response_header(r, "Access-Control-Allow-Headers", "Authorization, Content-Type");
    MHD_add_response_header(r, "Access-Control-Max-Age", "600");
    metrics_http(c->s->mx, c->route, 204);
    enum MHD_Result ret = MHD_queue_response(c->mc, 204, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result dispatch(conn *c, const char *url, const char *method) {
    int found = -1;
    const char *cors = c->s->p.cors_origin;
    if (cors && cors[0] && !strcmp(method, "OPTIONS")) return handle_preflight(c);
    if (!strcmp(url, "/")) {
        c->route = "/";
        return handle_page(c, method);
    }
    for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]) && found < 0; i++) {
        size_t pl = strlen(routes[i].path);
        if (routes[i].path[pl - 1] == '/' ? (!strncmp(url, routes[i].path, pl) && url[pl]) : !strcmp(url, routes[i].path))
            found = (int)i;
    }
    c->route = found >= 0 ? routes[found].label : "other";
    api_error err;
    if (found < 0) {
        errors_set(&err, 404, NULL, "Unknown route: %s %.200s", method, url);
        return reply_error(c, &err, NULL);
    }
    const char *want = routes[found].method;
    if (strcmp(method, want) != 0 && !(strcmp(want, "GET") == 0 && strcmp(method, "HEAD") == 0)) {
        errors_set(&err, 405, NULL, "Method %s is not allowed on %s; use %s.", method, routes[found].path, want);
        return reply_error(c, &err, strcmp(want, "GET") == 0 ? "GET, HEAD" : want);
    }
    if (!routes[found].open && !auth_ok(c)) {
        errors_set(&err, 401, NULL, "Incorrect or missing API key: send 'Authorization: Bearer <key>'.");
        return reply_error(c, &err, NULL);
    }
    if (c->too_big) {
        errors_set(&err, 413, NULL, "The request body is larger than the limit of %zu bytes.", c->s->p.max_body_bytes);
        return reply_error(c, &err, NULL);
    }
    if (!atomic_load(&c->s->ready) && routes[found].id != R_HEALTH && routes[found].id != R_METRICS)
        return fail(c, 503, NULL, "The model is loading; try again shortly.");
    switch (routes[found].id) {
    case R_COMPLETIONS: return handle_generate(c, API_COMPLETIONS);
    case R_CHAT: return handle_generate(c, API_CHAT);
    case R_MODELS: return handle_models(c);
    case R_MODEL: return handle_model(c, url + strlen(routes[found].path));
    case R_HEALTH: return handle_health(c);
    case R_METRICS: return handle_metrics(c);
    case R_TOKENIZE: return handle_tokenize(c);
    case R_DETOKENIZE: return handle_detokenize(c);
    }
    return MHD_NO;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *mc, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_data_size,
                                  void **con_cls) {
    server *s = cls;
    conn *c = *con_cls;
    if (!c) {
        if (!(c = calloc(1, sizeof(*c)))) return MHD_NO;
        c->s = s;
        c->mc = mc;
        c->route = "other";
        *con_cls = c;
        /* A body far over the limit is refused before it is read; one a little
         * over is read and dropped so the client sees the 413. */
        const char *cl = MHD_lookup_connection_value(mc, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl && strtoull(cl, NULL, 10) > 16 * (unsigned long long)s->p.max_body_bytes) {
            c->too_big = true;
            return dispatch(c, url, method);
        }
        return MHD_YES;
    }
    if (*upload_data_size) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        c->seen += n;
        if (c->too_big && c->seen > 16 * (unsigned long long)s->p.max_body_bytes)
            return dispatch(c, url, method); /* stop draining an endless body: 413 and close */
        if (c->too_big) return MHD_YES;
        if (c->len + n > s->p.max_body_bytes) {
            c->too_big = true;
            free(c->body);
            c->body = NULL;
            c->len = c->cap = 0;
            return MHD_YES;
        }
        if (c->len + n + 1 > c->cap) {
            size_t cap = (c->len + n + 1) * 2;
            if (cap > s->p.max_body_bytes + 1) cap = s->p.max_body_bytes + 1;
            char *q = realloc(c->body, cap);
            if (!q) return MHD_NO;
            c->body = q;
            c->cap = cap;
        }
        memcpy(c->body + c->len, upload_data, n);
        c->len += n;
        c->body[c->len] = 0;
        return MHD_YES;
    }
    if (c->req) return continue_generation(c); /* resumed by the engine */
    if (!c->body) c->body = strdup("");
    if (!c->body) return MHD_NO;
    return dispatch(c, url, method);
}

static void on_completed(void *cls, struct MHD_Connection *mc, void **con_cls, enum MHD_RequestTerminationCode toe) {
    conn *c = *con_cls;
    if (!c) return;
    if (c->req) { /* a non-streaming request whose connection closed */
        engine_request_detach(c->req); /* so the read below cannot arm a notify of a dead connection */
        engine_cancel(c->req);
        engine_output o;
        engine_request_read(c->req, &o, NULL, NULL);
        free(o.text);
        metrics_request_done(c->s->mx, "abort", &o, util_now());
        engine_request_release(c->req);
        release_rest(c->reqs, c->cur + 1, c->n_req);
    }
    cJSON_Delete(c->choices);
    if (c->generating) atomic_fetch_sub(&c->s->active, 1);
    free(c->body);
    strbuf_free(&c->text);
    free(c);
    *con_cls = NULL;
}

void server_set_engine(server *s, engine *e) {
    s->e = e;
    s->tok = engine_tokenizer(e);
    atomic_store(&s->ready, true); /* publishes e and tok to the HTTP threads */
}

int server_start(const server_params *p, metrics *m, server **out, char *err, size_t errlen) {
    *out = NULL;
    server *s = calloc(1, sizeof(*s));
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    s->p = *p;
    s->mx = m;
    s->started = (long)time(NULL);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    s->id_salt = ((unsigned long long)ts.tv_nsec << 20) ^ (unsigned long long)ts.tv_sec ^ ((unsigned long long)getpid() << 40);
    atomic_init(&s->draining, false);
    atomic_init(&s->ready, false);
    atomic_init(&s->active, 0);
    atomic_init(&s->next_id, 1);
    if (p->model_dir && chat_template_load_dir(p->model_dir, &s->tmpl, err, errlen) != CHAT_TEMPLATE_OK) {
        free(s);
        return -1;
    }
    s->tool_fmt = template_tool_format(s->tmpl);
    s->reasoning = (reasoning_format)p->reasoning;

    struct addrinfo hints = {0}, *ai = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    char port[16];
    snprintf(port, sizeof(port), "%d", p->port);
    int grc = getaddrinfo(p->host, port, &hints, &ai);
    if (grc != 0 || !ai) {
        snprintf(err, errlen, "cannot resolve host %s: %s", p->host, gai_strerror(grc));
        chat_template_destroy(s->tmpl);
        free(s);
        return -1;
    }
    memcpy(&s->addr, ai->ai_addr, ai->ai_addrlen);
    bool v6 = ai->ai_family == AF_INET6;
    freeaddrinfo(ai);

    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    if (v6) flags |= MHD_USE_IPv6;
    s->d = MHD_start_daemon(flags, (uint16_t)p->port, NULL, NULL, on_request, s, MHD_OPTION_SOCK_ADDR,
                            (struct sockaddr *)&s->addr, MHD_OPTION_THREAD_POOL_SIZE,
                            (unsigned)(p->http_threads > 0 ? p->http_threads : 4), MHD_OPTION_CONNECTION_TIMEOUT,
                            (unsigned)(p->connection_timeout > 0 ? p->connection_timeout : 300),
                            MHD_OPTION_THREAD_STACK_SIZE, (size_t)(8u << 20), MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_END);
    if (!s->d) {
        snprintf(err, errlen, "cannot listen on %s:%d (address in use or not available)", p->host, p->port);
        chat_template_destroy(s->tmpl);
        free(s);
        return -1;
    }
    *out = s;
    return 0;
}

void server_drain(server *s) {
    if (s) atomic_store(&s->draining, true);
}

int server_active(server *s) { return s ? atomic_load(&s->active) : 0; }

void server_stop(server *s) {
    if (!s) return;
    /* Stop accepting, let requests in flight send their last bytes (the
     * engine has ended them), then stop the threads. */
    MHD_socket lsock = MHD_quiesce_daemon(s->d);
    for (int i = 0; i < 500 && atomic_load(&s->active) > 0; i++) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    MHD_stop_daemon(s->d);
    if (lsock != MHD_INVALID_SOCKET) close(lsock);
    chat_template_destroy(s->tmpl);
    free(s);
}
