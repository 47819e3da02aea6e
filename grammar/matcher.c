/* The matcher: a set of pushdown stacks over the compiled grammar (Earley's
 * predictions, kept as explicit stacks as llama.cpp does). Accepting a byte
 * advances every stack whose top class holds it, pops finished elements and
 * expands rule references at the new tops (every alternative), deduplicating
 * stacks. The set is bounded (GRAMMAR_MAX_STACKS stacks, GRAMMAR_MAX_DEPTH
 * entries each, a work budget per byte): past a bound a stack is dropped,
 * which only narrows what is allowed, never lets a byte outside the grammar. */
#include <stdlib.h>
#include <string.h>

#include "grammar/grammar_internal.h"


void grammar__state_free(gstate *s) {
    free(s->data);
    free(s->off);
    free(s->len);
    free(s->hash);
    *s = (gstate){0};
}

static void state_clear(gstate *s) {
    s->n = 0;
    s->n_data = 0;
    s->work = 0;
    s->overflow = false;
    s->max_rec = 0;
    s->max_len = 0;
    s->n_bottom = 0;
    s->min_len = UINT32_MAX;
}

static uint32_t stack_hash(const uint32_t *st, uint32_t len) {
    uint32_t h = GRAMMAR_HASH_INIT ^ len;
    for (uint32_t i = 0; i < len; i++) h = grammar__hash_step(h, st[i]);
    return h;
}

/* Adds stack st (len entries) unless present. Returns 0, or -1 out of memory. */
static int state_add(gstate *s, const uint32_t *st, uint32_t len) {
    uint32_t h = stack_hash(st, len);
    for (int i = 0; i < s->n; i++)
        if (s->hash[i] == h && s->len[i] == len && (!len || !memcmp(s->data + s->off[i], st, len * sizeof(uint32_t))))
            return 0;
    if (s->n >= GRAMMAR_MAX_STACKS) {
        s->overflow = true;
        return 0;
    }
    if (s->n == s->cap) {
        int cap = s->cap ? s->cap * 2 : 8;
        uint32_t *o = realloc(s->off, (size_t)cap * 4), *l = o ? realloc(s->len, (size_t)cap * 4) : NULL;
        if (o) s->off = o;
        if (l) s->len = l;
        uint32_t *hh = l ? realloc(s->hash, (size_t)cap * 4) : NULL;
        if (!hh) return -1;
        s->hash = hh;
        s->cap = cap;
    }
    if (s->n_data + len > s->cap_data) {
        size_t cap = s->cap_data ? s->cap_data : 64;
        while (cap < s->n_data + len) cap *= 2;
        uint32_t *d = realloc(s->data, cap * 4);
        if (!d) return -1;
        s->data = d;
        s->cap_data = cap;
    }
    if (len) memcpy(s->data + s->n_data, st, len * sizeof(uint32_t)); /* st may be NULL when len is 0 */
    s->off[s->n] = (uint32_t)s->n_data;
    s->len[s->n] = len;
    s->hash[s->n] = h;
    s->n++;
    s->n_data += len;
    return 0;
}

/* Adds to out every stack that buf[0..len) becomes once the reference at its
 * top is expanded (recursively, every alternative; an empty alternative pops
 * to what follows). Leaves buf[0..len) as it found it. */
static int expand(const grammar *g, gstate *out, uint32_t *buf, uint32_t len, int rec) {
    if (++out->work > GRAMMAR_MAX_WORK || rec > GRAMMAR_MAX_REC) {
        out->overflow = true;
        return 0;
    }
    if (rec > out->max_rec) out->max_rec = rec;
    if (len > out->max_len) out->max_len = len;
    if (len < out->min_len) out->min_len = len;
    if (len == 0) {
        out->n_bottom++;
        return state_add(out, buf, 0);
    }
    uint32_t p = buf[len - 1], e = g->elems[p];
    if (GE_TYPE(e) == GE_BYTES) return state_add(out, buf, len);
    uint32_t r = GE_VAL(e);
    bool cont = GE_TYPE(g->elems[p + 1]) != GE_END; /* a continuation after the reference */
    int rc = 0;
    for (uint32_t a = g->alt_off[r]; a < g->alt_off[r + 1] && !rc; a++) {
        uint32_t base = len - 1, s = g->alt_start[a];
        if (cont) buf[base++] = p + 1;
        if (GE_TYPE(g->elems[s]) == GE_END) {
            rc = expand(g, out, buf, base, rec + 1);
        } else if (base >= GRAMMAR_MAX_DEPTH) {
            out->overflow = true;
        } else {
            buf[base] = s;
            rc = expand(g, out, buf, base + 1, rec + 1);
        }
    }
    buf[len - 1] = p;
    return rc;
}

int grammar__advance(const grammar *g, const gstate *in, uint8_t c, gstate *out, uint32_t *buf) {
    state_clear(out);
    for (int i = 0; i < in->n; i++) {
        uint32_t len = in->len[i];
        if (len == 0) continue;
        const uint32_t *st = in->data + in->off[i];
        uint32_t p = st[len - 1];
        if (!grammar__class_has(g, GE_VAL(g->elems[p]), c)) continue;
        memcpy(buf, st, (len - 1) * sizeof(uint32_t));
        uint32_t base = len - 1;
        if (GE_TYPE(g->elems[p + 1]) != GE_END) buf[base++] = p + 1;
        if (expand(g, out, buf, base, 0)) return -1;
    }
    return 0;
}

void grammar__first_bytes(const grammar *g, const gstate *s, uint8_t bits[32]) {
    uint32_t last = UINT32_MAX;
    for (int i = 0; i < s->n; i++) {
        if (s->len[i] == 0) continue;
        uint32_t c = GE_VAL(g->elems[s->data[s->off[i] + s->len[i] - 1]]);
        if (c == last) continue;
        last = c;
        const uint8_t *cb = g->classes[c];
        for (int k = 0; k < 32; k++) bits[k] |= cb[k];
    }
}

bool grammar__state_can_end(const gstate *s) {
    for (int i = 0; i < s->n; i++)
        if (s->len[i] == 0) return true;
    return false;
}

grammar_matcher *grammar_matcher_create(grammar *g) {
    grammar_matcher *m = calloc(1, sizeof(*m));
    if (!m) return NULL;
    m->g = grammar_retain(g);
    m->buf = malloc((GRAMMAR_MAX_DEPTH + 2) * sizeof(uint32_t));
    if (!m->buf) goto fail;
    m->buf[0] = 0; /* element 0: REF root */
    if (expand(g, &m->cur, m->buf, 1, 0)) goto fail;
    m->overflowed = m->cur.overflow;
    return m;
fail:
    grammar_matcher_destroy(m);
    return NULL;
}

int grammar__expand(const grammar *g, const uint32_t *st, uint32_t len, gstate *out, uint32_t *buf) {
    state_clear(out);
    if (len) memcpy(buf, st, len * sizeof(uint32_t));
    return expand(g, out, buf, len, 0);
}

int grammar__state_copy(gstate *dst, const gstate *src) {
    state_clear(dst);
    for (int i = 0; i < src->n; i++)
        if (state_add(dst, src->len[i] ? src->data + src->off[i] : NULL, src->len[i])) return -1; /* data NULL: all empty */
    dst->overflow = src->overflow;
    return 0;
}

grammar_matcher *grammar_matcher_clone(const grammar_matcher *m) {
    grammar_matcher *c = calloc(1, sizeof(*c));
    if (!c) return NULL;
    c->g = grammar_retain(m->g);
    c->buf = malloc((GRAMMAR_MAX_DEPTH + 2) * sizeof(uint32_t));
    c->overflowed = m->overflowed;
    if (!c->buf || grammar__state_copy(&c->cur, &m->cur)) {
        grammar_matcher_destroy(c);
        return NULL;
    }
    return c;
}

void grammar_matcher_destroy(grammar_matcher *m) {
    if (!m) return;
    grammar__state_free(&m->cur);
    grammar__state_free(&m->a);
    grammar__state_free(&m->b);
    for (int i = 0; i < m->n_levels; i++) grammar__state_free(&m->levels[i]);
    free(m->levels);
    for (size_t i = 0; i < sizeof(m->cache) / sizeof(m->cache[0]); i++) {
        free(m->cache[i].key);
        free(m->cache[i].mask);
    }
    free(m->buf);
    grammar_release(m->g);
    free(m);
}

bool grammar_matcher_accept_bytes(grammar_matcher *m, const void *bytes, size_t n) {
    const uint8_t *p = bytes;
    const gstate *in = &m->cur;
    gstate *out = &m->a;
    bool ovf = false;
    for (size_t i = 0; i < n; i++) {
        if (grammar__advance(m->g, in, p[i], out, m->buf)) return false;
        ovf |= out->overflow;
        if (out->n == 0) {
            m->overflowed |= ovf; /* rejected, maybe only for a limit: say so */
            return false;
        }
        in = out;
        out = out == &m->a ? &m->b : &m->a;
    }
    if (n == 0) return true;
    gstate t = m->cur; /* the last state written becomes the current one */
    gstate *last = (gstate *)in;
    m->cur = *last;
    *last = t;
    m->overflowed |= ovf;
    return true;
}

bool grammar_matcher_can_end(const grammar_matcher *m) { return grammar__state_can_end(&m->cur); }

bool grammar_matcher_ended(const grammar_matcher *m) {
    for (int i = 0; i < m->cur.n; i++)
        if (m->cur.len[i] != 0) return false;
    return true;
}

/* ended needs an empty stack: one whose bytes completed a sentence of root,
 * so the last byte is one a sentence ends with (the stacks cut at a limit
 * change which stacks survive, not how a surviving one emptied). */
bool grammar_matcher_may_end_after(const grammar_matcher *m, const void *bytes, size_t n) {
    if (n == 0) return true;
    uint8_t c = ((const uint8_t *)bytes)[n - 1];
    return (m->g->end_bytes[c >> 3] >> (c & 7)) & 1;
}

bool grammar_matcher_overflowed(const grammar_matcher *m) { return m->overflowed; }
