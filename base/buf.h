/* A growable NUL-terminated byte string (strbuf): generated text, SSE output,
 * the input a stream parser holds and the output it gives, with the marker test
 * those parsers share. The one growable buffer of the project. */
#ifndef BASE_BUF_H
#define BASE_BUF_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char *s; /* NULL until something is added */
    size_t len, cap;
} strbuf;

/* Makes room for n more bytes and the NUL, adding none: afterwards b->s is
 * non-NULL and NUL-terminated at b->len, even for n = 0, and up to n bytes
 * may be written at b->s + b->len directly. Returns 0, or -1 out of memory
 * (b unchanged). */
static inline int strbuf_reserve(strbuf *b, size_t n) {
    if (b->len + n + 1 > b->cap) {
        /* powers of two from 64: sizes malloc reuses well (encoding one
         * 4 MB text over and over was 8% slower with twice the need) */
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->len + n + 1) {
            if (cap > SIZE_MAX / 2) return -1;
            cap *= 2;
        }
        char *q = realloc(b->s, cap);
        if (!q) return -1;
        b->s = q;
        b->cap = cap;
    }
    b->s[b->len] = 0;
    return 0;
}

/* Appends n bytes; returns 0, or -1 out of memory (b unchanged). */
static inline int strbuf_add(strbuf *b, const char *p, size_t n) {
    if (!n) return 0;
    if (strbuf_reserve(b, n)) return -1;
    memcpy(b->s + b->len, p, n);
    b->len += n;
    b->s[b->len] = 0;
    return 0;
}

/* Appends one byte; returns 0, or -1 out of memory (b unchanged). */
static inline int strbuf_addc(strbuf *b, char c) { return strbuf_add(b, &c, 1); }

/* Drops the first n bytes. */
static inline void strbuf_drop(strbuf *b, size_t n) {
    if (!n) return;
    memmove(b->s, b->s + n, b->len - n + 1);
    b->len -= n;
}

/* Hands the string over (NULL when empty) and leaves b empty. */
static inline char *strbuf_take(strbuf *b) {
    char *s = b->len ? b->s : NULL;
    if (!b->len) free(b->s);
    *b = (strbuf){0};
    return s;
}

static inline void strbuf_free(strbuf *b) {
    free(b->s);
    *b = (strbuf){0};
}

/* For stream parsers: the length of the longest tail of s[0..n) that is a
 * proper beginning of marker (it may become the marker with more text). */
static inline size_t strbuf_marker_tail(const char *s, size_t n, const char *marker) {
    for (size_t k = strlen(marker) - 1; k > 0; k--)
        if (n >= k && !memcmp(s + n - k, marker, k)) return k;
    return 0;
}

#endif
