/* From a request to the prompt's token ids: the model name check, the chat
 * template (messages and tools to the prompt text, and the probe of how the
 * template writes tool calls, which says what the output is parsed for) and
 * the tokenizer. Each step that refuses the request queues the reply. */
#include <stdio.h>

#include "server/server_internal.h"
#include "tokenizer/tokenizer.h"

/* Refuses a request naming another model (404). Returns 0 when fine. */
int prompt_check_model(conn *c, const char *name, enum MHD_Result *ret) {
    if (!name || !strcmp(name, c->s->p.served_model_name)) return 0;
    api_error err;
    api_error_set(&err, 404, "model", "The model `%.200s` does not exist.", name);
    err.code = "model_not_found";
    *ret = reply_error(c, &err, NULL);
    return -1;
}

/* How a chat template writes an assistant's tool call: seen by rendering one. */
tool_format template_tool_format(const chat_template *t) {
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
int render_chat(conn *c, const cJSON *messages, const cJSON *tools, char **out, enum MHD_Result *ret) {
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
    api_error_set(&e, rc == CHAT_TEMPLATE_ERR_NOMEM ? 500 : 400, "messages", "The chat template failed: %s", err);
    *ret = reply_error(c, &e, NULL);
    return -1;
}

/* Tokenizes text (the request's field param). Returns 0, or -1 with the reply queued. */
int prompt_encode(conn *c, const char *text, bool add_special, const char *param, int32_t **ids, size_t *n,
                  enum MHD_Result *ret) {
    if (!c->s->tok) {
        *ret = fail(c, 400, param, "This model has no tokenizer: send the prompt as a list of token ids.");
        return -1;
    }
    int rc = tokenizer_encode(c->s->tok, text, strlen(text), add_special, ids, n);
    if (rc == TOKENIZER_OK) return 0;
    api_error e;
    api_error_set(&e, rc == TOKENIZER_ERR_NOMEM ? 500 : 400, param, "Cannot tokenize '%s': %s.", param,
                  tokenizer_status_str(rc));
    *ret = reply_error(c, &e, NULL);
    return -1;
}

