/* A tokenizer's vocabulary as a prefix trie of its token bytes, and the mask
 * of the tokens a matcher allows next: a depth-first walk of the trie that
 * advances the matcher's state one byte per edge and prunes a subtree as soon
 * as no stack accepts its byte (so a mask costs the allowed prefixes, not the
 * vocabulary). Masks of recent states are cached in the matcher: inside a
 * JSON string or number the state repeats token after token. */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "grammar/grammar_internal.h"

static atomic_ullong next_serial = 1; /* grammar_vocab serials */

static _Thread_local const char *tl_bytes; /* cmp_tok's vocabulary */
static _Thread_local const size_t *tl_off;

static int cmp_tok(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    size_t lx = tl_off[x + 1] - tl_off[x], ly = tl_off[y + 1] - tl_off[y];
    int c = memcmp(tl_bytes + tl_off[x], tl_bytes + tl_off[y], lx < ly ? lx : ly);
    if (c) return c;
    if (lx != ly) return lx < ly ? -1 : 1;
    return x - y;
}

/* Builds the trie of the usable tokens sorted by bytes: a node per distinct
 * prefix. Breadth-first numbering keeps each node's children contiguous. */
static int build_trie(grammar_vocab *v, int32_t *ids, int m) {
    size_t cap = 1;
    for (int i = 0; i < m; i++) cap += v->tok_off[ids[i] + 1] - v->tok_off[ids[i]];
    /* first pass: a node for each (token, depth) not shared with the previous token */
    uint32_t *parent = malloc(cap * sizeof(uint32_t)), *depth = malloc(cap * sizeof(uint32_t));
    uint8_t *byte = malloc(cap);
    int32_t *end_node = malloc(((size_t)m + 1) * sizeof(int32_t));
    uint32_t *path = malloc(((size_t)v->max_len + 1) * sizeof(uint32_t));
    /* rank ranges per node (creation numbering): subtree [lo, sub_end), own tokens [lo, tok_end) */
    uint32_t *lo = malloc(cap * sizeof(uint32_t)), *tok_end = malloc(cap * sizeof(uint32_t)), *sub_end = malloc(cap * sizeof(uint32_t));
    if (!parent || !depth || !byte || !end_node || !path || !lo || !tok_end || !sub_end) goto nomem;
    size_t nn = 1;
    parent[0] = 0, depth[0] = 0, byte[0] = 0, path[0] = 0;
    lo[0] = 0, tok_end[0] = 0, sub_end[0] = (uint32_t)m;
    const char *prev = NULL;
    size_t prev_len = 0;
    for (int i = 0; i < m; i++) {
        const char *s = v->bytes + v->tok_off[ids[i]];
        size_t len = v->tok_off[ids[i] + 1] - v->tok_off[ids[i]], common = 0;
        while (prev && common < len && common < prev_len && s[common] == prev[common]) common++;
        for (size_t d = common; d < len; d++) {
            parent[nn] = path[d], depth[nn] = (uint32_t)d + 1, byte[nn] = (uint8_t)s[d];
            lo[nn] = tok_end[nn] = (uint32_t)i; /* tokens come in byte order: the first one through a node opens it */
            path[d + 1] = (uint32_t)nn++;
        }
        for (size_t d = 1; d <= len; d++) sub_end[path[d]] = (uint32_t)i + 1;
        tok_end[path[len]] = (uint32_t)i + 1; /* a node's own tokens sort before its subtree's longer ones */
        end_node[i] = (int32_t)path[len];
        prev = s, prev_len = len;
    }
    /* breadth-first renumbering: sort nodes by (depth, parent's new number, byte) */
    uint32_t *order = malloc(nn * sizeof(uint32_t)), *newid = malloc(nn * sizeof(uint32_t));
    if (!order || !newid) {
        free(order), free(newid);
        goto nomem;
    }
    size_t head = 0, tail = 1;
    order[0] = 0, newid[0] = 0;
    /* nodes were made in depth-first, byte-sorted order: a node's children
     * follow it in increasing byte order, so one scan per level finds them */
    uint32_t *first_child = malloc(nn * sizeof(uint32_t)), *next_sib = malloc(nn * sizeof(uint32_t)), *last = malloc(nn * sizeof(uint32_t));
    if (!first_child || !next_sib || !last) {
        free(order), free(newid), free(first_child), free(next_sib), free(last);
        goto nomem;
    }
    for (size_t k = 0; k < nn; k++) first_child[k] = next_sib[k] = last[k] = UINT32_MAX;
    for (size_t k = 1; k < nn; k++) {
        uint32_t p = parent[k];
        if (first_child[p] == UINT32_MAX) first_child[p] = (uint32_t)k;
        else next_sib[last[p]] = (uint32_t)k;
        last[p] = (uint32_t)k;
    }
    v->node_byte = malloc(nn);
    v->child_off = malloc((nn + 1) * sizeof(uint32_t));
    v->node_lo = malloc(nn * sizeof(uint32_t));
    v->node_tok_end = malloc(nn * sizeof(uint32_t));
    v->sub_end = malloc(nn * sizeof(uint32_t));
    bool ok = v->node_byte && v->child_off && v->node_lo && v->node_tok_end && v->sub_end;
    while (ok && head < tail) {
        uint32_t u = order[head];
        v->child_off[head] = (uint32_t)tail;
        v->node_byte[head] = byte[u];
        v->node_lo[head] = lo[u], v->node_tok_end[head] = tok_end[u], v->sub_end[head] = sub_end[u];
        for (uint32_t c = first_child[u]; c != UINT32_MAX; c = next_sib[c]) newid[c] = (uint32_t)tail, order[tail++] = c;
        head++;
    }
    if (ok) {
        v->child_off[nn] = (uint32_t)tail;
        v->n_nodes = (int)nn;
    }
    free(order), free(newid), free(first_child), free(next_sib), free(last);
    free(parent), free(depth), free(byte), free(end_node), free(path), free(lo), free(tok_end), free(sub_end);
    return ok ? 0 : -1;
nomem:
    free(parent), free(depth), free(byte), free(end_node), free(path), free(lo), free(tok_end), free(sub_end);
    return -1;
}

int grammar_vocab_create(int n, const char *const *bytes, const size_t *lens, const bool *special,
                         const int32_t *eos, int n_eos, grammar_vocab **out, char *err, size_t errlen) {
    *out = NULL;
    if (n < 1 || n_eos < 0) return err_set(err, errlen, GRAMMAR_ERR_INVALID, "grammar vocabulary: %d tokens", n);
    grammar_vocab *v = calloc(1, sizeof(*v));
    if (!v) goto nomem;
    v->n = n;
    size_t total = 0;
    for (int i = 0; i < n; i++) total += bytes && bytes[i] ? lens[i] : 0;
    v->bytes = malloc(total + 1);
    v->tok_off = malloc(((size_t)n + 1) * sizeof(size_t));
    v->usable = calloc((size_t)n, 1);
    v->eos = malloc(((size_t)n_eos + 1) * sizeof(int32_t));
    int32_t *ids = malloc((size_t)n * sizeof(int32_t));
    if (!v->bytes || !v->tok_off || !v->usable || !v->eos || !ids) {
        free(ids);
        goto nomem;
    }
    size_t at = 0;
    int m = 0;
    for (int i = 0; i < n; i++) {
        v->tok_off[i] = at;
        size_t len = bytes && bytes[i] ? lens[i] : 0;
        if (len) memcpy(v->bytes + at, bytes[i], len);
        at += len;
        if ((int)len > v->max_len) v->max_len = (int)len;
    }
    v->tok_off[n] = at;
    for (int k = 0; k < n_eos; k++)
        if (eos[k] >= 0 && eos[k] < n) v->eos[v->n_eos++] = eos[k];
    for (int i = 0; i < n; i++) {
        bool is_eos = false;
        for (int k = 0; k < v->n_eos; k++) is_eos |= v->eos[k] == i;
        if (v->tok_off[i + 1] > v->tok_off[i] && !(special && special[i]) && !is_eos) v->usable[i] = 1, ids[m++] = i;
    }
    tl_bytes = v->bytes, tl_off = v->tok_off;
    qsort(ids, (size_t)m, sizeof(int32_t), cmp_tok);
    int rc = build_trie(v, ids, m);
    v->rank_id = ids; /* sorted by bytes: rank -> id */
    v->n_ranked = m;
    v->serial = atomic_fetch_add(&next_serial, 1);
    if (rc) goto nomem;
    *out = v;
    return GRAMMAR_OK;
nomem:
    grammar_vocab_destroy(v);
    return err_set(err, errlen, GRAMMAR_ERR_NOMEM, "grammar vocabulary: out of memory");
}

void grammar_vocab_destroy(grammar_vocab *v) {
    if (!v) return;
    free(v->bytes), free(v->tok_off), free(v->usable), free(v->eos);
    free(v->rank_id), free(v->node_byte), free(v->child_off), free(v->node_lo), free(v->node_tok_end), free(v->sub_end);
    free(v);
}

int grammar_vocab_size(const grammar_vocab *v) { return v->n; }
size_t grammar_vocab_mask_words(const grammar_vocab *v) { return ((size_t)v->n + 31) / 32; }

bool grammar_vocab_is_eos(const grammar_vocab *v, int32_t id) {
    for (int k = 0; k < v->n_eos; k++)
        if (v->eos[k] == id) return true;
    return false;
}

const char *grammar_vocab_token(const grammar_vocab *v, int32_t id, size_t *len) {
    *len = 0;
    if (id < 0 || id >= v->n) return NULL;
    *len = v->tok_off[id + 1] - v->tok_off[id];
    return v->bytes + v->tok_off[id];
}

bool grammar_matcher_accept_token(grammar_matcher *m, const grammar_vocab *v, int32_t id) {
    if (id < 0 || id >= v->n) return false;
    if (grammar_vocab_is_eos(v, id)) return grammar_matcher_can_end(m);
    if (!v->usable[id]) return false;
    return grammar_matcher_accept_bytes(m, v->bytes + v->tok_off[id], v->tok_off[id + 1] - v->tok_off[id]);
}

/* ---- the mask ---- */

/* The matcher's scratch state for trie depth d (made on first use). */
gstate *grammar__level(grammar_matcher *m, int d) {
    if (d >= m->n_levels) {
        int n = d + 16;
        gstate *l = realloc(m->levels, (size_t)n * sizeof(gstate));
        if (!l) return NULL;
        memset(l + m->n_levels, 0, (size_t)(n - m->n_levels) * sizeof(gstate));
        m->levels = l;
        m->n_levels = n;
    }
    return &m->levels[d];
}

/* Marks the tokens under trie node u (reached with state s at depth d). */
static int walk(grammar_matcher *m, const grammar_vocab *v, uint32_t u, const gstate *s, int d, uint32_t *mask) {
    uint8_t first[32] = {0};
    grammar__first_bytes(m->g, s, first);
    for (uint32_t c = v->child_off[u]; c < v->child_off[u + 1]; c++) {
        uint8_t b = v->node_byte[c];
        if (!((first[b >> 3] >> (b & 7)) & 1)) continue;
        gstate *nx = grammar__level(m, d + 1);
        if (!nx || grammar__advance(m->g, s, b, nx, m->buf)) return -1;
        if (nx->n == 0) continue;
        for (uint32_t k = v->node_lo[c]; k < v->node_tok_end[c]; k++) {
            int32_t id = v->rank_id[k];
            mask[id >> 5] |= 1u << (id & 31);
        }
        if (v->child_off[c + 1] > v->child_off[c] && walk(m, v, c, nx, d + 1, mask)) return -1;
    }
    return 0;
}

/* The current state serialized (the cache key) into *key (heap). */
static uint32_t *state_key(const gstate *s, size_t *len) {
    size_t n = 1 + (size_t)s->n + s->n_data;
    uint32_t *k = malloc(n * sizeof(uint32_t));
    if (!k) return NULL;
    size_t at = 0;
    k[at++] = (uint32_t)s->n;
    for (int i = 0; i < s->n; i++) {
        k[at++] = s->len[i];
        if (s->len[i]) memcpy(k + at, s->data + s->off[i], s->len[i] * sizeof(uint32_t));
        at += s->len[i];
    }
    *len = n;
    return k;
}

int grammar_matcher_mask_reference(grammar_matcher *m, const grammar_vocab *v, uint32_t *mask) {
    memset(mask, 0, grammar_vocab_mask_words(v) * sizeof(uint32_t));
    if (!grammar__level(m, v->max_len + 1) || walk(m, v, 0, &m->cur, 0, mask)) return -1;
    if (grammar__state_can_end(&m->cur))
        for (int k = 0; k < v->n_eos; k++) mask[v->eos[k] >> 5] |= 1u << (v->eos[k] & 31);
    int count = 0;
    for (size_t i = 0; i < grammar_vocab_mask_words(v); i++) count += __builtin_popcount(mask[i]);
    return count;
}

int grammar_matcher_mask(grammar_matcher *m, const grammar_vocab *v, uint32_t *mask) {
    size_t words = grammar_vocab_mask_words(v), klen;
    const size_t n_cache = sizeof(m->cache) / sizeof(m->cache[0]);
    if (m->cache_vocab != v) { /* masks over another vocabulary: drop them */
        for (size_t i = 0; i < n_cache; i++) {
            free(m->cache[i].key), free(m->cache[i].mask);
            m->cache[i] = (struct mask_entry){0};
        }
        m->cache_vocab = v;
    }
    uint32_t *key = state_key(&m->cur, &klen);
    if (!key) return -1;
    struct mask_entry *slot = &m->cache[0];
    for (size_t i = 0; i < n_cache; i++) {
        struct mask_entry *e = &m->cache[i];
        if (e->key && e->key_len == klen && !memcmp(e->key, key, klen * sizeof(uint32_t))) {
            memcpy(mask, e->mask, words * sizeof(uint32_t));
            e->used = ++m->tick;
            free(key);
            return e->count;
        }
        if (e->used < slot->used) slot = e;
    }
    if (!grammar__level(m, v->max_len + 1)) { /* every depth now: walk holds pointers into levels */
        free(key);
        return -1;
    }
    int fast = grammar__mask_fast(m, v, mask);
    if (fast == 0) {
        memset(mask, 0, words * sizeof(uint32_t));
        fast = walk(m, v, 0, &m->cur, 0, mask) ? -1 : 1;
    }
    if (fast < 0) {
        free(key);
        return -1;
    }
    if (grammar__state_can_end(&m->cur))
        for (int k = 0; k < v->n_eos; k++) mask[v->eos[k] >> 5] |= 1u << (v->eos[k] & 31);
    int count = 0;
    for (size_t i = 0; i < words; i++) count += __builtin_popcount(mask[i]);
    if (!slot->mask && !(slot->mask = malloc(words * sizeof(uint32_t)))) {
        free(key);
        return count; /* no room to cache it: the mask itself is fine */
    }
    free(slot->key);
    slot->key = key;
    slot->key_len = klen;
    memcpy(slot->mask, mask, words * sizeof(uint32_t));
    slot->count = count;
    slot->used = ++m->tick;
    return count;
}
