/* Internals of the chat-template engine, shared by chat/template_*.c and
 * chat/chat_template.c: the arena, the Python-like value type, the render
 * environment (errors unwind with longjmp), tokens and the AST. Names with
 * the tpl__ prefix are internal to chat/; the public API is chat_template.h. */
#ifndef CHAT_TEMPLATE_INTERNAL_H
#define CHAT_TEMPLATE_INTERNAL_H

#include <cjson/cJSON.h>
#include <setjmp.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "chat/chat_template.h"

#define CT_MAX_SOURCE ((size_t)16 << 20)
#define CT_MAX_RANGE 100000 /* jinja2.sandbox.MAX_RANGE */

/* ---- arena: all memory of one compile or render ---- */

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
void tpl__arena_free(arena *a);

/* ---- values ---- */

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
/* ---- environment shared by compile and render: errors and allocation ---- */

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

/* Growable byte buffer in the arena (old storage is abandoned on growth). */
typedef struct sbuf {
    char *p;
    size_t n, cap;
    struct sbuf *prev;
} sbuf;
/* Records the failure (status, one-line message prefixed with the line) and
 * longjmps to the entry point that owns e. */
void tpl__env_fail(env *e, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4), noreturn));
/* CHAT_TEMPLATE_ERR_RENDER with a message; for undefined values, names them. */
void tpl__r_fail(env *e, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
void tpl__undef_fail(env *e, value u) __attribute__((noreturn));
/* Makes e the render or compile of this thread (for tpl__charge); NULL ends it. */
void tpl__env_set_current(env *e);
/* Arena allocation; fails the render (limit or out of memory), never NULL. */
void *tpl__xalloc(env *e, size_t n);
void *tpl__xcalloc(env *e, size_t n);
size_t tpl__xmul(env *e, size_t a, size_t b);
char *tpl__xstrndup(env *e, const char *s, size_t n);
/* Charges work proportional to nbytes to the current render (see value.c). */
void tpl__charge(size_t nbytes);
/* One evaluation step against lim.max_steps. */
void tpl__step(env *e);
void tpl__sb_put(env *e, sbuf *b, const char *s, size_t n);
void tpl__sb_put_int(env *e, sbuf *b, int64_t i); /* decimal, as Python's str(int) */

static inline void sb_puts(env *e, sbuf *b, const char *s) { tpl__sb_put(e, b, s, strlen(s)); }
static inline void sb_putc(env *e, sbuf *b, char c) { tpl__sb_put(e, b, &c, 1); }
static inline value mk_undef(const char *name, size_t n) {
    value v = {.t = V_UNDEF};
    v.u.s.p = name;
    v.u.s.n = n;
    return v;
}
static inline value mk_none(void) { return (value){.t = V_NONE}; }
static inline value mk_bool(int b) {
    value v = {.t = V_BOOL};
    v.u.b = !!b;
    return v;
}
static inline value mk_int(int64_t i) {
    value v = {.t = V_INT};
    v.u.i = i;
    return v;
}
static inline value mk_float(double f) {
    value v = {.t = V_FLOAT};
    v.u.f = f;
    return v;
}
static inline value mk_str(const char *p, size_t n) {
    value v = {.t = V_STR};
    v.u.s.p = p;
    v.u.s.n = n;
    return v;
}
static inline value mk_sbuf(sbuf *b) { return mk_str(b->p ? b->p : "", b->n); }

static inline int value_depth(value v) {
    if (v.t == V_LIST) return v.u.l->depth + 1;
    if (v.t == V_DICT) return v.u.d->depth + 1;
    return 0;
}

static inline value mk_list(list *l) {
    value v = {.t = V_LIST};
    v.u.l = l;
    return v;
}
static inline value mk_dict(dict *d) {
    value v = {.t = V_DICT};
    v.u.d = d;
    return v;
}

static inline int is_num(value v) { return v.t == V_INT || v.t == V_FLOAT || v.t == V_BOOL; }
static inline double num_f(value v) { return v.t == V_FLOAT ? v.u.f : v.t == V_INT ? (double)v.u.i : (double)v.u.b; }
static inline int64_t num_i(value v) { return v.t == V_INT ? v.u.i : (int64_t)v.u.b; }

static inline int str_eq(value a, const char *s) {
    size_t n = strlen(s);
    return a.t == V_STR && a.u.s.n == n && memcmp(a.u.s.p, s, n) == 0;
}

list *tpl__list_new(env *e, size_t cap);
void tpl__list_push(env *e, list *l, value v);
dict *tpl__dict_new(env *e);
value *tpl__dict_find_s(dict *d, const char *s, size_t n);
value *tpl__dict_find(dict *d, value k);
void tpl__dict_set(env *e, dict *d, value k, value v);
value tpl__mk_func(env *e, int id, value self);
int tpl__lookup_name(const char *const *tbl, const char *s, size_t n);

/* Python semantics of values (template_value.c) */
int tpl__py_eq(value a, value b);
const char *tpl__type_name(value v);
int tpl__truthy(value v);
list *tpl__iter_list(env *e, value v);
void tpl__fmt_float(double d, char *out, size_t outlen);
void tpl__py_str_into(env *e, sbuf *b, value v, int repr);
value tpl__py_str(env *e, value v);

/* UTF-8 and Unicode properties of valid UTF-8 text */
int32_t tpl__u8_dec(const char *s, size_t n, size_t *len);
size_t tpl__u8_len(const char *s, size_t n);
size_t tpl__u8_off(const char *s, size_t n, size_t ci);
int tpl__py_isspace(int32_t c);
int tpl__cp_iscased_upper(int32_t c);
int tpl__cp_iscased(int32_t c);
value tpl__str_case(env *e, value s, int mode);

/* ---- operators, item access and call arguments (template_ops.c) ---- */

typedef struct {
    value *pos;
    size_t npos;
    const char **kn;
    size_t *kl;
    value *kv;
    size_t nk;
} cargs;


int tpl__py_lt(env *e, value a, value b);
int tpl__py_in(env *e, value a, value b);
value tpl__getitem_v(env *e, value o, value k);
value tpl__arith(env *e, int op, value a, value b);
int tpl__compare(env *e, int op, value a, value b);
const char *tpl__memmem(const char *h, size_t hn, const char *nd, size_t nn);
int64_t tpl__str_find(const char *h, size_t hn, const char *nd, size_t nn, size_t from);
char *tpl__str_rev(env *e, const char *s, size_t n);
int tpl__get_arg(cargs *a, size_t pos, const char *name, value *out);
void tpl__check_args(env *e, cargs *a, size_t maxpos, const char *const *names, const char *fn);
value tpl__want_str(env *e, value v, const char *what);
int64_t tpl__want_int(env *e, value v, const char *what);
void tpl__merge_sort(env *e, value *items, value *keys, size_t n, int reverse, value *tmpi, value *tmpk);

/* ---- JSON in and out (template_json.c) ---- */

typedef struct {
    int indent; /* < 0: none */
    const char *item_sep, *key_sep;
    int ensure_ascii, sort_keys;
} json_opts;
void tpl__json_dump(env *e, sbuf *b, value v, const json_opts *o, int level);
/* JSON text to values with Python json.loads semantics (1.0 stays a float,
 * "\\u0000" stays in the string); fails the render on bad input. */
value tpl__json_parse(env *e, const char *s, size_t n);
/* A cJSON tree to values, exactly as the tree printed by cJSON and read by
 * tpl__json_parse would be (see template_json.c). */
value tpl__json_from_cjson(env *e, const cJSON *j);

/* ---- lexer and parser (template_lexer.c, template_parser.c) ---- */

typedef enum { T_EOF, T_DATA, T_VBEGIN, T_VEND, T_BBEGIN, T_BEND, T_NAME, T_STR, T_INT, T_FLOAT, T_OP } ttype;

typedef struct {
    ttype t;
    int line;
    const char *p; /* name/op text, data text, or decoded string */
    size_t n;
    int64_t i;
    double f;
} token;

/* Tokenizes the normalized source s[0..n) (jinja2 with trim_blocks and
 * lstrip_blocks); the tokens end with T_EOF. */
void tpl__lex(env *e, const char *s, size_t n, token **out, size_t *nout);

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

struct scope {
    scope *parent;
    size_t n, cap;
    const char **names;
    size_t *lens;
    value *vals;
};

/* Parses tokens (ending with T_EOF) into the template body. */
nlist tpl__parse(env *e, token *tk, size_t ntk);

/* ---- evaluator, methods, filters and tests ---- */

/* Builtin functions and bound methods. */
enum {
    G_RANGE, G_NAMESPACE, G_DICT, G_RAISE, G_STRFTIME, G_UNSUPPORTED, G_MACRO,
    M_STARTSWITH, M_ENDSWITH, M_STRIP, M_LSTRIP, M_RSTRIP, M_SPLIT, M_RSPLIT, M_REPLACE, M_UPPER, M_LOWER,
    M_TITLE, M_CAPITALIZE, M_FIND, M_RFIND, M_COUNT, M_JOIN, M_FORMAT, M_ISDIGIT, M_ISALPHA, M_ISSPACE,
    M_ISALNUM, M_ISUPPER, M_ISLOWER,
    M_ITEMS, M_KEYS, M_VALUES, M_GET,
    M_UNSAFE, M_STR_OTHER, M_DICT_OTHER, M_LIST_OTHER,
};
enum { EX_NORMAL, EX_BREAK, EX_CONTINUE };

scope *tpl__scope_new(env *e, scope *parent);
void tpl__scope_set(env *e, scope *s, const char *nm, size_t n, value v);
/* Runs body in sc, writing into e->cap_top; returns EX_*. */
int tpl__exec_body(env *e, scope *sc, nlist *body);
/* Method binding (attribute lookup) and string and dict methods. */
value tpl__getattr_v(env *e, value o, const char *nm, size_t n);
value tpl__call_method(env *e, int id, value self, cargs *a, const char *what);
value tpl__str_strip(env *e, value s, value chars, int left, int right);
value tpl__str_replace(env *e, value s, value old, value nw, int64_t count);
value tpl__call_str_method(env *e, int id, value s, cargs *a);
/* Filters and tests by name: an id >= 0, or TPL_UNKNOWN / TPL_UNSUPPORTED
 * (a jinja2 builtin this engine does not implement). */
enum { TPL_UNKNOWN = -1, TPL_UNSUPPORTED = -2 };
int tpl__filter_lookup(const char *name, size_t n);
int tpl__test_lookup(const char *name, size_t n);
value tpl__filter_apply(env *e, int id, value v, cargs *a);
int tpl__test_run(env *e, int id, value v, cargs *a);

#endif
