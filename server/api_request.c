/* Request body parsers of the OpenAI-compatible API (see api.h): UTF-8 check,
 * cJSON parse, then every known field checked for type and range. Fields that
 * would change the semantics and are not implemented (echo, suffix, best_of,
 * ...) are refused with a 400 naming the field; unknown fields are ignored,
 * as OpenAI-compatible servers do. Structured outputs (response_format,
 * guided_*, tool_choice "required" or named) are kept as canonical text for
 * structured.c to compile. */
#include <cjson/cJSON.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/utf8.h"
#include "server/api.h"

#define MAX_MESSAGES 4096
#define MAX_BIAS 1024
#define MAX_PROMPT_IDS (1 << 20)

/* cJSON's allocations, through a hook that notes a failure in this thread:
 * cJSON answers NULL both for bad JSON and for want of memory, and the
 * client should hear a 500 for the second, not a 400. */
static _Thread_local bool json_oom;

static void *json_malloc(size_t n) {
    void *p = malloc(n);
    if (!p) json_oom = true;
    return p;
}

void api_json_init(void) { cJSON_InitHooks(&(cJSON_Hooks){json_malloc, free}); }

bool api_json_take_oom(void) {
    bool was = json_oom;
    json_oom = false;
    return was;
}

static int cmp_key(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* The first key found twice in one object of the tree at v (depth first),
 * or NULL; *nomem when out of memory. cJSON keeps both entries and lookups
 * see the first, where most parsers keep the last: a parser in front of this
 * server could read another request than ours, so duplicates are refused. */
static const char *duplicate_key(const cJSON *v, bool *nomem) {
    int n = 0;
    for (const cJSON *c = v->child; c; c = c->next) {
        n++;
        const char *k = c->child ? duplicate_key(c, nomem) : NULL; /* depth: cJSON's nesting limit */
        if (k || *nomem) return k;
    }
    if (!cJSON_IsObject(v) || n < 2) return NULL;
    const char **keys = malloc((size_t)n * sizeof(*keys)); /* sorted: n log n, bodies may hold 10^5 keys */
    if (!keys) {
        *nomem = true;
        return NULL;
    }
    n = 0;
    for (const cJSON *c = v->child; c; c = c->next) keys[n++] = c->string;
    qsort(keys, (size_t)n, sizeof(*keys), cmp_key);
    const char *dup = NULL;
    for (int i = 1; i < n && !dup; i++)
        if (!strcmp(keys[i - 1], keys[i])) dup = keys[i];
    free(keys);
    return dup;
}

/* The length of s's longest prefix of at most max bytes that ends on a UTF-8
 * character boundary (s is valid UTF-8): quoted in messages, which must stay
 * valid UTF-8. */
static int utf8_prefix(const char *s, size_t max) {
    size_t n = strlen(s);
    if (n <= max) return (int)n;
    while (max && ((unsigned char)s[max] & 0xC0) == 0x80) max--;
    return (int)max;
}

/* Parses body as one JSON object; NULL with err set otherwise. */
static cJSON *parse_object(const char *body, size_t len, api_error *err) {
    if (!utf8_valid(body, len)) {
        api_error_set(err, 400, NULL, "The request body is not valid UTF-8.");
        return NULL;
    }
    if (memchr(body, 0, len)) {
        api_error_set(err, 400, NULL, "The request body is not valid JSON: it contains a NUL byte.");
        return NULL;
    }
    /* cJSON would cut a string at an escaped NUL and change its meaning: refuse it. */
    for (size_t i = 0; i + 5 < len; i++) {
        if (body[i] != '\\' || body[i + 1] != 'u' || memcmp(body + i + 2, "0000", 4) != 0) continue;
        size_t k = 0;
        while (k < i && body[i - 1 - k] == '\\') k++;
        if (k % 2 == 0) {
            api_error_set(err, 400, NULL, "The request body contains the escape \\u0000: NUL characters are not supported.");
            return NULL;
        }
    }
    const char *end = NULL;
    json_oom = false;
    cJSON *root = cJSON_ParseWithLengthOpts(body, len, &end, false);
    if (root) {
        while (end && end < body + len && (*end == ' ' || *end == '\t' || *end == '\r' || *end == '\n')) end++;
        if (end != body + len) {
            cJSON_Delete(root);
            root = NULL;
        }
    }
    if (!root && api_json_take_oom()) {
        api_error_set(err, 500, NULL, "Out of memory.");
        return NULL;
    }
    if (!root) {
        api_error_set(err, 400, NULL,
                      "We could not parse the JSON body of your request. The request body must be one JSON object.");
        return NULL;
    }
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        api_error_set(err, 400, NULL, "The request body must be a JSON object.");
        return NULL;
    }
    bool nomem = false;
    const char *dup = duplicate_key(root, &nomem);
    if (dup || nomem) {
        char key[64];
        snprintf(key, sizeof(key), "%.*s", utf8_prefix(dup ? dup : "", 60), dup ? dup : "");
        if (nomem) api_error_set(err, 500, NULL, "Out of memory.");
        else api_error_set(err, 400, key, "Duplicate key '%s' in the request body: each key may appear once per object.", key);
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

/* The field `name` of obj, or NULL when absent or null. */
static cJSON *field(const cJSON *obj, const char *name) {
    cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
    return v && !cJSON_IsNull(v) ? v : NULL;
}

/* Reads an optional number in [lo, hi] (open at lo when lo_open). Returns 1
 * if present, 0 if absent, -1 with err set if bad. The engine keeps these as
 * floats: a value above an open bound that rounds to it as a float (1e-300
 * to 0) is refused too, else it would pass here and be the bound there. */
static int get_number(const cJSON *obj, const char *name, double lo, double hi, bool lo_open, double *out,
                      api_error *err) {
    cJSON *v = field(obj, name);
    if (!v) return 0;
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble)) {
        api_error_set(err, 400, name, "Invalid type for '%s': expected a number.", name);
        return -1;
    }
    double d = v->valuedouble;
    if (d < lo || d > hi || (lo_open && d == lo)) {
        api_error_set(err, 400, name, "Invalid value for '%s': %g is not in %s%g, %g].", name, d,
                      lo_open ? "(" : "[", lo, hi);
        return -1;
    }
    if (lo_open && (float)d == (float)lo) {
        api_error_set(err, 400, name, "Invalid value for '%s': %g rounds to %g as a 32-bit float, which is not in (%g, %g].",
                      name, d, (double)(float)d, lo, hi);
        return -1;
    }
    *out = d;
    return 1;
}

static int get_int(const cJSON *obj, const char *name, double lo, double hi, long long *out, api_error *err) {
    cJSON *v = field(obj, name);
    if (!v) return 0;
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble != floor(v->valuedouble)) {
        api_error_set(err, 400, name, "Invalid type for '%s': expected an integer.", name);
        return -1;
    }
    double d = v->valuedouble;
    /* long long holds [-2^63, 2^63): 2^63 itself (what 2^63 - 1 reads as in a
     * double) must not reach the cast, whatever hi says */
    if (d < lo || d > hi || d >= 0x1p63 || d < -0x1p63) {
        if (hi >= 0x1p63)
            api_error_set(err, 400, name,
                          "Invalid value for '%s': %.17g is not in [-2^63, 2^63) (JSON numbers are read as doubles, "
                          "so 2^63 - 1 reads as 2^63).", name, d);
        else
            api_error_set(err, 400, name, "Invalid value for '%s': %.17g is not in [%.17g, %.17g].", name, d, lo, hi);
        return -1;
    }
    *out = (long long)d;
    return 1;
}

static int get_bool(const cJSON *obj, const char *name, bool *out, api_error *err) {
    cJSON *v = field(obj, name);
    if (!v) return 0;
    if (!cJSON_IsBool(v)) {
        api_error_set(err, 400, name, "Invalid type for '%s': expected a boolean.", name);
        return -1;
    }
    *out = cJSON_IsTrue(v);
    return 1;
}

/* Optional string; *out is a heap copy. */
static int get_string(const cJSON *obj, const char *name, char **out, api_error *err) {
    cJSON *v = field(obj, name);
    if (!v) return 0;
    if (!cJSON_IsString(v)) {
        api_error_set(err, 400, name, "Invalid type for '%s': expected a string.", name);
        return -1;
    }
    if (!(*out = strdup(v->valuestring))) {
        api_error_set(err, 500, NULL, "Out of memory.");
        return -1;
    }
    return 1;
}

static int unsupported(api_error *err, const char *name, const char *what) {
    api_error_set(err, 400, name, "'%s' is not supported by this server%s%s.", name, what ? ": " : "", what ? what : "");
    return -1;
}

/* Parses an array of token ids (non-empty, each in [0, INT32_MAX]). */
static int parse_ids(const cJSON *arr, const char *name, int32_t **ids, int *n, api_error *err) {
    int count = cJSON_GetArraySize(arr);
    if (count < 1 || count > MAX_PROMPT_IDS) {
        api_error_set(err, 400, name, "'%s' must hold between 1 and %d token ids.", name, MAX_PROMPT_IDS);
        return -1;
    }
    int32_t *v = malloc((size_t)count * sizeof(int32_t));
    if (!v) {
        api_error_set(err, 500, NULL, "Out of memory.");
        return -1;
    }
    int i = 0;
    const cJSON *x;
    cJSON_ArrayForEach(x, arr) {
        if (!cJSON_IsNumber(x) || x->valuedouble != floor(x->valuedouble) || x->valuedouble < 0 ||
            x->valuedouble > INT32_MAX) {
            free(v);
            api_error_set(err, 400, name, "'%s' must be a list of non-negative integer token ids.", name);
            return -1;
        }
        v[i++] = (int32_t)x->valuedouble;
    }
    *ids = v;
    *n = count;
    return 0;
}

/* Checks messages and rewrites them as [{"role", "content": string, ["name"]}]. */
/* A message's content as one string: a string, absent (assistant only), or a
 * list of text parts (concatenated). Returns 0, -1 with err set, or -2 when
 * out of memory. */
static int message_content(const cJSON *m, const char *role, int i, char **out, api_error *err) {
    char param[64];
    const cJSON *c = field(m, "content");
    size_t clen = 0, ccap = 64;
    char *content = malloc(ccap);
    if (!content) return -2;
    content[0] = 0;
    snprintf(param, sizeof(param), "messages[%d].content", i);
    if (!c) {
        if (strcmp(role, "assistant") != 0) {
            api_error_set(err, 400, param, "Missing required parameter: '%s'.", param);
            goto fail;
        }
    } else if (cJSON_IsString(c)) {
        free(content);
        if (!(content = strdup(c->valuestring))) return -2;
    } else if (cJSON_IsArray(c)) {
        const cJSON *part;
        cJSON_ArrayForEach(part, c) {
            const cJSON *type = cJSON_IsObject(part) ? field(part, "type") : NULL;
            const cJSON *text = cJSON_IsObject(part) ? field(part, "text") : NULL;
            if (!type || !cJSON_IsString(type) || strcmp(type->valuestring, "text") != 0 || !text ||
                !cJSON_IsString(text)) {
                api_error_set(err, 400, param,
                              "Invalid content part in '%s': only {\"type\": \"text\", \"text\": string} "
                              "parts are supported.",
                              param);
                goto fail;
            }
            size_t tl = strlen(text->valuestring);
            if (clen + tl + 1 > ccap) {
                ccap = (clen + tl + 1) * 2;
                char *q = realloc(content, ccap);
                if (!q) {
                    free(content);
                    return -2;
                }
                content = q;
            }
            memcpy(content + clen, text->valuestring, tl + 1);
            clen += tl;
        }
    } else {
        api_error_set(err, 400, param, "Invalid type for '%s': expected a string or an array of text parts.", param);
        goto fail;
    }
    *out = content;
    return 0;
fail:
    free(content);
    return -1;
}

/* An assistant's tool calls, [{"id", "type": "function", "function": {"name",
 * "arguments"}}], normalized into *out (NULL when there are none). Returns 0,
 * -1 with err set, or -2 when out of memory. */
static int message_tool_calls(const cJSON *m, const char *role, int i, cJSON **out, api_error *err) {
    char param[64];
    const cJSON *tc = field(m, "tool_calls");
    *out = NULL;
    if (!tc || (cJSON_IsArray(tc) && cJSON_GetArraySize(tc) == 0)) return 0;
    snprintf(param, sizeof(param), "messages[%d].tool_calls", i);
    if (strcmp(role, "assistant") != 0 || !cJSON_IsArray(tc)) {
        api_error_set(err, 400, param, "Invalid '%s': only an assistant message has tool calls, as an array.", param);
        return -1;
    }
    cJSON *calls = cJSON_CreateArray();
    if (!calls) return -2;
    const cJSON *call;
    cJSON_ArrayForEach(call, tc) {
        const cJSON *id = cJSON_IsObject(call) ? field(call, "id") : NULL;
        const cJSON *fn = cJSON_IsObject(call) ? field(call, "function") : NULL;
        const cJSON *fname = cJSON_IsObject(fn) ? field(fn, "name") : NULL;
        const cJSON *fargs = cJSON_IsObject(fn) ? field(fn, "arguments") : NULL;
        if ((id && !cJSON_IsString(id)) || !cJSON_IsString(fname) || !cJSON_IsString(fargs)) {
            cJSON_Delete(calls);
            api_error_set(err, 400, param,
                          "Invalid entry in '%s': expected {\"id\": string, \"type\": \"function\", "
                          "\"function\": {\"name\": string, \"arguments\": string}}.",
                          param);
            return -1;
        }
        cJSON *o = cJSON_CreateObject(), *f = cJSON_CreateObject();
        bool ok = o && f && cJSON_AddItemToObject(o, "function", f);
        if (!ok) cJSON_Delete(f); /* else o owns it */
        ok = ok && (!id || cJSON_AddStringToObject(o, "id", id->valuestring)) &&
             cJSON_AddStringToObject(o, "type", "function") && cJSON_AddStringToObject(f, "name", fname->valuestring) &&
             cJSON_AddStringToObject(f, "arguments", fargs->valuestring) && cJSON_AddItemToArray(calls, o);
        if (!ok) {
            cJSON_Delete(o);
            cJSON_Delete(calls);
            return -2;
        }
    }
    *out = calls;
    return 0;
}

/* chat's messages, validated and normalized into a new array *out (owned by
 * the caller): what the chat template renders. */
static int parse_messages(const cJSON *root, cJSON **out, api_error *err) {
    const cJSON *msgs = field(root, "messages");
    if (!msgs) {
        api_error_set(err, 400, "messages", "Missing required parameter: 'messages'.");
        return -1;
    }
    int count = cJSON_IsArray(msgs) ? cJSON_GetArraySize(msgs) : -1;
    if (count < 1 || count > MAX_MESSAGES) {
        api_error_set(err, 400, "messages", "'messages' must be a non-empty array of at most %d messages.", MAX_MESSAGES);
        return -1;
    }
    static const char *roles[] = {"system", "developer", "user", "assistant", "tool"};
    cJSON *norm = cJSON_CreateArray();
    char *content = NULL;
    int rc;
    if (!norm) goto nomem;
    int i = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, msgs) {
        char param[64];
        snprintf(param, sizeof(param), "messages[%d]", i);
        if (!cJSON_IsObject(m)) {
            api_error_set(err, 400, param, "Invalid type for '%s': expected an object.", param);
            goto fail;
        }
        const cJSON *role = field(m, "role");
        bool known = false;
        for (size_t k = 0; role && cJSON_IsString(role) && k < sizeof(roles) / sizeof(roles[0]); k++)
            known |= strcmp(role->valuestring, roles[k]) == 0;
        if (!known) {
            snprintf(param, sizeof(param), "messages[%d].role", i);
            api_error_set(err, 400, param,
                          "Invalid value for '%s': expected one of 'system', 'developer', 'user', 'assistant', 'tool'.",
                          param);
            goto fail;
        }
        if ((rc = message_content(m, role->valuestring, i, &content, err))) goto rc_fail;
        const cJSON *name = field(m, "name");
        if (name && !cJSON_IsString(name)) {
            snprintf(param, sizeof(param), "messages[%d].name", i);
            api_error_set(err, 400, param, "Invalid type for '%s': expected a string.", param);
            goto fail;
        }
        cJSON *calls = NULL;
        if ((rc = message_tool_calls(m, role->valuestring, i, &calls, err))) goto rc_fail;
        const cJSON *call_id = field(m, "tool_call_id");
        if (call_id && !cJSON_IsString(call_id)) {
            cJSON_Delete(calls);
            snprintf(param, sizeof(param), "messages[%d].tool_call_id", i);
            api_error_set(err, 400, param, "Invalid type for '%s': expected a string.", param);
            goto fail;
        }
        cJSON *o = cJSON_CreateObject();
        if (!o || !cJSON_AddItemToArray(norm, o)) {
            cJSON_Delete(o);
            cJSON_Delete(calls);
            goto nomem;
        }
        if (calls && !cJSON_AddItemToObject(o, "tool_calls", calls)) {
            cJSON_Delete(calls);
            goto nomem;
        }
        if (!cJSON_AddStringToObject(o, "role", role->valuestring) || !cJSON_AddStringToObject(o, "content", content) ||
            (name && !cJSON_AddStringToObject(o, "name", name->valuestring)) ||
            (call_id && !cJSON_AddStringToObject(o, "tool_call_id", call_id->valuestring)))
            goto nomem;
        free(content);
        content = NULL;
        i++;
    }
    *out = norm;
    return 0;
rc_fail:
    if (rc == -1) goto fail;
nomem:
    api_error_set(err, 500, NULL, "Out of memory.");
fail:
    free(content);
    cJSON_Delete(norm);
    return -1;
}

/* completions' prompt: a string, a list of ids, or a list of one of those. */
static int parse_prompt(const cJSON *root, api_request *r, api_error *err) {
    const cJSON *p = field(root, "prompt");
    if (!p) {
        api_error_set(err, 400, "prompt", "Missing required parameter: 'prompt'.");
        return -1;
    }
    if (cJSON_IsArray(p) && cJSON_GetArraySize(p) >= 1 &&
        (cJSON_IsString(p->child) || cJSON_IsArray(p->child))) {
        if (cJSON_GetArraySize(p) > 1) return unsupported(err, "prompt", "more than one prompt per request");
        p = p->child;
    }
    if (cJSON_IsString(p)) {
        if (!(r->prompt_text = strdup(p->valuestring))) {
            api_error_set(err, 500, NULL, "Out of memory.");
            return -1;
        }
        return 0;
    }
    if (cJSON_IsArray(p)) return parse_ids(p, "prompt", &r->prompt_ids, &r->n_prompt_ids, err);
    api_error_set(err, 400, "prompt", "Invalid type for 'prompt': expected a string or a list of token ids.");
    return -1;
}

static int parse_stop(const cJSON *root, api_request *r, api_error *err) {
    const cJSON *s = field(root, "stop");
    if (!s) return 0;
    if (cJSON_IsString(s)) {
        if (!s->valuestring[0]) return 0; /* "" stops nothing */
        if (!(r->stop[0] = strdup(s->valuestring))) goto nomem;
        r->n_stop = 1;
        return 0;
    }
    if (!cJSON_IsArray(s)) {
        api_error_set(err, 400, "stop", "Invalid type for 'stop': expected a string or a list of strings.");
        return -1;
    }
    if (cJSON_GetArraySize(s) > ENGINE_MAX_STOP) {
        api_error_set(err, 400, "stop", "'stop' may hold at most %d strings.", ENGINE_MAX_STOP);
        return -1;
    }
    const cJSON *x;
    cJSON_ArrayForEach(x, s) {
        if (!cJSON_IsString(x)) {
            api_error_set(err, 400, "stop", "Invalid type for 'stop': expected a string or a list of strings.");
            return -1;
        }
        if (!x->valuestring[0]) {
            api_error_set(err, 400, "stop", "Invalid value for 'stop': stop strings must not be empty.");
            return -1;
        }
        if (!(r->stop[r->n_stop] = strdup(x->valuestring))) goto nomem;
        r->n_stop++;
    }
    return 0;
nomem:
    api_error_set(err, 500, NULL, "Out of memory.");
    return -1;
}

static int parse_logit_bias(const cJSON *root, api_request *r, api_error *err) {
    const cJSON *b = field(root, "logit_bias");
    if (!b) return 0;
    if (!cJSON_IsObject(b)) {
        api_error_set(err, 400, "logit_bias", "Invalid type for 'logit_bias': expected an object of token id -> bias.");
        return -1;
    }
    int count = cJSON_GetArraySize(b);
    if (count > MAX_BIAS) {
        api_error_set(err, 400, "logit_bias", "'logit_bias' may hold at most %d entries.", MAX_BIAS);
        return -1;
    }
    if (!count) return 0;
    r->bias_ids = malloc((size_t)count * sizeof(int32_t));
    r->bias_vals = malloc((size_t)count * sizeof(float));
    if (!r->bias_ids || !r->bias_vals) {
        api_error_set(err, 500, NULL, "Out of memory.");
        return -1;
    }
    const cJSON *x;
    cJSON_ArrayForEach(x, b) {
        const char *k = x->string;
        char *end = NULL;
        long id = -1;
        if (k && *k >= '0' && *k <= '9' && strlen(k) <= 10) id = strtol(k, &end, 10);
        if (id < 0 || id > INT32_MAX || !end || *end) {
            api_error_set(err, 400, "logit_bias", "Invalid key in 'logit_bias': expected a token id, got '%.40s'.", k ? k : "");
            return -1;
        }
        if (!cJSON_IsNumber(x) || !(x->valuedouble >= -100 && x->valuedouble <= 100)) {
            api_error_set(err, 400, "logit_bias", "Invalid value in 'logit_bias': biases must be numbers in [-100, 100].");
            return -1;
        }
        r->bias_ids[r->n_bias] = (int32_t)id;
        r->bias_vals[r->n_bias] = (float)x->valuedouble;
        r->n_bias++;
    }
    return 0;
}

/* chat's tools, [{"type": "function", "function": {"name", ["description"],
 * ["parameters"]}}], kept as given for the chat template, unless tool_choice
 * is "none". tool_choice "auto" (the default) lets the model choose;
 * "required" (one call or more; one with parallel_tool_calls false) and a
 * named function (one call of it) constrain the output to calls of the
 * allowed tools with their parameter schemas: structured output of kind
 * API_STRUCT_TOOL_CALLS, whose text is {"max": 0 or 1, "tools": [{"index",
 * "name", ["parameters"]}]} (index: the tool's place in 'tools'). */
#define MAX_TOOLS 256

static int forced_tools(const cJSON *tools, const char *name, bool parallel, api_request *r, api_error *err) {
    if (r->structured) {
        api_error_set(err, 400, "tool_choice",
                      "'tool_choice' \"required\" or a named function cannot be combined with 'response_format' "
                      "(json_schema or json_object), 'guided_*' or 'structured_outputs'.");
        return -1;
    }
    cJSON *src = cJSON_CreateObject(), *list = cJSON_AddArrayToObject(src, "tools");
    cJSON_AddNumberToObject(src, "max", name || !parallel ? 1 : 0);
    const cJSON *t;
    int i = 0, n = 0;
    cJSON_ArrayForEach(t, tools) {
        const cJSON *fn = field(t, "function"), *params = field(fn, "parameters");
        const char *tn = field(fn, "name")->valuestring;
        if (!name || !strcmp(name, tn)) {
            cJSON *x = cJSON_CreateObject();
            cJSON_AddItemToArray(list, x);
            cJSON_AddNumberToObject(x, "index", i);
            cJSON_AddStringToObject(x, "name", tn);
            if (params) cJSON_AddItemToObject(x, "parameters", cJSON_Duplicate(params, true));
            n++;
        }
        i++;
    }
    if (n == 0) {
        cJSON_Delete(src);
        api_error_set(err, 400, "tool_choice", "'tool_choice' names the function '%.64s', which is not in 'tools'.", name);
        return -1;
    }
    char *text = cJSON_PrintUnformatted(src);
    cJSON_Delete(src);
    if (!text) {
        api_error_set(err, 500, NULL, "Out of memory.");
        return -1;
    }
    r->structured = API_STRUCT_TOOL_CALLS;
    r->structured_src = text;
    r->structured_param = "tool_choice";
    return 0;
}

static int parse_tools(cJSON *root, api_request *r, api_error *err) {
    cJSON *tools = field(root, "tools");
    const cJSON *choice = field(root, "tool_choice"), *v;
    const char *mode = "auto", *name = NULL;
    if (cJSON_IsString(choice)) mode = choice->valuestring;
    const cJSON *fn = cJSON_IsObject(choice) ? field(choice, "function") : NULL, *type = field(choice, "type");
    if (cJSON_IsObject(choice) && cJSON_IsString(type) && !strcmp(type->valuestring, "function") &&
        cJSON_IsString(field(fn, "name")))
        mode = "named", name = field(fn, "name")->valuestring;
    if ((choice && !cJSON_IsString(choice) && !name) ||
        (strcmp(mode, "none") && strcmp(mode, "auto") && strcmp(mode, "required") && !name)) {
        api_error_set(err, 400, "tool_choice",
                      "Invalid value for 'tool_choice': expected \"none\", \"auto\", \"required\" or {\"type\": "
                      "\"function\", \"function\": {\"name\": string}}.");
        return -1;
    }
    bool parallel = true;
    if ((v = field(root, "parallel_tool_calls")) && !cJSON_IsBool(v)) {
        api_error_set(err, 400, "parallel_tool_calls", "Invalid type for 'parallel_tool_calls': expected a boolean.");
        return -1;
    }
    if (v) parallel = cJSON_IsTrue(v);
    int count = !tools ? 0 : cJSON_IsArray(tools) ? cJSON_GetArraySize(tools) : -1;
    if (count < 0 || count > MAX_TOOLS) {
        api_error_set(err, 400, "tools", "'tools' must be an array of at most %d tools.", MAX_TOOLS);
        return -1;
    }
    const cJSON *t;
    int i = 0;
    cJSON_ArrayForEach(t, tools) {
        const cJSON *ty = cJSON_IsObject(t) ? field(t, "type") : NULL, *f = cJSON_IsObject(t) ? field(t, "function") : NULL;
        const cJSON *fname = cJSON_IsObject(f) ? field(f, "name") : NULL;
        const cJSON *desc = cJSON_IsObject(f) ? field(f, "description") : NULL;
        const cJSON *params = cJSON_IsObject(f) ? field(f, "parameters") : NULL;
        if (!cJSON_IsString(ty) || strcmp(ty->valuestring, "function") != 0 || !cJSON_IsString(fname) ||
            !fname->valuestring[0] || (desc && !cJSON_IsString(desc)) || (params && !cJSON_IsObject(params))) {
            char param[32];
            snprintf(param, sizeof(param), "tools[%d]", i);
            api_error_set(err, 400, param,
                          "Invalid '%s': expected {\"type\": \"function\", \"function\": {\"name\": string, "
                          "\"description\": string, \"parameters\": object}}.",
                          param);
            return -1;
        }
        i++;
    }
    bool forced = name || !strcmp(mode, "required");
    if (forced && count == 0) {
        api_error_set(err, 400, "tool_choice", "'tool_choice' %s needs 'tools'.",
                      name ? "naming a function" : "\"required\"");
        return -1;
    }
    if (count == 0 || !strcmp(mode, "none")) return 0;
    if (forced && forced_tools(tools, name, parallel, r, err)) return -1;
    r->tools = cJSON_DetachItemViaPointer(root, tools); /* the request owns it; the body is freed */
    return 0;
}

/* The fields this server refuses when they would change the result. */
static int refuse_unsupported(const cJSON *root, api_kind kind, api_error *err) {
    const cJSON *v;
    if (kind != API_CHAT && (v = field(root, "tools")) && !(cJSON_IsArray(v) && cJSON_GetArraySize(v) == 0))
        return unsupported(err, "tools", "tools are for /v1/chat/completions");
    if ((v = field(root, "functions")) && !(cJSON_IsArray(v) && cJSON_GetArraySize(v) == 0))
        return unsupported(err, "functions", "the legacy functions are not implemented: use 'tools'");
    if ((v = field(root, "function_call")) && !(cJSON_IsString(v) && !strcmp(v->valuestring, "none")))
        return unsupported(err, "function_call", "the legacy functions are not implemented: use 'tools'");
    if (kind == API_CHAT) {
        if ((v = field(root, "audio")) || ((v = field(root, "modalities")) && !(cJSON_IsArray(v) && cJSON_GetArraySize(v) == 1 && cJSON_IsString(v->child) && !strcmp(v->child->valuestring, "text"))))
            return unsupported(err, field(root, "audio") ? "audio" : "modalities", "only text output is implemented");
    } else {
        bool echo = false;
        if (get_bool(root, "echo", &echo, err) < 0) return -1;
        if (echo) return unsupported(err, "echo", "echoing the prompt is not implemented yet");
        char *suffix = NULL;
        int rc = get_string(root, "suffix", &suffix, err);
        bool has = suffix && suffix[0];
        free(suffix);
        if (rc < 0) return -1;
        if (has) return unsupported(err, "suffix", "insertion is not implemented");
        long long best_of = 1;
        if (get_int(root, "best_of", 1, 128, &best_of, err) < 0) return -1;
        if (best_of != 1) return unsupported(err, "best_of", "only best_of = 1 is implemented");
    }
    return 0;
}

/* ---- structured outputs ---- */

/* Records the request's structured output (src taken). One per request. */
static int set_structured(api_request *r, api_struct_kind kind, const char *param, char *src, api_error *err) {
    if (!src) {
        api_error_set(err, 500, NULL, "Out of memory.");
        return -1;
    }
    if (r->structured) {
        free(src);
        api_error_set(err, 400, param,
                      "Only one of 'response_format' (json_schema or json_object), 'guided_json', 'guided_regex', "
                      "'guided_choice', 'guided_grammar' and 'structured_outputs' may be given.");
        return -1;
    }
    r->structured = kind;
    r->structured_src = src;
    r->structured_param = param;
    return 0;
}

/* A JSON schema field (an object, true, or a string holding one) as compact JSON. */
static int structured_json(api_request *r, const cJSON *v, const char *param, api_error *err) {
    if (cJSON_IsString(v)) return set_structured(r, API_STRUCT_JSON_SCHEMA, param, strdup(v->valuestring), err);
    if (!cJSON_IsObject(v) && !cJSON_IsTrue(v)) {
        api_error_set(err, 400, param, "Invalid type for '%s': expected a JSON schema (an object).", param);
        return -1;
    }
    return set_structured(r, API_STRUCT_JSON_SCHEMA, param, cJSON_PrintUnformatted(v), err);
}

static int structured_string(api_request *r, const cJSON *v, api_struct_kind kind, const char *param, api_error *err) {
    if (!cJSON_IsString(v)) {
        api_error_set(err, 400, param, "Invalid type for '%s': expected a string.", param);
        return -1;
    }
    return set_structured(r, kind, param, strdup(v->valuestring), err);
}

static int structured_choice(api_request *r, const cJSON *v, const char *param, api_error *err) {
    const cJSON *x;
    bool ok = cJSON_IsArray(v) && cJSON_GetArraySize(v) > 0;
    cJSON_ArrayForEach(x, v) ok = ok && cJSON_IsString(x);
    if (!ok) {
        api_error_set(err, 400, param, "Invalid value for '%s': expected a non-empty list of strings.", param);
        return -1;
    }
    return set_structured(r, API_STRUCT_CHOICE, param, cJSON_PrintUnformatted(v), err);
}

/* response_format (text, json_object, json_schema), vLLM's guided_json,
 * guided_regex, guided_choice, guided_grammar and structured_outputs. */
static int parse_structured(const cJSON *root, api_request *r, api_error *err) {
    const cJSON *v, *x;
    if ((v = field(root, "response_format"))) {
        const cJSON *t = cJSON_IsObject(v) ? field(v, "type") : NULL;
        const char *type = cJSON_IsString(t) ? t->valuestring : "";
        if (!strcmp(type, "json_object")) {
            if (set_structured(r, API_STRUCT_JSON_OBJECT, "response_format", strdup(""), err)) return -1;
        } else if (!strcmp(type, "json_schema")) {
            const cJSON *js = field(v, "json_schema");
            if (!cJSON_IsObject(js) || ((x = field(js, "name")) && !cJSON_IsString(x)) ||
                ((x = field(js, "strict")) && !cJSON_IsBool(x))) {
                api_error_set(err, 400, "response_format.json_schema",
                              "Invalid value for 'response_format.json_schema': expected {\"name\": string, "
                              "\"schema\": object, \"strict\": boolean}.");
                return -1;
            }
            const cJSON *schema = field(js, "schema");
            if (schema ? structured_json(r, schema, "response_format.json_schema.schema", err)
                       : set_structured(r, API_STRUCT_JSON_SCHEMA, "response_format", strdup("{}"), err))
                return -1;
        } else if (strcmp(type, "text") != 0) {
            api_error_set(err, 400, "response_format",
                          "Invalid value for 'response_format': expected {\"type\": \"text\"}, {\"type\": "
                          "\"json_object\"} or {\"type\": \"json_schema\", \"json_schema\": {...}}.");
            return -1;
        }
    }
    if ((v = field(root, "guided_json")) && structured_json(r, v, "guided_json", err)) return -1;
    if ((v = field(root, "guided_regex")) && structured_string(r, v, API_STRUCT_REGEX, "guided_regex", err)) return -1;
    if ((v = field(root, "guided_choice")) && structured_choice(r, v, "guided_choice", err)) return -1;
    if ((v = field(root, "guided_grammar")) && structured_string(r, v, API_STRUCT_GRAMMAR, "guided_grammar", err)) return -1;
    if ((v = field(root, "structured_outputs"))) {
        if (!cJSON_IsObject(v)) {
            api_error_set(err, 400, "structured_outputs", "Invalid type for 'structured_outputs': expected an object.");
            return -1;
        }
        if ((x = field(v, "json")) && structured_json(r, x, "structured_outputs.json", err)) return -1;
        if ((x = field(v, "regex")) && structured_string(r, x, API_STRUCT_REGEX, "structured_outputs.regex", err)) return -1;
        if ((x = field(v, "choice")) && structured_choice(r, x, "structured_outputs.choice", err)) return -1;
        if ((x = field(v, "grammar")) && structured_string(r, x, API_STRUCT_GRAMMAR, "structured_outputs.grammar", err))
            return -1;
    }
    return 0;
}

int api_parse_request(api_kind kind, const char *body, size_t len, api_request *r, api_error *err) {
    memset(r, 0, sizeof(*r));
    r->kind = kind;
    r->max_tokens = -1;
    r->sampling = sampler_default_params();
    cJSON *root = parse_object(body, len, err);
    if (!root) return -1;

    double d;
    long long ll;
    int rc;
    char *user = NULL;
    if (get_string(root, "model", &r->model, err) < 0) goto fail;
    if (kind == API_CHAT ? parse_messages(root, &r->messages, err) : parse_prompt(root, r, err)) goto fail;
    if (refuse_unsupported(root, kind, err)) goto fail;
    if (parse_structured(root, r, err)) goto fail;
    if (kind == API_CHAT && parse_tools(root, r, err)) goto fail;
    if (get_int(root, "max_tokens", 1, 1 << 30, &ll, err) < 0) goto fail;
    if (field(root, "max_tokens")) r->max_tokens = (int)ll;
    if (get_int(root, "max_completion_tokens", 1, 1 << 30, &ll, err) < 0) goto fail;
    if (field(root, "max_completion_tokens")) r->max_tokens = (int)ll;
    if ((rc = get_int(root, "n", 1, API_MAX_N, &ll, err)) < 0) goto fail;
    r->n = rc ? (int)ll : 1;
    if (get_bool(root, "stream", &r->stream, err) < 0) goto fail;
    if (get_bool(root, "engram_gates", &r->engram_gates, err) < 0) goto fail;
    if (get_string(root, "cache_salt", &r->cache_salt, err) < 0) goto fail;
    if (r->cache_salt && (!r->cache_salt[0] || strlen(r->cache_salt) > API_MAX_CACHE_SALT)) {
        api_error_set(err, 400, "cache_salt", "'cache_salt' must be a non-empty string of at most %d bytes.",
                      API_MAX_CACHE_SALT);
        goto fail;
    }
    if (get_string(root, "engram_force", &r->force_text, err) < 0) goto fail;
    if (r->force_text && !r->force_text[0]) {
        api_error_set(err, 400, "engram_force", "'engram_force' must be a non-empty string.");
        goto fail;
    }
    /* logprobs: chat takes a boolean and top_logprobs, completions the number of alternatives */
    if (kind == API_CHAT) {
        long long tl = 0;
        if (get_bool(root, "logprobs", &r->logprobs, err) < 0) goto fail;
        if ((rc = get_int(root, "top_logprobs", 0, ENGINE_MAX_TOP_LOGPROBS, &tl, err)) < 0) goto fail;
        if (rc && tl > 0 && !r->logprobs) {
            api_error_set(err, 400, "top_logprobs", "'top_logprobs' needs 'logprobs' set to true.");
            goto fail;
        }
        r->top_logprobs = (int)tl;
    } else {
        long long lp = 0;
        if ((rc = get_int(root, "logprobs", 0, ENGINE_MAX_TOP_LOGPROBS, &lp, err)) < 0) goto fail;
        r->logprobs = rc > 0;
        r->top_logprobs = (int)lp;
    }
    if (r->engram_gates && r->stream) {
        api_error_set(err, 400, "engram_gates", "'engram_gates' is only available without 'stream'.");
        goto fail;
    }
    const cJSON *so = field(root, "stream_options");
    if (so) {
        if (!cJSON_IsObject(so)) {
            api_error_set(err, 400, "stream_options", "Invalid type for 'stream_options': expected an object.");
            goto fail;
        }
        if (!r->stream) {
            api_error_set(err, 400, "stream_options",
                          "The 'stream_options' parameter is only allowed when 'stream' is enabled.");
            goto fail;
        }
        if (get_bool(so, "include_usage", &r->include_usage, err) < 0) {
            snprintf(err->param, sizeof(err->param), "stream_options.include_usage");
            goto fail;
        }
    }
    sampler_params *sp = &r->sampling;
    if ((rc = get_number(root, "temperature", 0, 2, false, &d, err)) < 0) goto fail;
    if (rc) sp->temperature = (float)d;
    if ((rc = get_number(root, "top_p", 0, 1, true, &d, err)) < 0) goto fail;
    if (rc) sp->top_p = (float)d;
    if ((rc = get_int(root, "top_k", -1, INT32_MAX, &ll, err)) < 0) goto fail;
    if (rc) sp->top_k = ll < 0 ? 0 : (int)ll;
    if ((rc = get_number(root, "min_p", 0, 1, false, &d, err)) < 0) goto fail;
    if (rc) sp->min_p = (float)d;
    if ((rc = get_number(root, "presence_penalty", -2, 2, false, &d, err)) < 0) goto fail;
    if (rc) sp->presence_penalty = (float)d;
    if ((rc = get_number(root, "frequency_penalty", -2, 2, false, &d, err)) < 0) goto fail;
    if (rc) sp->frequency_penalty = (float)d;
    if ((rc = get_number(root, "repetition_penalty", 0, 10, true, &d, err)) < 0) goto fail;
    if (rc) sp->repetition_penalty = (float)d;
    if ((rc = get_int(root, "seed", -0x1p63, 0x1p63, &ll, err)) < 0) goto fail; /* int64: the bound is exclusive above */
    if (rc) {
        sp->seed = (uint64_t)ll;
        r->has_seed = true;
    }
    if (get_bool(root, "ignore_eos", &r->ignore_eos, err) < 0) goto fail;
    if (parse_stop(root, r, err)) goto fail;
    if (parse_logit_bias(root, r, err)) goto fail;
    if (get_string(root, "user", &user, err) < 0) goto fail;
    free(user);
    cJSON_Delete(root);
    return 0;
fail:
    cJSON_Delete(root);
    api_request_free(r);
    return -1;
}

void api_request_free(api_request *r) {
    free(r->model);
    free(r->prompt_text);
    free(r->prompt_ids);
    cJSON_Delete(r->messages);
    cJSON_Delete(r->tools);
    free(r->force_text);
    free(r->structured_src);
    free(r->cache_salt);
    for (int i = 0; i < r->n_stop; i++) free(r->stop[i]);
    free(r->bias_ids);
    free(r->bias_vals);
    api_kind kind = r->kind;
    memset(r, 0, sizeof(*r));
    r->kind = kind;
}

int api_parse_tokenize(const char *body, size_t len, api_tokenize *t, api_error *err) {
    memset(t, 0, sizeof(*t));
    cJSON *root = parse_object(body, len, err);
    if (!root) return -1;
    if (get_string(root, "model", &t->model, err) < 0) goto fail;
    bool has_prompt = field(root, "prompt") != NULL, has_msgs = field(root, "messages") != NULL;
    if (has_prompt == has_msgs) {
        api_error_set(err, 400, "prompt", "Exactly one of 'prompt' and 'messages' is required.");
        goto fail;
    }
    if (has_prompt && get_string(root, "prompt", &t->prompt_text, err) < 0) goto fail;
    if (has_msgs && parse_messages(root, &t->messages, err)) goto fail;
    t->add_special = has_prompt;
    if (get_bool(root, "add_special_tokens", &t->add_special, err) < 0) goto fail;
    cJSON_Delete(root);
    return 0;
fail:
    cJSON_Delete(root);
    api_tokenize_free(t);
    return -1;
}

void api_tokenize_free(api_tokenize *t) {
    free(t->model);
    free(t->prompt_text);
    cJSON_Delete(t->messages);
    memset(t, 0, sizeof(*t));
}

int api_parse_detokenize(const char *body, size_t len, api_detokenize *d, api_error *err) {
    memset(d, 0, sizeof(*d));
    cJSON *root = parse_object(body, len, err);
    if (!root) return -1;
    if (get_string(root, "model", &d->model, err) < 0) goto fail;
    const cJSON *tokens = field(root, "tokens");
    if (!tokens) {
        api_error_set(err, 400, "tokens", "Missing required parameter: 'tokens'.");
        goto fail;
    }
    if (!cJSON_IsArray(tokens)) {
        api_error_set(err, 400, "tokens", "Invalid type for 'tokens': expected a list of token ids.");
        goto fail;
    }
    if (cJSON_GetArraySize(tokens) > 0 && parse_ids(tokens, "tokens", &d->ids, &d->n_ids, err)) goto fail;
    cJSON_Delete(root);
    return 0;
fail:
    cJSON_Delete(root);
    api_detokenize_free(d);
    return -1;
}

void api_detokenize_free(api_detokenize *d) {
    free(d->model);
    free(d->ids);
    memset(d, 0, sizeof(*d));
}
