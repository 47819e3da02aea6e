/* The JSON of responses: the head ({"id", "object", "created", "model"}),
 * choices (a chat message with reasoning and tool calls split off, or a
 * completion's text), usage, logprobs in chat's and completions' shapes,
 * Engram gates, and the errors of a generation that did not finish. Used
 * whole by generate.c and chunk by chunk by sse.c. */
#include <stdio.h>

#include "server/server_internal.h"
#include "tokenizer/tokenizer.h"

/* ---- strings with lengths: generated text may hold the byte 0x00 ---- */

int response_escape(strbuf *b, const char *s, size_t n) {
    /* cJSON's own escapes (its printer stops at the first NUL, ours does not) */
    static const char hex[] = "0123456789abcdef";
    if (strbuf_reserve(b, n + 2)) return -1;
    int rc = strbuf_addc(b, '"');
    for (size_t i = 0; i < n && !rc; i++) {
        unsigned char ch = (unsigned char)s[i];
        const char *esc = ch == '"' ? "\\\"" : ch == '\\' ? "\\\\" : ch == '\b' ? "\\b" : ch == '\f' ? "\\f"
                          : ch == '\n' ? "\\n" : ch == '\r' ? "\\r" : ch == '\t' ? "\\t" : NULL;
        if (esc) rc = strbuf_add(b, esc, 2);
        else if (ch < 0x20) rc = strbuf_add(b, (const char[]){'\\', 'u', '0', '0', hex[ch >> 4], hex[ch & 15]}, 6);
        else rc = strbuf_addc(b, (char)ch);
    }
    return rc || strbuf_addc(b, '"') ? -1 : 0;
}

cJSON *response_string(const char *s, size_t n) {
    if (!memchr(s ? s : "", 0, s ? n : 0)) { /* the common case: cJSON's own string */
        char *z = s ? strndup(s, n) : NULL;
        if (s && !z) return NULL;
        cJSON *item = cJSON_CreateString(z ? z : "");
        free(z);
        return item;
    }
    strbuf b = {0};
    cJSON *item = response_escape(&b, s, n) ? NULL : cJSON_CreateRaw(b.s); /* printed as is */
    strbuf_free(&b);
    return item;
}

const char *response_finish_str(engine_finish f) {
    switch (f) {
    case ENGINE_FINISH_STOP: return "stop";
    case ENGINE_FINISH_LENGTH: return "length";
    case ENGINE_FINISH_ERROR: return "error";
    default: return "abort";
    }
}

/* The error a request that did not finish normally earns. */
void response_finish_error(const engine_output *o, api_error *err) {
    if (o->finish == ENGINE_FINISH_ABORT)
        api_error_set(err, 503, NULL, "The server is shutting down; the request was not completed.");
    else if (o->finish == ENGINE_FINISH_CANCEL)
        api_error_set(err, 500, NULL, "The request was cancelled.");
    else
        api_error_set(err, 500, NULL, "Generation failed: %s.", engine_status_str(o->error));
}

cJSON *response_usage(const engine_output *o) {
    cJSON *u = cJSON_CreateObject();
    cJSON_AddNumberToObject(u, "prompt_tokens", o->n_prompt);
    cJSON_AddNumberToObject(u, "completion_tokens", o->n_generated);
    cJSON_AddNumberToObject(u, "total_tokens", o->n_prompt + o->n_generated);
    cJSON *d = cJSON_AddObjectToObject(u, "prompt_tokens_details"); /* OpenAI's: prompt tokens from the cache */
    if (d) cJSON_AddNumberToObject(d, "cached_tokens", o->n_cached);
    return u;
}

cJSON *response_head(server *s, const char *id, const char *object, long created) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", id);
    cJSON_AddStringToObject(o, "object", object);
    cJSON_AddNumberToObject(o, "created", (double)created);
    cJSON_AddStringToObject(o, "model", s->p.served_model_name);
    return o;
}

/* ---- logprobs ---- */

/* The text of one token (special tokens kept) into *out (heap, *len bytes;
 * it may hold NUL): "<id>" without a tokenizer. Returns 0, or -1 out of memory. */
static int token_text(server *s, int32_t id, char **out, size_t *len) {
    const tokenizer *tok = engine_tokenizer(s->e);
    *out = NULL;
    *len = 0;
    if (tok && tokenizer_decode(tok, &id, 1, false, out, len) == TOKENIZER_OK) return 0;
    free(*out);
    char num[16];
    *len = (size_t)snprintf(num, sizeof(num), "<%d>", id); /* no tokenizer: ids as text */
    return (*out = strdup(num)) ? 0 : -1;
}

/* The text of one token as a JSON string item (NULL out of memory); *len
 * (when len) its bytes. */
static cJSON *token_item(server *s, int32_t id, size_t *len) {
    char *piece;
    size_t n;
    if (token_text(s, id, &piece, &n)) return NULL;
    cJSON *item = response_string(piece, n);
    free(piece);
    if (len) *len = n;
    return item;
}

/* {"token", "logprob", "bytes"} of chat's logprobs.content entries: "bytes"
 * are the token's own bytes (a piece of a character split over tokens stays
 * that piece, where "token" shows U+FFFD), as OpenAI's. */
static cJSON *chat_token_lp(server *s, int32_t id, float logprob) {
    cJSON *o = cJSON_CreateObject();
    cJSON *bytes = cJSON_CreateArray();
    const tokenizer *tok = engine_tokenizer(s->e);
    char *text = NULL, *raw = NULL;
    size_t tn = 0, n = 0;
    int trc = token_text(s, id, &text, &tn);
    if (!tok || tokenizer_token_bytes(tok, id, &raw, &n) != TOKENIZER_OK) { /* as its text */
        free(raw);
        raw = NULL;
        n = tn;
    }
    const unsigned char *p = (const unsigned char *)(raw ? raw : text);
    for (size_t k = 0; p && k < n; k++) json_push(bytes, cJSON_CreateNumber(p[k]));
    json_put(o, "token", trc ? NULL : response_string(text, tn));
    free(raw);
    free(text);
    cJSON_AddNumberToObject(o, "logprob", logprob);
    json_put(o, "bytes", bytes);
    return o;
}

/* completions' top_logprobs entry: {token text: logprob} for the
 * alternatives, the first of two ids that share a text kept. Written by hand
 * (a raw item) since a token's text, a key here, may hold NUL, which cJSON's
 * keys cannot. NULL out of memory. */
static cJSON *completion_alternatives(server *s, const engine_logprob *lp) {
    char *texts[ENGINE_MAX_TOP_LOGPROBS] = {0};
    size_t lens[ENGINE_MAX_TOP_LOGPROBS] = {0};
    strbuf b = {0};
    int rc = strbuf_addc(&b, '{'), n_keys = 0;
    for (int k = 0; k < lp->n_top && k < ENGINE_MAX_TOP_LOGPROBS && !rc; k++) {
        if ((rc = token_text(s, lp->top_ids[k], &texts[k], &lens[k]))) break;
        bool dup = false;
        for (int j = 0; j < k && !dup; j++) dup = lens[j] == lens[k] && !memcmp(texts[j], texts[k], lens[k]);
        if (dup) continue;
        cJSON *num = cJSON_CreateNumber(lp->top_logprobs[k]); /* cJSON's number format, as elsewhere */
        char *v = num ? cJSON_PrintUnformatted(num) : NULL;
        rc = !v || (n_keys++ && strbuf_addc(&b, ',')) || response_escape(&b, texts[k], lens[k]) ||
             strbuf_addc(&b, ':') || strbuf_add(&b, v, strlen(v));
        free(v);
        cJSON_Delete(num);
    }
    cJSON *item = !rc && !strbuf_addc(&b, '}') ? cJSON_CreateRaw(b.s) : NULL;
    for (int k = 0; k < ENGINE_MAX_TOP_LOGPROBS; k++) free(texts[k]);
    strbuf_free(&b);
    return item;
}

/* The "logprobs" of a choice for entries [from, to): chat's {"content": [...]}
 * or completions' {"tokens", "token_logprobs", "top_logprobs", "text_offset"}. */
cJSON *response_logprobs(server *s, api_kind kind, const engine_logprob *lp, int from, int to, size_t *text_offset) {
    cJSON *o = cJSON_CreateObject();
    if (kind == API_CHAT) {
        cJSON *content = cJSON_AddArrayToObject(o, "content");
        for (int i = from; i < to; i++) {
            cJSON *e = chat_token_lp(s, lp[i].id, lp[i].logprob);
            cJSON *top = cJSON_AddArrayToObject(e, "top_logprobs");
            for (int k = 0; k < lp[i].n_top; k++)
                json_push(top, chat_token_lp(s, lp[i].top_ids[k], lp[i].top_logprobs[k]));
            json_push(content, e);
        }
        return o;
    }
    cJSON *tokens = cJSON_AddArrayToObject(o, "tokens"), *tlp = cJSON_AddArrayToObject(o, "token_logprobs");
    cJSON *top = cJSON_AddArrayToObject(o, "top_logprobs"), *off = cJSON_AddArrayToObject(o, "text_offset");
    for (int i = from; i < to; i++) {
        size_t len = 0;
        json_push(tokens, token_item(s, lp[i].id, &len));
        json_push(tlp, cJSON_CreateNumber(lp[i].logprob));
        json_push(top, completion_alternatives(s, &lp[i]));
        json_push(off, cJSON_CreateNumber((double)*text_offset));
        *text_offset += len;
    }
    return o;
}

/* {"layers", "n_prompt", "token_ids", "tokens", "gates"} of a finished request
 * that asked for Engram gates: each token that went through the model (text of
 * that token alone, special tokens kept) with its gate per Engram layer. */
cJSON *response_gates(server *s, engine_request *r, int n_prompt) {
    const int32_t *ids;
    const float *g;
    int n, nl;
    if (!engine_request_gates(r, &ids, &n, &g, &nl)) return NULL;
    const tokenizer *tok = engine_tokenizer(s->e);
    cJSON *o = cJSON_CreateObject();
    cJSON *layers = cJSON_AddArrayToObject(o, "layers");
    for (int l = 0; l < nl; l++) json_push(layers, cJSON_CreateNumber(engine_engram_layer_id(s->e, l)));
    cJSON_AddNumberToObject(o, "n_prompt", n_prompt);
    cJSON *jids = cJSON_AddArrayToObject(o, "token_ids");
    cJSON *jtok = cJSON_AddArrayToObject(o, "tokens");
    cJSON *jg = cJSON_AddArrayToObject(o, "gates");
    for (int t = 0; t < n; t++) {
        json_push(jids, cJSON_CreateNumber(ids[t]));
        char *piece = NULL;
        size_t len = 0;
        if (tok && tokenizer_decode(tok, ids + t, 1, false, &piece, &len) == TOKENIZER_OK)
            json_push(jtok, response_string(piece, len));
        else
            json_push(jtok, cJSON_CreateString(""));
        free(piece);
        cJSON *row = cJSON_CreateArray();
        for (int l = 0; l < nl; l++) json_push(row, cJSON_CreateNumber(g[(size_t)t * nl + l]));
        json_push(jg, row);
    }
    return o;
}

/* OpenAI's "tool_calls" of p's calls from `from` on: [{"id", "type":
 * "function", "function": {"name", "arguments"}}], with "index" (their
 * place among the choice's calls) in a stream's delta. */
cJSON *response_tool_calls(server *s, const tool_parser *p, int from, bool indexed) {
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
        json_push(arr, o);
    }
    return arr;
}

/* A chat choice's "message" out of the whole generated text: the reasoning
 * split off (--reasoning-parser), then the tool calls parsed out of the rest
 * (the request gave tools); *finish becomes "tool_calls" when there are
 * some. Returns 0, or -1 out of memory. */
static int chat_message(conn *c, cJSON *ch, const char **finish) {
    const char *text = c->text.s ? c->text.s : "";
    cJSON *msg = cJSON_AddObjectToObject(ch, "message");
    cJSON_AddStringToObject(msg, "role", "assistant");
    if (!c->s->reasoning && !c->g.tools) {
        cJSON *content = response_string(text, c->text.len);
        if (content && cJSON_AddItemToObjectCS(msg, "content", content)) return 0;
        cJSON_Delete(content);
        return -1;
    }
    /* chat/'s parsers take and give bytes with lengths: a NUL is text */
    reasoning_splitter rs;
    tool_parser tp;
    reasoning_init(&rs, c->s->reasoning);
    tool_parser_init(&tp, c->g.tools);
    strbuf reasoning = {0}, answer = {0}, content = {0}; /* answer: what follows the reasoning */
    int rc = reasoning_feed(&rs, text, c->text.len, &reasoning, &answer) ||
             reasoning_finish(&rs, &reasoning, &answer);
    if (!rc && c->g.tools) /* the calls out of the answer; the rest is the content */
        rc = tool_parser_feed(&tp, answer.s ? answer.s : "", answer.len, &content) ||
             tool_parser_finish(&tp, &content);
    else if (!rc)
        content = answer, answer = (strbuf){0};
    if (!rc) {
        size_t k = 0; /* leading whitespace (a NUL is not) */
        while (k < content.len && (content.s[k] == ' ' || content.s[k] == '\n' || content.s[k] == '\t' ||
                                   content.s[k] == '\r'))
            k++;
        cJSON *item = k < content.len || !tp.n_calls ? response_string(content.s, content.len)
                                                     : cJSON_CreateNull(); /* only calls */
        rc = !item || !cJSON_AddItemToObjectCS(msg, "content", item);
        if (c->s->reasoning) {
            cJSON *ri = reasoning.len ? response_string(reasoning.s, reasoning.len) : cJSON_CreateNull();
            rc |= !ri || !cJSON_AddItemToObjectCS(msg, "reasoning_content", ri);
        }
    }
    if (!rc && tp.n_calls) {
        json_put(msg, "tool_calls", response_tool_calls(c->s, &tp, 0, false));
        if (!(tp.unclosed && !strcmp(*finish, "length"))) *finish = "tool_calls"; /* a call cut off: "length" */
    }
    strbuf_free(&reasoning), strbuf_free(&answer), strbuf_free(&content);
    reasoning_free(&rs);
    tool_parser_free(&tp);
    return rc ? -1 : 0;
}


int response_choice_add(conn *c, const engine_output *o, cJSON *lps) {
    if (!c->choices) c->choices = cJSON_CreateArray();
    cJSON *ch = cJSON_CreateObject();
    if (!c->choices || !ch) {
        cJSON_Delete(ch), cJSON_Delete(lps);
        return -1;
    }
    json_push(c->choices, ch);
    cJSON_AddNumberToObject(ch, "index", c->cur);
    const char *finish = response_finish_str(o->finish);
    if (c->g.kind == API_CHAT) {
        if (chat_message(c, ch, &finish)) {
            cJSON_Delete(lps);
            return -1;
        }
    } else {
        cJSON *text = response_string(c->text.s, c->text.len);
        if (!text || !cJSON_AddItemToObjectCS(ch, "text", text)) {
            cJSON_Delete(text);
            cJSON_Delete(lps);
            return -1;
        }
    }
    if (lps) json_put(ch, "logprobs", lps);
    else cJSON_AddNullToObject(ch, "logprobs");
    cJSON_AddStringToObject(ch, "finish_reason", finish);
    return api_json_take_oom() ? -1 : 0; /* the choice would lack a field */
}

cJSON *response_completion(conn *c, const engine_output *o, cJSON *gates) {
    const char *object = c->g.kind == API_CHAT ? "chat.completion" : "text_completion";
    cJSON *root = response_head(c->s, c->g.id, object, c->g.created);
    json_put(root, "choices", c->choices);
    c->choices = NULL;
    engine_output tot = *o;
    tot.n_generated = c->completion_tokens;
    tot.n_cached = c->cached_tokens;
    json_put(root, "usage", response_usage(&tot));
    if (gates) json_put(root, "engram_gates", gates);
    return root;
}
