/* What the grammar files share: the compiled grammar (rules of element
 * sequences over byte classes) and the growable vectors the compilers use.
 * gbnf.c compiles text to it, matcher.c runs it, vocab.c masks with it;
 * json_schema.c and regex.c emit GBNF text. */
#ifndef GRAMMAR_GRAMMAR_INTERNAL_H
#define GRAMMAR_GRAMMAR_INTERNAL_H

#include <stdatomic.h>
#include <stdint.h>

#include "base/buf.h"
#include "grammar/grammar.h"

/* An element is one uint32: the type in the top 2 bits, a value below.
 * END closes an alternative; BYTES matches one byte of class v; REF expands
 * rule v. Every alternative is a run of elements closed by END. */
#define GE_END 0u
#define GE_BYTES 1u
#define GE_REF 2u
#define GE_TYPE(e) ((e) >> 30)
#define GE_VAL(e) ((e) & 0x3fffffffu)
#define GE_MAKE(t, v) (((uint32_t)(t) << 30) | (uint32_t)(v))

struct grammar {
    atomic_int refs;
    uint32_t *elems;       /* (n_elems) element 0 is REF root, element 1 END: the start */
    int n_elems;
    uint32_t *alt_start;   /* (alt_off[n_rules]) positions in elems of each rule's alternatives */
    uint32_t *alt_off;     /* (n_rules + 1) rule r's alternatives are alt_start[alt_off[r] .. alt_off[r+1]) */
    int n_rules;
    uint8_t (*classes)[32]; /* (n_classes, 256 bits) byte classes; class b < 256 is the single byte b */
    int n_classes;
};

/* Whether byte b is in class c of g. */
static inline int grammar__class_has(const grammar *g, uint32_t c, uint8_t b) {
    return (g->classes[c][b >> 3] >> (b & 7)) & 1;
}

/* A growable uint32 vector. */
typedef struct {
    uint32_t *v;
    size_t n, cap;
} u32vec;

/* Appends s (n bytes of UTF-8) as a GBNF literal "...". Returns 0, or -1 out of memory (regex.c). */
int grammar__gbnf_literal(strbuf *b, const char *s, size_t n);

/* Replaces control characters in a message by '?': messages quote the
 * input, and must stay one line. */
void grammar__scrub(char *msg);

int grammar__u32_push(u32vec *a, uint32_t x); /* 0, or -1 out of memory */
void grammar__u32_free(u32vec *a);

/* ---- matcher states (matcher.c) ----
 * A state is a set of stacks of element positions, each with its top (last
 * entry) at a BYTES element; an empty stack means the grammar may end. The
 * stacks lie back to back in data. */
typedef struct {
    uint32_t *data;  /* (n_data) entries */
    size_t n_data, cap_data;
    uint32_t *off, *len, *hash; /* (n) per stack */
    int n, cap;
    long work;       /* expansion steps of the current advance */
    bool overflow;   /* a stack was dropped at a limit */
} gstate;

void grammar__state_free(gstate *s);
/* out = the stacks of in that accept byte c, advanced and expanded; buf is
 * scratch of GRAMMAR_MAX_DEPTH + 1 entries. Returns 0, or -1 out of memory. */
int grammar__advance(const grammar *g, const gstate *in, uint8_t c, gstate *out, uint32_t *buf);
/* bits (256) |= the first bytes the stacks of s accept. */
void grammar__first_bytes(const grammar *g, const gstate *s, uint8_t bits[32]);
/* Whether one stack of s is empty (the grammar may end). */
bool grammar__state_can_end(const gstate *s);

struct grammar_matcher {
    grammar *g;          /* one reference */
    gstate cur, a, b;    /* the state, and scratch for advances */
    bool overflowed;
    uint32_t *buf;       /* (GRAMMAR_MAX_DEPTH + 1) expansion scratch */
    gstate *levels;      /* (n_levels) the mask walk's states, one per trie depth */
    int n_levels;
    struct mask_entry {
        uint32_t *key;   /* the state, serialized: n, then len and entries per stack */
        size_t key_len;
        uint32_t *mask;  /* (words) */
        int count;
        uint64_t used;
    } cache[8];
    uint64_t tick;
    const void *cache_vocab; /* the vocabulary the cached masks are over */
};

#endif
