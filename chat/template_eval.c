/* Chat templates, evaluator: scopes, expressions, calls (globals and
 * macros) and statements (if, for with its loop variable, set, macro),
 * writing into the innermost capture buffer. */
#include <math.h>
#include <stdio.h>
#include <time.h>

#include "chat/template_internal.h"

static value eval(env *e, scope *sc, node *x);
static value do_call(env *e, value fn, cargs *a, const char *what);

scope *tpl__scope_new(env *e, scope *parent) {
    scope *s = tpl__xcalloc(e, sizeof *s);
    s->parent = parent;
    return s;
}
static value *scope_find(scope *s, const char *nm, size_t n) {
    for (; s; s = s->parent)
        for (size_t i = s->n; i > 0; i--)
            if (s->lens[i - 1] == n && memcmp(s->names[i - 1], nm, n) == 0) return &s->vals[i - 1];
    return NULL;
}
void tpl__scope_set(env *e, scope *s, const char *nm, size_t n, value v) {
    for (size_t i = 0; i < s->n; i++)
        if (s->lens[i] == n && memcmp(s->names[i], nm, n) == 0) {
            s->vals[i] = v;
            return;
        }
    if (s->n >= 10000) tpl__env_fail(e, CHAT_TEMPLATE_ERR_LIMIT, "too many variables in one scope");
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 8;
        const char **nn = tpl__xalloc(e, cap * sizeof(char *));
        size_t *nl = tpl__xalloc(e, cap * sizeof(size_t));
        value *nv = tpl__xalloc(e, tpl__xmul(e, cap, sizeof(value)));
        if (s->n) {
            memcpy(nn, s->names, s->n * sizeof(char *));
            memcpy(nl, s->lens, s->n * sizeof(size_t));
            memcpy(nv, s->vals, s->n * sizeof(value));
        }
        s->names = nn;
        s->lens = nl;
        s->vals = nv;
        s->cap = cap;
    }
    s->names[s->n] = nm;
    s->lens[s->n] = n;
    s->vals[s->n] = v;
    s->n++;
}
/* ---- calls ---- */

static value call_macro(env *e, func *f, cargs *a) {
    node *m = f->mac;
    if (a->npos > m->nk)
        tpl__r_fail(e, "macro '%.*s' takes not more than %zu argument(s)", (int)(m->nlen > 64 ? 64 : m->nlen), m->name, m->nk);
    scope *sc = tpl__scope_new(e, f->sc);
    for (size_t i = 0; i < a->nk; i++) {
        size_t j;
        for (j = 0; j < m->nk; j++)
            if (m->klens[j] == a->kl[i] && memcmp(m->knames[j], a->kn[i], a->kl[i]) == 0) break;
        if (j == m->nk)
            tpl__r_fail(e, "macro '%.*s' has no argument named '%.*s'", (int)(m->nlen > 64 ? 64 : m->nlen), m->name,
                   (int)(a->kl[i] > 64 ? 64 : a->kl[i]), a->kn[i]);
        if (j < a->npos) tpl__r_fail(e, "macro got multiple values for argument");
    }
    for (size_t j = 0; j < m->nk; j++) {
        value v;
        if (!tpl__get_arg(a, j, "\x01", &v)) {
            size_t i;
            for (i = 0; i < a->nk; i++)
                if (m->klens[j] == a->kl[i] && memcmp(m->knames[j], a->kn[i], a->kl[i]) == 0) break;
            if (i < a->nk)
                v = a->kv[i];
            else if (m->kwargs.v[j])
                v = eval(e, sc, m->kwargs.v[j]);
            else
                v = mk_undef(m->knames[j], m->klens[j]);
        }
        tpl__scope_set(e, sc, m->knames[j], m->klens[j], v);
    }
    sbuf cap = {0};
    cap.prev = e->cap_top;
    e->cap_top = &cap;
    tpl__exec_body(e, sc, &m->args);
    e->cap_top = cap.prev;
    return mk_sbuf(&cap);
}

static value call_range(env *e, cargs *a) {
    tpl__check_args(e, a, 3, NULL, "range");
    int64_t start = 0, stop, stepv = 1;
    if (a->npos == 0) tpl__r_fail(e, "range expected at least 1 argument");
    if (a->npos == 1)
        stop = tpl__want_int(e, a->pos[0], "range argument");
    else {
        start = tpl__want_int(e, a->pos[0], "range argument");
        stop = tpl__want_int(e, a->pos[1], "range argument");
        if (a->npos == 3) stepv = tpl__want_int(e, a->pos[2], "range argument");
    }
    if (stepv == 0) tpl__r_fail(e, "range() arg 3 must not be zero");
    double cnt = stepv > 0 ? ceil(((double)stop - (double)start) / (double)stepv) : ceil(((double)start - (double)stop) / (double)-stepv);
    if (cnt < 0) cnt = 0;
    if (cnt > CT_MAX_RANGE) tpl__r_fail(e, "Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
    list *l = tpl__list_new(e, (size_t)cnt);
    for (int64_t i = 0; i < (int64_t)cnt; i++) tpl__list_push(e, l, mk_int(start + i * stepv));
    l->is_range = 1;
    l->r[0] = start;
    l->r[1] = stop;
    l->r[2] = stepv;
    return mk_list(l);
}

/* namespace(...) and dict(...): from one dict and keyword arguments. */
static value call_dict(env *e, int id, cargs *a, const char *what) {
    dict *d = tpl__dict_new(e);
    if (a->npos > 1) tpl__r_fail(e, "%s expected at most 1 positional argument", what);
    if (a->npos == 1) {
        if (a->pos[0].t != V_DICT) tpl__env_fail(e, CHAT_TEMPLATE_ERR_UNSUPPORTED, "%s() positional argument must be a dict", what);
        for (size_t i = 0; i < a->pos[0].u.d->n; i++) tpl__dict_set(e, d, a->pos[0].u.d->k[i], a->pos[0].u.d->v[i]);
    }
    for (size_t i = 0; i < a->nk; i++) tpl__dict_set(e, d, mk_str(a->kn[i], a->kl[i]), a->kv[i]);
    value v = mk_dict(d);
    if (id == G_NAMESPACE) v.t = V_NS;
    return v;
}

static value call_strftime(env *e, cargs *a) {
    value x;
    if (!tpl__get_arg(a, 0, "format", &x)) tpl__r_fail(e, "strftime_now() missing argument");
    tpl__want_str(e, x, "format");
    if (x.u.s.n > 256) tpl__env_fail(e, CHAT_TEMPLATE_ERR_LIMIT, "strftime_now format too long");
    char *fmt = tpl__xstrndup(e, x.u.s.p, x.u.s.n);
    time_t now = time(NULL);
    struct tm tmv;
    localtime_r(&now, &tmv);
    char buf[4096];
    size_t k = strftime(buf, sizeof buf, fmt, &tmv);
    if (k == 0 && x.u.s.n) tpl__r_fail(e, "strftime_now: result too long or empty");
    return mk_str(tpl__xstrndup(e, buf, k), k);
}

static value do_call(env *e, value fn, cargs *a, const char *what) {
    if (fn.t == V_UNDEF) tpl__undef_fail(e, fn);
    if (fn.t != V_FUNC) tpl__r_fail(e, "'%s' object is not callable", tpl__type_name(fn));
    func *f = fn.u.fn;
    switch (f->id) {
    case G_RANGE: return call_range(e, a);
    case G_NAMESPACE:
    case G_DICT: return call_dict(e, f->id, a, what);
    case G_RAISE: {
        value x, msg = tpl__get_arg(a, 0, "message", &x) ? tpl__py_str(e, x) : mk_str("", 0);
        tpl__env_fail(e, CHAT_TEMPLATE_ERR_RENDER, "raise_exception: %.*s", (int)(msg.u.s.n > 400 ? 400 : msg.u.s.n), msg.u.s.p);
    }
    case G_STRFTIME: return call_strftime(e, a);
    case G_MACRO: {
        if (++e->depth > e->lim.max_depth) tpl__env_fail(e, CHAT_TEMPLATE_ERR_LIMIT, "recursion limit exceeded");
        value r = call_macro(e, f, a);
        e->depth--;
        return r;
    }
    case G_UNSUPPORTED: tpl__env_fail(e, CHAT_TEMPLATE_ERR_UNSUPPORTED, "unsupported function or method '%s'", what);
    default: return tpl__call_method(e, f->id, f->self, a, what);
    }
}

static void eval_args(env *e, scope *sc, node *x, cargs *a, value *self) {
    size_t extra = self ? 1 : 0;
    a->npos = x->args.n + extra;
    a->pos = tpl__xalloc(e, tpl__xmul(e, a->npos + 1, sizeof(value)));
    if (self) a->pos[0] = *self;
    for (size_t i = 0; i < x->args.n; i++) a->pos[i + extra] = eval(e, sc, x->args.v[i]);
    a->nk = x->nk;
    a->kn = x->knames;
    a->kl = x->klens;
    a->kv = tpl__xalloc(e, tpl__xmul(e, a->nk + 1, sizeof(value)));
    for (size_t i = 0; i < a->nk; i++) a->kv[i] = eval(e, sc, x->kwargs.v[i]);
}

static const char *const GLOBAL_NAMES[] = {"range", "namespace", "dict", "raise_exception", "strftime_now",
                                           "lipsum", "cycler", "joiner", NULL};

static value slice_v(env *e, value o, value va, value vb, value vc) {
    if (o.t == V_UNDEF) tpl__undef_fail(e, o);
    int64_t len;
    if (o.t == V_STR)
        len = (int64_t)tpl__u8_len(o.u.s.p, o.u.s.n);
    else if (o.t == V_LIST && !o.u.l->gen)
        len = (int64_t)o.u.l->n;
    else
        return mk_undef(NULL, 0);
    int64_t stepv = vc.t == V_NONE ? 1 : tpl__want_int(e, vc, "slice step");
    if (stepv == 0) tpl__r_fail(e, "slice step cannot be zero");
    int64_t lo, hi;
    if (stepv > 0) {
        lo = va.t == V_NONE ? 0 : tpl__want_int(e, va, "slice index");
        hi = vb.t == V_NONE ? len : tpl__want_int(e, vb, "slice index");
        if (lo < 0) lo = lo + len < 0 ? 0 : lo + len;
        if (lo > len) lo = len;
        if (hi < 0) hi = hi + len < 0 ? 0 : hi + len;
        if (hi > len) hi = len;
    } else {
        lo = va.t == V_NONE ? len - 1 : tpl__want_int(e, va, "slice index");
        hi = vb.t == V_NONE ? -1 : tpl__want_int(e, vb, "slice index");
        if (va.t != V_NONE) {
            if (lo < 0) lo = lo + len < 0 ? -1 : lo + len;
            if (lo >= len) lo = len - 1;
        }
        if (vb.t != V_NONE) {
            if (hi < 0) hi = hi + len < 0 ? -1 : hi + len;
            if (hi >= len) hi = len - 1;
        }
    }
    list *l = NULL;
    sbuf b = {0};
    size_t *offs = NULL;
    if (o.t == V_STR) {
        offs = tpl__xalloc(e, tpl__xmul(e, (size_t)len + 1, sizeof(size_t)));
        size_t i = 0, c = 0;
        while (i < o.u.s.n) {
            offs[c++] = i;
            size_t k;
            tpl__u8_dec(o.u.s.p + i, o.u.s.n - i, &k);
            i += k;
        }
        offs[c] = o.u.s.n;
        if (stepv == 1) return mk_str(o.u.s.p + offs[lo], lo < hi ? offs[hi] - offs[lo] : 0);
    } else
        l = tpl__list_new(e, 0);
    for (int64_t i = lo; stepv > 0 ? i < hi : i > hi; i += stepv) {
        if (o.t == V_STR)
            tpl__sb_put(e, &b, o.u.s.p + offs[i], offs[i + 1] - offs[i]);
        else
            tpl__list_push(e, l, o.u.l->v[i]);
    }
    if (o.t == V_STR) return mk_sbuf(&b);
    l->tuple = o.u.l->tuple;
    if (o.u.l->is_range) { /* a slice of a range is a range */
        l->is_range = 1;
        l->r[0] = o.u.l->r[0] + lo * o.u.l->r[2];
        l->r[1] = o.u.l->r[0] + hi * o.u.l->r[2];
        l->r[2] = o.u.l->r[2] * stepv;
    }
    return mk_list(l);
}

/* A name: a variable of the scope chain, else a global, else undefined. */
static value eval_name(env *e, scope *sc, node *x) {
    value *p = scope_find(sc, x->name, x->nlen);
    if (p) return *p;
    int g = tpl__lookup_name(GLOBAL_NAMES, x->name, x->nlen);
    if (g >= 0) return tpl__mk_func(e, g <= 4 ? G_RANGE + g : G_UNSUPPORTED, mk_none());
    return mk_undef(x->name, x->nlen);
}

/* List, tuple and dict literals. */
static value eval_display(env *e, scope *sc, node *x) {
    if (x->k != E_DICT) {
        list *l = tpl__list_new(e, x->args.n);
        for (size_t i = 0; i < x->args.n; i++) tpl__list_push(e, l, eval(e, sc, x->args.v[i]));
        l->tuple = x->k == E_TUPLE;
        return mk_list(l);
    }
    dict *d = tpl__dict_new(e);
    for (size_t i = 0; i < x->args.n; i++) {
        value k = eval(e, sc, x->args.v[i]);
        if (k.t == V_LIST && !k.u.l->tuple) tpl__r_fail(e, "unhashable type: 'list'");
        if (k.t == V_DICT || k.t == V_NS) tpl__r_fail(e, "unhashable type: 'dict'");
        tpl__dict_set(e, d, k, eval(e, sc, x->kwargs.v[i]));
    }
    return mk_dict(d);
}

static value eval_slice(env *e, scope *sc, node *x) {
    if (x->args.n != 1) tpl__env_fail(e, CHAT_TEMPLATE_ERR_UNSUPPORTED, "slices inside tuple subscripts are not supported");
    value o = eval(e, sc, x->args.v[0]);
    value va = x->a ? eval(e, sc, x->a) : mk_none();
    value vb = x->b ? eval(e, sc, x->b) : mk_none();
    value vc = x->c ? eval(e, sc, x->c) : mk_none();
    return slice_v(e, o, va, vb, vc);
}

/* Calls, filters and tests: the callee or operand, then the arguments. */
static value eval_apply(env *e, scope *sc, node *x) {
    value v = eval(e, sc, x->a);
    cargs a;
    eval_args(e, sc, x, &a, NULL);
    if (x->k == E_FILTER) return tpl__filter_apply(e, x->op, v, &a);
    if (x->k == E_TEST) {
        int t = tpl__test_run(e, (int)x->lit.u.i, v, &a);
        return mk_bool(x->op ? !t : t);
    }
    const char *what = x->a->k == E_ATTR || x->a->k == E_NAME ? tpl__xstrndup(e, x->a->name, x->a->nlen) : "call";
    return do_call(e, v, &a, what);
}

static value eval_unary(env *e, scope *sc, node *x) {
    value v = eval(e, sc, x->a);
    if (v.t == V_UNDEF) tpl__undef_fail(e, v);
    if (!is_num(v)) tpl__r_fail(e, "bad operand type for unary %c: '%s'", x->k == E_NEG ? '-' : '+', tpl__type_name(v));
    if (x->k == E_POS) return v.t == V_BOOL ? mk_int(v.u.b) : v;
    if (v.t == V_FLOAT) return mk_float(-v.u.f);
    if (num_i(v) == INT64_MIN) tpl__env_fail(e, CHAT_TEMPLATE_ERR_UNSUPPORTED, "integer overflow");
    return mk_int(-num_i(v));
}

/* Chained comparisons a < b < c: each operand evaluated once, stopping at the first false. */
static value eval_compare(env *e, scope *sc, node *x) {
    value l = eval(e, sc, x->a);
    for (size_t i = 0; i < x->args.n; i++) {
        value rv = eval(e, sc, x->args.v[i]);
        if (!tpl__compare(e, x->ops[i], l, rv)) return mk_bool(0);
        l = rv;
    }
    return mk_bool(1);
}

static value eval_concat(env *e, scope *sc, node *x) {
    sbuf b = {0};
    for (size_t i = 0; i < x->args.n; i++) {
        value s = tpl__py_str(e, eval(e, sc, x->args.v[i]));
        tpl__sb_put(e, &b, s.u.s.p, s.u.s.n);
    }
    return mk_sbuf(&b);
}

static value eval(env *e, scope *sc, node *x) {
    tpl__step(e);
    if (++e->depth > e->lim.max_depth * 4) tpl__env_fail(e, CHAT_TEMPLATE_ERR_LIMIT, "recursion limit exceeded");
    value r;
    switch (x->k) {
    case E_LIT: r = x->lit; break;
    case E_NAME: r = eval_name(e, sc, x); break;
    case E_LIST:
    case E_TUPLE:
    case E_DICT: r = eval_display(e, sc, x); break;
    case E_ATTR: r = tpl__getattr_v(e, eval(e, sc, x->a), x->name, x->nlen); break;
    case E_ITEM: {
        value o = eval(e, sc, x->a);
        value k = eval(e, sc, x->b);
        if (k.t == V_LIST && !k.u.l->tuple) tpl__r_fail(e, "unhashable type: 'list'");
        r = tpl__getitem_v(e, o, k);
        break;
    }
    case E_SLICE: r = eval_slice(e, sc, x); break;
    case E_CALL:
    case E_FILTER:
    case E_TEST: r = eval_apply(e, sc, x); break;
    case E_NEG:
    case E_POS: r = eval_unary(e, sc, x); break;
    case E_NOT: r = mk_bool(!tpl__truthy(eval(e, sc, x->a))); break;
    case E_AND: {
        value a = eval(e, sc, x->a);
        r = tpl__truthy(a) ? eval(e, sc, x->b) : a;
        break;
    }
    case E_OR: {
        value a = eval(e, sc, x->a);
        r = tpl__truthy(a) ? a : eval(e, sc, x->b);
        break;
    }
    case E_BIN: r = tpl__arith(e, x->op, eval(e, sc, x->a), eval(e, sc, x->b)); break;
    case E_CMP: r = eval_compare(e, sc, x); break;
    case E_COND:
        if (tpl__truthy(eval(e, sc, x->a)))
            r = eval(e, sc, x->b);
        else
            r = x->c ? eval(e, sc, x->c) : mk_undef(NULL, 0);
        break;
    case E_CONCAT: r = eval_concat(e, sc, x); break;
    default: tpl__env_fail(e, CHAT_TEMPLATE_ERR_RENDER, "internal error: bad expression node");
    }
    e->depth--;
    return r;
}

/* ---- statements ---- */

static void emit(env *e, const char *p, size_t n) { tpl__sb_put(e, e->cap_top, p, n); }

static void assign_targets(env *e, scope *sc, node *x, value v) {
    if (!x->op) {
        tpl__scope_set(e, sc, x->knames[0], x->klens[0], v);
        return;
    }
    list *l = tpl__iter_list(e, v);
    if (l->n != x->nk) tpl__r_fail(e, "cannot unpack: expected %zu values, got %zu", x->nk, l->n);
    for (size_t i = 0; i < x->nk; i++) tpl__scope_set(e, sc, x->knames[i], x->klens[i], l->v[i]);
}

/* Fills the loop variable (one dict per for statement, updated in place). */
static value loop_var(env *e, dict *d, list *items, size_t i) {
    size_t n = items->n;
    if (d->n == 12) { /* keys are in place: update the values */
        d->v[0] = mk_int((int64_t)i + 1);
        d->v[1] = mk_int((int64_t)i);
        d->v[2] = mk_int((int64_t)(n - i));
        d->v[3] = mk_int((int64_t)(n - i - 1));
        d->v[4] = mk_bool(i == 0);
        d->v[5] = mk_bool(i + 1 == n);
        d->v[9] = i > 0 ? items->v[i - 1] : mk_undef("previtem", 8);
        d->v[10] = i + 1 < n ? items->v[i + 1] : mk_undef("nextitem", 8);
        if (value_depth(d->v[9]) > d->depth) d->depth = value_depth(d->v[9]);
        if (value_depth(d->v[10]) > d->depth) d->depth = value_depth(d->v[10]);
        return mk_dict(d);
    }
#define LSET(k, v) tpl__dict_set(e, d, mk_str(k, strlen(k)), v)
    LSET("index", mk_int((int64_t)i + 1));
    LSET("index0", mk_int((int64_t)i));
    LSET("revindex", mk_int((int64_t)(n - i)));
    LSET("revindex0", mk_int((int64_t)(n - i - 1)));
    LSET("first", mk_bool(i == 0));
    LSET("last", mk_bool(i + 1 == n));
    LSET("length", mk_int((int64_t)n));
    LSET("depth", mk_int(1));
    LSET("depth0", mk_int(0));
    LSET("previtem", i > 0 ? items->v[i - 1] : mk_undef("previtem", 8));
    LSET("nextitem", i + 1 < n ? items->v[i + 1] : mk_undef("nextitem", 8));
    LSET("cycle", tpl__mk_func(e, G_UNSUPPORTED, mk_none()));
#undef LSET
    value v = mk_dict(d);
    return v;
}

static int exec_stmt(env *e, scope *sc, node *x) {
    tpl__step(e);
    e->line = x->line;
    switch (x->k) {
    case S_DATA: emit(e, x->lit.u.s.p, x->lit.u.s.n); return EX_NORMAL;
    case S_OUT: {
        value v = tpl__py_str(e, eval(e, sc, x->a));
        emit(e, v.u.s.p, v.u.s.n);
        return EX_NORMAL;
    }
    case S_IF:
        if (tpl__truthy(eval(e, sc, x->a))) return tpl__exec_body(e, sc, &x->args);
        return tpl__exec_body(e, sc, &x->kwargs);
    case S_FOR: {
        value it = eval(e, sc, x->a);
        if (it.t == V_NONE || it.t == V_INT || it.t == V_FLOAT || it.t == V_BOOL || it.t == V_NS || it.t == V_FUNC)
            tpl__r_fail(e, "'%s' object is not iterable", tpl__type_name(it));
        list *items = tpl__iter_list(e, it);
        if (x->b) {
            list *f = tpl__list_new(e, 0);
            scope *ts = tpl__scope_new(e, sc);
            for (size_t i = 0; i < items->n; i++) {
                tpl__step(e);
                ts->n = 0;
                assign_targets(e, ts, x, items->v[i]);
                if (tpl__truthy(eval(e, ts, x->b))) tpl__list_push(e, f, items->v[i]);
            }
            items = f;
        }
        /* One scope and loop dict per for statement, reset each iteration:
         * bounded memory; body assignments still do not outlive an iteration. */
        scope *is = tpl__scope_new(e, sc);
        dict *ld = tpl__dict_new(e);
        for (size_t i = 0; i < items->n; i++) {
            tpl__step(e);
            is->n = 0;
            tpl__scope_set(e, is, "loop", 4, loop_var(e, ld, items, i));
            assign_targets(e, is, x, items->v[i]);
            int r = tpl__exec_body(e, is, &x->args);
            if (r == EX_BREAK) break;
        }
        if (items->n == 0) return tpl__exec_body(e, sc, &x->kwargs);
        return EX_NORMAL;
    }
    case S_SET: assign_targets(e, sc, x, eval(e, sc, x->a)); return EX_NORMAL;
    case S_SETNS: {
        value *ns = scope_find(sc, x->name, x->nlen);
        if (!ns || ns->t != V_NS) tpl__r_fail(e, "cannot assign attribute on non-namespace object");
        value v = eval(e, sc, x->a);
        tpl__dict_set(e, ns->u.d, mk_str(x->knames[0], x->klens[0]), v);
        return EX_NORMAL;
    }
    case S_SETBLOCK: {
        sbuf cap = {0};
        cap.prev = e->cap_top;
        e->cap_top = &cap;
        tpl__exec_body(e, sc, &x->args);
        e->cap_top = cap.prev;
        tpl__scope_set(e, sc, x->knames[0], x->klens[0], mk_sbuf(&cap));
        return EX_NORMAL;
    }
    case S_MACRO: {
        value m = tpl__mk_func(e, G_MACRO, mk_none());
        m.u.fn->mac = x;
        m.u.fn->sc = sc;
        tpl__scope_set(e, sc, x->name, x->nlen, m);
        return EX_NORMAL;
    }
    case S_BREAK: return EX_BREAK;
    case S_CONTINUE: return EX_CONTINUE;
    default: tpl__env_fail(e, CHAT_TEMPLATE_ERR_RENDER, "internal error: bad statement node");
    }
}

int tpl__exec_body(env *e, scope *sc, nlist *body) {
    if (++e->depth > e->lim.max_depth * 4) tpl__env_fail(e, CHAT_TEMPLATE_ERR_LIMIT, "recursion limit exceeded");
    int r = EX_NORMAL;
    for (size_t i = 0; i < body->n; i++) {
        r = exec_stmt(e, sc, body->v[i]);
        if (r != EX_NORMAL) break;
    }
    e->depth--;
    return r;
}
