/* The BPE model: loading "model" (vocabulary, merges, unk/byte_fallback,
 * subword prefix and suffix) and BPE::tokenize of one pre-token (merge_word
 * and Word::merge_all: a heap of candidate merges by rank), with a word
 * cache shared by all threads in front of it. */
#include "tokenizer/tokenizer_internal.h"

#include "base/utf8.h"

#include <stdio.h>

static inline uint64_t pair_key(int32_t a, int32_t b) {
    return ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
}

static inline const merge_entry *mergemap_get(const mergemap *m, uint64_t key) {
    size_t i = tok__hash_u64(key) & m->mask;
    for (;;) {
        const merge_entry *e = &m->e[i];
        if (e->key == key) return e;
        if (e->key == UINT64_MAX) return NULL;
        i = (i + 1) & m->mask;
    }
}

/* ------------------------------------------------------------------------ */
/* Loading                                                                  */

static int json_id(const cJSON *v, int32_t *id) {
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble >= TK_MAX_ID ||
        v->valuedouble != (double)(int32_t)v->valuedouble)
        return -1;
    *id = (int32_t)v->valuedouble;
    return 0;
}

static int opt_string(loadctx *c, const cJSON *m, const char *key, char **out, size_t *len) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(m, key);
    *out = NULL;
    *len = 0;
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsString(v)) return tok__fail(c, TOKENIZER_ERR_PARSE, "model.%s must be a string", key);
    *len = strlen(v->valuestring);
    if (*len == 0) return 0; /* an empty prefix/suffix is the same as none */
    *out = tok__dup_n(v->valuestring, *len);
    return *out ? 0 : tok__fail(c, TOKENIZER_ERR_NOMEM, "out of memory");
}

static int add_merge(loadctx *c, tokenizer *t, const char *a, size_t la, const char *b, size_t lb,
                     uint32_t rank, strbuf *tmp) {
    int32_t ia = tok__strmap_get(&t->vocab, t->tok, t->tok_len, a, la);
    int32_t ib = tok__strmap_get(&t->vocab, t->tok, t->tok_len, b, lb);
    if (ia < 0 || ib < 0)
        return tok__fail(c, TOKENIZER_ERR_PARSE, "merge token '%.*s' is not in the vocabulary",
                         (int)(ia < 0 ? la : lb), ia < 0 ? a : b);
    size_t skip = t->cont_prefix_len;
    if (lb < skip) return tok__fail(c, TOKENIZER_ERR_PARSE, "merge token shorter than the subword prefix");
    tmp->len = 0;
    if (strbuf_reserve(tmp, la + lb - skip) || strbuf_add(tmp, a, la) || strbuf_add(tmp, b + skip, lb - skip))
        return tok__fail(c, TOKENIZER_ERR_NOMEM, "out of memory");
    int32_t id = tok__strmap_get(&t->vocab, t->tok, t->tok_len, tmp->s, tmp->len);
    if (id < 0)
        return tok__fail(c, TOKENIZER_ERR_PARSE, "merged token '%.*s' is not in the vocabulary",
                         (int)tmp->len, tmp->s);
    uint64_t key = pair_key(ia, ib);
    size_t i = tok__hash_u64(key) & t->merges.mask;
    while (t->merges.e[i].key != UINT64_MAX && t->merges.e[i].key != key)
        i = (i + 1) & t->merges.mask;
    t->merges.e[i] = (merge_entry){key, rank, id}; /* a later duplicate wins, as in HF */
    return 0;
}

int tok__model_scan(loadctx *c, tokenizer *t, const cJSON *m, size_t *model_size) {
    if (!cJSON_IsObject(m)) return tok__fail(c, TOKENIZER_ERR_PARSE, "missing model");
    const char *type = tok__jstr(m, "type");
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(m, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(m, "merges");
    if (type && strcmp(type, "BPE"))
        return tok__fail(c, TOKENIZER_ERR_UNSUPPORTED, "unsupported model type '%s' (only BPE)", type);
    if (!cJSON_IsObject(vocab) || !cJSON_IsArray(merges))
        return tok__fail(c, TOKENIZER_ERR_PARSE, "BPE model needs a vocab object and a merges array");
    const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(m, "dropout");
    if (cJSON_IsNumber(dropout) && dropout->valuedouble > 0 && dropout->valuedouble < 1)
        return tok__fail(c, TOKENIZER_ERR_UNSUPPORTED, "BPE dropout is not supported");
    t->byte_fallback = tok__jbool(m, "byte_fallback", false);
    t->fuse_unk = tok__jbool(m, "fuse_unk", false);
    t->ignore_merges = tok__jbool(m, "ignore_merges", false);
    if (opt_string(c, m, "continuing_subword_prefix", &t->cont_prefix, &t->cont_prefix_len) ||
        opt_string(c, m, "end_of_word_suffix", &t->end_suffix, &t->end_suffix_len))
        return c->status;

    size_t n = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, vocab) {
        int32_t id;
        if (json_id(e, &id)) return tok__fail(c, TOKENIZER_ERR_PARSE, "vocab id of '%s' is not a valid id", e->string);
        if ((size_t)id + 1 > t->n_ids) t->n_ids = (size_t)id + 1;
        n++;
    }
    *model_size = n;
    return 0;
}

/* The vocabulary strings per id, the string -> id map, unk and <0xXX>. */
static int fill_vocab(loadctx *c, tokenizer *t, const cJSON *m) {
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(m, "vocab");
    size_t n = (size_t)cJSON_GetArraySize(vocab);
    if (tok__strmap_init(&t->vocab, n)) return tok__fail(c, TOKENIZER_ERR_NOMEM, "out of memory");
    const cJSON *e;
    cJSON_ArrayForEach(e, vocab) {
        int32_t id = (int32_t)e->valuedouble;
        size_t len = strlen(e->string);
        free(t->tok[id]); /* two strings for one id: keep the last */
        t->tok[id] = tok__dup_n(e->string, len);
        if (!t->tok[id]) return tok__fail(c, TOKENIZER_ERR_NOMEM, "out of memory");
        t->tok_len[id] = (uint32_t)len;
    }
    /* Rebuild the map from the final strings so that every slot points at a
     * live string (duplicate ids above may have replaced one). */
    cJSON_ArrayForEach(e, vocab) {
        int32_t id = (int32_t)e->valuedouble;
        size_t len = strlen(e->string);
        if (t->tok_len[id] == len && memcmp(t->tok[id], e->string, len) == 0)
            tok__strmap_put(&t->vocab, t->tok, t->tok_len, id);
    }
    int32_t unk = -1;
    const char *unk_s = tok__jstr(m, "unk_token");
    if (unk_s) {
        unk = tok__strmap_get(&t->vocab, t->tok, t->tok_len, unk_s, strlen(unk_s));
        if (unk < 0) return tok__fail(c, TOKENIZER_ERR_PARSE, "unk_token '%s' is not in the vocabulary", unk_s);
    }
    t->unk_id = unk;
    for (int b = 0; b < 256; b++) {
        char s[8];
        snprintf(s, sizeof s, "<0x%02X>", b);
        t->byte_ids[b] = tok__strmap_get(&t->vocab, t->tok, t->tok_len, s, 6);
    }
    return 0;
}

/* The merges, "a b" strings or [a, b] pairs, ranked in file order. */
static int fill_merges(loadctx *c, tokenizer *t, const cJSON *merges) {
    size_t nm = (size_t)cJSON_GetArraySize(merges), cap = 16;
    while (cap < nm * 2 + 2) cap *= 2;
    t->merges.e = malloc(cap * sizeof *t->merges.e);
    if (!t->merges.e) return tok__fail(c, TOKENIZER_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < cap; i++) t->merges.e[i].key = UINT64_MAX;
    t->merges.mask = cap - 1;
    strbuf tmp = {0};
    uint32_t rank = 0;
    int rc = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, merges) {
        if (cJSON_IsString(e)) {
            const char *s = e->valuestring, *sp = strchr(s, ' ');
            if (!sp || strchr(sp + 1, ' ')) {
                rc = tok__fail(c, TOKENIZER_ERR_PARSE, "merge %u is not two tokens separated by one space", rank + 1);
                break;
            }
            rc = add_merge(c, t, s, (size_t)(sp - s), sp + 1, strlen(sp + 1), rank, &tmp);
        } else if (cJSON_IsArray(e) && cJSON_GetArraySize(e) == 2 &&
                   cJSON_IsString(cJSON_GetArrayItem(e, 0)) && cJSON_IsString(cJSON_GetArrayItem(e, 1))) {
            const char *a = cJSON_GetArrayItem(e, 0)->valuestring, *b = cJSON_GetArrayItem(e, 1)->valuestring;
            rc = add_merge(c, t, a, strlen(a), b, strlen(b), rank, &tmp);
        } else
            rc = tok__fail(c, TOKENIZER_ERR_PARSE, "merge %u is neither \"a b\" nor [a, b]", rank + 1);
        if (rc) break;
        rank++;
    }
    strbuf_free(&tmp);
    return rc;
}

int tok__model_fill(loadctx *c, tokenizer *t, const cJSON *m) {
    if (fill_vocab(c, t, m) || fill_merges(c, t, cJSON_GetObjectItemCaseSensitive(m, "merges")))
        return c->status;
    if (!t->cont_prefix && !t->end_suffix) {
        t->cp_id = malloc(0x10000 * sizeof *t->cp_id);
        if (!t->cp_id) return tok__fail(c, TOKENIZER_ERR_NOMEM, "out of memory");
        for (size_t i = 0; i < 0x10000; i++) {
            char s[4];
            int k = utf8_encode((int32_t)i, s); /* 0 for the surrogates: no token */
            t->cp_id[i] = k ? tok__strmap_get(&t->vocab, t->tok, t->tok_len, s, (size_t)k) : -1;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Merging                                                                  */

static void heap_push(encoder *e, heap_item it) {
    /* capacity reserved by the caller */
    size_t i = e->heap_n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        heap_item q = e->heap[p];
        if (q.rank < it.rank || (q.rank == it.rank && q.pos <= it.pos)) break;
        e->heap[i] = q;
        i = p;
    }
    e->heap[i] = it;
}

static heap_item heap_pop(encoder *e) {
    heap_item top = e->heap[0], last = e->heap[--e->heap_n];
    size_t i = 0, n = e->heap_n;
    for (;;) {
        size_t l = 2 * i + 1, best = i;
        heap_item b = last;
        if (l < n && (e->heap[l].rank < b.rank || (e->heap[l].rank == b.rank && e->heap[l].pos < b.pos)))
            best = l, b = e->heap[l];
        if (l + 1 < n &&
            (e->heap[l + 1].rank < b.rank || (e->heap[l + 1].rank == b.rank && e->heap[l + 1].pos < b.pos)))
            best = l + 1, b = e->heap[l + 1];
        if (best == i) break;
        e->heap[i] = b;
        i = best;
    }
    if (n) e->heap[i] = last;
    return top;
}

static int heap_reserve(encoder *e, size_t extra) {
    if (e->heap_n + extra <= e->heap_cap) return 0;
    size_t cap = e->heap_cap ? e->heap_cap : 64;
    while (cap < e->heap_n + extra) cap *= 2;
    heap_item *h = realloc(e->heap, cap * sizeof *h);
    if (!h) return TOKENIZER_ERR_NOMEM;
    e->heap = h;
    e->heap_cap = cap;
    return 0;
}

/* The id of the character s[pos..pos+n) (with the subword prefix unless
 * first, the suffix if last), or -1; -2 out of memory. Leaves the string
 * looked up in e->nx.tmp unless the single-code-point fast path answered. */
static int32_t lookup_char(encoder *e, const char *s, size_t n, size_t pos, bool first, bool last) {
    const tokenizer *t = e->t;
    if (t->cp_id && n <= 3) {
        int32_t cp;
        if (utf8_decode((const uint8_t *)s + pos, n, &cp) == n && cp < 0x10000) return t->cp_id[cp];
    }
    strbuf *tmp = &e->nx.tmp;
    tmp->len = 0;
    if (!first && t->cont_prefix && strbuf_add(tmp, t->cont_prefix, t->cont_prefix_len)) return -2;
    if (strbuf_add(tmp, s + pos, n)) return -2;
    if (last && t->end_suffix && strbuf_add(tmp, t->end_suffix, t->end_suffix_len)) return -2;
    return tok__strmap_get(&t->vocab, t->tok, t->tok_len, tmp->s, tmp->len);
}

/* byte_fallback for the unknown character s[i..i+k): its <0xXX> tokens
 * appended at e->sym[*ns] when every byte has one (*done then true). The
 * bytes are those of the (prefixed/suffixed) string lookup_char tried, as
 * HF. */
static int byte_fallback(encoder *e, const char *s, size_t n, size_t i, size_t k, size_t *ns,
                         bool *done) {
    const tokenizer *t = e->t;
    strbuf *tmp = &e->nx.tmp;
    bool all = true;
    *done = false;
    for (size_t b = 0; b < tmp->len; b++)
        if (t->byte_ids[(uint8_t)tmp->s[b]] < 0) all = false;
    if (t->cp_id) { /* fast path did not fill tmp */
        tmp->len = 0;
        if (strbuf_add(tmp, s + i, k)) return TOKENIZER_ERR_NOMEM;
        all = true;
        for (size_t b = 0; b < k; b++)
            if (t->byte_ids[(uint8_t)s[i + b]] < 0) all = false;
    }
    if (!all) return 0;
    if (*ns + tmp->len > e->sym_cap) {
        size_t cap = *ns + tmp->len + n;
        symbol *v = realloc(e->sym, cap * sizeof *v);
        if (!v) return TOKENIZER_ERR_NOMEM;
        e->sym = v;
        e->sym_cap = cap;
    }
    for (size_t b = 0; b < tmp->len; b++) e->sym[(*ns)++].id = t->byte_ids[(uint8_t)tmp->s[b]];
    *done = true;
    return 0;
}

/* merge_word: the symbols of s[0..n), one per character (unknown ones by
 * byte_fallback or unk, fused if fuse_unk), into e->sym; their count in *ns. */
static int word_symbols(encoder *e, const char *s, size_t n, size_t *ns_out) {
    const tokenizer *t = e->t;
    size_t ns = 0, i = 0;
    int32_t unk = -1; /* pending unk id; fused while fuse_unk */
    while (i < n) {
        size_t k = tok__utf8_char_len(s, n, i);
        bool first = i == 0, last = i + k == n;
        int32_t id = lookup_char(e, s, k, i, first, last);
        if (id == -2) return TOKENIZER_ERR_NOMEM;
        if (id >= 0) {
            if (unk >= 0) e->sym[ns++].id = unk, unk = -1;
            e->sym[ns++].id = id;
        } else {
            bool done = false;
            if (t->byte_fallback && byte_fallback(e, s, n, i, k, &ns, &done)) return TOKENIZER_ERR_NOMEM;
            if (!done && t->unk_id >= 0) {
                if (unk >= 0 && !t->fuse_unk) e->sym[ns++].id = unk;
                unk = t->unk_id;
            }
        }
        i += k;
    }
    if (unk >= 0) e->sym[ns++].id = unk;
    *ns_out = ns;
    return 0;
}

/* Word::merge_all over e->sym[0..ns): the lowest-ranked pair first, the
 * leftmost among equals. */
static int merge_all(encoder *e, size_t ns) {
    const tokenizer *t = e->t;
    e->heap_n = 0;
    if (heap_reserve(e, ns)) return TOKENIZER_ERR_NOMEM;
    for (size_t j = 0; j + 1 < ns; j++) {
        const merge_entry *me = mergemap_get(&t->merges, pair_key(e->sym[j].id, e->sym[j + 1].id));
        if (me) heap_push(e, (heap_item){me->rank, (uint32_t)j, me->id});
    }
    while (e->heap_n) {
        heap_item top = heap_pop(e);
        symbol *cur = &e->sym[top.pos];
        if (cur->gone || cur->next < 0) continue;
        symbol *right = &e->sym[cur->next];
        const merge_entry *me = mergemap_get(&t->merges, pair_key(cur->id, right->id));
        if (!me || me->id != top.id) continue;
        cur->id = top.id;
        right->gone = true;
        cur->next = right->next;
        if (right->next >= 0) e->sym[right->next].prev = (int32_t)top.pos;
        if (heap_reserve(e, 2)) return TOKENIZER_ERR_NOMEM;
        if (cur->prev >= 0) {
            me = mergemap_get(&t->merges, pair_key(e->sym[cur->prev].id, cur->id));
            if (me) heap_push(e, (heap_item){me->rank, (uint32_t)cur->prev, me->id});
        }
        if (cur->next >= 0) {
            me = mergemap_get(&t->merges, pair_key(cur->id, e->sym[cur->next].id));
            if (me) heap_push(e, (heap_item){me->rank, top.pos, me->id});
        }
    }
    return 0;
}

static int bpe_merge(encoder *e, const char *s, size_t n) {
    if (n > e->sym_cap) {
        symbol *v = realloc(e->sym, n * sizeof *v);
        if (!v) return TOKENIZER_ERR_NOMEM;
        e->sym = v;
        e->sym_cap = n;
    }
    size_t ns;
    int rc = word_symbols(e, s, n, &ns);
    if (rc || !ns) return rc;
    for (size_t j = 0; j < ns; j++) {
        e->sym[j].prev = (int32_t)j - 1;
        e->sym[j].next = j + 1 < ns ? (int32_t)j + 1 : -1;
        e->sym[j].gone = false;
    }
    if (ns > 1 && (rc = merge_all(e, ns))) return rc;
    for (size_t j = 0; j < ns; j++)
        if (!e->sym[j].gone && tok__ids_add(e, e->sym[j].id)) return TOKENIZER_ERR_NOMEM;
    return 0;
}

/* BPE::tokenize of one pre-token: merge_word + Word::merge_all, through
 * the word cache for short words. */
int tok__bpe_word(encoder *e, const char *s, size_t n) {
    const tokenizer *t = e->t;
    if (t->ignore_merges) {
        int32_t id = tok__strmap_get(&t->vocab, t->tok, t->tok_len, s, n);
        if (id >= 0) return tok__ids_add(e, id);
    }
    if (n > TK_CACHE_WORD) return bpe_merge(e, s, n);
    tokenizer *mt = (tokenizer *)t; /* the cache is internally synchronized */
    size_t h = tok__hash_bytes(s, n) & (TK_CACHE_SLOTS - 1);
    struct cache_slot *slot = &mt->cache[h], copy;
    pthread_mutex_t *lock = &mt->cache_lock[h & (TK_CACHE_STRIPES - 1)];
    pthread_mutex_lock(lock);
    copy = *slot;
    pthread_mutex_unlock(lock);
    if (copy.wlen == n && memcmp(copy.word, s, n) == 0) {
        for (int i = 0; i < copy.n; i++)
            if (tok__ids_add(e, copy.ids[i])) return TOKENIZER_ERR_NOMEM;
        return 0;
    }
    size_t start = e->n_ids;
    int rc = bpe_merge(e, s, n);
    if (rc || e->n_ids - start > TK_CACHE_IDS) return rc;
    copy.wlen = (uint8_t)n;
    copy.n = (uint8_t)(e->n_ids - start);
    memcpy(copy.word, s, n);
    if (copy.n) memcpy(copy.ids, e->ids + start, copy.n * sizeof *copy.ids);
    pthread_mutex_lock(lock);
    *slot = copy;
    pthread_mutex_unlock(lock);
    return 0;
}
