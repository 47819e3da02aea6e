/* The routes besides generation: the model list (/v1/models), /health,
 * /metrics (the server's, the engine's and the Engram stores' counters) and
 * the tokenizer's /tokenize and /detokenize. */
#include <stdio.h>

#include "server/server_internal.h"
#include "tokenizer/tokenizer.h"

static cJSON *model_card(server *s) {
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "id", s->p.served_model_name);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", (double)s->started);
    cJSON_AddStringToObject(m, "owned_by", "engram");
    cJSON_AddNumberToObject(m, "max_model_len", engine_context_length(s->e));
    return m;
}

enum MHD_Result handle_models(conn *c) {
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "object", "list");
    cJSON *data = cJSON_AddArrayToObject(root, "data");
    json_push(data, model_card(c->s));
    return reply_json(c, 200, root);
}

enum MHD_Result handle_model(conn *c, const char *id) {
    enum MHD_Result ret;
    if (prompt_check_model(c, id, &ret)) return ret;
    return reply_json(c, 200, model_card(c->s));
}

enum MHD_Result handle_health(conn *c) {
    if (!atomic_load(&c->s->ready)) return fail(c, 503, NULL, "The model is loading.");
    if (atomic_load(&c->s->draining)) return fail(c, 503, NULL, "The server is shutting down.");
    engram_store_stats es = {0};
    engine_engram_store_stats(c->s->e, &es);
    if (es.tables_bad)
        return fail(c, 503, NULL, "An Engram table file shrank under the server (truncated or rewritten in place): "
                                  "generations fail until it is restarted.");
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "status", "ok");
    /* ready either way: with --engram-warm-start background the hot rows come back while it serves */
    engine_warm w = engine_engram_warm(c->s->e);
    if (w != ENGINE_WARM_NONE) cJSON_AddStringToObject(root, "engram_cache", w == ENGINE_WARM_WARMING ? "warming" : "ready");
    return reply_json(c, 200, root);
}

enum MHD_Result handle_metrics(conn *c) {
    engine_stats st = {0};
    engram_store_stats es = {0};
    engram_fetch_stats fs = {0};
    if (atomic_load(&c->s->ready)) {
        engine_get_stats(c->s->e, &st);
        engine_engram_store_stats(c->s->e, &es);
        engine_fetch_stats(c->s->e, -1, &fs);
    }
    char *text = metrics_render(c->s->mx, &st, &es, &fs);
    return reply(c, 200, "text/plain; version=0.0.4; charset=utf-8", text, text ? strlen(text) : 0, NULL);
}

enum MHD_Result handle_tokenize(conn *c) {
    api_tokenize t;
    api_error err;
    if (api_parse_tokenize(c->body, c->len, &t, &err)) return reply_error(c, &err, NULL);
    enum MHD_Result ret;
    char *rendered = NULL;
    int32_t *ids = NULL;
    size_t n = 0;
    if (prompt_check_model(c, t.model, &ret) ||
        (t.messages && render_chat(c, t.messages, NULL, &rendered, &ret)) ||
        prompt_encode(c, rendered ? rendered : t.prompt_text, t.add_special, t.messages ? "messages" : "prompt",
                      &ids, &n, &ret)) {
        free(rendered);
        api_tokenize_free(&t);
        return ret;
    }
    cJSON *root = cJSON_CreateObject();
    cJSON *arr = cJSON_AddArrayToObject(root, "tokens");
    for (size_t i = 0; i < n; i++) json_push(arr, cJSON_CreateNumber(ids[i]));
    cJSON_AddNumberToObject(root, "count", (double)n);
    cJSON_AddNumberToObject(root, "max_model_len", engine_context_length(c->s->e));
    free(ids);
    free(rendered);
    api_tokenize_free(&t);
    return reply_json(c, 200, root);
}

enum MHD_Result handle_detokenize(conn *c) {
    api_detokenize d;
    api_error err;
    if (api_parse_detokenize(c->body, c->len, &d, &err)) return reply_error(c, &err, NULL);
    enum MHD_Result ret;
    if (prompt_check_model(c, d.model, &ret)) {
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
            api_error_set(&err, 400, "tokens", "Token id %d is outside the vocabulary (%zu ids).", d.ids[i], vocab);
            api_detokenize_free(&d);
            return reply_error(c, &err, NULL);
        }
    char *text = NULL;
    size_t len = 0;
    int rc = tokenizer_decode(c->s->tok, d.ids, (size_t)d.n_ids, false, &text, &len);
    api_detokenize_free(&d);
    if (rc != TOKENIZER_OK) return fail(c, 500, NULL, "Decoding failed.");
    cJSON *root = cJSON_CreateObject(), *item = response_string(text, len); /* the text may hold NUL */
    free(text);
    if (!root || !item || !cJSON_AddItemToObjectCS(root, "prompt", item)) {
        cJSON_Delete(item);
        cJSON_Delete(root);
        root = NULL; /* a 500 */
    }
    return reply_json(c, 200, root);
}

