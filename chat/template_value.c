/* Chat templates, values: the arena, errors that unwind with longjmp,
 * lists and ordered dicts, Python ==, truth, iteration, str() and repr(),
 * and the Unicode helpers (case mapping, str.isspace) the methods need. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <utf8proc.h>

#include "base/utf8.h"
#include "base/util.h"
#include "chat/template_internal.h"

/* ---- arena ---- */

static void *arena_alloc(arena *a, size_t n) {
    n = (n + 15) & ~(size_t)15;
    if (n == 0) n = 16;
    if (!a->head || a->head->cap - a->head->used < n) {
        size_t cap = n > (64u << 10) ? n : (64u << 10);
        if (a->total + cap > a->limit) {
            a->over_limit = 1;
            return NULL;
        }
        arena_blk *b = malloc(sizeof *b + cap);
        if (!b) return NULL;
        b->next = a->head;
        b->cap = cap;
        b->used = 0;
        a->head = b;
        a->total += cap;
    }
    void *p = a->head->data + a->head->used;
    a->head->used += n;
    return p;
}

void tpl__arena_free(arena *a) {
    arena_blk *b = a->head;
    while (b) {
        arena_blk *n = b->next;
        free(b);
        b = n;
    }
    a->head = NULL;
    a->total = 0;
}

/* ---- errors and allocation ---- */

void tpl__env_fail(env *e, int status, const char *fmt, ...) {
    e->status = status;
    if (e->err && e->errlen) {
        va_list ap;
        va_start(ap, fmt);
        int k = 0;
        if (e->line > 0 && status != CHAT_TEMPLATE_ERR_NOMEM)
            k = snprintf(e->err, e->errlen, "line %d: ", e->line);
        if (k < 0 || (size_t)k >= e->errlen) k = 0;
        vsnprintf(e->err + k, e->errlen - (size_t)k, fmt, ap);
        va_end(ap);
        for (char *c = e->err; *c; c++)
            if (*c == '\n' || *c == '\r') *c = ' ';
    }
    longjmp(e->jb, 1);
}

/* The render or compile running on this thread, for charging work that is
 * proportional to string sizes (see tpl__charge()). */
static _Thread_local env *tl_env;

void tpl__env_set_current(env *e) { tl_env = e; }

void *tpl__xalloc(env *e, size_t n) {
    void *p = arena_alloc(&e->ar, n);
    if (!p) {
        if (e->ar.over_limit) tpl__env_fail(e, CHAT_TEMPLATE_ERR_LIMIT, "memory limit exceeded");
        tpl__env_fail(e, CHAT_TEMPLATE_ERR_NOMEM, "out of memory");
    }
    return p;
}

/* Charges work proportional to nbytes (one step per 64 bytes) to the
 * current render, so string operations on huge strings are bounded too. */
void tpl__charge(size_t nbytes) {
    env *e = tl_env;
    if (!e || nbytes < 64) return;
    e->steps += nbytes >> 6;
    if (e->steps > e->lim.max_steps) tpl__env_fail(e, CHAT_TEMPLATE_ERR_LIMIT, "step limit exceeded");
}

void *tpl__xcalloc(env *e, size_t n) {
    void *p = tpl__xalloc(e, n);
    memset(p, 0, n);
    return p;
}

size_t tpl__xmul(env *e, size_t a, size_t b) {
    size_t r;
    if (util_mul_overflow(a, b, &r)) tpl__env_fail(e, CHAT_TEMPLATE_ERR_LIMIT, "size overflow");
    return r;
}

char *tpl__xstrndup(env *e, const char *s, size_t n) {
    char *p = tpl__xalloc(e, n + 1);
    if (n) memcpy(p, s, n);
    p[n] = 0;
    return p;
}

void tpl__sb_put(env *e, sbuf *b, const char *s, size_t n) {
    if (n == 0) return;
    tpl__charge(n);
    if (b->n + n > e->lim.max_output_bytes) tpl__env_fail(e, CHAT_TEMPLATE_ERR_LIMIT, "output limit exceeded");
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 64;
        while (cap < b->n + n) cap *= 2;
        char *p = tpl__xalloc(e, cap);
        if (b->n) memcpy(p, b->p, b->n);
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
}
void tpl__sb_put_int(env *e, sbuf *b, int64_t i) {
    char buf[32];
    snprintf(buf, sizeof buf, "%lld", (long long)i);
    sb_puts(e, b, buf);
}

list *tpl__list_new(env *e, size_t cap) {
    list *l = tpl__xcalloc(e, sizeof *l);
    if (cap) {
        l->v = tpl__xalloc(e, tpl__xmul(e, cap, sizeof(value)));
        l->cap = cap;
    }
    return l;
}
void tpl__list_push(env *e, list *l, value v) {
    int d = value_depth(v);
    if (d > l->depth) {
        if (d > CT_MAX_VALUE_DEPTH) tpl__env_fail(e, CHAT_TEMPLATE_ERR_LIMIT, "value nesting limit exceeded");
        l->depth = d;
    }
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 4;
        value *nv = tpl__xalloc(e, tpl__xmul(e, cap, sizeof(value)));
        if (l->n) memcpy(nv, l->v, l->n * sizeof(value));
        l->v = nv;
        l->cap = cap;
    }
    l->v[l->n++] = v;
}
dict *tpl__dict_new(env *e) { return tpl__xcalloc(e, sizeof(dict)); }
int tpl__py_eq(value a, value b) {
    if (is_num(a) && is_num(b)) {
        if (a.t != V_FLOAT && b.t != V_FLOAT) return num_i(a) == num_i(b);
        return num_f(a) == num_f(b);
    }
    if (a.t != b.t) return 0;
    switch (a.t) {
    case V_UNDEF:
    case V_NONE: return 1;
    case V_STR:
        if (a.u.s.n != b.u.s.n) return 0;
        if (a.u.s.p == b.u.s.p) return 1;
        tpl__charge(a.u.s.n);
        return memcmp(a.u.s.p, b.u.s.p, a.u.s.n) == 0;
    case V_LIST:
        if (a.u.l->gen || b.u.l->gen) return a.u.l == b.u.l;
        if (a.u.l->is_range != b.u.l->is_range) return 0;
        if (a.u.l->tuple != b.u.l->tuple || a.u.l->n != b.u.l->n) return 0;
        for (size_t i = 0; i < a.u.l->n; i++)
            if (!tpl__py_eq(a.u.l->v[i], b.u.l->v[i])) return 0;
        return 1;
    case V_DICT:
        if (a.u.d->n != b.u.d->n) return 0;
        for (size_t i = 0; i < a.u.d->n; i++) {
            value *bv = tpl__dict_find(b.u.d, a.u.d->k[i]);
            if (!bv || !tpl__py_eq(a.u.d->v[i], *bv)) return 0;
        }
        return 1;
    case V_NS: return a.u.d == b.u.d;
    case V_FUNC: return a.u.fn == b.u.fn;
    case V_MACRO: return a.u.mac == b.u.mac;
    default: return 0;
    }
}

static uint64_t str_hash(const char *s, size_t n) { return util_fnv1a(UTIL_FNV1A_INIT, s, n); }
value *tpl__dict_find_s(dict *d, const char *s, size_t n) {
    if (d->idx) {
        size_t mask = d->idx_cap - 1, j = (size_t)str_hash(s, n) & mask;
        for (; d->idx[j]; j = (j + 1) & mask) {
            value *k = &d->k[d->idx[j] - 1];
            if (k->u.s.n == n && memcmp(k->u.s.p, s, n) == 0) return &d->v[d->idx[j] - 1];
        }
        return NULL;
    }
    for (size_t i = 0; i < d->n; i++)
        if (d->k[i].t == V_STR && d->k[i].u.s.n == n && memcmp(d->k[i].u.s.p, s, n) == 0) return &d->v[i];
    return NULL;
}
value *tpl__dict_find(dict *d, value k) {
    if (k.t == V_STR) return tpl__dict_find_s(d, k.u.s.p, k.u.s.n);
    for (size_t i = 0; i < d->n; i++)
        if (d->k[i].t != V_STR && tpl__py_eq(d->k[i], k)) return &d->v[i];
    return NULL;
}
static void dict_index_put(dict *d, size_t i) {
    size_t mask = d->idx_cap - 1, j = (size_t)str_hash(d->k[i].u.s.p, d->k[i].u.s.n) & mask;
    while (d->idx[j]) j = (j + 1) & mask;
    d->idx[j] = (uint32_t)(i + 1);
}
void tpl__dict_set(env *e, dict *d, value k, value v) {
    int dv = value_depth(v) > value_depth(k) ? value_depth(v) : value_depth(k);
    if (dv > d->depth) {
        if (dv > CT_MAX_VALUE_DEPTH) tpl__env_fail(e, CHAT_TEMPLATE_ERR_LIMIT, "value nesting limit exceeded");
        d->depth = dv;
    }
    value *p = tpl__dict_find(d, k);
    if (p) {
        *p = v;
        return;
    }
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 4;
        value *nk = tpl__xalloc(e, tpl__xmul(e, cap, sizeof(value)));
        value *nv = tpl__xalloc(e, tpl__xmul(e, cap, sizeof(value)));
        if (d->n) {
            memcpy(nk, d->k, d->n * sizeof(value));
            memcpy(nv, d->v, d->n * sizeof(value));
        }
        d->k = nk;
        d->v = nv;
        d->cap = cap;
    }
    if (d->n >= UINT32_MAX - 1) tpl__env_fail(e, CHAT_TEMPLATE_ERR_LIMIT, "dict too large");
    d->k[d->n] = k;
    d->v[d->n] = v;
    d->n++;
    if (d->n > 8 && d->n * 2 > d->idx_cap) { /* (re)build the index at load <= 1/2 */
        size_t cap = d->idx_cap ? d->idx_cap * 2 : 32;
        while (cap < d->n * 2) cap *= 2;
        d->idx = tpl__xcalloc(e, tpl__xmul(e, cap, sizeof(uint32_t)));
        d->idx_cap = cap;
        for (size_t i = 0; i < d->n; i++)
            if (d->k[i].t == V_STR) dict_index_put(d, i);
    } else if (d->idx && k.t == V_STR)
        dict_index_put(d, d->n - 1);
}
/* ------------------------------------------------------------------ */
/* UTF-8 and Unicode helpers                                            */
/* ------------------------------------------------------------------ */

/* Decodes one code point at s (n bytes left); sets *len. Text here is
 * validated on the way in, so the fallback (one byte as itself) is only
 * a guard. */
int32_t tpl__u8_dec(const char *s, size_t n, size_t *len) {
    int32_t cp;
    size_t k = utf8_decode((const uint8_t *)s, n, &cp);
    if (k == 0) {
        *len = 1;
        return (unsigned char)s[0];
    }
    *len = k;
    return cp;
}
size_t tpl__u8_len(const char *s, size_t n) {
    tpl__charge(n);
    size_t c = 0;
    for (size_t i = 0; i < n; i++)
        if (((unsigned char)s[i] & 0xC0) != 0x80) c++;
    return c;
}
/* Byte offset of code point index ci (ci <= length). */
size_t tpl__u8_off(const char *s, size_t n, size_t ci) {
    tpl__charge(ci);
    size_t i = 0;
    while (i < n && ci > 0) {
        i++;
        while (i < n && ((unsigned char)s[i] & 0xC0) == 0x80) i++;
        ci--;
    }
    return i;
}

/* Python str.isspace(). */
int tpl__py_isspace(int32_t c) {
    if (c < 0x80) return c == ' ' || (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x1f);
    const utf8proc_property_t *p = utf8proc_get_property(c);
    return p->category == UTF8PROC_CATEGORY_ZS || p->bidi_class == UTF8PROC_BIDI_CLASS_WS ||
           p->bidi_class == UTF8PROC_BIDI_CLASS_B || p->bidi_class == UTF8PROC_BIDI_CLASS_S;
}
/* Python str.isprintable() for one code point. */
static int py_isprintable(int32_t c) {
    if (c == ' ') return 1;
    if (c < 0x20 || c == 0x7f) return 0;
    if (c < 0x7f) return 1;
    switch (utf8proc_category(c)) {
    case UTF8PROC_CATEGORY_CC:
    case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_CS:
    case UTF8PROC_CATEGORY_CO:
    case UTF8PROC_CATEGORY_CN:
    case UTF8PROC_CATEGORY_ZL:
    case UTF8PROC_CATEGORY_ZP:
    case UTF8PROC_CATEGORY_ZS: return 0;
    default: return 1;
    }
}
int tpl__cp_iscased_upper(int32_t c) { return utf8proc_category(c) == UTF8PROC_CATEGORY_LU || utf8proc_category(c) == UTF8PROC_CATEGORY_LT; }
int tpl__cp_iscased(int32_t c) {
    utf8proc_category_t k = utf8proc_category(c);
    return k == UTF8PROC_CATEGORY_LU || k == UTF8PROC_CATEGORY_LL || k == UTF8PROC_CATEGORY_LT;
}

/* mode 0 lower, 1 upper, 2 Python title(), 3 capitalize(), 4 jinja title filter */
value tpl__str_case(env *e, value s, int mode) {
    sbuf b = {0};
    const char *p = s.u.s.p;
    size_t n = s.u.s.n, i = 0;
    int prev_cased = 0, first = 1, word_start = 1;
    while (i < n) {
        size_t k;
        int32_t c = tpl__u8_dec(p + i, n - i, &k);
        int32_t o = c;
        switch (mode) {
        case 0: o = utf8proc_tolower(c); break;
        case 1: o = utf8proc_toupper(c); break;
        case 2:
            o = prev_cased ? utf8proc_tolower(c) : utf8proc_totitle(c);
            prev_cased = tpl__cp_iscased(c);
            break;
        case 3: o = first ? utf8proc_totitle(c) : utf8proc_tolower(c); break;
        case 4: {
            int sep = c == '-' || c == '(' || c == '{' || c == '[' || c == '<' || tpl__py_isspace(c);
            o = sep ? c : word_start ? utf8proc_toupper(c) : utf8proc_tolower(c);
            word_start = sep;
            break;
        }
        }
        first = 0;
        char buf[4];
        tpl__sb_put(e, &b, buf, (size_t)utf8_encode(o, buf));
        i += k;
    }
    return mk_sbuf(&b);
}
/* ------------------------------------------------------------------ */
/* Python str() / repr() and JSON output                                */
/* ------------------------------------------------------------------ */

/* Python float repr: shortest round-trip digits, exponent outside [-4, 16). */
void tpl__fmt_float(double d, char *out, size_t outlen) {
    if (isnan(d)) {
        snprintf(out, outlen, "nan");
        return;
    }
    if (isinf(d)) {
        snprintf(out, outlen, d < 0 ? "-inf" : "inf");
        return;
    }
    char tmp[48];
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*e", prec - 1, d);
        if (strtod(tmp, NULL) == d) break;
    }
    char digits[32];
    int nd = 0, neg = 0;
    const char *q = tmp;
    if (*q == '-') {
        neg = 1;
        q++;
    }
    for (; *q && *q != 'e'; q++)
        if (*q >= '0' && *q <= '9') digits[nd++] = *q;
    int ex = atoi(q + 1);
    while (nd > 1 && digits[nd - 1] == '0') nd--;
    digits[nd] = 0;
    char *o = out;
    size_t left = outlen;
#define PUT(...)                                         \
    do {                                                 \
        int w_ = snprintf(o, left, __VA_ARGS__);         \
        if (w_ > 0 && (size_t)w_ < left) {               \
            o += w_;                                     \
            left -= (size_t)w_;                          \
        }                                                \
    } while (0)
    if (neg) PUT("-");
    if (ex >= -4 && ex < 16) {
        if (ex >= 0) {
            for (int i = 0; i <= ex; i++) PUT("%c", i < nd ? digits[i] : '0');
            PUT(".");
            if (nd > ex + 1)
                PUT("%s", digits + ex + 1);
            else
                PUT("0");
        } else {
            PUT("0.");
            for (int i = 0; i < -ex - 1; i++) PUT("0");
            PUT("%s", digits);
        }
    } else {
        PUT("%c", digits[0]);
        if (nd > 1) PUT(".%s", digits + 1);
        PUT("e%c%02d", ex < 0 ? '-' : '+', ex < 0 ? -ex : ex);
    }
#undef PUT
}

static void py_repr_str(env *e, sbuf *b, const char *s, size_t n) {
    int has_sq = memchr(s, '\'', n) != NULL, has_dq = memchr(s, '"', n) != NULL;
    char q = has_sq && !has_dq ? '"' : '\'';
    sb_putc(e, b, q);
    size_t i = 0;
    while (i < n) {
        size_t k;
        int32_t c = tpl__u8_dec(s + i, n - i, &k);
        char buf[16];
        if (c == q || c == '\\') {
            buf[0] = '\\';
            buf[1] = (char)c;
            tpl__sb_put(e, b, buf, 2);
        } else if (c == '\n')
            sb_puts(e, b, "\\n");
        else if (c == '\r')
            sb_puts(e, b, "\\r");
        else if (c == '\t')
            sb_puts(e, b, "\\t");
        else if (!py_isprintable(c)) {
            if (c < 0x100)
                snprintf(buf, sizeof buf, "\\x%02x", (unsigned)c);
            else if (c < 0x10000)
                snprintf(buf, sizeof buf, "\\u%04x", (unsigned)c);
            else
                snprintf(buf, sizeof buf, "\\U%08x", (unsigned)c);
            sb_puts(e, b, buf);
        } else
            tpl__sb_put(e, b, s + i, k);
        i += k;
    }
    sb_putc(e, b, q);
}

void tpl__py_str_into(env *e, sbuf *b, value v, int repr) {
    char buf[64];
    switch (v.t) { /* recursion bounded by CT_MAX_VALUE_DEPTH */
    case V_UNDEF:
        if (repr) sb_puts(e, b, "Undefined");
        break;
    case V_NONE: sb_puts(e, b, "None"); break;
    case V_BOOL: sb_puts(e, b, v.u.b ? "True" : "False"); break;
    case V_INT: tpl__sb_put_int(e, b, v.u.i); break;
    case V_FLOAT:
        tpl__fmt_float(v.u.f, buf, sizeof buf);
        sb_puts(e, b, buf);
        break;
    case V_STR:
        if (repr)
            py_repr_str(e, b, v.u.s.p, v.u.s.n);
        else
            tpl__sb_put(e, b, v.u.s.p, v.u.s.n);
        break;
    case V_LIST:
        if (v.u.l->gen) tpl__env_fail(e, CHAT_TEMPLATE_ERR_UNSUPPORTED, "printing a generator is not supported (use |list)");
        if (v.u.l->is_range) {
            if (v.u.l->r[2] == 1)
                snprintf(buf, sizeof buf, "range(%lld, %lld)", (long long)v.u.l->r[0], (long long)v.u.l->r[1]);
            else
                snprintf(buf, sizeof buf, "range(%lld, %lld, %lld)", (long long)v.u.l->r[0], (long long)v.u.l->r[1],
                         (long long)v.u.l->r[2]);
            sb_puts(e, b, buf);
            break;
        }
        sb_putc(e, b, v.u.l->tuple ? '(' : '[');
        for (size_t i = 0; i < v.u.l->n; i++) {
            if (i) sb_puts(e, b, ", ");
            tpl__py_str_into(e, b, v.u.l->v[i], 1);
        }
        if (v.u.l->tuple && v.u.l->n == 1) sb_putc(e, b, ',');
        sb_putc(e, b, v.u.l->tuple ? ')' : ']');
        break;
    case V_DICT:
        sb_putc(e, b, '{');
        for (size_t i = 0; i < v.u.d->n; i++) {
            if (i) sb_puts(e, b, ", ");
            tpl__py_str_into(e, b, v.u.d->k[i], 1);
            sb_puts(e, b, ": ");
            tpl__py_str_into(e, b, v.u.d->v[i], 1);
        }
        sb_putc(e, b, '}');
        break;
    default: tpl__env_fail(e, CHAT_TEMPLATE_ERR_UNSUPPORTED, "printing a namespace, function or macro is not supported");
    }
}

value tpl__py_str(env *e, value v) {
    if (v.t == V_STR) return v;
    if (v.t == V_UNDEF) return mk_str("", 0);
    sbuf b = {0};
    tpl__py_str_into(e, &b, v, 0);
    return mk_sbuf(&b);
}

/* Index of the name s[0..n) in the NULL-terminated table tbl, or -1. */
int tpl__lookup_name(const char *const *tbl, const char *s, size_t n) {
    for (int i = 0; tbl[i]; i++)
        if (strlen(tbl[i]) == n && memcmp(tbl[i], s, n) == 0) return i;
    return -1;
}

void tpl__r_fail(env *e, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    tpl__env_fail(e, CHAT_TEMPLATE_ERR_RENDER, "%s", msg);
}
void tpl__undef_fail(env *e, value u) {
    if (u.u.s.p) tpl__r_fail(e, "'%.*s' is undefined", (int)(u.u.s.n > 64 ? 64 : u.u.s.n), u.u.s.p);
    tpl__r_fail(e, "value is undefined");
}
void tpl__step(env *e) {
    if (++e->steps > e->lim.max_steps) tpl__env_fail(e, CHAT_TEMPLATE_ERR_LIMIT, "step limit exceeded");
}

const char *tpl__type_name(value v) {
    switch (v.t) {
    case V_UNDEF: return "Undefined";
    case V_NONE: return "NoneType";
    case V_BOOL: return "bool";
    case V_INT: return "int";
    case V_FLOAT: return "float";
    case V_STR: return "str";
    case V_LIST: return v.u.l->gen ? "generator" : v.u.l->is_range ? "range" : v.u.l->tuple ? "tuple" : "list";
    case V_DICT: return "dict";
    case V_NS: return "Namespace";
    default: return "function";
    }
}

int tpl__truthy(value v) {
    switch (v.t) {
    case V_UNDEF:
    case V_NONE: return 0;
    case V_BOOL: return v.u.b;
    case V_INT: return v.u.i != 0;
    case V_FLOAT: return v.u.f != 0.0;
    case V_STR: return v.u.s.n > 0;
    case V_LIST: return v.u.l->gen || v.u.l->n > 0;
    case V_DICT: return v.u.d->n > 0;
    default: return 1;
    }
}

value tpl__mk_func(env *e, int id, value self) {
    func *f = tpl__xcalloc(e, sizeof *f);
    f->id = id;
    f->self = self;
    value v = {.t = V_FUNC};
    v.u.fn = f;
    return v;
}

/* Iterates v as Python would: a fresh list of items. */
list *tpl__iter_list(env *e, value v) {
    switch (v.t) {
    case V_UNDEF: return tpl__list_new(e, 0);
    case V_LIST: return v.u.l;
    case V_DICT: {
        list *l = tpl__list_new(e, v.u.d->n);
        for (size_t i = 0; i < v.u.d->n; i++) tpl__list_push(e, l, v.u.d->k[i]);
        return l;
    }
    case V_STR: {
        list *l = tpl__list_new(e, 0);
        size_t i = 0;
        while (i < v.u.s.n) {
            size_t k;
            tpl__u8_dec(v.u.s.p + i, v.u.s.n - i, &k);
            tpl__list_push(e, l, mk_str(v.u.s.p + i, k));
            i += k;
        }
        return l;
    }
    default: tpl__r_fail(e, "'%s' object is not iterable", tpl__type_name(v));
    }
}
