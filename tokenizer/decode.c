/* Decoding: loading the "decoder" component (ByteLevel, Replace, Fuse,
 * Strip, ByteFallback, Metaspace and Sequences of them), HF's decode_chain
 * over the tokens of a decode, the bytes of one token, and the incremental
 * decoder for streaming that only ever emits whole UTF-8 characters. */
#include "tokenizer/tokenizer_internal.h"

#include "base/utf8.h"

#include <assert.h>
#include <ctype.h>

int tok__load_decoder(loadctx *c, const cJSON *j, component *k, int depth) {
    const char *type;
    int rc = tok__load_type(c, j, k, depth, tok__load_decoder, "decoder", "decoders", &type);
    if (rc <= 0) return rc;
    if (!strcmp(type, "ByteLevel")) k->type = DEC_BYTELEVEL;
    else if (!strcmp(type, "Fuse")) k->type = DEC_FUSE;
    else if (!strcmp(type, "ByteFallback")) k->type = DEC_BYTEFALLBACK;
    else if (!strcmp(type, "Replace")) {
        k->type = DEC_REPLACE;
        if (tok__pattern_load(c, cJSON_GetObjectItemCaseSensitive(j, "pattern"), &k->pat)) return c->status;
        return tok__set_content(c, k, tok__jstr(j, "content"));
    } else if (!strcmp(type, "Strip")) {
        k->type = DEC_STRIP;
        const char *s = tok__jstr(j, "content");
        int32_t cp;
        if (!s || !*s || utf8_decode((const uint8_t *)s, strlen(s), &cp) != strlen(s))
            return tok__fail(c, TOKENIZER_ERR_PARSE, "Strip decoder content must be one character");
        if (tok__set_content(c, k, s)) return c->status;
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(j, "start");
        const cJSON *b = cJSON_GetObjectItemCaseSensitive(j, "stop");
        k->start = cJSON_IsNumber(a) && a->valuedouble > 0 ? (int)(a->valuedouble < 1e6 ? a->valuedouble : 1e6) : 0;
        k->stop = cJSON_IsNumber(b) && b->valuedouble > 0 ? (int)(b->valuedouble < 1e6 ? b->valuedouble : 1e6) : 0;
    } else if (!strcmp(type, "Metaspace")) {
        k->type = DEC_METASPACE;
        return tok__load_replacement(c, j, k);
    } else
        return tok__fail(c, TOKENIZER_ERR_UNSUPPORTED, "unsupported decoder type '%s'", type);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* decode_chain                                                             */

/* The tokens between decoder stages: ranges of one text. */
typedef struct {
    strbuf text; /* allocated once a token is added, even an empty one */
    spanlist sp; /* tokens as ranges of text */
} toklist;

static int tl_add(toklist *l, const char *s, size_t n) {
    size_t st = l->text.len;
    if (strbuf_reserve(&l->text, n) || strbuf_add(&l->text, s, n) || tok__spans_add(&l->sp, st, st + n))
        return TOKENIZER_ERR_NOMEM;
    return 0;
}

/* Appends the bytes ByteLevel gives for one token: each char mapped back to
 * its byte, or the token's own bytes if any char is outside the alphabet. */
static int bytelevel_token_bytes(strbuf *out, const char *s, size_t n) {
    size_t start = out->len, i = 0;
    while (i < n) {
        int32_t cp = -1;
        size_t k = utf8_decode((const uint8_t *)s + i, n - i, &cp);
        if (!k || cp >= 512 || tok__bl_cp_to_byte[cp] < 0) {
            out->len = start;
            return strbuf_add(out, s, n);
        }
        if (strbuf_addc(out, (char)tok__bl_cp_to_byte[cp])) return -1;
        i += k;
    }
    return 0;
}

/* ByteLevel: all tokens' bytes joined, then one lossy UTF-8 conversion. */
static int dec_bytelevel(const toklist *in, toklist *out, normctx *x) {
    strbuf *raw = &x->tmp;
    raw->len = 0;
    for (size_t i = 0; i < in->sp.n; i++)
        if (bytelevel_token_bytes(raw, in->text.s + in->sp.v[i].s, in->sp.v[i].e - in->sp.v[i].s))
            return TOKENIZER_ERR_NOMEM;
    if (tok__utf8_lossy_add(&out->text, raw->s ? raw->s : "", raw->len, false, NULL) ||
        tok__spans_add(&out->sp, 0, out->text.len))
        return TOKENIZER_ERR_NOMEM;
    return 0;
}

static int dec_replace(const component *k, const toklist *in, toklist *out, normctx *x) {
    for (size_t i = 0; i < in->sp.n; i++) {
        const char *s = in->text.s + in->sp.v[i].s;
        size_t n = in->sp.v[i].e - in->sp.v[i].s, st = out->text.len, prev = 0;
        int rc = tok__pattern_find(&k->pat, s, n, x->md, &x->m);
        if (rc) return rc;
        for (size_t j = 0; j < x->m.n; j++) {
            if (strbuf_add(&out->text, s + prev, x->m.v[j].s - prev) ||
                strbuf_add(&out->text, k->content, k->content_len))
                return TOKENIZER_ERR_NOMEM;
            prev = x->m.v[j].e;
        }
        if (strbuf_add(&out->text, s + prev, n - prev) || tok__spans_add(&out->sp, st, out->text.len))
            return TOKENIZER_ERR_NOMEM;
    }
    return 0;
}

/* Strip: up to start copies of the content off the front of each token,
 * up to stop off the back. */
static int dec_strip(const component *k, const toklist *in, toklist *out) {
    for (size_t i = 0; i < in->sp.n; i++) {
        const char *s = in->text.s + in->sp.v[i].s;
        size_t n = in->sp.v[i].e - in->sp.v[i].s, a = 0, b = n;
        for (int j = 0; j < k->start && a < b; j++) {
            if (n - a < k->content_len || memcmp(s + a, k->content, k->content_len)) break;
            a += k->content_len;
        }
        for (int j = 0; j < k->stop && b > a; j++) {
            if (b - a < k->content_len || memcmp(s + b - k->content_len, k->content, k->content_len)) break;
            b -= k->content_len;
        }
        if (tl_add(out, s + a, b - a)) return TOKENIZER_ERR_NOMEM;
    }
    return 0;
}

/* ByteFallback: runs of <0xXX> tokens become their bytes when those are
 * valid UTF-8, else one U+FFFD per byte. */
static int dec_bytefallback(const toklist *in, toklist *out, normctx *x) {
    strbuf *pend = &x->tmp;
    pend->len = 0;
    for (size_t i = 0; i <= in->sp.n; i++) {
        const char *s = i < in->sp.n ? in->text.s + in->sp.v[i].s : NULL;
        size_t n = i < in->sp.n ? in->sp.v[i].e - in->sp.v[i].s : 0;
        if (s && n == 6 && !memcmp(s, "<0x", 3) && s[5] == '>' && isxdigit((unsigned char)s[3]) &&
            isxdigit((unsigned char)s[4])) {
            char hex[3] = {s[3], s[4], 0};
            if (strbuf_addc(pend, (char)strtol(hex, NULL, 16))) return TOKENIZER_ERR_NOMEM;
            continue;
        }
        if (pend->len) {
            if (utf8_valid(pend->s, pend->len)) {
                if (tl_add(out, pend->s, pend->len)) return TOKENIZER_ERR_NOMEM;
            } else
                for (size_t j = 0; j < pend->len; j++)
                    if (tl_add(out, "\xEF\xBF\xBD", 3)) return TOKENIZER_ERR_NOMEM;
            pend->len = 0;
        }
        if (s && tl_add(out, s, n)) return TOKENIZER_ERR_NOMEM;
    }
    return 0;
}

/* Metaspace: the replacement becomes ' ', except at the start of the first
 * token when a prefix space was prepended. */
static int dec_metaspace(const component *k, const toklist *in, toklist *out) {
    for (size_t i = 0; i < in->sp.n; i++) {
        const char *s = in->text.s + in->sp.v[i].s;
        size_t n = in->sp.v[i].e - in->sp.v[i].s, st = out->text.len, j = 0;
        while (j < n) {
            if (n - j >= k->content_len && !memcmp(s + j, k->content, k->content_len)) {
                if (!(i == 0 && k->prepend_scheme != PREPEND_NEVER) && strbuf_addc(&out->text, ' '))
                    return TOKENIZER_ERR_NOMEM;
                j += k->content_len;
            } else {
                size_t c = tok__utf8_char_len(s, n, j);
                if (strbuf_add(&out->text, s + j, c)) return TOKENIZER_ERR_NOMEM;
                j += c;
            }
        }
        if (tok__spans_add(&out->sp, st, out->text.len)) return TOKENIZER_ERR_NOMEM;
    }
    return 0;
}

static int dec_stage(const component *k, toklist *in, toklist *out, normctx *x) {
    /* out->text stays allocated: the next stage reads text.s + offset even
     * when everything decoded to nothing */
    if (strbuf_reserve(&out->text, 0)) return TOKENIZER_ERR_NOMEM;
    out->text.len = 0;
    out->sp.n = 0;
    switch (k->type) {
    case DEC_BYTELEVEL: return dec_bytelevel(in, out, x);
    case DEC_FUSE:
        if (strbuf_add(&out->text, in->text.s ? in->text.s : "", in->text.len) ||
            tok__spans_add(&out->sp, 0, out->text.len))
            return TOKENIZER_ERR_NOMEM;
        return 0;
    case DEC_REPLACE: return dec_replace(k, in, out, x);
    case DEC_STRIP: return dec_strip(k, in, out);
    case DEC_BYTEFALLBACK: return dec_bytefallback(in, out, x);
    case DEC_METASPACE: return dec_metaspace(k, in, out);
    }
    return 0;
}

/* Runs decode_chain of k over in; the result is in *in afterwards. */
static int dec_apply(const component *k, toklist *in, toklist *out, normctx *x) {
    if (k->type == DEC_SEQ) {
        for (size_t i = 0; i < k->n_sub; i++) {
            int rc = dec_apply(&k->sub[i], in, out, x);
            if (rc) return rc;
        }
        return 0;
    }
    int rc = dec_stage(k, in, out, x);
    toklist t = *in;
    *in = *out;
    *out = t;
    return rc;
}

/* The token string HF's decode passes to the decoder, or NULL to skip. */
static const char *decode_token(const tokenizer *t, int32_t id, bool skip_special, size_t *len) {
    if (id < 0 || (size_t)id >= t->n_ids) return NULL;
    int32_t a = t->added_of_id[id];
    if (a >= 0) {
        if (skip_special && t->added[a].special) return NULL;
        *len = t->added[a].len;
        return t->added[a].content;
    }
    if (!t->tok[id]) return NULL;
    *len = t->tok_len[id];
    return t->tok[id];
}

/* The decoded text of the tokens in a (joined with ' ' when there is no
 * decoder, as HF) into *res. */
static int decode_tokens(const tokenizer *t, toklist *a, strbuf *res) {
    toklist b = {0};
    normctx x = {0};
    int rc = 0;
    if (t->decoder) {
        x.md = pcre2_match_data_create(1, NULL);
        rc = x.md ? dec_apply(t->decoder, a, &b, &x) : TOKENIZER_ERR_NOMEM;
    }
    if (!rc) {
        /* join the tokens; without a decoder a->text already holds "a b c" */
        if (!t->decoder) rc = strbuf_add(res, a->text.s ? a->text.s : "", a->text.len);
        else
            for (size_t i = 0; i < a->sp.n && !rc; i++)
                rc = strbuf_add(res, a->text.s + a->sp.v[i].s, a->sp.v[i].e - a->sp.v[i].s);
        if (!rc) rc = strbuf_reserve(res, 0);
        if (rc) rc = TOKENIZER_ERR_NOMEM;
    }
    strbuf_free(&b.text);
    free(b.sp.v);
    strbuf_free(&x.tmp);
    free(x.m.v);
    pcre2_match_data_free(x.md);
    return rc;
}

int tokenizer_decode(const tokenizer *t, const int32_t *ids, size_t n, bool skip_special, char **out,
                     size_t *len) {
    assert(t && out && len && (ids || n == 0));
    *out = NULL;
    *len = 0;
    toklist a = {0};
    strbuf res = {0};
    int rc = 0;
    bool any = false;
    for (size_t i = 0; i < n && !rc; i++) {
        size_t tl;
        const char *s = decode_token(t, ids[i], skip_special, &tl);
        if (!s) continue;
        if (!t->decoder && any) rc = strbuf_addc(&a.text, ' ') ? TOKENIZER_ERR_NOMEM : 0;
        if (!rc) rc = tl_add(&a, s, tl);
        any = true;
    }
    if (!rc) rc = decode_tokens(t, &a, &res);
    strbuf_free(&a.text);
    free(a.sp.v);
    if (rc) {
        strbuf_free(&res);
        return rc;
    }
    *out = res.s;
    *len = res.len;
    return 0;
}

int tokenizer_token_bytes(const tokenizer *t, int32_t id, char **out, size_t *len) {
    assert(t && out && len);
    if (!t->dec_bytelevel_only) return tokenizer_decode(t, &id, 1, false, out, len);
    *out = NULL;
    *len = 0;
    size_t tl = 0;
    const char *tok = decode_token(t, id, false, &tl);
    strbuf res = {0};
    if ((tok && bytelevel_token_bytes(&res, tok, tl)) || strbuf_reserve(&res, 0)) {
        strbuf_free(&res);
        return TOKENIZER_ERR_NOMEM;
    }
    *out = res.s;
    *len = res.len;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Incremental decoding                                                     */

/* Two strategies. ByteLevel decoders (and none) are a concatenation of per
 * token bytes followed by one lossy UTF-8 conversion, so the stream keeps
 * only the bytes of an unfinished character. Any other decoder chain is
 * re-run over the ids since the start, emitting the new text except a
 * trailing run of U+FFFD (which may still turn into a character). */
struct tokenizer_stream {
    const tokenizer *t; /* borrowed */
    bool skip_special;
    bool bytewise;
    strbuf pending; /* bytewise: bytes of an incomplete character */
    int32_t *ids;   /* generic: all ids so far */
    size_t n_ids, cap;
    size_t emitted; /* generic: bytes of decode(ids) already emitted */
};

int tokenizer_stream_create(const tokenizer *t, bool skip_special, tokenizer_stream **out) {
    assert(t && out);
    tokenizer_stream *s = calloc(1, sizeof *s);
    *out = NULL;
    if (!s) return TOKENIZER_ERR_NOMEM;
    s->t = t;
    s->skip_special = skip_special;
    s->bytewise = t->dec_bytelevel_only;
    *out = s;
    return 0;
}

void tokenizer_stream_destroy(tokenizer_stream *s) {
    if (!s) return;
    strbuf_free(&s->pending);
    free(s->ids);
    free(s);
}

static size_t trailing_fffd(const char *p, size_t n) {
    size_t k = 0;
    while (n - k >= 3 && !memcmp(p + n - k - 3, "\xEF\xBF\xBD", 3)) k += 3;
    return k;
}

static int stream_generic(tokenizer_stream *s, bool final, char **out, size_t *len) {
    char *full;
    size_t n;
    int rc = tokenizer_decode(s->t, s->ids, s->n_ids, s->skip_special, &full, &n);
    if (rc) return rc;
    size_t end = final ? n : n - trailing_fffd(full, n);
    strbuf res = {0};
    if (end > s->emitted) {
        rc = strbuf_add(&res, full + s->emitted, end - s->emitted) ? TOKENIZER_ERR_NOMEM : 0;
        s->emitted = end;
    } else
        rc = strbuf_reserve(&res, 0) ? TOKENIZER_ERR_NOMEM : 0;
    free(full);
    if (rc) {
        strbuf_free(&res);
        return rc;
    }
    *out = res.s;
    *len = res.len;
    return 0;
}

/* The whole characters of the pending bytes into *out (with keep_tail, an
 * unfinished one stays pending; without, it becomes U+FFFD). */
static int stream_bytes(tokenizer_stream *s, bool keep_tail, char **out, size_t *len) {
    strbuf res = {0};
    size_t tail = 0;
    if (tok__utf8_lossy_add(&res, s->pending.s ? s->pending.s : "", s->pending.len, keep_tail, &tail) ||
        strbuf_reserve(&res, 0)) {
        strbuf_free(&res);
        return TOKENIZER_ERR_NOMEM;
    }
    strbuf_drop(&s->pending, s->pending.len - tail);
    *out = res.s;
    *len = res.len;
    return 0;
}

int tokenizer_stream_step(tokenizer_stream *s, int32_t id, char **out, size_t *len) {
    *out = NULL;
    *len = 0;
    if (!s->bytewise) {
        int32_t *p = s->n_ids < s->cap ? s->ids : tok__grow(s->ids, &s->cap, sizeof *p, 64);
        if (!p) return TOKENIZER_ERR_NOMEM;
        s->ids = p;
        s->ids[s->n_ids++] = id;
        return stream_generic(s, false, out, len);
    }
    size_t tl;
    const char *tok = decode_token(s->t, id, s->skip_special, &tl);
    if (tok && bytelevel_token_bytes(&s->pending, tok, tl)) return TOKENIZER_ERR_NOMEM;
    return stream_bytes(s, true, out, len);
}

int tokenizer_stream_flush(tokenizer_stream *s, char **out, size_t *len) {
    *out = NULL;
    *len = 0;
    if (!s->bytewise) {
        int rc = stream_generic(s, true, out, len);
        s->n_ids = 0;
        s->emitted = 0;
        return rc;
    }
    return stream_bytes(s, false, out, len);
}
