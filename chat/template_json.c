/* Chat templates, JSON: tojson output (Python json.dumps), JSON text input
 * with Python json.loads semantics (the CLI's files), and cJSON trees as the
 * server's request has them, read as the old print-and-reparse path did. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "base/utf8.h"
#include "chat/template_internal.h"


static void json_str(env *e, sbuf *b, const char *s, size_t n, int ascii) {
    sb_putc(e, b, '"');
    size_t i = 0;
    while (i < n) {
        size_t k;
        int32_t c = tpl__u8_dec(s + i, n - i, &k);
        char buf[16];
        switch (c) {
        case '"': sb_puts(e, b, "\\\""); break;
        case '\\': sb_puts(e, b, "\\\\"); break;
        case '\n': sb_puts(e, b, "\\n"); break;
        case '\r': sb_puts(e, b, "\\r"); break;
        case '\t': sb_puts(e, b, "\\t"); break;
        case '\b': sb_puts(e, b, "\\b"); break;
        case '\f': sb_puts(e, b, "\\f"); break;
        default:
            if (c < 0x20 || (ascii && c > 0x7e)) {
                if (c >= 0x10000) {
                    int32_t v = c - 0x10000;
                    snprintf(buf, sizeof buf, "\\u%04x\\u%04x", (unsigned)(0xd800 | (v >> 10)),
                             (unsigned)(0xdc00 | (v & 0x3ff)));
                } else
                    snprintf(buf, sizeof buf, "\\u%04x", (unsigned)c);
                sb_puts(e, b, buf);
            } else
                tpl__sb_put(e, b, s + i, k);
        }
        i += k;
    }
    sb_putc(e, b, '"');
}

static void json_float(env *e, sbuf *b, double d) {
    char buf[64];
    if (isnan(d))
        sb_puts(e, b, "NaN");
    else if (isinf(d))
        sb_puts(e, b, d < 0 ? "-Infinity" : "Infinity");
    else {
        tpl__fmt_float(d, buf, sizeof buf);
        sb_puts(e, b, buf);
    }
}

static void json_nl(env *e, sbuf *b, const json_opts *o, int level) {
    sb_putc(e, b, '\n');
    for (int i = 0; i < level * o->indent; i++) sb_putc(e, b, ' ');
}

void tpl__json_dump(env *e, sbuf *b, value v, const json_opts *o, int level) {
    char buf[64];
    switch (v.t) { /* recursion bounded by CT_MAX_VALUE_DEPTH */
    case V_NONE: sb_puts(e, b, "null"); break;
    case V_BOOL: sb_puts(e, b, v.u.b ? "true" : "false"); break;
    case V_INT: tpl__sb_put_int(e, b, v.u.i); break;
    case V_FLOAT: json_float(e, b, v.u.f); break;
    case V_STR: json_str(e, b, v.u.s.p, v.u.s.n, o->ensure_ascii); break;
    case V_LIST:
        if (v.u.l->gen || v.u.l->is_range)
            tpl__env_fail(e, CHAT_TEMPLATE_ERR_RENDER, "Object of type %s is not JSON serializable", v.u.l->gen ? "generator" : "range");
        if (v.u.l->n == 0) {
            sb_puts(e, b, "[]");
            break;
        }
        sb_putc(e, b, '[');
        for (size_t i = 0; i < v.u.l->n; i++) {
            if (i) sb_puts(e, b, o->item_sep);
            if (o->indent >= 0) json_nl(e, b, o, level + 1);
            tpl__json_dump(e, b, v.u.l->v[i], o, level + 1);
        }
        if (o->indent >= 0) json_nl(e, b, o, level);
        sb_putc(e, b, ']');
        break;
    case V_DICT: {
        dict *d = v.u.d;
        if (d->n == 0) {
            sb_puts(e, b, "{}");
            break;
        }
        size_t *ord = tpl__xalloc(e, tpl__xmul(e, d->n, sizeof(size_t)));
        for (size_t i = 0; i < d->n; i++) ord[i] = i;
        if (o->sort_keys) {
            value *items = tpl__xalloc(e, tpl__xmul(e, d->n, sizeof(value))), *keys = tpl__xalloc(e, tpl__xmul(e, d->n, sizeof(value)));
            value *ti = tpl__xalloc(e, tpl__xmul(e, d->n, sizeof(value))), *tk = tpl__xalloc(e, tpl__xmul(e, d->n, sizeof(value)));
            for (size_t i = 0; i < d->n; i++) {
                items[i] = mk_int((int64_t)i);
                keys[i] = d->k[i];
            }
            tpl__merge_sort(e, items, keys, d->n, 0, ti, tk);
            for (size_t i = 0; i < d->n; i++) ord[i] = (size_t)items[i].u.i;
        }
        sb_putc(e, b, '{');
        for (size_t ii = 0; ii < d->n; ii++) {
            size_t i = ord[ii];
            if (ii) sb_puts(e, b, o->item_sep);
            if (o->indent >= 0) json_nl(e, b, o, level + 1);
            value k = d->k[i];
            switch (k.t) {
            case V_STR: json_str(e, b, k.u.s.p, k.u.s.n, o->ensure_ascii); break;
            case V_NONE: sb_puts(e, b, "\"null\""); break;
            case V_BOOL: sb_puts(e, b, k.u.b ? "\"true\"" : "\"false\""); break;
            case V_INT: snprintf(buf, sizeof buf, "\"%lld\"", (long long)k.u.i); sb_puts(e, b, buf); break;
            case V_FLOAT:
                sb_putc(e, b, '"');
                json_float(e, b, k.u.f);
                sb_putc(e, b, '"');
                break;
            default: tpl__env_fail(e, CHAT_TEMPLATE_ERR_RENDER, "keys must be str, int, float, bool or None");
            }
            sb_puts(e, b, o->key_sep);
            tpl__json_dump(e, b, d->v[i], o, level + 1);
        }
        if (o->indent >= 0) json_nl(e, b, o, level);
        sb_putc(e, b, '}');
        break;
    }
    case V_UNDEF: tpl__env_fail(e, CHAT_TEMPLATE_ERR_RENDER, "Object of type Undefined is not JSON serializable");
    default: tpl__env_fail(e, CHAT_TEMPLATE_ERR_RENDER, "object is not JSON serializable");
    }
}

/* ------------------------------------------------------------------ */
/* JSON input (Python json.loads semantics: int vs float, ordered dicts) */
/* ------------------------------------------------------------------ */

typedef struct {
    env *e;
    const char *s;
    size_t n, i;
    int depth;
} jparser;

static void jp_fail(jparser *p, const char *what) __attribute__((noreturn));
static void jp_fail(jparser *p, const char *what) {
    tpl__env_fail(p->e, CHAT_TEMPLATE_ERR_PARSE, "invalid JSON input: %s at offset %zu", what, p->i);
}
static void jp_ws(jparser *p) {
    while (p->i < p->n && (p->s[p->i] == ' ' || p->s[p->i] == '\t' || p->s[p->i] == '\n' || p->s[p->i] == '\r'))
        p->i++;
}
static int jp_hex4(jparser *p) {
    if (p->n - p->i < 4) jp_fail(p, "bad \\u escape");
    int v = 0;
    for (int k = 0; k < 4; k++) {
        char c = p->s[p->i++];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= c - '0';
        else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
        else jp_fail(p, "bad \\u escape");
    }
    return v;
}
static value jp_string(jparser *p) {
    sbuf b = {0};
    p->i++; /* opening quote */
    size_t run = p->i;
    for (;;) {
        if (p->i >= p->n) jp_fail(p, "unterminated string");
        unsigned char c = (unsigned char)p->s[p->i];
        if (c == '"') {
            tpl__sb_put(p->e, &b, p->s + run, p->i - run);
            p->i++;
            break;
        }
        if (c < 0x20) jp_fail(p, "control character in string");
        if (c != '\\') {
            p->i++;
            continue;
        }
        tpl__sb_put(p->e, &b, p->s + run, p->i - run);
        p->i++;
        if (p->i >= p->n) jp_fail(p, "unterminated string");
        char x = p->s[p->i++];
        char ch = 0;
        switch (x) {
        case '"': ch = '"'; break;
        case '\\': ch = '\\'; break;
        case '/': ch = '/'; break;
        case 'b': ch = '\b'; break;
        case 'f': ch = '\f'; break;
        case 'n': ch = '\n'; break;
        case 'r': ch = '\r'; break;
        case 't': ch = '\t'; break;
        case 'u': {
            int32_t cp = jp_hex4(p);
            if (cp >= 0xd800 && cp < 0xdc00) {
                if (p->n - p->i < 6 || p->s[p->i] != '\\' || p->s[p->i + 1] != 'u') jp_fail(p, "lone surrogate");
                p->i += 2;
                int lo = jp_hex4(p);
                if (lo < 0xdc00 || lo >= 0xe000) jp_fail(p, "lone surrogate");
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            } else if (cp >= 0xdc00 && cp < 0xe000)
                jp_fail(p, "lone surrogate");
            char buf[4];
            tpl__sb_put(p->e, &b, buf, (size_t)utf8_encode(cp, buf));
            break;
        }
        default: jp_fail(p, "bad escape");
        }
        if (ch) sb_putc(p->e, &b, ch);
        run = p->i;
    }
    if (!utf8_valid(b.p ? b.p : "", b.n)) jp_fail(p, "invalid UTF-8");
    return mk_sbuf(&b);
}
/* A number: an int unless it has a fraction or an exponent, as json.loads. */
static value jp_number(jparser *p) {
    size_t st = p->i;
    int isf = 0;
    if (p->s[p->i] == '-') p->i++;
    if (p->i >= p->n || p->s[p->i] < '0' || p->s[p->i] > '9') jp_fail(p, "bad number");
    if (p->s[p->i] == '0')
        p->i++;
    else
        while (p->i < p->n && p->s[p->i] >= '0' && p->s[p->i] <= '9') p->i++;
    if (p->i < p->n && p->s[p->i] == '.' && p->i + 1 < p->n && p->s[p->i + 1] >= '0' && p->s[p->i + 1] <= '9') {
        isf = 1;
        p->i++;
        while (p->i < p->n && p->s[p->i] >= '0' && p->s[p->i] <= '9') p->i++;
    }
    if (p->i < p->n && (p->s[p->i] == 'e' || p->s[p->i] == 'E')) {
        size_t save = p->i;
        p->i++;
        if (p->i < p->n && (p->s[p->i] == '+' || p->s[p->i] == '-')) p->i++;
        if (p->i < p->n && p->s[p->i] >= '0' && p->s[p->i] <= '9') {
            isf = 1;
            while (p->i < p->n && p->s[p->i] >= '0' && p->s[p->i] <= '9') p->i++;
        } else
            p->i = save;
    }
    char buf[64];
    size_t len = p->i - st;
    if (isf) {
        char *tmp = tpl__xstrndup(p->e, p->s + st, len);
        return mk_float(strtod(tmp, NULL));
    } else {
        if (len > 20) jp_fail(p, "integer too large (unsupported)");
        memcpy(buf, p->s + st, len);
        buf[len] = 0;
        errno = 0;
        long long x = strtoll(buf, NULL, 10);
        if (errno) jp_fail(p, "integer too large (unsupported)");
        return mk_int(x);
    }
}

static value jp_value(jparser *p) {
    jp_ws(p);
    if (p->i >= p->n) jp_fail(p, "unexpected end");
    if (++p->depth > 512) jp_fail(p, "nesting too deep");
    char c = p->s[p->i];
    value v;
    if (c == '{') {
        dict *d = tpl__dict_new(p->e);
        p->i++;
        jp_ws(p);
        if (p->i < p->n && p->s[p->i] == '}')
            p->i++;
        else
            for (;;) {
                jp_ws(p);
                if (p->i >= p->n || p->s[p->i] != '"') jp_fail(p, "expected a key");
                value k = jp_string(p);
                jp_ws(p);
                if (p->i >= p->n || p->s[p->i] != ':') jp_fail(p, "expected ':'");
                p->i++;
                value x = jp_value(p);
                tpl__dict_set(p->e, d, k, x);
                jp_ws(p);
                if (p->i < p->n && p->s[p->i] == ',') {
                    p->i++;
                    continue;
                }
                if (p->i < p->n && p->s[p->i] == '}') {
                    p->i++;
                    break;
                }
                jp_fail(p, "expected ',' or '}'");
            }
        v = mk_dict(d);
    } else if (c == '[') {
        list *l = tpl__list_new(p->e, 0);
        p->i++;
        jp_ws(p);
        if (p->i < p->n && p->s[p->i] == ']')
            p->i++;
        else
            for (;;) {
                tpl__list_push(p->e, l, jp_value(p));
                jp_ws(p);
                if (p->i < p->n && p->s[p->i] == ',') {
                    p->i++;
                    continue;
                }
                if (p->i < p->n && p->s[p->i] == ']') {
                    p->i++;
                    break;
                }
                jp_fail(p, "expected ',' or ']'");
            }
        v = mk_list(l);
    } else if (c == '"') {
        v = jp_string(p);
    } else if (p->n - p->i >= 4 && !memcmp(p->s + p->i, "true", 4)) {
        p->i += 4;
        v = mk_bool(1);
    } else if (p->n - p->i >= 5 && !memcmp(p->s + p->i, "false", 5)) {
        p->i += 5;
        v = mk_bool(0);
    } else if (p->n - p->i >= 4 && !memcmp(p->s + p->i, "null", 4)) {
        p->i += 4;
        v = mk_none();
    } else if (p->n - p->i >= 3 && !memcmp(p->s + p->i, "NaN", 3)) {
        p->i += 3;
        v = mk_float(NAN);
    } else if (p->n - p->i >= 8 && !memcmp(p->s + p->i, "Infinity", 8)) {
        p->i += 8;
        v = mk_float(INFINITY);
    } else if (p->n - p->i >= 9 && !memcmp(p->s + p->i, "-Infinity", 9)) {
        p->i += 9;
        v = mk_float(-INFINITY);
    } else if (c == '-' || (c >= '0' && c <= '9')) {
        v = jp_number(p);
    } else
        jp_fail(p, "unexpected character");
    p->depth--;
    return v;
}
/* Parses JSON text into values (Python json.loads semantics). */
value tpl__json_parse(env *e, const char *s, size_t n) {
    jparser p = {e, s, n, 0, 0};
    value v = jp_value(&p);
    jp_ws(&p);
    if (p.i != n) jp_fail(&p, "trailing data");
    return v;
}

/* ---- cJSON trees ---- */

/* The server used to print the request's cJSON tree and read the text back
 * with tpl__json_parse; reading the tree must give the same values. So:
 * a number is what cJSON prints for it, read as JSON text (an integral
 * double that fits an int prints as "%d", so 1.0 becomes the int 1; other
 * numbers print with 15 or 17 significant digits, so 1e15 is a float and
 * 3000000000 an int; a NaN or infinity prints as null); a string is its C
 * string (cJSON cuts at a NUL, as the printer did) and must be valid UTF-8;
 * duplicate keys keep the first key's place with the last value, as
 * json.loads; nesting is bounded as the text reader bounds it. */
static void cj_fail(env *e, const char *what) __attribute__((noreturn));
static void cj_fail(env *e, const char *what) {
    tpl__env_fail(e, CHAT_TEMPLATE_ERR_PARSE, "invalid JSON input: %s", what);
}

static value cj_string(env *e, const char *s) {
    sbuf b = {0};
    if (!s) s = "";
    size_t n = strlen(s);
    if (!utf8_valid(s, n)) cj_fail(e, "invalid UTF-8");
    tpl__sb_put(e, &b, s, n);
    return mk_sbuf(&b);
}

static value cj_number(env *e, const cJSON *j) {
    char buf[64];
    if (!cJSON_PrintPreallocated((cJSON *)j, buf, (int)sizeof buf, 0)) cj_fail(e, "unprintable number");
    return tpl__json_parse(e, buf, strlen(buf));
}

static value cj_value(env *e, const cJSON *j, int depth) {
    if (depth > 512) cj_fail(e, "nesting too deep");
    if (!j || cJSON_IsNull(j)) return mk_none();
    if (cJSON_IsBool(j)) return mk_bool(cJSON_IsTrue(j));
    if (cJSON_IsNumber(j)) return cj_number(e, j);
    if (cJSON_IsString(j)) return cj_string(e, j->valuestring);
    if (cJSON_IsRaw(j)) return j->valuestring ? tpl__json_parse(e, j->valuestring, strlen(j->valuestring)) : mk_none();
    const cJSON *c;
    if (cJSON_IsArray(j)) {
        list *l = tpl__list_new(e, 0);
        cJSON_ArrayForEach(c, j) tpl__list_push(e, l, cj_value(e, c, depth + 1));
        return mk_list(l);
    }
    if (!cJSON_IsObject(j)) cj_fail(e, "unexpected item type");
    dict *d = tpl__dict_new(e);
    cJSON_ArrayForEach(c, j) {
        value k = cj_string(e, c->string);
        tpl__dict_set(e, d, k, cj_value(e, c, depth + 1));
    }
    return mk_dict(d);
}

value tpl__json_from_cjson(env *e, const cJSON *j) { return cj_value(e, j, 1); }
