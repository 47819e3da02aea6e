/* Internals of tokenizer/, shared by its stage files and by nothing else:
 * limits, the loaded tokenizer and its components, the growable lists the
 * stages fill, the load-error context, and the helpers that cross files
 * (prefix tok__; hot small ones are static inline here). */
#ifndef TOKENIZER_TOKENIZER_INTERNAL_H
#define TOKENIZER_TOKENIZER_INTERNAL_H

#include "tokenizer/tokenizer.h"

#include "base/buf.h"
#include "base/err.h"
#include "base/util.h"

#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#define TK_MAX_JSON_BYTES ((size_t)256 << 20)
#define TK_MAX_INPUT_BYTES ((size_t)64 << 20)
#define TK_MAX_ID (1 << 24) /* ids beyond 16M are refused at load */
#define TK_MAX_DEPTH 16     /* nesting of Sequence components */

/* ------------------------------------------------------------------------ */
/* Components                                                               */

typedef struct {
    pcre2_code *re; /* NULL: literal string pattern */
    char *lit;
    size_t lit_len;
} pattern;

enum { NORM_SEQ, NORM_NFC, NORM_NFD, NORM_NFKC, NORM_NFKD, NORM_LOWER, NORM_REPLACE,
       NORM_PREPEND, NORM_STRIP };
enum { PRE_SEQ, PRE_SPLIT, PRE_BYTELEVEL, PRE_DIGITS, PRE_METASPACE, PRE_WHITESPACE_SPLIT,
       PRE_PUNCT };
enum { SPLIT_REMOVED, SPLIT_ISOLATED, SPLIT_MERGED_PREV, SPLIT_MERGED_NEXT, SPLIT_CONTIGUOUS };
enum { DEC_SEQ, DEC_BYTELEVEL, DEC_REPLACE, DEC_FUSE, DEC_STRIP, DEC_BYTEFALLBACK,
       DEC_METASPACE };
enum { PREPEND_ALWAYS, PREPEND_FIRST, PREPEND_NEVER };

typedef struct component component;
struct component {
    int type;
    component *sub; /* Sequence children */
    size_t n_sub;
    pattern pat;     /* Split, Replace */
    char *content;   /* Replace content, Prepend string, Metaspace replacement, Strip char */
    size_t content_len;
    int behavior;    /* Split / Digits */
    bool invert, flag_a, flag_b; /* Split invert; ByteLevel add_prefix_space/use_regex;
                                    Strip left/right; Digits individual; Metaspace split */
    int prepend_scheme;
    int32_t replacement_cp;
    int start, stop; /* Strip decoder */
};

/* ------------------------------------------------------------------------ */
/* Hash maps                                                                */

static inline uint64_t tok__hash_bytes(const char *s, size_t n) {
    uint64_t h = util_fnv1a(UTIL_FNV1A_INIT, s, n);
    return h ^ (h >> 29);
}

static inline uint64_t tok__hash_u64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

/* String -> id over strings owned elsewhere (strs[id], lens[id]). */
typedef struct {
    int32_t *slot; /* id or -1 */
    size_t mask;
} strmap;

/* Sizes an empty map for n strings; 0, or -1 out of memory. */
int tok__strmap_init(strmap *m, size_t n);

/* Inserts id; if the string is present already keeps the first (returns 1). */
int tok__strmap_put(strmap *m, char *const *strs, const uint32_t *lens, int32_t id);

/* The id of s[0..n), or -1 (also for a map never initialized). */
static inline int32_t tok__strmap_get(const strmap *m, char *const *strs, const uint32_t *lens,
                                      const char *s, size_t n) {
    if (!m->slot) return -1;
    size_t i = tok__hash_bytes(s, n) & m->mask;
    for (;;) {
        int32_t id = m->slot[i];
        if (id < 0) return -1;
        if (lens[id] == n && memcmp(strs[id], s, n) == 0) return id;
        i = (i + 1) & m->mask;
    }
}

/* (left id, right id) -> (rank, merged id). */
typedef struct {
    uint64_t key;
    uint32_t rank;
    int32_t id;
} merge_entry;

typedef struct {
    merge_entry *e; /* key UINT64_MAX: empty */
    size_t mask;
} mergemap;

/* ------------------------------------------------------------------------ */
/* The loaded tokenizer                                                     */

#define TK_CACHE_SLOTS 16384 /* power of two */
#define TK_CACHE_STRIPES 64
#define TK_CACHE_WORD 22
#define TK_CACHE_IDS 8

struct cache_slot {
    uint8_t wlen, n; /* wlen 0: empty */
    char word[TK_CACHE_WORD];
    int32_t ids[TK_CACHE_IDS];
};

typedef struct {
    int32_t *ids; /* template ids, SIZE -1 stands for the sequence */
    size_t n;
    bool present;
} post_template;

typedef struct {
    int32_t id;
    char *content; /* as in the JSON */
    size_t len;
    char *pattern; /* content, normalized when normalized=true */
    size_t pattern_len;
    bool single_word, lstrip, rstrip, normalized, special;
} added_token;

/* Leftmost-longest matcher over a set of added tokens (aho-corasick's
 * MatchKind::LeftmostLongest): a byte trie whose edges live in one hash
 * table keyed by (node, byte); at each position the walk is bounded by the
 * longest token, so matching is O(n * longest token). */
typedef struct {
    uint64_t key; /* (node << 8) | byte, UINT64_MAX: empty */
    int32_t child;
} trie_edge;

typedef struct {
    trie_edge *edge;
    size_t mask;
    int32_t *term; /* (n_nodes) index into added[] ending here, or -1 */
    size_t n_nodes;
    bool first_byte[256];
    bool any;
} added_matcher;

struct tokenizer {
    /* model (BPE) */
    char **tok;          /* (n_ids) model vocabulary strings, NULL for holes */
    uint32_t *tok_len;   /* (n_ids) */
    size_t n_ids;        /* id space: max id + 1 */
    strmap vocab;        /* model strings -> id */
    mergemap merges;
    int32_t unk_id;
    bool byte_fallback, fuse_unk, ignore_merges;
    char *cont_prefix, *end_suffix;
    size_t cont_prefix_len, end_suffix_len;
    int32_t byte_ids[256]; /* <0xXX> tokens for byte_fallback, -1 if absent */
    int32_t *cp_id;        /* (0x10000) single-code-point token ids, fast path */

    /* added tokens */
    added_token *added;
    size_t n_added;
    int32_t *added_of_id; /* (n_ids) index into added[] or -1 */
    strmap added_map;     /* content -> id */
    char **added_str;     /* (n_ids) content per id for added_map */
    uint32_t *added_len;
    added_matcher m_raw, m_norm;

    component *normalizer, *pre, *decoder;
    post_template post;
    int32_t bos_id, eos_id;

    /* Word cache: BPE results of short pre-tokens, shared by all threads
     * (striped locks). The only state that encode mutates. */
    struct cache_slot *cache;
    pthread_mutex_t cache_lock[TK_CACHE_STRIPES];
    bool dec_bytelevel_only; /* decoder is exactly ByteLevel: streaming fast path */
};

/* ------------------------------------------------------------------------ */
/* Lists the stages fill                                                    */

/* The array v (*cap elements of elem bytes) grown for more: twice the
 * capacity, init at first. The new array with *cap updated, or NULL out of
 * memory (v and *cap unchanged). */
static inline void *tok__grow(void *v, size_t *cap, size_t elem, size_t init) {
    size_t c = *cap ? *cap * 2 : init;
    void *p = realloc(v, c * elem);
    if (p) *cap = c;
    return p;
}

typedef struct {
    size_t s, e;
} span;

typedef struct {
    span *v;
    size_t n, cap;
} spanlist;

static inline int tok__spans_add(spanlist *l, size_t s, size_t e) {
    span *v = l->n < l->cap ? l->v : tok__grow(l->v, &l->cap, sizeof *v, 64);
    if (!v) return TOKENIZER_ERR_NOMEM;
    l->v = v;
    l->v[l->n++] = (span){s, e};
    return 0;
}

/* Scratch of the stages that match patterns: match data, spans, a buffer. */
typedef struct {
    pcre2_match_data *md;
    spanlist m;
    strbuf tmp;
} normctx;

/* Stretches of text between added tokens. */
typedef struct {
    int32_t added; /* index into t->added or -1 for text */
    size_t s, e;
} segment;

typedef struct {
    segment *v;
    size_t n, cap;
} seglist;

/* Pre-tokens, as ranges of the encoder's arena. */
typedef struct {
    size_t off, len; /* into enc.arena */
    bool first;      /* starts at offset 0 of the original text (Metaspace "first") */
} piece;

typedef struct {
    piece *v;
    size_t n, cap;
} piecelist;

typedef struct {
    int32_t id, prev, next;
    bool gone;
} symbol;

typedef struct {
    uint32_t rank, pos;
    int32_t id;
} heap_item;

/* The state of one tokenizer_encode call (nothing of it outlives the call). */
typedef struct {
    const tokenizer *t;
    normctx nx;     /* match data, spans, scratch */
    strbuf arena;   /* text of all pieces */
    strbuf norm;    /* a normalized segment */
    piecelist a, b; /* pre-tokenizer double buffer */
    seglist segs, segs2;
    spanlist m2;
    symbol *sym;
    size_t sym_cap;
    heap_item *heap;
    size_t heap_n, heap_cap;
    int32_t *ids;
    size_t n_ids, ids_cap;
} encoder;

static inline int tok__ids_add(encoder *e, int32_t id) {
    int32_t *p = e->n_ids < e->ids_cap ? e->ids : tok__grow(e->ids, &e->ids_cap, sizeof *p, 256);
    if (!p) return TOKENIZER_ERR_NOMEM;
    e->ids = p;
    e->ids[e->n_ids++] = id;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Loading (load.c)                                                         */

/* The first error of a load: its status, and its message in err. */
typedef struct {
    char *err;
    size_t errlen;
    int status;
} loadctx;

static inline int tok__fail_keep(loadctx *c, int status) {
    if (c->status == 0) c->status = status;
    return status;
}

/* Records a load error unless one is recorded already (the first, innermost
 * message wins), its message formatted by err_set; evaluates to status, so
 * that `return tok__fail(c, TOKENIZER_ERR_PARSE, "bad %s", x);` is one line. */
#define tok__fail(ctx, st, ...)                                                                    \
    tok__fail_keep((ctx), err_set((ctx)->status ? NULL : (ctx)->err, (ctx)->errlen, (st), __VA_ARGS__))

typedef int (*component_loader)(loadctx *c, const cJSON *j, component *k, int depth);

/* A heap copy of s[0..n) with a NUL after it, or NULL out of memory. */
char *tok__dup_n(const char *s, size_t n);

/* The string or bool member key of o, or NULL / dflt when it is absent or
 * of another type. cJSON strings are NUL-terminated; a JSON "\u0000"
 * truncates them, which we accept (such tokens do not occur in practice). */
const char *tok__jstr(const cJSON *o, const char *key);
bool tok__jbool(const cJSON *o, const char *key, bool dflt);

/* The start of every component loader (what: its name in messages): the
 * "type" of j into *type and 1, or for a Sequence 0 once it is loaded here
 * (the array under seq_key, each element by f), or a negative status. */
int tok__load_type(loadctx *c, const cJSON *j, component *k, int depth, component_loader f,
                   const char *what, const char *seq_key, const char **type);

/* k->content = a copy of s (which must be present). */
int tok__set_content(loadctx *c, component *k, const char *s);

/* The fields of Metaspace (pre-tokenizer and decoder): replacement,
 * prepend_scheme, split. */
int tok__load_replacement(loadctx *c, const cJSON *j, component *k);

void tok__component_free(component *k); /* accepts NULL */

/* ------------------------------------------------------------------------ */
/* Characters and patterns (chars.c, pattern.c)                             */

/* GPT-2 byte-level alphabet; filled by tok__bl_init (idempotent, thread-safe). */
extern int32_t tok__bl_byte_to_cp[256];
extern int16_t tok__bl_cp_to_byte[512]; /* -1: not a byte-level char */
void tok__bl_init(void);

/* Rust char::is_whitespace (White_Space property), char::is_numeric and
 * char::is_alphanumeric. */
bool tok__cp_is_whitespace(int32_t c);
bool tok__cp_is_numeric(int32_t c);
bool tok__cp_is_alnum(int32_t c);

/* Code point ending just before s[end] (s valid UTF-8, end > 0); its first
 * byte's offset in *start when start is not NULL. */
int32_t tok__utf8_last_cp(const char *s, size_t end, size_t *start);

/* Appends String::from_utf8_lossy(s): each maximal invalid subpart becomes
 * one U+FFFD. With keep_tail, an incomplete character at the very end is not
 * converted; its length is returned in *tail (for streaming). 0, or -1 out
 * of memory. */
int tok__utf8_lossy_add(strbuf *b, const char *s, size_t n, bool keep_tail, size_t *tail);

/* Bytes of the character starting at s[i] (1 for a stray continuation). */
static inline size_t tok__utf8_char_len(const char *s, size_t n, size_t i) {
    size_t k = 1;
    while (i + k < n && ((uint8_t)s[i + k] & 0xC0) == 0x80) k++;
    return k;
}

/* {"Regex": "..."} or {"String": "..."} into p. */
int tok__pattern_load(loadctx *c, const cJSON *j, pattern *p);
void tok__pattern_free(pattern *p);

/* All matches of p in s[0..n) into out (cleared first), left to right,
 * non-overlapping; an empty match right after the previous match is skipped
 * (onig FindMatches). 0, TOKENIZER_ERR_NOMEM or _LIMIT (regex limits). */
int tok__pattern_find(const pattern *p, const char *s, size_t n, pcre2_match_data *md,
                      spanlist *out);

/* ------------------------------------------------------------------------ */
/* Stages                                                                   */

/* normalize.c: the normalizer component, and running it over s in place. */
int tok__load_normalizer(loadctx *c, const cJSON *j, component *k, int depth);
int tok__norm_apply(const component *k, strbuf *s, normctx *x, int depth);

/* pretokenize.c: the pre-tokenizer component; running it over the pieces
 * of e->a (the result is in e->a); adding one piece (empty ones dropped). */
int tok__load_pretokenizer(loadctx *c, const cJSON *j, component *k, int depth);
int tok__pre_apply(encoder *e, const component *k, int depth);
int tok__pieces_add(piecelist *l, size_t off, size_t len, bool first);

/* bpe.c: the model. tok__model_scan checks model and sizes the id space
 * (*model_size: its number of vocabulary entries); tok__model_fill, once
 * t->tok and t->tok_len have n_ids entries, fills the vocabulary, the merges
 * and the fast paths. tok__bpe_word appends the ids of one pre-token. */
int tok__model_scan(loadctx *c, tokenizer *t, const cJSON *m, size_t *model_size);
int tok__model_fill(loadctx *c, tokenizer *t, const cJSON *m);
int tok__bpe_word(encoder *e, const char *s, size_t n);

/* added.c: added_tokens (ids as AddedVocabulary::add_tokens gives them);
 * tok__added_finish, after the normalizer is loaded and n_ids covers every
 * added id, builds the per-id tables and the two matchers. tok__added_split
 * appends to out the segments of s split at the added tokens of m. */
int tok__added_load(loadctx *c, tokenizer *t, const cJSON *arr, size_t model_size);
int tok__added_finish(loadctx *c, tokenizer *t);
int tok__added_split(const tokenizer *t, const added_matcher *m, const char *s, size_t n,
                     seglist *out);
void tok__matcher_free(added_matcher *m);

/* post.c: the post-processor as one template of ids (-1: the sequence);
 * tok__post_set replaces t's ids; tok__post_apply wraps e->ids in it. */
int tok__post_load(loadctx *c, const cJSON *j, post_template *acc, int depth);
int tok__post_set(loadctx *c, post_template *t, const int32_t *ids, size_t n);
int tok__post_apply(const post_template *t, encoder *e);

/* decode.c: the decoder component. */
int tok__load_decoder(loadctx *c, const cJSON *j, component *k, int depth);

#endif
