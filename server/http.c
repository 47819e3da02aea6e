/* The HTTP front end: libmicrohttpd (epoll, internal thread pool) takes
 * connections; the route, the API key and a declared body size are checked
 * on the headers, before the body (up to --max-body-bytes) is read; each
 * request then goes to its handler (generate.c, endpoints.c). A connection
 * waiting on the engine is suspended and resumed by the engine's notify
 * callback, so no HTTP thread ever blocks on generation; streams (sse.c) are
 * written by a content-reader callback. When the client goes away
 * libmicrohttpd frees the response and the request is cancelled in the
 * engine. */
#include <errno.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#include "base/util.h"
#include "server/http_head.h"
#include "server/server_internal.h"

/* ---- replies ---- */

void http_response_common(conn *c, struct MHD_Response *r, int status) {
    const char *o = c->s->p.cors_origin;
    if (o && o[0]) {
        MHD_add_response_header(r, "Access-Control-Allow-Origin", o);
        if (strcmp(o, "*") != 0) MHD_add_response_header(r, "Vary", "Origin");
    }
    if (c->request_id[0]) MHD_add_response_header(r, "X-Request-Id", c->request_id);
    c->status = status;
    metrics_http(c->s->mx, c->route, status);
}

enum MHD_Result reply(conn *c, int status, const char *ctype, char *body, size_t len, const char *allow) {
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
    http_response_common(c, r, status);
    c->sent = len;
    if (allow) MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, allow);
    if (status == 503) MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, "1");
    if (status == 413 || c->close) MHD_add_response_header(r, MHD_HTTP_HEADER_CONNECTION, "close");
    enum MHD_Result ret = MHD_queue_response(c->mc, (unsigned)status, r);
    MHD_destroy_response(r);
    return ret;
}

enum MHD_Result reply_error(conn *c, api_error *err, const char *allow) {
    errors_fill(err);
    char *s = errors_json(err);
    return reply(c, err->status, "application/json", s, s ? strlen(s) : 0, allow);
}

enum MHD_Result reply_json(conn *c, int status, cJSON *obj) {
    char *s = obj ? cJSON_PrintUnformatted(obj) : NULL;
    cJSON_Delete(obj);
    if (api_json_take_oom()) free(s), s = NULL; /* a field of the tree would be missing: a 500 */
    return reply(c, status, "application/json", s, s ? strlen(s) : 0, NULL);
}

enum MHD_Result fail(conn *c, int status, const char *param, const char *msg) {
    api_error err;
    api_error_set(&err, status, param, "%s", msg);
    return reply_error(c, &err, NULL);
}

void http_addr_str(const struct sockaddr *a, char *out, size_t n) {
    char host[INET6_ADDRSTRLEN] = "-";
    if (a->sa_family == AF_INET) inet_ntop(AF_INET, &((const struct sockaddr_in *)a)->sin_addr, host, sizeof(host));
    else if (a->sa_family == AF_INET6) inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)a)->sin6_addr, host, sizeof(host));
    snprintf(out, n, "%s", host);
}

/* ---- engine hooks: suspend when there is no output, resume on notify ---- */

void http_suspend(void *mc) { MHD_suspend_connection(mc); }
void http_resume(void *mc) { MHD_resume_connection(mc); }

/* Whether the client has closed its side of mc's connection (or reset it).
 * A suspended connection is not watched by libmicrohttpd, so the handlers
 * look when the engine pokes a request that waits (engine_output.progress
 * with nothing else). Pipelined bytes are left for libmicrohttpd. */
bool http_peer_gone(struct MHD_Connection *mc) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(mc, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci) return false;
    char b;
    ssize_t n = recv(ci->connect_fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

/* ---- routes ---- */

/* Whether the request carries the API key (constant time in the key). The
 * header's length is libmicrohttpd's, not strlen's: a value with a NUL in it
 * is not the key followed by junk. */
static bool auth_ok(conn *c) {
    const char *key = c->s->p.api_key;
    if (!key || !key[0]) return true;
    const char *h = NULL;
    size_t hl = 0;
    if (MHD_lookup_connection_value_n(c->mc, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION,
                                      strlen(MHD_HTTP_HEADER_AUTHORIZATION), &h, &hl) != MHD_YES ||
        !h || hl < 7 || memcmp(h, "Bearer ", 7) != 0)
        return false;
    h += 7;
    hl -= 7;
    size_t kl = strlen(key);
    unsigned diff = hl != kl;
    for (size_t i = 0; i < kl; i++) diff |= (unsigned char)key[i] ^ (unsigned char)(i < hl ? h[i] : 0);
    return diff == 0;
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
        api_error_set(&err, 405, NULL, "Method %s is not allowed on /; use GET.", method);
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
    http_response_common(c, r, 204);
    MHD_add_response_header(r, "Access-Control-Allow-Methods", "GET, POST, OPTIONS");
    MHD_add_response_header(r, "Access-Control-Allow-Headers", "Authorization, Content-Type");
    MHD_add_response_header(r, "Access-Control-Max-Age", "600");
    enum MHD_Result ret = MHD_queue_response(c->mc, 204, r);
    MHD_destroy_response(r);
    return ret;
}

/* The route of url (exact, or a prefix route's), or -1. */
static int route_find(const char *url) {
    for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
        size_t pl = strlen(routes[i].path);
        if (routes[i].path[pl - 1] == '/' ? (!strncmp(url, routes[i].path, pl) && url[pl]) : !strcmp(url, routes[i].path))
            return (int)i;
    }
    return -1;
}

/* The checks that need only the request line and headers, made at
 * libmicrohttpd's first call, before any body byte is read: the framing,
 * the route, the method, the API key and a declared Content-Length over the
 * limit. A
 * refusal is queued at once; libmicrohttpd then skips the body, sends no
 * "100 Continue", and closes the connection after the reply, so an
 * unauthenticated or oversized upload costs the server no memory. Returns
 * MHD_YES to go on reading the body, else the refusal's result. */
static enum MHD_Result framing_header(void *cls, enum MHD_ValueKind kind, const char *key, size_t key_size,
                                     const char *value, size_t value_size) {
    (void)kind;
    http_framing_header(cls, key, key_size, value ? value : "", value ? value_size : 0);
    return MHD_YES;
}

static enum MHD_Result check_head(conn *c, const char *url, const char *method, const char *version) {
    server *s = c->s;
    const char *cors = s->p.cors_origin;
    c->route_idx = -1;
    /* The door screened the connection's first head; a later one on a kept-alive
     * connection is screened here, from the headers libmicrohttpd parsed. */
    http_framing fr;
    http_framing_init(&fr);
    MHD_get_connection_values_n(c->mc, MHD_HEADER_KIND, framing_header, &fr);
    if (http_framing_check(&fr, version && !strcmp(version, MHD_HTTP_VERSION_1_0))) {
        c->close = true;
        return fail(c, 400, NULL, fr.why);
    }
    if ((cors && cors[0] && !strcmp(method, "OPTIONS")) || !strcmp(url, "/")) return MHD_YES; /* no key, no body */
    int found = route_find(url);
    c->route = found >= 0 ? routes[found].label : "other";
    c->route_idx = found;
    c->close = true; /* a refusal below leaves the body unread: the connection cannot be reused */
    api_error err;
    if (found < 0) {
        api_error_set(&err, 404, NULL, "Unknown route: %s %.200s", method, url);
        return reply_error(c, &err, NULL);
    }
    const char *want = routes[found].method;
    if (strcmp(method, want) != 0 && !(strcmp(want, "GET") == 0 && strcmp(method, "HEAD") == 0)) {
        api_error_set(&err, 405, NULL, "Method %s is not allowed on %s; use %s.", method, routes[found].path, want);
        return reply_error(c, &err, strcmp(want, "GET") == 0 ? "GET, HEAD" : want);
    }
    if (!routes[found].open && !auth_ok(c)) {
        api_error_set(&err, 401, NULL, "Incorrect or missing API key: send 'Authorization: Bearer <key>'.");
        return reply_error(c, &err, NULL);
    }
    if (fr.n_length && fr.length > s->p.max_body_bytes) {
        api_error_set(&err, 413, NULL, "The request body is larger than the limit of %zu bytes.", s->p.max_body_bytes);
        return reply_error(c, &err, NULL);
    }
    c->close = false;
    return MHD_YES;
}

/* The whole request is in (c->body): the checks that need the body or the
 * engine, then the route's handler. */
static enum MHD_Result dispatch(conn *c, const char *url, const char *method) {
    door_event(c->s->door, c->fd, DOOR_BODY); /* the request is in: no deadline while it runs */
    const char *cors = c->s->p.cors_origin;
    if (cors && cors[0] && !strcmp(method, "OPTIONS")) return handle_preflight(c);
    if (!strcmp(url, "/")) {
        c->route = "/";
        return handle_page(c, method);
    }
    int found = c->route_idx; /* check_head passed it */
    if (found < 0) return MHD_NO;
    api_error err;
    if (c->too_big) { /* a chunked body (no Content-Length) that grew past the limit */
        c->close = true;
        api_error_set(&err, 413, NULL, "The request body is larger than the limit of %zu bytes.", c->s->p.max_body_bytes);
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

/* c's request id: the client's X-Request-Id when it is 1 to 64 of
 * [A-Za-z0-9._:-] (a proxy's, kept so that both logs name the request the
 * same), else one of ours. */
static void request_id(conn *c) {
    const char *h = MHD_lookup_connection_value(c->mc, MHD_HEADER_KIND, "X-Request-Id");
    size_t n = h ? strspn(h, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-") : 0;
    if (h && n && n <= 64 && !h[n]) {
        memcpy(c->request_id, h, n + 1);
        return;
    }
    snprintf(c->request_id, sizeof(c->request_id), "req-%016llx%08llx", c->s->id_salt,
             (unsigned long long)atomic_fetch_add(&c->s->next_id, 1));
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *mc, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_data_size,
                                  void **con_cls) {
    server *s = cls;
    conn *c = *con_cls;
    api_json_take_oom(); /* a mark left by another connection's callback on this thread is not ours */
    if (!c) { /* the headers are in, no body byte has been read */
        if (!(c = calloc(1, sizeof(*c)))) return MHD_NO;
        c->s = s;
        c->mc = mc;
        c->route = "other";
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(mc, MHD_CONNECTION_INFO_CONNECTION_FD);
        c->fd = ci ? ci->connect_fd : -1;
        c->t0 = util_now();
        snprintf(c->method, sizeof(c->method), "%s", method);
        request_id(c);
        door_event(s->door, c->fd, DOOR_HEAD);
        *con_cls = c;
        return check_head(c, url, method, version);
    }
    if (*upload_data_size) { /* a body within the declared limit, or a chunked one */
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        c->seen += n;
        if (c->too_big && c->seen > 16 * (unsigned long long)s->p.max_body_bytes)
            return dispatch(c, url, method); /* stop draining an endless body: 413 and close */
        if (c->too_big) return MHD_YES; /* read and dropped, so that the client sees the 413 */
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
    if (c->req) return generate_continue(c); /* resumed by the engine */
    if (!c->body) c->body = strdup("");
    if (!c->body) return MHD_NO;
    return dispatch(c, url, method);
}

/* The access log's word for how a request ended. */
static const char *end_str(enum MHD_RequestTerminationCode toe) {
    switch (toe) {
    case MHD_REQUEST_TERMINATED_COMPLETED_OK: return "ok";
    case MHD_REQUEST_TERMINATED_TIMEOUT_REACHED: return "timeout";
    case MHD_REQUEST_TERMINATED_DAEMON_SHUTDOWN: return "shutdown";
    case MHD_REQUEST_TERMINATED_CLIENT_ABORT: return "client_abort";
    default: return "error";
    }
}

static void access_log(conn *c, struct MHD_Connection *mc, enum MHD_RequestTerminationCode toe) {
    if (c->s->access_fd < 0) return;
    char client[64] = "-";
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(mc, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (ci && ci->client_addr) http_addr_str(ci->client_addr, client, sizeof(client));
    server_access a = {.request_id = c->request_id, .client = client, .method = c->method, .route = c->route,
                       .status = c->status, .bytes = c->sent, .seconds = util_now() - c->t0, .end = end_str(toe)};
    server_access_write(c->s->access_fd, &a);
}

static void on_completed(void *cls, struct MHD_Connection *mc, void **con_cls, enum MHD_RequestTerminationCode toe) {
    conn *c = *con_cls;
    if (!c) return;
    access_log(c, mc, toe);
    door_event(c->s->door, c->fd, DOOR_DONE);
    if (c->req) generate_abort(c); /* a non-streaming request whose connection closed */
    cJSON_Delete(c->choices);
    if (c->generating) atomic_fetch_sub(&c->s->active, 1);
    free(c->body);
    strbuf_free(&c->text);
    free(c);
    *con_cls = NULL;
}

/* libmicrohttpd's word that a connection is gone, before its fd is closed. */
static void on_connection(void *cls, struct MHD_Connection *mc, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe) {
    server *s = cls;
    (void)socket_context;
    if (toe != MHD_CONNECTION_NOTIFY_CLOSED) return;
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(mc, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (ci) door_event(s->door, ci->connect_fd, DOOR_CLOSED);
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
    s->access_fd = -1;
    if (p->access_log && p->access_log[0] && (s->access_fd = server_access_open(p->access_log, err, errlen)) < 0) {
        free(s);
        return -1;
    }
    s->started = (long)time(NULL);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    s->id_salt = ((unsigned long long)ts.tv_nsec << 20) ^ (unsigned long long)ts.tv_sec ^ ((unsigned long long)getpid() << 40);
    atomic_init(&s->draining, false);
    atomic_init(&s->ready, false);
    atomic_init(&s->active, 0);
    atomic_init(&s->next_id, 1);
    if (p->model_dir && chat_template_load_dir(p->model_dir, &s->tmpl, err, errlen) != CHAT_TEMPLATE_OK) {
        if (s->access_fd >= 0) close(s->access_fd);
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
        goto fail;
    }
    memcpy(&s->addr, ai->ai_addr, ai->ai_addrlen);
    int drc = door_open(s, ai->ai_addr, ai->ai_addrlen, &s->door, err, errlen);
    freeaddrinfo(ai);
    if (drc) goto fail;

    /* The door accepts and screens connections, then adds them here. */
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG |
                     MHD_USE_NO_LISTEN_SOCKET | MHD_USE_ITC;
    /* The caps are the door's: libmicrohttpd's own limit (1020 by default,
     * split over its threads) must never refuse what the door let in. */
    door_limits lim = door_get_limits(s->door);
    s->d = MHD_start_daemon(flags, 0, NULL, NULL, on_request, s, MHD_OPTION_EXTERNAL_LOGGER, server_log_mhd, s,
                            MHD_OPTION_THREAD_POOL_SIZE,
                            (unsigned)(p->http_threads > 0 ? p->http_threads : 4), MHD_OPTION_CONNECTION_TIMEOUT,
                            (unsigned)(p->connection_timeout > 0 ? p->connection_timeout : 300),
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)(2 * lim.max_connections + 64),
                            MHD_OPTION_THREAD_STACK_SIZE, (size_t)(8u << 20), MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
                            MHD_OPTION_NOTIFY_CONNECTION, on_connection, s, MHD_OPTION_END);
    if (!s->d) {
        snprintf(err, errlen, "cannot start libmicrohttpd's threads");
        goto fail;
    }
    if (door_start(s->door, s->d, err, errlen)) goto fail;
    server_log("connections: at most %d, %d per client address; heads and bodies within %.0fs, "
            "kept-alive connections idle at most %.0fs", lim.max_connections, lim.max_connections_per_ip,
            lim.request_timeout, lim.idle_timeout);
    *out = s;
    return 0;
fail:
    door_close(s->door);
    if (s->d) MHD_stop_daemon(s->d);
    door_destroy(s->door);
    chat_template_destroy(s->tmpl);
    if (s->access_fd >= 0) close(s->access_fd);
    free(s);
    return -1;
}

void server_drain(server *s) {
    if (s) atomic_store(&s->draining, true);
}

int server_active(server *s) { return s ? atomic_load(&s->active) : 0; }

void server_stop(server *s) {
    if (!s) return;
    /* Stop accepting, let requests in flight send their last bytes (the
     * engine has ended them), then stop the threads. */
    door_close(s->door);
    for (int i = 0; i < 500 && atomic_load(&s->active) > 0; i++) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    MHD_stop_daemon(s->d);
    door_destroy(s->door); /* after libmicrohttpd, which reports its closes to it */
    chat_template_destroy(s->tmpl);
    if (s->access_fd >= 0) close(s->access_fd);
    free(s);
}
