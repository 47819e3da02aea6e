/* Internal interfaces of server/ for main.c: the options (options.c), the
 * HTTP server (http.c and the files of server_internal.h) and the Prometheus
 * metrics (metrics.c); the OpenAI errors are errors.h's. main.c owns signals
 * and is the only place that exits. */
#ifndef SERVER_SERVER_H
#define SERVER_SERVER_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>

#include "engine/engine.h"
#include "server/api.h"

/* ---- log.c ---- */

typedef enum { SERVER_LOG_ERROR, SERVER_LOG_WARN, SERVER_LOG_INFO, SERVER_LOG_DEBUG } server_log_level;

/* Lines above level are dropped from now on (--log-level; default info). */
void server_log_set_level(server_log_level level);

/* "error", "warning", "info" or "debug" into *out: 0, or -1 for another name. */
int server_log_level_parse(const char *name, server_log_level *out);

/* One diagnostic line on stderr, "<UTC ISO 8601 time> engram-server: <message>"
 * (fmt without a newline), written whole, at level info. Errors of the
 * command line itself are plain lines (options.c). */
void server_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* The same at another level: "error: ", "warning: " or "debug: " follows
 * the prefix. */
void server_log_at(server_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* libmicrohttpd's external logger (MHD_OPTION_EXTERNAL_LOGGER): its messages
 * as warnings prefixed "libmicrohttpd: ", but those of a client that went
 * away (normal, and counted as an aborted request) at debug. */
void server_log_mhd(void *cls, const char *fmt, va_list ap);

/* One request as the access log records it (strings borrowed; a byte
 * outside printable ASCII, '"' or '\\' is written as '?'). */
typedef struct {
    const char *request_id; /* the X-Request-Id the response carried; "-" for the door's own refusals */
    const char *client;     /* the peer's address */
    const char *method;     /* "-" when the head was refused unread */
    const char *route;      /* the route's label ("/v1/completions", ..., "other"), never the raw URL */
    int status;             /* the response's status; 0 when none was queued */
    unsigned long long bytes; /* response body bytes handed to the socket */
    double seconds;         /* from the request's head to its end */
    const char *end;        /* how it ended: "ok", "error", "timeout", "client_abort", "shutdown", "refused" */
} server_access;

/* Opens the access log: path "-" is stderr, else a file opened for
 * appending (created 0644). Returns the descriptor, or -1 with the reason in
 * err. */
int server_access_open(const char *path, char *err, size_t errlen);

/* Appends a's line to fd (nothing when fd < 0) with one write(2): a JSON
 * object {"time", "request_id", "client", "method", "route", "status",
 * "bytes", "duration_ms", "end"}. Any thread. */
void server_access_write(int fd, const server_access *a);

/* ---- metrics.c ---- */

typedef struct metrics metrics;

metrics *metrics_create(void); /* NULL on OOM */
void metrics_destroy(metrics *m); /* accepts NULL */

/* Counts one HTTP response: route is one of the server's routes or "other". */
void metrics_http(metrics *m, const char *route, int status);

/* What happened to a connection, counted by reason. */
typedef enum {
    METRICS_CONN_REFUSED_TOTAL,   /* refused: --max-connections reached, none idle to close */
    METRICS_CONN_REFUSED_PER_IP,  /* refused: --max-connections-per-ip reached, none of its own idle */
    METRICS_CONN_EVICTED,         /* an idle connection closed to make room for a new one */
    METRICS_CONN_REQUEST_TIMEOUT, /* closed: a head or body not in within --request-timeout */
    METRICS_CONN_IDLE_TIMEOUT,    /* closed: no next request within --connection-timeout */
    METRICS_CONN_N
} metrics_conn_event;

void metrics_connection(metrics *m, metrics_conn_event ev);

/* The open connections now (a gauge). */
void metrics_connections_open(metrics *m, int open);

/* Records a finished generation: finish reason label ("stop", "length",
 * "abort", "error"), token counts and the request's timestamps. */
void metrics_request_done(metrics *m, const char *reason, const engine_output *o, double t_end);

/* Records a structured-output grammar: compiled in `seconds`, or found in
 * the cache (cached). */
void metrics_grammar_compile(metrics *m, double seconds, bool cached);

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
    int request_timeout;           /* seconds for a request's head, and its body after the head; 0: 60 */
    int max_connections;           /* open connections at most; 0: from the descriptor limit */
    int max_connections_per_ip;    /* per client address; 0: half of max_connections */
    int reasoning;                 /* a reasoning_format: how chat output's reasoning is split off */
    const char *access_log;        /* NULL or "": none; "-": stderr; else a file appended to */
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

/* ---- options.c: flags, ENGRAM_<NAME> environment variables, the config file ---- */

#define SERVER_OPTIONS_MAX 64 /* options in the table, at most */

/* What engram-server was asked to do. Its strings are borrowed from argv,
 * the environment, `owned` and name_buf: keep the struct where it is. */
typedef struct {
    engine_params engine;
    server_params server;
    bool synthetic;         /* --synthetic SPEC rather than --model DIR */
    const char *source;     /* the --model directory or the --synthetic spec */
    long shutdown_timeout;  /* --shutdown-timeout: seconds to let accepted requests finish */
    bool warmup;            /* --warmup: engine_warmup before ready */
    server_log_level log_level; /* --log-level */
    char *owned[SERVER_OPTIONS_MAX]; /* the config file's values (heap), by option */
    char name_buf[256];     /* the served model name when taken from the directory */
} server_options;

#define SERVER_VERSION "0.1.0" /* --version */

typedef enum {
    SERVER_OPTIONS_OK = 0,
    SERVER_OPTIONS_HELP = 1,  /* --help or --version: the usage or the version is on stdout */
    SERVER_OPTIONS_ERR = -1,  /* a bad option: the problem (and for a bad flag the usage) is on stderr */
} server_options_status;

/* Reads the flags of argv, the ENGRAM_<NAME> environment variables and the
 * config file (--config or ENGRAM_CONFIG; flags win over env over file),
 * checks every value and fills *o. May print a note on stderr (an option
 * that does nothing on this machine's backend). Call server_options_free
 * whatever it returns. */
server_options_status server_options_parse(int argc, char **argv, server_options *o);
void server_options_free(server_options *o);

#endif
