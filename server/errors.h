/* OpenAI error objects of server/: the api_error struct every parser and
 * handler fills, the one setter (api_error_set), the table from HTTP status
 * (and engine status) to the error's type and code, and the JSON envelope.
 * Pure (libc and cJSON): the fuzz target of api_request.c compiles it in. */
#ifndef SERVER_ERRORS_H
#define SERVER_ERRORS_H

/* An OpenAI error: HTTP status and the fields of {"error": {...}}. */
typedef struct {
    int status;       /* 400, 401, 404, 405, 413, 500, 503 */
    const char *type; /* "invalid_request_error", "server_error", ... (static) */
    const char *code; /* static, or NULL */
    char param[96];   /* the offending field ("" for none) */
    char message[512];
} api_error;

/* Sets err: the HTTP status, the offending field (NULL for none), the
 * message, and the type and code of the status's table entry. The one error
 * setter of server/. */
void api_error_set(api_error *err, int status, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Fills in err->type and err->code from err->status when they are unset or
 * generic. */
void errors_fill(api_error *err);

/* The HTTP status an engine_submit status maps to (400, 503, 500). */
int errors_engine_http_status(int status);

/* {"error": {"message", "type", "param", "code"}} as a heap string (NULL on OOM). */
char *errors_json(const api_error *err);

#endif
