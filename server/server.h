/* Internal interfaces of server/: the HTTP front end (http.c), the OpenAI
 * error table (errors.c) and the Prometheus metrics (metrics.c). main.c owns
 * flags, env vars, the config file and signals, and is the only place that
 * exits. */
#ifndef SERVER_SERVER_H
#define SERVER_SERVER_H

#include <stdbool.h>
#include <stddef.h>

#include "server/api.h"
#include "engine/engine.h"

/* ---- errors.c: one table from HTTP status and engine status to OpenAI errors ---- */

/* Sets err for an HTTP status with the type and code of the table. */
void errors_set(api_error *err, int status, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Fills in err->type and err->code from err->status when they are unset or
 * generic (the parsers only know 400/500). */
void errors_fill(api_error *err);

/* The HTTP status an engine_submit status maps to (400, 503, 500). */
int errors_engine_http_status(int status);

/* {"error": {"message", "type", "param", "code"}} as a heap string (NULL on OOM). */
char *errors_json(const api_error *err);

/* ---- metrics.c ---- */

typedef struct metrics metrics;

metrics *metrics_create(void); /* NULL on OOM */
void metrics_destroy(metrics *m); /* accepts NULL */

/* Counts one HTTP response: route is one of the server's routes or "other". */
void metrics_http(metrics *m, const char *route, int status);

/* Records a finished generation: finish reason label ("stop", "length",
 * "abort", "error"), token counts and the request's timestamps. */
void metrics_request_done(metrics *m, const char *reason, const engine_output *o, double t_end);

/* The Prometheus text exposition (version 0.0.4) as a heap string: the
 * server's own families, the engine's stats and the Engram stores' counters
 * (es: summed over the Engram layers). */
char *metrics_render(metrics *m, const engine_stats *st, const engram_store_stats *es, const engram_fetch_stats *fs);

/* ---- http.c ---- */

typedef struct {
    const char *host;              /* address to bind */
    int port;
    const char *served_model_name; /* the model id clients name */
    const char *model_dir;         /* for the chat template; NULL: none (a synthetic model) */
    const char *api_key;           /* NULL or "": no authentication */
    size_t max_body_bytes;
    int http_threads;              /* libmicrohttpd thread pool size */
    const char *cors_origin;       /* NULL or "": no CORS headers */
    int connection_timeout;        /* seconds an idle connection is kept; 0: 300 */
    int reasoning;                 /* a reasoning_format: how chat output's reasoning is split off */
} server_params;

typedef struct server server;

/* Starts listening before the model is loaded: until server_set_engine,
 * /health answers 503 "loading" and the API 503. m is borrowed and must
 * outlive the server. Returns 0 and *out, or -1 with a message in err. */
int server_start(const server_params *p, metrics *m, server **out, char *err, size_t errlen);

/* Makes the loaded engine (borrowed; must outlive the server) serve requests. */
void server_set_engine(server *s, engine *e);

/* Marks the server as draining: /health answers 503, new generations 503. */
void server_drain(server *s);

/* Generations whose response is not finished yet (streams still sending). */
int server_active(server *s);

/* Stops the HTTP daemon (call after engine_stop so that no connection waits
 * on the engine) and frees the server. Accepts NULL. */
void server_stop(server *s);

#endif
