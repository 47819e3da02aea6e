/* Compressed tokenizer of Engram (ENGRAM.md section 3): token id -> index of
 * its normalized text in order of first appearance. The normalization is the
 * one the public reference runs (a Hugging Face `tokenizers` normalizer
 * sequence), rebuilt on utf8proc: NFKC, NFD, drop every combining mark
 * (categories Mn, Mc, Me), per-character full lowercase, [ \t\r\n]+ -> " ",
 * a lone " " survives, strip White_Space, U+E000 -> " ". The reference's parts
 * use other Unicode versions than utf8proc; the generated tables of
 * ngram_hash_unicode.c (tools/make_unicode_compat.py) correct every code point. */
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "engram/ngram_hash.h"
#include "engram/ngram_hash_internal.h"
#include "base/util.h"

/* U+E000 is the reference's sentinel for a lone space; every U+E000 of the
 * text becomes " " at the end, as in the reference. */
#define SENTINEL 0xE000

/* char::is_whitespace (Unicode White_Space), what the reference's Strip uses. */
static int is_white_space(int32_t c) {
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

static int is_mark(int32_t c) {
    int o = ngram_hash__mark_override(c);
    if (o >= 0) return o;
    utf8proc_category_t cat = utf8proc_category(c);
    return cat == UTF8PROC_CATEGORY_MN || cat == UTF8PROC_CATEGORY_MC ||
           cat == UTF8PROC_CATEGORY_ME;
}

/* Runs utf8proc_map with options on (s, len); returns the new NUL-terminated
 * string (caller frees) and its length, or a negative status. */
static int map_utf8(const uint8_t *s, size_t len, int options, uint8_t **out, size_t *out_len) {
    utf8proc_ssize_t n = utf8proc_map(s, (utf8proc_ssize_t)len, out, (utf8proc_option_t)options);
    if (n < 0) {
        *out = NULL;
        return n == UTF8PROC_ERROR_NOMEM ? NGRAM_HASH_ENOMEM : NGRAM_HASH_EINVAL;
    }
    *out_len = (size_t)n;
    return NGRAM_HASH_OK;
}

/* Growable byte buffer. */
typedef struct {
    uint8_t *p;
    size_t len, cap;
} bytes;

static int bytes_put(bytes *b, const uint8_t *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->len + n + 1) cap *= 2;
        uint8_t *np = realloc(b->p, cap);
        if (!np) return NGRAM_HASH_ENOMEM;
        b->p = np;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->len, s, n);
    b->len += n;
    return NGRAM_HASH_OK;
}

/* Appends NFD(NFKC(s)) to out. */
static int put_nfkc_nfd(bytes *out, const uint8_t *s, size_t len) {
    if (len == 0) return NGRAM_HASH_OK;
    uint8_t *nfkc = NULL, *nfd = NULL;
    size_t nfkc_len, nfd_len;
    int st = map_utf8(s, len, UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT, &nfkc,
                      &nfkc_len);
    if (!st) st = map_utf8(nfkc, nfkc_len, UTF8PROC_STABLE | UTF8PROC_DECOMPOSE, &nfd, &nfd_len);
    if (!st) st = bytes_put(out, nfd, nfd_len);
    free(nfkc);
    free(nfd);
    return st;
}

int ngram_hash_normalize(const char *text, size_t len, char **out, size_t *out_len) {
    *out = NULL;
    *out_len = 0;
    if (len > ((size_t)1 << 30)) return NGRAM_HASH_EINVAL; /* far beyond any token */
    int32_t *cp = NULL;
    char *res = NULL;
    bytes nfd = {NULL, 0, 0};
    int st = NGRAM_HASH_OK;

    /* NFKC then NFD, in segments split at the code points whose normalization
     * the reference does not know (they are starters that pass untouched, so
     * nothing composes or reorders across them). */
    const uint8_t *u = (const uint8_t *)text;
    size_t seg = 0;
    for (size_t i = 0; i < len;) {
        int32_t c;
        utf8proc_ssize_t k = utf8proc_iterate(u + i, (utf8proc_ssize_t)(len - i), &c);
        if (k <= 0) {
            st = NGRAM_HASH_EINVAL;
            goto done;
        }
        if (ngram_hash__inert(c)) {
            if ((st = put_nfkc_nfd(&nfd, u + seg, i - seg))) goto done;
            if ((st = bytes_put(&nfd, u + i, (size_t)k))) goto done;
            seg = i + (size_t)k;
        }
        i += (size_t)k;
    }
    if ((st = put_nfkc_nfd(&nfd, u + seg, len - seg))) goto done;
    const size_t nfd_len = nfd.len;

    /* Code points after mark removal and lowercase; U+0130 lowercases to two. */
    cp = malloc((2 * nfd_len + 1) * sizeof *cp);
    if (!cp) {
        st = NGRAM_HASH_ENOMEM;
        goto done;
    }
    size_t n = 0;
    int in_ws = 0;
    for (utf8proc_ssize_t i = 0; i < (utf8proc_ssize_t)nfd_len;) {
        int32_t c;
        utf8proc_ssize_t k = utf8proc_iterate(nfd.p + i, (utf8proc_ssize_t)nfd_len - i, &c);
        if (k <= 0) {
            st = NGRAM_HASH_EINVAL;
            goto done;
        }
        i += k;
        if (is_mark(c)) continue;
        int32_t low[2];
        int nl = 1;
        if (c == 0x130) {
            low[0] = 'i';
            low[1] = 0x307;
            nl = 2;
        } else {
            int32_t o = ngram_hash__lower_override(c);
            low[0] = o >= 0 ? o : utf8proc_tolower(c);
        }
        for (int j = 0; j < nl; j++) {
            int32_t d = low[j];
            int ws = d == ' ' || d == '\t' || d == '\r' || d == '\n';
            if (ws && in_ws) continue; /* collapse the run into its first " " */
            in_ws = ws;
            cp[n++] = ws ? ' ' : d;
        }
    }
    /* A lone " " is kept; otherwise strip White_Space on both ends. */
    size_t b = 0, e = n;
    if (!(n == 1 && cp[0] == ' ')) {
        while (b < e && is_white_space(cp[b])) b++;
        while (e > b && is_white_space(cp[e - 1])) e--;
    }
    res = malloc(4 * (e - b) + 1);
    if (!res) {
        st = NGRAM_HASH_ENOMEM;
        goto done;
    }
    size_t o = 0;
    for (size_t i = b; i < e; i++)
        o += (size_t)utf8proc_encode_char(cp[i] == SENTINEL ? ' ' : cp[i], (uint8_t *)res + o);
    res[o] = 0;
    *out = res;
    *out_len = o;
    res = NULL;
done:
    free(nfd.p);
    free(cp);
    free(res);
    return st;
}

/* ---- first-appearance index of keys ---- */

typedef struct {
    char *key; /* owned */
    size_t len;
    int64_t id;
} key_slot;

static uint64_t fnv1a(const char *s, size_t n) { return util_fnv1a(UTIL_FNV1A_INIT, s, n); }

static int contains_fffd(const char *s, size_t n) {
    for (size_t i = 0; i + 2 < n; i++)
        if ((unsigned char)s[i] == 0xEF && (unsigned char)s[i + 1] == 0xBF &&
            (unsigned char)s[i + 2] == 0xBD)
            return 1;
    return 0;
}

/* A heap copy of len bytes (one spare byte, so that len 0 allocates), or NULL. */
static char *copy_bytes(const char *p, size_t len) {
    char *k = malloc(len + 1);
    if (k && len) memcpy(k, p, len);
    return k;
}

int ngram_hash_compress_build(const ngram_hash_token_text *tokens, size_t n, int64_t *lookup,
                              int64_t *vc) {
    *vc = 0;
    size_t cap = 16;
    while (cap < 2 * n) cap <<= 1;
    key_slot *tab = calloc(cap, sizeof *tab);
    if (!tab) return NGRAM_HASH_ENOMEM;
    int st = NGRAM_HASH_OK;
    int64_t next = 0;
    for (size_t i = 0; i < n; i++) {
        const ngram_hash_token_text *t = &tokens[i];
        char *key = NULL;
        size_t klen = 0;
        if (contains_fffd(t->text, t->text_len)) {
            klen = t->raw_len;
            if (!(key = copy_bytes(t->raw, klen))) {
                st = NGRAM_HASH_ENOMEM;
                break;
            }
        } else {
            st = ngram_hash_normalize(t->text, t->text_len, &key, &klen);
            if (st) break;
            if (klen == 0) {
                free(key);
                klen = t->text_len;
                if (!(key = copy_bytes(t->text, klen))) {
                    st = NGRAM_HASH_ENOMEM;
                    break;
                }
            }
        }
        size_t s = (size_t)fnv1a(key, klen) & (cap - 1);
        while (tab[s].key && !(tab[s].len == klen && memcmp(tab[s].key, key, klen) == 0))
            s = (s + 1) & (cap - 1);
        if (tab[s].key) {
            free(key);
        } else {
            tab[s].key = key;
            tab[s].len = klen;
            tab[s].id = next++;
        }
        lookup[i] = tab[s].id;
    }
    for (size_t s = 0; s < cap; s++) free(tab[s].key);
    free(tab);
    if (st == NGRAM_HASH_OK) *vc = next;
    return st;
}

int ngram_hash_compress_ids(const int64_t *lookup, int64_t vocab, const int64_t *ids, size_t n,
                            int64_t *out) {
    for (size_t i = 0; i < n; i++) {
        if (ids[i] >= vocab) return NGRAM_HASH_ERANGE;
        out[i] = ids[i] < 0 ? ids[i] : lookup[ids[i]];
    }
    return NGRAM_HASH_OK;
}
