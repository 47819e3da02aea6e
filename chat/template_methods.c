/* Chat templates, methods: attribute lookup binds the str and dict methods
 * real templates call (split, strip, startswith, format, items, get, ...);
 * mutating methods fail as jinja2's sandbox makes them. */
#include <utf8proc.h>

#include "chat/template_internal.h"

/* Method names by kind; the ids of the implemented ones follow these orders. */
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

/* o.nm: a bound method, a dict entry or namespace attribute, else undefined. */
value tpl__getattr_v(env *e, value o, const char *nm, size_t n) {
    int id;
    switch (o.t) {
    case V_UNDEF: tpl__undef_fail(e, o);
    case V_DICT:
        if ((id = tpl__lookup_name(DICT_METHODS, nm, n)) >= 0) return tpl__mk_func(e, M_ITEMS + id, o);
        if (tpl__lookup_name(DICT_UNSAFE, nm, n) >= 0) return tpl__mk_func(e, M_UNSAFE, o);
        if (tpl__lookup_name(DICT_OTHER, nm, n) >= 0) return tpl__mk_func(e, M_DICT_OTHER, o);
        {
            value *p = tpl__dict_find_s(o.u.d, nm, n);
            if (p) return *p;
        }
        break;
    case V_NS: {
        value *p = tpl__dict_find_s(o.u.d, nm, n);
        if (p) return *p;
        break;
    }
    case V_STR:
        if ((id = tpl__lookup_name(STR_METHODS, nm, n)) >= 0) return tpl__mk_func(e, M_STARTSWITH + id, o);
        if (tpl__lookup_name(STR_OTHER, nm, n) >= 0) return tpl__mk_func(e, M_STR_OTHER, o);
        break;
    case V_LIST:
        if (tpl__lookup_name(LIST_UNSAFE, nm, n) >= 0) return tpl__mk_func(e, M_UNSAFE, o);
        if (tpl__lookup_name(LIST_OTHER, nm, n) >= 0) return tpl__mk_func(e, M_LIST_OTHER, o);
        break;
    default: break;
    }
    return mk_undef(nm, n);
}

/* ---- string methods ---- */

static int in_chars(int32_t c, value chars) {
    if (chars.t == V_NONE || chars.t == V_UNDEF) return tpl__py_isspace(c);
    size_t i = 0;
    while (i < chars.u.s.n) {
        size_t k;
        if (tpl__u8_dec(chars.u.s.p + i, chars.u.s.n - i, &k) == c) return 1;
        i += k;
    }
    return 0;
}
value tpl__str_strip(env *e, value s, value chars, int left, int right) {
    if (chars.t != V_NONE && chars.t != V_UNDEF) tpl__want_str(e, chars, "strip arg");
    const char *p = s.u.s.p;
    size_t a = 0, b = s.u.s.n;
    if (left)
        while (a < b) {
            size_t k;
            if (!in_chars(tpl__u8_dec(p + a, b - a, &k), chars)) break;
            a += k;
        }
    if (right)
        while (b > a) {
            size_t st = b - 1;
            while (st > a && ((unsigned char)p[st] & 0xC0) == 0x80) st--;
            size_t k;
            if (!in_chars(tpl__u8_dec(p + st, b - st, &k), chars)) break;
            b = st;
        }
    return mk_str(p + a, b - a);
}

value tpl__str_replace(env *e, value s, value old, value nw, int64_t count) {
    sbuf b = {0};
    const char *p = s.u.s.p;
    size_t n = s.u.s.n, i = 0;
    int64_t done = 0;
    if (old.u.s.n == 0) {
        while (count < 0 || done < count) {
            tpl__sb_put(e, &b, nw.u.s.p, nw.u.s.n);
            done++;
            if (i >= n) break;
            size_t k;
            tpl__u8_dec(p + i, n - i, &k);
            tpl__sb_put(e, &b, p + i, k);
            i += k;
        }
        tpl__sb_put(e, &b, p + i, n - i);
        return mk_sbuf(&b);
    }
    while (count < 0 || done < count) {
        const char *h = tpl__memmem(p + i, n - i, old.u.s.p, old.u.s.n);
        if (!h) break;
        tpl__sb_put(e, &b, p + i, (size_t)(h - (p + i)));
        tpl__sb_put(e, &b, nw.u.s.p, nw.u.s.n);
        i = (size_t)(h - p) + old.u.s.n;
        done++;
    }
    tpl__sb_put(e, &b, p + i, n - i);
    if (done == 0) return s;
    return mk_sbuf(&b);
}

static value str_split(env *e, value s, value sep, int64_t maxsplit, int right) {
    list *l = tpl__list_new(e, 0);
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
                    if (!tpl__py_isspace(tpl__u8_dec(p + i, n - i, &k))) break;
                    i += k;
                }
                if (i >= n) break;
                if (maxsplit >= 0 && done >= maxsplit) {
                    /* rest, with trailing whitespace kept */
                    tpl__list_push(e, l, mk_str(p + i, n - i));
                    break;
                }
                size_t st = i;
                while (i < n) {
                    size_t k;
                    if (tpl__py_isspace(tpl__u8_dec(p + i, n - i, &k))) break;
                    i += k;
                }
                tpl__list_push(e, l, mk_str(p + st, i - st));
                done++;
            }
        } else {
            /* collect from the right then reverse */
            size_t j = n;
            int64_t done = 0;
            list *tmp = tpl__list_new(e, 0);
            for (;;) {
                while (j > 0) {
                    size_t st = j - 1;
                    while (st > 0 && ((unsigned char)p[st] & 0xC0) == 0x80) st--;
                    size_t k;
                    if (!tpl__py_isspace(tpl__u8_dec(p + st, j - st, &k))) break;
                    j = st;
                }
                if (j == 0) break;
                if (maxsplit >= 0 && done >= maxsplit) {
                    tpl__list_push(e, tmp, mk_str(p, j));
                    break;
                }
                size_t end = j;
                while (j > 0) {
                    size_t st = j - 1;
                    while (st > 0 && ((unsigned char)p[st] & 0xC0) == 0x80) st--;
                    size_t k;
                    if (tpl__py_isspace(tpl__u8_dec(p + st, j - st, &k))) break;
                    j = st;
                }
                tpl__list_push(e, tmp, mk_str(p + j, end - j));
                done++;
            }
            for (size_t i = tmp->n; i > 0; i--) tpl__list_push(e, l, tmp->v[i - 1]);
        }
        return mk_list(l);
    }
    tpl__want_str(e, sep, "separator");
    if (sep.u.s.n == 0) tpl__r_fail(e, "empty separator");
    if (!right) {
        size_t i = 0;
        int64_t done = 0;
        for (;;) {
            const char *h = (maxsplit < 0 || done < maxsplit) ? tpl__memmem(p + i, n - i, sep.u.s.p, sep.u.s.n) : NULL;
            if (!h) {
                tpl__list_push(e, l, mk_str(p + i, n - i));
                break;
            }
            tpl__list_push(e, l, mk_str(p + i, (size_t)(h - (p + i))));
            i = (size_t)(h - p) + sep.u.s.n;
            done++;
        }
    } else {
        /* search the byte-reversed string left to right: linear time */
        list *tmp = tpl__list_new(e, 0);
        const char *rp = tpl__str_rev(e, p, n), *rs = tpl__str_rev(e, sep.u.s.p, sep.u.s.n);
        size_t m = sep.u.s.n, ri = 0, end = n;
        int64_t done = 0;
        for (;;) {
            const char *h = (maxsplit < 0 || done < maxsplit) ? tpl__memmem(rp + ri, n - ri, rs, m) : NULL;
            if (!h) {
                tpl__list_push(e, tmp, mk_str(p, end));
                break;
            }
            size_t rpos = (size_t)(h - rp);       /* match at [rpos, rpos+m) reversed */
            size_t ostart = n - rpos - m;         /* = [ostart, ostart+m) original */
            tpl__list_push(e, tmp, mk_str(p + ostart + m, end - ostart - m));
            end = ostart;
            ri = rpos + m;
            done++;
        }
        for (size_t i = tmp->n; i > 0; i--) tpl__list_push(e, l, tmp->v[i - 1]);
    }
    return mk_list(l);
}

static int affix_match(env *e, value s, value pre, int end) {
    if (pre.t == V_LIST && pre.u.l->tuple) {
        for (size_t i = 0; i < pre.u.l->n; i++)
            if (affix_match(e, s, pre.u.l->v[i], end)) return 1;
        return 0;
    }
    tpl__want_str(e, pre, end ? "endswith arg" : "startswith arg");
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
        if (c == '}') tpl__r_fail(e, "Single '}' encountered in format string");
        if (c != '{') {
            sb_putc(e, &b, c);
            i++;
            continue;
        }
        size_t j = i + 1;
        while (j < n && p[j] != '}' && p[j] != ':' && p[j] != '!' && p[j] != '.' && p[j] != '[' && p[j] != '{') j++;
        if (j >= n || p[j] != '}') tpl__env_fail(e, CHAT_TEMPLATE_ERR_UNSUPPORTED, "str.format with conversions or format specs is not supported");
        value v;
        size_t fl = j - i - 1;
        const char *f = p + i + 1;
        if (fl == 0) {
            if (autoidx >= a->npos) tpl__r_fail(e, "Replacement index %zu out of range", autoidx);
            v = a->pos[autoidx++];
        } else if (f[0] >= '0' && f[0] <= '9') {
            size_t idx = 0;
            for (size_t k = 0; k < fl; k++) {
                if (f[k] < '0' || f[k] > '9' || idx > 100000) tpl__r_fail(e, "bad format field");
                idx = idx * 10 + (size_t)(f[k] - '0');
            }
            if (idx >= a->npos) tpl__r_fail(e, "Replacement index %zu out of range", idx);
            v = a->pos[idx];
        } else {
            size_t k;
            for (k = 0; k < a->nk; k++)
                if (a->kl[k] == fl && memcmp(a->kn[k], f, fl) == 0) break;
            if (k == a->nk) tpl__r_fail(e, "KeyError: '%.*s'", (int)(fl > 64 ? 64 : fl), f);
            v = a->kv[k];
        }
        value s = tpl__py_str(e, v);
        tpl__sb_put(e, &b, s.u.s.p, s.u.s.n);
        i = j + 1;
    }
    return mk_sbuf(&b);
}

value tpl__call_str_method(env *e, int id, value s, cargs *a) {
    value x, y, z;
    switch (id) {
    case M_STARTSWITH:
    case M_ENDSWITH:
        tpl__check_args(e, a, 1, NULL, id == M_STARTSWITH ? "startswith" : "endswith");
        if (!tpl__get_arg(a, 0, "", &x)) tpl__r_fail(e, "startswith/endswith takes 1 argument");
        return mk_bool(affix_match(e, s, x, id == M_ENDSWITH));
    case M_STRIP:
    case M_LSTRIP:
    case M_RSTRIP:
        tpl__check_args(e, a, 1, NULL, "strip");
        if (!tpl__get_arg(a, 0, "", &x)) x = mk_none();
        return tpl__str_strip(e, s, x, id != M_RSTRIP, id != M_LSTRIP);
    case M_SPLIT:
    case M_RSPLIT: {
        static const char *const nm[] = {"sep", "maxsplit", NULL};
        tpl__check_args(e, a, 2, nm, "split");
        if (!tpl__get_arg(a, 0, "sep", &x)) x = mk_none();
        int64_t ms = tpl__get_arg(a, 1, "maxsplit", &y) ? tpl__want_int(e, y, "maxsplit") : -1;
        return str_split(e, s, x, ms, id == M_RSPLIT);
    }
    case M_REPLACE: {
        tpl__check_args(e, a, 3, NULL, "replace");
        if (!tpl__get_arg(a, 0, "", &x) || !tpl__get_arg(a, 1, "", &y)) tpl__r_fail(e, "replace expected at least 2 arguments");
        int64_t cnt = tpl__get_arg(a, 2, "", &z) ? tpl__want_int(e, z, "count") : -1;
        return tpl__str_replace(e, s, tpl__want_str(e, x, "replace arg"), tpl__want_str(e, y, "replace arg"), cnt);
    }
    case M_UPPER: tpl__check_args(e, a, 0, NULL, "upper"); return tpl__str_case(e, s, 1);
    case M_LOWER: tpl__check_args(e, a, 0, NULL, "lower"); return tpl__str_case(e, s, 0);
    case M_TITLE: tpl__check_args(e, a, 0, NULL, "title"); return tpl__str_case(e, s, 2);
    case M_CAPITALIZE: tpl__check_args(e, a, 0, NULL, "capitalize"); return tpl__str_case(e, s, 3);
    case M_FIND:
    case M_RFIND:
    case M_COUNT: {
        tpl__check_args(e, a, 1, NULL, "find");
        if (!tpl__get_arg(a, 0, "", &x)) tpl__r_fail(e, "find/count takes 1 argument");
        tpl__want_str(e, x, "substring");
        if (id == M_COUNT) {
            if (x.u.s.n == 0) return mk_int((int64_t)tpl__u8_len(s.u.s.p, s.u.s.n) + 1);
            int64_t c = 0;
            size_t i = 0;
            int64_t f;
            while ((f = tpl__str_find(s.u.s.p, s.u.s.n, x.u.s.p, x.u.s.n, i)) >= 0) {
                c++;
                i = (size_t)f + x.u.s.n;
            }
            return mk_int(c);
        }
        int64_t f = -1;
        if (id == M_FIND)
            f = tpl__str_find(s.u.s.p, s.u.s.n, x.u.s.p, x.u.s.n, 0);
        else if (x.u.s.n <= s.u.s.n) {
            const char *rh = tpl__str_rev(e, s.u.s.p, s.u.s.n), *rn = tpl__str_rev(e, x.u.s.p, x.u.s.n);
            const char *h = tpl__memmem(rh, s.u.s.n, rn, x.u.s.n);
            if (h) f = (int64_t)(s.u.s.n - (size_t)(h - rh) - x.u.s.n);
        }
        return mk_int(f < 0 ? -1 : (int64_t)tpl__u8_len(s.u.s.p, (size_t)f));
    }
    case M_JOIN: {
        tpl__check_args(e, a, 1, NULL, "join");
        if (!tpl__get_arg(a, 0, "", &x)) tpl__r_fail(e, "join takes 1 argument");
        list *l = tpl__iter_list(e, x);
        sbuf b = {0};
        for (size_t i = 0; i < l->n; i++) {
            if (i) tpl__sb_put(e, &b, s.u.s.p, s.u.s.n);
            value it = tpl__want_str(e, l->v[i], "sequence item");
            tpl__sb_put(e, &b, it.u.s.p, it.u.s.n);
        }
        return mk_sbuf(&b);
    }
    case M_FORMAT: return str_format(e, s, a);
    default: {
        tpl__check_args(e, a, 0, NULL, "is*");
        if (s.u.s.n == 0) return mk_bool(0);
        int ok = 1, any_cased = 0;
        size_t i = 0;
        while (i < s.u.s.n) {
            size_t k;
            int32_t c = tpl__u8_dec(s.u.s.p + i, s.u.s.n - i, &k);
            utf8proc_category_t cat = utf8proc_category(c);
            int alpha = cat == UTF8PROC_CATEGORY_LU || cat == UTF8PROC_CATEGORY_LL || cat == UTF8PROC_CATEGORY_LT ||
                        cat == UTF8PROC_CATEGORY_LM || cat == UTF8PROC_CATEGORY_LO;
            int digit = cat == UTF8PROC_CATEGORY_ND;
            switch (id) {
            case M_ISDIGIT: ok &= digit; break;
            case M_ISALPHA: ok &= alpha; break;
            case M_ISSPACE: ok &= tpl__py_isspace(c); break;
            case M_ISALNUM: ok &= alpha || digit || cat == UTF8PROC_CATEGORY_NL || cat == UTF8PROC_CATEGORY_NO; break;
            case M_ISUPPER:
                if (tpl__cp_iscased(c)) {
                    any_cased = 1;
                    ok &= tpl__cp_iscased_upper(c);
                }
                break;
            case M_ISLOWER:
                if (tpl__cp_iscased(c)) {
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

/* ---- dict methods ---- */

static value call_dict_method(env *e, int id, dict *d, cargs *a) {
    value x, y;
    if (id == M_GET) {
        tpl__check_args(e, a, 2, NULL, "get");
        if (!tpl__get_arg(a, 0, "", &x)) tpl__r_fail(e, "get expected at least 1 argument");
        value *p = tpl__dict_find(d, x);
        if (p) return *p;
        return tpl__get_arg(a, 1, "", &y) ? y : mk_none();
    }
    tpl__check_args(e, a, 0, NULL, "items");
    list *l = tpl__list_new(e, d->n);
    for (size_t i = 0; i < d->n; i++) {
        if (id == M_KEYS)
            tpl__list_push(e, l, d->k[i]);
        else if (id == M_VALUES)
            tpl__list_push(e, l, d->v[i]);
        else {
            list *t = tpl__list_new(e, 2);
            t->tuple = 1;
            tpl__list_push(e, t, d->k[i]);
            tpl__list_push(e, t, d->v[i]);
            tpl__list_push(e, l, mk_list(t));
        }
    }
    return mk_list(l);
}

value tpl__call_method(env *e, int id, value self, cargs *a, const char *what) {
    switch (id) {
    case M_ITEMS:
    case M_KEYS:
    case M_VALUES:
    case M_GET: return call_dict_method(e, id, self.u.d, a);
    case M_UNSAFE: tpl__r_fail(e, "access to a mutating method is unsafe in the sandbox");
    case M_STR_OTHER:
    case M_DICT_OTHER:
    case M_LIST_OTHER: tpl__env_fail(e, CHAT_TEMPLATE_ERR_UNSUPPORTED, "unsupported function or method '%s'", what);
    default: return tpl__call_str_method(e, id, self, a);
    }
}
