/* Chat templates, lexer: jinja2's lexer with trim_blocks and lstrip_blocks
 * (whitespace control -/+, raw blocks, comments), Python string-literal
 * escapes and int/float literals. */
#include <errno.h>
#include <stdlib.h>

#include "base/utf8.h"
#include "chat/template_internal.h"

/* ------------------------------------------------------------------ */
/* Lexer (jinja2.lexer with trim_blocks and lstrip_blocks)              */
/* ------------------------------------------------------------------ */

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
        token *nt = tpl__xalloc(L->e, tpl__xmul(L->e, cap, sizeof(token)));
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
        int32_t c = tpl__u8_dec(s + i, n - i, &k);
        if (!tpl__py_isspace(c)) break;
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
        int32_t c = tpl__u8_dec(s + st, n - st, &k);
        if (!tpl__py_isspace(c)) break;
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
            tpl__sb_put(L->e, &b, s + i, j - i);
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
        case 'N': tpl__env_fail(L->e, CHAT_TEMPLATE_ERR_UNSUPPORTED, "\\N{...} escapes are not supported");
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
                if (i >= n || hexval(s[i]) < 0) tpl__env_fail(L->e, CHAT_TEMPLATE_ERR_PARSE, "truncated \\%c escape in string", c);
                cp = cp * 16 + hexval(s[i++]);
            }
        }
        if (cp > 0x10ffff || (cp >= 0xd800 && cp < 0xe000))
            tpl__env_fail(L->e, CHAT_TEMPLATE_ERR_PARSE, "invalid code point escape in string");
        char buf[4];
        tpl__sb_put(L->e, &b, buf, (size_t)utf8_encode(cp, buf));
    }
    *out = b.p ? b.p : "";
    *outn = b.n;
}

static const char *const OPS2[] = {"//", "**", "==", "!=", ">=", "<=", NULL};
static const char OPS1[] = "+-/*%~[](){}><=.:|,;";

/* The end of a block or variable tag at s[*pos], with its whitespace
 * control (-: strip what follows; a block's plain %} eats one newline):
 * pushes it, moves *pos past it and returns 1; else 0. */
static int lx_tag_end(lexer *L, size_t *pos, int is_block, int *line_starting) {
    const char *s = L->s;
    size_t n = L->n, i = *pos;
    char close = is_block ? '%' : '}';
    ttype t = is_block ? T_BEND : T_VEND;
    if (is_block && s[i] == '+' && i + 2 < n + 0 && s[i + 1] == '%' && s[i + 2] == '}') {
        lx_push(L, t, s + i, 3);
        *pos = i + 3;
        *line_starting = 0;
        return 1;
    }
    if (s[i] == '-' && i + 2 < n && s[i + 1] == close && s[i + 2] == '}') {
        lx_push(L, t, s + i, 3);
        size_t w = ws_run(s, n, i + 3);
        lx_count_lines(L, s + i + 3, w);
        i += 3 + w;
        *line_starting = w > 0 && s[i - 1] == '\n';
        *pos = i;
        return 1;
    }
    if (s[i] == close && i + 1 < n && s[i + 1] == '}') {
        lx_push(L, t, s + i, 2);
        i += 2;
        *line_starting = 0;
        if (is_block && i < n && s[i] == '\n') {
            i++;
            L->line++;
            *line_starting = 1;
        }
        *pos = i;
        return 1;
    }
    return 0;
}

static int is_digit_at(const char *s, size_t n, size_t j) { return j < n && s[j] >= '0' && s[j] <= '9'; }

/* Digits with single underscores between them, from j; returns the end. */
static size_t digits_end(const char *s, size_t n, size_t j) {
    while (is_digit_at(s, n, j) || (j < n && s[j] == '_' && is_digit_at(s, n, j + 1))) j++;
    return j;
}

/* An int or float literal at s[i] (a digit); returns the offset after it. */
static size_t lx_number(lexer *L, size_t i) {
    const char *s = L->s;
    size_t n = L->n, j = digits_end(s, n, i);
    int isf = 0;
    if (j + 1 < n && s[j] == '.' && s[j + 1] >= '0' && s[j + 1] <= '9') {
        isf = 1;
        j = digits_end(s, n, j + 1);
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
    if (j - i >= sizeof buf - 1) tpl__env_fail(L->e, CHAT_TEMPLATE_ERR_UNSUPPORTED, "numeric literal too long");
    lx_push(L, isf ? T_FLOAT : T_INT, s + i, j - i);
    if (isf) {
        L->tk[L->ntk - 1].f = strtod(buf, NULL);
        return j;
    }
    if (bn > 1 && buf[0] == '0') {
        for (size_t k = 0; k < bn; k++)
            if (buf[k] != '0') tpl__env_fail(L->e, CHAT_TEMPLATE_ERR_UNSUPPORTED, "unsupported integer literal");
    }
    errno = 0;
    long long x = strtoll(buf, NULL, 10);
    if (errno) tpl__env_fail(L->e, CHAT_TEMPLATE_ERR_UNSUPPORTED, "integer literal too large");
    L->tk[L->ntk - 1].i = x;
    return j;
}

/* A quoted string literal at s[i]; returns the offset after its closing quote. */
static size_t lx_quoted(lexer *L, size_t i) {
    const char *s = L->s;
    size_t n = L->n, j = i + 1;
    char c = s[i];
    while (j < n && s[j] != c) {
        if (s[j] == '\\' && j + 1 < n) j++;
        j++;
    }
    if (j >= n) tpl__env_fail(L->e, CHAT_TEMPLATE_ERR_PARSE, "unterminated string literal");
    int line = L->line;
    lx_push(L, T_STR, NULL, 0);
    token *k = &L->tk[L->ntk - 1];
    lx_string(L, s + i + 1, j - i - 1, &k->p, &k->n);
    k->line = line;
    lx_count_lines(L, s + i, j - i);
    return j + 1;
}

/* An operator at s[i] (two characters first), tracking bracket balance in
 * *bal; returns the offset after it, or 0 when there is none. */
static size_t lx_op(lexer *L, size_t i, int *bal) {
    const char *s = L->s;
    size_t n = L->n;
    for (int k = 0; OPS2[k]; k++)
        if (i + 1 < n && s[i] == OPS2[k][0] && s[i + 1] == OPS2[k][1]) {
            lx_push(L, T_OP, s + i, 2);
            return i + 2;
        }
    char c = s[i];
    if (!c || !strchr(OPS1, c)) return 0;
    if (c == '(' || c == '[' || c == '{')
        (*bal)++;
    else if (c == ')' || c == ']' || c == '}') {
        if (*bal == 0) tpl__env_fail(L->e, CHAT_TEMPLATE_ERR_PARSE, "unexpected '%c'", c);
        (*bal)--;
    }
    lx_push(L, T_OP, s + i, 1);
    return i + 1;
}

static int is_name_start(char c) { return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

/* Tokenizes a block or variable tag starting at *pos; returns at its end tag. */
static void lx_tag(lexer *L, size_t *pos, int is_block, int *line_starting) {
    const char *s = L->s;
    size_t n = L->n, i = *pos;
    int bal = 0;
    for (;;) {
        L->e->line = L->line;
        if (i >= n) tpl__env_fail(L->e, CHAT_TEMPLATE_ERR_PARSE, "unexpected end of template, expected '%s'", is_block ? "%}" : "}}");
        if (bal == 0 && lx_tag_end(L, &i, is_block, line_starting)) break;
        size_t w = ws_run(s, n, i), j;
        char c = s[i];
        if (w) {
            lx_count_lines(L, s + i, w);
            i += w;
        } else if (c >= '0' && c <= '9')
            i = lx_number(L, i);
        else if (is_name_start(c)) {
            for (j = i; j < n && (is_name_start(s[j]) || (s[j] >= '0' && s[j] <= '9')); j++) {}
            lx_push(L, T_NAME, s + i, j - i);
            i = j;
        } else if (c == '\'' || c == '"')
            i = lx_quoted(L, i);
        else if ((j = lx_op(L, i, &bal)))
            i = j;
        else
            tpl__env_fail(L->e, CHAT_TEMPLATE_ERR_PARSE, "unexpected character in tag");
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
                if (k + 1 >= n) tpl__env_fail(L->e, CHAT_TEMPLATE_ERR_PARSE, "missing end of raw directive");
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
                if (k + 1 >= n) tpl__env_fail(L->e, CHAT_TEMPLATE_ERR_PARSE, "missing end of comment tag");
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

void tpl__lex(env *e, const char *s, size_t n, token **out, size_t *nout) {
    lexer L = {.e = e, .s = s, .n = n};
    lex(&L);
    *out = L.tk;
    *nout = L.ntk;
}
