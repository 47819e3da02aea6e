/* Compressed tokenizer of Engram (ENGRAM.md section 3): token id -> index of
 * its normalized text in order of first appearance. The normalization is the
 * one the public reference runs (a Hugging Face `tokenizers` normalizer
 * sequence), rebuilt on utf8proc: NFKC, NFD, drop every combining mark
 * (categories Mn, Mc, Me), per-character full lowercase, [ \t\r\n]+ -> " ",
 * a lone " " survives, strip White_Space, U+E000 -> " ". */
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "ngram_hash.h"

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
    utf8proc_category_t cat = utf8proc_category(c);
    return cat == UTF8PROC_CATEGORY_MN || cat == UTF8PROC_CATEGORY_MC ||
           cat == UTF8PROC_CATEGORY_ME;
}

/* Runs utf8proc_map with options on (s, len); returns the new NUL-terminated
 * string (caller frees) and its length, or a negative status. */
static int map_utf8(const uint8_t *s, size_t len, int options, uint8_t **out, size_t *out_len) {
    if (len > ((size_t)1 << 30)) return NGRAM_HASH_EINVAL; /* far beyond any token */
    utf8proc_ssize_t n = utf8proc_map(s, (utf8proc_ssize_t)len, out, (utf8proc_option_t)options);
    if (n < 0) {
        *out = NULL;
        return n == UTF8PROC_ERROR_NOMEM ? NGRAM_HASH_ENOMEM : NGRAM_HASH_EINVAL;
    }
    *out_len = (size_t)n;
    return NGRAM_HASH_OK;
}

int ngram_hash_normalize(const char *text, size_t len, char **out, size_t *out_len) {
    *out = NULL;
    *out_len = 0;
    uint8_t *nfkc = NULL, *nfd = NULL;
    int32_t *cp = NULL;
    char *res = NULL;
    size_t nfkc_len, nfd_len;
    int st = map_utf8((const uint8_t *)text, len,
                      UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT, &nfkc, &nfkc_len);
    if (st) goto done;
    st = map_utf8(nfkc, nfkc_len, UTF8PROC_STABLE | UTF8PROC_DECOMPOSE, &nfd, &nfd_len);
    if (st) goto done;

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
        utf8proc_ssize_t k = utf8proc_iterate(nfd + i, (utf8proc_ssize_t)nfd_len - i, &c);
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
            low[0] = utf8proc_tolower(c);
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
    free(nfkc);
    free(nfd);
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

static uint64_t fnv1a(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h;
}

static int contains_fffd(const char *s, size_t n) {
    for (size_t i = 0; i + 2 < n; i++)
        if ((unsigned char)s[i] == 0xEF && (unsigned char)s[i + 1] == 0xBF &&
            (unsigned char)s[i + 2] == 0xBD)
            return 1;
    return 0;
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
            key = malloc(t->raw_len + 1);
            if (!key) {
                st = NGRAM_HASH_ENOMEM;
                break;
            }
            if (t->raw_len) memcpy(key, t->raw, t->raw_len);
            klen = t->raw_len;
        } else {
            st = ngram_hash_normalize(t->text, t->text_len, &key, &klen);
            if (st) break;
            if (klen == 0) {
                free(key);
                key = malloc(t->text_len + 1);
                if (!key) {
                    st = NGRAM_HASH_ENOMEM;
                    break;
                }
                if (t->text_len) memcpy(key, t->text, t->text_len);
                klen = t->text_len;
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
