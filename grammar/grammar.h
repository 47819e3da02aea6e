/* Structured outputs by constrained decoding: a context-free grammar over
 * bytes (compiled once, immutable, refcounted, shared across threads), an
 * incremental matcher per sequence (a bounded set of pushdown stacks, cheap to
 * copy), and the mask of a vocabulary's tokens that may come next (per stack
 * suffix, token tables of accepted and context-dependent tokens; a prefix
 * trie of the token bytes walked together with the matcher). Front ends
 * compile GBNF text, JSON Schema, "any JSON object", regular expressions and
 * choice lists to it. Every compiler bounds its time and memory and answers
 * bad input with a one-line error. */
#ifndef GRAMMAR_GRAMMAR_H
#define GRAMMAR_GRAMMAR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
    GRAMMAR_OK = 0,
    GRAMMAR_ERR_NOMEM = -1,
    GRAMMAR_ERR_SYNTAX = -2,      /* malformed GBNF, regex or JSON */
    GRAMMAR_ERR_UNSUPPORTED = -3, /* a schema keyword or regex feature this engine does not implement */
    GRAMMAR_ERR_LIMIT = -4,       /* over a size or depth limit (grammar_limits) */
    GRAMMAR_ERR_INVALID = -5,     /* well-formed but meaningless: undefined rule, left recursion, bad schema */
} grammar_status;

/* Static string for a status; never NULL. */
const char *grammar_status_str(int status);

/* The limits every compiler enforces (bad input is an error, never a hang). */
#define GRAMMAR_MAX_TEXT (1 << 20)      /* bytes of GBNF, schema or regex input */
#define GRAMMAR_MAX_ELEMS (1 << 20)     /* compiled grammar elements */
#define GRAMMAR_MAX_RULES (1 << 16)     /* compiled rules */
#define GRAMMAR_MAX_REPEAT 10000        /* m and n of {m,n} */
#define GRAMMAR_MAX_SCHEMA_DEPTH 64     /* nesting of inline JSON schemas */
#define GRAMMAR_MAX_STACKS 1024         /* stacks in a matcher's state */
#define GRAMMAR_MAX_DEPTH 1024          /* entries of one stack (nesting of the output) */

typedef struct grammar grammar;

/* Compiles GBNF (llama.cpp's syntax: `name ::= alternatives`, "literals",
 * [classes] with ranges and ^, `.`, ( groups ), *, +, ?, {m}, {m,}, {m,n},
 * # comments; escapes \n \r \t \\ \" \] \xHH \uHHHH \UHHHHHHHH; the start
 * rule is `root`) of len bytes. Returns GRAMMAR_OK and *out (one reference),
 * or a negative status with a one-line message in err and *out NULL.
 * Undefined rules and left recursion are errors. */
int grammar_compile_gbnf(const char *text, size_t len, grammar **out, char *err, size_t errlen);

/* JSON Schema (JSON text of len bytes) to GBNF text (*out heap, NUL-terminated,
 * caller frees), or an error naming the unsupported keyword. The supported
 * subset is listed in README.md; generated JSON has no whitespace but after
 * ':' and ',' and inside empty or before closing brackets: at most one space,
 * or one newline and up to 16 spaces (bounded, so masks stay small). */
int grammar_json_schema_to_gbnf(const char *json, size_t len, char **out, char *err, size_t errlen);

/* The same compiled: grammar_json_schema_to_gbnf then grammar_compile_gbnf. */
int grammar_compile_json_schema(const char *json, size_t len, grammar **out, char *err, size_t errlen);

/* Any JSON object (response_format json_object), same whitespace rule. */
int grammar_compile_json_object(grammar **out, char *err, size_t errlen);

/* One alternative of grammar_compile_wrapped_json: a JSON value under schema
 * between two literal texts (e.g. a chat template's tool-call syntax around
 * one tool's arguments). All NUL-terminated UTF-8; borrowed. */
typedef struct {
    const char *prefix;
    const char *schema; /* JSON text; NULL: an empty object, {} */
    const char *suffix;
} grammar_wrapped_json;

/* root ::= item (sep item)*, at least one item and at most max_items (0: no
 * limit), each item one of the n alternatives: prefix, a value of schema
 * (the JSON Schema subset and whitespace of grammar_json_schema_to_gbnf),
 * suffix. Returns GRAMMAR_OK and *out (one reference), or a negative status
 * with err set; when a schema was at fault, *bad is its index (else -1). */
int grammar_compile_wrapped_json(const grammar_wrapped_json *alts, int n, const char *sep, int max_items, int *bad,
                                 grammar **out, char *err, size_t errlen);

/* A regular expression (len bytes, UTF-8) to a GBNF expression *out (heap).
 * Supported: literals, escapes (\d \w \s \D \W \S \n \t \r \f \v \xHH \uHHHH
 * and escaped punctuation), classes [..] and [^..] with ranges, `.` (any
 * character but \n), alternation, groups ( ), (?: ), (?P<n> ), (?<n> ),
 * quantifiers * + ? {m} {m,} {m,n} (lazy ones too: the language is the same),
 * ^ at the start and $ at the end (anchors are implied: the whole output must
 * match). Backreferences, lookaround and other anchors are refused. With
 * json_string the expression generates the JSON-escaped form of the strings
 * the regex matches (for a schema's "pattern"): '"' and '\' are escaped and
 * control characters left out. */
int grammar_regex_to_gbnf(const char *re, size_t len, bool json_string, char **out, char *err, size_t errlen);

/* root ::= the regex. */
int grammar_compile_regex(const char *re, size_t len, grammar **out, char *err, size_t errlen);

/* root ::= one of the n strings (each lens[i] bytes of UTF-8), exactly. */
int grammar_compile_choice(const char *const *choices, const size_t *lens, int n, grammar **out, char *err,
                           size_t errlen);

/* Another reference to g (returned); thread-safe. */
grammar *grammar_retain(grammar *g);
/* Drops a reference; the last one frees g. Thread-safe; accepts NULL. */
void grammar_release(grammar *g);

/* Sizes of a compiled grammar, for tests and logs. */
int grammar_n_rules(const grammar *g);
int grammar_n_elems(const grammar *g);

/* ---- a vocabulary: the token byte strings, in a prefix trie ---- */

typedef struct grammar_vocab grammar_vocab;

/* Makes the vocabulary of n tokens: token i stands for the lens[i] bytes at
 * bytes[i] (NULL or empty: never allowed). special (NULL: none) marks tokens
 * that are never allowed; the n_eos ids in eos are allowed exactly when the
 * grammar can end. Returns GRAMMAR_OK and *out, or a negative status with err. */
int grammar_vocab_create(int n, const char *const *bytes, const size_t *lens, const bool *special,
                         const int32_t *eos, int n_eos, grammar_vocab **out, char *err, size_t errlen);
void grammar_vocab_destroy(grammar_vocab *v); /* accepts NULL */
int grammar_vocab_size(const grammar_vocab *v);
/* 32-bit words of a mask over v: (size + 31) / 32. */
size_t grammar_vocab_mask_words(const grammar_vocab *v);
/* Whether id is one of v's EOS ids. */
bool grammar_vocab_is_eos(const grammar_vocab *v, int32_t id);
/* The bytes of token id as given at creation (*len of them; special tokens'
 * too), borrowed from v; NULL with *len 0 for an id out of range. */
const char *grammar_vocab_token(const grammar_vocab *v, int32_t id, size_t *len);

/* ---- the matcher: one sequence's position in the grammar ---- */

typedef struct grammar_matcher grammar_matcher;

/* A matcher at the start of g (holds a reference to g). NULL when out of
 * memory. Engine thread or any one thread at a time. */
grammar_matcher *grammar_matcher_create(grammar *g);
/* A copy of m (its state; the mask cache is not copied). NULL out of memory. */
grammar_matcher *grammar_matcher_clone(const grammar_matcher *m);
void grammar_matcher_destroy(grammar_matcher *m); /* accepts NULL */

/* Advances by n bytes, all or nothing: returns false (m unchanged) when the
 * grammar cannot continue with them. */
bool grammar_matcher_accept_bytes(grammar_matcher *m, const void *bytes, size_t n);
/* Whether the output so far is a whole sentence of the grammar. */
bool grammar_matcher_can_end(const grammar_matcher *m);
/* Whether it can end and nothing more may follow (the output is complete). */
bool grammar_matcher_ended(const grammar_matcher *m);
/* Whether accepting these n bytes might leave the output complete
 * (grammar_matcher_ended): false when the last byte is one no sentence of
 * the grammar ends with, so the caller can put the accept off (it cannot end
 * the output); true otherwise, and for n 0. Cheap: no advance. */
bool grammar_matcher_may_end_after(const grammar_matcher *m, const void *bytes, size_t n);
/* Whether the state was ever cut at GRAMMAR_MAX_STACKS or GRAMMAR_MAX_DEPTH
 * (what survives is still in the language, but less may be allowed). */
bool grammar_matcher_overflowed(const grammar_matcher *m);

/* Token id of v: EOS is accepted (and changes nothing) iff the grammar can
 * end; other tokens as their bytes; special or empty ones never. */
bool grammar_matcher_accept_token(grammar_matcher *m, const grammar_vocab *v, int32_t id);

/* The tokens of v that may come next: bit id of mask (grammar_vocab_mask_words
 * words, written whole) is 1 when token id is allowed. EOS ids are allowed
 * exactly when the grammar can end. Returns the number of allowed tokens, or
 * -1 when out of memory. Masks of recent states are cached in m; token
 * tables in m's grammar, for the first vocabulary it is used with (masks over
 * another one walk the trie: slower, the same result). */
int grammar_matcher_mask(grammar_matcher *m, const grammar_vocab *v, uint32_t *mask);

/* The same mask by the reference method alone: the trie walked with the full
 * state, no tables, no cache (for tests and benchmarks: slow). */
int grammar_matcher_mask_reference(grammar_matcher *m, const grammar_vocab *v, uint32_t *mask);

/* The token tables masks use (one per stack suffix met, made on first use,
 * kept for g's life, bounded in bytes): how many, their bytes, and the
 * seconds spent making them. Thread-safe. */
void grammar_tables_stats(grammar *g, int *n, size_t *bytes, double *seconds);

#endif
