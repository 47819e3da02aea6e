/* OpenAI error objects: the one table that maps HTTP statuses (and engine
 * statuses) to the error's type and code, and the JSON envelope
 * {"error": {"message", "type", "param", "code"}}. */
#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "base/utf8.h"
#include "engine/engine.h"
#include "server/errors.h"

static const struct {
    int status;
    const char *type;
    const char *code;
} http_table[] = {
    {400, "invalid_request_error", NULL},
    {401, "invalid_request_error", "invalid_api_key"},
    {404, "invalid_request_error", "not_found"},
    {405, "invalid_request_error", "method_not_allowed"},
    {413, "invalid_request_error", "request_too_large"},
    {500, "server_error", "internal_error"},
    {503, "server_error", "overloaded"},
};

void errors_fill(api_error *err) {
    for (size_t i = 0; i < sizeof(http_table) / sizeof(http_table[0]); i++)
        if (http_table[i].status == err->status) {
            err->type = http_table[i].type;
            if (!err->code) err->code = http_table[i].code;
            return;
        }
    err->type = err->status >= 500 ? "server_error" : "invalid_request_error";
}

/* The message as well-formed UTF-8, in place: the text it quotes from a
 * request may be cut mid-character by a precision (%.40s) or be no UTF-8 at
 * all (a URL's raw bytes); each malformed run becomes one '?', so the JSON
 * error body stays valid. */
static void message_utf8(char *m) {
    const uint8_t *u = (const uint8_t *)m;
    size_t n = strlen(m), o = 0;
    for (size_t i = 0; i < n;) {
        int32_t cp;
        size_t k = u[i] < 0x80 ? 1 : utf8_decode(u + i, n - i, &cp);
        if (k) {
            memmove(m + o, m + i, k);
            o += k, i += k;
        } else {
            bool incomplete;
            i += utf8_bad_prefix(u + i, n - i, &incomplete);
            m[o++] = '?';
        }
    }
    m[o] = '\0';
}

void api_error_set(api_error *err, int status, const char *param, const char *fmt, ...) {
    err->status = status;
    err->type = NULL;
    err->code = NULL;
    snprintf(err->param, sizeof(err->param), "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof(err->message), fmt, ap);
    va_end(ap);
    message_utf8(err->message);
    errors_fill(err);
}

int errors_engine_http_status(int status) {
    switch (status) {
    case ENGINE_ERR_INVALID: return 400;
    case ENGINE_ERR_QUEUE_FULL:
    case ENGINE_ERR_STOPPED: return 503;
    default: return 500;
    }
}

char *errors_json(const api_error *err) {
    cJSON *root = cJSON_CreateObject();
    cJSON *e = cJSON_AddObjectToObject(root, "error");
    if (!e) {
        cJSON_Delete(root);
        return NULL;
    }
    cJSON_AddStringToObject(e, "message", err->message);
    cJSON_AddStringToObject(e, "type", err->type ? err->type : "invalid_request_error");
    if (err->param[0]) cJSON_AddStringToObject(e, "param", err->param);
    else cJSON_AddNullToObject(e, "param");
    if (err->code) cJSON_AddStringToObject(e, "code", err->code);
    else cJSON_AddNullToObject(e, "code");
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return s;
}
