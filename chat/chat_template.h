/* Chat templates: a Jinja-subset interpreter that renders the chat_template of
 * a tokenizer_config.json byte-identically to Python jinja2 under the
 * conventions of transformers' apply_chat_template (trim_blocks, lstrip_blocks,
 * raise_exception, strftime_now, tojson, namespace, loop variables, the filters
 * and string methods real templates use). Models without a template fall back
 * to ChatML. Rendering failures are errors with a message, never crashes. */
/* Supported Jinja subset (anything else is CHAT_TEMPLATE_ERR_UNSUPPORTED or a
 * parse error, never a silent difference):
 *   tags: if/elif/else, for (tuple targets, "if" filter, else, loop.index/
 *     index0/revindex/revindex0/first/last/length/previtem/nextitem),
 *     break/continue, set (names, tuples, ns.attr, block set), macro with
 *     defaults and keyword calls, raw, comments, generation (body as is);
 *     whitespace control -/+ with trim_blocks and lstrip_blocks.
 *   expressions: literals incl. lists/dicts/tuples, attribute/item access,
 *     slices, calls, + - * / // % ** ~, comparisons (chained), in/not in,
 *     and/or/not, conditional expressions, is [not] tests.
 *   globals: range, namespace, dict, raise_exception, strftime_now.
 *   filters: length count string trim upper lower capitalize title replace
 *     first last join default d items selectattr rejectattr select reject map
 *     list int float safe abs reverse tojson escape e sort unique min max sum
 *     indent dictsort.
 *   tests: defined undefined none boolean true false integer float number
 *     string mapping iterable sequence callable sameas lower upper odd even
 *     divisibleby eq equalto ne lt le gt ge in (and ==, !=, <, <=, >, >=).
 *   methods: str startswith endswith strip lstrip rstrip split rsplit replace
 *     upper lower title capitalize find rfind count join format isdigit
 *     isalpha isspace isalnum isupper islower; dict items keys values get.
 * Values follow Python: int/float arithmetic, repr of lists and dicts, float
 * repr, ordered dicts, jinja2's default Undefined. */
#ifndef ENGINE_CHAT_TEMPLATE_H
#define ENGINE_CHAT_TEMPLATE_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
    CHAT_TEMPLATE_OK = 0,
    CHAT_TEMPLATE_ERR_IO = -1,      /* a file could not be read */
    CHAT_TEMPLATE_ERR_PARSE = -2,   /* template or JSON syntax error */
    CHAT_TEMPLATE_ERR_RENDER = -3,  /* runtime error, incl. raise_exception() */
    CHAT_TEMPLATE_ERR_LIMIT = -4,   /* output, recursion or step limit exceeded */
    CHAT_TEMPLATE_ERR_NOMEM = -5,
    CHAT_TEMPLATE_ERR_UNSUPPORTED = -6, /* a jinja2 feature this engine does not implement */
} chat_template_status;

const char *chat_template_status_str(int status);

typedef struct chat_template chat_template;

/* Loads DIR/tokenizer_config.json: its chat_template (a string, or a list of
 * {name, template} where "default" is used, and "tool_use" when tools are
 * given, as in transformers), bos_token and eos_token (strings or AddedToken
 * objects; the other special tokens too, as apply_chat_template passes them).
 * DIR/chat_template.jinja, when present, wins over the config's template.
 * A missing file or template falls back to ChatML.
 * Returns 0 and sets *out, or a negative status with a message in err. */
int chat_template_load_dir(const char *dir, chat_template **out, char *err, size_t errlen);

/* Compiles a template from source (bos/eos may be NULL: empty strings). */
int chat_template_create(const char *source, const char *bos_token, const char *eos_token,
                         chat_template **out, char *err, size_t errlen);

/* Renders messages (a cJSON array of message objects) with tools (a cJSON
 * array, or NULL: none) and add_generation_prompt. The trees are borrowed
 * for the call. They are read as the server's old path read them (cJSON's
 * printer, then a JSON reader): a number is what cJSON prints, so an
 * integral double like 1.0 is the int 1; a string ends at its first NUL;
 * strings must be valid UTF-8. On success *out is a heap string owned by
 * the caller (free()). On failure returns a negative status and a one-line
 * message in err. */
int chat_template_render(const chat_template *t, const cJSON *messages, const cJSON *tools, bool add_generation_prompt,
                         char **out, char *err, size_t errlen);

/* Like chat_template_render, plus extra: NULL or a cJSON object whose
 * members become template variables (apply_chat_template's **kwargs, e.g.
 * {"enable_thinking": false}); they override the special tokens. out_len
 * (may be NULL) receives the byte length. Thread-safe: renders of one
 * template may run concurrently (needs about 2 MiB of stack at worst). */
int chat_template_render_ex(const chat_template *t, const cJSON *messages, const cJSON *tools, const cJSON *extra,
                            bool add_generation_prompt, char **out, size_t *out_len, char *err, size_t errlen);

/* Like chat_template_render_ex, with messages_json (a JSON array), tools_json
 * and extra_json (NULL or JSON text) read with Python json.loads semantics,
 * which a cJSON tree cannot carry: 1.0 stays a float and "\u0000" stays in
 * a string (the prompt may then contain NUL bytes, as in Python; see
 * out_len). For JSON files (engram-chatrender, engram-tokenize), where the
 * output must match transformers byte for byte. */
int chat_template_render_json(const chat_template *t, const char *messages_json, const char *tools_json,
                              const char *extra_json, bool add_generation_prompt, char **out, size_t *out_len,
                              char *err, size_t errlen);

/* Resource limits of one render (and of compiling). A hostile template hits
 * one of them and gets CHAT_TEMPLATE_ERR_LIMIT, never an unbounded run. */
typedef struct {
    size_t max_output_bytes; /* rendered text and any one string, bytes (64 MiB) */
    size_t max_memory_bytes; /* arena per render or compile, bytes (256 MiB) */
    uint64_t max_steps;      /* evaluation steps (20 M) */
    int max_depth;           /* expression/block nesting; x4 for runtime recursion (200) */
} chat_template_limits;

void chat_template_default_limits(chat_template_limits *lim);

/* Applies lim to later renders of t (compile limits are the defaults). */
void chat_template_set_limits(chat_template *t, const chat_template_limits *lim);

/* True when t is the ChatML fallback (the model has no chat_template). */
bool chat_template_is_fallback(const chat_template *t);

void chat_template_destroy(chat_template *t); /* accepts NULL */

#endif
