/* JSON request bodies -> plain structs, with every field validated (type and
 * range), and the OpenAI error a bad body earns. Pure: no I/O, no engine, no
 * HTTP, so the parsers can be fuzzed (tests/fuzz/fuzz_api_request.c). Checks
 * that need the model (vocabulary range, context length) are the caller's. */
#ifndef SERVER_API_H
#define SERVER_API_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/engine.h"
#include "server/errors.h"

typedef enum { API_COMPLETIONS, API_CHAT } api_kind;

/* Structured output: what the output must be (generate.c compiles it). */
typedef enum {
    API_STRUCT_NONE = 0,
    API_STRUCT_JSON_SCHEMA, /* structured_src: the schema, compact JSON */
    API_STRUCT_JSON_OBJECT, /* any JSON object; structured_src "" */
    API_STRUCT_REGEX,       /* structured_src: the regex */
    API_STRUCT_CHOICE,      /* structured_src: the choices, a compact JSON array of strings */
    API_STRUCT_GRAMMAR,     /* structured_src: GBNF */
    API_STRUCT_TOOL_CALLS,  /* tool_choice "required" or named: structured_src {"max", "tools": [{"index", "name",
                             * ["parameters"]}]} (api_request.c) */
} api_struct_kind;

#define API_MAX_N 16 /* choices per request ("n") */
#define API_MAX_CACHE_SALT 1024 /* bytes of a cache_salt */

/* A validated /v1/completions or /v1/chat/completions body. */
typedef struct {
    api_kind kind;
    char *model;            /* NULL when absent */
    /* completions: exactly one of prompt_text, prompt_ids */
    char *prompt_text;      /* UTF-8 */
    int32_t *prompt_ids;    /* (n_prompt_ids) */
    int n_prompt_ids;
    /* chat: the messages as an array of {"role", "content" (string), ["name"],
     * ["tool_calls"], ["tool_call_id"]}; owned */
    cJSON *messages;
    cJSON *tools;           /* chat: the tools (an array) when the model may call them, else NULL; owned */
    int max_tokens;         /* -1 when absent (max_tokens or max_completion_tokens) */
    int n;                  /* choices, 1..API_MAX_N */
    bool stream;
    bool include_usage;     /* stream_options.include_usage */
    sampler_params sampling; /* temperature, top_p, top_k, min_p, penalties, seed */
    bool has_seed;
    bool ignore_eos;        /* vLLM's extension */
    bool engram_gates;      /* our extension: return every token's Engram gates (not with stream) */
    char *force_text;       /* our extension "engram_force": the output is this text's tokens (tests of
                             * clients: tool calls, stop strings), or NULL */
    char *cache_salt;       /* vLLM's extension: prefix caching shares blocks only between requests of the
                             * same salt; NULL when absent, else 1..API_MAX_CACHE_SALT bytes */
    bool logprobs;          /* chat: logprobs; completions: logprobs present */
    int top_logprobs;       /* alternatives per token: chat top_logprobs, completions logprobs */
    char *stop[ENGINE_MAX_STOP];
    int n_stop;
    int32_t *bias_ids;      /* (n_bias) logit_bias */
    float *bias_vals;       /* (n_bias) */
    int n_bias;
    api_struct_kind structured; /* response_format json_schema / json_object, guided_json, guided_regex,
                                 * guided_choice, guided_grammar, structured_outputs, or tool_choice
                                 * "required" or named */
    char *structured_src;       /* its canonical text (see api_struct_kind), heap */
    const char *structured_param; /* the field it came from (static), for errors */
} api_request;

/* Routes cJSON's allocations through a hook that notes a failure, so that a
 * body cJSON could not parse for want of memory is a 500, not a 400. Call
 * once, before any thread parses (cJSON's hooks are process-wide). */
void api_json_init(void);

/* Whether a cJSON allocation of this thread failed since the last call
 * (clears the mark): a tree built meanwhile may lack a field. */
bool api_json_take_oom(void);

/* Parses and validates a request body of len bytes (not NUL-terminated;
 * untrusted: any bytes). The body must be well-formed UTF-8 and one JSON
 * object. Returns 0 with *out filled (free with api_request_free), or -1 with
 * err set (status 400; *out is left empty). */
int api_parse_request(api_kind kind, const char *body, size_t len, api_request *out, api_error *err);
void api_request_free(api_request *r); /* frees the members; accepts zeroed structs */

/* POST /tokenize: {"prompt": "text"} or {"messages": [...]} (chat template
 * applied), optional "add_special_tokens" (default true for prompt, false for
 * messages) and "model". */
typedef struct {
    char *model;
    char *prompt_text;   /* or NULL */
    cJSON *messages;     /* as in api_request, or NULL; owned */
    bool add_special;
} api_tokenize;

int api_parse_tokenize(const char *body, size_t len, api_tokenize *out, api_error *err);
void api_tokenize_free(api_tokenize *t);

/* POST /detokenize: {"tokens": [ids]} and optional "model". */
typedef struct {
    char *model;
    int32_t *ids; /* (n_ids) */
    int n_ids;
} api_detokenize;

int api_parse_detokenize(const char *body, size_t len, api_detokenize *out, api_error *err);
void api_detokenize_free(api_detokenize *d);

#endif
