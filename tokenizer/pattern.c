/* The patterns of tokenizer.json ({"Regex": ...} through PCRE2, or a literal
 * {"String": ...}) used by Split pre-tokenizers and Replace normalizers and
 * decoders, and their matching with the semantics of onig's find_iter,
 * which HF uses. */
#include "tokenizer/tokenizer_internal.h"

void tok__pattern_free(pattern *p) {
    if (p->re) pcre2_code_free(p->re);
    free(p->lit);
}

int tok__pattern_load(loadctx *c, const cJSON *j, pattern *p) {
    const char *rx = tok__jstr(j, "Regex"), *lit = tok__jstr(j, "String");
    if (rx) {
        int code;
        PCRE2_SIZE off;
        p->re = pcre2_compile((PCRE2_SPTR)rx, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &code,
                              &off, NULL);
        if (!p->re) {
            char msg[128];
            pcre2_get_error_message(code, (PCRE2_UCHAR *)msg, sizeof msg);
            return tok__fail(c, TOKENIZER_ERR_PARSE, "regex /%s/ at offset %zu: %s", rx, (size_t)off,
                             msg);
        }
        pcre2_jit_compile(p->re, PCRE2_JIT_COMPLETE); /* falls back to the interpreter */
        return 0;
    }
    if (lit) {
        p->lit_len = strlen(lit);
        p->lit = tok__dup_n(lit, p->lit_len);
        if (!p->lit) return tok__fail(c, TOKENIZER_ERR_NOMEM, "out of memory");
        return 0;
    }
    return tok__fail(c, TOKENIZER_ERR_PARSE, "pattern needs a Regex or String");
}

/* A literal pattern: memmem, left to right. */
static int literal_find(const pattern *p, const char *s, size_t n, spanlist *out) {
    if (!p->lit_len) return 0;
    size_t i = 0;
    while (i + p->lit_len <= n) {
        const char *f = memmem(s + i, n - i, p->lit, p->lit_len);
        if (!f) break;
        size_t st = (size_t)(f - s);
        if (tok__spans_add(out, st, st + p->lit_len)) return TOKENIZER_ERR_NOMEM;
        i = st + p->lit_len;
    }
    return 0;
}

int tok__pattern_find(const pattern *p, const char *s, size_t n, pcre2_match_data *md,
                      spanlist *out) {
    out->n = 0;
    if (!p->re) return literal_find(p, s, n, out);
    size_t start = 0, last_end = 0;
    bool have_last = false;
    while (start <= n) {
        int rc = pcre2_match(p->re, (PCRE2_SPTR)s, n, start, PCRE2_NO_UTF_CHECK, md, NULL);
        if (rc == PCRE2_ERROR_JIT_STACKLIMIT) /* the interpreter keeps its stack on the heap */
            rc = pcre2_match(p->re, (PCRE2_SPTR)s, n, start, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0 && rc != 0) {
            if (rc == PCRE2_ERROR_MATCHLIMIT || rc == PCRE2_ERROR_DEPTHLIMIT ||
                rc == PCRE2_ERROR_HEAPLIMIT || rc == PCRE2_ERROR_JIT_STACKLIMIT)
                return TOKENIZER_ERR_LIMIT;
            return TOKENIZER_ERR_INVALID_ARG;
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t ms = ov[0], me = ov[1];
        if (ms == me && have_last && last_end == me) {
            if (start >= n) break;
            start += tok__utf8_char_len(s, n, start);
            continue;
        }
        if (tok__spans_add(out, ms, me)) return TOKENIZER_ERR_NOMEM;
        start = me;
        last_end = me;
        have_last = true;
    }
    return 0;
}
