/* Regular expressions (and choice lists) to GBNF: a recursive-descent parser
 * of the regex subset in grammar.h that writes the equivalent GBNF
 * expression as it goes (literals quoted, classes as explicit code point
 * ranges, groups and quantifiers kept), so GBNF's compiler does the rest.
 * In JSON-string mode the output is the JSON-escaped text of a match. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "base/err.h"
#include "base/utf8.h"
#include "grammar/grammar_internal.h"

#define MAX_REGEX (64 * 1024) /* bytes of one regex */
#define MAX_GROUPS 256        /* nesting of groups */
#define MAX_CLASS 1024        /* ranges of one class */

typedef struct {
    const char *p, *s, *end;
    bool json;
    strbuf out;
    int status;
    char *err;
    size_t errlen;
} rx;

static int rx_fail(rx *r, int status, const char *what) {
    if (r->status == GRAMMAR_OK) {
        r->status = status;
        err_set(r->err, r->errlen, status, "regex at offset %d: %s", (int)(r->p - r->s), what);
        grammar__scrub(r->err);
    }
    return -1;
}

static int rx_add(rx *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int rx_add(rx *r, const char *fmt, ...) {
    char tmp[64];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0 || n >= (int)sizeof(tmp) || strbuf_add(&r->out, tmp, (size_t)n)) return rx_fail(r, GRAMMAR_ERR_NOMEM, "out of memory");
    return 0;
}

typedef struct {
    int32_t lo, hi;
} crange;

/* Ranges of \d \w \s (and upper-case negations); 0 when c is none of them. */
static int class_escape(char c, crange *r, bool *neg) {
    *neg = c == 'D' || c == 'W' || c == 'S';
    switch (c) {
    case 'd': case 'D': r[0] = (crange){'0', '9'}; return 1;
    case 'w': case 'W':
        r[0] = (crange){'0', '9'}, r[1] = (crange){'A', 'Z'}, r[2] = (crange){'_', '_'}, r[3] = (crange){'a', 'z'};
        return 4;
    case 's': case 'S': r[0] = (crange){'\t', '\r'}, r[1] = (crange){' ', ' '}; return 2;
    default: return 0;
    }
}

static int hexval(rx *r, int n, int32_t *cp) {
    int32_t v = 0;
    for (int i = 0; i < n; i++) {
        if (r->p >= r->end) return rx_fail(r, GRAMMAR_ERR_SYNTAX, "truncated escape");
        char c = *r->p++;
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0) return rx_fail(r, GRAMMAR_ERR_SYNTAX, "bad hex digit");
        v = v * 16 + d;
    }
    if (v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return rx_fail(r, GRAMMAR_ERR_SYNTAX, "escape out of range");
    *cp = v;
    return 0;
}

/* A single-character escape after '\' (p past it): its code point. */
static int char_escape(rx *r, int32_t *cp) {
    if (r->p >= r->end) return rx_fail(r, GRAMMAR_ERR_SYNTAX, "trailing backslash");
    char c = *r->p++;
    switch (c) {
    case 'n': *cp = '\n'; return 0;
    case 't': *cp = '\t'; return 0;
    case 'r': *cp = '\r'; return 0;
    case 'f': *cp = '\f'; return 0;
    case 'v': *cp = '\v'; return 0;
    case '0': *cp = 0; return 0;
    case 'x': return hexval(r, 2, cp);
    case 'u': return hexval(r, 4, cp);
    default:
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
            return rx_fail(r, GRAMMAR_ERR_UNSUPPORTED, "unsupported escape (backreferences, \\b and other anchors are not implemented)");
        *cp = (unsigned char)c;
        return 0;
    }
}

static int read_cp(rx *r, int32_t *cp) {
    size_t n = utf8_decode((const uint8_t *)r->p, (size_t)(r->end - r->p), cp);
    if (!n) return rx_fail(r, GRAMMAR_ERR_SYNTAX, "malformed UTF-8");
    r->p += n;
    return 0;
}

/* Writes a class of n ranges (complemented when neg), minus what JSON
 * strings must escape in JSON mode. */
static int emit_class(rx *r, crange *cr, int n, bool neg) {
    if (rx_add(r, "[%s", neg ? "^" : "")) return -1;
    for (int i = 0; i < n; i++) {
        int32_t lo = cr[i].lo, hi = cr[i].hi;
        if (r->json && !neg) { /* keep only what needs no escape: not ", \ or controls */
            static const crange cut[] = {{0, 0x1F}, {'"', '"'}, {'\\', '\\'}};
            for (int k = 0; k < 3 && lo <= hi; k++) {
                if (hi < cut[k].lo || lo > cut[k].hi) continue;
                if (lo < cut[k].lo && rx_add(r, "\\U%08X-\\U%08X", (unsigned)lo, (unsigned)(cut[k].lo - 1))) return -1;
                lo = cut[k].hi + 1;
            }
            if (lo > hi) continue;
        }
        if (rx_add(r, "\\U%08X-\\U%08X", (unsigned)lo, (unsigned)hi)) return -1;
    }
    if (r->json && neg && rx_add(r, "\\x00-\\x1F\"\\\\")) return -1;
    return rx_add(r, "]");
}

static int parse_class(rx *r) {
    crange *cr = malloc((MAX_CLASS + 8) * sizeof(crange));
    if (!cr) return rx_fail(r, GRAMMAR_ERR_NOMEM, "out of memory");
    int n = 0, rc = -1;
    bool neg = false, first = true;
    r->p++; /* [ */
    if (r->p < r->end && *r->p == '^') neg = true, r->p++;
    while (r->p < r->end && (*r->p != ']' || first)) {
        first = false;
        if (n >= MAX_CLASS) {
            rx_fail(r, GRAMMAR_ERR_LIMIT, "a class of more than 1024 ranges");
            goto out;
        }
        int32_t lo, hi;
        if (*r->p == '\\') {
            r->p++;
            bool eneg;
            int k = r->p < r->end ? class_escape(*r->p, cr + n, &eneg) : 0;
            if (k) {
                if (eneg) {
                    rx_fail(r, GRAMMAR_ERR_UNSUPPORTED, "\\D, \\W and \\S inside a class are not implemented");
                    goto out;
                }
                r->p++;
                n += k;
                continue;
            }
            if (char_escape(r, &lo)) goto out;
        } else if (*r->p == '[' && r->end - r->p > 1 && r->p[1] == ':') {
            rx_fail(r, GRAMMAR_ERR_UNSUPPORTED, "POSIX classes [:name:] are not implemented");
            goto out;
        } else if (read_cp(r, &lo)) {
            goto out;
        }
        hi = lo;
        if (r->end - r->p >= 2 && r->p[0] == '-' && r->p[1] != ']') {
            r->p++;
            if (*r->p == '\\') {
                r->p++;
                if (char_escape(r, &hi)) goto out;
            } else if (read_cp(r, &hi)) {
                goto out;
            }
            if (hi < lo) {
                rx_fail(r, GRAMMAR_ERR_SYNTAX, "bad character range");
                goto out;
            }
        }
        cr[n++] = (crange){lo, hi};
    }
    if (r->p >= r->end) {
        rx_fail(r, GRAMMAR_ERR_SYNTAX, "unterminated class");
        goto out;
    }
    r->p++;
    rc = emit_class(r, cr, n, neg);
out:
    free(cr);
    return rc;
}

/* One literal code point, quoted for GBNF (JSON-escaped first in JSON mode). */
static int emit_literal(rx *r, int32_t cp) {
    char enc[8];
    if (r->json && (cp < 0x20 || cp == '"' || cp == '\\')) {
        const char *esc = cp == '"' ? "\\\\\\\"" : cp == '\\' ? "\\\\\\\\" : cp == '\n' ? "\\\\n" : cp == '\t' ? "\\\\t" : cp == '\r' ? "\\\\r" : NULL;
        if (esc) return rx_add(r, "\"%s\"", esc);
        return rx_add(r, "\"\\\\u%04x\"", (unsigned)cp);
    }
    if (cp == '"' || cp == '\\') return rx_add(r, "\"\\%c\"", (char)cp);
    if (cp < 0x20 || cp == 0x7F) return rx_add(r, "\"\\x%02X\"", (unsigned)cp);
    int n = utf8_encode(cp, enc);
    enc[n] = 0;
    return rx_add(r, "\"%s\"", enc);
}

static int parse_alt(rx *r, int depth);

/* A quantifier after an atom: *, +, ?, {m}, {m,}, {m,n}, each maybe lazy. */
static int parse_quant(rx *r) {
    for (;;) {
        if (r->p >= r->end) return 0;
        char c = *r->p;
        if (c == '*' || c == '+' || c == '?') {
            r->p++;
            if (rx_add(r, "%c", c)) return -1;
        } else if (c == '{') {
            const char *q = r->p + 1;
            long lo = 0, hi = -1;
            int nd = 0;
            while (q < r->end && *q >= '0' && *q <= '9' && nd < 6) lo = lo * 10 + (*q++ - '0'), nd++;
            if (!nd) return 0; /* a literal '{' */
            if (q < r->end && *q == ',') {
                q++;
                int nh = 0;
                hi = 0;
                while (q < r->end && *q >= '0' && *q <= '9' && nh < 6) hi = hi * 10 + (*q++ - '0'), nh++;
                if (!nh) hi = -2; /* {m,} */
            } else {
                hi = lo;
            }
            if (q >= r->end || *q != '}') return 0;
            r->p = q + 1;
            if (lo > GRAMMAR_MAX_REPEAT || hi > GRAMMAR_MAX_REPEAT) return rx_fail(r, GRAMMAR_ERR_LIMIT, "a repetition count over 10000");
            if (hi >= 0 && hi < lo) return rx_fail(r, GRAMMAR_ERR_SYNTAX, "{m,n} with n < m");
            if (hi == -2 ? rx_add(r, "{%ld,}", lo) : rx_add(r, "{%ld,%ld}", lo, hi)) return -1;
        } else {
            return 0;
        }
        if (r->p < r->end && *r->p == '?') r->p++; /* lazy: the same language */
        else if (r->p < r->end && *r->p == '+') return rx_fail(r, GRAMMAR_ERR_UNSUPPORTED, "possessive quantifiers are not implemented");
        if (r->p < r->end && (*r->p == '*' || *r->p == '+' || *r->p == '?'))
            return rx_fail(r, GRAMMAR_ERR_SYNTAX, "multiple repeat");
    }
}

static int parse_seq(rx *r, int depth) {
    if (rx_add(r, "(\"\"")) return -1; /* an empty sequence is the empty string */
    while (r->p < r->end && *r->p != '|' && *r->p != ')') {
        char c = *r->p;
        if (rx_add(r, " ")) return -1;
        if (c == '^') {
            if (r->p != r->s) return rx_fail(r, GRAMMAR_ERR_UNSUPPORTED, "'^' other than at the start");
            r->p++;
            continue;
        }
        if (c == '$') {
            if (r->p + 1 != r->end) return rx_fail(r, GRAMMAR_ERR_UNSUPPORTED, "'$' other than at the end");
            r->p++;
            continue;
        }
        if (c == '*' || c == '+' || c == '?') return rx_fail(r, GRAMMAR_ERR_SYNTAX, "nothing to repeat");
        if (c == '(') {
            if (depth >= MAX_GROUPS) return rx_fail(r, GRAMMAR_ERR_LIMIT, "groups nested deeper than 256");
            r->p++;
            if (r->p < r->end && *r->p == '?') {
                r->p++;
                if (r->p < r->end && *r->p == ':') r->p++;
                else if (r->p < r->end && (*r->p == 'P' || *r->p == '<') && !(r->end - r->p > 1 && *r->p == '<' && (r->p[1] == '=' || r->p[1] == '!'))) {
                    if (*r->p == 'P') r->p++;
                    if (r->p >= r->end || *r->p != '<') return rx_fail(r, GRAMMAR_ERR_UNSUPPORTED, "(?P other than a named group");
                    while (r->p < r->end && *r->p != '>') r->p++;
                    if (r->p >= r->end) return rx_fail(r, GRAMMAR_ERR_SYNTAX, "unterminated group name");
                    r->p++;
                } else {
                    return rx_fail(r, GRAMMAR_ERR_UNSUPPORTED, "lookaround, flags and other (? groups are not implemented");
                }
            }
            if (parse_alt(r, depth + 1)) return -1;
            if (r->p >= r->end || *r->p != ')') return rx_fail(r, GRAMMAR_ERR_SYNTAX, "missing ')'");
            r->p++;
        } else if (c == '[') {
            if (parse_class(r)) return -1;
        } else if (c == '.') {
            r->p++;
            if (rx_add(r, r->json ? "[^\\n\\x00-\\x1F\"\\\\]" : "[^\\n]")) return -1;
        } else if (c == '\\') {
            r->p++;
            crange cr[4];
            bool neg;
            int k = r->p < r->end ? class_escape(*r->p, cr, &neg) : 0;
            int32_t cp;
            if (k) {
                r->p++;
                if (emit_class(r, cr, k, neg)) return -1;
            } else if (char_escape(r, &cp) || emit_literal(r, cp)) {
                return -1;
            }
        } else {
            int32_t cp;
            if (read_cp(r, &cp) || emit_literal(r, cp)) return -1;
        }
        if (parse_quant(r)) return -1;
    }
    return rx_add(r, ")");
}

static int parse_alt(rx *r, int depth) {
    if (rx_add(r, "(") || parse_seq(r, depth)) return -1;
    while (r->p < r->end && *r->p == '|') {
        r->p++;
        if (rx_add(r, " | ") || parse_seq(r, depth)) return -1;
    }
    return rx_add(r, ")");
}

int grammar_regex_to_gbnf(const char *re, size_t len, bool json_string, char **out, char *err, size_t errlen) {
    *out = NULL;
    if (len > MAX_REGEX) return err_set(err, errlen, GRAMMAR_ERR_LIMIT, "regex: longer than %d bytes", MAX_REGEX);
    if (!utf8_valid(re, len)) return err_set(err, errlen, GRAMMAR_ERR_SYNTAX, "regex: not valid UTF-8");
    rx r = {.p = re, .s = re, .end = re + len, .json = json_string, .err = err, .errlen = errlen};
    if (parse_alt(&r, 0) == 0 && r.p < r.end) rx_fail(&r, GRAMMAR_ERR_SYNTAX, "unbalanced ')'");
    if (r.status) {
        strbuf_free(&r.out);
        return r.status;
    }
    if (!(*out = strbuf_take(&r.out))) return err_set(err, errlen, GRAMMAR_ERR_NOMEM, "regex: out of memory");
    return GRAMMAR_OK;
}

int grammar_compile_regex(const char *re, size_t len, grammar **out, char *err, size_t errlen) {
    *out = NULL;
    char *expr = NULL;
    int rc = grammar_regex_to_gbnf(re, len, false, &expr, err, errlen);
    if (rc) return rc;
    strbuf g = {0};
    if (strbuf_add(&g, "root ::= ", 9) || strbuf_add(&g, expr, strlen(expr)) || strbuf_add(&g, "\n", 1)) {
        free(expr);
        strbuf_free(&g);
        return err_set(err, errlen, GRAMMAR_ERR_NOMEM, "regex: out of memory");
    }
    free(expr);
    rc = grammar_compile_gbnf(g.s, g.len, out, err, errlen);
    strbuf_free(&g);
    return rc;
}

/* Appends s (n bytes of UTF-8) as a GBNF literal. Returns 0 or -1 (out of memory). */
int grammar__gbnf_literal(strbuf *b, const char *s, size_t n) {
    if (strbuf_add(b, "\"", 1)) return -1;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char tmp[8];
        int k;
        if (c == '"' || c == '\\') k = snprintf(tmp, sizeof(tmp), "\\%c", c);
        else if (c < 0x20 || c == 0x7F) k = snprintf(tmp, sizeof(tmp), "\\x%02X", c);
        else tmp[0] = (char)c, k = 1;
        if (strbuf_add(b, tmp, (size_t)k)) return -1;
    }
    return strbuf_add(b, "\"", 1);
}

int grammar_compile_choice(const char *const *choices, const size_t *lens, int n, grammar **out, char *err,
                           size_t errlen) {
    *out = NULL;
    if (n < 1) return err_set(err, errlen, GRAMMAR_ERR_INVALID, "choice: the list is empty");
    strbuf g = {0};
    int rc = strbuf_add(&g, "root ::= ", 9);
    for (int i = 0; i < n && !rc; i++) {
        if (!utf8_valid(choices[i], lens[i])) {
            strbuf_free(&g);
            return err_set(err, errlen, GRAMMAR_ERR_SYNTAX, "choice %d: not valid UTF-8", i);
        }
        rc = (i && strbuf_add(&g, " | ", 3)) || grammar__gbnf_literal(&g, choices[i], lens[i]);
        if (g.len > GRAMMAR_MAX_TEXT) {
            strbuf_free(&g);
            return err_set(err, errlen, GRAMMAR_ERR_LIMIT, "choice: the list is longer than %d bytes", GRAMMAR_MAX_TEXT);
        }
    }
    if (rc || strbuf_add(&g, "\n", 1)) {
        strbuf_free(&g);
        return err_set(err, errlen, GRAMMAR_ERR_NOMEM, "choice: out of memory");
    }
    rc = grammar_compile_gbnf(g.s, g.len, out, err, errlen);
    strbuf_free(&g);
    return rc;
}
