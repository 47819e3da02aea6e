/* JSON Schema to GBNF: each schema becomes a GBNF expression (objects and
 * arrays get rules of their own, each $ref target one rule, so recursion is
 * rule recursion), over the fixed JSON rules below. Objects list their
 * required properties first, then the optional ones, in schema order. Every
 * keyword is either compiled, an annotation that changes nothing, or refused
 * with an error naming it: never ignored silently. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "base/err.h"
#include "base/utf8.h"
#include "grammar/grammar_internal.h"

#define MAX_REFS 4096   /* distinct $ref targets */
#define MAX_ENUM_INT 256 /* an integer range [minimum, maximum] is listed when this small */

/* Whitespace: none, one space, or a newline and up to 16 spaces of indent. */
static const char json_rules[] =
    "ws ::= (\" \" | \"\\n\" \" \"{0,16})?\n"
    "jstr ::= \"\\\"\" jchar* \"\\\"\"\n"
    "jchar ::= [^\"\\\\\\x00-\\x1F] | \"\\\\\" ([\"\\\\/bfnrt] | \"u\" [0-9a-fA-F]{4})\n"
    "jint ::= \"-\"? (\"0\" | [1-9] [0-9]{0,15})\n"
    "juint ::= \"0\" | [1-9] [0-9]{0,15}\n"
    "jfrac ::= (\".\" [0-9]{1,16})? ([eE] [-+]? [0-9]{1,3})?\n"
    "jnum ::= jint jfrac\n"
    "junum ::= juint jfrac\n"
    "jbool ::= \"true\" | \"false\"\n"
    "jnull ::= \"null\"\n"
    "jvalue ::= jobject | jarray | jstr | jnum | jbool | jnull\n"
    "jmember ::= jstr ws \":\" ws jvalue ws\n"
    "jobject ::= \"{\" ws (jmember (\",\" ws jmember)*)? \"}\"\n"
    "jarray ::= \"[\" ws (jvalue ws (\",\" ws jvalue ws)*)? \"]\"\n";

typedef struct {
    const cJSON *root;
    const char *pre; /* prefix of the rule names made (several schemas in one grammar) */
    strbuf rules;  /* the rules made so far */
    const cJSON *ref_node[MAX_REFS];
    int n_refs, n_rules;
    int status;
    char *err;
    size_t errlen;
    const cJSON *checked; /* a schema with a type list whose keywords gen checked against all its types */
} sc;

static int sc_fail(sc *c, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int sc_fail(sc *c, int status, const char *fmt, ...) {
    if (c->status == GRAMMAR_OK) {
        char msg[256];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        err_set(c->err, c->errlen, status, "JSON schema: %s", msg);
        grammar__scrub(c->err);
        c->status = status;
    }
    return -1;
}

static int add(sc *c, strbuf *b, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int add(sc *c, strbuf *b, const char *fmt, ...) {
    char tmp[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0 || n >= (int)sizeof(tmp) || strbuf_add(b, tmp, (size_t)n)) return sc_fail(c, GRAMMAR_ERR_NOMEM, "out of memory");
    if (b->len + c->rules.len > GRAMMAR_MAX_TEXT) return sc_fail(c, GRAMMAR_ERR_LIMIT, "the grammar would be larger than %d bytes", GRAMMAR_MAX_TEXT);
    return 0;
}

static int add_buf(sc *c, strbuf *b, const char *s, size_t n) {
    if (strbuf_add(b, s, n)) return sc_fail(c, GRAMMAR_ERR_NOMEM, "out of memory");
    if (b->len + c->rules.len > GRAMMAR_MAX_TEXT) return sc_fail(c, GRAMMAR_ERR_LIMIT, "the grammar would be larger than %d bytes", GRAMMAR_MAX_TEXT);
    return 0;
}

/* The JSON text of v (compact) as a GBNF literal. */
static int add_json_literal(sc *c, strbuf *b, const cJSON *v) {
    char *s = cJSON_PrintUnformatted(v);
    if (!s) return sc_fail(c, GRAMMAR_ERR_NOMEM, "out of memory");
    int rc = grammar__gbnf_literal(b, s, strlen(s)) ? sc_fail(c, GRAMMAR_ERR_NOMEM, "out of memory") : 0;
    free(s);
    return rc;
}

/* A new rule `name ::= body` (body taken). Writes its name into b. */
static int new_rule(sc *c, strbuf *b, strbuf *body) {
    int id = c->n_rules++;
    int rc = add(c, &c->rules, "%ss%d ::= ", c->pre, id) ||
             add_buf(c, &c->rules, body->s ? body->s : "\"\"", body->s ? body->len : 2) || add(c, &c->rules, "\n") ||
             add(c, b, "%ss%d", c->pre, id);
    strbuf_free(body);
    return rc ? -1 : 0;
}

static int gen(sc *c, const cJSON *s, strbuf *b, int depth);

static const char *const annotations[] = {"title", "description", "default", "examples", "$schema", "$id", "$comment",
                                          "deprecated", "readOnly", "writeOnly", "$defs", "definitions", "strict",
                                          "example", "$anchor", NULL};

static bool in_list(const char *k, const char *const *list) {
    for (int i = 0; list[i]; i++)
        if (!strcmp(k, list[i])) return true;
    return false;
}

/* The keywords each type takes (with "type", "enum" and "const"). */
static const char *const kw_string[] = {"type", "minLength", "maxLength", "pattern", "format", "enum", "const", NULL};
static const char *const kw_number[] = {"type", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
                                        "enum", "const", NULL};
static const char *const kw_array[] = {"type", "items", "minItems", "maxItems", "enum", "const", NULL};
static const char *const kw_object[] = {"type", "properties", "required", "additionalProperties", "enum", "const",
                                        NULL};
static const char *const kw_plain[] = {"type", "enum", "const", NULL}; /* boolean, null */

static const char *const *type_keywords(const char *type) {
    if (!strcmp(type, "string")) return kw_string;
    if (!strcmp(type, "integer") || !strcmp(type, "number")) return kw_number;
    if (!strcmp(type, "array")) return kw_array;
    if (!strcmp(type, "object")) return kw_object;
    return kw_plain;
}

/* Refuses any keyword of s outside ok (and the annotations); s of a type
 * list was checked against all its types already (gen). */
static int check_keywords(sc *c, const cJSON *s, const char *const *ok) {
    if (s == c->checked) return 0;
    const cJSON *k;
    cJSON_ArrayForEach(k, s) {
        if (in_list(k->string, annotations) || in_list(k->string, ok)) continue;
        if (!strcmp(k->string, "uniqueItems") && cJSON_IsFalse(k)) continue;
        return sc_fail(c, GRAMMAR_ERR_UNSUPPORTED, "unsupported keyword '%.60s'", k->string);
    }
    return 0;
}

static const cJSON *get(const cJSON *s, const char *k) { return cJSON_GetObjectItemCaseSensitive(s, k); }

/* A count keyword (minItems, maxLength, ...): -1 when absent. */
static long count_kw(sc *c, const cJSON *s, const char *k) {
    const cJSON *v = get(s, k);
    if (!v) return -1;
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble != floor(v->valuedouble))
        return sc_fail(c, GRAMMAR_ERR_INVALID, "'%s' must be a non-negative integer", k), -2;
    if (v->valuedouble > GRAMMAR_MAX_REPEAT)
        return sc_fail(c, GRAMMAR_ERR_LIMIT, "'%s' over %d is not supported", k, GRAMMAR_MAX_REPEAT), -2;
    return (long)v->valuedouble;
}

/* `x{lo,hi}` suffix for counts (hi < 0: unbounded). */
static int add_rep(sc *c, strbuf *b, long lo, long hi) {
    if (hi < 0) return lo == 0 ? add(c, b, "*") : lo == 1 ? add(c, b, "+") : add(c, b, "{%ld,}", lo);
    return add(c, b, "{%ld,%ld}", lo, hi);
}

/* The target of a local $ref: "#", "#/$defs/x", any JSON pointer into the root. */
static const cJSON *resolve(sc *c, const char *ref) {
    if (ref[0] != '#') return sc_fail(c, GRAMMAR_ERR_UNSUPPORTED, "'$ref' to '%.60s': only local references (#/...) are supported", ref), NULL;
    const cJSON *n = c->root;
    const char *p = ref + 1;
    while (*p == '/') {
        p++;
        char seg[256];
        size_t k = 0;
        for (; *p && *p != '/'; p++) {
            char ch = *p;
            if (ch == '~' && (p[1] == '0' || p[1] == '1')) ch = *++p == '0' ? '~' : '/';
            if (k + 1 >= sizeof(seg)) return sc_fail(c, GRAMMAR_ERR_INVALID, "'$ref' segment too long"), NULL;
            seg[k++] = ch;
        }
        seg[k] = 0;
        n = cJSON_IsArray(n) ? cJSON_GetArrayItem(n, atoi(seg)) : cJSON_IsObject(n) ? get(n, seg) : NULL;
        if (!n) return sc_fail(c, GRAMMAR_ERR_INVALID, "'$ref' '%.60s' points to nothing", ref), NULL;
    }
    if (*p) return sc_fail(c, GRAMMAR_ERR_INVALID, "'$ref' '%.60s' is not a JSON pointer", ref), NULL;
    return n;
}

static int gen_ref(sc *c, const cJSON *s, strbuf *b) {
    const cJSON *r = get(s, "$ref");
    if (!cJSON_IsString(r)) return sc_fail(c, GRAMMAR_ERR_INVALID, "'$ref' must be a string");
    for (const cJSON *k = s->child; k; k = k->next)
        if (strcmp(k->string, "$ref") && !in_list(k->string, annotations))
            return sc_fail(c, GRAMMAR_ERR_UNSUPPORTED, "keyword '%.60s' beside '$ref'", k->string);
    const cJSON *t = resolve(c, r->valuestring);
    if (!t) return -1;
    for (int i = 0; i < c->n_refs; i++)
        if (c->ref_node[i] == t) return add(c, b, "%sr%d", c->pre, i);
    if (c->n_refs >= MAX_REFS) return sc_fail(c, GRAMMAR_ERR_LIMIT, "more than %d '$ref' targets", MAX_REFS);
    int id = c->n_refs++;
    c->ref_node[id] = t; /* before its body: a recursive reference finds it */
    strbuf body = {0};
    if (gen(c, t, &body, 0)) {
        strbuf_free(&body);
        return -1;
    }
    int rc = add(c, &c->rules, "%sr%d ::= ", c->pre, id) || add_buf(c, &c->rules, body.s, body.len) ||
             add(c, &c->rules, "\n");
    strbuf_free(&body);
    return rc ? -1 : add(c, b, "%sr%d", c->pre, id);
}

static int gen_string(sc *c, const cJSON *s, strbuf *b) {
    if (check_keywords(c, s, kw_string)) return -1;
    long lo = count_kw(c, s, "minLength"), hi = count_kw(c, s, "maxLength");
    if (lo == -2 || hi == -2) return -1;
    const cJSON *pat = get(s, "pattern"), *fmt = get(s, "format");
    static const char *const formats[][2] = {
        {"date", "[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"},
        {"time", "([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,6})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])"},
        {"date-time", "[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,6})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])"},
        {"uuid", "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"},
        {"email", "[a-zA-Z0-9._%+-]{1,64}@[a-zA-Z0-9-]{1,63}(\\.[a-zA-Z0-9-]{1,63}){0,4}\\.[a-zA-Z]{2,24}"},
        {"ipv4", "((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"},
    };
    const char *re = NULL;
    if (fmt) {
        if (!cJSON_IsString(fmt)) return sc_fail(c, GRAMMAR_ERR_INVALID, "'format' must be a string");
        for (size_t i = 0; i < sizeof(formats) / sizeof(formats[0]); i++)
            if (!strcmp(fmt->valuestring, formats[i][0])) re = formats[i][1];
        if (!re) return sc_fail(c, GRAMMAR_ERR_UNSUPPORTED, "unsupported keyword 'format' value '%.40s'", fmt->valuestring);
    }
    if (pat) {
        if (!cJSON_IsString(pat)) return sc_fail(c, GRAMMAR_ERR_INVALID, "'pattern' must be a string");
        if (re) return sc_fail(c, GRAMMAR_ERR_UNSUPPORTED, "'pattern' together with 'format'");
        re = pat->valuestring;
    }
    if (re && (lo >= 0 || hi >= 0))
        return sc_fail(c, GRAMMAR_ERR_UNSUPPORTED, "'%s' together with 'minLength'/'maxLength'", pat ? "pattern" : "format");
    if (re) {
        char *expr = NULL, err[200];
        int rc = grammar_regex_to_gbnf(re, strlen(re), true, &expr, err, sizeof(err));
        if (rc) return sc_fail(c, rc, "'%s': %s", pat ? "pattern" : "format", err);
        rc = add(c, b, "\"\\\"\" ") || add_buf(c, b, expr, strlen(expr)) || add(c, b, " \"\\\"\"");
        free(expr);
        return rc;
    }
    if (lo < 0 && hi < 0) return add(c, b, "jstr");
    if (hi >= 0 && lo > hi) return sc_fail(c, GRAMMAR_ERR_INVALID, "'minLength' > 'maxLength'");
    return add(c, b, "\"\\\"\" jchar") || add_rep(c, b, lo < 0 ? 0 : lo, hi) || add(c, b, " \"\\\"\"");
}

/* A number keyword's value, when present (1), absent (0) or bad (-1). */
static int num_kw(sc *c, const cJSON *s, const char *k, double *v) {
    const cJSON *x = get(s, k);
    if (!x) return 0;
    if (!cJSON_IsNumber(x)) return sc_fail(c, GRAMMAR_ERR_INVALID, "'%s' must be a number", k);
    *v = x->valuedouble;
    return 1;
}

/* integer and number, with the bounds that are cheap to express exactly:
 * a lower bound of 0 (no minus sign), and small integer ranges (listed). */
static int gen_number(sc *c, const cJSON *s, strbuf *b, bool integer) {
    if (check_keywords(c, s, kw_number)) return -1;
    double lo = 0, hi = 0, xlo = 0, xhi = 0;
    int hlo = num_kw(c, s, "minimum", &lo), hhi = num_kw(c, s, "maximum", &hi);
    int hxlo = num_kw(c, s, "exclusiveMinimum", &xlo), hxhi = num_kw(c, s, "exclusiveMaximum", &xhi);
    if (hlo < 0 || hhi < 0 || hxlo < 0 || hxhi < 0) return -1;
    if (integer) { /* exclusive integer bounds are inclusive ones moved by one */
        if (hxlo && (!hlo || floor(xlo) + 1 > lo)) lo = floor(xlo) + 1, hlo = 1;
        if (hxhi && (!hhi || ceil(xhi) - 1 < hi)) hi = ceil(xhi) - 1, hhi = 1;
        if (hlo) lo = ceil(lo);
        if (hhi) hi = floor(hi);
        if (hlo && hhi) {
            if (lo > hi) return sc_fail(c, GRAMMAR_ERR_INVALID, "'minimum' above 'maximum'");
            if (hi - lo < MAX_ENUM_INT) {
                if (add(c, b, "(")) return -1;
                for (double v = lo; v <= hi; v++)
                    if (add(c, b, "%s\"%.0f\"", v > lo ? " | " : "", v)) return -1;
                return add(c, b, ")");
            }
        }
        if (hhi) return sc_fail(c, GRAMMAR_ERR_UNSUPPORTED, "unsupported keyword 'maximum' (only with a 'minimum' less than %d below it)", MAX_ENUM_INT);
        if (hlo && lo > 0) return sc_fail(c, GRAMMAR_ERR_UNSUPPORTED, "unsupported keyword 'minimum' above 0 without 'maximum'");
        return add(c, b, hlo && lo >= 0 ? "juint" : "jint");
    }
    if (hhi || hxhi) return sc_fail(c, GRAMMAR_ERR_UNSUPPORTED, "unsupported keyword '%s' on a number", hhi ? "maximum" : "exclusiveMaximum");
    if (hxlo) return sc_fail(c, GRAMMAR_ERR_UNSUPPORTED, "unsupported keyword 'exclusiveMinimum' on a number");
    if (hlo && lo != 0) return sc_fail(c, GRAMMAR_ERR_UNSUPPORTED, "unsupported keyword 'minimum' other than 0 on a number");
    return add(c, b, hlo ? "junum" : "jnum");
}

static int gen_array(sc *c, const cJSON *s, strbuf *b, int depth) {
    if (check_keywords(c, s, kw_array)) return -1;
    long lo = count_kw(c, s, "minItems"), hi = count_kw(c, s, "maxItems");
    if (lo == -2 || hi == -2) return -1;
    if (lo < 0) lo = 0;
    if (hi >= 0 && lo > hi) return sc_fail(c, GRAMMAR_ERR_INVALID, "'minItems' > 'maxItems'");
    const cJSON *items = get(s, "items");
    strbuf item = {0}, body = {0};
    if (items && cJSON_IsArray(items)) return sc_fail(c, GRAMMAR_ERR_UNSUPPORTED, "'items' as an array (use prefixItems: not supported either)");
    if (items ? gen(c, items, &item, depth + 1) : add(c, &item, "jvalue")) goto fail;
    if (hi == 0) {
        if (add(c, &body, "\"[\" ws \"]\"")) goto fail;
    } else {
        if (add(c, &body, "\"[\" ws %s", lo == 0 ? "(" : "") || add_buf(c, &body, item.s, item.len) ||
            add(c, &body, " ws (\",\" ws ") || add_buf(c, &body, item.s, item.len) || add(c, &body, " ws)") ||
            add_rep(c, &body, lo > 0 ? lo - 1 : 0, hi < 0 ? -1 : hi - 1) || add(c, &body, "%s \"]\"", lo == 0 ? ")?" : ""))
            goto fail;
    }
    strbuf_free(&item);
    return new_rule(c, b, &body);
fail:
    strbuf_free(&item);
    strbuf_free(&body);
    return -1;
}

/* `"key" ws ":" ws V ws` of property k into b. */
static int gen_member(sc *c, const cJSON *k, strbuf *b, int depth) {
    cJSON *key = cJSON_CreateString(k->string);
    if (!key) return sc_fail(c, GRAMMAR_ERR_NOMEM, "out of memory");
    int rc = add_json_literal(c, b, key);
    cJSON_Delete(key);
    return rc || add(c, b, " ws \":\" ws ") || gen(c, k, b, depth + 1) || add(c, b, " ws") ? -1 : 0;
}

/* Objects: required properties first, then optional ones (each present or
 * not, in order); without properties, a map of additionalProperties. */
static int gen_object(sc *c, const cJSON *s, strbuf *b, int depth) {
    if (check_keywords(c, s, kw_object)) return -1;
    const cJSON *props = get(s, "properties"), *req = get(s, "required"), *addl = get(s, "additionalProperties"), *k;
    if (props && !cJSON_IsObject(props)) return sc_fail(c, GRAMMAR_ERR_INVALID, "'properties' must be an object");
    if (req && !cJSON_IsArray(req)) return sc_fail(c, GRAMMAR_ERR_INVALID, "'required' must be an array");
    cJSON_ArrayForEach(k, req) {
        if (!cJSON_IsString(k)) return sc_fail(c, GRAMMAR_ERR_INVALID, "'required' must list strings");
        if (!props || !get(props, k->valuestring))
            return sc_fail(c, GRAMMAR_ERR_UNSUPPORTED, "'required' names '%.60s', which is not in 'properties'", k->valuestring);
    }
    if (addl && !cJSON_IsBool(addl) && !cJSON_IsObject(addl))
        return sc_fail(c, GRAMMAR_ERR_INVALID, "'additionalProperties' must be a boolean or a schema");
    strbuf body = {0};
    if (!props || !props->child) { /* a map: additionalProperties (absent or true: any values) */
        if (addl && cJSON_IsFalse(addl)) {
            if (add(c, &body, "\"{\" ws \"}\"")) goto fail;
        } else {
            strbuf v = {0};
            if ((addl && cJSON_IsObject(addl) ? gen(c, addl, &v, depth + 1) : add(c, &v, "jvalue")) ||
                add(c, &body, "\"{\" ws (jstr ws \":\" ws ") || add_buf(c, &body, v.s, v.len) ||
                add(c, &body, " ws (\",\" ws jstr ws \":\" ws ") || add_buf(c, &body, v.s, v.len) || add(c, &body, " ws)*)? \"}\"")) {
                strbuf_free(&v);
                goto fail;
            }
            strbuf_free(&v);
        }
        return new_rule(c, b, &body);
    }
    int n_req = 0, n_opt = 0;
    cJSON_ArrayForEach(k, props) {
        bool r = false;
        const cJSON *q;
        cJSON_ArrayForEach(q, req) r |= !strcmp(q->valuestring, k->string);
        r ? n_req++ : n_opt++;
    }
    if (add(c, &body, "\"{\" ws")) goto fail;
    int i = 0;
    cJSON_ArrayForEach(k, props) { /* the required ones, in order */
        bool r = false;
        const cJSON *q;
        cJSON_ArrayForEach(q, req) r |= !strcmp(q->valuestring, k->string);
        if (!r) continue;
        if (add(c, &body, i++ ? " \",\" ws " : " ") || gen_member(c, k, &body, depth)) goto fail;
    }
    if (n_req > 0) { /* then each optional one, present or not: ("," ws member)? */
        cJSON_ArrayForEach(k, props) {
            bool r = false;
            const cJSON *q;
            cJSON_ArrayForEach(q, req) r |= !strcmp(q->valuestring, k->string);
            if (r) continue;
            if (add(c, &body, " (\",\" ws ") || gen_member(c, k, &body, depth) || add(c, &body, ")?")) goto fail;
        }
    } else if (n_opt > 0) { /* no required ones: o_i ::= m_i ("," ws o_{i+1})? | o_{i+1}, from the last */
        const cJSON *opt[512];
        if (n_opt > 512) {
            sc_fail(c, GRAMMAR_ERR_LIMIT, "more than 512 optional properties");
            goto fail;
        }
        int m = 0;
        cJSON_ArrayForEach(k, props) opt[m++] = k;
        int next = -1;
        for (int j = m - 1; j >= 0; j--) {
            strbuf rule = {0}, name = {0};
            if (gen_member(c, opt[j], &rule, depth) ||
                (next >= 0 && (add(c, &rule, " (\",\" ws %ss%d)? | %ss%d", c->pre, next, c->pre, next)))) {
                strbuf_free(&rule);
                goto fail;
            }
            next = c->n_rules;
            if (new_rule(c, &name, &rule)) {
                strbuf_free(&name);
                goto fail;
            }
            strbuf_free(&name);
        }
        if (add(c, &body, " %ss%d?", c->pre, next)) goto fail;
    }
    if (add(c, &body, " \"}\"")) goto fail;
    return new_rule(c, b, &body);
fail:
    strbuf_free(&body);
    return -1;
}

/* One of the types of a schema (type given or implied). */
static int gen_typed(sc *c, const cJSON *s, const char *type, strbuf *b, int depth) {
    if (!strcmp(type, "string")) return gen_string(c, s, b);
    if (!strcmp(type, "integer")) return gen_number(c, s, b, true);
    if (!strcmp(type, "number")) return gen_number(c, s, b, false);
    if (!strcmp(type, "object")) return gen_object(c, s, b, depth);
    if (!strcmp(type, "array")) return gen_array(c, s, b, depth);
    if (!strcmp(type, "boolean")) return check_keywords(c, s, kw_plain) ? -1 : add(c, b, "jbool");
    if (!strcmp(type, "null")) return check_keywords(c, s, kw_plain) ? -1 : add(c, b, "jnull");
    return sc_fail(c, GRAMMAR_ERR_INVALID, "unknown type '%.40s'", type);
}

static int gen_alternatives(sc *c, const cJSON *list, const char *kw, strbuf *b, int depth) {
    if (!cJSON_IsArray(list) || !list->child) return sc_fail(c, GRAMMAR_ERR_INVALID, "'%s' must be a non-empty array", kw);
    if (add(c, b, "(")) return -1;
    const cJSON *x;
    int i = 0;
    cJSON_ArrayForEach(x, list) {
        if ((i++ && add(c, b, " | ")) || gen(c, x, b, depth + 1)) return -1;
    }
    return add(c, b, ")");
}

static int gen(sc *c, const cJSON *s, strbuf *b, int depth) {
    if (depth > GRAMMAR_MAX_SCHEMA_DEPTH) return sc_fail(c, GRAMMAR_ERR_LIMIT, "schemas nested deeper than %d", GRAMMAR_MAX_SCHEMA_DEPTH);
    if (cJSON_IsTrue(s)) return add(c, b, "jvalue");
    if (!cJSON_IsObject(s)) return sc_fail(c, GRAMMAR_ERR_INVALID, "a schema must be an object or true");
    const cJSON *v;
    if (get(s, "$ref")) return gen_ref(c, s, b);
    if ((v = get(s, "const"))) {
        for (const cJSON *k = s->child; k; k = k->next)
            if (strcmp(k->string, "const") && strcmp(k->string, "type") && !in_list(k->string, annotations))
                return sc_fail(c, GRAMMAR_ERR_UNSUPPORTED, "keyword '%.60s' beside 'const'", k->string);
        return add_json_literal(c, b, v);
    }
    if ((v = get(s, "enum"))) {
        for (const cJSON *k = s->child; k; k = k->next)
            if (strcmp(k->string, "enum") && strcmp(k->string, "type") && !in_list(k->string, annotations))
                return sc_fail(c, GRAMMAR_ERR_UNSUPPORTED, "keyword '%.60s' beside 'enum'", k->string);
        if (!cJSON_IsArray(v) || !v->child) return sc_fail(c, GRAMMAR_ERR_INVALID, "'enum' must be a non-empty array");
        if (add(c, b, "(")) return -1;
        const cJSON *x;
        int i = 0;
        cJSON_ArrayForEach(x, v) {
            if ((i++ && add(c, b, " | ")) || add_json_literal(c, b, x)) return -1;
        }
        return add(c, b, ")");
    }
    if ((v = get(s, "anyOf")) || (v = get(s, "allOf"))) {
        const char *kw = v->string;
        for (const cJSON *k = s->child; k; k = k->next)
            if (strcmp(k->string, kw) && !in_list(k->string, annotations))
                return sc_fail(c, GRAMMAR_ERR_UNSUPPORTED, "keyword '%.60s' beside '%s'", k->string, kw);
        if (!strcmp(kw, "allOf") && cJSON_GetArraySize(v) != 1)
            return sc_fail(c, GRAMMAR_ERR_UNSUPPORTED, "unsupported keyword 'allOf' with more than one schema");
        return gen_alternatives(c, v, kw, b, depth);
    }
    const cJSON *type = get(s, "type");
    if (!type) { /* implied by the keywords, else any value */
        static const char *const ok[] = {NULL};
        if (get(s, "properties") || get(s, "required") || get(s, "additionalProperties")) return gen_object(c, s, b, depth);
        if (get(s, "items") || get(s, "minItems") || get(s, "maxItems")) return gen_array(c, s, b, depth);
        if (get(s, "minLength") || get(s, "maxLength") || get(s, "pattern") || get(s, "format")) return gen_string(c, s, b);
        return check_keywords(c, s, ok) ? -1 : add(c, b, "jvalue");
    }
    if (cJSON_IsString(type)) return gen_typed(c, s, type->valuestring, b, depth);
    if (!cJSON_IsArray(type) || !type->child) return sc_fail(c, GRAMMAR_ERR_INVALID, "'type' must be a string or a non-empty array");
    /* A type list (["string", "null"]: OpenAI's strict mode writes optional fields so): a keyword
     * applies to the values of its own type only, so each must belong to one of the listed types,
     * and each alternative takes its own type's and ignores the others'. */
    const cJSON *t, *k;
    cJSON_ArrayForEach(t, type)
        if (!cJSON_IsString(t)) return sc_fail(c, GRAMMAR_ERR_INVALID, "'type' must list strings");
    cJSON_ArrayForEach(k, s) {
        bool known = in_list(k->string, annotations) || (!strcmp(k->string, "uniqueItems") && cJSON_IsFalse(k));
        cJSON_ArrayForEach(t, type) known = known || in_list(k->string, type_keywords(t->valuestring));
        if (!known) return sc_fail(c, GRAMMAR_ERR_UNSUPPORTED, "unsupported keyword '%.60s'", k->string);
    }
    if (add(c, b, "(")) return -1;
    int i = 0;
    cJSON_ArrayForEach(t, type) {
        const cJSON *saved = c->checked;
        c->checked = s; /* for this alternative's own check; its children are other schemas */
        int rc = (i++ && add(c, b, " | ")) || gen_typed(c, s, t->valuestring, b, depth);
        c->checked = saved;
        if (rc) return -1;
    }
    return add(c, b, ")");
}

/* The schema (JSON text of len bytes) as GBNF: its rules, names starting
 * with pre, appended to rules, and the expression of its values to top (the
 * fixed JSON rules are the caller's to add). Returns GRAMMAR_OK or a status
 * with err set. */
static int schema_gbnf(const char *json, size_t len, const char *pre, strbuf *rules, strbuf *top, char *err,
                       size_t errlen) {
    if (len > GRAMMAR_MAX_TEXT) return err_set(err, errlen, GRAMMAR_ERR_LIMIT, "JSON schema: longer than %d bytes", GRAMMAR_MAX_TEXT);
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root) return err_set(err, errlen, GRAMMAR_ERR_SYNTAX, "JSON schema: not valid JSON");
    sc *c = calloc(1, sizeof(*c));
    if (!c) {
        cJSON_Delete(root);
        return err_set(err, errlen, GRAMMAR_ERR_NOMEM, "JSON schema: out of memory");
    }
    c->root = root, c->pre = pre, c->rules = *rules, c->err = err, c->errlen = errlen;
    gen(c, root, top, 0);
    *rules = c->rules;
    int rc = c->status;
    free(c);
    cJSON_Delete(root);
    return rc;
}

int grammar_json_schema_to_gbnf(const char *json, size_t len, char **out, char *err, size_t errlen) {
    *out = NULL;
    strbuf rules = {0}, top = {0};
    int rc = schema_gbnf(json, len, "", &rules, &top, err, errlen);
    if (!rc && (strbuf_add(&rules, "root ::= ", 9) || strbuf_add(&rules, top.s, top.len) || strbuf_add(&rules, "\n", 1) ||
                strbuf_add(&rules, json_rules, sizeof(json_rules) - 1)))
        rc = err_set(err, errlen, GRAMMAR_ERR_NOMEM, "JSON schema: out of memory");
    if (!rc) *out = strbuf_take(&rules);
    strbuf_free(&rules);
    strbuf_free(&top);
    return rc;
}

int grammar_compile_json_schema(const char *json, size_t len, grammar **out, char *err, size_t errlen) {
    *out = NULL;
    char *text = NULL;
    int rc = grammar_json_schema_to_gbnf(json, len, &text, err, errlen);
    if (rc) return rc;
    rc = grammar_compile_gbnf(text, strlen(text), out, err, errlen);
    free(text);
    return rc;
}

int grammar_compile_json_object(grammar **out, char *err, size_t errlen) {
    static const char schema[] = "{\"type\": \"object\"}";
    return grammar_compile_json_schema(schema, sizeof(schema) - 1, out, err, errlen);
}

int grammar_compile_wrapped_json(const grammar_wrapped_json *alts, int n, const char *sep, int max_items, int *bad,
                                 grammar **out, char *err, size_t errlen) {
    static const char no_params[] = "{\"type\": \"object\", \"additionalProperties\": false}";
    *out = NULL;
    *bad = -1;
    if (n < 1) return err_set(err, errlen, GRAMMAR_ERR_INVALID, "no alternatives");
    strbuf rules = {0}, item = {0};
    int rc = strbuf_add(&item, "item ::= ", 9) ? GRAMMAR_ERR_NOMEM : GRAMMAR_OK;
    for (int i = 0; i < n && !rc; i++) {
        char pre[24];
        snprintf(pre, sizeof(pre), "a%d-", i);
        const char *schema = alts[i].schema ? alts[i].schema : no_params;
        strbuf top = {0};
        rc = schema_gbnf(schema, strlen(schema), pre, &rules, &top, err, errlen);
        if (rc) {
            *bad = i;
        } else if ((i && strbuf_add(&item, " | ", 3)) || grammar__gbnf_literal(&item, alts[i].prefix, strlen(alts[i].prefix)) ||
                   strbuf_add(&item, " ", 1) || strbuf_add(&item, top.s, top.len) || strbuf_add(&item, " ", 1) ||
                   grammar__gbnf_literal(&item, alts[i].suffix, strlen(alts[i].suffix))) {
            rc = err_set(err, errlen, GRAMMAR_ERR_NOMEM, "out of memory");
        } else if (rules.len + item.len > GRAMMAR_MAX_TEXT) {
            rc = err_set(err, errlen, GRAMMAR_ERR_LIMIT, "the grammar would be larger than %d bytes", GRAMMAR_MAX_TEXT);
        }
        strbuf_free(&top);
    }
    /* root ::= item, then up to max_items - 1 more (or any number), each after sep */
    strbuf root = {0};
    char rep[32] = "*";
    if (max_items > 1) snprintf(rep, sizeof(rep), "{0,%d}", max_items - 1);
    if (!rc && (strbuf_add(&root, "root ::= item", 13) ||
                (max_items != 1 && (strbuf_add(&root, " (", 2) || grammar__gbnf_literal(&root, sep, strlen(sep)) ||
                                    strbuf_add(&root, " item)", 6) || strbuf_add(&root, rep, strlen(rep)))) ||
                strbuf_add(&root, "\n", 1) || strbuf_add(&root, item.s, item.len) || strbuf_add(&root, "\n", 1) ||
                strbuf_add(&root, rules.s ? rules.s : "", rules.len) || strbuf_add(&root, json_rules, sizeof(json_rules) - 1)))
        rc = err_set(err, errlen, GRAMMAR_ERR_NOMEM, "out of memory");
    if (!rc) rc = grammar_compile_gbnf(root.s, root.len, out, err, errlen);
    strbuf_free(&root), strbuf_free(&item), strbuf_free(&rules);
    return rc;
}
