/* What the files of the HTTP front end share: the server, one HTTP request
 * (conn), one submitted generation, and the functions each file offers the
 * others: http.c (replies, suspend and resume), prompt.c (request to prompt
 * ids), generate.c, response.c (response JSON), sse.c (streams) and
 * endpoints.c (the other routes). */
#ifndef SERVER_SERVER_INTERNAL_H
#define SERVER_SERVER_INTERNAL_H

#include <cjson/cJSON.h>
#include <microhttpd.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "base/buf.h"
#include "chat/chat_template.h"
#include "chat/reasoning.h"
#include "chat/tool_calls.h"
#include "grammar/grammar.h"
#include "server/server.h"

typedef struct door door;

struct server {
    server_params p;
    engine *e;          /* borrowed */
    metrics *mx;        /* borrowed */
    const tokenizer *tok; /* borrowed from the engine; NULL if none */
    chat_template *tmpl;
    tool_format tool_fmt; /* how the template writes tool calls: what the model's output is parsed for */
    reasoning_format reasoning; /* --reasoning-parser */
    struct MHD_Daemon *d;
    door *door;         /* the listening socket and accept loop */
    struct sockaddr_storage addr;
    atomic_bool draining;
    atomic_bool ready; /* the engine is loaded (e and tok set) */
    atomic_int active; /* generations whose response is not finished */
    atomic_ullong next_id;
    unsigned long long id_salt;
    long started; /* unix seconds */
    int access_fd; /* --access-log's descriptor; -1: none */
};

/* A submitted generation: one engine request per choice, and what its
 * response says. Made by generate.c, then held by a conn (non-streaming) or
 * by a stream (sse.c). */
typedef struct {
    engine_request *reqs[API_MAX_N]; /* (n_req) owned references */
    int n_req;
    api_kind kind;
    char id[64];                     /* "chatcmpl-..." or "cmpl-..." */
    long created;                    /* unix seconds */
    bool include_usage;              /* stream_options.include_usage */
    bool gates;                      /* engram_gates */
    bool logprobs;
    tool_format tools;               /* TOOL_FORMAT_NONE unless the request gave tools */
} generation;

/* Per-connection state of one HTTP request (libmicrohttpd's con_cls). */
typedef struct {
    server *s;
    struct MHD_Connection *mc;
    const char *route; /* metrics label */
    char *body;        /* (len) bytes received */
    size_t len, cap;
    int route_idx;     /* the route check_head found (-1: none or not a table route) */
    bool close;        /* the reply says Connection: close (the body was left unread) */
    bool too_big;      /* a chunked body grew past --max-body-bytes: read and dropped */
    int fd;            /* the connection's socket: its slot in the door's table */
    unsigned long long seen; /* body bytes received, kept or not */
    bool generating; /* counted in server.active */
    /* a non-streaming generation waiting on the engine: choice `cur` of g.n_req */
    generation g;
    engine_request *req;               /* g.reqs[cur], the one being read */
    int cur;
    cJSON *choices;                    /* finished choices */
    int completion_tokens;             /* summed over the finished choices */
    int cached_tokens;                 /* choice 0's prompt tokens from the prefix cache */
    strbuf text; /* the choice's generated text so far */
    /* what the access log says of the request */
    double t0;                 /* util_now() when its head was in */
    int status;                /* the queued response's status (0: none yet) */
    unsigned long long sent;   /* response body bytes handed to libmicrohttpd (a stream's too) */
    char method[16];
    char request_id[65];       /* the X-Request-Id the response carries */
} conn;

/* ---- http.c: replies (each counts in the metrics), suspend and resume ---- */

/* Queues a response of len bytes of body (heap, taken; NULL: a 500 "Out of
 * memory.") with the CORS header, Allow (when allow), Retry-After on 503 and
 * Connection: close on 413 or when c->close. */
enum MHD_Result reply(conn *c, int status, const char *ctype, char *body, size_t len, const char *allow);

/* The error's JSON envelope (type and code filled in from its status). */
enum MHD_Result reply_error(conn *c, api_error *err, const char *allow);

/* obj (taken; NULL: a 500) as the JSON body. */
enum MHD_Result reply_json(conn *c, int status, cJSON *obj);

/* An error reply with the message msg (not a format) for the field param (or NULL). */
enum MHD_Result fail(conn *c, int status, const char *param, const char *msg);

/* What every response of c carries: CORS (off unless
 * --cors-allow-origin), X-Request-Id; and its status counted (metrics) and
 * kept for the access log. Call once, before queueing r. */
void http_response_common(conn *c, struct MHD_Response *r, int status);

/* engine_request_read's on_empty (suspends the connection mc) and the
 * engine's notify (resumes it). */
void http_suspend(void *mc);
void http_resume(void *mc);

/* a's address as text (no port) into out. */
void http_addr_str(const struct sockaddr *a, char *out, size_t n);

/* Whether the client has closed its side of mc's connection (or reset it). */
bool http_peer_gone(struct MHD_Connection *mc);

/* ---- door.c: the listening socket and the connection table, ahead of libmicrohttpd ---- */

/* The caps and deadlines in force (the params' 0s resolved). */
typedef struct {
    int max_connections;        /* open connections in all */
    int max_connections_per_ip; /* per client address */
    double request_timeout;     /* seconds for a head, and for a body after its head */
    double idle_timeout;        /* seconds a kept-alive connection may wait for its next request */
} door_limits;

/* Raises the descriptor limit to the hard limit (at most 65536), resolves
 * the caps (0: from that limit, less 256 for the rest; per address, half),
 * binds and listens on addr. Returns 0 and *out, or -1 with a message in
 * err (a cap over the limit, the address in use). */
int door_open(server *s, const struct sockaddr *addr, socklen_t alen, door **out, char *err, size_t errlen);

door_limits door_get_limits(const door *dr);

/* Starts the accept thread: each connection's first request head is
 * screened (http_head.h), then the connection goes to d, or gets a 400, 431
 * or 505 and is closed; over a cap it gets a 503 unless an idle connection
 * could be closed for it. Returns 0, or -1 with a message in err. */
int door_start(door *dr, struct MHD_Daemon *d, char *err, size_t errlen);

/* What libmicrohttpd tells the door about a connection it holds (fd). */
typedef enum {
    DOOR_HEAD,   /* a request's head is in: its body is due within --request-timeout */
    DOOR_BODY,   /* its body is in: the request runs, no deadline */
    DOOR_DONE,   /* its response is over: the next request is due within --connection-timeout */
    DOOR_CLOSED, /* the connection is closed (reported before its fd is) */
} door_event_kind;

/* Any thread. Accepts NULL. */
void door_event(door *dr, int fd, door_event_kind ev);

/* Stops accepting and closes the connections not handed over; those of
 * libmicrohttpd stay (and keep reporting). Accepts NULL. */
void door_close(door *dr);

/* door_close, then frees dr: after libmicrohttpd has stopped. Accepts NULL. */
void door_destroy(door *dr);

/* ---- prompt.c: from a request to the prompt's token ids ---- */

/* Refuses a request naming another model (404). Returns 0 when fine, else
 * -1 with the reply queued in *ret. */
int prompt_check_model(conn *c, const char *name, enum MHD_Result *ret);

/* How a chat template writes an assistant's tool call: seen by rendering one. */
tool_format template_tool_format(const chat_template *t);

/* Renders chat messages through the template (with the generation prompt)
 * into *out (heap). Returns 0, or -1 with the reply queued in *ret. */
int render_chat(conn *c, const cJSON *messages, const cJSON *tools, char **out, enum MHD_Result *ret);

/* Tokenizes text (the request's field param) into *ids (heap, *n). Returns
 * 0, or -1 with the reply queued in *ret. */
int prompt_encode(conn *c, const char *text, bool add_special, const char *param, int32_t **ids, size_t *n,
                  enum MHD_Result *ret);

/* ---- generate.c: /v1/completions and /v1/chat/completions ---- */

/* POST /v1/completions or /v1/chat/completions (kind): see the route
 * handlers below. */
enum MHD_Result handle_generate(conn *c, api_kind kind);

/* Reads a non-streaming generation on: suspends the connection until the
 * engine has more, replies once the last choice has finished. */
enum MHD_Result generate_continue(conn *c);

/* Cancels and releases reqs[from..n) (never read), setting them NULL. */
void generate_release(engine_request **reqs, int from, int n);

/* The connection of a non-streaming generation closed: cancels what is left
 * and records the request as aborted. */
void generate_abort(conn *c);

/* ---- structured.c: structured outputs ---- */

/* The compiled grammar of ar's structured output (*out one reference, or
 * NULL when it asks for none), from the cache or compiled now. Returns 0,
 * or -1 with the reply (400 naming the field) queued in *ret. */
int structured_grammar(conn *c, const api_request *ar, grammar **out, enum MHD_Result *ret);

/* ---- building cJSON trees that cannot leak ---- */

/* item into arr, or deleted when arr is NULL (its own creation failed). A
 * failed allocation anywhere in a tree is caught before the tree is sent
 * (api_json_take_oom, in reply_json and the SSE writer). */
static inline void json_push(cJSON *arr, cJSON *item) {
    if (!cJSON_AddItemToArray(arr, item)) cJSON_Delete(item);
}

/* item into obj under key, a string literal (cJSON keeps the pointer: no
 * allocation that could fail), or deleted when obj is NULL. */
static inline void json_put(cJSON *obj, const char *key, cJSON *item) {
    if (!cJSON_AddItemToObjectCS(obj, key, item)) cJSON_Delete(item);
}

/* ---- response.c: the JSON of responses and chunks ---- */

/* Text that may hold the byte 0x00 (a token can decode to it) is carried
 * with its length from the engine to the JSON: cJSON's strings end at the
 * first NUL, so such text becomes a raw item that this escaper wrote. */

/* Appends s[0..n) to b as a JSON string literal, quotes included, escaped as
 * cJSON escapes (NUL as \u0000). Returns 0, or -1 out of memory. */
int response_escape(strbuf *b, const char *s, size_t n);

/* A JSON string item of the n bytes at s (any bytes, NUL included; s NULL
 * for ""): a cJSON string when there is no NUL, else a raw item. NULL out
 * of memory. */
cJSON *response_string(const char *s, size_t n);

/* The finish_reason of a finish: "stop", "length", "error" or "abort". */
const char *response_finish_str(engine_finish f);

/* The error a request that did not finish normally earns. */
void response_finish_error(const engine_output *o, api_error *err);

/* {"prompt_tokens", "completion_tokens", "total_tokens", "prompt_tokens_details": {"cached_tokens"}} of o. */
cJSON *response_usage(const engine_output *o);

/* {"id", "object", "created", "model"}: the head of a response or chunk. */
cJSON *response_head(server *s, const char *id, const char *object, long created);

/* The "logprobs" of a choice for entries [from, to) of lp, advancing
 * *text_offset (completions' text_offset) by the tokens' text. */
cJSON *response_logprobs(server *s, api_kind kind, const engine_logprob *lp, int from, int to, size_t *text_offset);

/* {"layers", "n_prompt", "token_ids", "tokens", "gates"} of a finished request
 * that asked for Engram gates; NULL when it has none. */
cJSON *response_gates(server *s, engine_request *r, int n_prompt);

/* OpenAI's "tool_calls" of p's calls from `from` on, with "index" in a
 * stream's delta (indexed). */
cJSON *response_tool_calls(server *s, const tool_parser *p, int from, bool indexed);

/* Appends choice c->cur, finished with o, to c->choices: its text (chat: the
 * message, with reasoning and tool calls split off), logprobs (lps, taken;
 * or NULL) and finish_reason. Returns 0, or -1 out of memory. */
int response_choice_add(conn *c, const engine_output *o, cJSON *lps);

/* The whole non-streaming response of c's finished choices (taken from
 * c->choices), usage summed over them (o: the last choice's output) and the
 * gates (taken; or NULL). */
cJSON *response_completion(conn *c, const engine_output *o, cJSON *gates);

/* ---- sse.c: streaming generations ---- */

/* Answers c with the Server-Sent Events of g (taken: its requests are
 * released when the response is freed, or here on failure). */
enum MHD_Result sse_start(conn *c, generation *g);

/* ---- endpoints.c: the other routes ---- */

/* The route handlers, called by http.c's dispatch once the method, the API
 * key, the body size and the engine's readiness have passed: each queues
 * its reply (c->body holds the request body, NUL-terminated). */

enum MHD_Result handle_models(conn *c);
enum MHD_Result handle_model(conn *c, const char *id);
enum MHD_Result handle_health(conn *c);
enum MHD_Result handle_metrics(conn *c);
enum MHD_Result handle_tokenize(conn *c);
enum MHD_Result handle_detokenize(conn *c);

#endif
