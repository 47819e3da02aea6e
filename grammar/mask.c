/* Masks from per-suffix token tables (xgrammar's split, adapted to stacks):
 * for the top TAU entries of a stack (its suffix tau), one walk of the trie
 * from tau alone sorts every token into accepted (whatever lies beneath
 * tau), rejected, or uncertain (tau's bottom frame finishes before the token
 * does, so what lies beneath decides). A mask is then the union of its
 * stacks' accepted sets plus the uncertain tokens checked on the full state.
 * Tables are made on first use and kept in the grammar for its life. A
 * table is keyed by the entries its walk read, often fewer than tau's: the
 * stacks of a counted repetition's copies (an array of at least 64 items)
 * differ deep down, and share the tables of their tops. */
#include <stdlib.h>
#include <string.h>

#include "base/util.h"
#include "grammar/grammar_internal.h"

#define TAU 6 /* entries of a stack's top that key a table: deeper contexts leave fewer tokens uncertain (bench: TAU 3, 4, 6 give 15, 6.6, 3.9 us mean) */
#define TABLES_MAX_BYTES (16 << 20) /* tables per grammar (64 grammars are cached); past it masks walk the trie */

typedef struct table {
    uint32_t key[TAU]; /* tau's top entries that the walk read (klen of them), bottom first */
    uint32_t klen, hash; /* hash: the key's entries top down, so that table_get hashes the keys of
                          * a stack's top 1, 2, .. entries in one pass */
    uint32_t *acc_bits; /* (words) accepted token ids as a bitset, or NULL when */
    int32_t *acc_ids;   /* (n_acc) listed (few accepted) */
    int n_acc;
    uint32_t *unc;      /* (2 * n_unc) uncertain token ranks as ascending [lo, hi) runs */
    int n_unc;
    /* the most any advance of the walk reached: stacks, expansion steps,
     * bottom pops, recursion, stack length; and whether a limit was hit */
    int max_stacks, max_bottom, max_rec;
    long max_work;
    uint32_t max_len; /* over the key's klen entries */
    uint32_t min_len; /* while made: the shortest stack an expansion began from */
    bool unsafe;
    struct table *next; /* hash chain */
} table;

struct mask_tables {
    uint64_t vocab; /* the serial of the one vocabulary the tables are over */
    table **buckets; /* (n_buckets) */
    size_t n_buckets, n, bytes;
    double seconds; /* spent making tables */
};

void grammar__tables_free(grammar *g) {
    struct mask_tables *ts = g->tables;
    if (!ts) return;
    for (size_t i = 0; i < ts->n_buckets; i++)
        for (table *t = ts->buckets[i], *nx; t; t = nx) {
            nx = t->next;
            free(t->acc_bits), free(t->acc_ids), free(t->unc), free(t);
        }
    free(ts->buckets);
    free(ts);
    g->tables = NULL;
}

void grammar_tables_stats(grammar *g, int *n, size_t *bytes, double *seconds) {
    pthread_mutex_lock(&g->lock);
    const struct mask_tables *ts = g->tables;
    *n = ts ? (int)ts->n : 0;
    *bytes = ts ? ts->bytes : 0;
    *seconds = ts ? ts->seconds : 0;
    pthread_mutex_unlock(&g->lock);
}

/* ---- making a table: the trie walked from tau alone ---- */

#define MEMO_STATES 1024 /* distinct states one table's walk interns; past it, it walks without them */
#define MEMO_SLOTS 2048  /* the interning hash, a power of two over MEMO_STATES */
#define T_UNKNOWN (-2)
#define T_DEAD (-1)
#define T_BOTTOM (1 << 30) /* in a transition: tau's bottom frame finished on that byte */

typedef struct {
    grammar_matcher *m;
    const grammar_vocab *v;
    table *t;
    uint32_t *bits; /* (words) accepted */
    u32vec unc;     /* uncertain runs */
    /* the walk's states interned, with their transitions memoized: a string's
     * characters lead back to a handful of states, so most trie nodes cost a
     * lookup instead of an advance */
    gstate *st;          /* (n_st) */
    uint32_t *st_hash;   /* (n_st) */
    int32_t (*next)[256]; /* (n_st) T_UNKNOWN, T_DEAD, or a state id, | T_BOTTOM */
    int32_t *slot;       /* (MEMO_SLOTS) state id + 1, 0 free */
    int n_st;
    bool full;           /* MEMO_STATES reached */
} build;

static int add_run(build *b, uint32_t lo, uint32_t hi) {
    if (lo >= hi) return 0;
    if (b->unc.n && b->unc.v[b->unc.n - 1] == lo) { /* extends the previous run */
        b->unc.v[b->unc.n - 1] = hi;
        return 0;
    }
    return grammar__u32_push(&b->unc, lo) || grammar__u32_push(&b->unc, hi) ? -1 : 0;
}

/* Folds the counters of one advance into t's maxima. */
static void note_advance(table *t, const gstate *nx) {
    if (nx->n > t->max_stacks) t->max_stacks = nx->n;
    if (nx->work > t->max_work) t->max_work = nx->work;
    if (nx->n_bottom > t->max_bottom) t->max_bottom = nx->n_bottom;
    if (nx->max_rec > t->max_rec) t->max_rec = nx->max_rec;
    if (nx->max_len > t->max_len) t->max_len = nx->max_len;
    if (nx->min_len < t->min_len) t->min_len = nx->min_len;
    t->unsafe |= nx->overflow;
}

/* The id of state s among b's (interned now if new): >= 0, -1 out of memory,
 * -2 when MEMO_STATES are taken. */
static int intern(build *b, const gstate *s) {
    uint32_t h = GRAMMAR_HASH_INIT ^ (uint32_t)s->n;
    for (int i = 0; i < s->n; i++) h = grammar__hash_step(h, s->hash[i]);
    for (uint32_t k = h & (MEMO_SLOTS - 1);; k = (k + 1) & (MEMO_SLOTS - 1)) {
        int id = b->slot[k] - 1;
        if (id < 0) break;
        const gstate *o = &b->st[id];
        bool same = b->st_hash[id] == h && o->n == s->n && o->n_data == s->n_data;
        for (int i = 0; same && i < s->n; i++)
            same = o->len[i] == s->len[i] &&
                   (!s->len[i] || !memcmp(o->data + o->off[i], s->data + s->off[i], s->len[i] * sizeof(uint32_t)));
        if (same) return id;
    }
    if (b->n_st == MEMO_STATES) return -2;
    int id = b->n_st;
    b->st[id] = (gstate){0};
    if (grammar__state_copy(&b->st[id], s)) return -1;
    b->st_hash[id] = h;
    for (int c = 0; c < 256; c++) b->next[id][c] = T_UNKNOWN;
    uint32_t k = h & (MEMO_SLOTS - 1);
    while (b->slot[k]) k = (k + 1) & (MEMO_SLOTS - 1);
    b->slot[k] = id + 1;
    b->n_st++;
    return id;
}

/* The transition of state id on byte by (computed on first use). T_DEAD,
 * a state id | T_BOTTOM, -1 out of memory, or -2 when the states ran out. */
static int32_t step(build *b, int id, uint8_t by) {
    int32_t x = b->next[id][by];
    if (x != T_UNKNOWN) return x;
    gstate *nx = grammar__level(b->m, 1); /* scratch: the memoized walk needs no other level */
    if (!nx || grammar__advance(b->m->g, &b->st[id], by, nx, b->m->buf)) return -1;
    note_advance(b->t, nx);
    if (nx->n == 0) return b->next[id][by] = T_DEAD;
    int to = intern(b, nx);
    if (to < 0) return to == -2 ? (b->full = true, -2) : -1;
    return b->next[id][by] = to | (nx->n_bottom ? T_BOTTOM : 0);
}

/* Sorts the tokens of child c (the walk reached it alive; bottom: tau's
 * bottom frame finished on its byte). Returns 1 when c's subtree is to be
 * walked on, else 0, or -1 out of memory. */
static int sort_node(build *b, uint32_t c, bool bottom) {
    const grammar_vocab *v = b->v;
    for (uint32_t k = v->node_lo[c]; k < v->node_tok_end[c]; k++) {
        int32_t id = v->rank_id[k];
        b->bits[id >> 5] |= 1u << (id & 31);
        b->t->n_acc++;
    }
    if (bottom) return add_run(b, v->node_tok_end[c], v->sub_end[c]) ? -1 : 0; /* longer tokens go on beneath tau */
    return v->child_off[c + 1] > v->child_off[c];
}

/* The memoized walk: the tokens under trie node u, reached in state id.
 * 0, -1 out of memory, -2 when the states ran out (the caller walks plainly). */
static int memo_walk(build *b, uint32_t u, int id) {
    const grammar_vocab *v = b->v;
    for (uint32_t c = v->child_off[u]; c < v->child_off[u + 1]; c++) {
        int32_t x = step(b, id, v->node_byte[c]);
        if (x == T_DEAD) continue;
        if (x < 0) return x;
        int go = sort_node(b, c, x & T_BOTTOM);
        if (go < 0) return -1;
        if (go && (go = memo_walk(b, c, x & ~T_BOTTOM))) return go;
    }
    return 0;
}

/* The plain walk: the tokens under trie node u, reached with state s at depth d. */
static int build_walk(build *b, uint32_t u, const gstate *s, int d) {
    const grammar *g = b->m->g;
    const grammar_vocab *v = b->v;
    uint8_t first[32] = {0};
    grammar__first_bytes(g, s, first);
    for (uint32_t c = v->child_off[u]; c < v->child_off[u + 1]; c++) {
        uint8_t by = v->node_byte[c];
        if (!((first[by >> 3] >> (by & 7)) & 1)) continue; /* rejected without any expansion */
        gstate *nx = grammar__level(b->m, d + 1);
        if (!nx || grammar__advance(g, s, by, nx, b->m->buf)) return -1;
        note_advance(b->t, nx);
        if (nx->n == 0) continue;
        int go = sort_node(b, c, nx->n_bottom);
        if (go < 0 || (go && build_walk(b, c, nx, d + 1))) return -1;
    }
    return 0;
}

static void memo_free(build *b) {
    for (int i = 0; i < b->n_st; i++) grammar__state_free(&b->st[i]);
    free(b->st), free(b->st_hash), free(b->next), free(b->slot);
}

/* The table of tau (klen entries), made now, then keyed by the entries its
 * walk read: with min_len the shortest stack an expansion began from, the
 * entries below index min_len - 1 were never read, so the table is that of
 * every stack with the same top (bottom pops read them all). NULL out of memory. */
static table *table_make(grammar_matcher *m, const grammar_vocab *v, const uint32_t *tau, uint32_t klen) {
    size_t words = grammar_vocab_mask_words(v);
    table *t = calloc(1, sizeof(*t));
    build b = {.m = m, .v = v, .t = t, .bits = calloc(words, sizeof(uint32_t))};
    gstate *s0 = grammar__level(m, 0);
    if (!t || !b.bits || !s0) goto fail;
    memcpy(t->key, tau, klen * sizeof(uint32_t));
    t->klen = klen, t->min_len = klen; /* its top is read */
    /* the one-stack state {tau}: a copy of a state holding just it */
    gstate one = {.data = (uint32_t *)tau, .n_data = klen, .off = (uint32_t[]){0}, .len = (uint32_t[]){klen}, .hash = (uint32_t[]){0}, .n = 1};
    if (grammar__state_copy(s0, &one)) goto fail;
    b.st = malloc(MEMO_STATES * sizeof(gstate)), b.st_hash = malloc(MEMO_STATES * sizeof(uint32_t));
    b.next = malloc(MEMO_STATES * sizeof(*b.next)), b.slot = calloc(MEMO_SLOTS, sizeof(int32_t));
    if (!b.st || !b.st_hash || !b.next || !b.slot) goto fail;
    int rc = intern(&b, s0);
    if (rc >= 0) rc = memo_walk(&b, 0, rc);
    if (rc == -2) { /* too many states to memoize: start again, walking plainly */
        *t = (table){.klen = klen, .min_len = klen};
        memcpy(t->key, tau, klen * sizeof(uint32_t));
        memset(b.bits, 0, words * sizeof(uint32_t));
        b.unc.n = 0;
        rc = build_walk(&b, 0, s0, 0);
    }
    memo_free(&b);
    b.st = NULL, b.st_hash = NULL, b.next = NULL, b.slot = NULL, b.n_st = 0;
    if (rc) goto fail;
    if ((size_t)t->n_acc < words) { /* a list is smaller than the bitset */
        if (!(t->acc_ids = malloc(((size_t)t->n_acc + 1) * sizeof(int32_t)))) goto fail;
        int k = 0;
        for (size_t w = 0; w < words; w++)
            for (uint32_t x = b.bits[w]; x; x &= x - 1) t->acc_ids[k++] = (int32_t)(w * 32 + (size_t)__builtin_ctz(x));
        free(b.bits);
    } else {
        t->acc_bits = b.bits;
    }
    b.bits = NULL;
    t->unc = b.unc.v;
    t->n_unc = (int)(b.unc.n / 2);
    uint32_t used = t->min_len == 0 ? klen : t->min_len >= klen ? 1 : klen - t->min_len + 1;
    memmove(t->key, t->key + (klen - used), used * sizeof(uint32_t));
    t->max_len -= klen - used; /* the entries left out lie under every stack the walk made */
    t->klen = used;
    t->hash = GRAMMAR_HASH_INIT;
    for (uint32_t j = 1; j <= used; j++) t->hash = grammar__hash_step(t->hash, t->key[used - j]);
    return t;
fail:
    memo_free(&b);
    free(b.bits), grammar__u32_free(&b.unc);
    if (t) free(t->acc_ids), free(t);
    return NULL;
}

static size_t table_bytes(const table *t, size_t words) {
    return sizeof(*t) + (t->acc_bits ? words * 4 : (size_t)t->n_acc * 4) + (size_t)t->n_unc * 8;
}

/* The table of a stack whose top klen entries are tau (bottom first): one
 * keyed by its top 1, 2, .. klen entries, found, or made from all klen
 * (under g's lock). *t NULL when the tables are over another vocabulary or
 * out of room. 0, or -1 out of memory. */
static int table_get(grammar_matcher *m, const grammar_vocab *v, const uint32_t *tau, uint32_t klen, const table **out) {
    grammar *g = m->g;
    *out = NULL;
    struct mask_tables *ts = g->tables;
    if (!ts) {
        if (!(ts = calloc(1, sizeof(*ts))) || !(ts->buckets = calloc(256, sizeof(table *)))) {
            free(ts);
            return -1;
        }
        ts->n_buckets = 256, ts->vocab = v->serial;
        g->tables = ts;
    }
    if (ts->vocab != v->serial) return 0; /* bound to the first vocabulary (one per engine) */
    uint32_t h = GRAMMAR_HASH_INIT;
    for (uint32_t j = 1; j <= klen; j++) {
        h = grammar__hash_step(h, tau[klen - j]);
        for (table *t = ts->buckets[h & (ts->n_buckets - 1)]; t; t = t->next)
            if (t->hash == h && t->klen == j && !memcmp(t->key, tau + klen - j, j * sizeof(uint32_t))) {
                *out = t;
                return 0;
            }
    }
    size_t words = grammar_vocab_mask_words(v);
    if (ts->bytes + sizeof(table) + words * 4 > TABLES_MAX_BYTES) return 0;
    if (ts->n >= ts->n_buckets) { /* grow to keep chains short */
        size_t nb = ts->n_buckets * 2;
        table **bk = calloc(nb, sizeof(table *));
        if (!bk) return -1;
        for (size_t i = 0; i < ts->n_buckets; i++)
            for (table *t = ts->buckets[i], *nx; t; t = nx) {
                nx = t->next;
                t->next = bk[t->hash & (nb - 1)];
                bk[t->hash & (nb - 1)] = t;
            }
        free(ts->buckets);
        ts->buckets = bk, ts->n_buckets = nb;
    }
    double t0 = util_now();
    table *t = table_make(m, v, tau, klen);
    if (!t) return -1;
    ts->seconds += util_now() - t0;
    t->next = ts->buckets[t->hash & (ts->n_buckets - 1)];
    ts->buckets[t->hash & (ts->n_buckets - 1)] = t;
    ts->n++;
    ts->bytes += table_bytes(t, words);
    *out = t;
    return 0;
}

/* ---- the mask ---- */

static int cmp_run(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* Checks every token of the ascending runs (n_runs [lo, hi) pairs) on the
 * full state, as accepting it would, sharing the states of common prefixes
 * between neighbours: bit set when accepted, cleared when not. */
static int check_runs(grammar_matcher *m, const grammar_vocab *v, const uint32_t *runs, size_t n_runs, uint32_t *mask) {
    const char *prev = NULL;
    size_t prev_len = 0, valid = 0; /* states 0..valid hold prev's first bytes, all live */
    bool prev_dead = false;         /* prev died on its byte valid */
    for (size_t r = 0; r < n_runs; r++)
        for (uint32_t k = runs[2 * r]; k < runs[2 * r + 1]; k++) {
            int32_t id = v->rank_id[k];
            const char *tb = v->bytes + v->tok_off[id];
            size_t tl = v->tok_off[id + 1] - v->tok_off[id], lcp = 0;
            while (prev && lcp < tl && lcp < prev_len && tb[lcp] == prev[lcp]) lcp++;
            prev = tb, prev_len = tl;
            mask[id >> 5] &= ~(1u << (id & 31));
            if (prev_dead && lcp > valid) continue; /* it shares the byte that killed prev */
            size_t d = lcp < valid ? lcp : valid;
            prev_dead = false;
            for (; d < tl; d++) {
                const gstate *s = d ? grammar__level(m, (int)d) : &m->cur;
                gstate *nx = grammar__level(m, (int)d + 1);
                if (!nx || grammar__advance(m->g, s, (uint8_t)tb[d], nx, m->buf)) return -1;
                if (nx->n == 0) {
                    prev_dead = true;
                    break;
                }
            }
            valid = d;
            if (!prev_dead) mask[id >> 5] |= 1u << (id & 31);
        }
    return 0;
}

int grammar__mask_fast(grammar_matcher *m, const grammar_vocab *v, uint32_t *mask) {
    const gstate *cur = &m->cur;
    size_t words = grammar_vocab_mask_words(v);
    const table *ts[GRAMMAR_MAX_STACKS];
    long stacks = 0, work = 0;
    int rc = 0;
    /* each stack's table, and the proof that no limit can be hit: an
     * accepted token's full advance is its tau advance atop the rest c,
     * plus, when tau's bottom pops on the last byte, c's expansion */
    pthread_mutex_lock(&m->g->lock);
    for (int i = 0; i < cur->n && rc == 0; i++) {
        uint32_t len = cur->len[i], k = len < TAU ? len : TAU;
        ts[i] = NULL;
        if (len == 0) continue;
        const uint32_t *st = cur->data + cur->off[i]; /* data may be NULL while every stack is empty */
        if (table_get(m, v, st + len - k, k, &ts[i])) rc = -1;
        else if (!ts[i] || ts[i]->unsafe) rc = 1;
        if (rc) continue;
        k = ts[i]->klen; /* the rest c lies under the table's key, which may be shorter */
        if (grammar__expand(m->g, st, len - k, &m->a, m->buf)) rc = -1;
        else if (m->a.overflow || ts[i]->max_rec + m->a.max_rec > GRAMMAR_MAX_REC ||
                 len - k + ts[i]->max_len > GRAMMAR_MAX_DEPTH)
            rc = 1;
        stacks += rc ? 0 : ts[i]->max_stacks + m->a.n;
        work += rc ? 0 : ts[i]->max_work + ts[i]->max_bottom * m->a.work;
    }
    pthread_mutex_unlock(&m->g->lock); /* tables are immutable once made */
    if (rc) return rc < 0 ? -1 : 0;
    if (stacks > GRAMMAR_MAX_STACKS || work > GRAMMAR_MAX_WORK) return 0;
    /* accepted sets, and the uncertain runs of all stacks, merged */
    memset(mask, 0, words * sizeof(uint32_t));
    u32vec runs = {0};
    size_t n_runs = 0;
    for (int i = 0; i < cur->n; i++) {
        const table *t = ts[i];
        if (!t) continue;
        if (t->acc_bits)
            for (size_t w = 0; w < words; w++) mask[w] |= t->acc_bits[w];
        else
            for (int k = 0; k < t->n_acc; k++) mask[t->acc_ids[k] >> 5] |= 1u << (t->acc_ids[k] & 31);
        for (int k = 0; k < 2 * t->n_unc; k++)
            if (grammar__u32_push(&runs, t->unc[k])) goto nomem;
    }
    n_runs = runs.n / 2;
    if (n_runs > 1) { /* sort by start, then merge overlaps */
        qsort(runs.v, n_runs, 2 * sizeof(uint32_t), cmp_run);
        size_t o = 0;
        for (size_t r = 1; r < n_runs; r++) {
            if (runs.v[2 * r] <= runs.v[2 * o + 1]) {
                if (runs.v[2 * r + 1] > runs.v[2 * o + 1]) runs.v[2 * o + 1] = runs.v[2 * r + 1];
            } else {
                o++;
                runs.v[2 * o] = runs.v[2 * r], runs.v[2 * o + 1] = runs.v[2 * r + 1];
            }
        }
        n_runs = o + 1;
    }
    if (check_runs(m, v, runs.v, n_runs, mask)) goto nomem;
    grammar__u32_free(&runs);
    return 1;
nomem:
    grammar__u32_free(&runs);
    return -1;
}
