/* Chat templates: a Jinja-subset interpreter (lexer -> AST -> tree-walking
 * evaluator) that renders tokenizer_config.json chat templates the way
 * transformers' apply_chat_template does with jinja2 (sandboxed environment,
 * trim_blocks, lstrip_blocks, loopcontrols). Values follow Python semantics.
 * All memory of a compile or a render lives in one arena; errors unwind with
 * longjmp to the public entry point, which frees the arena. */
#include "chat/chat_template.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <utf8proc.h>

#include "base/util.h"

/* ------------------------------------------------------------------ */
/* Status strings, limits                                               */
/* ------------------------------------------------------------------ */

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

#define CT_MAX_SOURCE ((size_t)16 << 20)
#define CT_MAX_JSON ((size_t)256 << 20)
#define CT_MAX_RANGE 100000 /* jinja2.sandbox.MAX_RANGE */

/* ------------------------------------------------------------------ */
/* Arena                                                                */
/* ------------------------------------------------------------------ */

typedef struct arena_blk {
    struct arena_blk *next;
    size_t cap, used;
    _Alignas(16) unsigned char data[];
} arena_blk;

typedef struct {
    arena_blk *head;
    size_t total, limit;
    int over_limit; /* the last failed allocation hit the limit (not malloc) */
} arena;

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

static void arena_free(arena *a) {
    arena_blk *b = a->head;
    while (b) {
        arena_blk *n = b->next;
        free(b);
        b = n;
    }
    a->head = NULL;
    a->total = 0;
}

/* ------------------------------------------------------------------ */
/* Values                                                               */
/* ------------------------------------------------------------------ */

typedef enum { V_UNDEF, V_NONE, V_BOOL, V_INT, V_FLOAT, V_STR, V_LIST, V_DICT, V_NS, V_FUNC, V_MACRO } vtype;

typedef struct list list;
typedef struct dict dict;
typedef struct scope scope;
typedef struct func func;
typedef struct node node;

typedef struct value {
    vtype t;
    union {
        int b;
        int64_t i;
        double f;
        struct {
            const char *p; /* for V_UNDEF: the missing name, may be NULL */
            size_t n;
        } s;
        list *l;
        dict *d; /* V_DICT and V_NS */
        func *fn;
        node *mac;
    } u;
} value;

struct list {
    size_t n, cap;
    value *v;
    int tuple; /* prints as (a, b) */
    int gen;   /* a Python generator/iterator: no len(), no repr, always truthy */
    int is_range; /* a Python range object: prints as range(a, b[, c]); r[] are its arguments */
    int64_t r[3];
    int depth;    /* nesting depth of lists/dicts inside, bounded by CT_MAX_VALUE_DEPTH */
};

struct dict {
    size_t n, cap;
    value *k, *v;
    int depth;
    uint32_t *idx; /* open-addressing index of string keys (entry index + 1), once n > 8 */
    size_t idx_cap;
};

/* Lists and dicts are immutable once built (the sandbox forbids mutation) and
 * namespaces are never recursed into, so values are acyclic; bounding their
 * depth bounds the recursion of ==, <, repr and tojson. */
#define CT_MAX_VALUE_DEPTH 600

struct func {
    int id;     /* builtin function or method id */
    value self; /* bound object for methods */
    node *mac;  /* G_MACRO: its S_MACRO node */
    scope *sc;  /* G_MACRO: the scope it was defined in */
};

/* ------------------------------------------------------------------ */
/* Environment shared by compile and render: errors and allocation      */
/* ------------------------------------------------------------------ */

typedef struct env {
    jmp_buf jb;
    int status;
    char *err;
    size_t errlen;
    arena ar;
    /* render state */
    chat_template_limits lim;
    uint64_t steps;
    int depth;
    char *out; /* malloc'd main output */
    size_t out_n, out_cap;
    struct sbuf *cap_top; /* innermost capture buffer, or NULL */
    scope *root;
    int line;
} env;

static void env_fail(env *e, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4), noreturn));
static void env_fail(env *e, int status, const char *fmt, ...) {
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
 * proportional to string sizes (see charge()). */
static _Thread_local env *tl_env;

static void charge(size_t nbytes);

static void *xalloc(env *e, size_t n) {
    void *p = arena_alloc(&e->ar, n);
    if (!p) {
        if (e->ar.over_limit) env_fail(e, CHAT_TEMPLATE_ERR_LIMIT, "memory limit exceeded");
        env_fail(e, CHAT_TEMPLATE_ERR_NOMEM, "out of memory");
    }
    return p;
}

/* Charges work proportional to nbytes (one step per 64 bytes) to the
 * current render, so string operations on huge strings are bounded too. */
static void charge(size_t nbytes) {
    env *e = tl_env;
    if (!e || nbytes < 64) return;
    e->steps += nbytes >> 6;
    if (e->steps > e->lim.max_steps) env_fail(e, CHAT_TEMPLATE_ERR_LIMIT, "step limit exceeded");
}

static void *xcalloc(env *e, size_t n) {
    void *p = xalloc(e, n);
    memset(p, 0, n);
    return p;
}

static size_t xmul(env *e, size_t a, size_t b) {
    size_t r;
    if (util_mul_overflow(a, b, &r)) env_fail(e, CHAT_TEMPLATE_ERR_LIMIT, "size overflow");
    return r;
}

static char *xstrndup(env *e, const char *s, size_t n) {
    char *p = xalloc(e, n + 1);
    if (n) memcpy(p, s, n);
    p[n] = 0;
    return p;
}

/* Growable byte buffer in the arena (old storage is abandoned on growth). */
typedef struct sbuf {
    char *p;
    size_t n, cap;
    struct sbuf *prev;
} sbuf;

static void sb_put(env *e, sbuf *b, const char *s, size_t n) {
    if (n == 0) return;
    charge(n);
    if (b->n + n > e->lim.max_output_bytes) env_fail(e, CHAT_TEMPLATE_ERR_LIMIT, "output limit exceeded");
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 64;
        while (cap < b->n + n) cap *= 2;
        char *p = xalloc(e, cap);
        if (b->n) memcpy(p, b->p, b->n);
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
}
static void sb_puts(env *e, sbuf *b, const char *s) { sb_put(e, b, s, strlen(s)); }
static void sb_putc(env *e, sbuf *b, char c) { sb_put(e, b, &c, 1); }

static value mk_undef(const char *name, size_t n) {
    value v = {.t = V_UNDEF};
    v.u.s.p = name;
    v.u.s.n = n;
    return v;
}
static value mk_none(void) { return (value){.t = V_NONE}; }
static value mk_bool(int b) {
    value v = {.t = V_BOOL};
    v.u.b = !!b;
    return v;
}
static value mk_int(int64_t i) {
    value v = {.t = V_INT};
    v.u.i = i;
    return v;
}
static value mk_float(double f) {
    value v = {.t = V_FLOAT};
    v.u.f = f;
    return v;
}
static value mk_str(const char *p, size_t n) {
    value v = {.t = V_STR};
    v.u.s.p = p;
    v.u.s.n = n;
    return v;
}
static value mk_sbuf(sbuf *b) { return mk_str(b->p ? b->p : "", b->n); }

static int value_depth(value v) {
    if (v.t == V_LIST) return v.u.l->depth + 1;
    if (v.t == V_DICT) return v.u.d->depth + 1;
    return 0;
}

static list *list_new(env *e, size_t cap) {
    list *l = xcalloc(e, sizeof *l);
    if (cap) {
        l->v = xalloc(e, xmul(e, cap, sizeof(value)));
        l->cap = cap;
    }
    return l;
}
static void list_push(env *e, list *l, value v) {
    int d = value_depth(v);
    if (d > l->depth) {
        if (d > CT_MAX_VALUE_DEPTH) env_fail(e, CHAT_TEMPLATE_ERR_LIMIT, "value nesting limit exceeded");
        l->depth = d;
    }
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 4;
        value *nv = xalloc(e, xmul(e, cap, sizeof(value)));
        if (l->n) memcpy(nv, l->v, l->n * sizeof(value));
        l->v = nv;
        l->cap = cap;
    }
    l->v[l->n++] = v;
}
static value mk_list(list *l) {
    value v = {.t = V_LIST};
    v.u.l = l;
    return v;
}
static dict *dict_new(env *e) { return xcalloc(e, sizeof(dict)); }
static value mk_dict(dict *d) {
    value v = {.t = V_DICT};
    v.u.d = d;
    return v;
}

static int is_num(value v) { return v.t == V_INT || v.t == V_FLOAT || v.t == V_BOOL; }
static double num_f(value v) { return v.t == V_FLOAT ? v.u.f : v.t == V_INT ? (double)v.u.i : (double)v.u.b; }
static int64_t num_i(value v) { return v.t == V_INT ? v.u.i : (int64_t)v.u.b; }

static int str_eq(value a, const char *s) {
    size_t n = strlen(s);
    return a.t == V_STR && a.u.s.n == n && memcmp(a.u.s.p, s, n) == 0;
}

static int py_eq(value a, value b);
static value *dict_find(dict *d, value k);

static int py_eq(value a, value b) {
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
        charge(a.u.s.n);
        return memcmp(a.u.s.p, b.u.s.p, a.u.s.n) == 0;
    case V_LIST:
        if (a.u.l->gen || b.u.l->gen) return a.u.l == b.u.l;
        if (a.u.l->is_range != b.u.l->is_range) return 0;
        if (a.u.l->tuple != b.u.l->tuple || a.u.l->n != b.u.l->n) return 0;
        for (size_t i = 0; i < a.u.l->n; i++)
            if (!py_eq(a.u.l->v[i], b.u.l->v[i])) return 0;
        return 1;
    case V_DICT:
        if (a.u.d->n != b.u.d->n) return 0;
        for (size_t i = 0; i < a.u.d->n; i++) {
            value *bv = dict_find(b.u.d, a.u.d->k[i]);
            if (!bv || !py_eq(a.u.d->v[i], *bv)) return 0;
        }
        return 1;
    case V_NS: return a.u.d == b.u.d;
    case V_FUNC: return a.u.fn == b.u.fn;
    case V_MACRO: return a.u.mac == b.u.mac;
    default: return 0;
    }
}

static uint64_t str_hash(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}
static value *dict_find_s(dict *d, const char *s, size_t n) {
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
static value *dict_find(dict *d, value k) {
    if (k.t == V_STR) return dict_find_s(d, k.u.s.p, k.u.s.n);
    for (size_t i = 0; i < d->n; i++)
        if (d->k[i].t != V_STR && py_eq(d->k[i], k)) return &d->v[i];
    return NULL;
}
static void dict_index_put(dict *d, size_t i) {
    size_t mask = d->idx_cap - 1, j = (size_t)str_hash(d->k[i].u.s.p, d->k[i].u.s.n) & mask;
    while (d->idx[j]) j = (j + 1) & mask;
    d->idx[j] = (uint32_t)(i + 1);
}
static void dict_set(env *e, dict *d, value k, value v) {
    int dv = value_depth(v) > value_depth(k) ? value_depth(v) : value_depth(k);
    if (dv > d->depth) {
        if (dv > CT_MAX_VALUE_DEPTH) env_fail(e, CHAT_TEMPLATE_ERR_LIMIT, "value nesting limit exceeded");
        d->depth = dv;
    }
    value *p = dict_find(d, k);
    if (p) {
        *p = v;
        return;
    }
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 4;
        value *nk = xalloc(e, xmul(e, cap, sizeof(value)));
        value *nv = xalloc(e, xmul(e, cap, sizeof(value)));
        if (d->n) {
            memcpy(nk, d->k, d->n * sizeof(value));
            memcpy(nv, d->v, d->n * sizeof(value));
        }
        d->k = nk;
        d->v = nv;
        d->cap = cap;
    }
    if (d->n >= UINT32_MAX - 1) env_fail(e, CHAT_TEMPLATE_ERR_LIMIT, "dict too large");
    d->k[d->n] = k;
    d->v[d->n] = v;
    d->n++;
    if (d->n > 8 && d->n * 2 > d->idx_cap) { /* (re)build the index at load <= 1/2 */
        size_t cap = d->idx_cap ? d->idx_cap * 2 : 32;
        while (cap < d->n * 2) cap *= 2;
        d->idx = xcalloc(e, xmul(e, cap, sizeof(uint32_t)));
        d->idx_cap = cap;
        for (size_t i = 0; i < d->n; i++)
            if (d->k[i].t == V_STR) dict_index_put(d, i);
    } else if (d->idx && k.t == V_STR)
        dict_index_put(d, d->n - 1);
}

/* ------------------------------------------------------------------ */
/* UTF-8 and Unicode helpers                                            */
/* ------------------------------------------------------------------ */

/* Decodes one code point of valid UTF-8 at s (n bytes left); sets *len. */
static int32_t u8_dec(const char *s, size_t n, size_t *len) {
    utf8proc_int32_t cp;
    utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &cp);
    if (k <= 0) {
        *len = 1;
        return (unsigned char)s[0];
    }
    *len = (size_t)k;
    return cp;
}
static size_t u8_enc(int32_t cp, char *buf) {
    utf8proc_ssize_t k = utf8proc_encode_char(cp, (utf8proc_uint8_t *)buf);
    return k > 0 ? (size_t)k : 0;
}
static int u8_valid(const char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        utf8proc_int32_t cp;
        utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &cp);
        if (k <= 0) return 0;
        i += (size_t)k;
    }
    return 1;
}
static size_t u8_len(const char *s, size_t n) {
    charge(n);
    size_t c = 0;
    for (size_t i = 0; i < n; i++)
        if (((unsigned char)s[i] & 0xC0) != 0x80) c++;
    return c;
}
/* Byte offset of code point index ci (ci <= length). */
static size_t u8_off(const char *s, size_t n, size_t ci) {
    charge(ci);
    size_t i = 0;
    while (i < n && ci > 0) {
        i++;
        while (i < n && ((unsigned char)s[i] & 0xC0) == 0x80) i++;
        ci--;
    }
    return i;
}

/* Python str.isspace(). */
static int py_isspace(int32_t c) {
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
static int cp_iscased_upper(int32_t c) { return utf8proc_category(c) == UTF8PROC_CATEGORY_LU || utf8proc_category(c) == UTF8PROC_CATEGORY_LT; }
static int cp_iscased(int32_t c) {
    utf8proc_category_t k = utf8proc_category(c);
    return k == UTF8PROC_CATEGORY_LU || k == UTF8PROC_CATEGORY_LL || k == UTF8PROC_CATEGORY_LT;
}

/* mode 0 lower, 1 upper, 2 Python title(), 3 capitalize(), 4 jinja title filter */
static value str_case(env *e, value s, int mode) {
    sbuf b = {0};
    const char *p = s.u.s.p;
    size_t n = s.u.s.n, i = 0;
    int prev_cased = 0, first = 1, word_start = 1;
    while (i < n) {
        size_t k;
        int32_t c = u8_dec(p + i, n - i, &k);
        int32_t o = c;
        switch (mode) {
        case 0: o = utf8proc_tolower(c); break;
        case 1: o = utf8proc_toupper(c); break;
        case 2:
            o = prev_cased ? utf8proc_tolower(c) : utf8proc_totitle(c);
            prev_cased = cp_iscased(c);
            break;
        case 3: o = first ? utf8proc_totitle(c) : utf8proc_tolower(c); break;
        case 4: {
            int sep = c == '-' || c == '(' || c == '{' || c == '[' || c == '<' || py_isspace(c);
            o = sep ? c : word_start ? utf8proc_toupper(c) : utf8proc_tolower(c);
            word_start = sep;
            break;
        }
        }
        first = 0;
        char buf[4];
        sb_put(e, &b, buf, u8_enc(o, buf));
        i += k;
    }
    return mk_sbuf(&b);
}

/* ------------------------------------------------------------------ */
/* Python str() / repr() and JSON output                                */
/* ------------------------------------------------------------------ */

/* Python float repr: shortest round-trip digits, exponent outside [-4, 16). */
static void fmt_float(double d, char *out, size_t outlen) {
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
        int32_t c = u8_dec(s + i, n - i, &k);
        char buf[16];
        if (c == q || c == '\\') {
            buf[0] = '\\';
            buf[1] = (char)c;
            sb_put(e, b, buf, 2);
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
            sb_put(e, b, s + i, k);
        i += k;
    }
    sb_putc(e, b, q);
}

static void py_str_into(env *e, sbuf *b, value v, int repr);

static void py_str_into(env *e, sbuf *b, value v, int repr) {
    char buf[64];
    switch (v.t) { /* recursion bounded by CT_MAX_VALUE_DEPTH */
    case V_UNDEF:
        if (repr) sb_puts(e, b, "Undefined");
        break;
    case V_NONE: sb_puts(e, b, "None"); break;
    case V_BOOL: sb_puts(e, b, v.u.b ? "True" : "False"); break;
    case V_INT:
        snprintf(buf, sizeof buf, "%lld", (long long)v.u.i);
        sb_puts(e, b, buf);
        break;
    case V_FLOAT:
        fmt_float(v.u.f, buf, sizeof buf);
        sb_puts(e, b, buf);
        break;
    case V_STR:
        if (repr)
            py_repr_str(e, b, v.u.s.p, v.u.s.n);
        else
            sb_put(e, b, v.u.s.p, v.u.s.n);
        break;
    case V_LIST:
        if (v.u.l->gen) env_fail(e, CHAT_TEMPLATE_ERR_UNSUPPORTED, "printing a generator is not supported (use |list)");
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
            py_str_into(e, b, v.u.l->v[i], 1);
        }
        if (v.u.l->tuple && v.u.l->n == 1) sb_putc(e, b, ',');
        sb_putc(e, b, v.u.l->tuple ? ')' : ']');
        break;
    case V_DICT:
        sb_putc(e, b, '{');
        for (size_t i = 0; i < v.u.d->n; i++) {
            if (i) sb_puts(e, b, ", ");
            py_str_into(e, b, v.u.d->k[i], 1);
            sb_puts(e, b, ": ");
            py_str_into(e, b, v.u.d->v[i], 1);
        }
        sb_putc(e, b, '}');
        break;
    default: env_fail(e, CHAT_TEMPLATE_ERR_UNSUPPORTED, "printing a namespace, function or macro is not supported");
    }
}

static value py_str(env *e, value v) {
    if (v.t == V_STR) return v;
    if (v.t == V_UNDEF) return mk_str("", 0);
    sbuf b = {0};
    py_str_into(e, &b, v, 0);
    return mk_sbuf(&b);
}

typedef struct {
    int indent; /* < 0: none */
    const char *item_sep, *key_sep;
    int ensure_ascii, sort_keys;
} json_opts;

static int py_lt(env *e, value a, value b);
static void merge_sort(env *e, value *items, value *keys, size_t n, int reverse, value *tmpi, value *tmpk);

static void json_str(env *e, sbuf *b, const char *s, size_t n, int ascii) {
    sb_putc(e, b, '"');
    size_t i = 0;
    while (i < n) {
        size_t k;
        int32_t c = u8_dec(s + i, n - i, &k);
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
                sb_put(e, b, s + i, k);
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
        fmt_float(d, buf, sizeof buf);
        sb_puts(e, b, buf);
    }
}

static void json_nl(env *e, sbuf *b, const json_opts *o, int level) {
    sb_putc(e, b, '\n');
    for (int i = 0; i < level * o->indent; i++) sb_putc(e, b, ' ');
}

static void json_dump(env *e, sbuf *b, value v, const json_opts *o, int level) {
    char buf[64];
    switch (v.t) { /* recursion bounded by CT_MAX_VALUE_DEPTH */
    case V_NONE: sb_puts(e, b, "null"); break;
    case V_BOOL: sb_puts(e, b, v.u.b ? "true" : "false"); break;
    case V_INT:
        snprintf(buf, sizeof buf, "%lld", (long long)v.u.i);
        sb_puts(e, b, buf);
        break;
    case V_FLOAT: json_float(e, b, v.u.f); break;
    case V_STR: json_str(e, b, v.u.s.p, v.u.s.n, o->ensure_ascii); break;
    case V_LIST:
        if (v.u.l->gen || v.u.l->is_range)
            env_fail(e, CHAT_TEMPLATE_ERR_RENDER, "Object of type %s is not JSON serializable", v.u.l->gen ? "generator" : "range");
        if (v.u.l->n == 0) {
            sb_puts(e, b, "[]");
            break;
        }
        sb_putc(e, b, '[');
        for (size_t i = 0; i < v.u.l->n; i++) {
            if (i) sb_puts(e, b, o->item_sep);
            if (o->indent >= 0) json_nl(e, b, o, level + 1);
            json_dump(e, b, v.u.l->v[i], o, level + 1);
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
        size_t *ord = xalloc(e, xmul(e, d->n, sizeof(size_t)));
        for (size_t i = 0; i < d->n; i++) ord[i] = i;
        if (o->sort_keys) {
            value *items = xalloc(e, xmul(e, d->n, sizeof(value))), *keys = xalloc(e, xmul(e, d->n, sizeof(value)));
            value *ti = xalloc(e, xmul(e, d->n, sizeof(value))), *tk = xalloc(e, xmul(e, d->n, sizeof(value)));
            for (size_t i = 0; i < d->n; i++) {
                items[i] = mk_int((int64_t)i);
                keys[i] = d->k[i];
            }
            merge_sort(e, items, keys, d->n, 0, ti, tk);
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
            default: env_fail(e, CHAT_TEMPLATE_ERR_RENDER, "keys must be str, int, float, bool or None");
            }
            sb_puts(e, b, o->key_sep);
            json_dump(e, b, d->v[i], o, level + 1);
        }
        if (o->indent >= 0) json_nl(e, b, o, level);
        sb_putc(e, b, '}');
        break;
    }
    case V_UNDEF: env_fail(e, CHAT_TEMPLATE_ERR_RENDER, "Object of type Undefined is not JSON serializable");
    default: env_fail(e, CHAT_TEMPLATE_ERR_RENDER, "object is not JSON serializable");
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
    env_fail(p->e, CHAT_TEMPLATE_ERR_PARSE, "invalid JSON input: %s at offset %zu", what, p->i);
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
            sb_put(p->e, &b, p->s + run, p->i - run);
            p->i++;
            break;
        }
        if (c < 0x20) jp_fail(p, "control character in string");
        if (c != '\\') {
            p->i++;
            continue;
        }
        sb_put(p->e, &b, p->s + run, p->i - run);
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
            sb_put(p->e, &b, buf, u8_enc(cp, buf));
            break;
        }
        default: jp_fail(p, "bad escape");
        }
        if (ch) sb_putc(p->e, &b, ch);
        run = p->i;
    }
    if (!u8_valid(b.p ? b.p : "", b.n)) jp_fail(p, "invalid UTF-8");
    return mk_sbuf(&b);
}
static value jp_value(jparser *p) {
    jp_ws(p);
    if (p->i >= p->n) jp_fail(p, "unexpected end");
    if (++p->depth > 512) jp_fail(p, "nesting too deep");
    char c = p->s[p->i];
    value v;
    if (c == '{') {
        dict *d = dict_new(p->e);
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
                dict_set(p->e, d, k, x);
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
        list *l = list_new(p->e, 0);
        p->i++;
        jp_ws(p);
        if (p->i < p->n && p->s[p->i] == ']')
            p->i++;
        else
            for (;;) {
                list_push(p->e, l, jp_value(p));
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
            char *tmp = xstrndup(p->e, p->s + st, len);
            v = mk_float(strtod(tmp, NULL));
        } else {
            if (len > 20) jp_fail(p, "integer too large (unsupported)");
            memcpy(buf, p->s + st, len);
            buf[len] = 0;
            errno = 0;
            long long x = strtoll(buf, NULL, 10);
            if (errno) jp_fail(p, "integer too large (unsupported)");
            v = mk_int(x);
        }
    } else
        jp_fail(p, "unexpected character");
    p->depth--;
    return v;
}
/* Parses JSON text into values (Python json.loads semantics). */
static value json_parse(env *e, const char *s, size_t n) {
    jparser p = {e, s, n, 0, 0};
    value v = jp_value(&p);
    jp_ws(&p);
    if (p.i != n) jp_fail(&p, "trailing data");
    return v;
}

/* ------------------------------------------------------------------ */
/* Lexer (jinja2.lexer with trim_blocks and lstrip_blocks)              */
/* ------------------------------------------------------------------ */

typedef enum { T_EOF, T_DATA, T_VBEGIN, T_VEND, T_BBEGIN, T_BEND, T_NAME, T_STR, T_INT, T_FLOAT, T_OP } ttype;

typedef struct {
    ttype t;
    int line;
    const char *p; /* name/op text, data text, or decoded string */
    size_t n;
    int64_t i;
    double f;
} token;

typedef struct {
    env *e;
    const char *s; /* normalized source */
    size_t n;
    token *tk;
    size_t ntk, cap;
    int line;
} lexer;

static void lx_push(lexer *L, ttype t, const char *p, size_t n) {
    if (L->ntk == L->cap) {
        size_t cap = L->cap ? L->cap * 2 : 256;
        token *nt = xalloc(L->e, xmul(L->e, cap, sizeof(token)));
        if (L->ntk) memcpy(nt, L->tk, L->ntk * sizeof(token));
        L->tk = nt;
        L->cap = cap;
    }
    token *k = &L->tk[L->ntk++];
    memset(k, 0, sizeof *k);
    k->t = t;
    k->line = L->line;
    k->p = p;
    k->n = n;
}

static void lx_count_lines(lexer *L, const char *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (p[i] == '\n') L->line++;
}

/* Length of Python-\s whitespace run at s[i..n). */
static size_t ws_run(const char *s, size_t n, size_t i) {
    size_t st = i;
    while (i < n) {
        size_t k;
        int32_t c = u8_dec(s + i, n - i, &k);
        if (!py_isspace(c)) break;
        i += k;
    }
    return i - st;
}

/* Python str.rstrip() of s[0..n): new length. */
static size_t rstrip_len(const char *s, size_t n) {
    while (n > 0) {
        size_t st = n - 1;
        while (st > 0 && ((unsigned char)s[st] & 0xC0) == 0x80) st--;
        size_t k;
        int32_t c = u8_dec(s + st, n - st, &k);
        if (!py_isspace(c)) break;
        n = st;
    }
    return n;
}

/* Applies OptionalLStrip to the data text before a tag and emits it. */
static void lx_data_before_tag(lexer *L, const char *text, size_t tn, char sign, int is_var, int line_starting) {
    size_t keep = tn;
    if (sign == '-')
        keep = rstrip_len(text, tn);
    else if (sign != '+' && !is_var) {
        size_t l_pos = 0;
        for (size_t i = tn; i > 0; i--)
            if (text[i - 1] == '\n') {
                l_pos = i;
                break;
            }
        if ((l_pos > 0 || line_starting) && l_pos < tn && ws_run(text, tn, l_pos) == tn - l_pos) keep = l_pos;
    }
    if (keep) lx_push(L, T_DATA, text, keep);
    lx_count_lines(L, text, tn);
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Decodes a string literal body with Python unicode-escape rules. */
static void lx_string(lexer *L, const char *s, size_t n, const char **out, size_t *outn) {
    sbuf b = {0};
    size_t i = 0;
    while (i < n) {
        if (s[i] != '\\') {
            size_t j = i;
            while (j < n && s[j] != '\\') j++;
            sb_put(L->e, &b, s + i, j - i);
            i = j;
            continue;
        }
        if (i + 1 >= n) {
            sb_putc(L->e, &b, '\\');
            i++;
            continue;
        }
        char c = s[i + 1];
        i += 2;
        int32_t cp = -1;
        int nhex = 0;
        switch (c) {
        case '\n': continue;
        case '\\': cp = '\\'; break;
        case '\'': cp = '\''; break;
        case '"': cp = '"'; break;
        case 'a': cp = 7; break;
        case 'b': cp = 8; break;
        case 'f': cp = 12; break;
        case 'n': cp = 10; break;
        case 'r': cp = 13; break;
        case 't': cp = 9; break;
        case 'v': cp = 11; break;
        case 'x': nhex = 2; break;
        case 'u': nhex = 4; break;
        case 'U': nhex = 8; break;
        case 'N': env_fail(L->e, CHAT_TEMPLATE_ERR_UNSUPPORTED, "\\N{...} escapes are not supported");
        default:
            if (c >= '0' && c <= '7') {
                cp = c - '0';
                for (int k = 0; k < 2 && i < n && s[i] >= '0' && s[i] <= '7'; k++) cp = cp * 8 + (s[i++] - '0');
            } else {
                sb_putc(L->e, &b, '\\');
                i--; /* re-read c as ordinary text */
                continue;
            }
        }
        if (nhex) {
            cp = 0;
            for (int k = 0; k < nhex; k++) {
                if (i >= n || hexval(s[i]) < 0) env_fail(L->e, CHAT_TEMPLATE_ERR_PARSE, "truncated \\%c escape in string", c);
                cp = cp * 16 + hexval(s[i++]);
            }
        }
        if (cp > 0x10ffff || (cp >= 0xd800 && cp < 0xe000))
            env_fail(L->e, CHAT_TEMPLATE_ERR_PARSE, "invalid code point escape in string");
        char buf[4];
        sb_put(L->e, &b, buf, u8_enc(cp, buf));
    }
    *out = b.p ? b.p : "";
    *outn = b.n;
}

static const char *const OPS2[] = {"//", "**", "==", "!=", ">=", "<=", NULL};
static const char OPS1[] = "+-/*%~[](){}><=.:|,;";

/* Tokenizes a block or variable tag starting at *pos; returns at its end tag. */
static void lx_tag(lexer *L, size_t *pos, int is_block, int *line_starting) {
    const char *s = L->s;
    size_t n = L->n, i = *pos;
    int bal = 0;
    for (;;) {
        L->e->line = L->line;
        if (i >= n) env_fail(L->e, CHAT_TEMPLATE_ERR_PARSE, "unexpected end of template, expected '%s'", is_block ? "%}" : "}}");
        if (bal == 0) {
            if (is_block) {
                if (s[i] == '+' && i + 2 < n + 0 && s[i + 1] == '%' && s[i + 2] == '}') {
                    lx_push(L, T_BEND, s + i, 3);
                    i += 3;
                    *line_starting = 0;
                    break;
                }
                if (s[i] == '-' && i + 2 < n && s[i + 1] == '%' && s[i + 2] == '}') {
                    lx_push(L, T_BEND, s + i, 3);
                    size_t w = ws_run(s, n, i + 3);
                    lx_count_lines(L, s + i + 3, w);
                    i += 3 + w;
                    *line_starting = w > 0 && s[i - 1] == '\n';
                    break;
                }
                if (s[i] == '%' && i + 1 < n && s[i + 1] == '}') {
                    lx_push(L, T_BEND, s + i, 2);
                    i += 2;
                    *line_starting = 0;
                    if (i < n && s[i] == '\n') {
                        i++;
                        L->line++;
                        *line_starting = 1;
                    }
                    break;
                }
            } else {
                if (s[i] == '-' && i + 2 < n && s[i + 1] == '}' && s[i + 2] == '}') {
                    lx_push(L, T_VEND, s + i, 3);
                    size_t w = ws_run(s, n, i + 3);
                    lx_count_lines(L, s + i + 3, w);
                    i += 3 + w;
                    *line_starting = w > 0 && s[i - 1] == '\n';
                    break;
                }
                if (s[i] == '}' && i + 1 < n && s[i + 1] == '}') {
                    lx_push(L, T_VEND, s + i, 2);
                    i += 2;
                    *line_starting = 0;
                    break;
                }
            }
        }
        size_t w = ws_run(s, n, i);
        if (w) {
            lx_count_lines(L, s + i, w);
            i += w;
            continue;
        }
        char c = s[i];
        if ((c >= '0' && c <= '9')) {
            size_t j = i;
            while (j < n && ((s[j] >= '0' && s[j] <= '9') || (s[j] == '_' && j + 1 < n && s[j + 1] >= '0' && s[j + 1] <= '9'))) j++;
            int isf = 0;
            if (j + 1 < n && s[j] == '.' && s[j + 1] >= '0' && s[j + 1] <= '9') {
                isf = 1;
                j++;
                while (j < n && ((s[j] >= '0' && s[j] <= '9') || (s[j] == '_' && j + 1 < n && s[j + 1] >= '0' && s[j + 1] <= '9'))) j++;
            }
            if (j < n && (s[j] == 'e' || s[j] == 'E')) {
                size_t k = j + 1;
                if (k < n && (s[k] == '+' || s[k] == '-')) k++;
                if (k < n && s[k] >= '0' && s[k] <= '9') {
                    isf = 1;
                    while (k < n && s[k] >= '0' && s[k] <= '9') k++;
                    j = k;
                }
            }
            char buf[64];
            size_t bn = 0;
            for (size_t k = i; k < j && bn < sizeof buf - 1; k++)
                if (s[k] != '_') buf[bn++] = s[k];
            buf[bn] = 0;
            if (j - i >= sizeof buf - 1) env_fail(L->e, CHAT_TEMPLATE_ERR_UNSUPPORTED, "numeric literal too long");
            lx_push(L, isf ? T_FLOAT : T_INT, s + i, j - i);
            if (isf)
                L->tk[L->ntk - 1].f = strtod(buf, NULL);
            else {
                if (bn > 1 && buf[0] == '0') {
                    for (size_t k = 0; k < bn; k++)
                        if (buf[k] != '0') env_fail(L->e, CHAT_TEMPLATE_ERR_UNSUPPORTED, "unsupported integer literal");
                }
                errno = 0;
                long long x = strtoll(buf, NULL, 10);
                if (errno) env_fail(L->e, CHAT_TEMPLATE_ERR_UNSUPPORTED, "integer literal too large");
                L->tk[L->ntk - 1].i = x;
            }
            i = j;
            continue;
        }
        if (c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
            size_t j = i;
            while (j < n && (s[j] == '_' || (s[j] >= 'a' && s[j] <= 'z') || (s[j] >= 'A' && s[j] <= 'Z') || (s[j] >= '0' && s[j] <= '9'))) j++;
            lx_push(L, T_NAME, s + i, j - i);
            i = j;
            continue;
        }
        if (c == '\'' || c == '"') {
            size_t j = i + 1;
            while (j < n && s[j] != c) {
                if (s[j] == '\\' && j + 1 < n) j++;
                j++;
            }
            if (j >= n) env_fail(L->e, CHAT_TEMPLATE_ERR_PARSE, "unterminated string literal");
            int line = L->line;
            lx_push(L, T_STR, NULL, 0);
            token *k = &L->tk[L->ntk - 1];
            lx_string(L, s + i + 1, j - i - 1, &k->p, &k->n);
            k->line = line;
            lx_count_lines(L, s + i, j - i);
            i = j + 1;
            continue;
        }
        int matched = 0;
        for (int k = 0; OPS2[k]; k++)
            if (i + 1 < n && s[i] == OPS2[k][0] && s[i + 1] == OPS2[k][1]) {
                lx_push(L, T_OP, s + i, 2);
                i += 2;
                matched = 1;
                break;
            }
        if (matched) continue;
        if (c && strchr(OPS1, c)) {
            if (c == '(' || c == '[' || c == '{')
                bal++;
            else if (c == ')' || c == ']' || c == '}') {
                if (bal == 0) env_fail(L->e, CHAT_TEMPLATE_ERR_PARSE, "unexpected '%c'", c);
                bal--;
            }
            lx_push(L, T_OP, s + i, 1);
            i++;
            continue;
        }
        env_fail(L->e, CHAT_TEMPLATE_ERR_PARSE, "unexpected character in tag");
    }
    *pos = i;
}

static int is_name_at(const char *s, size_t n, size_t i, const char *w) {
    size_t k = strlen(w);
    if (i + k > n || memcmp(s + i, w, k) != 0) return 0;
    char c = i + k < n ? s[i + k] : 0;
    return !(c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'));
}

/* Matches "{%[-+]?\s*raw\s*(-%}\s*|%})" at i; returns the end offset or 0. */
static size_t match_raw_begin(const char *s, size_t n, size_t i, const char *word) {
    size_t j = i + 2;
    if (j < n && (s[j] == '-' || s[j] == '+')) j++;
    j += ws_run(s, n, j);
    if (!is_name_at(s, n, j, word)) return 0;
    j += strlen(word);
    j += ws_run(s, n, j);
    if (j + 2 < n + 0 && s[j] == '-' && s[j + 1] == '%' && s[j + 2] == '}') return j + 3 + ws_run(s, n, j + 3);
    if (j + 1 < n && s[j] == '%' && s[j + 1] == '}') return j + 2;
    return 0;
}

static void lex(lexer *L) {
    const char *s = L->s;
    size_t n = L->n, i = 0;
    int line_starting = 1;
    L->line = 1;
    while (i < n) {
        L->e->line = L->line;
        /* find the next tag start */
        size_t j = i;
        const char *hit = NULL;
        while (j + 1 < n) {
            hit = memchr(s + j, '{', n - 1 - j);
            if (!hit) break;
            j = (size_t)(hit - s);
            if (s[j + 1] == '%' || s[j + 1] == '{' || s[j + 1] == '#') break;
            j++;
            hit = NULL;
        }
        if (!hit) {
            lx_push(L, T_DATA, s + i, n - i);
            lx_count_lines(L, s + i, n - i);
            break;
        }
        char kind = s[j + 1];
        char sign = (j + 2 < n && (s[j + 2] == '-' || s[j + 2] == '+')) ? s[j + 2] : 0;
        size_t rawend = kind == '%' ? match_raw_begin(s, n, j, "raw") : 0;
        lx_data_before_tag(L, s + i, j - i, sign, kind == '{', line_starting);
        if (rawend) {
            lx_count_lines(L, s + j, rawend - j);
            line_starting = s[rawend - 1] == '\n';
            /* body up to {%[-+]?\s*endraw\s*(+%}|-%}\s*|%}\n?) */
            size_t k = rawend, m = 0;
            for (;; k++) {
                if (k + 1 >= n) env_fail(L->e, CHAT_TEMPLATE_ERR_PARSE, "missing end of raw directive");
                if (s[k] == '{' && s[k + 1] == '%') {
                    size_t q = k + 2;
                    if (q < n && (s[q] == '-' || s[q] == '+')) q++;
                    q += ws_run(s, n, q);
                    if (!is_name_at(s, n, q, "endraw")) continue;
                    q += 6;
                    q += ws_run(s, n, q);
                    if (q + 2 < n + 0 && s[q] == '+' && s[q + 1] == '%' && s[q + 2] == '}') m = q + 3;
                    else if (q + 2 < n && s[q] == '-' && s[q + 1] == '%' && s[q + 2] == '}') m = q + 3 + ws_run(s, n, q + 3);
                    else if (q + 1 < n && s[q] == '%' && s[q + 1] == '}') m = q + 2 + (q + 2 < n && s[q + 2] == '\n');
                    else continue;
                    break;
                }
            }
            char rsign = (k + 2 < n && (s[k + 2] == '-' || s[k + 2] == '+')) ? s[k + 2] : 0;
            lx_data_before_tag(L, s + rawend, k - rawend, rsign, 0, line_starting);
            lx_count_lines(L, s + k, m - k);
            line_starting = s[m - 1] == '\n';
            i = m;
            continue;
        }
        size_t after = j + 2 + (sign ? 1 : 0);
        if (kind == '#') {
            size_t k = after;
            for (;;) {
                if (k + 1 >= n) env_fail(L->e, CHAT_TEMPLATE_ERR_PARSE, "missing end of comment tag");
                if (s[k] == '#' && s[k + 1] == '}') break;
                k++;
            }
            size_t m;
            if (k > after && s[k - 1] == '-')
                m = k + 2 + ws_run(s, n, k + 2);
            else if (k > after && s[k - 1] == '+')
                m = k + 2;
            else
                m = k + 2 + (k + 2 < n && s[k + 2] == '\n');
            lx_count_lines(L, s + j, m - j);
            line_starting = s[m - 1] == '\n';
            i = m;
            continue;
        }
        lx_push(L, kind == '%' ? T_BBEGIN : T_VBEGIN, s + j, after - j);
        i = after;
        lx_tag(L, &i, kind == '%', &line_starting);
    }
    lx_push(L, T_EOF, s + n, 0);
}

/* ------------------------------------------------------------------ */
/* AST                                                                  */
/* ------------------------------------------------------------------ */

typedef enum {
    /* expressions */
    E_LIT, E_NAME, E_LIST, E_TUPLE, E_DICT, E_ATTR, E_ITEM, E_SLICE, E_CALL, E_FILTER, E_TEST,
    E_NEG, E_POS, E_NOT, E_BIN, E_AND, E_OR, E_CMP, E_COND, E_CONCAT,
    /* statements */
    S_DATA, S_OUT, S_IF, S_FOR, S_SET, S_SETNS, S_SETBLOCK, S_MACRO, S_BREAK, S_CONTINUE
} nkind;

/* Binary / comparison operators. */
enum { OP_ADD, OP_SUB, OP_MUL, OP_DIV, OP_FDIV, OP_MOD, OP_POW, OP_EQ, OP_NE, OP_LT, OP_LE, OP_GT, OP_GE, OP_IN, OP_NOTIN };

typedef struct nlist {
    node **v;
    size_t n, cap;
} nlist;

struct node {
    nkind k;
    int line;
    int op;          /* operator, negation flag for tests, builtin id for filters/tests */
    const char *name; /* identifier, attribute, filter/test name, set target */
    size_t nlen;
    value lit;
    node *a, *b, *c; /* operands; for S_FOR: a=iter, b=filter cond; S_IF: a=cond */
    nlist args;      /* positional args / elements / body / compare operands */
    nlist kwargs;    /* keyword arg values / else body / dict values / macro defaults */
    const char **knames; /* keyword names / for or set targets / macro params */
    size_t *klens;
    size_t nk;
    int *ops; /* compare operators */
};

typedef struct {
    env *e;
    token *tk;
    size_t i, ntk;
    int depth;
    int loops; /* enclosing for loops, for break/continue */
} parser;

static void nl_push(env *e, nlist *l, node *x) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 4;
        node **nv = xalloc(e, xmul(e, cap, sizeof(node *)));
        if (l->n) memcpy(nv, l->v, l->n * sizeof(node *));
        l->v = nv;
        l->cap = cap;
    }
    l->v[l->n++] = x;
}

static node *nnew(parser *P, nkind k) {
    node *x = xcalloc(P->e, sizeof *x);
    x->k = k;
    x->line = P->tk[P->i].line;
    return x;
}

static token *cur(parser *P) { return &P->tk[P->i]; }
static token *peek(parser *P, size_t k) { return P->i + k < P->ntk ? &P->tk[P->i + k] : &P->tk[P->ntk - 1]; }
static int tk_op(token *t, const char *op) { return t->t == T_OP && t->n == strlen(op) && memcmp(t->p, op, t->n) == 0; }
static int tk_name(token *t, const char *nm) { return t->t == T_NAME && t->n == strlen(nm) && memcmp(t->p, nm, t->n) == 0; }

static void p_fail(parser *P, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
static void p_fail(parser *P, const char *fmt, ...) {
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    P->e->line = cur(P)->line;
    env_fail(P->e, CHAT_TEMPLATE_ERR_PARSE, "syntax error: %s", msg);
}
static void p_unsupported(parser *P, const char *what, const char *nm, size_t n) __attribute__((noreturn));
static void p_unsupported(parser *P, const char *what, const char *nm, size_t n) {
    P->e->line = cur(P)->line;
    env_fail(P->e, CHAT_TEMPLATE_ERR_UNSUPPORTED, "unsupported %s '%.*s'", what, (int)(n > 64 ? 64 : n), nm);
}

static const char *tk_desc(token *t) {
    switch (t->t) {
    case T_EOF: return "end of template";
    case T_DATA: return "template data";
    case T_VBEGIN: return "'{{'";
    case T_VEND: return "'}}'";
    case T_BBEGIN: return "'{%'";
    case T_BEND: return "'%}'";
    case T_NAME: return "a name";
    case T_STR: return "a string";
    case T_INT:
    case T_FLOAT: return "a number";
    default: return "an operator";
    }
}

static void expect_op(parser *P, const char *op) {
    if (!tk_op(cur(P), op)) p_fail(P, "expected '%s', got %s", op, tk_desc(cur(P)));
    P->i++;
}
static token *expect_name(parser *P) {
    if (cur(P)->t != T_NAME) p_fail(P, "expected a name, got %s", tk_desc(cur(P)));
    return &P->tk[P->i++];
}

static node *parse_expr(parser *P, int with_condexpr);
static node *parse_tuple(parser *P, int simplified, int with_condexpr, int explicit_parens, const char *extra_end);
static node *parse_unary(parser *P, int with_filter);

/* Builtin filters and tests we implement; ids are indexes. */
static const char *const FILTERS[] = {
    "length", "count", "string", "trim", "upper", "lower", "capitalize", "title", "replace", "first", "last",
    "join", "default", "d", "items", "selectattr", "rejectattr", "select", "reject", "map", "list", "int",
    "float", "safe", "abs", "reverse", "tojson", "escape", "e", "sort", "unique", "min", "max", "sum",
    "indent", "dictsort", "wordcount", "center", "batch", "slice", "round", "format", "truncate", "striptags",
    "urlencode", "xmlattr", "forceescape", "filesizeformat", "pprint", "random", "groupby", "attr", "wordwrap",
    "urlize", "bool", "tojson", NULL};
enum { F_LENGTH, F_COUNT, F_STRING, F_TRIM, F_UPPER, F_LOWER, F_CAPITALIZE, F_TITLE, F_REPLACE, F_FIRST, F_LAST,
       F_JOIN, F_DEFAULT, F_D, F_ITEMS, F_SELECTATTR, F_REJECTATTR, F_SELECT, F_REJECT, F_MAP, F_LIST, F_INT,
       F_FLOAT, F_SAFE, F_ABS, F_REVERSE, F_TOJSON, F_ESCAPE, F_E, F_SORT, F_UNIQUE, F_MIN, F_MAX, F_SUM,
       F_INDENT, F_DICTSORT, F_IMPLEMENTED_END };
static const char *const TESTS[] = {
    "defined", "undefined", "none", "boolean", "false", "true", "integer", "float", "number", "string",
    "mapping", "iterable", "sequence", "callable", "sameas", "lower", "upper", "odd", "even", "divisibleby",
    "eq", "equalto", "==", "ne", "!=", "lt", "lessthan", "<", "le", "<=", "gt", "greaterthan", ">", "ge", ">=",
    "in", "escaped", "filter", "test", NULL};
enum { TS_DEFINED, TS_UNDEFINED, TS_NONE, TS_BOOLEAN, TS_FALSE, TS_TRUE, TS_INTEGER, TS_FLOAT, TS_NUMBER,
       TS_STRING, TS_MAPPING, TS_ITERABLE, TS_SEQUENCE, TS_CALLABLE, TS_SAMEAS, TS_LOWER, TS_UPPER, TS_ODD,
       TS_EVEN, TS_DIVISIBLEBY, TS_EQ, TS_EQUALTO, TS_EQ2, TS_NE, TS_NE2, TS_LT, TS_LESSTHAN, TS_LT2, TS_LE,
       TS_LE2, TS_GT, TS_GREATERTHAN, TS_GT2, TS_GE, TS_GE2, TS_IN, TS_IMPLEMENTED_END };

static int lookup_name(const char *const *tbl, const char *s, size_t n) {
    for (int i = 0; tbl[i]; i++)
        if (strlen(tbl[i]) == n && memcmp(tbl[i], s, n) == 0) return i;
    return -1;
}

static void parse_call_args(parser *P, node *x) {
    expect_op(P, "(");
    size_t cap = 0;
    while (!tk_op(cur(P), ")")) {
        if (x->args.n || x->nk) expect_op(P, ",");
        if (tk_op(cur(P), ")")) break;
        if (tk_op(cur(P), "*") || tk_op(cur(P), "**")) p_unsupported(P, "syntax", "*args/**kwargs", 14);
        if (cur(P)->t == T_NAME && tk_op(peek(P, 1), "=")) {
            token *nm = &P->tk[P->i];
            P->i += 2;
            if (x->nk == cap) {
                cap = cap ? cap * 2 : 4;
                const char **nk = xalloc(P->e, cap * sizeof(char *));
                size_t *nl = xalloc(P->e, cap * sizeof(size_t));
                if (x->nk) {
                    memcpy(nk, x->knames, x->nk * sizeof(char *));
                    memcpy(nl, x->klens, x->nk * sizeof(size_t));
                }
                x->knames = nk;
                x->klens = nl;
            }
            x->knames[x->nk] = nm->p;
            x->klens[x->nk] = nm->n;
            x->nk++;
            nl_push(P->e, &x->kwargs, parse_expr(P, 1));
        } else {
            if (x->nk) p_fail(P, "positional argument after keyword argument");
            nl_push(P->e, &x->args, parse_expr(P, 1));
        }
    }
    expect_op(P, ")");
}

static node *parse_primary(parser *P) {
    token *t = cur(P);
    node *x;
    if (++P->depth > P->e->lim.max_depth) p_fail(P, "expression nested too deeply");
    switch (t->t) {
    case T_NAME:
        x = nnew(P, E_LIT);
        if (tk_name(t, "true") || tk_name(t, "True"))
            x->lit = mk_bool(1);
        else if (tk_name(t, "false") || tk_name(t, "False"))
            x->lit = mk_bool(0);
        else if (tk_name(t, "none") || tk_name(t, "None"))
            x->lit = mk_none();
        else {
            x->k = E_NAME;
            x->name = t->p;
            x->nlen = t->n;
        }
        P->i++;
        break;
    case T_STR: {
        x = nnew(P, E_LIT);
        sbuf b = {0};
        while (cur(P)->t == T_STR) {
            sb_put(P->e, &b, cur(P)->p, cur(P)->n);
            P->i++;
        }
        x->lit = mk_sbuf(&b);
        break;
    }
    case T_INT:
        x = nnew(P, E_LIT);
        x->lit = mk_int(t->i);
        P->i++;
        break;
    case T_FLOAT:
        x = nnew(P, E_LIT);
        x->lit = mk_float(t->f);
        P->i++;
        break;
    case T_OP:
        if (tk_op(t, "(")) {
            P->i++;
            x = parse_tuple(P, 0, 1, 1, NULL);
            expect_op(P, ")");
        } else if (tk_op(t, "[")) {
            x = nnew(P, E_LIST);
            P->i++;
            while (!tk_op(cur(P), "]")) {
                if (x->args.n) expect_op(P, ",");
                if (tk_op(cur(P), "]")) break;
                nl_push(P->e, &x->args, parse_expr(P, 1));
            }
            expect_op(P, "]");
        } else if (tk_op(t, "{")) {
            x = nnew(P, E_DICT);
            P->i++;
            while (!tk_op(cur(P), "}")) {
                if (x->args.n) expect_op(P, ",");
                if (tk_op(cur(P), "}")) break;
                nl_push(P->e, &x->args, parse_expr(P, 1));
                expect_op(P, ":");
                nl_push(P->e, &x->kwargs, parse_expr(P, 1));
            }
            expect_op(P, "}");
        } else
            p_fail(P, "unexpected '%.*s'", (int)t->n, t->p);
        break;
    default: p_fail(P, "unexpected %s", tk_desc(t));
    }
    P->depth--;
    return x;
}

/* Tuple or single expression (jinja2 Parser.parse_tuple). extra_end: a name
 * that ends the tuple ("in" for for-loop targets). */
static node *parse_tuple(parser *P, int simplified, int with_condexpr, int explicit_parens, const char *extra_end) {
    node *t = nnew(P, E_TUPLE);
    int is_tuple = 0;
    for (;;) {
        if (t->args.n) expect_op(P, ",");
        token *c = cur(P);
        if (c->t == T_VEND || c->t == T_BEND || c->t == T_EOF || tk_op(c, ")") || tk_op(c, "]") || tk_op(c, "}") ||
            (extra_end && tk_name(c, extra_end)))
            break;
        node *x = simplified ? parse_primary(P) : parse_expr(P, with_condexpr);
        nl_push(P->e, &t->args, x);
        if (tk_op(cur(P), ","))
            is_tuple = 1;
        else
            break;
    }
    if (!is_tuple) {
        if (t->args.n) return t->args.v[0];
        if (!explicit_parens) p_fail(P, "expected an expression, got %s", tk_desc(cur(P)));
    }
    return t;
}

static node *parse_subscript_part(parser *P) {
    /* returns E_SLICE-less node or a slice descriptor node */
    node *args[3] = {NULL, NULL, NULL};
    if (tk_op(cur(P), ":") == 0) {
        node *x = parse_expr(P, 1);
        if (!tk_op(cur(P), ":")) return x;
        args[0] = x;
    }
    node *s = nnew(P, E_SLICE);
    expect_op(P, ":");
    if (!tk_op(cur(P), "]") && !tk_op(cur(P), ",") && !tk_op(cur(P), ":")) args[1] = parse_expr(P, 1);
    if (tk_op(cur(P), ":")) {
        P->i++;
        if (!tk_op(cur(P), "]") && !tk_op(cur(P), ",")) args[2] = parse_expr(P, 1);
    }
    s->a = args[0];
    s->b = args[1];
    s->c = args[2];
    return s;
}

static node *parse_postfix(parser *P, node *x) {
    for (;;) {
        token *t = cur(P);
        if (tk_op(t, ".")) {
            P->i++;
            token *a = cur(P);
            if (a->t == T_NAME) {
                node *g = nnew(P, E_ATTR);
                g->a = x;
                g->name = a->p;
                g->nlen = a->n;
                P->i++;
                x = g;
            } else if (a->t == T_INT) {
                node *g = nnew(P, E_ITEM);
                g->a = x;
                g->b = nnew(P, E_LIT);
                g->b->lit = mk_int(a->i);
                P->i++;
                x = g;
            } else
                p_fail(P, "expected name or number after '.'");
        } else if (tk_op(t, "[")) {
            P->i++;
            node *first = parse_subscript_part(P);
            if (tk_op(cur(P), ",")) {
                node *tp = nnew(P, E_TUPLE);
                nl_push(P->e, &tp->args, first);
                while (tk_op(cur(P), ",")) {
                    P->i++;
                    if (tk_op(cur(P), "]")) break;
                    nl_push(P->e, &tp->args, parse_subscript_part(P));
                }
                first = tp;
            }
            expect_op(P, "]");
            if (first->k == E_SLICE) {
                /* E_SLICE: a, b, c are start, stop, step; args[0] is the sliced object */
                nl_push(P->e, &first->args, x);
                x = first;
            } else {
                node *g = nnew(P, E_ITEM);
                g->a = x;
                g->b = first;
                x = g;
            }
        } else if (tk_op(t, "(")) {
            node *c = nnew(P, E_CALL);
            c->a = x;
            parse_call_args(P, c);
            x = c;
        } else
            break;
    }
    return x;
}

static node *parse_filter_expr(parser *P, node *x) {
    for (;;) {
        token *t = cur(P);
        if (tk_op(t, "|")) {
            P->i++;
            token *nm = expect_name(P);
            while (tk_op(cur(P), ".")) p_unsupported(P, "dotted filter name", nm->p, nm->n);
            node *f = nnew(P, E_FILTER);
            f->a = x;
            f->name = nm->p;
            f->nlen = nm->n;
            f->op = lookup_name(FILTERS, nm->p, nm->n);
            if (f->op < 0) {
                P->i--;
                P->e->line = cur(P)->line;
                env_fail(P->e, CHAT_TEMPLATE_ERR_PARSE, "no filter named '%.*s'", (int)(nm->n > 64 ? 64 : nm->n), nm->p);
            }
            if (f->op >= F_IMPLEMENTED_END) p_unsupported(P, "filter", nm->p, nm->n);
            if (tk_op(cur(P), "(")) parse_call_args(P, f);
            x = f;
        } else if (tk_name(t, "is")) {
            P->i++;
            node *te = nnew(P, E_TEST);
            te->a = x;
            if (tk_name(cur(P), "not")) {
                te->op = 1;
                P->i++;
            }
            token *nm = cur(P);
            if (nm->t == T_NAME || (nm->t == T_OP && (tk_op(nm, "==") || tk_op(nm, "!=") || tk_op(nm, "<") ||
                                                       tk_op(nm, "<=") || tk_op(nm, ">") || tk_op(nm, ">="))))
                P->i++;
            else
                p_fail(P, "expected a test name");
            if (nm->t == T_NAME && (tk_name(nm, "none") || tk_name(nm, "true") || tk_name(nm, "false"))) {
                /* keywords parsed as names */
            }
            int id = lookup_name(TESTS, nm->p, nm->n);
            if (id < 0) {
                P->i--;
                P->e->line = cur(P)->line;
                env_fail(P->e, CHAT_TEMPLATE_ERR_PARSE, "no test named '%.*s'", (int)(nm->n > 64 ? 64 : nm->n), nm->p);
            }
            if (id >= TS_IMPLEMENTED_END) p_unsupported(P, "test", nm->p, nm->n);
            te->name = nm->p;
            te->nlen = nm->n;
            te->c = NULL;
            te->b = NULL;
            /* store test id in lit.u.i */
            te->lit = mk_int(id);
            token *a = cur(P);
            if (tk_op(a, "("))
                parse_call_args(P, te);
            else if ((a->t == T_NAME || a->t == T_STR || a->t == T_INT || a->t == T_FLOAT || tk_op(a, "(") ||
                      tk_op(a, "[") || tk_op(a, "{")) &&
                     !tk_name(a, "else") && !tk_name(a, "or") && !tk_name(a, "and")) {
                if (tk_name(a, "is")) p_fail(P, "you cannot chain multiple tests with is");
                node *arg = parse_postfix(P, parse_primary(P));
                nl_push(P->e, &te->args, arg);
            }
            x = te;
        } else if (tk_op(t, "(")) {
            node *c = nnew(P, E_CALL);
            c->a = x;
            parse_call_args(P, c);
            x = c;
        } else
            break;
    }
    return x;
}

static node *parse_unary(parser *P, int with_filter) {
    node *x;
    if (++P->depth > P->e->lim.max_depth) p_fail(P, "expression nested too deeply");
    if (tk_op(cur(P), "-") || tk_op(cur(P), "+")) {
        x = nnew(P, tk_op(cur(P), "-") ? E_NEG : E_POS);
        P->i++;
        x->a = parse_unary(P, 0);
    } else
        x = parse_primary(P);
    x = parse_postfix(P, x);
    if (with_filter) x = parse_filter_expr(P, x);
    P->depth--;
    return x;
}

static node *bin(parser *P, int op, node *a, node *b) {
    node *x = nnew(P, E_BIN);
    x->op = op;
    x->a = a;
    x->b = b;
    return x;
}

static node *parse_pow(parser *P) {
    node *l = parse_unary(P, 1);
    while (tk_op(cur(P), "**")) {
        P->i++;
        l = bin(P, OP_POW, l, parse_unary(P, 1));
    }
    return l;
}
static node *parse_math2(parser *P) {
    node *l = parse_pow(P);
    for (;;) {
        int op = tk_op(cur(P), "*") ? OP_MUL : tk_op(cur(P), "/") ? OP_DIV : tk_op(cur(P), "//") ? OP_FDIV
                 : tk_op(cur(P), "%") ? OP_MOD : -1;
        if (op < 0) break;
        P->i++;
        l = bin(P, op, l, parse_pow(P));
    }
    return l;
}
static node *parse_concat(parser *P) {
    node *l = parse_math2(P);
    if (!tk_op(cur(P), "~")) return l;
    node *c = nnew(P, E_CONCAT);
    nl_push(P->e, &c->args, l);
    while (tk_op(cur(P), "~")) {
        P->i++;
        nl_push(P->e, &c->args, parse_math2(P));
    }
    return c;
}
static node *parse_math1(parser *P) {
    node *l = parse_concat(P);
    for (;;) {
        int op = tk_op(cur(P), "+") ? OP_ADD : tk_op(cur(P), "-") ? OP_SUB : -1;
        if (op < 0) break;
        P->i++;
        l = bin(P, op, l, parse_concat(P));
    }
    return l;
}
static node *parse_compare(parser *P) {
    node *first = parse_math1(P);
    node *c = NULL;
    size_t cap = 0;
    for (;;) {
        token *t = cur(P);
        int op = tk_op(t, "==") ? OP_EQ : tk_op(t, "!=") ? OP_NE : tk_op(t, "<") ? OP_LT : tk_op(t, "<=") ? OP_LE
                 : tk_op(t, ">") ? OP_GT : tk_op(t, ">=") ? OP_GE : tk_name(t, "in") ? OP_IN : -1;
        if (op < 0 && tk_name(t, "not") && tk_name(peek(P, 1), "in")) {
            op = OP_NOTIN;
            P->i++;
        }
        if (op < 0) break;
        P->i++;
        if (!c) {
            c = nnew(P, E_CMP);
            c->a = first;
        }
        if (c->args.n == cap) {
            cap = cap ? cap * 2 : 4;
            int *no = xalloc(P->e, cap * sizeof(int));
            if (c->args.n) memcpy(no, c->ops, c->args.n * sizeof(int));
            c->ops = no;
        }
        c->ops[c->args.n] = op;
        nl_push(P->e, &c->args, parse_math1(P));
    }
    return c ? c : first;
}
static node *parse_not(parser *P) {
    if (tk_name(cur(P), "not")) {
        if (++P->depth > P->e->lim.max_depth) p_fail(P, "expression nested too deeply");
        node *x = nnew(P, E_NOT);
        P->i++;
        x->a = parse_not(P);
        P->depth--;
        return x;
    }
    return parse_compare(P);
}
static node *parse_and(parser *P) {
    node *l = parse_not(P);
    while (tk_name(cur(P), "and")) {
        P->i++;
        node *x = nnew(P, E_AND);
        x->a = l;
        x->b = parse_not(P);
        l = x;
    }
    return l;
}
static node *parse_or(parser *P) {
    node *l = parse_and(P);
    while (tk_name(cur(P), "or")) {
        P->i++;
        node *x = nnew(P, E_OR);
        x->a = l;
        x->b = parse_and(P);
        l = x;
    }
    return l;
}
static node *parse_expr(parser *P, int with_condexpr) {
    if (++P->depth > P->e->lim.max_depth) p_fail(P, "expression nested too deeply");
    node *x = parse_or(P);
    if (with_condexpr)
        while (tk_name(cur(P), "if")) {
            P->i++;
            node *c = nnew(P, E_COND);
            c->a = parse_or(P); /* condition */
            c->b = x;           /* then */
            if (tk_name(cur(P), "else")) {
                P->i++;
                c->c = parse_expr(P, 1);
            }
            x = c;
        }
    P->depth--;
    return x;
}

/* ---- statements ---- */

static void expect_block_end(parser *P) {
    if (cur(P)->t != T_BEND) p_fail(P, "expected end of statement block, got %s", tk_desc(cur(P)));
    P->i++;
}

static void parse_body(parser *P, nlist *body, const char *const *ends);

/* Assignment targets: one name, or names separated by commas (optionally parenthesized). */
static void parse_targets(parser *P, node *x, const char *extra_end) {
    int paren = 0;
    if (tk_op(cur(P), "(")) {
        paren = 1;
        P->i++;
    }
    size_t cap = 8;
    x->knames = xalloc(P->e, cap * sizeof(char *));
    x->klens = xalloc(P->e, cap * sizeof(size_t));
    for (;;) {
        token *nm = expect_name(P);
        if (x->nk == cap) p_unsupported(P, "assignment target list", nm->p, nm->n);
        x->knames[x->nk] = nm->p;
        x->klens[x->nk] = nm->n;
        x->nk++;
        if (!tk_op(cur(P), ",")) break;
        P->i++;
        if (paren && tk_op(cur(P), ")")) break;
        if (extra_end && tk_name(cur(P), extra_end)) break;
    }
    if (paren) expect_op(P, ")");
    x->op = x->nk > 1 || paren; /* unpack */
}

static node *parse_statement(parser *P) {
    token *kw = cur(P);
    if (kw->t != T_NAME) p_fail(P, "tag name expected");
    int line = kw->line;
    P->e->line = line;
    node *x;
    if (tk_name(kw, "if")) {
        P->i++;
        x = nnew(P, S_IF);
        x->line = line;
        x->a = parse_tuple(P, 0, 1, 0, NULL);
        expect_block_end(P);
        static const char *const ends[] = {"elif", "else", "endif", NULL};
        node *curif = x;
        for (;;) {
            parse_body(P, &curif->args, ends);
            token *t = cur(P);
            P->i++;
            if (tk_name(t, "elif")) {
                node *el = nnew(P, S_IF);
                el->a = parse_tuple(P, 0, 1, 0, NULL);
                expect_block_end(P);
                nl_push(P->e, &curif->kwargs, el);
                curif = el;
                continue;
            }
            if (tk_name(t, "else")) {
                expect_block_end(P);
                static const char *const ends2[] = {"endif", NULL};
                parse_body(P, &curif->kwargs, ends2);
                P->i++;
            }
            expect_block_end(P);
            break;
        }
        return x;
    }
    if (tk_name(kw, "for")) {
        P->i++;
        x = nnew(P, S_FOR);
        x->line = line;
        parse_targets(P, x, "in");
        if (!tk_name(cur(P), "in")) p_fail(P, "expected 'in'");
        P->i++;
        x->a = parse_tuple(P, 0, 0, 0, "recursive");
        if (tk_name(cur(P), "if")) {
            P->i++;
            x->b = parse_expr(P, 1);
        }
        if (tk_name(cur(P), "recursive")) p_unsupported(P, "feature", "recursive loops", 15);
        expect_block_end(P);
        static const char *const ends[] = {"endfor", "else", NULL};
        P->loops++;
        parse_body(P, &x->args, ends);
        P->loops--;
        if (tk_name(cur(P), "else")) {
            P->i++;
            expect_block_end(P);
            static const char *const ends2[] = {"endfor", NULL};
            parse_body(P, &x->kwargs, ends2);
        }
        P->i++;
        expect_block_end(P);
        return x;
    }
    if (tk_name(kw, "set")) {
        P->i++;
        if (cur(P)->t == T_NAME && tk_op(peek(P, 1), ".")) {
            x = nnew(P, S_SETNS);
            x->line = line;
            token *ns = expect_name(P);
            P->i++;
            token *attr = expect_name(P);
            x->name = ns->p;
            x->nlen = ns->n;
            x->knames = xalloc(P->e, sizeof(char *));
            x->klens = xalloc(P->e, sizeof(size_t));
            x->knames[0] = attr->p;
            x->klens[0] = attr->n;
            expect_op(P, "=");
            x->a = parse_tuple(P, 0, 1, 0, NULL);
            expect_block_end(P);
            return x;
        }
        x = nnew(P, S_SET);
        x->line = line;
        parse_targets(P, x, NULL);
        if (tk_op(cur(P), "=")) {
            P->i++;
            x->a = parse_tuple(P, 0, 1, 0, NULL);
            expect_block_end(P);
            return x;
        }
        if (x->nk != 1) p_fail(P, "expected '='");
        if (tk_op(cur(P), "|")) p_unsupported(P, "feature", "filtered block set", 18);
        expect_block_end(P);
        x->k = S_SETBLOCK;
        static const char *const ends[] = {"endset", NULL};
        parse_body(P, &x->args, ends);
        P->i++;
        expect_block_end(P);
        return x;
    }
    if (tk_name(kw, "macro")) {
        P->i++;
        x = nnew(P, S_MACRO);
        x->line = line;
        token *nm = expect_name(P);
        x->name = nm->p;
        x->nlen = nm->n;
        expect_op(P, "(");
        size_t cap = 0;
        while (!tk_op(cur(P), ")")) {
            if (x->nk) expect_op(P, ",");
            if (tk_op(cur(P), ")")) break;
            token *pn = expect_name(P);
            if (x->nk == cap) {
                cap = cap ? cap * 2 : 4;
                const char **nk = xalloc(P->e, cap * sizeof(char *));
                size_t *nl = xalloc(P->e, cap * sizeof(size_t));
                node **dv = xalloc(P->e, cap * sizeof(node *));
                if (x->nk) {
                    memcpy(nk, x->knames, x->nk * sizeof(char *));
                    memcpy(nl, x->klens, x->nk * sizeof(size_t));
                    memcpy(dv, x->kwargs.v, x->nk * sizeof(node *));
                }
                x->knames = nk;
                x->klens = nl;
                x->kwargs.v = dv;
                x->kwargs.cap = cap;
            }
            x->knames[x->nk] = pn->p;
            x->klens[x->nk] = pn->n;
            node *def = NULL;
            if (tk_op(cur(P), "=")) {
                P->i++;
                def = parse_expr(P, 1);
            } else if (x->nk && x->kwargs.v[x->nk - 1])
                p_fail(P, "non-default argument follows default argument");
            x->kwargs.v[x->nk] = def;
            x->nk++;
            x->kwargs.n = x->nk;
        }
        P->i++;
        expect_block_end(P);
        static const char *const ends[] = {"endmacro", NULL};
        int saved_loops = P->loops;
        P->loops = 0;
        parse_body(P, &x->args, ends);
        P->loops = saved_loops;
        P->i++;
        if (cur(P)->t == T_NAME) P->i++; /* {% endmacro name %} */
        expect_block_end(P);
        return x;
    }
    if (tk_name(kw, "break") || tk_name(kw, "continue")) {
        if (!P->loops) p_fail(P, "'%.*s' outside of a loop", (int)kw->n, kw->p);
        x = nnew(P, tk_name(kw, "break") ? S_BREAK : S_CONTINUE);
        P->i++;
        expect_block_end(P);
        return x;
    }
    if (tk_name(kw, "generation")) {
        /* transformers' AssistantTracker: renders its body unchanged */
        P->i++;
        expect_block_end(P);
        x = nnew(P, S_IF);
        x->a = nnew(P, E_LIT);
        x->a->lit = mk_bool(1);
        static const char *const ends[] = {"endgeneration", NULL};
        parse_body(P, &x->args, ends);
        P->i++;
        expect_block_end(P);
        return x;
    }
    static const char *const known[] = {"filter", "call", "include", "import", "from", "extends", "block", "with",
                                        "autoescape", "do", "trans", NULL};
    if (lookup_name(known, kw->p, kw->n) >= 0) p_unsupported(P, "statement", kw->p, kw->n);
    p_fail(P, "encountered unknown tag '%.*s'", (int)(kw->n > 64 ? 64 : kw->n), kw->p);
}

/* Parses statements until a block whose tag name is in ends (left at that
 * name), or to end of template when ends is NULL. */
static void parse_body(parser *P, nlist *body, const char *const *ends) {
    if (++P->depth > P->e->lim.max_depth) p_fail(P, "blocks nested too deeply");
    for (;;) {
        token *t = cur(P);
        if (t->t == T_EOF) {
            if (ends) {
                P->e->line = t->line;
                env_fail(P->e, CHAT_TEMPLATE_ERR_PARSE, "syntax error: unexpected end of template, expected '%s'", ends[0]);
            }
            break;
        }
        if (t->t == T_DATA) {
            node *x = nnew(P, S_DATA);
            x->lit = mk_str(t->p, t->n);
            nl_push(P->e, body, x);
            P->i++;
        } else if (t->t == T_VBEGIN) {
            P->i++;
            node *x = nnew(P, S_OUT);
            x->a = parse_tuple(P, 0, 1, 0, NULL);
            if (cur(P)->t != T_VEND) p_fail(P, "expected '}}', got %s", tk_desc(cur(P)));
            P->i++;
            nl_push(P->e, body, x);
        } else if (t->t == T_BBEGIN) {
            P->i++;
            token *kw = cur(P);
            if (ends && kw->t == T_NAME && lookup_name(ends, kw->p, kw->n) >= 0) break;
            if (kw->t == T_NAME && kw->n > 3 && !memcmp(kw->p, "end", 3))
                p_fail(P, "unexpected '%.*s'", (int)(kw->n > 64 ? 64 : kw->n), kw->p);
            if (kw->t == T_NAME && (tk_name(kw, "else") || tk_name(kw, "elif")))
                p_fail(P, "unexpected '%.*s'", (int)kw->n, kw->p);
            nl_push(P->e, body, parse_statement(P));
        } else
            p_fail(P, "unexpected %s", tk_desc(t));
    }
    P->depth--;
}

/* ------------------------------------------------------------------ */
/* Evaluator                                                            */
/* ------------------------------------------------------------------ */

struct scope {
    scope *parent;
    size_t n, cap;
    const char **names;
    size_t *lens;
    value *vals;
};

/* Builtin functions and bound methods. */
enum {
    G_RANGE, G_NAMESPACE, G_DICT, G_RAISE, G_STRFTIME, G_UNSUPPORTED, G_MACRO,
    M_STARTSWITH, M_ENDSWITH, M_STRIP, M_LSTRIP, M_RSTRIP, M_SPLIT, M_RSPLIT, M_REPLACE, M_UPPER, M_LOWER,
    M_TITLE, M_CAPITALIZE, M_FIND, M_RFIND, M_COUNT, M_JOIN, M_FORMAT, M_ISDIGIT, M_ISALPHA, M_ISSPACE,
    M_ISALNUM, M_ISUPPER, M_ISLOWER,
    M_ITEMS, M_KEYS, M_VALUES, M_GET,
    M_UNSAFE, M_STR_OTHER, M_DICT_OTHER, M_LIST_OTHER,
};
static const char *const STR_METHODS[] = {"startswith", "endswith", "strip", "lstrip", "rstrip", "split", "rsplit",
                                          "replace", "upper", "lower", "title", "capitalize", "find", "rfind",
                                          "count", "join", "format", "isdigit", "isalpha", "isspace", "isalnum",
                                          "isupper", "islower", NULL};
static const char *const STR_OTHER[] = {"casefold", "center", "encode", "expandtabs", "format_map", "index",
                                        "isascii", "isdecimal", "isidentifier", "isnumeric", "isprintable",
                                        "istitle", "ljust", "maketrans", "partition", "removeprefix",
                                        "removesuffix", "rindex", "rjust", "rpartition", "splitlines", "swapcase",
                                        "translate", "zfill", NULL};
static const char *const DICT_METHODS[] = {"items", "keys", "values", "get", NULL};
static const char *const DICT_UNSAFE[] = {"clear", "pop", "popitem", "setdefault", "update", NULL};
static const char *const DICT_OTHER[] = {"copy", "fromkeys", NULL};
static const char *const LIST_UNSAFE[] = {"append", "clear", "extend", "insert", "pop", "remove", "reverse", "sort", NULL};
static const char *const LIST_OTHER[] = {"copy", "count", "index", NULL};

typedef struct {
    value *pos;
    size_t npos;
    const char **kn;
    size_t *kl;
    value *kv;
    size_t nk;
} cargs;

enum { EX_NORMAL, EX_BREAK, EX_CONTINUE };

static value eval(env *e, scope *sc, node *x);
static int exec_body(env *e, scope *sc, nlist *body);
static value do_call(env *e, value fn, cargs *a, const char *what);

static void r_fail(env *e, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
static void r_fail(env *e, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    env_fail(e, CHAT_TEMPLATE_ERR_RENDER, "%s", msg);
}
static void undef_fail(env *e, value u) __attribute__((noreturn));
static void undef_fail(env *e, value u) {
    if (u.u.s.p) r_fail(e, "'%.*s' is undefined", (int)(u.u.s.n > 64 ? 64 : u.u.s.n), u.u.s.p);
    r_fail(e, "value is undefined");
}

static scope *scope_new(env *e, scope *parent) {
    scope *s = xcalloc(e, sizeof *s);
    s->parent = parent;
    return s;
}
static value *scope_find(scope *s, const char *nm, size_t n) {
    for (; s; s = s->parent)
        for (size_t i = s->n; i > 0; i--)
            if (s->lens[i - 1] == n && memcmp(s->names[i - 1], nm, n) == 0) return &s->vals[i - 1];
    return NULL;
}
static void scope_set(env *e, scope *s, const char *nm, size_t n, value v) {
    for (size_t i = 0; i < s->n; i++)
        if (s->lens[i] == n && memcmp(s->names[i], nm, n) == 0) {
            s->vals[i] = v;
            return;
        }
    if (s->n >= 10000) env_fail(e, CHAT_TEMPLATE_ERR_LIMIT, "too many variables in one scope");
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 8;
        const char **nn = xalloc(e, cap * sizeof(char *));
        size_t *nl = xalloc(e, cap * sizeof(size_t));
        value *nv = xalloc(e, xmul(e, cap, sizeof(value)));
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

static void step(env *e) {
    if (++e->steps > e->lim.max_steps) env_fail(e, CHAT_TEMPLATE_ERR_LIMIT, "step limit exceeded");
}

static const char *type_name(value v) {
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

static int truthy(value v) {
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

static value mk_func(env *e, int id, value self) {
    func *f = xcalloc(e, sizeof *f);
    f->id = id;
    f->self = self;
    value v = {.t = V_FUNC};
    v.u.fn = f;
    return v;
}

/* Iterates v as Python would: a fresh list of items. */
static list *iter_list(env *e, value v) {
    switch (v.t) {
    case V_UNDEF: return list_new(e, 0);
    case V_LIST: return v.u.l;
    case V_DICT: {
        list *l = list_new(e, v.u.d->n);
        for (size_t i = 0; i < v.u.d->n; i++) list_push(e, l, v.u.d->k[i]);
        return l;
    }
    case V_STR: {
        list *l = list_new(e, 0);
        size_t i = 0;
        while (i < v.u.s.n) {
            size_t k;
            u8_dec(v.u.s.p + i, v.u.s.n - i, &k);
            list_push(e, l, mk_str(v.u.s.p + i, k));
            i += k;
        }
        return l;
    }
    default: r_fail(e, "'%s' object is not iterable", type_name(v));
    }
}

static int py_lt(env *e, value a, value b) {
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
            if (py_eq(a.u.l->v[i], b.u.l->v[i])) continue;
            return py_lt(e, a.u.l->v[i], b.u.l->v[i]);
        }
        return a.u.l->n < b.u.l->n;
    }
    if (a.t == V_UNDEF) undef_fail(e, a);
    if (b.t == V_UNDEF) undef_fail(e, b);
    r_fail(e, "'<' not supported between instances of '%s' and '%s'", type_name(a), type_name(b));
}

/* Linear-time substring search (glibc two-way memmem), charged by size. */
static const char *memmem_(const char *h, size_t hn, const char *nd, size_t nn) {
    if (nn == 0) return h;
    if (nn > hn) return NULL;
    const char *r = memmem(h, hn, nd, nn);
    charge((r ? (size_t)(r - h) + nn : hn) + nn); /* about what two-way scanned */
    return r;
}
static int64_t str_find(const char *h, size_t hn, const char *nd, size_t nn, size_t from) {
    if (from > hn) return -1;
    const char *p = memmem_(h + from, hn - from, nd, nn);
    return p ? (int64_t)(p - h) : -1;
}
/* Byte-reversed copy, for searching from the right with memmem. */
static char *str_rev(env *e, const char *s, size_t n) {
    char *r = xalloc(e, n + 1);
    for (size_t i = 0; i < n; i++) r[i] = s[n - 1 - i];
    r[n] = 0;
    return r;
}

static int py_in(env *e, value a, value b) {
    switch (b.t) {
    case V_STR:
        if (a.t != V_STR) r_fail(e, "'in <string>' requires string as left operand, not %s", type_name(a));
        return memmem_(b.u.s.p, b.u.s.n, a.u.s.p, a.u.s.n) != NULL;
    case V_LIST:
        for (size_t i = 0; i < b.u.l->n; i++)
            if (py_eq(a, b.u.l->v[i])) return 1;
        return 0;
    case V_DICT:
        if ((a.t == V_LIST && !a.u.l->tuple) || a.t == V_DICT || a.t == V_NS) r_fail(e, "unhashable type: '%s'", type_name(a));
        return dict_find(b.u.d, a) != NULL;
    case V_UNDEF: return 0;
    default: r_fail(e, "argument of type '%s' is not iterable", type_name(b));
    }
}

static value getattr_v(env *e, value o, const char *nm, size_t n);

static value getitem_v(env *e, value o, value k) {
    switch (o.t) {
    case V_UNDEF: undef_fail(e, o);
    case V_DICT: {
        value *p = dict_find(o.u.d, k);
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
            int64_t len = (int64_t)u8_len(o.u.s.p, o.u.s.n);
            if (i < 0) i += len;
            if (i >= 0 && i < len) {
                size_t off = u8_off(o.u.s.p, o.u.s.n, (size_t)i), cl;
                u8_dec(o.u.s.p + off, o.u.s.n - off, &cl);
                return mk_str(o.u.s.p + off, cl);
            }
            return mk_undef(NULL, 0);
        }
        break;
    default: break;
    }
    if (k.t == V_STR && o.t != V_DICT) return getattr_v(e, o, k.u.s.p, k.u.s.n);
    if (k.t == V_STR) {
        /* dict: fall back to attribute (methods) */
        value m = getattr_v(e, o, k.u.s.p, k.u.s.n);
        return m;
    }
    return mk_undef(NULL, 0);
}

static value getattr_v(env *e, value o, const char *nm, size_t n) {
    int id;
    switch (o.t) {
    case V_UNDEF: undef_fail(e, o);
    case V_DICT:
        if ((id = lookup_name(DICT_METHODS, nm, n)) >= 0) return mk_func(e, M_ITEMS + id, o);
        if (lookup_name(DICT_UNSAFE, nm, n) >= 0) return mk_func(e, M_UNSAFE, o);
        if (lookup_name(DICT_OTHER, nm, n) >= 0) return mk_func(e, M_DICT_OTHER, o);
        {
            value *p = dict_find_s(o.u.d, nm, n);
            if (p) return *p;
        }
        break;
    case V_NS: {
        value *p = dict_find_s(o.u.d, nm, n);
        if (p) return *p;
        break;
    }
    case V_STR:
        if ((id = lookup_name(STR_METHODS, nm, n)) >= 0) return mk_func(e, M_STARTSWITH + id, o);
        if (lookup_name(STR_OTHER, nm, n) >= 0) return mk_func(e, M_STR_OTHER, o);
        break;
    case V_LIST:
        if (lookup_name(LIST_UNSAFE, nm, n) >= 0) return mk_func(e, M_UNSAFE, o);
        if (lookup_name(LIST_OTHER, nm, n) >= 0) return mk_func(e, M_LIST_OTHER, o);
        break;
    default: break;
    }
    return mk_undef(nm, n);
}

/* ---- arithmetic ---- */

static value arith(env *e, int op, value a, value b) {
    if (a.t == V_UNDEF) undef_fail(e, a);
    if (b.t == V_UNDEF) undef_fail(e, b);
    static const char *const opname[] = {"+", "-", "*", "/", "//", "%", "**"};
    if (is_num(a) && is_num(b)) {
        int isf = a.t == V_FLOAT || b.t == V_FLOAT;
        if (!isf) {
            int64_t x = num_i(a), y = num_i(b), r = 0;
            switch (op) {
            case OP_ADD:
                if (__builtin_add_overflow(x, y, &r)) goto ovf;
                return mk_int(r);
            case OP_SUB:
                if (__builtin_sub_overflow(x, y, &r)) goto ovf;
                return mk_int(r);
            case OP_MUL:
                if (__builtin_mul_overflow(x, y, &r)) goto ovf;
                return mk_int(r);
            case OP_DIV:
                if (y == 0) r_fail(e, "division by zero");
                return mk_float((double)x / (double)y);
            case OP_FDIV:
            case OP_MOD: {
                if (y == 0) r_fail(e, "integer division or modulo by zero");
                if (x == INT64_MIN && y == -1) goto ovf;
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
                    if (__builtin_mul_overflow(r, x, &r)) goto ovf;
                    if (r == 0 || r == 1) break;
                    if (r == -1) {
                        r = (y - i - 1) % 2 ? -r : r;
                        break;
                    }
                }
                return mk_int(r);
            }
        } else {
            double x = num_f(a), y = num_f(b);
            switch (op) {
            case OP_ADD: return mk_float(x + y);
            case OP_SUB: return mk_float(x - y);
            case OP_MUL: return mk_float(x * y);
            case OP_DIV:
                if (y == 0) r_fail(e, "float division by zero");
                return mk_float(x / y);
            case OP_FDIV:
            case OP_MOD: {
                if (y == 0) r_fail(e, "float modulo");
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
        }
    }
    if (op == OP_ADD && a.t == V_STR && b.t == V_STR) {
        char *p = xalloc(e, a.u.s.n + b.u.s.n + 1);
        memcpy(p, a.u.s.p, a.u.s.n);
        memcpy(p + a.u.s.n, b.u.s.p, b.u.s.n);
        if (a.u.s.n + b.u.s.n > e->lim.max_output_bytes) env_fail(e, CHAT_TEMPLATE_ERR_LIMIT, "string size limit exceeded");
        return mk_str(p, a.u.s.n + b.u.s.n);
    }
    if (op == OP_ADD && a.t == V_LIST && b.t == V_LIST && !a.u.l->gen && !b.u.l->gen && a.u.l->tuple == b.u.l->tuple &&
        !a.u.l->is_range && !b.u.l->is_range) {
        list *l = list_new(e, a.u.l->n + b.u.l->n);
        for (size_t i = 0; i < a.u.l->n; i++) list_push(e, l, a.u.l->v[i]);
        for (size_t i = 0; i < b.u.l->n; i++) list_push(e, l, b.u.l->v[i]);
        l->tuple = a.u.l->tuple;
        return mk_list(l);
    }
    if (op == OP_MUL && ((a.t == V_STR && (b.t == V_INT || b.t == V_BOOL)) || (b.t == V_STR && (a.t == V_INT || a.t == V_BOOL)))) {
        value s = a.t == V_STR ? a : b;
        int64_t k = a.t == V_STR ? num_i(b) : num_i(a);
        if (k <= 0 || s.u.s.n == 0) return mk_str("", 0);
        size_t tot = xmul(e, s.u.s.n, (size_t)k);
        if (tot > e->lim.max_output_bytes) env_fail(e, CHAT_TEMPLATE_ERR_LIMIT, "string size limit exceeded");
        char *p = xalloc(e, tot + 1);
        for (int64_t i = 0; i < k; i++) memcpy(p + (size_t)i * s.u.s.n, s.u.s.p, s.u.s.n);
        return mk_str(p, tot);
    }
    if (op == OP_MUL && ((a.t == V_LIST && !a.u.l->gen && !a.u.l->is_range && (b.t == V_INT || b.t == V_BOOL)) ||
                         (b.t == V_LIST && !b.u.l->gen && !b.u.l->is_range && (a.t == V_INT || a.t == V_BOOL)))) {
        value s = a.t == V_LIST ? a : b;
        int64_t k = a.t == V_LIST ? num_i(b) : num_i(a);
        list *l = list_new(e, 0);
        l->tuple = s.u.l->tuple;
        if (k > 0 && s.u.l->n > 0) {
            size_t tot = xmul(e, s.u.l->n, (size_t)k);
            if (tot > e->lim.max_steps) env_fail(e, CHAT_TEMPLATE_ERR_LIMIT, "list size limit exceeded");
            l = list_new(e, tot);
            l->tuple = s.u.l->tuple;
            for (int64_t i = 0; i < k; i++)
                for (size_t j = 0; j < s.u.l->n; j++) {
                    step(e);
                    list_push(e, l, s.u.l->v[j]);
                }
        }
        return mk_list(l);
    }
    if (op == OP_MOD && a.t == V_STR) env_fail(e, CHAT_TEMPLATE_ERR_UNSUPPORTED, "printf-style string formatting is not supported");
    r_fail(e, "unsupported operand type(s) for %s: '%s' and '%s'", opname[op], type_name(a), type_name(b));
ovf:
    env_fail(e, CHAT_TEMPLATE_ERR_UNSUPPORTED, "integer overflow (big integers are not supported)");
}

static int compare(env *e, int op, value a, value b) {
    switch (op) {
    case OP_EQ: return py_eq(a, b);
    case OP_NE: return !py_eq(a, b);
    case OP_LT: return py_lt(e, a, b);
    case OP_GT: return py_lt(e, b, a);
    case OP_LE: return py_lt(e, a, b) || py_eq(a, b);
    case OP_GE: return py_lt(e, b, a) || py_eq(a, b);
    case OP_IN: return py_in(e, a, b);
    case OP_NOTIN: return !py_in(e, a, b);
    }
    return 0;
}

/* ---- argument helpers ---- */

static int get_arg(cargs *a, size_t pos, const char *name, value *out) {
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
static void check_args(env *e, cargs *a, size_t maxpos, const char *const *names, const char *fn) {
    if (a->npos > maxpos) r_fail(e, "%s() takes at most %zu positional arguments", fn, maxpos);
    for (size_t i = 0; i < a->nk; i++) {
        int ok = 0;
        for (int j = 0; names && names[j]; j++)
            if (strlen(names[j]) == a->kl[i] && memcmp(names[j], a->kn[i], a->kl[i]) == 0) ok = 1;
        if (!ok) r_fail(e, "%s() got an unexpected keyword argument '%.*s'", fn, (int)(a->kl[i] > 64 ? 64 : a->kl[i]), a->kn[i]);
    }
}
static value want_str(env *e, value v, const char *what) {
    if (v.t != V_STR) {
        if (v.t == V_UNDEF) undef_fail(e, v);
        r_fail(e, "%s must be str, not %s", what, type_name(v));
    }
    return v;
}
static int64_t want_int(env *e, value v, const char *what) {
    if (v.t != V_INT && v.t != V_BOOL) {
        if (v.t == V_UNDEF) undef_fail(e, v);
        r_fail(e, "%s must be an integer, not %s", what, type_name(v));
    }
    return num_i(v);
}

/* ---- string methods ---- */

static int in_chars(int32_t c, value chars) {
    if (chars.t == V_NONE || chars.t == V_UNDEF) return py_isspace(c);
    size_t i = 0;
    while (i < chars.u.s.n) {
        size_t k;
        if (u8_dec(chars.u.s.p + i, chars.u.s.n - i, &k) == c) return 1;
        i += k;
    }
    return 0;
}
static value str_strip(env *e, value s, value chars, int left, int right) {
    if (chars.t != V_NONE && chars.t != V_UNDEF) want_str(e, chars, "strip arg");
    const char *p = s.u.s.p;
    size_t a = 0, b = s.u.s.n;
    if (left)
        while (a < b) {
            size_t k;
            if (!in_chars(u8_dec(p + a, b - a, &k), chars)) break;
            a += k;
        }
    if (right)
        while (b > a) {
            size_t st = b - 1;
            while (st > a && ((unsigned char)p[st] & 0xC0) == 0x80) st--;
            size_t k;
            if (!in_chars(u8_dec(p + st, b - st, &k), chars)) break;
            b = st;
        }
    return mk_str(p + a, b - a);
}

static value str_replace(env *e, value s, value old, value nw, int64_t count) {
    sbuf b = {0};
    const char *p = s.u.s.p;
    size_t n = s.u.s.n, i = 0;
    int64_t done = 0;
    if (old.u.s.n == 0) {
        while (count < 0 || done < count) {
            sb_put(e, &b, nw.u.s.p, nw.u.s.n);
            done++;
            if (i >= n) break;
            size_t k;
            u8_dec(p + i, n - i, &k);
            sb_put(e, &b, p + i, k);
            i += k;
        }
        sb_put(e, &b, p + i, n - i);
        return mk_sbuf(&b);
    }
    while (count < 0 || done < count) {
        const char *h = memmem_(p + i, n - i, old.u.s.p, old.u.s.n);
        if (!h) break;
        sb_put(e, &b, p + i, (size_t)(h - (p + i)));
        sb_put(e, &b, nw.u.s.p, nw.u.s.n);
        i = (size_t)(h - p) + old.u.s.n;
        done++;
    }
    sb_put(e, &b, p + i, n - i);
    if (done == 0) return s;
    return mk_sbuf(&b);
}

static value str_split(env *e, value s, value sep, int64_t maxsplit, int right) {
    list *l = list_new(e, 0);
    const char *p = s.u.s.p;
    size_t n = s.u.s.n;
    if (sep.t == V_NONE || sep.t == V_UNDEF) {
        /* whitespace split */
        if (!right) {
            size_t i = 0;
            int64_t done = 0;
            for (;;) {
                while (i < n) {
                    size_t k;
                    if (!py_isspace(u8_dec(p + i, n - i, &k))) break;
                    i += k;
                }
                if (i >= n) break;
                if (maxsplit >= 0 && done >= maxsplit) {
                    /* rest, with trailing whitespace kept */
                    list_push(e, l, mk_str(p + i, n - i));
                    break;
                }
                size_t st = i;
                while (i < n) {
                    size_t k;
                    if (py_isspace(u8_dec(p + i, n - i, &k))) break;
                    i += k;
                }
                list_push(e, l, mk_str(p + st, i - st));
                done++;
            }
        } else {
            /* collect from the right then reverse */
            size_t j = n;
            int64_t done = 0;
            list *tmp = list_new(e, 0);
            for (;;) {
                while (j > 0) {
                    size_t st = j - 1;
                    while (st > 0 && ((unsigned char)p[st] & 0xC0) == 0x80) st--;
                    size_t k;
                    if (!py_isspace(u8_dec(p + st, j - st, &k))) break;
                    j = st;
                }
                if (j == 0) break;
                if (maxsplit >= 0 && done >= maxsplit) {
                    list_push(e, tmp, mk_str(p, j));
                    break;
                }
                size_t end = j;
                while (j > 0) {
                    size_t st = j - 1;
                    while (st > 0 && ((unsigned char)p[st] & 0xC0) == 0x80) st--;
                    size_t k;
                    if (py_isspace(u8_dec(p + st, j - st, &k))) break;
                    j = st;
                }
                list_push(e, tmp, mk_str(p + j, end - j));
                done++;
            }
            for (size_t i = tmp->n; i > 0; i--) list_push(e, l, tmp->v[i - 1]);
        }
        return mk_list(l);
    }
    want_str(e, sep, "separator");
    if (sep.u.s.n == 0) r_fail(e, "empty separator");
    if (!right) {
        size_t i = 0;
        int64_t done = 0;
        for (;;) {
            const char *h = (maxsplit < 0 || done < maxsplit) ? memmem_(p + i, n - i, sep.u.s.p, sep.u.s.n) : NULL;
            if (!h) {
                list_push(e, l, mk_str(p + i, n - i));
                break;
            }
            list_push(e, l, mk_str(p + i, (size_t)(h - (p + i))));
            i = (size_t)(h - p) + sep.u.s.n;
            done++;
        }
    } else {
        /* search the byte-reversed string left to right: linear time */
        list *tmp = list_new(e, 0);
        const char *rp = str_rev(e, p, n), *rs = str_rev(e, sep.u.s.p, sep.u.s.n);
        size_t m = sep.u.s.n, ri = 0, end = n;
        int64_t done = 0;
        for (;;) {
            const char *h = (maxsplit < 0 || done < maxsplit) ? memmem_(rp + ri, n - ri, rs, m) : NULL;
            if (!h) {
                list_push(e, tmp, mk_str(p, end));
                break;
            }
            size_t rpos = (size_t)(h - rp);       /* match at [rpos, rpos+m) reversed */
            size_t ostart = n - rpos - m;         /* = [ostart, ostart+m) original */
            list_push(e, tmp, mk_str(p + ostart + m, end - ostart - m));
            end = ostart;
            ri = rpos + m;
            done++;
        }
        for (size_t i = tmp->n; i > 0; i--) list_push(e, l, tmp->v[i - 1]);
    }
    return mk_list(l);
}

static int affix_match(env *e, value s, value pre, int end) {
    if (pre.t == V_LIST && pre.u.l->tuple) {
        for (size_t i = 0; i < pre.u.l->n; i++)
            if (affix_match(e, s, pre.u.l->v[i], end)) return 1;
        return 0;
    }
    want_str(e, pre, end ? "endswith arg" : "startswith arg");
    if (pre.u.s.n > s.u.s.n) return 0;
    return memcmp(end ? s.u.s.p + s.u.s.n - pre.u.s.n : s.u.s.p, pre.u.s.p, pre.u.s.n) == 0;
}

static value str_format(env *e, value fmt, cargs *a) {
    sbuf b = {0};
    const char *p = fmt.u.s.p;
    size_t n = fmt.u.s.n, i = 0, autoidx = 0;
    while (i < n) {
        char c = p[i];
        if (c == '{' && i + 1 < n && p[i + 1] == '{') {
            sb_putc(e, &b, '{');
            i += 2;
            continue;
        }
        if (c == '}' && i + 1 < n && p[i + 1] == '}') {
            sb_putc(e, &b, '}');
            i += 2;
            continue;
        }
        if (c == '}') r_fail(e, "Single '}' encountered in format string");
        if (c != '{') {
            sb_putc(e, &b, c);
            i++;
            continue;
        }
        size_t j = i + 1;
        while (j < n && p[j] != '}' && p[j] != ':' && p[j] != '!' && p[j] != '.' && p[j] != '[' && p[j] != '{') j++;
        if (j >= n || p[j] != '}') env_fail(e, CHAT_TEMPLATE_ERR_UNSUPPORTED, "str.format with conversions or format specs is not supported");
        value v;
        size_t fl = j - i - 1;
        const char *f = p + i + 1;
        if (fl == 0) {
            if (autoidx >= a->npos) r_fail(e, "Replacement index %zu out of range", autoidx);
            v = a->pos[autoidx++];
        } else if (f[0] >= '0' && f[0] <= '9') {
            size_t idx = 0;
            for (size_t k = 0; k < fl; k++) {
                if (f[k] < '0' || f[k] > '9' || idx > 100000) r_fail(e, "bad format field");
                idx = idx * 10 + (size_t)(f[k] - '0');
            }
            if (idx >= a->npos) r_fail(e, "Replacement index %zu out of range", idx);
            v = a->pos[idx];
        } else {
            size_t k;
            for (k = 0; k < a->nk; k++)
                if (a->kl[k] == fl && memcmp(a->kn[k], f, fl) == 0) break;
            if (k == a->nk) r_fail(e, "KeyError: '%.*s'", (int)(fl > 64 ? 64 : fl), f);
            v = a->kv[k];
        }
        value s = py_str(e, v);
        sb_put(e, &b, s.u.s.p, s.u.s.n);
        i = j + 1;
    }
    return mk_sbuf(&b);
}

static value call_str_method(env *e, int id, value s, cargs *a) {
    value x, y, z;
    switch (id) {
    case M_STARTSWITH:
    case M_ENDSWITH:
        check_args(e, a, 1, NULL, id == M_STARTSWITH ? "startswith" : "endswith");
        if (!get_arg(a, 0, "", &x)) r_fail(e, "startswith/endswith takes 1 argument");
        return mk_bool(affix_match(e, s, x, id == M_ENDSWITH));
    case M_STRIP:
    case M_LSTRIP:
    case M_RSTRIP:
        check_args(e, a, 1, NULL, "strip");
        if (!get_arg(a, 0, "", &x)) x = mk_none();
        return str_strip(e, s, x, id != M_RSTRIP, id != M_LSTRIP);
    case M_SPLIT:
    case M_RSPLIT: {
        static const char *const nm[] = {"sep", "maxsplit", NULL};
        check_args(e, a, 2, nm, "split");
        if (!get_arg(a, 0, "sep", &x)) x = mk_none();
        int64_t ms = get_arg(a, 1, "maxsplit", &y) ? want_int(e, y, "maxsplit") : -1;
        return str_split(e, s, x, ms, id == M_RSPLIT);
    }
    case M_REPLACE: {
        check_args(e, a, 3, NULL, "replace");
        if (!get_arg(a, 0, "", &x) || !get_arg(a, 1, "", &y)) r_fail(e, "replace expected at least 2 arguments");
        int64_t cnt = get_arg(a, 2, "", &z) ? want_int(e, z, "count") : -1;
        return str_replace(e, s, want_str(e, x, "replace arg"), want_str(e, y, "replace arg"), cnt);
    }
    case M_UPPER: check_args(e, a, 0, NULL, "upper"); return str_case(e, s, 1);
    case M_LOWER: check_args(e, a, 0, NULL, "lower"); return str_case(e, s, 0);
    case M_TITLE: check_args(e, a, 0, NULL, "title"); return str_case(e, s, 2);
    case M_CAPITALIZE: check_args(e, a, 0, NULL, "capitalize"); return str_case(e, s, 3);
    case M_FIND:
    case M_RFIND:
    case M_COUNT: {
        check_args(e, a, 1, NULL, "find");
        if (!get_arg(a, 0, "", &x)) r_fail(e, "find/count takes 1 argument");
        want_str(e, x, "substring");
        if (id == M_COUNT) {
            if (x.u.s.n == 0) return mk_int((int64_t)u8_len(s.u.s.p, s.u.s.n) + 1);
            int64_t c = 0;
            size_t i = 0;
            int64_t f;
            while ((f = str_find(s.u.s.p, s.u.s.n, x.u.s.p, x.u.s.n, i)) >= 0) {
                c++;
                i = (size_t)f + x.u.s.n;
            }
            return mk_int(c);
        }
        int64_t f = -1;
        if (id == M_FIND)
            f = str_find(s.u.s.p, s.u.s.n, x.u.s.p, x.u.s.n, 0);
        else if (x.u.s.n <= s.u.s.n) {
            const char *rh = str_rev(e, s.u.s.p, s.u.s.n), *rn = str_rev(e, x.u.s.p, x.u.s.n);
            const char *h = memmem_(rh, s.u.s.n, rn, x.u.s.n);
            if (h) f = (int64_t)(s.u.s.n - (size_t)(h - rh) - x.u.s.n);
        }
        return mk_int(f < 0 ? -1 : (int64_t)u8_len(s.u.s.p, (size_t)f));
    }
    case M_JOIN: {
        check_args(e, a, 1, NULL, "join");
        if (!get_arg(a, 0, "", &x)) r_fail(e, "join takes 1 argument");
        list *l = iter_list(e, x);
        sbuf b = {0};
        for (size_t i = 0; i < l->n; i++) {
            if (i) sb_put(e, &b, s.u.s.p, s.u.s.n);
            value it = want_str(e, l->v[i], "sequence item");
            sb_put(e, &b, it.u.s.p, it.u.s.n);
        }
        return mk_sbuf(&b);
    }
    case M_FORMAT: return str_format(e, s, a);
    default: {
        check_args(e, a, 0, NULL, "is*");
        if (s.u.s.n == 0) return mk_bool(0);
        int ok = 1, any_cased = 0;
        size_t i = 0;
        while (i < s.u.s.n) {
            size_t k;
            int32_t c = u8_dec(s.u.s.p + i, s.u.s.n - i, &k);
            utf8proc_category_t cat = utf8proc_category(c);
            int alpha = cat == UTF8PROC_CATEGORY_LU || cat == UTF8PROC_CATEGORY_LL || cat == UTF8PROC_CATEGORY_LT ||
                        cat == UTF8PROC_CATEGORY_LM || cat == UTF8PROC_CATEGORY_LO;
            int digit = cat == UTF8PROC_CATEGORY_ND;
            switch (id) {
            case M_ISDIGIT: ok &= digit; break;
            case M_ISALPHA: ok &= alpha; break;
            case M_ISSPACE: ok &= py_isspace(c); break;
            case M_ISALNUM: ok &= alpha || digit || cat == UTF8PROC_CATEGORY_NL || cat == UTF8PROC_CATEGORY_NO; break;
            case M_ISUPPER:
                if (cp_iscased(c)) {
                    any_cased = 1;
                    ok &= cp_iscased_upper(c);
                }
                break;
            case M_ISLOWER:
                if (cp_iscased(c)) {
                    any_cased = 1;
                    ok &= cat == UTF8PROC_CATEGORY_LL;
                }
                break;
            }
            i += k;
        }
        if (id == M_ISUPPER || id == M_ISLOWER) ok &= any_cased;
        return mk_bool(ok);
    }
    }
}

/* ---- tests ---- */

static int run_test(env *e, int id, value v, cargs *a) {
    value x;
    int has = get_arg(a, 0, "", &x);
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
        if (!has) r_fail(e, "sameas test needs an argument");
        if (v.t != x.t) return 0;
        if (v.t == V_LIST) return v.u.l == x.u.l;
        if (v.t == V_DICT || v.t == V_NS) return v.u.d == x.u.d;
        if (v.t == V_FUNC) return v.u.fn == x.u.fn;
        return py_eq(v, x);
    case TS_LOWER:
    case TS_UPPER: {
        value s = py_str(e, v);
        cargs none = {0};
        return truthy(call_str_method(e, id == TS_LOWER ? M_ISLOWER : M_ISUPPER, s, &none));
    }
    case TS_ODD:
    case TS_EVEN: return py_eq(arith(e, OP_MOD, v, mk_int(2)), mk_int(id == TS_ODD ? 1 : 0));
    case TS_DIVISIBLEBY: {
        if (!has) r_fail(e, "divisibleby test needs an argument");
        value r = arith(e, OP_MOD, v, x);
        return !truthy(r);
    }
    default: break;
    }
    if (!has) r_fail(e, "test needs an argument");
    switch (id) {
    case TS_EQ: case TS_EQUALTO: case TS_EQ2: return py_eq(v, x);
    case TS_NE: case TS_NE2: return !py_eq(v, x);
    case TS_LT: case TS_LESSTHAN: case TS_LT2: return py_lt(e, v, x);
    case TS_LE: case TS_LE2: return py_lt(e, v, x) || py_eq(v, x);
    case TS_GT: case TS_GREATERTHAN: case TS_GT2: return py_lt(e, x, v);
    case TS_GE: case TS_GE2: return py_lt(e, x, v) || py_eq(v, x);
    case TS_IN: return py_in(e, v, x);
    }
    r_fail(e, "unknown test");
}

/* ---- filters ---- */

static value attr_path(env *e, value item, value attr) {
    if (attr.t == V_INT) return getitem_v(e, item, attr);
    want_str(e, attr, "attribute");
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
        cur = getitem_v(e, cur, digits ? mk_int(num) : mk_str(p + i, j - i));
        if (j >= n) break;
        i = j + 1;
    }
    return cur;
}

static value apply_filter(env *e, int id, value v, cargs *a);

static int test_by_name(env *e, value name, value v, cargs *rest) {
    want_str(e, name, "test name");
    int id = lookup_name(TESTS, name.u.s.p, name.u.s.n);
    if (id < 0) r_fail(e, "no test named '%.*s'", (int)(name.u.s.n > 64 ? 64 : name.u.s.n), name.u.s.p);
    if (id >= TS_IMPLEMENTED_END) env_fail(e, CHAT_TEMPLATE_ERR_UNSUPPORTED, "unsupported test '%.*s'", (int)(name.u.s.n > 64 ? 64 : name.u.s.n), name.u.s.p);
    return run_test(e, id, v, rest);
}

/* select/reject/selectattr/rejectattr: returns a generator-marked list. */
static value filter_select(env *e, value seq, cargs *a, int use_attr, int reject) {
    list *out = list_new(e, 0);
    out->gen = 1;
    if (!truthy(seq)) return mk_list(out); /* jinja2: "if value:" guards the loop */
    list *src = iter_list(e, seq);
    size_t off = 0;
    value attr = mk_none(), tname = mk_none();
    if (use_attr) {
        if (!get_arg(a, 0, "", &attr)) r_fail(e, "selectattr needs an attribute");
        off = 1;
    }
    int has_test = get_arg(a, off, "", &tname);
    cargs rest = {a->pos + (a->npos > off + 1 ? off + 1 : a->npos), a->npos > off + 1 ? a->npos - off - 1 : 0, NULL, NULL, NULL, 0};
    for (size_t i = 0; i < src->n; i++) {
        step(e);
        value item = src->v[i];
        value tv = use_attr ? attr_path(e, item, attr) : item;
        int ok = has_test ? test_by_name(e, tname, tv, &rest) : truthy(tv);
        if (ok != reject) list_push(e, out, item);
    }
    return mk_list(out);
}

static value filter_map(env *e, value seq, cargs *a) {
    if (!truthy(seq)) {
        list *empty = list_new(e, 0);
        empty->gen = 1;
        return mk_list(empty);
    }
    list *src = iter_list(e, seq);
    list *out = list_new(e, src->n);
    out->gen = 1;
    value attr, fname, def;
    if (get_arg(a, 99, "attribute", &attr)) {
        int has_def = get_arg(a, 99, "default", &def);
        for (size_t i = 0; i < src->n; i++) {
            value r = attr_path(e, src->v[i], attr);
            if (r.t == V_UNDEF && has_def) r = def;
            list_push(e, out, r);
        }
        return mk_list(out);
    }
    if (!get_arg(a, 0, "", &fname)) r_fail(e, "map requires a filter argument");
    want_str(e, fname, "filter name");
    int id = lookup_name(FILTERS, fname.u.s.p, fname.u.s.n);
    if (id < 0) r_fail(e, "no filter named '%.*s'", (int)(fname.u.s.n > 64 ? 64 : fname.u.s.n), fname.u.s.p);
    if (id >= F_IMPLEMENTED_END) env_fail(e, CHAT_TEMPLATE_ERR_UNSUPPORTED, "unsupported filter '%.*s'", (int)(fname.u.s.n > 64 ? 64 : fname.u.s.n), fname.u.s.p);
    cargs rest = *a;
    rest.pos++;
    rest.npos--;
    for (size_t i = 0; i < src->n; i++) {
        step(e);
        list_push(e, out, apply_filter(e, id, src->v[i], &rest));
    }
    return mk_list(out);
}

static value sort_key(env *e, value v, value attr, int has_attr, int case_sensitive) {
    if (has_attr) v = attr_path(e, v, attr);
    if (!case_sensitive && v.t == V_STR) v = str_case(e, v, 0);
    return v;
}

static void merge_sort(env *e, value *items, value *keys, size_t n, int reverse, value *tmpi, value *tmpk) {
    if (n < 2) return;
    size_t h = n / 2;
    merge_sort(e, items, keys, h, reverse, tmpi, tmpk);
    merge_sort(e, items + h, keys + h, n - h, reverse, tmpi, tmpk);
    size_t i = 0, j = h, k = 0;
    while (i < h && j < n) {
        step(e);
        int take_right = reverse ? py_lt(e, keys[i], keys[j]) : py_lt(e, keys[j], keys[i]);
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
    char *t = xstrndup(e, s, n), *end;
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

static value apply_filter(env *e, int id, value v, cargs *a) {
    value x, y, z;
    step(e);
    switch (id) {
    case F_LENGTH:
    case F_COUNT:
        switch (v.t) {
        case V_UNDEF: return mk_int(0);
        case V_STR: return mk_int((int64_t)u8_len(v.u.s.p, v.u.s.n));
        case V_LIST:
            if (v.u.l->gen) r_fail(e, "object of type 'generator' has no len()");
            return mk_int((int64_t)v.u.l->n);
        case V_DICT: return mk_int((int64_t)v.u.d->n);
        default: r_fail(e, "object of type '%s' has no len()", type_name(v));
        }
    case F_STRING:
    case F_SAFE: return py_str(e, v);
    case F_TRIM:
        if (!get_arg(a, 0, "chars", &x)) x = mk_none();
        return str_strip(e, py_str(e, v), x, 1, 1);
    case F_UPPER: return str_case(e, py_str(e, v), 1);
    case F_LOWER: return str_case(e, py_str(e, v), 0);
    case F_CAPITALIZE: return str_case(e, py_str(e, v), 3);
    case F_TITLE: return str_case(e, py_str(e, v), 4);
    case F_REPLACE: {
        if (!get_arg(a, 0, "old", &x) || !get_arg(a, 1, "new", &y)) r_fail(e, "replace filter needs old and new");
        int64_t cnt = get_arg(a, 2, "count", &z) && z.t != V_NONE ? want_int(e, z, "count") : -1;
        return str_replace(e, py_str(e, v), py_str(e, x), py_str(e, y), cnt);
    }
    case F_FIRST:
    case F_LAST: {
        if (v.t == V_UNDEF) return mk_undef(NULL, 0);
        if (id == F_LAST && v.t == V_LIST && v.u.l->gen) r_fail(e, "'generator' object is not reversible");
        list *l = iter_list(e, v);
        if (l->n == 0) return mk_undef(NULL, 0);
        return l->v[id == F_FIRST ? 0 : l->n - 1];
    }
    case F_JOIN: {
        value sep = get_arg(a, 0, "d", &x) ? py_str(e, x) : mk_str("", 0);
        int has_attr = get_arg(a, 1, "attribute", &y);
        list *l = iter_list(e, v);
        sbuf b = {0};
        for (size_t i = 0; i < l->n; i++) {
            if (i) sb_put(e, &b, sep.u.s.p, sep.u.s.n);
            value it = has_attr ? attr_path(e, l->v[i], y) : l->v[i];
            value s = py_str(e, it);
            sb_put(e, &b, s.u.s.p, s.u.s.n);
        }
        return mk_sbuf(&b);
    }
    case F_DEFAULT:
    case F_D: {
        value def = get_arg(a, 0, "default_value", &x) ? x : mk_str("", 0);
        int boolean = get_arg(a, 1, "boolean", &y) && truthy(y);
        if (v.t == V_UNDEF || (boolean && !truthy(v))) return def;
        return v;
    }
    case F_ITEMS: {
        if (v.t == V_UNDEF) return mk_list(list_new(e, 0));
        if (v.t != V_DICT) r_fail(e, "Can only get item pairs from a mapping.");
        list *l = list_new(e, v.u.d->n);
        for (size_t i = 0; i < v.u.d->n; i++) {
            list *t = list_new(e, 2);
            t->tuple = 1;
            list_push(e, t, v.u.d->k[i]);
            list_push(e, t, v.u.d->v[i]);
            list_push(e, l, mk_list(t));
        }
        l->gen = 1;
        return mk_list(l);
    }
    case F_SELECTATTR: return filter_select(e, v, a, 1, 0);
    case F_REJECTATTR: return filter_select(e, v, a, 1, 1);
    case F_SELECT: return filter_select(e, v, a, 0, 0);
    case F_REJECT: return filter_select(e, v, a, 0, 1);
    case F_MAP: return filter_map(e, v, a);
    case F_LIST: {
        list *src = iter_list(e, v);
        list *l = list_new(e, src->n);
        for (size_t i = 0; i < src->n; i++) list_push(e, l, src->v[i]);
        return mk_list(l);
    }
    case F_INT: {
        value def = get_arg(a, 0, "default", &x) ? x : mk_int(0);
        if (get_arg(a, 1, "base", &y) && !(y.t == V_INT && y.u.i == 10)) env_fail(e, CHAT_TEMPLATE_ERR_UNSUPPORTED, "int filter with a base other than 10");
        int ok;
        switch (v.t) {
        case V_INT: return v;
        case V_BOOL: return mk_int(v.u.b);
        case V_FLOAT:
            if (!isfinite(v.u.f) || fabs(v.u.f) >= 9.2e18) env_fail(e, CHAT_TEMPLATE_ERR_UNSUPPORTED, "int filter: value out of range");
            return mk_int((int64_t)v.u.f);
        case V_STR: {
            int64_t i = parse_py_int(v.u.s.p, v.u.s.n, &ok);
            if (ok) return mk_int(i);
            double d = parse_py_float(e, v.u.s.p, v.u.s.n, &ok);
            if (ok) {
                if (!isfinite(d) || fabs(d) >= 9.2e18) env_fail(e, CHAT_TEMPLATE_ERR_UNSUPPORTED, "int filter: value out of range");
                return mk_int((int64_t)d);
            }
            return def;
        }
        default: return def;
        }
    }
    case F_FLOAT: {
        value def = get_arg(a, 0, "default", &x) ? x : mk_float(0.0);
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
    case F_ABS:
        if (v.t == V_INT) {
            if (v.u.i == INT64_MIN) env_fail(e, CHAT_TEMPLATE_ERR_UNSUPPORTED, "integer overflow");
            return mk_int(v.u.i < 0 ? -v.u.i : v.u.i);
        }
        if (v.t == V_BOOL) return mk_int(v.u.b);
        if (v.t == V_FLOAT) return mk_float(fabs(v.u.f));
        r_fail(e, "bad operand type for abs(): '%s'", type_name(v));
    case F_REVERSE: {
        if (v.t == V_STR) {
            char *p = xalloc(e, v.u.s.n + 1);
            size_t i = 0, o = v.u.s.n;
            while (i < v.u.s.n) {
                size_t k;
                u8_dec(v.u.s.p + i, v.u.s.n - i, &k);
                o -= k;
                memcpy(p + o, v.u.s.p + i, k);
                i += k;
            }
            return mk_str(p, v.u.s.n);
        }
        list *src = iter_list(e, v);
        list *l = list_new(e, src->n);
        for (size_t i = src->n; i > 0; i--) list_push(e, l, src->v[i - 1]);
        l->gen = 1;
        return mk_list(l);
    }
    case F_TOJSON: {
        static const char *const nm[] = {"ensure_ascii", "indent", "separators", "sort_keys", NULL};
        check_args(e, a, 4, nm, "tojson");
        json_opts o = {-1, ", ", ": ", 0, 0};
        if (get_arg(a, 0, "ensure_ascii", &x)) o.ensure_ascii = truthy(x);
        if (get_arg(a, 1, "indent", &x) && x.t != V_NONE) {
            if (x.t != V_INT) env_fail(e, CHAT_TEMPLATE_ERR_UNSUPPORTED, "tojson indent must be an integer");
            o.indent = x.u.i < 0 ? 0 : x.u.i > 64 ? 64 : (int)x.u.i;
            o.item_sep = ",";
        }
        if (get_arg(a, 2, "separators", &x) && x.t != V_NONE) {
            if (x.t != V_LIST || x.u.l->gen || x.u.l->n != 2 || x.u.l->v[0].t != V_STR || x.u.l->v[1].t != V_STR)
                r_fail(e, "tojson separators must be a pair of strings");
            o.item_sep = xstrndup(e, x.u.l->v[0].u.s.p, x.u.l->v[0].u.s.n);
            o.key_sep = xstrndup(e, x.u.l->v[1].u.s.p, x.u.l->v[1].u.s.n);
        }
        if (get_arg(a, 3, "sort_keys", &x)) o.sort_keys = truthy(x);
        sbuf b = {0};
        json_dump(e, &b, v, &o, 0);
        return mk_sbuf(&b);
    }
    case F_ESCAPE:
    case F_E: {
        value s = py_str(e, v);
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
    case F_SORT:
    case F_UNIQUE:
    case F_MIN:
    case F_MAX: {
        static const char *const nm[] = {"reverse", "case_sensitive", "attribute", NULL};
        static const char *const nm2[] = {"case_sensitive", "attribute", NULL};
        int reverse = 0;
        if (id == F_SORT) {
            check_args(e, a, 3, nm, "sort");
            reverse = get_arg(a, 0, "reverse", &x) && truthy(x);
        } else
            check_args(e, a, 2, nm2, "unique/min/max");
        size_t off = id == F_SORT ? 1 : 0;
        int cs = get_arg(a, off, "case_sensitive", &y) && truthy(y);
        int has_attr = get_arg(a, off + 1, "attribute", &z);
        list *src = iter_list(e, v);
        size_t n = src->n;
        value *items = xalloc(e, xmul(e, n + 1, sizeof(value)));
        value *keys = xalloc(e, xmul(e, n + 1, sizeof(value)));
        for (size_t i = 0; i < n; i++) {
            items[i] = src->v[i];
            keys[i] = sort_key(e, src->v[i], z, has_attr, cs);
        }
        if (id == F_UNIQUE) {
            list *l = list_new(e, 0);
            l->gen = 1;
            list *seen = list_new(e, 0);
            for (size_t i = 0; i < n; i++) {
                step(e);
                if ((keys[i].t == V_LIST && !keys[i].u.l->tuple) || keys[i].t == V_DICT || keys[i].t == V_NS)
                    r_fail(e, "unhashable type: '%s'", type_name(keys[i]));
                size_t j;
                for (j = 0; j < seen->n; j++) {
                    step(e);
                    if (py_eq(seen->v[j], keys[i])) break;
                }
                if (j < seen->n) continue;
                list_push(e, seen, keys[i]);
                list_push(e, l, items[i]);
            }
            return mk_list(l);
        }
        if (id == F_MIN || id == F_MAX) {
            if (n == 0) return mk_undef(NULL, 0);
            size_t best = 0;
            for (size_t i = 1; i < n; i++)
                if (id == F_MIN ? py_lt(e, keys[i], keys[best]) : py_lt(e, keys[best], keys[i])) best = i;
            return items[best];
        }
        value *ti = xalloc(e, xmul(e, n + 1, sizeof(value)));
        value *tk = xalloc(e, xmul(e, n + 1, sizeof(value)));
        merge_sort(e, items, keys, n, reverse, ti, tk);
        list *l = list_new(e, n);
        for (size_t i = 0; i < n; i++) list_push(e, l, items[i]);
        return mk_list(l);
    }
    case F_INDENT: {
        static const char *const nm[] = {"width", "first", "blank", NULL};
        check_args(e, a, 3, nm, "indent");
        if (v.t != V_STR) {
            if (v.t == V_UNDEF) undef_fail(e, v);
            r_fail(e, "indent: expected a string, got '%s'", type_name(v));
        }
        value ind = mk_str("    ", 4);
        if (get_arg(a, 0, "width", &x)) {
            if (x.t == V_STR)
                ind = x;
            else
                ind = arith(e, OP_MUL, mk_str(" ", 1), x);
        }
        int first = get_arg(a, 1, "first", &y) && truthy(y);
        int blank = get_arg(a, 2, "blank", &z) && truthy(z);
        /* s += "\n"; lines = s.splitlines() */
        list *lines = list_new(e, 0);
        const char *p = v.u.s.p;
        size_t n = v.u.s.n, i = 0, st = 0;
        while (i < n) {
            size_t k;
            int32_t c = u8_dec(p + i, n - i, &k);
            int brk = c == '\n' || c == '\r' || c == 0x0b || c == 0x0c || c == 0x1c || c == 0x1d || c == 0x1e ||
                      c == 0x85 || c == 0x2028 || c == 0x2029;
            if (brk) {
                list_push(e, lines, mk_str(p + st, i - st));
                if (c == '\r' && i + 1 < n && p[i + 1] == '\n') k = 2;
                st = i + k;
            }
            i += k;
        }
        list_push(e, lines, mk_str(p + st, n - st)); /* the line ended by the appended "\n" */
        sbuf b = {0};
        if (first) sb_put(e, &b, ind.u.s.p, ind.u.s.n);
        for (size_t li = 0; li < lines->n; li++) {
            value ln = lines->v[li];
            if (li) {
                sb_putc(e, &b, '\n');
                if (blank || ln.u.s.n) sb_put(e, &b, ind.u.s.p, ind.u.s.n);
            }
            sb_put(e, &b, ln.u.s.p, ln.u.s.n);
        }
        return mk_sbuf(&b);
    }
    case F_DICTSORT: {
        static const char *const nm[] = {"case_sensitive", "by", "reverse", NULL};
        check_args(e, a, 3, nm, "dictsort");
        if (v.t != V_DICT) r_fail(e, "dictsort: expected a mapping, got '%s'", type_name(v));
        int cs = get_arg(a, 0, "case_sensitive", &x) && truthy(x);
        int pos = 0;
        if (get_arg(a, 1, "by", &y)) {
            if (str_eq(y, "value")) pos = 1;
            else if (!str_eq(y, "key")) r_fail(e, "You can only sort by either \"key\" or \"value\"");
        }
        int reverse = get_arg(a, 2, "reverse", &z) && truthy(z);
        size_t n = v.u.d->n;
        value *items = xalloc(e, xmul(e, n + 1, sizeof(value)));
        value *keys = xalloc(e, xmul(e, n + 1, sizeof(value)));
        for (size_t i = 0; i < n; i++) {
            list *t = list_new(e, 2);
            t->tuple = 1;
            list_push(e, t, v.u.d->k[i]);
            list_push(e, t, v.u.d->v[i]);
            items[i] = mk_list(t);
            value k = pos ? v.u.d->v[i] : v.u.d->k[i];
            keys[i] = !cs && k.t == V_STR ? str_case(e, k, 0) : k;
        }
        value *ti = xalloc(e, xmul(e, n + 1, sizeof(value)));
        value *tk = xalloc(e, xmul(e, n + 1, sizeof(value)));
        merge_sort(e, items, keys, n, reverse, ti, tk);
        list *l = list_new(e, n);
        for (size_t i = 0; i < n; i++) list_push(e, l, items[i]);
        return mk_list(l);
    }
    case F_SUM: {
        int has_attr = get_arg(a, 0, "attribute", &x);
        value acc = get_arg(a, 1, "start", &y) ? y : mk_int(0);
        list *src = iter_list(e, v);
        for (size_t i = 0; i < src->n; i++) acc = arith(e, OP_ADD, acc, has_attr ? attr_path(e, src->v[i], x) : src->v[i]);
        return acc;
    }
    }
    env_fail(e, CHAT_TEMPLATE_ERR_UNSUPPORTED, "unsupported filter");
}

/* ---- calls ---- */

static value call_macro(env *e, func *f, cargs *a) {
    node *m = f->mac;
    if (a->npos > m->nk)
        r_fail(e, "macro '%.*s' takes not more than %zu argument(s)", (int)(m->nlen > 64 ? 64 : m->nlen), m->name, m->nk);
    scope *sc = scope_new(e, f->sc);
    for (size_t i = 0; i < a->nk; i++) {
        size_t j;
        for (j = 0; j < m->nk; j++)
            if (m->klens[j] == a->kl[i] && memcmp(m->knames[j], a->kn[i], a->kl[i]) == 0) break;
        if (j == m->nk)
            r_fail(e, "macro '%.*s' has no argument named '%.*s'", (int)(m->nlen > 64 ? 64 : m->nlen), m->name,
                   (int)(a->kl[i] > 64 ? 64 : a->kl[i]), a->kn[i]);
        if (j < a->npos) r_fail(e, "macro got multiple values for argument");
    }
    for (size_t j = 0; j < m->nk; j++) {
        value v;
        if (!get_arg(a, j, "\x01", &v)) {
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
        scope_set(e, sc, m->knames[j], m->klens[j], v);
    }
    sbuf cap = {0};
    cap.prev = e->cap_top;
    e->cap_top = &cap;
    exec_body(e, sc, &m->args);
    e->cap_top = cap.prev;
    return mk_sbuf(&cap);
}

static value do_call(env *e, value fn, cargs *a, const char *what) {
    if (fn.t == V_UNDEF) undef_fail(e, fn);
    if (fn.t != V_FUNC) r_fail(e, "'%s' object is not callable", type_name(fn));
    func *f = fn.u.fn;
    value x, y, z;
    switch (f->id) {
    case G_RANGE: {
        check_args(e, a, 3, NULL, "range");
        int64_t start = 0, stop, stepv = 1;
        if (a->npos == 0) r_fail(e, "range expected at least 1 argument");
        if (a->npos == 1)
            stop = want_int(e, a->pos[0], "range argument");
        else {
            start = want_int(e, a->pos[0], "range argument");
            stop = want_int(e, a->pos[1], "range argument");
            if (a->npos == 3) stepv = want_int(e, a->pos[2], "range argument");
        }
        if (stepv == 0) r_fail(e, "range() arg 3 must not be zero");
        double cnt = stepv > 0 ? ceil(((double)stop - (double)start) / (double)stepv) : ceil(((double)start - (double)stop) / (double)-stepv);
        if (cnt < 0) cnt = 0;
        if (cnt > CT_MAX_RANGE) r_fail(e, "Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
        list *l = list_new(e, (size_t)cnt);
        for (int64_t i = 0; i < (int64_t)cnt; i++) list_push(e, l, mk_int(start + i * stepv));
        l->is_range = 1;
        l->r[0] = start;
        l->r[1] = stop;
        l->r[2] = stepv;
        return mk_list(l);
    }
    case G_NAMESPACE:
    case G_DICT: {
        dict *d = dict_new(e);
        if (a->npos > 1) r_fail(e, "%s expected at most 1 positional argument", what);
        if (a->npos == 1) {
            if (a->pos[0].t != V_DICT) env_fail(e, CHAT_TEMPLATE_ERR_UNSUPPORTED, "%s() positional argument must be a dict", what);
            for (size_t i = 0; i < a->pos[0].u.d->n; i++) dict_set(e, d, a->pos[0].u.d->k[i], a->pos[0].u.d->v[i]);
        }
        for (size_t i = 0; i < a->nk; i++) dict_set(e, d, mk_str(a->kn[i], a->kl[i]), a->kv[i]);
        value v = mk_dict(d);
        if (f->id == G_NAMESPACE) v.t = V_NS;
        return v;
    }
    case G_RAISE: {
        value msg = get_arg(a, 0, "message", &x) ? py_str(e, x) : mk_str("", 0);
        env_fail(e, CHAT_TEMPLATE_ERR_RENDER, "raise_exception: %.*s", (int)(msg.u.s.n > 400 ? 400 : msg.u.s.n), msg.u.s.p);
    }
    case G_STRFTIME: {
        if (!get_arg(a, 0, "format", &x)) r_fail(e, "strftime_now() missing argument");
        want_str(e, x, "format");
        if (x.u.s.n > 256) env_fail(e, CHAT_TEMPLATE_ERR_LIMIT, "strftime_now format too long");
        char *fmt = xstrndup(e, x.u.s.p, x.u.s.n);
        time_t now = time(NULL);
        struct tm tmv;
        localtime_r(&now, &tmv);
        char buf[4096];
        size_t k = strftime(buf, sizeof buf, fmt, &tmv);
        if (k == 0 && x.u.s.n) r_fail(e, "strftime_now: result too long or empty");
        return mk_str(xstrndup(e, buf, k), k);
    }
    case G_MACRO: {
        if (++e->depth > e->lim.max_depth) env_fail(e, CHAT_TEMPLATE_ERR_LIMIT, "recursion limit exceeded");
        value r = call_macro(e, f, a);
        e->depth--;
        return r;
    }
    case M_ITEMS:
    case M_KEYS:
    case M_VALUES: {
        check_args(e, a, 0, NULL, "items");
        dict *d = f->self.u.d;
        list *l = list_new(e, d->n);
        for (size_t i = 0; i < d->n; i++) {
            if (f->id == M_KEYS)
                list_push(e, l, d->k[i]);
            else if (f->id == M_VALUES)
                list_push(e, l, d->v[i]);
            else {
                list *t = list_new(e, 2);
                t->tuple = 1;
                list_push(e, t, d->k[i]);
                list_push(e, t, d->v[i]);
                list_push(e, l, mk_list(t));
            }
        }
        return mk_list(l);
    }
    case M_GET: {
        check_args(e, a, 2, NULL, "get");
        if (!get_arg(a, 0, "", &x)) r_fail(e, "get expected at least 1 argument");
        value *p = dict_find(f->self.u.d, x);
        if (p) return *p;
        return get_arg(a, 1, "", &y) ? y : mk_none();
    }
    case M_UNSAFE: r_fail(e, "access to a mutating method is unsafe in the sandbox");
    case M_STR_OTHER:
    case M_DICT_OTHER:
    case M_LIST_OTHER:
    case G_UNSUPPORTED: env_fail(e, CHAT_TEMPLATE_ERR_UNSUPPORTED, "unsupported function or method '%s'", what);
    default:
        (void)z;
        return call_str_method(e, f->id, f->self, a);
    }
}

static void eval_args(env *e, scope *sc, node *x, cargs *a, value *self) {
    size_t extra = self ? 1 : 0;
    a->npos = x->args.n + extra;
    a->pos = xalloc(e, xmul(e, a->npos + 1, sizeof(value)));
    if (self) a->pos[0] = *self;
    for (size_t i = 0; i < x->args.n; i++) a->pos[i + extra] = eval(e, sc, x->args.v[i]);
    a->nk = x->nk;
    a->kn = x->knames;
    a->kl = x->klens;
    a->kv = xalloc(e, xmul(e, a->nk + 1, sizeof(value)));
    for (size_t i = 0; i < a->nk; i++) a->kv[i] = eval(e, sc, x->kwargs.v[i]);
}

static const char *const GLOBAL_NAMES[] = {"range", "namespace", "dict", "raise_exception", "strftime_now",
                                           "lipsum", "cycler", "joiner", NULL};

static value slice_v(env *e, value o, value va, value vb, value vc) {
    if (o.t == V_UNDEF) undef_fail(e, o);
    int64_t len;
    if (o.t == V_STR)
        len = (int64_t)u8_len(o.u.s.p, o.u.s.n);
    else if (o.t == V_LIST && !o.u.l->gen)
        len = (int64_t)o.u.l->n;
    else
        return mk_undef(NULL, 0);
    int64_t stepv = vc.t == V_NONE ? 1 : want_int(e, vc, "slice step");
    if (stepv == 0) r_fail(e, "slice step cannot be zero");
    int64_t lo, hi;
    if (stepv > 0) {
        lo = va.t == V_NONE ? 0 : want_int(e, va, "slice index");
        hi = vb.t == V_NONE ? len : want_int(e, vb, "slice index");
        if (lo < 0) lo = lo + len < 0 ? 0 : lo + len;
        if (lo > len) lo = len;
        if (hi < 0) hi = hi + len < 0 ? 0 : hi + len;
        if (hi > len) hi = len;
    } else {
        lo = va.t == V_NONE ? len - 1 : want_int(e, va, "slice index");
        hi = vb.t == V_NONE ? -1 : want_int(e, vb, "slice index");
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
        offs = xalloc(e, xmul(e, (size_t)len + 1, sizeof(size_t)));
        size_t i = 0, c = 0;
        while (i < o.u.s.n) {
            offs[c++] = i;
            size_t k;
            u8_dec(o.u.s.p + i, o.u.s.n - i, &k);
            i += k;
        }
        offs[c] = o.u.s.n;
        if (stepv == 1) return mk_str(o.u.s.p + offs[lo], lo < hi ? offs[hi] - offs[lo] : 0);
    } else
        l = list_new(e, 0);
    for (int64_t i = lo; stepv > 0 ? i < hi : i > hi; i += stepv) {
        if (o.t == V_STR)
            sb_put(e, &b, o.u.s.p + offs[i], offs[i + 1] - offs[i]);
        else
            list_push(e, l, o.u.l->v[i]);
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

static value eval(env *e, scope *sc, node *x) {
    step(e);
    if (++e->depth > e->lim.max_depth * 4) env_fail(e, CHAT_TEMPLATE_ERR_LIMIT, "recursion limit exceeded");
    value r;
    switch (x->k) {
    case E_LIT: r = x->lit; break;
    case E_NAME: {
        value *p = scope_find(sc, x->name, x->nlen);
        if (p) {
            r = *p;
            break;
        }
        int g = lookup_name(GLOBAL_NAMES, x->name, x->nlen);
        if (g >= 0)
            r = mk_func(e, g <= 4 ? G_RANGE + g : G_UNSUPPORTED, mk_none());
        else
            r = mk_undef(x->name, x->nlen);
        break;
    }
    case E_LIST:
    case E_TUPLE: {
        list *l = list_new(e, x->args.n);
        for (size_t i = 0; i < x->args.n; i++) list_push(e, l, eval(e, sc, x->args.v[i]));
        l->tuple = x->k == E_TUPLE;
        r = mk_list(l);
        break;
    }
    case E_DICT: {
        dict *d = dict_new(e);
        for (size_t i = 0; i < x->args.n; i++) {
            value k = eval(e, sc, x->args.v[i]);
            if (k.t == V_LIST && !k.u.l->tuple) r_fail(e, "unhashable type: 'list'");
            if (k.t == V_DICT || k.t == V_NS) r_fail(e, "unhashable type: 'dict'");
            dict_set(e, d, k, eval(e, sc, x->kwargs.v[i]));
        }
        r = mk_dict(d);
        break;
    }
    case E_ATTR: r = getattr_v(e, eval(e, sc, x->a), x->name, x->nlen); break;
    case E_ITEM: {
        value o = eval(e, sc, x->a);
        value k = eval(e, sc, x->b);
        if (k.t == V_LIST && !k.u.l->tuple) r_fail(e, "unhashable type: 'list'");
        r = getitem_v(e, o, k);
        break;
    }
    case E_SLICE: {
        if (x->args.n != 1) env_fail(e, CHAT_TEMPLATE_ERR_UNSUPPORTED, "slices inside tuple subscripts are not supported");
        value o = eval(e, sc, x->args.v[0]);
        value va = x->a ? eval(e, sc, x->a) : mk_none();
        value vb = x->b ? eval(e, sc, x->b) : mk_none();
        value vc = x->c ? eval(e, sc, x->c) : mk_none();
        r = slice_v(e, o, va, vb, vc);
        break;
    }
    case E_CALL: {
        value fn = eval(e, sc, x->a);
        cargs a;
        eval_args(e, sc, x, &a, NULL);
        const char *what = x->a->k == E_ATTR || x->a->k == E_NAME ? xstrndup(e, x->a->name, x->a->nlen) : "call";
        r = do_call(e, fn, &a, what);
        break;
    }
    case E_FILTER: {
        value v = eval(e, sc, x->a);
        cargs a;
        eval_args(e, sc, x, &a, NULL);
        r = apply_filter(e, x->op, v, &a);
        break;
    }
    case E_TEST: {
        value v = eval(e, sc, x->a);
        cargs a;
        eval_args(e, sc, x, &a, NULL);
        int t = run_test(e, (int)x->lit.u.i, v, &a);
        r = mk_bool(x->op ? !t : t);
        break;
    }
    case E_NEG:
    case E_POS: {
        value v = eval(e, sc, x->a);
        if (v.t == V_UNDEF) undef_fail(e, v);
        if (!is_num(v)) r_fail(e, "bad operand type for unary %c: '%s'", x->k == E_NEG ? '-' : '+', type_name(v));
        if (x->k == E_POS)
            r = v.t == V_BOOL ? mk_int(v.u.b) : v;
        else if (v.t == V_FLOAT)
            r = mk_float(-v.u.f);
        else {
            if (num_i(v) == INT64_MIN) env_fail(e, CHAT_TEMPLATE_ERR_UNSUPPORTED, "integer overflow");
            r = mk_int(-num_i(v));
        }
        break;
    }
    case E_NOT: r = mk_bool(!truthy(eval(e, sc, x->a))); break;
    case E_AND: {
        value a = eval(e, sc, x->a);
        r = truthy(a) ? eval(e, sc, x->b) : a;
        break;
    }
    case E_OR: {
        value a = eval(e, sc, x->a);
        r = truthy(a) ? a : eval(e, sc, x->b);
        break;
    }
    case E_BIN: r = arith(e, x->op, eval(e, sc, x->a), eval(e, sc, x->b)); break;
    case E_CMP: {
        value l = eval(e, sc, x->a);
        r = mk_bool(1);
        for (size_t i = 0; i < x->args.n; i++) {
            value rv = eval(e, sc, x->args.v[i]);
            if (!compare(e, x->ops[i], l, rv)) {
                r = mk_bool(0);
                break;
            }
            l = rv;
        }
        break;
    }
    case E_COND:
        if (truthy(eval(e, sc, x->a)))
            r = eval(e, sc, x->b);
        else
            r = x->c ? eval(e, sc, x->c) : mk_undef(NULL, 0);
        break;
    case E_CONCAT: {
        sbuf b = {0};
        for (size_t i = 0; i < x->args.n; i++) {
            value s = py_str(e, eval(e, sc, x->args.v[i]));
            sb_put(e, &b, s.u.s.p, s.u.s.n);
        }
        r = mk_sbuf(&b);
        break;
    }
    default: env_fail(e, CHAT_TEMPLATE_ERR_RENDER, "internal error: bad expression node");
    }
    e->depth--;
    return r;
}

/* ---- statements ---- */

static void emit(env *e, const char *p, size_t n) { sb_put(e, e->cap_top, p, n); }

static void assign_targets(env *e, scope *sc, node *x, value v) {
    if (!x->op) {
        scope_set(e, sc, x->knames[0], x->klens[0], v);
        return;
    }
    list *l = iter_list(e, v);
    if (l->n != x->nk) r_fail(e, "cannot unpack: expected %zu values, got %zu", x->nk, l->n);
    for (size_t i = 0; i < x->nk; i++) scope_set(e, sc, x->knames[i], x->klens[i], l->v[i]);
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
#define LSET(k, v) dict_set(e, d, mk_str(k, strlen(k)), v)
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
    LSET("cycle", mk_func(e, G_UNSUPPORTED, mk_none()));
#undef LSET
    value v = mk_dict(d);
    return v;
}

static int exec_stmt(env *e, scope *sc, node *x) {
    step(e);
    e->line = x->line;
    switch (x->k) {
    case S_DATA: emit(e, x->lit.u.s.p, x->lit.u.s.n); return EX_NORMAL;
    case S_OUT: {
        value v = py_str(e, eval(e, sc, x->a));
        emit(e, v.u.s.p, v.u.s.n);
        return EX_NORMAL;
    }
    case S_IF:
        if (truthy(eval(e, sc, x->a))) return exec_body(e, sc, &x->args);
        return exec_body(e, sc, &x->kwargs);
    case S_FOR: {
        value it = eval(e, sc, x->a);
        if (it.t == V_NONE || it.t == V_INT || it.t == V_FLOAT || it.t == V_BOOL || it.t == V_NS || it.t == V_FUNC)
            r_fail(e, "'%s' object is not iterable", type_name(it));
        list *items = iter_list(e, it);
        if (x->b) {
            list *f = list_new(e, 0);
            scope *ts = scope_new(e, sc);
            for (size_t i = 0; i < items->n; i++) {
                step(e);
                ts->n = 0;
                assign_targets(e, ts, x, items->v[i]);
                if (truthy(eval(e, ts, x->b))) list_push(e, f, items->v[i]);
            }
            items = f;
        }
        /* One scope and loop dict per for statement, reset each iteration:
         * bounded memory; body assignments still do not outlive an iteration. */
        scope *is = scope_new(e, sc);
        dict *ld = dict_new(e);
        for (size_t i = 0; i < items->n; i++) {
            step(e);
            is->n = 0;
            scope_set(e, is, "loop", 4, loop_var(e, ld, items, i));
            assign_targets(e, is, x, items->v[i]);
            int r = exec_body(e, is, &x->args);
            if (r == EX_BREAK) break;
        }
        if (items->n == 0) return exec_body(e, sc, &x->kwargs);
        return EX_NORMAL;
    }
    case S_SET: assign_targets(e, sc, x, eval(e, sc, x->a)); return EX_NORMAL;
    case S_SETNS: {
        value *ns = scope_find(sc, x->name, x->nlen);
        if (!ns || ns->t != V_NS) r_fail(e, "cannot assign attribute on non-namespace object");
        value v = eval(e, sc, x->a);
        dict_set(e, ns->u.d, mk_str(x->knames[0], x->klens[0]), v);
        return EX_NORMAL;
    }
    case S_SETBLOCK: {
        sbuf cap = {0};
        cap.prev = e->cap_top;
        e->cap_top = &cap;
        exec_body(e, sc, &x->args);
        e->cap_top = cap.prev;
        scope_set(e, sc, x->knames[0], x->klens[0], mk_sbuf(&cap));
        return EX_NORMAL;
    }
    case S_MACRO: {
        value m = mk_func(e, G_MACRO, mk_none());
        m.u.fn->mac = x;
        m.u.fn->sc = sc;
        scope_set(e, sc, x->name, x->nlen, m);
        return EX_NORMAL;
    }
    case S_BREAK: return EX_BREAK;
    case S_CONTINUE: return EX_CONTINUE;
    default: env_fail(e, CHAT_TEMPLATE_ERR_RENDER, "internal error: bad statement node");
    }
}

static int exec_body(env *e, scope *sc, nlist *body) {
    if (++e->depth > e->lim.max_depth * 4) env_fail(e, CHAT_TEMPLATE_ERR_LIMIT, "recursion limit exceeded");
    int r = EX_NORMAL;
    for (size_t i = 0; i < body->n; i++) {
        r = exec_stmt(e, sc, body->v[i]);
        if (r != EX_NORMAL) break;
    }
    e->depth--;
    return r;
}

/* ------------------------------------------------------------------ */
/* Public API                                                           */
/* ------------------------------------------------------------------ */

struct chat_template {
    arena ar;     /* owns the normalized source and the AST of the default template */
    nlist body;
    arena tool_ar; /* the "tool_use" template of a template list, used when tools are given */
    nlist tool_body;
    bool has_default, has_tool;
    char *ctx_json; /* JSON object of extra context variables (special tokens); malloc'd */
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

static void set_err(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    for (char *c = err; *c; c++)
        if (*c == '\n' || *c == '\r') *c = ' ';
}

/* Compiles source into t: the default template, or the tool_use one. */
static int compile_into(chat_template *t, const char *source, size_t n, int tool, char *err, size_t errlen) {
    env *e = calloc(1, sizeof *e);
    if (!e) {
        set_err(err, errlen, "out of memory");
        return CHAT_TEMPLATE_ERR_NOMEM;
    }
    e->err = err;
    e->errlen = errlen;
    e->lim = t->lim;
    e->ar.limit = t->lim.max_memory_bytes;
    if (setjmp(e->jb)) {
        int st = e->status;
        tl_env = NULL;
        arena_free(&e->ar);
        free(e);
        return st;
    }
    tl_env = e;
    if (n > CT_MAX_SOURCE) env_fail(e, CHAT_TEMPLATE_ERR_LIMIT, "template larger than %zu bytes", CT_MAX_SOURCE);
    if (!u8_valid(source, n)) env_fail(e, CHAT_TEMPLATE_ERR_PARSE, "template is not valid UTF-8");
    /* newline normalization and keep_trailing_newline=False */
    char *src = xalloc(e, n + 1);
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
    lexer L = {.e = e, .s = src, .n = m};
    lex(&L);
    parser P = {.e = e, .tk = L.tk, .i = 0, .ntk = L.ntk};
    nlist body = {0};
    parse_body(&P, &body, NULL);
    if (tool) {
        t->tool_ar = e->ar;
        t->tool_body = body;
        t->has_tool = true;
    } else {
        t->ar = e->ar;
        t->body = body;
        t->has_default = true;
    }
    tl_env = NULL;
    free(e);
    return CHAT_TEMPLATE_OK;
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
    if (!t) {
        set_err(err, errlen, "out of memory");
        return CHAT_TEMPLATE_ERR_NOMEM;
    }
    chat_template_default_limits(&t->lim);
    *out = t;
    return CHAT_TEMPLATE_OK;
}

int chat_template_create(const char *source, const char *bos_token, const char *eos_token, chat_template **out,
                         char *err, size_t errlen) {
    *out = NULL;
    chat_template *t;
    int st = template_new(&t, err, errlen);
    if (st) return st;
    cJSON *ctx = cJSON_CreateObject();
    if (!ctx || !cJSON_AddStringToObject(ctx, "bos_token", bos_token ? bos_token : "") ||
        !cJSON_AddStringToObject(ctx, "eos_token", eos_token ? eos_token : "") ||
        !(t->ctx_json = cJSON_PrintUnformatted(ctx))) {
        cJSON_Delete(ctx);
        chat_template_destroy(t);
        set_err(err, errlen, "out of memory");
        return CHAT_TEMPLATE_ERR_NOMEM;
    }
    cJSON_Delete(ctx);
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

int chat_template_load_dir(const char *dir, chat_template **out, char *err, size_t errlen) {
    *out = NULL;
    char path[4096];
    char ferr[256] = "";
    size_t len = 0;
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    char *text = util_read_file(path, (size_t)64 << 20, &len, ferr, sizeof ferr);
    if (!text && access(path, F_OK) == 0) {
        set_err(err, errlen, "%s", ferr);
        return CHAT_TEMPLATE_ERR_IO;
    }
    cJSON *cfg = NULL;
    if (text) {
        cfg = cJSON_ParseWithLength(text, len);
        free(text);
        if (!cfg || !cJSON_IsObject(cfg)) {
            cJSON_Delete(cfg);
            set_err(err, errlen, "%s: invalid JSON", path);
            return CHAT_TEMPLATE_ERR_PARSE;
        }
    }
    /* template source: chat_template.jinja beside the config wins, as in transformers */
    char *source = NULL, *tool_source = NULL;
    bool is_list = false;
    snprintf(path, sizeof path, "%s/chat_template.jinja", dir);
    source = util_read_file(path, CT_MAX_SOURCE, &len, ferr, sizeof ferr);
    if (!source && access(path, F_OK) == 0) {
        cJSON_Delete(cfg);
        set_err(err, errlen, "%s", ferr);
        return CHAT_TEMPLATE_ERR_IO;
    }
    if (source && strlen(source) != len) {
        free(source);
        cJSON_Delete(cfg);
        set_err(err, errlen, "%s: template contains a NUL byte", path);
        return CHAT_TEMPLATE_ERR_PARSE;
    }
    if (!source && cfg) {
        const cJSON *ct = cJSON_GetObjectItemCaseSensitive(cfg, "chat_template");
        if (cJSON_IsString(ct))
            source = strdup(ct->valuestring);
        else if (cJSON_IsArray(ct)) {
            /* like transformers' get_chat_template: "tool_use" when tools are given, else "default" */
            is_list = true;
            const cJSON *it;
            cJSON_ArrayForEach(it, ct) {
                const cJSON *nm = cJSON_GetObjectItemCaseSensitive(it, "name");
                const cJSON *tp = cJSON_GetObjectItemCaseSensitive(it, "template");
                if (!cJSON_IsString(nm) || !cJSON_IsString(tp)) continue;
                if (strcmp(nm->valuestring, "default") == 0) {
                    free(source);
                    source = strdup(tp->valuestring);
                } else if (strcmp(nm->valuestring, "tool_use") == 0) {
                    free(tool_source);
                    tool_source = strdup(tp->valuestring);
                }
            }
            if (!source && !tool_source) {
                cJSON_Delete(cfg);
                set_err(err, errlen, "%s/tokenizer_config.json: chat_template list has neither 'default' nor 'tool_use'", dir);
                return CHAT_TEMPLATE_ERR_PARSE;
            }
        }
    }
    /* special tokens map: like transformers, only the tokens that are set */
    cJSON *ctx = cJSON_CreateObject();
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
    cJSON_Delete(cfg);
    chat_template *t;
    int st = template_new(&t, err, errlen);
    if (st) {
        free(source);
        free(tool_source);
        cJSON_Delete(ctx);
        return st;
    }
    t->ctx_json = cJSON_PrintUnformatted(ctx);
    cJSON_Delete(ctx);
    if (!t->ctx_json) {
        free(source);
        free(tool_source);
        chat_template_destroy(t);
        set_err(err, errlen, "out of memory");
        return CHAT_TEMPLATE_ERR_NOMEM;
    }
    t->fallback = source == NULL && !is_list;
    st = CHAT_TEMPLATE_OK;
    if (source || !is_list)
        st = compile_into(t, source ? source : CHATML_TEMPLATE, source ? strlen(source) : strlen(CHATML_TEMPLATE), 0, err, errlen);
    if (!st && tool_source) st = compile_into(t, tool_source, strlen(tool_source), 1, err, errlen);
    free(source);
    free(tool_source);
    if (st) {
        chat_template_destroy(t);
        return st;
    }
    *out = t;
    return CHAT_TEMPLATE_OK;
}

void chat_template_set_limits(chat_template *t, const chat_template_limits *lim) { t->lim = *lim; }

bool chat_template_is_fallback(const chat_template *t) { return t->fallback; }

static void root_set_json_object(env *e, scope *root, const char *json, const char *what) {
    value v = json_parse(e, json, strlen(json));
    if (v.t != V_DICT) env_fail(e, CHAT_TEMPLATE_ERR_PARSE, "%s must be a JSON object", what);
    for (size_t i = 0; i < v.u.d->n; i++)
        scope_set(e, root, v.u.d->k[i].u.s.p, v.u.d->k[i].u.s.n, v.u.d->v[i]);
}

int chat_template_render_ex(const chat_template *t, const char *messages_json, const char *tools_json,
                            const char *extra_json, bool add_generation_prompt, char **out, size_t *out_len,
                            char *err, size_t errlen) {
    *out = NULL;
    if (out_len) *out_len = 0;
    if (err && errlen) err[0] = 0;
    env *e = calloc(1, sizeof *e);
    if (!e) {
        set_err(err, errlen, "out of memory");
        return CHAT_TEMPLATE_ERR_NOMEM;
    }
    e->err = err;
    e->errlen = errlen;
    e->lim = t->lim;
    e->ar.limit = t->lim.max_memory_bytes;
    if (setjmp(e->jb)) {
        int st = e->status;
        tl_env = NULL;
        arena_free(&e->ar);
        free(e);
        return st;
    }
    tl_env = e;
    if (!messages_json) env_fail(e, CHAT_TEMPLATE_ERR_PARSE, "messages are missing");
    scope *root = scope_new(e, NULL);
    root_set_json_object(e, root, t->ctx_json, "special tokens");
    value msgs = json_parse(e, messages_json, strlen(messages_json));
    if (msgs.t != V_LIST) env_fail(e, CHAT_TEMPLATE_ERR_PARSE, "messages must be a JSON array");
    value tools = mk_none();
    if (tools_json) {
        tools = json_parse(e, tools_json, strlen(tools_json));
        if (tools.t != V_LIST && tools.t != V_NONE) env_fail(e, CHAT_TEMPLATE_ERR_PARSE, "tools must be a JSON array");
        if (tools.t == V_LIST)
            for (size_t i = 0; i < tools.u.l->n; i++)
                if (tools.u.l->v[i].t != V_DICT) env_fail(e, CHAT_TEMPLATE_ERR_PARSE, "each tool must be a JSON object");
    }
    if (extra_json) root_set_json_object(e, root, extra_json, "extra context");
    scope_set(e, root, "messages", 8, msgs);
    scope_set(e, root, "tools", 5, tools);
    scope_set(e, root, "documents", 9, mk_none());
    scope_set(e, root, "add_generation_prompt", 21, mk_bool(add_generation_prompt));
    const nlist *body = &t->body;
    if (tools.t != V_NONE && t->has_tool)
        body = &t->tool_body;
    else if (!t->has_default)
        env_fail(e, CHAT_TEMPLATE_ERR_RENDER, "this model has only a 'tool_use' chat template: pass tools");
    sbuf main = {0};
    e->cap_top = &main;
    e->root = root;
    exec_body(e, root, (nlist *)body);
    char *res = malloc(main.n + 1);
    if (!res) env_fail(e, CHAT_TEMPLATE_ERR_NOMEM, "out of memory");
    if (main.n) memcpy(res, main.p, main.n);
    res[main.n] = 0;
    if (out_len) *out_len = main.n;
    tl_env = NULL;
    arena_free(&e->ar);
    free(e);
    *out = res;
    return CHAT_TEMPLATE_OK;
}

int chat_template_render(const chat_template *t, const char *messages_json, const char *tools_json,
                         bool add_generation_prompt, char **out, char *err, size_t errlen) {
    return chat_template_render_ex(t, messages_json, tools_json, NULL, add_generation_prompt, out, NULL, err, errlen);
}

void chat_template_destroy(chat_template *t) {
    if (!t) return;
    arena_free(&t->ar);
    arena_free(&t->tool_ar);
    free(t->ctx_json);
    free(t);
}
