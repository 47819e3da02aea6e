/* Chat templates: a Jinja-subset interpreter that renders the chat_template of
 * a tokenizer_config.json byte-identically to Python jinja2 under the
 * conventions of transformers' apply_chat_template (trim_blocks, lstrip_blocks,
 * raise_exception, strftime_now, tojson, namespace, loop variables, the filters
 * and string methods real templates use). Models without a template fall back
 * to ChatML. Rendering failures are errors with a message, never crashes. */
#ifndef ENGINE_CHAT_TEMPLATE_H
#define ENGINE_CHAT_TEMPLATE_H

#include <stdbool.h>
#include <stddef.h>

typedef enum {
    CHAT_TEMPLATE_OK = 0,
    CHAT_TEMPLATE_ERR_IO = -1,      /* a file could not be read */
    CHAT_TEMPLATE_ERR_PARSE = -2,   /* template or JSON syntax error */
    CHAT_TEMPLATE_ERR_RENDER = -3,  /* runtime error, incl. raise_exception() */
    CHAT_TEMPLATE_ERR_LIMIT = -4,   /* output, recursion or step limit exceeded */
    CHAT_TEMPLATE_ERR_NOMEM = -5,
} chat_template_status;

const char *chat_template_status_str(int status);

typedef struct chat_template chat_template;

/* Loads DIR/tokenizer_config.json: its chat_template (a string, or a list of
 * {name, template} where "default" is used), bos_token and eos_token (strings
 * or AddedToken objects). A missing file or template falls back to ChatML.
 * Returns 0 and sets *out, or a negative status with a message in err. */
int chat_template_load_dir(const char *dir, chat_template **out, char *err, size_t errlen);

/* Compiles a template from source (bos/eos may be NULL: empty strings). */
int chat_template_create(const char *source, const char *bos_token, const char *eos_token,
                         chat_template **out, char *err, size_t errlen);

/* Renders messages_json (a JSON array of message objects) with optional
 * tools_json (a JSON array or NULL) and add_generation_prompt. On success *out
 * is a heap string owned by the caller (free()). On failure returns a negative
 * status and a one-line message in err. */
int chat_template_render(const chat_template *t, const char *messages_json, const char *tools_json,
                         bool add_generation_prompt, char **out, char *err, size_t errlen);

void chat_template_destroy(chat_template *t); /* accepts NULL */

#endif
