/* The JSON of responses: the head ({"id", "object", "created", "model"}),
 * choices (a chat message with reasoning and tool calls split off, or a
 * completion's text), usage, logprobs in chat's and completions' shapes,
 * Engram gates, and the errors of a generation that did not finish. Used
 * whole by generate.c and chunk by chunk by sse.c. */
#include <stdio.h>

#include "server/server_internal.h"
#include "tokenizer/tokenizer.h"

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
cJSON *response_logprobs(server *s, api_kind kind, const engine_logprob *lp, int from, int to, size_t *text_offset) {
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
    for (int l = 0; l < nl; l++) cJSON_AddItemToArray(layers, cJSON_CreateNumber(engine_engram_layer_id(s->e, l)));
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
        cJSON_AddItemToArray(arr, o);
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
        cJSON_AddStringToObject(msg, "content", text);
        return 0;
    }
    reasoning_splitter rs;
    tool_parser tp;
    reasoning_init(&rs, c->s->reasoning);
    tool_parser_init(&tp, c->g.tools);
    strbuf reasoning = {0}, answer = {0}, content = {0}; /* answer: what follows the reasoning */
    char *r, *a; /* each call sets both (NULL on failure); take_into frees them */
    int rc = reasoning_feed(&rs, text, c->text.len, &r, &a);
    rc |= take_into(&reasoning, r) | take_into(&answer, a);
    rc |= reasoning_finish(&rs, &r, &a);
    rc |= take_into(&reasoning, r) | take_into(&answer, a);
    if (!rc && c->g.tools) { /* the calls out of the answer; the rest is the content */
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
            cJSON_AddItemToObject(msg, "tool_calls", response_tool_calls(c->s, &tp, 0, false));
            *finish = "tool_calls";
        }
    }
    strbuf_free(&reasoning), strbuf_free(&answer), strbuf_free(&content);
    reasoning_free(&rs);
    tool_parser_free(&tp);
    return rc ? -1 : 0;
}


int response_choice_add(conn *c, const engine_output *o, cJSON *lps) {
    if (!c->choices) c->choices = cJSON_CreateArray();
    cJSON *ch = cJSON_CreateObject();
    cJSON_AddItemToArray(c->choices, ch);
    cJSON_AddNumberToObject(ch, "index", c->cur);
    const char *finish = response_finish_str(o->finish);
    if (c->g.kind == API_CHAT) {
        if (chat_message(c, ch, &finish)) {
            cJSON_Delete(lps);
            return -1;
        }
    } else {
        cJSON_AddStringToObject(ch, "text", c->text.s ? c->text.s : "");
    }
    if (lps) cJSON_AddItemToObject(ch, "logprobs", lps);
    else cJSON_AddNullToObject(ch, "logprobs");
    cJSON_AddStringToObject(ch, "finish_reason", finish);
    return 0;
}

cJSON *response_completion(conn *c, const engine_output *o, cJSON *gates) {
    const char *object = c->g.kind == API_CHAT ? "chat.completion" : "text_completion";
    cJSON *root = response_head(c->s, c->g.id, object, c->g.created);
    cJSON_AddItemToObject(root, "choices", c->choices);
    c->choices = NULL;
    engine_output tot = *o;
    tot.n_generated = c->completion_tokens;
    tot.n_cached = c->cached_tokens;
    cJSON_AddItemToObject(root, "usage", response_usage(&tot));
    if (gates) cJSON_AddItemToObject(root, "engram_gates", gates);
    return root;
}
