/* Chat templates, the chat level: loading a checkpoint's template (or the
 * ChatML fallback), compiling it, and rendering messages, tools and extra
 * variables into a prompt. The engine itself is chat/template_*.c; every
 * compile and render owns one arena and unwinds errors here with longjmp. */
#include "chat/chat_template.h"

#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/err.h"
#include "base/utf8.h"
#include "base/util.h"
#include "chat/template_internal.h"

const char *chat_template_status_str(int status) {
    switch (status) {
    case CHAT_TEMPLATE_OK: return "ok";
    case CHAT_TEMPLATE_ERR_IO: return "i/o error";
    case CHAT_TEMPLATE_ERR_PARSE: return "parse error";
    case CHAT_TEMPLATE_ERR_RENDER: return "render error";
    case CHAT_TEMPLATE_ERR_LIMIT: return "limit exceeded";
    case CHAT_TEMPLATE_ERR_NOMEM: return "out of memory";
    case CHAT_TEMPLATE_ERR_UNSUPPORTED: return "unsupported template feature";
    default: return "unknown status";
    }
}

void chat_template_default_limits(chat_template_limits *l) {
    l->max_output_bytes = (size_t)64 << 20;
    l->max_memory_bytes = (size_t)256 << 20;
    l->max_steps = 20u * 1000 * 1000;
    l->max_depth = 200;
}

struct chat_template {
    arena ar;     /* owns the normalized source and the AST of the default template */
    nlist body;
    arena tool_ar; /* the "tool_use" template of a template list, used when tools are given */
    nlist tool_body;
    bool has_default, has_tool;
    cJSON *ctx; /* object of extra context variables (special tokens); owned */
    chat_template_limits lim;
    bool fallback;
};

static const char CHATML_TEMPLATE[] =
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' ~ message['role'] ~ '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- elif message['content'] is iterable and message['content'] is not mapping -%}"
    "{%- for part in message['content'] -%}{%- if part['text'] is defined -%}{{- part['text'] -}}{%- endif -%}{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}";

/* Keeps an error message on one line (a path may hold a newline); returns status. */
static int one_line(char *err, int status) {
    for (char *c = err; c && *c; c++)
        if (*c == '\n' || *c == '\r') *c = ' ';
    return status;
}

/* A fresh environment for one compile or render under lim; NULL when out of memory. */
static env *env_new(const chat_template_limits *lim, char *err, size_t errlen) {
    env *e = calloc(1, sizeof *e);
    if (!e) return NULL;
    e->err = err;
    e->errlen = errlen;
    e->lim = *lim;
    e->ar.limit = lim->max_memory_bytes;
    return e;
}

/* Ends a compile or render that failed (status) or whose arena was handed on (keep_arena). */
static int env_end(env *e, int status, bool keep_arena) {
    tpl__env_set_current(NULL);
    if (!keep_arena) tpl__arena_free(&e->ar);
    free(e);
    return status;
}

/* Newline normalization and keep_trailing_newline=False, into the arena. */
static char *normalize_source(env *e, const char *source, size_t n, size_t *out_n) {
    char *src = tpl__xalloc(e, n + 1);
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        if (source[i] == '\r') {
            src[m++] = '\n';
            if (i + 1 < n && source[i + 1] == '\n') i++;
        } else
            src[m++] = source[i];
    }
    if (m > 0 && src[m - 1] == '\n') m--;
    src[m] = 0;
    *out_n = m;
    return src;
}

/* Compiles source into t: the default template, or the tool_use one. */
static int compile_into(chat_template *t, const char *source, size_t n, int tool, char *err, size_t errlen) {
    env *e = env_new(&t->lim, err, errlen);
    if (!e) return one_line(err, err_set(err, errlen, CHAT_TEMPLATE_ERR_NOMEM, "out of memory"));
    if (setjmp(e->jb)) return env_end(e, e->status, false);
    tpl__env_set_current(e);
    if (n > CT_MAX_SOURCE) tpl__env_fail(e, CHAT_TEMPLATE_ERR_LIMIT, "template larger than %zu bytes", CT_MAX_SOURCE);
    if (!utf8_valid(source, n)) tpl__env_fail(e, CHAT_TEMPLATE_ERR_PARSE, "template is not valid UTF-8");
    size_t m;
    char *src = normalize_source(e, source, n, &m);
    token *tk;
    size_t ntk;
    tpl__lex(e, src, m, &tk, &ntk);
    nlist body = tpl__parse(e, tk, ntk);
    if (tool) {
        t->tool_ar = e->ar;
        t->tool_body = body;
        t->has_tool = true;
    } else {
        t->ar = e->ar;
        t->body = body;
        t->has_default = true;
    }
    return env_end(e, CHAT_TEMPLATE_OK, true);
}

static char *json_dup_token(const cJSON *v) {
    if (cJSON_IsString(v)) return strdup(v->valuestring);
    if (cJSON_IsObject(v)) {
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(v, "content");
        if (cJSON_IsString(c)) return strdup(c->valuestring);
    }
    return NULL;
}

static int template_new(chat_template **out, char *err, size_t errlen) {
    chat_template *t = calloc(1, sizeof *t);
    if (!t) return one_line(err, err_set(err, errlen, CHAT_TEMPLATE_ERR_NOMEM, "out of memory"));
    chat_template_default_limits(&t->lim);
    *out = t;
    return CHAT_TEMPLATE_OK;
}

int chat_template_create(const char *source, const char *bos_token, const char *eos_token, chat_template **out,
                         char *err, size_t errlen) {
    *out = NULL;
    chat_template *t = NULL;
    int st = template_new(&t, err, errlen);
    if (st) return st;
    t->ctx = cJSON_CreateObject();
    if (!t->ctx || !cJSON_AddStringToObject(t->ctx, "bos_token", bos_token ? bos_token : "") ||
        !cJSON_AddStringToObject(t->ctx, "eos_token", eos_token ? eos_token : "")) {
        chat_template_destroy(t);
        return one_line(err, err_set(err, errlen, CHAT_TEMPLATE_ERR_NOMEM, "out of memory"));
    }
    if (!source) {
        source = CHATML_TEMPLATE;
        t->fallback = true;
    }
    st = compile_into(t, source, strlen(source), 0, err, errlen);
    if (st) {
        chat_template_destroy(t);
        return st;
    }
    *out = t;
    return CHAT_TEMPLATE_OK;
}

/* The template sources of a checkpoint: DIR/chat_template.jinja, else the
 * config's chat_template (a string, or a list whose "default" and
 * "tool_use" entries give *source and *tool_source). */
static int read_sources(const char *dir, const cJSON *cfg, char **source, char **tool_source, bool *is_list, char *err,
                        size_t errlen) {
    char path[4096], ferr[256] = "";
    size_t len = 0;
    snprintf(path, sizeof path, "%s/chat_template.jinja", dir);
    *source = util_read_file(path, CT_MAX_SOURCE, &len, ferr, sizeof ferr);
    if (!*source && access(path, F_OK) == 0) return one_line(err, err_set(err, errlen, CHAT_TEMPLATE_ERR_IO, "%s", ferr));
    if (*source && strlen(*source) != len)
        return one_line(err, err_set(err, errlen, CHAT_TEMPLATE_ERR_PARSE, "%s: template contains a NUL byte", path));
    if (*source || !cfg) return CHAT_TEMPLATE_OK;
    const cJSON *ct = cJSON_GetObjectItemCaseSensitive(cfg, "chat_template");
    if (cJSON_IsString(ct)) {
        *source = strdup(ct->valuestring);
        return CHAT_TEMPLATE_OK;
    }
    if (!cJSON_IsArray(ct)) return CHAT_TEMPLATE_OK;
    /* like transformers' get_chat_template: "tool_use" when tools are given, else "default" */
    *is_list = true;
    const cJSON *it;
    cJSON_ArrayForEach(it, ct) {
        const cJSON *nm = cJSON_GetObjectItemCaseSensitive(it, "name");
        const cJSON *tp = cJSON_GetObjectItemCaseSensitive(it, "template");
        if (!cJSON_IsString(nm) || !cJSON_IsString(tp)) continue;
        char **dst = strcmp(nm->valuestring, "default") == 0    ? source
                     : strcmp(nm->valuestring, "tool_use") == 0 ? tool_source
                                                                : NULL;
        if (!dst) continue;
        free(*dst);
        *dst = strdup(tp->valuestring);
    }
    if (!*source && !*tool_source)
        return one_line(err, err_set(err, errlen, CHAT_TEMPLATE_ERR_PARSE,
                                     "%s/tokenizer_config.json: chat_template list has neither 'default' nor 'tool_use'", dir));
    return CHAT_TEMPLATE_OK;
}

/* The special tokens map of a config: like transformers, only the tokens that are set. */
static cJSON *special_tokens(const cJSON *cfg) {
    cJSON *ctx = cJSON_CreateObject();
    if (!ctx) return NULL;
    static const char *const toks[] = {"bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token", NULL};
    for (int i = 0; cfg && toks[i]; i++) {
        char *v = json_dup_token(cJSON_GetObjectItemCaseSensitive(cfg, toks[i]));
        if (v) cJSON_AddStringToObject(ctx, toks[i], v);
        free(v);
    }
    const cJSON *extra = cfg ? cJSON_GetObjectItemCaseSensitive(cfg, "additional_special_tokens") : NULL;
    if (cJSON_IsArray(extra) && cJSON_GetArraySize(extra) > 0) {
        cJSON *arr = cJSON_AddArrayToObject(ctx, "additional_special_tokens");
        const cJSON *it;
        cJSON_ArrayForEach(it, extra) {
            char *v = json_dup_token(it);
            if (v) cJSON_AddItemToArray(arr, cJSON_CreateString(v));
            free(v);
        }
    }
    return ctx;
}

/* DIR/tokenizer_config.json as a cJSON object in *cfg (NULL when the file is absent). */
static int read_config(const char *dir, cJSON **cfg, char *err, size_t errlen) {
    char path[4096], ferr[256] = "";
    size_t len = 0;
    *cfg = NULL;
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    char *text = util_read_file(path, (size_t)64 << 20, &len, ferr, sizeof ferr);
    if (!text && access(path, F_OK) == 0) return one_line(err, err_set(err, errlen, CHAT_TEMPLATE_ERR_IO, "%s", ferr));
    if (!text) return CHAT_TEMPLATE_OK;
    *cfg = cJSON_ParseWithLength(text, len);
    free(text);
    if (!*cfg || !cJSON_IsObject(*cfg)) {
        cJSON_Delete(*cfg);
        *cfg = NULL;
        return one_line(err, err_set(err, errlen, CHAT_TEMPLATE_ERR_PARSE, "%s: invalid JSON", path));
    }
    return CHAT_TEMPLATE_OK;
}

int chat_template_load_dir(const char *dir, chat_template **out, char *err, size_t errlen) {
    *out = NULL;
    cJSON *cfg;
    int st = read_config(dir, &cfg, err, errlen);
    if (st) return st;
    /* template source: chat_template.jinja beside the config wins, as in transformers */
    char *source = NULL, *tool_source = NULL;
    bool is_list = false;
    st = read_sources(dir, cfg, &source, &tool_source, &is_list, err, errlen);
    cJSON *ctx = st ? NULL : special_tokens(cfg);
    cJSON_Delete(cfg);
    if (!st && !ctx) st = one_line(err, err_set(err, errlen, CHAT_TEMPLATE_ERR_NOMEM, "out of memory"));
    chat_template *t = NULL;
    if (!st) st = template_new(&t, err, errlen);
    if (st) goto fail;
    t->ctx = ctx;
    ctx = NULL;
    t->fallback = source == NULL && !is_list;
    if (source || !is_list)
        st = compile_into(t, source ? source : CHATML_TEMPLATE, source ? strlen(source) : strlen(CHATML_TEMPLATE), 0, err, errlen);
    if (!st && tool_source) st = compile_into(t, tool_source, strlen(tool_source), 1, err, errlen);
    if (st) goto fail;
    free(source);
    free(tool_source);
    *out = t;
    return CHAT_TEMPLATE_OK;
fail:
    free(source);
    free(tool_source);
    cJSON_Delete(ctx);
    chat_template_destroy(t);
    return st;
}

void chat_template_set_limits(chat_template *t, const chat_template_limits *lim) { t->lim = *lim; }

bool chat_template_is_fallback(const chat_template *t) { return t->fallback; }

/* What one render reads: each input is a cJSON tree or JSON text (one of the two). */
typedef struct {
    const cJSON *messages, *tools, *extra;
    const char *messages_json, *tools_json, *extra_json;
} render_input;

static value input_value(env *e, const cJSON *tree, const char *text) {
    return text ? tpl__json_parse(e, text, strlen(text)) : tpl__json_from_cjson(e, tree);
}

static void root_set_object(env *e, scope *root, value v, const char *what) {
    if (v.t != V_DICT) tpl__env_fail(e, CHAT_TEMPLATE_ERR_PARSE, "%s must be a JSON object", what);
    for (size_t i = 0; i < v.u.d->n; i++)
        tpl__scope_set(e, root, v.u.d->k[i].u.s.p, v.u.d->k[i].u.s.n, v.u.d->v[i]);
}

/* The root scope of a render: special tokens, then the extra variables over
 * them, then messages, tools, documents and add_generation_prompt. */
static scope *root_scope(env *e, const chat_template *t, const render_input *in, bool add_generation_prompt,
                         value *tools_out) {
    if (!in->messages && !in->messages_json) tpl__env_fail(e, CHAT_TEMPLATE_ERR_PARSE, "messages are missing");
    scope *root = tpl__scope_new(e, NULL);
    root_set_object(e, root, tpl__json_from_cjson(e, t->ctx), "special tokens");
    value msgs = input_value(e, in->messages, in->messages_json);
    if (msgs.t != V_LIST) tpl__env_fail(e, CHAT_TEMPLATE_ERR_PARSE, "messages must be a JSON array");
    value tools = mk_none();
    if (in->tools || in->tools_json) {
        tools = input_value(e, in->tools, in->tools_json);
        if (tools.t != V_LIST && tools.t != V_NONE) tpl__env_fail(e, CHAT_TEMPLATE_ERR_PARSE, "tools must be a JSON array");
        if (tools.t == V_LIST)
            for (size_t i = 0; i < tools.u.l->n; i++)
                if (tools.u.l->v[i].t != V_DICT) tpl__env_fail(e, CHAT_TEMPLATE_ERR_PARSE, "each tool must be a JSON object");
    }
    if (in->extra || in->extra_json) root_set_object(e, root, input_value(e, in->extra, in->extra_json), "extra context");
    tpl__scope_set(e, root, "messages", 8, msgs);
    tpl__scope_set(e, root, "tools", 5, tools);
    tpl__scope_set(e, root, "documents", 9, mk_none());
    tpl__scope_set(e, root, "add_generation_prompt", 21, mk_bool(add_generation_prompt));
    *tools_out = tools;
    return root;
}

static int render(const chat_template *t, const render_input *in, bool add_generation_prompt, char **out,
                  size_t *out_len, char *err, size_t errlen) {
    *out = NULL;
    if (out_len) *out_len = 0;
    if (err && errlen) err[0] = 0;
    env *e = env_new(&t->lim, err, errlen);
    if (!e) return one_line(err, err_set(err, errlen, CHAT_TEMPLATE_ERR_NOMEM, "out of memory"));
    if (setjmp(e->jb)) return env_end(e, e->status, false);
    tpl__env_set_current(e);
    value tools;
    scope *root = root_scope(e, t, in, add_generation_prompt, &tools);
    const nlist *body = &t->body;
    if (tools.t != V_NONE && t->has_tool)
        body = &t->tool_body;
    else if (!t->has_default)
        tpl__env_fail(e, CHAT_TEMPLATE_ERR_RENDER, "this model has only a 'tool_use' chat template: pass tools");
    sbuf main = {0};
    e->cap_top = &main;
    e->root = root;
    tpl__exec_body(e, root, (nlist *)body);
    char *res = malloc(main.n + 1);
    if (!res) tpl__env_fail(e, CHAT_TEMPLATE_ERR_NOMEM, "out of memory");
    if (main.n) memcpy(res, main.p, main.n);
    res[main.n] = 0;
    if (out_len) *out_len = main.n;
    *out = res;
    return env_end(e, CHAT_TEMPLATE_OK, false);
}

int chat_template_render_ex(const chat_template *t, const cJSON *messages, const cJSON *tools, const cJSON *extra,
                            bool add_generation_prompt, char **out, size_t *out_len, char *err, size_t errlen) {
    render_input in = {.messages = messages, .tools = tools, .extra = extra};
    return render(t, &in, add_generation_prompt, out, out_len, err, errlen);
}

int chat_template_render(const chat_template *t, const cJSON *messages, const cJSON *tools, bool add_generation_prompt,
                         char **out, char *err, size_t errlen) {
    return chat_template_render_ex(t, messages, tools, NULL, add_generation_prompt, out, NULL, err, errlen);
}

int chat_template_render_json(const chat_template *t, const char *messages_json, const char *tools_json,
                              const char *extra_json, bool add_generation_prompt, char **out, size_t *out_len,
                              char *err, size_t errlen) {
    render_input in = {.messages_json = messages_json, .tools_json = tools_json, .extra_json = extra_json};
    return render(t, &in, add_generation_prompt, out, out_len, err, errlen);
}

void chat_template_destroy(chat_template *t) {
    if (!t) return;
    tpl__arena_free(&t->ar);
    tpl__arena_free(&t->tool_ar);
    cJSON_Delete(t->ctx);
    free(t);
}
