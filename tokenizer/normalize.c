/* Normalizers: loading the "normalizer" component (NFC/NFD/NFKC/NFKD,
 * Lowercase, Replace, Prepend, Strip and Sequences of them) and running it
 * over a string in place, as HF's NormalizedString does (we keep no
 * alignments: nothing needs offsets). Unicode data comes from utf8proc. */
#include "tokenizer/tokenizer_internal.h"

#include "base/utf8.h"

#include <utf8proc.h>

int tok__load_normalizer(loadctx *c, const cJSON *j, component *k, int depth) {
    const char *type;
    int rc = tok__load_type(c, j, k, depth, tok__load_normalizer, "normalizer", "normalizers", &type);
    if (rc <= 0) return rc;
    if (!strcmp(type, "NFC")) k->type = NORM_NFC;
    else if (!strcmp(type, "NFD")) k->type = NORM_NFD;
    else if (!strcmp(type, "NFKC")) k->type = NORM_NFKC;
    else if (!strcmp(type, "NFKD")) k->type = NORM_NFKD;
    else if (!strcmp(type, "Lowercase")) k->type = NORM_LOWER;
    else if (!strcmp(type, "Replace")) {
        k->type = NORM_REPLACE;
        if (tok__pattern_load(c, cJSON_GetObjectItemCaseSensitive(j, "pattern"), &k->pat)) return c->status;
        return tok__set_content(c, k, tok__jstr(j, "content"));
    } else if (!strcmp(type, "Prepend")) {
        k->type = NORM_PREPEND;
        return tok__set_content(c, k, tok__jstr(j, "prepend"));
    } else if (!strcmp(type, "Strip")) {
        k->type = NORM_STRIP;
        k->flag_a = tok__jbool(j, "strip_left", false);
        k->flag_b = tok__jbool(j, "strip_right", false);
    } else
        return tok__fail(c, TOKENIZER_ERR_UNSUPPORTED, "unsupported normalizer type '%s'", type);
    return 0;
}

/* Stable counting sort by canonical combining class of cps[0..n) (all
 * non-starters): the canonical ordering, in O(n) where utf8proc's
 * bubble sort is O(n^2) on long runs of combining marks. */
static void sort_by_ccc(int32_t *cps, size_t n, int32_t *tmp) {
    size_t count[257] = {0};
    for (size_t i = 0; i < n; i++) count[utf8proc_get_property(cps[i])->combining_class + 1]++;
    for (int c = 1; c < 257; c++) count[c] += count[c - 1];
    for (size_t i = 0; i < n; i++) tmp[count[utf8proc_get_property(cps[i])->combining_class]++] = cps[i];
    memcpy(cps, tmp, n * sizeof *cps);
}

/* Canonical ordering of each run of non-starters of buf[0..n). */
static int canonical_order(int32_t *buf, size_t n) {
    int32_t *tmp = NULL;
    for (size_t a = 0; a < n;) {
        if (utf8proc_get_property(buf[a])->combining_class == 0) {
            a++;
            continue;
        }
        size_t b = a;
        while (b < n && utf8proc_get_property(buf[b])->combining_class != 0) b++;
        if (b - a > 1) {
            if (!tmp) tmp = malloc(n * sizeof *tmp);
            if (!tmp) return TOKENIZER_ERR_NOMEM;
            sort_by_ccc(buf + a, b - a, tmp);
        }
        a = b;
    }
    free(tmp);
    return 0;
}

/* NFD / NFKD (compose false) or NFC / NFKC of s (valid UTF-8) into o:
 * utf8proc's per-character decomposition, our canonical ordering, then
 * utf8proc's composition. */
static int unicode_normalize(const strbuf *s, strbuf *o, bool compat, bool compose) {
    size_t cap = s->len + 16, n = 0;
    int32_t *buf = malloc(cap * sizeof *buf);
    if (!buf) return TOKENIZER_ERR_NOMEM;
    int opt = UTF8PROC_DECOMPOSE | (compat ? UTF8PROC_COMPAT : 0);
    size_t i = 0;
    while (i < s->len) {
        int32_t cp = 0;
        size_t k = utf8_decode((const uint8_t *)s->s + i, s->len - i, &cp);
        if (!k) {
            free(buf);
            return TOKENIZER_ERR_INVALID_UTF8;
        }
        i += k;
        for (;;) {
            int bound = 0;
            utf8proc_ssize_t r = utf8proc_decompose_char(cp, buf + n, (utf8proc_ssize_t)(cap - n),
                                                         (utf8proc_option_t)opt, &bound);
            if (r < 0) {
                free(buf);
                return TOKENIZER_ERR_INVALID_UTF8;
            }
            if ((size_t)r <= cap - n) {
                n += (size_t)r;
                break;
            }
            cap = cap * 2 + (size_t)r;
            int32_t *nb = realloc(buf, cap * sizeof *nb);
            if (!nb) {
                free(buf);
                return TOKENIZER_ERR_NOMEM;
            }
            buf = nb;
        }
    }
    if (canonical_order(buf, n)) {
        free(buf);
        return TOKENIZER_ERR_NOMEM;
    }
    /* composition and UTF-8 encoding, in place (needs 4 bytes per cp: ok) */
    utf8proc_ssize_t len = utf8proc_reencode(buf, (utf8proc_ssize_t)n,
                                             (utf8proc_option_t)(UTF8PROC_STABLE | (compose ? UTF8PROC_COMPOSE : 0)));
    if (len < 0) {
        free(buf);
        return TOKENIZER_ERR_INVALID_UTF8;
    }
    o->len = 0;
    int rc = strbuf_add(o, (const char *)buf, (size_t)len);
    free(buf);
    return rc ? TOKENIZER_ERR_NOMEM : 0;
}

static int norm_swap(strbuf *s, strbuf *tmp) {
    strbuf t = *s;
    *s = *tmp;
    *tmp = t;
    return 0;
}

static int norm_unicode(const component *k, strbuf *s, strbuf *o) {
    if (!s->len) return 0;
    if (k->type == NORM_NFC) {
        /* Code points below U+0300 (lead bytes below 0xCC) are NFC-stable
         * and never compose with each other: skip the common case. */
        size_t i = 0;
        while (i < s->len && (uint8_t)s->s[i] < 0xCC) i++;
        if (i == s->len) return 0;
    }
    bool compat = k->type == NORM_NFKC || k->type == NORM_NFKD;
    bool compose = k->type == NORM_NFC || k->type == NORM_NFKC;
    int rc = unicode_normalize(s, o, compat, compose);
    if (rc) return rc;
    return norm_swap(s, o);
}

static int norm_lower(strbuf *s, strbuf *o) {
    size_t i = 0;
    while (i < s->len) {
        int32_t cp = 0;
        size_t n = utf8_decode((const uint8_t *)s->s + i, s->len - i, &cp);
        if (!n) return TOKENIZER_ERR_INVALID_UTF8;
        i += n;
        char b[8];
        int m;
        if (cp == 0x130) { /* the one code point whose lowercase is two */
            memcpy(b, "i\xCC\x87", 3);
            m = 3;
        } else /* utf8proc maps a scalar value to a scalar value: m > 0 */
            m = utf8_encode(utf8proc_tolower(cp), b);
        if (strbuf_add(o, b, (size_t)m)) return TOKENIZER_ERR_NOMEM;
    }
    return norm_swap(s, o);
}

static int norm_replace(const component *k, strbuf *s, normctx *x, strbuf *o) {
    int rc = tok__pattern_find(&k->pat, s->s ? s->s : "", s->len, x->md, &x->m);
    if (rc) return rc;
    size_t prev = 0;
    for (size_t i = 0; i < x->m.n; i++) {
        if (strbuf_add(o, s->s + prev, x->m.v[i].s - prev) || strbuf_add(o, k->content, k->content_len))
            return TOKENIZER_ERR_NOMEM;
        prev = x->m.v[i].e;
    }
    if (strbuf_add(o, s->s ? s->s + prev : "", s->len - prev)) return TOKENIZER_ERR_NOMEM;
    return norm_swap(s, o);
}

static int norm_strip(const component *k, strbuf *s, strbuf *o) {
    size_t a = 0, b = s->len;
    if (k->flag_a) {
        while (a < b) {
            int32_t cp = 0;
            size_t n = utf8_decode((const uint8_t *)s->s + a, b - a, &cp);
            if (!n || !tok__cp_is_whitespace(cp)) break;
            a += n;
        }
    }
    if (k->flag_b) {
        while (b > a) {
            size_t st;
            int32_t cp = tok__utf8_last_cp(s->s, b, &st);
            if (!tok__cp_is_whitespace(cp) || st < a) break;
            b = st;
        }
    }
    if (strbuf_add(o, s->s ? s->s + a : "", b - a)) return TOKENIZER_ERR_NOMEM;
    return norm_swap(s, o);
}

int tok__norm_apply(const component *k, strbuf *s, normctx *x, int depth) {
    strbuf *o = &x->tmp;
    /* Kept allocated, so that s->s is never NULL after a swap: the stages
     * read s->s + offset even for an empty string. */
    if (strbuf_reserve(o, 0)) return TOKENIZER_ERR_NOMEM;
    o->len = 0;
    switch (k->type) {
    case NORM_SEQ:
        for (size_t i = 0; i < k->n_sub; i++) {
            int rc = tok__norm_apply(&k->sub[i], s, x, depth + 1);
            if (rc) return rc;
        }
        return 0;
    case NORM_NFC:
    case NORM_NFD:
    case NORM_NFKC:
    case NORM_NFKD: return norm_unicode(k, s, o);
    case NORM_LOWER: return norm_lower(s, o);
    case NORM_REPLACE: return norm_replace(k, s, x, o);
    case NORM_PREPEND:
        if (!s->len) return 0;
        if (strbuf_add(o, k->content, k->content_len) || strbuf_add(o, s->s, s->len)) return TOKENIZER_ERR_NOMEM;
        return norm_swap(s, o);
    case NORM_STRIP: return norm_strip(k, s, o);
    }
    return 0;
}
