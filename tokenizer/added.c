/* Added tokens: loading "added_tokens" (ids as AddedVocabulary::add_tokens
 * gives them), their normalized patterns, the two leftmost-longest matchers
 * (raw text, and normalized text for normalized=true tokens), and
 * AddedVocabulary::find_matches, which splits text at them. */
#include "tokenizer/tokenizer_internal.h"

#include "base/utf8.h"

static int32_t trie_child(const added_matcher *m, int32_t node, uint8_t byte) {
    uint64_t key = ((uint64_t)node << 8) | byte;
    size_t i = tok__hash_u64(key) & m->mask;
    for (;;) {
        if (m->edge[i].key == key) return m->edge[i].child;
        if (m->edge[i].key == UINT64_MAX) return -1;
        i = (i + 1) & m->mask;
    }
}

static int matcher_build(added_matcher *m, const added_token *added, size_t n, bool normalized) {
    size_t bytes = 0;
    for (size_t i = 0; i < n; i++)
        if (added[i].normalized == normalized) bytes += added[i].pattern_len;
    size_t cap = 16;
    while (cap < bytes * 2 + 2) cap *= 2;
    m->edge = malloc(cap * sizeof *m->edge);
    m->term = malloc((bytes + 1) * sizeof *m->term);
    if (!m->edge || !m->term) return -1;
    for (size_t i = 0; i < cap; i++) m->edge[i].key = UINT64_MAX;
    m->mask = cap - 1;
    m->n_nodes = 1;
    m->term[0] = -1;
    for (size_t i = 0; i < n; i++) {
        const added_token *a = &added[i];
        if (a->normalized != normalized || !a->pattern_len) continue;
        int32_t node = 0;
        for (size_t j = 0; j < a->pattern_len; j++) {
            uint8_t byte = (uint8_t)a->pattern[j];
            int32_t next = trie_child(m, node, byte);
            if (next < 0) {
                next = (int32_t)m->n_nodes++;
                m->term[next] = -1;
                uint64_t key = ((uint64_t)node << 8) | byte;
                size_t k = tok__hash_u64(key) & m->mask;
                while (m->edge[k].key != UINT64_MAX) k = (k + 1) & m->mask;
                m->edge[k] = (trie_edge){key, next};
            }
            node = next;
        }
        if (m->term[node] < 0) m->term[node] = (int32_t)i; /* the first of equal patterns wins */
        m->first_byte[(uint8_t)a->pattern[0]] = true;
        m->any = true;
    }
    return 0;
}

void tok__matcher_free(added_matcher *m) {
    free(m->edge);
    free(m->term);
}

static int segs_add(seglist *l, int32_t added, size_t s, size_t e) {
    segment *v = l->n < l->cap ? l->v : tok__grow(l->v, &l->cap, sizeof *v, 16);
    if (!v) return TOKENIZER_ERR_NOMEM;
    l->v = v;
    l->v[l->n++] = (segment){added, s, e};
    return 0;
}

/* The added token of m that is longest at s[i..n), or -1. */
static int32_t longest_at(const added_matcher *m, const char *s, size_t n, size_t i) {
    int32_t hit = -1, node = 0;
    for (size_t j = i; j < n; j++) {
        node = trie_child(m, node, (uint8_t)s[j]);
        if (node < 0) break;
        if (m->term[node] >= 0) hit = m->term[node];
    }
    return hit;
}

/* single_word: the match s[st..stop) must not touch an alphanumeric character. */
static bool single_word_ok(const char *s, size_t n, size_t st, size_t stop) {
    bool start_space = st == 0 || !tok__cp_is_alnum(tok__utf8_last_cp(s, st, NULL));
    int32_t cp = 0;
    bool stop_space = stop == n || !utf8_decode((const uint8_t *)s + stop, n - stop, &cp) ||
                      !tok__cp_is_alnum(cp);
    return start_space && stop_space;
}

int tok__added_split(const tokenizer *t, const added_matcher *m, const char *s, size_t n,
                     seglist *out) {
    size_t start_offset = 0, i = 0;
    if (!m->any) i = n;
    while (i < n) {
        while (i < n && !m->first_byte[(uint8_t)s[i]]) i++; /* the hot loop: kept tight */
        if (i == n) break;
        int32_t hit = longest_at(m, s, n, i);
        if (hit < 0) {
            i++;
            continue;
        }
        const added_token *a = &t->added[hit];
        size_t st = i, stop = i + a->pattern_len;
        i = stop;
        if (a->single_word && !single_word_ok(s, n, st, stop)) continue;
        if (a->lstrip) {
            size_t ns = st;
            while (ns > 0) {
                size_t cs;
                int32_t cp = tok__utf8_last_cp(s, ns, &cs);
                if (!tok__cp_is_whitespace(cp)) break;
                ns = cs;
            }
            st = ns > start_offset ? ns : start_offset;
        }
        if (a->rstrip) {
            while (stop < n) {
                int32_t cp = 0;
                size_t k = utf8_decode((const uint8_t *)s + stop, n - stop, &cp);
                if (!k || !tok__cp_is_whitespace(cp)) break;
                stop += k;
            }
        }
        if (st > start_offset && segs_add(out, -1, start_offset, st)) return TOKENIZER_ERR_NOMEM;
        if (segs_add(out, hit, st, stop)) return TOKENIZER_ERR_NOMEM;
        start_offset = stop;
    }
    if (start_offset < n && segs_add(out, -1, start_offset, n)) return TOKENIZER_ERR_NOMEM;
    return 0;
}

/* The id of a new added token: HF's AddedVocabulary::add_tokens gives one
 * whose content is in the model vocabulary that id, else the next id after
 * the model vocabulary and the added tokens so far (the "id" of the JSON is
 * only a hint there, and agrees in well-formed files). */
static int64_t added_id(const tokenizer *t, const char *content, size_t len, int32_t existing,
                        int64_t max_added, size_t model_size) {
    int32_t id = tok__strmap_get(&t->vocab, t->tok, t->tok_len, content, len);
    if (existing >= 0) id = t->added[existing].id;
    if (id >= 0) return id;
    int64_t next = (max_added >= (int64_t)model_size || model_size == 0) ? max_added + 1
                                                                        : (int64_t)model_size;
    if (next < (int64_t)model_size) next = (int64_t)model_size;
    return next;
}

int tok__added_load(loadctx *c, tokenizer *t, const cJSON *arr, size_t model_size) {
    if (!arr || cJSON_IsNull(arr)) return 0;
    if (!cJSON_IsArray(arr)) return tok__fail(c, TOKENIZER_ERR_PARSE, "added_tokens must be an array");
    size_t n = (size_t)cJSON_GetArraySize(arr);
    t->added = calloc(n ? n : 1, sizeof *t->added);
    if (!t->added) return tok__fail(c, TOKENIZER_ERR_NOMEM, "out of memory");
    int64_t max_added = -1;
    const cJSON *e;
    cJSON_ArrayForEach(e, arr) {
        const char *content = tok__jstr(e, "content");
        if (!content) return tok__fail(c, TOKENIZER_ERR_PARSE, "added token without content");
        size_t len = strlen(content);
        if (!len) continue;
        added_token a = {0};
        a.single_word = tok__jbool(e, "single_word", false);
        a.lstrip = tok__jbool(e, "lstrip", false);
        a.rstrip = tok__jbool(e, "rstrip", false);
        a.special = tok__jbool(e, "special", false);
        a.normalized = tok__jbool(e, "normalized", !a.special);
        /* an identical token twice is skipped */
        bool dup = false;
        int32_t existing = -1;
        for (size_t i = 0; i < t->n_added; i++) {
            const added_token *o = &t->added[i];
            if (o->len == len && !memcmp(o->content, content, len)) {
                existing = (int32_t)i;
                dup = o->single_word == a.single_word && o->lstrip == a.lstrip && o->rstrip == a.rstrip &&
                      o->special == a.special && o->normalized == a.normalized;
            }
        }
        if (dup) continue;
        int64_t id = added_id(t, content, len, existing, max_added, model_size);
        if (id >= TK_MAX_ID) return tok__fail(c, TOKENIZER_ERR_PARSE, "too many added tokens");
        if (id > max_added) max_added = id;
        a.id = (int32_t)id;
        a.len = len;
        a.content = tok__dup_n(content, len);
        if (!a.content) return tok__fail(c, TOKENIZER_ERR_NOMEM, "out of memory");
        if (existing >= 0) { /* same content, other flags: the later one replaces it */
            free(t->added[existing].content);
            free(t->added[existing].pattern);
            t->added[existing] = a;
        } else
            t->added[t->n_added++] = a;
    }
    return 0;
}

/* The pattern each token is matched by: its content, through the
 * normalizer when normalized=true. */
static int added_patterns(loadctx *c, tokenizer *t) {
    normctx x = {0};
    x.md = pcre2_match_data_create(1, NULL);
    strbuf s = {0};
    int rc = x.md ? 0 : tok__fail(c, TOKENIZER_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < t->n_added && !rc; i++) {
        added_token *a = &t->added[i];
        t->added_of_id[a->id] = (int32_t)i;
        t->added_str[a->id] = a->content;
        t->added_len[a->id] = (uint32_t)a->len;
        tok__strmap_put(&t->added_map, t->added_str, t->added_len, a->id);
        s.len = 0;
        if (strbuf_add(&s, a->content, a->len)) {
            rc = tok__fail(c, TOKENIZER_ERR_NOMEM, "out of memory");
            break;
        }
        if (a->normalized && t->normalizer) {
            int r = tok__norm_apply(t->normalizer, &s, &x, 0);
            if (r) rc = tok__fail(c, r, "normalizing added token '%s': %s", a->content, tokenizer_status_str(r));
        }
        if (!rc) {
            a->pattern = tok__dup_n(s.s, s.len);
            a->pattern_len = s.len;
            if (!a->pattern) rc = tok__fail(c, TOKENIZER_ERR_NOMEM, "out of memory");
        }
    }
    strbuf_free(&s);
    strbuf_free(&x.tmp);
    free(x.m.v);
    pcre2_match_data_free(x.md);
    return rc;
}

int tok__added_finish(loadctx *c, tokenizer *t) {
    for (size_t i = 0; i < t->n_added; i++)
        if ((size_t)t->added[i].id + 1 > t->n_ids) t->n_ids = (size_t)t->added[i].id + 1;
    t->added_of_id = malloc((t->n_ids ? t->n_ids : 1) * sizeof *t->added_of_id);
    t->added_str = calloc(t->n_ids ? t->n_ids : 1, sizeof *t->added_str);
    t->added_len = calloc(t->n_ids ? t->n_ids : 1, sizeof *t->added_len);
    if (!t->added_of_id || !t->added_str || !t->added_len || tok__strmap_init(&t->added_map, t->n_added))
        return tok__fail(c, TOKENIZER_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < t->n_ids; i++) t->added_of_id[i] = -1;
    if (added_patterns(c, t)) return c->status;
    if (matcher_build(&t->m_raw, t->added, t->n_added, false) ||
        matcher_build(&t->m_norm, t->added, t->n_added, true))
        return tok__fail(c, TOKENIZER_ERR_NOMEM, "out of memory");
    return 0;
}
