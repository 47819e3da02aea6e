/* Chat templates, parser: tokens to the AST by jinja2's grammar (its
 * Parser's precedence levels and statements); filter and test names are
 * resolved here, once per template. */
#include <stdarg.h>
#include <stdio.h>

#include "chat/template_internal.h"

/* ------------------------------------------------------------------ */
/* AST                                                                  */
/* ------------------------------------------------------------------ */

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
        node **nv = tpl__xalloc(e, tpl__xmul(e, cap, sizeof(node *)));
        if (l->n) memcpy(nv, l->v, l->n * sizeof(node *));
        l->v = nv;
        l->cap = cap;
    }
    l->v[l->n++] = x;
}

static node *nnew(parser *P, nkind k) {
    node *x = tpl__xcalloc(P->e, sizeof *x);
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
    tpl__env_fail(P->e, CHAT_TEMPLATE_ERR_PARSE, "syntax error: %s", msg);
}
static void p_unsupported(parser *P, const char *what, const char *nm, size_t n) __attribute__((noreturn));
static void p_unsupported(parser *P, const char *what, const char *nm, size_t n) {
    P->e->line = cur(P)->line;
    tpl__env_fail(P->e, CHAT_TEMPLATE_ERR_UNSUPPORTED, "unsupported %s '%.*s'", what, (int)(n > 64 ? 64 : n), nm);
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
static void parse_body(parser *P, nlist *body, const char *const *ends);

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
                const char **nk = tpl__xalloc(P->e, cap * sizeof(char *));
                size_t *nl = tpl__xalloc(P->e, cap * sizeof(size_t));
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

/* fn(args): the call node of callee fn. */
static node *parse_call(parser *P, node *fn) {
    node *c = nnew(P, E_CALL);
    c->a = fn;
    parse_call_args(P, c);
    return c;
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
            tpl__sb_put(P->e, &b, cur(P)->p, cur(P)->n);
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
        } else if (tk_op(t, "("))
            x = parse_call(P, x);
        else
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
            f->op = tpl__filter_lookup(nm->p, nm->n);
            if (f->op == TPL_UNKNOWN) {
                P->i--;
                P->e->line = cur(P)->line;
                tpl__env_fail(P->e, CHAT_TEMPLATE_ERR_PARSE, "no filter named '%.*s'", (int)(nm->n > 64 ? 64 : nm->n), nm->p);
            }
            if (f->op == TPL_UNSUPPORTED) p_unsupported(P, "filter", nm->p, nm->n);
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
            int id = tpl__test_lookup(nm->p, nm->n);
            if (id == TPL_UNKNOWN) {
                P->i--;
                P->e->line = cur(P)->line;
                tpl__env_fail(P->e, CHAT_TEMPLATE_ERR_PARSE, "no test named '%.*s'", (int)(nm->n > 64 ? 64 : nm->n), nm->p);
            }
            if (id == TPL_UNSUPPORTED) p_unsupported(P, "test", nm->p, nm->n);
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
        } else if (tk_op(t, "("))
            x = parse_call(P, x);
        else
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
            int *no = tpl__xalloc(P->e, cap * sizeof(int));
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


/* Assignment targets: one name, or names separated by commas (optionally parenthesized). */
static void parse_targets(parser *P, node *x, const char *extra_end) {
    int paren = 0;
    if (tk_op(cur(P), "(")) {
        paren = 1;
        P->i++;
    }
    size_t cap = 8;
    x->knames = tpl__xalloc(P->e, cap * sizeof(char *));
    x->klens = tpl__xalloc(P->e, cap * sizeof(size_t));
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

/* Parses a body up to {% end %} and consumes that end tag. */
static void parse_until(parser *P, nlist *body, const char *end) {
    const char *const ends[] = {end, NULL};
    parse_body(P, body, ends);
    P->i++;
    expect_block_end(P);
}

/* {% if %}...{% elif %}...{% else %}...{% endif %}: elif chains nest in kwargs (the else body). */
static node *parse_if(parser *P, int line) {
    node *x;
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
        expect_block_end(P);
        if (tk_name(t, "else")) parse_until(P, &curif->kwargs, "endif");
        break;
    }
    return x;
}

/* {% for targets in iter [if cond] %}...[{% else %}...]{% endfor %} */
static node *parse_for(parser *P, int line) {
    node *x;
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
    int has_else = tk_name(cur(P), "else");
    P->i++;
    expect_block_end(P);
    if (has_else) parse_until(P, &x->kwargs, "endfor");
    return x;
}

/* {% set ns.attr = e %}, {% set a, b = e %} or the block form {% set x %}...{% endset %} */
static node *parse_set(parser *P, int line) {
    node *x;
    P->i++;
    if (cur(P)->t == T_NAME && tk_op(peek(P, 1), ".")) {
        x = nnew(P, S_SETNS);
        x->line = line;
        token *ns = expect_name(P);
        P->i++;
        token *attr = expect_name(P);
        x->name = ns->p;
        x->nlen = ns->n;
        x->knames = tpl__xalloc(P->e, sizeof(char *));
        x->klens = tpl__xalloc(P->e, sizeof(size_t));
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
    parse_until(P, &x->args, "endset");
    return x;
}

/* {% macro name(params, with=defaults) %}...{% endmacro %} */
static node *parse_macro(parser *P, int line) {
    node *x;
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
            const char **nk = tpl__xalloc(P->e, cap * sizeof(char *));
            size_t *nl = tpl__xalloc(P->e, cap * sizeof(size_t));
            node **dv = tpl__xalloc(P->e, cap * sizeof(node *));
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

/* {% generation %}: transformers' AssistantTracker; renders its body unchanged */
static node *parse_generation(parser *P) {
    node *x;
    P->i++;
    expect_block_end(P);
    x = nnew(P, S_IF);
    x->a = nnew(P, E_LIT);
    x->a->lit = mk_bool(1);
    parse_until(P, &x->args, "endgeneration");
    return x;
}

static node *parse_statement(parser *P) {
    token *kw = cur(P);
    if (kw->t != T_NAME) p_fail(P, "tag name expected");
    int line = kw->line;
    P->e->line = line;
    node *x;
    if (tk_name(kw, "if")) return parse_if(P, line);
    if (tk_name(kw, "for")) return parse_for(P, line);
    if (tk_name(kw, "set")) return parse_set(P, line);
    if (tk_name(kw, "macro")) return parse_macro(P, line);
    if (tk_name(kw, "break") || tk_name(kw, "continue")) {
        if (!P->loops) p_fail(P, "'%.*s' outside of a loop", (int)kw->n, kw->p);
        x = nnew(P, tk_name(kw, "break") ? S_BREAK : S_CONTINUE);
        P->i++;
        expect_block_end(P);
        return x;
    }
    if (tk_name(kw, "generation")) return parse_generation(P);
    static const char *const known[] = {"filter", "call", "include", "import", "from", "extends", "block", "with",
                                        "autoescape", "do", "trans", NULL};
    if (tpl__lookup_name(known, kw->p, kw->n) >= 0) p_unsupported(P, "statement", kw->p, kw->n);
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
                tpl__env_fail(P->e, CHAT_TEMPLATE_ERR_PARSE, "syntax error: unexpected end of template, expected '%s'", ends[0]);
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
            if (ends && kw->t == T_NAME && tpl__lookup_name(ends, kw->p, kw->n) >= 0) break;
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

nlist tpl__parse(env *e, token *tk, size_t ntk) {
    parser P = {.e = e, .tk = tk, .i = 0, .ntk = ntk};
    nlist body = {0};
    parse_body(&P, &body, NULL);
    return body;
}
