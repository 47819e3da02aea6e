/* Chat templates, filters and tests: the jinja2 builtin filters as a table
 * of {name, function} (names resolved at parse time) and the builtin tests
 * (is defined, is string, ...). */
#include <math.h>
#include <stdlib.h>

#include "chat/template_internal.h"

/* Builtin tests by name; the implemented ones come first (ids are indexes). */
static const char *const TESTS[] = {
    "defined", "undefined", "none", "boolean", "false", "true", "integer", "float", "number", "string",
    "mapping", "iterable", "sequence", "callable", "sameas", "lower", "upper", "odd", "even", "divisibleby",
    "eq", "equalto", "==", "ne", "!=", "lt", "lessthan", "<", "le", "<=", "gt", "greaterthan", ">", "ge", ">=",
    "in", "escaped", "filter", "test", NULL};
enum { TS_DEFINED, TS_UNDEFINED, TS_NONE, TS_BOOLEAN, TS_FALSE, TS_TRUE, TS_INTEGER, TS_FLOAT, TS_NUMBER,
       TS_STRING, TS_MAPPING, TS_ITERABLE, TS_SEQUENCE, TS_CALLABLE, TS_SAMEAS, TS_LOWER, TS_UPPER, TS_ODD,
       TS_EVEN, TS_DIVISIBLEBY, TS_EQ, TS_EQUALTO, TS_EQ2, TS_NE, TS_NE2, TS_LT, TS_LESSTHAN, TS_LT2, TS_LE,
       TS_LE2, TS_GT, TS_GREATERTHAN, TS_GT2, TS_GE, TS_GE2, TS_IN, TS_IMPLEMENTED_END };

/* ---- tests ---- */


int tpl__test_run(env *e, int id, value v, cargs *a) {
    value x;
    int has = tpl__get_arg(a, 0, "", &x);
    switch (id) {
    case TS_DEFINED: return v.t != V_UNDEF;
    case TS_UNDEFINED: return v.t == V_UNDEF;
    case TS_NONE: return v.t == V_NONE;
    case TS_BOOLEAN: return v.t == V_BOOL;
    case TS_FALSE: return v.t == V_BOOL && !v.u.b;
    case TS_TRUE: return v.t == V_BOOL && v.u.b;
    case TS_INTEGER: return v.t == V_INT;
    case TS_FLOAT: return v.t == V_FLOAT;
    case TS_NUMBER: return is_num(v);
    case TS_STRING: return v.t == V_STR;
    case TS_MAPPING: return v.t == V_DICT;
    case TS_ITERABLE: return v.t == V_STR || v.t == V_LIST || v.t == V_DICT || v.t == V_UNDEF;
    case TS_SEQUENCE: return v.t == V_STR || (v.t == V_LIST && !v.u.l->gen) || v.t == V_DICT || v.t == V_UNDEF;
    case TS_CALLABLE: return v.t == V_FUNC;
    case TS_SAMEAS:
        if (!has) tpl__r_fail(e, "sameas test needs an argument");
        if (v.t != x.t) return 0;
        if (v.t == V_LIST) return v.u.l == x.u.l;
        if (v.t == V_DICT || v.t == V_NS) return v.u.d == x.u.d;
        if (v.t == V_FUNC) return v.u.fn == x.u.fn;
        return tpl__py_eq(v, x);
    case TS_LOWER:
    case TS_UPPER: {
        value s = tpl__py_str(e, v);
        cargs none = {0};
        return tpl__truthy(tpl__call_str_method(e, id == TS_LOWER ? M_ISLOWER : M_ISUPPER, s, &none));
    }
    case TS_ODD:
    case TS_EVEN: return tpl__py_eq(tpl__arith(e, OP_MOD, v, mk_int(2)), mk_int(id == TS_ODD ? 1 : 0));
    case TS_DIVISIBLEBY: {
        if (!has) tpl__r_fail(e, "divisibleby test needs an argument");
        value r = tpl__arith(e, OP_MOD, v, x);
        return !tpl__truthy(r);
    }
    default: break;
    }
    if (!has) tpl__r_fail(e, "test needs an argument");
    switch (id) {
    case TS_EQ: case TS_EQUALTO: case TS_EQ2: return tpl__py_eq(v, x);
    case TS_NE: case TS_NE2: return !tpl__py_eq(v, x);
    case TS_LT: case TS_LESSTHAN: case TS_LT2: return tpl__py_lt(e, v, x);
    case TS_LE: case TS_LE2: return tpl__py_lt(e, v, x) || tpl__py_eq(v, x);
    case TS_GT: case TS_GREATERTHAN: case TS_GT2: return tpl__py_lt(e, x, v);
    case TS_GE: case TS_GE2: return tpl__py_lt(e, x, v) || tpl__py_eq(v, x);
    case TS_IN: return tpl__py_in(e, v, x);
    }
    tpl__r_fail(e, "unknown test");
}

/* ---- filters ---- */

static value attr_path(env *e, value item, value attr) {
    if (attr.t == V_INT) return tpl__getitem_v(e, item, attr);
    tpl__want_str(e, attr, "attribute");
    const char *p = attr.u.s.p;
    size_t n = attr.u.s.n, i = 0;
    value cur = item;
    for (;;) {
        size_t j = i;
        while (j < n && p[j] != '.') j++;
        int digits = j > i;
        int64_t num = 0;
        for (size_t k = i; k < j; k++) {
            if (p[k] < '0' || p[k] > '9' || num > 100000000) digits = 0;
            else num = num * 10 + (p[k] - '0');
        }
        cur = tpl__getitem_v(e, cur, digits ? mk_int(num) : mk_str(p + i, j - i));
        if (j >= n) break;
        i = j + 1;
    }
    return cur;
}


static int test_by_name(env *e, value name, value v, cargs *rest) {
    tpl__want_str(e, name, "test name");
    int id = tpl__test_lookup(name.u.s.p, name.u.s.n);
    if (id == TPL_UNKNOWN) tpl__r_fail(e, "no test named '%.*s'", (int)(name.u.s.n > 64 ? 64 : name.u.s.n), name.u.s.p);
    if (id == TPL_UNSUPPORTED) tpl__env_fail(e, CHAT_TEMPLATE_ERR_UNSUPPORTED, "unsupported test '%.*s'", (int)(name.u.s.n > 64 ? 64 : name.u.s.n), name.u.s.p);
    return tpl__test_run(e, id, v, rest);
}

/* select/reject/selectattr/rejectattr: returns a generator-marked list. */
static value filter_select(env *e, value seq, cargs *a, int use_attr, int reject) {
    list *out = tpl__list_new(e, 0);
    out->gen = 1;
    if (!tpl__truthy(seq)) return mk_list(out); /* jinja2: "if value:" guards the loop */
    list *src = tpl__iter_list(e, seq);
    size_t off = 0;
    value attr = mk_none(), tname = mk_none();
    if (use_attr) {
        if (!tpl__get_arg(a, 0, "", &attr)) tpl__r_fail(e, "selectattr needs an attribute");
        off = 1;
    }
    int has_test = tpl__get_arg(a, off, "", &tname);
    cargs rest = {a->pos + (a->npos > off + 1 ? off + 1 : a->npos), a->npos > off + 1 ? a->npos - off - 1 : 0, NULL, NULL, NULL, 0};
    for (size_t i = 0; i < src->n; i++) {
        tpl__step(e);
        value item = src->v[i];
        value tv = use_attr ? attr_path(e, item, attr) : item;
        int ok = has_test ? test_by_name(e, tname, tv, &rest) : tpl__truthy(tv);
        if (ok != reject) tpl__list_push(e, out, item);
    }
    return mk_list(out);
}

static value filter_map(env *e, value seq, cargs *a) {
    if (!tpl__truthy(seq)) {
        list *empty = tpl__list_new(e, 0);
        empty->gen = 1;
        return mk_list(empty);
    }
    list *src = tpl__iter_list(e, seq);
    list *out = tpl__list_new(e, src->n);
    out->gen = 1;
    value attr, fname, def;
    if (tpl__get_arg(a, 99, "attribute", &attr)) {
        int has_def = tpl__get_arg(a, 99, "default", &def);
        for (size_t i = 0; i < src->n; i++) {
            value r = attr_path(e, src->v[i], attr);
            if (r.t == V_UNDEF && has_def) r = def;
            tpl__list_push(e, out, r);
        }
        return mk_list(out);
    }
    if (!tpl__get_arg(a, 0, "", &fname)) tpl__r_fail(e, "map requires a filter argument");
    tpl__want_str(e, fname, "filter name");
    int id = tpl__filter_lookup(fname.u.s.p, fname.u.s.n);
    if (id == TPL_UNKNOWN) tpl__r_fail(e, "no filter named '%.*s'", (int)(fname.u.s.n > 64 ? 64 : fname.u.s.n), fname.u.s.p);
    if (id == TPL_UNSUPPORTED) tpl__env_fail(e, CHAT_TEMPLATE_ERR_UNSUPPORTED, "unsupported filter '%.*s'", (int)(fname.u.s.n > 64 ? 64 : fname.u.s.n), fname.u.s.p);
    cargs rest = *a;
    rest.pos++;
    rest.npos--;
    for (size_t i = 0; i < src->n; i++) {
        tpl__step(e);
        tpl__list_push(e, out, tpl__filter_apply(e, id, src->v[i], &rest));
    }
    return mk_list(out);
}

static value sort_key(env *e, value v, value attr, int has_attr, int case_sensitive) {
    if (has_attr) v = attr_path(e, v, attr);
    if (!case_sensitive && v.t == V_STR) v = tpl__str_case(e, v, 0);
    return v;
}

static int64_t parse_py_int(const char *s, size_t n, int *ok) {
    size_t i = 0;
    while (i < n && (s[i] == ' ' || (s[i] >= 9 && s[i] <= 13))) i++;
    while (n > i && (s[n - 1] == ' ' || (s[n - 1] >= 9 && s[n - 1] <= 13))) n--;
    int neg = 0;
    if (i < n && (s[i] == '+' || s[i] == '-')) neg = s[i++] == '-';
    if (i >= n) {
        *ok = 0;
        return 0;
    }
    int64_t v = 0;
    int prev_us = 1;
    for (; i < n; i++) {
        if (s[i] == '_' && !prev_us) {
            prev_us = 1;
            continue;
        }
        if (s[i] < '0' || s[i] > '9' || __builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, s[i] - '0', &v)) {
            *ok = 0;
            return 0;
        }
        prev_us = 0;
    }
    if (prev_us) {
        *ok = 0;
        return 0;
    }
    *ok = 1;
    return neg ? -v : v;
}
static double parse_py_float(env *e, const char *s, size_t n, int *ok) {
    char *t = tpl__xstrndup(e, s, n), *end;
    char *p = t;
    while (*p == ' ' || (*p >= 9 && *p <= 13)) p++;
    if (!*p || strchr(p, '_') || (p[0] == '0' && (p[1] == 'x' || p[1] == 'X'))) {
        *ok = 0;
        return 0;
    }
    double d = strtod(p, &end);
    while (*end == ' ' || (*end >= 9 && *end <= 13)) end++;
    *ok = end != p && *end == 0;
    return d;
}

/* ---- filters: one function each, (e, value, arguments) -> value ---- */

typedef value (*filter_fn)(env *e, value v, cargs *a);

static value f_length(env *e, value v, cargs *a) {
    (void)a;
    switch (v.t) {
    case V_UNDEF: return mk_int(0);
    case V_STR: return mk_int((int64_t)tpl__u8_len(v.u.s.p, v.u.s.n));
    case V_LIST:
        if (v.u.l->gen) tpl__r_fail(e, "object of type 'generator' has no len()");
        return mk_int((int64_t)v.u.l->n);
    case V_DICT: return mk_int((int64_t)v.u.d->n);
    default: tpl__r_fail(e, "object of type '%s' has no len()", tpl__type_name(v));
    }
}

static value f_string(env *e, value v, cargs *a) {
    (void)a;
    return tpl__py_str(e, v);
}

static value f_trim(env *e, value v, cargs *a) {
    value x;
    if (!tpl__get_arg(a, 0, "chars", &x)) x = mk_none();
    return tpl__str_strip(e, tpl__py_str(e, v), x, 1, 1);
}

/* mode as tpl__str_case: 0 lower, 1 upper, 3 capitalize, 4 jinja's title filter */
static value case_filter(env *e, value v, cargs *a, int mode) {
    (void)a;
    return tpl__str_case(e, tpl__py_str(e, v), mode);
}
static value f_upper(env *e, value v, cargs *a) { return case_filter(e, v, a, 1); }
static value f_lower(env *e, value v, cargs *a) { return case_filter(e, v, a, 0); }
static value f_capitalize(env *e, value v, cargs *a) { return case_filter(e, v, a, 3); }
static value f_title(env *e, value v, cargs *a) { return case_filter(e, v, a, 4); }

static value f_replace(env *e, value v, cargs *a) {
    value x, y, z;
    if (!tpl__get_arg(a, 0, "old", &x) || !tpl__get_arg(a, 1, "new", &y)) tpl__r_fail(e, "replace filter needs old and new");
    int64_t cnt = tpl__get_arg(a, 2, "count", &z) && z.t != V_NONE ? tpl__want_int(e, z, "count") : -1;
    return tpl__str_replace(e, tpl__py_str(e, v), tpl__py_str(e, x), tpl__py_str(e, y), cnt);
}

static value first_last(env *e, value v, cargs *a, int last) {
    (void)a;
    if (v.t == V_UNDEF) return mk_undef(NULL, 0);
    if (last && v.t == V_LIST && v.u.l->gen) tpl__r_fail(e, "'generator' object is not reversible");
    list *l = tpl__iter_list(e, v);
    if (l->n == 0) return mk_undef(NULL, 0);
    return l->v[last ? l->n - 1 : 0];
}
static value f_first(env *e, value v, cargs *a) { return first_last(e, v, a, 0); }
static value f_last(env *e, value v, cargs *a) { return first_last(e, v, a, 1); }

static value f_join(env *e, value v, cargs *a) {
    value x, y;
    value sep = tpl__get_arg(a, 0, "d", &x) ? tpl__py_str(e, x) : mk_str("", 0);
    int has_attr = tpl__get_arg(a, 1, "attribute", &y);
    list *l = tpl__iter_list(e, v);
    sbuf b = {0};
    for (size_t i = 0; i < l->n; i++) {
        if (i) tpl__sb_put(e, &b, sep.u.s.p, sep.u.s.n);
        value it = has_attr ? attr_path(e, l->v[i], y) : l->v[i];
        value s = tpl__py_str(e, it);
        tpl__sb_put(e, &b, s.u.s.p, s.u.s.n);
    }
    return mk_sbuf(&b);
}

static value f_default(env *e, value v, cargs *a) {
    (void)e;
    value x, y;
    value def = tpl__get_arg(a, 0, "default_value", &x) ? x : mk_str("", 0);
    int boolean = tpl__get_arg(a, 1, "boolean", &y) && tpl__truthy(y);
    if (v.t == V_UNDEF || (boolean && !tpl__truthy(v))) return def;
    return v;
}

/* (key, value) tuple of entry i of d */
static value dict_item(env *e, dict *d, size_t i) {
    list *t = tpl__list_new(e, 2);
    t->tuple = 1;
    tpl__list_push(e, t, d->k[i]);
    tpl__list_push(e, t, d->v[i]);
    return mk_list(t);
}

static value f_items(env *e, value v, cargs *a) {
    (void)a;
    if (v.t == V_UNDEF) return mk_list(tpl__list_new(e, 0));
    if (v.t != V_DICT) tpl__r_fail(e, "Can only get item pairs from a mapping.");
    list *l = tpl__list_new(e, v.u.d->n);
    for (size_t i = 0; i < v.u.d->n; i++) tpl__list_push(e, l, dict_item(e, v.u.d, i));
    l->gen = 1;
    return mk_list(l);
}

static value f_selectattr(env *e, value v, cargs *a) { return filter_select(e, v, a, 1, 0); }
static value f_rejectattr(env *e, value v, cargs *a) { return filter_select(e, v, a, 1, 1); }
static value f_select(env *e, value v, cargs *a) { return filter_select(e, v, a, 0, 0); }
static value f_reject(env *e, value v, cargs *a) { return filter_select(e, v, a, 0, 1); }

static value f_list(env *e, value v, cargs *a) {
    (void)a;
    list *src = tpl__iter_list(e, v);
    list *l = tpl__list_new(e, src->n);
    for (size_t i = 0; i < src->n; i++) tpl__list_push(e, l, src->v[i]);
    return mk_list(l);
}

static value int_of_double(env *e, double d) {
    if (!isfinite(d) || fabs(d) >= 9.2e18) tpl__env_fail(e, CHAT_TEMPLATE_ERR_UNSUPPORTED, "int filter: value out of range");
    return mk_int((int64_t)d);
}

static value f_int(env *e, value v, cargs *a) {
    value x, y;
    value def = tpl__get_arg(a, 0, "default", &x) ? x : mk_int(0);
    if (tpl__get_arg(a, 1, "base", &y) && !(y.t == V_INT && y.u.i == 10))
        tpl__env_fail(e, CHAT_TEMPLATE_ERR_UNSUPPORTED, "int filter with a base other than 10");
    int ok;
    switch (v.t) {
    case V_INT: return v;
    case V_BOOL: return mk_int(v.u.b);
    case V_FLOAT: return int_of_double(e, v.u.f);
    case V_STR: {
        int64_t i = parse_py_int(v.u.s.p, v.u.s.n, &ok);
        if (ok) return mk_int(i);
        double d = parse_py_float(e, v.u.s.p, v.u.s.n, &ok);
        return ok ? int_of_double(e, d) : def;
    }
    default: return def;
    }
}

static value f_float(env *e, value v, cargs *a) {
    value x;
    value def = tpl__get_arg(a, 0, "default", &x) ? x : mk_float(0.0);
    int ok;
    switch (v.t) {
    case V_FLOAT: return v;
    case V_INT:
    case V_BOOL: return mk_float(num_f(v));
    case V_STR: {
        double d = parse_py_float(e, v.u.s.p, v.u.s.n, &ok);
        return ok ? mk_float(d) : def;
    }
    default: return def;
    }
}

static value f_abs(env *e, value v, cargs *a) {
    (void)a;
    if (v.t == V_INT) {
        if (v.u.i == INT64_MIN) tpl__env_fail(e, CHAT_TEMPLATE_ERR_UNSUPPORTED, "integer overflow");
        return mk_int(v.u.i < 0 ? -v.u.i : v.u.i);
    }
    if (v.t == V_BOOL) return mk_int(v.u.b);
    if (v.t == V_FLOAT) return mk_float(fabs(v.u.f));
    tpl__r_fail(e, "bad operand type for abs(): '%s'", tpl__type_name(v));
}

static value f_reverse(env *e, value v, cargs *a) {
    (void)a;
    if (v.t == V_STR) {
        char *p = tpl__xalloc(e, v.u.s.n + 1);
        size_t i = 0, o = v.u.s.n;
        while (i < v.u.s.n) {
            size_t k;
            tpl__u8_dec(v.u.s.p + i, v.u.s.n - i, &k);
            o -= k;
            memcpy(p + o, v.u.s.p + i, k);
            i += k;
        }
        return mk_str(p, v.u.s.n);
    }
    list *src = tpl__iter_list(e, v);
    list *l = tpl__list_new(e, src->n);
    for (size_t i = src->n; i > 0; i--) tpl__list_push(e, l, src->v[i - 1]);
    l->gen = 1;
    return mk_list(l);
}

static value f_tojson(env *e, value v, cargs *a) {
    value x;
    static const char *const nm[] = {"ensure_ascii", "indent", "separators", "sort_keys", NULL};
    tpl__check_args(e, a, 4, nm, "tojson");
    json_opts o = {-1, ", ", ": ", 0, 0};
    if (tpl__get_arg(a, 0, "ensure_ascii", &x)) o.ensure_ascii = tpl__truthy(x);
    if (tpl__get_arg(a, 1, "indent", &x) && x.t != V_NONE) {
        if (x.t != V_INT) tpl__env_fail(e, CHAT_TEMPLATE_ERR_UNSUPPORTED, "tojson indent must be an integer");
        o.indent = x.u.i < 0 ? 0 : x.u.i > 64 ? 64 : (int)x.u.i;
        o.item_sep = ",";
    }
    if (tpl__get_arg(a, 2, "separators", &x) && x.t != V_NONE) {
        if (x.t != V_LIST || x.u.l->gen || x.u.l->n != 2 || x.u.l->v[0].t != V_STR || x.u.l->v[1].t != V_STR)
            tpl__r_fail(e, "tojson separators must be a pair of strings");
        o.item_sep = tpl__xstrndup(e, x.u.l->v[0].u.s.p, x.u.l->v[0].u.s.n);
        o.key_sep = tpl__xstrndup(e, x.u.l->v[1].u.s.p, x.u.l->v[1].u.s.n);
    }
    if (tpl__get_arg(a, 3, "sort_keys", &x)) o.sort_keys = tpl__truthy(x);
    sbuf b = {0};
    tpl__json_dump(e, &b, v, &o, 0);
    return mk_sbuf(&b);
}

static value f_escape(env *e, value v, cargs *a) {
    (void)a;
    value s = tpl__py_str(e, v);
    sbuf b = {0};
    for (size_t i = 0; i < s.u.s.n; i++) {
        char c = s.u.s.p[i];
        switch (c) {
        case '&': sb_puts(e, &b, "&amp;"); break;
        case '<': sb_puts(e, &b, "&lt;"); break;
        case '>': sb_puts(e, &b, "&gt;"); break;
        case '"': sb_puts(e, &b, "&#34;"); break;
        case '\'': sb_puts(e, &b, "&#39;"); break;
        default: sb_putc(e, &b, c);
        }
    }
    return mk_sbuf(&b);
}

/* The items of v and their sort keys (attribute, case folding), n + 1 slots each. */
static size_t sort_items(env *e, value v, value attr, int has_attr, int cs, value **items, value **keys) {
    list *src = tpl__iter_list(e, v);
    size_t n = src->n;
    *items = tpl__xalloc(e, tpl__xmul(e, n + 1, sizeof(value)));
    *keys = tpl__xalloc(e, tpl__xmul(e, n + 1, sizeof(value)));
    for (size_t i = 0; i < n; i++) {
        (*items)[i] = src->v[i];
        (*keys)[i] = sort_key(e, src->v[i], attr, has_attr, cs);
    }
    return n;
}

/* Sorts items by keys (stable) into a new list. */
static value sorted_list(env *e, value *items, value *keys, size_t n, int reverse) {
    value *ti = tpl__xalloc(e, tpl__xmul(e, n + 1, sizeof(value)));
    value *tk = tpl__xalloc(e, tpl__xmul(e, n + 1, sizeof(value)));
    tpl__merge_sort(e, items, keys, n, reverse, ti, tk);
    list *l = tpl__list_new(e, n);
    for (size_t i = 0; i < n; i++) tpl__list_push(e, l, items[i]);
    return mk_list(l);
}

static value f_sort(env *e, value v, cargs *a) {
    value x, y, z, *items, *keys;
    static const char *const nm[] = {"reverse", "case_sensitive", "attribute", NULL};
    tpl__check_args(e, a, 3, nm, "sort");
    int reverse = tpl__get_arg(a, 0, "reverse", &x) && tpl__truthy(x);
    int cs = tpl__get_arg(a, 1, "case_sensitive", &y) && tpl__truthy(y);
    int has_attr = tpl__get_arg(a, 2, "attribute", &z);
    size_t n = sort_items(e, v, z, has_attr, cs, &items, &keys);
    return sorted_list(e, items, keys, n, reverse);
}

static const char *const UNIQUE_ARGS[] = {"case_sensitive", "attribute", NULL};

static value f_unique(env *e, value v, cargs *a) {
    value y, z, *items, *keys;
    tpl__check_args(e, a, 2, UNIQUE_ARGS, "unique/min/max");
    int cs = tpl__get_arg(a, 0, "case_sensitive", &y) && tpl__truthy(y);
    int has_attr = tpl__get_arg(a, 1, "attribute", &z);
    size_t n = sort_items(e, v, z, has_attr, cs, &items, &keys);
    list *l = tpl__list_new(e, 0);
    l->gen = 1;
    list *seen = tpl__list_new(e, 0);
    for (size_t i = 0; i < n; i++) {
        tpl__step(e);
        if ((keys[i].t == V_LIST && !keys[i].u.l->tuple) || keys[i].t == V_DICT || keys[i].t == V_NS)
            tpl__r_fail(e, "unhashable type: '%s'", tpl__type_name(keys[i]));
        size_t j;
        for (j = 0; j < seen->n; j++) {
            tpl__step(e);
            if (tpl__py_eq(seen->v[j], keys[i])) break;
        }
        if (j < seen->n) continue;
        tpl__list_push(e, seen, keys[i]);
        tpl__list_push(e, l, items[i]);
    }
    return mk_list(l);
}

static value min_max(env *e, value v, cargs *a, int max) {
    value y, z, *items, *keys;
    tpl__check_args(e, a, 2, UNIQUE_ARGS, "unique/min/max");
    int cs = tpl__get_arg(a, 0, "case_sensitive", &y) && tpl__truthy(y);
    int has_attr = tpl__get_arg(a, 1, "attribute", &z);
    size_t n = sort_items(e, v, z, has_attr, cs, &items, &keys);
    if (n == 0) return mk_undef(NULL, 0);
    size_t best = 0;
    for (size_t i = 1; i < n; i++)
        if (max ? tpl__py_lt(e, keys[best], keys[i]) : tpl__py_lt(e, keys[i], keys[best])) best = i;
    return items[best];
}
static value f_min(env *e, value v, cargs *a) { return min_max(e, v, a, 0); }
static value f_max(env *e, value v, cargs *a) { return min_max(e, v, a, 1); }

static value f_sum(env *e, value v, cargs *a) {
    value x, y;
    int has_attr = tpl__get_arg(a, 0, "attribute", &x);
    value acc = tpl__get_arg(a, 1, "start", &y) ? y : mk_int(0);
    list *src = tpl__iter_list(e, v);
    for (size_t i = 0; i < src->n; i++) acc = tpl__arith(e, OP_ADD, acc, has_attr ? attr_path(e, src->v[i], x) : src->v[i]);
    return acc;
}

/* Python's str.splitlines() of s + "\n": every line, the last one included. */
static list *split_lines(env *e, value s) {
    list *lines = tpl__list_new(e, 0);
    const char *p = s.u.s.p;
    size_t n = s.u.s.n, i = 0, st = 0;
    while (i < n) {
        size_t k;
        int32_t c = tpl__u8_dec(p + i, n - i, &k);
        int brk = c == '\n' || c == '\r' || c == 0x0b || c == 0x0c || c == 0x1c || c == 0x1d || c == 0x1e ||
                  c == 0x85 || c == 0x2028 || c == 0x2029;
        if (brk) {
            tpl__list_push(e, lines, mk_str(p + st, i - st));
            if (c == '\r' && i + 1 < n && p[i + 1] == '\n') k = 2;
            st = i + k;
        }
        i += k;
    }
    tpl__list_push(e, lines, mk_str(p + st, n - st)); /* the line ended by the appended "\n" */
    return lines;
}

static value f_indent(env *e, value v, cargs *a) {
    value x, y, z;
    static const char *const nm[] = {"width", "first", "blank", NULL};
    tpl__check_args(e, a, 3, nm, "indent");
    if (v.t != V_STR) {
        if (v.t == V_UNDEF) tpl__undef_fail(e, v);
        tpl__r_fail(e, "indent: expected a string, got '%s'", tpl__type_name(v));
    }
    value ind = mk_str("    ", 4);
    if (tpl__get_arg(a, 0, "width", &x)) ind = x.t == V_STR ? x : tpl__arith(e, OP_MUL, mk_str(" ", 1), x);
    int first = tpl__get_arg(a, 1, "first", &y) && tpl__truthy(y);
    int blank = tpl__get_arg(a, 2, "blank", &z) && tpl__truthy(z);
    list *lines = split_lines(e, v);
    sbuf b = {0};
    if (first) tpl__sb_put(e, &b, ind.u.s.p, ind.u.s.n);
    for (size_t li = 0; li < lines->n; li++) {
        value ln = lines->v[li];
        if (li) {
            sb_putc(e, &b, '\n');
            if (blank || ln.u.s.n) tpl__sb_put(e, &b, ind.u.s.p, ind.u.s.n);
        }
        tpl__sb_put(e, &b, ln.u.s.p, ln.u.s.n);
    }
    return mk_sbuf(&b);
}

static value f_dictsort(env *e, value v, cargs *a) {
    value x, y, z;
    static const char *const nm[] = {"case_sensitive", "by", "reverse", NULL};
    tpl__check_args(e, a, 3, nm, "dictsort");
    if (v.t != V_DICT) tpl__r_fail(e, "dictsort: expected a mapping, got '%s'", tpl__type_name(v));
    int cs = tpl__get_arg(a, 0, "case_sensitive", &x) && tpl__truthy(x);
    int pos = 0;
    if (tpl__get_arg(a, 1, "by", &y)) {
        if (str_eq(y, "value"))
            pos = 1;
        else if (!str_eq(y, "key"))
            tpl__r_fail(e, "You can only sort by either \"key\" or \"value\"");
    }
    int reverse = tpl__get_arg(a, 2, "reverse", &z) && tpl__truthy(z);
    size_t n = v.u.d->n;
    value *items = tpl__xalloc(e, tpl__xmul(e, n + 1, sizeof(value)));
    value *keys = tpl__xalloc(e, tpl__xmul(e, n + 1, sizeof(value)));
    for (size_t i = 0; i < n; i++) {
        items[i] = dict_item(e, v.u.d, i);
        value k = pos ? v.u.d->v[i] : v.u.d->k[i];
        keys[i] = !cs && k.t == V_STR ? tpl__str_case(e, k, 0) : k;
    }
    return sorted_list(e, items, keys, n, reverse);
}

/* The jinja2 builtin filters, by name; fn NULL: known but not implemented
 * (CHAT_TEMPLATE_ERR_UNSUPPORTED when a template uses it). An id is an
 * index here, resolved once when the template is parsed. */
static const struct {
    const char *name;
    filter_fn fn;
} FILTERS[] = {
    {"length", f_length}, {"count", f_length}, {"string", f_string}, {"trim", f_trim}, {"upper", f_upper},
    {"lower", f_lower}, {"capitalize", f_capitalize}, {"title", f_title}, {"replace", f_replace},
    {"first", f_first}, {"last", f_last}, {"join", f_join}, {"default", f_default}, {"d", f_default},
    {"items", f_items}, {"selectattr", f_selectattr}, {"rejectattr", f_rejectattr}, {"select", f_select},
    {"reject", f_reject}, {"map", filter_map}, {"list", f_list}, {"int", f_int}, {"float", f_float},
    {"safe", f_string}, {"abs", f_abs}, {"reverse", f_reverse}, {"tojson", f_tojson}, {"escape", f_escape},
    {"e", f_escape}, {"sort", f_sort}, {"unique", f_unique}, {"min", f_min}, {"max", f_max}, {"sum", f_sum},
    {"indent", f_indent}, {"dictsort", f_dictsort},
    {"wordcount", NULL}, {"center", NULL}, {"batch", NULL}, {"slice", NULL}, {"round", NULL}, {"format", NULL},
    {"truncate", NULL}, {"striptags", NULL}, {"urlencode", NULL}, {"xmlattr", NULL}, {"forceescape", NULL},
    {"filesizeformat", NULL}, {"pprint", NULL}, {"random", NULL}, {"groupby", NULL}, {"attr", NULL},
    {"wordwrap", NULL}, {"urlize", NULL}, {"bool", NULL},
};

int tpl__filter_lookup(const char *name, size_t n) {
    for (size_t i = 0; i < sizeof FILTERS / sizeof FILTERS[0]; i++)
        if (strlen(FILTERS[i].name) == n && memcmp(FILTERS[i].name, name, n) == 0)
            return FILTERS[i].fn ? (int)i : TPL_UNSUPPORTED;
    return TPL_UNKNOWN;
}

value tpl__filter_apply(env *e, int id, value v, cargs *a) {
    tpl__step(e);
    return FILTERS[id].fn(e, v, a);
}

int tpl__test_lookup(const char *name, size_t n) {
    int id = tpl__lookup_name(TESTS, name, n);
    return id < 0 ? TPL_UNKNOWN : id >= TS_IMPLEMENTED_END ? TPL_UNSUPPORTED : id;
}
