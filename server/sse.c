/* A streaming generation as Server-Sent Events: one chunk per engine read
 * (a delta of text, reasoning or tool calls, with logprobs; of empty text
 * for new tokens of a model without a tokenizer), a keep-alive
 * comment after each prefill chunk, the finish chunk of each choice, usage
 * when asked for, then [DONE]. The stream is owned by its libmicrohttpd
 * response, whose content-reader callback reads the engine; the connection
 * is suspended while the engine has nothing new. */
#include <stdio.h>

#include "base/util.h"
#include "server/server_internal.h"

#define SSE_BLOCK 4096

/* A streaming generation, owned by its libmicrohttpd response. */
typedef struct {
    server *s;
    struct MHD_Connection *mc;
    generation g;
    engine_request *req;               /* g.reqs[cur], the choice being streamed */
    int cur;
    int completion_tokens;             /* summed over the finished choices */
    int cached_tokens;                 /* choice 0's prompt tokens from the prefix cache */
    char *buf; /* SSE bytes not yet handed to libmicrohttpd: buf[off..len) */
    size_t len, off, cap;
    bool ended;    /* [DONE] is in buf */
    bool recorded; /* metrics_request_done called */
    size_t text_offset; /* completions' logprobs.text_offset so far */
    int n_shown;        /* the current choice's tokens a chunk went out for (no tokenizer: empty text) */
    engine_output last;
    unsigned long long *sent; /* the conn's count of body bytes sent (the reader runs only while it lives) */
    tool_parser tp;     /* the current choice's */
    reasoning_splitter rs; /* the current choice's (--reasoning-parser) */
} stream;

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

/* Appends `data: <text>\n\n`. */
static int sse_data(stream *st, const char *text) {
    return sse_append(st, "data: ", 6) || sse_append(st, text, strlen(text)) || sse_append(st, "\n\n", 2) ? -1 : 0;
}

/* Appends `data: <json>\n\n` and frees obj; -1 when an allocation failed
 * while obj was built (a field would be missing) or printed. */
static int sse_event(stream *st, cJSON *obj) {
    char *s = obj ? cJSON_PrintUnformatted(obj) : NULL;
    cJSON_Delete(obj);
    if (api_json_take_oom()) free(s), s = NULL;
    if (!s) return -1;
    int rc = sse_data(st, s);
    free(s);
    return rc;
}

/* One chunk with one choice, sent: for chat, a delta with the role (when
 * role), the content text (tlen bytes, NUL allowed), the reasoning text
 * (rlen bytes, the same) and the tool calls completed since calls_from (each
 * when given: NULL, or calls_from < 0, for none); for completions the text
 * (""). Then logprobs (owned, or NULL) and finish (or NULL). */
static int sse_delta(stream *st, bool role, const char *text, size_t tlen, const char *reasoning, size_t rlen,
                     int calls_from, const char *finish, cJSON *lps) {
    bool chat = st->g.kind == API_CHAT;
    cJSON *root = response_head(st->s, st->g.id, chat ? "chat.completion.chunk" : "text_completion", st->g.created);
    cJSON *choices = cJSON_AddArrayToObject(root, "choices");
    cJSON *ch = cJSON_CreateObject();
    if (!choices || !ch) {
        cJSON_Delete(ch), cJSON_Delete(root), cJSON_Delete(lps);
        return -1;
    }
    json_push(choices, ch);
    cJSON_AddNumberToObject(ch, "index", st->cur);
    if (chat) {
        cJSON *delta = cJSON_AddObjectToObject(ch, "delta");
        if (role) cJSON_AddStringToObject(delta, "role", "assistant");
        if (text) json_put(delta, "content", response_string(text, tlen));
        if (reasoning) json_put(delta, "reasoning_content", response_string(reasoning, rlen));
        if (calls_from >= 0)
            json_put(delta, "tool_calls", response_tool_calls(st->s, &st->tp, calls_from, true));
    } else {
        json_put(ch, "text", response_string(text, text ? tlen : 0));
    }
    if (lps) json_put(ch, "logprobs", lps);
    else cJSON_AddNullToObject(ch, "logprobs");
    if (finish) cJSON_AddStringToObject(ch, "finish_reason", finish);
    else cJSON_AddNullToObject(ch, "finish_reason");
    if (st->g.include_usage) cJSON_AddNullToObject(root, "usage");
    return sse_event(st, root);
}

/* A chunk of text (len bytes; or NULL for none) with logprobs and finish (see sse_delta). */
static int sse_chunk(stream *st, const char *text, size_t len, bool role, const char *finish, cJSON *lps) {
    return sse_delta(st, role, text, len, NULL, 0, -1, finish, lps);
}

/* A streamed chat choice's next text (or its end, final): the reasoning
 * split off goes out as reasoning_content, the rest as content except what
 * may start a tool call, and each call when it closes. lps (owned) rides on
 * the first chunk. */
static int stream_chat_text(stream *st, const char *text, size_t len, cJSON *lps, bool final) {
    strbuf r = {0}, c = {0}, part = {0}; /* bytes with lengths: a NUL is text */
    int had = st->tp.n_calls;
    int rc = final ? reasoning_finish(&st->rs, &r, &c) : reasoning_feed(&st->rs, text ? text : "", len, &r, &c);
    if (!rc && r.len) {
        rc = sse_delta(st, false, NULL, 0, r.s, r.len, -1, NULL, lps);
        lps = NULL;
    }
    if (!rc && st->g.tools)
        rc = tool_parser_feed(&st->tp, c.s ? c.s : "", c.len, &part) || (final && tool_parser_finish(&st->tp, &part));
    else if (!rc)
        part = c, c = (strbuf){0};
    if (!rc && (part.len || lps)) {
        rc = sse_chunk(st, part.len ? part.s : NULL, part.len, false, NULL, lps);
        lps = NULL;
    }
    if (!rc && st->tp.n_calls > had) rc = sse_delta(st, false, NULL, 0, NULL, 0, had, NULL, NULL);
    cJSON_Delete(lps);
    strbuf_free(&r), strbuf_free(&c), strbuf_free(&part);
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
    cJSON *lps = st->g.logprobs && o->lp_end > o->lp_begin
                     ? response_logprobs(st->s, st->g.kind, engine_request_logprobs(st->req), o->lp_begin, o->lp_end,
                                         &st->text_offset)
                     : NULL;
    bool split = st->g.kind == API_CHAT && (st->rs.fmt || st->g.tools);
    /* a model without a tokenizer (synthetic) has no text: a chunk of none
     * for each read with new tokens still shows clients when tokens come */
    bool untexted = !engine_tokenizer(st->s->e) && o->n_generated > st->n_shown && o->finish == ENGINE_FINISH_NONE;
    st->n_shown = o->n_generated;
    if (split) {
        if (stream_chat_text(st, o->text, o->len, lps, false)) return -1;
    } else if ((o->len || lps || untexted) &&
               sse_chunk(st, o->len ? o->text : (st->g.kind == API_CHAT ? NULL : ""), o->len, false, NULL, lps)) {
        return -1;
    }
    if (o->finish == ENGINE_FINISH_NONE) return 0;
    stream_record(st, response_finish_str(o->finish));
    if (o->finish == ENGINE_FINISH_STOP || o->finish == ENGINE_FINISH_LENGTH) {
        const char *finish = response_finish_str(o->finish);
        if (split) { /* what was held (an unclosed call, a partial marker) goes out where it was */
            if (stream_chat_text(st, NULL, 0, NULL, true)) return -1;
            if (st->tp.n_calls && !(st->tp.unclosed && o->finish == ENGINE_FINISH_LENGTH))
                finish = "tool_calls"; /* a call cut off by max_tokens: "length" */
            tool_parser_free(&st->tp);
            tool_parser_init(&st->tp, st->g.tools);
            reasoning_free(&st->rs);
            reasoning_init(&st->rs, st->s->reasoning);
        }
        if (sse_chunk(st, st->g.kind == API_CHAT ? NULL : "", 0, false, finish, NULL)) return -1;
        st->completion_tokens += o->n_generated;
        if (st->cur == 0) st->cached_tokens = o->n_cached; /* the prompt's, counted once as prompt_tokens is */
        if (st->cur + 1 < st->g.n_req) { /* on to the next choice */
            engine_request_release(st->req);
            st->req = st->g.reqs[++st->cur];
            st->g.reqs[st->cur - 1] = NULL;
            st->recorded = false;
            st->text_offset = 0;
            st->n_shown = 0;
            return st->g.kind == API_CHAT ? sse_chunk(st, "", 0, true, NULL, NULL) : 0;
        }
        if (st->g.include_usage) {
            const char *object = st->g.kind == API_CHAT ? "chat.completion.chunk" : "text_completion";
            cJSON *root = response_head(st->s, st->g.id, object, st->g.created);
            cJSON_AddArrayToObject(root, "choices");
            engine_output tot = *o;
            tot.n_generated = st->completion_tokens;
            tot.n_cached = st->cached_tokens;
            json_put(root, "usage", response_usage(&tot));
            if (sse_event(st, root)) return -1;
        }
    } else {
        api_error err;
        response_finish_error(o, &err);
        char *s = errors_json(&err);
        if (!s) return -1;
        int rc = sse_data(st, s);
        free(s);
        if (rc) return -1;
    }
    st->ended = true;
    return sse_append(st, "data: [DONE]\n\n", 14);
}

static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max) {
    stream *st = cls;
    api_json_take_oom(); /* a mark left by another connection's callback on this thread is not ours */
    for (;;) {
        if (st->off < st->len) {
            size_t n = st->len - st->off < max ? st->len - st->off : max;
            memcpy(buf, st->buf + st->off, n);
            st->off += n;
            *st->sent += n;
            return (ssize_t)n;
        }
        st->off = st->len = 0;
        if (st->ended) return MHD_CONTENT_READER_END_OF_STREAM;
        engine_output o;
        if (!engine_request_read(st->req, &o, http_suspend, st->mc)) return 0; /* suspended */
        if (o.progress && !o.len && o.finish == ENGINE_FINISH_NONE && http_peer_gone(st->mc)) {
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
    generate_release(st->g.reqs, st->cur + 1, st->g.n_req);
    tool_parser_free(&st->tp);
    reasoning_free(&st->rs);
    atomic_fetch_sub(&st->s->active, 1);
    free(st->buf);
    free(st);
}

/* The stream of g for c's connection; NULL out of memory. */
static stream *stream_create(conn *c, const generation *g) {
    stream *st = calloc(1, sizeof(*st));
    if (!st) return NULL;
    st->s = c->s;
    st->mc = c->mc;
    st->sent = &c->sent;
    st->g = *g;
    st->req = g->reqs[0];
    tool_parser_init(&st->tp, g->tools);
    reasoning_init(&st->rs, c->s->reasoning);
    return st;
}

enum MHD_Result sse_start(conn *c, generation *g) {
    server *s = c->s;
    stream *st = stream_create(c, g);
    /* chat: the first delta carries the role */
    bool ok = st && !(g->kind == API_CHAT && sse_chunk(st, "", 0, true, NULL, NULL));
    struct MHD_Response *r =
        ok ? MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, SSE_BLOCK, stream_reader, st, stream_free) : NULL;
    if (!r) {
        generate_release(g->reqs, 0, g->n_req);
        if (st) {
            free(st->buf);
            free(st);
        }
        return fail(c, 500, NULL, "Out of memory.");
    }
    atomic_fetch_add(&s->active, 1); /* until stream_free */
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    http_response_common(c, r, 200);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    MHD_add_response_header(r, "X-Accel-Buffering", "no");
    enum MHD_Result ret = MHD_queue_response(c->mc, 200, r);
    MHD_destroy_response(r);
    return ret;
}
