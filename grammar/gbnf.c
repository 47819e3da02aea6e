/* GBNF text to a compiled grammar: a recursive-descent parser builds rules
 * whose bodies are element runs; character classes become byte classes
 * (ASCII) or small rules of UTF-8 byte-range sequences; groups and
 * repetitions become anonymous rules (x* is R ::= x R | "", tail-recursive
 * so that matching it never grows a stack). The result is checked (every
 * rule defined, no left recursion) and flattened. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "base/utf8.h"
#include "base/util.h"
#include "grammar/grammar_internal.h"

#define MAX_NEST 256       /* ( group ) nesting in the text */
#define MAX_RANGES 4096    /* ranges of one class */
#define N_SINGLE 256       /* classes 0..255: one byte each */

const char *grammar_status_str(int status) {
    switch (status) {
    case GRAMMAR_OK: return "ok";
    case GRAMMAR_ERR_NOMEM: return "out of memory";
    case GRAMMAR_ERR_SYNTAX: return "syntax error";
    case GRAMMAR_ERR_UNSUPPORTED: return "unsupported";
    case GRAMMAR_ERR_LIMIT: return "over a limit";
    case GRAMMAR_ERR_INVALID: return "invalid grammar";
    default: return "unknown grammar status";
    }
}

void grammar__scrub(char *msg) {
    for (; msg && *msg; msg++)
        if ((unsigned char)*msg < 0x20 || *msg == 0x7F) *msg = '?';
}

int grammar__u32_push(u32vec *a, uint32_t x) {
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 16;
        uint32_t *v = realloc(a->v, cap * sizeof(uint32_t));
        if (!v) return -1;
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = x;
    return 0;
}

void grammar__u32_free(u32vec *a) {
    free(a->v);
    *a = (u32vec){0};
}

grammar *grammar_retain(grammar *g) {
    atomic_fetch_add(&g->refs, 1);
    return g;
}

void grammar_release(grammar *g) {
    if (!g || atomic_fetch_sub(&g->refs, 1) != 1) return;
    grammar__tables_free(g);
    pthread_mutex_destroy(&g->lock);
    free(g->elems);
    free(g->alt_start);
    free(g->alt_off);
    free(g->classes);
    free(g);
}

int grammar_n_rules(const grammar *g) { return g->n_rules; }
int grammar_n_elems(const grammar *g) { return g->n_elems; }

/* ---- the builder ---- */

typedef struct {
    const char *name; /* into the text, or NULL for anonymous rules */
    size_t name_len;
    u32vec body;      /* alternatives, each closed by END */
    int line;         /* where first named */
    bool defined;
} brule;

typedef struct {
    const char *p, *end;
    int line;
    brule *rules;
    int n_rules, cap_rules;
    int *map;         /* (map_cap) named rule index + 1, open addressing by name hash */
    int map_cap;
    uint8_t (*classes)[32];
    int n_classes, cap_classes;
    size_t n_elems;   /* all bodies together, for the limit */
    int status;
    char *err;
    size_t errlen;
} gb;

static int gb_fail(gb *b, int status, const char *fmt, const char *a) {
    if (b->status == GRAMMAR_OK) {
        char msg[200];
        snprintf(msg, sizeof(msg), fmt, a ? a : "");
        err_set(b->err, b->errlen, status, "grammar line %d: %s", b->line, msg);
        grammar__scrub(b->err);
        b->status = status;
    }
    return -1;
}

static int gb_nomem(gb *b) {
    if (b->status == GRAMMAR_OK) err_set(b->err, b->errlen, GRAMMAR_ERR_NOMEM, "grammar: out of memory");
    b->status = GRAMMAR_ERR_NOMEM;
    return -1;
}

static int gb_push(gb *b, u32vec *a, uint32_t x) {
    if (++b->n_elems > GRAMMAR_MAX_ELEMS) return gb_fail(b, GRAMMAR_ERR_LIMIT, "the grammar is larger than %s1048576 elements", "");
    return grammar__u32_push(a, x) ? gb_nomem(b) : 0;
}

/* A new rule (its body taken from *body when not NULL). Returns its index or -1. */
static int gb_new_rule(gb *b, const char *name, size_t name_len, u32vec *body) {
    if (b->n_rules >= GRAMMAR_MAX_RULES) return gb_fail(b, GRAMMAR_ERR_LIMIT, "more than %s65536 rules", "");
    if (b->n_rules == b->cap_rules) {
        int cap = b->cap_rules ? b->cap_rules * 2 : 64;
        brule *r = realloc(b->rules, (size_t)cap * sizeof(brule));
        if (!r) return gb_nomem(b);
        b->rules = r;
        b->cap_rules = cap;
    }
    brule *r = &b->rules[b->n_rules];
    *r = (brule){.name = name, .name_len = name_len, .line = b->line};
    if (body) {
        r->body = *body;
        *body = (u32vec){0};
        r->defined = true;
    }
    return b->n_rules++;
}

static uint32_t name_hash(const char *s, size_t n) { return (uint32_t)util_fnv1a(UTIL_FNV1A_INIT, s, n); }

/* The rule named s[0..n), made (undefined) when new. Returns its index or -1. */
static int gb_rule_named(gb *b, const char *s, size_t n) {
    if (2 * (b->n_rules + 1) > b->map_cap) {
        int cap = b->map_cap ? b->map_cap * 2 : 256;
        int *m = calloc((size_t)cap, sizeof(int));
        if (!m) return gb_nomem(b);
        for (int i = 0; i < b->map_cap; i++) {
            int ri = b->map[i] - 1;
            if (ri < 0) continue;
            uint32_t h = name_hash(b->rules[ri].name, b->rules[ri].name_len) & (uint32_t)(cap - 1);
            while (m[h]) h = (h + 1) & (uint32_t)(cap - 1);
            m[h] = ri + 1;
        }
        free(b->map);
        b->map = m;
        b->map_cap = cap;
    }
    uint32_t h = name_hash(s, n) & (uint32_t)(b->map_cap - 1);
    for (; b->map[h]; h = (h + 1) & (uint32_t)(b->map_cap - 1)) {
        const brule *r = &b->rules[b->map[h] - 1];
        if (r->name_len == n && !memcmp(r->name, s, n)) return b->map[h] - 1;
    }
    int ri = gb_new_rule(b, s, n, NULL);
    if (ri >= 0) b->map[h] = ri + 1;
    return ri;
}

/* The index of a byte class (bits), deduplicated. Returns it or -1. */
static int gb_class(gb *b, const uint8_t bits[32]) {
    int count = 0, last = 0;
    for (int i = 0; i < 256; i++)
        if ((bits[i >> 3] >> (i & 7)) & 1) count++, last = i;
    if (count == 1) return last;
    for (int c = N_SINGLE; c < b->n_classes; c++)
        if (!memcmp(b->classes[c], bits, 32)) return c;
    if (b->n_classes >= (1 << 16)) return gb_fail(b, GRAMMAR_ERR_LIMIT, "more than %s65536 byte classes", "");
    if (b->n_classes == b->cap_classes) {
        int cap = b->cap_classes * 2;
        uint8_t(*c)[32] = realloc(b->classes, (size_t)cap * 32);
        if (!c) return gb_nomem(b);
        b->classes = c;
        b->cap_classes = cap;
    }
    memcpy(b->classes[b->n_classes], bits, 32);
    return b->n_classes++;
}

/* ---- lexing ---- */

static bool is_name_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
}

/* Skips blanks, newlines and # comments. */
static void skip_space(gb *b) {
    while (b->p < b->end) {
        char c = *b->p;
        if (c == '#') {
            while (b->p < b->end && *b->p != '\n') b->p++;
        } else if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
            if (c == '\n') b->line++;
            b->p++;
        } else {
            break;
        }
    }
}

/* Whether a rule definition `name ::=` starts at p. */
static bool at_definition(const gb *b) {
    const char *q = b->p;
    while (q < b->end && is_name_char(*q)) q++;
    if (q == b->p) return false;
    while (q < b->end && (*q == ' ' || *q == '\t' || *q == '\r' || *q == '\n')) q++;
    return b->end - q >= 3 && !memcmp(q, "::=", 3);
}

static int hex_digits(gb *b, int n, int32_t *cp) {
    int32_t v = 0;
    for (int i = 0; i < n; i++) {
        if (b->p >= b->end) return gb_fail(b, GRAMMAR_ERR_SYNTAX, "truncated escape%s", "");
        char c = *b->p++;
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0) return gb_fail(b, GRAMMAR_ERR_SYNTAX, "bad hex digit in an escape%s", "");
        v = v * 16 + d;
    }
    *cp = v;
    return 0;
}

/* One character of a literal or class (an escape or a UTF-8 sequence) as a code point. */
static int read_char(gb *b, int32_t *cp) {
    if (b->p >= b->end) return gb_fail(b, GRAMMAR_ERR_SYNTAX, "unterminated literal or class%s", "");
    if (*b->p != '\\') {
        size_t n = utf8_decode((const uint8_t *)b->p, (size_t)(b->end - b->p), cp);
        if (!n) return gb_fail(b, GRAMMAR_ERR_SYNTAX, "malformed UTF-8%s", "");
        if (*cp == '\n') b->line++;
        b->p += n;
        return 0;
    }
    b->p++;
    if (b->p >= b->end) return gb_fail(b, GRAMMAR_ERR_SYNTAX, "truncated escape%s", "");
    char c = *b->p++;
    switch (c) {
    case 'n': *cp = '\n'; return 0;
    case 'r': *cp = '\r'; return 0;
    case 't': *cp = '\t'; return 0;
    case 'f': *cp = '\f'; return 0;
    case 'v': *cp = '\v'; return 0;
    case '0': *cp = 0; return 0;
    case 'x': return hex_digits(b, 2, cp);
    case 'u': return hex_digits(b, 4, cp);
    case 'U': return hex_digits(b, 8, cp);
    case '\\': case '"': case '\'': case ']': case '[': case '-': case '^': case '/': case '.':
        *cp = c;
        return 0;
    default: {
        char s[2] = {c, 0};
        return gb_fail(b, GRAMMAR_ERR_SYNTAX, "unknown escape \\%s", s);
    }
    }
}

/* ---- classes: code point ranges to UTF-8 byte-range sequences ---- */

typedef struct {
    int32_t lo, hi;
} range;

static int cmp_range(const void *a, const void *b) {
    const range *x = a, *y = b;
    return x->lo < y->lo ? -1 : x->lo > y->lo;
}

/* Sorts and merges r[0..*n), complements it within the code points when
 * negate, and removes the surrogates. r has room for 2 * *n + 2 ranges. */
static void ranges_normalize(range *r, int *n, bool negate) {
    qsort(r, (size_t)*n, sizeof(range), cmp_range);
    int m = 0;
    for (int i = 0; i < *n; i++) {
        if (m && r[i].lo <= r[m - 1].hi + 1) {
            if (r[i].hi > r[m - 1].hi) r[m - 1].hi = r[i].hi;
        } else {
            r[m++] = r[i];
        }
    }
    if (negate) {
        range *c = r + m; /* built after the m ranges, then moved down */
        int k = 0;
        int32_t next = 0;
        for (int i = 0; i < m; i++) {
            if (r[i].lo > next) c[k++] = (range){next, r[i].lo - 1};
            next = r[i].hi + 1;
        }
        if (next <= 0x10FFFF) c[k++] = (range){next, 0x10FFFF};
        memmove(r, c, (size_t)k * sizeof(range));
        m = k;
    }
    int k = 0; /* cut out the surrogates D800..DFFF */
    range out[2];
    range *tmp = r + m;
    for (int i = 0; i < m; i++) {
        int no = 0;
        if (r[i].hi < 0xD800 || r[i].lo > 0xDFFF) out[no++] = r[i];
        else {
            if (r[i].lo < 0xD800) out[no++] = (range){r[i].lo, 0xD7FF};
            if (r[i].hi > 0xDFFF) out[no++] = (range){0xE000, r[i].hi};
        }
        for (int j = 0; j < no; j++) tmp[k++] = out[j];
    }
    memmove(r, tmp, (size_t)k * sizeof(range));
    *n = k;
}

static int utf8_len(int32_t cp) { return cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4; }

/* Appends to body the alternatives matching the UTF-8 encodings of [lo, hi]
 * (one encoded length, surrogate-free): one byte-range per position. */
static int utf8_range(gb *b, u32vec *body, int32_t lo, int32_t hi) {
    static const int32_t bounds[] = {0x7F, 0x7FF, 0xFFFF};
    for (int i = 0; i < 3; i++)
        if (lo <= bounds[i] && hi > bounds[i])
            return utf8_range(b, body, lo, bounds[i]) || utf8_range(b, body, bounds[i] + 1, hi) ? -1 : 0;
    int n = utf8_len(lo);
    for (int i = 1; i < n; i++) {
        int32_t m = (1 << (6 * i)) - 1;
        if ((lo & ~m) != (hi & ~m)) {
            if ((lo & m) != 0)
                return utf8_range(b, body, lo, lo | m) || utf8_range(b, body, (lo | m) + 1, hi) ? -1 : 0;
            if ((hi & m) != m)
                return utf8_range(b, body, lo, (hi & ~m) - 1) || utf8_range(b, body, hi & ~m, hi) ? -1 : 0;
        }
    }
    char el[4], eh[4];
    utf8_encode(lo, el);
    utf8_encode(hi, eh);
    for (int k = 0; k < n; k++) {
        uint8_t bits[32] = {0};
        for (int x = (uint8_t)el[k]; x <= (uint8_t)eh[k]; x++) bits[x >> 3] |= (uint8_t)(1 << (x & 7));
        int c = gb_class(b, bits);
        if (c < 0 || gb_push(b, body, GE_MAKE(GE_BYTES, c))) return -1;
    }
    return gb_push(b, body, GE_MAKE(GE_END, 0));
}

/* Emits into seq what matches one code point of the n normalized ranges r:
 * one byte class when all are ASCII, else a rule whose alternatives are the
 * ASCII part as one class and UTF-8 byte-range runs for the rest. An empty
 * class matches nothing (a rule without alternatives). */
static int emit_ranges(gb *b, u32vec *seq, const range *r, int n) {
    uint8_t bits[32] = {0};
    bool any_ascii = false;
    for (int i = 0; i < n && r[i].lo < 0x80; i++)
        for (int x = r[i].lo; x <= r[i].hi && x < 0x80; x++) bits[x >> 3] |= (uint8_t)(1 << (x & 7)), any_ascii = true;
    if (n > 0 && r[n - 1].hi < 0x80) {
        int c = gb_class(b, bits);
        return c < 0 ? -1 : gb_push(b, seq, GE_MAKE(GE_BYTES, c));
    }
    u32vec body = {0};
    if (any_ascii) {
        int c = gb_class(b, bits);
        if (c < 0 || gb_push(b, &body, GE_MAKE(GE_BYTES, c)) || gb_push(b, &body, GE_MAKE(GE_END, 0))) goto fail;
    }
    for (int i = 0; i < n; i++)
        if (r[i].hi >= 0x80 && utf8_range(b, &body, r[i].lo < 0x80 ? 0x80 : r[i].lo, r[i].hi)) goto fail;
    int ri = gb_new_rule(b, NULL, 0, &body);
    if (ri < 0) goto fail;
    return gb_push(b, seq, GE_MAKE(GE_REF, ri));
fail:
    grammar__u32_free(&body);
    return -1;
}

/* [...] at p (p at '['), or `.` (any code point). */
static int parse_class(gb *b, u32vec *seq, bool any) {
    range *r = malloc((2 * MAX_RANGES + 4) * sizeof(range));
    if (!r) return gb_nomem(b);
    int n = 0;
    bool negate = any;
    if (!any) {
        b->p++; /* [ */
        if (b->p < b->end && *b->p == '^') negate = true, b->p++;
        while (b->p < b->end && *b->p != ']') {
            int32_t lo, hi;
            if (read_char(b, &lo)) goto fail;
            hi = lo;
            if (b->end - b->p >= 2 && b->p[0] == '-' && b->p[1] != ']') {
                b->p++;
                if (read_char(b, &hi)) goto fail;
            }
            if (lo > hi || hi > 0x10FFFF || lo < 0) {
                gb_fail(b, GRAMMAR_ERR_SYNTAX, "bad range in a class%s", "");
                goto fail;
            }
            if (n >= MAX_RANGES) {
                gb_fail(b, GRAMMAR_ERR_LIMIT, "more than %s4096 ranges in a class", "");
                goto fail;
            }
            r[n++] = (range){lo, hi};
        }
        if (b->p >= b->end) {
            gb_fail(b, GRAMMAR_ERR_SYNTAX, "unterminated class%s", "");
            goto fail;
        }
    }
    b->p++; /* ] or . */
    ranges_normalize(r, &n, negate);
    int rc = emit_ranges(b, seq, r, n);
    free(r);
    return rc;
fail:
    free(r);
    return -1;
}

static int parse_literal(gb *b, u32vec *seq) {
    b->p++; /* " */
    while (b->p < b->end && *b->p != '"') {
        int32_t cp;
        if (read_char(b, &cp)) return -1;
        char enc[4];
        int n = utf8_encode(cp, enc);
        if (!n) return gb_fail(b, GRAMMAR_ERR_SYNTAX, "a literal holds a code point without UTF-8 encoding%s", "");
        for (int i = 0; i < n; i++)
            if (gb_push(b, seq, GE_MAKE(GE_BYTES, (uint8_t)enc[i]))) return -1;
    }
    if (b->p >= b->end) return gb_fail(b, GRAMMAR_ERR_SYNTAX, "unterminated literal%s", "");
    b->p++;
    return 0;
}

/* ---- repetition ---- */

/* Appends x (k elements) to seq. */
static int push_run(gb *b, u32vec *seq, const uint32_t *x, size_t k) {
    for (size_t i = 0; i < k; i++)
        if (gb_push(b, seq, x[i])) return -1;
    return 0;
}

/* A rule R ::= x R | "" (tail-recursive, so matching x* never grows a stack). */
static int star_rule(gb *b, const uint32_t *x, size_t k) {
    u32vec body = {0};
    int ri = gb_new_rule(b, NULL, 0, NULL);
    if (ri < 0 || push_run(b, &body, x, k) || gb_push(b, &body, GE_MAKE(GE_REF, ri)) ||
        gb_push(b, &body, GE_MAKE(GE_END, 0)) || gb_push(b, &body, GE_MAKE(GE_END, 0))) {
        grammar__u32_free(&body);
        return -1;
    }
    b->rules[ri].body = body;
    b->rules[ri].defined = true;
    return ri;
}

/* Replaces seq[start..) (one item) by its repetition {lo, hi} (hi < 0: unbounded). */
static int repeat(gb *b, u32vec *seq, size_t start, long lo, long hi) {
    size_t k = seq->n - start;
    uint32_t one;
    if (k > 1) { /* a rule of the item, so that copies are one element each */
        u32vec body = {0};
        if (push_run(b, &body, seq->v + start, k) || gb_push(b, &body, GE_MAKE(GE_END, 0))) {
            grammar__u32_free(&body);
            return -1;
        }
        int ri = gb_new_rule(b, NULL, 0, &body);
        if (ri < 0) return -1;
        one = GE_MAKE(GE_REF, ri);
    } else {
        if (k == 0) return gb_fail(b, GRAMMAR_ERR_SYNTAX, "a repetition of nothing%s", "");
        one = seq->v[start];
    }
    b->n_elems -= k;
    seq->n = start;
    for (long i = 0; i < lo; i++)
        if (gb_push(b, seq, one)) return -1;
    if (hi < 0) {
        int ri = star_rule(b, &one, 1);
        return ri < 0 ? -1 : gb_push(b, seq, GE_MAKE(GE_REF, ri));
    }
    int prev = -1; /* Q_j ::= x Q_{j-1} | "" ; Q_1 ::= x | "" */
    for (long j = 1; j <= hi - lo; j++) {
        u32vec body = {0};
        if (gb_push(b, &body, one) || (prev >= 0 && gb_push(b, &body, GE_MAKE(GE_REF, prev))) ||
            gb_push(b, &body, GE_MAKE(GE_END, 0)) || gb_push(b, &body, GE_MAKE(GE_END, 0))) {
            grammar__u32_free(&body);
            return -1;
        }
        if ((prev = gb_new_rule(b, NULL, 0, &body)) < 0) return -1;
    }
    return prev >= 0 ? gb_push(b, seq, GE_MAKE(GE_REF, prev)) : 0;
}

static long read_count(gb *b) {
    long v = 0;
    const char *s = b->p;
    while (b->p < b->end && *b->p >= '0' && *b->p <= '9') {
        v = v * 10 + (*b->p++ - '0');
        if (v > GRAMMAR_MAX_REPEAT) return gb_fail(b, GRAMMAR_ERR_LIMIT, "a repetition count over %s10000", "");
    }
    return b->p == s ? -2 : v;
}

/* {m}, {m,}, {m,n} at p (after '{'). */
static int parse_braces(gb *b, u32vec *seq, size_t start) {
    b->p++;
    long lo = read_count(b), hi;
    if (lo == -1) return -1;
    if (lo < 0) return gb_fail(b, GRAMMAR_ERR_SYNTAX, "expected a count after '{'%s", "");
    hi = lo;
    if (b->p < b->end && *b->p == ',') {
        b->p++;
        hi = b->p < b->end && *b->p == '}' ? -1 : read_count(b);
        if (hi == -1 && b->status) return -1;
        if (hi == -2) return gb_fail(b, GRAMMAR_ERR_SYNTAX, "expected a count after ','%s", "");
        if (hi >= 0 && hi < lo) return gb_fail(b, GRAMMAR_ERR_SYNTAX, "{m,n} with n < m%s", "");
    }
    if (b->p >= b->end || *b->p != '}') return gb_fail(b, GRAMMAR_ERR_SYNTAX, "expected '}'%s", "");
    b->p++;
    return repeat(b, seq, start, lo, hi);
}

/* ---- rules ---- */

static int parse_alternatives(gb *b, u32vec *body, int nest);

/* One sequence of items (into body) up to '|', ')', the end or the next definition. */
static int parse_sequence(gb *b, u32vec *seq, int nest) {
    for (;;) {
        skip_space(b);
        if (b->p >= b->end || *b->p == '|' || *b->p == ')' || at_definition(b)) return 0;
        size_t start = seq->n;
        char c = *b->p;
        if (c == '"') {
            if (parse_literal(b, seq)) return -1;
        } else if (c == '[' || c == '.') {
            if (parse_class(b, seq, c == '.')) return -1;
        } else if (c == '(') {
            if (nest >= MAX_NEST) return gb_fail(b, GRAMMAR_ERR_LIMIT, "groups nested deeper than %s256", "");
            b->p++;
            u32vec body = {0};
            if (parse_alternatives(b, &body, nest + 1)) {
                grammar__u32_free(&body);
                return -1;
            }
            if (b->p >= b->end || *b->p != ')') {
                grammar__u32_free(&body);
                return gb_fail(b, GRAMMAR_ERR_SYNTAX, "expected ')'%s", "");
            }
            b->p++;
            int ri = gb_new_rule(b, NULL, 0, &body);
            if (ri < 0) {
                grammar__u32_free(&body);
                return -1;
            }
            if (gb_push(b, seq, GE_MAKE(GE_REF, ri))) return -1;
        } else if (is_name_char(c)) {
            const char *s = b->p;
            while (b->p < b->end && is_name_char(*b->p)) b->p++;
            int ri = gb_rule_named(b, s, (size_t)(b->p - s));
            if (ri < 0 || gb_push(b, seq, GE_MAKE(GE_REF, ri))) return -1;
        } else {
            char s[2] = {c, 0};
            return gb_fail(b, GRAMMAR_ERR_SYNTAX, "unexpected character '%s'", s);
        }
        while (b->p < b->end && (*b->p == '*' || *b->p == '+' || *b->p == '?' || *b->p == '{')) {
            char q = *b->p;
            int rc = q == '{' ? parse_braces(b, seq, start)
                              : (b->p++, repeat(b, seq, start, q == '+' ? 1 : 0, q == '?' ? 1 : -1));
            if (rc) return -1;
        }
    }
}

static int parse_alternatives(gb *b, u32vec *body, int nest) {
    for (;;) {
        if (parse_sequence(b, body, nest) || gb_push(b, body, GE_MAKE(GE_END, 0))) return -1;
        skip_space(b);
        if (b->p >= b->end || *b->p != '|') return 0;
        b->p++;
    }
}

static int parse_grammar(gb *b) {
    for (;;) {
        skip_space(b);
        if (b->p >= b->end) return 0;
        const char *s = b->p;
        while (b->p < b->end && is_name_char(*b->p)) b->p++;
        if (b->p == s) return gb_fail(b, GRAMMAR_ERR_SYNTAX, "expected a rule name%s", "");
        size_t n = (size_t)(b->p - s);
        skip_space(b);
        if (b->end - b->p < 3 || memcmp(b->p, "::=", 3)) return gb_fail(b, GRAMMAR_ERR_SYNTAX, "expected '::='%s", "");
        b->p += 3;
        int ri = gb_rule_named(b, s, n);
        if (ri < 0) return -1;
        if (b->rules[ri].defined) {
            char name[64];
            snprintf(name, sizeof(name), "%.*s", (int)(n < 60 ? n : 60), s);
            return gb_fail(b, GRAMMAR_ERR_INVALID, "rule '%s' is defined twice", name);
        }
        u32vec body = {0};
        if (parse_alternatives(b, &body, 0)) {
            grammar__u32_free(&body);
            return -1;
        }
        b->rules[ri].body = body;
        b->rules[ri].defined = true;
        if (b->p < b->end && *b->p == ')') return gb_fail(b, GRAMMAR_ERR_SYNTAX, "unbalanced ')'%s", "");
    }
}

/* ---- checks and flattening ---- */

/* The bytes a sentence of root can end with, into g->end_bytes: the classes
 * of the last byte elements of root's alternatives, reached from their ends
 * through the rules referenced there (and, past a nullable element, the one
 * before it). Each rule visited once; stk and seen hold R entries. */
static void find_end_bytes(grammar *g, const bool *nullable, int *stk, bool *seen) {
    int sp = 0, root = (int)GE_VAL(g->elems[0]);
    stk[sp++] = root, seen[root] = true;
    while (sp > 0) {
        int r = stk[--sp];
        for (uint32_t a = g->alt_off[r]; a < g->alt_off[r + 1]; a++) {
            uint32_t p = g->alt_start[a];
            while (GE_TYPE(g->elems[p]) != GE_END) p++;
            while (p-- > g->alt_start[a]) { /* from the last element back, while what follows may be empty */
                uint32_t e = g->elems[p];
                if (GE_TYPE(e) == GE_BYTES) {
                    for (int k = 0; k < 32; k++) g->end_bytes[k] |= g->classes[GE_VAL(e)][k];
                    break;
                }
                int q = (int)GE_VAL(e);
                if (!seen[q]) seen[q] = true, stk[sp++] = q;
                if (!nullable[q]) break;
            }
        }
    }
}

/* Left recursion (a rule that can reach itself without consuming a byte)
 * would make the matcher expand forever: refused. nullable[r]: rule r
 * matches the empty string (worklist over the alternatives' pending refs).
 * Then the bytes a sentence can end with (find_end_bytes). */
static int check_left_recursion(gb *b, grammar *g) {
    int R = g->n_rules, A = (int)g->alt_off[R], rc = -1;
    bool *nullable = calloc((size_t)R, 1);
    int *pending = calloc((size_t)A + 1, sizeof(int)), *alt_rule = malloc(((size_t)A + 1) * sizeof(int));
    int *occ_off = calloc((size_t)R + 1, sizeof(int)), *occ = NULL, *work = malloc(((size_t)R + 1) * sizeof(int));
    int *adj_off = calloc((size_t)R + 1, sizeof(int)), *adj = NULL, *state = calloc((size_t)R, sizeof(int));
    int *stk = malloc(((size_t)R + 1) * sizeof(int)), *it = malloc(((size_t)R + 1) * sizeof(int));
    if (!nullable || !pending || !alt_rule || !occ_off || !work || !adj_off || !state || !stk || !it) goto nomem;
    size_t n_occ = 0;
    for (int r = 0; r < R; r++)
        for (uint32_t a = g->alt_off[r]; a < g->alt_off[r + 1]; a++) {
            alt_rule[a] = r;
            bool bytes = false;
            for (uint32_t p = g->alt_start[a]; GE_TYPE(g->elems[p]) != GE_END; p++) {
                pending[a]++;
                if (GE_TYPE(g->elems[p]) == GE_BYTES) bytes = true;
                else occ_off[GE_VAL(g->elems[p]) + 1]++, n_occ++;
            }
            if (bytes) pending[a] = 1 << 30; /* never nullable */
        }
    for (int r = 0; r < R; r++) occ_off[r + 1] += occ_off[r];
    if (!(occ = malloc((n_occ + 1) * sizeof(int)))) goto nomem;
    int *fill = stk; /* reused as a cursor per rule */
    for (int r = 0; r < R; r++) fill[r] = occ_off[r];
    for (int a = 0; a < A; a++)
        for (uint32_t p = g->alt_start[a]; GE_TYPE(g->elems[p]) != GE_END; p++)
            if (GE_TYPE(g->elems[p]) == GE_REF) occ[fill[GE_VAL(g->elems[p])]++] = a;
    int nw = 0;
    for (int a = 0; a < A; a++)
        if (pending[a] == 0 && !nullable[alt_rule[a]]) nullable[alt_rule[a]] = true, work[nw++] = alt_rule[a];
    while (nw > 0) {
        int r = work[--nw];
        for (int k = occ_off[r]; k < occ_off[r + 1]; k++) {
            int a = occ[k];
            if (--pending[a] == 0 && !nullable[alt_rule[a]]) nullable[alt_rule[a]] = true, work[nw++] = alt_rule[a];
        }
    }
    /* Left-corner edges: r -> s when s can start an alternative of r. */
    size_t n_adj = 0;
    for (int pass = 0; pass < 2; pass++) {
        for (int r = 0; r < R; r++) {
            if (pass) fill[r] = adj_off[r];
            for (uint32_t a = g->alt_off[r]; a < g->alt_off[r + 1]; a++)
                for (uint32_t p = g->alt_start[a]; GE_TYPE(g->elems[p]) == GE_REF; p++) {
                    int s = (int)GE_VAL(g->elems[p]);
                    if (pass) adj[fill[r]++] = s;
                    else adj_off[r + 1]++, n_adj++;
                    if (!nullable[s]) break;
                }
        }
        if (!pass) {
            for (int r = 0; r < R; r++) adj_off[r + 1] += adj_off[r];
            if (!(adj = malloc((n_adj + 1) * sizeof(int)))) goto nomem;
        }
    }
    /* Iterative DFS: state 0 new, 1 on the path, 2 done. */
    for (int r0 = 0; r0 < R; r0++) {
        if (state[r0]) continue;
        int sp = 0;
        stk[sp] = r0, it[sp] = adj_off[r0], state[r0] = 1;
        while (sp >= 0) {
            int r = stk[sp];
            if (it[sp] == adj_off[r + 1]) {
                state[r] = 2;
                sp--;
                continue;
            }
            int s = adj[it[sp]++];
            if (state[s] == 1) {
                const brule *br = &b->rules[s];
                char name[80];
                if (br->name) snprintf(name, sizeof(name), "'%.*s'", (int)(br->name_len < 60 ? br->name_len : 60), br->name);
                else snprintf(name, sizeof(name), "a group");
                err_set(b->err, b->errlen, GRAMMAR_ERR_INVALID, "grammar: left recursion through %s", name);
                b->status = GRAMMAR_ERR_INVALID;
                goto out;
            }
            if (state[s] == 0) sp++, stk[sp] = s, it[sp] = adj_off[s], state[s] = 1;
        }
    }
    bool *seen = calloc((size_t)R, 1);
    if (!seen) goto nomem;
    find_end_bytes(g, nullable, stk, seen);
    free(seen);
    rc = 0;
    goto out;
nomem:
    gb_nomem(b);
out:
    free(nullable), free(pending), free(alt_rule), free(occ_off), free(occ), free(work);
    free(adj_off), free(adj), free(state), free(stk), free(it);
    return rc;
}

/* The checked, flattened grammar of b. */
static int gb_finish(gb *b, grammar **out) {
    int root = -1;
    for (int i = 0; i < b->n_rules; i++) {
        const brule *r = &b->rules[i];
        if (r->name && r->name_len == 4 && !memcmp(r->name, "root", 4)) root = i;
        if (!r->defined) {
            char name[64];
            snprintf(name, sizeof(name), "%.*s", (int)(r->name_len < 60 ? r->name_len : 60), r->name);
            b->line = r->line;
            return gb_fail(b, GRAMMAR_ERR_INVALID, "undefined rule '%s'", name);
        }
    }
    if (root < 0) return gb_fail(b, GRAMMAR_ERR_INVALID, "no rule named 'root'%s", "");
    grammar *g = calloc(1, sizeof(*g));
    if (!g) return gb_nomem(b);
    atomic_init(&g->refs, 1);
    pthread_mutex_init(&g->lock, NULL);
    size_t n = 2, n_alts = 0;
    for (int i = 0; i < b->n_rules; i++) {
        n += b->rules[i].body.n;
        for (size_t k = 0; k < b->rules[i].body.n; k++) n_alts += GE_TYPE(b->rules[i].body.v[k]) == GE_END;
    }
    g->elems = malloc(n * sizeof(uint32_t));
    g->alt_start = malloc((n_alts + 1) * sizeof(uint32_t));
    g->alt_off = malloc(((size_t)b->n_rules + 1) * sizeof(uint32_t));
    g->classes = malloc((size_t)b->n_classes * 32);
    if (!g->elems || !g->alt_start || !g->alt_off || !g->classes) {
        grammar_release(g);
        return gb_nomem(b);
    }
    if (b->n_classes) memcpy(g->classes, b->classes, (size_t)b->n_classes * 32); /* NULL when none */
    g->n_classes = b->n_classes;
    g->n_rules = b->n_rules;
    g->elems[0] = GE_MAKE(GE_REF, root);
    g->elems[1] = GE_MAKE(GE_END, 0);
    size_t at = 2, a = 0;
    for (int i = 0; i < b->n_rules; i++) {
        const u32vec *body = &b->rules[i].body;
        g->alt_off[i] = (uint32_t)a;
        for (size_t k = 0; k < body->n; k++) {
            if (k == 0 || GE_TYPE(body->v[k - 1]) == GE_END) g->alt_start[a++] = (uint32_t)(at + k);
        }
        if (body->n) memcpy(g->elems + at, body->v, body->n * sizeof(uint32_t)); /* an empty body's v is NULL */
        at += body->n;
    }
    g->alt_off[b->n_rules] = (uint32_t)a;
    g->n_elems = (int)n;
    if (check_left_recursion(b, g)) {
        grammar_release(g);
        return -1;
    }
    *out = g;
    return 0;
}

int grammar_compile_gbnf(const char *text, size_t len, grammar **out, char *err, size_t errlen) {
    *out = NULL;
    if (len > GRAMMAR_MAX_TEXT) return err_set(err, errlen, GRAMMAR_ERR_LIMIT, "grammar: longer than %d bytes", GRAMMAR_MAX_TEXT);
    gb b = {.p = text, .end = text + len, .line = 1, .err = err, .errlen = errlen};
    if (!utf8_valid(text, len)) return err_set(err, errlen, GRAMMAR_ERR_SYNTAX, "grammar: not valid UTF-8");
    b.cap_classes = 512;
    b.classes = calloc((size_t)b.cap_classes, 32);
    if (!b.classes) return err_set(err, errlen, GRAMMAR_ERR_NOMEM, "grammar: out of memory");
    for (int i = 0; i < N_SINGLE; i++) b.classes[i][i >> 3] = (uint8_t)(1 << (i & 7));
    b.n_classes = N_SINGLE;
    if (parse_grammar(&b) == 0) gb_finish(&b, out);
    for (int i = 0; i < b.n_rules; i++) grammar__u32_free(&b.rules[i].body);
    free(b.rules);
    free(b.map);
    free(b.classes);
    return b.status;
}
