/* Chat templates, operators: Python <, in, item access, arithmetic with
 * int/float semantics (overflow is an error: no big integers), substring
 * search charged by size, call-argument helpers and the stable merge sort. */
#include <math.h>
#include <stdlib.h>

#include "chat/template_internal.h"

int tpl__py_lt(env *e, value a, value b) {
    if (is_num(a) && is_num(b)) {
        if (a.t != V_FLOAT && b.t != V_FLOAT) return num_i(a) < num_i(b);
        return num_f(a) < num_f(b);
    }
    if (a.t == V_STR && b.t == V_STR) {
        size_t m = a.u.s.n < b.u.s.n ? a.u.s.n : b.u.s.n;
        int c = memcmp(a.u.s.p, b.u.s.p, m);
        return c < 0 || (c == 0 && a.u.s.n < b.u.s.n);
    }
    if (a.t == V_LIST && b.t == V_LIST && !a.u.l->gen && !b.u.l->gen && a.u.l->tuple == b.u.l->tuple &&
        !a.u.l->is_range && !b.u.l->is_range) {
        size_t m = a.u.l->n < b.u.l->n ? a.u.l->n : b.u.l->n;
        for (size_t i = 0; i < m; i++) {
            if (tpl__py_eq(a.u.l->v[i], b.u.l->v[i])) continue;
            return tpl__py_lt(e, a.u.l->v[i], b.u.l->v[i]);
        }
        return a.u.l->n < b.u.l->n;
    }
    if (a.t == V_UNDEF) tpl__undef_fail(e, a);
    if (b.t == V_UNDEF) tpl__undef_fail(e, b);
    tpl__r_fail(e, "'<' not supported between instances of '%s' and '%s'", tpl__type_name(a), tpl__type_name(b));
}

/* Linear-time substring search (glibc two-way memmem), charged by size. */
const char *tpl__memmem(const char *h, size_t hn, const char *nd, size_t nn) {
    if (nn == 0) return h;
    if (nn > hn) return NULL;
    const char *r = memmem(h, hn, nd, nn);
    tpl__charge((r ? (size_t)(r - h) + nn : hn) + nn); /* about what two-way scanned */
    return r;
}
int64_t tpl__str_find(const char *h, size_t hn, const char *nd, size_t nn, size_t from) {
    if (from > hn) return -1;
    const char *p = tpl__memmem(h + from, hn - from, nd, nn);
    return p ? (int64_t)(p - h) : -1;
}
/* Byte-reversed copy, for searching from the right with memmem. */
char *tpl__str_rev(env *e, const char *s, size_t n) {
    char *r = tpl__xalloc(e, n + 1);
    for (size_t i = 0; i < n; i++) r[i] = s[n - 1 - i];
    r[n] = 0;
    return r;
}

int tpl__py_in(env *e, value a, value b) {
    switch (b.t) {
    case V_STR:
        if (a.t != V_STR) tpl__r_fail(e, "'in <string>' requires string as left operand, not %s", tpl__type_name(a));
        return tpl__memmem(b.u.s.p, b.u.s.n, a.u.s.p, a.u.s.n) != NULL;
    case V_LIST:
        for (size_t i = 0; i < b.u.l->n; i++)
            if (tpl__py_eq(a, b.u.l->v[i])) return 1;
        return 0;
    case V_DICT:
        if ((a.t == V_LIST && !a.u.l->tuple) || a.t == V_DICT || a.t == V_NS) tpl__r_fail(e, "unhashable type: '%s'", tpl__type_name(a));
        return tpl__dict_find(b.u.d, a) != NULL;
    case V_UNDEF: return 0;
    default: tpl__r_fail(e, "argument of type '%s' is not iterable", tpl__type_name(b));
    }
}


value tpl__getitem_v(env *e, value o, value k) {
    switch (o.t) {
    case V_UNDEF: tpl__undef_fail(e, o);
    case V_DICT: {
        value *p = tpl__dict_find(o.u.d, k);
        if (p) return *p;
        break;
    }
    case V_LIST:
        if (!o.u.l->gen && (k.t == V_INT || k.t == V_BOOL)) {
            int64_t i = num_i(k);
            if (i < 0) i += (int64_t)o.u.l->n;
            if (i >= 0 && (uint64_t)i < o.u.l->n) return o.u.l->v[i];
            return mk_undef(NULL, 0);
        }
        break;
    case V_STR:
        if (k.t == V_INT || k.t == V_BOOL) {
            int64_t i = num_i(k);
            int64_t len = (int64_t)tpl__u8_len(o.u.s.p, o.u.s.n);
            if (i < 0) i += len;
            if (i >= 0 && i < len) {
                size_t off = tpl__u8_off(o.u.s.p, o.u.s.n, (size_t)i), cl;
                tpl__u8_dec(o.u.s.p + off, o.u.s.n - off, &cl);
                return mk_str(o.u.s.p + off, cl);
            }
            return mk_undef(NULL, 0);
        }
        break;
    default: break;
    }
    if (k.t == V_STR && o.t != V_DICT) return tpl__getattr_v(e, o, k.u.s.p, k.u.s.n);
    if (k.t == V_STR) {
        /* dict: fall back to attribute (methods) */
        value m = tpl__getattr_v(e, o, k.u.s.p, k.u.s.n);
        return m;
    }
    return mk_undef(NULL, 0);
}
/* ---- arithmetic ---- */

static void int_overflow(env *e) __attribute__((noreturn));
static void int_overflow(env *e) {
    tpl__env_fail(e, CHAT_TEMPLATE_ERR_UNSUPPORTED, "integer overflow (big integers are not supported)");
}

/* int op int with Python's semantics (floor division and modulo, ** by
 * repeated multiplication); overflow is an error, not a big integer. */
static value arith_int(env *e, int op, int64_t x, int64_t y) {
    int64_t r = 0;
    switch (op) {
    case OP_ADD:
        if (__builtin_add_overflow(x, y, &r)) int_overflow(e);
        return mk_int(r);
    case OP_SUB:
        if (__builtin_sub_overflow(x, y, &r)) int_overflow(e);
        return mk_int(r);
    case OP_MUL:
        if (__builtin_mul_overflow(x, y, &r)) int_overflow(e);
        return mk_int(r);
    case OP_DIV:
        if (y == 0) tpl__r_fail(e, "division by zero");
        return mk_float((double)x / (double)y);
    case OP_FDIV:
    case OP_MOD: {
        if (y == 0) tpl__r_fail(e, "integer division or modulo by zero");
        if (x == INT64_MIN && y == -1) int_overflow(e);
        int64_t q = x / y, m = x % y;
        if (m != 0 && ((m < 0) != (y < 0))) {
            q--;
            m += y;
        }
        return mk_int(op == OP_FDIV ? q : m);
    }
    case OP_POW:
        if (y < 0) return mk_float(pow((double)x, (double)y));
        r = 1;
        for (int64_t i = 0; i < y; i++) {
            if (__builtin_mul_overflow(r, x, &r)) int_overflow(e);
            if (r == 0 || r == 1) break;
            if (r == -1) {
                r = (y - i - 1) % 2 ? -r : r;
                break;
            }
        }
        return mk_int(r);
    }
    tpl__r_fail(e, "internal error: bad arithmetic operator");
}

/* float op float with Python's semantics (floor division, modulo with the sign of y). */
static value arith_float(env *e, int op, double x, double y) {
    switch (op) {
    case OP_ADD: return mk_float(x + y);
    case OP_SUB: return mk_float(x - y);
    case OP_MUL: return mk_float(x * y);
    case OP_DIV:
        if (y == 0) tpl__r_fail(e, "float division by zero");
        return mk_float(x / y);
    case OP_FDIV:
    case OP_MOD: {
        if (y == 0) tpl__r_fail(e, "float modulo");
        double m = fmod(x, y), dv = (x - m) / y;
        if (m != 0 && ((y < 0) != (m < 0))) {
            m += y;
            dv -= 1.0;
        }
        if (op == OP_MOD) return mk_float(m != 0 ? m : copysign(0.0, y));
        double fd = floor(dv);
        if (dv - fd > 0.5) fd += 1.0;
        return mk_float(dv != 0 ? fd : copysign(0.0, x / y));
    }
    case OP_POW: return mk_float(pow(x, y));
    }
    tpl__r_fail(e, "internal error: bad arithmetic operator");
}

value tpl__arith(env *e, int op, value a, value b) {
    if (a.t == V_UNDEF) tpl__undef_fail(e, a);
    if (b.t == V_UNDEF) tpl__undef_fail(e, b);
    static const char *const opname[] = {"+", "-", "*", "/", "//", "%", "**"};
    if (is_num(a) && is_num(b)) {
        if (a.t != V_FLOAT && b.t != V_FLOAT) return arith_int(e, op, num_i(a), num_i(b));
        return arith_float(e, op, num_f(a), num_f(b));
    }
    if (op == OP_ADD && a.t == V_STR && b.t == V_STR) {
        char *p = tpl__xalloc(e, a.u.s.n + b.u.s.n + 1);
        memcpy(p, a.u.s.p, a.u.s.n);
        memcpy(p + a.u.s.n, b.u.s.p, b.u.s.n);
        if (a.u.s.n + b.u.s.n > e->lim.max_output_bytes) tpl__env_fail(e, CHAT_TEMPLATE_ERR_LIMIT, "string size limit exceeded");
        return mk_str(p, a.u.s.n + b.u.s.n);
    }
    if (op == OP_ADD && a.t == V_LIST && b.t == V_LIST && !a.u.l->gen && !b.u.l->gen && a.u.l->tuple == b.u.l->tuple &&
        !a.u.l->is_range && !b.u.l->is_range) {
        list *l = tpl__list_new(e, a.u.l->n + b.u.l->n);
        for (size_t i = 0; i < a.u.l->n; i++) tpl__list_push(e, l, a.u.l->v[i]);
        for (size_t i = 0; i < b.u.l->n; i++) tpl__list_push(e, l, b.u.l->v[i]);
        l->tuple = a.u.l->tuple;
        return mk_list(l);
    }
    if (op == OP_MUL && ((a.t == V_STR && (b.t == V_INT || b.t == V_BOOL)) || (b.t == V_STR && (a.t == V_INT || a.t == V_BOOL)))) {
        value s = a.t == V_STR ? a : b;
        int64_t k = a.t == V_STR ? num_i(b) : num_i(a);
        if (k <= 0 || s.u.s.n == 0) return mk_str("", 0);
        size_t tot = tpl__xmul(e, s.u.s.n, (size_t)k);
        if (tot > e->lim.max_output_bytes) tpl__env_fail(e, CHAT_TEMPLATE_ERR_LIMIT, "string size limit exceeded");
        char *p = tpl__xalloc(e, tot + 1);
        for (int64_t i = 0; i < k; i++) memcpy(p + (size_t)i * s.u.s.n, s.u.s.p, s.u.s.n);
        return mk_str(p, tot);
    }
    if (op == OP_MUL && ((a.t == V_LIST && !a.u.l->gen && !a.u.l->is_range && (b.t == V_INT || b.t == V_BOOL)) ||
                         (b.t == V_LIST && !b.u.l->gen && !b.u.l->is_range && (a.t == V_INT || a.t == V_BOOL)))) {
        value s = a.t == V_LIST ? a : b;
        int64_t k = a.t == V_LIST ? num_i(b) : num_i(a);
        list *l = tpl__list_new(e, 0);
        l->tuple = s.u.l->tuple;
        if (k > 0 && s.u.l->n > 0) {
            size_t tot = tpl__xmul(e, s.u.l->n, (size_t)k);
            if (tot > e->lim.max_steps) tpl__env_fail(e, CHAT_TEMPLATE_ERR_LIMIT, "list size limit exceeded");
            l = tpl__list_new(e, tot);
            l->tuple = s.u.l->tuple;
            for (int64_t i = 0; i < k; i++)
                for (size_t j = 0; j < s.u.l->n; j++) {
                    tpl__step(e);
                    tpl__list_push(e, l, s.u.l->v[j]);
                }
        }
        return mk_list(l);
    }
    if (op == OP_MOD && a.t == V_STR) tpl__env_fail(e, CHAT_TEMPLATE_ERR_UNSUPPORTED, "printf-style string formatting is not supported");
    tpl__r_fail(e, "unsupported operand type(s) for %s: '%s' and '%s'", opname[op], tpl__type_name(a), tpl__type_name(b));
}

int tpl__compare(env *e, int op, value a, value b) {
    switch (op) {
    case OP_EQ: return tpl__py_eq(a, b);
    case OP_NE: return !tpl__py_eq(a, b);
    case OP_LT: return tpl__py_lt(e, a, b);
    case OP_GT: return tpl__py_lt(e, b, a);
    case OP_LE: return tpl__py_lt(e, a, b) || tpl__py_eq(a, b);
    case OP_GE: return tpl__py_lt(e, b, a) || tpl__py_eq(a, b);
    case OP_IN: return tpl__py_in(e, a, b);
    case OP_NOTIN: return !tpl__py_in(e, a, b);
    }
    return 0;
}

/* ---- argument helpers ---- */

int tpl__get_arg(cargs *a, size_t pos, const char *name, value *out) {
    if (pos < a->npos) {
        *out = a->pos[pos];
        return 1;
    }
    for (size_t i = 0; i < a->nk; i++)
        if (a->kl[i] == strlen(name) && memcmp(a->kn[i], name, a->kl[i]) == 0) {
            *out = a->kv[i];
            return 1;
        }
    return 0;
}
void tpl__check_args(env *e, cargs *a, size_t maxpos, const char *const *names, const char *fn) {
    if (a->npos > maxpos) tpl__r_fail(e, "%s() takes at most %zu positional arguments", fn, maxpos);
    for (size_t i = 0; i < a->nk; i++) {
        int ok = 0;
        for (int j = 0; names && names[j]; j++)
            if (strlen(names[j]) == a->kl[i] && memcmp(names[j], a->kn[i], a->kl[i]) == 0) ok = 1;
        if (!ok) tpl__r_fail(e, "%s() got an unexpected keyword argument '%.*s'", fn, (int)(a->kl[i] > 64 ? 64 : a->kl[i]), a->kn[i]);
    }
}
value tpl__want_str(env *e, value v, const char *what) {
    if (v.t != V_STR) {
        if (v.t == V_UNDEF) tpl__undef_fail(e, v);
        tpl__r_fail(e, "%s must be str, not %s", what, tpl__type_name(v));
    }
    return v;
}
int64_t tpl__want_int(env *e, value v, const char *what) {
    if (v.t != V_INT && v.t != V_BOOL) {
        if (v.t == V_UNDEF) tpl__undef_fail(e, v);
        tpl__r_fail(e, "%s must be an integer, not %s", what, tpl__type_name(v));
    }
    return num_i(v);
}
void tpl__merge_sort(env *e, value *items, value *keys, size_t n, int reverse, value *tmpi, value *tmpk) {
    if (n < 2) return;
    size_t h = n / 2;
    tpl__merge_sort(e, items, keys, h, reverse, tmpi, tmpk);
    tpl__merge_sort(e, items + h, keys + h, n - h, reverse, tmpi, tmpk);
    size_t i = 0, j = h, k = 0;
    while (i < h && j < n) {
        tpl__step(e);
        int take_right = reverse ? tpl__py_lt(e, keys[i], keys[j]) : tpl__py_lt(e, keys[j], keys[i]);
        if (take_right) {
            tmpi[k] = items[j];
            tmpk[k++] = keys[j++];
        } else {
            tmpi[k] = items[i];
            tmpk[k++] = keys[i++];
        }
    }
    while (i < h) {
        tmpi[k] = items[i];
        tmpk[k++] = keys[i++];
    }
    while (j < n) {
        tmpi[k] = items[j];
        tmpk[k++] = keys[j++];
    }
    memcpy(items, tmpi, n * sizeof(value));
    memcpy(keys, tmpk, n * sizeof(value));
}
