/* Hugging Face tokenizer.json in C: BPE model, added tokens, normalizers
 * (utf8proc), pre-tokenizers (PCRE2 regexes), post-processors, decoders, and
 * an incremental decoder. Each stage mirrors the Rust code of `tokenizers`
 * so that ids and decoded text are byte-identical; comments name the HF
 * function a piece of code follows. */
#include "tokenizer/tokenizer.h"

#include "base/util.h"

#include <assert.h>
#include <ctype.h>
#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>

#define TK_MAX_JSON_BYTES ((size_t)256 << 20)
#define TK_MAX_INPUT_BYTES ((size_t)64 << 20)
#define TK_MAX_ID (1 << 24) /* ids beyond 16M are refused at load */
#define TK_MAX_DEPTH 16     /* nesting of Sequence components */
#define TK_MATCH_LIMIT 100000000u

const char *tokenizer_status_str(int status) {
    switch (status) {
    case TOKENIZER_OK: return "ok";
    case TOKENIZER_ERR_IO: return "I/O error";
    case TOKENIZER_ERR_PARSE: return "parse error";
    case TOKENIZER_ERR_UNSUPPORTED: return "unsupported component";
    case TOKENIZER_ERR_NOMEM: return "out of memory";
    case TOKENIZER_ERR_INVALID_UTF8: return "invalid UTF-8";
    case TOKENIZER_ERR_LIMIT: return "limit exceeded";
    case TOKENIZER_ERR_INVALID_ARG: return "invalid argument";
    default: return "unknown status";
    }
}

/* ------------------------------------------------------------------------ */
/* Growable byte buffer                                                     */

typedef struct {
    char *p;
    size_t len, cap;
} sbuf;

static int sbuf_reserve(sbuf *b, size_t extra) {
    if (b->len + extra + 1 <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + extra + 1) {
        if (cap > SIZE_MAX / 2) return -1;
        cap *= 2;
    }
    char *p = realloc(b->p, cap);
    if (!p) return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

static int sbuf_add(sbuf *b, const void *s, size_t n) {
    if (sbuf_reserve(b, n)) return -1;
    if (n) memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
    return 0;
}

static int sbuf_addc(sbuf *b, char c) { return sbuf_add(b, &c, 1); }

/* ------------------------------------------------------------------------ */
/* UTF-8 helpers                                                            */

/* Length of the well-formed UTF-8 sequence at s[0..n) (Unicode table 3-7),
 * or 0 if malformed; *cp gets the code point. */
static size_t utf8_decode(const uint8_t *s, size_t n, int32_t *cp) {
    if (n == 0) return 0;
    uint8_t c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    size_t len;
    uint8_t lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c == 0xE0) len = 3, lo = 0xA0;
    else if (c >= 0xE1 && c <= 0xEC) len = 3;
    else if (c == 0xED) len = 3, hi = 0x9F;
    else if (c >= 0xEE && c <= 0xEF) len = 3;
    else if (c == 0xF0) len = 4, lo = 0x90;
    else if (c >= 0xF1 && c <= 0xF3) len = 4;
    else if (c == 0xF4) len = 4, hi = 0x8F;
    else return 0;
    if (n < len) return 0;
    if (s[1] < lo || s[1] > hi) return 0;
    for (size_t i = 2; i < len; i++)
        if ((s[i] & 0xC0) != 0x80) return 0;
    int32_t v = c & (len == 2 ? 0x1F : len == 3 ? 0x0F : 0x07);
    for (size_t i = 1; i < len; i++) v = (v << 6) | (s[i] & 0x3F);
    *cp = v;
    return len;
}

/* For a malformed sequence at s[0..n): the number of bytes forming the
 * maximal valid prefix (>= 1), and whether that prefix runs to the end of
 * the buffer (an incomplete character that more bytes could complete). */
static size_t utf8_bad_prefix(const uint8_t *s, size_t n, bool *incomplete) {
    uint8_t c = s[0];
    size_t len;
    uint8_t lo = 0x80, hi = 0xBF;
    *incomplete = false;
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c == 0xE0) len = 3, lo = 0xA0;
    else if (c >= 0xE1 && c <= 0xEC) len = 3;
    else if (c == 0xED) len = 3, hi = 0x9F;
    else if (c >= 0xEE && c <= 0xEF) len = 3;
    else if (c == 0xF0) len = 4, lo = 0x90;
    else if (c >= 0xF1 && c <= 0xF3) len = 4;
    else if (c == 0xF4) len = 4, hi = 0x8F;
    else return 1;
    size_t i = 1;
    if (i < n && s[i] >= lo && s[i] <= hi) {
        i++;
        while (i < len && i < n && (s[i] & 0xC0) == 0x80) i++;
    }
    if (i == n && i < len) *incomplete = true;
    return i;
}

static int utf8_encode(int32_t cp, char *out) {
    return (int)utf8proc_encode_char(cp, (utf8proc_uint8_t *)out);
}

static bool utf8_valid(const char *s, size_t n) {
    const uint8_t *u = (const uint8_t *)s;
    size_t i = 0;
    while (i < n) {
        if (u[i] < 0x80) {
            i++;
            continue;
        }
        int32_t cp;
        size_t k = utf8_decode(u + i, n - i, &cp);
        if (!k) return false;
        i += k;
    }
    return true;
}

/* Appends String::from_utf8_lossy(s): each maximal invalid subpart becomes
 * one U+FFFD. With keep_tail, an incomplete character at the very end is not
 * converted; its length is returned in *tail (for streaming). */
static int utf8_lossy_add(sbuf *b, const char *s, size_t n, bool keep_tail, size_t *tail) {
    const uint8_t *u = (const uint8_t *)s;
    size_t i = 0, run = 0;
    if (tail) *tail = 0;
    while (i < n) {
        int32_t cp;
        size_t k = u[i] < 0x80 ? 1 : utf8_decode(u + i, n - i, &cp);
        if (k) {
            i += k;
            continue;
        }
        if (sbuf_add(b, s + run, i - run)) return -1;
        bool inc;
        size_t bad = utf8_bad_prefix(u + i, n - i, &inc);
        if (inc && keep_tail) {
            *tail = n - i;
            return 0;
        }
        if (sbuf_add(b, "\xEF\xBF\xBD", 3)) return -1;
        i += bad;
        run = i;
    }
    return sbuf_add(b, s + run, i - run);
}

/* Rust char::is_whitespace (White_Space property). */
static bool cp_is_whitespace(int32_t c) {
    return (c >= 9 && c <= 13) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

static bool cp_is_numeric(int32_t c) {
    utf8proc_category_t k = utf8proc_category(c);
    return k == UTF8PROC_CATEGORY_ND || k == UTF8PROC_CATEGORY_NL || k == UTF8PROC_CATEGORY_NO;
}

static bool cp_is_alnum(int32_t c) {
    utf8proc_category_t k = utf8proc_category(c);
    return (k >= UTF8PROC_CATEGORY_LU && k <= UTF8PROC_CATEGORY_LO) || cp_is_numeric(c);
}

/* Code point ending just before s[end] (s valid UTF-8, end > 0). */
static int32_t utf8_last_cp(const char *s, size_t end, size_t *start) {
    size_t i = end - 1;
    while (i > 0 && ((uint8_t)s[i] & 0xC0) == 0x80) i--;
    int32_t cp = 0;
    utf8_decode((const uint8_t *)s + i, end - i, &cp);
    if (start) *start = i;
    return cp;
}

/* ------------------------------------------------------------------------ */
/* GPT-2 byte-level alphabet                                                */

static int32_t bl_byte_to_cp[256];
static int16_t bl_cp_to_byte[512]; /* -1: not a byte-level char */

static void bl_init_once(void) {
    int n = 0;
    for (int i = 0; i < 512; i++) bl_cp_to_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        bool keep = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
        int32_t cp = keep ? b : 256 + n++;
        bl_byte_to_cp[b] = cp;
        bl_cp_to_byte[cp] = (int16_t)b;
    }
}

static void bl_init(void) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, bl_init_once);
}

/* ------------------------------------------------------------------------ */
/* Hash maps                                                                */

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 1099511628211ull;
    return h ^ (h >> 29);
}

static uint64_t hash_u64(uint64_t x) {
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

static int strmap_init(strmap *m, size_t n) {
    size_t cap = 16;
    while (cap < n * 2) cap *= 2;
    m->slot = malloc(cap * sizeof *m->slot);
    if (!m->slot) return -1;
    memset(m->slot, 0xff, cap * sizeof *m->slot);
    m->mask = cap - 1;
    return 0;
}

static int32_t strmap_get(const strmap *m, char *const *strs, const uint32_t *lens, const char *s,
                          size_t n) {
    if (!m->slot) return -1;
    size_t i = hash_bytes(s, n) & m->mask;
    for (;;) {
        int32_t id = m->slot[i];
        if (id < 0) return -1;
        if (lens[id] == n && memcmp(strs[id], s, n) == 0) return id;
        i = (i + 1) & m->mask;
    }
}

/* Inserts id; if the string is present already keeps the first (returns 1). */
static int strmap_put(strmap *m, char *const *strs, const uint32_t *lens, int32_t id) {
    size_t i = hash_bytes(strs[id], lens[id]) & m->mask;
    for (;;) {
        int32_t o = m->slot[i];
        if (o < 0) {
            m->slot[i] = id;
            return 0;
        }
        if (lens[o] == lens[id] && memcmp(strs[o], strs[id], lens[id]) == 0) {
            m->slot[i] = id; /* HF: later entries of a JSON object win */
            return 1;
        }
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

static inline uint64_t pair_key(int32_t a, int32_t b) {
    return ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
}

static inline const merge_entry *mergemap_get(const mergemap *m, uint64_t key) {
    size_t i = hash_u64(key) & m->mask;
    for (;;) {
        const merge_entry *e = &m->e[i];
        if (e->key == key) return e;
        if (e->key == UINT64_MAX) return NULL;
        i = (i + 1) & m->mask;
    }
}

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
/* Error reporting during load                                              */

typedef struct {
    char *err;
    size_t errlen;
    int status;
} loadctx;

static int fail(loadctx *c, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(loadctx *c, int status, const char *fmt, ...) {
    if (c->status == 0) {
        va_list ap;
        va_start(ap, fmt);
        if (c->err && c->errlen) vsnprintf(c->err, c->errlen, fmt, ap);
        va_end(ap);
        c->status = status;
    }
    return status;
}

static char *dup_n(const char *s, size_t n) {
    char *p = malloc(n + 1);
    if (!p) return NULL;
    memcpy(p, s, n);
    p[n] = 0;
    return p;
}

/* cJSON strings are NUL-terminated; a JSON "\u0000" truncates them, which
 * we accept (such tokens do not occur in practice). */
static const char *jstr(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static bool jbool(const cJSON *o, const char *key, bool dflt) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (cJSON_IsBool(v)) return cJSON_IsTrue(v);
    return dflt;
}

static void pattern_free(pattern *p) {
    if (p->re) pcre2_code_free(p->re);
    free(p->lit);
}

/* {"Regex": "..."} or {"String": "..."}. */
static int pattern_load(loadctx *c, const cJSON *j, pattern *p) {
    const char *rx = jstr(j, "Regex"), *lit = jstr(j, "String");
    if (rx) {
        int code;
        PCRE2_SIZE off;
        p->re = pcre2_compile((PCRE2_SPTR)rx, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &code,
                              &off, NULL);
        if (!p->re) {
            char msg[128];
            pcre2_get_error_message(code, (PCRE2_UCHAR *)msg, sizeof msg);
            return fail(c, TOKENIZER_ERR_PARSE, "regex /%s/ at offset %zu: %s", rx, (size_t)off,
                        msg);
        }
        pcre2_jit_compile(p->re, PCRE2_JIT_COMPLETE); /* falls back to the interpreter */
        return 0;
    }
    if (lit) {
        p->lit_len = strlen(lit);
        p->lit = dup_n(lit, p->lit_len);
        if (!p->lit) return fail(c, TOKENIZER_ERR_NOMEM, "out of memory");
        return 0;
    }
    return fail(c, TOKENIZER_ERR_PARSE, "pattern needs a Regex or String");
}

static void component_clear(component *k) {
    for (size_t i = 0; i < k->n_sub; i++) component_clear(&k->sub[i]);
    free(k->sub);
    pattern_free(&k->pat);
    free(k->content);
}

static void component_free(component *k) {
    if (!k) return;
    component_clear(k);
    free(k);
}

typedef int (*component_loader)(loadctx *c, const cJSON *j, component *k, int depth);

static int load_seq(loadctx *c, const cJSON *arr, component *k, int depth, component_loader f,
                    const char *what) {
    if (depth > TK_MAX_DEPTH) return fail(c, TOKENIZER_ERR_PARSE, "%s nested too deeply", what);
    if (!cJSON_IsArray(arr)) return fail(c, TOKENIZER_ERR_PARSE, "%s Sequence needs an array", what);
    int n = cJSON_GetArraySize(arr);
    k->type = 0; /* every *_SEQ is 0 */
    k->sub = calloc(n ? (size_t)n : 1, sizeof *k->sub);
    if (!k->sub) return fail(c, TOKENIZER_ERR_NOMEM, "out of memory");
    const cJSON *e;
    cJSON_ArrayForEach(e, arr) {
        int rc = f(c, e, &k->sub[k->n_sub], depth + 1);
        k->n_sub++;
        if (rc) return rc;
    }
    return 0;
}

static int set_content(loadctx *c, component *k, const char *s) {
    if (!s) return fail(c, TOKENIZER_ERR_PARSE, "missing string field");
    k->content_len = strlen(s);
    k->content = dup_n(s, k->content_len);
    if (!k->content) return fail(c, TOKENIZER_ERR_NOMEM, "out of memory");
    return 0;
}

static int load_normalizer(loadctx *c, const cJSON *j, component *k, int depth) {
    const char *type = jstr(j, "type");
    if (!type) return fail(c, TOKENIZER_ERR_PARSE, "normalizer without a type");
    if (!strcmp(type, "Sequence"))
        return load_seq(c, cJSON_GetObjectItemCaseSensitive(j, "normalizers"), k, depth,
                        load_normalizer, "normalizer");
    if (!strcmp(type, "NFC")) k->type = NORM_NFC;
    else if (!strcmp(type, "NFD")) k->type = NORM_NFD;
    else if (!strcmp(type, "NFKC")) k->type = NORM_NFKC;
    else if (!strcmp(type, "NFKD")) k->type = NORM_NFKD;
    else if (!strcmp(type, "Lowercase")) k->type = NORM_LOWER;
    else if (!strcmp(type, "Replace")) {
        k->type = NORM_REPLACE;
        if (pattern_load(c, cJSON_GetObjectItemCaseSensitive(j, "pattern"), &k->pat)) return c->status;
        return set_content(c, k, jstr(j, "content"));
    } else if (!strcmp(type, "Prepend")) {
        k->type = NORM_PREPEND;
        return set_content(c, k, jstr(j, "prepend"));
    } else if (!strcmp(type, "Strip")) {
        k->type = NORM_STRIP;
        k->flag_a = jbool(j, "strip_left", false);
        k->flag_b = jbool(j, "strip_right", false);
    } else
        return fail(c, TOKENIZER_ERR_UNSUPPORTED, "unsupported normalizer type '%s'", type);
    return 0;
}

static int parse_behavior(loadctx *c, const char *b) {
    if (!b) return fail(c, TOKENIZER_ERR_PARSE, "missing behavior");
    if (!strcmp(b, "Removed")) return SPLIT_REMOVED;
    if (!strcmp(b, "Isolated")) return SPLIT_ISOLATED;
    if (!strcmp(b, "MergedWithPrevious")) return SPLIT_MERGED_PREV;
    if (!strcmp(b, "MergedWithNext")) return SPLIT_MERGED_NEXT;
    if (!strcmp(b, "Contiguous")) return SPLIT_CONTIGUOUS;
    return fail(c, TOKENIZER_ERR_UNSUPPORTED, "unsupported split behavior '%s'", b);
}

static int parse_prepend_scheme(loadctx *c, const cJSON *j) {
    const char *s = jstr(j, "prepend_scheme");
    if (!s) return jbool(j, "add_prefix_space", true) ? PREPEND_ALWAYS : PREPEND_NEVER;
    if (!strcmp(s, "always")) return PREPEND_ALWAYS;
    if (!strcmp(s, "first")) return PREPEND_FIRST;
    if (!strcmp(s, "never")) return PREPEND_NEVER;
    return fail(c, TOKENIZER_ERR_UNSUPPORTED, "unsupported prepend_scheme '%s'", s);
}

static int load_replacement(loadctx *c, const cJSON *j, component *k) {
    const char *r = jstr(j, "replacement");
    int32_t cp;
    if (!r || !*r || utf8_decode((const uint8_t *)r, strlen(r), &cp) != strlen(r))
        return fail(c, TOKENIZER_ERR_PARSE, "Metaspace replacement must be one character");
    k->replacement_cp = cp;
    if (set_content(c, k, r)) return c->status;
    int s = parse_prepend_scheme(c, j);
    if (s < 0) return s;
    k->prepend_scheme = s;
    k->flag_a = jbool(j, "split", true);
    return 0;
}

static int load_pretokenizer(loadctx *c, const cJSON *j, component *k, int depth) {
    const char *type = jstr(j, "type");
    if (!type) return fail(c, TOKENIZER_ERR_PARSE, "pre_tokenizer without a type");
    if (!strcmp(type, "Sequence"))
        return load_seq(c, cJSON_GetObjectItemCaseSensitive(j, "pretokenizers"), k, depth,
                        load_pretokenizer, "pre_tokenizer");
    if (!strcmp(type, "Split")) {
        k->type = PRE_SPLIT;
        if (pattern_load(c, cJSON_GetObjectItemCaseSensitive(j, "pattern"), &k->pat)) return c->status;
        int b = parse_behavior(c, jstr(j, "behavior"));
        if (b < 0) return b;
        k->behavior = b;
        k->invert = jbool(j, "invert", false);
    } else if (!strcmp(type, "ByteLevel")) {
        k->type = PRE_BYTELEVEL;
        k->flag_a = jbool(j, "add_prefix_space", true);
        k->flag_b = jbool(j, "use_regex", true);
        if (k->flag_b) {
            static const char gpt2[] = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+"
                                       "|\\s+(?!\\S)|\\s+";
            cJSON *p = cJSON_CreateObject();
            if (!p || !cJSON_AddStringToObject(p, "Regex", gpt2)) {
                cJSON_Delete(p);
                return fail(c, TOKENIZER_ERR_NOMEM, "out of memory");
            }
            int rc = pattern_load(c, p, &k->pat);
            cJSON_Delete(p);
            if (rc) return rc;
        }
    } else if (!strcmp(type, "Digits")) {
        k->type = PRE_DIGITS;
        k->flag_a = jbool(j, "individual_digits", false);
    } else if (!strcmp(type, "Metaspace")) {
        k->type = PRE_METASPACE;
        return load_replacement(c, j, k);
    } else if (!strcmp(type, "WhitespaceSplit")) {
        k->type = PRE_WHITESPACE_SPLIT;
    } else
        return fail(c, TOKENIZER_ERR_UNSUPPORTED, "unsupported pre_tokenizer type '%s'", type);
    return 0;
}

static int load_decoder(loadctx *c, const cJSON *j, component *k, int depth) {
    const char *type = jstr(j, "type");
    if (!type) return fail(c, TOKENIZER_ERR_PARSE, "decoder without a type");
    if (!strcmp(type, "Sequence"))
        return load_seq(c, cJSON_GetObjectItemCaseSensitive(j, "decoders"), k, depth, load_decoder,
                        "decoder");
    if (!strcmp(type, "ByteLevel")) k->type = DEC_BYTELEVEL;
    else if (!strcmp(type, "Fuse")) k->type = DEC_FUSE;
    else if (!strcmp(type, "ByteFallback")) k->type = DEC_BYTEFALLBACK;
    else if (!strcmp(type, "Replace")) {
        k->type = DEC_REPLACE;
        if (pattern_load(c, cJSON_GetObjectItemCaseSensitive(j, "pattern"), &k->pat)) return c->status;
        return set_content(c, k, jstr(j, "content"));
    } else if (!strcmp(type, "Strip")) {
        k->type = DEC_STRIP;
        const char *s = jstr(j, "content");
        int32_t cp;
        if (!s || !*s || utf8_decode((const uint8_t *)s, strlen(s), &cp) != strlen(s))
            return fail(c, TOKENIZER_ERR_PARSE, "Strip decoder content must be one character");
        if (set_content(c, k, s)) return c->status;
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(j, "start");
        const cJSON *b = cJSON_GetObjectItemCaseSensitive(j, "stop");
        k->start = cJSON_IsNumber(a) && a->valuedouble > 0 ? (int)(a->valuedouble < 1e6 ? a->valuedouble : 1e6) : 0;
        k->stop = cJSON_IsNumber(b) && b->valuedouble > 0 ? (int)(b->valuedouble < 1e6 ? b->valuedouble : 1e6) : 0;
    } else if (!strcmp(type, "Metaspace")) {
        k->type = DEC_METASPACE;
        return load_replacement(c, j, k);
    } else
        return fail(c, TOKENIZER_ERR_UNSUPPORTED, "unsupported decoder type '%s'", type);
    return 0;
}

/* Loads an optional component; JSON null means none. */
static int load_optional(loadctx *c, const cJSON *root, const char *key, component_loader f,
                         component **out) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, key);
    *out = NULL;
    if (!j || cJSON_IsNull(j)) return 0;
    if (!cJSON_IsObject(j)) return fail(c, TOKENIZER_ERR_PARSE, "%s must be an object", key);
    component *k = calloc(1, sizeof *k);
    if (!k) return fail(c, TOKENIZER_ERR_NOMEM, "out of memory");
    *out = k;
    return f(c, j, k, 0);
}

/* ------------------------------------------------------------------------ */
/* Post-processor: everything we support reduces to one template of ids with
 * -1 standing for the encoded sequence. */

static int template_set(loadctx *c, post_template *t, const int32_t *ids, size_t n) {
    int32_t *p = malloc((n ? n : 1) * sizeof *p);
    if (!p) return fail(c, TOKENIZER_ERR_NOMEM, "out of memory");
    memcpy(p, ids, n * sizeof *p);
    free(t->ids);
    t->ids = p;
    t->n = n;
    t->present = true;
    return 0;
}

/* Replaces the -1 of outer by inner (Sequence of processors: each wraps the
 * previous result). */
static int template_compose(loadctx *c, post_template *acc, const post_template *outer) {
    if (!acc->present) return template_set(c, acc, outer->ids, outer->n);
    size_t n = 0;
    for (size_t i = 0; i < outer->n; i++) n += outer->ids[i] == -1 ? acc->n : 1;
    int32_t *p = malloc((n ? n : 1) * sizeof *p);
    if (!p) return fail(c, TOKENIZER_ERR_NOMEM, "out of memory");
    size_t k = 0;
    for (size_t i = 0; i < outer->n; i++) {
        if (outer->ids[i] == -1) {
            memcpy(p + k, acc->ids, acc->n * sizeof *p);
            k += acc->n;
        } else
            p[k++] = outer->ids[i];
    }
    free(acc->ids);
    acc->ids = p;
    acc->n = n;
    return 0;
}

static int id_of_pair(loadctx *c, const cJSON *pair, int32_t *id) {
    const cJSON *v = cJSON_IsArray(pair) ? cJSON_GetArrayItem(pair, 1) : NULL;
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble >= TK_MAX_ID)
        return fail(c, TOKENIZER_ERR_PARSE, "post_processor: bad [token, id] pair");
    *id = (int32_t)v->valuedouble;
    return 0;
}

static int load_post(loadctx *c, const cJSON *j, post_template *acc, int depth) {
    if (!j || cJSON_IsNull(j)) return 0;
    if (depth > TK_MAX_DEPTH) return fail(c, TOKENIZER_ERR_PARSE, "post_processor nested too deeply");
    const char *type = jstr(j, "type");
    if (!type) return fail(c, TOKENIZER_ERR_PARSE, "post_processor without a type");
    if (!strcmp(type, "ByteLevel")) return 0;
    if (!strcmp(type, "Sequence")) {
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(j, "processors"), *e;
        if (!cJSON_IsArray(arr)) return fail(c, TOKENIZER_ERR_PARSE, "post_processor Sequence needs processors");
        cJSON_ArrayForEach(e, arr) if (load_post(c, e, acc, depth + 1)) return c->status;
        return 0;
    }
    post_template t = {0};
    int rc = 0;
    if (!strcmp(type, "BertProcessing") || !strcmp(type, "RobertaProcessing")) {
        int32_t ids[3] = {0, -1, 0};
        if (id_of_pair(c, cJSON_GetObjectItemCaseSensitive(j, "cls"), &ids[0]) ||
            id_of_pair(c, cJSON_GetObjectItemCaseSensitive(j, "sep"), &ids[2]))
            return c->status;
        rc = template_set(c, &t, ids, 3);
    } else if (!strcmp(type, "TemplateProcessing")) {
        const cJSON *single = cJSON_GetObjectItemCaseSensitive(j, "single"), *e;
        const cJSON *special = cJSON_GetObjectItemCaseSensitive(j, "special_tokens");
        if (!cJSON_IsArray(single)) return fail(c, TOKENIZER_ERR_PARSE, "TemplateProcessing needs 'single'");
        size_t cap = 16, n = 0;
        int32_t *ids = malloc(cap * sizeof *ids);
        if (!ids) return fail(c, TOKENIZER_ERR_NOMEM, "out of memory");
        cJSON_ArrayForEach(e, single) {
            const cJSON *st = cJSON_GetObjectItemCaseSensitive(e, "SpecialToken");
            const cJSON *sq = cJSON_GetObjectItemCaseSensitive(e, "Sequence");
            const cJSON *add = NULL;
            int32_t seq = -1;
            size_t n_add = 1;
            if (st) {
                const char *name = jstr(st, "id");
                const cJSON *spec = name ? cJSON_GetObjectItemCaseSensitive(special, name) : NULL;
                add = cJSON_GetObjectItemCaseSensitive(spec, "ids");
                if (!cJSON_IsArray(add)) {
                    rc = fail(c, TOKENIZER_ERR_PARSE, "TemplateProcessing: unknown special token '%s'",
                              name ? name : "?");
                    break;
                }
                n_add = (size_t)cJSON_GetArraySize(add);
            } else if (!sq) {
                rc = fail(c, TOKENIZER_ERR_PARSE, "TemplateProcessing: bad piece in 'single'");
                break;
            }
            if (n + n_add > cap) {
                while (n + n_add > cap) cap *= 2;
                int32_t *p = realloc(ids, cap * sizeof *ids);
                if (!p) {
                    rc = fail(c, TOKENIZER_ERR_NOMEM, "out of memory");
                    break;
                }
                ids = p;
            }
            if (!add) {
                ids[n++] = seq;
                continue;
            }
            const cJSON *v;
            cJSON_ArrayForEach(v, add) {
                if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble >= TK_MAX_ID) {
                    rc = fail(c, TOKENIZER_ERR_PARSE, "TemplateProcessing: bad id");
                    break;
                }
                ids[n++] = (int32_t)v->valuedouble;
            }
            if (rc) break;
        }
        if (!rc) rc = template_set(c, &t, ids, n);
        free(ids);
    } else
        return fail(c, TOKENIZER_ERR_UNSUPPORTED, "unsupported post_processor type '%s'", type);
    if (!rc) rc = template_compose(c, acc, &t);
    free(t.ids);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Model                                                                    */

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
    if (!cJSON_IsString(v)) return fail(c, TOKENIZER_ERR_PARSE, "model.%s must be a string", key);
    *len = strlen(v->valuestring);
    if (*len == 0) return 0; /* an empty prefix/suffix is the same as none */
    *out = dup_n(v->valuestring, *len);
    return *out ? 0 : fail(c, TOKENIZER_ERR_NOMEM, "out of memory");
}

static int add_merge(loadctx *c, tokenizer *t, const char *a, size_t la, const char *b, size_t lb,
                     uint32_t rank, sbuf *tmp) {
    int32_t ia = strmap_get(&t->vocab, t->tok, t->tok_len, a, la);
    int32_t ib = strmap_get(&t->vocab, t->tok, t->tok_len, b, lb);
    if (ia < 0 || ib < 0)
        return fail(c, TOKENIZER_ERR_PARSE, "merge token '%.*s' is not in the vocabulary",
                    (int)(ia < 0 ? la : lb), ia < 0 ? a : b);
    size_t skip = t->cont_prefix_len;
    if (lb < skip) return fail(c, TOKENIZER_ERR_PARSE, "merge token shorter than the subword prefix");
    tmp->len = 0;
    if (sbuf_add(tmp, a, la) || sbuf_add(tmp, b + skip, lb - skip))
        return fail(c, TOKENIZER_ERR_NOMEM, "out of memory");
    int32_t id = strmap_get(&t->vocab, t->tok, t->tok_len, tmp->p, tmp->len);
    if (id < 0)
        return fail(c, TOKENIZER_ERR_PARSE, "merged token '%.*s' is not in the vocabulary",
                    (int)tmp->len, tmp->p);
    uint64_t key = pair_key(ia, ib);
    size_t i = hash_u64(key) & t->merges.mask;
    while (t->merges.e[i].key != UINT64_MAX && t->merges.e[i].key != key)
        i = (i + 1) & t->merges.mask;
    t->merges.e[i] = (merge_entry){key, rank, id}; /* a later duplicate wins, as in HF */
    return 0;
}

static int load_model(loadctx *c, tokenizer *t, const cJSON *m, size_t *model_size) {
    if (!cJSON_IsObject(m)) return fail(c, TOKENIZER_ERR_PARSE, "missing model");
    const char *type = jstr(m, "type");
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(m, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(m, "merges");
    if (type && strcmp(type, "BPE"))
        return fail(c, TOKENIZER_ERR_UNSUPPORTED, "unsupported model type '%s' (only BPE)", type);
    if (!cJSON_IsObject(vocab) || !cJSON_IsArray(merges))
        return fail(c, TOKENIZER_ERR_PARSE, "BPE model needs a vocab object and a merges array");
    const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(m, "dropout");
    if (cJSON_IsNumber(dropout) && dropout->valuedouble > 0 && dropout->valuedouble < 1)
        return fail(c, TOKENIZER_ERR_UNSUPPORTED, "BPE dropout is not supported");
    t->byte_fallback = jbool(m, "byte_fallback", false);
    t->fuse_unk = jbool(m, "fuse_unk", false);
    t->ignore_merges = jbool(m, "ignore_merges", false);
    if (opt_string(c, m, "continuing_subword_prefix", &t->cont_prefix, &t->cont_prefix_len) ||
        opt_string(c, m, "end_of_word_suffix", &t->end_suffix, &t->end_suffix_len))
        return c->status;

    size_t n = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, vocab) {
        int32_t id;
        if (json_id(e, &id)) return fail(c, TOKENIZER_ERR_PARSE, "vocab id of '%s' is not a valid id", e->string);
        if ((size_t)id + 1 > t->n_ids) t->n_ids = (size_t)id + 1;
        n++;
    }
    *model_size = n;
    return 0;
}

static int fill_model(loadctx *c, tokenizer *t, const cJSON *m) {
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(m, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(m, "merges");
    size_t n = (size_t)cJSON_GetArraySize(vocab);
    if (strmap_init(&t->vocab, n)) return fail(c, TOKENIZER_ERR_NOMEM, "out of memory");
    const cJSON *e;
    cJSON_ArrayForEach(e, vocab) {
        int32_t id = (int32_t)e->valuedouble;
        size_t len = strlen(e->string);
        free(t->tok[id]); /* two strings for one id: keep the last */
        t->tok[id] = dup_n(e->string, len);
        if (!t->tok[id]) return fail(c, TOKENIZER_ERR_NOMEM, "out of memory");
        t->tok_len[id] = (uint32_t)len;
    }
    /* Rebuild the map from the final strings so that every slot points at a
     * live string (duplicate ids above may have replaced one). */
    cJSON_ArrayForEach(e, vocab) {
        int32_t id = (int32_t)e->valuedouble;
        size_t len = strlen(e->string);
        if (t->tok_len[id] == len && memcmp(t->tok[id], e->string, len) == 0)
            strmap_put(&t->vocab, t->tok, t->tok_len, id);
    }
    int32_t unk = -1;
    const char *unk_s = jstr(m, "unk_token");
    if (unk_s) {
        unk = strmap_get(&t->vocab, t->tok, t->tok_len, unk_s, strlen(unk_s));
        if (unk < 0) return fail(c, TOKENIZER_ERR_PARSE, "unk_token '%s' is not in the vocabulary", unk_s);
    }
    t->unk_id = unk;
    for (int b = 0; b < 256; b++) {
        char s[8];
        snprintf(s, sizeof s, "<0x%02X>", b);
        t->byte_ids[b] = strmap_get(&t->vocab, t->tok, t->tok_len, s, 6);
    }

    size_t nm = (size_t)cJSON_GetArraySize(merges), cap = 16;
    while (cap < nm * 2 + 2) cap *= 2;
    t->merges.e = malloc(cap * sizeof *t->merges.e);
    if (!t->merges.e) return fail(c, TOKENIZER_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < cap; i++) t->merges.e[i].key = UINT64_MAX;
    t->merges.mask = cap - 1;
    sbuf tmp = {0};
    uint32_t rank = 0;
    int rc = 0;
    cJSON_ArrayForEach(e, merges) {
        if (cJSON_IsString(e)) {
            const char *s = e->valuestring, *sp = strchr(s, ' ');
            if (!sp || strchr(sp + 1, ' ')) {
                rc = fail(c, TOKENIZER_ERR_PARSE, "merge %u is not two tokens separated by one space", rank + 1);
                break;
            }
            rc = add_merge(c, t, s, (size_t)(sp - s), sp + 1, strlen(sp + 1), rank, &tmp);
        } else if (cJSON_IsArray(e) && cJSON_GetArraySize(e) == 2 &&
                   cJSON_IsString(cJSON_GetArrayItem(e, 0)) && cJSON_IsString(cJSON_GetArrayItem(e, 1))) {
            const char *a = cJSON_GetArrayItem(e, 0)->valuestring, *b = cJSON_GetArrayItem(e, 1)->valuestring;
            rc = add_merge(c, t, a, strlen(a), b, strlen(b), rank, &tmp);
        } else
            rc = fail(c, TOKENIZER_ERR_PARSE, "merge %u is neither \"a b\" nor [a, b]", rank + 1);
        if (rc) break;
        rank++;
    }
    free(tmp.p);
    if (rc) return rc;

    if (!t->cont_prefix && !t->end_suffix) {
        t->cp_id = malloc(0x10000 * sizeof *t->cp_id);
        if (!t->cp_id) return fail(c, TOKENIZER_ERR_NOMEM, "out of memory");
        for (size_t i = 0; i < 0x10000; i++) {
            char s[4];
            int k = utf8_encode((int32_t)i, s);
            t->cp_id[i] = (i >= 0xD800 && i < 0xE000) ? -1 : strmap_get(&t->vocab, t->tok, t->tok_len, s, (size_t)k);
        }
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Matching (onig find_iter semantics) and normalizers                      */

typedef struct {
    size_t s, e;
} span;

typedef struct {
    span *v;
    size_t n, cap;
} spanlist;

static int spans_add(spanlist *l, size_t s, size_t e) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        span *v = realloc(l->v, cap * sizeof *v);
        if (!v) return TOKENIZER_ERR_NOMEM;
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = (span){s, e};
    return 0;
}

static size_t utf8_char_len(const char *s, size_t n, size_t i) {
    size_t k = 1;
    while (i + k < n && ((uint8_t)s[i + k] & 0xC0) == 0x80) k++;
    return k;
}

/* All matches of p in s[0..n), left to right, non-overlapping; an empty
 * match right after the previous match is skipped (onig FindMatches). */
static int pattern_find(const pattern *p, const char *s, size_t n, pcre2_match_data *md,
                        spanlist *out) {
    out->n = 0;
    if (!p->re) {
        if (!p->lit_len) return 0;
        size_t i = 0;
        while (i + p->lit_len <= n) {
            const char *f = memmem(s + i, n - i, p->lit, p->lit_len);
            if (!f) break;
            size_t st = (size_t)(f - s);
            if (spans_add(out, st, st + p->lit_len)) return TOKENIZER_ERR_NOMEM;
            i = st + p->lit_len;
        }
        return 0;
    }
    size_t start = 0, last_end = 0;
    bool have_last = false;
    while (start <= n) {
        int rc = pcre2_match(p->re, (PCRE2_SPTR)s, n, start, PCRE2_NO_UTF_CHECK, md, NULL);
        if (rc == PCRE2_ERROR_JIT_STACKLIMIT) /* the interpreter keeps its stack on the heap */
            rc = pcre2_match(p->re, (PCRE2_SPTR)s, n, start, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0 && rc != 0) {
            if (rc == PCRE2_ERROR_MATCHLIMIT || rc == PCRE2_ERROR_DEPTHLIMIT ||
                rc == PCRE2_ERROR_HEAPLIMIT || rc == PCRE2_ERROR_JIT_STACKLIMIT)
                return TOKENIZER_ERR_LIMIT;
            return TOKENIZER_ERR_INVALID_ARG;
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t ms = ov[0], me = ov[1];
        if (ms == me && have_last && last_end == me) {
            if (start >= n) break;
            start += utf8_char_len(s, n, start);
            continue;
        }
        if (spans_add(out, ms, me)) return TOKENIZER_ERR_NOMEM;
        start = me;
        last_end = me;
        have_last = true;
    }
    return 0;
}

typedef struct {
    pcre2_match_data *md;
    spanlist m;
    sbuf tmp;
} normctx;

/* Stable counting sort by canonical combining class of cps[0..n) (all
 * non-starters): the canonical ordering, in O(n) where utf8proc's
 * bubble sort is O(n^2) on long runs of combining marks. */
static void sort_by_ccc(int32_t *cps, size_t n, int32_t *tmp) {
    size_t count[257] = {0};
    for (size_t i = 0; i < n; i++) count[utf8proc_get_property(cps[i])->combining_class + 1]++;
    for (int c = 1; c < 257; c++) count[c] += count[c - 1];
    for (size_t i = 0; i < n; i++) tmp[count[utf8proc_get_property(cps[i])->combining_class]++] = cps[i];
    memcpy(cps, tmp, n * sizeof *cps);
}

/* NFD / NFKD (compose false) or NFC / NFKC of s (valid UTF-8) into o:
 * utf8proc's per-character decomposition, our canonical ordering, then
 * utf8proc's composition. */
static int unicode_normalize(const sbuf *s, sbuf *o, bool compat, bool compose) {
    size_t cap = s->len + 16, n = 0;
    int32_t *buf = malloc(cap * sizeof *buf), *tmp = NULL;
    if (!buf) return TOKENIZER_ERR_NOMEM;
    int opt = UTF8PROC_DECOMPOSE | (compat ? UTF8PROC_COMPAT : 0);
    size_t i = 0;
    while (i < s->len) {
        int32_t cp = 0;
        size_t k = utf8_decode((const uint8_t *)s->p + i, s->len - i, &cp);
        if (!k) {
            free(buf);
            return TOKENIZER_ERR_INVALID_UTF8;
        }
        i += k;
        for (;;) {
            int bound = 0;
            utf8proc_ssize_t r = utf8proc_decompose_char(cp, buf + n, (utf8proc_ssize_t)(cap - n),
                                                         (utf8proc_option_t)opt, &bound);
            if (r < 0) {
                free(buf);
                return TOKENIZER_ERR_INVALID_UTF8;
            }
            if ((size_t)r <= cap - n) {
                n += (size_t)r;
                break;
            }
            cap = cap * 2 + (size_t)r;
            int32_t *nb = realloc(buf, cap * sizeof *nb);
            if (!nb) {
                free(buf);
                return TOKENIZER_ERR_NOMEM;
            }
            buf = nb;
        }
    }
    /* canonical ordering of each run of non-starters */
    for (size_t a = 0; a < n;) {
        if (utf8proc_get_property(buf[a])->combining_class == 0) {
            a++;
            continue;
        }
        size_t b = a;
        while (b < n && utf8proc_get_property(buf[b])->combining_class != 0) b++;
        if (b - a > 1) {
            if (!tmp) tmp = malloc(n * sizeof *tmp);
            if (!tmp) {
                free(buf);
                return TOKENIZER_ERR_NOMEM;
            }
            sort_by_ccc(buf + a, b - a, tmp);
        }
        a = b;
    }
    free(tmp);
    /* composition and UTF-8 encoding, in place (needs 4 bytes per cp: ok) */
    utf8proc_ssize_t len = utf8proc_reencode(buf, (utf8proc_ssize_t)n,
                                             (utf8proc_option_t)(UTF8PROC_STABLE | (compose ? UTF8PROC_COMPOSE : 0)));
    if (len < 0) {
        free(buf);
        return TOKENIZER_ERR_INVALID_UTF8;
    }
    o->len = 0;
    int rc = sbuf_add(o, buf, (size_t)len);
    free(buf);
    return rc ? TOKENIZER_ERR_NOMEM : 0;
}

static int norm_apply(const component *k, sbuf *s, normctx *x, int depth);

static int norm_swap(sbuf *s, sbuf *tmp) {
    sbuf t = *s;
    *s = *tmp;
    *tmp = t;
    return 0;
}

static int norm_apply(const component *k, sbuf *s, normctx *x, int depth) {
    sbuf *o = &x->tmp;
    o->len = 0;
    switch (k->type) {
    case NORM_SEQ:
        for (size_t i = 0; i < k->n_sub; i++) {
            int rc = norm_apply(&k->sub[i], s, x, depth + 1);
            if (rc) return rc;
        }
        return 0;
    case NORM_NFC:
    case NORM_NFD:
    case NORM_NFKC:
    case NORM_NFKD: {
        if (!s->len) return 0;
        if (k->type == NORM_NFC) {
            /* Code points below U+0300 (lead bytes below 0xCC) are NFC-stable
             * and never compose with each other: skip the common case. */
            size_t i = 0;
            while (i < s->len && (uint8_t)s->p[i] < 0xCC) i++;
            if (i == s->len) return 0;
        }
        bool compat = k->type == NORM_NFKC || k->type == NORM_NFKD;
        bool compose = k->type == NORM_NFC || k->type == NORM_NFKC;
        int rc = unicode_normalize(s, o, compat, compose);
        if (rc) return rc;
        return norm_swap(s, o);
    }
    case NORM_LOWER: {
        size_t i = 0;
        while (i < s->len) {
            int32_t cp = 0;
            size_t n = utf8_decode((const uint8_t *)s->p + i, s->len - i, &cp);
            if (!n) return TOKENIZER_ERR_INVALID_UTF8;
            i += n;
            char b[8];
            int m;
            if (cp == 0x130) { /* the one code point whose lowercase is two */
                memcpy(b, "i\xCC\x87", 3);
                m = 3;
            } else
                m = utf8_encode(utf8proc_tolower(cp), b);
            if (sbuf_add(o, b, (size_t)m)) return TOKENIZER_ERR_NOMEM;
        }
        return norm_swap(s, o);
    }
    case NORM_REPLACE: {
        int rc = pattern_find(&k->pat, s->p ? s->p : "", s->len, x->md, &x->m);
        if (rc) return rc;
        size_t prev = 0;
        for (size_t i = 0; i < x->m.n; i++) {
            if (sbuf_add(o, s->p + prev, x->m.v[i].s - prev) || sbuf_add(o, k->content, k->content_len))
                return TOKENIZER_ERR_NOMEM;
            prev = x->m.v[i].e;
        }
        if (sbuf_add(o, s->p ? s->p + prev : "", s->len - prev)) return TOKENIZER_ERR_NOMEM;
        return norm_swap(s, o);
    }
    case NORM_PREPEND:
        if (!s->len) return 0;
        if (sbuf_add(o, k->content, k->content_len) || sbuf_add(o, s->p, s->len)) return TOKENIZER_ERR_NOMEM;
        return norm_swap(s, o);
    case NORM_STRIP: {
        size_t a = 0, b = s->len;
        if (k->flag_a) {
            while (a < b) {
                int32_t cp = 0;
                size_t n = utf8_decode((const uint8_t *)s->p + a, b - a, &cp);
                if (!n || !cp_is_whitespace(cp)) break;
                a += n;
            }
        }
        if (k->flag_b) {
            while (b > a) {
                size_t st;
                int32_t cp = utf8_last_cp(s->p, b, &st);
                if (!cp_is_whitespace(cp) || st < a) break;
                b = st;
            }
        }
        if (sbuf_add(o, s->p ? s->p + a : "", b - a)) return TOKENIZER_ERR_NOMEM;
        return norm_swap(s, o);
    }
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Added tokens                                                             */

static int32_t trie_child(const added_matcher *m, int32_t node, uint8_t byte) {
    uint64_t key = ((uint64_t)node << 8) | byte;
    size_t i = hash_u64(key) & m->mask;
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
                size_t k = hash_u64(key) & m->mask;
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

typedef struct {
    int32_t added; /* index into t->added or -1 for text */
    size_t s, e;
} segment;

typedef struct {
    segment *v;
    size_t n, cap;
} seglist;

static int segs_add(seglist *l, int32_t added, size_t s, size_t e) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        segment *v = realloc(l->v, cap * sizeof *v);
        if (!v) return TOKENIZER_ERR_NOMEM;
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = (segment){added, s, e};
    return 0;
}

/* AddedVocabulary::find_matches: splits s at added tokens of matcher m,
 * honouring single_word / lstrip / rstrip. Appends to out. */
static int added_split(const tokenizer *t, const added_matcher *m, const char *s, size_t n,
                       seglist *out) {
    size_t start_offset = 0, i = 0;
    if (m->any) {
        while (i < n) {
            if (!m->first_byte[(uint8_t)s[i]]) {
                i++;
                continue;
            }
            int32_t hit = -1, node = 0;
            for (size_t j = i; j < n; j++) {
                node = trie_child(m, node, (uint8_t)s[j]);
                if (node < 0) break;
                if (m->term[node] >= 0) hit = m->term[node];
            }
            if (hit < 0) {
                i++;
                continue;
            }
            const added_token *a = &t->added[hit];
            size_t st = i, stop = i + a->pattern_len;
            i = stop;
            if (a->single_word) {
                bool start_space = st == 0 || !cp_is_alnum(utf8_last_cp(s, st, NULL));
                int32_t cp = 0;
                bool stop_space = stop == n || !utf8_decode((const uint8_t *)s + stop, n - stop, &cp) ||
                                  !cp_is_alnum(cp);
                if (!start_space || !stop_space) continue;
            }
            if (a->lstrip) {
                size_t ns = st;
                while (ns > 0) {
                    size_t cs;
                    int32_t cp = utf8_last_cp(s, ns, &cs);
                    if (!cp_is_whitespace(cp)) break;
                    ns = cs;
                }
                st = ns > start_offset ? ns : start_offset;
            }
            if (a->rstrip) {
                while (stop < n) {
                    int32_t cp = 0;
                    size_t k = utf8_decode((const uint8_t *)s + stop, n - stop, &cp);
                    if (!k || !cp_is_whitespace(cp)) break;
                    stop += k;
                }
            }
            if (st > start_offset && segs_add(out, -1, start_offset, st)) return TOKENIZER_ERR_NOMEM;
            if (segs_add(out, hit, st, stop)) return TOKENIZER_ERR_NOMEM;
            start_offset = stop;
        }
    }
    if (start_offset < n && segs_add(out, -1, start_offset, n)) return TOKENIZER_ERR_NOMEM;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Loading                                                                  */

/* Ids of added tokens follow AddedVocabulary::add_tokens: an added token
 * whose content is in the model vocabulary takes that id, else the next id
 * after the model vocabulary and the added tokens so far (the "id" of the
 * JSON is only a hint there, and agrees in well-formed files). */
static int load_added(loadctx *c, tokenizer *t, const cJSON *arr, size_t model_size) {
    if (!arr || cJSON_IsNull(arr)) return 0;
    if (!cJSON_IsArray(arr)) return fail(c, TOKENIZER_ERR_PARSE, "added_tokens must be an array");
    size_t n = (size_t)cJSON_GetArraySize(arr);
    t->added = calloc(n ? n : 1, sizeof *t->added);
    if (!t->added) return fail(c, TOKENIZER_ERR_NOMEM, "out of memory");
    int64_t max_added = -1;
    const cJSON *e;
    cJSON_ArrayForEach(e, arr) {
        const char *content = jstr(e, "content");
        if (!content) return fail(c, TOKENIZER_ERR_PARSE, "added token without content");
        size_t len = strlen(content);
        if (!len) continue;
        added_token a = {0};
        a.single_word = jbool(e, "single_word", false);
        a.lstrip = jbool(e, "lstrip", false);
        a.rstrip = jbool(e, "rstrip", false);
        a.special = jbool(e, "special", false);
        a.normalized = jbool(e, "normalized", !a.special);
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
        int32_t id = strmap_get(&t->vocab, t->tok, t->tok_len, content, len);
        if (existing >= 0) id = t->added[existing].id;
        if (id < 0) {
            int64_t next = (max_added >= (int64_t)model_size || model_size == 0) ? max_added + 1
                                                                                : (int64_t)model_size;
            if (next < (int64_t)model_size) next = (int64_t)model_size;
            if (next >= TK_MAX_ID) return fail(c, TOKENIZER_ERR_PARSE, "too many added tokens");
            id = (int32_t)next;
        }
        if (id > max_added) max_added = id;
        a.id = id;
        a.len = len;
        a.content = dup_n(content, len);
        if (!a.content) return fail(c, TOKENIZER_ERR_NOMEM, "out of memory");
        if (existing >= 0) { /* same content, other flags: the later one replaces it */
            free(t->added[existing].content);
            free(t->added[existing].pattern);
            t->added[existing] = a;
        } else
            t->added[t->n_added++] = a;
    }
    return 0;
}

static int finish_added(loadctx *c, tokenizer *t) {
    for (size_t i = 0; i < t->n_added; i++)
        if ((size_t)t->added[i].id + 1 > t->n_ids) t->n_ids = (size_t)t->added[i].id + 1;
    t->added_of_id = malloc((t->n_ids ? t->n_ids : 1) * sizeof *t->added_of_id);
    t->added_str = calloc(t->n_ids ? t->n_ids : 1, sizeof *t->added_str);
    t->added_len = calloc(t->n_ids ? t->n_ids : 1, sizeof *t->added_len);
    if (!t->added_of_id || !t->added_str || !t->added_len || strmap_init(&t->added_map, t->n_added))
        return fail(c, TOKENIZER_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < t->n_ids; i++) t->added_of_id[i] = -1;
    normctx x = {0};
    x.md = pcre2_match_data_create(1, NULL);
    sbuf s = {0};
    int rc = x.md ? 0 : fail(c, TOKENIZER_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < t->n_added && !rc; i++) {
        added_token *a = &t->added[i];
        t->added_of_id[a->id] = (int32_t)i;
        t->added_str[a->id] = a->content;
        t->added_len[a->id] = (uint32_t)a->len;
        strmap_put(&t->added_map, t->added_str, t->added_len, a->id);
        s.len = 0;
        if (sbuf_add(&s, a->content, a->len)) {
            rc = fail(c, TOKENIZER_ERR_NOMEM, "out of memory");
            break;
        }
        if (a->normalized && t->normalizer) {
            int r = norm_apply(t->normalizer, &s, &x, 0);
            if (r) rc = fail(c, r, "normalizing added token '%s': %s", a->content, tokenizer_status_str(r));
        }
        if (!rc) {
            a->pattern = dup_n(s.p, s.len);
            a->pattern_len = s.len;
            if (!a->pattern) rc = fail(c, TOKENIZER_ERR_NOMEM, "out of memory");
        }
    }
    free(s.p);
    free(x.tmp.p);
    free(x.m.v);
    pcre2_match_data_free(x.md);
    if (rc) return rc;
    if (matcher_build(&t->m_raw, t->added, t->n_added, false) ||
        matcher_build(&t->m_norm, t->added, t->n_added, true))
        return fail(c, TOKENIZER_ERR_NOMEM, "out of memory");
    return 0;
}

static int32_t find_id(const tokenizer *t, const char *s) {
    return s ? tokenizer_token_to_id(t, s, strlen(s)) : -1;
}

/* bos_token / eos_token of tokenizer_config.json: a string or an
 * AddedToken object. */
static const char *config_token(const cJSON *cfg, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    if (cJSON_IsString(v)) return v->valuestring;
    if (cJSON_IsObject(v)) return jstr(v, "content");
    return NULL;
}

/* transformers' LlamaTokenizerFast.update_post_processor: the template
 * becomes [bos] $A [eos] after add_bos_token / add_eos_token. */
static int apply_config(loadctx *c, tokenizer *t, const char *text, size_t len) {
    cJSON *cfg = cJSON_ParseWithLength(text, len);
    if (!cfg) return fail(c, TOKENIZER_ERR_PARSE, "tokenizer_config.json is not valid JSON");
    int rc = 0;
    const char *bos = config_token(cfg, "bos_token"), *eos = config_token(cfg, "eos_token");
    int32_t bos_id = find_id(t, bos), eos_id = find_id(t, eos);
    if (bos_id >= 0) t->bos_id = bos_id;
    if (eos_id >= 0) t->eos_id = eos_id;
    const char *cls = jstr(cfg, "tokenizer_class");
    if (cls && (!strcmp(cls, "LlamaTokenizerFast") || !strcmp(cls, "LlamaTokenizer") ||
                !strcmp(cls, "GemmaTokenizerFast") || !strcmp(cls, "GemmaTokenizer"))) {
        bool add_bos = jbool(cfg, "add_bos_token", true), add_eos = jbool(cfg, "add_eos_token", false);
        int32_t ids[3];
        size_t n = 0;
        if (add_bos && bos_id < 0) rc = fail(c, TOKENIZER_ERR_PARSE, "add_bos_token without a known bos_token");
        else if (add_eos && eos_id < 0) rc = fail(c, TOKENIZER_ERR_PARSE, "add_eos_token without a known eos_token");
        else {
            if (add_bos) ids[n++] = bos_id;
            ids[n++] = -1;
            if (add_eos) ids[n++] = eos_id;
            rc = template_set(c, &t->post, ids, n);
        }
    }
    cJSON_Delete(cfg);
    return rc;
}

int tokenizer_load_json(const char *json, size_t len, tokenizer **out, char *err, size_t errlen) {
    assert(out && (json || len == 0));
    loadctx c = {err, errlen, 0};
    *out = NULL;
    bl_init();
    /* Strings from the file end up inside the text that the regexes scan
     * without UTF checks (Replace, Prepend), and in decoded text: like HF
     * (serde), refuse a file that is not UTF-8. */
    if (!utf8_valid(json, len)) return fail(&c, TOKENIZER_ERR_PARSE, "tokenizer.json is not valid UTF-8");
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root) return fail(&c, TOKENIZER_ERR_PARSE, "tokenizer.json is not valid JSON");
    tokenizer *t = calloc(1, sizeof *t);
    if (!t) {
        cJSON_Delete(root);
        return fail(&c, TOKENIZER_ERR_NOMEM, "out of memory");
    }
    t->bos_id = t->eos_id = t->unk_id = -1;
    size_t model_size = 0;
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!cJSON_IsObject(root)) {
        fail(&c, TOKENIZER_ERR_PARSE, "tokenizer.json must be an object");
        goto fail;
    }
    if (load_model(&c, t, model, &model_size)) goto fail;
    if (load_optional(&c, root, "normalizer", load_normalizer, &t->normalizer) ||
        load_optional(&c, root, "pre_tokenizer", load_pretokenizer, &t->pre) ||
        load_optional(&c, root, "decoder", load_decoder, &t->decoder) ||
        load_post(&c, cJSON_GetObjectItemCaseSensitive(root, "post_processor"), &t->post, 0))
        goto fail;
    t->tok = calloc(t->n_ids ? t->n_ids : 1, sizeof *t->tok);
    t->tok_len = calloc(t->n_ids ? t->n_ids : 1, sizeof *t->tok_len);
    if (!t->tok || !t->tok_len) {
        fail(&c, TOKENIZER_ERR_NOMEM, "out of memory");
        goto fail;
    }
    if (fill_model(&c, t, model)) goto fail;
    if (load_added(&c, t, cJSON_GetObjectItemCaseSensitive(root, "added_tokens"), model_size)) goto fail;
    /* grow the per-id arrays if added tokens extend the id space */
    size_t old = t->n_ids;
    for (size_t i = 0; i < t->n_added; i++)
        if ((size_t)t->added[i].id + 1 > t->n_ids) t->n_ids = (size_t)t->added[i].id + 1;
    if (t->n_ids > old) {
        char **tok = realloc(t->tok, t->n_ids * sizeof *tok);
        if (tok) t->tok = tok;
        uint32_t *tl = realloc(t->tok_len, t->n_ids * sizeof *tl);
        if (tl) t->tok_len = tl;
        if (!tok || !tl) {
            fail(&c, TOKENIZER_ERR_NOMEM, "out of memory");
            goto fail;
        }
        memset(t->tok + old, 0, (t->n_ids - old) * sizeof *tok);
        memset(t->tok_len + old, 0, (t->n_ids - old) * sizeof *tl);
    }
    if (finish_added(&c, t)) goto fail;
    for (size_t i = 0; i < t->post.n; i++)
        if (t->post.ids[i] >= 0 && (size_t)t->post.ids[i] >= t->n_ids) {
            fail(&c, TOKENIZER_ERR_PARSE, "post_processor id %d outside the vocabulary", t->post.ids[i]);
            goto fail;
        }
    /* bos/eos from the template: a special token before / after $A */
    for (size_t i = 0; i < t->post.n; i++) {
        if (t->post.ids[i] == -1) {
            if (i > 0) t->bos_id = t->post.ids[i - 1];
            if (i + 1 < t->post.n) t->eos_id = t->post.ids[i + 1];
            break;
        }
    }
    t->dec_bytelevel_only = t->decoder && t->decoder->type == DEC_BYTELEVEL;
    t->cache = calloc(TK_CACHE_SLOTS, sizeof *t->cache);
    if (!t->cache) {
        fail(&c, TOKENIZER_ERR_NOMEM, "out of memory");
        goto fail;
    }
    for (int i = 0; i < TK_CACHE_STRIPES; i++) pthread_mutex_init(&t->cache_lock[i], NULL);
    cJSON_Delete(root);
    *out = t;
    return 0;
fail:
    cJSON_Delete(root);
    tokenizer_destroy(t);
    return c.status ? c.status : TOKENIZER_ERR_PARSE;
}

int tokenizer_load(const char *path, tokenizer **out, char *err, size_t errlen) {
    loadctx c = {err, errlen, 0};
    *out = NULL;
    struct stat st;
    if (stat(path, &st) != 0) return fail(&c, TOKENIZER_ERR_IO, "%s: no such file or directory", path);
    bool is_dir = S_ISDIR(st.st_mode);
    size_t plen = strlen(path);
    char *file = malloc(plen + 32);
    if (!file) return fail(&c, TOKENIZER_ERR_NOMEM, "out of memory");
    if (is_dir) snprintf(file, plen + 32, "%s/tokenizer.json", path);
    else snprintf(file, plen + 32, "%s", path);
    size_t len;
    char msg[512];
    char *text = util_read_file(file, TK_MAX_JSON_BYTES, &len, msg, sizeof msg);
    if (!text) {
        free(file);
        return fail(&c, TOKENIZER_ERR_IO, "%s", msg);
    }
    int rc = tokenizer_load_json(text, len, out, msg, sizeof msg);
    free(text);
    if (rc) {
        fail(&c, rc, "%s: %s", file, msg);
        free(file);
        return rc;
    }
    if (is_dir) {
        snprintf(file, plen + 32, "%s/tokenizer_config.json", path);
        if (stat(file, &st) == 0) {
            text = util_read_file(file, TK_MAX_JSON_BYTES, &len, msg, sizeof msg);
            rc = text ? apply_config(&c, *out, text, len) : fail(&c, TOKENIZER_ERR_IO, "%s", msg);
            free(text);
            if (rc) {
                /* prefix the file name */
                snprintf(msg, sizeof msg, "%s", err ? err : "");
                if (err && errlen) snprintf(err, errlen, "%s: %s", file, msg);
                tokenizer_destroy(*out);
                *out = NULL;
            }
        }
    }
    free(file);
    return rc;
}

static void matcher_free(added_matcher *m) {
    free(m->edge);
    free(m->term);
}

void tokenizer_destroy(tokenizer *t) {
    if (!t) return;
    if (t->tok)
        for (size_t i = 0; i < t->n_ids; i++) free(t->tok[i]);
    free(t->tok);
    free(t->tok_len);
    free(t->vocab.slot);
    free(t->merges.e);
    free(t->cont_prefix);
    free(t->end_suffix);
    free(t->cp_id);
    for (size_t i = 0; i < t->n_added; i++) {
        free(t->added[i].content);
        free(t->added[i].pattern);
    }
    free(t->added);
    free(t->added_of_id);
    free(t->added_map.slot);
    free(t->added_str);
    free(t->added_len);
    matcher_free(&t->m_raw);
    matcher_free(&t->m_norm);
    component_free(t->normalizer);
    component_free(t->pre);
    component_free(t->decoder);
    free(t->post.ids);
    if (t->cache) {
        for (int i = 0; i < TK_CACHE_STRIPES; i++) pthread_mutex_destroy(&t->cache_lock[i]);
        free(t->cache);
    }
    free(t);
}

size_t tokenizer_vocab_size(const tokenizer *t) { return t->n_ids; }

int32_t tokenizer_token_to_id(const tokenizer *t, const char *s, size_t n) {
    int32_t id = strmap_get(&t->added_map, t->added_str, t->added_len, s, n);
    if (id >= 0) return id;
    return strmap_get(&t->vocab, t->tok, t->tok_len, s, n);
}

const char *tokenizer_id_to_token(const tokenizer *t, int32_t id, size_t *len) {
    if (id < 0 || (size_t)id >= t->n_ids) return NULL;
    if (t->added_str[id]) {
        *len = t->added_len[id];
        return t->added_str[id];
    }
    if (!t->tok[id]) return NULL;
    *len = t->tok_len[id];
    return t->tok[id];
}

bool tokenizer_is_special(const tokenizer *t, int32_t id) {
    if (id < 0 || (size_t)id >= t->n_ids || t->added_of_id[id] < 0) return false;
    return t->added[t->added_of_id[id]].special;
}

int32_t tokenizer_bos_id(const tokenizer *t) { return t->bos_id; }
int32_t tokenizer_eos_id(const tokenizer *t) { return t->eos_id; }

/* ------------------------------------------------------------------------ */
/* Encoding                                                                 */

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

typedef struct {
    const tokenizer *t;
    normctx nx;     /* match data, spans, scratch */
    sbuf arena;     /* text of all pieces */
    sbuf norm;      /* a normalized segment */
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

static int ids_add(encoder *e, int32_t id) {
    if (e->n_ids == e->ids_cap) {
        size_t cap = e->ids_cap ? e->ids_cap * 2 : 256;
        int32_t *p = realloc(e->ids, cap * sizeof *p);
        if (!p) return TOKENIZER_ERR_NOMEM;
        e->ids = p;
        e->ids_cap = cap;
    }
    e->ids[e->n_ids++] = id;
    return 0;
}

static int pieces_add(piecelist *l, size_t off, size_t len, bool first) {
    if (!len) return 0; /* PreTokenizedString::split drops empty pieces */
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        piece *v = realloc(l->v, cap * sizeof *v);
        if (!v) return TOKENIZER_ERR_NOMEM;
        l->v = v;
        l->cap = cap;
    }
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
            rc = pieces_add(out, p->off + rs, re - rs, p->first && rs == 0);
            break;
        case SPLIT_REMOVED:
            if (!is_match) rc = pieces_add(out, p->off + rs, re - rs, p->first && rs == 0);
            break;
        case SPLIT_CONTIGUOUS:
            if (have_cur && is_match == prev_match) cur_e = re;
            else {
                if (have_cur) rc = pieces_add(out, p->off + cur_s, cur_e - cur_s, p->first && cur_s == 0);
                cur_s = rs, cur_e = re, have_cur = true;
            }
            prev_match = is_match;
            break;
        case SPLIT_MERGED_PREV:
            if (is_match && !prev_match && have_cur) cur_e = re;
            else {
                if (have_cur) rc = pieces_add(out, p->off + cur_s, cur_e - cur_s, p->first && cur_s == 0);
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
                    rc = pieces_add(out, p->off + pend_s, rs - pend_s, p->first && pend_s == 0);
                    pend_s = rs; /* this match is pending now */
                } else {
                    rc = pieces_add(out, p->off + pend_s, re - pend_s, p->first && pend_s == 0);
                    have_pend = false;
                }
            } else if (is_match) {
                pend_s = rs;
                have_pend = true;
            } else
                rc = pieces_add(out, p->off + rs, re - rs, p->first && rs == 0);
            break;
        }
        if (rc) return rc;
    }
    if (behavior == SPLIT_MERGED_NEXT && have_pend)
        return pieces_add(out, p->off + pend_s, n - pend_s, p->first && pend_s == 0);
    if ((behavior == SPLIT_CONTIGUOUS || behavior == SPLIT_MERGED_PREV) && have_cur)
        return pieces_add(out, p->off + cur_s, cur_e - cur_s, p->first && cur_s == 0);
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
            if (spans_add(out, i, i + k)) return TOKENIZER_ERR_NOMEM;
        i += k;
    }
    return 0;
}

static int pre_apply(encoder *e, const component *k, int depth);

/* Applies f to every piece of e->a, writing e->b, then swaps. */
static int pre_one(encoder *e, const component *k) {
    piecelist *in = &e->a, *out = &e->b;
    out->n = 0;
    spanlist *m = &e->m2;
    for (size_t i = 0; i < in->n; i++) {
        piece p = in->v[i];
        int rc = 0;
        switch (k->type) {
        case PRE_SPLIT:
            rc = pattern_find(&k->pat, e->arena.p + p.off, p.len, e->nx.md, m);
            if (!rc) rc = split_piece(out, &p, m, k->behavior, k->invert);
            break;
        case PRE_DIGITS:
            rc = char_spans(e->arena.p + p.off, p.len, cp_is_numeric, 0, m);
            if (!rc) rc = split_piece(out, &p, m, k->flag_a ? SPLIT_ISOLATED : SPLIT_CONTIGUOUS, false);
            break;
        case PRE_WHITESPACE_SPLIT:
            rc = char_spans(e->arena.p + p.off, p.len, cp_is_whitespace, 0, m);
            if (!rc) rc = split_piece(out, &p, m, SPLIT_REMOVED, false);
            break;
        case PRE_METASPACE: {
            size_t start = e->arena.len;
            const char *s;
            bool prepend = (k->prepend_scheme == PREPEND_ALWAYS ||
                            (k->prepend_scheme == PREPEND_FIRST && p.first));
            /* replace ' ' by the replacement, then maybe prepend it */
            sbuf *tmp = &e->nx.tmp;
            tmp->len = 0;
            for (size_t j = 0; j < p.len && !rc; j++) {
                s = e->arena.p + p.off + j;
                rc = *s == ' ' ? sbuf_add(tmp, k->content, k->content_len) : sbuf_addc(tmp, *s);
            }
            if (rc) return TOKENIZER_ERR_NOMEM;
            if (prepend && !(tmp->len >= k->content_len && !memcmp(tmp->p, k->content, k->content_len)))
                rc = sbuf_add(&e->arena, k->content, k->content_len);
            if (rc || sbuf_add(&e->arena, tmp->p, tmp->len)) return TOKENIZER_ERR_NOMEM;
            piece q = {start, e->arena.len - start, p.first};
            if (k->flag_a) {
                rc = char_spans(e->arena.p + q.off, q.len, NULL, k->replacement_cp, m);
                if (!rc) rc = split_piece(out, &q, m, SPLIT_MERGED_NEXT, false);
            } else
                rc = pieces_add(out, q.off, q.len, q.first);
            break;
        }
        case PRE_BYTELEVEL: {
            piece q = p;
            if (k->flag_a && e->arena.p[p.off] != ' ') {
                size_t start = e->arena.len;
                if (sbuf_reserve(&e->arena, p.len + 1)) return TOKENIZER_ERR_NOMEM;
                sbuf_addc(&e->arena, ' ');
                sbuf_add(&e->arena, e->arena.p + p.off, p.len);
                q = (piece){start, p.len + 1, p.first};
            }
            size_t first_sub = out->n;
            if (k->flag_b) {
                rc = pattern_find(&k->pat, e->arena.p + q.off, q.len, e->nx.md, m);
                if (!rc) rc = split_piece(out, &q, m, SPLIT_ISOLATED, false);
            } else
                rc = pieces_add(out, q.off, q.len, q.first);
            if (rc) return rc;
            /* map the bytes of each new piece to the byte-level alphabet */
            for (size_t j = first_sub; j < out->n; j++) {
                piece *r = &out->v[j];
                size_t start = e->arena.len;
                if (sbuf_reserve(&e->arena, r->len * 2)) return TOKENIZER_ERR_NOMEM;
                for (size_t b = 0; b < r->len; b++) {
                    int32_t cp = bl_byte_to_cp[(uint8_t)e->arena.p[r->off + b]];
                    char *d = e->arena.p + e->arena.len;
                    if (cp < 0x80) {
                        d[0] = (char)cp;
                        e->arena.len += 1;
                    } else {
                        d[0] = (char)(0xC0 | (cp >> 6));
                        d[1] = (char)(0x80 | (cp & 0x3F));
                        e->arena.len += 2;
                    }
                }
                e->arena.p[e->arena.len] = 0;
                r->off = start;
                r->len = e->arena.len - start;
            }
            break;
        }
        }
        if (rc) return rc;
    }
    piecelist t = *in;
    *in = *out;
    *out = t;
    return 0;
}

static int pre_apply(encoder *e, const component *k, int depth) {
    if (k->type == PRE_SEQ) {
        for (size_t i = 0; i < k->n_sub; i++) {
            int rc = pre_apply(e, &k->sub[i], depth + 1);
            if (rc) return rc;
        }
        return 0;
    }
    return pre_one(e, k);
}

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

static int32_t lookup_char(encoder *e, const char *s, size_t n, size_t pos, bool first, bool last) {
    const tokenizer *t = e->t;
    if (t->cp_id && n <= 3) {
        int32_t cp;
        if (utf8_decode((const uint8_t *)s + pos, n, &cp) == n && cp < 0x10000) return t->cp_id[cp];
    }
    sbuf *tmp = &e->nx.tmp;
    tmp->len = 0;
    if (!first && t->cont_prefix && sbuf_add(tmp, t->cont_prefix, t->cont_prefix_len)) return -2;
    if (sbuf_add(tmp, s + pos, n)) return -2;
    if (last && t->end_suffix && sbuf_add(tmp, t->end_suffix, t->end_suffix_len)) return -2;
    return strmap_get(&t->vocab, t->tok, t->tok_len, tmp->p, tmp->len);
}

static int bpe_merge(encoder *e, const char *s, size_t n);

/* BPE::tokenize of one pre-token: merge_word + Word::merge_all, through
 * the word cache for short words. */
static int bpe_word(encoder *e, const char *s, size_t n) {
    const tokenizer *t = e->t;
    if (t->ignore_merges) {
        int32_t id = strmap_get(&t->vocab, t->tok, t->tok_len, s, n);
        if (id >= 0) return ids_add(e, id);
    }
    if (n > TK_CACHE_WORD) return bpe_merge(e, s, n);
    tokenizer *mt = (tokenizer *)t; /* the cache is internally synchronized */
    size_t h = hash_bytes(s, n) & (TK_CACHE_SLOTS - 1);
    struct cache_slot *slot = &mt->cache[h], copy;
    pthread_mutex_t *lock = &mt->cache_lock[h & (TK_CACHE_STRIPES - 1)];
    pthread_mutex_lock(lock);
    copy = *slot;
    pthread_mutex_unlock(lock);
    if (copy.wlen == n && memcmp(copy.word, s, n) == 0) {
        for (int i = 0; i < copy.n; i++)
            if (ids_add(e, copy.ids[i])) return TOKENIZER_ERR_NOMEM;
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

static int bpe_merge(encoder *e, const char *s, size_t n) {
    const tokenizer *t = e->t;
    if (n > e->sym_cap) {
        symbol *v = realloc(e->sym, n * sizeof *v);
        if (!v) return TOKENIZER_ERR_NOMEM;
        e->sym = v;
        e->sym_cap = n;
    }
    size_t ns = 0, i = 0;
    int32_t unk = -1; /* pending unk id; fused while fuse_unk */
    while (i < n) {
        size_t k = utf8_char_len(s, n, i);
        bool first = i == 0, last = i + k == n;
        int32_t id = lookup_char(e, s, k, i, first, last);
        if (id == -2) return TOKENIZER_ERR_NOMEM;
        if (id >= 0) {
            if (unk >= 0) e->sym[ns++].id = unk, unk = -1;
            e->sym[ns++].id = id;
        } else {
            bool done = false;
            if (t->byte_fallback) {
                /* the bytes of the (prefixed/suffixed) string, as HF */
                sbuf *tmp = &e->nx.tmp;
                bool all = true;
                for (size_t b = 0; b < tmp->len; b++)
                    if (t->byte_ids[(uint8_t)tmp->p[b]] < 0) all = false;
                if (t->cp_id) { /* fast path did not fill tmp */
                    tmp->len = 0;
                    if (sbuf_add(tmp, s + i, k)) return TOKENIZER_ERR_NOMEM;
                    all = true;
                    for (size_t b = 0; b < k; b++)
                        if (t->byte_ids[(uint8_t)s[i + b]] < 0) all = false;
                }
                if (all) {
                    if (ns + tmp->len > e->sym_cap) {
                        size_t cap = ns + tmp->len + n;
                        symbol *v = realloc(e->sym, cap * sizeof *v);
                        if (!v) return TOKENIZER_ERR_NOMEM;
                        e->sym = v;
                        e->sym_cap = cap;
                    }
                    for (size_t b = 0; b < tmp->len; b++) e->sym[ns++].id = t->byte_ids[(uint8_t)tmp->p[b]];
                    done = true;
                }
            }
            if (!done && t->unk_id >= 0) {
                if (unk >= 0 && !t->fuse_unk) e->sym[ns++].id = unk;
                unk = t->unk_id;
            }
        }
        i += k;
    }
    if (unk >= 0) e->sym[ns++].id = unk;
    if (!ns) return 0;
    for (size_t j = 0; j < ns; j++) {
        e->sym[j].prev = (int32_t)j - 1;
        e->sym[j].next = j + 1 < ns ? (int32_t)j + 1 : -1;
        e->sym[j].gone = false;
    }
    if (ns > 1) {
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
    }
    for (size_t j = 0; j < ns; j++)
        if (!e->sym[j].gone && ids_add(e, e->sym[j].id)) return TOKENIZER_ERR_NOMEM;
    return 0;
}

/* One stretch of text between added tokens: normalize, split at normalized
 * added tokens, pre-tokenize, BPE. */
static int encode_text(encoder *e, const char *s, size_t n, bool first) {
    const tokenizer *t = e->t;
    sbuf *ns = &e->norm;
    ns->len = 0;
    if (sbuf_add(ns, s, n)) return TOKENIZER_ERR_NOMEM;
    if (t->normalizer) {
        int rc = norm_apply(t->normalizer, ns, &e->nx, 0);
        if (rc) return rc;
    }
    e->segs2.n = 0;
    int rc = added_split(t, &t->m_norm, ns->p, ns->len, &e->segs2);
    if (rc) return rc;
    for (size_t i = 0; i < e->segs2.n; i++) {
        segment g = e->segs2.v[i];
        if (g.added >= 0) {
            if ((rc = ids_add(e, t->added[g.added].id))) return rc;
            continue;
        }
        e->arena.len = 0;
        if (sbuf_add(&e->arena, e->norm.p + g.s, g.e - g.s)) return TOKENIZER_ERR_NOMEM;
        e->a.n = 0;
        if ((rc = pieces_add(&e->a, 0, g.e - g.s, first && g.s == 0))) return rc;
        if (t->pre && (rc = pre_apply(e, t->pre, 0))) return rc;
        for (size_t j = 0; j < e->a.n; j++)
            if ((rc = bpe_word(e, e->arena.p + e->a.v[j].off, e->a.v[j].len))) return rc;
    }
    return 0;
}

static void encoder_free(encoder *e) {
    pcre2_match_data_free(e->nx.md);
    free(e->nx.m.v);
    free(e->nx.tmp.p);
    free(e->arena.p);
    free(e->norm.p);
    free(e->a.v);
    free(e->b.v);
    free(e->segs.v);
    free(e->segs2.v);
    free(e->m2.v);
    free(e->sym);
    free(e->heap);
    free(e->ids);
}

int tokenizer_encode(const tokenizer *t, const char *text, size_t len, bool add_special,
                     int32_t **ids, size_t *n_ids) {
    assert(t && ids && n_ids);
    *ids = NULL;
    *n_ids = 0;
    if (len > TK_MAX_INPUT_BYTES) return TOKENIZER_ERR_LIMIT;
    if (len && !text) return TOKENIZER_ERR_INVALID_ARG;
    if (!utf8_valid(text, len)) return TOKENIZER_ERR_INVALID_UTF8;
    encoder e = {0};
    e.t = t;
    e.nx.md = pcre2_match_data_create(1, NULL);
    int rc = e.nx.md ? 0 : TOKENIZER_ERR_NOMEM;
    if (!rc) rc = added_split(t, &t->m_raw, text ? text : "", len, &e.segs);
    for (size_t i = 0; !rc && i < e.segs.n; i++) {
        segment g = e.segs.v[i];
        if (g.added >= 0) rc = ids_add(&e, t->added[g.added].id);
        else rc = encode_text(&e, text + g.s, g.e - g.s, g.s == 0);
    }
    if (!rc && add_special && t->post.present) {
        size_t n = 0;
        for (size_t i = 0; i < t->post.n; i++) n += t->post.ids[i] == -1 ? e.n_ids : 1;
        int32_t *p = malloc((n ? n : 1) * sizeof *p);
        if (!p) rc = TOKENIZER_ERR_NOMEM;
        else {
            size_t k = 0;
            for (size_t i = 0; i < t->post.n; i++) {
                if (t->post.ids[i] == -1) {
                    if (e.n_ids) memcpy(p + k, e.ids, e.n_ids * sizeof *p);
                    k += e.n_ids;
                } else
                    p[k++] = t->post.ids[i];
            }
            free(e.ids);
            e.ids = p;
            e.n_ids = n;
        }
    }
    if (!rc && !e.ids) {
        e.ids = malloc(sizeof *e.ids);
        if (!e.ids) rc = TOKENIZER_ERR_NOMEM;
    }
    if (!rc) {
        *ids = e.ids;
        *n_ids = e.n_ids;
        e.ids = NULL;
    }
    encoder_free(&e);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Decoding                                                                 */

typedef struct {
    sbuf text;
    spanlist sp; /* tokens as ranges of text */
} toklist;

static int tl_add(toklist *l, const char *s, size_t n) {
    size_t st = l->text.len;
    if (sbuf_add(&l->text, s, n) || spans_add(&l->sp, st, st + n)) return TOKENIZER_ERR_NOMEM;
    return 0;
}

/* Appends the bytes ByteLevel gives for one token: each char mapped back to
 * its byte, or the token's own bytes if any char is outside the alphabet. */
static int bytelevel_token_bytes(sbuf *out, const char *s, size_t n) {
    size_t start = out->len, i = 0;
    while (i < n) {
        int32_t cp = -1;
        size_t k = utf8_decode((const uint8_t *)s + i, n - i, &cp);
        if (!k || cp >= 512 || bl_cp_to_byte[cp] < 0) {
            out->len = start;
            return sbuf_add(out, s, n);
        }
        if (sbuf_addc(out, (char)bl_cp_to_byte[cp])) return -1;
        i += k;
    }
    return 0;
}

static int dec_apply(const component *k, toklist *in, toklist *out, normctx *x);

static int dec_stage(const component *k, toklist *in, toklist *out, normctx *x) {
    out->text.len = 0;
    out->sp.n = 0;
    switch (k->type) {
    case DEC_BYTELEVEL: {
        sbuf *raw = &x->tmp;
        raw->len = 0;
        for (size_t i = 0; i < in->sp.n; i++)
            if (bytelevel_token_bytes(raw, in->text.p + in->sp.v[i].s, in->sp.v[i].e - in->sp.v[i].s))
                return TOKENIZER_ERR_NOMEM;
        if (utf8_lossy_add(&out->text, raw->p ? raw->p : "", raw->len, false, NULL) ||
            spans_add(&out->sp, 0, out->text.len))
            return TOKENIZER_ERR_NOMEM;
        return 0;
    }
    case DEC_FUSE:
        if (sbuf_add(&out->text, in->text.p ? in->text.p : "", in->text.len) ||
            spans_add(&out->sp, 0, out->text.len))
            return TOKENIZER_ERR_NOMEM;
        return 0;
    case DEC_REPLACE:
        for (size_t i = 0; i < in->sp.n; i++) {
            const char *s = in->text.p + in->sp.v[i].s;
            size_t n = in->sp.v[i].e - in->sp.v[i].s, st = out->text.len, prev = 0;
            int rc = pattern_find(&k->pat, s, n, x->md, &x->m);
            if (rc) return rc;
            for (size_t j = 0; j < x->m.n; j++) {
                if (sbuf_add(&out->text, s + prev, x->m.v[j].s - prev) ||
                    sbuf_add(&out->text, k->content, k->content_len))
                    return TOKENIZER_ERR_NOMEM;
                prev = x->m.v[j].e;
            }
            if (sbuf_add(&out->text, s + prev, n - prev) || spans_add(&out->sp, st, out->text.len))
                return TOKENIZER_ERR_NOMEM;
        }
        return 0;
    case DEC_STRIP:
        for (size_t i = 0; i < in->sp.n; i++) {
            const char *s = in->text.p + in->sp.v[i].s;
            size_t n = in->sp.v[i].e - in->sp.v[i].s, a = 0, b = n;
            for (int j = 0; j < k->start && a < b; j++) {
                if (n - a < k->content_len || memcmp(s + a, k->content, k->content_len)) break;
                a += k->content_len;
            }
            for (int j = 0; j < k->stop && b > a; j++) {
                if (b - a < k->content_len || memcmp(s + b - k->content_len, k->content, k->content_len)) break;
                b -= k->content_len;
            }
            if (tl_add(out, s + a, b - a)) return TOKENIZER_ERR_NOMEM;
        }
        return 0;
    case DEC_BYTEFALLBACK: {
        sbuf *pend = &x->tmp;
        pend->len = 0;
        for (size_t i = 0; i <= in->sp.n; i++) {
            const char *s = i < in->sp.n ? in->text.p + in->sp.v[i].s : NULL;
            size_t n = i < in->sp.n ? in->sp.v[i].e - in->sp.v[i].s : 0;
            if (s && n == 6 && !memcmp(s, "<0x", 3) && s[5] == '>' && isxdigit((unsigned char)s[3]) &&
                isxdigit((unsigned char)s[4])) {
                char hex[3] = {s[3], s[4], 0};
                if (sbuf_addc(pend, (char)strtol(hex, NULL, 16))) return TOKENIZER_ERR_NOMEM;
                continue;
            }
            if (pend->len) {
                if (utf8_valid(pend->p, pend->len)) {
                    if (tl_add(out, pend->p, pend->len)) return TOKENIZER_ERR_NOMEM;
                } else
                    for (size_t j = 0; j < pend->len; j++)
                        if (tl_add(out, "\xEF\xBF\xBD", 3)) return TOKENIZER_ERR_NOMEM;
                pend->len = 0;
            }
            if (s && tl_add(out, s, n)) return TOKENIZER_ERR_NOMEM;
        }
        return 0;
    }
    case DEC_METASPACE:
        for (size_t i = 0; i < in->sp.n; i++) {
            const char *s = in->text.p + in->sp.v[i].s;
            size_t n = in->sp.v[i].e - in->sp.v[i].s, st = out->text.len, j = 0;
            while (j < n) {
                if (n - j >= k->content_len && !memcmp(s + j, k->content, k->content_len)) {
                    if (!(i == 0 && k->prepend_scheme != PREPEND_NEVER) && sbuf_addc(&out->text, ' '))
                        return TOKENIZER_ERR_NOMEM;
                    j += k->content_len;
                } else {
                    size_t c = utf8_char_len(s, n, j);
                    if (sbuf_add(&out->text, s + j, c)) return TOKENIZER_ERR_NOMEM;
                    j += c;
                }
            }
            if (spans_add(&out->sp, st, out->text.len)) return TOKENIZER_ERR_NOMEM;
        }
        return 0;
    }
    return 0;
}

/* Runs decode_chain of k over in; the result is in *in afterwards. */
static int dec_apply(const component *k, toklist *in, toklist *out, normctx *x) {
    if (k->type == DEC_SEQ) {
        for (size_t i = 0; i < k->n_sub; i++) {
            int rc = dec_apply(&k->sub[i], in, out, x);
            if (rc) return rc;
        }
        return 0;
    }
    int rc = dec_stage(k, in, out, x);
    toklist t = *in;
    *in = *out;
    *out = t;
    return rc;
}

/* The token string HF's decode passes to the decoder, or NULL to skip. */
static const char *decode_token(const tokenizer *t, int32_t id, bool skip_special, size_t *len) {
    if (id < 0 || (size_t)id >= t->n_ids) return NULL;
    int32_t a = t->added_of_id[id];
    if (a >= 0) {
        if (skip_special && t->added[a].special) return NULL;
        *len = t->added[a].len;
        return t->added[a].content;
    }
    if (!t->tok[id]) return NULL;
    *len = t->tok_len[id];
    return t->tok[id];
}

int tokenizer_decode(const tokenizer *t, const int32_t *ids, size_t n, bool skip_special, char **out,
                     size_t *len) {
    assert(t && out && len && (ids || n == 0));
    *out = NULL;
    *len = 0;
    toklist a = {0}, b = {0};
    normctx x = {0};
    int rc = 0;
    bool any = false;
    for (size_t i = 0; i < n && !rc; i++) {
        size_t tl;
        const char *s = decode_token(t, ids[i], skip_special, &tl);
        if (!s) continue;
        if (!t->decoder && any) rc = sbuf_addc(&a.text, ' ') ? TOKENIZER_ERR_NOMEM : 0;
        if (!rc) rc = tl_add(&a, s, tl);
        any = true;
    }
    if (!rc && t->decoder) {
        x.md = pcre2_match_data_create(1, NULL);
        rc = x.md ? dec_apply(t->decoder, &a, &b, &x) : TOKENIZER_ERR_NOMEM;
    }
    sbuf res = {0};
    if (!rc) {
        /* join the tokens; without a decoder a.text already holds "a b c" */
        if (!t->decoder) rc = sbuf_add(&res, a.text.p ? a.text.p : "", a.text.len);
        else
            for (size_t i = 0; i < a.sp.n && !rc; i++)
                rc = sbuf_add(&res, a.text.p + a.sp.v[i].s, a.sp.v[i].e - a.sp.v[i].s);
        if (!rc && !res.p) rc = sbuf_add(&res, "", 0);
        if (rc) rc = TOKENIZER_ERR_NOMEM;
    }
    free(a.text.p);
    free(a.sp.v);
    free(b.text.p);
    free(b.sp.v);
    free(x.tmp.p);
    free(x.m.v);
    pcre2_match_data_free(x.md);
    if (rc) {
        free(res.p);
        return rc;
    }
    *out = res.p;
    *len = res.len;
    return 0;
}

int tokenizer_token_bytes(const tokenizer *t, int32_t id, char **out, size_t *len) {
    assert(t && out && len);
    if (!t->dec_bytelevel_only) return tokenizer_decode(t, &id, 1, false, out, len);
    *out = NULL;
    *len = 0;
    size_t tl = 0;
    const char *tok = decode_token(t, id, false, &tl);
    sbuf res = {0};
    if ((tok && bytelevel_token_bytes(&res, tok, tl)) || sbuf_add(&res, "", 0)) {
        free(res.p);
        return TOKENIZER_ERR_NOMEM;
    }
    *out = res.p;
    *len = res.len;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Incremental decoding                                                     */

/* Two strategies. ByteLevel decoders (and none) are a concatenation of per
 * token bytes followed by one lossy UTF-8 conversion, so the stream keeps
 * only the bytes of an unfinished character. Any other decoder chain is
 * re-run over the ids since the start, emitting the new text except a
 * trailing run of U+FFFD (which may still turn into a character). */
struct tokenizer_stream {
    const tokenizer *t; /* borrowed */
    bool skip_special;
    bool bytewise;
    sbuf pending;  /* bytewise: bytes of an incomplete character */
    int32_t *ids;  /* generic: all ids so far */
    size_t n_ids, cap;
    size_t emitted; /* generic: bytes of decode(ids) already emitted */
};

int tokenizer_stream_create(const tokenizer *t, bool skip_special, tokenizer_stream **out) {
    assert(t && out);
    tokenizer_stream *s = calloc(1, sizeof *s);
    *out = NULL;
    if (!s) return TOKENIZER_ERR_NOMEM;
    s->t = t;
    s->skip_special = skip_special;
    s->bytewise = t->dec_bytelevel_only;
    *out = s;
    return 0;
}

void tokenizer_stream_destroy(tokenizer_stream *s) {
    if (!s) return;
    free(s->pending.p);
    free(s->ids);
    free(s);
}

static size_t trailing_fffd(const char *p, size_t n) {
    size_t k = 0;
    while (n - k >= 3 && !memcmp(p + n - k - 3, "\xEF\xBF\xBD", 3)) k += 3;
    return k;
}

static int stream_generic(tokenizer_stream *s, bool final, char **out, size_t *len) {
    char *full;
    size_t n;
    int rc = tokenizer_decode(s->t, s->ids, s->n_ids, s->skip_special, &full, &n);
    if (rc) return rc;
    size_t end = final ? n : n - trailing_fffd(full, n);
    sbuf res = {0};
    if (end > s->emitted) {
        rc = sbuf_add(&res, full + s->emitted, end - s->emitted) ? TOKENIZER_ERR_NOMEM : 0;
        s->emitted = end;
    } else
        rc = sbuf_add(&res, "", 0) ? TOKENIZER_ERR_NOMEM : 0;
    free(full);
    if (rc) {
        free(res.p);
        return rc;
    }
    *out = res.p;
    *len = res.len;
    return 0;
}

int tokenizer_stream_step(tokenizer_stream *s, int32_t id, char **out, size_t *len) {
    *out = NULL;
    *len = 0;
    if (!s->bytewise) {
        if (s->n_ids == s->cap) {
            size_t cap = s->cap ? s->cap * 2 : 64;
            int32_t *p = realloc(s->ids, cap * sizeof *p);
            if (!p) return TOKENIZER_ERR_NOMEM;
            s->ids = p;
            s->cap = cap;
        }
        s->ids[s->n_ids++] = id;
        return stream_generic(s, false, out, len);
    }
    size_t tl;
    const char *tok = decode_token(s->t, id, s->skip_special, &tl);
    sbuf res = {0};
    if (tok && bytelevel_token_bytes(&s->pending, tok, tl)) return TOKENIZER_ERR_NOMEM;
    size_t tail = 0;
    if (utf8_lossy_add(&res, s->pending.p ? s->pending.p : "", s->pending.len, true, &tail) ||
        sbuf_add(&res, "", 0)) {
        free(res.p);
        return TOKENIZER_ERR_NOMEM;
    }
    if (tail) memmove(s->pending.p, s->pending.p + s->pending.len - tail, tail);
    s->pending.len = tail;
    *out = res.p;
    *len = res.len;
    return 0;
}

int tokenizer_stream_flush(tokenizer_stream *s, char **out, size_t *len) {
    *out = NULL;
    *len = 0;
    int rc = 0;
    if (!s->bytewise) {
        rc = stream_generic(s, true, out, len);
        s->n_ids = 0;
        s->emitted = 0;
        return rc;
    }
    sbuf res = {0};
    if (utf8_lossy_add(&res, s->pending.p ? s->pending.p : "", s->pending.len, false, NULL) ||
        sbuf_add(&res, "", 0)) {
        free(res.p);
        return TOKENIZER_ERR_NOMEM;
    }
    s->pending.len = 0;
    *out = res.p;
    *len = res.len;
    return 0;
}
