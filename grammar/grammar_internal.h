/* What the grammar files share: the compiled grammar (rules of element
 * sequences over byte classes) and the growable vectors the compilers use.
 * gbnf.c compiles text to it, matcher.c runs it, vocab.c masks with it;
 * json_schema.c and regex.c emit GBNF text. */
#ifndef GRAMMAR_GRAMMAR_INTERNAL_H
#define GRAMMAR_GRAMMAR_INTERNAL_H

#include <pthread.h>
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
    uint8_t end_bytes[32]; /* (256 bits) the bytes a sentence of the grammar can end with */
    /* token tables per stack suffix over one vocabulary (mask.c), filled on
     * first use and kept for the grammar's life; the lock guards them */
    pthread_mutex_t lock;
    struct mask_tables *tables;
};

/* Whether byte b is in class c of g. */
static inline int grammar__class_has(const grammar *g, uint32_t c, uint8_t b) {
    return (g->classes[c][b >> 3] >> (b & 7)) & 1;
}

/* One step of the grammar's hashes over uint32 words (stacks, states,
 * table keys: FNV-1a's 32-bit prime, a word at a time, for speed on the
 * masks' hot path), from GRAMMAR_HASH_INIT. Byte strings take util_fnv1a. */
#define GRAMMAR_HASH_INIT 2166136261u
static inline uint32_t grammar__hash_step(uint32_t h, uint32_t w) { return (h ^ w) * 16777619u; }

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

#define GRAMMAR_MAX_WORK (1L << 16) /* expansion steps per advance (matcher.c) */
#define GRAMMAR_MAX_REC 4096         /* recursion of one expansion */

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
    /* what the current advance reached, for mask.c's proof that a limit
     * cannot be hit: deepest expansion recursion, longest stack formed, and
     * how many times an expansion popped the last entry (the stack's bottom) */
    int max_rec;
    uint32_t max_len;
    int n_bottom;
    uint32_t min_len; /* the shortest stack an expansion began from: entries below its top were not read */
} gstate;

void grammar__state_free(gstate *s);
/* out = the stacks of in that accept byte c, advanced and expanded; buf is
 * scratch of GRAMMAR_MAX_DEPTH + 1 entries. Returns 0, or -1 out of memory. */
int grammar__advance(const grammar *g, const gstate *in, uint8_t c, gstate *out, uint32_t *buf);
/* bits (256) |= the first bytes the stacks of s accept. */
void grammar__first_bytes(const grammar *g, const gstate *s, uint8_t bits[32]);
/* Whether one stack of s is empty (the grammar may end). */
bool grammar__state_can_end(const gstate *s);
/* out = the stacks that the stack st (len entries) expands to, as after a pop
 * (clears out first; fills its counters). buf as above. 0, or -1 out of memory. */
int grammar__expand(const grammar *g, const uint32_t *st, uint32_t len, gstate *out, uint32_t *buf);
/* dst = a copy of src's stacks. 0, or -1 out of memory. */
int grammar__state_copy(gstate *dst, const gstate *src);

/* The vocabulary (vocab.c): token bytes and their prefix trie. Tokens are
 * also numbered by rank, their order by bytes: a trie subtree's tokens are a
 * run of ranks, and tokens that share a prefix are neighbours. */
struct grammar_vocab {
    int n;                 /* token ids */
    char *bytes;           /* all tokens' bytes, back to back */
    size_t *tok_off;       /* (n + 1) token id's bytes are bytes[tok_off[id] .. tok_off[id+1]) */
    uint8_t *usable;       /* (n) 1: a plain token (in the trie), 0: never allowed or EOS */
    int32_t *eos;          /* (n_eos) */
    int n_eos;
    uint64_t serial;       /* unique per vocabulary made in this process (a key of mask.c's tables) */
    int n_ranked;          /* usable tokens */
    int32_t *rank_id;      /* (n_ranked) the usable token ids sorted by bytes */
    /* the trie, nodes in breadth-first order, node 0 the root */
    int n_nodes;
    uint8_t *node_byte;    /* (n_nodes) the byte of the edge into the node */
    uint32_t *child_off;   /* (n_nodes + 1) children of v: child_off[v] .. child_off[v+1] */
    uint32_t *node_lo;     /* (n_nodes) the tokens ending at v are ranks node_lo[v] .. node_tok_end[v], */
    uint32_t *node_tok_end; /* (n_nodes) */
    uint32_t *sub_end;     /* (n_nodes) and those of its subtree node_lo[v] .. sub_end[v] */
    int max_len;           /* longest token, bytes */
};

/* ---- masks from per-suffix token tables (mask.c) ---- */

/* The mask of m's current state over v (grammar_vocab_mask_words words,
 * written whole, EOS left out) from the grammar's token tables. Returns 1 when
 * done, 0 when the tables cannot prove the answer equals the trie walk's (a
 * limit might be hit, or the memory for tables is spent: the caller walks),
 * -1 out of memory. */
int grammar__mask_fast(grammar_matcher *m, const grammar_vocab *v, uint32_t *mask);
/* m's scratch state for trie depth d (made on first use; vocab.c). NULL out of memory. */
gstate *grammar__level(grammar_matcher *m, int d);
/* Frees g's tables (grammar_release). */
void grammar__tables_free(grammar *g);

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
