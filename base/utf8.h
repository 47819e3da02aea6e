/* UTF-8, strictly as Unicode's table 3-7 defines it: no overlongs, no
 * surrogates, nothing past U+10FFFF. The one validator and decoder of the
 * project (tokenizer, chat templates and the API's request bodies use it). */
#ifndef BASE_UTF8_H
#define BASE_UTF8_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Length (1..4) of the well-formed sequence at s[0..n), *cp its code point;
 * 0 when it is malformed or cut short (then *cp is untouched). */
size_t utf8_decode(const uint8_t *s, size_t n, int32_t *cp);

/* For a malformed sequence at s[0..n) (n >= 1): the bytes of its maximal
 * valid prefix (>= 1: what one U+FFFD replaces, as from_utf8_lossy), and in
 * *incomplete whether that prefix runs to the end of the buffer (a character
 * more bytes could complete). */
size_t utf8_bad_prefix(const uint8_t *s, size_t n, bool *incomplete);

/* Whether s[0..n) is well-formed UTF-8 (n = 0 is). NUL bytes are valid. */
bool utf8_valid(const char *s, size_t n);

/* Writes cp (< 0x110000, not a surrogate) as 1..4 bytes to out; returns the
 * count, 0 for a code point that has no encoding. */
int utf8_encode(int32_t cp, char *out);

#endif
