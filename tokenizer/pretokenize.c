/* Pre-tokenizers: loading the "pre_tokenizer" component (Split, ByteLevel,
 * Digits, Metaspace, WhitespaceSplit and Sequences of them) and running it
 * over the pieces of one normalized segment, as HF's PreTokenizedString
 * does. Pieces are ranges of the encoder's arena; a stage that rewrites text
 * (Metaspace, ByteLevel) appends the new text to the arena. */
#include "tokenizer/tokenizer_internal.h"

#include "base/utf8.h"

static int parse_behavior(loadctx *c, const char *b) {
    if (!b) return tok__fail(c, TOKENIZER_ERR_PARSE, "missing behavior");
    if (!strcmp(b, "Removed")) return SPLIT_REMOVED;
    if (!strcmp(b, "Isolated")) return SPLIT_ISOLATED;
    if (!strcmp(b, "MergedWithPrevious")) return SPLIT_MERGED_PREV;
    if (!strcmp(b, "MergedWithNext")) return SPLIT_MERGED_NEXT;
    if (!strcmp(b, "Contiguous")) return SPLIT_CONTIGUOUS;
    return tok__fail(c, TOKENIZER_ERR_UNSUPPORTED, "unsupported split behavior '%s'", b);
}

/* ByteLevel with use_regex: GPT-2's pattern. */
static int load_gpt2_pattern(loadctx *c, component *k) {
    static const char gpt2[] = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+"
                               "|\\s+(?!\\S)|\\s+";
    cJSON *p = cJSON_CreateObject();
    if (!p || !cJSON_AddStringToObject(p, "Regex", gpt2)) {
        cJSON_Delete(p);
        return tok__fail(c, TOKENIZER_ERR_NOMEM, "out of memory");
    }
    int rc = tok__pattern_load(c, p, &k->pat);
    cJSON_Delete(p);
    return rc;
}

int tok__load_pretokenizer(loadctx *c, const cJSON *j, component *k, int depth) {
    const char *type;
    int rc = tok__load_type(c, j, k, depth, tok__load_pretokenizer, "pre_tokenizer", "pretokenizers", &type);
    if (rc <= 0) return rc;
    if (!strcmp(type, "Split")) {
        k->type = PRE_SPLIT;
        if (tok__pattern_load(c, cJSON_GetObjectItemCaseSensitive(j, "pattern"), &k->pat)) return c->status;
        int b = parse_behavior(c, tok__jstr(j, "behavior"));
        if (b < 0) return b;
        k->behavior = b;
        k->invert = tok__jbool(j, "invert", false);
    } else if (!strcmp(type, "ByteLevel")) {
        k->type = PRE_BYTELEVEL;
        k->flag_a = tok__jbool(j, "add_prefix_space", true);
        k->flag_b = tok__jbool(j, "use_regex", true);
        if (k->flag_b) return load_gpt2_pattern(c, k);
    } else if (!strcmp(type, "Digits")) {
        k->type = PRE_DIGITS;
        k->flag_a = tok__jbool(j, "individual_digits", false);
    } else if (!strcmp(type, "Metaspace")) {
        k->type = PRE_METASPACE;
        return tok__load_replacement(c, j, k);
    } else if (!strcmp(type, "WhitespaceSplit")) {
        k->type = PRE_WHITESPACE_SPLIT;
    } else
        return tok__fail(c, TOKENIZER_ERR_UNSUPPORTED, "unsupported pre_tokenizer type '%s'", type);
    return 0;
}

int tok__pieces_add(piecelist *l, size_t off, size_t len, bool first) {
    if (!len) return 0; /* PreTokenizedString::split drops empty pieces */
    piece *v = l->n < l->cap ? l->v : tok__grow(l->v, &l->cap, sizeof *v, 64);
    if (!v) return TOKENIZER_ERR_NOMEM;
    l->v = v;
    l->v[l->n++] = (piece){off, len, first};
    return 0;
}

/* NormalizedString::split: the matches (spans) of one piece, turned into
 * (range, is_match) runs covering it, inverted if asked, merged per
 * behavior; non-empty kept ranges become pieces. */
static int split_piece(piecelist *out, const piece *p, const spanlist *m, int behavior,
                       bool invert) {
    size_t n = p->len;
    /* iterate the (range, is_match) runs lazily */
    size_t prev = 0, mi = 0;
    size_t cur_s = 0, cur_e = 0; /* pending output range (Contiguous / MergedWith*) */
    bool have_cur = false, prev_match = false;
    /* For MergedWithNext we need to attach a match to the following range:
     * keep the match start pending. */
    size_t pend_s = 0;
    bool have_pend = false;
    for (;;) {
        size_t rs, re;
        bool is_match;
        if (mi < m->n && prev < m->v[mi].s) {
            rs = prev, re = m->v[mi].s, is_match = false;
            prev = re;
        } else if (mi < m->n) {
            rs = m->v[mi].s, re = m->v[mi].e, is_match = true;
            prev = re;
            mi++;
        } else if (prev < n) {
            rs = prev, re = n, is_match = false;
            prev = n;
        } else
            break;
        if (invert) is_match = !is_match;
        int rc = 0;
        switch (behavior) {
        case SPLIT_ISOLATED:
            rc = tok__pieces_add(out, p->off + rs, re - rs, p->first && rs == 0);
            break;
        case SPLIT_REMOVED:
            if (!is_match) rc = tok__pieces_add(out, p->off + rs, re - rs, p->first && rs == 0);
            break;
        case SPLIT_CONTIGUOUS:
        case SPLIT_MERGED_PREV:
            /* Contiguous joins a run to the previous one of the same kind,
             * MergedWithPrevious a match to the non-match before it */
            if (behavior == SPLIT_CONTIGUOUS ? have_cur && is_match == prev_match
                                             : is_match && !prev_match && have_cur)
                cur_e = re;
            else {
                if (have_cur) rc = tok__pieces_add(out, p->off + cur_s, cur_e - cur_s, p->first && cur_s == 0);
                cur_s = rs, cur_e = re, have_cur = true;
            }
            prev_match = is_match;
            break;
        case SPLIT_MERGED_NEXT:
            /* Processed right to left in HF: a match joins the range after
             * it unless that range is itself a match. Left to right: a match
             * stays pending until the next range; a following non-match
             * takes it, a following match flushes it alone. */
            if (have_pend) {
                if (is_match) {
                    rc = tok__pieces_add(out, p->off + pend_s, rs - pend_s, p->first && pend_s == 0);
                    pend_s = rs; /* this match is pending now */
                } else {
                    rc = tok__pieces_add(out, p->off + pend_s, re - pend_s, p->first && pend_s == 0);
                    have_pend = false;
                }
            } else if (is_match) {
                pend_s = rs;
                have_pend = true;
            } else
                rc = tok__pieces_add(out, p->off + rs, re - rs, p->first && rs == 0);
            break;
        }
        if (rc) return rc;
    }
    if (behavior == SPLIT_MERGED_NEXT && have_pend)
        return tok__pieces_add(out, p->off + pend_s, n - pend_s, p->first && pend_s == 0);
    if ((behavior == SPLIT_CONTIGUOUS || behavior == SPLIT_MERGED_PREV) && have_cur)
        return tok__pieces_add(out, p->off + cur_s, cur_e - cur_s, p->first && cur_s == 0);
    return 0;
}

/* Matches of single characters satisfying pred, one span per character. */
static int char_spans(const char *s, size_t n, bool (*pred)(int32_t), int32_t only, spanlist *out) {
    out->n = 0;
    size_t i = 0;
    while (i < n) {
        int32_t cp = 0;
        size_t k = utf8_decode((const uint8_t *)s + i, n - i, &cp);
        if (!k) k = 1;
        if (pred ? pred(cp) : cp == only)
            if (tok__spans_add(out, i, i + k)) return TOKENIZER_ERR_NOMEM;
        i += k;
    }
    return 0;
}

/* Metaspace: ' ' becomes the replacement, which is prepended per scheme;
 * then a split before each replacement (MergedWithNext) when asked. */
static int pre_metaspace(encoder *e, const component *k, const piece *p, piecelist *out) {
    size_t start = e->arena.len;
    bool prepend = (k->prepend_scheme == PREPEND_ALWAYS ||
                    (k->prepend_scheme == PREPEND_FIRST && p->first));
    /* replace ' ' by the replacement, then maybe prepend it */
    strbuf *tmp = &e->nx.tmp;
    tmp->len = 0;
    int rc = 0;
    for (size_t j = 0; j < p->len && !rc; j++) {
        const char *s = e->arena.s + p->off + j;
        rc = *s == ' ' ? strbuf_add(tmp, k->content, k->content_len) : strbuf_addc(tmp, *s);
    }
    if (rc) return TOKENIZER_ERR_NOMEM;
    if (prepend && !(tmp->len >= k->content_len && !memcmp(tmp->s, k->content, k->content_len)))
        rc = strbuf_add(&e->arena, k->content, k->content_len);
    if (rc || strbuf_add(&e->arena, tmp->s, tmp->len)) return TOKENIZER_ERR_NOMEM;
    piece q = {start, e->arena.len - start, p->first};
    if (!k->flag_a) return tok__pieces_add(out, q.off, q.len, q.first);
    rc = char_spans(e->arena.s + q.off, q.len, NULL, k->replacement_cp, &e->m2);
    if (!rc) rc = split_piece(out, &q, &e->m2, SPLIT_MERGED_NEXT, false);
    return rc;
}

/* The bytes of r mapped to the byte-level alphabet, appended to the arena;
 * r is moved there. The code points are below 512: two bytes at most,
 * written here rather than through utf8_encode (the hot path of encode). */
static int bytelevel_map(encoder *e, piece *r) {
    size_t start = e->arena.len;
    if (strbuf_reserve(&e->arena, r->len * 2)) return TOKENIZER_ERR_NOMEM;
    for (size_t b = 0; b < r->len; b++) {
        int32_t cp = tok__bl_byte_to_cp[(uint8_t)e->arena.s[r->off + b]];
        char *d = e->arena.s + e->arena.len;
        if (cp < 0x80) {
            d[0] = (char)cp;
            e->arena.len += 1;
        } else {
            d[0] = (char)(0xC0 | (cp >> 6));
            d[1] = (char)(0x80 | (cp & 0x3F));
            e->arena.len += 2;
        }
    }
    e->arena.s[e->arena.len] = 0;
    r->off = start;
    r->len = e->arena.len - start;
    return 0;
}

/* ByteLevel: a prefix space if asked, GPT-2's split if asked, then every
 * new piece mapped to the byte-level alphabet. */
static int pre_bytelevel(encoder *e, const component *k, const piece *p, piecelist *out) {
    piece q = *p;
    int rc;
    if (k->flag_a && e->arena.s[p->off] != ' ') {
        size_t start = e->arena.len;
        /* reserved first: the add below copies from the arena itself */
        if (strbuf_reserve(&e->arena, p->len + 1)) return TOKENIZER_ERR_NOMEM;
        strbuf_addc(&e->arena, ' ');
        strbuf_add(&e->arena, e->arena.s + p->off, p->len);
        q = (piece){start, p->len + 1, p->first};
    }
    size_t first_sub = out->n;
    if (k->flag_b) {
        rc = tok__pattern_find(&k->pat, e->arena.s + q.off, q.len, e->nx.md, &e->m2);
        if (!rc) rc = split_piece(out, &q, &e->m2, SPLIT_ISOLATED, false);
    } else
        rc = tok__pieces_add(out, q.off, q.len, q.first);
    if (rc) return rc;
    for (size_t j = first_sub; j < out->n; j++)
        if ((rc = bytelevel_map(e, &out->v[j]))) return rc;
    return 0;
}

/* Applies one (non-Sequence) pre-tokenizer to every piece of e->a, writing
 * e->b, then swaps. */
static int pre_one(encoder *e, const component *k) {
    piecelist *in = &e->a, *out = &e->b;
    out->n = 0;
    spanlist *m = &e->m2;
    for (size_t i = 0; i < in->n; i++) {
        piece p = in->v[i];
        const char *s = e->arena.s + p.off;
        int rc = 0;
        switch (k->type) {
        case PRE_SPLIT:
            rc = tok__pattern_find(&k->pat, s, p.len, e->nx.md, m);
            if (!rc) rc = split_piece(out, &p, m, k->behavior, k->invert);
            break;
        case PRE_DIGITS:
            rc = char_spans(s, p.len, tok__cp_is_numeric, 0, m);
            if (!rc) rc = split_piece(out, &p, m, k->flag_a ? SPLIT_ISOLATED : SPLIT_CONTIGUOUS, false);
            break;
        case PRE_WHITESPACE_SPLIT:
            rc = char_spans(s, p.len, tok__cp_is_whitespace, 0, m);
            if (!rc) rc = split_piece(out, &p, m, SPLIT_REMOVED, false);
            break;
        case PRE_METASPACE: rc = pre_metaspace(e, k, &p, out); break;
        case PRE_BYTELEVEL: rc = pre_bytelevel(e, k, &p, out); break;
        }
        if (rc) return rc;
    }
    piecelist t = *in;
    *in = *out;
    *out = t;
    return 0;
}

int tok__pre_apply(encoder *e, const component *k, int depth) {
    if (k->type == PRE_SEQ) {
        for (size_t i = 0; i < k->n_sub; i++) {
            int rc = tok__pre_apply(e, &k->sub[i], depth + 1);
            if (rc) return rc;
        }
        return 0;
    }
    return pre_one(e, k);
}
